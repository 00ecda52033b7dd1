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
}
