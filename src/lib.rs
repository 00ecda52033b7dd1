//! virt-persona: adaptive tuning personas for KVM/libvirt domains.
//!
//! The pure ring (`model`, `units`) knows personas and numbers; the port ring
//! (`hypervisor`) is the only place that talks to libvirt. Binaries under
//! `src/bin/` do the wiring.

pub mod api;
pub mod cluster;
pub mod collector;
pub mod config;
pub mod files;
pub mod forecast;
pub mod forecaster;
pub mod history;
pub mod host;
pub mod hypervisor;
pub mod issued;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod planner;
pub mod reconciler;
pub mod rules;
pub mod sources;
pub mod store;
pub mod supervise;
pub mod systemd;
pub mod time;
pub mod units;
pub mod watch;

/// Version string reported by both binaries and, later, to the cluster.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
