//! The CLI as an admin runs it: persona-validate offline, tag-* on the test driver.

mod common;

use common::{cli, cli_ok};

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn persona_validate_prints_compiler_style_errors_and_exits_1() {
    let bad = root().join("tests/golden/bad/wrong-type.toml");
    let good = root().join("personas/web-peak.toml");
    let out = cli()
        .arg("persona-validate")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{}: ok (persona 'web-peak')", good.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{}:2:12: invalid type: string \"high\", expected i64",
            bad.display()
        )),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: 1 error(s) in 1 of 2 file(s)"),
        "{stderr}"
    );

    let ok = cli().arg("persona-validate").arg(&good).output().unwrap();
    assert!(ok.status.success());
}

#[test]
fn persona_validate_json_and_duplicates() {
    let good = root().join("personas/web-peak.toml");
    let out = cli()
        .args(["--json", "persona-validate"])
        .arg(&good)
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["ok"], true);
    assert_eq!(v[1]["ok"], false);
    let msg = v[1]["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("duplicate persona id 'web-peak': also defined in"),
        "{msg}"
    );
    let missing = cli()
        .args(["persona-validate", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stdout).contains("/nonexistent.toml:0:0: cannot read"));
}

#[test]
fn tags_through_the_cli_on_the_test_driver() {
    let uri = format!(
        "test://{}/fixtures/test-host.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = cli_ok(&["-c", &uri, "--json", "tag-add", "web-1", "canary"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["web", "canary"]));
    let list = cli().args(["-c", &uri, "tag-list"]).output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["Name", "Tags"]
    );
    assert!(lines[1].chars().all(|c| c == '-'));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(" web-2") && l.ends_with("web, prod")),
        "{text}"
    );
    let bad = cli()
        .args(["-c", &uri, "tag-add", "web-1", "Bad Tag"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error: invalid tag 'Bad Tag'"));
    let ghost = cli()
        .args(["-c", &uri, "tag-list", "ghost"])
        .output()
        .unwrap();
    assert_eq!(ghost.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&ghost.stderr).trim(),
        "error: domain 'ghost' not found"
    );
}
