//! The knob table: every domain-wide knob is one row of [`knob_table!`](crate::knob_table).
//!
//! A row names the knob's `[tuning]` key (which is also its field in
//! [`Tuning`](super::tuning::Tuning), its tag in stored records and its name in
//! errors), its value type in libvirt's units, the libvirt call family and
//! typed parameter that read and write it, the element of the persistent
//! definition a persisted value lives in, how a persona file writes it and its
//! valid range, how `persona-status` labels it, and the planning rule it takes
//! part in. Everything else is derived from the rows:
//!
//! - the model ([`Tuning`](super::tuning::Tuning) fields, [`Knob`](super::tuning::Knob)
//!   variants, get/set/clear, `changes()`, the stored form);
//! - validation (`[tuning]` keys, parsing by [`Input`], the range, the error text);
//! - the range check before a value reaches libvirt ([`Input::check`]);
//! - the planner's ordering of nested limits ([`Row::nest`]) and its property test;
//! - the libvirt adapter (one read and one write per [`Family`]) and which
//!   definition elements a revert removes;
//! - the CLI's `persona-status` lines and the docs check (`tests/guide.rs`).
//!
//! The table's `devices` rows are the per-device knobs with one value per
//! device (`vcpu_pin`, `iothread_pin`): each names what it is indexed by
//! ([`Index`]: which devices `"*"` stands for, how a file names one, whether
//! one can go away), and gets the same derivations — its map in `Tuning`, its
//! `Knob` variant, a `[tuning]` table of device = value with `"*"`, the
//! definition element with its index attribute, `persona-status` lines.
//!
//! Adding a knob of an existing family is one row here and its line in
//! `docs/personas.md` (which `tests/guide.rs` holds to the row's range). A new
//! family (domain-wide or per device) also needs its read/write pair in
//! `hypervisor/libvirt/mod.rs`: a [`Family`] or [`DeviceFamily`] variant, and
//! the compiler points at the adapter's `match`es. Per-device knobs whose
//! value is a set of fields with a `[[tuning.…]]` table of its own (blkio
//! device limits, interface bandwidth, disk throttles) keep their own maps.

use crate::units::CpuSet;

/// The table. Each row: `Variant field: Type { family, param, xml, input,
/// label, ..BASE }`; the order of rows is the order changes are planned in.
/// The `devices` rows are the per-device knobs with one value per device.
///
/// A consumer passes the name of its own macro, which receives
/// `rows { Variant field: Type { row fields } … } devices { Variant field
/// [index: Type]: Type { device row fields } … }`.
#[macro_export]
macro_rules! knob_table {
    ($then:ident) => {
        $then! {
            rows {
            EmulatorPin emulator_pin: CpuSet {
                family: Family::EmulatorPin, param: "",
                xml: Some(["cputune", "emulatorpin"]),
                input: Input::CpuSet, label: "emulatorpin",
            }
            CpuShares cpu_shares: u64 {
                family: Family::Sched, param: "cpu_shares",
                xml: Some(["cputune", "shares"]),
                input: Input::Count { min: 2, max: 262_144 }, label: "cpu_shares",
            }
            VcpuPeriod vcpu_period: u64 {
                family: Family::Sched, param: "vcpu_period",
                xml: Some(["cputune", "period"]),
                input: Input::Micros { min: 1_000, max: 1_000_000 }, label: "vcpu_period (us)",
            }
            VcpuQuota vcpu_quota: i64 {
                family: Family::Sched, param: "vcpu_quota",
                xml: Some(["cputune", "quota"]),
                input: Input::Quota, label: "vcpu_quota (us)",
            }
            EmulatorPeriod emulator_period: u64 {
                family: Family::Sched, param: "emulator_period",
                xml: Some(["cputune", "emulator_period"]),
                input: Input::Micros { min: 1_000, max: 1_000_000 }, label: "emulator_period (us)",
            }
            EmulatorQuota emulator_quota: i64 {
                family: Family::Sched, param: "emulator_quota",
                xml: Some(["cputune", "emulator_quota"]),
                input: Input::Quota, label: "emulator_quota (us)",
            }
            IothreadPeriod iothread_period: u64 {
                family: Family::Sched, param: "iothread_period",
                xml: Some(["cputune", "iothread_period"]),
                input: Input::Micros { min: 1_000, max: 1_000_000 }, label: "iothread_period (us)", iothreads: true,
            }
            IothreadQuota iothread_quota: i64 {
                family: Family::Sched, param: "iothread_quota",
                xml: Some(["cputune", "iothread_quota"]),
                input: Input::Quota, label: "iothread_quota (us)", iothreads: true,
            }
            GlobalPeriod global_period: u64 {
                family: Family::Sched, param: "global_period",
                xml: Some(["cputune", "global_period"]),
                input: Input::Micros { min: 1_000, max: 1_000_000 }, label: "global_period (us)",
            }
            GlobalQuota global_quota: i64 {
                family: Family::Sched, param: "global_quota",
                xml: Some(["cputune", "global_quota"]),
                input: Input::Quota, label: "global_quota (us)",
            }
            MemoryHardLimit memory_hard_limit: u64 {
                family: Family::Memory, param: "hard_limit",
                xml: Some(["memtune", "hard_limit"]),
                input: Input::Memory, label: "hard_limit (KiB)", nest: Some(1),
            }
            MemorySoftLimit memory_soft_limit: u64 {
                family: Family::Memory, param: "soft_limit",
                xml: Some(["memtune", "soft_limit"]),
                input: Input::Memory, label: "soft_limit (KiB)", nest: Some(0),
            }
            MemorySwapHardLimit memory_swap_hard_limit: u64 {
                family: Family::Memory, param: "swap_hard_limit",
                xml: Some(["memtune", "swap_hard_limit"]),
                input: Input::Memory, label: "swap_hard_limit (KiB)", nest: Some(2),
            }
            NumaNodeset numa_nodeset: CpuSet {
                family: Family::Numa, param: "numa_nodeset",
                xml: Some(["numatune", "memory"]),
                input: Input::NodeSet, label: "numa_nodeset",
            }
            BlkioWeight blkio_weight: u32 {
                family: Family::Blkio, param: "weight",
                xml: Some(["blkiotune", "weight"]),
                input: Input::Count { min: 100, max: 1000 }, label: "blkio weight",
                zero_is_unset: true,
            }
            }
            // The per-device knobs with one value per device: `Variant field
            // [index: Type]: ValueType { index, family, input, label, xml }`.
            devices {
            VcpuPin vcpu_pin [vcpu: u32]: CpuSet {
                index: Index::Vcpu, family: DeviceFamily::VcpuPin,
                input: Input::CpuSet, label: "vcpupin",
                xml: Some(["cputune", "vcpupin", "vcpu"]),
            }
            IothreadPin iothread_pin [iothread: u32]: CpuSet {
                index: Index::Iothread, family: DeviceFamily::IothreadPin,
                input: Input::CpuSet, label: "iothreadpin",
                xml: Some(["cputune", "iothreadpin", "iothread"]),
            }
            }
        }
    };
}

/// What a per-device knob is indexed by: which devices of a domain `"*"`
/// stands for, how a persona file names one, and whether a device can go away
/// (its original then can never be written back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// A vCPU number, 0…; vCPUs come and go with hotplug, their pins with them.
    Vcpu,
    /// An iothread id (`<iothreadids>`), 1….
    Iothread,
}

/// The most vCPUs libvirt's largest guests have: the highest vCPU number a
/// file may name is one less, and the most entries a `vcpu_pin` may give.
pub const MAX_VCPUS: u32 = 4_096;

impl Index {
    /// The device's name in messages ("iothread 2").
    pub fn noun(self) -> &'static str {
        match self {
            Index::Vcpu => "vCPU",
            Index::Iothread => "iothread",
        }
    }
    /// How a persona file names one device, for errors.
    pub fn expected(self) -> &'static str {
        match self {
            Index::Vcpu => "a vCPU number",
            Index::Iothread => "an iothread id (1, 2, …)",
        }
    }
    /// The most entries one persona may give.
    pub fn max_entries(self) -> usize {
        match self {
            Index::Vcpu => MAX_VCPUS as usize,
            Index::Iothread => 1_000,
        }
    }
    /// A device as a persona file names it, in the form the domain's ids
    /// have; `None` when it cannot name one.
    pub fn parse(self, s: &str) -> Option<String> {
        let s = s.trim();
        match self {
            Index::Vcpu => s
                .parse::<u32>()
                .ok()
                .filter(|v| *v < MAX_VCPUS)
                .map(|v| v.to_string()),
            Index::Iothread => s
                .parse::<u32>()
                .ok()
                .filter(|v| *v >= 1)
                .map(|v| v.to_string()),
        }
    }
    /// The domain's devices of this kind: what `"*"` stands for.
    pub fn ids(self, domain: &super::domain::DomainInfo) -> Vec<String> {
        match self {
            Index::Vcpu => (0..domain.vcpus).map(|v| v.to_string()).collect(),
            Index::Iothread => domain.iothreads.iter().map(u32::to_string).collect(),
        }
    }
    /// Whether an original of a device the domain no longer has is dropped
    /// (vCPU pins are kept: a vCPU unplugged may come back).
    pub fn can_go(self) -> bool {
        !matches!(self, Index::Vcpu)
    }
}

/// The libvirt call family of a per-device knob: one read and one write in
/// the adapter for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceFamily {
    /// `virDomainGetVcpuPinInfo` / `virDomainPinVcpuFlags`.
    VcpuPin,
    /// `virDomainGetIOThreadInfo` / `virDomainPinIOThread`.
    IothreadPin,
}

/// One row of the table's `devices` (see [`knob_table!`](crate::knob_table)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRow {
    /// The `[tuning]` key (a table of device = value), `Tuning` field and stored tag.
    pub key: &'static str,
    pub index: Index,
    pub family: DeviceFamily,
    pub input: Input,
    /// The `persona-status` label, followed by the device.
    pub label: &'static str,
    /// `[parent, element, attribute]` of the persistent definition: one
    /// element per device, singled out by the attribute (`<vcpupin vcpu='1'>`).
    pub xml: Option<[&'static str; 3]>,
}

/// The libvirt call family a knob is read and written through: one read and
/// one write in the adapter for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `virDomainGetEmulatorPinInfo` / `virDomainPinEmulator`.
    EmulatorPin,
    /// `virDomain{Get,Set}SchedulerParametersFlags`.
    Sched,
    /// `virDomain{Get,Set}MemoryParameters`.
    Memory,
    /// `virDomain{Get,Set}BlkioParameters`.
    Blkio,
    /// `virDomain{Get,Set}NumaParameters`; live only where the domain's
    /// `<numatune>` mode allows it (strict or restrictive).
    Numa,
}

/// The typed-parameter type a value travels as (from the row's Rust type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `VIR_TYPED_PARAM_ULLONG`.
    ULLong,
    /// `VIR_TYPED_PARAM_LLONG`.
    LLong,
    /// `VIR_TYPED_PARAM_UINT`.
    UInt,
    /// A CPU map (pinning calls) or a set written as a string.
    Set,
}

/// How a persona file writes a knob, and its valid range. The stored value is
/// in libvirt's units (µs, KiB); the range is given in those units too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A set of host CPUs, `"0-3,8"`; never empty.
    CpuSet,
    /// A set of host NUMA nodes, `"0-1"`; never empty.
    NodeSet,
    /// A whole number in `min..=max`.
    Count { min: u64, max: u64 },
    /// A duration (`"100ms"`), stored in µs, in `min..=max` µs.
    Micros { min: u64, max: u64 },
    /// A duration of at least 1ms (stored in µs), or `"unlimited"` / `-1`.
    Quota,
    /// A size (`"4 GiB"`, bytes as a number) or `"unlimited"`, stored in KiB.
    Memory,
}

/// The least CFS quota libvirt takes, µs.
pub const QUOTA_MIN_US: i64 = 1_000;
/// The most CFS quota libvirt takes, µs.
pub const QUOTA_MAX_US: i64 = 17_592_186_044_415;

impl Input {
    /// The valid range as the validator says it and the guide must state it.
    pub fn range_text(self) -> String {
        match self {
            Input::CpuSet => "a host cpuset".into(),
            Input::NodeSet => "a set of host NUMA nodes".into(),
            Input::Count { min, max } => format!("{min}..{max}"),
            Input::Micros { min, max } => format!("{}..{}", micros(min), micros(max)),
            Input::Quota => format!("at least {}, or \"unlimited\"", micros(QUOTA_MIN_US as u64)),
            Input::Memory => "a size, or \"unlimited\"".into(),
        }
    }

    /// Checks a value (libvirt units) against the range before it reaches
    /// libvirt (some drivers accept nonsense silently).
    pub fn check(self, value: &super::tuning::KnobValue) -> Result<(), Refusal> {
        use super::tuning::KnobValue;
        match (self, value) {
            (Input::CpuSet, KnobValue::CpuSet(s)) if s.is_empty() => Err(Refusal::Range(
                "an empty cpuset would stop the domain from running".into(),
            )),
            (Input::NodeSet, KnobValue::CpuSet(s)) if s.is_empty() => Err(Refusal::Range(
                "an empty nodeset leaves the domain no memory to run in".into(),
            )),
            (Input::CpuSet | Input::NodeSet, KnobValue::CpuSet(_)) => Ok(()),
            (Input::Count { min, max }, KnobValue::Unsigned(v)) => {
                if (min..=max).contains(v) {
                    Ok(())
                } else {
                    Err(Refusal::Range(format!(
                        "{v} is out of range: expected {min}..{max}"
                    )))
                }
            }
            (Input::Micros { min, max }, KnobValue::Unsigned(v)) => {
                if (min..=max).contains(v) {
                    Ok(())
                } else {
                    Err(Refusal::Range(format!(
                        "{v} µs is out of range: expected {min}..{max} µs"
                    )))
                }
            }
            (Input::Quota, KnobValue::Signed(v)) => {
                if *v == -1 || (QUOTA_MIN_US..=QUOTA_MAX_US).contains(v) {
                    Ok(())
                } else if *v < QUOTA_MIN_US {
                    Err(Refusal::Range(format!(
                        "{v} µs is out of range: expected at least {QUOTA_MIN_US} µs, or -1 for unlimited"
                    )))
                } else {
                    Err(Refusal::Range(format!(
                        "{v} µs is out of range: expected at most {QUOTA_MAX_US} µs"
                    )))
                }
            }
            (Input::Memory, KnobValue::Unsigned(_)) => Ok(()),
            _ => Err(Refusal::WrongType),
        }
    }
}

/// Why [`Input::check`] refuses a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The value has another shape than the knob's (a cpuset for a count …).
    WrongType,
    /// Outside the knob's range: the reason, naming the range.
    Range(String),
}

/// `1000` µs as `1ms`, `1000000` as `1s`.
fn micros(us: u64) -> String {
    if us >= 1_000_000 && us % 1_000_000 == 0 {
        format!("{}s", us / 1_000_000)
    } else if us >= 1_000 && us % 1_000 == 0 {
        format!("{}ms", us / 1_000)
    } else {
        format!("{us}us")
    }
}

/// One row of the table (see [`knob_table!`](crate::knob_table)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The `[tuning]` key, `Tuning` field and stored tag.
    pub key: &'static str,
    pub family: Family,
    /// The typed parameter of the family's calls (empty for pinning).
    pub param: &'static str,
    pub kind: ParamKind,
    /// `[parent, element]` of the persistent definition under `<domain>`.
    pub xml: Option<[&'static str; 2]>,
    pub input: Input,
    /// The `persona-status` label (virsh's name, with the unit).
    pub label: &'static str,
    /// Nested limits (memory: soft ≤ hard ≤ swap): this knob's rank. The
    /// validator refuses a file that breaks the order and the planner orders
    /// changes so that every step keeps it.
    pub nest: Option<u8>,
    /// libvirt reads 0 for "not set": a 0 is no value to record or restore.
    pub zero_is_unset: bool,
    /// Applies to the domain's iothreads: meaningless (not read, refused as
    /// unsupported) for a domain without `<iothreads>`.
    pub iothreads: bool,
}

impl Row {
    /// The defaults a row leaves out.
    pub const BASE: Row = Row {
        key: "",
        family: Family::Sched,
        param: "",
        kind: ParamKind::ULLong,
        xml: None,
        input: Input::Memory,
        label: "",
        nest: None,
        zero_is_unset: false,
        iothreads: false,
    };
}

/// A row's Rust value type and how it travels as a [`KnobValue`](super::tuning::KnobValue).
pub trait ScalarValue: Sized + Clone {
    const KIND: ParamKind;
    fn to_value(&self) -> super::tuning::KnobValue;
    /// `None` when the value has another shape.
    fn from_value(v: &super::tuning::KnobValue) -> Option<Self>;
}

/// `ScalarValue` for a type carried by one `KnobValue` variant.
macro_rules! scalar_value {
    ($ty:ty, $kind:ident, $variant:ident, |$v:ident| $to:expr, |$x:ident| $from:expr) => {
        impl ScalarValue for $ty {
            const KIND: ParamKind = ParamKind::$kind;
            fn to_value(&self) -> super::tuning::KnobValue {
                let $v = self;
                super::tuning::KnobValue::$variant($to)
            }
            fn from_value(v: &super::tuning::KnobValue) -> Option<Self> {
                match v {
                    super::tuning::KnobValue::$variant($x) => Some($from),
                    _ => None,
                }
            }
        }
    };
}

scalar_value!(u64, ULLong, Unsigned, |v| *v, |x| *x);
// a u32 knob saturates rather than wrapping
scalar_value!(u32, UInt, Unsigned, |v| u64::from(*v), |x| u32::try_from(
    *x
)
.unwrap_or(u32::MAX));
scalar_value!(i64, LLong, Signed, |v| *v, |x| *x);
scalar_value!(CpuSet, Set, CpuSet, |v| v.clone(), |x| x.clone());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_the_guide_writes_them() {
        assert_eq!(
            Input::Micros {
                min: 1_000,
                max: 1_000_000
            }
            .range_text(),
            "1ms..1s"
        );
        assert_eq!(Input::Quota.range_text(), "at least 1ms, or \"unlimited\"");
        assert_eq!(Input::Count { min: 2, max: 9 }.range_text(), "2..9");
    }
}

/// The per-disk throttle fields (QEMU's, `virsh blkdeviotune`): one row each,
/// `Variant "key" kind;`. The key is libvirt's typed parameter, the persona
/// file's key in `[[tuning.disk]]` and the stored name.
#[macro_export]
macro_rules! disk_field_table {
    ($then:ident) => {
        $then! {
            TotalBytesSec "total_bytes_sec" Bytes;
            ReadBytesSec "read_bytes_sec" Bytes;
            WriteBytesSec "write_bytes_sec" Bytes;
            TotalIopsSec "total_iops_sec" Iops;
            ReadIopsSec "read_iops_sec" Iops;
            WriteIopsSec "write_iops_sec" Iops;
            TotalBytesSecMax "total_bytes_sec_max" Bytes;
            ReadBytesSecMax "read_bytes_sec_max" Bytes;
            WriteBytesSecMax "write_bytes_sec_max" Bytes;
            TotalIopsSecMax "total_iops_sec_max" Iops;
            ReadIopsSecMax "read_iops_sec_max" Iops;
            WriteIopsSecMax "write_iops_sec_max" Iops;
            TotalBytesSecMaxLength "total_bytes_sec_max_length" Seconds;
            ReadBytesSecMaxLength "read_bytes_sec_max_length" Seconds;
            WriteBytesSecMaxLength "write_bytes_sec_max_length" Seconds;
            TotalIopsSecMaxLength "total_iops_sec_max_length" Seconds;
            ReadIopsSecMaxLength "read_iops_sec_max_length" Seconds;
            WriteIopsSecMaxLength "write_iops_sec_max_length" Seconds;
        }
    };
}

/// What a disk throttle field measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskUnit {
    /// Bytes per second (a rate, `"50 MiB/s"`).
    Bytes,
    /// I/O operations per second (a whole number).
    Iops,
    /// How long a burst may last, whole seconds (`"30s"` or a number).
    Seconds,
}

macro_rules! define_disk_fields {
    ($( $variant:ident $key:literal $unit:ident; )*) => {
        /// A field of a disk's throttle ([`disk_field_table!`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum DiskField { $( $variant, )* }

        impl DiskField {
            pub const ALL: &'static [DiskField] = &[ $( DiskField::$variant, )* ];
            /// libvirt's typed parameter, and the persona file's key.
            pub fn key(self) -> &'static str {
                match self { $( DiskField::$variant => $key, )* }
            }
            pub fn unit(self) -> DiskUnit {
                match self { $( DiskField::$variant => DiskUnit::$unit, )* }
            }
            pub fn from_key(key: &str) -> Option<DiskField> {
                match key { $( $key => Some(DiskField::$variant), )* _ => None }
            }
        }
    };
}

crate::disk_field_table!(define_disk_fields);

impl DiskField {
    /// `total`, `read` or `write`, and `bytes` or `iops`: the limit this field
    /// belongs to.
    fn limit(self) -> (&'static str, &'static str) {
        let key = self.key();
        let dir = key.split('_').next().unwrap_or("");
        let what = if key.contains("bytes") {
            "bytes"
        } else {
            "iops"
        };
        (dir, what)
    }
    /// The base limit of a `_max` or `_max_length` field.
    pub fn base(self) -> Option<DiskField> {
        let key = self.key();
        let base = key
            .strip_suffix("_max_length")
            .or_else(|| key.strip_suffix("_max"))?;
        DiskField::from_key(base)
    }
    /// The `_max` field a `_max_length` field needs.
    pub fn burst(self) -> Option<DiskField> {
        DiskField::from_key(self.key().strip_suffix("_length")?)
            .filter(|_| self.key().ends_with("_max_length"))
    }
}

/// libvirt's (and QEMU's) rules for one disk's throttle set, as a reason:
/// `total_*` excludes `read_*`/`write_*` of the same kind, a `_max` burst needs
/// its limit and is at least it, a `_max_length` needs its `_max`.
pub fn check_disk_limits(
    limits: &std::collections::BTreeMap<DiskField, u64>,
) -> Result<(), String> {
    let get = |f: DiskField| limits.get(&f).copied().filter(|v| *v != 0);
    for (&f, &v) in limits.iter().filter(|(_, v)| **v != 0) {
        let (dir, what) = f.limit();
        if dir == "total" && f.base().is_none() {
            for other in DiskField::ALL {
                let (d, w) = other.limit();
                if d != "total" && w == what && other.base().is_none() && get(*other).is_some() {
                    return Err(format!(
                        "{} and {} cannot both be set: total_{what}_sec limits reads and writes together",
                        f.key(),
                        other.key()
                    ));
                }
            }
        }
        if let Some(burst) = f.burst() {
            if get(burst).is_none() {
                return Err(format!("{} needs {}", f.key(), burst.key()));
            }
        } else if let Some(base) = f.base() {
            match get(base) {
                None => return Err(format!("{} needs {}", f.key(), base.key())),
                Some(b) if v < b => {
                    return Err(format!(
                        "{} ({v}) is below {} ({b}): a burst is at least the limit",
                        f.key(),
                        base.key()
                    ))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The cgroup hierarchy a host's libvirt puts domains in: it decides what
/// `cpu_shares` means. On v1 it is `cpu.shares` (default 1024, 2..262144);
/// on v2 `cpu.weight` (default 100, 1..10000: libvirt's own check makes it
/// 2..10000), so the same number is ten times as much on a v2 host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// A domain's CPU weight when nothing set it.
    pub fn default_shares(self) -> u64 {
        match self {
            CgroupVersion::V1 => 1024,
            CgroupVersion::V2 => 100,
        }
    }
    /// The `cpu_shares` libvirt can write on this kind of host.
    pub fn shares_range(self) -> std::ops::RangeInclusive<u64> {
        match self {
            CgroupVersion::V1 => 2..=262_144,
            CgroupVersion::V2 => 2..=10_000,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "cgroup v1",
            CgroupVersion::V2 => "cgroup v2",
        }
    }
    /// Why `shares` cannot be written on this host, naming the range.
    pub fn check_shares(self, shares: u64) -> Result<(), String> {
        let r = self.shares_range();
        if r.contains(&shares) {
            return Ok(());
        }
        let default = self.default_shares();
        // a number this host cannot take was written for the other kind of host
        let other = match self {
            CgroupVersion::V1 => CgroupVersion::V2,
            CgroupVersion::V2 => CgroupVersion::V1,
        };
        let weight = CpuWeight::from_factor(shares as f64 / other.default_shares() as f64)
            .unwrap_or(CpuWeight(CpuWeight::MAX));
        Err(format!(
            "cpu_shares {shares} is outside this host's range ({}: {}..{}, default {default}); \
             on a {} host it is {weight} the default: cpu_weight = \"{weight}\" means that on every host",
            self.name(),
            r.start(),
            r.end(),
            other.name(),
        ))
    }
}

/// A CPU weight relative to the host's default (`cpu_weight = "2x"`): the
/// same on every host, resolved to `cpu_shares` by the host's cgroup version
/// (2048 on v1, 200 on v2). Kept in thousandths; 0.01x..100x.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CpuWeight(pub u32);

impl CpuWeight {
    /// 0.01x, in thousandths.
    pub const MIN: u32 = 10;
    /// 100x, in thousandths.
    pub const MAX: u32 = 100_000;
    /// The valid range as the guide states it.
    pub const RANGE: &'static str = "0.01x..100x";

    /// The weight for a factor, if it is in range.
    pub fn from_factor(f: f64) -> Option<CpuWeight> {
        if !f.is_finite() {
            return None;
        }
        let milli = (f * 1000.0).round();
        (f64::from(Self::MIN)..=f64::from(Self::MAX))
            .contains(&milli)
            .then_some(CpuWeight(milli as u32))
    }
    pub fn factor(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
    /// The `cpu_shares` this weight is on a host of this kind: the factor
    /// times the default, rounded, at least the least value libvirt takes.
    pub fn shares(self, cgroup: CgroupVersion) -> u64 {
        let v = (u128::from(self.0) * u128::from(cgroup.default_shares()) + 500) / 1000;
        (v as u64).max(*cgroup.shares_range().start())
    }
}

impl std::str::FromStr for CpuWeight {
    type Err = String;
    /// `"2x"`, `"0.5x"`, `"1.25x"`.
    fn from_str(s: &str) -> Result<CpuWeight, String> {
        let t = s.trim();
        let Some(num) = t.strip_suffix('x') else {
            return Err(format!(
                "'{t}': expected a factor of this host's default weight, e.g. \"2x\" or \"0.5x\""
            ));
        };
        let f: f64 = num.trim().parse().map_err(|_| {
            format!(
                "'{t}': expected a factor of this host's default weight, e.g. \"2x\" or \"0.5x\""
            )
        })?;
        CpuWeight::from_factor(f)
            .ok_or_else(|| format!("{t} is out of range: expected {}", Self::RANGE))
    }
}

impl std::fmt::Display for CpuWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whole = self.0 / 1000;
        let frac = self.0 % 1000;
        if frac == 0 {
            write!(f, "{whole}x")
        } else {
            let s = format!("{whole}.{frac:03}");
            write!(f, "{}x", s.trim_end_matches('0'))
        }
    }
}

impl serde::Serialize for CpuWeight {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod weight_tests {
    use super::*;

    #[test]
    fn a_portable_weight_means_the_same_on_v1_and_v2() {
        let w: CpuWeight = "2x".parse().unwrap();
        assert_eq!(w.shares(CgroupVersion::V1), 2048);
        assert_eq!(w.shares(CgroupVersion::V2), 200);
        let half: CpuWeight = "0.5x".parse().unwrap();
        assert_eq!(half.shares(CgroupVersion::V1), 512);
        assert_eq!(half.shares(CgroupVersion::V2), 50);
        assert_eq!(half.to_string(), "0.5x");
        assert_eq!("1.25x".parse::<CpuWeight>().unwrap().to_string(), "1.25x");
        // the extremes stay inside both hosts' ranges
        for s in ["0.01x", "100x"] {
            let w: CpuWeight = s.parse().unwrap();
            for c in [CgroupVersion::V1, CgroupVersion::V2] {
                assert!(c.check_shares(w.shares(c)).is_ok(), "{s} on {c:?}");
            }
        }
        for bad in ["2", "x", "0x", "101x", "-1x", "nanx", "infx"] {
            assert!(bad.parse::<CpuWeight>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shares_outside_a_hosts_range_are_refused_naming_it() {
        assert!(CgroupVersion::V1.check_shares(4096).is_ok());
        let e = CgroupVersion::V2.check_shares(20480).unwrap_err();
        assert!(e.contains("cgroup v2: 2..10000"), "{e}");
        assert!(e.contains("cpu_weight = \"20x\""), "{e}");
        let e = CgroupVersion::V2.check_shares(12288).unwrap_err();
        assert!(
            e.contains("on a cgroup v1 host it is 12x the default"),
            "{e}"
        );
    }
}
