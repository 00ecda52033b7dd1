//! An upgrade keeps every domain: the previous release (tests/upgrade/previous,
//! built once by `scripts/previous-release.sh` from its commit in a git
//! worktree outside the checkout, and cached) wears a persona on a real
//! guest, is stopped without revert, and this build, started on the same
//! state directory, adopts what is worn (nothing re-applied, no domain
//! quarantined) and, once the persona is gone, restores the guest exactly:
//! its live values and its persistent definition. Once with the two daemon
//! binaries, once through `dpkg -i` of both packages (the previous one, then
//! this build's over it, as `apt upgrade` does), with the daemon run from
//! /usr/sbin. A real guest: libvirt's test driver forgets its domains'
//! values when a daemon reconnects, so it could not show a lost baseline.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::{run_ok as run, Daemon, Guest};
use virt_persona::hypervisor::{Hypervisor, ReadScope};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The previous release's worktree, built (once per machine: cached).
fn previous() -> PathBuf {
    static TREE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut t = TREE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = t.as_ref() {
        return p.clone();
    }
    let out = Command::new("bash")
        .arg(root().join("scripts/previous-release.sh"))
        .output()
        .expect("run scripts/previous-release.sh");
    assert!(
        out.status.success(),
        "building the previous release failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("the worktree's path")
            .trim(),
    );
    *t = Some(tree.clone());
    tree
}

fn wait_for(what: &str, d: &Daemon, secs: u64, mut f: impl FnMut() -> bool) {
    common::wait_some(what, d, secs, || f().then_some(()))
}

fn persona(guest: &str) -> String {
    format!(
        r#"id = "upgrade-me"
persist = true
[match]
names = ["{guest}"]
[tuning]
cpu_shares = 1717
vcpu_period = "100ms"
vcpu_quota = "50ms"
memory_soft_limit = "1 GiB"
memory_hard_limit = "2 GiB"
blkio_weight = 777
"#
    )
}

/// The scenario: `old` wears the persona, stops without revert; `between`
/// runs (a package upgrade) and names the new daemon binary; it takes over.
fn the_guest_comes_back_exactly(label: &str, old: &Path, between: impl FnOnce() -> PathBuf) {
    let g = Guest::boot(label, 1);
    let hv = common::real();
    let before = hv.tuning(&g.name, ReadScope::Current).unwrap();
    let before_def = hv.tuning(&g.name, ReadScope::Config).unwrap();
    let dir = common::test_dir("upgrade", label);
    std::fs::write(dir.join("personas/upgrade.toml"), persona(&g.name)).unwrap();
    // an explicit, empty config: not the package's (which observes only)
    let conf = dir.join("virt-personad.toml");
    std::fs::write(&conf, "").unwrap();
    let flags = ["--interval", "1s", "--config", conf.to_str().unwrap()];

    let mut d = Daemon::start_bin(old, &[], &dir, common::REAL_URI, &flags, &[]);
    wait_for("the previous release's persona", &d, 90, || {
        d.persona(&g.name).as_deref() == Some("upgrade-me")
    });
    let worn = hv.tuning(&g.name, ReadScope::Current).unwrap();
    assert_eq!(worn.cpu_shares, Some(1717), "{}", d.log());
    assert_eq!(worn.blkio_weight, Some(777));
    // stopped without revert: the guest keeps the persona's values
    d.signal("TERM");
    assert!(d.wait_exit(30).success(), "{}", d.log());
    assert_eq!(hv.tuning(&g.name, ReadScope::Current).unwrap(), worn);
    drop(d);

    let new = between();
    let d = Daemon::start_bin(&new, &[], &dir, common::REAL_URI, &flags, &[]);
    let v = run(Command::new(&new).arg("--version"));
    assert!(v.contains(env!("CARGO_PKG_VERSION")), "the new build: {v}");
    d.wait_until_ticks(3);
    // the worn persona is adopted: nothing re-applied, nothing quarantined
    let st = d.get(&format!("/v1/domains/{}", g.name));
    assert_eq!(st["persona"], "upgrade-me", "{st}\n{}", d.log());
    assert!(st["quarantined"].is_null(), "{st}");
    assert!(st["needs_attention"].is_null(), "{st}");
    assert_eq!(hv.tuning(&g.name, ReadScope::Current).unwrap(), worn);
    let log = d.log();
    assert!(
        !log.contains("damaged") && !log.contains("corrupt"),
        "{log}"
    );
    // the persona goes: back to exactly what the guest had, live and defined
    std::fs::remove_file(dir.join("personas/upgrade.toml")).unwrap();
    wait_for("the baseline after the upgrade", &d, 90, || {
        d.persona(&g.name).is_none()
    });
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Current).unwrap(),
        before,
        "live values after the upgrade\n{}",
        d.log()
    );
    assert_eq!(
        hv.tuning(&g.name, ReadScope::Config).unwrap(),
        before_def,
        "the persistent definition after the upgrade"
    );
}

#[test]
fn the_previous_release_hands_a_worn_persona_to_this_build_and_the_baseline_comes_back() {
    let old = previous().join("target/debug/virt-personad");
    the_guest_comes_back_exactly("bin", &old, || {
        PathBuf::from(env!("CARGO_BIN_EXE_virt-personad"))
    });
}

fn installed() -> Option<String> {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status} ${Version}", "virt-persona"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .filter(|s| s.contains("ok installed"))
}

/// Purges the package when the test ends, however it ends.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "virt-persona"])
            .output();
    }
}

fn deb_in(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("target/debian"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| panic!("a .deb in {}/target/debian", dir.display()))
}

#[test]
fn a_package_upgrade_keeps_every_baseline_and_the_worn_persona() {
    if let Some(v) = installed() {
        panic!("virt-persona is installed on this machine ({v}); this test installs, upgrades and purges it: remove it first");
    }
    let old_deb = deb_in(&previous());
    // this build's package, from the binaries of this test run (as tests/package.rs)
    run(Command::new("bash")
        .arg(root().join("scripts/package.sh"))
        .env("PROFILE", "dev")
        .env("NO_BUILD", "1"));
    let new_deb = deb_in(root());
    assert_ne!(old_deb.file_name(), new_deb.file_name(), "two versions");
    let _purge = Purge;
    run(Command::new("dpkg").arg("-i").arg(&old_deb));
    let v = installed().expect("the previous package installed");
    assert!(!v.contains(env!("CARGO_PKG_VERSION")), "{v}");
    the_guest_comes_back_exactly("deb", Path::new("/usr/sbin/virt-personad"), || {
        run(Command::new("dpkg").arg("-i").arg(&new_deb));
        let v = installed().expect("the new package installed");
        assert!(v.contains(env!("CARGO_PKG_VERSION")), "upgraded: {v}");
        PathBuf::from("/usr/sbin/virt-personad")
    });
}
