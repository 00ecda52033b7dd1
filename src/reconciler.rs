//! One tick of the control loop: collect → decide → plan → apply (rolling back
//! on failure) → record. Generic over the hypervisor and the state store, so
//! tests hold a recording fake and benches measure the logic alone.
//!
//! Invariants:
//! - a knob's original value is stored durably before the first change to it;
//!   returning to the baseline restores exactly those values, then drops them;
//! - a transition is all-or-nothing: a failing change undoes the ones made;
//! - a tick where nothing changes makes one hypervisor call (the bulk stats);
//!   the domain list is refreshed only on lifecycle events, new domains in the
//!   stats, and every verify interval.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tracing::{debug, info, instrument, warn};

use crate::collector::{longest_window, needs, Collector, HostCounters};
use crate::forecast::{FitState, Forecasts};
use crate::history::{SeriesKey, HOST};
use crate::hypervisor::{
    ApplyScope, DomainInfo, Hypervisor, HypervisorError, ReadScope, StatGroups,
};
use crate::model::knobs::CgroupVersion;
use crate::model::persona::{Measure, Metric, Persona};
use crate::model::tuning::{Change, DefinitionOriginal, Knob, Tuning};
use crate::planner::plan;
use crate::rules::{candidates, decide, Decision, Inputs, Override, Reason, RuleState, Signals};
use crate::store::{Event, Skipped, StateStore, StoreError, Worn};
use crate::time::Millis;

const BACKOFF_MIN_MS: Millis = 5_000;
const BACKOFF_MAX_MS: Millis = 300_000;

/// What the daemon knows of one domain.
#[derive(Debug, Clone)]
pub struct DomainEntry {
    pub info: DomainInfo,
    pub rules: RuleState,
    pub last_error: Option<String>,
    pub last_decision: Option<Decision>,
    /// The personas whose `[match]` fits, in evaluation order (cached).
    candidates: Vec<Arc<Persona>>,
    retry_at: Option<Millis>,
    backoff_ms: Millis,
    last_verify: Millis,
    crossed: HashSet<Metric>,
    /// Knobs this host cannot apply to this domain, with libvirt's reason;
    /// learned per connection (see [`Reconciler::relearn`]).
    unsupported: BTreeMap<Knob, String>,
    /// What the worn persona asks and this host could not apply.
    skipped: Vec<Skipped>,
    /// Personas refused here because a `required` knob is unsupported.
    refused: BTreeMap<String, String>,
    /// Set when a rollback or a restore failed: the domain is not exactly at
    /// its baseline or its persona until a later tick manages it.
    needs_attention: Option<String>,
    /// The worn persona also wrote the persistent definition: its revert must
    /// too, even once the persona itself is gone.
    worn_persist: bool,
    /// Its record in the state store does not decode: left alone (no decision,
    /// no change) until that is repaired, while every other domain goes on.
    quarantined: Option<String>,
    /// The store holds originals of its persistent definition (a persona that
    /// persists wrote it): the definition goes back to them once no persona
    /// that persists those knobs is worn.
    definition_recorded: bool,
    /// The ids of its manual activations that ended here (the store's
    /// [`crate::store::StateStore::ended_manuals`], cached for publishing).
    ended_manuals: Vec<u64>,
}

/// A domain's state for listings (`virt-persona list`, the API).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DomainStatus {
    pub id: Option<u32>,
    pub name: String,
    pub uuid: String,
    pub state: String,
    pub persona: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub since: Option<Millis>,
    pub reason: Option<Reason>,
    #[serde(rename = "override")]
    pub override_: Option<Override>,
    pub last_error: Option<String>,
    /// Knobs of the worn persona this host cannot apply (the rest is applied).
    pub skipped: Vec<Skipped>,
    /// Personas that may not be worn here: a knob they require is
    /// unsupported, or a value is outside this host's range.
    pub refused: BTreeMap<String, String>,
    /// The worn persona's `cpu_weight` and what it is on this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<String>,
    /// Why the domain is neither exactly at its baseline nor at its persona.
    pub needs_attention: Option<String>,
    /// Why the daemon leaves this domain alone (a damaged record in the store).
    pub quarantined: Option<String>,
    /// The daemon only observes (`--dry-run`, or a damaged state file): the
    /// persona is the one the domain would wear; nothing was applied.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub would: bool,
    /// The ids of its manual activations that ended on this host (what the
    /// cluster is told, so none of them comes back from another host).
    #[serde(skip)]
    pub manual_ended: Vec<u64>,
}

/// A domain's process ended: the originals read from it do not describe the
/// next one (which starts from the definition, with new vnetN names), so they
/// are dropped rather than written back. Where the persona also wrote the
/// definition, its originals are still what the definition must go back to;
/// only the interface records (named after the old process's devices) go.
fn drop_stale_originals<S: StateStore>(
    store: &mut S,
    info: &DomainInfo,
    persisted: bool,
    now: Millis,
    what: &str,
) -> Result<Option<Event>, TickError> {
    let baseline = store.baseline(&info.uuid)?;
    let stale: Vec<Knob> = baseline
        .changes()
        .into_iter()
        .map(|c| c.knob)
        .filter(|k| !persisted || matches!(k, Knob::Interface { .. }))
        .collect();
    if stale.is_empty() {
        return Ok(None);
    }
    store.clear_baseline(&info.uuid, &stale)?;
    info!(domain = %info.name, knobs = stale.len(), what, "originals of the previous run dropped");
    Ok(Some(Event {
        time: now,
        domain: info.name.clone(),
        reason: format!(
            "domain {what}: the recorded originals of {} knob(s) belonged to its previous run and are dropped, not written back",
            stale.len()
        ),
        result: "baseline_dropped".into(),
        ..Default::default()
    }))
}

/// The knobs a persona sets on this domain.
fn knobs_of(p: &Persona, info: &DomainInfo) -> Vec<Knob> {
    p.tuning
        .resolve(info)
        .changes()
        .into_iter()
        .map(|c| c.knob)
        .collect()
}

/// What a domain's status says when knobs could not be put back.
fn attention(stuck: &[(Knob, String)]) -> Option<String> {
    (!stuck.is_empty()).then(|| {
        let knobs: Vec<String> = stuck.iter().map(|(k, _)| k.to_string()).collect();
        format!(
            "rollback failed for {}: changed and not at its original; retried every tick",
            knobs.join(", ")
        )
    })
}

/// The candidates that may not be worn on a domain: a knob they list in
/// `required` is one this host cannot apply there.
fn refusals(
    candidates: &[Arc<Persona>],
    unsupported: &BTreeMap<Knob, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if unsupported.is_empty() {
        return out;
    }
    for p in candidates {
        if let Some((k, why)) = unsupported
            .iter()
            .find(|(k, _)| p.tuning.required.iter().any(|r| r == k.key()))
        {
            // named as the file wrote it: `cpu_weight` is `cpu_shares` here
            let knob = if *k == Knob::CpuShares && p.tuning.cpu_weight.is_some() {
                "cpu_weight (cpu_shares on this host)".to_string()
            } else {
                k.to_string()
            };
            out.insert(
                p.id.clone(),
                format!("required knob {knob} is unsupported on this host: {why}"),
            );
        }
    }
    out
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub transitions: usize,
    pub failures: usize,
    pub drifts: usize,
    /// Microseconds each applied transition took (all its libvirt calls).
    pub apply_micros: Vec<u64>,
}

impl TickReport {
    /// Counts what one domain's reconcile came to.
    fn count(&mut self, o: Outcome) {
        match o {
            Outcome::WouldApply { transition: true }
            | Outcome::AlreadyThere { transition: true } => self.transitions += 1,
            Outcome::Applied {
                transition,
                changes,
                micros,
            } => {
                self.apply_micros.push(micros);
                if transition {
                    self.transitions += 1;
                } else if changes > 0 {
                    self.drifts += 1;
                }
            }
            Outcome::Failed => self.failures += 1,
            _ => {}
        }
    }
}

/// What reconciling one domain came to (as kube-rs's `Action` tells its
/// runtime): the tick's report is the sum of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do: as decided and no verify due, or the domain went away.
    Nothing,
    /// A transition held back by its retry backoff.
    Backoff,
    /// Observing only: what would be done was recorded.
    WouldApply { transition: bool },
    /// Decided and planned: nothing needed changing.
    AlreadyThere { transition: bool },
    /// Changes applied: a transition, or a drift repaired (`changes` > 0),
    /// in `micros` of libvirt calls.
    Applied {
        transition: bool,
        changes: usize,
        micros: u64,
    },
    /// A change failed; what was changed was rolled back.
    Failed,
}

/// A phase's result: go on with its value, or stop with the outcome.
enum Step<T> {
    Next(T),
    Done(Outcome),
}

/// What the decide phase hands on.
struct Decided {
    decision: Decision,
    /// The rule state before this decision (put back if the transition fails).
    previous: RuleState,
    from: Option<String>,
    to: Option<String>,
    changed: bool,
    persona: Option<Arc<Persona>>,
    baseline: Tuning,
}

/// What the plan phase hands on.
struct Planned {
    name: String,
    current: Tuning,
    changes: Vec<Change>,
    skipped: Vec<Skipped>,
    /// Why, as the event says it (criteria, drift, manual …).
    reason: String,
}

/// A transition's event on domain `name` (changes, skipped knobs and the
/// error are the caller's to add).
fn transition_event(
    now: Millis,
    name: &str,
    from: &Option<String>,
    to: &Option<String>,
    reason: String,
    result: &str,
) -> Event {
    Event {
        time: now,
        domain: name.to_string(),
        from: from.clone(),
        to: to.clone(),
        reason,
        result: result.into(),
        ..Default::default()
    }
}

/// What the apply phase did.
struct Applied {
    /// The changes made, in order.
    done: Vec<Change>,
    failure: Option<(Change, HypervisorError)>,
    /// Originals recorded by this transition (cleared again if it fails).
    originals: Vec<Change>,
    /// Definition originals recorded by this transition.
    fresh_definition: Vec<DefinitionOriginal>,
    scope: ApplyScope,
    skipped: Vec<Skipped>,
    micros: u64,
}

/// Errors that stop a tick (the next tick tries again).
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Called after each libvirt call a transition or restore completes.
pub type ProgressHook = Arc<dyn Fn() + Send + Sync>;

/// The control loop's state.
pub struct Reconciler<H: Hypervisor + ?Sized, S: StateStore> {
    hv: Arc<H>,
    /// Told of every libvirt call a transition or a restore completed (the
    /// daemon pings systemd's watchdog from it: a long transition on a slow
    /// host is progress, one call that never returns is not).
    progress: Option<ProgressHook>,
    store: S,
    collector: Collector,
    domains: HashMap<String, DomainEntry>,
    personas: Vec<Arc<Persona>>,
    groups: StatGroups,
    pub signals: Signals,
    /// The signals kept in the state store (pushed ones), by name and
    /// domain: when each stored record expires, and whether a failure to
    /// remove it was logged. An expired one leaves the store at the next
    /// tick; one whose removal failed is tried again every tick.
    kept_signals: BTreeMap<(String, Option<String>), (Millis, bool)>,
    verify_interval_ms: Millis,
    stale: bool,
    last_list: Millis,
    /// Events recorded since the last [`Reconciler::take_events`].
    recent: Vec<Event>,
    /// When set, samples are stamped with the time the stats call actually ran
    /// (its midpoint), not the tick's `now`: a slow domain-list refresh before
    /// the call must not show up as a burst of load.
    stats_clock: Option<Clock>,
    /// Ticks completed since start (tests and /healthz wait on it).
    ticks: u64,
    /// Why the daemon only observes (no write to libvirt), if it does.
    observe: Option<String>,
    /// Observe only by choice (`--dry-run`).
    dry_run: bool,
    /// What clients may make the daemon hold (`[limits]`).
    limits: crate::config::Limits,
    /// The last tick failed on the state store.
    store_failing: Option<String>,
    /// The daemon's helpers (forecast worker, gossip), as its loop last saw them.
    helpers: Vec<crate::supervise::HelperStatus>,
    /// Fitted forecasts, as the forecast worker hands them over.
    forecasts: Forecasts,
    /// `forecast_mode = "observe"` for the whole daemon.
    forecast_observe: bool,
    /// The newest sample handed to history (see [`Reconciler::history_values`]).
    history_t: Millis,
    /// This host gossips with a cluster (cluster-scope signals are accepted).
    cluster: bool,
    /// The host's cgroup version (what `cpu_shares` means here), if known.
    cgroup: Option<CgroupVersion>,
    /// Personas that cannot be worn on this host at all (a `cpu_shares`
    /// outside its range): id → why.
    host_refused: BTreeMap<String, String>,
}

/// Milliseconds since the Unix epoch, read when called.
use crate::time::Clock;

fn status_of(e: &DomainEntry, cgroup: Option<CgroupVersion>) -> DomainStatus {
    let worn = e.rules.worn.as_ref().map(|w| w.0.as_str());
    let cpu_weight = worn
        .and_then(|id| e.candidates.iter().find(|p| p.id == id))
        .and_then(|p| Some((p.tuning.cpu_weight?, p.tuning.fixed.cpu_shares?)))
        .zip(cgroup)
        .map(|((w, shares), c)| {
            format!(
                "{w} = cpu_shares {shares} on this host ({}, default {})",
                c.name(),
                c.default_shares()
            )
        });
    DomainStatus {
        cpu_weight,
        id: e.info.id,
        name: e.info.name.clone(),
        uuid: e.info.uuid.clone(),
        state: e.info.state.as_str().to_string(),
        persona: e.rules.worn.as_ref().map(|w| w.0.clone()),
        since: e.rules.worn.as_ref().map(|w| w.1),
        reason: e
            .last_decision
            .as_ref()
            .filter(|d| d.persona.is_some())
            .map(|d| d.reason.clone()),
        override_: e.rules.override_.clone(),
        manual_ended: e.ended_manuals.clone(),
        last_error: e.last_error.clone(),
        skipped: if e.rules.worn.is_some() {
            e.skipped.clone()
        } else {
            vec![]
        },
        refused: e.refused.clone(),
        needs_attention: e.needs_attention.clone(),
        quarantined: e.quarantined.clone(),
        would: false,
    }
}

/// Why a manual activation or revert was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("domain '{0}' not found")]
    NoDomain(String),
    #[error("persona '{0}' not found")]
    NoPersona(String),
    #[error("domain '{domain}' is not running")]
    NotRunning { domain: String },
    #[error("persona '{persona}' does not match domain '{domain}': {why}")]
    NoMatch {
        persona: String,
        domain: String,
        why: String,
    },
    #[error("persona '{persona}' cannot be worn by domain '{domain}' on this host: {why}")]
    Refused {
        persona: String,
        domain: String,
        why: String,
    },
    #[error(transparent)]
    Tick(#[from] TickError),
}

impl<H: Hypervisor + ?Sized, S: StateStore> Reconciler<H, S> {
    pub fn new(hv: Arc<H>, store: S, verify_interval: std::time::Duration) -> Self {
        Reconciler {
            hv,
            progress: None,
            store,
            collector: Collector::default(),
            domains: HashMap::new(),
            personas: Vec::new(),
            groups: StatGroups::default(),
            signals: Signals::default(),
            kept_signals: BTreeMap::new(),
            verify_interval_ms: verify_interval.as_millis().min(i64::MAX as u128) as Millis,
            stale: true,
            last_list: 0,
            recent: Vec::new(),
            stats_clock: None,
            ticks: 0,
            observe: None,
            dry_run: false,
            limits: Default::default(),
            store_failing: None,
            helpers: Vec::new(),
            forecasts: Forecasts::default(),
            forecast_observe: false,
            history_t: Millis::MIN,
            cluster: false,
            cgroup: None,
            host_refused: BTreeMap::new(),
        }
    }

    /// The host's cgroup version, from [`crate::hypervisor::HostInfo`]: set
    /// before the personas, which are resolved for it.
    pub fn set_cgroup(&mut self, cgroup: Option<CgroupVersion>) {
        self.cgroup = cgroup;
    }

    pub fn cgroup(&self) -> Option<CgroupVersion> {
        self.cgroup
    }

    /// Replaces the personas in force (in evaluation order).
    /// Stamps samples with this clock around the stats call instead of the
    /// tick's `now` (the daemon passes the real clock; tests leave it unset).
    pub fn set_stats_clock(&mut self, clock: Clock) {
        self.stats_clock = Some(clock);
    }

    pub fn set_personas(&mut self, personas: Vec<Arc<Persona>>) {
        // host-dependent values resolved for this host: cpu_weight → cpu_shares;
        // a persona this host cannot take is refused here, naming why
        self.host_refused.clear();
        let personas: Vec<Arc<Persona>> = personas
            .into_iter()
            .map(|p| match p.tuning.for_host(self.cgroup) {
                Ok(t) if t == p.tuning => p,
                Ok(t) => Arc::new(Persona {
                    tuning: t,
                    ..(*p).clone()
                }),
                Err(why) => {
                    warn!(persona = %p.id, reason = %why, "persona cannot be worn on this host");
                    self.host_refused.insert(p.id.clone(), why);
                    p
                }
            })
            .collect();
        let (groups, keep) = needs(&personas);
        self.groups = groups;
        self.collector.set_keep(keep);
        for e in self.domains.values_mut() {
            e.candidates = candidates(&personas, &e.info);
            self.collector
                .set_keep_for(&e.info.uuid, longest_window(&e.candidates));
        }
        self.personas = personas;
    }

    /// Records an event durably and keeps it for [`Reconciler::take_events`].
    fn record(&mut self, e: Event) -> Result<(), TickError> {
        self.store.append_event(&e)?;
        if self.recent.len() < 10_000 {
            self.recent.push(e);
        }
        Ok(())
    }

    /// Gossip is on: cluster-scope signals are accepted.
    pub fn set_cluster_enabled(&mut self, on: bool) {
        self.cluster = on;
    }

    pub fn cluster_enabled(&self) -> bool {
        self.cluster
    }

    /// The personas a domain may wear (`[match]`), in evaluation order.
    pub fn candidates_of(&self, uuid: &str) -> &[Arc<Persona>] {
        self.domains
            .get(uuid)
            .map(|e| e.candidates.as_slice())
            .unwrap_or(&[])
    }

    /// A forecast worker's news about one series.
    pub fn set_forecast(&mut self, key: SeriesKey, state: Option<FitState>) {
        match state {
            Some(st) => self.forecasts.set(key, st),
            None => self.forecasts.remove(&key),
        }
    }

    pub fn forecasts(&self) -> &Forecasts {
        &self.forecasts
    }

    /// `forecast_mode = "observe"` for every persona.
    pub fn set_forecast_observe(&mut self, on: bool) {
        self.forecast_observe = on;
    }

    /// The metrics forecast conditions name, across the personas in force.
    pub fn forecast_metrics(&self) -> std::collections::BTreeSet<Metric> {
        self.personas
            .iter()
            .filter_map(|p| p.activation.as_ref())
            .flat_map(|a| a.when.iter())
            .filter_map(|c| match &c.source {
                crate::model::persona::Source::Forecast(m) => m.metric(),
                _ => None,
            })
            .collect()
    }

    /// The signals forecast conditions name (`signal:NAME`), across the
    /// personas in force.
    pub fn forecast_signals(&self) -> std::collections::BTreeSet<String> {
        self.personas
            .iter()
            .filter_map(|p| p.activation.as_ref())
            .flat_map(|a| a.when.iter())
            .filter_map(|c| match &c.source {
                crate::model::persona::Source::Forecast(Measure::Signal(s)) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// The series to fit: a forecast condition of a persona that may be worn
    /// by the domain (`[match]`) names the metric.
    /// The series forecast conditions use, each with the zone of the first
    /// persona (by priority) naming it: its daily season follows that wall
    /// clock.
    pub fn forecast_series(&self) -> crate::forecaster::Wanted {
        let mut out = crate::forecaster::Wanted::new();
        for e in self.domains.values() {
            for p in &e.candidates {
                if let Some(a) = &p.activation {
                    for c in &a.when {
                        if let crate::model::persona::Source::Forecast(m) = &c.source {
                            let d = if m.is_host() {
                                HOST
                            } else {
                                e.info.uuid.as_str()
                            };
                            let want =
                                out.entry(SeriesKey::new(d, m.clone())).or_insert_with(|| {
                                    crate::forecaster::Want {
                                        zone: a.zone.clone(),
                                        peak_at: None,
                                    }
                                });
                            if let (None, crate::model::persona::Comparison::Above(t)) =
                                (want.peak_at, c.comparison)
                            {
                                want.peak_at = Some(t);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The samples taken since the last call, of every metric a forecast
    /// condition names, for every domain and the host: what history records.
    pub fn history_values(&mut self) -> Vec<(SeriesKey, Millis, f64)> {
        let metrics = self.forecast_metrics();
        let signals = self.forecast_signals();
        let mut out = Vec::new();
        if metrics.is_empty() && signals.is_empty() {
            return out;
        }
        let since = self.history_t;
        let mut newest = since;
        let mut take =
            |domain: &str, w: Option<&std::collections::VecDeque<crate::collector::Sample>>| {
                for s in w.into_iter().flatten().rev().take_while(|s| s.t > since) {
                    newest = newest.max(s.t);
                    for m in &metrics {
                        if m.is_host() != (domain == HOST) {
                            continue;
                        }
                        if let Some(v) = s.values.get(*m) {
                            out.push((SeriesKey::new(domain, *m), s.t, v));
                        }
                    }
                }
            };
        for uuid in self.domains.keys() {
            take(uuid, self.collector.window(uuid));
        }
        take(HOST, Some(self.collector.host_window()));
        // each tick, a signal a forecast condition names, as each domain
        // whose personas name it sees it (its own value, else the host's);
        // a forecast reads a number of at least 0 (an absent signal: no point)
        if newest > since && !signals.is_empty() {
            for (uuid, e) in &self.domains {
                // running, sampled this tick
                if self
                    .collector
                    .window(uuid)
                    .and_then(|w| w.back())
                    .is_none_or(|s| s.t <= since)
                {
                    continue;
                }
                for name in &signals {
                    let named = e.candidates.iter().any(|p| {
                        p.activation.iter().flat_map(|a| a.when.iter()).any(|c| {
                            matches!(&c.source, crate::model::persona::Source::Forecast(Measure::Signal(s)) if s == name)
                        })
                    });
                    if !named {
                        continue;
                    }
                    if let Some(v) = self
                        .signals
                        .value(name, uuid, newest)
                        .filter(|v| v.is_finite() && *v >= 0.0)
                    {
                        out.push((
                            SeriesKey::new(uuid, Measure::Signal(name.clone())),
                            newest,
                            v,
                        ));
                    }
                }
            }
        }
        self.history_t = newest;
        out
    }

    /// Events recorded since the last call (for the event stream and metrics).
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.recent)
    }

    /// Sets or clears a domain's manual activation in the store (which
    /// records the end of one it replaces) and refreshes the cached ends.
    fn put_override(&mut self, uuid: &str, o: Option<&Override>) -> Result<(), StoreError> {
        self.store.set_override(uuid, o)?;
        let ended = self.store.ended_manuals(uuid)?;
        if let Some(e) = self.domains.get_mut(uuid) {
            e.ended_manuals = ended;
        }
        Ok(())
    }

    fn uuid_of(&self, key: &str) -> Option<String> {
        self.entry(key).map(|e| e.info.uuid.clone())
    }

    /// Manual activation: `persona` beats all criteria on the domain until
    /// `until` (or a revert). Applied at once.
    pub fn activate(
        &mut self,
        key: &str,
        persona: &str,
        until: Option<Millis>,
        now: Millis,
    ) -> Result<(), ManualError> {
        self.activate_override(key, Override::new(persona, until), now)
    }

    /// A manual activation set on another host, continued here (the same
    /// id, the same end): see [`Override::id`].
    pub fn activate_override(
        &mut self,
        key: &str,
        o: Override,
        now: Millis,
    ) -> Result<(), ManualError> {
        let (persona, until) = (o.persona.as_str(), o.until);
        let uuid = self
            .uuid_of(key)
            .ok_or_else(|| ManualError::NoDomain(key.to_string()))?;
        let p = self
            .personas
            .iter()
            .find(|p| p.id == persona)
            .cloned()
            .ok_or_else(|| ManualError::NoPersona(persona.to_string()))?;
        let entry = self.domains.get_mut(&uuid).expect("found above");
        if !entry.info.state.is_active() {
            return Err(ManualError::NotRunning {
                domain: entry.info.name.clone(),
            });
        }
        if let Some(why) = p.why_not(&entry.info) {
            return Err(ManualError::NoMatch {
                persona: persona.to_string(),
                domain: entry.info.name.clone(),
                why,
            });
        }
        if let Some(why) = entry.refused.get(persona) {
            return Err(ManualError::Refused {
                persona: persona.to_string(),
                domain: entry.info.name.clone(),
                why: why.clone(),
            });
        }
        // already worn (by its criteria, or by hand with another end): no
        // transition, but the activation is recorded and shown all the same
        let already = entry.rules.worn.as_ref().is_some_and(|w| w.0 == persona);
        entry.rules.override_ = Some(o.clone());
        entry.retry_at = None;
        self.put_override(&uuid, Some(&o))
            .map_err(TickError::from)?;
        self.reconcile_domain(&uuid, now)?;
        let entry = self.domains.get(&uuid).expect("found above");
        if already && entry.rules.worn.as_ref().is_some_and(|w| w.0 == persona) {
            let name = entry.info.name.clone();
            info!(domain = %name, %persona, ?until, "manual activation of the persona already worn");
            self.record_kept(name, persona, "manual".into(), "ok", now)?;
        }
        Ok(())
    }

    /// Ends a manual activation; the criteria decide again, at once.
    pub fn revert(&mut self, key: &str, now: Millis) -> Result<(), ManualError> {
        let uuid = self
            .uuid_of(key)
            .ok_or_else(|| ManualError::NoDomain(key.to_string()))?;
        let entry = self.domains.get_mut(&uuid).expect("found above");
        let ended = entry.rules.override_.take();
        entry.retry_at = None;
        let active = entry.info.state.is_active();
        self.put_override(&uuid, None).map_err(TickError::from)?;
        if active {
            self.reconcile_domain(&uuid, now)?;
        }
        // the criteria keep the same persona on: no transition, but the end
        // of the manual activation is in the history
        let entry = self.domains.get(&uuid).expect("found above");
        let worn = entry.rules.worn.as_ref().map(|w| w.0.as_str());
        if let Some(o) = ended.filter(|o| worn == Some(o.persona.as_str())) {
            let name = entry.info.name.clone();
            let why = format!(
                "manual activation reverted; its criteria keep '{}' on",
                o.persona
            );
            self.record_kept(name, &o.persona, why, "override_ended", now)?;
        }
        Ok(())
    }

    /// Sets an external signal; one value per (name, domain).
    pub fn set_limits(&mut self, limits: crate::config::Limits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> &crate::config::Limits {
        &self.limits
    }

    /// Signals set now (each name and domain once).
    pub fn signal_count(&mut self, now: Millis) -> usize {
        self.prune_signals(now);
        self.signals.0.values().map(Vec::len).sum()
    }

    /// Whether a signal of this name and domain is set now.
    pub fn has_signal(&self, name: &str, domain: Option<&str>) -> bool {
        self.signals
            .0
            .get(name)
            .is_some_and(|v| v.iter().any(|s| s.domain.as_deref() == domain))
    }

    pub fn set_signal(&mut self, name: &str, signal: crate::rules::Signal) {
        let list = self.signals.0.entry(name.to_string()).or_default();
        list.retain(|s| s.domain != signal.domain);
        list.push(signal);
    }

    /// Removes a signal (name and domain); what was set, if anything.
    pub fn unset_signal(
        &mut self,
        name: &str,
        domain: Option<&str>,
    ) -> Option<crate::rules::Signal> {
        let list = self.signals.0.get_mut(name)?;
        let at = list.iter().position(|s| s.domain.as_deref() == domain)?;
        let s = list.remove(at);
        if list.is_empty() {
            self.signals.0.remove(name);
        }
        Some(s)
    }

    /// Removes a cluster signal the cluster ended (a host-scope one of the
    /// same name and domain stays).
    pub fn end_cluster_signal(&mut self, name: &str, domain: Option<&str>) {
        if self
            .signals
            .0
            .get(name)
            .is_some_and(|l| l.iter().any(|s| s.cluster && s.domain.as_deref() == domain))
        {
            self.unset_signal(name, domain);
        }
    }

    /// Takes back the signals pushed before a restart (from the state
    /// store), those still live; expired ones are forgotten. How many.
    pub fn restore_signals(&mut self, now: Millis) -> Result<usize, TickError> {
        let mut n = 0;
        for s in self.store.signals()? {
            if s.expires <= now {
                self.store.remove_signal(&s.name, s.domain.as_deref())?;
                continue;
            }
            self.kept_signals
                .insert((s.name.clone(), s.domain.clone()), (s.expires, false));
            self.set_signal(
                &s.name,
                crate::rules::Signal {
                    value: s.value,
                    expires: s.expires,
                    domain: s.domain,
                    cluster: false,
                },
            );
            n += 1;
        }
        Ok(n)
    }

    /// Keeps a pushed signal in the state store (until its TTL: then
    /// [`Reconciler::prune_signals`] removes the record).
    pub fn keep_signal(&mut self, s: &crate::store::StoredSignal) -> Result<(), StoreError> {
        self.store.put_signal(s)?;
        self.kept_signals
            .insert((s.name.clone(), s.domain.clone()), (s.expires, false));
        Ok(())
    }

    /// Removes a pushed signal's stored record (`signal-unset`, a resolved
    /// alert); one that cannot be removed now is tried again every tick.
    pub fn forget_kept_signal(
        &mut self,
        name: &str,
        domain: Option<&str>,
    ) -> Result<(), StoreError> {
        let key = (name.to_string(), domain.map(str::to_string));
        match self.store.remove_signal(name, domain) {
            Ok(()) => {
                self.kept_signals.remove(&key);
                Ok(())
            }
            Err(e) => {
                self.kept_signals.insert(key, (Millis::MIN, true));
                Err(e)
            }
        }
    }

    /// How many stored signal records are waiting for their TTL or to be
    /// removed.
    pub fn kept_signal_count(&self) -> usize {
        self.kept_signals.len()
    }

    /// Drops expired signals, and the stored records of expired pushed
    /// ones (a long-running daemon does not gather them until a restart).
    pub fn prune_signals(&mut self, now: Millis) {
        self.signals.0.retain(|_, v| {
            v.retain(|s| s.expires > now);
            !v.is_empty()
        });
        let due: Vec<(String, Option<String>)> = self
            .kept_signals
            .iter()
            .filter(|(_, (expires, _))| *expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            match self.store.remove_signal(&key.0, key.1.as_deref()) {
                Ok(()) => {
                    self.kept_signals.remove(&key);
                }
                Err(e) => {
                    if let Some((_, warned)) = self.kept_signals.get_mut(&key) {
                        if !*warned {
                            warn!(signal = %key.0, error = %e, "an ended signal's stored copy could not be removed: tried again every tick (a restart before that brings it back until its TTL)");
                            *warned = true;
                        }
                    }
                }
            }
        }
    }

    /// Live signals, expired ones dropped.
    pub fn live_signals(&mut self, now: Millis) -> Vec<(String, crate::rules::Signal)> {
        self.prune_signals(now);
        let mut out: Vec<(String, crate::rules::Signal)> = self
            .signals
            .0
            .iter()
            .flat_map(|(n, v)| v.iter().map(move |s| (n.clone(), s.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.domain.cmp(&b.1.domain)));
        out
    }

    /// Ticks completed since start.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Makes the next tick re-read the domain list (a lifecycle event came).
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Every known domain's state, by name.
    pub fn statuses(&self) -> Vec<DomainStatus> {
        let mut v: Vec<DomainStatus> = self.domains.values().map(|e| self.status_with(e)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// One domain's state, by name, numeric id or UUID.
    pub fn status(&self, key: &str) -> Option<DomainStatus> {
        self.entry(key).map(|e| self.status_with(e))
    }

    fn status_with(&self, e: &DomainEntry) -> DomainStatus {
        DomainStatus {
            would: self.observing_only() && e.rules.worn.is_some(),
            ..status_of(e, self.cgroup)
        }
    }

    /// One domain, by name, numeric id or UUID (as virsh resolves them).
    pub fn entry(&self, key: &str) -> Option<&DomainEntry> {
        self.domains.get(key).or_else(|| {
            self.domains
                .values()
                .find(|e| e.info.name == key || e.info.id.is_some_and(|i| i.to_string() == key))
        })
    }

    fn refresh(&mut self, now: Millis) -> Result<(), TickError> {
        let list = self.hv.list_domains()?;
        let mut seen = HashSet::new();
        let mut dropped: Vec<Event> = Vec::new();
        for info in list {
            seen.insert(info.uuid.clone());
            match self.domains.get_mut(&info.uuid) {
                Some(e) => {
                    let stopped = !info.state.is_active() && e.info.state.is_active();
                    // a new id while running: stopped and started between two looks
                    let restarted =
                        info.state.is_active() && e.info.state.is_active() && info.id != e.info.id;
                    if stopped || restarted {
                        // its live tuning is gone with its process
                        e.rules = RuleState {
                            override_: e.rules.override_.clone(),
                            ..Default::default()
                        };
                        self.store.set_worn(&info.uuid, None)?;
                        self.collector.forget(&info.uuid);
                        // a new process may have new devices (vnetN): learn again
                        e.unsupported.clear();
                        e.skipped.clear();
                        e.refused.clear();
                        e.needs_attention = None;
                        if let Some(ev) = drop_stale_originals(
                            &mut self.store,
                            &info,
                            e.worn_persist,
                            now,
                            if stopped { "stopped" } else { "restarted" },
                        )? {
                            dropped.push(ev);
                        }
                    }
                    e.candidates = candidates(&self.personas, &info);
                    self.collector
                        .set_keep_for(&info.uuid, longest_window(&e.candidates));
                    e.info = info;
                }
                None => {
                    // adopt what a previous run recorded instead of re-applying blindly
                    let mut rules = RuleState::default();
                    let mut worn_persist = false;
                    let mut quarantined = None;
                    let worn = match self.store.worn(&info.uuid) {
                        Err(StoreError::Corrupt { key, message }) => {
                            quarantined = Some(format!(
                                "its record in the state store ({key}) is damaged: {message}"
                            ));
                            None
                        }
                        other => other?,
                    };
                    if info.state.is_active() && quarantined.is_none() {
                        match worn {
                            // restarted while no daemon watched: what was worn and
                            // the originals read from its last run are stale
                            Some(w) if w.id.is_some() && w.id != info.id => {
                                self.store.set_worn(&info.uuid, None)?;
                                if let Some(ev) = drop_stale_originals(
                                    &mut self.store,
                                    &info,
                                    w.persist,
                                    now,
                                    "restarted while the daemon was not running",
                                )? {
                                    dropped.push(ev);
                                }
                                worn_persist = w.persist;
                            }
                            Some(w) => {
                                rules.worn = Some((w.persona, w.since));
                                rules.last_active = Some(now);
                                worn_persist = w.persist;
                            }
                            None => {}
                        }
                    } else if !info.state.is_active() {
                        self.store.set_worn(&info.uuid, None)?;
                    }
                    match self.store.override_(&info.uuid) {
                        Ok(o) => rules.override_ = o,
                        Err(StoreError::Corrupt { key, message }) => {
                            quarantined = Some(format!(
                                "its record in the state store ({key}) is damaged: {message}"
                            ));
                        }
                        Err(e) => return Err(e.into()),
                    }
                    let ended_manuals = self.store.ended_manuals(&info.uuid).unwrap_or_else(|e| {
                        warn!(domain = %info.name, error = %e, "the ends of its manual activations cannot be read; another host's record of one may be continued");
                        Vec::new()
                    });
                    let definition_recorded = match self.store.definition(&info.uuid) {
                        Ok(d) => !d.is_empty(),
                        Err(StoreError::Corrupt { key, message }) => {
                            quarantined = Some(format!(
                                "its record in the state store ({key}) is damaged: {message}"
                            ));
                            false
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let cands = candidates(&self.personas, &info);
                    self.collector
                        .set_keep_for(&info.uuid, longest_window(&cands));
                    self.domains.insert(
                        info.uuid.clone(),
                        DomainEntry {
                            info,
                            rules,
                            last_error: None,
                            last_decision: None,
                            candidates: cands,
                            retry_at: None,
                            backoff_ms: BACKOFF_MIN_MS,
                            last_verify: 0,
                            crossed: HashSet::new(),
                            unsupported: BTreeMap::new(),
                            skipped: vec![],
                            refused: BTreeMap::new(),
                            needs_attention: None,
                            worn_persist,
                            quarantined,
                            definition_recorded,
                            ended_manuals,
                        },
                    );
                }
            }
        }
        let gone: Vec<String> = self
            .domains
            .keys()
            .filter(|u| !seen.contains(*u))
            .cloned()
            .collect();
        for uuid in gone {
            // undefined: forget it and its baseline
            if let Some(e) = self.domains.remove(&uuid) {
                info!(domain = %e.info.name, "domain undefined: forgotten");
            }
            self.store.forget(&uuid)?;
            self.collector.forget(&uuid);
        }
        for ev in dropped {
            self.record(ev)?;
        }
        self.stale = false;
        self.last_list = now;
        Ok(())
    }

    /// Only observe because something is wrong (a damaged state file):
    /// decide, plan and record `would_apply` events, never write to libvirt
    /// or to the baselines (`None` acts again). Unhealthy while it lasts.
    pub fn set_observe(&mut self, why: Option<String>) {
        let was = self.observing_only();
        self.observe = why;
        self.acting_again(was);
    }

    /// Observe mode by choice (`--dry-run`, `dry_run = true`): as
    /// [`Reconciler::set_observe`], but healthy. Switching it off acts from
    /// the next tick on, without a restart.
    pub fn set_dry_run(&mut self, on: bool) {
        let was = self.observing_only();
        self.dry_run = on;
        self.acting_again(was);
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether no write call is made (dry run or a damaged state file).
    pub fn observing_only(&self) -> bool {
        self.observe.is_some() || self.dry_run
    }

    /// Why the daemon only observes, if it does.
    pub fn observing(&self) -> Option<&str> {
        self.observe.as_deref().or(self
            .dry_run
            .then_some("dry run: deciding and recording only, no change to any domain"))
    }

    /// After observing only, what each domain wears is what the store says
    /// was really applied, not what it would have worn: the next tick then
    /// makes the transitions it only recorded before.
    fn acting_again(&mut self, was_observing: bool) {
        if !was_observing || self.observing_only() {
            return;
        }
        for (uuid, e) in self.domains.iter_mut() {
            e.rules.worn = match self.store.worn(uuid) {
                Ok(Some(w)) if e.info.state.is_active() => Some((w.persona, w.since)),
                _ => None,
            };
            e.last_verify = 0;
        }
        info!("acting again: the next tick applies what was only observed");
    }

    /// An event about the manual activation of `persona` on a domain that
    /// wears it before and after (no transition, no change).
    fn record_kept(
        &mut self,
        domain: String,
        persona: &str,
        reason: String,
        result: &str,
        now: Millis,
    ) -> Result<(), TickError> {
        self.record(Event {
            time: now,
            domain,
            from: Some(persona.to_string()),
            to: Some(persona.to_string()),
            reason,
            result: result.into(),
            ..Default::default()
        })
    }

    /// The helpers' state, for `/healthz` (set by the daemon's loop).
    pub fn set_helpers(&mut self, helpers: Vec<crate::supervise::HelperStatus>) {
        self.helpers = helpers;
    }

    pub fn helpers(&self) -> &[crate::supervise::HelperStatus] {
        &self.helpers
    }

    /// What makes the daemon unhealthy right now: the state store failing, or
    /// observing only because of a damaged state file.
    pub fn health_problem(&self) -> Option<String> {
        self.store_failing
            .as_ref()
            .map(|e| format!("the state store is failing: {e}"))
            .or_else(|| self.observe.clone())
    }

    /// One pass of the control loop.
    #[instrument(skip(self, host), level = "debug")]
    pub fn tick(
        &mut self,
        now: Millis,
        host: Option<HostCounters>,
    ) -> Result<TickReport, TickError> {
        let r = self.tick_inner(now, host);
        match &r {
            Err(TickError::Store(e)) => self.store_failing = Some(e.to_string()),
            Ok(_) => self.store_failing = None,
            Err(_) => {}
        }
        r
    }

    fn tick_inner(
        &mut self,
        now: Millis,
        host: Option<HostCounters>,
    ) -> Result<TickReport, TickError> {
        if self.stale || now - self.last_list >= self.verify_interval_ms {
            self.refresh(now)?;
        }
        let before = self.stats_clock.as_ref().map(|c| c());
        let stats = self.hv.all_stats(self.groups)?;
        let taken = match (before, &self.stats_clock) {
            (Some(b), Some(c)) => b + (c() - b) / 2,
            _ => now,
        };
        if stats.iter().any(|s| {
            !self
                .domains
                .get(&s.uuid)
                .is_some_and(|e| e.info.state.is_active())
        }) {
            // a domain we do not know as running: learn about it now
            self.refresh(now)?;
        }
        let vcpus: HashMap<String, u32> = self
            .domains
            .iter()
            .map(|(u, e)| (u.clone(), e.info.vcpus))
            .collect();
        self.collector.ingest(taken, &stats, &vcpus, host);
        let mut report = TickReport::default();
        let active: Vec<String> = stats.iter().map(|s| s.uuid.clone()).collect();
        for uuid in active {
            if self
                .domains
                .get(&uuid)
                .is_some_and(|e| e.quarantined.is_some())
            {
                continue;
            }
            match self.reconcile_domain(&uuid, now) {
                Ok(outcome) => report.count(outcome),
                Err(TickError::Store(StoreError::Corrupt { key, message })) => {
                    self.quarantine(
                        &uuid,
                        now,
                        format!("its record in the state store ({key}) is damaged: {message}"),
                    )?;
                }
                Err(e) => return Err(e),
            }
        }
        // expired signals are dropped every tick, not only when someone lists them
        self.prune_signals(now);
        self.ticks += 1;
        Ok(report)
    }

    /// One domain, in phases: decide which persona, plan the difference,
    /// apply it (rolling back on failure), record. Says what it came to.
    fn reconcile_domain(&mut self, uuid: &str, now: Millis) -> Result<Outcome, TickError> {
        let decided = match self.decide_domain(uuid, now)? {
            Step::Next(d) => d,
            Step::Done(o) => return Ok(o),
        };
        let planned = match self.plan_domain(uuid, &decided)? {
            Step::Next(p) => p,
            Step::Done(o) => return Ok(o),
        };
        if self.observe.is_some() || self.dry_run {
            return self.would_apply(uuid, now, decided, planned);
        }
        if planned.changes.is_empty() {
            return self.already_there(uuid, now, decided, planned);
        }
        let mut applied = self.apply_domain(uuid, &decided, &planned)?;
        if let Some((bad, err)) = applied.failure.take() {
            return self.failed(uuid, now, decided, planned, applied, (bad, err));
        }
        self.record_applied(uuid, now, decided, planned, applied)
    }

    /// Decide: which persona the domain should wear now, and whether that
    /// needs any work (a transition, a verify that is due, a baseline to give
    /// back). Manual activations that ran out end here.
    fn decide_domain(&mut self, uuid: &str, now: Millis) -> Result<Step<Decided>, TickError> {
        // decide
        self.end_unfitting_override(uuid, now)?;
        let Some(entry) = self.domains.get_mut(uuid) else {
            return Ok(Step::Done(Outcome::Nothing));
        };
        let previous = entry.rules.clone();
        entry.refused = refusals(&entry.candidates, &entry.unsupported);
        for p in &entry.candidates {
            if let Some(why) = self.host_refused.get(&p.id) {
                entry.refused.insert(p.id.clone(), why.clone());
            }
        }
        let inputs = Inputs {
            domain: &entry.info,
            samples: self.collector.window(uuid),
            host: self.collector.host_window(),
            signals: &self.signals,
            now,
            refused: &entry.refused,
            never_measured: self.collector.never_measured(uuid),
            forecasts: &self.forecasts,
            forecast_observe: self.forecast_observe,
        };
        let decision = decide(&entry.candidates, &inputs, &mut entry.rules);
        // forecast observe mode: said once when a prediction would start a persona
        let would: Vec<String> = decision
            .candidates
            .iter()
            .filter(|c| c.would_since == Some(now))
            .map(|c| c.persona.id.clone())
            .collect();
        if !would.is_empty() {
            let name = entry.info.name.clone();
            let from = entry.rules.worn.as_ref().map(|w| w.0.clone());
            for id in would {
                info!(domain = %name, persona = %id, "forecast would have activated this persona (forecast_mode = observe: nothing applied)");
                self.record(Event {
                    time: now,
                    domain: name.clone(),
                    from: from.clone(),
                    to: Some(id),
                    reason: "forecast (observe mode)".into(),
                    result: "would_apply".into(),
                    ..Default::default()
                })?;
            }
        }
        let Some(entry) = self.domains.get_mut(uuid) else {
            return Ok(Step::Done(Outcome::Nothing));
        };
        let from = previous.worn.as_ref().map(|w| w.0.clone());
        let to = decision.persona.clone();
        let changed = from != to;
        let persona = to
            .as_ref()
            .and_then(|id| self.personas.iter().find(|p| p.id == *id).cloned());
        let verify_due = to.is_some() && now - entry.last_verify >= self.verify_interval_ms;
        let retry_blocked = entry.retry_at.is_some_and(|t| now < t);
        if changed && retry_blocked {
            entry.rules = previous;
            entry.last_decision = Some(decision);
            return Ok(Step::Done(Outcome::Backoff));
        }
        // a manual activation whose time ran out: gone from the store too, and
        // said in the history even where the criteria keep the same persona on
        if let Some(o) = previous
            .override_
            .as_ref()
            .filter(|_| entry.rules.override_.is_none())
        {
            let name = entry.info.name.clone();
            let kept = !changed && to.as_deref() == Some(o.persona.as_str());
            self.put_override(uuid, None)?;
            info!(domain = %name, persona = %o.persona, kept, "manual activation expired");
            if kept {
                let why = format!(
                    "manual activation expired; its criteria keep '{}' on",
                    o.persona
                );
                self.record_kept(name, &o.persona, why, "override_ended", now)?;
            }
        }
        let baseline = self.baseline_of(uuid, now)?;
        let Some(entry) = self.domains.get_mut(uuid) else {
            return Ok(Step::Done(Outcome::Nothing));
        };
        let needs_work = changed
            || verify_due
            || (to.is_none() && (baseline != Tuning::default() || entry.definition_recorded));
        if !needs_work {
            entry.last_decision = Some(decision);
            self.thresholds(uuid, persona.as_deref(), now)?;
            return Ok(Step::Done(Outcome::Nothing));
        }
        entry.last_verify = now;
        Ok(Step::Next(Decided {
            decision,
            previous,
            from,
            to,
            changed,
            persona,
            baseline,
        }))
    }

    /// Calls `f` after every libvirt call a transition, a rollback or a
    /// restore completes.
    pub fn on_progress(&mut self, f: ProgressHook) {
        self.progress = Some(f);
    }

    fn progressed(&self) {
        if let Some(f) = &self.progress {
            f();
        }
    }

    /// Plan: the baseline with the persona's values on top, as the fewest
    /// changes from what the domain has now, less what this host cannot apply
    /// or could not put back.
    fn plan_domain(&mut self, uuid: &str, d: &Decided) -> Result<Step<Planned>, TickError> {
        let Some(entry) = self.domains.get(uuid) else {
            return Ok(Step::Done(Outcome::Nothing));
        };
        let name = entry.info.name.clone();
        let current = self.hv.tuning(&name, ReadScope::Current);
        self.progressed();
        let current = match current {
            Ok(t) => t,
            Err(HypervisorError::NoDomain(_)) => {
                self.stale = true;
                return Ok(Step::Done(Outcome::Nothing));
            }
            Err(e) => return Err(e.into()),
        };
        let Some(entry) = self.domains.get(uuid) else {
            return Ok(Step::Done(Outcome::Nothing));
        };
        let baseline = &d.baseline;
        let mut desired = baseline.clone();
        if let Some(p) = &d.persona {
            for c in p.tuning.resolve(&entry.info).changes() {
                desired.set(&c);
            }
        }
        let (changes, known): (Vec<Change>, Vec<Change>) = plan(&current, &desired)
            .into_iter()
            .partition(|c| !entry.unsupported.contains_key(&c.knob));
        let mut skipped: Vec<Skipped> = known
            .iter()
            .map(|c| Skipped {
                knob: c.knob.to_string(),
                reason: entry.unsupported[&c.knob].clone(),
            })
            .collect();
        // a knob whose current value this host does not report has no original
        // to go back to: changing it would leave it behind on revert
        let (changes, unreadable): (Vec<Change>, Vec<Change>) =
            changes.into_iter().partition(|c| {
                baseline.get(&c.knob).is_some() || current.get_or_absent(&c.knob).is_some()
            });
        skipped.extend(unreadable.iter().map(|c| Skipped {
            knob: c.knob.to_string(),
            reason: if c.knob.row().is_some_and(|r| r.iothreads) {
                "the domain has no iothreads (<iothreads> in its definition): nothing to cap".into()
            } else {
                "libvirt reports no current value for it on this host: nothing to go back to, so not changed".into()
            },
        }));
        let reason = match (d.changed, &d.decision.reason) {
            (false, _) => "drift",
            (true, Reason::Manual) => "manual",
            (true, Reason::Always) => "always",
            (true, Reason::NoMatch) => "baseline",
            (true, _) => "criteria",
        }
        .to_string();
        Ok(Step::Next(Planned {
            name,
            current,
            changes,
            skipped,
            reason,
        }))
    }

    /// Observing only: decided and planned, recorded as what would be done,
    /// nothing written to libvirt or to the baselines.
    fn would_apply(
        &mut self,
        uuid: &str,
        now: Millis,
        d: Decided,
        p: Planned,
    ) -> Result<Outcome, TickError> {
        if let Some(e) = self.domains.get_mut(uuid) {
            e.last_decision = Some(d.decision);
        }
        if d.changed {
            info!(domain = %p.name, from = ?d.from, to = ?d.to, reason = %p.reason, changes = p.changes.len(), "would apply (observing only)");
            self.record(Event {
                changes: p.changes,
                skipped: p.skipped,
                ..transition_event(now, &p.name, &d.from, &d.to, p.reason, "would_apply")
            })?;
        }
        Ok(Outcome::WouldApply {
            transition: d.changed,
        })
    }

    /// Already as it should be: the transition (if any) is recorded and the
    /// baseline records of knobs back at their original values are dropped.
    fn already_there(
        &mut self,
        uuid: &str,
        now: Millis,
        d: Decided,
        p: Planned,
    ) -> Result<Outcome, TickError> {
        if let Some(e) = self.domains.get_mut(uuid) {
            e.skipped = p.skipped.clone();
        }
        let persona = d.persona.as_deref();
        self.finish(uuid, &d.from, &d.to, now, &p.reason, &p.changes, persona)?;
        self.settle_definition(uuid, persona, now)?;
        if d.changed {
            self.record(Event {
                skipped: p.skipped,
                ..transition_event(now, &p.name, &d.from, &d.to, p.reason.clone(), "ok")
            })?;
        }
        if let Some(e) = self.domains.get_mut(uuid) {
            e.last_decision = Some(d.decision);
        }
        self.thresholds(uuid, persona, now)?;
        Ok(Outcome::AlreadyThere {
            transition: d.changed,
        })
    }

    /// Apply: the original of every knob touched (and, for a persona that
    /// persists, what the definition said) is durable before the first
    /// change; then the changes, all or nothing.
    fn apply_domain(&mut self, uuid: &str, d: &Decided, p: &Planned) -> Result<Applied, TickError> {
        let (name, current, baseline, persona) = (&p.name, &p.current, &d.baseline, &d.persona);
        let changes = &p.changes;
        let mut skipped = p.skipped.clone();
        let originals: Vec<Change> = changes
            .iter()
            .filter(|c| baseline.get(&c.knob).is_none())
            .filter_map(|c| {
                // "absent" is an original too: a throttle that did not exist is
                // restored as none, not left behind
                current.get_or_absent(&c.knob).map(|value| Change {
                    knob: c.knob.clone(),
                    value,
                })
            })
            .collect();
        self.store.record_baseline(uuid, &originals)?;
        // a persona that persists writes the definition too: what the
        // definition said first is durable before it does, so that leaving the
        // persona brings the definition back exactly (see settle_definition)
        let persist = persona.as_ref().is_some_and(|p| p.persist);
        let mut fresh_definition: Vec<DefinitionOriginal> = Vec::new();
        if persist && self.domains.get(uuid).is_some_and(|e| e.info.persistent) {
            let recorded = self.store.definition(uuid)?;
            let wanted: Vec<&Change> = changes
                .iter()
                .filter(|c| !recorded.iter().any(|r| r.knob == c.knob))
                .collect();
            if !wanted.is_empty() {
                let defined = self.hv.tuning(name, ReadScope::Config);
                self.progressed();
                let defined = defined?;
                fresh_definition = wanted
                    .iter()
                    .map(|c| DefinitionOriginal {
                        knob: c.knob.clone(),
                        value: defined.get(&c.knob),
                    })
                    .collect();
                self.store.record_definition(uuid, &fresh_definition)?;
                if let Some(e) = self.domains.get_mut(uuid) {
                    e.definition_recorded = true;
                }
            }
        }
        // state from before definition originals were recorded: the persisted
        // knobs go back in the definition the old way, to the live originals
        let legacy = !persist
            && self
                .domains
                .get(uuid)
                .is_some_and(|e| e.worn_persist && !e.definition_recorded);
        let scope = if persist || legacy {
            ApplyScope::LiveAndConfig
        } else {
            ApplyScope::Live
        };
        let required = |k: &Knob| {
            persona
                .as_ref()
                .is_some_and(|p| p.tuning.required.iter().any(|r| r == k.key()))
        };
        let started = std::time::Instant::now();
        let mut done: Vec<Change> = Vec::new();
        let mut failure: Option<(Change, HypervisorError)> = None;
        for c in changes {
            let applied = self.hv.apply(name, c, scope);
            self.progressed();
            match applied {
                Ok(()) => {
                    done.push(c.clone());
                    // tests stop the daemon here, between two knob changes
                    fail::fail_point!("after-knob-change");
                }
                Err(e) => {
                    if let HypervisorError::Unsupported { message, .. } = &e {
                        // learned for this connection: not tried again every tick
                        warn!(domain = %name, knob = %c.knob, %message, "knob unsupported on this host: skipped");
                        if let Some(entry) = self.domains.get_mut(uuid) {
                            entry.unsupported.insert(c.knob.clone(), message.clone());
                        }
                        if !required(&c.knob) {
                            skipped.push(Skipped {
                                knob: c.knob.to_string(),
                                reason: message.clone(),
                            });
                            continue;
                        }
                    }
                    failure = Some((c.clone(), e));
                    break;
                }
            }
        }
        Ok(Applied {
            done,
            failure,
            originals,
            fresh_definition,
            scope,
            skipped,
            micros: started.elapsed().as_micros() as u64,
        })
    }

    /// A change failed: what was changed goes back, the definition to what it
    /// said, the transition is retried after a backoff; a rollback that fails
    /// keeps its original for a later tick.
    fn failed(
        &mut self,
        uuid: &str,
        now: Millis,
        d: Decided,
        p: Planned,
        applied: Applied,
        (bad, err): (Change, HypervisorError),
    ) -> Result<Outcome, TickError> {
        let Decided {
            decision,
            previous,
            from,
            to,
            ..
        } = d;
        let Planned {
            name,
            current,
            changes: planned,
            reason,
            ..
        } = p;
        let Applied {
            done: changes,
            fresh_definition,
            originals,
            scope,
            skipped,
            ..
        } = applied;
        let mut stuck = self.roll_back(&name, &current, &changes, scope);
        // the definition goes back to what it said, not to the live values
        if !fresh_definition.is_empty() {
            let knobs: Vec<Knob> = fresh_definition.iter().map(|o| o.knob.clone()).collect();
            match self.hv.restore_definition(&name, &fresh_definition) {
                Ok(()) => self.store.clear_definition(uuid, &knobs)?,
                Err(e) => {
                    warn!(domain = %name, error = %e, "restoring the definition after a failed transition failed");
                    stuck.extend(knobs.into_iter().map(|k| (k, e.to_string())));
                }
            }
        }
        let message = format!("{}: {err}", bad.knob);
        let entry = self.domains.get_mut(uuid).expect("entry exists");
        entry.rules = previous;
        entry.last_error = Some(message.clone());
        entry.needs_attention = attention(&stuck);
        if !matches!(err, HypervisorError::Unsupported { .. }) {
            entry.retry_at = Some(now + entry.backoff_ms);
            entry.backoff_ms = (entry.backoff_ms * 2).min(BACKOFF_MAX_MS);
        }
        // (a required knob that is unsupported refuses the persona from the next tick on)
        entry.last_decision = Some(decision);
        // a transition that never happened leaves no baseline of its own
        // behind, except for knobs whose rollback failed: they are still
        // changed, and their originals are what a later tick restores
        let fresh: Vec<Knob> = originals
            .iter()
            .map(|c| c.knob.clone())
            .filter(|k| !stuck.iter().any(|(s, _)| s == k))
            .collect();
        self.store.clear_baseline(uuid, &fresh)?;
        for (knob, e) in &stuck {
            let why = format!("rollback of {knob} failed; its original is kept and restored later");
            self.record(Event {
                error: Some(e.clone()),
                ..transition_event(now, &name, &from, &to, why, "rollback_failed")
            })?;
        }
        warn!(domain = %name, from = ?from, to = ?to, knob = %bad.knob, error = %err, "transition failed, rolled back");
        self.record(Event {
            changes: planned,
            error: Some(message),
            skipped,
            ..transition_event(now, &name, &from, &to, reason, "failed")
        })?;
        Ok(Outcome::Failed)
    }

    /// Record: the persona worn, the baseline settled, the event.
    fn record_applied(
        &mut self,
        uuid: &str,
        now: Millis,
        d: Decided,
        p: Planned,
        applied: Applied,
    ) -> Result<Outcome, TickError> {
        let Decided {
            decision,
            from,
            to,
            changed,
            persona,
            ..
        } = d;
        let Planned { name, reason, .. } = p;
        let Applied {
            done: changes,
            skipped,
            micros,
            ..
        } = applied;
        let n = changes.len();
        if let Some(e) = self.domains.get_mut(uuid) {
            e.last_decision = Some(decision);
            e.skipped = skipped.clone();
        }
        self.finish(uuid, &from, &to, now, &reason, &changes, persona.as_deref())?;
        self.settle_definition(uuid, persona.as_deref(), now)?;
        if !changed && changes.is_empty() {
            // a verify that only learned a knob is unsupported: nothing drifted
            self.thresholds(uuid, persona.as_deref(), now)?;
            return Ok(Outcome::Applied {
                transition: false,
                changes: 0,
                micros,
            });
        }
        let result = if changed { "ok" } else { "drift" };
        info!(domain = %name, from = ?from, to = ?to, reason = %reason, result, changes = changes.len(), skipped = skipped.len(), "transition");
        self.record(Event {
            changes,
            skipped,
            ..transition_event(now, &name, &from, &to, reason.clone(), result)
        })?;
        self.thresholds(uuid, persona.as_deref(), now)?;
        Ok(Outcome::Applied {
            transition: changed,
            changes: n,
            micros,
        })
    }

    /// The domain's recorded originals, less those of interfaces it no longer
    /// has (detached, renamed): they cannot be written back, so they are
    /// dropped once, with an event, rather than failing every tick.
    fn baseline_of(&mut self, uuid: &str, now: Millis) -> Result<Tuning, TickError> {
        let baseline = self.store.baseline(uuid)?;
        let Some(entry) = self.domains.get(uuid) else {
            return Ok(baseline);
        };
        // originals of devices the domain no longer has (an interface, a
        // disk, an iothread detached or renamed)
        let knobs: Vec<Knob> = baseline
            .changes()
            .into_iter()
            .map(|c| c.knob)
            .filter(|k| !k.device_in(&entry.info))
            .collect();
        if knobs.is_empty() {
            return Ok(baseline);
        }
        let name = entry.info.name.clone();
        let mut gone: Vec<String> = knobs
            .iter()
            .map(|k| match k {
                Knob::Interface { target, .. } => format!("interface {target}"),
                Knob::Disk { target } => format!("disk {target}"),
                k => match (k.device_row(), k.device()) {
                    (Some(row), Some(d)) => format!("{} {d}", row.index.noun()),
                    _ => k.to_string(),
                },
            })
            .collect();
        gone.dedup();
        self.store.clear_baseline(uuid, &knobs)?;
        warn!(domain = %name, devices = ?gone, "originals of devices the domain no longer has dropped");
        self.record(Event {
            time: now,
            domain: name,
            reason: format!(
                "the domain no longer has {}: their recorded originals are dropped",
                gone.join(", ")
            ),
            result: "baseline_dropped".into(),
            ..Default::default()
        })?;
        Ok(self.store.baseline(uuid)?)
    }

    /// A manual activation whose persona no longer fits the domain (its tags
    /// or name changed, or the persona was removed or now refused here) ends,
    /// with an event, instead of lingering unseen.
    fn end_unfitting_override(&mut self, uuid: &str, now: Millis) -> Result<(), TickError> {
        let Some(entry) = self.domains.get_mut(uuid) else {
            return Ok(());
        };
        let Some(o) = entry.rules.override_.clone() else {
            return Ok(());
        };
        let why = match entry.candidates.iter().find(|p| p.id == o.persona) {
            Some(_) => match entry.refused.get(&o.persona) {
                Some(why) => why.clone(),
                None => return Ok(()),
            },
            None => match self.personas.iter().find(|p| p.id == o.persona) {
                Some(p) => p
                    .why_not(&entry.info)
                    .unwrap_or_else(|| "it no longer matches".into()),
                None => "the persona was removed".into(),
            },
        };
        entry.rules.override_ = None;
        let name = entry.info.name.clone();
        let worn = entry.rules.worn.as_ref().map(|w| w.0.clone());
        self.put_override(uuid, None)?;
        info!(domain = %name, persona = %o.persona, %why, "manual activation ended");
        self.record(Event {
            time: now,
            domain: name,
            from: worn.clone(),
            to: worn,
            reason: format!("manual activation of '{}' ended: {why}", o.persona),
            result: "override_ended".into(),
            ..Default::default()
        })
    }

    /// Brings the persistent definition back to its recorded originals for
    /// every knob the worn persona does not persist (none, when it does not
    /// persist or nothing is worn), and drops those records. A failure keeps
    /// them, marks the domain as needing attention and is retried next tick.
    fn settle_definition(
        &mut self,
        uuid: &str,
        persona: Option<&Persona>,
        now: Millis,
    ) -> Result<(), TickError> {
        let Some(entry) = self.domains.get(uuid) else {
            return Ok(());
        };
        if !entry.definition_recorded {
            return Ok(());
        }
        let info = entry.info.clone();
        let kept = persona
            .filter(|p| p.persist)
            .map(|p| knobs_of(p, &info))
            .unwrap_or_default();
        let recorded = self.store.definition(uuid)?;
        let back: Vec<DefinitionOriginal> = recorded
            .iter()
            .filter(|o| !kept.contains(&o.knob))
            .cloned()
            .collect();
        if back.is_empty() {
            return Ok(());
        }
        let knobs: Vec<Knob> = back.iter().map(|o| o.knob.clone()).collect();
        match self.hv.restore_definition(&info.name, &back) {
            Ok(()) => {
                self.store.clear_definition(uuid, &knobs)?;
                let left = recorded.len() - back.len();
                if let Some(e) = self.domains.get_mut(uuid) {
                    e.definition_recorded = left > 0;
                }
                let what: Vec<String> = back.iter().map(|o| o.to_string()).collect();
                debug!(domain = %info.name, restored = ?what, "persistent definition restored");
                Ok(())
            }
            Err(e) => {
                let names: Vec<String> = knobs.iter().map(Knob::to_string).collect();
                warn!(domain = %info.name, error = %e, "restoring the persistent definition failed; retried next tick");
                let first = self
                    .domains
                    .get(uuid)
                    .is_some_and(|d| d.needs_attention.is_none());
                if let Some(d) = self.domains.get_mut(uuid) {
                    d.needs_attention = Some(format!(
                        "the persistent definition is not back at its original for {}: {e}; retried every tick",
                        names.join(", ")
                    ));
                    d.last_error = Some(e.to_string());
                }
                if first {
                    let worn = persona.map(|p| p.id.clone());
                    self.record(Event {
                        time: now,
                        domain: info.name.clone(),
                        from: worn.clone(),
                        to: worn,
                        reason: format!(
                            "restoring the persistent definition of {} failed; its originals are kept and restored later",
                            names.join(", ")
                        ),
                        result: "rollback_failed".into(),
                        error: Some(e.to_string()),
                        ..Default::default()
                    })?;
                }
                Ok(())
            }
        }
    }

    /// Undoes `done`, newest first, to the values read before the transition.
    /// Returns the knobs whose undo failed, with the error.
    fn roll_back(
        &self,
        name: &str,
        before: &Tuning,
        done: &[Change],
        scope: ApplyScope,
    ) -> Vec<(Knob, String)> {
        let mut stuck = Vec::new();
        for c in done.iter().rev() {
            if let Some(value) = before.get_or_absent(&c.knob) {
                let undo = Change {
                    knob: c.knob.clone(),
                    value,
                };
                let undone = self.hv.apply(name, &undo, scope);
                self.progressed();
                if let Err(e) = undone {
                    warn!(domain = %name, knob = %c.knob, error = %e, "rollback of a change failed");
                    stuck.push((c.knob.clone(), e.to_string()));
                }
            }
        }
        stuck
    }

    /// Leaves one domain alone because its stored record is damaged: its
    /// originals cannot be trusted, so nothing is changed or restored on it.
    fn quarantine(&mut self, uuid: &str, now: Millis, why: String) -> Result<(), TickError> {
        let Some(e) = self.domains.get_mut(uuid) else {
            return Ok(());
        };
        if e.quarantined.is_some() {
            return Ok(());
        }
        let name = e.info.name.clone();
        tracing::error!(domain = %name, %why, "domain quarantined: left alone until its record is repaired");
        e.quarantined = Some(why.clone());
        self.record(Event {
            time: now,
            domain: name,
            reason: format!("quarantined: {why}; the domain is left as it is"),
            result: "quarantined".into(),
            ..Default::default()
        })
    }

    /// Forgets which knobs this host could not apply, so the next tick tries
    /// them again (after a reconnect, or a reload once the admin changed the host).
    pub fn relearn(&mut self) {
        for e in self.domains.values_mut() {
            if !e.unsupported.is_empty() {
                e.unsupported.clear();
                e.refused.clear();
                e.last_verify = 0;
            }
        }
    }

    /// Records a completed transition: worn persona, and the baseline records of
    /// knobs now back at their original values.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        uuid: &str,
        from: &Option<String>,
        to: &Option<String>,
        now: Millis,
        reason: &str,
        _changes: &[Change],
        persona: Option<&Persona>,
    ) -> Result<(), TickError> {
        let entry = self.domains.get_mut(uuid).expect("entry exists");
        entry.last_error = None;
        entry.needs_attention = None;
        entry.retry_at = None;
        entry.backoff_ms = BACKOFF_MIN_MS;
        if from != to {
            entry.crossed.clear();
            entry.worn_persist = persona.is_some_and(|p| p.persist);
            let worn = to.as_ref().map(|p| Worn {
                persona: p.clone(),
                since: entry.rules.worn.as_ref().map(|w| w.1).unwrap_or(now),
                persist: entry.worn_persist,
                id: entry.info.id,
            });
            self.store.set_worn(uuid, worn.as_ref())?;
            debug!(domain = %entry.info.name, reason, "worn persona recorded");
        }
        let info = entry.info.clone();
        let baseline = self.store.baseline(uuid)?;
        let kept = persona.map(|p| knobs_of(p, &info)).unwrap_or_default();
        let restored: Vec<Knob> = baseline
            .changes()
            .into_iter()
            .map(|c| c.knob)
            .filter(|k| !kept.contains(k))
            .collect();
        if !restored.is_empty() {
            self.store.clear_baseline(uuid, &restored)?;
        }
        Ok(())
    }

    /// Threshold crossings of the worn persona: one event per crossing, one when it clears.
    fn thresholds(
        &mut self,
        uuid: &str,
        persona: Option<&Persona>,
        now: Millis,
    ) -> Result<(), TickError> {
        let Some(p) = persona else { return Ok(()) };
        if p.thresholds.is_empty() {
            return Ok(());
        }
        let latest = |m: Metric| {
            let w = if m.is_host() {
                Some(self.collector.host_window())
            } else {
                self.collector.window(uuid)
            };
            w.and_then(|w| w.back()).and_then(|s| s.values.get(m))
        };
        let values: Vec<(Metric, f64, Option<f64>)> = p
            .thresholds
            .iter()
            .map(|(m, t)| (*m, *t, latest(*m)))
            .collect();
        let Some(entry) = self.domains.get_mut(uuid) else {
            return Ok(());
        };
        let name = entry.info.name.clone();
        let mut events = Vec::new();
        for (m, threshold, value) in values {
            let Some(v) = value else { continue };
            let over = v > threshold;
            let was = entry.crossed.contains(&m);
            if over && !was {
                entry.crossed.insert(m);
                warn!(domain = %name, metric = %m, value = v, threshold, persona = %p.id, "threshold crossed");
                events.push(("threshold", format!("{m} = {v:.1} > {threshold}")));
            } else if !over && was {
                entry.crossed.remove(&m);
                info!(domain = %name, metric = %m, value = v, threshold, "threshold cleared");
                events.push(("threshold_cleared", format!("{m} = {v:.1} <= {threshold}")));
            }
        }
        for (result, reason) in events {
            self.record(Event {
                time: now,
                domain: name.clone(),
                from: Some(p.id.clone()),
                to: Some(p.id.clone()),
                reason,
                result: result.into(),
                ..Default::default()
            })?;
        }
        Ok(())
    }

    /// Restores every domain's baseline (for --revert-on-exit): LIVE, and the
    /// persistent definition too where the worn persona persisted. Goes on past
    /// a domain that fails; returns how many were restored and every failure.
    pub fn revert_all(&mut self, now: Millis) -> Result<(usize, Vec<String>), TickError> {
        if self.observing_only() {
            return Ok((0, vec![]));
        }
        let mut restored = 0;
        let mut failures = Vec::new();
        let uuids: Vec<String> = self
            .domains
            .iter()
            .filter(|(_, e)| e.info.state.is_active())
            .map(|(u, _)| u.clone())
            .collect();
        for uuid in uuids {
            let baseline = self.store.baseline(&uuid)?;
            let definition = self.store.definition(&uuid)?;
            if baseline == Tuning::default() && definition.is_empty() {
                continue;
            }
            let e = &self.domains[&uuid];
            let name = e.info.name.clone();
            let from = e.rules.worn.as_ref().map(|w| w.0.clone());
            // the definition goes back to its own originals; state from before
            // they were recorded takes the live originals, as it used to
            let scope = if e.worn_persist && definition.is_empty() {
                ApplyScope::LiveAndConfig
            } else {
                ApplyScope::Live
            };
            let mut error = None;
            let mut fail = |what: String, e: HypervisorError| {
                let msg = format!("{what}: {e}");
                error = Some(match error.take() {
                    Some(prev) => format!("{prev}; {msg}"),
                    None => msg,
                });
            };
            let mut changes = Vec::new();
            let current = self.hv.tuning(&name, ReadScope::Current);
            self.progressed();
            match current {
                Err(e) => fail("reading its tuning".into(), e),
                Ok(current) => {
                    for c in plan(&current, &baseline) {
                        let applied = self.hv.apply(&name, &c, scope);
                        self.progressed();
                        match applied {
                            Ok(()) => changes.push(c),
                            // the others are still worth restoring
                            Err(e) => fail(c.knob.to_string(), e),
                        }
                    }
                }
            }
            if !definition.is_empty() {
                match self.hv.restore_definition(&name, &definition) {
                    Ok(()) => self.store.set_definition(&uuid, &[])?,
                    Err(e) => fail("persistent definition".into(), e),
                }
            }
            let result = if let Some(err) = &error {
                // originals kept: a later start restores what this one could not
                warn!(domain = %name, error = %err, "restoring the baseline on exit failed");
                failures.push(format!("{name}: {err}"));
                "failed"
            } else {
                let knobs: Vec<Knob> = baseline.changes().into_iter().map(|c| c.knob).collect();
                self.store.clear_baseline(&uuid, &knobs)?;
                self.store.set_worn(&uuid, None)?;
                restored += 1;
                "ok"
            };
            self.record(Event {
                time: now,
                domain: name,
                from,
                to: None,
                reason: "daemon stopping (--revert-on-exit)".into(),
                result: result.into(),
                changes,
                error,
                ..Default::default()
            })?;
        }
        Ok((restored, failures))
    }
}
