//! The systemd notify protocol (`Type=notify`), through the `sd-notify`
//! crate: readiness once the personas are loaded and a first tick succeeded,
//! a status line `systemctl status` shows, watchdog pings sent by the control
//! loop itself, also after each libvirt call a long transition completes
//! (a loop stuck in one libvirt call stops pinging and systemd restarts the
//! service), RELOADING/READY around a reload, STOPPING.
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

    /// Watchdog pings from inside a long transition (see [`Progress`]), or
    /// `None` without a watchdog.
    pub fn progress() -> Option<Progress> {
        Self::watchdog_interval().map(Progress::every)
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

/// WATCHDOG=1 while a transition makes progress: the loop reports each libvirt
/// call it completed ([`Progress::made`]) and a ping goes out when the last
/// one is `every` old. A transition of many knobs on a slow host is not
/// killed half-way; one call that never returns still stops the pings.
#[derive(Debug)]
pub struct Progress {
    every_ms: u64,
    start: std::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn every(every: Duration) -> Progress {
        Progress {
            every_ms: every.as_millis().min(u64::MAX as u128) as u64,
            start: std::time::Instant::now(),
            last_ms: Default::default(),
        }
    }

    /// A call completed: pings when the last ping is `every` old. True when
    /// it pinged.
    pub fn made(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = self.start.elapsed().as_millis().min(u64::MAX as u128) as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.every_ms {
            return false;
        }
        self.last_ms.store(now, Ordering::Relaxed);
        send(&[NotifyState::Watchdog]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ping goes out when the last one is `every` old, never more often.
    #[test]
    fn progress_pings_at_most_once_per_interval() {
        let now = Progress::every(Duration::ZERO);
        assert!(now.made() && now.made());
        let hourly = Progress::every(Duration::from_secs(3600));
        assert!(!hourly.made(), "the loop pinged at its start");
    }

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
