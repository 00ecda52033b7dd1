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
use crate::api::command::{Command, Envelope, Reply};
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

/// The running sources.
pub struct Sources {
    rt: tokio::runtime::Handle,
    to_loop: crossbeam_channel::Sender<Envelope>,
    clock: fn() -> Millis,
    running: Vec<(SourceConfig, tokio::task::AbortHandle)>,
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

    /// Starts the sources of a (re)loaded config: an unchanged one keeps
    /// running (and its counter readings), a changed one starts again, a
    /// removed one stops (the signals it set live out their TTL).
    pub fn apply(&mut self, configs: &[SourceConfig]) {
        let (keep, stop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|(c, _)| configs.contains(c));
        for (c, task) in stop {
            task.abort();
            // a source changed in place keeps its running totals
            if !configs.iter().any(|n| n.signal == c.signal) {
                self.board.lock().remove(&c.signal);
            }
            info!(signal = %c.signal, "signal source stopped (config reloaded)");
        }
        self.running = keep;
        for c in configs {
            if self.running.iter().any(|(r, _)| r == c) {
                continue;
            }
            {
                let mut b = self.board.lock();
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
            }
            let task = self.rt.spawn(run(
                c.clone(),
                self.to_loop.clone(),
                self.board.clone(),
                self.clock,
            ));
            info!(signal = %c.signal, url = %c.url, interval_ms = c.interval_ms, "signal source started");
            self.running.push((c.clone(), task.abort_handle()));
        }
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        for (_, t) in &self.running {
            t.abort();
        }
    }
}

/// One source's task.
async fn run(
    cfg: SourceConfig,
    to_loop: crossbeam_channel::Sender<Envelope>,
    board: Board,
    clock: fn() -> Millis,
) {
    let Ok(target) = Target::parse(&cfg.url) else {
        return; // checked when the config was read
    };
    let path = match &cfg.kind {
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
    let accept = match cfg.kind {
        Kind::Exposition { .. } => "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1",
        Kind::Query { .. } => "application/json",
    };
    let mut sampler = Sampler::default();
    let mut tls = None;
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(cfg.interval_ms as u64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // what was last logged: a change of state is logged once
    let mut logged: Option<Result<(), String>> = None;
    loop {
        ticker.tick().await;
        let t0 = Instant::now();
        let result = poll(&cfg, &target, &path, accept, &mut tls, &mut sampler, start).await;
        let outcome = match result {
            Ok(values) => hand_over(&cfg, values, &to_loop).await,
            Err(e) => Err(e),
        };
        let now = clock();
        let took_ms = t0.elapsed().as_millis() as u64;
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
                Ok(()) => info!(signal = %cfg.signal, url = %cfg.url, "signal source answering"),
                Err(e) => {
                    warn!(signal = %cfg.signal, url = %cfg.url, error = %e, ttl_ms = cfg.ttl_ms, "signal source failed; its signal keeps its last value until its TTL, then is absent")
                }
            }
            logged = Some(state);
        }
    }
}

/// What the loop did with one poll's values.
struct Done {
    values: usize,
    value: Option<f64>,
    unmatched: Vec<String>,
}

async fn poll(
    cfg: &SourceConfig,
    target: &Target,
    path: &str,
    accept: &str,
    tls: &mut Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    sampler: &mut Sampler,
    start: Instant,
) -> Result<Vec<super::Value>, String> {
    if target.tls && tls.is_none() {
        *tls = Some(http::tls_config(cfg.ca_file.as_deref())?);
    }
    // read at every poll: a rotated token is used from the next one
    let token = match &cfg.bearer_token_file {
        Some(p) => Some(http::read_token(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let body = http::get(
        target,
        path,
        accept,
        token.as_deref(),
        tls.as_ref(),
        Duration::from_millis(cfg.timeout_ms as u64),
        cfg.max_body,
    )
    .await
    .map_err(|e| e.to_string())?;
    let t = start.elapsed().as_millis() as i64;
    let series = match &cfg.kind {
        Kind::Exposition { metric, labels } => {
            let text =
                std::str::from_utf8(&body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
            let all = exposition::parse(text, metric)
                .map_err(|e| format!("the exposition does not parse: {e}"))?;
            if all.is_empty() {
                return Err(format!("no sample named {metric} in the answer"));
            }
            if !all
                .iter()
                .any(|s| labels.iter().all(|(k, v)| s.label(k) == Some(v.as_str())))
            {
                let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                return Err(format!(
                    "no sample of {metric} has the labels {{{}}}",
                    want.join(",")
                ));
            }
            all
        }
        Kind::Query { .. } => {
            let s = query::decode(&body)?;
            if s.is_empty() {
                return Err("the query answered no series".into());
            }
            s
        }
    };
    sampler.values(cfg, &series, t)
}

/// The values to the loop, which sets them as signals.
async fn hand_over(
    cfg: &SourceConfig,
    values: Vec<super::Value>,
    to_loop: &crossbeam_channel::Sender<Envelope>,
) -> Result<Done, String> {
    if values.is_empty() {
        // a counter's first reading: its rate comes with the next poll
        return Ok(Done {
            values: 0,
            value: None,
            unmatched: vec![],
        });
    }
    let host_value = values.iter().find(|v| v.domain.is_none()).map(|v| v.value);
    let (reply, answer) = tokio::sync::oneshot::channel();
    let command = Command::SourceValues {
        name: cfg.signal.clone(),
        values: values.into_iter().map(|v| (v.domain, v.value)).collect(),
        ttl_ms: cfg.ttl_ms,
        cluster: cfg.cluster,
    };
    to_loop
        .try_send(Envelope { command, reply })
        .map_err(|_| "the daemon's loop is busy: the values were not set".to_string())?;
    let reply = tokio::time::timeout(LOOP_ANSWER, answer)
        .await
        .map_err(|_| "the daemon's loop did not take the values in time".to_string())?
        .map_err(|_| "the daemon is stopping".to_string())?;
    match reply {
        Reply::Ok(v) => {
            let set = v["set"].as_array().map_or(0, Vec::len);
            let unmatched: Vec<String> = v["unmatched"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_str().map(str::to_string))
                        .take(UNMATCHED_SHOWN)
                        .collect()
                })
                .unwrap_or_default();
            if let Some(e) = v["errors"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(|e| e.as_str())
            {
                return Err(e.to_string());
            }
            Ok(Done {
                values: set,
                value: host_value,
                unmatched,
            })
        }
        Reply::Err { message, .. } => Err(message),
        Reply::Text(_) => Err("unexpected answer from the loop".into()),
    }
}
