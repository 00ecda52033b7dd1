//! The sources' tasks on the API's tokio runtime: one per source, polling
//! at its interval, handing the values to the control loop as a command
//! (the loop never waits for a source: a slow or dead one only delays its
//! own task), and keeping what `signal-list` and `/metrics` show of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use super::http::{self, Target};
use super::{exposition, query, Kind, Sampler, SourceConfig};
use crate::api::command::{Command, Envelope, Reply, SourceBatch};
use crate::time::Millis;

/// How long a task waits for the loop to take its values.
const LOOP_ANSWER: Duration = Duration::from_secs(10);
/// Domains named by a source and not on this host, shown at most.
const UNMATCHED_SHOWN: usize = 8;

/// What `signal-list` shows of one source.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Status {
    pub signal: String,
    /// "exposition" or "query".
    pub kind: &'static str,
    pub url: String,
    pub interval_ms: i64,
    pub polls: u64,
    pub failures: u64,
    /// The last poll succeeded.
    pub up: bool,
    pub last_success: Option<Millis>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    /// Values the last good poll set (one host-wide, or one per domain).
    pub values: usize,
    /// The last host-wide value set, if any.
    pub value: Option<f64>,
    /// Domains the last poll named (by `domain_label`) that are not on this
    /// host: their values are not set here.
    pub unmatched: Vec<String>,
    /// How long the last poll took.
    pub took_ms: u64,
}

/// Every source's status, shared by the tasks and the readers.
#[derive(Debug, Default, Clone)]
pub struct Board(Arc<Mutex<HashMap<String, Status>>>);

impl Board {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Status>> {
        // a task that panicked holding it left plain data: still readable
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sources in force, by signal name.
    pub fn snapshot(&self) -> Vec<Status> {
        let mut v: Vec<Status> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.signal.cmp(&b.signal));
        v
    }
}

/// What one fetch is: sources that read the same URL the same way share
/// it (HAProxy's exporter read for five signals is read once).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FetchKey {
    url: String,
    /// The query expression (a query source's fetch is its own).
    query: Option<String>,
    interval_ms: i64,
    timeout_ms: i64,
    max_body: u64,
    bearer_token_file: Option<std::path::PathBuf>,
    ca_file: Option<std::path::PathBuf>,
}

impl FetchKey {
    fn of(c: &SourceConfig) -> FetchKey {
        FetchKey {
            url: c.url.clone(),
            query: match &c.kind {
                Kind::Query { expr } => Some(expr.clone()),
                Kind::Exposition { .. } => None,
            },
            interval_ms: c.interval_ms,
            timeout_ms: c.timeout_ms,
            max_body: c.max_body,
            bearer_token_file: c.bearer_token_file.clone(),
            ca_file: c.ca_file.clone(),
        }
    }
}

/// The sources of a config, by the fetch they share (in the file's order).
fn groups(configs: &[SourceConfig]) -> Vec<Vec<SourceConfig>> {
    let mut out: Vec<(FetchKey, Vec<SourceConfig>)> = Vec::new();
    for c in configs {
        let k = FetchKey::of(c);
        match out.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(c.clone()),
            None => out.push((k, vec![c.clone()])),
        }
    }
    out.into_iter().map(|(_, m)| m).collect()
}

/// The running sources.
pub struct Sources {
    rt: tokio::runtime::Handle,
    to_loop: crossbeam_channel::Sender<Envelope>,
    clock: fn() -> Millis,
    /// One task per fetch group.
    running: Vec<(Vec<SourceConfig>, tokio::task::AbortHandle)>,
    board: Board,
}

impl Sources {
    pub fn new(
        rt: tokio::runtime::Handle,
        to_loop: crossbeam_channel::Sender<Envelope>,
        clock: fn() -> Millis,
    ) -> Sources {
        Sources {
            rt,
            to_loop,
            clock,
            running: Vec::new(),
            board: Board::default(),
        }
    }

    pub fn board(&self) -> Board {
        self.board.clone()
    }

    /// Starts the sources of a (re)loaded config: an unchanged fetch group
    /// keeps running (and its counter readings), a changed one starts
    /// again, a removed one stops (the signals it set live out their TTL).
    pub fn apply(&mut self, configs: &[SourceConfig]) {
        let wanted = groups(configs);
        let (keep, stop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|(g, _)| wanted.contains(g));
        for (g, task) in stop {
            task.abort();
            for c in g {
                // a source changed in place keeps its running totals
                if !configs.iter().any(|n| n.signal == c.signal) {
                    self.board.lock().remove(&c.signal);
                    info!(signal = %c.signal, "signal source stopped (config reloaded)");
                }
            }
        }
        self.running = keep;
        for g in wanted {
            if self.running.iter().any(|(r, _)| *r == g) {
                continue;
            }
            {
                let mut b = self.board.lock();
                for c in &g {
                    let old = b.remove(&c.signal).unwrap_or_default();
                    b.insert(
                        c.signal.clone(),
                        Status {
                            signal: c.signal.clone(),
                            kind: match c.kind {
                                Kind::Exposition { .. } => "exposition",
                                Kind::Query { .. } => "query",
                            },
                            url: c.url.clone(),
                            interval_ms: c.interval_ms,
                            polls: old.polls,
                            failures: old.failures,
                            ..Default::default()
                        },
                    );
                    info!(signal = %c.signal, url = %c.url, interval_ms = c.interval_ms, "signal source started");
                }
            }
            let task = self.rt.spawn(run(
                g.clone(),
                self.to_loop.clone(),
                self.board.clone(),
                self.clock,
            ));
            self.running.push((g, task.abort_handle()));
        }
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        for (_, t) in &self.running {
            t.abort();
        }
    }
}

/// One fetch group's task: one fetch an interval, each member's values
/// from it, all handed to the loop in one command.
async fn run(
    members: Vec<SourceConfig>,
    to_loop: crossbeam_channel::Sender<Envelope>,
    board: Board,
    clock: fn() -> Millis,
) {
    let Some(first) = members.first().cloned() else {
        return;
    };
    let Ok(target) = Target::parse(&first.url) else {
        return; // checked when the config was read
    };
    let path = match &first.kind {
        Kind::Exposition { .. } => target.path.clone(),
        Kind::Query { expr } => {
            let base = target
                .path
                .split('?')
                .next()
                .unwrap_or("/")
                .trim_end_matches('/');
            let base = if base.ends_with("/api/v1/query") {
                base.to_string()
            } else {
                format!("{base}/api/v1/query")
            };
            format!("{base}?query={}", crate::api::client::seg(expr))
        }
    };
    let accept = match first.kind {
        Kind::Exposition { .. } => "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1",
        Kind::Query { .. } => "application/json",
    };
    let mut samplers: Vec<Sampler> = members.iter().map(|_| Sampler::default()).collect();
    let mut tls = None;
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(first.interval_ms as u64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // what was last logged per member: a change of state is logged once
    let mut logged: Vec<Option<Result<(), String>>> = vec![None; members.len()];
    loop {
        ticker.tick().await;
        let t0 = Instant::now();
        let fetched = fetch(&first, &target, &path, accept, &mut tls).await;
        let t = start.elapsed().as_millis() as i64;
        let values: Vec<Result<Vec<super::Value>, String>> = match fetched {
            Err(e) => members.iter().map(|_| Err(e.clone())).collect(),
            Ok(body) => read(&members, &body)
                .into_iter()
                .zip(members.iter().zip(samplers.iter_mut()))
                .map(|(series, (c, sampler))| series.and_then(|s| sampler.values(c, &s, t)))
                .collect(),
        };
        let outcomes = hand_over(&members, values, &to_loop).await;
        let now = clock();
        let took_ms = t0.elapsed().as_millis() as u64;
        for ((cfg, outcome), logged) in members.iter().zip(outcomes).zip(logged.iter_mut()) {
            let state = {
                let mut b = board.lock();
                let Some(s) = b.get_mut(&cfg.signal) else {
                    return; // removed by a reload
                };
                s.polls += 1;
                s.took_ms = took_ms;
                match &outcome {
                    Ok(done) => {
                        s.up = true;
                        s.last_success = Some(now);
                        s.values = done.values;
                        s.value = done.value;
                        s.unmatched = done.unmatched.clone();
                        Ok(())
                    }
                    Err(e) => {
                        s.up = false;
                        s.failures += 1;
                        s.last_error = Some(e.clone());
                        s.last_error_at = Some(now);
                        Err(e.clone())
                    }
                }
            };
            if logged.as_ref() != Some(&state) {
                match &state {
                    Ok(()) if logged.is_some() => {
                        info!(signal = %cfg.signal, url = %cfg.url, "signal source answering again")
                    }
                    Ok(()) => {
                        info!(signal = %cfg.signal, url = %cfg.url, "signal source answering")
                    }
                    Err(e) => {
                        warn!(signal = %cfg.signal, url = %cfg.url, error = %e, ttl_ms = cfg.ttl_ms, "signal source failed; its signal keeps its last value until its TTL, then is absent")
                    }
                }
                *logged = Some(state);
            }
        }
    }
}

/// What the loop did with one poll's values.
struct Done {
    values: usize,
    value: Option<f64>,
    unmatched: Vec<String>,
}

async fn fetch(
    cfg: &SourceConfig,
    target: &Target,
    path: &str,
    accept: &str,
    tls: &mut Option<Arc<tokio_rustls::rustls::ClientConfig>>,
) -> Result<hyper::body::Bytes, String> {
    if target.tls && tls.is_none() {
        *tls = Some(http::tls_config(cfg.ca_file.as_deref())?);
    }
    // read at every poll: a rotated token is used from the next one
    let token = match &cfg.bearer_token_file {
        Some(p) => Some(http::read_token(p).map_err(|e| e.to_string())?),
        None => None,
    };
    http::get(
        target,
        path,
        accept,
        token.as_deref(),
        tls.as_ref(),
        Duration::from_millis(cfg.timeout_ms as u64),
        cfg.max_body,
    )
    .await
    .map_err(|e| e.to_string())
}

/// Each member's series from one body (read once for all of them).
fn read(members: &[SourceConfig], body: &[u8]) -> Vec<Result<Vec<exposition::Series>, String>> {
    let fail = |e: String| members.iter().map(|_| Err(e.clone())).collect();
    match &members[0].kind {
        Kind::Query { .. } => match query::decode(body) {
            Err(e) => fail(e),
            Ok(s) if s.is_empty() => fail("the query answered no series".into()),
            Ok(s) => members.iter().map(|_| Ok(s.clone())).collect(),
        },
        Kind::Exposition { .. } => {
            let text = match std::str::from_utf8(body) {
                Ok(t) => t,
                Err(e) => return fail(format!("the body is not UTF-8: {e}")),
            };
            let names: Vec<&str> = members
                .iter()
                .map(|m| match &m.kind {
                    Kind::Exposition { metric, .. } => metric.as_str(),
                    Kind::Query { .. } => "",
                })
                .collect();
            let all = match exposition::parse_many(text, &names) {
                Ok(a) => a,
                Err(e) => return fail(format!("the exposition does not parse: {e}")),
            };
            all.into_iter()
                .zip(members)
                .map(|(series, m)| {
                    let (metric, labels) = match &m.kind {
                        Kind::Exposition { metric, labels } => (metric, labels),
                        Kind::Query { .. } => return Ok(series),
                    };
                    if series.is_empty() {
                        return Err(format!("no sample named {metric} in the answer"));
                    }
                    if !series
                        .iter()
                        .any(|s| labels.iter().all(|(k, v)| s.label(k) == Some(v.as_str())))
                    {
                        let want: Vec<String> =
                            labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                        return Err(format!(
                            "no sample of {metric} has the labels {{{}}}",
                            want.join(",")
                        ));
                    }
                    Ok(series)
                })
                .collect()
        }
    }
}

/// The values to the loop, which sets them as signals: one command for
/// the group; each member's outcome.
async fn hand_over(
    members: &[SourceConfig],
    values: Vec<Result<Vec<super::Value>, String>>,
    to_loop: &crossbeam_channel::Sender<Envelope>,
) -> Vec<Result<Done, String>> {
    let mut out: Vec<Result<Done, String>> = Vec::with_capacity(members.len());
    let mut batches = Vec::new();
    // which member each batch is
    let mut of = Vec::new();
    for (i, (c, v)) in members.iter().zip(values).enumerate() {
        match v {
            Err(e) => out.push(Err(e)),
            // a counter's first reading: its rate comes with the next poll
            Ok(v) if v.is_empty() => out.push(Ok(Done {
                values: 0,
                value: None,
                unmatched: vec![],
            })),
            Ok(v) => {
                out.push(Ok(Done {
                    values: 0,
                    value: v.iter().find(|x| x.domain.is_none()).map(|x| x.value),
                    unmatched: vec![],
                }));
                of.push(i);
                batches.push(SourceBatch {
                    name: c.signal.clone(),
                    values: v.into_iter().map(|x| (x.domain, x.value)).collect(),
                    ttl_ms: c.ttl_ms,
                    cluster: c.cluster,
                });
            }
        }
    }
    if batches.is_empty() {
        return out;
    }
    let answer = ask(to_loop, batches).await;
    for (k, i) in of.into_iter().enumerate() {
        let r = match &answer {
            Err(e) => Err(e.clone()),
            Ok(v) => {
                let per = &v["per"][k];
                match per["errors"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(|e| e.as_str())
                {
                    Some(e) => Err(e.to_string()),
                    None => Ok(Done {
                        values: per["set"].as_u64().unwrap_or(0) as usize,
                        value: out[i].as_ref().ok().and_then(|d| d.value),
                        unmatched: per["unmatched"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|d| d.as_str().map(str::to_string))
                                    .take(UNMATCHED_SHOWN)
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }),
                }
            }
        };
        out[i] = r;
    }
    out
}

async fn ask(
    to_loop: &crossbeam_channel::Sender<Envelope>,
    batches: Vec<SourceBatch>,
) -> Result<serde_json::Value, String> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    to_loop
        .try_send(Envelope {
            command: Command::SourceValues { batches },
            reply,
        })
        .map_err(|_| "the daemon's loop is busy: the values were not set".to_string())?;
    match tokio::time::timeout(LOOP_ANSWER, answer)
        .await
        .map_err(|_| "the daemon's loop did not take the values in time".to_string())?
        .map_err(|_| "the daemon is stopping".to_string())?
    {
        Reply::Ok(v) => Ok(v),
        Reply::Err { message, .. } => Err(message),
        Reply::Text(_) => Err("unexpected answer from the loop".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(signal: &str, url: &str, kind: Kind, interval_ms: i64) -> SourceConfig {
        SourceConfig {
            signal: signal.into(),
            url: url.into(),
            kind,
            rate_ms: None,
            aggregate: super::super::Aggregate::Sum,
            domain_label: None,
            interval_ms,
            timeout_ms: 1_000,
            ttl_ms: 10_000,
            cluster: false,
            bearer_token_file: None,
            ca_file: None,
            max_body: 1 << 20,
        }
    }

    #[test]
    fn sources_of_one_url_share_a_fetch() {
        let m = |n: &str| Kind::Exposition {
            metric: n.into(),
            labels: vec![],
        };
        let q = |e: &str| Kind::Query { expr: e.into() };
        let cfg = vec![
            src("a", "http://h:1/metrics", m("x"), 1_000),
            src("b", "http://h:2/metrics", m("x"), 1_000),
            src("c", "http://h:1/metrics", m("y"), 1_000),
            src("d", "http://h:1/metrics", m("z"), 5_000),
            src("e", "http://p:9090", q("up"), 1_000),
            src("f", "http://p:9090", q("sum(up)"), 1_000),
            src("g", "http://p:9090", q("up"), 1_000),
        ];
        let grouped = groups(&cfg);
        let g: Vec<Vec<&str>> = grouped
            .iter()
            .map(|g| g.iter().map(|c| c.signal.as_str()).collect())
            .collect();
        assert_eq!(
            g,
            vec![
                vec!["a", "c"],
                vec!["b"],
                vec!["d"],
                vec!["e", "g"],
                vec!["f"]
            ]
        );
    }
}
