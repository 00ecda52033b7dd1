//! The Debian package: built with cargo-deb from the binaries this test run
//! built (`PROFILE=dev NO_BUILD=1 scripts/package.sh`; the released package
//! uses the LTO profile, same packaging), its file list and control data
//! checked, installed with `dpkg -i` on this machine (no systemd runs here:
//! the maintainer scripts must cope), run from /usr/sbin, and removed and
//! purged cleanly.

mod common;

use common::run_ok as run;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "virt-persona"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
}

#[test]
fn the_package_builds_installs_runs_and_goes_away() {
    assert!(
        !installed(),
        "virt-persona is installed on this machine; this test installs and purges it: remove it first"
    );
    // the binaries of this build go into the package
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_virt-personad"));
    assert!(bin.starts_with(root().join("target/debug")), "{bin:?}");
    run(Command::new("bash")
        .arg(root().join("scripts/package.sh"))
        .env("PROFILE", "dev")
        .env("NO_BUILD", "1"));
    let deb = std::fs::read_dir(root().join("target/debian"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb in target/debian");

    let files = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for want in [
        "./usr/sbin/virt-personad",
        "./usr/bin/virt-persona",
        "./usr/lib/systemd/system/virt-personad.service",
        "./etc/virt-persona/virt-personad.toml",
        "./etc/virt-persona/personas.d/README",
        "./usr/share/doc/virt-persona/examples/web-peak.toml",
        "./usr/share/doc/virt-persona/personas.md",
        "./usr/share/man/man1/virt-persona.1.gz",
        "./usr/share/man/man8/virt-personad.8.gz",
        "./usr/share/bash-completion/completions/virt-persona",
        "./usr/share/zsh/vendor-completions/_virt-persona",
        "./usr/share/fish/vendor_completions.d/virt-persona.fish",
    ] {
        assert!(
            files.lines().any(|l| l.ends_with(want)),
            "{want} missing:\n{files}"
        );
    }
    let depends = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"));
    assert!(depends.contains("libvirt0"), "{depends}");
    let tmp = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(tmp.path()));
    let conffiles = std::fs::read_to_string(tmp.path().join("conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/virt-persona/virt-personad.toml"),
        "{conffiles}"
    );

    // installed without systemd running: the maintainer scripts cope
    run(Command::new("dpkg").arg("-i").arg(&deb));
    let purge = Purge;
    let v = run(Command::new("/usr/sbin/virt-personad").arg("--version"));
    assert!(v.contains(env!("CARGO_PKG_VERSION")), "{v}");
    run(Command::new("/usr/bin/virt-persona").arg("--version"));
    let conf = std::fs::read_to_string("/etc/virt-persona/virt-personad.toml").unwrap();
    assert!(
        conf.contains("\ndry_run = true"),
        "installs observing: {conf}"
    );
    run(Command::new("systemd-analyze")
        .arg("verify")
        .arg("/usr/lib/systemd/system/virt-personad.service"));
    run(Command::new("/usr/bin/virt-persona")
        .arg("persona-validate")
        .arg("/usr/share/doc/virt-persona/examples/web-peak.toml"));

    // removed: the programs go, the admin's config stays; purged: all gone
    run(Command::new("dpkg").args(["-r", "virt-persona"]));
    assert!(!Path::new("/usr/sbin/virt-personad").exists());
    assert!(Path::new("/etc/virt-persona/virt-personad.toml").exists());
    run(Command::new("dpkg").args(["-P", "virt-persona"]));
    assert!(!Path::new("/etc/virt-persona/virt-personad.toml").exists());
    assert!(!installed());
    drop(purge);
}

/// Purges the package even when an assertion fails half-way.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if installed() {
            let _ = Command::new("dpkg").args(["-P", "virt-persona"]).output();
        }
    }
}
