//! Resuming a GET whose PE died mid-body: the rest is asked of another PE with `Range`
//! and `If-Range` (RFC 9110 §14.2, §13.1.5) and spliced into the same client response.
//!
//! Splicing is only sound when both PEs serve the very same representation, which
//! only a strong validator promises (RFC 9110 §8.8.1): a strong `ETag`, or a
//! `Last-Modified` that §8.8.2.2 lets count as strong (at least a second before the
//! response's `Date`). `If-Range` makes the other PE answer 206 only if its
//! representation has that validator; anything but a 206 with the expected
//! `Content-Range` (and the same `ETag`) cuts the response instead, as it would have
//! been cut without resuming. Only a 200 answer with a `Content-Length` to a GET
//! without a `Range` of its own is resumed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::body::{BoxError, ProxyBody};
use super::idle::IdleTimeout;
use super::pe_request::{Outgoing, OutgoingBody};
use super::upstream::{ResponseBody, Upstream};

/// What `If-Range` carries: the representation the client is getting.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Validator {
    ETag(HeaderValue),
    LastModified(HeaderValue),
}

/// The strong validator of a response, if it has one (RFC 9110 §8.8.2.2, §8.8.3).
fn strong_validator(headers: &HeaderMap) -> Option<Validator> {
    if let Some(etag) = headers.get(header::ETAG) {
        // A weak tag ("W/") may not be used in If-Range, and no date may stand in for
        // a tag the representation has (§13.1.5).
        return (!etag.as_bytes().starts_with(b"W/") && etag.as_bytes().starts_with(b"\""))
            .then(|| Validator::ETag(etag.clone()));
    }
    let modified = headers.get(header::LAST_MODIFIED)?;
    let date = |name| {
        let text = headers.get(name)?.to_str().ok()?;
        httpdate::parse_http_date(text).ok()
    };
    let (at, sent) = (date(header::LAST_MODIFIED)?, date(header::DATE)?);
    (sent.duration_since(at).ok()? >= Duration::from_secs(1))
        .then(|| Validator::LastModified(modified.clone()))
}

/// The request a resumption repeats, taken once the first response was chosen.
pub(super) struct Request {
    pub(super) target: String,
    pub(super) headers: HeaderMap,
}

/// Where the rest of a response can come from.
pub(super) struct Source {
    pub(super) upstream: Arc<Upstream>,
    /// The other PEs in the policy's order, then the one that answered (it may be back).
    pub(super) candidates: Vec<SocketAddr>,
    pub(super) first_byte_timeout: Duration,
    pub(super) idle_timeout: Duration,
    /// At most this many resumptions per response.
    pub(super) max_resumptions: usize,
}

/// Counters of the route.
#[derive(Clone)]
pub(super) struct ResumeMeters {
    pub(super) resumed: metrics::Counter,
    pub(super) cut: metrics::Counter,
}

/// A response body that survives its PE: when it breaks before its length, the rest
/// comes from another PE.
pub(super) struct Resuming {
    body: ProxyBody,
    state: Option<Box<State>>,
    resuming: Option<Pin<Box<dyn Future<Output = Resumed> + Send>>>,
}

/// What a resumption needs.
struct State {
    request: Request,
    source: Source,
    validator: Validator,
    received: u64,
    length: u64,
    tries: usize,
    meters: ResumeMeters,
}

type Resumed = (Box<State>, Option<ProxyBody>);

/// A response that may be resumed: its validator and length.
pub(super) struct Resumable {
    validator: Validator,
    length: u64,
}

/// Whether the PE's answer to `method` (with `response` as its head, `body` its body
/// as it comes) may be resumed.
pub(super) fn resumable(
    method: &Method,
    request_headers: &HeaderMap,
    response: &Response<ResponseBody>,
) -> Option<Resumable> {
    if *method != Method::GET
        || response.status() != StatusCode::OK
        || request_headers.contains_key(header::RANGE)
        || !response.body().reads_more()
    {
        return None;
    }
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()?;
    let validator = strong_validator(response.headers())?;
    Some(Resumable { validator, length })
}

impl Resumable {
    /// `body`, resumed from `source` with `request` when it breaks.
    pub(super) fn wrap(
        self,
        body: ProxyBody,
        request: Request,
        source: Source,
        meters: ResumeMeters,
    ) -> Resuming {
        Resuming {
            body,
            state: Some(Box::new(State {
                request,
                source,
                validator: self.validator,
                received: 0,
                length: self.length,
                tries: 0,
                meters,
            })),
            resuming: None,
        }
    }
}

impl State {
    /// Asks the next candidate for the rest; the body to go on with, or `None`.
    async fn resume(mut self: Box<Self>) -> Resumed {
        while self.tries < self.source.max_resumptions {
            let Some(&address) = self
                .source
                .candidates
                .get(self.tries % self.source.candidates.len().max(1))
            else {
                break;
            };
            self.tries += 1;
            let range = format!("bytes={}-", self.received);
            let validator = match &self.validator {
                Validator::ETag(value) | Validator::LastModified(value) => value.clone(),
            };
            let Ok(range) = HeaderValue::from_str(&range) else {
                break;
            };
            let outgoing = Outgoing {
                method: &Method::GET,
                target: &self.request.target,
                headers: &self.request.headers,
                extra: vec![(header::RANGE, range), (header::IF_RANGE, validator)],
                body: OutgoingBody::Whole(Bytes::new()),
            };
            let sent = tokio::time::timeout(
                self.source.first_byte_timeout,
                self.source.upstream.send(address, outgoing, crate::now()),
            )
            .await;
            let Ok(Ok(response)) = sent else {
                continue;
            };
            // Anything but the expected rest of the same representation ends the
            // response (a 200 is the whole of another one).
            return if self.continues(&response) {
                let idle = self.source.idle_timeout;
                let body = IdleTimeout::new(response.into_body(), idle).boxed_unsync();
                (self, Some(body))
            } else {
                (self, None)
            };
        }
        (self, None)
    }

    /// A 206 with the rest of this response's representation.
    fn continues(&self, response: &Response<ResponseBody>) -> bool {
        let headers = response.headers();
        let expected = format!(
            "bytes {}-{}/{}",
            self.received,
            self.length.saturating_sub(1),
            self.length
        );
        let same_tag = match &self.validator {
            Validator::ETag(tag) => headers.get(header::ETAG) == Some(tag),
            Validator::LastModified(_) => true,
        };
        response.status() == StatusCode::PARTIAL_CONTENT
            && headers
                .get(header::CONTENT_RANGE)
                .is_some_and(|range| range.as_bytes() == expected.as_bytes())
            && same_tag
    }
}

impl Body for Resuming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(resuming) = this.resuming.as_mut() {
                let (state, body) = ready!(resuming.as_mut().poll(cx));
                this.resuming = None;
                let Some(body) = body else {
                    state.meters.cut.increment(1);
                    tracing::info!(
                        at = state.received,
                        length = state.length,
                        "response cut: no pool element served the rest of the same representation"
                    );
                    return Poll::Ready(Some(Err("the pool element died mid-response".into())));
                };
                state.meters.resumed.increment(1);
                tracing::info!(
                    at = state.received,
                    length = state.length,
                    "response resumed from another pool element"
                );
                this.body = body;
                this.state = Some(state);
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let (Some(data), Some(state)) = (frame.data_ref(), this.state.as_mut()) {
                        state.received += data.len() as u64;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(error)) => {
                    let Some(state) = this.state.take().filter(|s| s.received < s.length) else {
                        return Poll::Ready(Some(Err(error)));
                    };
                    this.resuming = Some(Box::pin(state.resume()));
                }
                None => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.resuming.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            Some(state) => SizeHint::with_exact(state.length.saturating_sub(state.received)),
            None => self.body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        fields
            .iter()
            .map(|(name, value)| {
                (
                    header::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn only_strong_validators_allow_resuming() {
        assert_eq!(
            strong_validator(&headers(&[("etag", "\"v1\"")])),
            Some(Validator::ETag(HeaderValue::from_static("\"v1\"")))
        );
        assert_eq!(strong_validator(&headers(&[("etag", "W/\"v1\"")])), None);
        assert_eq!(strong_validator(&headers(&[("etag", "v1")])), None);
        // A weak tag is not replaced by the date beside it.
        let weak_and_dated = headers(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Sun, 06 Dec 2026 10:00:00 GMT"),
            ("date", "Mon, 07 Dec 2026 10:00:00 GMT"),
        ]);
        assert_eq!(strong_validator(&weak_and_dated), None);
        let dated = headers(&[
            ("last-modified", "Sun, 06 Dec 2026 10:00:00 GMT"),
            ("date", "Mon, 07 Dec 2026 10:00:00 GMT"),
        ]);
        assert!(matches!(
            strong_validator(&dated),
            Some(Validator::LastModified(_))
        ));
        // Modified within the second it was sent: it may change again unseen.
        let same_second = headers(&[
            ("last-modified", "Mon, 07 Dec 2026 10:00:00 GMT"),
            ("date", "Mon, 07 Dec 2026 10:00:00 GMT"),
        ]);
        assert_eq!(strong_validator(&same_second), None);
        let undated = headers(&[("last-modified", "Sun, 06 Dec 2026 10:00:00 GMT")]);
        assert_eq!(strong_validator(&undated), None);
    }
}
