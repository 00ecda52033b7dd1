//! virt-persona: the admin CLI, virsh-style. Prints the error chain once, as
//! `error: …`, and exits 1 on any failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;

use anyhow::Context as _;
use virt_persona::api::{client, printable};

// Everything this CLI prints goes through `printable`: names, messages and
// files come from the daemon, libvirt and other users, and a control
// character in them is shown as an escape, never sent to the terminal.
macro_rules! println {
    () => { std::println!() };
    ($($t:tt)*) => { std::println!("{}", printable(&format!($($t)*))) };
}
macro_rules! print {
    ($($t:tt)*) => { std::print!("{}", printable(&format!($($t)*))) };
}
macro_rules! eprintln {
    () => { std::eprintln!() };
    ($($t:tt)*) => { std::eprintln!("{}", printable(&format!($($t)*))) };
}

/// JSON for --json, with what serde_json leaves raw escaped (same JSON).
fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    std::println!(
        "{}",
        virt_persona::api::printable_json(&serde_json::to_string_pretty(v)?)
    );
    Ok(())
}
use virt_persona::hypervisor::libvirt::LibvirtHypervisor;
use virt_persona::hypervisor::Hypervisor;
use virt_persona::model::validate::{load_file, valid_name, FileError, Rule};

/// Admin CLI for virt-persona: adaptive tuning personas for libvirt domains.
#[derive(Parser, Debug)]
#[command(name = "virt-persona", version, about, long_about = None)]
struct Cli {
    /// libvirt URI for commands that talk to libvirt directly (tag-*).
    #[arg(
        short = 'c',
        long = "connect",
        value_name = "URI",
        default_value = "qemu:///system",
        global = true
    )]
    connect: String,
    /// The daemon's API socket (else $VIRT_PERSONA_SOCKET, else the default).
    #[arg(
        long,
        value_name = "PATH",
        env = "VIRT_PERSONA_SOCKET",
        default_value = "/run/virt-persona/api.sock",
        global = true
    )]
    socket: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check persona files offline; prints FILE:LINE:COL: message per error, exit 1 on any.
    PersonaValidate {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Add tags to a domain (stored in its libvirt metadata).
    TagAdd {
        domain: String,
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Remove tags from a domain.
    TagRemove {
        domain: String,
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Show the tags of one domain, or of every domain.
    TagList { domain: Option<String> },
    /// Push an external signal (e.g. a load balancer's request rate).
    SignalSet {
        name: String,
        value: f64,
        /// How long it stays valid [default: 5m].
        #[arg(long, value_name = "DUR")]
        ttl: Option<virt_persona::units::Duration>,
        /// Only for this domain (else host-wide).
        #[arg(long, value_name = "DOM")]
        domain: Option<String>,
        /// Gossip it to every host of the cluster (refused by a host not in one).
        #[arg(long)]
        cluster: bool,
    },
    /// Remove a signal before its TTL (a cluster signal: on every host).
    SignalUnset {
        name: String,
        /// The signal of this domain (else the host-wide one).
        #[arg(long, value_name = "DOM")]
        domain: Option<String>,
    },
    /// Live external signals, and the sources that set them ([[signals.source]]:
    /// what each polls, when it last answered, its last error).
    SignalList,
    /// The signal sources of the daemon's config and how each fares.
    SourceList,
    /// Transitions and drift as they happen.
    Event {
        /// Keep printing until interrupted (otherwise: the events of the last hour).
        #[arg(long)]
        follow: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
    /// Domains with the persona each wears (through the daemon).
    List {
        /// Also show domains that are not running.
        #[arg(long)]
        all: bool,
    },
    /// Personas with their priority, load status and file (through the daemon).
    PersonaList,
    /// The effective persona as TOML (the version in force).
    PersonaDump { persona: String },
    /// Define or replace a persona from a file (written into the daemon's personas directory).
    PersonaDefine {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Remove a persona (its file) through the daemon.
    PersonaUndefine { persona: String },
    /// Manually put a persona on a domain, beating all criteria.
    ///
    /// Until --for runs out (or persona-revert): the domain wears it with
    /// reason "manual". On a domain that already wears the persona by its
    /// criteria nothing changes, but the activation is recorded and shown all
    /// the same; at its end the criteria decide again (the history says so).
    PersonaApply {
        domain: String,
        persona: String,
        /// Let it expire by itself after this long, e.g. 15m.
        #[arg(long = "for", value_name = "DUR")]
        for_: Option<virt_persona::units::Duration>,
    },
    /// End a manual activation: the criteria decide again.
    PersonaRevert { domain: String },
    /// What a domain wears, why, since when, and its tuned values.
    PersonaStatus { domain: Option<String> },
    /// The decision for a domain, condition by condition.
    PersonaExplain { domain: String },
    /// Transitions of a domain (through the daemon).
    PersonaHistory {
        domain: String,
        /// Only events newer than this, e.g. 1h, 30m.
        #[arg(long, value_name = "DUR")]
        since: Option<virt_persona::units::Duration>,
    },
    /// A domain's forecast of a metric: the last day of history, the forecast
    /// with its 95 % interval, the thresholds of forecast conditions, now
    /// marked; then the points and how accurate the forecast has been.
    Forecast {
        domain: String,
        /// A metric a forecast condition names, e.g. cpu.
        metric: String,
        /// How far ahead, e.g. 2h (at most 24h) [default: 6h].
        #[arg(long, value_name = "DUR")]
        horizon: Option<virt_persona::units::Duration>,
    },
    /// Every host of the cluster: alive, suspect or dead, last seen, version,
    /// persona-set digest (flagged where it differs from the majority), and
    /// its domains with their personas.
    ClusterStatus,
    /// Write a new random gossip key (64 hex characters) to FILE, mode 0600;
    /// refuses to overwrite. To rotate: add the new key as a second line on
    /// every host and reload, move it first and reload, remove the old and reload.
    GossipKeygen {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Seed metric history from a CSV file (`-` = standard input) with the
    /// header `timestamp,domain,metric,value`: RFC 3339 or Unix seconds, a
    /// domain name or UUID (empty for host metrics). Any step from a minute
    /// to an hour. A bad line refuses the whole file, naming every bad line.
    HistoryImport {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Shift every timestamp by one amount so that the newest row ends
        /// now: a trace recorded elsewhere (or the shipped
        /// fixtures/history/test-host-14d.csv) as if it had just happened.
        #[arg(long)]
        retime: bool,
    },
}

/// Ends the process quietly by SIGPIPE when its reader goes away (`| head`),
/// as virsh and coreutils do. Rust's runtime ignores SIGPIPE, which turns the
/// next write to a closed pipe into a panic with a backtrace.
#[allow(unsafe_code)]
fn die_quietly_on_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: restores the default disposition of one signal at the start of
    // main, before any other thread exists; no handler code is installed.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn main() -> ExitCode {
    die_quietly_on_closed_pipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::PersonaValidate { files } => Ok(validate(files, cli.json)),
        Command::TagAdd { domain, tags } => edit_tags(&cli, domain, tags, true),
        Command::TagRemove { domain, tags } => edit_tags(&cli, domain, tags, false),
        Command::TagList { domain } => tag_list(&cli, domain.as_deref()),
        Command::List { all } => list(&cli, *all),
        Command::PersonaList => persona_list(&cli),
        Command::PersonaDump { persona } => persona_dump(&cli, persona),
        Command::PersonaDefine { file } => persona_define(&cli, file),
        Command::PersonaUndefine { persona } => {
            let v = client::request(
                &cli.socket,
                "DELETE",
                &format!("/v1/personas/{}", client::seg(persona)),
                None,
            )?;
            print_or(&cli, &v, || {
                println!(
                    "Persona '{persona}' undefined (removed {})",
                    text(&v["file"])
                )
            })
        }
        Command::PersonaApply {
            domain,
            persona,
            for_,
        } => {
            let mut body = json!({ "persona": persona });
            if let Some(d) = for_ {
                body["for"] = json!(d.to_string());
            }
            let v = post(
                &cli,
                &format!("/v1/domains/{}/activate", client::seg(domain)),
                &body,
            )?;
            print_or(&cli, &v, || {
                let until = for_
                    .map(|d| format!(" for {d}"))
                    .unwrap_or_else(|| " until reverted".into());
                println!(
                    "Domain '{}' wears persona '{}'{until}",
                    text(&v["name"]),
                    text(&v["persona"])
                )
            })
        }
        Command::PersonaRevert { domain } => {
            let v = post(
                &cli,
                &format!("/v1/domains/{}/revert", client::seg(domain)),
                &json!({}),
            )?;
            print_or(&cli, &v, || {
                println!(
                    "Domain '{}': manual activation ended; now wearing {}",
                    text(&v["name"]),
                    text(&v["persona"])
                )
            })
        }
        Command::PersonaStatus { domain } => persona_status(&cli, domain.as_deref()),
        Command::PersonaExplain { domain } => persona_explain(&cli, domain),
        Command::SignalSet {
            name,
            value,
            ttl,
            domain,
            cluster,
        } => {
            let mut body =
                json!({ "value": value, "scope": if *cluster { "cluster" } else { "host" } });
            if let Some(t) = ttl {
                body["ttl"] = json!(t.to_string());
            }
            if let Some(d) = domain {
                body["domain"] = json!(d);
            }
            let path = format!("/v1/signals/{}", client::seg(name));
            let raw = serde_json::to_vec(&body)?;
            let v = client::request(&cli.socket, "PUT", &path, Some(&raw))?;
            print_or(&cli, &v, || {
                println!("Signal '{name}' = {value} until {}", text(&v["expires"]))
            })
        }
        Command::SignalUnset { name, domain } => {
            let mut path = format!("/v1/signals/{}", client::seg(name));
            if let Some(d) = domain {
                path.push_str(&format!("?domain={}", client::seg(d)));
            }
            let v = client::request(&cli.socket, "DELETE", &path, None)?;
            print_or(&cli, &v, || {
                println!(
                    "Signal '{name}' removed{}",
                    if v["scope"] == "cluster" {
                        " on every host of the cluster"
                    } else {
                        ""
                    }
                )
            })
        }
        Command::SignalList => {
            let v = get(&cli, "/v1/signals")?;
            let items: Vec<&serde_json::Value> = v.as_array().into_iter().flatten().collect();
            let cols = [
                ("Name", "name"),
                ("Value", "value"),
                ("Domain", "domain"),
                ("Scope", "scope"),
                ("Expires", "expires"),
            ];
            let code = records(
                &cli,
                &items,
                &cols,
                &["name", "value", "domain", "scope", "expires"],
            )?;
            // the sources behind them (the JSON stays the signals: see source-list)
            if !cli.json {
                let v = get(&cli, "/v1/sources")?;
                if v.as_array().is_some_and(|a| !a.is_empty()) {
                    println!("\nSources:");
                    print_sources(&cli, &v)?;
                }
            }
            Ok(code)
        }
        Command::SourceList => {
            let v = get(&cli, "/v1/sources")?;
            print_sources(&cli, &v)
        }
        Command::Event { follow } => events(&cli, *follow),
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "virt-persona",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::PersonaHistory { domain, since } => history(&cli, domain, *since),
        Command::Forecast {
            domain,
            metric,
            horizon,
        } => forecast(&cli, domain, metric, *horizon),
        Command::HistoryImport { file, retime } => history_import(&cli, file, *retime),
        Command::ClusterStatus => cluster_status(&cli),
        Command::GossipKeygen { file } => gossip_keygen(file),
    }
}

fn validate(files: &[PathBuf], as_json: bool) -> ExitCode {
    // per file: the persona's id and its notes, or its errors
    type Checked = Result<(String, Vec<String>), Vec<FileError>>;
    let mut results: Vec<(PathBuf, Checked)> = Vec::new();
    let mut seen: Vec<(String, PathBuf)> = Vec::new();
    for f in files {
        let r = match load_file(f) {
            Ok(p) => match seen.iter().find(|(id, _)| *id == p.id) {
                Some((_, other)) => Err(vec![FileError {
                    file: f.clone(),
                    line: 1,
                    col: 1,
                    rule: Rule::DuplicateId {
                        id: p.id.clone(),
                        other: other.display().to_string(),
                    },
                }]),
                None => {
                    seen.push((p.id.clone(), f.clone()));
                    Ok((p.id.clone(), p.tuning.cgroup_notes()))
                }
            },
            Err(e) => Err(e),
        };
        results.push((f.clone(), r));
    }
    let failed = results.iter().any(|(_, r)| r.is_err());
    if as_json {
        let out: Vec<_> = results
            .iter()
            .map(|(f, r)| match r {
                Ok((id, notes)) => json!({"file": f, "ok": true, "id": id, "errors": [], "notes": notes}),
                Err(errs) => json!({
                    "file": f, "ok": false, "id": null,
                    "errors": errs.iter().map(|e| json!({"line": e.line, "col": e.col, "message": e.rule.to_string()})).collect::<Vec<_>>(),
                }),
            })
            .collect();
        let _ = print_json(&out);
    } else {
        for (f, r) in &results {
            match r {
                Ok((id, notes)) => {
                    println!("{}: ok (persona '{id}')", f.display());
                    for n in notes {
                        println!("{}: note: {n}", f.display());
                    }
                }
                Err(errs) => {
                    for e in errs {
                        println!("{e}");
                    }
                }
            }
        }
        let nerr: usize = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().err())
            .map(Vec::len)
            .sum();
        if failed {
            eprintln!(
                "error: {nerr} error(s) in {} of {} file(s)",
                results.iter().filter(|(_, r)| r.is_err()).count(),
                results.len()
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn connect(cli: &Cli) -> anyhow::Result<LibvirtHypervisor> {
    LibvirtHypervisor::connect(&cli.connect).context("libvirt")
}

fn edit_tags(cli: &Cli, domain: &str, tags: &[String], add: bool) -> anyhow::Result<ExitCode> {
    for t in tags {
        if !valid_name(t) {
            anyhow::bail!("invalid tag '{t}': expected characters a-z, 0-9, '.', '_' and '-'");
        }
    }
    let hv = connect(cli)?;
    let info = hv.domain(domain)?;
    let mut now = info.tags.clone();
    if add {
        for t in tags {
            if !now.contains(t) {
                now.push(t.clone());
            }
        }
    } else {
        now.retain(|t| !tags.contains(t));
    }
    hv.set_tags(&info.name, &now)?;
    if cli.json {
        println!("{}", json!({"domain": info.name, "tags": now}));
    } else {
        println!(
            "Domain '{}' tags: {}",
            info.name,
            if now.is_empty() {
                "(none)".to_string()
            } else {
                now.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn tag_list(cli: &Cli, domain: Option<&str>) -> anyhow::Result<ExitCode> {
    let hv = connect(cli)?;
    let doms = match domain {
        Some(d) => vec![hv.domain(d)?],
        None => hv.list_domains()?,
    };
    if cli.json {
        let v: Vec<_> = doms
            .iter()
            .map(|d| json!({"name": d.name, "tags": d.tags}))
            .collect();
        print_json(&v)?;
    } else {
        let rows: Vec<Vec<String>> = doms
            .iter()
            .map(|d| vec![d.name.clone(), d.tags.join(", ")])
            .collect();
        print!("{}", table(&["Name", "Tags"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

fn get(cli: &Cli, path: &str) -> anyhow::Result<serde_json::Value> {
    Ok(client::request(&cli.socket, "GET", path, None)?)
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn post(cli: &Cli, path: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let raw = serde_json::to_vec(body)?;
    Ok(client::request(&cli.socket, "POST", path, Some(&raw))?)
}

/// Prints JSON with --json, or runs the human printer.
fn print_or(cli: &Cli, v: &serde_json::Value, human: impl FnOnce()) -> anyhow::Result<ExitCode> {
    if cli.json {
        print_json(v)?;
    } else {
        human();
    }
    Ok(ExitCode::SUCCESS)
}

fn persona_dump(cli: &Cli, id: &str) -> anyhow::Result<ExitCode> {
    let v = get(cli, &format!("/v1/personas/{}", client::seg(id)))?;
    print_or(cli, &v, || {
        print!("{}", v["toml"].as_str().unwrap_or_default());
        if let Some(e) = v["error"].as_str() {
            eprintln!("note: the file has errors; this is the last good version in force: {e}");
        }
    })
}

fn persona_define(cli: &Cli, file: &std::path::Path) -> anyhow::Result<ExitCode> {
    // check offline first: errors point into the admin's own file
    let p = match load_file(file) {
        Ok(p) => p,
        Err(errs) => {
            for e in &errs {
                eprintln!("{e}");
            }
            anyhow::bail!(
                "{} has {} error(s); nothing was defined",
                file.display(),
                errs.len()
            );
        }
    };
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let v = client::request_with_type(
        &cli.socket,
        "PUT",
        &format!("/v1/personas/{}", client::seg(&p.id)),
        &body,
        "application/toml",
    )?;
    print_or(cli, &v, || {
        println!("Persona '{}' defined in {}", p.id, text(&v["file"]))
    })
}

fn persona_status(cli: &Cli, domain: Option<&str>) -> anyhow::Result<ExitCode> {
    let doms: Vec<serde_json::Value> = match domain {
        Some(d) => vec![get(cli, &format!("/v1/domains/{}", client::seg(d)))?],
        None => get(cli, "/v1/domains")?
            .as_array()
            .cloned()
            .unwrap_or_default(),
    };
    if cli.json {
        print_json(&doms)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (i, d) in doms.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("{:<15} {}", "Domain:", text(&d["name"]));
        println!("{:<15} {}", "State:", text(&d["state"]));
        println!(
            "{:<15} {}{}",
            "Persona:",
            d["persona"].as_str().unwrap_or("(baseline)"),
            if d["would"] == true {
                " (would wear it: the daemon only observes, nothing was applied)"
            } else {
                ""
            }
        );
        if d["persona"].is_string() {
            println!("{:<15} {}", "Since:", text(&d["since"]));
            println!("{:<15} {}", "Reason:", text(&d["reason"]));
        }
        if let Some(o) = d["override"].as_object() {
            let until = o
                .get("until")
                .and_then(|u| u.as_i64())
                .map(virt_persona::time::rfc3339)
                .unwrap_or_else(|| "reverted".into());
            println!("{:<15} {} (until {until})", "Manual:", text(&o["persona"]));
        }
        if let Some(w) = d["cpu_weight"].as_str() {
            println!("{:<15} cpu_weight {w}", "CPU weight:");
        }
        if let Some(e) = d["last_error"].as_str() {
            println!("{:<15} {e}", "Last error:");
        }
        if let Some(e) = d["needs_attention"].as_str() {
            println!("{:<15} {e}", "Attention:");
        }
        if let Some(e) = d["quarantined"].as_str() {
            println!("{:<15} {e}", "Quarantined:");
        }
        for k in d["skipped"].as_array().into_iter().flatten() {
            println!(
                "{:<15} {} skipped: {}",
                "Degraded:",
                text(&k["knob"]),
                text(&k["reason"])
            );
        }
        for (p, why) in d["refused"].as_object().into_iter().flatten() {
            println!("{:<15} {p} is not worn here: {}", "Refused:", text(why));
        }
        if let Ok(t) = get(
            cli,
            &format!(
                "/v1/domains/{}/tuning",
                client::seg(d["name"].as_str().unwrap_or_default())
            ),
        ) {
            print_tuning(&t);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Tuned values in virsh's units (KiB, µs, KiB/s).
fn print_tuning(t: &serde_json::Value) {
    let line = |k: &str, v: String| println!("  {k:<24}{v}");
    // the per-device rows: one line per device (vcpupin 0: 0-3)
    for row in virt_persona::model::tuning::DEVICE_ROWS {
        for (device, v) in t[row.key].as_object().into_iter().flatten() {
            line(&format!("{} {device}:", row.label), text(v));
        }
    }
    // the knob table's rows, labelled as virsh names them
    for row in virt_persona::model::tuning::ROWS {
        let v = &t[row.key];
        if !v.is_null() {
            let shown = if row.input == virt_persona::model::knobs::Input::Memory
                && v.as_u64() == Some(virt_persona::model::tuning::MEMORY_UNLIMITED_KIB)
            {
                "unlimited".to_string()
            } else {
                text(v)
            };
            line(&format!("{}:", row.label), shown);
        }
    }
    // per device as virsh blkiotune prints them: device_read_iops_sec: /dev/sda,2000
    if let Some(devs) = t["blkio_devices"].as_object() {
        for (path, d) in devs {
            for (key, param) in [
                ("weight", "device_weight"),
                ("read_iops", "device_read_iops_sec"),
                ("write_iops", "device_write_iops_sec"),
                ("read_bytes_per_sec", "device_read_bytes_sec"),
                ("write_bytes_per_sec", "device_write_bytes_sec"),
            ] {
                if let Some(v) = d[key].as_u64() {
                    line(&format!("{param}:"), format!("{path},{v}"));
                }
            }
        }
    }
    // as virsh blkdeviotune prints them: bytes and operations per second
    if let Some(disks) = t["disks"].as_object() {
        for (dev, d) in disks {
            println!("  blkdeviotune {dev}:");
            for (k, v) in d["limits"].as_object().into_iter().flatten() {
                line(&format!("  {k}:"), text(v));
            }
            if let Some(g) = d["group"].as_str() {
                line("  group_name:", g.to_string());
            }
        }
    }
    // as virsh domiftune prints them: inbound.average in KiB/s, burst in KiB
    if let Some(ifs) = t["interfaces"].as_object() {
        for (dev, b) in ifs {
            println!("  domiftune {dev}:");
            for dir in ["inbound", "outbound"] {
                let bw = &b[dir];
                if bw.is_null() {
                    continue;
                }
                for f in ["average", "peak", "burst"] {
                    line(&format!("  {dir}.{f}:"), text(&bw[f]));
                }
            }
        }
    }
}

fn persona_explain(cli: &Cli, domain: &str) -> anyhow::Result<ExitCode> {
    let v = get(cli, &format!("/v1/domains/{}/explain", client::seg(domain)))?;
    print_or(cli, &v, || {
        println!(
            "Domain {}: {} ({})",
            text(&v["domain"]),
            v["persona"].as_str().unwrap_or("baseline"),
            text(&v["reason"])
        );
        let cands = v["candidates"].as_array().cloned().unwrap_or_default();
        if cands.is_empty() {
            println!("  no persona matches this domain");
        }
        for c in cands {
            let verdict = if let Some(why) = c["refused"].as_str() {
                format!("refused: {why}")
            } else if c["holds"] == true {
                format!("holds ({})", text(&c["reason"]))
            } else {
                "does not hold".into()
            };
            println!(
                "  {} (priority {}): {verdict}",
                text(&c["persona"]),
                text(&c["priority"])
            );
            if let Some(s) = c["schedule_ok"].as_bool() {
                println!(
                    "    schedule: {}",
                    if s {
                        "inside a window"
                    } else {
                        "outside every window"
                    }
                );
            }
            for k in c["conditions"].as_array().into_iter().flatten() {
                let mark = if k["result"] == true { "yes" } else { "no " };
                let value = k["value"]
                    .as_f64()
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "-".into());
                let note = k["note"]
                    .as_str()
                    .map(|n| format!("  ({n})"))
                    .unwrap_or_default();
                let label = match k["value_is"].as_str() {
                    Some("forecast_max") => "forecast peak",
                    Some("forecast_min") => "forecast low",
                    _ => "now",
                };
                println!(
                    "    [{mark}] {}: {label} {value}{note}",
                    text(&k["condition"])
                );
            }
        }
        for k in v["skipped"].as_array().into_iter().flatten() {
            println!(
                "  degraded: {} skipped: {}",
                text(&k["knob"]),
                text(&k["reason"])
            );
        }
        for p in v["not_matching"].as_array().into_iter().flatten() {
            println!(
                "  {} (priority {}): does not match: {}",
                text(&p["persona"]),
                text(&p["priority"]),
                text(&p["why"])
            );
        }
    })
}

fn events(cli: &Cli, follow: bool) -> anyhow::Result<ExitCode> {
    if !follow {
        let v = get(cli, "/v1/events/recent")?;
        return print_or(cli, &v, || {
            for e in v.as_array().into_iter().flatten() {
                print_event(e);
            }
        });
    }
    client::stream(&cli.socket, "/v1/events", |e| {
        if cli.json {
            println!("{e}");
        } else {
            print_event(&e);
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn print_event(e: &serde_json::Value) {
    let mut s = format!(
        "{} {} {} -> {} ({}): {}",
        text(&e["time"]),
        text(&e["domain"]),
        text(&e["from"]),
        text(&e["to"]),
        text(&e["reason"]),
        text(&e["result"])
    );
    if let Some(err) = e["error"].as_str() {
        s.push_str(&format!(": {err}"));
    }
    println!("{s}");
}

/// Prints records as a virsh-style table (`columns`: header and key), or with
/// --json as objects of the keys scripts rely on.
/// The signal sources as a table: a failing one says since when and why.
fn print_sources(cli: &Cli, v: &serde_json::Value) -> anyhow::Result<ExitCode> {
    let mut items: Vec<serde_json::Value> = v.as_array().cloned().unwrap_or_default();
    for it in items.iter_mut() {
        it["state"] = if it["up"] == true {
            "ok".into()
        } else if it["polls"] == 0 {
            "starting".into()
        } else {
            "failing".into()
        };
        if let Some(u) = it["unmatched"].as_array().filter(|a| !a.is_empty()) {
            let names: Vec<&str> = u.iter().filter_map(|d| d.as_str()).collect();
            it["note"] = format!("not on this host: {}", names.join(", ")).into();
        } else if it["up"] != true {
            it["note"] = it["last_error"].clone();
        }
    }
    let refs: Vec<&serde_json::Value> = items.iter().collect();
    records(
        cli,
        &refs,
        &[
            ("Signal", "signal"),
            ("State", "state"),
            ("Kind", "kind"),
            ("URL", "url"),
            ("Last success", "last_success"),
            ("Failures", "failures"),
            ("Last error", "note"),
        ],
        &[
            "signal",
            "kind",
            "url",
            "up",
            "polls",
            "failures",
            "last_success",
            "last_error",
            "last_error_at",
            "values",
            "value",
            "unmatched",
            "interval_ms",
            "took_ms",
        ],
    )
}

fn records(
    cli: &Cli,
    items: &[&serde_json::Value],
    columns: &[(&str, &str)],
    json_keys: &[&str],
) -> anyhow::Result<ExitCode> {
    if cli.json {
        let out: Vec<serde_json::Value> = items
            .iter()
            .map(|it| {
                json_keys
                    .iter()
                    .map(|k| (k.to_string(), it[*k].clone()))
                    .collect::<serde_json::Map<_, _>>()
                    .into()
            })
            .collect();
        print_json(&out)?;
    } else {
        let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|it| columns.iter().map(|(_, k)| text(&it[*k])).collect())
            .collect();
        print!("{}", table(&headers, &rows));
    }
    Ok(ExitCode::SUCCESS)
}

fn list(cli: &Cli, all: bool) -> anyhow::Result<ExitCode> {
    let v = get(cli, "/v1/domains")?;
    let mut doms: Vec<serde_json::Value> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| all || d["state"] != "shut off")
        .cloned()
        .collect();
    if !cli.json {
        // a domain a rollback could not put back is marked where admins look first
        for d in doms.iter_mut() {
            let worn = d["persona"].as_str().unwrap_or("-").to_string();
            if d["quarantined"].is_string() {
                d["persona"] = format!("{worn} (quarantined)").into();
            } else if d["needs_attention"].is_string() {
                d["persona"] = format!("{worn} (needs attention)").into();
            } else if d["would"] == true {
                // observe mode: what it would wear, nothing applied
                d["persona"] = format!("{worn} (would)").into();
            }
            // a manual activation says when it ends
            if d["reason"] == "manual" {
                if let Some(until) = d["override"]["until"].as_i64() {
                    d["reason"] =
                        format!("manual until {}", virt_persona::time::rfc3339(until)).into();
                }
            }
        }
    }
    let doms: Vec<&serde_json::Value> = doms.iter().collect();
    records(
        cli,
        &doms,
        &[
            ("Id", "id"),
            ("Name", "name"),
            ("State", "state"),
            ("Persona", "persona"),
            ("Reason", "reason"),
            ("Since", "since"),
        ],
        &[
            "id",
            "name",
            "uuid",
            "state",
            "persona",
            "reason",
            "since",
            "needs_attention",
            "would",
        ],
    )
}

fn persona_list(cli: &Cli) -> anyhow::Result<ExitCode> {
    let v = get(cli, "/v1/personas")?;
    let mut rows: Vec<serde_json::Value> = v.as_array().cloned().unwrap_or_default();
    let is_degraded =
        |p: &serde_json::Value| p["degraded"].as_array().is_some_and(|d| !d.is_empty());
    if !cli.json {
        for p in rows
            .iter_mut()
            .filter(|p| p["status"] == "ok" && is_degraded(p))
        {
            p["status"] = "degraded".into();
        }
    }
    let items: Vec<&serde_json::Value> = rows.iter().collect();
    records(
        cli,
        &items,
        &[
            ("Id", "id"),
            ("Name", "name"),
            ("Priority", "priority"),
            ("Status", "status"),
            ("File", "file"),
        ],
        &["id", "name", "priority", "status", "file", "error"],
    )?;
    if !cli.json {
        for e in items.iter().filter_map(|p| p["error"].as_str()) {
            eprintln!("{e}");
        }
        let notes: Vec<String> = items
            .iter()
            .flat_map(|p| {
                p["degraded"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |d| degraded_line(&text(&p["id"]), d))
            })
            .collect();
        if !notes.is_empty() {
            println!();
            println!("Degraded on this host:");
            for n in notes {
                println!("  {n}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of what a persona cannot do on one domain.
fn degraded_line(persona: &str, d: &serde_json::Value) -> String {
    if d["refused"] == true {
        format!(
            "{persona} on {}: not worn: {}",
            text(&d["domain"]),
            text(&d["reason"])
        )
    } else {
        format!(
            "{persona} on {}: {} skipped: {}",
            text(&d["domain"]),
            text(&d["knob"]),
            text(&d["reason"])
        )
    }
}

fn history(
    cli: &Cli,
    domain: &str,
    since: Option<virt_persona::units::Duration>,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/domains/{}/history", client::seg(domain));
    if let Some(d) = since {
        let back = i64::try_from(d.as_std().as_millis()).unwrap_or(i64::MAX);
        let since_ms = virt_persona::time::now_ms().saturating_sub(back);
        path.push_str(&format!("?since={}", since_ms.max(0) / 1000));
    }
    let v = get(cli, &path)?;
    let items = v.as_array().cloned().unwrap_or_default();
    if cli.json {
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let changes = e["changes"].as_array().map(|c| c.len()).unwrap_or(0);
            let mut result = text(&e["result"]);
            if let Some(err) = e["error"].as_str() {
                result = format!("{result}: {err}");
            }
            vec![
                text(&e["time"]),
                text(&e["from"]),
                text(&e["to"]),
                text(&e["reason"]),
                changes.to_string(),
                result,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["Time", "From", "To", "Reason", "Changes", "Result"],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// A table shaped like virsh's: header, dashed rule, left-aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    // escaped first: the columns line up on what is shown
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 3));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    let total: usize = widths.iter().sum::<usize>() + 3 * widths.len().saturating_sub(1) + 2;
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn history_import(cli: &Cli, file: &std::path::Path, retime: bool) -> anyhow::Result<ExitCode> {
    let body = if file.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
            .context("reading standard input")?;
        b
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
    };
    let path = if retime {
        "/v1/history/import?retime=now"
    } else {
        "/v1/history/import"
    };
    let v = client::request_with_type(&cli.socket, "POST", path, &body, "text/csv")?;
    print_or(cli, &v, || {
        if let Some(ms) = v["retimed_by_ms"].as_i64() {
            let days = ms as f64 / 86_400_000.0;
            println!("Re-timed by {days:+.2} days: the newest row now ends at the daemon's now");
        }
        println!(
            "Imported {} point(s) into {} series{}; {}",
            text(&v["imported"]),
            text(&v["series"]),
            match v["skipped_outside_retention"].as_u64() {
                Some(n) if n > 0 =>
                    format!(" ({n} outside the history retention or in the future skipped)"),
                _ => String::new(),
            },
            match v["refitted"].as_u64() {
                Some(0) | None => "no forecast condition uses them yet".to_string(),
                Some(1) => "1 forecast fitted again from them".to_string(),
                Some(n) => format!("{n} forecasts fitted again from them"),
            }
        )
    })
}

/// Milliseconds since the epoch of an RFC 3339 time in a reply.
fn ms_of(v: &serde_json::Value) -> Option<i64> {
    v.as_str()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn forecast(
    cli: &Cli,
    domain: &str,
    metric: &str,
    horizon: Option<virt_persona::units::Duration>,
) -> anyhow::Result<ExitCode> {
    let mut path = format!(
        "/v1/forecast/{}/{}",
        client::seg(domain),
        client::seg(metric)
    );
    if let Some(h) = horizon {
        path.push_str(&format!("?horizon={}", client::seg(&h.to_string())));
    }
    let v = get(cli, &path)?;
    print_or(cli, &v, || print_forecast(&v))
}

fn print_forecast(v: &serde_json::Value) {
    use textplots::{Chart, ColorPlot, Plot, Shape};
    let Some(now) = ms_of(&v["now"]) else {
        println!("{v}");
        return;
    };
    let hours = |t: i64| ((t - now) as f64 / 3_600_000.0) as f32;
    let pts = |arr: &serde_json::Value, key: &str| -> Vec<(f32, f32)> {
        arr.as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((hours(ms_of(&p["t"])?), p[key].as_f64()? as f32)))
            .collect()
    };
    let history = pts(&v["history"], "value");
    let value = pts(&v["points"], "value");
    let lower = pts(&v["points"], "lower");
    let upper = pts(&v["points"], "upper");
    let thresholds: Vec<(String, f32)> = v["thresholds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let x = t["above"].as_f64().or(t["below"].as_f64())?;
            Some((text(&t["persona"]), x as f32))
        })
        .collect();
    let all_y = history
        .iter()
        .chain(&value)
        .chain(&lower)
        .chain(&upper)
        .map(|p| p.1)
        .chain(thresholds.iter().map(|t| t.1));
    let (ymin, ymax) = all_y.fold((f32::MAX, f32::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let (ymin, ymax) = if ymin > ymax {
        (0.0, 1.0)
    } else {
        (ymin.min(0.0), ymax * 1.05 + 0.01)
    };
    let xmin = history.first().map(|p| p.0).unwrap_or(-1.0).min(-1.0);
    let xmax = value.last().map(|p| p.0).unwrap_or(1.0).max(1.0);
    println!(
        "{} {} — forecast {} ahead, fitted {} on {:.1} days of history ({}{})",
        text(&v["domain"]),
        text(&v["metric"]),
        text(&v["horizon"]),
        text(&v["fitted_at"]),
        v["history_days"].as_f64().unwrap_or(0.0),
        v["seasons"]
            .as_array()
            .map(|s| s.iter().map(text).collect::<Vec<_>>().join(" + ") + " season")
            .unwrap_or_default(),
        v["timezone"]
            .as_str()
            .map(|z| format!(", days on the {z} clock"))
            .unwrap_or_default()
    );
    let now_line = [(0.0, ymin), (0.0, ymax)];
    let threshold_lines: Vec<[(f32, f32); 2]> = thresholds
        .iter()
        .map(|t| [(xmin, t.1), (xmax, t.1)])
        .collect();
    let shapes_hist = Shape::Lines(&history);
    let shapes_value = Shape::Lines(&value);
    let shapes_lower = Shape::Points(&lower);
    let shapes_upper = Shape::Points(&upper);
    let shape_now = Shape::Lines(&now_line);
    let threshold_shapes: Vec<Shape> = threshold_lines.iter().map(|l| Shape::Lines(l)).collect();
    let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut chart = Chart::new_with_y_range(160, 48, xmin, xmax, ymin, ymax);
    let mut c = &mut chart;
    if color {
        use rgb::RGB8;
        c = c.linecolorplot(&shapes_hist, RGB8::new(120, 170, 255));
        c = c.linecolorplot(&shapes_value, RGB8::new(80, 220, 120));
        c = c.linecolorplot(&shapes_lower, RGB8::new(60, 140, 80));
        c = c.linecolorplot(&shapes_upper, RGB8::new(60, 140, 80));
        for t in &threshold_shapes {
            c = c.linecolorplot(t, RGB8::new(255, 90, 90));
        }
        c = c.linecolorplot(&shape_now, RGB8::new(200, 200, 200));
    } else {
        c = c
            .lineplot(&shapes_hist)
            .lineplot(&shapes_value)
            .lineplot(&shapes_lower)
            .lineplot(&shapes_upper);
        for t in &threshold_shapes {
            c = c.lineplot(t);
        }
        c = c.lineplot(&shape_now);
    }
    c.nice();
    println!(
        "x: hours from now (the vertical line at 0); left of it the history{}, right of it the forecast and its 95 % interval (dots){}",
        if color { " (blue)" } else { "" },
        if thresholds.is_empty() {
            String::new()
        } else {
            format!(
                "; horizontal: {}",
                thresholds
                    .iter()
                    .map(|(p, x)| format!("{x} ({p})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    if let Some(blend) = v["backtest"]["blend"].as_array() {
        let parts: Vec<String> = blend
            .iter()
            .map(|b| {
                format!(
                    "{} {:.0} %",
                    b["model"].as_str().unwrap_or("?"),
                    100.0 * b["weight"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        println!("Model: {} (chosen by backtest)", parts.join(", "));
        if let Some(r) = v["backtest"]["rel_mae"].as_f64() {
            println!(
                "Backtest from {} origins (every 6 h over the last days): error {:.2}× that of \"same time yesterday\"",
                v["backtest"]["origins"], r
            );
        }
    }
    match v["accuracy"].as_object() {
        Some(a) => println!(
            "Accuracy of the forecast for {}: MAPE {:.1} %, {:.0} % of actual values inside the interval",
            text(&a["day"]),
            a["mape"].as_f64().unwrap_or(f64::NAN),
            a["coverage"].as_f64().unwrap_or(f64::NAN)
        ),
        None => println!("Accuracy: not known yet (needs three days of history)"),
    }
    let r = &v["record"];
    match r["days"].as_u64() {
        Some(days) if days > 0 => {
            let pct = |x: &serde_json::Value| {
                x.as_f64()
                    .map_or("–".to_string(), |x| format!("{x:.0} %"))
            };
            println!(
                "Record of the forecasts issued over the last {days} day(s) (since {}): error {} that of \"same time yesterday\" (better on {}/{days} days), {} of actual values inside the 95 % band, band width {} the mean value; peaks above {} seen ahead {}/{}, false alarms on {}/{} quiet days",
                text(&r["since"]),
                r["rel_mae"]
                    .as_f64()
                    .map_or("–".to_string(), |x| format!("{x:.2}×")),
                text(&r["better_days"]),
                pct(&r["coverage"]),
                r["width"]
                    .as_f64()
                    .map_or("–".to_string(), |x| format!("{x:.2}×")),
                r["peak_at"]
                    .as_f64()
                    .map_or("the threshold".to_string(), |x| format!("{x:.4}")
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                        .to_string()),
                text(&r["peaks_seen"]),
                text(&r["peaks"]),
                text(&r["false_alarms"]),
                text(&r["quiet_days"]),
            );
        }
        _ => println!(
            "Record: none yet (each day's first forecast is kept as issued and judged once its day has passed)"
        ),
    }
    if v["stale"] == true {
        println!("warning: this fit is out of date and is not used");
    }
    let rows: Vec<Vec<String>> = v["points"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                text(&p["t"]),
                format!("{:.2}", p["value"].as_f64().unwrap_or(f64::NAN)),
                format!(
                    "{:.2} – {:.2}",
                    p["lower"].as_f64().unwrap_or(f64::NAN),
                    p["upper"].as_f64().unwrap_or(f64::NAN)
                ),
            ]
        })
        .collect();
    print!("{}", table(&["Time", "Forecast", "95 % interval"], &rows));
}

fn gossip_keygen(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key: [u8; 32] = rand::random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| {
            format!(
                "writing {} (an existing key file is never overwritten)",
                file.display()
            )
        })?;
    writeln!(f, "{}", virt_persona::cluster::seal::key_line(&key))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", file.display()))?;
    println!(
        "New gossip key written to {} (mode 0600). Copy it to every host (gossip.key_file) and keep it secret.",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn cluster_status(cli: &Cli) -> anyhow::Result<ExitCode> {
    let v = get(cli, "/v1/cluster")?;
    print_or(cli, &v, || {
        let hosts = v["hosts"].as_array().cloned().unwrap_or_default();
        let rows: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                let mut name = text(&h["name"]);
                if h["me"] == true {
                    name.push_str(" (this host)");
                }
                let mut digest = text(&h["digest"]);
                if h["digest_differs"] == true {
                    digest.push_str(" DIFFERS");
                }
                let domains = h["domains"].as_array().cloned().unwrap_or_default();
                let worn = domains.iter().filter(|d| d["persona"].is_string()).count();
                // how far its clock is ahead of this host's
                let clock = match h["clock_ahead_ms"].as_i64() {
                    _ if h["me"] == true => "-".to_string(),
                    Some(ms) => format!("{:+.1} s", ms as f64 / 1000.0),
                    None => "?".to_string(),
                };
                vec![
                    name,
                    text(&h["state"]),
                    text(&h["last_seen"]),
                    clock,
                    text(&h["version"]),
                    digest,
                    format!("{} ({worn} with a persona)", domains.len()),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "Host",
                    "State",
                    "Last seen",
                    "Clock",
                    "Version",
                    "Persona set",
                    "Domains"
                ],
                &rows
            )
        );
        for h in &hosts {
            let domains = h["domains"].as_array().cloned().unwrap_or_default();
            if domains.is_empty() {
                continue;
            }
            println!("\n{}:", text(&h["name"]));
            for d in domains {
                println!(
                    "  {:<24} {}",
                    text(&d["name"]),
                    d["persona"].as_str().unwrap_or("-")
                );
            }
        }
        if hosts.iter().any(|h| h["digest_differs"] == true) {
            println!("\nwarning: hosts marked DIFFERS run another persona set than most hosts");
        }
        if let Some(lead) = v["cluster_time_lead_ms"].as_i64().filter(|l| *l >= 1000) {
            println!(
                "\nCluster time (which orders and ends cluster signals) runs {:.1} s ahead of this host's clock: the furthest-ahead clock in the cluster leads; run NTP on every host",
                lead as f64 / 1000.0
            );
        }
    })
}
