//! What a session is configured with, what it asks its driver to do, and what it
//! reports.

use std::time::Duration;

use crate::wire::{PoolElement, PoolElementId, PoolHandle};

/// Session tunables (per gateway listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Client bytes kept for replay; beyond this the session can no longer move.
    pub replay_limit: usize,
    /// How long to wait for a PE connection.
    pub connect_timeout: Duration,
    /// A data-only PE silent this long while answers are due has failed.
    pub response_timeout: Duration,
    /// A control channel sends a heartbeat after this much idle time; a PE silent for
    /// three intervals has failed (heartbeats keep a live one talking).
    pub heartbeat_interval: Duration,
    /// The first wait when no PE is available; doubles up to `max_retry_delay`.
    pub retry_delay: Duration,
    /// The longest wait between attempts.
    pub max_retry_delay: Duration,
    /// How long one failover may take before the client is given up.
    pub failover_deadline: Duration,
    /// After the client half-closed (it sends nothing more), how long the PE may take
    /// to finish its answer before both sides are closed (HAProxy's `timeout
    /// client-fin` idea): a PE that never closes must not hold the session forever.
    pub half_close_timeout: Duration,
    /// A session that carried no data either way for this long is closed (Envoy's
    /// TCP proxy `idle_timeout`); None: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            replay_limit: 1 << 20,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            retry_delay: Duration::from_millis(250),
            max_retry_delay: Duration::from_secs(2),
            failover_deadline: Duration::from_secs(30),
            half_close_timeout: Duration::from_secs(60),
            idle_timeout: Some(Duration::from_secs(3600)),
        }
    }
}

/// Why a PE connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum PeFailure {
    /// The connection could not be opened (refused, unreachable, timed out).
    Connect,
    /// The connection was reset or a read or write failed.
    Reset,
    /// The PE closed its side while the session still needed it.
    Closed,
    /// The PE went silent beyond the response timeout.
    Timeout,
    /// The PE broke the control channel framing or protocol.
    Protocol,
}

impl PeFailure {
    /// Whether the PE is reported to the registrar as unreachable (RFC 5352 §3.5): only
    /// when it could not be reached or stopped answering. A PE that closed or reset a
    /// session, or spoke garbage, was reachable: it may be ending sessions on purpose
    /// (rsplib's PingPong PEs close after N requests), and reporting it would have the
    /// registrar remove a healthy PE after three such closes.
    pub fn reports_unreachable(self) -> bool {
        matches!(self, Self::Connect | Self::Timeout)
    }

    /// Whether the failure counts against the PE's health (a gateway's outlier
    /// detection): every failure but a close, which a PE may make on purpose.
    pub fn counts_against_pe(self) -> bool {
        !matches!(self, Self::Closed)
    }
}

/// What the driver of a session must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum SessionOutput {
    /// Ask the directory for PEs of the pool (answer with `resolved`).
    Resolve(PoolHandle),
    /// Open a connection to a PE's user transport (answer with `pe_connected` or
    /// `pe_failed`). Any previous PE connection is closed first. Boxed: every session
    /// keeps its queue of outputs, whose slots are as large as the largest variant.
    Connect(Box<PoolElement>),
    /// Write bytes to the PE connection (already framed for a control channel).
    SendToPe(Vec<u8>),
    /// Close the PE connection.
    ClosePe,
    /// Half-close the PE connection: the client finished sending (data-only PEs; a
    /// control channel stays open both ways).
    ShutdownPe,
    /// Tell the directory a PE could not be reached.
    ReportUnreachable(PoolElementId),
    /// Write bytes to the client.
    SendToClient(Vec<u8>),
    /// Half-close the client connection (the PE finished sending).
    ShutdownClient,
    /// Close the client connection; `failed` if the session could not continue.
    CloseClient {
        /// The session ended because of an unrecoverable failure.
        failed: bool,
    },
    /// Something worth counting.
    Event(SessionEvent),
}

/// Session happenings for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The session's first PE is connected.
    Started {
        /// The PE.
        pe: PoolElementId,
    },
    /// A PE of the session failed (the session then moves on, or gives up).
    PeFailed {
        /// The PE.
        pe: PoolElementId,
        /// How.
        failure: PeFailure,
    },
    /// The session moved to another PE.
    FailedOver {
        /// The PE that failed.
        from: PoolElementId,
        /// The new PE.
        to: PoolElementId,
        /// Why the old one failed.
        failure: PeFailure,
        /// A cookie was echoed.
        with_cookie: bool,
        /// Time from the failure to the new PE connected.
        stall: Duration,
    },
    /// The client half-closed and the PE did not finish within the half-close
    /// timeout: both sides were closed.
    HalfCloseExpired,
    /// No data either way for the idle timeout: both sides were closed.
    IdleExpired,
    /// The session could not continue.
    Unrecoverable {
        /// Why the last PE failed.
        failure: PeFailure,
        /// Why it could not move.
        reason: &'static str,
    },
}
