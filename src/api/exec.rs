//! What each [`Command`] does: the daemon's side of the control surface.
//!
//! Generic over the ports, so it runs against the recording fake and the
//! in-memory store in tests exactly as it runs against libvirt and redb in the
//! daemon. `now` is a parameter. Persona files are the one source of truth:
//! a persona created, replaced or deleted here is written to (or removed
//! from) the personas directory atomically, then the catalog is reloaded from
//! disk. The two commands that need the daemon's own state (metrics and the
//! event stream) are answered by the daemon's loop, not here.

use crate::model::persona::Persona;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::api::command::{Command, Reply};
use crate::hypervisor::{Hypervisor, ReadScope};
use crate::model::loader::Catalog;
use crate::model::validate::parse_persona;
use crate::reconciler::{DomainStatus, ManualError, Reconciler};
use crate::rules::Signal;
use crate::store::{Event, StateStore};
use crate::time::rfc3339;
use crate::time::Millis;

/// How far back `GET /v1/events/recent` looks when no `since` is given.
pub const RECENT_EVENTS_MS: Millis = 3_600_000;

/// A domain's status as the API shows it.
pub fn status_json(s: &DomainStatus) -> Value {
    let mut v = json!({
        "id": s.id,
        "name": s.name,
        "uuid": s.uuid,
        "state": s.state,
        "persona": s.persona,
        "since": s.since.map(rfc3339),
        "reason": s.reason,
        "override": s.override_,
        "last_error": s.last_error,
        "skipped": s.skipped,
        "refused": s.refused,
        "needs_attention": s.needs_attention,
        "quarantined": s.quarantined,
        "would": s.would,
    });
    // the worn persona's cpu_weight and what it is on this host
    if let (Some(w), Some(m)) = (&s.cpu_weight, v.as_object_mut()) {
        m.insert("cpu_weight".into(), json!(w));
    }
    v
}

/// What a persona cannot do on this host, domain by domain: knobs skipped
/// where it is worn, and domains where a required knob keeps it off.
fn degraded(statuses: &[DomainStatus], persona: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for s in statuses {
        if s.persona.as_deref() == Some(persona) {
            for k in &s.skipped {
                out.push(
                    json!({"domain": s.name, "knob": k.knob, "reason": k.reason, "refused": false}),
                );
            }
        }
        if let Some(why) = s.refused.get(persona) {
            out.push(json!({"domain": s.name, "knob": null, "reason": why, "refused": true}));
        }
    }
    out
}

/// Every domain's status, as `GET /v1/domains` answers.
pub fn domains_body<H: Hypervisor + ?Sized, S: StateStore>(rec: &Reconciler<H, S>) -> String {
    Value::Array(rec.statuses().iter().map(status_json).collect()).to_string()
}

/// Whether a string is a UUID (36 characters, hex and dashes in place).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Every way a client names a domain of this host (name, id, UUID) to its
/// UUID: what an import, read off the loop's thread, resolves against.
pub fn domain_names<H: Hypervisor + ?Sized, S: StateStore>(
    rec: &Reconciler<H, S>,
) -> std::collections::HashMap<String, String> {
    let mut names = std::collections::HashMap::new();
    for s in rec.statuses() {
        if let Some(id) = s.id {
            names.insert(id.to_string(), s.uuid.clone());
        }
        names.insert(s.name.clone(), s.uuid.clone());
        names.insert(s.uuid.clone(), s.uuid);
    }
    names
}

/// `GET /v1/forecast/{domain}/{metric}`: the forecast from now to the
/// horizon, the last day of history, the fit's accuracy, and the thresholds
/// of the forecast conditions that use it.
fn forecast<H: Hypervisor + ?Sized, S: StateStore>(
    rec: &Reconciler<H, S>,
    name: &str,
    metric: &str,
    horizon_ms: i64,
    now: Millis,
) -> Reply {
    use crate::forecast::FitState;
    use crate::model::persona::{Comparison, Measure, Metric, Source};
    let Some(m) = Measure::from_name(metric) else {
        return Reply::bad(format!(
            "unknown metric '{metric}': expected one of {}, or signal:NAME",
            Metric::ALL
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let Some(e) = rec.entry(name) else {
        return Reply::not_found(format!("domain '{name}' not found"));
    };
    let key = if m.is_host() {
        crate::history::HOST
    } else {
        e.info.uuid.as_str()
    };
    let thresholds: Vec<Value> = rec
        .candidates_of(&e.info.uuid)
        .iter()
        .flat_map(|p| {
            p.activation
                .iter()
                .flat_map(|a| a.when.iter())
                .filter(|c| matches!(&c.source, Source::Forecast(f) if *f == m))
                .map(move |c| {
                    let (side, t) = match c.comparison {
                        Comparison::Above(t) => ("above", t),
                        Comparison::Below(t) => ("below", t),
                    };
                    json!({"persona": p.id, "condition": crate::rules::describe(c), side: t, "forecast_mode": p.forecast_mode})
                })
        })
        .collect();
    let head = |v: &mut Value| {
        v["domain"] = json!(e.info.name);
        v["metric"] = json!(m.to_string());
        v["thresholds"] = json!(thresholds);
    };
    match rec.forecasts().get(key, &m) {
        None if thresholds.is_empty() => Reply::conflict(format!(
            "no forecast condition of a persona '{}' may wear uses {m}: forecasts are fitted only for those (history is recorded for every metric a forecast condition names)",
            e.info.name
        )),
        None => Reply::conflict(format!("the forecast of {m} for '{}' is being fitted; try again in a moment", e.info.name)),
        Some(FitState::Waiting { have_ms }) => {
            let need = crate::forecast::MIN_HISTORY_MS;
            Reply::conflict(format!(
                "too little history for a forecast of {m} on '{}': {:.1} h recorded, {} h needed; enough at {} if recording goes on (or import history: virt-persona history-import)",
                e.info.name,
                *have_ms as f64 / 3_600_000.0,
                need / 3_600_000,
                rfc3339(now + (need - have_ms).max(0))
            ))
        }
        Some(FitState::Failed(why)) => Reply::conflict(format!("the forecast of {m} for '{}' did not fit: {why}", e.info.name)),
        Some(FitState::Ready(fit)) => {
            let points: Vec<Value> = fit
                .window(now, now + horizon_ms)
                .iter()
                .map(|p| json!({"t": rfc3339(p.t), "value": p.value, "lower": p.lower, "upper": p.upper}))
                .collect();
            let history: Vec<Value> = fit
                .recent
                .iter()
                .filter(|(_, v)| !v.is_nan())
                .map(|(t, v)| json!({"t": rfc3339(*t), "value": v}))
                .collect();
            let mut v = json!({
                "horizon": crate::units::Duration(std::time::Duration::from_millis(horizon_ms.max(0) as u64)).to_string(),
                "now": rfc3339(now),
                "points": points,
                "history": history,
                "fitted_at": rfc3339(fit.fitted_at),
                "history_start": rfc3339(fit.history_start),
                "history_end": rfc3339(fit.history_end),
                "history_days": (fit.history_end - fit.history_start) as f64 / 86_400_000.0,
                "timezone": fit.timezone,
                "seasons": fit.seasons.iter().map(|s| if *s == crate::forecast::DAY { "daily" } else { "weekly" }).collect::<Vec<_>>(),
                "step": "15m",
                "stale": fit.is_stale(now),
                "model": fit.model.name(),
                "model_id": fit.model,
                "backtest": fit.backtest.as_ref().map(|b| json!({
                    "origins": b.origins,
                    "rel_mae": b.rel_mae,
                    "candidates": b.candidates.iter().map(|(m, e)| json!({"model": m.name(), "rel_mae": e})).collect::<Vec<_>>(),
                    "blend": b.blend.iter().map(|(m, w)| json!({"model": m.name(), "weight": w})).collect::<Vec<_>>(),
                    "about": "every candidate forecast up to a day ahead from origins every 6 hours over the last 7 days, from the history before each; the three with the smallest errors (relative to \"same time yesterday\" from the same origins, each origin weighing half per day back) are blended, weighted by the inverse square of those errors. origins: how many the blend was scored from; rel_mae: the blend's error relative to \"same time yesterday\" (below 1 is better)",
                })),
                "record": fit.record.as_ref().map(|r| json!({
                    "days": r.days,
                    "since": r.since.map(rfc3339),
                    "rel_mae": r.rel_mae,
                    "better_days": r.better_days,
                    "coverage": r.coverage,
                    "width": r.width,
                    "peak_at": r.peak_at,
                    "peaks": r.peaks,
                    "peaks_seen": r.peaks_seen,
                    "quiet_days": r.quiet_days,
                    "false_alarms": r.false_alarms,
                    "about": "the day-ahead forecasts this host issued (each day's first fit, kept in history.redb) against what then happened, over the last 7 complete days: rel_mae is their error relative to \"same time yesterday\" (below 1 is better); coverage the share of actual values inside the 95 % band (percent); width the band's mean width over the mean actual value; a peak is a day's first step above peak_at (the first `above` threshold of the forecast conditions on this series, else the history's 90th percentile), seen ahead when the forecast crossed it at or before; a false alarm a quiet day the forecast crossed anyway",
                })),
                "accuracy": fit.accuracy.map(|a| json!({
                    "mape": a.mape,
                    "coverage": a.coverage,
                    "day": rfc3339(a.day_start),
                    "about": "the forecast of the last day of history made from the days before it, against what happened: MAPE of the point forecast, and the share of actual values inside the 95 % band (calibrated on the days before it only)",
                })),
            });
            head(&mut v);
            Reply::Ok(v)
        }
    }
}

/// A recorded event as the API and the event stream show it.
pub fn event_json(e: &Event) -> Value {
    json!({
        "time": rfc3339(e.time), "domain": e.domain, "from": e.from, "to": e.to,
        "reason": e.reason, "result": e.result, "changes": e.changes, "error": e.error,
        "skipped": e.skipped,
    })
}

/// Sets one signal (`signal-set`, a source's value): the domain by name,
/// id or UUID, the limits checked; the signal as the API shows it, or the
/// refusal.
#[allow(clippy::too_many_arguments)] // each is one part of the request; a struct would only rename them
fn set_signal<H: Hypervisor + ?Sized, S: StateStore>(
    rec: &mut Reconciler<H, S>,
    name: &str,
    value: f64,
    ttl_ms: i64,
    domain: Option<String>,
    cluster: bool,
    now: Millis,
    keep: Keep,
) -> Result<Value, Reply> {
    if cluster && !rec.cluster_enabled() {
        return Err(Reply::bad(
            "scope \"cluster\": this host is not in a cluster (gossip.listen is not set), so the signal would reach this host only; send it with scope \"host\" (the default), or turn gossip on",
        ));
    }
    // a domain by name, id or UUID, kept by its UUID (what rules
    // match on); a cluster signal may name, by UUID, a domain that
    // runs elsewhere: it is kept for when the domain comes here
    let domain = match domain {
        Some(key) => match rec.entry(&key) {
            Some(e) => Some(e.info.uuid.clone()),
            None if cluster && is_uuid(&key) => Some(key.to_ascii_lowercase()),
            None if cluster => {
                return Err(Reply::not_found(format!(
                    "no domain {key:?} on this host: a cluster signal for a domain running elsewhere names it by UUID (a name is resolved here, and another host's namesake is another domain)"
                )))
            }
            None => return Err(Reply::not_found(format!("domain '{key}' not found"))),
        },
        None => None,
    };
    let limits = *rec.limits();
    if ttl_ms > limits.signal_ttl_ms {
        return Err(Reply::bad(format!(
            "ttl: {} is longer than the limit of {} (limits.signal_ttl)",
            crate::units::Duration(std::time::Duration::from_millis(ttl_ms as u64)),
            crate::units::Duration(std::time::Duration::from_millis(
                limits.signal_ttl_ms as u64
            ))
        )));
    }
    if !rec.has_signal(name, domain.as_deref()) && rec.signal_count(now) >= limits.signals {
        return Err(Reply::bad(format!(
            "{} signals are set, the limit (limits.signals); set one again when another expires, or raise the limit",
            limits.signals
        )));
    }
    let s = Signal {
        value,
        expires: now + ttl_ms,
        domain,
        cluster,
    };
    let reply = signal_json(rec, name, &s);
    // pushed to this host: kept in the state store, so a restart (kill -9,
    // an upgrade, the watchdog) does not end it before its TTL
    if keep == Keep::Stored && !cluster {
        let stored = crate::store::StoredSignal {
            name: name.to_string(),
            value,
            expires: s.expires,
            domain: s.domain.clone(),
        };
        if let Err(e) = rec.keep_signal(&stored) {
            warn!(signal = %name, error = %e, "a signal was not set: the state store could not keep it");
            return Err(Reply::Err {
                status: 500,
                message: format!(
                    "signal '{name}' not set: the state store could not keep it, so a restart would end it early ({e}); see the daemon's log"
                ),
            });
        }
    }
    rec.set_signal(name, s);
    Ok(reply)
}

/// Whether a signal set is kept across restarts: pushed signals are; a
/// polled source's values come again with its next poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Stored,
    Memory,
}

/// Removes one signal (`signal-unset`, a resolved alert).
fn unset_signal<H: Hypervisor + ?Sized, S: StateStore>(
    rec: &mut Reconciler<H, S>,
    name: &str,
    domain: Option<String>,
    now: Millis,
) -> Result<Value, Reply> {
    // the domain as a signal is kept: by UUID (one not here only by its UUID)
    let uuid = match domain {
        Some(key) => match rec.entry(&key) {
            Some(e) => Some(e.info.uuid.clone()),
            None if is_uuid(&key) => Some(key.to_ascii_lowercase()),
            None => return Err(Reply::not_found(format!("domain '{key}' not found"))),
        },
        None => None,
    };
    rec.prune_signals(now);
    if let Err(e) = rec.forget_kept_signal(name, uuid.as_deref()) {
        warn!(signal = %name, error = %e, "the signal is removed but its stored copy could not be yet: tried again every tick (a restart before that brings it back until its TTL)");
    }
    match rec.unset_signal(name, uuid.as_deref()) {
        Some(s) => {
            let mut v = signal_json(rec, name, &s);
            v["removed"] = json!(true);
            Ok(v)
        }
        None => Err(Reply::not_found(format!(
            "no signal '{name}'{} is set",
            uuid.map(|_| " for that domain").unwrap_or_default()
        ))),
    }
}

/// A signal as the API shows it: `domain` the domain's name where it runs
/// here (else its UUID), `domain_uuid` what the signal is kept by.
fn signal_json<H: Hypervisor + ?Sized, S: StateStore>(
    rec: &Reconciler<H, S>,
    name: &str,
    s: &Signal,
) -> Value {
    let shown = s.domain.as_deref().map(|u| {
        rec.entry(u)
            .map_or_else(|| u.to_string(), |e| e.info.name.clone())
    });
    json!({
        "name": name, "value": s.value, "domain": shown, "domain_uuid": s.domain,
        "scope": if s.cluster { "cluster" } else { "host" }, "expires": rfc3339(s.expires),
    })
}

fn manual_error(e: ManualError) -> Reply {
    match e {
        ManualError::NoDomain(_) | ManualError::NoPersona(_) => Reply::not_found(e.to_string()),
        ManualError::NotRunning { .. }
        | ManualError::NoMatch { .. }
        | ManualError::Refused { .. } => Reply::conflict(e.to_string()),
        ManualError::Tick(t) => server_error(t),
    }
}

fn server_error(e: impl std::fmt::Display) -> Reply {
    Reply::Err {
        status: 500,
        message: e.to_string(),
    }
}

fn persona_json(catalog: &Catalog, id: &str) -> Option<Value> {
    let entry = catalog.entries().into_iter().find(|e| e.id == id)?;
    let file = catalog.file_of(id);
    Some(json!({
        "id": entry.id, "name": entry.name, "priority": entry.priority, "status": entry.status,
        "file": entry.file, "error": entry.error,
        "persona": catalog.get(id).map(|p| serde_json::to_value(&*p).unwrap_or_default()),
        "toml": file.and_then(|f| f.text.as_deref().map(str::to_string)),
    }))
}

/// Reloads the personas directory and logs what changed (always on SIGHUP).
pub fn reload(catalog: &mut Catalog, why: &str) {
    match catalog.reload() {
        Ok(r) => {
            if why == "SIGHUP"
                || !(r.loaded.is_empty() && r.failed.is_empty() && r.removed.is_empty())
            {
                info!(
                    trigger = why,
                    dir = %catalog.dir().display(),
                    in_force = catalog.personas().len(),
                    failed = ?r.failed,
                    removed = ?r.removed,
                    "personas loaded"
                );
            }
        }
        Err(e) => {
            warn!(dir = %catalog.dir().display(), error = %e, "cannot read the personas directory; personas in force are kept")
        }
    }
}

/// Runs one command. `Metrics` belongs to the daemon's loop and gets a 500 here.
pub fn execute<H: Hypervisor + ?Sized, S: StateStore>(
    rec: &mut Reconciler<H, S>,
    catalog: &mut Catalog,
    hv: &H,
    cmd: Command,
    now: Millis,
) -> Reply {
    let no_domain = |name: &str| Reply::not_found(format!("domain '{name}' not found"));
    let events = |r: Result<Vec<Event>, _>| match r {
        Ok(ev) => Reply::Ok(Value::Array(ev.iter().map(event_json).collect())),
        Err(e) => server_error(e),
    };
    match cmd {
        // not ok (503, with the reason) while libvirt is unreachable, the store
        // fails or the daemon only observes
        Command::Health => match rec.health_problem() {
            _ if !hv.is_connected() => Reply::Err {
                status: 503,
                message: format!("libvirt at {} is not reachable; reconnecting", hv.uri()),
            },
            Some(problem) => Reply::Err {
                status: 503,
                message: problem,
            },
            // a helper down (being restarted) degrades the daemon, which goes
            // on controlling domains: still 200, and said
            None => Reply::Ok(json!({
                "status": if rec.helpers().iter().any(|h| h.is_down()) { "degraded" } else { "ok" },
                "libvirt": "connected",
                "uri": hv.uri(),
                "version": crate::VERSION,
                "ticks": rec.ticks(),
                "dry_run": rec.dry_run(),
                "helpers": rec.helpers(),
            })),
        },
        Command::ListDomains => Reply::Ok(Value::Array(
            rec.statuses().iter().map(status_json).collect(),
        )),
        Command::GetDomain { name } => match rec.status(&name) {
            Some(s) => Reply::Ok(status_json(&s)),
            None => no_domain(&name),
        },
        Command::History { name, since, limit } => {
            let domain = rec.status(&name).map(|s| s.name).unwrap_or(name);
            events(rec.store().recent_events(Some(&domain), since, limit))
        }
        Command::Tuning { name } => match rec.status(&name) {
            None => no_domain(&name),
            Some(st) => match hv.tuning(&st.name, ReadScope::Current) {
                Ok(t) => Reply::Ok(serde_json::to_value(t).unwrap_or_default()),
                Err(e) => Reply::Err {
                    status: 502,
                    message: e.to_string(),
                },
            },
        },
        Command::RecentEvents { since, limit } => {
            let since = since.unwrap_or(now - RECENT_EVENTS_MS);
            events(rec.store().recent_events(None, since, limit))
        }
        Command::Explain { name } => match rec.entry(&name) {
            Some(e) => match &e.last_decision {
                Some(d) => Reply::Ok(json!({
                    "domain": e.info.name,
                    "persona": d.persona,
                    "reason": d.reason,
                    "candidates": d.candidates.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
                    // every other persona, and why its [match] does not fit
                    "not_matching": catalog
                        .personas()
                        .iter()
                        .filter_map(|p| p.why_not(&e.info).map(|why| json!({
                            "persona": p.id, "priority": p.priority, "why": why,
                        })))
                        .collect::<Vec<_>>(),
                    "skipped": rec.status(&name).map(|s| s.skipped).unwrap_or_default(),
                })),
                None => Reply::conflict(format!("no decision for '{name}' yet (is it running?)")),
            },
            None => no_domain(&name),
        },
        Command::Forecast {
            name,
            metric,
            horizon_ms,
        } => forecast(rec, &name, &metric, horizon_ms, now),
        Command::Cluster => Reply::conflict(
            "this host is not in a cluster: gossip is off (set gossip.listen, gossip.seeds and gossip.key_file)",
        ),
        Command::ImportHistory { .. } => Reply::Err {
            status: 503,
            message: "history import is handled by the daemon's forecast worker".into(),
        },
        Command::Activate {
            name,
            persona,
            for_ms,
        } => match rec.activate(&name, &persona, for_ms.map(|f| now + f), now) {
            Ok(()) => rec
                .status(&name)
                .map_or_else(|| no_domain(&name), |s| Reply::Ok(status_json(&s))),
            Err(e) => manual_error(e),
        },
        Command::Revert { name } => match rec.revert(&name, now) {
            Ok(()) => rec
                .status(&name)
                .map_or_else(|| no_domain(&name), |s| Reply::Ok(status_json(&s))),
            Err(e) => manual_error(e),
        },
        Command::ListPersonas => {
            let statuses = rec.statuses();
            let list: Vec<Value> = catalog
                .entries()
                .into_iter()
                .map(|e| {
                    let mut v = serde_json::to_value(&e).unwrap_or_default();
                    v["degraded"] = Value::Array(degraded(&statuses, &e.id));
                    v
                })
                .collect();
            Reply::Ok(Value::Array(list))
        }
        Command::GetPersona { id } => match persona_json(catalog, &id) {
            Some(v) => Reply::Ok(v),
            None => Reply::not_found(format!("persona '{id}' not found")),
        },
        Command::ValidatePersona { toml } => validation(&toml),
        Command::PutPersona { id, toml, parsed } => put_persona(rec, catalog, &id, &toml, parsed),
        Command::DeletePersona { id } => match catalog.file_of(&id).map(|f| f.path.clone()) {
            None => Reply::not_found(format!("persona '{id}' not found")),
            Some(path) => {
                if let Err(e) = std::fs::remove_file(&path) {
                    return server_error(format!("removing {}: {e}", path.display()));
                }
                reload(catalog, "API");
                rec.set_personas(catalog.personas());
                Reply::Ok(json!({"id": id, "file": path, "removed": true}))
            }
        },
        Command::SetSignal {
            name,
            value,
            ttl_ms,
            domain,
            cluster,
        } => match set_signal(rec, &name, value, ttl_ms, domain, cluster, now, Keep::Stored) {
            Ok(v) => Reply::Ok(v),
            Err(r) => r,
        },
        Command::SourceValues { batches } => {
            let (mut all, mut per) = (vec![], vec![]);
            for b in batches {
                let (mut set, mut unmatched, mut errors) = (0, vec![], vec![]);
                for (domain, value) in b.values {
                    let key = domain.clone();
                    match set_signal(rec, &b.name, value, b.ttl_ms, domain, b.cluster, now, Keep::Memory) {
                        Ok(v) => {
                            set += 1;
                            all.push(v);
                        }
                        Err(Reply::Err { status: 404, .. }) if key.is_some() => {
                            unmatched.extend(key)
                        }
                        Err(Reply::Err { message, .. }) => errors.push(message),
                        Err(_) => {}
                    }
                }
                per.push(json!({"set": set, "unmatched": unmatched, "errors": errors}));
            }
            Reply::Ok(json!({"set": all, "per": per}))
        }
        Command::UnsetSignal { name, domain } => match unset_signal(rec, &name, domain, now) {
            Ok(v) => Reply::Ok(v),
            Err(r) => r,
        },
        Command::Alerts {
            alerts,
            ttl_ms,
            mut errors,
        } => {
            let (mut set, mut ended) = (vec![], vec![]);
            let ttl_max = rec.limits().signal_ttl_ms;
            for a in alerts {
                let what = format!("{}{}", a.name, a.domain.as_deref().map(|d| format!(" for {d}")).unwrap_or_default());
                if a.firing {
                    // until Alertmanager would resolve it, within the limit
                    let ttl = a
                        .ends_at
                        .map(|t| t - now)
                        .filter(|t| *t >= 1_000)
                        .unwrap_or(ttl_ms)
                        .min(ttl_max);
                    match set_signal(rec, &a.name, a.value, ttl, a.domain, a.cluster, now, Keep::Stored) {
                        Ok(v) => set.push(v),
                        Err(Reply::Err { message, .. }) => errors.push(format!("{what}: {message}")),
                        Err(_) => {}
                    }
                } else {
                    match unset_signal(rec, &a.name, a.domain, now) {
                        Ok(v) => ended.push(v),
                        // resolved and not set (expired, or sent twice): nothing to end
                        Err(Reply::Err { status: 404, .. }) => {}
                        Err(Reply::Err { message, .. }) => errors.push(format!("{what}: {message}")),
                        Err(_) => {}
                    }
                }
            }
            Reply::Ok(json!({"set": set, "ended": ended, "errors": errors}))
        }
        Command::ListSignals => Reply::Ok(Value::Array(
            rec.live_signals(now)
                .iter()
                .map(|(name, s)| signal_json(rec, name, s))
                .collect(),
        )),
        Command::Metrics | Command::ListSources => server_error("answered by the daemon's loop"),
    }
}

/// `POST /v1/personas/validate`: every error of the persona, or none.
/// Pure: the API runs it off the loop's thread.
pub fn validation(toml: &str) -> Reply {
    let errors: Vec<Value> = match parse_persona(toml, Path::new("request")) {
        Ok(_) => vec![],
        Err(errs) => errs
            .iter()
            .map(|e| json!({"line": e.line, "col": e.col, "message": e.rule.to_string()}))
            .collect(),
    };
    Reply::Ok(json!({"ok": errors.is_empty(), "errors": errors}))
}

/// A persona sent for `PUT /v1/personas/{id}`, checked: its size, every
/// rule, and that its id is the route's. Pure: the API runs it off the
/// loop's thread and hands the loop the parsed persona.
pub fn check_persona(id: &str, toml: &str) -> Result<Arc<Persona>, Reply> {
    if toml.len() as u64 > crate::files::MAX_PERSONA_BYTES {
        return Err(Reply::Err {
            status: 413,
            message: format!(
                "the persona is {} bytes, larger than the {} KiB limit for a persona file",
                toml.len(),
                crate::files::MAX_PERSONA_BYTES >> 10
            ),
        });
    }
    match parse_persona(toml, Path::new("request")) {
        Err(errs) => Err(Reply::bad(
            errs.iter()
                .map(|e| format!("{}:{}: {}", e.line, e.col, e.rule))
                .collect::<Vec<_>>()
                .join("; "),
        )),
        Ok(p) if p.id != id => Err(Reply::bad(format!(
            "the body's id '{}' does not match the route's '{id}'",
            p.id
        ))),
        Ok(p) => Ok(Arc::new(p)),
    }
}

/// Creates or replaces a persona: checked first (off the loop's thread when
/// `parsed` comes with it), then written over its own file (or
/// `<id>.toml`), then loaded from disk like a hand edit — with the parse
/// already done, so the loop never validates a request's persona.
fn put_persona<H: Hypervisor + ?Sized, S: StateStore>(
    rec: &mut Reconciler<H, S>,
    catalog: &mut Catalog,
    id: &str,
    toml: &str,
    parsed: Option<Arc<Persona>>,
) -> Reply {
    let target = catalog
        .file_of(id)
        .map(|f| f.path.clone())
        .unwrap_or_else(|| catalog.dir().join(format!("{id}.toml")));
    let parsed = match parsed {
        Some(p) => p,
        None => match check_persona(id, toml) {
            Ok(p) => p,
            Err(r) => return r,
        },
    };
    catalog.prepare(&target, toml.as_bytes(), parsed);
    if let Err(e) = crate::files::write_atomically(&target, toml) {
        return server_error(format!("writing {}: {e}", target.display()));
    }
    reload(catalog, "API");
    rec.set_personas(catalog.personas());
    match persona_json(catalog, id) {
        Some(v) if v["status"] == "ok" => Reply::Ok(v),
        Some(v) => Reply::conflict(v["error"].as_str().unwrap_or("not loaded").to_string()),
        None => Reply::conflict(format!(
            "persona '{id}' was written to {} but is not in force",
            target.display()
        )),
    }
}
