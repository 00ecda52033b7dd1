//! The cluster (SPEC §10): hosts share state through authenticated gossip on
//! `foca`. `state` is what a node publishes and the merge (pure), `seal` the
//! packet sealing (pure), `node` the only code on the network.

pub mod admit;
pub mod churn;
pub mod clock;
pub mod driver;
pub mod exchange;
pub mod node;
pub mod seal;
pub mod shared;
pub mod sim;
pub mod state;

use serde_json::{json, Value};

use crate::time::Millis;

use crate::time::rfc3339;

/// `GET /v1/cluster` and `cluster-status --json`: every host known, alive,
/// suspect or dead, last seen, version, digest (flagged when it differs
/// from the majority's), its domains and personas, its cluster signals.
/// `now` is this host's wall clock, `cluster_now` cluster time.
pub fn view(i: &node::Inner, now: Millis, cluster_now: Millis) -> Value {
    let majority = i.state.majority_digest();
    let mut hosts = Vec::new();
    for (name, n) in &i.state.nodes {
        let summary = n.summary.as_ref().map(|s| &s.1);
        let me = *name == i.me;
        let member = summary.and_then(|s| i.members.values().find(|m| m.addr == s.addr));
        let state = if me {
            "alive"
        } else {
            member.map(|m| m.state).unwrap_or("unknown")
        };
        let digest = summary.map(|s| s.digest.clone());
        let differs = match (&digest, &majority) {
            (Some(d), Some((m, _))) => d != m,
            _ => false,
        };
        let domains: Vec<Value> = n
            .domains
            .iter()
            .filter(|(_, (_, d))| d.running)
            .map(|(uuid, (_, d))| {
                json!({
                    "name": d.name,
                    "uuid": uuid,
                    "persona": d.persona,
                    "since": d.since.map(rfc3339),
                    "manual": d.manual.as_ref().map(|m| json!({"persona": m.persona, "until": m.until.map(rfc3339)})),
                })
            })
            .collect();
        // cluster time, shown on this host's clock
        let signals: Vec<Value> = n
            .signals
            .iter()
            .filter(|(_, (_, s))| s.expires > cluster_now)
            .map(|((name, d), (_, s))| json!({"name": name, "domain": d, "value": s.value, "expires": rfc3339(clock::on_wall(s.expires, now, cluster_now))}))
            .collect();
        hosts.push(json!({
            "name": name,
            "me": me,
            // a boolean for scripts (SPEC §8); the member state beside it
            "alive": state == "alive",
            "state": state,
            "addr": summary.map(|s| s.addr.clone()),
            "last_seen": if me {
                rfc3339(now)
            } else {
                let packet = summary
                    .and_then(|s| s.addr.parse().ok())
                    .and_then(|a| i.last_packet.get(&a).copied());
                rfc3339(packet.unwrap_or(0).max(n.last_heard))
            },
            "state_since": member.map(|m| rfc3339(m.since)),
            // how far its clock is ahead of this host's (from its datagrams)
            "clock_ahead_ms": if me {
                Some(0)
            } else {
                summary
                    .and_then(|s| s.addr.parse().ok())
                    .and_then(|a| i.clock_ahead.get(&a))
                    .and_then(|k| k.ahead_ms())
            },
            "version": summary.map(|s| s.daemon_version.clone()),
            "up_since": summary.map(|s| rfc3339(s.up_since)),
            "digest": digest,
            "digest_differs": differs,
            "personas": summary.map(|s| s.personas),
            "domains": domains,
            "signals": signals,
        }));
    }
    let c = &i.counters;
    json!({
        "me": i.me,
        "addr": i.my_addr,
        "majority_digest": majority.map(|m| m.0),
        "max_clock_skew_ms": i.max_clock_skew_ms(),
        // how far cluster time runs ahead of this host's clock
        "cluster_time_lead_ms": i.clock.lead(),
        "hosts": hosts,
        "packets": {
            "sent": c.packets_sent, "received": c.packets_received,
            "bytes_sent": c.bytes_sent, "bytes_received": c.bytes_received,
            "dropped": c.dropped,
        },
    })
}
