//! libvirt's default event loop, lifecycle callbacks and the close callback.
//!
//! The event loop must be registered before the first connection opens; one
//! thread runs it for the life of the process. It also drives keep-alive, which
//! is what notices a libvirtd that went away.

use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};

use crossbeam_channel::{Receiver, Sender};
use tracing::warn;
use virt::connect::Connect;
use virt::sys;

use super::handle_identity;
use crate::hypervisor::{HypervisorEvent, LifecycleKind, TAGS_NAMESPACE};

/// Everyone listening to hypervisor events.
#[derive(Default)]
pub struct Subscribers(Mutex<Vec<Sender<HypervisorEvent>>>);

impl Subscribers {
    pub fn subscribe(&self) -> Receiver<HypervisorEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        rx
    }
    pub fn send(&self, ev: HypervisorEvent) {
        let mut subs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| s.send(ev.clone()).is_ok());
    }
}

static EVENT_LOOP: Once = Once::new();

/// Registers libvirt's default event implementation and starts its thread, once.
pub fn init_event_loop() {
    EVENT_LOOP.call_once(|| {
        virt::error::clear_error_callback();
        // SAFETY: called once, before any connection is opened.
        if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
            warn!("cannot register libvirt's event loop: no lifecycle events or keep-alive");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                // SAFETY: the default implementation was registered above.
                if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the libvirt event thread");
        }
    });
}

fn lifecycle_kind(event: c_int, detail: c_int) -> LifecycleKind {
    match event as u32 {
        sys::VIR_DOMAIN_EVENT_DEFINED => LifecycleKind::Defined,
        sys::VIR_DOMAIN_EVENT_UNDEFINED => LifecycleKind::Undefined,
        sys::VIR_DOMAIN_EVENT_STARTED
            if detail as u32 == sys::VIR_DOMAIN_EVENT_STARTED_MIGRATED =>
        {
            LifecycleKind::MigratedIn
        }
        sys::VIR_DOMAIN_EVENT_STARTED => LifecycleKind::Started,
        sys::VIR_DOMAIN_EVENT_SUSPENDED => LifecycleKind::Suspended,
        sys::VIR_DOMAIN_EVENT_RESUMED => LifecycleKind::Resumed,
        sys::VIR_DOMAIN_EVENT_STOPPED
            if detail as u32 == sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED =>
        {
            LifecycleKind::MigratedOut
        }
        sys::VIR_DOMAIN_EVENT_STOPPED => LifecycleKind::Stopped,
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => LifecycleKind::Shutdown,
        sys::VIR_DOMAIN_EVENT_CRASHED => LifecycleKind::Crashed,
        _ => LifecycleKind::Other,
    }
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    if opaque.is_null() || dom.is_null() {
        return 0;
    }
    let subs = &*(opaque as *const Subscribers);
    let (name, uuid) = handle_identity(dom);
    let kind = lifecycle_kind(event, detail);
    // a panic must not unwind into C
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        subs.send(HypervisorEvent::Lifecycle { name, uuid, kind });
    }));
    0
}

unsafe extern "C" fn free_subscribers(opaque: *mut c_void) {
    if !opaque.is_null() {
        drop(Arc::from_raw(opaque as *const Subscribers));
    }
}

/// Registers `cb` for `event` on every domain, with the subscribers as its
/// opaque data (released by libvirt through `free_subscribers` when the
/// callback goes away); returns the callback id.
fn register(
    conn: &Connect,
    event: u32,
    cb: sys::virConnectDomainEventGenericCallback,
    subs: Arc<Subscribers>,
) -> Option<c_int> {
    let opaque = Arc::into_raw(subs) as *mut c_void;
    // SAFETY: `cb` has the signature libvirt expects for `event` (cast to the
    // generic type by the caller, as libvirt's API requires).
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            event as c_int,
            cb,
            opaque,
            Some(free_subscribers),
        )
    };
    if id < 0 {
        // not registered: libvirt did not take ownership of opaque
        unsafe { free_subscribers(opaque) };
        return None;
    }
    Some(id)
}

/// Subscribes to lifecycle events of every domain; returns the callback id.
pub fn register_lifecycle(conn: &Connect, subs: Arc<Subscribers>) -> Option<c_int> {
    type Lifecycle = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        c_int,
        *mut c_void,
    ) -> c_int;
    type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    // SAFETY: libvirt calls a lifecycle callback with the lifecycle signature.
    let cb = unsafe { std::mem::transmute::<Lifecycle, Generic>(on_lifecycle) };
    register(conn, sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, Some(cb), subs)
}

unsafe extern "C" fn on_metadata(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _kind: c_int,
    nsuri: *const std::os::raw::c_char,
    opaque: *mut c_void,
) {
    if opaque.is_null() || dom.is_null() {
        return;
    }
    // only our own tags matter
    if !nsuri.is_null() && std::ffi::CStr::from_ptr(nsuri).to_bytes() != TAGS_NAMESPACE.as_bytes() {
        return;
    }
    let subs = &*(opaque as *const Subscribers);
    let (name, uuid) = handle_identity(dom);
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        subs.send(HypervisorEvent::Lifecycle {
            name,
            uuid,
            kind: LifecycleKind::TagsChanged,
        });
    }));
}

/// Subscribes to metadata changes (tags edited with `virt-persona tag-add`, or
/// by anyone through libvirt); returns the callback id.
pub fn register_metadata(conn: &Connect, subs: Arc<Subscribers>) -> Option<c_int> {
    type Metadata = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        *const std::os::raw::c_char,
        *mut c_void,
    );
    type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    // SAFETY: libvirt calls a metadata-change callback with that signature.
    let cb = unsafe { std::mem::transmute::<Metadata, Generic>(on_metadata) };
    register(
        conn,
        sys::VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,
        Some(cb),
        subs,
    )
}

struct CloseState {
    closed: Arc<AtomicBool>,
    subs: Arc<Subscribers>,
}

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    if opaque.is_null() {
        return;
    }
    let st = &*(opaque as *const CloseState);
    st.closed.store(true, Ordering::SeqCst);
    let why = match reason as u32 {
        sys::VIR_CONNECT_CLOSE_REASON_EOF => "libvirtd closed the connection",
        sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => "libvirtd stopped answering keep-alives",
        sys::VIR_CONNECT_CLOSE_REASON_CLIENT => "connection closed",
        _ => "connection error",
    };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        st.subs.send(HypervisorEvent::Disconnected {
            reason: why.to_string(),
        });
    }));
}

unsafe extern "C" fn free_close(opaque: *mut c_void) {
    if !opaque.is_null() {
        drop(Box::from_raw(opaque as *mut CloseState));
    }
}

/// Marks `closed` and tells subscribers when libvirt closes the connection.
pub fn register_close(conn: &Connect, closed: Arc<AtomicBool>, subs: Arc<Subscribers>) {
    let opaque = Box::into_raw(Box::new(CloseState { closed, subs })) as *mut c_void;
    // SAFETY: opaque is released by free_close when the callback is unregistered
    // or the connection is freed.
    let rc = unsafe {
        sys::virConnectRegisterCloseCallback(
            conn.as_ptr(),
            Some(on_close),
            opaque,
            Some(free_close),
        )
    };
    if rc < 0 {
        unsafe { free_close(opaque) };
    }
}

/// Removes the close callback before the connection is dropped.
pub fn unregister_close(conn: &Connect) {
    // SAFETY: unregisters the callback registered by register_close, if any.
    unsafe { sys::virConnectUnregisterCloseCallback(conn.as_ptr(), Some(on_close)) };
}
