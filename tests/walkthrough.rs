//! The README's walk-through, run as printed: its command lines are read from
//! README.md and run one by one against a daemon on the five-domain test host
//! with the shipped example personas, as `scripts/run-embedded.sh` starts it.
//! Each command must succeed and show what the README says it shows; every
//! command also ends quietly when its reader goes away (`| head -1`).
//!
//! The shipped personas have schedules (`business-hours-desktop`: weekdays
//! 08:00–18:00 in Berlin), so the daemon's clock is set: to
//! [`common::test_clock`], which `scripts/test.sh` runs at a weekday 10:00
//! and at a Sunday 03:00 (the night the clocks go forward). The README must
//! be true at both.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;

/// The command lines between the walk-through markers, comments stripped.
fn walkthrough() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find("<!-- walkthrough:begin")
        .expect("walk-through begin marker in README.md");
    let end = readme
        .find("<!-- walkthrough:end -->")
        .expect("walk-through end marker in README.md");
    readme[start..end]
        .lines()
        .filter(|l| {
            l.starts_with("virt-persona ") || l.starts_with("sleep ") || l.starts_with("export ")
        })
        .map(|l| l.split(" #").next().unwrap_or(l).trim().to_string())
        .collect()
}

/// What each command of the walk-through must print (all of these strings).
fn expected(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "virt-persona list" => &["web-1", "db-1", "desk-1"],
        "virt-persona signal-set lb.web.rps 1500" => &["Signal 'lb.web.rps' = 1500"],
        "virt-persona persona-list" => &[
            "web-peak",
            "degraded",
            "Degraded on this host:",
            "web-peak on web-1: cpu_shares skipped: libvirt reports no current value for it on this host",
        ],
        "virt-persona persona-status web-1" => &[
            "Persona:        web-peak",
            "Degraded:       cpu_shares skipped",
            "hard_limit (KiB):       4194304",
            "inbound.average:      102400",
            "outbound.average:     51200",
        ],
        "virt-persona persona-explain web-1" => &[
            "web-peak (priority 100): holds",
            "[yes] signal lb.web.rps > 1000: now 1500.00",
            "degraded: cpu_shares skipped",
            "nightly-backup (priority 80): does not match: the domain lacks the tags [\"backup\"]",
        ],
        "virt-persona persona-explain db-1" => &[
            "no persona matches this domain",
            "web-peak (priority 100): does not match: the name 'db-1' fits none of its [match] names",
        ],
        "virt-persona persona-history web-1" => &["web-peak", "criteria", "ok"],
        "virt-persona persona-apply desk-1 business-hours-desktop --for 5s" => {
            &["Domain 'desk-1' wears persona 'business-hours-desktop' for 5s"]
        }
        // the end depends on the hour: expected below, from the clock
        "virt-persona persona-history desk-1" => &["manual"],
        "virt-persona history-import --retime fixtures/history/test-host-14d.csv" => &[
            "Re-timed by",
            "Imported 4042 point(s) into 2 series",
            "2 forecasts fitted again from them",
        ],
        "virt-persona forecast web-1 cpu --horizon 24h" => &[
            "web-1 cpu — forecast 1d ahead",
            "days of history",
            "70 (web-morning-rush)",
            "(chosen by backtest)",
            "Accuracy of the forecast for",
            "Record: none yet",
        ],
        // and one of the forecast's notes, below
        "virt-persona persona-explain web-2" => &[
            "web-morning-rush (priority 110): does not hold",
            "[no ] forecast cpu > 70 within 10m (+5m lead): forecast peak",
        ],
        other => panic!("the README walk-through has a command this test does not know: {other}"),
    }
}

fn run(sock: &Path, cmd: &str) -> (bool, String, String) {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .env("VIRT_PERSONA_SOCKET", sock)
        .env("PATH", path_with_bins())
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path_with_bins() -> String {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_virt-persona"));
    format!(
        "{}:{}",
        bin.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A daemon as `scripts/run-embedded.sh` starts it: the five-domain test
/// host, the shipped example personas, a 1 s interval.
fn embedded(name: &str) -> Daemon {
    embedded_at(name, common::test_clock().timestamp().as_millisecond())
}

/// Weekdays 08:00–18:00 in Berlin: `business-hours-desktop`'s own schedule.
fn office_hours(at: &jiff::Zoned) -> bool {
    let berlin = at.with_time_zone(jiff::tz::TimeZone::get("Europe/Berlin").expect("tz database"));
    let weekday = berlin.weekday().to_monday_one_offset() <= 5;
    weekday && (8..18).contains(&berlin.hour())
}

fn embedded_at(name: &str, at: i64) -> Daemon {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("personas")).unwrap();
    for f in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("personas")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join("personas").join(f.file_name().unwrap())).unwrap();
    }
    let uri = format!(
        "test://{}/fixtures/test-host.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    Daemon::start_args(&dir, &uri, &["--interval", "1s"], &[common::clock_at(at)])
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "sets the daemon's clock: needs --features failpoints (scripts/test.sh builds with it)"
)]
fn the_readme_walkthrough_works_as_printed() {
    let clock = common::test_clock();
    let office = office_hours(&clock);
    eprintln!("the daemon's clock: {clock} (office hours in Berlin: {office})");
    let d = embedded("walkthrough");
    let lines = walkthrough();
    assert!(
        lines.len() >= 10,
        "the walk-through has its commands: {lines:?}"
    );
    let mut seen_list = 0;
    for line in &lines {
        if line.starts_with("export ") || line.starts_with("sleep ") {
            // the daemon's own socket is set instead; a sleep is what the next
            // command waits for, below, with a generous deadline
            continue;
        }
        let mut want: Vec<&str> = expected(line).to_vec();
        if line == "virt-persona list" {
            // the same command, three times, showing three moments
            seen_list += 1;
            match seen_list {
                // desk-1 by its schedule in office hours
                1 if office => want.extend(["business-hours-desktop", "criteria"]),
                2 => want.extend(["web-peak"]),
                3 => want.extend(["business-hours-desktop", "manual until"]),
                _ => {}
            }
        }
        if line == "virt-persona persona-history desk-1" {
            // at expiry: back to the baseline, or kept on by the schedule
            want.push(if office {
                "manual activation expired; its criteria keep 'business-hours-desktop' on"
            } else {
                "baseline"
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out, err) = run(&d.socket, line);
            assert!(ok, "`{line}` failed: {err}\n{}", d.log());
            let mut missing: Vec<&&str> = want.iter().filter(|w| !out.contains(**w)).collect();
            // web-morning-rush says when its forecast crosses 70 (within the
            // 10 minutes, later in the day ahead, or not at all)
            const NOTES: [&str; 3] = [
                "forecast to cross at",
                "next forecast crossing at",
                "no crossing forecast until",
            ];
            if line == "virt-persona persona-explain web-2"
                && !NOTES.iter().any(|n| out.contains(n))
            {
                missing.push(&NOTES[1]);
            }
            if missing.is_empty() {
                eprintln!("$ {line}\n{out}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "`{line}` does not show {missing:?}:\n{out}\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        if line == "virt-persona list" && seen_list == 1 {
            // web-1 and web-2 wear nothing before the signal, desk-1 nothing
            // outside office hours
            let out = run(&d.socket, line).1;
            assert!(!out.contains("web-peak"), "{out}");
            assert_eq!(out.contains("business-hours-desktop"), office, "{out}");
        }
        // a reader that goes away early ends the command quietly, as in
        // coreutils (not run twice where running it again changes the story:
        // a second activation is a second event)
        if line.starts_with("virt-persona persona-apply ") {
            continue;
        }
        let (_, _, err) = run(&d.socket, &format!("{line} | head -1"));
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "`{line} | head -1` is not quiet: {err}"
        );
    }
    // what the host cannot do is in /metrics too
    let (status, metrics) = common::http(
        &d.socket,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        metrics.contains("virt_persona_knob_unsupported{domain=\"web-1\",knob=\"cpu_shares\"} 1"),
        "{metrics}"
    );
    // the manual activation ended by itself: outside office hours two
    // transitions, on and off; in office hours the schedule's, then the
    // manual activation on and its end, the persona worn all along
    let (_, hist, _) = run(&d.socket, "virt-persona --json persona-history desk-1");
    let v: serde_json::Value = serde_json::from_str(&hist).expect("history JSON");
    let seen: Vec<(Option<&str>, &str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["to"].as_str(),
                e["reason"].as_str().unwrap_or(""),
                e["result"].as_str().unwrap_or(""),
            )
        })
        .collect();
    const BHD: Option<&str> = Some("business-hours-desktop");
    let want: Vec<(Option<&str>, &str, &str)> = if office {
        vec![
            (BHD, "criteria", "ok"),
            (BHD, "manual", "ok"),
            (
                BHD,
                "manual activation expired; its criteria keep 'business-hours-desktop' on",
                "override_ended",
            ),
        ]
    } else {
        vec![(BHD, "manual", "ok"), (None, "baseline", "ok")]
    };
    assert_eq!(seen, want, "{hist}");
    assert_eq!(
        d.persona("desk-1").as_deref(),
        if office { BHD } else { None },
        "after the expiry"
    );
}

/// Every read-only command ends quietly when piped into `head -1`, including
/// the long ones (status of every domain, the event list).
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "sets the daemon's clock: needs --features failpoints (scripts/test.sh builds with it)"
)]
fn every_command_is_quiet_when_its_reader_goes_away() {
    let d = embedded("pipe");
    // something in the event list
    let (ok, _, err) = run(
        &d.socket,
        "virt-persona persona-apply desk-1 business-hours-desktop",
    );
    assert!(ok, "{err}");
    for cmd in [
        "list --all",
        "persona-list",
        "persona-status",
        "persona-status db-1",
        "persona-explain db-1",
        "persona-history db-1",
        "signal-list",
        "event",
        "tag-list -c test:///default",
        "man",
        "completions bash",
        "--help",
    ] {
        let (_, out, err) = run(&d.socket, &format!("virt-persona {cmd} | head -1"));
        assert!(
            !out.is_empty(),
            "`virt-persona {cmd}` printed nothing: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "`virt-persona {cmd} | head -1` is not quiet: {err}"
        );
    }
}
