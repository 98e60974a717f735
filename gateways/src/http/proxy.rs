//! One request through a route: the PEs in order, the attempts (retries and hedges as
//! attempts.rs decides), and the outcome.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use rserpool_proto::wire::{PoolElement, PoolElementId};

use super::attempts::idempotent;
use super::body::{
    BodyError, ClientBody, ClientRequest, ProxyBody, RequestBody, Tunnel, hold_body,
};
use super::config::Route;
use super::connection::State;
use super::pe_request::{Outgoing, OutgoingBody};
use super::respond::{finish_response, text, unix_seconds};
use super::routing::{LiveRoute, Routing, pe_address, request_host, route_for};
use super::sticky::Binding;
use super::upstream::ResponseBody;
use super::{attempts, forward, hedge, held, resume};
use crate::{Directory, DirectoryError, random_u64};

/// What the access log and the sticky cookie need to know of a request.
pub(super) struct Outcome {
    pub(super) response: Response<ProxyBody>,
    pub(super) pe: Option<PoolElementId>,
    pub(super) attempts: usize,
}

pub(super) async fn handle<D: Directory>(
    state: &State<D>,
    peer: SocketAddr,
    forwarding: &forward::Forwarding,
    request: ClientRequest,
) -> Response<ProxyBody> {
    let started = crate::now();
    let method = request.parts.method.clone();
    // A clone of the URI shares its bytes; the path is for routing and the access log.
    let uri = request.parts.uri.clone();
    let path = uri.path();
    let Some(routing) = state.routing.current() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "routes unavailable");
    };
    let host = if routing.routes_by_host {
        request_host(&request.parts)
    } else {
        None
    };
    let Some(live) = route_for(&routing.routes, host.as_deref(), path) else {
        tracing::info!(target: "rserpool::access", %peer, %method, path, status = 404, "no route");
        return text(StatusCode::NOT_FOUND, "no route for this host and path");
    };
    live.budget.deposit();
    let outcome = proxy(state, &routing, live, forwarding, request, started).await;
    let status = outcome.response.status();
    let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
    if let Some(counter) = live.meters.responses.get(class) {
        counter.increment(1);
    }
    let elapsed = crate::now().saturating_duration_since(started);
    live.meters.duration.record(elapsed.as_secs_f64());
    tracing::info!(
        target: "rserpool::access",
        %peer,
        %method,
        path,
        status = status.as_u16(),
        pool = %live.route.pool_handle,
        pe = outcome.pe.map(|id| id.to_string()).unwrap_or_default(),
        attempts = outcome.attempts,
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    outcome.response
}

pub(super) async fn proxy<D: Directory>(
    state: &State<D>,
    routing: &Routing,
    live: &LiveRoute,
    forwarding: &forward::Forwarding,
    request: ClientRequest,
    started: Instant,
) -> Outcome {
    let ClientRequest {
        mut parts,
        body,
        upgrade: client_upgrade,
    } = request;
    let route = &live.route;
    let refuse = |status, message| Outcome {
        response: text(status, message),
        pe: None,
        attempts: 0,
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > route.max_body) {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let upgrade = client_upgrade.is_some();
    let body = match request_body(body, route).await {
        Ok(body) => body,
        Err((status, message)) => return refuse(status, message),
    };
    let binding = routing
        .sticky
        .as_ref()
        .and_then(|sealer| sealer.from_headers(&parts.headers, unix_seconds()))
        .filter(|binding| binding.pool_handle == route.pool_handle);
    let pes = match pool_elements(state, route, binding.as_ref()).await {
        Ok(pes) => pes,
        Err(message) => {
            let mut outcome = refuse(StatusCode::SERVICE_UNAVAILABLE, &message);
            outcome
                .response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return outcome;
        }
    };
    let sticky = routing.sticky.is_some();
    let session = forward_headers(&mut parts, forwarding, upgrade, sticky, binding.as_ref());
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // The held bytes stay charged until the request is over (any attempt may send them).
    let (whole, streaming, _held) = match body {
        RequestBody::Whole(bytes, held) => (Some(bytes), None, held),
        RequestBody::Streaming(body) => (None, Some(body), held::Held::default()),
    };
    let idempotent = idempotent(&parts.method) && !upgrade;
    // A keyed route: a POST with a kept body carries an Idempotency-Key (the client's,
    // or one made here), which its PEs honour, so it may go to the next PE when its PE
    // died before answering.
    let keyed = route.idempotency_keys && !idempotent && !upgrade && whole.is_some();
    if keyed {
        add_idempotency_key(&mut parts.headers);
    }
    let (usable, hedge_delay) = ordered(live, &pes, binding.as_ref(), started);
    let plan = attempts::Plan {
        candidates: usable.len(),
        max_attempts: route.max_attempts,
        replayable: whole.is_some(),
        idempotent,
        keyed,
        retry_on: route.retry_on,
    };
    let request = Attempting {
        parts: &parts,
        target: path_and_query,
        whole,
        declared,
        binding: binding.as_ref(),
        usable: &usable,
        plan,
        hedge_delay,
        started,
    };
    let (end, tried) = match run_attempts(state, live, &request, streaming).await {
        Ok(delivered) => {
            let answer = Answering {
                routing,
                live,
                upgrade: client_upgrade,
                binding: binding.as_ref(),
                session,
            };
            let target = (path_and_query, &parts.method);
            return answered(answer, delivered, target, &mut parts.headers, &usable);
        }
        Err(given_up) => given_up,
    };
    given_up(route, &end, tried)
}

/// What the client's answer is made with, besides the PE's response.
struct Answering<'a> {
    routing: &'a Routing,
    live: &'a LiveRoute,
    upgrade: Option<Tunnel>,
    binding: Option<&'a Binding>,
    session: Option<u64>,
}

/// A PE answered: the response as the client gets it, a GET's body resumable from
/// another PE if it is cut (`target` and `headers`: the request's, for the Range
/// request), and the failover of a sticky session counted.
fn answered(
    answer: Answering<'_>,
    delivered: Delivered,
    (target, method): (&str, &Method),
    headers: &mut http::HeaderMap,
    usable: &[(&PoolElement, SocketAddr)],
) -> Outcome {
    let Delivered {
        response,
        pe,
        rehomed,
        tried,
    } = delivered;
    let live = answer.live;
    let route = &live.route;
    if rehomed {
        live.meters.failovers.increment(1);
        tracing::info!(pool = %route.pool_handle, to = %pe, "sticky session moved to another pool element");
    }
    let resumable = route
        .resume_cut_gets
        .then(|| resume::resumable(method, headers, &response))
        .flatten();
    let response = finish_response(
        answer.routing,
        live,
        response,
        answer.upgrade,
        answer.binding,
        answer.session,
        pe,
    );
    let response = match resumable {
        Some(resumable) => {
            let request = resume::Request {
                target: target.to_owned(),
                headers: std::mem::take(headers),
            };
            let source = resume_source(live, usable, pe);
            let meters = live.meters.resume.clone();
            response.map(|body| resumable.wrap(body, request, source, meters).boxed_unsync())
        }
        None => response,
    };
    Outcome {
        response,
        pe: Some(pe),
        attempts: tried,
    }
}

/// A keyed request carries an Idempotency-Key: the client's, or one made here, which
/// its PEs honour, so it may go to the next PE when its PE died before answering.
fn add_idempotency_key(headers: &mut http::HeaderMap) {
    if !headers.contains_key(forward::IDEMPOTENCY_KEY)
        && let Ok(key) =
            HeaderValue::from_str(&format!("\"{:016x}{:016x}\"", random_u64(), random_u64()))
    {
        headers.insert(forward::IDEMPOTENCY_KEY, key);
    }
}

/// The PEs that have an address, in the order to try them (a sticky session's PE
/// first, ejected ones last, new ones maybe behind), and the route's hedge delay.
fn ordered<'a>(
    live: &LiveRoute,
    pes: &'a [PoolElement],
    binding: Option<&Binding>,
    started: Instant,
) -> (Vec<(&'a PoolElement, SocketAddr)>, Option<Duration>) {
    let mut usable: Vec<(&PoolElement, SocketAddr)> = pes
        .iter()
        .filter_map(|pe| Some((pe, pe_address(pe)?)))
        .collect();
    let sticky_first = binding
        .zip(usable.first())
        .is_some_and(|(binding, (pe, _))| binding.pe_id == pe.id);
    let hedge_delay = live
        .health(|health| {
            let keep = usize::from(sticky_first);
            if live.route.least_requests
                && let Some(rest) = usable.get_mut(keep..)
            {
                // Stable: PEs with as many requests keep the registrar's order.
                health.waiting.fewest_first(rest, |(pe, _)| pe.id);
            }
            health
                .pes
                .order(&mut usable, keep, |(pe, _)| pe.id, started);
            health.latencies.delay(live.route.hedge)
        })
        .flatten();
    (usable, hedge_delay)
}

/// The client's body as the attempts take it: held whole (for a retry, within the
/// route's budgets) or streamed; the refusal when it is too large, too slow or broken.
async fn request_body(
    body: ClientBody,
    route: &Route,
) -> Result<RequestBody, (StatusCode, &'static str)> {
    match body {
        ClientBody::Streaming(body, budget) => {
            hold_body(body, route, &budget)
                .await
                .map_err(|error| match error {
                    BodyError::TooLarge => {
                        (StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                    }
                    BodyError::TooSlow => (StatusCode::REQUEST_TIMEOUT, "request body too slow"),
                    BodyError::Read => (StatusCode::BAD_REQUEST, "request body unreadable"),
                })
        }
        // Within max_body (checked before); kept for replay only up to replay_buffer.
        // Read whole by the HTTP/1.1 loop (one request at a time per connection).
        ClientBody::Read(bytes) if bytes.len() <= route.replay_buffer => {
            Ok(RequestBody::Whole(bytes, held::Held::default()))
        }
        ClientBody::Read(bytes) => Ok(RequestBody::Streaming(
            Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )),
    }
}

/// The route's PEs as the pool user lists them, a sticky session's PE first while the
/// pool holds it; why there are none (the 503's text).
async fn pool_elements<D: Directory>(
    state: &State<D>,
    route: &Route,
    binding: Option<&Binding>,
) -> Result<Vec<PoolElement>, String> {
    let resolved = state
        .directory
        .resolve(route.pool_handle, u32::try_from(route.max_attempts).ok())
        .await;
    let mut pes = match resolved {
        Ok(pes) if !pes.is_empty() => pes,
        Ok(_) | Err(DirectoryError::UnknownPool) => {
            return Err(format!(
                "pool {} has no pool element (none registered, or all gone)",
                route.pool_handle
            ));
        }
        Err(DirectoryError::Unavailable) => return Err("no registrar reachable".to_owned()),
    };
    if let Some(binding) = binding
        && let Some(index) = pes.iter().position(|pe| pe.id == binding.pe_id)
    {
        let bound = pes.remove(index);
        pes.insert(0, bound);
    }
    Ok(pes)
}

/// The request's fields as PEs get them: hop-by-hop fields and the gateway's own
/// gone, forwarding fields added, `Host` from an HTTP/2 authority, and on a sticky
/// route the session (kept from the cookie, or new), which it returns.
fn forward_headers(
    parts: &mut http::request::Parts,
    forwarding: &forward::Forwarding,
    upgrade: bool,
    sticky: bool,
    binding: Option<&Binding>,
) -> Option<u64> {
    forward::strip_hop_by_hop(&mut parts.headers, upgrade);
    forward::strip_gateway_headers(&mut parts.headers);
    forwarding.apply(&mut parts.headers, parts.version);
    if parts.version == Version::HTTP_2
        && !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, value);
    }
    let session = sticky.then(|| binding.map_or_else(random_u64, |binding| binding.session));
    if let Some(session) = session
        && let Ok(value) = HeaderValue::from_str(&format!("{session:016x}"))
    {
        parts.headers.insert(forward::SESSION, value);
    }
    session
}

/// No attempt delivered: 503 when every PE was busy (with `Retry-After`), 504 when
/// the PE did not answer in time, else 502.
fn given_up(route: &Route, end: &attempts::GiveUp, tried: usize) -> Outcome {
    if end.reason == attempts::Reason::BudgetSpent {
        tracing::warn!(pool = %route.pool_handle, "retry budget spent: not retrying");
    }
    let message = match end.reason {
        attempts::Reason::Busy => "every pool element is at its request limit",
        _ if end.status == StatusCode::GATEWAY_TIMEOUT => "the pool element did not answer in time",
        _ => "no pool element could serve the request",
    };
    let mut response = text(end.status, message);
    if end.reason == attempts::Reason::Busy {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Outcome {
        response,
        pe: None,
        attempts: tried,
    }
}

/// A request on its way to the PEs, as its attempts need it.
pub(super) struct Attempting<'a> {
    pub(super) parts: &'a http::request::Parts,
    pub(super) target: &'a str,
    /// The body, when kept whole (any attempt may send it).
    pub(super) whole: Option<Bytes>,
    pub(super) declared: Option<u64>,
    pub(super) binding: Option<&'a Binding>,
    /// The PEs to try, in order, with their addresses.
    pub(super) usable: &'a [(&'a PoolElement, SocketAddr)],
    pub(super) plan: attempts::Plan,
    pub(super) hedge_delay: Option<Duration>,
    pub(super) started: Instant,
}

/// The response a request gets from a PE.
pub(super) struct Delivered {
    pub(super) response: Response<ResponseBody>,
    pub(super) pe: PoolElementId,
    /// A sticky session went to another PE than its own.
    pub(super) rehomed: bool,
    /// PEs the request was sent to.
    pub(super) tried: usize,
}

/// Attempts under way.
pub(super) enum Flight {
    Next(attempts::Step),
    One(attempts::Attempt),
    Two(attempts::Race),
}

/// How one attempt ended: its PE, how long it took, and the response or why there is
/// none.
pub(super) type AttemptEnd = (
    PoolElementId,
    Duration,
    Result<Response<ResponseBody>, attempts::Failure>,
);

/// Sends `request` to its PEs as attempts.rs decides: one at a time, a second one when
/// the hedge delay passes; the answer to deliver, or how the request gave up (and the
/// PEs it was sent to).
pub(super) async fn run_attempts<D: Directory>(
    state: &State<D>,
    live: &LiveRoute,
    request: &Attempting<'_>,
    mut streaming: Option<ProxyBody>,
) -> Result<Delivered, (attempts::GiveUp, usize)> {
    let route = &live.route;
    let first = std::pin::pin!(None);
    let mut lanes = hedge::Lanes::new(first);
    let mut flight = Flight::Next(attempts::start(request.plan));
    let mut tried = 0;
    let queue_deadline = request.started + route.queue_timeout;
    loop {
        flight = match flight {
            Flight::Next(attempts::Step::GiveUp(end)) => {
                // Every PE at its limit (nothing sent): wait for a place, start over.
                if end.reason == attempts::Reason::Busy && live.wait_for_place(queue_deadline).await
                {
                    Flight::Next(attempts::start(request.plan))
                } else {
                    return Err((end, tried));
                }
            }
            Flight::Next(attempts::Step::Try(attempt)) => {
                let pe = attempt.pe();
                match launch(live, request, &mut streaming, pe, tried == 0) {
                    Launch::Started(sending) => {
                        lanes.start(pe, sending);
                        tried += 1;
                        lanes.hedge_at(request.hedge_delay.map(|delay| crate::now() + delay));
                        Flight::One(attempt)
                    }
                    Launch::Busy => {
                        live.meters.busy.increment(1);
                        Flight::Next(attempt.busy())
                    }
                    Launch::Impossible(end) => return Err((end, tried)),
                }
            }
            under_way => match lanes.next().await {
                hedge::Event::HedgeDue => match under_way {
                    Flight::One(attempt) => match attempt.hedge(|| live.budget.withdraw()) {
                        Ok(race) => {
                            let pe = race.hedge_pe();
                            match launch(live, request, &mut streaming, pe, false) {
                                Launch::Started(sending) => {
                                    lanes.start(pe, sending);
                                    tried += 1;
                                    live.meters.hedges.increment(1);
                                    Flight::Two(race)
                                }
                                Launch::Busy | Launch::Impossible(_) => {
                                    live.meters.busy.increment(1);
                                    Flight::One(race.lost(pe))
                                }
                            }
                        }
                        Err(attempt) => Flight::One(attempt),
                    },
                    racing => racing,
                },
                hedge::Event::Done(pe, (element, elapsed, Ok(response))) => {
                    let status = response.status();
                    live.observe(
                        element,
                        !status.is_server_error(),
                        request.usable.len(),
                        Some(elapsed),
                    );
                    let next = after_answer(live, request, under_way, pe, status);
                    if let Some(next) = next {
                        next
                    } else {
                        lanes.clear();
                        return Ok(Delivered {
                            response,
                            pe: element,
                            rehomed: request.binding.is_some_and(|b| b.pe_id != element),
                            tried,
                        });
                    }
                }
                hedge::Event::Done(pe, (element, _, Err(failure))) => {
                    live.observe(element, false, request.usable.len(), None);
                    if failure.reports_unreachable() {
                        state
                            .directory
                            .report_unreachable(route.pool_handle, element)
                            .await;
                    }
                    if matches!(under_way, Flight::Two(_)) {
                        // The other goes on alone, and may be hedged again.
                        lanes.hedge_at(request.hedge_delay.map(|delay| crate::now() + delay));
                    }
                    after_failure(live, under_way, pe, failure)
                }
            },
        };
    }
}

/// Where the rest of a response from `pe` can come from: the other PEs in the
/// policy's order, then `pe` itself (it may be back).
pub(super) fn resume_source(
    live: &LiveRoute,
    usable: &[(&PoolElement, SocketAddr)],
    pe: PoolElementId,
) -> resume::Source {
    let (this, others): (Vec<_>, Vec<_>) = usable.iter().partition(|(element, _)| element.id == pe);
    let candidates = others.iter().chain(&this).map(|(_, address)| *address);
    resume::Source {
        upstream: live.upstream.clone(),
        candidates: candidates.collect(),
        first_byte_timeout: live.route.first_byte_timeout,
        idle_timeout: live.route.idle_timeout,
        max_resumptions: live.route.max_attempts,
    }
}

/// What follows an answer from the attempt at candidate `pe`: `None` delivers it.
pub(super) fn after_answer(
    live: &LiveRoute,
    request: &Attempting<'_>,
    under_way: Flight,
    pe: usize,
    status: StatusCode,
) -> Option<Flight> {
    match under_way {
        Flight::One(attempt) => match attempt.answered(status, || live.budget.withdraw()) {
            attempts::Answered::Retry(next) => {
                // Dropped unread: its connection closes.
                live.meters.retries.increment(1);
                Some(Flight::Next(attempts::Step::Try(next)))
            }
            attempts::Answered::Deliver => None,
        },
        Flight::Two(race) => match race.answered(pe, status) {
            attempts::RaceAnswer::Continue(alone) => Some(Flight::One(alone)),
            attempts::RaceAnswer::Deliver { abandoned } => {
                // The slower PE lost the race: a frozen one is ejected after a few (it
                // is not reported: it may just be slow).
                if let Some(&(slow, _)) = request.usable.get(abandoned) {
                    live.observe(slow.id, false, request.usable.len(), None);
                }
                None
            }
        },
        Flight::Next(step) => Some(Flight::Next(step)),
    }
}

/// What follows the failure of the attempt at candidate `pe`.
pub(super) fn after_failure(
    live: &LiveRoute,
    under_way: Flight,
    pe: usize,
    failure: attempts::Failure,
) -> Flight {
    match under_way {
        Flight::One(attempt) => {
            let step = attempt.failed(failure, || live.budget.withdraw());
            if matches!(step, attempts::Step::Try(_)) {
                live.meters.retries.increment(1);
            }
            Flight::Next(step)
        }
        Flight::Two(race) => Flight::One(race.lost(pe)),
        Flight::Next(step) => Flight::Next(step),
    }
}

/// An attempt, or why it cannot start.
pub(super) enum Launch<F> {
    Started(F),
    /// The PE is at its limit of requests.
    Busy,
    Impossible(attempts::GiveUp),
}

/// Starts the attempt at candidate `pe` (`first`: the request's first, which may
/// reuse its start time; a streamed body goes with it).
pub(super) fn launch<'a>(
    live: &'a LiveRoute,
    request: &'a Attempting<'a>,
    streaming: &mut Option<ProxyBody>,
    pe: usize,
    first: bool,
) -> Launch<impl Future<Output = AttemptEnd> + 'a> {
    let Some(&(element, address)) = request.usable.get(pe) else {
        return Launch::Impossible(attempts::GiveUp {
            status: StatusCode::BAD_GATEWAY,
            reason: attempts::Reason::Exhausted,
        });
    };
    let Some(slot) = live.slot(element.id) else {
        return Launch::Busy;
    };
    let body = match (&request.whole, streaming.take()) {
        (Some(bytes), _) => OutgoingBody::Whole(bytes.clone()),
        (None, Some(body)) => OutgoingBody::Streaming {
            body,
            length: request.declared,
        },
        // A streamed body goes with the first attempt only (attempts.rs).
        (None, None) => {
            return Launch::Impossible(attempts::GiveUp {
                status: StatusCode::BAD_GATEWAY,
                reason: attempts::Reason::NotResendable,
            });
        }
    };
    // A sticky session re-homed to another PE brings the ASAP cookie of its old one.
    let mut extra = Vec::new();
    if let Some(cookie) = request
        .binding
        .filter(|binding| binding.pe_id != element.id)
        .and_then(|binding| binding.asap_cookie.as_deref())
        && let Ok(value) = HeaderValue::from_str(&BASE64.encode(cookie))
    {
        extra.push((forward::COOKIE_ECHO, value));
    }
    let outgoing = Outgoing {
        method: &request.parts.method,
        target: request.target,
        headers: &request.parts.headers,
        extra,
        body,
    };
    // The first attempt reuses the request's start time (one clock read less per
    // request); a retry or hedge gets its own.
    let start = if first { request.started } else { crate::now() };
    let id = element.id;
    Launch::Started(async move {
        let _slot = slot;
        let sent = tokio::time::timeout_at(
            (start + live.route.first_byte_timeout).into(),
            live.upstream.send(address, outgoing, start),
        )
        .await;
        // For the per-PE response times and an observed-p99 hedge.
        let elapsed = crate::now().saturating_duration_since(start);
        let result = match sent {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(error.failure()),
            Err(_) => Err(attempts::Failure::TimedOut),
        };
        (id, elapsed, result)
    })
}
