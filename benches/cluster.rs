//! Gossip (issue 10), one line per figure (the README quotes them):
//! - 16 real daemons listening on 0.0.0.0, seeded on loopback (release build, test-driver hosts of 50
//!   domains each): convergence of one state change (a cluster signal set on
//!   one host, until every host has it), p50/p99 over 100 changes; steady
//!   traffic per node over 60 s; a flood of sealed-looking datagrams at one
//!   daemon from one and from 256 source addresses: its CPU, and a change's
//!   convergence meanwhile;
//! - the in-memory simulation (real foca and merge, simulated network) with
//!   16 nodes × 50 domains and with 1,000 nodes: convergence of a change and
//!   bytes per node per second;
//! - 30 simulated days of churn (hosts replaced, 10,000 domains coming and
//!   going, signals set and running out) on the state code: one node's
//!   state at the end against the start.
//!
//! ```text
//! cargo bench --bench cluster
//!   VP_CHANGES=100, VP_NODES=16: the real run's size
//!   VP_REAL=0 / VP_SIM=0 / VP_BIG=0: skip the real daemons / the 16-node / the 1,000-node simulation
//!   VP_FLOOD=0: skip the datagram floods at one real daemon (VP_FLOOD_SECS=20 each)
//!   VP_CHURN=0: skip the 30 simulated days of churn on the state code
//!   VP_BIG_NODES=1000: the large simulation's size
//! ```
//!
//! Under `cargo test` (no --bench) only a small simulation runs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use virt_persona::cluster::sim::Sim;
use virt_persona::cluster::state::{DomainPub, Local, Summary};

fn local(i: usize, domains: usize, persona: &str) -> Local {
    let mut l = Local {
        summary: Some(Summary {
            addr: format!("10.0.0.{i}:7946"),
            up_since: 1,
            digest: "0123456789abcdef".into(),
            daemon_version: "0.1.0".into(),
            personas: 7,
        }),
        ..Default::default()
    };
    for d in 0..domains {
        l.domains.insert(
            format!("6695eb01-f6a4-8304-79aa-{i:06}{d:06}"),
            DomainPub {
                name: format!("web-{i}-{d}"),
                running: true,
                persona: Some(persona.into()),
                since: Some(1_800_000_000_000),
                manual: None,
                ended: vec![],
            },
        );
    }
    l
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// Convergence and traffic in the simulation.
fn simulate(n: usize, domains: usize, changes: usize, seed: u64) {
    let t = Instant::now();
    let mut sim = Sim::new(n, 0.0, 5, seed);
    sim.join_all();
    for i in 0..n {
        sim.publish(i, local(i, domains, "calm"));
    }
    let total = n * domains;
    let joined = sim
        .run_until_true(Duration::from_millis(500), 1_200_000, |s| {
            (0..s.len()).all(|i| {
                s.shared(i)
                    .lock()
                    .state
                    .nodes
                    .values()
                    .map(|v| v.domains.len())
                    .sum::<usize>()
                    == total
            })
        })
        .unwrap_or(u64::MAX);
    // foca passes each item on a fixed number of times: the join's items
    // drain first (that is dissemination, not steady traffic)
    let drained = sim
        .run_until_true(Duration::from_millis(1000), sim.now + 1_200_000, |s| {
            (0..s.len()).all(|i| s.backlog(i) == (0, 0))
        })
        .unwrap_or(u64::MAX);
    // steady traffic: two simulated minutes with no change (SWIM probes and
    // the anti-entropy digest each second)
    let before: u64 = sim.bytes_sent.iter().sum();
    let kinds = sim.bytes_by_kind;
    let start = sim.now;
    sim.run_until(start + 120_000);
    let steady = (sim.bytes_sent.iter().sum::<u64>() - before) as f64 / n as f64 / 120.0;
    let per_kind: Vec<String> = ["SWIM", "digests", "items"]
        .iter()
        .zip(sim.bytes_by_kind.iter().zip(kinds))
        .map(|(name, (a, b))| format!("{name} {:.2}", (a - b) as f64 / n as f64 / 120.0 / 1000.0))
        .collect();
    let mut times = Vec::new();
    for c in 0..changes {
        let who = (c * 7919) % n;
        let p = format!("p{c}");
        let mut l = local(who, domains, "calm");
        if let Some(d) = l.domains.values_mut().next() {
            d.persona = Some(p.clone());
        }
        sim.publish(who, l);
        let s0 = sim.now;
        let node = format!("n{who}");
        let end = sim
            .run_until_true(Duration::from_millis(10), s0 + 60_000, |s| {
                (0..s.len()).all(|i| {
                    s.shared(i).lock().state.nodes.get(&node).is_some_and(|v| {
                        v.domains
                            .values()
                            .any(|(_, d)| d.persona.as_deref() == Some(p.as_str()))
                    })
                })
            })
            .unwrap_or(u64::MAX);
        times.push(end.saturating_sub(s0));
    }
    println!(
        "simulation, {n} nodes x {domains} domains: joined and converged in {:.1} s simulated, every join item passed on by {:.1} s; a change everywhere p50 {} ms, p99 {} ms, min {} ms ({changes} changes); steady traffic {:.2} KB/s per node ({}); {:.1} s of CPU",
        joined as f64 / 1000.0,
        drained as f64 / 1000.0,
        pct(&mut times.clone(), 0.5),
        pct(&mut times.clone(), 0.99),
        pct(&mut times, 0.0),
        steady / 1000.0,
        per_kind.join(", "),
        t.elapsed().as_secs_f64()
    );
}

fn host_xml(node: usize, n: usize) -> String {
    let mut xml = String::from("<node><cpu><mhz>3000</mhz><model>x86_64</model><active>8</active><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>2</threads></cpu><memory>268435456</memory>\n");
    for i in 0..n {
        xml.push_str(&format!("<domain type='test'><name>vm-{node}-{i}</name><uuid>6695eb01-f6a4-8304-{node:04}-{i:012}</uuid><memory unit='KiB'>1048576</memory><vcpu>2</vcpu><os><type arch='x86_64'>hvm</type></os></domain>\n"));
    }
    xml.push_str("</node>\n");
    xml
}

fn metric(d: &common::Daemon, line: &str) -> u64 {
    let (_, m) = common::http(&d.socket, "GET /metrics HTTP/1.1\r\n\r\n");
    m.lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(u64::MAX)
}

fn gossip_bytes_sent(d: &common::Daemon) -> u64 {
    metric(d, "virt_persona_gossip_bytes_total{state=\"sent\"}")
}

/// 16 release daemons, wildcard listeners, seeded on loopback.
fn real(nodes: usize, changes: usize) {
    use std::os::unix::fs::PermissionsExt;
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("dir");
    let key = root.join("key");
    std::fs::write(
        &key,
        format!("{}\n", virt_persona::cluster::seal::key_line(&[5u8; 32])),
    )
    .expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("mode");
    let ports: Vec<u16> = (0..nodes)
        .map(|_| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| s.local_addr())
                .map(|a| a.port())
                .expect("port")
        })
        .collect();
    let daemons: Vec<common::Daemon> = (0..nodes)
        .map(|i| {
            let dir = root.join(format!("n{i}"));
            std::fs::create_dir_all(dir.join("personas")).expect("dir");
            let xml = dir.join("host.xml");
            std::fs::write(&xml, host_xml(i, 50)).expect("xml");
            // a wildcard listener, as admins write it: each advertises the
            // address of its route to the seed
            let listen = format!("0.0.0.0:{}", ports[i]);
            let seed = format!("127.0.0.1:{}", ports[0]);
            let name = format!("host-{i}");
            common::Daemon::start_args(
                &dir,
                &format!("test://{}", xml.display()),
                &[
                    "--interval",
                    "5s",
                    "--node-name",
                    &name,
                    "--gossip-listen",
                    &listen,
                    "--gossip-seed",
                    &seed,
                    "--gossip-key-file",
                    key.to_str().unwrap_or(""),
                ],
                &[],
            )
        })
        .collect();
    let all_alive = |d: &common::Daemon| {
        let v = d.get("/v1/cluster");
        v["hosts"].as_array().is_some_and(|h| {
            h.len() == nodes
                && h.iter().all(|x| {
                    x["alive"] == true && x["domains"].as_array().is_some_and(|d| d.len() == 50)
                })
        })
    };
    let t = Instant::now();
    for d in &daemons {
        while !all_alive(d) {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "no convergence: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let joined = t.elapsed();
    // the join's items are passed on a fixed number of times first
    for d in &daemons {
        while metric(d, "virt_persona_gossip_backlog{state=\"items\"}") != 0
            || metric(d, "virt_persona_gossip_backlog{state=\"updates\"}") != 0
        {
            assert!(
                t.elapsed() < Duration::from_secs(600),
                "backlog never drained"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let drained = t.elapsed();
    // steady traffic
    let before: Vec<u64> = daemons.iter().map(gossip_bytes_sent).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    let after: Vec<u64> = daemons.iter().map(gossip_bytes_sent).collect();
    let secs = t0.elapsed().as_secs_f64();
    let per_node: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) as f64 / secs)
        .collect();
    let mean = per_node.iter().sum::<f64>() / nodes as f64;
    let max = per_node.iter().cloned().fold(0.0, f64::max);
    // convergence of changes: a cluster signal with a new value each time
    let mut times = Vec::new();
    for c in 0..changes {
        let from = &daemons[c % nodes];
        let body = format!("{{\"value\": {c}, \"ttl\": \"10m\", \"scope\": \"cluster\"}}");
        let t = Instant::now();
        let (st, _) = common::http(
            &from.socket,
            &format!("PUT /v1/signals/bench HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
        );
        assert_eq!(st, 200);
        for d in &daemons {
            loop {
                let v = d.get("/v1/signals");
                if v.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|s| s["name"] == "bench" && s["value"] == c as f64)
                }) {
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(400),
                    "change {c} did not converge"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        times.push(t.elapsed().as_millis() as u64);
    }
    println!(
        "{nodes} daemons (listening on 0.0.0.0) x 50 domains: all alive with every host's domains after {:.1} s, every join item passed on after {:.1} s; a change everywhere p50 {} ms, p99 {} ms ({changes} changes); steady traffic per node {:.2} KB/s mean, {:.2} KB/s max",
        joined.as_secs_f64(),
        drained.as_secs_f64(),
        pct(&mut times.clone(), 0.5),
        pct(&mut times, 0.99),
        mean / 1000.0,
        max / 1000.0
    );
    let limited: u64 = daemons
        .iter()
        .map(|d| {
            metric(
                d,
                "virt_persona_gossip_packets_dropped_total{reason=\"rate_limited\"}",
            )
        })
        .sum();
    println!("  normal gossip rate limited on all {nodes} daemons together: {limited} datagrams");
    if common::env_or("VP_FLOOD", 1) == 1 {
        for sources in [1, 256] {
            flood(
                &daemons,
                ports[1],
                sources,
                common::env_or("VP_FLOOD_SECS", 20),
            );
        }
    }
    drop(daemons);
    let _ = std::fs::remove_dir_all(&root);
}

/// A flood of sealed-looking datagrams (the right magic, random bytes) at
/// `daemons[1]` from `sources` source addresses, as fast as one thread
/// sends: the flooded daemon's CPU, what it dropped before opening, and a
/// change set on another host reaching every host meanwhile.
fn flood(daemons: &[common::Daemon], port: u16, sources: usize, secs: u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let target = &daemons[1];
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let sockets: Vec<std::net::UdpSocket> = (0..sources)
                .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("socket"))
                .collect();
            let mut p = vec![0u8; 300];
            p[..4].copy_from_slice(virt_persona::cluster::seal::MAGIC);
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            while !stop.load(Ordering::Relaxed) {
                for s in &sockets {
                    for b in p[4..36].iter_mut() {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        *b = x as u8;
                    }
                    if s.send_to(&p, ("127.0.0.1", port)).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let reason = |r: &str| {
        metric(
            target,
            &format!("virt_persona_gossip_packets_dropped_total{{reason=\"{r}\"}}"),
        )
    };
    std::thread::sleep(Duration::from_secs(1));
    let (limited0, refused0) = (reason("rate_limited"), reason("unauthenticated"));
    let (cpu0, sent0, t0) = (
        target.cpu_time(),
        sent.load(Ordering::Relaxed),
        Instant::now(),
    );
    // a change during the flood
    let body = format!("{{\"value\": {sources}, \"ttl\": \"10m\", \"scope\": \"cluster\"}}");
    let (st, _) = common::http(
        &daemons[0].socket,
        &format!("PUT /v1/signals/flood HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
    );
    assert_eq!(st, 200);
    let mut reached = None;
    while t0.elapsed() < Duration::from_secs(secs) {
        if reached.is_none()
            && daemons.iter().all(|d| {
                d.get("/v1/signals").as_array().is_some_and(|a| {
                    a.iter()
                        .any(|s| s["name"] == "flood" && s["value"] == sources as f64)
                })
            })
        {
            reached = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (cpu, n, wall) = (
        target.cpu_time() - cpu0,
        sent.load(Ordering::Relaxed) - sent0,
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    std::thread::sleep(Duration::from_millis(1500));
    let (limited, refused) = (
        reason("rate_limited") - limited0,
        reason("unauthenticated") - refused0,
    );
    println!(
        "flood from {sources} source address(es): {:.0} datagrams/s sent at one daemon for {:.0} s; its CPU {:.1} % of one core; dropped before opening {:.0}/s, opened and refused {:.0}/s; a change set on another host meanwhile reached all {} hosts in {}",
        n as f64 / wall.as_secs_f64(),
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        limited as f64 / wall.as_secs_f64(),
        refused as f64 / wall.as_secs_f64(),
        daemons.len(),
        reached.map_or("(not within the flood)".to_string(), |t| format!("{} ms", t.as_millis())),
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("cluster benchmark, smoke run: `cargo bench --bench cluster` for the figures");
        simulate(8, 5, 3, 1);
        return;
    }
    let nodes: usize = common::env_or("VP_NODES", 16);
    let changes: usize = common::env_or("VP_CHANGES", 100);
    if common::env_or("VP_REAL", 1) == 1 {
        real(nodes, changes);
    }
    if common::env_or("VP_SIM", 1) == 1 {
        simulate(16, 50, 100, 1);
    }
    if common::env_or("VP_BIG", 1) == 1 {
        simulate(common::env_or("VP_BIG_NODES", 1000), 2, 20, 2);
    }
    if common::env_or("VP_CHURN", 1) == 1 {
        churn();
    }
}

/// 30 simulated days of churn on the state code (issue 25): state per node
/// at the end against the start.
fn churn() {
    use virt_persona::cluster::churn::{churn, ChurnConfig};
    let cfg = ChurnConfig::default();
    let t = Instant::now();
    let r = churn(&cfg);
    println!(
        "churn: {} simulated days, {} hosts at a time ({} ever, one replaced every {} days), {} domains at a time ({} ever), cluster signals set every 10 min; one node's view after day 1: {} items, {} bytes, {} tombstones; at the end: {} items, {} bytes ({:.2}x), {} tombstones, {} items of what no longer exists (within retention); views agree: {} ({:.1} s)",
        cfg.days,
        cfg.hosts,
        r.hosts_ever,
        cfg.host_every_days,
        cfg.domains,
        r.domains_ever,
        r.start.0,
        r.start.1,
        r.start.2,
        r.end.0,
        r.end.1,
        r.end.1 as f64 / r.start.1.max(1) as f64,
        r.end.2,
        r.end_outlived,
        r.converged,
        t.elapsed().as_secs_f64()
    );
}
