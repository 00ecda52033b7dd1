//! The gossip node: `foca` (SWIM with suspicion) driven by a tokio UDP socket
//! and timers — the only code that touches the network for gossip. Runs as
//! one task on the daemon's network runtime; the control loop hands it the
//! local state by channel and reads the merged view from [`Shared`].
//!
//! Every datagram goes through [`crate::cluster::seal`]: sealed on the way
//! out, opened (authenticated, fresh, once) on the way in; what does not
//! open is counted by reason and never reaches foca. State travels as foca
//! custom broadcasts ([`crate::cluster::state::Item`]); a member that comes
//! up or rejoins gets every local item again (foca keeps no history); against
//! loss the summary is re-sent every 30 s and everything every 300 s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, OwnedNotification, PostcardCodec, Timer};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::cluster::seal::{Drop, KeyRing, Opener, Sealer, MAX_DATAGRAM, OVERHEAD};
use crate::cluster::state::{ClusterState, Item, ItemKey, Local, Publisher};
use crate::collector::Millis;

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
    clock: fn() -> Millis,
}

impl Handler {
    pub fn new(shared: Arc<Shared>, clock: fn() -> Millis) -> Handler {
        Handler { shared, clock }
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
        let now = (self.clock)();
        let mut inner = self.shared.lock();
        Ok(inner.state.apply(&item, now).then(|| item.key()))
    }
}

/// A member as SWIM sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberView {
    pub addr: String,
    /// "alive", "suspect" or "dead".
    pub state: &'static str,
    pub since: Millis,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub dropped: BTreeMap<&'static str, u64>,
}

/// What the node shares with the loop and the API.
#[derive(Debug, Default)]
pub struct Inner {
    pub state: ClusterState,
    /// By address.
    pub members: BTreeMap<SocketAddr, MemberView>,
    pub counters: Counters,
    pub me: String,
    pub my_addr: String,
    /// When an authenticated datagram last came from each address.
    pub last_packet: BTreeMap<SocketAddr, Millis>,
}

#[derive(Debug, Default)]
pub struct Shared(Mutex<Inner>);

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panic elsewhere must not take the cluster view with it
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the loop tells the node.
pub enum ToNode {
    Local(Local),
    /// Replace the key ring (a reload).
    Keys(KeyRing),
    Stop,
}

pub struct NodeConfig {
    pub node: String,
    pub listen: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub ring: KeyRing,
    pub cluster: String,
    pub clock: fn() -> Millis,
}

/// Every local item is sent again this often (against loss; foca keeps no
/// history), the summary alone every 30 s.
pub const RESEND_ALL_MS: u64 = 300_000;

/// foca's LAN settings for `n` members, with each broadcast passed on twice
/// as often as its default (8·log10(n+1) times instead of 4·): an item all
/// copies of which missed a member waits for the next full re-send.
pub fn config(n: usize) -> Config {
    let mut c = Config::new_lan(NonZeroU32::new(n.max(1) as u32).unwrap_or(NonZeroU32::MIN));
    c.max_packet_size = NonZeroUsize::new(MAX_DATAGRAM - OVERHEAD).unwrap_or(NonZeroUsize::MIN);
    let tx = (8.0 * ((n + 1) as f64).log10()).clamp(4.0, 255.0) as u8;
    c.max_transmissions = std::num::NonZeroU8::new(tx).unwrap_or(c.max_transmissions);
    c
}

enum Input {
    Data(Vec<u8>, SocketAddr),
    Timer(Timer<Id>),
}

/// Binds the socket and starts the node on `rt`. Returns the channel to it.
pub fn start(
    rt: &tokio::runtime::Handle,
    cfg: NodeConfig,
    shared: Arc<Shared>,
) -> std::io::Result<(mpsc::Sender<ToNode>, SocketAddr)> {
    let std_socket = std::net::UdpSocket::bind(cfg.listen)?;
    std_socket.set_nonblocking(true)?;
    let addr = std_socket.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let socket = {
        let _guard = rt.enter();
        UdpSocket::from_std(std_socket)?
    };
    {
        let mut i = shared.lock();
        i.me = cfg.node.clone();
        i.my_addr = addr.to_string();
    }
    rt.spawn(run(cfg, addr, socket, shared, rx));
    Ok((tx, addr))
}

fn member_state(s: foca::State) -> &'static str {
    match s {
        foca::State::Alive => "alive",
        foca::State::Suspect => "suspect",
        foca::State::Down => "dead",
    }
}

async fn run(
    cfg: NodeConfig,
    addr: SocketAddr,
    socket: UdpSocket,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<ToNode>,
) {
    let socket = Arc::new(socket);
    let now = cfg.clock;
    let id = Id {
        addr,
        bump: now().max(0) as u64,
    };
    let config = config(16);
    let handler = Handler {
        shared: shared.clone(),
        clock: cfg.clock,
    };
    let rng: rand::rngs::StdRng = rand::make_rng();
    let mut foca = Foca::with_custom_broadcast(id, config, rng, PostcardCodec, handler);
    let prefix: [u8; 4] = rand::random();
    let mut sealer = Sealer::new(cfg.ring.clone(), &cfg.cluster, prefix);
    let mut opener = Opener::new(cfg.ring, &cfg.cluster);
    let mut publisher = Publisher::new(&cfg.node);
    let mut runtime = AccumulatingRuntime::new();
    let (in_tx, mut in_rx) = mpsc::channel::<Input>(1024);

    // the receiving half: datagrams in, as bytes
    {
        let socket = socket.clone();
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        if in_tx
                            .send(Input::Data(buf[..n].to_vec(), from))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "gossip receive");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    let seeds: Vec<Id> = cfg
        .seeds
        .iter()
        .filter(|s| **s != addr)
        .map(|s| Id { addr: *s, bump: 0 })
        .collect();
    for s in &seeds {
        let _ = foca.announce(s.clone(), &mut runtime);
    }
    let mut resend = tokio::time::interval(Duration::from_secs(30));
    let mut resend_all = tokio::time::interval(Duration::from_millis(RESEND_ALL_MS));
    resend_all.tick().await;
    let mut rejoin = tokio::time::interval(Duration::from_secs(5));
    info!(%addr, node = %cfg.node, seeds = seeds.len(), "gossip listening");
    loop {
        let mut outgoing: Vec<Item> = Vec::new();
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(ToNode::Local(local)) => outgoing = publisher.changes(now(), local),
                Some(ToNode::Keys(ring)) => {
                    info!(keys = ring.len(), "gossip keys reloaded");
                    sealer.set_ring(ring.clone());
                    opener.set_ring(ring);
                }
                Some(ToNode::Stop) | None => {
                    let _ = foca.leave_cluster(&mut runtime);
                    flush(&mut runtime, &socket, &mut sealer, &shared, &in_tx, now()).await;
                    return;
                }
            },
            input = in_rx.recv() => match input {
                Some(Input::Data(bytes, from)) => {
                    let t = now();
                    match opener.open(&bytes, t) {
                        Ok(payload) => {
                            {
                                let mut i = shared.lock();
                                i.counters.packets_received += 1;
                                i.counters.bytes_received += bytes.len() as u64;
                                i.last_packet.insert(from, t);
                            }
                            if let Err(e) = foca.handle_data(&payload, &mut runtime) {
                                // authentic but not understood: counted, nothing changes
                                debug!(error = %e, "gossip data refused");
                                *shared.lock().counters.dropped.entry("malformed").or_default() += 1;
                            }
                        }
                        Err(why) => count_drop(&shared, why),
                    }
                }
                Some(Input::Timer(t)) => {
                    let _ = foca.handle_timer(t, &mut runtime);
                }
                None => return,
            },
            _ = resend.tick() => {
                // against loss: the summary again now and then
                outgoing = publisher.all(now()).into_iter().filter(|i| i.part == crate::cluster::state::Part::Summary).collect();
            }
            _ = resend_all.tick() => outgoing = publisher.all(now()),
            _ = rejoin.tick() => {
                if foca.num_members() == 0 && !seeds.is_empty() {
                    // alone: the others may have declared this node down, and
                    // ignore it under that identity; come back as a new one
                    let renewed = Id { addr, bump: (now().max(0) as u64).max(foca.identity().bump + 1) };
                    let _ = foca.change_identity(renewed, &mut runtime);
                    for s in &seeds {
                        let _ = foca.announce(s.clone(), &mut runtime);
                    }
                }
            }
        }
        for it in outgoing {
            let bytes = it.encode();
            if let Err(e) = foca.add_broadcast(&bytes) {
                warn!(error = %e, "gossip item not sent");
            }
        }
        // a member that came up or rejoined gets everything again
        let mut resend_all = false;
        while let Some(n) = runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => {
                    info!(member = %m.addr, "gossip member up");
                    resend_all = true;
                }
                OwnedNotification::Rejoin(m) => {
                    info!(member = %m.addr, "gossip: rejoined as a new identity");
                    resend_all = true;
                }
                OwnedNotification::MemberDown(m) => {
                    info!(member = %m.addr, "gossip member down");
                }
                OwnedNotification::Idle => debug!("gossip: no members"),
                other => debug!(notification = ?other, "gossip"),
            }
        }
        if resend_all {
            for it in publisher.all(now()) {
                let _ = foca.add_broadcast(&it.encode());
            }
            let _ = foca.gossip(&mut runtime);
        }
        refresh_members(&foca, &shared, now());
        flush(&mut runtime, &socket, &mut sealer, &shared, &in_tx, now()).await;
    }
}

fn count_drop(shared: &Shared, why: Drop) {
    *shared
        .lock()
        .counters
        .dropped
        .entry(why.label())
        .or_default() += 1;
}

fn refresh_members(
    foca: &Foca<Id, PostcardCodec, rand::rngs::StdRng, Handler>,
    shared: &Shared,
    now: Millis,
) {
    let mut i = shared.lock();
    let mut seen = std::collections::BTreeSet::new();
    for m in foca.iter_membership_state() {
        let addr = m.id().addr;
        seen.insert(addr);
        let state = member_state(m.state());
        let e = i.members.entry(addr).or_insert(MemberView {
            addr: addr.to_string(),
            state,
            since: now,
        });
        if e.state != state {
            e.state = state;
            e.since = now;
        }
    }
    // removed by foca after long down: keep them as dead
    for (a, m) in i.members.iter_mut() {
        if !seen.contains(a) && m.state != "dead" {
            m.state = "dead";
            m.since = now;
        }
    }
}

async fn flush(
    runtime: &mut AccumulatingRuntime<Id>,
    socket: &UdpSocket,
    sealer: &mut Sealer,
    shared: &Shared,
    in_tx: &mpsc::Sender<Input>,
    now: Millis,
) {
    while let Some((to, data)) = runtime.to_send() {
        let packet = sealer.seal(&data, now);
        match socket.send_to(&packet, to.addr).await {
            Ok(n) => {
                let mut i = shared.lock();
                i.counters.packets_sent += 1;
                i.counters.bytes_sent += n as u64;
            }
            Err(e) => debug!(to = %to.addr, error = %e, "gossip send"),
        }
    }
    while let Some((after, timer)) = runtime.to_schedule() {
        let tx = in_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Input::Timer(timer)).await;
        });
    }
}
