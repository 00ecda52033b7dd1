//! Fuzzes the history import (`POST /v1/history/import`): the body decoder
//! and the CSV reader. Any bytes give points or errors that name their line,
//! never a panic; points that come out are finite, non-negative, and feed
//! the history without a panic either, also re-timed to end now.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virt_persona::api::server::decode;
use virt_persona::history::{parse_csv, History, ImportError, ImportLimits, Resolved};

fuzz_target!(|data: &[u8]| {
    let limits = ImportLimits {
        rows: 1000,
        series: 8,
        foreign_domains: 2,
    };
    let retime = match data.first() {
        Some(b) if b % 3 == 0 => Some("now"),
        Some(b) if b % 3 == 1 => Some("yesterday"),
        _ => None,
    };
    let _ = decode::import(data, retime, &Default::default(), &limits);
    let text = String::from_utf8_lossy(data);
    let resolve = |d: &str| match d.len() {
        0..=8 => Some(Resolved::Here(d.to_string())),
        9..=39 => Some(Resolved::Elsewhere(d.to_string())),
        _ => None,
    };
    match parse_csv(&text, resolve, &limits) {
        Ok(batch) => {
            assert!(batch.points.iter().all(|(s, _, v)| v.is_finite()
                && *v >= 0.0
                && (*s as usize) < batch.series.len()));
            assert!(batch.rows() <= limits.rows && batch.series.len() <= limits.series);
            let mut h = History::default();
            h.import(&batch, 1_800_000_000_000, 14 * 86_400_000);
            // re-timed to end now: still imports without a panic
            let mut moved = batch.clone();
            moved.retime(1_800_000_000_000);
            h.import(&moved, 1_800_000_000_000, 14 * 86_400_000);
            h.compact(1_800_000_000_000, 14 * 86_400_000);
            let _ = h.take_changes();
        }
        Err(ImportError::Bad { listed, total }) => {
            assert!(!listed.is_empty() && listed.len() <= total);
            assert!(listed.iter().all(|e| e.starts_with("line ") || e.starts_with("the CSV")));
        }
        Err(ImportError::Limit(m)) => assert!(m.contains("limits.")),
    }
});
