//! Memory over a long run with churn: the control loop (reconciler, collector,
//! rules, the real redb store) on the recording fake, with domains defined and
//! undefined, load switching personas on and off, a fresh short-lived signal
//! every tick, and the recorded events drained as the daemon's event stream
//! does. Prints RSS and private memory after 100 and after 10,000 ticks
//! (target: within 1 MiB of each other).
//! Run: cargo bench --bench memory   (VP_MEM_TICKS, VP_MEM_DOMAINS to change the size;
//! VP_MEM_NOCHURN=1 or VP_MEM_NOLOAD=1 to leave out domain churn or the events
//! load causes, to see which one memory follows)

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use virt_persona::hypervisor::fake::FakeHypervisor;
use virt_persona::hypervisor::{DomainStats, Hypervisor};
use virt_persona::model::tuning::Tuning;
use virt_persona::model::validate::parse_persona;
use virt_persona::reconciler::Reconciler;
use virt_persona::rules::Signal;
use virt_persona::store::RedbStore;

/// (RSS, private) of this process in KiB, from /proc/self/smaps_rollup.
fn memory_kib() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        field("Rss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    )
}

fn domain(hv: &FakeHypervisor, n: usize) {
    let mut info = FakeHypervisor::simple_domain(&format!("dom-{n}"), 2);
    info.uuid = format!("00000000-0000-0000-0000-{n:012}");
    info.id = Some(n as u32 + 1);
    hv.add_domain(
        info,
        Tuning {
            cpu_shares: Some(1024),
            ..Default::default()
        },
    );
}

fn main() {
    let ticks: usize = common::env_or("VP_MEM_TICKS", 10_000);
    let domains: usize = common::env_or("VP_MEM_DOMAINS", 50);
    let dir = tempfile::tempdir().expect("temp dir");
    let hv = Arc::new(FakeHypervisor::new(8));
    for n in 0..domains {
        domain(&hv, n);
    }
    let store = RedbStore::open(dir.path()).expect("state store");
    let mut r = Reconciler::new(hv.clone(), store, Duration::from_secs(30));
    let p = parse_persona(
        "id = \"busy\"\n[activation]\nmode = \"any\"\ncooldown = \"5s\"\n[[activation.when]]\nmetric = \"cpu\"\nabove = 50\nover = \"1m\"\n[[activation.when]]\nsignal = \"boost\"\nabove = 0\n[tuning]\ncpu_shares = 2048\n",
        std::path::Path::new("busy.toml"),
    )
    .expect("valid persona");
    r.set_personas(vec![Arc::new(p)]);
    let mut next = domains;
    let mut live: Vec<usize> = (0..domains).collect();
    let mut cpu: Vec<u64> = vec![0; domains + ticks / 10 + 1];
    let mut at_100 = (0, 0);
    let mut events = 0usize;
    for t in 0..ticks {
        let now = 1_000_000 + t as i64 * 1000;
        // churn: every 10 ticks one domain is undefined and a new one defined
        if t % 10 == 9 && std::env::var("VP_MEM_NOCHURN").is_err() {
            let gone = live.remove(0);
            hv.remove_domain(&format!("dom-{gone}"));
            domain(&hv, next);
            live.push(next);
            next += 1;
            r.mark_stale();
        }
        // load: each domain busy for 30 ticks out of 60, staggered
        for &n in &live {
            let busy = (t + n) % 60 < 30 && std::env::var("VP_MEM_NOLOAD").is_err();
            cpu[n] += if busy { 1_900_000_000 } else { 10_000_000 };
            hv.set_stats(
                &format!("dom-{n}"),
                DomainStats {
                    name: format!("dom-{n}"),
                    uuid: format!("00000000-0000-0000-0000-{n:012}"),
                    cpu_time_ns: Some(cpu[n]),
                    vcpu_current: Some(2),
                    ..Default::default()
                },
            );
        }
        // a new signal every tick, living 3 s
        r.set_signal(
            &format!("sig.{t}"),
            Signal {
                value: 1.0,
                expires: now + 3000,
                domain: None,
                cluster: false,
            },
        );
        r.tick(now, None).expect("tick");
        // the daemon hands recorded events to metrics and subscribers each tick
        events += r.take_events().len();
        hv.clear_calls();
        if t + 1 == 100 {
            at_100 = memory_kib();
        }
    }
    let end = memory_kib();
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "memory: {domains} domains, {ticks} ticks, {} domains churned, {events} events, {ticks} signals",
        next - domains
    );
    println!(
        "  after 100 ticks:    RSS {:.1} MiB, private {:.1} MiB",
        mib(at_100.0),
        mib(at_100.1)
    );
    println!(
        "  after {ticks} ticks: RSS {:.1} MiB, private {:.1} MiB (growth: RSS {:+.2} MiB, private {:+.2} MiB; target within 1 MiB)",
        mib(end.0),
        mib(end.1),
        mib(end.0) - mib(at_100.0),
        mib(end.1) - mib(at_100.1)
    );
    assert!(
        r.signals.0.len() <= 4,
        "expired signals are pruned: {}",
        r.signals.0.len()
    );
    let _ = hv.domain("dom-0");
}
