//! The registrar's metrics: counters moved by the engine's events, and gauges read from
//! the engine when `/metrics` is scraped. Every family is described (`# HELP`), and
//! every label has a bounded set of values (pools only for the ten largest).

use rserpool_proto::registrar::{ENRP_TYPE_NAMES, RegistrarEngine, RegistrarEvent, RemovalReason};

/// The driver's histogram of each message's handling time: from taking it off the
/// incoming queue to its answers queued for sending, by protocol.
pub(super) const HANDLING_SECONDS: &str = "rserpool_registrar_message_handling_seconds";

/// Pools given their own `rserpool_registrar_pool_elements_by_pool` series.
const TOP_POOLS: usize = 10;

/// `# HELP` for every family; called once the recorder is installed.
pub(super) fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "rserpool_registrar_registrations_total",
        "ASAP registrations accepted, by kind (new PE or renewal)"
    );
    describe_counter!(
        "rserpool_registrar_registrations_refused_total",
        "ASAP registrations refused, by cause code"
    );
    describe_counter!(
        "rserpool_registrar_removals_total",
        "PEs removed from the handlespace, by reason"
    );
    describe_counter!(
        "rserpool_registrar_handle_resolutions_total",
        "handle resolutions answered, by result (answered with PEs, or empty)"
    );
    describe_counter!(
        "rserpool_registrar_bad_input_total",
        "messages that could not be used"
    );
    describe_counter!(
        "rserpool_registrar_associations_closed_total",
        "associations closed by the registrar for bad input"
    );
    describe_counter!(
        "rserpool_registrar_denied_total",
        "requests refused as not authorized, by action"
    );
    describe_counter!(
        "rserpool_registrar_peer_events_total",
        "peer registrars up, lost, and named ones that never answered, by event"
    );
    describe_counter!(
        "rserpool_registrar_takeovers_total",
        "takeovers of silent peers by this registrar, by outcome; by_other: another took one over"
    );
    describe_counter!(
        "rserpool_registrar_audits_total",
        "handlespace audits of a peer after a checksum mismatch, by phase"
    );
    describe_counter!(
        "rserpool_registrar_messages_total",
        "ASAP and ENRP messages received and sent"
    );
    describe_counter!(
        "rserpool_registrar_enrp_messages_total",
        "ENRP messages received and sent, by type (other: a type RFC 5353 does not define)"
    );
    metrics::describe_histogram!(
        HANDLING_SECONDS,
        "time from taking an ASAP or ENRP message off the queue to its answers queued, by protocol"
    );
    describe_gauge!(
        "rserpool_registrar_pool_elements",
        "PEs in the handlespace (owned: registered here)"
    );
    describe_gauge!("rserpool_registrar_pools", "pools in the handlespace");
    describe_gauge!(
        "rserpool_registrar_associations",
        "associations up now, by protocol (asap: PEs and pool users; enrp: peers); refused ones: rserpool_listener_refused_total"
    );
    describe_gauge!(
        "rserpool_registrar_pool_elements_by_pool",
        "PEs of the ten largest pools"
    );
    describe_gauge!(
        "rserpool_registrar_peers",
        "peer registrars known, by standing"
    );
    describe_gauge!(
        "rserpool_registrar_synchronized",
        "1 once start-up synchronisation is over and ASAP is served"
    );
}

/// Moves the counters an event stands for.
pub(super) fn count(event: &RegistrarEvent) {
    let counter = |name: &'static str, label: &'static str, value: &'static str| {
        metrics::counter!(name, label => value).increment(1);
    };
    match event {
        RegistrarEvent::Registered { new, .. } => counter(
            "rserpool_registrar_registrations_total",
            "kind",
            if *new { "new" } else { "renewal" },
        ),
        RegistrarEvent::Refused { cause, .. } => {
            metrics::counter!("rserpool_registrar_registrations_refused_total", "cause" => format!("0x{:04x}", cause.0))
                .increment(1);
        }
        RegistrarEvent::Removed { reason, .. } => {
            counter(
                "rserpool_registrar_removals_total",
                "reason",
                removal(*reason),
            );
        }
        RegistrarEvent::Resolved { count, .. } => counter(
            "rserpool_registrar_handle_resolutions_total",
            "result",
            if *count > 0 { "answered" } else { "empty" },
        ),
        RegistrarEvent::Malformed { .. } => {
            metrics::counter!("rserpool_registrar_bad_input_total").increment(1);
        }
        RegistrarEvent::Closed { .. } => {
            metrics::counter!("rserpool_registrar_associations_closed_total").increment(1);
        }
        RegistrarEvent::Denied { action, .. } => {
            counter("rserpool_registrar_denied_total", "action", action);
        }
        RegistrarEvent::PeerUp { .. } => {
            counter("rserpool_registrar_peer_events_total", "event", "up")
        }
        RegistrarEvent::PeerLost { .. } => {
            counter("rserpool_registrar_peer_events_total", "event", "lost");
        }
        RegistrarEvent::CandidateExpired { .. } => {
            counter(
                "rserpool_registrar_peer_events_total",
                "event",
                "never_answered",
            );
        }
        RegistrarEvent::TakeoverStarted { .. } => takeover("started"),
        RegistrarEvent::TakeoverCompleted { .. } => takeover("completed"),
        RegistrarEvent::TakeoverAbandoned { .. } => takeover("abandoned"),
        RegistrarEvent::TakeoverCancelled { .. } => takeover("cancelled"),
        RegistrarEvent::PeerTookOver { .. } => takeover("by_other"),
        RegistrarEvent::AuditStarted { .. } => {
            counter("rserpool_registrar_audits_total", "phase", "started");
        }
        RegistrarEvent::AuditCompleted { .. } => {
            counter("rserpool_registrar_audits_total", "phase", "completed");
        }
        RegistrarEvent::Synchronized { .. }
        | RegistrarEvent::Overslept { .. }
        | RegistrarEvent::IdCollision { .. } => {}
    }
}

fn takeover(outcome: &'static str) {
    metrics::counter!("rserpool_registrar_takeovers_total", "outcome" => outcome).increment(1);
}

fn removal(reason: RemovalReason) -> &'static str {
    match reason {
        RemovalReason::Deregistered => "deregistered",
        RemovalReason::AssociationLost => "association_lost",
        RemovalReason::KeepAliveTimeout => "keep_alive_timeout",
        RemovalReason::Expired => "expired",
        RemovalReason::Unreachable => "unreachable",
        RemovalReason::PeerUpdate => "peer_update",
    }
}

/// Sets the gauges (and the message counters the engine keeps) from `engine`.
pub(super) fn refresh(engine: &RegistrarEngine) {
    let handlespace = engine.handlespace();
    metrics::gauge!("rserpool_registrar_pool_elements", "owned" => "all")
        .set(handlespace.pool_element_count() as f64);
    metrics::gauge!("rserpool_registrar_pool_elements", "owned" => "here")
        .set(handlespace.owned_count(engine.id()) as f64);
    metrics::gauge!("rserpool_registrar_pools").set(handlespace.pool_count() as f64);
    let mut sizes: Vec<(usize, String)> = handlespace
        .pools()
        .map(|(handle, pool)| (pool.len(), handle.to_string()))
        .collect();
    // The largest first; pools that drop out of the ten keep their last value (a
    // series per pool ever in the top ten, at most).
    sizes.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (count, pool) in sizes.into_iter().take(TOP_POOLS) {
        metrics::gauge!("rserpool_registrar_pool_elements_by_pool", "pool" => pool)
            .set(count as f64);
    }
    let mut standings: Vec<(&'static str, usize)> = Vec::new();
    for peer in engine.peers() {
        let standing = peer.standing.as_str();
        match standings.iter_mut().find(|(name, _)| *name == standing) {
            Some((_, count)) => *count += 1,
            None => standings.push((standing, 1)),
        }
    }
    for standing in [
        "candidate",
        "up",
        "probing",
        "taking_over",
        "taken_over_by_other",
    ] {
        let count = standings
            .iter()
            .find(|(name, _)| *name == standing)
            .map_or(0, |(_, count)| *count);
        metrics::gauge!("rserpool_registrar_peers", "standing" => standing).set(count as f64);
    }
    metrics::gauge!("rserpool_registrar_synchronized").set(if engine.is_synchronized() {
        1.0
    } else {
        0.0
    });
    let (asap, enrp) = engine.open_associations();
    for (protocol, open) in [("asap", asap), ("enrp", enrp)] {
        metrics::gauge!("rserpool_registrar_associations", "protocol" => protocol).set(open as f64);
    }
    let stats = engine.stats();
    for (protocol, direction, value) in [
        ("asap", "received", stats.asap_received),
        ("asap", "sent", stats.asap_sent),
        ("enrp", "received", stats.enrp_received),
        ("enrp", "sent", stats.enrp_sent),
    ] {
        metrics::counter!("rserpool_registrar_messages_total", "protocol" => protocol, "direction" => direction)
            .absolute(value);
    }
    for (direction, counts) in [
        ("received", stats.enrp_received_by_type),
        ("sent", stats.enrp_sent_by_type),
    ] {
        for (name, value) in ENRP_TYPE_NAMES.iter().zip(counts) {
            metrics::counter!("rserpool_registrar_enrp_messages_total", "type" => *name, "direction" => direction)
                .absolute(value);
        }
    }
}
