//! Real-host test harness: builds the boot-sector guest, boots uniquely named
//! guests on the real libvirtd (KVM, or TCG where /dev/kvm does not work),
//! switches their load over COM1, and tears them down on Drop even when a test fails.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use virt_persona::hypervisor::libvirt::LibvirtHypervisor;
use virt_persona::hypervisor::{DomainInfo, Hypervisor};

pub mod host_vm;
pub mod hostile;
pub mod services;

pub const REAL_URI: &str = "qemu:///system";

/// At most this many guests boot and run at once in one test binary: two cores.
/// Benchmarks of many idle guests raise it with [`set_max_guests`].
static MAX_GUESTS: AtomicUsize = AtomicUsize::new(2);

pub fn set_max_guests(n: usize) {
    MAX_GUESTS.store(n, Ordering::SeqCst);
}

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());
/// Held shared by every guest, exclusively by a guest whose test measures CPU.
static ALONE: RwLock<()> = RwLock::new(());

enum Turn {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn work_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&d).expect("create guest dir");
    d
}

/// Assembles fixtures/guest/boot.S into a 512-byte boot sector, once per test binary.
pub fn boot_sector() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/guest/boot.S");
        let dir = work_dir();
        let obj = dir.join(format!("boot-{}.o", std::process::id()));
        let bin = dir.join(format!("boot-{}.bin", std::process::id()));
        let st = Command::new("as")
            .args(["--32", "-o"])
            .arg(&obj)
            .arg(&src)
            .status()
            .expect("run GNU as");
        assert!(st.success(), "assembling {src:?} failed");
        let st = Command::new("ld")
            .args([
                "-m",
                "elf_i386",
                "-Ttext",
                "0x7c00",
                "--oformat",
                "binary",
                "-o",
            ])
            .arg(&bin)
            .arg(&obj)
            .status()
            .expect("run ld");
        assert!(st.success(), "linking the boot sector failed");
        let len = std::fs::metadata(&bin).expect("boot sector built").len();
        assert_eq!(len, 512, "the boot sector must be exactly 512 bytes");
        bin
    })
}

/// "kvm" when /dev/kvm can be opened, else "qemu" (TCG).
pub fn virt_type() -> &'static str {
    static T: OnceLock<&'static str> = OnceLock::new();
    T.get_or_init(|| {
        let ok = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if ok {
            "kvm"
        } else {
            eprintln!("/dev/kvm is not usable: guests run under TCG");
            "qemu"
        }
    })
}

/// libvirt's test driver on the five-domain host of fixtures/test-host.xml.
pub fn test_host_uri() -> String {
    format!(
        "test://{}/fixtures/test-host.xml",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A fresh directory for a test, with an empty `personas/` in it.
pub fn test_dir(prefix: &str, name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("personas")).expect("test directory");
    d
}

/// A connection to the real libvirtd; fails the test with a hint when it is not running.
pub fn real() -> LibvirtHypervisor {
    LibvirtHypervisor::connect(REAL_URI).unwrap_or_else(|e| {
        panic!("{e}\nstart libvirtd first: scripts/setup-host.sh (the README's test command does)")
    })
}

/// Load modes of the boot-sector guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    Idle,
    Spin,
    Disk,
}

/// A running test guest; destroyed, undefined and its files removed on Drop.
pub struct Guest {
    pub name: String,
    /// "kvm" or "qemu" (TCG).
    pub virt: &'static str,
    _turn: Turn,
    hv: LibvirtHypervisor,
    dir: PathBuf,
    serial: Option<UnixStream>,
}

impl Guest {
    /// Defines and starts a persistent guest with `vcpus` vCPUs, idle.
    pub fn boot(test: &str, vcpus: u32) -> Guest {
        Self::boot_extra(test, vcpus, "")
    }

    /// Like [`Guest::boot`], with `extra` added to the definition before
    /// `<devices>` (`<numatune>…</numatune>`, `<iothreads>1</iothreads>`).
    pub fn boot_extra(test: &str, vcpus: u32, extra: &str) -> Guest {
        let turn = Turn::Shared(ALONE.read().unwrap_or_else(|p| p.into_inner()));
        Self::boot_with(test, vcpus, turn, virt_type(), extra)
    }

    /// Like [`Guest::boot`], but no other guest of this test binary runs while it
    /// lives: for tests that measure CPU time on a two-core host.
    pub fn boot_alone(test: &str, vcpus: u32) -> Guest {
        let turn = Turn::Alone(ALONE.write().unwrap_or_else(|p| p.into_inner()));
        Self::boot_with(test, vcpus, turn, virt_type(), "")
    }

    /// Like [`Guest::boot_alone`], but always under TCG (`<domain type='qemu'>`):
    /// the fallback for hosts without a usable /dev/kvm, exercised here too.
    pub fn boot_alone_tcg(test: &str, vcpus: u32) -> Guest {
        let turn = Turn::Alone(ALONE.write().unwrap_or_else(|p| p.into_inner()));
        Self::boot_with(test, vcpus, turn, "qemu", "")
    }

    fn boot_with(test: &str, vcpus: u32, turn: Turn, virt: &'static str, extra: &str) -> Guest {
        {
            let (lock, cv) = &SLOTS;
            let mut n = lock.lock().unwrap_or_else(|p| p.into_inner());
            while *n >= MAX_GUESTS.load(Ordering::SeqCst) {
                n = cv.wait(n).unwrap_or_else(|p| p.into_inner());
            }
            *n += 1;
        }
        let name = format!(
            "vpt-{}-{}-{}",
            test.replace('_', "-"),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = work_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("guest dir");
        let disk = dir.join("disk.img");
        std::fs::copy(boot_sector(), &disk).expect("copy boot sector");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .expect("open disk");
        f.set_len(1 << 20).expect("size disk");
        let sock = dir.join("com1.sock");
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/guest-domain.xml"),
        )
        .expect("read domain template");
        let xml = template
            .replace("@TYPE@", virt)
            .replace("@NAME@", &name)
            .replace("@VCPUS@", &vcpus.to_string())
            .replace("@DISK@", disk.to_str().expect("utf-8 path"))
            .replace("@SOCK@", sock.to_str().expect("utf-8 path"))
            .replace("  <devices>", &format!("{extra}\n  <devices>"));
        let hv = real();
        // the guard exists before anything is defined, so a failure below still cleans up
        let mut g = Guest {
            name: name.clone(),
            _turn: turn,
            virt,
            hv,
            dir,
            serial: None,
        };
        g.hv.define(&xml)
            .unwrap_or_else(|e| panic!("define {name}: {e}"));
        g.hv.start(&name)
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("COM1 socket of {name}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        g.serial = Some(stream);
        // the firmware's boot burns CPU: return once the boot sector answers
        g.set_load(Load::Idle);
        g
    }

    /// Switches the guest's load and waits for its acknowledgement.
    pub fn set_load(&mut self, load: Load) {
        let byte = match load {
            Load::Idle => b'0',
            Load::Spin => b'1',
            Load::Disk => b'2',
        };
        let name = self.name.clone();
        let s = self.serial.as_mut().expect("serial connected");
        let deadline =
            Instant::now() + Duration::from_secs(if self.virt == "kvm" { 90 } else { 180 });
        let mut last_send = Instant::now() - Duration::from_secs(10);
        let mut seen: Vec<u8> = Vec::new();
        loop {
            // the guest polls COM1 between loops; resend now and then in case a byte
            // arrived before its firmware was ready
            if last_send.elapsed() > Duration::from_secs(2) {
                s.write_all(&[byte]).expect("write to COM1");
                last_send = Instant::now();
            }
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(2).any(|w| w == [b'!', byte]) {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("COM1 of {name}: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not acknowledge load {load:?}"
            );
        }
    }

    /// The persistent definition as libvirt keeps it (`virsh dumpxml --inactive`).
    pub fn definition_xml(&self) -> String {
        let out = Command::new("virsh")
            .args(["-c", REAL_URI, "dumpxml", "--inactive", "--security-info"])
            .arg(&self.name)
            .output()
            .expect("run virsh");
        assert!(
            out.status.success(),
            "virsh dumpxml {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn info(&self) -> DomainInfo {
        self.hv.domain(&self.name).expect("guest info")
    }

    /// The guest's cgroup v1 directory for a controller, if the host uses v1.
    pub fn cgroup_dir(&self, controller: &str) -> Option<PathBuf> {
        let base = PathBuf::from("/sys/fs/cgroup")
            .join(controller)
            .join("machine");
        let suffix = format!("-{}.libvirt-qemu", self.name);
        std::fs::read_dir(base)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(&suffix))
            })
    }

    /// Destroys now (the guard still undefines on Drop).
    pub fn stop(&mut self) {
        self.serial = None;
        let _ = self.hv.destroy(&self.name);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.serial = None;
        let _ = self.hv.destroy(&self.name);
        let _ = self.hv.undefine(&self.name);
        let _ = std::fs::remove_dir_all(&self.dir);
        let (lock, cv) = &SLOTS;
        let mut n = lock.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        cv.notify_one();
    }
}

/// Reads a cgroup file, trimmed.
pub fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| panic!("{p:?}: {e}"))
}

fn common_uri() -> &'static str {
    REAL_URI
}

/// virt-personad as a subprocess, killed on Drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl Daemon {
    /// Starts the daemon on the real libvirtd with personas from `dir/personas`.
    pub fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, common_uri(), "5s", &[])
    }

    /// Starts the daemon with a libvirt URI, a drift-check interval and extra environment.
    pub fn start_with(dir: &Path, uri: &str, verify: &str, env: &[(&str, String)]) -> Daemon {
        Self::start_args(
            dir,
            uri,
            &["--interval", "1s", "--verify-interval", verify],
            env,
        )
    }

    /// Starts the daemon with explicit flags (besides -c, --personas, --state-dir, --socket).
    pub fn start_args(dir: &Path, uri: &str, flags: &[&str], env: &[(&str, String)]) -> Daemon {
        Self::start_wrapped(&[], dir, uri, flags, env)
    }

    /// As [`Daemon::start_args`], run through `wrapper` (e.g. `ip netns exec NS`,
    /// which execs the daemon in place, so the child is still the daemon).
    pub fn start_wrapped(
        wrapper: &[&str],
        dir: &Path,
        uri: &str,
        flags: &[&str],
        env: &[(&str, String)],
    ) -> Daemon {
        // VP_DAEMON_BIN: another build of the daemon (benchmarks compare two)
        let bin = std::env::var_os("VP_DAEMON_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_virt-personad")));
        Self::start_bin(&bin, wrapper, dir, uri, flags, env)
    }

    /// As [`Daemon::start_wrapped`], with the daemon binary `bin` (another
    /// release's, for the upgrade tests).
    pub fn start_bin(
        bin: &Path,
        wrapper: &[&str],
        dir: &Path,
        uri: &str,
        flags: &[&str],
        env: &[(&str, String)],
    ) -> Daemon {
        let socket = dir.join("api.sock");
        // a socket a killed daemon left: the wait below is for this one's
        {
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(&socket);
            }
        }
        let log = std::fs::File::create(dir.join("daemon.log")).expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(["-c", uri])
            .args(flags)
            .arg("--personas")
            .arg(dir.join("personas"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&socket)
            .env("VIRT_PERSONA_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start virt-personad");
        let mut d = Daemon {
            child,
            socket,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.socket.exists() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("daemon exited ({status}): {}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
    /// A GET on the daemon's API, as JSON; fails the test on any error.
    pub fn get(&self, path: &str) -> serde_json::Value {
        virt_persona::api::client::request(&self.socket, "GET", path, None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
    }
    /// Ticks the daemon has completed (from /healthz).
    pub fn ticks(&self) -> u64 {
        self.get("/healthz")["ticks"].as_u64().unwrap_or(0)
    }
    /// Waits (up to a minute) until the daemon has completed `n` ticks in
    /// all: a bounded wait on its own progress instead of a fixed sleep.
    pub fn wait_until_ticks(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ticks() < n {
            assert!(
                Instant::now() < deadline,
                "the daemon did not reach {n} ticks: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    /// CPU time the daemon's process has used (user + system), from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the daemon's /proc stat");
        // after the command name in parentheses: utime and stime are fields 14 and 15
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let ticks = f[11] + f[12];
        let hz = clk_tck();
        Duration::from_secs_f64(ticks as f64 / hz as f64)
    }
    pub fn persona(&self, name: &str) -> Option<String> {
        let v = virt_persona::api::client::request(
            &self.socket,
            "GET",
            &format!("/v1/domains/{name}"),
            None,
        )
        .ok()?;
        v["persona"].as_str().map(str::to_string)
    }
    /// Sends the daemon a signal by name (`"HUP"`, `"TERM"`).
    pub fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{name}");
    }
    /// Waits (up to `secs`) for the daemon to exit and returns how it did.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the daemon") {
                return status;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "the daemon did not exit within {secs} s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts the daemon with `flags` on `uri` and `dir`'s personas and state
/// (and a socket of its own), expecting it to refuse to start: its stderr.
pub fn daemon_refused(dir: &Path, uri: &str, flags: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_virt-personad"))
        .args(["-c", uri])
        .args(flags)
        .arg("--personas")
        .arg(dir.join("personas"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("refused.sock"))
        .output()
        .expect("run virt-personad");
    assert!(!out.status.success(), "the daemon started: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One raw HTTP request over the daemon's unix socket: (status, body). The
/// connection is closed after the answer (`Connection: close` is added to a
/// request that does not say).
pub fn http(sock: &Path, request: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    // generous: a debug build reading a 32 MB import beside the VM tests and
    // a busy neighbour took over 10 s; a daemon that never answers still fails
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let request = match request.split_once("\r\n") {
        Some((line, rest)) if !request.to_ascii_lowercase().contains("\r\nconnection:") => {
            format!("{line}\r\nConnection: close\r\n{rest}")
        }
        _ => request.to_string(),
    };
    // the daemon may answer (413) and close before a huge body is all written
    let _ = s.write_all(request.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    )
}

/// The message of a `HypervisorError::Knob` for exactly this domain and knob;
/// fails the test on success or on any other error.
pub fn knob_error(r: virt_persona::hypervisor::Result<()>, domain: &str, knob: &str) -> String {
    match r {
        Err(virt_persona::hypervisor::HypervisorError::Knob {
            domain: d,
            knob: k,
            message,
        }) => {
            assert_eq!((d.as_str(), k.as_str()), (domain, knob));
            assert!(!message.is_empty(), "libvirt's message reaches the caller");
            message
        }
        other => panic!("expected a {knob} error on {domain}, got {other:?}"),
    }
}

/// The `virt-persona` CLI built for this test run.
pub fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virt-persona"))
}

/// Runs the CLI, fails the test with its stderr unless it succeeds, and
/// returns its stdout.
pub fn cli_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = cli().args(args).output().expect("run virt-persona");
    assert!(
        out.status.success(),
        "virt-persona {:?}: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A number from the environment (benchmark knobs), or `default` when unset or not a number.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Busy loops in a cpu cgroup of high weight: how a busy neighbour looks to the
/// host's scheduler. (A plain busy loop started from a test does not contend:
/// the kernel's autogroup gives it a group of its own.) The loops are killed and
/// the cgroup removed on Drop, even when the test fails.
pub struct Contention {
    dir: PathBuf,
    loops: Vec<Child>,
}

impl Contention {
    /// `loops` busy loops in a new cgroup of `weight` (cgroup v1 `cpu.shares`;
    /// on cgroup v2 the equivalent `cpu.weight`).
    pub fn start(loops: usize, weight: u64) -> Contention {
        let name = format!(
            "vp-hog-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let v1 = Path::new("/sys/fs/cgroup/cpu/cpu.shares").exists();
        let (dir, file, value, tasks) = if v1 {
            (
                PathBuf::from("/sys/fs/cgroup/cpu").join(&name),
                "cpu.shares",
                weight,
                "tasks",
            )
        } else {
            // cgroup v2: weight 100 is the default as shares 1024 is on v1
            (
                PathBuf::from("/sys/fs/cgroup").join(&name),
                "cpu.weight",
                (weight * 100 / 1024).clamp(1, 10_000),
                "cgroup.procs",
            )
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create cgroup {dir:?}: {e}"));
        let mut c = Contention {
            dir,
            loops: Vec::new(),
        };
        std::fs::write(c.dir.join(file), value.to_string())
            .unwrap_or_else(|e| panic!("set {file} of {:?}: {e}", c.dir));
        for _ in 0..loops {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("start a busy loop");
            std::fs::write(c.dir.join(tasks), child.id().to_string())
                .unwrap_or_else(|e| panic!("move busy loop into {:?}: {e}", c.dir));
            c.loops.push(child);
        }
        c
    }
}

impl Drop for Contention {
    fn drop(&mut self) {
        for c in &mut self.loops {
            let _ = c.kill();
            let _ = c.wait();
        }
        // the cgroup can be removed once its tasks are gone
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether this kernel has the sfq qdisc libvirt uses for interface bandwidth.
pub fn kernel_has_sfq() -> bool {
    let dev = format!("vpsfq{}", std::process::id() % 100_000);
    let add = Command::new("ip")
        .args(["link", "add", &dev, "type", "bridge"])
        .status();
    if !add.is_ok_and(|s| s.success()) {
        panic!("cannot create a bridge to probe for sfq");
    }
    let ok = Command::new("tc")
        .args(["qdisc", "add", "dev", &dev, "root", "sfq"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = Command::new("ip").args(["link", "del", &dev]).status();
    ok
}

/// The host's first real block device (not zram/loop/ram), as /dev/NAME with "MAJ:MIN".
pub fn host_block_device() -> (String, String) {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !(n.starts_with("zram")
                || n.starts_with("loop")
                || n.starts_with("ram")
                || n.starts_with("dm-"))
        })
        .collect();
    names.sort();
    let name = names.first().cloned().expect("a host block device");
    let dev = read_trim(&PathBuf::from(format!("/sys/block/{name}/dev")));
    (format!("/dev/{name}"), dev)
}

/// The instant the time-dependent tests put the daemon's clock at:
/// `VP_TEST_CLOCK`, a civil time with its zone (RFC 9557, e.g.
/// `2027-03-28T03:00:00[Europe/Berlin]`, a Sunday 03:00 just after the
/// clocks went forward), else Tuesday 2026-12-01 10:00 in Berlin (office
/// hours). `scripts/test.sh` runs those tests at both, so no outcome
/// depends on when, or in which zone, the suite runs.
pub fn test_clock() -> jiff::Zoned {
    let s = std::env::var("VP_TEST_CLOCK")
        .unwrap_or_else(|_| "2026-12-01T10:00:00[Europe/Berlin]".to_string());
    s.parse::<jiff::Zoned>()
        .unwrap_or_else(|e| panic!("VP_TEST_CLOCK={s}: not a civil time with a zone ({e})"))
}

/// The daemon's environment for a clock at `at` (milliseconds since the
/// epoch) from now on: the test-only clock offset, a fail point that only
/// builds with `--features failpoints` compile in.
pub fn clock_at(at: i64) -> (&'static str, String) {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    (
        "FAILPOINTS",
        format!("clock-offset-ms=return({})", at - real),
    )
}

/// Waits (generously: a busy machine) until `f` gives a value; the daemon's
/// log is in the message when it does not.
pub fn wait_some<T>(what: &str, d: &Daemon, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs a command that must succeed; its output (stdout and stderr).
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The unit of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
fn clk_tck() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(100)
    })
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as
/// PEM files (the key mode 0600); returns (cert path, key path, cert DER).
pub fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("api.crt"), dir.join("api.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (cert, key, ck.cert.der().to_vec())
}

/// Memory private to the process (not shared library text): Private_Clean + Private_Dirty.
pub fn uss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}
