//! Load on the API: `GET /v1/domains` with 100 domains on the unix socket while
//! the loop ticks every second. Reports requests per second, latency
//! percentiles, and the ticks run during the load (none may be missed); the
//! daemon's memory with 20 and 100 domains; then hostile clients: 1,000 idle
//! keep-alive connections and 200 slowloris clients (headers that never end)
//! held open while a normal client asks `GET /healthz` 200 times — its
//! latency, its failures, and the daemon's memory meanwhile.
//!
//! Run: cargo bench --bench api_load        (VP_LOAD_SECONDS=10, VP_LOAD_CLIENTS=4,
//! VP_IDLE=1000, VP_SLOW=200; VP_DAEMON_BIN=path runs another daemon build)

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// (RSS, private) of a process in MiB, from /proc/PID/smaps_rollup.
fn memory_mib(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .sum::<f64>()
            / 1024.0
    };
    (
        field("Rss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    )
}

/// A test host with `n` domains (test driver).
fn host_xml(n: usize) -> String {
    let mut xml = String::from("<node><cpu><mhz>3000</mhz><model>x86_64</model><active>8</active><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>2</threads></cpu><memory>268435456</memory>\n");
    for i in 0..n {
        xml.push_str(&format!("<domain type='test'><name>bench-{i}</name><uuid>6695eb01-f6a4-8304-79aa-{i:012}</uuid><memory unit='KiB'>1048576</memory><vcpu>2</vcpu><os><type arch='x86_64'>hvm</type></os></domain>\n"));
    }
    xml.push_str("</node>\n");
    xml
}

/// Reads one response (head and a Content-Length body) off a kept-alive
/// connection; true for a complete 200 answer.
fn read_response(s: &mut UnixStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    if k.eq_ignore_ascii_case("content-length") {
                        v.trim().parse().ok()
                    } else {
                        None
                    }
                })
                .unwrap_or(0);
            if body.len() >= len {
                return head.starts_with("HTTP/1.1 200");
            }
        }
    }
}

/// Hostile clients held open while a normal client asks; prints its latency
/// and failures and the daemon's memory.
fn hostile(sock: &Path, pid: u32, idle: usize, slow: usize) {
    virt_persona::api::server::raise_open_files_limit();
    let before = memory_mib(pid);
    let mut idle_conns = Vec::new();
    let mut idle_refused = 0;
    for _ in 0..idle {
        match UnixStream::connect(sock) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                // one request on a keep-alive connection, then silence
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
                if !read_response(&mut s) {
                    idle_refused += 1;
                }
                idle_conns.push(s);
            }
            Err(_) => idle_refused += 1,
        }
    }
    let mut slow_conns = Vec::new();
    for _ in 0..slow {
        if let Ok(mut s) = UnixStream::connect(sock) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
            slow_conns.push(s);
        }
    }
    // the slow ones send one more header line every second, never the end
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let trickle = std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            for s in &mut slow_conns {
                let _ = s.write_all(b"X-Slow: 1\r\n");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        slow_conns.len()
    });
    std::thread::sleep(Duration::from_millis(500));
    let during = memory_mib(pid);
    let mut lat = Vec::new();
    let mut failures = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let ok = UnixStream::connect(sock).is_ok_and(|mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .is_ok()
                && read_response(&mut s)
        });
        if ok {
            lat.push(t.elapsed());
        } else {
            failures += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let slow_held = trickle.join().unwrap_or(0);
    drop(idle_conns);
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(f64::NAN)
    };
    println!(
        "hostile clients: {idle} idle keep-alive ({idle_refused} refused or unanswered) + {slow_held} slowloris held open;"
    );
    println!(
        "  a normal client, 200 x GET /healthz: {} answered, {failures} failed; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    // the server closes what stays silent past its header timeout (10 s)
    std::thread::sleep(Duration::from_secs(12));
    let after = memory_mib(pid);
    println!(
        "  daemon memory: before RSS {:.1} MiB / private {:.1} MiB, while held RSS {:.1} / private {:.1} MiB, 12 s after they stopped RSS {:.1} / private {:.1} MiB",
        before.0, before.1, during.0, during.1, after.0, after.1
    );
}

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
    let xml = host_xml(100);
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
    let (rss, private) = memory_mib(d.child.id());
    println!(
        "daemon memory, 100 domains, after the load: RSS {rss:.1} MiB, private {private:.1} MiB"
    );

    let idle: usize = common::env_or("VP_IDLE", 1000);
    let slow: usize = common::env_or("VP_SLOW", 200);
    hostile(&sock, d.child.id(), idle, slow);
    drop(d);

    // a quiet daemon with 20 domains
    let dir20 = dir.join("twenty");
    std::fs::create_dir_all(dir20.join("personas")).expect("dir");
    std::fs::write(dir20.join("host.xml"), host_xml(20)).expect("host");
    let d20 = common::Daemon::start_args(
        &dir20,
        &format!("test://{}", dir20.join("host.xml").display()),
        &["--interval", "1s"],
        &[],
    );
    d20.wait_until_ticks(6);
    let (rss, private) = memory_mib(d20.child.id());
    println!(
        "daemon memory, 20 domains, after 6 ticks: RSS {rss:.1} MiB, private {private:.1} MiB"
    );
}
