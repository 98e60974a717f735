//! HTTP/2 towards PEs (hyper's client, RFC 9113): one connection per PE carries the
//! requests of every client at once, so a request costs no connection and no
//! system call of its own beyond the frames it needs. h2c with prior knowledge on a
//! plain route (RFC 9113 §3.3), `h2` by ALPN over TLS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::body::ProxyBody;
use super::pe_stream::PeStream;

/// A PE's HTTP/2 connection, as requests share it.
struct Shared {
    sender: SendRequest<ProxyBody>,
    last_used: Instant,
}

/// The HTTP/2 connections of one route, one per PE.
#[derive(Default)]
pub(super) struct H2Connections {
    shared: Mutex<SharedConnections>,
}

#[derive(Default)]
struct SharedConnections {
    by_pe: HashMap<SocketAddr, Shared, foldhash::fast::RandomState>,
    last_sweep: Option<Instant>,
}

/// A connection no request used for this long is closed (the PE's resources are
/// freed; the next request opens another).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// PING after this long without a frame from the PE, and close the connection when
/// the PING is not answered within as long: a frozen PE is found while requests wait.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Why an HTTP/2 connection could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 handshake with the pool element failed: {0}")]
pub(super) struct HandshakeError(hyper::Error);

impl H2Connections {
    /// The open connection to `address`, if there is one. Once a second, closed
    /// connections and those nobody used for [`IDLE_TIMEOUT`] are forgotten (their
    /// tasks end once their last request has).
    pub(super) fn sender(
        &self,
        address: SocketAddr,
        now: Instant,
    ) -> Option<SendRequest<ProxyBody>> {
        let mut shared = self.shared.lock().ok()?;
        if shared
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= Duration::from_secs(1))
        {
            shared.last_sweep = Some(now);
            shared.by_pe.retain(|_, connection| {
                !connection.sender.is_closed()
                    && now.saturating_duration_since(connection.last_used) < IDLE_TIMEOUT
            });
        }
        let connection = shared.by_pe.get_mut(&address)?;
        if connection.sender.is_closed() {
            shared.by_pe.remove(&address);
            return None;
        }
        connection.last_used = now;
        Some(connection.sender.clone())
    }

    /// The HTTP/2 handshake over `stream` (its connection preface and SETTINGS); the
    /// connection's task runs until the PE closes it or no request needs it.
    pub(super) async fn connect(
        &self,
        address: SocketAddr,
        stream: PeStream,
        now: Instant,
    ) -> Result<SendRequest<ProxyBody>, HandshakeError> {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(HandshakeError)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(pe = %address, %error, "HTTP/2 connection to a PE ended");
            }
        });
        if let Ok(mut shared) = self.shared.lock() {
            shared.by_pe.insert(
                address,
                Shared {
                    sender: sender.clone(),
                    last_used: now,
                },
            );
        }
        Ok(sender)
    }
}

/// The request for a PE over HTTP/2: `Host` becomes the `:authority` (the PE's
/// address without one), framing headers go (HTTP/2 frames the body; RFC 9113
/// §8.2.2), `Content-Length` is the body's own when it is known.
pub(super) fn request(
    (method, target, scheme): (&Method, &str, &'static str),
    headers: &HeaderMap,
    extra: Vec<(HeaderName, HeaderValue)>,
    (body, length): (ProxyBody, Option<u64>),
    address: SocketAddr,
) -> Result<Request<ProxyBody>, http::Error> {
    let authority = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map_or_else(|| address.to_string(), str::to_owned);
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(target)
        .build()?;
    let mut request = Request::builder().method(method.clone()).uri(uri);
    if let Some(fields) = request.headers_mut() {
        for (name, value) in headers {
            if !CONNECTION_SPECIFIC.contains(name) {
                fields.append(name, value.clone());
            }
        }
        for (name, value) in extra {
            fields.append(name, value);
        }
        if let Some(length) = length {
            fields.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    request.body(body)
}

/// Fields HTTP/2 does not carry (RFC 9113 §8.2.2; `Host` is the `:authority`).
const CONNECTION_SPECIFIC: [HeaderName; 7] = [
    header::HOST,
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::CONTENT_LENGTH,
    HeaderName::from_static("keep-alive"),
];

/// Whether a failed request never reached the PE's application: the connection was
/// gone before it went out, or the PE refused the stream (REFUSED_STREAM, or a
/// GOAWAY below its id; RFC 9113 §8.7). Such a request may go anywhere else.
pub(super) fn unprocessed(error: &hyper::Error) -> bool {
    if error.is_canceled() {
        return true;
    }
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<h2::Error>())
        .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// A response from a PE over HTTP/2.
pub(super) async fn send(
    mut sender: SendRequest<ProxyBody>,
    request: Request<ProxyBody>,
) -> Result<Response<Incoming>, hyper::Error> {
    sender.ready().await?;
    sender.send_request(request).await
}

/// An empty or whole body, for a request sent over HTTP/2.
pub(super) fn whole(bytes: Bytes) -> ProxyBody {
    use http_body_util::BodyExt as _;
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}
