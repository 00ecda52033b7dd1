//! The control surface. [`command::Command`] is everything a client can ask;
//! `server` only turns HTTP requests on the unix socket into commands and
//! replies into JSON; `client` is what the CLI uses to speak to it.

pub mod client;
pub mod command;
pub mod exec;
pub mod server;

/// The wall clock, in milliseconds since the Unix epoch (0 if it is before 1970).
pub fn now_ms() -> i64 {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    // test builds only (feature `failpoints`): FAILPOINTS=clock-offset-ms=return(N)
    // runs the whole daemon N ms away from the real clock, so a test can put
    // it just before a forecast rush; a no-op in every other build
    fail::fail_point!("clock-offset-ms", |n: Option<String>| {
        real + n.and_then(|n| n.parse::<i64>().ok()).unwrap_or(0)
    });
    real
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC, seconds precision).
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Parses `since`: RFC 3339, or Unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1000);
    }
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}
