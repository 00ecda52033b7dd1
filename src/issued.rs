//! Forecasts as they were issued, and their record against what then
//! happened (SPEC §7) — pure; `now` is passed in.
//!
//! A backtest says how a forecaster *would* have done; an admin deciding
//! whether to let a forecast act wants to know how the forecasts this host
//! actually issued did. So once a day per series the worker keeps the day
//! ahead as it was forecast ([`Issued`]: the point, the band and the
//! threshold peaks are judged by), stored in `history.redb` and bounded to
//! [`KEEP`] days; each fit scores the days that have passed
//! ([`score`]) with the bench's protocol (`benches/forecast_real.rs`):
//! 15-minute means, the error relative to "same time yesterday", the share
//! of actual values inside the 95 % band, the band's width relative to the
//! mean actual value, and peaks — a day's first step above the threshold of
//! the persona's `above` condition (the bench's 90th percentile of the
//! history for a series without one), seen ahead when the forecast crossed
//! it at or before; on a day without one a forecast crossing is a false
//! alarm: a persona that would have gone on for nothing.

use serde::{Deserialize, Serialize};

use crate::forecast::{Fit, Series, DAY, STEP_MS};
use crate::time::Millis;

/// Days of issued forecasts kept per series (the record covers the last 7
/// complete ones; one more is being waited for).
pub const KEEP: usize = 8;
/// How often a series' forecast is kept: one day ahead, once a day.
pub const EVERY_MS: Millis = DAY as Millis * STEP_MS;
/// The days the record covers.
pub const RECORD_DAYS: Millis = 7;

/// One day ahead as it was forecast. The stored form: every field has a
/// default and unknown fields are skipped, so later releases read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Issued {
    /// When it was fitted.
    pub issued_at: Millis,
    /// The first step it forecasts (a multiple of 15 minutes).
    pub start: Millis,
    /// One per 15-minute step from `start`; `NaN` is stored as `null`.
    pub value: Vec<Option<f32>>,
    pub lower: Vec<Option<f32>>,
    pub upper: Vec<Option<f32>>,
    /// The threshold a day's peak crosses: the first `above` threshold of
    /// the forecast conditions on the series when it was issued, else the
    /// 90th percentile of the history it was made from.
    pub peak_at: Option<f64>,
}

impl Issued {
    /// The day ahead of a fit (its first [`DAY`] steps).
    pub fn of(fit: &Fit, peak_at: Option<f64>) -> Issued {
        let mut i = Issued {
            issued_at: fit.fitted_at,
            start: fit.history_end,
            peak_at,
            ..Default::default()
        };
        for k in 0..DAY {
            let t = fit.history_end + k as Millis * STEP_MS;
            let p = fit.points.iter().find(|p| p.t == t);
            let f = |v: Option<f64>| v.filter(|x| x.is_finite()).map(|x| x as f32);
            i.value.push(f(p.map(|p| p.value)));
            i.lower.push(f(p.map(|p| p.lower)));
            i.upper.push(f(p.map(|p| p.upper)));
        }
        i
    }
}

/// Keeps the day ahead of `fit` when none was kept in the last day: true
/// when it did (the log is then to be stored). The oldest beyond [`KEEP`]
/// are dropped.
pub fn issue(log: &mut Vec<Issued>, fit: &Fit, peak_at: Option<f64>) -> bool {
    let due = log
        .last()
        .is_none_or(|l| fit.fitted_at - l.issued_at >= EVERY_MS || fit.fitted_at < l.issued_at);
    if !due {
        return false;
    }
    // a clock set back: what was issued "later" cannot be scored in order
    log.retain(|l| l.issued_at <= fit.fitted_at);
    log.push(Issued::of(fit, peak_at));
    let extra = log.len().saturating_sub(KEEP);
    log.drain(..extra);
    true
}

/// The 90th percentile of a history's values: the peaks' threshold of a
/// series no `above` condition names.
pub fn p90(series: &Series) -> Option<f64> {
    let mut v: Vec<f64> = series
        .values
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    v.get(v.len() * 9 / 10).copied()
}

/// How the issued forecasts did over the last [`RECORD_DAYS`] complete days.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Record {
    /// Days scored (each a forecast issued and the day it forecast passed).
    pub days: usize,
    /// The start of the first day scored.
    pub since: Option<Millis>,
    /// Mean absolute error over all scored steps relative to that of "same
    /// time yesterday" on the same steps (below 1 is better).
    pub rel_mae: Option<f64>,
    /// Days on which the forecast's error was below yesterday's.
    pub better_days: usize,
    /// Share of actual values inside the 95 % band, in percent.
    pub coverage: Option<f64>,
    /// The band's mean width over the mean actual value.
    pub width: Option<f64>,
    /// The threshold peaks were judged by (the newest scored day's).
    pub peak_at: Option<f64>,
    /// Days with a peak, and those whose peak the forecast saw ahead.
    pub peaks: usize,
    pub peaks_seen: usize,
    /// Days without a peak, and those the forecast crossed anyway.
    pub quiet_days: usize,
    pub false_alarms: usize,
}

/// Scores the issued forecasts whose day has passed by `now` and began in
/// the last [`RECORD_DAYS`] days against `actual` (the series' 15-minute
/// means; its steps from `actual.start`). `None` until one day is scored.
pub fn score(log: &[Issued], actual: &Series, now: Millis) -> Option<Record> {
    let at = |t: Millis| -> Option<f64> {
        if t < actual.start {
            return None;
        }
        let i = ((t - actual.start) / STEP_MS) as usize;
        actual.values.get(i).copied().filter(|v| v.is_finite())
    };
    let mut r = Record::default();
    let (mut err, mut base, mut inside, mut n_band, mut width, mut sum_actual, mut n_actual) =
        (0.0, 0.0, 0usize, 0usize, 0.0, 0.0, 0usize);
    let from = now - RECORD_DAYS * EVERY_MS;
    for day in log
        .iter()
        .filter(|d| d.start >= from && d.start + EVERY_MS <= now)
    {
        let (mut e, mut b, mut steps) = (0.0, 0.0, 0usize);
        let (mut first_actual, mut first_forecast) = (None, None);
        for k in 0..day.value.len() {
            let t = day.start + k as Millis * STEP_MS;
            let Some(a) = at(t) else { continue };
            let f = day.value[k].map(f64::from);
            if let Some(x) = day.peak_at {
                if first_actual.is_none() && a > x {
                    first_actual = Some(k);
                }
                if first_forecast.is_none() && f.is_some_and(|f| f > x) {
                    first_forecast = Some(k);
                }
            }
            sum_actual += a;
            n_actual += 1;
            if let (Some(lo), Some(hi)) = (day.lower[k], day.upper[k]) {
                let (lo, hi) = (f64::from(lo), f64::from(hi));
                n_band += 1;
                width += hi - lo;
                if a >= lo && a <= hi {
                    inside += 1;
                }
            }
            if let (Some(f), Some(y)) = (f, at(t - EVERY_MS)) {
                e += (a - f).abs();
                b += (a - y).abs();
                steps += 1;
            }
        }
        if n_actual == 0 && steps == 0 {
            continue;
        }
        r.days += 1;
        r.peak_at = day.peak_at.or(r.peak_at);
        r.since = Some(r.since.map_or(day.start, |s: Millis| s.min(day.start)));
        err += e;
        base += b;
        if steps > 0 && e < b {
            r.better_days += 1;
        }
        if day.peak_at.is_some() {
            match first_actual {
                Some(ta) => {
                    r.peaks += 1;
                    if first_forecast.is_some_and(|tf| tf <= ta) {
                        r.peaks_seen += 1;
                    }
                }
                None => {
                    r.quiet_days += 1;
                    if first_forecast.is_some() {
                        r.false_alarms += 1;
                    }
                }
            }
        }
    }
    if r.days == 0 {
        return None;
    }
    r.rel_mae = (base > 0.0).then(|| err / base);
    r.coverage = (n_band > 0).then(|| 100.0 * inside as f64 / n_band as f64);
    let mean_actual = sum_actual / n_actual.max(1) as f64;
    r.width = (n_band > 0 && mean_actual > 0.0).then(|| width / n_band as f64 / mean_actual);
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::{tests::web_cpu, tests::MONDAY};

    const D: Millis = EVERY_MS;

    /// Issued once a day whatever the refits, bounded, and stored in a form
    /// that reads with fields missing or added.
    #[test]
    fn one_forecast_a_day_is_kept_and_old_ones_go() {
        let mut log = Vec::new();
        for h in (0..(10 * 24)).step_by(6) {
            let now = MONDAY + 14 * D + h * 3_600_000;
            // three days of history: enough to fit, and a quick one
            let hist = web_cpu(now - 3 * D, 3 * DAY, h as u64);
            let fit = crate::forecast::fit(&hist, now).expect("fits");
            let kept = issue(&mut log, &fit, p90(&hist));
            assert_eq!(kept, h % 24 == 0, "hour {h}");
        }
        assert_eq!(log.len(), KEEP);
        assert_eq!(log[0].issued_at, MONDAY + 16 * D);
        assert!(log
            .iter()
            .all(|l| l.value.len() == DAY && l.peak_at.is_some()));
        let json = serde_json::to_string(&log[0]).expect("encodes");
        let back: Issued = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, log[0]);
        let old: Issued = serde_json::from_str(r#"{"start": 5, "later": true}"#).expect("lenient");
        assert_eq!(old.start, 5);
        assert!(old.value.is_empty());
    }

    /// Scored against what happened: a forecast that knew the rush beats
    /// yesterday on a week of days after a weekend, sees the peaks coming
    /// and holds the actual values in its band; one that forecast a flat
    /// line misses every peak; a day not yet over is not scored.
    #[test]
    fn the_record_scores_what_was_issued_against_what_happened() {
        let start = MONDAY;
        let all = web_cpu(start, 30 * DAY, 9);
        let mut good = Vec::new();
        let mut flat = Vec::new();
        for d in 14..21 {
            let now = start + d * D;
            let hist = Series {
                start: now - 14 * D,
                values: all.values[((d - 14) as usize * DAY)..(d as usize * DAY)].to_vec(),
            };
            let fit = crate::forecast::fit(&hist, now).expect("fits");
            // the rush persona's threshold
            issue(&mut good, &fit, Some(55.0));
            let mut f = fit.clone();
            for p in &mut f.points {
                (p.value, p.lower, p.upper) = (20.0, 15.0, 25.0);
            }
            issue(&mut flat, &f, Some(55.0));
        }
        let now = start + 21 * D;
        let actual = Series {
            start,
            values: all.values[..21 * DAY].to_vec(),
        };
        let g = score(&good, &actual, now).expect("scored");
        assert_eq!(g.days, 7);
        assert_eq!(g.since, Some(start + 14 * D));
        // Monday after a weekend: yesterday had no rush, the forecast did
        assert!(g.rel_mae.expect("an error") < 0.8, "{g:?}");
        assert!(g.coverage.expect("a band") > 80.0, "{g:?}");
        // five weekday rushes (90) cross 55, the weekend mornings (50) not
        assert_eq!((g.peaks, g.quiet_days), (5, 2), "{g:?}");
        assert_eq!(g.peaks_seen, 5, "{g:?}");
        // a weekend day is a false alarm when its forecast crossed 55 anyway
        let crossed = good
            .iter()
            .filter(|d| {
                let day = (d.start - MONDAY) / D % 7;
                day >= 5 && d.value.iter().flatten().any(|v| *v > 55.0)
            })
            .count();
        assert_eq!(g.false_alarms, crossed, "{g:?}");
        let f = score(&flat, &actual, now).expect("scored");
        assert_eq!((f.peaks, f.peaks_seen, f.false_alarms), (5, 0, 0), "{f:?}");
        assert!(f.rel_mae.expect("an error") > g.rel_mae.expect("an error"));
        // half a day later the last forecast is still not over
        let early = score(&good, &actual, now - D / 2).expect("scored");
        assert_eq!(early.days, 6);
        assert_eq!(score(&[], &actual, now), None);
    }
}
