//! One GET to a source: hyper's HTTP/1.1 client over TCP (rustls for
//! `https://`), a bearer token from a file, a deadline over the whole
//! exchange and a cap on the body.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, from `/`.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(s) => return Err(format!("{url:?}: scheme {s:?} (expected http or https)")),
            None => return Err(format!("{url:?}: expected http://HOST[:PORT]/PATH")),
        };
        let auth = uri.authority().ok_or_else(|| format!("{url:?}: no host"))?;
        if auth.as_str().contains('@') {
            return Err(format!(
                "{url:?}: credentials in the URL would show in logs and status; use bearer_token_file"
            ));
        }
        Ok(Target {
            tls,
            host: auth.host().trim_matches(['[', ']']).to_string(),
            port: auth.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
        })
    }
}

/// What a fetch can fail with, said the way an admin checks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("no answer within {0} ms")]
    Timeout(i64),
    #[error("HTTP status {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { status: u16, body: String },
    #[error("the body is over the limit of {0} bytes (max_body)")]
    TooLarge(u64),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Http(String),
    #[error("credentials: {0}")]
    Credentials(String),
}

/// The TLS client configuration: the CA file's certificates, or the
/// system's bundle.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    const SYSTEM: &str = "/etc/ssl/certs/ca-certificates.crt";
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let path = ca_file.unwrap_or(Path::new(SYSTEM));
    let pem = crate::files::read_limited(path, 4 << 20)
        .map_err(|e| format!("CA certificates {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| format!("CA certificates {}: {e}", path.display()))?;
        // one odd certificate in a system bundle does not void the others
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(format!(
            "CA certificates {}: none in the file",
            path.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The bearer token of a source: a private file (like the API's token).
pub fn read_token(path: &Path) -> Result<String, FetchError> {
    crate::files::read_secret(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| FetchError::Credentials(format!("{}: {e}", path.display())))
}

/// One request, the whole exchange within `timeout`.
pub async fn get(
    target: &Target,
    path: &str,
    accept: &str,
    token: Option<&str>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
    max_body: u64,
) -> Result<Bytes, FetchError> {
    let ms = timeout.as_millis() as i64;
    match tokio::time::timeout(
        timeout,
        exchange(target, path, accept, token, tls, max_body),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout(ms)),
    }
}

async fn exchange(
    target: &Target,
    path: &str,
    accept: &str,
    token: Option<&str>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    max_body: u64,
) -> Result<Bytes, FetchError> {
    let addr = format!("{}:{}", target.host, target.port);
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| FetchError::Connect(format!("{addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let authority = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        addr.clone()
    };
    let mut req = Request::builder()
        .uri(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, accept)
        .header(
            header::USER_AGENT,
            concat!("virt-personad/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let res = match (target.tls, tls) {
        (true, Some(cfg)) => {
            let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| FetchError::Tls(format!("{}: {e}", target.host)))?;
            let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| FetchError::Tls(format!("{addr}: {e}")))?;
            send(TokioIo::new(stream), req).await?
        }
        (true, None) => return Err(FetchError::Tls("no TLS configuration".into())),
        (false, _) => send(TokioIo::new(tcp), req).await?,
    };
    let status = res.status();
    if let Some(len) = res
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max_body {
            return Err(FetchError::TooLarge(max_body));
        }
    }
    let body = Limited::new(res.into_body(), max_body as usize)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                FetchError::TooLarge(max_body)
            } else {
                FetchError::Http(format!("reading the body: {e}"))
            }
        })?
        .to_bytes();
    if !status.is_success() {
        let text: String = String::from_utf8_lossy(&body)
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        return Err(FetchError::Status {
            status: status.as_u16(),
            body: text,
        });
    }
    Ok(body)
}

async fn send<T>(
    io: TokioIo<T>,
    req: Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, FetchError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| FetchError::Http(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8404/metrics").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (false, "127.0.0.1", 8404, "/metrics")
        );
        let t = Target::parse("https://prom.example:9090").unwrap();
        assert_eq!((t.tls, t.port, t.path.as_str()), (true, 9090, "/"));
        let t = Target::parse("http://[::1]/m?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 80, "/m?x=1")
        );
        assert!(Target::parse("ftp://x/").unwrap_err().contains("scheme"));
        assert!(Target::parse("http://u:p@x/")
            .unwrap_err()
            .contains("bearer_token_file"));
        assert!(Target::parse("/metrics").is_err());
        assert_eq!(
            crate::api::client::seg("sum(rate(x{a=\"b\"}[1m]))"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }
}
