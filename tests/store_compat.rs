//! Stored state is a contract: every record a previous release wrote decodes
//! in this one, every baseline intact. `tests/golden/store/<release>/` holds
//! a `state.redb` and a `history.redb` written by that release (through its
//! own store code, by `write_golden_store` below as it was then) and never
//! rewritten; the test opens a copy of each with today's code and checks
//! every record against the list it was written from.
//!
//! The expected records are written as text (`cpu_shares=1024`, the knob and
//! value as `Change` displays them), not as today's structs, so a change to
//! the struct layout cannot change what the test expects.

use std::path::{Path, PathBuf};

use virt_persona::history::{History, SeriesKey};
use virt_persona::model::persona::Metric;
use virt_persona::model::tuning::{
    Bandwidth, BlkioField, Change, DefinitionOriginal, Direction, Knob, KnobValue,
};
use virt_persona::rules::Override;
use virt_persona::store::{Event, HistoryDb, RedbStore, Skipped, StateStore, Worn};
use virt_persona::units::CpuSet;

/// The releases whose stores are kept here, oldest first.
const RELEASES: &[&str] = &["0.1.0", "0.2.0"];

fn golden(release: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/store")
        .join(release)
}

/// The five domains of `fixtures/test-host.xml`, so a daemon on the test
/// driver can also be started on these files.
const WEB1: &str = "6695eb01-f6a4-8304-79aa-97f2502e1900";
const WEB2: &str = "6695eb01-f6a4-8304-79aa-97f2502e1901";
const DB1: &str = "6695eb01-f6a4-8304-79aa-97f2502e1902";
const BATCH1: &str = "6695eb01-f6a4-8304-79aa-97f2502e1903";
const DESK1: &str = "6695eb01-f6a4-8304-79aa-97f2502e1904";

fn cpus(s: &str) -> KnobValue {
    KnobValue::CpuSet(s.parse::<CpuSet>().expect("cpu set"))
}

fn bw(average: u32, peak: u32, burst: u32) -> KnobValue {
    KnobValue::Bandwidth(Bandwidth {
        average,
        peak,
        burst,
    })
}

/// Every knob kind, absent originals ("was not set") included.
fn baselines() -> Vec<(&'static str, Vec<Change>)> {
    let c = |knob: Knob, value: KnobValue| Change { knob, value };
    vec![
        (
            WEB1,
            vec![
                c(Knob::VcpuPin { vcpu: 0 }, cpus("0-3")),
                c(Knob::VcpuPin { vcpu: 1 }, cpus("0-3")),
                c(Knob::EmulatorPin, cpus("0-7")),
                c(Knob::CpuShares, KnobValue::Unsigned(1024)),
                c(Knob::VcpuPeriod, KnobValue::Unsigned(100_000)),
                c(Knob::VcpuQuota, KnobValue::Signed(-1)),
                c(Knob::MemoryHardLimit, KnobValue::Unsigned(u64::MAX >> 10)),
                c(Knob::MemorySoftLimit, KnobValue::Unsigned(2_097_152)),
                c(
                    Knob::MemorySwapHardLimit,
                    KnobValue::Unsigned(u64::MAX >> 10),
                ),
                c(Knob::BlkioWeight, KnobValue::Unsigned(500)),
                c(
                    Knob::Interface {
                        target: "vnet0".into(),
                        direction: Direction::Inbound,
                    },
                    bw(0, 0, 0),
                ),
                c(
                    Knob::Interface {
                        target: "vnet0".into(),
                        direction: Direction::Outbound,
                    },
                    bw(1000, 2000, 512),
                ),
            ],
        ),
        (
            WEB2,
            vec![
                c(Knob::CpuShares, KnobValue::Unsigned(2)),
                c(Knob::VcpuQuota, KnobValue::Signed(50_000)),
                c(
                    Knob::BlkioDevice {
                        path: "/dev/sda".into(),
                        field: BlkioField::ReadBytesPerSec,
                    },
                    KnobValue::Unsigned(0),
                ),
                c(
                    Knob::BlkioDevice {
                        path: "/dev/sda".into(),
                        field: BlkioField::WriteIops,
                    },
                    KnobValue::Unsigned(300),
                ),
                c(
                    Knob::BlkioDevice {
                        path: "/dev/vdb".into(),
                        field: BlkioField::Weight,
                    },
                    KnobValue::Unsigned(100),
                ),
            ],
        ),
        (
            BATCH1,
            vec![c(Knob::MemoryHardLimit, KnobValue::Unsigned(4_194_304))],
        ),
    ]
}

fn worn() -> Vec<(&'static str, Worn)> {
    vec![
        (
            WEB1,
            Worn {
                persona: "web-peak".into(),
                since: 1_793_577_600_000,
                persist: false,
                id: Some(1),
            },
        ),
        (
            WEB2,
            Worn {
                persona: "boost".into(),
                since: 1_793_577_660_000,
                persist: true,
                id: None,
            },
        ),
        (
            BATCH1,
            Worn {
                persona: "quiet-default".into(),
                since: 1_793_500_000_000,
                persist: false,
                id: Some(4),
            },
        ),
    ]
}

fn overrides() -> Vec<(&'static str, Override)> {
    vec![
        (
            WEB2,
            Override {
                persona: "boost".into(),
                until: Some(1_793_581_200_000),
                // a record of 0.2 has no id: 0, never continued elsewhere by id
                id: 0,
            },
        ),
        (
            DESK1,
            Override {
                persona: "business-hours-desktop".into(),
                until: None,
                id: 0,
            },
        ),
    ]
}

fn definitions() -> Vec<(&'static str, Vec<DefinitionOriginal>)> {
    vec![(
        WEB2,
        vec![
            DefinitionOriginal {
                knob: Knob::CpuShares,
                value: Some(KnobValue::Unsigned(1024)),
            },
            DefinitionOriginal {
                knob: Knob::VcpuQuota,
                value: None,
            },
        ],
    )]
}

fn events() -> Vec<Event> {
    vec![
        Event {
            time: 1_793_577_600_000,
            domain: "web-1".into(),
            from: None,
            to: Some("web-peak".into()),
            reason: "criteria".into(),
            result: "ok".into(),
            changes: vec![Change {
                knob: Knob::MemorySoftLimit,
                value: KnobValue::Unsigned(3_145_728),
            }],
            error: None,
            skipped: vec![Skipped {
                knob: "cpu_shares".into(),
                reason: "unsupported by this hypervisor driver".into(),
            }],
        },
        Event {
            time: 1_793_577_660_000,
            domain: "web-2".into(),
            from: None,
            to: Some("boost".into()),
            reason: "manual".into(),
            result: "failed".into(),
            changes: vec![],
            error: Some("libvirt: operation failed".into()),
            skipped: vec![],
        },
        Event {
            time: 1_793_577_700_000,
            domain: "db-1".into(),
            from: Some("web-peak".into()),
            to: None,
            reason: "baseline".into(),
            result: "ok".into(),
            changes: vec![],
            error: None,
            skipped: vec![],
        },
    ]
}

/// One day of one series, the minute means a daemon records.
const HISTORY_T0: i64 = 1_793_577_600_000;
fn history_points() -> virt_persona::history::ImportBatch {
    virt_persona::history::ImportBatch {
        series: vec![SeriesKey::new(WEB1, Metric::Cpu)],
        points: (0..1440)
            .map(|i| (0, HISTORY_T0 + i * 60_000, (i % 100) as f64))
            .collect(),
    }
}

/// Every release keeps its golden files: this release's are written once
/// (`VP_WRITE_GOLDEN_STORE=1 cargo test --test store_compat`, then commit
/// them and add the release to `RELEASES`) and never rewritten; until they
/// exist this test fails, so a version bump cannot forget them.
#[test]
fn this_release_has_golden_store_files() {
    let release = env!("CARGO_PKG_VERSION");
    let dir = golden(release);
    written_if_asked();
    assert!(
        dir.join("state.redb").exists() && dir.join("history.redb").exists(),
        "release {release} has no golden store files in {}: write them once with VP_WRITE_GOLDEN_STORE=1 cargo test --test store_compat, and commit them",
        dir.display()
    );
    assert!(
        RELEASES.contains(&release),
        "add {release} to RELEASES in {}",
        file!()
    );
}

/// Writes this release's files when asked to and they are missing (once,
/// before any test reads them).
fn written_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = golden(env!("CARGO_PKG_VERSION"));
        if !dir.join("state.redb").exists() && std::env::var_os("VP_WRITE_GOLDEN_STORE").is_some() {
            write_golden_store(&dir);
        }
    });
}

fn write_golden_store(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut s = RedbStore::open(dir).unwrap();
    for (uuid, originals) in baselines() {
        s.record_baseline(uuid, &originals).unwrap();
    }
    for (uuid, w) in worn() {
        s.set_worn(uuid, Some(&w)).unwrap();
    }
    for (uuid, o) in overrides() {
        s.set_override(uuid, Some(&o)).unwrap();
    }
    for (uuid, d) in definitions() {
        s.set_definition(uuid, &d).unwrap();
    }
    for e in events() {
        s.append_event(&e).unwrap();
    }
    drop(s);
    let mut h = History::default();
    h.import(&history_points(), HISTORY_T0 + 86_400_000, 14 * 86_400_000);
    let db = HistoryDb::open(dir).unwrap();
    db.save(&h.take_changes()).unwrap();
}

fn sorted(changes: Vec<Change>) -> Vec<String> {
    let mut v: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

/// A copy to open: redb writes on open, and the committed files stay as the
/// old release wrote them.
fn copy_of(release: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["state.redb", "history.redb"] {
        std::fs::copy(golden(release).join(f), tmp.path().join(f))
            .unwrap_or_else(|e| panic!("{release}/{f}: {e}"));
    }
    tmp
}

#[test]
fn every_record_of_every_kept_release_decodes_with_every_baseline_intact() {
    written_if_asked();
    for release in RELEASES {
        let tmp = copy_of(release);
        let s = RedbStore::open(tmp.path()).unwrap_or_else(|e| panic!("{release}: {e}"));
        for (uuid, originals) in baselines() {
            let b = s
                .baseline(uuid)
                .unwrap_or_else(|e| panic!("{release}: baseline of {uuid}: {e}"));
            assert_eq!(
                sorted(b.changes()),
                sorted(originals),
                "{release}: baseline of {uuid}"
            );
        }
        for uuid in [DB1, DESK1] {
            assert!(s.baseline(uuid).unwrap().changes().is_empty(), "{uuid}");
        }
        for (uuid, w) in worn() {
            assert_eq!(
                s.worn(uuid).unwrap().as_ref(),
                Some(&w),
                "{release}: {uuid}"
            );
        }
        assert_eq!(s.worn(DB1).unwrap(), None);
        for (uuid, o) in overrides() {
            assert_eq!(
                s.override_(uuid).unwrap().as_ref(),
                Some(&o),
                "{release}: {uuid}"
            );
        }
        for (uuid, d) in definitions() {
            assert_eq!(s.definition(uuid).unwrap(), d, "{release}: {uuid}");
        }
        assert_eq!(s.events(None, 0).unwrap(), events(), "{release}");
        assert_eq!(
            s.events(Some("web-2"), 0).unwrap(),
            vec![events()[1].clone()],
            "{release}: the per-domain index"
        );

        let db = HistoryDb::open(tmp.path()).unwrap();
        let h = History::from_chunks(db.load().unwrap());
        let key = SeriesKey::new(WEB1, Metric::Cpu);
        assert_eq!(
            h.span(&key),
            Some((HISTORY_T0, HISTORY_T0 + 1440 * 60_000)),
            "{release}: history span"
        );
        // 5-minute means of the minutes i % 100: block j holds 5j..5j+4
        let series = h.series(&key, 300_000, HISTORY_T0 + 1440 * 60_000);
        assert_eq!(series.start, HISTORY_T0, "{release}");
        let want: Vec<f64> = (0..288).map(|j| ((5 * j) % 100 + 2) as f64).collect();
        assert_eq!(series.values, want, "{release}: history values");
    }
}
