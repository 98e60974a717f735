//! One client connection served by hyper (HTTP/2, and HTTP/1.1 the fast path hands
//! over), with the listener's shared state and the connection's time limits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use metrics::Counter;
use tokio::sync::Semaphore;

use super::body::{ClientBody, ClientRequest, Tunnel};
use super::config::HttpListenerConfig;
use super::proxy::handle;
use super::respond::text;
use super::routing::Reloader;
use super::{forward, held, watch};
use crate::{Directory, Lifecycle};

/// What every connection of a listener shares.
pub(super) struct State<D> {
    pub(super) routing: Reloader,
    pub(super) https: bool,
    pub(super) directory: Arc<D>,
    /// The listener's `max_connections`: client connections, and upgraded tunnels
    /// (which outlive their HTTP connection) while they are open.
    pub(super) slots: Arc<Semaphore>,
    /// How long a connection hyper serves may go without a first request, and idle.
    pub(super) header_timeout: Duration,
    pub(super) client_idle_timeout: Duration,
    /// How long an upgraded tunnel may carry nothing either way.
    pub(super) tunnel_idle_timeout: Duration,
    /// Connections closed for the time limits, by reason.
    pub(super) closed_no_request: Counter,
    pub(super) closed_idle: Counter,
    /// Request-body bytes held for replay, over all connections, and per connection.
    pub(super) held_bodies: Arc<Semaphore>,
    pub(super) held_body_bytes_per_connection: usize,
    pub(super) held_meters: held::HeldMeters,
    /// Idle HTTP/1.1 connections leaving for the next process (a binary upgrade).
    pub(super) handover: crate::handover::Handover,
}

impl<D> State<D> {
    /// A listener's shared state, its meters looked up once.
    pub(super) fn new(
        config: &HttpListenerConfig,
        (routing, directory): (Reloader, Arc<D>),
        handover: crate::handover::Handover,
    ) -> Self {
        Self {
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
            handover,
        }
    }
}

/// Serves one client connection with hyper until it ends, breaks a time limit (see
/// `watch`) or the gateway stops.
pub(super) async fn serve_connection<I, D>(
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
