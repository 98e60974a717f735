//! A client's request as the gateway holds it: its body kept for a retry within
//! budgets, or streamed; an upgrade's tunnel.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::config::{BODY_RATE_WINDOW, Route};
use super::{held, min_rate};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies the gateway sends either way.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request as the client connection hands it over.
pub(super) struct ClientRequest {
    pub(super) parts: http::request::Parts,
    pub(super) body: ClientBody,
    /// The client's side of an `Upgrade` it asked for.
    pub(super) upgrade: Option<Tunnel>,
}

/// A client's side of an upgrade (WebSocket and the like) and the connection slot the
/// tunnel holds while it is open.
pub(super) struct Tunnel {
    pub(super) client: hyper::upgrade::OnUpgrade,
    pub(super) slot: tokio::sync::OwnedSemaphorePermit,
    pub(super) idle_timeout: Duration,
}

/// A request's body as the client connection hands it over.
pub(super) enum ClientBody {
    /// Read by hyper as the request goes on; held for replay within the budget.
    Streaming(Incoming, held::ReplayBudget),
    /// Read whole already (the HTTP/1.1 fast path, [`h1`]).
    Read(Bytes),
}

/// How the request body is held: whole (so the request can be sent again; its bytes
/// charged until the request is over) or streaming.
pub(super) enum RequestBody {
    Whole(Bytes, held::Held),
    Streaming(ProxyBody),
}

#[derive(Debug)]
pub(super) enum BodyError {
    TooLarge,
    TooSlow,
    Read,
}

/// Reads up to `replay` bytes of the body while `budget` has room for them; a larger
/// body, or one the budget cannot hold, streams on (prefix first), held to the route's
/// minimum rate all along.
pub(super) async fn hold_body(
    body: Incoming,
    route: &Route,
    budget: &held::ReplayBudget,
) -> Result<RequestBody, BodyError> {
    let (replay, max) = (route.replay_buffer, route.max_body);
    let body = min_rate::MinRate::new(body, route.min_body_rate, BODY_RATE_WINDOW);
    let mut body = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    let mut held = BytesMut::new();
    let mut charged = held::Held::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                BodyError::TooLarge
            } else if error.is::<min_rate::TooSlow>() {
                BodyError::TooSlow
            } else {
                BodyError::Read
            }
        })?;
        if let Ok(data) = frame.into_data() {
            held.extend_from_slice(&data);
            let over_budget = held.len() <= replay && !budget.hold(&mut charged, data.len());
            if over_budget {
                budget.refused();
            }
            if held.len() > replay || over_budget {
                let prefix = held.freeze();
                return Ok(RequestBody::Streaming(
                    Prefixed {
                        prefix: Some(prefix),
                        rest: body,
                    }
                    .boxed_unsync(),
                ));
            }
        }
    }
    Ok(RequestBody::Whole(held.freeze(), charged))
}

/// A body whose first bytes were already read.
pub(super) struct Prefixed<B> {
    pub(super) prefix: Option<Bytes>,
    pub(super) rest: B,
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        hint.set_lower(hint.lower() + prefix);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}
