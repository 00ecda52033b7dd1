//! Persona files: the shipped examples, golden good and bad files with their
//! exact messages, and the directory loader's all-or-nothing-per-file rules.

use std::path::{Path, PathBuf};

use virt_persona::hypervisor::{DomainInfo, DomainState, InterfaceInfo};
use virt_persona::model::loader::Catalog;
use virt_persona::model::persona::{Comparison, DeviceSel, Metric, Source};
use virt_persona::model::tuning::KnobValue;
use virt_persona::model::validate::{load_file, parse_persona};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// "LINE:COL: message" lines of a file's errors (paths left out so goldens are portable).
fn messages(path: &Path) -> String {
    match load_file(path) {
        Ok(_) => String::new(),
        Err(errs) => errs
            .iter()
            .map(|e| format!("{}:{}: {}\n", e.line, e.col, e.rule))
            .collect(),
    }
}

#[test]
fn shipped_examples_all_validate() {
    let mut cat = Catalog::new(root().join("personas"));
    let report = cat.reload().unwrap();
    assert!(report.failed.is_empty(), "{:?}", cat.errors());
    let ids: Vec<String> = cat.personas().iter().map(|p| p.id.clone()).collect();
    assert!(ids.len() >= 5, "{ids:?}");
    // evaluation order: priority high to low
    let prios: Vec<i64> = cat.personas().iter().map(|p| p.priority).collect();
    assert!(prios.windows(2).all(|w| w[0] >= w[1]), "{prios:?}");
}

#[test]
fn golden_bad_files_give_exact_messages() {
    let dir = root().join("tests/golden/bad");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let got = messages(&path);
        let expected_path = path.with_extension("expected");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&expected_path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("missing {expected_path:?} (UPDATE_GOLDEN=1 writes it)"));
        assert_eq!(got, want, "messages of {path:?}");
        assert!(!got.is_empty(), "{path:?} must fail");
        n += 1;
    }
    assert!(n >= 5);
}

#[test]
fn errors_carry_the_file_name() {
    let path = root().join("tests/golden/bad/unknown-key.toml");
    let errs = load_file(&path).unwrap_err();
    assert_eq!(errs[0].to_string(), format!("{}:2:1: unknown field `priorty`, expected one of `id`, `name`, `description`, `priority`, `persist`, `match`, `activation`, `tuning`, `thresholds`, `forecast_mode`", path.display()));
}

#[test]
fn the_spec_example_parses_to_what_it_says() {
    let p = load_file(&root().join("tests/golden/good/spec-example.toml")).unwrap();
    assert_eq!(p.id, "web-peak");
    assert_eq!(p.priority, 100);
    let a = p.activation.as_ref().unwrap();
    assert_eq!(a.hold.to_string(), "10m");
    assert_eq!(a.when[0].source, Source::Metric(Metric::Cpu));
    assert_eq!(a.when[0].comparison, Comparison::Above(80.0));
    assert_eq!(a.when[1].source, Source::Signal("lb.web.rps".into()));
    assert_eq!(a.when.len(), 3);
    assert_eq!(a.when[2].source, Source::Forecast(Metric::Cpu.into()));
    assert_eq!(
        a.when[2].horizon.map(|h| h.to_string()).as_deref(),
        Some("15m")
    );
    assert_eq!(a.when[2].lead.map(|h| h.to_string()).as_deref(), Some("5m"));
    assert_eq!(a.when[2].bound, virt_persona::model::persona::Bound::Value);
    assert_eq!(a.schedule[0].from, 8 * 60);
    assert_eq!(a.schedule[0].to, 20 * 60);
    assert_eq!(a.timezone.as_deref(), Some("Europe/Berlin"));
    let t = &p.tuning;
    assert_eq!(
        t.devices["vcpu_pin"],
        vec![(DeviceSel::All, KnobValue::CpuSet("0-3".parse().unwrap()))]
    );
    assert_eq!(t.fixed.vcpu_quota, Some(50_000));
    assert_eq!(t.fixed.vcpu_period, Some(100_000));
    assert_eq!(t.fixed.memory_hard_limit, Some(4 << 20));
    assert_eq!(t.fixed.memory_soft_limit, Some(2 << 20));
    assert_eq!(t.fixed.memory_swap_hard_limit, Some(6 << 20));
    assert_eq!(
        t.fixed.blkio_devices["/dev/sda"].read_bytes_per_sec,
        Some(200 << 20)
    );
    let (target, bw) = &t.interfaces[0];
    assert_eq!(target, "*");
    assert_eq!(bw.inbound.unwrap().average, 102_400);
    assert_eq!(bw.inbound.unwrap().burst, 4096);
    assert_eq!(bw.outbound.unwrap().peak, 0);
    assert_eq!(p.thresholds[&Metric::Cpu], 95.0);
}

/// `iothread_pin`: `"*"` for every iothread the domain has, a numbered
/// entry wins for its iothread, ids the domain does not have are left out;
/// a bad id is named.
#[test]
fn iothread_pins_resolve_against_the_domains_iothreads() {
    let p = parse_persona(
        "id = \"io\"\n[tuning]\niothread_pin = { \"*\" = \"0-1\", \"2\" = \"3\", \"9\" = \"2\" }\n",
        Path::new("io.toml"),
    )
    .unwrap();
    let mut d = virt_persona::hypervisor::fake::FakeHypervisor::simple_domain("io", 2);
    assert!(
        p.tuning.resolve(&d).iothread_pin.is_empty(),
        "no iothreads, no pins"
    );
    d.iothreads = vec![1, 2];
    let t = p.tuning.resolve(&d);
    let shown: Vec<(u32, String)> = t
        .iothread_pin
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
    assert_eq!(shown, [(1, "0-1".to_string()), (2, "3".to_string())]);
    let errs = parse_persona(
        "id = \"io\"\n[tuning]\niothread_pin = { \"first\" = \"0\" }\n",
        Path::new("io.toml"),
    )
    .unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .contains("iothread_pin: invalid iothread 'first'"),
        "{}",
        errs[0]
    );
}

/// The per-device rows of the knob table share one set of rules: a device as
/// the row's index names one (iothread ids start at 1), one entry per device
/// however the file spells it, a value in the row's range, and at most the
/// index's number of entries.
#[test]
fn per_device_rows_refuse_what_cannot_name_a_device_or_a_value() {
    let errs = |toml: &str| -> Vec<String> {
        parse_persona(
            &format!("id = \"d\"\n[tuning]\n{toml}\n"),
            Path::new("d.toml"),
        )
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect()
    };
    let e = errs(r#"iothread_pin = { "0" = "1" }"#);
    assert!(
        e[0].contains(
            "iothread_pin: invalid iothread '0': expected an iothread id (1, 2, …) or \"*\""
        ),
        "{e:?}"
    );
    let e = errs(r#"vcpu_pin = { "4096" = "1" }"#);
    assert!(e[0].contains("vcpu_pin: invalid vCPU '4096'"), "{e:?}");
    let e = errs(r#"vcpu_pin = { "01" = "1", "1" = "2" }"#);
    assert!(e[0].contains("vcpu_pin: '1' is given twice"), "{e:?}");
    let e = errs(r#"vcpu_pin = { "0" = "" }"#);
    assert!(e[0].contains("vcpu_pin.0"), "{e:?}");
    let e = errs(r#"iothread_pin = { "1" = 3 }"#);
    assert!(
        e[0].contains("iothread_pin.1") && e[0].contains("expected a set like"),
        "{e:?}"
    );
    let many: Vec<String> = (1..=1001).map(|i| format!("\"{i}\" = \"0\"")).collect();
    let e = errs(&format!("iothread_pin = {{ {} }}", many.join(", ")));
    assert!(
        e[0].contains("tuning.iothread_pin: 1001 entries, more than the limit of 1000"),
        "{e:?}"
    );
    // "01" names vCPU 1, as libvirt reads it
    let p = parse_persona(
        "id = \"d\"\n[tuning]\nvcpu_pin = { \"01\" = \"3\" }\n",
        Path::new("d.toml"),
    )
    .unwrap();
    let d = virt_persona::hypervisor::fake::FakeHypervisor::simple_domain("d", 2);
    let t = p.tuning.resolve(&d);
    assert_eq!(t.vcpu_pin.len(), 1);
    assert_eq!(t.vcpu_pin[&1].to_string(), "3");
}

#[test]
fn tuning_resolves_against_a_domain() {
    let p = load_file(&root().join("tests/golden/good/midnight.toml")).unwrap();
    let mut d = DomainInfo {
        name: "x".into(),
        uuid: "u".into(),
        id: Some(1),
        state: DomainState::Running,
        persistent: true,
        vcpus: 3,
        iothreads: vec![],
        memory_kib: 1024,
        max_memory_kib: 1024,
        disks: vec![],
        interfaces: vec![InterfaceInfo {
            target: Some("vnet7".into()),
            mac: Some("52:54:00:00:00:01".into()),
        }],
        tags: vec![],
    };
    let t = p.tuning.resolve(&d);
    assert_eq!(t.vcpu_pin.len(), 3);
    assert_eq!(t.vcpu_pin[&0].to_string(), "1", "a numbered vCPU beats *");
    assert_eq!(t.vcpu_pin[&2].to_string(), "0-1");
    assert_eq!(
        t.memory_hard_limit,
        Some(virt_persona::model::tuning::MEMORY_UNLIMITED_KIB)
    );
    let w = &p.activation.as_ref().unwrap().schedule[0];
    assert!(w.from > w.to, "crosses midnight");
    assert!(
        w.days.contains(4) && w.days.contains(0) && !w.days.contains(2),
        "fri-mon wraps"
    );
    d.vcpus = 1;
    assert_eq!(p.tuning.resolve(&d).vcpu_pin.len(), 1);
    let spec = load_file(&root().join("tests/golden/good/spec-example.toml")).unwrap();
    let t = spec.tuning.resolve(&d);
    assert!(
        t.interfaces.contains_key("vnet7"),
        "* covers every running interface"
    );
}

#[test]
fn minimal_file_defaults() {
    let p = parse_persona("id = \"a\"\n", Path::new("a.toml")).unwrap();
    assert_eq!(p.name, "a");
    assert_eq!(p.priority, 0);
    assert!(p.activation.is_none());
    assert!(p.tuning.is_empty());
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn a_bad_edit_keeps_the_last_good_version_in_force() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.toml", "id = \"alpha\"\npriority = 1\n");
    write(d.path(), "b.toml", "id = \"beta\"\n");
    let mut cat = Catalog::new(d.path());
    cat.reload().unwrap();
    assert_eq!(cat.personas().len(), 2);

    write(d.path(), "a.toml", "id = \"alpha\"\npriority = \"x\"\n");
    let r = cat.reload().unwrap();
    assert_eq!(r.failed, vec!["alpha".to_string()]);
    let alpha = cat.get("alpha").expect("last good alpha still in force");
    assert_eq!(alpha.priority, 1);
    let e = cat.entries().into_iter().find(|e| e.id == "alpha").unwrap();
    assert_eq!(e.status, "error");
    assert!(e.in_force);
    assert!(
        e.error
            .as_deref()
            .unwrap()
            .contains("a.toml:2:12: invalid type: string \"x\", expected i64"),
        "{e:?}"
    );
    assert!(cat.get("beta").is_some(), "other files load normally");

    write(d.path(), "a.toml", "id = \"alpha\"\npriority = 7\n");
    cat.reload().unwrap();
    assert_eq!(cat.get("alpha").unwrap().priority, 7);
    assert!(cat.errors().is_empty());
}

#[test]
fn duplicate_ids_name_both_files_and_the_first_wins() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "10-first.toml", "id = \"same\"\npriority = 1\n");
    write(d.path(), "20-second.toml", "id = \"same\"\npriority = 2\n");
    let mut cat = Catalog::new(d.path());
    cat.reload().unwrap();
    assert_eq!(cat.personas().len(), 1);
    assert_eq!(cat.get("same").unwrap().priority, 1);
    let errs = cat.errors();
    assert_eq!(errs.len(), 1);
    let msg = errs[0].to_string();
    assert!(
        msg.contains("20-second.toml:1:1: duplicate persona id 'same': also defined in"),
        "{msg}"
    );
    assert!(msg.contains("10-first.toml"), "{msg}");
}

#[test]
fn removed_files_retire_and_leftovers_are_ignored() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.toml", "id = \"alpha\"\n");
    for junk in [
        ".hidden.toml",
        "a.toml~",
        ".#a.toml",
        "a.toml.swp",
        "notes.txt",
        "#a.toml#",
    ] {
        write(d.path(), junk, "garbage = [");
    }
    let mut cat = Catalog::new(d.path());
    let r = cat.reload().unwrap();
    assert_eq!(r.loaded, vec!["alpha".to_string()]);
    assert!(cat.errors().is_empty());
    std::fs::remove_file(d.path().join("a.toml")).unwrap();
    let r = cat.reload().unwrap();
    assert_eq!(r.removed, vec!["alpha".to_string()]);
    assert!(cat.personas().is_empty());
}

#[test]
fn a_new_file_that_fails_puts_nothing_in_force() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "x.toml",
        "id = \"x\"\n[tuning]\nblkio_weight = 1\n",
    );
    let mut cat = Catalog::new(d.path());
    cat.reload().unwrap();
    assert!(cat.personas().is_empty());
    let e = &cat.entries()[0];
    assert_eq!((e.status, e.in_force), ("error", false));
    assert_eq!(
        e.id, "x",
        "the declared id is listed even when nothing is in force"
    );
    // invalid UTF-8 is an error too, not a panic
    std::fs::write(d.path().join("y.toml"), [0x69, 0x64, 0xff, 0xfe]).unwrap();
    cat.reload().unwrap();
    assert!(cat
        .errors()
        .iter()
        .any(|e| e.to_string().contains("not UTF-8")));
}

/// A link in the personas directory is refused by name and never read
/// through (the root-only file it points at is not quoted in any error);
/// a file over 256 KiB is refused with the limit named; a good file beside
/// them loads, and the link's last good version (none) stays out.
#[test]
fn links_and_oversized_files_are_refused_by_name_and_never_read() {
    let d = tempfile::tempdir().unwrap();
    let secret = d.path().join("elsewhere");
    std::fs::write(&secret, "root_only_secret_key = 1\n").unwrap();
    std::os::unix::fs::symlink(&secret, d.path().join("link.toml")).unwrap();
    let mut big = String::from("id = \"big\"\n");
    big.push_str(&"# padding\n".repeat(30_000));
    write(d.path(), "big.toml", &big);
    write(
        d.path(),
        "good.toml",
        "id = \"good\"\n[tuning]\ncpu_shares = 512\n",
    );
    let mut cat = Catalog::new(d.path());
    let r = cat.reload().unwrap();
    let ids: Vec<String> = cat.personas().iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids, ["good"]);
    assert_eq!(r.failed.len(), 2, "{r:?}");
    let errors: Vec<String> = cat.errors().iter().map(|e| e.to_string()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("link.toml") && e.contains("a symbolic link: refused")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("big.toml") && e.contains("larger than the 256 KiB limit")),
        "{errors:?}"
    );
    assert!(
        !errors.iter().any(|e| e.contains("root_only_secret_key")),
        "{errors:?}"
    );
    // unchanged on the next reload: not reported again
    let r = cat.reload().unwrap();
    assert!(r.failed.is_empty() && r.loaded.is_empty(), "{r:?}");
    // the admin opts in (personas_follow_links): a link to a persona loads
    std::fs::write(&secret, "id = \"linked\"\n[tuning]\ncpu_shares = 700\n").unwrap();
    cat.follow_links(true);
    cat.reload().unwrap();
    let ids: Vec<String> = cat.personas().iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids, ["good", "linked"]);
}

/// Edits files while the watcher runs: each change is in force within 2 s, a
/// file written in two steps never removes the working version, and a rename
/// into place (as editors and config management do it) is seen.
#[test]
fn live_reload_follows_edits_within_two_seconds() {
    use std::time::{Duration, Instant};
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.toml", "id = \"alpha\"\npriority = 1\n");
    let mut cat = Catalog::new(d.path());
    cat.reload().unwrap();
    let (_w, changes) = virt_persona::watch::watch(d.path()).unwrap();

    // waits for the next reload signal and reloads, like the daemon loop does
    let step = |cat: &mut Catalog, what: &str| {
        let t0 = Instant::now();
        changes
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|_| panic!("no reload within 2 s after {what}"));
        cat.reload().unwrap();
        t0.elapsed()
    };

    write(d.path(), "b.toml", "id = \"beta\"\n");
    step(&mut cat, "adding b.toml");
    assert!(cat.get("beta").is_some());

    // atomic rename into place
    write(d.path(), ".a.toml.tmp", "id = \"alpha\"\npriority = 5\n");
    std::fs::rename(d.path().join(".a.toml.tmp"), d.path().join("a.toml")).unwrap();
    step(&mut cat, "renaming over a.toml");
    assert_eq!(cat.get("alpha").unwrap().priority, 5);

    // written in two steps, 50 ms apart: read once, whole
    let full = "id = \"alpha\"\npriority = 9\n[tuning]\ncpu_shares = 512\n";
    let (first, second) = full.split_at(20);
    std::fs::write(d.path().join("a.toml"), first).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.path().join("a.toml"))
        .unwrap();
    std::io::Write::write_all(&mut f, second.as_bytes()).unwrap();
    drop(f);
    step(&mut cat, "a two-step write");
    let alpha = cat.get("alpha").expect("alpha never leaves");
    assert_eq!(
        (alpha.priority, alpha.tuning.fixed.cpu_shares),
        (9, Some(512))
    );
    assert!(cat.errors().is_empty(), "{:?}", cat.errors());

    // a bad edit: the last good version stays
    write(d.path(), "a.toml", "id = \"alpha\"\npriority = [\n");
    step(&mut cat, "a bad edit");
    assert_eq!(cat.get("alpha").unwrap().priority, 9);
    assert_eq!(cat.errors().len(), 1);

    // removal retires
    std::fs::remove_file(d.path().join("b.toml")).unwrap();
    step(&mut cat, "removing b.toml");
    assert!(cat.get("beta").is_none());

    // editor leftovers do not trigger reloads (first let earlier bursts settle)
    std::thread::sleep(Duration::from_millis(400));
    while changes.try_recv().is_ok() {}
    write(d.path(), ".a.toml.swp", "x");
    write(d.path(), "a.toml~", "x");
    assert!(
        changes.recv_timeout(Duration::from_millis(700)).is_err(),
        "leftovers are ignored"
    );
}

/// The errors of a persona text that must not validate, as `line:col: message`.
fn errors_of(text: &str) -> Vec<String> {
    parse_persona(text, Path::new("t.toml"))
        .expect_err("must not validate")
        .iter()
        .map(|e| format!("{}:{}: {}", e.line, e.col, e.rule))
        .collect()
}

#[test]
fn required_names_known_knobs_the_persona_sets() {
    let p = parse_persona(
        "id = \"a\"\n[tuning]\ncpu_shares = 2048\nrequired = [\"cpu_shares\"]\n",
        Path::new("a.toml"),
    )
    .unwrap();
    assert_eq!(p.tuning.required, ["cpu_shares"]);
    let msgs = errors_of(
        "id = \"b\"\n[tuning]\ncpu_shares = 2048\nrequired = [\"cpu_share\", \"interface\"]\n",
    );
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        msgs[0].starts_with("4:13: required: unknown knob 'cpu_share': expected one of vcpu_pin,"),
        "{msgs:?}"
    );
    assert_eq!(
        msgs[1],
        "4:26: required: 'interface' is not set in [tuning]: a persona can only require knobs it sets"
    );
}

#[test]
fn sample_windows_longer_than_an_hour_are_refused() {
    let msgs = errors_of(
        "id = \"w\"\n[activation]\n[[activation.when]]\nmetric = \"cpu\"\nabove = 50\nover = \"2h\"\nfor = \"90m\"\n",
    );
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        msgs[0].starts_with("6:8: over: 2h is out of range: expected at most 1h"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].starts_with("7:7: for: 90m is out of range"),
        "{msgs:?}"
    );
    assert!(parse_persona(
        "id = \"w\"\n[activation]\n[[activation.when]]\nmetric = \"cpu\"\nabove = 50\nover = \"1h\"\n",
        Path::new("w.toml"),
    )
    .is_ok());
}

#[test]
fn cpu_weight_is_a_factor_of_the_hosts_default_and_excludes_cpu_shares() {
    let p = parse_persona(
        "id = \"w\"\n[tuning]\ncpu_weight = \"1.5x\"\nrequired = [\"cpu_weight\"]\n",
        Path::new("w.toml"),
    )
    .unwrap();
    assert_eq!(
        p.tuning.cpu_weight.map(|w| w.to_string()).as_deref(),
        Some("1.5x")
    );
    // the knob it sets (and that a host may not support) is cpu_shares
    assert_eq!(p.tuning.required, ["cpu_shares"]);
    assert_eq!(
        p.tuning.fixed.cpu_shares, None,
        "resolved per host, not here"
    );
    let notes = p.tuning.cgroup_notes();
    assert_eq!(
        notes,
        ["cpu_weight 1.5x is cpu_shares 1536 on a cgroup v1 host and 150 on a cgroup v2 host"]
    );
    let msgs = errors_of("id = \"b\"\n[tuning]\ncpu_weight = \"2x\"\ncpu_shares = 2048\n");
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(
        msgs[0].starts_with(
            "4:14: cpu_weight and cpu_shares both set the domain's CPU weight: give one"
        ),
        "{msgs:?}"
    );
    for (bad, want) in [
        (
            "\"200x\"",
            "3:14: cpu_weight: 200x is out of range: expected 0.01x..100x",
        ),
        (
            "\"2\"",
            "3:14: cpu_weight: '2': expected a factor of this host's default weight",
        ),
        (
            "2",
            "3:14: cpu_weight: 2: expected a factor of this host's default weight as a string",
        ),
    ] {
        let msgs = errors_of(&format!("id = \"c\"\n[tuning]\ncpu_weight = {bad}\n"));
        assert!(
            msgs.len() == 1 && msgs[0].starts_with(want),
            "{bad}: {msgs:?}"
        );
    }
    // an absolute number: the validator says what it means on each kind of host
    let p = parse_persona(
        "id = \"s\"\n[tuning]\ncpu_shares = 20480\n",
        Path::new("s.toml"),
    )
    .unwrap();
    let notes = p.tuning.cgroup_notes().join("\n");
    assert!(
        notes.contains("20480 is 20x the default weight on cgroup v1 and 204.8x on cgroup v2"),
        "{notes}"
    );
    assert!(notes.contains("refused on cgroup v2 hosts"), "{notes}");
}
