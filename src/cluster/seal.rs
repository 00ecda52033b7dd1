//! Sealing gossip datagrams (SPEC §2, §10) — pure.
//!
//! Every datagram is XChaCha20-Poly1305 under the cluster's shared key with a
//! random 192-bit nonce, and the cluster id bound as associated data, so a
//! packet made under another key or for another cluster does not open, and
//! no number of hosts, restarts or packets under one key makes a nonce
//! repeat with any likelihood (0.2 and the first 0.3 builds used a random
//! 32-bit prefix and a counter: over 10⁵ restarts a repeat was likely).
//!
//! Inside the seal each packet names its sender (the address it is known by
//! in the cluster and a random 64-bit id of the process), its receiver (the
//! address it was sent to), a per-process counter, the send time on the
//! sender's clock (how far apart clocks are is measured from it) and in
//! cluster time ([`crate::cluster::clock`]). Replay protection: a packet is
//! refused by every host it was not sealed for ([`Drop::WrongReceiver`]),
//! further than [`MAX_SKEW_MS`] from the receiver's cluster time, and
//! within it more than once: each sender identity (address and process id)
//! has a sliding window of its last 64 counters. (A host restarted since a
//! packet for it was captured has no window for its sender yet: such a
//! replay, within those 15 minutes, opens once — its old items are older
//! than what the host hears since, and foca's messages carry incarnations.)
//!
//! Key rotation without downtime: the key file holds one key per line (64
//! hex characters; `#` comments); the first seals, all open. Roll out a new
//! key in three steps: add it second on every host (reload), move it first
//! (reload), remove the old one (reload).
//!
//! Layout: `VPG2` | nonce (24) | sealed(from (19) | to (19) | process (8) |
//! counter (8) | sent ms (8) | cluster time ms (8) | payload) | tag (16); an
//! address is its family
//! (4 or 6), 16 bytes of IP (an IPv4 address in the first 4) and the port.
//! (`VPG1`, 0.2's format, is refused and counted: see [`OLD_MAGIC`].)

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

pub use crate::cluster::clock::MAX_SKEW_MS;
use crate::time::Millis;

pub const MAGIC: &[u8; 4] = b"VPG2";
/// The format of 0.2 and earlier: its items do not decode the same (0.3
/// added the ids and ends of manual activations) and its seal is another,
/// so its packets are refused, and counted as `old_format`, rather than
/// misread.
pub const OLD_MAGIC: &[u8; 4] = b"VPG1";
const NONCE: usize = 24;
const TAG: usize = 16;
const ADDR: usize = 19;
/// from, to, process id, counter, send time, cluster time.
const HEADER: usize = 2 * ADDR + 8 * 4;
/// What sealing adds to a payload.
pub const OVERHEAD: usize = MAGIC.len() + NONCE + HEADER + TAG;
/// The largest datagram accepted (and sent).
pub const MAX_DATAGRAM: usize = 1400;
/// Senders whose replay windows are kept (the oldest is forgotten past this).
pub const MAX_SENDERS: usize = 4096;

/// Why a datagram was dropped (each is counted in `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Drop {
    #[error("more datagrams from its source than gossip needs (rate limited before opening)")]
    RateLimited,
    #[error("larger than {MAX_DATAGRAM} bytes")]
    Oversized,
    #[error("shorter than a sealed packet")]
    Truncated,
    #[error("not a virt-persona gossip packet")]
    NotGossip,
    #[error("sent by virt-persona 0.2 or earlier (gossip format VPG1): upgrade every host of the cluster to the same release")]
    OldFormat,
    #[error("does not open under any key of this cluster (another key or cluster id, or forged)")]
    Unauthenticated,
    #[error("sent too long ago or in the future (cluster time more than 15 minutes apart: a host's clock that far off?)")]
    Stale,
    #[error("sealed for another host (replayed or misdirected)")]
    WrongReceiver,
    #[error("authentic but not understood (a sender's bug, or a leaked key)")]
    Malformed,
    #[error("seen before (replayed)")]
    Replayed,
}

impl Drop {
    pub fn label(self) -> &'static str {
        match self {
            Drop::RateLimited => "rate_limited",
            Drop::Oversized => "oversized",
            Drop::Truncated => "truncated",
            Drop::NotGossip => "not_gossip",
            Drop::OldFormat => "old_format",
            Drop::Unauthenticated => "unauthenticated",
            Drop::Stale => "stale",
            Drop::WrongReceiver => "wrong_receiver",
            Drop::Malformed => "malformed",
            Drop::Replayed => "replayed",
        }
    }
    pub const ALL: [Drop; 10] = [
        Drop::RateLimited,
        Drop::Oversized,
        Drop::Truncated,
        Drop::NotGossip,
        Drop::OldFormat,
        Drop::Unauthenticated,
        Drop::Stale,
        Drop::WrongReceiver,
        Drop::Replayed,
        Drop::Malformed,
    ];
}

/// Why a key file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("line {line}: expected 64 hex characters (a 32-byte key), found {found} character(s)")]
    Length { line: usize, found: usize },
    #[error("line {line}: not hexadecimal")]
    NotHex { line: usize },
    #[error("no key in the file (one key per line, 64 hex characters; the first one seals)")]
    Empty,
    #[error("line {line}: the same key is listed twice")]
    Duplicate { line: usize },
}

/// The cluster's keys: the first seals, every one opens.
#[derive(Clone)]
pub struct KeyRing {
    ciphers: Vec<XChaCha20Poly1305>,
    ids: Vec<[u8; 4]>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the keys themselves
        write!(f, "KeyRing({} keys)", self.ciphers.len())
    }
}

fn hex32(s: &str, line: usize) -> Result<[u8; 32], KeyError> {
    if s.len() != 64 {
        return Err(KeyError::Length {
            line,
            found: s.chars().count(),
        });
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(
            s.get(2 * i..2 * i + 2).ok_or(KeyError::NotHex { line })?,
            16,
        )
        .map_err(|_| KeyError::NotHex { line })?;
    }
    Ok(out)
}

impl KeyRing {
    /// Reads a key file's text: one key per line, `#` starts a comment.
    pub fn parse(text: &str) -> Result<KeyRing, KeyError> {
        let mut keys: Vec<[u8; 32]> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let k = hex32(line, i + 1)?;
            if keys.contains(&k) {
                return Err(KeyError::Duplicate { line: i + 1 });
            }
            keys.push(k);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(KeyRing::new(&keys))
    }

    pub fn new(keys: &[[u8; 32]]) -> KeyRing {
        KeyRing {
            ciphers: keys
                .iter()
                .map(|k| XChaCha20Poly1305::new(Key::from_slice(k)))
                .collect(),
            ids: keys.iter().map(key_id).collect(),
        }
    }

    /// Short public ids of the keys (for logs and `cluster-status`): the
    /// first 4 bytes of a hash of each, never the key.
    pub fn ids(&self) -> Vec<String> {
        self.ids
            .iter()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.ciphers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ciphers.is_empty()
    }
}

/// A key's public id: 4 bytes of a keyed-free mixing of it (FNV-1a 32).
fn key_id(k: &[u8; 32]) -> [u8; 4] {
    let mut h: u32 = 0x811c9dc5;
    for b in b"virt-persona key id".iter().chain(k.iter()) {
        h ^= *b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h.to_be_bytes()
}

/// Formats a new key as a key file line.
pub fn key_line(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// An address as a host is named in the seal: an IPv4-mapped IPv6 address
/// (how a dual-stack socket reports IPv4 peers) is its IPv4 address, and an
/// IPv6 scope or flow label is not part of it.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => SocketAddr::new(IpAddr::V6(v6), a.port()),
        },
        IpAddr::V4(_) => a,
    }
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let a = canonical(a);
    let mut ip = [0u8; 16];
    let family = match a.ip() {
        IpAddr::V4(v4) => {
            ip[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            ip = v6.octets();
            6
        }
    };
    out.push(family);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn get_addr(b: &[u8]) -> Option<SocketAddr> {
    if b.len() != ADDR {
        return None;
    }
    let port = u16::from_be_bytes([b[17], b[18]]);
    let ip: IpAddr = match b[0] {
        4 if b[5..17].iter().all(|&x| x == 0) => Ipv4Addr::new(b[1], b[2], b[3], b[4]).into(),
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[1..17]);
            Ipv6Addr::from(o).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn be64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

fn associated(cluster: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(cluster.len() + MAGIC.len() + NONCE);
    aad.extend_from_slice(cluster);
    aad.extend_from_slice(MAGIC);
    aad.extend_from_slice(nonce);
    aad
}

/// Seals outgoing datagrams for one process.
pub struct Sealer {
    ring: KeyRing,
    cluster: Vec<u8>,
    from: SocketAddr,
    process: u64,
    counter: u64,
}

impl Sealer {
    /// `from` is the address this host is known by in the cluster,
    /// `process` random per process start (with `from`, the sender identity
    /// receivers keep replay windows for).
    pub fn new(ring: KeyRing, cluster: &str, from: SocketAddr, process: u64) -> Sealer {
        Sealer {
            ring,
            cluster: cluster.as_bytes().to_vec(),
            from,
            process,
            counter: 0,
        }
    }

    pub fn set_ring(&mut self, ring: KeyRing) {
        self.ring = ring;
    }

    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// The datagram for `payload`, sealed for the host at `to`, sent when
    /// this host's clock says `now` and cluster time is `cluster`.
    pub fn seal(
        &mut self,
        payload: &[u8],
        to: SocketAddr,
        now: Millis,
        cluster: Millis,
    ) -> Vec<u8> {
        self.counter += 1;
        // 192 random bits from a CSPRNG (ThreadRng, reseeded from the OS):
        // a repeat is out of reach however many hosts, restarts and packets
        let nonce: [u8; NONCE] = rand::random();
        let mut plain = Vec::with_capacity(HEADER + payload.len());
        put_addr(&mut plain, self.from);
        put_addr(&mut plain, to);
        plain.extend_from_slice(&self.process.to_be_bytes());
        plain.extend_from_slice(&self.counter.to_be_bytes());
        plain.extend_from_slice(&now.to_be_bytes());
        plain.extend_from_slice(&cluster.to_be_bytes());
        plain.extend_from_slice(payload);
        let aad = associated(&self.cluster, &nonce);
        let sealed = self.ring.ciphers[0]
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }
}

/// The last 64 counters seen from one sender.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    highest: u64,
    seen: u64,
    last_used: Millis,
}

impl Window {
    /// Accepts a counter once.
    fn accept(&mut self, c: u64) -> bool {
        if c > self.highest {
            let shift = c - self.highest;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = c;
            true
        } else {
            let back = self.highest - c;
            if back >= 64 || self.seen & (1 << back) != 0 {
                false
            } else {
                self.seen |= 1 << back;
                true
            }
        }
    }
}

/// An opened datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub payload: Vec<u8>,
    /// The address its sender is known by in the cluster (authenticated).
    pub from: SocketAddr,
    /// When the sender's clock says it was sent.
    pub sent: Millis,
    /// The sender's cluster time then.
    pub cluster: Millis,
}

/// Opens incoming datagrams: authenticity, freshness, for this host, and
/// once only.
pub struct Opener {
    ring: KeyRing,
    cluster: Vec<u8>,
    windows: HashMap<(SocketAddr, u64), Window>,
}

impl Opener {
    pub fn new(ring: KeyRing, cluster: &str) -> Opener {
        Opener {
            ring,
            cluster: cluster.as_bytes().to_vec(),
            windows: HashMap::new(),
        }
    }

    pub fn set_ring(&mut self, ring: KeyRing) {
        self.ring = ring;
    }

    /// The datagram received when cluster time is `now`, or why it was
    /// dropped. `is_me` says whether an address the packet was sealed for is
    /// this host's.
    pub fn open(
        &mut self,
        packet: &[u8],
        now: Millis,
        is_me: impl FnOnce(SocketAddr) -> bool,
    ) -> Result<Opened, Drop> {
        if packet.len() > MAX_DATAGRAM {
            return Err(Drop::Oversized);
        }
        if packet.starts_with(OLD_MAGIC) {
            return Err(Drop::OldFormat);
        }
        if packet.len() < OVERHEAD {
            return Err(if packet.starts_with(MAGIC) || packet.len() < MAGIC.len() {
                Drop::Truncated
            } else {
                Drop::NotGossip
            });
        }
        if &packet[..MAGIC.len()] != MAGIC {
            return Err(Drop::NotGossip);
        }
        let nonce = &packet[MAGIC.len()..MAGIC.len() + NONCE];
        let sealed = &packet[MAGIC.len() + NONCE..];
        let aad = associated(&self.cluster, nonce);
        let plain = self
            .ring
            .ciphers
            .iter()
            .find_map(|c| {
                c.decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .ok()
            })
            .ok_or(Drop::Unauthenticated)?;
        if plain.len() < HEADER {
            return Err(Drop::Malformed);
        }
        let (Some(from), Some(to)) = (get_addr(&plain[..ADDR]), get_addr(&plain[ADDR..2 * ADDR]))
        else {
            return Err(Drop::Malformed);
        };
        let process = be64(&plain[2 * ADDR..]);
        let counter = be64(&plain[2 * ADDR + 8..]);
        let sent = be64(&plain[2 * ADDR + 16..]) as i64;
        let cluster = be64(&plain[2 * ADDR + 24..]) as i64;
        if now.saturating_sub(cluster).saturating_abs() > MAX_SKEW_MS {
            return Err(Drop::Stale);
        }
        if !is_me(to) {
            return Err(Drop::WrongReceiver);
        }
        let sender = (from, process);
        if !self.windows.contains_key(&sender) && self.windows.len() >= MAX_SENDERS {
            // forget the sender heard from longest ago; its old packets are
            // stale by time before long anyway
            if let Some(oldest) = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.last_used)
                .map(|(k, _)| *k)
            {
                self.windows.remove(&oldest);
            }
        }
        let w = self.windows.entry(sender).or_default();
        if !w.accept(counter) {
            return Err(Drop::Replayed);
        }
        w.last_used = now;
        Ok(Opened {
            payload: plain[HEADER..].to_vec(),
            from,
            sent,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Millis = 1_800_000_000_000;

    fn ring(b: u8) -> KeyRing {
        KeyRing::new(&[[b; 32]])
    }
    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    const A: &str = "10.0.0.1:7946";
    const B: &str = "10.0.0.2:7946";
    const C: &str = "10.0.0.3:7946";
    fn at(me: &'static str) -> impl Fn(SocketAddr) -> bool {
        move |to| to == a(me)
    }

    #[test]
    fn a_sealed_packet_opens_once_under_the_same_key_and_cluster_only() {
        let mut s = Sealer::new(ring(1), "prod", a(A), 9);
        let p = s.seal(b"hello", a(B), T, T);
        assert_eq!(p.len(), 5 + OVERHEAD);
        let mut o = Opener::new(ring(1), "prod");
        let opened = o.open(&p, T + 5, at(B)).unwrap();
        assert_eq!(opened.payload, b"hello");
        assert_eq!((opened.from, opened.sent, opened.cluster), (a(A), T, T));
        assert_eq!(o.open(&p, T + 6, at(B)), Err(Drop::Replayed));
        assert_eq!(
            Opener::new(ring(2), "prod").open(&p, T, at(B)),
            Err(Drop::Unauthenticated)
        );
        assert_eq!(
            Opener::new(ring(1), "test").open(&p, T, at(B)),
            Err(Drop::Unauthenticated)
        );
        assert_eq!(
            Opener::new(ring(1), "prod").open(&p, T + MAX_SKEW_MS + 1, at(B)),
            Err(Drop::Stale)
        );
        assert_eq!(
            Opener::new(ring(1), "prod").open(&p, T - MAX_SKEW_MS - 1, at(B)),
            Err(Drop::Stale)
        );
        // any flipped bit is caught
        for i in 0..p.len() {
            let mut f = p.clone();
            f[i] ^= 0x40;
            assert!(
                Opener::new(ring(1), "prod").open(&f, T, at(B)).is_err(),
                "byte {i}"
            );
        }
        assert_eq!(o.open(&p[..10], T, at(B)), Err(Drop::Truncated));
        assert_eq!(
            o.open(
                &b"GET / HTTP/1.1\r\n\r\n and then some more bytes".repeat(4),
                T,
                at(B)
            ),
            Err(Drop::NotGossip)
        );
        assert_eq!(o.open(&[0u8; 2000], T, at(B)), Err(Drop::Oversized));
        // a packet of 0.2's format is named, not misread
        let mut old = p.clone();
        old[..4].copy_from_slice(OLD_MAGIC);
        assert_eq!(o.open(&old, T, at(B)), Err(Drop::OldFormat));
    }

    /// A datagram from A to B, captured and replayed at C or at A itself,
    /// is refused there, even by a host that never saw it.
    #[test]
    fn a_packet_opens_only_at_the_host_it_was_sealed_for() {
        let mut s = Sealer::new(ring(1), "prod", a(A), 1);
        let p = s.seal(b"for b", a(B), T, T);
        for me in [C, A] {
            assert_eq!(
                Opener::new(ring(1), "prod").open(&p, T, at(me)),
                Err(Drop::WrongReceiver),
                "{me}"
            );
        }
        // another port on the same address is another host
        assert_eq!(
            Opener::new(ring(1), "prod").open(&p, T, at("10.0.0.2:7947")),
            Err(Drop::WrongReceiver)
        );
        assert!(Opener::new(ring(1), "prod").open(&p, T, at(B)).is_ok());
        // a dual-stack socket's view of an IPv4 peer is the same address
        let p = s.seal(b"v6", a("[::ffff:10.0.0.2]:7946"), T, T);
        assert!(Opener::new(ring(1), "prod").open(&p, T, at(B)).is_ok());
        let p = s.seal(b"v6", a("[2001:db8::2]:7946"), T, T);
        let opened = Opener::new(ring(1), "prod")
            .open(&p, T, |to| to == a("[2001:db8::2]:7946"))
            .unwrap();
        assert_eq!(opened.payload, b"v6");
    }

    /// Windows are kept per sender identity: a restarted sender (a new
    /// process id, its counter from 1 again) is heard at once, and two
    /// hosts' counters never collide.
    #[test]
    fn replay_windows_are_kept_per_sender_identity() {
        let mut o = Opener::new(ring(1), "c");
        let mut first = Sealer::new(ring(1), "c", a(A), 1);
        let mut again = Sealer::new(ring(1), "c", a(A), 2);
        let mut other = Sealer::new(ring(1), "c", a(C), 1);
        for _ in 0..3 {
            assert!(o.open(&first.seal(b"x", a(B), T, T), T, at(B)).is_ok());
        }
        let p = again.seal(b"after a restart", a(B), T, T);
        assert!(o.open(&p, T, at(B)).is_ok(), "counter 1 of a new process");
        assert!(o.open(&other.seal(b"y", a(B), T, T), T, at(B)).is_ok());
        assert_eq!(o.open(&p, T, at(B)), Err(Drop::Replayed));
    }

    /// Nonces are random 192-bit values: none repeats over many packets
    /// from many "restarted" senders under one key.
    #[test]
    fn nonces_do_not_repeat_across_restarts() {
        let mut seen = std::collections::HashSet::new();
        for process in 0..200u64 {
            // every restart: a new process, its counter from 1 again
            let mut s = Sealer::new(ring(1), "c", a(A), process % 2);
            for _ in 0..50 {
                let p = s.seal(b"n", a(B), T, T);
                assert!(seen.insert(p[4..4 + NONCE].to_vec()), "a nonce repeated");
            }
        }
    }

    #[test]
    fn an_authentic_packet_with_a_bad_header_is_malformed() {
        // what only a key holder could make: an unknown address family
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&[1u8; 32]));
        let nonce = [7u8; NONCE];
        let mut plain = vec![9u8; HEADER + 3];
        plain[ADDR] = 4;
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &associated(b"c", &nonce),
                },
            )
            .unwrap();
        let mut p = MAGIC.to_vec();
        p.extend_from_slice(&nonce);
        p.extend_from_slice(&sealed);
        assert_eq!(
            Opener::new(ring(1), "c").open(&p, T, |_| true),
            Err(Drop::Malformed)
        );
    }

    #[test]
    fn rotation_every_key_opens_the_first_seals() {
        let old = [1u8; 32];
        let new = [2u8; 32];
        let mut on_old = Sealer::new(KeyRing::new(&[old]), "c", a(A), 1);
        let mut on_both = Sealer::new(KeyRing::new(&[new, old]), "c", a(C), 2);
        let mut o = Opener::new(KeyRing::new(&[old, new]), "c");
        assert!(o.open(&on_old.seal(b"a", a(B), T, T), T, at(B)).is_ok());
        assert!(o.open(&on_both.seal(b"b", a(B), T, T), T, at(B)).is_ok());
        // a host that dropped the old key no longer hears the old one
        let mut only_new = Opener::new(KeyRing::new(&[new]), "c");
        assert_eq!(
            only_new.open(&on_old.seal(b"c", a(B), T, T), T, at(B)),
            Err(Drop::Unauthenticated)
        );
    }

    #[test]
    fn the_replay_window_accepts_reordering_and_refuses_repeats() {
        let mut s = Sealer::new(ring(1), "c", a(A), 4);
        let ps: Vec<Vec<u8>> = (0..100).map(|i| s.seal(&[i as u8], a(B), T, T)).collect();
        let mut o = Opener::new(ring(1), "c");
        // late ones within 64 are fine once; further back is refused
        for i in [5usize, 3, 4, 99, 50, 40] {
            assert!(o.open(&ps[i], T, at(B)).is_ok(), "{i}");
        }
        assert_eq!(o.open(&ps[4], T, at(B)), Err(Drop::Replayed));
        assert_eq!(
            o.open(&ps[6], T, at(B)),
            Err(Drop::Replayed),
            "more than 64 behind"
        );
        assert!(o.open(&ps[98], T, at(B)).is_ok());
    }

    #[test]
    fn key_files_are_checked_line_by_line() {
        let k = key_line(&[0xab; 32]);
        let r = KeyRing::parse(&format!(
            "# primary\n{k}\n\n{}  # old\n",
            key_line(&[1; 32])
        ))
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.ids().len(), 2);
        assert_eq!(KeyRing::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(
            KeyRing::parse("abcd\n").unwrap_err(),
            KeyError::Length { line: 1, found: 4 }
        );
        assert_eq!(
            KeyRing::parse(&"zz".repeat(32)).unwrap_err(),
            KeyError::NotHex { line: 1 }
        );
        assert_eq!(
            KeyRing::parse(&format!("{k}\n{k}\n")).unwrap_err(),
            KeyError::Duplicate { line: 2 }
        );
        assert!(!format!("{r:?}").contains("abab"), "never prints a key");
    }
}
