//! The control loop's logic on the recording fake hypervisor (pure logic; the
//! same loop runs against a real libvirtd in tests/real_loop.rs).

use std::sync::Arc;
use std::time::Duration;

use virt_persona::hypervisor::fake::{Call, FakeHypervisor};
use virt_persona::hypervisor::{DomainStats, Hypervisor, ReadScope};
use virt_persona::model::persona::Persona;
use virt_persona::model::tuning::{Change, DefinitionOriginal, Knob, KnobValue, Tuning};
use virt_persona::model::validate::parse_persona;
use virt_persona::reconciler::Reconciler;
use virt_persona::store::{MemoryStore, StateStore};

const HOT: &str = r#"
id = "hot"
priority = 10
[activation]
cooldown = "3s"
[[activation.when]]
metric = "cpu"
above = 50
[tuning]
cpu_shares = 4096
memory_soft_limit = "1 GiB"
memory_hard_limit = "2 GiB"
[thresholds]
cpu = 90
"#;

fn persona(text: &str) -> Arc<Persona> {
    Arc::new(parse_persona(text, std::path::Path::new("t.toml")).unwrap())
}

/// HOT's activation (cpu above 50, 3 s cooldown) with other tuning.
fn hot_with(tuning: &str) -> Arc<Persona> {
    let (head, _) = HOT.split_once("[tuning]").expect("HOT has [tuning]");
    persona(&format!("{head}{tuning}"))
}

fn original() -> Tuning {
    Tuning {
        cpu_shares: Some(1024),
        memory_hard_limit: Some(virt_persona::model::tuning::MEMORY_UNLIMITED_KIB),
        memory_soft_limit: Some(virt_persona::model::tuning::MEMORY_UNLIMITED_KIB),
        ..Default::default()
    }
}

struct Rig {
    hv: Arc<FakeHypervisor>,
    r: Reconciler<FakeHypervisor, MemoryStore>,
    cpu_ns: u64,
    now: i64,
    uuid: String,
}

impl Rig {
    fn new(store: MemoryStore) -> Rig {
        Rig::with(store, FakeHypervisor::simple_domain("web-1", 1), original())
    }
    /// A rig on a domain of its own (named web-1) with its own original tuning.
    fn with(
        store: MemoryStore,
        info: virt_persona::hypervisor::DomainInfo,
        original: Tuning,
    ) -> Rig {
        let hv = Arc::new(FakeHypervisor::new(4));
        hv.add_domain(info, original);
        let mut r = Reconciler::new(hv.clone(), store, Duration::from_secs(30));
        r.set_personas(vec![persona(HOT)]);
        let uuid = hv.domain("web-1").unwrap().uuid;
        let mut rig = Rig {
            hv,
            r,
            cpu_ns: 0,
            now: 1_000_000,
            uuid,
        };
        rig.second(0.0); // the first sample has no rate yet
        rig
    }
    /// Advances one second with the domain busy at `load` (0..1 of its vCPU).
    fn second(&mut self, load: f64) -> virt_persona::reconciler::TickReport {
        self.now += 1000;
        self.cpu_ns += (load * 1e9) as u64;
        self.hv.set_stats(
            "web-1",
            DomainStats {
                name: "web-1".into(),
                uuid: self.uuid.clone(),
                cpu_time_ns: Some(self.cpu_ns),
                vcpu_current: Some(1),
                ..Default::default()
            },
        );
        self.r.tick(self.now, None).unwrap()
    }
    fn tuning(&self) -> Tuning {
        self.hv.tuning("web-1", ReadScope::Current).unwrap()
    }
    fn worn(&self) -> Option<String> {
        self.r.statuses()[0].persona.clone()
    }
}

#[test]
fn load_switches_the_persona_on_and_the_baseline_back() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.second(0.0);
    rig.second(0.0);
    assert_eq!(rig.worn(), None);
    assert_eq!(rig.tuning(), original());

    let rep = rig.second(1.0);
    assert_eq!(rep.transitions, 1);
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    let t = rig.tuning();
    assert_eq!(
        (t.cpu_shares, t.memory_hard_limit, t.memory_soft_limit),
        (Some(4096), Some(2 << 20), Some(1 << 20))
    );
    let uuid = rig.uuid.clone();
    assert_eq!(
        rig.r.store().baseline(&uuid).unwrap(),
        original(),
        "originals recorded"
    );

    // idle again: cooldown 3 s, then back to exactly the original values
    rig.second(0.0);
    rig.second(0.0);
    assert_eq!(rig.worn().as_deref(), Some("hot"), "cooldown");
    rig.second(0.0);
    rig.second(0.0);
    assert_eq!(rig.worn(), None);
    assert_eq!(rig.tuning(), original());
    assert_eq!(
        rig.r.store().baseline(&uuid).unwrap(),
        Tuning::default(),
        "baseline dropped once restored"
    );
    let ev = rig.r.store().events(Some("web-1"), 0).unwrap();
    let transitions: Vec<(Option<String>, Option<String>, String)> = ev
        .iter()
        .filter(|e| e.result == "ok")
        .map(|e| (e.from.clone(), e.to.clone(), e.reason.clone()))
        .collect();
    assert_eq!(
        transitions,
        vec![
            (None, Some("hot".into()), "criteria".into()),
            (Some("hot".into()), None, "baseline".into())
        ]
    );
}

#[test]
fn a_quiet_tick_makes_exactly_one_hypervisor_call() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.second(0.0);
    rig.second(0.0);
    rig.hv.clear_calls();
    for _ in 0..5 {
        rig.second(0.0);
    }
    assert_eq!(rig.hv.calls(), vec![Call::AllStats; 5]);
    // also while wearing a persona, between verifications
    rig.second(1.0);
    rig.hv.clear_calls();
    for _ in 0..5 {
        rig.second(1.0);
    }
    assert_eq!(rig.hv.calls(), vec![Call::AllStats; 5]);
}

#[test]
fn a_failing_knob_rolls_the_transition_back_and_retries_with_backoff() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.second(0.0);
    rig.hv
        .fail_next("web-1", Knob::MemorySoftLimit, "cannot set soft limit");
    let rep = rig.second(1.0);
    assert_eq!(rep.failures, 1);
    assert_eq!(rig.tuning(), original(), "nothing half-applied");
    assert_eq!(rig.worn(), None);
    let st = &rig.r.statuses()[0];
    assert!(
        st.last_error
            .as_deref()
            .unwrap()
            .contains("memory_soft_limit"),
        "{st:?}"
    );
    let uuid = rig.uuid.clone();
    assert_eq!(
        rig.r.store().baseline(&uuid).unwrap(),
        Tuning::default(),
        "no baseline left behind"
    );
    let failed = rig
        .r
        .store()
        .events(Some("web-1"), 0)
        .unwrap()
        .into_iter()
        .find(|e| e.result == "failed")
        .unwrap();
    assert!(failed.error.unwrap().contains("cannot set soft limit"));
    // backoff: no retry for 5 s, then it succeeds
    rig.hv.clear_calls();
    for _ in 0..4 {
        rig.second(1.0);
    }
    assert!(
        rig.hv.calls().iter().all(|c| *c == Call::AllStats),
        "waits out the backoff"
    );
    for _ in 0..2 {
        rig.second(1.0);
    }
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    assert!(rig.r.statuses()[0].last_error.is_none());
}

#[test]
fn drift_is_found_at_the_verify_interval_and_reapplied() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.second(1.0);
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    // someone changes a knob behind the daemon's back
    rig.hv
        .apply(
            "web-1",
            &Change {
                knob: Knob::CpuShares,
                value: KnobValue::Unsigned(10),
            },
            Default::default(),
        )
        .unwrap();
    let mut drifts = 0;
    for _ in 0..31 {
        drifts += rig.second(1.0).drifts;
    }
    assert_eq!(drifts, 1);
    assert_eq!(rig.tuning().cpu_shares, Some(4096));
    assert!(rig
        .r
        .store()
        .events(Some("web-1"), 0)
        .unwrap()
        .iter()
        .any(|e| e.result == "drift"));
}

#[test]
fn a_restarted_daemon_adopts_the_persona_in_force_and_restores_later() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.second(1.0);
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    let store = rig.r.store().clone();
    // a new daemon on the same store and the same (tuned) domain
    let hv = rig.hv.clone();
    let mut r2 = Reconciler::new(hv.clone(), store, Duration::from_secs(30));
    r2.set_personas(vec![persona(HOT)]);
    let mut rig2 = Rig {
        hv: hv.clone(),
        r: r2,
        cpu_ns: rig.cpu_ns,
        now: rig.now,
        uuid: rig.uuid.clone(),
    };
    hv.clear_calls();
    // longer than the cooldown without a cpu sample (the new daemon has no rate
    // yet, or libvirt left the group out): missing data is not "idle"
    for _ in 0..6 {
        rig2.now += 1000;
        hv.set_stats(
            "web-1",
            DomainStats {
                name: "web-1".into(),
                uuid: rig2.uuid.clone(),
                ..Default::default()
            },
        );
        rig2.r.tick(rig2.now, None).unwrap();
        assert_eq!(rig2.worn().as_deref(), Some("hot"), "kept while no samples");
    }
    rig2.second(1.0);
    rig2.second(1.0);
    assert!(
        !hv.calls().iter().any(|c| matches!(c, Call::Apply(..))),
        "no blind re-apply: {:?}",
        hv.calls()
    );
    assert_eq!(rig2.worn().as_deref(), Some("hot"));
    for _ in 0..5 {
        rig2.second(0.0);
    }
    assert_eq!(rig2.worn(), None);
    assert_eq!(
        rig2.tuning(),
        original(),
        "the original values, recorded by the first daemon"
    );
}

#[test]
fn thresholds_record_one_event_per_crossing() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.second(0.6);
    for _ in 0..3 {
        rig.second(0.95);
    }
    rig.second(0.6);
    rig.second(0.95);
    let ev = rig.r.store().events(Some("web-1"), 0).unwrap();
    let kinds: Vec<&str> = ev
        .iter()
        .map(|e| e.result.as_str())
        .filter(|r| r.starts_with("threshold"))
        .collect();
    assert_eq!(kinds, ["threshold", "threshold_cleared", "threshold"]);
}

#[test]
fn an_undefined_domain_is_forgotten_with_its_baseline() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.second(1.0);
    let uuid = rig.uuid.clone();
    assert_ne!(rig.r.store().baseline(&uuid).unwrap(), Tuning::default());
    rig.hv.remove_domain("web-1");
    rig.r.mark_stale();
    rig.now += 1000;
    rig.r.tick(rig.now, None).unwrap();
    assert!(rig.r.statuses().is_empty());
    assert_eq!(rig.r.store().baseline(&uuid).unwrap(), Tuning::default());
}

#[test]
fn rates_use_the_time_the_stats_were_taken_not_the_start_of_the_tick() {
    use std::sync::atomic::{AtomicI64, Ordering};
    let mut rig = Rig::new(MemoryStore::default());
    let clock = Arc::new(AtomicI64::new(rig.now + 1000));
    let c = clock.clone();
    rig.r
        .set_stats_clock(Box::new(move || c.load(Ordering::SeqCst)));
    rig.second(0.4);
    // the next stats call runs 600 ms late (say, a slow domain-list refresh
    // before it): the guest, steady at 40 %, ran 0.64 s of CPU by then
    clock.store(rig.now + 1600, Ordering::SeqCst);
    rig.now += 1000;
    rig.cpu_ns += 640_000_000;
    rig.hv.set_stats(
        "web-1",
        DomainStats {
            name: "web-1".into(),
            uuid: rig.uuid.clone(),
            cpu_time_ns: Some(rig.cpu_ns),
            vcpu_current: Some(1),
            ..Default::default()
        },
    );
    rig.r.tick(rig.now, None).unwrap();
    let cpu = rig
        .r
        .entry(&rig.uuid)
        .unwrap()
        .last_decision
        .as_ref()
        .unwrap()
        .candidates[0]
        .conditions[0]
        .value
        .unwrap();
    assert!(
        (cpu - 40.0).abs() < 0.5,
        "cpu {cpu:.1} %: expected 40 (0.64 s over 1.6 s), not 64 (over the tick's 1 s)"
    );
    assert_eq!(rig.worn(), None, "no burst of load seen, no persona");
}

fn applies_of(hv: &FakeHypervisor, knob: &Knob) -> usize {
    hv.calls()
        .iter()
        .filter(|c| matches!(c, Call::Apply(_, ch) if ch.knob == *knob))
        .count()
}

/// A knob the host cannot apply at all is skipped (the rest applies and the
/// transition is `ok`), named in the event and the status, tried once per
/// connection rather than every tick, and tried again after `relearn`.
#[test]
fn an_unsupported_knob_is_skipped_remembered_and_learned_again() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.hv
        .unsupported(Knob::CpuShares, "parameter 'cpu_shares' not supported");
    rig.second(1.0);
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    let t = rig.tuning();
    assert_eq!(t.cpu_shares, Some(1024), "not applied");
    assert_eq!(t.memory_hard_limit, Some(2 << 20), "the rest applied");
    let st = &rig.r.statuses()[0];
    assert_eq!(st.skipped.len(), 1);
    assert_eq!(st.skipped[0].knob, "cpu_shares");
    assert!(st.skipped[0].reason.contains("not supported"));
    let ev = rig.r.store().events(Some("web-1"), 0).unwrap();
    let last = ev
        .iter()
        .rev()
        .find(|e| e.to.is_some() && e.result != "threshold")
        .unwrap();
    assert_eq!((last.result.as_str(), last.skipped.len()), ("ok", 1));
    assert!(
        !last.changes.iter().any(|c| c.knob == Knob::CpuShares),
        "the event lists only what was applied: {last:?}"
    );
    assert_eq!(applies_of(&rig.hv, &Knob::CpuShares), 1);

    // busy for a minute, two verify intervals: tried no more, no drift, no failure
    for _ in 0..60 {
        let rep = rig.second(1.0);
        assert_eq!((rep.failures, rep.drifts), (0, 0));
    }
    assert_eq!(applies_of(&rig.hv, &Knob::CpuShares), 1, "remembered");
    assert_eq!(rig.r.statuses()[0].skipped.len(), 1, "still shown");

    // reconnect (or SIGHUP): learned again on the next tick
    rig.r.relearn();
    rig.second(1.0);
    assert_eq!(applies_of(&rig.hv, &Knob::CpuShares), 2, "tried again");

    // idle: back to exactly the original values, nothing left skipped
    for _ in 0..5 {
        rig.second(0.0);
    }
    assert_eq!(rig.worn(), None);
    assert_eq!(rig.tuning(), original());
    assert!(rig.r.statuses()[0].skipped.is_empty());
}

/// A knob whose current value the host does not report (libvirt lists no such
/// parameter for this domain) has no original to go back to: it is skipped
/// and named, never changed, so a revert cannot leave it behind.
#[test]
fn a_knob_without_a_readable_original_is_skipped_not_changed() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.r.set_personas(vec![hot_with(
        "[tuning]\ncpu_shares = 4096\nemulator_quota = \"20ms\"\n",
    )]);
    // original() has no emulator_quota: the fake reads none
    rig.second(1.0);
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    let t = rig.tuning();
    assert_eq!((t.cpu_shares, t.emulator_quota), (Some(4096), None));
    assert_eq!(
        applies_of(&rig.hv, &Knob::EmulatorQuota),
        0,
        "never written"
    );
    let st = &rig.r.statuses()[0];
    assert_eq!(st.skipped.len(), 1, "{:?}", st.skipped);
    assert_eq!(st.skipped[0].knob, "emulator_quota");
    assert!(
        st.skipped[0].reason.contains("reports no current value"),
        "{}",
        st.skipped[0].reason
    );
    for _ in 0..5 {
        rig.second(0.0);
    }
    assert_eq!(rig.worn(), None);
    assert_eq!(rig.tuning(), original(), "exactly back");
}

/// QEMU's per-disk throttles: `"*"` gives every disk the set, a named entry
/// wins for its disk, each disk's whole set is one change, and the revert
/// gives back each disk's previous set exactly: none where there was none, the
/// old limits (and group) where there were some.
#[test]
fn disk_throttles_are_whole_sets_per_disk_and_revert_exactly() {
    use virt_persona::hypervisor::DiskInfo;
    use virt_persona::model::knobs::DiskField;
    use virt_persona::model::tuning::DiskThrottle;
    let mut info = FakeHypervisor::simple_domain("web-1", 1);
    info.disks = ["vda", "vdb", "vdc"]
        .iter()
        .map(|t| DiskInfo {
            target: t.to_string(),
            source: Some(format!("/var/lib/libvirt/images/{t}.img")),
        })
        .collect();
    let mut orig = original();
    let old = DiskThrottle {
        limits: [
            (DiskField::ReadIopsSec, 300),
            (DiskField::WriteIopsSec, 200),
        ]
        .into_iter()
        .collect(),
        group: Some("tenant-a".into()),
    };
    orig.disks.insert("vdb".into(), old.clone());
    let mut rig = Rig::with(MemoryStore::default(), info, orig.clone());
    rig.r.set_personas(vec![hot_with(
        r#"[[tuning.disk]]
target = "*"
total_iops_sec = 1000
total_iops_sec_max = 2000
total_iops_sec_max_length = "30s"
[[tuning.disk]]
target = "vdc"
read_bytes_sec = "100 MiB/s"
"#,
    )]);
    rig.second(1.0);
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    let t = rig.tuning();
    let star = |f: DiskField| t.disks["vda"].limits.get(&f).copied();
    assert_eq!(
        (
            star(DiskField::TotalIopsSec),
            star(DiskField::TotalIopsSecMax),
            star(DiskField::TotalIopsSecMaxLength)
        ),
        (Some(1000), Some(2000), Some(30))
    );
    assert_eq!(
        t.disks["vdb"], t.disks["vda"],
        "the whole set: old limits and group gone"
    );
    assert_eq!(
        t.disks["vdc"].limits,
        [(DiskField::ReadBytesSec, 100 << 20)].into_iter().collect(),
        "the named entry wins"
    );
    for d in ["vda", "vdb", "vdc"] {
        let knob = Knob::Disk { target: d.into() };
        assert_eq!(applies_of(&rig.hv, &knob), 1, "{d}: one change for its set");
    }
    for _ in 0..5 {
        rig.second(0.0);
    }
    assert_eq!(rig.worn(), None);
    let back = rig.tuning();
    assert_eq!(back.disks.get("vdb"), Some(&old), "vdb's old set and group");
    assert_eq!(back, orig, "exactly back: vda and vdc without a throttle");
}

/// `required = [...]`: a persona whose essential knob is unsupported here is not
/// worn (visibly: refused, with the reason); the next persona in priority is.
#[test]
fn a_required_unsupported_knob_keeps_the_persona_off_and_the_next_one_wins() {
    let mut rig = Rig::new(MemoryStore::default());
    let strict = HOT.replace(
        "cpu_shares = 4096",
        "cpu_shares = 4096\nrequired = [\"cpu_shares\"]",
    );
    let fallback = HOT
        .replace("id = \"hot\"", "id = \"warm\"")
        .replace("priority = 10", "priority = 1")
        .replace("cpu_shares = 4096\n", "");
    rig.r
        .set_personas(vec![persona(&strict), persona(&fallback)]);
    rig.hv
        .unsupported(Knob::CpuShares, "parameter 'cpu_shares' not supported");
    rig.second(1.0);
    // the first try fails on the required knob and is rolled back as a whole
    assert_eq!(rig.tuning(), original(), "nothing half-applied");
    let ev = rig.r.store().events(Some("web-1"), 0).unwrap();
    assert_eq!(ev.last().unwrap().result, "failed");
    rig.second(1.0);
    assert_eq!(rig.worn().as_deref(), Some("warm"), "the next persona wins");
    let st = &rig.r.statuses()[0];
    let why = st.refused.get("hot").expect("hot is refused");
    assert!(
        why.contains("cpu_shares") && why.contains("not supported"),
        "{why}"
    );
    let d = rig.r.entry("web-1").unwrap().last_decision.clone().unwrap();
    let hot = d.candidates.iter().find(|c| c.persona.id == "hot").unwrap();
    assert!(!hot.holds && hot.refused.is_some());
    for _ in 0..40 {
        rig.second(1.0);
    }
    assert_eq!(rig.worn().as_deref(), Some("warm"), "no flapping");
    let now = rig.now;
    let err = rig.r.activate("web-1", "hot", None, now).unwrap_err();
    assert!(
        err.to_string().contains("cannot be worn") && err.to_string().contains("cpu_shares"),
        "a manual activation is refused with the reason: {err}"
    );
    assert_eq!(applies_of(&rig.hv, &Knob::CpuShares), 1, "tried once");
}

/// A required `cpu_weight` that this host cannot apply is named as the file
/// wrote it, with the knob it is here.
#[test]
fn a_required_cpu_weight_is_named_as_written_when_refused() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.r
        .set_cgroup(Some(virt_persona::model::knobs::CgroupVersion::V1));
    rig.r.set_personas(vec![hot_with(
        "[tuning]\ncpu_weight = \"2x\"\nrequired = [\"cpu_weight\"]\n",
    )]);
    rig.hv
        .unsupported(Knob::CpuShares, "parameter 'cpu_shares' not supported");
    rig.second(1.0);
    rig.second(1.0);
    assert_eq!(rig.worn(), None);
    assert_eq!(rig.tuning(), original(), "nothing changed");
    let why = rig.r.statuses()[0]
        .refused
        .get("hot")
        .cloned()
        .expect("hot is refused");
    assert!(
        why.contains("required knob cpu_weight (cpu_shares on this host)")
            && why.contains("not supported"),
        "{why}"
    );
}

/// "Absent" is an original value: a device throttle the domain did not have is
/// recorded as absent and removed again on revert, also when a later knob of
/// the same transition fails and it is rolled back.
#[test]
fn a_device_throttle_that_did_not_exist_is_removed_on_revert_and_on_rollback() {
    let mut rig = Rig::new(MemoryStore::default());
    let throttle = HOT.replace(
        "[thresholds]",
        "[[tuning.blkio_device]]\npath = \"/dev/vda\"\nread_iops = 2000\n[[tuning.blkio_device]]\npath = \"/dev/vdb\"\nread_iops = 1000\n[thresholds]",
    );
    rig.r.set_personas(vec![persona(&throttle)]);
    rig.second(1.0);
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    assert_eq!(rig.tuning().blkio_devices["/dev/vda"].read_iops, Some(2000));
    for _ in 0..5 {
        rig.second(0.0);
    }
    assert_eq!(rig.worn(), None);
    assert_eq!(rig.tuning(), original(), "no throttle left behind");
    let uuid = rig.uuid.clone();
    assert_eq!(rig.r.store().baseline(&uuid).unwrap(), Tuning::default());

    // vda's throttle is set, then vdb's fails: the rollback removes vda's too
    let knob = Knob::BlkioDevice {
        path: "/dev/vdb".into(),
        field: virt_persona::model::tuning::BlkioField::ReadIops,
    };
    rig.hv.fail_next("web-1", knob, "injected");
    let rep = rig.second(1.0);
    assert_eq!(rep.failures, 1);
    assert!(
        rig.hv.calls().iter().any(|c| matches!(c, Call::Apply(_, ch) if matches!(ch.knob, Knob::BlkioDevice { .. }) && ch.value == KnobValue::Unsigned(2000))),
        "the throttle was set before the failure"
    );
    assert_eq!(rig.tuning(), original(), "rolled back, throttle removed");
}

/// A rollback that itself fails keeps the original of that knob (never
/// clears it), records an event naming it, marks the domain as needing
/// attention, and a later tick puts the knob back.
#[test]
fn a_failed_rollback_keeps_the_original_and_a_later_tick_restores_it() {
    let mut rig = Rig::new(MemoryStore::default());
    let uuid = rig.uuid.clone();
    // whichever memory limit comes first fails; cpu_shares (applied before it)
    // must be rolled back, and that fails too
    rig.hv.fail_next("web-1", Knob::MemorySoftLimit, "injected");
    rig.hv.fail_next("web-1", Knob::MemoryHardLimit, "injected");
    rig.hv.fail_next_value(
        "web-1",
        Change {
            knob: Knob::CpuShares,
            value: KnobValue::Unsigned(1024),
        },
        "rollback injected",
    );
    let rep = rig.second(1.0);
    assert_eq!(rep.failures, 1);
    assert_eq!(
        rig.tuning().cpu_shares,
        Some(4096),
        "stuck at the new value"
    );
    assert_eq!(
        rig.r.store().baseline(&uuid).unwrap().cpu_shares,
        Some(1024),
        "the original is kept"
    );
    let st = &rig.r.statuses()[0];
    let why = st.needs_attention.clone().expect("needs attention");
    assert!(why.contains("cpu_shares"), "{why}");
    let ev = rig.r.store().events(Some("web-1"), 0).unwrap();
    let rb = ev
        .iter()
        .find(|e| e.result == "rollback_failed")
        .expect("a rollback_failed event");
    assert!(rb.reason.contains("cpu_shares"), "{rb:?}");

    // load gone: the next ticks restore the stuck knob from the kept original
    for _ in 0..3 {
        rig.second(0.0);
    }
    assert_eq!(rig.tuning(), original());
    assert_eq!(rig.r.store().baseline(&uuid).unwrap(), Tuning::default());
    assert_eq!(rig.r.statuses()[0].needs_attention, None);
}

/// --revert-on-exit goes on past a domain that fails, reports every failure
/// and keeps the failing domain's originals for the next start.
#[test]
fn revert_on_exit_goes_on_past_a_failing_domain_and_reports_it() {
    let hv = Arc::new(FakeHypervisor::new(4));
    let mut a = FakeHypervisor::simple_domain("a", 1);
    a.uuid = "00000000-0000-0000-0000-00000000000a".into();
    let mut b = FakeHypervisor::simple_domain("b", 1);
    b.uuid = "00000000-0000-0000-0000-00000000000b".into();
    b.id = Some(2);
    hv.add_domain(a.clone(), original());
    hv.add_domain(b.clone(), original());
    let mut r = Reconciler::new(hv.clone(), MemoryStore::default(), Duration::from_secs(30));
    r.set_personas(vec![persona(
        "id = \"always\"\n[tuning]\ncpu_shares = 3000\n",
    )]);
    r.tick(1_000, None).unwrap();
    assert_eq!(
        hv.tuning("a", ReadScope::Current).unwrap().cpu_shares,
        Some(3000)
    );
    assert_eq!(
        hv.tuning("b", ReadScope::Current).unwrap().cpu_shares,
        Some(3000)
    );
    hv.fail_next("a", Knob::CpuShares, "injected");
    let (restored, failures) = r.revert_all(2_000).unwrap();
    assert_eq!(restored, 1);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].starts_with("a: cpu_shares"), "{failures:?}");
    assert_eq!(
        hv.tuning("b", ReadScope::Current).unwrap(),
        original(),
        "b restored"
    );
    assert_eq!(
        r.store().baseline(&a.uuid).unwrap().cpu_shares,
        Some(1024),
        "a's original kept for the next start"
    );
}

/// A manual activation whose persona no longer fits the domain ends with an
/// event, and the criteria decide again.
#[test]
fn a_manual_activation_that_no_longer_fits_is_ended_with_an_event() {
    let mut rig = Rig::new(MemoryStore::default());
    let calm = persona("id = \"calm\"\n[tuning]\ncpu_shares = 512\n");
    rig.r.set_personas(vec![persona(HOT), calm.clone()]);
    let now = rig.now;
    rig.r.activate("web-1", "hot", None, now).unwrap();
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    // "hot" is removed from the persona set
    rig.r.set_personas(vec![calm]);
    rig.second(0.0);
    assert_eq!(rig.r.statuses()[0].override_, None, "the override ended");
    let uuid = rig.uuid.clone();
    assert_eq!(rig.r.store().override_(&uuid).unwrap(), None, "durably");
    let ev = rig.r.store().events(Some("web-1"), 0).unwrap();
    let ended = ev
        .iter()
        .find(|e| e.result == "override_ended")
        .expect("an override_ended event");
    assert!(
        ended.reason.contains("'hot'") && ended.reason.contains("removed"),
        "{ended:?}"
    );
    assert_eq!(rig.worn().as_deref(), Some("calm"), "the criteria decide");
}

/// `persona-apply X --for D` on a domain that already wears X by its
/// criteria: nothing to change, but the activation is recorded, shown as
/// manual, and its end (at the TTL, or by a revert) is in the history while
/// the criteria keep X on; the stored activation goes with it.
#[test]
fn a_manual_activation_of_the_persona_already_worn_is_recorded_and_ends_at_its_ttl() {
    let mut rig = Rig::new(MemoryStore::default());
    let uuid = rig.uuid.clone();
    rig.second(1.0);
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    let applied = rig.hv.calls().len();
    let now = rig.now;
    rig.r
        .activate("web-1", "hot", Some(now + 5_000), now)
        .unwrap();
    let st = &rig.r.statuses()[0];
    assert_eq!(st.persona.as_deref(), Some("hot"));
    assert_eq!(st.reason, Some(virt_persona::rules::Reason::Manual));
    assert_eq!(
        st.override_.as_ref().and_then(|o| o.until),
        Some(now + 5_000)
    );
    assert!(
        !rig.hv.calls()[applied..]
            .iter()
            .any(|c| matches!(c, Call::Apply(..))),
        "nothing to change: {:?}",
        &rig.hv.calls()[applied..]
    );
    let events = |rig: &Rig| -> Vec<(String, String)> {
        rig.r
            .store()
            .events(Some("web-1"), 0)
            .unwrap()
            .into_iter()
            .map(|e| (e.reason, e.result))
            .collect()
    };
    let ev = events(&rig);
    assert_eq!(
        ev.last(),
        Some(&("manual".to_string(), "ok".to_string())),
        "{ev:?}"
    );
    // still busy: past the TTL the criteria keep it on, and the end is said
    for _ in 0..6 {
        rig.second(1.0);
    }
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    assert_eq!(
        rig.r.statuses()[0].reason,
        Some(virt_persona::rules::Reason::Criteria)
    );
    assert_eq!(
        rig.r.store().override_(&uuid).unwrap(),
        None,
        "durably gone"
    );
    let ev = events(&rig);
    assert_eq!(
        ev.last(),
        Some(&(
            "manual activation expired; its criteria keep 'hot' on".to_string(),
            "override_ended".to_string()
        )),
        "{ev:?}"
    );
    let n = ev.len();
    rig.second(1.0);
    assert_eq!(events(&rig).len(), n, "said once");

    // by hand again, until reverted: the revert is said the same way
    let now = rig.now;
    rig.r.activate("web-1", "hot", None, now).unwrap();
    rig.r.revert("web-1", now).unwrap();
    let ev = events(&rig);
    assert_eq!(
        ev[n..].to_vec(),
        vec![
            ("manual".to_string(), "ok".to_string()),
            (
                "manual activation reverted; its criteria keep 'hot' on".to_string(),
                "override_ended".to_string()
            )
        ]
    );
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    assert_eq!(rig.tuning().cpu_shares, Some(4096));
    // and once the load is gone, the baseline exactly
    for _ in 0..5 {
        rig.second(0.0);
    }
    assert_eq!(rig.worn(), None);
    assert_eq!(rig.tuning(), original());
}

/// A domain that stops and starts again runs a new process built from its
/// definition: the originals read from the old one are dropped, not written
/// over what the new one has (here: the admin changed the definition meanwhile).
#[test]
fn originals_of_a_previous_run_are_never_written_back() {
    let mut rig = Rig::new(MemoryStore::default());
    let uuid = rig.uuid.clone();
    rig.second(1.0);
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    assert_eq!(
        rig.r.store().baseline(&uuid).unwrap().cpu_shares,
        Some(1024)
    );
    // stopped
    let mut info = rig.hv.domain("web-1").unwrap();
    info.state = virt_persona::hypervisor::DomainState::ShutOff;
    info.id = None;
    rig.hv.add_domain(info.clone(), original());
    rig.r.mark_stale();
    rig.r.tick(rig.now + 500, None).unwrap();
    assert_eq!(
        rig.r.store().baseline(&uuid).unwrap(),
        Tuning::default(),
        "dropped"
    );
    // started again, with a definition the admin changed meanwhile
    let mut changed = original();
    changed.cpu_shares = Some(2000);
    info.state = virt_persona::hypervisor::DomainState::Running;
    info.id = Some(7);
    rig.hv.add_domain(info, changed.clone());
    rig.r.mark_stale();
    for _ in 0..6 {
        rig.second(0.0);
    }
    assert_eq!(rig.worn(), None);
    assert_eq!(rig.tuning(), changed, "the new run's values are left alone");
    let ev = rig.r.store().events(Some("web-1"), 0).unwrap();
    assert!(
        ev.iter()
            .any(|e| e.result == "baseline_dropped" && e.reason.contains("stopped")),
        "{ev:?}"
    );
}

/// The same when the restart happened while no daemon was running: the
/// worn persona recorded for the old run (by domain id) is not adopted.
#[test]
fn a_restart_while_the_daemon_was_away_is_not_adopted() {
    let mut rig = Rig::new(MemoryStore::default());
    let uuid = rig.uuid.clone();
    rig.second(1.0);
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    let store = rig.r.store().clone();
    // the domain restarts (new id, tuning from its definition), then a new daemon starts
    let mut info = rig.hv.domain("web-1").unwrap();
    info.id = Some(9);
    rig.hv.add_domain(info, original());
    let mut r2 = Reconciler::new(rig.hv.clone(), store, Duration::from_secs(30));
    r2.set_personas(vec![persona(HOT)]);
    r2.tick(rig.now + 1000, None).unwrap();
    assert_eq!(r2.statuses()[0].persona, None, "not adopted");
    assert_eq!(r2.store().baseline(&uuid).unwrap(), Tuning::default());
    assert_eq!(r2.store().worn(&uuid).unwrap(), None);
    assert_eq!(
        rig.hv.tuning("web-1", ReadScope::Current).unwrap(),
        original()
    );
}

/// Originals of an interface the domain no longer has are dropped with an
/// event, once, instead of failing every tick.
#[test]
fn originals_of_a_vanished_interface_are_dropped_once() {
    let hv = Arc::new(FakeHypervisor::new(4));
    let mut info = FakeHypervisor::simple_domain("web-1", 1);
    info.interfaces = vec![virt_persona::hypervisor::InterfaceInfo {
        target: Some("vnet3".into()),
        mac: Some("52:54:00:00:00:01".into()),
    }];
    let mut t = original();
    t.interfaces.insert(
        "vnet3".into(),
        virt_persona::model::tuning::InterfaceTuning {
            inbound: Some(Default::default()),
            outbound: Some(Default::default()),
        },
    );
    hv.add_domain(info.clone(), t);
    let mut r = Reconciler::new(hv.clone(), MemoryStore::default(), Duration::from_secs(30));
    r.set_personas(vec![persona(
        "id = \"bw\"\n[tuning]\ncpu_shares = 3000\n[[tuning.interface]]\ntarget = \"*\"\ninbound = { average = \"1 MiB/s\" }\n",
    )]);
    r.tick(1_000, None).unwrap();
    let uuid = info.uuid.clone();
    assert!(r
        .store()
        .baseline(&uuid)
        .unwrap()
        .interfaces
        .contains_key("vnet3"));
    // the NIC is detached (and a new one appears as vnet5)
    info.interfaces[0].target = Some("vnet5".into());
    info.interfaces[0].mac = Some("52:54:00:00:00:02".into());
    let mut now_t = hv.tuning("web-1", ReadScope::Current).unwrap();
    now_t.interfaces.clear();
    hv.add_domain(info, now_t);
    r.mark_stale();
    three_ticks_after_the_device_left(&mut r);
    let b = r.store().baseline(&uuid).unwrap();
    assert!(!b.interfaces.contains_key("vnet3"), "{b:?}");
    let ev = r.store().events(Some("web-1"), 0).unwrap();
    assert_eq!(
        ev.iter().filter(|e| e.result == "baseline_dropped").count(),
        1,
        "said once: {ev:?}"
    );
}

/// Three ticks (each past the verify interval) once a device left the
/// domain: none of them fails.
fn three_ticks_after_the_device_left(r: &mut Reconciler<FakeHypervisor, MemoryStore>) {
    for i in 0..3 {
        let rep = r.tick(40_000 * (i + 1), None).unwrap();
        assert_eq!(rep.failures, 0);
    }
}

/// The same for a disk detached while its throttle is worn: the mechanism is
/// the knob's device, not the interface's.
#[test]
fn originals_of_a_detached_disk_are_dropped_once() {
    use virt_persona::hypervisor::DiskInfo;
    let hv = Arc::new(FakeHypervisor::new(4));
    let mut info = FakeHypervisor::simple_domain("web-1", 1);
    info.disks = ["vda", "vdb"]
        .iter()
        .map(|t| DiskInfo {
            target: t.to_string(),
            source: None,
        })
        .collect();
    hv.add_domain(info.clone(), original());
    let mut r = Reconciler::new(hv.clone(), MemoryStore::default(), Duration::from_secs(30));
    r.set_personas(vec![persona(
        "id = \"io\"\n[[tuning.disk]]\ntarget = \"*\"\ntotal_iops_sec = 500\n",
    )]);
    r.tick(1_000, None).unwrap();
    let uuid = info.uuid.clone();
    let b = r.store().baseline(&uuid).unwrap();
    assert_eq!(b.changes().len(), 2, "both disks' originals (none): {b:?}");
    info.disks.truncate(1);
    let now_t = hv.tuning("web-1", ReadScope::Current).unwrap();
    hv.add_domain(info, now_t);
    r.mark_stale();
    three_ticks_after_the_device_left(&mut r);
    let b = r.store().baseline(&uuid).unwrap();
    assert_eq!(
        b.changes()
            .iter()
            .map(|c| c.knob.to_string())
            .collect::<Vec<_>>(),
        ["disk[vda]"],
        "vdb's original dropped, vda's kept"
    );
    let ev = r.store().events(Some("web-1"), 0).unwrap();
    let dropped: Vec<&str> = ev
        .iter()
        .filter(|e| e.result == "baseline_dropped")
        .map(|e| e.reason.as_str())
        .collect();
    assert_eq!(dropped.len(), 1, "said once: {ev:?}");
    assert!(dropped[0].contains("disk vdb"), "{}", dropped[0]);
}

/// Expired signals leave memory at the next tick, listed or not.
#[test]
fn expired_signals_are_pruned_every_tick() {
    let mut rig = Rig::new(MemoryStore::default());
    for i in 0..100 {
        rig.r.set_signal(
            &format!("s{i}"),
            virt_persona::rules::Signal {
                value: 1.0,
                expires: rig.now + 500,
                domain: None,
                cluster: false,
            },
        );
    }
    assert_eq!(rig.r.signals.0.len(), 100);
    rig.second(0.0);
    assert!(rig.r.signals.0.is_empty(), "pruned without a listing");
}

/// A store whose record for one domain does not decode (as a damaged redb
/// value would), and whose signal records cannot be written while
/// `signals_broken` is set (a full disk): everything else is the memory
/// store.
#[derive(Clone, Default)]
struct Damaged {
    inner: MemoryStore,
    uuid: String,
    signals_broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Damaged {
    fn signal_write(&self) -> virt_persona::store::Result<()> {
        if self
            .signals_broken
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(virt_persona::store::StoreError::Io(
                "No space left on device (os error 28)".into(),
            ));
        }
        Ok(())
    }
}

impl StateStore for Damaged {
    fn baseline(&self, uuid: &str) -> virt_persona::store::Result<Tuning> {
        if uuid == self.uuid {
            return Err(virt_persona::store::StoreError::Corrupt {
                key: uuid.into(),
                message: "expected value at line 1 column 1".into(),
            });
        }
        self.inner.baseline(uuid)
    }
    fn record_baseline(&mut self, uuid: &str, o: &[Change]) -> virt_persona::store::Result<()> {
        self.inner.record_baseline(uuid, o)
    }
    fn clear_baseline(&mut self, uuid: &str, k: &[Knob]) -> virt_persona::store::Result<()> {
        self.inner.clear_baseline(uuid, k)
    }
    fn definition(&self, uuid: &str) -> virt_persona::store::Result<Vec<DefinitionOriginal>> {
        self.inner.definition(uuid)
    }
    fn set_definition(
        &mut self,
        uuid: &str,
        o: &[DefinitionOriginal],
    ) -> virt_persona::store::Result<()> {
        self.inner.set_definition(uuid, o)
    }
    fn worn(&self, uuid: &str) -> virt_persona::store::Result<Option<virt_persona::store::Worn>> {
        self.inner.worn(uuid)
    }
    fn set_worn(
        &mut self,
        uuid: &str,
        w: Option<&virt_persona::store::Worn>,
    ) -> virt_persona::store::Result<()> {
        self.inner.set_worn(uuid, w)
    }
    fn override_(
        &self,
        uuid: &str,
    ) -> virt_persona::store::Result<Option<virt_persona::rules::Override>> {
        self.inner.override_(uuid)
    }
    fn set_override(
        &mut self,
        uuid: &str,
        o: Option<&virt_persona::rules::Override>,
    ) -> virt_persona::store::Result<()> {
        self.inner.set_override(uuid, o)
    }
    fn ended_manuals(&self, uuid: &str) -> virt_persona::store::Result<Vec<u64>> {
        self.inner.ended_manuals(uuid)
    }
    fn append_event(&mut self, e: &virt_persona::store::Event) -> virt_persona::store::Result<()> {
        self.inner.append_event(e)
    }
    fn recent_events(
        &self,
        d: Option<&str>,
        since: i64,
        limit: usize,
    ) -> virt_persona::store::Result<Vec<virt_persona::store::Event>> {
        self.inner.recent_events(d, since, limit)
    }
    fn forget(&mut self, uuid: &str) -> virt_persona::store::Result<()> {
        self.inner.forget(uuid)
    }
    fn signals(&self) -> virt_persona::store::Result<Vec<virt_persona::store::StoredSignal>> {
        self.inner.signals()
    }
    fn put_signal(
        &mut self,
        s: &virt_persona::store::StoredSignal,
    ) -> virt_persona::store::Result<()> {
        self.signal_write()?;
        self.inner.put_signal(s)
    }
    fn remove_signal(
        &mut self,
        name: &str,
        domain: Option<&str>,
    ) -> virt_persona::store::Result<()> {
        self.signal_write()?;
        self.inner.remove_signal(name, domain)
    }
}

/// A pushed signal is kept in the state store until its TTL, and leaves it
/// at the next tick after (not only at a restart); one the store cannot
/// keep is refused, not set for this run only; one whose record cannot be
/// removed at `signal-unset` ends now and its record goes once the store
/// takes writes again.
#[test]
fn pushed_signals_leave_the_store_when_they_end_and_one_it_cannot_keep_is_refused() {
    use virt_persona::api::command::{Command, Reply};
    use virt_persona::api::exec::execute;
    let hv = Arc::new(FakeHypervisor::new(4));
    hv.add_domain(FakeHypervisor::simple_domain("web-1", 1), original());
    let store = Damaged::default();
    let broken = store.signals_broken.clone();
    let mut r = Reconciler::new(hv.clone(), store, Duration::from_secs(30));
    let mut catalog = virt_persona::model::loader::Catalog::new("/nonexistent");
    let mut now = 1_000_000;
    r.tick(now, None).unwrap();
    let set = |name: &str, ttl_ms: i64| Command::SetSignal {
        name: name.into(),
        value: 1.0,
        ttl_ms,
        domain: None,
        cluster: false,
    };
    for (name, ttl) in [("short", 5_000), ("long", 3_600_000), ("unset", 3_600_000)] {
        let reply = execute(&mut r, &mut catalog, &*hv, set(name, ttl), now);
        assert!(matches!(reply, Reply::Ok(_)), "{name}: {reply:?}");
    }
    let stored = |r: &Reconciler<FakeHypervisor, Damaged>| -> Vec<String> {
        let mut v: Vec<String> = r
            .store()
            .signals()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        v.sort();
        v
    };
    assert_eq!(stored(&r), ["long", "short", "unset"]);
    // the short one's TTL passes: gone from memory and from the store at the next tick
    now += 6_000;
    r.tick(now, None).unwrap();
    assert_eq!(stored(&r), ["long", "unset"]);
    assert!(!r.has_signal("short", None));
    // the store takes no writes: a new signal is refused with the reason, and not set
    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    match execute(&mut r, &mut catalog, &*hv, set("refused", 60_000), now) {
        Reply::Err { status, message } => {
            assert_eq!(status, 500);
            assert!(message.contains("signal 'refused' not set"), "{message}");
            assert!(message.contains("No space left on device"), "{message}");
        }
        other => panic!("expected a refusal: {other:?}"),
    }
    assert!(!r.has_signal("refused", None));
    // an unset still ends the signal now; its record stays until the store writes again
    let reply = execute(
        &mut r,
        &mut catalog,
        &*hv,
        Command::UnsetSignal {
            name: "unset".into(),
            domain: None,
        },
        now,
    );
    assert!(matches!(reply, Reply::Ok(_)), "{reply:?}");
    assert!(!r.has_signal("unset", None));
    now += 1_000;
    r.tick(now, None).unwrap();
    assert_eq!(stored(&r), ["long", "unset"], "not removable yet");
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    now += 1_000;
    r.tick(now, None).unwrap();
    assert_eq!(stored(&r), ["long"], "removed once the store takes writes");
    assert_eq!(r.kept_signal_count(), 1);
    assert!(r.has_signal("long", None));
}

/// A record that does not decode quarantines that one domain (event, status)
/// while the others go on being tuned.
#[test]
fn a_damaged_record_quarantines_one_domain_and_the_others_go_on() {
    let hv = Arc::new(FakeHypervisor::new(4));
    let mut bad = FakeHypervisor::simple_domain("bad", 1);
    bad.uuid = "00000000-0000-0000-0000-0000000000ba".into();
    let mut good = FakeHypervisor::simple_domain("good", 1);
    good.uuid = "00000000-0000-0000-0000-00000000000f".into();
    good.id = Some(2);
    hv.add_domain(bad.clone(), original());
    hv.add_domain(good.clone(), original());
    let store = Damaged {
        uuid: bad.uuid.clone(),
        ..Default::default()
    };
    let mut r = Reconciler::new(hv.clone(), store, Duration::from_secs(30));
    r.set_personas(vec![persona(
        "id = \"always\"\n[tuning]\ncpu_shares = 3000\n",
    )]);
    for t in 1..=3 {
        r.tick(t * 1000, None).expect("the tick goes on");
    }
    assert_eq!(
        hv.tuning("good", ReadScope::Current).unwrap().cpu_shares,
        Some(3000)
    );
    assert_eq!(
        hv.tuning("bad", ReadScope::Current).unwrap(),
        original(),
        "left alone"
    );
    let st = r.status("bad").unwrap();
    let why = st.quarantined.expect("quarantined");
    assert!(why.contains("damaged"), "{why}");
    let ev = r.store().events(Some("bad"), 0).unwrap();
    assert_eq!(
        ev.iter().filter(|e| e.result == "quarantined").count(),
        1,
        "said once: {ev:?}"
    );
}

/// Observing only (a damaged state file was kept aside): decisions and plans
/// are recorded as `would_apply`, and nothing is written to the domain or to
/// the baselines.
#[test]
fn observing_only_writes_nothing() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.r.set_observe(Some("the state file was damaged".into()));
    rig.hv.clear_calls();
    rig.second(1.0);
    rig.second(1.0);
    assert!(
        !rig.hv.calls().iter().any(|c| matches!(c, Call::Apply(..))),
        "{:?}",
        rig.hv.calls()
    );
    assert_eq!(rig.tuning(), original());
    let uuid = rig.uuid.clone();
    assert_eq!(rig.r.store().baseline(&uuid).unwrap(), Tuning::default());
    assert_eq!(rig.r.store().worn(&uuid).unwrap(), None);
    let ev = rig.r.store().events(Some("web-1"), 0).unwrap();
    let would: Vec<_> = ev.iter().filter(|e| e.result == "would_apply").collect();
    assert_eq!(would.len(), 1, "{ev:?}");
    assert_eq!(would[0].to.as_deref(), Some("hot"));
    assert!(!would[0].changes.is_empty(), "what it would change");
    assert!(rig.r.health_problem().unwrap().contains("damaged"));
    // acting again: the persona is applied for real
    rig.r.set_observe(None);
    for _ in 0..5 {
        rig.second(0.0);
    }
    rig.second(1.0);
    assert_eq!(rig.tuning().cpu_shares, Some(4096));
}

/// A persona that persists writes the definition too; leaving it brings the
/// definition back to what *it* said — knobs it did not set are unset again,
/// not given the live value — also when the persona file was removed
/// meanwhile, when another persona that does not persist follows, and on
/// --revert-on-exit.
fn definition_without_shares() -> Tuning {
    Tuning {
        cpu_shares: None,
        memory_soft_limit: Some(2 << 20),
        ..original()
    }
}

fn persisted_rig(personas: Vec<Arc<Persona>>) -> Rig {
    let mut rig = Rig::new(MemoryStore::default());
    rig.hv.set_definition("web-1", definition_without_shares());
    rig.r.set_personas(personas);
    rig
}

const KEEP: &str =
    "id = \"keep\"\npersist = true\n[tuning]\ncpu_shares = 3000\nmemory_soft_limit = \"1 GiB\"\n";

#[test]
fn the_revert_of_a_persisted_persona_restores_the_definition_even_once_it_is_removed() {
    use virt_persona::hypervisor::ApplyScope;
    let mut rig = persisted_rig(vec![persona(KEEP)]);
    rig.second(0.0);
    let def = rig.hv.definition("web-1").unwrap();
    assert_eq!(
        (def.cpu_shares, def.memory_soft_limit),
        (Some(3000), Some(1 << 20)),
        "the persona reached the definition"
    );
    assert_eq!(
        rig.r.store().definition(&rig.uuid).unwrap(),
        vec![
            DefinitionOriginal {
                knob: Knob::CpuShares,
                value: None
            },
            DefinitionOriginal {
                knob: Knob::MemorySoftLimit,
                value: Some(KnobValue::Unsigned(2 << 20))
            },
        ],
        "what the definition said is recorded before it is written"
    );
    rig.r.set_personas(vec![]);
    rig.second(0.0);
    assert_eq!(rig.tuning(), original(), "live back at the live originals");
    assert_eq!(
        rig.hv.definition("web-1").unwrap(),
        definition_without_shares(),
        "the definition back at its own originals: no cpu_shares, soft limit 2 GiB"
    );
    assert!(
        rig.hv
            .applied()
            .iter()
            .filter(|(_, c, _)| c.value == KnobValue::Unsigned(1024))
            .all(|(_, _, s)| *s == ApplyScope::Live),
        "the live original is never written into the definition"
    );
    assert!(rig.r.store().definition(&rig.uuid).unwrap().is_empty());
    // nothing left to do: no further restores
    rig.hv.clear_calls();
    rig.second(0.0);
    assert!(!rig
        .hv
        .calls()
        .iter()
        .any(|c| matches!(c, Call::RestoreDefinition(..))));
}

#[test]
fn revert_on_exit_restores_the_definition_of_a_persisted_persona() {
    let mut rig = persisted_rig(vec![persona(KEEP)]);
    rig.second(0.0);
    let (n, failures) = rig.r.revert_all(rig.now).unwrap();
    assert_eq!((n, failures.len()), (1, 0));
    assert_eq!(rig.tuning(), original());
    assert_eq!(
        rig.hv.definition("web-1").unwrap(),
        definition_without_shares()
    );
}

#[test]
fn a_persona_that_does_not_persist_after_one_that_did_leaves_the_definition_at_its_original() {
    let live_only = persona("id = \"live\"\npriority = 1\n[tuning]\ncpu_shares = 500\n");
    let keep = persona(&format!("priority = 5\n{KEEP}"));
    let mut rig = persisted_rig(vec![keep, live_only.clone()]);
    rig.second(0.0);
    assert_eq!(rig.worn().as_deref(), Some("keep"));
    rig.r.set_personas(vec![live_only]);
    rig.second(0.0);
    assert_eq!(rig.worn().as_deref(), Some("live"));
    assert_eq!(rig.tuning().cpu_shares, Some(500));
    assert_eq!(
        rig.hv.definition("web-1").unwrap(),
        definition_without_shares(),
        "the live-only persona is not written into the definition, and the persisted one is gone from it"
    );
}

#[test]
fn a_failed_definition_restore_keeps_its_originals_and_is_retried() {
    let mut rig = persisted_rig(vec![persona(KEEP)]);
    rig.second(0.0);
    rig.r.set_personas(vec![]);
    rig.hv.fail_next_definition("web-1", "definition is locked");
    rig.second(0.0);
    assert_eq!(rig.tuning(), original(), "live restored");
    let st = &rig.r.statuses()[0];
    let attention = st.needs_attention.clone().unwrap_or_default();
    assert!(attention.contains("persistent definition"), "{attention}");
    assert_eq!(
        rig.r.store().definition(&rig.uuid).unwrap().len(),
        2,
        "originals kept"
    );
    let events = rig.r.store().events(None, 0).unwrap();
    assert!(events
        .iter()
        .any(|e| e.result == "rollback_failed" && e.reason.contains("cpu_shares")));
    // the next tick tries again and succeeds
    rig.second(0.0);
    assert_eq!(
        rig.hv.definition("web-1").unwrap(),
        definition_without_shares()
    );
    assert!(rig.r.statuses()[0].needs_attention.is_none());
    assert!(rig.r.store().definition(&rig.uuid).unwrap().is_empty());
}

#[test]
fn a_failed_transition_of_a_persisted_persona_puts_the_definition_back_as_it_was() {
    let mut rig = persisted_rig(vec![persona(KEEP)]);
    // cpu_shares goes first and succeeds, the soft limit fails: all rolled back
    rig.hv
        .fail_next("web-1", Knob::MemorySoftLimit, "no memory cgroup");
    rig.second(0.0);
    assert_eq!(rig.worn(), None);
    assert_eq!(rig.tuning(), original());
    assert_eq!(
        rig.hv.definition("web-1").unwrap(),
        definition_without_shares(),
        "rolled back to what the definition said, not to the live values"
    );
    assert!(rig.r.store().definition(&rig.uuid).unwrap().is_empty());
}

/// Observe mode by choice: the loop decides, plans and records `would_apply`
/// with no write call at all; list shows what the domain would wear; switching
/// it off applies at the next tick, as a transition, without a restart.
#[test]
fn dry_run_makes_no_write_call_and_switching_it_off_acts() {
    let mut rig = Rig::new(MemoryStore::default());
    rig.r.set_dry_run(true);
    rig.hv.clear_calls();
    for _ in 0..5 {
        rig.second(1.0);
    }
    let writes = |hv: &FakeHypervisor| {
        hv.calls()
            .into_iter()
            .filter(|c| {
                matches!(
                    c,
                    Call::Apply(..) | Call::RestoreDefinition(..) | Call::SetTags(..)
                )
            })
            .count()
    };
    assert_eq!(writes(&rig.hv), 0, "no write call in a dry run");
    assert_eq!(rig.tuning(), original());
    let st = &rig.r.statuses()[0];
    assert_eq!((st.persona.as_deref(), st.would), (Some("hot"), true));
    let events = rig.r.store().events(None, 0).unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.result == "would_apply" && e.to.as_deref() == Some("hot"))
            .count(),
        1,
        "{events:?}"
    );
    assert_eq!(
        rig.r.store().baseline(&rig.uuid).unwrap(),
        Tuning::default()
    );
    // revert-on-exit writes nothing either
    assert_eq!(rig.r.revert_all(rig.now).unwrap(), (0, vec![]));
    assert_eq!(writes(&rig.hv), 0);

    // acting again: the next tick makes the transition it only recorded
    rig.r.set_dry_run(false);
    assert!(!rig.r.statuses()[0].would);
    rig.second(1.0);
    assert_eq!(rig.tuning().cpu_shares, Some(4096));
    let events = rig.r.store().events(None, 0).unwrap();
    let applied: Vec<_> = events.iter().filter(|e| e.result == "ok").collect();
    assert_eq!(applied.len(), 1, "{events:?}");
    assert_eq!(
        (
            applied[0].from.as_deref(),
            applied[0].to.as_deref(),
            applied[0].reason.as_str()
        ),
        (None, Some("hot"), "criteria"),
        "a transition, not a drift repair"
    );
}

#[test]
fn a_portable_cpu_weight_is_this_hosts_shares_and_a_number_it_cannot_take_is_refused() {
    use virt_persona::model::knobs::CgroupVersion;
    let weighted = hot_with("[tuning]\ncpu_weight = \"2x\"\n");
    let absolute = persona(
        &HOT.replace("id = \"hot\"", "id = \"big\"")
            .replace("4096", "20480"),
    );
    for (cgroup, want) in [(CgroupVersion::V1, 2048), (CgroupVersion::V2, 200)] {
        let mut rig = Rig::new(MemoryStore::default());
        rig.r.set_cgroup(Some(cgroup));
        rig.r.set_personas(vec![weighted.clone()]);
        for _ in 0..3 {
            rig.second(0.9);
        }
        assert_eq!(rig.worn().as_deref(), Some("hot"), "{cgroup:?}");
        assert_eq!(rig.tuning().cpu_shares, Some(want), "{cgroup:?}");
        let st = &rig.r.statuses()[0];
        let shown = st.cpu_weight.as_deref().unwrap_or_default();
        assert!(
            shown.contains(&format!(
                "2x = cpu_shares {want} on this host ({}",
                cgroup.name()
            )),
            "{shown}"
        );
        // idle again: exactly the original
        for _ in 0..6 {
            rig.second(0.0);
        }
        assert_eq!(rig.worn(), None);
        assert_eq!(rig.tuning(), original());
    }
    // 20480 is fine for v1, outside v2's 2..10000: refused there, not clamped
    let mut rig = Rig::new(MemoryStore::default());
    rig.r.set_cgroup(Some(CgroupVersion::V2));
    rig.r.set_personas(vec![absolute.clone()]);
    for _ in 0..3 {
        rig.second(0.9);
    }
    assert_eq!(rig.worn(), None);
    assert_eq!(rig.tuning(), original(), "nothing applied");
    let why = rig.r.statuses()[0].refused["big"].clone();
    assert!(why.contains("cgroup v2: 2..10000"), "{why}");
    assert!(why.contains("cpu_weight = \"20x\""), "{why}");
    let mut rig = Rig::new(MemoryStore::default());
    rig.r.set_cgroup(Some(CgroupVersion::V1));
    rig.r.set_personas(vec![absolute]);
    for _ in 0..3 {
        rig.second(0.9);
    }
    assert_eq!(rig.tuning().cpu_shares, Some(20480), "v1 takes it");
    // a remote libvirt: the version is unknown, so a portable weight is refused
    let mut rig = Rig::new(MemoryStore::default());
    rig.r.set_cgroup(None);
    rig.r.set_personas(vec![weighted]);
    for _ in 0..3 {
        rig.second(0.9);
    }
    assert_eq!(rig.worn(), None);
    assert!(rig.r.statuses()[0].refused["hot"].contains("cgroup version"));
}

/// The progress hook (the daemon's watchdog pings during a long transition)
/// hears of every libvirt call a transition and a restore complete: each
/// knob change and each read of the domain's tuning.
#[test]
fn every_call_of_a_transition_is_reported_as_progress() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut rig = Rig::new(MemoryStore::default());
    let heard = Arc::new(AtomicUsize::new(0));
    let h = heard.clone();
    rig.r.on_progress(Arc::new(move || {
        h.fetch_add(1, Ordering::SeqCst);
    }));
    let calls = |hv: &FakeHypervisor| {
        hv.calls()
            .iter()
            .filter(|c| matches!(c, Call::Apply(..) | Call::Tuning(_)))
            .count()
    };
    let before = calls(&rig.hv);
    rig.second(1.0);
    assert_eq!(rig.worn().as_deref(), Some("hot"));
    let on = calls(&rig.hv) - before;
    // the read of its tuning and the three knobs of HOT
    assert!(on >= 4, "{:?}", rig.hv.calls());
    assert_eq!(heard.load(Ordering::SeqCst), on);
    for _ in 0..4 {
        rig.second(0.0);
    }
    assert_eq!(rig.worn(), None);
    // the restore's read and changes too (counted before the test's own read)
    assert_eq!(heard.load(Ordering::SeqCst), calls(&rig.hv) - before);
    assert!(
        heard.load(Ordering::SeqCst) >= 2 * on,
        "{:?}",
        rig.hv.calls()
    );
    assert_eq!(rig.tuning(), original());
}
