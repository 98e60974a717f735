//! The HTTP gateway: a reverse proxy in front of a pool. Each request goes to a PE of
//! the route's pool in the pool's policy order; a PE that refuses, resets or times out
//! is reported (ENDPOINT_UNREACHABLE) and the request is retried on the next one when
//! that is safe (nothing was sent, or the method is idempotent and the body was
//! buffered). Sticky sessions are bound to a PE by a sealed cookie ([`sticky`]) and move
//! to another PE when theirs dies, with the PE's latest ASAP cookie echoed to the new
//! one.
//!
//! The ASAP session layer over HTTP is project-local (there is no standard mapping): a PE
//! hands the gateway its session state in an `RSerPool-Cookie` response header (base64),
//! which the gateway strips and keeps; after a re-home the first request to the new PE
//! carries it back as `RSerPool-Cookie-Echo`, and every request of a sticky session names
//! the session in `RSerPool-Session` (16 hex digits, stable across PEs).

mod attempts;
pub mod forward;
mod h1;
mod head;
mod hedge;
mod held;
mod idle;
mod min_rate;
mod response_head;
mod resume;
pub mod sticky;
pub mod tls;
mod upstream;
mod watch;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{Counter, Histogram};
use rserpool_proto::wire::{PoolElement, PoolElementId, PoolHandle, TransportProtocol};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use self::attempts::StatusSet;
pub use self::hedge::{HEDGE_FLOOR, Hedge, MIN_SAMPLES};
use self::sticky::{Binding, CookieSealer};
use self::upstream::{Outgoing, OutgoingBody, ResponseBody, Upstream};
pub use crate::health::OutlierConfig;
use crate::health::PoolHealth;
use crate::{Directory, DirectoryError, Lifecycle, random_u64};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies the gateway sends either way.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

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
}

/// Requests one route's queue holds at most; more get 503 at once.
pub const MAX_QUEUED: usize = 1024;

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
        }
    }

    fn matches_host(&self, host: Option<&str>) -> bool {
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

    fn matches_path(&self, path: &str) -> bool {
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
const H2_MAX_SEND_BUFFER: usize = 128 * 1024;

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

/// A route at run time: its connections to PEs (pooled per PE) and meters.
struct LiveRoute {
    route: Route,
    upstream: Arc<Upstream>,
    meters: RouteMeters,
    budget: RetryBudget,
    health: Mutex<RouteHealth>,
    /// Where its ejections are posted for the admin API.
    ejections: crate::health::EjectionBoard,
    /// A PE's place was given back (`max_requests_per_pe`), and requests queued.
    freed: tokio::sync::Notify,
    queued: std::sync::atomic::AtomicUsize,
}

/// What a route knows of its PEs' health: ejections and slow starts, latencies, and
/// requests under way.
struct RouteHealth {
    pes: PoolHealth,
    /// Response-head times (a hedge delay from the observed p99).
    latencies: hedge::Latencies,
    /// Requests waiting for each PE's answer (PEs with none are absent).
    waiting: HashMap<PoolElementId, usize>,
}

/// A request's place among those waiting for one PE (`max_requests_per_pe`); given
/// back when dropped. Without a limit nothing is counted (`live` is `None`).
struct PeSlot<'a> {
    live: Option<&'a LiveRoute>,
    pe: PoolElementId,
}

impl Drop for PeSlot<'_> {
    fn drop(&mut self) {
        let Some(live) = self.live else {
            return;
        };
        live.health(|health| {
            if let Some(count) = health.waiting.get_mut(&self.pe) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    health.waiting.remove(&self.pe);
                }
            }
        });
        live.freed.notify_one();
    }
}

impl LiveRoute {
    /// A place among the requests waiting for `pe`, unless it has `max_requests_per_pe`.
    fn slot(&self, pe: PoolElementId) -> Option<PeSlot<'_>> {
        let limit = self.route.max_requests_per_pe;
        if limit == 0 {
            return Some(PeSlot { live: None, pe });
        }
        let taken = self.health(|health| {
            let count = health.waiting.entry(pe).or_default();
            if *count >= limit {
                return false;
            }
            *count += 1;
            true
        });
        (taken != Some(false)).then_some(PeSlot {
            live: Some(self),
            pe,
        })
    }

    /// Waits in the route's queue until a PE's place is given back (`true`), or until
    /// `deadline` or with the queue full (`false`).
    async fn wait_for_place(&self, deadline: Instant) -> bool {
        /// A place in the queue, given back however the wait ends (the client may go).
        struct Queued<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if crate::now() >= deadline {
            return false;
        }
        let queued = self
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _place = Queued(&self.queued);
        if queued >= MAX_QUEUED {
            return false;
        }
        tokio::time::timeout_at(deadline.into(), self.freed.notified())
            .await
            .is_ok()
    }

    /// Runs `f` on the route's health (a poisoned lock: skipped).
    fn health<R>(&self, f: impl FnOnce(&mut RouteHealth) -> R) -> Option<R> {
        self.health.lock().ok().map(|mut health| f(&mut health))
    }

    /// Records how a request to `pe` went (`offered`: the PEs the request could use;
    /// `head_after`: when its response head came); an ejection is logged and counted.
    fn observe(&self, pe: PoolElementId, ok: bool, offered: usize, head_after: Option<Duration>) {
        self.meters.pes.record(pe, ok, head_after);
        let now = crate::now();
        let observed = self.health(|health| {
            if let Some(elapsed) = head_after {
                health.latencies.record(elapsed);
            }
            health.pes.observe(pe, ok, offered, now)
        });
        for ejection in observed.unwrap_or_default() {
            self.meters.ejections.increment(1);
            let pool = self.route.pool_handle.to_string();
            self.ejections.post(&pool, &ejection, "requests", now);
        }
    }
}

struct RouteMeters {
    /// By status class: 1xx to 5xx.
    responses: [Counter; 5],
    duration: Histogram,
    retries: Counter,
    failovers: Counter,
    ejections: Counter,
    /// Attempts that passed over a PE at its request limit.
    busy: Counter,
    /// Requests sent to a second PE while the first had not answered.
    hedges: Counter,
    /// Response bodies completed from another PE, and ones that could not be.
    resume: resume::ResumeMeters,
    /// Requests and response-head times per PE.
    pes: crate::meters::PeMeters,
}

impl RouteMeters {
    fn new(route: &Route) -> Self {
        let pool = route.pool_handle.to_string();
        let name = format!(
            "{}{}",
            route.host.as_deref().unwrap_or("*"),
            route.path_prefix
        );
        let labels = [("route", name), ("pool", pool)];
        let responses = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            let mut labels = labels.to_vec();
            labels.push(("class", class.to_owned()));
            metrics::counter!("rserpool_http_responses_total", &labels)
        });
        Self {
            responses,
            duration: metrics::histogram!("rserpool_http_request_duration_seconds", &labels),
            retries: metrics::counter!("rserpool_http_retries_total", &labels),
            failovers: metrics::counter!("rserpool_http_session_failovers_total", &labels),
            ejections: metrics::counter!("rserpool_http_pe_ejections_total", &labels),
            busy: metrics::counter!("rserpool_http_pe_busy_total", &labels),
            hedges: metrics::counter!("rserpool_http_hedges_total", &labels),
            resume: resume::ResumeMeters {
                resumed: metrics::counter!("rserpool_http_bodies_resumed_total", &labels),
                cut: metrics::counter!("rserpool_http_bodies_cut_total", &labels),
            },
            pes: crate::meters::PeMeters::http(&route.pool_handle.to_string()),
        }
    }
}

/// A token bucket for retries: each request adds `ratio` tokens, time adds 10 a second,
/// a retry takes one.
struct RetryBudget {
    ratio: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    const PER_SECOND: f64 = 10.0;
    const CAP: f64 = 100.0;

    fn new(ratio: f64) -> Self {
        Self {
            ratio,
            state: Mutex::new((Self::CAP, crate::now())),
        }
    }

    fn deposit(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = (state.0 + self.ratio).min(Self::CAP);
        }
    }

    fn withdraw(&self) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let at = crate::now();
        let refill = at.saturating_duration_since(state.1).as_secs_f64() * Self::PER_SECOND;
        *state = ((state.0 + refill).min(Self::CAP), at);
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

struct State<D> {
    routing: Reloader,
    https: bool,
    directory: Arc<D>,
    /// The listener's `max_connections`: client connections, and upgraded tunnels
    /// (which outlive their HTTP connection) while they are open.
    slots: Arc<Semaphore>,
    /// How long a connection hyper serves may go without a first request, and idle.
    header_timeout: Duration,
    client_idle_timeout: Duration,
    /// How long an upgraded tunnel may carry nothing either way.
    tunnel_idle_timeout: Duration,
    /// Connections closed for the time limits, by reason.
    closed_no_request: Counter,
    closed_idle: Counter,
    /// Request-body bytes held for replay, over all connections, and per connection.
    held_bodies: Arc<Semaphore>,
    held_body_bytes_per_connection: usize,
    held_meters: held::HeldMeters,
}

/// A listener's routes and sticky-session keys: replaced whole by a reload, while
/// requests under way finish with the ones they started with.
struct Routing {
    routes: Vec<LiveRoute>,
    /// Some route names a host (else the `Host` header need not be read).
    routes_by_host: bool,
    sticky: Option<CookieSealer>,
    /// TLS listener: cookies are `Secure`.
    https: bool,
}

impl Routing {
    fn new(config: &HttpListenerConfig, ejections: &crate::health::EjectionBoard) -> Self {
        Self {
            routes_by_host: config.routes.iter().any(|route| route.host.is_some()),
            routes: config
                .routes
                .iter()
                .map(|route| LiveRoute {
                    upstream: Upstream::new(route.connect_timeout),
                    meters: RouteMeters::new(route),
                    budget: RetryBudget::new(config.retry_ratio),
                    health: Mutex::new(RouteHealth {
                        pes: PoolHealth::new(route.outliers, route.slow_start, random_u64()),
                        latencies: hedge::Latencies::default(),
                        waiting: HashMap::new(),
                    }),
                    ejections: ejections.clone(),
                    freed: tokio::sync::Notify::new(),
                    queued: std::sync::atomic::AtomicUsize::new(0),
                    route: route.clone(),
                })
                .collect(),
            sticky: config.sticky.clone(),
            https: config.tls.is_some(),
        }
    }
}

/// Changes the routes and sticky keys of a running listener (SIGHUP). Listen address,
/// TLS, limits and timeouts of the listener itself need a restart.
#[derive(Clone)]
pub struct Reloader {
    routing: Arc<std::sync::RwLock<Arc<Routing>>>,
    ejections: crate::health::EjectionBoard,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

impl Reloader {
    /// The routing of `config`, for [`serve`]; its routes post their ejections on
    /// `ejections` (the gateway's [`Lifecycle::ejections`]).
    pub fn new(config: &HttpListenerConfig, ejections: crate::health::EjectionBoard) -> Self {
        let routing = Arc::new(Routing::new(config, &ejections));
        Self {
            routing: Arc::new(std::sync::RwLock::new(routing)),
            ejections,
        }
    }

    /// Takes the routes and sticky keys of `config` for new requests.
    pub fn reload(&self, config: &HttpListenerConfig) {
        let routing = Arc::new(Routing::new(config, &self.ejections));
        if let Ok(mut current) = self.routing.write() {
            *current = routing;
        }
    }

    fn current(&self) -> Option<Arc<Routing>> {
        self.routing.read().ok().map(|routing| routing.clone())
    }
}

/// Accepts clients until shut down and serves their requests (HTTP/1.1, and HTTP/2
/// with prior knowledge).
pub async fn serve<D: Directory>(
    socket: TcpListener,
    config: HttpListenerConfig,
    routing: Reloader,
    directory: Arc<D>,
    lifecycle: Lifecycle,
) {
    let state = Arc::new(State {
        routing,
        https: config.tls.is_some(),
        directory,
        slots: Arc::new(Semaphore::new(config.max_connections)),
        header_timeout: config.header_timeout,
        client_idle_timeout: config.client_idle_timeout,
        tunnel_idle_timeout: config.tunnel_idle_timeout,
        closed_no_request: metrics::counter!("rserpool_http_connections_closed_total", "listen" => config.listen.to_string(), "reason" => "no_request"),
        closed_idle: metrics::counter!("rserpool_http_connections_closed_total", "listen" => config.listen.to_string(), "reason" => "idle"),
        held_bodies: held::ReplayBudget::listener(config.max_held_body_bytes),
        held_body_bytes_per_connection: config.max_held_body_bytes_per_connection,
        held_meters: held::HeldMeters {
            bytes: metrics::gauge!("rserpool_http_held_body_bytes", "listen" => config.listen.to_string()),
            held: metrics::counter!("rserpool_http_bodies_held_total", "listen" => config.listen.to_string()),
            not_held: metrics::counter!("rserpool_http_bodies_not_held_total", "listen" => config.listen.to_string()),
        },
    });
    let acceptor = match &config.tls {
        Some(resolver) => match tls::server_config(resolver.clone()) {
            Ok(tls_config) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls_config))),
            Err(error) => {
                tracing::error!(listen = %config.listen, %error, "TLS setup failed: listener not served");
                return;
            }
        },
        None => None,
    };
    let handshake_timeout = config.header_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.h2_max_concurrent_streams)
        .max_send_buf_size(H2_MAX_SEND_BUFFER);
    let builder = Arc::new(builder);
    let limits = h1::Limits {
        header_timeout: config.header_timeout,
        max_header_bytes: config.max_header_bytes,
    };
    let refused = metrics::counter!("rserpool_http_connections_refused_total", "listen" => config.listen.to_string());
    loop {
        let accepted = tokio::select! {
            () = lifecycle.stop_accepting.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Ok(permit) = state.slots.clone().try_acquire_owned() else {
            refused.increment(1);
            tracing::warn!(%peer, limit = config.max_connections, "connection limit reached: closing a client");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let lifecycle = lifecycle.clone();
        let acceptor = acceptor.clone();
        lifecycle.sessions.clone().spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    // A client that does not finish its handshake in time is dropped
                    // (the header timeout covers the TLS part too).
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        // HTTP/2 by ALPN is hyper's; HTTP/1.1 starts on the fast path.
                        Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            serve_connection(tls, &builder, state, peer, &lifecycle).await
                        }
                        Ok(Ok(tls)) => {
                            h1::serve(tls, state, peer, limits, builder, &lifecycle).await
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => h1::serve(stream, state, peer, limits, builder, &lifecycle).await,
            }
            drop(permit);
        });
    }
}

/// Serves one client connection with hyper until it ends, breaks a time limit (see
/// `watch`) or the gateway stops.
async fn serve_connection<I, D>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    state: Arc<State<D>>,
    peer: SocketAddr,
    lifecycle: &Lifecycle,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    D: Directory,
{
    let activity = watch::Activity::new(crate::now());
    let io = TokioIo::new(watch::Watched::new(io, activity.clone()));
    let forwarding = Arc::new(forward::Forwarding::new(peer, state.https));
    let watchdog = state.clone();
    let requests = activity.clone();
    let budget = held::ReplayBudget::new(
        state.held_bodies.clone(),
        state.held_body_bytes_per_connection,
        state.held_meters.clone(),
    );
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        let forwarding = forwarding.clone();
        let budget = budget.clone();
        let waiting = requests.request();
        async move {
            let _waiting = waiting;
            let mut request: Request<Incoming> = request;
            let upgrade = if forward::is_upgrade(request.headers()) {
                // The tunnel takes a connection slot of its own: it outlives this
                // connection (whose slot is given back when hyper hands it over).
                let Ok(slot) = state.slots.clone().try_acquire_owned() else {
                    return Ok(text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "connection limit reached: no room for a tunnel",
                    ));
                };
                Some(Tunnel {
                    client: hyper::upgrade::on(&mut request),
                    slot,
                    idle_timeout: state.tunnel_idle_timeout,
                })
            } else {
                None
            };
            let (parts, body) = request.into_parts();
            let request = ClientRequest {
                parts,
                body: ClientBody::Streaming(body, budget),
                upgrade,
            };
            Ok::<_, Infallible>(handle(&state, peer, &forwarding, request).await)
        }
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    let mut connection = std::pin::pin!(connection);
    let mut check = std::pin::pin!(tokio::time::sleep(watchdog.header_timeout));
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            () = lifecycle.stop_accepting.cancelled() => break,
            () = check.as_mut() => {
                let verdict = activity.verdict(
                    crate::now(),
                    watchdog.header_timeout,
                    watchdog.client_idle_timeout,
                );
                match verdict {
                    watch::Verdict::Live { check_at } => check.as_mut().reset(check_at.into()),
                    watch::Verdict::NoRequest => {
                        watchdog.closed_no_request.increment(1);
                        tracing::debug!(%peer, "no request within header_timeout: closing");
                        return;
                    }
                    watch::Verdict::Idle => {
                        watchdog.closed_idle.increment(1);
                        tracing::debug!(%peer, "idle for client_idle_timeout: closing");
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(watchdog.header_timeout, connection.as_mut()).await;
                        return;
                    }
                }
            }
        }
    }
    // Finish what is under way; keep-alive ends (HTTP/2: GOAWAY).
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        _ = connection.as_mut() => {}
        () = lifecycle.close_sessions.cancelled() => {}
    }
}

/// The route for a request: host-specific routes before host-less ones, then the longest
/// path prefix.
fn route_for<'a>(routes: &'a [LiveRoute], host: Option<&str>, path: &str) -> Option<&'a LiveRoute> {
    routes
        .iter()
        .filter(|live| live.route.matches_host(host) && live.route.matches_path(path))
        .max_by_key(|live| (live.route.host.is_some(), live.route.path_prefix.len()))
}

/// The request's host without port: `Host`, else the URI's authority (HTTP/2).
fn request_host(request: &http::request::Parts) -> Option<String> {
    let raw = request
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri.authority().map(|a| a.as_str().to_owned()))?;
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default().to_owned(),
        None => raw.split(':').next().unwrap_or_default().to_owned(),
    };
    Some(host.to_ascii_lowercase())
}

fn text(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A request as the client connection hands it over.
struct ClientRequest {
    parts: http::request::Parts,
    body: ClientBody,
    /// The client's side of an `Upgrade` it asked for.
    upgrade: Option<Tunnel>,
}

/// A client's side of an upgrade (WebSocket and the like) and the connection slot the
/// tunnel holds while it is open.
struct Tunnel {
    client: hyper::upgrade::OnUpgrade,
    slot: tokio::sync::OwnedSemaphorePermit,
    idle_timeout: Duration,
}

/// A request's body as the client connection hands it over.
enum ClientBody {
    /// Read by hyper as the request goes on; held for replay within the budget.
    Streaming(Incoming, held::ReplayBudget),
    /// Read whole already (the HTTP/1.1 fast path, [`h1`]).
    Read(Bytes),
}

/// How the request body is held: whole (so the request can be sent again; its bytes
/// charged until the request is over) or streaming.
enum RequestBody {
    Whole(Bytes, held::Held),
    Streaming(ProxyBody),
}

#[derive(Debug)]
enum BodyError {
    TooLarge,
    TooSlow,
    Read,
}

/// Reads up to `replay` bytes of the body while `budget` has room for them; a larger
/// body, or one the budget cannot hold, streams on (prefix first), held to the route's
/// minimum rate all along.
async fn hold_body(
    body: Incoming,
    route: &Route,
    budget: &held::ReplayBudget,
) -> Result<RequestBody, BodyError> {
    let (replay, max) = (route.replay_buffer, route.max_body);
    let body = min_rate::MinRate::new(body, route.min_body_rate, BODY_RATE_WINDOW);
    let mut body = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    let mut held = BytesMut::new();
    let mut charged = held::Held::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                BodyError::TooLarge
            } else if error.is::<min_rate::TooSlow>() {
                BodyError::TooSlow
            } else {
                BodyError::Read
            }
        })?;
        if let Ok(data) = frame.into_data() {
            held.extend_from_slice(&data);
            let over_budget = held.len() <= replay && !budget.hold(&mut charged, data.len());
            if over_budget {
                budget.refused();
            }
            if held.len() > replay || over_budget {
                let prefix = held.freeze();
                return Ok(RequestBody::Streaming(
                    Prefixed {
                        prefix: Some(prefix),
                        rest: body,
                    }
                    .boxed_unsync(),
                ));
            }
        }
    }
    Ok(RequestBody::Whole(held.freeze(), charged))
}

/// A body whose first bytes were already read.
struct Prefixed<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        hint.set_lower(hint.lower() + prefix);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The PE's HTTP address (its TCP user transport).
fn pe_address(pe: &PoolElement) -> Option<SocketAddr> {
    matches!(pe.user_transport.protocol, TransportProtocol::Tcp(_))
        .then(|| pe.user_transport.addresses.first())
        .flatten()
        .map(|address| SocketAddr::new(*address, pe.user_transport.port))
}

/// What the access log and the sticky cookie need to know of a request.
struct Outcome {
    response: Response<ProxyBody>,
    pe: Option<PoolElementId>,
    attempts: usize,
}

async fn handle<D: Directory>(
    state: &State<D>,
    peer: SocketAddr,
    forwarding: &forward::Forwarding,
    request: ClientRequest,
) -> Response<ProxyBody> {
    let started = crate::now();
    let method = request.parts.method.clone();
    // A clone of the URI shares its bytes; the path is for routing and the access log.
    let uri = request.parts.uri.clone();
    let path = uri.path();
    let Some(routing) = state.routing.current() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "routes unavailable");
    };
    let host = if routing.routes_by_host {
        request_host(&request.parts)
    } else {
        None
    };
    let Some(live) = route_for(&routing.routes, host.as_deref(), path) else {
        tracing::info!(target: "rserpool::access", %peer, %method, path, status = 404, "no route");
        return text(StatusCode::NOT_FOUND, "no route for this host and path");
    };
    live.budget.deposit();
    let outcome = proxy(state, &routing, live, forwarding, request, started).await;
    let status = outcome.response.status();
    let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
    if let Some(counter) = live.meters.responses.get(class) {
        counter.increment(1);
    }
    let elapsed = crate::now().saturating_duration_since(started);
    live.meters.duration.record(elapsed.as_secs_f64());
    tracing::info!(
        target: "rserpool::access",
        %peer,
        %method,
        path,
        status = status.as_u16(),
        pool = %live.route.pool_handle,
        pe = outcome.pe.map(|id| id.to_string()).unwrap_or_default(),
        attempts = outcome.attempts,
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    outcome.response
}

async fn proxy<D: Directory>(
    state: &State<D>,
    routing: &Routing,
    live: &LiveRoute,
    forwarding: &forward::Forwarding,
    request: ClientRequest,
    started: Instant,
) -> Outcome {
    let ClientRequest {
        mut parts,
        body,
        upgrade: client_upgrade,
    } = request;
    let route = &live.route;
    let refuse = |status, message| Outcome {
        response: text(status, message),
        pe: None,
        attempts: 0,
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > route.max_body) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let upgrade = client_upgrade.is_some();
    let body = match body {
        ClientBody::Streaming(body, budget) => match hold_body(body, route, &budget).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
            }
            Err(BodyError::TooSlow) => {
                return refuse(StatusCode::REQUEST_TIMEOUT, "request body too slow");
            }
            Err(BodyError::Read) => {
                return refuse(StatusCode::BAD_REQUEST, "request body unreadable");
            }
        },
        // Within max_body (checked above); kept for replay only up to replay_buffer.
        // Read whole by the HTTP/1.1 loop (one request at a time per connection).
        ClientBody::Read(bytes) if bytes.len() <= route.replay_buffer => {
            RequestBody::Whole(bytes, held::Held::default())
        }
        ClientBody::Read(bytes) => RequestBody::Streaming(
            Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync(),
        ),
    };
    let binding = routing
        .sticky
        .as_ref()
        .and_then(|sealer| sealer.from_headers(&parts.headers, unix_seconds()))
        .filter(|binding| binding.pool_handle == route.pool_handle);
    let mut pes = match state
        .directory
        .resolve(route.pool_handle, u32::try_from(route.max_attempts).ok())
        .await
    {
        Ok(pes) if !pes.is_empty() => pes,
        Ok(_) | Err(DirectoryError::UnknownPool) => {
            let message = format!(
                "pool {} has no pool element (none registered, or all gone)",
                route.pool_handle
            );
            let mut outcome = refuse(StatusCode::SERVICE_UNAVAILABLE, &message);
            outcome
                .response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return outcome;
        }
        Err(DirectoryError::Unavailable) => {
            let mut outcome = refuse(StatusCode::SERVICE_UNAVAILABLE, "no registrar reachable");
            outcome
                .response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return outcome;
        }
    };
    // A sticky session goes to its PE while that PE is in the pool.
    if let Some(binding) = &binding
        && let Some(index) = pes.iter().position(|pe| pe.id == binding.pe_id)
    {
        let bound = pes.remove(index);
        pes.insert(0, bound);
    }

    forward::strip_hop_by_hop(&mut parts.headers, upgrade);
    forward::strip_gateway_headers(&mut parts.headers);
    forwarding.apply(&mut parts.headers, parts.version);
    if parts.version == Version::HTTP_2
        && !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, value);
    }
    let session = routing.sticky.as_ref().map(|_| {
        binding
            .as_ref()
            .map_or_else(random_u64, |binding| binding.session)
    });
    if let Some(session) = session
        && let Ok(value) = HeaderValue::from_str(&format!("{session:016x}"))
    {
        parts.headers.insert(forward::SESSION, value);
    }
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // The held bytes stay charged until the request is over (any attempt may send them).
    let (whole, streaming, _held) = match body {
        RequestBody::Whole(bytes, held) => (Some(bytes), None, held),
        RequestBody::Streaming(body) => (None, Some(body), held::Held::default()),
    };
    let idempotent = idempotent(&parts.method) && !upgrade;
    // A keyed route: a POST with a kept body carries an Idempotency-Key (the client's,
    // or one made here), which its PEs honour, so it may go to the next PE when its PE
    // died before answering.
    let keyed = route.idempotency_keys && !idempotent && !upgrade && whole.is_some();
    if keyed
        && !parts.headers.contains_key(forward::IDEMPOTENCY_KEY)
        && let Ok(key) =
            HeaderValue::from_str(&format!("\"{:016x}{:016x}\"", random_u64(), random_u64()))
    {
        parts.headers.insert(forward::IDEMPOTENCY_KEY, key);
    }

    let mut usable: Vec<(&PoolElement, SocketAddr)> = pes
        .iter()
        .filter_map(|pe| Some((pe, pe_address(pe)?)))
        .collect();
    let sticky_first = binding
        .as_ref()
        .zip(usable.first())
        .is_some_and(|(binding, (pe, _))| binding.pe_id == pe.id);
    let hedge_delay = live
        .health(|health| {
            health.pes.order(
                &mut usable,
                usize::from(sticky_first),
                |(pe, _)| pe.id,
                started,
            );
            health.latencies.delay(route.hedge)
        })
        .flatten();
    let plan = attempts::Plan {
        candidates: usable.len(),
        max_attempts: route.max_attempts,
        replayable: whole.is_some(),
        idempotent,
        keyed,
        retry_on: route.retry_on,
    };
    let request = Attempting {
        parts: &parts,
        target: path_and_query,
        whole,
        declared,
        binding: binding.as_ref(),
        usable: &usable,
        plan,
        hedge_delay,
        started,
    };
    let (end, tried) = match run_attempts(state, live, &request, streaming).await {
        Ok(Delivered {
            response,
            pe,
            rehomed,
            tried,
        }) => {
            if rehomed {
                live.meters.failovers.increment(1);
                tracing::info!(pool = %route.pool_handle, to = %pe, "sticky session moved to another pool element");
            }
            let resumable = route
                .resume_cut_gets
                .then(|| resume::resumable(&parts.method, &parts.headers, &response))
                .flatten();
            let mut response = finish_response(
                routing,
                live,
                response,
                client_upgrade,
                binding.as_ref(),
                session,
                pe,
            );
            if let Some(resumable) = resumable {
                let request = resume::Request {
                    target: path_and_query.to_owned(),
                    headers: std::mem::take(&mut parts.headers),
                };
                let source = resume_source(live, &usable, pe);
                let meters = live.meters.resume.clone();
                response = response
                    .map(|body| resumable.wrap(body, request, source, meters).boxed_unsync());
            }
            return Outcome {
                response,
                pe: Some(pe),
                attempts: tried,
            };
        }
        Err(given_up) => given_up,
    };
    if end.reason == attempts::Reason::BudgetSpent {
        tracing::warn!(pool = %route.pool_handle, "retry budget spent: not retrying");
    }
    let message = match end.reason {
        attempts::Reason::Busy => "every pool element is at its request limit",
        _ if end.status == StatusCode::GATEWAY_TIMEOUT => "the pool element did not answer in time",
        _ => "no pool element could serve the request",
    };
    let mut response = text(end.status, message);
    if end.reason == attempts::Reason::Busy {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Outcome {
        response,
        pe: None,
        attempts: tried,
    }
}

/// A request on its way to the PEs, as its attempts need it.
struct Attempting<'a> {
    parts: &'a http::request::Parts,
    target: &'a str,
    /// The body, when kept whole (any attempt may send it).
    whole: Option<Bytes>,
    declared: Option<u64>,
    binding: Option<&'a Binding>,
    /// The PEs to try, in order, with their addresses.
    usable: &'a [(&'a PoolElement, SocketAddr)],
    plan: attempts::Plan,
    hedge_delay: Option<Duration>,
    started: Instant,
}

/// The response a request gets from a PE.
struct Delivered {
    response: Response<ResponseBody>,
    pe: PoolElementId,
    /// A sticky session went to another PE than its own.
    rehomed: bool,
    /// PEs the request was sent to.
    tried: usize,
}

/// Attempts under way.
enum Flight {
    Next(attempts::Step),
    One(attempts::Attempt),
    Two(attempts::Race),
}

/// How one attempt ended: its PE, how long it took, and the response or why there is
/// none.
type AttemptEnd = (
    PoolElementId,
    Duration,
    Result<Response<ResponseBody>, attempts::Failure>,
);

/// Sends `request` to its PEs as attempts.rs decides: one at a time, a second one when
/// the hedge delay passes; the answer to deliver, or how the request gave up (and the
/// PEs it was sent to).
async fn run_attempts<D: Directory>(
    state: &State<D>,
    live: &LiveRoute,
    request: &Attempting<'_>,
    mut streaming: Option<ProxyBody>,
) -> Result<Delivered, (attempts::GiveUp, usize)> {
    let route = &live.route;
    let first = std::pin::pin!(None);
    let mut lanes = hedge::Lanes::new(first);
    let mut flight = Flight::Next(attempts::start(request.plan));
    let mut tried = 0;
    let queue_deadline = request.started + route.queue_timeout;
    loop {
        flight = match flight {
            Flight::Next(attempts::Step::GiveUp(end)) => {
                // Every PE at its limit (nothing sent): wait for a place, start over.
                if end.reason == attempts::Reason::Busy && live.wait_for_place(queue_deadline).await
                {
                    Flight::Next(attempts::start(request.plan))
                } else {
                    return Err((end, tried));
                }
            }
            Flight::Next(attempts::Step::Try(attempt)) => {
                let pe = attempt.pe();
                match launch(live, request, &mut streaming, pe, tried == 0) {
                    Launch::Started(sending) => {
                        lanes.start(pe, sending);
                        tried += 1;
                        lanes.hedge_at(request.hedge_delay.map(|delay| crate::now() + delay));
                        Flight::One(attempt)
                    }
                    Launch::Busy => {
                        live.meters.busy.increment(1);
                        Flight::Next(attempt.busy())
                    }
                    Launch::Impossible(end) => return Err((end, tried)),
                }
            }
            under_way => match lanes.next().await {
                hedge::Event::HedgeDue => match under_way {
                    Flight::One(attempt) => match attempt.hedge(|| live.budget.withdraw()) {
                        Ok(race) => {
                            let pe = race.hedge_pe();
                            match launch(live, request, &mut streaming, pe, false) {
                                Launch::Started(sending) => {
                                    lanes.start(pe, sending);
                                    tried += 1;
                                    live.meters.hedges.increment(1);
                                    Flight::Two(race)
                                }
                                Launch::Busy | Launch::Impossible(_) => {
                                    live.meters.busy.increment(1);
                                    Flight::One(race.lost(pe))
                                }
                            }
                        }
                        Err(attempt) => Flight::One(attempt),
                    },
                    racing => racing,
                },
                hedge::Event::Done(pe, (element, elapsed, Ok(response))) => {
                    let status = response.status();
                    live.observe(
                        element,
                        !status.is_server_error(),
                        request.usable.len(),
                        Some(elapsed),
                    );
                    let next = after_answer(live, request, under_way, pe, status);
                    if let Some(next) = next {
                        next
                    } else {
                        lanes.clear();
                        return Ok(Delivered {
                            response,
                            pe: element,
                            rehomed: request.binding.is_some_and(|b| b.pe_id != element),
                            tried,
                        });
                    }
                }
                hedge::Event::Done(pe, (element, _, Err(failure))) => {
                    live.observe(element, false, request.usable.len(), None);
                    if failure.reports_unreachable() {
                        state
                            .directory
                            .report_unreachable(route.pool_handle, element)
                            .await;
                    }
                    if matches!(under_way, Flight::Two(_)) {
                        // The other goes on alone, and may be hedged again.
                        lanes.hedge_at(request.hedge_delay.map(|delay| crate::now() + delay));
                    }
                    after_failure(live, under_way, pe, failure)
                }
            },
        };
    }
}

/// Where the rest of a response from `pe` can come from: the other PEs in the
/// policy's order, then `pe` itself (it may be back).
fn resume_source(
    live: &LiveRoute,
    usable: &[(&PoolElement, SocketAddr)],
    pe: PoolElementId,
) -> resume::Source {
    let (this, others): (Vec<_>, Vec<_>) = usable.iter().partition(|(element, _)| element.id == pe);
    let candidates = others.iter().chain(&this).map(|(_, address)| *address);
    resume::Source {
        upstream: live.upstream.clone(),
        candidates: candidates.collect(),
        first_byte_timeout: live.route.first_byte_timeout,
        idle_timeout: live.route.idle_timeout,
        max_resumptions: live.route.max_attempts,
    }
}

/// What follows an answer from the attempt at candidate `pe`: `None` delivers it.
fn after_answer(
    live: &LiveRoute,
    request: &Attempting<'_>,
    under_way: Flight,
    pe: usize,
    status: StatusCode,
) -> Option<Flight> {
    match under_way {
        Flight::One(attempt) => match attempt.answered(status, || live.budget.withdraw()) {
            attempts::Answered::Retry(next) => {
                // Dropped unread: its connection closes.
                live.meters.retries.increment(1);
                Some(Flight::Next(attempts::Step::Try(next)))
            }
            attempts::Answered::Deliver => None,
        },
        Flight::Two(race) => match race.answered(pe, status) {
            attempts::RaceAnswer::Continue(alone) => Some(Flight::One(alone)),
            attempts::RaceAnswer::Deliver { abandoned } => {
                // The slower PE lost the race: a frozen one is ejected after a few (it
                // is not reported: it may just be slow).
                if let Some(&(slow, _)) = request.usable.get(abandoned) {
                    live.observe(slow.id, false, request.usable.len(), None);
                }
                None
            }
        },
        Flight::Next(step) => Some(Flight::Next(step)),
    }
}

/// What follows the failure of the attempt at candidate `pe`.
fn after_failure(
    live: &LiveRoute,
    under_way: Flight,
    pe: usize,
    failure: attempts::Failure,
) -> Flight {
    match under_way {
        Flight::One(attempt) => {
            let step = attempt.failed(failure, || live.budget.withdraw());
            if matches!(step, attempts::Step::Try(_)) {
                live.meters.retries.increment(1);
            }
            Flight::Next(step)
        }
        Flight::Two(race) => Flight::One(race.lost(pe)),
        Flight::Next(step) => Flight::Next(step),
    }
}

/// An attempt, or why it cannot start.
enum Launch<F> {
    Started(F),
    /// The PE is at its limit of requests.
    Busy,
    Impossible(attempts::GiveUp),
}

/// Starts the attempt at candidate `pe` (`first`: the request's first, which may
/// reuse its start time; a streamed body goes with it).
fn launch<'a>(
    live: &'a LiveRoute,
    request: &'a Attempting<'a>,
    streaming: &mut Option<ProxyBody>,
    pe: usize,
    first: bool,
) -> Launch<impl Future<Output = AttemptEnd> + 'a> {
    let Some(&(element, address)) = request.usable.get(pe) else {
        return Launch::Impossible(attempts::GiveUp {
            status: StatusCode::BAD_GATEWAY,
            reason: attempts::Reason::Exhausted,
        });
    };
    let Some(slot) = live.slot(element.id) else {
        return Launch::Busy;
    };
    let body = match (&request.whole, streaming.take()) {
        (Some(bytes), _) => OutgoingBody::Whole(bytes.clone()),
        (None, Some(body)) => OutgoingBody::Streaming {
            body,
            length: request.declared,
        },
        // A streamed body goes with the first attempt only (attempts.rs).
        (None, None) => {
            return Launch::Impossible(attempts::GiveUp {
                status: StatusCode::BAD_GATEWAY,
                reason: attempts::Reason::NotResendable,
            });
        }
    };
    // A sticky session re-homed to another PE brings the ASAP cookie of its old one.
    let mut extra = Vec::new();
    if let Some(cookie) = request
        .binding
        .filter(|binding| binding.pe_id != element.id)
        .and_then(|binding| binding.asap_cookie.as_deref())
        && let Ok(value) = HeaderValue::from_str(&BASE64.encode(cookie))
    {
        extra.push((forward::COOKIE_ECHO, value));
    }
    let outgoing = Outgoing {
        method: &request.parts.method,
        target: request.target,
        headers: &request.parts.headers,
        extra,
        body,
    };
    // The first attempt reuses the request's start time (one clock read less per
    // request); a retry or hedge gets its own.
    let start = if first { request.started } else { crate::now() };
    let id = element.id;
    Launch::Started(async move {
        let _slot = slot;
        let sent = tokio::time::timeout_at(
            (start + live.route.first_byte_timeout).into(),
            live.upstream.send(address, outgoing, start),
        )
        .await;
        // For the per-PE response times and an observed-p99 hedge.
        let elapsed = crate::now().saturating_duration_since(start);
        let result = match sent {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.is_connect() => Err(attempts::Failure::NotSent),
            Ok(Err(_)) => Err(attempts::Failure::Lost),
            Err(_) => Err(attempts::Failure::TimedOut),
        };
        (id, elapsed, result)
    })
}

/// The PE's response as the client gets it: hop-by-hop headers gone, `Via` added, the
/// session cookie (re)issued, an upgrade bridged.
fn finish_response(
    routing: &Routing,
    live: &LiveRoute,
    response: Response<ResponseBody>,
    client_upgrade: Option<Tunnel>,
    binding: Option<&Binding>,
    session: Option<u64>,
    pe_id: PoolElementId,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let asap_cookie = parts
        .headers
        .remove(forward::COOKIE)
        .and_then(|value| BASE64.decode(value.as_bytes()).ok());
    if let (Some(sealer), Some(session)) = (&routing.sticky, session) {
        let kept = binding.and_then(|b| b.asap_cookie.clone());
        let now = unix_seconds();
        let mut next = Binding {
            session,
            pool_handle: live.route.pool_handle,
            pe_id,
            asap_cookie: asap_cookie.or(kept),
            issued: binding.map_or(now, |b| b.issued),
            sealed: binding.map_or(now, |b| b.sealed),
        };
        // Sealed again when it changed, and when half its accepted age is gone (so an
        // active session's binding never expires; sticky.rs: the replay window).
        let reseal = binding != Some(&next) || sealer.due_for_resealing(&next, now);
        next.sealed = now;
        if reseal && let Some(value) = sealer.seal(&next) {
            let secure = if routing.https { "; Secure" } else { "" };
            let cookie = format!(
                "{}={value}; Path=/; HttpOnly; SameSite=Lax{secure}",
                sealer.name()
            );
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                parts.headers.append(header::SET_COOKIE, value);
            }
        }
    }
    forward::strip_hop_by_hop(&mut parts.headers, switching);
    forward::add_via(&mut parts.headers, Version::HTTP_11);
    if switching && let Some(client_upgrade) = client_upgrade {
        if let Some(upstream) = body.into_upgraded() {
            tokio::spawn(bridge(client_upgrade, upstream));
        }
        return Response::from_parts(
            parts,
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
    }
    let body = idle::IdleTimeout::new(body, live.route.idle_timeout).boxed_unsync();
    Response::from_parts(parts, body)
}

/// The current time as an HTTP `Date` (RFC 9110 §5.6.7).
fn http_date() -> String {
    #[expect(
        clippy::disallowed_methods,
        reason = "a response's Date is wall-clock time"
    )]
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

fn unix_seconds() -> u64 {
    #[expect(
        clippy::disallowed_methods,
        reason = "a cookie's issue date is wall-clock time"
    )]
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_secs())
}

/// Joins the client's and the PE's upgraded connections (WebSocket and the like); the
/// PE's bytes that came with its 101 go to the client first. The tunnel ends when
/// either side does, or when it carried nothing either way for its idle timeout; its
/// connection slot is given back then.
async fn bridge(tunnel: Tunnel, (upstream, early): (tokio::net::TcpStream, Bytes)) {
    use tokio::io::AsyncWriteExt as _;
    let Tunnel {
        client,
        slot: _slot,
        idle_timeout,
    } = tunnel;
    let Ok(client) = client.await else {
        return;
    };
    let mut client = TokioIo::new(client);
    if client.write_all(&early).await.is_err() {
        return;
    }
    // Every byte either way passes the PE's side.
    let activity = watch::Activity::new(crate::now());
    let mut upstream = watch::Watched::new(upstream, activity.clone());
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let mut copy = std::pin::pin!(copy);
    loop {
        let quiet_until = activity.last_byte() + idle_timeout;
        tokio::select! {
            _ = copy.as_mut() => return,
            () = tokio::time::sleep_until(quiet_until.into()) => {
                if activity.last_byte() + idle_timeout <= crate::now() {
                    metrics::counter!("rserpool_http_tunnels_idle_closed_total").increment(1);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str) -> Route {
        Route {
            host: host.map(str::to_owned),
            path_prefix: prefix.to_owned(),
            ..Route::new(PoolHandle::new(b"P").unwrap())
        }
    }

    #[test]
    fn path_prefixes_match_on_segment_boundaries() {
        let api = route(None, "/api");
        assert!(api.matches_path("/api"));
        assert!(api.matches_path("/api/v1"));
        assert!(!api.matches_path("/apix"));
        assert!(!api.matches_path("/"));
        assert!(route(None, "/").matches_path("/anything"));
        assert!(route(None, "/static/").matches_path("/static/a.css"));
    }

    #[test]
    fn hosts_match_exactly_or_by_wildcard() {
        let exact = route(Some("Example.com"), "/");
        assert!(exact.matches_host(Some("example.com")));
        assert!(!exact.matches_host(Some("www.example.com")));
        assert!(!exact.matches_host(None));
        let wildcard = route(Some("*.example.com"), "/");
        assert!(wildcard.matches_host(Some("www.example.com")));
        assert!(!wildcard.matches_host(Some("example.com")));
        assert!(!wildcard.matches_host(Some("badexample.com")));
    }

    #[test]
    fn retry_budget_runs_out_and_refills_with_requests() {
        let budget = RetryBudget::new(0.5);
        let mut granted = 0;
        while budget.withdraw() {
            granted += 1;
            assert!(granted <= 200, "the budget is bounded");
        }
        assert!(granted >= 100);
        budget.deposit();
        budget.deposit();
        assert!(budget.withdraw(), "two requests at ratio 0.5 buy one retry");
    }
}
