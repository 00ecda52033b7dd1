//! Fuzzes the history import (`POST /v1/history/import`): the body decoder
//! and the CSV reader. Any bytes give points or errors that name their line,
//! never a panic; points that come out are finite, non-negative, and feed
//! the history without a panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virt_persona::api::server::decode;
use virt_persona::history::{parse_csv, History};

fuzz_target!(|data: &[u8]| {
    let _ = decode::import("text/csv", data);
    let text = String::from_utf8_lossy(data);
    match parse_csv(&text, |d| (d.len() < 40).then(|| d.to_string())) {
        Ok(points) => {
            assert!(points.iter().all(|(_, _, v)| v.is_finite() && *v >= 0.0));
            let mut h = History::default();
            h.import(&points, 1_800_000_000_000, 14 * 86_400_000);
            h.compact(1_800_000_000_000, 14 * 86_400_000);
            let _ = h.take_changes();
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            assert!(errors.iter().all(|e| e.starts_with("line ") || e.starts_with("the CSV")));
        }
    }
});
