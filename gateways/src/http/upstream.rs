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

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::{BoxError, ProxyBody};
use super::head::{LAST_CHUNK, put_chunk, put_field, put_fields};
use super::pe_stream::PeStream;
use super::pe_tls::PeTls;
use super::response_head::{Chunk, Framing, UpstreamError, parse_head};

/// Response heads larger than this are refused (502).
const MAX_HEAD: usize = 64 * 1024;
/// A chunk-size or trailer line longer than this is malformed.
const MAX_LINE: usize = 4096;
const READ_SIZE: usize = 16 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const COALESCE: usize = 16 * 1024;
/// Idle connections kept per PE.
const IDLE_PER_PE: usize = 256;
/// Below common backend keep-alive timeouts, so that the gateway does not send on a
/// connection the PE is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// The request body as it goes out.
pub(super) enum OutgoingBody {
    /// Held whole: sent with `Content-Length`.
    Whole(Bytes),
    /// Streamed from the client: `Content-Length` when the client declared one, else
    /// chunked.
    Streaming {
        body: ProxyBody,
        length: Option<u64>,
    },
}

/// A request for a PE; `headers` are sent as they are, minus any framing headers (the
/// body's framing is the client's own), then `extra` (this attempt's own headers).
pub(super) struct Outgoing<'a> {
    pub(super) method: &'a Method,
    pub(super) target: &'a str,
    pub(super) headers: &'a HeaderMap,
    pub(super) extra: Vec<(HeaderName, HeaderValue)>,
    pub(super) body: OutgoingBody,
}

/// A PE's socket, the bytes read from it but not yet used, and the buffer requests
/// are written from (kept for the next request).
struct Connection {
    stream: PeStream,
    buffer: BytesMut,
    head: BytesMut,
}

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
    idle: Mutex<IdlePool>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub(super) fn new(connect_timeout: Duration, tls: Option<Arc<PeTls>>) -> Arc<Self> {
        Arc::new(Self {
            connect_timeout,
            tls,
            idle: Mutex::new(IdlePool::default()),
        })
    }

    /// Sends `request` to the PE at `address` and reads the response's head; the body
    /// follows from the same connection, which goes back to the pool when the body has
    /// been read to its end. `now`: when the request started (the pool's clock: idle
    /// connections are timed from the start of their last request, a little early).
    pub(super) async fn send(
        self: &Arc<Self>,
        address: SocketAddr,
        request: Outgoing<'_>,
        now: Instant,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let mut connection = match self.checkout(address, now) {
            Some(connection) => connection,
            None => self.connect(address).await?,
        };
        let head_only = *request.method == Method::HEAD;
        let complete = write_request(&mut connection, address, request).await?;
        let (head, framing, keep_alive) = read_head(&mut connection, head_only).await?;
        // A request whose body was cut short by an early answer leaves the connection
        // mid-message: it cannot carry another.
        let keep_alive = keep_alive && complete;
        let mut body = ResponseBody {
            connection: Some(connection),
            framing,
            keep_alive,
            home: Some((self.clone(), address)),
            started: now,
        };
        if matches!(body.framing, Framing::Done) && head.status != StatusCode::SWITCHING_PROTOCOLS {
            body.finish();
        }
        Ok(Response::from_parts(head, body))
    }

    /// A new connection to `address`: TCP, then the TLS handshake when the route has
    /// `pe_tls`, both within the connect timeout.
    async fn connect(&self, address: SocketAddr) -> Result<Connection, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(address))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        crate::pe_socket::tune(&stream);
        let stream = match &self.tls {
            None => PeStream::Plain(stream),
            Some(tls) => {
                let secured = tokio::time::timeout_at(deadline, tls.connect(stream, address))
                    .await
                    .map_err(|_| UpstreamError::ConnectTimeout)?
                    .map_err(UpstreamError::Tls)?;
                PeStream::Tls(Box::new(secured))
            }
        };
        Ok(Connection {
            stream,
            // Allocated at the first read: a connection still sending a request (a
            // body the client sends slowly) holds no read buffer.
            buffer: BytesMut::new(),
            head: BytesMut::with_capacity(1024),
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

    fn release(&self, address: SocketAddr, connection: Connection, now: Instant) {
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

/// Writes a request; `false` when the PE answered before the whole body went out.
async fn write_request(
    connection: &mut Connection,
    address: SocketAddr,
    request: Outgoing<'_>,
) -> Result<bool, UpstreamError> {
    let Outgoing {
        method,
        target,
        headers,
        extra,
        body,
    } = request;
    let mut head = std::mem::take(&mut connection.head);
    head.clear();
    head.put_slice(method.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(target.as_bytes());
    head.put_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        put_field(&mut head, b"host", address.to_string().as_bytes());
    }
    // The body's framing is this request's own.
    put_fields(
        &mut head,
        headers,
        &[header::CONTENT_LENGTH, header::TRANSFER_ENCODING],
    );
    for (name, value) in &extra {
        put_field(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    let bodyless = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::DELETE
    );
    let complete = match body {
        OutgoingBody::Whole(bytes) => {
            if !(bytes.is_empty() && bodyless) {
                put_field(
                    &mut head,
                    b"content-length",
                    bytes.len().to_string().as_bytes(),
                );
            }
            head.put_slice(b"\r\n");
            if bytes.len() <= COALESCE {
                head.put_slice(&bytes);
                write_all(&mut connection.stream, &head).await?;
            } else {
                write_all(&mut connection.stream, &head).await?;
                write_all(&mut connection.stream, &bytes).await?;
            }
            true
        }
        OutgoingBody::Streaming { body, length } => {
            match length {
                Some(length) => {
                    put_field(&mut head, b"content-length", length.to_string().as_bytes());
                }
                None => put_field(&mut head, b"transfer-encoding", b"chunked"),
            }
            head.put_slice(b"\r\n");
            write_all(&mut connection.stream, &head).await?;
            stream_body(connection, body, length.is_none()).await?
        }
    };
    // TLS may hold the last record until flushed (a no-op on a plain socket).
    connection
        .stream
        .flush()
        .await
        .map_err(UpstreamError::Lost)?;
    connection.head = head;
    Ok(complete)
}

async fn write_all(stream: &mut PeStream, bytes: &[u8]) -> Result<(), UpstreamError> {
    stream.write_all(bytes).await.map_err(UpstreamError::Lost)
}

/// Copies a streaming request body to the PE. A PE that answers before it has read the
/// whole body (an early error) stops the copy: its response is read next (`false`),
/// starting from what came meanwhile (in the connection's buffer).
async fn stream_body(
    connection: &mut Connection,
    mut body: ProxyBody,
    chunked: bool,
) -> Result<bool, UpstreamError> {
    let (mut reader, mut writer) = tokio::io::split(&mut connection.stream);
    let early = &mut connection.buffer;
    let copy = async {
        // A chunk goes out in one write with its framing.
        let mut chunk = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(UpstreamError::RequestBody)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            let bytes = if chunked {
                chunk.clear();
                put_chunk(&mut chunk, &data);
                &chunk[..]
            } else {
                &data[..]
            };
            writer.write_all(bytes).await.map_err(UpstreamError::Lost)?;
            // Over TLS a chunk is not out until flushed (the PE may wait for it).
            writer.flush().await.map_err(UpstreamError::Lost)?;
        }
        if chunked {
            writer
                .write_all(LAST_CHUNK)
                .await
                .map_err(UpstreamError::Lost)?;
        }
        Ok(())
    };
    early.reserve(READ_SIZE);
    tokio::select! {
        copied = copy => copied.map(|()| true),
        // Bytes (or the end) from the PE before the body is through: its answer.
        read = reader.read_buf(early) => read.map(|_| false).map_err(UpstreamError::Lost),
    }
}

/// Reads and parses the response head, skipping interim (1xx) responses other than 101.
async fn read_head(
    connection: &mut Connection,
    head_only: bool,
) -> Result<(http::response::Parts, Framing, bool), UpstreamError> {
    let mut received_any = false;
    loop {
        if !connection.buffer.is_empty()
            && let Some(parsed) = parse_head(&mut connection.buffer, head_only)?
        {
            let (parts, _, _) = &parsed;
            if parts.status.is_informational() && parts.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            return Ok(parsed);
        }
        if connection.buffer.len() >= MAX_HEAD {
            return Err(UpstreamError::Malformed("response head too large"));
        }
        connection.buffer.reserve(READ_SIZE);
        let read = connection
            .stream
            .read_buf(&mut connection.buffer)
            .await
            .map_err(UpstreamError::Lost)?;
        if read == 0 {
            return Err(if received_any {
                UpstreamError::Malformed("response head cut short")
            } else {
                UpstreamError::Closed
            });
        }
        received_any = true;
    }
}

/// A response body read from the PE's connection as the client takes it.
pub(super) struct ResponseBody {
    connection: Option<Connection>,
    framing: Framing,
    keep_alive: bool,
    home: Option<(Arc<Upstream>, SocketAddr)>,
    /// When the request started: the connection's idle time counts from it.
    started: Instant,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
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

impl Body for ResponseBody {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let upstream = Upstream::new(Duration::from_secs(1), None);
        let connection = upstream.connect(address).await.unwrap();
        let body = ResponseBody {
            connection: Some(connection),
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
        let upstream = Upstream::new(Duration::from_secs(1), None);
        let (address, accepted) = fake_pe(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        for _ in 0..3 {
            assert_eq!(
                get(&upstream, address).await,
                (StatusCode::OK, b"ok".to_vec())
            );
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

        let (address, accepted) =
            fake_pe(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok").await;
        for _ in 0..3 {
            assert_eq!(get(&upstream, address).await.0, StatusCode::OK);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_refused_connects_say_so() {
        let upstream = Upstream::new(Duration::from_secs(1), None);
        let (address, _) = fake_pe(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(get(&upstream, address).await.0, StatusCode::CREATED);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = closed.local_addr().unwrap();
        drop(closed);
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
        let upstream = Upstream::new(Duration::from_secs(1), None);
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
}
