//! docs/personas.md cannot drift from the validator: every key the validator
//! knows (read from the validator itself, through the "expected one of" list
//! it gives for an unknown key in each table) and every metric appears in the
//! guide, and every TOML example in the guide is a valid persona file.

use std::path::Path;

use virt_persona::model::validate::parse_persona;

fn guide() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/personas.md"))
        .expect("docs/personas.md")
}

/// The names the validator lists after "expected" for a file it refuses.
fn expected_names(toml: &str) -> Vec<String> {
    let errors = match parse_persona(toml, Path::new("probe.toml")) {
        Ok(_) => panic!("the probe was accepted:\n{toml}"),
        Err(e) => e,
    };
    let text: String = errors.iter().map(|e| format!("{e}\n")).collect();
    let list = text
        .split_once("expected")
        .unwrap_or_else(|| panic!("no list of what is expected in: {text}"))
        .1;
    let names: Vec<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        // metrics: "expected one of cpu, cpu_steal, …"
        return list
            .trim()
            .trim_start_matches("one of")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    names
}

#[test]
fn every_key_and_metric_of_the_validator_is_in_the_guide() {
    let probes = [
        "id = \"p\"\nzzz_probe = 1\n",
        "id = \"p\"\n[match]\nzzz_probe = 1\n",
        "id = \"p\"\n[activation]\nzzz_probe = 1\n",
        "id = \"p\"\n[activation]\nschedule = [{ from = \"01:00\", to = \"02:00\", zzz_probe = 1 }]\n",
        "id = \"p\"\n[[activation.when]]\nmetric = \"cpu\"\nabove = 1\nzzz_probe = 1\n",
        "id = \"p\"\n[tuning]\nzzz_probe = 1\n",
        "id = \"p\"\n[[tuning.blkio_device]]\npath = \"/dev/sda\"\nzzz_probe = 1\n",
        "id = \"p\"\n[[tuning.interface]]\ntarget = \"*\"\nzzz_probe = 1\n",
        "id = \"p\"\n[[tuning.disk]]\ntarget = \"*\"\nzzz_probe = 1\n",
        "id = \"p\"\n[[tuning.interface]]\ntarget = \"*\"\ninbound = { average = \"1 MiB/s\", zzz_probe = 1 }\n",
        // the metrics, from the unknown-metric message
        "id = \"p\"\n[[activation.when]]\nmetric = \"zzz_probe\"\nabove = 1\n",
    ];
    let guide = guide();
    let mut seen = 0;
    for probe in probes {
        let names = expected_names(probe);
        assert!(names.len() >= 2, "{probe}: {names:?}");
        for name in names {
            seen += 1;
            assert!(
                guide.contains(&format!("`{name}`")),
                "docs/personas.md does not document `{name}` (from:\n{probe})"
            );
        }
    }
    assert!(seen > 60, "{seen} names checked");
}

/// The guide states each knob's range as the knob table has it (the validator
/// and the check before libvirt take theirs from the same row).
#[test]
fn every_knob_of_the_table_is_in_the_guide_with_its_range() {
    let guide = guide();
    for row in virt_persona::model::tuning::ROWS {
        let line = guide
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", row.key)))
            .unwrap_or_else(|| panic!("docs/personas.md has no table line for `{}`", row.key));
        let range = row.input.range_text();
        assert!(
            line.contains(&range),
            "docs/personas.md: `{}` does not state its range {range}: {line}",
            row.key
        );
    }
    assert!(virt_persona::model::tuning::ROWS.len() >= 14);
    // the per-device rows: what they are indexed by, and their value's range
    for row in virt_persona::model::tuning::DEVICE_ROWS {
        let line = guide
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", row.key)))
            .unwrap_or_else(|| panic!("docs/personas.md has no table line for `{}`", row.key));
        for said in [row.input.range_text(), row.index.noun().to_string()] {
            assert!(
                line.contains(&said),
                "docs/personas.md: `{}` does not say {said:?}: {line}",
                row.key
            );
        }
    }
    assert!(virt_persona::model::tuning::DEVICE_ROWS.len() >= 2);
}

#[test]
fn every_example_in_the_guide_is_a_valid_persona() {
    let guide = guide();
    let mut n = 0;
    for (i, block) in guide.split("```toml\n").skip(1).enumerate() {
        let toml = block.split("```").next().unwrap_or_default();
        if let Err(e) = parse_persona(toml, Path::new("guide.toml")) {
            panic!("example {} of docs/personas.md: {e:?}\n{toml}", i + 1);
        }
        n += 1;
    }
    assert!(n >= 6, "{n} examples");
}
