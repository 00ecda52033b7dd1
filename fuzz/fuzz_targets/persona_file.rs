//! Fuzzes the persona loader: any bytes in a persona file must give a persona
//! or errors with positions inside the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match virt_persona::model::validate::parse_persona(text, Path::new("fuzz.toml")) {
        Ok(p) => {
            // a valid persona resolves against any domain without panicking
            let d = virt_persona::hypervisor::fake::FakeHypervisor::simple_domain("web-1", 4);
            let _ = p.tuning.resolve(&d);
            let _ = p.matches(&d);
        }
        Err(errs) => {
            assert!(!errs.is_empty());
            let lines = text.lines().count().max(1);
            for e in errs {
                assert!(e.line >= 1 && e.line <= lines + 1, "line {} of {lines}: {e}", e.line);
            }
        }
    }
    for s in text.split('\n').take(4) {
        let _ = s.parse::<virt_persona::units::Size>();
        let _ = s.parse::<virt_persona::units::Duration>();
        let _ = s.parse::<virt_persona::units::Rate>();
        let _ = s.parse::<virt_persona::units::CpuSet>();
    }
});
