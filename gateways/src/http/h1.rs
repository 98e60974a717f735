//! The gateway's own HTTP/1.1 server loop for the common request: a head parsed with
//! httparse straight from the connection's buffer (values are slices of it), a body of
//! a known, small length read whole, the response written with its body in one go.
//! Anything else (HTTP/1.0, HTTP/2's preface, `Transfer-Encoding`, `Upgrade`, `Expect`,
//! larger bodies, heads that are malformed or over the limit) hands the connection,
//! with every byte read so far, to hyper, which serves it from that request on.
//!
//! Why not hyper for everything: per request hyper arms a boxed header timer, reads
//! the clock for its `Date` cache on every poll and goes through its dispatcher; most
//! of the gateway's requests are small, and with this loop `bench/http.sh` measured
//! 16.4-17.0 µs of CPU per request instead of 17.6-18.1 µs (HAProxy: 16.3-17.3 µs).

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::body::{BoxError, ClientBody, ClientRequest, ProxyBody};
use super::buffers;
use super::connection::{State, serve_connection};
use super::head::{LAST_CHUNK, MAX_HEADERS, Spans, put_chunk, put_field, put_fields};
use super::moving::{self, ClientConnection};
use super::proxy::handle;
use super::respond::{http_date, text};
use crate::handover::Handed;
use crate::{Directory, Lifecycle};

/// Request bodies up to this size are read by this loop; larger ones go to hyper.
const MAX_BODY: usize = 64 * 1024;
const READ_SIZE: usize = buffers::SIZE;
/// How long an idle keep-alive connection may still bring a request once its listener
/// stops.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// Response bytes gathered before they are written (a body larger than this goes out
/// in pieces).
const WRITE_BATCH: usize = 64 * 1024;

/// Once the listener stops (a drain, an upgrade, a removed or replaced listener), an
/// idle connection is closed only after [`STOP_GRACE`] without a request: a client may
/// have sent its next request already, which a close would lose (HAProxy's
/// `idle-close-on-response`); that request is answered with `Connection: close`. The
/// grace, once started, is kept in `grace` (this future is dropped at each request).
async fn idle_expired(
    stop: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    grace: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
) {
    if grace.is_none() {
        stop.await;
        *grace = Some(Box::pin(tokio::time::sleep(STOP_GRACE)));
    }
    if let Some(grace) = grace {
        grace.as_mut().await;
    }
}

/// The connection settings of a listener that this loop applies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) header_timeout: Duration,
    pub(super) max_header_bytes: usize,
}

/// A request this loop serves.
struct Parsed {
    parts: http::request::Parts,
    body: Bytes,
    /// The client asked to close after this response.
    close: bool,
}

impl Parsed {
    /// The request for the proxy, whether it is a HEAD, and whether the client asked
    /// to close after it.
    fn into_request(self) -> (ClientRequest, bool, bool) {
        let head_only = self.parts.method == Method::HEAD;
        let request = ClientRequest {
            parts: self.parts,
            body: ClientBody::Read(self.body),
            upgrade: None,
        };
        (request, head_only, self.close)
    }
}

/// What to do when there is no request to serve yet.
enum Next {
    /// More bytes are needed.
    Partial,
    /// Hyper serves the connection from here.
    HandOff,
    /// A head that httparse accepted but `http` does not (400, then close).
    Malformed,
}

/// Serves one client connection until it ends, the gateway stops, or a request needs
/// hyper. An async block rather than an async fn: that keeps a copy of each argument
/// beside the local it is moved to (112 bytes more in every connection's task).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a copy of each argument: a larger task per connection"
)]
pub(super) fn serve<I, D>(
    mut io: I,
    state: Arc<State<D>>,
    peer: SocketAddr,
    limits: Limits,
    builder: Arc<auto::Builder<TokioExecutor>>,
    lifecycle: &Lifecycle,
) -> impl Future<Output = ()> + '_
where
    I: AsyncRead + AsyncWrite + ClientConnection + Unpin + Send + 'static,
    D: Directory,
{
    async move {
        // Taken from the thread's spare buffers when needed.
        let (mut input, mut output) = (BytesMut::new(), BytesMut::new());
        // One timer for the connection's life, pushed on if a newer head is still in
        // time rather than re-armed per request.
        let mut timer = Box::pin(tokio::time::sleep(limits.header_timeout));
        // Registered with the tokens once, not per request.
        let mut stop_accepting = std::pin::pin!(lifecycle.stop_accepting.cancelled());
        let mut close_sessions = std::pin::pin!(lifecycle.close_sessions.cancelled());
        // Across requests too: a wait made per request would take the token's lock.
        let leave = state.handover.leave().clone();
        let mut leaving = std::pin::pin!(leave.cancelled());
        let (plain, mut leave_seen, mut staying, mut grace) = (io.plain(), false, false, None);
        let departure = 'serving: loop {
            let waiting_since = crate::now();
            let request = loop {
                // Matched apart: a parsed head held across a wait would size every task.
                let next = match next_request(&mut input, limits.max_header_bytes) {
                    Ok(request) => break request,
                    Err(next) => next,
                };
                match next {
                    Next::Partial => {}
                    Next::HandOff => {
                        let io = Rewind {
                            read: input.freeze(),
                            io,
                        };
                        // Rare: on the heap, so that it does not size every connection.
                        Box::pin(serve_connection(io, &builder, state, peer, lifecycle)).await;
                        return;
                    }
                    Next::Malformed => return Box::pin(malformed(&mut io, &mut output)).await,
                }
                let idle = input.is_empty();
                make_room(&mut input, &mut output, idle && plain);
                let read = tokio::select! {
                    biased;
                    read = read_into(&mut io, &mut input) => read,
                    () = timer.as_mut() => {
                        if header_timed_out(timer.as_mut(), waiting_since + limits.header_timeout, peer) {
                            return;
                        }
                        continue;
                    }
                    () = idle_expired(stop_accepting.as_mut(), &mut grace), if idle => return,
                    () = &mut leaving, if idle && plain && !leave_seen => {
                        leave_seen = true;
                        continue;
                    }
                    // Between two requests with nothing read: it can go to the next process.
                    place = state.handover.departure(idle && leave_seen && !staying) => match place {
                        Some(place) => break 'serving place,
                        None => {
                            staying = true;
                            continue;
                        }
                    },
                };
                if !matches!(read, Ok(read) if read > 0) {
                    return;
                }
            };
            // On the heap: the proxying (4.6 KiB) would size every connection's task.
            let exchange = Box::pin(exchange(
                (&state, peer),
                (&mut io, &mut output),
                request,
                (lifecycle, plain),
            ));
            let (written, close) = tokio::select! {
                done = exchange => done,
                // A client too slow to take its response does not hold up the exit.
                () = close_sessions.as_mut() => return,
            };
            if let Err(error) = written {
                tracing::debug!(%peer, %error, "response not delivered: closing");
                return;
            }
            if close {
                let _ = io.shutdown().await;
                return;
            }
        };
        moving::depart(io, departure);
    }
}

/// One request: proxied, and its response written; whether it was, and whether the
/// connection closes after it (the client asked, or the gateway is shutting down and
/// the connection does not go on in the next process).
async fn exchange<I, D>(
    (state, peer): (&State<D>, SocketAddr),
    (io, output): (&mut I, &mut BytesMut),
    request: Parsed,
    (lifecycle, plain): (&Lifecycle, bool),
) -> (Result<(), BoxError>, bool)
where
    I: AsyncWrite + Unpin,
    D: Directory,
{
    let (request, head_only, close) = request.into_request();
    // Made per request: kept per connection, its values (120 bytes and two
    // allocations) stayed with every idle keep-alive connection.
    let forwarding = super::forward::Forwarding::new(peer, state.https);
    let response = handle(state, peer, &forwarding, request).await;
    let stopping = lifecycle.stop_accepting.is_cancelled();
    let close = close || (stopping && !(plain && state.handover.leaving()));
    let written = write_response(io, output, response, head_only, close).await;
    (written, close)
}

/// Serves a connection the previous process handed over (a binary upgrade).
pub(super) async fn serve_arrived<D: Directory>(
    handed: Handed,
    state: Arc<State<D>>,
    limits: Limits,
    builder: Arc<auto::Builder<TokioExecutor>>,
    lifecycle: &Lifecycle,
) {
    match moving::arrive(handed) {
        Ok((stream, peer)) => serve(stream, state, peer, limits, builder, lifecycle).await,
        Err(error) => {
            tracing::warn!(%error, "upgrade: an HTTP connection handed over could not be taken on: closing it");
        }
    }
}

/// Room for the next read: a plain connection waiting for a request gives both its
/// buffers back (`read_into` takes one again when input comes); otherwise `input` gets
/// room for a whole read.
fn make_room(input: &mut BytesMut, output: &mut BytesMut, waiting_plain: bool) {
    if waiting_plain {
        buffers::give_back(input);
        buffers::give_back(output);
    } else if input.capacity() - input.len() < READ_SIZE / 2 {
        input.reserve(READ_SIZE);
    }
}

/// Reads into `input`; without a buffer, first waits until input has come, then takes
/// one (cancel-safe: readiness consumes nothing).
async fn read_into<I: AsyncRead + ClientConnection + Unpin>(
    io: &mut I,
    input: &mut BytesMut,
) -> std::io::Result<usize> {
    if input.capacity() == 0 {
        std::future::poll_fn(|cx| io.poll_read_ready(cx)).await?;
        *input = buffers::take();
    }
    io.read_buf(input).await
}

/// A head that httparse accepted but `http` does not: 400, and the connection ends.
async fn malformed<I: AsyncWrite + Unpin>(io: &mut I, output: &mut BytesMut) {
    let response = text(StatusCode::BAD_REQUEST, "malformed request");
    let _ = write_response(io, output, response, false, true).await;
}

/// The connection's header timer fired: whether the head is late (it is closed then),
/// else the timer is pushed on to the current head's deadline.
fn header_timed_out(
    timer: Pin<&mut tokio::time::Sleep>,
    deadline: std::time::Instant,
    peer: SocketAddr,
) -> bool {
    if crate::now() >= deadline {
        tracing::debug!(%peer, "no request head within header_timeout: closing");
        return true;
    }
    timer.reset(deadline.into());
    false
}

/// The next request at the start of `input` (consumed with its body), or what to do
/// instead.
fn next_request(input: &mut BytesMut, max_header_bytes: usize) -> Result<Parsed, Next> {
    if input.is_empty() {
        return Err(Next::Partial);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let length = match request.parse_with_uninit_headers(input, &mut slots) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if input.len() <= max_header_bytes => {
            return Err(Next::Partial);
        }
        // Too large, malformed, or not HTTP/1 (HTTP/2's preface): hyper answers.
        Ok(httparse::Status::Partial) | Err(_) => return Err(Next::HandOff),
    };
    if length > max_header_bytes || request.version != Some(1) {
        return Err(Next::HandOff);
    }
    let Some(method) = request
        .method
        .and_then(|method| Method::from_bytes(method.as_bytes()).ok())
        .filter(|method| *method != Method::CONNECT)
    else {
        return Err(Next::HandOff);
    };
    let mut body_length = 0usize;
    let mut close = false;
    for field in request.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Err(Next::HandOff);
        }
        if name.eq_ignore_ascii_case("content-length") {
            match content_length(field.value) {
                Some(value) if value <= MAX_BODY && (body_length == 0 || body_length == value) => {
                    body_length = value;
                }
                _ => return Err(Next::HandOff),
            }
        }
        if name.eq_ignore_ascii_case("connection") {
            for token in field.value.split(|byte| *byte == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Err(Next::HandOff);
                }
            }
        }
    }
    if input.len() < length + body_length {
        // The body is still coming (its length is bounded above).
        return Err(Next::Partial);
    }
    let spans = Spans::of(
        input,
        request.path.unwrap_or("/").as_bytes(),
        request.headers,
    );
    let head = input.split_to(length).freeze();
    let body = input.split_to(body_length).freeze();
    let Some(spans) = spans else {
        return Err(Next::Malformed);
    };
    // Room for what the gateway adds (forwarding headers, Via, session).
    let Some((uri, headers)) = spans
        .target(&head)
        .and_then(|target| Uri::from_maybe_shared(target).ok())
        .zip(spans.headers(&head, 6))
    else {
        return Err(Next::Malformed);
    };
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Ok(Parsed { parts, body, close })
}

/// Writes a response: its head, then its body (chunked when its length is unknown);
/// what the body has ready goes out with the head in one write.
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    output: &mut BytesMut,
    response: Response<ProxyBody>,
    head_only: bool,
    close: bool,
) -> Result<(), BoxError> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodyless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = parts.headers.contains_key(header::CONTENT_LENGTH);
    let chunked = !bodyless && !declared && body.size_hint().exact().is_none();
    if output.capacity() == 0 {
        *output = buffers::take();
    }
    output.clear();
    output.put_slice(b"HTTP/1.1 ");
    output.put_slice(status.as_str().as_bytes());
    output.put_u8(b' ');
    output.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    output.put_slice(b"\r\n");
    put_fields(
        output,
        &parts.headers,
        &[header::TRANSFER_ENCODING, header::CONNECTION],
    );
    if !declared
        && !chunked
        && status != StatusCode::NO_CONTENT
        && !status.is_informational()
        && let Some(length) = body.size_hint().exact()
    {
        put_field(output, b"content-length", length.to_string().as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        put_field(output, b"date", http_date().as_bytes());
    }
    if chunked {
        put_field(output, b"transfer-encoding", b"chunked");
    }
    if close {
        put_field(output, b"connection", b"close");
    }
    output.put_slice(b"\r\n");
    if !bodyless {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                put_chunk(output, &data);
            } else {
                output.put_slice(&data);
            }
            // A body still streaming goes out as it comes: the client must not wait
            // for bytes the gateway already has.
            if output.len() >= WRITE_BATCH || !body.is_end_stream() {
                send(io, output).await?;
            }
        }
        if chunked {
            output.put_slice(LAST_CHUNK);
        }
    }
    send(io, output).await
}

/// Writes and flushes `output` (TLS keeps written bytes until flushed when the socket
/// is full), then empties it.
async fn send<I: AsyncWrite + Unpin>(io: &mut I, output: &mut BytesMut) -> Result<(), BoxError> {
    io.write_all(output).await?;
    io.flush().await?;
    output.clear();
    Ok(())
}

/// A connection handed to hyper with the bytes this loop had read from it.
struct Rewind<I> {
    read: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read.has_remaining() {
            let count = self.read.len().min(buf.remaining());
            buf.put_slice(self.read.get(..count).unwrap_or_default());
            self.read.advance(count);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A `Content-Length` value (RFC 9110 §8.6: `1*DIGIT`, around it only the optional
/// white space of a field, spaces and tabs); anything else (a sign, a non-breaking
/// space) is not ours to interpret and goes to hyper, which refuses it.
fn content_length(value: &[u8]) -> Option<usize> {
    let start = value.iter().position(|b| !matches!(b, b' ' | b'\t'))?;
    let end = value.iter().rposition(|b| !matches!(b, b' ' | b'\t'))?;
    let digits = value.get(start..=end)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::Handover;
    use crate::health::EjectionBoard;
    use crate::http::{HttpListenerConfig, Reloader};
    use crate::testing::NoPool;
    use rserpool_proto::wire::PoolHandle;

    /// An idle keep-alive connection costs its task's future (as large as the largest
    /// state it can be in): 5.6 KiB while a request's exchange was part of it, 9.5 KiB
    /// while the TLS connections' states were too (`bench/sessions.sh`: 10.56 KiB per
    /// idle connection against HAProxy's 1.37).
    #[tokio::test]
    async fn a_connection_task_holds_no_exchange_while_idle_and_stays_small() {
        let listening = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listening.local_addr().expect("its address");
        let client = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let pool_handle = PoolHandle::new(b"SizePool").expect("a valid handle");
        let config = HttpListenerConfig::new(address, pool_handle);
        let routing = Reloader::new(&config, EjectionBoard::default());
        let state = Arc::new(State::new(
            &config,
            (routing, Arc::new(NoPool)),
            Handover::default(),
        ));
        let limits = Limits {
            header_timeout: config.header_timeout,
            max_header_bytes: config.max_header_bytes,
        };
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        let lifecycle = Lifecycle::default();
        let connection = serve(client, state, address, limits, builder, &lifecycle);
        let size = std::mem::size_of_val(&connection);
        // 760 bytes with the forwarding headers kept per connection, 640 without.
        assert!(size <= 700, "a connection's task future is {size} bytes");
    }

    fn parse(raw: &[u8]) -> (Result<Parsed, Next>, BytesMut) {
        let mut input = BytesMut::from(raw);
        let next = next_request(&mut input, 8192);
        (next, input)
    }

    #[test]
    fn simple_requests_are_parsed_with_their_bodies_and_pipelined_rest() {
        let (next, rest) = parse(
            b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabcGET / HTTP/1.1\r\n",
        );
        let Ok(request) = next else {
            panic!("a request");
        };
        assert_eq!(request.parts.method, Method::POST);
        assert_eq!(
            request.parts.uri.path_and_query().unwrap().as_str(),
            "/a?b=c"
        );
        assert_eq!(request.parts.headers["host"], "x");
        assert_eq!(&request.body[..], b"abc");
        assert!(request.close);
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n", "the next request stays");
        let (next, _) = parse(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        assert!(
            matches!(next, Err(Next::Partial)),
            "the body is still coming"
        );
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"5"), Some(5));
        assert_eq!(content_length(b" 12\t"), Some(12));
        for bad in [
            &b"+5"[..],
            b"-5",
            b"5 5",
            b"0x5",
            b"",
            b" ",
            "5\u{a0}".as_bytes(),
            b"5\r",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unusual_requests_go_to_hyper_untouched() {
        for raw in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nabcde",
            "POST / HTTP/1.1\r\nContent-Length: 5\u{a0}\r\n\r\nabcde".as_bytes(),
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
        ] {
            let (next, input) = parse(raw);
            assert!(
                matches!(next, Err(Next::HandOff)),
                "{}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(&input[..], raw, "nothing consumed");
        }
        let mut long = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        long.extend_from_slice(&[b'a'; 9000]);
        assert!(matches!(next_request(&mut long, 8192), Err(Next::HandOff)));
    }

    #[tokio::test]
    async fn responses_are_framed_for_the_client() {
        let mut output = BytesMut::new();
        let mut wire = Vec::new();
        let body = Frames(vec![Bytes::from_static(b"c"), Bytes::from_static(b"ab")]).boxed_unsync();
        let response = Response::new(body);
        write_response(&mut wire, &mut output, response, false, true)
            .await
            .unwrap();
        let text = String::from_utf8(wire).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"),
            "{text}"
        );

        let mut wire = Vec::new();
        let response = super::text(StatusCode::NOT_FOUND, "none");
        write_response(&mut wire, &mut output, response, true, false)
            .await
            .unwrap();
        let text = String::from_utf8(wire).unwrap();
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "HEAD: no body: {text}");
    }

    /// A body of frames (popped from the end) whose length is not known up front.
    struct Frames(Vec<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop().map(|data| Ok(hyper::body::Frame::data(data))))
        }
    }
}
