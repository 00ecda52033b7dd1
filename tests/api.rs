//! Every API route and every CLI command against a daemon started on the test
//! driver, over a real socket — including the requests a clumsy or hostile
//! client sends.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{json, Value};

fn host_uri() -> String {
    common::test_host_uri()
}

fn setup(name: &str) -> PathBuf {
    let d = common::test_dir("api", name);
    std::fs::write(
        d.join("personas/web.toml"),
        "id = \"web-hot\"\npriority = 10\n[match]\ntags = [\"web\"]\n[[activation.when]]\nsignal = \"lb.rps\"\nabove = 1000\n[tuning]\nmemory_soft_limit = \"256 MiB\"\n",
    )
    .unwrap();
    std::fs::write(d.join("personas/db.toml"), "id = \"db-only\"\n[match]\nnames = [\"db-*\"]\n[activation]\nmode = \"any\"\n[[activation.when]]\nsignal = \"never\"\nabove = 1\n[tuning]\nblkio_weight = 900\n").unwrap();
    d
}

/// Raw HTTP over the unix socket: (status, body).
fn raw(sock: &Path, req: &str) -> (u16, String) {
    common::http(sock, req)
}

fn call(sock: &Path, method: &str, path: &str, ctype: &str, body: &str) -> (u16, Value) {
    let (st, b) = raw(
        sock,
        &format!(
            "{method} {path} HTTP/1.1\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    (st, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

fn get(sock: &Path, path: &str) -> (u16, Value) {
    call(sock, "GET", path, "application/json", "")
}

fn cli(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let o = common::cli()
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        // generous: a debug daemon on a busy machine
        assert!(t.elapsed() < Duration::from_secs(60), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn routes_answer_and_refuse_as_documented() {
    let dir = setup("routes");
    let d = Daemon::start_args(&dir, &host_uri(), &["--interval", "1s"], &[]);
    let s = &d.socket;

    let (st, v) = get(s, "/healthz");
    assert_eq!(
        (st, v["status"].as_str(), v["libvirt"].as_str()),
        (200, Some("ok"), Some("connected"))
    );
    let (st, v) = get(s, "/v1/domains");
    assert_eq!(st, 200);
    assert_eq!(v.as_array().unwrap().len(), 5);
    for k in ["id", "name", "uuid", "state", "persona", "since"] {
        assert!(v[0].get(k).is_some(), "{k} in {v}");
    }
    let (st, web1) = get(s, "/v1/domains/web-1");
    assert_eq!(st, 200);
    // by id and by UUID as virsh resolves them
    assert_eq!(
        get(s, &format!("/v1/domains/{}", web1["id"])).1["name"],
        "web-1"
    );
    assert_eq!(
        get(
            s,
            &format!("/v1/domains/{}", web1["uuid"].as_str().unwrap())
        )
        .1["name"],
        "web-1"
    );
    let (st, v) = get(s, "/v1/domains/nope");
    assert_eq!(
        (st, v["error"].as_str()),
        (404, Some("domain 'nope' not found"))
    );
    assert_eq!(get(s, "/v1/nothing").0, 404);
    assert_eq!(
        call(s, "DELETE", "/v1/domains", "application/json", "").0,
        405
    );

    // signals drive a persona on; explain says why
    let (st, v) = call(
        s,
        "PUT",
        "/v1/signals/lb.rps",
        "application/json",
        r#"{"value": 1500, "ttl": "1m"}"#,
    );
    assert_eq!(st, 200, "{v}");
    wait("web-hot on web-1", || {
        get(s, "/v1/domains/web-1").1["persona"] == "web-hot"
    });
    let (_, v) = get(s, "/v1/signals");
    assert_eq!(v[0]["name"], "lb.rps");
    assert_eq!(v[0]["scope"], "host");
    let (st, v) = get(s, "/v1/domains/web-1/explain");
    assert_eq!(st, 200);
    assert_eq!(
        v["candidates"][0]["conditions"][0]["condition"],
        "signal lb.rps > 1000"
    );
    assert_eq!(v["candidates"][0]["conditions"][0]["value"], 1500.0);
    let (_, h) = get(s, "/v1/domains/web-1/history");
    assert_eq!(h[0]["to"], "web-hot");
    for k in [
        "time", "domain", "from", "to", "reason", "result", "changes",
    ] {
        assert!(h[0].get(k).is_some(), "{k}");
    }
    assert_eq!(
        get(s, "/v1/domains/web-1/history?since=2999-01-01T00:00:00Z").1,
        json!([])
    );
    assert_eq!(get(s, "/v1/domains/web-1/history?since=soon").0, 400);

    // manual activation: refused when the persona does not fit, expires by itself
    let (st, v) = call(
        s,
        "POST",
        "/v1/domains/web-1/activate",
        "application/json",
        r#"{"persona": "db-only"}"#,
    );
    assert_eq!(st, 409);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("does not match domain 'web-1'"),
        "{v}"
    );
    assert_eq!(
        call(
            s,
            "POST",
            "/v1/domains/web-1/activate",
            "application/json",
            r#"{"persona": "ghost"}"#
        )
        .0,
        404
    );
    assert_eq!(
        call(
            s,
            "POST",
            "/v1/domains/db-1/activate",
            "application/json",
            r#"{"persona": "db-only", "for": "2s"}"#
        )
        .0,
        200
    );
    assert_eq!(get(s, "/v1/domains/db-1").1["persona"], "db-only");
    assert_eq!(get(s, "/v1/domains/db-1").1["reason"], "manual");
    wait("the activation to expire", || {
        get(s, "/v1/domains/db-1").1["persona"].is_null()
    });
    assert_eq!(
        call(
            s,
            "POST",
            "/v1/domains/db-1/activate",
            "application/json",
            r#"{"persona": "db-only"}"#
        )
        .0,
        200
    );
    let (st, v) = call(s, "POST", "/v1/domains/db-1/revert", "application/json", "");
    assert_eq!((st, v["persona"].clone()), (200, Value::Null));

    // clumsy bodies: (method, path, content type, body) -> status
    let activate = "/v1/domains/db-1/activate";
    for (method, path, ctype, body, want) in [
        ("POST", activate, "application/json", "{not json", 400),
        (
            "POST",
            activate,
            "text/plain",
            r#"{"persona": "db-only"}"#,
            415,
        ),
        (
            "POST",
            activate,
            "application/json",
            r#"{"persona": "db-only", "x": 1}"#,
            400,
        ),
        (
            "PUT",
            "/v1/signals/BAD%20NAME",
            "application/json",
            r#"{"value": 1}"#,
            400,
        ),
        (
            "PUT",
            "/v1/signals/bad!",
            "application/json",
            r#"{"value": 1}"#,
            400,
        ),
        (
            "PUT",
            "/v1/signals/x",
            "application/json",
            r#"{"value": "high"}"#,
            400,
        ),
    ] {
        let (st, v) = call(s, method, path, ctype, body);
        assert_eq!(st, want, "{method} {path} {body}: {v}");
        assert!(v["error"].is_string(), "a JSON error: {v}");
    }
    let big = "x".repeat(1_100_000);
    assert_eq!(
        call(s, "PUT", "/v1/personas/big", "application/toml", &big).0,
        413
    );
    let (st, _) = raw(s, "GARBAGE\r\n\r\n");
    assert_eq!(st, 400);

    // personas: define (TOML and JSON), read, validate, undefine; written as files
    let (st, v) = call(
        s,
        "PUT",
        "/v1/personas/calm",
        "application/toml",
        "id = \"calm\"\npriority = -5\n[match]\nnames = [\"desk-*\"]\n",
    );
    assert_eq!(st, 200, "{v}");
    assert!(dir.join("personas/calm.toml").exists());
    let (st, v) = call(
        s,
        "PUT",
        "/v1/personas/calm",
        "application/json",
        r#"{"id": "calm", "priority": -6}"#,
    );
    assert_eq!((st, v["priority"].as_i64()), (200, Some(-6)), "{v}");
    assert!(std::fs::read_to_string(dir.join("personas/calm.toml"))
        .unwrap()
        .contains("-6"));
    let (st, v) = call(
        s,
        "PUT",
        "/v1/personas/calm",
        "application/toml",
        "id = \"other\"\n",
    );
    assert_eq!(st, 400);
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("does not match the route"));
    let (st, v) = call(
        s,
        "PUT",
        "/v1/personas/calm",
        "application/toml",
        "id = \"calm\"\npriority = \"x\"\n",
    );
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().starts_with("2:12:"), "{v}");
    let (st, v) = get(s, "/v1/personas/calm");
    assert_eq!(
        (st, v["toml"].as_str().map(|t| t.contains("-6"))),
        (200, Some(true))
    );
    let (_, v) = call(
        s,
        "POST",
        "/v1/personas/validate",
        "application/toml",
        "id = \"ok\"\n[tuning]\ncpu_shares = 1\n",
    );
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"][0]["line"], 3);
    let (_, v) = call(
        s,
        "POST",
        "/v1/personas/validate",
        "application/toml",
        "id = \"ok\"\n",
    );
    assert_eq!(v["ok"], true);
    // a file edited by hand shows in the API
    std::fs::write(dir.join("personas/hand.toml"), "id = \"by-hand\"\n").unwrap();
    wait("the hand-written file", || {
        get(s, "/v1/personas/by-hand").0 == 200
    });
    let (st, _) = call(s, "DELETE", "/v1/personas/calm", "application/json", "");
    assert_eq!(st, 200);
    assert!(!dir.join("personas/calm.toml").exists());
    assert_eq!(
        call(s, "DELETE", "/v1/personas/calm", "application/json", "").0,
        404
    );
    let (_, list) = get(s, "/v1/personas");
    for k in ["id", "name", "priority", "status", "file", "error"] {
        assert!(list[0].get(k).is_some(), "{k}");
    }

    // metrics
    let (st, b) = raw(s, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(st, 200);
    for m in [
        "virt_persona_domains",
        "virt_persona_transitions_total",
        "virt_persona_tick_seconds",
        "virt_persona_signals",
        "virt_persona_persona_load_errors",
        "virt_persona_apply_seconds",
    ] {
        assert!(b.contains(m), "{m} in metrics");
    }
}

#[test]
fn a_silent_client_does_not_stall_others_and_the_event_stream_follows() {
    let dir = setup("stream");
    let d = Daemon::start_args(&dir, &host_uri(), &["--interval", "1s"], &[]);
    let s = d.socket.clone();
    // a client that connects and never sends anything
    let _silent: Vec<UnixStream> = (0..5).map(|_| UnixStream::connect(&s).unwrap()).collect();
    let t = Instant::now();
    assert_eq!(get(&s, "/v1/domains").0, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "others are served at once"
    );

    // events as they happen
    let s2 = s.clone();
    let follower = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = virt_persona::api::client::stream(&s2, "/v1/events", |e| got.push(e));
        got
    });
    // the stream is subscribed before the signal moves anything (its
    // transition would otherwise go out before the follower listens)
    wait("the event stream open", || {
        get(&s, "/metrics")
            .1
            .as_str()
            .is_some_and(|m| m.contains("virt_persona_limit_used{limit=\"event_streams\"} 1"))
    });
    call(
        &s,
        "PUT",
        "/v1/signals/lb.rps",
        "application/json",
        r#"{"value": 5000, "domain": "web-2"}"#,
    );
    wait("web-2 on", || {
        get(&s, "/v1/domains/web-2").1["persona"] == "web-hot"
    });
    drop(d); // the stream ends with the daemon
    let got = follower.join().unwrap();
    assert!(
        got.iter()
            .any(|e| e["domain"] == "web-2" && e["to"] == "web-hot"),
        "{got:?}"
    );
    assert!(
        !got.iter().any(|e| e["domain"] == "web-1"),
        "a domain-scoped signal only moves its domain"
    );
}

#[test]
fn tcp_needs_the_bearer_token() {
    let dir = setup("tcp");
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let tf = dir.join("token");
    // a token other users can read is refused, with the fix in the message
    let err = common::daemon_refused(
        &dir,
        &host_uri(),
        &[
            "--api-listen".as_ref(),
            addr.as_ref(),
            "--api-token-file".as_ref(),
            tf.as_os_str(),
        ],
    );
    assert!(err.contains("lets other users read it: chmod 600"), "{err}");
    std::fs::set_permissions(&tf, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let _d = Daemon::start_args(
        &dir,
        &host_uri(),
        &[
            "--interval",
            "1s",
            "--api-listen",
            &addr,
            "--api-token-file",
            tf.to_str().unwrap(),
        ],
        &[],
    );
    let send = |auth: Option<&str>| {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        let h = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        c.write_all(format!("GET /v1/domains HTTP/1.1\r\nConnection: close\r\n{h}\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or(0)
    };
    assert_eq!(send(None), 401);
    assert_eq!(send(Some("Bearer wrong")), 401);
    assert_eq!(send(Some(&format!("Bearer {token}x"))), 401);
    assert_eq!(send(Some(&format!("Bearer {token}"))), 200);
    // refused on the headers alone: a body that never comes is not waited for
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    c.write_all(
        b"PUT /v1/signals/x HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 500000\r\n\r\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "answered before any body (the body timeout is 10 s): {:?}",
        started.elapsed()
    );
}

#[test]
fn every_cli_command_through_the_daemon() {
    let dir = setup("cli");
    let d = Daemon::start_args(&dir, &host_uri(), &["--interval", "1s"], &[]);
    let sock = d.socket.clone();
    let s = &sock;
    let (rc, out, _) = cli(s, &["list"]);
    assert_eq!(rc, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["Id", "Name", "State", "Persona", "Reason", "Since"]
    );
    assert!(lines[1].chars().all(|c| c == '-'));
    assert_eq!(lines.len(), 2 + 4, "running domains only: {out}");
    assert_eq!(cli(s, &["list", "--all"]).1.lines().count(), 2 + 5);
    let (_, out, _) = cli(s, &["--json", "list"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v[0]["persona"].is_null());

    assert_eq!(
        cli(s, &["signal-set", "lb.rps", "2000", "--ttl", "1m"]).0,
        0
    );
    assert!(cli(s, &["signal-list"]).1.contains("lb.rps"));
    wait("persona", || {
        cli(s, &["--json", "persona-status", "web-1"])
            .1
            .contains("\"web-hot\"")
    });
    let (_, out, _) = cli(s, &["persona-status", "web-1"]);
    assert!(
        out.contains("Persona:        web-hot") && out.contains("soft_limit (KiB):       262144"),
        "{out}"
    );
    let (_, out, _) = cli(s, &["persona-explain", "web-1"]);
    assert!(
        out.contains("[yes] signal lb.rps > 1000: now 2000.00"),
        "{out}"
    );
    let (_, out, _) = cli(s, &["persona-history", "web-1", "--since", "1h"]);
    assert!(out.contains("web-hot"), "{out}");
    let (_, out, _) = cli(s, &["--json", "persona-history", "web-1"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()[0]["to"],
        "web-hot"
    );

    let (rc, _, err) = cli(s, &["persona-apply", "web-1", "db-only"]);
    assert_eq!(rc, 1);
    assert!(
        err.starts_with("error: persona 'db-only' does not match domain 'web-1'"),
        "{err}"
    );
    assert_eq!(
        cli(s, &["persona-apply", "db-1", "db-only", "--for", "10m"]).0,
        0
    );
    assert_eq!(cli(s, &["persona-revert", "db-1"]).0, 0);

    let f = dir.join("new.toml");
    std::fs::write(&f, "id = \"fresh\"\n[match]\nnames = [\"desk-*\"]\n").unwrap();
    assert_eq!(cli(s, &["persona-define", f.to_str().unwrap()]).0, 0);
    assert!(cli(s, &["persona-list"]).1.contains("fresh"));
    let (_, out, _) = cli(s, &["persona-dump", "fresh"]);
    assert!(out.starts_with("id = \"fresh\""));
    std::fs::write(&f, "id = \"fresh\"\npriority = []\n").unwrap();
    let (rc, _, err) = cli(s, &["persona-define", f.to_str().unwrap()]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("new.toml:2:12"),
        "errors point into the admin's file: {err}"
    );
    assert_eq!(cli(s, &["persona-undefine", "fresh"]).0, 0);
    assert_eq!(
        cli(s, &["persona-undefine", "fresh"]).2.trim(),
        "error: persona 'fresh' not found"
    );
    assert!(cli(s, &["event"]).1.contains("web-hot"));
    let (_, out, _) = cli(s, &["--json", "persona-list"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v.as_array().unwrap().iter().all(|p| p["status"] == "ok"));

    // generated docs
    assert!(cli(s, &["completions", "bash"]).1.contains("persona-apply"));
    assert!(cli(s, &["man"]).1.contains(".TH virt-persona"));

    drop(d);
    let (rc, _, err) = cli(s, &["list"]);
    assert_eq!(rc, 1);
    assert!(
        err.starts_with("error: cannot reach virt-personad at ")
            && err.contains("is the daemon running?"),
        "{err}"
    );
}

/// A state file that is not a database does not stop the daemon: it is kept
/// aside, the daemon starts observing only (no write to any domain), says so
/// in its log and in /healthz (503), and records what it would do.
#[test]
fn a_damaged_state_file_starts_the_daemon_observing_only() {
    let dir = setup("damaged");
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(dir.join("state/state.redb"), vec![0x5a; 10_000]).unwrap();
    std::fs::write(
        dir.join("personas/all.toml"),
        "id = \"all\"\n[tuning]\nmemory_soft_limit = \"700 MiB\"\n",
    )
    .unwrap();
    let d = Daemon::start_args(&dir, &host_uri(), &["--interval", "1s"], &[]);
    let (status, body) = common::http(
        &d.socket,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("kept aside as") && body.contains("only observes"),
        "{body}"
    );
    assert!(d.log().contains("OBSERVING ONLY"), "{}", d.log());
    // it decides and says what it would do, and changes nothing
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let h = d.get("/v1/events/recent");
        if h.as_array()
            .is_some_and(|a| a.iter().any(|e| e["result"] == "would_apply"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no would_apply event: {h}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let t = d.get("/v1/domains/web-1/tuning");
    assert_ne!(t["memory_soft_limit"], 700 * 1024, "not applied: {t}");
    let kept = std::fs::read_dir(dir.join("state"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.redb.damaged-")
        })
        .count();
    assert_eq!(kept, 1);
}

/// SIGTERM stops new connections at once (the socket goes) but a request
/// already open gets its answer: here its body is still on its way when the
/// signal arrives. Then the daemon exits cleanly.
#[test]
fn sigterm_lets_an_open_request_finish() {
    let dir = setup("drain");
    let mut d = Daemon::start_args(&dir, &host_uri(), &["--interval", "1s"], &[]);
    let mut c = UnixStream::connect(&d.socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // a first request on this keep-alive connection: it is accepted and served
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // the second one: headers and half of its body
    let body = br#"{"value": 7, "ttl": "1m"}"#;
    c.write_all(
        format!(
            "PUT /v1/signals/drain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&body[..5]).unwrap();
    d.signal("TERM");
    let t = Instant::now();
    while d.socket.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "the socket stays");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        UnixStream::connect(&d.socket).is_err(),
        "no new connection once stopping"
    );
    c.write_all(&body[5..]).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "answered: {out}\n{}",
        d.log()
    );
    assert!(out.contains(r#""name":"drain""#), "{out}");
    let status = d.wait_exit(20);
    assert!(status.success(), "{status:?}\n{}", d.log());
}

/// Gossip seeds without a listen address would be ignored: refused at start
/// with the reason; and a cluster signal on a host not in a cluster is refused.
#[test]
fn gossip_seeds_without_listen_are_refused() {
    let dir = setup("gossip");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_virt-personad"))
        .args(["-c", &host_uri(), "--gossip-seed", "10.0.0.2:7946"])
        .arg("--personas")
        .arg(dir.join("personas"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("g.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("gossip seeds given without a listen address"),
        "{err}"
    );
    assert!(!dir.join("g.sock").exists(), "nothing served");
    let d = Daemon::start_args(&dir, &host_uri(), &["--interval", "1s"], &[]);
    let body = r#"{"value": 1, "scope": "cluster"}"#;
    let (st, b) = raw(
        &d.socket,
        &format!(
            "PUT /v1/signals/x HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("not in a cluster"), "{b}");
    let (st, b) = raw(&d.socket, "GET /v1/cluster HTTP/1.1\r\n\r\n");
    assert_eq!(st, 409, "{b}");
}

/// A reload switches `dry_run` and names every other changed setting as
/// needing a restart, instead of keeping the old value without a word.
#[test]
fn a_reload_switches_dry_run_and_names_what_needs_a_restart() {
    let dir = setup("reload");
    let conf = dir.join("d.toml");
    std::fs::write(&conf, "dry_run = true\n").unwrap();
    let d = Daemon::start_args(
        &dir,
        &host_uri(),
        &["--interval", "1s", "--config", conf.to_str().unwrap()],
        &[],
    );
    assert_eq!(d.get("/healthz")["dry_run"], true);
    std::fs::write(&conf, "dry_run = false\nverify_interval = \"7s\"\n").unwrap();
    d.signal("HUP");
    let t = Instant::now();
    while d.get("/healthz")["dry_run"] != false || !d.log().contains("take effect after a restart")
    {
        assert!(t.elapsed() < Duration::from_secs(60), "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.log().contains("settings=verify_interval"), "{}", d.log());
}
