//! Every request a client can make, and the replies. The daemon's loop thread
//! executes commands between ticks, so no request races a transition.

use serde::Serialize;
use serde_json::Value;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    ListDomains,
    GetDomain { name: String },
    History { name: String, since: i64 },
    Explain { name: String },
    ListPersonas,
    Health,
}

/// The daemon's answer: a JSON value, or an error with an HTTP-like status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Reply {
    Ok(Value),
    Err { status: u16, message: String },
}

impl Reply {
    pub fn not_found(what: impl Into<String>) -> Reply {
        Reply::Err {
            status: 404,
            message: what.into(),
        }
    }
}

/// A command with the channel its reply goes back on.
pub struct Envelope {
    pub command: Command,
    pub reply: crossbeam_channel::Sender<Reply>,
}
