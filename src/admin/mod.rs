//! The admin HTTP listener of every role: `/metrics` (Prometheus text), `/healthz`
//! (the process runs), `/readyz` (the role can serve: 503 with the reason otherwise),
//! `/log` (read or change the log filter) and `/api/<name>` (JSON views the role
//! offers). Loopback in the examples. With a token (`admin.token_file`), `/log` and
//! `/api/` answer only requests that carry `Authorization: Bearer TOKEN`; without one
//! it has no authentication, so never bind it where untrusted clients reach it.

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

mod summary;

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
    /// Brings the role's gauges up to date before `/metrics` is rendered.
    pub(crate) refresh: Option<Arc<dyn Fn() -> Boxed<()> + Send + Sync>>,
}

/// The status page (`/`): plain HTML and script in the binary; it reads `/api/`,
/// `/readyz` and `/metrics` of the same listener.
const STATUS_PAGE: &str = include_str!("status.html");

/// The status page with its server-rendered summary in place of the live view. The
/// views are on it without the token: the page is open, as `/metrics` is, so a role
/// with a token shows only its readiness there.
async fn status_page(routes: &Routes, token: bool) -> String {
    let ready = (routes.ready)().await;
    let mut views = Vec::new();
    if !token {
        for name in routes.api_names {
            if let Some(value) = (routes.api)((*name).to_owned()).await {
                views.push((*name, value));
            }
        }
    }
    let summary = summary::render(routes.role, &ready, &views);
    STATUS_PAGE.replacen("<!--summary-->", &summary, 1)
}

/// `# HELP` for the families every role has: the admin listener's, TLS's and the
/// control-plane listeners' admission.
fn describe_common() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "rserpool_admin_unauthorized_total",
        "admin requests refused for a missing or wrong token"
    );
    describe_counter!(
        "rserpool_tls_handshake_failures_total",
        "TLS handshakes that failed, by direction"
    );
    describe_gauge!(
        "rserpool_tls_certificate_expiry_seconds",
        "seconds until the role's certificate expires"
    );
    describe_counter!(
        "rserpool_listener_refused_total",
        "connections refused by a control-plane listener's admission, by listener and reason"
    );
    describe_counter!(
        "rserpool_listener_closed_total",
        "connections a control-plane listener closed (idle, unfinished), by listener and reason"
    );
}

/// Installs the process's metrics recorder (once) and serves it on `listen`. Returns
/// the bound address.
pub(crate) async fn start(
    listen: SocketAddr,
    security: AdminSecurity,
    shutdown: CancellationToken,
    routes: Routes,
    logging: Logging,
) -> Result<SocketAddr, RunError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| RunError::Bind(listen, e))?;
    start_on(listener, security, shutdown, routes, logging)
}

/// [`start`] on a listening socket already bound (one handed over by an upgrade).
pub(crate) fn start_on(
    listener: TcpListener,
    security: AdminSecurity,
    shutdown: CancellationToken,
    routes: Routes,
    logging: Logging,
) -> Result<SocketAddr, RunError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| RunError::Usage(format!("metrics: {e}")))?;
    describe_common();
    let bound = listener.local_addr().map_err(RunError::Io)?;
    tokio::spawn(upkeep(handle.clone(), shutdown.clone()));
    let shared = Arc::new(Shared {
        metrics: handle,
        routes,
        logging,
        token: security.token,
        tls: security.tls.map(tokio_rustls::TlsAcceptor::from),
    });
    tokio::spawn(serve(listener, shared, shutdown));
    Ok(bound)
}

/// How the admin listener protects itself: a bearer token for `/log` and `/api/`, and
/// TLS for everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct AdminSecurity {
    token: Option<AdminToken>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// The protection an `admin:` section asks for (`--admin-token-file` over
/// `token_file`); unreadable files are an error that names them.
pub(crate) fn security(
    section: &crate::config::AdminSection,
    token_flag: Option<&std::path::Path>,
) -> Result<AdminSecurity, RunError> {
    let token = token_flag
        .or(section.token_file.as_deref())
        .map(AdminToken::read)
        .transpose()?;
    let tls = section
        .tls
        .as_ref()
        .map(|tls| {
            let source = rserpool_gateways::http::tls::CertificateSource {
                cert: tls.cert.clone(),
                key: tls.key.clone(),
                names: Vec::new(),
            };
            let resolver = rserpool_gateways::http::tls::CertificateResolver::new(vec![source])
                .and_then(|resolver| {
                    rserpool_gateways::http::tls::server_config_for(
                        Arc::new(resolver),
                        &[b"http/1.1"],
                    )
                })
                .map_err(|e| RunError::Usage(format!("admin.tls: {e}")))?;
            Ok::<_, RunError>(Arc::new(resolver))
        })
        .transpose()?;
    Ok(AdminSecurity { token, tls })
}

/// What every admin connection serves.
struct Shared {
    metrics: PrometheusHandle,
    routes: Routes,
    logging: Logging,
    token: Option<AdminToken>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The bearer token `/log` and `/api/` require.
#[derive(Clone)]
pub(crate) struct AdminToken(Arc<[u8]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// The shortest token accepted: guessing one must be out of reach.
const MIN_TOKEN_LENGTH: usize = 16;

impl AdminToken {
    /// The token in `path` (surrounding white space ignored).
    pub(crate) fn read(path: &std::path::Path) -> Result<Self, RunError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RunError::Usage(format!("admin.token_file {}: {e}", path.display())))?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_LENGTH || token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(RunError::Usage(format!(
                "admin.token_file {}: the token must be at least {MIN_TOKEN_LENGTH} printable \
                 characters without spaces (e.g. `openssl rand -hex 24`)",
                path.display()
            )));
        }
        Ok(Self(token.as_bytes().into()))
    }

    /// Does the request carry the token? Compared in constant time.
    fn admits(&self, request: &Request<Incoming>) -> bool {
        let Some(given) = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        given.len() == self.0.len()
            && given
                .iter()
                .zip(self.0.iter())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
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

async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let responder = shared.clone();
            let service = hyper::service::service_fn(move |request| {
                let shared = responder.clone();
                async move { Ok::<_, Infallible>(respond(request, &shared).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let _ = tokio::time::timeout(ADMIN_IDLE, async {
                match &shared.tls {
                    None => {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = http.serve_connection(io, service).await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            metrics::counter!("rserpool_tls_handshake_failures_total", "direction" => "admin")
                                .increment(1);
                            return;
                        };
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = http.serve_connection(io, service).await;
                    }
                }
            })
            .await;
            drop(permit);
        });
    }
}

/// Largest body accepted (`PUT /log`).
const MAX_ADMIN_BODY: usize = 4096;

/// `/log` and `/api/` need the token, where one is set.
fn protected(path: &str) -> bool {
    path == "/log" || path.starts_with("/api/")
}

/// 401 for a request without the token (counted; logged at most once a second).
fn unauthorized(method: &Method, path: &str) -> Response<Full<Bytes>> {
    static LOG: crate::logging::RateLimitedLog =
        crate::logging::RateLimitedLog::new(Duration::from_secs(1));
    metrics::counter!("rserpool_admin_unauthorized_total").increment(1);
    if let Some(suppressed) = LOG.permit() {
        tracing::warn!(%method, path, suppressed, "admin request without the token: 401");
    }
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"unauthorized: send Authorization: Bearer TOKEN (admin.token_file)\n",
    )));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn respond(request: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let (handle, routes, logging) = (&shared.metrics, &shared.routes, &shared.logging);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if let Some(token) = &shared.token
        && protected(&path)
        && !token.admits(&request)
    {
        return unauthorized(&method, &path);
    }
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
            if let Some(refresh) = &routes.refresh {
                refresh().await;
            }
            (StatusCode::OK, "text/plain; version=0.0.4", handle.render())
        }
        (&Method::GET, "/healthz", _) => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/", _) => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            status_page(routes, shared.token.is_some()).await,
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
