//! Prometheus metrics (`GET /metrics`), owned by the daemon and updated from
//! tick reports and recorded events — no global statics.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::reconciler::{DomainStatus, TickReport};
use crate::store::Event;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PersonaLabel {
    persona: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkippedLabel {
    domain: String,
    knob: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabel {
    domain: String,
    persona: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabel {
    domain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeriesLabel {
    domain: String,
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecordLabel {
    domain: String,
    metric: String,
    measure: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    domain: String,
    metric: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FitLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HelperLabel {
    helper: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabel {
    listener: String,
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    domains: Family<PersonaLabel, Gauge>,
    skipped: Family<SkippedLabel, Gauge>,
    refused: Family<RefusedLabel, Gauge>,
    attention: Family<DomainLabel, Gauge>,
    quarantined: Family<DomainLabel, Gauge>,
    transitions: Family<ResultLabel, Counter>,
    apply_seconds: Histogram,
    tick_seconds: Histogram,
    libvirt_errors: Counter,
    persona_errors: Gauge,
    personas: Gauge,
    signals: Gauge,
    libvirt_up: Gauge,
    dry_run: Gauge,
    forecast_mape: Family<SeriesLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    forecast_coverage: Family<SeriesLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    forecast_history_days: Family<SeriesLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    forecast_series: Family<FitLabel, Gauge>,
    history_dropped: Counter,
    gossip_members: Family<FitLabel, Gauge>,
    gossip_packets: Family<FitLabel, Counter>,
    gossip_bytes: Family<FitLabel, Counter>,
    gossip_rate: Family<FitLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    gossip_dropped: Family<ReasonLabel, Counter>,
    gossip_backlog: Family<FitLabel, Gauge>,
    gossip_state: Family<FitLabel, Gauge>,
    gossip_digest_differs: Gauge,
    helper_up: Family<HelperLabel, Gauge>,
    helper_restarts: Family<HelperLabel, Gauge>,
    forecast_model: Family<ModelLabel, Gauge>,
    forecast_rel_mae: Family<SeriesLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    forecast_record: Family<RecordLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    api_connections: Family<ConnLabel, Gauge>,
    api_closed: Family<ListenerLabel, Counter>,
    limit_used: Family<LimitLabel, Gauge>,
    limit_max: Family<LimitLabel, Gauge>,
    source_up: Family<SourceLabel, Gauge>,
    source_polls: Family<SourceResultLabel, Counter>,
    source_last_success: Family<SourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    source_seconds: Family<SourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceResultLabel {
    signal: String,
    result: String,
}

/// One bounded thing the daemon keeps: its name (`limit` label), how many
/// there are, and the cap.
pub struct Usage {
    pub limit: &'static str,
    pub used: u64,
    pub max: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("virt_persona");
        let domains = Family::<PersonaLabel, Gauge>::default();
        registry.register(
            "domains",
            "Running domains by the persona they wear (\"\" = baseline)",
            domains.clone(),
        );
        let skipped = Family::<SkippedLabel, Gauge>::default();
        registry.register(
            "knob_unsupported",
            "Knobs of the worn persona this host cannot apply (skipped), by domain",
            skipped.clone(),
        );
        let refused = Family::<RefusedLabel, Gauge>::default();
        registry.register(
            "persona_refused",
            "Personas not worn on a domain because a required knob is unsupported here",
            refused.clone(),
        );
        let attention = Family::<DomainLabel, Gauge>::default();
        registry.register(
            "domain_needs_attention",
            "Domains a rollback or restore could not put back (retried every tick)",
            attention.clone(),
        );
        let quarantined = Family::<DomainLabel, Gauge>::default();
        registry.register(
            "domain_quarantined",
            "Domains left alone because their record in the state store is damaged",
            quarantined.clone(),
        );
        let transitions = Family::<ResultLabel, Counter>::default();
        registry.register(
            "transitions",
            "Transitions, drift repairs and threshold events by result",
            transitions.clone(),
        );
        let apply_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "apply_seconds",
            "Time to apply one transition (all its libvirt calls)",
            apply_seconds.clone(),
        );
        let tick_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "tick_seconds",
            "Duration of one control-loop tick",
            tick_seconds.clone(),
        );
        let libvirt_errors = Counter::default();
        registry.register(
            "libvirt_errors",
            "Ticks that failed on a libvirt error",
            libvirt_errors.clone(),
        );
        let persona_errors = Gauge::default();
        registry.register(
            "persona_load_errors",
            "Errors in persona files right now",
            persona_errors.clone(),
        );
        let personas = Gauge::default();
        registry.register("personas", "Personas in force", personas.clone());
        let signals = Gauge::default();
        registry.register("signals", "Live external signals", signals.clone());
        let libvirt_up = Gauge::default();
        registry.register(
            "libvirt_connected",
            "1 while the libvirt connection is up",
            libvirt_up.clone(),
        );
        let dry_run = Gauge::default();
        registry.register(
            "dry_run",
            "1 while the daemon only observes by choice (--dry-run): transitions are counted as result=\"would_apply\" and nothing is changed",
            dry_run.clone(),
        );
        let forecast_mape = Family::default();
        registry.register(
            "forecast_mape_percent",
            "Per fitted series: mean absolute percentage error of the forecast of its last day of history, made from the days before",
            forecast_mape.clone(),
        );
        let forecast_coverage = Family::default();
        registry.register(
            "forecast_interval_coverage_percent",
            "Per fitted series: share of the last day's actual values inside the forecast's 95 % interval",
            forecast_coverage.clone(),
        );
        let forecast_history_days = Family::default();
        registry.register(
            "forecast_history_days",
            "Per fitted series: days of history the fit saw",
            forecast_history_days.clone(),
        );
        let forecast_series = Family::default();
        registry.register(
            "forecast_series",
            "Series that forecast conditions use, by state (ready, waiting for history, failed)",
            forecast_series.clone(),
        );
        let history_dropped = Counter::default();
        registry.register(
            "history_samples_dropped",
            "Ticks whose values were not recorded in history because the forecast worker was behind",
            history_dropped.clone(),
        );
        let gossip_members = Family::default();
        registry.register(
            "gossip_members",
            "Cluster members by state (alive, suspect, dead), this host not counted",
            gossip_members.clone(),
        );
        let gossip_packets = Family::default();
        registry.register(
            "gossip_packets",
            "Gossip datagrams, by state=sent|received",
            gossip_packets.clone(),
        );
        let gossip_bytes = Family::default();
        registry.register(
            "gossip_bytes",
            "Gossip bytes on the wire, by state=sent|received",
            gossip_bytes.clone(),
        );
        let gossip_rate = Family::default();
        registry.register(
            "gossip_bytes_per_second",
            "Gossip bytes per second over the last 10 s, by state=sent|received",
            gossip_rate.clone(),
        );
        let gossip_dropped = Family::default();
        registry.register(
            "gossip_packets_dropped",
            "Gossip datagrams dropped, by reason (rate_limited — before opening —, unauthenticated, stale, wrong_receiver — sealed for another host —, replayed, truncated, oversized, not_gossip, old_format — a host of 0.2 or earlier —, malformed)",
            gossip_dropped.clone(),
        );
        let gossip_state = Family::default();
        registry.register(
            "gossip_state",
            "What this host's view of the cluster holds, by state=items|bytes (encoded)|hosts|forgotten_hosts (tombstones of hosts dead for a day)|ended_signals (tombstones of cluster signals ended for an hour)|max_clock_skew_ms (the largest clock difference to another host, from the send times in its datagrams)|cluster_time_lead_ms (how far cluster time, which orders and ends cluster signals, runs ahead of this host's clock)",
            gossip_state.clone(),
        );
        let gossip_backlog = Family::default();
        registry.register(
            "gossip_backlog",
            "Gossip messages still to pass on (foca's queues): state=updates (membership) or items (host state)",
            gossip_backlog.clone(),
        );
        let gossip_digest_differs = Gauge::default();
        registry.register(
            "gossip_hosts_with_other_personas",
            "Hosts whose persona-set digest differs from the majority's",
            gossip_digest_differs.clone(),
        );
        let helper_up = Family::default();
        registry.register(
            "helper_up",
            "1 while a helper of the control loop (helper=forecast|gossip) runs, 0 while it is being started again",
            helper_up.clone(),
        );
        let helper_restarts = Family::default();
        registry.register(
            "helper_restarts",
            "Times a helper was started again after it ended or panicked, since the daemon started",
            helper_restarts.clone(),
        );
        let source_up = Family::default();
        registry.register(
            "source_up",
            "1 while a signal source's last poll succeeded (by the signal it sets), 0 after a failure",
            source_up.clone(),
        );
        let source_polls = Family::default();
        registry.register(
            "source_polls",
            "Polls of a signal source, by result=ok|error",
            source_polls.clone(),
        );
        let source_last_success = Family::default();
        registry.register(
            "source_last_success_timestamp_seconds",
            "When a signal source last answered well (Unix time)",
            source_last_success.clone(),
        );
        let source_seconds = Family::default();
        registry.register(
            "source_poll_seconds",
            "How long a signal source's last poll took",
            source_seconds.clone(),
        );
        Metrics {
            source_up,
            source_polls,
            source_last_success,
            source_seconds,
            helper_up,
            helper_restarts,
            gossip_members,
            gossip_packets,
            gossip_bytes,
            gossip_rate,
            gossip_dropped,
            gossip_backlog,
            gossip_state,
            gossip_digest_differs,
            forecast_mape,
            forecast_coverage,
            forecast_history_days,
            forecast_series,
            history_dropped,
            forecast_model: {
                let f = Family::<ModelLabel, Gauge>::default();
                registry.register(
                    "forecast_model",
                    "The forecaster each series' backtest chose (1 for the model in force)",
                    f.clone(),
                );
                f
            },
            forecast_rel_mae: {
                let f = Family::<SeriesLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
                registry.register(
                    "forecast_rel_mae",
                    "The chosen forecaster's backtest error relative to same-time-yesterday (below 1 is better)",
                    f.clone(),
                );
                f
            },
            forecast_record: {
                let f = Family::<RecordLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
                registry.register(
                    "forecast_record",
                    "Per series, the record of the day-ahead forecasts this host issued over the last 7 complete days (measure: days, rel_mae against same-time-yesterday, coverage_percent of the 95 % band, width over the mean value, peaks, peaks_seen_ahead, quiet_days, false_alarms)",
                    f.clone(),
                );
                f
            },
            api_connections: {
                let f = Family::<ConnLabel, Gauge>::default();
                registry.register(
                    "api_connections",
                    "API connections open now, by listener and pool (pending: not yet admitted by a request; admitted)",
                    f.clone(),
                );
                f
            },
            api_closed: {
                let f = Family::<ListenerLabel, Counter>::default();
                registry.register(
                    "api_pending_closed_for_room",
                    "Pending API connections closed to make room for newer ones (a flood of connections that send nothing)",
                    f.clone(),
                );
                f
            },
            limit_used: {
                let f = Family::<LimitLabel, Gauge>::default();
                registry.register(
                    "limit_used",
                    "How much of a bounded resource is in use (compare with virt_persona_limit)",
                    f.clone(),
                );
                f
            },
            limit_max: {
                let f = Family::<LimitLabel, Gauge>::default();
                registry.register(
                    "limit",
                    "The cap of a bounded resource (the config setting of the same name)",
                    f.clone(),
                );
                f
            },
            registry,
            domains,
            skipped,
            refused,
            attention,
            quarantined,
            transitions,
            apply_seconds,
            tick_seconds,
            libvirt_errors,
            persona_errors,
            personas,
            signals,
            libvirt_up,
            dry_run,
        }
    }

    /// The helpers' state (`/healthz` lists the same).
    pub fn helpers(&self, helpers: &[crate::supervise::HelperStatus]) {
        for h in helpers {
            let l = HelperLabel {
                helper: h.name.to_string(),
            };
            self.helper_up.get_or_create(&l).set(!h.is_down() as i64);
            self.helper_restarts
                .get_or_create(&l)
                .set(h.restarts as i64);
        }
    }

    /// The API's connections: (listener, pending, admitted, pending ones
    /// closed for room so far).
    pub fn api(&self, listeners: &[(&str, usize, usize, u64)]) {
        for (name, pending, admitted, closed) in listeners {
            for (pool, n) in [("pending", pending), ("admitted", admitted)] {
                self.api_connections
                    .get_or_create(&ConnLabel {
                        listener: name.to_string(),
                        pool: pool.into(),
                    })
                    .set(*n as i64);
            }
            let c = self.api_closed.get_or_create(&ListenerLabel {
                listener: name.to_string(),
            });
            let seen = c.get();
            if *closed > seen {
                c.inc_by(closed - seen);
            }
        }
    }

    /// Bounded resources against their caps.
    pub fn limits(&self, usage: &[Usage]) {
        for u in usage {
            let l = LimitLabel {
                limit: u.limit.into(),
            };
            self.limit_used.get_or_create(&l).set(u.used as i64);
            self.limit_max.get_or_create(&l).set(u.max as i64);
        }
    }

    /// The signal sources as they fare (a removed one is no longer shown).
    pub fn sources(&self, board: &[crate::sources::poller::Status]) {
        self.source_up.clear();
        self.source_last_success.clear();
        self.source_seconds.clear();
        for s in board {
            let l = SourceLabel {
                signal: s.signal.clone(),
            };
            self.source_up.get_or_create(&l).set(s.up as i64);
            if let Some(t) = s.last_success {
                self.source_last_success
                    .get_or_create(&l)
                    .set(t as f64 / 1000.0);
            }
            self.source_seconds
                .get_or_create(&l)
                .set(s.took_ms as f64 / 1000.0);
            for (result, total) in [
                ("ok", s.polls - s.failures.min(s.polls)),
                ("error", s.failures),
            ] {
                let c = self.source_polls.get_or_create(&SourceResultLabel {
                    signal: s.signal.clone(),
                    result: result.into(),
                });
                c.inc_by(total.saturating_sub(c.get()));
            }
        }
    }

    pub fn dry_run(&self, on: bool) {
        self.dry_run.set(on as i64);
    }

    pub fn tick(&self, seconds: f64, report: Option<&TickReport>) {
        self.tick_seconds.observe(seconds);
        match report {
            Some(r) => {
                for us in &r.apply_micros {
                    self.apply_seconds.observe(*us as f64 / 1e6);
                }
            }
            None => {
                self.libvirt_errors.inc();
            }
        }
    }

    pub fn events(&self, events: &[Event]) {
        for e in events {
            self.transitions
                .get_or_create(&ResultLabel {
                    result: e.result.clone(),
                })
                .inc();
        }
    }

    pub fn state(
        &self,
        domains: &[DomainStatus],
        personas: usize,
        persona_errors: usize,
        signals: usize,
        libvirt_up: bool,
    ) {
        self.domains.clear();
        for d in domains.iter().filter(|d| d.state != "shut off") {
            let persona = d.persona.clone().unwrap_or_default();
            self.domains.get_or_create(&PersonaLabel { persona }).inc();
        }
        self.skipped.clear();
        self.refused.clear();
        self.attention.clear();
        self.quarantined.clear();
        for d in domains {
            if d.quarantined.is_some() {
                let label = DomainLabel {
                    domain: d.name.clone(),
                };
                self.quarantined.get_or_create(&label).set(1);
            }
            if d.needs_attention.is_some() {
                let label = DomainLabel {
                    domain: d.name.clone(),
                };
                self.attention.get_or_create(&label).set(1);
            }
            for k in &d.skipped {
                let label = SkippedLabel {
                    domain: d.name.clone(),
                    knob: k.knob.clone(),
                };
                self.skipped.get_or_create(&label).set(1);
            }
            for p in d.refused.keys() {
                let label = RefusedLabel {
                    domain: d.name.clone(),
                    persona: p.clone(),
                };
                self.refused.get_or_create(&label).set(1);
            }
        }
        self.personas.set(personas as i64);
        self.persona_errors.set(persona_errors as i64);
        self.signals.set(signals as i64);
        self.libvirt_up.set(libvirt_up as i64);
    }

    /// The Prometheus text format.
    /// The gossip node's counters and members.
    pub fn gossip(&self, i: &crate::cluster::node::Inner) {
        self.gossip_members.clear();
        for st in ["alive", "suspect", "dead"] {
            let n = i.members.values().filter(|m| m.state == st).count();
            self.gossip_members
                .get_or_create(&FitLabel { state: st.into() })
                .set(n as i64);
        }
        // the node keeps running totals; the counters catch up with them
        let catch_up = |c: &Counter, total: u64| {
            c.inc_by(total.saturating_sub(c.get()));
        };
        let c = &i.counters;
        for (st, p, b, rate) in [
            ("sent", c.packets_sent, c.bytes_sent, c.bytes_per_second.0),
            (
                "received",
                c.packets_received,
                c.bytes_received,
                c.bytes_per_second.1,
            ),
        ] {
            let label = FitLabel { state: st.into() };
            catch_up(&self.gossip_packets.get_or_create(&label), p);
            catch_up(&self.gossip_bytes.get_or_create(&label), b);
            self.gossip_rate.get_or_create(&label).set(rate);
        }
        for d in crate::cluster::seal::Drop::ALL.iter().map(|d| d.label()) {
            catch_up(
                &self
                    .gossip_dropped
                    .get_or_create(&ReasonLabel { reason: d.into() }),
                c.dropped.get(d).copied().unwrap_or(0),
            );
        }
        for (st, n) in [
            ("items", i.state.item_count()),
            ("bytes", i.state.encoded_bytes()),
            ("hosts", i.state.nodes.len()),
            ("forgotten_hosts", i.state.forgotten.len()),
            ("ended_signals", i.state.ended_signals.len()),
            ("max_clock_skew_ms", i.max_clock_skew_ms() as usize),
            ("cluster_time_lead_ms", i.clock.lead().max(0) as usize),
        ] {
            self.gossip_state
                .get_or_create(&FitLabel { state: st.into() })
                .set(n as i64);
        }
        for (st, n) in [("updates", c.backlog.0), ("items", c.backlog.1)] {
            self.gossip_backlog
                .get_or_create(&FitLabel { state: st.into() })
                .set(n as i64);
        }
        let majority = i.state.majority_digest().map(|m| m.0);
        let differ = i
            .state
            .nodes
            .values()
            .filter_map(|n| n.summary.as_ref())
            .filter(|(_, s)| Some(&s.digest) != majority.as_ref())
            .count();
        self.gossip_digest_differs.set(differ as i64);
    }

    /// A tick's values could not be handed to the forecast worker.
    pub fn history_dropped(&self) {
        self.history_dropped.inc();
    }

    /// Forecast accuracy per series; `name_of` turns a UUID into the domain's name.
    pub fn forecasts(
        &self,
        forecasts: &crate::forecast::Forecasts,
        name_of: impl Fn(&str) -> Option<String>,
    ) {
        use crate::forecast::FitState;
        self.forecast_mape.clear();
        self.forecast_model.clear();
        self.forecast_rel_mae.clear();
        self.forecast_record.clear();
        self.forecast_coverage.clear();
        self.forecast_history_days.clear();
        self.forecast_series.clear();
        for (key, st) in forecasts.iter() {
            let state = match st {
                FitState::Ready(_) => "ready",
                FitState::Waiting { .. } => "waiting_for_history",
                FitState::Failed(_) => "failed",
            };
            self.forecast_series
                .get_or_create(&FitLabel {
                    state: state.into(),
                })
                .inc();
            let FitState::Ready(fit) = st else {
                continue;
            };
            let label = SeriesLabel {
                domain: name_of(&key.domain).unwrap_or_else(|| key.domain.clone()),
                metric: key.metric.to_string(),
            };
            self.forecast_history_days
                .get_or_create(&label)
                .set((fit.history_end - fit.history_start) as f64 / 86_400_000.0);
            self.forecast_model
                .get_or_create(&ModelLabel {
                    domain: label.domain.clone(),
                    metric: label.metric.clone(),
                    model: fit.model.name(),
                })
                .set(1);
            if let Some(r) = fit.backtest.as_ref().and_then(|b| b.rel_mae) {
                self.forecast_rel_mae.get_or_create(&label).set(r);
            }
            if let Some(r) = &fit.record {
                let measures = [
                    ("days", Some(r.days as f64)),
                    ("rel_mae", r.rel_mae),
                    ("coverage_percent", r.coverage),
                    ("width", r.width),
                    ("peaks", Some(r.peaks as f64)),
                    ("peaks_seen_ahead", Some(r.peaks_seen as f64)),
                    ("quiet_days", Some(r.quiet_days as f64)),
                    ("false_alarms", Some(r.false_alarms as f64)),
                ];
                for (measure, v) in measures {
                    if let Some(v) = v {
                        self.forecast_record
                            .get_or_create(&RecordLabel {
                                domain: label.domain.clone(),
                                metric: label.metric.clone(),
                                measure: measure.into(),
                            })
                            .set(v);
                    }
                }
            }
            if let Some(a) = fit.accuracy {
                self.forecast_mape.get_or_create(&label).set(a.mape);
                self.forecast_coverage.get_or_create(&label).set(a.coverage);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// OpenMetrics text (what the registry writes) as the classic Prometheus
/// text format 0.0.4: a counter's family is named as its samples are
/// (`_total`), an info metric is a gauge of its `_info` sample, `unknown`
/// is `untyped`; `# UNIT` and `# EOF` go. What `promtool check metrics`
/// and every 0.0.4 reader expect.
pub fn text_format(open: &str) -> String {
    let mut renamed: std::collections::HashMap<&str, (String, &str)> = Default::default();
    for l in open.lines() {
        let mut w = l.splitn(4, ' ');
        if let (Some("#"), Some("TYPE"), Some(name), Some(t)) =
            (w.next(), w.next(), w.next(), w.next())
        {
            let (n, t) = match t {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            renamed.insert(name, (n, t));
        }
    }
    let mut out = String::with_capacity(open.len());
    for l in open.lines() {
        let mut w = l.splitn(4, ' ');
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("#"), Some("EOF"), None, None) | (Some("#"), Some("UNIT"), _, _) => continue,
            (Some("#"), Some("TYPE"), Some(name), _) => {
                if let Some((n, t)) = renamed.get(name) {
                    out.push_str(&format!("# TYPE {n} {t}\n"));
                    continue;
                }
            }
            (Some("#"), Some("HELP"), Some(name), help) => {
                let n = renamed.get(name).map_or(name, |(n, _)| n.as_str());
                // 0.0.4 escapes only \\ and \n in help text
                let help = help.unwrap_or_default().replace("\\\"", "\"");
                out.push_str(&format!("# HELP {n} {help}\n"));
                continue;
            }
            _ => {}
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_families_as_their_samples() {
        let open = "# HELP x_total_ Things \\\"quoted\\\".\n# TYPE c counter\n# HELP c Counted.\n# UNIT c seconds\nc_total 3\n# TYPE i info\n# HELP i Build.\ni_info{v=\"1\"} 1\n# TYPE u unknown\nu 2\n# TYPE g gauge\ng 1\n# EOF\n";
        let t = text_format(open);
        for want in [
            "# TYPE c_total counter\n",
            "# HELP c_total Counted.\n",
            "c_total 3\n",
            "# TYPE i_info gauge\n",
            "# HELP i_info Build.\n",
            "# TYPE u untyped\n",
            "# TYPE g gauge\n",
            "# HELP x_total_ Things \"quoted\".\n",
        ] {
            assert!(t.contains(want), "{want:?} in\n{t}");
        }
        assert!(!t.contains("# EOF") && !t.contains("# UNIT"), "{t}");
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.tick(
            0.002,
            Some(&TickReport {
                apply_micros: vec![1500],
                ..Default::default()
            }),
        );
        m.tick(0.002, None);
        m.events(&[Event::example(0, "a")]);
        let t = m.render();
        assert!(
            t.contains("virt_persona_transitions_total{result=\"ok\"} 1"),
            "{t}"
        );
        assert!(t.contains("virt_persona_libvirt_errors_total 1"), "{t}");
        assert!(t.contains("virt_persona_apply_seconds_count 1"), "{t}");
        assert!(t.ends_with("# EOF\n"));
    }
}
