//! The pool element's ASAP side (RFC 5352 §3.1-3.4): registration with a registrar found by
//! server hunt, re-registration on a timer and on policy changes, keep-alive answers
//! (the H flag moves the PE to a new home registrar), deregistration, and failover to
//! another registrar when the home one is lost.
//!
//! One engine can hold several PEs (in one or several pools), as an rsplib ASAP
//! instance does; they share the registrar association.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::Access;
use crate::client::ClientCore;
use crate::engine::{AssocId, Endpoint, Engine, Output, PeerInfo};
use crate::hunt::Lost;
mod config;
mod events;
mod standing;

pub use config::{HomeChanges, LOAD_THRESHOLD, PoolElementConfig, PoolElementSpec};
pub use events::PoolElementEvent;
use standing::{Due, Request, Standing};

use crate::wire::{
    AsapMessage, CauseCode, EndpointKeepAlive, ErrorReport, OperationError, Policy, PoolElement,
    PoolElementId, PoolElementRef, PoolHandle, Protocol, RegistrarId, Registration, error_reply,
};

#[derive(Debug, Clone)]
struct Member {
    spec: PoolElementSpec,
    id: PoolElementId,
    standing: Standing,
    /// The load the last registration sent carried, and when it went out.
    sent_load: Option<u32>,
    sent_at: Option<Instant>,
    /// Registrations refused in a row (0 once one is accepted); while there are, the
    /// standing's `next` is the end of the backoff, which a new registrar association
    /// does not cut short.
    refusals: u32,
}

/// The pool element engine.
#[derive(Debug)]
pub struct PoolElementEngine {
    config: PoolElementConfig,
    client: ClientCore<PoolElementEvent>,
    members: BTreeMap<PoolElementId, Member>,
    /// Associations registrars opened to us (takeover keep-alives), with their peers.
    peers: BTreeMap<AssocId, PeerInfo>,
}

impl PoolElementEngine {
    /// An engine with no PEs yet.
    pub fn new(config: PoolElementConfig, seed: u64) -> Self {
        Self {
            client: ClientCore::new(config.hunt.clone(), seed),
            config,
            members: BTreeMap::new(),
            peers: BTreeMap::new(),
        }
    }

    /// Registers a PE (hunting for a registrar first if needed); returns its ID.
    pub fn register(&mut self, spec: PoolElementSpec, now: Instant) -> PoolElementId {
        let id = match spec.id {
            Some(id) if id.0 != 0 && !self.members.contains_key(&id) => id,
            _ => self.fresh_id(),
        };
        self.members.insert(
            id,
            Member {
                spec,
                id,
                standing: Standing::NEW,
                sent_load: None,
                sent_at: None,
                refusals: 0,
            },
        );
        self.send_registration(id, now, 1);
        id
    }

    fn fresh_id(&mut self) -> PoolElementId {
        loop {
            let id = PoolElementId(self.client.rng.nonzero_u32());
            if !self.members.contains_key(&id) {
                return id;
            }
        }
    }

    /// Changes a PE's policy values (e.g. a new load) and re-registers at once
    /// (RFC 5352 §3.1).
    pub fn update_policy(&mut self, pe_id: PoolElementId, policy: Policy, now: Instant) {
        if let Some(member) = self.members.get_mut(&pe_id) {
            member.spec.policy = policy;
            if !member.standing.is_leaving() {
                self.send_registration(pe_id, now, 1);
            }
        }
    }

    /// A PE's load changed (a share of 0xFFFFFFFF; policies without a load ignore it).
    /// A change beyond [`PoolElementConfig::load_threshold`] from what the registrar
    /// has re-registers at once, or as soon as [`PoolElementConfig::min_load_interval`]
    /// after the last registration allows; a smaller one travels with the next
    /// re-registration.
    pub fn set_load(&mut self, pe_id: PoolElementId, load: u32, now: Instant) {
        let Some(member) = self.members.get_mut(&pe_id) else {
            return;
        };
        if member.spec.policy.load().is_none() {
            return;
        }
        member.spec.policy = member.spec.policy.with_load(load);
        let Some(report_at) = Self::load_report_at(&self.config, member, now) else {
            return;
        };
        // The answer to a registration out schedules the next one (see
        // `on_registration_response`); a leaving PE reports nothing.
        if let Standing::Serving {
            request: None,
            next,
            ..
        } = &mut member.standing
        {
            if report_at > now {
                *next = Some(next.map_or(report_at, |at| at.min(report_at)));
            } else {
                self.send_registration(pe_id, now, 1);
            }
        }
    }

    /// When a PE's load, further from what the registrar has than the threshold, may
    /// be reported (now at the earliest); `None` if it need not be.
    fn load_report_at(
        config: &PoolElementConfig,
        member: &Member,
        now: Instant,
    ) -> Option<Instant> {
        let outdated = match (member.spec.policy.load(), member.sent_load) {
            (Some(load), Some(sent)) => load.abs_diff(sent) > config.load_threshold,
            (Some(_), None) => true,
            (None, _) => false,
        };
        outdated.then(|| {
            member
                .sent_at
                .map_or(now, |sent| sent + config.min_load_interval)
                .max(now)
        })
    }

    /// Deregisters a PE; it is forgotten when the registrar answers or the attempts run
    /// out ([`PoolElementEvent::Deregistered`]).
    pub fn deregister(&mut self, pe_id: PoolElementId, now: Instant) {
        let Some(member) = self.members.get_mut(&pe_id) else {
            return;
        };
        let registered_or_registering = match member.standing {
            Standing::Serving {
                registered,
                request,
                ..
            } => registered || request.is_some(),
            Standing::Leaving { .. } => true,
        };
        member.standing = Standing::Leaving { request: None };
        if registered_or_registering {
            self.send_deregistration(pe_id, now, 1);
        } else if let Some(member) = self.members.remove(&pe_id) {
            self.client.event(PoolElementEvent::Withdrawn {
                pool_handle: member.spec.pool_handle,
                pe_id,
            });
        }
    }

    /// Deregisters every PE (graceful shutdown).
    pub fn deregister_all(&mut self, now: Instant) {
        let ids: Vec<PoolElementId> = self.members.keys().copied().collect();
        for id in ids {
            self.deregister(id, now);
        }
    }

    /// The PEs this engine holds, with whether each is registered.
    pub fn pool_elements(&self) -> impl Iterator<Item = (PoolElementId, &PoolHandle, bool)> {
        self.members.values().map(|m| {
            let registered = matches!(
                m.standing,
                Standing::Serving {
                    registered: true,
                    ..
                }
            );
            (m.id, &m.spec.pool_handle, registered)
        })
    }

    /// The home registrar's ID, if a registrar association is up and its ID known.
    pub fn home_registrar(&self) -> Option<RegistrarId> {
        self.client.hunt.current_registrar().and_then(|(_, id)| id)
    }

    fn registration_life_ms(spec: &PoolElementSpec) -> u32 {
        let life = spec
            .registration_life
            .unwrap_or(spec.reregistration_interval.saturating_mul(3));
        u32::try_from(life.as_millis())
            .unwrap_or(u32::MAX)
            .clamp(1, 0x7fff_ffff)
    }

    fn transmit(&mut self, assoc: AssocId, message: &AsapMessage) {
        self.client
            .transmit(assoc, message, PoolElementEvent::Warning);
    }

    fn send_registration(&mut self, pe_id: PoolElementId, now: Instant, attempt: u32) {
        let Some(assoc) = self.client.hunt.current() else {
            // Sent when a registrar association comes up (resume_all).
            if let Some(Member {
                standing: Standing::Serving { next, .. },
                ..
            }) = self.members.get_mut(&pe_id)
            {
                *next = None;
            }
            self.client.ensure(now);
            return;
        };
        let home = self.home_registrar().unwrap_or(RegistrarId::UNKNOWN);
        let Some(member) = self.members.get_mut(&pe_id) else {
            return;
        };
        let Standing::Serving { registered, .. } = member.standing else {
            return;
        };
        let message = AsapMessage::Registration(Registration {
            pool_handle: member.spec.pool_handle,
            pool_element: PoolElement {
                id: member.id,
                home_registrar: home,
                registration_life_ms: Self::registration_life_ms(&member.spec),
                user_transport: member.spec.user_transport.clone(),
                policy: member.spec.policy.clone(),
                asap_transport: None,
            },
        });
        member.standing = Standing::Serving {
            registered,
            request: Some(Request {
                sent: now,
                deadline: now + self.config.registration_timeout,
                attempts: attempt,
            }),
            next: None,
        };
        member.sent_load = member.spec.policy.load();
        member.sent_at = Some(now);
        self.transmit(assoc, &message);
    }

    fn send_deregistration(&mut self, pe_id: PoolElementId, now: Instant, attempt: u32) {
        let Some(assoc) = self.client.hunt.current() else {
            self.client.ensure(now);
            return;
        };
        let Some(member) = self.members.get_mut(&pe_id) else {
            return;
        };
        member.standing = Standing::Leaving {
            request: Some(Request {
                sent: now,
                deadline: now + self.config.deregistration_timeout,
                attempts: attempt,
            }),
        };
        let message = AsapMessage::Deregistration(PoolElementRef {
            pool_handle: member.spec.pool_handle,
            pe_id,
        });
        self.transmit(assoc, &message);
    }

    fn forget(&mut self, pe_id: PoolElementId, confirmed: bool) {
        if let Some(member) = self.members.remove(&pe_id) {
            self.client.event(PoolElementEvent::Deregistered {
                pool_handle: member.spec.pool_handle,
                pe_id,
                confirmed,
            });
        }
    }

    /// Sends every PE's outstanding business to a (new) current registrar.
    fn resume_all(&mut self, now: Instant) {
        // A PE backing off after refusals waits for its own timer, or a registrar
        // that refuses for its address would be asked again at each new association.
        let ids: Vec<(PoolElementId, bool)> = self
            .members
            .values()
            .filter(|m| m.refusals == 0 || !m.standing.waits_until_after(now))
            .map(|m| (m.id, m.standing.is_leaving()))
            .collect();
        for (id, leaving) in ids {
            if leaving {
                self.send_deregistration(id, now, 1);
            } else {
                self.send_registration(id, now, 1);
            }
        }
    }

    fn on_registration_response(
        &mut self,
        pool_handle: PoolHandle,
        pe_id: PoolElementId,
        reject: bool,
        error: Option<&OperationError>,
        now: Instant,
    ) {
        let registrar = self.home_registrar();
        let registrar_endpoint = self
            .client
            .hunt
            .current_registrar()
            .map(|(at, _)| at.clone());
        let Some(member) = self.members.get_mut(&pe_id) else {
            return;
        };
        let Standing::Serving {
            registered,
            request,
            ..
        } = member.standing
        else {
            return;
        };
        if member.spec.pool_handle != pool_handle {
            return;
        }
        if let Some(request) = request {
            self.client.event(PoolElementEvent::RegistrationAnswered {
                pool_handle,
                pe_id,
                accepted: !reject,
                round_trip: now.saturating_duration_since(request.sent),
            });
        }
        if !reject {
            member.refusals = 0;
            // T4, or sooner when the load changed while the registration was out.
            let refresh = now + member.spec.reregistration_interval;
            let next = Self::load_report_at(&self.config, member, now)
                .map_or(refresh, |report_at| report_at.min(refresh));
            member.standing = Standing::Serving {
                registered: true,
                request: None,
                next: Some(next),
            };
            if !registered {
                self.client.event(PoolElementEvent::Registered {
                    pool_handle,
                    pe_id,
                    registrar,
                    registrar_endpoint,
                });
            }
            return;
        }
        let cause = error.and_then(OperationError::first_code);
        let in_a_row = member.refusals.saturating_add(1);
        let reregistration_interval = member.spec.reregistration_interval;
        let backoff = Self::refusal_backoff(&self.config, in_a_row, &mut self.client.rng);
        // RFC 5352 §3.1: what another attempt can cure.
        let (retrying, until, backing_off) = match cause {
            Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER) => {
                // A new identifier cures it at once, the first time.
                let until = if in_a_row == 1 { now } else { now + backoff };
                (true, until, self.rename(pe_id))
            }
            Some(code) if code.is_address_problem() => {
                self.client.drop_current(now);
                (true, now + backoff, pe_id)
            }
            Some(CauseCode::LACK_OF_RESOURCES) => (true, now + backoff, pe_id),
            _ => (false, now + reregistration_interval.max(backoff), pe_id),
        };
        if let Some(member) = self.members.get_mut(&backing_off) {
            member.refusals = in_a_row;
            member.standing = Standing::Serving {
                registered: false,
                request: None,
                next: Some(until),
            };
        }
        self.client.event(PoolElementEvent::RegistrationRefused {
            pool_handle,
            pe_id,
            cause,
            retrying,
        });
    }

    /// The wait after the `in_a_row`th refusal in a row: the first delay doubled each
    /// time, at most the longest, less up to a quarter of it at random.
    fn refusal_backoff(
        config: &PoolElementConfig,
        in_a_row: u32,
        rng: &mut crate::rng::SeededRng,
    ) -> Duration {
        let doublings = in_a_row.saturating_sub(1).min(16);
        let delay = config
            .refusal_retry_delay
            .saturating_mul(1 << doublings)
            .min(config.max_refusal_retry_delay);
        delay.saturating_sub(rng.fraction_of(delay / 4))
    }

    /// Gives a PE a new identifier (the registrar has its old one for another PE);
    /// returns it.
    fn rename(&mut self, pe_id: PoolElementId) -> PoolElementId {
        let new_id = self.fresh_id();
        if let Some(mut member) = self.members.remove(&pe_id) {
            member.id = new_id;
            self.members.insert(new_id, member);
        }
        new_id
    }

    fn on_keep_alive(&mut self, assoc: AssocId, keep_alive: &EndpointKeepAlive, now: Instant) {
        let mut adopted = false;
        // RFC 5352 §3.4: the PEs concerned: the one named, else all of this pool.
        let concerned: Vec<PoolElementId> = self
            .members
            .values()
            .filter(|m| m.spec.pool_handle == keep_alive.pool_handle && !m.standing.is_leaving())
            .filter(|m| keep_alive.pe_id.is_none_or(|id| id == m.id))
            .map(|m| m.id)
            .collect();
        if concerned.is_empty() {
            return;
        }
        if keep_alive.home && self.client.hunt.current() != Some(assoc) {
            if let Some(endpoint) = self.proven_new_home(assoc, keep_alive.server_id, now) {
                self.peers.remove(&assoc);
                self.client
                    .adopt(assoc, endpoint, keep_alive.server_id, now);
                self.client.event(PoolElementEvent::HomeRegistrarChanged {
                    registrar: keep_alive.server_id,
                });
                adopted = true;
            }
        } else if self.client.hunt.current() == Some(assoc) {
            self.client.hunt.learn_id(assoc, keep_alive.server_id);
        }
        // Always answer on the association the keep-alive came in on (docs/rsplib.md
        // item 6).
        for pe_id in concerned {
            let ack = AsapMessage::EndpointKeepAliveAck(PoolElementRef {
                pool_handle: keep_alive.pool_handle,
                pe_id,
            });
            self.transmit(assoc, &ack);
        }
        if adopted {
            // Everything outstanding goes to the new home now, with fresh timers: a
            // re-registration still out at the old home would otherwise time out
            // later and make this PE drop the new home for it; and PEs whose
            // re-registration waited for a registrar would expire there.
            self.resume_all(now);
        }
    }

    /// Where a peer that sent a keep-alive with the H flag naming `claimed` is, if it
    /// may become the home: only a registrar that proves it is the one it names
    /// (security.md T14), since anyone can reach the ASAP endpoint; with TLS off, only
    /// one on the host of a registrar this PE was configured with, hunted or heard
    /// announced.
    fn proven_new_home(
        &mut self,
        assoc: AssocId,
        claimed: RegistrarId,
        now: Instant,
    ) -> Option<Endpoint> {
        let peer = self.peers.get(&assoc)?;
        let access = self.client.hunt.access();
        let verdict = match access.is_registrar(&peer.authentication, Some(claimed)) {
            Err(denied) => Err(denied.0),
            Ok(())
                if access == Access::Open
                    && self.config.home_changes == HomeChanges::KnownRegistrars
                    && !peer
                        .addresses
                        .iter()
                        .any(|address| self.client.hunt.knows_registrar_at(address, now)) =>
            {
                Err(format!(
                    "{:?} is no registrar this PE was configured with, hunted or heard announced",
                    peer.addresses
                ))
            }
            Ok(()) => Ok(peer.endpoint()),
        };
        match verdict {
            Ok(endpoint) => Some(endpoint),
            Err(reason) => {
                self.client
                    .event(PoolElementEvent::HomeChangeIgnored { claimed, reason });
                None
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let members = self
            .members
            .values()
            .flat_map(|m| m.standing.deadlines().into_iter().flatten());
        members.chain(self.client.hunt.next_deadline()).min()
    }
}

impl Engine for PoolElementEngine {
    type Event = PoolElementEvent;

    fn handle_association_up(&mut self, assoc: AssocId, peer: PeerInfo, now: Instant) {
        match self.client.on_up(assoc, &peer.authentication, now) {
            Ok(true) => self.resume_all(now),
            // A registrar opened an association to our ASAP endpoint (takeover).
            Ok(false) => {
                self.peers.insert(assoc, peer);
            }
            Err(denied) => {
                self.client
                    .event(PoolElementEvent::RegistrarRefused { reason: denied.0 });
            }
        }
    }

    fn handle_association_down(&mut self, assoc: AssocId, now: Instant) {
        self.peers.remove(&assoc);
        if self.client.hunt.on_down(assoc, now) == Lost::Current {
            for member in self.members.values_mut() {
                match &mut member.standing {
                    Standing::Serving { request, .. } | Standing::Leaving { request } => {
                        *request = None;
                    }
                }
            }
            self.client.event(PoolElementEvent::RegistrarLost);
            self.client.ensure(now);
        }
    }

    fn handle_message(&mut self, assoc: AssocId, protocol: Protocol, bytes: &[u8], now: Instant) {
        if protocol != Protocol::Asap {
            return;
        }
        let decoded = match AsapMessage::decode(bytes) {
            Ok(decoded) => decoded,
            Err(error) => {
                if let Some(cause) = error_reply(Protocol::Asap, bytes, &error) {
                    let reply = AsapMessage::Error(ErrorReport {
                        error: OperationError::single(cause),
                    });
                    self.transmit(assoc, &reply);
                }
                self.client.event(PoolElementEvent::Warning(format!(
                    "malformed ASAP message on {assoc}: {error}"
                )));
                return;
            }
        };
        let is_registrar =
            self.client.hunt.current() == Some(assoc) || self.peers.contains_key(&assoc);
        match decoded.message {
            AsapMessage::RegistrationResponse(r) if is_registrar => {
                self.on_registration_response(
                    r.pool_handle,
                    r.pe_id,
                    r.reject,
                    r.error.as_ref(),
                    now,
                );
            }
            AsapMessage::DeregistrationResponse(r) if is_registrar => {
                let confirmed = self.members.get(&r.pe_id).is_some_and(|m| {
                    m.standing.is_leaving() && m.spec.pool_handle == r.pool_handle
                });
                if confirmed {
                    self.forget(r.pe_id, true);
                }
            }
            AsapMessage::EndpointKeepAlive(keep_alive) => {
                self.on_keep_alive(assoc, &keep_alive, now)
            }
            AsapMessage::Error(report) => {
                self.client.event(PoolElementEvent::Warning(format!(
                    "ASAP_ERROR from {assoc}: {:?}",
                    report.error.first_code()
                )));
            }
            other => self.client.event(PoolElementEvent::Warning(format!(
                "unexpected {} on {assoc}",
                other.name()
            ))),
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
        let due: Vec<(PoolElementId, Due)> = self
            .members
            .values()
            .filter_map(|m| Some((m.id, m.standing.due(now)?)))
            .collect();
        let mut hunt_again = false;
        for (id, due) in due {
            match due {
                Due::Register => self.send_registration(id, now, 1),
                Due::RegistrationUnanswered(attempts)
                    if attempts < self.config.max_registration_attempts =>
                {
                    self.send_registration(id, now, attempts + 1);
                }
                Due::RegistrationUnanswered(_) => {
                    // T2 exhausted: another registrar (RFC 5352 §3.1).
                    if let Some(Member {
                        standing: Standing::Serving { request, .. },
                        ..
                    }) = self.members.get_mut(&id)
                    {
                        *request = None;
                    }
                    hunt_again = true;
                }
                Due::DeregistrationUnanswered(attempts)
                    if attempts < self.config.max_deregistration_attempts =>
                {
                    self.send_deregistration(id, now, attempts + 1);
                }
                Due::DeregistrationUnanswered(_) => self.forget(id, false),
            }
        }
        if hunt_again {
            self.client.drop_current(now);
        }
    }

    fn poll_output(&mut self) -> Output<PoolElementEvent> {
        self.client
            .out
            .pop_front()
            .unwrap_or_else(|| Output::Timeout(self.next_deadline()))
    }
}
