//! What a PE engine reports to its driver (RFC 5352 §3: registration, deregistration,
//! the home registrar and its changes).

use std::time::Duration;

use crate::engine::Endpoint;
use crate::wire::{CauseCode, PoolElementId, PoolHandle, RegistrarId};

/// What happened to the PEs of this engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolElementEvent {
    /// The PE is registered (first time, or after a failover to another registrar).
    Registered {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: PoolElementId,
        /// The home registrar, if its ID is known (it comes with the registrar's first
        /// keep-alive or announce, not with the registration response).
        registrar: Option<RegistrarId>,
        /// Where the home registrar was reached.
        registrar_endpoint: Option<Endpoint>,
    },
    /// A registrar answered a registration or re-registration (accepted or not), this
    /// long after the request (its last retransmission) went out.
    RegistrationAnswered {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: PoolElementId,
        /// Accepted (false: refused; [`PoolElementEvent::RegistrationRefused`] follows).
        accepted: bool,
        /// From the request to the answer.
        round_trip: Duration,
    },
    /// A registrar refused the registration.
    RegistrationRefused {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: PoolElementId,
        /// Why (the first cause of the Operation Error).
        cause: Option<CauseCode>,
        /// Whether the engine keeps trying (the cause may pass) or waits for a
        /// re-registration interval (configuration conflict).
        retrying: bool,
    },
    /// The PE was dropped before any registrar had it (nothing to deregister) and is
    /// forgotten.
    Withdrawn {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: PoolElementId,
    },
    /// The PE is deregistered (answered, or the attempts ran out) and forgotten.
    Deregistered {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: PoolElementId,
        /// The registrar answered (false: attempts ran out or no registrar).
        confirmed: bool,
    },
    /// A registrar became the home of this engine's PEs by a keep-alive with the H flag.
    HomeRegistrarChanged {
        /// The new home.
        registrar: RegistrarId,
    },
    /// The association to the home registrar was lost; a hunt is under way.
    RegistrarLost,
    /// A registrar reached in a hunt did not prove it is one: closed (security.md T6).
    RegistrarRefused {
        /// Who it was and why it was refused.
        reason: String,
    },
    /// A keep-alive with the H flag came from a peer that did not prove it is the
    /// registrar it names: the home stays (security.md T14).
    HomeChangeIgnored {
        /// The registrar ID the keep-alive claimed.
        claimed: RegistrarId,
        /// Who sent it and why it was ignored.
        reason: String,
    },
    /// Something a peer sent could not be used (logged by the driver).
    Warning(String),
}
