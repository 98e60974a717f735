//! The registrar's log lines for its engine's events (and their counters): refusals and
//! bad input are rate-limited, since a peer decides how often they happen.

use rserpool_proto::registrar::RegistrarEvent;

use super::meters;

pub(super) fn log_event(event: RegistrarEvent) {
    meters::count(&event);
    match event {
        RegistrarEvent::Registered { key, new: true } => {
            tracing::info!(pool = %key.pool_handle, pe = %key.pe_id, "pool element registered");
        }
        RegistrarEvent::Registered { key, new: false } => {
            tracing::debug!(pool = %key.pool_handle, pe = %key.pe_id, "pool element re-registered");
        }
        RegistrarEvent::Refused { key, cause, reason } => {
            // A peer decides how often this happens.
            static LOG: crate::logging::RateLimitedLog =
                crate::logging::RateLimitedLog::new(std::time::Duration::from_secs(1));
            if let Some(suppressed) = LOG.permit() {
                tracing::warn!(pool = %key.pool_handle, pe = %key.pe_id, %cause, %reason, suppressed, "registration refused");
            }
        }
        RegistrarEvent::Removed { key, reason } => {
            tracing::info!(pool = %key.pool_handle, pe = %key.pe_id, ?reason, "pool element removed");
        }
        RegistrarEvent::Resolved { pool_handle, count } => {
            tracing::debug!(pool = %pool_handle, count, "handle resolution");
        }
        RegistrarEvent::Malformed { assoc, detail } => {
            // A peer decides how often this happens.
            static LOG: crate::logging::RateLimitedLog =
                crate::logging::RateLimitedLog::new(std::time::Duration::from_secs(1));
            if let Some(suppressed) = LOG.permit() {
                tracing::warn!(%assoc, %detail, suppressed, "bad input");
            }
        }
        RegistrarEvent::Closed { assoc, reason } => {
            tracing::warn!(%assoc, reason, "association closed");
        }
        RegistrarEvent::Synchronized { pool_elements } => {
            tracing::info!(pool_elements, "synchronized: serving ASAP");
        }
        RegistrarEvent::PeerUp { id, endpoint } => {
            let endpoint = endpoint.map(|e| e.to_string()).unwrap_or_default();
            tracing::info!(peer = %id, %endpoint, "peer registrar up");
        }
        RegistrarEvent::PeerLost { id } => tracing::warn!(peer = %id, "peer registrar lost"),
        RegistrarEvent::Overslept { by } => {
            tracing::warn!(
                by_ms = by.as_millis(),
                "this registrar did not run for a while (stopped?): synchronising with its peers again before serving ASAP"
            );
        }
        RegistrarEvent::CandidateExpired { id } => {
            tracing::info!(peer = %id, "named registrar never answered: forgotten");
        }
        RegistrarEvent::TakeoverStarted { target } => {
            tracing::warn!(peer = %target, "peer silent: starting takeover");
        }
        RegistrarEvent::TakeoverCompleted {
            target,
            pool_elements,
        } => {
            tracing::warn!(peer = %target, pool_elements, "took over the pool elements of a dead peer");
        }
        RegistrarEvent::TakeoverAbandoned { target } => {
            tracing::info!(peer = %target, "takeover abandoned");
        }
        RegistrarEvent::TakeoverCancelled { target } => {
            tracing::info!(peer = %target, "peer alive again: takeover cancelled");
        }
        RegistrarEvent::PeerTookOver {
            target,
            by,
            pool_elements,
        } => {
            tracing::info!(peer = %target, by = %by, pool_elements, "another registrar took over a dead peer");
        }
        RegistrarEvent::AuditStarted { peer } => {
            tracing::info!(%peer, "checksum mismatch: auditing");
        }
        RegistrarEvent::AuditCompleted { peer, purged } => {
            tracing::info!(%peer, purged, "audit complete");
        }
        RegistrarEvent::Denied {
            assoc,
            action,
            reason,
        } => {
            static LOG: crate::logging::RateLimitedLog =
                crate::logging::RateLimitedLog::new(std::time::Duration::from_secs(1));
            if let Some(suppressed) = LOG.permit() {
                tracing::warn!(%assoc, action, %reason, suppressed, "refused: not authorized");
            }
        }
        RegistrarEvent::IdCollision { assoc } => {
            tracing::error!(%assoc, "another registrar uses this registrar's ID: give each registrar its own --id");
        }
    }
}
