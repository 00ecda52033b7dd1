//! Concrete tuning of one domain, as libvirt reports and accepts it, and the
//! single-knob changes that move a domain from one tuning to another.
//!
//! Units are libvirt's own so that a value read back compares equal to the value
//! written: memory limits in KiB, scheduler period/quota in microseconds,
//! interface average/peak in KiB/s and burst in KiB, blkio bytes per second in bytes.
//! Every field is optional: `None` means "not known / not touched".

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::knobs::{DeviceFamily, DeviceRow, DiskField, Family, Index, Input, Row, ScalarValue};
use crate::units::CpuSet;

/// libvirt's "no limit" for memory parameters (VIR_DOMAIN_MEMORY_PARAM_UNLIMITED), in KiB.
pub const MEMORY_UNLIMITED_KIB: u64 = 9_007_199_254_740_991;

/// Per-device block I/O tuning (virsh blkiotune --device-*).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlkioDeviceTuning {
    pub weight: Option<u32>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
    pub read_bytes_per_sec: Option<u64>,
    pub write_bytes_per_sec: Option<u64>,
}

/// One direction of interface bandwidth (virsh domiftune), libvirt units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bandwidth {
    /// KiB/s; 0 means no limit in this direction.
    pub average: u32,
    /// KiB/s; 0 means not set.
    pub peak: u32,
    /// KiB; 0 means not set.
    pub burst: u32,
}

/// Bandwidth of one interface, both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InterfaceTuning {
    pub inbound: Option<Bandwidth>,
    pub outbound: Option<Bandwidth>,
}

/// QEMU's throttle of one disk (virsh blkdeviotune), libvirt units: bytes
/// and operations per second, burst lengths in seconds. Only limits that are
/// set are kept (libvirt's 0 is "no limit").
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskThrottle {
    pub limits: BTreeMap<DiskField, u64>,
    /// Throttle group shared with other disks (libvirt's `group_name`).
    pub group: Option<String>,
}

impl DiskThrottle {
    /// As libvirt reads it back: no zero limits, no empty group.
    pub fn normalized(mut self) -> DiskThrottle {
        self.limits.retain(|_, v| *v != 0);
        self.group = self.group.filter(|g| !g.is_empty());
        self
    }
}

impl fmt::Display for DiskThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.limits {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{}={v}", k.key())?;
        }
        if let Some(g) = &self.group {
            write!(f, "{}group={g}", if first { "" } else { " " })?;
        } else if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// A field of a per-device blkio setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlkioField {
    Weight,
    ReadIops,
    WriteIops,
    ReadBytesPerSec,
    WriteBytesPerSec,
}

impl BlkioField {
    pub const ALL: [BlkioField; 5] = [
        BlkioField::Weight,
        BlkioField::ReadIops,
        BlkioField::WriteIops,
        BlkioField::ReadBytesPerSec,
        BlkioField::WriteBytesPerSec,
    ];
    /// libvirt's typed-parameter name.
    pub fn param(self) -> &'static str {
        match self {
            BlkioField::Weight => "device_weight",
            BlkioField::ReadIops => "device_read_iops_sec",
            BlkioField::WriteIops => "device_write_iops_sec",
            BlkioField::ReadBytesPerSec => "device_read_bytes_sec",
            BlkioField::WriteBytesPerSec => "device_write_bytes_sec",
        }
    }
    pub fn get(self, d: &BlkioDeviceTuning) -> Option<u64> {
        match self {
            BlkioField::Weight => d.weight.map(u64::from),
            BlkioField::ReadIops => d.read_iops,
            BlkioField::WriteIops => d.write_iops,
            BlkioField::ReadBytesPerSec => d.read_bytes_per_sec,
            BlkioField::WriteBytesPerSec => d.write_bytes_per_sec,
        }
    }
    /// Sets a field. 0 is libvirt's "no setting" (virsh clears with 0): in a
    /// baseline it records an original that was absent.
    pub fn set(self, d: &mut BlkioDeviceTuning, v: u64) {
        match self {
            BlkioField::Weight => d.weight = Some(u32::try_from(v).unwrap_or(u32::MAX)),
            BlkioField::ReadIops => d.read_iops = Some(v),
            BlkioField::WriteIops => d.write_iops = Some(v),
            BlkioField::ReadBytesPerSec => d.read_bytes_per_sec = Some(v),
            BlkioField::WriteBytesPerSec => d.write_bytes_per_sec = Some(v),
        }
    }
    /// Forgets a field (not even "absent" is recorded for it).
    pub fn clear(self, d: &mut BlkioDeviceTuning) {
        match self {
            BlkioField::Weight => d.weight = None,
            BlkioField::ReadIops => d.read_iops = None,
            BlkioField::WriteIops => d.write_iops = None,
            BlkioField::ReadBytesPerSec => d.read_bytes_per_sec = None,
            BlkioField::WriteBytesPerSec => d.write_bytes_per_sec = None,
        }
    }
}

/// Traffic direction of an interface, seen from the guest's host side as libvirt names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn prefix(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Expands the knob table ([`crate::knob_table!`]) into the model: the
/// `Tuning` fields, the `Knob` variants and the per-row code of get/set/clear,
/// for the domain-wide rows and the per-device ones.
macro_rules! define_tuning {
    (rows { $( $variant:ident $field:ident : $ty:ty { $($row:tt)* } )* }
     devices { $( $dvariant:ident $dfield:ident [$idx:ident : $ity:ty] : $dty:ty { $($drow:tt)* } )* }) => {
        /// The tuning of one domain: every knob virt-persona reads or sets.
        /// The domain-wide knobs and the per-device ones with one value per
        /// device are the rows of the knob table ([`crate::model::knobs`]);
        /// the maps after them hold the per-device throttles and bandwidth.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Tuning {
            $(
                #[doc = concat!("`", stringify!($dfield), "`: ", stringify!($idx), " -> value.")]
                pub $dfield: BTreeMap<$ity, $dty>,
            )*
            $( pub $field: Option<$ty>, )*
            /// Host block device path -> limits.
            pub blkio_devices: BTreeMap<String, BlkioDeviceTuning>,
            /// Interface target device (vnet0) -> bandwidth.
            pub interfaces: BTreeMap<String, InterfaceTuning>,
            /// Disk target (vda) -> QEMU's throttle of it; no entry is no throttle.
            pub disks: BTreeMap<String, DiskThrottle>,
        }

        /// One tunable value of a domain. Stored records name it by its tag
        /// (`{"knob": "cpu_shares"}`): a row's key.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(tag = "knob", rename_all = "snake_case")]
        pub enum Knob {
            $( $dvariant { $idx: $ity }, )*
            $( $variant, )*
            BlkioDevice {
                path: String,
                field: BlkioField,
            },
            /// The whole bandwidth of one direction of one interface (average, peak, burst).
            Interface {
                target: String,
                direction: Direction,
            },
            /// The whole throttle set of one disk (libvirt resets what a call
            /// leaves out, so a disk's fields move together).
            Disk {
                target: String,
            },
        }

        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        enum RowIndex { $( $variant, )* }
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        enum DeviceRowIndex { $( $dvariant, )* }

        /// The rows of the knob table, in its order.
        pub static ROWS: &[Row] = &[
            $( Row { key: stringify!($field), kind: <$ty as ScalarValue>::KIND, $($row)* ..Row::BASE }, )*
        ];

        /// The per-device rows of the knob table, in its order.
        pub static DEVICE_ROWS: &[DeviceRow] = &[
            $( DeviceRow { key: stringify!($dfield), $($drow)* }, )*
        ];

        impl Knob {
            /// The domain-wide knobs (the table's rows), in the table's order.
            pub const SCALARS: &'static [Knob] = &[ $( Knob::$variant, )* ];

            /// Every `[tuning]` key a knob comes from, as a persona file names it.
            pub const KEYS: &'static [&'static str] = &[
                $( stringify!($dfield), )*
                $( stringify!($field), )*
                "blkio_device",
                "interface",
                "disk",
            ];

            /// The knob's row in the table; `None` for per-device knobs.
            pub fn row(&self) -> Option<&'static Row> {
                match self {
                    $( Knob::$variant => Some(&ROWS[RowIndex::$variant as usize]), )*
                    _ => None,
                }
            }

            /// The knob's per-device row in the table, if it has one.
            pub fn device_row(&self) -> Option<&'static DeviceRow> {
                match self {
                    $( Knob::$dvariant { .. } => Some(&DEVICE_ROWS[DeviceRowIndex::$dvariant as usize]), )*
                    _ => None,
                }
            }

            /// The device a per-device row's knob is for, as the domain names it.
            pub fn device(&self) -> Option<String> {
                match self {
                    $( Knob::$dvariant { $idx } => Some($idx.to_string()), )*
                    _ => None,
                }
            }

            /// The knob of a per-device row's `key` for one device, if `device`
            /// can name one.
            pub fn for_device(key: &str, device: &str) -> Option<Knob> {
                match key {
                    $( stringify!($dfield) => device.trim().parse::<$ity>().ok().map(|$idx| Knob::$dvariant { $idx }), )*
                    _ => None,
                }
            }

            /// The `[tuning]` key this knob comes from (`required` names these).
            pub fn key(&self) -> &'static str {
                match self {
                    $( Knob::$dvariant { .. } => stringify!($dfield), )*
                    $( Knob::$variant => stringify!($field), )*
                    Knob::BlkioDevice { .. } => "blkio_device",
                    Knob::Interface { .. } => "interface",
                    Knob::Disk { .. } => "disk",
                }
            }
        }

        impl Tuning {
            fn get_row(&self, knob: &Knob) -> Option<KnobValue> {
                match knob {
                    $( Knob::$dvariant { $idx } => self.$dfield.get($idx).map(ScalarValue::to_value), )*
                    $( Knob::$variant => self.$field.as_ref().map(ScalarValue::to_value), )*
                    _ => None,
                }
            }
            /// `false` when `knob` has no row.
            fn set_row(&mut self, knob: &Knob, value: &KnobValue) -> bool {
                match knob {
                    $( Knob::$dvariant { $idx } => {
                        if let Some(v) = <$dty as ScalarValue>::from_value(value) {
                            self.$dfield.insert($idx.clone(), v);
                        }
                        true
                    } )*
                    $( Knob::$variant => {
                        if let Some(v) = <$ty as ScalarValue>::from_value(value) {
                            self.$field = Some(v);
                        }
                        true
                    } )*
                    _ => false,
                }
            }
            /// `false` when `knob` has no row.
            fn clear_row(&mut self, knob: &Knob) -> bool {
                match knob {
                    $( Knob::$dvariant { $idx } => { self.$dfield.remove($idx); true } )*
                    $( Knob::$variant => { self.$field = None; true } )*
                    _ => false,
                }
            }
            /// The knobs of the per-device rows this tuning has a value for.
            pub fn device_knobs(&self) -> Vec<Knob> {
                let mut out = Vec::new();
                $( out.extend(self.$dfield.keys().map(|$idx| Knob::$dvariant { $idx: $idx.clone() })); )*
                out
            }
        }
    };
}

crate::knob_table!(define_tuning);

impl Knob {
    /// The value that means "not set" for knobs that can be absent (a block
    /// device without a throttle, an interface without bandwidth): what an
    /// original that was absent is recorded and restored as, cleared the way
    /// virsh clears it (0). `None` for knobs that always have a value.
    pub fn absent(&self) -> Option<KnobValue> {
        match self {
            Knob::BlkioDevice { .. } => Some(KnobValue::Unsigned(0)),
            Knob::Interface { .. } => Some(KnobValue::Bandwidth(Bandwidth::default())),
            Knob::Disk { .. } => Some(KnobValue::Throttle {
                throttle: DiskThrottle::default(),
            }),
            _ => None,
        }
    }
}

impl Knob {
    /// Whether the device this knob belongs to is still part of `domain`
    /// (an interface by target or MAC, a disk by target, an iothread by id).
    /// Domain-wide knobs and vCPU pins (vCPUs come and go with hotplug, their
    /// pins with them) always are. An original of a device that is gone can
    /// never be written back.
    pub fn device_in(&self, domain: &crate::model::domain::DomainInfo) -> bool {
        match self {
            Knob::Interface { target, .. } => domain.interfaces.iter().any(|i| {
                i.target.as_deref() == Some(target.as_str()) || i.mac.as_deref() == Some(target)
            }),
            Knob::Disk { target } => domain.disks.iter().any(|d| d.target == *target),
            k => match (k.device_row(), k.device()) {
                (Some(row), Some(d)) => !row.index.can_go() || row.index.ids(domain).contains(&d),
                _ => true,
            },
        }
    }
}

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Knob::BlkioDevice { path, field } => {
                write!(f, "blkio_device[{path}].{}", field.param())
            }
            Knob::Interface { target, direction } => {
                write!(f, "interface[{target}].{}", direction.prefix())
            }
            Knob::Disk { target } => write!(f, "disk[{target}]"),
            k => match k.device() {
                Some(d) => write!(f, "{}[{d}]", k.key()),
                None => f.write_str(k.key()),
            },
        }
    }
}

/// The value a knob is set to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KnobValue {
    CpuSet(CpuSet),
    Unsigned(u64),
    Signed(i64),
    /// Before `Bandwidth`: an untagged `Bandwidth` (all fields defaulted)
    /// would take any object, this one needs its `throttle` key.
    Throttle {
        throttle: DiskThrottle,
    },
    Bandwidth(Bandwidth),
}

impl fmt::Display for KnobValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KnobValue::CpuSet(c) => write!(f, "{c}"),
            KnobValue::Unsigned(v) => write!(f, "{v}"),
            KnobValue::Signed(v) => write!(f, "{v}"),
            KnobValue::Bandwidth(b) => {
                write!(f, "average={} peak={} burst={}", b.average, b.peak, b.burst)
            }
            KnobValue::Throttle { throttle } => write!(f, "{throttle}"),
        }
    }
}

impl Serialize for CpuSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CpuSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a domain's persistent definition said for one knob before a persona
/// that persists wrote it: a value, or `None` when the definition did not set
/// the knob at all (no `<shares>` in `<cputune>`, no `<soft_limit>` …). A
/// revert brings the definition back to exactly this, removing the element
/// where it was absent, instead of writing the live value into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinitionOriginal {
    pub knob: Knob,
    pub value: Option<KnobValue>,
}

impl fmt::Display for DefinitionOriginal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.knob),
            None => write!(f, "{}=(not set)", self.knob),
        }
    }
}

/// Set one knob to one value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    #[serde(flatten)]
    pub knob: Knob,
    pub value: KnobValue,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.knob, self.value)
    }
}

impl Tuning {
    /// The current value of a knob, if known.
    pub fn get(&self, knob: &Knob) -> Option<KnobValue> {
        match knob {
            Knob::BlkioDevice { path, field } => self
                .blkio_devices
                .get(path)
                .and_then(|d| field.get(d))
                .map(KnobValue::Unsigned),
            Knob::Interface { target, direction } => self
                .interfaces
                .get(target)
                .and_then(|i| match direction {
                    Direction::Inbound => i.inbound,
                    Direction::Outbound => i.outbound,
                })
                .map(KnobValue::Bandwidth),
            Knob::Disk { target } => self.disks.get(target).map(|d| KnobValue::Throttle {
                throttle: d.clone(),
            }),
            row => self.get_row(row),
        }
    }

    /// The value of a knob, with "absent" as its own value where a knob can be
    /// absent ([`Knob::absent`]): what to record as an original and compare.
    pub fn get_or_absent(&self, knob: &Knob) -> Option<KnobValue> {
        self.get(knob).or_else(|| knob.absent())
    }

    /// As a hypervisor reads it back: a per-device blkio setting of 0 is no
    /// setting at all (libvirt lists nothing for it), so it is dropped.
    pub fn normalized(mut self) -> Tuning {
        for d in self.blkio_devices.values_mut() {
            for f in BlkioField::ALL {
                if f.get(d) == Some(0) {
                    f.clear(d);
                }
            }
        }
        self.blkio_devices
            .retain(|_, d| *d != BlkioDeviceTuning::default());
        self.disks = std::mem::take(&mut self.disks)
            .into_iter()
            .map(|(k, d)| (k, d.normalized()))
            .filter(|(_, d)| *d != DiskThrottle::default())
            .collect();
        self
    }

    /// Records a change as applied. A value of the wrong shape for the knob is ignored.
    pub fn set(&mut self, change: &Change) {
        if self.set_row(&change.knob, &change.value) {
            return;
        }
        match (&change.knob, &change.value) {
            (Knob::BlkioDevice { path, field }, KnobValue::Unsigned(x)) => {
                field.set(self.blkio_devices.entry(path.clone()).or_default(), *x)
            }
            (Knob::Interface { target, direction }, KnobValue::Bandwidth(b)) => {
                let iface = self.interfaces.entry(target.clone()).or_default();
                match direction {
                    Direction::Inbound => iface.inbound = Some(*b),
                    Direction::Outbound => iface.outbound = Some(*b),
                }
            }
            (Knob::Disk { target }, KnobValue::Throttle { throttle }) => {
                self.disks.insert(target.clone(), throttle.clone());
            }
            _ => {}
        }
    }

    /// Forgets the value of one knob (it reads as not set afterwards).
    pub fn clear(&mut self, knob: &Knob) {
        if self.clear_row(knob) {
            return;
        }
        match knob {
            Knob::BlkioDevice { path, field } => {
                if let Some(d) = self.blkio_devices.get_mut(path) {
                    field.clear(d);
                    if *d == BlkioDeviceTuning::default() {
                        self.blkio_devices.remove(path);
                    }
                }
            }
            Knob::Interface { target, direction } => {
                if let Some(i) = self.interfaces.get_mut(target) {
                    match direction {
                        Direction::Inbound => i.inbound = None,
                        Direction::Outbound => i.outbound = None,
                    }
                    if *i == InterfaceTuning::default() {
                        self.interfaces.remove(target);
                    }
                }
            }
            Knob::Disk { target } => {
                self.disks.remove(target);
            }
            _ => {}
        }
    }

    /// Every knob this tuning has a value for, as changes that would set it.
    pub fn changes(&self) -> Vec<Change> {
        let mut out = Vec::new();
        let mut push = |knob: Knob| {
            if let Some(value) = self.get(&knob) {
                out.push(Change { knob, value });
            }
        };
        for k in self.device_knobs() {
            push(k);
        }
        for k in Knob::SCALARS {
            push(k.clone());
        }
        for path in self.blkio_devices.keys() {
            for field in BlkioField::ALL {
                push(Knob::BlkioDevice {
                    path: path.clone(),
                    field,
                });
            }
        }
        for target in self.interfaces.keys() {
            for direction in [Direction::Inbound, Direction::Outbound] {
                push(Knob::Interface {
                    target: target.clone(),
                    direction,
                });
            }
        }
        for target in self.disks.keys() {
            push(Knob::Disk {
                target: target.clone(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every per-device row names each device its index kind lists for a
    /// domain (the row's index type parses them), round-trips it through its
    /// knob, and is found again by its knob.
    #[test]
    fn every_device_row_names_the_devices_of_its_index() {
        let d = crate::model::domain::DomainInfo {
            name: "d".into(),
            uuid: "u".into(),
            id: Some(1),
            state: crate::model::domain::DomainState::Running,
            persistent: true,
            vcpus: 3,
            iothreads: vec![1, 4],
            memory_kib: 1024,
            max_memory_kib: 1024,
            disks: vec![],
            interfaces: vec![],
            tags: vec![],
        };
        assert!(!DEVICE_ROWS.is_empty());
        for row in DEVICE_ROWS {
            let ids = row.index.ids(&d);
            assert!(!ids.is_empty(), "{}", row.key);
            for id in ids {
                assert_eq!(row.index.parse(&id).as_deref(), Some(id.as_str()));
                let knob = Knob::for_device(row.key, &id)
                    .unwrap_or_else(|| panic!("{}: cannot name {id}", row.key));
                assert_eq!(knob.device().as_deref(), Some(id.as_str()));
                assert_eq!(knob.device_row(), Some(row));
                assert_eq!(knob.key(), row.key);
                assert_eq!(knob.to_string(), format!("{}[{id}]", row.key));
                assert!(knob.device_in(&d));
            }
        }
        // a device that went away: an iothread's original is dropped, a vCPU's kept
        let mut gone = d.clone();
        gone.iothreads.clear();
        gone.vcpus = 1;
        assert!(!Knob::IothreadPin { iothread: 4 }.device_in(&gone));
        assert!(Knob::VcpuPin { vcpu: 2 }.device_in(&gone));
        assert_eq!(Index::Iothread.parse("0"), None);
        assert_eq!(Index::Vcpu.parse(" 07 ").as_deref(), Some("7"));
    }

    #[test]
    fn set_then_get_every_knob() {
        let mut t = Tuning::default();
        let changes = vec![
            Change {
                knob: Knob::VcpuPin { vcpu: 1 },
                value: KnobValue::CpuSet("0-1".parse().unwrap()),
            },
            Change {
                knob: Knob::EmulatorPin,
                value: KnobValue::CpuSet("1".parse().unwrap()),
            },
            Change {
                knob: Knob::CpuShares,
                value: KnobValue::Unsigned(2048),
            },
            Change {
                knob: Knob::VcpuPeriod,
                value: KnobValue::Unsigned(100_000),
            },
            Change {
                knob: Knob::VcpuQuota,
                value: KnobValue::Signed(-1),
            },
            Change {
                knob: Knob::MemoryHardLimit,
                value: KnobValue::Unsigned(4096),
            },
            Change {
                knob: Knob::MemorySoftLimit,
                value: KnobValue::Unsigned(2048),
            },
            Change {
                knob: Knob::MemorySwapHardLimit,
                value: KnobValue::Unsigned(8192),
            },
            Change {
                knob: Knob::BlkioWeight,
                value: KnobValue::Unsigned(500),
            },
            Change {
                knob: Knob::BlkioDevice {
                    path: "/dev/sda".into(),
                    field: BlkioField::ReadIops,
                },
                value: KnobValue::Unsigned(100),
            },
            Change {
                knob: Knob::Interface {
                    target: "vnet0".into(),
                    direction: Direction::Outbound,
                },
                value: KnobValue::Bandwidth(Bandwidth {
                    average: 10,
                    peak: 20,
                    burst: 30,
                }),
            },
        ];
        for c in &changes {
            t.set(c);
        }
        for c in &changes {
            assert_eq!(t.get(&c.knob).as_ref(), Some(&c.value), "{}", c.knob);
        }
        assert_eq!(t.changes(), changes);
    }
}
