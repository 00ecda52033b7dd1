//! Signal sources, measured with the real tools: the daemon's own CPU and
//! memory with 20 sources polling Debian's HAProxy exporter every second
//! (against the same daemon with none), and — on a real guest — the time
//! from the first request of a load burst to the persona applied.
//!
//! Run: cargo bench --bench sources
//!      VP_BENCH_SECONDS=30 VP_BENCH_BURSTS=5 VP_BENCH_REAL=1 cargo bench --bench sources   (defaults)

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::services::{Answer, Haproxy, LoadLoop, Page};
use common::Daemon;

fn bench_dir(name: &str) -> PathBuf {
    common::test_dir("bench-sources", name)
}

fn daemon(dir: &Path, uri: &str, config: &str) -> Daemon {
    let file = dir.join("daemon.toml");
    std::fs::write(&file, config).unwrap();
    Daemon::start_args(
        dir,
        uri,
        &["--interval", "1s", "--config", file.to_str().unwrap()],
        &[],
    )
}

/// 20 sources: host-wide rates with label matchers, and per-server
/// (per-domain) gauges; `urls` cycled (one exporter shared, or one each).
fn twenty(urls: &[String]) -> String {
    let mut c = String::new();
    let mut next = urls.iter().cycle();
    for i in 0..10 {
        let url = next.next().unwrap();
        c.push_str(&format!(
            "[[signals.source]]\nsignal = \"lb.web{i}.rps\"\nurl = \"{url}\"\nmetric = \"haproxy_frontend_http_requests_total\"\nlabels = {{ proxy = \"web\" }}\nrate = \"10s\"\ninterval = \"1s\"\n\n"
        ));
        c.push_str(&format!(
            "[[signals.source]]\nsignal = \"lb.server{i}.sessions\"\nurl = \"{}\"\nmetric = \"haproxy_server_current_sessions\"\ndomain_label = \"server\"\ninterval = \"1s\"\n\n",
            next.next().unwrap()
        ));
    }
    c
}

/// CPU (share of one core) and private memory of a daemon over `secs`.
fn measure(d: &Daemon, secs: u64) -> (f64, u64) {
    d.wait_until_ticks(d.ticks() + 3);
    let (c0, t0) = (d.cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let share = (d.cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    (share, common::uss_kib(d.child.id()))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // under `cargo test`: the reader on the shipped HAProxy body, once
        let body = include_str!("../fixtures/haproxy-2.6-metrics.txt");
        let s = virt_persona::sources::exposition::parse(body, "haproxy_server_current_sessions")
            .unwrap();
        assert!(!s.is_empty());
        println!("sources benchmark, smoke run: `cargo bench --bench sources` for the figures");
        return;
    }
    let secs = common::env_or("VP_BENCH_SECONDS", 30u64);
    let backend = Page::start(Answer::ok("ok"));
    let servers: Vec<(String, String)> = (0..10)
        .map(|i| (format!("vm{i}"), backend.addr.clone()))
        .collect();
    let refs: Vec<(&str, &str)> = servers
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let hdir = bench_dir("haproxy");
    let hap = Haproxy::start(&hdir, &refs);

    // HTTP/1.0: the body whole, not in chunks
    let text = common::services::fetch(&hap.metrics, "/metrics").1;
    println!(
        "HAProxy 2.6 exporter: 10 servers, {} bytes a scrape",
        text.len()
    );
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        let s = virt_persona::sources::exposition::parse(&text, "haproxy_server_current_sessions")
            .unwrap();
        assert!(!s.is_empty());
    }
    let per = t.elapsed() / n;
    println!(
        "exposition reader: {:.0} µs a scrape ({:.0} MB/s), every line checked",
        per.as_secs_f64() * 1e6,
        text.len() as f64 / per.as_secs_f64() / 1e6
    );

    let none = {
        let dir = bench_dir("none");
        let d = daemon(&dir, "test:///default", "");
        measure(&d, secs)
    };
    let run = |what: &str, urls: &[String]| {
        let dir = bench_dir(what);
        let d = daemon(&dir, "test:///default", &twenty(urls));
        let r = measure(&d, secs);
        let list = d.get("/v1/sources");
        let polls: u64 = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["polls"].as_u64().unwrap_or(0))
            .sum();
        let failures: u64 = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["failures"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(failures, 0, "{list}");
        println!(
            "20 sources, {what}: {polls} polls; daemon CPU {:.2} % of one core (the sources: {:.2} %, target <= 1 %); private memory {} KiB ({:.0} KiB a source)",
            r.0 * 100.0,
            (r.0 - none.0) * 100.0,
            r.1,
            (r.1 as f64 - none.1 as f64) / 20.0
        );
    };
    println!(
        "daemon, 1 s tick, test driver, no sources: CPU {:.2} % of one core, private memory {} KiB",
        none.0 * 100.0,
        none.1
    );
    run(
        "one HAProxy exporter shared (one fetch a second)",
        &[hap.metrics_url()],
    );
    // 20 endpoints, each serving the same HAProxy body: 20 fetches and reads a second
    let pages: Vec<Page> = (0..20)
        .map(|_| Page::start(Answer::ok(text.clone())))
        .collect();
    let urls: Vec<String> = pages.iter().map(|p| p.url("/metrics")).collect();
    run("20 endpoints of that size (20 fetches a second)", &urls);

    if common::env_or("VP_BENCH_REAL", 1u32) == 0 {
        println!("VP_BENCH_REAL=0: the real-guest latency is skipped");
        return;
    }
    let bursts = common::env_or("VP_BENCH_BURSTS", 5usize);
    let g = common::Guest::boot("bench-sources", 1);
    let dir = bench_dir("real");
    let hap2 = Haproxy::start(&dir.join("haproxy"), &[(&g.name, &backend.addr)]);
    std::fs::write(
        dir.join("personas/rush.toml"),
        format!(
            "id = \"rush\"\n[match]\nnames = [\"{}\"]\n[activation]\ncooldown = \"1s\"\n[[activation.when]]\nsignal = \"lb.server.rps\"\nabove = 10\n[tuning]\ncpu_shares = 3000\n",
            g.name
        ),
    )
    .unwrap();
    let d = daemon(
        &dir,
        common::REAL_URI,
        &format!(
            "[[signals.source]]\nsignal = \"lb.server.rps\"\nurl = \"{}\"\nmetric = \"haproxy_server_http_responses_total\"\nlabels = {{ proxy = \"app\", code = \"2xx\" }}\nrate = \"2s\"\ninterval = \"1s\"\ndomain_label = \"server\"\n",
            hap2.metrics_url()
        ),
    );
    d.wait_until_ticks(d.ticks() + 3);
    let mut took = Vec::new();
    for _ in 0..bursts {
        let mut load = LoadLoop::start(&hap2.web, 40, Duration::from_secs(120));
        let t = common::wait_some("the persona on", &d, 60, || {
            (d.persona(&g.name).as_deref() == Some("rush")).then(|| load.started.elapsed())
        });
        took.push(t);
        load.stop();
        common::wait_some("the persona off", &d, 60, || {
            d.persona(&g.name).is_none().then_some(())
        });
    }
    took.sort();
    println!(
        "first request of a burst -> persona applied on a real guest ({} bursts, 40 requests/s, 1 s source and daemon intervals): median {:.2} s, max {:.2} s (target <= 3 s)",
        bursts,
        took[took.len() / 2].as_secs_f64(),
        took[took.len() - 1].as_secs_f64()
    );
}
