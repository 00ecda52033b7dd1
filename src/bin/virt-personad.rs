//! virt-personad: the host daemon. Wiring only: flags and config, the libvirt
//! connection, signals, and the loop that runs every interval.

use std::path::PathBuf;
use std::time::Duration as StdDuration;

use anyhow::Context;
use clap::Parser;
use crossbeam_channel::{select, tick};
use tracing::{info, warn};

use std::sync::Arc;
use virt_persona::config::{Config, FileConfig, Overrides, DEFAULT_CONFIG};
use virt_persona::hypervisor::libvirt::LibvirtHypervisor;

use serde_json::json;
use virt_persona::api::command::{Command, Envelope, Reply};
use virt_persona::api::{rfc3339, server};
use virt_persona::hypervisor::{Hypervisor, HypervisorEvent};
use virt_persona::metrics::Metrics;
use virt_persona::model::loader::Catalog;
use virt_persona::model::validate::parse_persona;
use virt_persona::reconciler::{DomainStatus, ManualError, Reconciler};
use virt_persona::rules::Signal;
use virt_persona::store::{RedbStore, StateStore};
use virt_persona::units::Duration;

/// virt-persona host daemon: gives every libvirt domain the tuning persona its load calls for.
///
/// Runs against libvirt's test driver with no KVM:
///   virt-personad -c test:///default --personas personas/ --state-dir /tmp/vp --socket /tmp/vp/api.sock
#[derive(Parser, Debug)]
#[command(name = "virt-personad", version, about, long_about = None)]
struct Args {
    /// Daemon config file (TOML); a missing file at the default path is fine.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// libvirt connection URI [default: qemu:///system].
    #[arg(short = 'c', long = "connect", value_name = "URI")]
    connect: Option<String>,
    /// Directory of persona files [default: /etc/virt-persona/personas.d].
    #[arg(long, value_name = "DIR")]
    personas: Option<PathBuf>,
    /// Durable state directory [default: /var/lib/virt-persona].
    #[arg(long = "state-dir", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// API unix socket [default: /run/virt-persona/api.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Control-loop interval, e.g. 5s [default: 5s].
    #[arg(long, value_name = "DUR")]
    interval: Option<Duration>,
    /// How often worn personas are checked for drift [default: 30s].
    #[arg(long = "verify-interval", value_name = "DUR")]
    verify_interval: Option<Duration>,
    /// Restore every domain's baseline when the daemon stops.
    #[arg(long = "revert-on-exit")]
    revert_on_exit: bool,
    /// This host's name in the cluster [default: the host name].
    #[arg(long = "node-name", value_name = "NAME")]
    node_name: Option<String>,
    /// Gossip listen address.
    #[arg(long = "gossip-listen", value_name = "ADDR:PORT")]
    gossip_listen: Option<String>,
    /// Gossip seed (repeatable).
    #[arg(long = "gossip-seed", value_name = "ADDR:PORT")]
    gossip_seed: Vec<String>,
    /// Gossip shared key file (64 hex characters).
    #[arg(long = "gossip-key-file", value_name = "FILE")]
    gossip_key_file: Option<PathBuf>,
    /// Also serve the API on TCP (needs --api-token-file).
    #[arg(long = "api-listen", value_name = "ADDR:PORT")]
    api_listen: Option<String>,
    /// Bearer token file for the TCP API.
    #[arg(long = "api-token-file", value_name = "FILE")]
    api_token_file: Option<PathBuf>,
}

fn load_config(args: Args) -> anyhow::Result<Config> {
    let explicit = args.config.is_some();
    let path = args.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into());
    let file = FileConfig::load(&path, explicit)?;
    let o = Overrides {
        personas_dir: args.personas,
        state_dir: args.state_dir,
        socket: args.socket,
        connect: args.connect,
        interval: args.interval,
        verify_interval: args.verify_interval,
        revert_on_exit: args.revert_on_exit,
        node_name: args.node_name,
        gossip_listen: args.gossip_listen,
        gossip_seeds: args.gossip_seed,
        gossip_key_file: args.gossip_key_file,
        api_listen: args.api_listen,
        api_token_file: args.api_token_file,
    };
    Ok(Config::resolve(file, o)?)
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIRT_PERSONA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // colour only for a person at a terminal, not for the journal or a log file
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(args) {
        eprintln!("virt-personad: error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type Rec = Reconciler<LibvirtHypervisor, RedbStore>;

fn run(args: Args) -> anyhow::Result<()> {
    let cfg = load_config(args)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating the state directory {}", cfg.state_dir.display()))?;
    std::fs::create_dir_all(&cfg.personas_dir).with_context(|| {
        format!(
            "creating the personas directory {}",
            cfg.personas_dir.display()
        )
    })?;
    let mut catalog = Catalog::new(&cfg.personas_dir);
    reload(&mut catalog, "start");
    let (_watcher, persona_changes) = virt_persona::watch::watch(&cfg.personas_dir)
        .with_context(|| format!("watching {}", cfg.personas_dir.display()))?;
    let store = RedbStore::open(&cfg.state_dir)?;
    let hv = Arc::new(LibvirtHypervisor::connect(&cfg.connect)?);
    let events = hv.events();
    let mut rec: Rec = Reconciler::new(hv.clone(), store, cfg.verify_interval.as_std());
    rec.set_personas(catalog.personas());

    let (cmd_tx, cmd_rx) = crossbeam_channel::bounded::<Envelope>(256);
    let shared = Arc::new(server::Shared::default());
    if let Some(addr) = &cfg.api_listen {
        let path = cfg.api_token_file.as_ref().context("api.token_file")?;
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading the API token file {}", path.display()))?
            .trim()
            .to_string();
        anyhow::ensure!(
            token.len() >= 16,
            "the API token in {} is shorter than 16 characters",
            path.display()
        );
        server::serve_tcp(addr, token, cmd_tx.clone(), shared.clone())?;
        info!(%addr, "TCP API listening (bearer token required)");
    }
    server::serve(&cfg.socket, cmd_tx, shared.clone())?;
    let metrics = Metrics::new();
    let mut subscribers: Vec<crossbeam_channel::Sender<serde_json::Value>> = Vec::new();

    if cfg.gossip_listen.is_some() || !cfg.gossip_seeds.is_empty() {
        warn!("gossip is not built yet: --gossip-listen and --gossip-seed are ignored; this host runs alone");
    }
    info!(uri = %cfg.connect, node = %cfg.node_name, interval = %cfg.interval, socket = %cfg.socket.display(), "virt-personad started");

    let (sig_tx, sig_rx) = crossbeam_channel::bounded(4);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if sig_tx.send(s).is_err() {
                    break;
                }
            }
        })?;

    let ticker = tick(cfg.interval.as_std());
    let run_tick = |rec: &mut Rec| {
        let t = std::time::Instant::now();
        let r = rec.tick(now_ms(), Some(virt_persona::host::read()));
        metrics.tick(t.elapsed().as_secs_f64(), r.as_ref().ok());
        r
    };
    let mut last_error: Option<String> = None;
    let mut log_tick = |r: Result<
        virt_persona::reconciler::TickReport,
        virt_persona::reconciler::TickError,
    >| match r {
        Ok(_) => {
            if last_error.take().is_some() {
                info!("control loop running again");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            if last_error.as_deref() != Some(msg.as_str()) {
                warn!(error = %msg, "tick failed; retrying every interval");
                last_error = Some(msg);
            }
        }
    };
    log_tick(run_tick(&mut rec));
    loop {
        // what GET /v1/domains answers, without asking the loop each time
        shared.publish_domains(domains_body(&rec));
        // new events go to the metrics and to every event-stream subscriber
        let recorded = rec.take_events();
        if !recorded.is_empty() {
            metrics.events(&recorded);
            for e in &recorded {
                let v = event_json(e);
                subscribers.retain(|s| {
                    !matches!(
                        s.try_send(v.clone()),
                        Err(crossbeam_channel::TrySendError::Disconnected(_))
                    )
                });
            }
        }
        select! {
            recv(ticker) -> _ => log_tick(run_tick(&mut rec)),
            recv(events) -> ev => match ev {
                Ok(HypervisorEvent::Lifecycle { name, kind, .. }) => {
                    info!(domain = %name, event = ?kind, "domain lifecycle event");
                    rec.mark_stale();
                    // a domain that starts gets its persona now, not a tick later
                    log_tick(run_tick(&mut rec));
                }
                Ok(HypervisorEvent::Disconnected { reason }) => warn!(%reason, "libvirt connection lost"),
                Ok(HypervisorEvent::Reconnected) => {
                    info!("libvirt connection back");
                    rec.mark_stale();
                }
                Err(_) => std::thread::sleep(StdDuration::from_millis(100)),
            },
            recv(persona_changes) -> _ => {
                reload(&mut catalog, "file change");
                rec.set_personas(catalog.personas());
            }
            recv(cmd_rx) -> env => {
                if let Ok(env) = env {
                    let reply = match env.command {
                        Command::Subscribe => {
                            let (tx, rx) = crossbeam_channel::bounded(1024);
                            subscribers.push(tx);
                            Reply::Stream(rx)
                        }
                        Command::Metrics => {
                            let signals = rec.live_signals(now_ms()).len();
                            metrics.state(&rec.statuses(), catalog.personas().len(), catalog.errors().len(), signals, hv.is_connected());
                            Reply::Text(metrics.render())
                        }
                        cmd => execute(&mut rec, &mut catalog, &hv, cmd),
                    };
                    // a client that changed something and lists next sees its change
                    shared.publish_domains(domains_body(&rec));
                    let _ = env.reply.send(reply);
                }
            }
            recv(sig_rx) -> s => match s {
                Ok(signal_hook::consts::SIGHUP) => {
                    reload(&mut catalog, "SIGHUP");
                    rec.set_personas(catalog.personas());
                }
                _ => {
                    if cfg.revert_on_exit {
                        match rec.revert_all(now_ms()) {
                            Ok(n) => info!(domains = n, "baselines restored (--revert-on-exit)"),
                            Err(e) => warn!(error = %e, "restoring baselines on exit failed"),
                        }
                    }
                    let _ = std::fs::remove_file(&cfg.socket);
                    info!("stopping");
                    return Ok(());
                }
            },
        }
    }
}

fn domains_body(rec: &Rec) -> String {
    serde_json::Value::Array(rec.statuses().iter().map(status_json).collect()).to_string()
}

fn status_json(s: &DomainStatus) -> serde_json::Value {
    json!({
        "id": s.id,
        "name": s.name,
        "uuid": s.uuid,
        "state": s.state,
        "persona": s.persona,
        "since": s.since.map(rfc3339),
        "reason": s.reason,
        "override": s.override_,
        "last_error": s.last_error,
    })
}

fn event_json(e: &virt_persona::store::Event) -> serde_json::Value {
    json!({
        "time": rfc3339(e.time), "domain": e.domain, "from": e.from, "to": e.to,
        "reason": e.reason, "result": e.result, "changes": e.changes, "error": e.error,
    })
}

fn manual_error(e: ManualError) -> Reply {
    match e {
        ManualError::NoDomain(_) | ManualError::NoPersona(_) => Reply::not_found(e.to_string()),
        ManualError::NotRunning { .. } | ManualError::NoMatch { .. } => {
            Reply::conflict(e.to_string())
        }
        ManualError::Tick(t) => Reply::Err {
            status: 500,
            message: t.to_string(),
        },
    }
}

fn persona_json(catalog: &Catalog, id: &str) -> Option<serde_json::Value> {
    let entry = catalog.entries().into_iter().find(|e| e.id == id)?;
    let file = catalog.file_of(id);
    Some(json!({
        "id": entry.id, "name": entry.name, "priority": entry.priority, "status": entry.status,
        "file": entry.file, "error": entry.error,
        "persona": catalog.get(id).map(|p| serde_json::to_value(&*p).unwrap_or_default()),
        "toml": file.and_then(|f| f.text.as_deref().map(str::to_string)),
    }))
}

/// Writes a persona file atomically: a temporary file in the same directory,
/// synced, then renamed over the target.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("persona.toml");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn execute(rec: &mut Rec, catalog: &mut Catalog, hv: &LibvirtHypervisor, cmd: Command) -> Reply {
    let find = |rec: &Rec, key: &str| {
        rec.statuses().into_iter().find(|s| {
            s.name == key || s.uuid == key || s.id.map(|i| i.to_string()).as_deref() == Some(key)
        })
    };
    match cmd {
        Command::Health => Reply::Ok(json!({
            "status": "ok",
            "libvirt": if hv.is_connected() { "connected" } else { "disconnected" },
            "uri": hv.uri(),
            "version": virt_persona::VERSION,
        })),
        Command::ListDomains => Reply::Ok(serde_json::Value::Array(rec.statuses().iter().map(status_json).collect())),
        Command::GetDomain { name } => match find(rec, &name) {
            Some(s) => Reply::Ok(status_json(&s)),
            None => Reply::not_found(format!("domain '{name}' not found")),
        },
        Command::History { name, since } => {
            let domain = find(rec, &name).map(|s| s.name).unwrap_or(name);
            match rec.store().events(Some(&domain), since) {
                Ok(ev) => Reply::Ok(serde_json::Value::Array(ev.iter().map(event_json).collect())),
                Err(e) => Reply::Err { status: 500, message: e.to_string() },
            }
        }
        Command::Tuning { name } => match find(rec, &name) {
            None => Reply::not_found(format!("domain '{name}' not found")),
            Some(st) => match hv.tuning(&st.name, virt_persona::hypervisor::ReadScope::Current) {
                Ok(t) => Reply::Ok(serde_json::to_value(t).unwrap_or_default()),
                Err(e) => Reply::Err { status: 502, message: e.to_string() },
            },
        },
        Command::RecentEvents { since } => {
            let since = since.unwrap_or_else(|| now_ms() - 3_600_000);
            match rec.store().events(None, since) {
                Ok(ev) => Reply::Ok(serde_json::Value::Array(ev.iter().map(event_json).collect())),
                Err(e) => Reply::Err { status: 500, message: e.to_string() },
            }
        }
        Command::Explain { name } => match find(rec, &name).and_then(|s| rec.entry(&s.uuid)) {
            Some(e) => match &e.last_decision {
                Some(d) => Reply::Ok(json!({
                    "domain": e.info.name,
                    "persona": d.persona,
                    "reason": d.reason,
                    "candidates": d.candidates.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
                })),
                None => Reply::conflict(format!("no decision for '{name}' yet (is it running?)")),
            },
            None => Reply::not_found(format!("domain '{name}' not found")),
        },
        Command::Activate { name, persona, for_ms } => {
            let now = now_ms();
            match rec.activate(&name, &persona, for_ms.map(|f| now + f), now) {
                Ok(()) => match find(rec, &name) {
                    Some(s) => Reply::Ok(status_json(&s)),
                    None => Reply::not_found(format!("domain '{name}' not found")),
                },
                Err(e) => manual_error(e),
            }
        }
        Command::Revert { name } => match rec.revert(&name, now_ms()) {
            Ok(()) => match find(rec, &name) {
                Some(s) => Reply::Ok(status_json(&s)),
                None => Reply::not_found(format!("domain '{name}' not found")),
            },
            Err(e) => manual_error(e),
        },
        Command::ListPersonas => Reply::Ok(serde_json::to_value(catalog.entries()).unwrap_or_default()),
        Command::GetPersona { id } => match persona_json(catalog, &id) {
            Some(v) => Reply::Ok(v),
            None => Reply::not_found(format!("persona '{id}' not found")),
        },
        Command::ValidatePersona { toml } => {
            let errors = match parse_persona(&toml, std::path::Path::new("request")) {
                Ok(_) => vec![],
                Err(errs) => errs.iter().map(|e| json!({"line": e.line, "col": e.col, "message": e.rule.to_string()})).collect(),
            };
            Reply::Ok(json!({"ok": errors.is_empty(), "errors": errors}))
        }
        Command::PutPersona { id, toml } => {
            let target = catalog
                .file_of(&id)
                .map(|f| f.path.clone())
                .unwrap_or_else(|| catalog.dir().join(format!("{id}.toml")));
            match parse_persona(&toml, &target) {
                Err(errs) => Reply::bad(errs.iter().map(|e| format!("{}:{}: {}", e.line, e.col, e.rule)).collect::<Vec<_>>().join("; ")),
                Ok(p) if p.id != id => Reply::bad(format!("the body's id '{}' does not match the route's '{id}'", p.id)),
                Ok(_) => {
                    if let Err(e) = write_atomically(&target, &toml) {
                        return Reply::Err { status: 500, message: format!("writing {}: {e}", target.display()) };
                    }
                    reload(catalog, "API");
                    rec.set_personas(catalog.personas());
                    match persona_json(catalog, &id) {
                        Some(v) if v["status"] == "ok" => Reply::Ok(v),
                        Some(v) => Reply::conflict(v["error"].as_str().unwrap_or("not loaded").to_string()),
                        None => Reply::conflict(format!("persona '{id}' was written to {} but is not in force", target.display())),
                    }
                }
            }
        }
        Command::DeletePersona { id } => match catalog.file_of(&id).map(|f| f.path.clone()) {
            None => Reply::not_found(format!("persona '{id}' not found")),
            Some(path) => {
                if let Err(e) = std::fs::remove_file(&path) {
                    return Reply::Err { status: 500, message: format!("removing {}: {e}", path.display()) };
                }
                reload(catalog, "API");
                rec.set_personas(catalog.personas());
                Reply::Ok(json!({"id": id, "file": path, "removed": true}))
            }
        },
        Command::SetSignal { name, value, ttl_ms, domain, cluster } => {
            let expires = now_ms() + ttl_ms;
            rec.set_signal(&name, Signal { value, expires, domain: domain.clone(), cluster });
            Reply::Ok(json!({
                "name": name, "value": value, "domain": domain,
                "scope": if cluster { "cluster" } else { "host" }, "expires": rfc3339(expires),
            }))
        }
        Command::ListSignals => Reply::Ok(serde_json::Value::Array(
            rec.live_signals(now_ms())
                .into_iter()
                .map(|(name, s)| {
                    json!({
                        "name": name, "value": s.value, "domain": s.domain,
                        "scope": if s.cluster { "cluster" } else { "host" }, "expires": rfc3339(s.expires),
                    })
                })
                .collect(),
        )),
        // handled by the loop itself
        Command::Metrics | Command::Subscribe => Reply::Err { status: 500, message: "not handled here".into() },
    }
}

fn reload(catalog: &mut Catalog, why: &str) {
    match catalog.reload() {
        Ok(r) => {
            if why == "SIGHUP"
                || !(r.loaded.is_empty() && r.failed.is_empty() && r.removed.is_empty())
            {
                info!(
                    trigger = why,
                    dir = %catalog.dir().display(),
                    in_force = catalog.personas().len(),
                    failed = ?r.failed,
                    removed = ?r.removed,
                    "personas loaded"
                );
            }
        }
        Err(e) => {
            warn!(dir = %catalog.dir().display(), error = %e, "cannot read the personas directory; personas in force are kept")
        }
    }
}
