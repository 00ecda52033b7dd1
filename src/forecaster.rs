//! The forecast worker: one thread that owns the metric history (in memory
//! and in `history.redb`) and the fits, so that neither writing history nor
//! fitting ever runs on the control loop's thread (SPEC §7).
//!
//! The loop sends it each tick's values and the set of series forecast
//! conditions use; it records them per minute, writes finished minutes once a
//! minute, compacts hourly, refits every series in use hourly (and a series at
//! once when it becomes wanted or history is imported for it) and sends every
//! new [`FitState`] back. Bad news is sent as a state, never a panic: a fit
//! that fails is `Failed` with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::collector::Millis;
use crate::forecast::{fit, FitError, FitState, STEP_MS};
use crate::history::{History, SeriesKey, HOUR_MS, MINUTE_MS};
use crate::store::{HistoryDb, StoreError};

/// What the loop tells the worker.
pub enum ToWorker {
    /// One tick's values of the metrics forecast conditions name.
    Samples(Vec<(SeriesKey, Millis, f64)>),
    /// The series forecast conditions use now.
    Want(BTreeSet<SeriesKey>),
    /// Imported history, already checked: applied whole, then the reply.
    Import {
        points: Vec<(SeriesKey, Millis, f64)>,
        reply: Box<dyn FnOnce(Result<ImportReport, String>) + Send>,
    },
    /// Writes what is open and ends the thread.
    Stop,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportReport {
    /// Rows read.
    pub rows: usize,
    /// Rows kept (the others were older than the retention or in the future).
    pub kept: usize,
    pub series: usize,
}

/// A series' forecast state changed (`None`: no longer wanted).
#[derive(Debug, Clone)]
pub struct FitNews {
    pub key: SeriesKey,
    pub state: Option<FitState>,
}

pub struct WorkerConfig {
    pub state_dir: PathBuf,
    pub retention: Millis,
    /// Milliseconds since the epoch.
    pub clock: fn() -> Millis,
    pub refit_every: Millis,
}

/// The worker's state; [`Worker::step`] is driven by its thread (and by tests).
pub struct Worker {
    cfg: WorkerConfig,
    db: HistoryDb,
    history: History,
    wanted: BTreeSet<SeriesKey>,
    /// When each wanted series was last fitted (absent: due now).
    fitted: BTreeMap<SeriesKey, Millis>,
    news: Sender<FitNews>,
    next_save: Millis,
    next_compact: Millis,
}

impl Worker {
    pub fn open(cfg: WorkerConfig, news: Sender<FitNews>) -> Result<Worker, StoreError> {
        let db = HistoryDb::open(&cfg.state_dir)?;
        let t = std::time::Instant::now();
        let history = History::from_chunks(db.load()?);
        info!(series = history.series_count(), points = history.len_points(), ms = t.elapsed().as_millis() as u64, file_bytes = db.size_bytes(), "history loaded");
        let now = (cfg.clock)();
        Ok(Worker {
            cfg,
            db,
            history,
            wanted: BTreeSet::new(),
            fitted: BTreeMap::new(),
            news,
            next_save: now + MINUTE_MS,
            next_compact: now,
        })
    }

    fn save(&mut self) {
        let changes = self.history.take_changes();
        if let Err(e) = self.db.save(&changes) {
            // kept in memory; the next save writes the whole chunks again
            warn!(error = %e, "history not written; retried in a minute");
            self.history.unsaved(changes);
        }
    }

    /// Handles one message; false when told to stop.
    pub fn handle(&mut self, msg: ToWorker) -> bool {
        let now = (self.cfg.clock)();
        match msg {
            ToWorker::Samples(values) => {
                for (k, t, v) in values {
                    self.history.record(&k, t, v);
                }
            }
            ToWorker::Want(set) => {
                for gone in self.wanted.difference(&set) {
                    self.fitted.remove(gone);
                    let _ = self.news.send(FitNews {
                        key: gone.clone(),
                        state: None,
                    });
                }
                self.wanted = set;
            }
            ToWorker::Import { points, reply } => {
                let rows = points.len();
                let series: BTreeSet<&SeriesKey> = points.iter().map(|p| &p.0).collect();
                let n_series = series.len();
                let touched: Vec<SeriesKey> = series.into_iter().cloned().collect();
                let kept = self.history.import(&points, now, self.cfg.retention);
                let changes = self.history.take_changes();
                match self.db.save(&changes) {
                    Ok(()) => {
                        for k in touched {
                            self.fitted.remove(&k);
                        }
                        info!(rows, kept, series = n_series, "history imported");
                        reply(Ok(ImportReport {
                            rows,
                            kept,
                            series: n_series,
                        }));
                    }
                    Err(e) => {
                        // in memory it is there; on disk it is not: say so
                        warn!(error = %e, "imported history not written");
                        reply(Err(format!(
                            "the history file could not be written ({e}); the import is kept in memory until the next restart"
                        )));
                    }
                }
            }
            ToWorker::Stop => {
                self.history.close_minutes(now + MINUTE_MS);
                self.save();
                return false;
            }
        }
        true
    }

    /// Periodic work: writes finished minutes, compacts, and fits one due
    /// series. Returns how long it may wait for the next message.
    pub fn step(&mut self) -> StdDuration {
        let now = (self.cfg.clock)();
        if now >= self.next_save {
            self.history.close_minutes(now);
            self.save();
            self.next_save = now + MINUTE_MS;
        }
        if now >= self.next_compact {
            self.history.compact(now, self.cfg.retention);
            self.save();
            self.next_compact = now + HOUR_MS;
        }
        let due = self
            .wanted
            .iter()
            .find(|k| {
                self.fitted
                    .get(*k)
                    .is_none_or(|t| now - t >= self.cfg.refit_every)
            })
            .cloned();
        match due {
            Some(k) => {
                self.fit_one(&k, now);
                StdDuration::ZERO
            }
            None => StdDuration::from_millis(
                (self.next_save - now).clamp(0, MINUTE_MS) as u64,
            ),
        }
    }

    fn fit_one(&mut self, key: &SeriesKey, now: Millis) {
        let t = std::time::Instant::now();
        let series = self.history.series(key, STEP_MS, now);
        let state = match fit(&series, now) {
            Ok(f) => FitState::Ready(Arc::new(f)),
            Err(FitError::TooLittleHistory { have_ms, .. }) => FitState::Waiting { have_ms },
            Err(e) => {
                warn!(series = %key.to_key(), error = %e, "forecast did not fit");
                FitState::Failed(e.to_string())
            }
        };
        debug!(series = %key.to_key(), ms = t.elapsed().as_millis() as u64, "fitted");
        self.fitted.insert(key.clone(), now);
        let _ = self.news.send(FitNews {
            key: key.clone(),
            state: Some(state),
        });
    }

    pub fn history(&self) -> &History {
        &self.history
    }
}

/// Starts the worker thread. Its inbox is bounded: a loop that outruns it
/// drops samples (counted by the caller), never waits.
pub fn spawn(
    cfg: WorkerConfig,
) -> Result<(Sender<ToWorker>, Receiver<FitNews>, std::thread::JoinHandle<()>), StoreError> {
    let (news_tx, news_rx) = crossbeam_channel::unbounded();
    let (tx, rx) = crossbeam_channel::bounded::<ToWorker>(1024);
    let mut w = Worker::open(cfg, news_tx)?;
    let handle = std::thread::Builder::new()
        .name("forecast".into())
        .spawn(move || loop {
            let wait = w.step();
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    if !w.handle(msg) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    w.handle(ToWorker::Stop);
                    break;
                }
            }
        })
        .map_err(|e| StoreError::Io(format!("starting the forecast thread: {e}")))?;
    Ok((tx, news_rx, handle))
}
