//! What virt-persona knows of a domain (the model's view; the hypervisor
//! port fills it in).

use serde::{Deserialize, Serialize};

/// Run state of a domain, as virsh names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    Running,
    Blocked,
    Paused,
    Shutdown,
    ShutOff,
    Crashed,
    Suspended,
    NoState,
}

impl DomainState {
    /// True while the domain has a live QEMU process whose tuning can be changed.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            DomainState::Running
                | DomainState::Blocked
                | DomainState::Paused
                | DomainState::Shutdown
        )
    }
    /// virsh's wording ("running", "shut off", …).
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Running => "running",
            DomainState::Blocked => "idle",
            DomainState::Paused => "paused",
            DomainState::Shutdown => "in shutdown",
            DomainState::ShutOff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::Suspended => "pmsuspended",
            DomainState::NoState => "no state",
        }
    }
    /// From libvirt's virDomainState number.
    pub fn from_raw(v: i64) -> Self {
        match v {
            1 => DomainState::Running,
            2 => DomainState::Blocked,
            3 => DomainState::Paused,
            4 => DomainState::Shutdown,
            5 => DomainState::ShutOff,
            6 => DomainState::Crashed,
            7 => DomainState::Suspended,
            _ => DomainState::NoState,
        }
    }
}

/// A disk of a domain: its target (vda) and host source (file or block device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub target: String,
    pub source: Option<String>,
}

/// A network interface of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    /// Host-side device (vnet0); present while the domain runs.
    pub target: Option<String>,
    pub mac: Option<String>,
}

/// What virt-persona needs to know about a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub name: String,
    pub uuid: String,
    /// Present while the domain runs.
    pub id: Option<u32>,
    pub state: DomainState,
    pub persistent: bool,
    pub vcpus: u32,
    /// The ids of the domain's iothreads (`<iothreads>`, `<iothreadids>`).
    #[serde(default)]
    pub iothreads: Vec<u32>,
    /// Current memory in KiB.
    pub memory_kib: u64,
    pub max_memory_kib: u64,
    pub disks: Vec<DiskInfo>,
    pub interfaces: Vec<InterfaceInfo>,
    pub tags: Vec<String>,
}
