//! The systemd notify protocol, driven against a NOTIFY_SOCKET datagram socket
//! the test owns (no systemd runs here), and the unit file checked by
//! `systemd-analyze verify`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Daemon;

fn host_uri() -> String {
    common::test_host_uri()
}

fn setup(name: &str) -> PathBuf {
    common::test_dir("systemd", name)
}

/// A socket playing systemd: every message with the time it arrived.
struct Manager {
    sock: UnixDatagram,
    path: PathBuf,
    started: Instant,
    got: Vec<(Duration, String)>,
}

impl Manager {
    fn new(dir: &std::path::Path) -> Manager {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Manager {
            sock,
            path,
            started: Instant::now(),
            got: vec![],
        }
    }
    /// Reads messages until `done` says so or `secs` pass.
    fn until(&mut self, secs: u64, mut done: impl FnMut(&[(Duration, String)]) -> bool) {
        let t = Instant::now();
        let mut buf = [0u8; 4096];
        while !done(&self.got) {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "timed out; got {:?}",
                self.got
            );
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.got.push((
                    self.started.elapsed(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
    }
    fn has(got: &[(Duration, String)], what: &str) -> bool {
        got.iter().any(|(_, m)| m.lines().any(|l| l == what))
    }
}

/// READY=1 with a status once the personas are loaded and a tick went
/// through; RELOADING=1 then READY=1 around a SIGHUP; STOPPING=1 on SIGTERM.
#[test]
fn ready_status_reload_and_stop_are_announced() {
    let dir = setup("notify");
    std::fs::write(
        dir.join("personas/p.toml"),
        "id = \"p\"\n[match]\nnames = [\"web-*\"]\n[tuning]\nmemory_soft_limit = \"600 MiB\"\n",
    )
    .unwrap();
    let mut m = Manager::new(&dir);
    let mut d = Daemon::start_args(
        &dir,
        &host_uri(),
        &["--interval", "1s"],
        &[("NOTIFY_SOCKET", m.path.display().to_string())],
    );
    m.until(60, |g| Manager::has(g, "READY=1"));
    let ready = m
        .got
        .iter()
        .find(|(_, msg)| msg.lines().any(|l| l == "READY=1"))
        .unwrap()
        .1
        .clone();
    assert!(
        ready.contains("STATUS=") && ready.contains("running domain(s)"),
        "{ready}"
    );
    assert!(d.ticks() >= 1, "ready after a tick went through");
    // the status follows what the daemon does: web-1 and web-2 wear "p"
    m.until(60, |g| {
        g.iter()
            .any(|(_, msg)| msg.contains("2 wearing a persona, 1 persona(s) in force"))
    });

    let n = m.got.len();
    d.signal("HUP");
    m.until(60, |g| {
        Manager::has(&g[n..], "RELOADING=1") && Manager::has(&g[n..], "READY=1")
    });
    let after: Vec<&String> = m.got[n..].iter().map(|(_, s)| s).collect();
    let reloading = after
        .iter()
        .position(|s| s.contains("RELOADING=1"))
        .unwrap();
    let ready = after
        .iter()
        .rposition(|s| s.lines().any(|l| l == "READY=1"))
        .unwrap();
    assert!(reloading < ready, "{after:?}");
    assert!(after[reloading].contains("MONOTONIC_USEC="), "{after:?}");

    d.signal("TERM");
    m.until(60, |g| Manager::has(g, "STOPPING=1"));
    d.wait_exit(20);
}

/// WATCHDOG=1 every half of WATCHDOG_USEC, from the control loop itself: a
/// loop held in a call (a fail point that blocks the tick, as a libvirt call
/// that never returns would) stops the pings, so systemd restarts the
/// service. READY=1 comes only after the first tick, which is held 1.5 s.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints (scripts/test.sh builds with it)"
)]
fn watchdog_pings_come_from_the_loop_and_stop_while_it_is_stuck() {
    let dir = setup("watchdog");
    let mut m = Manager::new(&dir);
    let spawned = m.started.elapsed();
    let _d = Daemon::start_args(
        &dir,
        &host_uri(),
        &["--interval", "1s"],
        &[
            ("NOTIFY_SOCKET", m.path.display().to_string()),
            ("WATCHDOG_USEC", "2000000".into()),
            // the first tick takes 1.5 s, four go through, then every tick hangs 7 s
            (
                "FAILPOINTS",
                "before-tick=1*sleep(1500)->4*off->sleep(7000)".into(),
            ),
        ],
    );
    m.until(90, |g| Manager::has(g, "READY=1"));
    let ready_at = m
        .got
        .iter()
        .find(|(_, s)| s.lines().any(|l| l == "READY=1"))
        .unwrap()
        .0;
    assert!(
        ready_at >= spawned + Duration::from_millis(1400),
        "READY only after the first tick: {ready_at:?}"
    );
    // collect until a long silence has been seen (or give up after 60 s)
    let pings = |g: &[(Duration, String)]| -> Vec<Duration> {
        g.iter()
            .filter(|(_, s)| s.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(t, _)| *t)
            .collect()
    };
    let mut longest = Duration::ZERO;
    m.until(60, |g| {
        let p = pings(g);
        longest = p.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        longest >= Duration::from_secs(5)
    });
    let p = pings(&m.got);
    let gaps: Vec<f64> = p.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    // while the loop runs: about one ping a second (half of 2 s)
    let first_gaps: Vec<f64> = gaps.iter().copied().take_while(|g| *g < 3.0).collect();
    assert!(first_gaps.len() >= 2, "pings while running: {gaps:?}");
    let mut sorted = first_gaps.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    assert!(
        (0.6..=1.6).contains(&median),
        "a ping every half of WATCHDOG_USEC: {gaps:?}"
    );
    assert!(
        longest >= Duration::from_secs(5),
        "no ping while stuck: {gaps:?}"
    );
}

/// A transition of many knobs on a slow host (here every knob change takes
/// 1.5 s, by a fail point) keeps WATCHDOG=1 coming as each change
/// completes: without that the loop, busy in one tick for longer than
/// WatchdogSec, was killed half-way by systemd (seen on the Debian 12 VM
/// under TCG with every knob of the table).
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints (scripts/test.sh builds with it)"
)]
fn a_long_transition_keeps_the_watchdog_fed_as_each_knob_completes() {
    let dir = setup("slow-transition");
    std::fs::write(
        dir.join("personas/slow.toml"),
        "id = \"slow\"\n[match]\nnames = [\"web-2\"]\n[[activation.when]]\nsignal = \"t.slow\"\nabove = 0\n[tuning]\nvcpu_pin = { \"*\" = \"1\" }\nmemory_soft_limit = \"1 GiB\"\nmemory_hard_limit = \"2 GiB\"\nblkio_weight = 700\n",
    )
    .unwrap();
    let mut m = Manager::new(&dir);
    let d = Daemon::start_args(
        &dir,
        &host_uri(),
        &["--interval", "1s"],
        &[
            ("NOTIFY_SOCKET", m.path.display().to_string()),
            // pings every 3 s; systemd would kill after 6 s without one.
            // Six changes of 1.5 s each hold the tick for 9 s: past the
            // limit, while a ping after a change is at most 3 + 1.5 s apart
            ("WATCHDOG_USEC", "6000000".into()),
            ("FAILPOINTS", "after-knob-change=sleep(1500)".into()),
        ],
    );
    m.until(90, |g| Manager::has(g, "READY=1"));
    let from = m.started.elapsed();
    common::cli_ok(&[
        "--socket",
        d.socket.to_str().unwrap(),
        "signal-set",
        "t.slow",
        "1",
    ]);
    // asked from another thread: the API answers once the tick is over,
    // while the datagrams must be read (and timed) as they come
    let worn = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (sock, worn) = (d.socket.clone(), worn.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(90) {
                let v = virt_persona::api::client::request(&sock, "GET", "/v1/domains/web-2", None);
                if v.is_ok_and(|v| v["persona"] == "slow") {
                    worn.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    m.until(120, |_| worn.load(std::sync::atomic::Ordering::SeqCst));
    let to = m.started.elapsed();
    poller.join().unwrap();
    let h = d.get("/v1/domains/web-2/history");
    let changes = h
        .as_array()
        .and_then(|a| a.iter().find(|e| e["to"] == "slow" && e["result"] == "ok"))
        .and_then(|e| e["changes"].as_array().map(Vec::len))
        .unwrap_or_else(|| panic!("no transition to slow: {h}"));
    // the loop was held for longer than the watchdog's limit
    let limit = Duration::from_secs(6);
    assert!(changes >= 5, "{h}");
    assert!(to - from > limit, "{:?}", to - from);
    let pings: Vec<Duration> = std::iter::once(from)
        .chain(
            m.got
                .iter()
                .filter(|(t, s)| *t > from && *t < to && s.lines().any(|l| l == "WATCHDOG=1"))
                .map(|(t, _)| *t),
        )
        .chain(std::iter::once(to))
        .collect();
    let longest = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest < limit,
        "a gap of {longest:?} without a ping during a {:?} transition of {changes} changes: {pings:?}",
        to - from
    );
}

/// The unit as shipped, with ExecStart pointed at this build.
fn unit_for_this_build(dir: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/virt-personad.service"),
    )
    .unwrap();
    assert!(text.contains("ExecStart=/usr/sbin/virt-personad\n"));
    let unit = dir.join("virt-personad.service");
    std::fs::write(
        &unit,
        text.replace(
            "ExecStart=/usr/sbin/virt-personad",
            &format!("ExecStart={}", env!("CARGO_BIN_EXE_virt-personad")),
        ),
    )
    .unwrap();
    unit
}

/// `systemd-analyze verify` finds nothing to say about the unit (systemd is
/// installed by scripts/setup-host.sh; it need not run).
#[test]
fn the_unit_file_verifies_without_a_warning() {
    let dir = setup("verify");
    let unit = unit_for_this_build(&dir);
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .current_dir(&dir)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/setup-host.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let about_it: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("virt-personad"))
        .collect();
    assert!(about_it.is_empty(), "{text}");
}

/// `systemd-analyze security` rates the unit's exposure at most 4.0 ("OK").
#[test]
fn the_unit_is_hardened() {
    let dir = setup("security");
    let unit = unit_for_this_build(&dir);
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .current_dir(&dir)
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("virt-personad.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 4.0, "exposure {score}:\n{text}");
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "ProtectSystem=strict",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
    ] {
        assert!(
            std::fs::read_to_string(&unit).unwrap().contains(needed),
            "{needed}"
        );
    }
}

/// Under journald each line starts with the syslog priority and carries no
/// timestamp of its own; `--log-format json` writes one JSON object per line;
/// the config's `log_level` applies unless the environment names a level.
#[test]
fn log_lines_suit_the_journal_json_shippers_and_the_configured_level() {
    let wait_log = |d: &Daemon, what: &str| {
        let t = Instant::now();
        while !d.log().contains(what) {
            assert!(t.elapsed() < Duration::from_secs(60), "{what}: {}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let dir = setup("journal");
    let d = Daemon::start_args(
        &dir,
        &host_uri(),
        &["--interval", "1s"],
        &[("JOURNAL_STREAM", "8:12345".into())],
    );
    wait_log(&d, "ready");
    let log = d.log();
    for line in log.lines() {
        assert!(
            line.starts_with("<6>") || line.starts_with("<4>") || line.starts_with("<3>"),
            "{line}"
        );
        assert!(!line.contains("Z "), "no timestamp of its own: {line}");
    }
    assert!(log.contains("<6>virt-personad started"), "{log}");
    drop(d);

    let dir = setup("json");
    let d = Daemon::start_args(
        &dir,
        &host_uri(),
        &["--interval", "1s", "--log-format", "json"],
        &[],
    );
    wait_log(&d, "ready");
    for line in d.log().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    drop(d);

    let dir = setup("level");
    let conf = dir.join("d.toml");
    std::fs::write(&conf, "log_level = \"warn\"\ndry_run = true\n").unwrap();
    let d = Daemon::start_args(
        &dir,
        &host_uri(),
        &["--interval", "1s", "--config", conf.to_str().unwrap()],
        &[("VIRT_PERSONA_LOG", String::new())],
    );
    wait_log(&d, "dry run");
    d.wait_until_ticks(2);
    let log = d.log();
    assert!(!log.contains("INFO"), "warnings only: {log}");
    assert!(log.contains("WARN"), "{log}");
}
