//! Placeholder replaced by the persona directory watcher.
