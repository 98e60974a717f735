//! Legacy-facing front ends (the pool-user side of rserpool): clients that know nothing
//! of RSerPool connect here; upstream the gateway resolves pool handles and moves
//! sessions between pool elements.
//!
//! The gateways see pools only through a [`Directory`], which the daemon implements
//! with its ASAP pool user (../shared/ARCHITECTURE.md §1).

pub mod dns;
pub mod http;
pub mod tcp;

use std::future::Future;

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

/// The time now, as the sans-IO session layer takes it (tokio's clock, so that tests
/// with a paused clock see the same time).
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
