//! Watches the personas directory and says when to reload.
//!
//! Watches the directory itself (not the files), because editors and config
//! management replace files by renaming a temporary file into place. Events are
//! debounced: a reload is signalled once things have been quiet for
//! [`DEBOUNCE`], or at the latest [`MAX_DELAY`] after the first event, so a file
//! written in several steps is read once, whole.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use notify::{RecursiveMode, Watcher};
use tracing::{debug, warn};

use crate::model::loader::is_persona_file;

pub const DEBOUNCE: Duration = Duration::from_millis(200);
pub const MAX_DELAY: Duration = Duration::from_millis(1000);

/// Keeps the watch alive; dropping it stops the watch and closes the channel.
pub struct DirWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// Watches `dir`; the receiver gets one message per settled burst of changes
/// to persona files.
pub fn watch(dir: &Path) -> Result<(DirWatcher, Receiver<()>), notify::Error> {
    let (raw_tx, raw_rx) = crossbeam_channel::unbounded::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = raw_tx.send(ev);
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    let dir: PathBuf = dir.to_path_buf();
    std::thread::Builder::new()
        .name("persona-watch".into())
        .spawn(move || {
            let relevant = |ev: &notify::Result<notify::Event>| match ev {
                // reading a file (our own reload) raises access events: not a change
                Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => false,
                Ok(e) => e.paths.iter().any(|p| is_persona_file(p)) || e.need_rescan(),
                Err(err) => {
                    warn!(dir = %dir.display(), error = %err, "watching the personas directory");
                    true
                }
            };
            while let Ok(ev) = raw_rx.recv() {
                if !relevant(&ev) {
                    continue;
                }
                let first = Instant::now();
                let mut last = first;
                loop {
                    let wait = DEBOUNCE
                        .saturating_sub(last.elapsed())
                        .min(MAX_DELAY.saturating_sub(first.elapsed()));
                    if wait.is_zero() {
                        break;
                    }
                    match raw_rx.recv_timeout(wait) {
                        Ok(ev) if relevant(&ev) => last = Instant::now(),
                        Ok(_) => {}
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                debug!("persona files changed");
                // a full channel already holds a pending reload: that one will see this change
                if let Err(crossbeam_channel::TrySendError::Disconnected(_)) = tx.try_send(()) {
                    return;
                }
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok((DirWatcher { _watcher: watcher }, rx))
}
