//! The hostile-client targets of the API, measured on a daemon on the test
//! driver (release build):
//! - `/healthz` latency (p50, p99, max) on new connections while 2,048
//!   connections that send nothing or half a request are held and reopened
//!   from one process, on TCP (with the token) and on the unix socket;
//! - the daemon's peak and settled RSS around the worst import the default
//!   limits allow (64 MiB of CSV: 100 domains not on this host × 10
//!   metrics, ~1M rows), and `/healthz` while it is read;
//! - `/healthz` while the worst valid persona (1,000 globs, ~250 KiB) is
//!   put and validated.
//!
//! Targets: p99 ≤ 100 ms under the flood; RSS bounded by the caps.
//!
//! Run: cargo bench --bench hostile        (VP_FLOOD=2048, VP_ASKS=300)

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::hostile::{healthz_while, quantile, send, worst_persona, Flood, Target};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn rss(pid: u32) -> (f64, f64) {
    common::hostile::rss_mib(pid)
}

fn healthz_tcp(addr: &str) -> u16 {
    common::hostile::healthz_tcp(addr, TOKEN)
}

fn report(what: &str, mut lat: Vec<Duration>, failed: usize) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what}: {} asked, {failed} failed; /healthz p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        ms(quantile(&mut lat, 0.5)),
        ms(quantile(&mut lat, 0.99)),
        ms(quantile(&mut lat, 1.0)),
    );
}

/// Asks `/healthz` with `ask` until `done` (or `n` times when no `done`),
/// 10 ms apart; (latencies, failures).
fn asking(n: usize, mut ask: impl FnMut() -> u16) -> (Vec<Duration>, usize) {
    let mut lat = Vec::new();
    let mut failed = 0;
    for _ in 0..n {
        let t = Instant::now();
        if ask() == 200 {
            lat.push(t.elapsed());
        } else {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (lat, failed)
}

fn main() {
    // `cargo test --all-targets` runs this unoptimised and without --bench:
    // a smoke run at a small size then (figures meaningless)
    let full = std::env::args().any(|a| a == "--bench");
    let flood_n: usize = common::env_or("VP_FLOOD", if full { 2048 } else { 128 });
    let asks: usize = common::env_or("VP_ASKS", if full { 300 } else { 20 });
    let import_bytes: usize = if full { 64 << 20 } else { 1 << 20 };
    let dir = common::test_dir("bench", "hostile");
    let tf = dir.join("token");
    std::fs::write(&tf, format!("{TOKEN}\n")).expect("token");
    std::fs::set_permissions(&tf, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("mode");
    let addr = format!("127.0.0.1:{}", common::hostile::free_port());
    let d = common::Daemon::start_args(
        &dir,
        &common::test_host_uri(),
        &[
            "--interval",
            "1s",
            "--api-listen",
            &addr,
            "--api-token-file",
            tf.to_str().unwrap_or(""),
        ],
        &[],
    );
    let pid = d.child.id();
    common::wait_some("the daemon answers", &d, 60, || {
        (healthz_tcp(&addr) == 200).then_some(())
    });
    let sock = d.socket.clone();
    let unix = || common::http(&sock, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").0;

    let (lat, failed) = asking(asks, || healthz_tcp(&addr));
    report("TCP, no flood", lat, failed);
    for (name, target) in [
        ("TCP", Target::Tcp(addr.clone())),
        ("unix socket", Target::Unix(sock.clone())),
    ] {
        let flood = Flood::start(target, flood_n);
        flood.wait_held(flood_n);
        let (lat, failed) = if name == "TCP" {
            asking(asks, || healthz_tcp(&addr))
        } else {
            asking(asks, unix)
        };
        let opened = flood.opened();
        drop(flood);
        report(
            &format!("{name}, {flood_n} silent/half-sent connections held ({opened} opened)"),
            lat,
            failed,
        );
        println!("  daemon RSS meanwhile: {:.1} MiB", rss(pid).0);
    }

    // the worst import the default limits allow
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let metrics = [
        "cpu",
        "disk_iops",
        "disk_bps",
        "net_bps",
        "net_rx_pps",
        "net_tx_pps",
        "disk_read_bps",
        "disk_write_bps",
        "net_rx_bps",
        "net_tx_bps",
    ];
    let mut csv = String::from("timestamp,domain,metric,value\n");
    let mut i = 0u64;
    while csv.len() < import_bytes - 100 {
        let dom = i % 100;
        let m = metrics[(i / 100 % 10) as usize];
        let t = now - 60 - (i / 1000) * 300;
        csv.push_str(&format!(
            "{t},{:08x}-0000-4000-8000-{dom:012x},{m},{}.5\n",
            dom,
            i % 97
        ));
        i += 1;
    }
    let (before, _) = rss(pid);
    let (((st, answer), took), lat) = healthz_while(&sock, || {
        let t = Instant::now();
        (
            send(&sock, "POST", "/v1/history/import", "text/csv", &csv),
            t.elapsed(),
        )
    });
    let (after, peak) = rss(pid);
    println!(
        "worst allowed import: {:.1} MiB CSV, {i} rows, 1,000 series: HTTP {st} in {:.1} s ({})",
        csv.len() as f64 / 1048576.0,
        took.as_secs_f64(),
        answer.chars().take(120).collect::<String>()
    );
    println!("  daemon RSS: {before:.1} MiB before, peak {peak:.1} MiB, {after:.1} MiB after");
    report("  during the import", lat, 0);

    // the worst valid persona
    let toml = worst_persona("worst");
    let ((st, took), lat) = healthz_while(&sock, || {
        let t = Instant::now();
        let (st, _) = send(
            &sock,
            "PUT",
            "/v1/personas/worst",
            "application/toml",
            &toml,
        );
        (st, t.elapsed())
    });
    println!(
        "worst valid persona ({} KiB, 1,000 globs): HTTP {st} in {:.0} ms",
        toml.len() >> 10,
        took.as_secs_f64() * 1e3
    );
    report("  while it is validated", lat, 0);
}
