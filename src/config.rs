//! Daemon configuration (SPEC §2): defaults, the optional TOML file, and
//! command-line flags, in that order of precedence (flags win).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::logging::LogFormat;
use crate::units::Duration;

pub const DEFAULT_CONFIG: &str = "/etc/virt-persona/virt-personad.toml";
pub const DEFAULT_PERSONAS: &str = "/etc/virt-persona/personas.d";
pub const DEFAULT_STATE: &str = "/var/lib/virt-persona";
pub const DEFAULT_SOCKET: &str = "/run/virt-persona/api.sock";
pub const DEFAULT_URI: &str = "qemu:///system";

/// Errors reading or checking the daemon configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("API token file {path}: {message}")]
    Token { path: PathBuf, message: String },
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
}

/// `[signals]`: the sources the daemon polls itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalsSection {
    #[serde(default)]
    source: Vec<crate::sources::SourceFile>,
}

/// Reads the TCP API's bearer token. The file must be a regular file (not a
/// link) owned by root or the daemon's user and readable by its owner only
/// (the token is a password), and the token at least 16 characters.
pub fn read_token_file(path: &Path) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError::Token {
        path: path.to_path_buf(),
        message,
    };
    let token = crate::files::read_secret(path)
        .map_err(|e| err(e.to_string()))?
        .trim()
        .to_string();
    if token.len() < 16 {
        return Err(err("the token is shorter than 16 characters".into()));
    }
    Ok(token)
}

/// Reads the gossip key file: a regular file owned by root or the daemon's
/// user, mode 0600 (or stricter), one key per line
/// (see [`crate::cluster::seal::KeyRing::parse`]).
pub fn read_key_file(path: &Path) -> Result<crate::cluster::seal::KeyRing, ConfigError> {
    let err = |message: String| ConfigError::Invalid {
        key: "gossip.key_file",
        message: format!("{}: {message}", path.display()),
    };
    let text = crate::files::read_secret(path).map_err(|e| err(e.to_string()))?;
    crate::cluster::seal::KeyRing::parse(&text).map_err(|e| err(e.to_string()))
}

/// Creates the state directory readable by root only (it holds every
/// domain's original tuning); an existing one is left as the admin made it.
pub fn create_state_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiSection {
    socket: Option<PathBuf>,
    listen: Option<String>,
    token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GossipSection {
    listen: Option<String>,
    advertise: Option<String>,
    #[serde(default)]
    seeds: Vec<String>,
    key_file: Option<PathBuf>,
    cluster: Option<String>,
    expected_hosts: Option<u64>,
    signal_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    history_series: Option<u64>,
    import_series: Option<u64>,
    import_rows: Option<u64>,
    import_foreign_domains: Option<u64>,
    signals: Option<u64>,
    signal_ttl: Option<String>,
}

/// What the daemon keeps at most (`[limits]`): what a client may make it
/// hold. Each is refused with the setting's name when passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Series in the history after an import (the host's own domains are
    /// always recorded).
    pub history_series: usize,
    pub import: crate::history::ImportLimits,
    /// Signals set at once (host and cluster).
    pub signals: usize,
    /// The longest TTL a signal may be given, in milliseconds.
    pub signal_ttl_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            history_series: 10_000,
            import: Default::default(),
            signals: 1_000,
            signal_ttl_ms: 30 * 86_400_000,
        }
    }
}

impl LimitsSection {
    fn resolve(&self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let count = |key: &'static str, v: Option<u64>, default: usize, max: u64| match v {
            None => Ok(default),
            Some(n) if (1..=max).contains(&n) => Ok(n as usize),
            Some(n) => Err(ConfigError::Invalid {
                key,
                message: format!("{n} is out of range: expected 1 to {max}"),
            }),
        };
        let signal_ttl_ms = match self.signal_ttl.as_deref() {
            None => d.signal_ttl_ms,
            Some(s) => {
                let t = duration("limits.signal_ttl", s)?;
                if t.as_std() > std::time::Duration::from_secs(366 * 86_400) {
                    return Err(ConfigError::Invalid {
                        key: "limits.signal_ttl",
                        message: format!("{t} is out of range: expected at most 366d"),
                    });
                }
                t.as_std().as_millis() as i64
            }
        };
        Ok(Limits {
            history_series: count(
                "limits.history_series",
                self.history_series,
                d.history_series,
                1_000_000,
            )?,
            import: crate::history::ImportLimits {
                series: count(
                    "limits.import_series",
                    self.import_series,
                    d.import.series,
                    1_000_000,
                )?,
                rows: count(
                    "limits.import_rows",
                    self.import_rows,
                    d.import.rows,
                    100_000_000,
                )?,
                foreign_domains: count(
                    "limits.import_foreign_domains",
                    self.import_foreign_domains,
                    d.import.foreign_domains,
                    100_000,
                )?,
            },
            signals: count("limits.signals", self.signals, d.signals, 1_000_000)?,
            signal_ttl_ms,
        })
    }
}

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    personas_dir: Option<PathBuf>,
    personas_follow_links: Option<bool>,
    state_dir: Option<PathBuf>,
    connect: Option<String>,
    interval: Option<String>,
    verify_interval: Option<String>,
    revert_on_exit: Option<bool>,
    dry_run: Option<bool>,
    history_retention: Option<String>,
    forecast_mode: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    node_name: Option<String>,
    #[serde(default)]
    api: ApiSection,
    #[serde(default)]
    gossip: GossipSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    signals: SignalsSection,
}

/// Values given on the command line; `None` = not given.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub personas_dir: Option<PathBuf>,
    pub personas_follow_links: bool,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub connect: Option<String>,
    pub interval: Option<Duration>,
    pub verify_interval: Option<Duration>,
    pub revert_on_exit: bool,
    pub dry_run: bool,
    pub history_retention: Option<Duration>,
    pub forecast_observe: bool,
    pub log_format: Option<LogFormat>,
    pub node_name: Option<String>,
    pub gossip_listen: Option<String>,
    /// The address other hosts reach this one at (`ADDR[:PORT]`); by default
    /// the listen address, or for a wildcard listener the one the route to
    /// the first seed uses.
    pub gossip_advertise: Option<String>,
    pub gossip_seeds: Vec<String>,
    pub gossip_key_file: Option<PathBuf>,
    pub gossip_cluster: Option<String>,
    pub api_listen: Option<String>,
    pub api_token_file: Option<PathBuf>,
    pub api_tls_cert: Option<PathBuf>,
    pub api_tls_key: Option<PathBuf>,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub personas_dir: PathBuf,
    /// Persona files that are symbolic links are read through them (off by
    /// default: root then reads wherever a link points).
    pub personas_follow_links: bool,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub connect: String,
    pub interval: Duration,
    pub verify_interval: Duration,
    pub revert_on_exit: bool,
    /// Observe only: decide and record, never write to libvirt.
    pub dry_run: bool,
    /// How long metric history is kept for forecasts (default 14 days).
    pub history_retention: Duration,
    /// `forecast_mode = "observe"`: forecasts never activate a persona, they
    /// are logged and explained as "would have activated" (a reload switches it).
    pub forecast_observe: bool,
    /// A tracing filter (`info`, `debug`, `virt_persona=debug` …); the
    /// environment (`VIRT_PERSONA_LOG`, `RUST_LOG`) wins over it.
    pub log_level: Option<String>,
    pub log_format: LogFormat,
    pub node_name: String,
    pub gossip_listen: Option<String>,
    /// The address other hosts reach this one at (`ADDR[:PORT]`); by default
    /// the listen address, or for a wildcard listener the one the route to
    /// the first seed uses.
    pub gossip_advertise: Option<String>,
    pub gossip_seeds: Vec<String>,
    pub gossip_key_file: Option<PathBuf>,
    /// Bound into every gossip packet: hosts of another cluster never mix.
    pub gossip_cluster: String,
    /// The cluster size foca's timings and queues are tuned for (the
    /// simulation's figures use the same constructor with its size).
    pub gossip_expected_hosts: usize,
    /// How long a dead host's cluster signals outlive it (unless another
    /// host sets them again).
    pub gossip_signal_grace_ms: i64,
    pub api_listen: Option<String>,
    pub api_token_file: Option<PathBuf>,
    /// TLS for the TCP API: a PEM certificate chain and its key.
    pub api_tls: Option<(PathBuf, PathBuf)>,
    pub limits: Limits,
    /// `[[signals.source]]`, checked (a reload starts and stops them).
    pub sources: Vec<crate::sources::SourceConfig>,
}

impl Config {
    /// The settings that differ in `new` and only take effect after a
    /// restart: everything but `dry_run` (which a reload switches). A reload
    /// names them instead of silently keeping the old values.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |name: &'static str, differs: bool| {
            if differs {
                out.push(name);
            }
        };
        check("personas_dir", self.personas_dir != new.personas_dir);
        check(
            "personas_follow_links",
            self.personas_follow_links != new.personas_follow_links,
        );
        check("state_dir", self.state_dir != new.state_dir);
        check("api.socket", self.socket != new.socket);
        check("connect", self.connect != new.connect);
        check("interval", self.interval != new.interval);
        check(
            "verify_interval",
            self.verify_interval != new.verify_interval,
        );
        check("revert_on_exit", self.revert_on_exit != new.revert_on_exit);
        check(
            "history_retention",
            self.history_retention != new.history_retention,
        );
        check("log_level", self.log_level != new.log_level);
        check("log_format", self.log_format != new.log_format);
        check("node_name", self.node_name != new.node_name);
        check(
            "gossip",
            self.gossip_listen != new.gossip_listen
                || self.gossip_advertise != new.gossip_advertise
                || self.gossip_seeds != new.gossip_seeds
                || self.gossip_key_file != new.gossip_key_file
                || self.gossip_cluster != new.gossip_cluster
                || self.gossip_expected_hosts != new.gossip_expected_hosts
                || self.gossip_signal_grace_ms != new.gossip_signal_grace_ms,
        );
        check(
            "api.listen / api.token_file / api.tls_*",
            self.api_listen != new.api_listen
                || self.api_token_file != new.api_token_file
                || self.api_tls != new.api_tls,
        );
        check("limits", self.limits != new.limits);
        out
    }
}

fn duration(key: &'static str, s: &str) -> Result<Duration, ConfigError> {
    let d: Duration = s
        .parse()
        .map_err(|e: crate::units::UnitError| ConfigError::Invalid { key, message: e.0 })?;
    if d.as_std().is_zero() {
        return Err(ConfigError::Invalid {
            key,
            message: "must be greater than zero".into(),
        });
    }
    Ok(d)
}

impl FileConfig {
    /// `dry_run` as the file says it (what a reload switches).
    pub fn dry_run(&self) -> bool {
        self.dry_run.unwrap_or(false)
    }

    /// Reads the config file. A missing file at the default path is no error.
    pub fn load(path: &Path, explicit: bool) -> Result<FileConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(FileConfig::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (l, c) = crate::model::line_col(&text, s.start);
                    format!("{l}:{c}: ")
                })
                .unwrap_or_default();
            ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("{at}{}", e.message()),
            }
        })
    }
}

/// The host name, for the default node name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

impl Config {
    /// Merges defaults, file and flags, and checks the result.
    pub fn resolve(file: FileConfig, o: Overrides) -> Result<Config, ConfigError> {
        let interval = match (o.interval, file.interval.as_deref()) {
            (Some(d), _) => d,
            (None, Some(s)) => duration("interval", s)?,
            (None, None) => Duration::from_secs(5),
        };
        let verify_interval = match (o.verify_interval, file.verify_interval.as_deref()) {
            (Some(d), _) => d,
            (None, Some(s)) => duration("verify_interval", s)?,
            (None, None) => Duration::from_secs(30),
        };
        for (key, d) in [("interval", interval), ("verify_interval", verify_interval)] {
            if d.as_std().is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be greater than zero".into(),
                });
            }
        }
        let history_retention = match (o.history_retention, file.history_retention.as_deref()) {
            (Some(d), _) => d,
            (None, Some(s)) => duration("history_retention", s)?,
            (None, None) => Duration::from_secs(14 * 86_400),
        };
        let two_days = std::time::Duration::from_secs(2 * 86_400);
        if history_retention.as_std() < two_days
            || history_retention.as_std() > std::time::Duration::from_secs(366 * 86_400)
        {
            return Err(ConfigError::Invalid {
                key: "history_retention",
                message: format!(
                    "{history_retention} is out of range: expected 2d to 366d (a forecast needs two days of history)"
                ),
            });
        }
        let forecast_observe = o.forecast_observe
            || match file.forecast_mode.as_deref() {
                None | Some("act") => false,
                Some("observe") => true,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        key: "forecast_mode",
                        message: format!("expected \"act\" or \"observe\", found \"{other}\""),
                    })
                }
            };
        let cfg = Config {
            history_retention,
            forecast_observe,
            personas_follow_links: o.personas_follow_links
                || file.personas_follow_links.unwrap_or(false),
            personas_dir: o
                .personas_dir
                .or(file.personas_dir)
                .unwrap_or_else(|| DEFAULT_PERSONAS.into()),
            state_dir: o
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE.into()),
            socket: o
                .socket
                .or(file.api.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            connect: o
                .connect
                .or(file.connect)
                .unwrap_or_else(|| DEFAULT_URI.into()),
            interval,
            verify_interval,
            revert_on_exit: o.revert_on_exit || file.revert_on_exit.unwrap_or(false),
            dry_run: o.dry_run || file.dry_run.unwrap_or(false),
            log_level: file.log_level,
            log_format: match o.log_format {
                Some(f) => f,
                None => match file.log_format.as_deref() {
                    Some(s) => s.parse().map_err(|message| ConfigError::Invalid {
                        key: "log_format",
                        message,
                    })?,
                    None => LogFormat::Auto,
                },
            },
            node_name: o.node_name.or(file.node_name).unwrap_or_else(hostname),
            gossip_listen: o.gossip_listen.or(file.gossip.listen),
            gossip_advertise: o.gossip_advertise.or(file.gossip.advertise),
            gossip_seeds: if o.gossip_seeds.is_empty() {
                file.gossip.seeds
            } else {
                o.gossip_seeds
            },
            gossip_key_file: o.gossip_key_file.or(file.gossip.key_file),
            gossip_cluster: o
                .gossip_cluster
                .or(file.gossip.cluster)
                .unwrap_or_else(|| "virt-persona".into()),
            gossip_expected_hosts: match file.gossip.expected_hosts {
                None => 16,
                Some(n @ 1..=100_000) => n as usize,
                Some(n) => {
                    return Err(ConfigError::Invalid {
                        key: "gossip.expected_hosts",
                        message: format!("{n} is out of range: expected 1..100000 (about the number of hosts in the cluster)"),
                    })
                }
            },
            gossip_signal_grace_ms: match file.gossip.signal_grace.as_deref() {
                None => crate::cluster::exchange::DEFAULT_SIGNAL_GRACE_MS,
                Some(s) => {
                    let d = duration("gossip.signal_grace", s)?.as_std().as_millis() as i64;
                    if !(1_000..=7 * 86_400_000).contains(&d) {
                        return Err(ConfigError::Invalid {
                            key: "gossip.signal_grace",
                            message: format!("{s} is out of range: expected 1s to 7d"),
                        });
                    }
                    d
                }
            },
            api_listen: o.api_listen.or(file.api.listen),
            api_token_file: o.api_token_file.or(file.api.token_file),
            api_tls: match (
                o.api_tls_cert.or(file.api.tls_cert),
                o.api_tls_key.or(file.api.tls_key),
            ) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(ConfigError::Invalid {
                        key: "api.tls_key",
                        message: "api.tls_cert is set: give its private key too (--api-tls-key)"
                            .into(),
                    })
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Invalid {
                        key: "api.tls_cert",
                        message:
                            "api.tls_key is set: give its certificate chain too (--api-tls-cert)"
                                .into(),
                    })
                }
            },
            limits: file.limits.resolve()?,
            sources: crate::sources::check_all(&file.signals.source)?,
        };
        if cfg.api_tls.is_some() && cfg.api_listen.is_none() {
            return Err(ConfigError::Invalid {
                key: "api.tls_cert",
                message: "TLS is for the TCP API, which is off: set api.listen (--api-listen) too"
                    .into(),
            });
        }
        if cfg.gossip_listen.is_some() && cfg.gossip_key_file.is_none() {
            return Err(ConfigError::Invalid {
                key: "gossip.key_file",
                message: "gossip is on (gossip.listen) but no shared key is configured; make one with 'virt-persona gossip-keygen FILE'".into(),
            });
        }
        if cfg.api_listen.is_some() && cfg.api_token_file.is_none() {
            return Err(ConfigError::Invalid {
                key: "api.token_file",
                message: "the TCP API (api.listen) needs a bearer token file".into(),
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_what_needs_a_restart() {
        let a = Config::resolve(FileConfig::default(), Overrides::default()).unwrap();
        let file: FileConfig =
            toml::from_str("interval = \"10s\"\ndry_run = true\nlog_level = \"debug\"\n").unwrap();
        let b = Config::resolve(file, Overrides::default()).unwrap();
        assert!(b.dry_run);
        assert_eq!(a.needs_restart(&b), vec!["interval", "log_level"]);
        assert!(a.needs_restart(&a).is_empty());
    }

    #[test]
    fn the_shipped_example_config_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/virt-personad.toml.example");
        let file = FileConfig::load(&p, true).unwrap();
        assert!(file.dry_run(), "the package starts observing");
        let cfg = Config::resolve(file, Overrides::default()).unwrap();
        assert_eq!(cfg.log_format, LogFormat::Auto);
        assert_eq!(cfg.connect, "qemu:///system");
    }

    #[test]
    fn token_files_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("token");
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_token_file(&f).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token_file(&f).unwrap(), "0123456789abcdef0123");
        std::fs::write(&f, "short\n").unwrap();
        assert!(read_token_file(&f)
            .unwrap_err()
            .to_string()
            .contains("shorter than 16"));
    }

    #[test]
    fn the_state_dir_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("a/b/state");
        create_state_dir(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        create_state_dir(&state).unwrap();
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let file: FileConfig = toml::from_str(
            "connect = \"test:///default\"\ninterval = \"10s\"\n[api]\nsocket = \"/tmp/a.sock\"\n",
        )
        .unwrap();
        let o = Overrides {
            interval: Some("1s".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::resolve(file, o).unwrap();
        assert_eq!(c.connect, "test:///default");
        assert_eq!(c.interval, "1s".parse().unwrap());
        assert_eq!(c.verify_interval, "30s".parse().unwrap());
        assert_eq!(c.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.personas_dir, PathBuf::from(DEFAULT_PERSONAS));
    }

    #[test]
    fn the_shipped_example_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/virt-personad.toml.example");
        let c = Config::resolve(FileConfig::load(&p, true).unwrap(), Overrides::default()).unwrap();
        assert_eq!(c.connect, DEFAULT_URI);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn bad_files_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "connect = \"x\"\nintervall = \"5s\"\n").unwrap();
        let e = FileConfig::load(&p, true).unwrap_err().to_string();
        assert!(e.contains("c.toml: 2:1: unknown field `intervall`"), "{e}");
        std::fs::write(&p, "interval = \"5 parsecs\"\n").unwrap();
        let e = Config::resolve(FileConfig::load(&p, true).unwrap(), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("interval: unknown duration unit"), "{e}");
        assert!(FileConfig::load(&dir.path().join("none.toml"), false).is_ok());
        assert!(FileConfig::load(&dir.path().join("none.toml"), true).is_err());
        let gossip: FileConfig = toml::from_str("[gossip]\nlisten = \"127.0.0.1:7946\"\n").unwrap();
        assert!(Config::resolve(gossip, Overrides::default())
            .unwrap_err()
            .to_string()
            .contains("gossip-keygen"));
    }

    /// A config file's text, resolved without flags.
    fn resolve(text: &str) -> Result<Config, ConfigError> {
        let f: FileConfig = toml::from_str(text).expect("parses");
        Config::resolve(f, Overrides::default())
    }

    #[test]
    fn gossip_signal_grace_is_a_checked_duration() {
        assert_eq!(resolve("").unwrap().gossip_signal_grace_ms, 300_000);
        assert_eq!(
            resolve("[gossip]\nsignal_grace = \"1h\"\n")
                .unwrap()
                .gossip_signal_grace_ms,
            3_600_000
        );
        let e = resolve("[gossip]\nsignal_grace = \"8d\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gossip.signal_grace"), "{e}");
    }

    #[test]
    fn gossip_expected_hosts_sizes_foca_and_is_checked() {
        assert_eq!(resolve("").unwrap().gossip_expected_hosts, 16);
        assert_eq!(
            resolve("[gossip]\nexpected_hosts = 1000\n")
                .unwrap()
                .gossip_expected_hosts,
            1000
        );
        let e = resolve("[gossip]\nexpected_hosts = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gossip.expected_hosts") && e.contains("1..100000"),
            "{e}"
        );
    }

    #[test]
    fn gossip_advertise_comes_from_the_file_and_a_flag_wins() {
        let f: FileConfig = toml::from_str(
            "[gossip]\nlisten = \"0.0.0.0:7946\"\nadvertise = \"10.0.0.11\"\nkey_file = \"/k\"\n",
        )
        .unwrap();
        let c = Config::resolve(f, Overrides::default()).unwrap();
        assert_eq!(c.gossip_advertise.as_deref(), Some("10.0.0.11"));
        let f: FileConfig = toml::from_str(
            "[gossip]\nlisten = \"0.0.0.0:7946\"\nadvertise = \"10.0.0.11\"\nkey_file = \"/k\"\n",
        )
        .unwrap();
        let o = Overrides {
            gossip_advertise: Some("10.0.0.12:7000".into()),
            ..Default::default()
        };
        let c = Config::resolve(f, o).unwrap();
        assert_eq!(c.gossip_advertise.as_deref(), Some("10.0.0.12:7000"));
    }

    #[test]
    fn history_retention_and_forecast_mode_are_checked() {
        let c = resolve("").unwrap();
        assert_eq!(c.history_retention, "14d".parse().unwrap());
        assert!(!c.forecast_observe);
        let e = resolve("history_retention = \"1d\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("history_retention") && e.contains("2d to 366d"),
            "{e}"
        );
        assert!(
            resolve("forecast_mode = \"observe\"\n")
                .unwrap()
                .forecast_observe
        );
        let e = resolve("forecast_mode = \"maybe\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("forecast_mode") && e.contains("\"maybe\""),
            "{e}"
        );
        let c = resolve("history_retention = \"30d\"\n").unwrap();
        let d = resolve("").unwrap();
        assert_eq!(c.needs_restart(&d), ["history_retention"]);
    }
}
