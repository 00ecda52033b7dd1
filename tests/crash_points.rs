//! The daemon killed at any point of a transition loses nothing: with the real
//! (redb) store on disk and the recording fake, a crash is injected after the
//! baseline write, between two knob changes, in the middle of a rollback and
//! before the event write; a new daemon then opens the same store. Whether the
//! load is still there or gone, the domain ends exactly at its persona or
//! exactly at its baseline, never in between, and the baseline is restored
//! exactly once. (tests/real_loop.rs does the same with kill -9 on a real guest.)

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use virt_persona::hypervisor::fake::FakeHypervisor;
use virt_persona::hypervisor::{DomainStats, Hypervisor, ReadScope};
use virt_persona::model::tuning::{Change, DefinitionOriginal, Knob, Tuning, MEMORY_UNLIMITED_KIB};
use virt_persona::model::validate::parse_persona;
use virt_persona::reconciler::Reconciler;
use virt_persona::rules::Override;
use virt_persona::store::{Event, RedbStore, Result, StateStore, Worn};

const HOT: &str = "id = \"hot\"\n[activation]\ncooldown = \"2s\"\n[[activation.when]]\nmetric = \"cpu\"\nabove = 50\n[tuning]\ncpu_shares = 4096\nmemory_soft_limit = \"1 GiB\"\nmemory_hard_limit = \"2 GiB\"\n";

fn original() -> Tuning {
    Tuning {
        cpu_shares: Some(1024),
        memory_hard_limit: Some(MEMORY_UNLIMITED_KIB),
        memory_soft_limit: Some(MEMORY_UNLIMITED_KIB),
        ..Default::default()
    }
}

/// The persistent definition before anything: no `<shares>`, a soft limit of
/// its own (for the personas that persist).
fn definition_original() -> Tuning {
    Tuning {
        cpu_shares: None,
        memory_soft_limit: Some(2 << 20),
        ..original()
    }
}

fn worn_values() -> Tuning {
    Tuning {
        cpu_shares: Some(4096),
        memory_hard_limit: Some(2 << 20),
        memory_soft_limit: Some(1 << 20),
        ..Default::default()
    }
}

/// The real store, with a crash that can be armed before the next event write.
struct Crashy {
    inner: RedbStore,
    crash_on_event: bool,
}

impl StateStore for Crashy {
    fn baseline(&self, uuid: &str) -> Result<Tuning> {
        self.inner.baseline(uuid)
    }
    fn record_baseline(&mut self, uuid: &str, o: &[Change]) -> Result<()> {
        self.inner.record_baseline(uuid, o)
    }
    fn clear_baseline(&mut self, uuid: &str, k: &[Knob]) -> Result<()> {
        self.inner.clear_baseline(uuid, k)
    }
    fn definition(&self, uuid: &str) -> Result<Vec<DefinitionOriginal>> {
        self.inner.definition(uuid)
    }
    fn set_definition(&mut self, uuid: &str, o: &[DefinitionOriginal]) -> Result<()> {
        self.inner.set_definition(uuid, o)
    }
    fn worn(&self, uuid: &str) -> Result<Option<Worn>> {
        self.inner.worn(uuid)
    }
    fn set_worn(&mut self, uuid: &str, w: Option<&Worn>) -> Result<()> {
        self.inner.set_worn(uuid, w)
    }
    fn override_(&self, uuid: &str) -> Result<Option<Override>> {
        self.inner.override_(uuid)
    }
    fn set_override(&mut self, uuid: &str, o: Option<&Override>) -> Result<()> {
        self.inner.set_override(uuid, o)
    }
    fn ended_manuals(&self, uuid: &str) -> Result<Vec<u64>> {
        self.inner.ended_manuals(uuid)
    }
    fn append_event(&mut self, e: &Event) -> Result<()> {
        if std::mem::take(&mut self.crash_on_event) {
            panic!("injected crash before writing the event");
        }
        self.inner.append_event(e)
    }
    fn recent_events(&self, d: Option<&str>, since: i64, limit: usize) -> Result<Vec<Event>> {
        self.inner.recent_events(d, since, limit)
    }
    fn forget(&mut self, uuid: &str) -> Result<()> {
        self.inner.forget(uuid)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Point {
    AfterBaselineWrite,
    BetweenTwoKnobs,
    MidRollback,
    BeforeEventWrite,
}

struct Run {
    hv: Arc<FakeHypervisor>,
    /// The persona persists: the definition must end exactly right too.
    persist: bool,
    cpu_ns: u64,
    now: i64,
}

impl Run {
    fn tick(&mut self, r: &mut Reconciler<FakeHypervisor, Crashy>, load: f64) {
        self.now += 1000;
        self.cpu_ns += (load * 1e9) as u64;
        let uuid = self.hv.domain("web-1").unwrap().uuid;
        self.hv.set_stats(
            "web-1",
            DomainStats {
                name: "web-1".into(),
                uuid,
                cpu_time_ns: Some(self.cpu_ns),
                vcpu_current: Some(1),
                ..Default::default()
            },
        );
        r.tick(self.now, None).expect("tick");
    }
    fn daemon(&self, dir: &Path) -> Reconciler<FakeHypervisor, Crashy> {
        let store = Crashy {
            inner: RedbStore::open(dir).expect("state store"),
            crash_on_event: false,
        };
        let mut r = Reconciler::new(self.hv.clone(), store, Duration::from_secs(30));
        let text = if self.persist {
            format!("persist = true\n{HOT}")
        } else {
            HOT.to_string()
        };
        r.set_personas(vec![Arc::new(
            parse_persona(&text, Path::new("hot.toml")).unwrap(),
        )]);
        r
    }
    fn tuning(&self) -> Tuning {
        self.hv.tuning("web-1", ReadScope::Current).unwrap()
    }
    /// The persistent definition, and what it must be at the baseline and
    /// with the persona worn (it follows the live values unless it persists).
    fn definition(&self) -> (Tuning, Tuning, Tuning) {
        let now = self.hv.tuning("web-1", ReadScope::Config).unwrap();
        if self.persist {
            (now, definition_original(), worn_values())
        } else {
            (now, definition_original(), definition_original())
        }
    }
}

fn new_run(persist: bool) -> (Arc<FakeHypervisor>, Run) {
    let hv = Arc::new(FakeHypervisor::new(4));
    hv.add_domain(FakeHypervisor::simple_domain("web-1", 1), original());
    hv.set_definition("web-1", definition_original());
    let run = Run {
        hv: hv.clone(),
        persist,
        cpu_ns: 0,
        now: 1_000_000,
    };
    (hv, run)
}

fn crash_and_restart(point: Point, busy_after: bool, persist: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (hv, mut run) = new_run(persist);
    let mut r = run.daemon(dir.path());
    run.tick(&mut r, 0.0);
    run.tick(&mut r, 0.0);
    // the plan for "hot": cpu_shares, then the two memory limits
    match point {
        Point::AfterBaselineWrite => hv.crash_at_apply(0),
        Point::BetweenTwoKnobs => hv.crash_at_apply(1),
        Point::MidRollback => {
            // the second change (the soft limit, lowered first) fails; undoing
            // the first one (cpu_shares) dies
            hv.fail_next("web-1", Knob::MemorySoftLimit, "injected");
            hv.crash_at_apply(2);
        }
        Point::BeforeEventWrite => r.store_mut().crash_on_event = true,
    }
    let died = catch_unwind(AssertUnwindSafe(|| run.tick(&mut r, 1.0)));
    assert!(died.is_err(), "{point:?}: the injected crash happened");
    drop(r);
    let at_crash = run.tuning();

    // a new daemon on the same state file
    let mut r2 = run.daemon(dir.path());
    let load = if busy_after { 1.0 } else { 0.0 };
    for _ in 0..4 {
        run.tick(&mut r2, load);
    }
    let t = run.tuning();
    let (def, def_original, def_worn) = run.definition();
    if busy_after {
        assert_eq!(
            t,
            worn_values(),
            "{point:?} (crashed at {at_crash:?}): exactly the persona"
        );
        assert_eq!(
            def, def_worn,
            "{point:?} persist={persist}: the definition too"
        );
    } else {
        assert_eq!(
            t,
            original(),
            "{point:?} (crashed at {at_crash:?}): exactly the baseline"
        );
        assert_eq!(
            def, def_original,
            "{point:?} persist={persist}: the definition too"
        );
    }
    for _ in 0..6 {
        run.tick(&mut r2, 0.0);
    }
    assert_eq!(run.tuning(), original(), "{point:?}: back at the baseline");
    let (def, def_original, _) = run.definition();
    assert_eq!(def, def_original, "{point:?}: the definition as it was");
    let uuid = hv.domain("web-1").unwrap().uuid;
    assert_eq!(r2.store().baseline(&uuid).unwrap(), Tuning::default());
    assert!(r2.store().definition(&uuid).unwrap().is_empty());
    let restores = r2
        .store()
        .events(Some("web-1"), 0)
        .unwrap()
        .iter()
        .filter(|e| e.to.is_none() && e.result == "ok" && !e.changes.is_empty())
        .count();
    // worn after the restart: exactly one restore when the load goes; load
    // gone at once: restored at most once (nothing to restore if the crash
    // came before the first change)
    if busy_after {
        assert_eq!(restores, 1, "{point:?}: the baseline restored exactly once");
    } else {
        assert!(restores <= 1, "{point:?}: restored {restores} times");
    }
}

#[test]
fn a_crash_at_any_point_ends_exactly_at_the_persona_or_the_baseline() {
    for point in [
        Point::AfterBaselineWrite,
        Point::BetweenTwoKnobs,
        Point::MidRollback,
        Point::BeforeEventWrite,
    ] {
        for busy_after in [true, false] {
            for persist in [false, true] {
                crash_and_restart(point, busy_after, persist);
            }
        }
    }
}

/// A persona that persists is worn, the load goes, and the daemon dies while
/// it writes the definition back (after the live values): the next daemon
/// brings the definition back exactly, once.
#[test]
fn a_crash_while_the_definition_is_restored_ends_with_the_definition_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (hv, mut run) = new_run(true);
    let mut r = run.daemon(dir.path());
    run.tick(&mut r, 0.0);
    run.tick(&mut r, 1.0);
    assert_eq!(run.tuning(), worn_values());
    // the revert: three live writes, then the definition restore dies
    hv.crash_at_apply(3);
    let died = catch_unwind(AssertUnwindSafe(|| {
        for _ in 0..10 {
            run.tick(&mut r, 0.0);
        }
    }));
    assert!(died.is_err(), "the injected crash happened");
    drop(r);
    assert_eq!(
        run.tuning(),
        original(),
        "live was restored before the crash"
    );
    assert_eq!(run.definition().0, worn_values(), "the definition was not");
    let mut r2 = run.daemon(dir.path());
    hv.clear_calls();
    for _ in 0..4 {
        run.tick(&mut r2, 0.0);
    }
    assert_eq!(run.tuning(), original());
    assert_eq!(run.definition().0, definition_original());
    let restores = hv
        .calls()
        .iter()
        .filter(|c| {
            matches!(
                c,
                virt_persona::hypervisor::fake::Call::RestoreDefinition(..)
            )
        })
        .count();
    assert_eq!(restores, 1, "the definition restored exactly once");
    let uuid = hv.domain("web-1").unwrap().uuid;
    assert!(r2.store().definition(&uuid).unwrap().is_empty());
}
