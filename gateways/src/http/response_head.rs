//! A PE's response head as the HTTP gateway reads it (RFC 9112 §2-4, §6): the status
//! line and fields, how the body is delimited (RFC 9112 §6.3), whether the connection
//! stays open, and why a request got no head.

use std::io;

use bytes::BytesMut;
use http::header::HeaderMap;
use http::{Response, StatusCode, Version, header};

use super::attempts::Failure;
use super::body::BoxError;
use super::forward::connection_has;
use super::head::{MAX_HEADERS, Spans};

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    #[error("cannot connect to the pool element: {0}")]
    Connect(io::Error),
    #[error("connecting to the pool element timed out")]
    ConnectTimeout,
    /// The PE did not prove who it is (a certificate that does not verify) or speaks
    /// no TLS.
    #[error("TLS handshake with the pool element failed: {0}")]
    Tls(io::Error),
    #[error("connection to the pool element lost: {0}")]
    Lost(io::Error),
    #[error("the pool element closed the connection without a response")]
    Closed,
    #[error("malformed response from the pool element: {0}")]
    Malformed(&'static str),
    #[error("reading the request body failed: {0}")]
    RequestBody(BoxError),
    #[error("HTTP/2 handshake with the pool element failed: {0}")]
    Http2Handshake(hyper::Error),
    #[error("the request cannot be sent over HTTP/2: {0}")]
    Http2Request(http::Error),
    /// The PE refused the stream or the connection was gone before it went out: the
    /// request never reached the PE's application (RFC 9113 §8.7).
    #[error("the pool element did not process the request: {0}")]
    Unprocessed(hyper::Error),
    #[error("HTTP/2 exchange with the pool element failed: {0}")]
    Http2(hyper::Error),
    /// Another request could not open the PE's HTTP/2 connection a moment ago (it
    /// reported the PE when that was due).
    #[error("connecting to the pool element failed just now")]
    OpeningFailed,
}

impl UpstreamError {
    /// Nothing reached the PE: the request may go anywhere else.
    pub(super) fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::ConnectTimeout | Self::Tls(_))
    }

    /// How the attempt failed, for the next step.
    pub(super) fn failure(&self) -> Failure {
        match self {
            Self::Tls(_) | Self::Http2Handshake(_) | Self::Unprocessed(_) | Self::OpeningFailed => {
                Failure::Declined
            }
            _ if self.is_connect() => Failure::NotSent,
            _ => Failure::Lost,
        }
    }
}

/// How the rest of a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// Read to the end (or never had a body).
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the PE closes the connection.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A complete head at the start of `buffer` (consumed), or `None` when more is needed.
pub(super) fn parse_head(
    buffer: &mut BytesMut,
    head_only: bool,
) -> Result<Option<(http::response::Parts, Framing, bool)>, UpstreamError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(UpstreamError::Malformed("too many headers"));
        }
        Err(_) => return Err(UpstreamError::Malformed("not an HTTP/1 response head")),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(UpstreamError::Malformed("bad status code"))?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let spans = Spans::of(buffer, b"", response.headers)
        .ok_or(UpstreamError::Malformed("response head too large"))?;
    let head = buffer.split_to(length).freeze();
    // Room for what the gateway adds (Via, Set-Cookie).
    let mut headers = spans
        .headers(&head, 2)
        .ok_or(UpstreamError::Malformed("bad header field"))?;
    let (framing, delimited) = framing(status, &mut headers, head_only)?;
    let keep_alive = delimited && connection_kept(&headers, version);
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((parts, framing, keep_alive)))
}

/// The body's framing, and whether it ends without the connection closing.
pub(super) fn framing(
    status: StatusCode,
    headers: &mut HeaderMap,
    head_only: bool,
) -> Result<(Framing, bool), UpstreamError> {
    if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, status != StatusCode::SWITCHING_PROTOCOLS));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // Transfer-Encoding overrides Content-Length, which must then not reach the
        // client.
        headers.remove(header::CONTENT_LENGTH);
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .map(str::trim);
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => {
                (Framing::Chunked(Chunk::Size), true)
            }
            _ => (Framing::UntilClose, false),
        });
    }
    let mut declared: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value
            .to_str()
            .map_err(|_| UpstreamError::Malformed("bad Content-Length"))?
            .split(',')
        {
            let length = item
                .trim()
                .parse::<u64>()
                .map_err(|_| UpstreamError::Malformed("bad Content-Length"))?;
            if declared.is_some_and(|earlier| earlier != length) {
                return Err(UpstreamError::Malformed("conflicting Content-Length"));
            }
            declared = Some(length);
        }
    }
    Ok(match declared {
        Some(0) => (Framing::Done, true),
        Some(length) => (Framing::Length(length), true),
        None => (Framing::UntilClose, false),
    })
}

/// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only with `keep-alive`.
pub(super) fn connection_kept(headers: &HeaderMap, version: Version) -> bool {
    if version == Version::HTTP_10 {
        connection_has(headers, "keep-alive")
    } else {
        !connection_has(headers, "close")
    }
}
