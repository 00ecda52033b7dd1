//! Host metrics from procfs (the `procfs` crate): CPU ticks, load, available
//! memory, CPU pressure. A file the kernel does not have (no PSI here, say)
//! gives `None`, never an error.

use procfs::prelude::*;
use procfs::{CpuPressure, CpuTime, KernelStats, LoadAverage, Meminfo};

use crate::collector::HostCounters;

/// (busy, total) ticks of all CPUs. Guest time is already inside `user`, so
/// it is not added again; idle and iowait are not busy.
pub fn cpu_ticks(t: &CpuTime) -> (u64, u64) {
    let idle = t.idle + t.iowait.unwrap_or(0);
    let total = t.user
        + t.nice
        + t.system
        + idle
        + t.irq.unwrap_or(0)
        + t.softirq.unwrap_or(0)
        + t.steal.unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Available memory as a percentage of the total.
pub fn mem_available_percent(m: &Meminfo) -> Option<f64> {
    let avail = m.mem_available? as f64;
    (m.mem_total > 0).then(|| avail / m.mem_total as f64 * 100.0)
}

/// Reads the host counters now.
pub fn read() -> HostCounters {
    let (cpu_busy, cpu_total) = KernelStats::current()
        .map(|k| cpu_ticks(&k.total))
        .unwrap_or((0, 0));
    HostCounters {
        cpu_busy,
        cpu_total,
        load1: LoadAverage::current().ok().map(|l| f64::from(l.one)),
        mem_available_percent: Meminfo::current()
            .ok()
            .as_ref()
            .and_then(mem_available_percent),
        cpu_pressure: CpuPressure::current().ok().map(|p| f64::from(p.some.avg10)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procfs::{ExplicitSystemInfo, FromRead, FromReadSI};

    #[test]
    fn cpu_ticks_leave_out_idle_iowait_and_guest() {
        let si = ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: 100,
            page_size: 4096,
            is_little_endian: true,
        };
        let stat = "cpu  10 0 5 80 5 0 0 0 7 0\ncpu0 10 0 5 80 5 0 0 0 7 0\nctxt 1\nbtime 1\nprocesses 1\n";
        let k = <KernelStats as FromReadSI>::from_read(stat.as_bytes(), &si).expect("parses");
        assert_eq!(cpu_ticks(&k.total), (15, 100));
        // the fields every kernel has, then MemAvailable (3.14 and later)
        let common: String = [
            "MemTotal",
            "MemFree",
            "Buffers",
            "Cached",
            "SwapCached",
            "Active",
            "Inactive",
            "SwapTotal",
            "SwapFree",
            "Dirty",
            "Writeback",
            "Mapped",
            "Slab",
            "Committed_AS",
            "VmallocTotal",
            "VmallocUsed",
            "VmallocChunk",
        ]
        .iter()
        .map(|k| format!("{k}: {} kB\n", if *k == "MemTotal" { 1000 } else { 1 }))
        .collect();
        let mem = format!("{common}MemAvailable: 250 kB\n");
        let m = <Meminfo as FromRead>::from_read(mem.as_bytes()).expect("parses");
        assert_eq!(mem_available_percent(&m), Some(25.0));
        let m = <Meminfo as FromRead>::from_read(common.as_bytes()).expect("parses");
        assert_eq!(mem_available_percent(&m), None);
    }

    #[test]
    fn reads_this_host() {
        let now = read();
        assert!(now.cpu_total > 0 && now.cpu_busy <= now.cpu_total);
        assert!(now.load1.is_some());
        let mem = now.mem_available_percent.expect("MemAvailable");
        assert!(mem > 0.0 && mem <= 100.0);
        // PSI exists only on some kernels: whichever it is, it matches the file
        assert_eq!(
            now.cpu_pressure.is_some(),
            std::path::Path::new("/proc/pressure/cpu").exists()
        );
    }
}

/// The cgroup version the domains of libvirt at `uri` live under, when that
/// libvirt is on this machine (a URI without a host part: `qemu:///system`,
/// `test:///…`): v2 when `/sys/fs/cgroup` is the unified hierarchy, v1 when
/// the cpu controller is mounted on its own (v1 or hybrid). `None` for
/// libvirt on another machine (`qemu+ssh://host/system`), or a machine
/// with neither.
pub fn cgroup_of(uri: &str) -> Option<crate::model::knobs::CgroupVersion> {
    let local = uri
        .split_once("://")
        .map(|(_, rest)| rest.starts_with('/'))
        .unwrap_or(false);
    if !local {
        return None;
    }
    cgroup_at(std::path::Path::new("/sys/fs/cgroup"))
}

/// The cgroup version of the hierarchy mounted at `root`.
pub fn cgroup_at(root: &std::path::Path) -> Option<crate::model::knobs::CgroupVersion> {
    use crate::model::knobs::CgroupVersion;
    let fs = nix::sys::statfs::statfs(root).ok()?;
    if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Some(CgroupVersion::V2);
    }
    ["cpu", "cpu,cpuacct"]
        .iter()
        .any(|c| root.join(c).join("cpu.shares").exists())
        .then_some(CgroupVersion::V1)
}

#[cfg(test)]
mod cgroup_tests {
    use super::*;

    #[test]
    fn remote_libvirt_has_no_known_cgroup_version() {
        assert_eq!(cgroup_of("qemu+ssh://root@hv2/system"), None);
        assert_eq!(cgroup_of("qemu+tcp://10.0.0.2/system"), None);
        assert_eq!(cgroup_of("nonsense"), None);
        // this machine's own, whichever it is, is what a local URI gets
        assert_eq!(
            cgroup_of("qemu:///system"),
            cgroup_at(std::path::Path::new("/sys/fs/cgroup"))
        );
    }

    /// v1 is told by its cpu controller's `cpu.shares` (either mount
    /// name); a directory that is neither v1 nor a cgroup2 mount is no
    /// version at all, so `cpu_weight` is refused rather than guessed.
    #[test]
    fn v1_is_told_by_its_cpu_controller_and_anything_else_is_unknown() {
        use crate::model::knobs::CgroupVersion;
        let none = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_at(none.path()), None);
        assert_eq!(cgroup_at(&none.path().join("missing")), None);
        for dir in ["cpu", "cpu,cpuacct"] {
            let v1 = tempfile::tempdir().unwrap();
            std::fs::create_dir(v1.path().join(dir)).unwrap();
            assert_eq!(cgroup_at(v1.path()), None, "{dir}: no cpu.shares yet");
            std::fs::write(v1.path().join(dir).join("cpu.shares"), "1024\n").unwrap();
            assert_eq!(cgroup_at(v1.path()), Some(CgroupVersion::V1), "{dir}");
        }
        // this machine: v1 exactly when its cpu controller has cpu.shares
        let root = std::path::Path::new("/sys/fs/cgroup");
        if root.join("cpu/cpu.shares").exists() || root.join("cpu,cpuacct/cpu.shares").exists() {
            assert_eq!(cgroup_at(root), Some(CgroupVersion::V1));
        }
    }
}
