//! Parsing and validating one persona file (SPEC §3).
//!
//! The file is read into raw serde types (unknown keys are errors) that keep
//! each value's byte span; validation then checks every rule and collects
//! every error of the file, each with its line and column.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::knobs::{
    check_disk_limits, CpuWeight, DeviceRow, DiskField, DiskUnit, Input, Row, QUOTA_MAX_US,
    QUOTA_MIN_US,
};
use super::line_col;
use super::persona::{
    Activation, Agg, Comparison, Condition, Days, DeviceSel, ForecastMode, Globs, Match, Measure,
    Metric, MetricUnit, Mode, Persona, Source, TuningSpec, Window,
};
use super::tuning::{
    Bandwidth, BlkioDeviceTuning, Change, DiskThrottle, InterfaceTuning, Knob, KnobValue,
    DEVICE_ROWS, MEMORY_UNLIMITED_KIB, ROWS,
};
use crate::units::{CpuSet, Duration, Rate, Size};

/// What is wrong, one variant per rule. The message says what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rule {
    #[error("{0}")]
    Syntax(String),
    #[error("invalid id '{0}': expected 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit")]
    BadId(String),
    #[error("duplicate persona id '{id}': also defined in {other}")]
    DuplicateId { id: String, other: String },
    #[error("{key}: {message}")]
    BadUnit { key: String, message: String },
    #[error("{key}: invalid glob '{pattern}': {message}")]
    BadGlob {
        key: String,
        pattern: String,
        message: String,
    },
    #[error("invalid tag '{0}': expected 1-63 characters of a-z, 0-9, '.', '_' and '-'")]
    BadTag(String),
    #[error("mode: expected \"all\" or \"any\", found \"{0}\"")]
    BadMode(String),
    #[error("agg: expected one of avg, max, min, sum, p95, found \"{0}\"")]
    BadAgg(String),
    #[error("days: {0}")]
    BadDays(String),
    #[error("{key}: invalid time '{value}': expected HH:MM from 00:00 to 24:00")]
    BadTime { key: &'static str, value: String },
    #[error("schedule: empty window: from and to are both {0}")]
    EmptyWindow(String),
    #[error("timezone: unknown time zone '{0}': expected a tz database name like \"Europe/Berlin\" or \"UTC\"")]
    UnknownTimezone(String),
    #[error("unknown metric '{name}': expected one of {expected}")]
    UnknownMetric { name: String, expected: String },
    #[error("invalid signal name '{0}': expected characters a-z, 0-9, '.', '_' and '-'")]
    BadSignalName(String),
    #[error("a condition needs exactly one of metric, signal or forecast, found {0}")]
    ConditionSource(String),
    #[error("a condition needs exactly one of above or below, found {0}")]
    ConditionThreshold(String),
    #[error("{key} does not apply to {what} conditions")]
    NotApplicable {
        key: &'static str,
        what: &'static str,
    },
    #[error("a forecast condition needs a horizon (e.g. horizon = \"15m\")")]
    MissingHorizon,
    #[error("bound: expected \"value\", \"upper\" or \"lower\", found \"{0}\"")]
    BadBound(String),
    #[error("forecast_mode: expected \"act\" or \"observe\", found \"{0}\"")]
    BadForecastMode(String),
    #[error("{key}: {metric} is {unit}: expected a number{hint}")]
    ThresholdType {
        key: String,
        metric: String,
        unit: &'static str,
        hint: &'static str,
    },
    #[error("{key}: {value} is out of range: expected {range}")]
    OutOfRange {
        key: String,
        value: String,
        range: String,
    },
    #[error("memory limits must satisfy {order}: {detail}")]
    NestOrder { order: String, detail: String },
    #[error("{key}: invalid {noun} '{device}': expected {expected} or \"*\"")]
    BadIndex {
        key: &'static str,
        noun: &'static str,
        device: String,
        expected: &'static str,
    },
    #[error("{key}: '{device}' is given twice")]
    DeviceTwice { key: &'static str, device: String },
    #[error("blkio_device: path '{0}' must be an absolute path to a host block device")]
    BadDevicePath(String),
    #[error("blkio_device: '{0}' is listed twice: give each device one [[tuning.blkio_device]]")]
    DuplicateDevice(String),
    #[error("interface: target must be an interface name (vnet0), a MAC address or \"*\"")]
    EmptyTarget,
    #[error("disk: target '{0}' must be a disk's target device as the domain names it (vda, sdb) or \"*\"")]
    BadDiskTarget(String),
    #[error("disk: group '{0}': expected characters a-z, A-Z, 0-9, '.', '_' and '-'")]
    BadDiskGroup(String),
    #[error("disk: '{0}' is listed twice: give each disk one [[tuning.disk]]")]
    DuplicateDisk(String),
    #[error("disk '{target}': {reason}")]
    DiskLimits { target: String, reason: String },
    #[error("{0}: expected at least one setting")]
    EmptyTable(&'static str),
    #[error("cpu_weight: {0}")]
    BadWeight(String),
    #[error("cpu_weight and cpu_shares both set the domain's CPU weight: give one (cpu_weight = \"2x\" means twice the default on cgroup v1 and v2 hosts alike)")]
    WeightTwice,
    #[error("required: unknown knob '{0}': expected one of {1}")]
    UnknownRequired(String, String),
    #[error("required: '{0}' is not set in [tuning]: a persona can only require knobs it sets")]
    RequiredNotSet(String),
    #[error("{key}: {count} entries, more than the limit of {max}")]
    TooMany {
        key: String,
        count: usize,
        max: usize,
    },
    #[error("{key}: a pattern of {len} bytes, longer than the limit of {max}")]
    TooLong {
        key: &'static str,
        len: usize,
        max: usize,
    },
    #[error("… and {0} more errors (the first {MAX_FILE_ERRORS} are listed)")]
    MoreErrors(usize),
}

/// The longest list a persona may have (`match.names`, `activation.when`,
/// `[[tuning.interface]]` …): a worst-case file validates in well under
/// a second and is matched quickly every tick.
pub const MAX_LIST: usize = 1_000;
/// The longest `match.names` glob.
pub const MAX_GLOB: usize = 256;
/// Errors listed for one file; the rest are counted.
pub const MAX_FILE_ERRORS: usize = 100;

/// The longest `over` or `for` a condition may have: every sample of the
/// window is kept in memory per domain (720 samples at the 5 s default).
pub const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);
/// A forecast condition's `lead` when none is given.
pub const DEFAULT_LEAD: std::time::Duration = std::time::Duration::from_secs(300);

/// One error in one file, at one place.
#[derive(Debug, Clone, PartialEq)]
pub struct FileError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub rule: Rule,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.rule
        )
    }
}

impl std::error::Error for FileError {}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Int(i64),
    Float(f64),
    Str(String),
}

/// As the file writes it.
impl std::fmt::Display for NumOrStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NumOrStr::Int(i) => write!(f, "{i}"),
            NumOrStr::Float(x) => write!(f, "{x}"),
            NumOrStr::Str(s) => f.write_str(s),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPersona {
    id: Spanned<String>,
    name: Option<String>,
    description: Option<String>,
    priority: Option<i64>,
    persist: Option<bool>,
    #[serde(rename = "match")]
    matcher: Option<RawMatch>,
    activation: Option<RawActivation>,
    // not Spanned: toml 0.8 then reports an error inside an implicit [tuning]
    // (only [[tuning.blkio_device]] given) as "expected a borrowed string"
    tuning: Option<RawTuning>,
    thresholds: Option<BTreeMap<Spanned<String>, Spanned<NumOrStr>>>,
    forecast_mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    names: Vec<Spanned<String>>,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActivation {
    mode: Option<Spanned<String>>,
    hold: Option<Spanned<String>>,
    cooldown: Option<Spanned<String>>,
    #[serde(default)]
    schedule: Vec<Spanned<RawWindow>>,
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    when: Vec<Spanned<RawWhen>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    days: Option<Spanned<String>>,
    from: Spanned<String>,
    to: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    metric: Option<Spanned<String>>,
    signal: Option<Spanned<String>>,
    forecast: Option<Spanned<String>>,
    above: Option<Spanned<NumOrStr>>,
    below: Option<Spanned<NumOrStr>>,
    over: Option<Spanned<String>>,
    agg: Option<Spanned<String>>,
    #[serde(rename = "for")]
    for_: Option<Spanned<String>>,
    horizon: Option<Spanned<String>>,
    lead: Option<Spanned<String>>,
    bound: Option<Spanned<String>>,
}

/// `[tuning]` as written: one field per row of the knob table, and the
/// per-vCPU and per-device lists.
macro_rules! raw_tuning {
    (rows { $( $variant:ident $field:ident : $ty:ty { $($row:tt)* } )* }
     devices { $( $dvariant:ident $dfield:ident [$idx:ident : $ity:ty] : $dty:ty { $($drow:tt)* } )* }) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawTuning {
            $( $dfield: Option<BTreeMap<Spanned<String>, Spanned<NumOrStr>>>, )*
            $( $field: Option<Spanned<NumOrStr>>, )*
            /// `cpu_shares` relative to the host's default ("2x"), resolved per host.
            cpu_weight: Option<Spanned<NumOrStr>>,
            #[serde(default)]
            blkio_device: Vec<Spanned<RawBlkioDevice>>,
            #[serde(default)]
            interface: Vec<Spanned<RawInterface>>,
            #[serde(default)]
            disk: Vec<Spanned<RawDisk>>,
            #[serde(default)]
            required: Vec<Spanned<String>>,
        }

        impl RawTuning {
            /// The table's knobs as the file gives them, in the table's order.
            fn rows(&self) -> Vec<(Knob, Option<&Spanned<NumOrStr>>)> {
                vec![ $( (Knob::$variant, self.$field.as_ref()), )* ]
            }
            /// The per-device rows as the file gives them: the row's key and
            /// its table of device = value.
            #[allow(clippy::type_complexity)]
            fn devices(&self) -> Vec<(&'static str, Option<&BTreeMap<Spanned<String>, Spanned<NumOrStr>>>)> {
                vec![ $( (stringify!($dfield), self.$dfield.as_ref()), )* ]
            }
        }
    };
}

crate::knob_table!(raw_tuning);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlkioDevice {
    path: Spanned<String>,
    weight: Option<Spanned<i64>>,
    read_iops: Option<Spanned<i64>>,
    write_iops: Option<Spanned<i64>>,
    read_bytes_per_sec: Option<Spanned<NumOrStr>>,
    write_bytes_per_sec: Option<Spanned<NumOrStr>>,
}

/// `[[tuning.disk]]` as written: one field per row of the disk field table.
macro_rules! raw_disk {
    ($( $variant:ident $key:literal $unit:ident; )*) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(non_snake_case)]
        struct RawDisk {
            target: Spanned<String>,
            group: Option<Spanned<String>>,
            $( #[serde(rename = $key)] $variant: Option<Spanned<NumOrStr>>, )*
        }

        impl RawDisk {
            fn fields(&self) -> Vec<(DiskField, Option<&Spanned<NumOrStr>>)> {
                vec![ $( (DiskField::$variant, self.$variant.as_ref()), )* ]
            }
        }
    };
}

crate::disk_field_table!(raw_disk);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    target: Spanned<String>,
    inbound: Option<Spanned<RawBandwidth>>,
    outbound: Option<Spanned<RawBandwidth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBandwidth {
    average: Spanned<NumOrStr>,
    peak: Option<Spanned<NumOrStr>>,
    burst: Option<Spanned<NumOrStr>>,
}

/// Collects errors for one file.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<FileError>,
    /// Every error, also those not listed.
    count: usize,
}

impl Ctx<'_> {
    fn err(&mut self, at: usize, rule: Rule) {
        self.count += 1;
        if self.errors.len() >= MAX_FILE_ERRORS {
            return;
        }
        let (line, col) = line_col(self.text, at);
        self.errors.push(FileError {
            file: self.file.to_path_buf(),
            line,
            col,
            rule,
        });
    }
    /// The errors, in file order, and how many more there are.
    fn finish(mut self) -> Vec<FileError> {
        self.errors.sort_by_key(|e| (e.line, e.col));
        if self.count > self.errors.len() {
            let more = self.count - self.errors.len();
            self.errors.push(FileError {
                file: self.file.to_path_buf(),
                line: 0,
                col: 0,
                rule: Rule::MoreErrors(more),
            });
        }
        self.errors
    }

    /// A list over its limit is an error (its entries are not checked).
    fn too_many(&mut self, key: &str, count: usize, max: usize) {
        if count > max {
            let key = key.to_string();
            self.err(0, Rule::TooMany { key, count, max });
        }
    }

    fn unit<T>(
        &mut self,
        key: &str,
        v: &Spanned<String>,
        parse: impl FnOnce(&str) -> Result<T, crate::units::UnitError>,
    ) -> Option<T> {
        match parse(v.get_ref()) {
            Ok(x) => Some(x),
            Err(e) => {
                self.err(
                    v.span().start,
                    Rule::BadUnit {
                        key: key.to_string(),
                        message: e.0,
                    },
                );
                None
            }
        }
    }
    fn duration(&mut self, key: &str, v: &Option<Spanned<String>>) -> Option<Duration> {
        v.as_ref()
            .and_then(|v| self.unit(key, v, |s| s.parse::<Duration>()))
    }
    /// A sample window (`over`, `for`): at most [`MAX_WINDOW`], since the
    /// daemon keeps every sample of it in memory for each domain.
    fn window(&mut self, key: &str, v: &Option<Spanned<String>>) -> Option<Duration> {
        let d = self.duration(key, v)?;
        if d.as_std() > MAX_WINDOW {
            if let Some(v) = v {
                self.err(
                    v.span().start,
                    Rule::OutOfRange {
                        key: key.into(),
                        value: v.get_ref().clone(),
                        range: "at most 1h (samples are kept in memory; use a forecast for longer patterns)".into(),
                    },
                );
            }
            return None;
        }
        Some(d)
    }
    fn range(&mut self, key: &str, v: &Spanned<i64>, lo: i64, hi: i64) -> Option<i64> {
        let x = *v.get_ref();
        if x < lo || x > hi {
            self.err(
                v.span().start,
                Rule::OutOfRange {
                    key: key.into(),
                    value: x.to_string(),
                    range: format!("{lo}..{hi}"),
                },
            );
            return None;
        }
        Some(x)
    }
    /// A size: bare integer bytes, or a string like "2 GiB"; or "unlimited" where allowed.
    fn size(&mut self, key: &str, v: &Spanned<NumOrStr>, unlimited: bool) -> Option<u64> {
        match v.get_ref() {
            NumOrStr::Int(i) if *i >= 0 => Some(*i as u64),
            NumOrStr::Str(s) if unlimited && s.trim() == "unlimited" => Some(u64::MAX),
            NumOrStr::Str(s) => match s.parse::<Size>() {
                Ok(x) => Some(x.0),
                Err(e) => {
                    self.err(
                        v.span().start,
                        Rule::BadUnit {
                            key: key.into(),
                            message: e.0,
                        },
                    );
                    None
                }
            },
            _ => {
                self.err(
                    v.span().start,
                    Rule::BadUnit {
                        key: key.into(),
                        message: "expected a size like \"2 GiB\" or a whole number of bytes".into(),
                    },
                );
                None
            }
        }
    }
    /// A rate: a string like "100 MiB/s" or "800 Mbit/s"; a size string counts per second.
    fn rate(&mut self, key: &str, v: &Spanned<NumOrStr>) -> Option<u64> {
        match v.get_ref() {
            NumOrStr::Int(i) if *i >= 0 => Some(*i as u64),
            NumOrStr::Str(s) => match s.parse::<Rate>() {
                Ok(r) => Some(r.0),
                Err(rate_err) => match s.parse::<Size>() {
                    Ok(x) => Some(x.0),
                    Err(_) => {
                        self.err(
                            v.span().start,
                            Rule::BadUnit {
                                key: key.into(),
                                message: rate_err.0,
                            },
                        );
                        None
                    }
                },
            },
            _ => {
                self.err(
                    v.span().start,
                    Rule::BadUnit { key: key.into(), message: "expected a rate like \"100 MiB/s\" or a whole number of bytes per second".into() },
                );
                None
            }
        }
    }
    fn cpuset(&mut self, key: &str, v: &Spanned<String>) -> Option<CpuSet> {
        self.unit(key, v, |s| s.parse::<CpuSet>())
    }

    /// A knob of the table, parsed as its row's [`Input`] says, in libvirt's units.
    fn knob_value(&mut self, key: &str, input: Input, v: &Spanned<NumOrStr>) -> Option<KnobValue> {
        let at = v.span().start;
        let out_of_range = |value: String| Rule::OutOfRange {
            key: key.into(),
            value,
            range: input.range_text(),
        };
        let bad = |message: &str| Rule::BadUnit {
            key: key.into(),
            message: message.into(),
        };
        match (input, v.get_ref()) {
            (Input::CpuSet | Input::NodeSet, NumOrStr::Str(text)) => {
                let text = Spanned::new(v.span(), text.clone());
                self.cpuset(key, &text).map(KnobValue::CpuSet)
            }
            (Input::CpuSet | Input::NodeSet, _) => {
                self.err(at, bad("expected a set like \"0-3,6\""));
                None
            }
            (Input::Count { min, max }, NumOrStr::Int(i)) => match u64::try_from(*i) {
                Ok(x) if (min..=max).contains(&x) => Some(KnobValue::Unsigned(x)),
                _ => {
                    self.err(at, out_of_range(i.to_string()));
                    None
                }
            },
            (Input::Count { .. }, _) => {
                self.err(at, bad("expected a whole number"));
                None
            }
            (Input::Micros { min, max }, NumOrStr::Str(text)) => {
                let d = self.unit(key, &Spanned::new(v.span(), text.clone()), |x| {
                    x.parse::<Duration>()
                })?;
                let us = d.as_micros();
                if (min..=max).contains(&us) {
                    Some(KnobValue::Unsigned(us))
                } else {
                    self.err(at, out_of_range(text.clone()));
                    None
                }
            }
            (Input::Micros { .. }, _) => {
                self.err(at, bad("expected a duration like \"100ms\""));
                None
            }
            (Input::Quota, NumOrStr::Int(-1)) => Some(KnobValue::Signed(-1)),
            (Input::Quota, NumOrStr::Str(x)) if x.trim() == "-1" || x.trim() == "unlimited" => {
                Some(KnobValue::Signed(-1))
            }
            (Input::Quota, NumOrStr::Str(x)) => match x.parse::<Duration>() {
                Ok(d) => match i64::try_from(d.as_micros()) {
                    Ok(us) if (QUOTA_MIN_US..=QUOTA_MAX_US).contains(&us) => {
                        Some(KnobValue::Signed(us))
                    }
                    _ => {
                        self.err(at, out_of_range(x.clone()));
                        None
                    }
                },
                Err(e) => {
                    self.err(at, bad(&e.0));
                    None
                }
            },
            (Input::Quota, _) => {
                self.err(
                    at,
                    bad("expected a duration like \"50ms\", or \"unlimited\""),
                );
                None
            }
            (Input::Memory, _) => self
                .size(key, v, true)
                .map(|bytes| KnobValue::Unsigned(kib(bytes))),
        }
    }
}

fn valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Tag and signal names: `[a-z0-9._-]+`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

fn metric_names() -> String {
    Metric::ALL
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_time(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

fn day_index(s: &str) -> Option<u8> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let l = s.trim().to_ascii_lowercase();
    let l = l.get(..3).filter(|_| {
        l.len() == 3
            || [
                "monday",
                "tuesday",
                "wednesday",
                "thursday",
                "friday",
                "saturday",
                "sunday",
            ]
            .contains(&l.as_str())
    })?;
    NAMES.iter().position(|n| *n == l).map(|i| i as u8)
}

/// Parses "mon-fri", "sat,sun", "fri-mon" (wraps), "*" or "daily".
pub fn parse_days(s: &str) -> Result<Days, String> {
    let t = s.trim();
    if t == "*" || t.eq_ignore_ascii_case("daily") || t.eq_ignore_ascii_case("all") {
        return Ok(Days::ALL);
    }
    if t.is_empty() {
        return Err("empty day list: expected e.g. \"mon-fri\" or \"sat,sun\"".into());
    }
    let mut bits = 0u8;
    for part in t.split(',') {
        let unknown = |d: &str| {
            format!(
                "unknown day '{}': expected mon, tue, wed, thu, fri, sat, sun",
                d.trim()
            )
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let a = day_index(a).ok_or_else(|| unknown(a))?;
                let b = day_index(b).ok_or_else(|| unknown(b))?;
                let mut d = a;
                loop {
                    bits |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => bits |= 1 << day_index(part).ok_or_else(|| unknown(part))?,
        }
    }
    Ok(Days(bits))
}

fn describe(present: &[&str]) -> String {
    if present.is_empty() {
        "none".into()
    } else {
        present.join(" and ")
    }
}

/// Parses and validates one persona file's text. Returns every error found.
pub fn parse_persona(text: &str, file: &Path) -> Result<Persona, Vec<FileError>> {
    let mut cx = Ctx {
        file,
        text,
        errors: Vec::new(),
        count: 0,
    };
    let raw: RawPersona = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            // one line per error, like a compiler
            let msg = e
                .message()
                .trim()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ");
            cx.err(at, Rule::Syntax(msg));
            return Err(cx.finish());
        }
    };
    // lists over their limits: said at once, their entries never looked at
    if let Some(m) = &raw.matcher {
        cx.too_many("match.names", m.names.len(), MAX_LIST);
        cx.too_many("match.tags", m.tags.len(), MAX_LIST);
    }
    if let Some(a) = &raw.activation {
        cx.too_many("activation.schedule", a.schedule.len(), MAX_LIST);
        cx.too_many("activation.when", a.when.len(), MAX_LIST);
    }
    if let Some(t) = &raw.tuning {
        for (row, (_, map)) in DEVICE_ROWS.iter().zip(t.devices()) {
            cx.too_many(
                &format!("tuning.{}", row.key),
                map.map_or(0, |m| m.len()),
                row.index.max_entries(),
            );
        }
        cx.too_many("tuning.blkio_device", t.blkio_device.len(), MAX_LIST);
        cx.too_many("tuning.interface", t.interface.len(), MAX_LIST);
        cx.too_many("tuning.required", t.required.len(), MAX_LIST);
    }
    cx.too_many(
        "thresholds",
        raw.thresholds.as_ref().map_or(0, |t| t.len()),
        MAX_LIST,
    );
    if cx.count > 0 {
        return Err(cx.finish());
    }
    let id = raw.id.get_ref().clone();
    if !valid_id(&id) {
        cx.err(raw.id.span().start, Rule::BadId(id.clone()));
    }

    // [match]
    let mut matcher = Match::default();
    if let Some(m) = &raw.matcher {
        for n in &m.names {
            if n.get_ref().len() > MAX_GLOB {
                cx.err(
                    n.span().start,
                    Rule::TooLong {
                        key: "match.names",
                        len: n.get_ref().len(),
                        max: MAX_GLOB,
                    },
                );
                continue;
            }
            // parsed here, compiled once for all below
            match globset::GlobBuilder::new(n.get_ref())
                .literal_separator(false)
                .build()
            {
                Ok(_) => matcher.names.push(n.get_ref().clone()),
                Err(e) => cx.err(
                    n.span().start,
                    Rule::BadGlob {
                        key: "match.names".into(),
                        pattern: n.get_ref().clone(),
                        message: e.kind().to_string(),
                    },
                ),
            }
        }
        for t in &m.tags {
            if valid_name(t.get_ref()) && t.get_ref().len() <= 63 {
                matcher.tags.push(t.get_ref().clone());
            } else {
                cx.err(t.span().start, Rule::BadTag(t.get_ref().clone()));
            }
        }
        matcher.globs = Globs::new(&matcher.names).unwrap_or_default();
    }

    let activation = raw.activation.as_ref().map(|a| activation(&mut cx, a));
    let tuning = raw
        .tuning
        .as_ref()
        .map(|t| tuning(&mut cx, t))
        .unwrap_or_default();

    let mut thresholds = BTreeMap::new();
    for (k, v) in raw.thresholds.iter().flatten() {
        match Metric::from_name(k.get_ref()) {
            None => cx.err(
                k.span().start,
                Rule::UnknownMetric {
                    name: k.get_ref().clone(),
                    expected: metric_names(),
                },
            ),
            Some(m) => {
                if let Some(x) =
                    threshold_value(&mut cx, &format!("thresholds.{}", m.name()), Some(m), v)
                {
                    thresholds.insert(m, x);
                }
            }
        }
    }

    let forecast_mode = match &raw.forecast_mode {
        None => ForecastMode::Act,
        Some(m) => ForecastMode::from_name(m.get_ref()).unwrap_or_else(|| {
            cx.err(m.span().start, Rule::BadForecastMode(m.get_ref().clone()));
            ForecastMode::Act
        }),
    };
    if cx.count > 0 {
        return Err(cx.finish());
    }
    Ok(Persona {
        name: raw
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| id.clone()),
        id,
        description: raw.description.clone().unwrap_or_default(),
        priority: raw.priority.unwrap_or(0),
        persist: raw.persist.unwrap_or(false),
        matcher,
        activation: activation.flatten(),
        tuning,
        thresholds,
        forecast_mode,
    })
}

fn threshold_value(
    cx: &mut Ctx<'_>,
    key: &str,
    metric: Option<Metric>,
    v: &Spanned<NumOrStr>,
) -> Option<f64> {
    let unit = metric.map(Metric::unit).unwrap_or(MetricUnit::Plain);
    match v.get_ref() {
        NumOrStr::Int(i) => Some(*i as f64),
        NumOrStr::Float(f) if f.is_finite() => Some(*f),
        NumOrStr::Float(_) => {
            cx.err(
                v.span().start,
                Rule::OutOfRange {
                    key: key.into(),
                    value: "a non-finite number".into(),
                    range: "a finite number".into(),
                },
            );
            None
        }
        NumOrStr::Str(_) => match unit {
            MetricUnit::Bytes => cx.size(key, v, false).map(|x| x as f64),
            MetricUnit::BytesPerSec => cx.rate(key, v).map(|x| x as f64),
            other => {
                let (unit, hint) = match (metric, other) {
                    (None, _) => ("a signal", ""),
                    (_, MetricUnit::Percent) => ("a percentage", " (e.g. 80)"),
                    (_, MetricUnit::PerSec) => ("a count per second", " (e.g. 500)"),
                    _ => ("a plain number", ""),
                };
                cx.err(
                    v.span().start,
                    Rule::ThresholdType {
                        key: key.into(),
                        metric: metric
                            .map(|m| m.name().to_string())
                            .unwrap_or_else(|| "the value".into()),
                        unit,
                        hint,
                    },
                );
                None
            }
        },
    }
}

fn activation(cx: &mut Ctx<'_>, a: &RawActivation) -> Option<Activation> {
    let before = cx.count;
    let mode = match a.mode.as_ref() {
        None => Mode::All,
        Some(m) => match m.get_ref().as_str() {
            "all" => Mode::All,
            "any" => Mode::Any,
            other => {
                cx.err(m.span().start, Rule::BadMode(other.to_string()));
                Mode::All
            }
        },
    };
    let hold = cx.duration("hold", &a.hold).unwrap_or_default();
    let cooldown = cx.duration("cooldown", &a.cooldown).unwrap_or_default();
    let (timezone, zone) = match &a.timezone {
        None => (None, jiff::tz::TimeZone::system()),
        Some(tz) => match jiff::tz::TimeZone::get(tz.get_ref()) {
            Ok(zone) => (Some(tz.get_ref().clone()), zone),
            Err(_) => {
                cx.err(tz.span().start, Rule::UnknownTimezone(tz.get_ref().clone()));
                (None, jiff::tz::TimeZone::UTC)
            }
        },
    };
    let mut schedule = Vec::new();
    for w in &a.schedule {
        let w = w.get_ref();
        let days = match &w.days {
            None => Some(Days::ALL),
            Some(d) => match parse_days(d.get_ref()) {
                Ok(x) => Some(x),
                Err(m) => {
                    cx.err(d.span().start, Rule::BadDays(m));
                    None
                }
            },
        };
        let mut time = |key: &'static str, v: &Spanned<String>| match parse_time(v.get_ref()) {
            Some(t) => Some(t),
            None => {
                cx.err(
                    v.span().start,
                    Rule::BadTime {
                        key,
                        value: v.get_ref().clone(),
                    },
                );
                None
            }
        };
        let from = time("from", &w.from);
        let to = time("to", &w.to);
        if let (Some(f), Some(t)) = (from, to) {
            if f == t {
                cx.err(
                    w.from.span().start,
                    Rule::EmptyWindow(w.from.get_ref().trim().to_string()),
                );
            } else if let Some(days) = days {
                schedule.push(Window {
                    days,
                    from: f,
                    to: t,
                });
            }
        }
    }
    let mut when = Vec::new();
    for c in &a.when {
        if let Some(cond) = condition(cx, c) {
            when.push(cond);
        }
    }
    if cx.count > before {
        return None;
    }
    Some(Activation {
        mode,
        hold,
        cooldown,
        schedule,
        timezone,
        zone,
        when,
    })
}

fn condition(cx: &mut Ctx<'_>, c: &Spanned<RawWhen>) -> Option<Condition> {
    let at = c.span().start;
    let r = c.get_ref();
    let before = cx.count;
    let mut present = Vec::new();
    if r.metric.is_some() {
        present.push("metric");
    }
    if r.signal.is_some() {
        present.push("signal");
    }
    if r.forecast.is_some() {
        present.push("forecast");
    }
    let metric_of = |cx: &mut Ctx<'_>, v: &Spanned<String>| match Metric::from_name(v.get_ref()) {
        Some(m) => Some(m),
        None => {
            cx.err(
                v.span().start,
                Rule::UnknownMetric {
                    name: v.get_ref().clone(),
                    expected: metric_names(),
                },
            );
            None
        }
    };
    let source = match (&r.metric, &r.signal, &r.forecast) {
        (Some(m), None, None) => metric_of(cx, m).map(Source::Metric),
        (None, Some(s), None) => {
            if valid_name(s.get_ref()) {
                Some(Source::Signal(s.get_ref().clone()))
            } else {
                cx.err(s.span().start, Rule::BadSignalName(s.get_ref().clone()));
                None
            }
        }
        // `forecast = "signal:NAME"` forecasts a signal from its own history
        (None, None, Some(f)) => match f.get_ref().strip_prefix(Measure::SIGNAL) {
            Some(name) if valid_name(name) => {
                Some(Source::Forecast(Measure::Signal(name.to_string())))
            }
            Some(name) => {
                cx.err(f.span().start, Rule::BadSignalName(name.to_string()));
                None
            }
            None => metric_of(cx, f).map(|m| Source::Forecast(Measure::Metric(m))),
        },
        _ => {
            cx.err(at, Rule::ConditionSource(describe(&present)));
            None
        }
    };
    let metric = match &source {
        Some(Source::Metric(m) | Source::Forecast(Measure::Metric(m))) => Some(*m),
        _ => None,
    };
    let comparison = match (&r.above, &r.below) {
        (Some(v), None) => threshold_value(cx, "above", metric, v).map(Comparison::Above),
        (None, Some(v)) => threshold_value(cx, "below", metric, v).map(Comparison::Below),
        (a, b) => {
            let mut p = Vec::new();
            if a.is_some() {
                p.push("above");
            }
            if b.is_some() {
                p.push("below");
            }
            cx.err(at, Rule::ConditionThreshold(describe(&p)));
            None
        }
    };
    let over = cx.window("over", &r.over);
    let for_ = cx.window("for", &r.for_);
    let horizon = cx.duration("horizon", &r.horizon);
    let lead = cx.duration("lead", &r.lead);
    let bound = match &r.bound {
        None => crate::model::persona::Bound::Value,
        Some(b) => crate::model::persona::Bound::from_name(b.get_ref()).unwrap_or_else(|| {
            cx.err(b.span().start, Rule::BadBound(b.get_ref().clone()));
            crate::model::persona::Bound::Value
        }),
    };
    let agg = match &r.agg {
        None => Agg::Avg,
        Some(a) => Agg::from_name(a.get_ref()).unwrap_or_else(|| {
            cx.err(a.span().start, Rule::BadAgg(a.get_ref().clone()));
            Agg::Avg
        }),
    };
    let what = match &source {
        Some(Source::Signal(_)) => "signal",
        Some(Source::Forecast(_)) => "forecast",
        _ => "metric",
    };
    if what != "metric" {
        for (key, v) in [("over", &r.over), ("agg", &r.agg)] {
            if let Some(v) = v {
                cx.err(v.span().start, Rule::NotApplicable { key, what });
            }
        }
    }
    if what != "forecast" {
        for (key, v) in [
            ("horizon", &r.horizon),
            ("lead", &r.lead),
            ("bound", &r.bound),
        ] {
            if let Some(v) = v {
                cx.err(v.span().start, Rule::NotApplicable { key, what });
            }
        }
    } else if r.horizon.is_none() {
        cx.err(at, Rule::MissingHorizon);
    } else {
        // a fit forecasts a day ahead: horizon and lead together must fit in it
        let ahead =
            std::time::Duration::from_millis(crate::model::persona::FORECAST_REACH_MS as u64);
        let total = horizon.map(|h| h.as_std()).unwrap_or_default()
            + lead.map(|l| l.as_std()).unwrap_or(DEFAULT_LEAD);
        if total > ahead {
            if let Some(h) = &r.horizon {
                cx.err(
                    h.span().start,
                    Rule::OutOfRange {
                        key: "horizon".into(),
                        value: h.get_ref().clone(),
                        range: "horizon + lead at most 24h (forecasts reach a day ahead)".into(),
                    },
                );
            }
        }
    }
    if cx.count > before {
        return None;
    }
    Some(Condition {
        source: source?,
        comparison: comparison?,
        over,
        agg,
        for_,
        horizon,
        lead: if what == "forecast" {
            Some(lead.unwrap_or(Duration(DEFAULT_LEAD)))
        } else {
            None
        },
        bound,
    })
}

fn kib(bytes: u64) -> u64 {
    if bytes == u64::MAX {
        MEMORY_UNLIMITED_KIB
    } else {
        Size(bytes).kib_ceil()
    }
}

/// A per-device row of the knob table (`vcpu_pin`, `iothread_pin` …): a
/// table of device (as its row's index names one, or `"*"`) = value, each
/// value parsed as the row's [`Input`] says; sorted so that the order in the
/// file is no matter.
fn device_entries(
    cx: &mut Ctx<'_>,
    row: &DeviceRow,
    map: &BTreeMap<Spanned<String>, Spanned<NumOrStr>>,
) -> Vec<(DeviceSel, KnobValue)> {
    let mut out: Vec<(DeviceSel, KnobValue)> = Vec::new();
    for (k, v) in map {
        let sel = match k.get_ref().trim() {
            "*" => Some(DeviceSel::All),
            n => match row.index.parse(n) {
                Some(id) => Some(DeviceSel::One(id)),
                None => {
                    cx.err(
                        k.span().start,
                        Rule::BadIndex {
                            key: row.key,
                            noun: row.index.noun(),
                            device: k.get_ref().clone(),
                            expected: row.index.expected(),
                        },
                    );
                    None
                }
            },
        };
        let value = cx.knob_value(&format!("{}.{}", row.key, k.get_ref()), row.input, v);
        if let (Some(sel), Some(value)) = (sel, value) {
            if out.iter().any(|(s, _)| *s == sel) {
                cx.err(
                    k.span().start,
                    Rule::DeviceTwice {
                        key: row.key,
                        device: k.get_ref().trim().to_string(),
                    },
                );
                continue;
            }
            out.push((sel, value));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn tuning(cx: &mut Ctx<'_>, r: &RawTuning) -> TuningSpec {
    let mut s = TuningSpec::default();
    // the per-device rows: a table of device = value each
    for (row, (key, map)) in DEVICE_ROWS.iter().zip(r.devices()) {
        debug_assert_eq!(row.key, key);
        let Some(map) = map else { continue };
        let entries = device_entries(cx, row, map);
        if !entries.is_empty() {
            s.devices.insert(row.key, entries);
        }
    }
    // the table's knobs, each parsed as its row says
    let mut nested: Vec<(u8, &'static str, u64, usize)> = Vec::new();
    for (knob, v) in r.rows() {
        let (Some(v), Some(row)) = (v, knob.row()) else {
            continue;
        };
        let Some(value) = cx.knob_value(row.key, row.input, v) else {
            continue;
        };
        if let (Some(rank), KnobValue::Unsigned(x)) = (row.nest, &value) {
            nested.push((rank, row.key, *x, v.span().start));
        }
        s.fixed.set(&Change { knob, value });
    }
    if let Some(w) = &r.cpu_weight {
        match w.get_ref() {
            NumOrStr::Str(t) => match t.parse::<CpuWeight>() {
                Ok(x) => s.cpu_weight = Some(x),
                Err(e) => cx.err(w.span().start, Rule::BadWeight(e)),
            },
            other => cx.err(
                w.span().start,
                Rule::BadWeight(format!(
                    "{other}: expected a factor of this host's default weight as a string, e.g. \"2x\" (cpu_shares takes absolute numbers)"
                )),
            ),
        }
        if let Some(shares) = &r.cpu_shares {
            cx.err(shares.span().start.max(w.span().start), Rule::WeightTwice);
        }
    }
    // nested limits (memory: soft <= hard <= swap) in their order
    nested.sort_unstable();
    for pair in nested.windows(2) {
        let ((_, n1, v1, _), (_, n2, v2, at2)) = (pair[0], pair[1]);
        if v1 > v2 {
            let show = |kib: u64| {
                if kib == MEMORY_UNLIMITED_KIB {
                    "unlimited".to_string()
                } else {
                    Size(kib.saturating_mul(1024)).to_string()
                }
            };
            let mut ordered: Vec<&Row> = ROWS.iter().filter(|r| r.nest.is_some()).collect();
            ordered.sort_by_key(|r| r.nest);
            let ordered: Vec<&str> = ordered.iter().map(|r| r.key).collect();
            cx.err(
                at2,
                Rule::NestOrder {
                    order: ordered.join(" <= "),
                    detail: format!("{n1} ({}) is above {n2} ({})", show(v1), show(v2)),
                },
            );
        }
    }
    for d in &r.blkio_device {
        let d = d.get_ref();
        let path = d.path.get_ref().clone();
        if !path.starts_with('/') || path.contains(',') {
            cx.err(d.path.span().start, Rule::BadDevicePath(path.clone()));
        }
        let mut dev = BlkioDeviceTuning {
            weight: d
                .weight
                .as_ref()
                .and_then(|v| cx.range("blkio_device.weight", v, 100, 1000))
                .map(|x| x as u32),
            read_iops: d
                .read_iops
                .as_ref()
                .and_then(|v| cx.range("blkio_device.read_iops", v, 1, i64::MAX))
                .map(|x| x as u64),
            write_iops: d
                .write_iops
                .as_ref()
                .and_then(|v| cx.range("blkio_device.write_iops", v, 1, i64::MAX))
                .map(|x| x as u64),
            read_bytes_per_sec: None,
            write_bytes_per_sec: None,
        };
        dev.read_bytes_per_sec = d
            .read_bytes_per_sec
            .as_ref()
            .and_then(|v| cx.rate("blkio_device.read_bytes_per_sec", v));
        dev.write_bytes_per_sec = d
            .write_bytes_per_sec
            .as_ref()
            .and_then(|v| cx.rate("blkio_device.write_bytes_per_sec", v));
        if dev == BlkioDeviceTuning::default()
            && d.weight.is_none()
            && d.read_iops.is_none()
            && d.write_iops.is_none()
            && d.read_bytes_per_sec.is_none()
            && d.write_bytes_per_sec.is_none()
        {
            cx.err(d.path.span().start, Rule::EmptyTable("blkio_device"));
        }
        if s.fixed.blkio_devices.insert(path.clone(), dev).is_some() {
            cx.err(d.path.span().start, Rule::DuplicateDevice(path));
        }
    }
    for i in &r.interface {
        let i = i.get_ref();
        let target = i.target.get_ref().trim().to_string();
        if target.is_empty() {
            cx.err(i.target.span().start, Rule::EmptyTarget);
        }
        if i.inbound.is_none() && i.outbound.is_none() {
            cx.err(
                i.target.span().start,
                Rule::EmptyTable("interface (inbound or outbound)"),
            );
        }
        let mut bw = |dir: &str, b: &Option<Spanned<RawBandwidth>>| -> Option<Bandwidth> {
            let b = b.as_ref()?.get_ref();
            let kibps = |cx: &mut Ctx<'_>,
                         key: String,
                         v: &Spanned<NumOrStr>,
                         per_sec: bool|
             -> Option<u32> {
                let bytes = if per_sec {
                    cx.rate(&key, v)?
                } else {
                    cx.size(&key, v, false)?
                };
                let k = Size(bytes).kib_ceil();
                match u32::try_from(k) {
                    Ok(x) => Some(x),
                    Err(_) => {
                        cx.err(
                            v.span().start,
                            Rule::OutOfRange {
                                key,
                                value: Size(bytes).to_string(),
                                range: "at most 4 TiB".into(),
                            },
                        );
                        None
                    }
                }
            };
            let average = kibps(cx, format!("interface.{dir}.average"), &b.average, true)?;
            if average == 0 {
                cx.err(
                    b.average.span().start,
                    Rule::OutOfRange {
                        key: format!("interface.{dir}.average"),
                        value: "0".into(),
                        range: "more than 0".into(),
                    },
                );
            }
            let peak = b
                .peak
                .as_ref()
                .map(|p| kibps(cx, format!("interface.{dir}.peak"), p, true))
                .unwrap_or(Some(0))?;
            let burst = b
                .burst
                .as_ref()
                .map(|p| kibps(cx, format!("interface.{dir}.burst"), p, false))
                .unwrap_or(Some(0))?;
            Some(Bandwidth {
                average,
                peak,
                burst,
            })
        };
        let inbound = bw("inbound", &i.inbound);
        let outbound = bw("outbound", &i.outbound);
        s.interfaces
            .push((target, InterfaceTuning { inbound, outbound }));
    }
    for d in &r.disk {
        let d = d.get_ref();
        let target = d.target.get_ref().trim().to_string();
        let at = d.target.span().start;
        if target.is_empty()
            || !target
                .chars()
                .all(|c| c == '*' || c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || (target.contains('*') && target != "*")
        {
            cx.err(at, Rule::BadDiskTarget(target.clone()));
        }
        let mut throttle = DiskThrottle::default();
        let mut given = false;
        for (field, v) in d.fields() {
            let Some(v) = v else { continue };
            given = true;
            let key = format!("disk.{}", field.key());
            let whole = |v: &NumOrStr| match v {
                NumOrStr::Int(i) if *i >= 1 => Some(*i as u64),
                // "30s": whole seconds only
                NumOrStr::Str(t) if field.unit() == DiskUnit::Seconds => t
                    .parse::<Duration>()
                    .ok()
                    .map(|d| d.as_micros())
                    .filter(|us| *us >= 1_000_000 && us % 1_000_000 == 0)
                    .map(|us| us / 1_000_000),
                _ => None,
            };
            let value = match field.unit() {
                DiskUnit::Bytes => cx.rate(&key, v),
                unit => {
                    let got = whole(v.get_ref());
                    if got.is_none() {
                        let range = if unit == DiskUnit::Iops {
                            "a whole number of operations per second, at least 1"
                        } else {
                            "whole seconds, at least 1s"
                        };
                        cx.err(
                            v.span().start,
                            Rule::OutOfRange {
                                key,
                                value: v.get_ref().to_string(),
                                range: range.into(),
                            },
                        );
                    }
                    got
                }
            };
            if let Some(value) = value.filter(|x| *x > 0) {
                throttle.limits.insert(field, value);
            }
        }
        if let Some(g) = &d.group {
            let name = g.get_ref().trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                cx.err(g.span().start, Rule::BadDiskGroup(name.to_string()));
            } else {
                throttle.group = Some(name.to_string());
            }
        }
        if !given {
            cx.err(at, Rule::EmptyTable("disk"));
        } else if let Err(reason) = check_disk_limits(&throttle.limits) {
            cx.err(
                at,
                Rule::DiskLimits {
                    target: target.clone(),
                    reason,
                },
            );
        }
        if s.disks.iter().any(|(t, _)| *t == target) {
            cx.err(at, Rule::DuplicateDisk(target.clone()));
        }
        s.disks.push((target, throttle));
    }
    for k in &r.required {
        let key = k.get_ref().trim();
        let set = match key {
            "blkio_device" => !r.blkio_device.is_empty(),
            "interface" => !r.interface.is_empty(),
            "disk" => !r.disk.is_empty(),
            // the knob it sets is cpu_shares
            "cpu_weight" => {
                if r.cpu_weight.is_none() {
                    cx.err(k.span().start, Rule::RequiredNotSet(key.to_string()));
                } else if !s.required.iter().any(|x| x == "cpu_shares") {
                    s.required.push("cpu_shares".to_string());
                }
                continue;
            }
            _ => match r
                .devices()
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, m)| m.is_some())
                .or_else(|| {
                    r.rows()
                        .into_iter()
                        .find(|(k, _)| k.key() == key)
                        .map(|(_, v)| v.is_some())
                }) {
                Some(set) => set,
                None => {
                    cx.err(
                        k.span().start,
                        Rule::UnknownRequired(
                            key.to_string(),
                            format!("{}, cpu_weight", Knob::KEYS.join(", ")),
                        ),
                    );
                    continue;
                }
            },
        };
        if !set {
            cx.err(k.span().start, Rule::RequiredNotSet(key.to_string()));
        } else if !s.required.iter().any(|x| x == key) {
            s.required.push(key.to_string());
        }
    }
    s
}

/// Reads and validates one persona file.
pub fn load_file(path: &Path) -> Result<Persona, Vec<FileError>> {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse_persona(&text, path),
            Err(e) => Err(vec![FileError {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                rule: Rule::Syntax(format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                )),
            }]),
        },
        Err(e) => Err(vec![FileError {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            rule: Rule::Syntax(format!("cannot read: {e}")),
        }]),
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn names(n: usize, len: usize) -> String {
        let glob = |i: usize| format!("{:a<len$}", format!("w{i}-*"), len = len);
        let list: Vec<String> = (0..n).map(|i| format!("\"{}\"", glob(i))).collect();
        format!("id = \"x\"\n[match]\nnames = [{}]\n", list.join(","))
    }

    #[test]
    fn lists_over_their_limits_are_refused_before_their_entries_are_read() {
        let e = parse_persona(&names(MAX_LIST + 1, 8), Path::new("p.toml")).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0].rule.to_string(),
            "match.names: 1001 entries, more than the limit of 1000"
        );
        assert!(parse_persona(&names(MAX_LIST, 8), Path::new("p.toml")).is_ok());
        let e = parse_persona(&names(1, MAX_GLOB + 1), Path::new("p.toml")).unwrap_err();
        assert_eq!(
            e[0].rule.to_string(),
            "match.names: a pattern of 257 bytes, longer than the limit of 256"
        );
    }

    #[test]
    fn a_file_of_many_errors_lists_the_first_hundred_and_counts_the_rest() {
        let bad: Vec<String> = (0..500).map(|i| format!("\"BAD TAG {i}\"")).collect();
        let text = format!("id = \"x\"\n[match]\ntags = [{}]\n", bad.join(",\n"));
        let e = parse_persona(&text, Path::new("p.toml")).unwrap_err();
        assert_eq!(e.len(), MAX_FILE_ERRORS + 1);
        assert_eq!(
            e.last().unwrap().rule.to_string(),
            "… and 400 more errors (the first 100 are listed)"
        );
        assert_eq!((e[0].line, e[99].line), (3, 102), "in file order: {}", e[0]);
    }
}
