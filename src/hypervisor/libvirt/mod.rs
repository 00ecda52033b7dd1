//! The libvirt implementation of [`Hypervisor`]: the only code that talks to libvirt.
//!
//! Uses the `virt` binding where it is safe and complete, and `virt-sys` for what
//! it lacks (typed parameters, pin info, bulk stats that are freed, events).
//! One connection, guarded by a mutex; when libvirtd goes away the connection is
//! dropped and reopened with exponential backoff (1 s … 30 s) on the next call.
#![allow(unsafe_code)]

mod events;
pub mod params;
pub mod xml;

use std::ffi::{CStr, CString};
use std::os::raw::{c_int, c_uint};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{debug, info, instrument, warn};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::sys;

use super::{
    ApplyScope, BlockCounters, DomainInfo, DomainState, DomainStats, HostInfo, Hypervisor,
    HypervisorError, HypervisorEvent, NetCounters, ReadScope, Result, StatGroups, TAGS_NAMESPACE,
};
use crate::model::knobs::{DeviceFamily, DiskField, Family, ParamKind, Row};
use crate::model::tuning::{
    Bandwidth, Change, DefinitionOriginal, DiskThrottle, InterfaceTuning, Knob, KnobValue, Tuning,
    DEVICE_ROWS,
};
use crate::units::CpuSet;
use events::Subscribers;

/// Most typed parameters any of the tuning getters returns (libvirt's RPC limit is 16).
const MAX_PARAMS: c_int = 16;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

struct Live {
    conn: Connect,
    closed: Arc<AtomicBool>,
    lifecycle_cb: Option<c_int>,
    metadata_cb: Option<c_int>,
    /// Size of a host cpumap in CPUs.
    host_cpus: u32,
    /// Host NUMA nodes (virNodeGetInfo's `nodes`): what "no nodeset" means.
    host_nodes: u32,
    /// libvirt's test driver wants AFFECT_CURRENT where QEMU takes AFFECT_LIVE.
    test_driver: bool,
}

struct ConnState {
    live: Option<Live>,
    backoff: Duration,
    next_try: Instant,
    lost: Option<String>,
}

/// A libvirt connection that reconnects by itself.
pub struct LibvirtHypervisor {
    uri: String,
    state: Mutex<ConnState>,
    subscribers: Arc<Subscribers>,
}

fn call_err(what: impl Into<String>, e: virt::error::Error) -> HypervisorError {
    HypervisorError::Call {
        what: what.into(),
        message: e.message().to_string(),
    }
}

fn knob_err(domain: &str, knob: &Knob, e: virt::error::Error) -> HypervisorError {
    let message = e.message().trim().to_string();
    let domain = domain.to_string();
    let knob = knob.to_string();
    match unsupported(&e) {
        Some(why) => HypervisorError::Unsupported {
            domain,
            knob,
            message: format!("{why} ({message})"),
        },
        None => HypervisorError::Knob {
            domain,
            knob,
            message,
        },
    }
}

/// Whether an error says the knob cannot be applied here at all, and why in
/// an admin's words; `None` for failures that may pass next time.
fn unsupported(e: &virt::error::Error) -> Option<&'static str> {
    let code = e.code();
    if code.is(ErrorNumber::ArgumentUnsupported) {
        return Some("unsupported by this hypervisor driver");
    }
    if code.is_any(vec![
        ErrorNumber::NoSupport,
        ErrorNumber::OperationUnsupported,
        ErrorNumber::ConfigUnsupported,
    ]) {
        return Some("unsupported by this hypervisor driver");
    }
    // live interface bandwidth: libvirt runs tc with qdiscs (htb, sfq) the
    // kernel may not have; tc's own words for a missing qdisc module
    if e.message().contains("Specified qdisc kind is unknown") {
        return Some("the host kernel lacks the queueing discipline libvirt needs");
    }
    // a running domain's memory nodeset: libvirt 9 moves it only in
    // restrictive mode where QEMU binds the memory itself (strict mode with a
    // nodeset on a multi-node host); the same on cgroup v1 and v2
    if e.message()
        .contains("change of nodeset for running domain requires")
    {
        return Some(
            "libvirt cannot move this running domain's memory in its <numatune> mode (use mode='restrictive')",
        );
    }
    None
}

fn last_error() -> virt::error::Error {
    virt::error::Error::last_error()
}

impl LibvirtHypervisor {
    /// Opens the connection now; fails if libvirt cannot be reached.
    pub fn connect(uri: &str) -> Result<Self> {
        events::init_event_loop();
        let subscribers = Arc::new(Subscribers::default());
        let live = open(uri, &subscribers)?;
        Ok(LibvirtHypervisor {
            uri: uri.to_string(),
            state: Mutex::new(ConnState {
                live: Some(live),
                backoff: BACKOFF_MIN,
                next_try: Instant::now(),
                lost: None,
            }),
            subscribers,
        })
    }

    /// The URI this hypervisor connects to.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Whether the connection is up right now (without trying to reconnect).
    pub fn is_connected(&self) -> bool {
        let st = self.lock();
        st.live
            .as_ref()
            .is_some_and(|l| !l.closed.load(Ordering::SeqCst))
    }

    fn lock(&self) -> MutexGuard<'_, ConnState> {
        // a panic while holding the lock leaves plain data behind: keep going
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a live connection, reconnecting first if needed, and drops the
    /// connection when the call failed because libvirtd went away.
    fn with<T>(&self, f: impl FnOnce(&Live) -> Result<T>) -> Result<T> {
        let mut st = self.lock();
        if st
            .live
            .as_ref()
            .is_some_and(|l| l.closed.load(Ordering::SeqCst))
        {
            self.drop_live(&mut st, "connection closed by libvirtd");
        }
        if st.live.is_none() {
            let now = Instant::now();
            if now < st.next_try {
                let reason = st.lost.clone().unwrap_or_else(|| "connection lost".into());
                return Err(HypervisorError::Disconnected { reason });
            }
            match open(&self.uri, &self.subscribers) {
                Ok(live) => {
                    info!(uri = %self.uri, "reconnected to libvirt");
                    st.live = Some(live);
                    st.backoff = BACKOFF_MIN;
                    st.lost = None;
                    self.subscribers.send(HypervisorEvent::Reconnected);
                }
                Err(e) => {
                    st.next_try = now + st.backoff;
                    debug!(uri = %self.uri, error = %e, retry_in = ?st.backoff, "reconnect failed");
                    st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
                    return Err(e);
                }
            }
        }
        let Some(live) = st.live.as_ref() else {
            return Err(HypervisorError::Disconnected {
                reason: "connection lost".into(),
            });
        };
        let result = f(live);
        if result.is_err()
            && (live.closed.load(Ordering::SeqCst) || !live.conn.is_alive().unwrap_or(false))
        {
            self.drop_live(&mut st, "libvirtd went away");
            return match result {
                Err(
                    HypervisorError::Call { message, .. } | HypervisorError::Knob { message, .. },
                ) => Err(HypervisorError::Disconnected { reason: message }),
                other => other,
            };
        }
        result
    }

    fn drop_live(&self, st: &mut ConnState, reason: &str) {
        if let Some(live) = st.live.take() {
            warn!(uri = %self.uri, reason, "lost the libvirt connection");
            for id in [live.lifecycle_cb, live.metadata_cb].into_iter().flatten() {
                // SAFETY: deregistering a callback we registered on this connection.
                unsafe { sys::virConnectDomainEventDeregisterAny(live.conn.as_ptr(), id) };
            }
            events::unregister_close(&live.conn);
            drop(live);
            st.lost = Some(reason.to_string());
            st.next_try = Instant::now();
            st.backoff = BACKOFF_MIN;
            self.subscribers.send(HypervisorEvent::Disconnected {
                reason: reason.to_string(),
            });
        }
    }
}

fn open(uri: &str, subscribers: &Arc<Subscribers>) -> Result<Live> {
    let conn = Connect::open(Some(uri)).map_err(|e| HypervisorError::Connect {
        uri: uri.to_string(),
        message: e.message().to_string(),
    })?;
    // keep-alive needs the event loop; drivers without it (test://) just say no
    let _ = conn.set_keep_alive(5, 3);
    let test_driver = conn
        .driver_type()
        .map(|t| t.eq_ignore_ascii_case("test"))
        .unwrap_or(false);
    let host_cpus = node_cpu_count(&conn).unwrap_or(1);
    let host_nodes = conn.node_info().map(|i| i.nodes.max(1)).unwrap_or(1);
    let closed = Arc::new(AtomicBool::new(false));
    events::register_close(&conn, closed.clone(), subscribers.clone());
    let lifecycle_cb = events::register_lifecycle(&conn, subscribers.clone());
    let metadata_cb = events::register_metadata(&conn, subscribers.clone());
    if lifecycle_cb.is_none() {
        warn!(uri, "cannot subscribe to domain lifecycle events");
    }
    debug!(uri, host_cpus, test_driver, "connected to libvirt");
    Ok(Live {
        conn,
        closed,
        lifecycle_cb,
        metadata_cb,
        host_cpus,
        host_nodes,
        test_driver,
    })
}

fn node_cpu_count(conn: &Connect) -> Option<u32> {
    // SAFETY: asks only for the count (null map pointer and online pointer).
    let n = unsafe {
        sys::virNodeGetCPUMap(conn.as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), 0)
    };
    if n > 0 {
        return u32::try_from(n).ok();
    }
    conn.node_info().ok().map(|i| i.cpus)
}

fn lookup(live: &Live, key: &str) -> Result<Domain> {
    let not_found = |e: virt::error::Error| {
        if e.code().is(ErrorNumber::NoDomain) {
            HypervisorError::NoDomain(key.to_string())
        } else {
            call_err(format!("looking up domain '{key}'"), e)
        }
    };
    match live.conn.lookup_domain_by_name(key) {
        Ok(d) => return Ok(d),
        Err(e) if !e.code().is(ErrorNumber::NoDomain) => return Err(not_found(e)),
        Err(_) => {}
    }
    if let Ok(id) = key.parse::<u32>() {
        if let Ok(d) = live.conn.lookup_domain_by_id(id) {
            return Ok(d);
        }
    }
    if key.len() == 36 && key.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        if let Ok(d) = live.conn.lookup_domain_by_uuid_string(key) {
            return Ok(d);
        }
    }
    Err(HypervisorError::NoDomain(key.to_string()))
}

fn domain_state(dom: &Domain, name: &str) -> Result<DomainState> {
    let mut state: c_int = 0;
    let mut reason: c_int = 0;
    // SAFETY: dom is a valid handle; out-pointers are ours.
    if unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) } < 0 {
        return Err(no_domain_or(name, "reading state", last_error()));
    }
    Ok(DomainState::from_raw(state.into()))
}

fn no_domain_or(name: &str, what: &str, e: virt::error::Error) -> HypervisorError {
    if e.code().is(ErrorNumber::NoDomain) {
        HypervisorError::NoDomain(name.to_string())
    } else {
        call_err(format!("domain '{name}': {what}"), e)
    }
}

fn domain_info(dom: &Domain, transient: &[String]) -> Result<DomainInfo> {
    let name = dom.name().map_err(|e| call_err("reading domain name", e))?;
    let text = dom
        .xml_desc(0)
        .map_err(|e| no_domain_or(&name, "reading XML", e))?;
    let x = xml::parse_domain(&text).map_err(|m| HypervisorError::Call {
        what: format!("domain '{name}'"),
        message: m,
    })?;
    let state = domain_state(dom, &name)?;
    let iothreads = x.iothread_ids();
    Ok(DomainInfo {
        iothreads,
        persistent: !transient.contains(&x.name),
        name: x.name,
        uuid: x.uuid,
        id: x.id,
        state,
        vcpus: x.vcpus,
        memory_kib: x.current_memory_kib,
        max_memory_kib: x.memory_kib,
        disks: x.disks,
        interfaces: x.interfaces,
        tags: x.tags,
    })
}

fn transient_names(conn: &Connect) -> Vec<String> {
    conn.list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
        .map(|v| v.iter().filter_map(|d| d.name().ok()).collect())
        .unwrap_or_default()
}

/// Calls one of libvirt's getters that fill a caller-allocated typed-parameter array.
fn get_params(
    what: &str,
    domain: &str,
    f: impl FnOnce(sys::virTypedParameterPtr, *mut c_int) -> c_int,
) -> Result<params::Params> {
    get_params_upto(MAX_PARAMS, f).map_err(|e| no_domain_or(domain, what, e))
}

/// As [`get_params`], for up to `cap` parameters; libvirt's error as it is.
fn get_params_upto(
    cap: c_int,
    f: impl FnOnce(sys::virTypedParameterPtr, *mut c_int) -> c_int,
) -> std::result::Result<params::Params, virt::error::Error> {
    let mut buf = params::Buffer::new(cap);
    let mut n: c_int = cap;
    if f(buf.as_mut_ptr(), &mut n) < 0 {
        return Err(last_error());
    }
    buf.filled = n.clamp(0, cap);
    Ok(buf.params())
}

/// Most typed parameters of a disk's throttle (libvirt has 20 today).
const MAX_IOTUNE_PARAMS: c_int = 32;

/// QEMU's throttle of one disk. `None` where the driver has no disk throttling
/// or the disk cannot be throttled (no medium, not found): no value to record.
fn read_disk_throttle(ptr: sys::virDomainPtr, disk: &str, flags: c_uint) -> Option<DiskThrottle> {
    let dev = CString::new(disk).ok()?;
    // SAFETY: `dev` outlives the call; the buffer is the helper's.
    let p = get_params_upto(MAX_IOTUNE_PARAMS, |pp, n| unsafe {
        sys::virDomainGetBlockIoTune(ptr, dev.as_ptr(), pp, n, flags)
    })
    .map_err(|e| debug!(disk, error = %e, "no disk throttle to read"))
    .ok()?;
    let mut t = DiskThrottle {
        group: p.str("group_name").map(str::to_string),
        ..Default::default()
    };
    for f in DiskField::ALL {
        if let Some(v) = p.u64(f.key()) {
            t.limits.insert(*f, v);
        }
    }
    Some(t.normalized())
}

fn read_flags(scope: ReadScope) -> c_uint {
    match scope {
        ReadScope::Current => sys::VIR_DOMAIN_AFFECT_CURRENT,
        ReadScope::Config => sys::VIR_DOMAIN_AFFECT_CONFIG,
    }
}

fn parse_device_list(s: &str) -> Vec<(String, u64)> {
    // "/dev/sda,500,/dev/sdb,300"
    let parts: Vec<&str> = s.split(',').collect();
    parts
        .chunks(2)
        .filter_map(|c| match c {
            [path, v] if !path.is_empty() => v.trim().parse().ok().map(|v| (path.to_string(), v)),
            _ => None,
        })
        .collect()
}

/// Every vCPU's pinning (`virDomainGetVcpuPinInfo`).
fn read_vcpu_pins(
    ptr: sys::virDomainPtr,
    name: &str,
    flags: c_uint,
    vcpus: u32,
    host_cpus: u32,
    t: &mut Tuning,
) -> Result<()> {
    let maplen = host_cpus.div_ceil(8).max(1) as usize;
    let nvcpu = vcpus.max(1) as usize;
    let mut maps = vec![0u8; maplen * nvcpu];
    // SAFETY: `maps` holds nvcpu maps of maplen bytes.
    let got = unsafe {
        sys::virDomainGetVcpuPinInfo(
            ptr,
            nvcpu as c_int,
            maps.as_mut_ptr(),
            maplen as c_int,
            flags,
        )
    };
    if got < 0 {
        return Err(no_domain_or(name, "reading vcpu pinning", last_error()));
    }
    for v in 0..(got.max(0) as usize).min(nvcpu) {
        let map = &maps[v * maplen..(v + 1) * maplen];
        t.vcpu_pin
            .insert(v as u32, CpuSet::from_bitmap(map, host_cpus));
    }
    Ok(())
}

/// Every iothread's pinning (`virDomainGetIOThreadInfo`). A driver without
/// iothread support reads as none.
fn read_iothread_pins(
    ptr: sys::virDomainPtr,
    name: &str,
    flags: c_uint,
    host_cpus: u32,
    t: &mut Tuning,
) -> Result<()> {
    let mut info: *mut sys::virDomainIOThreadInfoPtr = std::ptr::null_mut();
    // SAFETY: libvirt allocates the array and each entry; both are freed below.
    let n = unsafe { sys::virDomainGetIOThreadInfo(ptr, &mut info, flags) };
    if n < 0 {
        let e = last_error();
        if unsupported(&e).is_some() {
            return Ok(());
        }
        return Err(no_domain_or(name, "reading iothread pinning", e));
    }
    for i in 0..usize::try_from(n).unwrap_or(0) {
        // SAFETY: `n` entries, each a valid pointer until freed here.
        unsafe {
            let it = *info.add(i);
            if it.is_null() {
                continue;
            }
            let len = usize::try_from((*it).cpumaplen).unwrap_or(0);
            if !(*it).cpumap.is_null() {
                let map = std::slice::from_raw_parts((*it).cpumap, len);
                t.iothread_pin
                    .insert((*it).iothread_id, CpuSet::from_bitmap(map, host_cpus));
            }
            sys::virDomainIOThreadInfoFree(it);
        }
    }
    if !info.is_null() {
        // SAFETY: the array itself is the caller's to free (libvirt's contract).
        unsafe { libc::free(info.cast()) };
    }
    Ok(())
}

/// A row's value among its family's parameters, if libvirt gives one.
fn param_value(p: &params::Params, row: &Row) -> Option<KnobValue> {
    match row.kind {
        ParamKind::ULLong | ParamKind::UInt => p
            .u64(row.param)
            .filter(|v| !(row.zero_is_unset && *v == 0))
            .map(KnobValue::Unsigned),
        ParamKind::LLong => p.i64(row.param).map(KnobValue::Signed),
        ParamKind::Set => p
            .str(row.param)
            .and_then(|s| s.parse::<CpuSet>().ok())
            .map(KnobValue::CpuSet),
    }
}

/// A running domain's memory nodeset can change only in the `strict` or
/// `restrictive` mode of its `<numatune>` (libvirt moves its memory with
/// cpuset.mems); other modes are fixed at start: unsupported, with the reason.
fn numa_live_allowed(ptr: sys::virDomainPtr, name: &str, knob: &Knob) -> Result<()> {
    let p = get_params_upto(MAX_PARAMS, |pp, n| unsafe {
        sys::virDomainGetNumaParameters(ptr, pp, n, sys::VIR_DOMAIN_AFFECT_LIVE)
    })
    .map_err(|e| knob_err(name, knob, e))?;
    // virDomainNumatuneMemMode: 0 strict, 1 preferred, 2 interleave, 3 restrictive
    let mode = p.i64("numa_mode").unwrap_or(0);
    if mode == 0 || mode == 3 {
        return Ok(());
    }
    let named = match mode {
        1 => "preferred",
        2 => "interleave",
        _ => "another mode",
    };
    Err(HypervisorError::Unsupported {
        domain: name.to_string(),
        knob: knob.to_string(),
        message: format!(
            "the domain's <numatune> mode is {named}: a running domain's nodeset can change only in strict or restrictive mode"
        ),
    })
}

/// Adds a row's value to a typed-parameter list, as the row's type says.
fn add_param(list: &mut params::List, row: &Row, value: &KnobValue) -> Result<(), String> {
    let built = match (row.kind, value) {
        (ParamKind::ULLong, KnobValue::Unsigned(v)) => list.add_ullong(row.param, *v),
        (ParamKind::UInt, KnobValue::Unsigned(v)) => {
            let v = u32::try_from(*v).map_err(|_| format!("{v} is too large for this knob"))?;
            list.add_uint(row.param, v)
        }
        (ParamKind::LLong, KnobValue::Signed(v)) => list.add_llong(row.param, *v),
        (ParamKind::Set, KnobValue::CpuSet(c)) => list.add_string(row.param, &c.to_string()),
        (_, v) => return Err(format!("value '{v}' has the wrong type for this knob")),
    };
    built.map_err(|e| e.to_string())
}

fn read_tuning(live: &Live, name: &str, scope: ReadScope) -> Result<Tuning> {
    let dom = lookup(live, name)?;
    let flags = read_flags(scope);
    let xml_flags = if scope == ReadScope::Config {
        sys::VIR_DOMAIN_XML_INACTIVE
    } else {
        0
    };
    let text = dom
        .xml_desc(xml_flags)
        .map_err(|e| no_domain_or(name, "reading XML", e))?;
    let x = xml::parse_domain(&text).map_err(|m| HypervisorError::Call {
        what: format!("domain '{name}'"),
        message: m,
    })?;
    let mut t = Tuning::default();
    let ptr = unsafe { dom.as_ptr() };

    // the per-device rows of the knob table, each through its family's call
    for row in DEVICE_ROWS {
        match row.family {
            DeviceFamily::VcpuPin => {
                read_vcpu_pins(ptr, name, flags, x.vcpus, live.host_cpus, &mut t)?
            }
            // only a domain with iothreads has them to pin
            DeviceFamily::IothreadPin if x.iothread_ids().is_empty() => {}
            DeviceFamily::IothreadPin => {
                read_iothread_pins(ptr, name, flags, live.host_cpus, &mut t)?
            }
        }
    }

    // emulator pinning
    let maplen = live.host_cpus.div_ceil(8).max(1) as usize;
    let mut emap = vec![0u8; maplen];
    // SAFETY: one map of maplen bytes.
    let got =
        unsafe { sys::virDomainGetEmulatorPinInfo(ptr, emap.as_mut_ptr(), maplen as c_int, flags) };
    if got > 0 {
        t.emulator_pin = Some(CpuSet::from_bitmap(&emap, live.host_cpus));
    } else if got < 0 {
        let e = last_error();
        // drivers without emulator threads (test://) say "not supported"
        if !e.code().is_any(vec![
            ErrorNumber::NoSupport,
            ErrorNumber::OperationUnsupported,
        ]) {
            return Err(no_domain_or(name, "reading emulator pinning", e));
        }
    }

    // scheduler
    // The test driver advertises string parameters and then rejects the flag
    // libvirt adds for them: use the older call without flags there.
    let sched = if live.test_driver && scope == ReadScope::Current {
        get_params("reading scheduler parameters", name, |p, n| unsafe {
            sys::virDomainGetSchedulerParameters(ptr, p, n)
        })?
    } else {
        get_params("reading scheduler parameters", name, |p, n| unsafe {
            sys::virDomainGetSchedulerParametersFlags(ptr, p, n, flags)
        })?
    };
    // memtune
    let mem = get_params("reading memory parameters", name, |p, n| unsafe {
        sys::virDomainGetMemoryParameters(ptr, p, n, flags)
    })?;
    // blkiotune
    let blk = get_params("reading blkio parameters", name, |p, n| unsafe {
        sys::virDomainGetBlkioParameters(ptr, p, n, flags)
    })?;
    // NUMA memory placement (drivers without it say "not supported": none)
    let numa = get_params_upto(MAX_PARAMS, |p, n| unsafe {
        sys::virDomainGetNumaParameters(ptr, p, n, flags)
    })
    .map_err(|e| debug!(domain = %name, error = %e, "no NUMA parameters"))
    .unwrap_or_default();
    // the domain-wide knobs of the table, from their family's parameters
    for knob in Knob::SCALARS {
        let Some(row) = knob.row() else { continue };
        if row.iothreads && x.iothread_ids().is_empty() {
            // libvirt answers the domain's own values here: nothing to record
            continue;
        }
        let p = match row.family {
            Family::Sched => &sched,
            Family::Memory => &mem,
            Family::Blkio => &blk,
            Family::Numa => &numa,
            // read above, with its own call
            Family::EmulatorPin => continue,
        };
        let value = match (row.family, param_value(p, row)) {
            // a domain without a nodeset may use every host node: that is
            // what a revert puts back live (an unset definition is handled
            // by its own element)
            (Family::Numa, None) if numa.str(row.param).is_some_and(|s| s.trim().is_empty()) => {
                Some(KnobValue::CpuSet(CpuSet::from_cpus(0..live.host_nodes)))
            }
            (_, v) => v,
        };
        if let Some(value) = value {
            t.set(&Change {
                knob: knob.clone(),
                value,
            });
        }
    }
    for field in crate::model::tuning::BlkioField::ALL {
        if let Some(list) = blk.str(field.param()) {
            for (path, v) in parse_device_list(list) {
                field.set(t.blkio_devices.entry(path).or_default(), v);
            }
        }
    }

    // interface bandwidth, per interface with a host-side device
    for iface in &x.interfaces {
        let Some(target) = iface.target.as_deref().or(iface.mac.as_deref()) else {
            continue;
        };
        let Ok(dev) = CString::new(target) else {
            continue;
        };
        let p = get_params("reading interface parameters", name, |pp, n| unsafe {
            sys::virDomainGetInterfaceParameters(ptr, dev.as_ptr(), pp, n, flags)
        })?;
        let dir = |prefix: &str| {
            let v = |f: &str| {
                p.u64(&format!("{prefix}.{f}"))
                    .and_then(|x| u32::try_from(x).ok())
                    .unwrap_or(0)
            };
            Bandwidth {
                average: v("average"),
                peak: v("peak"),
                burst: v("burst"),
            }
        };
        t.interfaces.insert(
            target.to_string(),
            InterfaceTuning {
                inbound: Some(dir("inbound")),
                outbound: Some(dir("outbound")),
            },
        );
    }
    // QEMU's per-disk throttles
    for disk in &x.disks {
        if let Some(throttle) = read_disk_throttle(ptr, &disk.target, flags) {
            if throttle != DiskThrottle::default() {
                t.disks.insert(disk.target.clone(), throttle);
            }
        }
    }
    if scope == ReadScope::Config {
        // libvirt answers a default (shares 0 or 1024, all CPUs …) for what the
        // definition does not set: an original of "not set" must read as such
        let mut knobs = Knob::SCALARS.to_vec();
        knobs.extend(t.device_knobs());
        let unset = xml::unset_knobs(&text, &knobs).map_err(|m| HypervisorError::Call {
            what: format!("domain '{name}'"),
            message: m,
        })?;
        for k in unset {
            t.clear(&k);
        }
    }
    Ok(t.normalized())
}

/// See [`Hypervisor::restore_definition`].
fn restore_definition(live: &Live, name: &str, originals: &[DefinitionOriginal]) -> Result<()> {
    let dom = lookup(live, name)?;
    let mut remove = Vec::new();
    for o in originals {
        let value = o.value.clone().or_else(|| o.knob.absent());
        match value {
            Some(value) => {
                let change = Change {
                    knob: o.knob.clone(),
                    value,
                };
                apply_once(live, &dom, name, &change, sys::VIR_DOMAIN_AFFECT_CONFIG)?;
            }
            None => remove.push(o.knob.clone()),
        }
    }
    if remove.is_empty() {
        return Ok(());
    }
    // no call removes an element: the definition is written again without it
    // (SECURE keeps passwords and keys that the plain XML leaves out)
    let text = dom
        .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE | sys::VIR_DOMAIN_XML_SECURE)
        .map_err(|e| no_domain_or(name, "reading the persistent definition", e))?;
    let edited = xml::remove_knobs(&text, &remove).map_err(|m| HypervisorError::Call {
        what: format!("domain '{name}'"),
        message: m,
    })?;
    if edited == text {
        return Ok(());
    }
    let knobs: Vec<String> = remove.iter().map(Knob::to_string).collect();
    live.conn
        .define_domain_xml(&edited)
        .map_err(|e| HypervisorError::Knob {
            domain: name.to_string(),
            knob: knobs.join(", "),
            message: format!("writing the definition back without them: {e}"),
        })?;
    debug!(domain = %name, knobs = ?knobs, "unset in the persistent definition again");
    Ok(())
}

fn apply_change(live: &Live, name: &str, change: &Change, scope: ApplyScope) -> Result<()> {
    let dom = lookup(live, name)?;
    // the test driver rejects AFFECT_LIVE for pinning and scheduler calls: CURRENT
    // means live on a running domain there
    let live_flag = if live.test_driver {
        sys::VIR_DOMAIN_AFFECT_CURRENT
    } else {
        sys::VIR_DOMAIN_AFFECT_LIVE
    };
    let passes: Vec<c_uint> = match scope {
        ApplyScope::Live => vec![live_flag],
        ApplyScope::LiveAndConfig if live.test_driver => {
            vec![live_flag, sys::VIR_DOMAIN_AFFECT_CONFIG]
        }
        ApplyScope::LiveAndConfig => {
            vec![sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG]
        }
        ApplyScope::Config => vec![sys::VIR_DOMAIN_AFFECT_CONFIG],
    };
    for flags in passes {
        apply_once(live, &dom, name, change, flags)?;
    }
    Ok(())
}

fn apply_once(live: &Live, dom: &Domain, name: &str, change: &Change, flags: c_uint) -> Result<()> {
    let knob = &change.knob;
    let ptr = unsafe { dom.as_ptr() };
    let mismatch = || HypervisorError::Invalid {
        domain: name.to_string(),
        knob: knob.to_string(),
        reason: format!("value '{}' has the wrong type for this knob", change.value),
    };
    let build = |e: params::BuildError| HypervisorError::Invalid {
        domain: name.to_string(),
        knob: knob.to_string(),
        reason: e.to_string(),
    };
    let maplen = live.host_cpus.div_ceil(8).max(1) as usize;
    let mut list = params::List::new();
    enum Setter {
        Sched,
        Memory,
        Blkio,
        Numa,
        Iface(CString),
        Disk(CString),
    }
    let invalid = |reason: String| HypervisorError::Invalid {
        domain: name.to_string(),
        knob: knob.to_string(),
        reason,
    };
    if let Some(row) = knob.device_row() {
        // a per-device row: its family's call for the knob's device
        let rc = match row.family {
            DeviceFamily::VcpuPin => {
                let (Knob::VcpuPin { vcpu }, KnobValue::CpuSet(set)) = (knob, &change.value) else {
                    return Err(mismatch());
                };
                return dom
                    .pin_vcpu_flags(*vcpu, &set.to_bitmap(maplen), flags)
                    .map_err(|e| knob_err(name, knob, e));
            }
            DeviceFamily::IothreadPin => {
                let (Knob::IothreadPin { iothread }, KnobValue::CpuSet(set)) =
                    (knob, &change.value)
                else {
                    return Err(mismatch());
                };
                let mut map = set.to_bitmap(maplen);
                // SAFETY: `map` holds maplen bytes and outlives the call.
                unsafe {
                    sys::virDomainPinIOThread(
                        ptr,
                        *iothread,
                        map.as_mut_ptr(),
                        c_int::try_from(map.len()).unwrap_or(c_int::MAX),
                        flags,
                    )
                }
            }
        };
        if rc < 0 {
            return Err(knob_err(name, knob, last_error()));
        }
        return Ok(());
    }
    let setter = if let Some(row) = knob.row() {
        if row.iothreads {
            let text = dom
                .xml_desc(0)
                .map_err(|e| no_domain_or(name, "reading XML", e))?;
            if xml::parse_domain(&text).is_ok_and(|x| x.iothread_ids().is_empty()) {
                return Err(HypervisorError::Unsupported {
                    domain: name.to_string(),
                    knob: knob.to_string(),
                    message: "the domain has no iothreads".into(),
                });
            }
        }
        // a domain-wide knob: its family's call with its row's parameter
        let family = match row.family {
            Family::EmulatorPin => {
                let KnobValue::CpuSet(set) = &change.value else {
                    return Err(mismatch());
                };
                return dom
                    .pin_emulator(&set.to_bitmap(maplen), flags)
                    .map_err(|e| knob_err(name, knob, e));
            }
            Family::Sched => Setter::Sched,
            Family::Memory => Setter::Memory,
            Family::Blkio => Setter::Blkio,
            Family::Numa => {
                if flags & sys::VIR_DOMAIN_AFFECT_LIVE != 0 {
                    numa_live_allowed(ptr, name, knob)?;
                }
                Setter::Numa
            }
        };
        add_param(&mut list, row, &change.value).map_err(invalid)?;
        family
    } else {
        match (knob, &change.value) {
            (Knob::BlkioDevice { path, field }, KnobValue::Unsigned(v)) => {
                if path.contains(',') {
                    return Err(invalid("a device path cannot contain ','".into()));
                }
                list.add_string(field.param(), &format!("{path},{v}"))
                    .map_err(build)?;
                Setter::Blkio
            }
            (Knob::Disk { target }, KnobValue::Throttle { throttle }) => {
                // the whole set: libvirt resets what a call leaves out
                for f in DiskField::ALL {
                    let v = throttle.limits.get(f).copied().unwrap_or(0);
                    list.add_ullong(f.key(), v).map_err(build)?;
                }
                if let Some(g) = &throttle.group {
                    list.add_string("group_name", g).map_err(build)?;
                }
                Setter::Disk(CString::new(target.as_str()).map_err(|_| mismatch())?)
            }
            (Knob::Interface { target, direction }, KnobValue::Bandwidth(b)) => {
                let p = direction.prefix();
                list.add_uint(&format!("{p}.average"), b.average)
                    .map_err(build)?;
                list.add_uint(&format!("{p}.peak"), b.peak).map_err(build)?;
                list.add_uint(&format!("{p}.burst"), b.burst)
                    .map_err(build)?;
                Setter::Iface(CString::new(target.as_str()).map_err(|_| mismatch())?)
            }
            _ => return Err(mismatch()),
        }
    };
    // SAFETY: `list` holds list.len() parameters built by libvirt's helpers.
    let rc = unsafe {
        match &setter {
            Setter::Sched => {
                sys::virDomainSetSchedulerParametersFlags(ptr, list.as_ptr(), list.len(), flags)
            }
            Setter::Memory => {
                sys::virDomainSetMemoryParameters(ptr, list.as_ptr(), list.len(), flags)
            }
            Setter::Blkio => {
                sys::virDomainSetBlkioParameters(ptr, list.as_ptr(), list.len(), flags)
            }
            Setter::Numa => sys::virDomainSetNumaParameters(ptr, list.as_ptr(), list.len(), flags),
            Setter::Disk(dev) => {
                sys::virDomainSetBlockIoTune(ptr, dev.as_ptr(), list.as_ptr(), list.len(), flags)
            }
            Setter::Iface(dev) => sys::virDomainSetInterfaceParameters(
                ptr,
                dev.as_ptr(),
                list.as_ptr(),
                list.len(),
                flags,
            ),
        }
    };
    if rc < 0 {
        let e = last_error();
        if e.code().is(ErrorNumber::NoDomain) {
            return Err(HypervisorError::NoDomain(name.to_string()));
        }
        return Err(knob_err(name, knob, e));
    }
    Ok(())
}

fn stats_flags(groups: StatGroups) -> c_uint {
    let mut s = sys::VIR_DOMAIN_STATS_STATE;
    if groups.cpu {
        s |= sys::VIR_DOMAIN_STATS_CPU_TOTAL;
    }
    if groups.balloon {
        s |= sys::VIR_DOMAIN_STATS_BALLOON;
    }
    if groups.vcpu {
        s |= sys::VIR_DOMAIN_STATS_VCPU;
    }
    if groups.block {
        s |= sys::VIR_DOMAIN_STATS_BLOCK;
    }
    if groups.interface {
        s |= sys::VIR_DOMAIN_STATS_INTERFACE;
    }
    s
}

/// Turns one record's parameters into counters.
pub fn stats_from_params(name: String, uuid: String, p: &params::Params) -> DomainStats {
    let mut s = DomainStats {
        name,
        uuid,
        state: p.i64("state.state").map(DomainState::from_raw),
        cpu_time_ns: p.u64("cpu.time"),
        balloon_current_kib: p.u64("balloon.current"),
        balloon_maximum_kib: p.u64("balloon.maximum"),
        balloon_rss_kib: p.u64("balloon.rss"),
        vcpu_current: p.u64("vcpu.current").and_then(|v| u32::try_from(v).ok()),
        ..Default::default()
    };
    let vmax = p.u64("vcpu.maximum").unwrap_or(0).min(4096);
    for i in 0..vmax {
        s.vcpu_time_ns
            .push(p.u64(&format!("vcpu.{i}.time")).unwrap_or(0));
        s.vcpu_delay_ns.push(p.u64(&format!("vcpu.{i}.delay")));
    }
    for i in 0..p.u64("block.count").unwrap_or(0).min(4096) {
        let k = |f: &str| format!("block.{i}.{f}");
        s.block.push(BlockCounters {
            name: p.str(&k("name")).unwrap_or_default().to_string(),
            path: p.str(&k("path")).map(str::to_string),
            rd_reqs: p.u64(&k("rd.reqs")).unwrap_or(0),
            rd_bytes: p.u64(&k("rd.bytes")).unwrap_or(0),
            wr_reqs: p.u64(&k("wr.reqs")).unwrap_or(0),
            wr_bytes: p.u64(&k("wr.bytes")).unwrap_or(0),
        });
    }
    for i in 0..p.u64("net.count").unwrap_or(0).min(4096) {
        let k = |f: &str| format!("net.{i}.{f}");
        s.net.push(NetCounters {
            name: p.str(&k("name")).unwrap_or_default().to_string(),
            rx_bytes: p.u64(&k("rx.bytes")).unwrap_or(0),
            rx_pkts: p.u64(&k("rx.pkts")).unwrap_or(0),
            tx_bytes: p.u64(&k("tx.bytes")).unwrap_or(0),
            tx_pkts: p.u64(&k("tx.pkts")).unwrap_or(0),
        });
    }
    s
}

/// Name and UUID of a domain handle; both are local (no RPC).
unsafe fn handle_identity(dom: sys::virDomainPtr) -> (String, String) {
    let name_ptr = sys::virDomainGetName(dom);
    let name = if name_ptr.is_null() {
        String::new()
    } else {
        CStr::from_ptr(name_ptr).to_string_lossy().into_owned()
    };
    let mut buf = [0 as std::os::raw::c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    let uuid = if sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) == 0 {
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    } else {
        String::new()
    };
    (name, uuid)
}

/// The bulk statistics of every active domain, in one call, records freed.
pub(crate) fn bulk_stats(conn: &Connect, groups: StatGroups) -> Result<Vec<DomainStats>> {
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: libvirt allocates `records`; freed below with virDomainStatsRecordListFree.
    let n = unsafe {
        sys::virConnectGetAllDomainStats(
            conn.as_ptr(),
            stats_flags(groups),
            &mut records,
            sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE,
        )
    };
    if n < 0 {
        return Err(call_err("reading domain statistics", last_error()));
    }
    let mut out = Vec::with_capacity(n as usize);
    if !records.is_null() {
        for i in 0..n as usize {
            // SAFETY: libvirt returned n non-null records.
            unsafe {
                let rec = *records.add(i);
                if rec.is_null() {
                    continue;
                }
                let (name, uuid) = handle_identity((*rec).dom);
                let p = params::read((*rec).params, (*rec).nparams);
                out.push(stats_from_params(name, uuid, &p));
            }
        }
        // SAFETY: frees the records, their params and domain references.
        unsafe { sys::virDomainStatsRecordListFree(records) };
    }
    Ok(out)
}

impl LibvirtHypervisor {
    /// Statistics of one domain by itself (one call per domain): only for the
    /// benchmark that compares it with the bulk call.
    pub fn single_domain_stats(&self, name: &str, groups: StatGroups) -> Result<DomainStats> {
        self.with(|live| {
            let dom = lookup(live, name)?;
            let mut doms = [unsafe { dom.as_ptr() }, std::ptr::null_mut()];
            let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
            // SAFETY: a null-terminated array of one live handle; records freed below.
            let n = unsafe {
                sys::virDomainListGetStats(doms.as_mut_ptr(), stats_flags(groups), &mut records, 0)
            };
            if n < 0 {
                return Err(no_domain_or(name, "reading statistics", last_error()));
            }
            let mut out = DomainStats {
                name: name.to_string(),
                ..Default::default()
            };
            if !records.is_null() {
                unsafe {
                    if n > 0 && !(*records).is_null() {
                        let rec = *records;
                        let (n2, uuid) = handle_identity((*rec).dom);
                        out = stats_from_params(
                            n2,
                            uuid,
                            &params::read((*rec).params, (*rec).nparams),
                        );
                    }
                    sys::virDomainStatsRecordListFree(records);
                }
            }
            Ok(out)
        })
    }

    /// Starts a defined domain (tests and fixtures).
    pub fn start(&self, name: &str) -> Result<()> {
        self.with(|live| {
            lookup(live, name)?
                .create()
                .map(|_| ())
                .map_err(|e| no_domain_or(name, "starting", e))
        })
    }

    /// Stops a domain at once (tests and fixtures).
    pub fn destroy(&self, name: &str) -> Result<()> {
        self.with(|live| {
            lookup(live, name)?
                .destroy()
                .map_err(|e| no_domain_or(name, "destroying", e))
        })
    }

    /// Defines a domain from XML (tests and fixtures); returns its name.
    pub fn define(&self, xml: &str) -> Result<String> {
        self.with(|live| {
            let d = live
                .conn
                .define_domain_xml(xml)
                .map_err(|e| call_err("defining domain", e))?;
            d.name().map_err(|e| call_err("defining domain", e))
        })
    }

    /// Undefines a domain, also removing its NVRAM and metadata (tests and fixtures).
    pub fn undefine(&self, name: &str) -> Result<()> {
        self.with(|live| {
            lookup(live, name)?
                .undefine()
                .map_err(|e| no_domain_or(name, "undefining", e))
        })
    }
}

impl Hypervisor for LibvirtHypervisor {
    #[instrument(skip(self), level = "debug")]
    fn list_domains(&self) -> Result<Vec<DomainInfo>> {
        self.with(|live| {
            let doms = live
                .conn
                .list_all_domains(0)
                .map_err(|e| call_err("listing domains", e))?;
            let transient = transient_names(&live.conn);
            let mut out = Vec::with_capacity(doms.len());
            for d in &doms {
                match domain_info(d, &transient) {
                    Ok(info) => out.push(info),
                    // a domain undefined between listing and reading is simply gone
                    Err(HypervisorError::NoDomain(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
    }

    #[instrument(skip(self), level = "debug")]
    fn domain(&self, key: &str) -> Result<DomainInfo> {
        self.with(|live| {
            let d = lookup(live, key)?;
            let transient = if d.is_persistent().unwrap_or(true) {
                vec![]
            } else {
                vec![d.name().unwrap_or_default()]
            };
            domain_info(&d, &transient)
        })
    }

    #[instrument(skip(self), level = "debug")]
    fn all_stats(&self, groups: StatGroups) -> Result<Vec<DomainStats>> {
        self.with(|live| bulk_stats(&live.conn, groups))
    }

    #[instrument(skip(self), level = "debug")]
    fn tuning(&self, domain: &str, scope: ReadScope) -> Result<Tuning> {
        self.with(|live| read_tuning(live, domain, scope))
    }

    #[instrument(skip(self), fields(change = %change), level = "debug")]
    fn apply(&self, domain: &str, change: &Change, scope: ApplyScope) -> Result<()> {
        if let Err(reason) = super::check_value(change) {
            return Err(HypervisorError::Invalid {
                domain: domain.to_string(),
                knob: change.knob.to_string(),
                reason,
            });
        }
        self.with(|live| {
            let pins_cpus = change
                .knob
                .row()
                .is_none_or(|r| r.input == crate::model::knobs::Input::CpuSet);
            if let (true, KnobValue::CpuSet(set)) = (pins_cpus, &change.value) {
                if let Some(max) = set.max().filter(|m| *m >= live.host_cpus) {
                    return Err(HypervisorError::Invalid {
                        domain: domain.to_string(),
                        knob: change.knob.to_string(),
                        reason: format!(
                            "host CPU {max} in cpuset '{set}' does not exist (the host has CPUs 0-{})",
                            live.host_cpus.saturating_sub(1)
                        ),
                    });
                }
            }
            apply_change(live, domain, change, scope)
        })
    }

    #[instrument(skip(self, originals), level = "debug")]
    fn restore_definition(&self, domain: &str, originals: &[DefinitionOriginal]) -> Result<()> {
        self.with(|live| restore_definition(live, domain, originals))
    }

    #[instrument(skip(self), level = "debug")]
    fn set_tags(&self, domain: &str, tags: &[String]) -> Result<()> {
        self.with(|live| {
            let d = lookup(live, domain)?;
            let active = d
                .is_active()
                .map_err(|e| no_domain_or(domain, "reading state", e))?;
            let persistent = d
                .is_persistent()
                .map_err(|e| no_domain_or(domain, "reading state", e))?;
            let mut flags = 0;
            if active {
                flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
            }
            if persistent {
                flags |= sys::VIR_DOMAIN_AFFECT_CONFIG;
            }
            let element = xml::tags_element(tags);
            let value = if tags.is_empty() {
                None
            } else {
                Some(element.as_str())
            };
            d.set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                value,
                Some("vp"),
                Some(TAGS_NAMESPACE),
                flags,
            )
            .map_err(|e| HypervisorError::Knob {
                domain: domain.to_string(),
                knob: "tags".into(),
                message: e.message().to_string(),
            })
        })
    }

    fn host(&self) -> Result<HostInfo> {
        self.with(|live| {
            let info = live
                .conn
                .node_info()
                .map_err(|e| call_err("reading host info", e))?;
            let hostname = live.conn.hostname().unwrap_or_default();
            let mut map: *mut u8 = std::ptr::null_mut();
            let mut online: c_uint = 0;
            // SAFETY: libvirt allocates `map`; freed below with free().
            let n = unsafe { sys::virNodeGetCPUMap(live.conn.as_ptr(), &mut map, &mut online, 0) };
            let online_set = if n > 0 && !map.is_null() {
                let len = (n as usize).div_ceil(8);
                // SAFETY: libvirt returned a map of at least len bytes.
                let slice = unsafe { std::slice::from_raw_parts(map, len) };
                let set = CpuSet::from_bitmap(slice, n as u32);
                unsafe { libc::free(map.cast()) };
                set
            } else {
                CpuSet::from_cpus(0..info.cpus)
            };
            Ok(HostInfo {
                hostname,
                cpus: live.host_cpus,
                online: online_set,
                memory_kib: info.memory,
            })
        })
    }

    fn events(&self) -> crossbeam_channel::Receiver<HypervisorEvent> {
        self.subscribers.subscribe()
    }
    fn uri(&self) -> &str {
        LibvirtHypervisor::uri(self)
    }
    fn is_connected(&self) -> bool {
        LibvirtHypervisor::is_connected(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists() {
        assert_eq!(
            parse_device_list("/dev/sda,500,/dev/sdb,300"),
            vec![("/dev/sda".to_string(), 500), ("/dev/sdb".to_string(), 300)]
        );
        assert!(parse_device_list("").is_empty());
        assert_eq!(
            parse_device_list("/dev/sda,x,/dev/sdb,1"),
            vec![("/dev/sdb".to_string(), 1)]
        );
    }

    #[test]
    fn stats_parse_tolerates_missing_and_absurd_counts() {
        let p = params::Params(vec![
            ("state.state".into(), params::Value::Int(1)),
            ("cpu.time".into(), params::Value::ULLong(5)),
            ("block.count".into(), params::Value::UInt(1)),
            ("net.count".into(), params::Value::ULLong(u64::MAX)),
        ]);
        let s = stats_from_params("a".into(), "u".into(), &p);
        assert_eq!(s.state, Some(DomainState::Running));
        assert_eq!(s.cpu_time_ns, Some(5));
        assert_eq!(s.block.len(), 1);
        assert_eq!(s.net.len(), 4096);
    }
}
