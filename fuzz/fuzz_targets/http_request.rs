//! Fuzzes what is still ours in reading an API request (hyper and axum do the
//! HTTP): the decoders that turn a route's parameters, query and body into a
//! command. Any bytes give a command or an error status with a message,
//! never a panic. Input: a selector byte, a line used as the content type (or
//! the query values), then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virt_persona::api::server::decode;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (head, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let r = match which % 5 {
        0 => decode::activate("d".into(), &head, body).map(|_| ()),
        1 => decode::signal(String::from_utf8_lossy(body).into_owned(), &head, body).map(|_| ()),
        2 => decode::persona_body(&head, body).map(|_| ()),
        3 => {
            let body = String::from_utf8_lossy(body);
            decode::history("d".into(), Some(&head), Some(&body)).map(|_| ())
        }
        _ => {
            let body = String::from_utf8_lossy(body);
            decode::recent(Some(&head), Some(&body)).map(|_| ())
        }
    };
    if let Err((status, message)) = r {
        assert!((400..600).contains(&status), "{status}");
        assert!(!message.is_empty());
    }
});
