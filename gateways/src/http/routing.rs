//! A listener's routes at run time: each route's connections, meters, retry budget
//! and PE health, the sticky-session keys, and their replacement on reload.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header;
use metrics::{Counter, Histogram};
use rserpool_proto::rate::TokenBucket;
use rserpool_proto::wire::{PoolElement, PoolElementId, TransportProtocol};

use super::config::{HttpListenerConfig, MAX_QUEUED, Route};
use super::hedge::Hedge;
use super::sticky::CookieSealer;
use super::upstream::Upstream;
use super::{hedge, resume};
use crate::health::{PeCounts, PoolHealth};
use crate::random_u64;

/// A route at run time: its connections to PEs (pooled per PE) and meters.
pub(super) struct LiveRoute {
    pub(super) route: Route,
    pub(super) upstream: Arc<Upstream>,
    pub(super) meters: RouteMeters,
    pub(super) budget: RetryBudget,
    pub(super) health: Mutex<RouteHealth>,
    /// Where its ejections are posted for the admin API.
    pub(super) ejections: crate::health::EjectionBoard,
    /// A PE's place was given back (`max_requests_per_pe`), and requests queued.
    pub(super) freed: tokio::sync::Notify,
    pub(super) queued: std::sync::atomic::AtomicUsize,
}

/// What a route knows of its PEs' health: ejections and slow starts, latencies, and
/// requests under way.
pub(super) struct RouteHealth {
    pub(super) pes: PoolHealth,
    /// Response-head times (a hedge delay from the observed p99).
    pub(super) latencies: hedge::Latencies,
    /// Requests waiting for each PE's answer.
    pub(super) waiting: PeCounts,
}

/// A request's place among those waiting for one PE (`max_requests_per_pe`); given
/// back when dropped. Without a limit nothing is counted (`live` is `None`).
pub(super) struct PeSlot<'a> {
    pub(super) live: Option<&'a LiveRoute>,
    pub(super) pe: PoolElementId,
}

impl Drop for PeSlot<'_> {
    fn drop(&mut self) {
        let Some(live) = self.live else {
            return;
        };
        live.health(|health| health.waiting.remove(self.pe));
        live.freed.notify_one();
    }
}

impl LiveRoute {
    /// A place among the requests waiting for `pe`, unless it has `max_requests_per_pe`.
    /// Counted when there is a limit or the route orders PEs by their requests.
    pub(super) fn slot(&self, pe: PoolElementId) -> Option<PeSlot<'_>> {
        let limit = self.route.max_requests_per_pe;
        if limit == 0 && !self.route.least_requests {
            return Some(PeSlot { live: None, pe });
        }
        let taken = self.health(|health| {
            if limit > 0 && health.waiting.count(pe) >= limit {
                return false;
            }
            health.waiting.add(pe);
            true
        });
        (taken != Some(false)).then_some(PeSlot {
            live: Some(self),
            pe,
        })
    }

    /// Waits in the route's queue until a PE's place is given back (`true`), or until
    /// `deadline` or with the queue full (`false`).
    pub(super) async fn wait_for_place(&self, deadline: Instant) -> bool {
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
    pub(super) fn health<R>(&self, f: impl FnOnce(&mut RouteHealth) -> R) -> Option<R> {
        self.health.lock().ok().map(|mut health| f(&mut health))
    }

    /// Records how a request to `pe` went (`offered`: the PEs the request could use;
    /// `head_after`: when its response head came); an ejection is logged and counted.
    pub(super) fn observe(
        &self,
        pe: PoolElementId,
        ok: bool,
        offered: usize,
        head_after: Option<Duration>,
    ) {
        self.meters.pes.record(pe, ok, head_after);
        let now = crate::now();
        // Only an observed-p99 hedge reads the latencies.
        let p99 = self.route.hedge == Hedge::ObservedP99;
        let observed = self.health(|health| {
            if let Some(elapsed) = head_after.filter(|_| p99) {
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

pub(super) struct RouteMeters {
    /// By status class: 1xx to 5xx.
    pub(super) responses: [Counter; 5],
    pub(super) duration: Histogram,
    pub(super) retries: Counter,
    pub(super) failovers: Counter,
    pub(super) ejections: Counter,
    /// Attempts that passed over a PE at its request limit.
    pub(super) busy: Counter,
    /// Requests sent to a second PE while the first had not answered.
    pub(super) hedges: Counter,
    /// Response bodies completed from another PE, and ones that could not be.
    pub(super) resume: resume::ResumeMeters,
    /// Requests and response-head times per PE.
    pub(super) pes: crate::meters::PeMeters,
}

impl RouteMeters {
    pub(super) fn new(route: &Route) -> Self {
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
pub(super) struct RetryBudget {
    /// Thousandths of a retry each request earns.
    earned_per_request: u64,
    bucket: Mutex<TokenBucket>,
}

impl RetryBudget {
    /// Retries a second that come on top of what requests earn, and the most saved.
    const PER_SECOND: u32 = 10;
    const CAP: u32 = 100;

    pub(super) fn new(ratio: f64) -> Self {
        Self {
            earned_per_request: (ratio * 1000.0).round() as u64,
            bucket: Mutex::new(TokenBucket::with_burst(Self::PER_SECOND, Self::CAP)),
        }
    }

    /// A request came: it earns `ratio` of a retry.
    pub(super) fn deposit(&self) {
        if let Ok(mut bucket) = self.bucket.lock() {
            bucket.deposit(self.earned_per_request);
        }
    }

    /// Whether a retry may go out now (it is taken from the budget).
    pub(super) fn withdraw(&self) -> bool {
        self.bucket
            .lock()
            .is_ok_and(|mut bucket| bucket.allow(crate::now()))
    }
}

/// A listener's routes and sticky-session keys: replaced whole by a reload, while
/// requests under way finish with the ones they started with.
pub(super) struct Routing {
    pub(super) routes: Vec<LiveRoute>,
    /// Some route names a host (else the `Host` header need not be read).
    pub(super) routes_by_host: bool,
    pub(super) sticky: Option<CookieSealer>,
    /// TLS listener: cookies are `Secure`.
    pub(super) https: bool,
}

impl Routing {
    pub(super) fn new(
        config: &HttpListenerConfig,
        ejections: &crate::health::EjectionBoard,
    ) -> Self {
        Self {
            routes_by_host: config.routes.iter().any(|route| route.host.is_some()),
            routes: config
                .routes
                .iter()
                .map(|route| LiveRoute {
                    upstream: Upstream::new(
                        route.connect_timeout,
                        route.pe_tls.clone(),
                        route.pe_http2,
                    ),
                    meters: RouteMeters::new(route),
                    budget: RetryBudget::new(config.retry_ratio),
                    health: Mutex::new(RouteHealth {
                        pes: PoolHealth::new(route.outliers, route.slow_start, random_u64()),
                        latencies: hedge::Latencies::default(),
                        waiting: PeCounts::default(),
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
    pub(super) routing: Arc<std::sync::RwLock<Arc<Routing>>>,
    pub(super) ejections: crate::health::EjectionBoard,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

impl Reloader {
    /// The routing of `config`, for [`serve`](crate::http::serve); its routes post their ejections on
    /// `ejections` (the gateway's [`Lifecycle::ejections`](crate::Lifecycle::ejections)).
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

    /// Reads the files of every route's TLS towards PEs again (SIGHUP): new
    /// connections use them; a route whose files do not load keeps the ones in use.
    /// Each route with `pe_tls`, with the outcome.
    pub fn reload_pe_tls(
        &self,
    ) -> Vec<(
        rserpool_proto::wire::PoolHandle,
        Result<(), super::tls::TlsError>,
    )> {
        let Some(routing) = self.current() else {
            return Vec::new();
        };
        routing
            .routes
            .iter()
            .filter_map(|live| {
                let tls = live.route.pe_tls.as_ref()?;
                Some((live.route.pool_handle, tls.reload()))
            })
            .collect()
    }

    pub(super) fn current(&self) -> Option<Arc<Routing>> {
        self.routing.read().ok().map(|routing| routing.clone())
    }
}

/// The route for a request: host-specific routes before host-less ones, then the longest
/// path prefix.
pub(super) fn route_for<'a>(
    routes: &'a [LiveRoute],
    host: Option<&str>,
    path: &str,
) -> Option<&'a LiveRoute> {
    routes
        .iter()
        .filter(|live| live.route.matches_host(host) && live.route.matches_path(path))
        .max_by_key(|live| (live.route.host.is_some(), live.route.path_prefix.len()))
}

/// The request's host without port: `Host`, else the URI's authority (HTTP/2).
pub(super) fn request_host(request: &http::request::Parts) -> Option<String> {
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

/// The PE's HTTP address (its TCP user transport).
pub(super) fn pe_address(pe: &PoolElement) -> Option<SocketAddr> {
    matches!(pe.user_transport.protocol, TransportProtocol::Tcp(_))
        .then(|| pe.user_transport.addresses.first())
        .flatten()
        .map(|address| SocketAddr::new(*address, pe.user_transport.port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::config::Route;
    use rserpool_proto::wire::PoolHandle;

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
