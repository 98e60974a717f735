//! An HTTP listener's and a route's settings, with their defaults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rserpool_proto::wire::PoolHandle;

use super::sticky::CookieSealer;

/// Where requests for a host and path go, and their limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The `Host` this route serves (port ignored, case-insensitive; `*.example.com`
    /// matches subdomains); `None`: every host.
    pub host: Option<String>,
    /// Path prefix, on segment boundaries (`/api` matches `/api` and `/api/x`).
    pub path_prefix: String,
    pub pool_handle: PoolHandle,
    pub connect_timeout: Duration,
    /// From the request sent to the PE to the response's head.
    pub first_byte_timeout: Duration,
    /// A response body silent this long is cut.
    pub idle_timeout: Duration,
    /// Larger request bodies get 413.
    pub max_body: u64,
    /// Request bodies up to this size are kept so the request can be retried.
    pub replay_buffer: usize,
    /// PEs tried for one request at most.
    pub max_attempts: usize,
    /// A streamed request body must bring at least this many bytes per second,
    /// measured over windows of [`BODY_RATE_WINDOW`] (0: no minimum); slower gets 408.
    pub min_body_rate: u64,
    /// Response statuses that send an idempotent request with a kept body to the next
    /// PE (within `max_attempts` and the retry budget).
    pub retry_on: StatusSet,
    /// When a failing PE is ejected (passive health).
    pub outliers: OutlierConfig,
    /// How long a new or returning PE's share of requests takes to ramp up (zero: at
    /// once).
    pub slow_start: Duration,
    /// Requests of this route waiting for one PE's answer at once (0: no limit); a PE
    /// at the limit is passed over, and when all are, the request waits in the route's
    /// queue for `queue_timeout`, then gets 503.
    pub max_requests_per_pe: usize,
    /// When a request that may be sent again, without an answer yet, goes to the
    /// next PE as well (the first answer wins; paid from the retry budget).
    pub hedge: Hedge,
    /// A GET whose PE dies mid-body gets the rest from another PE (`Range` with a
    /// strong `If-Range` validator), spliced into the same response.
    pub resume_cut_gets: bool,
    /// Non-idempotent requests with a kept body get an `Idempotency-Key` (unless they
    /// bring one) and go to the next PE when their PE died before answering; only for
    /// PEs that answer a repeated key with their first answer.
    pub idempotency_keys: bool,
    /// How long a request that finds every PE at its limit waits for a place (zero:
    /// 503 at once); at most [`MAX_QUEUED`] wait per route.
    pub queue_timeout: Duration,
    /// Whether this route's count of requests waiting for each PE reorders the PEs a
    /// resolution returned: fewest first, ties in the registrar's (the policy's) order.
    pub least_requests: bool,
    /// TLS towards the PEs, their certificates checked; `None`: plain TCP.
    pub pe_tls: Option<Arc<PeTls>>,
    /// HTTP/2 towards the PEs: h2c with prior knowledge on plain TCP, offered by ALPN
    /// over TLS (a PE choosing HTTP/1.1 gets HTTP/1.1).
    pub pe_http2: bool,
}

/// Requests one route's queue holds at most; more get 503 at once.
pub const MAX_QUEUED: usize = 1024;

use super::attempts::StatusSet;
use super::hedge::Hedge;
use super::pe_tls::PeTls;
use super::tls;
use crate::health::OutlierConfig;
pub use crate::health::SLOW_START;

/// Whether a route resumes cut GETs by default (it only ever splices what RFC 9110
/// says may be: the same representation, by a strong validator).
pub const RESUME_CUT_GETS: bool = true;

/// The statuses a route retries by default (HAProxy's and Envoy's gateway errors).
pub const RETRY_ON: [u16; 3] = [502, 503, 504];

/// The windows a request body's minimum rate is measured over.
pub const BODY_RATE_WINDOW: Duration = Duration::from_secs(10);

/// The default minimum rate of a streamed request body, in bytes per second.
pub const MIN_BODY_RATE: u64 = 500;

impl Route {
    /// A route for every host and path with the defaults.
    pub fn new(pool_handle: PoolHandle) -> Self {
        Self {
            host: None,
            path_prefix: "/".to_owned(),
            pool_handle,
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_body: 10 * 1024 * 1024,
            replay_buffer: 64 * 1024,
            max_attempts: 3,
            min_body_rate: MIN_BODY_RATE,
            retry_on: StatusSet::new(&RETRY_ON).unwrap_or_default(),
            outliers: OutlierConfig::default(),
            slow_start: SLOW_START,
            max_requests_per_pe: 0,
            queue_timeout: Duration::ZERO,
            hedge: Hedge::Off,
            resume_cut_gets: RESUME_CUT_GETS,
            idempotency_keys: false,
            least_requests: false,
            pe_tls: None,
            pe_http2: false,
        }
    }

    pub(super) fn matches_host(&self, host: Option<&str>) -> bool {
        match (&self.host, host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(pattern), Some(host)) => match pattern.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                None => pattern.eq_ignore_ascii_case(host),
            },
        }
    }

    pub(super) fn matches_path(&self, path: &str) -> bool {
        let prefix = self.path_prefix.as_str();
        path.strip_prefix(prefix)
            .is_some_and(|rest| prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
    }
}

/// How long an upgraded tunnel may carry nothing by default (HAProxy's `timeout
/// tunnel` is commonly set to an hour).
pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// One HTTP listener of the gateway.
#[derive(Debug, Clone)]
pub struct HttpListenerConfig {
    pub listen: SocketAddr,
    pub routes: Vec<Route>,
    /// Open client connections at most; more are closed at once.
    pub max_connections: usize,
    /// A client must send a request's head within this (slowloris defence); an HTTP/2
    /// connection its first request.
    pub header_timeout: Duration,
    /// An HTTP/2 connection with no byte either way and no request waiting for its
    /// response for this long is closed (GOAWAY).
    pub client_idle_timeout: Duration,
    /// An upgraded tunnel (WebSocket and the like) that carries nothing either way for
    /// this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Larger request heads get 431.
    pub max_header_bytes: usize,
    /// Sticky sessions, when a key is configured.
    pub sticky: Option<CookieSealer>,
    /// TLS termination, when certificates are configured.
    pub tls: Option<Arc<tls::CertificateResolver>>,
    /// Retries allowed per request on average (plus 10 a second), so that a failing
    /// pool is not hit with a multiple of its load.
    pub retry_ratio: f64,
    /// Request-body bytes held for replay by all connections together; a body that
    /// does not fit streams on without replay.
    pub max_held_body_bytes: usize,
    /// The same, per client connection (its HTTP/2 streams together).
    pub max_held_body_bytes_per_connection: usize,
    /// Streams one HTTP/2 connection may have open at once.
    pub h2_max_concurrent_streams: u32,
}

/// The default bytes of request bodies held for replay by one listener.
pub const MAX_HELD_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The default bytes of request bodies held for replay by one connection.
pub const MAX_HELD_BODY_BYTES_PER_CONNECTION: usize = 1024 * 1024;

/// The default streams per HTTP/2 connection (HAProxy's default is 100, nginx's 128).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// Response bytes hyper buffers per HTTP/2 stream for a client that does not read
/// (hyper's default, 400 KiB, times 100 streams is 40 MB per connection).
pub(super) const H2_MAX_SEND_BUFFER: usize = 128 * 1024;

impl HttpListenerConfig {
    /// One route to `pool_handle`, with defaults.
    pub fn new(listen: SocketAddr, pool_handle: PoolHandle) -> Self {
        Self {
            listen,
            routes: vec![Route::new(pool_handle)],
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: TUNNEL_IDLE_TIMEOUT,
            max_header_bytes: 64 * 1024,
            sticky: None,
            tls: None,
            retry_ratio: 0.2,
            max_held_body_bytes: MAX_HELD_BODY_BYTES,
            max_held_body_bytes_per_connection: MAX_HELD_BODY_BYTES_PER_CONNECTION,
            h2_max_concurrent_streams: H2_MAX_CONCURRENT_STREAMS,
        }
    }
}
