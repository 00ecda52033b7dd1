//! The cluster with real UDP on loopback: daemons on the test driver's
//! five-domain host gossip through foca, sealed with a shared key.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::Value;
use virt_persona::api::client;
use virt_persona::cluster::seal::{key_line, KeyRing, Sealer};

const BOOST: &str = "id = \"boost\"\n[match]\nnames = [\"web-*\"]\n[[activation.when]]\nsignal = \"lb.rps\"\nabove = 1000\n[tuning]\nmemory_soft_limit = \"256 MiB\"\n";

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn write_key(dir: &Path, key: [u8; 32]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("gossip.key");
    std::fs::write(&p, format!("{}\n", key_line(&key))).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

struct Node {
    d: Daemon,
    port: u16,
    dir: PathBuf,
}

/// The daemon of one host, in `dir`, gossiping on `port` with `seed`.
fn launch(dir: &Path, name: &str, port: u16, seed: u16, key: [u8; 32], cluster: &str) -> Daemon {
    launch_env(dir, name, port, seed, key, cluster, "1s", &[])
}

/// As [`launch`], with the control loop's interval and more of the daemon's environment.
#[allow(clippy::too_many_arguments)]
fn launch_env(
    dir: &Path,
    name: &str,
    port: u16,
    seed: u16,
    key: [u8; 32],
    cluster: &str,
    interval: &str,
    env: &[(&str, String)],
) -> Daemon {
    let listen = format!("127.0.0.1:{port}");
    let seed = format!("127.0.0.1:{seed}");
    launch_on(dir, name, &listen, &seed, key, cluster, interval, env)
}

/// The daemon of one host listening on `listen` (any address, a wildcard
/// included) with `seed`. A `host.xml` in the host's directory is its
/// libvirt test host (else the shared fixture), a `daemon.toml` its config
/// file.
#[allow(clippy::too_many_arguments)]
fn launch_on(
    dir: &Path,
    name: &str,
    listen: &str,
    seed: &str,
    key: [u8; 32],
    cluster: &str,
    interval: &str,
    env: &[(&str, String)],
) -> Daemon {
    let host = dir.join("host.xml");
    let uri = if host.exists() {
        format!("test://{}", host.display())
    } else {
        common::test_host_uri()
    };
    let key_file = write_key(dir, key);
    let mut flags = vec![
        "--interval",
        interval,
        "--node-name",
        name,
        "--gossip-listen",
        listen,
        "--gossip-seed",
        seed,
        "--gossip-key-file",
        key_file.to_str().unwrap(),
        "--gossip-cluster",
        cluster,
    ];
    let config = dir.join("daemon.toml");
    if config.exists() {
        flags.extend(["--config", config.to_str().unwrap()]);
    }
    Daemon::start_args(dir, &uri, &flags, env)
}

fn start(test: &str, name: &str, port: u16, seed: u16, key: [u8; 32], cluster: &str) -> Node {
    let dir = common::test_dir(&format!("cluster-{test}"), name);
    std::fs::write(dir.join("personas/boost.toml"), BOOST).unwrap();
    let d = launch(&dir, name, port, seed, key, cluster);
    Node { d, port, dir }
}

/// Kills a host and starts it again on the same port and state.
fn restart(n: &mut Node, name: &str, seed: u16, key: [u8; 32]) {
    n.d.kill9();
    n.d = launch_env(&n.dir, name, n.port, seed, key, "test", SLOW, &[]);
}

/// The five-daemon test's control-loop interval: far above the 2 s a cluster
/// signal may take, so it must arrive between ticks (the node wakes the loop).
const SLOW: &str = "10s";

fn cluster(d: &Daemon) -> Value {
    d.get("/v1/cluster")
}

/// Host name → state, as `d` sees them.
fn states(d: &Daemon) -> Vec<(String, String)> {
    cluster(d)["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let state = h["state"].as_str().unwrap().to_string();
            // `alive` is a boolean a script can test, and agrees with `state`
            assert_eq!(h["alive"].as_bool(), Some(state == "alive"), "{h}");
            (h["name"].as_str().unwrap().to_string(), state)
        })
        .collect()
}

fn wait_until(what: &str, secs: u64, d: &Daemon, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

fn alive_count(d: &Daemon) -> usize {
    states(d).iter().filter(|(_, s)| s == "alive").count()
}

/// Sets a cluster-scope signal on `d`.
fn put_signal(d: &Daemon, name: &str, value: f64, ttl: &str) {
    let body = format!(r#"{{"value": {value}, "ttl": "{ttl}", "scope": "cluster"}}"#);
    let (st, body) = common::http(
        &d.socket,
        &format!(
            "PUT /v1/signals/{name} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(st, 200, "{body}");
}

/// `d` has signal `name` with `value` (live).
fn has_signal(d: &Daemon, name: &str, value: f64) -> bool {
    d.get("/v1/signals")
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == name && s["value"] == value)
}

/// Five daemons converge; a cluster signal pushed on one reaches all within
/// 2 s and expires everywhere; one killed is seen dead by all others, and
/// alive again after its restart; cluster-status shows every host.
#[test]
fn five_daemons_converge_share_signals_and_see_a_death_and_a_return() {
    let key = [7u8; 32];
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let mut nodes: Vec<Node> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let name = format!("host-{i}");
            let dir = common::test_dir("cluster-five", &name);
            std::fs::write(dir.join("personas/boost.toml"), BOOST).unwrap();
            let d = launch_env(&dir, &name, *p, ports[0], key, "test", SLOW, &[]);
            Node { d, port: *p, dir }
        })
        .collect();
    for n in &nodes {
        wait_until("five hosts alive", 60, &n.d, || alive_count(&n.d) == 5);
    }
    // every host's domains and digest arrive, and no digest differs
    wait_until("every host's domains", 30, &nodes[3].d, || {
        let v = cluster(&nodes[3].d);
        let hosts = v["hosts"].as_array().cloned().unwrap_or_default();
        hosts.len() == 5
            && hosts
                .iter()
                .all(|h| h["domains"].as_array().is_some_and(|d| d.len() == 4))
    });
    let v = cluster(&nodes[3].d);
    for h in v["hosts"].as_array().unwrap() {
        assert_eq!(h["domains"].as_array().unwrap().len(), 4, "{h}");
        assert_eq!(h["digest_differs"], false, "{h}");
    }
    let out = common::cli_ok(&[
        "--socket",
        nodes[2].d.socket.to_str().unwrap(),
        "cluster-status",
    ]);
    for i in 0..5 {
        assert!(out.contains(&format!("host-{i}")), "{out}");
    }
    assert!(out.contains("host-2 (this host)"), "{out}");
    // the other hosts' clock offsets, measured (one clock here: under 1 s)
    assert!(out.contains("Clock"), "{out}");
    let offsets: Vec<f64> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("host-") && !l.contains("this host"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.windows(2)
                .find(|p| p[1] == "s" && (p[0].starts_with('+') || p[0].starts_with('-')))
                .and_then(|p| p[0].parse().ok())
        })
        .collect();
    // (a host this one has had no datagram from yet shows "?")
    assert!(!offsets.is_empty(), "{out}");
    assert!(offsets.iter().all(|x: &f64| x.abs() < 1.0), "{out}");

    // a cluster signal reaches every host's decisions within 2 s
    put_signal(&nodes[0].d, "lb.rps", 5000.0, "15s");
    let t = Instant::now();
    for n in &nodes[1..] {
        wait_until("the cluster signal", 10, &n.d, || {
            n.d.get("/v1/signals")
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "lb.rps" && s["value"] == 5000.0 && s["scope"] == "cluster")
        });
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the signal took {took:?} to reach every host"
    );
    // it acts there, at host-4's next tick: web-1 wears boost
    wait_until("boost on host-4", 30, &nodes[4].d, || {
        nodes[4].d.persona("web-1").as_deref() == Some("boost")
    });
    // and expires everywhere with its TTL
    for n in &nodes {
        wait_until("the signal expires", 30, &n.d, || {
            !n.d.get("/v1/signals")
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "lb.rps")
        });
    }

    // one dies: the others see it dead; it comes back: alive again
    nodes[4].d.kill9();
    for n in &nodes[..4] {
        wait_until("host-4 dead", 60, &n.d, || {
            states(&n.d)
                .iter()
                .any(|(h, s)| h == "host-4" && s == "dead")
        });
    }
    let first = ports[0];
    restart(&mut nodes[4], "host-4", first, key);
    for n in &nodes {
        wait_until("host-4 alive again", 60, &n.d, || {
            states(&n.d)
                .iter()
                .any(|(h, s)| h == "host-4" && s == "alive")
                && alive_count(&n.d) == 5
        });
    }
}

/// A node with another key or another cluster id never appears; forged,
/// replayed, truncated, stale and random datagrams are dropped, counted by
/// reason, and change nothing.
#[test]
fn strangers_stay_out_and_bad_packets_change_nothing() {
    let key = [9u8; 32];
    let (pa, pb, pc, pd) = (free_port(), free_port(), free_port(), free_port());
    let a = start("out", "a", pa, pb, key, "prod");
    let b = start("out", "b", pb, pa, key, "prod");
    let other_key = start("out", "c", pc, pa, [1u8; 32], "prod");
    let other_cluster = start("out", "d", pd, pa, key, "staging");
    wait_until("a and b", 60, &a.d, || alive_count(&a.d) == 2);
    let metric = |reason: &str| dropped(&a.d, reason);
    // the strangers seed to a: each of their tries is a packet a cannot open
    wait_until("the strangers' tries refused at a", 60, &a.d, || {
        metric("unauthenticated") >= 10
    });
    for n in [&a, &b] {
        let names: Vec<String> = states(&n.d).into_iter().map(|x| x.0).collect();
        assert_eq!(names, ["a", "b"], "{}", n.d.log());
    }
    for n in [&other_key, &other_cluster] {
        assert_eq!(states(&n.d).len(), 1, "alone: {:?}", states(&n.d));
    }
    let before = cluster(&a.d);

    // bad packets at a
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = format!("127.0.0.1:{pa}");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let me: std::net::SocketAddr = s.local_addr().unwrap();
    let at_a: std::net::SocketAddr = to.parse().unwrap();
    let at_b: std::net::SocketAddr = format!("127.0.0.1:{pb}").parse().unwrap();
    let mut forger = Sealer::new(KeyRing::new(&[[1u8; 32]]), "prod", me, 1);
    let mut insider = Sealer::new(KeyRing::new(&[key]), "prod", me, 2);
    let forged = forger.seal(b"anything at all", at_a, now(), now());
    let good_garbage = insider.seal(b"\xff\xff\xff not foca", at_a, now(), now());
    // sent (cluster time) longer ago than hosts' clocks may differ
    let stale = insider.seal(b"old", at_a, now(), now() - 16 * 60_000);
    let for_b = insider.seal(b"\x01 for b", at_b, now(), now());
    let mut random = vec![0u8; 300];
    for (i, b) in random.iter_mut().enumerate() {
        *b = (i * 37 % 251) as u8;
    }
    for p in [
        &forged[..],
        &good_garbage,
        &good_garbage,
        &stale,
        &for_b,
        &forged[..20],
        &random,
        &vec![b'V'; 1500],
    ] {
        s.send_to(p, &to).unwrap();
    }
    wait_until("every bad packet counted", 10, &a.d, || {
        metric("unauthenticated") >= 1
            && metric("replayed") >= 1
            && metric("stale") >= 1
            && metric("wrong_receiver") >= 1
            && metric("truncated") >= 1
            && metric("not_gossip") >= 1
            && metric("oversized") >= 1
            && metric("malformed") >= 1
    });
    let after = cluster(&a.d);
    let hosts = |v: &Value| -> Vec<(Value, Value, Value)> {
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["name"].clone(), h["digest"].clone(), h["domains"].clone()))
            .collect()
    };
    assert_eq!(hosts(&after), hosts(&before), "nothing changed");
    // the traffic figures: counters and a rate, members by state
    let value = |line: &str| -> f64 {
        let (_, m) = common::http(&a.d.socket, "GET /metrics HTTP/1.1\r\n\r\n");
        m.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(-1.0)
    };
    wait_until("traffic figures", 20, &a.d, || {
        value("virt_persona_gossip_bytes_per_second{state=\"sent\"}") > 0.0
            && value("virt_persona_gossip_bytes_per_second{state=\"received\"}") > 0.0
    });
    assert!(value("virt_persona_gossip_bytes_total{state=\"sent\"}") > 0.0);
    assert!(value("virt_persona_gossip_packets_total{state=\"received\"}") > 0.0);
    assert_eq!(value("virt_persona_gossip_members{state=\"alive\"}"), 1.0);
    // the view's size: both hosts' summaries and domains, nothing forgotten
    assert_eq!(value("virt_persona_gossip_state{state=\"hosts\"}"), 2.0);
    assert!(value("virt_persona_gossip_state{state=\"items\"}") >= 2.0);
    assert!(value("virt_persona_gossip_state{state=\"bytes\"}") > 100.0);
    assert_eq!(
        value("virt_persona_gossip_state{state=\"forgotten_hosts\"}"),
        0.0
    );
    let (_, m) = common::http(&a.d.socket, "GET /metrics HTTP/1.1\r\n\r\n");
    assert!(
        m.contains("# TYPE virt_persona_gossip_bytes_total counter"),
        "counters, not gauges: {m}"
    );
    // still talking to b
    assert_eq!(alive_count(&a.d), 2);
    let _ = client::request(&a.d.socket, "GET", "/healthz", None).expect("alive");
}

/// A gossip drop counter of `d`'s `/metrics`.
fn dropped(d: &Daemon, reason: &str) -> u64 {
    let (_, m) = common::http(&d.socket, "GET /metrics HTTP/1.1\r\n\r\n");
    m.lines()
        .find(|l| {
            l.starts_with(&format!(
                "virt_persona_gossip_packets_dropped_total{{reason=\"{reason}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The first UDP datagram from port `from` to port `to` on this host's
/// loopback, as a packet sniffer sees it (an AF_PACKET socket: root).
fn capture_udp(from: u16, to: u16, within: Duration) -> Vec<u8> {
    use nix::sys::socket::{
        recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
        SockType,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Packet,
        SockType::Datagram,
        SockFlag::empty(),
        SockProtocol::EthAll,
    )
    .expect("a packet socket (the suite runs as root)");
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 200_000),
    )
    .unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 65_536];
    while t.elapsed() < within {
        let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
            continue;
        };
        let p = &buf[..n];
        // IPv4, UDP, the ports asked for: the datagram after its headers
        if n < 28 || p[0] >> 4 != 4 || p[9] != 17 {
            continue;
        }
        let ihl = ((p[0] & 0x0f) as usize) * 4;
        if n < ihl + 8 {
            continue;
        }
        let port = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
        if port(ihl) == from && port(ihl + 2) == to {
            return p[ihl + 8..].to_vec();
        }
    }
    panic!("no datagram from port {from} to port {to} within {within:?}");
}

/// Real traffic from a to b, captured on the loopback interface and sent
/// again at once: b refuses it as a replay, c and a itself because it was
/// sealed for b — none of them takes it; normal gossip is never rate
/// limited.
#[test]
fn captured_gossip_replayed_to_any_host_is_refused() {
    let key = [4u8; 32];
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let a = start("replay", "a", pa, pb, key, "prod");
    let b = start("replay", "b", pb, pa, key, "prod");
    let c = start("replay", "c", pc, pa, key, "prod");
    for n in [&a, &b, &c] {
        wait_until("three hosts", 60, &n.d, || alive_count(&n.d) == 3);
    }
    let captured = capture_udp(pa, pb, Duration::from_secs(30));
    assert!(captured.starts_with(b"VPG2"), "a gossip datagram");
    let count = |n: &Node| (dropped(&n.d, "replayed"), dropped(&n.d, "wrong_receiver"));
    let before = [count(&a), count(&b), count(&c)];
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for port in [pb, pc, pa] {
        s.send_to(&captured, ("127.0.0.1", port)).unwrap();
    }
    wait_until("b: a replay", 20, &b.d, || count(&b).0 == before[1].0 + 1);
    wait_until("c: sealed for b", 20, &c.d, || {
        count(&c).1 == before[2].1 + 1
    });
    wait_until("a: sealed for b", 20, &a.d, || {
        count(&a).1 == before[0].1 + 1
    });
    assert_eq!(count(&c).0, before[2].0, "c did not take it as new");
    assert_eq!(count(&b).1, before[1].1, "b knows it was for b");
    for n in [&a, &b, &c] {
        assert_eq!(dropped(&n.d, "rate_limited"), 0, "{}", n.d.log());
        assert_eq!(alive_count(&n.d), 3);
    }
}

/// A domain manually activated on host A leaves it (A dies) and runs on
/// host B: B continues the activation with its remaining time.
#[test]
fn a_manual_activation_follows_the_domain_to_the_next_host() {
    let key = [3u8; 32];
    let (pa, pb) = (free_port(), free_port());
    let mut a = start("mig", "a", pa, pb, key, "test");
    let mut b = start("mig", "b", pb, pa, key, "test");
    wait_until("a and b", 60, &a.d, || {
        alive_count(&a.d) == 2 && alive_count(&b.d) == 2
    });
    let body = r#"{"persona": "boost", "for": "10m"}"#;
    let (st, body) = common::http(
        &a.d.socket,
        &format!(
            "POST /v1/domains/web-1/activate HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(st, 200, "{body}");
    let until_a = a.d.get("/v1/domains/web-1")["override"]["until"].clone();
    let a_id = a.d.get("/v1/domains/web-1")["override"]["id"].clone();
    assert!(a_id.as_u64().is_some_and(|i| i > 0), "{a_id}");
    assert!(until_a.is_i64(), "{until_a}");
    // b sees it, but web-1 still runs on a: nothing to continue
    wait_until("b sees the manual activation", 10, &b.d, || {
        sees_a_manual(&b.d)
    });
    // three of b's ticks (each one an exchange) with the activation known
    let t = b.d.ticks();
    b.d.wait_until_ticks(t + 3);
    assert_eq!(b.d.persona("web-1"), None);
    // a goes away: b continues it, with the same end
    a.d.kill9();
    wait_until("b continues the activation", 90, &b.d, || {
        b.d.persona("web-1").as_deref() == Some("boost")
    });
    let o = b.d.get("/v1/domains/web-1")["override"].clone();
    assert_eq!(o["persona"], "boost");
    // the remaining time, not a new 10 minutes (its end travels as what is
    // left of it, so each host's reading of its clocks may add a millisecond)
    let (until_b, until_a) = (o["until"].as_i64().unwrap(), until_a.as_i64().unwrap());
    assert!(
        (until_b - until_a).abs() <= 100,
        "the remaining time, not a new 10 minutes: {until_b} vs {until_a}"
    );
    assert_eq!(o["id"], a_id, "the same activation");

    // reverted on b: it stays reverted — on a host that joins later and
    // hears of a's record from b, and on b after a restart that forgot
    // everything the cluster said (only its state store remembers)
    let (st, body) = common::http(
        &b.d.socket,
        "POST /v1/domains/web-1/revert HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(b.d.persona("web-1"), None);
    let pc = free_port();
    let c = start("mig", "c", pc, pb, key, "test");
    wait_until("c hears of a's activation", 60, &c.d, || {
        sees_a_manual(&c.d)
    });
    let t = c.d.ticks();
    c.d.wait_until_ticks(t + 3);
    assert_eq!(c.d.persona("web-1"), None, "{}", c.d.log());
    b.d.kill9();
    b.d = launch(&b.dir, "b", pb, pc, key, "test");
    wait_until("b hears of a's activation again", 60, &b.d, || {
        sees_a_manual(&b.d)
    });
    let t = b.d.ticks();
    b.d.wait_until_ticks(t + 3);
    assert_eq!(b.d.persona("web-1"), None, "{}", b.d.log());
    assert_eq!(c.d.persona("web-1"), None, "{}", c.d.log());
}

/// A domain-scoped cluster signal names the domain by UUID: set by name on
/// a, it reaches b's namesake (another web-1, another UUID) without
/// touching it; set on b by the UUID of a's web-1, which b does not run,
/// it is kept and reaches a's.
#[test]
fn a_domain_signal_follows_the_uuid_and_never_hits_a_namesake() {
    let key = [5u8; 32];
    let (pa, pb) = (free_port(), free_port());
    let a = start("namesake", "a", pa, pb, key, "test");
    let dir_b = common::test_dir("cluster-namesake", "b");
    std::fs::write(dir_b.join("personas/boost.toml"), BOOST).unwrap();
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/test-host.xml"),
    )
    .unwrap();
    let u1 = "6695eb01-f6a4-8304-79aa-97f2502e1900";
    assert!(fixture.contains(u1), "web-1's UUID in the fixture");
    let u2 = "6695eb01-f6a4-8304-79aa-97f2502e19ff";
    std::fs::write(dir_b.join("host.xml"), fixture.replace(u1, u2)).unwrap();
    let b = launch(&dir_b, "b", pb, pa, key, "test");
    wait_until("a and b", 60, &a.d, || {
        alive_count(&a.d) == 2 && alive_count(&b) == 2
    });
    let put = |d: &Daemon, domain: &str, value: f64| {
        let body = format!(
            r#"{{"value": {value}, "ttl": "10m", "scope": "cluster", "domain": "{domain}"}}"#
        );
        common::http(
            &d.socket,
            &format!(
                "PUT /v1/signals/lb.rps HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (st, body) = put(&a.d, "web-1", 5000.0);
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(u1), "kept by a's web-1's UUID: {body}");
    wait_until("a's web-1 wears boost", 30, &a.d, || {
        a.d.persona("web-1").as_deref() == Some("boost")
    });
    wait_until("b has the signal, for a's web-1", 30, &b, || {
        b.get("/v1/signals")
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "lb.rps" && s["domain_uuid"] == u1)
    });
    let t = b.ticks();
    b.wait_until_ticks(t + 3);
    assert_eq!(b.persona("web-1"), None, "b's web-1 is another domain");
    // a domain b does not run: by name refused (404, naming the reason),
    // by UUID kept
    let (st, body) = put(&b, "db-9", 1.0);
    assert_eq!(st, 404, "{body}");
    assert!(body.contains("UUID"), "{body}");
    let (st, body) = put(&b, u1, 0.0);
    assert_eq!(st, 200, "{body}");
    wait_until(
        "a takes b's later setting and lets boost go",
        60,
        &a.d,
        || a.d.persona("web-1").is_none(),
    );
}

/// A cluster signal ends everywhere when its host withdraws it
/// (`signal-unset`), when its host is dead for longer than the grace
/// (`gossip.signal_grace`), and a host that restarts takes its own back.
#[test]
fn a_withdrawn_or_orphaned_cluster_signal_ends_everywhere_and_a_restart_keeps_its_own() {
    let key = [6u8; 32];
    let (pa, pb) = (free_port(), free_port());
    let mut a = start("withdraw", "a", pa, pb, key, "test");
    let dir_b = common::test_dir("cluster-withdraw", "b");
    std::fs::write(dir_b.join("personas/boost.toml"), BOOST).unwrap();
    std::fs::write(
        dir_b.join("daemon.toml"),
        "[gossip]\nsignal_grace = \"2s\"\n",
    )
    .unwrap();
    let b = launch(&dir_b, "b", pb, pa, key, "test");
    wait_until("a and b", 60, &a.d, || {
        alive_count(&a.d) == 2 && alive_count(&b) == 2
    });
    put_signal(&a.d, "lb.rps", 5000.0, "10m");
    wait_until("b has a's signal", 30, &b, || {
        has_signal(&b, "lb.rps", 5000.0)
    });
    let (st, body) = common::http(
        &a.d.socket,
        "DELETE /v1/signals/lb.rps HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"removed\":true"), "{body}");
    wait_until("withdrawn on b too", 30, &b, || {
        !b.get("/v1/signals")
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "lb.rps")
    });
    let (st, body) = common::http(
        &a.d.socket,
        "DELETE /v1/signals/lb.rps HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(st, 404, "{body}");
    // a restarted host takes its own cluster signal back from the cluster
    put_signal(&a.d, "own", 3.0, "10m");
    wait_until("b has it", 30, &b, || has_signal(&b, "own", 3.0));
    a.d.kill9();
    a.d = launch(&a.dir, "a", pa, pb, key, "test");
    wait_until("a has its own signal again", 60, &a.d, || {
        has_signal(&a.d, "own", 3.0)
    });
    // a dies: past b's grace of 2 s its signal ends there
    a.d.kill9();
    wait_until("a's signal ends on b after the grace", 90, &b, || {
        !has_signal(&b, "own", 3.0)
    });
    assert!(
        states(&b).iter().any(|(n, s)| n == "a" && s == "dead"),
        "ended because a is dead: {:?}",
        states(&b)
    );
}

/// How far apart the hosts' clocks are is measured from the send times in
/// their datagrams: b runs 3 s ahead (the test-only clock offset); a says so
/// in cluster-status, /metrics and once in its log.
#[cfg(feature = "failpoints")]
#[test]
fn clock_skew_between_hosts_is_measured_shown_and_warned_about() {
    let key = [8u8; 32];
    let (pa, pb) = (free_port(), free_port());
    let a = start("skew", "a", pa, pb, key, "test");
    let dir_b = common::test_dir("cluster-skew", "b");
    let b = launch_env(
        &dir_b,
        "b",
        pb,
        pa,
        key,
        "test",
        "1s",
        &[("FAILPOINTS", "clock-offset-ms=return(3000)".to_string())],
    );
    wait_until("a and b", 60, &a.d, || {
        alive_count(&a.d) == 2 && alive_count(&b) == 2
    });
    let ahead = |d: &Daemon, host: &str| -> Option<i64> {
        cluster(d)["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == host)
            .and_then(|h| h["clock_ahead_ms"].as_i64())
    };
    wait_until("a measures b's clock", 30, &a.d, || {
        // 3 s less the shortest trip seen, which a busy host makes longer
        ahead(&a.d, "b").is_some_and(|x| (2_000..=3_100).contains(&x))
    });
    wait_until("b measures a's clock", 30, &b, || {
        ahead(&b, "a").is_some_and(|x| (-4_000..=-2_900).contains(&x))
    });
    let max = cluster(&a.d)["max_clock_skew_ms"].as_i64().unwrap();
    assert!((2_000..=3_100).contains(&max), "{max}");
    let (_, m) = common::http(&a.d.socket, "GET /metrics HTTP/1.1\r\n\r\n");
    assert!(
        m.lines()
            .any(|l| l.starts_with("virt_persona_gossip_state{state=\"max_clock_skew_ms\"}")),
        "{m}"
    );
    assert_eq!(
        a.d.log().matches("more than 1 s apart").count(),
        1,
        "warned once: {}",
        a.d.log()
    );
}

/// Three hosts whose clocks are 5 minutes ahead, right, and 5 minutes
/// behind (the test-only clock offset): a signal set on the slow host after
/// the fast one set it wins everywhere (wall clocks would have kept the
/// fast one's), and a signal's end comes within a second of its TTL on
/// every host, in real time.
#[cfg(feature = "failpoints")]
#[test]
fn hosts_five_minutes_apart_agree_on_the_last_set_and_on_its_end() {
    let key = [6u8; 32];
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let offset = |ms: i64| vec![("FAILPOINTS", format!("clock-offset-ms=return({ms})"))];
    let host = |name: &str, port: u16, seed: u16, ms: i64| {
        let dir = common::test_dir("cluster-clocks", name);
        launch_env(&dir, name, port, seed, key, "test", "1s", &offset(ms))
    };
    let fast = host("fast", pa, pb, 300_000);
    let right = host("right", pb, pa, 0);
    let slow = host("slow", pc, pa, -300_000);
    let all = [&fast, &right, &slow];
    for d in all {
        wait_until("three hosts", 60, d, || alive_count(d) == 3);
    }
    // set on the fast host, then (later, in real time) on the slow one
    put_signal(&fast, "lb.rps", 1.0, "10m");
    for d in all {
        wait_until("the fast host's setting everywhere", 20, d, || {
            has_signal(d, "lb.rps", 1.0)
        });
    }
    put_signal(&slow, "lb.rps", 2.0, "10m");
    for d in all {
        wait_until(
            "the slow host's later setting wins everywhere",
            20,
            d,
            || has_signal(d, "lb.rps", 2.0),
        );
    }
    // and it stays: nothing brings the fast host's back
    std::thread::sleep(Duration::from_secs(2));
    for d in all {
        assert!(has_signal(d, "lb.rps", 2.0), "{}", d.log());
    }
    // a 15 s signal set on the slow host ends at one moment everywhere: the
    // end each host shows, on its own clock, less that clock's offset
    let set = Instant::now();
    put_signal(&slow, "short", 1.0, "15s");
    let shown = |d: &Daemon, offset_ms: i64| -> Option<i64> {
        let v = d.get("/v1/signals");
        let s = v.as_array()?.iter().find(|s| s["name"] == "short")?.clone();
        let t: jiff::Timestamp = s["expires"].as_str()?.parse().ok()?;
        Some(t.as_millisecond() - offset_ms)
    };
    let mut ends = Vec::new();
    for (d, offset) in [(&fast, 300_000), (&right, 0), (&slow, -300_000)] {
        wait_until("the short signal everywhere", 10, d, || {
            shown(d, offset).is_some()
        });
        ends.push(shown(d, offset).unwrap());
    }
    let real_end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 15_000
        - set.elapsed().as_millis() as i64;
    for e in &ends {
        // shown to the second (truncated), so a second apart at most
        assert!((e - ends[0]).abs() <= 1_000, "ends shown {ends:?}");
        assert!(
            (e - real_end).abs() <= 2_000,
            "end {e}, set + 15 s = {real_end}"
        );
    }
    let mut ended = [None; 3];
    while ended.iter().any(Option::is_none) {
        assert!(
            set.elapsed() < Duration::from_secs(40),
            "never ended: {ended:?}"
        );
        for (i, d) in all.iter().enumerate() {
            let live = has_signal(d, "short", 1.0);
            if ended[i].is_none() && !live && set.elapsed() > Duration::from_secs(5) {
                ended[i] = Some(set.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, e) in ended.iter().enumerate() {
        let e = e.unwrap().as_secs_f64();
        // its TTL after the set, give or take the polling of three APIs on
        // a busy machine
        assert!(
            (14.0..=18.0).contains(&e),
            "host {i} ended it after {e:.2} s"
        );
    }
    // cluster-status shows the clocks apart, and that cluster time leads
    let v = cluster(&slow);
    assert!(v["max_clock_skew_ms"].as_i64().unwrap() >= 250_000, "{v}");
    assert!(
        v["cluster_time_lead_ms"].as_i64().unwrap() >= 590_000,
        "{v}"
    );
    // the fast clock leads: its own lead is at most the milliseconds by
    // which the hosts' steady clocks (each the wall clock at its start) differ
    let lead_fast = cluster(&fast)["cluster_time_lead_ms"].as_i64().unwrap();
    assert!(lead_fast < 1_000, "the fast clock leads: {lead_fast}");
    let out = common::cli_ok(&["--socket", slow.socket.to_str().unwrap(), "cluster-status"]);
    assert!(
        out.contains("Cluster time") && out.contains("ahead of this host's clock"),
        "{out}"
    );
    let (_, m) = common::http(&slow.socket, "GET /metrics HTTP/1.1\r\n\r\n");
    let lead: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("virt_persona_gossip_state{state=\"cluster_time_lead_ms\"} "))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0);
    assert!(lead >= 590_000.0, "{m}");
}

/// `d`'s view of the cluster has host a's manual activation of web-1.
fn sees_a_manual(d: &Daemon) -> bool {
    cluster(d)["hosts"].as_array().unwrap().iter().any(|h| {
        h["name"] == "a"
            && h["domains"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["name"] == "web-1" && d["manual"]["persona"] == "boost")
    })
}

/// Two network namespaces joined by a veth pair, made by the test and
/// removed on drop (even when the test fails).
struct Netns {
    a: String,
    b: String,
    veth_a: String,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2; scripts/setup-host.sh installs it)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// `a` gets 10.77.0.1/24, `b` 10.77.0.2/24 (each namespace has its own
    /// addresses, so parallel runs do not collide).
    fn new() -> Netns {
        let tag = std::process::id();
        let n = Netns {
            a: format!("vp{tag}a"),
            b: format!("vp{tag}b"),
            veth_a: format!("vp{tag}va"),
        };
        let veth_b = format!("vp{tag}vb");
        ip(&["netns", "add", &n.a]);
        ip(&["netns", "add", &n.b]);
        ip(&[
            "link", "add", &n.veth_a, "netns", &n.a, "type", "veth", "peer", "name", &veth_b,
            "netns", &n.b,
        ]);
        for (ns, dev, addr) in [
            (&n.a, &n.veth_a, "10.77.0.1/24"),
            (&n.b, &veth_b, "10.77.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        n
    }

    /// Cuts (false) or restores (true) the link between the two sides.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.a, "link", "set", &self.veth_a, state]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // deleting a namespace deletes its end of the veth pair, and with it the pair
        for ns in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// A real partition: two daemons in one network namespace, two in another,
/// a veth pair between them. Cut, each side sees the other dead and keeps
/// its own changes; healed, all four are alive again and both sides' changes
/// are everywhere.
#[test]
fn a_partition_between_network_namespaces_heals_and_both_sides_converge() {
    let key = [11u8; 32];
    // namespaces go after the daemons (fields drop in reverse order of the lets)
    let net = Netns::new();
    let seed = "10.77.0.1:7946";
    // one host on each side listens on the wildcard, as admins write it: it
    // is known by the address its route to the seed leaves from
    let hosts = [
        ("left-0", &net.a, "10.77.0.1:7946"),
        ("left-1", &net.a, "0.0.0.0:7947"),
        ("right-0", &net.b, "10.77.0.2:7946"),
        ("right-1", &net.b, "0.0.0.0:7947"),
    ];
    let nodes: Vec<Daemon> = hosts
        .iter()
        .map(|(name, ns, listen)| {
            let dir = common::test_dir("cluster-netns", name);
            std::fs::write(dir.join("personas/boost.toml"), BOOST).unwrap();
            let key_file = write_key(&dir, key);
            Daemon::start_wrapped(
                &["ip", "netns", "exec", ns],
                &dir,
                &common::test_host_uri(),
                &[
                    "--interval",
                    "1s",
                    "--node-name",
                    name,
                    "--gossip-listen",
                    listen,
                    "--gossip-seed",
                    seed,
                    "--gossip-key-file",
                    key_file.to_str().unwrap(),
                ],
                &[],
            )
        })
        .collect();
    for d in &nodes {
        wait_until("four hosts alive", 60, d, || alive_count(d) == 4);
    }
    let addrs: Vec<(String, String)> = cluster(&nodes[0])["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap_or_default().to_string(),
                h["addr"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (name, want) in [("left-1", "10.77.0.1:7947"), ("right-1", "10.77.0.2:7947")] {
        assert!(
            addrs.iter().any(|(n, a)| n == name && a == want),
            "{name} known at {want}: {addrs:?}"
        );
    }
    let state_of = |d: &Daemon, host: &str| -> String {
        states(d)
            .into_iter()
            .find(|(h, _)| h == host)
            .map(|x| x.1)
            .unwrap_or_default()
    };

    let t = Instant::now();
    net.link(false);
    for (i, d) in nodes.iter().enumerate() {
        let (mine, theirs) = if i < 2 {
            ("left", "right")
        } else {
            ("right", "left")
        };
        wait_until("the other side dead", 90, d, || {
            (0..2).all(|k| {
                state_of(d, &format!("{theirs}-{k}")) == "dead"
                    && state_of(d, &format!("{mine}-{k}")) == "alive"
            })
        });
    }
    // one cluster signal per side, while cut
    eprintln!("cut seen after {:?}", t.elapsed());
    put_signal(&nodes[0], "left.rps", 1.0, "10m");
    put_signal(&nodes[3], "right.rps", 2.0, "10m");
    wait_until("left's signal on its side", 10, &nodes[1], || {
        has_signal(&nodes[1], "left.rps", 1.0)
    });
    wait_until("right's signal on its side", 10, &nodes[2], || {
        has_signal(&nodes[2], "right.rps", 2.0)
    });
    // the cut holds while each host receives ten more datagrams (its own
    // side's gossip goes on): a signal that crossed would be there by then
    let received = |d: &Daemon| -> u64 {
        let (_, m) = common::http(&d.socket, "GET /metrics HTTP/1.1\r\n\r\n");
        m.lines()
            .find(|l| l.starts_with("virt_persona_gossip_packets_total{state=\"received\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let from: Vec<u64> = nodes.iter().map(received).collect();
    for (i, d) in nodes.iter().enumerate() {
        let (other, value) = if i < 2 {
            ("right.rps", 2.0)
        } else {
            ("left.rps", 1.0)
        };
        wait_until("ten more datagrams, the cut holding", 60, d, || {
            assert!(
                !has_signal(d, other, value),
                "the cut holds: {other} crossed\n{}",
                d.log()
            );
            received(d) >= from[i] + 10
        });
    }

    let t = Instant::now();
    net.link(true);
    for d in &nodes {
        wait_until("all alive after the heal", 120, d, || alive_count(d) == 4);
        wait_until("both sides' signals everywhere", 30, d, || {
            has_signal(d, "left.rps", 1.0) && has_signal(d, "right.rps", 2.0)
        });
    }
    eprintln!("healed after {:?}", t.elapsed());
    drop(nodes);
}

/// A key rotates without a restart, in the README's three steps (add the
/// new key second, make it first, remove the old; a reload after each on
/// every host): the two hosts stay one cluster and a cluster signal still
/// crosses after each step; afterwards a node with the old key alone stays
/// out and one with the new key alone comes in.
#[test]
fn a_key_rotates_in_three_reloads_without_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let (old, new) = ([21u8; 32], [22u8; 32]);
    let (pa, pb, pc, pd) = (free_port(), free_port(), free_port(), free_port());
    let mut a = start("rot", "a", pa, pb, old, "test");
    let mut b = start("rot", "b", pb, pa, old, "test");
    for n in [&a, &b] {
        wait_until("a and b", 60, &n.d, || alive_count(&n.d) == 2);
    }
    for (step, keys) in [vec![old, new], vec![new, old], vec![new]]
        .iter()
        .enumerate()
    {
        for n in [&a, &b] {
            let p = n.dir.join("gossip.key");
            let lines: String = keys.iter().map(|k| format!("{}\n", key_line(k))).collect();
            std::fs::write(&p, lines).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            n.d.signal("HUP");
            wait_until("the key file reloaded", 30, &n.d, || {
                n.d.log().matches("gossip key file reloaded").count() > step
            });
        }
        // still one cluster, and state still crosses, both ways
        let (from, to) = if step % 2 == 0 { (&a, &b) } else { (&b, &a) };
        put_signal(&from.d, "rot", step as f64, "10m");
        wait_until("the signal crosses after the reload", 10, &to.d, || {
            has_signal(&to.d, "rot", step as f64)
        });
        for n in [&a, &b] {
            assert_eq!(alive_count(&n.d), 2, "step {step}: {:?}", states(&n.d));
        }
    }
    for n in [&mut a, &mut b] {
        assert!(
            n.d.child.try_wait().unwrap().is_none(),
            "no restart: {}",
            n.d.log()
        );
    }
    let old_only = start("rot", "c", pc, pa, old, "test");
    let new_only = start("rot", "d", pd, pa, new, "test");
    wait_until("the new key's node joins", 60, &a.d, || {
        states(&a.d).iter().any(|(h, s)| h == "d" && s == "alive")
    });
    let names: Vec<String> = states(&a.d).into_iter().map(|x| x.0).collect();
    assert!(
        !names.contains(&"c".to_string()),
        "the old key is out: {names:?}"
    );
    assert_eq!(
        states(&old_only.d).len(),
        1,
        "alone: {:?}",
        states(&old_only.d)
    );
    drop(new_only);
}

/// The gossip task panics (a fail point, at its first turn): the host says
/// so in /healthz and the log, keeps controlling its domains, and starts the
/// task again on the same port after the backoff; the cluster forms and a
/// cluster signal crosses both ways.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "panics the gossip task through a fail point: needs --features failpoints"
)]
fn a_gossip_task_that_panics_is_started_again_and_the_host_rejoins() {
    let key = [5u8; 32];
    let (pa, pb) = (free_port(), free_port());
    let dir = common::test_dir("cluster-panic", "a");
    std::fs::write(dir.join("personas/boost.toml"), BOOST).unwrap();
    let a = launch_env(
        &dir,
        "a",
        pa,
        pb,
        key,
        "test",
        "1s",
        &[(
            "FAILPOINTS",
            "gossip-task-panic=1*panic(boom in gossip)".to_string(),
        )],
    );
    let b = start("panic", "b", pb, pa, key, "test");
    let gossip = |d: &Daemon| -> Value {
        let h = d.get("/healthz");
        h["helpers"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["name"] == "gossip").cloned())
            .unwrap_or_else(|| panic!("no gossip helper: {h}"))
    };
    wait_until("a's gossip task started again", 60, &a, || {
        let g = gossip(&a);
        g["restarts"] == 1 && g["state"] == "running"
    });
    let g = gossip(&a);
    assert!(
        g["last_failure"]
            .as_str()
            .is_some_and(|f| f.contains("panicked: boom in gossip")),
        "{g}"
    );
    assert!(a.log().contains("the gossip task stopped"), "{}", a.log());
    for d in [&a, &b.d] {
        wait_until("a and b", 60, d, || alive_count(d) == 2);
    }
    put_signal(&a, "from.a", 1.0, "10m");
    put_signal(&b.d, "from.b", 2.0, "10m");
    wait_until("a's signal at b", 30, &b.d, || {
        has_signal(&b.d, "from.a", 1.0)
    });
    wait_until("b's signal at a", 30, &a, || has_signal(&a, "from.b", 2.0));
    assert_eq!(gossip(&b.d)["restarts"], 0);
}

/// What an admin writes first: every host listens on 0.0.0.0 and seeds to
/// another on 127.0.0.1. Each advertises the address the route to its seed
/// uses (here loopback), so the three find each other; `cluster-status`
/// shows where each is reached. A loopback listener with a seed on another
/// host is refused at start with the reason, instead of splitting silently.
#[test]
fn wildcard_listeners_form_a_cluster_and_an_unreachable_address_is_refused() {
    let key = [9u8; 32];
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let name = format!("wild{i}");
        let dir = common::test_dir("cluster-wild", &name);
        let listen = format!("0.0.0.0:{port}");
        let seed = format!("127.0.0.1:{}", ports[(i + 1) % 3]);
        nodes.push(launch_on(
            &dir,
            &name,
            &listen,
            &seed,
            key,
            "wild",
            "1s",
            &[],
        ));
    }
    for d in &nodes {
        wait_until("all three alive", 60, d, || alive_count(d) == 3);
        let hosts = cluster(d)["hosts"].as_array().unwrap().clone();
        for h in hosts {
            let addr = h["addr"].as_str().unwrap_or_default().to_string();
            assert!(
                addr.starts_with("127.0.0.1:"),
                "advertised the routed address, not the wildcard: {h}"
            );
        }
    }

    let dir = common::test_dir("cluster-wild", "refused");
    let key_file = write_key(&dir, key);
    let listen = format!("127.0.0.1:{}", free_port());
    let words = [
        "--gossip-listen",
        listen.as_str(),
        "--gossip-seed",
        "192.0.2.77:7946",
        "--gossip-key-file",
    ];
    let flags: Vec<&std::ffi::OsStr> = words
        .iter()
        .map(std::ffi::OsStr::new)
        .chain([key_file.as_os_str()])
        .collect();
    let err = common::daemon_refused(&dir, &common::test_host_uri(), &flags);
    assert!(
        err.contains("loopback")
            && err.contains("192.0.2.77:7946")
            && err.contains("--gossip-advertise"),
        "{err}"
    );
}

/// A source with `scope = "cluster"`: host a polls a page (a gauge) and its
/// signal reaches b through gossip; when the page fails, the value lives
/// out its TTL on both hosts.
#[test]
fn a_cluster_scope_source_on_one_host_sets_the_signal_on_every_host() {
    use common::services::{Answer, Page};
    let key = [9u8; 32];
    let (pa, pb) = (free_port(), free_port());
    let page = Page::start(Answer::ok("lb_rps 420\n"));
    let dir_a = common::test_dir("cluster-source", "a");
    std::fs::write(dir_a.join("personas/boost.toml"), BOOST).unwrap();
    std::fs::write(
        dir_a.join("daemon.toml"),
        format!(
            "[[signals.source]]\nsignal = \"lb.rps\"\nurl = \"{}\"\nmetric = \"lb_rps\"\ninterval = \"1s\"\nttl = \"5s\"\nscope = \"cluster\"\n",
            page.url("/metrics")
        ),
    )
    .unwrap();
    let a = launch(&dir_a, "a", pa, pb, key, "test");
    let b = start("source", "b", pb, pa, key, "test");
    wait_until("a and b", 60, &a, || {
        alive_count(&a) == 2 && alive_count(&b.d) == 2
    });
    wait_until("b has a's source's signal", 30, &b.d, || {
        has_signal(&b.d, "lb.rps", 420.0)
    });
    let on_b = b.d.get("/v1/signals");
    assert!(
        on_b.as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "lb.rps" && s["scope"] == "cluster"),
        "{on_b}"
    );
    // the page changes: the new value everywhere
    page.set(Answer::ok("lb_rps 17\n"));
    wait_until("the new value on b", 30, &b.d, || {
        has_signal(&b.d, "lb.rps", 17.0)
    });
    // the page fails: past the TTL the signal is gone on both hosts
    page.set(Answer {
        status: 500,
        ..Answer::ok("down")
    });
    wait_until("gone on b after the TTL", 60, &b.d, || {
        !b.d.get("/v1/signals")
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "lb.rps")
    });
    wait_until("gone on a too", 30, &a, || {
        !a.get("/v1/signals")
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "lb.rps")
    });
}
