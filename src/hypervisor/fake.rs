//! An in-memory hypervisor that records every call and can be told to fail.
//! For unit tests of pure logic and for benchmarks; never for testing libvirt.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{
    ApplyScope, DomainInfo, DomainState, DomainStats, HostInfo, Hypervisor, HypervisorError,
    HypervisorEvent, ReadScope, Result, StatGroups,
};
use crate::model::tuning::{Change, DefinitionOriginal, Knob, Tuning};
use crate::units::CpuSet;

/// A recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    ListDomains,
    Domain(String),
    AllStats,
    Tuning(String),
    Apply(String, Change),
    RestoreDefinition(String, Vec<DefinitionOriginal>),
    SetTags(String, Vec<String>),
    Host,
}

#[derive(Default)]
struct Inner {
    domains: BTreeMap<String, (DomainInfo, Tuning, DomainStats)>,
    /// Each domain's persistent definition, where CONFIG writes go; a knob
    /// it does not set is absent (`None`), as libvirt's XML leaves it out.
    definitions: BTreeMap<String, Tuning>,
    calls: Vec<Call>,
    /// Knobs whose next apply fails with this message.
    fail: Vec<(String, Knob, String)>,
    /// Knobs whose next apply of exactly this value fails (a failing rollback).
    fail_value: Vec<(String, Change, String)>,
    /// Domains whose next definition restore fails with this message.
    fail_definition: Vec<(String, String)>,
    /// Knobs this fake hypervisor cannot apply at all, on any domain.
    unsupported: Vec<(Knob, String)>,
    /// Apply calls left before a simulated crash (the call panics).
    crash_in: Option<usize>,
    /// Every successful apply with the scope it was asked for.
    applied: Vec<(String, Change, ApplyScope)>,
    subscribers: Vec<crossbeam_channel::Sender<HypervisorEvent>>,
}

impl Inner {
    /// Panics here when a crash was armed for this call (see `crash_at_apply`).
    fn maybe_crash(&mut self, what: &str) {
        match self.crash_in {
            Some(0) => {
                self.crash_in = None;
                panic!("injected crash before {what}");
            }
            Some(n) => self.crash_in = Some(n - 1),
            None => {}
        }
    }
}

/// The fake. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct FakeHypervisor {
    inner: Mutex<Inner>,
    host_cpus: u32,
    disconnected: std::sync::atomic::AtomicBool,
}

impl FakeHypervisor {
    pub fn new(host_cpus: u32) -> Self {
        FakeHypervisor {
            inner: Mutex::default(),
            host_cpus,
            disconnected: Default::default(),
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Adds a running domain with the given tuning.
    pub fn add_domain(&self, info: DomainInfo, tuning: Tuning) {
        let stats = DomainStats {
            name: info.name.clone(),
            uuid: info.uuid.clone(),
            state: Some(info.state),
            ..Default::default()
        };
        let mut g = self.lock();
        g.definitions.insert(info.name.clone(), tuning.clone());
        g.domains.insert(info.name.clone(), (info, tuning, stats));
    }
    /// Replaces a domain's persistent definition (what CONFIG reads and writes).
    pub fn set_definition(&self, name: &str, definition: Tuning) {
        self.lock().definitions.insert(name.to_string(), definition);
    }
    /// A domain's persistent definition as it is now.
    pub fn definition(&self, name: &str) -> Option<Tuning> {
        self.lock().definitions.get(name).cloned()
    }
    /// Replaces a domain's counters (what the next stats call returns).
    pub fn set_stats(&self, name: &str, stats: DomainStats) {
        if let Some(d) = self.lock().domains.get_mut(name) {
            d.2 = stats;
        }
    }
    pub fn remove_domain(&self, name: &str) {
        let mut g = self.lock();
        g.domains.remove(name);
        g.definitions.remove(name);
    }
    /// Makes the next apply of `knob` on `domain` fail with `message`.
    pub fn fail_next(&self, domain: &str, knob: Knob, message: &str) {
        self.lock()
            .fail
            .push((domain.to_string(), knob, message.to_string()));
    }
    /// Simulates the daemon dying in the middle of its work: the write call
    /// (apply or definition restore) `n` calls from now (0 = the next one)
    /// panics before changing anything.
    pub fn crash_at_apply(&self, n: usize) {
        self.lock().crash_in = Some(n);
    }
    /// Reports the connection as lost (or back).
    pub fn set_connected(&self, up: bool) {
        self.disconnected
            .store(!up, std::sync::atomic::Ordering::SeqCst);
    }
    /// Makes the next apply of exactly `change` on `domain` fail with `message`.
    pub fn fail_next_value(&self, domain: &str, change: Change, message: &str) {
        self.lock()
            .fail_value
            .push((domain.to_string(), change, message.to_string()));
    }
    /// Makes the next definition restore of `domain` fail with `message`.
    pub fn fail_next_definition(&self, domain: &str, message: &str) {
        self.lock()
            .fail_definition
            .push((domain.to_string(), message.to_string()));
    }
    /// Makes every apply of `knob` fail as unsupported (a driver or host limit).
    pub fn unsupported(&self, knob: Knob, message: &str) {
        self.lock().unsupported.push((knob, message.to_string()));
    }
    /// Every successful apply, with its scope (LIVE, CONFIG or both).
    pub fn applied(&self) -> Vec<(String, Change, ApplyScope)> {
        self.lock().applied.clone()
    }
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }
    pub fn emit(&self, ev: HypervisorEvent) {
        self.lock()
            .subscribers
            .retain(|s| s.send(ev.clone()).is_ok());
    }
    /// A simple running domain for tests.
    pub fn simple_domain(name: &str, vcpus: u32) -> DomainInfo {
        DomainInfo {
            iothreads: vec![],
            name: name.to_string(),
            uuid: format!("00000000-0000-0000-0000-{:012}", name.len()),
            id: Some(1),
            state: DomainState::Running,
            persistent: true,
            vcpus,
            memory_kib: 1 << 20,
            max_memory_kib: 1 << 20,
            disks: vec![],
            interfaces: vec![],
            tags: vec![],
        }
    }
}

impl Hypervisor for FakeHypervisor {
    fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        let mut g = self.lock();
        g.calls.push(Call::ListDomains);
        Ok(g.domains.values().map(|d| d.0.clone()).collect())
    }
    fn domain(&self, key: &str) -> Result<DomainInfo> {
        let mut g = self.lock();
        g.calls.push(Call::Domain(key.to_string()));
        g.domains
            .values()
            .find(|d| {
                d.0.name == key
                    || d.0.uuid == key
                    || d.0.id.map(|i| i.to_string()).as_deref() == Some(key)
            })
            .map(|d| d.0.clone())
            .ok_or_else(|| HypervisorError::NoDomain(key.to_string()))
    }
    fn all_stats(&self, _groups: StatGroups) -> Result<Vec<DomainStats>> {
        let mut g = self.lock();
        g.calls.push(Call::AllStats);
        Ok(g.domains
            .values()
            .filter(|d| d.0.state.is_active())
            .map(|d| d.2.clone())
            .collect())
    }
    fn tuning(&self, domain: &str, scope: ReadScope) -> Result<Tuning> {
        let mut g = self.lock();
        g.calls.push(Call::Tuning(domain.to_string()));
        if !g.domains.contains_key(domain) {
            return Err(HypervisorError::NoDomain(domain.to_string()));
        }
        Ok(match scope {
            ReadScope::Current => g.domains[domain].1.clone(),
            ReadScope::Config => g.definitions.get(domain).cloned().unwrap_or_default(),
        })
    }
    fn apply(&self, domain: &str, change: &Change, scope: ApplyScope) -> Result<()> {
        let mut g = self.lock();
        g.maybe_crash(&format!("applying {change}"));
        g.calls
            .push(Call::Apply(domain.to_string(), change.clone()));
        // as the real adapter: a value outside its knob's range never gets further
        if let Err(reason) = super::check_value(change) {
            return Err(HypervisorError::Invalid {
                domain: domain.to_string(),
                knob: change.knob.to_string(),
                reason,
            });
        }
        if let Some(pos) = g
            .fail
            .iter()
            .position(|(d, k, _)| d == domain && *k == change.knob)
        {
            let (_, knob, message) = g.fail.remove(pos);
            return Err(HypervisorError::Knob {
                domain: domain.to_string(),
                knob: knob.to_string(),
                message,
            });
        }
        if let Some(pos) = g
            .fail_value
            .iter()
            .position(|(d, c, _)| d == domain && c == change)
        {
            let (_, c, message) = g.fail_value.remove(pos);
            return Err(HypervisorError::Knob {
                domain: domain.to_string(),
                knob: c.knob.to_string(),
                message,
            });
        }
        if let Some((knob, message)) = g.unsupported.iter().find(|(k, _)| *k == change.knob) {
            return Err(HypervisorError::Unsupported {
                domain: domain.to_string(),
                knob: knob.to_string(),
                message: message.clone(),
            });
        }
        let d = g
            .domains
            .get_mut(domain)
            .ok_or_else(|| HypervisorError::NoDomain(domain.to_string()))?;
        if scope != ApplyScope::Config {
            d.1.set(change);
            // as libvirt reads it back: a cleared device setting is gone
            d.1 = std::mem::take(&mut d.1).normalized();
        }
        if scope != ApplyScope::Live {
            let def = g.definitions.entry(domain.to_string()).or_default();
            def.set(change);
            *def = std::mem::take(def).normalized();
        }
        g.applied.push((domain.to_string(), change.clone(), scope));
        Ok(())
    }
    fn restore_definition(&self, domain: &str, originals: &[DefinitionOriginal]) -> Result<()> {
        let mut g = self.lock();
        g.maybe_crash("restoring the definition");
        g.calls.push(Call::RestoreDefinition(
            domain.to_string(),
            originals.to_vec(),
        ));
        if let Some(pos) = g.fail_definition.iter().position(|(d, _)| d == domain) {
            let (_, message) = g.fail_definition.remove(pos);
            let knobs: Vec<String> = originals.iter().map(|o| o.knob.to_string()).collect();
            return Err(HypervisorError::Knob {
                domain: domain.to_string(),
                knob: knobs.join(", "),
                message,
            });
        }
        if !g.domains.contains_key(domain) {
            return Err(HypervisorError::NoDomain(domain.to_string()));
        }
        let def = g.definitions.entry(domain.to_string()).or_default();
        for o in originals {
            match &o.value {
                Some(value) => def.set(&Change {
                    knob: o.knob.clone(),
                    value: value.clone(),
                }),
                None => def.clear(&o.knob),
            }
        }
        *def = std::mem::take(def).normalized();
        Ok(())
    }
    fn set_tags(&self, domain: &str, tags: &[String]) -> Result<()> {
        let mut g = self.lock();
        g.calls
            .push(Call::SetTags(domain.to_string(), tags.to_vec()));
        let d = g
            .domains
            .get_mut(domain)
            .ok_or_else(|| HypervisorError::NoDomain(domain.to_string()))?;
        d.0.tags = tags.to_vec();
        Ok(())
    }
    fn host(&self) -> Result<HostInfo> {
        self.lock().calls.push(Call::Host);
        Ok(HostInfo {
            hostname: "fake".into(),
            cpus: self.host_cpus,
            online: CpuSet::from_cpus(0..self.host_cpus),
            memory_kib: 16 << 20,
        })
    }
    fn events(&self) -> crossbeam_channel::Receiver<HypervisorEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.lock().subscribers.push(tx);
        rx
    }
    fn uri(&self) -> &str {
        "fake:///"
    }
    fn is_connected(&self) -> bool {
        !self.disconnected.load(std::sync::atomic::Ordering::SeqCst)
    }
}
