//! The engine's events as log lines and meters.

use std::time::Duration;

use rserpool_proto::pool_element::PoolElementEvent;
use rserpool_proto::wire::CauseCode;

use super::meters;
use crate::logging::RateLimitedLog;

/// What to do about a refused registration, by its cause (RFC 5352 §3.4; the causes
/// our registrar gives, README "rserpool registrar").
fn refusal_hint(cause: Option<CauseCode>) -> &'static str {
    match cause {
        Some(CauseCode::INVALID_VALUES) => {
            "the registrar takes only user transport addresses this agent's association comes from: for a backend on another address of this host give --asap ADDRESS:0 with that address (pe.asap)"
        }
        Some(CauseCode::INCONSISTENT_POOLING_POLICY) => {
            "the pool's PEs use another policy: register with the pool's policy (--policy)"
        }
        Some(CauseCode::INCONSISTENT_TRANSPORT_TYPE | CauseCode::INCONSISTENT_DATA_CONTROL) => {
            "the pool's PEs use another transport or transport use: register as they do"
        }
        Some(CauseCode::LACK_OF_RESOURCES) => {
            "the registrar's limits are reached (its handlespace, or this host's share): see its log"
        }
        Some(CauseCode::SECURITY_REJECTION) => {
            "this agent's certificate does not grant this pool at the registrar (RFC 5355): see the registrar's grants"
        }
        Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER) => {
            "another PE registered this identifier: restart the agent (a new one is drawn)"
        }
        _ => "see the registrar's log for its reason",
    }
}

/// `# HELP` for the PE side's metric families (once the recorder is installed).
pub(crate) fn describe_metrics() {
    meters::describe();
}

pub(crate) fn log_event(event: &PoolElementEvent) {
    meters::count(event);
    match event {
        PoolElementEvent::Registered {
            pool_handle,
            pe_id,
            registrar,
            registrar_endpoint,
        } => {
            // The registrar's ID comes later (its first keep-alive): show what is known.
            let at = registrar_endpoint
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), ToString::to_string);
            match registrar {
                Some(id) => {
                    tracing::info!(pool = %pool_handle, pe = %pe_id, registrar = %id, %at, "registered")
                }
                None => tracing::info!(pool = %pool_handle, pe = %pe_id, %at, "registered"),
            }
        }
        PoolElementEvent::RegistrationRefused {
            pool_handle,
            pe_id,
            cause,
            retrying,
        } => {
            let cause_text = cause.map_or_else(|| "none given".to_owned(), |c| c.to_string());
            let hint = refusal_hint(*cause);
            let next = if *retrying {
                "retrying"
            } else {
                "trying again at the next re-registration"
            };
            tracing::error!(pool = %pool_handle, pe = %pe_id, cause = %cause_text, hint, next, "registration refused");
        }
        PoolElementEvent::Deregistered {
            pool_handle,
            pe_id,
            confirmed,
        } => {
            tracing::info!(pool = %pool_handle, pe = %pe_id, confirmed, "deregistered");
        }
        PoolElementEvent::Withdrawn { pool_handle, pe_id } => {
            tracing::info!(pool = %pool_handle, pe = %pe_id, "stopped before any registrar had it: nothing to deregister");
        }
        PoolElementEvent::HomeRegistrarChanged { registrar } => {
            tracing::info!(%registrar, "new home registrar");
        }
        PoolElementEvent::RegistrarLost => tracing::warn!("registrar association lost; hunting"),
        PoolElementEvent::RegistrarRefused { reason } => {
            static LOG: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(1));
            if let Some(suppressed) = LOG.permit() {
                tracing::warn!(%reason, suppressed, "not registering at a registrar that did not prove it is one");
            }
        }
        PoolElementEvent::HomeChangeIgnored { claimed, reason } => {
            static LOG: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(1));
            if let Some(suppressed) = LOG.permit() {
                tracing::warn!(%claimed, %reason, suppressed, "ignored a keep-alive claiming to be the new home registrar");
            }
        }
        PoolElementEvent::Warning(warning) => tracing::warn!(%warning, "pool element"),
        PoolElementEvent::RegistrationAnswered {
            pool_handle,
            pe_id,
            accepted,
            round_trip,
        } => {
            tracing::debug!(pool = %pool_handle, pe = %pe_id, accepted, ?round_trip, "registration answered")
        }
    }
}
