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
use virt_persona::logging::LogFormat;

use virt_persona::api::command::{Command, Envelope, Reply};
use virt_persona::api::exec::{self, domains_body, event_json, reload};
use virt_persona::api::server;
use virt_persona::cluster;
use virt_persona::forecaster::{ToWorker, WorkerConfig};
use virt_persona::hypervisor::{Hypervisor, HypervisorEvent};
use virt_persona::metrics::Metrics;
use virt_persona::model::loader::Catalog;
use virt_persona::reconciler::Reconciler;
use virt_persona::store::RedbStore;
use virt_persona::systemd::{status_line, Notifier};
use virt_persona::time::{now_ms, steady_ms};
use virt_persona::units::Duration;

/// virt-persona host daemon: gives every libvirt domain the tuning persona its load calls for.
///
/// Runs against libvirt's test driver with no KVM:
///   virt-personad -c test:///default --personas personas/ --state-dir /tmp/vp --socket /tmp/vp/api.sock
#[derive(Parser, Debug)]
#[command(
    name = "virt-personad",
    version,
    about = "virt-persona host daemon: gives every libvirt domain the tuning persona its load calls for",
    long_about = None
)]
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
    /// Read persona files that are symbolic links through them (off: a link is
    /// refused by name, since the daemon runs as root).
    #[arg(long = "personas-follow-links")]
    personas_follow_links: bool,
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
    /// Restore every domain's baseline when the daemon stops. Without it,
    /// SIGTERM stops and leaves the personas worn (a restart adopts them);
    /// SIGUSR2 stops and restores every baseline either way (the package's
    /// prerm sends it when the package is removed).
    #[arg(long = "revert-on-exit")]
    revert_on_exit: bool,
    /// Observe only: decide, plan and record what would be done (`would_apply`
    /// events, `list` shows what each domain would wear) but change nothing.
    /// `dry_run = true` in the config file does the same and can be switched
    /// off with a reload (SIGHUP) to start acting without a restart.
    #[arg(long = "dry-run")]
    dry_run: bool,
    /// How long metric history is kept for forecasts, e.g. 14d [default: 14d].
    #[arg(long = "history-retention", value_name = "DUR")]
    history_retention: Option<Duration>,
    /// `observe`: forecasts never activate a persona; what they would have
    /// done is logged and shown by `explain` (judge their accuracy first).
    /// `forecast_mode` in the config file does the same and a reload switches it.
    #[arg(long = "forecast-mode", value_name = "MODE", value_parser = ["act", "observe"])]
    forecast_mode: Option<String>,
    /// This host's name in the cluster [default: the host name].
    #[arg(long = "node-name", value_name = "NAME")]
    node_name: Option<String>,
    /// Gossip listen address.
    #[arg(long = "gossip-listen", value_name = "ADDR:PORT")]
    gossip_listen: Option<String>,
    /// The address other hosts reach this one at, ADDR or ADDR:PORT (default:
    /// the listen address; for 0.0.0.0 or [::], the one the route to the
    /// first seed uses).
    #[arg(long = "gossip-advertise", value_name = "ADDR[:PORT]")]
    gossip_advertise: Option<String>,
    /// Gossip seed (repeatable).
    #[arg(long = "gossip-seed", value_name = "ADDR:PORT")]
    gossip_seed: Vec<String>,
    /// Gossip shared key file: one key per line (64 hex characters), the
    /// first seals, all open (`virt-persona gossip-keygen FILE` makes one);
    /// re-read on reload, so a key rotates without a restart.
    #[arg(long = "gossip-key-file", value_name = "FILE")]
    gossip_key_file: Option<PathBuf>,
    /// Cluster id bound into every gossip packet [default: virt-persona].
    #[arg(long = "gossip-cluster", value_name = "NAME")]
    gossip_cluster: Option<String>,
    /// Log lines: auto (journal under systemd, else text), text, json or journal.
    #[arg(long = "log-format", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Print the man page (roff, section 8) and exit; the package installs it.
    #[arg(long = "man", hide = true)]
    man: bool,
    /// Also serve the API on TCP (needs --api-token-file).
    #[arg(long = "api-listen", value_name = "ADDR:PORT")]
    api_listen: Option<String>,
    /// Bearer token file for the TCP API.
    #[arg(long = "api-token-file", value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) for the TCP API; with --api-tls-key.
    #[arg(long = "api-tls-cert", value_name = "FILE", requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM; owned by root, mode 0600).
    #[arg(long = "api-tls-key", value_name = "FILE", requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
}

/// An address of the gossip flags: `IP:PORT` or `HOST:PORT`.
fn resolve(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .with_context(|| "expected ADDR:PORT or HOST:PORT".to_string())?
        .next()
        .context("the name resolves to no address")
}

/// The loop's side of gossip: the channel to the node, the merged view, and
/// [`cluster::exchange::Exchange`] (what to publish and take, pure).
struct Gossip {
    node: cluster::node::Supervised,
    shared: Arc<cluster::node::Shared>,
    exchange: cluster::exchange::Exchange,
}

impl Gossip {
    /// The node's task ended (`why`): it is started again after a backoff.
    fn ended(&mut self, why: String, now: i64) {
        self.node.failed(why.clone(), now);
        tracing::error!(%why, retry_at = ?self.node.status().restart_at.map(virt_persona::time::rfc3339), "the gossip task stopped; this host is out of the cluster until it is started again, domains are still controlled");
    }

    /// Starts the node again once its backoff is over. The exchange (this
    /// host's cluster signals, the activations it continued) is kept: the
    /// next publish sends it all to the new node.
    fn restart_if_due(&mut self, rt: &tokio::runtime::Handle, now: i64) {
        match self.node.restart_if_due(rt, now) {
            Some(Ok(())) => {
                warn!(restarts = self.node.status().restarts, addr = %self.node.addr(), "gossip task started again")
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "the gossip task cannot be started again; trying later")
            }
            None => {}
        }
    }

    /// A cluster signal this host set (from the API's reply).
    fn set_local_signal(&mut self, v: &serde_json::Value) {
        let (Some(name), Some(value), Some(expires)) = (
            v["name"].as_str(),
            v["value"].as_f64(),
            v["expires"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
        ) else {
            return;
        };
        // cluster time: its end as a duration from now, its stamp above
        // every setting this host has seen
        let (expires, stamp) = {
            let mut i = self.shared.lock();
            let cluster_now = i.clock.now(steady_ms());
            (
                cluster::clock::on_cluster(expires.as_millisecond(), now_ms(), cluster_now),
                i.clock.stamp(steady_ms()),
            )
        };
        self.exchange
            .set_local_signal(name, v["domain_uuid"].as_str(), value, expires, stamp);
    }

    /// A cluster signal this host withdrew (from the API's reply).
    fn withdraw_local_signal(&mut self, v: &serde_json::Value) {
        let stamp = self.shared.lock().clock.stamp(steady_ms());
        self.exchange.withdraw_local_signal(
            v["name"].as_str().unwrap_or_default(),
            v["domain_uuid"].as_str(),
            stamp,
        );
    }

    /// Each tick: publish this host's state, take the others' cluster
    /// signals, and continue manual activations of domains that moved here.
    fn exchange(&mut self, rec: &mut Rec, catalog: &Catalog, node: &str, started: i64, now: i64) {
        self.publish(rec, catalog, started, now);
        self.take(rec, node, now);
    }

    /// This host's state to the node.
    fn publish(&mut self, rec: &Rec, catalog: &Catalog, started: i64, now: i64) {
        let personas = catalog.personas();
        let summary = cluster::state::Summary {
            addr: self.node.addr().to_string(),
            up_since: started,
            digest: cluster::state::digest(&personas),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            personas: personas.len() as u32,
        };
        let cluster_now = self.shared.lock().clock.now(steady_ms());
        let local = self
            .exchange
            .local(summary, &rec.statuses(), now, cluster_now);
        self.node.send(cluster::node::ToNode::Local(local));
    }

    /// What the other hosts say: their cluster signals and the manual
    /// activations of domains that moved here.
    fn take(&mut self, rec: &mut Rec, node: &str, now: i64) {
        let statuses = rec.statuses();
        let incoming = {
            let inner = self.shared.lock();
            let cluster_now = inner.clock.now(steady_ms());
            self.exchange
                .incoming(&inner, node, &statuses, now, cluster_now)
        };
        for (name, sig) in incoming.signals {
            rec.set_signal(&name, sig);
        }
        for (name, domain) in incoming.ended {
            rec.end_cluster_signal(&name, domain.as_deref());
        }
        for f in incoming.follow {
            let (name, persona, from) = (&f.name, &f.manual.persona, &f.from);
            let o = virt_persona::rules::Override {
                persona: persona.clone(),
                until: f.manual.until,
                id: f.manual.id,
            };
            match rec.activate_override(name, o, now) {
                Ok(()) => {
                    info!(domain = %name, %persona, %from, "manual activation continued from the host the domain left")
                }
                Err(e) => {
                    warn!(domain = %name, %persona, %from, error = %e, "the manual activation of the host the domain left cannot be continued here")
                }
            }
        }
    }
}

/// `GET /v1/sources`: each signal source, times as RFC 3339.
fn sources_json(board: &[virt_persona::sources::poller::Status]) -> serde_json::Value {
    use virt_persona::time::rfc3339;
    board
        .iter()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            v["last_success"] = s.last_success.map(rfc3339).into();
            v["last_error_at"] = s.last_error_at.map(rfc3339).into();
            v
        })
        .collect()
}

/// `POST /v1/history/import`: read and checked by the API (off this
/// thread), written by the forecast worker, which answers.
fn import_history(
    worker: &virt_persona::forecaster::Supervised,
    batch: virt_persona::history::ImportBatch,
    retime: bool,
    reply: tokio::sync::oneshot::Sender<Reply>,
) {
    // the reply goes out once: from the worker, or here when it is busy
    let reply = Arc::new(std::sync::Mutex::new(Some(reply)));
    let answer_to = reply.clone();
    let answer = Box::new(
        move |r: Result<
            virt_persona::forecaster::ImportReport,
            virt_persona::forecaster::ImportRefused,
        >| {
            let Some(tx) = answer_to.lock().ok().and_then(|mut t| t.take()) else {
                return;
            };
            let _ = tx.send(match r {
                Ok(report) => Reply::Ok(serde_json::json!({
                    "imported": report.kept,
                    "rows": report.rows,
                    "skipped_outside_retention": report.rows - report.kept,
                    "series": report.series,
                    "refitted": report.refitted,
                    "retimed_by_ms": report.retimed_by_ms,
                })),
                Err(e) => Reply::Err {
                    status: e.status,
                    message: e.message,
                },
            });
        },
    );
    let msg = ToWorker::Import {
        batch,
        retime,
        reply: answer,
    };
    let sent = if worker_busy_for_tests() {
        Err((msg, false))
    } else {
        worker.import(msg)
    };
    if let Err((_, down)) = sent {
        // nothing was written: the client may simply send it again
        if let Some(tx) = reply.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(Reply::Err {
                status: 503,
                message: if down {
                    "the forecast worker is being started again; nothing was imported, try again in a moment"
                } else {
                    "the forecast worker is busy; nothing was imported, try again in a moment"
                }
                .into(),
            });
        }
    }
}

/// Test builds only (FAILPOINTS=import-worker-busy=return): the worker's
/// inbox taken as full.
fn worker_busy_for_tests() -> bool {
    fail::fail_point!("import-worker-busy", |_| true);
    false
}

/// Where the config file is, and whether it was named (then it must exist).
fn config_path(args: &Args) -> (PathBuf, bool) {
    (
        args.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into()),
        args.config.is_some(),
    )
}

/// What the command line says, to lay over the config file (again at each reload).
fn overrides(args: Args) -> Overrides {
    Overrides {
        personas_dir: args.personas,
        personas_follow_links: args.personas_follow_links,
        state_dir: args.state_dir,
        socket: args.socket,
        connect: args.connect,
        interval: args.interval,
        verify_interval: args.verify_interval,
        revert_on_exit: args.revert_on_exit,
        dry_run: args.dry_run,
        history_retention: args.history_retention,
        forecast_observe: args.forecast_mode.as_deref() == Some("observe"),
        log_format: args.log_format,
        node_name: args.node_name,
        gossip_listen: args.gossip_listen,
        gossip_advertise: args.gossip_advertise,
        gossip_seeds: args.gossip_seed,
        gossip_key_file: args.gossip_key_file,
        gossip_cluster: args.gossip_cluster,
        api_listen: args.api_listen,
        api_token_file: args.api_token_file,
        api_tls_cert: args.api_tls_cert,
        api_tls_key: args.api_tls_key,
    }
}

fn load_config(path: &std::path::Path, named: bool, o: Overrides) -> anyhow::Result<Config> {
    let file = FileConfig::load(path, named)?;
    Ok(Config::resolve(file, o)?)
}

fn main() {
    let args = Args::parse();
    if args.man {
        let page = clap_mangen::Man::new(<Args as clap::CommandFactory>::command()).section("8");
        match page.render(&mut std::io::stdout()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("virt-personad: error: {e}");
                std::process::exit(1);
            }
            _ => {}
        }
        return;
    }
    let (config_file, config_named) = config_path(&args);
    let flags = overrides(args);
    let result = load_config(&config_file, config_named, flags.clone()).and_then(|cfg| {
        virt_persona::logging::init(cfg.log_format, cfg.log_level.as_deref())
            .map_err(|e| anyhow::anyhow!("logging: {e}"))?;
        // a test build only: fail points named in FAILPOINTS (see Cargo.toml)
        #[cfg(feature = "failpoints")]
        let _failpoints = fail::FailScenario::setup();
        run(cfg, &config_file, config_named, flags)
    });
    if let Err(e) = result {
        eprintln!("virt-personad: error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

type Rec = Reconciler<LibvirtHypervisor, RedbStore>;

fn run(
    cfg: Config,
    config_file: &std::path::Path,
    config_named: bool,
    flags: Overrides,
) -> anyhow::Result<()> {
    // seeds without a listen address would be accepted and ignored: refused
    if cfg.gossip_listen.is_none() && !cfg.gossip_seeds.is_empty() {
        anyhow::bail!(
            "gossip seeds given without a listen address: set --gossip-listen (gossip.listen) too, or remove the seeds"
        );
    }
    virt_persona::config::create_state_dir(&cfg.state_dir)
        .with_context(|| format!("creating the state directory {}", cfg.state_dir.display()))?;
    std::fs::create_dir_all(&cfg.personas_dir).with_context(|| {
        format!(
            "creating the personas directory {}",
            cfg.personas_dir.display()
        )
    })?;
    let mut catalog = Catalog::new(&cfg.personas_dir);
    catalog.follow_links(cfg.personas_follow_links);
    reload(&mut catalog, "start");
    let (_watcher, persona_changes) = virt_persona::watch::watch(&cfg.personas_dir)
        .with_context(|| format!("watching {}", cfg.personas_dir.display()))?;
    // a damaged state file does not stop the host: it is kept aside and the
    // daemon observes only, saying why, instead of crash-looping under systemd
    let (store, observe) = RedbStore::open_or_set_aside(&cfg.state_dir)?;
    let hv = Arc::new(LibvirtHypervisor::connect(&cfg.connect)?);
    let events = hv.events();
    let metrics = Metrics::new();
    let mut rec: Rec = Reconciler::new(hv.clone(), store, cfg.verify_interval.as_std());
    // a transition of many knobs on a slow host pings systemd's watchdog as
    // each call completes (one call that never returns still stops the pings)
    if let Some(progress) = Notifier::progress() {
        rec.on_progress(Arc::new(move || {
            progress.made();
        }));
    }
    // what cpu_shares means here (cpu_weight = "2x" is resolved for it)
    let cgroup = virt_persona::host::cgroup_of(&cfg.connect);
    match cgroup {
        Some(c) => info!(
            cgroup = c.name(),
            default_cpu_shares = c.default_shares(),
            range = %format!("{}..{}", c.shares_range().start(), c.shares_range().end()),
            "domains' CPU weight: cpu_weight = \"1x\" is cpu_shares {}", c.default_shares()
        ),
        None => info!("the host's cgroup version is unknown (libvirt on another machine): personas with cpu_weight are refused"),
    }
    rec.set_cgroup(cgroup);
    rec.set_personas(catalog.personas());
    // signals pushed before a restart, until their TTL
    match rec.restore_signals(now_ms()) {
        Ok(0) => {}
        Ok(n) => info!(signals = n, "signals pushed before the restart taken back"),
        Err(e) => warn!(error = %e, "the signals kept in the state store could not be read"),
    }
    rec.set_stats_clock(Box::new(now_ms));
    if let Some(why) = &observe {
        tracing::error!(reason = %why, "OBSERVING ONLY: no domain will be changed");
    }
    rec.set_observe(observe);
    if cfg.dry_run {
        warn!("dry run: deciding and recording only; no domain will be changed (switch off: dry_run = false in the config file, then reload)");
    }
    rec.set_dry_run(cfg.dry_run);
    rec.set_limits(cfg.limits);
    metrics.dry_run(cfg.dry_run);
    rec.set_forecast_observe(cfg.forecast_observe);
    if cfg.forecast_observe {
        info!("forecast observe mode: forecasts are evaluated and shown, and never activate a persona");
    }

    // history and forecast fits live on their own thread, started again
    // (after a backoff) if it ever ends or panics
    let history_series = Arc::<std::sync::atomic::AtomicUsize>::default();
    let worker_cfg = {
        let state_dir = cfg.state_dir.clone();
        let retention = cfg.history_retention.as_std().as_millis() as i64;
        let max_series = cfg.limits.history_series;
        let series = history_series.clone();
        move || WorkerConfig {
            state_dir: state_dir.clone(),
            retention,
            clock: Box::new(now_ms),
            refit_every: 3_600_000,
            max_series,
            series: series.clone(),
        }
    };
    let mut worker = virt_persona::forecaster::Supervised::start(Box::new(worker_cfg), now_ms())
        .context("starting the forecast worker")?;
    // each tick's values to history, and the series to fit when they change
    let feed = |rec: &mut Rec, worker: &mut virt_persona::forecaster::Supervised| {
        if !worker.feed(rec.history_values(), rec.forecast_series()) {
            metrics.history_dropped();
        }
    };

    let (cmd_tx, cmd_rx) = crossbeam_channel::bounded::<Envelope>(server::COMMAND_QUEUE);
    let shared = Arc::new(server::Shared::new(cfg.limits.import));
    let tcp = match &cfg.api_listen {
        Some(addr) => {
            let path = cfg.api_token_file.as_ref().context("api.token_file")?;
            Some((addr.clone(), virt_persona::config::read_token_file(path)?))
        }
        None => None,
    };
    // one small runtime for network I/O; this thread stays the control loop's
    server::raise_open_files_limit();
    let rt = server::runtime()?;
    // the signal sources poll on the same runtime and hand their values to this loop
    let mut sources =
        virt_persona::sources::poller::Sources::new(rt.handle().clone(), cmd_tx.clone(), now_ms);
    sources.apply(&cfg.sources);
    let api = server::Api::start(
        rt.handle(),
        &server::ApiConfig {
            socket: cfg.socket.clone(),
            tcp,
            tls: match &cfg.api_tls {
                Some((cert, key)) => Some(server::tls::server_config(cert, key)?),
                None => None,
            },
        },
        cmd_tx,
        shared.clone(),
    )?;
    if let Some(addr) = api.tcp_addr {
        match (&cfg.api_tls, addr.ip().is_loopback()) {
            (Some(_), _) => info!(%addr, "TCP API listening with TLS (bearer token required)"),
            (None, true) => info!(%addr, "TCP API listening (bearer token required)"),
            (None, false) => {
                warn!(%addr, "TCP API listening beyond loopback without TLS: the bearer token and every answer cross the network in clear text; give it a certificate (api.tls_cert, api.tls_key) or listen on 127.0.0.1")
            }
        }
    }

    // gossip: one task on the same runtime; the loop feeds it and reads its view
    let started = now_ms();
    // another host's cluster signal wakes the loop: it is taken at once
    let (wake_tx, cluster_news) = crossbeam_channel::bounded::<()>(1);
    let gossip = match &cfg.gossip_listen {
        None => None,
        Some(listen) => {
            let key_file = cfg.gossip_key_file.as_ref().context("gossip.key_file")?;
            let ring = virt_persona::config::read_key_file(key_file)?;
            let listen = resolve(listen).with_context(|| format!("gossip.listen '{listen}'"))?;
            let seeds = cfg
                .gossip_seeds
                .iter()
                .map(|s| resolve(s).with_context(|| format!("gossip seed '{s}'")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let advertise = cfg
                .gossip_advertise
                .as_deref()
                .map(|a| {
                    a.parse::<std::net::IpAddr>()
                        .map(|ip| std::net::SocketAddr::new(ip, 0))
                        .or_else(|_| resolve(a))
                        .with_context(|| {
                            format!("gossip.advertise '{a}': expected ADDR or ADDR:PORT")
                        })
                })
                .transpose()?;
            let shared = Arc::new(cluster::node::Shared::default());
            shared.lock().wake = Some(wake_tx);
            let node_cfg = cluster::node::NodeConfig {
                node: cfg.node_name.clone(),
                listen,
                advertise,
                expected_members: cfg.gossip_expected_hosts,
                seeds,
                ring,
                cluster: cfg.gossip_cluster.clone(),
                // cluster time runs on a steady clock (a wall-clock step
                // does not move it)
                clock: steady_ms,
            };
            let node =
                cluster::node::Supervised::start(rt.handle(), node_cfg, shared.clone(), now_ms())
                    .with_context(|| format!("gossip on {listen}"))?;
            rec.set_cluster_enabled(true);
            Some(Gossip {
                node,
                shared,
                exchange: cluster::exchange::Exchange::new(cfg.gossip_signal_grace_ms),
            })
        }
    };
    let mut gossip = gossip;
    let cluster_news = if gossip.is_some() {
        cluster_news
    } else {
        crossbeam_channel::never()
    };

    info!(uri = %cfg.connect, node = %cfg.node_name, interval = %cfg.interval, socket = %cfg.socket.display(), "virt-personad started");

    let (sig_tx, sig_rx) = crossbeam_channel::bounded(4);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
        // stop and restore every baseline, whatever revert_on_exit says: the
        // package's prerm sends it when the package is removed
        signal_hook::consts::SIGUSR2,
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
        // tests hold the loop here, as a libvirt call that never returns would
        fail::fail_point!("before-tick");
        let t = std::time::Instant::now();
        let r = rec.tick(now_ms(), Some(virt_persona::host::read()));
        metrics.tick(t.elapsed().as_secs_f64(), r.as_ref().ok());
        r
    };
    let last_error: std::cell::RefCell<Option<String>> = Default::default();
    let log_tick = |r: Result<
        virt_persona::reconciler::TickReport,
        virt_persona::reconciler::TickError,
    >| match r {
        Ok(_) => {
            if last_error.borrow_mut().take().is_some() {
                info!("control loop running again");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            if last_error.borrow().as_deref() != Some(msg.as_str()) {
                warn!(error = %msg, "tick failed; retrying every interval");
                *last_error.borrow_mut() = Some(msg);
            }
        }
    };
    // systemd: READY once a tick went through, a status line, and watchdog
    // pings from this thread, so a loop stuck in a call stops them
    let mut notifier = Notifier::new();
    let watchdog = match Notifier::watchdog_interval() {
        Some(every) => tick(every),
        None => crossbeam_channel::never(),
    };
    log_tick(run_tick(&mut rec));
    feed(&mut rec, &mut worker);
    if let Some(g) = gossip.as_mut() {
        g.exchange(&mut rec, &catalog, &cfg.node_name, started, now_ms());
    }
    // fits that arrived since the last tick: a request decides on them first
    let mut fresh_fits = false;
    loop {
        let statuses = rec.statuses();
        let down: Vec<&str> = rec
            .helpers()
            .iter()
            .filter(|h| h.is_down())
            .map(|h| h.name)
            .collect();
        let problem = last_error
            .borrow()
            .as_ref()
            .map(|e| format!("last tick failed: {e}"))
            .or_else(|| (!down.is_empty()).then(|| format!("restarting: {}", down.join(", "))));
        let line = status_line(
            statuses.iter().filter(|d| d.state != "shut off").count(),
            statuses
                .iter()
                .filter(|d| d.persona.is_some() && !d.would)
                .count(),
            catalog.personas().len(),
            rec.dry_run(),
            problem
                .as_deref()
                .or(rec.observing().filter(|_| !rec.dry_run())),
        );
        if rec.ticks() > 0 && !notifier.is_ready() {
            notifier.ready(&line);
            info!("ready");
        } else {
            notifier.status(&line);
        }
        // what GET /v1/domains answers, without asking the loop each time
        shared.publish_domains(domains_body(&rec));
        shared.publish_names(exec::domain_names(&rec));
        // new events go to the metrics and to every event-stream subscriber
        let recorded = rec.take_events();
        if !recorded.is_empty() {
            metrics.events(&recorded);
            for e in &recorded {
                // to every event-stream client; one that falls too far behind
                // is dropped by the server, a vanished one holds nothing
                shared.publish_event(&event_json(e));
            }
        }
        // a helper that ended is started again once its backoff is over
        if let Some(r) = worker.restart_if_due(now_ms()) {
            match r {
                Ok(()) => warn!(
                    restarts = worker.status().restarts,
                    "forecast worker started again"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "the forecast worker cannot be started again; trying later")
                }
            }
        }
        if let Some(g) = gossip.as_mut() {
            g.restart_if_due(rt.handle(), now_ms());
        }
        rec.set_helpers(
            std::iter::once(worker.status().clone())
                .chain(gossip.as_ref().map(|g| g.node.status().clone()))
                .collect(),
        );
        let fit_news = worker.news();
        let gossip_ended = gossip
            .as_ref()
            .map(|g| g.node.ended())
            .unwrap_or_else(crossbeam_channel::never);
        select! {
            recv(ticker) -> _ => {
                fresh_fits = false;
                log_tick(run_tick(&mut rec));
                feed(&mut rec, &mut worker);
                if let Some(g) = gossip.as_mut() {
                    g.exchange(&mut rec, &catalog, &cfg.node_name, started, now_ms());
                }
            }
            recv(cluster_news) -> _ => {
                if let Some(g) = gossip.as_mut() {
                    g.take(&mut rec, &cfg.node_name, now_ms());
                }
            }
            recv(gossip_ended) -> why => {
                if let Some(g) = gossip.as_mut() {
                    g.ended(why.unwrap_or_else(|_| "ended".into()), now_ms());
                }
            }
            recv(fit_news) -> news => match news {
                Ok(n) => {
                    rec.set_forecast(n.key, n.state);
                    fresh_fits = true;
                }
                // its thread ended: the loop goes on, the worker comes back
                Err(_) => {
                    let why = worker.ended(now_ms());
                    tracing::error!(%why, retry_at = ?worker.status().restart_at.map(virt_persona::time::rfc3339), "the forecast worker stopped; forecasts are frozen until it is started again, domains are still controlled");
                }
            },
            recv(watchdog) -> _ => notifier.watchdog(),
            recv(events) -> ev => match ev {
                Ok(HypervisorEvent::Lifecycle { name, kind, .. }) => {
                    info!(domain = %name, event = ?kind, "domain lifecycle event");
                    rec.mark_stale();
                    // a domain that starts gets its persona now, not a tick later
                    log_tick(run_tick(&mut rec));
                    // and the cluster hears of it now (a domain that left by
                    // migration is continued on its new host at once)
                    if let Some(g) = gossip.as_mut() {
                        g.exchange(&mut rec, &catalog, &cfg.node_name, started, now_ms());
                    }
                }
                Ok(HypervisorEvent::Disconnected { reason }) => warn!(%reason, "libvirt connection lost"),
                Ok(HypervisorEvent::Reconnected) => {
                    info!("libvirt connection back");
                    rec.mark_stale();
                    // what this host can apply is learned again on the new connection
                    rec.relearn();
                }
                Err(_) => std::thread::sleep(StdDuration::from_millis(100)),
            },
            recv(persona_changes) -> _ => {
                reload(&mut catalog, "file change");
                rec.set_personas(catalog.personas());
            }
            recv(cmd_rx) -> env => {
                // fits reported before this request was sent are in force
                // for it (an import answers after its series' refit), and
                // decided on: explain and list show what they say
                while let Ok(n) = fit_news.try_recv() {
                    rec.set_forecast(n.key, n.state);
                    fresh_fits = true;
                }
                if std::mem::take(&mut fresh_fits) {
                    log_tick(run_tick(&mut rec));
                }
                if let Ok(env) = env {
                    let env = match env.command {
                        Command::ImportHistory { batch, retime } => {
                            import_history(&worker, batch, retime, env.reply);
                            continue;
                        }
                        command => Envelope { command, reply: env.reply },
                    };
                    if let (Command::Cluster, Some(g)) = (&env.command, gossip.as_ref()) {
                        let view = {
                            let i = g.shared.lock();
                            let cluster_now = i.clock.now(steady_ms());
                            virt_persona::cluster::view(&i, now_ms(), cluster_now)
                        };
                        let _ = env.reply.send(Reply::Ok(view));
                        continue;
                    }
                    if let Command::ListSources = &env.command {
                        let _ = env.reply.send(Reply::Ok(sources_json(&sources.board().snapshot())));
                        continue;
                    }
                    let cluster_signal = matches!(env.command, Command::SetSignal { cluster: true, .. });
                    let cluster_source = matches!(&env.command, Command::SourceValues { batches } if batches.iter().any(|b| b.cluster))
                        || matches!(&env.command, Command::Alerts { alerts, .. } if alerts.iter().any(|a| a.cluster));
                    let withdrawn = matches!(env.command, Command::UnsetSignal { .. });
                    let alerts = matches!(env.command, Command::Alerts { .. });
                    let from_source = matches!(env.command, Command::SourceValues { .. });
                    let reply = match env.command {
                        Command::Metrics => {
                            let signals = rec.live_signals(now_ms()).len();
                            metrics.forecasts(rec.forecasts(), |uuid| rec.entry(uuid).map(|e| e.info.name.clone()));
                            if let Some(g) = gossip.as_ref() {
                                metrics.gossip(&g.shared.lock());
                            }
                            metrics.helpers(rec.helpers());
                            metrics.sources(&sources.board().snapshot());
                            metrics.api(&api.connections());
                            metrics.limits(&[
                                virt_persona::metrics::Usage {
                                    limit: "history_series",
                                    used: history_series.load(std::sync::atomic::Ordering::Relaxed) as u64,
                                    max: cfg.limits.history_series as u64,
                                },
                                virt_persona::metrics::Usage {
                                    limit: "signals",
                                    used: rec.signal_count(now_ms()) as u64,
                                    max: cfg.limits.signals as u64,
                                },
                                virt_persona::metrics::Usage {
                                    limit: "event_streams",
                                    used: shared.event_clients() as u64,
                                    max: (server::MAX_EVENT_STREAMS + if api.tcp_addr.is_some() { server::MAX_EVENT_STREAMS_PER_TOKEN } else { 0 }) as u64,
                                },
                            ]);
                            metrics.state(&rec.statuses(), catalog.personas().len(), catalog.errors().len(), signals, hv.is_connected());
                            Reply::Text(metrics.render())
                        }
                        cmd => exec::execute(&mut rec, &mut catalog, &*hv, cmd, now_ms()),
                    };
                    // a cluster signal set or withdrawn here is published to every host at once
                    if let (Reply::Ok(v), Some(g)) = (&reply, gossip.as_mut()) {
                        if cluster_signal {
                            g.set_local_signal(v);
                        }
                        if withdrawn && v["scope"] == "cluster" {
                            g.withdraw_local_signal(v);
                        }
                        if cluster_source {
                            for v in v["set"].as_array().into_iter().flatten() {
                                if v["scope"] == "cluster" {
                                    g.set_local_signal(v);
                                }
                            }
                            for v in v["ended"].as_array().into_iter().flatten() {
                                if v["scope"] == "cluster" {
                                    g.withdraw_local_signal(v);
                                }
                            }
                        }
                        if cluster_signal || withdrawn || cluster_source {
                            g.exchange(&mut rec, &catalog, &cfg.node_name, started, now_ms());
                        }
                    }
                    if let (Reply::Ok(v), true) = (&reply, alerts) {
                        for e in v["errors"].as_array().into_iter().flatten() {
                            warn!(error = %e.as_str().unwrap_or_default(), "an Alertmanager alert was not taken");
                        }
                    }
                    // a client that changed something and lists next sees its
                    // change (a source's values change no domain until a tick)
                    if !from_source {
                        shared.publish_domains(domains_body(&rec));
                        shared.publish_names(exec::domain_names(&rec));
                    }
                    let _ = env.reply.send(reply);
                }
            }
            recv(sig_rx) -> s => match s {
                Ok(signal_hook::consts::SIGHUP) => {
                    notifier.reloading();
                    reload(&mut catalog, "SIGHUP");
                    rec.set_personas(catalog.personas());
                    // dry_run is the setting a reload switches (--dry-run on the command
                    // line wins); any other change is named, not silently kept
                    match load_config(config_file, config_named, flags.clone()) {
                        Ok(new) => {
                            let later = cfg.needs_restart(&new);
                            if !later.is_empty() {
                                warn!(settings = %later.join(", "), "changed in the config file; they take effect after a restart (systemctl restart virt-personad), the values in force are kept until then");
                            }
                            if new.dry_run != rec.dry_run() {
                                if new.dry_run {
                                    warn!("dry run on (reload): deciding and recording only, no domain will be changed");
                                } else {
                                    info!("dry run off (reload): acting from the next tick");
                                }
                                rec.set_dry_run(new.dry_run);
                                metrics.dry_run(new.dry_run);
                            }
                            if new.forecast_observe != cfg.forecast_observe {
                                info!(observe = new.forecast_observe, "forecast_mode switched (reload)");
                            }
                            rec.set_forecast_observe(new.forecast_observe);
                            sources.apply(&new.sources);
                        }
                        Err(e) => warn!(error = %e, "config file not reloaded; the settings in force are kept"),
                    }
                    // a key rotates without a restart: the key file is read again
                    if let (Some(g), Some(path)) = (gossip.as_mut(), cfg.gossip_key_file.as_ref()) {
                        match virt_persona::config::read_key_file(path) {
                            Ok(ring) => {
                                info!(keys = ring.len(), ids = %ring.ids().join(","), "gossip key file reloaded");
                                // a restarted node starts with the keys in force
                                g.node.set_keys(ring);
                            }
                            Err(e) => warn!(error = %e, "gossip key file not reloaded; the keys in force are kept"),
                        }
                    }
                    // the admin may have changed the host (loaded a qdisc module): learn again
                    rec.relearn();
                    notifier.reloaded();
                }
                s => {
                    notifier.stopping();
                    let revert = cfg.revert_on_exit || s == Ok(signal_hook::consts::SIGUSR2);
                    if revert {
                        match rec.revert_all(now_ms()) {
                            Ok((n, failures)) if failures.is_empty() => {
                                info!(domains = n, "baselines restored (--revert-on-exit)")
                            }
                            Ok((n, failures)) => warn!(
                                restored = n,
                                failed = failures.len(),
                                failures = %failures.join(" | "),
                                "some baselines could not be restored on exit; their originals are kept"
                            ),
                            Err(e) => warn!(error = %e, "restoring baselines on exit failed"),
                        }
                    }
                    // open requests get their answers (for up to 5 s), new ones are refused
                    api.begin_stop();
                    let deadline = std::time::Instant::now() + StdDuration::from_secs(5);
                    while !api.stopped() && std::time::Instant::now() < deadline {
                        if let Ok(env) = cmd_rx.recv_timeout(StdDuration::from_millis(20)) {
                            let reply = exec::execute(&mut rec, &mut catalog, &*hv, env.command, now_ms());
                            let _ = env.reply.send(reply);
                        }
                    }
                    info!("stopping");
                    drop(cmd_rx);
                    // leave the cluster politely: the others see it gone at once
                    if let Some(g) = gossip.as_ref() {
                        g.node.send(cluster::node::ToNode::Stop);
                        std::thread::sleep(StdDuration::from_millis(100));
                    }
                    // the open minute of history is written before the thread ends
                    worker.stop();
                    rt.shutdown_timeout(StdDuration::from_millis(500));
                    return Ok(());
                }
            },
        }
    }
}
