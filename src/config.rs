//! The configuration file: YAML, strict (an unknown key is an error naming its path),
//! validated once into typed settings. This is the only module that names the YAML
//! crate. Every key has a default, so an empty file (or none) is a working setup, and
//! command-line flags override the file.
//!
//! Durations are written with a unit: `250ms`, `5s`, `2m`, `1h`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use rserpool_proto::engine::{TimerProfile, TransportKind};
use rserpool_proto::pool_element::HomeChanges;
use rserpool_proto::wire::{Policy, PoolHandle, RegistrarId};
use serde::{Deserialize, Deserializer};

mod control_tls;
mod csp;
pub(crate) use control_tls::{ControlTlsSection, parse_plain_peers};
pub(crate) use csp::{
    CspSection, parse_interval as parse_csp_interval, parse_monitor as parse_csp_monitor,
};

/// A configuration that cannot be used; the process exits with status 64.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {key}: {reason}")]
    Parse {
        path: String,
        key: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The whole file: one optional section per role.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ConfigFile {
    pub(crate) log: LogConfig,
    pub(crate) registrar: RegistrarSection,
    pub(crate) pe: PeSection,
    pub(crate) pool_user: PoolUserSection,
    pub(crate) gateway: GatewaySection,
    pub(crate) admin: AdminSection,
    /// TLS for ASAP and ENRP; absent: plain, unauthenticated (as rsplib).
    pub(crate) tls: Option<ControlTlsSection>,
    /// Status reports to an rsplib `cspmonitor`; off unless a monitor is named.
    pub(crate) csp: CspSection,
}

/// The admin HTTP listener (`/metrics`, `/healthz`); off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminSection {
    pub(crate) listen: Option<SocketAddr>,
    /// A file holding the bearer token that `/log` and `/api/` require (none: open).
    pub(crate) token_file: Option<std::path::PathBuf>,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub(crate) tls: Option<AdminTlsSection>,
}

/// The admin listener's own certificate (any CA: clients such as Prometheus check it).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminTlsSection {
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
}

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
    pub(crate) ttl: u32,
    /// PEs per answer at most.
    #[serde(default = "eight")]
    pub(crate) answer_count: usize,
    /// Seconds resolvers cache a negative answer (the SOA minimum).
    #[serde(default = "five")]
    pub(crate) negative_ttl: u32,
    /// UDP responses per second to one client /24 (IPv6: /56); 0: no limit.
    #[serde(default = "two_hundred")]
    pub(crate) rate_limit: u32,
    /// TCP connections open at once; more are closed at once.
    #[serde(default = "tcp_max_connections")]
    pub(crate) tcp_max_connections: usize,
    /// A TCP connection must bring its next query within this.
    #[serde(default = "ten_seconds", deserialize_with = "duration")]
    pub(crate) tcp_idle_timeout: Duration,
    /// DNS over TLS (RFC 7858) on its own address, certificates as for HTTP.
    pub(crate) tls: Option<DotSection>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DotSection {
    pub(crate) listen: SocketAddr,
    pub(crate) certificates: Vec<CertificateSection>,
}

fn eight() -> usize {
    8
}
fn five() -> u32 {
    5
}
fn two_hundred() -> u32 {
    200
}

/// One HTTP listener of the gateway.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpListenerSection {
    pub(crate) listen: SocketAddr,
    pub(crate) routes: Vec<HttpRouteSection>,
    #[serde(default = "ten_thousand")]
    pub(crate) max_connections: usize,
    /// A client must send a request's head within this (an HTTP/2 connection, its
    /// first request).
    #[serde(default = "ten_seconds", deserialize_with = "duration")]
    pub(crate) header_timeout: Duration,
    /// An HTTP/2 connection idle this long (no byte either way, no request waiting)
    /// is closed.
    #[serde(default = "sixty_seconds", deserialize_with = "duration")]
    pub(crate) client_idle_timeout: Duration,
    /// An upgraded tunnel (WebSocket) carrying nothing either way this long is closed.
    #[serde(default = "tunnel_idle_timeout", deserialize_with = "duration")]
    pub(crate) tunnel_idle_timeout: Duration,
    /// Larger request heads get 431.
    #[serde(default = "sixty_four_kibibytes")]
    pub(crate) max_header_bytes: usize,
    /// Retries per request on average (plus 10 a second).
    #[serde(default = "retry_ratio")]
    pub(crate) retry_ratio: f64,
    /// Request-body bytes held for replay by the listener's connections together, and
    /// by one connection (its HTTP/2 streams); a body that does not fit is not held.
    #[serde(default = "max_held_body_bytes")]
    pub(crate) max_held_body_bytes: usize,
    #[serde(default = "max_held_body_bytes_per_connection")]
    pub(crate) max_held_body_bytes_per_connection: usize,
    /// Streams one HTTP/2 connection may have open at once.
    #[serde(default = "h2_max_concurrent_streams")]
    pub(crate) h2_max_concurrent_streams: u32,
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
    #[serde(default = "root_path")]
    pub(crate) path: String,
    #[serde(default = "two_seconds", deserialize_with = "duration")]
    pub(crate) connect_timeout: Duration,
    #[serde(default = "thirty_seconds", deserialize_with = "duration")]
    pub(crate) first_byte_timeout: Duration,
    #[serde(default = "sixty_seconds", deserialize_with = "duration")]
    pub(crate) idle_timeout: Duration,
    #[serde(default = "ten_mebibytes")]
    pub(crate) max_body: u64,
    #[serde(default = "sixty_four_kibibytes")]
    pub(crate) replay_buffer: usize,
    #[serde(default = "three")]
    pub(crate) max_attempts: usize,
    /// A streamed request body slower than this (bytes/s over 10 s windows) gets 408.
    #[serde(default = "min_body_rate")]
    pub(crate) min_body_rate: u64,
    /// Response statuses that send an idempotent request with a kept body to the next
    /// PE (502, 503, 504; `[]`: none).
    #[serde(default = "retry_on")]
    pub(crate) retry_on: Vec<u16>,
    /// Passive health: when a failing PE is ejected.
    #[serde(default)]
    pub(crate) outlier_detection: OutlierSection,
    /// How long a new or returning PE's share of requests ramps up (10s; 0s: at once).
    #[serde(default = "slow_start", deserialize_with = "duration")]
    pub(crate) slow_start: Duration,
    /// Requests waiting for one PE's answer at once (0: no limit); beyond, the next PE,
    /// and 503 with Retry-After when every PE is at the limit.
    #[serde(default)]
    pub(crate) max_requests_per_pe: usize,
    /// How long a request finding every PE at its limit waits for a place (0s: 503 at
    /// once; at most 1 024 wait per route).
    #[serde(default, deserialize_with = "duration")]
    pub(crate) queue_timeout: Duration,
    /// When a GET (any idempotent request with a kept body) still without an answer
    /// also goes to the next PE: `off` (default), a duration, or `p99` (the route's
    /// observed 99th percentile, at least 10 ms).
    #[serde(default, deserialize_with = "hedge")]
    pub(crate) hedge_after: rserpool_gateways::http::Hedge,
    /// A GET whose PE dies mid-body gets the rest from another PE when the response
    /// has a strong validator (true; false: cut it).
    #[serde(default = "resume_cut_gets")]
    pub(crate) resume_cut_gets: bool,
    /// POSTs (non-idempotent requests with a kept body) get an Idempotency-Key and go
    /// to the next PE when their PE died before answering (false; only for PEs that
    /// answer a repeated key with the first answer, as `pe --serve http` does).
    #[serde(default)]
    pub(crate) idempotency_keys: bool,
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

/// The HTTP gateway library's own default.
fn min_body_rate() -> u64 {
    rserpool_gateways::http::MIN_BODY_RATE
}

fn slow_start() -> Duration {
    rserpool_gateways::http::SLOW_START
}

/// The session layer's own default.
fn heartbeat_interval() -> Duration {
    rserpool_proto::session::SessionConfig::default().heartbeat_interval
}

fn resume_cut_gets() -> bool {
    rserpool_gateways::http::RESUME_CUT_GETS
}

fn retry_on() -> Vec<u16> {
    rserpool_gateways::http::RETRY_ON.to_vec()
}

/// Sticky sessions: the binding travels sealed in a cookie.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct StickySection {
    #[serde(default = "cookie_name")]
    pub(crate) cookie: String,
    /// 32-byte keys in hex (64 digits), the first one current; every gateway that
    /// should serve the same sessions needs them.
    #[serde(default)]
    pub(crate) keys: Vec<String>,
    /// A file with such keys, one per line (instead of or after `keys`).
    #[serde(default)]
    pub(crate) key_file: Option<std::path::PathBuf>,
    /// How long a sealed binding is accepted (it is sealed again at half this age
    /// while the session is active): an older one replayed by a client is refused.
    #[serde(default = "sticky_max_age", deserialize_with = "duration")]
    pub(crate) max_age: Duration,
}

fn sticky_max_age() -> Duration {
    Duration::from_secs(3600)
}

/// The HTTP gateway library's own default.
fn tunnel_idle_timeout() -> Duration {
    rserpool_gateways::http::TUNNEL_IDLE_TIMEOUT
}

/// The HTTP gateway library's own defaults.
fn max_held_body_bytes() -> usize {
    rserpool_gateways::http::MAX_HELD_BODY_BYTES
}

fn max_held_body_bytes_per_connection() -> usize {
    rserpool_gateways::http::MAX_HELD_BODY_BYTES_PER_CONNECTION
}

fn h2_max_concurrent_streams() -> u32 {
    rserpool_gateways::http::H2_MAX_CONCURRENT_STREAMS
}

/// The DNS gateway library's own default.
fn tcp_max_connections() -> usize {
    rserpool_gateways::dns::TcpLimits::default().max_connections
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn sixty_seconds() -> Duration {
    Duration::from_secs(60)
}
fn sixty_four_kibibytes() -> usize {
    64 * 1024
}
fn ten_mebibytes() -> u64 {
    10 << 20
}
fn retry_ratio() -> f64 {
    0.2
}
fn root_path() -> String {
    "/".to_owned()
}
fn three() -> usize {
    3
}
fn cookie_name() -> String {
    "rserpool_session".to_owned()
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
    #[serde(default = "five_seconds", deserialize_with = "duration")]
    pub(crate) connect_timeout: Duration,
    /// A PE silent this long while answers are due has failed (TCP control channels
    /// use heartbeats instead).
    #[serde(default = "thirty_seconds", deserialize_with = "duration")]
    pub(crate) response_timeout: Duration,
    /// A TCP control channel idle this long gets a heartbeat; a PE silent for three
    /// intervals has failed (1s; 100ms to 2s: PEs answer each heartbeat and give up a
    /// gateway silent for 3 s).
    #[serde(default = "heartbeat_interval", deserialize_with = "duration")]
    pub(crate) heartbeat_interval: Duration,
    /// How long one failover may take before the client is given up.
    #[serde(default = "thirty_seconds", deserialize_with = "duration")]
    pub(crate) failover_deadline: Duration,
    /// After the client half-closed, how long the PE may take to finish.
    #[serde(default = "half_close_timeout", deserialize_with = "duration")]
    pub(crate) half_close_timeout: Duration,
    /// A session with no data either way this long is closed (`0s`: never).
    #[serde(default = "tcp_idle_timeout", deserialize_with = "duration")]
    pub(crate) idle_timeout: Duration,
    /// Client bytes kept for replay after a failover.
    #[serde(default = "one_mebibyte")]
    pub(crate) replay_buffer: usize,
    /// Bytes queued towards one side before the other side is no longer read.
    #[serde(default = "quarter_mebibyte")]
    pub(crate) buffer: usize,
    #[serde(default = "ten_thousand")]
    pub(crate) max_connections: usize,
    /// PPID of data messages to SCTP pool elements.
    #[serde(default)]
    pub(crate) ppid: u32,
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
    #[serde(default = "slow_start", deserialize_with = "duration")]
    pub(crate) slow_start: Duration,
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
    #[serde(default = "max_message")]
    pub(crate) max_message: usize,
}

/// The session layer's own default.
fn tcp_idle_timeout() -> Duration {
    rserpool_proto::session::SessionConfig::default()
        .idle_timeout
        .unwrap_or(Duration::ZERO)
}

fn half_close_timeout() -> Duration {
    rserpool_proto::session::SessionConfig::default().half_close_timeout
}

fn max_message() -> usize {
    65_535
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn one_mebibyte() -> usize {
    1 << 20
}
fn quarter_mebibyte() -> usize {
    256 * 1024
}
fn ten_thousand() -> usize {
    10_000
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogConfig {
    /// A tracing filter: `info`, `debug`, `rserpool=debug,warn`, ...
    pub(crate) level: String,
    pub(crate) format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The timer profile, as written in the file.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Profile {
    #[default]
    Rfc,
    Rsplib,
}

impl From<Profile> for TimerProfile {
    fn from(profile: Profile) -> Self {
        match profile {
            Profile::Rfc => Self::Rfc,
            Profile::Rsplib => Self::Rsplib,
        }
    }
}

/// A multicast channel: `off`, or `GROUP:PORT` (IPv4), optionally with the interface
/// address to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Multicast {
    Off,
    Group(SocketAddrV4),
}

impl<'de> Deserialize<'de> for Multicast {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_multicast(&text).map_err(serde::de::Error::custom)
    }
}

pub(crate) fn parse_multicast(text: &str) -> Result<Multicast, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Multicast::Off);
    }
    let group: SocketAddrV4 = text
        .parse()
        .map_err(|_| format!("{text:?} is neither `off` nor an IPv4 GROUP:PORT"))?;
    if !group.ip().is_multicast() {
        return Err(format!("{} is not a multicast address", group.ip()));
    }
    Ok(Multicast::Group(group))
}

/// ASAP announces (registrar side: sent; PE and pool user side: listened to).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AnnounceConfig {
    pub(crate) group: Multicast,
    #[serde(deserialize_with = "duration")]
    pub(crate) interval: Duration,
    pub(crate) ttl: u32,
    /// The interface address for multicast; by default the address the ASAP socket is
    /// bound to. Announces are off when that is a wildcard and no interface is given,
    /// so that nothing leaves through an unintended interface.
    pub(crate) interface: Option<Ipv4Addr>,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        Self {
            group: Multicast::Group(SocketAddrV4::new(Ipv4Addr::new(239, 0, 0, 50), 3863)),
            interval: Duration::from_secs(1),
            ttl: 30,
            interface: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsConfig {
    pub(crate) max_pools: usize,
    pub(crate) max_pool_elements_per_pool: usize,
    pub(crate) max_pool_elements: usize,
    pub(crate) max_addresses_per_pool_element: usize,
    pub(crate) max_pool_elements_per_association: usize,
    /// PEs registered from one host address, and pools its PEs may be in (10 000 and
    /// 1 000).
    pub(crate) max_pool_elements_per_host: usize,
    pub(crate) max_pools_per_host: usize,
    /// Per association and second (2 000 and 100); `null`: unlimited.
    pub(crate) max_handle_resolutions_per_second: Option<u32>,
    pub(crate) max_unreachable_reports_per_second: Option<u32>,
    pub(crate) max_malformed_messages: u32,
    /// Open connections per listener (ASAP, ENRP); when full, the longest idle one
    /// makes room, or the newcomer is closed at once.
    pub(crate) max_connections: usize,
    /// Open connections per listener from one address, likewise.
    pub(crate) max_connections_per_host: usize,
    /// A connection that completes no message (TLS handshake included) within this
    /// is closed.
    #[serde(deserialize_with = "duration")]
    pub(crate) first_message_timeout: Duration,
    /// A message that has begun must be complete within this.
    #[serde(deserialize_with = "duration")]
    pub(crate) message_timeout: Duration,
    /// Bytes of unfinished messages held for all connections of a listener.
    pub(crate) max_unfinished_message_bytes: usize,
}

impl LimitsConfig {
    /// What one listener admits.
    pub(crate) fn admission(&self) -> crate::transport::admission::AdmissionLimits {
        crate::transport::admission::AdmissionLimits {
            max_connections: self.max_connections,
            max_connections_per_host: self.max_connections_per_host,
            first_message_timeout: self.first_message_timeout,
            message_timeout: self.message_timeout,
            max_unfinished_bytes: self.max_unfinished_message_bytes,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let engine = rserpool_proto::registrar::RegistrarConfig::default();
        Self {
            max_pools: engine.limits.max_pools,
            max_pool_elements_per_pool: engine.limits.max_pool_elements_per_pool,
            max_pool_elements: engine.limits.max_pool_elements,
            max_addresses_per_pool_element: engine.limits.max_addresses_per_pool_element,
            max_pool_elements_per_association: engine.max_pool_elements_per_association,
            max_pool_elements_per_host: engine.max_pool_elements_per_host,
            max_pools_per_host: engine.max_pools_per_host,
            max_handle_resolutions_per_second: engine.max_handle_resolutions_per_second,
            max_unreachable_reports_per_second: engine.max_unreachable_reports_per_second,
            max_malformed_messages: engine.max_malformed_messages,
            max_connections: 10_000,
            max_connections_per_host: 1_000,
            first_message_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(10),
            max_unfinished_message_bytes: 32 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RegistrarSection {
    /// The registrar ID (`0x...` or decimal); random when absent.
    #[serde(deserialize_with = "optional_id")]
    pub(crate) id: Option<RegistrarId>,
    pub(crate) profile: Profile,
    /// `sctp` (the standard; what rsplib speaks) or `tcp` (the TCP mapping) for ASAP,
    /// ENRP and the associations to peers.
    pub(crate) transport: TransportKind,
    /// Where ASAP associations are accepted (default: port 3863, with TLS 3864).
    pub(crate) asap: Option<SocketAddr>,
    /// Where ENRP associations are accepted (default: port 9901, with TLS 9902).
    pub(crate) enrp: Option<SocketAddr>,
    /// More addresses of this host for SCTP multi-homing: the ASAP and ENRP endpoints
    /// bind them too (same ports) and advertise them all.
    pub(crate) multihome: Vec<IpAddr>,
    pub(crate) announce: AnnounceConfig,
    #[serde(deserialize_with = "duration")]
    pub(crate) keepalive_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub(crate) keepalive_timeout: Duration,
    pub(crate) max_bad_pe_reports: u32,
    pub(crate) default_items: u32,
    pub(crate) max_items: u32,
    pub(crate) verify_addresses: bool,
    pub(crate) handle_table_page_size: usize,
    pub(crate) limits: LimitsConfig,
    /// Registrars to peer with (their ENRP addresses; `host:port` names resolve at start).
    #[serde(deserialize_with = "addresses")]
    pub(crate) peers: Vec<SocketAddr>,
    /// ENRP_PRESENCE multicast (discovery of peers).
    pub(crate) enrp_multicast: EnrpMulticastConfig,
    /// ENRP timers; each defaults to the profile's value.
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) peer_heartbeat_interval: Option<Duration>,
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) max_time_last_heard: Option<Duration>,
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) max_time_no_response: Option<Duration>,
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) mentor_discovery_timeout: Option<Duration>,
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) takeover_expiry: Option<Duration>,
}

/// ENRP_PRESENCE multicast: `off`, or a group, sent through the interface of the ENRP
/// address (or the one given).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EnrpMulticastConfig {
    pub(crate) group: Multicast,
    pub(crate) ttl: u32,
    pub(crate) interface: Option<Ipv4Addr>,
}

impl Default for EnrpMulticastConfig {
    fn default() -> Self {
        Self {
            group: Multicast::Group(SocketAddrV4::new(Ipv4Addr::new(239, 0, 0, 51), 9901)),
            ttl: 30,
            interface: None,
        }
    }
}

impl Default for RegistrarSection {
    fn default() -> Self {
        let engine = rserpool_proto::registrar::RegistrarConfig::default();
        Self {
            id: None,
            profile: Profile::Rfc,
            transport: TransportKind::Tcp,
            asap: None,
            enrp: None,
            multihome: Vec::new(),
            announce: AnnounceConfig::default(),
            keepalive_interval: engine.keepalive_interval,
            keepalive_timeout: engine.keepalive_timeout,
            max_bad_pe_reports: engine.max_bad_pe_reports,
            default_items: engine.default_items,
            max_items: engine.max_items,
            verify_addresses: engine.verify_addresses,
            handle_table_page_size: engine.handle_table_page_size,
            limits: LimitsConfig::default(),
            peers: Vec::new(),
            enrp_multicast: EnrpMulticastConfig::default(),
            peer_heartbeat_interval: None,
            max_time_last_heard: None,
            max_time_no_response: None,
            mentor_discovery_timeout: None,
            takeover_expiry: None,
        }
    }
}

/// The IANA ports: asap-tcp 3863 and enrp 9901, and for TLS asap-tcp-tls 3864 and
/// enrp-sctp-tls 9902 (no enrp-tcp-tls is registered; the TCP mapping uses the same
/// number).
pub(crate) const fn asap_port(tls: bool) -> u16 {
    if tls { 3864 } else { 3863 }
}

pub(crate) const fn enrp_port(tls: bool) -> u16 {
    if tls { 9902 } else { 9901 }
}

impl RegistrarSection {
    /// The ASAP and ENRP addresses: as configured, else every address on the IANA
    /// port of the plain or the TLS variant.
    pub(crate) fn addresses(&self, tls: bool) -> (SocketAddr, SocketAddr) {
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        (
            self.asap.unwrap_or_else(|| any(asap_port(tls))),
            self.enrp.unwrap_or_else(|| any(enrp_port(tls))),
        )
    }
}

/// How the `pe` agent checks its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HealthCheck {
    /// Always healthy.
    None,
    /// A TCP connect succeeds.
    Tcp,
    /// An HTTP GET of the path answers 2xx or 3xx.
    Http(String),
}

impl<'de> Deserialize<'de> for HealthCheck {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_health(&text).map_err(serde::de::Error::custom)
    }
}

pub(crate) fn parse_health(text: &str) -> Result<HealthCheck, String> {
    match text {
        "none" => Ok(HealthCheck::None),
        "tcp" => Ok(HealthCheck::Tcp),
        _ => match text.strip_prefix("http:") {
            Some(path) if path.starts_with('/') => Ok(HealthCheck::Http(path.to_owned())),
            _ => Err(format!(
                "health check {text:?}: use tcp, http:/PATH or none"
            )),
        },
    }
}

/// One backend the `pe` agent registers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceConfig {
    #[serde(deserialize_with = "pool_handle")]
    pub(crate) pool: PoolHandle,
    pub(crate) backend: SocketAddr,
    #[serde(default = "round_robin", deserialize_with = "policy")]
    pub(crate) policy: Policy,
    #[serde(default = "tcp_check")]
    pub(crate) health: HealthCheck,
    #[serde(default = "two_seconds", deserialize_with = "duration")]
    pub(crate) health_interval: Duration,
    #[serde(default = "one_second", deserialize_with = "duration")]
    pub(crate) health_timeout: Duration,
    /// Failed checks in a row before the PE is deregistered.
    #[serde(default = "one")]
    pub(crate) fall: u32,
    /// Passed checks in a row before it registers again.
    #[serde(default = "one")]
    pub(crate) rise: u32,
    #[serde(default = "thirty_seconds", deserialize_with = "duration")]
    pub(crate) reregistration_interval: Duration,
}

fn round_robin() -> Policy {
    Policy::RoundRobin
}
fn tcp_check() -> HealthCheck {
    HealthCheck::Tcp
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn two_seconds() -> Duration {
    Duration::from_secs(2)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PeSection {
    /// Registrars' ASAP addresses (`host:port` names resolve at start).
    #[serde(deserialize_with = "addresses")]
    pub(crate) registrars: Vec<SocketAddr>,
    pub(crate) profile: Profile,
    /// `sctp` or `tcp`: how registrars are reached (and reach this agent).
    pub(crate) transport: TransportKind,
    /// The agent's own ASAP endpoint (registrars reach it after a takeover); port 0
    /// picks a free port.
    pub(crate) asap: SocketAddr,
    /// More addresses of this host for SCTP multi-homing of the ASAP endpoint.
    pub(crate) multihome: Vec<IpAddr>,
    /// Listen for registrar announces on this group (`off` for static registrars only).
    pub(crate) announce: Multicast,
    /// The interface address to listen for announces on (required with a group).
    pub(crate) announce_interface: Option<Ipv4Addr>,
    /// With TLS off, whose takeover (a keep-alive with the H flag) moves the PEs:
    /// `known` registrars' hosts, or `any` peer.
    pub(crate) home_changes: HomeChanges,
    pub(crate) services: Vec<ServiceConfig>,
}

impl Default for PeSection {
    fn default() -> Self {
        Self {
            registrars: Vec::new(),
            profile: Profile::Rfc,
            transport: TransportKind::Tcp,
            asap: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            multihome: Vec::new(),
            announce: Multicast::Off,
            announce_interface: None,
            home_changes: HomeChanges::default(),
            services: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PoolUserSection {
    /// Registrars' ASAP addresses (`host:port` names resolve at start).
    #[serde(deserialize_with = "addresses")]
    pub(crate) registrars: Vec<SocketAddr>,
    pub(crate) profile: Profile,
    /// `sctp` or `tcp`: how registrars are reached.
    pub(crate) transport: TransportKind,
    pub(crate) announce: Multicast,
    /// The interface address to listen for announces on (required with a group).
    pub(crate) announce_interface: Option<Ipv4Addr>,
    /// How long a resolution may be answered from the cache: `0s` asks every time;
    /// the default is 0s for `resolve` and 1s for the gateways.
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) stale_cache: Option<Duration>,
    /// How long the current registrar may answer nothing while a request waits
    /// before another is hunted (default 2s).
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) registrar_silence: Option<Duration>,
    /// How long past `stale_cache` a pool's last answer may still be served while no
    /// registrar answers (default 30s; 0s: never; only with a cache).
    #[serde(deserialize_with = "duration")]
    pub(crate) max_stale: Duration,
    /// How long a request waits for a registrar before such an answer (default 500ms).
    #[serde(deserialize_with = "duration")]
    pub(crate) stale_answer_after: Duration,
}

impl Default for PoolUserSection {
    fn default() -> Self {
        Self {
            registrars: Vec::new(),
            profile: Profile::Rfc,
            transport: TransportKind::Tcp,
            announce: Multicast::Off,
            announce_interface: None,
            stale_cache: None,
            registrar_silence: None,
            max_stale: Duration::from_secs(30),
            stale_answer_after: Duration::from_millis(500),
        }
    }
}

/// The checks of `gateway.tcp[i]` serde cannot make.
fn validate_tcp_listener(i: usize, listener: &TcpListenerSection) -> Result<(), ConfigError> {
    if listener.buffer == 0 || listener.max_connections == 0 {
        return Err(ConfigError::Invalid(format!(
            "gateway.tcp[{i}]: buffer and max_connections must be above 0"
        )));
    }
    // Our PE library gives up a gateway silent for 3 s (and answers each heartbeat).
    if !(Duration::from_millis(100)..=Duration::from_secs(2)).contains(&listener.heartbeat_interval)
    {
        return Err(ConfigError::Invalid(format!(
            "gateway.tcp[{i}]: heartbeat_interval must be between 100ms and 2s"
        )));
    }
    if let Some(framing) = listener.framing
        && (![1, 2, 4].contains(&framing.size) || framing.max_message == 0)
    {
        return Err(ConfigError::Invalid(format!(
            "gateway.tcp[{i}].framing: size must be 1, 2 or 4 and max_message above 0"
        )));
    }
    Ok(())
}

/// Parses a duration with a unit: `250ms`, `5s`, `1.5s`, `2m`, `1h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 250ms, 5s, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(format!("{text:?} needs a unit: ms, s, m or h")),
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn hedge<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<rserpool_gateways::http::Hedge, D::Error> {
    use rserpool_gateways::http::Hedge;
    let text = String::deserialize(deserializer)?;
    match text.as_str() {
        "off" => Ok(Hedge::Off),
        "p99" => Ok(Hedge::ObservedP99),
        _ => match parse_duration(&text) {
            Ok(delay) if delay.is_zero() => Ok(Hedge::Off),
            Ok(delay) => Ok(Hedge::After(delay)),
            Err(error) => Err(serde::de::Error::custom(format!(
                "hedge_after {text:?}: give off, p99 or a duration ({error})"
            ))),
        },
    }
}

fn policy<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Policy, D::Error> {
    let text = String::deserialize(deserializer)?;
    rserpool_proto::policy::spec::parse(&text).map_err(serde::de::Error::custom)
}

/// How long a `host:port` that does not resolve yet is retried at start (in Kubernetes,
/// a StatefulSet's other pods get their names as they start).
const NAME_RESOLUTION_WAIT: Duration = Duration::from_secs(30);

/// An address from `ADDRESS:PORT`, or `HOST:PORT` resolved by the system resolver
/// (retried for a while: the name may not exist yet). The first address is taken.
pub(crate) fn resolve_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let (host, port) = text
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        .ok_or_else(|| format!("{text:?} is not ADDRESS:PORT or HOST:PORT"))?;
    // Counted tries rather than a clock: this runs before any runtime, at start.
    let pause = Duration::from_millis(500);
    let tries = NAME_RESOLUTION_WAIT.as_millis() / pause.as_millis();
    let port = port.parse::<u16>().unwrap_or(0);
    let mut last = String::from("no address");
    for _ in 0..tries {
        use std::net::ToSocketAddrs as _;
        match (host, port).to_socket_addrs() {
            Ok(mut found) => match found.next() {
                Some(address) => return Ok(address),
                None => last = "no address".to_owned(),
            },
            Err(error) => last = error.to_string(),
        }
        std::thread::sleep(pause);
    }
    Err(format!(
        "{text:?}: the name does not resolve after {NAME_RESOLUTION_WAIT:?} ({last})"
    ))
}

fn addresses<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| resolve_address(text).map_err(serde::de::Error::custom))
        .collect()
}

fn pool_handle<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PoolHandle, D::Error> {
    let text = String::deserialize(deserializer)?;
    PoolHandle::new(text.as_bytes()).map_err(serde::de::Error::custom)
}

/// Parses a registrar ID: `0x` and hex, or decimal; never 0.
pub(crate) fn parse_id(text: &str) -> Result<RegistrarId, String> {
    let value = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|_| format!("{text:?} is not a 32-bit ID (hex with 0x, or decimal)"))?;
    if value == 0 {
        return Err("a registrar ID cannot be 0 (0 means unknown)".into());
    }
    Ok(RegistrarId(value))
}

fn optional_id<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<RegistrarId>, D::Error> {
    let value = serde_json_like::IdValue::deserialize(deserializer)?;
    let text = match value {
        serde_json_like::IdValue::Number(n) => n.to_string(),
        serde_json_like::IdValue::Text(t) => t,
    };
    parse_id(&text).map(Some).map_err(serde::de::Error::custom)
}

mod serde_json_like {
    /// An ID written as a YAML number or a string (`0x11223344`).
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    pub(super) enum IdValue {
        Number(u64),
        Text(String),
    }
}

/// The configuration of a pool-user command (`resolve`, `gateway`): the file if given,
/// with `--registrar` flags replacing its registrars, and the default registrar when
/// neither names one.
pub(crate) fn load_pool_user(
    path: Option<&Path>,
    registrars: &[std::net::SocketAddr],
    transport: Option<TransportKind>,
) -> Result<ConfigFile, ConfigError> {
    let mut file = match path {
        Some(path) => load(path)?,
        None => ConfigFile::default(),
    };
    if !registrars.is_empty() {
        file.pool_user.registrars = registrars.to_vec();
    }
    if let Some(transport) = transport {
        file.pool_user.transport = transport;
    }
    Ok(file)
}

/// Reads and validates a configuration file.
pub(crate) fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.display().to_string(),
        error,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses configuration text; `origin` names it in errors.
pub(crate) fn parse(text: &str, origin: &str) -> Result<ConfigFile, ConfigError> {
    let mut failed_at = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
        let mut track = serde_path_to_error::Track::new();
        let result = ConfigFile::deserialize(serde_path_to_error::Deserializer::new(
            deserializer,
            &mut track,
        ));
        if result.is_err() {
            failed_at = Some(track.path().to_string());
        }
        result
    });
    let config = result.map_err(|error| {
        // The library's message spans several lines (a source snippet); keep the first.
        let message = error.to_string();
        let first = message.lines().next().unwrap_or_default();
        ConfigError::Parse {
            path: origin.to_owned(),
            key: failed_at.unwrap_or_else(|| ".".into()),
            reason: first.trim_start_matches("error: ").to_owned(),
        }
    })?;
    validate(&config)?;
    Ok(config)
}

fn validate(config: &ConfigFile) -> Result<(), ConfigError> {
    tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .map_err(|e| ConfigError::Invalid(format!("log.level {:?}: {e}", config.log.level)))?;
    let r = &config.registrar;
    if r.keepalive_interval.is_zero() || r.keepalive_timeout.is_zero() {
        return Err(ConfigError::Invalid(
            "registrar.keepalive_interval and keepalive_timeout must be above 0".into(),
        ));
    }
    let l = &r.limits;
    if l.max_connections == 0
        || l.max_connections_per_host == 0
        || l.first_message_timeout.is_zero()
        || l.message_timeout.is_zero()
        || l.max_unfinished_message_bytes < rserpool_proto::wire::MAX_FRAME
    {
        return Err(ConfigError::Invalid(format!(
            "registrar.limits: max_connections, max_connections_per_host, first_message_timeout and message_timeout must be above 0, max_unfinished_message_bytes at least one message ({} bytes)",
            rserpool_proto::wire::MAX_FRAME
        )));
    }
    if l.max_pool_elements_per_host == 0 || l.max_pools_per_host == 0 {
        return Err(ConfigError::Invalid(
            "registrar.limits: max_pool_elements_per_host and max_pools_per_host must be above 0 (every PE would be refused)".into(),
        ));
    }
    if r.max_items == 0 || r.default_items == 0 || r.handle_table_page_size == 0 {
        return Err(ConfigError::Invalid(
            "registrar.default_items, max_items and handle_table_page_size must be above 0".into(),
        ));
    }
    if config
        .pool_user
        .registrar_silence
        .is_some_and(|silence| silence.is_zero())
    {
        return Err(ConfigError::Invalid(
            "pool_user.registrar_silence must be above 0".into(),
        ));
    }
    if config.pool_user.stale_answer_after.is_zero() {
        return Err(ConfigError::Invalid(
            "pool_user.stale_answer_after must be above 0 (a registrar's answer would never be waited for)".into(),
        ));
    }

    for (section, group, interface) in [
        ("pe", &config.pe.announce, config.pe.announce_interface),
        (
            "pool_user",
            &config.pool_user.announce,
            config.pool_user.announce_interface,
        ),
    ] {
        if matches!(group, Multicast::Group(_)) && interface.is_none() {
            return Err(ConfigError::Invalid(format!(
                "{section}.announce needs {section}.announce_interface (the address of the interface to listen on)"
            )));
        }
    }
    for (i, service) in config.pe.services.iter().enumerate() {
        if service.backend.port() == 0 {
            return Err(ConfigError::Invalid(format!(
                "pe.services[{i}].backend needs a port"
            )));
        }
        if service.fall == 0 || service.rise == 0 || service.health_interval.is_zero() {
            return Err(ConfigError::Invalid(format!(
                "pe.services[{i}]: fall, rise and health_interval must be above 0"
            )));
        }
    }
    for (i, listener) in config.gateway.tcp.iter().enumerate() {
        validate_tcp_listener(i, listener)?;
    }
    for (i, listener) in config.gateway.http.iter().enumerate() {
        if listener.h2_max_concurrent_streams == 0 {
            return Err(ConfigError::Invalid(format!(
                "gateway.http[{i}]: h2_max_concurrent_streams must be above 0"
            )));
        }
    }
    for (section, transport, multihome) in [
        (
            "registrar",
            config.registrar.transport,
            &config.registrar.multihome,
        ),
        ("pe", config.pe.transport, &config.pe.multihome),
    ] {
        if transport == TransportKind::Tcp && !multihome.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{section}.multihome needs {section}.transport: sctp (TCP has one address)"
            )));
        }
    }
    Ok(())
}

/// The address a multicast channel should use, given the socket's bind address.
pub(crate) fn multicast_interface(bind: IpAddr, configured: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    configured.or(match bind {
        IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example in config/ and deploy/config/ parses (ARCHITECTURE.md house style
    /// 11).
    #[test]
    fn rate_limits_are_on_by_default_and_null_turns_them_off() {
        let default = parse("", "empty.yaml").unwrap().registrar.limits;
        assert_eq!(default.max_handle_resolutions_per_second, Some(2_000));
        assert_eq!(default.max_unreachable_reports_per_second, Some(100));
        let off = parse(
            "registrar:\n  limits:\n    max_handle_resolutions_per_second: null\n",
            "off.yaml",
        )
        .unwrap()
        .registrar
        .limits;
        assert_eq!(off.max_handle_resolutions_per_second, None);
        assert_eq!(off.max_unreachable_reports_per_second, Some(100));
    }

    #[test]
    fn home_changes_are_known_registrars_unless_any_is_asked_for() {
        let pe = |yaml: &str| parse(yaml, "pe.yaml").map(|c| c.pe.home_changes);
        assert_eq!(pe("").unwrap(), HomeChanges::KnownRegistrars);
        assert_eq!(
            pe("pe:\n  home_changes: known\n").unwrap(),
            HomeChanges::KnownRegistrars
        );
        assert_eq!(pe("pe:\n  home_changes: any\n").unwrap(), HomeChanges::Any);
        assert!(pe("pe:\n  home_changes: anyone\n").is_err());
    }

    /// `config/registrar.yaml`, `pe.yaml` and `gateway.yaml` run side by side on one
    /// host: no two of their listeners, nor a listener and one of the PE's backends
    /// (other programs listen there), share an address and port.
    #[test]
    fn the_role_examples_run_side_by_side_without_port_clashes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let example = |name: &str| load(&root.join(name)).unwrap();
        let registrar = example("registrar.yaml");
        let pe = example("pe.yaml");
        let gateway = example("gateway.yaml");
        let mut bound: Vec<(&str, SocketAddr)> = Vec::new();
        bound.extend(registrar.registrar.asap.map(|a| ("registrar asap", a)));
        bound.extend(registrar.registrar.enrp.map(|a| ("registrar enrp", a)));
        for (role, file) in [
            ("registrar", &registrar),
            ("pe", &pe),
            ("gateway", &gateway),
        ] {
            bound.extend(file.admin.listen.map(|a| (role, a)));
        }
        if pe.pe.asap.port() != 0 {
            bound.push(("pe asap", pe.pe.asap));
        }
        let listeners = gateway.gateway.tcp.iter().map(|l| l.listen);
        let listeners = listeners
            .chain(gateway.gateway.http.iter().map(|l| l.listen))
            .chain(gateway.gateway.dns.iter().map(|l| l.listen));
        bound.extend(listeners.map(|a| ("gateway listener", a)));
        bound.extend(pe.pe.services.iter().map(|s| ("pe backend", s.backend)));
        let clash = |a: SocketAddr, b: SocketAddr| {
            a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        for (i, (what, address)) in bound.iter().enumerate() {
            for (other, other_address) in bound.iter().skip(i + 1) {
                assert!(
                    !clash(*address, *other_address),
                    "{what} {address} and {other} {other_address}"
                );
            }
        }
        assert!(bound.len() >= 8, "{bound:?}");
    }

    #[test]
    fn every_example_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut count = 0;
        for dir in [root.join("config"), root.join("deploy/config")] {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    if let Err(error) = load(&path) {
                        panic!("{error}");
                    }
                    count += 1;
                }
            }
        }
        assert!(count >= 7, "examples found: {count}");
    }

    /// Every key the configuration structs accept is shown (set or commented out) in an
    /// example file: config/ is the reference the README points to.
    #[test]
    fn every_key_is_documented_in_an_example() {
        let source = [
            include_str!("config.rs"),
            include_str!("config/control_tls.rs"),
        ]
        .concat();
        let mut fields = std::collections::BTreeSet::new();
        let mut in_struct = false;
        let mut deserialized = false;
        for line in source.lines() {
            let line = line.trim();
            if line.starts_with("#[derive(") {
                deserialized = line.contains("Deserialize");
            } else if line.starts_with("pub(crate) struct ") && line.ends_with('{') {
                in_struct = deserialized;
            } else if line == "}" {
                in_struct = false;
            } else if in_struct
                && let Some(field) = line.strip_prefix("pub(crate) ")
                && let Some((name, _)) = field.split_once(':')
            {
                fields.insert(name.to_owned());
            }
        }
        assert!(fields.len() > 40, "fields found: {fields:?}");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut examples = String::new();
        for dir in [root.join("config"), root.join("deploy/config")] {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                examples.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        let documented = |name: &str| {
            examples.lines().any(|line| {
                let line = line.trim_start().trim_start_matches('#').trim_start();
                let line = line.trim_start_matches("- ").trim_start_matches('{');
                line.starts_with(&format!("{name}:"))
                    || line.contains(&format!("{{{name}:"))
                    || line.contains(&format!(", {name}:"))
            })
        };
        let missing: Vec<&String> = fields.iter().filter(|f| !documented(f)).collect();
        assert!(
            missing.is_empty(),
            "keys missing from config/*.yaml: {missing:?}"
        );
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let error = parse("registrar:\n  limits:\n    max_pol: 3\n", "test.yaml").unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with(
                "test.yaml: registrar.limits.max_pol: line 3 column 5: unknown field `max_pol`"
            ),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
        let error = parse(
            "pe:\n  services:\n    - pool: P\n      backend: 127.0.0.1:80\n      helth: tcp\n",
            "x",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("pe.services[0].helth"),
            "{error}"
        );
    }

    #[test]
    fn values_are_validated() {
        assert!(parse("registrar:\n  keepalive_interval: 5\n", "x").is_err());
        assert!(parse("registrar:\n  announce:\n    group: 10.0.0.1:3863\n", "x").is_err());
        assert!(parse("registrar:\n  id: 0\n", "x").is_err());
        assert!(parse("log:\n  level: \"rserpool=loud\"\n", "x").is_err());
        let config = parse(
            "registrar:\n  id: 0x11223344\n  announce:\n    group: \"off\"\n",
            "x",
        )
        .unwrap_or_default();
        assert_eq!(config.registrar.id, Some(RegistrarId(0x1122_3344)));
        assert_eq!(config.registrar.announce.group, Multicast::Off);
        assert_eq!(parse("", "x").unwrap_or_default(), ConfigFile::default());
    }
}
