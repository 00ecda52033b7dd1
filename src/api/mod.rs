//! The control surface. [`command::Command`] is everything a client can ask;
//! `server` only turns HTTP requests on the unix socket into commands and
//! replies into JSON; `client` is what the CLI uses to speak to it.

pub mod client;
pub mod command;
pub mod exec;
pub mod server;

/// The wall clock, in milliseconds since the Unix epoch (0 if it is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
