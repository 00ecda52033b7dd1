//! What each node publishes, and the merge of what it hears (SPEC §10) — pure.
//!
//! A node's state travels as small items, each keyed by (node, part) with a
//! version: its summary (address, up since, persona-set digest, daemon
//! version), one item per domain (persona worn and since when, a manual
//! activation and its end), one per cluster-scope signal. A higher version
//! replaces a lower one, so items arrive in any order, twice, or not at all
//! until the next re-send, and every node ends with the same view. A domain
//! that leaves a node is published as gone (keeping its last manual
//! activation, so the host it moves to can continue it).
//!
//! Versions come from [`Versions`]: never below the wall clock in ms and
//! always above the last one, so a restarted node's items beat its old ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// Which part of a node's state an item carries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Part {
    Summary,
    /// A domain, by UUID.
    Domain(String),
    /// A cluster-scope signal: name and domain (`None`: host-wide).
    Signal(String, Option<String>),
}

/// A node's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Where its gossip listens.
    pub addr: String,
    pub up_since: Millis,
    /// Hash of the persona files in force (see [`digest`]).
    pub digest: String,
    pub daemon_version: String,
    pub personas: u32,
}

/// A manual activation as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manual {
    pub persona: String,
    /// `None`: until reverted.
    pub until: Option<Millis>,
    /// The activation's id ([`crate::rules::Override::id`]): the same on
    /// every host that continues it, so its end, wherever it happens, ends
    /// it everywhere.
    pub id: u64,
}

/// One domain of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainPub {
    pub name: String,
    /// Running there now; `false`: it left this node (or stopped).
    pub running: bool,
    pub persona: Option<String>,
    pub since: Option<Millis>,
    pub manual: Option<Manual>,
    /// The ids of manual activations of it that ended on this node (the
    /// newest [`ENDED_PUBLISHED`]): no host continues one of them.
    pub ended: Vec<u64>,
}

/// How many ended manual activations a domain's item carries.
pub const ENDED_PUBLISHED: usize = 8;

/// A cluster-scope signal. Its times are cluster time
/// ([`crate::cluster::clock`]), never a host's own clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalPub {
    pub value: f64,
    /// When it ends: its set time plus its duration.
    pub expires: Millis,
    /// Its setting's stamp ([`crate::cluster::clock::ClusterClock::stamp`]):
    /// of the same signal set on several hosts, the last set wins (not the
    /// last re-sent), whatever their clocks say.
    pub set_at: Millis,
}

impl SignalPub {
    /// A withdrawal (`signal-unset`): a setting that ends as it is made,
    /// so as the newest it ends the signal everywhere.
    pub fn withdrawal(now: Millis) -> SignalPub {
        SignalPub {
            value: 0.0,
            expires: now,
            set_at: now,
        }
    }
    pub fn withdrawn(&self) -> bool {
        self.expires <= self.set_at
    }
}

/// The newest setting of one cluster signal ([`ClusterState::newest_signals`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewestSignal<'a> {
    /// The host that set it.
    pub node: &'a str,
    pub name: &'a str,
    pub domain: Option<&'a str>,
    pub signal: &'a SignalPub,
    /// Its host is dead for longer than the grace: the signal ends.
    pub orphaned: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    Summary(Summary),
    Domain(DomainPub),
    Signal(SignalPub),
}

/// One gossiped item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub node: String,
    pub version: u64,
    pub part: Part,
    pub body: Body,
}

/// The largest encoded item (a datagram carries several, plus SWIM's own).
pub const MAX_ITEM: usize = 512;

impl Item {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
    /// Decodes an item; anything malformed, oversized or inconsistent is an error.
    pub fn decode(b: &[u8]) -> Result<Item, String> {
        if b.len() > MAX_ITEM {
            return Err(format!("item of {} bytes, over {MAX_ITEM}", b.len()));
        }
        let it: Item = postcard::from_bytes(b).map_err(|e| e.to_string())?;
        it.check()?;
        Ok(it)
    }
    /// An item decoded some other way (inside an anti-entropy answer) is
    /// checked the same.
    pub fn check(&self) -> Result<(), String> {
        let it = self;
        let consistent = matches!(
            (&it.part, &it.body),
            (Part::Summary, Body::Summary(_))
                | (Part::Domain(_), Body::Domain(_))
                | (Part::Signal(..), Body::Signal(_))
        );
        if !consistent || it.node.is_empty() || it.node.len() > 253 {
            return Err("inconsistent item".into());
        }
        Ok(())
    }
    pub fn key(&self) -> ItemKey {
        ItemKey {
            node: self.node.clone(),
            part: self.part.clone(),
            version: self.version,
        }
    }
}

/// What foca keeps per disseminated item: a newer version of the same
/// (node, part) replaces an older one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemKey {
    pub node: String,
    pub part: Part,
    pub version: u64,
}

impl foca::Invalidates for ItemKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && self.part == other.part && self.version >= other.version
    }
}

/// Versions for one node's items.
#[derive(Debug, Default, Clone)]
pub struct Versions(u64);

impl Versions {
    pub fn next(&mut self, now: Millis) -> u64 {
        self.0 = (self.0 + 1).max(now.max(0) as u64);
        self.0
    }
}

/// What one node is known to have.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    pub summary: Option<(u64, Summary)>,
    pub domains: BTreeMap<String, (u64, DomainPub)>,
    pub signals: BTreeMap<(String, Option<String>), (u64, SignalPub)>,
    /// When an item from it last arrived (local time).
    pub last_heard: Millis,
    /// The highest version held from it, and an order-free sum of the
    /// (part, version) pairs held: two nodes that hold the same items of a
    /// node have the same pair ([`Entry`]), kept as items arrive.
    pub max: u64,
    pub sum: u64,
}

/// One node's line in an anti-entropy digest: what the sender holds of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub node: String,
    pub max: u64,
    pub sum: u64,
}

/// What a node answers to a digest ([`ClusterState::answer`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// Nodes whose items it sends (it holds newer or other ones).
    pub send: Vec<String>,
    /// Its own lines for nodes the asker holds newer items of: sent back,
    /// so the asker sends them.
    pub ask: Vec<Entry>,
}

/// The hash of one (part, version) pair, summed per node (FNV-1a 64).
fn pair_hash(part: &Part, version: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    let bytes = postcard::to_allocvec(part).unwrap_or_default();
    for b in bytes.iter().chain(version.to_le_bytes().iter()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Every node's state as this node knows it.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeView>,
    /// Hosts forgotten ([`ClusterState::forget`]): the highest version held
    /// of each then, and when. Their old items, re-sent by a host that has
    /// not forgotten them yet, are not taken back; a newer one (the host is
    /// back) is.
    pub forgotten: BTreeMap<String, (u64, Millis)>,
    /// Cluster signals forgotten ([`ClusterState::prune`]), by (name,
    /// domain): the stamp of their newest setting then, and when (cluster
    /// time). A setting at or before it is not taken back.
    pub ended_signals: BTreeMap<(String, Option<String>), (Millis, Millis)>,
}

/// How long a forgotten host's (or signal's) tombstone is kept (a week: far
/// longer than any host takes to forget it too).
pub const TOMBSTONE_KEEP_MS: Millis = 7 * 86_400_000;

/// How long a domain published gone is kept (its item's version, which is
/// never below its host's clock when published, against cluster time): a
/// day, for the host it moves to to continue its manual activation.
pub const GONE_DOMAIN_KEEP_MS: Millis = 86_400_000;

/// How long a cluster signal's newest setting is kept once it ended (ran
/// out or was withdrawn), before only its tombstone is.
pub const ENDED_SIGNAL_KEEP_MS: Millis = 3_600_000;

impl NodeView {
    /// The highest version held and the pairs' sum, from the items held
    /// (after items were dropped: two nodes holding the same items agree).
    fn recount(&mut self) {
        let pairs = self
            .summary
            .iter()
            .map(|(v, _)| (Part::Summary, *v))
            .chain(
                self.domains
                    .iter()
                    .map(|(u, (v, _))| (Part::Domain(u.clone()), *v)),
            )
            .chain(
                self.signals
                    .iter()
                    .map(|((n, d), (v, _))| (Part::Signal(n.clone(), d.clone()), *v)),
            );
        let (mut max, mut sum) = (0u64, 0u64);
        for (part, v) in pairs {
            max = max.max(v);
            sum = sum.wrapping_add(pair_hash(&part, v));
        }
        self.max = max;
        self.sum = sum;
    }
}

impl ClusterState {
    /// Forgets every item of `node` (dead for long), keeping a tombstone.
    pub fn forget(&mut self, node: &str, now: Millis) -> bool {
        match self.nodes.remove(node) {
            Some(v) => {
                self.forgotten.insert(node.to_string(), (v.max, now));
                true
            }
            None => false,
        }
    }

    /// Drops the tombstones older than [`TOMBSTONE_KEEP_MS`].
    pub fn prune_forgotten(&mut self, now: Millis) {
        self.forgotten
            .retain(|_, (_, at)| now - *at < TOMBSTONE_KEEP_MS);
    }

    /// Drops what no longer exists, the same way on every host (so
    /// anti-entropy does not bring it back: [`ClusterState::apply_at`]
    /// refuses the same items): domains gone for longer than
    /// [`GONE_DOMAIN_KEEP_MS`]; signal settings superseded by a newer one;
    /// a signal whose newest setting ended more than
    /// [`ENDED_SIGNAL_KEEP_MS`] ago, leaving a tombstone; tombstones older
    /// than [`TOMBSTONE_KEEP_MS`]. Returns how many items were dropped.
    pub fn prune(&mut self, cluster_now: Millis) -> usize {
        let mut dropped = 0;
        // each signal's newest setting, and whether it is to go
        let mut newest: BTreeMap<(String, Option<String>), (Millis, String, Millis)> =
            BTreeMap::new();
        for (n, v) in &self.nodes {
            for (k, (_, x)) in &v.signals {
                let e = newest
                    .entry(k.clone())
                    .or_insert((x.set_at, n.clone(), x.expires));
                if (x.set_at, n.as_str()) > (e.0, e.1.as_str()) {
                    *e = (x.set_at, n.clone(), x.expires);
                }
            }
        }
        for (k, (set_at, _, expires)) in &newest {
            if *expires < cluster_now - ENDED_SIGNAL_KEEP_MS {
                self.ended_signals.insert(k.clone(), (*set_at, cluster_now));
            }
        }
        for (n, v) in self.nodes.iter_mut() {
            let before = v.domains.len() + v.signals.len();
            v.domains.retain(|_, (ver, d)| {
                d.running || (*ver).min(i64::MAX as u64) as i64 >= cluster_now - GONE_DOMAIN_KEEP_MS
            });
            v.signals.retain(|k, _| {
                newest.get(k).is_some_and(|(_, by, expires)| {
                    by == n && *expires >= cluster_now - ENDED_SIGNAL_KEEP_MS
                })
            });
            let after = v.domains.len() + v.signals.len();
            if after != before {
                dropped += before - after;
                v.recount();
            }
        }
        self.ended_signals
            .retain(|_, (_, at)| cluster_now - *at < TOMBSTONE_KEEP_MS);
        dropped
    }

    /// Items held, of every host.
    pub fn item_count(&self) -> usize {
        self.nodes
            .values()
            .map(|v| usize::from(v.summary.is_some()) + v.domains.len() + v.signals.len())
            .sum()
    }

    /// Their encoded size, in bytes.
    pub fn encoded_bytes(&self) -> usize {
        self.nodes
            .keys()
            .flat_map(|n| self.items_of(n))
            .map(|i| i.encode().len())
            .sum()
    }

    /// The version held for an item's (node, part).
    pub fn version_of(&self, node: &str, part: &Part) -> Option<u64> {
        let n = self.nodes.get(node)?;
        match part {
            Part::Summary => n.summary.as_ref().map(|s| s.0),
            Part::Domain(u) => n.domains.get(u).map(|d| d.0),
            Part::Signal(s, d) => n.signals.get(&(s.clone(), d.clone())).map(|x| x.0),
        }
    }

    /// Whether an item is one [`ClusterState::prune`] drops, so that a host
    /// that has not pruned it yet cannot send it back: a domain gone for
    /// longer than [`GONE_DOMAIN_KEEP_MS`], a signal setting superseded by a
    /// newer one of another host, ended for longer than
    /// [`ENDED_SIGNAL_KEEP_MS`], or at or before a signal's tombstone.
    fn outlived(&self, item: &Item, cluster_now: Millis) -> bool {
        match (&item.part, &item.body) {
            (Part::Domain(_), Body::Domain(d)) => {
                !d.running
                    && (item.version.min(i64::MAX as u64) as i64)
                        < cluster_now - GONE_DOMAIN_KEEP_MS
            }
            (Part::Signal(name, dom), Body::Signal(x)) => {
                let key = (name.clone(), dom.clone());
                let buried = self
                    .ended_signals
                    .get(&key)
                    .is_some_and(|(at, _)| x.set_at <= *at);
                let superseded = self.nodes.iter().any(|(n, v)| {
                    *n != item.node
                        && v.signals.get(&key).is_some_and(|(_, o)| {
                            (o.set_at, n.as_str()) > (x.set_at, item.node.as_str())
                        })
                });
                buried || superseded || x.expires < cluster_now - ENDED_SIGNAL_KEEP_MS
            }
            _ => false,
        }
    }

    /// Merges an item; true when it was new (then it is passed on).
    pub fn apply(&mut self, item: &Item, now: Millis) -> bool {
        self.apply_at(item, now, now)
    }

    /// [`ClusterState::apply`] with cluster time `cluster_now` (items
    /// [`ClusterState::prune`] would drop are not taken).
    pub fn apply_at(&mut self, item: &Item, now: Millis, cluster_now: Millis) -> bool {
        if self.outlived(item, cluster_now) {
            return false;
        }
        if let Some(&(v, _)) = self.forgotten.get(&item.node) {
            if item.version <= v {
                return false;
            }
            // newer than anything it had: the host is back
            self.forgotten.remove(&item.node);
        }
        if self
            .version_of(&item.node, &item.part)
            .is_some_and(|v| v >= item.version)
        {
            return false;
        }
        let old = self.version_of(&item.node, &item.part);
        let n = self.nodes.entry(item.node.clone()).or_default();
        n.last_heard = now;
        if let Some(v) = old {
            n.sum = n.sum.wrapping_sub(pair_hash(&item.part, v));
        }
        n.sum = n.sum.wrapping_add(pair_hash(&item.part, item.version));
        n.max = n.max.max(item.version);
        match (&item.part, &item.body) {
            (Part::Summary, Body::Summary(s)) => n.summary = Some((item.version, s.clone())),
            (Part::Domain(u), Body::Domain(d)) => {
                n.domains.insert(u.clone(), (item.version, d.clone()));
            }
            (Part::Signal(s, d), Body::Signal(x)) => {
                n.signals
                    .insert((s.clone(), d.clone()), (item.version, x.clone()));
            }
            _ => return false,
        }
        true
    }

    /// This node's digest line for `node`.
    pub fn entry(&self, node: &str) -> Option<Entry> {
        self.nodes.get(node).map(|v| Entry {
            node: node.to_string(),
            max: v.max,
            sum: v.sum,
        })
    }

    /// This node's digest line for every node it holds items of.
    pub fn entries(&self) -> Vec<Entry> {
        self.nodes.keys().filter_map(|n| self.entry(n)).collect()
    }

    /// Compares another node's digest with what this one holds. For a node
    /// where this one holds a higher version, or the same highest version
    /// but other items, this one sends its items of it; where the other
    /// holds a higher version, this one asks for them. With `complete` (the
    /// digest lists every node the other holds), nodes it does not list are
    /// sent as well.
    pub fn answer(&self, theirs: &[Entry], complete: bool) -> Answer {
        let mut a = Answer::default();
        let mut listed = std::collections::BTreeSet::new();
        for e in theirs {
            listed.insert(e.node.as_str());
            // forgotten here, and nothing newer there: not asked for again
            if self
                .forgotten
                .get(&e.node)
                .is_some_and(|(v, _)| e.max <= *v)
            {
                continue;
            }
            match self.nodes.get(&e.node) {
                Some(v) if v.max > e.max || (v.max == e.max && v.sum != e.sum) => {
                    a.send.push(e.node.clone())
                }
                Some(v) if v.max < e.max => a.ask.push(Entry {
                    node: e.node.clone(),
                    max: v.max,
                    sum: v.sum,
                }),
                Some(_) => {}
                None => a.ask.push(Entry {
                    node: e.node.clone(),
                    max: 0,
                    sum: 0,
                }),
            }
        }
        if complete {
            a.send.extend(
                self.nodes
                    .keys()
                    .filter(|n| !listed.contains(n.as_str()))
                    .cloned(),
            );
        }
        a
    }

    /// Every item held of `node`, as it was received.
    pub fn items_of(&self, node: &str) -> Vec<Item> {
        let Some(v) = self.nodes.get(node) else {
            return Vec::new();
        };
        let item = |version: u64, part: Part, body: Body| Item {
            node: node.to_string(),
            version,
            part,
            body,
        };
        let mut out = Vec::new();
        if let Some((ver, s)) = &v.summary {
            out.push(item(*ver, Part::Summary, Body::Summary(s.clone())));
        }
        for (u, (ver, d)) in &v.domains {
            out.push(item(*ver, Part::Domain(u.clone()), Body::Domain(d.clone())));
        }
        for ((name, d), (ver, x)) in &v.signals {
            out.push(item(
                *ver,
                Part::Signal(name.clone(), d.clone()),
                Body::Signal(x.clone()),
            ));
        }
        out
    }

    /// The persona-set digest most nodes have (ties: the smallest), and how many have it.
    pub fn majority_digest(&self) -> Option<(String, usize)> {
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for n in self.nodes.values() {
            if let Some((_, s)) = &n.summary {
                *count.entry(s.digest.as_str()).or_default() += 1;
            }
        }
        count
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map(|(d, n)| (d.to_string(), n))
    }

    /// Each cluster signal (name, domain) as its newest setting says (the
    /// last one set wins everywhere), on whichever host it was set last,
    /// live or not: a setting whose TTL ran out, or that its host withdrew
    /// ([`SignalPub::withdrawn`]), ends it everywhere. `gone(node)` says
    /// whether a host is dead for longer than the signals' grace: its
    /// newest settings are then `orphaned` and end too (unless another host
    /// sets the signal again, later).
    pub fn newest_signals<'a>(
        &'a self,
        gone: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = NewestSignal<'a>> + 'a {
        let mut newest: BTreeMap<(&str, Option<&str>), (Millis, &str, &SignalPub)> =
            BTreeMap::new();
        for (n, v) in &self.nodes {
            for ((name, d), (_, s)) in &v.signals {
                let e = newest.entry((name.as_str(), d.as_deref())).or_insert((
                    s.set_at,
                    n.as_str(),
                    s,
                ));
                if (s.set_at, n.as_str()) > (e.0, e.1) {
                    *e = (s.set_at, n.as_str(), s);
                }
            }
        }
        newest
            .into_iter()
            .map(move |((name, domain), (_, node, signal))| NewestSignal {
                node,
                name,
                domain,
                signal,
                orphaned: gone(node),
            })
    }

    /// A manual activation of domain `uuid` on another node that the domain
    /// has left (published as gone, or that node is no longer alive), still
    /// running at `now`: what a host the domain moved to continues. The
    /// newest such one.
    pub fn manual_left_behind(
        &self,
        uuid: &str,
        me: &str,
        ended_here: &[u64],
        alive: impl Fn(&str) -> bool,
        now: Millis,
    ) -> Option<(String, Manual)> {
        // ended anywhere (here, or on any host that published its end)
        let ended = |id: u64| {
            ended_here.contains(&id)
                || self.nodes.values().any(|v| {
                    v.domains
                        .get(uuid)
                        .is_some_and(|(_, d)| d.ended.contains(&id))
                })
        };
        self.nodes
            .iter()
            .filter(|(n, _)| n.as_str() != me)
            .filter_map(|(n, v)| {
                let (ver, d) = v.domains.get(uuid)?;
                let m = d.manual.as_ref()?;
                let left = !d.running || !alive(n);
                let live = m.until.is_none_or(|u| u > now) && !ended(m.id);
                (left && live).then(|| (*ver, n.clone(), m.clone()))
            })
            .max_by_key(|(ver, _, _)| *ver)
            .map(|(_, n, m)| (n, m))
    }
}

/// The local state to publish, as the control loop sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Local {
    pub summary: Option<Summary>,
    /// By UUID.
    pub domains: BTreeMap<String, DomainPub>,
    /// By (name, domain).
    pub signals: BTreeMap<(String, Option<String>), SignalPub>,
}

/// Turns changes of the local state into items (new versions).
#[derive(Debug, Default)]
pub struct Publisher {
    pub node: String,
    versions: Versions,
    last: Local,
    /// When each domain went gone (this host's clock), to forget it after
    /// [`GONE_DOMAIN_KEEP_MS`] as every view does.
    gone_at: BTreeMap<String, Millis>,
}

impl Publisher {
    pub fn new(node: &str) -> Publisher {
        Publisher {
            node: node.to_string(),
            ..Default::default()
        }
    }

    /// The items that changed since the last call; domains no longer there
    /// are published once as gone (with their last manual activation).
    /// `now` is this host's clock (versions never fall below it), `cluster`
    /// cluster time (signals end on it).
    pub fn changes(&mut self, now: Millis, cluster: Millis, mut local: Local) -> Vec<Item> {
        let mut out = Vec::new();
        let item = |v: &mut Versions, part: Part, body: Body| Item {
            node: self.node.clone(),
            version: v.next(now),
            part,
            body,
        };
        if local.summary != self.last.summary {
            if let Some(s) = &local.summary {
                out.push(item(
                    &mut self.versions,
                    Part::Summary,
                    Body::Summary(s.clone()),
                ));
            }
        }
        for (u, d) in &local.domains {
            if self.last.domains.get(u) != Some(d) {
                out.push(item(
                    &mut self.versions,
                    Part::Domain(u.clone()),
                    Body::Domain(d.clone()),
                ));
            }
        }
        for (u, d) in &self.last.domains {
            if d.running && !local.domains.contains_key(u) {
                let gone = DomainPub {
                    running: false,
                    persona: None,
                    since: None,
                    ..d.clone()
                };
                out.push(item(
                    &mut self.versions,
                    Part::Domain(u.clone()),
                    Body::Domain(gone.clone()),
                ));
                local.domains.insert(u.clone(), gone);
                self.gone_at.insert(u.clone(), now);
            }
        }
        // a domain back here is no longer gone
        self.gone_at
            .retain(|u, _| !local.domains.get(u).is_some_and(|d| d.running));
        for (k, s) in &local.signals {
            if self.last.signals.get(k) != Some(s) {
                out.push(item(
                    &mut self.versions,
                    Part::Signal(k.0.clone(), k.1.clone()),
                    Body::Signal(s.clone()),
                ));
            }
        }
        // expired signals are not re-published; receivers drop them by time
        local.signals.retain(|_, s| s.expires > cluster);
        self.last = local;
        out
    }

    /// Forgets the domains gone for longer than [`GONE_DOMAIN_KEEP_MS`] at
    /// `now` (this host's clock), as the views do.
    pub fn prune(&mut self, now: Millis) {
        let old: Vec<String> = self
            .gone_at
            .iter()
            .filter(|(_, at)| now - **at > GONE_DOMAIN_KEEP_MS)
            .map(|(u, _)| u.clone())
            .collect();
        for u in old {
            self.gone_at.remove(&u);
            if self.last.domains.get(&u).is_some_and(|d| !d.running) {
                self.last.domains.remove(&u);
            }
        }
    }

    /// Squares what the cluster holds of this node (`own`, its view of
    /// itself, which also takes what others send of it) with this run:
    /// - items of a previous run with versions at or above this run's (the
    ///   clock went back across a restart) would beat everything this run
    ///   publishes: versions jump past them and every item goes out again;
    /// - a domain a previous run published as running that this run does not
    ///   know (it left while the daemon was down) is published as gone.
    ///
    /// Nothing is marked gone before this run's first publication (its own
    /// domains are not known yet). Returns the items to send.
    pub fn reconcile(&mut self, own: &NodeView, now: Millis, cluster: Millis) -> Vec<Item> {
        let mut out = Vec::new();
        if own.max > self.versions.0 {
            self.versions.0 = own.max;
            if self.last.summary.is_some() {
                out = self.all(now, cluster);
            }
        }
        if self.last.summary.is_none() {
            return out;
        }
        for (u, (_, d)) in &own.domains {
            if d.running && !self.last.domains.contains_key(u) {
                let gone = DomainPub {
                    running: false,
                    persona: None,
                    since: None,
                    ..d.clone()
                };
                out.push(Item {
                    node: self.node.clone(),
                    version: self.versions.next(now),
                    part: Part::Domain(u.clone()),
                    body: Body::Domain(gone.clone()),
                });
                self.last.domains.insert(u.clone(), gone);
                self.gone_at.insert(u.clone(), now);
            }
        }
        out
    }

    /// Every item again with new versions: for a member that came up or
    /// rejoined (foca keeps no history).
    pub fn all(&mut self, now: Millis, cluster: Millis) -> Vec<Item> {
        let last = std::mem::take(&mut self.last);
        let mut pending = last.clone();
        pending.domains.retain(|_, d| d.running);
        self.last = Local::default();
        let mut items = self.changes(now, cluster, pending);
        // gone domains stay known as gone
        for (u, d) in last.domains.into_iter().filter(|(_, d)| !d.running) {
            self.last.domains.entry(u).or_insert(d);
        }
        items.retain(|i| !matches!(&i.body, Body::Signal(s) if s.expires <= cluster));
        items
    }
}

/// The persona-set digest: a hash of the persona files in force (path-free:
/// the ids and the canonical JSON of each), the same on every host that runs
/// the same personas. FNV-1a 64, hex.
pub fn digest(personas: &[std::sync::Arc<crate::model::persona::Persona>]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut ps: Vec<String> = personas
        .iter()
        .map(|p| serde_json::to_string(p.as_ref()).unwrap_or_default())
        .collect();
    ps.sort();
    for p in ps {
        for b in p.bytes().chain([0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(name: &str, persona: Option<&str>) -> DomainPub {
        DomainPub {
            name: name.into(),
            running: true,
            persona: persona.map(str::to_string),
            since: Some(1),
            manual: None,
            ended: vec![],
        }
    }

    fn summary(d: &str) -> Summary {
        Summary {
            addr: "127.0.0.1:1".into(),
            up_since: 1,
            digest: d.into(),
            daemon_version: "0.1.0".into(),
            personas: 3,
        }
    }

    #[test]
    fn items_round_trip_and_garbage_is_refused() {
        let it = Item {
            node: "a".into(),
            version: 7,
            part: Part::Domain("u".into()),
            body: Body::Domain(dom("web-1", Some("p"))),
        };
        assert_eq!(Item::decode(&it.encode()).unwrap(), it);
        assert!(Item::decode(&[0xff; 40]).is_err());
        assert!(Item::decode(&[0u8; 600]).is_err());
        let mut bad = it.clone();
        bad.part = Part::Summary;
        assert!(
            Item::decode(&bad.encode()).is_err(),
            "part and body disagree"
        );
    }

    /// The same items in any order, duplicated, give the same view; an old
    /// version never replaces a newer one.
    #[test]
    fn merge_is_order_and_duplicate_free() {
        let mut p = Publisher::new("a");
        let mut local = Local {
            summary: Some(summary("d1")),
            ..Default::default()
        };
        local.domains.insert("u1".into(), dom("web-1", None));
        let mut items = p.changes(100, 100, local.clone());
        local.domains.insert("u1".into(), dom("web-1", Some("hot")));
        local.signals.insert(
            ("lb".into(), None),
            SignalPub {
                value: 5.0,
                expires: 10_000,
                set_at: 200,
            },
        );
        items.extend(p.changes(200, 200, local.clone()));
        local.domains.clear();
        items.extend(p.changes(300, 300, local));
        let mut forward = ClusterState::default();
        for i in &items {
            forward.apply(i, 1);
        }
        let mut backward = ClusterState::default();
        for i in items.iter().rev().chain(items.iter()) {
            backward.apply(i, 1);
        }
        assert_eq!(forward.nodes, backward.nodes);
        let (_, d) = &forward.nodes["a"].domains["u1"];
        assert!(!d.running, "gone last");
        // what a host takes: the newest setting of each, set elsewhere, live
        fn taken<'a>(st: &'a ClusterState, me: &'a str, now: Millis) -> Vec<(&'a str, f64)> {
            st.newest_signals(|_| false)
                .filter(|x| x.node != me && x.signal.expires > now)
                .map(|x| (x.node, x.signal.value))
                .collect()
        }
        assert_eq!(taken(&forward, "b", 5_000).len(), 1);
        assert!(taken(&forward, "a", 5_000).is_empty(), "not my own");
        assert!(taken(&forward, "b", 10_001).is_empty(), "expired");
        assert!(!forward.apply(&items[0], 2), "stale is not new");
        // the same signal set later on b wins, on a as well
        forward.apply(
            &Item {
                node: "b".into(),
                version: 10_000,
                part: Part::Signal("lb".into(), None),
                body: Body::Signal(SignalPub {
                    value: 7.0,
                    expires: 20_000,
                    set_at: 400,
                }),
            },
            3,
        );
        assert_eq!(taken(&forward, "a", 5_000), [("b", 7.0)]);
        assert!(taken(&forward, "b", 5_000).is_empty(), "b's own is newest");
        // withdrawn on a later still: ended everywhere, nothing older comes back
        forward.apply(
            &Item {
                node: "a".into(),
                version: 20_000,
                part: Part::Signal("lb".into(), None),
                body: Body::Signal(SignalPub::withdrawal(500)),
            },
            4,
        );
        assert!(taken(&forward, "b", 5_000).is_empty());
        assert!(taken(&forward, "a", 5_000).is_empty());
        let newest: Vec<_> = forward.newest_signals(|_| false).collect();
        assert!(
            newest.len() == 1 && newest[0].signal.withdrawn(),
            "{newest:?}"
        );
        // a host gone past the grace: its newest setting is orphaned (and
        // b's older one does not come back)
        let without_a: Vec<_> = forward.newest_signals(|n| n == "a").collect();
        assert_eq!((without_a[0].node, without_a[0].orphaned), ("a", true));
    }

    #[test]
    fn versions_beat_a_previous_run_and_rise() {
        let mut v = Versions::default();
        let a = v.next(1000);
        let b = v.next(1000);
        assert!(b > a);
        let mut restarted = Versions::default();
        assert!(restarted.next(2000) > b);
    }

    /// A restart whose clock went back, after a domain left while the
    /// daemon was down: the previous run's items come back from the others;
    /// this run's versions jump past them, everything goes out again, and
    /// the domain that left is published gone.
    #[test]
    fn a_restart_squares_the_previous_runs_items() {
        let mut cluster = ClusterState::default();
        let mut old = Publisher::new("a");
        let mut was = Local {
            summary: Some(summary("old")),
            ..Default::default()
        };
        was.domains.insert("left".into(), dom("left", Some("hot")));
        was.domains
            .insert("stays".into(), dom("stays", Some("hot")));
        for it in old.changes(50_000, 50_000, was) {
            cluster.apply(&it, 50_000);
        }
        // restarted, its clock 20 s behind; its own view starts empty
        let mut new = Publisher::new("a");
        let mut mine = ClusterState::default();
        assert!(new
            .reconcile(&NodeView::default(), 30_000, 30_000)
            .is_empty());
        let mut now_local = Local {
            summary: Some(summary("new")),
            ..Default::default()
        };
        now_local
            .domains
            .insert("stays".into(), dom("stays", Some("calm")));
        let first = new.changes(30_000, 30_000, now_local);
        for it in &first {
            mine.apply(it, 30_000);
            assert!(!cluster.apply(it, 30_000), "lower versions lose: {it:?}");
        }
        // nothing to square while only its own items are there
        assert!(new.reconcile(&mine.nodes["a"], 30_000, 30_000).is_empty());
        // the others' items of it arrive
        for n in ["left", "stays"] {
            let (v, d) = cluster.nodes["a"].domains[n].clone();
            mine.apply(
                &Item {
                    node: "a".into(),
                    version: v,
                    part: Part::Domain(n.into()),
                    body: Body::Domain(d),
                },
                30_100,
            );
        }
        let fix = new.reconcile(&mine.nodes["a"], 30_200, 30_200);
        assert!(!fix.is_empty());
        for it in &fix {
            assert!(it.version > 50_000, "{it:?}");
            cluster.apply(it, 30_200);
        }
        let a = &cluster.nodes["a"];
        assert_eq!(a.summary.as_ref().map(|s| s.1.digest.as_str()), Some("new"));
        assert_eq!(a.domains["stays"].1.persona.as_deref(), Some("calm"));
        assert!(
            !a.domains["left"].1.running,
            "gone: {:?}",
            a.domains["left"]
        );
        // squared: applied to its own view too, nothing more to do
        for it in &fix {
            mine.apply(it, 30_200);
        }
        assert!(new.reconcile(&mine.nodes["a"], 30_300, 30_300).is_empty());
    }

    #[test]
    fn majority_digest_and_the_manual_left_behind() {
        let mut st = ClusterState::default();
        for (n, d) in [("a", "x"), ("b", "x"), ("c", "y")] {
            st.apply(
                &Item {
                    node: n.into(),
                    version: 1,
                    part: Part::Summary,
                    body: Body::Summary(summary(d)),
                },
                1,
            );
        }
        assert_eq!(st.majority_digest(), Some(("x".into(), 2)));
        let mut d = dom("mig-1", Some("hot"));
        d.manual = Some(Manual {
            persona: "hot".into(),
            until: Some(60_000),
            id: 1,
        });
        st.apply(
            &Item {
                node: "a".into(),
                version: 2,
                part: Part::Domain("u".into()),
                body: Body::Domain(d.clone()),
            },
            1,
        );
        let alive = |n: &str| n != "dead";
        assert_eq!(
            st.manual_left_behind("u", "b", &[], alive, 1000),
            None,
            "still running on a"
        );
        assert!(
            st.manual_left_behind("u", "b", &[], |n| n != "a", 1000)
                .is_some(),
            "a is dead"
        );
        d.running = false;
        st.apply(
            &Item {
                node: "a".into(),
                version: 3,
                part: Part::Domain("u".into()),
                body: Body::Domain(d),
            },
            1,
        );
        assert_eq!(
            st.manual_left_behind("u", "b", &[], alive, 1000),
            Some((
                "a".into(),
                Manual {
                    persona: "hot".into(),
                    until: Some(60_000),
                    id: 1,
                }
            ))
        );
        assert_eq!(
            st.manual_left_behind("u", "b", &[], alive, 60_001),
            None,
            "over"
        );
        assert_eq!(
            st.manual_left_behind("u", "a", &[], alive, 1000),
            None,
            "not from myself"
        );
    }

    #[test]
    fn all_resends_everything_with_new_versions() {
        let mut p = Publisher::new("a");
        let mut local = Local {
            summary: Some(summary("d")),
            ..Default::default()
        };
        local.domains.insert("u1".into(), dom("web-1", None));
        let first = p.changes(100, 100, local.clone());
        assert_eq!(first.len(), 2);
        assert!(
            p.changes(150, 150, local.clone()).is_empty(),
            "nothing changed"
        );
        let again = p.all(200, 200);
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|i| i.version > first[1].version));
        assert!(p.changes(250, 250, local).is_empty());
    }

    /// A forgotten host's old items, re-sent by a host that still has them,
    /// are not taken back (nor asked for); a newer one is (the host is back).
    #[test]
    fn a_forgotten_host_stays_forgotten_until_it_publishes_again() {
        let mut p = Publisher::new("a");
        let local = Local {
            summary: Some(Summary {
                addr: "10.0.0.1:7946".into(),
                up_since: 1,
                digest: "d".into(),
                daemon_version: "0.3.0".into(),
                personas: 1,
            }),
            ..Default::default()
        };
        let items = p.changes(1_000, 1_000, local.clone());
        let mut st = ClusterState::default();
        let mut other = ClusterState::default();
        for i in &items {
            st.apply(i, 1_000);
            other.apply(i, 1_000);
        }
        assert_eq!(st.item_count(), 1);
        assert!(st.encoded_bytes() > 0);
        assert!(st.forget("a", 2_000));
        assert_eq!((st.item_count(), st.encoded_bytes()), (0, 0));
        for i in other.items_of("a") {
            assert!(!st.apply(&i, 3_000), "not taken back");
        }
        assert!(st.nodes.is_empty());
        let a = st.answer(&other.entries(), true);
        assert!(a.ask.is_empty() && a.send.is_empty(), "{a:?}");
        // back: a newer version
        let mut changed = local;
        if let Some(s) = changed.summary.as_mut() {
            s.up_since = 5;
        }
        let newer = p.changes(4_000, 4_000, changed);
        assert!(st.apply(&newer[0], 4_000));
        assert!(st.forgotten.is_empty());
        // tombstones go after a week
        st.forget("a", 5_000);
        st.prune_forgotten(5_000 + TOMBSTONE_KEEP_MS);
        assert!(st.forgotten.is_empty());
    }

    /// What no longer exists is dropped alike everywhere: a domain gone for
    /// a day, a superseded setting, a signal ended an hour ago (tombstoned);
    /// a host that has not pruned yet cannot send any of it back, and two
    /// views holding the same items have the same digest line.
    #[test]
    fn pruning_drops_what_no_longer_exists_and_nothing_comes_back() {
        let t0: Millis = 1_800_000_000_000;
        let sig = |v: f64, set_at: Millis, ttl: Millis| SignalPub {
            value: v,
            expires: set_at + ttl,
            set_at,
        };
        let mut a = Publisher::new("a");
        let mut b = Publisher::new("b");
        let mut la = Local {
            summary: Some(summary("d")),
            ..Default::default()
        };
        la.domains.insert("u1".into(), dom("web-1", None));
        la.domains.insert("u2".into(), dom("web-2", None));
        la.signals
            .insert(("lb.rps".into(), None), sig(1.0, t0, 10 * 60_000));
        let mut lb = Local {
            summary: Some(summary("d")),
            ..Default::default()
        };
        let mut items = a.changes(t0, t0, la.clone());
        // b sets the same signal later: a's setting is superseded
        lb.signals
            .insert(("lb.rps".into(), None), sig(2.0, t0 + 1_000, 10 * 60_000));
        items.extend(b.changes(t0 + 1_000, t0 + 1_000, lb.clone()));
        // u2 goes
        la.domains.remove("u2");
        items.extend(a.changes(t0 + 2_000, t0 + 2_000, la.clone()));
        let mut st = ClusterState::default();
        let mut lagging = ClusterState::default();
        for i in &items {
            st.apply_at(i, t0 + 2_000, t0 + 2_000);
            lagging.apply(i, t0);
        }
        assert_eq!(st.nodes["a"].signals.len(), 1, "held until pruned");
        assert_eq!(st.prune(t0 + 3_000), 1, "a's superseded setting");
        assert!(st.nodes["a"].signals.is_empty());
        assert_eq!(st.nodes["a"].domains.len(), 2, "u2 gone, kept for a day");
        // a day later: u2 goes; 10 minutes + an hour after b's: the signal
        let day = t0 + 2_000 + GONE_DOMAIN_KEEP_MS + 1;
        assert_eq!(st.prune(day), 2);
        assert_eq!(st.nodes["a"].domains.keys().collect::<Vec<_>>(), ["u1"]);
        assert!(st.nodes["b"].signals.is_empty());
        assert!(st.ended_signals.contains_key(&("lb.rps".to_string(), None)));
        // the lagging host sends all it holds: nothing comes back
        for n in ["a", "b"] {
            for i in lagging.items_of(n) {
                assert!(!st.apply_at(&i, day, day), "{i:?} came back");
            }
        }
        // once it prunes too, the two agree
        lagging.prune(day);
        for n in ["a", "b"] {
            assert_eq!(lagging.entry(n), st.entry(n), "{n}");
        }
        // a new setting after the tombstone is taken
        let stamp = day + 5;
        lb.signals
            .insert(("lb.rps".into(), None), sig(3.0, stamp, 60_000));
        let fresh = b.changes(day, day, lb);
        assert!(st.apply_at(&fresh[0], day, day));
        // the publisher forgets the gone domain too: not re-sent by all()
        a.prune(day);
        assert!(a
            .all(day, day)
            .iter()
            .all(|i| i.part != Part::Domain("u2".into())));
        // the first tombstone goes after a week; the new setting, long
        // ended by then, leaves its own
        st.prune(day + TOMBSTONE_KEEP_MS + ENDED_SIGNAL_KEEP_MS + 2 * 60_000);
        let left: Vec<Millis> = st.ended_signals.values().map(|(at, _)| *at).collect();
        assert_eq!(left, [stamp]);
    }
}
