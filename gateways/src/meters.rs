//! `# HELP` for the gateways' metric families (the series themselves are made where
//! they are counted), and the per-PE series with their bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use metrics::{Counter, Histogram, describe_counter, describe_gauge, describe_histogram};
use rserpool_proto::wire::PoolElementId;

/// PEs of one route or listener with series of their own; later ones share
/// `pe="other"` (PE identifiers are new with every restart: unbounded otherwise).
pub const MAX_PE_SERIES: usize = 64;

/// Requests per PE of one HTTP route (with their response-head times), or sessions per
/// PE of one TCP listener.
#[derive(Debug)]
pub(crate) struct PeMeters {
    count_family: &'static str,
    time_family: Option<&'static str>,
    pool: String,
    known: Mutex<HashMap<PoolElementId, PeSeries>>,
    other: PeSeries,
}

#[derive(Debug, Clone)]
struct PeSeries {
    ok: Counter,
    failed: Counter,
    seconds: Option<Histogram>,
}

impl PeMeters {
    /// An HTTP route's: `rserpool_http_pe_requests_total`, `_response_seconds`.
    pub(crate) fn http(pool: &str) -> Self {
        Self::new(
            "rserpool_http_pe_requests_total",
            Some("rserpool_http_pe_response_seconds"),
            pool,
        )
    }

    /// A TCP listener's: `rserpool_tcp_pe_sessions_total`.
    pub(crate) fn tcp(pool: &str) -> Self {
        Self::new("rserpool_tcp_pe_sessions_total", None, pool)
    }

    fn new(count_family: &'static str, time_family: Option<&'static str>, pool: &str) -> Self {
        let mut meters = Self {
            count_family,
            time_family,
            pool: pool.to_owned(),
            known: Mutex::new(HashMap::new()),
            other: PeSeries {
                ok: Counter::noop(),
                failed: Counter::noop(),
                seconds: None,
            },
        };
        meters.other = meters.series("other".to_owned());
        meters
    }

    fn series(&self, pe: String) -> PeSeries {
        let pool = self.pool.clone();
        PeSeries {
            ok: metrics::counter!(self.count_family, "pool" => pool.clone(), "pe" => pe.clone(), "result" => "ok"),
            failed: metrics::counter!(self.count_family, "pool" => pool.clone(), "pe" => pe.clone(), "result" => "failed"),
            seconds: self
                .time_family
                .map(|family| metrics::histogram!(family, "pool" => pool, "pe" => pe)),
        }
    }

    /// One request (session) to `pe`; `took`: until its response head, when one came.
    pub(crate) fn record(&self, pe: PoolElementId, ok: bool, took: Option<Duration>) {
        let series = self.known.lock().ok().map(|mut known| {
            if let Some(series) = known.get(&pe) {
                return series.clone();
            }
            if known.len() >= MAX_PE_SERIES {
                return self.other.clone();
            }
            let series = self.series(pe.to_string());
            known.insert(pe, series.clone());
            series
        });
        let series = series.as_ref().unwrap_or(&self.other);
        if ok { &series.ok } else { &series.failed }.increment(1);
        if let (Some(histogram), Some(took)) = (&series.seconds, took) {
            histogram.record(took.as_secs_f64());
        }
    }
}

/// Describes every family of the TCP, HTTP and DNS gateways; called once the
/// process's recorder is installed.
pub fn describe() {
    describe_tcp();
    describe_http();
    describe_dns();
}

fn describe_tcp() {
    describe_counter!(
        "rserpool_tcp_pe_sessions_total",
        "TCP sessions per PE, by result (the first 64 PEs of a listener; later ones as pe=other)"
    );
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
        "rserpool_tcp_sessions_handed_over_total",
        "sessions carried by a binary upgrade, by pool and direction (departed: to the next process, arrived: from the previous one)"
    );
    describe_counter!(
        "rserpool_tcp_handover_failures_total",
        "sessions lost in a binary upgrade (a socket or record that would not convert), by pool"
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
        "rserpool_http_pe_requests_total",
        "requests sent to each PE, by result (the first 64 PEs of a route; later ones as pe=other)"
    );
    describe_histogram!(
        "rserpool_http_pe_response_seconds",
        "time from sending a request to a PE to its response head, by PE"
    );
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
        "rserpool_http_pe_tls_failures_total",
        "TLS handshakes with PEs that failed (certificate not trusted or not naming the PE, no TLS), by pool"
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
        "rserpool_dns_udp_queries_dropped_total",
        "DNS queries over UDP dropped unanswered, by reason (busy: 4096 in progress; malformed)"
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
