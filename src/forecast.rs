//! Forecasts from a metric's own history (SPEC §7) — pure; `now` is passed in.
//!
//! Several forecasters compete per series ([`Model`]: what an admin would
//! write by hand — same time yesterday or last week, the median of the same
//! time over some days, that median at the last hours' level, the last hour
//! — and Grafana's `augurs` MSTL): each forecasts the last days from the
//! history before them (a rolling-origin backtest), the best are blended by
//! their errors, and the 95 % band comes from the blend's own backtest
//! errors (split-conformal), so it means what it says. History arrives as
//! 15-minute means ([`Series`]), laid out on the wall clock of the persona's
//! zone ([`fit_in`]); gaps are filled from the same time a day earlier where
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
use crate::model::persona::{Bound, Metric};
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
    /// the steps whose actual value is not near zero (see [`mape`]).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// The same step yesterday.
    NaiveDay,
    /// The same step a week ago (two weeks of history).
    NaiveWeek,
    /// The median of the same step over the last `n` days.
    DayMedian(usize),
    /// The median of the same step on the same weekday over the last `n`
    /// weeks.
    WeekMedian(usize),
    /// The median of the same step over the last `n` days, moved by how far
    /// the last two hours stood from that median (a level shift carries on).
    DayLevel(usize),
    /// The mean of the last hour, flat (for series without a daily shape).
    LastHour,
    /// MSTL (daily, and weekly once two weeks exist), the rest smoothed by
    /// ETS without a trend
    /// (augurs).
    Mstl,
}

impl Model {
    pub fn name(&self) -> String {
        match self {
            Model::NaiveDay => "same time yesterday".into(),
            Model::NaiveWeek => "same time last week".into(),
            Model::DayMedian(n) => format!("median of the same time over {n} days"),
            Model::WeekMedian(n) => format!("median of the same weekday and time over {n} weeks"),
            Model::DayLevel(n) => {
                format!("median of the same time over {n} days, at the last two hours' level")
            }
            Model::LastHour => "the last hour's mean".into(),
            Model::Mstl => "MSTL + ETS (augurs)".into(),
        }
    }
    /// The history it needs, in steps, besides the steps it forecasts.
    fn needs(&self) -> usize {
        match self {
            Model::NaiveDay => DAY,
            Model::NaiveWeek => WEEK,
            Model::DayMedian(n) => n * DAY,
            Model::WeekMedian(n) => n * WEEK,
            Model::DayLevel(n) => n * DAY + LEVEL_STEPS,
            Model::LastHour => DAY,
            Model::Mstl => 2 * DAY,
        }
    }
    /// Every candidate a history of `len` steps supports.
    fn candidates(len: usize) -> Vec<Model> {
        [
            Model::NaiveDay,
            Model::NaiveWeek,
            Model::DayMedian(3),
            Model::DayMedian(7),
            Model::DayMedian(14),
            Model::WeekMedian(2),
            Model::DayLevel(3),
            Model::DayLevel(7),
            Model::LastHour,
            Model::Mstl,
        ]
        .into_iter()
        .filter(|m| m.needs() <= len)
        .collect()
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
pub struct Forecasts(pub HashMap<String, BTreeMap<Metric, FitState>>);

impl Forecasts {
    pub fn get(&self, domain: &str, metric: Metric) -> Option<&FitState> {
        self.0.get(domain)?.get(&metric)
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
                .map(move |(metric, st)| (SeriesKey::new(d, *metric), st))
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The point forecast of `m` for `ahead` steps after `values` (gap-filled).
fn predict(m: Model, values: &[f64], ahead: usize) -> Result<Vec<f64>, FitError> {
    let n = values.len();
    let profile = |period: usize, k: usize| -> Vec<f64> {
        (0..ahead)
            .map(|h| {
                let mut same: Vec<f64> = (1..=k)
                    .filter_map(|j| (n + h % period).checked_sub(j * period))
                    .filter(|&i| i < n)
                    .map(|i| values[i])
                    .collect();
                if same.is_empty() {
                    values[n - 1]
                } else {
                    median(&mut same)
                }
            })
            .collect()
    };
    // the median of the same step over the `k` days before step `i`
    let before = |i: usize, k: usize| -> Option<f64> {
        let mut same: Vec<f64> = (1..=k)
            .filter_map(|j| i.checked_sub(j * DAY))
            .map(|j| values[j])
            .collect();
        (!same.is_empty()).then(|| median(&mut same))
    };
    Ok(match m {
        Model::LastHour => {
            let last = &values[n.saturating_sub(4)..];
            vec![last.iter().sum::<f64>() / last.len().max(1) as f64; ahead]
        }
        Model::DayLevel(k) => {
            let offsets: Vec<f64> = (n.saturating_sub(LEVEL_STEPS)..n)
                .filter_map(|i| Some(values[i] - before(i, k)?))
                .collect();
            let off = mean(&offsets).unwrap_or(0.0);
            profile(DAY, k).into_iter().map(|v| v + off).collect()
        }
        Model::NaiveDay => profile(DAY, 1),
        Model::NaiveWeek => profile(WEEK, 1),
        Model::DayMedian(k) => profile(DAY, k),
        Model::WeekMedian(k) => profile(WEEK, k),
        Model::Mstl => model(values, ahead)?.point,
    })
}

/// The lower and upper quantiles of residuals (actual − forecast) at the
/// band's level: split-conformal, the finite-sample corrected rank.
fn band(residuals: &mut [f64]) -> Option<(f64, f64)> {
    let m = residuals.len();
    if m < 8 {
        return None;
    }
    residuals.sort_by(f64::total_cmp);
    let tail = (1.0 - LEVEL) / 2.0;
    let hi = (((m + 1) as f64 * (1.0 - tail)).ceil() as usize).clamp(1, m) - 1;
    let lo = (((m + 1) as f64 * tail).floor() as usize).clamp(1, m) - 1;
    Some((residuals[lo], residuals[hi]))
}

/// Steps whose distance from the daily profile sets [`Model::DayLevel`]'s
/// level (two hours).
const LEVEL_STEPS: usize = 8;
/// Steps of one block of horizons sharing a band (12 hours: the first and
/// the second half of the day ahead). The errors of one backtest day are
/// correlated (a day that runs high runs high for hours), so a week of
/// backtests is about seven independent samples per block whatever its
/// length: 4-hour blocks covered 84 % of the development traces' next days
/// at a nominal 95 %, 12-hour blocks 95 % (benches/forecast_real.rs).
const BAND_BLOCK: usize = 48;
/// Days the statistical model is backtested on (a fit each).
const SELECT_ORIGINS: usize = 2;
/// How many of the best candidates are blended: averaging several simple
/// forecasters is more robust than betting on the one that won a short
/// backtest (on the development traces 5 gave a narrower band and a smaller
/// error than 1 or 3; all of them, no better).
const BLEND: usize = 5;
/// The weight of a backtest day's errors, per day back: series change
/// regime (a new deployment, a level shift), so yesterday's errors say more
/// about tomorrow than last week's.
const ORIGIN_DECAY: f64 = 0.5;
/// Origins the bands of a simple model are calibrated on.
const BAND_ORIGINS: usize = 7;

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
/// Every candidate [`Model`] the history supports forecasts each of the
/// last days from the history before it (the simple ones up to
/// [`BAND_ORIGINS`] days, the statistical model [`SELECT_ORIGINS`]: it costs
/// a fit each). On the days all of them forecast, the [`BLEND`] with the
/// smallest mean absolute errors are kept and blended, weighted by the
/// inverse square of those errors (each day's errors weigh [`ORIGIN_DECAY`]
/// of the next day's: recent days say more); the blend forecasts ahead. Its 95 % band
/// comes from the blend's own backtest residuals per 12-hour block of
/// horizons (split-conformal quantiles), not from any model's assumptions.
/// The accuracy shown is the last day's, with the band calibrated on the
/// days before it only.
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
    // each candidate's forecast of each backtest day (index d-1: d days
    // before the end), from the history before that day, filled on its own
    let days = (n / DAY).saturating_sub(2).min(BAND_ORIGINS);
    let filled_before: Vec<Vec<f64>> = (1..=days).map(|d| fill(&raw[..n - d * DAY])).collect();
    let mut tried: Vec<(Model, Vec<Option<Vec<f64>>>)> = Vec::new();
    for m in Model::candidates(n - DAY) {
        let origins = if m == Model::Mstl {
            SELECT_ORIGINS
        } else {
            days
        };
        let mut per_day = Vec::new();
        for d in 1..=days {
            let before = &filled_before[d - 1];
            per_day.push(if d <= origins && before.len() >= m.needs() {
                predict(m, before, DAY).ok()
            } else {
                None
            });
        }
        if per_day.iter().any(Option::is_some) {
            tried.push((m, per_day));
        }
    }
    let actual = |d: usize| &raw[n - d * DAY..n - d * DAY + DAY];
    let err = |f: &[f64], d: usize| -> Vec<f64> {
        f.iter()
            .zip(actual(d))
            .filter(|(_, a)| a.is_finite())
            .map(|(f, a)| (a - f).abs())
            .collect()
    };
    // each scored on its own days, relative to "same time yesterday" on
    // those days: the statistical model's two days and the simple models'
    // seven are then compared fairly
    let naive_f = tried
        .iter()
        .find(|(m, _)| *m == Model::NaiveDay)
        .map(|(_, f)| f.clone());
    let errors_on = |f: &[Option<Vec<f64>>]| -> (Vec<f64>, Vec<f64>) {
        let (mut mine, mut base) = (Vec::new(), Vec::new());
        for d in 1..=days {
            let (Some(x), Some(Some(b))) = (&f[d - 1], naive_f.as_ref().map(|n| &n[d - 1])) else {
                continue;
            };
            let w = ORIGIN_DECAY.powi(d as i32 - 1);
            mine.extend(err(x, d).into_iter().map(|e| e * w));
            base.extend(err(b, d).into_iter().map(|e| e * w));
        }
        (mine, base)
    };
    let mut scores: Vec<(Model, f64)> = tried
        .iter()
        .filter_map(|(m, f)| {
            let (mine, base) = errors_on(f);
            let (e, b) = (mean(&mine)?, mean(&base)?);
            Some((
                *m,
                if b > 0.0 {
                    e / b
                } else if e > 0.0 {
                    f64::INFINITY
                } else {
                    1.0
                },
            ))
        })
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
    let blend_at = |d: usize| -> Option<Vec<f64>> {
        let mut out = vec![0.0; DAY];
        for (m, w) in &weights {
            let f = tried.iter().find(|(x, _)| x == m)?.1[d - 1].as_ref()?;
            for (o, v) in out.iter_mut().zip(f) {
                *o += w * v;
            }
        }
        Some(out)
    };
    let residuals = |from: usize| -> Vec<Option<(f64, f64)>> {
        let mut blocks = vec![Vec::new(); DAY.div_ceil(BAND_BLOCK)];
        for d in from..=days {
            if let Some(f) = blend_at(d) {
                for (h, (f, a)) in f.iter().zip(actual(d)).enumerate() {
                    if a.is_finite() {
                        blocks[h / BAND_BLOCK].push(a - f);
                    }
                }
            }
        }
        blocks.iter_mut().map(|b| band(b)).collect()
    };
    let bands = residuals(1);
    // the last day, scored with bands from the days before it only
    let accuracy = match blend_at(1) {
        Some(f) if days >= 2 => {
            let day_start = s.start + (n - DAY) as Millis * STEP_MS;
            accuracy(actual(1), &to_points(&f, &residuals(2), day_start)).map(|(mape, coverage)| {
                Accuracy {
                    mape,
                    coverage,
                    day_start,
                }
            })
        }
        _ => None,
    };
    let blend_days: Vec<usize> = (1..=days).filter(|&d| blend_at(d).is_some()).collect();
    let rel_mae = {
        let per: Vec<Option<Vec<f64>>> = (1..=days)
            .map(|d| blend_days.contains(&d).then(|| blend_at(d)).flatten())
            .collect();
        let (mine, base) = errors_on(&per);
        mean(&mine)
            .zip(mean(&base))
            .and_then(|(e, b)| (b > 0.0).then(|| e / b))
    };
    let mut ahead = vec![0.0; ahead_steps];
    for (m, w) in &weights {
        for (o, v) in ahead.iter_mut().zip(predict(*m, &values, ahead_steps)?) {
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
            origins: blend_days.len(),
            rel_mae,
            candidates: scores,
            blend: weights,
        }),
        points: to_points(&ahead, &bands, end),
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

/// Forecast points with their bands (a horizon block without enough
/// residuals has none: its band is the point). Never below zero: every
/// metric is a rate, a share or a size. A value that is not finite is
/// never turned into a number.
fn to_points(f: &[f64], bands: &[Option<(f64, f64)>], start: Millis) -> Vec<Point> {
    f.iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, &value)| {
            let (lo, hi) = bands
                .get(i.min(DAY - 1) / BAND_BLOCK)
                .copied()
                .flatten()
                .unwrap_or((0.0, 0.0));
            Point {
                t: start + i as Millis * STEP_MS,
                value: value.max(0.0),
                lower: (value + lo).max(0.0),
                upper: (value + hi).max(0.0),
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
        assert!(
            f.points
                .iter()
                .all(|p| p.lower <= p.value && p.value <= p.upper),
            "the point inside its band"
        );
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
