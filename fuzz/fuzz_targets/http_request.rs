//! Fuzzes the API's request parsing and routing: any bytes from a client give
//! a command or an HTTP error status, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virt_persona::api::server::{read_request, route};

fuzz_target!(|data: &[u8]| {
    let mut r = std::io::BufReader::new(data);
    if let Ok(req) = read_request(&mut r) {
        match route(&req) {
            Ok(_) => {}
            Err((status, message)) => {
                assert!((400..600).contains(&status), "{status}");
                assert!(!message.is_empty());
            }
        }
    }
});
