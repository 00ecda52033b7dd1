//! A hostile client's attacks on a daemon on the test driver, kept as tests:
//! connection floods that send nothing or half a request (with and without
//! the token), event streams without end, requests hyper refuses by itself,
//! oversized imports, persona files and signals. Each asserts that the daemon
//! keeps answering the admin, stays within a stated memory bound, and writes
//! nothing outside its directories.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::hostile::{
    free_port, healthz_while, quantile, send, tcp, worst_persona, Flood, Target,
};
use common::Daemon;
use serde_json::Value;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// The bearer token in `dir/token`, mode 0600.
fn token_file(dir: &Path) -> std::path::PathBuf {
    let tf = dir.join("token");
    std::fs::write(&tf, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&tf, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    tf
}

/// A daemon on the test driver with the TCP API on 127.0.0.1.
fn daemon(name: &str, flags: &[&str]) -> (Daemon, String) {
    let dir = common::test_dir("hostile", name);
    let tf = token_file(&dir);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--interval",
        "1s",
        "--api-listen",
        &addr,
        "--api-token-file",
        tf.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    let d = Daemon::start_args(&dir, &common::test_host_uri(), &args, &[]);
    (d, addr)
}

fn healthz_tcp(addr: &str) -> u16 {
    common::hostile::healthz_tcp(addr, TOKEN)
}

/// The daemon's resident memory in MiB.
fn rss_mib(d: &Daemon) -> f64 {
    common::hostile::rss_mib(d.child.id()).0
}

/// A metric's value from /metrics on the socket (with its labels as written).
fn metric(d: &Daemon, series: &str) -> Option<f64> {
    let (_, text) = common::http(&d.socket, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Requests `n` times with `ask` while the flood holds on; every answer must
/// be 200. Returns the latencies.
fn asked_under_flood(n: usize, mut ask: impl FnMut() -> u16) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            let st = ask();
            let took = t.elapsed();
            assert_eq!(st, 200, "request {i} under the flood");
            std::thread::sleep(Duration::from_millis(20));
            took
        })
        .collect()
}

/// 2,048 connections that send nothing or half a request line, from one
/// process, held and reopened as the daemon closes them: the token holder's
/// requests on new connections are all answered, quickly, on TCP and on the
/// unix socket alike; the daemon holds no more than its pending pool.
#[test]
fn a_flood_of_silent_connections_does_not_lock_the_admin_out() {
    let (d, addr) = daemon("flood", &[]);
    assert_eq!(healthz_tcp(&addr), 200);
    let rss_before = rss_mib(&d);
    for target in [Target::Tcp(addr.clone()), Target::Unix(d.socket.clone())] {
        let kind = match &target {
            Target::Tcp(_) => "tcp",
            Target::Unix(_) => "unix",
        };
        let flood = Flood::start(target, 2048);
        flood.wait_held(2048);
        let mut lat = asked_under_flood(100, || match kind {
            "tcp" => healthz_tcp(&addr),
            _ => common::http(&d.socket, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").0,
        });
        let opened = flood.opened();
        let pending = metric(
            &d,
            &format!("virt_persona_api_connections{{listener=\"{kind}\",pool=\"pending\"}}"),
        )
        .expect("pending connections in /metrics");
        let rss = rss_mib(&d);
        drop(flood);
        let p99 = quantile(&mut lat, 0.99);
        eprintln!(
            "{kind}: 2048 held, {opened} opened; healthz p50 {:?} p99 {p99:?}; pending {pending}; RSS {rss_before:.0} -> {rss:.0} MiB",
            quantile(&mut lat, 0.5)
        );
        assert!(
            opened > 2048,
            "{kind}: the daemon closed pending connections to make room ({opened} opened)"
        );
        assert!(
            pending <= 1024.0,
            "{kind}: {pending} pending connections held"
        );
        // the ≤ 100 ms target is measured by `cargo bench --bench hostile`;
        // here only what no busy machine excuses
        assert!(p99 < Duration::from_secs(2), "{kind}: p99 {p99:?}");
        assert!(
            rss < rss_before + 150.0,
            "{kind}: RSS {rss_before:.0} -> {rss:.0} MiB"
        );
    }
    // and it goes on as before
    assert_eq!(healthz_tcp(&addr), 200);
}

/// A token holder cannot take every connection with event streams: the
/// token's limit answers 503, and requests keep being served.
#[test]
fn event_streams_have_their_own_cap() {
    let (d, addr) = daemon("streams", &[]);
    let mut open = Vec::new();
    for i in 0..32 {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.write_all(
            format!("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "stream {i}");
        open.push(c);
    }
    let (st, body) = tcp(
        &addr,
        &format!("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(st, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("32 event streams"),
        "{v}"
    );
    assert_eq!(healthz_tcp(&addr), 200);
    // a closed stream gives its place back
    drop(open.pop());
    common::wait_some("a stream place back", &d, 30, || {
        let mut c = TcpStream::connect(&addr).ok()?;
        c.write_all(
            format!("GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        let mut head = [0u8; 12];
        c.read_exact(&mut head).ok()?;
        (&head == b"HTTP/1.1 200").then_some(())
    });
}

/// What hyper refuses by itself is JSON too, like every other error.
#[test]
fn requests_hyper_refuses_get_json_errors() {
    let (d, addr) = daemon("hyper-errors", &[]);
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(256 << 10)
    );
    for (what, req, want) in [
        ("a bad request line", "GARBAGE\r\n\r\n".to_string(), 400),
        (
            "a bad header",
            "GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n".to_string(),
            400,
        ),
        ("headers of 256 KiB", huge, 431),
    ] {
        for (listener, (st, body)) in [
            ("unix", common::http(&d.socket, &req)),
            ("tcp", tcp(&addr, &req)),
        ] {
            assert_eq!(st, want, "{what} on {listener}: {body}");
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{what} on {listener}: {e}: {body:?}"));
            assert!(v["error"].is_string(), "{what} on {listener}: {v}");
        }
    }
    let _ = Path::new("");
}

/// POSTs a CSV to the import route on the unix socket: (status, body).
fn import(d: &Daemon, csv: &str) -> (u16, Value) {
    let (st, body) = send(&d.socket, "POST", "/v1/history/import", "text/csv", csv);
    (st, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A UUID from a number (not a domain of this host).
fn uuid(n: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", n >> 16, n)
}

/// Dir size in bytes (the daemon's state).
fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|r| {
            r.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// An import naming a flood of UUIDs stops at the limits, one of 32 MB of
/// bad rows lists the first 100; neither grows the daemon or its history,
/// and `/healthz` answers while they are read (off the loop's thread).
#[test]
fn imports_stop_at_their_limits() {
    let (d, _) = daemon("imports", &[]);
    let rss0 = rss_mib(&d);
    let now = 1_800_000_000u64;
    // 300,000 rows, every one a new domain not on this host
    let mut csv = String::from("timestamp,domain,metric,value\n");
    for i in 0..300_000u64 {
        csv.push_str(&format!("{},{},cpu,1\n", now - i, uuid(i)));
    }
    let (st, v) = import(&d, &csv);
    assert_eq!(st, 413, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("more than 100 domains not on this host, the limit (limits.import_foreign_domains); nothing was imported"),
        "{e}"
    );
    // ~32 MB of bad rows while the admin asks /healthz
    let bad = format!(
        "timestamp,domain,metric,value\n{}",
        "yesterday,nobody,cpu,x\n".repeat(32 << 20 >> 5)
    );
    assert!(bad.len() > 20 << 20);
    let ((st, v), mut lat) = healthz_while(&d.socket, || import(&d, &bad));
    let worst = quantile(&mut lat, 1.0);
    assert_eq!(st, 400, "{v}");
    let e = v["error"].as_str().unwrap();
    let lines: Vec<&str> = e.lines().collect();
    assert!(
        lines[0].ends_with("bad line(s); nothing was imported:"),
        "{}",
        lines[0]
    );
    assert_eq!(lines.len(), 1 + 100 + 1, "100 named, then a count");
    assert!(
        lines[101].starts_with("… and ") && lines[101].ends_with(" more"),
        "{}",
        lines[101]
    );
    let rss = rss_mib(&d);
    eprintln!("RSS {rss0:.0} -> {rss:.0} MiB; /healthz at worst {worst:?} during the import");
    assert!(
        worst < Duration::from_secs(2),
        "the loop was held: {worst:?}"
    );
    // the body is ~1x, the parsed points 0.35x; no error line per row
    assert!(
        rss < rss0 + 3.0 * (bad.len() >> 20) as f64,
        "RSS {rss0:.0} -> {rss:.0} MiB"
    );
    assert!(
        dir_bytes(&d.dir.join("state")) < 8 << 20,
        "nothing was written"
    );
    let (_, text) = common::http(&d.socket, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        text.contains("virt_persona_limit{limit=\"history_series\"} 10000"),
        "{text}"
    );
    assert!(
        text.contains("virt_persona_limit_used{limit=\"history_series\"} 0"),
        "{text}"
    );
}

/// Signals: a name over 128 bytes, a TTL over the limit and one signal more
/// than `limits.signals` are refused, naming the limit.
#[test]
fn signals_are_bounded() {
    let dir = common::test_dir("hostile", "signals");
    std::fs::write(
        dir.join("config.toml"),
        "[limits]\nsignals = 5\nsignal_ttl = \"1d\"\n",
    )
    .unwrap();
    let d = Daemon::start_args(
        &dir,
        &common::test_host_uri(),
        &[
            "--interval",
            "1s",
            "--config",
            dir.join("config.toml").to_str().unwrap(),
        ],
        &[],
    );
    let put = |name: &str, body: &str| {
        let (st, b) = common::http(
            &d.socket,
            &format!(
                "PUT /v1/signals/{name} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        (st, serde_json::from_str::<Value>(&b).unwrap_or(Value::Null))
    };
    let (st, v) = put(&"a".repeat(129), r#"{"value": 1}"#);
    assert_eq!(st, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("over the limit of 128"),
        "{v}"
    );
    let (st, v) = put("x", r#"{"value": 1, "ttl": "36500d"}"#);
    assert_eq!(st, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("longer than the limit of 1d (limits.signal_ttl)"),
        "{v}"
    );
    for i in 0..5 {
        assert_eq!(put(&format!("s{i}"), r#"{"value": 1, "ttl": "1h"}"#).0, 200);
    }
    let (st, v) = put("s5", r#"{"value": 1}"#);
    assert_eq!(st, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("5 signals are set, the limit (limits.signals)"),
        "{v}"
    );
    assert_eq!(
        put("s0", r#"{"value": 2}"#).0,
        200,
        "one set already may change"
    );
    let (_, text) = common::http(&d.socket, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        text.contains("virt_persona_limit_used{limit=\"signals\"} 5"),
        "{text}"
    );
}

/// PUTs a persona on the unix socket: (status, body).
fn put_persona(d: &Daemon, id: &str, toml: &str) -> (u16, Value) {
    let (st, body) = send(
        &d.socket,
        "PUT",
        &format!("/v1/personas/{id}"),
        "application/toml",
        toml,
    );
    (st, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The worst persona a client may send — 1,000 `match.names` globs of the
/// longest kind, just under the 256 KiB file limit — is validated off the
/// loop's thread: `/healthz` keeps answering while it is, and it loads. A
/// list over its limit is refused at once, and nothing is written.
#[test]
fn the_worst_valid_persona_does_not_hold_the_loop() {
    let (d, _) = daemon("worst-persona", &[]);
    let toml = worst_persona("worst");
    assert!(
        toml.len() < 256 << 10 && toml.len() > 240 << 10,
        "{}",
        toml.len()
    );
    let (((st, v), took), mut lat) = healthz_while(&d.socket, || {
        let t = Instant::now();
        (put_persona(&d, "worst", &toml), t.elapsed())
    });
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "ok", "{v}");
    let worst = quantile(&mut lat, 1.0);
    eprintln!(
        "worst persona: PUT {took:?}; /healthz meanwhile: {} asked, p50 {:?}, worst {worst:?}",
        lat.len(),
        quantile(&mut lat, 0.5)
    );
    // the ≤ 100 ms target is measured by `cargo bench --bench hostile`
    assert!(worst < Duration::from_secs(1), "/healthz waited {worst:?}");
    // one entry over a limit: refused at once, nothing written
    let over: Vec<String> = (0..1001).map(|i| format!("\"n{i}\"")).collect();
    let (st, v) = put_persona(
        &d,
        "over",
        &format!("id = \"over\"\n[match]\nnames = [{}]\n", over.join(",")),
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("match.names: 1001 entries, more than the limit of 1000"),
        "{v}"
    );
    assert!(!d.dir.join("personas/over.toml").exists());
}

/// What the daemon passes on from files and domains reaches the admin's
/// terminal escaped: a persona named with terminal escape sequences and a
/// bidi override shows them as `\x1b`, `\u{202e}`, in tables, in details
/// and in errors, and `--json` stays the same JSON.
#[test]
fn the_cli_never_prints_control_characters() {
    let (d, _) = daemon("cli-escapes", &[]);
    std::fs::write(
        d.dir.join("personas/evil.toml"),
        "id = \"evil\"\nname = \"x\\u001b]0;pwned\\u0007\\u001b[2J\\u009b31m\\u202eyo\"\ndescription = \"\\u001b[31mred\"\n[tuning]\ncpu_shares = 512\n",
    )
    .unwrap();
    std::fs::write(
        d.dir.join("personas/broken.toml"),
        "id = \"bro\\u001b[2Jken\"\n",
    )
    .unwrap();
    d.signal("SIGHUP");
    common::wait_some("evil loaded", &d, 30, || {
        d.get("/v1/personas")
            .as_array()?
            .iter()
            .any(|p| p["id"] == "evil")
            .then_some(())
    });
    let run = |args: &[&str]| {
        let out = common::cli()
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t' || c == '\u{202e}';
    for args in [
        &["persona-list"][..],
        &["persona-dump", "evil"],
        &["persona-status", "nope\u{1b}[2J"],
    ] {
        let (out, err) = run(args);
        assert!(
            !out.chars().any(bad) && !err.chars().any(bad),
            "{args:?}: {out:?} {err:?}"
        );
        match args[0] {
            "persona-list" => {
                assert!(
                    out.contains("x\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u{202e}yo"),
                    "{out}"
                );
                assert!(
                    out.contains("bro\\x1b[2Jken"),
                    "the broken file's error: {out}"
                );
            }
            "persona-status" => assert!(err.contains("nope\\x1b[2J"), "{err}"),
            _ => {}
        }
    }
    let (out, _) = run(&["--json", "persona-list"]);
    assert!(!out.chars().any(bad), "{out:?}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let evil = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "evil")
        .unwrap();
    assert_eq!(
        evil["name"], "x\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\u{202e}yo",
        "the same data"
    );
}

/// One request over TLS, trusting only `ca`: (status, body).
fn tls_request(addr: &str, ca: &[u8], request: &str) -> std::io::Result<(u16, String)> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca.to_vec()))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    // the server may close without close_notify after Connection: close
    let _ = tls.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        status,
        out.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    ))
}

/// The TCP API with TLS: answers over TLS with the token, refuses plain
/// HTTP, and a half-done handshake is closed like any pending connection.
/// Without TLS beyond loopback the daemon warns at start.
#[test]
fn tls_on_the_tcp_api() {
    let dir = common::test_dir("hostile", "tls");
    let (cert, key, der) = common::certificate(&dir);
    let tf = token_file(&dir);
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_args(
        &dir,
        &common::test_host_uri(),
        &[
            "--interval",
            "1s",
            "--api-listen",
            &addr,
            "--api-token-file",
            tf.to_str().unwrap(),
            "--api-tls-cert",
            cert.to_str().unwrap(),
            "--api-tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    common::wait_some("TLS listening", &d, 30, || {
        d.log().contains("TCP API listening with TLS").then_some(())
    });
    let ok = format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n");
    let (st, body) = tls_request(&addr, &der, &ok).unwrap();
    assert_eq!(st, 200, "{body}");
    let (st, _) = tls_request(
        &addr,
        &der,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(st, 401, "the token is still needed");
    assert_eq!(healthz_tcp(&addr), 0, "plain HTTP gets no answer");
    // a handshake that never finishes: closed within the pending deadline
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x00]).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = half.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(d);

    // a key others may read is refused, naming the fix
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let err = common::daemon_refused(
        &dir,
        &common::test_host_uri(),
        &[
            "--api-listen".as_ref(),
            addr.as_ref(),
            "--api-token-file".as_ref(),
            tf.as_os_str(),
            "--api-tls-cert".as_ref(),
            cert.as_os_str(),
            "--api-tls-key".as_ref(),
            key.as_os_str(),
        ],
    );
    assert!(
        err.contains("TLS key") && err.contains("chmod 600"),
        "{err}"
    );

    // plain TCP on every address: said at start
    let wide = format!("0.0.0.0:{}", free_port());
    let dir2 = common::test_dir("hostile", "tls-warning");
    std::fs::copy(&tf, dir2.join("token")).unwrap();
    let d = Daemon::start_args(
        &dir2,
        &common::test_host_uri(),
        &[
            "--interval",
            "1s",
            "--api-listen",
            &wide,
            "--api-token-file",
            dir2.join("token").to_str().unwrap(),
        ],
        &[],
    );
    common::wait_some("the warning", &d, 30, || {
        d.log()
            .contains("TCP API listening beyond loopback without TLS")
            .then_some(())
    });
}

/// Links planted in the personas directory — at the persona's own name and
/// at the temporary names an older release used — are never written
/// through: a PUT replaces the link, and the files outside keep their bytes.
#[test]
fn nothing_is_written_through_a_planted_link() {
    let (d, _) = daemon("planted-links", &[]);
    let outside = d.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let precious = outside.join("precious");
    let other = outside.join("other");
    std::fs::write(&precious, "root's file\n").unwrap();
    std::fs::write(&other, "another\n").unwrap();
    let personas = d.dir.join("personas");
    std::os::unix::fs::symlink(&precious, personas.join("evil.toml")).unwrap();
    std::os::unix::fs::symlink(
        &other,
        personas.join(format!(".evil.toml.tmp-{}", d.child.id())),
    )
    .unwrap();
    d.signal("SIGHUP");
    let (st, v) = put_persona(&d, "evil", "id = \"evil\"\n[tuning]\ncpu_shares = 512\n");
    assert_eq!(st, 200, "{v}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "root's file\n");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "another\n");
    let meta = std::fs::symlink_metadata(personas.join("evil.toml")).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the link was replaced by the file"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&personas)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp") && !n.ends_with(&format!("tmp-{}", d.child.id())))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary file left: {leftovers:?}"
    );
}
