//! Every request a client can make, and the replies. The daemon's loop thread
//! executes commands between ticks, so no request races a transition.

use serde::Serialize;
use serde_json::Value;

/// A request to the daemon: the whole control surface.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Health,
    ListDomains,
    GetDomain {
        name: String,
    },
    Explain {
        name: String,
    },
    /// A domain's transitions at or after `since`: the newest `limit` of them.
    History {
        name: String,
        since: i64,
        limit: usize,
    },
    /// The domain's current tuning, read through libvirt.
    Tuning {
        name: String,
    },
    /// Events of every domain since a time (`None`: the last hour): the
    /// newest `limit` of them (older ones: ask again with `since` moved).
    RecentEvents {
        since: Option<i64>,
        limit: usize,
    },
    /// Manual activation; `for_ms` none = until reverted.
    Activate {
        name: String,
        persona: String,
        for_ms: Option<i64>,
    },
    Revert {
        name: String,
    },
    ListPersonas,
    GetPersona {
        id: String,
    },
    /// Define or replace a persona from TOML text (written as a file).
    PutPersona {
        id: String,
        toml: String,
        /// The persona parsed from `toml` (off the loop's thread); `None`:
        /// the loop parses it.
        parsed: Option<std::sync::Arc<crate::model::persona::Persona>>,
    },
    DeletePersona {
        id: String,
    },
    ValidatePersona {
        toml: String,
    },
    SetSignal {
        name: String,
        value: f64,
        ttl_ms: i64,
        domain: Option<String>,
        cluster: bool,
    },
    /// `signal-unset`: a signal removed here (a cluster one withdrawn on
    /// every host).
    UnsetSignal {
        name: String,
        domain: Option<String>,
    },
    ListSignals,
    /// What a signal source polled (`[[signals.source]]`): one signal,
    /// host-wide (`None`) or per domain (a name or UUID), set like
    /// [`Command::SetSignal`]; a domain not on this host is named in the
    /// answer's `unmatched`, not an error.
    SourceValues {
        batches: Vec<SourceBatch>,
    },
    /// Every signal source and how it fares (answered by the loop).
    ListSources,
    /// An Alertmanager webhook's alerts: a firing one sets its signal
    /// (until the alert's `endsAt`), a resolved one ends it.
    Alerts {
        alerts: Vec<AlertSignal>,
        /// How long a firing alert's signal lives when the alert has no
        /// `endsAt` (Alertmanager sends none for firing alerts): until the
        /// next notification is due (`?ttl=`, default 4h 15m: Alertmanager
        /// re-sends a firing alert every `repeat_interval`, 4h by default).
        ttl_ms: i64,
        /// Alerts that name no usable signal, said why (answered, not retried).
        errors: Vec<String>,
    },
    Metrics,
    /// A domain's forecast of one metric, `horizon_ms` ahead.
    Forecast {
        name: String,
        metric: String,
        horizon_ms: i64,
    },
    /// Seed history from a CSV (`timestamp,domain,metric,value`), read and
    /// checked off the loop's thread. Answered by the daemon's loop and its
    /// forecast worker, not by `exec`.
    ImportHistory {
        batch: crate::history::ImportBatch,
        /// Shift every time by one amount so the newest row ends now
        /// (`?retime=now`): a trace from elsewhere, as if it had just happened.
        retime: bool,
    },
    /// Every host of the cluster (answered by the loop with the gossip view).
    Cluster,
}

/// The daemon's answer.
#[derive(Debug, Clone)]
pub enum Reply {
    Ok(Value),
    /// Plain text (Prometheus metrics).
    Text(String),
    Err {
        status: u16,
        message: String,
    },
}

impl Reply {
    pub fn not_found(what: impl Into<String>) -> Reply {
        Reply::Err {
            status: 404,
            message: what.into(),
        }
    }
    pub fn bad(what: impl Into<String>) -> Reply {
        Reply::Err {
            status: 400,
            message: what.into(),
        }
    }
    pub fn conflict(what: impl Into<String>) -> Reply {
        Reply::Err {
            status: 409,
            message: what.into(),
        }
    }
}

/// A command with the channel its reply goes back on (to the API's runtime).
pub struct Envelope {
    pub command: Command,
    pub reply: tokio::sync::oneshot::Sender<Reply>,
}

/// Body of `POST /v1/domains/{name}/activate`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    pub persona: String,
    /// A duration like "15m"; absent = until reverted.
    #[serde(rename = "for")]
    pub for_: Option<String>,
}

/// One source's values of one poll: one signal, host-wide (`None`) or per
/// domain (a name or UUID).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceBatch {
    pub name: String,
    pub values: Vec<(Option<String>, f64)>,
    pub ttl_ms: i64,
    pub cluster: bool,
}

/// One alert of an Alertmanager webhook, as the signal it sets or ends.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSignal {
    pub name: String,
    pub value: f64,
    /// A domain by name or UUID (the alert's `domain` label); `None`: host-wide.
    pub domain: Option<String>,
    pub cluster: bool,
    pub firing: bool,
    /// When Alertmanager will consider it resolved (`endsAt`), if it says.
    pub ends_at: Option<crate::time::Millis>,
}

/// Body of `PUT /v1/signals/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalBody {
    pub value: f64,
    /// A duration like "5m" (default 5m).
    pub ttl: Option<String>,
    pub domain: Option<String>,
    /// "host" (default) or "cluster".
    pub scope: Option<String>,
}
