//! Months of churn on the cluster's state, simulated (SPEC §10) — pure.
//!
//! Hosts join and leave, domains start and go, cluster signals are set and
//! run out, over simulated days in steps of [`STEP_MS`]: each host's own
//! [`Publisher`] turns its local state into items, every live host merges
//! them (some deliveries lost), a random pair squares up by anti-entropy
//! each step, and each host drops what no longer exists
//! ([`ClusterState::prune`](crate::cluster::state::ClusterState::prune)) and forgets hosts dead for a day
//! ([`Inner::forget_dead`]) — the daemon's own state code, without foca and
//! the network (the simulation in [`crate::cluster::sim`] has those). What
//! it shows: a node's state ends the size of what exists, not of what ever
//! existed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rand::{RngExt, SeedableRng};

use crate::cluster::node::{Inner, MemberView};
use crate::cluster::shared::DEAD_HOST_RETENTION_MS;
use crate::cluster::state::{DomainPub, Item, Local, Publisher, SignalPub, Summary};
use crate::time::Millis;

/// One step of simulated time.
pub const STEP_MS: Millis = 10 * 60_000;

#[derive(Debug, Clone)]
pub struct ChurnConfig {
    pub days: u64,
    /// Hosts at any time (one leaves and a new one joins every
    /// `host_every_days`).
    pub hosts: usize,
    pub host_every_days: f64,
    /// Domains running at any time, spread over the hosts.
    pub domains: usize,
    /// Domains that go (and as many new ones that start) over the run.
    pub domain_churn: usize,
    /// Share of item deliveries lost.
    pub loss: f64,
    pub seed: u64,
}

impl Default for ChurnConfig {
    fn default() -> ChurnConfig {
        ChurnConfig {
            days: 30,
            hosts: 20,
            host_every_days: 2.0,
            domains: 2_000,
            domain_churn: 10_000,
            loss: 0.05,
            seed: 1,
        }
    }
}

/// What one node held, at the start (after the first day) and at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct ChurnReport {
    /// Hosts and domains that ever existed.
    pub hosts_ever: usize,
    pub domains_ever: usize,
    /// (items, encoded bytes, tombstones) of the longest-lived host's view.
    pub start: (usize, usize, usize),
    pub end: (usize, usize, usize),
    /// Items of the view that no longer exist at the end (gone domains,
    /// ended signals, dead hosts' items), all within their retention.
    pub end_outlived: usize,
    /// Every live host's view holds the same items at the end.
    pub converged: bool,
}

struct Host {
    name: String,
    addr: SocketAddr,
    inner: Inner,
    publisher: Publisher,
    local: Local,
}

fn host(i: usize, now: Millis) -> Host {
    let name = format!("h{i}");
    let addr: SocketAddr = SocketAddr::new(
        std::net::Ipv4Addr::new(10, 9, (i >> 8) as u8, i as u8).into(),
        7946,
    );
    Host {
        inner: Inner {
            me: name.clone(),
            ..Default::default()
        },
        publisher: Publisher::new(&name),
        local: Local {
            summary: Some(Summary {
                addr: addr.to_string(),
                up_since: now,
                digest: "d".into(),
                daemon_version: "0.3.0".into(),
                personas: 5,
            }),
            ..Default::default()
        },
        name,
        addr,
    }
}

/// A new domain (the next number) started on a host at `now`.
fn start_vm(local: &mut Local, next: &mut usize, now: Millis) {
    let n = *next;
    *next += 1;
    local.domains.insert(
        format!("6695eb01-0000-4000-8000-{n:012}"),
        DomainPub {
            name: format!("vm-{n}"),
            running: true,
            persona: Some("calm".into()),
            since: Some(now),
            manual: None,
            ended: vec![],
        },
    );
}

fn size(inner: &Inner) -> (usize, usize, usize) {
    (
        inner.state.item_count(),
        inner.state.encoded_bytes(),
        inner.state.forgotten.len() + inner.state.ended_signals.len(),
    )
}

/// Hosts `a` and `b` send each other every item they hold.
fn square(hosts: &mut [Host], a: usize, b: usize, now: Millis) {
    for (from, to) in [(a, b), (b, a)] {
        let theirs: Vec<Item> = hosts[from]
            .inner
            .state
            .nodes
            .keys()
            .flat_map(|n| hosts[from].inner.state.items_of(n))
            .collect();
        for it in &theirs {
            hosts[to].inner.merge(it, now);
        }
    }
}

/// Runs the churn; see [`ChurnConfig`].
pub fn churn(cfg: &ChurnConfig) -> ChurnReport {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut now: Millis = 1_800_000_000_000;
    let mut hosts: Vec<Host> = (0..cfg.hosts).map(|i| host(i, now)).collect();
    let mut next_host = cfg.hosts;
    // dead hosts: (addr, since)
    let mut dead: Vec<(SocketAddr, Millis)> = Vec::new();
    let mut next_domain = 0usize;
    for _ in 0..cfg.domains {
        let h = rng.random_range(0..hosts.len());
        start_vm(&mut hosts[h].local, &mut next_domain, now);
    }
    let steps = cfg.days as i64 * 86_400_000 / STEP_MS;
    let per_step = cfg.domain_churn as f64 / steps as f64;
    let host_steps = ((cfg.host_every_days * 86_400_000.0) / STEP_MS as f64).max(1.0) as i64;
    let mut owed = 0.0;
    let mut start = None;
    for step in 0..steps {
        now += STEP_MS;
        // hosts: the oldest but the first leaves (dies), a new one joins
        if step > 0 && step % host_steps == 0 && hosts.len() > 2 {
            let gone = hosts.remove(1);
            dead.push((gone.addr, now));
            let mut h = host(next_host, now);
            next_host += 1;
            // its domains start again elsewhere (new UUIDs: new VMs)
            for _ in 0..gone.local.domains.len() {
                start_vm(&mut h.local, &mut next_domain, now);
            }
            hosts.push(h);
        }
        // domains: some go, as many new ones start
        owed += per_step;
        while owed >= 1.0 {
            owed -= 1.0;
            let h = rng.random_range(0..hosts.len());
            if let Some(u) = hosts[h].local.domains.keys().next().cloned() {
                hosts[h].local.domains.remove(&u);
            }
            let h = rng.random_range(0..hosts.len());
            start_vm(&mut hosts[h].local, &mut next_domain, now);
        }
        // signals: a host-wide one, set again on a random host with a short
        // TTL, and one on a random domain with an hour
        let h = rng.random_range(0..hosts.len());
        let stamp = hosts[h].inner.clock.stamp(now);
        hosts[h].local.signals.insert(
            ("lb.rps".into(), None),
            SignalPub {
                value: step as f64,
                expires: stamp + 15 * 60_000,
                set_at: stamp,
            },
        );
        if let Some(u) = hosts[h]
            .local
            .domains
            .keys()
            .nth(step as usize % 7)
            .cloned()
        {
            let stamp = hosts[h].inner.clock.stamp(now);
            hosts[h].local.signals.insert(
                ("queue.depth".into(), Some(u)),
                SignalPub {
                    value: 1.0,
                    expires: stamp + 3_600_000,
                    set_at: stamp,
                },
            );
        }
        // publish: every host's changes to every live host
        let mut items: Vec<Item> = Vec::new();
        for h in hosts.iter_mut() {
            h.local.signals.retain(|_, s| s.expires > now);
            items.extend(h.publisher.changes(now, now, h.local.clone()));
        }
        for h in hosts.iter_mut() {
            for it in &items {
                if it.node == h.name || rng.random_range(0.0..1.0) >= cfg.loss {
                    h.inner.merge(it, now);
                }
            }
        }
        // anti-entropy: one random pair squares up both ways
        let (a, b) = (
            rng.random_range(0..hosts.len()),
            rng.random_range(0..hosts.len()),
        );
        if a != b {
            square(&mut hosts, a, b, now);
        }
        // membership as SWIM would have it, retention, pruning
        for h in hosts.iter_mut() {
            for (addr, since) in &dead {
                h.inner.members.insert(
                    *addr,
                    MemberView {
                        addr: addr.to_string(),
                        state: "dead",
                        since: *since,
                    },
                );
            }
            h.inner.forget_dead(now, DEAD_HOST_RETENTION_MS);
            h.inner.state.prune(now);
            h.publisher.prune(now);
        }
        dead.retain(|(_, since)| now - since < DEAD_HOST_RETENTION_MS + STEP_MS);
        if step == 86_400_000 / STEP_MS {
            start = Some(size(&hosts[0].inner));
        }
    }
    // the last losses repaired, as anti-entropy does within seconds
    for a in 0..hosts.len() {
        for b in 0..hosts.len() {
            if a != b {
                square(&mut hosts, a, b, now);
            }
        }
    }
    for h in hosts.iter_mut() {
        h.inner.state.prune(now);
    }
    // every live host's view, to compare
    let views: Vec<BTreeMap<(String, String), u64>> = hosts
        .iter()
        .map(|h| {
            h.inner
                .state
                .nodes
                .iter()
                .flat_map(|(n, v)| {
                    h.inner
                        .state
                        .items_of(n)
                        .into_iter()
                        .map(move |i| ((n.clone(), format!("{:?}", i.part)), i.version))
                        .chain(std::iter::once(((n.clone(), "max".into()), v.max)))
                })
                .collect()
        })
        .collect();
    let live: std::collections::BTreeSet<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let first = &hosts[0].inner.state;
    let end_outlived = first
        .nodes
        .iter()
        .map(|(n, v)| {
            if !live.contains(n.as_str()) {
                usize::from(v.summary.is_some()) + v.domains.len() + v.signals.len()
            } else {
                v.domains.values().filter(|(_, d)| !d.running).count()
                    + v.signals.values().filter(|(_, s)| s.expires <= now).count()
            }
        })
        .sum();
    ChurnReport {
        hosts_ever: next_host,
        domains_ever: next_domain,
        start: start.unwrap_or_default(),
        end: size(&hosts[0].inner),
        end_outlived,
        converged: views.windows(2).all(|w| w[0] == w[1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four days of churn: every host dead for a day forgotten, every domain
    /// gone for a day and every signal ended for an hour dropped; the views
    /// agree; the state stays the size of what exists.
    #[test]
    fn four_days_of_churn_leave_the_state_of_what_exists() {
        let r = churn(&ChurnConfig {
            days: 4,
            hosts: 8,
            host_every_days: 0.5,
            domains: 200,
            domain_churn: 1_000,
            loss: 0.05,
            seed: 7,
        });
        assert!(r.hosts_ever >= 14, "{r:?}");
        assert!(r.domains_ever >= 1_200, "{r:?}");
        assert!(r.converged, "{r:?}");
        // what exists: 8 summaries, 200 domains, a few live signals; what is
        // kept past its end: at most a day of gone domains (250 a day, and
        // the domains of the two hosts that died in the last day), an hour
        // of ended signals, and the hosts dead for under a day
        assert!(r.end.0 <= 2 * r.start.0, "{r:?}");
        assert!(r.end.1 <= 2 * r.start.1, "{r:?}");
        assert!(r.end_outlived < 700, "{r:?}");
    }
}
