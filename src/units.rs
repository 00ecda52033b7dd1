//! Units used in persona files and by the hypervisor layer: sizes, durations,
//! rates and host CPU sets.
//!
//! Every parser is total (never panics) and rejects overflow, negatives,
//! empty input and unknown suffixes with a message that says what it expected.
//! `Display` of every type parses back to the same value.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Why a unit string did not parse. The message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, UnitError> {
    Err(UnitError(msg.into()))
}

/// Splits "1.5 GiB" into ("1.5", "GiB"); whitespace around and between is allowed.
fn split_number(s: &str) -> (&str, &str) {
    let s = s.trim();
    let end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim())
}

/// Parses a non-negative decimal number as an exact rational `mantissa / 10^scale`
/// and multiplies by `factor`, rounding to the nearest integer. Rejects overflow.
fn scale_decimal(num: &str, factor: u128, what: &str) -> Result<u64, UnitError> {
    if num.is_empty() {
        return err(format!("expected a number before the unit in {what}"));
    }
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return err(format!("'{num}' is not a number"));
    }
    if frac.len() > 9 {
        return err(format!("'{num}' has more than 9 decimal places"));
    }
    let digits = format!("{int}{frac}");
    let mantissa: u128 = digits
        .parse()
        .map_err(|_| UnitError(format!("'{num}' is too large")))?;
    let div = 10u128.pow(frac.len() as u32);
    let scaled = mantissa
        .checked_mul(factor)
        .ok_or_else(|| UnitError(format!("'{num}' is too large")))?;
    let value = (scaled + div / 2) / div;
    u64::try_from(value)
        .map_err(|_| UnitError(format!("{what} is too large (at most {})", u64::MAX)))
}

fn size_factor(unit: &str) -> Option<u128> {
    let u = unit.to_ascii_lowercase();
    let u = u.strip_suffix("ytes").map(|s| s.to_string()).unwrap_or(u);
    Some(match u.as_str() {
        "" | "b" => 1,
        "k" | "kib" | "ki" => 1 << 10,
        "m" | "mib" | "mi" => 1 << 20,
        "g" | "gib" | "gi" => 1 << 30,
        "t" | "tib" | "ti" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    })
}

/// A size in bytes. Parses `"512 MiB"`, `"2GiB"`, `"1.5 G"`, `"4096"`;
/// `K/M/G/T` and `KiB…` are powers of 1024 (as in libvirt), `KB/MB/GB/TB` powers of 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }
    /// Kibibytes, rounded up so a non-zero size never becomes 0 KiB.
    pub fn kib_ceil(self) -> u64 {
        self.0.div_ceil(1024)
    }
}

impl FromStr for Size {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        if s.trim().is_empty() {
            return err("expected a size like \"512 MiB\", \"2GiB\" or a number of bytes, found an empty string");
        }
        if s.trim_start().starts_with('-') {
            return err(format!("size '{}' is negative", s.trim()));
        }
        let (num, unit) = split_number(s);
        let factor = size_factor(unit).ok_or_else(|| {
            UnitError(format!(
                "unknown size unit '{unit}' in '{}': expected B, KiB, MiB, GiB, TiB (K, M, G, T) or KB, MB, GB, TB",
                s.trim()
            ))
        })?;
        scale_decimal(num, factor, &format!("size '{}'", s.trim())).map(Size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (factor, name) in UNITS {
            if self.0 >= factor && self.0 % factor == 0 {
                return write!(f, "{} {name}", self.0 / factor);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A duration with microsecond resolution. Parses `"30s"`, `"5m"`, `"1h30m"`,
/// `"100ms"`, `"250us"`, `"2d"`, and combinations in decreasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub fn as_std(self) -> std::time::Duration {
        self.0
    }
    pub fn as_micros(self) -> u64 {
        u64::try_from(self.0.as_micros()).unwrap_or(u64::MAX)
    }
}

impl FromStr for Duration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let text = s.trim();
        if text.is_empty() {
            return err(
                "expected a duration like \"30s\", \"5m\" or \"1h30m\", found an empty string",
            );
        }
        if text.starts_with('-') {
            return err(format!("duration '{text}' is negative"));
        }
        let mut rest = text;
        let mut total_us: u128 = 0;
        let mut last_rank = usize::MAX;
        while !rest.is_empty() {
            let (num, tail) = split_number(rest);
            if num.is_empty() {
                return err(format!(
                    "expected a number in duration '{text}' at '{rest}'"
                ));
            }
            let unit_len = tail
                .char_indices()
                .find(|(_, c)| !c.is_ascii_alphabetic() && *c != 'µ')
                .map(|(i, _)| i)
                .unwrap_or(tail.len());
            let unit = &tail[..unit_len];
            // rank orders units from largest to smallest so "1h30m" is fine and "30m1h" is not
            let (rank, us): (usize, u128) = match unit {
                "d" => (0, 86_400_000_000),
                "h" => (1, 3_600_000_000),
                "m" | "min" => (2, 60_000_000),
                "s" => (3, 1_000_000),
                "ms" => (4, 1_000),
                "us" | "µs" => (5, 1),
                "" => {
                    return err(format!(
                        "duration '{text}' needs a unit: d, h, m, s, ms or us (e.g. \"30s\")"
                    ))
                }
                other => {
                    return err(format!(
                        "unknown duration unit '{other}' in '{text}': expected d, h, m, s, ms or us"
                    ))
                }
            };
            if last_rank != usize::MAX && rank <= last_rank {
                return err(format!(
                    "duration '{text}': units must go from largest to smallest, each once (e.g. \"1h30m\")"
                ));
            }
            last_rank = rank;
            let part = scale_decimal(num, us, &format!("duration '{text}'"))?;
            total_us = total_us
                .checked_add(part as u128)
                .ok_or_else(|| UnitError(format!("duration '{text}' is too large")))?;
            rest = tail[unit_len..].trim_start();
        }
        let micros = u64::try_from(total_us)
            .map_err(|_| UnitError(format!("duration '{text}' is too large")))?;
        Ok(Duration(std::time::Duration::from_micros(micros)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut us = self.as_micros();
        if us == 0 {
            return write!(f, "0s");
        }
        const PARTS: [(u64, &str); 6] = [
            (86_400_000_000, "d"),
            (3_600_000_000, "h"),
            (60_000_000, "m"),
            (1_000_000, "s"),
            (1_000, "ms"),
            (1, "us"),
        ];
        for (factor, name) in PARTS {
            if us >= factor {
                write!(f, "{}{name}", us / factor)?;
                us %= factor;
            }
        }
        Ok(())
    }
}

/// A data rate in bytes per second. Parses `"100 MiB/s"`, `"800 Mbit/s"`, `"1 Gbps"`,
/// and a size followed by `/s`. Bit units are decimal (`Mbit` = 10^6 bits) as in networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(pub u64);

impl Rate {
    pub fn bytes_per_sec(self) -> u64 {
        self.0
    }
}

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let text = s.trim();
        if text.is_empty() {
            return err(
                "expected a rate like \"100 MiB/s\" or \"800 Mbit/s\", found an empty string",
            );
        }
        if text.starts_with('-') {
            return err(format!("rate '{text}' is negative"));
        }
        let (num, unit) = split_number(text);
        let lower = unit.to_ascii_lowercase();
        let bits = |prefix: &str| -> Option<u128> {
            Some(match prefix {
                "" => 1,
                "k" => 1_000,
                "m" => 1_000_000,
                "g" => 1_000_000_000,
                "t" => 1_000_000_000_000,
                "ki" => 1 << 10,
                "mi" => 1 << 20,
                "gi" => 1 << 30,
                "ti" => 1 << 40,
                _ => return None,
            })
        };
        // "Bps" (capital B) is bytes, "bps" bits; everything else is case-insensitive.
        let lower = if let Some(p) = unit.strip_suffix("Bps") {
            format!("{p}B/s").to_ascii_lowercase()
        } else if let Some(p) = unit.strip_suffix("bps") {
            format!("{p}bit/s").to_ascii_lowercase()
        } else {
            lower
        };
        let bit_prefix = lower
            .strip_suffix("bits/s")
            .or_else(|| lower.strip_suffix("bit/s"));
        if let Some(prefix) = bit_prefix {
            let f = bits(prefix).ok_or_else(|| {
                UnitError(format!(
                    "unknown rate unit '{unit}' in '{text}': expected kbit/s, Mbit/s, Gbit/s (or B/s, KiB/s, MiB/s, MB/s …)"
                ))
            })?;
            let v = scale_decimal(num, f, &format!("rate '{text}'"))?;
            return Ok(Rate(v / 8));
        }
        let Some(size_unit) = lower.strip_suffix("/s") else {
            return err(format!(
                "rate '{text}' needs a unit per second: e.g. \"100 MiB/s\", \"50 MB/s\" or \"800 Mbit/s\""
            ));
        };
        let factor = size_factor(size_unit.trim()).ok_or_else(|| {
            UnitError(format!(
                "unknown rate unit '{unit}' in '{text}': expected B/s, KiB/s, MiB/s, GiB/s, KB/s, MB/s, GB/s, kbit/s, Mbit/s or Gbit/s"
            ))
        })?;
        scale_decimal(num, factor, &format!("rate '{text}'")).map(Rate)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", Size(self.0))
    }
}

/// A set of host CPUs in libvirt's cpuset syntax: `"0-3,6,^2"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct CpuSet(BTreeSet<u32>);

/// The largest CPU number accepted, far above any real host, to bound memory.
pub const MAX_CPU: u32 = 8191;

impl CpuSet {
    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> Self {
        CpuSet(cpus.into_iter().collect())
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }
    pub fn max(&self) -> Option<u32> {
        self.0.iter().next_back().copied()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.0.is_subset(&other.0)
    }
    /// The set as libvirt's cpumap: one bit per CPU, `maplen` bytes.
    pub fn to_bitmap(&self, maplen: usize) -> Vec<u8> {
        let mut map = vec![0u8; maplen];
        for cpu in &self.0 {
            let byte = (*cpu / 8) as usize;
            if byte < maplen {
                map[byte] |= 1 << (cpu % 8);
            }
        }
        map
    }
    /// Reads a libvirt cpumap, looking at the first `ncpus` bits only.
    pub fn from_bitmap(map: &[u8], ncpus: u32) -> Self {
        CpuSet(
            (0..ncpus)
                .filter(|cpu| {
                    map.get((*cpu / 8) as usize)
                        .is_some_and(|b| b & (1 << (cpu % 8)) != 0)
                })
                .collect(),
        )
    }
}

impl FromStr for CpuSet {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let text = s.trim();
        if text.is_empty() {
            return err("expected a cpuset like \"0-3,6\", found an empty string");
        }
        let mut set = BTreeSet::new();
        let mut excluded = BTreeSet::new();
        for part in text.split(',') {
            let part = part.trim();
            let (negate, body) = match part.strip_prefix('^') {
                Some(b) => (true, b.trim()),
                None => (false, part),
            };
            let cpu = |t: &str| -> Result<u32, UnitError> {
                let t = t.trim();
                let n: u32 = t.parse().map_err(|_| {
                    UnitError(format!(
                        "'{t}' in cpuset '{text}' is not a CPU number: expected a list like \"0-3,6,^2\""
                    ))
                })?;
                if n > MAX_CPU {
                    return err(format!(
                        "CPU {n} in cpuset '{text}' is beyond the limit of {MAX_CPU}"
                    ));
                }
                Ok(n)
            };
            let (lo, hi) = match body.split_once('-') {
                Some((a, b)) => (cpu(a)?, cpu(b)?),
                None => {
                    let n = cpu(body)?;
                    (n, n)
                }
            };
            if lo > hi {
                return err(format!("range '{body}' in cpuset '{text}' runs backwards"));
            }
            if negate {
                if lo != hi {
                    return err(format!(
                        "'^{body}' in cpuset '{text}': only single CPUs can be excluded"
                    ));
                }
                excluded.insert(lo);
            } else {
                set.extend(lo..=hi);
            }
        }
        for x in excluded {
            set.remove(&x);
        }
        if set.is_empty() {
            return err(format!("cpuset '{text}' selects no CPU"));
        }
        Ok(CpuSet(set))
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_via_str!(Size, Duration, Rate);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        assert_eq!("512 MiB".parse::<Size>().unwrap().0, 512 << 20);
        assert_eq!("2GiB".parse::<Size>().unwrap().0, 2 << 30);
        assert_eq!("1.5 G".parse::<Size>().unwrap().0, 3 << 29);
        assert_eq!("4096".parse::<Size>().unwrap().0, 4096);
        assert_eq!("0".parse::<Size>().unwrap().0, 0);
        assert_eq!("1 KB".parse::<Size>().unwrap().0, 1000);
        assert_eq!("3 MB".parse::<Size>().unwrap().0, 3_000_000);
        assert_eq!(" 7 k ".parse::<Size>().unwrap().0, 7168);
        assert_eq!("16777215 TiB".parse::<Size>().unwrap().0, 16777215u64 << 40);
        assert_eq!("18446744073709551615".parse::<Size>().unwrap().0, u64::MAX);
        for bad in [
            "",
            "  ",
            "-1",
            "12 XB",
            "1..5G",
            ".",
            "16777216 TiB",
            "18446744073709551616",
            "G",
            "1.0000000001G",
        ] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?} should not parse");
        }
        assert_eq!(
            "12 XB".parse::<Size>().unwrap_err().0,
            "unknown size unit 'XB' in '12 XB': expected B, KiB, MiB, GiB, TiB (K, M, G, T) or KB, MB, GB, TB"
        );
    }

    #[test]
    fn durations() {
        let d = |s: &str| s.parse::<Duration>().unwrap().as_micros();
        assert_eq!(d("30s"), 30_000_000);
        assert_eq!(d("5m"), 300_000_000);
        assert_eq!(d("1h30m"), 5_400_000_000);
        assert_eq!(d("50ms"), 50_000);
        assert_eq!(d("1.5s"), 1_500_000);
        assert_eq!(d("0s"), 0);
        assert_eq!(d("2d"), 172_800_000_000);
        for bad in [
            "",
            "30",
            "5x",
            "30m1h",
            "1h1h",
            "-5s",
            "s",
            "99999999999999999999d",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn rates() {
        let r = |s: &str| s.parse::<Rate>().unwrap().0;
        assert_eq!(r("100 MiB/s"), 100 << 20);
        assert_eq!(r("800 Mbit/s"), 100_000_000);
        assert_eq!(r("1 Gbps"), 125_000_000);
        assert_eq!(r("50 MB/s"), 50_000_000);
        assert_eq!(r("10 B/s"), 10);
        assert_eq!(r("2 MBps"), 2_000_000);
        assert_eq!(r("8 kbps"), 1000);
        for bad in ["", "100", "100 MiB", "5 Xbit/s", "-1 MiB/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn cpusets() {
        let c = |s: &str| s.parse::<CpuSet>().unwrap().to_string();
        assert_eq!(c("0-3"), "0-3");
        assert_eq!(c("0-3,^2"), "0-1,3");
        assert_eq!(c(" 5, 1,2 ,3"), "1-3,5");
        for bad in ["", "a", "3-1", "0,^0", "9000", "1-", "^1-3"] {
            assert!(bad.parse::<CpuSet>().is_err(), "{bad:?} should not parse");
        }
        let set: CpuSet = "1,9".parse().unwrap();
        let map = set.to_bitmap(2);
        assert_eq!(map, vec![0b10, 0b10]);
        assert_eq!(CpuSet::from_bitmap(&map, 16), set);
    }

    proptest! {
        #[test]
        fn size_roundtrip(n in any::<u64>()) {
            let s = Size(n);
            prop_assert_eq!(s.to_string().parse::<Size>().unwrap(), s);
        }
        #[test]
        fn size_roundtrip_units(n in 0u64..1_000_000, shift in prop::sample::select(vec![0u32, 10, 20, 30, 40])) {
            let s = Size(n << shift);
            prop_assert_eq!(s.to_string().parse::<Size>().unwrap(), s);
        }
        #[test]
        fn duration_roundtrip(us in 0u64..(u64::MAX / 2)) {
            let d = Duration(std::time::Duration::from_micros(us));
            prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
        #[test]
        fn rate_roundtrip(n in any::<u64>()) {
            let r = Rate(n);
            prop_assert_eq!(r.to_string().parse::<Rate>().unwrap(), r);
        }
        #[test]
        fn cpuset_roundtrip(cpus in prop::collection::btree_set(0u32..512, 1..40)) {
            let c = CpuSet(cpus);
            prop_assert_eq!(c.to_string().parse::<CpuSet>().unwrap(), c);
        }
        #[test]
        fn parsers_never_panic(s in ".{0,40}") {
            let _ = s.parse::<Size>();
            let _ = s.parse::<Duration>();
            let _ = s.parse::<Rate>();
            let _ = s.parse::<CpuSet>();
        }
    }
}
