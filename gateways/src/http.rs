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
mod buffers;
mod config;
mod connection;
pub mod forward;
mod h1;
mod head;
mod hedge;
mod held;
mod idle;
mod min_rate;
mod moving;
mod pe_h2;
mod pe_request;
mod pe_stream;
pub mod pe_tls;
mod proxy;
mod respond;
mod response_head;
mod resume;
mod routing;
pub mod sticky;
pub mod tls;
mod upstream;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use self::config::H2_MAX_SEND_BUFFER;
use self::connection::{State, serve_connection};
use crate::handover::Handover;
use crate::{Directory, Lifecycle};

pub use self::attempts::StatusSet;
pub use self::body::ProxyBody;
pub use self::config::{
    BODY_RATE_WINDOW, H2_MAX_CONCURRENT_STREAMS, HttpListenerConfig, MAX_HELD_BODY_BYTES,
    MAX_HELD_BODY_BYTES_PER_CONNECTION, MAX_QUEUED, MIN_BODY_RATE, RESUME_CUT_GETS, RETRY_ON,
    Route, SLOW_START, TUNNEL_IDLE_TIMEOUT,
};
pub use self::hedge::{HEDGE_FLOOR, Hedge, MIN_SAMPLES};
pub use self::routing::Reloader;
pub use crate::health::OutlierConfig;

/// Accepts clients until `lifecycle.stop_accepting` and serves their requests
/// (HTTP/1.1, and HTTP/2 with prior knowledge); keep-alive connections close at their
/// next request boundary then, or, on a plain listener whose connections leave for
/// the next process (`handover`, a binary upgrade), go there at it. Connections that
/// the previous process hands over are served too. Returns the listening socket, so
/// that a listener with new settings can go on with it (clients that connect meanwhile
/// wait in its backlog).
pub async fn serve<D: Directory>(
    socket: TcpListener,
    config: HttpListenerConfig,
    (routing, directory): (Reloader, Arc<D>),
    (lifecycle, handover): (Lifecycle, Handover),
) -> TcpListener {
    let state = Arc::new(State::new(&config, (routing, directory), handover));
    // A TLS session cannot be handed over: only a plain listener takes connections.
    let mut arrivals = config
        .tls
        .is_none()
        .then(|| state.handover.arrived())
        .flatten();
    let acceptor = match &config.tls {
        Some(resolver) => match tls::server_config(resolver.clone()) {
            Ok(tls_config) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls_config))),
            Err(error) => {
                tracing::error!(listen = %config.listen, %error, "TLS setup failed: listener not served");
                return socket;
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
            () = lifecycle.stop_accepting.cancelled() => return socket,
            accepted = socket.accept() => accepted,
            Some(handed) = crate::handover::next_arrival(arrivals.as_mut()) => {
                // Over the limit or not: refusing would cut a connection that is open.
                let permit = state.slots.clone().try_acquire_owned().ok();
                let (state, builder) = (state.clone(), builder.clone());
                let lifecycle = lifecycle.clone();
                lifecycle.sessions.clone().spawn(async move {
                    h1::serve_arrived(handed, state, limits, builder, &lifecycle).await;
                    drop(permit);
                });
                continue;
            }
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
        // Two tasks of their own kinds: one future for both would size every plain
        // connection's task by the TLS one (8 KiB more per idle connection).
        let Some(acceptor) = acceptor.clone() else {
            lifecycle.sessions.clone().spawn(async move {
                h1::serve(stream, state, peer, limits, builder, &lifecycle).await;
                drop(permit);
            });
            continue;
        };
        lifecycle.sessions.clone().spawn(async move {
            // A client that does not finish its handshake in time is dropped (the
            // header timeout covers the TLS part too).
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                // HTTP/2 by ALPN is hyper's; HTTP/1.1 starts on the fast path.
                Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                    serve_connection(tls, &builder, state, peer, &lifecycle).await
                }
                Ok(Ok(tls)) => h1::serve(tls, state, peer, limits, builder, &lifecycle).await,
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
            drop(permit);
        });
    }
}
