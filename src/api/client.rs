//! The CLI's side of the API: one request per connection over the unix socket.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

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
    /// The daemon answered with an error.
    #[error("{message}")]
    Api { status: u16, message: String },
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

fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })
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

fn error_of(status: u16, payload: &str) -> ClientError {
    let message = serde_json::from_str::<Value>(payload)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| format!("HTTP status {status}"));
    ClientError::Api { status, message }
}

/// Sends one request with a body of the given content type.
pub fn request_with_type(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
) -> Result<Value, ClientError> {
    let mut s = connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: virt-personad\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ClientError::Protocol("no header end".into()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ClientError::Protocol(format!(
                "bad status line '{}'",
                head.lines().next().unwrap_or("")
            ))
        })?;
    if status >= 400 {
        return Err(error_of(status, payload));
    }
    if head
        .to_ascii_lowercase()
        .contains("content-type: text/plain")
    {
        return Ok(Value::String(payload.to_string()));
    }
    serde_json::from_str(payload).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Follows a server-sent event stream, calling `on_event` with each event's data.
pub fn stream(
    socket: &Path,
    path: &str,
    mut on_event: impl FnMut(Value),
) -> Result<(), ClientError> {
    let mut s = connect(socket)?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: virt-personad\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )?;
    let mut r = std::io::BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 200 {
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        return Err(error_of(
            status,
            rest.split_once("\r\n\r\n").map(|x| x.1).unwrap_or(""),
        ));
    }
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            on_event(serde_json::from_str(data).map_err(|e| ClientError::Protocol(e.to_string()))?);
        }
    }
}
