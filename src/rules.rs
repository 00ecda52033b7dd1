//! Which persona a domain should wear now (SPEC §7) — pure.
//!
//! Candidates are the personas whose `[match]` fits, in priority order; the
//! first whose activation holds wins. A persona already worn keeps holding
//! while its `hold` has not run out, or until its conditions have been false
//! for `cooldown`, so a domain never flaps. A manual activation beats all
//! criteria until it expires. A metric with no samples yet (a restarted daemon
//! or domain) is unknown, not false: it never activates a persona and never
//! lets a worn one go. Every decision comes with its explanation,
//! condition by condition. `now` is a parameter; nothing here reads a clock.
//!
//! Cost: this runs for every domain every tick, so the hot path allocates
//! little: matching is cached by the caller ([`candidates`]), conditions are
//! explained by index and rendered only when someone asks ([`describe`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use crate::collector::Sample;
use crate::forecast::{FitState, Forecasts, MIN_HISTORY_MS};
use crate::hypervisor::DomainInfo;
use crate::model::persona::{
    Activation, Agg, Comparison, Condition, ForecastMode, Measure, Metric, Mode, Persona, Source,
    Window,
};
use crate::time::Millis;

/// An external signal (SPEC §5).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    pub value: f64,
    pub expires: Millis,
    /// The domain's UUID (`None`: host-wide): a signal follows the domain
    /// through renames and migrations, and never reaches a namesake on
    /// another host.
    pub domain: Option<String>,
    /// Gossiped to every host (SPEC §5, `scope = "cluster"`).
    pub cluster: bool,
}

/// Signals by name; a domain-specific one beats a host-wide one.
#[derive(Debug, Clone, Default)]
pub struct Signals(pub HashMap<String, Vec<Signal>>);

impl Signals {
    /// The live value of a signal for a domain (by UUID).
    pub fn value(&self, name: &str, domain: &str, now: Millis) -> Option<f64> {
        let list = self.0.get(name)?;
        let live = |s: &&Signal| s.expires > now;
        list.iter()
            .filter(live)
            .find(|s| s.domain.as_deref() == Some(domain))
            .or_else(|| list.iter().filter(live).find(|s| s.domain.is_none()))
            .map(|s| s.value)
    }
}

/// A manual activation (API/CLI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Override {
    /// Required in a stored record (one without it is damaged, not a default).
    pub persona: String,
    /// `None`: until reverted.
    pub until: Option<Millis>,
    /// Which activation this is, cluster-wide: random when an admin sets
    /// it, kept when a host the domain moves to continues it, so that its
    /// end — recorded on every host that took it and published — keeps it
    /// from coming back (0: a record of a release before this field).
    #[serde(default)]
    pub id: u64,
}

impl Override {
    /// A new activation, with a fresh id.
    pub fn new(persona: &str, until: Option<Millis>) -> Override {
        Override {
            persona: persona.to_string(),
            until,
            // 53 bits: exact in every JSON reader (jq, JavaScript)
            id: (rand::random::<u64>() >> 11).max(1),
        }
    }
}

/// What the rules remember about one domain between ticks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleState {
    /// The persona worn and since when.
    pub worn: Option<(String, Millis)>,
    /// When the worn persona's own conditions last held.
    pub last_active: Option<Millis>,
    /// Per persona, per condition with `for`: since when it has held without a break.
    pub true_since: HashMap<String, Vec<Option<Millis>>>,
    pub override_: Option<Override>,
    /// Per persona in forecast observe mode: since when its forecast would
    /// have activated it.
    pub would_since: HashMap<String, Millis>,
}

/// Why the domain wears what it wears.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Manual,
    Criteria,
    Always,
    Hold,
    Cooldown,
    /// Worn, and its conditions cannot be judged yet: a metric has no samples
    /// (after a daemon restart or a domain restart). Missing data is not "false".
    AwaitingSamples,
    NoMatch,
}

/// Why a condition has no value or is not (yet) true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Note {
    NoSamplesYet,
    NoSamplesInWindow,
    SignalAbsent,
    /// Under two days of history: `have_ms` recorded; enough at `ready_at`
    /// if recording goes on.
    TooLittleHistory {
        have_ms: Millis,
        ready_at: Millis,
    },
    /// The forecast worker has not reported on this series yet.
    ForecastPending,
    /// The last fit is too old to forecast from.
    ForecastStale,
    /// The model did not fit (the forecast API says why).
    ForecastFailed,
    /// The forecast crosses the threshold at `at` (within `horizon`); the
    /// condition holds from `acts_from` (`lead` before).
    Predicted {
        at: Millis,
        acts_from: Millis,
    },
    /// No crossing within `horizon`; the forecast's day ahead has one at
    /// `at`: the condition will hold from `acts_from`, unless the forecast
    /// changes.
    NextCrossing {
        at: Millis,
        acts_from: Millis,
    },
    /// No crossing anywhere in the forecast's day ahead.
    NoCrossingAhead {
        until: Millis,
    },
    /// This metric cannot have samples for this domain (or host): false, not unknown.
    NotMeasured(&'static str),
    /// True, but not yet for the condition's `for` duration.
    NotLongEnough {
        held_ms: Millis,
    },
}

impl Note {
    pub fn text(&self) -> String {
        match self {
            Note::NoSamplesYet => "no samples yet".into(),
            Note::NoSamplesInWindow => "no samples in the window yet".into(),
            Note::SignalAbsent => "signal absent or expired".into(),
            Note::TooLittleHistory { have_ms, ready_at } => format!(
                "too little history for a forecast: {} recorded, {} needed ({} more); enough at {} if recording goes on",
                days(*have_ms),
                days(MIN_HISTORY_MS),
                days(MIN_HISTORY_MS - have_ms),
                rfc3339(*ready_at)
            ),
            Note::ForecastPending => "the forecast is being fitted".into(),
            Note::ForecastStale => {
                "the forecast is out of date (no refit for 3 h): not used".into()
            }
            Note::ForecastFailed => {
                "the model did not fit this history (see virt-persona forecast)".into()
            }
            Note::Predicted { at, acts_from } => format!(
                "forecast to cross at {}; holds from {}",
                rfc3339(*at),
                rfc3339(*acts_from)
            ),
            Note::NextCrossing { at, acts_from } => format!(
                "next forecast crossing at {}: holds from {}",
                rfc3339(*at),
                rfc3339(*acts_from)
            ),
            Note::NoCrossingAhead { until } => {
                format!("no crossing forecast until {}", rfc3339(*until))
            }
            Note::NotMeasured(why) => format!("never measured here: {why}"),
            Note::NotLongEnough { held_ms } => {
                format!("true for {held_ms} ms, not yet long enough")
            }
        }
    }
}

use crate::time::rfc3339;

/// A span for people, in days to one decimal or in hours.
fn days(ms: Millis) -> String {
    let ms = ms.max(0);
    if ms >= 86_400_000 {
        format!("{:.1} days", ms as f64 / 86_400_000.0)
    } else {
        format!("{:.1} h", ms as f64 / 3_600_000.0)
    }
}

/// One condition, evaluated. `condition` is its index in the persona's
/// `[[activation.when]]`; [`describe`] renders it for people.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionResult {
    pub condition: usize,
    pub value: Option<f64>,
    pub threshold: f64,
    pub result: bool,
    pub note: Option<Note>,
}

/// One candidate persona, evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateResult {
    pub persona: Arc<Persona>,
    pub schedule_ok: Option<bool>,
    pub conditions: Vec<ConditionResult>,
    pub holds: bool,
    pub reason: Option<Reason>,
    /// Why this persona may not be worn on this domain at all (a `required`
    /// knob this host cannot apply); its conditions are still shown.
    pub refused: Option<String>,
    /// Forecast observe mode: since when its forecast would have activated it
    /// (nothing is applied for it).
    pub would_since: Option<Millis>,
}

impl CandidateResult {
    /// The explanation as people and scripts read it.
    pub fn to_json(&self) -> serde_json::Value {
        let when = self
            .persona
            .activation
            .as_ref()
            .map(|a| a.when.as_slice())
            .unwrap_or(&[]);
        serde_json::json!({
            "persona": self.persona.id,
            "priority": self.persona.priority,
            "schedule_ok": self.schedule_ok,
            "holds": self.holds,
            "reason": self.reason,
            "refused": self.refused,
            "forecast_mode": self.persona.forecast_mode,
            "would_activate": self.would_since.map(|t| format!("would have activated at {} (forecast, observe mode: nothing applied)", rfc3339(t))),
            "conditions": self.conditions.iter().map(|c| serde_json::json!({
                "condition": when.get(c.condition).map(describe).unwrap_or_default(),
                "value": c.value,
                "threshold": c.threshold,
                "result": c.result,
                "note": c.note.map(|n| n.text()),
                // what `value` is: the extreme of the forecast over the
                // condition's window, or the value now
                "value_is": match (c.note, when.get(c.condition).map(|w| w.comparison)) {
                    (Some(Note::Predicted { .. } | Note::NextCrossing { .. } | Note::NoCrossingAhead { .. }), Some(Comparison::Below(_))) => "forecast_min",
                    (Some(Note::Predicted { .. } | Note::NextCrossing { .. } | Note::NoCrossingAhead { .. }), _) => "forecast_max",
                    _ => "now",
                },
            })).collect::<Vec<_>>(),
        })
    }
}

/// The decision for one domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The persona to wear; `None` means the baseline.
    pub persona: Option<String>,
    pub reason: Reason,
    /// The matching personas, in evaluation order, each evaluated.
    pub candidates: Vec<CandidateResult>,
}

/// What the rules see of one domain at one tick.
pub struct Inputs<'a> {
    pub domain: &'a DomainInfo,
    pub samples: Option<&'a VecDeque<Sample>>,
    pub host: &'a VecDeque<Sample>,
    pub signals: &'a Signals,
    pub now: Millis,
    /// Personas that may not be worn on this domain, by id, with the reason.
    pub refused: &'a BTreeMap<String, String>,
    /// Metrics (bit per [`Metric`]) never measured for this domain or host in
    /// many samples: their conditions are false, not unknown.
    pub never_measured: u32,
    /// Fitted forecasts, by domain UUID (or `host`) and metric.
    pub forecasts: &'a Forecasts,
    /// The daemon's `forecast_mode = "observe"`: no forecast activates anything.
    pub forecast_observe: bool,
}

/// A condition as people read it: `cpu > 80 (avg over 1m) for 30s`.
pub fn describe(c: &Condition) -> String {
    let src = match &c.source {
        Source::Metric(m) => m.name().to_string(),
        Source::Signal(s) => format!("signal {s}"),
        Source::Forecast(m) => format!("forecast {m}"),
    };
    let cmp = match c.comparison {
        Comparison::Above(t) => format!("> {t}"),
        Comparison::Below(t) => format!("< {t}"),
    };
    let mut s = format!("{src} {cmp}");
    if let Some(o) = c.over {
        s.push_str(&format!(" ({:?} over {o})", c.agg).to_lowercase());
    }
    if let Some(h) = c.horizon {
        s.push_str(&format!(" within {h}"));
        if let Some(l) = c.lead {
            s.push_str(&format!(" (+{l} lead)"));
        }
        if c.bound != crate::model::persona::Bound::Value {
            s.push_str(&format!(" ({:?} bound)", c.bound).to_lowercase());
        }
    }
    if let Some(f) = c.for_ {
        s.push_str(&format!(" for {f}"));
    }
    s
}

fn aggregate(w: &VecDeque<Sample>, from: Millis, m: Metric, agg: Agg) -> Option<f64> {
    let vals = w
        .iter()
        .filter(|s| s.t > from)
        .filter_map(|s| s.values.get(m));
    match agg {
        Agg::Avg | Agg::Sum => {
            let (n, sum) = vals.fold((0usize, 0.0), |(n, s), v| (n + 1, s + v));
            (n > 0).then(|| if agg == Agg::Avg { sum / n as f64 } else { sum })
        }
        Agg::Max => vals.reduce(f64::max),
        Agg::Min => vals.reduce(f64::min),
        Agg::P95 => {
            let mut v: Vec<f64> = vals.collect();
            if v.is_empty() {
                return None;
            }
            // nearest rank
            let idx = ((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1;
            let (_, x, _) = v.select_nth_unstable_by(idx, |a, b| a.total_cmp(b));
            Some(*x)
        }
    }
}

/// The value a metric condition sees: the latest sample, or the aggregate over its window.
fn metric_value(c: &Condition, m: Metric, inp: &Inputs<'_>) -> (Option<f64>, Option<Note>) {
    let window = if m.is_host() {
        Some(inp.host)
    } else {
        inp.samples
    };
    if let Some(why) = never_measured(m, inp) {
        return (None, Some(Note::NotMeasured(why)));
    }
    let Some(w) = window else {
        return (None, Some(Note::NoSamplesYet));
    };
    let (value, missing) = match c.over {
        None => (
            w.iter().rev().find_map(|s| s.values.get(m)),
            Note::NoSamplesYet,
        ),
        Some(over) => (
            aggregate(w, inp.now - over.as_std().as_millis() as Millis, m, c.agg),
            Note::NoSamplesInWindow,
        ),
    };
    match value {
        Some(v) => (Some(v), None),
        // many samples taken and never a value: libvirt or the host does not
        // report it, and waiting longer will not change that
        None if inp.never_measured & (1 << m as usize) != 0 => (
            None,
            Some(Note::NotMeasured(if m.is_host() {
                "not reported by this host"
            } else {
                "not reported for this domain by the hypervisor"
            })),
        ),
        None => (None, Some(missing)),
    }
}

/// A forecast condition: the extreme forecast over `[now, now + horizon]`
/// (or `lead`, when that is longer), the first crossing of the threshold
/// predicted in it, and whether the live value crosses now. The prediction
/// holds from `lead` before that crossing (`horizon` is how far ahead the
/// forecast is read). The live value alone
/// never puts a persona on; it keeps one that is `worn` on while it crosses,
/// so a prediction never ends a persona early. No forecast (under two days
/// of history, a failed or stale fit): only that keeping.
fn forecast_value(c: &Condition, m: &Measure, inp: &Inputs<'_>, worn: bool) -> ForecastEval {
    let live_c = Condition {
        over: None,
        ..c.clone()
    };
    // the live value: the metric now, or the signal as it is set now
    let (live, live_note) = match m {
        Measure::Metric(m) => metric_value(&live_c, *m, inp),
        Measure::Signal(s) => match inp.signals.value(s, &inp.domain.uuid, inp.now) {
            Some(v) => (Some(v), None),
            None => (None, Some(Note::SignalAbsent)),
        },
    };
    let keeps = worn && live.is_some_and(|v| c.comparison.holds(v));
    let key = if m.is_host() {
        crate::history::HOST
    } else {
        inp.domain.uuid.as_str()
    };
    let ms = |d: Option<crate::units::Duration>| {
        d.map(|d| d.as_std().as_millis() as Millis).unwrap_or(0)
    };
    let (horizon, lead) = (ms(c.horizon), ms(c.lead));
    let none = |note: Note| ForecastEval {
        value: live,
        note: Some(if keeps {
            live_note.unwrap_or(note)
        } else {
            note
        }),
        live: keeps,
        predicted: false,
    };
    match inp.forecasts.get(key, m) {
        None => none(Note::ForecastPending),
        Some(FitState::Waiting { have_ms }) => none(Note::TooLittleHistory {
            have_ms: *have_ms,
            ready_at: inp.now + (MIN_HISTORY_MS - have_ms).max(0),
        }),
        Some(FitState::Failed(_)) => none(Note::ForecastFailed),
        Some(FitState::Ready(fit)) if fit.is_stale(inp.now) => none(Note::ForecastStale),
        Some(FitState::Ready(fit)) => {
            let above = matches!(c.comparison, Comparison::Above(_));
            // read as far as `horizon`, and at least as far as `lead`
            match fit.outlook(inp.now, inp.now + horizon.max(lead), c.bound, above, |v| {
                c.comparison.holds(v)
            }) {
                None => none(Note::ForecastStale),
                Some(o) => ForecastEval {
                    value: Some(o.extreme),
                    note: Some(match o.crossing {
                        Some(at) => Note::Predicted {
                            at,
                            acts_from: at - lead,
                        },
                        // none in the window: when, further in the day ahead
                        None => {
                            let end = fit
                                .points
                                .last()
                                .map_or(inp.now, |p| p.t + crate::forecast::STEP_MS);
                            match fit
                                .outlook(inp.now, end, c.bound, above, |v| c.comparison.holds(v))
                                .and_then(|o| o.crossing)
                            {
                                Some(at) => Note::NextCrossing {
                                    at,
                                    acts_from: at - lead,
                                },
                                None => Note::NoCrossingAhead { until: end },
                            }
                        }
                    }),
                    live: keeps,
                    predicted: o.crossing.is_some_and(|at| at - lead <= inp.now),
                },
            }
        }
    }
}

struct ForecastEval {
    value: Option<f64>,
    note: Option<Note>,
    live: bool,
    predicted: bool,
}

/// Metrics a domain cannot have by its make-up (no NIC, no disk).
fn never_measured(m: Metric, inp: &Inputs<'_>) -> Option<&'static str> {
    let name = m.name();
    if name.starts_with("net_") && inp.domain.interfaces.is_empty() {
        return Some("the domain has no network interface");
    }
    if name.starts_with("disk_") && inp.domain.disks.is_empty() {
        return Some("the domain has no disk");
    }
    None
}

fn in_window(w: &Window, weekday: u8, minute: u16) -> bool {
    if w.from < w.to {
        w.days.contains(weekday) && minute >= w.from && minute < w.to
    } else {
        // crosses midnight: belongs to the day it starts
        let yesterday = (weekday + 6) % 7;
        (w.days.contains(weekday) && minute >= w.from)
            || (w.days.contains(yesterday) && minute < w.to)
    }
}

/// Whether `now` falls in any window of the schedule, in the persona's time zone
/// (resolved when the persona was loaded).
pub fn schedule_ok(a: &Activation, now: Millis) -> bool {
    if a.schedule.is_empty() {
        return true;
    }
    let Ok(ts) = jiff::Timestamp::from_millisecond(now) else {
        return false;
    };
    let dt = a.zone.to_datetime(ts);
    let weekday = dt.weekday().to_monday_zero_offset() as u8;
    let minute = dt.hour() as u16 * 60 + dt.minute() as u16;
    a.schedule.iter().any(|w| in_window(w, weekday, minute))
}

fn evaluate(p: &Persona, a: &Activation, inp: &Inputs<'_>, st: &mut RuleState) -> Evaluation {
    let sched = schedule_ok(a, inp.now);
    let observe = inp.forecast_observe || p.forecast_mode == ForecastMode::Observe;
    let mut results = Vec::with_capacity(a.when.len());
    // in observe mode: which conditions hold only by a prediction
    let mut predicted_only = Vec::new();
    for (i, c) in a.when.iter().enumerate() {
        let (value, mut note, forecast) = match &c.source {
            Source::Metric(m) => {
                let (v, n) = metric_value(c, *m, inp);
                (v, n, None)
            }
            Source::Signal(s) => match inp.signals.value(s, &inp.domain.uuid, inp.now) {
                Some(v) => (Some(v), None, None),
                None => (None, Some(Note::SignalAbsent), None),
            },
            Source::Forecast(m) => {
                let worn = st.worn.as_ref().is_some_and(|(id, _)| *id == p.id);
                let f = forecast_value(c, m, inp, worn);
                (f.value, f.note, Some((f.live, f.predicted)))
            }
        };
        let threshold = match c.comparison {
            Comparison::Above(t) | Comparison::Below(t) => t,
        };
        let raw = match forecast {
            None => value.is_some_and(|v| c.comparison.holds(v)),
            // observe: a forecast condition never holds, it only says when
            // it would have
            Some((_, predicted)) if observe => {
                if predicted {
                    predicted_only.push(i);
                }
                false
            }
            Some((live, predicted)) => live || predicted,
        };
        // only conditions with `for` need to remember since when they hold
        let result = match c.for_ {
            None => raw,
            Some(f) => {
                if !st.true_since.contains_key(p.id.as_str()) {
                    st.true_since.insert(p.id.clone(), vec![None; a.when.len()]);
                }
                let slots = st
                    .true_since
                    .get_mut(p.id.as_str())
                    .expect("inserted above");
                if slots.len() != a.when.len() {
                    slots.resize(a.when.len(), None);
                }
                if raw {
                    let since = *slots[i].get_or_insert(inp.now);
                    let held_ms = inp.now - since;
                    if held_ms < f.as_std().as_millis() as Millis {
                        note = Some(Note::NotLongEnough { held_ms });
                        false
                    } else {
                        true
                    }
                } else {
                    slots[i] = None;
                    false
                }
            }
        };
        results.push(ConditionResult {
            condition: i,
            value,
            threshold,
            result,
            note,
        });
    }
    // a metric without samples is unknown, not false; so is a forecast the
    // worker has not reported on yet (just after a start)
    let unknown = |r: &ConditionResult| {
        (r.value.is_none() && matches!(r.note, Some(Note::NoSamplesYet | Note::NoSamplesInWindow)))
            || (!r.result && r.note == Some(Note::ForecastPending))
    };
    let combine = |holds: &dyn Fn(&ConditionResult) -> bool| match a.mode {
        _ if results.is_empty() => (true, false),
        Mode::All => {
            let all = results.iter().all(holds);
            let none_false = results.iter().all(|r| holds(r) || unknown(r));
            (all, !all && none_false)
        }
        Mode::Any => {
            let any = results.iter().any(holds);
            (any, !any && results.iter().any(unknown))
        }
    };
    let (conds, undecided) = combine(&|r: &ConditionResult| r.result);
    // observe mode: would the predictions have activated it?
    let would = !predicted_only.is_empty()
        && sched
        && !conds
        && combine(&|r: &ConditionResult| r.result || predicted_only.contains(&r.condition)).0;
    Evaluation {
        would,
        active: sched && conds,
        undecided: sched && undecided,
        schedule_ok: (!a.schedule.is_empty()).then_some(sched),
        conditions: results,
    }
}

struct Evaluation {
    /// Forecast observe mode: the predictions alone would have activated it.
    would: bool,
    active: bool,
    /// Not active only because some metric has no samples yet.
    undecided: bool,
    schedule_ok: Option<bool>,
    conditions: Vec<ConditionResult>,
}

/// The personas a domain may wear (`[match]`), in evaluation order. Cache it:
/// it changes only with the personas or the domain's name and tags.
pub fn candidates(personas: &[Arc<Persona>], domain: &DomainInfo) -> Vec<Arc<Persona>> {
    personas
        .iter()
        .filter(|p| p.matches(domain))
        .cloned()
        .collect()
}

/// Decides the persona for one domain. `candidates` are the personas whose
/// `[match]` fits it, in evaluation order (see [`candidates`]). Updates `st`
/// for the next tick.
pub fn decide(candidates: &[Arc<Persona>], inp: &Inputs<'_>, st: &mut RuleState) -> Decision {
    let mut results = Vec::with_capacity(candidates.len());
    let mut chosen: Option<(&str, Reason)> = None;

    if st
        .override_
        .as_ref()
        .is_some_and(|o| o.until.is_some_and(|u| u <= inp.now))
    {
        st.override_ = None;
    }
    if let Some(o) = &st.override_ {
        if let Some(p) = candidates
            .iter()
            .find(|p| p.id == o.persona && !inp.refused.contains_key(&p.id))
        {
            chosen = Some((p.id.as_str(), Reason::Manual));
        }
    }
    let worn_id = st.worn.as_ref().map(|(id, _)| id.clone());
    let worn_since = st.worn.as_ref().map(|(_, s)| *s);
    for p in candidates {
        let mut c = CandidateResult {
            persona: p.clone(),
            schedule_ok: None,
            conditions: vec![],
            holds: false,
            reason: None,
            refused: inp.refused.get(&p.id).cloned(),
            would_since: None,
        };
        let (active, reason) = match &p.activation {
            None => (true, Reason::Always),
            Some(a) => {
                let e = evaluate(p, a, inp, st);
                if e.would {
                    let since = *st.would_since.entry(p.id.clone()).or_insert(inp.now);
                    c.would_since = Some(since);
                } else if !st.would_since.is_empty() {
                    st.would_since.remove(p.id.as_str());
                }
                let active = e.active;
                c.schedule_ok = e.schedule_ok;
                c.conditions = e.conditions;
                let since = worn_since.filter(|_| worn_id.as_deref() == Some(p.id.as_str()));
                match since {
                    Some(_) if active => {
                        st.last_active = Some(inp.now);
                        (true, Reason::Criteria)
                    }
                    // cooldown counts time known to be false, so it waits too
                    Some(_) if e.undecided => {
                        st.last_active = Some(inp.now);
                        (true, Reason::AwaitingSamples)
                    }
                    Some(since) if inp.now - since < a.hold.as_std().as_millis() as Millis => {
                        (true, Reason::Hold)
                    }
                    Some(since)
                        if inp.now - st.last_active.unwrap_or(since)
                            < a.cooldown.as_std().as_millis() as Millis =>
                    {
                        (true, Reason::Cooldown)
                    }
                    _ => (active, Reason::Criteria),
                }
            }
        };
        let active = active && c.refused.is_none();
        c.holds = active;
        if active {
            c.reason = Some(reason.clone());
            if chosen.is_none() {
                chosen = Some((p.id.as_str(), reason));
            }
        }
        results.push(c);
    }
    let (persona, reason) = match chosen {
        Some((id, r)) => (Some(id.to_string()), r),
        None => (None, Reason::NoMatch),
    };
    if persona != worn_id {
        st.worn = persona.clone().map(|id| (id, inp.now));
        st.last_active = Some(inp.now);
    }
    Decision {
        persona,
        reason,
        candidates: results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Values;
    use crate::hypervisor::fake::FakeHypervisor;
    use crate::model::persona::Metric;
    use crate::model::validate::parse_persona;

    fn persona(text: &str) -> Arc<Persona> {
        Arc::new(parse_persona(text, std::path::Path::new("t.toml")).expect("valid"))
    }

    fn cpu_samples(points: &[(Millis, f64)]) -> VecDeque<Sample> {
        points
            .iter()
            .map(|(t, v)| {
                let mut values = Values::default();
                values.set(Metric::Cpu, *v);
                Sample { t: *t, values }
            })
            .collect()
    }

    struct World {
        personas: Vec<Arc<Persona>>,
        domain: DomainInfo,
        signals: Signals,
        host: VecDeque<Sample>,
        st: RuleState,
    }

    impl World {
        fn new(personas: Vec<Arc<Persona>>) -> Self {
            let mut domain = FakeHypervisor::simple_domain("web-1", 2);
            domain.tags = vec!["web".into()];
            World {
                personas,
                domain,
                signals: Signals::default(),
                host: VecDeque::new(),
                st: RuleState::default(),
            }
        }
        fn at(&mut self, now: Millis, samples: &VecDeque<Sample>) -> Option<String> {
            let inp = Inputs {
                domain: &self.domain,
                samples: Some(samples),
                host: &self.host,
                signals: &self.signals,
                now,
                refused: &Default::default(),
                never_measured: 0,
                forecasts: &Default::default(),
                forecast_observe: false,
            };
            decide(
                &candidates(&self.personas, &self.domain),
                &inp,
                &mut self.st,
            )
            .persona
        }
    }

    const HOT: &str = "id = \"hot\"\npriority = 10\n[activation]\nhold = \"10s\"\ncooldown = \"5s\"\n[[activation.when]]\nmetric = \"cpu\"\nabove = 80\n";

    /// A metric the domain can never have (no NIC) or that is never reported
    /// is false with a note, not unknown forever: a worn `mode = "any"`
    /// persona whose other condition went false is let go after its cooldown.
    #[test]
    fn a_metric_that_can_never_have_samples_is_false_not_unknown() {
        let p = persona("id = \"any\"\n[activation]\nmode = \"any\"\ncooldown = \"5s\"\n[[activation.when]]\nmetric = \"net_rx_bps\"\nabove = 1000\n[[activation.when]]\nmetric = \"cpu\"\nabove = 80\n");
        let mut w = World::new(vec![p]);
        assert!(w.domain.interfaces.is_empty(), "the test domain has no NIC");
        w.st.worn = Some(("any".into(), 0));
        w.st.last_active = Some(0);
        let quiet = cpu_samples(&[(1000, 5.0)]);
        assert_eq!(w.at(1000, &quiet).as_deref(), Some("any"), "cooldown");
        assert_eq!(w.at(7000, &quiet), None, "let go: net is never measured");
        let inp = Inputs {
            domain: &w.domain,
            samples: Some(&quiet),
            host: &w.host,
            signals: &w.signals,
            now: 8000,
            refused: &Default::default(),
            never_measured: 0,
            forecasts: &Default::default(),
            forecast_observe: false,
        };
        let d = decide(&candidates(&w.personas, &w.domain), &inp, &mut w.st);
        let note = d.candidates[0].conditions[0].note;
        assert_eq!(
            note,
            Some(Note::NotMeasured("the domain has no network interface"))
        );

        // a metric the hypervisor never reports: unknown until the collector says so
        let p = persona("id = \"steal\"\n[activation]\n[[activation.when]]\nmetric = \"cpu_steal\"\nabove = 10\n");
        let w = World::new(vec![p]);
        let mut st = RuleState {
            worn: Some(("steal".into(), 0)),
            last_active: Some(0),
            ..Default::default()
        };
        let bit = 1 << Metric::CpuSteal as usize;
        for (never_measured, expect) in [(0, Some("steal")), (bit, None)] {
            let inp = Inputs {
                domain: &w.domain,
                samples: Some(&quiet),
                host: &w.host,
                signals: &w.signals,
                now: 60_000,
                refused: &Default::default(),
                never_measured,
                forecasts: &Default::default(),
                forecast_observe: false,
            };
            let d = decide(&candidates(&w.personas, &w.domain), &inp, &mut st);
            assert_eq!(d.persona.as_deref(), expect, "{never_measured:b}");
        }
    }

    #[test]
    fn priority_order_and_match() {
        let lo = persona("id = \"lo\"\npriority = 1\n");
        let hi = persona("id = \"hi\"\npriority = 5\n[match]\ntags = [\"web\"]\n");
        let other = persona("id = \"db\"\npriority = 9\n[match]\nnames = [\"db-*\"]\n");
        let mut w = World::new(vec![other, hi, lo]);
        assert_eq!(w.at(0, &VecDeque::new()).as_deref(), Some("hi"));
        w.domain.tags.clear();
        assert_eq!(w.at(1, &VecDeque::new()).as_deref(), Some("lo"));
    }

    #[test]
    fn hold_and_cooldown_prevent_flapping() {
        let mut w = World::new(vec![persona(HOT)]);
        assert_eq!(w.at(0, &cpu_samples(&[(0, 10.0)])), None);
        assert_eq!(
            w.at(1000, &cpu_samples(&[(1000, 95.0)])).as_deref(),
            Some("hot")
        );
        // load drops at 2 s: hold keeps it until 11 s
        assert_eq!(
            w.at(2000, &cpu_samples(&[(2000, 5.0)])).as_deref(),
            Some("hot")
        );
        assert_eq!(
            w.at(10_500, &cpu_samples(&[(10_500, 5.0)])).as_deref(),
            Some("hot")
        );
        // hold over; cooldown runs from the last time conditions held (1 s): over at 6 s
        assert_eq!(w.at(11_500, &cpu_samples(&[(11_500, 5.0)])), None);
    }

    #[test]
    fn missing_samples_keep_a_worn_persona_and_never_choose_a_new_one() {
        // a fresh daemon that adopted "hot": no samples yet is not "false"
        let mut w = World::new(vec![persona(HOT)]);
        w.st.worn = Some(("hot".into(), 0));
        w.st.last_active = Some(0);
        let none = VecDeque::new();
        assert_eq!(
            w.at(60_000, &none).as_deref(),
            Some("hot"),
            "awaiting samples"
        );
        let inp = Inputs {
            domain: &w.domain,
            samples: Some(&none),
            host: &w.host,
            signals: &w.signals,
            now: 61_000,
            refused: &Default::default(),
            never_measured: 0,
            forecasts: &Default::default(),
            forecast_observe: false,
        };
        let d = decide(&candidates(&w.personas, &w.domain), &inp, &mut w.st);
        assert_eq!(d.reason, Reason::AwaitingSamples);
        // data arrives and is false: cooldown (5 s) counts from then
        assert_eq!(
            w.at(62_000, &cpu_samples(&[(62_000, 5.0)])).as_deref(),
            Some("hot")
        );
        assert_eq!(w.at(66_500, &cpu_samples(&[(66_500, 5.0)])), None);
        // never worn: no samples means not chosen
        let mut fresh = World::new(vec![persona(HOT)]);
        assert_eq!(fresh.at(0, &none), None);
        // mode = "all" with one condition known false is decided, samples or not
        let both = persona("id = \"both\"\n[activation]\nmode = \"all\"\n[[activation.when]]\nmetric = \"cpu\"\nabove = 80\n[[activation.when]]\nmetric = \"host_cpu\"\nabove = 80\n");
        let mut w = World::new(vec![both]);
        w.st.worn = Some(("both".into(), 0));
        let mut h = Values::default();
        h.set(Metric::HostCpu, 1.0);
        w.host.push_back(Sample { t: 1000, values: h });
        assert_eq!(w.at(1000, &none), None, "host_cpu is known to be low");
    }

    #[test]
    fn cooldown_counts_from_the_last_true_tick() {
        let mut w = World::new(vec![persona(HOT)]);
        w.at(0, &cpu_samples(&[(0, 95.0)]));
        w.at(20_000, &cpu_samples(&[(20_000, 95.0)]));
        assert_eq!(
            w.at(21_000, &cpu_samples(&[(21_000, 5.0)])).as_deref(),
            Some("hot"),
            "cooldown"
        );
        assert_eq!(
            w.at(24_900, &cpu_samples(&[(24_900, 5.0)])).as_deref(),
            Some("hot")
        );
        assert_eq!(w.at(25_100, &cpu_samples(&[(25_100, 5.0)])), None);
    }

    #[test]
    fn over_agg_and_for() {
        let p = persona("id = \"p\"\n[[activation.when]]\nmetric = \"cpu\"\nabove = 50\nover = \"3s\"\nagg = \"avg\"\nfor = \"2s\"\n");
        let mut w = World::new(vec![p]);
        let s = cpu_samples(&[(0, 0.0), (1000, 100.0), (2000, 100.0), (3000, 100.0)]);
        // avg over (0,3000] = 100 > 50, but only just became true
        assert_eq!(w.at(3000, &s), None);
        let s2 = cpu_samples(&[(3000, 100.0), (4000, 90.0), (5000, 80.0)]);
        assert_eq!(w.at(5000, &s2).as_deref(), Some("p"), "true for 2 s");
        let p95 = persona("id = \"q\"\n[[activation.when]]\nmetric = \"cpu\"\nabove = 90\nover = \"10s\"\nagg = \"p95\"\n");
        let mut w = World::new(vec![p95]);
        // nearest rank: the p95 of 20 samples is the 19th smallest
        let mut one_high: Vec<(Millis, f64)> = (1..=19).map(|i| (i * 500, 10.0)).collect();
        one_high.push((10_000, 99.0));
        assert_eq!(
            w.at(10_000, &cpu_samples(&one_high)),
            None,
            "one high sample in 20 is above p95"
        );
        let mut two_high: Vec<(Millis, f64)> = (1..=18).map(|i| (i * 500, 10.0)).collect();
        two_high.extend([(9500, 99.0), (10_000, 99.0)]);
        assert_eq!(
            w.at(10_000, &cpu_samples(&two_high)).as_deref(),
            Some("q"),
            "two high samples in 20 reach p95"
        );
    }

    #[test]
    fn mode_any_and_signals_with_expiry() {
        let p = persona("id = \"p\"\n[activation]\nmode = \"any\"\n[[activation.when]]\nmetric = \"cpu\"\nabove = 80\n[[activation.when]]\nsignal = \"lb.rps\"\nabove = 1000\n");
        let mut w = World::new(vec![p]);
        let idle = cpu_samples(&[(0, 1.0)]);
        assert_eq!(w.at(0, &idle), None);
        w.signals.0.insert(
            "lb.rps".into(),
            vec![Signal {
                value: 1500.0,
                expires: 5000,
                domain: None,
                cluster: false,
            }],
        );
        assert_eq!(w.at(1000, &idle).as_deref(), Some("p"));
        assert_eq!(w.at(6000, &idle), None, "expired signal is absent");
        w.signals.0.insert(
            "lb.rps".into(),
            vec![
                Signal {
                    value: 1500.0,
                    expires: 99_000,
                    domain: None,
                    cluster: false,
                },
                Signal {
                    value: 10.0,
                    expires: 99_000,
                    domain: Some(w.domain.uuid.clone()),
                    cluster: false,
                },
            ],
        );
        assert_eq!(
            w.at(7000, &idle),
            None,
            "the domain's own signal beats the host-wide one"
        );
    }

    #[test]
    fn schedules_cross_midnight_in_their_time_zone() {
        let p = persona("id = \"n\"\n[activation]\ntimezone = \"Europe/Berlin\"\nschedule = [ { days = \"fri\", from = \"22:00\", to = \"02:00\" } ]\n");
        let a = p.activation.as_ref().unwrap();
        let ms = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        // Friday 2026-11-27 22:30 Berlin = 21:30 UTC
        assert!(schedule_ok(a, ms("2026-11-27T21:30:00Z")));
        // Saturday 01:30 Berlin: still Friday's window
        assert!(schedule_ok(a, ms("2026-11-28T00:30:00Z")));
        // Saturday 02:30 Berlin: over
        assert!(!schedule_ok(a, ms("2026-11-28T01:30:00Z")));
        // Friday 21:30 Berlin: not yet
        assert!(!schedule_ok(a, ms("2026-11-27T20:30:00Z")));
        // DST: on Sunday 2026-03-29 Berlin jumps from 02:00 to 03:00
        let d = persona("id = \"d\"\n[activation]\ntimezone = \"Europe/Berlin\"\nschedule = [ { days = \"sun\", from = \"03:00\", to = \"04:00\" } ]\n");
        let a = d.activation.as_ref().unwrap();
        assert!(
            schedule_ok(a, ms("2026-03-29T01:30:00Z")),
            "01:30 UTC is 03:30 CEST"
        );
        assert!(
            !schedule_ok(a, ms("2026-03-29T00:30:00Z")),
            "00:30 UTC is 01:30 CET"
        );
    }

    #[test]
    fn manual_override_beats_criteria_until_it_expires() {
        let mut w = World::new(vec![
            persona(HOT),
            persona("id = \"calm\"\npriority = -1\n"),
        ]);
        w.st.override_ = Some(Override {
            persona: "hot".into(),
            until: Some(5000),
            id: 1,
        });
        let idle = cpu_samples(&[(0, 1.0)]);
        assert_eq!(w.at(0, &idle).as_deref(), Some("hot"));
        assert_eq!(
            w.at(6000, &idle).as_deref(),
            Some("hot"),
            "hold after the override ends"
        );
        assert_eq!(w.at(20_000, &idle).as_deref(), Some("calm"));
    }

    #[test]
    fn explanation_lists_every_candidate_and_condition() {
        let mut w = World::new(vec![
            persona(HOT),
            persona("id = \"x\"\n[match]\nnames = [\"db-*\"]\n"),
        ]);
        let s = cpu_samples(&[(0, 42.0)]);
        let inp = Inputs {
            domain: &w.domain,
            samples: Some(&s),
            host: &w.host,
            signals: &w.signals,
            now: 0,
            refused: &Default::default(),
            never_measured: 0,
            forecasts: &Default::default(),
            forecast_observe: false,
        };
        let d = decide(&candidates(&w.personas, &w.domain), &inp, &mut w.st);
        assert_eq!(d.persona, None);
        assert_eq!(d.reason, Reason::NoMatch);
        let j = d.candidates[0].to_json();
        let c = &j["conditions"][0];
        assert_eq!(c["condition"], "cpu > 80");
        assert_eq!(
            (
                c["value"].as_f64(),
                c["threshold"].as_f64(),
                c["result"].as_bool()
            ),
            (Some(42.0), Some(80.0), Some(false))
        );
        assert_eq!(
            d.candidates.len(),
            1,
            "the db-* persona does not match: not a candidate"
        );
    }

    /// Two weeks of a web server's mornings, then day 15 minute by minute
    /// through an injected clock: the forecast persona is on by 09:00 − lead,
    /// not earlier than lead (and a step) before; when the forecast says the rush
    /// is over but the live load is still high it stays on, and it is released
    /// by the cooldown once neither holds. In observe mode the same forecast
    /// only says "would have activated".
    #[test]
    fn a_forecast_persona_is_on_before_the_rush_and_released_by_cooldown() {
        use crate::forecast::tests::{web_cpu, MONDAY};
        use crate::forecast::{fit, FitState, Forecasts, DAY, STEP_MS};
        let hist = web_cpu(MONDAY, 14 * DAY, 11);
        let day15 = MONDAY + 14 * 86_400_000;
        // fitted at 08:00 from history up to midnight (a refit runs hourly)
        let f = fit(&hist, day15 + 8 * 3_600_000).expect("fits");
        let text = |mode: &str| {
            format!("id = \"rush\"\n{mode}[activation]\ncooldown = \"10m\"\n[[activation.when]]\nforecast = \"cpu\"\nhorizon = \"10m\"\nlead = \"5m\"\nabove = 70\n")
        };
        let mut w = World::new(vec![persona(&text(""))]);
        w.domain.uuid = "u-web".into();
        let mut fc = Forecasts::default();
        fc.set(
            crate::history::SeriesKey::new("u-web", Metric::Cpu),
            FitState::Ready(Arc::new(f)),
        );
        // the live load of day 15: the rush runs until 11:20 today, 20 minutes
        // longer than every day before
        let live = |t: Millis| {
            let minute = (t - day15) / 60_000;
            if (540..680).contains(&minute) {
                92.0
            } else {
                18.0
            }
        };
        let mut samples = VecDeque::new();
        let mut on_at = None;
        let mut off_at = None;
        let minute = 60_000;
        for t in (day15 + 8 * 3_600_000..day15 + 12 * 3_600_000).step_by(minute as usize) {
            samples.push_back(Sample {
                t,
                values: {
                    let mut v = Values::default();
                    v.set(Metric::Cpu, live(t));
                    v
                },
            });
            let inp = Inputs {
                domain: &w.domain,
                samples: Some(&samples),
                host: &w.host,
                signals: &w.signals,
                now: t,
                refused: &Default::default(),
                never_measured: 0,
                forecasts: &fc,
                forecast_observe: false,
            };
            let d = decide(&candidates(&w.personas, &w.domain), &inp, &mut w.st);
            match (d.persona.is_some(), on_at, off_at) {
                (true, None, _) => on_at = Some(t),
                (false, Some(_), None) => off_at = Some(t),
                _ => {}
            }
        }
        let nine = day15 + 9 * 3_600_000;
        let on = on_at.expect("switched on");
        assert!(
            on <= nine - 5 * minute,
            "on at {} min before 09:00",
            (nine - on) / minute
        );
        assert!(
            on >= nine - 5 * minute - STEP_MS,
            "not earlier than lead (and a step) before: {} min",
            (nine - on) / minute
        );
        let off = off_at.expect("released");
        // the forecast ends the rush at 11:00; the live load holds it until
        // 11:19 (its last high minute), then the 10-minute cooldown runs
        assert_eq!(
            (off - day15) / minute,
            11 * 60 + 29,
            "released at {} min",
            (off - day15) / minute
        );

        // observe mode: never worn, "would have activated" from the same time
        let mut w = World::new(vec![persona(&text("forecast_mode = \"observe\"\n"))]);
        w.domain.uuid = "u-web".into();
        let mut would = None;
        for t in (day15 + 8 * 3_600_000..day15 + 9 * 3_600_000).step_by(minute as usize) {
            let quiet = cpu_samples(&[(t, 18.0)]);
            let inp = Inputs {
                domain: &w.domain,
                samples: Some(&quiet),
                host: &w.host,
                signals: &w.signals,
                now: t,
                refused: &Default::default(),
                never_measured: 0,
                forecasts: &fc,
                forecast_observe: false,
            };
            let d = decide(&candidates(&w.personas, &w.domain), &inp, &mut w.st);
            assert_eq!(d.persona, None, "observe mode applies nothing");
            if would.is_none() {
                would = d.candidates[0].would_since;
            }
            if let Some(since) = d.candidates[0].would_since {
                assert_eq!(Some(since), would, "since when, kept");
                let j = d.candidates[0].to_json();
                assert!(
                    j["would_activate"]
                        .as_str()
                        .unwrap()
                        .starts_with("would have activated at"),
                    "{j}"
                );
            }
        }
        assert_eq!(
            would,
            Some(on),
            "would have activated exactly when act mode did"
        );

        // too little history: false, and it says how much more and when
        let mut short = Forecasts::default();
        short.set(
            crate::history::SeriesKey::new("u-web", Metric::Cpu),
            FitState::Waiting {
                have_ms: 86_400_000,
            },
        );
        let mut w = World::new(vec![persona(&text(""))]);
        w.domain.uuid = "u-web".into();
        let quiet = cpu_samples(&[(day15, 18.0)]);
        let inp = Inputs {
            domain: &w.domain,
            samples: Some(&quiet),
            host: &w.host,
            signals: &w.signals,
            now: day15,
            refused: &Default::default(),
            never_measured: 0,
            forecasts: &short,
            forecast_observe: false,
        };
        let d = decide(&candidates(&w.personas, &w.domain), &inp, &mut w.st);
        assert_eq!(d.persona, None);
        let note = d.candidates[0].to_json()["conditions"][0]["note"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            note.contains("1.0 days recorded, 2.0 days needed (1.0 days more)"),
            "{note}"
        );
        assert!(note.contains("enough at 2026-11-17T00:00:00Z"), "{note}");
    }

    /// The live value alone never puts a forecast persona on: not with too
    /// little history, not without a forecast yet, and in observe mode not
    /// even with a forecast that crosses and live load above the threshold.
    #[test]
    fn a_forecast_condition_never_acts_on_the_live_value_alone_and_observe_never_acts() {
        use crate::forecast::tests::{web_cpu, MONDAY};
        use crate::forecast::{fit, FitState, Forecasts, DAY};
        let text = |mode: &str| {
            format!("id = \"rush\"\n{mode}[[activation.when]]\nforecast = \"cpu\"\nhorizon = \"10m\"\nlead = \"5m\"\nabove = 70\n")
        };
        let day15 = MONDAY + 14 * 86_400_000;
        let hot = |t: Millis| cpu_samples(&[(t, 95.0)]);
        let key = crate::history::SeriesKey::new("u-web", Metric::Cpu);
        let ask = |fc: &Forecasts, persona_text: &str, t: Millis| {
            let mut w = World::new(vec![persona(persona_text)]);
            w.domain.uuid = "u-web".into();
            let s = hot(t);
            let inp = Inputs {
                domain: &w.domain,
                samples: Some(&s),
                host: &w.host,
                signals: &w.signals,
                now: t,
                refused: &Default::default(),
                never_measured: 0,
                forecasts: fc,
                forecast_observe: false,
            };
            let d = decide(&candidates(&w.personas, &w.domain), &inp, &mut w.st);
            (d.persona, d.candidates[0].to_json())
        };
        // too little history, live load at 95 %: false
        let mut short = Forecasts::default();
        short.set(key.clone(), FitState::Waiting { have_ms: 3_600_000 });
        let (worn, j) = ask(&short, &text(""), day15);
        assert_eq!(worn, None, "{j}");
        assert_eq!(j["conditions"][0]["result"], false, "{j}");
        // no forecast reported yet: not worn either
        let (worn, _) = ask(&Forecasts::default(), &text(""), day15);
        assert_eq!(worn, None);
        // a forecast that crosses at 09:00, live at 95 %, in observe mode:
        // nothing, only "would have activated"
        let f = fit(&web_cpu(MONDAY, 14 * DAY, 11), day15 + 8 * 3_600_000).expect("fits");
        let mut fc = Forecasts::default();
        fc.set(key, FitState::Ready(Arc::new(f)));
        let at = day15 + 9 * 3_600_000 - 2 * 60_000;
        let (worn, j) = ask(&fc, &text("forecast_mode = \"observe\"\n"), at);
        assert_eq!(worn, None, "observe applies nothing: {j}");
        assert!(
            j["would_activate"]
                .as_str()
                .unwrap_or("")
                .starts_with("would have activated at"),
            "{j}"
        );
        // the same in act mode: worn, by the prediction
        let (worn, _) = ask(&fc, &text(""), at);
        assert_eq!(worn.as_deref(), Some("rush"));
        // live at 95 % at 03:00 with a quiet forecast: not worn (the live
        // value alone never activates)
        let (worn, j) = ask(&fc, &text(""), day15 + 3 * 3_600_000);
        assert_eq!(worn, None, "{j}");
    }
}
