//! Forecast costs (issue 9), one line per figure (the README quotes them):
//! - a full refit of 100 domains × 14 days × 1 metric: CPU seconds, peak
//!   extra memory;
//! - the history store for 100 domains × 14 days × 4 metrics: file size,
//!   time to write, compact and load it;
//! - the control loop's tick at 20 domains (recording fake, forecast
//!   persona, history handed to the worker each tick) without and with the
//!   worker refitting 100 series all the time beside it.
//!
//!   cargo bench --bench forecast

use std::time::Instant;

use std::sync::Arc;

use virt_persona::forecast::{fit, Series, DAY, STEP_MS};
use virt_persona::forecaster::{spawn, ToWorker, WorkerConfig};
use virt_persona::history::{History, SeriesKey, DAY_MS, MINUTE_MS};
use virt_persona::hypervisor::fake::FakeHypervisor;
use virt_persona::hypervisor::DomainStats;
use virt_persona::model::persona::Metric;
use virt_persona::model::tuning::Tuning;
use virt_persona::reconciler::Reconciler;
use virt_persona::store::{HistoryDb, MemoryStore};

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

/// 10 for a benchmark run, 1 for the smoke run under `cargo test`.
static SCALE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(10);
fn scale() -> usize {
    SCALE.load(std::sync::atomic::Ordering::Relaxed)
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

/// 100 domains × 14 days × 4 metrics as the store keeps them: minutes for
/// the last two days, 5-minute means before.
fn store_size(dir: &std::path::Path) {
    let now: i64 = 1_793_577_600_000 + 14 * DAY_MS;
    let metrics = [
        Metric::Cpu,
        Metric::DiskIops,
        Metric::NetBps,
        Metric::MemoryRss,
    ];
    let mut h = History::default();
    let t = Instant::now();
    for d in 0..10 * scale() {
        let uuid = format!("00000000-0000-4000-8000-{d:012}");
        for m in metrics {
            let key = SeriesKey::new(&uuid, m);
            let pts = virt_persona::history::ImportBatch {
                series: vec![key],
                points: (0..14 * 1440)
                    .map(|i| (0, now - 14 * DAY_MS + i * MINUTE_MS + 1, (i % 97) as f64))
                    .collect(),
            };
            h.import(&pts, now, 14 * DAY_MS + MINUTE_MS);
        }
    }
    let built = t.elapsed();
    // as the daemon does it: the first write, an hourly compaction that
    // drops and folds chunks, written, and the file opened again at a start;
    // redb reuses freed pages and the daemon never rewrites the file, so
    // these sizes are the ones a host sees
    let db = HistoryDb::open(dir).expect("open");
    let t = Instant::now();
    db.save(&h.take_changes()).expect("save");
    let saved = t.elapsed();
    let first = db.size_bytes();
    let t = Instant::now();
    h.compact(now + DAY_MS, 14 * DAY_MS);
    db.save(&h.take_changes()).expect("save");
    let compacted = t.elapsed();
    let after_compaction = db.size_bytes();
    drop(db);
    let db = HistoryDb::open(dir).expect("open");
    let t = Instant::now();
    let n = db.load().expect("load").len();
    let loaded = t.elapsed();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let restarted = db.size_bytes();
    println!(
        "history store {} domains x 14 days x 4 metrics: {:.1} MiB on disk after the first write, {:.1} MiB after a day's compaction, {:.1} MiB after a restart ({n} chunks, {} points); built {:.2} s, first write {:.2} s, a day's compaction + write {:.2} s, load at start {:.2} s",
        10 * scale(),
        mib(first),
        mib(after_compaction),
        mib(restarted),
        h.len_points(),
        built.as_secs_f64(),
        saved.as_secs_f64(),
        compacted.as_secs_f64(),
        loaded.as_secs_f64()
    );
    // then two days as the worker lives them: every tick's value recorded,
    // written once a minute, compacted hourly
    let keys: Vec<SeriesKey> = (0..10 * scale())
        .flat_map(|d| {
            let uuid = format!("00000000-0000-4000-8000-{d:012}");
            metrics.map(|m| SeriesKey::new(&uuid, m))
        })
        .collect();
    let days = 2;
    let t = Instant::now();
    let mut clock = now + DAY_MS;
    for minute in 0..days * 1440 {
        for (i, k) in keys.iter().enumerate() {
            h.record(k, clock, ((minute + i as i64) % 97) as f64);
        }
        clock += MINUTE_MS;
        h.close_minutes(clock);
        if minute % 60 == 59 {
            h.compact(clock, 14 * DAY_MS);
        }
        db.save(&h.take_changes()).expect("save");
    }
    let lived = t.elapsed();
    println!(
        "history store after {days} more days of minute writes and hourly compactions: {:.1} MiB on disk ({:.2} s, {:.1} ms per minute's write)",
        mib(db.size_bytes()),
        lived.as_secs_f64(),
        lived.as_secs_f64() * 1000.0 / (days * 1440) as f64
    );
}

/// A libvirt test-driver host with 20 running domains.
fn test_host(dir: &std::path::Path) -> String {
    let mut x = String::from("<?xml version=\"1.0\"?>\n<node>\n<cpu><mhz>3000</mhz><model>x86_64</model><active>8</active><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>2</threads></cpu>\n<memory>33554432</memory>\n");
    for i in 0..20 {
        x.push_str(&format!("<domain type='test'><name>dom-{i}</name><uuid>00000000-0000-4000-8000-{i:012}</uuid><memory unit='KiB'>1048576</memory><vcpu placement='static'>2</vcpu><os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'><source file='/guest/d{i}.img'/><target dev='vda' bus='virtio'/></disk></devices></domain>\n"));
    }
    x.push_str("</node>\n");
    let path = dir.join("host20.xml");
    std::fs::write(&path, x).expect("write host");
    format!("test://{}", path.display())
}

/// The daemon's tick as it runs: libvirt (the test driver, 20 domains) and
/// the redb state store; durations in µs, sorted.
fn libvirt_ticks(
    uri: &str,
    state: &std::path::Path,
    worker: Option<&crossbeam_channel::Sender<ToWorker>>,
    ticks: usize,
) -> Vec<f64> {
    let hv = Arc::new(
        virt_persona::hypervisor::libvirt::LibvirtHypervisor::connect(uri).expect("test driver"),
    );
    let store = virt_persona::store::RedbStore::open(state).expect("store");
    let persona = virt_persona::model::validate::parse_persona(
        "id = \"rush\"\n[activation]\n[[activation.when]]\nforecast = \"cpu\"\nhorizon = \"15m\"\nabove = 70\n[tuning]\nblkio_weight = 800\n",
        std::path::Path::new("b.toml"),
    )
    .expect("valid");
    let mut rec = Reconciler::new(hv, store, std::time::Duration::from_secs(30));
    rec.set_personas(vec![Arc::new(persona)]);
    let mut now = 1_793_577_600_000i64;
    let mut out = Vec::with_capacity(ticks);
    for _ in 0..ticks {
        now += 5000;
        let t = Instant::now();
        rec.tick(now, Some(virt_persona::host::read()))
            .expect("tick");
        let values = rec.history_values();
        if let Some(w) = worker {
            let _ = w.try_send(ToWorker::Samples(values));
        }
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Tick durations (µs, sorted) of `ticks` ticks at 20 domains.
fn ticks(worker: Option<&crossbeam_channel::Sender<ToWorker>>, ticks: usize) -> Vec<f64> {
    let hv = Arc::new(FakeHypervisor::new(8));
    let persona = virt_persona::model::validate::parse_persona(
        "id = \"rush\"\n[activation]\nmode = \"any\"\n[[activation.when]]\nforecast = \"cpu\"\nhorizon = \"15m\"\nabove = 70\n[[activation.when]]\nmetric = \"cpu\"\nabove = 90\n[tuning]\ncpu_shares = 2048\n",
        std::path::Path::new("b.toml"),
    )
    .expect("valid");
    for i in 0..20 {
        let mut d = FakeHypervisor::simple_domain(&format!("dom-{i}"), 2);
        d.uuid = format!("00000000-0000-4000-8000-{i:012}");
        hv.add_domain(d, Tuning::default());
    }
    let mut rec = Reconciler::new(
        hv.clone(),
        MemoryStore::default(),
        std::time::Duration::from_secs(3600),
    );
    rec.set_personas(vec![Arc::new(persona)]);
    let mut now = 1_793_577_600_000i64;
    let mut out = Vec::with_capacity(ticks);
    for k in 0..ticks {
        now += 5000;
        for i in 0..20 {
            hv.set_stats(
                &format!("dom-{i}"),
                DomainStats {
                    name: format!("dom-{i}"),
                    uuid: format!("00000000-0000-4000-8000-{i:012}"),
                    cpu_time_ns: Some(k as u64 * 2_000_000_000),
                    ..Default::default()
                },
            );
        }
        let t = Instant::now();
        rec.tick(now, None).expect("tick");
        // what the daemon does after each tick: hand the values to history
        let values = rec.history_values();
        if let Some(w) = worker {
            let _ = w.try_send(ToWorker::Samples(values));
        }
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(f64::total_cmp);
    out
}

fn tick_with_refit(dir: &std::path::Path) {
    let n = 2_000 * scale();
    let pct = |v: &[f64], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    // the worker, refitting 100 imported series back to back the whole time
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let (tx, _news, handle) = spawn(WorkerConfig {
        state_dir: dir.to_path_buf(),
        retention: 14 * DAY_MS,
        clock: Box::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        }),
        refit_every: 0,
        max_series: 10_000,
        series: Default::default(),
    })
    .expect("worker");
    let mut want = virt_persona::forecaster::Wanted::new();
    for d in 0..10 * scale() as u64 {
        let s = series(d);
        let key = SeriesKey::new(&format!("00000000-0000-4000-9000-{d:012}"), Metric::Cpu);
        let start = now - 14 * DAY_MS;
        let batch = virt_persona::history::ImportBatch {
            series: vec![key.clone()],
            points: s
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| (0, start + i as i64 * STEP_MS, *v))
                .collect(),
        };
        let (rtx, rrx) = std::sync::mpsc::channel();
        tx.send(ToWorker::Import {
            batch,
            retime: false,
            reply: Box::new(move |r| {
                let _ = rtx.send(r);
            }),
        })
        .expect("import");
        rrx.recv().expect("reply").expect("imported");
        want.insert(key, virt_persona::forecaster::Want::utc());
    }
    let uri = test_host(dir);
    std::fs::create_dir_all(dir.join("s1")).expect("dir");
    std::fs::create_dir_all(dir.join("s2")).expect("dir");
    let quiet = ticks(None, n);
    let lv_quiet = libvirt_ticks(&uri, &dir.join("s1"), None, 200 * scale());
    tx.send(ToWorker::Want(want)).expect("want");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let busy = ticks(Some(&tx), n);
    let lv_busy = libvirt_ticks(&uri, &dir.join("s2"), Some(&tx), 200 * scale());
    let _ = tx.send(ToWorker::Stop);
    let _ = handle.join();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "daemon tick on libvirt's test driver, 20 domains, redb state, beside {} refitting series: without a refit p50 {:.0} us, p99 {:.0} us; with the worker refitting all the time p50 {:.0} us ({:+.1} %), p99 {:.0} us",
        10 * scale(),
        pct(&lv_quiet, 0.5),
        pct(&lv_quiet, 0.99),
        pct(&lv_busy, 0.5),
        100.0 * (pct(&lv_busy, 0.5) / pct(&lv_quiet, 0.5) - 1.0),
        pct(&lv_busy, 0.99),
    );
    println!(
        "control-loop tick alone (recording fake), 20 domains: without a refit p50 {:.1} us, p99 {:.1} us, mean {:.1} us; with the worker refitting all the time p50 {:.1} us ({:+.1} %), p99 {:.1} us, mean {:.1} us ({:+.1} %)",
        pct(&quiet, 0.5),
        pct(&quiet, 0.99),
        mean(&quiet),
        pct(&busy, 0.5),
        100.0 * (pct(&busy, 0.5) / pct(&quiet, 0.5) - 1.0),
        pct(&busy, 0.99),
        mean(&busy),
        100.0 * (mean(&busy) / mean(&quiet) - 1.0),
    );
}

fn main() {
    let tmp = std::env::temp_dir().join(format!("vp-bench-forecast-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("size")).expect("tmp");
    std::fs::create_dir_all(tmp.join("tick")).expect("tmp");
    // `cargo test --all-targets` runs this unoptimised and without --bench:
    // then a smoke run of every part at a tenth of the size (figures meaningless)
    let full = std::env::args().any(|a| a == "--bench");
    SCALE.store(
        if full { 10 } else { 1 },
        std::sync::atomic::Ordering::Relaxed,
    );
    if !full {
        println!("forecast benchmark, smoke run at a tenth of the size: run it with `cargo bench --bench forecast`");
    }
    let domains: u64 = std::env::var("VP_BENCH_DOMAINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10 * scale() as u64);
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
    // after the refit, so its peak memory is the refit's own
    store_size(&tmp.join("size"));
    tick_with_refit(&tmp.join("tick"));
    let _ = std::fs::remove_dir_all(&tmp);
}
