//! The admin HTTP listener of every role: `/metrics` (Prometheus text), `/healthz`
//! (the process runs), `/readyz` (the role can serve: 503 with the reason otherwise)
//! and `/api/<name>` (JSON views the role offers). Loopback in the examples; it has no
//! authentication, so never bind it where untrusted clients reach it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::logging::Logging;

/// Admin connections served at once; more wait in the accept queue.
const MAX_ADMIN_CONNECTIONS: usize = 32;
/// An admin connection idle (or slow to send its request) this long is closed.
const ADMIN_IDLE: Duration = Duration::from_secs(10);

/// Latency buckets in seconds: 1 ms to 30 s, for stalls and round trips.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a role shows on its admin listener besides metrics and liveness.
#[derive(Clone)]
pub(crate) struct Routes {
    /// `/readyz`: `Err(reason)` while the role cannot serve.
    pub(crate) ready: Arc<dyn Fn() -> Boxed<Result<(), String>> + Send + Sync>,
    /// `/api/<name>`: the JSON view, `None` for an unknown name.
    pub(crate) api: Arc<dyn Fn(String) -> Boxed<Option<serde_json::Value>> + Send + Sync>,
    /// The names `/api/` offers (listed on 404 and by `/api/`).
    pub(crate) api_names: &'static [&'static str],
    /// The role, for the status page.
    pub(crate) role: &'static str,
}

/// The status page (`/`): plain HTML and script in the binary; it reads `/api/`,
/// `/readyz` and `/metrics` of the same listener.
const STATUS_PAGE: &str = include_str!("status.html");

/// Installs the process's metrics recorder (once) and serves it on `listen`. Returns
/// the bound address.
pub(crate) async fn start(
    listen: SocketAddr,
    shutdown: CancellationToken,
    routes: Routes,
    logging: Logging,
) -> Result<SocketAddr, RunError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| RunError::Usage(format!("metrics: {e}")))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| RunError::Bind(listen, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| RunError::Bind(listen, e))?;
    tokio::spawn(upkeep(handle.clone(), shutdown.clone()));
    tokio::spawn(serve(listener, Arc::new(handle), routes, logging, shutdown));
    Ok(bound)
}

/// Histograms are folded in on render or upkeep; without scrapes they would grow.
async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

async fn serve(
    listener: TcpListener,
    handle: Arc<PrometheusHandle>,
    routes: Routes,
    logging: Logging,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let handle = handle.clone();
        let routes = routes.clone();
        let logging = logging.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handle = handle.clone();
                let routes = routes.clone();
                let logging = logging.clone();
                async move { Ok::<_, Infallible>(respond(request, &handle, &routes, &logging).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(ADMIN_IDLE, connection).await;
            drop(permit);
        });
    }
}

/// Largest body accepted (`PUT /log`).
const MAX_ADMIN_BODY: usize = 4096;

async fn respond(
    request: Request<Incoming>,
    handle: &PrometheusHandle,
    routes: &Routes,
    logging: &Logging,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let api = path.strip_prefix("/api/").map(str::to_owned);
    let (status, content_type, body) = match (&method, path.as_str(), api) {
        (&Method::GET, "/log", _) => (
            StatusCode::OK,
            "text/plain",
            format!("{}\n", logging.level()),
        ),
        (&Method::PUT, "/log", _) => {
            let body = http_body_util::Limited::new(request.into_body(), MAX_ADMIN_BODY)
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned());
            match body {
                Ok(level) => match logging.set_level(&level) {
                    Ok(()) => {
                        tracing::info!(level, "log level changed through the admin listener");
                        (StatusCode::OK, "text/plain", format!("{level}\n"))
                    }
                    Err(error) => (StatusCode::BAD_REQUEST, "text/plain", format!("{error}\n")),
                },
                Err(_) => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "text/plain",
                    "a log filter is a short text\n".to_owned(),
                ),
            }
        }
        (&Method::GET, "/metrics", _) => {
            (StatusCode::OK, "text/plain; version=0.0.4", handle.render())
        }
        (&Method::GET, "/healthz", _) => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/", _) => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            STATUS_PAGE.to_owned(),
        ),
        (&Method::GET, "/api/", _) => (
            StatusCode::OK,
            "application/json",
            format!(
                "{}\n",
                serde_json::json!({ "role": routes.role, "apis": routes.api_names })
            ),
        ),
        (&Method::GET, "/readyz", _) => match (routes.ready)().await {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        (&Method::GET, _, Some(name)) => match (routes.api)(name).await {
            Some(value) => (StatusCode::OK, "application/json", format!("{value}\n")),
            None => (
                StatusCode::NOT_FOUND,
                "text/plain",
                format!(
                    "not found: this role offers /api/{{{}}}\n",
                    routes.api_names.join(",")
                ),
            ),
        },
        (_, "/metrics" | "/healthz" | "/readyz" | "/log", _) | (_, _, Some(_)) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz, /log or /api/\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
