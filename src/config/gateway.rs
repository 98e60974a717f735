//! The `gateway:` section: TCP, HTTP and DNS listeners, routes, sticky sessions,
//! outlier detection, and the checks of a TCP listener's settings.

use std::net::SocketAddr;
use std::time::Duration;

use rserpool_proto::wire::PoolHandle;
use serde::{Deserialize, Deserializer};

use super::values::{ConfigError, duration, optional_duration, parse_duration, pool_handle};

/// The gateways (their pool user is configured in `pool_user`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct GatewaySection {
    /// TCP listeners: each maps a listening address to a pool.
    pub(crate) tcp: Vec<TcpListenerSection>,
    /// HTTP listeners: each routes hosts and paths to pools.
    pub(crate) http: Vec<HttpListenerSection>,
    /// DNS listeners (UDP and TCP on one address): each serves one zone of pools.
    pub(crate) dns: Vec<DnsSection>,
    /// How long SIGTERM waits for open sessions before closing them.
    #[serde(deserialize_with = "duration")]
    pub(crate) drain_timeout: Duration,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            tcp: Vec::new(),
            http: Vec::new(),
            dns: Vec::new(),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// One DNS listener of the gateway.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsSection {
    /// UDP and TCP.
    pub(crate) listen: SocketAddr,
    /// The zone served, e.g. `pool.example.`.
    pub(crate) zone: String,
    /// Labels for pools whose handles are not DNS labels (or to rename them).
    #[serde(default)]
    pub(crate) names: std::collections::BTreeMap<String, String>,
    /// TTL of answers in seconds (0: resolvers ask every time, so the policy decides).
    #[serde(default)]
    pub(crate) ttl: Option<u32>,
    /// PEs per answer at most.
    #[serde(default)]
    pub(crate) answer_count: Option<usize>,
    /// Seconds resolvers cache a negative answer (the SOA minimum).
    #[serde(default)]
    pub(crate) negative_ttl: Option<u32>,
    /// UDP responses per second to one client /24 (IPv6: /56); 0: no limit.
    #[serde(default)]
    pub(crate) rate_limit: Option<u32>,
    /// TCP connections open at once; more are closed at once.
    #[serde(default)]
    pub(crate) tcp_max_connections: Option<usize>,
    /// A TCP connection must bring its next query within this.
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) tcp_idle_timeout: Option<Duration>,
    /// DNS over TLS (RFC 7858) on its own address, certificates as for HTTP.
    pub(crate) tls: Option<DotSection>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DotSection {
    pub(crate) listen: SocketAddr,
    pub(crate) certificates: Vec<CertificateSection>,
}

/// One HTTP listener of the gateway.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpListenerSection {
    pub(crate) listen: SocketAddr,
    pub(crate) routes: Vec<HttpRouteSection>,
    #[serde(default)]
    pub(crate) max_connections: Option<usize>,
    /// A client must send a request's head within this (an HTTP/2 connection, its
    /// first request).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) header_timeout: Option<Duration>,
    /// An HTTP/2 connection idle this long (no byte either way, no request waiting)
    /// is closed.
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) client_idle_timeout: Option<Duration>,
    /// An upgraded tunnel (WebSocket) carrying nothing either way this long is closed.
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) tunnel_idle_timeout: Option<Duration>,
    /// Larger request heads get 431.
    #[serde(default)]
    pub(crate) max_header_bytes: Option<usize>,
    /// Retries per request on average (plus 10 a second).
    #[serde(default)]
    pub(crate) retry_ratio: Option<f64>,
    /// Request-body bytes held for replay by the listener's connections together, and
    /// by one connection (its HTTP/2 streams); a body that does not fit is not held.
    #[serde(default)]
    pub(crate) max_held_body_bytes: Option<usize>,
    #[serde(default)]
    pub(crate) max_held_body_bytes_per_connection: Option<usize>,
    /// Streams one HTTP/2 connection may have open at once.
    #[serde(default)]
    pub(crate) h2_max_concurrent_streams: Option<u32>,
    pub(crate) sticky: Option<StickySection>,
    /// TLS termination: the listener speaks HTTPS (HTTP/2 by ALPN).
    pub(crate) tls: Option<TlsSection>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    pub(crate) certificates: Vec<CertificateSection>,
}

/// One certificate of a TLS listener; the first is the default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateSection {
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
    /// SNI names it serves (`*.example.com` for subdomains).
    #[serde(default)]
    pub(crate) names: Vec<String>,
}

/// Where requests for a host and path prefix go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpRouteSection {
    #[serde(deserialize_with = "pool_handle")]
    pub(crate) pool: PoolHandle,
    /// Exact host or `*.domain`; absent: every host.
    #[serde(default)]
    pub(crate) host: Option<String>,
    #[serde(default)]
    pub(crate) path: Option<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) first_byte_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) idle_timeout: Option<Duration>,
    #[serde(default)]
    pub(crate) max_body: Option<u64>,
    #[serde(default)]
    pub(crate) replay_buffer: Option<usize>,
    #[serde(default)]
    pub(crate) max_attempts: Option<usize>,
    /// A streamed request body slower than this (bytes/s over 10 s windows) gets 408.
    #[serde(default)]
    pub(crate) min_body_rate: Option<u64>,
    /// Response statuses that send an idempotent request with a kept body to the next
    /// PE (502, 503, 504; `[]`: none).
    #[serde(default)]
    pub(crate) retry_on: Option<Vec<u16>>,
    /// Passive health: when a failing PE is ejected.
    #[serde(default)]
    pub(crate) outlier_detection: OutlierSection,
    /// How long a new or returning PE's share of requests ramps up (10s; 0s: at once).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) slow_start: Option<Duration>,
    /// Requests waiting for one PE's answer at once (0: no limit); beyond, the next PE,
    /// and 503 with Retry-After when every PE is at the limit.
    #[serde(default)]
    pub(crate) max_requests_per_pe: Option<usize>,
    /// How long a request finding every PE at its limit waits for a place (0s: 503 at
    /// once; at most 1 024 wait per route).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) queue_timeout: Option<Duration>,
    /// When a GET (any idempotent request with a kept body) still without an answer
    /// also goes to the next PE: `off` (default), a duration, or `p99` (the route's
    /// observed 99th percentile, at least 10 ms).
    #[serde(default, deserialize_with = "hedge")]
    pub(crate) hedge_after: Option<rserpool_gateways::http::Hedge>,
    /// A GET whose PE dies mid-body gets the rest from another PE when the response
    /// has a strong validator (true; false: cut it).
    #[serde(default)]
    pub(crate) resume_cut_gets: Option<bool>,
    /// POSTs (non-idempotent requests with a kept body) get an Idempotency-Key and go
    /// to the next PE when their PE died before answering (false; only for PEs that
    /// answer a repeated key with the first answer, as `pe --serve http` does).
    #[serde(default)]
    pub(crate) idempotency_keys: Option<bool>,
    /// Order the PEs of a resolution by the route's requests waiting at each, fewest
    /// first, ties in the pool policy's order (false: the policy's order).
    #[serde(default)]
    pub(crate) least_requests: Option<bool>,
    /// TLS towards the route's PEs (absent: plain TCP).
    #[serde(default)]
    pub(crate) pe_tls: Option<PeTlsSection>,
    /// HTTP towards the route's PEs: `http1` (the default) or `http2` (h2c with prior
    /// knowledge on plain TCP; offered by ALPN over TLS, where the PE chooses).
    #[serde(default)]
    pub(crate) pe_protocol: PeProtocol,
}

/// The HTTP version a route speaks to its PEs.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PeProtocol {
    #[default]
    Http1,
    Http2,
}

/// TLS towards a route's PEs: whom to trust and which name they must prove.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeTlsSection {
    /// CA certificates (PEM) the PEs' certificates must chain to.
    pub(crate) ca: std::path::PathBuf,
    /// The name the PEs' certificates must carry, sent as SNI; absent: each PE's IP
    /// address (an IP SAN).
    #[serde(default)]
    pub(crate) server_name: Option<String>,
    /// A client certificate chain and its key (PEM), for PEs that ask for one.
    #[serde(default)]
    pub(crate) cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub(crate) key: Option<std::path::PathBuf>,
}

/// A route's passive health (the HTTP gateway library's defaults).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct OutlierSection {
    /// Failures in a row (5xx, refused, broken, timed out) that eject a PE (0: never).
    pub(crate) consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long, up to max_ejection.
    #[serde(deserialize_with = "duration")]
    pub(crate) base_ejection: Duration,
    #[serde(deserialize_with = "duration")]
    pub(crate) max_ejection: Duration,
    /// The largest share of a request's PEs ejected at once (at least one of two).
    pub(crate) max_ejected_percent: u8,
    /// How often PEs are judged by their success rate (0s: never).
    #[serde(deserialize_with = "duration")]
    pub(crate) interval: Duration,
    /// Requests (or sessions) a PE needs in an interval to be judged.
    pub(crate) success_rate_request_volume: u32,
    /// A PE failing more than this share of them is ejected (0: off).
    pub(crate) failure_percentage: u8,
    /// PEs that must qualify for the statistical check (a rate this many standard
    /// deviations below the mean).
    pub(crate) success_rate_minimum_hosts: u32,
    pub(crate) success_rate_stdev_factor: f64,
}

impl Default for OutlierSection {
    fn default() -> Self {
        let library = rserpool_gateways::health::OutlierConfig::default();
        Self {
            consecutive_failures: library.consecutive_failures,
            base_ejection: library.base_ejection,
            max_ejection: library.max_ejection,
            max_ejected_percent: library.max_ejected_percent,
            interval: library.success_rate.interval,
            success_rate_request_volume: library.success_rate.request_volume,
            failure_percentage: library.success_rate.failure_percentage,
            success_rate_minimum_hosts: library.success_rate.minimum_hosts,
            success_rate_stdev_factor: f64::from(library.success_rate.stdev_factor_permille)
                / 1000.0,
        }
    }
}

/// Sticky sessions: the binding travels sealed in a cookie.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct StickySection {
    #[serde(default)]
    pub(crate) cookie: Option<String>,
    /// 32-byte keys in hex (64 digits), the first one current; every gateway that
    /// should serve the same sessions needs them.
    #[serde(default)]
    pub(crate) keys: Vec<String>,
    /// A file with such keys, one per line (instead of or after `keys`).
    #[serde(default)]
    pub(crate) key_file: Option<std::path::PathBuf>,
    /// How long a sealed binding is accepted (it is sealed again at half this age
    /// while the session is active): an older one replayed by a client is refused.
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) max_age: Option<Duration>,
}

/// The keys of a sticky section, read and checked.
pub(crate) fn sticky_keys(section: &StickySection) -> Result<Vec<[u8; 32]>, ConfigError> {
    let mut texts = section.keys.clone();
    if let Some(path) = &section.key_file {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        texts.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    if texts.is_empty() {
        return Err(ConfigError::Invalid(
            "gateway.http.sticky: give keys or key_file (32-byte keys in hex, e.g. from `openssl rand -hex 32`)".into(),
        ));
    }
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let bytes: Option<Vec<u8>> = (text.len() == 64)
                .then(|| {
                    (0..32)
                        .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
                        .collect()
                })
                .flatten();
            bytes
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "gateway.http.sticky: key {} is not 64 hex digits",
                        index + 1
                    ))
                })
        })
        .collect()
}

/// One TCP listener of the gateway.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcpListenerSection {
    pub(crate) listen: SocketAddr,
    #[serde(deserialize_with = "pool_handle")]
    pub(crate) pool: PoolHandle,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) connect_timeout: Option<Duration>,
    /// A PE silent this long while answers are due has failed (TCP control channels
    /// use heartbeats instead).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) response_timeout: Option<Duration>,
    /// A TCP control channel idle this long gets a heartbeat; a PE silent for three
    /// intervals has failed (1s; 100ms to 2s: PEs answer each heartbeat and give up a
    /// gateway silent for 3 s).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) heartbeat_interval: Option<Duration>,
    /// How long one failover may take before the client is given up.
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) failover_deadline: Option<Duration>,
    /// After the client half-closed, how long the PE may take to finish.
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) half_close_timeout: Option<Duration>,
    /// A session with no data either way this long is closed (`0s`: never).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) idle_timeout: Option<Duration>,
    /// Client bytes kept for replay after a failover.
    #[serde(default)]
    pub(crate) replay_buffer: Option<usize>,
    /// Bytes queued towards one side before the other side is no longer read.
    #[serde(default)]
    pub(crate) buffer: Option<usize>,
    #[serde(default)]
    pub(crate) max_connections: Option<usize>,
    /// PPID of data messages to SCTP pool elements.
    #[serde(default)]
    pub(crate) ppid: Option<u32>,
    /// How the client's byte stream is cut into messages for SCTP pool elements
    /// (absent: each chunk read is one message).
    #[serde(default)]
    pub(crate) framing: Option<FramingSection>,
    /// Passive health: when a PE whose sessions keep failing is ejected (as for HTTP
    /// routes; a PE that closes a session is not failing).
    #[serde(default)]
    pub(crate) outlier_detection: OutlierSection,
    /// How long a new or returning PE's share of new sessions ramps up (10s; 0s: at
    /// once).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) slow_start: Option<Duration>,
    /// PEs with fewer of this listener's open sessions first (off by default).
    #[serde(default)]
    pub(crate) least_sessions: Option<bool>,
}

/// A length field in each message's header: `size` bytes (1, 2 or 4, big-endian) at
/// `offset`; the message is that many bytes plus `adjust`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct FramingSection {
    pub(crate) offset: usize,
    pub(crate) size: usize,
    #[serde(default)]
    pub(crate) adjust: i64,
    pub(crate) max_message: Option<usize>,
}

fn hedge<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<rserpool_gateways::http::Hedge>, D::Error> {
    use rserpool_gateways::http::Hedge;
    let text = String::deserialize(deserializer)?;
    let hedge = match text.as_str() {
        "off" => Ok(Hedge::Off),
        "p99" => Ok(Hedge::ObservedP99),
        _ => match parse_duration(&text) {
            Ok(delay) if delay.is_zero() => Ok(Hedge::Off),
            Ok(delay) => Ok(Hedge::After(delay)),
            Err(error) => Err(serde::de::Error::custom(format!(
                "hedge_after {text:?}: give off, p99 or a duration ({error})"
            ))),
        },
    };
    hedge.map(Some)
}
