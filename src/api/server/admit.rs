//! Who gets a connection slot. A new connection is *pending* until one of its
//! requests is admitted (on TCP: carries the bearer token; on the unix socket,
//! whose mode already decides who may connect: any complete request). Pending
//! connections live in a small pool of their own, have
//! [`PENDING_DEADLINE`] to be admitted, and never take a slot of the main
//! pool, so connections that send nothing, half a request line or a wrong
//! token cannot lock out a client that has the token.
//!
//! The pending pool never refuses a connection: when a source (an IP address,
//! or a uid on the unix socket) already holds [`PENDING_PER_SOURCE`] pending
//! connections, its oldest is closed; when the pool is full, the oldest of the
//! source that holds the most is. A client that sends its request at once is
//! admitted long before a flood from its own address could reach it in the
//! queue, and a flood from one address never closes another's.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a new connection has to send a request that is admitted.
pub const PENDING_DEADLINE: Duration = Duration::from_secs(2);
/// Pending connections per listener.
pub const PENDING_CONNECTIONS: usize = 1024;
/// Pending connections of one source address (or uid) per listener.
pub const PENDING_PER_SOURCE: usize = 512;

/// Where a connection comes from: what the per-source cap counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Ip(std::net::IpAddr),
    Uid(u32),
    Unknown,
}

const PENDING: u8 = 0;
const ADMITTED: u8 = 1;
const CLOSED: u8 = 2;

/// One connection's standing, shared by its task and its requests.
pub struct Conn {
    id: u64,
    /// When it was accepted: the deadline counts from here.
    born: tokio::time::Instant,
    source: Source,
    state: AtomicU8,
    /// Wakes the connection's task: admitted, or closed to make room.
    changed: Notify,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    pools: Arc<Pools>,
}

/// Why a request could not be admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The main pool is full.
    Full(usize),
    /// The connection was closed to make room before its request came.
    Closed,
}

impl Conn {
    /// Moves the connection to the main pool (once; later calls are no-ops).
    pub fn admit(&self) -> Result<(), Refused> {
        let mut pending = self.pools.lock();
        match self.state.load(Ordering::Acquire) {
            ADMITTED => return Ok(()),
            CLOSED => return Err(Refused::Closed),
            _ => {}
        }
        let Ok(permit) = self.pools.main.clone().try_acquire_owned() else {
            return Err(Refused::Full(self.pools.main_size));
        };
        pending.remove(&self.source, self.id);
        self.state.store(ADMITTED, Ordering::Release);
        *self.permit.lock().unwrap_or_else(|p| p.into_inner()) = Some(permit);
        drop(pending);
        self.changed.notify_one();
        Ok(())
    }

    pub fn is_admitted(&self) -> bool {
        self.state.load(Ordering::Acquire) == ADMITTED
    }

    /// Waits until the connection is admitted (true) or is to be closed:
    /// made room for, or not admitted within [`PENDING_DEADLINE`] of its
    /// accept (false). The TLS handshake counts in that time.
    pub async fn admitted_in_time(&self) -> bool {
        let deadline = self.born + self.pools.deadline;
        loop {
            match self.state.load(Ordering::Acquire) {
                ADMITTED => return true,
                CLOSED => return false,
                _ => {}
            }
            if tokio::time::timeout_at(deadline, self.changed.notified())
                .await
                .is_err()
            {
                // admitted at the last moment counts; otherwise it is closed
                let mut pending = self.pools.lock();
                if self.state.load(Ordering::Acquire) == ADMITTED {
                    return true;
                }
                pending.remove(&self.source, self.id);
                self.state.store(CLOSED, Ordering::Release);
                return false;
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.state.load(Ordering::Acquire) == PENDING {
            self.pools.lock().remove(&self.source, self.id);
        }
    }
}

#[derive(Default)]
struct Pending {
    next_id: u64,
    total: usize,
    by_source: HashMap<Source, VecDeque<(u64, std::sync::Weak<Conn>)>>,
}

impl Pending {
    fn remove(&mut self, source: &Source, id: u64) {
        if let Some(q) = self.by_source.get_mut(source) {
            if let Some(i) = q.iter().position(|(n, _)| *n == id) {
                q.remove(i);
                self.total -= 1;
            }
            if q.is_empty() {
                self.by_source.remove(source);
            }
        }
    }
    /// Closes the oldest pending connection of `source`.
    fn close_oldest(&mut self, source: &Source) {
        let Some(q) = self.by_source.get_mut(source) else {
            return;
        };
        if let Some((_, conn)) = q.pop_front() {
            self.total -= 1;
            if let Some(c) = conn.upgrade() {
                c.state.store(CLOSED, Ordering::Release);
                c.changed.notify_one();
            }
        }
        if q.is_empty() {
            self.by_source.remove(source);
        }
    }
}

/// The pools of one listener.
pub struct Pools {
    pending: Mutex<Pending>,
    main: Arc<Semaphore>,
    main_size: usize,
    pending_size: usize,
    per_source: usize,
    deadline: Duration,
    closed_for_room: std::sync::atomic::AtomicU64,
}

impl Pools {
    pub fn new(main: usize) -> Arc<Pools> {
        Self::with_limits(
            main,
            PENDING_CONNECTIONS,
            PENDING_PER_SOURCE,
            PENDING_DEADLINE,
        )
    }

    pub fn with_limits(
        main: usize,
        pending: usize,
        per_source: usize,
        deadline: Duration,
    ) -> Arc<Pools> {
        Arc::new(Pools {
            pending: Mutex::default(),
            main: Arc::new(Semaphore::new(main)),
            main_size: main,
            pending_size: pending.max(1),
            per_source: per_source.clamp(1, pending.max(1)),
            deadline,
            closed_for_room: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection, pending; makes room first if it must.
    pub fn accept(self: &Arc<Self>, source: Source) -> Arc<Conn> {
        let mut p = self.lock();
        let held = p.by_source.get(&source).map_or(0, VecDeque::len);
        if held >= self.per_source {
            p.close_oldest(&source);
            self.closed_for_room.fetch_add(1, Ordering::Relaxed);
        } else if p.total >= self.pending_size {
            let most = p
                .by_source
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(s, _)| s.clone());
            if let Some(most) = most {
                p.close_oldest(&most);
                self.closed_for_room.fetch_add(1, Ordering::Relaxed);
            }
        }
        p.next_id += 1;
        let conn = Arc::new(Conn {
            id: p.next_id,
            born: tokio::time::Instant::now(),
            source: source.clone(),
            state: AtomicU8::new(PENDING),
            changed: Notify::new(),
            permit: Mutex::new(None),
            pools: self.clone(),
        });
        p.by_source
            .entry(source)
            .or_default()
            .push_back((conn.id, Arc::downgrade(&conn)));
        p.total += 1;
        conn
    }

    /// Connections pending now.
    pub fn pending(&self) -> usize {
        self.lock().total
    }

    /// Admitted connections open now.
    pub fn admitted(&self) -> usize {
        self.main_size - self.main.available_permits()
    }

    /// Pending connections closed to make room for newer ones, ever.
    pub fn closed_for_room(&self) -> u64 {
        self.closed_for_room.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Source {
        Source::Ip(std::net::IpAddr::from([10, 0, 0, n]))
    }

    #[tokio::test]
    async fn a_flood_from_one_source_closes_its_own_oldest_first() {
        let pools = Pools::with_limits(2, 4, 3, Duration::from_secs(60));
        let other = pools.accept(ip(2));
        let flood: Vec<_> = (0..3).map(|_| pools.accept(ip(1))).collect();
        assert_eq!(pools.pending(), 4);
        // a fourth from the flood: its own oldest goes, not the other source's
        let newest = pools.accept(ip(1));
        assert!(!flood[0].admitted_in_time().await, "closed for room");
        assert_eq!(flood[0].admit(), Err(Refused::Closed));
        assert_eq!(pools.pending(), 4);
        // the pool is full and a new source comes: the biggest source pays
        let third = pools.accept(ip(3));
        assert_eq!(flood[1].admit(), Err(Refused::Closed));
        assert_eq!(pools.pending(), 4);
        assert_eq!(pools.closed_for_room(), 2);
        // admitted connections leave the pending pool for the main one
        other.admit().unwrap();
        third.admit().unwrap();
        assert!(other.admitted_in_time().await);
        assert_eq!((pools.pending(), pools.admitted()), (2, 2));
        assert_eq!(newest.admit(), Err(Refused::Full(2)), "main pool full");
        assert!(!newest.is_admitted());
        drop(other);
        assert_eq!(
            pools.admitted(),
            1,
            "a slot comes back when its connection ends"
        );
        newest.admit().unwrap();
        drop(flood);
        assert_eq!(pools.pending(), 0, "dropped pending connections leave");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_not_admitted_in_time_is_closed() {
        let pools = Pools::with_limits(2, 4, 4, Duration::from_secs(2));
        let c = pools.accept(ip(1));
        let waited = tokio::time::Instant::now();
        assert!(!c.admitted_in_time().await);
        assert_eq!(waited.elapsed(), Duration::from_secs(2));
        assert_eq!(pools.pending(), 0);
        assert_eq!(c.admit(), Err(Refused::Closed), "too late");
        let c = pools.accept(ip(1));
        let pools2 = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            pools2.admit().unwrap();
        });
        assert!(c.admitted_in_time().await);
    }
}
