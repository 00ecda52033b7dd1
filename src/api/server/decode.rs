//! What is still ours in reading a request: turning a route's parameters,
//! query and body into a [`Command`], or into the status and message to answer
//! with. Pure functions (fuzzed by `fuzz/fuzz_targets/http_request.rs`).

use super::super::command::{ActivateBody, Command, SignalBody};

/// The largest request body accepted (413 above).
pub const MAX_BODY: usize = 1 << 20;
/// Events a history request returns unless it asks for fewer (or more, up to
/// [`MAX_EVENTS_PER_REQUEST`]).
pub const DEFAULT_EVENTS_PER_REQUEST: usize = 1_000;
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;

/// The largest history import accepted: 14 days of 5-minute points for 100
/// domains is about 25 MiB of CSV.
pub const MAX_IMPORT_BODY: usize = 64 << 20;
/// The longest forecast horizon asked for.
pub const MAX_HORIZON_MS: i64 = 86_400_000;
/// The horizon when none is asked for.
pub const DEFAULT_HORIZON_MS: i64 = 6 * 3_600_000;

/// The longest signal name.
pub const MAX_SIGNAL_NAME: usize = 128;

/// An HTTP status and the message of the JSON error.
pub type HttpError = (u16, String);

/// The media type of a Content-Type header, lower case, without parameters.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The `limit` query parameter of the event routes.
pub fn limit(value: Option<&str>) -> Result<usize, HttpError> {
    match value {
        None | Some("") => Ok(DEFAULT_EVENTS_PER_REQUEST),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_EVENTS_PER_REQUEST).contains(&n) => Ok(n),
            _ => Err((
                400,
                format!("limit: '{s}' is not a number from 1 to {MAX_EVENTS_PER_REQUEST}"),
            )),
        },
    }
}

fn since(value: &str) -> Result<i64, HttpError> {
    crate::time::parse_time(value).ok_or_else(|| {
        (
            400,
            format!("since: '{value}' is not an RFC 3339 time or Unix seconds"),
        )
    })
}

fn json_body<T: for<'de> serde::Deserialize<'de>>(
    content_type: &str,
    body: &[u8],
) -> Result<T, HttpError> {
    let ct = media_type(content_type);
    if ct != "application/json" {
        return Err((
            415,
            format!("expected Content-Type: application/json, found '{ct}'"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| (400, format!("invalid JSON body: {e}")))
}

/// A persona body: TOML as it is, or JSON turned into TOML.
pub fn persona_body(content_type: &str, body: &[u8]) -> Result<String, HttpError> {
    match media_type(content_type).as_str() {
        "application/toml" | "text/toml" | "text/x-toml" | "text/plain" => {
            String::from_utf8(body.to_vec())
                .map_err(|_| (400, "the TOML body is not UTF-8".to_string()))
        }
        "application/json" => {
            let v: toml::Value = serde_json::from_slice(body)
                .map_err(|e| (400, format!("invalid JSON body: {e}")))?;
            if !v.is_table() {
                return Err((400, "a persona in JSON must be an object".into()));
            }
            toml::to_string(&v).map_err(|e| (400, format!("cannot turn the JSON into TOML: {e}")))
        }
        other => Err((
            415,
            format!("expected Content-Type application/toml or application/json, found '{other}'"),
        )),
    }
}

fn duration_ms(what: &str, s: &str) -> Result<i64, HttpError> {
    let d: crate::units::Duration = s
        .parse()
        .map_err(|e: crate::units::UnitError| (400, format!("{what}: {}", e.0)))?;
    if d.as_std().is_zero() {
        return Err((400, format!("{what}: must be greater than zero")));
    }
    i64::try_from(d.as_std().as_millis()).map_err(|_| (400, format!("{what}: too long")))
}

/// `GET /v1/domains/{name}/history?since=&limit=`
pub fn history(
    name: String,
    since_q: Option<&str>,
    limit_q: Option<&str>,
) -> Result<Command, HttpError> {
    let since = match since_q {
        None | Some("") => 0,
        Some(s) => since(s)?,
    };
    Ok(Command::History {
        name,
        since,
        limit: limit(limit_q)?,
    })
}

/// `GET /v1/events/recent?since=&limit=`
pub fn recent(since_q: Option<&str>, limit_q: Option<&str>) -> Result<Command, HttpError> {
    let since = match since_q {
        None | Some("") => None,
        Some(s) => Some(since(s)?),
    };
    Ok(Command::RecentEvents {
        since,
        limit: limit(limit_q)?,
    })
}

/// `POST /v1/domains/{name}/activate {persona, for?}`
pub fn activate(name: String, content_type: &str, body: &[u8]) -> Result<Command, HttpError> {
    let b: ActivateBody = json_body(content_type, body)?;
    let for_ms = b
        .for_
        .as_deref()
        .map(|f| duration_ms("for", f))
        .transpose()?;
    Ok(Command::Activate {
        name,
        persona: b.persona,
        for_ms,
    })
}

/// `DELETE /v1/signals/{name}?domain=DOM`.
pub fn unset_signal(name: String, domain: Option<&str>) -> Result<Command, HttpError> {
    check_signal_name(&name)?;
    Ok(Command::UnsetSignal {
        name,
        domain: domain.filter(|d| !d.is_empty()).map(str::to_string),
    })
}

/// A signal name as the API takes it.
fn check_signal_name(name: &str) -> Result<(), HttpError> {
    if name.len() > MAX_SIGNAL_NAME {
        return Err((
            400,
            format!(
                "the signal name is {} bytes long, over the limit of {MAX_SIGNAL_NAME}",
                name.len()
            ),
        ));
    }
    if !crate::model::validate::valid_name(name) {
        return Err((
            400,
            format!("invalid signal name '{name}': expected characters a-z, 0-9, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

/// `PUT /v1/signals/{name} {value, ttl?, domain?, scope?}`
pub fn signal(name: String, content_type: &str, body: &[u8]) -> Result<Command, HttpError> {
    let b: SignalBody = json_body(content_type, body)?;
    check_signal_name(&name)?;
    if !b.value.is_finite() {
        return Err((400, "value: expected a finite number".into()));
    }
    let ttl_ms = duration_ms("ttl", b.ttl.as_deref().unwrap_or("5m"))?;
    let cluster = match b.scope.as_deref() {
        None | Some("host") => false,
        // a host not in a cluster refuses it (exec): never kept here while it says "cluster"
        Some("cluster") => true,
        Some(other) => {
            return Err((
                400,
                format!("scope: expected \"host\" or \"cluster\", found \"{other}\""),
            ))
        }
    };
    Ok(Command::SetSignal {
        name,
        value: b.value,
        ttl_ms,
        domain: b.domain,
        cluster,
    })
}

#[derive(serde::Deserialize)]
struct Webhook {
    #[serde(default)]
    version: Option<String>,
    alerts: Vec<WebhookAlert>,
}

#[derive(serde::Deserialize)]
struct WebhookAlert {
    status: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default, rename = "endsAt")]
    ends_at: Option<String>,
}

/// Alerts one webhook may carry at most.
pub const MAX_ALERTS: usize = 1_000;

/// `POST /v1/alerts/alertmanager`: Alertmanager's webhook (version 4).
/// Each alert names its signal by the label or annotation `signal`, else
/// `alert.` and its `alertname` (lower case, other characters as `_`); its
/// value is the annotation (or label) `value`, else 1; its domain the label
/// `domain_label` names (default `domain`), by name or UUID, else
/// host-wide; `scope = "cluster"` as a label or annotation gossips it.
pub fn alertmanager(
    content_type: &str,
    body: &[u8],
    domain_label: Option<&str>,
    ttl: Option<&str>,
) -> Result<Command, HttpError> {
    let ttl_ms = duration_ms("ttl", ttl.unwrap_or("4h15m"))?;
    let hook: Webhook = json_body(content_type, body)?;
    if let Some(v) = hook.version.as_deref().filter(|v| *v != "4") {
        return Err((
            400,
            format!("webhook version {v:?}: version \"4\" (Alertmanager 0.16 and later) is read"),
        ));
    }
    if hook.alerts.len() > MAX_ALERTS {
        return Err((
            413,
            format!("{} alerts in one webhook, over the limit of {MAX_ALERTS} (set max_alerts in Alertmanager's webhook_config)", hook.alerts.len()),
        ));
    }
    let domain_label = domain_label.unwrap_or("domain");
    let (mut alerts, mut errors) = (Vec::new(), Vec::new());
    for (i, a) in hook.alerts.iter().enumerate() {
        let get = |k: &str| {
            a.labels
                .get(k)
                .or_else(|| a.annotations.get(k))
                .map(String::as_str)
        };
        let name = match get("signal") {
            Some(n) => n.to_string(),
            None => match a.labels.get("alertname") {
                Some(an) => format!(
                    "alert.{}",
                    an.to_ascii_lowercase()
                        .chars()
                        .map(
                            |c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                                c
                            } else {
                                '_'
                            }
                        )
                        .collect::<String>()
                ),
                None => {
                    errors.push(format!(
                        "alert {}: no signal label or annotation and no alertname",
                        i + 1
                    ));
                    continue;
                }
            },
        };
        if let Err((_, e)) = check_signal_name(&name) {
            errors.push(format!("alert {}: {e}", i + 1));
            continue;
        }
        let value = match a.annotations.get("value").or_else(|| a.labels.get("value")) {
            None => 1.0,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => x,
                _ => {
                    errors.push(format!(
                        "alert {} ({name}): value {v:?} is not a finite number",
                        i + 1
                    ));
                    continue;
                }
            },
        };
        let firing = match a.status.as_str() {
            "firing" => true,
            "resolved" => false,
            other => {
                errors.push(format!(
                    "alert {} ({name}): status {other:?} (expected firing or resolved)",
                    i + 1
                ));
                continue;
            }
        };
        let cluster = get("scope") == Some("cluster");
        let ends_at = a
            .ends_at
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
            // Alertmanager's "not set" is year 1
            .filter(|t| *t > 0);
        alerts.push(crate::api::command::AlertSignal {
            name,
            value,
            domain: a
                .labels
                .get(domain_label)
                .filter(|d| !d.is_empty())
                .cloned(),
            cluster,
            firing,
            ends_at,
        });
    }
    Ok(Command::Alerts {
        alerts,
        ttl_ms,
        errors,
    })
}

/// `GET /v1/forecast/{domain}/{metric}?horizon=DUR`.
pub fn forecast(name: String, metric: String, horizon: Option<&str>) -> Result<Command, HttpError> {
    let horizon_ms = match horizon {
        None | Some("") => DEFAULT_HORIZON_MS,
        Some(h) => match h.parse::<crate::units::Duration>() {
            Ok(d)
                if d.as_std().as_millis() > 0
                    && d.as_std().as_millis() <= MAX_HORIZON_MS as u128 =>
            {
                d.as_std().as_millis() as i64
            }
            _ => {
                return Err((
                    400,
                    format!("horizon: '{h}' is not a duration from 1s to 24h (e.g. \"6h\")"),
                ))
            }
        },
    };
    Ok(Command::Forecast {
        name,
        metric,
        horizon_ms,
    })
}

/// `POST /v1/history/import`: the body's type (text/csv, text/plain or none).
pub fn import_type(content_type: &str) -> Result<(), HttpError> {
    let ct = media_type(content_type);
    if !matches!(
        ct.as_str(),
        "" | "text/csv" | "text/plain" | "application/octet-stream"
    ) {
        return Err((
            415,
            format!("expected Content-Type: text/csv, found '{ct}'"),
        ));
    }
    Ok(())
}

/// `POST /v1/history/import`: the CSV read and checked whole against this
/// host's domains (`names`: name, id or UUID to UUID; any other UUID is a
/// domain not here) and the limits. Run off the loop's thread.
pub fn import(
    body: &[u8],
    retime: Option<&str>,
    names: &std::collections::HashMap<String, String>,
    limits: &crate::history::ImportLimits,
) -> Result<Command, HttpError> {
    use crate::history::{ImportError, Resolved};
    let retime = match retime {
        None | Some("") => false,
        Some("now") => true,
        Some(other) => {
            return Err((
                400,
                format!(
                    "retime: '{}' is not 'now' (the only end an import can be re-timed to)",
                    crate::api::printable(other)
                ),
            ))
        }
    };
    let csv = std::str::from_utf8(body).map_err(|e| {
        (
            400,
            format!("the CSV is not UTF-8 (byte {})", e.valid_up_to()),
        )
    })?;
    let resolve = |d: &str| match names.get(d) {
        Some(u) => Some(Resolved::Here(u.clone())),
        None => crate::api::exec::is_uuid(d).then(|| {
            let u = d.to_ascii_lowercase();
            match names.get(&u) {
                Some(u) => Resolved::Here(u.clone()),
                None => Resolved::Elsewhere(u),
            }
        }),
    };
    match crate::history::parse_csv(csv, resolve, limits) {
        Ok(batch) => Ok(Command::ImportHistory { batch, retime }),
        Err(e @ ImportError::Limit(_)) => Err((413, e.to_string())),
        Err(e) => Err((400, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_queries() {
        assert_eq!(limit(Some("5")), Ok(5));
        for bad in ["0", "x", "10001"] {
            assert_eq!(limit(Some(bad)).unwrap_err().0, 400, "{bad}");
        }
        assert_eq!(
            recent(Some("1700000000"), None).unwrap(),
            Command::RecentEvents {
                since: Some(1_700_000_000_000),
                limit: DEFAULT_EVENTS_PER_REQUEST
            }
        );
        let p = persona_body(
            "application/json; charset=utf-8",
            br#"{"id": "x", "priority": 3}"#,
        )
        .unwrap();
        assert!(p.contains("priority = 3"), "{p}");
        assert_eq!(persona_body("application/json", b"[1]").unwrap_err().0, 400);
        assert_eq!(persona_body("image/png", b"").unwrap_err().0, 415);
        assert_eq!(
            activate(
                "a".into(),
                "application/json",
                br#"{"persona":"p","for":"0s"}"#
            )
            .unwrap_err()
            .0,
            400
        );
        assert!(matches!(
            signal(
                "x".into(),
                "application/json",
                br#"{"value": 1, "scope": "cluster"}"#,
            ),
            Ok(Command::SetSignal { cluster: true, .. })
        ));
        let e = signal("BAD NAME".into(), "application/json", br#"{"value": 1}"#).unwrap_err();
        assert!(e.1.contains("invalid signal name"), "{e:?}");
        assert_eq!(
            signal(
                "x".into(),
                "application/json",
                br#"{"value": 1, "ttl": "2m"}"#
            )
            .unwrap(),
            Command::SetSignal {
                name: "x".into(),
                value: 1.0,
                ttl_ms: 120_000,
                domain: None,
                cluster: false
            }
        );
    }

    fn alerts(body: &str) -> (Vec<crate::api::command::AlertSignal>, Vec<String>) {
        match alertmanager("application/json", body.as_bytes(), None, None) {
            Ok(Command::Alerts {
                alerts,
                ttl_ms,
                errors,
            }) => {
                assert_eq!(ttl_ms, 15_300_000);
                (alerts, errors)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn alertmanager_webhooks_become_signals() {
        let (a, e) = alerts(
            r#"{"version":"4","status":"firing","alerts":[
            {"status":"firing","labels":{"alertname":"HighRequestRate","domain":"web1"},"annotations":{"value":"250"},"endsAt":"2026-12-01T10:05:00Z"},
            {"status":"resolved","labels":{"alertname":"x","signal":"lb.surge","scope":"cluster"},"endsAt":"2026-12-01T10:00:00Z"},
            {"status":"firing","labels":{"alertname":"Disk Full!"},"endsAt":"0001-01-01T00:00:00Z"},
            {"status":"firing","labels":{"alertname":"v"},"annotations":{"value":"lots"}},
            {"status":"firing","labels":{"signal":"Bad Name"}},
            {"status":"pending","labels":{"alertname":"p"}},
            {"status":"firing","labels":{}}]}"#,
        );
        assert_eq!(a.len(), 3, "{a:?}");
        assert_eq!(
            (
                a[0].name.as_str(),
                a[0].value,
                a[0].domain.as_deref(),
                a[0].firing
            ),
            ("alert.highrequestrate", 250.0, Some("web1"), true)
        );
        assert_eq!(a[0].ends_at, Some(1_796_119_500_000));
        assert_eq!(
            (a[1].name.as_str(), a[1].firing, a[1].cluster),
            ("lb.surge", false, true)
        );
        assert_eq!(
            (a[2].name.as_str(), a[2].value, a[2].ends_at),
            ("alert.disk_full_", 1.0, None)
        );
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].contains("alert 4 (alert.v): value \"lots\""), "{e:?}");
        assert!(e[1].contains("invalid signal name 'Bad Name'"), "{e:?}");
        assert!(e[2].contains("status \"pending\""), "{e:?}");
        assert!(e[3].contains("alert 7: no signal label"), "{e:?}");
        // the whole body wrong: refused, so Alertmanager says so
        assert_eq!(
            alertmanager("application/json", b"{}", None, None)
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            alertmanager("text/plain", b"{}", None, None).unwrap_err().0,
            415
        );
        assert_eq!(
            alertmanager(
                "application/json",
                br#"{"version":"3","alerts":[]}"#,
                None,
                None
            )
            .unwrap_err()
            .0,
            400
        );
        let (a, _) = match alertmanager(
            "application/json",
            br#"{"alerts":[{"status":"firing","labels":{"alertname":"a","instance":"vm9"}}]}"#,
            Some("instance"),
            Some("10m"),
        )
        .unwrap()
        {
            Command::Alerts {
                alerts,
                errors,
                ttl_ms,
            } => {
                assert_eq!(ttl_ms, 600_000);
                (alerts, errors)
            }
            _ => unreachable!(),
        };
        assert_eq!(a[0].domain.as_deref(), Some("vm9"));
    }

    proptest::proptest! {
        /// Any body: an answer, never a panic.
        #[test]
        fn alertmanager_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = alertmanager("application/json", &body, None, None);
        }

        #[test]
        fn alertmanager_never_panics_on_shaped_bodies(status in "[a-z]{0,9}", name in "\\PC{0,20}", value in "\\PC{0,8}", ends in "\\PC{0,30}") {
            let body = serde_json::json!({"alerts": [{"status": status, "labels": {"alertname": name, "domain": name}, "annotations": {"value": value}, "endsAt": ends}]});
            let _ = alertmanager("application/json", body.to_string().as_bytes(), None, None);
        }
    }
}
