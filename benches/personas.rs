//! Loading and validating 1,000 persona files (target: under 200 ms).
//! Run: cargo bench --bench personas

use criterion::{criterion_group, criterion_main, Criterion};
use virt_persona::model::loader::Catalog;

fn make_dir(n: usize) -> tempfile::TempDir {
    let examples: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/personas"))
        .expect("personas/")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| std::fs::read_to_string(e.path()).expect("read example"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    for i in 0..n {
        let src = &examples[i % examples.len()];
        // give each copy its own id so all 1,000 load
        let text: String = src
            .lines()
            .map(|l| {
                if l.starts_with("id = ") {
                    format!("id = \"persona-{i:04}\"")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join(format!("p{i:04}.toml")), text).expect("write");
    }
    dir
}

fn bench(c: &mut Criterion) {
    let dir = make_dir(1000);
    let mut check = Catalog::new(dir.path());
    let report = check.reload().expect("load");
    assert_eq!(report.loaded.len(), 1000, "{:?}", check.errors().first());
    let mut g = c.benchmark_group("personas");
    g.sample_size(20);
    g.bench_function("load_and_validate_1000_files", |b| {
        b.iter(|| {
            let mut cat = Catalog::new(dir.path());
            let r = cat.reload().expect("load");
            assert_eq!(r.loaded.len(), 1000);
            cat
        })
    });
    g.bench_function("reload_1000_unchanged_files", |b| {
        let mut cat = Catalog::new(dir.path());
        cat.reload().expect("load");
        b.iter(|| cat.reload().expect("reload"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
