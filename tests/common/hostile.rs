//! Hostile clients for the tests and benchmarks: a flood of connections that
//! send nothing or half a request, held open and reopened as the daemon
//! closes them, from one thread (one process, one source address).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where a flood goes.
#[derive(Clone)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn open(t: &Target) -> Option<Stream> {
        let s = match t {
            Target::Tcp(a) => {
                let addr = a.parse().ok()?;
                Stream::Tcp(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?)
            }
            Target::Unix(p) => Stream::Unix(UnixStream::connect(p).ok()?),
        };
        match &s {
            Stream::Tcp(c) => c.set_nonblocking(true).ok()?,
            Stream::Unix(c) => c.set_nonblocking(true).ok()?,
        }
        Some(s)
    }
    fn write(&mut self, b: &[u8]) {
        let _ = match self {
            Stream::Tcp(c) => c.write(b),
            Stream::Unix(c) => c.write(b),
        };
    }
    /// Still open (the daemon has not closed it)?
    fn open_still(&mut self) -> bool {
        let mut buf = [0u8; 512];
        let r = match self {
            Stream::Tcp(c) => c.read(&mut buf),
            Stream::Unix(c) => c.read(&mut buf),
        };
        match r {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One request on a new TCP connection: (status, body); (0, "") when the
/// connection fails or is closed without an answer.
pub fn tcp(addr: &str, request: &str) -> (u16, String) {
    let Ok(mut c) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = c.write_all(request.as_bytes());
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `GET /healthz` on a new TCP connection with the bearer `token`: its status.
pub fn healthz_tcp(addr: &str, token: &str) -> u16 {
    tcp(
        addr,
        &format!("GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
    )
    .0
}

/// (VmRSS, VmHWM) of a process, in MiB.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A running flood: `n` connections held, every other one with half a
/// request line sent, each reopened when the daemon closes it.
pub struct Flood {
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    opened: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    pub fn start(target: Target, n: usize) -> Flood {
        virt_persona::api::server::raise_open_files_limit();
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let (s, h, o) = (stop.clone(), held.clone(), opened.clone());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<Option<Stream>> = (0..n).map(|_| None).collect();
            while !s.load(Ordering::Relaxed) {
                for (i, slot) in conns.iter_mut().enumerate() {
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    if !slot.as_mut().is_some_and(Stream::open_still) {
                        *slot = Stream::open(&target).map(|mut c| {
                            o.fetch_add(1, Ordering::Relaxed);
                            if i % 2 == 1 {
                                c.write(b"GET /v1/domains HTTP/1.1\r\nHost: x\r\nAuthoriz");
                            }
                            c
                        });
                    }
                }
                h.store(
                    conns.iter().filter(|c| c.is_some()).count(),
                    Ordering::Relaxed,
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Flood {
            stop,
            held,
            opened,
            thread: Some(thread),
        }
    }

    /// Connections open now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Connections opened so far (the first `n` and every reopening).
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Waits until `n` connections are held (up to 60 s).
    pub fn wait_held(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.held() < n {
            assert!(
                Instant::now() < deadline,
                "the flood holds only {} of {n} connections",
                self.held()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `q` quantile (0..=1) of some durations.
pub fn quantile(d: &mut [Duration], q: f64) -> Duration {
    d.sort();
    if d.is_empty() {
        return Duration::ZERO;
    }
    d[((d.len() - 1) as f64 * q).round() as usize]
}

/// One request with a body on the unix socket: (status, body).
pub fn send(
    sock: &std::path::Path,
    method: &str,
    path: &str,
    ctype: &str,
    body: &str,
) -> (u16, String) {
    super::http(
        sock,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Runs `work` while another thread asks `GET /healthz` on the unix socket
/// every 5 ms (each must answer 200); what `work` returned, and the
/// latencies seen meanwhile.
pub fn healthz_while<T>(sock: &std::path::Path, work: impl FnOnce() -> T) -> (T, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, sock) = (stop.clone(), sock.to_path_buf());
    let asker = std::thread::spawn(move || {
        let mut lat = Vec::new();
        while !s.load(Ordering::Relaxed) {
            let t = Instant::now();
            let (st, _) = super::http(&sock, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(st, 200, "/healthz");
            lat.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        lat
    });
    // a first answer before the work starts: the asker is running
    std::thread::sleep(Duration::from_millis(50));
    let out = work();
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let lat = asker.join().expect("the /healthz asker");
    (out, lat)
}

/// The worst persona a client may send: 1,000 `match.names` globs of the
/// costliest kind, just under the 256 KiB file limit.
pub fn worst_persona(id: &str) -> String {
    let glob = |i: usize| {
        let mut g = format!("w{i}-");
        while g.len() < 240 {
            g.push_str("*?[a-z]");
        }
        g
    };
    let list: Vec<String> = (0..1000).map(|i| format!("\"{}\"", glob(i))).collect();
    format!(
        "id = \"{id}\"\n[match]\nnames = [{}]\n[tuning]\ncpu_shares = 512\n",
        list.join(",")
    )
}
