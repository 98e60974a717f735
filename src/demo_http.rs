//! The demo `http` service of `rserpool pe --serve http`: a small web service that
//! keeps per-session state and hands it to the gateway with the project-local HTTP
//! mapping of ASAP cookies (README, "HTTP gateway"): each response carries the
//! session's count in `RSerPool-Cookie`; a request with `RSerPool-Cookie-Echo` (the
//! first one after its session moved here) restores it.
//!
//! Every request is answered `pe=<id> session=<hex> count=<n> method=<M> body=<bytes>`;
//! `count` is the number of requests in the session (`RSerPool-Session`), 0 without one.
//! A query `delay_ms=N` delays the answer (to exercise timeouts); `Upgrade: echo`
//! switches the connection to a byte echo (to exercise upgrade tunnels). A request with
//! an `Idempotency-Key` is applied once: a repeated key gets the first answer
//! ([`crate::idempotency`]), so a gateway route with `idempotency_keys` may send a POST
//! whose PE died to this one.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rserpool_proto::wire::PoolElementId;
use tokio::net::TcpStream;

use crate::idempotency::{Claim, IdempotencyKeys, fingerprint};

/// Sessions remembered at most; the oldest-inserted are not tracked (a full table is
/// cleared: the demo's state then comes from cookie echoes alone).
const MAX_SESSIONS: usize = 100_000;
const MAX_BODY: usize = 1 << 20;
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Idempotency keys remembered at most, and for how long.
const MAX_KEYS: usize = 100_000;
const KEY_TTL: Duration = Duration::from_secs(600);

/// An answer as it is given again for a repeated key: the text and the cookie.
type Answer = (Bytes, Option<hyper::header::HeaderValue>);

/// Counts per session and answers per idempotency key, shared by the PE's connections.
#[derive(Debug, Clone)]
pub(crate) struct Sessions {
    counts: Arc<Mutex<HashMap<u64, u64>>>,
    keys: Arc<IdempotencyKeys<Answer>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            counts: Arc::default(),
            keys: Arc::new(IdempotencyKeys::new(MAX_KEYS, KEY_TTL)),
        }
    }
}

/// Serves HTTP/1.1 on one connection from the gateway.
pub(crate) async fn serve(
    stream: TcpStream,
    pe_id: PoolElementId,
    sessions: Sessions,
) -> Result<(), hyper::Error> {
    let service = hyper::service::service_fn(move |request| {
        let sessions = sessions.clone();
        async move { Ok::<_, Infallible>(answer(request, pe_id, &sessions).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await
}

async fn answer(
    mut request: Request<Incoming>,
    pe_id: PoolElementId,
    sessions: &Sessions,
) -> Response<Full<Bytes>> {
    let wants_echo = request
        .headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"echo"));
    if wants_echo {
        return upgrade_to_echo(&mut request);
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let session = header("rserpool-session").and_then(|s| u64::from_str_radix(&s, 16).ok());
    let echoed = header("rserpool-cookie-echo")
        .and_then(|c| BASE64.decode(c).ok())
        .and_then(|c| c.first_chunk::<8>().map(|b| u64::from_be_bytes(*b)));
    let delay = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("delay_ms="))
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::ZERO, |ms| {
            Duration::from_millis(ms).min(MAX_DELAY)
        });
    let method = request.method().clone();
    let request_target = request.uri().to_string();
    // What a test (or a curious user at debug level) can wait for: the request is here.
    tracing::debug!(%method, target = %request_target, "request received");
    let key = header("idempotency-key");
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"body too large\n")));
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return response;
        }
    };
    if let Some(key) = &key {
        let print = fingerprint(method.as_str(), &request_target, &body);
        let refusal = match sessions.keys.claim(key, print, crate::driver::now()) {
            Claim::New => None,
            Claim::Repeat((text, cookie)) => return respond(text, cookie),
            Claim::InFlight => Some((StatusCode::CONFLICT, "the key's request is under way\n")),
            Claim::Mismatch => Some((
                StatusCode::UNPROCESSABLE_ENTITY,
                "the key came with another request\n",
            )),
        };
        if let Some((status, text)) = refusal {
            let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
            *response.status_mut() = status;
            return response;
        }
    }
    let count = session.map_or(0, |session| {
        let Ok(mut table) = sessions.counts.lock() else {
            return 0;
        };
        if table.len() >= MAX_SESSIONS && !table.contains_key(&session) {
            table.clear();
        }
        let count = table.entry(session).or_insert(0);
        if let Some(restored) = echoed {
            *count = restored;
        }
        *count += 1;
        *count
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let text = Bytes::from(format!(
        "pe={pe_id} session={} count={count} method={method} body={}\n",
        session.map_or_else(|| "-".to_owned(), |s| format!("{s:016x}")),
        body.len()
    ));
    let cookie = session.and_then(|_| BASE64.encode(count.to_be_bytes()).parse().ok());
    if let Some(key) = &key {
        sessions.keys.complete(key, (text.clone(), cookie.clone()));
    }
    respond(text, cookie)
}

fn respond(text: Bytes, cookie: Option<hyper::header::HeaderValue>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(text));
    if let Some(cookie) = cookie {
        response.headers_mut().insert("rserpool-cookie", cookie);
    }
    response
}

/// Answers 101 and echoes the upgraded connection's bytes.
fn upgrade_to_echo(request: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("echo"),
    );
    response
}
