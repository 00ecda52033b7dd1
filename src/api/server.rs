//! HTTP/1.1 + JSON on the unix socket. Parses a request into a [`Command`],
//! hands it to the loop thread, and writes the [`Reply`] as JSON. Bodies over
//! 1 MiB, slow clients (read/write timeouts) and unknown routes get JSON errors;
//! no request can panic the daemon.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use serde_json::json;
use tracing::{debug, warn};

use super::command::{Command, Envelope, Reply};

pub const MAX_BODY: usize = 1 << 20;
const MAX_HEADER: usize = 16 << 10;
const MAX_CONNECTIONS: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("API socket {path}: {source}")]
    Bind {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A parsed HTTP request.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one request; `Err` carries the status and message to answer with.
pub fn read_request(r: &mut impl BufRead) -> Result<Request, (u16, String)> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .take((MAX_HEADER - head.len().min(MAX_HEADER)) as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| (400, format!("reading request: {e}")))?;
        if n == 0 {
            return Err((400, "connection closed before the request ended".into()));
        }
        if head.len() + line.len() > MAX_HEADER {
            return Err((431, "request headers too large".into()));
        }
        let end = line == b"\r\n" || line == b"\n";
        head.extend_from_slice(&line);
        if end {
            break;
        }
    }
    let text =
        String::from_utf8(head).map_err(|_| (400, "request head is not UTF-8".to_string()))?;
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err((400, format!("malformed request line '{first}'")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err((505, format!("unsupported protocol '{version}'")));
    }
    let mut length = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v
                    .trim()
                    .parse()
                    .map_err(|_| (400, "invalid Content-Length".to_string()))?;
            }
            if k.trim().eq_ignore_ascii_case("transfer-encoding") {
                return Err((
                    411,
                    "chunked bodies are not accepted: send Content-Length".into(),
                ));
            }
        }
    }
    if length > MAX_BODY {
        return Err((
            413,
            format!("body of {length} bytes is over the limit of {MAX_BODY}"),
        ));
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)
        .map_err(|e| (400, format!("reading body: {e}")))?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect();
    Ok(Request {
        method: method.to_string(),
        path: percent_decode(path),
        query,
        body,
    })
}

/// Maps a request to a command, or to the error to answer with.
pub fn route(req: &Request) -> Result<Command, (u16, String)> {
    let segs: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
    let q = |k: &str| {
        req.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let method = req.method.as_str();
    let cmd = match (method, segs.as_slice()) {
        ("GET", ["healthz"]) => Command::Health,
        ("GET", ["v1", "domains"]) => Command::ListDomains,
        ("GET", ["v1", "domains", name]) => Command::GetDomain {
            name: name.to_string(),
        },
        ("GET", ["v1", "domains", name, "history"]) => {
            let since = match q("since") {
                None | Some("") => 0,
                Some(s) => super::parse_time(s).ok_or_else(|| {
                    (
                        400,
                        format!("since: '{s}' is not an RFC 3339 time or Unix seconds"),
                    )
                })?,
            };
            Command::History {
                name: name.to_string(),
                since,
            }
        }
        ("GET", ["v1", "domains", name, "explain"]) => Command::Explain {
            name: name.to_string(),
        },
        ("GET", ["v1", "personas"]) => Command::ListPersonas,
        (
            _,
            ["healthz"]
            | ["v1", "domains"]
            | ["v1", "domains", _]
            | ["v1", "domains", _, "history"]
            | ["v1", "personas"],
        ) => {
            return Err((
                405,
                format!("method {method} is not allowed on {}", req.path),
            ))
        }
        _ => return Err((404, format!("no route for {} {}", method, req.path))),
    };
    Ok(cmd)
}

fn respond(s: &mut UnixStream, status: u16, body: &serde_json::Value) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let text = body.to_string();
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = s.write_all(msg.as_bytes());
}

fn handle(mut stream: UnixStream, tx: &Sender<Envelope>) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let command = read_request(&mut reader).and_then(|r| route(&r));
    let (status, body) = match command {
        Err((status, message)) => (status, json!({ "error": message })),
        Ok(command) => {
            let (rtx, rrx) = crossbeam_channel::bounded(1);
            if tx
                .send(Envelope {
                    command,
                    reply: rtx,
                })
                .is_err()
            {
                (503, json!({"error": "the daemon is stopping"}))
            } else {
                match rrx.recv_timeout(REPLY_TIMEOUT) {
                    Ok(Reply::Ok(v)) => (200, v),
                    Ok(Reply::Err { status, message }) => (status, json!({ "error": message })),
                    Err(_) => (503, json!({"error": "the daemon did not answer in time"})),
                }
            }
        }
    };
    respond(&mut stream, status, &body);
}

/// Binds the socket (mode 0660) and serves until the process ends.
pub fn serve(path: &Path, tx: Sender<Envelope>) -> Result<(), ServeError> {
    let bind_err = |source| ServeError::Bind {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    // a stale socket from a previous run would make bind fail
    if path.exists() && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut stream) = conn else { continue };
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    respond(&mut stream, 503, &json!({"error": "too many connections"}));
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                let active = active.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("api-conn".into())
                        .spawn(move || {
                            handle(stream, &tx);
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                if let Err(e) = spawned {
                    warn!(error = %e, "cannot start an API connection thread");
                }
            }
            debug!("API listener ended");
        })
        .map_err(bind_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Result<Request, (u16, String)> {
        read_request(&mut BufReader::new(raw.as_bytes()))
    }

    #[test]
    fn parses_and_routes() {
        let r = req("GET /v1/domains/web%2D1/history?since=1700000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(
            route(&r).unwrap(),
            Command::History {
                name: "web-1".into(),
                since: 1_700_000_000_000
            }
        );
        let r = req("GET /v1/nothing HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(route(&r).unwrap_err().0, 404);
        let r = req("DELETE /v1/domains HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(route(&r).unwrap_err().0, 405);
        let r = req("GET /v1/domains/x/history?since=yesterday HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(route(&r).unwrap_err().0, 400);
    }

    #[test]
    fn rejects_bad_requests() {
        assert_eq!(req("garbage\r\n\r\n").unwrap_err().0, 400);
        assert_eq!(req("GET / SPDY/9\r\n\r\n").unwrap_err().0, 505);
        assert_eq!(
            req("POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
                .unwrap_err()
                .0,
            413
        );
        assert_eq!(
            req("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(req("GET / HTTP/1.1\r\n").unwrap_err().0, 400);
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(req(&huge).unwrap_err().0, 431);
        assert_eq!(percent_decode("a%zz%"), "a%zz%");
    }
}
