//! The pool user's ASAP side (RFC 5352 §3.3-3.5): handle resolution at a registrar found by
//! server hunt, with T1 retransmission and failover to another registrar; a cache (a
//! handlespace of its own) whose entries go stale after the stale-cache value; and
//! ENDPOINT_UNREACHABLE reports.
//!
//! A registrar that answers nothing for `registrar_silence` while a request waits (a
//! frozen process: its kernel still holds the association) is given up for another at
//! once, without waiting out T1 and its retransmissions, and the waiting requests go to
//! the new one.
//!
//! Responses carry no request identifier: a response answers the oldest outstanding
//! request for its pool on the association it arrived on (associations are ordered).
//!
//! With a cache, a gateway resolving per client request would otherwise send one
//! resolution per request in flight each time the cache runs out (a burst of hundreds
//! per second at a registrar, which rsplib's may rate-limit into "unknown pool"), and
//! those requests would all wait for the answer. So, with a cache: requests for a pool
//! that is being resolved wait for that one resolution (answered from the cache it
//! fills), and a cache hit in the last quarter of the answer's life asks for a refresh
//! ([`PoolUserEngine::refresh`]) that renews the cache before it runs out. No entry is
//! used longer than the stale-cache value after a registrar last sent it, except to
//! serve stale: with `max_stale`, a request that no registrar answers within
//! `stale_answer_after` (a frozen registrar, a hunt under way), or that would fail for
//! want of a registrar, is answered from the pool's last answer while it is younger
//! than the stale-cache value plus `max_stale`; the resolution stays out and refills the
//! cache when a registrar answers.

mod config;
mod events;

pub use config::PoolUserConfig;
pub use events::{AnswerSource, CacheHit, PoolUserEvent, RequestId, Resolution, ResolveError};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use crate::client::ClientCore;
use crate::engine::{AssocId, Engine, Output, PeerInfo};
use crate::handlespace::PoolElementKey;
use crate::hunt::Lost;
use crate::resolution_cache::{Cached, ResolutionCache};
use crate::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::wire::{
    AsapMessage, CauseCode, ErrorReport, HandleResolution, HandleResolutionResponse,
    OperationError, PoolElement, PoolElementId, PoolElementRef, PoolHandle, Protocol, RegistrarId,
    error_reply,
};

/// The form of the cache record ([`PoolUserEngine::carry_cache`]) this build writes
/// and reads.
const CACHE_RECORD_VERSION: u64 = 1;

/// One resolution at a registrar.
#[derive(Debug, Clone)]
struct Request {
    pool_handle: PoolHandle,
    items: Option<u32>,
    /// Where and when it was last sent.
    sent: Option<Sent>,
    /// A cache refresh: its answer fills the cache and is reported to nobody.
    silent: bool,
    /// Requests for the same pool and item count that arrived while this one was out,
    /// answered from the cache its answer fills.
    followers: Vec<RequestId>,
    /// When those waiting are answered from the pool's last answer if no registrar
    /// has answered; `None` once that time has passed (a registrar is late).
    stale_at: Option<Instant>,
    /// When it fails with "no registrar" (or is answered stale) if still unanswered.
    give_up_at: Instant,
}

/// A request out at a registrar.
#[derive(Debug, Clone, Copy)]
struct Sent {
    assoc: AssocId,
    at: Instant,
    /// T1 runs out.
    deadline: Instant,
    /// Sends to this registrar so far.
    attempt: u32,
}

/// Who an answered resolution's outcome goes to.
#[derive(Debug, Clone, Copy)]
enum Recipient {
    /// The request that was sent.
    Asker,
    /// A request that waited for it.
    Follower,
}

/// The pool user engine.
#[derive(Debug)]
pub struct PoolUserEngine {
    config: PoolUserConfig,
    client: ClientCore<PoolUserEvent>,
    cache: ResolutionCache,
    requests: BTreeMap<RequestId, Request>,
    /// When the current registrar last sent anything.
    last_heard: Option<Instant>,
    next_request: u64,
}

impl PoolUserEngine {
    /// A pool user with an empty cache.
    pub fn new(config: PoolUserConfig, seed: u64) -> Self {
        Self {
            client: ClientCore::new(config.hunt.clone(), seed),
            cache: ResolutionCache::new(config.stale_cache, config.max_stale, config.cache_limits),
            config,
            requests: BTreeMap::new(),
            last_heard: None,
            next_request: 1,
        }
    }

    /// Resolves a pool handle: from the cache if it is fresh, else at a registrar.
    /// `items` asks for that many PEs (`u32::MAX`: all); `None` leaves it to the
    /// registrar. The answer comes as [`PoolUserEvent::Resolved`].
    pub fn resolve(
        &mut self,
        pool_handle: PoolHandle,
        items: Option<u32>,
        now: Instant,
    ) -> RequestId {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        if let Some(hit) = self.resolve_from_cache(pool_handle, items, now) {
            self.resolved(request, Ok(hit.resolution));
            if hit.refresh {
                self.refresh(pool_handle, items, now);
            }
            return request;
        }
        if self.pending() >= self.config.max_pending_requests {
            self.resolved(request, Err(ResolveError::Overloaded));
            return request;
        }
        if let Some((leader_id, leader)) = self.in_flight(&pool_handle, items) {
            let late = leader.stale_at.is_none_or(|at| at <= now);
            leader.followers.push(request);
            if late {
                // A registrar is late for this pool already: do not wait for it.
                self.answer_stale(leader_id, now);
            }
            return request;
        }
        self.start(request, pool_handle, items, false, now);
        request
    }

    /// Renews the cached answer for a pool at a registrar (after a [`CacheHit`] said
    /// so; `items` as the resolutions that use the cache ask), unless a resolution of
    /// the pool is already out. Its answer is reported to nobody; it fills the cache.
    pub fn refresh(&mut self, pool_handle: PoolHandle, items: Option<u32>, now: Instant) {
        if !self.cache.is_on()
            || self.requests.values().any(|r| r.pool_handle == pool_handle)
            || self.pending() >= self.config.max_pending_requests
        {
            return;
        }
        let request = RequestId(self.next_request);
        self.next_request += 1;
        self.start(request, pool_handle, items, true, now);
    }

    /// A resolution of `pool_handle` for `items` that is out, which a request for the
    /// same may wait for. With a cache only: without one, each request gets the
    /// registrar's own selection.
    fn in_flight(
        &mut self,
        pool_handle: &PoolHandle,
        items: Option<u32>,
    ) -> Option<(RequestId, &mut Request)> {
        if !self.cache.is_on() {
            return None;
        }
        self.requests
            .iter_mut()
            .find(|(_, r)| r.pool_handle == *pool_handle && r.items == items)
            .map(|(id, r)| (*id, r))
    }

    /// Requests waiting for a registrar, those sent and those waiting with them
    /// (bounded by `max_pending_requests`).
    fn pending(&self) -> usize {
        self.requests.values().map(|r| 1 + r.followers.len()).sum()
    }

    fn start(
        &mut self,
        request: RequestId,
        pool_handle: PoolHandle,
        items: Option<u32>,
        silent: bool,
        now: Instant,
    ) {
        self.requests.insert(
            request,
            Request {
                pool_handle,
                items,
                sent: None,
                silent,
                followers: Vec::new(),
                stale_at: Some(now + self.config.stale_answer_after),
                give_up_at: now + self.config.give_up_after,
            },
        );
        self.send_request(request, now, 1);
    }

    /// Answers a resolution from the cache when it can (the pool's policy applied to
    /// the fresh cached PEs), with no output queued: a caller sharing the engine may
    /// use it without the driver. `None`: the cache is off or has no PE of the pool, and
    /// [`resolve`](Self::resolve) asks the registrar.
    pub fn resolve_from_cache(
        &mut self,
        pool_handle: PoolHandle,
        items: Option<u32>,
        now: Instant,
    ) -> Option<CacheHit> {
        let (cached, refresh) =
            self.cache
                .lookup(&pool_handle, items, now, &mut self.client.rng)?;
        Some(CacheHit {
            resolution: cached_resolution(pool_handle, cached, AnswerSource::Cache),
            refresh,
        })
    }

    /// Reports a PE the user could not reach (RFC 5352 §3.5): it leaves the cache and
    /// the registrar is told.
    pub fn report_unreachable(&mut self, pool_handle: PoolHandle, pe_id: PoolElementId) {
        self.cache
            .unreachable(&PoolElementKey { pool_handle, pe_id });
        if let Some(assoc) = self.client.hunt.current() {
            self.transmit(
                assoc,
                &AsapMessage::EndpointUnreachable(PoolElementRef { pool_handle, pe_id }),
            );
        }
    }

    /// The cache's answers, for the next process of a gateway's binary upgrade (so it
    /// does not start cold, and can serve stale while no registrar answers): a
    /// versioned record, ages from `now`.
    pub fn carry_cache(&self, now: Instant) -> Vec<u8> {
        let mut w = SnapshotWriter::default();
        w.u64(CACHE_RECORD_VERSION);
        self.cache.carry(now, &mut w);
        w.finish()
    }

    /// Fills the cache from [`carry_cache`](Self::carry_cache)'s record (checked as
    /// hostile input); the pools taken. A record that breaks off keeps what came
    /// before the break.
    pub fn adopt_cache(&mut self, record: &[u8], now: Instant) -> Result<usize, SnapshotError> {
        let mut r = SnapshotReader::new(record);
        let version = r.u64()?;
        if version != CACHE_RECORD_VERSION {
            return Err(SnapshotError::Version(version));
        }
        let mut pools = 0;
        while !r.is_empty() {
            self.cache.adopt(&mut r, now)?;
            pools += 1;
        }
        Ok(pools)
    }

    /// The cached PEs of a pool (fresh or not), in identifier order.
    pub fn cached(&self, pool_handle: &PoolHandle) -> Vec<&PoolElement> {
        self.cache.pool_elements(pool_handle)
    }

    /// Is a registrar association up?
    pub fn has_registrar(&self) -> bool {
        self.client.hunt.current().is_some()
    }

    /// The current registrar's ID, if known.
    pub fn registrar(&self) -> Option<RegistrarId> {
        self.client.hunt.current_registrar().and_then(|(_, id)| id)
    }

    /// The current registrar's endpoint and its ID (pool users learn the ID only from
    /// announces), while an association is up.
    pub fn current_registrar(&self) -> Option<(crate::engine::Endpoint, Option<RegistrarId>)> {
        self.client
            .hunt
            .current_registrar()
            .map(|(endpoint, id)| (endpoint.clone(), id))
    }

    fn resolved(&mut self, request: RequestId, result: Result<Resolution, ResolveError>) {
        self.client
            .event(PoolUserEvent::Resolved { request, result });
    }

    fn transmit(&mut self, assoc: AssocId, message: &AsapMessage) {
        self.client.transmit(assoc, message, PoolUserEvent::Warning);
    }

    fn send_request(&mut self, request: RequestId, now: Instant, attempt: u32) {
        let Some(assoc) = self.client.hunt.current() else {
            self.client.ensure(now);
            return;
        };
        let Some(pending) = self.requests.get_mut(&request) else {
            return;
        };
        pending.sent = Some(Sent {
            assoc,
            at: now,
            deadline: now + self.config.request_timeout,
            attempt,
        });
        let message = AsapMessage::HandleResolution(HandleResolution {
            pool_handle: pending.pool_handle,
            items: pending.items,
        });
        self.transmit(assoc, &message);
    }

    fn on_response(&mut self, assoc: AssocId, response: HandleResolutionResponse, now: Instant) {
        let request = self
            .requests
            .iter()
            .find(|(_, r)| {
                r.pool_handle == response.pool_handle
                    && r.sent.is_some_and(|sent| sent.assoc == assoc)
            })
            .map(|(id, _)| *id);
        let Some(request) = request else {
            self.client.event(PoolUserEvent::Warning(format!(
                "unsolicited handle resolution response for {}",
                response.pool_handle
            )));
            return;
        };
        let Some(answered) = self.requests.remove(&request) else {
            return;
        };
        let failure = match &response.error {
            Some(error) => Some(match error.first_code() {
                Some(CauseCode::UNKNOWN_POOL_HANDLE) | None => ResolveError::UnknownPool,
                Some(code) => ResolveError::Refused(code),
            }),
            None if response.pool_elements.is_empty() => Some(ResolveError::UnknownPool),
            None => None,
        };
        if let Some(failure) = failure {
            if failure == ResolveError::UnknownPool {
                // The registrar knows no PE of it now: neither does the cache.
                self.cache.forget_pool(&response.pool_handle);
            }
            self.finish(request, &answered, |_, _| Err(failure));
            return;
        }
        self.cache.store(&response, answered.items, now);
        let answer = Resolution {
            pool_handle: response.pool_handle,
            policy_type: response.policy.as_ref().map(|p| p.policy_type()),
            pool_elements: response.pool_elements,
            source: AnswerSource::Registrar,
        };
        self.finish(request, &answered, |engine, recipient| match recipient {
            // The request that went out gets the registrar's answer as it is.
            Recipient::Asker => Ok(answer.clone()),
            // Followers (same item count): the cache the answer filled, applying the
            // policy once more for each, or the answer if the cache could not take it.
            Recipient::Follower => Ok(engine
                .cache
                .select(&answer.pool_handle, answered.items, &mut engine.client.rng)
                .map(|cached| cached_resolution(answer.pool_handle, cached, AnswerSource::Cache))
                .unwrap_or_else(|| answer.clone())),
        });
    }

    /// Reports the outcome of an answered request (unless it was a silent refresh)
    /// and of its followers.
    fn finish(
        &mut self,
        request: RequestId,
        answered: &Request,
        mut outcome: impl FnMut(&mut Self, Recipient) -> Result<Resolution, ResolveError>,
    ) {
        if !answered.silent {
            let result = outcome(self, Recipient::Asker);
            self.resolved(request, result);
        }
        for follower in &answered.followers {
            let result = outcome(self, Recipient::Follower);
            self.resolved(*follower, result);
        }
    }

    /// Fails every waiting request, but answers those it can from their pool's last
    /// answer when the failure is the registrars'.
    fn fail_waiting(&mut self, error: ResolveError, now: Instant) {
        let waiting: Vec<RequestId> = self.requests.keys().copied().collect();
        for request in waiting {
            self.give_up(request, error, now);
        }
    }

    /// Fails one request and those waiting with it (stale answers where there are).
    fn give_up(&mut self, request: RequestId, error: ResolveError, now: Instant) {
        let Some(failed) = self.requests.remove(&request) else {
            return;
        };
        let mut served = 0;
        self.finish(request, &failed, |engine, _| {
            let stale = engine
                .cache
                .stale(
                    &failed.pool_handle,
                    failed.items,
                    now,
                    &mut engine.client.rng,
                )
                .map(|cached| cached_resolution(failed.pool_handle, cached, AnswerSource::Stale));
            served += usize::from(stale.is_some());
            stale.ok_or(error)
        });
        if served > 0 {
            self.client.event(PoolUserEvent::AnsweredStale {
                pool_handle: failed.pool_handle,
                requests: served,
            });
        }
    }

    /// Answers whoever waits for resolution `id` from its pool's last answer, if that
    /// is still usable; the resolution stays out, a silent refresh from now on.
    fn answer_stale(&mut self, id: RequestId, now: Instant) {
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        request.stale_at = None;
        let (pool_handle, items) = (request.pool_handle, request.items);
        let waiting = usize::from(!request.silent) + request.followers.len();
        if waiting == 0 {
            return;
        }
        let Some(first) = self
            .cache
            .stale(&pool_handle, items, now, &mut self.client.rng)
        else {
            return;
        };
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        let answered = request.clone();
        request.silent = true;
        request.followers.clear();
        let mut first = Some(first);
        self.finish(id, &answered, |engine, _| {
            let cached = first.take().or_else(|| {
                engine
                    .cache
                    .stale(&pool_handle, items, now, &mut engine.client.rng)
            });
            cached
                .map(|cached| cached_resolution(pool_handle, cached, AnswerSource::Stale))
                .ok_or(ResolveError::NoRegistrar)
        });
        self.client.event(PoolUserEvent::AnsweredStale {
            pool_handle,
            requests: waiting,
        });
    }

    fn next_deadline(&self) -> Option<Instant> {
        // One pass over the requests (this runs after every input): each one's T1, or
        // the silence it may prove first, and when its waiters may get a stale answer.
        let current = self.client.hunt.current();
        let requests = self.requests.values().filter_map(|r| {
            let stale = r
                .stale_at
                .filter(|_| self.cache.may_serve_stale(&r.pool_handle));
            let sent = r.sent.map(|sent| {
                self.silence_of(&sent, current)
                    .map_or(sent.deadline, |silent| silent.min(sent.deadline))
            });
            stale.into_iter().chain(sent).chain([r.give_up_at]).min()
        });
        requests
            .chain(self.cache.next_expiry())
            .chain(self.client.hunt.next_deadline())
            .min()
    }
}

impl PoolUserEngine {
    /// When the current registrar will have been silent too long: the first request
    /// sent to it since it last sent anything, plus `registrar_silence`.
    fn silence_deadline(&self) -> Option<Instant> {
        let current = self.client.hunt.current();
        self.requests
            .values()
            .filter_map(|r| r.sent)
            .filter_map(|sent| self.silence_of(&sent, current))
            .min()
    }

    /// When the registrar `sent` went to will have been silent too long, if it is the
    /// current one and has sent nothing since.
    fn silence_of(&self, sent: &Sent, current: Option<AssocId>) -> Option<Instant> {
        (current == Some(sent.assoc) && self.last_heard.is_none_or(|at| at <= sent.at))
            .then(|| sent.at + self.config.registrar_silence)
    }

    /// Fails the waiting requests once whole hunt rounds failed (RFC 5352 §3.6).
    fn fail_waiting_after_failed_rounds(&mut self, now: Instant) {
        if self.client.hunt.current().is_none()
            && self.client.hunt.failed_rounds() >= self.config.fail_after_hunt_rounds
            && !self.requests.is_empty()
        {
            self.fail_waiting(ResolveError::NoRegistrar, now);
        }
    }

    /// Answers from the last answers whoever waited `stale_answer_after` in vain.
    fn answer_late_requests(&mut self, now: Instant) {
        let late: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.stale_at.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for request in late {
            self.answer_stale(request, now);
        }
    }
}

impl Engine for PoolUserEngine {
    type Event = PoolUserEvent;

    fn handle_association_up(&mut self, assoc: AssocId, peer: PeerInfo, now: Instant) {
        let current = match self.client.on_up(assoc, &peer.authentication, now) {
            Ok(current) => current,
            Err(denied) => {
                self.client
                    .event(PoolUserEvent::RegistrarRefused { reason: denied.0 });
                self.fail_waiting_after_failed_rounds(now);
                return;
            }
        };
        if current {
            self.last_heard = Some(now);
            self.client.event(PoolUserEvent::RegistrarUp);
            let waiting: Vec<RequestId> = self.requests.keys().copied().collect();
            for request in waiting {
                self.send_request(request, now, 1);
            }
        } else {
            // Nobody should open associations to a pool user.
            self.client.out.push_back(Output::Close { assoc });
        }
    }

    fn handle_association_down(&mut self, assoc: AssocId, now: Instant) {
        if self.client.hunt.on_down(assoc, now) == Lost::Current {
            for request in self.requests.values_mut() {
                request.sent = None;
            }
            self.client.event(PoolUserEvent::RegistrarLost);
            if !self.requests.is_empty() {
                self.client.ensure(now);
            }
        } else {
            self.fail_waiting_after_failed_rounds(now);
        }
    }

    fn handle_message(&mut self, assoc: AssocId, protocol: Protocol, bytes: &[u8], now: Instant) {
        if protocol != Protocol::Asap {
            return;
        }
        if self.client.hunt.current() == Some(assoc) {
            self.last_heard = Some(now);
        }
        match AsapMessage::decode(bytes) {
            Ok(decoded) => match decoded.message {
                AsapMessage::HandleResolutionResponse(response) => {
                    self.on_response(assoc, response, now);
                }
                AsapMessage::Error(report) => {
                    self.client.event(PoolUserEvent::Warning(format!(
                        "ASAP_ERROR from the registrar: {:?}",
                        report.error.first_code()
                    )));
                }
                other => self.client.event(PoolUserEvent::Warning(format!(
                    "unexpected {} from the registrar",
                    other.name()
                ))),
            },
            Err(error) => {
                if let Some(cause) = error_reply(Protocol::Asap, bytes, &error) {
                    self.transmit(
                        assoc,
                        &AsapMessage::Error(ErrorReport {
                            error: OperationError::single(cause),
                        }),
                    );
                }
                self.client.event(PoolUserEvent::Warning(format!(
                    "malformed ASAP message from the registrar: {error}"
                )));
            }
        }
    }

    fn handle_datagram(
        &mut self,
        from: SocketAddr,
        protocol: Protocol,
        bytes: &[u8],
        now: Instant,
    ) {
        self.client.on_datagram(from, protocol, bytes, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.client.on_timeout(now);
        self.fail_waiting_after_failed_rounds(now);
        self.cache.purge(now);
        self.answer_late_requests(now);
        let overdue: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.give_up_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for request in overdue {
            self.give_up(request, ResolveError::NoRegistrar, now);
        }
        if self.silence_deadline().is_some_and(|at| at <= now) {
            self.client.event(PoolUserEvent::RegistrarSilent);
            for request in self.requests.values_mut() {
                request.sent = None;
            }
            self.last_heard = None;
            self.client.drop_current(now);
            return;
        }
        let due: Vec<(RequestId, u32)> = self
            .requests
            .iter()
            .filter_map(|(id, r)| {
                r.sent
                    .filter(|sent| sent.deadline <= now)
                    .map(|sent| (*id, sent.attempt))
            })
            .collect();
        let mut hunt_again = false;
        for (request, attempts) in due {
            if attempts <= self.config.max_request_retransmits {
                self.send_request(request, now, attempts + 1);
            } else {
                // T1 exhausted: try another registrar (RFC 5352 §3.3).
                if let Some(r) = self.requests.get_mut(&request) {
                    r.sent = None;
                }
                hunt_again = true;
            }
        }
        if hunt_again {
            self.client.drop_current(now);
        }
    }

    fn poll_output(&mut self) -> Output<PoolUserEvent> {
        self.client
            .out
            .pop_front()
            .unwrap_or_else(|| Output::Timeout(self.next_deadline()))
    }
}

/// A cache answer (fresh, or the last answer served stale) as a resolution.
fn cached_resolution(pool_handle: PoolHandle, cached: Cached, source: AnswerSource) -> Resolution {
    Resolution {
        pool_handle,
        policy_type: Some(cached.policy_type),
        pool_elements: cached.pool_elements,
        source,
    }
}
