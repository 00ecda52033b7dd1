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
    /// Woken when another host's cluster signal is merged, or a domain it
    /// had manually activated is published gone from it (it may have moved
    /// here), so the control loop takes it at once rather than at its next
    /// tick.
    pub wake: Option<crossbeam_channel::Sender<()>>,
}

impl Inner {
    /// Merges one item (see [`ClusterState::apply`]); true when it changed
    /// the view.
    pub fn merge(&mut self, item: &Item, now: Millis) -> bool {
        let changed = self.state.apply(item, now);
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
