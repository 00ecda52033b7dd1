//! An in-memory cluster for tests and benchmarks: the daemon's own gossip
//! [`Driver`] (real `foca`, the real publishing, anti-entropy and merge) on
//! a simulated network (loss, reordering by random delays, partitions) and
//! a simulated clock — foca is sans-I/O, so this is the code the daemon
//! runs, minus the socket and the sealing. Bytes are counted as they would
//! go on the wire (sealing adds [`OVERHEAD`] to each datagram).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use foca::Timer;
use rand::{RngExt, SeedableRng};

use crate::cluster::driver::{Driver, DriverConfig, Id, TICK_MS};
use crate::cluster::node::Shared;
use crate::cluster::seal::OVERHEAD;
use crate::cluster::state::Local;

enum Event {
    Deliver {
        to: usize,
        from: usize,
        data: Vec<u8>,
    },
    Timer {
        node: usize,
        timer: Timer<Id>,
    },
}

struct SimNode {
    driver: Driver,
    shared: Arc<Shared>,
    up: bool,
}

/// A simulated cluster.
pub struct Sim {
    nodes: Vec<SimNode>,
    /// Simulated milliseconds.
    pub now: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    free: Vec<usize>,
    seq: u64,
    loss: f64,
    max_delay_ms: u64,
    rng: rand::rngs::StdRng,
    /// Bytes each node sent (with the sealing overhead).
    pub bytes_sent: Vec<u64>,
    /// Bytes sent by frame kind (foca, digest, items), all nodes together.
    pub bytes_by_kind: [u64; 3],
    /// A partition: nodes with a different side number do not hear each other.
    pub side: Vec<u8>,
    next_tick: u64,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8),
        7946,
    ))
}

fn index(a: &SocketAddr) -> usize {
    match a {
        SocketAddr::V4(v) => {
            let o = v.ip().octets();
            ((o[1] as usize) << 16) | ((o[2] as usize) << 8) | o[3] as usize
        }
        SocketAddr::V6(_) => usize::MAX,
    }
}

impl Sim {
    /// `n` nodes, each losing `loss` of the datagrams, delivering the others
    /// after 1..=`max_delay_ms` (so they overtake each other). Node 0 is
    /// every other node's seed; none has joined yet ([`Sim::join_all`]).
    pub fn new(n: usize, loss: f64, max_delay_ms: u64, seed: u64) -> Sim {
        let mut sim = Sim {
            nodes: Vec::with_capacity(n),
            now: 1,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free: Vec::new(),
            seq: 0,
            loss,
            max_delay_ms,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            bytes_sent: vec![0; n],
            bytes_by_kind: [0; 3],
            side: vec![0; n],
            next_tick: TICK_MS,
        };
        for i in 0..n {
            let shared = Arc::new(Shared::default());
            let driver = Driver::new(
                DriverConfig {
                    node: format!("n{i}"),
                    addr: addr(i),
                    bump: 1,
                    seeds: if i == 0 { Vec::new() } else { vec![addr(0)] },
                    expected_members: n,
                    rng_seed: seed ^ (i as u64 + 1),
                },
                shared.clone(),
                sim.now as i64,
            );
            sim.nodes.push(SimNode {
                driver,
                shared,
                up: true,
            });
        }
        sim
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn push(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        let idx = match self.free.pop() {
            Some(i) => {
                self.events[i] = Some(ev);
                i
            }
            None => {
                self.events.push(Some(ev));
                self.events.len() - 1
            }
        };
        self.queue.push(Reverse((at, self.seq, idx)));
    }

    /// Sends what node `i`'s driver holds, schedules its timers.
    fn drain(&mut self, i: usize) {
        let sends: Vec<(SocketAddr, Vec<u8>)> = self.nodes[i].driver.take_sends().collect();
        for (to, data) in sends {
            self.bytes_sent[i] += (data.len() + OVERHEAD) as u64;
            if let Some(&k) = data.first().filter(|k| **k < 3) {
                self.bytes_by_kind[k as usize] += (data.len() + OVERHEAD) as u64;
            }
            let j = index(&to);
            if j >= self.nodes.len() || self.side[i] != self.side[j] {
                continue;
            }
            if self.rng.random::<f64>() < self.loss {
                continue;
            }
            let delay = 1 + self.rng.random_range(0..self.max_delay_ms.max(1));
            self.push(
                self.now + delay,
                Event::Deliver {
                    to: j,
                    from: i,
                    data,
                },
            );
        }
        while let Some((after, timer)) = self.nodes[i].driver.take_timer() {
            self.push(
                self.now + after.as_millis() as u64,
                Event::Timer { node: i, timer },
            );
        }
    }

    /// Every node but node 0 joins through node 0 (its seed).
    pub fn join_all(&mut self) {
        for i in 1..self.nodes.len() {
            self.nodes[i].driver.join(self.now as i64);
            self.drain(i);
        }
    }

    /// Publishes node `i`'s local state (what changed since the last time).
    pub fn publish(&mut self, i: usize, local: Local) {
        let now = self.now as i64;
        self.nodes[i].driver.local(now, local);
        self.drain(i);
    }

    /// Stops node `i` (its datagrams and timers are dropped).
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    /// Runs the simulation until `until` (simulated ms).
    pub fn run_until(&mut self, until: u64) {
        loop {
            let next = self.queue.peek().map(|Reverse((at, _, _))| *at);
            if self.next_tick <= until && next.is_none_or(|at| at >= self.next_tick) {
                // every node's periodic work, before what comes after it
                self.now = self.next_tick;
                self.next_tick += TICK_MS;
                for i in 0..self.nodes.len() {
                    if self.nodes[i].up {
                        self.nodes[i].driver.tick(self.now as i64);
                        self.drain(i);
                    }
                }
                continue;
            }
            let Some(Reverse((at, _, idx))) = self.queue.peek().copied() else {
                break;
            };
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let Some(ev) = self.events[idx].take() else {
                continue;
            };
            self.free.push(idx);
            let now = self.now as i64;
            let i = match ev {
                Event::Deliver { to, from, data } => {
                    if !self.nodes[to].up {
                        continue;
                    }
                    let _ = self.nodes[to].driver.receive(now, addr(from), &data);
                    to
                }
                Event::Timer { node, timer } => {
                    if !self.nodes[node].up {
                        continue;
                    }
                    self.nodes[node].driver.timer(now, timer);
                    node
                }
            };
            self.drain(i);
        }
        self.now = until;
    }

    /// Runs in `step` increments until `done` holds or `limit` passes;
    /// returns when it held.
    pub fn run_until_true(
        &mut self,
        step: Duration,
        limit: u64,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<u64> {
        loop {
            if done(self) {
                return Some(self.now);
            }
            if self.now >= limit {
                return None;
            }
            let next = self.now + step.as_millis() as u64;
            self.run_until(next);
        }
    }

    /// Node `i`'s merged view.
    pub fn shared(&self, i: usize) -> &Shared {
        &self.nodes[i].shared
    }

    /// How many members node `i` knows alive.
    pub fn alive_members(&self, i: usize) -> usize {
        self.nodes[i].driver.num_members()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].up
    }

    /// Node `i`'s view of the membership: (member's index, state), and its
    /// own identity number — for failure messages.
    pub fn view(&self, i: usize) -> (u64, Vec<(usize, u64, foca::State)>) {
        let d = &self.nodes[i].driver;
        (
            d.identity().bump,
            d.membership_ids()
                .into_iter()
                .map(|(id, st)| (index(&id.addr), id.bump, st))
                .collect(),
        )
    }

    /// Whether node `i`'s foca is connected (not left waiting after a
    /// new identity).
    pub fn connected(&self, i: usize) -> bool {
        self.nodes[i].driver.connected()
    }

    /// Node `i`'s foca queues (membership updates, custom broadcasts).
    pub fn backlog(&self, i: usize) -> (usize, usize) {
        self.nodes[i].driver.backlog()
    }

    /// Node `i`'s identity number (raised each time it rejoins).
    pub fn bump(&self, i: usize) -> u64 {
        self.nodes[i].driver.identity().bump
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::{DomainPub, Summary};

    fn local(i: usize, domains: usize, persona: &str) -> Local {
        let mut l = Local {
            summary: Some(Summary {
                addr: addr(i).to_string(),
                up_since: 1,
                digest: "d".into(),
                daemon_version: "0.1.0".into(),
                personas: 3,
            }),
            ..Default::default()
        };
        for d in 0..domains {
            l.domains.insert(
                format!("00000000-0000-4000-8000-{i:06}{d:06}"),
                DomainPub {
                    name: format!("vm-{i}-{d}"),
                    running: true,
                    persona: Some(persona.into()),
                    since: Some(1),
                    manual: None,
                    ended: vec![],
                },
            );
        }
        l
    }

    fn domains_known(sim: &Sim, i: usize) -> usize {
        sim.shared(i)
            .lock()
            .state
            .nodes
            .values()
            .map(|n| n.domains.len())
            .sum()
    }

    /// 30 nodes, 10 % of datagrams lost, the rest reordered: everyone ends
    /// with everyone's domains, a later change replaces the earlier one
    /// everywhere, and a partition heals.
    #[test]
    fn state_converges_under_loss_and_reordering_and_after_a_partition() {
        let n = 30;
        let mut sim = Sim::new(n, 0.10, 40, 42);
        sim.join_all();
        for i in 0..n {
            sim.publish(i, local(i, 5, "calm"));
        }
        let t = sim.run_until_true(Duration::from_millis(100), 620_000, |s| {
            (0..s.len()).all(|i| domains_known(s, i) == n * 5)
        });
        assert!(
            t.is_some(),
            "did not converge: {:?} members {:?} ids {:?}",
            (0..n).map(|i| domains_known(&sim, i)).collect::<Vec<_>>(),
            (0..n).map(|i| sim.alive_members(i)).collect::<Vec<_>>(),
            (0..n).map(|i| sim.bump(i)).collect::<Vec<_>>()
        );
        // a change on node 7
        sim.publish(7, local(7, 5, "hot"));
        let start = sim.now;
        let hot = |s: &Sim, i: usize| {
            s.shared(i).lock().state.nodes.get("n7").is_some_and(|v| {
                v.domains
                    .values()
                    .all(|(_, d)| d.persona.as_deref() == Some("hot"))
            })
        };
        // most hear it from foca's dissemination at once; one that lost
        // every copy pulls it with the next anti-entropy rounds
        let t = sim
            .run_until_true(Duration::from_millis(50), start + 60_000, |s| {
                (0..s.len()).all(|i| hot(s, i))
            })
            .expect("the change reaches everyone");
        assert!(t - start <= 10_000, "{} ms under 10 % loss", t - start);

        // a partition: nodes 0..15 and 15..30 hear only their side; a change
        // on each side, then it heals
        for i in 15..n {
            sim.side[i] = 1;
        }
        sim.publish(3, local(3, 5, "left"));
        sim.publish(20, local(20, 5, "right"));
        sim.run_until(sim.now + 20_000);
        let sees = |s: &Sim, i: usize, node: &str, p: &str| {
            s.shared(i).lock().state.nodes.get(node).is_some_and(|v| {
                v.domains
                    .values()
                    .all(|(_, d)| d.persona.as_deref() == Some(p))
            })
        };
        assert!(!sees(&sim, 25, "n3", "left"), "the partition holds");
        for i in 15..n {
            sim.side[i] = 0;
        }
        sim.run_until_true(Duration::from_millis(100), sim.now + 120_000, |s| {
            (0..s.len()).all(|i| sees(s, i, "n3", "left") && sees(s, i, "n20", "right"))
        })
        .expect("both sides converge after the partition heals");
    }

    /// Without loss a change reaches all of 30 nodes within a second, and a
    /// crashed node's domains stay known (as its last word) while SWIM marks
    /// it down.
    #[test]
    fn without_loss_a_change_is_everywhere_within_a_second() {
        let n = 30;
        let mut sim = Sim::new(n, 0.0, 20, 7);
        sim.join_all();
        for i in 0..n {
            sim.publish(i, local(i, 3, "calm"));
        }
        sim.run_until_true(Duration::from_millis(100), 300_000, |s| {
            (0..s.len()).all(|i| domains_known(s, i) == n * 3)
        })
        .expect("converges");
        let mut slowest = 0;
        let rounds = 20;
        for round in 0..rounds {
            let who = (round * 7) % n;
            let p = format!("p{round}");
            sim.publish(who, local(who, 3, &p));
            let start = sim.now;
            let node = format!("n{who}");
            let has = |s: &Sim, i: usize| {
                s.shared(i).lock().state.nodes.get(&node).is_some_and(|v| {
                    v.domains
                        .values()
                        .all(|(_, d)| d.persona.as_deref() == Some(p.as_str()))
                })
            };
            let t = sim
                .run_until_true(Duration::from_millis(10), start + 10_000, |s| {
                    (0..s.len()).all(|i| has(s, i))
                })
                .unwrap_or_else(|| panic!("round {round}: not everywhere after 10 s"));
            slowest = slowest.max(t - start);
            assert!(
                t - start < 1_000,
                "round {round}: everywhere after {} ms, not within a second",
                t - start
            );
        }
        eprintln!("the slowest of {rounds} changes was everywhere after {slowest} ms");
        sim.crash(5);
        sim.run_until_true(Duration::from_millis(100), sim.now + 60_000, |s| {
            (0..s.len())
                .filter(|i| *i != 5)
                .all(|i| s.alive_members(i) == n - 2)
        })
        .expect("node 5 seen down by all");
    }

    /// Four nodes, two on each side of a cut that lasts long enough for
    /// each side to declare the other down; after it heals, everyone sees
    /// all four alive again — whatever the timing (many seeds and cut
    /// lengths, since a heal where every node renews its identity at once
    /// once left foca with no timers and no one to talk to).
    #[test]
    fn a_two_by_two_partition_always_heals() {
        let mut slowest = 0;
        for seed in 0..100u64 {
            let n = 4;
            let mut sim = Sim::new(n, 0.0, 5, seed);
            sim.join_all();
            for i in 0..n {
                sim.publish(i, local(i, 2, "calm"));
            }
            sim.run_until_true(Duration::from_millis(100), 60_000, |s| {
                (0..s.len()).all(|i| s.alive_members(i) == n - 1)
            })
            .expect("joins");
            sim.side[2] = 1;
            sim.side[3] = 1;
            let cut = 12_000 + (seed % 8) * 1_700;
            sim.run_until(sim.now + cut);
            sim.side[2] = 0;
            sim.side[3] = 0;
            let cut_end = sim.now;
            let healed = sim.run_until_true(Duration::from_millis(100), sim.now + 60_000, |s| {
                (0..s.len()).all(|i| s.alive_members(i) == n - 1 && s.connected(i))
            });
            assert!(
                healed.is_some(),
                "seed {seed}, cut {cut} ms: not healed: {:?}, connected {:?}",
                (0..n).map(|i| sim.view(i)).collect::<Vec<_>>(),
                (0..n).map(|i| sim.connected(i)).collect::<Vec<_>>()
            );
            slowest = slowest.max(healed.unwrap_or(0) - cut_end);
        }
        // foca announces to members it saw down every 10 s
        assert!(slowest <= 25_000, "slowest heal {slowest} ms");
        eprintln!("slowest heal {slowest} ms");
    }
}
