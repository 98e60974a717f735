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
mod body;
mod config;
pub mod forward;
mod h1;
mod head;
mod hedge;
mod held;
mod idle;
mod min_rate;
mod proxy;
mod respond;
mod response_head;
mod resume;
mod routing;
pub mod sticky;
pub mod tls;
mod upstream;
mod watch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::Counter;
use rserpool_proto::wire::{PoolElement, TransportProtocol};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use self::attempts::StatusSet;
pub use self::config::{
    BODY_RATE_WINDOW, H2_MAX_CONCURRENT_STREAMS, HttpListenerConfig, MAX_HELD_BODY_BYTES,
    MAX_HELD_BODY_BYTES_PER_CONNECTION, MAX_QUEUED, MIN_BODY_RATE, RESUME_CUT_GETS, RETRY_ON,
    Route, SLOW_START, TUNNEL_IDLE_TIMEOUT,
};
pub use self::hedge::{HEDGE_FLOOR, Hedge, MIN_SAMPLES};
pub use self::routing::Reloader;
use self::{body::*, config::*, proxy::*, respond::*, routing::*};
pub use crate::health::OutlierConfig;
use crate::{Directory, Lifecycle};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies the gateway sends either way.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

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

#[cfg(test)]
mod tests {
    use super::*;
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
