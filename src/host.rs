//! Host metrics from procfs: CPU jiffies, load, available memory, CPU pressure.
//! Missing files (no PSI on this kernel) give `None`, never an error.

use crate::collector::HostCounters;

/// Parses the `cpu` line of /proc/stat into (busy, total) jiffies.
pub fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

pub fn parse_meminfo(text: &str) -> Option<f64> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:")?;
    (total > 0.0).then(|| avail / total * 100.0)
}

pub fn parse_pressure(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

/// Reads the host counters now.
pub fn read() -> HostCounters {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let (cpu_busy, cpu_total) = read("/proc/stat")
        .as_deref()
        .and_then(parse_stat)
        .unwrap_or((0, 0));
    HostCounters {
        cpu_busy,
        cpu_total,
        load1: read("/proc/loadavg")
            .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok())),
        mem_available_percent: read("/proc/meminfo").as_deref().and_then(parse_meminfo),
        cpu_pressure: read("/proc/pressure/cpu")
            .as_deref()
            .and_then(parse_pressure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_procfs() {
        assert_eq!(
            parse_stat("cpu  10 0 5 80 5 0 0 0 0 0\ncpu0 1 2 3 4\n"),
            Some((15, 100))
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 1 kB\nMemAvailable: 250 kB\n"),
            Some(25.0)
        );
        assert_eq!(
            parse_pressure("some avg10=1.50 avg60=0.00 avg300=0.00 total=5\nfull avg10=0.00\n"),
            Some(1.5)
        );
        let now = read();
        assert!(now.cpu_total > 0 && now.load1.is_some());
    }
}
