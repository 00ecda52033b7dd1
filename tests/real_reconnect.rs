//! libvirtd stopped and restarted under a live connection: calls fail with a
//! typed error (never a panic), the loss and the return arrive as events, and
//! the connection comes back by itself. Its own test binary, because it stops
//! the libvirtd every other real-host test uses (cargo runs binaries one by one).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use virt_persona::hypervisor::{Hypervisor, HypervisorError, HypervisorEvent, StatGroups};

fn libvirtd_running() -> bool {
    Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts libvirtd again even when the test fails half-way.
struct Restart;
impl Drop for Restart {
    fn drop(&mut self) {
        if !libvirtd_running() {
            let _ = Command::new("/usr/sbin/libvirtd").arg("-d").status();
        }
        for _ in 0..100 {
            if Command::new("virsh")
                .args(["-c", common::REAL_URI, "version"])
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn survives_libvirtd_stopping_and_coming_back() {
    let hv = common::real();
    let events = hv.events();
    assert!(hv.list_domains().is_ok());
    let _restart = Restart;

    let st = Command::new("pkill")
        .args(["-x", "libvirtd"])
        .status()
        .expect("pkill");
    assert!(st.success(), "libvirtd was running");
    let deadline = Instant::now() + Duration::from_secs(15);
    while libvirtd_running() {
        assert!(Instant::now() < deadline, "libvirtd did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }

    // calls now fail with a typed error
    let mut saw_error = false;
    for _ in 0..20 {
        match hv.all_stats(StatGroups::ALL) {
            Err(HypervisorError::Disconnected { .. } | HypervisorError::Connect { .. }) => {
                saw_error = true;
                break;
            }
            Err(other) => panic!("unexpected error kind while libvirtd is down: {other:?}"),
            Ok(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    assert!(saw_error, "calls fail while libvirtd is down");
    assert!(!hv.is_connected());
    let lost = events
        .recv_timeout(Duration::from_secs(10))
        .expect("a disconnect event");
    assert!(
        matches!(lost, HypervisorEvent::Disconnected { .. }),
        "{lost:?}"
    );

    let st = Command::new("/usr/sbin/libvirtd")
        .arg("-d")
        .status()
        .expect("start libvirtd");
    assert!(st.success());

    // the connection comes back by itself within the backoff (at most 30 s)
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        if hv.list_domains().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "did not reconnect");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(hv.is_connected());
    let back = loop {
        match events
            .recv_timeout(Duration::from_secs(5))
            .expect("a reconnect event")
        {
            HypervisorEvent::Reconnected => break true,
            _ => continue,
        }
    };
    assert!(back);
    assert!(hv.all_stats(StatGroups::ALL).is_ok());
}
