//! Forecast quality on real traces: the Numenta Anomaly Benchmark's
//! development set (`benches/data/nab-dev/`, MIT, its licence beside it;
//! `VP_TRACES=DIR` scores another folder of `timestamp,value` CSVs),
//! replayed through the daemon's own code path: the CSV import
//! (`history::parse_csv`), the history store's resampling
//! (`History::import`, `History::series`) and the fit (`forecast::fit`).
//!
//! Protocol: for each trace and cut (a 14-day trace: its last day; longer
//! ones: a cut every 15 days), the 14 days before the cut are the history,
//! the next 24 h the truth, compared in 15-minute means. Per cut: MAE
//! relative to "same time yesterday" (relMAE; < 1 is better), the share of
//! actual values inside the 95 % band, the band's mean width over the mean
//! actual value, and peaks — the first 15-minute mean of the day above the
//! history's 90th percentile: seen ahead when the forecast crosses at or
//! before it; on a day without one, a forecast crossing is a false alarm.
//! The same is printed for the baselines (same time last week, the mean of
//! the same slot over the last 7 days, and the median of the same slot over
//! the last 7 to 14 days with the number of days picked per cut by a 3-day
//! backtest), and a ceiling to judge the targets by: the truth day's own
//! hourly means with the narrowest 95 % band of one shape around them (see
//! [`ceiling`]). Nothing is tuned per trace. Beside the day-ahead reading,
//! the same day as the daemon reads it, refitted every hour: each hour's
//! steps from the fit made at its start with the day's truth so far in the
//! history (24 fits a cut, in the optimised run only).
//!
//! Run: cargo bench --bench forecast_real (`VP_DETAIL=1`: each cut's first
//! crossings of the history's p90 — truth, band's upper edge, point;
//! `VP_CUT_EVERY=D`: a cut every D days of the long traces instead of every
//! 15, a larger set to judge a change on before the protocol's figures)

use std::path::{Path, PathBuf};

use virt_persona::forecast::{fit, LEVEL, STEP_MS};
use virt_persona::history::{parse_csv, History, ImportLimits, Resolved, SeriesKey};
use virt_persona::model::persona::Metric;

const DAY_MS: i64 = 86_400_000;
const UUID: &str = "00000000-0000-4000-8000-000000000001";

/// (time ms, value) of a NAB CSV (`2014-02-14 14:30:00,1.732`, UTC).
fn read_trace(p: &Path) -> Vec<(i64, f64)> {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let (t, v) = l.split_once(',')?;
            let ts: jiff::Timestamp = format!("{}Z", t.trim().replace(' ', "T")).parse().ok()?;
            Some((ts.as_millisecond(), v.trim().parse().ok()?))
        })
        .collect()
}

/// 15-minute means over `[from, from + steps·15 min)`, NaN where empty.
fn means(points: &[(i64, f64)], from: i64, steps: usize) -> Vec<f64> {
    let mut sum = vec![(0.0, 0u32); steps];
    for &(t, v) in points {
        if t >= from && t < from + steps as i64 * STEP_MS && v.is_finite() {
            let i = ((t - from) / STEP_MS) as usize;
            sum[i].0 += v;
            sum[i].1 += 1;
        }
    }
    sum.iter()
        .map(|&(s, n)| if n > 0 { s / n as f64 } else { f64::NAN })
        .collect()
}

#[derive(Default, Clone, Copy)]
struct Score {
    rel_mae: f64,
    coverage: f64,
    width: f64,
    /// Some(seen ahead) on a peak day, None on a quiet one.
    peak: Option<bool>,
    false_alarm: bool,
}

fn mae(f: &[f64], truth: &[f64]) -> f64 {
    let (mut s, mut n) = (0.0, 0);
    for (a, b) in f.iter().zip(truth) {
        if a.is_finite() && b.is_finite() {
            s += (a - b).abs();
            n += 1;
        }
    }
    if n > 0 {
        s / n as f64
    } else {
        f64::NAN
    }
}

fn first_above(v: &[f64], x: f64) -> Option<usize> {
    v.iter().position(|y| y.is_finite() && *y > x)
}

fn score(
    f: &[f64],
    band: Option<(&[f64], &[f64])>,
    truth: &[f64],
    naive_mae: f64,
    p90: f64,
) -> Score {
    let (mut inside, mut n, mut width) = (0, 0, 0.0);
    if let Some((lo, hi)) = band {
        for i in 0..truth.len().min(lo.len()) {
            if truth[i].is_finite() {
                n += 1;
                width += hi[i] - lo[i];
                if truth[i] >= lo[i] && truth[i] <= hi[i] {
                    inside += 1;
                }
            }
        }
    }
    let mean_truth = finite_mean(truth.iter().copied()).unwrap_or(0.0);
    let tc = first_above(truth, p90);
    let fc = first_above(f, p90);
    Score {
        rel_mae: mae(f, truth) / naive_mae,
        coverage: if n > 0 {
            inside as f64 / n as f64
        } else {
            f64::NAN
        },
        width: if n > 0 {
            width / n as f64 / mean_truth
        } else {
            f64::NAN
        },
        peak: tc.map(|t| fc.is_some_and(|c| c <= t)),
        false_alarm: tc.is_none() && fc.is_some(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn summary(name: &str, s: &[Score]) {
    let peaks: Vec<bool> = s.iter().filter_map(|x| x.peak).collect();
    let quiet = s.iter().filter(|x| x.peak.is_none()).count();
    let alarms = s.iter().filter(|x| x.false_alarm).count();
    let covered: Vec<f64> = s
        .iter()
        .map(|x| x.coverage)
        .filter(|x| x.is_finite())
        .collect();
    // a baseline without a band says so instead of NaN
    let band = if covered.is_empty() {
        "no band".to_string()
    } else {
        format!(
            "coverage median {:.0} % (mean {:.0} %); width median {:.2}x",
            100.0 * median(covered.clone()),
            100.0 * covered.iter().sum::<f64>() / covered.len() as f64,
            median(s.iter().map(|x| x.width).collect()),
        )
    };
    println!(
        "{name:<28} relMAE median {:.2}, better than same-time-yesterday on {}/{}; {band}; peaks seen ahead {}/{}; false alarms {}/{} quiet days",
        median(s.iter().map(|x| x.rel_mae).collect()),
        s.iter().filter(|x| x.rel_mae < 1.0).count(),
        s.len(),
        peaks.iter().filter(|x| **x).count(),
        peaks.len(),
        alarms,
        quiet
    );
}

/// The mean of the finite values, None if there are none.
fn finite_mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = v
        .filter(|x| x.is_finite())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// A reference for the targets, not a bound: a forecast that knew each hour
/// of the truth day exactly (its hourly means) but not the 15-minute steps
/// inside the hour, with the narrowest band of one shape that holds
/// [`LEVEL`] of the truth's steps around it, calibrated on the truth itself
/// — one width in the metric's units or one factor (on `ln(value + ε)`),
/// whichever is narrower. Returns (point, lower, upper).
fn ceiling(truth: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let center: Vec<f64> = (0..truth.len())
        .map(|i| {
            let b = i / 4 * 4;
            finite_mean(truth[b..(b + 4).min(truth.len())].iter().copied()).unwrap_or(f64::NAN)
        })
        .collect();
    let pairs: Vec<(f64, f64)> = truth
        .iter()
        .zip(&center)
        .filter(|(a, c)| a.is_finite() && c.is_finite())
        .map(|(a, c)| (*a, *c))
        .collect();
    let n = pairs.len();
    let Some(level) = finite_mean(pairs.iter().map(|p| p.0)) else {
        let nan = vec![f64::NAN; truth.len()];
        return (center, nan.clone(), nan);
    };
    let k = ((LEVEL * n as f64).ceil() as usize).clamp(1, n);
    let eps = 1e-3 * level.abs().max(1e-9);
    // a step's residual and the band's edge for a residual, on either scale
    let residual = |log: bool, a: f64, c: f64| {
        if log {
            ((a + eps) / (c + eps)).ln()
        } else {
            a - c
        }
    };
    let edge = |log: bool, c: f64, r: f64| {
        if log {
            (c + eps) * r.exp() - eps
        } else {
            c + r
        }
    };
    // on each scale, the narrowest window of k sorted residuals by its mean
    // width in the metric's units: (width, lowest, highest residual)
    let narrowest = |log: bool| -> (f64, f64, f64) {
        let mut r: Vec<f64> = pairs.iter().map(|&(a, c)| residual(log, a, c)).collect();
        r.sort_by(f64::total_cmp);
        (0..=n - k)
            .map(|i| {
                let (lo, hi) = (r[i], r[i + k - 1]);
                let width = pairs
                    .iter()
                    .map(|&(_, c)| edge(log, c, hi) - edge(log, c, lo))
                    .sum::<f64>()
                    / n as f64;
                (width, lo, hi)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((f64::INFINITY, 0.0, 0.0))
    };
    let (add, log) = (narrowest(false), narrowest(true));
    let use_log = log.0 < add.0;
    let (_, lo_r, hi_r) = if use_log { log } else { add };
    let (mut lo, mut hi) = (Vec::new(), Vec::new());
    for (&a, &c) in truth.iter().zip(&center) {
        let (l, h) = (edge(use_log, c, lo_r), edge(use_log, c, hi_r));
        // a step whose residual is inside the window is inside its band
        // (the way back from the log scale must not round it out)
        let r = residual(use_log, a, c);
        let inside = a.is_finite() && r >= lo_r && r <= hi_r;
        lo.push(if inside { l.min(a) } else { l });
        hi.push(if inside { h.max(a) } else { h });
    }
    (center, lo, hi)
}

/// The coarser export steps the history is also imported at: 30 and 60
/// minutes (NYC taxi data is 30-minute).
/// (`None`: the trace's own steps, for comparison.)
const COARSER: [Option<i64>; 3] = [None, Some(30 * 60_000), Some(60 * 60_000)];

/// The daemon's path for one cut: a CSV of the 14 days before it (the
/// trace's own points, or their means over `every` ms stamped at each
/// interval's start, as exporters write them), imported, resampled by the
/// history store and fitted.
fn forecast_of(
    trace: &[(i64, f64)],
    from: i64,
    cut: i64,
    every: Option<i64>,
    name: &str,
) -> Option<virt_persona::forecast::Fit> {
    let inside = trace.iter().filter(|p| p.0 >= from && p.0 < cut);
    let points: Vec<(i64, f64)> = match every {
        None => inside.copied().collect(),
        Some(e) => {
            let mut acc = std::collections::BTreeMap::<i64, (f64, u32)>::new();
            for &(t, v) in inside {
                let a = acc.entry(t.div_euclid(e) * e).or_default();
                a.0 += v;
                a.1 += 1;
            }
            acc.into_iter()
                .map(|(t, (s, n))| (t, s / n as f64))
                .collect()
        }
    };
    let mut csv = String::from("timestamp,domain,metric,value\n");
    for (t, v) in points {
        csv.push_str(&format!("{},{UUID},cpu,{v}\n", t as f64 / 1000.0));
    }
    let batch = match parse_csv(
        &csv,
        |d| Some(Resolved::Here(d.to_string())),
        &ImportLimits::default(),
    ) {
        Ok(b) => b,
        Err(e) => {
            println!("{name}: import refused: {e}");
            return None;
        }
    };
    let mut h = History::default();
    h.import(&batch, cut, 15 * DAY_MS);
    let series = h.series(&SeriesKey::new(UUID, Metric::Cpu), STEP_MS, cut);
    match fit(&series, cut) {
        Ok(x) => Some(x),
        Err(e) => {
            println!(
                "{name} @ {}: no forecast: {e}",
                virt_persona::time::rfc3339(cut)
            );
            None
        }
    }
}

fn main() {
    let dir = std::env::var_os("VP_TRACES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/data/nab-dev"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "csv"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    // `cargo test --all-targets` runs this unoptimised and without --bench:
    // a smoke run of two traces then (figures meaningless)
    if !std::env::args().any(|a| a == "--bench") {
        files.retain(|f| {
            f.to_string_lossy().contains("ec2_cpu_utilization_53ea38")
                || f.to_string_lossy().contains("occupancy")
        });
    }
    let (mut ours, mut upper, mut yesterday, mut week, mut slot, mut picked_slot) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut models = std::collections::BTreeMap::<String, usize>::new();
    let mut coarse_bias: Vec<Vec<f64>> = vec![Vec::new(); COARSER.len()];
    // VP_CUT_EVERY=D: a cut every D days on the long traces instead of 15
    // (more peaks and quiet days, for judging a change; not the protocol)
    let every_days: i64 = std::env::var("VP_CUT_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|d| *d >= 1)
        .unwrap_or(15);
    let detail = std::env::var_os("VP_DETAIL").is_some();
    // the hourly refits (24 fits a cut) only in the optimised bench run
    let hourly = std::env::args().any(|a| a == "--bench");
    let (mut hourly_point, mut hourly_upper) = (Vec::new(), Vec::new());
    let (mut ceiling_point, mut ceiling_upper) = (Vec::new(), Vec::new());
    let mut fits = 0usize;
    let cpu0 = cpu_seconds();
    for f in &files {
        let trace = read_trace(f);
        let (Some(first), Some(last)) = (trace.first(), trace.last()) else {
            continue;
        };
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let span = last.0 - first.0;
        let mut cuts = Vec::new();
        if span < 15 * DAY_MS {
            cuts.push((last.0 - DAY_MS + 1).div_euclid(STEP_MS) * STEP_MS);
        } else {
            let mut c = (first.0 + 14 * DAY_MS).div_euclid(STEP_MS) * STEP_MS;
            while c + DAY_MS <= last.0 + STEP_MS {
                cuts.push(c);
                c += every_days * DAY_MS;
            }
        }
        for cut in cuts {
            let from = cut - 14 * DAY_MS;
            let Some(fitted) = forecast_of(&trace, from, cut, None, &name) else {
                continue;
            };
            // the same history exported at coarser steps: the forecast's
            // level must not move (the bias is the mean forecast over the
            // mean truth, minus one)
            let truth = means(&trace, cut, 96);
            fits += COARSER.iter().filter(|e| e.is_some()).count() + 1;
            for (k, every) in COARSER.iter().enumerate() {
                let again = every.map(|e| forecast_of(&trace, from, cut, Some(e), &name));
                if let Some(f) = again.unwrap_or_else(|| Some(fitted.clone())) {
                    let mean = |v: &mut dyn Iterator<Item = f64>| finite_mean(v).unwrap_or(0.0);
                    let fc = mean(&mut f.points.iter().take(96).map(|p| p.value));
                    coarse_bias[k].push(fc / mean(&mut truth.iter().copied()) - 1.0);
                }
            }
            *models.entry(fitted.model.name()).or_default() += 1;
            let hist = means(&trace, from, 14 * 96);
            // the threshold the daemon's own record judges peaks by
            let p90 = virt_persona::issued::p90(&virt_persona::forecast::Series {
                start: from,
                values: hist.clone(),
            })
            .unwrap_or(f64::NAN);
            let at = |d: i64, i: usize| {
                hist.get((hist.len() as i64 - d * 96 + i as i64) as usize)
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            let naive: Vec<f64> = (0..96).map(|i| at(1, i)).collect();
            let last_week: Vec<f64> = (0..96).map(|i| at(7, i)).collect();
            let slot_mean: Vec<f64> = (0..96)
                .map(|i| {
                    let v: Vec<f64> = (1..=7)
                        .map(|d| at(d, i))
                        .filter(|x| x.is_finite())
                        .collect();
                    v.iter().sum::<f64>() / v.len().max(1) as f64
                })
                .collect();
            // the bar: the median of the same slot over the last
            // k = 7..14 days, k picked per cut by a 3-day backtest
            let slot_median = |h: &[f64], k: usize| -> Vec<f64> {
                let n = h.len();
                (0..96)
                    .map(|i| {
                        let v: Vec<f64> = (1..=k)
                            .filter_map(|d| (n + i).checked_sub(d * 96))
                            .filter(|&j| j < n)
                            .map(|j| h[j])
                            .filter(|x| x.is_finite())
                            .collect();
                        median(v)
                    })
                    .collect()
            };
            let picked = (7..=14)
                .min_by(|&a, &b| {
                    let err = |k: usize| -> f64 {
                        (1..=3)
                            .map(|d| {
                                let end = hist.len() - d * 96;
                                mae(&slot_median(&hist[..end], k), &hist[end..end + 96])
                            })
                            .filter(|e| e.is_finite())
                            .sum()
                    };
                    err(a).total_cmp(&err(b))
                })
                .unwrap_or(7);
            let picked_median = slot_median(&hist, picked);
            let naive_mae = mae(&naive, &truth);
            // the fit's points from the cut on, by time
            let pick = |g: fn(&virt_persona::forecast::Point) -> f64| -> Vec<f64> {
                (0..96)
                    .map(|i| {
                        let t = cut + i as i64 * STEP_MS;
                        fitted
                            .points
                            .iter()
                            .find(|p| p.t == t)
                            .map(g)
                            .unwrap_or(f64::NAN)
                    })
                    .collect()
            };
            let (pv, lo, hi) = (pick(|p| p.value), pick(|p| p.lower), pick(|p| p.upper));
            let s = score(&pv, Some((&lo, &hi)), &truth, naive_mae, p90);
            // a condition with `bound = "upper"` reads the band's upper edge
            upper.push(score(&hi, None, &truth, naive_mae, p90));
            if detail {
                println!(
                    "  p90 {p90:.2}: truth first above at step {:?}, upper edge at {:?}, point at {:?}; upper max {:.2}",
                    first_above(&truth, p90),
                    first_above(&hi, p90),
                    first_above(&pv, p90),
                    hi.iter().copied().fold(f64::NAN, f64::max)
                );
            }
            println!(
                "{name:<32} {} relMAE {:.2} (last week {:.2}, 7-day slot mean {:.2}) coverage {:>3.0} % width {:.2}x peak {} model: {}",
                virt_persona::time::rfc3339(cut),
                s.rel_mae,
                mae(&last_week, &truth) / naive_mae,
                mae(&slot_mean, &truth) / naive_mae,
                100.0 * s.coverage,
                s.width,
                match (s.peak, s.false_alarm) {
                    (Some(true), _) => "seen ahead",
                    (Some(false), _) => "missed",
                    (None, true) => "false alarm",
                    (None, false) => "quiet",
                },
                fitted.model.name()
            );
            if hourly {
                // the daemon refits every hour: the forecast each hour of the
                // day is read from is the one fitted at that hour's start
                // from the 14 days before it (truth so far included)
                let (mut pv, mut hi) = (vec![f64::NAN; 96], vec![f64::NAN; 96]);
                for h in 0..24 {
                    let at = cut + h * 3_600_000;
                    let Some(f) = forecast_of(&trace, at - 14 * DAY_MS, at, None, &name) else {
                        continue;
                    };
                    fits += 1;
                    for p in f
                        .points
                        .iter()
                        .filter(|p| p.t >= at && p.t < at + 3_600_000)
                    {
                        let i = ((p.t - cut) / STEP_MS) as usize;
                        pv[i] = p.value;
                        hi[i] = p.upper;
                    }
                }
                hourly_point.push(score(&pv, None, &truth, naive_mae, p90));
                hourly_upper.push(score(&hi, None, &truth, naive_mae, p90));
            }
            let (cp, clo, chi) = ceiling(&truth);
            let c = score(&cp, Some((&clo, &chi)), &truth, naive_mae, p90);
            // the ceiling's band holds LEVEL of the truth by construction
            assert!(
                c.coverage.is_nan() || c.coverage >= LEVEL - 1e-9,
                "{name}: ceiling band covers {}",
                c.coverage
            );
            ceiling_point.push(c);
            ceiling_upper.push(score(&chi, None, &truth, naive_mae, p90));
            ours.push(s);
            yesterday.push(score(&naive, None, &truth, naive_mae, p90));
            week.push(score(&last_week, None, &truth, naive_mae, p90));
            slot.push(score(&slot_mean, None, &truth, naive_mae, p90));
            picked_slot.push(score(&picked_median, None, &truth, naive_mae, p90));
        }
    }
    println!();
    summary("virt-persona forecast", &ours);
    summary("its band's upper edge", &upper);
    if hourly {
        summary("refitted hourly: point", &hourly_point);
        summary("refitted hourly: upper edge", &hourly_upper);
    }
    summary("same time yesterday", &yesterday);
    summary("same time last week", &week);
    summary("7-day slot mean", &slot);
    summary("slot median, k by backtest", &picked_slot);
    summary("ceiling: the hours known", &ceiling_point);
    summary("ceiling's upper edge", &ceiling_upper);
    for (every, b) in COARSER.iter().zip(&coarse_bias) {
        let abs: Vec<f64> = b.iter().map(|x| x.abs()).collect();
        println!(
            "exported {}: mean forecast vs mean truth, median |bias| {:.1} % (median bias {:+.1} %) over {} cuts",
            every.map_or("at the trace's own steps".to_string(), |e| format!("every {} min", e / 60_000)),
            100.0 * median(abs),
            100.0 * median(b.clone()),
            b.len()
        );
    }
    println!("models chosen: {models:?}");
    println!(
        "CPU for {fits} fits ({} cuts, each also exported coarser{}): {:.1} s",
        ours.len(),
        if hourly { " and refitted hourly" } else { "" },
        cpu_seconds() - cpu0
    );
}

/// This process's CPU time so far, in seconds.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = 100.0;
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (get(11) + get(12)) / tick
}
