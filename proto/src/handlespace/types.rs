//! What the handlespace holds and answers: a PE's entry and key, the bounds, and why
//! a change was refused.

use std::time::Instant;

use crate::association::AssocId;
use crate::policy::SelectionState;
use crate::wire::{
    CauseCode, ErrorCause, PolicyType, PoolElement, PoolElementId, PoolHandle, RegistrarId,
    TransportUse,
};

/// Bounds on the handlespace, so that no peer can make it grow without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Pools in the handlespace.
    pub max_pools: usize,
    /// Pool elements in one pool.
    pub max_pool_elements_per_pool: usize,
    /// Pool elements in the whole handlespace.
    pub max_pool_elements: usize,
    /// Addresses in one PE's user transport.
    pub max_addresses_per_pool_element: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pools: 100_000,
            max_pool_elements_per_pool: 100_000,
            max_pool_elements: 1_000_000,
            max_addresses_per_pool_element: crate::wire::MAX_TRANSPORT_ADDRESSES,
        }
    }
}

/// A pool element's place in the handlespace: its pool and its identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolElementKey {
    /// The pool.
    pub pool_handle: PoolHandle,
    /// The PE within it.
    pub pe_id: PoolElementId,
}

/// Why a registration (or an update arriving over ENRP) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The pool uses another policy type (cause 0x0005).
    #[error("pool uses policy type 0x{pool:08x}, not 0x{offered:08x}", pool = .pool.0, offered = .offered.0)]
    InconsistentPolicy {
        /// The pool's policy type.
        pool: PolicyType,
        /// The policy offered, as a parameter TLV for the error cause.
        offered: PolicyType,
        /// The offending policy parameter.
        parameter: Vec<u8>,
    },
    /// The pool uses another transport protocol (cause 0x0007).
    #[error("pool uses transport parameter type 0x{pool:04x}, not 0x{offered:04x}")]
    InconsistentTransport {
        /// The pool's transport parameter type.
        pool: u16,
        /// The offered one.
        offered: u16,
        /// The offending transport parameter.
        parameter: Vec<u8>,
    },
    /// The pool's PEs have another transport use (control channel or not; cause 0x0008).
    #[error("pool uses transport use {pool:?}, not {offered:?}")]
    InconsistentDataControl {
        /// The pool's.
        pool: TransportUse,
        /// The offered one.
        offered: TransportUse,
    },
    /// A policy type this implementation cannot run (cause 0x0003 with the parameter).
    #[error("unsupported policy type 0x{:08x}", .policy_type.0)]
    UnsupportedPolicy {
        /// The type.
        policy_type: PolicyType,
        /// The offending policy parameter.
        parameter: Vec<u8>,
    },
    /// A configured bound would be exceeded (cause 0x0006).
    #[error("{what} limit of {limit} reached")]
    LimitReached {
        /// Which bound.
        what: &'static str,
        /// Its value.
        limit: usize,
    },
}

impl Refusal {
    /// The error cause that tells the registering PE (RFC codes only; the offending
    /// parameter goes into causes 0x0003, 0x0005 and 0x0007, which Wireshark decodes).
    pub fn cause(&self) -> ErrorCause {
        match self {
            Self::InconsistentPolicy { parameter, .. } => {
                ErrorCause::with_copy(CauseCode::INCONSISTENT_POOLING_POLICY, parameter)
            }
            Self::InconsistentTransport { parameter, .. } => {
                ErrorCause::with_copy(CauseCode::INCONSISTENT_TRANSPORT_TYPE, parameter)
            }
            Self::InconsistentDataControl { .. } => {
                ErrorCause::new(CauseCode::INCONSISTENT_DATA_CONTROL)
            }
            Self::UnsupportedPolicy { parameter, .. } => {
                ErrorCause::with_copy(CauseCode::INVALID_VALUES, parameter)
            }
            Self::LimitReached { .. } => ErrorCause::new(CauseCode::LACK_OF_RESOURCES),
        }
    }
}

/// What an accepted registration or update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// A new PE.
    Added,
    /// An existing PE was updated (re-registration or a newer ENRP update).
    Updated {
        /// Its home registrar changed.
        owner_changed: bool,
    },
}

/// One pool element as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolElementEntry {
    /// The PE as registered or distributed: identifier, home registrar (the owner),
    /// registration life, user transport, policy with its values, ASAP transport.
    pub element: PoolElement,
    /// The association it was registered over (PEs this registrar owns).
    pub association: Option<AssocId>,
    /// When it was last registered or updated.
    pub last_update: Instant,
    /// When the registration life runs out without a refresh.
    pub expires_at: Instant,
    /// The next keep-alive action (send or ack timeout) for a PE this registrar owns.
    pub keepalive_at: Option<Instant>,
    /// How many times selection has handed it out.
    pub selections: u64,
    pub(super) state: SelectionState,
}

impl PoolElementEntry {
    /// The PE's home registrar.
    pub fn owner(&self) -> RegistrarId {
        self.element.home_registrar
    }
}
