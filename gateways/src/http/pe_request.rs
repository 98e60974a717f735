//! One HTTP/1.1 connection to a PE (RFC 9112) as the gateway's client uses it: a
//! request written in one buffer (its body streamed when it is not held), the
//! response head read and parsed with httparse.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::body::ProxyBody;
use super::head::{LAST_CHUNK, put_chunk, put_field, put_fields};
use super::pe_stream::PeStream;
use super::response_head::{Framing, UpstreamError, parse_head};

/// Response heads larger than this are refused (502).
const MAX_HEAD: usize = 64 * 1024;
/// What one read from a PE asks for at least.
pub(super) const READ_SIZE: usize = 16 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const COALESCE: usize = 16 * 1024;

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
pub(super) struct Connection {
    pub(super) stream: PeStream,
    pub(super) buffer: BytesMut,
    pub(super) head: BytesMut,
}

impl Connection {
    pub(super) fn new(stream: PeStream) -> Self {
        Self {
            stream,
            // Allocated at the first read: a connection still sending a request (a
            // body the client sends slowly) holds no read buffer.
            buffer: BytesMut::new(),
            head: BytesMut::with_capacity(1024),
        }
    }
}

/// Writes a request; `false` when the PE answered before the whole body went out.
pub(super) async fn write_request(
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
    let complete = match body {
        OutgoingBody::Whole(bytes) => {
            if let Some(length) = declared_length(method, bytes.len()) {
                put_field(&mut head, b"content-length", length.to_string().as_bytes());
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
pub(super) async fn read_head(
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

/// The `Content-Length` a held body of `length` bytes is sent with: none for an empty
/// body of a method that has none by nature.
pub(super) fn declared_length(method: &Method, length: usize) -> Option<u64> {
    let bodyless = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::DELETE
    );
    (length > 0 || !bodyless).then_some(length as u64)
}
