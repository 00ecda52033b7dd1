//! Signal sources (`[[signals.source]]`, SPEC §5): numbers the daemon pulls
//! itself from the tools a host already runs — a Prometheus exposition
//! endpoint (HAProxy's exporter, node_exporter, nginx's exporter) or a
//! Prometheus server's instant query — and sets as signals, host-wide or
//! per domain through a label. Pure logic here (what a body says, as which
//! signals); the polling is in [`poller`], on the API's tokio runtime.

pub mod exposition;
pub mod http;
pub mod poller;
pub mod query;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use serde::Deserialize;

use exposition::Series;

/// The largest body read from a source.
pub const DEFAULT_MAX_BODY: u64 = 4 << 20;
/// Sources at most in one config.
pub const MAX_SOURCES: usize = 200;

/// One `[[signals.source]]` as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    pub signal: Option<String>,
    pub url: Option<String>,
    pub metric: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    pub query: Option<String>,
    pub rate: Option<String>,
    pub aggregate: Option<String>,
    pub domain_label: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub ttl: Option<String>,
    pub scope: Option<String>,
    pub bearer_token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub max_body: Option<u64>,
}

/// What a source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A Prometheus text exposition (`GET url`), the samples named `metric`
    /// whose labels equal `labels`.
    Exposition {
        metric: String,
        labels: Vec<(String, String)>,
    },
    /// A Prometheus server's instant query (`GET url/api/v1/query?query=…`).
    Query { expr: String },
}

/// How several matching series become one host-wide value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Max,
    Min,
    Avg,
}

/// A checked source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// The signal it sets.
    pub signal: String,
    pub url: String,
    pub kind: Kind,
    /// A counter read as its per-second rate over this window.
    pub rate_ms: Option<i64>,
    pub aggregate: Aggregate,
    /// Per-domain signals: this label's value names the domain (name or UUID).
    pub domain_label: Option<String>,
    pub interval_ms: i64,
    pub timeout_ms: i64,
    /// How long a value set lives without a newer one.
    pub ttl_ms: i64,
    pub cluster: bool,
    pub bearer_token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub max_body: u64,
}

/// A source entry that is wrong: which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signals.source[{index}]{}: {message}", signal.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
pub struct SourceError {
    /// From 1, as an admin counts them in the file.
    pub index: usize,
    pub signal: Option<String>,
    pub message: String,
}

fn ms(key: &str, s: &str, min_ms: i64, max_ms: i64) -> Result<i64, String> {
    let d: crate::units::Duration = s
        .parse()
        .map_err(|e: crate::units::UnitError| format!("{key}: {}", e.0))?;
    let v = d.as_std().as_millis() as i64;
    if v < min_ms || v > max_ms {
        let show = |m: i64| crate::units::Duration(std::time::Duration::from_millis(m as u64));
        return Err(format!(
            "{key}: {s} is out of range: expected {} to {}",
            show(min_ms),
            show(max_ms)
        ));
    }
    Ok(v)
}

impl SourceFile {
    /// Checks one entry (`index` from 1).
    pub fn check(&self, index: usize) -> Result<SourceConfig, SourceError> {
        let err = |message: String| SourceError {
            index,
            signal: self.signal.clone(),
            message,
        };
        let signal = self
            .signal
            .clone()
            .ok_or_else(|| err("signal: the name of the signal it sets is required".into()))?;
        if signal.len() > crate::api::server::decode::MAX_SIGNAL_NAME
            || !crate::model::validate::valid_name(&signal)
        {
            return Err(err(format!(
                "signal: invalid name {signal:?}: expected up to {} characters a-z, 0-9, '.', '_' and '-'",
                crate::api::server::decode::MAX_SIGNAL_NAME
            )));
        }
        let url = self.url.clone().ok_or_else(|| err("url: required (an exposition endpoint, e.g. http://127.0.0.1:8404/metrics, or a Prometheus server with query)".into()))?;
        http::Target::parse(&url).map_err(|e| err(format!("url: {e}")))?;
        let kind = match (&self.metric, &self.query) {
            (Some(m), None) => {
                if !exposition_name(m) {
                    return Err(err(format!("metric: {m:?} is not a metric name")));
                }
                for k in self.labels.keys() {
                    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(err(format!("labels: {k:?} is not a label name")));
                    }
                }
                Kind::Exposition {
                    metric: m.clone(),
                    labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                }
            }
            (None, Some(q)) => {
                if q.trim().is_empty() || q.len() > 8192 {
                    return Err(err("query: expected a PromQL expression (up to 8 KiB)".into()));
                }
                if !self.labels.is_empty() {
                    return Err(err("labels: only for metric (put the matchers in the query)".into()));
                }
                Kind::Query { expr: q.clone() }
            }
            (Some(_), Some(_)) => return Err(err("metric and query: give one (metric reads an exposition endpoint, query asks a Prometheus server)".into())),
            (None, None) => return Err(err("metric or query: one is required".into())),
        };
        let rate_ms = match &self.rate {
            None => None,
            Some(r) => {
                if matches!(kind, Kind::Query { .. }) {
                    return Err(err(
                        "rate: only for metric (in a query, write rate(…[1m]))".into()
                    ));
                }
                Some(ms("rate", r, 1_000, 3_600_000).map_err(err)?)
            }
        };
        let aggregate = match self.aggregate.as_deref() {
            None | Some("sum") => Aggregate::Sum,
            Some("max") => Aggregate::Max,
            Some("min") => Aggregate::Min,
            Some("avg") => Aggregate::Avg,
            Some(o) => {
                return Err(err(format!(
                    "aggregate: expected \"sum\", \"max\", \"min\" or \"avg\", found {o:?}"
                )))
            }
        };
        if let Some(l) = &self.domain_label {
            if l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(err(format!("domain_label: {l:?} is not a label name")));
            }
            if self.aggregate.is_some() {
                return Err(err("aggregate and domain_label: series with the same domain are summed; aggregate is for one host-wide value".into()));
            }
        }
        let interval_ms = ms(
            "interval",
            self.interval.as_deref().unwrap_or("5s"),
            100,
            3_600_000,
        )
        .map_err(err)?;
        let timeout_ms = match &self.timeout {
            Some(t) => ms("timeout", t, 100, 300_000).map_err(err)?,
            None => interval_ms.clamp(100, 5_000),
        };
        // a value outlives a few missed polls, not more
        let ttl_ms = match &self.ttl {
            Some(t) => ms("ttl", t, 1_000, 30 * 86_400_000).map_err(err)?,
            None => (3 * interval_ms + timeout_ms).max(1_000),
        };
        if ttl_ms <= interval_ms {
            return Err(err(format!(
                "ttl: {} is not longer than the interval ({}): the signal would lapse between two polls",
                self.ttl.as_deref().unwrap_or_default(),
                self.interval.as_deref().unwrap_or("5s")
            )));
        }
        if let Some(r) = rate_ms {
            if r < 2 * interval_ms {
                return Err(err(format!(
                    "rate: the window ({}) must span at least two polls (interval {})",
                    self.rate.as_deref().unwrap_or_default(),
                    self.interval.as_deref().unwrap_or("5s")
                )));
            }
        }
        let cluster = match self.scope.as_deref() {
            None | Some("host") => false,
            Some("cluster") => true,
            Some(o) => {
                return Err(err(format!(
                    "scope: expected \"host\" or \"cluster\", found {o:?}"
                )))
            }
        };
        let max_body = match self.max_body {
            None => DEFAULT_MAX_BODY,
            Some(n) if (1024..=64 << 20).contains(&n) => n,
            Some(n) => {
                return Err(err(format!(
                    "max_body: {n} is out of range: expected 1024 to 67108864 bytes"
                )))
            }
        };
        Ok(SourceConfig {
            signal,
            url,
            kind,
            rate_ms,
            aggregate,
            domain_label: self.domain_label.clone(),
            interval_ms,
            timeout_ms,
            ttl_ms,
            cluster,
            bearer_token_file: self.bearer_token_file.clone(),
            ca_file: self.ca_file.clone(),
            max_body,
        })
    }
}

fn exposition_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// Checks every source of a config; two with the same signal (and both
/// host-wide, or both per domain) would overwrite each other.
pub fn check_all(files: &[SourceFile]) -> Result<Vec<SourceConfig>, SourceError> {
    if files.len() > MAX_SOURCES {
        return Err(SourceError {
            index: MAX_SOURCES + 1,
            signal: None,
            message: format!("{} sources, over the limit of {MAX_SOURCES}", files.len()),
        });
    }
    let mut out: Vec<SourceConfig> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let c = f.check(i + 1)?;
        if let Some(j) = out.iter().position(|o| o.signal == c.signal) {
            return Err(SourceError {
                index: i + 1,
                signal: Some(c.signal.clone()),
                message: format!(
                    "signals.source[{}] sets the same signal: each signal has one source",
                    j + 1
                ),
            });
        }
        out.push(c);
    }
    Ok(out)
}

/// One value a poll produced: for a domain (by the label's value, a name
/// or UUID) or host-wide.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub domain: Option<String>,
    pub value: f64,
}

/// What a poll's series become, across polls (the rate of a counter needs
/// the earlier readings).
#[derive(Debug, Default)]
pub struct Sampler {
    /// Per series: readings `(t, value adjusted for resets)` inside the
    /// window, and the last raw reading with the offset resets added.
    rates: HashMap<String, Counter>,
}

#[derive(Debug, Default)]
struct Counter {
    points: VecDeque<(i64, f64)>,
    last_raw: f64,
    offset: f64,
    seen: i64,
}

impl Sampler {
    /// The values of one poll at monotonic time `t_ms`. Empty: nothing to
    /// set (no series matched, or a rate has one reading so far).
    pub fn values(
        &mut self,
        cfg: &SourceConfig,
        series: &[Series],
        t_ms: i64,
    ) -> Result<Vec<Value>, String> {
        let matched: Vec<&Series> = match &cfg.kind {
            Kind::Exposition { labels, .. } => series
                .iter()
                .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(v.as_str())))
                .collect(),
            Kind::Query { .. } => series.iter().collect(),
        };
        // each series' own value (its rate for a counter)
        let mut per: Vec<(&Series, f64)> = Vec::new();
        for s in matched {
            let v = match cfg.rate_ms {
                None => Some(s.value),
                Some(window) => self.rate(&s.key(), s.value, t_ms, window),
            };
            if let Some(v) = v {
                if v.is_nan() {
                    continue;
                }
                per.push((s, v));
            }
        }
        if let Some(window) = cfg.rate_ms {
            // a series gone for longer than the window starts again
            self.rates.retain(|_, c| t_ms - c.seen <= window);
        }
        let mut out: Vec<Value> = Vec::new();
        match &cfg.domain_label {
            Some(label) => {
                for (s, v) in per {
                    let Some(d) = s.label(label).filter(|d| !d.is_empty()) else {
                        continue;
                    };
                    match out.iter_mut().find(|o| o.domain.as_deref() == Some(d)) {
                        Some(o) => o.value += v,
                        None => out.push(Value {
                            domain: Some(d.to_string()),
                            value: v,
                        }),
                    }
                }
            }
            None if !per.is_empty() => {
                let vals = per.iter().map(|(_, v)| *v);
                let value = match cfg.aggregate {
                    Aggregate::Sum => vals.sum(),
                    Aggregate::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                    Aggregate::Min => vals.fold(f64::INFINITY, f64::min),
                    Aggregate::Avg => vals.sum::<f64>() / per.len() as f64,
                };
                out.push(Value {
                    domain: None,
                    value,
                });
            }
            None => {}
        }
        if let Some(bad) = out.iter().find(|v| !v.value.is_finite()) {
            return Err(format!(
                "the value is {} (a signal is a finite number)",
                bad.value
            ));
        }
        Ok(out)
    }

    /// A counter's per-second rate over the window: readings are kept for
    /// it, a reading lower than the last one is a reset (the counter
    /// restarted from 0, as Prometheus's rate() reads it).
    fn rate(&mut self, key: &str, raw: f64, t: i64, window: i64) -> Option<f64> {
        if !raw.is_finite() {
            return None;
        }
        let c = self.rates.entry(key.to_string()).or_default();
        if !c.points.is_empty() && raw < c.last_raw {
            c.offset += c.last_raw;
        }
        c.last_raw = raw;
        c.seen = t;
        c.points.push_back((t, raw + c.offset));
        // keep one reading at or before the window's start
        while c.points.len() > 2 && c.points[1].0 <= t - window {
            c.points.pop_front();
        }
        let (t0, v0) = *c.points.front()?;
        let (t1, v1) = *c.points.back()?;
        (t1 > t0).then(|| (v1 - v0) / ((t1 - t0) as f64 / 1000.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Result<SourceConfig, SourceError> {
        #[derive(Deserialize)]
        struct W {
            source: SourceFile,
        }
        let w: W = toml::from_str(text).map_err(|e| SourceError {
            index: 0,
            signal: None,
            message: e.to_string(),
        })?;
        w.source.check(1)
    }

    fn series(name: &str, labels: &[(&str, &str)], value: f64) -> Series {
        Series {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    const HAPROXY: &str = r#"[source]
signal = "lb.web.rps"
url = "http://127.0.0.1:8404/metrics"
metric = "haproxy_frontend_http_requests_total"
labels = { proxy = "web" }
rate = "10s"
interval = "1s"
"#;

    #[test]
    fn defaults_and_checks() {
        let c = src(HAPROXY).unwrap();
        assert_eq!(c.interval_ms, 1_000);
        assert_eq!(c.timeout_ms, 1_000);
        assert_eq!(c.ttl_ms, 4_000);
        assert_eq!(c.rate_ms, Some(10_000));
        assert!(!c.cluster);
        for (bad, what) in [
            ("[source]\nurl = \"http://x/\"\nmetric = \"m\"", "signal: the name"),
            ("[source]\nsignal = \"Bad Name\"\nurl = \"http://x/\"\nmetric = \"m\"", "invalid name"),
            ("[source]\nsignal = \"s\"\nmetric = \"m\"", "url: required"),
            ("[source]\nsignal = \"s\"\nurl = \"ftp://x/\"\nmetric = \"m\"", "url:"),
            ("[source]\nsignal = \"s\"\nurl = \"http://x/\"", "metric or query"),
            ("[source]\nsignal = \"s\"\nurl = \"http://x/\"\nmetric = \"m\"\nquery = \"up\"", "give one"),
            ("[source]\nsignal = \"s\"\nurl = \"http://x/\"\nmetric = \"m-x\"", "not a metric name"),
            ("[source]\nsignal = \"s\"\nurl = \"http://x/\"\nquery = \"up\"\nrate = \"1m\"", "only for metric"),
            ("[source]\nsignal = \"s\"\nurl = \"http://x/\"\nmetric = \"m\"\nrate = \"5s\"", "two polls"),
            ("[source]\nsignal = \"s\"\nurl = \"http://x/\"\nmetric = \"m\"\nttl = \"2s\"", "not longer than the interval"),
            ("[source]\nsignal = \"s\"\nurl = \"http://x/\"\nmetric = \"m\"\nscope = \"world\"", "scope"),
            ("[source]\nsignal = \"s\"\nurl = \"http://x/\"\nmetric = \"m\"\naggregate = \"median\"", "aggregate"),
            ("[source]\nsignal = \"s\"\nurl = \"http://x/\"\nmetric = \"m\"\ninterval = \"0s\"", "out of range"),
            ("[source]\nsignal = \"s\"\nurl = \"http://x/\"\nmetric = \"m\"\nintervall = \"1s\"", "unknown field"),
        ] {
            let e = src(bad).unwrap_err().to_string();
            assert!(e.contains(what), "{bad:?}: {e}");
        }
        let two = vec![src_file(HAPROXY), src_file(HAPROXY)];
        let e = check_all(&two).unwrap_err().to_string();
        assert!(
            e.contains("signals.source[2] (lb.web.rps)") && e.contains("[1] sets the same"),
            "{e}"
        );
    }

    fn src_file(text: &str) -> SourceFile {
        #[derive(Deserialize)]
        struct W {
            source: SourceFile,
        }
        toml::from_str::<W>(text).unwrap().source
    }

    #[test]
    fn a_counter_becomes_a_rate_across_resets() {
        let c = src(HAPROXY).unwrap();
        let mut s = Sampler::default();
        let poll = |s: &mut Sampler, t: i64, v: f64| {
            s.values(
                &c,
                &[
                    series(
                        "haproxy_frontend_http_requests_total",
                        &[("proxy", "web")],
                        v,
                    ),
                    series(
                        "haproxy_frontend_http_requests_total",
                        &[("proxy", "stats")],
                        1e6,
                    ),
                ],
                t,
            )
            .unwrap()
        };
        // one reading: no rate yet (absent, not 0)
        assert!(poll(&mut s, 0, 100.0).is_empty());
        assert_eq!(
            poll(&mut s, 1_000, 110.0),
            vec![Value {
                domain: None,
                value: 10.0
            }]
        );
        assert_eq!(poll(&mut s, 2_000, 130.0)[0].value, 15.0);
        // HAProxy restarted: 130 → 5 is 5 more, not -125
        assert_eq!(poll(&mut s, 3_000, 5.0)[0].value, 35.0 / 3.0);
        // the window slides: readings older than 10 s go
        for t in 4..=20 {
            poll(&mut s, t * 1_000, 5.0 + (t - 3) as f64 * 20.0);
        }
        assert_eq!(poll(&mut s, 21_000, 5.0 + 18.0 * 20.0)[0].value, 20.0);
    }

    #[test]
    fn per_domain_values_by_label_and_aggregates() {
        let mut c = src(
            "[source]\nsignal = \"vm.sessions\"\nurl = \"http://x/\"\nmetric = \"haproxy_server_current_sessions\"\ndomain_label = \"server\"",
        )
        .unwrap();
        let body = [
            series(
                "haproxy_server_current_sessions",
                &[("proxy", "app"), ("server", "vm1")],
                3.0,
            ),
            series(
                "haproxy_server_current_sessions",
                &[("proxy", "api"), ("server", "vm1")],
                2.0,
            ),
            series(
                "haproxy_server_current_sessions",
                &[("proxy", "app"), ("server", "vm2")],
                7.0,
            ),
            series("haproxy_server_current_sessions", &[("proxy", "app")], 9.0),
        ];
        let v = Sampler::default().values(&c, &body, 0).unwrap();
        assert_eq!(
            v,
            vec![
                Value {
                    domain: Some("vm1".into()),
                    value: 5.0
                },
                Value {
                    domain: Some("vm2".into()),
                    value: 7.0
                }
            ]
        );
        c.domain_label = None;
        for (a, want) in [
            (Aggregate::Sum, 21.0),
            (Aggregate::Max, 9.0),
            (Aggregate::Min, 2.0),
            (Aggregate::Avg, 5.25),
        ] {
            c.aggregate = a;
            assert_eq!(
                Sampler::default().values(&c, &body, 0).unwrap()[0].value,
                want
            );
        }
        // nothing matched: nothing set
        c.kind = Kind::Exposition {
            metric: "m".into(),
            labels: vec![("proxy".into(), "none".into())],
        };
        assert!(Sampler::default().values(&c, &body, 0).unwrap().is_empty());
        // an infinite value is refused with why
        c.kind = Kind::Query { expr: "x".into() };
        let e = Sampler::default()
            .values(&c, &[series("", &[], f64::INFINITY)], 0)
            .unwrap_err();
        assert!(e.contains("finite"), "{e}");
    }
}
