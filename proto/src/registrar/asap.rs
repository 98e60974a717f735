//! The ASAP server side of the registrar (RFC 5352 §3): registration with its checks
//! (RFC 5355: what the association and the peer's identity prove), deregistration,
//! handle resolution with the pool's policy, unreachability reports, keep-alive
//! supervision of the PEs it owns.

use std::net::IpAddr;
use std::time::Instant;

use super::engine::RegistrarEngine;
use super::events::{RegistrarEvent, RemovalReason};
use crate::auth::{Access, Denied};
use crate::engine::{AssocId, PeerInfo};
use crate::handlespace::{PoolElementEntry, PoolElementKey, Refusal, Upserted};
use crate::wire::{
    AsapMessage, CauseCode, DeregistrationResponse, EndpointKeepAlive, ErrorCause,
    HandleResolution, HandleResolutionResponse, OperationError, PoolElement, PoolElementRef,
    PoolHandle, Registration, RegistrationResponse, UpdateAction,
};

impl RegistrarEngine {
    pub(super) fn on_registration(
        &mut self,
        assoc: AssocId,
        registration: Registration,
        now: Instant,
    ) {
        let key = PoolElementKey {
            pool_handle: registration.pool_handle,
            pe_id: registration.pool_element.id,
        };
        match self.admit(assoc, registration.pool_element, &key, now) {
            Ok(upserted) => {
                self.awaiting_ack.remove(&key);
                self.reporters.remove(&key);
                self.handlespace
                    .set_keepalive(&key, Some(now + self.config.keepalive_interval));
                let response = AsapMessage::RegistrationResponse(RegistrationResponse {
                    reject: false,
                    pool_handle: key.pool_handle,
                    pe_id: key.pe_id,
                    error: None,
                });
                self.send_asap(assoc, &response);
                self.announce_pool_element(&key, UpdateAction::ADD_PE);
                self.event(RegistrarEvent::Registered {
                    key,
                    new: upserted == Upserted::Added,
                });
            }
            Err((cause, reason)) => {
                let code = cause.code;
                let response = AsapMessage::RegistrationResponse(RegistrationResponse {
                    reject: true,
                    pool_handle: key.pool_handle,
                    pe_id: key.pe_id,
                    error: Some(OperationError::single(cause)),
                });
                self.send_asap(assoc, &response);
                self.event(RegistrarEvent::Refused {
                    key,
                    cause: code,
                    reason,
                });
            }
        }
    }

    /// Checks a registration and stores it; the refusal carries the cause to send.
    pub(super) fn admit(
        &mut self,
        assoc: AssocId,
        mut element: PoolElement,
        key: &PoolElementKey,
        now: Instant,
    ) -> Result<Upserted, (ErrorCause, String)> {
        let invalid = |reason: &str| {
            (
                ErrorCause::new(CauseCode::INVALID_VALUES),
                reason.to_owned(),
            )
        };
        let Some(association) = self.associations.get(&assoc) else {
            return Err(invalid("registration on an unknown association"));
        };
        // security.md §3.1 item 3: the identity must be granted the pool (T2, T4).
        if let Err(denied) = self
            .config
            .access
            .may_register(&association.peer.authentication, &key.pool_handle)
        {
            return Err((ErrorCause::new(CauseCode::SECURITY_REJECTION), denied.0));
        }
        registration_fields(&element).map_err(invalid)?;
        let peer = association.peer.clone();
        // Keep only user addresses the association proves (security.md T3).
        let transport_tlv = element
            .user_transport
            .to_parameter_bytes()
            .unwrap_or_default();
        element.user_transport.addresses.retain(|address| {
            usable_address(address) && (!self.config.verify_addresses || peer_has(&peer, address))
        });
        if element.user_transport.addresses.is_empty() {
            return Err((
                ErrorCause::with_copy(CauseCode::INVALID_VALUES, &transport_tlv),
                "no user transport address that the association proves".to_owned(),
            ));
        }
        if let Some(existing) = self.handlespace.get(key) {
            self.may_take_identifier(existing, assoc, &peer)
                .map_err(|reason| (ErrorCause::new(CauseCode::NON_UNIQUE_PE_IDENTIFIER), reason))?;
        }
        let is_new_here = self
            .handlespace
            .get(key)
            .is_none_or(|e| e.association != Some(assoc));
        if is_new_here
            && self.handlespace.association_members(assoc).count()
                >= self.config.max_pool_elements_per_association
        {
            return Err((
                ErrorCause::new(CauseCode::LACK_OF_RESOURCES),
                format!(
                    "association already holds {} PEs",
                    self.config.max_pool_elements_per_association
                ),
            ));
        }
        let host = peer.addresses.first().copied();
        if let Some(host) = host {
            self.quotas
                .check(
                    host,
                    key,
                    self.config.max_pool_elements_per_host,
                    self.config.max_pools_per_host,
                )
                .map_err(|exceeded| {
                    (
                        ErrorCause::new(CauseCode::LACK_OF_RESOURCES),
                        exceeded.to_string(),
                    )
                })?;
        }
        element.home_registrar = self.id;
        element.asap_transport = (!peer.addresses.is_empty()).then(|| {
            peer.transport
                .transport_parameter(peer.addresses.clone(), peer.port)
        });
        let upserted = self
            .handlespace
            .upsert(key.pool_handle, element, Some(assoc), now)
            .map_err(|refusal: Refusal| (refusal.cause(), refusal.to_string()))?;
        if let Some(host) = host {
            self.quotas.charge(host, *key);
        }
        Ok(upserted)
    }

    /// A PE stays in the handlespace but no longer over an association of its own
    /// (it moved to another registrar, or this one takes it over): no host holds it.
    pub(super) fn detach(&mut self, key: &PoolElementKey) {
        self.handlespace.set_keepalive(key, None);
        self.handlespace.set_association(key, None);
        self.awaiting_ack.remove(key);
        self.quotas.release(key);
    }

    /// May `peer`, over `assoc`, register a PE identifier the handlespace holds
    /// (security.md §3.1 item 6, T3, T8)? Over the association that registered it,
    /// always. While that association of ours is up, another one only with the same
    /// identity (TLS), or from the same endpoint (address and port: the PE itself).
    /// Otherwise (its association is gone, or it is homed at another registrar), only
    /// from the PE's ASAP endpoint as its home recorded it (address and port: PEs
    /// associate from their ASAP port, RFC 5352 §3.1): a stranger on the same host
    /// cannot re-home it.
    pub(super) fn may_take_identifier(
        &self,
        existing: &PoolElementEntry,
        assoc: AssocId,
        peer: &PeerInfo,
    ) -> Result<(), String> {
        if existing.association == Some(assoc) {
            return Ok(());
        }
        let live = existing
            .association
            .filter(|_| existing.owner() == self.id)
            .and_then(|other| Some((other, self.associations.get(&other)?)));
        if let Some((other, registrant)) = live {
            let same_endpoint = registrant.peer.port == peer.port
                && registrant
                    .peer
                    .addresses
                    .iter()
                    .any(|a| peer.addresses.contains(a));
            return self
                .config
                .access
                .may_reregister(
                    &registrant.peer.authentication,
                    &peer.authentication,
                    same_endpoint,
                )
                .then_some(())
                .ok_or_else(|| format!("PE identifier in use by {other}"));
        }
        match &existing.element.asap_transport {
            Some(endpoint)
                if endpoint.port != peer.port
                    || !endpoint.addresses.iter().any(|a| peer_has(peer, a)) =>
            {
                Err(format!(
                    "PE identifier registered from another ASAP endpoint (port {}, home {})",
                    endpoint.port,
                    existing.owner()
                ))
            }
            _ => Ok(()),
        }
    }

    /// Checks that an association's peer may do something; a refusal is reported
    /// (counted and logged by the driver).
    pub(super) fn permitted(
        &mut self,
        assoc: AssocId,
        action: &'static str,
        check: impl FnOnce(Access, &crate::auth::Authentication) -> Result<(), Denied>,
    ) -> bool {
        let Some(association) = self.associations.get(&assoc) else {
            return false;
        };
        match check(self.config.access, &association.peer.authentication) {
            Ok(()) => true,
            Err(denied) => {
                self.event(RegistrarEvent::Denied {
                    assoc,
                    action,
                    reason: denied.0,
                });
                false
            }
        }
    }

    pub(super) fn on_deregistration(&mut self, assoc: AssocId, target: PoolElementRef) {
        let key = PoolElementKey {
            pool_handle: target.pool_handle,
            pe_id: target.pe_id,
        };
        let error = match self.handlespace.get(&key) {
            // Deregistering an unknown PE succeeds (RFC 5352 §2.2.4).
            None => None,
            Some(entry) if entry.association == Some(assoc) => {
                self.remove(&key, RemovalReason::Deregistered);
                None
            }
            // Only the PE's own association may remove it (security.md §3.2).
            Some(_) => Some(OperationError::single(ErrorCause::new(
                CauseCode::SECURITY_REJECTION,
            ))),
        };
        let response = AsapMessage::DeregistrationResponse(DeregistrationResponse {
            pool_handle: key.pool_handle,
            pe_id: key.pe_id,
            error,
        });
        self.send_asap(assoc, &response);
    }

    pub(super) fn on_handle_resolution(
        &mut self,
        assoc: AssocId,
        request: HandleResolution,
        now: Instant,
    ) {
        let pool = request.pool_handle;
        if !self.permitted(assoc, "resolve", |access, peer| {
            access.may_resolve(peer, &pool)
        }) {
            self.send_asap(
                assoc,
                &resolution_refused(pool, CauseCode::SECURITY_REJECTION),
            );
            return;
        }
        let allowed = self
            .associations
            .get_mut(&assoc)
            .and_then(|a| a.resolutions.as_mut())
            .is_none_or(|bucket| bucket.allow(now));
        let count = match request.items {
            None | Some(0) => self.config.default_items,
            Some(items) => items.min(self.config.max_items),
        } as usize;
        let selected: Option<Vec<PoolElement>> = if allowed {
            self.handlespace
                .select(&request.pool_handle, count, None, &mut self.rng)
                .map(|entries| {
                    entries
                        .into_iter()
                        .map(|e| PoolElement {
                            asap_transport: None,
                            ..e.element.clone()
                        })
                        .collect()
                })
        } else {
            None
        };
        let response = match selected {
            Some(mut pool_elements) if !pool_elements.is_empty() => loop {
                // The pool's policy: rsplib copies the first selected PE's parameter.
                let response = AsapMessage::HandleResolutionResponse(HandleResolutionResponse {
                    pool_handle: request.pool_handle,
                    policy: pool_elements.first().map(|pe| pe.policy.clone()),
                    pool_elements: pool_elements.clone(),
                    error: None,
                });
                // Many multi-homed PEs may not fit in one message: send fewer.
                if response.encode().is_ok() || pool_elements.len() <= 1 {
                    break response;
                }
                pool_elements.truncate(pool_elements.len() / 2);
            },
            _ => {
                let cause = if allowed {
                    CauseCode::UNKNOWN_POOL_HANDLE
                } else {
                    CauseCode::LACK_OF_RESOURCES
                };
                resolution_refused(request.pool_handle, cause)
            }
        };
        let returned = match &response {
            AsapMessage::HandleResolutionResponse(r) => r.pool_elements.len(),
            _ => 0,
        };
        self.send_asap(assoc, &response);
        self.event(RegistrarEvent::Resolved {
            pool_handle: request.pool_handle,
            count: returned,
        });
    }

    // ASAP: unreachability reports (RFC 5352 §3.5, security.md T13).

    pub(super) fn on_unreachable(&mut self, assoc: AssocId, report: PoolElementRef, now: Instant) {
        let pool = report.pool_handle;
        if !self.permitted(assoc, "report", |access, peer| {
            access.may_resolve(peer, &pool)
        }) {
            return;
        }
        let allowed = self
            .associations
            .get_mut(&assoc)
            .and_then(|a| a.reports.as_mut())
            .is_none_or(|bucket| bucket.allow(now));
        let key = PoolElementKey {
            pool_handle: report.pool_handle,
            pe_id: report.pe_id,
        };
        let Some(entry) = self.handlespace.get(&key) else {
            return;
        };
        let owned = entry.owner() == self.id;
        let Some(host) = self
            .associations
            .get(&assoc)
            .and_then(|a| a.peer.addresses.first())
            .map(IpAddr::to_canonical)
        else {
            return;
        };
        // Several reports from one host count once. The list is the one record of
        // reports: it is forgotten when the PE registers again, answers a keep-alive
        // or leaves.
        let reporters = self.reporters.entry(key).or_default();
        if !allowed || reporters.contains(&host) {
            return;
        }
        reporters.push(host);
        if (reporters.len() as u64) < u64::from(self.config.max_bad_pe_reports) {
            return;
        }
        // Probe instead of trusting the reports: remove only if the PE does not answer
        // a keep-alive in time. A PE another registrar owns is not removed here (rsplib
        // does: three reports from anyone emptied pools at a registrar that could not
        // check them); its owner supervises it with keep-alives and announces its
        // removal over ENRP.
        if owned && !self.awaiting_ack.contains_key(&key) {
            self.send_keepalive(&key, now);
        }
    }

    // ASAP: keep-alive supervision (RFC 5352 §3.4).

    pub(super) fn send_keepalive(&mut self, key: &PoolElementKey, now: Instant) {
        let Some(assoc) = self.handlespace.get(key).and_then(|e| e.association) else {
            // No association to probe over: the registration life decides.
            self.handlespace.set_keepalive(key, None);
            return;
        };
        self.probe_pool_element(assoc, key, false, now);
    }

    /// Sends a PE a keep-alive (with the H flag: this registrar is its home now) and
    /// waits for the acknowledgement until the keep-alive timeout.
    pub(super) fn probe_pool_element(
        &mut self,
        assoc: AssocId,
        key: &PoolElementKey,
        home: bool,
        now: Instant,
    ) {
        let message = AsapMessage::EndpointKeepAlive(EndpointKeepAlive {
            home,
            server_id: self.id,
            pool_handle: key.pool_handle,
            pe_id: Some(key.pe_id),
        });
        self.send_asap(assoc, &message);
        self.awaiting_ack.insert(*key, now);
        self.handlespace
            .set_keepalive(key, Some(now + self.config.keepalive_timeout));
    }

    pub(super) fn on_keepalive_ack(&mut self, assoc: AssocId, ack: PoolElementRef, now: Instant) {
        let key = PoolElementKey {
            pool_handle: ack.pool_handle,
            pe_id: ack.pe_id,
        };
        let ours = self
            .handlespace
            .get(&key)
            .is_some_and(|e| e.owner() == self.id && e.association == Some(assoc));
        if ours && self.awaiting_ack.remove(&key).is_some() {
            self.reporters.remove(&key);
            self.handlespace
                .set_keepalive(&key, Some(now + self.config.keepalive_interval));
        }
    }

    // ENRP: the handle table (RFC 5353 §3.2.3).
}

/// A handle resolution answered with no PE and `cause`.
fn resolution_refused(pool_handle: PoolHandle, cause: CauseCode) -> AsapMessage {
    AsapMessage::HandleResolutionResponse(HandleResolutionResponse {
        pool_handle,
        policy: None,
        pool_elements: Vec::new(),
        error: Some(OperationError::single(ErrorCause::new(cause))),
    })
}

/// The fields a registration must carry as RFC 5352 §2.2.1 and §3.1 describe them: a
/// PE identifier, a user transport port and a registration life, and no ASAP transport
/// (the registrar fills that in from the association).
fn registration_fields(element: &PoolElement) -> Result<(), &'static str> {
    if element.id.0 == 0 {
        return Err("PE identifier 0");
    }
    if element.asap_transport.is_some() {
        return Err("ASAP transport parameter in a registration");
    }
    if element.user_transport.port == 0 {
        return Err("user transport port 0");
    }
    if element.registration_life_ms == 0 {
        return Err("registration life 0");
    }
    Ok(())
}

/// Addresses no PE can be reached at.
pub(super) fn usable_address(address: &IpAddr) -> bool {
    !(address.is_unspecified() || address.is_multicast())
}

/// Is `address` one of the association's peer addresses (or are they unknown)?
fn peer_has(peer: &PeerInfo, address: &IpAddr) -> bool {
    peer.addresses.is_empty()
        || peer
            .addresses
            .iter()
            .any(|a| a.to_canonical() == address.to_canonical())
}
