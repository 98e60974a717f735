//! Legacy-facing front ends (the pool-user side of rserpool): clients that know nothing
//! of RSerPool connect here; upstream the gateway resolves pool handles and moves
//! sessions between pool elements.
//!
//! The gateways see pools only through a [`Directory`], which the daemon implements
//! with its ASAP pool user (docs/architecture.md).

#![forbid(unsafe_code)]

mod connector;
pub mod dns;
pub mod handover;
pub mod health;
pub mod http;
pub mod logs;
pub mod meters;
pub mod pe_socket;
pub mod tcp;
#[cfg(test)]
mod testing;

pub use connector::SctpConnector;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rserpool_proto::wire::{PoolElement, PoolElementId, PoolHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a gateway stops: first it stops accepting (`stop_accepting`) while open sessions
/// go on (they are in `sessions`); when the drain time is over, `close_sessions` ends the
/// rest.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    /// Cancelled: listeners accept no more clients.
    pub stop_accepting: CancellationToken,
    /// Cancelled: open sessions are closed.
    pub close_sessions: CancellationToken,
    /// Every session task, to wait for them.
    pub sessions: TaskTracker,
    /// The TCP sessions open now, for the admin API.
    pub table: SessionTable,
    /// The PEs ejected now by any listener or route, for the admin API.
    pub ejections: health::EjectionBoard,
}

/// The TCP sessions open now: where from, which pool and PE, how old, how many
/// failovers. Bounded by the listeners' `max_connections`.
#[derive(Debug, Clone, Default)]
pub struct SessionTable(Arc<Mutex<SessionRows>>);

#[derive(Debug, Default)]
struct SessionRows {
    next: u64,
    open: BTreeMap<u64, SessionRow>,
}

#[derive(Debug, Clone)]
struct SessionRow {
    listener: SocketAddr,
    pool: PoolHandle,
    client: SocketAddr,
    pe: Option<PoolElementId>,
    started: Instant,
    failovers: u32,
}

/// One open session as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: u64,
    pub listener: SocketAddr,
    pub pool: PoolHandle,
    pub client: SocketAddr,
    /// The PE serving it (none while connecting).
    pub pe: Option<PoolElementId>,
    pub age: Duration,
    pub failovers: u32,
}

impl SessionTable {
    /// Adds a session; it leaves the table when the returned entry is dropped.
    pub fn open(&self, listener: SocketAddr, pool: PoolHandle, client: SocketAddr) -> SessionEntry {
        self.open_since(listener, pool, client, (now(), 0))
    }

    /// A session that began earlier (`started`, with `failovers` so far): one carried
    /// over from the previous process by an upgrade.
    pub fn open_since(
        &self,
        listener: SocketAddr,
        pool: PoolHandle,
        client: SocketAddr,
        (started, failovers): (Instant, u32),
    ) -> SessionEntry {
        let mut id = 0;
        if let Ok(mut rows) = self.0.lock() {
            rows.next += 1;
            id = rows.next;
            rows.open.insert(
                id,
                SessionRow {
                    listener,
                    pool,
                    client,
                    pe: None,
                    started,
                    failovers,
                },
            );
        }
        SessionEntry {
            table: self.clone(),
            id,
        }
    }

    /// The open sessions, oldest first, `limit` at most.
    pub fn snapshot(&self, limit: usize) -> Vec<SessionInfo> {
        let at = now();
        self.0
            .lock()
            .map(|rows| {
                rows.open
                    .iter()
                    .take(limit)
                    .map(|(id, row)| SessionInfo {
                        id: *id,
                        listener: row.listener,
                        pool: row.pool,
                        client: row.client,
                        pe: row.pe,
                        age: at.saturating_duration_since(row.started),
                        failovers: row.failovers,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut SessionRow)) {
        if let Ok(mut rows) = self.0.lock()
            && let Some(row) = rows.open.get_mut(&id)
        {
            change(row);
        }
    }
}

/// A session's row in the [`SessionTable`]; removed when dropped.
#[derive(Debug)]
pub struct SessionEntry {
    table: SessionTable,
    id: u64,
}

impl SessionEntry {
    /// How long the session has been open, and its failovers so far.
    pub fn age_and_failovers(&self) -> (Duration, u32) {
        let at = now();
        self.table
            .0
            .lock()
            .ok()
            .and_then(|rows| {
                let row = rows.open.get(&self.id)?;
                Some((at.saturating_duration_since(row.started), row.failovers))
            })
            .unwrap_or_default()
    }

    /// The session reached its (first) PE.
    pub fn started(&self, pe: PoolElementId) {
        self.table.update(self.id, |row| row.pe = Some(pe));
    }

    /// The session moved to another PE.
    pub fn failed_over(&self, to: PoolElementId) {
        self.table.update(self.id, |row| {
            row.pe = Some(to);
            row.failovers += 1;
        });
    }
}

impl Drop for SessionEntry {
    fn drop(&mut self) {
        if let Ok(mut rows) = self.table.0.lock() {
            rows.open.remove(&self.id);
        }
    }
}

/// Why a pool could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The registrars know no such pool (or it is empty).
    #[error("unknown pool handle")]
    UnknownPool,
    /// No registrar could be asked.
    #[error("no registrar reachable")]
    Unavailable,
}

/// Where gateways learn pool elements and report unreachable ones.
pub trait Directory: Send + Sync + 'static {
    /// The pool's PEs in the order its policy gives (best first): `items` of them at
    /// most, or as many as the registrar chooses (`None`).
    fn resolve(
        &self,
        pool_handle: PoolHandle,
        items: Option<u32>,
    ) -> impl Future<Output = Result<Vec<PoolElement>, DirectoryError>> + Send;

    /// A PE could not be reached (ASAP_ENDPOINT_UNREACHABLE).
    fn report_unreachable(
        &self,
        pool_handle: PoolHandle,
        pe_id: PoolElementId,
    ) -> impl Future<Output = ()> + Send;
}

/// 64 random bits: new session ids and the slow-start generators' seeds.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness sessions still work (they share the id 0 at the PEs), and slow
    // start draws the same sequence on every route.
    let _ = getrandom::fill(&mut bytes);
    u64::from_be_bytes(bytes)
}

/// The time now, as the sans-IO session layer takes it (tokio's clock, so that tests
/// with a paused clock see the same time).
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
