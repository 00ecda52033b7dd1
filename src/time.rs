//! Time, at the bottom of the crate: milliseconds since the Unix epoch, the
//! daemon's wall clock (with the test builds' offset), an injectable clock,
//! and one way to show and read a time. Every module takes its time from here.

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// A clock that can be set in tests: the reconciler's and the forecast
/// worker's `now`.
pub type Clock = Box<dyn Fn() -> Millis + Send + Sync>;

/// The wall clock, in milliseconds since the Unix epoch (0 if it is before 1970).
pub fn now_ms() -> Millis {
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

/// A steady clock in the wall clock's units: the wall clock (with the test
/// builds' offset) when first read, then a monotonic clock from there, so a
/// step of the wall clock (NTP, an admin) does not move it. The cluster's
/// clock runs on it ([`crate::cluster::clock`]).
pub fn steady_ms() -> Millis {
    static START: std::sync::OnceLock<(std::time::Instant, Millis)> = std::sync::OnceLock::new();
    let (at, wall) = START.get_or_init(|| (std::time::Instant::now(), now_ms()));
    wall + at.elapsed().as_millis() as Millis
}

/// A time for people and for JSON: RFC 3339 in UTC, to the second. The
/// second is truncated, never rounded up: a time shown has always come.
pub fn rfc3339(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Parses a time given by a person or a script: RFC 3339, or Unix seconds.
pub fn parse_time(s: &str) -> Option<Millis> {
    if let Ok(secs) = s.parse::<i64>() {
        return secs.checked_mul(1000);
    }
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_format_truncated_to_the_second() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_999), "1970-01-01T00:00:01Z", "never rounded up");
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000));
        assert_eq!(parse_time("2"), Some(2_000));
        assert_eq!(parse_time("soon"), None);
    }
}
