//! The tools admins already run, started by a test with its own ports and
//! files and stopped on Drop: Debian's HAProxy (with its Prometheus
//! exporter), Prometheus and Alertmanager; and a plain HTTP server that
//! answers what a test tells it (a backend, or a broken page).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::hostile::free_port;

/// A child process killed on Drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
    pub log: PathBuf,
}

impl Proc {
    pub fn start(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
        let f = std::fs::File::create(log).expect("log file");
        let f2 = f.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e} (scripts/setup-host.sh installs it)"));
        Proc {
            child,
            name,
            log: log.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `url`'s host:port answers `GET path` with 200 (a minute).
pub fn wait_http(addr: &str, path: &str, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = get(addr, path);
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer on {addr}{path}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One GET on a new connection: (status, body).
pub fn get(addr: &str, path: &str) -> (u16, String) {
    super::hostile::tcp(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// What a [`Page`] answers.
#[derive(Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Wait this long before answering (a slow source).
    pub delay: Duration,
}

impl Answer {
    pub fn ok(body: impl Into<String>) -> Answer {
        Answer {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

/// A plain HTTP/1.1 server on 127.0.0.1 answering every request with the
/// [`Answer`] in force; counts requests and keeps the last one's head.
pub struct Page {
    pub addr: String,
    answer: Arc<Mutex<Answer>>,
    pub requests: Arc<AtomicU64>,
    pub last_head: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
}

impl Page {
    pub fn start(answer: Answer) -> Page {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let answer = Arc::new(Mutex::new(answer));
        let requests = Arc::new(AtomicU64::new(0));
        let last_head = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, r, h, s) = (
            answer.clone(),
            requests.clone(),
            last_head.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            for c in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let (a, r, h, s) = (a.clone(), r.clone(), h.clone(), s.clone());
                std::thread::spawn(move || serve(c, &a, &r, &h, &s));
            }
        });
        Page {
            addr,
            answer,
            requests,
            last_head,
            stop,
        }
    }

    pub fn set(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(mut c: TcpStream, a: &Mutex<Answer>, r: &AtomicU64, h: &Mutex<String>, stop: &AtomicBool) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    loop {
        // a stopped page closes its kept connections too, as a dead server's are
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match c.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
            if head.len() > 65536 {
                return;
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        r.fetch_add(1, Ordering::SeqCst);
        let text = String::from_utf8_lossy(&head).to_string();
        let close = text.to_ascii_lowercase().contains("connection: close");
        *h.lock().unwrap() = text;
        let ans = a.lock().unwrap().clone();
        std::thread::sleep(ans.delay);
        let reply = format!(
            "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n{}",
            ans.status,
            ans.content_type,
            ans.body.len(),
            ans.body
        );
        if c.write_all(reply.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// Debian's HAProxy: a `web` frontend on `web_port` in front of `servers`
/// (name, address), and its Prometheus exporter on `metrics_port`.
pub struct Haproxy {
    pub proc: Proc,
    pub web: String,
    pub metrics: String,
    pub dir: PathBuf,
}

impl Haproxy {
    pub fn start(dir: &Path, servers: &[(&str, &str)]) -> Haproxy {
        std::fs::create_dir_all(dir).expect("haproxy dir");
        let (web, metrics) = (free_port(), free_port());
        let mut cfg = format!(
            "global\n  log stderr format raw local0 err\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
frontend stats\n  bind 127.0.0.1:{metrics}\n  http-request use-service prometheus-exporter if {{ path /metrics }}\n\
frontend web\n  bind 127.0.0.1:{web}\n  default_backend app\nbackend app\n"
        );
        for (name, addr) in servers {
            cfg.push_str(&format!("  server {name} {addr}\n"));
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, cfg).expect("haproxy.cfg");
        let proc = Proc::start(
            "haproxy",
            Command::new("haproxy").arg("-db").arg("-f").arg(&file),
            &dir.join("haproxy.log"),
        );
        let h = Haproxy {
            proc,
            web: format!("127.0.0.1:{web}"),
            metrics: format!("127.0.0.1:{metrics}"),
            dir: dir.to_path_buf(),
        };
        wait_http(&h.metrics, "/metrics", "haproxy", || h.proc.log());
        h
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }
}

/// A bounded load loop: `per_second` GETs a second to `addr` until stopped
/// (or `max` elapsed), on one keep-alive connection at a time.
pub struct LoadLoop {
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    pub started: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoadLoop {
    pub fn start(addr: &str, per_second: u64, max: Duration) -> LoadLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n, addr) = (stop.clone(), sent.clone(), addr.to_string());
        let started = Instant::now();
        let gap = Duration::from_micros(1_000_000 / per_second.max(1));
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !s.load(Ordering::SeqCst) && started.elapsed() < max {
                let _ = get(&addr, "/");
                n.fetch_add(1, Ordering::SeqCst);
                next += gap;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        LoadLoop {
            stop,
            sent,
            started,
            thread: Some(thread),
        }
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LoadLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Debian's Prometheus server on its own port and storage, scraping
/// `jobs` (`job_name`, extra YAML for the job, targets) every second.
pub struct Prometheus {
    pub proc: Proc,
    pub addr: String,
}

impl Prometheus {
    pub fn start(dir: &Path, jobs: &[(&str, &str, &[String])]) -> Prometheus {
        Self::start_on(dir, free_port(), jobs)
    }

    /// As [`Prometheus::start`], on `port`.
    pub fn start_on(dir: &Path, port: u16, jobs: &[(&str, &str, &[String])]) -> Prometheus {
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (name, extra, targets) in jobs {
            let t: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            cfg.push_str(&format!(
                "  - job_name: {name}\n{extra}    static_configs:\n      - targets: [{}]\n",
                t.join(", ")
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, cfg).expect("prometheus.yml");
        let addr = format!("127.0.0.1:{port}");
        let proc = Proc::start(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}")),
            &dir.join("prometheus.log"),
        );
        let p = Prometheus { proc, addr };
        wait_http(&p.addr, "/-/ready", "prometheus", || p.proc.log());
        p
    }

    /// An instant query's result vector (empty while there is no data).
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let (_, body) = get(
            &self.addr,
            &format!(
                "/api/v1/query?query={}",
                virt_persona::api::client::seg(expr)
            ),
        );
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// Debian's Alertmanager on its own port and storage (no cluster port),
/// sending every alert to `webhook` with the bearer token in `token_file`
/// after a second.
pub struct Alertmanager {
    pub proc: Proc,
    pub addr: String,
}

impl Alertmanager {
    pub fn start(dir: &Path, webhook: &str, token_file: &Path) -> Alertmanager {
        std::fs::create_dir_all(dir.join("data")).expect("alertmanager dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let cfg = format!(
            "route:\n  receiver: vp\n  group_by: ['alertname', 'domain']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: vp\n    webhook_configs:\n      - url: '{webhook}'\n        send_resolved: true\n        http_config:\n          authorization:\n            type: Bearer\n            credentials_file: '{}'\n",
            token_file.display()
        );
        let file = dir.join("alertmanager.yml");
        std::fs::write(&file, cfg).expect("alertmanager.yml");
        let proc = Proc::start(
            "prometheus-alertmanager",
            Command::new("prometheus-alertmanager")
                .arg(format!("--config.file={}", file.display()))
                .arg(format!("--storage.path={}", dir.join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--cluster.listen-address="),
            &dir.join("alertmanager.log"),
        );
        let a = Alertmanager { proc, addr };
        wait_http(&a.addr, "/-/ready", "alertmanager", || a.proc.log());
        a
    }

    /// Posts alerts (JSON array) to Alertmanager's API, as Prometheus would.
    pub fn post(&self, alerts: &serde_json::Value) {
        let body = alerts.to_string();
        let (status, answer) = super::hostile::tcp(
            &self.addr,
            &format!(
                "POST /api/v2/alerts HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                self.addr,
                body.len()
            ),
        );
        assert_eq!(status, 200, "{answer}\n{}", self.proc.log());
    }
}

/// One GET on a new connection, the body de-chunked (HAProxy's exporter
/// answers in chunks): (status, body).
pub fn fetch(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut c) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let Some((head, body)) = out.split_once("\r\n\r\n") else {
        return (0, String::new());
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, body.to_string());
    }
    let (mut rest, mut whole) = (body, String::new());
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        whole.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    (status, whole)
}
