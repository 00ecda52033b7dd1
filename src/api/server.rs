//! The API over HTTP: one axum [`Router`] served by hyper on the unix socket
//! and, behind a bearer token, on TCP. Handlers only turn a request into a
//! [`Command`] (with the decoders in [`decode`]) and send it to the control
//! loop's thread; the loop's [`Reply`] becomes the response. `GET /v1/domains`
//! is answered from the snapshot the loop publishes, and the event stream from
//! the loop's broadcast of events, without a round trip.
//!
//! Limits are layers and connection settings of maintained code: bodies over
//! 1 MiB get 413 (`DefaultBodyLimit`), a request must be answered within 30 s
//! and its body arrive at 10 s per chunk (`tower-http`), headers must be in
//! within 10 s, which also closes idle keep-alive connections (hyper), and at
//! most [`MAX_CONNECTIONS`] connections per listener are served. Every failure
//! — axum's own rejections included — is `{"error": "…"}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{body::Bytes, Router};
use crossbeam_channel::{Sender, TrySendError};
use futures_util::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch, Semaphore};
use tracing::{debug, warn};

use super::command::{Command, Envelope, Reply};

pub mod admit;
pub mod decode;
pub mod errors;
pub mod tls;

use admit::{Conn, Pools, Refused, Source};

pub use decode::{DEFAULT_EVENTS_PER_REQUEST, MAX_BODY, MAX_EVENTS_PER_REQUEST};

/// How long a client may take to send its request headers; also how long an
/// idle keep-alive connection stays open.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two chunks of a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a request may take (body read and the loop's answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Admitted connections served at once per listener (new connections wait in
/// a pending pool of their own until a request is admitted: [`admit`]).
pub const MAX_CONNECTIONS: usize = 2048;
/// Event streams open at once on the unix socket.
pub const MAX_EVENT_STREAMS: usize = 64;
/// Event streams open at once on TCP, where every stream carries the one
/// bearer token: the token's limit.
pub const MAX_EVENT_STREAMS_PER_TOKEN: usize = 32;
/// Connections the kernel queues for the accept loop.
const LISTEN_BACKLOG: i32 = 1024;
/// How often an idle event stream gets a comment (and a vanished client is noticed).
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// Events an event-stream client may be behind before it is dropped.
pub const EVENT_BACKLOG: usize = 1024;
/// Commands waiting for the loop before new ones get 503.
pub const COMMAND_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("API socket {path}: {source}")]
    Bind {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("API runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What the loop thread publishes for the server: the body of
/// `GET /v1/domains`, every event for the event streams, and that the daemon
/// stops (event streams end).
pub struct Shared {
    domains: std::sync::RwLock<Option<Arc<String>>>,
    /// Every name, id and UUID of a domain here, to its UUID (imports).
    names: std::sync::RwLock<Arc<std::collections::HashMap<String, String>>>,
    events: broadcast::Sender<Arc<str>>,
    stopping: watch::Sender<bool>,
    import_limits: crate::history::ImportLimits,
    /// One import is read at a time (its body is in memory while it is).
    imports: Arc<Semaphore>,
}

impl Default for Shared {
    fn default() -> Self {
        Self::new(Default::default())
    }
}

impl Shared {
    pub fn new(import_limits: crate::history::ImportLimits) -> Self {
        Shared {
            domains: Default::default(),
            names: Default::default(),
            events: broadcast::channel(EVENT_BACKLOG).0,
            stopping: watch::channel(false).0,
            import_limits,
            imports: Arc::new(Semaphore::new(1)),
        }
    }
    /// What imports resolve domains against: name, id and UUID to UUID.
    pub fn publish_names(&self, names: std::collections::HashMap<String, String>) {
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(names);
    }
    fn names(&self) -> Arc<std::collections::HashMap<String, String>> {
        self.names.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn publish_domains(&self, body: String) {
        *self.domains.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(body));
    }
    fn domains(&self) -> Option<Arc<String>> {
        self.domains
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Sends an event to every event-stream client (none: nothing is kept).
    pub fn publish_event(&self, event: &Value) {
        let _ = self.events.send(Arc::from(event.to_string()));
    }
    /// Event-stream clients connected now.
    pub fn event_clients(&self) -> usize {
        self.events.receiver_count()
    }
}

#[derive(Clone)]
struct AppState {
    tx: Sender<Envelope>,
    shared: Arc<Shared>,
    /// One permit per open event stream.
    streams: Arc<Semaphore>,
    streams_max: usize,
}

/// An error answer: `{"error": message}` with its status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<decode::HttpError> for ApiError {
    fn from((status, message): decode::HttpError) -> Self {
        ApiError(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            message,
        )
    }
}

/// Sends a command to the loop and turns its reply into a response.
async fn ask(state: &AppState, command: Command) -> Response {
    match ask_reply(state, command).await {
        Ok(reply) => reply_response(reply),
        Err(r) => r,
    }
}

/// Sends a command to the loop: its reply, or the response saying why there is none.
async fn ask_reply(state: &AppState, command: Command) -> Result<Reply, Response> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    match state.tx.try_send(Envelope { command, reply }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the daemon is busy: {COMMAND_QUEUE} requests are waiting; try again"),
            )
            .into_response())
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon is stopping".into(),
            )
            .into_response())
        }
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(_)) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is stopping".into(),
        )
        .into_response()),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon did not answer in time".into(),
        )
        .into_response()),
    }
}

fn reply_response(reply: Reply) -> Response {
    match reply {
        Reply::Ok(v) => axum::Json(v).into_response(),
        Reply::Text(t) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            t,
        )
            .into_response(),
        Reply::Err { status, message } => ApiError(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message,
        )
        .into_response(),
    }
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

type Q = Query<Vec<(String, String)>>;

fn query<'a>(q: &'a Q, key: &str) -> Option<&'a str> {
    q.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

macro_rules! simple {
    ($name:ident, $cmd:expr) => {
        async fn $name(State(s): State<AppState>) -> Response {
            ask(&s, $cmd).await
        }
    };
    ($name:ident, $arg:ident, $cmd:expr) => {
        async fn $name(State(s): State<AppState>, UrlPath($arg): UrlPath<String>) -> Response {
            ask(&s, $cmd).await
        }
    };
}

simple!(health, Command::Health);
simple!(cluster, Command::Cluster);
/// `GET /metrics`: OpenMetrics text to a scraper that asks for it
/// (Prometheus does, by `Accept`), else the classic text format 0.0.4 —
/// each served as the type it is.
async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let open = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|a| a.contains("application/openmetrics-text"));
    match ask_reply(&s, Command::Metrics).await {
        Ok(Reply::Text(t)) if open => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            t,
        )
            .into_response(),
        Ok(Reply::Text(t)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::text_format(&t),
        )
            .into_response(),
        Ok(other) => reply_response(other),
        Err(r) => r,
    }
}
simple!(list_personas, Command::ListPersonas);
simple!(list_signals, Command::ListSignals);
simple!(list_sources, Command::ListSources);
simple!(get_domain, name, Command::GetDomain { name });
simple!(explain, name, Command::Explain { name });
simple!(tuning, name, Command::Tuning { name });
simple!(revert, name, Command::Revert { name });
simple!(get_persona, id, Command::GetPersona { id });
simple!(delete_persona, id, Command::DeletePersona { id });

async fn list_domains(State(s): State<AppState>) -> Response {
    match s.shared.domains() {
        Some(body) => (
            [(header::CONTENT_TYPE, "application/json")],
            body.as_ref().clone(),
        )
            .into_response(),
        None => ask(&s, Command::ListDomains).await,
    }
}

async fn history(State(s): State<AppState>, UrlPath(name): UrlPath<String>, q: Q) -> Response {
    match decode::history(name, query(&q, "since"), query(&q, "limit")) {
        Ok(cmd) => ask(&s, cmd).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn recent(State(s): State<AppState>, q: Q) -> Response {
    match decode::recent(query(&q, "since"), query(&q, "limit")) {
        Ok(cmd) => ask(&s, cmd).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn activate(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match decode::activate(name, content_type(&headers), &body) {
        Ok(cmd) => ask(&s, cmd).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Runs pure request work on a blocking thread of the runtime: never on the
/// loop's thread, never holding an I/O worker.
async fn off_loop<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request failed: {e}"),
        )
        .into_response()
    })
}

/// Validation is pure: answered here, off the loop's thread.
async fn validate(headers: HeaderMap, body: Bytes) -> Response {
    match decode::persona_body(content_type(&headers), &body) {
        Ok(toml) => match off_loop(move || super::exec::validation(&toml)).await {
            Ok(reply) => reply_response(reply),
            Err(r) => r,
        },
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn put_persona(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match decode::persona_body(content_type(&headers), &body) {
        Ok(toml) => {
            // checked off the loop's thread; the loop writes and loads it
            let checked = {
                let (id, toml) = (id.clone(), toml.clone());
                off_loop(move || super::exec::check_persona(&id, &toml)).await
            };
            match checked {
                Ok(Ok(parsed)) => {
                    ask(
                        &s,
                        Command::PutPersona {
                            id,
                            toml,
                            parsed: Some(parsed),
                        },
                    )
                    .await
                }
                Ok(Err(reply)) => reply_response(reply),
                Err(r) => r,
            }
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn set_signal(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match decode::signal(name, content_type(&headers), &body) {
        Ok(cmd) => ask(&s, cmd).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `POST /v1/alerts/alertmanager[?domain_label=LABEL][&ttl=DUR]`: Alertmanager's webhook.
async fn alertmanager(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Q,
    body: Bytes,
) -> Response {
    match decode::alertmanager(
        content_type(&headers),
        &body,
        query(&q, "domain_label"),
        query(&q, "ttl"),
    ) {
        Ok(cmd) => ask(&s, cmd).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `DELETE /v1/signals/{name}?domain=DOM`.
async fn unset_signal(State(s): State<AppState>, UrlPath(name): UrlPath<String>, q: Q) -> Response {
    match decode::unset_signal(name, query(&q, "domain")) {
        Ok(cmd) => ask(&s, cmd).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn forecast(
    State(s): State<AppState>,
    UrlPath((name, metric)): UrlPath<(String, String)>,
    q: Q,
) -> Response {
    match decode::forecast(name, metric, query(&q, "horizon")) {
        Ok(cmd) => ask(&s, cmd).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `POST /v1/history/import`: one at a time (another gets 503 before its
/// body is read), the body up to [`decode::MAX_IMPORT_BODY`], read and
/// checked on a blocking thread, never the loop's; the loop then hands the
/// checked points to the forecast worker.
async fn import_history(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Q,
    body: axum::body::Body,
) -> Response {
    let retime = query(&q, "retime").map(str::to_string);
    if let Err(e) = decode::import_type(content_type(&headers)) {
        return ApiError::from(e).into_response();
    }
    let Ok(_one) = s.shared.imports.clone().try_acquire_owned() else {
        return ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "another history import is being read; nothing was imported, send it again when that one is answered".into(),
        )
        .into_response();
    };
    let bytes = match axum::body::to_bytes(body, decode::MAX_IMPORT_BODY).await {
        Ok(b) => b,
        Err(e) => {
            use std::error::Error;
            let mut cause: Option<&(dyn Error + 'static)> = e.source();
            let mut too_large = false;
            while let Some(c) = cause {
                too_large |= c.is::<http_body_util::LengthLimitError>();
                cause = c.source();
            }
            return if too_large {
                ApiError(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the import is over the limit of {} MiB; split it",
                        decode::MAX_IMPORT_BODY >> 20
                    ),
                )
            } else {
                ApiError(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            }
            .into_response();
        }
    };
    let names = s.shared.names();
    let limits = s.shared.import_limits;
    match tokio::task::spawn_blocking(move || {
        decode::import(&bytes, retime.as_deref(), &names, &limits)
    })
    .await
    {
        Ok(Ok(cmd)) => ask(&s, cmd).await,
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the import failed: {e}"),
        )
        .into_response(),
    }
}

/// Server-sent events: each transition as it is recorded. A client more than
/// [`EVENT_BACKLOG`] events behind gets a last `dropped` event and is
/// disconnected; the stream ends when the daemon stops.
async fn events(State(s): State<AppState>) -> Response {
    let Ok(permit) = s.streams.clone().try_acquire_owned() else {
        return ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} event streams are open on this listener, its limit; close one or read /v1/events/recent",
                s.streams_max
            ),
        )
        .into_response();
    };
    event_stream(&s, permit).into_response()
}

fn event_stream(
    s: &AppState,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.shared.events.subscribe();
    let stop = s.shared.stopping.subscribe();
    // the permit lives as long as the stream
    let stream = futures_util::stream::unfold(Some((rx, stop, permit)), |state| async move {
        let (mut rx, mut stop, permit) = state?;
        // events already sent go out before the stream ends for a stop
        tokio::select! {
            biased;
            r = rx.recv() => match r {
                Ok(data) => Some((Ok(SseEvent::default().event("transition").data(&*data)), Some((rx, stop, permit)))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let msg = json!({ "error": format!(
                        "this client fell {n} events behind and is disconnected; reconnect, and read /v1/events/recent for what it missed"
                    ) });
                    Some((Ok(SseEvent::default().event("dropped").data(msg.to_string())), None))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            },
            _ = async { stop.wait_for(|stopping| *stopping).await.map(|_| ()) } => None,
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE).text("keep-alive"))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

/// Turns what axum and tower-http answer by themselves (a rejected path or
/// query, a body over the limit, a timeout) into the JSON error every other
/// failure is.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = match status {
            StatusCode::REQUEST_TIMEOUT => format!(
                "the request was not complete within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!(
                    "the body is over the limit ({MAX_BODY} bytes; {} for a history import)",
                    decode::MAX_IMPORT_BODY
                )
            }
            _ => status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_string(),
        };
    }
    let body = json!({ "error": message }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Constant time: how long it takes depends on the length of what was given
/// only, never on the token's length or on how much of it matched.
pub fn token_matches(given: &[u8], token: &[u8]) -> bool {
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

/// The credentials of an `Authorization: Bearer <token>` value; the scheme
/// is case-insensitive (RFC 7235 §2.1), spaces before the token are skipped.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

/// Admits a request's connection to the main pool ([`admit`]): on TCP only
/// with `Authorization: Bearer <token>`, on the unix socket always. Runs
/// before any handler, so a refused request never has its body read. A
/// request served without a connection of ours (unit tests) is only checked.
async fn admission(State(token): State<Option<Arc<String>>>, req: Request, next: Next) -> Response {
    if let Some(token) = &token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .unwrap_or("");
        if !token_matches(given.as_bytes(), token.as_bytes()) {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            )
            .into_response();
        }
    }
    if let Some(conn) = req.extensions().get::<Arc<Conn>>() {
        let refused = match conn.admit() {
            Ok(()) => None,
            Err(Refused::Full(n)) => Some(format!(
                "the API serves {n} connections on this listener, its limit; try again"
            )),
            Err(Refused::Closed) => Some(
                "this connection waited too long for its first request and is closed; connect again"
                    .to_string(),
            ),
        };
        if let Some(message) = refused {
            let mut res = ApiError(StatusCode::SERVICE_UNAVAILABLE, message).into_response();
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return res;
        }
    }
    next.run(req).await
}

/// Every route of the API (SPEC §8) with its limits. `token`: every request
/// must carry it (the TCP listener).
pub fn router(tx: Sender<Envelope>, shared: Arc<Shared>, token: Option<String>) -> Router {
    let streams = if token.is_some() {
        MAX_EVENT_STREAMS_PER_TOKEN
    } else {
        MAX_EVENT_STREAMS
    };
    let app = Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/domains", get(list_domains))
        .route("/v1/domains/{name}", get(get_domain))
        .route("/v1/domains/{name}/explain", get(explain))
        .route("/v1/domains/{name}/history", get(history))
        .route("/v1/domains/{name}/tuning", get(tuning))
        .route("/v1/domains/{name}/activate", post(activate))
        .route("/v1/domains/{name}/revert", post(revert))
        .route("/v1/personas", get(list_personas))
        .route("/v1/personas/validate", post(validate))
        .route(
            "/v1/personas/{id}",
            get(get_persona).put(put_persona).delete(delete_persona),
        )
        .route("/v1/signals", get(list_signals))
        .route("/v1/sources", get(list_sources))
        .route("/v1/alerts/alertmanager", post(alertmanager))
        .route("/v1/signals/{name}", put(set_signal).delete(unset_signal))
        .route("/v1/events", get(events))
        .route("/v1/events/recent", get(recent))
        .route("/v1/forecast/{domain}/{metric}", get(forecast))
        .route("/v1/cluster", get(cluster))
        .route("/v1/history/import", post(import_history))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .with_state(AppState {
            tx,
            shared,
            streams: Arc::new(Semaphore::new(streams)),
            streams_max: streams,
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_TIMEOUT,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    app.layer(middleware::from_fn_with_state(
        token.map(Arc::new),
        admission,
    ))
    .layer(middleware::map_response(json_errors))
}

/// Raises this process's soft limit of open files to its hard limit (systemd
/// and shells start services at 1,024): the API must be able to hold many
/// connections at once without refusing the admin. Failure is harmless.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!(error = %e, "cannot raise the open-files limit");
            }
        }
    }
}

/// The runtime network I/O runs on: two worker threads (the control loop
/// and libvirt's event loop keep threads of their own).
pub fn runtime() -> Result<tokio::runtime::Runtime, ServeError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("api")
        .max_blocking_threads(4)
        .enable_io()
        .enable_time()
        .build()
        .map_err(ServeError::Runtime)
}

/// Where the API listens.
pub struct ApiConfig {
    pub socket: PathBuf,
    /// `host:port` and the bearer token every TCP request must carry.
    pub tcp: Option<(String, String)>,
    /// TLS on the TCP listener (see [`tls::server_config`]).
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// The running API. `Api::stop` stops accepting and drains open requests.
pub struct Api {
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    socket: PathBuf,
    /// The TCP address actually bound (with port 0, the one chosen).
    pub tcp_addr: Option<SocketAddr>,
    /// Each listener's connection pools, by name (`/metrics`).
    listeners: Vec<(&'static str, Arc<Pools>)>,
}

/// Binds the unix socket mode 0660 from the start. A stale socket from a
/// previous run is replaced; anything that is not a socket never is (a
/// mistyped --socket must not delete a file).
fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket: not replaced",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another daemon answers on it",
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    // created 0660 from the start: no moment where others may connect
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(bind_err)?;
    nix::sys::socket::listen(
        &listener,
        nix::sys::socket::Backlog::new(LISTEN_BACKLOG).map_err(|e| bind_err(e.into()))?,
    )
    .map_err(|e| bind_err(e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// A listener the accept loop serves (unix socket or TCP).
trait Accept: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// A connection and where it comes from (what the per-source cap counts).
    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Io, Source)>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Source)> {
        let (s, _) = tokio::net::UnixListener::accept(self).await?;
        let source = s
            .peer_cred()
            .map(|c| Source::Uid(c.uid()))
            .unwrap_or(Source::Unknown);
        Ok((s, source))
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Source)> {
        let (s, peer) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok((s, Source::Ip(peer.ip())))
    }
}

/// A connection's I/O, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Serves connections until told to stop, then lets open requests finish
/// (up to `drain`). Every connection starts pending ([`admit`]) and is closed
/// unless a request of it is admitted within [`admit::PENDING_DEADLINE`]
/// (its TLS handshake included, when `tls`).
async fn accept_loop<L: Accept>(
    listener: L,
    app: Router,
    pools: Arc<Pools>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 << 10);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            conn = listener.accept() => {
                let (io, source) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        // out of file descriptors, most likely: let some close
                        debug!(error = %e, "accepting an API connection failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let ctl = pools.accept(source);
                let service = {
                    let app = app.clone();
                    let ctl = ctl.clone();
                    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ctl.clone());
                        let mut app = app.clone();
                        async move {
                            use tower::Service;
                            app.call(req.map(axum::body::Body::new)).await
                        }
                    })
                };
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let io: Box<dyn Io> = match tls {
                        None => Box::new(io),
                        Some(acceptor) => tokio::select! {
                            r = acceptor.accept(io) => match r {
                                Ok(s) => Box::new(s),
                                Err(e) => {
                                    debug!(error = %e, "TLS handshake failed");
                                    return;
                                }
                            },
                            // too slow, or made room for: closed
                            _ = ctl.admitted_in_time() => return,
                        },
                    };
                    let conn = watcher.watch(builder.serve_connection(errors::JsonErrors::new(TokioIo::new(io)), service));
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        admitted = ctl.admitted_in_time() => if !admitted {
                            // dropped: the connection is closed
                            return;
                        },
                    }
                    let _ = conn.await;
                });
                // the new connection reads what it was sent before the next
                // accept: a request already there is admitted before a flood
                // behind it in the accept queue can push it out
                tokio::task::yield_now().await;
            }
        }
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            seconds = drain.as_secs(),
            "API requests still open after the drain time: closed"
        );
    }
}

impl Api {
    /// Binds every listener (errors now, not later) and serves on `rt`.
    pub fn start(
        rt: &tokio::runtime::Handle,
        cfg: &ApiConfig,
        tx: Sender<Envelope>,
        shared: Arc<Shared>,
    ) -> Result<Api, ServeError> {
        let _guard = rt.enter();
        let (stop, stop_rx) = watch::channel(false);
        let drain = Duration::from_secs(5);
        let unix = bind_unix(&cfg.socket)?;
        let unix = tokio::net::UnixListener::from_std(unix).map_err(|source| ServeError::Bind {
            path: cfg.socket.display().to_string(),
            source,
        })?;
        let mut tasks = Vec::new();
        let mut listeners = Vec::new();
        let mut tcp_addr = None;
        if let Some((addr, token)) = &cfg.tcp {
            let bind_err = |source| ServeError::Bind {
                path: addr.clone(),
                source,
            };
            let l = std::net::TcpListener::bind(addr).map_err(bind_err)?;
            // a long accept queue: a flood of connects must not make the
            // kernel drop the admin's SYN (a 1 s retransmit)
            nix::sys::socket::listen(
                &l,
                nix::sys::socket::Backlog::new(LISTEN_BACKLOG).map_err(|e| bind_err(e.into()))?,
            )
            .map_err(|e| bind_err(e.into()))?;
            l.set_nonblocking(true).map_err(bind_err)?;
            tcp_addr = l.local_addr().ok();
            let l = tokio::net::TcpListener::from_std(l).map_err(bind_err)?;
            let app = router(tx.clone(), shared.clone(), Some(token.clone()));
            let pools = Pools::new(MAX_CONNECTIONS);
            let tls = cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from);
            tasks.push(rt.spawn(accept_loop(
                l,
                app,
                pools.clone(),
                tls,
                stop_rx.clone(),
                drain,
            )));
            listeners.push(("tcp", pools));
        }
        let app = router(tx, shared.clone(), None);
        let pools = Pools::new(MAX_CONNECTIONS);
        tasks.push(rt.spawn(accept_loop(unix, app, pools.clone(), None, stop_rx, drain)));
        listeners.push(("unix", pools));
        Ok(Api {
            stop,
            shared,
            tasks,
            socket: cfg.socket.clone(),
            tcp_addr,
            listeners,
        })
    }

    /// Stops accepting, ends the event streams, and lets open requests finish.
    pub fn begin_stop(&self) {
        let _ = self.stop.send(true);
        let _ = self.shared.stopping.send(true);
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Each listener's (name, pending, admitted connections, pending ones
    /// closed for room so far).
    pub fn connections(&self) -> Vec<(&'static str, usize, usize, u64)> {
        self.listeners
            .iter()
            .map(|(n, p)| (*n, p.pending(), p.admitted(), p.closed_for_room()))
            .collect()
    }

    /// Whether every listener is done (its open requests drained).
    pub fn stopped(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = bind_unix(&f).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "data");
    }

    /// A loop thread that answers every command with its debug text.
    fn echo_loop() -> (Sender<Envelope>, std::thread::JoinHandle<()>) {
        let (tx, rx) = crossbeam_channel::bounded::<Envelope>(8);
        let h = std::thread::spawn(move || {
            for env in rx {
                let _ = env
                    .reply
                    .send(Reply::Ok(json!(format!("{:?}", env.command))));
            }
        });
        (tx, h)
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        use tower::ServiceExt;
        let mut req = axum::http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = app
            .clone()
            .oneshot(req.body(axum::body::Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn routes_map_to_commands_and_every_failure_is_json() {
        let (tx, _loop) = echo_loop();
        let app = router(tx, Arc::new(Shared::default()), None);
        let json_ct = [("content-type", "application/json")];
        let (st, v) = call(
            &app,
            "GET",
            "/v1/domains/web%2D1/history?since=1700000000",
            &[],
            "",
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(
            v,
            json!(format!(
                "{:?}",
                Command::History {
                    name: "web-1".into(),
                    since: 1_700_000_000_000,
                    limit: DEFAULT_EVENTS_PER_REQUEST
                }
            ))
        );
        let (_, v) = call(
            &app,
            "POST",
            "/v1/domains/a/activate",
            &json_ct,
            r#"{"persona":"hot","for":"15m"}"#,
        )
        .await;
        assert_eq!(
            v,
            json!(format!(
                "{:?}",
                Command::Activate {
                    name: "a".into(),
                    persona: "hot".into(),
                    for_ms: Some(900_000)
                }
            ))
        );
        let (_, v) = call(
            &app,
            "POST",
            "/v1/personas/validate",
            &[("content-type", "application/toml")],
            "id = \"x\"\n",
        )
        .await;
        // answered off the loop, which never sees it
        assert_eq!(v, json!({"ok": true, "errors": []}));
        // failures: ours, and axum's own, all JSON
        for (method, uri, headers, body, want) in [
            ("GET", "/v1/nothing", &[][..], "", 404),
            ("DELETE", "/v1/domains", &[][..], "", 405),
            ("GET", "/v1/events/recent?limit=0", &[][..], "", 400),
            (
                "GET",
                "/v1/domains/x/history?since=yesterday",
                &[][..],
                "",
                400,
            ),
            (
                "POST",
                "/v1/domains/a/activate",
                &[("content-type", "text/plain")][..],
                "{}",
                415,
            ),
            ("POST", "/v1/domains/a/activate", &json_ct[..], "{x}", 400),
            (
                "PUT",
                "/v1/signals/x",
                &json_ct[..],
                r#"{"value": 1, "scope": "planet"}"#,
                400,
            ),
        ] {
            let (st, v) = call(&app, method, uri, headers, body).await;
            assert_eq!(st, want, "{method} {uri}: {v}");
            assert!(v["error"].is_string(), "{method} {uri}: {v}");
        }
        let big = "x".repeat(MAX_BODY + 1);
        let (st, v) = call(
            &app,
            "PUT",
            "/v1/personas/big",
            &[("content-type", "application/toml")],
            &big,
        )
        .await;
        assert_eq!(st, 413);
        assert!(v["error"].is_string(), "{v}");
    }

    /// A client more than EVENT_BACKLOG events behind gets one `dropped`
    /// event and its stream ends; a client that goes away holds nothing.
    #[tokio::test]
    async fn event_stream_clients_that_fall_behind_or_vanish_are_dropped() {
        use tower::ServiceExt;
        let (tx, _loop) = echo_loop();
        let shared = Arc::new(Shared::default());
        let app = router(tx, shared.clone(), None);
        let open = || async {
            app.clone()
                .oneshot(
                    axum::http::Request::get("/v1/events")
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap()
        };
        let slow = open().await;
        assert_eq!(shared.event_clients(), 1);
        for i in 0..EVENT_BACKLOG + 10 {
            shared.publish_event(&json!({ "n": i }));
        }
        let text = axum::body::to_bytes(slow.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(text.starts_with("event: dropped\ndata: "), "{text}");
        assert!(text.contains("fell 10 events behind"), "{text}");
        assert_eq!(
            text.matches("event:").count(),
            1,
            "then the stream ends: {text}"
        );
        // one that vanishes: its subscription goes with it, at once
        let gone = open().await;
        assert_eq!(shared.event_clients(), 1);
        drop(gone);
        assert_eq!(shared.event_clients(), 0);
        // and one that keeps up gets every event in order
        let live = open().await;
        shared.publish_event(&json!({ "n": 1 }));
        shared.publish_event(&json!({ "n": 2 }));
        let _ = shared.stopping.send(true);
        let text = axum::body::to_bytes(live.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&text),
            "event: transition\ndata: {\"n\":1}\n\nevent: transition\ndata: {\"n\":2}\n\n"
        );
    }

    #[tokio::test]
    async fn the_token_is_checked_before_anything_else() {
        let (tx, _loop) = echo_loop();
        let app = router(tx, Arc::new(Shared::default()), Some("s3cret-token".into()));
        let (st, v) = call(&app, "GET", "/healthz", &[], "").await;
        assert_eq!(
            (st, v["error"].as_str()),
            (401, Some("missing or wrong bearer token"))
        );
        let (st, _) = call(
            &app,
            "GET",
            "/nothing",
            &[("authorization", "Bearer s3cret-tok")],
            "",
        )
        .await;
        assert_eq!(st, 401, "unknown routes too");
        let (st, _) = call(
            &app,
            "GET",
            "/healthz",
            &[("authorization", "Bearer s3cret-token")],
            "",
        )
        .await;
        assert_eq!(st, 200);
        // the scheme in any case (RFC 7235), the token exactly
        for (value, want) in [
            ("bearer s3cret-token", 200),
            ("BEARER  s3cret-token", 200),
            ("Bearer S3CRET-TOKEN", 401),
            ("Basic s3cret-token", 401),
            ("Bearers3cret-token", 401),
        ] {
            let (st, _) = call(&app, "GET", "/healthz", &[("authorization", value)], "").await;
            assert_eq!(st, want, "{value}");
        }
    }
}
