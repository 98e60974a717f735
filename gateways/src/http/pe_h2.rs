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
use tokio::sync::watch;

use super::body::ProxyBody;
use super::pe_stream::PeStream;

/// What a route knows of one PE's HTTP/2.
enum PeLink {
    /// Its connection, shared by the requests.
    Http2 {
        sender: SendRequest<ProxyBody>,
        last_used: Instant,
    },
    /// It chose HTTP/1.1 by ALPN (at this time): requests go to the HTTP/1.1 pool.
    Http1(Instant),
    /// A request is opening its connection; the others wait for it (the receiver
    /// sees the end when the opener's [`Opening`] goes).
    Opening(watch::Receiver<()>),
    /// The last attempt to open it failed (at this time).
    Failed(Instant),
}

/// The HTTP/2 connections of one route, one per PE.
#[derive(Default)]
pub(super) struct H2Connections {
    links: Mutex<Links>,
}

#[derive(Default)]
struct Links {
    by_pe: HashMap<SocketAddr, PeLink, foldhash::fast::RandomState>,
    last_sweep: Option<Instant>,
}

/// A connection no request used for this long is closed (the PE's resources are
/// freed; the next request opens another); a PE's choice of HTTP/1.1 is remembered as
/// long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// PING after this long without a frame from the PE, and close the connection when
/// the PING is not answered within as long: a frozen PE is found while requests wait.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Requests that waited for a connection that could not be opened go elsewhere, and
/// so do those that come this soon after.
const FAILED_FOR: Duration = Duration::from_secs(1);

/// What a request for a PE does next.
pub(super) enum Turn<'a> {
    /// Send over this connection.
    Http2(SendRequest<ProxyBody>),
    /// Go to the HTTP/1.1 pool: the PE chose HTTP/1.1.
    Http1,
    /// Another request is opening the connection: wait for `changed()` to end, then
    /// ask again.
    Wait(watch::Receiver<()>),
    /// Open the connection; requests for the PE wait until this is settled or dropped
    /// (dropped unsettled: the attempt failed).
    Open(Opening<'a>),
    /// Opening it failed just now: the request goes to the next PE.
    Failed,
}

/// The right to open a PE's connection, held while it is opened.
pub(super) struct Opening<'a> {
    connections: &'a H2Connections,
    address: SocketAddr,
    /// Dropped after the link is settled: the waiting requests look again.
    _done: watch::Sender<()>,
}

impl H2Connections {
    /// What a request for the PE at `address` does. Once a second, closed connections,
    /// those nobody used for [`IDLE_TIMEOUT`] and stale choices are forgotten (a
    /// connection's task ends once its last request has).
    pub(super) fn turn(&self, address: SocketAddr, now: Instant) -> Turn<'_> {
        let Ok(mut links) = self.links.lock() else {
            return Turn::Failed;
        };
        if links
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= Duration::from_secs(1))
        {
            links.last_sweep = Some(now);
            links.by_pe.retain(|_, link| link.current(now));
        }
        match links.by_pe.get_mut(&address) {
            Some(PeLink::Http2 { sender, last_used }) if !sender.is_closed() => {
                *last_used = now;
                return Turn::Http2(sender.clone());
            }
            Some(PeLink::Opening(done)) => return Turn::Wait(done.clone()),
            Some(link @ (PeLink::Http1(_) | PeLink::Failed(_))) if link.current(now) => {
                return match link {
                    PeLink::Http1(_) => Turn::Http1,
                    _ => Turn::Failed,
                };
            }
            _ => {}
        }
        let (done, waiting) = watch::channel(());
        links.by_pe.insert(address, PeLink::Opening(waiting));
        Turn::Open(Opening {
            connections: self,
            address,
            _done: done,
        })
    }

    /// The HTTP/2 handshake over `stream` (its connection preface and SETTINGS); the
    /// connection's task runs until the PE closes it or no request needs it.
    pub(super) async fn handshake(
        address: SocketAddr,
        stream: PeStream,
    ) -> Result<SendRequest<ProxyBody>, hyper::Error> {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(pe = %address, %error, "HTTP/2 connection to a PE ended");
            }
        });
        Ok(sender)
    }

    fn settle(&self, address: SocketAddr, link: PeLink) {
        if let Ok(mut links) = self.links.lock() {
            links.by_pe.insert(address, link);
        }
    }
}

impl PeLink {
    /// Whether it still holds at `now`.
    fn current(&self, now: Instant) -> bool {
        let age = |since: &Instant| now.saturating_duration_since(*since);
        match self {
            Self::Http2 { sender, last_used } => {
                !sender.is_closed() && age(last_used) < IDLE_TIMEOUT
            }
            Self::Http1(since) => age(since) < IDLE_TIMEOUT,
            Self::Opening(_) => true,
            Self::Failed(since) => age(since) < FAILED_FOR,
        }
    }
}

impl Opening<'_> {
    /// The connection is up: the waiting requests use it.
    pub(super) fn opened(self, sender: SendRequest<ProxyBody>, now: Instant) {
        let link = PeLink::Http2 {
            sender,
            last_used: now,
        };
        self.connections.settle(self.address, link);
    }

    /// The PE chose HTTP/1.1: the waiting requests go to the HTTP/1.1 pool.
    pub(super) fn chose_http1(self, now: Instant) {
        self.connections.settle(self.address, PeLink::Http1(now));
    }
}

impl Drop for Opening<'_> {
    /// Unsettled, the attempt failed; the waiting requests go elsewhere.
    fn drop(&mut self) {
        if let Ok(mut links) = self.connections.links.lock()
            && let Some(link) = links.by_pe.get_mut(&self.address)
            && matches!(link, PeLink::Opening(_))
        {
            *link = PeLink::Failed(crate::now());
        }
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
