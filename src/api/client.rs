//! The CLI's side of the API: hyper's HTTP/1.1 client over the unix socket,
//! one request per connection, on a current-thread runtime of its own (the CLI
//! is synchronous; the daemon's runtime is not involved).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long the CLI waits for an answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach virt-personad at {path}: {source} (is the daemon running? see --socket)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to virt-personad: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed answer from virt-personad: {0}")]
    Protocol(String),
    #[error("virt-personad did not answer within {} s", ANSWER_TIMEOUT.as_secs())]
    Timeout,
    /// The daemon answered with an error.
    #[error("{message}")]
    Api { status: u16, message: String },
}

impl From<hyper::Error> for ClientError {
    fn from(e: hyper::Error) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One path segment, encoded.
pub fn seg(s: &str) -> String {
    percent_encode(s)
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?)
}

/// Opens a connection and sends one request; returns the response.
async fn send(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "virt-personad")
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(sender.send_request(req).await?)
}

fn error_of(status: StatusCode, payload: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| format!("HTTP status {status}"));
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

/// Sends one request with a JSON body (or none) and returns the JSON answer.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Value, ClientError> {
    request_with_type(
        socket,
        method,
        path,
        body.unwrap_or_default(),
        "application/json",
    )
}

/// Sends one request with a body of the given content type. A plain-text
/// answer (the metrics) comes back as a JSON string.
pub fn request_with_type(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
) -> Result<Value, ClientError> {
    runtime()?.block_on(async {
        let exchange = async {
            let res = send(socket, method, path, body, content_type).await?;
            let status = res.status();
            let text = res
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
            let payload = res.into_body().collect().await?.to_bytes();
            Ok::<_, ClientError>((status, text, payload))
        };
        let (status, text, payload) = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout)??;
        if !status.is_success() {
            return Err(error_of(status, &payload));
        }
        if text {
            return Ok(Value::String(
                String::from_utf8_lossy(&payload).into_owned(),
            ));
        }
        serde_json::from_slice(&payload).map_err(|e| ClientError::Protocol(e.to_string()))
    })
}

/// Follows a server-sent event stream, calling `on_event` with the data of
/// each `transition` event, until the daemon ends the stream. A `dropped`
/// event (the client fell too far behind) ends it with that error.
pub fn stream(
    socket: &Path,
    path: &str,
    mut on_event: impl FnMut(Value),
) -> Result<(), ClientError> {
    runtime()?.block_on(async {
        let res = send(socket, "GET", path, b"", "application/json").await?;
        let status = res.status();
        let mut body = res.into_body();
        if !status.is_success() {
            let payload = body.collect().await?.to_bytes();
            return Err(error_of(status, &payload));
        }
        // SSE framing: events are blocks of `field: value` lines ending in a blank line
        let mut pending = Vec::new();
        let mut kind = String::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if let Some(k) = line.strip_prefix("event:") {
                    kind = k.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    let v: Value = serde_json::from_str(d.trim())
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    if kind == "dropped" {
                        return Err(error_of(
                            StatusCode::SERVICE_UNAVAILABLE,
                            d.trim().as_bytes(),
                        ));
                    }
                    on_event(v);
                } else if line.is_empty() {
                    kind.clear();
                }
            }
        }
        Ok(())
    })
}
