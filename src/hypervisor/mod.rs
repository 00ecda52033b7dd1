//! The hypervisor port: everything virt-persona reads from or does to libvirt.
//!
//! `libvirt` is the only implementation that touches libvirt; `fake` is an
//! in-memory recording implementation for unit tests and benchmarks.
//! All methods block (libvirt calls are synchronous RPCs): call them from a
//! dedicated thread, never from an async executor's worker.

pub mod fake;
pub mod libvirt;

use serde::{Deserialize, Serialize};

pub use crate::model::domain::{DiskInfo, DomainInfo, DomainState, InterfaceInfo};
use crate::model::tuning::{Change, DefinitionOriginal, Knob, Tuning};
use crate::units::CpuSet;

/// XML namespace of virt-persona's tags in a domain's metadata (SPEC §6).
pub const TAGS_NAMESPACE: &str = "https://virt-persona.dev/xmlns/tags/1";

/// Which statistics groups to ask for in the bulk call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatGroups {
    pub cpu: bool,
    pub balloon: bool,
    pub vcpu: bool,
    pub block: bool,
    pub interface: bool,
}

impl StatGroups {
    pub const ALL: StatGroups = StatGroups {
        cpu: true,
        balloon: true,
        vcpu: true,
        block: true,
        interface: true,
    };
}

/// Counters of one block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockCounters {
    pub name: String,
    pub path: Option<String>,
    pub rd_reqs: u64,
    pub rd_bytes: u64,
    pub wr_reqs: u64,
    pub wr_bytes: u64,
}

/// Counters of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_pkts: u64,
    pub tx_bytes: u64,
    pub tx_pkts: u64,
}

/// Raw counters of one domain from one bulk statistics call. Rates are the
/// collector's business; these are libvirt's cumulative values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainStats {
    pub name: String,
    pub uuid: String,
    pub state: Option<DomainState>,
    /// Total CPU time in nanoseconds.
    pub cpu_time_ns: Option<u64>,
    pub balloon_current_kib: Option<u64>,
    pub balloon_maximum_kib: Option<u64>,
    /// Host resident set size of the QEMU process, KiB.
    pub balloon_rss_kib: Option<u64>,
    pub vcpu_current: Option<u32>,
    /// Per-vCPU time in nanoseconds, by vCPU number.
    pub vcpu_time_ns: Vec<u64>,
    /// Per-vCPU time spent runnable but waiting on the host's run queue
    /// (`vcpu.N.delay`, the guest's steal time), nanoseconds; `None` where
    /// libvirt does not report it.
    pub vcpu_delay_ns: Vec<Option<u64>>,
    pub block: Vec<BlockCounters>,
    pub net: Vec<NetCounters>,
}

/// Facts about the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    /// Number of host CPUs libvirt knows (the size of a cpumap).
    pub cpus: u32,
    pub online: CpuSet,
    pub memory_kib: u64,
}

/// A domain lifecycle event from libvirt's event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleKind {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    Crashed,
    MigratedIn,
    MigratedOut,
    /// virt-persona's tags in the domain metadata changed.
    TagsChanged,
    Other,
}

/// Something that happened on the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HypervisorEvent {
    Lifecycle {
        name: String,
        uuid: String,
        kind: LifecycleKind,
    },
    /// The connection to libvirt went away; calls fail until it is back.
    Disconnected { reason: String },
    /// A new connection was opened after a loss.
    Reconnected,
}

/// Where a change goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApplyScope {
    /// The running domain only.
    #[default]
    Live,
    /// The running domain and its persistent definition (persona `persist = true`).
    LiveAndConfig,
    /// The persistent definition only.
    Config,
}

/// Which definition to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadScope {
    /// The running domain when it runs, else its persistent definition.
    #[default]
    Current,
    /// The persistent definition.
    Config,
}

/// Errors from the hypervisor layer. Each names the domain and, where there is
/// one, the knob; libvirt's own message is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HypervisorError {
    #[error("cannot connect to {uri}: {message}")]
    Connect { uri: String, message: String },
    #[error("not connected to libvirt ({reason}); reconnecting")]
    Disconnected { reason: String },
    #[error("domain '{0}' not found")]
    NoDomain(String),
    #[error("domain '{domain}' is not running")]
    NotRunning { domain: String },
    #[error("domain '{domain}': {knob}: {reason}")]
    Invalid {
        domain: String,
        knob: String,
        reason: String,
    },
    #[error("domain '{domain}': {knob}: {message}")]
    Knob {
        domain: String,
        knob: String,
        message: String,
    },
    /// The knob cannot be applied on this hypervisor or host at all (libvirt
    /// says the parameter or operation is unsupported, or the kernel lacks what
    /// libvirt needs for it): trying again will not help.
    #[error("domain '{domain}': {knob}: unsupported on this host: {message}")]
    Unsupported {
        domain: String,
        knob: String,
        message: String,
    },
    #[error("{what}: {message}")]
    Call { what: String, message: String },
}

pub type Result<T, E = HypervisorError> = std::result::Result<T, E>;

/// The hypervisor port.
pub trait Hypervisor: Send + Sync {
    /// Every domain (running and defined).
    fn list_domains(&self) -> Result<Vec<DomainInfo>>;
    /// One domain by name, numeric id or UUID, as virsh resolves them.
    fn domain(&self, key: &str) -> Result<DomainInfo>;
    /// Statistics of every active domain in one bulk call.
    fn all_stats(&self, groups: StatGroups) -> Result<Vec<DomainStats>>;
    /// The current value of every knob of a domain.
    fn tuning(&self, domain: &str, scope: ReadScope) -> Result<Tuning>;
    /// Sets one knob of a running domain (and its persistent definition when asked).
    fn apply(&self, domain: &str, change: &Change, scope: ApplyScope) -> Result<()>;
    /// Brings knobs of the persistent definition back to what it said before
    /// (see [`DefinitionOriginal`]): a value is written to the definition only,
    /// an original that was not set removes the knob's element from it. The
    /// running domain is not touched.
    fn restore_definition(&self, domain: &str, originals: &[DefinitionOriginal]) -> Result<()>;
    /// Replaces the domain's tags (SPEC §6).
    fn set_tags(&self, domain: &str, tags: &[String]) -> Result<()>;
    /// Host facts.
    fn host(&self) -> Result<HostInfo>;
    /// Lifecycle and connection events. Each call returns a new subscriber.
    fn events(&self) -> crossbeam_channel::Receiver<HypervisorEvent>;
    /// Where it connects (a libvirt URI).
    fn uri(&self) -> &str;
    /// Whether the connection is up right now (without trying to reconnect).
    fn is_connected(&self) -> bool;
}

/// Checks a value against libvirt's documented range for its knob, before it
/// reaches libvirt (some drivers accept nonsense silently). Returns the reason.
/// The range of a knob of the table is its row's ([`crate::model::knobs::Input::check`]).
pub fn check_value(change: &Change) -> std::result::Result<(), String> {
    use crate::model::knobs::Refusal;
    use crate::model::tuning::{BlkioField, KnobValue};
    let refused = |r: Refusal| match r {
        Refusal::WrongType => format!(
            "value '{}' has the wrong type for {}",
            change.value, change.knob
        ),
        Refusal::Range(reason) => reason,
    };
    if let Some(input) = change
        .knob
        .row()
        .map(|r| r.input)
        .or_else(|| change.knob.device_row().map(|r| r.input))
    {
        return input.check(&change.value).map_err(refused);
    }
    match (&change.knob, &change.value) {
        (
            Knob::BlkioDevice {
                field: BlkioField::Weight,
                ..
            },
            KnobValue::Unsigned(v),
        ) if *v != 0 && !(100..=1000).contains(v) => Err(format!(
            "{v} is out of range: expected 100..1000, or 0 to remove"
        )),
        (Knob::Disk { .. }, KnobValue::Throttle { throttle }) => {
            crate::model::knobs::check_disk_limits(&throttle.limits)
        }
        (Knob::BlkioDevice { .. }, KnobValue::Unsigned(_))
        | (Knob::Interface { .. }, KnobValue::Bandwidth(_)) => Ok(()),
        (knob, value) => Err(format!("value '{value}' has the wrong type for {knob}")),
    }
}
