//! Sealing gossip datagrams (SPEC §2, §10) — pure.
//!
//! Every datagram is ChaCha20-Poly1305 under the cluster's shared key, with
//! the cluster id bound as associated data, so a packet made under another
//! key or for another cluster does not open. The nonce is a random 4-byte
//! prefix chosen when the process starts and a 64-bit counter, so it never
//! repeats under a key. Replay protection: a packet carries its send time and
//! is refused outside a window of [`MAX_AGE_MS`]; within it, each sender
//! (nonce prefix) has a sliding window of the last 64 counters, so a packet
//! is accepted once.
//!
//! Key rotation without downtime: the key file holds one key per line (64
//! hex characters; `#` comments); the first seals, all open. Roll out a new
//! key in three steps: add it second on every host (reload), move it first
//! (reload), remove the old one (reload).
//!
//! Layout: `VPG2` | nonce (12) | sealed(time ms (8) | payload) | tag (16).
//! (`VPG1`, 0.2's format, is refused and counted: see [`OLD_MAGIC`].)

use std::collections::HashMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::time::Millis;

pub const MAGIC: &[u8; 4] = b"VPG2";
/// The format of 0.2 and earlier: its items do not decode the same (0.3
/// added the ids and ends of manual activations), so its packets are
/// refused, and counted as `old_format`, rather than misread.
pub const OLD_MAGIC: &[u8; 4] = b"VPG1";
const NONCE: usize = 12;
const TAG: usize = 16;
const TIME: usize = 8;
/// What sealing adds to a payload.
pub const OVERHEAD: usize = MAGIC.len() + NONCE + TIME + TAG;
/// The largest datagram accepted (and sent).
pub const MAX_DATAGRAM: usize = 1400;
/// A packet older (or further in the future) than this is refused.
pub const MAX_AGE_MS: Millis = 30_000;
/// Senders whose replay windows are kept (the oldest is forgotten past this).
pub const MAX_SENDERS: usize = 4096;

/// Why a datagram was dropped (each is counted in `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Drop {
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
    #[error("sent too long ago or in the future (clocks more than 30 s apart?)")]
    Stale,
    #[error("seen before (replayed)")]
    Replayed,
}

impl Drop {
    pub fn label(self) -> &'static str {
        match self {
            Drop::Oversized => "oversized",
            Drop::Truncated => "truncated",
            Drop::NotGossip => "not_gossip",
            Drop::OldFormat => "old_format",
            Drop::Unauthenticated => "unauthenticated",
            Drop::Stale => "stale",
            Drop::Replayed => "replayed",
        }
    }
    pub const ALL: [Drop; 7] = [
        Drop::Oversized,
        Drop::Truncated,
        Drop::NotGossip,
        Drop::OldFormat,
        Drop::Unauthenticated,
        Drop::Stale,
        Drop::Replayed,
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
    ciphers: Vec<ChaCha20Poly1305>,
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
                .map(|k| ChaCha20Poly1305::new(Key::from_slice(k)))
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

/// Seals outgoing datagrams for one process.
pub struct Sealer {
    ring: KeyRing,
    cluster: Vec<u8>,
    prefix: [u8; 4],
    counter: u64,
}

impl Sealer {
    /// `prefix` is random per process start (the nonces' sender part).
    pub fn new(ring: KeyRing, cluster: &str, prefix: [u8; 4]) -> Sealer {
        Sealer {
            ring,
            cluster: cluster.as_bytes().to_vec(),
            prefix,
            counter: 0,
        }
    }

    pub fn set_ring(&mut self, ring: KeyRing) {
        self.ring = ring;
    }

    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// The datagram for `payload`, sent at `now`.
    pub fn seal(&mut self, payload: &[u8], now: Millis) -> Vec<u8> {
        self.counter += 1;
        let mut nonce = [0u8; NONCE];
        nonce[..4].copy_from_slice(&self.prefix);
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        let mut plain = Vec::with_capacity(TIME + payload.len());
        plain.extend_from_slice(&now.to_be_bytes());
        plain.extend_from_slice(payload);
        let mut aad = Vec::with_capacity(self.cluster.len() + MAGIC.len() + NONCE);
        aad.extend_from_slice(&self.cluster);
        aad.extend_from_slice(MAGIC);
        aad.extend_from_slice(&nonce);
        let sealed = self.ring.ciphers[0]
            .encrypt(
                Nonce::from_slice(&nonce),
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

/// Opens incoming datagrams: authenticity, freshness, and once only.
pub struct Opener {
    ring: KeyRing,
    cluster: Vec<u8>,
    windows: HashMap<[u8; 4], Window>,
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

    /// The payload of a datagram received at `now`, or why it was dropped.
    pub fn open(&mut self, packet: &[u8], now: Millis) -> Result<Vec<u8>, Drop> {
        self.open_sent(packet, now).map(|(p, _)| p)
    }

    /// [`Opener::open`], with the time the sender's clock said it was sent:
    /// how far apart the two clocks are, give or take the trip.
    pub fn open_sent(&mut self, packet: &[u8], now: Millis) -> Result<(Vec<u8>, Millis), Drop> {
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
        let mut aad = Vec::with_capacity(self.cluster.len() + MAGIC.len() + NONCE);
        aad.extend_from_slice(&self.cluster);
        aad.extend_from_slice(MAGIC);
        aad.extend_from_slice(nonce);
        let plain = self
            .ring
            .ciphers
            .iter()
            .find_map(|c| {
                c.decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .ok()
            })
            .ok_or(Drop::Unauthenticated)?;
        if plain.len() < TIME {
            return Err(Drop::Truncated);
        }
        let mut t = [0u8; TIME];
        t.copy_from_slice(&plain[..TIME]);
        let sent = i64::from_be_bytes(t);
        if (now - sent).abs() > MAX_AGE_MS {
            return Err(Drop::Stale);
        }
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&nonce[..4]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&nonce[4..]);
        let counter = u64::from_be_bytes(c);
        if !self.windows.contains_key(&prefix) && self.windows.len() >= MAX_SENDERS {
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
        let w = self.windows.entry(prefix).or_default();
        if !w.accept(counter) {
            return Err(Drop::Replayed);
        }
        w.last_used = now;
        Ok((plain[TIME..].to_vec(), sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Millis = 1_800_000_000_000;

    fn ring(b: u8) -> KeyRing {
        KeyRing::new(&[[b; 32]])
    }

    #[test]
    fn a_sealed_packet_opens_once_under_the_same_key_and_cluster_only() {
        let mut s = Sealer::new(ring(1), "prod", [9, 9, 9, 9]);
        let p = s.seal(b"hello", T);
        assert_eq!(p.len(), 5 + OVERHEAD);
        let mut o = Opener::new(ring(1), "prod");
        assert_eq!(o.open(&p, T + 5).unwrap(), b"hello");
        assert_eq!(o.open(&p, T + 6), Err(Drop::Replayed));
        assert_eq!(
            Opener::new(ring(2), "prod").open(&p, T),
            Err(Drop::Unauthenticated)
        );
        assert_eq!(
            Opener::new(ring(1), "test").open(&p, T),
            Err(Drop::Unauthenticated)
        );
        assert_eq!(
            Opener::new(ring(1), "prod").open(&p, T + 31_000),
            Err(Drop::Stale)
        );
        assert_eq!(
            Opener::new(ring(1), "prod").open(&p, T - 31_000),
            Err(Drop::Stale)
        );
        // any flipped bit is caught
        for i in 0..p.len() {
            let mut f = p.clone();
            f[i] ^= 0x40;
            assert!(
                Opener::new(ring(1), "prod").open(&f, T).is_err(),
                "byte {i}"
            );
        }
        assert_eq!(o.open(&p[..10], T), Err(Drop::Truncated));
        assert_eq!(
            o.open(b"GET / HTTP/1.1\r\n\r\n and then some more bytes", T),
            Err(Drop::NotGossip)
        );
        assert_eq!(o.open(&vec![0u8; 2000], T), Err(Drop::Oversized));
        // a packet of 0.2's format is named, not misread
        let mut old = p.clone();
        old[..4].copy_from_slice(OLD_MAGIC);
        assert_eq!(o.open(&old, T), Err(Drop::OldFormat));
    }

    #[test]
    fn rotation_every_key_opens_the_first_seals() {
        let old = [1u8; 32];
        let new = [2u8; 32];
        let mut on_old = Sealer::new(KeyRing::new(&[old]), "c", [1, 0, 0, 0]);
        let mut on_both = Sealer::new(KeyRing::new(&[new, old]), "c", [2, 0, 0, 0]);
        let mut o = Opener::new(KeyRing::new(&[old, new]), "c");
        assert!(o.open(&on_old.seal(b"a", T), T).is_ok());
        assert!(o.open(&on_both.seal(b"b", T), T).is_ok());
        // a host that dropped the old key no longer hears the old one
        let mut only_new = Opener::new(KeyRing::new(&[new]), "c");
        assert_eq!(
            only_new.open(&on_old.seal(b"c", T), T),
            Err(Drop::Unauthenticated)
        );
    }

    #[test]
    fn the_replay_window_accepts_reordering_and_refuses_repeats() {
        let mut s = Sealer::new(ring(1), "c", [1, 2, 3, 4]);
        let ps: Vec<Vec<u8>> = (0..100).map(|i| s.seal(&[i as u8], T)).collect();
        let mut o = Opener::new(ring(1), "c");
        // late ones within 64 are fine once; further back is refused
        for i in [5usize, 3, 4, 99, 50, 40] {
            assert!(o.open(&ps[i], T).is_ok(), "{i}");
        }
        assert_eq!(o.open(&ps[4], T), Err(Drop::Replayed));
        assert_eq!(
            o.open(&ps[6], T),
            Err(Drop::Replayed),
            "more than 64 behind"
        );
        assert!(o.open(&ps[98], T).is_ok());
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
