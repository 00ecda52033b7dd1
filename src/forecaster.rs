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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::forecast::{fit_in, FitError, FitState, STEP_MS};
use crate::history::{History, SeriesKey, HOUR_MS, MINUTE_MS};
use crate::store::{HistoryDb, StoreError};
use crate::time::Millis;

/// What the loop tells the worker.
pub enum ToWorker {
    /// One tick's values of the metrics forecast conditions name.
    Samples(Vec<(SeriesKey, Millis, f64)>),
    /// The series forecast conditions use now, each with the zone its daily
    /// season follows.
    Want(Wanted),
    /// Imported history, already checked: applied whole, then the reply.
    Import {
        batch: crate::history::ImportBatch,
        /// Shifted first so that its newest row ends at the worker's now
        /// (`?retime=now`; done here, off the control loop: it reads every
        /// point).
        retime: bool,
        reply: Box<dyn FnOnce(Result<ImportReport, ImportRefused>) + Send>,
    },
    /// Writes what is open and ends the thread.
    Stop,
}

/// Series to fit, and how (the first persona by priority naming one decides).
pub type Wanted = BTreeMap<SeriesKey, Want>;

/// How one series is fitted and judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    /// The zone whose wall clock its daily season follows.
    pub zone: jiff::tz::TimeZone,
    /// The first `above` threshold a forecast condition on it has: its
    /// record's peaks cross it (the history's 90th percentile without one).
    pub peak_at: Option<f64>,
}

impl Want {
    /// In UTC, peaks at the history's 90th percentile.
    pub fn utc() -> Want {
        Want {
            zone: jiff::tz::TimeZone::UTC,
            peak_at: None,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportReport {
    /// Rows read.
    pub rows: usize,
    /// Rows kept (the others were older than the retention or in the future).
    pub kept: usize,
    pub series: usize,
    /// Forecasts of these series fitted again before the answer.
    pub refitted: usize,
    /// The shift applied to every time when re-timed, in ms.
    pub retimed_by_ms: Option<Millis>,
}

/// Why the worker did not import: an HTTP status and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRefused {
    pub status: u16,
    pub message: String,
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
    pub clock: crate::time::Clock,
    pub refit_every: Millis,
    /// The most series the history holds after an import (the host's own
    /// domains are always recorded).
    pub max_series: usize,
    /// Series in the history now, for `/metrics` (updated as it changes).
    pub series: Arc<std::sync::atomic::AtomicUsize>,
}

/// The worker's state; [`Worker::step`] is driven by its thread (and by tests).
pub struct Worker {
    cfg: WorkerConfig,
    db: HistoryDb,
    history: History,
    wanted: Wanted,
    /// Each series' forecasts as issued (see [`crate::issued`]).
    issued: BTreeMap<SeriesKey, Vec<crate::issued::Issued>>,
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
        info!(
            series = history.series_count(),
            points = history.len_points(),
            ms = t.elapsed().as_millis() as u64,
            file_bytes = db.size_bytes(),
            "history loaded"
        );
        let now = (cfg.clock)();
        let issued = db.load_issued()?.into_iter().collect();
        Ok(Worker {
            cfg,
            db,
            history,
            wanted: Wanted::new(),
            issued,
            fitted: BTreeMap::new(),
            news,
            next_save: now + MINUTE_MS,
            next_compact: now,
        })
    }

    /// The series the history holds, for `/metrics`.
    fn count_series(&self) {
        self.cfg.series.store(
            self.history.series_count(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn save(&mut self) {
        self.count_series();
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
                // /metrics' count of series follows a new one at once, not
                // at the next save a minute later
                self.count_series();
            }
            ToWorker::Want(set) => {
                for (k, zone) in &self.wanted {
                    match set.get(k) {
                        None => {
                            self.fitted.remove(k);
                            let _ = self.news.send(FitNews {
                                key: k.clone(),
                                state: None,
                            });
                        }
                        // another zone or threshold: fitted again now
                        Some(z) if z != zone => {
                            self.fitted.remove(k);
                        }
                        Some(_) => {}
                    }
                }
                self.wanted = set;
            }
            ToWorker::Import {
                mut batch,
                retime,
                reply,
            } => {
                let rows = batch.rows();
                let n_series = batch.series.len();
                let new = batch.series.iter().filter(|k| !self.history.has(k)).count();
                let held = self.history.series_count();
                if held + new > self.cfg.max_series {
                    reply(Err(ImportRefused {
                        status: 413,
                        message: format!(
                            "the history holds {held} series and the import adds {new}: more than {}, the limit (limits.history_series); nothing was imported",
                            self.cfg.max_series
                        ),
                    }));
                    return true;
                }
                let retimed_by_ms = retime.then(|| batch.retime(now));
                let kept = self.history.import(&batch, now, self.cfg.retention);
                drop(batch.points);
                self.count_series();
                let changes = self.history.take_changes();
                match self.db.save(&changes) {
                    Ok(()) => {
                        // the forecasts that use them are fitted again now,
                        // and their news sent, before the answer: a forecast
                        // asked for right after it is the new one
                        let mut refitted = 0;
                        for k in batch.series {
                            self.fitted.remove(&k);
                            if self.wanted.contains_key(&k) {
                                self.fit_one(&k, now);
                                refitted += 1;
                            }
                        }
                        info!(rows, kept, series = n_series, refitted, "history imported");
                        reply(Ok(ImportReport {
                            rows,
                            kept,
                            series: n_series,
                            refitted,
                            retimed_by_ms,
                        }));
                    }
                    Err(e) => {
                        // in memory it is there; on disk it is not: say so
                        warn!(error = %e, "imported history not written");
                        reply(Err(ImportRefused {
                            status: 500,
                            message: format!(
                                "the history file could not be written ({e}); the import is kept in memory until the next restart"
                            ),
                        }));
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
            self.forget_old_issued(now);
            self.next_compact = now + HOUR_MS;
        }
        let due = self
            .wanted
            .keys()
            .find(|k| {
                self.fitted
                    .get(*k)
                    .is_none_or(|t| now - t >= self.cfg.refit_every)
            })
            .cloned();
        let until_save =
            StdDuration::from_millis((self.next_save - now).clamp(0, MINUTE_MS) as u64);
        match due {
            Some(k) => {
                self.fit_one(&k, now);
                StdDuration::ZERO
            }
            None => until_save,
        }
    }

    fn fit_one(&mut self, key: &SeriesKey, now: Millis) {
        let t = std::time::Instant::now();
        let series = self.history.series(key, STEP_MS, now);
        let want = self.wanted.get(key).cloned().unwrap_or_else(Want::utc);
        let state = match fit_in(&series, now, &want.zone) {
            Ok(mut f) => {
                // kept once a day as issued, and judged by what followed
                let log = self.issued.entry(key.clone()).or_default();
                let peak_at = want.peak_at.or_else(|| crate::issued::p90(&series));
                if crate::issued::issue(log, &f, peak_at) {
                    if let Err(e) = self.db.save_issued(key, log) {
                        warn!(series = %key.to_key(), error = %e, "issued forecast not written");
                    }
                }
                f.record = crate::issued::score(log, &series, now);
                FitState::Ready(Arc::new(f))
            }
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

    /// Drops the issued forecasts of series not fitted for longer than
    /// they are kept.
    fn forget_old_issued(&mut self, now: Millis) {
        let keep = crate::issued::KEEP as Millis * crate::issued::EVERY_MS;
        let old: Vec<SeriesKey> = self
            .issued
            .iter()
            .filter(|(_, log)| log.last().is_none_or(|l| now - l.issued_at > keep))
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.issued.remove(&k);
            if let Err(e) = self.db.save_issued(&k, &[]) {
                warn!(series = %k.to_key(), error = %e, "old issued forecasts not removed");
            }
        }
    }

    pub fn history(&self) -> &History {
        &self.history
    }
}

/// The worker's ends: its inbox, the fits it sends back, its thread.
pub type WorkerHandles = (
    Sender<ToWorker>,
    Receiver<FitNews>,
    std::thread::JoinHandle<()>,
);

/// Starts the worker thread. Its inbox is bounded: a loop that outruns it
/// drops samples (counted by the caller), never waits.
pub fn spawn(cfg: WorkerConfig) -> Result<WorkerHandles, StoreError> {
    let (news_tx, news_rx) = crossbeam_channel::unbounded();
    let (tx, rx) = crossbeam_channel::bounded::<ToWorker>(1024);
    let mut w = Worker::open(cfg, news_tx)?;
    let handle = std::thread::Builder::new()
        .name("forecast".into())
        .spawn(move || loop {
            // test builds only: FAILPOINTS=forecast-worker-panic=1*panic(..)
            // stands in for a bug in a fit or in the history code
            fail::fail_point!("forecast-worker-panic");
            let wait = w.step();
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    // everything waiting first: a fit (up to a second on a
                    // slow host) never sits in front of a queue of messages
                    let more =
                        std::iter::once(msg).chain(std::iter::from_fn(|| rx.try_recv().ok()));
                    let mut go_on = true;
                    for m in more {
                        if !w.handle(m) {
                            go_on = false;
                            break;
                        }
                    }
                    if !go_on {
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

/// The worker as the control loop holds it: a thread that ends or panics is
/// noticed (its news channel closes), joined, said, and started again after
/// a backoff ([`crate::supervise::Restarts`]) from its history file; while it
/// is down, samples are dropped (and counted by the caller) and imports are
/// refused, and the loop never waits on it.
pub struct Supervised {
    make: Box<dyn Fn() -> WorkerConfig + Send>,
    tx: Sender<ToWorker>,
    news: Receiver<FitNews>,
    handle: Option<std::thread::JoinHandle<()>>,
    /// What the worker was last told it must fit (sent again after a restart).
    wanted: Wanted,
    restarts: crate::supervise::Restarts,
}

impl Supervised {
    pub fn start(
        make: Box<dyn Fn() -> WorkerConfig + Send>,
        now: Millis,
    ) -> Result<Supervised, StoreError> {
        let (tx, news, handle) = spawn(make())?;
        Ok(Supervised {
            make,
            tx,
            news,
            handle: Some(handle),
            wanted: Wanted::new(),
            restarts: crate::supervise::Restarts::new("forecast", now),
        })
    }

    /// Its news, for the loop's `select!` (a channel that never fires while it is down).
    pub fn news(&self) -> Receiver<FitNews> {
        self.news.clone()
    }

    /// One tick's values and the series wanted now; false when the values
    /// could not be handed over (worker busy or down).
    pub fn feed(&mut self, values: Vec<(SeriesKey, Millis, f64)>, want: Wanted) -> bool {
        let delivered = values.is_empty() || self.tx.try_send(ToWorker::Samples(values)).is_ok();
        if want != self.wanted && self.tx.try_send(ToWorker::Want(want.clone())).is_ok() {
            self.wanted = want;
        }
        delivered
    }

    /// Hands an import over; `Err` gives it back with whether the worker is
    /// down (rather than busy).
    pub fn import(&self, msg: ToWorker) -> Result<(), (ToWorker, bool)> {
        self.tx.try_send(msg).map_err(|e| {
            let down = e.is_disconnected() || self.restarts.is_down();
            (e.into_inner(), down)
        })
    }

    /// Its news channel closed: the thread ended. Joined, and why, for the log.
    pub fn ended(&mut self, now: Millis) -> String {
        let why = match self.handle.take().map(|h| h.join()) {
            Some(Err(p)) => format!("panicked: {}", crate::supervise::panic_message(&*p)),
            _ => "ended".to_string(),
        };
        self.news = crossbeam_channel::never();
        self.restarts.failed(why.clone(), now);
        why
    }

    /// Starts it again when its backoff is over: `Some` when it tried.
    pub fn restart_if_due(&mut self, now: Millis) -> Option<Result<(), StoreError>> {
        if !self.restarts.due(now) {
            return None;
        }
        Some(match spawn((self.make)()) {
            Ok((tx, news, handle)) => {
                self.tx = tx;
                self.news = news;
                self.handle = Some(handle);
                // told again what to fit
                self.wanted = Wanted::new();
                self.restarts.restarted(now);
                Ok(())
            }
            Err(e) => {
                self.restarts.restart_failed(e.to_string(), now);
                Err(e)
            }
        })
    }

    pub fn status(&self) -> &crate::supervise::HelperStatus {
        self.restarts.status()
    }

    /// Writes the open minute and ends the thread.
    pub fn stop(mut self) {
        let _ = self.tx.send(ToWorker::Stop);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::persona::Metric;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// Hands `batch` to the worker as the daemon does and returns its answer.
    pub(super) fn import_into(
        w: &mut Worker,
        batch: crate::history::ImportBatch,
    ) -> Result<ImportReport, ImportRefused> {
        let (rtx, rrx) = std::sync::mpsc::channel();
        w.handle(ToWorker::Import {
            batch,
            retime: false,
            reply: Box::new(move |r| {
                let _ = rtx.send(r);
            }),
        });
        rrx.recv().expect("an answer")
    }

    fn config(dir: &std::path::Path, now: &Arc<AtomicI64>) -> WorkerConfig {
        let now = now.clone();
        WorkerConfig {
            state_dir: dir.to_path_buf(),
            retention: 14 * 86_400_000,
            clock: Box::new(move || now.load(Ordering::SeqCst)),
            // the daemon refits hourly; days of ticks here need fewer fits
            refit_every: 6 * 3_600_000,
            max_series: 10_000,
            series: Default::default(),
        }
    }

    /// Three days of ticks recorded live (one day missing in the middle), the
    /// worker stopped half-way and started again from its file: nothing
    /// recorded is lost, the series fits, and every state reaches the loop.
    #[test]
    fn history_survives_a_restart_mid_way_and_a_missing_day_still_fits() {
        let dir = tempfile::tempdir().unwrap();
        let key = SeriesKey::new("u-1", Metric::Cpu);
        let t0: Millis = 1_793_577_600_000;
        let (tx, rx) = crossbeam_channel::unbounded();
        let clock = Arc::new(AtomicI64::new(t0));
        let mut w = Worker::open(config(dir.path(), &clock), tx.clone()).unwrap();
        w.handle(ToWorker::Want([(key.clone(), Want::utc())].into()));
        let tick = |w: &mut Worker, t: Millis| {
            clock.store(t, Ordering::SeqCst);
            let v = if (t / 60_000) % 1440 >= 540 && (t / 60_000) % 1440 < 660 {
                90.0
            } else {
                20.0
            };
            w.handle(ToWorker::Samples(vec![(key.clone(), t, v)]));
            w.step();
        };
        // day 1, every 30 s; then a restart
        for i in 0..2880 {
            tick(&mut w, t0 + i * 30_000);
        }
        let day1 = w.history().series(&key, STEP_MS, t0 + 86_400_000);
        w.handle(ToWorker::Stop);
        drop(w);
        let mut w = Worker::open(config(dir.path(), &clock), tx).unwrap();
        assert_eq!(
            w.history().series(&key, STEP_MS, t0 + 86_400_000),
            day1,
            "what was recorded before the restart is there after it"
        );
        w.handle(ToWorker::Want([(key.clone(), Want::utc())].into()));
        // day 2 missing (the host was down), days 3 and 4 recorded
        for i in 0..2 * 2880 {
            tick(&mut w, t0 + 2 * 86_400_000 + i * 30_000);
        }
        let states: Vec<FitNews> = rx.try_iter().collect();
        assert!(
            states
                .iter()
                .any(|n| matches!(n.state, Some(FitState::Waiting { .. }))),
            "too little history said first"
        );
        assert!(
            matches!(
                states.last().and_then(|n| n.state.clone()),
                Some(FitState::Ready(_))
            ),
            "ready once there is enough: {:?}",
            states.last()
        );
        // the file holds what was recorded
        let now = t0 + 4 * 86_400_000;
        let in_memory = w.history().series(&key, STEP_MS, now - 120_000);
        w.handle(ToWorker::Stop);
        drop(w);
        let db = HistoryDb::open(dir.path()).unwrap();
        let again = History::from_chunks(db.load().unwrap());
        // (Debug, since NaN, a step with no value, is never == itself)
        assert_eq!(
            format!("{:?}", again.series(&key, STEP_MS, now - 120_000)),
            format!("{in_memory:?}")
        );
    }

    #[test]
    fn an_import_is_written_at_once_and_refits_its_series() {
        let dir = tempfile::tempdir().unwrap();
        let key = SeriesKey::new("u-2", Metric::Cpu);
        let now: Millis = 1_793_577_600_000 + 15 * 86_400_000;
        let clock = Arc::new(AtomicI64::new(now));
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut w = Worker::open(config(dir.path(), &clock), tx).unwrap();
        w.handle(ToWorker::Want([(key.clone(), Want::utc())].into()));
        w.step();
        assert!(matches!(
            rx.try_recv().unwrap().state,
            Some(FitState::Waiting { have_ms: 0 })
        ));
        let s =
            crate::forecast::tests::web_cpu(now - 14 * 86_400_000, 14 * crate::forecast::DAY, 5);
        let batch = crate::history::ImportBatch {
            series: vec![key.clone()],
            points: s
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| (0, s.start + i as Millis * STEP_MS, *v))
                .collect(),
        };
        let report = import_into(&mut w, batch).unwrap();
        assert_eq!(report.series, 1);
        assert!(report.kept >= report.rows - 1, "{report:?}");
        // on disk before the reply (read through the worker's own handle)
        assert!(!w.db.load().unwrap().is_empty());
        w.step();
        match rx.try_recv().unwrap().state {
            Some(FitState::Ready(f)) => assert!(f.accuracy.is_some()),
            other => panic!("{other:?}"),
        }
    }

    /// A week of days on the worker: each day's first fit is kept as issued
    /// (persisted: a restart mid-week keeps them), each day's actual values
    /// arrive (imported), and the fit's record scores the days that passed
    /// — judged by the persona's `above` threshold.
    #[test]
    fn issued_forecasts_are_kept_across_a_restart_and_scored_by_what_happened() {
        let dir = tempfile::tempdir().unwrap();
        let key = SeriesKey::new("u-3", Metric::Cpu);
        const D: Millis = 86_400_000;
        let t0: Millis = crate::forecast::tests::MONDAY;
        let all = crate::forecast::tests::web_cpu(t0, 22 * crate::forecast::DAY, 8);
        let clock = Arc::new(AtomicI64::new(t0 + 14 * D));
        let (tx, rx) = crossbeam_channel::unbounded();
        let want = || -> Wanted {
            [(
                key.clone(),
                Want {
                    zone: jiff::tz::TimeZone::UTC,
                    peak_at: Some(70.0),
                },
            )]
            .into()
        };
        let import = |w: &mut Worker, from: Millis, to: Millis| {
            let (a, b) = (
                ((from - t0) / STEP_MS) as usize,
                ((to - t0) / STEP_MS) as usize,
            );
            let batch = crate::history::ImportBatch {
                series: vec![key.clone()],
                points: (a..b)
                    .map(|i| (0, t0 + i as Millis * STEP_MS, all.values[i]))
                    .collect(),
            };
            import_into(w, batch).unwrap()
        };
        let last_fit = |rx: &crossbeam_channel::Receiver<FitNews>| -> Arc<crate::forecast::Fit> {
            match rx.try_iter().last().and_then(|n| n.state) {
                Some(FitState::Ready(f)) => f,
                other => panic!("{other:?}"),
            }
        };
        let mut w = Worker::open(config(dir.path(), &clock), tx.clone()).unwrap();
        w.handle(ToWorker::Want(want()));
        import(&mut w, t0, t0 + 14 * D);
        assert_eq!(last_fit(&rx).record, None, "nothing has passed yet");
        let mut record = None;
        for day in 15..=21 {
            clock.store(t0 + day * D, Ordering::SeqCst);
            if day == 18 {
                w.handle(ToWorker::Stop);
                drop(w);
                w = Worker::open(config(dir.path(), &clock), tx.clone()).unwrap();
                w.handle(ToWorker::Want(want()));
            }
            // the day that passed arrives; the refit issues the next one
            import(&mut w, t0 + (day - 1) * D, t0 + day * D);
            let r = last_fit(&rx).record.clone().expect("a record");
            assert_eq!(r.days as Millis, day - 14, "day {day}: {r:?}");
            record = Some(r);
        }
        let r = record.expect("a week");
        assert_eq!(r.since, Some(t0 + 14 * D));
        assert_eq!(r.peak_at, Some(70.0));
        // the weekdays' rushes, seen coming; the weekend's mornings below 70
        assert_eq!((r.peaks, r.quiet_days), (5, 2), "{r:?}");
        assert_eq!(r.peaks_seen, 5, "{r:?}");
        assert!(r.rel_mae.is_some_and(|e| e < 1.0), "{r:?}");
        assert!(r.coverage.is_some_and(|c| c > 70.0), "{r:?}");
        // the file holds at most KEEP days
        assert!(w.db.load_issued().unwrap()[0].1.len() <= crate::issued::KEEP);
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use crate::history::ImportBatch;
    use crate::model::persona::Metric;

    /// An import that would take the history over `limits.history_series`
    /// is refused whole (413, the limit named); series it already holds do
    /// not count again.
    #[test]
    fn an_import_over_the_series_limit_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let now: Millis = 1_793_577_600_000;
        let gauge = Arc::<std::sync::atomic::AtomicUsize>::default();
        let cfg = WorkerConfig {
            state_dir: dir.path().to_path_buf(),
            retention: 14 * 86_400_000,
            clock: Box::new(move || now),
            refit_every: 3_600_000,
            max_series: 2,
            series: gauge.clone(),
        };
        let (tx, _rx) = crossbeam_channel::unbounded();
        let mut w = Worker::open(cfg, tx).unwrap();
        let import = |w: &mut Worker, names: &[&str]| {
            let batch = ImportBatch {
                series: names
                    .iter()
                    .map(|n| SeriesKey::new(n, Metric::Cpu))
                    .collect(),
                points: (0..names.len() as u32)
                    .map(|i| (i, now - 600_000, 5.0))
                    .collect(),
            };
            super::tests::import_into(w, batch)
        };
        assert_eq!(import(&mut w, &["a", "b"]).unwrap().series, 2);
        assert_eq!(gauge.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert!(import(&mut w, &["a"]).is_ok(), "a series held already");
        let e = import(&mut w, &["a", "c"]).unwrap_err();
        assert_eq!(e.status, 413);
        assert!(
            e.message.starts_with("the history holds 2 series and the import adds 1: more than 2, the limit (limits.history_series)"),
            "{}",
            e.message
        );
        assert_eq!(w.history.series_count(), 2, "nothing of it was kept");
    }
}
