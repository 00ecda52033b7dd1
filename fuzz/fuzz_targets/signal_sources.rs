//! Fuzzes what signal sources read from outside: the Prometheus text
//! exposition (strict reader), a Prometheus query answer, and the
//! Alertmanager webhook. Any bytes give series or an error that names its
//! line, never a panic; what comes out is what was asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virt_persona::api::server::decode;
use virt_persona::sources::{exposition, query};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match exposition::parse_many(&text, &["x", "x_total", "x"]) {
        Ok(r) => {
            assert_eq!(r.len(), 3);
            assert_eq!(r[0].len(), r[2].len());
            assert!(r[0].iter().all(|s| s.name == "x"));
        }
        Err(e) => assert!(e.line >= 1 && e.line <= text.split('\n').count()),
    }
    let _ = query::decode(data);
    let _ = decode::alertmanager("application/json", data, None, None);
});
