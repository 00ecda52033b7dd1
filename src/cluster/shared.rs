//! The cluster's shared view: what the gossip node writes and the control
//! loop, the API and the driver read (members, the merged state, counters).
//! Apart from `node.rs` so that the driver and the node both depend on it and
//! not on each other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use serde::Serialize;

use crate::cluster::state::{Body, ClusterState, Item};
use crate::time::Millis;

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
    /// Bytes per second over the last [`RATE_WINDOW_MS`] (sent, received).
    pub bytes_per_second: (f64, f64),
    /// foca's queues still to send: membership updates, state items.
    pub backlog: (usize, usize),
}

/// The window of the bytes-per-second figures.
pub const RATE_WINDOW_MS: Millis = 10_000;

/// Bytes per second from the running totals, over a sliding window.
#[derive(Debug, Default)]
pub struct Rates {
    /// (when, bytes sent, bytes received), oldest first.
    samples: std::collections::VecDeque<(Millis, u64, u64)>,
}

impl Rates {
    /// The totals at `now`; returns (sent, received) bytes per second over
    /// the samples of the last window (0 until two samples are apart).
    pub fn observe(&mut self, now: Millis, sent: u64, received: u64) -> (f64, f64) {
        self.samples.push_back((now, sent, received));
        while self
            .samples
            .front()
            .is_some_and(|s| s.0 < now - RATE_WINDOW_MS)
        {
            self.samples.pop_front();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let secs = (b.0 - a.0) as f64 / 1000.0;
                (
                    b.1.saturating_sub(a.1) as f64 / secs,
                    b.2.saturating_sub(a.2) as f64 / secs,
                )
            }
            _ => (0.0, 0.0),
        }
    }
}

/// How far another host's clock is ahead of this one's, from the send
/// times sealed in its datagrams: the largest of the last samples of
/// (sent − received), each short of the truth by its trip, so the largest
/// is the closest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Skew {
    samples: std::collections::VecDeque<Millis>,
}

/// Samples a [`Skew`] keeps.
const SKEW_SAMPLES: usize = 32;

/// A clock further apart than this is warned about (once per host): cluster
/// signals are still ordered and ended together (on cluster time), but the
/// times hosts log and show differ by as much.
pub const CLOCK_WARN_MS: Millis = 1_000;

impl Skew {
    pub fn observe(&mut self, sent: Millis, received: Millis) {
        if self.samples.len() == SKEW_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sent - received);
    }
    /// Milliseconds the other clock is ahead (negative: behind).
    pub fn ahead_ms(&self) -> Option<Millis> {
        self.samples.iter().copied().max()
    }
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
    /// How far each address's clock is ahead of this host's.
    pub clock_ahead: BTreeMap<SocketAddr, Skew>,
    /// Cluster time: what replicated items are ordered and expired by.
    pub clock: crate::cluster::clock::ClusterClock,
    /// Woken when another host's cluster signal is merged, or a domain it
    /// had manually activated is published gone from it (it may have moved
    /// here), so the control loop takes it at once rather than at its next
    /// tick.
    pub wake: Option<crossbeam_channel::Sender<()>>,
}

/// How long a dead host stays in the member list and its items in the
/// view: a day (as chitchat's `dead_node_grace_period`), long enough for
/// an admin to see it in `cluster-status`, and to migrate its domains away.
pub const DEAD_HOST_RETENTION_MS: Millis = 86_400_000;

impl Inner {
    /// Forgets the hosts dead for longer than `retention` (and hosts known
    /// only from others' items, not heard of for as long): their member
    /// entry and every item of theirs, with a tombstone so that
    /// anti-entropy does not bring them back. The names forgotten.
    pub fn forget_dead(&mut self, now: Millis, retention: Millis) -> Vec<String> {
        let dead: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == "dead" && now - m.since >= retention)
            .map(|(a, _)| *a)
            .collect();
        for a in &dead {
            self.members.remove(a);
            self.clock_ahead.remove(a);
            self.last_packet.remove(a);
        }
        let forget: Vec<String> = self
            .state
            .nodes
            .iter()
            .filter(|(n, _)| **n != self.me)
            .filter(|(_, v)| {
                let addr = v.summary.as_ref().map(|(_, s)| s.addr.as_str());
                let member = self
                    .members
                    .values()
                    .find(|m| Some(m.addr.as_str()) == addr);
                let dead_long = addr.is_some_and(|a| dead.iter().any(|d| d.to_string() == a));
                dead_long || (member.is_none() && now - v.last_heard >= retention)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in &forget {
            self.state.forget(n, now);
        }
        self.state.prune_forgotten(now);
        forget
    }

    /// The largest clock difference to another host, in ms (absolute).
    pub fn max_clock_skew_ms(&self) -> Millis {
        self.clock_ahead
            .values()
            .filter_map(Skew::ahead_ms)
            .map(Millis::abs)
            .max()
            .unwrap_or(0)
    }

    /// Merges one item (see [`ClusterState::apply`]); true when it changed
    /// the view.
    pub fn merge(&mut self, item: &Item, now: Millis) -> bool {
        let changed = self.state.apply_at(item, now, self.clock.now(now));
        let news = match &item.body {
            Body::Signal(_) => true,
            Body::Domain(d) => !d.running && d.manual.is_some(),
            Body::Summary(_) => false,
        };
        if changed && news && item.node != self.me {
            if let Some(w) = &self.wake {
                // full: a wake-up is already pending
                let _ = w.try_send(());
            }
        }
        changed
    }
}

#[derive(Debug, Default)]
pub struct Shared(Mutex<Inner>);

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panic elsewhere must not take the cluster view with it
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::{Local, Publisher, Summary};

    fn publish(inner: &mut Inner, node: &str, addr: &str, now: Millis) {
        let local = Local {
            summary: Some(Summary {
                addr: addr.into(),
                up_since: 1,
                digest: "d".into(),
                daemon_version: "0.3.0".into(),
                personas: 1,
            }),
            ..Default::default()
        };
        for it in Publisher::new(node).changes(now, now, local) {
            inner.merge(&it, now);
        }
    }

    /// A host dead for a day leaves the member list and the view; one dead
    /// for less, an alive one and this host itself stay.
    #[test]
    fn hosts_dead_past_the_retention_are_forgotten() {
        let mut inner = Inner {
            me: "me".into(),
            ..Default::default()
        };
        let day = DEAD_HOST_RETENTION_MS;
        for (n, addr, state, since) in [
            ("old", "10.0.0.1:7946", "dead", 0),
            ("recent", "10.0.0.2:7946", "dead", day),
            ("up", "10.0.0.3:7946", "alive", 0),
        ] {
            publish(&mut inner, n, addr, 1);
            inner.members.insert(
                addr.parse().unwrap(),
                MemberView {
                    addr: addr.into(),
                    state,
                    since,
                },
            );
        }
        publish(&mut inner, "me", "10.0.0.9:7946", 1);
        let gone = inner.forget_dead(day + 1, day);
        assert_eq!(gone, ["old"]);
        assert_eq!(inner.members.len(), 2);
        let left: Vec<&String> = inner.state.nodes.keys().collect();
        assert_eq!(left, ["me", "recent", "up"]);
        assert!(inner.state.forgotten.contains_key("old"));
        // a host known only from others' items, not heard of for a day
        publish(&mut inner, "hearsay", "10.0.0.4:7946", day + 2);
        assert_eq!(
            inner.forget_dead(2 * day + 1, day),
            ["recent"],
            "its day is over"
        );
        assert_eq!(inner.forget_dead(2 * day + 2, day), ["hearsay"]);
    }

    /// The skew is the largest (sent − received) of the recent samples: the
    /// sample with the shortest trip.
    #[test]
    fn the_skew_is_the_sample_with_the_shortest_trip() {
        let mut k = Skew::default();
        assert_eq!(k.ahead_ms(), None);
        // the other clock 3 s ahead, trips of 2 to 40 ms
        for (i, trip) in [40, 2, 15, 9].into_iter().enumerate() {
            let sent = 1_000 * i as Millis;
            k.observe(sent + 3_000, sent + trip);
        }
        assert_eq!(k.ahead_ms(), Some(2_998));
        // only the last samples count
        for i in 0..SKEW_SAMPLES as Millis {
            k.observe(100_000 + i, 100_000 + i + 5);
        }
        assert_eq!(k.ahead_ms(), Some(-5));
    }
}
