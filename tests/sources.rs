//! Signal sources against the real tools: Debian's HAProxy with its
//! Prometheus exporter in front of a local backend, driven by a bounded
//! load loop; a page that breaks in every way a source can (refused,
//! slow, non-2xx, garbage, no such metric, too large); reloads. The daemon
//! runs on the test driver here, and on a real guest in the last test.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::services::{Answer, Haproxy, LoadLoop, Page};
use common::{wait_some, Daemon};

const TEST_URI: &str = "test:///default";

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sources-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("personas")).unwrap();
    d
}

fn start(dir: &Path, uri: &str, config: &str) -> Daemon {
    let file = dir.join("daemon.toml");
    std::fs::write(&file, config).unwrap();
    Daemon::start_args(
        dir,
        uri,
        &["--interval", "1s", "--config", file.to_str().unwrap()],
        &[],
    )
}

/// The source that sets `signal`, as `GET /v1/sources` shows it.
fn source(d: &Daemon, signal: &str) -> serde_json::Value {
    d.get("/v1/sources")
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["signal"] == signal)
        .cloned()
        .unwrap_or_default()
}

/// The value of a signal (for a domain, by name) in `GET /v1/signals`.
fn signal(d: &Daemon, name: &str, domain: Option<&str>) -> Option<f64> {
    d.get("/v1/signals")
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name && s["domain"].as_str() == domain)
        .and_then(|s| s["value"].as_f64())
}

fn signal_persona(id: &str, domain: &str, signal: &str, above: f64, shares: u64) -> String {
    format!(
        "id = \"{id}\"\n[match]\nnames = [\"{domain}\"]\n[activation]\ncooldown = \"1s\"\n[[activation.when]]\nsignal = \"{signal}\"\nabove = {above}\n[tuning]\ncpu_shares = {shares}\n"
    )
}

#[test]
fn haproxy_request_rate_sets_signals_and_a_persona_follows_the_load() {
    let dir = dir("haproxy");
    let backend = Page::start(Answer::ok("ok"));
    // two servers: one is the test driver's domain, the other runs elsewhere
    let hap = Haproxy::start(
        &dir.join("haproxy"),
        &[("test", &backend.addr), ("elsewhere", &backend.addr)],
    );
    std::fs::write(
        dir.join("personas/rush.toml"),
        signal_persona("rush", "test", "lb.web.rps", 10.0, 2048),
    )
    .unwrap();
    let url = hap.metrics_url();
    let d = start(
        &dir,
        TEST_URI,
        &format!(
            r#"[[signals.source]]
signal = "lb.web.rps"
url = "{url}"
metric = "haproxy_frontend_http_requests_total"
labels = {{ proxy = "web" }}
rate = "3s"
interval = "1s"

[[signals.source]]
signal = "lb.server.rps"
url = "{url}"
metric = "haproxy_server_http_responses_total"
labels = {{ proxy = "app", code = "2xx" }}
rate = "3s"
interval = "1s"
domain_label = "server"
"#
        ),
    );
    // quiet: the rate is 0, the persona is off
    let quiet = wait_some("a first rate", &d, 60, || signal(&d, "lb.web.rps", None));
    assert!(quiet < 1.0, "no load yet: {quiet}");
    assert_eq!(d.persona("test"), None);

    let mut load = LoadLoop::start(&hap.web, 40, Duration::from_secs(120));
    let on = wait_some("the persona on under load", &d, 60, || {
        (d.persona("test").as_deref() == Some("rush")).then(|| load.started.elapsed())
    });
    eprintln!("first request -> persona worn in {on:?} (1 s source interval, 1 s daemon interval)");
    let rps = signal(&d, "lb.web.rps", None).unwrap();
    assert!((10.0..=60.0).contains(&rps), "about 40 requests/s: {rps}");
    // per domain: half the requests go to the server named after the domain
    let per = wait_some("the per-domain rate", &d, 30, || {
        signal(&d, "lb.server.rps", Some("test")).filter(|v| *v > 5.0)
    });
    assert!(per < rps + 1.0, "{per} of {rps}");
    let s = source(&d, "lb.server.rps");
    assert_eq!(s["up"], true, "{s}");
    assert_eq!(s["unmatched"], serde_json::json!(["elsewhere"]), "{s}");
    // signal-list names the sources beside the signals
    let out = common::cli_ok(&["--socket", d.socket.to_str().unwrap(), "signal-list"]);
    assert!(
        out.contains("Sources:")
            && out.contains("lb.server.rps")
            && out.contains("not on this host: elsewhere"),
        "{out}"
    );

    load.stop();
    let off = wait_some("the persona off when the load stops", &d, 60, || {
        d.persona("test").is_none().then(Instant::now)
    });
    let _ = off;
    let after = signal(&d, "lb.web.rps", None).unwrap_or(0.0);
    assert!(after < 10.0, "the rate fell: {after}");
    // the requests HAProxy counted are the ones the load loop sent (the exporter's own not included)
    assert!(load.sent.load(std::sync::atomic::Ordering::SeqCst) > 40);
}

#[test]
fn a_failing_source_is_named_keeps_its_value_until_the_ttl_and_is_then_absent() {
    let dir = dir("failing");
    let page = Page::start(Answer::ok(
        "# TYPE app_queue_depth gauge\napp_queue_depth{queue=\"jobs\"} 7\n",
    ));
    let d = start(
        &dir,
        TEST_URI,
        &format!(
            r#"[[signals.source]]
signal = "app.queue"
url = "{}"
metric = "app_queue_depth"
interval = "1s"
timeout = "300ms"
ttl = "4s"
max_body = 2048
"#,
            page.url("/metrics")
        ),
    );
    wait_some("the value", &d, 60, || {
        signal(&d, "app.queue", None).filter(|v| *v == 7.0)
    });
    assert!(
        page.last_head
            .lock()
            .unwrap()
            .contains("text/plain;version=0.0.4"),
        "asks for the text format"
    );

    // each way of failing is named; the value stays until its TTL, never 0
    let long = format!("app_queue_depth 1\n{}", "# padding\n".repeat(300));
    let slow = Answer {
        delay: Duration::from_secs(2),
        ..Answer::ok("app_queue_depth 1\n")
    };
    let cases: Vec<(Answer, &str)> = vec![
        (
            Answer::ok("app_queue_depth{queue=\"jobs\" 7\n"),
            "does not parse: line 1",
        ),
        (
            Answer {
                status: 503,
                ..Answer::ok("down for maintenance")
            },
            "HTTP status 503: down for maintenance",
        ),
        (
            Answer::ok("other_metric 3\n"),
            "no sample named app_queue_depth",
        ),
        (Answer::ok(long), "over the limit of 2048 bytes"),
        (slow, "no answer within 300 ms"),
    ];
    let n = cases.len();
    for (i, (answer, what)) in cases.into_iter().enumerate() {
        page.set(answer);
        let t0 = Instant::now();
        wait_some(what, &d, 30, || {
            let s = source(&d, "app.queue");
            (s["up"] == false && s["last_error"].as_str().is_some_and(|e| e.contains(what)))
                .then_some(())
        });
        // the first failure: the value is kept until the TTL, then absent
        if i == 0 {
            let v = signal(&d, "app.queue", None);
            assert!(
                v == Some(7.0) || t0.elapsed() > Duration::from_secs(3),
                "kept: {v:?}"
            );
            wait_some("the signal absent after its TTL", &d, 30, || {
                signal(&d, "app.queue", None).is_none().then_some(())
            });
        }
        assert_eq!(
            signal(&d, "app.queue", None),
            None,
            "never a stale or zero value: case {what}"
        );
    }
    // the CLI names the error, /metrics counts it
    let out = common::cli_ok(&["--socket", d.socket.to_str().unwrap(), "source-list"]);
    assert!(
        out.contains("app.queue") && out.contains("failing") && out.contains("no answer within"),
        "{out}"
    );
    let m = virt_persona::api::client::request(&d.socket, "GET", "/metrics", None).unwrap();
    let m = m.as_str().unwrap();
    assert!(
        m.contains("virt_persona_source_up{signal=\"app.queue\"} 0"),
        "{m}"
    );
    let errors: f64 = m
        .lines()
        .find(|l| {
            l.starts_with("virt_persona_source_polls_total{") && l.contains("result=\"error\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(errors >= n as f64, "{m}");
    // back: the value returns, the recovery is logged; each failure was logged once, not once a poll
    page.set(Answer::ok("app_queue_depth 9\n"));
    wait_some("the value back", &d, 30, || {
        signal(&d, "app.queue", None).filter(|v| *v == 9.0)
    });
    let log = d.log();
    let failed = log.matches("signal source failed").count();
    assert_eq!(failed, n, "one line per change of state:\n{log}");
    assert!(log.contains("signal source answering again"), "{log}");
    // a dead port: refused, named
    drop(page);
    wait_some("connection refused named", &d, 30, || {
        let s = source(&d, "app.queue");
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect"))
            .then_some(())
    });
}

#[test]
fn a_reload_starts_new_sources_stops_removed_ones_and_keeps_them_on_a_bad_file() {
    let dir = dir("reload");
    let page = Page::start(Answer::ok("a 1\nb 2\n"));
    let src = |signal: &str, metric: &str| {
        format!(
            "[[signals.source]]\nsignal = \"{signal}\"\nurl = \"{}\"\nmetric = \"{metric}\"\ninterval = \"1s\"\n",
            page.url("/m")
        )
    };
    let d = start(&dir, TEST_URI, &src("sig.a", "a"));
    wait_some("sig.a", &d, 60, || signal(&d, "sig.a", None));
    std::fs::write(dir.join("daemon.toml"), src("sig.b", "b")).unwrap();
    d.signal("HUP");
    wait_some("sig.b", &d, 60, || {
        signal(&d, "sig.b", None).filter(|v| *v == 2.0)
    });
    let names: Vec<String> = d
        .get("/v1/sources")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["signal"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["sig.b"]);
    // a wrong source in the new file: not reloaded, the ones in force keep polling
    std::fs::write(
        dir.join("daemon.toml"),
        format!("{}rate = \"1m\"\nquery = \"up\"\n", src("sig.c", "c")),
    )
    .unwrap();
    d.signal("HUP");
    wait_some("the refusal logged", &d, 30, || {
        d.log().contains("config file not reloaded").then_some(())
    });
    assert!(
        d.log()
            .contains("signals.source[1] (sig.c): metric and query: give one"),
        "{}",
        d.log()
    );
    let polls = source(&d, "sig.b")["polls"].as_u64().unwrap();
    wait_some("sig.b still polled", &d, 30, || {
        (source(&d, "sig.b")["polls"].as_u64().unwrap() > polls + 1).then_some(())
    });
}

#[test]
fn a_wrong_source_stops_the_start_with_where_and_why() {
    let dir = dir("refused");
    let file = dir.join("daemon.toml");
    for (text, want) in [
        ("[[signals.source]]\nsignal = \"s\"\nurl = \"http://127.0.0.1:1/m\"\nmetric = \"m\"\nrate = \"1s\"\n", "signals.source[1] (s): rate: the window (1s) must span at least two polls"),
        ("[[signals.source]]\nsignal = \"s\"\nurl = \"http://user:pw@127.0.0.1:1/m\"\nmetric = \"m\"\n", "use bearer_token_file"),
        ("[[signals.source]]\nsignal = \"s\"\nurl = \"http://127.0.0.1:1/m\"\nmetrc = \"m\"\n", "unknown field `metrc`"),
    ] {
        std::fs::write(&file, text).unwrap();
        let err = common::daemon_refused(&dir, TEST_URI, &["--config".as_ref(), file.as_os_str()]);
        assert!(err.contains(want), "{text}: {err}");
    }
}
