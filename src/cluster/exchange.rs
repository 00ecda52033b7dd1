//! The control loop's side of the cluster, pure (`now` passed in): what this
//! host publishes each tick, which cluster signals set on other hosts it
//! takes, and which manual activations of domains that moved here it
//! continues. The daemon does the I/O around it (the channel to the node,
//! the reconciler calls, the log lines).

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::clock::{on_cluster, on_wall};
use crate::cluster::node::Inner;
use crate::cluster::state::{DomainPub, Local, Manual, SignalPub, Summary, ENDED_PUBLISHED};
use crate::reconciler::DomainStatus;
use crate::rules::Signal;
use crate::time::Millis;

/// A manual activation to continue here: the domain left host `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct Follow {
    pub uuid: String,
    pub name: String,
    pub from: String,
    pub manual: Manual,
}

/// What the other hosts say, for this tick.
#[derive(Debug, Default, PartialEq)]
pub struct Incoming {
    /// Cluster signals to set here, by name.
    pub signals: Vec<(String, Signal)>,
    /// Cluster signals (name, domain) that ended: their newest setting was
    /// withdrawn or ran out, or its host is dead for longer than the grace.
    pub ended: Vec<(String, Option<String>)>,
    /// Manual activations to continue (each once).
    pub follow: Vec<Follow>,
}

/// What the loop remembers between ticks.
#[derive(Debug)]
pub struct Exchange {
    /// Cluster-scope signals set on this host, by (name, domain).
    local_signals: BTreeMap<(String, Option<String>), SignalPub>,
    /// Withdrawals made here and not yet published (each goes out once).
    withdrawn: BTreeMap<(String, Option<String>), SignalPub>,
    /// When each withdrawal here was made, until the merged view holds it
    /// (so the setting it withdrew is not taken back meanwhile).
    withdrawn_at: BTreeMap<(String, Option<String>), Millis>,
    /// How long a dead host's signals outlive it (`gossip.signal_grace`).
    signal_grace_ms: Millis,
    /// Manual activations continued from another host: (uuid, id).
    followed: BTreeSet<(String, u64)>,
}

/// `gossip.signal_grace` when the config does not say.
pub const DEFAULT_SIGNAL_GRACE_MS: Millis = 5 * 60_000;

impl Default for Exchange {
    fn default() -> Exchange {
        Exchange::new(DEFAULT_SIGNAL_GRACE_MS)
    }
}

impl Exchange {
    pub fn new(signal_grace_ms: Millis) -> Exchange {
        Exchange {
            local_signals: BTreeMap::new(),
            withdrawn: BTreeMap::new(),
            withdrawn_at: BTreeMap::new(),
            signal_grace_ms,
            followed: BTreeSet::new(),
        }
    }

    /// A cluster signal withdrawn here (`signal-unset`), its withdrawal
    /// stamped `stamp` ([`ClusterClock::stamp`](crate::cluster::clock::ClusterClock::stamp)): published once as the
    /// newest setting, it ends the signal on every host.
    pub fn withdraw_local_signal(&mut self, name: &str, domain: Option<&str>, stamp: Millis) {
        let key = (name.to_string(), domain.map(str::to_string));
        self.local_signals.remove(&key);
        self.withdrawn_at.insert(key.clone(), stamp);
        self.withdrawn.insert(key, SignalPub::withdrawal(stamp));
    }

    /// A cluster-scope signal set on this host (through the API), stamped
    /// `stamp`, ending at `expires` — both cluster time.
    pub fn set_local_signal(
        &mut self,
        name: &str,
        domain: Option<&str>,
        value: f64,
        expires: Millis,
        stamp: Millis,
    ) {
        self.local_signals.insert(
            (name.to_string(), domain.map(str::to_string)),
            SignalPub {
                value,
                expires,
                set_at: stamp,
            },
        );
    }

    /// This host's state to publish: `summary`, its running domains with
    /// the persona each wears (none under `--dry-run`, where nothing is
    /// worn) and manual activation (its end in cluster time), and its live
    /// cluster signals; `now` is this host's clock, `cluster_now` cluster
    /// time.
    pub fn local(
        &mut self,
        summary: Summary,
        statuses: &[DomainStatus],
        now: Millis,
        cluster_now: Millis,
    ) -> Local {
        self.local_signals.retain(|_, s| s.expires > cluster_now);
        // past this the views have dropped the withdrawal too (a host out of
        // the cluster meanwhile does not keep them all)
        self.withdrawn_at
            .retain(|_, at| *at >= cluster_now - crate::cluster::state::ENDED_SIGNAL_KEEP_MS);
        let domains = statuses
            .iter()
            .filter(|s| s.state == "running")
            .map(|s| {
                (
                    s.uuid.clone(),
                    DomainPub {
                        name: s.name.clone(),
                        running: true,
                        persona: s.persona.clone().filter(|_| !s.would),
                        since: s.since,
                        manual: s.override_.as_ref().map(|o| Manual {
                            persona: o.persona.clone(),
                            until: o.until.map(|u| on_cluster(u, now, cluster_now)),
                            id: o.id,
                        }),
                        ended: s.manual_ended
                            [s.manual_ended.len().saturating_sub(ENDED_PUBLISHED)..]
                            .to_vec(),
                    },
                )
            })
            .collect();
        let mut signals = self.local_signals.clone();
        signals.append(&mut self.withdrawn);
        Local {
            summary: Some(summary),
            domains,
            signals,
        }
    }

    /// What the merged view `inner` holds for host `me` at `now` (this
    /// host's clock; what it returns is on it too; cluster time is
    /// `cluster_now`): the live
    /// cluster signals last set elsewhere (a local one of the same name and
    /// domain is superseded, and no longer published), and the manual
    /// activations of running domains here, without one of their own, that
    /// a host they left (gone from it, or the host not alive) still had —
    /// each returned once.
    pub fn incoming(
        &mut self,
        inner: &Inner,
        me: &str,
        statuses: &[DomainStatus],
        now: Millis,
        cluster_now: Millis,
    ) -> Incoming {
        // how long each host has been dead
        let dead_for = |n: &str| -> Option<Millis> {
            let (_, summary) = inner.state.nodes.get(n)?.summary.as_ref()?;
            let m = inner.members.values().find(|m| m.addr == summary.addr)?;
            (m.state == "dead").then(|| now - m.since)
        };
        let grace = self.signal_grace_ms;
        let gone = |n: &str| n != me && dead_for(n).is_some_and(|d| d >= grace);
        let (mut signals, mut ended) = (Vec::new(), Vec::new());
        for x in inner.state.newest_signals(gone) {
            let key = (x.name.to_string(), x.domain.map(str::to_string));
            // one set here later than theirs wins, even before the merged
            // view holds it (the node merges what this host publishes a
            // moment later); a previous run's own settings are taken back
            // like anyone's. Ties: the greater host name, the same everywhere.
            if let Some(ours) = self.local_signals.get(&key) {
                if x.node == me || (ours.set_at, me) >= (x.signal.set_at, x.node) {
                    continue;
                }
            }
            if let Some(&at) = self.withdrawn_at.get(&key) {
                if (at, me) > (x.signal.set_at, x.node) {
                    continue;
                }
                // the view holds the withdrawal, or a later setting
                self.withdrawn_at.remove(&key);
            }
            self.local_signals.remove(&key);
            if x.signal.expires > cluster_now && !x.orphaned {
                signals.push((
                    key.0,
                    Signal {
                        value: x.signal.value,
                        expires: on_wall(x.signal.expires, now, cluster_now),
                        domain: key.1,
                        cluster: true,
                    },
                ));
            } else {
                ended.push(key);
            }
        }
        let alive = |n: &str| {
            inner
                .state
                .nodes
                .get(n)
                .and_then(|v| v.summary.as_ref())
                .is_some_and(|(_, s)| {
                    inner
                        .members
                        .values()
                        .any(|m| m.addr == s.addr && m.state == "alive")
                })
        };
        let mut follow = Vec::new();
        for s in statuses
            .iter()
            .filter(|s| s.state == "running" && s.override_.is_none())
        {
            let Some((from, manual)) =
                inner
                    .state
                    .manual_left_behind(&s.uuid, me, &s.manual_ended, alive, cluster_now)
            else {
                continue;
            };
            let manual = Manual {
                until: manual.until.map(|u| on_wall(u, now, cluster_now)),
                ..manual
            };
            if self.followed.insert((s.uuid.clone(), manual.id)) {
                follow.push(Follow {
                    uuid: s.uuid.clone(),
                    name: s.name.clone(),
                    from,
                    manual,
                });
            }
        }
        Incoming {
            signals,
            ended,
            follow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::node::MemberView;
    use crate::cluster::state::{Item, Publisher};
    use crate::rules::Override;

    fn summary(addr: &str) -> Summary {
        Summary {
            addr: addr.into(),
            up_since: 1,
            digest: "d".into(),
            daemon_version: "0.1.0".into(),
            personas: 2,
        }
    }

    fn status(uuid: &str, name: &str, state: &str) -> DomainStatus {
        DomainStatus {
            uuid: uuid.into(),
            name: name.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    /// Host `node`'s published `local` merged into `inner`.
    fn merge(inner: &mut Inner, node: &str, local: Local, now: Millis) {
        for it in Publisher::new(node).changes(now, now, local) {
            inner.state.apply(&it, now);
        }
    }

    /// A view holding host "b" with one cluster signal set at `set_at`.
    fn host_b_with_signal(name: &str, value: f64, expires: Millis, set_at: Millis) -> Inner {
        let mut inner = Inner::default();
        let mut b = Local {
            summary: Some(summary("10.0.0.2:7946")),
            ..Default::default()
        };
        b.signals.insert(
            (name.into(), None),
            SignalPub {
                value,
                expires,
                set_at,
            },
        );
        merge(&mut inner, "b", b, set_at);
        inner
    }

    /// Host a's state: web-1 running there with `manual`.
    fn host_a_with(manual: Manual) -> Local {
        let mut a = Local {
            summary: Some(summary("10.0.0.1:7946")),
            ..Default::default()
        };
        a.domains.insert(
            "u1".into(),
            DomainPub {
                name: "web-1".into(),
                running: true,
                persona: Some("boost".into()),
                since: Some(100),
                manual: Some(manual),
                ended: vec![],
            },
        );
        a
    }

    fn member(inner: &mut Inner, addr: &str, state: &'static str) {
        inner.members.insert(
            addr.parse().unwrap(),
            MemberView {
                addr: addr.into(),
                state,
                since: 0,
            },
        );
    }

    #[test]
    fn local_publishes_running_domains_worn_personas_and_live_signals() {
        let mut x = Exchange::default();
        x.set_local_signal("lb.rps", None, 5.0, 2_000, 1_000);
        x.set_local_signal("old", Some("web-1"), 1.0, 1_500, 1_000);
        let mut web = status("u1", "web-1", "running");
        web.persona = Some("boost".into());
        web.since = Some(900);
        web.override_ = Some(Override {
            persona: "boost".into(),
            until: Some(9_000),
            id: 1,
        });
        let mut dry = status("u2", "db-1", "running");
        dry.persona = Some("calm".into());
        dry.would = true;
        let off = status("u3", "batch", "shut off");
        let l = x.local(summary("10.0.0.1:7946"), &[web, dry, off], 1_600, 1_600);
        assert_eq!(l.summary, Some(summary("10.0.0.1:7946")));
        assert_eq!(l.domains.len(), 2, "{l:?}");
        let w = &l.domains["u1"];
        assert_eq!(w.persona.as_deref(), Some("boost"));
        assert_eq!(w.since, Some(900));
        assert_eq!(
            w.manual,
            Some(Manual {
                persona: "boost".into(),
                until: Some(9_000),
                id: 1,
            })
        );
        assert_eq!(
            l.domains["u2"].persona, None,
            "nothing is worn in a dry run"
        );
        let names: Vec<&str> = l.signals.keys().map(|k| k.0.as_str()).collect();
        assert_eq!(names, ["lb.rps"], "the expired one is gone");
    }

    #[test]
    fn signals_set_elsewhere_are_taken_and_supersede_ours() {
        let mut x = Exchange::default();
        x.set_local_signal("lb.rps", None, 5.0, 60_000, 1_000);
        let inner = host_b_with_signal("lb.rps", 9.0, 50_000, 2_000);
        let got = x.incoming(&inner, "a", &[], 3_000, 3_000);
        assert_eq!(
            got.signals,
            [(
                "lb.rps".to_string(),
                Signal {
                    value: 9.0,
                    expires: 50_000,
                    domain: None,
                    cluster: true
                }
            )]
        );
        let l = x.local(summary("10.0.0.1:7946"), &[], 3_000, 3_000);
        assert!(l.signals.is_empty(), "ours is superseded: {l:?}");
        // expired everywhere with its TTL
        assert!(x
            .incoming(&inner, "a", &[], 50_000, 50_000)
            .signals
            .is_empty());
    }

    /// Set here after the other host's, and not yet in the merged view
    /// (the node has not merged this tick's state): ours stands.
    #[test]
    fn a_signal_set_here_later_is_not_taken_back_by_an_older_one() {
        let inner = host_b_with_signal("bench", 0.0, 600_000, 1_000);
        let mut x = Exchange::default();
        x.set_local_signal("bench", None, 1.0, 600_000, 1_500);
        assert!(x
            .incoming(&inner, "a", &[], 2_000, 2_000)
            .signals
            .is_empty());
        let l = x.local(summary("10.0.0.1:7946"), &[], 2_000, 2_000);
        assert_eq!(l.signals[&("bench".to_string(), None)].value, 1.0);
        // set in the same millisecond: the greater host name wins on both
        let mut tie = Exchange::default();
        tie.set_local_signal("bench", None, 2.0, 600_000, 1_000);
        assert_eq!(
            tie.incoming(&inner, "a", &[], 2_000, 2_000).signals.len(),
            1,
            "b > a"
        );
        let mut tie = Exchange::default();
        tie.set_local_signal("bench", None, 2.0, 600_000, 1_000);
        assert!(
            tie.incoming(&inner, "c", &[], 2_000, 2_000)
                .signals
                .is_empty(),
            "c > b"
        );
    }

    #[test]
    fn a_manual_activation_left_on_a_dead_host_is_continued_once() {
        let mut inner = Inner::default();
        let a = host_a_with(Manual {
            persona: "boost".into(),
            until: Some(600_000),
            id: 1,
        });
        merge(&mut inner, "a", a, 1_000);
        member(&mut inner, "10.0.0.1:7946", "alive");
        let here = [status("u1", "web-1", "running")];
        let mut x = Exchange::default();
        assert!(
            x.incoming(&inner, "b", &here, 2_000, 2_000)
                .follow
                .is_empty(),
            "a is alive and still runs it"
        );
        member(&mut inner, "10.0.0.1:7946", "dead");
        let got = x.incoming(&inner, "b", &here, 3_000, 3_000);
        assert_eq!(
            got.follow,
            [Follow {
                uuid: "u1".into(),
                name: "web-1".into(),
                from: "a".into(),
                manual: Manual {
                    persona: "boost".into(),
                    until: Some(600_000),
                    id: 1,
                },
            }]
        );
        assert!(
            x.incoming(&inner, "b", &here, 4_000, 4_000)
                .follow
                .is_empty(),
            "once"
        );
        // a domain with its own manual activation here keeps it
        let mut own = status("u1", "web-1", "running");
        own.override_ = Some(Override {
            persona: "calm".into(),
            until: None,
            id: 1,
        });
        let mut fresh = Exchange::default();
        assert!(fresh
            .incoming(&inner, "b", &[own], 4_000, 4_000)
            .follow
            .is_empty());
        // and one past its end is not continued
        assert!(fresh
            .incoming(&inner, "b", &here, 700_000, 700_000)
            .follow
            .is_empty());
    }

    /// The end of a continued activation, wherever it happened, keeps it
    /// from coming back: not on the host that ended it after a restart (its
    /// store's record), not on a third host the domain moves on to (the
    /// end is published with the domain).
    #[test]
    fn an_ended_activation_is_not_continued_again_after_a_restart_or_on_a_third_host() {
        let mut inner = Inner::default();
        let manual = Manual {
            persona: "boost".into(),
            until: None,
            id: 42,
        };
        merge(&mut inner, "a", host_a_with(manual.clone()), 1_000);
        member(&mut inner, "10.0.0.1:7946", "dead");
        // b continues it, then the admin reverts it on b: b's store has
        // its end, and b publishes it
        let here = [status("u1", "web-1", "running")];
        let got = Exchange::default().incoming(&inner, "b", &here, 2_000, 2_000);
        assert_eq!(got.follow.len(), 1);
        assert_eq!(got.follow[0].manual.id, 42, "the same activation");
        let mut reverted = status("u1", "web-1", "running");
        reverted.manual_ended = vec![42];
        let restarted =
            Exchange::default().incoming(&inner, "b", &[reverted.clone()], 3_000, 3_000);
        assert!(restarted.follow.is_empty(), "{restarted:?}");
        let b_local =
            Exchange::default().local(summary("10.0.0.2:7946"), &[reverted], 3_000, 3_000);
        assert_eq!(b_local.domains["u1"].ended, [42]);
        // b's item reaches c (b still alive, a dead): c does not take it either
        merge(&mut inner, "b", b_local, 3_000);
        member(&mut inner, "10.0.0.2:7946", "alive");
        let third = Exchange::default().incoming(&inner, "c", &here, 4_000, 4_000);
        assert!(third.follow.is_empty(), "{third:?}");
        // another activation (a new id) is continued as before
        let a2 = host_a_with(Manual { id: 43, ..manual });
        for it in Publisher::new("a").changes(5_000, 5_000, a2) {
            inner.state.apply(
                &Item {
                    version: 10_000,
                    ..it
                },
                5_000,
            );
        }
        let got = Exchange::default().incoming(&inner, "c", &here, 6_000, 6_000);
        assert_eq!(got.follow.len(), 1, "{got:?}");
        assert_eq!(got.follow[0].manual.id, 43);
    }
}
