//! Turns bulk statistics (cumulative counters) into per-domain samples of the
//! metrics of SPEC §4, as rates between two ticks, and keeps each domain's
//! samples for as long as the largest window in use — no longer.
//!
//! Pure: the caller passes the time and the host counters.

use std::collections::{HashMap, VecDeque};

use crate::hypervisor::{BlockCounters, DomainStats, NetCounters, StatGroups};
use crate::model::persona::{Measure, Metric, Persona, Source};

use crate::time::Millis;

/// One value per metric (NaN = not measured this tick).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Values(pub [f64; METRICS]);

pub const METRICS: usize = 22;

/// Shortest interval a rate is computed over.
pub const MIN_SAMPLE_MS: Millis = 500;

impl Default for Values {
    fn default() -> Self {
        Values([f64::NAN; METRICS])
    }
}

impl Values {
    pub fn get(&self, m: Metric) -> Option<f64> {
        let v = self.0[m as usize];
        (!v.is_nan()).then_some(v)
    }
    pub fn set(&mut self, m: Metric, v: f64) {
        if v.is_finite() {
            self.0[m as usize] = v;
        }
    }
}

/// A domain's (or the host's) metrics at one tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t: Millis,
    pub values: Values,
}

/// Raw host counters read from procfs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostCounters {
    /// Busy and total jiffies from the `cpu` line of /proc/stat.
    pub cpu_busy: u64,
    pub cpu_total: u64,
    pub load1: Option<f64>,
    pub mem_available_percent: Option<f64>,
    pub cpu_pressure: Option<f64>,
}

#[derive(Debug, Clone)]
struct Prev {
    t: Millis,
    stats: DomainStats,
}

/// The collector's state: previous counters and the sample windows.
#[derive(Debug, Default)]
pub struct Collector {
    prev: HashMap<String, Prev>,
    windows: HashMap<String, VecDeque<Sample>>,
    host_prev: Option<(Millis, HostCounters)>,
    host: VecDeque<Sample>,
    keep_ms: Millis,
    /// Per domain, how long its own candidate personas need samples (else `keep_ms`).
    keep_for: HashMap<String, Millis>,
    /// Per domain: samples taken since it was first seen, and which metrics
    /// (bit per [`Metric`]) any of them had.
    measured: HashMap<String, (u32, u32)>,
    host_measured: (u32, u32),
}

/// After this many samples, a metric that never had a value is not measured
/// for that domain (or host) at all: the hypervisor or the kernel does not
/// report it. Long enough that a restart or a slow first rate is never taken
/// for it.
pub const NEVER_AFTER_SAMPLES: u32 = 10;

fn mask(v: &Values) -> u32 {
    v.0.iter()
        .enumerate()
        .filter(|(_, x)| !x.is_nan())
        .fold(0, |m, (i, _)| m | (1 << i))
}

fn count(m: &mut (u32, u32), v: &Values) {
    m.0 = m.0.saturating_add(1);
    m.1 |= mask(v);
}

fn never(m: (u32, u32)) -> u32 {
    if m.0 >= NEVER_AFTER_SAMPLES {
        !m.1
    } else {
        0
    }
}

/// The longest window of samples any of these personas needs (`over`, `for`).
pub fn longest_window(personas: &[std::sync::Arc<Persona>]) -> std::time::Duration {
    personas
        .iter()
        .filter_map(|p| p.activation.as_ref())
        .flat_map(|a| a.when.iter())
        .flat_map(|c| [c.over, c.for_])
        .flatten()
        .map(|d| d.as_std())
        .max()
        .unwrap_or_default()
}

/// What the loaded personas need: which stat groups to ask libvirt for, and the
/// longest window of samples to keep.
pub fn needs(personas: &[std::sync::Arc<Persona>]) -> (StatGroups, std::time::Duration) {
    let mut g = StatGroups {
        cpu: false,
        ..Default::default()
    };
    let want = |m: Metric, g: &mut StatGroups| match m {
        Metric::Cpu => g.cpu = true,
        Metric::CpuSteal => g.vcpu = true,
        Metric::CpuDemand => {
            g.cpu = true;
            g.vcpu = true;
        }
        Metric::MemoryRss | Metric::MemoryRssPercent => g.balloon = true,
        Metric::DiskReadIops
        | Metric::DiskWriteIops
        | Metric::DiskIops
        | Metric::DiskReadBps
        | Metric::DiskWriteBps
        | Metric::DiskBps
        | Metric::DiskBytes => g.block = true,
        Metric::NetRxBps
        | Metric::NetTxBps
        | Metric::NetBps
        | Metric::NetRxPps
        | Metric::NetTxPps
        | Metric::NetBytes => g.interface = true,
        _ => {}
    };
    for p in personas {
        for m in p.thresholds.keys() {
            want(*m, &mut g);
        }
        if let Some(a) = &p.activation {
            for c in &a.when {
                if let Source::Metric(m) | Source::Forecast(Measure::Metric(m)) = c.source {
                    want(m, &mut g);
                }
            }
        }
    }
    (g, longest_window(personas))
}

fn delta(cur: u64, prev: u64) -> Option<f64> {
    // a counter that went down was reset (domain restarted): no rate this tick
    cur.checked_sub(prev).map(|d| d as f64)
}

impl Collector {
    /// Keeps samples for `keep` (plus one sample, so a window of exactly `keep` is full).
    pub fn set_keep(&mut self, keep: std::time::Duration) {
        self.keep_ms = keep.as_millis().min(i64::MAX as u128) as Millis;
    }

    /// Keeps a domain's samples only as long as the personas that can match
    /// it need (at most the global keep).
    pub fn set_keep_for(&mut self, uuid: &str, keep: std::time::Duration) {
        let ms = keep.as_millis().min(i64::MAX as u128) as Millis;
        self.keep_for.insert(uuid.to_string(), ms);
    }

    /// Ingests one tick. `vcpus` gives each domain's vCPU count (by UUID) when the
    /// stats lack it. Domains absent from `stats` are forgotten.
    pub fn ingest(
        &mut self,
        now: Millis,
        stats: &[DomainStats],
        vcpus: &HashMap<String, u32>,
        host: Option<HostCounters>,
    ) {
        let seen: std::collections::HashSet<&str> = stats.iter().map(|s| s.uuid.as_str()).collect();
        for s in stats {
            if self
                .prev
                .get(&s.uuid)
                .is_some_and(|p| now - p.t < MIN_SAMPLE_MS)
            {
                // an extra tick (a lifecycle event) right after the last: a rate over a
                // few milliseconds is noise, so keep the last sample
                continue;
            }
            let values = match self.prev.get(&s.uuid) {
                Some(p) if now > p.t => domain_values(
                    (now - p.t) as f64 / 1000.0,
                    &p.stats,
                    s,
                    vcpus.get(&s.uuid).copied(),
                ),
                _ => {
                    // first sight: only the absolute values
                    let mut v = Values::default();
                    absolute(&mut v, s);
                    v
                }
            };
            self.prev.insert(
                s.uuid.clone(),
                Prev {
                    t: now,
                    stats: s.clone(),
                },
            );
            count(self.measured.entry(s.uuid.clone()).or_default(), &values);
            let w = self.windows.entry(s.uuid.clone()).or_default();
            w.push_back(Sample { t: now, values });
            let keep = self
                .keep_for
                .get(&s.uuid)
                .map_or(self.keep_ms, |k| (*k).min(self.keep_ms));
            trim(w, now, keep);
        }
        self.prev.retain(|k, _| seen.contains(k.as_str()));
        self.windows.retain(|k, _| seen.contains(k.as_str()));
        self.measured.retain(|k, _| seen.contains(k.as_str()));
        self.keep_for.retain(|k, _| seen.contains(k.as_str()));
        if let Some(h) = host.filter(|_| {
            self.host_prev
                .is_none_or(|(pt, _)| now - pt >= MIN_SAMPLE_MS)
        }) {
            let mut v = Values::default();
            if let Some((pt, p)) = self.host_prev {
                if now > pt {
                    if let (Some(b), Some(t)) = (
                        delta(h.cpu_busy, p.cpu_busy),
                        delta(h.cpu_total, p.cpu_total),
                    ) {
                        if t > 0.0 {
                            v.set(Metric::HostCpu, b / t * 100.0);
                        }
                    }
                }
            }
            if let Some(l) = h.load1 {
                v.set(Metric::HostLoad1, l);
            }
            if let Some(m) = h.mem_available_percent {
                v.set(Metric::HostMemAvailablePercent, m);
            }
            if let Some(p) = h.cpu_pressure {
                v.set(Metric::HostCpuPressure, p);
            }
            self.host_prev = Some((now, h));
            count(&mut self.host_measured, &v);
            self.host.push_back(Sample { t: now, values: v });
            trim(&mut self.host, now, self.keep_ms);
        }
    }

    /// A domain's samples, oldest first.
    pub fn window(&self, uuid: &str) -> Option<&VecDeque<Sample>> {
        self.windows.get(uuid)
    }

    /// The host's samples, oldest first.
    pub fn host_window(&self) -> &VecDeque<Sample> {
        &self.host
    }

    /// Forgets a domain (stopped or undefined).
    pub fn forget(&mut self, uuid: &str) {
        self.prev.remove(uuid);
        self.windows.remove(uuid);
        self.measured.remove(uuid);
        self.keep_for.remove(uuid);
    }

    /// The metrics (bit per [`Metric`]) never measured for this domain in
    /// [`NEVER_AFTER_SAMPLES`] samples, host metrics included.
    pub fn never_measured(&self, uuid: &str) -> u32 {
        let host: u32 = Metric::ALL
            .iter()
            .filter(|m| m.is_host())
            .fold(0, |acc, m| acc | (1 << *m as usize));
        let domain = self.measured.get(uuid).map(|m| never(*m)).unwrap_or(0);
        (domain & !host) | (never(self.host_measured) & host)
    }
}

fn trim(w: &mut VecDeque<Sample>, now: Millis, keep_ms: Millis) {
    // keep one sample older than the window so a full window can be judged
    while w.len() > 1 && w.get(1).is_some_and(|s| now - s.t >= keep_ms) {
        w.pop_front();
    }
}

fn absolute(v: &mut Values, s: &DomainStats) {
    if let Some(rss) = s.balloon_rss_kib {
        v.set(Metric::MemoryRss, rss as f64 * 1024.0);
        if let Some(cur) = s.balloon_current_kib.filter(|c| *c > 0) {
            v.set(Metric::MemoryRssPercent, rss as f64 / cur as f64 * 100.0);
        }
    }
}

/// Sums four counters' deltas over the devices present in both samples
/// (matched by name); `None` when no device has a usable delta.
fn sum_deltas<T>(
    cur: &[T],
    prev: &[T],
    name: impl Fn(&T) -> &String,
    fields: impl Fn(&T) -> [u64; 4],
) -> Option<[f64; 4]> {
    let mut sum = [0.0; 4];
    let mut any = false;
    for c in cur {
        let Some(p) = prev.iter().find(|p| name(p) == name(c)) else {
            continue;
        };
        let (a, b) = (fields(c), fields(p));
        let d: Option<Vec<f64>> = (0..4).map(|i| delta(a[i], b[i])).collect();
        if let Some(d) = d {
            for i in 0..4 {
                sum[i] += d[i];
            }
            any = true;
        }
    }
    any.then_some(sum)
}

/// Sum of the per-vCPU wait deltas; `None` without delay counters (older libvirt,
/// drivers other than QEMU) or when a vCPU's counter went back (restart).
fn vcpu_delay(cur: &[Option<u64>], prev: &[Option<u64>]) -> Option<f64> {
    if cur.is_empty() || cur.len() != prev.len() {
        return None;
    }
    let mut sum = 0.0;
    let mut any = false;
    for (c, p) in cur.iter().zip(prev) {
        match (c, p) {
            (Some(c), Some(p)) => {
                sum += delta(*c, *p)?;
                any = true;
            }
            // an offline vCPU has no counters in either sample
            (None, None) => {}
            _ => return None,
        }
    }
    any.then_some(sum)
}

fn domain_values(dt: f64, p: &DomainStats, s: &DomainStats, vcpus: Option<u32>) -> Values {
    let mut v = Values::default();
    absolute(&mut v, s);
    let n = s.vcpu_current.or(vcpus).unwrap_or(1).max(1) as f64;
    let cpu = s
        .cpu_time_ns
        .zip(p.cpu_time_ns)
        .and_then(|(c, pc)| delta(c, pc))
        .map(|d| d / (dt * 1e9 * n) * 100.0);
    if let Some(cpu) = cpu {
        v.set(Metric::Cpu, cpu);
    }
    // time the vCPU threads sat runnable on the host's run queue (the guest's
    // steal time): what the guest wanted and the host did not give
    let steal = vcpu_delay(&s.vcpu_delay_ns, &p.vcpu_delay_ns).map(|d| d / (dt * 1e9 * n) * 100.0);
    if let Some(steal) = steal {
        v.set(Metric::CpuSteal, steal);
        if let Some(cpu) = cpu {
            v.set(Metric::CpuDemand, cpu + steal);
        }
    }
    // per device, matched by name: a disk or NIC that appeared has no rate yet
    let blk = |b: &BlockCounters| [b.rd_reqs, b.wr_reqs, b.rd_bytes, b.wr_bytes];
    if let Some([rr, wr, rb, wb]) = sum_deltas(&s.block, &p.block, |b| &b.name, blk) {
        v.set(Metric::DiskReadIops, rr / dt);
        v.set(Metric::DiskWriteIops, wr / dt);
        v.set(Metric::DiskIops, (rr + wr) / dt);
        v.set(Metric::DiskReadBps, rb / dt);
        v.set(Metric::DiskWriteBps, wb / dt);
        v.set(Metric::DiskBps, (rb + wb) / dt);
        v.set(Metric::DiskBytes, rb + wb);
    }
    let net = |n: &NetCounters| [n.rx_bytes, n.tx_bytes, n.rx_pkts, n.tx_pkts];
    if let Some([rxb, txb, rxp, txp]) = sum_deltas(&s.net, &p.net, |n| &n.name, net) {
        v.set(Metric::NetRxBps, rxb / dt);
        v.set(Metric::NetTxBps, txb / dt);
        v.set(Metric::NetBps, (rxb + txb) / dt);
        v.set(Metric::NetRxPps, rxp / dt);
        v.set(Metric::NetTxPps, txp / dt);
        v.set(Metric::NetBytes, rxb + txb);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{BlockCounters, NetCounters};

    fn stats(cpu_s: f64, rd: u64, rx: u64) -> DomainStats {
        DomainStats {
            name: "d".into(),
            uuid: "u".into(),
            cpu_time_ns: Some((cpu_s * 1e9) as u64),
            balloon_current_kib: Some(1000),
            balloon_rss_kib: Some(500),
            vcpu_current: Some(2),
            block: vec![BlockCounters {
                name: "vda".into(),
                rd_reqs: rd,
                rd_bytes: rd * 4096,
                ..Default::default()
            }],
            net: vec![NetCounters {
                name: "vnet0".into(),
                rx_bytes: rx,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn rates_from_counter_deltas() {
        let mut c = Collector::default();
        c.set_keep(std::time::Duration::from_secs(60));
        let none = HashMap::new();
        c.ingest(0, &[stats(10.0, 100, 1000)], &none, None);
        c.ingest(2000, &[stats(12.0, 300, 5000)], &none, None);
        let s = c.window("u").unwrap().back().unwrap().values;
        assert_eq!(
            s.get(Metric::Cpu),
            Some(50.0),
            "2 s of CPU over 2 s on 2 vCPUs"
        );
        assert_eq!(s.get(Metric::DiskReadIops), Some(100.0));
        assert_eq!(s.get(Metric::DiskBytes), Some(200.0 * 4096.0));
        assert_eq!(s.get(Metric::NetRxBps), Some(2000.0));
        assert_eq!(s.get(Metric::MemoryRssPercent), Some(50.0));
        assert_eq!(s.get(Metric::MemoryRss), Some(500.0 * 1024.0));
    }

    #[test]
    fn steal_and_demand_from_vcpu_delay() {
        let mut c = Collector::default();
        let none = HashMap::new();
        let mut a = stats(10.0, 0, 0);
        a.vcpu_delay_ns = vec![Some(1_000_000_000), Some(0)];
        let mut b = stats(11.0, 0, 0);
        // 1 s of CPU and 2.6 s of waiting over 2 s on 2 vCPUs: a starved guest
        b.vcpu_delay_ns = vec![Some(2_300_000_000), Some(1_300_000_000)];
        c.ingest(0, &[a], &none, None);
        c.ingest(2000, &[b.clone()], &none, None);
        let s = c.window("u").unwrap().back().unwrap().values;
        assert_eq!(s.get(Metric::Cpu), Some(25.0));
        assert_eq!(s.get(Metric::CpuSteal), Some(65.0));
        assert_eq!(s.get(Metric::CpuDemand), Some(90.0));
        // without delay counters (not QEMU, older libvirt) neither is known
        let mut d = stats(12.0, 0, 0);
        d.vcpu_delay_ns = vec![];
        c.ingest(4000, &[d], &none, None);
        let s = c.window("u").unwrap().back().unwrap().values;
        assert_eq!(s.get(Metric::Cpu), Some(25.0));
        assert_eq!(s.get(Metric::CpuSteal), None);
        assert_eq!(s.get(Metric::CpuDemand), None);
    }

    #[test]
    fn counter_reset_and_new_devices_give_no_rate() {
        let mut c = Collector::default();
        let none = HashMap::new();
        c.ingest(0, &[stats(10.0, 100, 1000)], &none, None);
        c.ingest(1000, &[stats(1.0, 5, 10)], &none, None);
        let s = c.window("u").unwrap().back().unwrap().values;
        assert_eq!(s.get(Metric::Cpu), None);
        assert_eq!(s.get(Metric::DiskIops), None);
        let mut renamed = stats(2.0, 10, 20);
        renamed.block[0].name = "vdb".into();
        c.ingest(2000, &[renamed], &none, None);
        let s = c.window("u").unwrap().back().unwrap().values;
        assert_eq!(s.get(Metric::Cpu), Some(50.0));
        assert_eq!(s.get(Metric::DiskIops), None, "a new disk has no rate yet");
    }

    #[test]
    fn windows_keep_only_what_is_used_and_forget_gone_domains() {
        let mut c = Collector::default();
        c.set_keep(std::time::Duration::from_secs(10));
        let none = HashMap::new();
        for t in 0..30 {
            c.ingest(t * 1000, &[stats(t as f64, 0, 0)], &none, None);
        }
        let w = c.window("u").unwrap();
        assert_eq!(w.len(), 11, "10 s of 1 s samples plus the one before");
        c.ingest(31_000, &[], &none, None);
        assert!(c.window("u").is_none());
        // a tick right after another gives no new sample
        c.ingest(40_000, &[stats(1.0, 0, 0)], &none, None);
        c.ingest(41_000, &[stats(2.0, 0, 0)], &none, None);
        c.ingest(41_010, &[stats(2.01, 0, 0)], &none, None);
        let w = c.window("u").unwrap();
        assert_eq!((w.len(), w.back().unwrap().t), (2, 41_000));
    }

    #[test]
    fn metrics_never_measured_after_enough_samples() {
        let mut c = Collector::default();
        let none = HashMap::new();
        let mut s = stats(0.0, 0, 0);
        s.net.clear();
        let bit = |m: Metric| 1u32 << m as usize;
        for t in 0..NEVER_AFTER_SAMPLES as i64 {
            assert_eq!(c.never_measured("u"), 0, "too early to say, sample {t}");
            s.cpu_time_ns = Some(t as u64 * 1_000_000_000);
            c.ingest(t * 1000, std::slice::from_ref(&s), &none, None);
        }
        let never = c.never_measured("u");
        assert_ne!(never & bit(Metric::NetRxBps), 0, "no NIC: never measured");
        assert_eq!(never & bit(Metric::Cpu), 0, "cpu was measured");
        assert_eq!(
            never & bit(Metric::HostCpu),
            0,
            "host metrics: no host samples yet"
        );
        c.forget("u");
        assert_eq!(c.never_measured("u"), 0);
    }

    #[test]
    fn a_domain_keeps_only_the_window_its_own_personas_need() {
        let mut c = Collector::default();
        c.set_keep(std::time::Duration::from_secs(60));
        c.set_keep_for("u", std::time::Duration::from_secs(5));
        let none = HashMap::new();
        let mut other = stats(0.0, 0, 0);
        other.uuid = "v".into();
        for t in 0..30 {
            c.ingest(
                t * 1000,
                &[stats(t as f64, 0, 0), other.clone()],
                &none,
                None,
            );
        }
        assert_eq!(c.window("u").unwrap().len(), 6, "5 s plus the one before");
        assert_eq!(c.window("v").unwrap().len(), 30, "the global keep");
    }

    #[test]
    fn host_cpu_from_jiffies() {
        let mut c = Collector::default();
        let none = HashMap::new();
        let h = |b, t| {
            Some(HostCounters {
                cpu_busy: b,
                cpu_total: t,
                load1: Some(0.5),
                ..Default::default()
            })
        };
        c.ingest(0, &[], &none, h(100, 1000));
        c.ingest(1000, &[], &none, h(150, 1100));
        let v = c.host_window().back().unwrap().values;
        assert_eq!(v.get(Metric::HostCpu), Some(50.0));
        assert_eq!(v.get(Metric::HostLoad1), Some(0.5));
    }
}
