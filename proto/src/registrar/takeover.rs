//! Takeover of a silent peer's PEs (RFC 5353 §3.5).
//!
//! INIT_TAKEOVER goes to every peer; the takeover waits for the acknowledgement of the
//! peers that are up (a candidate, a silent peer or one whose association broke is not
//! waited for), the lower ID wins a race; then TAKEOVER_SERVER, and a keep-alive with
//! the H flag to each PE. With two registrars nobody is waited for and the takeover
//! completes at once (rsplib's never does). A takeover that expires is abandoned and
//! the target probed again: while it stays silent, the takeover is retried.

use std::collections::BTreeMap;
use std::time::Instant;

use super::engine::RegistrarEngine;
use super::events::RegistrarEvent;
use super::peers::{Standing, takeover_witnesses};
use crate::engine::{AssocId, Endpoint, Output};
use crate::handlespace::PoolElementKey;
use crate::wire::{EnrpBody, Protocol, RegistrarId, UpdateAction};

impl RegistrarEngine {
    /// A peer this registrar waited for is gone or no longer up: takeovers waiting
    /// only for it complete.
    pub(super) fn stop_waiting_for(&mut self, gone: RegistrarId) {
        let mut complete = Vec::new();
        for peer in &mut self.peers {
            if let Standing::TakingOver { waiting, .. } = &mut peer.standing
                && waiting.remove(&gone)
                && waiting.is_empty()
            {
                complete.push(peer.id);
            }
        }
        for target in complete {
            self.complete_takeover(target);
        }
    }

    pub(super) fn start_takeover(&mut self, index: usize, now: Instant) {
        let Some(target) = self.peers.get(index).map(|p| p.id) else {
            return;
        };
        let waiting = takeover_witnesses(&self.peers, target, self.id);
        let empty = waiting.is_empty();
        if let Some(peer) = self.peers.get_mut(index) {
            peer.standing = Standing::TakingOver {
                waiting,
                expires: now + self.config.takeover_expiry,
            };
        }
        self.event(RegistrarEvent::TakeoverStarted { target });
        self.broadcast(&EnrpBody::InitTakeover { target });
        if empty {
            self.complete_takeover(target);
        }
    }

    fn complete_takeover(&mut self, target: RegistrarId) {
        let Some(index) = self.peer_index(target) else {
            return;
        };
        if !matches!(
            self.peers.get(index).map(|p| &p.standing),
            Some(Standing::TakingOver { .. })
        ) {
            return;
        }
        self.broadcast(&EnrpBody::TakeoverServer { target });
        let keys = self.handlespace.take_over(target, self.id);
        let count = keys.len();
        // The peers move the PEs themselves on TAKEOVER_SERVER: no updates needed.
        self.claim_owned(keys);
        self.event(RegistrarEvent::TakeoverCompleted {
            target,
            pool_elements: count,
        });
        self.forget_peer(index);
    }

    pub(super) fn on_init_takeover(
        &mut self,
        initiator: RegistrarId,
        target: RegistrarId,
        now: Instant,
    ) {
        let Some(initiator_index) = self.heard_peer(initiator) else {
            return;
        };
        if target == self.id {
            // We are alive: tell everybody, do not acknowledge.
            let presence = self.presence(false);
            self.broadcast(&presence);
            return;
        }
        // The initiator sends TAKEOVER_SERVER once every peer acknowledged or its
        // takeover expired; silent longer than that, it is probed again here.
        let deadline = now + self.config.takeover_expiry + self.config.max_time_no_response;
        let ack = match self.peer_index(target) {
            None => true,
            Some(index) => {
                let Some(peer) = self.peers.get_mut(index) else {
                    return;
                };
                match &peer.standing {
                    // A race: the lower ID wins (RFC 5353 §3.5, docs/rsplib.md item 7).
                    Standing::TakingOver { .. } if initiator < self.id => {
                        peer.standing = Standing::TakenOverBy {
                            initiator,
                            deadline,
                        };
                        self.event(RegistrarEvent::TakeoverAbandoned { target });
                        true
                    }
                    Standing::TakingOver { .. } => false,
                    // Two others race for it: the lower ID wins here too.
                    Standing::TakenOverBy {
                        initiator: other, ..
                    } if *other < initiator => false,
                    _ => {
                        peer.standing = Standing::TakenOverBy {
                            initiator,
                            deadline,
                        };
                        true
                    }
                }
            }
        };
        if ack {
            self.acked_takeovers.insert(target, initiator);
            self.send_to_peer(initiator_index, EnrpBody::InitTakeoverAck { target });
        }
    }

    pub(super) fn on_init_takeover_ack(&mut self, sender: RegistrarId, target: RegistrarId) {
        let Some(index) = self.peer_index(target) else {
            return;
        };
        let done = match self.peers.get_mut(index).map(|p| &mut p.standing) {
            Some(Standing::TakingOver { waiting, .. }) => {
                waiting.remove(&sender);
                waiting.is_empty()
            }
            _ => false,
        };
        if done {
            self.complete_takeover(target);
        }
    }

    pub(super) fn on_takeover_server(&mut self, initiator: RegistrarId, target: RegistrarId) {
        if target == self.id {
            let presence = self.presence(false);
            self.broadcast(&presence);
            return;
        }
        // Only a takeover this registrar acknowledged (security.md §3.3).
        if self.acked_takeovers.get(&target) != Some(&initiator) {
            return;
        }
        self.acked_takeovers.remove(&target);
        let moved = self.handlespace.take_over(target, initiator).len();
        self.event(RegistrarEvent::PeerTookOver {
            target,
            by: initiator,
            pool_elements: moved,
        });
        if let Some(index) = self.peer_index(target) {
            self.forget_peer(index);
        }
    }

    /// Makes this registrar the home of PEs (takeover, takeover suggestion): tells the
    /// peers, and sends each PE a keep-alive with the H flag over a new association to
    /// its ASAP endpoint (one association per endpoint).
    pub(super) fn claim(&mut self, keys: Vec<PoolElementKey>) {
        for key in &keys {
            self.handlespace.set_owner(key, self.id);
            self.announce_pool_element(key, UpdateAction::ADD_PE);
        }
        self.claim_owned(keys);
    }

    fn claim_owned(&mut self, keys: Vec<PoolElementKey>) {
        let mut by_endpoint: BTreeMap<Endpoint, Vec<PoolElementKey>> = BTreeMap::new();
        for key in keys {
            self.detach(&key);
            let endpoint = self
                .handlespace
                .get(&key)
                .and_then(|e| e.element.asap_transport.as_ref())
                .and_then(Endpoint::from_parameter);
            if let Some(endpoint) = endpoint {
                by_endpoint.entry(endpoint).or_default().push(key);
            }
        }
        for (endpoint, keys) in by_endpoint {
            let assoc = self.ids.next();
            self.takeover_links.insert(assoc, keys);
            self.out.push_back(Output::Connect {
                assoc,
                to: endpoint,
                protocol: Protocol::Asap,
            });
        }
    }

    /// An association to a taken-over PE is up: claim the PEs with H-flag keep-alives.
    pub(super) fn takeover_link_up(&mut self, assoc: AssocId, now: Instant) {
        let Some(keys) = self.takeover_links.get(&assoc).cloned() else {
            return;
        };
        for key in keys {
            if self
                .handlespace
                .get(&key)
                .is_none_or(|e| e.owner() != self.id)
            {
                continue;
            }
            self.handlespace.set_association(&key, Some(assoc));
            self.probe_pool_element(assoc, &key, true, now);
        }
    }
}
