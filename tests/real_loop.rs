//! The whole control loop against a real libvirtd with the load-control guest:
//! the daemon binary runs as a subprocess; load is switched over COM1; what the
//! daemon did is read back through libvirt. Personas match only the test's own
//! guest, so parallel tests never touch each other's domains.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Daemon, Guest, Load};
use virt_persona::hypervisor::{ApplyScope, Hypervisor, HypervisorError, ReadScope};
use virt_persona::model::tuning::{Change, Knob, Tuning};

fn test_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("loop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("personas")).unwrap();
    d
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    t0.elapsed()
}

/// A persona that persists, worn on `guest` while `signal` is above 0, with
/// `tuning` (the body of `[tuning]`, tables after it).
fn signal_persona(id: &str, guest: &str, signal: &str, tuning: &str) -> String {
    format!(
        "id = \"{id}\"\npersist = true\n[match]\nnames = [\"{guest}\"]\n[activation]\n[[activation.when]]\nsignal = \"{signal}\"\nabove = 0\n[tuning]\n{tuning}"
    )
}

/// Sets a domain-scoped signal for an hour through the daemon's API.
fn put_signal(d: &Daemon, signal: &str, domain: &str, v: f64) {
    virt_persona::api::client::request(
        &d.socket,
        "PUT",
        &format!("/v1/signals/{signal}"),
        Some(
            serde_json::json!({"value": v, "ttl": "1h", "domain": domain})
                .to_string()
                .as_bytes(),
        ),
    )
    .unwrap();
}

fn busy_persona(guest: &str, id: &str, priority: i64, shares: u64) -> String {
    format!(
        r#"id = "{id}"
priority = {priority}
[match]
names = ["{guest}"]
[activation]
cooldown = "2s"
[[activation.when]]
metric = "cpu_demand"
above = 50
[tuning]
cpu_shares = {shares}
memory_soft_limit = "200 MiB"
memory_hard_limit = "300 MiB"
"#
    )
}

#[test]
fn load_switches_a_real_guest_on_and_off_and_the_higher_priority_wins() {
    let mut g = Guest::boot("loop", 1);
    let dir = test_dir("onoff");
    std::fs::write(
        dir.join("personas/busy.toml"),
        busy_persona(&g.name, "busy", 100, 3000),
    )
    .unwrap();
    std::fs::write(
        dir.join("personas/busy-low.toml"),
        busy_persona(&g.name, "busy-low", 10, 500),
    )
    .unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let d = Daemon::start(&dir);

    // three ticks with the guest idle
    d.wait_until_ticks(d.ticks() + 3);
    assert_eq!(d.persona(&g.name), None, "idle: nothing applied");
    assert_eq!(hv.tuning(&g.name, ReadScope::Current).unwrap(), before);

    g.set_load(Load::Spin);
    let on = wait_for("the persona to be worn", 60, || {
        d.persona(&g.name).as_deref() == Some("busy")
    });
    let t = hv.tuning(&g.name, ReadScope::Current).unwrap();
    assert_eq!(
        t.cpu_shares,
        Some(3000),
        "the higher priority persona's values"
    );
    assert_eq!(
        (t.memory_soft_limit, t.memory_hard_limit),
        (Some(200 << 10), Some(300 << 10))
    );
    eprintln!("load on -> persona worn in {on:?}");

    g.set_load(Load::Idle);
    let off = wait_for("the baseline", 60, || d.persona(&g.name).is_none());
    eprintln!("load off -> baseline restored in {off:?}");
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap(),
        before,
        "exactly the original values"
    );
    let hist = d.get(&format!("/v1/domains/{}/history", g.name));
    let results: Vec<(String, String)> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["to"].as_str().unwrap_or("-").to_string(),
                e["result"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        results,
        vec![
            ("busy".to_string(), "ok".to_string()),
            ("-".to_string(), "ok".to_string())
        ],
        "{hist}\n{}",
        d.log()
    );
}

#[test]
fn kill_9_while_worn_then_restart_restores_the_baseline_exactly_once() {
    let mut g = Guest::boot("kill9", 1);
    let dir = test_dir("kill9");
    std::fs::write(
        dir.join("personas/busy.toml"),
        busy_persona(&g.name, "busy", 1, 2500),
    )
    .unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let mut d = Daemon::start(&dir);
    g.set_load(Load::Spin);
    wait_for("the persona", 60, || {
        d.persona(&g.name).as_deref() == Some("busy")
    });
    d.kill9();
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap().cpu_shares,
        Some(2500),
        "still tuned after kill -9"
    );

    // restart while still busy: adopts, does not re-apply
    let d2 = Daemon::start(&dir);
    wait_for("adoption", 60, || {
        d2.persona(&g.name).as_deref() == Some("busy")
    });
    g.set_load(Load::Idle);
    wait_for("the baseline", 60, || d2.persona(&g.name).is_none());
    assert_eq!(hv.tuning(&g.name, ReadScope::Current).unwrap(), before);
    let hist = d2.get(&format!("/v1/domains/{}/history", g.name));
    let restores = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["to"].is_null() && e["result"] == "ok")
        .count();
    assert_eq!(restores, 1, "restored exactly once: {hist}");
    let applies = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["to"] == "busy")
        .count();
    assert_eq!(
        applies, 1,
        "the restarted daemon did not apply again: {hist}"
    );
}

/// `kill -9` between two knob changes of a transition (a fail point holds
/// the daemon there; needs `--features failpoints`, which scripts/test.sh
/// sets): the next daemon finishes the transition to exactly the persona,
/// later restores exactly the baseline, once — live and, as the persona
/// persists, in the definition too.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints (scripts/test.sh builds with it)"
)]
fn kill_9_between_two_knob_changes_ends_exactly_at_the_persona_then_the_baseline() {
    let mut g = Guest::boot("kill9mid", 1);
    let dir = test_dir("kill9mid");
    std::fs::write(
        dir.join("personas/busy.toml"),
        format!("persist = true\n{}", busy_persona(&g.name, "busy", 1, 2500)),
    )
    .unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let before_xml = g.definition_xml();
    let worn = |t: &Tuning| {
        (t.cpu_shares, t.memory_soft_limit, t.memory_hard_limit)
            == (Some(2500), Some(200 << 10), Some(300 << 10))
    };
    // the first knob change goes through, then the loop stops for good
    let mut d = Daemon::start_with(
        &dir,
        common::REAL_URI,
        "5s",
        &[(
            "FAILPOINTS",
            "after-knob-change=1*off->sleep(600000)".into(),
        )],
    );
    g.set_load(Load::Spin);
    let mut mid = Tuning::default();
    wait_for("the first knob change", 90, || {
        mid = hv.tuning(&g.name, ReadScope::Current).unwrap();
        mid != before
    });
    assert!(!worn(&mid), "stopped half-way, not at the persona: {mid:?}");
    d.kill9();
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap(),
        mid,
        "half-applied after kill -9"
    );

    // still busy: the next daemon finishes the transition
    let d2 = Daemon::start(&dir);
    wait_for("the persona, completed", 90, || {
        worn(&hv.tuning(&g.name, ReadScope::Current).unwrap())
            && d2.persona(&g.name).as_deref() == Some("busy")
    });
    g.set_load(Load::Idle);
    wait_for("the baseline", 90, || d2.persona(&g.name).is_none());
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap(),
        before,
        "exactly the baseline"
    );
    assert_eq!(
        g.definition_xml(),
        before_xml,
        "the definition exactly as it was\n{}",
        d2.log()
    );
    // restored exactly once per wear: never a restore that does not follow
    // a completed wear (a busy machine may make the idle guest look busy a
    // second time; that wear is restored once too)
    let hist = d2.get(&format!("/v1/domains/{}/history", g.name));
    let ok: Vec<bool> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "ok")
        .map(|e| e["to"].is_null())
        .collect();
    assert!(
        ok.first() == Some(&false) && ok.contains(&true),
        "completed, then restored: {hist}"
    );
    assert!(
        ok.windows(2).all(|w| w[0] != w[1]),
        "restored exactly once per wear: {hist}"
    );
}

#[test]
fn a_failing_knob_mid_transition_leaves_the_domain_exactly_as_before() {
    let mut g = Guest::boot("rollback", 1);
    let dir = test_dir("rollback");
    // blkio comes after the scheduler and memory in the plan: those are undone
    std::fs::write(
        dir.join("personas/bad.toml"),
        format!(
            "{}\n[[tuning.blkio_device]]\npath = \"/dev/vp-no-such-device\"\nread_iops = 100\n",
            busy_persona(&g.name, "bad", 1, 2222)
        ),
    )
    .unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let d = Daemon::start(&dir);
    g.set_load(Load::Spin);
    let sock = d.socket.clone();
    let name = g.name.clone();
    wait_for("a failed transition", 60, || {
        virt_persona::api::client::request(
            &sock,
            "GET",
            &format!("/v1/domains/{name}/history"),
            None,
        )
        .map(|h| {
            h.as_array()
                .is_some_and(|a| a.iter().any(|e| e["result"] == "failed"))
        })
        .unwrap_or(false)
    });
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap(),
        before,
        "nothing half-applied"
    );
    assert_eq!(d.persona(&g.name), None);
    let v = d.get(&format!("/v1/domains/{}", g.name));
    let err = v["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("blkio_device[/dev/vp-no-such-device]"),
        "knob named: {err}"
    );
}

/// Schedules, with the clock injected: the reconciler on a real libvirtd,
/// driven at chosen instants.
#[test]
fn a_schedule_persona_follows_an_injected_clock_on_a_real_guest() {
    use virt_persona::model::validate::parse_persona;
    use virt_persona::reconciler::Reconciler;
    use virt_persona::store::MemoryStore;
    let g = Guest::boot("sched", 1);
    let p = parse_persona(
        &format!(
            "id = \"office\"\n[match]\nnames = [\"{}\"]\n[activation]\ntimezone = \"UTC\"\nschedule = [ {{ days = \"mon-fri\", from = \"08:00\", to = \"18:00\" }} ]\n[tuning]\ncpu_shares = 1800\n",
            g.name
        ),
        Path::new("office.toml"),
    )
    .unwrap();
    let hv = Arc::new(common::real());
    let before: Tuning = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let mut r = Reconciler::new(hv.clone(), MemoryStore::default(), Duration::from_secs(30));
    r.set_personas(vec![Arc::new(p)]);
    let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_millisecond();
    let worn = |r: &Reconciler<_, _>| {
        r.statuses()
            .into_iter()
            .find(|s| s.name == g.name)
            .and_then(|s| s.persona)
    };
    r.tick(at("2026-11-30T07:59:00Z"), None).unwrap(); // Monday before office hours
    assert_eq!(worn(&r), None);
    r.tick(at("2026-11-30T08:00:30Z"), None).unwrap();
    assert_eq!(worn(&r).as_deref(), Some("office"));
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap().cpu_shares,
        Some(1800)
    );
    r.tick(at("2026-12-05T10:00:00Z"), None).unwrap(); // Saturday
    assert_eq!(worn(&r), None);
    assert_eq!(hv.tuning(&g.name, ReadScope::Current).unwrap(), before);
}

fn always_persona(glob: &str, shares: u64) -> String {
    format!("id = \"always\"\n[match]\nnames = [\"{glob}\"]\n[tuning]\ncpu_shares = {shares}\n")
}

fn terminate(d: &mut Daemon) {
    d.signal("TERM");
    let status = d.wait_exit(20);
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status:?}\n{}",
        d.log()
    );
}

#[test]
fn a_domain_that_starts_gets_its_persona_from_the_event_stream() {
    let dir = test_dir("lifecycle");
    let glob = format!("vpt-lifecycle-{}-*", std::process::id());
    std::fs::write(
        dir.join("personas/always.toml"),
        always_persona(&glob, 1717),
    )
    .unwrap();
    // a one-minute interval: only the start event can explain a persona within seconds
    let d = Daemon::start_args(&dir, common::REAL_URI, &["--interval", "60s"], &[]);
    // the first tick (at start) is done: the domain list is known
    d.wait_until_ticks(1);
    let g = Guest::boot("lifecycle", 1);
    let took = wait_for("the persona at start", 40, || {
        d.persona(&g.name).as_deref() == Some("always")
    });
    eprintln!("persona worn {took:?} after the guest answered");
    assert_eq!(
        common::real()
            .tuning(&g.name, ReadScope::Current)
            .unwrap()
            .cpu_shares,
        Some(1717)
    );
}

#[test]
fn sigterm_keeps_personas_and_revert_on_exit_restores_them() {
    let g = Guest::boot("sigterm", 1);
    let dir = test_dir("sigterm");
    std::fs::write(
        dir.join("personas/always.toml"),
        always_persona(&g.name, 1313),
    )
    .unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let mut d = Daemon::start(&dir);
    wait_for("the persona", 60, || {
        d.persona(&g.name).as_deref() == Some("always")
    });
    terminate(&mut d);
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap().cpu_shares,
        Some(1313),
        "SIGTERM does not revert"
    );
    assert!(!d.socket.exists(), "the socket is removed on exit");

    let mut d2 = Daemon::start_args(
        &dir,
        common::REAL_URI,
        &["--interval", "1s", "--revert-on-exit"],
        &[],
    );
    wait_for("adoption", 60, || {
        d2.persona(&g.name).as_deref() == Some("always")
    });
    terminate(&mut d2);
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap(),
        before,
        "--revert-on-exit restores the baseline"
    );
}

#[test]
fn drift_behind_the_daemons_back_is_repaired_at_the_verify_interval() {
    let g = Guest::boot("drift", 1);
    let dir = test_dir("drift");
    std::fs::write(
        dir.join("personas/always.toml"),
        always_persona(&g.name, 1414),
    )
    .unwrap();
    let d = Daemon::start(&dir); // verify interval 5 s
    wait_for("the persona", 60, || {
        d.persona(&g.name).as_deref() == Some("always")
    });
    let hv = common::real();
    let change = virt_persona::model::tuning::Change {
        knob: virt_persona::model::tuning::Knob::CpuShares,
        value: virt_persona::model::tuning::KnobValue::Unsigned(100),
    };
    hv.apply(&g.name, &change, virt_persona::hypervisor::ApplyScope::Live)
        .unwrap();
    let took = wait_for("the drift repair", 60, || {
        hv.tuning(&g.name, ReadScope::Current).unwrap().cpu_shares == Some(1414)
    });
    // found by the 5 s verify, not the 30 s default: at most the interval plus
    // one 1 s tick, plus wide slack for a busy host (ticks run late when the
    // daemon itself waits for a CPU); the exact timing is checked on the fake
    // in tests/reconciler.rs
    assert!(
        took < Duration::from_secs(25),
        "found within the 5 s verify interval (+1 tick): {took:?}"
    );
    let h = d.get(&format!("/v1/domains/{}/history", g.name));
    let drift = h
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["result"] == "drift")
        .expect("a drift event");
    assert_eq!(drift["changes"][0]["knob"], "cpu_shares");
}

/// SIGHUP re-reads the personas and the new values reach a real guest. The
/// persona file is a symlink to a file outside the watched directory (as when
/// an admin links in files from a config repository), so only SIGHUP can tell
/// the daemon that its content changed. Links are read only when the admin
/// opts in (`--personas-follow-links`): the daemon is root.
#[test]
fn sighup_reloads_the_personas_and_the_new_values_are_applied() {
    let g = Guest::boot("sighup", 1);
    let dir = test_dir("sighup");
    std::fs::create_dir_all(dir.join("outside")).unwrap();
    let target = dir.join("outside/always.toml");
    std::fs::write(&target, always_persona(&g.name, 1111)).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("personas/always.toml")).unwrap();
    let d = Daemon::start_args(
        &dir,
        common::REAL_URI,
        &["--interval", "1s", "--personas-follow-links"],
        &[],
    );
    let hv = common::real();
    let shares = || hv.tuning(&g.name, ReadScope::Current).unwrap().cpu_shares;
    wait_for("the first version", 60, || shares() == Some(1111));
    // rewritten in place: the watched directory does not change
    std::fs::write(&target, always_persona(&g.name, 2222)).unwrap();
    d.signal("HUP");
    wait_for("the new values on the guest", 60, || shares() == Some(2222));
    assert!(d.log().contains("trigger=\"SIGHUP\""), "{}", d.log());
}

#[test]
fn tagging_a_running_domain_gives_it_the_persona_at_once() {
    let g = Guest::boot("tagged", 1);
    let dir = test_dir("tagged");
    let tag = format!("t{}", std::process::id());
    std::fs::write(
        dir.join("personas/tagged.toml"),
        format!("id = \"tagged\"\n[match]\ntags = [\"{tag}\"]\n[tuning]\ncpu_shares = 1515\n"),
    )
    .unwrap();
    // a one-minute interval: only the metadata-change event can explain a quick switch
    let d = Daemon::start_args(&dir, common::REAL_URI, &["--interval", "60s"], &[]);
    // the first tick (at start) is done: the domain list is known
    d.wait_until_ticks(1);
    assert_eq!(d.persona(&g.name), None);
    common::cli_ok(&["-c", common::REAL_URI, "tag-add", &g.name, &tag]);
    wait_for("the tagged persona", 40, || {
        d.persona(&g.name).as_deref() == Some("tagged")
    });
    assert_eq!(
        common::real()
            .tuning(&g.name, ReadScope::Current)
            .unwrap()
            .cpu_shares,
        Some(1515)
    );
}

/// What this sees that a usage-only controller cannot: a spinning guest whose
/// host is kept busy by a high-weight neighbour runs well under its vCPU, so a
/// `cpu > 60` persona would let go; `cpu_demand` (run + wait) stays near 100
/// and the persona stays on, without flapping, through 20 s of contention.
#[test]
fn a_cpu_demand_persona_stays_on_while_the_host_starves_the_guest() {
    let mut g = Guest::boot_alone("contended", 1);
    let dir = test_dir("contended");
    let persona = |id: &str, priority: i64, metric: &str| {
        format!(
            "id = \"{id}\"\npriority = {priority}\n[match]\nnames = [\"{}\"]\n[activation]\ncooldown = \"2s\"\n[[activation.when]]\nmetric = \"{metric}\"\nabove = 60\n[tuning]\ncpu_shares = 2048\n",
            g.name
        )
    };
    std::fs::write(
        dir.join("personas/boost.toml"),
        persona("boost", 100, "cpu_demand"),
    )
    .unwrap();
    // the same persona on usage alone, lower in priority: explain shows its value
    std::fs::write(dir.join("personas/usage.toml"), persona("usage", 1, "cpu")).unwrap();
    let d = Daemon::start(&dir);
    g.set_load(Load::Spin);
    wait_for("the boost", 60, || {
        d.persona(&g.name).as_deref() == Some("boost")
    });
    let explain = || {
        let v = d.get(&format!("/v1/domains/{}/explain", g.name));
        let value = |id: &str| {
            v["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["persona"] == id)
                .and_then(|c| c["conditions"][0]["value"].as_f64())
        };
        (value("usage"), value("boost"))
    };
    {
        let _hog = common::Contention::start(2, 4096);
        let t0 = Instant::now();
        let mut seen = Vec::new();
        while t0.elapsed() < Duration::from_secs(20) {
            assert_eq!(
                d.persona(&g.name).as_deref(),
                Some("boost"),
                "the boost holds through contention ({:.1} s in; cpu, cpu_demand so far: {seen:?})\n{}",
                t0.elapsed().as_secs_f64(),
                d.log()
            );
            if let (Some(cpu), Some(demand)) = explain() {
                seen.push((cpu.round(), demand.round()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        // the last few seconds: the scheduler has settled on the new weights.
        // Medians: on a machine busy beyond the hog (the VM tier runs beside
        // these tests) one tick can find the vCPU blocked outright, neither
        // running nor waiting (both near 0), which a mean would carry
        let tail = &seen[seen.len().saturating_sub(20)..];
        assert!(!tail.is_empty(), "no explain values read under contention");
        let median = |f: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = tail.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (cpu, demand) = (median(|x| x.0), median(|x| x.1));
        eprintln!("under contention: cpu {cpu:.0} %, cpu_demand {demand:.0} %");
        assert!(
            cpu < 70.0,
            "usage reads the starved guest as quiet-ish: {seen:?}"
        );
        assert!(demand > 85.0, "demand reads it as busy: {seen:?}");
    }
    let hist = d.get(&format!("/v1/domains/{}/history", g.name));
    let transitions: Vec<String> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "ok")
        .map(|e| e["to"].as_str().unwrap_or("-").to_string())
        .collect();
    assert_eq!(transitions, ["boost"], "no flapping: {hist}");
}

/// Live interface bandwidth on a kernel without `sfq`: the host cannot apply
/// it at all. A persona that merely asks for it is worn with the rest applied
/// and the bandwidth named as skipped; one that `required` it stays off,
/// refused, and the next persona wins. (Where the kernel has `sfq`, the strict
/// persona is worn with its bandwidth.)
#[test]
fn what_the_host_cannot_apply_is_skipped_or_refuses_a_persona_that_requires_it() {
    let g = Guest::boot("unsupported", 1);
    let dir = test_dir("unsupported");
    let persona = |id: &str, priority: i64, shares: u64, required: &str| {
        format!(
            "id = \"{id}\"\npriority = {priority}\n[match]\nnames = [\"{}\"]\n[tuning]\ncpu_shares = {shares}\n{required}\n[[tuning.interface]]\ntarget = \"*\"\ninbound = {{ average = \"1 MiB/s\" }}\n",
            g.name
        )
    };
    std::fs::write(
        dir.join("personas/strict.toml"),
        persona("strict", 100, 1717, "required = [\"interface\"]"),
    )
    .unwrap();
    std::fs::write(
        dir.join("personas/lenient.toml"),
        persona("lenient", 10, 1616, ""),
    )
    .unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let d = Daemon::start(&dir);
    if common::kernel_has_sfq() {
        wait_for("the strict persona", 60, || {
            d.persona(&g.name).as_deref() == Some("strict")
        });
        return;
    }
    wait_for("the lenient persona", 60, || {
        d.persona(&g.name).as_deref() == Some("lenient")
    });
    let t = hv.tuning(&g.name, ReadScope::Current).unwrap();
    assert_eq!(t.cpu_shares, Some(1616), "the rest is applied");
    assert_eq!(
        t.interfaces, before.interfaces,
        "no bandwidth left half-set"
    );
    let st = d.get(&format!("/v1/domains/{}", g.name));
    let skipped = st["skipped"].as_array().cloned().unwrap_or_default();
    assert_eq!(skipped.len(), 1, "{st}");
    assert!(
        skipped[0]["knob"]
            .as_str()
            .unwrap_or("")
            .starts_with("interface[vnet"),
        "{st}"
    );
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("queueing discipline"),
        "{st}"
    );
    assert!(
        st["refused"]["strict"]
            .as_str()
            .unwrap_or("")
            .contains("interface"),
        "strict is refused, with the reason: {st}"
    );
    let listed = common::cli_ok(&["--socket", d.socket.to_str().unwrap(), "persona-list"]);
    assert!(
        listed.contains("Degraded on this host:") && listed.contains("strict on vpt-unsupported"),
        "{listed}"
    );
    // the strict persona failed once, then was refused: no retry loop
    let failed = d
        .get(&format!("/v1/domains/{}/history", g.name))
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "failed")
        .count();
    assert!(failed <= 1, "the strict persona was tried once at most");
}

/// The throttle a nightly-backup persona puts on a device the domain had no
/// throttle for is removed when the persona lets go: "absent" is restored as
/// absent, read back through libvirt and the cgroup file. The persona
/// persists: the definition it wrote (`<shares>` and a throttle the
/// definition never had) is given back exactly as it was.
#[test]
fn a_device_throttle_that_did_not_exist_is_gone_after_the_revert() {
    let g = Guest::boot("blkabsent", 1);
    let dir = test_dir("blkabsent");
    let (dev, majmin) = common::host_block_device();
    let signal = format!("vp.test.backup{}", std::process::id());
    std::fs::write(
        dir.join("personas/backup.toml"),
        signal_persona(
            "backup",
            &g.name,
            &signal,
            &format!("cpu_shares = 3000\nblkio_weight = 777\n[[tuning.blkio_device]]\npath = \"{dev}\"\nread_iops = 2000\n"),
        ),
    )
    .unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let before_xml = g.definition_xml();
    assert!(!before_xml.contains("<shares>"), "{before_xml}");
    assert!(
        !before.blkio_devices.contains_key(&dev),
        "no throttle on {dev} to begin with: {before:?}"
    );
    let d = Daemon::start(&dir);
    let set = |v: f64| put_signal(&d, &signal, &g.name, v);
    set(1.0);
    wait_for("the backup persona", 60, || {
        d.persona(&g.name).as_deref() == Some("backup")
    });
    let on = hv.tuning(&g.name, ReadScope::Current).unwrap();
    assert_eq!(on.blkio_devices[&dev].read_iops, Some(2000));
    let on_xml = g.definition_xml();
    assert!(on_xml.contains("<shares>3000</shares>"), "{on_xml}");
    assert!(on_xml.contains("<read_iops_sec>2000"), "{on_xml}");
    let cg = g.cgroup_dir("blkio");
    if let Some(cg) = &cg {
        let f = common::read_trim(&cg.join("blkio.throttle.read_iops_device"));
        assert!(f.contains(&format!("{majmin} 2000")), "{f}");
    }
    set(0.0);
    wait_for("the baseline", 60, || d.persona(&g.name).is_none());
    let after = hv.tuning(&g.name, ReadScope::Current).unwrap();
    assert_eq!(after, before, "exactly as before, the throttle removed");
    // the definition's restore follows the live one in the same tick
    assert_eq!(
        g.definition_xml(),
        before_xml,
        "the definition exactly as before: no <shares>, no throttle\n{}",
        d.log()
    );
    if let Some(cg) = &cg {
        let f = common::read_trim(&cg.join("blkio.throttle.read_iops_device"));
        assert!(!f.contains(&majmin), "cgroup throttle gone: {f}");
    }
}

/// The caps on QEMU's own threads (emulator, iothreads, the whole domain) are
/// knobs of the table like any other: a persisting persona writes them live
/// (the cgroup files say so) and into the definition, and letting go gives
/// back exactly what was there, live and in the definition (elements the
/// definition did not have are removed again).
#[test]
fn emulator_iothread_and_global_caps_apply_and_revert_exactly() {
    let g = Guest::boot("caps", 1);
    let dir = test_dir("caps");
    let signal = format!("vp.test.caps{}", std::process::id());
    std::fs::write(
        dir.join("personas/capped.toml"),
        signal_persona("capped", &g.name, &signal, "emulator_period = \"50ms\"\nemulator_quota = \"10ms\"\niothread_period = \"20ms\"\niothread_quota = \"5ms\"\nglobal_period = \"100ms\"\nglobal_quota = \"80ms\"\nrequired = [\"emulator_quota\", \"global_quota\"]\n"),
    )
    .unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let before_xml = g.definition_xml();
    assert!(
        before.emulator_quota.is_some() && before.global_quota.is_some(),
        "QEMU reports the thread caps: {before:?}"
    );
    assert!(!before_xml.contains("<emulator_quota>"), "{before_xml}");
    let d = Daemon::start(&dir);
    let set = |v: f64| put_signal(&d, &signal, &g.name, v);
    set(1.0);
    wait_for("the capped persona", 60, || {
        d.persona(&g.name).as_deref() == Some("capped")
    });
    let on = hv.tuning(&g.name, ReadScope::Current).unwrap();
    assert_eq!(
        (
            on.emulator_period,
            on.emulator_quota,
            on.global_period,
            on.global_quota
        ),
        (Some(50_000), Some(10_000), Some(100_000), Some(80_000)),
        "{}",
        d.log()
    );
    let on_xml = g.definition_xml();
    for e in [
        "<emulator_period>50000</emulator_period>",
        "<emulator_quota>10000</emulator_quota>",
        "<global_quota>80000</global_quota>",
    ] {
        assert!(on_xml.contains(e), "{e} in the definition: {on_xml}");
    }
    // the kernel's own files: the emulator thread's cgroup and the domain's
    if let Some(cg) = g.cgroup_dir("cpu") {
        let emu = common::read_trim(&cg.join("emulator/cpu.cfs_quota_us"));
        assert_eq!(emu, "10000", "emulator quota in the cgroup");
        let whole = common::read_trim(&cg.join("cpu.cfs_quota_us"));
        assert_eq!(whole, "80000", "global quota in the cgroup");
    }
    let st = d.get(&format!("/v1/domains/{}", g.name));
    let skipped: Vec<String> = st["skipped"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["knob"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    // the guest has no <iothreads>: nothing to cap, named as skipped, not written
    assert_eq!((on.iothread_period, on.iothread_quota), (None, None));
    for k in ["iothread_period", "iothread_quota"] {
        assert!(skipped.iter().any(|s| s == k), "{k} named: {skipped:?}");
    }
    assert!(!on_xml.contains("<iothread_quota>"), "{on_xml}");
    set(0.0);
    wait_for("the baseline", 60, || d.persona(&g.name).is_none());
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap(),
        before,
        "exactly as before, live"
    );
    assert_eq!(
        g.definition_xml(),
        before_xml,
        "the definition exactly as before\n{}",
        d.log()
    );
}

/// A guest with an iothread: a persisting persona pins it away from the
/// vCPUs (`iothread_pin`) and caps it (`iothread_quota`, which a guest
/// without iothreads skips), live and in the definition; letting go gives
/// back exactly what was there, the `<iothreadpin>` it did not have removed.
#[test]
fn an_iothread_is_pinned_and_capped_then_given_back_exactly() {
    let g = Guest::boot_extra("iothread", 1, "  <iothreads>1</iothreads>");
    let dir = test_dir("iothread");
    let signal = format!("vp.test.iothread{}", std::process::id());
    std::fs::write(
        dir.join("personas/io.toml"),
        signal_persona("io", &g.name, &signal, "iothread_pin = { \"*\" = \"1\" }\niothread_period = \"20ms\"\niothread_quota = \"5ms\"\nrequired = [\"iothread_pin\"]\n"),
    )
    .unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let before_xml = g.definition_xml();
    assert_eq!(
        before.iothread_pin.keys().copied().collect::<Vec<_>>(),
        [1],
        "the iothread is read: {before:?}"
    );
    assert!(before.iothread_quota.is_some(), "{before:?}");
    assert!(!before_xml.contains("<iothreadpin"), "{before_xml}");
    let d = Daemon::start(&dir);
    put_signal(&d, &signal, &g.name, 1.0);
    wait_for("the io persona", 60, || {
        d.persona(&g.name).as_deref() == Some("io")
    });
    let on = hv.tuning(&g.name, ReadScope::Current).unwrap();
    assert_eq!(
        on.iothread_pin.get(&1).map(|c| c.to_string()).as_deref(),
        Some("1"),
        "{on:?}\n{}",
        d.log()
    );
    assert_eq!(
        (on.iothread_period, on.iothread_quota),
        (Some(20_000), Some(5_000))
    );
    let on_xml = g.definition_xml();
    assert!(
        on_xml.contains("<iothreadpin iothread='1' cpuset='1'/>"),
        "{on_xml}"
    );
    assert!(
        on_xml.contains("<iothread_quota>5000</iothread_quota>"),
        "{on_xml}"
    );
    put_signal(&d, &signal, &g.name, 0.0);
    wait_for("the baseline", 60, || d.persona(&g.name).is_none());
    assert_eq!(hv.tuning(&g.name, ReadScope::Current).unwrap(), before);
    // libvirt writes the iothreads' ids (`<iothreadids>`, here the default
    // id 1 of `<iothreads>1</iothreads>`) into a definition once one is
    // pinned there, and keeps them: the same iothreads, named. Everything
    // else is back as it was, the `<iothreadpin>` and the caps removed.
    let ids = "  <iothreadids>\n    <iothread id='1'/>\n  </iothreadids>\n";
    assert_eq!(
        g.definition_xml().replace(ids, ""),
        before_xml.replace(ids, ""),
        "{}",
        d.log()
    );
}

/// QEMU's own disk throttle (Nova's disk QoS) on a real guest: a persisting
/// persona writes the disk's whole set live (QEMU's block layer has it) and
/// into the definition's `<iotune>`, with a throttle group; letting go gives
/// back the disk's previous state exactly, live and in the definition.
#[test]
fn a_disk_throttle_applies_live_and_persisted_and_reverts_exactly() {
    let g = Guest::boot("iotune", 1);
    let dir = test_dir("iotune");
    let signal = format!("vp.test.iotune{}", std::process::id());
    std::fs::write(
        dir.join("personas/noisy.toml"),
        signal_persona("noisy", &g.name, &signal, "required = [\"disk\"]\n[[tuning.disk]]\ntarget = \"*\"\ntotal_iops_sec = 400\ntotal_iops_sec_max = 800\ntotal_iops_sec_max_length = \"20s\"\nread_bytes_sec = \"8 MiB/s\"\ngroup = \"vp-noisy\"\n"),
    )
    .unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let before_xml = g.definition_xml();
    assert!(before.disks.is_empty(), "{before:?}");
    assert!(!before_xml.contains("<iotune>"), "{before_xml}");
    let d = Daemon::start(&dir);
    put_signal(&d, &signal, &g.name, 1.0);
    let t0 = Instant::now();
    while d.persona(&g.name).as_deref() != Some("noisy") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for the noisy persona\n{}\n{}",
            d.get(&format!("/v1/domains/{}", g.name)),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let on = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let disk = on
        .disks
        .get("hda")
        .unwrap_or_else(|| panic!("{on:?}\n{}", d.log()));
    use virt_persona::model::knobs::DiskField;
    assert_eq!(
        (
            disk.limits.get(&DiskField::TotalIopsSec),
            disk.limits.get(&DiskField::TotalIopsSecMax),
            disk.limits.get(&DiskField::TotalIopsSecMaxLength),
            disk.limits.get(&DiskField::ReadBytesSec),
            disk.group.as_deref(),
        ),
        (
            Some(&400),
            Some(&800),
            Some(&20),
            Some(&(8 << 20)),
            Some("vp-noisy")
        )
    );
    let on_xml = g.definition_xml();
    assert!(
        on_xml.contains("<total_iops_sec>400</total_iops_sec>"),
        "{on_xml}"
    );
    assert!(
        on_xml.contains("<group_name>vp-noisy</group_name>"),
        "{on_xml}"
    );
    put_signal(&d, &signal, &g.name, 0.0);
    wait_for("the baseline", 60, || d.persona(&g.name).is_none());
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap(),
        before,
        "exactly as before, live: no throttle, no group\n{}",
        d.log()
    );
    assert_eq!(
        g.definition_xml(),
        before_xml,
        "the definition exactly as before: no <iotune>\n{}",
        d.log()
    );
}

/// `numa_nodeset` on a real guest, through the adapter (this host has one
/// NUMA node, so no persona can move a domain's memory here: the daemon's
/// path is the table's, as for every row). A domain without a nodeset reads
/// as every host node (what a revert puts back live); written with the
/// definition, the nodeset appears there and restoring "not set" removes it
/// again exactly; where the domain's mode is interleave, a live change is
/// refused as unsupported with the reason, before libvirt is asked.
#[test]
fn numa_nodeset_is_read_written_restored_and_refused_where_the_mode_forbids() {
    use virt_persona::model::tuning::{DefinitionOriginal, KnobValue};
    let strict = Guest::boot("numa", 1);
    let interleaved = Guest::boot_extra(
        "numai",
        1,
        "  <numatune><memory mode='interleave' nodeset='0'/></numatune>",
    );
    let hv = common::real();
    let before = hv.tuning(&strict.name, ReadScope::Current).unwrap();
    let before_xml = strict.definition_xml();
    assert!(!before_xml.contains("<numatune>"), "{before_xml}");
    let all = before
        .numa_nodeset
        .clone()
        .expect("every host node when none is set");
    assert!(all.contains(0), "{all}");
    let change = Change {
        knob: Knob::NumaNodeset,
        value: KnobValue::CpuSet(all.clone()),
    };
    hv.apply(&strict.name, &change, ApplyScope::LiveAndConfig)
        .unwrap();
    let xml = strict.definition_xml();
    assert!(xml.contains(&format!("nodeset='{all}'")), "{xml}");
    assert_eq!(
        hv.tuning(&strict.name, ReadScope::Current)
            .unwrap()
            .numa_nodeset,
        Some(all.clone())
    );
    hv.restore_definition(
        &strict.name,
        &[DefinitionOriginal {
            knob: Knob::NumaNodeset,
            value: None,
        }],
    )
    .unwrap();
    assert_eq!(strict.definition_xml(), before_xml, "no <numatune> again");
    assert_eq!(hv.tuning(&strict.name, ReadScope::Current).unwrap(), before);

    let before_i = interleaved.definition_xml();
    match hv.apply(&interleaved.name, &change, ApplyScope::Live) {
        Err(HypervisorError::Unsupported { knob, message, .. }) => {
            assert_eq!(knob, "numa_nodeset");
            assert!(message.contains("interleave"), "{message}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert_eq!(interleaved.definition_xml(), before_i);
}

/// Observe mode on a real guest: with `dry_run = true` in the config file the
/// daemon records what it would do and the guest stays exactly as it was
/// (live and definition); `dry_run = false` and a reload (SIGHUP) make it act
/// without a restart.
#[test]
fn dry_run_changes_nothing_on_a_real_guest_until_a_reload_turns_it_off() {
    let mut g = Guest::boot("dryrun", 1);
    let dir = test_dir("dryrun");
    std::fs::write(
        dir.join("personas/busy.toml"),
        format!("persist = true\n{}", busy_persona(&g.name, "busy", 1, 2500)),
    )
    .unwrap();
    let conf = dir.join("virt-personad.toml");
    std::fs::write(&conf, "dry_run = true\n").unwrap();
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let before_xml = g.definition_xml();
    let d = Daemon::start_args(
        &dir,
        common::REAL_URI,
        &[
            "--interval",
            "1s",
            "--verify-interval",
            "5s",
            "--config",
            conf.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(d.get("/healthz")["dry_run"], true, "healthy, and says so");
    g.set_load(Load::Spin);
    let path = format!("/v1/domains/{}/history", g.name);
    wait_for("a would_apply event", 90, || {
        d.get(&path).as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["result"] == "would_apply" && e["to"] == "busy")
        })
    });
    // the status says what it would wear (waited for: on a loaded host one
    // sample of the spinning guest can fall under the threshold and the
    // persona's 2 s cooldown end between the event and this read)
    let status = format!("/v1/domains/{}", g.name);
    wait_for("the status of a persona it would wear", 90, || {
        let st = d.get(&status);
        (st["persona"].as_str(), st["would"].as_bool()) == (Some("busy"), Some(true))
    });
    // a few more ticks, still busy: nothing was or is written
    let t = d.ticks();
    d.wait_until_ticks(t + 3);
    assert_eq!(hv.tuning(&g.name, ReadScope::Current).unwrap(), before);
    assert_eq!(g.definition_xml(), before_xml);
    assert!(
        !d.get(&path)
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["result"] == "ok" || e["result"] == "drift"),
        "nothing applied"
    );

    // acting: the config says so and the daemon reloads
    std::fs::write(&conf, "dry_run = false\n").unwrap();
    d.signal("HUP");
    wait_for("the persona applied", 60, || {
        hv.tuning(&g.name, ReadScope::Current).unwrap().cpu_shares == Some(2500)
    });
    assert_eq!(d.get("/healthz")["dry_run"], false);
    g.set_load(Load::Idle);
    wait_for("the baseline", 90, || d.persona(&g.name).is_none());
    assert_eq!(hv.tuning(&g.name, ReadScope::Current).unwrap(), before);
    assert_eq!(g.definition_xml(), before_xml);
}
