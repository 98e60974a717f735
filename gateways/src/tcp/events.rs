//! A TCP listener's meters, looked up once, and what each session event means for
//! the log and the meters.

use std::net::SocketAddr;

use metrics::{Counter, Gauge, Histogram};
use rserpool_proto::session::SessionEvent;

/// A listener's per-pool meters, looked up once rather than per session.
pub(super) struct Meters {
    pub(super) sessions: Counter,
    pub(super) active: Gauge,
    pub(super) failed: Counter,
    pub(super) failovers_with_cookie: Counter,
    pub(super) failovers_without_cookie: Counter,
    pub(super) half_closed_expired: Counter,
    pub(super) idle_expired: Counter,
    pub(super) stall: Histogram,
    pub(super) ejections: Counter,
    /// Sessions per PE.
    pub(super) pes: crate::meters::PeMeters,
    /// Sessions handed to the next process, taken from the previous one, and lost on
    /// the way (a socket or record that would not convert).
    pub(super) departed: Counter,
    pub(super) arrived: Counter,
    pub(super) handover_failures: Counter,
}

impl Meters {
    pub(super) fn new(pool: &str) -> Self {
        let label = || ("pool", pool.to_owned());
        let handed = |direction: &'static str| metrics::counter!("rserpool_tcp_sessions_handed_over_total", "pool" => pool.to_owned(), "direction" => direction);
        let failovers = |cookie: &'static str| metrics::counter!("rserpool_tcp_failovers_total", "pool" => pool.to_owned(), "cookie" => cookie);
        Self {
            sessions: metrics::counter!("rserpool_tcp_sessions_total", &[label()]),
            active: metrics::gauge!("rserpool_tcp_sessions_active", &[label()]),
            failed: metrics::counter!("rserpool_tcp_sessions_failed_total", &[label()]),
            failovers_with_cookie: failovers("true"),
            failovers_without_cookie: failovers("false"),
            half_closed_expired: metrics::counter!(
                "rserpool_tcp_half_closed_expired_total",
                &[label()]
            ),
            idle_expired: metrics::counter!("rserpool_tcp_idle_expired_total", &[label()]),
            stall: metrics::histogram!("rserpool_tcp_failover_stall_seconds", &[label()]),
            ejections: metrics::counter!("rserpool_tcp_pe_ejections_total", &[label()]),
            pes: crate::meters::PeMeters::tcp(pool),
            departed: handed("departed"),
            arrived: handed("arrived"),
            handover_failures: metrics::counter!(
                "rserpool_tcp_handover_failures_total",
                &[label()]
            ),
        }
    }
}

pub(super) fn record(pool: &str, meters: &Meters, peer: SocketAddr, event: &SessionEvent) {
    match event {
        SessionEvent::Started { pe } => tracing::debug!(%peer, pool, pe = %pe, "session started"),
        SessionEvent::PeFailed { pe, failure } => {
            tracing::debug!(%peer, pool, pe = %pe, ?failure, "pool element failed");
        }
        SessionEvent::FailedOver {
            from,
            to,
            failure,
            with_cookie,
            stall,
        } => {
            if *with_cookie {
                meters.failovers_with_cookie.increment(1);
            } else {
                meters.failovers_without_cookie.increment(1);
            }
            meters.stall.record(stall.as_secs_f64());
            tracing::info!(%peer, pool, from = %from, to = %to, ?failure, with_cookie, stall_ms = stall.as_millis(), "session failed over");
        }
        SessionEvent::HalfCloseExpired => {
            meters.half_closed_expired.increment(1);
            tracing::debug!(%peer, pool, "session closed: the PE did not finish after the client's half-close");
        }
        SessionEvent::IdleExpired => {
            meters.idle_expired.increment(1);
            tracing::debug!(%peer, pool, "session closed: no data either way for the idle timeout");
        }
        SessionEvent::Unrecoverable { failure, reason } => {
            tracing::warn!(%peer, pool, ?failure, reason, "session closed: it could not fail over");
        }
    }
}
