//! Who may hold an accepted association, and for how long: the defences of a listening
//! ASAP or ENRP endpoint that hold with TLS off too. A connection that never completes
//! a message, trickles one, hoards memory with unfinished messages, or is one of too
//! many from one host cannot keep others out:
//! - at most `max_connections` at once, and `max_connections_per_host` from one address;
//!   when either is full, the association idle longest (no complete message for at
//!   least `first_message_timeout`) is closed to make room, else the newcomer is refused;
//! - the first complete message must arrive within `first_message_timeout` of the
//!   connection (a TLS handshake included), and every message that has begun must be
//!   complete within `message_timeout`;
//! - the bytes of unfinished messages held for all of a listener's associations are
//!   bounded by `max_unfinished_bytes`: the association that would go over is closed.
//!
//! Every refusal and closing is counted (`rserpool_listener_refused_total`,
//! `rserpool_listener_closed_total`) and logged at most once a second.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::logging::RateLimitedLog;

/// The bounds of one listening endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AdmissionLimits {
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_host: usize,
    pub(crate) first_message_timeout: Duration,
    pub(crate) message_timeout: Duration,
    pub(crate) max_unfinished_bytes: usize,
}

impl AdmissionLimits {
    /// A PE's ASAP endpoint: only registrars connect to it, a few at a time.
    pub(crate) const POOL_ELEMENT: Self = Self {
        max_connections: 64,
        max_connections_per_host: 16,
        first_message_timeout: Duration::from_secs(10),
        message_timeout: Duration::from_secs(10),
        max_unfinished_bytes: 4 << 20,
    };
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Every slot is taken by associations that are not idle.
    ListenerFull(usize),
    /// The host holds its share of slots, none of them idle.
    HostFull(usize),
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::ListenerFull(_) => "connection_limit",
            Self::HostFull(_) => "host_limit",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ListenerFull(limit) => write!(f, "{limit} connections open, none idle"),
            Self::HostFull(limit) => write!(f, "{limit} connections from this host, none idle"),
        }
    }
}

/// Why the listener closed an association it had admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expulsion {
    /// No complete message within the first-message timeout.
    Silent(Duration),
    /// A message begun and not completed within the message timeout.
    SlowMessage(Duration),
    /// Its unfinished message would take the listener over its memory budget.
    OverMemory(usize),
    /// The longest idle when a newcomer needed its slot.
    Evicted,
    /// Had sent no complete message yet when a newcomer needed its slot.
    EvictedSilent,
}

impl Expulsion {
    fn label(self) -> &'static str {
        match self {
            Self::Silent(_) => "silent",
            Self::SlowMessage(_) => "slow_message",
            Self::OverMemory(_) => "memory",
            Self::Evicted => "evicted_idle",
            Self::EvictedSilent => "evicted_silent",
        }
    }
}

impl fmt::Display for Expulsion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Silent(after) => write!(f, "no complete message within {after:?}"),
            Self::SlowMessage(after) => write!(f, "a message unfinished after {after:?}"),
            Self::OverMemory(budget) => {
                write!(f, "unfinished messages over the listener's {budget} bytes")
            }
            Self::Evicted => write!(f, "idle longest while the listener was full"),
            Self::EvictedSilent => write!(
                f,
                "no message yet, and the oldest such, while the listener was full"
            ),
        }
    }
}

/// The admitted associations of one listening endpoint.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: AdmissionLimits,
    /// `asap` or `enrp`: the metrics label.
    listener: &'static str,
    table: Mutex<Table>,
    unfinished: AtomicUsize,
    /// What `Ticket::active` counts from.
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    hosts: HashMap<IpAddr, usize>,
    open: HashMap<u64, Held>,
}

#[derive(Debug)]
struct Held {
    host: IpAddr,
    /// Milliseconds from the epoch to the last complete message (or the admission).
    active: Arc<AtomicU64>,
    /// A complete message has arrived.
    spoke: Arc<AtomicBool>,
    close: CancellationToken,
}

impl Table {
    /// Frees a slot (of `host` only, if given): the oldest association that has sent
    /// no complete message yet, whatever its age (a peer sends its first message at
    /// once; connections that never do are what a flood of them is made of, and one
    /// that keeps refilling the table must not keep everyone else out); else the
    /// longest idle with no message since `idle_before` (milliseconds from the epoch).
    /// Returns why the victim went, if there was one.
    fn evict(&mut self, host: Option<IpAddr>, idle_before: Option<u64>) -> Option<Expulsion> {
        let candidates = || {
            self.open
                .iter()
                .filter(move |(_, held)| host.is_none_or(|h| held.host == h))
                .map(|(key, held)| {
                    let spoke = held.spoke.load(Ordering::Relaxed);
                    (spoke, held.active.load(Ordering::Relaxed), *key)
                })
        };
        let silent = candidates().filter(|(spoke, _, _)| !spoke).min();
        let (why, key) = match silent {
            Some((_, _, key)) => (Expulsion::EvictedSilent, key),
            None => {
                let idle_before = idle_before?;
                let (_, _, key) = candidates()
                    .filter(|(_, active, _)| *active <= idle_before)
                    .min_by_key(|(_, active, key)| (*active, *key))?;
                (Expulsion::Evicted, key)
            }
        };
        let held = self.release(key)?;
        held.close.cancel();
        Some(why)
    }

    fn release(&mut self, key: u64) -> Option<Held> {
        let held = self.open.remove(&key)?;
        if let Some(count) = self.hosts.get_mut(&held.host) {
            *count -= 1;
            if *count == 0 {
                self.hosts.remove(&held.host);
            }
        }
        Some(held)
    }
}

impl Admission {
    pub(crate) fn new(listener: &'static str, limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            listener,
            table: Mutex::new(Table::default()),
            unfinished: AtomicUsize::new(0),
            epoch: Instant::now(),
        })
    }

    fn millis_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Admits a connection from `host`, making room by closing the longest idle
    /// association if a limit is reached. `shutdown` ends every association.
    pub(crate) fn admit(
        self: &Arc<Self>,
        host: IpAddr,
        shutdown: &CancellationToken,
    ) -> Result<Ticket, Refusal> {
        let now = Instant::now();
        // Idle long enough to make room: no message since this (none can be, so soon
        // after the listener started).
        let idle_before = now
            .checked_sub(self.limits.first_message_timeout)
            .filter(|since| *since >= self.epoch)
            .map(|since| self.millis_since_epoch(since));
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let from_host = table.hosts.get(&host).copied().unwrap_or(0);
        if from_host >= self.limits.max_connections_per_host {
            let Some(why) = table.evict(Some(host), idle_before) else {
                return Err(self.refused(Refusal::HostFull(self.limits.max_connections_per_host)));
            };
            self.expelled(why);
        }
        if table.open.len() >= self.limits.max_connections {
            let Some(why) = table.evict(None, idle_before) else {
                return Err(self.refused(Refusal::ListenerFull(self.limits.max_connections)));
            };
            self.expelled(why);
        }
        let key = table.next;
        table.next += 1;
        let active = Arc::new(AtomicU64::new(self.millis_since_epoch(now)));
        let spoke = Arc::new(AtomicBool::new(false));
        let close = shutdown.child_token();
        *table.hosts.entry(host).or_default() += 1;
        table.open.insert(
            key,
            Held {
                host,
                active: active.clone(),
                spoke: spoke.clone(),
                close: close.clone(),
            },
        );
        Ok(Ticket {
            admission: self.clone(),
            key,
            active,
            spoke,
            admitted: now,
            unfinished: 0,
            close,
        })
    }

    fn refused(&self, refusal: Refusal) -> Refusal {
        metrics::counter!("rserpool_listener_refused_total", "listener" => self.listener, "reason" => refusal.label())
            .increment(1);
        static LOG: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(1));
        if let Some(suppressed) = LOG.permit() {
            tracing::warn!(listener = self.listener, reason = %refusal, suppressed, "connection refused");
        }
        refusal
    }

    fn expelled(&self, why: Expulsion) {
        metrics::counter!("rserpool_listener_closed_total", "listener" => self.listener, "reason" => why.label())
            .increment(1);
        static LOG: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(1));
        if let Some(suppressed) = LOG.permit() {
            tracing::warn!(listener = self.listener, reason = %why, suppressed, "association closed by the listener");
        }
    }
}

/// One admitted association's hold on its listener; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    key: u64,
    active: Arc<AtomicU64>,
    spoke: Arc<AtomicBool>,
    admitted: Instant,
    /// Bytes of unfinished messages charged to the listener.
    unfinished: usize,
    /// Cancelled when the listener closes the association (eviction) or shuts down.
    pub(crate) close: CancellationToken,
}

impl Ticket {
    fn limits(&self) -> &AdmissionLimits {
        &self.admission.limits
    }

    /// When the first complete message is due, and what missing it is.
    pub(crate) fn first_message_due(&self) -> (Instant, Expulsion) {
        let timeout = self.limits().first_message_timeout;
        (self.admitted + timeout, Expulsion::Silent(timeout))
    }

    /// When a message begun at `started` is due, and what missing it is.
    pub(crate) fn message_due(&self, started: Instant) -> (Instant, Expulsion) {
        let timeout = self.limits().message_timeout;
        (started + timeout, Expulsion::SlowMessage(timeout))
    }

    /// A complete message arrived.
    pub(crate) fn active(&self, now: Instant) {
        self.active
            .store(self.admission.millis_since_epoch(now), Ordering::Relaxed);
        self.spoke.store(true, Ordering::Relaxed);
    }

    /// This association now holds `bytes` of unfinished messages: charged to the
    /// listener's budget; `Err` (and nothing charged) when that would exceed it.
    pub(crate) fn hold_unfinished(&mut self, bytes: usize) -> Result<(), Expulsion> {
        // Most reads end on a message boundary: nothing changes, no atomic operation.
        if bytes == self.unfinished {
            return Ok(());
        }
        let unfinished = &self.admission.unfinished;
        if bytes > self.unfinished {
            let more = bytes - self.unfinished;
            let budget = self.limits().max_unfinished_bytes;
            let before = unfinished.fetch_add(more, Ordering::Relaxed);
            if before + more > budget {
                unfinished.fetch_sub(more, Ordering::Relaxed);
                return Err(self.expel(Expulsion::OverMemory(budget)));
            }
        } else {
            unfinished.fetch_sub(self.unfinished - bytes, Ordering::Relaxed);
        }
        self.unfinished = bytes;
        Ok(())
    }

    /// Counts and logs why the listener closes this association.
    pub(crate) fn expel(&self, why: Expulsion) -> Expulsion {
        self.admission.expelled(why);
        why
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission
            .unfinished
            .fetch_sub(self.unfinished, Ordering::Relaxed);
        let mut table = self
            .admission
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        table.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_host: usize) -> AdmissionLimits {
        AdmissionLimits {
            max_connections: max,
            max_connections_per_host: per_host,
            first_message_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(10),
            max_unfinished_bytes: 1000,
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[tokio::test(start_paused = true)]
    async fn a_full_host_evicts_its_own_longest_idle_association_only() {
        let shutdown = CancellationToken::new();
        let admission = Admission::new("asap", limits(10, 2));
        let first = admission.admit(A, &shutdown).unwrap();
        let second = admission.admit(A, &shutdown).unwrap();
        let other = admission.admit(B, &shutdown).unwrap();
        for ticket in [&first, &second, &other] {
            ticket.active(Instant::now());
        }
        // Nobody has been idle for the first-message timeout yet: refused.
        assert_eq!(
            admission.admit(A, &shutdown).unwrap_err(),
            Refusal::HostFull(2)
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        second.active(Instant::now());
        let third = admission.admit(A, &shutdown).unwrap();
        third.active(Instant::now());
        assert!(first.close.is_cancelled(), "the idle one makes room");
        assert!(!second.close.is_cancelled() && !other.close.is_cancelled());
        drop(first);
        // Dropping an evicted ticket frees nothing twice.
        assert_eq!(
            admission.admit(A, &shutdown).unwrap_err(),
            Refusal::HostFull(2)
        );
        drop(third);
        assert!(admission.admit(A, &shutdown).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_listener_evicts_the_longest_idle_of_any_host() {
        let shutdown = CancellationToken::new();
        let admission = Admission::new("asap", limits(2, 2));
        let a = admission.admit(A, &shutdown).unwrap();
        let b = admission.admit(B, &shutdown).unwrap();
        a.active(Instant::now());
        b.active(Instant::now());
        assert_eq!(
            admission.admit(A, &shutdown).unwrap_err(),
            Refusal::ListenerFull(2)
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        a.active(Instant::now());
        let _c = admission.admit(A, &shutdown).unwrap();
        assert!(b.close.is_cancelled() && !a.close.is_cancelled());
    }

    /// 10 000 connections that never sent a byte, reopened as they were closed, kept
    /// the registrar full: every legitimate connection was refused. Connections without
    /// a first message now make room first, the oldest of them, whatever their age.
    #[tokio::test(start_paused = true)]
    async fn connections_that_never_spoke_make_room_first() {
        let shutdown = CancellationToken::new();
        let admission = Admission::new("asap", limits(3, 3));
        let talker = admission.admit(A, &shutdown).unwrap();
        talker.active(Instant::now());
        let oldest_silent = admission.admit(B, &shutdown).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let newer_silent = admission.admit(B, &shutdown).unwrap();
        let newcomer = admission.admit(A, &shutdown).unwrap();
        assert!(oldest_silent.close.is_cancelled());
        assert!(!newer_silent.close.is_cancelled() && !talker.close.is_cancelled());
        // The newcomer speaks: the other silent one goes next, never the talkers.
        newcomer.active(Instant::now());
        let _another = admission.admit(A, &shutdown).unwrap();
        assert!(newer_silent.close.is_cancelled());
        assert!(!talker.close.is_cancelled() && !newcomer.close.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn unfinished_bytes_are_bounded_across_associations() {
        let shutdown = CancellationToken::new();
        let admission = Admission::new("asap", limits(10, 10));
        let mut a = admission.admit(A, &shutdown).unwrap();
        let mut b = admission.admit(B, &shutdown).unwrap();
        a.hold_unfinished(600).unwrap();
        assert_eq!(b.hold_unfinished(600), Err(Expulsion::OverMemory(1000)));
        a.hold_unfinished(100).unwrap();
        b.hold_unfinished(600).unwrap();
        drop(a);
        let mut c = admission.admit(A, &shutdown).unwrap();
        c.hold_unfinished(400).unwrap();
    }
}
