//! The daemon as a process: memory, the CPU it uses and causes in libvirtd,
//! libvirt calls per quiet tick, and how fast a real guest's load change
//! becomes a persona and back. Boots real guests; needs libvirtd.
//!
//! Run: cargo bench --bench daemon
//!      VP_BENCH_GUESTS=20 VP_BENCH_SECONDS=60 cargo bench --bench daemon   (defaults)

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Daemon, Guest, Load};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let tck = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = after.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tck)
        })
        .unwrap_or(0.0)
}

fn pid_of(name: &str) -> u32 {
    let o = std::process::Command::new("pgrep")
        .args(["-xo", name])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not running"))
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("personas")).expect("dir");
    d
}

fn test_host(path: &Path, n: usize) {
    let mut s = String::from("<node><cpu><mhz>3000</mhz><model>x86_64</model><active>8</active><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>2</threads></cpu><memory>268435456</memory>\n");
    for i in 0..n {
        s.push_str(&format!(
            "<domain type='test'><name>bench-{i}</name><uuid>6695eb01-f6a4-8304-79aa-{i:012}</uuid><memory unit='KiB'>1048576</memory><vcpu>2</vcpu><os><type arch='x86_64'>hvm</type></os></domain>\n"
        ));
    }
    s.push_str("</node>\n");
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(s.as_bytes()))
        .expect("host xml");
}

const PERSONA: &str = r#"id = "busy"
[match]
names = ["vpt-*", "bench-*"]
[[activation.when]]
metric = "cpu"
above = 50
[tuning]
cpu_shares = 2048
"#;

/// Builds benches/libvirt_floor.c with cc and prints its RSS once connected.
fn libvirt_floor() {
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("libvirt_floor");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/libvirt_floor.c");
    let built = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cc -O2 -o {} {src} $(pkg-config --cflags --libs libvirt)",
            exe.display()
        ))
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        println!("minimal C client: cc or libvirt's headers missing, not measured");
        return;
    }
    for uri in ["test:///default", "qemu:///system"] {
        let mut c = std::process::Command::new(&exe)
            .arg(uri)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("libvirt_floor");
        // it prints the domain count once connected and listed
        let mut line = String::new();
        if let Some(out) = c.stdout.take() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        }
        let pid = c.id();
        println!(
            "minimal C libvirt client (connect + list, {} domains) on {uri}: RSS {:.1} MiB, private {:.1} MiB",
            line.trim(),
            rss_kib(pid) as f64 / 1024.0,
            common::uss_kib(pid) as f64 / 1024.0
        );
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("daemon benchmark: run it with `cargo bench --bench daemon`");
        return;
    }
    let guests: usize = common::env_or("VP_BENCH_GUESTS", 20);
    let secs: u64 = common::env_or("VP_BENCH_SECONDS", 60);

    // the floor: libvirt's own C client, idle on the test driver, holds the same
    // shared libraries (libvirt, libcrypto, gnutls, libxml2, glib, ICU)
    {
        let mut virsh = std::process::Command::new("virsh")
            .args(["-c", "test:///default"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("virsh");
        std::thread::sleep(Duration::from_secs(1));
        let pid = virsh.id();
        println!(
            "virsh (libvirt's C client) idle on the test driver: RSS {:.1} MiB, private {:.1} MiB",
            rss_kib(pid) as f64 / 1024.0,
            common::uss_kib(pid) as f64 / 1024.0
        );
        let _ = virsh.kill();
        let _ = virsh.wait();
    }
    // and the smallest C client there is (benches/libvirt_floor.c), on both drivers
    libvirt_floor();

    // memory on the test driver (which lives inside the daemon process)
    for n in [20, 100] {
        let d = dir(&format!("rss{n}"));
        std::fs::write(d.join("personas/busy.toml"), PERSONA).expect("persona");
        let host = d.join("host.xml");
        test_host(&host, n);
        let daemon = Daemon::start_with(&d, &format!("test://{}", host.display()), "30s", &[]);
        std::thread::sleep(Duration::from_secs(6));
        let pid = daemon.child.id();
        println!(
            "daemon, test driver, {n} domains, after 6 s at 1 s interval: RSS {:.1} MiB, private {:.1} MiB",
            rss_kib(pid) as f64 / 1024.0,
            common::uss_kib(pid) as f64 / 1024.0
        );
    }

    // real guests
    common::set_max_guests(guests);
    let t = Instant::now();
    let mut gs: Vec<Guest> = (0..guests)
        .map(|i| Guest::boot(&format!("d{i}"), 1))
        .collect();
    eprintln!(
        "booted {guests} {} guests in {:.0} s",
        common::virt_type(),
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    let libvirtd = pid_of("libvirtd");
    let quiet = secs as f64;
    let l0 = cpu_secs(libvirtd);
    std::thread::sleep(Duration::from_secs(secs));
    let idle_libvirtd = (cpu_secs(libvirtd) - l0) * 60.0 / quiet;

    let d = dir("real");
    std::fs::write(d.join("personas/busy.toml"), PERSONA).expect("persona");
    let log = d.join("libvirt-client.log");
    let env = [
        ("LIBVIRT_LOG_FILTERS", "1:rpc.netclient".to_string()),
        ("LIBVIRT_LOG_OUTPUTS", format!("1:file:{}", log.display())),
    ];
    let daemon = Daemon::start_with(&d, common::REAL_URI, "30s", &env);
    std::thread::sleep(Duration::from_secs(5));
    let pid = daemon.child.id();
    let (c0, l0) = (cpu_secs(pid), cpu_secs(libvirtd));
    let log_before = std::fs::read_to_string(&log).unwrap_or_default().len();
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, l1) = (cpu_secs(pid), cpu_secs(libvirtd));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let calls = text
        .get(log_before..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains("RPC_CLIENT_MSG_TX_QUEUE") && l.contains("type=0"))
        .count();
    println!("{guests} real idle guests, 1 s interval, over {secs} s:");
    println!(
        "  daemon RSS {:.1} MiB, private {:.1} MiB",
        rss_kib(pid) as f64 / 1024.0,
        common::uss_kib(pid) as f64 / 1024.0
    );
    println!("  daemon CPU {:.3} CPU-s/min", (c1 - c0) * 60.0 / quiet);
    println!(
        "  libvirtd CPU {:.3} CPU-s/min with the daemon, {:.3} without: the daemon causes {:.3} CPU-s/min",
        (l1 - l0) * 60.0 / quiet,
        idle_libvirtd,
        (l1 - l0) * 60.0 / quiet - idle_libvirtd
    );
    println!(
        "  libvirt RPC calls: {calls} in {secs} ticks ({:.2} per tick; the domain list is re-read every 30 s)",
        calls as f64 / quiet
    );

    // latency: load on -> persona worn -> load off -> baseline
    let g = &mut gs[0];
    let mut on = Vec::new();
    let mut off = Vec::new();
    for _ in 0..3 {
        g.set_load(Load::Spin);
        let t = Instant::now();
        while daemon.persona(&g.name).as_deref() != Some("busy") {
            assert!(t.elapsed() < Duration::from_secs(30), "persona not worn");
            std::thread::sleep(Duration::from_millis(50));
        }
        on.push(t.elapsed());
        g.set_load(Load::Idle);
        let t = Instant::now();
        while daemon.persona(&g.name).is_some() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "baseline not restored"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        off.push(t.elapsed());
    }
    on.sort();
    off.sort();
    println!(
        "  load change -> persona worn: median {:.2} s; load gone -> baseline restored: median {:.2} s (1 s interval, no window, no cooldown)",
        on[1].as_secs_f64(),
        off[1].as_secs_f64()
    );
    drop(daemon);
    drop(gs);
}
