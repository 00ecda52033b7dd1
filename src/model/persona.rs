//! Validated personas (SPEC §3): the types the rest of the daemon works with.
//! Built only by [`crate::model::validate`], so every value here is in range.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::model::domain::DomainInfo;
use crate::model::tuning::{
    Change, DiskThrottle, InterfaceTuning, Knob, KnobValue, Tuning, DEVICE_ROWS,
};
use crate::units::Duration;

/// What a metric's number means, which decides what a threshold may be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricUnit {
    Percent,
    Bytes,
    BytesPerSec,
    PerSec,
    Plain,
}

macro_rules! metrics {
    ($($variant:ident => $name:literal, $unit:ident, $host:literal;)*) => {
        /// The metrics of SPEC §4.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Metric { $($variant,)* }

        impl Metric {
            pub const ALL: &'static [Metric] = &[$(Metric::$variant,)*];
            pub fn name(self) -> &'static str {
                match self { $(Metric::$variant => $name,)* }
            }
            pub fn unit(self) -> MetricUnit {
                match self { $(Metric::$variant => MetricUnit::$unit,)* }
            }
            /// Host-wide (procfs) rather than per domain.
            pub fn is_host(self) -> bool {
                match self { $(Metric::$variant => $host,)* }
            }
            pub fn from_name(s: &str) -> Option<Metric> {
                match s { $($name => Some(Metric::$variant),)* _ => None }
            }
        }
    };
}

metrics! {
    Cpu => "cpu", Percent, false;
    CpuSteal => "cpu_steal", Percent, false;
    CpuDemand => "cpu_demand", Percent, false;
    MemoryRss => "memory_rss", Bytes, false;
    MemoryRssPercent => "memory_rss_percent", Percent, false;
    DiskReadIops => "disk_read_iops", PerSec, false;
    DiskWriteIops => "disk_write_iops", PerSec, false;
    DiskIops => "disk_iops", PerSec, false;
    DiskReadBps => "disk_read_bps", BytesPerSec, false;
    DiskWriteBps => "disk_write_bps", BytesPerSec, false;
    DiskBps => "disk_bps", BytesPerSec, false;
    DiskBytes => "disk_bytes", Bytes, false;
    NetRxBps => "net_rx_bps", BytesPerSec, false;
    NetTxBps => "net_tx_bps", BytesPerSec, false;
    NetBps => "net_bps", BytesPerSec, false;
    NetRxPps => "net_rx_pps", PerSec, false;
    NetTxPps => "net_tx_pps", PerSec, false;
    NetBytes => "net_bytes", Bytes, false;
    HostCpu => "host_cpu", Percent, true;
    HostLoad1 => "host_load1", Plain, true;
    HostMemAvailablePercent => "host_mem_available_percent", Percent, true;
    HostCpuPressure => "host_cpu_pressure", Percent, true;
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a forecast condition forecasts and the history records: a metric
/// of SPEC §4, or a signal (`signal:NAME`, e.g. a load balancer's request
/// rate), as the domain's condition sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Measure {
    Metric(Metric),
    Signal(String),
}

impl Measure {
    /// The prefix of a signal's name in a forecast condition and the history.
    pub const SIGNAL: &'static str = "signal:";

    /// `cpu`, `host_cpu` … or `signal:NAME`.
    pub fn from_name(s: &str) -> Option<Measure> {
        match s.strip_prefix(Self::SIGNAL) {
            Some(name) => {
                crate::model::validate::valid_name(name).then(|| Measure::Signal(name.to_string()))
            }
            None => Metric::from_name(s).map(Measure::Metric),
        }
    }
    /// Host-wide (kept under the host's series); a signal is kept per
    /// domain, as the domain's condition sees it.
    pub fn is_host(&self) -> bool {
        matches!(self, Measure::Metric(m) if m.is_host())
    }
    pub fn metric(&self) -> Option<Metric> {
        match self {
            Measure::Metric(m) => Some(*m),
            Measure::Signal(_) => None,
        }
    }
}

impl From<Metric> for Measure {
    fn from(m: Metric) -> Self {
        Measure::Metric(m)
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Measure::Metric(m) => f.write_str(m.name()),
            Measure::Signal(s) => write!(f, "{}{s}", Self::SIGNAL),
        }
    }
}

impl Serialize for Measure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How a window of samples is reduced to one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Agg {
    #[default]
    Avg,
    Max,
    Min,
    Sum,
    P95,
}

impl Agg {
    pub fn from_name(s: &str) -> Option<Agg> {
        Some(match s {
            "avg" => Agg::Avg,
            "max" => Agg::Max,
            "min" => Agg::Min,
            "sum" => Agg::Sum,
            "p95" => Agg::P95,
            _ => return None,
        })
    }
}

/// Where a condition's number comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Metric(Metric),
    Signal(String),
    Forecast(Measure),
}

/// Which side of the threshold makes the condition true.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    Above(f64),
    Below(f64),
}

impl Comparison {
    pub fn holds(self, v: f64) -> bool {
        match self {
            Comparison::Above(t) => v > t,
            Comparison::Below(t) => v < t,
        }
    }
}

/// One `[[activation.when]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    pub source: Source,
    pub comparison: Comparison,
    pub over: Option<Duration>,
    pub agg: Agg,
    #[serde(rename = "for")]
    pub for_: Option<Duration>,
    pub horizon: Option<Duration>,
    /// Forecast conditions: how long before a predicted crossing to act
    /// (default 5 m).
    pub lead: Option<Duration>,
    /// Forecast conditions: the point forecast or an edge of its interval.
    pub bound: Bound,
}

/// Whether a persona's forecast conditions may activate it (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForecastMode {
    #[default]
    Act,
    /// Forecasts are evaluated, logged and explained as "would have
    /// activated", and never apply anything.
    Observe,
}

impl ForecastMode {
    pub fn from_name(s: &str) -> Option<ForecastMode> {
        match s {
            "act" => Some(ForecastMode::Act),
            "observe" => Some(ForecastMode::Observe),
            _ => None,
        }
    }
}

/// `all` or `any` of the conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    All,
    Any,
}

/// A set of weekdays, bit 0 = Monday … bit 6 = Sunday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Days(pub u8);

impl Days {
    pub const ALL: Days = Days(0x7f);
    /// `weekday` is 0 = Monday … 6 = Sunday.
    pub fn contains(self, weekday: u8) -> bool {
        weekday < 7 && self.0 & (1 << weekday) != 0
    }
}

/// A daily window: on these days, from `from` to `to` (minutes after midnight).
/// When `to` < `from` the window crosses midnight and belongs to the day it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub days: Days,
    pub from: u16,
    pub to: u16,
}

/// How far ahead a forecast reaches (a day): `horizon + lead` of a forecast
/// condition is at most this. The forecaster's steps are sized to it.
pub const FORECAST_REACH_MS: i64 = 86_400_000;

/// Which side of a threshold a forecast condition looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    #[default]
    Value,
    Upper,
    Lower,
}

impl Bound {
    pub fn from_name(s: &str) -> Option<Bound> {
        Some(match s {
            "value" => Bound::Value,
            "upper" => Bound::Upper,
            "lower" => Bound::Lower,
            _ => return None,
        })
    }
}

/// `[activation]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Activation {
    pub mode: Mode,
    pub hold: Duration,
    pub cooldown: Duration,
    pub schedule: Vec<Window>,
    /// As written; `None` means the host's zone.
    pub timezone: Option<String>,
    /// `timezone` resolved once when the file is loaded (the host's zone as it
    /// was then when none is given), so deciding never reads the tz database.
    #[serde(skip)]
    pub zone: jiff::tz::TimeZone,
    pub when: Vec<Condition>,
}

/// Which devices an entry of a per-device knob applies to (`vcpu_pin`'s
/// vCPUs, `iothread_pin`'s iothreads …): `"*"`, or one as the domain names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSel {
    All,
    One(String),
}

/// `"*"` first, then devices in the domain's order: numbers as numbers (vCPU
/// 2 before vCPU 10), names as text.
impl Ord for DeviceSel {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let key = |s: &DeviceSel| match s {
            DeviceSel::All => (0, None, String::new()),
            DeviceSel::One(d) => (1, d.parse::<u32>().ok(), d.clone()),
        };
        key(self).cmp(&key(other))
    }
}

impl PartialOrd for DeviceSel {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// As the API has always shown a pin's entry: `"all"`, or `{"one": 2}` with
/// a number for a numbered device (a name stays a string).
impl Serialize for DeviceSel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DeviceSel::All => s.serialize_str("all"),
            DeviceSel::One(d) => match d.parse::<u32>() {
                Ok(n) => s.serialize_newtype_variant("DeviceSel", 1, "one", &n),
                Err(_) => s.serialize_newtype_variant("DeviceSel", 1, "one", d),
            },
        }
    }
}

/// `[tuning]`, in libvirt units, before it is resolved against one domain.
/// Only pinning and interfaces depend on the domain (`*` = every vCPU or
/// interface); every other knob is the same for all domains and lives in `fixed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TuningSpec {
    /// The per-device rows of the knob table (`vcpu_pin`, `iothread_pin` …):
    /// the row's key -> its entries (a device or `*`, and the value), sorted
    /// so that the order in the file is no matter. Only rows the file gives.
    pub devices: BTreeMap<&'static str, Vec<(DeviceSel, KnobValue)>>,
    /// Target dev, MAC, or "*" for every interface.
    pub interfaces: Vec<(String, InterfaceTuning)>,
    /// Disk target (vda), or "*" for every disk: its whole throttle set.
    pub disks: Vec<(String, DiskThrottle)>,
    /// Knobs that do not depend on the domain (no pins, no interfaces here).
    pub fixed: Tuning,
    /// `cpu_weight = "2x"`: `cpu_shares` relative to the host's default, put
    /// into `fixed.cpu_shares` for the host it is worn on
    /// ([`TuningSpec::for_host`]).
    pub cpu_weight: Option<crate::model::knobs::CpuWeight>,
    /// `[tuning]` keys without which the persona must not be worn; other knobs
    /// a host cannot apply at all are skipped and reported.
    pub required: Vec<String>,
}

/// The API shows `[tuning]` flat, one key per knob as in the file: the fixed
/// knobs as `Tuning` serialises them, with the per-domain lists in place of
/// its (always empty) vCPU and interface maps. No knob is listed twice here.
impl Serialize for TuningSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut map = match serde_json::to_value(&self.fixed).map_err(S::Error::custom)? {
            serde_json::Value::Object(m) => m,
            _ => return Err(S::Error::custom("tuning is not a map")),
        };
        let mut put = |k: &str, v: serde_json::Result<serde_json::Value>| {
            v.map(|v| map.insert(k.to_string(), v))
                .map_err(S::Error::custom)
        };
        for row in DEVICE_ROWS {
            let entries = self.devices.get(row.key).map_or(&[][..], Vec::as_slice);
            put(row.key, serde_json::to_value(entries))?;
        }
        put("interfaces", serde_json::to_value(&self.interfaces))?;
        put("disks", serde_json::to_value(&self.disks))?;
        if !self.required.is_empty() {
            put("required", serde_json::to_value(&self.required))?;
        }
        if let Some(w) = &self.cpu_weight {
            put("cpu_weight", serde_json::to_value(w))?;
        }
        map.serialize(s)
    }
}

impl TuningSpec {
    /// The concrete tuning this spec asks of one domain: `*` expands to every
    /// vCPU / interface, and a numbered entry beats `*`. vCPUs and interfaces the
    /// domain does not have are left out.
    pub fn resolve(&self, domain: &DomainInfo) -> Tuning {
        let mut t = self.fixed.clone();
        // the per-device rows: wildcards first, so numbered entries win
        for row in DEVICE_ROWS {
            let Some(entries) = self.devices.get(row.key) else {
                continue;
            };
            let ids = row.index.ids(domain);
            let mut set = |id: &str, value: &KnobValue| {
                if let Some(knob) = Knob::for_device(row.key, id) {
                    t.set(&Change {
                        knob,
                        value: value.clone(),
                    });
                }
            };
            for (_, value) in entries.iter().filter(|(s, _)| *s == DeviceSel::All) {
                for id in &ids {
                    set(id, value);
                }
            }
            for (sel, value) in entries {
                if let DeviceSel::One(id) = sel {
                    if ids.contains(id) {
                        set(id, value);
                    }
                }
            }
        }
        // named interfaces and disks win over "*" likewise
        let running: Vec<(&str, Option<&str>)> = domain
            .interfaces
            .iter()
            .filter_map(|i| i.target.as_deref().map(|t| (t, i.mac.as_deref())))
            .collect();
        for pass_wildcard in [true, false] {
            for (sel, bw) in &self.interfaces {
                if (sel == "*") != pass_wildcard {
                    continue;
                }
                for (target, mac) in &running {
                    if sel == "*" || sel == target || Some(sel.as_str()) == *mac {
                        t.interfaces.insert(target.to_string(), *bw);
                    }
                }
            }
        }
        for pass_wildcard in [true, false] {
            for (sel, throttle) in &self.disks {
                if (sel == "*") != pass_wildcard {
                    continue;
                }
                for disk in &domain.disks {
                    if sel == "*" || *sel == disk.target {
                        t.disks.insert(disk.target.clone(), throttle.clone());
                    }
                }
            }
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        *self == TuningSpec::default()
    }

    /// What the host's cgroup version changes about this spec, for
    /// `persona-validate`: what `cpu_shares` or `cpu_weight` is on each.
    pub fn cgroup_notes(&self) -> Vec<String> {
        use crate::model::knobs::CgroupVersion::{V1, V2};
        let mut notes = Vec::new();
        if let Some(w) = self.cpu_weight {
            notes.push(format!(
                "cpu_weight {w} is cpu_shares {} on a cgroup v1 host and {} on a cgroup v2 host",
                w.shares(V1),
                w.shares(V2)
            ));
        }
        if let (None, Some(v)) = (self.cpu_weight, self.fixed.cpu_shares) {
            let x = |c: crate::model::knobs::CgroupVersion| {
                crate::model::knobs::CpuWeight::from_factor(v as f64 / c.default_shares() as f64)
                    .map(|w| w.to_string())
                    .unwrap_or_else(|| {
                        let f = format!("{:.2}", v as f64 / c.default_shares() as f64);
                        format!("{}x", f.trim_end_matches('0').trim_end_matches('.'))
                    })
            };
            let mut n = format!(
                "cpu_shares depends on the host's cgroup version: {v} is {} the default weight on cgroup v1 and {} on cgroup v2",
                x(V1),
                x(V2)
            );
            if let Err(why) = V2.check_shares(v) {
                n.push_str(&format!("; refused on cgroup v2 hosts: {why}"));
            } else {
                n.push_str(&format!(
                    "; cpu_weight = \"{}\" means {} the default on both",
                    x(V1),
                    x(V1)
                ));
            }
            notes.push(n);
        }
        notes
    }

    /// This spec on a host of this cgroup version: `cpu_weight` becomes the
    /// `cpu_shares` it means there. The reason it cannot be worn on this host
    /// when `cpu_shares` (given or resolved) is outside the host's range, or
    /// `cpu_weight` is given and the host's version is unknown.
    pub fn for_host(
        &self,
        cgroup: Option<crate::model::knobs::CgroupVersion>,
    ) -> Result<TuningSpec, String> {
        let mut s = self.clone();
        match (self.cpu_weight, cgroup) {
            (Some(w), Some(c)) => s.fixed.cpu_shares = Some(w.shares(c)),
            (Some(_), None) => {
                return Err(
                    "cpu_weight needs this host's cgroup version, which the daemon cannot see \
                     (libvirt on another machine): write cpu_shares instead"
                        .into(),
                )
            }
            (None, _) => {}
        }
        if let (Some(shares), Some(c)) = (s.fixed.cpu_shares, cgroup) {
            c.check_shares(shares)?;
        }
        Ok(s)
    }
}

/// Compiled name globs; compares equal whenever the source patterns do.
#[derive(Debug, Clone, Default)]
pub struct Globs(Option<globset::GlobSet>);

impl Globs {
    /// Compiles shell globs (`*`, `?`, `[...]`; no path semantics).
    pub fn new(patterns: &[String]) -> Result<Globs, globset::Error> {
        if patterns.is_empty() {
            return Ok(Globs(None));
        }
        let mut b = globset::GlobSetBuilder::new();
        for p in patterns {
            b.add(
                globset::GlobBuilder::new(p)
                    .literal_separator(false)
                    .build()?,
            );
        }
        Ok(Globs(Some(b.build()?)))
    }
    /// True when there are no patterns or one matches.
    pub fn matches(&self, name: &str) -> bool {
        self.0.as_ref().is_none_or(|g| g.is_match(name))
    }
}

impl PartialEq for Globs {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Globs {}

/// `[match]`: all given keys must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Match {
    pub names: Vec<String>,
    pub tags: Vec<String>,
    #[serde(skip)]
    pub globs: Globs,
}

/// A validated persona.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Persona {
    pub id: String,
    pub name: String,
    pub description: String,
    pub priority: i64,
    pub persist: bool,
    #[serde(rename = "match")]
    pub matcher: Match,
    /// `None`: always active.
    pub activation: Option<Activation>,
    pub tuning: TuningSpec,
    pub thresholds: BTreeMap<Metric, f64>,
    pub forecast_mode: ForecastMode,
}

impl Persona {
    /// Whether any condition is a forecast.
    pub fn uses_forecasts(&self) -> bool {
        self.activation.as_ref().is_some_and(|a| {
            a.when
                .iter()
                .any(|c| matches!(c.source, Source::Forecast(_)))
        })
    }

    /// Whether a domain may wear this persona (`[match]`): any of the name globs
    /// matches (or there are none) and every tag is present.
    pub fn matches(&self, domain: &DomainInfo) -> bool {
        self.matcher.globs.matches(&domain.name) && self.missing_tags(domain).next().is_none()
    }

    /// Why the domain may not wear this persona, for people; `None` when it may.
    pub fn why_not(&self, domain: &DomainInfo) -> Option<String> {
        let mut why = Vec::new();
        if !self.matcher.globs.matches(&domain.name) {
            why.push(format!(
                "the name '{}' fits none of its [match] names {:?}",
                domain.name, self.matcher.names
            ));
        }
        let missing: Vec<&String> = self.missing_tags(domain).collect();
        if !missing.is_empty() {
            why.push(format!("the domain lacks the tags {missing:?}"));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    fn missing_tags<'a>(&'a self, domain: &'a DomainInfo) -> impl Iterator<Item = &'a String> {
        self.matcher
            .tags
            .iter()
            .filter(|t| !domain.tags.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use crate::hypervisor::fake::FakeHypervisor;
    use crate::model::validate::parse_persona;

    #[test]
    fn tuning_serialises_flat_one_key_per_knob() {
        let p = parse_persona(
            "id = \"p\"\n[tuning]\ncpu_shares = 2048\nvcpu_pin = { \"*\" = \"0-1\", \"10\" = \"2\", \"2\" = \"3\" }\n[[tuning.interface]]\ntarget = \"*\"\noutbound = { average = \"1 MiB/s\" }\n",
            std::path::Path::new("p.toml"),
        )
        .expect("valid");
        let t = serde_json::to_value(&p).expect("serialises")["tuning"].clone();
        assert_eq!(t["cpu_shares"], 2048, "{t}");
        assert!(t.get("fixed").is_none(), "no internal shape: {t}");
        // as the API has always shown pins: "all", or {"one": N}
        assert_eq!(
            t["vcpu_pin"],
            serde_json::json!([["all", "0-1"], [{"one": 2}, "3"], [{"one": 10}, "2"]]),
            "{t}"
        );
        assert_eq!(t["interfaces"][0][0], "*", "{t}");
        assert!(t["memory_hard_limit"].is_null());
    }

    #[test]
    fn why_not_names_only_the_part_of_match_that_fails() {
        let p = parse_persona(
            "id = \"p\"\n[match]\nnames = [\"web-*\"]\ntags = [\"prod\", \"eu\"]\n",
            std::path::Path::new("p.toml"),
        )
        .expect("valid");
        let mut d = FakeHypervisor::simple_domain("web-1", 1);
        d.tags = vec!["eu".into()];
        assert!(!p.matches(&d));
        assert_eq!(
            p.why_not(&d).as_deref(),
            Some("the domain lacks the tags [\"prod\"]"),
            "the name fits, so it is not blamed"
        );
        d.name = "db-1".into();
        let why = p.why_not(&d).expect("does not fit");
        assert!(why.starts_with("the name 'db-1' fits none of"), "{why}");
        d.tags.push("prod".into());
        d.name = "web-2".into();
        assert!(p.matches(&d));
        assert_eq!(p.why_not(&d), None);
    }
}
