//! Load on the API: `GET /v1/domains` with 100 domains on the unix socket while
//! the loop ticks every second. Reports requests per second, latency
//! percentiles, and the ticks run during the load (none may be missed).
//!
//! Run: cargo bench --bench api_load        (VP_LOAD_SECONDS=10, VP_LOAD_CLIENTS=4)

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn tick_count(sock: &Path) -> f64 {
    let (_, body) = get(sock, "/metrics");
    body.lines()
        .find(|l| l.starts_with("virt_persona_tick_seconds_count"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

fn get(sock: &Path, path: &str) -> (u16, String) {
    common::http(sock, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("API load benchmark: run it with `cargo bench --bench api_load`");
        return;
    }
    let secs: u64 = common::env_or("VP_LOAD_SECONDS", 10);
    let clients: usize = common::env_or("VP_LOAD_CLIENTS", 4);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("personas")).expect("dir");
    std::fs::write(
        dir.join("personas/p.toml"),
        "id = \"p\"\n[match]\nnames = [\"bench-1*\"]\n[tuning]\nmemory_soft_limit = \"512 MiB\"\n",
    )
    .expect("persona");
    let mut xml = String::from("<node><cpu><mhz>3000</mhz><model>x86_64</model><active>8</active><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>2</threads></cpu><memory>268435456</memory>\n");
    for i in 0..100 {
        xml.push_str(&format!("<domain type='test'><name>bench-{i}</name><uuid>6695eb01-f6a4-8304-79aa-{i:012}</uuid><memory unit='KiB'>1048576</memory><vcpu>2</vcpu><os><type arch='x86_64'>hvm</type></os></domain>\n"));
    }
    xml.push_str("</node>\n");
    std::fs::write(dir.join("host.xml"), xml).expect("host");
    let d = common::Daemon::start_args(
        &dir,
        &format!("test://{}", dir.join("host.xml").display()),
        &["--interval", "1s"],
        &[],
    );
    let sock = d.socket.clone();
    std::thread::sleep(Duration::from_secs(2));
    let (st, body) = get(&sock, "/v1/domains");
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)
            .expect("json")
            .as_array()
            .map(|a| a.len()),
        Some(100)
    );

    let ticks0 = tick_count(&sock);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (st, _) = get(&sock, "/v1/domains");
                    assert_eq!(st, 200);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client"))
        .collect();
    let elapsed = t0.elapsed().as_secs_f64();
    let ticks = tick_count(&sock) - ticks0;
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "GET /v1/domains (100 domains), {clients} clients, {secs} s: {:.0} requests/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "ticks during the load: {ticks} in {elapsed:.1} s at a 1 s interval (expected {:.0}; a missed or late tick shows as fewer)",
        elapsed.floor()
    );
}
