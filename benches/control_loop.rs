//! The control loop's own cost on the recording fake: 10,000 domains and 50
//! personas (target: decide + plan under 20 ms of CPU per tick).
//! Run: cargo bench --bench control_loop

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use virt_persona::collector::{Sample, Values};
use virt_persona::hypervisor::fake::FakeHypervisor;
use virt_persona::hypervisor::{DomainInfo, DomainStats, Hypervisor};
use virt_persona::model::persona::{Metric, Persona};
use virt_persona::model::tuning::Tuning;
use virt_persona::model::validate::parse_persona;
use virt_persona::planner::plan;
use virt_persona::reconciler::Reconciler;
use virt_persona::rules::{candidates, decide, Inputs, RuleState, Signals};
use virt_persona::store::MemoryStore;

const DOMAINS: usize = 10_000;
const PERSONAS: usize = 50;

fn personas() -> Vec<Arc<Persona>> {
    let mut v: Vec<Arc<Persona>> = (0..PERSONAS)
        .map(|i| {
            let text = format!(
                r#"id = "p{i:02}"
priority = {i}
[match]
names = ["dom-{}*"]
tags = ["t{}"]
[activation]
mode = "any"
cooldown = "1m"
[[activation.when]]
metric = "cpu"
above = {}
over = "1m"
agg = "p95"
[[activation.when]]
signal = "sig.{i}"
above = 10
[tuning]
cpu_shares = {}
memory_soft_limit = "1 GiB"
memory_hard_limit = "2 GiB"
vcpu_pin = {{ "*" = "0-3" }}
"#,
                i % 10,
                i % 5,
                60 + i % 30,
                512 + i * 10
            );
            Arc::new(parse_persona(&text, std::path::Path::new("b.toml")).expect("valid"))
        })
        .collect();
    v.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    v
}

fn domain(i: usize) -> DomainInfo {
    let mut d = FakeHypervisor::simple_domain(&format!("dom-{i}"), 4);
    d.uuid = format!("00000000-0000-0000-0000-{i:012}");
    d.tags = vec![format!("t{}", i % 5)];
    d
}

fn bench(c: &mut Criterion) {
    let ps = personas();
    // the pure part: decide + plan for every domain, with a minute of samples each
    let doms: Vec<DomainInfo> = (0..DOMAINS).map(domain).collect();
    let window: VecDeque<Sample> = (0..12)
        .map(|k| {
            let mut v = Values::default();
            v.set(Metric::Cpu, 20.0 + k as f64);
            Sample {
                t: k * 5000,
                values: v,
            }
        })
        .collect();
    let host = VecDeque::new();
    let signals = Signals::default();
    let forecasts = virt_persona::forecast::Forecasts::default();
    let current = Tuning {
        cpu_shares: Some(1024),
        ..Default::default()
    };
    let mut states: Vec<RuleState> = vec![RuleState::default(); DOMAINS];
    // matching is cached per domain by the reconciler; the tick pays only for deciding
    let cands: Vec<Vec<Arc<Persona>>> = doms.iter().map(|d| candidates(&ps, d)).collect();
    let mut g = c.benchmark_group("control_loop");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("match_10000_domains_50_personas", |b| {
        b.iter(|| doms.iter().map(|d| candidates(&ps, d).len()).sum::<usize>())
    });
    g.bench_function("decide_and_plan_10000_domains_50_personas", |b| {
        b.iter(|| {
            let mut changes = 0;
            for ((d, st), cand) in doms.iter().zip(states.iter_mut()).zip(cands.iter()) {
                let inp = Inputs {
                    domain: d,
                    samples: Some(&window),
                    host: &host,
                    signals: &signals,
                    now: 60_000,
                    refused: &Default::default(),
                    never_measured: 0,
                    forecasts: &forecasts,
                    forecast_observe: false,
                };
                let dec = decide(cand, &inp, st);
                if let Some(id) = &dec.persona {
                    if let Some(p) = ps.iter().find(|p| p.id == *id) {
                        changes += plan(&current, &p.tuning.resolve(d)).len();
                    }
                }
            }
            changes
        })
    });

    // a whole quiet tick of the reconciler on the fake: one stats call, collect, decide
    let hv = Arc::new(FakeHypervisor::new(8));
    for i in 0..DOMAINS {
        hv.add_domain(domain(i), current.clone());
    }
    let mut rec = Reconciler::new(
        hv.clone(),
        MemoryStore::default(),
        Duration::from_secs(3600),
    );
    rec.set_personas(ps.clone());
    let mut now = 1_000_000i64;
    let mut cpu = 0u64;
    let mut tick = |rec: &mut Reconciler<FakeHypervisor, MemoryStore>| {
        now += 1000;
        cpu += 100_000_000;
        for i in (0..DOMAINS).step_by(1000) {
            let d = domain(i);
            hv.set_stats(
                &d.name,
                DomainStats {
                    name: d.name.clone(),
                    uuid: d.uuid.clone(),
                    cpu_time_ns: Some(cpu),
                    ..Default::default()
                },
            );
        }
        rec.tick(now, None).expect("tick")
    };
    tick(&mut rec);
    tick(&mut rec);
    hv.clear_calls();
    g.bench_function("quiet_tick_10000_domains_50_personas", |b| {
        b.iter(|| tick(&mut rec))
    });
    g.finish();
    assert!(hv
        .calls()
        .iter()
        .all(|c| *c == virt_persona::hypervisor::fake::Call::AllStats));
    let _ = hv.list_domains();
}

criterion_group!(benches, bench);
criterion_main!(benches);
