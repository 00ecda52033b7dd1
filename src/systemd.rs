//! The systemd notify protocol (`Type=notify`), through the `sd-notify`
//! crate: readiness once the personas are loaded and a first tick succeeded,
//! a status line `systemctl status` shows, watchdog pings sent by the control
//! loop itself (a loop stuck in a libvirt call stops pinging and systemd
//! restarts the service), RELOADING/READY around a reload, STOPPING.
//! Every call is a no-op without `NOTIFY_SOCKET` (not started by systemd).

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

/// The daemon's side of the protocol.
#[derive(Debug, Default)]
pub struct Notifier {
    ready: bool,
    status: String,
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "systemd notification not sent");
    }
}

impl Notifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// How often to ping: half of `WatchdogSec=` (`WATCHDOG_USEC`), if set.
    pub fn watchdog_interval() -> Option<Duration> {
        sd_notify::watchdog_enabled().map(|d| d / 2)
    }

    /// READY=1 with the status, once.
    pub fn ready(&mut self, status: &str) {
        if !self.ready {
            self.ready = true;
            self.status = status.to_string();
            send(&[NotifyState::Ready, NotifyState::Status(status)]);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// STATUS=… when it changed.
    pub fn status(&mut self, status: &str) {
        if self.status != status {
            self.status = status.to_string();
            send(&[NotifyState::Status(status)]);
        }
    }

    /// WATCHDOG=1: the loop is alive.
    pub fn watchdog(&self) {
        send(&[NotifyState::Watchdog]);
    }

    /// RELOADING=1 (with the monotonic time systemd 253+ asks for).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    /// READY=1 after a reload.
    pub fn reloaded(&self) {
        if self.ready {
            send(&[NotifyState::Ready, NotifyState::Status(&self.status)]);
        }
    }

    /// STOPPING=1.
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

/// The one-line status `systemctl status` shows.
pub fn status_line(
    domains: usize,
    wearing: usize,
    personas: usize,
    dry_run: bool,
    problem: Option<&str>,
) -> String {
    let mut s = format!(
        "{domains} running domain(s), {wearing} wearing a persona, {personas} persona(s) in force"
    );
    if dry_run {
        s.push_str("; DRY RUN: nothing is changed");
    }
    if let Some(p) = problem {
        s.push_str("; ");
        s.push_str(p);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            status_line(3, 1, 4, false, None),
            "3 running domain(s), 1 wearing a persona, 4 persona(s) in force"
        );
        assert!(status_line(0, 0, 0, true, Some("libvirt unreachable"))
            .ends_with("; DRY RUN: nothing is changed; libvirt unreachable"));
    }
}
