//! Admission of incoming gossip datagrams, before they are copied or opened
//! (SPEC §10) — pure, `now` passed in (milliseconds of a monotonic clock).
//!
//! Opening a datagram costs a decryption per key of the ring, so a flood of
//! sealed-looking datagrams would cost a core (a probe measured 227,000 a
//! second taking ~95 % of one). Each datagram is admitted, or dropped and
//! counted as `rate_limited`, first:
//! - a source a datagram opened from in the last [`KNOWN_FOR_MS`] has its own
//!   token bucket, [`PER_SOURCE_RATE`] datagrams a second in bursts of
//!   [`PER_SOURCE_BURST`] — far above what gossip sends one host (a host
//!   coming up is sent every item of every other host directly);
//! - every other source shares one bucket, [`STRANGERS_RATE`] a second, so a
//!   flood from forged or rotating source addresses is opened at most that
//!   often and cannot use up the members' buckets. A host joining during such
//!   a flood may need a few tries (foca retries); a flood forging a member's
//!   own address can crowd out that member only.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

/// Datagrams a second a known source may send (the bucket's refill).
pub const PER_SOURCE_RATE: f64 = 1_000.0;
/// The most a known source may send at once.
pub const PER_SOURCE_BURST: f64 = 4_000.0;
/// Datagrams a second every other source together may send.
pub const STRANGERS_RATE: f64 = 1_000.0;
/// The most they may send at once.
pub const STRANGERS_BURST: f64 = 2_000.0;
/// How long a source stays known after its last datagram that opened.
pub const KNOWN_FOR_MS: u64 = 120_000;
/// Known sources kept at most (the one heard from longest ago goes first).
pub const MAX_KNOWN: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: u64,
}

impl Bucket {
    fn full(burst: f64, now: u64) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn take(&mut self, rate: f64, burst: f64, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.at) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Known {
    until: u64,
    bucket: Bucket,
}

/// Who a datagram counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Known(SocketAddr),
    Strangers,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Known(a) => write!(f, "{a}"),
            Source::Strangers => write!(f, "sources not in the cluster"),
        }
    }
}

#[derive(Debug)]
pub struct Admission {
    known: HashMap<SocketAddr, Known>,
    strangers: Bucket,
    /// Datagrams dropped since the start.
    pub limited: u64,
    unreported: BTreeMap<Source, u64>,
}

impl Admission {
    pub fn new(now: u64) -> Admission {
        Admission {
            known: HashMap::new(),
            strangers: Bucket::full(STRANGERS_BURST, now),
            limited: 0,
            unreported: BTreeMap::new(),
        }
    }

    /// Whether a datagram from `from` may be opened.
    pub fn admit(&mut self, from: SocketAddr, now: u64) -> bool {
        let (ok, source) = match self.known.get_mut(&from) {
            Some(k) if k.until >= now => (
                k.bucket.take(PER_SOURCE_RATE, PER_SOURCE_BURST, now),
                Source::Known(from),
            ),
            _ => (
                self.strangers.take(STRANGERS_RATE, STRANGERS_BURST, now),
                Source::Strangers,
            ),
        };
        if !ok {
            self.limited += 1;
            *self.unreported.entry(source).or_default() += 1;
        }
        ok
    }

    /// A datagram from `from` opened: it is a member's, for a while.
    pub fn opened(&mut self, from: SocketAddr, now: u64) {
        if let Some(k) = self.known.get_mut(&from) {
            k.until = now + KNOWN_FOR_MS;
            return;
        }
        if self.known.len() >= MAX_KNOWN {
            if let Some(oldest) = self
                .known
                .iter()
                .min_by_key(|(_, k)| k.until)
                .map(|(a, _)| *a)
            {
                self.known.remove(&oldest);
            }
        }
        self.known.insert(
            from,
            Known {
                until: now + KNOWN_FOR_MS,
                bucket: Bucket::full(PER_SOURCE_BURST, now),
            },
        );
    }

    /// What was dropped since the last call, by source (for one log line
    /// each, not one per datagram).
    pub fn take_report(&mut self) -> BTreeMap<Source, u64> {
        std::mem::take(&mut self.unreported)
    }

    /// Known sources (for tests and figures).
    pub fn known(&self) -> usize {
        self.known.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_flood_from_strangers_is_admitted_at_their_shared_rate() {
        let mut adm = Admission::new(0);
        // 100,000 datagrams a second from rotating sources, for 10 s
        let mut admitted = 0u64;
        for i in 0..1_000_000u64 {
            let now = i / 100;
            let from = SocketAddr::new(
                std::net::Ipv4Addr::from((i as u32).wrapping_mul(2_654_435_761)).into(),
                (i % 60_000) as u16 + 1,
            );
            if adm.admit(from, now) {
                admitted += 1;
            }
        }
        let most = STRANGERS_BURST + STRANGERS_RATE * 10.0;
        assert!(admitted as f64 <= most + 1.0, "{admitted}");
        assert!(admitted as f64 >= most * 0.95, "{admitted}");
        assert_eq!(adm.limited, 1_000_000 - admitted);
        let report = adm.take_report();
        assert_eq!(report.keys().collect::<Vec<_>>(), [&Source::Strangers]);
        assert!(adm.take_report().is_empty(), "reported once");
        assert_eq!(adm.known(), 0, "a stranger's datagram makes nobody known");
    }

    #[test]
    fn members_keep_their_own_rate_through_a_strangers_flood() {
        let mut adm = Admission::new(0);
        let member = a("10.0.0.2:7946");
        assert!(adm.admit(member, 0));
        adm.opened(member, 0);
        // the strangers' bucket is empty
        while adm.admit(a("192.0.2.9:1"), 0) {}
        let t = 1;
        // the member still sends its gossip: 50 a second, and a burst of 500
        for i in 0..500 {
            assert!(adm.admit(member, t), "burst datagram {i}");
        }
        for s in 0..30u64 {
            for _ in 0..50 {
                assert!(adm.admit(member, t + s * 1000));
            }
            adm.opened(member, t + s * 1000);
        }
        let report = adm.take_report();
        assert!(report.contains_key(&Source::Strangers));
        assert!(!report.contains_key(&Source::Known(member)), "{report:?}");
    }

    #[test]
    fn a_known_source_flooding_is_held_to_its_rate_and_forgotten_when_silent() {
        let mut adm = Admission::new(0);
        let loud = a("10.0.0.3:7946");
        adm.opened(loud, 0);
        let mut admitted = 0;
        for i in 0..100_000u64 {
            if adm.admit(loud, i / 10) {
                admitted += 1;
            }
        }
        let most = PER_SOURCE_BURST + PER_SOURCE_RATE * 10.0;
        assert!(admitted as f64 <= most + 1.0, "{admitted}");
        assert_eq!(
            adm.take_report().get(&Source::Known(loud)),
            Some(&(100_000 - admitted))
        );
        // silent past KNOWN_FOR_MS: a stranger again
        let later = 10_000 + KNOWN_FOR_MS + 1;
        assert!(adm.admit(loud, later));
        for _ in 0..(STRANGERS_BURST as usize + 10) {
            adm.admit(loud, later);
        }
        assert!(adm.take_report().contains_key(&Source::Strangers));
    }

    #[test]
    fn known_sources_are_bounded() {
        let mut adm = Admission::new(0);
        for i in 0..(MAX_KNOWN as u64 + 100) {
            let from = SocketAddr::new(std::net::Ipv4Addr::from(i as u32).into(), 1);
            adm.opened(from, i);
        }
        assert_eq!(adm.known(), MAX_KNOWN);
    }

    #[test]
    fn a_clock_that_goes_back_gives_no_tokens() {
        let mut adm = Admission::new(1_000_000);
        let mut n = 0;
        for t in (0..1_000_000u64).rev().step_by(1000) {
            if adm.admit(a("192.0.2.1:1"), t) {
                n += 1;
            }
        }
        assert!(n as f64 <= STRANGERS_BURST, "{n}");
    }
}
