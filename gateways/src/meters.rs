//! `# HELP` for the gateways' metric families (the series themselves are made where
//! they are counted).

use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Describes every family of the TCP, HTTP and DNS gateways; called once the
/// process's recorder is installed.
pub fn describe() {
    describe_tcp();
    describe_http();
    describe_dns();
}

fn describe_tcp() {
    describe_counter!(
        "rserpool_tcp_sessions_total",
        "TCP gateway sessions opened, by pool"
    );
    describe_gauge!(
        "rserpool_tcp_sessions_active",
        "TCP gateway sessions open now, by pool"
    );
    describe_counter!(
        "rserpool_tcp_sessions_failed_total",
        "sessions closed because they could not fail over, by pool"
    );
    describe_counter!(
        "rserpool_tcp_failovers_total",
        "sessions moved to another PE, by pool and whether a cookie was echoed"
    );
    describe_histogram!(
        "rserpool_tcp_failover_stall_seconds",
        "time from a PE's failure to the next PE connected, by pool"
    );
    describe_counter!(
        "rserpool_tcp_half_closed_expired_total",
        "sessions closed when the PE did not finish after the client's half-close"
    );
    describe_counter!(
        "rserpool_tcp_idle_expired_total",
        "sessions closed after idle_timeout without data"
    );
    describe_counter!(
        "rserpool_tcp_connections_refused_total",
        "clients closed at once because the listener had max_connections"
    );
    describe_counter!(
        "rserpool_tcp_pe_ejections_total",
        "PEs ejected by passive health (failed sessions, success rate), by pool"
    );
}

fn describe_http() {
    describe_counter!(
        "rserpool_http_responses_total",
        "HTTP responses, by route, pool and status class"
    );
    describe_histogram!(
        "rserpool_http_request_duration_seconds",
        "HTTP request time from its head to the response head, by route and pool"
    );
    describe_counter!(
        "rserpool_http_retries_total",
        "requests sent to another PE after a failure or a retried status"
    );
    describe_counter!(
        "rserpool_http_hedges_total",
        "requests also sent to the next PE after the hedge delay"
    );
    describe_counter!(
        "rserpool_http_session_failovers_total",
        "sticky sessions moved to another PE"
    );
    describe_counter!(
        "rserpool_http_pe_ejections_total",
        "PEs ejected by passive health (consecutive failures, success rate)"
    );
    describe_counter!(
        "rserpool_http_pe_busy_total",
        "attempts that passed over a PE at max_requests_per_pe"
    );
    describe_counter!(
        "rserpool_http_bodies_resumed_total",
        "GET bodies cut by their PE and completed from another (Range)"
    );
    describe_counter!(
        "rserpool_http_bodies_cut_total",
        "GET bodies cut by their PE that no other PE could complete"
    );
    describe_counter!(
        "rserpool_http_bodies_held_total",
        "request bodies held for replay"
    );
    describe_counter!(
        "rserpool_http_bodies_not_held_total",
        "request bodies streamed unheld because a body budget was spent"
    );
    describe_gauge!(
        "rserpool_http_held_body_bytes",
        "request-body bytes held for replay now"
    );
    describe_counter!(
        "rserpool_http_connections_refused_total",
        "client connections closed at once because the listener had max_connections"
    );
    describe_counter!(
        "rserpool_http_connections_closed_total",
        "client connections closed by the time limits, by reason"
    );
    describe_counter!(
        "rserpool_http_tunnels_idle_closed_total",
        "upgraded tunnels closed after tunnel_idle_timeout"
    );
}

fn describe_dns() {
    describe_counter!("rserpool_dns_responses_total", "DNS responses, by rcode");
    describe_counter!(
        "rserpool_dns_rate_limited_total",
        "DNS queries dropped or truncated by response rate limiting"
    );
    describe_counter!(
        "rserpool_dns_tcp_connections_refused_total",
        "DNS TCP connections refused at the connection limit"
    );
    describe_counter!(
        "rserpool_dns_tcp_connections_closed_total",
        "DNS TCP connections closed, by reason"
    );
}
