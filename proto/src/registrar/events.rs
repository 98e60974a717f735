//! What the registrar reports to its driver, for logs and metrics.

use crate::engine::AssocId;
use crate::handlespace::PoolElementKey;
use crate::wire::{CauseCode, PoolHandle, RegistrarId};

/// Why a PE left the handlespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum RemovalReason {
    /// ASAP_DEREGISTRATION.
    Deregistered,
    /// Its registration association went down.
    AssociationLost,
    /// No keep-alive acknowledgement in time.
    KeepAliveTimeout,
    /// Its registration life ran out without a refresh.
    Expired,
    /// Enough pool users reported it unreachable.
    Unreachable,
    /// Its home registrar deleted it (ENRP), or an audit found it gone there.
    PeerUpdate,
}

/// What the registrar reports to its driver (for logs and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrarEvent {
    /// A PE registered (or re-registered, `new` false).
    Registered {
        /// The PE.
        key: PoolElementKey,
        /// First registration.
        new: bool,
    },
    /// A registration was refused.
    Refused {
        /// The PE.
        key: PoolElementKey,
        /// The cause sent back.
        cause: CauseCode,
        /// Why, in words.
        reason: String,
    },
    /// A PE left the handlespace.
    Removed {
        /// The PE.
        key: PoolElementKey,
        /// Why.
        reason: RemovalReason,
    },
    /// A handle resolution was answered.
    Resolved {
        /// The pool.
        pool_handle: PoolHandle,
        /// PEs returned (0: unknown pool or rate-limited).
        count: usize,
    },
    /// A peer sent something that could not be used.
    Malformed {
        /// The association.
        assoc: AssocId,
        /// What was wrong.
        detail: String,
    },
    /// The registrar closed an association (too much bad input).
    Closed {
        /// The association.
        assoc: AssocId,
        /// Why.
        reason: &'static str,
    },
    /// Start-up synchronisation is over: ASAP requests are served.
    Synchronized {
        /// PEs known after the mentor's table.
        pool_elements: usize,
    },
    /// This registrar ran again after a pause longer than MAX-TIME-LAST-HEARD past its
    /// own deadline (a stopped process, a suspended machine): its peers may have taken
    /// its PEs over, so it synchronises again before serving ASAP.
    Overslept {
        /// How long past its deadline it ran again.
        by: std::time::Duration,
    },
    /// A peer registrar was heard from for the first time.
    PeerUp {
        /// Its ID.
        id: RegistrarId,
        /// Its ENRP endpoint.
        endpoint: Option<crate::engine::Endpoint>,
    },
    /// A peer stopped answering and was forgotten (it owned no PEs, or another
    /// registrar took it over).
    PeerLost {
        /// Its ID.
        id: RegistrarId,
    },
    /// A registrar named by another (or by multicast) never answered and was
    /// forgotten.
    CandidateExpired {
        /// Its ID.
        id: RegistrarId,
    },
    /// This registrar began taking a silent peer over.
    TakeoverStarted {
        /// The peer.
        target: RegistrarId,
    },
    /// This registrar took a peer's PEs over.
    TakeoverCompleted {
        /// The peer.
        target: RegistrarId,
        /// PEs now owned here.
        pool_elements: usize,
    },
    /// A takeover by this registrar was given up (expiry, or a lower ID won).
    TakeoverAbandoned {
        /// The peer.
        target: RegistrarId,
    },
    /// A peer under takeover turned out to be alive.
    TakeoverCancelled {
        /// The peer.
        target: RegistrarId,
    },
    /// Another registrar took a peer's PEs over.
    PeerTookOver {
        /// The dead peer.
        target: RegistrarId,
        /// The new home.
        by: RegistrarId,
        /// PEs moved.
        pool_elements: usize,
    },
    /// A checksum mismatch started an audit of a peer.
    AuditStarted {
        /// The peer.
        peer: RegistrarId,
    },
    /// An audit ended.
    AuditCompleted {
        /// The peer.
        peer: RegistrarId,
        /// PEs the peer no longer had, removed here.
        purged: usize,
    },
    /// Another registrar uses this registrar's ID (RFC 5353 §3.2.1).
    IdCollision {
        /// Where it was heard.
        assoc: AssocId,
    },
    /// A peer asked for something its identity is not granted (RFC 5355); the
    /// request was refused or ignored.
    Denied {
        /// The association.
        assoc: AssocId,
        /// What was asked: `resolve`, `report` (unreachability), `enrp` (a message),
        /// `peer` (a registrar this one reached is not one). Refused registrations
        /// are [`RegistrarEvent::Refused`], with their cause.
        action: &'static str,
        /// Who asked and why it was refused.
        reason: String,
    },
}
