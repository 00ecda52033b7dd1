//! Metric history for forecasts (SPEC §7) — pure; the store persists it.
//!
//! Per series (a domain's UUID, or `host`, and a metric): 1-minute means for
//! the last two days, kept in hour chunks of 60 slots, and 5-minute means up to
//! the retention, in day chunks of 288 slots; a slot is an `f32`, `NaN` when
//! nothing was recorded. [`History::compact`] folds minute chunks older than
//! two days into 5-minute ones and drops what is older than the retention, so
//! a domain that was undefined is gone after it. Every chunk changed since the
//! last [`History::take_changes`] is handed to the store, which writes whole
//! chunks: 100 domains × 14 days × 4 metrics is about 10 MB.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::forecast::Series;
use crate::model::persona::Measure;
use crate::time::Millis;

pub const MINUTE_MS: Millis = 60_000;
pub const FIVE_MS: Millis = 5 * MINUTE_MS;
pub const HOUR_MS: Millis = 60 * MINUTE_MS;
pub const DAY_MS: Millis = 24 * HOUR_MS;
/// Minute resolution is kept this long.
pub const FINE_MS: Millis = 2 * DAY_MS;
/// The series key of host-wide metrics.
pub const HOST: &str = "host";

/// One series: a domain (UUID) or [`HOST`], and a metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub domain: String,
    pub metric: Measure,
}

impl SeriesKey {
    pub fn new(domain: &str, metric: impl Into<Measure>) -> Self {
        SeriesKey {
            domain: domain.to_string(),
            metric: metric.into(),
        }
    }
    /// `UUID/metric`, as the store keys it.
    pub fn to_key(&self) -> String {
        format!("{}/{}", self.domain, self.metric)
    }
    pub fn from_key(s: &str) -> Option<SeriesKey> {
        let (d, m) = s.rsplit_once('/')?;
        Some(SeriesKey::new(d, Measure::from_name(m)?))
    }
}

/// Which resolution a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Res {
    /// An hour of 1-minute slots.
    Minute,
    /// A day of 5-minute slots.
    Five,
}

impl Res {
    pub fn slot_ms(self) -> Millis {
        match self {
            Res::Minute => MINUTE_MS,
            Res::Five => FIVE_MS,
        }
    }
    pub fn chunk_ms(self) -> Millis {
        match self {
            Res::Minute => HOUR_MS,
            Res::Five => DAY_MS,
        }
    }
    pub fn slots(self) -> usize {
        (self.chunk_ms() / self.slot_ms()) as usize
    }
    pub fn code(self) -> u8 {
        match self {
            Res::Minute => 1,
            Res::Five => 5,
        }
    }
    pub fn from_code(c: u8) -> Option<Res> {
        match c {
            1 => Some(Res::Minute),
            5 => Some(Res::Five),
            _ => None,
        }
    }
}

/// A chunk's identity: series, resolution, start.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    pub key: SeriesKey,
    pub res: Res,
    pub start: Millis,
}

#[derive(Debug, Default, Clone)]
struct SeriesData {
    minute: BTreeMap<Millis, Vec<f32>>,
    five: BTreeMap<Millis, Vec<f32>>,
    /// The minute being accumulated: its start, sum and count.
    open: Option<(Millis, f64, u32)>,
}

impl SeriesData {
    fn chunks(&mut self, res: Res) -> &mut BTreeMap<Millis, Vec<f32>> {
        match res {
            Res::Minute => &mut self.minute,
            Res::Five => &mut self.five,
        }
    }
}

/// Chunks to write and to delete.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub put: Vec<(ChunkId, Vec<f32>)>,
    pub delete: Vec<ChunkId>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }
}

/// All series' history.
#[derive(Debug, Default)]
pub struct History {
    series: HashMap<SeriesKey, SeriesData>,
    dirty: BTreeSet<ChunkId>,
    deleted: BTreeSet<ChunkId>,
}

fn floor(t: Millis, step: Millis) -> Millis {
    t.div_euclid(step) * step
}

impl History {
    /// History as the store holds it (chunks of an unexpected size are skipped).
    pub fn from_chunks(chunks: impl IntoIterator<Item = (ChunkId, Vec<f32>)>) -> History {
        let mut h = History::default();
        for (id, slots) in chunks {
            if slots.len() != id.res.slots() || id.start % id.res.chunk_ms() != 0 {
                continue;
            }
            h.series
                .entry(id.key)
                .or_default()
                .chunks(id.res)
                .insert(id.start, slots);
        }
        h
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Whether the series has anything.
    pub fn has(&self, key: &SeriesKey) -> bool {
        self.series.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &SeriesKey> {
        self.series.keys()
    }

    fn set_slot(&mut self, key: &SeriesKey, res: Res, t: Millis, v: f32) {
        let start = floor(t, res.chunk_ms());
        let slot = ((t - start) / res.slot_ms()) as usize;
        let chunk = self
            .series
            .entry(key.clone())
            .or_default()
            .chunks(res)
            .entry(start)
            .or_insert_with(|| vec![f32::NAN; res.slots()]);
        chunk[slot] = v;
        let id = ChunkId {
            key: key.clone(),
            res,
            start,
        };
        self.deleted.remove(&id);
        self.dirty.insert(id);
    }

    /// One tick's value. Values are averaged per minute; a minute is written
    /// once the first value of a later minute arrives.
    pub fn record(&mut self, key: &SeriesKey, t: Millis, value: f64) {
        if !value.is_finite() {
            return;
        }
        let minute = floor(t, MINUTE_MS);
        let s = self.series.entry(key.clone()).or_default();
        match &mut s.open {
            Some((m, sum, n)) if *m == minute => {
                *sum += value;
                *n += 1;
            }
            Some((m, _, _)) if *m > minute => {} // from the past: dropped
            open => {
                let done = open.replace((minute, value, 1));
                if let Some((m, sum, n)) = done {
                    self.set_slot(key, Res::Minute, m, (sum / n as f64) as f32);
                }
            }
        }
    }

    /// Writes out every open minute that ended before `now`.
    pub fn close_minutes(&mut self, now: Millis) {
        let minute = floor(now, MINUTE_MS);
        let closed: Vec<(SeriesKey, Millis, f32)> = self
            .series
            .iter_mut()
            .filter_map(|(k, s)| match s.open {
                Some((m, sum, n)) if m < minute => {
                    s.open = None;
                    Some((k.clone(), m, (sum / n as f64) as f32))
                }
                _ => None,
            })
            .collect();
        for (k, m, v) in closed {
            self.set_slot(&k, Res::Minute, m, v);
        }
    }

    /// Imported points (any spacing): averaged per slot, into minute slots
    /// within the last two days and 5-minute slots before, replacing what
    /// was there. Points older than the retention are skipped; returns how
    /// many were kept.
    ///
    /// A point stands for the interval up to the next point of its series
    /// (a mean or a count over it, as exporters write them), at most the
    /// series' usual spacing (its median) and at most an hour: so 30-minute
    /// data fills both 15-minute steps of each interval, instead of every
    /// other step holding the value a quarter of an hour late; a gap longer
    /// than the usual spacing stays a gap. Slots are weighted by how much of
    /// them a point covers. The batch's points are sorted by series and time.
    pub fn import(&mut self, batch: &ImportBatch, now: Millis, retention: Millis) -> usize {
        let fine_from = floor(now - FINE_MS, HOUR_MS);
        let mut kept = 0;
        let points = &batch.points;
        let mut i = 0;
        while i < points.len() {
            let s = points[i].0;
            let end = i + points[i..].iter().take_while(|p| p.0 == s).count();
            let run: Vec<(Millis, f64)> = points[i..end]
                .iter()
                .filter(|p| p.1 >= now - retention && p.1 <= now && p.2.is_finite())
                .map(|p| (p.1, p.2))
                .collect();
            i = end;
            kept += run.len();
            let usual = {
                let mut gaps: Vec<Millis> = run
                    .windows(2)
                    .map(|w| w[1].0 - w[0].0)
                    .filter(|g| *g > 0)
                    .collect();
                gaps.sort_unstable();
                gaps.get(gaps.len().saturating_sub(1) / 2)
                    .copied()
                    .unwrap_or(0)
                    .min(HOUR_MS)
            };
            // (resolution, slot start) → (value × time covered, time covered)
            let mut slots: BTreeMap<(Res, Millis), (f64, f64)> = BTreeMap::new();
            // the next later time of each point (one pass back: duplicates
            // of a time cost nothing)
            let mut next = vec![None; run.len()];
            let mut later: Option<Millis> = None;
            for k in (0..run.len()).rev() {
                if let Some(&(n, _)) = run.get(k + 1).filter(|p| p.0 > run[k].0) {
                    later = Some(n);
                }
                next[k] = later;
            }
            for (k, &(t, v)) in run.iter().enumerate() {
                let next = next[k];
                let reach = next.map_or(usual, |n| (n - t).min(usual));
                let res = if t >= fine_from {
                    Res::Minute
                } else {
                    Res::Five
                };
                let len = res.slot_ms();
                let until = (t + reach).min(now + 1).max(t + 1);
                let mut slot = floor(t, len);
                while slot < until {
                    let covered = (until.min(slot + len) - t.max(slot)).max(1) as f64;
                    let e = slots.entry((res, slot)).or_insert((0.0, 0.0));
                    e.0 += v * covered;
                    e.1 += covered;
                    slot += len;
                }
            }
            let key = &batch.series[s as usize];
            for ((res, slot), (sum, w)) in slots {
                if w > 0.0 {
                    self.set_slot(key, res, slot, (sum / w) as f32);
                }
            }
        }
        kept
    }

    /// Folds minute chunks that ended two days before `now` into 5-minute
    /// chunks and drops chunks that ended before `now - retention`; series left
    /// with nothing are forgotten.
    pub fn compact(&mut self, now: Millis, retention: Millis) {
        let fine_before = now - FINE_MS;
        let keep_after = now - retention;
        let mut dirty = Vec::new();
        let mut deleted = Vec::new();
        for (key, s) in self.series.iter_mut() {
            let old: Vec<Millis> = s
                .minute
                .range(..fine_before - HOUR_MS + 1)
                .map(|(t, _)| *t)
                .filter(|t| t + HOUR_MS <= fine_before)
                .collect();
            for start in old {
                let Some(slots) = s.minute.remove(&start) else {
                    continue;
                };
                deleted.push(ChunkId {
                    key: key.clone(),
                    res: Res::Minute,
                    start,
                });
                if start + HOUR_MS <= keep_after {
                    continue;
                }
                let day = floor(start, DAY_MS);
                let five = s
                    .five
                    .entry(day)
                    .or_insert_with(|| vec![f32::NAN; Res::Five.slots()]);
                for (i, group) in slots.chunks(5).enumerate() {
                    let present: Vec<f32> = group.iter().copied().filter(|v| !v.is_nan()).collect();
                    if !present.is_empty() {
                        let slot = ((start - day) / FIVE_MS) as usize + i;
                        five[slot] = present.iter().sum::<f32>() / present.len() as f32;
                    }
                }
                dirty.push(ChunkId {
                    key: key.clone(),
                    res: Res::Five,
                    start: day,
                });
            }
            for res in [Res::Minute, Res::Five] {
                let gone: Vec<Millis> = s
                    .chunks(res)
                    .keys()
                    .copied()
                    .filter(|t| t + res.chunk_ms() <= keep_after)
                    .collect();
                for start in gone {
                    s.chunks(res).remove(&start);
                    deleted.push(ChunkId {
                        key: key.clone(),
                        res,
                        start,
                    });
                }
            }
        }
        self.series
            .retain(|_, s| !s.minute.is_empty() || !s.five.is_empty() || s.open.is_some());
        for id in deleted {
            self.dirty.remove(&id);
            self.deleted.insert(id);
        }
        for id in dirty {
            let exists = self
                .series
                .get_mut(&id.key)
                .is_some_and(|s| s.chunks(id.res).contains_key(&id.start));
            if exists {
                self.deleted.remove(&id);
                self.dirty.insert(id);
            }
        }
    }

    /// What changed since the last call, for the store.
    pub fn take_changes(&mut self) -> Changes {
        let dirty = std::mem::take(&mut self.dirty);
        let put = dirty
            .into_iter()
            .filter_map(|id| {
                let slots = self
                    .series
                    .get_mut(&id.key)?
                    .chunks(id.res)
                    .get(&id.start)?
                    .clone();
                Some((id, slots))
            })
            .collect();
        Changes {
            put,
            delete: std::mem::take(&mut self.deleted).into_iter().collect(),
        }
    }

    /// Changes a failed write did not store: written again with the next ones.
    pub fn unsaved(&mut self, changes: Changes) {
        for (id, _) in changes.put {
            if !self.deleted.contains(&id) {
                self.dirty.insert(id);
            }
        }
        for id in changes.delete {
            if !self.dirty.contains(&id) {
                self.deleted.insert(id);
            }
        }
    }

    /// Every recorded value of a series as (slot start, slot length, mean),
    /// oldest first; where both resolutions cover a time, the minutes win.
    fn slots(&self, key: &SeriesKey) -> Vec<(Millis, Millis, f64)> {
        let Some(s) = self.series.get(key) else {
            return vec![];
        };
        let first_minute = s.minute.keys().next().copied().unwrap_or(Millis::MAX);
        let mut out = Vec::new();
        for (res, chunks) in [(Res::Five, &s.five), (Res::Minute, &s.minute)] {
            for (start, slots) in chunks {
                for (i, v) in slots.iter().enumerate() {
                    let t = start + i as Millis * res.slot_ms();
                    if v.is_nan() || (res == Res::Five && t >= first_minute) {
                        continue;
                    }
                    out.push((t, res.slot_ms(), *v as f64));
                }
            }
        }
        out
    }

    /// The first and last recorded times of a series.
    pub fn span(&self, key: &SeriesKey) -> Option<(Millis, Millis)> {
        let s = self.slots(key);
        Some((s.first()?.0, s.last().map(|(t, len, _)| t + len)?))
    }

    /// Means per `step` (a multiple of 5 minutes) from the first recorded value
    /// to the last step that ended by `until`; steps with nothing are `NaN`.
    pub fn series(&self, key: &SeriesKey, step: Millis, until: Millis) -> Series {
        let slots = self.slots(key);
        let end = floor(until, step);
        let Some(first) = slots.first().map(|(t, _, _)| floor(*t, step)) else {
            return Series {
                start: end,
                values: vec![],
            };
        };
        let n = ((end - first) / step).max(0) as usize;
        let mut acc = vec![(0.0f64, 0.0f64); n];
        for (t, len, v) in slots {
            let i = ((t - first) / step) as usize;
            if i < n {
                // weighted by the slot's length, so minutes and 5-minute means mix
                acc[i].0 += v * len as f64;
                acc[i].1 += len as f64;
            }
        }
        Series {
            start: first,
            values: acc
                .into_iter()
                .map(|(s, w)| if w > 0.0 { s / w } else { f64::NAN })
                .collect(),
        }
    }

    /// Values recorded, all series together.
    pub fn len_points(&self) -> usize {
        self.series
            .values()
            .map(|s| {
                s.minute
                    .values()
                    .chain(s.five.values())
                    .map(|c| c.iter().filter(|v| !v.is_nan()).count())
                    .sum::<usize>()
            })
            .sum()
    }
}

/// The most bad lines an import error lists (the count covers all).
pub const MAX_LISTED_ERRORS: usize = 100;

/// An import's points, checked: each series once, and every point as (its
/// series' index, time, value), sorted by series and time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportBatch {
    pub series: Vec<SeriesKey>,
    pub points: Vec<(u32, Millis, f64)>,
}

impl ImportBatch {
    pub fn rows(&self) -> usize {
        self.points.len()
    }

    /// Shifts every point by one amount so that the newest one's interval
    /// (its series' usual spacing, see [`History::import`]) ends at `end`,
    /// floored to the minute: a trace recorded elsewhere, as if it had just
    /// happened. Spacing, order and the shape within each day are kept; the
    /// time of day moves by the shift. Returns the shift in ms.
    pub fn retime(&mut self, end: Millis) -> Millis {
        let Some(newest) = self.points.iter().map(|p| p.1).max() else {
            return 0;
        };
        let mut gaps: Vec<Millis> = self
            .points
            .windows(2)
            .filter(|w| w[0].0 == w[1].0 && w[1].1 > w[0].1)
            .map(|w| w[1].1 - w[0].1)
            .collect();
        gaps.sort_unstable();
        let spacing = gaps
            .get(gaps.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0)
            .min(HOUR_MS);
        let shift = floor(end, MINUTE_MS) - spacing - newest;
        for p in &mut self.points {
            p.1 += shift;
        }
        shift
    }
}

/// What one import may hold (the daemon's `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// Points (CSV rows).
    pub rows: usize,
    /// Distinct series.
    pub series: usize,
    /// Distinct domains (UUIDs) not on this host.
    pub foreign_domains: usize,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            rows: 2_000_000,
            series: 2_000,
            foreign_domains: 100,
        }
    }
}

/// A domain of an import, as this host knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A domain here: its UUID.
    Here(String),
    /// A UUID of no domain here (history for one migrating in).
    Elsewhere(String),
}

/// Why an import is refused: its bad lines (the first
/// [`MAX_LISTED_ERRORS`] and how many there are), or a limit it is over
/// (reading stopped there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportError {
    Bad { listed: Vec<String>, total: usize },
    Limit(String),
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::Bad { listed, total } => {
                write!(
                    f,
                    "{total} bad line(s); nothing was imported:\n{}",
                    listed.join("\n")
                )?;
                if *total > listed.len() {
                    write!(f, "\n… and {} more", total - listed.len())?;
                }
                Ok(())
            }
            ImportError::Limit(m) => write!(f, "{m}; nothing was imported"),
        }
    }
}

/// A time in an import: RFC 3339, or Unix seconds (fractions allowed).
fn import_time(s: &str) -> Option<Millis> {
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1000);
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs.abs() < 1e13).then(|| (secs * 1000.0).round() as Millis);
    }
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// Shortens what a bad line quotes (a 1 MB field is not echoed back).
fn quoted(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Reads an import CSV: a header `timestamp,domain,metric,value`, then one
/// point per line. `domain` is a name or UUID that `resolve` turns into the
/// UUID (`None`: unknown); host metrics take an empty domain or `host`.
/// Every bad line is counted (the first [`MAX_LISTED_ERRORS`] named with
/// their numbers); any bad line refuses the whole file. Reading stops at the
/// first limit passed. Memory: the batch, 24 bytes a point, and the series.
pub fn parse_csv(
    text: &str,
    resolve: impl Fn(&str) -> Option<Resolved>,
    limits: &ImportLimits,
) -> Result<ImportBatch, ImportError> {
    let mut listed = Vec::new();
    let mut total = 0usize;
    let mut batch = ImportBatch::default();
    let mut index: HashMap<SeriesKey, u32> = HashMap::new();
    let mut foreign: HashMap<String, ()> = HashMap::new();
    let mut lines = text.lines().enumerate();
    let header = lines.find(|(_, l)| !l.trim().is_empty());
    match header {
        Some((_, h)) => {
            let cols: Vec<String> = h
                .trim_start_matches('\u{feff}')
                .splitn(5, ',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect();
            if cols != ["timestamp", "domain", "metric", "value"] {
                return Err(ImportError::Bad {
                    listed: vec![format!(
                        "line 1: the header must be 'timestamp,domain,metric,value', found '{}'",
                        quoted(h.trim())
                    )],
                    total: 1,
                });
            }
        }
        None => {
            return Err(ImportError::Bad {
                listed: vec![
                "the CSV is empty: expected the header 'timestamp,domain,metric,value' and points"
                    .into(),
            ],
                total: 1,
            })
        }
    }
    // only what resolved is remembered: a million bad names cost nothing
    let mut resolved: HashMap<String, String> = HashMap::new();
    let mut rows = 0usize;
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        rows += 1;
        if rows > limits.rows {
            return Err(ImportError::Limit(format!(
                "the import has more than {} rows, the limit (limits.import_rows)",
                limits.rows
            )));
        }
        let mut bad = |what: String| {
            total += 1;
            if listed.len() < MAX_LISTED_ERRORS {
                listed.push(format!("line {n}: {what}"));
            }
        };
        let f: Vec<&str> = line.splitn(5, ',').map(str::trim).collect();
        if f.len() != 4 {
            bad(format!(
                "expected 4 fields (timestamp,domain,metric,value), found {}",
                if f.len() == 5 {
                    "more".to_string()
                } else {
                    f.len().to_string()
                }
            ));
            continue;
        }
        let Some(t) = import_time(f[0]) else {
            bad(format!(
                "timestamp '{}' is not RFC 3339 or Unix seconds",
                quoted(f[0])
            ));
            continue;
        };
        let Some(metric) = Measure::from_name(f[2]) else {
            bad(format!(
                "unknown metric '{}' (a metric name, or signal:NAME)",
                quoted(f[2])
            ));
            continue;
        };
        let value = match f[3].parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => v,
            _ => {
                bad(format!(
                    "value '{}' is not a number of at least 0",
                    quoted(f[3])
                ));
                continue;
            }
        };
        let domain = if metric.is_host() {
            if !(f[1].is_empty() || f[1] == HOST) {
                bad(format!(
                    "{metric} is a host metric: leave the domain empty (found '{}')",
                    quoted(f[1])
                ));
                continue;
            }
            HOST.to_string()
        } else {
            if f[1].is_empty() {
                bad(format!(
                    "{metric} is a domain metric: the domain is missing"
                ));
                continue;
            }
            if let Some(u) = resolved.get(f[1]) {
                u.clone()
            } else {
                match resolve(f[1]) {
                    Some(Resolved::Here(u)) => {
                        resolved.insert(f[1].to_string(), u.clone());
                        u
                    }
                    Some(Resolved::Elsewhere(u)) => {
                        if !foreign.contains_key(&u) {
                            if foreign.len() >= limits.foreign_domains {
                                return Err(ImportError::Limit(format!(
                                    "line {n}: the import names more than {} domains not on this host, the limit (limits.import_foreign_domains)",
                                    limits.foreign_domains
                                )));
                            }
                            foreign.insert(u.clone(), ());
                        }
                        resolved.insert(f[1].to_string(), u.clone());
                        u
                    }
                    None => {
                        bad(format!(
                            "no domain named '{}' on this host (give its name or UUID)",
                            quoted(f[1])
                        ));
                        continue;
                    }
                }
            }
        };
        let key = SeriesKey { domain, metric };
        let idx = match index.get(&key) {
            Some(i) => *i,
            None => {
                if batch.series.len() >= limits.series {
                    return Err(ImportError::Limit(format!(
                        "line {n}: the import holds more than {} series, the limit (limits.import_series)",
                        limits.series
                    )));
                }
                let i = batch.series.len() as u32;
                batch.series.push(key.clone());
                index.insert(key, i);
                i
            }
        };
        if total == 0 {
            batch.points.push((idx, t, value));
        }
    }
    if total > 0 {
        return Err(ImportError::Bad { listed, total });
    }
    batch.points.sort_unstable_by_key(|p| (p.0, p.1));
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::persona::Metric;

    const T0: Millis = 1_793_577_600_000; // a Monday, 00:00 UTC

    fn cpu(d: &str) -> SeriesKey {
        SeriesKey::new(d, Metric::Cpu)
    }

    #[test]
    fn keys_round_trip() {
        let k = cpu("6695eb01-f6a4-8304-79aa-97f2502e193f");
        assert_eq!(SeriesKey::from_key(&k.to_key()), Some(k));
        assert_eq!(
            SeriesKey::from_key("host/host_cpu"),
            Some(SeriesKey::new(HOST, Metric::HostCpu))
        );
        assert_eq!(SeriesKey::from_key("x/nope"), None);
    }

    #[test]
    fn ticks_are_averaged_per_minute_and_written_when_it_ends() {
        let mut h = History::default();
        let k = cpu("a");
        for (t, v) in [(0, 10.0), (20_000, 20.0), (40_000, 30.0)] {
            h.record(&k, T0 + t, v);
        }
        assert!(h.take_changes().is_empty(), "the minute is still open");
        h.record(&k, T0 + 61_000, 50.0);
        let c = h.take_changes();
        assert_eq!(c.put.len(), 1);
        assert_eq!(c.put[0].1[0], 20.0);
        h.close_minutes(T0 + 125_000);
        let c = h.take_changes();
        assert_eq!(c.put[0].1[1], 50.0);
        let s = h.series(&k, FIVE_MS, T0 + 10 * MINUTE_MS);
        assert_eq!(s.start, T0);
        assert_eq!(s.values.len(), 2);
        assert_eq!(s.values[0], 35.0, "mean of the minutes 20 and 50");
        assert!(s.values[1].is_nan());
    }

    #[test]
    fn compaction_folds_old_minutes_into_five_and_drops_past_retention() {
        let mut h = History::default();
        let k = cpu("a");
        let now = T0 + 3 * DAY_MS;
        // minutes for the whole three days
        let pts: Vec<(SeriesKey, Millis, f64)> = (0..3 * 24 * 60)
            .map(|i| (k.clone(), T0 + i * MINUTE_MS, (i % 5) as f64))
            .collect();
        // written as recorded (import would put old points in 5-minute slots)
        for (k, t, v) in &pts {
            h.record(k, *t, *v);
        }
        h.close_minutes(now);
        let before = h.series(&k, FIVE_MS, now);
        h.compact(now, 14 * DAY_MS);
        let c = h.take_changes();
        assert!(c.put.iter().any(|(id, _)| id.res == Res::Five));
        assert_eq!(c.delete.len(), 24, "the first day's minute chunks");
        let s = h.series(&k, FIVE_MS, now);
        assert_eq!(s, before, "5-minute means are kept exactly");
        assert_eq!(s.values[0], 2.0);
        // past the retention, everything goes
        h.compact(now + 15 * DAY_MS, 14 * DAY_MS);
        assert_eq!(h.series_count(), 0, "an undefined domain's history is gone");
        let c = h.take_changes();
        assert!(c.put.is_empty());
        assert!(!c.delete.is_empty());
    }

    /// A batch from `(key, t, v)` points, as parse_csv makes it.
    fn batch(points: &[(SeriesKey, Millis, f64)]) -> ImportBatch {
        let mut b = ImportBatch::default();
        for (k, t, v) in points {
            let i = match b.series.iter().position(|s| s == k) {
                Some(i) => i,
                None => {
                    b.series.push(k.clone());
                    b.series.len() - 1
                }
            };
            b.points.push((i as u32, *t, *v));
        }
        b.points.sort_unstable_by_key(|p| (p.0, p.1));
        b
    }

    #[test]
    fn import_averages_per_slot_and_reloads_from_chunks() {
        let mut h = History::default();
        let k = cpu("a");
        let now = T0 + 10 * DAY_MS;
        let pts = batch(&[
            (k.clone(), T0 + 120_000, 30.0), // same 5-minute slot, given first
            (k.clone(), now - 90_000, 7.0),  // minute slot
            (k.clone(), T0 + 60_000, 10.0),
            (k.clone(), now - 20 * DAY_MS, 99.0), // past the retention
        ]);
        assert_eq!(h.import(&pts, now, 14 * DAY_MS), 3);
        let c = h.take_changes();
        let reloaded = History::from_chunks(c.put);
        let s = reloaded.series(&k, FIVE_MS, now);
        assert_eq!(s.start, T0);
        assert_eq!(s.values[0], 20.0);
        // the usual spacing is a minute: the last point stands for the
        // minute after it, which reaches into the next minute slot
        assert_eq!(reloaded.span(&k), Some((T0, now)));
    }

    /// A smooth daily shape (a peak at 09:00, a trough at 21:00) exported
    /// as means over 1, 5, 30 and 60 minutes, with a three-hour gap and a
    /// missing hour: through the CSV import, the store and the forecast, the
    /// day after is forecast without a bias (mean within 2 %) and without a
    /// lag (error small against the swing), whatever the spacing.
    #[test]
    fn any_export_step_is_resampled_without_bias_or_lag() {
        let shape = |t: Millis| {
            let h = (t.rem_euclid(DAY_MS)) as f64 / HOUR_MS as f64;
            100.0 + 60.0 * ((h - 9.0) / 24.0 * std::f64::consts::TAU).cos()
        };
        // the mean of the shape over [t, t + len)
        let mean_over = |t: Millis, len: Millis| {
            let n = (len / 10_000).max(1);
            (0..n).map(|i| shape(t + i * 10_000)).sum::<f64>() / n as f64
        };
        let now = T0 + 14 * DAY_MS;
        let truth: Vec<f64> = (0..96)
            .map(|i| mean_over(now + i * 15 * MINUTE_MS, 15 * MINUTE_MS))
            .collect();
        let truth_mean = truth.iter().sum::<f64>() / 96.0;
        for step in [MINUTE_MS, FIVE_MS, 30 * MINUTE_MS, HOUR_MS] {
            let mut csv = String::from("timestamp,domain,metric,value\n");
            let mut t = T0;
            while t < now {
                let in_gap = (T0 + 3 * DAY_MS..T0 + 3 * DAY_MS + 3 * HOUR_MS).contains(&t)
                    || (now - 6 * HOUR_MS..now - 5 * HOUR_MS).contains(&t);
                if !in_gap {
                    csv.push_str(&format!("{},u-1,cpu,{}\n", t / 1000, mean_over(t, step)));
                }
                t += step;
            }
            let b = parse_csv(&csv, resolve, &ImportLimits::default()).expect("valid");
            let mut h = History::default();
            h.import(&b, now, 15 * DAY_MS);
            let series = h.series(&cpu("u-1"), crate::forecast::STEP_MS, now);
            assert_eq!(series.values.len(), 14 * 96, "step {step}");
            let f = crate::forecast::fit(&series, now).expect("fits");
            let got: Vec<f64> = f.points.iter().take(96).map(|p| p.value).collect();
            let bias = got.iter().sum::<f64>() / 96.0 / truth_mean - 1.0;
            assert!(bias.abs() < 0.02, "step {step}: bias {:.1} %", 100.0 * bias);
            // compared at the export's own resolution (an hourly export
            // cannot know the quarters of its hours): a lag of a quarter of
            // an hour alone would cost ~2.6 on this swing
            let per = (step / (15 * MINUTE_MS)).max(1) as usize;
            let at_step = |v: &[f64]| -> Vec<f64> {
                v.chunks(per)
                    .map(|c| c.iter().sum::<f64>() / c.len() as f64)
                    .collect()
            };
            let (g, w) = (at_step(&got), at_step(&truth));
            let mae = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).sum::<f64>() / g.len() as f64;
            assert!(mae < 1.0, "step {step}: MAE {mae:.2}");
        }
    }

    /// Re-timed: one shift for every point, the newest interval ending at
    /// the minute of `end`, spacing and order kept; an empty batch moves
    /// nothing.
    #[test]
    fn a_retimed_import_ends_now_and_keeps_its_spacing() {
        let pts = batch(&[
            (cpu("a"), T0, 1.0),
            (cpu("a"), T0 + FIVE_MS, 2.0),
            (cpu("a"), T0 + 2 * FIVE_MS, 3.0),
            (cpu("b"), T0 + FIVE_MS, 4.0),
        ]);
        let mut moved = pts.clone();
        let end = T0 + 400 * DAY_MS + 37_123;
        let shift = moved.retime(end);
        assert_eq!(shift, (T0 + 400 * DAY_MS) - FIVE_MS - (T0 + 2 * FIVE_MS));
        for (a, b) in pts.points.iter().zip(&moved.points) {
            assert_eq!((a.0, a.1 + shift, a.2), *b);
        }
        let mut h = History::default();
        assert_eq!(
            h.import(&moved, end, 14 * DAY_MS),
            4,
            "nothing in the future"
        );
        let mut none = ImportBatch {
            series: vec![],
            points: vec![],
        };
        assert_eq!(none.retime(end), 0);
    }

    fn resolve(d: &str) -> Option<Resolved> {
        match d {
            "web-1" | "u-1" => Some(Resolved::Here("u-1".to_string())),
            d if d.starts_with("f-") => Some(Resolved::Elsewhere(d.to_string())),
            _ => None,
        }
    }

    fn bad_lines(e: ImportError) -> (Vec<String>, usize) {
        match e {
            ImportError::Bad { listed, total } => (listed, total),
            other => panic!("not bad lines: {other:?}"),
        }
    }

    #[test]
    fn csv_import_reports_every_bad_line_and_accepts_both_time_forms() {
        let limits = ImportLimits::default();
        let good = "timestamp,domain,metric,value\n2026-11-02T09:00:00Z,web-1,cpu,91.5\n1793577600,u-1,cpu,20\n1793577600,,host_cpu,33\n\n";
        let b = parse_csv(good, resolve, &limits).expect("valid");
        assert_eq!(b.rows(), 3);
        assert_eq!(
            b.series,
            [cpu("u-1"), SeriesKey::new(HOST, Metric::HostCpu)]
        );
        // sorted by series, then time
        assert_eq!(b.points[0], (0, T0, 20.0));
        assert_eq!(b.points[1], (0, T0 + 9 * HOUR_MS, 91.5));
        assert_eq!(b.points[2], (1, T0, 33.0));
        let bad = "timestamp,domain,metric,value\nyesterday,web-1,cpu,1\n1793577600,db-9,cpu,1\n1793577600,web-1,cpu,-4\n1793577600,web-1,nope,1\n1793577600,web-1,host_cpu,1\n1,2,3\n1793577600,web-1,cpu,5\n";
        let (errs, total) = bad_lines(parse_csv(bad, resolve, &limits).expect_err("refused"));
        assert_eq!(total, 6);
        let lines: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            lines,
            ["line 2", "line 3", "line 4", "line 5", "line 6", "line 7"],
            "{errs:?}"
        );
        assert!(errs[1].contains("db-9"), "{}", errs[1]);
        assert!(
            bad_lines(parse_csv("time,value\n", resolve, &limits).unwrap_err()).0[0]
                .contains("header")
        );
        assert!(parse_csv("", resolve, &limits).is_err());
    }

    #[test]
    fn csv_import_stops_at_its_limits_and_lists_only_the_first_bad_lines() {
        let limits = ImportLimits {
            rows: 10,
            series: 2,
            foreign_domains: 1,
        };
        let head = "timestamp,domain,metric,value\n";
        let rows = |n: usize| head.to_string() + &"1793577600,web-1,cpu,1\n".repeat(n);
        assert!(parse_csv(&rows(10), resolve, &limits).is_ok());
        let e = parse_csv(&rows(11), resolve, &limits).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the import has more than 10 rows, the limit (limits.import_rows); nothing was imported"
        );
        let series = format!("{head}1,web-1,cpu,1\n1,web-1,disk_iops,1\n1,web-1,disk_bytes,1\n");
        let e = parse_csv(&series, resolve, &limits)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("line 4: the import holds more than 2 series"),
            "{e}"
        );
        let foreign = format!("{head}1,f-1,cpu,1\n1,f-1,cpu,2\n1,f-2,cpu,1\n");
        let e = parse_csv(&foreign, resolve, &limits)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 4: the import names more than 1 domains not on this host"),
            "{e}"
        );
        // a flood of bad lines: the first 100 named, the rest counted
        let many = ImportLimits::default();
        let text = format!(
            "{head}{}",
            format!("x,{},cpu,1\n", "y".repeat(200)).repeat(5000)
        );
        let e = parse_csv(&text, resolve, &many).unwrap_err();
        let msg = e.to_string();
        let (listed, total) = bad_lines(e);
        assert_eq!((listed.len(), total), (MAX_LISTED_ERRORS, 5000));
        assert!(
            msg.ends_with("… and 4900 more"),
            "{}",
            &msg[msg.len() - 40..]
        );
        assert!(
            listed[0].len() < 120,
            "a long field is shortened: {}",
            listed[0]
        );
    }
}
