//! A TCP listener's settings: its address and pool, the session layer's limits, and
//! how client bytes become messages for PEs whose user transport is SCTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rserpool_proto::session::SessionConfig;
use rserpool_proto::wire::PoolHandle;

use super::framing::Framing;
use crate::health::OutlierConfig;

/// One TCP listener of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The pool their sessions go to.
    pub pool_handle: PoolHandle,
    /// Session timeouts and replay limit, shared by the listener's sessions (each would
    /// otherwise hold a copy).
    pub session: Arc<SessionConfig>,
    /// Open client connections at most; more are closed at once.
    pub max_connections: usize,
    /// Bytes queued towards one side before the gateway stops reading the other.
    pub buffer: usize,
    /// How client bytes become messages for PEs whose user transport is SCTP.
    pub sctp: SctpUpstream,
    /// When a PE whose sessions keep failing (refused or timed-out connects, resets,
    /// silence, protocol errors; not closes) is ejected: tried after the others.
    pub outliers: OutlierConfig,
    /// How long a new or returning PE's share of new sessions ramps up (zero: at once).
    pub slow_start: Duration,
    /// Whether this listener's open sessions per PE reorder the PEs a resolution
    /// returned (fewest first, ties in the pool policy's order; ejected PEs still last).
    pub least_sessions: bool,
}

/// Upstream options for SCTP pool elements: the PPID of data messages, and how the
/// client's byte stream is cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SctpUpstream {
    /// The payload protocol identifier of data (e.g. 33 for rsplib's PingPong).
    pub ppid: u32,
    /// `None`: each chunk the client sends is one message (fine for byte streams such as
    /// echo); otherwise messages carry their length in a header field.
    pub framing: Option<Framing>,
}

impl ListenerConfig {
    /// Defaults for a listener.
    pub fn new(listen: SocketAddr, pool_handle: PoolHandle) -> Self {
        Self {
            listen,
            pool_handle,
            session: Arc::new(SessionConfig::default()),
            max_connections: 10_000,
            buffer: 256 * 1024,
            sctp: SctpUpstream::default(),
            outliers: OutlierConfig::default(),
            slow_start: crate::health::SLOW_START,
            least_sessions: false,
        }
    }
}
