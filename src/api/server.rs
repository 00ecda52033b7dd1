//! HTTP/1.1 + JSON on the unix socket, and optionally on TCP with a bearer
//! token. Parses a request into a [`Command`], hands it to the loop thread,
//! and writes the [`Reply`]. Bodies over 1 MiB, slow clients (read/write
//! timeouts), wrong content types, bad tokens and unknown routes get JSON
//! errors; no request can panic the daemon or stall its loop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use serde_json::{json, Value};
use tracing::{debug, warn};

use super::command::{ActivateBody, Command, Envelope, Reply, SignalBody};

pub const MAX_BODY: usize = 1 << 20;
const MAX_HEADER: usize = 16 << 10;
const MAX_CONNECTIONS: usize = 128;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

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
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn content_type(&self) -> String {
        self.header("content-type")
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default()
    }
}

type HttpError = (u16, String);

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
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
pub fn read_request(r: &mut impl BufRead) -> Result<Request, HttpError> {
    let (mut req, length) = read_head(r)?;
    read_body(r, &mut req, length)?;
    Ok(req)
}

/// Reads the request line and headers; the body (of the returned length) is
/// left unread, so a request can be refused before its body is taken in.
pub fn read_head(r: &mut impl BufRead) -> Result<(Request, usize), HttpError> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let room = (MAX_HEADER + 1).saturating_sub(head.len()) as u64;
        let n = r
            .take(room)
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
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, format!("malformed request line '{first}'")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err((505, format!("unsupported protocol '{version}'")));
    }
    let mut headers = Vec::new();
    let mut length = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().to_string();
            if k == "content-length" {
                length = v
                    .parse()
                    .map_err(|_| (400, "invalid Content-Length".to_string()))?;
            }
            if k == "transfer-encoding" {
                return Err((
                    411,
                    "chunked bodies are not accepted: send Content-Length".into(),
                ));
            }
            headers.push((k, v));
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect();
    Ok((
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query,
            headers,
            body: Vec::new(),
        },
        length,
    ))
}

/// Reads a body of `length` bytes into the request (at most [`MAX_BODY`]).
pub fn read_body(r: &mut impl BufRead, req: &mut Request, length: usize) -> Result<(), HttpError> {
    if length > MAX_BODY {
        return Err((
            413,
            format!("body of {length} bytes is over the limit of {MAX_BODY}"),
        ));
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)
        .map_err(|e| (400, format!("reading body: {e}")))?;
    req.body = body;
    Ok(())
}

/// Events a history request returns unless it asks for fewer (or more, up to
/// [`MAX_EVENTS_PER_REQUEST`]).
pub const DEFAULT_EVENTS_PER_REQUEST: usize = 1_000;
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;

/// The `limit` query parameter of the event routes.
fn limit(value: Option<&str>) -> Result<usize, HttpError> {
    match value {
        None | Some("") => Ok(DEFAULT_EVENTS_PER_REQUEST),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_EVENTS_PER_REQUEST).contains(&n) => Ok(n),
            _ => Err((
                400,
                format!("limit: '{s}' is not a number from 1 to {MAX_EVENTS_PER_REQUEST}"),
            )),
        },
    }
}

fn json_body<T: for<'de> serde::Deserialize<'de>>(req: &Request) -> Result<T, HttpError> {
    if req.content_type() != "application/json" {
        return Err((
            415,
            format!(
                "expected Content-Type: application/json, found '{}'",
                req.content_type()
            ),
        ));
    }
    serde_json::from_slice(&req.body).map_err(|e| (400, format!("invalid JSON body: {e}")))
}

/// A persona body: TOML as it is, or JSON turned into TOML.
fn persona_body(req: &Request) -> Result<String, HttpError> {
    match req.content_type().as_str() {
        "application/toml" | "text/toml" | "text/x-toml" | "text/plain" => {
            String::from_utf8(req.body.clone())
                .map_err(|_| (400, "the TOML body is not UTF-8".to_string()))
        }
        "application/json" => {
            let v: toml::Value = serde_json::from_slice(&req.body)
                .map_err(|e| (400, format!("invalid JSON body: {e}")))?;
            if !v.is_table() {
                return Err((400, "a persona in JSON must be an object".into()));
            }
            toml::to_string(&v).map_err(|e| (400, format!("cannot turn the JSON into TOML: {e}")))
        }
        other => Err((
            415,
            format!("expected Content-Type application/toml or application/json, found '{other}'"),
        )),
    }
}

fn duration_ms(what: &str, s: &str) -> Result<i64, HttpError> {
    let d: crate::units::Duration = s
        .parse()
        .map_err(|e: crate::units::UnitError| (400, format!("{what}: {}", e.0)))?;
    if d.as_std().is_zero() {
        return Err((400, format!("{what}: must be greater than zero")));
    }
    i64::try_from(d.as_std().as_millis()).map_err(|_| (400, format!("{what}: too long")))
}

/// Maps a request to a command, or to the error to answer with.
pub fn route(req: &Request) -> Result<Command, HttpError> {
    let segs: Vec<String> = req
        .path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let q = |k: &str| {
        req.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let method = req.method.as_str();
    let not_allowed = || {
        Err((
            405,
            format!("method {method} is not allowed on {}", req.path),
        ))
    };
    let cmd = match segs.as_slice() {
        ["healthz"] => match method {
            "GET" => Command::Health,
            _ => return not_allowed(),
        },
        ["metrics"] => match method {
            "GET" => Command::Metrics,
            _ => return not_allowed(),
        },
        ["v1", "events"] => match method {
            "GET" => Command::Subscribe,
            _ => return not_allowed(),
        },
        ["v1", "domains"] => match method {
            "GET" => Command::ListDomains,
            _ => return not_allowed(),
        },
        ["v1", "domains", name] => match method {
            "GET" => Command::GetDomain {
                name: name.to_string(),
            },
            _ => return not_allowed(),
        },
        ["v1", "events", "recent"] => match method {
            "GET" => {
                let since = match q("since") {
                    None | Some("") => None,
                    Some(s) => Some(super::parse_time(s).ok_or_else(|| {
                        (
                            400,
                            format!("since: '{s}' is not an RFC 3339 time or Unix seconds"),
                        )
                    })?),
                };
                Command::RecentEvents {
                    since,
                    limit: limit(q("limit"))?,
                }
            }
            _ => return not_allowed(),
        },
        ["v1", "domains", name, "tuning"] => match method {
            "GET" => Command::Tuning {
                name: name.to_string(),
            },
            _ => return not_allowed(),
        },
        ["v1", "domains", name, "explain"] => match method {
            "GET" => Command::Explain {
                name: name.to_string(),
            },
            _ => return not_allowed(),
        },
        ["v1", "domains", name, "history"] => match method {
            "GET" => {
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
                    limit: limit(q("limit"))?,
                }
            }
            _ => return not_allowed(),
        },
        ["v1", "domains", name, "activate"] => match method {
            "POST" => {
                let b: ActivateBody = json_body(req)?;
                let for_ms = b
                    .for_
                    .as_deref()
                    .map(|f| duration_ms("for", f))
                    .transpose()?;
                Command::Activate {
                    name: name.to_string(),
                    persona: b.persona,
                    for_ms,
                }
            }
            _ => return not_allowed(),
        },
        ["v1", "domains", name, "revert"] => match method {
            "POST" => Command::Revert {
                name: name.to_string(),
            },
            _ => return not_allowed(),
        },
        ["v1", "personas"] => match method {
            "GET" => Command::ListPersonas,
            _ => return not_allowed(),
        },
        ["v1", "personas", "validate"] => match method {
            "POST" => Command::ValidatePersona {
                toml: persona_body(req)?,
            },
            _ => return not_allowed(),
        },
        ["v1", "personas", id] => match method {
            "GET" => Command::GetPersona { id: id.to_string() },
            "PUT" => Command::PutPersona {
                id: id.to_string(),
                toml: persona_body(req)?,
            },
            "DELETE" => Command::DeletePersona { id: id.to_string() },
            _ => return not_allowed(),
        },
        ["v1", "signals"] => match method {
            "GET" => Command::ListSignals,
            _ => return not_allowed(),
        },
        ["v1", "signals", name] => match method {
            "PUT" => {
                let b: SignalBody = json_body(req)?;
                if !crate::model::validate::valid_name(name) {
                    return Err((400, format!("invalid signal name '{name}': expected characters a-z, 0-9, '.', '_' and '-'")));
                }
                if !b.value.is_finite() {
                    return Err((400, "value: expected a finite number".into()));
                }
                let ttl_ms = duration_ms("ttl", b.ttl.as_deref().unwrap_or("5m"))?;
                let cluster = match b.scope.as_deref() {
                    None | Some("host") => false,
                    Some("cluster") => true,
                    Some(other) => {
                        return Err((
                            400,
                            format!("scope: expected \"host\" or \"cluster\", found \"{other}\""),
                        ))
                    }
                };
                Command::SetSignal {
                    name: name.to_string(),
                    value: b.value,
                    ttl_ms,
                    domain: b.domain,
                    cluster,
                }
            }
            _ => return not_allowed(),
        },
        _ => return Err((404, format!("no route for {method} {}", req.path))),
    };
    Ok(cmd)
}

fn respond(s: &mut impl Write, status: u16, content_type: &str, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(msg.as_bytes());
}

fn respond_json(s: &mut impl Write, status: u16, v: &Value) {
    respond(s, status, "application/json", &v.to_string());
}

/// Answers the loop thread publishes for the busiest read-only routes, so
/// they are served without a round trip through the loop.
#[derive(Default)]
pub struct Shared {
    /// The body of `GET /v1/domains`.
    pub domains: std::sync::RwLock<Option<Arc<String>>>,
}

impl Shared {
    pub fn publish_domains(&self, body: String) {
        *self.domains.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(body));
    }
    fn domains(&self) -> Option<Arc<String>> {
        self.domains
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Who may call: everyone on the unix socket (its mode guards it), the bearer
/// of the token on TCP.
#[derive(Clone)]
enum Auth {
    Socket,
    Token(Arc<String>),
}

/// Constant time: how long it takes depends on the length of what was given
/// only, never on the token's length or on how much of it matched.
fn token_matches(given: &[u8], token: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    if token.is_empty() {
        return false;
    }
    let mut same = given.len().ct_eq(&token.len());
    for (i, b) in given.iter().enumerate() {
        same &= b.ct_eq(&token[i % token.len()]);
    }
    bool::from(same)
}

fn authorized(req: &Request, auth: &Auth) -> bool {
    match auth {
        Auth::Socket => true,
        Auth::Token(token) => {
            let given = req
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            token_matches(given.as_bytes(), token.as_bytes())
        }
    }
}

fn handle<S: Read + Write>(stream: S, tx: &Sender<Envelope>, auth: &Auth, shared: &Shared) {
    let mut reader = BufReader::new(stream);
    // the token is checked as soon as the headers are in: an unauthenticated
    // client never gets its body read
    let parsed = read_head(&mut reader).and_then(|(mut req, length)| {
        if !authorized(&req, auth) {
            return Err((401, "missing or wrong bearer token".to_string()));
        }
        read_body(&mut reader, &mut req, length)?;
        Ok(req)
    });
    let mut stream = reader.into_inner();
    let req = match parsed {
        Ok(r) => r,
        Err((status, message)) => {
            return respond_json(&mut stream, status, &json!({ "error": message }))
        }
    };
    let command = match route(&req) {
        Ok(c) => c,
        Err((status, message)) => {
            return respond_json(&mut stream, status, &json!({ "error": message }))
        }
    };
    if command == Command::ListDomains {
        if let Some(body) = shared.domains() {
            return respond(&mut stream, 200, "application/json", &body);
        }
    }
    let (rtx, rrx) = crossbeam_channel::bounded(1);
    if tx
        .send(Envelope {
            command,
            reply: rtx,
        })
        .is_err()
    {
        return respond_json(
            &mut stream,
            503,
            &json!({"error": "the daemon is stopping"}),
        );
    }
    match rrx.recv_timeout(REPLY_TIMEOUT) {
        Ok(Reply::Ok(v)) => respond_json(&mut stream, 200, &v),
        Ok(Reply::Text(t)) => respond(
            &mut stream,
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &t,
        ),
        Ok(Reply::Err { status, message }) => {
            respond_json(&mut stream, status, &json!({ "error": message }))
        }
        Ok(Reply::Stream(rx)) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
            if stream
                .write_all(head.as_bytes())
                .and_then(|_| stream.flush())
                .is_err()
            {
                return;
            }
            loop {
                let chunk = match rx.recv_timeout(SSE_KEEPALIVE) {
                    Ok(v) => format!("event: transition\ndata: {v}\n\n"),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        ": keep-alive\n\n".to_string()
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                };
                if stream
                    .write_all(chunk.as_bytes())
                    .and_then(|_| stream.flush())
                    .is_err()
                {
                    return; // the client went away
                }
            }
        }
        Err(_) => respond_json(
            &mut stream,
            503,
            &json!({"error": "the daemon did not answer in time"}),
        ),
    }
}

fn spawn_conn<S: Read + Write + Send + 'static>(
    stream: S,
    tx: &Sender<Envelope>,
    auth: &Auth,
    shared: &Arc<Shared>,
    active: &Arc<AtomicUsize>,
    busy: impl FnOnce(S),
) {
    if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
        return busy(stream);
    }
    active.fetch_add(1, Ordering::SeqCst);
    let (tx, auth, shared, active2) = (tx.clone(), auth.clone(), shared.clone(), active.clone());
    let spawned = std::thread::Builder::new()
        .name("api-conn".into())
        .spawn(move || {
            // a panic in one request must not take the daemon down
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handle(stream, &tx, &auth, &shared)
            }));
            active2.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        active.fetch_sub(1, Ordering::SeqCst);
        warn!(error = %e, "cannot start an API connection thread");
    }
}

/// Binds the unix socket (mode 0660) and serves until the process ends.
pub fn serve(path: &Path, tx: Sender<Envelope>, shared: Arc<Shared>) -> Result<(), ServeError> {
    let bind_err = |source| ServeError::Bind {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    // a stale socket from a previous run would make bind fail; anything that
    // is not a socket is never removed (a mistyped --socket must not delete a file)
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket: not replaced",
            )));
        }
        if UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
    // created 0660 from the start: no moment where others may connect
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                spawn_conn(stream, &tx, &Auth::Socket, &shared, &active, |mut s| {
                    respond_json(&mut s, 503, &json!({"error": "too many connections"}))
                });
            }
            debug!("API listener ended");
        })
        .map_err(bind_err)?;
    Ok(())
}

/// Serves the API on TCP; every request needs `Authorization: Bearer <token>`.
pub fn serve_tcp(
    addr: &str,
    token: String,
    tx: Sender<Envelope>,
    shared: Arc<Shared>,
) -> Result<(), ServeError> {
    let bind_err = |source| ServeError::Bind {
        path: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).map_err(bind_err)?;
    let auth = Auth::Token(Arc::new(token));
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("api-tcp".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                spawn_conn(stream, &tx, &auth, &shared, &active, |mut s| {
                    respond_json(&mut s, 503, &json!({"error": "too many connections"}))
                });
            }
        })
        .map_err(bind_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Result<Request, HttpError> {
        read_request(&mut BufReader::new(raw.as_bytes()))
    }

    #[test]
    fn token_comparison() {
        let t = b"0123456789abcdef";
        assert!(token_matches(t, t));
        assert!(!token_matches(b"0123456789abcdeX", t));
        assert!(!token_matches(b"0123456789abcdef0", t), "longer");
        assert!(!token_matches(b"0123", t), "a prefix");
        assert!(!token_matches(b"", t));
        assert!(!token_matches(b"", b""), "no token never matches");
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_never_replaced() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("precious");
        std::fs::write(&f, "data").unwrap();
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let e = serve(&f, tx, Arc::new(Shared::default())).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "data");
    }

    #[test]
    fn parses_and_routes() {
        let r = req("GET /v1/domains/web%2D1/history?since=1700000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(
            route(&r).unwrap(),
            Command::History {
                name: "web-1".into(),
                since: 1_700_000_000_000,
                limit: DEFAULT_EVENTS_PER_REQUEST,
            }
        );
        let r = req("GET /v1/events/recent?limit=5 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            route(&r).unwrap(),
            Command::RecentEvents {
                since: None,
                limit: 5
            }
        );
        for bad in ["0", "x", "10001"] {
            let r = req(&format!(
                "GET /v1/events/recent?limit={bad} HTTP/1.1\r\n\r\n"
            ))
            .unwrap();
            assert_eq!(route(&r).unwrap_err().0, 400, "{bad}");
        }
        assert_eq!(
            route(&req("GET /v1/nothing HTTP/1.1\r\n\r\n").unwrap())
                .unwrap_err()
                .0,
            404
        );
        assert_eq!(
            route(&req("DELETE /v1/domains HTTP/1.1\r\n\r\n").unwrap())
                .unwrap_err()
                .0,
            405
        );
        assert_eq!(
            route(&req("GET /v1/domains/x/history?since=yesterday HTTP/1.1\r\n\r\n").unwrap())
                .unwrap_err()
                .0,
            400
        );
        let body = r#"{"persona":"hot","for":"15m"}"#;
        let raw = format!("POST /v1/domains/a/activate HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        assert_eq!(
            route(&req(&raw).unwrap()).unwrap(),
            Command::Activate {
                name: "a".into(),
                persona: "hot".into(),
                for_ms: Some(900_000)
            }
        );
        let raw = format!("POST /v1/domains/a/activate HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        assert_eq!(route(&req(&raw).unwrap()).unwrap_err().0, 415);
        let raw = "POST /v1/domains/a/activate HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n{x}";
        assert_eq!(route(&req(raw).unwrap()).unwrap_err().0, 400);
        let sig = r#"{"value": 5, "ttl": "1m", "scope": "planet"}"#;
        let raw = format!("PUT /v1/signals/lb.rps HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{sig}", sig.len());
        assert!(route(&req(&raw).unwrap()).unwrap_err().1.contains("scope"));
        let p = r#"{"id": "x", "priority": 3}"#;
        let raw = format!("PUT /v1/personas/x HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{p}", p.len());
        match route(&req(&raw).unwrap()).unwrap() {
            Command::PutPersona { id, toml } => {
                assert_eq!(id, "x");
                assert!(toml.contains("priority = 3"), "{toml}");
            }
            other => panic!("{other:?}"),
        }
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
        assert_eq!(percent_decode("%e2%82"), "\u{fffd}");
    }

    #[test]
    fn bearer_tokens_compare_whole() {
        let auth = Auth::Token(Arc::new("s3cret".into()));
        let with = |h: &str| req(&format!("GET / HTTP/1.1\r\n{h}\r\n\r\n")).unwrap();
        assert!(authorized(&with("Authorization: Bearer s3cret"), &auth));
        assert!(!authorized(&with("Authorization: Bearer s3cre"), &auth));
        assert!(!authorized(&with("Authorization: Bearer s3cret2"), &auth));
        assert!(!authorized(&with("X: y"), &auth));
        assert!(authorized(&with("X: y"), &Auth::Socket));
    }
}
