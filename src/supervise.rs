//! The daemon's helpers (the forecast worker thread, the gossip task) are
//! supervised by the control loop: one that ends or panics is restarted
//! after a backoff (1 s, doubling up to 5 minutes; back to 1 s once it has
//! run for 10 minutes), said in the log and in `/healthz`, while the loop
//! goes on controlling domains. Pure bookkeeping, `now` passed in.

use serde::Serialize;

use crate::time::Millis;

const FIRST_DELAY_MS: Millis = 1_000;
const MAX_DELAY_MS: Millis = 300_000;
/// A helper that ran this long before it failed starts its backoff again.
const HEALTHY_MS: Millis = 600_000;

/// Whether a helper runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperState {
    Running,
    /// Down; started again at `restart_at`.
    Restarting,
}

/// One helper, as `/healthz` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HelperStatus {
    pub name: &'static str,
    pub state: HelperState,
    /// Times it was started again after a failure.
    pub restarts: u64,
    /// Why it last ended, if it did.
    pub last_failure: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub last_failure_at: Option<Millis>,
    /// When it is started again (while restarting).
    pub restart_at: Option<Millis>,
}

impl HelperStatus {
    pub fn is_down(&self) -> bool {
        self.state != HelperState::Running
    }
}

/// The restart bookkeeping of one helper.
#[derive(Debug, Clone)]
pub struct Restarts {
    status: HelperStatus,
    started_at: Millis,
    delay_ms: Millis,
}

impl Restarts {
    /// A helper started at `now`.
    pub fn new(name: &'static str, now: Millis) -> Restarts {
        Restarts {
            status: HelperStatus {
                name,
                state: HelperState::Running,
                restarts: 0,
                last_failure: None,
                last_failure_at: None,
                restart_at: None,
            },
            started_at: now,
            delay_ms: FIRST_DELAY_MS,
        }
    }

    /// It ended (`why`) at `now`: it is due again after the backoff.
    pub fn failed(&mut self, why: String, now: Millis) {
        if now - self.started_at >= HEALTHY_MS {
            self.delay_ms = FIRST_DELAY_MS;
        }
        self.status.state = HelperState::Restarting;
        self.status.last_failure = Some(why);
        self.status.last_failure_at = Some(now);
        self.status.restart_at = Some(now + self.delay_ms);
        self.delay_ms = (self.delay_ms * 2).min(MAX_DELAY_MS);
    }

    /// Down, and its restart is due.
    pub fn due(&self, now: Millis) -> bool {
        self.status.restart_at.is_some_and(|t| now >= t)
    }

    pub fn is_down(&self) -> bool {
        self.status.is_down()
    }

    /// Started again at `now`.
    pub fn restarted(&mut self, now: Millis) {
        self.status.state = HelperState::Running;
        self.status.restarts += 1;
        self.status.restart_at = None;
        self.started_at = now;
    }

    /// A restart that failed too (`why`): tried again after a longer wait.
    pub fn restart_failed(&mut self, why: String, now: Millis) {
        self.started_at = now;
        self.failed(why, now);
    }

    pub fn status(&self) -> &HelperStatus {
        &self.status
    }
}

/// The text of a panic's payload (a `&str` or a `String`; anything else is
/// named as such).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_is_capped_and_starts_again_after_a_healthy_run() {
        let mut r = Restarts::new("forecast", 0);
        assert!(!r.is_down() && !r.due(0));
        r.failed("panicked: boom".into(), 100);
        assert!(r.is_down());
        assert_eq!(r.status().restart_at, Some(1_100));
        assert!(!r.due(1_099) && r.due(1_100));
        r.restarted(1_100);
        assert_eq!(
            (r.status().state, r.status().restarts),
            (HelperState::Running, 1)
        );
        assert_eq!(r.status().last_failure.as_deref(), Some("panicked: boom"));
        // failing again at once: 2 s, then 4 s ...
        r.failed("again".into(), 1_200);
        assert_eq!(r.status().restart_at, Some(3_200));
        r.restart_failed("cannot start".into(), 3_200);
        assert_eq!(r.status().restart_at, Some(7_200));
        for _ in 0..20 {
            r.restart_failed("cannot start".into(), 10_000);
        }
        assert_eq!(r.status().restart_at, Some(10_000 + MAX_DELAY_MS));
        // up again, and ten healthy minutes later a failure waits 1 s
        r.restarted(400_000);
        r.failed("late".into(), 400_000 + HEALTHY_MS);
        assert_eq!(
            r.status().restart_at,
            Some(400_000 + HEALTHY_MS + FIRST_DELAY_MS)
        );
    }

    #[test]
    fn panic_messages_are_read_from_either_payload() {
        let p = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(&*p), "plain");
        let n = 3;
        let p = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(panic_message(&*p), "formatted 3");
    }
}
