//! JSON bodies for the answers hyper writes by itself. A request hyper cannot
//! parse (a bad request line or header, headers over the buffer limit, a URI
//! too long) is answered by hyper before any service of ours runs, with an
//! empty body; every other error of the API is `{"error": "…"}`. This wrapper
//! of a connection's I/O recognises those answers (a 400, 414 or 431 head
//! with `content-length: 0`: our own errors always have a body) and writes
//! them with a JSON body instead. Nothing else is touched.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};

/// A connection's I/O whose parse-error answers get JSON bodies.
pub struct JsonErrors<I> {
    inner: I,
    /// A rewritten answer still to be written (hyper was told it was).
    pending: Vec<u8>,
    written: usize,
}

impl<I> JsonErrors<I> {
    pub fn new(inner: I) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

/// The message for a status hyper answers by itself.
fn message(status: &[u8]) -> Option<&'static str> {
    Some(match status {
        b"400" => {
            "the request is not valid HTTP/1.1 (its request line or a header could not be parsed)"
        }
        b"414" => "the request's URI is too long",
        b"431" => "the request's headers are too large (the limit is 64 KiB)",
        _ => return None,
    })
}

/// `head` with a JSON body, when it is one of hyper's own error answers.
pub fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let msg = message(rest.get(..3)?)?;
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if end != head.len() {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let lower = text.to_ascii_lowercase();
    let at = lower.find("\r\ncontent-length: 0\r\n")?;
    let body = serde_json::json!({ "error": msg }).to_string();
    let mut out = String::with_capacity(head.len() + body.len() + 64);
    out.push_str(&text[..at]);
    out.push_str("\r\ncontent-type: application/json\r\ncontent-length: ");
    out.push_str(&body.len().to_string());
    out.push_str(&text[at + "\r\ncontent-length: 0".len()..]);
    out.push_str(&body);
    Some(out.into_bytes())
}

impl<I: Write + Unpin> JsonErrors<I> {
    /// Writes what is left of a rewritten answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<I: Read + Unpin> Read for JsonErrors<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: Write + Unpin> Write for JsonErrors<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.drain(cx))?;
        if let Some(out) = rewrite(buf) {
            self.pending = out;
            self.written = 0;
            // told written now; the rest goes out on the next write or flush
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// One buffer per write: a head is then always whole in one call.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_s_own_empty_error_answers_are_rewritten() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(h.contains("content-type: application/json"), "{h}");
        assert!(
            h.contains(&format!("content-length: {}", body.len())),
            "{h}"
        );
        assert!(h.contains("date: Tue"), "{h}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("too large"));
        // ours (a body follows), other statuses, a partial head: untouched
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
        ] {
            assert!(rewrite(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }
}
