//! Forecasts from a metric's own history (SPEC §7) — pure; `now` is passed in.
//!
//! Several forecasters compete per series ([`Model`]: what an admin would
//! write by hand — same time yesterday or last week, the median of the same
//! time over some days, on days of the same kind (weekday or weekend), at
//! the last hours' level, the last hour, the last day — and Grafana's
//! `augurs` MSTL): each forecasts from origins every six hours over the last
//! days from the history before them (a rolling-origin backtest), the best
//! are blended by their errors, and the 95 % band comes from the blend's own
//! backtest errors (split-conformal), so it means what it says. History
//! arrives as 15-minute means ([`Series`]), laid out on the wall clock of
//! the persona's zone ([`fit_in`]); gaps are filled from the same time a day earlier where
//! that is known and by linear interpolation otherwise.
//!
//! How the forecast did is said three ways: the backtest (relative to same
//! time yesterday), the last day of history forecast from the days before it
//! ([`Accuracy`]), and the record of the forecasts actually issued
//! ([`crate::issued`]).
//!
//! A fit is made on a worker thread (see `bin/virt-personad.rs`), never on the
//! control loop's; the loop only reads finished [`Fit`]s.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::history::SeriesKey;
use crate::model::persona::{Bound, Measure};
use crate::time::Millis;

/// The resolution forecasts work at: 15 minutes. Fitting AutoETS costs about
/// linear time in the points; at 5-minute steps a refit of 100 domains took
/// 20 CPU s here, at 15-minute steps 3.4 s (benches/forecast.rs). A crossing
/// is placed at the start of the first 15-minute step whose mean crosses.
pub const STEP_MS: Millis = 15 * 60_000;
/// Steps in a day and in a week.
pub const DAY: usize = 96;
pub const WEEK: usize = 7 * DAY;
/// The least history a forecast needs: two full daily seasons.
pub const MIN_HISTORY_MS: Millis = 2 * DAY as Millis * STEP_MS;
/// How far ahead a fit forecasts (and the longest `horizon` + `lead`).
pub const AHEAD_STEPS: usize = DAY;
pub const AHEAD_MS: Millis = AHEAD_STEPS as Millis * STEP_MS;
// the validator holds conditions to the model's reach: the same day
const _: () = assert!(AHEAD_MS == crate::model::persona::FORECAST_REACH_MS);
/// The prediction interval's level.
pub const LEVEL: f64 = 0.95;
/// A fit older than this no longer forecasts (the domain stopped, or the
/// worker could not refit): better no forecast than a stale one.
pub const STALE_MS: Millis = 3 * 3_600_000;

/// Evenly spaced means, one per [`STEP_MS`]; `NaN` where nothing was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Start of `values[0]`, a multiple of [`STEP_MS`].
    pub start: Millis,
    pub values: Vec<f64>,
}

impl Series {
    /// The span from the first to the last value present.
    pub fn span_ms(&self) -> Millis {
        let first = self.values.iter().position(|v| !v.is_nan());
        let last = self.values.iter().rposition(|v| !v.is_nan());
        match (first, last) {
            (Some(a), Some(b)) => (b - a + 1) as Millis * STEP_MS,
            _ => 0,
        }
    }

    /// Leading and trailing gaps removed.
    fn trimmed(&self) -> Series {
        let first = self.values.iter().position(|v| !v.is_nan());
        let last = self.values.iter().rposition(|v| !v.is_nan());
        match (first, last) {
            (Some(a), Some(b)) => Series {
                start: self.start + a as Millis * STEP_MS,
                values: self.values[a..=b].to_vec(),
            },
            _ => Series {
                start: self.start,
                values: vec![],
            },
        }
    }
}

/// One forecast step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Start of the step, ms since the epoch.
    pub t: Millis,
    pub value: f64,
    pub lower: f64,
    pub upper: f64,
}

/// How yesterday's forecast did against what happened.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    /// Mean absolute percentage error of the point forecast, in percent, over
    /// the steps whose actual value is not near zero (see `mape`).
    pub mape: f64,
    /// Share of actual values inside the prediction interval, in percent.
    pub coverage: f64,
    /// The day that was forecast and compared: its start.
    pub day_start: Millis,
}

/// A fitted forecast for one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fit {
    pub fitted_at: Millis,
    /// The zone whose wall clock the daily season follows.
    pub timezone: String,
    /// The history the model saw: first and end (exclusive) of its steps.
    pub history_start: Millis,
    pub history_end: Millis,
    /// Season lengths used, in steps (96 = a day, 672 = a week).
    pub seasons: Vec<usize>,
    /// The forecaster with the largest weight in the blend (see [`Model`]).
    pub model: Model,
    /// How the candidates did in the rolling-origin backtest.
    pub backtest: Option<Backtest>,
    /// From `history_end` on, one per step.
    pub points: Vec<Point>,
    pub accuracy: Option<Accuracy>,
    /// How the forecasts this host issued for the series did over the last
    /// days (set by the worker; see [`crate::issued`]).
    pub record: Option<crate::issued::Record>,
    /// The last day of the history it saw, one mean per step (`NaN` = none),
    /// for charts.
    pub recent: Vec<(Millis, f64)>,
}

/// The forecasters a series' backtest chooses among. The simple ones are
/// what an admin would write by hand; the model is what statistics offers.
/// Every "same time" takes the steps up to `window` on either side of it
/// too (a 15-minute mean is noisy; its neighbours say as much about the
/// next day's slot as the slot itself), and a median, never a mean: a burst
/// a day ago does not come back at the same minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// The same step yesterday (the baseline every other one is scored
    /// against).
    NaiveDay,
    /// The same step a week ago (two weeks of history).
    NaiveWeek,
    /// The median of the same time (± `window` steps) over the last `days`
    /// days.
    Profile { days: usize, window: usize },
    /// The same over the last `days` days of the same kind as the day
    /// forecast — weekdays, or Saturdays and Sundays — on the wall clock.
    DayKind { days: usize, window: usize },
    /// The median of the same weekday and time (± 2 steps) over the last
    /// `n` weeks.
    WeekMedian(usize),
    /// The median of the same time (± 2 steps) over the last `n` days,
    /// moved by how far the last two hours stood from it (a level shift
    /// carries on).
    DayLevel(usize),
    /// The mean of the last hour, flat (a series that just changed level).
    LastHour,
    /// The median of the last day, flat (a series without a daily shape).
    LastDay,
    /// MSTL (daily, and weekly once two weeks exist), the rest smoothed by
    /// ETS without a trend (augurs).
    Mstl,
}

/// How a window of `w` steps either side reads.
fn around(w: usize) -> String {
    if w == 0 {
        String::new()
    } else {
        format!(" (± {} min)", w as Millis * STEP_MS / 60_000)
    }
}

impl Model {
    pub fn name(&self) -> String {
        match self {
            Model::NaiveDay => "same time yesterday".into(),
            Model::NaiveWeek => "same time last week".into(),
            Model::Profile { days: 1, window } => {
                format!("median of the same time yesterday{}", around(*window))
            }
            Model::Profile { days, window } => {
                format!("median of the same time{} over {days} days", around(*window))
            }
            Model::DayKind { days, window } => format!(
                "median of the same time{} over the last {days} days of the same kind (weekday or weekend)",
                around(*window)
            ),
            Model::WeekMedian(n) => format!(
                "median of the same weekday and time{} over {n} weeks",
                around(2)
            ),
            Model::DayLevel(n) => format!(
                "median of the same time{} over {n} days, at the last two hours' level",
                around(2)
            ),
            Model::LastHour => "the last hour's mean".into(),
            Model::LastDay => "the last day's median".into(),
            Model::Mstl => "MSTL + ETS (augurs)".into(),
        }
    }
    /// The history it needs, in steps, before the steps it forecasts.
    fn needs(&self) -> usize {
        match self {
            Model::NaiveWeek => WEEK,
            Model::WeekMedian(n) => n * WEEK,
            Model::Mstl => 2 * DAY,
            _ => DAY,
        }
    }
    /// Every candidate: the daily profiles over 1 to 14 days with windows
    /// of 0 to 2 hours, the same by kind of day, the weekly ones, the
    /// level-following and flat ones, and the statistical model. Which of
    /// them forecast a series best is left to its backtest, never to a
    /// constant chosen per kind of series.
    fn candidates() -> Vec<Model> {
        let mut out = vec![
            Model::NaiveDay,
            Model::NaiveWeek,
            Model::WeekMedian(2),
            Model::DayLevel(3),
            Model::DayLevel(7),
            Model::LastHour,
            Model::LastDay,
            Model::Mstl,
        ];
        for days in [1, 3, 7, 14] {
            for window in [0, 2, 4, 8] {
                if (days, window) != (1, 0) {
                    out.push(Model::Profile { days, window });
                }
            }
        }
        for days in [3, 7, 14] {
            for window in [0, 2, 4] {
                out.push(Model::DayKind { days, window });
            }
        }
        out
    }
}

/// How a series' forecasters did, backtested from several origins over its
/// last days (each forecast a day ahead from the history before it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backtest {
    /// The days every candidate was scored on.
    pub origins: usize,
    /// Mean absolute error of the blend relative to "same time yesterday"
    /// over the same days (< 1: better).
    pub rel_mae: Option<f64>,
    /// Every candidate's mean absolute error relative to "same time
    /// yesterday" on the days it was scored on, smallest first.
    pub candidates: Vec<(Model, f64)>,
    /// The blend that forecasts: models and their weights (summing to 1).
    pub blend: Vec<(Model, f64)>,
}

/// What the control loop knows of one series' forecast.
#[derive(Debug, Clone, PartialEq)]
pub enum FitState {
    Ready(Arc<Fit>),
    /// Too little history: this much is recorded.
    Waiting {
        have_ms: Millis,
    },
    Failed(String),
}

/// Every series' forecast state, by domain (UUID or `host`) and metric.
#[derive(Debug, Clone, Default)]
pub struct Forecasts(pub HashMap<String, BTreeMap<Measure, FitState>>);

impl Forecasts {
    pub fn get(&self, domain: &str, metric: &Measure) -> Option<&FitState> {
        self.0.get(domain)?.get(metric)
    }
    pub fn set(&mut self, key: SeriesKey, state: FitState) {
        self.0
            .entry(key.domain)
            .or_default()
            .insert(key.metric, state);
    }
    pub fn remove(&mut self, key: &SeriesKey) {
        if let Some(m) = self.0.get_mut(&key.domain) {
            m.remove(&key.metric);
            if m.is_empty() {
                self.0.remove(&key.domain);
            }
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = (SeriesKey, &FitState)> {
        self.0.iter().flat_map(|(d, m)| {
            m.iter()
                .map(move |(metric, st)| (SeriesKey::new(d, metric.clone()), st))
        })
    }
}

/// Why there is no forecast.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error(
        "too little history: {have_ms} ms recorded, a forecast needs {need_ms} ms (two full days)"
    )]
    TooLittleHistory { have_ms: Millis, need_ms: Millis },
    #[error("the model did not fit: {0}")]
    Model(String),
}

/// The seasons a history of `len` steps supports: a day, and a week once two
/// full weeks exist.
pub fn seasons_for(len: usize) -> Vec<usize> {
    if len >= 2 * WEEK {
        vec![DAY, WEEK]
    } else {
        vec![DAY]
    }
}

/// Fills gaps: from one season earlier (or later) where known, then linearly.
fn fill(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    for i in 0..v.len() {
        if v[i].is_nan() {
            let before = i.checked_sub(DAY).map(|j| v[j]);
            let after = values.get(i + DAY).copied();
            if let Some(x) = before
                .filter(|x| !x.is_nan())
                .or(after.filter(|x| !x.is_nan()))
            {
                v[i] = x;
            }
        }
    }
    // what is left: linear between the nearest known values
    let known: Vec<usize> = (0..v.len()).filter(|&i| !v[i].is_nan()).collect();
    for w in known.windows(2) {
        let (a, b) = (w[0], w[1]);
        for i in a + 1..b {
            let f = (i - a) as f64 / (b - a) as f64;
            v[i] = v[a] + (v[b] - v[a]) * f;
        }
    }
    v
}

/// Fits the model to `values` and forecasts `ahead` steps.
fn model(values: &[f64], ahead: usize) -> Result<augurs::Forecast, FitError> {
    use augurs::mstl::MSTLModel;
    use augurs::prelude::*;
    let periods = seasons_for(values.len());
    // the deseasonalised rest by simple exponential smoothing (ETS with
    // additive errors, no trend): AutoETS's search over trends (none,
    // additive, damped) cost six times as much — 100 series took 10 CPU s —
    // and forecast the development traces no better; the multiplicative-error
    // half of the search doubled the cost again and never won
    let trend = Smoothing;
    let fitted = MSTLModel::new(periods, trend)
        .fit(values)
        .map_err(|e| FitError::Model(e.to_string()))?;
    // the point forecast only: the bands come from the backtest
    fitted
        .predict(ahead, None)
        .map_err(|e| FitError::Model(e.to_string()))
}

/// MSTL's model of what its seasons leave: simple exponential smoothing
/// (ETS "ANN"), fitted directly — augurs' `AutoETS` finds no model for a
/// spec without a trend (augurs-ets 0.10.3 gives `N` no trend candidates).
#[derive(Debug)]
struct Smoothing;

#[derive(Debug)]
struct SmoothingFit(augurs::ets::model::Model);

impl augurs::mstl::TrendModel for Smoothing {
    fn name(&self) -> std::borrow::Cow<'_, str> {
        "ETS(A,N,N)".into()
    }
    fn fit(
        &self,
        y: &[f64],
    ) -> Result<
        Box<dyn augurs::mstl::FittedTrendModel + Sync + Send>,
        Box<dyn std::error::Error + Send + Sync + 'static>,
    > {
        use augurs::ets::model::{ErrorComponent, ModelType, SeasonalComponent, TrendComponent};
        let m = augurs::ets::model::Unfit::new(ModelType {
            error: ErrorComponent::Additive,
            trend: TrendComponent::None,
            season: SeasonalComponent::None,
        })
        .fit(y)?;
        Ok(Box::new(SmoothingFit(m)))
    }
}

impl augurs::mstl::FittedTrendModel for SmoothingFit {
    fn predict_inplace(
        &self,
        horizon: usize,
        level: Option<f64>,
        forecast: &mut augurs::Forecast,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        use augurs::prelude::*;
        Ok(self.0.predict_inplace(horizon, level, forecast)?)
    }
    fn predict_in_sample_inplace(
        &self,
        level: Option<f64>,
        forecast: &mut augurs::Forecast,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        use augurs::prelude::*;
        Ok(self.0.predict_in_sample_inplace(level, forecast)?)
    }
    fn training_data_size(&self) -> Option<usize> {
        use augurs::prelude::*;
        Some(self.0.training_data_size())
    }
}

/// The median of `v` (`NaN` when empty); reorders `v`.
fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    let (low, mid, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    let mid = *mid;
    if n % 2 == 1 {
        mid
    } else {
        let below = low.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (below + mid) / 2.0
    }
}

/// Whether wall-clock step `i` of a series whose step 0 starts at the
/// wall-clock time `start` is on a Saturday or a Sunday.
fn weekend(start: Millis, i: usize) -> bool {
    let day = (start + i as Millis * STEP_MS).div_euclid(86_400_000);
    // 1970-01-01 was a Thursday: 3 counting from Monday = 0
    (day + 3).rem_euclid(7) >= 5
}

/// The values at the same time as step `i`, `period` steps apart: the `k`
/// most recent bases `i − j·period` (j ≥ 1) inside `values` that `keep`
/// accepts, each with up to `window` steps either side; their median.
fn same_time(
    values: &[f64],
    buf: &mut Vec<f64>,
    i: usize,
    period: usize,
    k: usize,
    window: usize,
    keep: impl Fn(usize) -> bool,
) -> Option<f64> {
    let n = values.len();
    buf.clear();
    let (mut found, mut j) = (0, 1);
    while found < k && j * period <= i {
        let base = i - j * period;
        j += 1;
        if base >= n || !keep(base) {
            continue;
        }
        found += 1;
        buf.extend_from_slice(&values[base.saturating_sub(window)..=(base + window).min(n - 1)]);
    }
    (!buf.is_empty()).then(|| median(buf))
}

/// The point forecast of `m` for `ahead` steps after `values` (gap-filled;
/// step 0 at the wall-clock time `start`).
fn predict(m: Model, values: &[f64], start: Millis, ahead: usize) -> Result<Vec<f64>, FitError> {
    let n = values.len();
    let last = values.last().copied().unwrap_or(0.0);
    let mut buf = Vec::new();
    let mut each = |period: usize, k: usize, window: usize, by_kind: bool| -> Vec<f64> {
        (n..n + ahead)
            .map(|i| {
                let kind = weekend(start, i);
                same_time(values, &mut buf, i, period, k, window, |b| {
                    !by_kind || weekend(start, b) == kind
                })
                .unwrap_or(last)
            })
            .collect()
    };
    Ok(match m {
        Model::NaiveDay => each(DAY, 1, 0, false),
        Model::NaiveWeek => each(WEEK, 1, 0, false),
        Model::Profile { days, window } => each(DAY, days, window, false),
        Model::DayKind { days, window } => each(DAY, days, window, true),
        Model::WeekMedian(k) => each(WEEK, k, 2, false),
        Model::DayLevel(k) => {
            let profile = each(DAY, k, 2, false);
            let mut offsets: Vec<f64> = (n.saturating_sub(LEVEL_STEPS)..n)
                .filter_map(|i| {
                    Some(values[i] - same_time(values, &mut buf, i, DAY, k, 2, |_| true)?)
                })
                .collect();
            let off = if offsets.is_empty() {
                0.0
            } else {
                median(&mut offsets)
            };
            profile.into_iter().map(|v| v + off).collect()
        }
        Model::LastHour => {
            let recent = &values[n.saturating_sub(4)..];
            vec![recent.iter().sum::<f64>() / recent.len().max(1) as f64; ahead]
        }
        Model::LastDay => {
            let mut recent = values[n.saturating_sub(DAY)..].to_vec();
            vec![median(&mut recent); ahead]
        }
        Model::Mstl => model(values, ahead)?.point,
    })
}

/// Weighted residuals (actual − forecast, on the band's scale) of one block
/// of horizons, sorted, from which the band's edges are read.
#[derive(Debug, Clone)]
struct Residuals {
    sorted: Vec<(f64, f64)>,
    /// The sum of the weights plus the largest one (split-conformal with
    /// weights, Tibshirani et al. 2019: the quantile of the residuals and one
    /// more of the largest weight at infinity, so a short or lopsided
    /// backtest widens the band rather than narrowing it).
    reach: f64,
}

/// How finely the band's miss share is split between its two tails.
const TAIL_SPLITS: usize = 20;

impl Residuals {
    fn of(residuals: &mut [(f64, f64)]) -> Option<Residuals> {
        if residuals.len() < 8 {
            return None;
        }
        residuals.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total: f64 = residuals.iter().map(|r| r.1).sum();
        let most = residuals.iter().map(|r| r.1).fold(0.0, f64::max);
        Some(Residuals {
            sorted: residuals.to_vec(),
            reach: total + most,
        })
    }

    /// The residual below which `share` of the weight lies, counted from
    /// the bottom (`from_top`: above which, from the top).
    fn edge(&self, share: f64, from_top: bool) -> f64 {
        let reach = share * self.reach;
        let walk = |it: &mut dyn Iterator<Item = &(f64, f64)>| -> f64 {
            let (mut acc, mut at) = (0.0, f64::NAN);
            for &(x, w) in it {
                acc += w;
                at = x;
                if acc >= reach {
                    break;
                }
            }
            at
        };
        if from_top {
            walk(&mut self.sorted.iter().rev())
        } else {
            walk(&mut self.sorted.iter())
        }
    }

    /// The band's lower and upper edge (on the band's scale) around the
    /// forecasts `at` (on the same scale): of the ways to split the
    /// [`LEVEL`] band's miss share between its tails, the one whose band
    /// is narrowest in the metric's own units over these forecasts — a
    /// series that bursts upwards gets a band that leaves more of its
    /// misses above than below, instead of one wide on both sides.
    fn band(&self, at: &[f64], scale: &Scale) -> (f64, f64) {
        let miss = 1.0 - LEVEL;
        (0..=TAIL_SPLITS)
            .map(|k| {
                let below = miss * k as f64 / TAIL_SPLITS as f64;
                let lo = self.edge(1.0 - below, true).min(0.0);
                let hi = self.edge(1.0 - (miss - below), false).max(0.0);
                let width: f64 = at
                    .iter()
                    .map(|&a| scale.back(a + hi) - scale.back(a + lo))
                    .sum();
                (width, lo, hi)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map_or((0.0, 0.0), |(_, lo, hi)| (lo, hi))
    }
}

/// Steps whose distance from the daily profile sets [`Model::DayLevel`]'s
/// level (two hours).
const LEVEL_STEPS: usize = 8;
/// Steps of one block of horizons sharing a band (12 hours: the first and
/// the second half of the day ahead).
const BAND_BLOCK: usize = 48;
/// The block of horizons step `h` ahead is in (a step beyond a day counts
/// as the last).
fn band_block(h: usize) -> usize {
    h.min(DAY - 1) / BAND_BLOCK
}
/// Steps between two backtest origins (6 hours): each forecasts a day from
/// the history before it, so the most recent hours are scored too — a
/// series that changed level this morning is not forecast from last week's.
const ORIGIN_EVERY: usize = 24;
/// Days of origins (each with at least two days of history before it).
const BACKTEST_DAYS: usize = 7;
/// Origins the statistical model is backtested on (a fit each): the last
/// two day boundaries.
const MSTL_ORIGINS: usize = 2;
/// How many of the best candidates are blended: averaging a few simple
/// forecasters is more robust than betting on the one that won a short
/// backtest.
const BLEND: usize = 3;
/// The weight of an origin's errors, per day back, in the scores and in
/// the band: series change regime (a new deployment, a level shift), so
/// yesterday's errors say more about tomorrow than last week's.
const ORIGIN_DECAY: f64 = 0.5;
/// The band works on `ln(value + floor)` or `√(value + floor)` (see
/// [`Scale`]), with the floor this share of the history's median: errors
/// grow with the level (a busy hour errs by more than a quiet one), so a
/// band calibrated on the whole day is not as wide at night as at noon; the
/// floor keeps values near zero from making any error look infinite.
const BAND_FLOOR: f64 = 0.2;

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Mean absolute percentage error over the steps whose actual value is above
/// 1 % of the day's largest (near-zero actuals would make any error infinite),
/// and the share of actual values inside the interval. Both in percent.
pub fn accuracy(actual: &[f64], forecast: &[Point]) -> Option<(f64, f64)> {
    let peak = actual
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(0.0f64, f64::max);
    let floor = peak * 0.01;
    let (mut ape, mut n, mut inside, mut m) = (0.0, 0usize, 0usize, 0usize);
    for (a, p) in actual.iter().zip(forecast) {
        if a.is_nan() {
            continue;
        }
        m += 1;
        if *a >= p.lower && *a <= p.upper {
            inside += 1;
        }
        if a.abs() > floor && *a != 0.0 {
            ape += ((a - p.value) / a).abs();
            n += 1;
        }
    }
    (n > 0 && m > 0).then(|| (100.0 * ape / n as f64, 100.0 * inside as f64 / m as f64))
}

/// Fits a series and forecasts [`AHEAD_STEPS`] from the end of its history.
///
/// Rolling-origin backtest: from origins every `ORIGIN_EVERY` steps over
/// the last `BACKTEST_DAYS` days, every candidate [`Model`] forecasts up
/// to a day from the history before the origin (the statistical model from
/// the last `MSTL_ORIGINS` day boundaries only: it costs a fit each), and
/// is scored by its mean absolute error relative to "same time yesterday"
/// from the same origins, each origin's errors weighing `ORIGIN_DECAY`
/// per day back. The `BLEND` best are blended, weighted by the inverse
/// square of those scores; the blend forecasts ahead. Its 95 % band comes
/// from the blend's own residuals at those origins per 12-hour block of
/// horizons (weighted split-conformal quantiles, on a log or a square-root
/// scale, whichever gives the narrower band: see
/// `BAND_FLOOR`), not from any model's assumptions. The accuracy shown is
/// the last day's, forecast from a day back, with the band calibrated on
/// the values before that day only.
pub fn fit(series: &Series, now: Millis) -> Result<Fit, FitError> {
    fit_in(series, now, &jiff::tz::TimeZone::UTC)
}

/// Wall-clock milliseconds of `t` in `zone`: the instant plus its offset, so
/// that a day of them is always 24 hours of 15-minute steps.
fn civil_ms(zone: &jiff::tz::TimeZone, t: Millis) -> Millis {
    match jiff::Timestamp::from_millisecond(t) {
        Ok(ts) => t + zone.to_offset(ts).seconds() as Millis * 1000,
        Err(_) => t,
    }
}

/// [`fit`] with the seasons in `zone`'s local time (the persona's
/// `timezone`, else the host's): the history is laid out on the wall
/// clock's 15-minute steps, so a rush at 09:00 stays at 09:00 across a DST
/// change — the hour a spring night skips has no value (filled like any
/// gap), the hour an autumn night repeats is the mean of both — fitted
/// there, and the forecast mapped back to instants (the repeated hour gets
/// the same forecast twice). The points, history bounds and chart stay in
/// UTC instants.
pub fn fit_in(series: &Series, now: Millis, zone: &jiff::tz::TimeZone) -> Result<Fit, FitError> {
    let s = series.trimmed();
    let zone_name = zone_name(zone, now);
    let fixed = s.values.is_empty() || {
        let a = civil_ms(zone, s.start) - s.start;
        let end = s.start + (s.values.len() as Millis + AHEAD_STEPS as Millis) * STEP_MS;
        a % STEP_MS == 0 && no_transition(zone, s.start, end)
    };
    if fixed {
        // one offset over the whole span (UTC, or no DST change in it):
        // the wall clock is the instants shifted, nothing to lay out
        let shift = s
            .values
            .first()
            .map_or(0, |_| civil_ms(zone, s.start) - s.start);
        let shifted = Series {
            start: s.start + shift,
            values: s.values.clone(),
        };
        let mut f = fit_civil(&shifted, now, AHEAD_STEPS)?;
        f.history_start -= shift;
        f.history_end -= shift;
        for p in &mut f.points {
            p.t -= shift;
        }
        for r in &mut f.recent {
            r.0 -= shift;
        }
        if let Some(a) = &mut f.accuracy {
            a.day_start -= shift;
        }
        f.timezone = zone_name;
        return Ok(f);
    }
    // the wall clock's steps from the first one to the end's
    let first = civil_ms(zone, s.start).div_euclid(STEP_MS) * STEP_MS;
    let end = s.start + s.values.len() as Millis * STEP_MS;
    let civil_end = civil_ms(zone, end).div_euclid(STEP_MS) * STEP_MS;
    let n = ((civil_end - first) / STEP_MS).max(0) as usize;
    let mut acc = vec![(0.0, 0u32); n];
    for (i, v) in s.values.iter().enumerate() {
        let t = s.start + i as Millis * STEP_MS;
        let k = (civil_ms(zone, t).div_euclid(STEP_MS) * STEP_MS - first) / STEP_MS;
        if v.is_finite() && (0..n as Millis).contains(&k) {
            acc[k as usize].0 += v;
            acc[k as usize].1 += 1;
        }
    }
    let local = Series {
        start: first,
        values: acc
            .iter()
            .map(|&(sum, c)| if c > 0 { sum / c as f64 } else { f64::NAN })
            .collect(),
    };
    // an hour more: after a spring night the day ahead reaches an hour
    // further on the wall clock
    let mut f = fit_civil(&local, now, AHEAD_STEPS + 4)?;
    // each instant ahead takes the forecast of its wall-clock step
    let by_civil: HashMap<Millis, Point> = f.points.iter().map(|p| (p.t, *p)).collect();
    f.points = (0..AHEAD_STEPS as Millis)
        .filter_map(|i| {
            let t = end + i * STEP_MS;
            let c = civil_ms(zone, t).div_euclid(STEP_MS) * STEP_MS;
            by_civil.get(&c).map(|p| Point { t, ..*p })
        })
        .collect();
    f.history_start = s.start;
    f.history_end = end;
    f.recent = s
        .values
        .iter()
        .enumerate()
        .skip(s.values.len().saturating_sub(DAY))
        .map(|(i, v)| (s.start + i as Millis * STEP_MS, *v))
        .collect();
    if let Some(a) = &mut f.accuracy {
        a.day_start = instant_of(zone, a.day_start);
    }
    f.timezone = zone_name;
    Ok(f)
}

/// Whether `zone`'s offset is the same from `from` to `to`.
fn no_transition(zone: &jiff::tz::TimeZone, from: Millis, to: Millis) -> bool {
    let (Ok(a), Ok(b)) = (
        jiff::Timestamp::from_millisecond(from),
        jiff::Timestamp::from_millisecond(to),
    ) else {
        return true;
    };
    zone.following(a)
        .take_while(|t| t.timestamp() <= b)
        .next()
        .is_none()
}

/// The instant of a wall-clock time (the earlier one when it is repeated).
fn instant_of(zone: &jiff::tz::TimeZone, civil: Millis) -> Millis {
    let Ok(ts) = jiff::Timestamp::from_millisecond(civil) else {
        return civil;
    };
    let dt = jiff::tz::Offset::UTC.to_datetime(ts);
    zone.to_ambiguous_timestamp(dt)
        .compatible()
        .map_or(civil, |t| t.as_millisecond())
}

/// How a zone is named to an admin: its IANA name, else its offset now.
pub fn zone_name(zone: &jiff::tz::TimeZone, at: Millis) -> String {
    match (zone.iana_name(), jiff::Timestamp::from_millisecond(at)) {
        (Some(n), _) => n.to_string(),
        (None, Ok(ts)) => zone.to_offset(ts).to_string(),
        (None, Err(_)) => "UTC".to_string(),
    }
}

/// [`fit_in`]'s work on a series already on the wall clock's steps.
fn fit_civil(series: &Series, now: Millis, ahead_steps: usize) -> Result<Fit, FitError> {
    let s = series.trimmed();
    let have_ms = s.values.len() as Millis * STEP_MS;
    if s.values.len() < 2 * DAY {
        return Err(FitError::TooLittleHistory {
            have_ms,
            need_ms: MIN_HISTORY_MS,
        });
    }
    let raw = &s.values;
    let n = raw.len();
    let values = fill(raw);
    let end = s.start + have_ms;
    // the origins, newest first: every ORIGIN_EVERY steps back over the
    // last days, each with at least two days of history before it
    let days = (n / DAY).saturating_sub(2).min(BACKTEST_DAYS);
    let origins: Vec<usize> = (1..=days * DAY / ORIGIN_EVERY)
        .map(|j| n - j * ORIGIN_EVERY)
        .collect();
    let weight = |k: usize| ORIGIN_DECAY.powf((n - origins[k]) as f64 / DAY as f64);
    // each candidate's forecast from each origin (up to a day, or up to
    // the end of the history), from the history before it, filled on its own
    let filled: Vec<Vec<f64>> = origins.iter().map(|&o| fill(&raw[..o])).collect();
    let mut tried: Vec<(Model, Vec<Option<Vec<f64>>>)> = Vec::new();
    for m in Model::candidates() {
        let per: Vec<Option<Vec<f64>>> = origins
            .iter()
            .zip(&filled)
            .map(|(&o, before)| {
                let back = n - o;
                let allowed = before.len() >= m.needs()
                    && (m != Model::Mstl || (back % DAY == 0 && back / DAY <= MSTL_ORIGINS));
                if allowed {
                    predict(m, before, s.start, back.min(DAY)).ok()
                } else {
                    None
                }
            })
            .collect();
        if per.iter().any(Option::is_some) {
            tried.push((m, per));
        }
    }
    // an origin's weighted error: its weight × the mean absolute error
    // over a day (an origin of the last hours counts for the hours it has)
    let err_at = |f: &[f64], k: usize| -> Option<f64> {
        let (mut sum, mut c) = (0.0, 0);
        for (f, a) in f.iter().zip(&raw[origins[k]..]) {
            if a.is_finite() {
                sum += (a - f).abs();
                c += 1;
            }
        }
        (c > 0).then(|| weight(k) * sum / DAY as f64)
    };
    // each scored on its own origins, relative to "same time yesterday" on
    // those origins: the statistical model's two and the simple models'
    // all are then compared fairly
    let naive_f = tried
        .iter()
        .find(|(m, _)| *m == Model::NaiveDay)
        .map(|(_, f)| f.clone());
    let relative = |f: &[Option<Vec<f64>>]| -> Option<f64> {
        let (mut mine, mut base, mut any) = (0.0, 0.0, false);
        for k in 0..origins.len() {
            let (Some(x), Some(Some(y))) = (&f[k], naive_f.as_ref().map(|v| &v[k])) else {
                continue;
            };
            if let (Some(a), Some(b)) = (err_at(x, k), err_at(y, k)) {
                mine += a;
                base += b;
                any = true;
            }
        }
        any.then_some(if base > 0.0 {
            mine / base
        } else if mine > 0.0 {
            f64::INFINITY
        } else {
            1.0
        })
    };
    let mut scores: Vec<(Model, f64)> = tried
        .iter()
        .filter_map(|(m, f)| Some((*m, relative(f)?)))
        .collect();
    scores.sort_by(|a, b| a.1.total_cmp(&b.1));
    let weights: Vec<(Model, f64)> = {
        let top: Vec<(Model, f64)> = scores.iter().take(BLEND).copied().collect();
        let w: Vec<f64> = top.iter().map(|(_, e)| 1.0 / e.max(1e-6).powi(2)).collect();
        let total: f64 = w.iter().sum();
        top.iter()
            .zip(w)
            .map(|((m, _), w)| (*m, w / total))
            .collect()
    };
    // too short for a backtest (two to three days): yesterday, without a band
    let weights = if weights.is_empty() {
        vec![(Model::NaiveDay, 1.0)]
    } else {
        weights
    };
    let blend_at = |k: usize| -> Option<Vec<f64>> {
        let mut out: Option<Vec<f64>> = None;
        for (m, w) in &weights {
            let f = tried.iter().find(|(x, _)| x == m)?.1[k].as_ref()?;
            let o = out.get_or_insert_with(|| vec![0.0; f.len()]);
            for (o, v) in o.iter_mut().zip(f) {
                *o += w * v;
            }
        }
        out
    };
    let blends: Vec<Option<Vec<f64>>> = (0..origins.len()).map(blend_at).collect();
    let scales = Scale::family(raw);
    // the band from the blend's residuals at every origin, counting only
    // actual values before step `until`, on `scale`
    let residuals = |until: usize, scale: &Scale| -> Vec<Option<Residuals>> {
        let mut blocks = vec![Vec::new(); band_block(DAY - 1) + 1];
        for (k, f) in blends.iter().enumerate() {
            let Some(f) = f else { continue };
            for (h, f) in f.iter().enumerate() {
                let i = origins[k] + h;
                if i < until && raw[i].is_finite() {
                    blocks[band_block(h)].push((scale.to(raw[i]) - scale.to(*f), weight(k)));
                }
            }
        }
        blocks.iter_mut().map(|b| Residuals::of(b)).collect()
    };
    // the forecast `f` from step `until` (at the instant `start`) with its
    // band on the scale whose band is narrower over it: both hold 95 % of
    // the same residuals, so the narrower says more
    let banded = |f: &[f64], until: usize, start: Millis| -> Vec<Point> {
        let mut best: Option<(f64, Vec<Point>)> = None;
        for scale in &scales {
            let p = to_points(f, &residuals(until, scale), scale, start);
            let width: f64 = p.iter().map(|p| p.upper - p.lower).sum();
            if best.as_ref().is_none_or(|b| width < b.0) {
                best = Some((width, p));
            }
        }
        best.map(|b| b.1).unwrap_or_default()
    };
    // the last day, forecast from the origin a day back, scored with bands
    // from the values before it only
    let day_back = origins.iter().position(|&o| o + DAY == n);
    let accuracy = match day_back.and_then(|k| blends[k].as_ref()) {
        Some(f) if days >= 2 => {
            let day_start = s.start + (n - DAY) as Millis * STEP_MS;
            accuracy(&raw[n - DAY..], &banded(f, n - DAY, day_start)).map(|(mape, coverage)| {
                Accuracy {
                    mape,
                    coverage,
                    day_start,
                }
            })
        }
        _ => None,
    };
    let rel_mae = relative(&blends);
    let mut ahead = vec![0.0; ahead_steps];
    for (m, w) in &weights {
        for (o, v) in ahead
            .iter_mut()
            .zip(predict(*m, &values, s.start, ahead_steps)?)
        {
            *o += w * v;
        }
    }
    Ok(Fit {
        fitted_at: now,
        timezone: "UTC".into(),
        history_start: s.start,
        history_end: end,
        seasons: seasons_for(values.len()),
        model: weights[0].0,
        backtest: Some(Backtest {
            origins: blends.iter().filter(|b| b.is_some()).count(),
            rel_mae,
            candidates: scores,
            blend: weights,
        }),
        points: banded(&ahead, n, end),
        accuracy,
        record: None,
        recent: s
            .values
            .iter()
            .enumerate()
            .skip(s.values.len().saturating_sub(DAY))
            .map(|(i, v)| (s.start + i as Millis * STEP_MS, *v))
            .collect(),
    })
}

/// A scale a band is calibrated on: `ln(value + floor)` (errors in
/// proportion to the level, as a busy hour errs by more than a quiet one) or
/// `√(value + floor)` (errors growing with the square root of the level, as
/// a count's do), the floor [`BAND_FLOOR`] of the history's median (of its
/// mean if the median is zero). Each fit calibrates its band on both and
/// keeps the narrower (see [`Scale::family`]).
#[derive(Debug, Clone, Copy)]
struct Scale {
    floor: f64,
    /// Whether the scale is the square root rather than the logarithm.
    root: bool,
}

impl Scale {
    /// The scales a band is calibrated on for a series with these values.
    fn family(values: &[f64]) -> [Scale; 2] {
        let mut v: Vec<f64> = values
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .map(|x| x.max(0.0))
            .collect();
        let mid = median(&mut v);
        let level = if mid > 0.0 {
            mid
        } else {
            mean(&v).filter(|m| *m > 0.0).unwrap_or(1.0)
        };
        let floor = BAND_FLOOR * level;
        [Scale { floor, root: false }, Scale { floor, root: true }]
    }
    fn to(&self, x: f64) -> f64 {
        let z = x.max(0.0) + self.floor;
        if self.root {
            z.sqrt()
        } else {
            z.ln()
        }
    }
    fn back(&self, y: f64) -> f64 {
        let z = if self.root {
            y.max(0.0).powi(2)
        } else {
            y.exp()
        };
        (z - self.floor).max(0.0)
    }
}

/// Forecast points with their bands (a horizon block without enough
/// residuals has none: its band is the point). Never below zero: every
/// metric is a rate, a share or a size. A value that is not finite is
/// never turned into a number.
fn to_points(f: &[f64], bands: &[Option<Residuals>], scale: &Scale, start: Millis) -> Vec<Point> {
    // (NaN stays NaN: `NaN.max(0.0)` would be 0)
    let f: Vec<f64> = f
        .iter()
        .map(|&v| if v.is_nan() { v } else { v.max(0.0) })
        .collect();
    // each block's edges, split for the block's own forecasts
    let edges: Vec<Option<(f64, f64)>> = bands
        .iter()
        .enumerate()
        .map(|(b, r)| {
            let at: Vec<f64> = f
                .iter()
                .enumerate()
                .filter(|(i, v)| v.is_finite() && band_block(*i) == b)
                .map(|(_, v)| scale.to(*v))
                .collect();
            r.as_ref().map(|r| r.band(&at, scale))
        })
        .collect();
    f.iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, &value)| {
            let (lower, upper) = match edges.get(band_block(i)).copied().flatten() {
                Some((lo, hi)) => {
                    let at = scale.to(value);
                    (
                        scale.back(at + lo).min(value),
                        scale.back(at + hi).max(value),
                    )
                }
                None => (value, value),
            };
            Point {
                t: start + i as Millis * STEP_MS,
                value,
                lower,
                upper,
            }
        })
        .collect()
}

impl Point {
    /// The side of the forecast a condition reads.
    pub fn at(&self, bound: Bound) -> f64 {
        match bound {
            Bound::Value => self.value,
            Bound::Upper => self.upper,
            Bound::Lower => self.lower,
        }
    }
}

/// What a forecast says about one threshold over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outlook {
    /// The extreme forecast in the window (the largest for `above`, the
    /// smallest for `below`).
    pub extreme: f64,
    /// When the forecast first crosses the threshold in the window.
    pub crossing: Option<Millis>,
}

impl Fit {
    /// Whether the fit still forecasts at `now`.
    pub fn is_stale(&self, now: Millis) -> bool {
        now - self.fitted_at > STALE_MS || now >= self.history_end + AHEAD_MS
    }

    /// The steps that overlap `[from, to]`.
    pub fn window(&self, from: Millis, to: Millis) -> &[Point] {
        let idx = |t: Millis| -> usize {
            (((t - self.history_end).max(0)) / STEP_MS).clamp(0, self.points.len() as Millis)
                as usize
        };
        let a = idx(from);
        let b = (idx(to) + 1).min(self.points.len());
        &self.points[a.min(b)..b]
    }

    /// The forecast over `[from, to]` against a threshold: `crosses(v)` says
    /// whether a value is on the far side of it, `above` which extreme to report.
    pub fn outlook(
        &self,
        from: Millis,
        to: Millis,
        bound: Bound,
        above: bool,
        crosses: impl Fn(f64) -> bool,
    ) -> Option<Outlook> {
        let w = self.window(from, to);
        let vals = w.iter().map(|p| p.at(bound));
        let extreme = if above {
            vals.clone().reduce(f64::max)
        } else {
            vals.clone().reduce(f64::min)
        }?;
        let crossing = w
            .iter()
            .find(|p| crosses(p.at(bound)))
            .map(|p| p.t.max(from));
        Some(Outlook { extreme, crossing })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic noise source (no dependency for it).
    pub struct Lcg(pub u64);
    impl Lcg {
        /// Uniform in [-1, 1).
        pub fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    /// 2026-11-02 00:00 UTC, a Monday.
    pub const MONDAY: Millis = 1_793_577_600_000;

    /// A web server's CPU: 20 % at night, 90 % from 09:00 to 11:00 on
    /// weekdays, 50 % at weekend mornings, with ±3 noise.
    pub fn web_cpu(start: Millis, steps: usize, seed: u64) -> Series {
        let mut rng = Lcg(seed);
        let values = (0..steps)
            .map(|i| {
                let t = start + i as Millis * STEP_MS;
                let day = ((t - MONDAY).div_euclid(86_400_000)) % 7;
                let minute = (t.rem_euclid(86_400_000)) / 60_000;
                let peak = (9 * 60..11 * 60).contains(&minute);
                let base = match (peak, day >= 5) {
                    (true, false) => 90.0,
                    (true, true) => 50.0,
                    _ => 20.0,
                };
                base + 3.0 * rng.next()
            })
            .collect();
        Series { start, values }
    }

    /// That `f`'s band holds at least 85 % of the day `next`.
    fn assert_holds_most_of(f: &Fit, next: &Series) {
        let inside = f
            .points
            .iter()
            .zip(&next.values)
            .filter(|(p, a)| **a >= p.lower && **a <= p.upper)
            .count();
        assert!(
            inside as f64 >= 0.85 * DAY as f64,
            "{inside} of {DAY} inside"
        );
    }

    /// The backtest's blend is never worse than "same time yesterday" on
    /// the days it was scored on (that is a candidate), its weights sum to
    /// one, and the band from its residuals holds about 95 % of a day it
    /// never saw.
    #[test]
    fn the_blend_beats_yesterday_in_its_backtest_and_its_band_covers_a_new_day() {
        let hist = web_cpu(MONDAY, 14 * DAY, 5);
        let f = fit(&hist, MONDAY + 14 * 86_400_000).expect("fits");
        let b = f.backtest.as_ref().expect("a backtest");
        assert!(b.rel_mae.expect("scored") <= 1.05, "{b:?}");
        let total: f64 = b.blend.iter().map(|(_, w)| w).sum();
        assert!((total - 1.0).abs() < 1e-9, "{b:?}");
        assert!(b.candidates.iter().any(|(m, _)| *m == Model::Mstl), "{b:?}");
        let next = web_cpu(MONDAY + 14 * 86_400_000, DAY, 99);
        assert_holds_most_of(&f, &next);
        assert!(
            f.points
                .iter()
                .all(|p| p.lower <= p.value && p.value <= p.upper),
            "the point inside its band"
        );
    }

    /// Counts (requests per step): 4 at night, 400 from 12:00 to 20:00,
    /// with the scatter of a count (its square root: 2 and 20).
    fn counts(start: Millis, steps: usize, seed: u64) -> Series {
        let mut rng = Lcg(seed);
        let values = (0..steps)
            .map(|i| {
                let minute = ((start + i as Millis * STEP_MS).rem_euclid(86_400_000)) / 60_000;
                let level: f64 = if (12 * 60..20 * 60).contains(&minute) {
                    400.0
                } else {
                    4.0
                };
                // about normal, variance 1
                let z = rng.next() + rng.next() + rng.next();
                (level + level.sqrt() * z).max(0.0)
            })
            .collect();
        Series { start, values }
    }

    /// A count's errors grow with the square root of its level, not in
    /// proportion: its band is calibrated on the square-root scale, so the
    /// busy afternoon's band is about √100 = 10 times the night's, not 100
    /// times as on the log scale, and it still holds a new day.
    #[test]
    fn a_count_gets_a_band_as_wide_as_its_scatter() {
        let hist = counts(MONDAY, 14 * DAY, 11);
        let now = MONDAY + 14 * 86_400_000;
        let f = fit(&hist, now).expect("fits");
        let width_at = |hour: i64| {
            let p = f
                .points
                .iter()
                .find(|p| p.t == now + hour * 3_600_000)
                .expect("a point");
            p.upper - p.lower
        };
        let (day, night) = (width_at(14), width_at(2));
        assert!(night > 0.0, "a band at night: {night}");
        // (on the log scale: about 590 against 6)
        assert!(
            day / night < 20.0 && day < 160.0,
            "day {day} vs night {night}: in proportion to the root, not the level"
        );
        let next = counts(now, DAY, 12);
        assert_holds_most_of(&f, &next);
    }

    /// Two days and a half: too short to backtest, yet a forecast (same
    /// time yesterday, no band), never a failed fit.
    #[test]
    fn a_history_too_short_to_backtest_still_forecasts() {
        let f = fit(&web_cpu(MONDAY, 2 * DAY + DAY / 2, 3), MONDAY).expect("a forecast");
        assert_eq!(f.model, Model::NaiveDay);
        assert_eq!(f.points.len(), AHEAD_STEPS);
        assert!(f
            .points
            .iter()
            .all(|p| p.lower == p.value && p.upper == p.value));
    }

    /// A rush from 09:00 to 11:00 on the wall clock of `zone`, ±3 noise.
    fn local_rush(zone: &jiff::tz::TimeZone, start: Millis, steps: usize, seed: u64) -> Series {
        let mut rng = Lcg(seed);
        let values = (0..steps)
            .map(|i| {
                let t = start + i as Millis * STEP_MS;
                let minute = civil_ms(zone, t).rem_euclid(86_400_000) / 60_000;
                let peak = (9 * 60..11 * 60).contains(&minute);
                (if peak { 90.0 } else { 20.0 }) + 3.0 * rng.next()
            })
            .collect();
        Series { start, values }
    }

    fn utc_ms(s: &str) -> Millis {
        s.parse::<jiff::Timestamp>()
            .expect("a time")
            .as_millisecond()
    }

    /// Berlin's 09:00 rush stays at 09:00 across both DST changes: with the
    /// change inside the history (two weeks of winter time, then a summer
    /// day forecast; the same in autumn) and inside the day forecast; in UTC
    /// the same history would put the rush an hour off.
    #[test]
    fn the_daily_season_follows_the_local_wall_clock_across_dst() {
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").expect("tzdata");
        let cases = [
            // spring: 2026-03-29 02:00 CET becomes 03:00 CEST
            (
                "2026-03-16T00:00:00Z",
                "2026-03-30T00:00:00Z",
                "2026-03-30T07:00:00Z",
            ),
            (
                "2026-03-14T23:00:00Z",
                "2026-03-28T23:00:00Z",
                "2026-03-29T07:00:00Z",
            ),
            // autumn: 2026-10-25 03:00 CEST becomes 02:00 CET
            (
                "2026-10-12T00:00:00Z",
                "2026-10-26T00:00:00Z",
                "2026-10-26T08:00:00Z",
            ),
            (
                "2026-10-10T22:00:00Z",
                "2026-10-24T22:00:00Z",
                "2026-10-25T08:00:00Z",
            ),
        ];
        for (from, to, nine) in cases {
            let (from, now, nine) = (utc_ms(from), utc_ms(to), utc_ms(nine));
            let steps = ((now - from) / STEP_MS) as usize;
            let hist = local_rush(&berlin, from, steps, 4);
            let f = fit_in(&hist, now, &berlin).expect("fits");
            assert_eq!(f.timezone, "Europe/Berlin");
            assert_eq!(f.points.len(), AHEAD_STEPS, "a point per instant");
            assert_eq!(f.points[0].t, now);
            let o = f
                .outlook(now, now + 86_400_000, Bound::Value, true, |v| v > 55.0)
                .expect("in range");
            assert_eq!(
                o.crossing,
                Some(nine),
                "from {}: the rush at 09:00 Berlin",
                crate::time::rfc3339(from)
            );
            // and it ends at 11:00 on the wall clock too
            let after = f
                .points
                .iter()
                .find(|p| p.t == nine + 2 * 3_600_000)
                .expect("11:00");
            assert!(after.value < 55.0, "over at 11:00: {after:?}");
            // the same history read in UTC forecasts the rush an hour off
            let utc = fit(&hist, now).expect("fits");
            let u = utc
                .outlook(now, now + 86_400_000, Bound::Value, true, |v| v > 55.0)
                .expect("in range");
            assert_ne!(u.crossing, Some(nine), "UTC cannot place it");
        }
    }

    #[test]
    fn too_little_history_says_how_much_is_needed() {
        let s = web_cpu(MONDAY, DAY + 10, 1);
        match fit(&s, MONDAY) {
            Err(FitError::TooLittleHistory { have_ms, need_ms }) => {
                assert_eq!(have_ms, (DAY as Millis + 10) * STEP_MS);
                assert_eq!(need_ms, 2 * 86_400_000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gaps_are_filled_from_the_previous_day_then_linearly() {
        let mut v = vec![1.0; 2 * DAY];
        v[DAY + 5] = f64::NAN;
        v[5] = 7.0;
        v[10] = f64::NAN;
        v[9] = 2.0;
        v[11] = 4.0;
        let f = fill(&v);
        assert_eq!(f[DAY + 5], 7.0, "a day earlier");
        assert_eq!(f[10], 1.0, "a day later");
        let mut w = vec![f64::NAN; 5];
        w[0] = 0.0;
        w[4] = 4.0;
        assert_eq!(fill(&w), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn a_bursty_series_band_leaves_its_misses_above_and_is_narrower_for_it() {
        // residuals on the log scale: a calm bulk and 8 % upward bursts
        let mut rng = Lcg(7);
        let mut r: Vec<(f64, f64)> = (0..1000)
            .map(|i| {
                let calm = 0.1 * rng.next();
                (if i % 12 == 0 { 1.5 + rng.next() } else { calm }, 1.0)
            })
            .collect();
        let res = Residuals::of(&mut r).unwrap();
        let scale = Scale {
            floor: 1.0,
            root: false,
        };
        let at = vec![scale.to(100.0); 48];
        let (lo, hi) = res.band(&at, &scale);
        let inside = r.iter().filter(|x| x.0 >= lo && x.0 <= hi).count();
        assert!(inside >= 950, "95 % of the residuals inside: {inside}");
        // the equal-tailed band for comparison
        let (elo, ehi) = (res.edge(0.975, true), res.edge(0.975, false));
        let width = |lo: f64, hi: f64| scale.back(at[0] + hi) - scale.back(at[0] + lo);
        assert!(
            width(lo, hi) < 0.8 * width(elo, ehi),
            "{} vs equal tails {}",
            width(lo, hi),
            width(elo, ehi)
        );
        assert!(lo < 0.0 && hi > 0.0);
        // a symmetric one stays (about) symmetric
        let mut r: Vec<(f64, f64)> = (0..1000).map(|_| (rng.next(), 1.0)).collect();
        let res = Residuals::of(&mut r).unwrap();
        let (lo, hi) = res.band(&[scale.to(100.0)], &scale);
        assert!(lo < -0.9 && hi > 0.9, "{lo} {hi}");
        // too few residuals: no band
        assert!(Residuals::of(&mut [(0.0, 1.0); 7]).is_none());
    }

    #[test]
    fn accuracy_ignores_near_zero_actuals_and_counts_the_interval() {
        let p = |v: f64| Point {
            t: 0,
            value: v,
            lower: v - 1.0,
            upper: v + 1.0,
        };
        let (mape, cov) = accuracy(&[100.0, 0.0, 50.0], &[p(90.0), p(5.0), p(50.5)]).unwrap();
        assert!((mape - 5.5).abs() < 1e-9, "{mape}");
        assert!((cov - 100.0 / 3.0).abs() < 1e-9, "only 50 is inside: {cov}");
        assert_eq!(accuracy(&[f64::NAN], &[p(1.0)]), None);
    }

    /// Fourteen days of a web server's mornings: the held-out fifteenth day
    /// is forecast within 10 % MAPE, and its rush is seen coming.
    #[test]
    fn fourteen_days_forecast_the_fifteenth_within_ten_percent() {
        let all = web_cpu(MONDAY, 15 * DAY, 7);
        let history = Series {
            start: MONDAY,
            values: all.values[..14 * DAY].to_vec(),
        };
        let now = MONDAY + 14 * 86_400_000;
        let f = fit(&history, now).expect("fits");
        assert_eq!(f.seasons, vec![DAY, WEEK]);
        assert_eq!(f.history_end, now);
        let (mape, coverage) = accuracy(&all.values[14 * DAY..], &f.points).expect("scored");
        assert!(mape <= 10.0, "MAPE {mape:.1} %");
        // the interval models the trend's uncertainty, not the noise around the
        // seasons: it is narrower than 95 % would suggest, and shown as such
        assert!(coverage > 50.0, "coverage {coverage:.1} %");
        // the backtest forecast the last day (a Sunday) from the 13 before it:
        // under two weeks, so without the weekly season, and it shows
        let acc = f.accuracy.expect("backtested");
        assert_eq!(acc.day_start, now - 86_400_000);
        assert!(
            acc.mape > 0.0 && acc.mape < 30.0,
            "backtest MAPE {:.1}",
            acc.mape
        );
        // the rush at 09:00 on Monday the 16th is predicted, not before 08:55
        let nine = now + 9 * 3_600_000;
        let o = f
            .outlook(now, now + 86_400_000, Bound::Value, true, |v| v > 70.0)
            .expect("in range");
        let at = o.crossing.expect("a crossing");
        assert!(
            (nine - STEP_MS..=nine).contains(&at),
            "crossing at {}",
            (at - now) / 60_000
        );
    }

    #[test]
    fn a_flat_noisy_series_never_crosses_and_a_missing_day_still_fits() {
        let mut rng = Lcg(3);
        let mut values: Vec<f64> = (0..4 * DAY).map(|_| 30.0 + 5.0 * rng.next()).collect();
        let now = MONDAY + 4 * 86_400_000;
        let flat = fit(
            &Series {
                start: MONDAY,
                values: values.clone(),
            },
            now,
        )
        .expect("fits");
        let o = flat
            .outlook(now, now + 86_400_000, Bound::Value, true, |v| v > 50.0)
            .expect("in range");
        assert_eq!(o.crossing, None, "peak forecast {}", o.extreme);
        // day 2 missing entirely
        for v in &mut values[DAY..2 * DAY] {
            *v = f64::NAN;
        }
        let gap = fit(
            &Series {
                start: MONDAY,
                values,
            },
            now,
        )
        .expect("a missing day fits");
        assert!(gap
            .points
            .iter()
            .all(|p| p.value.is_finite() && p.lower <= p.upper));
    }
}
