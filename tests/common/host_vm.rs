//! A Debian 12 host in a VM (`scripts/host-vm.sh`): systemd as PID 1, cgroup
//! v2, Debian's libvirtd. One VM per test binary, booted on first use and
//! shared by its tests one at a time ([`with_vm`]); commands run in it through
//! the 9p share's agent. The VM dies with the test process (it is started from
//! a thread that lives as long as the process, with `PR_SET_PDEATHSIG`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The running VM.
pub struct HostVm {
    /// The host side of /share.
    pub share: PathBuf,
    dir: PathBuf,
    next: AtomicU64,
    pid: u32,
    /// How long the boot took: qemu start to the agent's first sign of life.
    pub boot: Duration,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

static VM: OnceLock<Mutex<HostVm>> = OnceLock::new();

/// Runs `f` with the VM, booting it first if this is the first use. Tests of
/// one binary take turns (the VM is one host).
pub fn with_vm<T>(f: impl FnOnce(&HostVm) -> T) -> T {
    let vm = VM.get_or_init(|| Mutex::new(HostVm::boot()));
    let guard = vm.lock().unwrap_or_else(|p| p.into_inner());
    f(&guard)
}

impl HostVm {
    fn boot() -> HostVm {
        let out = Command::new("bash")
            .arg(root().join("scripts/host-vm.sh"))
            .arg("build")
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/host-vm.sh build");
        assert!(
            out.status.success(),
            "building the Debian 12 host image failed (scripts/host-vm.sh build)"
        );
        let image = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("host-vm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let share = dir.join("share");
        std::fs::create_dir_all(share.join("cmd")).expect("share dir");
        let overlay = dir.join("overlay.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-b"])
            .arg(image.join("base.img"))
            .args(["-F", "raw"])
            .arg(&overlay)
            .status()
            .expect("qemu-img");
        assert!(st.success(), "qemu-img create overlay");
        let accel = std::env::var("VP_HOST_VM_ACCEL").unwrap_or_else(|_| "tcg,thread=multi".into());
        let console = dir.join("console.log");
        let (tx, rx) = std::sync::mpsc::channel();
        let args: Vec<String> = vec![
            "-machine".into(),
            "pc".into(),
            "-accel".into(),
            accel,
            "-cpu".into(),
            "max".into(),
            "-smp".into(),
            "2".into(),
            // two NUMA nodes, one CPU each: numa_nodeset has somewhere to move to
            "-m".into(),
            "3072".into(),
            "-object".into(),
            "memory-backend-ram,id=m0,size=1536M".into(),
            "-object".into(),
            "memory-backend-ram,id=m1,size=1536M".into(),
            "-numa".into(),
            "node,nodeid=0,cpus=0,memdev=m0".into(),
            "-numa".into(),
            "node,nodeid=1,cpus=1,memdev=m1".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{}", console.display()),
            "-monitor".into(),
            "none".into(),
            "-kernel".into(),
            image.join("vmlinuz").display().to_string(),
            "-initrd".into(),
            image.join("initrd.img").display().to_string(),
            "-append".into(),
            "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1".into(),
            "-drive".into(),
            format!("file={},format=qcow2,if=virtio", overlay.display()),
            "-virtfs".into(),
            format!(
                "local,path={},mount_tag=share,security_model=none,id=share",
                share.display()
            ),
            "-nic".into(),
            "none".into(),
        ];
        // the thread that starts qemu lives as long as the process: qemu gets
        // SIGKILL when it ends (PR_SET_PDEATHSIG follows the creating thread)
        std::thread::Builder::new()
            .name("host-vm".into())
            .spawn(move || {
                let mut cmd = Command::new("qemu-system-x86_64");
                cmd.args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit());
                // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec
                #[allow(unsafe_code)]
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let child = cmd.spawn();
                match child {
                    Ok(mut c) => {
                        let _ = tx.send(Ok(c.id()));
                        let _ = c.wait();
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
                // keep the thread (and so the death signal's parent) alive
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn host-vm thread");
        let pid = rx
            .recv()
            .expect("host-vm thread")
            .unwrap_or_else(|e| panic!("start qemu-system-x86_64: {e}"));
        let started = Instant::now();
        let vm = HostVm {
            share,
            dir,
            next: AtomicU64::new(1),
            pid,
            boot: Duration::ZERO,
        };
        let deadline = started + Duration::from_secs(600);
        while !vm.share.join("out/agent-started").exists() {
            assert!(
                Path::new(&format!("/proc/{pid}")).exists(),
                "the VM's qemu exited during boot; console:\n{}",
                vm.console_tail()
            );
            assert!(
                Instant::now() < deadline,
                "the VM's agent did not start within 600 s; console:\n{}",
                vm.console_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let agent = started.elapsed();
        // libvirtd up, and QEMU's capabilities probed (the first probe of a
        // fresh image runs QEMU under TCG: the first define would wait for it)
        vm.ok("until virsh -q -c qemu:///system domcapabilities --virttype qemu >/dev/null 2>&1; do sleep 0.5; done");
        let boot = started.elapsed();
        eprintln!(
            "host VM: agent up after {:.1} s, libvirtd ready with QEMU's capabilities after {:.1} s",
            agent.as_secs_f64(),
            boot.as_secs_f64()
        );
        HostVm { boot, ..vm }
    }

    /// The last 60 lines of the serial console.
    pub fn console_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Runs a bash script in the VM as root; its exit status and output
    /// (stdout and stderr). Fails the test if no answer comes within `secs`.
    pub fn sh(&self, script: &str, secs: u64) -> (i32, String) {
        self.try_sh(script, secs).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`HostVm::sh`], but the reason instead of failing the test when
    /// the VM does not answer (for Drop, which must never panic).
    pub fn try_sh(&self, script: &str, secs: u64) -> Result<(i32, String), String> {
        let id = format!("{:06}", self.next.fetch_add(1, Ordering::SeqCst));
        let cmd = self.share.join("cmd");
        let tmp = cmd.join(format!(".{id}.tmp"));
        let body = format!("set -o pipefail\n{script}");
        std::fs::write(&tmp, body).map_err(|e| format!("write command: {e}"))?;
        std::fs::rename(&tmp, cmd.join(format!("{id}.sh")))
            .map_err(|e| format!("queue command: {e}"))?;
        let rc = self.share.join(format!("out/{id}.rc"));
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !rc.exists() {
            if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                return Err(format!("the VM is gone; console:\n{}", self.console_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer from the VM within {secs} s to:\n{script}\nconsole:\n{}",
                    self.console_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let code = std::fs::read_to_string(&rc)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1);
        let out =
            std::fs::read_to_string(self.share.join(format!("out/{id}.out"))).unwrap_or_default();
        Ok((code, out))
    }

    /// Like [`HostVm::sh`] with a 300 s limit; fails the test on a non-zero exit.
    pub fn ok(&self, script: &str) -> String {
        let (code, out) = self.sh(script, 300);
        assert_eq!(code, 0, "in the VM:\n{script}\n→ exit {code}:\n{out}");
        out
    }

    /// Polls `script` every 200 ms until it exits 0 (its output), for up to `secs`.
    pub fn until(&self, what: &str, secs: u64, script: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (code, out) = self.sh(script, secs.max(60));
            if code == 0 {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {secs} s; last try:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Copies a host file into the share; its path inside the VM.
    pub fn put(&self, from: &Path, name: &str) -> String {
        std::fs::copy(from, self.share.join(name))
            .unwrap_or_else(|e| panic!("copy {from:?} to the share: {e}"));
        format!("/share/{name}")
    }

    /// Writes a file into the share; its path inside the VM.
    pub fn write(&self, name: &str, body: &str) -> String {
        std::fs::write(self.share.join(name), body).expect("write to the share");
        format!("/share/{name}")
    }
}

/// A boot-sector guest inside the VM, under TCG (`<domain type='qemu'>`);
/// destroyed and undefined on Drop.
pub struct InnerGuest<'a> {
    vm: &'a HostVm,
    pub name: String,
}

impl<'a> InnerGuest<'a> {
    /// Defines and starts `name` with `vcpus` vCPUs; `extra` goes before `<devices>`.
    pub fn boot(vm: &'a HostVm, name: &str, vcpus: u32, extra: &str) -> InnerGuest<'a> {
        let boot = vm.put(super::boot_sector(), &format!("{name}.bin"));
        let template = std::fs::read_to_string(root().join("fixtures/guest-domain.xml"))
            .expect("read domain template");
        let xml = template
            .replace("@TYPE@", "qemu")
            .replace("@NAME@", name)
            .replace("@VCPUS@", &vcpus.to_string())
            .replace("@DISK@", &format!("/var/lib/libvirt/images/{name}.img"))
            .replace("@SOCK@", &format!("/run/{name}.com1"))
            .replace("  <devices>", &format!("{extra}\n  <devices>"));
        let xml_path = vm.write(&format!("{name}.xml"), &xml);
        let g = InnerGuest {
            vm,
            name: name.to_string(),
        };
        vm.ok(&format!(
            "cp {boot} /var/lib/libvirt/images/{name}.img && truncate -s 1M /var/lib/libvirt/images/{name}.img\n\
             virsh -q -c qemu:///system define {xml_path}\nvirsh -q -c qemu:///system start {name}"
        ));
        g
    }

    /// `virsh -c qemu:///system ARGS` in the VM; its output.
    pub fn virsh(&self, args: &str) -> String {
        self.vm.ok(&format!("virsh -q -c qemu:///system {args}"))
    }

    /// The guest's cgroup v2 directory (the machine scope), inside the VM.
    pub fn cgroup(&self) -> String {
        let out = self.vm.ok(&format!(
            "pid=$(pgrep -f 'guest={},' | head -1); cut -d: -f3 /proc/$pid/cgroup",
            self.name
        ));
        // /machine.slice/machine-qemu\x2d1\x2dNAME.scope/libvirt/emulator
        let path = out.trim();
        let scope = path.split("/libvirt").next().unwrap_or(path).to_string();
        format!("/sys/fs/cgroup{scope}")
    }
}

impl Drop for InnerGuest<'_> {
    fn drop(&mut self) {
        let n = &self.name;
        let _ = self.vm.try_sh(
            &format!(
                "virsh -q -c qemu:///system destroy {n}; virsh -q -c qemu:///system undefine {n} --nvram; rm -f /var/lib/libvirt/images/{n}.img; true"
            ),
            120,
        );
    }
}
