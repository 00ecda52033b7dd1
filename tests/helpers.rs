//! The control loop cannot be taken down by its helpers: a forecast worker
//! that panics is noticed, said in the log and in `/healthz`, and started
//! again after a backoff, while the loop keeps controlling domains and does
//! not spin on the closed channel (before, the disconnected receiver was
//! always ready in the loop's `select!`: 100 % of a core). A fail point
//! panics the worker, so these need `--features failpoints`.

mod common;

use std::time::Instant;

use common::{wait_some as wait_for, Daemon};
use virt_persona::api::client;

const SIG: &str = "id = \"sig\"\n[match]\nnames = [\"web-1\"]\n[[activation.when]]\nsignal = \"go\"\nabove = 0\n[tuning]\nblkio_weight = 800\n";

fn helper(d: &Daemon, name: &str) -> serde_json::Value {
    let h = d.get("/healthz");
    h["helpers"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no helper {name} in {h}"))
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "panics the worker through a fail point: needs --features failpoints"
)]
fn a_forecast_worker_that_panics_is_restarted_and_the_loop_goes_on_without_spinning() {
    let dir = common::test_dir("helpers", "worker");
    std::fs::write(dir.join("personas/sig.toml"), SIG).unwrap();
    // the worker panics at once, then its fail point is spent; the worker is
    // held down for 1 s (the first backoff) before it is started again
    let d = Daemon::start_args(
        &dir,
        &common::test_host_uri(),
        &["--interval", "1s"],
        &[(
            "FAILPOINTS",
            "forecast-worker-panic=1*panic(boom in a fit)".to_string(),
        )],
    );
    d.wait_until_ticks(1);
    let st = wait_for("the panic seen", &d, 60, || {
        let h = helper(&d, "forecast");
        h["last_failure"].is_string().then_some(h)
    });
    assert!(
        st["last_failure"]
            .as_str()
            .unwrap()
            .contains("panicked: boom in a fit"),
        "{st}"
    );
    // while it is down, or once it is back: the loop is not spinning. Five
    // of its ticks may use at most half of the wall time they take (a
    // spinning loop uses all of it; a busy machine only lowers the figure)
    let (cpu0, wall0, t0) = (d.cpu_time(), Instant::now(), d.ticks());
    d.wait_until_ticks(t0 + 5);
    let (cpu, wall) = (d.cpu_time() - cpu0, wall0.elapsed());
    assert!(
        cpu.as_secs_f64() < 0.5 * wall.as_secs_f64(),
        "the daemon used {cpu:?} of CPU in {wall:?}\n{}",
        d.log()
    );
    // started again, and said so
    let st = wait_for("the worker started again", &d, 60, || {
        let h = helper(&d, "forecast");
        (h["state"] == "running" && h["restarts"] == 1).then_some(h)
    });
    assert_eq!(d.get("/healthz")["status"], "ok", "{st}");
    let (_, m) = common::http(&d.socket, "GET /metrics HTTP/1.1\r\n\r\n");
    for line in [
        "virt_persona_helper_up{helper=\"forecast\"} 1",
        "virt_persona_helper_restarts{helper=\"forecast\"} 1",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
    }
    let log = d.log();
    assert!(
        log.contains("the forecast worker stopped")
            && log.contains("forecast worker started again"),
        "{log}"
    );
    // the new worker takes an import
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let csv = format!("timestamp,domain,metric,value\n{},web-1,cpu,5\n", now - 120);
    let r = client::request_with_type(
        &d.socket,
        "POST",
        "/v1/history/import",
        csv.as_bytes(),
        "text/csv",
    )
    .expect("an import to the restarted worker");
    assert_eq!(r["imported"], 1, "{r}");
    // and the loop still controls domains
    client::request(&d.socket, "PUT", "/v1/signals/go", Some(br#"{"value": 1}"#))
        .expect("a signal set");
    wait_for("web-1 wears sig", &d, 60, || {
        (d.persona("web-1").as_deref() == Some("sig")).then_some(())
    });
}
