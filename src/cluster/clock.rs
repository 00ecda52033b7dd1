//! The cluster's clock (SPEC §10) — pure, the host's clock passed in.
//!
//! Hosts' wall clocks drift apart, so nothing replicated is ordered or
//! expired by one. Each host keeps *cluster time*: its own clock plus a
//! lead, never lower, raised to any later cluster time a datagram of another
//! host carries (sealed in it), so every host's cluster time follows the
//! furthest-ahead clock in the cluster within a datagram's trip. On it:
//! - a cluster signal's setting is stamped ([`ClusterClock::stamp`]: a
//!   hybrid logical clock, strictly rising on each host and above every
//!   stamp seen), so the last set, in the order the hosts saw each other,
//!   wins on every host whatever their clocks say;
//! - a signal's end (and a manual activation's) is a cluster time: its
//!   duration from the set time, counted on the one clock every host keeps,
//!   so it ends within a trip of the same moment everywhere.
//!
//! The host's own part of it is a steady clock ([`crate::time::steady_ms`]:
//! monotonic from the wall clock at start), so a step of its wall clock does
//! not move it either. Times are shown on the host's wall clock by what is
//! left of them (`now + (end − cluster now)`): a duration, not a clock
//! compared. [`MAX_SKEW_MS`] bounds it all: a datagram whose cluster time is
//! further from this host's is refused as stale, and a lead is never raised
//! by more.

use crate::time::Millis;

/// Cluster time further than this from a host's own is refused (a clock
/// that far off is a fault to fix, not one to follow), and a datagram sent
/// longer ago (in cluster time) is stale.
pub const MAX_SKEW_MS: Millis = 15 * 60_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterClock {
    /// Cluster time minus this host's clock (≥ 0).
    lead: Millis,
    /// The last stamp given.
    last: Millis,
}

impl ClusterClock {
    /// Cluster time when this host's clock says `local`.
    pub fn now(&self, local: Millis) -> Millis {
        local + self.lead
    }

    /// How far cluster time is ahead of this host's clock.
    pub fn lead(&self) -> Millis {
        self.lead
    }

    /// Another host's cluster time `remote`, heard when this host's clock
    /// says `local`: cluster time follows it when it is ahead, but never to
    /// more than [`MAX_SKEW_MS`] ahead of this host's clock (a clock running
    /// away does not take the cluster with it). Returns how far it moved.
    pub fn observe(&mut self, remote: Millis, local: Millis) -> Millis {
        let ahead = (remote - self.now(local)).min(MAX_SKEW_MS - self.lead);
        if ahead > 0 {
            self.lead += ahead;
            ahead
        } else {
            0
        }
    }

    /// A stamp for a setting made now: cluster time, and above every stamp
    /// this host gave before (two settings in one millisecond are ordered).
    pub fn stamp(&mut self, local: Millis) -> Millis {
        self.last = self.now(local).max(self.last + 1);
        self.last
    }
}

/// A cluster time `at` on a wall clock that says `now` while cluster time
/// is `cluster_now`: as far from it as it is from cluster now.
pub fn on_wall(at: Millis, now: Millis, cluster_now: Millis) -> Millis {
    now.saturating_add(at.saturating_sub(cluster_now))
}

/// A wall-clock time `at` as cluster time, the same way round.
pub fn on_cluster(at: Millis, now: Millis, cluster_now: Millis) -> Millis {
    cluster_now.saturating_add(at.saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three hosts, clocks at +5 min, 0 and −5 min: once each has heard the
    /// others, their cluster times agree, a later setting's stamp is above
    /// an earlier one's wherever each was made, and an end falls at the
    /// same moment on all.
    #[test]
    fn hosts_five_minutes_apart_agree_on_order_and_ends() {
        let five = 5 * 60_000;
        let offsets = [five, 0, -five];
        let mut clocks = [ClusterClock::default(); 3];
        let real = 1_800_000_000_000i64;
        let local = |i: usize, t: Millis| t + offsets[i];
        // every host hears every other once
        for from in 0..3 {
            for to in 0..3 {
                let sent = clocks[from].now(local(from, real));
                clocks[to].observe(sent, local(to, real + 2));
            }
        }
        let agreed: Vec<Millis> = (0..3).map(|i| clocks[i].now(local(i, real + 10))).collect();
        assert!(
            agreed.iter().all(|t| (*t - agreed[0]).abs() <= 2),
            "{agreed:?}"
        );
        assert_eq!(
            agreed[0],
            real + 10 + five,
            "the furthest-ahead clock leads"
        );
        // the slow host sets a signal after the fast one: its stamp is later
        let first = clocks[0].stamp(local(0, real + 1_000));
        let t = clocks[0].now(local(0, real + 1_001));
        clocks[2].observe(t, local(2, real + 1_002));
        let second = clocks[2].stamp(local(2, real + 2_000));
        assert!(second > first, "{second} > {first}");
        // an end 60 s after the set, in cluster time, comes at one moment
        let ends = second + 60_000;
        for (i, c) in clocks.iter().enumerate() {
            let now = local(i, real + 3_000);
            let at = on_wall(ends, now, c.now(now)) - offsets[i];
            assert!((at - (real + 62_000)).abs() <= 3, "host {i}: {at}");
        }
    }

    #[test]
    fn stamps_rise_and_a_clock_too_far_ahead_is_not_followed() {
        let mut c = ClusterClock::default();
        let a = c.stamp(1_000);
        let b = c.stamp(1_000);
        assert!(b > a);
        // a clock that went back: stamps still rise
        assert!(c.stamp(500) > b);
        assert_eq!(c.observe(900, 1_000), 0, "behind: not followed");
        assert_eq!(c.observe(61_000, 1_000), 60_000);
        assert_eq!(c.now(2_000), 62_000);
        // never more than MAX_SKEW_MS ahead of this host's own clock
        assert_eq!(
            c.observe(1_000 + 10 * MAX_SKEW_MS, 1_000),
            MAX_SKEW_MS - 60_000
        );
        assert_eq!(c.lead(), MAX_SKEW_MS);
        assert_eq!(c.observe(1_000 + 10 * MAX_SKEW_MS, 1_000), 0);
        assert_eq!(on_wall(on_cluster(5, 100, 7_000), 100, 7_000), 5);
    }
}
