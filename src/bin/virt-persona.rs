//! virt-persona: the admin CLI, virsh-style. Prints the error chain once, as
//! `error: …`, and exits 1 on any failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;

use virt_persona::api::client;
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
    /// The daemon's API socket.
    #[arg(
        long,
        value_name = "PATH",
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
    /// Domains with the persona each wears (through the daemon).
    List {
        /// Also show domains that are not running.
        #[arg(long)]
        all: bool,
    },
    /// Personas with their priority, load status and file (through the daemon).
    PersonaList,
    /// Transitions of a domain (through the daemon).
    PersonaHistory {
        domain: String,
        /// Only events newer than this, e.g. 1h, 30m.
        #[arg(long, value_name = "DUR")]
        since: Option<virt_persona::units::Duration>,
    },
}

fn main() -> ExitCode {
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
        Command::PersonaHistory { domain, since } => history(&cli, domain, *since),
    }
}

fn validate(files: &[PathBuf], as_json: bool) -> ExitCode {
    let mut results: Vec<(PathBuf, Result<String, Vec<FileError>>)> = Vec::new();
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
                    Ok(p.id)
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
                Ok(id) => json!({"file": f, "ok": true, "id": id, "errors": []}),
                Err(errs) => json!({
                    "file": f, "ok": false, "id": null,
                    "errors": errs.iter().map(|e| json!({"line": e.line, "col": e.col, "message": e.rule.to_string()})).collect::<Vec<_>>(),
                }),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        for (f, r) in &results {
            match r {
                Ok(id) => println!("{}: ok (persona '{id}')", f.display()),
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
        println!("{}", serde_json::to_string_pretty(&v)?);
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

fn list(cli: &Cli, all: bool) -> anyhow::Result<ExitCode> {
    let v = get(cli, "/v1/domains")?;
    let doms: Vec<&serde_json::Value> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| all || d["state"] != "shut off")
                .collect()
        })
        .unwrap_or_default();
    if cli.json {
        let out: Vec<_> = doms
            .iter()
            .map(|d| json!({"id": d["id"], "name": d["name"], "uuid": d["uuid"], "state": d["state"], "persona": d["persona"], "since": d["since"]}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = doms
        .iter()
        .map(|d| {
            vec![
                text(&d["id"]),
                text(&d["name"]),
                text(&d["state"]),
                text(&d["persona"]),
                text(&d["since"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["Id", "Name", "State", "Persona", "Since"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}

fn persona_list(cli: &Cli) -> anyhow::Result<ExitCode> {
    let v = get(cli, "/v1/personas")?;
    let items = v.as_array().cloned().unwrap_or_default();
    if cli.json {
        let out: Vec<_> = items
            .iter()
            .map(|p| json!({"id": p["id"], "name": p["name"], "priority": p["priority"], "status": p["status"], "file": p["file"], "error": p["error"]}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            vec![
                text(&p["id"]),
                text(&p["name"]),
                text(&p["priority"]),
                text(&p["status"]),
                text(&p["file"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["Id", "Name", "Priority", "Status", "File"], &rows)
    );
    for p in &items {
        if let Some(e) = p["error"].as_str() {
            eprintln!("{e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn history(
    cli: &Cli,
    domain: &str,
    since: Option<virt_persona::units::Duration>,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/domains/{}/history", client::seg(domain));
    if let Some(d) = since {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        path.push_str(&format!(
            "?since={}",
            now.saturating_sub(d.as_std().as_secs())
        ));
    }
    let v = get(cli, &path)?;
    let items = v.as_array().cloned().unwrap_or_default();
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
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
