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
    common::test_dir("sources", name)
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
    // one line per change of state, not one a poll (each state lasted
    // several polls); a busy machine may add a "loop busy" state or two
    assert!(
        (n..=n + 2).contains(&failed),
        "one line per change of state, {failed} for {n}:\n{log}"
    );
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

/// A token file (mode 0600) for the daemon's TCP API and the tools that call it.
fn token_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("api.token");
    std::fs::write(&p, "a-test-token-of-32-characters-00\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn start_tcp(dir: &Path, config: &str) -> (Daemon, String) {
    let file = dir.join("daemon.toml");
    std::fs::write(&file, config).unwrap();
    let api = format!("127.0.0.1:{}", common::services::free_port());
    let token = token_file(dir);
    let d = Daemon::start_args(
        dir,
        TEST_URI,
        &[
            "--interval",
            "1s",
            "--config",
            file.to_str().unwrap(),
            "--api-listen",
            &api,
            "--api-token-file",
            token.to_str().unwrap(),
        ],
        &[],
    );
    (d, api)
}

#[test]
fn metrics_pass_promtool_a_real_prometheus_scrapes_them_and_answers_a_query_source() {
    let dir = dir("prometheus");
    let backend = Page::start(Answer::ok("ok"));
    let hap = Haproxy::start(&dir.join("haproxy"), &[("test", &backend.addr)]);
    let prom_port = common::services::free_port();
    let (d, api) = start_tcp(
        &dir,
        &format!(
            r#"[[signals.source]]
signal = "prom.web.rps"
url = "http://127.0.0.1:{prom_port}"
query = 'sum(rate(haproxy_frontend_http_requests_total{{proxy="web"}}[5s]))'
interval = "1s"
"#
        ),
    );
    // the classic text format, clean for promtool
    let text = virt_persona::api::client::request(&d.socket, "GET", "/metrics", None).unwrap();
    let text = text.as_str().unwrap().to_string();
    assert!(
        !text.contains("# EOF") && text.contains("# TYPE virt_persona_transitions_total counter"),
        "{text}"
    );
    let file = dir.join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (scripts/setup-host.sh installs prometheus)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
    // OpenMetrics when asked for, served as what it is
    let (status, head_and_body) = common::hostile::tcp(
        &api,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-test-token-of-32-characters-00\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        head_and_body.trim_end().ends_with("# EOF"),
        "{head_and_body}"
    );

    // the real Prometheus scrapes the daemon (bearer token from a file) and HAProxy
    let token = dir.join("api.token");
    let auth = format!(
        "    authorization:\n      type: Bearer\n      credentials_file: '{}'\n",
        token.display()
    );
    let prom_dir = dir.join("prom");
    std::fs::create_dir_all(&prom_dir).unwrap();
    // the port the source was given
    let prom = common::services::Prometheus::start_on(
        &prom_dir,
        prom_port,
        &[
            ("virt-persona", &auth, std::slice::from_ref(&api)),
            ("haproxy", "", std::slice::from_ref(&hap.metrics)),
        ],
    );
    wait_some("up == 1 for the daemon's job", &d, 90, || {
        prom.query("up{job=\"virt-persona\"}")
            .first()
            .filter(|r| r["value"][1] == "1")
            .map(|_| ())
    });
    wait_some("a virt_persona_ series in Prometheus", &d, 60, || {
        (!prom.query("virt_persona_tick_seconds_count").is_empty()).then_some(())
    });
    // the query source: HAProxy's request rate as Prometheus computes it
    let mut load = LoadLoop::start(&hap.web, 20, Duration::from_secs(120));
    let v = wait_some("the query source's value", &d, 90, || {
        signal(&d, "prom.web.rps", None).filter(|v| *v > 5.0)
    });
    assert!(v < 60.0, "about 20 requests/s: {v}");
    let s = source(&d, "prom.web.rps");
    assert_eq!(
        (s["kind"].as_str(), s["up"].as_bool()),
        (Some("query"), Some(true)),
        "{s}"
    );
    load.stop();
}

#[test]
fn alertmanager_sends_a_real_webhook_that_sets_and_then_ends_a_signal() {
    let dir = dir("alertmanager");
    std::fs::write(
        dir.join("personas/alerted.toml"),
        signal_persona("alerted", "test", "alert.highrequestrate", 100.0, 1500),
    )
    .unwrap();
    let (d, api) = start_tcp(&dir, "");
    let am = common::services::Alertmanager::start(
        &dir.join("am"),
        &format!("http://{api}/v1/alerts/alertmanager?ttl=10m"),
        &dir.join("api.token"),
    );
    let now = jiff::Timestamp::now();
    let alert = |ends: jiff::Timestamp| {
        serde_json::json!([{
            "labels": {"alertname": "HighRequestRate", "domain": "test"},
            "annotations": {"value": "250"},
            "startsAt": now.to_string(),
            "endsAt": ends.to_string(),
        }])
    };
    am.post(&alert(now + jiff::SignedDuration::from_mins(10)));
    let v = wait_some("the alert's signal", &d, 60, || {
        signal(&d, "alert.highrequestrate", Some("test"))
    });
    assert_eq!(v, 250.0);
    // Alertmanager sends no endsAt for a firing alert: the TTL is the webhook's ?ttl=
    let expires: jiff::Timestamp = d
        .get("/v1/signals")
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "alert.highrequestrate")
        .unwrap()["expires"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let off = expires
        .duration_since(now + jiff::SignedDuration::from_mins(10))
        .as_secs()
        .abs();
    assert!(off <= 30, "expires {expires}, {off} s from now + 10m");
    wait_some("the persona on the alert", &d, 60, || {
        (d.persona("test").as_deref() == Some("alerted")).then_some(())
    });
    // resolved: Alertmanager sends it, the signal ends, the persona comes off
    am.post(&alert(
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1),
    ));
    wait_some("the signal ended", &d, 60, || {
        signal(&d, "alert.highrequestrate", Some("test"))
            .is_none()
            .then_some(())
    });
    wait_some("the persona off", &d, 60, || {
        d.persona("test").is_none().then_some(())
    });
    assert!(
        am.proc.log().lines().all(|l| !l.contains("level=error")),
        "{}",
        am.proc.log()
    );
}

/// Point 5's whole path on a real guest: HAProxy's per-server request rate
/// (the server is named after the guest) puts a persona on a real KVM/TCG
/// domain while the load runs, and the baseline comes back exactly after.
#[test]
fn haproxy_load_puts_a_persona_on_a_real_guest_and_the_baseline_comes_back() {
    use virt_persona::hypervisor::{Hypervisor, ReadScope};
    let g = common::Guest::boot("sources", 1);
    let dir = dir("real");
    let backend = Page::start(Answer::ok("ok"));
    let hap = Haproxy::start(&dir.join("haproxy"), &[(&g.name, &backend.addr)]);
    std::fs::write(
        dir.join("personas/rush.toml"),
        signal_persona("rush", &g.name, "lb.server.rps", 10.0, 3000),
    )
    .unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let d = start(
        &dir,
        common::REAL_URI,
        &format!(
            r#"[[signals.source]]
signal = "lb.server.rps"
url = "{}"
metric = "haproxy_server_http_responses_total"
labels = {{ proxy = "app", code = "2xx" }}
rate = "2s"
interval = "1s"
domain_label = "server"
"#,
            hap.metrics_url()
        ),
    );
    wait_some("a first rate for the guest", &d, 60, || {
        signal(&d, "lb.server.rps", Some(&g.name))
    });
    assert_eq!(d.persona(&g.name), None, "no load: nothing applied");
    assert_eq!(hv.tuning(&g.name, ReadScope::Current).unwrap(), before);

    let mut load = LoadLoop::start(&hap.web, 40, Duration::from_secs(120));
    let on = wait_some("the persona on the real guest", &d, 60, || {
        (d.persona(&g.name).as_deref() == Some("rush")).then(|| load.started.elapsed())
    });
    eprintln!("first request -> persona applied on a real guest in {on:?} (1 s source interval, 1 s daemon interval)");
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap().cpu_shares,
        Some(3000)
    );

    load.stop();
    wait_some("the persona off when the load stops", &d, 60, || {
        d.persona(&g.name).is_none().then_some(())
    });
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap(),
        before,
        "exactly the original values"
    );
}

/// A remote endpoint over TLS with a bearer token from a file: another
/// daemon's own TCP API (its `/metrics`), trusted through `ca_file`. A token
/// file others can read is refused by name, and the poll says so.
#[test]
fn a_tls_endpoint_with_a_bearer_token_file_is_read_and_a_loose_token_file_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir("tls");
    let far = dir.join("far");
    std::fs::create_dir_all(far.join("personas")).unwrap();
    let (cert, key, _) = common::certificate(&far);
    let token = token_file(&far);
    let port = common::services::free_port();
    let _remote = Daemon::start_args(
        &far,
        TEST_URI,
        &[
            "--interval",
            "1s",
            "--api-listen",
            &format!("127.0.0.1:{port}"),
            "--api-token-file",
            token.to_str().unwrap(),
            "--api-tls-cert",
            cert.to_str().unwrap(),
            "--api-tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let d = start(
        &dir,
        TEST_URI,
        &format!(
            r#"[[signals.source]]
signal = "far.personas"
url = "https://localhost:{port}/metrics"
metric = "virt_persona_personas"
interval = "1s"
bearer_token_file = "{}"
ca_file = "{}"
"#,
            token.display(),
            cert.display()
        ),
    );
    let v = wait_some("the remote daemon's gauge over TLS", &d, 60, || {
        signal(&d, "far.personas", None)
    });
    assert_eq!(v, 0.0);
    // the token file loosened: refused, named, the value lives out its TTL
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_some("the loose token file named", &d, 30, || {
        let s = source(&d, "far.personas");
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("credentials") && e.contains("api.token"))
            .then_some(())
    });
}
