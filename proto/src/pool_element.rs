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
use crate::engine::{AssocId, Endpoint, Engine, Output, PeerInfo, TimerProfile};
use crate::hunt::{HuntConfig, Lost};
mod events;
mod standing;

pub use events::PoolElementEvent;
use standing::{Due, Request, Standing};

use crate::wire::{
    AsapMessage, CauseCode, EndpointKeepAlive, ErrorReport, OperationError, Policy, PoolElement,
    PoolElementId, PoolElementRef, PoolHandle, Protocol, RegistrarId, Registration, Transport,
    error_reply,
};

/// Timers and the registrar list of a pool element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolElementConfig {
    /// Finding registrars.
    pub hunt: HuntConfig,
    /// T2: how long to wait for ASAP_REGISTRATION_RESPONSE.
    pub registration_timeout: Duration,
    /// MAX-REG-ATTEMPT: registrations sent to one registrar before hunting another.
    pub max_registration_attempts: u32,
    /// T3: how long to wait for ASAP_DEREGISTRATION_RESPONSE.
    pub deregistration_timeout: Duration,
    /// Deregistrations sent before giving up (the registration then just expires).
    pub max_deregistration_attempts: u32,
    /// Wait before trying again after a refusal that may pass (lack of resources).
    pub refusal_retry_delay: Duration,
    /// Whose keep-alive with the H flag may move this PE to a new home when no TLS
    /// identity proves the sender.
    pub home_changes: HomeChanges,
}

/// Who may take a PE over when identities are not enforced (security.md T14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum HomeChanges {
    /// A registrar on the host of one this PE was configured with, hunted or heard
    /// announced: a stranger who reaches the ASAP endpoint cannot detach the PE from
    /// its registrar. A registrar this PE knows nothing of cannot take it over either.
    /// (`known` in configuration files.)
    #[default]
    #[cfg_attr(feature = "serde", serde(rename = "known"))]
    KnownRegistrars,
    /// Any peer that reaches the ASAP endpoint (rsplib's behaviour).
    Any,
}

impl PoolElementConfig {
    /// The profile's values (RFC 5352 §7): RFC T2/T3 30 s and 2 attempts, or rsplib's
    /// 3 s and 1 attempt.
    pub fn new(profile: TimerProfile, hunt: HuntConfig) -> Self {
        let (timeout, attempts) = match profile {
            TimerProfile::Rfc => (Duration::from_secs(30), 2),
            TimerProfile::Rsplib => (Duration::from_secs(3), 1),
        };
        Self {
            hunt,
            registration_timeout: timeout,
            max_registration_attempts: attempts,
            deregistration_timeout: timeout,
            max_deregistration_attempts: attempts,
            refusal_retry_delay: Duration::from_secs(5),
            home_changes: HomeChanges::default(),
        }
    }
}

/// What one PE registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolElementSpec {
    /// The pool to join.
    pub pool_handle: PoolHandle,
    /// The PE identifier; `None` draws a random non-zero one.
    pub id: Option<PoolElementId>,
    /// Where pool users reach it.
    pub user_transport: Transport,
    /// Its policy and current values.
    pub policy: Policy,
    /// T4: how often it re-registers.
    pub reregistration_interval: Duration,
    /// The registration life it advertises; `None` = 3 × the re-registration interval
    /// (as rsplib does).
    pub registration_life: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Member {
    spec: PoolElementSpec,
    id: PoolElementId,
    standing: Standing,
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
        let ids: Vec<(PoolElementId, bool)> = self
            .members
            .values()
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
            member.standing = Standing::Serving {
                registered: true,
                request: None,
                next: Some(now + member.spec.reregistration_interval),
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
        let refused_until = |next: Instant| Standing::Serving {
            registered: false,
            request: None,
            next: Some(next),
        };
        // RFC 5352 §3.1: what another attempt can cure.
        let retrying = match cause {
            Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER) => {
                let mut renamed = self.members.remove(&pe_id);
                let new_id = self.fresh_id();
                if let Some(member) = renamed.as_mut() {
                    member.id = new_id;
                    member.standing = refused_until(now);
                }
                if let Some(member) = renamed {
                    self.members.insert(new_id, member);
                }
                true
            }
            Some(code) if code.is_address_problem() => {
                member.standing = refused_until(now + self.config.refusal_retry_delay);
                self.client.drop_current(now);
                true
            }
            Some(CauseCode::LACK_OF_RESOURCES) => {
                member.standing = refused_until(now + self.config.refusal_retry_delay);
                true
            }
            _ => {
                member.standing = refused_until(now + member.spec.reregistration_interval);
                false
            }
        };
        self.client.event(PoolElementEvent::RegistrationRefused {
            pool_handle,
            pe_id,
            cause,
            retrying,
        });
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
