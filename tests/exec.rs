//! Every command of the control surface run against the recording fake, the
//! in-memory store and a real personas directory: what the daemon does for a
//! request, without HTTP (tests/api.rs drives the same through the socket).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use virt_persona::api::command::{Command, Reply};
use virt_persona::api::exec::execute;
use virt_persona::hypervisor::fake::FakeHypervisor;
use virt_persona::hypervisor::{DomainStats, Hypervisor};
use virt_persona::model::loader::Catalog;
use virt_persona::model::tuning::Tuning;
use virt_persona::reconciler::Reconciler;
use virt_persona::store::MemoryStore;

const WEB: &str = r#"id = "web"
priority = 5
[match]
names = ["web-*"]
[tuning]
cpu_shares = 2048
"#;

const DB_ONLY: &str = r#"id = "db"
[match]
names = ["db-*"]
[tuning]
cpu_shares = 512
"#;

struct World {
    hv: Arc<FakeHypervisor>,
    rec: Reconciler<FakeHypervisor, MemoryStore>,
    catalog: Catalog,
    dir: PathBuf,
    now: i64,
    _tmp: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("personas");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("db.toml"), DB_ONLY).expect("write");
        let hv = Arc::new(FakeHypervisor::new(4));
        let tuning = Tuning {
            cpu_shares: Some(1024),
            ..Default::default()
        };
        hv.add_domain(FakeHypervisor::simple_domain("web-1", 2), tuning);
        let mut catalog = Catalog::new(&dir);
        catalog.reload().expect("reload");
        let mut rec = Reconciler::new(hv.clone(), MemoryStore::default(), Duration::from_secs(30));
        rec.set_personas(catalog.personas());
        let mut w = World {
            hv,
            rec,
            catalog,
            dir,
            now: 1_000_000,
            _tmp: tmp,
        };
        w.tick();
        w
    }
    fn tick(&mut self) {
        self.now += 1000;
        let uuid = self.hv.domain("web-1").expect("domain").uuid;
        self.hv.set_stats(
            "web-1",
            DomainStats {
                name: "web-1".into(),
                uuid,
                cpu_time_ns: Some(0),
                ..Default::default()
            },
        );
        self.rec.tick(self.now, None).expect("tick");
    }
    fn run(&mut self, cmd: Command) -> Reply {
        execute(&mut self.rec, &mut self.catalog, &*self.hv, cmd, self.now)
    }
    fn ok(&mut self, cmd: Command) -> Value {
        match self.run(cmd) {
            Reply::Ok(v) => v,
            other => panic!("expected Ok, got {other:?}"),
        }
    }
    fn err(&mut self, cmd: Command) -> (u16, String) {
        match self.run(cmd) {
            Reply::Err { status, message } => (status, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    fn shares(&self) -> Option<u64> {
        use virt_persona::hypervisor::ReadScope;
        self.hv
            .tuning("web-1", ReadScope::Current)
            .expect("tuning")
            .cpu_shares
    }
}

#[test]
fn personas_put_through_the_api_are_files_and_files_are_the_truth() {
    let mut w = World::new();
    let put = |id: &str, toml: &str| Command::PutPersona {
        id: id.into(),
        toml: toml.into(),
        parsed: None,
    };
    // invalid: 400 with line and column, nothing written
    let (status, msg) = w.err(put("web", "id = \"web\"\npriority = \"high\"\n"));
    assert_eq!(status, 400);
    assert!(msg.starts_with("2:"), "{msg}");
    assert!(!w.dir.join("web.toml").exists());
    // an id that is not the route's
    let (status, msg) = w.err(put("other", WEB));
    assert_eq!(
        (status, msg.contains("does not match")),
        (400, true),
        "{msg}"
    );
    // over the persona-file limit: 413 naming it, nothing written
    let huge = format!("{WEB}{}", "# padding\n".repeat(30_000));
    let (status, msg) = w.err(put("web", &huge));
    assert_eq!(status, 413, "{msg}");
    assert!(msg.contains("256 KiB limit"), "{msg}");
    assert!(!w.dir.join("web.toml").exists());
    // a link planted where the file goes is replaced, never written through
    let victim = w
        .dir
        .join("..")
        .join(format!("victim-{}", std::process::id()));
    std::fs::write(&victim, "untouched").unwrap();
    std::os::unix::fs::symlink(&victim, w.dir.join("web.toml")).unwrap();
    // valid: written as <id>.toml, loaded, worn at the next tick
    let v = w.ok(put("web", WEB));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert!(std::fs::symlink_metadata(w.dir.join("web.toml"))
        .unwrap()
        .is_file());
    let _ = std::fs::remove_file(&victim);
    assert_eq!(v["status"], "ok");
    assert_eq!(
        std::fs::read_to_string(w.dir.join("web.toml")).unwrap(),
        WEB
    );
    assert!(
        std::fs::read_dir(&w.dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp")),
        "no temporary file left behind"
    );
    w.tick();
    assert_eq!(w.shares(), Some(2048));
    let got = w.ok(Command::GetPersona { id: "web".into() });
    assert_eq!(got["toml"], WEB);
    // a hand edit shows in the API
    std::fs::write(w.dir.join("web.toml"), WEB.replace("2048", "3000")).unwrap();
    virt_persona::api::exec::reload(&mut w.catalog, "test");
    let got = w.ok(Command::GetPersona { id: "web".into() });
    assert_eq!(got["persona"]["tuning"]["cpu_shares"], 3000, "{got}");
    // delete: the file goes, the persona retires, the baseline comes back
    w.rec.set_personas(w.catalog.personas());
    let v = w.ok(Command::DeletePersona { id: "web".into() });
    assert_eq!(v["removed"], true);
    assert!(!w.dir.join("web.toml").exists());
    w.tick();
    assert_eq!(w.shares(), Some(1024));
    assert_eq!(w.err(Command::DeletePersona { id: "web".into() }).0, 404);
    let list = w.ok(Command::ListPersonas);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

#[test]
fn manual_activation_expires_and_refuses_what_does_not_fit() {
    let mut w = World::new();
    std::fs::write(
        w.dir.join("web.toml"),
        WEB.replace(
            "[match]\nnames = [\"web-*\"]\n",
            "[match]\nnames = [\"nobody\"]\n",
        ),
    )
    .unwrap();
    std::fs::write(w.dir.join("any.toml"), "id = \"boost\"\n[activation]\n[[activation.when]]\nsignal = \"never\"\nabove = 1\n[tuning]\ncpu_shares = 4000\n").unwrap();
    virt_persona::api::exec::reload(&mut w.catalog, "test");
    w.rec.set_personas(w.catalog.personas());
    let activate = |persona: &str, for_ms: Option<i64>| Command::Activate {
        name: "web-1".into(),
        persona: persona.into(),
        for_ms,
    };
    let (status, msg) = w.err(activate("db", None));
    assert_eq!(status, 409);
    assert!(msg.contains("db"), "the refusal names the persona: {msg}");
    assert_eq!(w.err(activate("nope", None)).0, 404);
    assert_eq!(
        w.err(Command::Activate {
            name: "ghost".into(),
            persona: "boost".into(),
            for_ms: None
        })
        .0,
        404
    );
    let v = w.ok(activate("boost", Some(5_000)));
    assert_eq!(
        (v["persona"].as_str(), v["reason"].as_str()),
        (Some("boost"), Some("manual")),
        "{v}"
    );
    assert_eq!(w.shares(), Some(4000));
    // by name, id or UUID
    let uuid = w.hv.domain("web-1").expect("domain").uuid;
    assert_eq!(w.ok(Command::GetDomain { name: uuid })["persona"], "boost");
    for _ in 0..6 {
        w.tick();
    }
    assert_eq!(w.shares(), Some(1024), "expired after 5 s");
    w.ok(activate("boost", None));
    let v = w.ok(Command::Revert {
        name: "web-1".into(),
    });
    assert_eq!(v["persona"], Value::Null);
    assert_eq!(w.shares(), Some(1024));
    let hist = w.ok(Command::History {
        name: "web-1".into(),
        since: 0,
        limit: 1000,
    });
    let to: Vec<&str> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(to, ["boost", "-", "boost", "-"], "{hist}");
}

#[test]
fn signals_explain_tuning_health_and_the_loops_own_commands() {
    let mut w = World::new();
    let v = w.ok(Command::SetSignal {
        name: "rps".into(),
        value: 1200.0,
        ttl_ms: 10_000,
        domain: Some("web-1".into()),
        cluster: false,
    });
    assert_eq!(
        (v["scope"].as_str(), v["value"].as_f64()),
        (Some("host"), Some(1200.0))
    );
    assert_eq!(w.ok(Command::ListSignals).as_array().map(Vec::len), Some(1));
    // a signal's domain by name, id or UUID is kept by UUID (shown with
    // its name); an unknown domain is refused
    let uuid = w.hv.domain("web-1").expect("domain").uuid;
    assert_eq!(v["domain_uuid"].as_str(), Some(uuid.as_str()), "{v}");
    for key in ["1".to_string(), uuid.clone()] {
        let v = w.ok(Command::SetSignal {
            name: "rps".into(),
            value: 1300.0,
            ttl_ms: 10_000,
            domain: Some(key.clone()),
            cluster: false,
        });
        assert_eq!(v["domain"], "web-1", "{key}: {v}");
        assert_eq!(v["domain_uuid"].as_str(), Some(uuid.as_str()), "{key}: {v}");
    }
    assert_eq!(w.ok(Command::ListSignals).as_array().map(Vec::len), Some(1));
    let (status, message) = w.err(Command::SetSignal {
        name: "rps".into(),
        value: 1.0,
        ttl_ms: 10_000,
        domain: Some("ghost".into()),
        cluster: false,
    });
    assert_eq!(status, 404, "{message}");
    assert!(message.contains("ghost"), "{message}");
    assert_eq!(w.ok(Command::ListSignals).as_array().map(Vec::len), Some(1));
    w.now += 10_000;
    assert_eq!(w.ok(Command::ListSignals), Value::Array(vec![]), "expired");

    let e = w.ok(Command::Explain {
        name: "web-1".into(),
    });
    assert_eq!(e["domain"], "web-1");
    assert_eq!(
        e["candidates"],
        Value::Array(vec![]),
        "db does not match web-1: {e}"
    );
    assert_eq!(
        w.err(Command::Explain {
            name: "ghost".into()
        })
        .0,
        404
    );
    // by numeric id and by UUID as well as by name
    let uuid = w.hv.domain("web-1").expect("domain").uuid;
    for key in ["1".to_string(), uuid] {
        let e = w.ok(Command::Explain { name: key.clone() });
        assert_eq!(e["domain"], "web-1", "{key}");
        assert_eq!(w.ok(Command::Tuning { name: key })["cpu_shares"], 1024);
    }

    let t = w.ok(Command::Tuning {
        name: "web-1".into(),
    });
    assert_eq!(t["cpu_shares"], 1024);
    let h = w.ok(Command::Health);
    assert_eq!(
        (h["libvirt"].as_str(), h["uri"].as_str()),
        (Some("connected"), Some("fake:///"))
    );
    // not ok while libvirt is unreachable, with the reason
    w.hv.set_connected(false);
    let (status, message) = w.err(Command::Health);
    assert_eq!(status, 503);
    assert!(message.contains("not reachable"), "{message}");
    w.hv.set_connected(true);
    w.ok(Command::Health);
    let v = w.ok(Command::ValidatePersona {
        toml: "id = 3\n".into(),
    });
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"][0]["line"], 1, "{v}");
    assert_eq!(w.err(Command::Metrics).0, 500);
    let recent = w.ok(Command::RecentEvents {
        since: None,
        limit: 1000,
    });
    assert_eq!(recent, Value::Array(vec![]), "nothing happened");
}
