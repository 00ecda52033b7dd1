//! The gossip node: the [`Driver`] (foca plus publishing and anti-entropy)
//! fed by a tokio UDP socket and timers — the only code that touches the
//! network for gossip. Runs as one task on the daemon's network runtime; the
//! control loop hands it the local state by channel and reads the merged
//! view from [`Shared`].
//!
//! Every datagram goes through [`crate::cluster::seal`]: sealed on the way
//! out, opened (authenticated, fresh, once) on the way in; what does not
//! open is counted by reason and never reaches the driver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use foca::Timer;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::cluster::admit::Admission;
use crate::cluster::driver::{Driver, DriverConfig, Id, TICK_MS};
use crate::cluster::seal::{Drop, KeyRing, Opened, Opener, Sealer};
use crate::cluster::state::Local;
use crate::time::Millis;

pub use crate::cluster::shared::{Counters, Inner, MemberView, Rates, Shared, RATE_WINDOW_MS};

/// What the loop tells the node.
pub enum ToNode {
    Local(Local),
    /// Replace the key ring (a reload).
    Keys(KeyRing),
    Stop,
}

#[derive(Clone)]
pub struct NodeConfig {
    pub node: String,
    pub listen: SocketAddr,
    /// The address other hosts reach this one at, when it is not the listen
    /// address (`--gossip-advertise`); a port of 0 means the listen port.
    pub advertise: Option<SocketAddr>,
    /// The cluster size foca is tuned for (`gossip.expected_hosts`).
    pub expected_members: usize,
    pub seeds: Vec<SocketAddr>,
    pub ring: KeyRing,
    pub cluster: String,
    pub clock: fn() -> Millis,
}

enum Input {
    Data(Vec<u8>, SocketAddr),
    Timer(Timer<Id>),
}

/// Binds the socket and starts the node on `rt`. Returns the channel to it.
/// A started gossip node: where to send it commands, the address it is
/// bound to, and a channel that says why once its task has ended (it
/// returned, or panicked), for the control loop to start it again.
pub struct Started {
    pub tx: mpsc::Sender<ToNode>,
    pub addr: SocketAddr,
    pub ended: crossbeam_channel::Receiver<String>,
}

pub fn start(
    rt: &tokio::runtime::Handle,
    cfg: NodeConfig,
    shared: Arc<Shared>,
) -> std::io::Result<Started> {
    let std_socket = std::net::UdpSocket::bind(cfg.listen)?;
    {
        use nix::sys::socket::{setsockopt, sockopt};
        // past net.core.rmem_max where allowed (root: CAP_NET_ADMIN)
        if setsockopt(&std_socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            let _ = setsockopt(&std_socket, sockopt::RcvBuf, &RECEIVE_BUFFER);
        }
    }
    // the receiving thread wakes this often to see whether it is to stop
    std_socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let bound = std_socket.local_addr()?;
    let addr = advertised_addr(bound, cfg.advertise, &cfg.seeds, route_source)
        .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidInput, why))?;
    if addr != bound {
        info!(%bound, advertised = %addr, "gossip advertises another address than it listens on");
    }
    let (tx, rx) = mpsc::channel(64);
    let socket = Arc::new(std_socket);
    {
        let mut i = shared.lock();
        i.me = cfg.node.clone();
        i.my_addr = addr.to_string();
    }
    let task = rt.spawn(run(cfg, addr, bound, socket, shared, rx));
    let (ended_tx, ended) = crossbeam_channel::bounded(1);
    rt.spawn(async move {
        let why = match task.await {
            Ok(()) => "ended".to_string(),
            Err(e) if e.is_panic() => format!(
                "panicked: {}",
                crate::supervise::panic_message(&*e.into_panic())
            ),
            Err(e) => format!("cancelled: {e}"),
        };
        let _ = ended_tx.send(why);
    });
    Ok(Started { tx, addr, ended })
}

/// The address this host's node is known by in the cluster: `advertise`
/// when given; else the listen address; for a wildcard listener (0.0.0.0,
/// `[::]`) the source address of the route to the first seed (or, without
/// seeds, of the default route). Refused, with the reason, where other hosts
/// could not reach what would be advertised: a wildcard, or a loopback
/// address while a seed is not on loopback (a host name that resolves to
/// Debian's 127.0.1.1 splits the cluster silently otherwise).
pub fn advertised_addr(
    bound: SocketAddr,
    advertise: Option<SocketAddr>,
    seeds: &[SocketAddr],
    route: impl Fn(SocketAddr) -> Option<std::net::IpAddr>,
) -> Result<SocketAddr, String> {
    let remote_seed = seeds.iter().find(|s| !s.ip().is_loopback());
    let port = |p: u16| if p == 0 { bound.port() } else { p };
    let chosen = match advertise {
        Some(a) if a.ip().is_unspecified() => {
            return Err(format!(
                "gossip.advertise {a} is a wildcard: give the address other hosts reach this one at"
            ))
        }
        Some(a) => SocketAddr::new(a.ip(), port(a.port())),
        None if !bound.ip().is_unspecified() => bound,
        None => {
            // where the packets to the cluster leave from (no packet is sent)
            let toward = seeds.first().copied().unwrap_or_else(|| {
                let probe: std::net::IpAddr = if bound.is_ipv4() {
                    std::net::Ipv4Addr::new(192, 0, 2, 1).into()
                } else {
                    "2001:db8::1"
                        .parse()
                        .unwrap_or(std::net::Ipv6Addr::LOCALHOST.into())
                };
                SocketAddr::new(probe, 9)
            });
            let ip = route(toward).ok_or_else(|| {
                format!(
                    "gossip listens on {bound} (every address) and no route to {toward} says which of this host's addresses the others reach: give --gossip-advertise ADDR (gossip.advertise)"
                )
            })?;
            SocketAddr::new(ip, bound.port())
        }
    };
    if let (true, Some(seed)) = (chosen.ip().is_loopback(), remote_seed) {
        return Err(format!(
            "gossip would be known as {chosen}, a loopback address, while seed {seed} is on another host: it could never reach this one. Listen on this host's own address or give --gossip-advertise ADDR (gossip.advertise)"
        ));
    }
    Ok(chosen)
}

/// The source address the kernel picks for packets to `to` (a UDP socket
/// connected, nothing sent).
fn route_source(to: SocketAddr) -> Option<std::net::IpAddr> {
    let any: SocketAddr = if to.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(to).ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
}

/// Whether `to`, the address a datagram was sealed for, is this host's: the
/// advertised address, the bound one, or — for a wildcard listener — any
/// address of this host's interfaces at the bound port (`local` lists them).
pub fn is_local(
    to: SocketAddr,
    advertised: SocketAddr,
    bound: SocketAddr,
    local: &[std::net::IpAddr],
) -> bool {
    use crate::cluster::seal::canonical;
    let to = canonical(to);
    to == canonical(advertised)
        || to == canonical(bound)
        || (bound.ip().is_unspecified()
            && to.port() == bound.port()
            && (local.contains(&to.ip()) || to.ip().is_loopback()))
}

/// This host's addresses, as [`is_local`] needs them: the interfaces' are
/// read again (at most every 5 s) when a datagram names one not known,
/// so an address that came up since is found.
struct Me {
    advertised: SocketAddr,
    bound: SocketAddr,
    local: Vec<std::net::IpAddr>,
    scanned: Option<std::time::Instant>,
}

impl Me {
    fn new(advertised: SocketAddr, bound: SocketAddr) -> Me {
        let mut me = Me {
            advertised,
            bound,
            local: Vec::new(),
            scanned: None,
        };
        if bound.ip().is_unspecified() {
            me.scan();
        }
        me
    }

    fn scan(&mut self) {
        self.scanned = Some(std::time::Instant::now());
        match nix::ifaddrs::getifaddrs() {
            Ok(addrs) => {
                self.local = addrs
                    .filter_map(|i| i.address)
                    .filter_map(|a| {
                        a.as_sockaddr_in()
                            .map(|v4| std::net::IpAddr::V4(v4.ip()))
                            .or_else(|| a.as_sockaddr_in6().map(|v6| v6.ip().into()))
                    })
                    .collect();
            }
            Err(e) => debug!(error = %e, "reading this host's addresses"),
        }
    }

    fn is_me(&mut self, to: SocketAddr) -> bool {
        if is_local(to, self.advertised, self.bound, &self.local) {
            return true;
        }
        let stale = self
            .scanned
            .is_none_or(|t| t.elapsed() > Duration::from_secs(5));
        if self.bound.ip().is_unspecified() && stale {
            self.scan();
            return is_local(to, self.advertised, self.bound, &self.local);
        }
        false
    }
}

/// The node as the control loop holds it: when its task ends or panics it
/// is said ([`Supervised::ended`] gives why) and started again after a
/// backoff ([`crate::supervise::Restarts`]) on the same address and view, as
/// a new incarnation, with the keys in force.
pub struct Supervised {
    cfg: NodeConfig,
    shared: Arc<Shared>,
    node: Started,
    restarts: crate::supervise::Restarts,
}

impl Supervised {
    pub fn start(
        rt: &tokio::runtime::Handle,
        cfg: NodeConfig,
        shared: Arc<Shared>,
        now: Millis,
    ) -> std::io::Result<Supervised> {
        let node = start(rt, cfg.clone(), shared.clone())?;
        Ok(Supervised {
            cfg,
            shared,
            node,
            restarts: crate::supervise::Restarts::new("gossip", now),
        })
    }

    /// The address the node is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.node.addr
    }

    /// A command to the node (dropped while it is down or its queue is full:
    /// the loop sends its whole state again every tick).
    pub fn send(&self, msg: ToNode) {
        let _ = self.node.tx.try_send(msg);
    }

    /// New keys: to the running node, and to any later start.
    pub fn set_keys(&mut self, ring: KeyRing) {
        self.cfg.ring = ring.clone();
        self.send(ToNode::Keys(ring));
    }

    /// Says why once the node's task has ended, for the loop's `select!`.
    pub fn ended(&self) -> crossbeam_channel::Receiver<String> {
        self.node.ended.clone()
    }

    /// Its task ended (`why`) at `now`.
    pub fn failed(&mut self, why: String, now: Millis) {
        self.node.ended = crossbeam_channel::never();
        self.restarts.failed(why, now);
    }

    /// Starts it again when its backoff is over: `Some` when it tried.
    pub fn restart_if_due(
        &mut self,
        rt: &tokio::runtime::Handle,
        now: Millis,
    ) -> Option<std::io::Result<()>> {
        if !self.restarts.due(now) {
            return None;
        }
        Some(match start(rt, self.cfg.clone(), self.shared.clone()) {
            Ok(node) => {
                self.node = node;
                self.restarts.restarted(now);
                Ok(())
            }
            Err(e) => {
                self.restarts.restart_failed(e.to_string(), now);
                Err(e)
            }
        })
    }

    pub fn status(&self) -> &crate::supervise::HelperStatus {
        self.restarts.status()
    }
}

/// Tells the receiving thread to stop when dropped: it ends with the node's
/// task (however that ends) within its read timeout, and with it its hold on
/// the socket, so a restart can bind the port again.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);
impl std::ops::Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The receiving thread: datagrams in batches, each admitted or dropped
/// ([`Admission`]) before it is copied, what is admitted handed to the node.
/// Under a flood (some dropped), once the queue is read it waits 1 ms, so a
/// flood is read in full batches rather than one wake-up per datagram; what
/// arrives meanwhile waits in the socket's buffer ([`RECEIVE_BUFFER`]).
fn receive(
    socket: &std::net::UdpSocket,
    in_tx: &mpsc::Sender<Input>,
    admission: &std::sync::Mutex<Admission>,
    stop: &std::sync::atomic::AtomicBool,
    mono: impl Fn() -> u64,
) {
    let mut batch = Batch::new();
    let mut flooded = false;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let n = match batch.receive(socket, !flooded) {
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "gossip receive");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // one clock reading and one lock for the batch
        let t = mono();
        let admitted: Vec<(Vec<u8>, SocketAddr)> = match admission.lock() {
            Ok(mut a) => batch
                .datagrams(n)
                .filter(|(_, from)| a.admit(*from, t))
                .map(|(d, from)| (d.to_vec(), from))
                .collect(),
            Err(_) => return,
        };
        if n > 0 {
            flooded = admitted.len() < n;
        }
        for (d, from) in admitted {
            if in_tx.blocking_send(Input::Data(d, from)).is_err() {
                return;
            }
        }
        if flooded && n < BATCH {
            if n == 0 {
                flooded = false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn member_state(s: foca::State) -> &'static str {
    match s {
        foca::State::Alive => "alive",
        foca::State::Suspect => "suspect",
        foca::State::Down => "dead",
    }
}

/// The gossip socket's receive buffer: room for what arrives while a flood
/// is read in batches (some 3,000 datagrams a millisecond), so the members'
/// datagrams among it are not lost to a full buffer.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Datagrams received in batches (`recvmmsg`, up to [`BATCH`] a system
/// call): a flood costs the system call, the clock reading and the lock once
/// per batch, not per datagram.
const BATCH: usize = 32;

struct Batch {
    bufs: Vec<Vec<u8>>,
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            // one byte over the largest datagram: a longer one shows as oversized
            bufs: vec![vec![0u8; crate::cluster::seal::MAX_DATAGRAM + 1]; BATCH],
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Waits (up to the socket's read timeout) for datagrams and takes what
    /// is there: `Ok(0)` when none came. `wait`: block for the first one;
    /// else only what is queued.
    fn receive(&mut self, socket: &std::net::UdpSocket, wait: bool) -> std::io::Result<usize> {
        use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrLike, SockaddrStorage};
        use std::os::fd::AsRawFd;
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut iovs: Vec<[std::io::IoSliceMut; 1]> = self
            .bufs
            .iter_mut()
            .map(|b| [std::io::IoSliceMut::new(b)])
            .collect();
        let flags = if wait {
            MsgFlags::MSG_WAITFORONE
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        let msgs = match recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            iovs.iter_mut(),
            flags,
            None,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        self.got.clear();
        self.got.extend(msgs.map(|m| {
            let from = m.address.and_then(|a| {
                if let Some(v4) = a.as_sockaddr_in() {
                    Some(SocketAddr::V4((*v4).into()))
                } else {
                    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
                }
                .filter(|_| a.len() > 0)
            });
            (m.bytes, from)
        }));
        Ok(self.got.len())
    }

    /// The first `n` datagrams received, with their sources.
    fn datagrams(&self, n: usize) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.got
            .iter()
            .take(n)
            .zip(&self.bufs)
            .filter_map(|((len, from), buf)| Some((&buf[..*len.min(&buf.len())], (*from)?)))
    }
}

async fn run(
    cfg: NodeConfig,
    addr: SocketAddr,
    bound: SocketAddr,
    socket: Arc<std::net::UdpSocket>,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<ToNode>,
) {
    let now = cfg.clock;
    let mut driver = Driver::new(
        DriverConfig {
            node: cfg.node.clone(),
            addr,
            bump: now().max(0) as u64,
            seeds: cfg.seeds.clone(),
            expected_members: cfg.expected_members,
            rng_seed: rand::random(),
        },
        shared.clone(),
        now(),
    );
    driver.join(now());
    // the sender identity: the advertised address and a random process id
    let mut sealer = Sealer::new(cfg.ring.clone(), &cfg.cluster, addr, rand::random());
    let mut opener = Opener::new(cfg.ring, &cfg.cluster);
    let mut me = Me::new(addr, bound);
    // rate limits before anything is copied or opened (a monotonic clock)
    let started = std::time::Instant::now();
    let mono = move || started.elapsed().as_millis() as u64;
    let admission = Arc::new(std::sync::Mutex::new(Admission::new(mono())));
    let mut reported_at = mono();
    // senders of the old format, and clocks apart, already named in the log
    let mut old_senders = std::collections::HashSet::new();
    let mut skewed = std::collections::HashSet::new();
    let (in_tx, mut in_rx) = mpsc::channel::<Input>(1024);

    // the receiving half: datagrams in, as bytes, on a thread of its own
    // blocked in recvmmsg — not on the runtime, where every datagram of a
    // flood would wake the reactor even while reading is paused
    let _receiving = {
        let socket = socket.clone();
        let in_tx = in_tx.clone();
        let admission = admission.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("gossip-recv".into())
            .spawn(move || receive(&socket, &in_tx, &admission, &stopping, mono));
        if let Err(e) = spawned {
            // the task ends: the loop starts it again after a backoff
            warn!(error = %e, "gossip: no thread to receive on");
            return;
        }
        StopOnDrop(stop)
    };
    let mut rates = Rates::default();
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(%addr, node = %cfg.node, seeds = cfg.seeds.len(), "gossip listening");
    flush(&mut driver, &socket, &mut sealer, &shared, &in_tx, now()).await;
    loop {
        // test builds only: FAILPOINTS=gossip-task-panic=1*panic(..)
        fail::fail_point!("gossip-task-panic");
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(ToNode::Local(local)) => driver.local(now(), local),
                Some(ToNode::Keys(ring)) => {
                    info!(keys = ring.len(), "gossip keys reloaded");
                    sealer.set_ring(ring.clone());
                    opener.set_ring(ring);
                }
                Some(ToNode::Stop) | None => {
                    driver.leave(now());
                    flush(&mut driver, &socket, &mut sealer, &shared, &in_tx, now()).await;
                    return;
                }
            },
            input = in_rx.recv() => match input {
                Some(Input::Data(bytes, from)) => {
                    let t = now();
                    let cluster_now = shared.lock().clock.now(t);
                    match opener.open(&bytes, cluster_now, |to| me.is_me(to)) {
                        Ok(Opened { payload, from: sender, sent, cluster }) => {
                            if let Ok(mut a) = admission.lock() {
                                a.opened(from, mono());
                            }
                            // the sender as the cluster knows it (authenticated)
                            let from = sender;
                            {
                                let mut i = shared.lock();
                                let moved = i.clock.observe(cluster, t);
                                if moved > crate::cluster::shared::CLOCK_WARN_MS {
                                    info!(%from, moved_ms = moved, lead_ms = i.clock.lead(), "cluster time follows a host whose clock is ahead of this one's");
                                }
                                i.counters.packets_received += 1;
                                i.counters.bytes_received += bytes.len() as u64;
                                i.last_packet.insert(from, t);
                                let skew = i.clock_ahead.entry(from).or_default();
                                skew.observe(sent, t);
                                let ahead = skew.ahead_ms().unwrap_or(0);
                                if ahead.abs() > crate::cluster::shared::CLOCK_WARN_MS
                                    && skewed.len() < 1024
                                    && skewed.insert(from)
                                {
                                    warn!(%from, ahead_ms = ahead, "this host's clock and another's are more than 1 s apart: cluster signals are still ordered and end together (cluster time), but the times each host logs and shows differ, and over 15 minutes apart gossip stops; run NTP (chrony, systemd-timesyncd) on every host");
                                }
                            }
                            if let Err(e) = driver.receive(t, from, &payload) {
                                // authentic but not understood: counted, nothing changes
                                debug!(error = %e, "gossip data refused");
                                count_drop(&shared, Drop::Malformed);
                            }
                        }
                        Err(why) => {
                            if why == Drop::OldFormat && old_senders.len() < 1024 && old_senders.insert(from) {
                                warn!(%from, "gossip from a host of virt-persona 0.2 or earlier (format VPG1) is refused: upgrade every host of the cluster to the same release");
                            }
                            count_drop(&shared, why)
                        }
                    }
                }
                Some(Input::Timer(t)) => driver.timer(now(), t),
                None => return,
            },
            _ = tick.tick() => {
                let t = now();
                driver.tick(t);
                let (limited, report) = match admission.lock() {
                    Ok(mut a) => {
                        let due = mono().saturating_sub(reported_at) >= 60_000;
                        (a.limited, if due { a.take_report() } else { Default::default() })
                    }
                    Err(_) => (0, Default::default()),
                };
                if !report.is_empty() {
                    reported_at = mono();
                    for (source, n) in report.iter().take(5) {
                        warn!(%source, dropped = n, "gossip datagrams dropped before opening: more than gossip sends (a flood, or a misconfigured host?)");
                    }
                    if report.len() > 5 {
                        warn!(sources = report.len() - 5, "gossip datagrams dropped from more sources");
                    }
                }
                let mut i = shared.lock();
                i.counters.dropped.insert(Drop::RateLimited.label(), limited);
                let c = &mut i.counters;
                c.bytes_per_second = rates.observe(t, c.bytes_sent, c.bytes_received);
            }
        }
        refresh_members(&driver, &shared, now());
        flush(&mut driver, &socket, &mut sealer, &shared, &in_tx, now()).await;
    }
}

fn count_drop(shared: &Shared, why: Drop) {
    *shared
        .lock()
        .counters
        .dropped
        .entry(why.label())
        .or_default() += 1;
}

fn refresh_members(driver: &Driver, shared: &Shared, now: Millis) {
    let mut i = shared.lock();
    i.counters.backlog = driver.backlog();
    let mut seen = std::collections::BTreeSet::new();
    for (addr, state) in driver.membership() {
        seen.insert(addr);
        let state = member_state(state);
        let e = i.members.entry(addr).or_insert(MemberView {
            addr: addr.to_string(),
            state,
            since: now,
        });
        if e.state != state {
            e.state = state;
            e.since = now;
        }
    }
    // removed by foca after long down: keep them as dead
    for (a, m) in i.members.iter_mut() {
        if !seen.contains(a) && m.state != "dead" {
            m.state = "dead";
            m.since = now;
        }
    }
    // and forgotten a day later, with everything they published
    for n in i.forget_dead(now, crate::cluster::shared::DEAD_HOST_RETENTION_MS) {
        info!(host = %n, "host dead for a day: forgotten, with its domains and signals");
    }
}

async fn flush(
    driver: &mut Driver,
    socket: &std::net::UdpSocket,
    sealer: &mut Sealer,
    shared: &Shared,
    in_tx: &mpsc::Sender<Input>,
    now: Millis,
) {
    let sends: Vec<(SocketAddr, Vec<u8>)> = driver.take_sends().collect();
    for (to, data) in sends {
        let cluster = shared.lock().clock.now(now);
        let packet = sealer.seal(&data, to, now, cluster);
        // never blocks: a full send buffer drops the datagram, as the
        // network may (gossip sends again)
        let sent = nix::sys::socket::sendto(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            &packet,
            &nix::sys::socket::SockaddrStorage::from(to),
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        )
        .map_err(std::io::Error::from);
        match sent {
            Ok(n) => {
                let mut i = shared.lock();
                i.counters.packets_sent += 1;
                i.counters.bytes_sent += n as u64;
            }
            Err(e) => debug!(%to, error = %e, "gossip send"),
        }
    }
    while let Some((after, timer)) = driver.take_timer() {
        let tx = in_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Input::Timer(timer)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_is_one_the_others_can_reach() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let lo = |_: SocketAddr| Some("127.0.0.1".parse().unwrap());
        let eth = |_: SocketAddr| Some("10.0.0.5".parse().unwrap());
        let none = |_: SocketAddr| None;
        // a wildcard listener: the route to the first seed
        assert_eq!(
            advertised_addr(a("0.0.0.0:7946"), None, &[a("10.0.0.9:7946")], eth),
            Ok(a("10.0.0.5:7946"))
        );
        assert_eq!(
            advertised_addr(a("0.0.0.0:7946"), None, &[a("127.0.0.1:7000")], lo),
            Ok(a("127.0.0.1:7946")),
            "seeds on loopback: loopback is right"
        );
        assert_eq!(
            advertised_addr(a("0.0.0.0:7946"), None, &[], eth),
            Ok(a("10.0.0.5:7946")),
            "no seed: the default route's source"
        );
        assert!(advertised_addr(a("0.0.0.0:7946"), None, &[], none)
            .unwrap_err()
            .contains("--gossip-advertise"));
        // given: used, its port defaulting to the listen port
        assert_eq!(
            advertised_addr(a("0.0.0.0:7946"), Some(a("10.1.1.1:0")), &[], none),
            Ok(a("10.1.1.1:7946"))
        );
        assert!(advertised_addr(a("0.0.0.0:7946"), Some(a("0.0.0.0:0")), &[], none).is_err());
        // a loopback address (a host name at Debian's 127.0.1.1) with a seed elsewhere
        let e = advertised_addr(a("127.0.1.1:7946"), None, &[a("10.0.0.9:7946")], eth).unwrap_err();
        assert!(e.contains("loopback") && e.contains("10.0.0.9"), "{e}");
        // a specific address: itself
        assert_eq!(
            advertised_addr(a("10.0.0.5:7946"), None, &[a("10.0.0.9:7946")], lo),
            Ok(a("10.0.0.5:7946"))
        );
    }
    #[test]
    fn a_datagram_is_for_this_host_at_its_own_addresses_only() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let local: Vec<std::net::IpAddr> =
            vec!["10.0.0.5".parse().unwrap(), "fe80::1".parse().unwrap()];
        // a specific listener: that address, or the advertised one (NAT)
        let bound = a("10.0.0.5:7946");
        assert!(is_local(a("10.0.0.5:7946"), bound, bound, &local));
        assert!(is_local(
            a("203.0.113.7:7946"),
            a("203.0.113.7:7946"),
            bound,
            &local
        ));
        assert!(
            !is_local(a("10.0.0.5:7947"), bound, bound, &local),
            "another port: another host"
        );
        assert!(!is_local(a("10.0.0.6:7946"), bound, bound, &local));
        // a wildcard listener: any of the host's addresses at its port
        let any = a("0.0.0.0:7946");
        let adv = a("10.0.0.5:7946");
        assert!(is_local(a("10.0.0.5:7946"), adv, any, &local));
        assert!(is_local(a("127.0.0.1:7946"), adv, any, &local));
        assert!(is_local(a("[::ffff:10.0.0.5]:7946"), adv, any, &local));
        assert!(
            !is_local(a("10.0.0.9:7946"), adv, any, &local),
            "another host"
        );
        assert!(
            !is_local(a("127.0.0.1:7000"), adv, any, &local),
            "another daemon here"
        );
    }

    use crate::cluster::state::{Body, DomainPub, Item, Manual, Part, SignalPub};

    /// The loop is woken for another host's signal and for a manually
    /// activated domain gone from another host; not for its own items,
    /// nothing new, or other changes.
    #[test]
    fn merging_wakes_the_loop_for_what_it_must_take_at_once() {
        let (tx, rx) = crossbeam_channel::bounded(8);
        let mut inner = Inner {
            me: "b".into(),
            wake: Some(tx),
            ..Default::default()
        };
        let signal = |node: &str, version| Item {
            node: node.into(),
            version,
            part: Part::Signal("lb.rps".into(), None),
            body: Body::Signal(SignalPub {
                value: 1.0,
                expires: 60_000,
                set_at: 1,
            }),
        };
        let domain = |running: bool, manual: bool, version| Item {
            node: "a".into(),
            version,
            part: Part::Domain("u1".into()),
            body: Body::Domain(DomainPub {
                name: "web-1".into(),
                running,
                persona: None,
                since: None,
                manual: manual.then(|| Manual {
                    persona: "boost".into(),
                    until: None,
                    id: 1,
                }),
                ended: vec![],
            }),
        };
        let woken = |rx: &crossbeam_channel::Receiver<()>| rx.try_iter().count();
        assert!(inner.merge(&signal("a", 1), 10));
        assert_eq!(woken(&rx), 1);
        assert!(!inner.merge(&signal("a", 1), 10), "nothing new");
        assert!(inner.merge(&signal("b", 1), 10));
        assert_eq!(woken(&rx), 0, "not for its own");
        assert!(inner.merge(&domain(true, true, 2), 10));
        assert_eq!(woken(&rx), 0, "still running there");
        assert!(inner.merge(&domain(false, false, 3), 10));
        assert_eq!(woken(&rx), 0, "gone, nothing to continue");
        assert!(inner.merge(&domain(false, true, 4), 10));
        assert_eq!(woken(&rx), 1, "gone with a manual activation");
    }

    #[test]
    fn rates_are_taken_over_the_last_ten_seconds() {
        let mut r = Rates::default();
        assert_eq!(r.observe(0, 0, 0), (0.0, 0.0), "one sample: no rate");
        assert_eq!(r.observe(1_000, 2_000, 500), (2_000.0, 500.0));
        // steady 1,000 B/s sent for a minute, then silence
        let mut sent = 2_000;
        for t in (2_000..=60_000).step_by(1_000) {
            sent += 1_000;
            let (s, _) = r.observe(t, sent, 500);
            assert!((s - 1_000.0).abs() < 1e-9 || t < 11_000, "{t}: {s}");
        }
        let (s, rx) = r.observe(65_000, sent, 500);
        assert!((s - 500.0).abs() < 1e-9, "half the window silent: {s}");
        assert_eq!(rx, 0.0);
        let (s, _) = r.observe(80_000, sent, 500);
        assert_eq!(s, 0.0, "a silent window");
    }
}
