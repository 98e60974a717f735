//! The `pe` agent's metrics: health checks per service, registrations and registrar
//! changes from the engine's events, and the PEs registered now (a gauge per pool, set
//! when `/metrics` is scraped). Labels are bounded: pools come from the configuration.

use rserpool_proto::pool_element::PoolElementEvent;
use rserpool_proto::wire::{PoolElementId, PoolHandle};

/// `# HELP` for every family; called once the recorder is installed.
pub(super) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "rserpool_pe_session_errors_total",
        "sessions of a demo service (pe --serve) closed for invalid client input, by service"
    );
    describe_counter!(
        "rserpool_pe_health_checks_total",
        "health checks of each service's backend, by pool and result"
    );
    describe_histogram!(
        "rserpool_pe_health_check_seconds",
        "how long a backend's health check took, by pool"
    );
    describe_counter!(
        "rserpool_pe_registrations_total",
        "registrations of the agent's PEs, by result (registered or refused)"
    );
    describe_histogram!(
        "rserpool_pe_registration_round_trip_seconds",
        "from a registration or re-registration to the registrar's answer, by pool"
    );
    describe_counter!(
        "rserpool_pe_deregistrations_total",
        "deregistrations of the agent's PEs, by whether the registrar confirmed"
    );
    describe_counter!(
        "rserpool_pe_registrar_changes_total",
        "home registrar changes and lost registrar associations, by event"
    );
    describe_counter!(
        "rserpool_pe_registrars_refused_total",
        "registrars not used because they did not prove they are one"
    );
    describe_counter!(
        "rserpool_pe_home_changes_ignored_total",
        "keep-alives claiming a new home registrar that were ignored"
    );
    describe_gauge!(
        "rserpool_pe_registered",
        "the agent's PEs registered now, by pool"
    );
    describe_gauge!(
        "rserpool_pe_load",
        "the agent's last measurement of each backend's load (a fraction of its capacity), by pool"
    );
    describe_counter!(
        "rserpool_pe_load_errors_total",
        "measurements of a backend's load that failed (the last load stays), by pool"
    );
}

/// Moves the counters an event stands for.
pub(super) fn count(event: &PoolElementEvent) {
    let counter = |name: &'static str, label: &'static str, value: &'static str| {
        metrics::counter!(name, label => value).increment(1);
    };
    match event {
        PoolElementEvent::Registered { .. } => {
            counter("rserpool_pe_registrations_total", "result", "registered");
        }
        PoolElementEvent::RegistrationRefused { .. } => {
            counter("rserpool_pe_registrations_total", "result", "refused");
        }
        PoolElementEvent::Deregistered { confirmed, .. } => counter(
            "rserpool_pe_deregistrations_total",
            "confirmed",
            if *confirmed { "true" } else { "false" },
        ),
        PoolElementEvent::HomeRegistrarChanged { .. } => {
            counter("rserpool_pe_registrar_changes_total", "event", "new_home");
        }
        PoolElementEvent::RegistrarLost => {
            counter("rserpool_pe_registrar_changes_total", "event", "lost");
        }
        PoolElementEvent::RegistrarRefused { .. } => {
            metrics::counter!("rserpool_pe_registrars_refused_total").increment(1);
        }
        PoolElementEvent::HomeChangeIgnored { .. } => {
            metrics::counter!("rserpool_pe_home_changes_ignored_total").increment(1);
        }
        PoolElementEvent::RegistrationAnswered {
            pool_handle,
            round_trip,
            ..
        } => {
            metrics::histogram!("rserpool_pe_registration_round_trip_seconds", "pool" => pool_handle.to_string())
                .record(round_trip.as_secs_f64());
        }
        PoolElementEvent::Withdrawn { .. } | PoolElementEvent::Warning(_) => {}
    }
}

/// Sets the registered-PE gauges: `pools` are every configured pool (0 when none of
/// its PEs is registered), `registered` the PEs registered now.
pub(super) fn refresh(pools: &[PoolHandle], registered: &[(PoolHandle, PoolElementId)]) {
    for pool in pools {
        let count = registered.iter().filter(|(p, _)| p == pool).count();
        metrics::gauge!("rserpool_pe_registered", "pool" => pool.to_string()).set(count as f64);
    }
}
