//! Forecasts end to end, on daemons started on the test driver's five-domain
//! host: history imported over the API, fitted on the worker, a persona on
//! before the rush (the daemon's clock put just before it), observe mode, the
//! forecast route and CLI, and imports at scale and refused whole.

mod common;

use std::path::Path;

use common::Daemon;
use serde_json::Value;
use virt_persona::api::client;

/// 00:00 UTC of the Monday two weeks before the first Monday on or after
/// the test clock's day ([`common::test_clock`]): the history's first day.
/// Its third Monday is the day the daemon's clock is put on. At the Sunday
/// setting (the night the clocks go forward in Europe) the two weeks of
/// history run across the change.
fn monday() -> i64 {
    let day = common::test_clock()
        .with_time_zone(jiff::tz::TimeZone::UTC)
        .date();
    let ahead = (8 - day.weekday().to_monday_one_offset() as i64) % 7;
    let third = day
        .checked_add(jiff::Span::new().days(ahead))
        .expect("a date");
    third
        .to_zoned(jiff::tz::TimeZone::UTC)
        .expect("midnight UTC")
        .timestamp()
        .as_millisecond()
        - 14 * DAY
}
const DAY: i64 = 86_400_000;
const STEP: i64 = 300_000;

/// A deterministic noise source.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// A web server's CPU at `t`: 90 % from 09:00 to 11:00 UTC on weekdays, 50 %
/// then at weekends, 20 % otherwise (the personas' days are UTC days, so the
/// host's zone and its DST changes do not move the rush).
fn web_cpu(t: i64) -> f64 {
    let day = (t - monday()).div_euclid(DAY).rem_euclid(7);
    let minute = t.rem_euclid(DAY) / 60_000;
    match ((540..660).contains(&minute), day >= 5) {
        (true, false) => 90.0,
        (true, true) => 50.0,
        _ => 20.0,
    }
}

/// 14 days of 5-minute points before `end` for each domain, as the import CSV.
fn csv(domains: &[&str], end: i64, seed: u64) -> String {
    let mut rng = Lcg(seed);
    let mut out = String::from("timestamp,domain,metric,value\n");
    for d in domains {
        let mut t = end - 14 * DAY;
        while t < end {
            let v = web_cpu(t) + 3.0 * rng.next();
            out.push_str(&format!("{},{d},cpu,{v:.2}\n", t / 1000));
            t += STEP;
        }
    }
    out
}

fn import(d: &Daemon, body: &str) -> Result<Value, client::ClientError> {
    client::request_with_type(
        &d.socket,
        "POST",
        "/v1/history/import",
        body.as_bytes(),
        "text/csv",
    )
}

use common::wait_some as wait_for;

/// What the forecast route says of web-1's cpu while it cannot forecast:
/// its 409 message once the worker has looked at the series.
fn too_little_history(d: &Daemon) -> String {
    wait_for("web-1's forecast state", d, 60, || {
        match client::request(&d.socket, "GET", "/v1/forecast/web-1/cpu", None) {
            Err(client::ClientError::Api {
                status: 409,
                message,
            }) if message.contains("too little history") => Some(message),
            _ => None,
        }
    })
}

fn ms(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

const RUSH: &str = "id = \"web-rush\"\npriority = 50\n[match]\nnames = [\"web-1\"]\n[activation]\ncooldown = \"10m\"\ntimezone = \"UTC\"\n[[activation.when]]\nforecast = \"cpu\"\nhorizon = \"1m\"\nlead = \"5m\"\nabove = 70\n[tuning]\nblkio_weight = 800\n";

fn watch(mode: &str) -> String {
    format!("id = \"web-watch\"\npriority = 40\n{mode}[match]\nnames = [\"web-2\"]\n[activation]\ntimezone = \"UTC\"\n[[activation.when]]\nforecast = \"cpu\"\nhorizon = \"1m\"\nlead = \"5m\"\nabove = 70\n[tuning]\nblkio_weight = 700\n")
}

/// The daemon sees two weeks of web-1's and web-2's mornings (imported), its
/// clock is put at Monday 08:54:40 of the third week: web-1's persona goes
/// on at 08:55 (lead before the 09:00 rush; a tick later at most), web-2's persona in observe mode only says it would have, and
/// goes on once switched to act. The forecast route and CLI show the
/// forecast with its accuracy.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints (scripts/test.sh builds with it)"
)]
fn the_persona_is_on_before_the_rush_and_observe_mode_only_says_so() {
    let dir = common::test_dir("forecast", "rush");
    std::fs::write(dir.join("personas/rush.toml"), RUSH).unwrap();
    std::fs::write(
        dir.join("personas/watch.toml"),
        watch("forecast_mode = \"observe\"\n"),
    )
    .unwrap();
    let day15 = monday() + 14 * DAY;
    eprintln!(
        "the daemon's clock: {}, 08:54:40 UTC",
        virt_persona::time::rfc3339(day15)
    );
    // 20 s before the persona is due: the import and its fit take about a
    // second here (a few on a busy machine), and a later fit would show as
    // a late activation below
    let start = day15 + 8 * 3_600_000 + 54 * 60_000 + 40_000;
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let d = Daemon::start_args(
        &dir,
        &common::test_host_uri(),
        &["--interval", "1s"],
        &[(
            "FAILPOINTS",
            format!("clock-offset-ms=return({})", start - real),
        )],
    );
    // before any history: too little of it, said with how much more is needed
    let note = wait_for("the worker's first word", &d, 60, || {
        let e = d.get("/v1/domains/web-1/explain");
        let note = e["candidates"][0]["conditions"][0]["note"]
            .as_str()?
            .to_string();
        (note != "the forecast is being fitted").then_some(note)
    });
    assert!(
        note.starts_with("too little history for a forecast: 0.0 h recorded, 2.0 days needed"),
        "{note}"
    );

    // two weeks up to the daemon's now
    let r = import(&d, &csv(&["web-1", "web-2"], start - start % STEP, 1)).expect("import");
    assert_eq!(r["series"], 2, "{r}");
    assert_eq!(
        r["refitted"], 2,
        "both forecasts fitted before the answer: {r}"
    );
    assert!(r["imported"].as_u64().unwrap() >= 2 * 4030, "{r}");

    // fitted on the worker before the import answered: the forecast is
    // there at once, with its accuracy and the model its backtest chose
    let f = client::request(&d.socket, "GET", "/v1/forecast/web-1/cpu?horizon=2h", None)
        .expect("the forecast, right after the import");
    assert!(
        f["model"].is_string() && f["backtest"]["blend"].is_array(),
        "{f}"
    );
    let note = d.get("/v1/domains/web-1/explain")["candidates"][0]["conditions"][0]["note"].clone();
    assert!(
        !note
            .as_str()
            .unwrap_or("")
            .starts_with("too little history"),
        "explain knows of the import too: {note}"
    );
    assert_eq!(f["domain"], "web-1");
    assert_eq!(f["thresholds"][0]["above"], 70.0, "{f}");
    assert_eq!(f["seasons"], serde_json::json!(["daily", "weekly"]), "{f}");
    let points = f["points"].as_array().unwrap();
    assert!(points.len() >= 8, "{f}");
    let nine = day15 + 9 * 3_600_000;
    let at_nine = points
        .iter()
        .find(|p| ms(&p["t"]) == nine)
        .expect("09:00 forecast");
    assert!(
        at_nine["value"].as_f64().unwrap() > 70.0,
        "the rush is forecast: {at_nine}"
    );
    let (lower, value, upper) = (
        at_nine["lower"].as_f64().expect("a lower bound"),
        at_nine["value"].as_f64().expect("a value"),
        at_nine["upper"].as_f64().expect("an upper bound"),
    );
    assert!(lower <= value && value <= upper, "{at_nine}");
    let acc = &f["accuracy"];
    assert!(
        acc["mape"].as_f64().is_some_and(|m| m > 0.0 && m < 30.0),
        "{f}"
    );

    // on at 08:55 (lead before 09:00) by the daemon's clock
    wait_for("web-rush on web-1", &d, 180, || {
        (d.persona("web-1").as_deref() == Some("web-rush")).then_some(())
    });
    let h = d.get("/v1/domains/web-1/history");
    let on = h
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to"] == "web-rush" && e["result"] == "ok")
        .unwrap_or_else(|| panic!("{h}"));
    let t = ms(&on["time"]);
    assert!(
        (nine - 5 * 60_000..=nine - 5 * 60_000 + 30_000).contains(&t),
        "on at {} (09:00 - lead = 08:55)",
        on["time"]
    );
    // web-2 in observe mode: not worn, explained, and recorded as would_apply
    let e = wait_for("web-2's would-activate", &d, 60, || {
        let e = d.get("/v1/domains/web-2/explain");
        e["candidates"][0]["would_activate"]
            .is_string()
            .then_some(e)
    });
    assert_eq!(d.persona("web-2"), None, "{e}");
    let h = d.get("/v1/domains/web-2/history");
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .any(|e| e["result"] == "would_apply"
                && e["reason"] == "forecast (observe mode)"
                && e["to"] == "web-watch"),
        "{h}"
    );
    // the admin trusts it and lets it act
    let (st, _) = common::http(
        &d.socket,
        &format!(
            "PUT /v1/personas/web-watch HTTP/1.1\r\nContent-Type: application/toml\r\nContent-Length: {}\r\n\r\n{}",
            watch("").len(),
            watch("")
        ),
    );
    assert_eq!(st, 200);
    wait_for("web-watch on web-2", &d, 60, || {
        (d.persona("web-2").as_deref() == Some("web-watch")).then_some(())
    });

    // the CLI: a braille chart with the threshold, now marked, and the accuracy
    let out = common::cli_ok(&[
        "--socket",
        d.socket.to_str().unwrap(),
        "forecast",
        "web-1",
        "cpu",
        "--horizon",
        "3h",
    ]);
    assert!(
        out.chars().any(|c| ('\u{2801}'..='\u{28ff}').contains(&c)),
        "{out}"
    );
    assert!(out.contains("70 (web-rush)"), "{out}");
    assert!(out.contains("Accuracy of the forecast for"), "{out}");
    assert!(out.contains(&virt_persona::time::rfc3339(nine)), "{out}");
    assert!(out.contains("days on the UTC clock"), "{out}");
    // no day forecast by this daemon has passed yet: no record, said so
    // (the record itself: src/forecaster.rs, src/issued.rs)
    assert!(out.contains("Record: none yet"), "{out}");
    let f = d.get("/v1/forecast/web-1/cpu");
    assert_eq!(f["timezone"], "UTC", "{f}");
    assert!(f["record"].is_null(), "{f}");
    // and /metrics carries the accuracy per series
    let (_, m) = common::http(&d.socket, "GET /metrics HTTP/1.1\r\n\r\n");
    assert!(
        m.lines()
            .any(|l| l.starts_with("virt_persona_forecast_mape_percent{")
                && l.contains("domain=\"web-1\"")),
        "{m}"
    );
}

/// 14 days × 100 domains (by UUID: history for domains not here yet is
/// kept) in one request; it survives a kill -9; a CSV with bad lines is
/// refused whole, every bad line named, nothing of it imported.
#[test]
fn imports_at_scale_survive_kill9_and_bad_csvs_are_refused_whole() {
    let dir = common::test_dir("forecast", "import");
    std::fs::write(dir.join("personas/rush.toml"), RUSH).unwrap();
    let mut d = Daemon::start_args(&dir, &common::test_host_uri(), &["--interval", "1s"], &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let end = now - now.rem_euclid(STEP);
    let uuids: Vec<String> = (0..100)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    let names: Vec<&str> = uuids.iter().map(String::as_str).collect();
    let big = csv(&names, end, 2);
    assert!(big.len() > 15 << 20, "{} bytes", big.len());
    let r = import(&d, &big).expect("a large import");
    assert_eq!(r["series"], 100, "{r}");
    assert!(r["imported"].as_u64().unwrap() >= 100 * 4030, "{r}");

    // bad lines: all named, nothing imported (web-1's good lines included)
    let mut bad = csv(&["web-1"], end, 3);
    bad.push_str("yesterday,web-1,cpu,5\n");
    bad.push_str(&format!("{},nope-9,cpu,5\n", end / 1000 - 60));
    bad.push_str(&format!("{},web-1,cpu,-1\n", end / 1000 - 60));
    bad.push_str(&format!("{},web-1,cpu,NaN\n", end / 1000 - 60));
    bad.push_str(&format!("{},web-1,cpu,inf\n", end / 1000 - 60));
    let lines = bad.lines().count();
    match import(&d, &bad) {
        Err(client::ClientError::Api {
            status: 400,
            message,
        }) => {
            assert!(
                message.starts_with("5 bad line(s); nothing was imported"),
                "{message}"
            );
            assert!(message.contains("value 'NaN'"), "{message}");
            for n in [lines - 4, lines - 3, lines - 2, lines - 1, lines] {
                assert!(
                    message.contains(&format!("line {n}:")),
                    "line {n}: {message}"
                );
            }
            assert!(message.contains("nope-9"), "{message}");
        }
        other => panic!("expected a 400: {other:?}"),
    }
    // a re-timing the daemon cannot do is refused, nothing imported
    match client::request_with_type(
        &d.socket,
        "POST",
        "/v1/history/import?retime=yesterday",
        csv(&["web-1"], end, 3).as_bytes(),
        "text/csv",
    ) {
        Err(client::ClientError::Api {
            status: 400,
            message,
        }) => assert!(message.starts_with("retime: 'yesterday'"), "{message}"),
        other => panic!("expected a 400: {other:?}"),
    }
    let f = too_little_history(&d);
    assert!(
        f.contains("0.0 h recorded"),
        "nothing of the refused files was kept: {f}"
    );

    // a good import of web-1, then kill -9: the history is on disk
    import(&d, &csv(&["web-1"], end, 4)).expect("import web-1");
    wait_for("web-1 fitted", &d, 120, || {
        client::request(&d.socket, "GET", "/v1/forecast/web-1/cpu", None).ok()
    });
    d.kill9();
    drop(d);
    let d = Daemon::start_args(&dir, &common::test_host_uri(), &["--interval", "1s"], &[]);
    let f = wait_for("web-1 fitted after kill -9", &d, 120, || {
        client::request(&d.socket, "GET", "/v1/forecast/web-1/cpu", None).ok()
    });
    assert!(f["history_days"].as_f64().unwrap() > 13.9, "{f}");
    assert!(Path::new(&dir.join("state/history.redb")).exists());
    // and the file stays within its budget: 100 domains × 14 days is ~4 MB
    let size = std::fs::metadata(dir.join("state/history.redb"))
        .unwrap()
        .len();
    assert!(size < 50 << 20, "history.redb is {size} bytes");
}

/// The forecast worker's inbox full (a fail point stands in for it, for
/// the first import only): the import is answered 503 (try again), not 500,
/// says nothing was imported, and nothing was: the series still has no
/// history. The same import once the worker takes it is there.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints (scripts/test.sh builds with it)"
)]
fn an_import_while_the_worker_is_busy_is_503_and_imports_nothing() {
    let dir = common::test_dir("forecast", "busy");
    std::fs::write(dir.join("personas/rush.toml"), RUSH).unwrap();
    let d = Daemon::start_args(
        &dir,
        &common::test_host_uri(),
        &["--interval", "1s"],
        &[("FAILPOINTS", "import-worker-busy=1*return".to_string())],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let end = now - now.rem_euclid(STEP);
    let body = csv(&["web-1"], end, 4);
    match import(&d, &body) {
        Err(client::ClientError::Api { status, message }) => {
            assert_eq!(status, 503, "{message}");
            assert!(message.contains("nothing was imported"), "{message}");
        }
        other => panic!("expected 503: {other:?}"),
    }
    let h = d.get("/healthz");
    assert!(h.is_object(), "{h}");
    // nothing of it is in the history
    let f = too_little_history(&d);
    assert!(f.contains("0.0 h recorded"), "nothing imported: {f}");
    // the fail point is spent: the same file is taken, and it shows
    let r = import(&d, &body).expect("the import once the worker takes it");
    assert_eq!(r["series"], 1, "{r}");
    let f = wait_for("web-1 fitted", &d, 120, || {
        client::request(&d.socket, "GET", "/v1/forecast/web-1/cpu", None).ok()
    });
    assert!(f["history_days"].as_f64().unwrap() > 13.9, "{f}");
}

/// `forecast = "signal:NAME"`: a load balancer's request rate, learned from
/// its own history (two weeks imported by CSV as `signal:lb.web.rps`), puts
/// the persona on before the rush; the forecast route and CLI show it; and
/// the live signal, as each domain whose persona names it sees it, is
/// recorded in the history from then on.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints (scripts/test.sh builds with it)"
)]
fn a_signal_is_recorded_forecast_and_puts_the_persona_on_before_its_rush() {
    let dir = common::test_dir("forecast", "signal");
    let persona = |id: &str, domain: &str| {
        format!("id = \"{id}\"\n[match]\nnames = [\"{domain}\"]\n[activation]\ncooldown = \"10m\"\ntimezone = \"UTC\"\n[[activation.when]]\nforecast = \"signal:lb.web.rps\"\nhorizon = \"1m\"\nlead = \"5m\"\nabove = 700\n[tuning]\nblkio_weight = 800\n")
    };
    std::fs::write(dir.join("personas/rps.toml"), persona("rps-rush", "web-1")).unwrap();
    std::fs::write(
        dir.join("personas/rps2.toml"),
        persona("rps-rush-2", "web-2"),
    )
    .unwrap();
    let day15 = monday() + 14 * DAY;
    // 08:54:45: the persona is due at 08:55 (the rush at 09:00, lead 5m);
    // the import and its fit take well under a second here
    let start = day15 + 8 * 3_600_000 + 54 * 60_000 + 45_000;
    let d = Daemon::start_args(
        &dir,
        &common::test_host_uri(),
        &["--interval", "1s"],
        &[common::clock_at(start)],
    );
    // two weeks of web-1's request rate: 10 × the web CPU shape
    let end = start - start % STEP;
    let mut body = String::from("timestamp,domain,metric,value\n");
    let mut rng = Lcg(7);
    let mut t = end - 14 * DAY;
    while t < end {
        let v = 10.0 * web_cpu(t) + 20.0 * rng.next();
        body.push_str(&format!("{},web-1,signal:lb.web.rps,{v:.1}\n", t / 1000));
        t += STEP;
    }
    let r = import(&d, &body).expect("import");
    assert_eq!(
        (r["series"].as_u64(), r["refitted"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    // a wrong spelling is refused by line
    let bad = import(
        &d,
        "timestamp,domain,metric,value\n1700000000,web-1,signal:Bad Name,1\n",
    )
    .unwrap_err();
    assert!(
        bad.to_string().contains("unknown metric 'signal:Bad Name'"),
        "{bad}"
    );

    let f = client::request(
        &d.socket,
        "GET",
        "/v1/forecast/web-1/signal:lb.web.rps?horizon=2h",
        None,
    )
    .expect("the signal's forecast");
    assert_eq!(f["metric"], "signal:lb.web.rps", "{f}");
    assert_eq!(f["thresholds"][0]["above"], 700.0, "{f}");
    let nine = day15 + 9 * 3_600_000;
    let at_nine = f["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| ms(&p["t"]) == nine)
        .cloned()
        .expect("09:00");
    assert!(
        at_nine["value"].as_f64().unwrap() > 700.0,
        "the rush is forecast: {at_nine}"
    );

    // on at 08:55 by the daemon's clock, before any request came
    wait_for("rps-rush on web-1", &d, 180, || {
        (d.persona("web-1").as_deref() == Some("rps-rush")).then_some(())
    });
    let out = common::cli_ok(&[
        "--socket",
        d.socket.to_str().unwrap(),
        "forecast",
        "web-1",
        "signal:lb.web.rps",
        "--horizon",
        "3h",
    ]);
    assert!(out.contains("700 (rps-rush)"), "{out}");

    // the live signal (host-wide) is recorded for web-2, whose persona names it
    let series = |d: &Daemon| {
        let (_, m) = common::http(&d.socket, "GET /metrics HTTP/1.1\r\n\r\n");
        m.lines()
            .find(|l| l.starts_with("virt_persona_limit_used{") && l.contains("history_series"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(series(&d), 1.0);
    let (st, _) = common::http(
        &d.socket,
        "PUT /v1/signals/lb.web.rps HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n{\"value\": 120, \"ttl\": \"1h\"}\n",
    );
    assert_eq!(st, 200);
    wait_for("web-2's signal series in the history", &d, 120, || {
        (series(&d) >= 2.0).then_some(())
    });
}
