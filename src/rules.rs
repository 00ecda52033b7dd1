//! Which persona a domain should wear now (SPEC §7) — pure.
//!
//! Candidates are the personas whose `[match]` fits, in priority order; the
//! first whose activation holds wins. A persona already worn keeps holding
//! while its `hold` has not run out, or until its conditions have been false
//! for `cooldown`, so a domain never flaps. A manual activation beats all
//! criteria until it expires. Every decision comes with its explanation,
//! condition by condition. `now` is a parameter; nothing here reads a clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use crate::collector::{Millis, Sample};
use crate::hypervisor::DomainInfo;
use crate::model::persona::{
    Activation, Agg, Comparison, Condition, Mode, Persona, Source, Window,
};

/// An external signal (SPEC §5).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    pub value: f64,
    pub expires: Millis,
    /// `None`: host-wide.
    pub domain: Option<String>,
}

/// Signals by name; a domain-specific one beats a host-wide one.
#[derive(Debug, Clone, Default)]
pub struct Signals(pub HashMap<String, Vec<Signal>>);

impl Signals {
    /// The live value of a signal for a domain.
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
    pub persona: String,
    /// `None`: until reverted.
    pub until: Option<Millis>,
}

/// What the rules remember about one domain between ticks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleState {
    /// The persona worn and since when.
    pub worn: Option<(String, Millis)>,
    /// When the worn persona's own conditions last held.
    pub last_active: Option<Millis>,
    /// Since when each (persona, condition index) has held without a break.
    pub true_since: HashMap<(String, usize), Millis>,
    pub override_: Option<Override>,
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
    NoMatch,
}

/// One condition, evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConditionResult {
    pub condition: String,
    pub value: Option<f64>,
    pub threshold: f64,
    pub result: bool,
    pub note: Option<String>,
}

/// One candidate persona, evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateResult {
    pub persona: String,
    pub priority: i64,
    pub matches: bool,
    pub schedule_ok: Option<bool>,
    pub conditions: Vec<ConditionResult>,
    pub holds: bool,
    pub reason: Option<Reason>,
}

/// The decision for one domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The persona to wear; `None` means the baseline.
    pub persona: Option<String>,
    pub reason: Reason,
    pub candidates: Vec<CandidateResult>,
}

/// What the rules see of one domain at one tick.
pub struct Inputs<'a> {
    pub domain: &'a DomainInfo,
    pub samples: Option<&'a VecDeque<Sample>>,
    pub host: &'a VecDeque<Sample>,
    pub signals: &'a Signals,
    pub now: Millis,
}

fn describe(c: &Condition) -> String {
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
    if let Some(f) = c.for_ {
        s.push_str(&format!(" for {f}"));
    }
    s
}

fn aggregate(values: &mut [f64], agg: Agg) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(match agg {
        Agg::Avg => values.iter().sum::<f64>() / values.len() as f64,
        Agg::Max => values.iter().cloned().fold(f64::MIN, f64::max),
        Agg::Min => values.iter().cloned().fold(f64::MAX, f64::min),
        Agg::Sum => values.iter().sum(),
        Agg::P95 => {
            values.sort_by(|a, b| a.total_cmp(b));
            let idx = ((values.len() as f64 * 0.95).ceil() as usize).clamp(1, values.len()) - 1;
            values[idx]
        }
    })
}

/// The value a metric condition sees: the latest sample, or the aggregate over its window.
fn metric_value(
    c: &Condition,
    m: crate::model::persona::Metric,
    inp: &Inputs<'_>,
) -> (Option<f64>, Option<String>) {
    let window = if m.is_host() {
        Some(inp.host)
    } else {
        inp.samples
    };
    let Some(w) = window else {
        return (None, Some("no samples yet".into()));
    };
    match c.over {
        None => match w.iter().rev().find_map(|s| s.values.get(m)) {
            Some(v) => (Some(v), None),
            None => (None, Some("no samples yet".into())),
        },
        Some(over) => {
            let from = inp.now - over.as_std().as_millis() as Millis;
            let mut vals: Vec<f64> = w
                .iter()
                .filter(|s| s.t > from)
                .filter_map(|s| s.values.get(m))
                .collect();
            let v = aggregate(&mut vals, c.agg);
            (
                v,
                v.is_none().then(|| "no samples in the window yet".into()),
            )
        }
    }
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
/// (the host's when none is given).
pub fn schedule_ok(a: &Activation, now: Millis) -> bool {
    if a.schedule.is_empty() {
        return true;
    }
    let tz = a
        .timezone
        .as_deref()
        .and_then(|n| jiff::tz::TimeZone::get(n).ok())
        .unwrap_or_else(jiff::tz::TimeZone::system);
    let Ok(ts) = jiff::Timestamp::from_millisecond(now) else {
        return false;
    };
    let dt = ts.to_zoned(tz).datetime();
    let weekday = dt.weekday().to_monday_zero_offset() as u8;
    let minute = dt.hour() as u16 * 60 + dt.minute() as u16;
    a.schedule.iter().any(|w| in_window(w, weekday, minute))
}

fn evaluate(
    p: &Persona,
    a: &Activation,
    inp: &Inputs<'_>,
    st: &mut RuleState,
) -> (bool, Option<bool>, Vec<ConditionResult>) {
    let sched = schedule_ok(a, inp.now);
    let mut results = Vec::with_capacity(a.when.len());
    for (i, c) in a.when.iter().enumerate() {
        let (value, mut note) = match &c.source {
            Source::Metric(m) => metric_value(c, *m, inp),
            Source::Signal(s) => match inp.signals.value(s, &inp.domain.name, inp.now) {
                Some(v) => (Some(v), None),
                None => (None, Some("signal absent or expired".into())),
            },
            Source::Forecast(_) => (None, Some("too little history for a forecast".into())),
        };
        let threshold = match c.comparison {
            Comparison::Above(t) | Comparison::Below(t) => t,
        };
        let raw = value.is_some_and(|v| c.comparison.holds(v));
        let key = (p.id.clone(), i);
        let result = if raw {
            let since = *st.true_since.entry(key).or_insert(inp.now);
            match c.for_ {
                Some(f) if inp.now - since < f.as_std().as_millis() as Millis => {
                    note = Some(format!("true for {} ms of {f}", inp.now - since));
                    false
                }
                _ => true,
            }
        } else {
            st.true_since.remove(&key);
            false
        };
        results.push(ConditionResult {
            condition: describe(c),
            value,
            threshold,
            result,
            note,
        });
    }
    let conds = match a.mode {
        _ if results.is_empty() => true,
        Mode::All => results.iter().all(|r| r.result),
        Mode::Any => results.iter().any(|r| r.result),
    };
    (
        sched && conds,
        (!a.schedule.is_empty()).then_some(sched),
        results,
    )
}

/// Decides the persona for one domain. `personas` must be in evaluation order
/// (priority high to low, then id). Updates `st` for the next tick.
pub fn decide(personas: &[Arc<Persona>], inp: &Inputs<'_>, st: &mut RuleState) -> Decision {
    let mut candidates = Vec::new();
    let mut chosen: Option<(String, Reason)> = None;

    if let Some(o) = &st.override_ {
        if o.until.is_some_and(|u| u <= inp.now) {
            st.override_ = None;
        }
    }
    if let Some(o) = &st.override_ {
        if let Some(p) = personas.iter().find(|p| p.id == o.persona) {
            chosen = Some((p.id.clone(), Reason::Manual));
        }
    }
    let worn = st.worn.clone();
    for p in personas {
        let matches = p.matches(inp.domain);
        let mut c = CandidateResult {
            persona: p.id.clone(),
            priority: p.priority,
            matches,
            schedule_ok: None,
            conditions: vec![],
            holds: false,
            reason: None,
        };
        if matches {
            let (active, reason) = match &p.activation {
                None => (true, Reason::Always),
                Some(a) => {
                    let (active, sched, conds) = evaluate(p, a, inp, st);
                    c.schedule_ok = sched;
                    c.conditions = conds;
                    let worn_since = worn.as_ref().filter(|(id, _)| *id == p.id).map(|(_, s)| *s);
                    match worn_since {
                        Some(_) if active => {
                            st.last_active = Some(inp.now);
                            (true, Reason::Criteria)
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
            c.holds = active;
            if active {
                c.reason = Some(reason.clone());
                if chosen.is_none() {
                    chosen = Some((p.id.clone(), reason));
                }
            }
        }
        candidates.push(c);
    }
    let (persona, reason) = match chosen {
        Some((id, r)) => (Some(id), r),
        None => (None, Reason::NoMatch),
    };
    if persona.as_ref() != worn.as_ref().map(|(id, _)| id) {
        st.worn = persona.clone().map(|id| (id, inp.now));
        st.last_active = Some(inp.now);
    }
    Decision {
        persona,
        reason,
        candidates,
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
            };
            decide(&self.personas, &inp, &mut self.st).persona
        }
    }

    const HOT: &str = "id = \"hot\"\npriority = 10\n[activation]\nhold = \"10s\"\ncooldown = \"5s\"\n[[activation.when]]\nmetric = \"cpu\"\nabove = 80\n";

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
                },
                Signal {
                    value: 10.0,
                    expires: 99_000,
                    domain: Some("web-1".into()),
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
        };
        let d = decide(&w.personas, &inp, &mut w.st);
        assert_eq!(d.persona, None);
        assert_eq!(d.reason, Reason::NoMatch);
        assert_eq!(d.candidates.len(), 2);
        let c = &d.candidates[0].conditions[0];
        assert_eq!(
            (c.condition.as_str(), c.value, c.threshold, c.result),
            ("cpu > 80", Some(42.0), 80.0, false)
        );
        assert!(!d.candidates[1].matches);
    }
}
