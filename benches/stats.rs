//! One bulk statistics call against one call per domain, and the cost of
//! reading a domain's full tuning: on 1,000 test-driver domains and on real
//! running guests. A bench binary, not criterion: it boots guests.
//!
//! Run: cargo bench --bench stats                 (32 real guests; needs libvirtd)
//!      VP_BENCH_GUESTS=0 cargo bench --bench stats   (test driver only)

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use virt_persona::hypervisor::libvirt::LibvirtHypervisor;
use virt_persona::hypervisor::{Hypervisor, ReadScope, StatGroups};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

fn test_host(n: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".xml")
        .tempfile()
        .expect("temp file");
    let mut s = String::from("<node><cpu><mhz>3000</mhz><model>x86_64</model><active>8</active><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>2</threads></cpu><memory>268435456</memory>\n");
    for i in 0..n {
        s.push_str(&format!(
            "<domain type='test'><name>bench-{i}</name><uuid>6695eb01-f6a4-8304-79aa-{i:012}</uuid>\
             <memory unit='KiB'>1048576</memory><vcpu>2</vcpu><os><type arch='x86_64'>hvm</type></os><devices>\
             <disk type='file' device='disk'><source file='/guest/{i}.img'/><target dev='vda' bus='virtio'/></disk>\
             <interface type='network'><mac address='52:54:00:{:02x}:{:02x}:01'/><source network='default'/></interface>\
             </devices></domain>\n",
            i / 256,
            i % 256
        ));
    }
    s.push_str("<network><name>default</name><uuid>dd8fe884-6c02-601e-7551-cca97df1c5df</uuid><bridge name='virbr0'/></network></node>\n");
    f.write_all(s.as_bytes()).expect("write host xml");
    f
}

fn compare(label: &str, hv: &LibvirtHypervisor, names: &[String], runs: usize) {
    // interleaved, so a slow moment of the host weighs on both sides alike
    let (mut bulk, mut per) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        bulk.push(time(1, || hv.all_stats(StatGroups::ALL).expect("bulk")));
        per.push(time(1, || {
            for n in names {
                hv.single_domain_stats(n, StatGroups::ALL)
                    .expect("per-domain");
            }
        }));
    }
    let (bulk, per) = (median(bulk), median(per));
    println!(
        "{label}: {} domains, all stat groups: one bulk call {:.2} ms; one call per domain {:.2} ms in all; per-domain/bulk = {:.2}",
        names.len(),
        bulk.as_secs_f64() * 1e3,
        per.as_secs_f64() * 1e3,
        per.as_secs_f64() / bulk.as_secs_f64()
    );
}

fn tuning_cost(label: &str, hv: &LibvirtHypervisor, name: &str) {
    let t = time(50, || hv.tuning(name, ReadScope::Current).expect("tuning"));
    let ifaces = hv.domain(name).expect("domain").interfaces.len();
    // lookup + XML + vcpu pin + emulator pin + scheduler + memory + blkio, then one per interface
    println!(
        "{label}: full tuning of one domain ({ifaces} interface(s)): {} libvirt calls, {:.2} ms",
        7 + ifaces,
        t.as_secs_f64() * 1e3
    );
}

/// Counts the RPCs the client sends for one full tuning read, from libvirt's own
/// client log (a child process, so logging does not slow the timings).
fn count_rpcs(name: &str) {
    let log = std::env::temp_dir().join(format!("vp-bench-rpc-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env("VP_BENCH_COUNT", name)
        .env("LIBVIRT_LOG_FILTERS", "1:rpc.netclient")
        .env("LIBVIRT_LOG_OUTPUTS", format!("1:file:{}", log.display()))
        .status()
        .expect("child");
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let calls = text
        .lines()
        .filter(|l| l.contains("RPC_CLIENT_MSG_TX_QUEUE") && l.contains("type=0"))
        .count();
    println!("  counted in libvirt's client log: {calls} RPC calls for one full tuning read");
    let _ = std::fs::remove_file(&log);
}

fn main() {
    if let Ok(name) = std::env::var("VP_BENCH_COUNT") {
        // child: connect (its RPCs are not counted: the log is truncated after), read once
        let hv = common::real();
        let log = std::env::var("LIBVIRT_LOG_OUTPUTS")
            .expect("log")
            .trim_start_matches("1:file:")
            .to_string();
        std::fs::write(&log, "").expect("truncate log");
        hv.tuning(&name, ReadScope::Current).expect("tuning");
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        // built and started by `cargo test --all-targets`: boots no guests there
        println!("stats benchmark: run it with `cargo bench --bench stats`");
        return;
    }
    let host = test_host(1000);
    let uri = format!("test://{}", host.path().display());
    let hv = LibvirtHypervisor::connect(&uri).expect("test driver");
    let names: Vec<String> = (0..1000).map(|i| format!("bench-{i}")).collect();
    compare("test driver", &hv, &names, 10);
    tuning_cost("test driver", &hv, "bench-0");

    let n: usize = common::env_or("VP_BENCH_GUESTS", 32);
    if n == 0 {
        return;
    }
    common::set_max_guests(n);
    let t = Instant::now();
    let guests: Vec<common::Guest> = (0..n)
        .map(|i| common::Guest::boot(&format!("bench{i}"), 1))
        .collect();
    eprintln!(
        "booted {n} {} guests in {:.1} s",
        common::virt_type(),
        t.elapsed().as_secs_f64()
    );
    // let every guest finish its firmware and settle into idle
    std::thread::sleep(Duration::from_secs(8));
    let hv = common::real();
    let names: Vec<String> = guests.iter().map(|g| g.name.clone()).collect();
    let active = hv.all_stats(StatGroups::ALL).expect("bulk").len();
    assert!(active >= n, "{active} active domains");
    compare(
        &format!("real libvirtd ({})", common::virt_type()),
        &hv,
        &names,
        7,
    );
    for (label, groups) in [
        (
            "cpu-total only",
            StatGroups {
                cpu: true,
                ..Default::default()
            },
        ),
        (
            "cpu+interface",
            StatGroups {
                cpu: true,
                interface: true,
                ..Default::default()
            },
        ),
        ("all groups", StatGroups::ALL),
    ] {
        let d = time(7, || hv.all_stats(groups).expect("bulk"));
        println!("  bulk call, {label}: {:.2} ms", d.as_secs_f64() * 1e3);
    }
    tuning_cost("real libvirtd", &hv, &names[0]);
    count_rpcs(&names[0]);
    drop(guests);
}
