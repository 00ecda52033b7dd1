//! What a gossip node does, without the network: `foca` plus this node's
//! publishing, re-sending and anti-entropy, driven by calls that carry `now`
//! and leaving the datagrams to send and the timers to set in queues. The
//! daemon's node ([`crate::cluster::node`]) feeds it a UDP socket and tokio
//! timers; the simulation ([`crate::cluster::sim`]) an in-memory network and
//! clock — the same code in both.
//!
//! A datagram's payload (inside the seal) starts with a frame byte:
//! - `0`: foca's own (membership, failure detection, and the state items
//!   riding on it as custom broadcasts);
//! - `1`: an anti-entropy digest: this node's [`Entry`] for every node it
//!   holds state of (or, past one datagram, a random part of them);
//! - `2`: state items, the answer to a digest.
//!
//! Anti-entropy is the pull that foca's push lacks: every [`SYNC_MS`] a node
//! sends its digest to one random member, which sends back the items of
//! every node it holds newer or other items of, and its own lines for nodes
//! the asker is ahead on (so the asker sends those). A member that missed
//! every dissemination copy of a change has it within a few seconds.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, OwnedNotification, PostcardCodec, Timer};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::cluster::seal::{MAX_DATAGRAM, OVERHEAD};
use crate::cluster::shared::Shared;
use crate::cluster::state::{Entry, Item, ItemKey, Local, Publisher, MAX_ITEM};
use crate::time::Millis;

/// The largest payload inside a sealed datagram.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - OVERHEAD;

/// A digest goes to one random member this often.
pub const SYNC_MS: Millis = 1_000;

/// A member's identity: where it listens, and a number that a restart or a
/// rejoin raises (so a node that was declared down comes back at once).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Id {
    pub addr: SocketAddr,
    pub bump: u64,
}

impl foca::Identity for Id {
    type Addr = SocketAddr;
    fn renew(&self) -> Option<Self> {
        Some(Id {
            addr: self.addr,
            bump: self.bump.wrapping_add(1),
        })
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// Why a broadcast item was refused (inside an authenticated packet).
#[derive(Debug, thiserror::Error)]
#[error("malformed state item: {0}")]
pub struct BadItem(String);

/// Hands decoded items to the merged state.
pub struct Handler {
    shared: Arc<Shared>,
    now: Arc<AtomicI64>,
}

impl Handler {
    /// `now`: the driver's clock, set before each call into foca.
    pub fn new(shared: Arc<Shared>, now: Arc<AtomicI64>) -> Handler {
        Handler { shared, now }
    }
}

impl foca::BroadcastHandler<Id> for Handler {
    type Key = ItemKey;
    type Error = BadItem;
    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&Id>,
    ) -> Result<Option<ItemKey>, BadItem> {
        let item = Item::decode(data).map_err(BadItem)?;
        let now = self.now.load(Ordering::Relaxed);
        let mut inner = self.shared.lock();
        Ok(inner.merge(&item, now).then(|| item.key()))
    }
}

/// A node with no members announces itself to its seeds again this often.
pub const REJOIN_MS: Millis = 5_000;

/// How often a node that foca holds disconnected announces itself (to its
/// seeds and a few members it knew), and to how many members.
pub const RECONNECT_MS: Millis = 1_000;
const RECONNECT_FANOUT: usize = 3;

/// How often [`Driver::tick`] is to be called (the daemon's node and the
/// simulation both use it).
pub const TICK_MS: u64 = 250;

const FRAME_FOCA: u8 = 0;
const FRAME_DIGEST: u8 = 1;
const FRAME_ITEMS: u8 = 2;

/// foca's LAN settings for `n` members, with each broadcast passed on twice
/// as often as its default (8·log10(n+1) times instead of 4·), room in each
/// datagram for the frame byte, and a partition healed within ~10 s of the
/// network coming back: every 10 s (foca's default: 65 s) two members seen
/// down are sent an announce, which brings them back as new identities.
pub fn config(n: usize) -> Config {
    let mut c = Config::new_lan(NonZeroU32::new(n.max(1) as u32).unwrap_or(NonZeroU32::MIN));
    c.max_packet_size = NonZeroUsize::new(MAX_PAYLOAD - 1).unwrap_or(NonZeroUsize::MIN);
    let tx = (8.0 * ((n + 1) as f64).log10()).clamp(4.0, 255.0) as u8;
    c.max_transmissions = std::num::NonZeroU8::new(tx).unwrap_or(c.max_transmissions);
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: std::time::Duration::from_secs(10),
        num_members: std::num::NonZeroUsize::MIN.saturating_add(1),
    });
    c
}

/// An anti-entropy digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Digest {
    entries: Vec<Entry>,
    /// Every node the sender holds is listed.
    complete: bool,
    /// An answer's ask-back: not answered with another ask.
    reply: bool,
}

/// Why an authenticated payload was refused (counted as `malformed`).
#[derive(Debug, thiserror::Error)]
pub enum BadFrame {
    #[error("empty payload")]
    Empty,
    #[error("unknown frame type {0}")]
    Kind(u8),
    #[error("foca refused it: {0}")]
    Foca(String),
    #[error("undecodable digest or items: {0}")]
    Decode(String),
}

pub struct DriverConfig {
    pub node: String,
    pub addr: SocketAddr,
    /// The identity number to start with (raised by a restart or rejoin).
    pub bump: u64,
    pub seeds: Vec<SocketAddr>,
    /// The cluster size foca is tuned for.
    pub expected_members: usize,
    pub rng_seed: u64,
}

pub struct Driver {
    foca: Foca<Id, PostcardCodec, rand::rngs::StdRng, Handler>,
    runtime: AccumulatingRuntime<Id>,
    publisher: Publisher,
    shared: Arc<Shared>,
    seeds: Vec<Id>,
    addr: SocketAddr,
    clock: Arc<AtomicI64>,
    rng: rand::rngs::StdRng,
    next_rejoin: Millis,
    next_sync: Millis,
    /// foca is connected (has told us `Active` since it last went idle,
    /// defunct or took a new identity).
    connected: bool,
    next_reconnect: Millis,
    next_square: Millis,
    sends: Vec<(SocketAddr, Vec<u8>)>,
}

impl Driver {
    /// A node, not yet joined ([`Driver::join`]).
    pub fn new(cfg: DriverConfig, shared: Arc<Shared>, now: Millis) -> Driver {
        let clock = Arc::new(AtomicI64::new(now));
        let handler = Handler::new(shared.clone(), clock.clone());
        let id = Id {
            addr: cfg.addr,
            bump: cfg.bump,
        };
        let foca = Foca::with_custom_broadcast(
            id,
            config(cfg.expected_members),
            rand::rngs::StdRng::seed_from_u64(cfg.rng_seed),
            PostcardCodec,
            handler,
        );
        let seeds = cfg
            .seeds
            .iter()
            .filter(|s| **s != cfg.addr)
            .map(|s| Id { addr: *s, bump: 0 })
            .collect();
        let mut d = Driver {
            foca,
            runtime: AccumulatingRuntime::new(),
            publisher: Publisher::new(&cfg.node),
            shared,
            seeds,
            addr: cfg.addr,
            clock,
            rng: rand::rngs::StdRng::seed_from_u64(cfg.rng_seed ^ 0x5eed),
            next_rejoin: now + REJOIN_MS,
            next_sync: now + SYNC_MS,
            connected: false,
            next_reconnect: now + RECONNECT_MS,
            next_square: now,
            sends: Vec::new(),
        };
        d.settle(now);
        d
    }

    /// Announces this node to its seeds.
    pub fn join(&mut self, now: Millis) {
        self.set_now(now);
        self.announce();
        self.settle(now);
    }

    fn announce(&mut self) {
        for s in &self.seeds {
            let _ = self.foca.announce(s.clone(), &mut self.runtime);
        }
    }

    /// foca holds this node disconnected after it took a new identity:
    /// it neither probes nor announces until it hears from an active
    /// member — and members that renewed at the same moment keep writing
    /// to each other's old identities, which foca drops, so they would
    /// wait forever (seen after a partition healed: each side told the
    /// other it was down, and all renewed at once). An announce is taken
    /// by whoever listens at the address, whatever its identity, and
    /// answered with the member list: the seeds and a few random members
    /// known (active or down) get one each time.
    fn reconnect(&mut self) {
        let mut known: Vec<SocketAddr> = self
            .foca
            .iter_membership_state()
            .map(|m| m.id().addr)
            .filter(|a| *a != self.addr && !self.seeds.iter().any(|s| s.addr == *a))
            .collect();
        known.shuffle(&mut self.rng);
        known.truncate(RECONNECT_FANOUT);
        self.announce();
        for addr in known {
            let _ = self.foca.announce(Id { addr, bump: 0 }, &mut self.runtime);
        }
    }

    fn set_now(&self, now: Millis) {
        self.clock.store(now, Ordering::Relaxed);
    }

    /// Publishes what changed in this node's state.
    pub fn local(&mut self, now: Millis, local: Local) {
        self.set_now(now);
        let cluster = self.shared.lock().clock.now(now);
        let items = self.publisher.changes(now, cluster, local);
        if !items.is_empty() {
            self.publish(now, items);
            let _ = self.foca.gossip(&mut self.runtime);
        }
        self.settle(now);
    }

    /// Own items out as broadcasts; foca hands each to the [`Handler`]
    /// first, which merges it into this node's own view (so its digest
    /// covers them).
    fn publish(&mut self, now: Millis, items: Vec<Item>) {
        self.set_now(now);
        for it in items {
            if let Err(e) = self.foca.add_broadcast(&it.encode()) {
                warn!(error = %e, "gossip item not sent");
            }
        }
    }

    /// An authenticated payload from `from`.
    pub fn receive(
        &mut self,
        now: Millis,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<(), BadFrame> {
        self.set_now(now);
        let r = self.dispatch(now, from, payload);
        self.settle(now);
        r
    }

    fn dispatch(&mut self, now: Millis, from: SocketAddr, payload: &[u8]) -> Result<(), BadFrame> {
        let (&kind, body) = payload.split_first().ok_or(BadFrame::Empty)?;
        match kind {
            FRAME_FOCA => self
                .foca
                .handle_data(body, &mut self.runtime)
                .map_err(|e| BadFrame::Foca(e.to_string())),
            FRAME_DIGEST => {
                let d: Digest =
                    postcard::from_bytes(body).map_err(|e| BadFrame::Decode(e.to_string()))?;
                let answer = self.shared.lock().state.answer(&d.entries, d.complete);
                let items: Vec<Item> = {
                    let inner = self.shared.lock();
                    answer
                        .send
                        .iter()
                        .flat_map(|n| inner.state.items_of(n))
                        .collect()
                };
                self.send_items(from, items);
                if !d.reply && !answer.ask.is_empty() {
                    self.send_digest(from, answer.ask, false, true);
                }
                Ok(())
            }
            FRAME_ITEMS => {
                let items: Vec<Item> =
                    postcard::from_bytes(body).map_err(|e| BadFrame::Decode(e.to_string()))?;
                for it in &items {
                    it.check().map_err(BadFrame::Decode)?;
                }
                let mut inner = self.shared.lock();
                for it in &items {
                    inner.merge(it, now);
                }
                Ok(())
            }
            k => Err(BadFrame::Kind(k)),
        }
    }

    /// A foca timer that went off.
    pub fn timer(&mut self, now: Millis, timer: Timer<Id>) {
        self.set_now(now);
        let _ = self.foca.handle_timer(timer, &mut self.runtime);
        self.settle(now);
    }

    /// Periodic work; call it every few hundred ms: the anti-entropy digest
    /// every [`SYNC_MS`], and every [`REJOIN_MS`] a node left alone (the
    /// others may have declared it down, and ignore it under that identity)
    /// comes back as a new identity.
    pub fn tick(&mut self, now: Millis) {
        self.set_now(now);
        if now >= self.next_sync {
            self.next_sync = now + SYNC_MS;
            // what no longer exists, dropped alike on every host
            {
                let mut inner = self.shared.lock();
                let cluster = inner.clock.now(now);
                let dropped = inner.state.prune(cluster);
                if dropped > 0 {
                    tracing::debug!(
                        dropped,
                        "gossip view: gone domains and ended signals dropped"
                    );
                }
            }
            self.publisher.prune(now);
            let peers: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
            if !peers.is_empty() {
                let to = peers[self.rng.random_range(0..peers.len())];
                let lines = {
                    let inner = self.shared.lock();
                    let mut nodes: Vec<&String> = inner.state.nodes.keys().collect();
                    if nodes.iter().map(|n| entry_size(n)).sum::<usize>() > DIGEST_ROOM {
                        // not all fit: a random part each time
                        nodes.shuffle(&mut self.rng);
                    }
                    fit(nodes.into_iter().filter_map(|n| inner.state.entry(n)))
                };
                self.send_digest(to, lines.0, lines.1, false);
            }
        }
        // what others hold of this node from a previous run: squared (each
        // second; after a fix, not again for REJOIN_MS, so two hosts wrongly
        // sharing one node name cannot outbid each other in a loop)
        if now >= self.next_square {
            self.next_square = now + SYNC_MS;
            let (fix, other_addr) = {
                let inner = self.shared.lock();
                match inner.state.nodes.get(&self.publisher.node) {
                    Some(own) => (
                        self.publisher.reconcile(own, now, inner.clock.now(now)),
                        own.summary
                            .as_ref()
                            .map(|s| s.1.addr.clone())
                            .filter(|a| *a != self.addr.to_string()),
                    ),
                    None => (Vec::new(), None),
                }
            };
            if !fix.is_empty() {
                self.next_square = now + REJOIN_MS;
                match other_addr {
                    Some(addr) => warn!(
                        node = %self.publisher.node, other = %addr,
                        "gossip: another host publishes under this node name; each host needs its own --node-name"
                    ),
                    None => info!(
                        items = fix.len(),
                        "gossip: this host's items from a previous run squared (versions raised, gone domains published)"
                    ),
                }
                self.publish(now, fix);
            }
        }
        if !self.connected && now >= self.next_reconnect {
            self.next_reconnect = now + RECONNECT_MS;
            self.reconnect();
        }
        if now >= self.next_rejoin {
            self.next_rejoin = now + REJOIN_MS;
            if self.foca.num_members() == 0 && !self.seeds.is_empty() {
                let bump = (now.max(0) as u64).max(self.foca.identity().bump + 1);
                let renewed = Id {
                    addr: self.addr,
                    bump,
                };
                let _ = self.foca.change_identity(renewed, &mut self.runtime);
                self.connected = false;
                self.announce();
            }
        }
        self.settle(now);
    }

    /// Leaves the cluster (the others see it go at once).
    pub fn leave(&mut self, now: Millis) {
        self.set_now(now);
        let _ = self.foca.leave_cluster(&mut self.runtime);
        self.settle(now);
    }

    /// Digest lines to `to`, as many as one datagram holds (`complete`
    /// only when all of them fit).
    fn send_digest(&mut self, to: SocketAddr, entries: Vec<Entry>, complete: bool, reply: bool) {
        let (entries, all) = fit(entries.into_iter());
        let d = Digest {
            complete: complete && all,
            entries,
            reply,
        };
        self.sends.push((to, encode(FRAME_DIGEST, &d)));
    }

    /// Items to `to`, packed into as few datagrams as they fit.
    fn send_items(&mut self, to: SocketAddr, items: Vec<Item>) {
        let mut batch: Vec<Item> = Vec::new();
        let mut size = 8;
        for it in items {
            let len = it.encode().len();
            if len > MAX_ITEM {
                continue;
            }
            if size + len > MAX_PAYLOAD && !batch.is_empty() {
                self.sends
                    .push((to, encode(FRAME_ITEMS, &std::mem::take(&mut batch))));
                size = 8;
            }
            size += len;
            batch.push(it);
        }
        if !batch.is_empty() {
            self.sends.push((to, encode(FRAME_ITEMS, &batch)));
        }
    }

    /// After every call: foca's notifications, and its datagrams framed
    /// into the send queue. foca keeps no history, so a member that comes
    /// up is sent this node's items directly (every node does so: the
    /// newcomer has everyone's state at once, and nothing is broadcast
    /// again to all); when this node rejoins as a new identity, what it
    /// broadcast while the others held it down was dropped by them, so all
    /// its items go out again, newly versioned.
    fn settle(&mut self, now: Millis) {
        let mut again = false;
        let mut newcomers = Vec::new();
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => {
                    debug!(member = %m.addr, "gossip member up");
                    newcomers.push(m.addr);
                }
                OwnedNotification::Rejoin(m) => {
                    info!(member = %m.addr, "gossip: rejoined as a new identity");
                    self.connected = false;
                    again = true;
                }
                OwnedNotification::MemberDown(m) => debug!(member = %m.addr, "gossip member down"),
                OwnedNotification::Active => {
                    debug!("gossip: connected");
                    self.connected = true;
                }
                OwnedNotification::Idle => {
                    debug!("gossip: no members");
                    self.connected = false;
                }
                OwnedNotification::Defunct => {
                    debug!("gossip: declared down");
                    self.connected = false;
                }
                other => debug!(notification = ?other, "gossip"),
            }
        }
        if again {
            let cluster = self.shared.lock().clock.now(now);
            let items = self.publisher.all(now, cluster);
            self.publish(now, items);
            let _ = self.foca.gossip(&mut self.runtime);
        }
        if !newcomers.is_empty() {
            let mine = self.shared.lock().state.items_of(&self.publisher.node);
            for to in newcomers {
                self.send_items(to, mine.clone());
            }
        }
        while let Some((to, data)) = self.runtime.to_send() {
            let mut framed = Vec::with_capacity(data.len() + 1);
            framed.push(FRAME_FOCA);
            framed.extend_from_slice(&data);
            self.sends.push((to.addr, framed));
        }
    }

    /// The datagrams to send (payloads, to be sealed).
    pub fn take_sends(&mut self) -> std::vec::Drain<'_, (SocketAddr, Vec<u8>)> {
        self.sends.drain(..)
    }

    /// The timers to set: after the duration, hand the timer to [`Driver::timer`].
    pub fn take_timer(&mut self) -> Option<(Duration, Timer<Id>)> {
        self.runtime.to_schedule()
    }

    /// The members as SWIM sees them (including those it declared down).
    pub fn membership(&self) -> impl Iterator<Item = (SocketAddr, foca::State)> + '_ {
        self.foca
            .iter_membership_state()
            .map(|m| (m.id().addr, m.state()))
    }

    /// The members with their identities (for tests and failure messages).
    pub fn membership_ids(&self) -> Vec<(Id, foca::State)> {
        self.foca
            .iter_membership_state()
            .map(|m| (m.id().clone(), m.state()))
            .collect()
    }

    /// Whether foca said it is connected (and has not gone idle since).
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// foca's queues: (membership updates, custom broadcasts) still to send.
    pub fn backlog(&self) -> (usize, usize) {
        (
            self.foca.updates_backlog(),
            self.foca.custom_broadcast_backlog(),
        )
    }

    pub fn num_members(&self) -> usize {
        self.foca.num_members()
    }

    pub fn identity(&self) -> &Id {
        self.foca.identity()
    }
}

/// Room for digest lines in one datagram.
const DIGEST_ROOM: usize = MAX_PAYLOAD - 16;

/// The most a digest line takes encoded: its name, the name's length and
/// two numbers of at most 10 bytes each.
fn entry_size(node: &str) -> usize {
    node.len() + 3 + 20
}

/// The first lines that fit in one digest, and whether that was all of them.
fn fit(lines: impl Iterator<Item = Entry>) -> (Vec<Entry>, bool) {
    let mut room = DIGEST_ROOM;
    let mut out = Vec::new();
    for e in lines {
        let need = entry_size(&e.node);
        if need > room {
            return (out, false);
        }
        room -= need;
        out.push(e);
    }
    (out, true)
}

fn encode<T: Serialize>(kind: u8, v: &T) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(postcard::to_allocvec(v).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(i: u8, seeds: &[SocketAddr]) -> (Driver, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let d = Driver::new(
            DriverConfig {
                node: format!("n{i}"),
                addr: SocketAddr::from(([10, 0, 0, i], 7946)),
                bump: 1,
                seeds: seeds.to_vec(),
                expected_members: 3,
                rng_seed: i as u64,
            },
            shared.clone(),
            1_000,
        );
        (d, shared)
    }

    /// Past one datagram a digest is a part, marked incomplete, and it fits.
    #[test]
    fn a_digest_too_long_for_one_datagram_is_cut_and_marked() {
        let line = |i: u64| Entry {
            node: format!("host-{i:04}.rack-7.example.net"),
            max: u64::MAX - i,
            sum: u64::MAX,
        };
        let (few, all) = fit((0..10).map(line));
        assert!(all);
        assert_eq!(few.len(), 10);
        let (part, all) = fit((0..1000).map(line));
        assert!(!all);
        assert!(part.len() > 10 && part.len() < 1000, "{}", part.len());
        let bytes = encode(
            FRAME_DIGEST,
            &Digest {
                entries: part,
                complete: false,
                reply: false,
            },
        );
        assert!(bytes.len() <= MAX_PAYLOAD, "{} bytes", bytes.len());
    }

    /// Anything as a payload: refused with a reason, nothing changes.
    #[test]
    fn bad_frames_are_refused() {
        let (mut d, shared) = driver(1, &[]);
        let from = SocketAddr::from(([10, 0, 0, 9], 7946));
        assert!(matches!(d.receive(2_000, from, &[]), Err(BadFrame::Empty)));
        assert!(matches!(
            d.receive(2_000, from, &[9, 1]),
            Err(BadFrame::Kind(9))
        ));
        assert!(d.receive(2_000, from, &[FRAME_DIGEST, 0xff, 0xff]).is_err());
        assert!(d.receive(2_000, from, &[FRAME_ITEMS, 0xff]).is_err());
        assert!(d.receive(2_000, from, &[FRAME_FOCA, 1, 2, 3]).is_err());
        assert!(shared.lock().state.nodes.is_empty());
        assert_eq!(d.take_sends().count(), 0, "nothing answered");
    }

    /// Rounds of digests between two drivers until neither sends more.
    fn sync(a: &mut Driver, sa: &Shared, b: &mut Driver, now: Millis) {
        let (aa, ba) = (a.addr, b.addr);
        let entries = sa.lock().state.entries();
        a.send_digest(ba, entries, true, false);
        for _ in 0..6 {
            let to_b: Vec<_> = a.take_sends().filter(|(to, _)| *to == ba).collect();
            for (_, p) in to_b {
                let _ = b.receive(now, aa, &p);
            }
            let to_a: Vec<_> = b.take_sends().filter(|(to, _)| *to == aa).collect();
            for (_, p) in to_a {
                let _ = a.receive(now, ba, &p);
            }
        }
    }

    /// A host restarts with its clock behind, after one of its domains left
    /// while it was down: the other host ends with the new run's state and
    /// the domain gone, though the old run's versions were higher.
    #[test]
    fn a_restart_with_the_clock_behind_is_squared_with_the_cluster() {
        use crate::cluster::state::{DomainPub, Summary};
        let local = |digest: &str, uuids: &[&str]| {
            let mut l = Local {
                summary: Some(Summary {
                    addr: "10.0.0.1:7946".into(),
                    up_since: 1,
                    digest: digest.into(),
                    daemon_version: "0".into(),
                    personas: 1,
                }),
                ..Default::default()
            };
            for u in uuids {
                l.domains.insert(
                    u.to_string(),
                    DomainPub {
                        name: format!("vm-{u}"),
                        running: true,
                        persona: Some("p".into()),
                        since: Some(1),
                        manual: None,
                        ended: vec![],
                    },
                );
            }
            l
        };
        let (mut a, sa) = driver(1, &[]);
        let (mut b, sb) = driver(2, &[]);
        a.local(90_000, local("old", &["left", "stays"]));
        sync(&mut a, &sa, &mut b, 90_000);
        assert_eq!(sb.lock().state.nodes["n1"].domains.len(), 2);
        // n1 restarts, its clock 60 s behind
        let (mut a, sa) = driver(1, &[]);
        a.local(30_000, local("new", &["stays"]));
        for t in [30_000, 30_250, 30_500] {
            sync(&mut a, &sa, &mut b, t);
            a.tick(t);
        }
        sync(&mut a, &sa, &mut b, 30_750);
        let view = sb.lock();
        let n1 = &view.state.nodes["n1"];
        assert_eq!(
            n1.summary.as_ref().map(|s| s.1.digest.as_str()),
            Some("new")
        );
        assert!(n1.domains["stays"].1.running);
        assert!(!n1.domains["left"].1.running, "{:?}", n1.domains["left"]);
        assert_eq!(
            view.state.entry("n1"),
            sa.lock().state.entry("n1"),
            "both hold the same of n1"
        );
    }

    /// Two nodes that never exchanged a broadcast agree after one digest
    /// round trip, both ways.
    #[test]
    fn a_digest_round_trip_brings_both_up_to_date() {
        use crate::cluster::state::{DomainPub, Summary};
        let (mut a, sa) = driver(1, &[]);
        let (mut b, sb) = driver(2, &[]);
        let local = |addr: &str, persona: &str| {
            let mut l = Local {
                summary: Some(Summary {
                    addr: addr.into(),
                    up_since: 1,
                    digest: "d".into(),
                    daemon_version: "0".into(),
                    personas: 1,
                }),
                ..Default::default()
            };
            for k in 0..40 {
                l.domains.insert(
                    format!("uuid-{k}"),
                    DomainPub {
                        name: format!("vm-{k}"),
                        running: true,
                        persona: Some(persona.into()),
                        since: Some(1),
                        manual: None,
                        ended: vec![],
                    },
                );
            }
            l
        };
        a.local(2_000, local("a", "x"));
        b.local(2_000, local("b", "y"));
        // nothing of it travels (no members): a asks b directly
        let _ = a.take_sends().count();
        let _ = b.take_sends().count();
        let (aa, ba) = (a.addr, b.addr);
        let entries = sa.lock().state.entries();
        a.send_digest(ba, entries, true, false);
        for _ in 0..4 {
            let to_b: Vec<_> = a.take_sends().collect();
            for (to, p) in to_b {
                assert_eq!(to, ba);
                assert!(p.len() <= MAX_PAYLOAD);
                b.receive(3_000, aa, &p).unwrap();
            }
            let to_a: Vec<_> = b.take_sends().collect();
            for (to, p) in to_a {
                assert_eq!(to, aa);
                assert!(p.len() <= MAX_PAYLOAD);
                a.receive(3_000, ba, &p).unwrap();
            }
        }
        let (x, y) = (sa.lock().state.entries(), sb.lock().state.entries());
        assert_eq!(x, y, "both hold the same");
        assert_eq!(x.len(), 2);
        assert_eq!(sa.lock().state.nodes["n2"].domains.len(), 40);
        assert_eq!(sb.lock().state.nodes["n1"].domains.len(), 40);
        // in sync: a digest is answered with nothing
        let entries = sa.lock().state.entries();
        a.send_digest(ba, entries, true, false);
        let to_b: Vec<_> = a.take_sends().collect();
        for (_, p) in to_b {
            b.receive(4_000, aa, &p).unwrap();
        }
        assert_eq!(b.take_sends().count(), 0);
    }
}
