//! The gateway's HTTP/1.1 client towards PEs: keep-alive connections pooled per PE, a
//! request written in one buffer, the response head parsed with httparse and its body
//! read straight from the PE's socket by the client connection's task.
//!
//! Written for the gateway instead of hyper-util's pooled client, which hands every
//! request to a connection task over a channel and the response back (two task switches
//! and two pool locks per request): with it the gateway served 0.72x HAProxy's requests
//! per second in `bench/http.sh`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, StatusCode, header};
use hyper::body::{Body, Frame, SizeHint};

use tokio::net::TcpStream;

use super::body::{BoxError, ProxyBody};
use super::pe_h2::{self, H2Connections, Turn};
use super::pe_request::{
    Connection, Outgoing, OutgoingBody, READ_SIZE, declared_length, read_head, write_request,
};
use super::pe_stream::PeStream;
use super::pe_tls::PeTls;
use super::response_head::{Chunk, Framing, UpstreamError};

/// A chunk-size or trailer line longer than this is malformed.
const MAX_LINE: usize = 4096;
/// Idle connections kept per PE.
const IDLE_PER_PE: usize = 256;
/// Below common backend keep-alive timeouts, so that the gateway does not send on a
/// connection the PE is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

struct IdleConnection {
    connection: Connection,
    since: Instant,
}

#[derive(Default)]
struct IdlePool {
    /// foldhash rather than SipHash: two lookups per request, keyed by PE addresses
    /// that come from the registrar (still seeded per process).
    by_pe: HashMap<SocketAddr, VecDeque<IdleConnection>, foldhash::fast::RandomState>,
    last_sweep: Option<Instant>,
}

/// Connections to the PEs of one route.
pub(super) struct Upstream {
    connect_timeout: Duration,
    /// TLS towards the PEs (the route's `pe_tls`); `None`: plain TCP.
    tls: Option<Arc<PeTls>>,
    /// HTTP/2 connections, one per PE, when the route asks for HTTP/2.
    http2: Option<H2Connections>,
    idle: Mutex<IdlePool>,
}

/// A new connection to a PE and the protocol it speaks.
enum Opened {
    Http1(PeStream),
    Http2(PeStream),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls.is_some())
            .field("http2", &self.http2.is_some())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// `http2`: requests go over HTTP/2 to PEs that speak it (the route's
    /// `pe_protocol: http2`).
    pub(super) fn new(
        connect_timeout: Duration,
        tls: Option<Arc<PeTls>>,
        http2: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            connect_timeout,
            tls,
            http2: http2.then(H2Connections::default),
            idle: Mutex::new(IdlePool::default()),
        })
    }

    /// Sends `request` to the PE at `address` and reads the response's head. Over
    /// HTTP/1.1 the body follows from the same connection, which goes back to the pool
    /// when the body has been read to its end; over HTTP/2 the PE's connection carries
    /// other requests meanwhile. `now`: when the request started (the pools' clock:
    /// idle connections are timed from the start of their last request, a little
    /// early).
    pub(super) async fn send(
        self: &Arc<Self>,
        address: SocketAddr,
        request: Outgoing<'_>,
        now: Instant,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        // HTTP/2 has no 101: an upgrade goes over HTTP/1.1.
        let h2 = self
            .http2
            .as_ref()
            .filter(|_| !request.headers.contains_key(header::UPGRADE));
        let connection = match (h2, self.checkout(address, now)) {
            (None, Some(connection)) => connection,
            (Some(h2), idle) => loop {
                match h2.turn(address, now) {
                    Turn::Http2(sender) => return self.send_h2(sender, address, request).await,
                    Turn::Wait(mut done) => {
                        // Ends when the opener settles or gives up.
                        let _ = done.changed().await;
                    }
                    Turn::Failed => return Err(UpstreamError::OpeningFailed),
                    Turn::Http1 => {
                        break match idle {
                            Some(connection) => connection,
                            None => self.connect_http1(address).await?,
                        };
                    }
                    Turn::Open(opening) => match self.connect(address, true).await? {
                        Opened::Http2(stream) => {
                            let sender = H2Connections::handshake(address, stream)
                                .await
                                .map_err(UpstreamError::Http2Handshake)?;
                            opening.opened(sender.clone(), now);
                            return self.send_h2(sender, address, request).await;
                        }
                        Opened::Http1(stream) => {
                            opening.chose_http1(now);
                            break Connection::new(stream);
                        }
                    },
                }
            },
            (None, None) => self.connect_http1(address).await?,
        };
        self.send_h1(connection, address, request, now).await
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut connection: Connection,
        address: SocketAddr,
        request: Outgoing<'_>,
        now: Instant,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let head_only = *request.method == Method::HEAD;
        let complete = write_request(&mut connection, address, request).await?;
        let (head, framing, keep_alive) = read_head(&mut connection, head_only).await?;
        // A request whose body was cut short by an early answer leaves the connection
        // mid-message: it cannot carry another.
        let keep_alive = keep_alive && complete;
        let mut body = H1Body {
            connection: Some(connection),
            framing,
            keep_alive,
            home: Some((self.clone(), address)),
            started: now,
        };
        if matches!(body.framing, Framing::Done) && head.status != StatusCode::SWITCHING_PROTOCOLS {
            body.finish();
        }
        Ok(Response::from_parts(head, ResponseBody::Http1(body)))
    }

    async fn send_h2(
        &self,
        sender: hyper::client::conn::http2::SendRequest<ProxyBody>,
        address: SocketAddr,
        request: Outgoing<'_>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let method = request.method;
        let body = match request.body {
            OutgoingBody::Whole(bytes) => {
                let length = declared_length(method, bytes.len());
                (pe_h2::whole(bytes), length)
            }
            OutgoingBody::Streaming { body, length } => (body, length),
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let head = (method, request.target, scheme);
        let request = pe_h2::request(head, request.headers, request.extra, body, address)
            .map_err(UpstreamError::Http2Request)?;
        let response = pe_h2::send(sender, request).await.map_err(|error| {
            if pe_h2::unprocessed(&error) {
                UpstreamError::Unprocessed(error)
            } else {
                UpstreamError::Http2(error)
            }
        })?;
        Ok(response.map(ResponseBody::Http2))
    }

    /// A new HTTP/1.1 connection to `address`.
    async fn connect_http1(&self, address: SocketAddr) -> Result<Connection, UpstreamError> {
        match self.connect(address, false).await? {
            Opened::Http1(stream) | Opened::Http2(stream) => Ok(Connection::new(stream)),
        }
    }

    /// A new connection to `address`: TCP, then the TLS handshake when the route has
    /// `pe_tls`, both within the connect timeout. `offer_h2`: HTTP/2 is wanted (h2c
    /// with prior knowledge on a plain route; offered by ALPN over TLS, where the PE
    /// chooses).
    async fn connect(&self, address: SocketAddr, offer_h2: bool) -> Result<Opened, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(address))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        crate::pe_socket::tune(&stream);
        let Some(tls) = &self.tls else {
            return Ok(if offer_h2 {
                Opened::Http2(PeStream::Plain(stream))
            } else {
                Opened::Http1(PeStream::Plain(stream))
            });
        };
        let secured = tokio::time::timeout_at(deadline, tls.connect(stream, address, offer_h2))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Tls)?;
        let chose_h2 = secured.get_ref().1.alpn_protocol() == Some(b"h2");
        let stream = PeStream::Tls(Box::new(secured));
        Ok(if chose_h2 {
            Opened::Http2(stream)
        } else {
            Opened::Http1(stream)
        })
    }

    /// The most recently used idle connection to `address` that is still open.
    fn checkout(&self, address: SocketAddr, now: Instant) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        let connections = idle.by_pe.get_mut(&address)?;
        while let Some(entry) = connections.pop_back() {
            if now.saturating_duration_since(entry.since) >= IDLE_TIMEOUT {
                // The rest are older still.
                connections.clear();
                break;
            }
            let mut connection = entry.connection;
            if connection.stream.still_open() {
                return Some(connection);
            }
        }
        idle.by_pe.remove(&address);
        None
    }

    fn release(&self, address: SocketAddr, mut connection: Connection, now: Instant) {
        // An idle connection holds no read buffer (16 KiB, allocated again at its next
        // response): a route's pool of 256 idle connections per PE held 4 MiB.
        connection.buffer = BytesMut::new();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        // Once a second, idle connections of PEs no longer asked for are closed.
        if idle
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= Duration::from_secs(1))
        {
            idle.last_sweep = Some(now);
            idle.by_pe.retain(|_, connections| {
                connections
                    .retain(|entry| now.saturating_duration_since(entry.since) < IDLE_TIMEOUT);
                !connections.is_empty()
            });
        }
        let connections = idle.by_pe.entry(address).or_default();
        if connections.len() >= IDLE_PER_PE {
            connections.pop_front();
        }
        connections.push_back(IdleConnection {
            connection,
            since: now,
        });
    }
}

/// A response body read from the PE's HTTP/1.1 connection as the client takes it.
pub(super) struct H1Body {
    connection: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
    home: Option<(Arc<Upstream>, SocketAddr)>,
    /// When the request started: the connection's idle time counts from it.
    started: Instant,
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl H1Body {
    /// The PE's connection after a `101 Switching Protocols`, with the bytes it sent
    /// after the head.
    pub(super) fn into_upgraded(mut self) -> Option<(PeStream, Bytes)> {
        self.connection
            .take()
            .map(|connection| (connection.stream, connection.buffer.freeze()))
    }

    /// Whether more of the body is still to be read from the PE (it did not come with
    /// the head).
    pub(super) fn reads_more(&self) -> bool {
        let buffered = self
            .connection
            .as_ref()
            .map_or(0, |connection| connection.buffer.len() as u64);
        match self.framing {
            Framing::Done => false,
            Framing::Length(remaining) => remaining > buffered,
            Framing::Chunked(_) | Framing::UntilClose => true,
        }
    }

    /// The body has been read: the connection goes back to the pool if it can carry
    /// another request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(connection), Some((upstream, address))) =
            (self.connection.take(), self.home.take())
            && self.keep_alive
            && connection.buffer.is_empty()
        {
            upstream.release(address, connection, self.started);
        }
    }

    /// Ends the body and closes the connection (it cannot carry another request);
    /// passes `why` through.
    fn close<T>(&mut self, why: T) -> T {
        self.framing = Framing::Done;
        self.connection = None;
        why
    }

    /// Reads more from the PE; `false` at its end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, BoxError>> {
        let Some(connection) = self.connection.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        connection.buffer.reserve(READ_SIZE);
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut connection.stream),
            cx,
            &mut connection.buffer
        ))?;
        Poll::Ready(Ok(read > 0))
    }

    fn buffered(&mut self) -> Option<&mut BytesMut> {
        self.connection
            .as_mut()
            .map(|connection| &mut connection.buffer)
            .filter(|buffer| !buffer.is_empty())
    }

    /// Takes up to `limit` buffered bytes.
    fn take(&mut self, limit: u64) -> Option<Bytes> {
        let buffer = self.buffered()?;
        let count = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        Some(buffer.split_to(count).freeze())
    }

    /// One CRLF-terminated line from the buffer (without the CRLF), if complete.
    fn take_line(&mut self) -> Result<Option<Bytes>, BoxError> {
        let Some(buffer) = self.buffered() else {
            return Ok(None);
        };
        match buffer.windows(2).position(|pair| pair == b"\r\n") {
            Some(end) => {
                let line = buffer.split_to(end).freeze();
                buffer.advance(2);
                Ok(Some(line))
            }
            None if buffer.len() > MAX_LINE => Err("chunked framing line too long".into()),
            None => Ok(None),
        }
    }

    /// Moves the chunked decoder on with what is buffered.
    fn decode_chunk(&mut self, state: Chunk) -> Result<Step, BoxError> {
        match state {
            Chunk::Size => {
                let Some(line) = self.take_line()? else {
                    return Ok(Step::NeedMore);
                };
                let digits = line
                    .split(|byte| *byte == b';')
                    .next()
                    .and_then(|digits| std::str::from_utf8(digits).ok())
                    .map(str::trim)
                    .ok_or("bad chunk size")?;
                let size = u64::from_str_radix(digits, 16).map_err(|_| "bad chunk size")?;
                self.framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(Step::Moved)
            }
            Chunk::Data(remaining) => {
                let Some(data) = self.take(remaining) else {
                    return Ok(Step::NeedMore);
                };
                let left = remaining - data.len() as u64;
                self.framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Ok(Step::Data(data))
            }
            Chunk::DataEnd => {
                let Some(line) = self.take_line()? else {
                    return Ok(Step::NeedMore);
                };
                if !line.is_empty() {
                    return Err("chunk data longer than its size".into());
                }
                self.framing = Framing::Chunked(Chunk::Size);
                Ok(Step::Moved)
            }
            // Trailer fields are not passed on; the empty line ends the body.
            Chunk::Trailers => {
                let Some(line) = self.take_line()? else {
                    return Ok(Step::NeedMore);
                };
                if line.is_empty() {
                    self.finish();
                }
                Ok(Step::Moved)
            }
        }
    }
}

/// What one step of the chunked decoder did.
enum Step {
    Data(Bytes),
    /// Consumed framing bytes: go on with the buffer.
    Moved,
    NeedMore,
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(remaining) => {
                    if let Some(data) = this.take(remaining) {
                        let left = remaining - data.len() as u64;
                        this.framing = Framing::Length(left);
                        if left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::UntilClose => {
                    if let Some(data) = this.take(u64::MAX) {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(state) => match this.decode_chunk(state) {
                    Err(error) => return Poll::Ready(Some(Err(this.close(error)))),
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Moved) => continue,
                    Ok(Step::NeedMore) => {}
                },
            }
            match ready!(this.poll_fill(cx)) {
                Ok(true) => {}
                Ok(false) if this.framing == Framing::UntilClose => {
                    this.close(());
                    return Poll::Ready(None);
                }
                Ok(false) => {
                    let error = "the pool element closed mid-response".into();
                    return Poll::Ready(Some(Err(this.close(error))));
                }
                Err(error) => return Poll::Ready(Some(Err(this.close(error)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(remaining) => SizeHint::with_exact(remaining),
            Framing::Chunked(_) | Framing::UntilClose => SizeHint::default(),
        }
    }
}

/// A PE's response body, as the client takes it.
#[derive(Debug)]
pub(super) enum ResponseBody {
    Http1(H1Body),
    Http2(hyper::body::Incoming),
}

impl ResponseBody {
    /// The PE's connection after a `101 Switching Protocols` (HTTP/1.1 only), with
    /// the bytes it sent after the head.
    pub(super) fn into_upgraded(self) -> Option<(PeStream, Bytes)> {
        match self {
            Self::Http1(body) => body.into_upgraded(),
            Self::Http2(_) => None,
        }
    }

    /// Whether more of the body is still to come from the PE.
    pub(super) fn reads_more(&self) -> bool {
        match self {
            Self::Http1(body) => body.reads_more(),
            Self::Http2(body) => !body.is_end_stream(),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Http1(body) => Pin::new(body).poll_frame(cx),
            Self::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Http1(body) => body.is_end_stream(),
            Self::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Http1(body) => body.size_hint(),
            Self::Http2(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::response_head::parse_head;
    use http::header::HeaderMap;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn parse(raw: &[u8], head_only: bool) -> (http::response::Parts, Framing, bool, BytesMut) {
        let mut buffer = BytesMut::from(raw);
        let (parts, framing, keep_alive) = parse_head(&mut buffer, head_only).unwrap().unwrap();
        (parts, framing, keep_alive, buffer)
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let (parts, framing, keep, rest) =
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(
            (framing, keep, &rest[..]),
            (Framing::Length(5), true, &b"hello"[..])
        );
        let (_, framing, keep, _) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!((framing, keep), (Framing::Done, true), "HEAD has no body");
        let (parts, framing, keep, _) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!((framing, keep), (Framing::Chunked(Chunk::Size), true));
        assert!(!parts.headers.contains_key(header::CONTENT_LENGTH));
        let (_, framing, keep, _) = parse(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((framing, keep), (Framing::UntilClose, false));
        let (_, framing, _, _) = parse(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert_eq!(framing, Framing::Done);
        let (_, _, keep, _) = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!keep, "HTTP/1.0 closes unless keep-alive");
        let (_, _, keep, _) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!keep);
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(parse_head(&mut partial, false).unwrap().is_none());
    }

    #[test]
    fn malformed_heads_are_errors() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 999999 Odd\r\n\r\n",
        ] {
            let mut buffer = BytesMut::from(raw);
            assert!(
                matches!(
                    parse_head(&mut buffer, false),
                    Err(UpstreamError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    /// A body over an in-memory connection: the PE side writes `wire` and closes.
    async fn read_body(wire: &'static [u8], framing: Framing) -> Result<Vec<u8>, BoxError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let pe = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            for piece in wire.chunks(3) {
                // The gateway hangs up on malformed framing.
                if socket.write_all(piece).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
        let upstream = Upstream::new(Duration::from_secs(1), None, false);
        let Ok(Opened::Http1(stream)) = upstream.connect(address, false).await else {
            panic!("no HTTP/1.1 connection");
        };
        let body = H1Body {
            connection: Some(Connection::new(stream)),
            framing,
            keep_alive: true,
            home: Some((upstream, address)),
            started: crate::now(),
        };
        let collected = body.collect().await.map(|c| c.to_bytes().to_vec());
        pe.await.unwrap();
        collected
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_across_reads() {
        let body = read_body(
            b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n",
            Framing::Chunked(Chunk::Size),
        )
        .await
        .unwrap();
        assert_eq!(body, b"hello, world");
        assert!(
            read_body(b"5\r\nhelloXX\r\n0\r\n\r\n", Framing::Chunked(Chunk::Size))
                .await
                .is_err()
        );
        assert!(
            read_body(b"zz\r\n", Framing::Chunked(Chunk::Size))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_until_close_ends_at_close() {
        assert!(read_body(b"abc", Framing::Length(10)).await.is_err());
        assert_eq!(
            read_body(b"abcdef", Framing::UntilClose).await.unwrap(),
            b"abcdef"
        );
        assert_eq!(
            read_body(b"abcdef", Framing::Length(6)).await.unwrap(),
            b"abcdef"
        );
    }

    /// A PE answering each request on a connection with `response`, counting
    /// connections.
    async fn fake_pe(response: &'static [u8]) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    while let Ok(read) = socket.read(&mut buffer).await {
                        if read == 0 || socket.write_all(response).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    /// `method /` with `body` and no header fields.
    async fn send(
        upstream: &Arc<Upstream>,
        address: SocketAddr,
        method: Method,
        body: OutgoingBody,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let headers = HeaderMap::new();
        let request = Outgoing {
            method: &method,
            target: "/",
            headers: &headers,
            extra: Vec::new(),
            body,
        };
        upstream.send(address, request, crate::now()).await
    }

    async fn get(upstream: &Arc<Upstream>, address: SocketAddr) -> (StatusCode, Vec<u8>) {
        let empty = OutgoingBody::Whole(Bytes::new());
        let response = send(upstream, address, Method::GET, empty).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body.to_vec())
    }

    #[tokio::test]
    async fn keep_alive_connections_are_reused_and_closing_ones_are_not() {
        let upstream = Upstream::new(Duration::from_secs(1), None, false);
        let (address, accepted) = fake_pe(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        for _ in 0..3 {
            assert_eq!(
                get(&upstream, address).await,
                (StatusCode::OK, b"ok".to_vec())
            );
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A pooled connection holds no read buffer while it waits.
        {
            let idle = upstream.idle.lock().unwrap();
            let pooled = &idle.by_pe[&address];
            assert_eq!(pooled.len(), 1);
            assert_eq!(pooled[0].connection.buffer.capacity(), 0);
        }

        let (address, accepted) =
            fake_pe(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok").await;
        for _ in 0..3 {
            assert_eq!(get(&upstream, address).await.0, StatusCode::OK);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_refused_connects_say_so() {
        let upstream = Upstream::new(Duration::from_secs(1), None, false);
        let (address, _) = fake_pe(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(get(&upstream, address).await.0, StatusCode::CREATED);
        // A port bound but not listening refuses connections, and stays this test's.
        let bound = tokio::net::TcpSocket::new_v4().unwrap();
        bound.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = bound.local_addr().unwrap();
        let empty = OutgoingBody::Whole(Bytes::new());
        let refused = send(&upstream, address, Method::GET, empty)
            .await
            .unwrap_err();
        assert!(refused.is_connect(), "{refused}");
    }

    /// A request body that never ends.
    struct Endless;

    impl Body for Endless {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            static CHUNK: [u8; 16 * 1024] = [b'x'; 16 * 1024];
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
        }
    }

    #[tokio::test]
    async fn an_early_answer_stops_the_upload_and_retires_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Reads the head only, answers, and reads nothing more.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && socket.read_exact(&mut byte).await.is_ok() {
                    head.push(byte[0]);
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                    .await;
                open.push(socket);
            }
        });
        let upstream = Upstream::new(Duration::from_secs(1), None, false);
        for _ in 0..2 {
            let endless = OutgoingBody::Streaming {
                body: Endless.boxed_unsync(),
                length: None,
            };
            let response = tokio::time::timeout(
                Duration::from_secs(10),
                send(&upstream, address, Method::POST, endless),
            )
            .await
            .expect("the early answer ends the upload")
            .unwrap();
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "a connection left mid-body is not reused"
        );
    }

    /// An h2c PE (hyper's HTTP/2 server): answers each request with its version, its
    /// `:authority` and the length of its body. The count is of connections accepted.
    async fn h2c_pe() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let service = hyper::service::service_fn(
                    |request: http::Request<hyper::body::Incoming>| async move {
                        let said = format!(
                            "{:?} {}",
                            request.version(),
                            request.uri().authority().map_or("", |a| a.as_str())
                        );
                        let body = request.into_body().collect().await?.to_bytes();
                        let answer = format!("{said} {}", body.len());
                        Ok::<_, hyper::Error>(Response::new(http_body_util::Full::new(
                            Bytes::from(answer),
                        )))
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service),
                );
            }
        });
        (address, accepted)
    }

    #[tokio::test]
    async fn http2_requests_of_many_clients_share_one_connection_per_pe_opened_once() {
        let upstream = Upstream::new(Duration::from_secs(1), None, true);
        let (address, accepted) = h2c_pe().await;
        let expected = format!("HTTP/2.0 {address} 0");
        // All at once, before the PE has a connection: one opens it, the others wait.
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let upstream = upstream.clone();
            requests.spawn(async move { get(&upstream, address).await });
        }
        while let Some(answer) = requests.join_next().await {
            assert_eq!(
                answer.unwrap(),
                (StatusCode::OK, expected.clone().into_bytes())
            );
        }
        let body = OutgoingBody::Whole(Bytes::from_static(b"12345"));
        let response = send(&upstream, address, Method::POST, body).await.unwrap();
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(answer, format!("HTTP/2.0 {address} 5").as_bytes());
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
