//! What a pool user answers and reports.

use crate::wire::{CauseCode, PolicyType, PoolElement, PoolHandle};

/// Identifies one resolve request in [`PoolUserEvent::Resolved`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// PEs of a pool, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The pool.
    pub pool_handle: PoolHandle,
    /// The pool's policy type, if the answer named it.
    pub policy_type: Option<PolicyType>,
    /// The PEs in the order to try them.
    pub pool_elements: Vec<PoolElement>,
    /// Where the answer came from.
    pub source: AnswerSource,
}

/// Where a resolution's PEs came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerSource {
    /// A registrar's answer to this request.
    Registrar,
    /// The cache, fresh (a registrar listed them within the stale-cache value).
    Cache,
    /// The pool's last answer, past its freshness: no registrar answered in time.
    Stale,
}

/// Why a resolution failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The registrar knows no such pool (cause 0x0009).
    #[error("unknown pool handle")]
    UnknownPool,
    /// The registrar answered with another error.
    #[error("registrar refused: {0}")]
    Refused(CauseCode),
    /// No registrar could be reached.
    #[error("no registrar reachable")]
    NoRegistrar,
    /// Too many requests are waiting already.
    #[error("too many requests waiting")]
    Overloaded,
}

/// What the pool user reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolUserEvent {
    /// A resolve request finished.
    Resolved {
        /// The request.
        request: RequestId,
        /// PEs, or why not.
        result: Result<Resolution, ResolveError>,
    },
    /// An association to a registrar is up.
    RegistrarUp,
    /// The registrar association was lost; hunting.
    RegistrarLost,
    /// The current registrar answered nothing for `registrar_silence` while requests
    /// waited: given up for another (hunting), passed over for a while.
    RegistrarSilent,
    /// Requests that no registrar answered in time were answered from the pool's
    /// last answer (serving stale).
    AnsweredStale {
        /// The pool.
        pool_handle: PoolHandle,
        /// The requests answered.
        requests: usize,
    },
    /// A registrar reached in a hunt did not prove it is one: closed, its answers
    /// never used (security.md T7).
    RegistrarRefused {
        /// Who it was and why it was refused.
        reason: String,
    },
    /// Something a peer sent could not be used.
    Warning(String),
}

/// A cache answer from [`PoolUserEngine::resolve_from_cache`](super::PoolUserEngine::resolve_from_cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheHit {
    /// The PEs, the pool's policy applied to the cache.
    pub resolution: Resolution,
    /// The cached answer is near the end of its life and nothing renews it yet: the
    /// caller should call [`PoolUserEngine::refresh`](super::PoolUserEngine::refresh) (once; later hits say `false`).
    pub refresh: bool,
}
