//! ENRP: registrars that keep one handlespace and take over a dead peer's PEs
//! (RFC 5353 §3). The peer table and its states are in `peers`, the handlespace
//! exchange in `sync`, takeovers in `takeover`.
//!
//! * Peers come from configuration, from presences over associations, and (as
//!   candidates that must answer before they count) from list responses and multicast
//!   presences. Each is sent ENRP_PRESENCE every heartbeat; one silent for
//!   MAX-TIME-LAST-HEARD is probed (R flag), and one that does not answer within
//!   MAX-TIME-NO-RESPONSE is taken over if it owned PEs, else forgotten.
//! * Start-up: the first peer heard is the mentor; its peer list and whole handle table
//!   are downloaded before ASAP requests are served (bounded by the mentor discovery
//!   timeout).
//! * A registrar speaks over the association it is bound to (or another from the same
//!   host): with TLS off, a stranger claiming a known registrar's ID from elsewhere is
//!   refused instead of keeping a dead peer "alive" or changing its PEs.

use std::time::Instant;

use super::engine::{Deferred, RegistrarEngine};
use super::events::RegistrarEvent;
use super::peers::{Link, Peer, PeerStanding, PeerStatus, Standing};
use super::sync::Phase;
use crate::engine::{AssocId, Engine, Output};
use crate::wire::{
    EnrpBody, EnrpMessage, OperationError, PoolElement, PoolHandle, Protocol, RegistrarId,
    ServerInformation, UpdateAction, error_reply,
};

impl RegistrarEngine {
    /// The peers, for status pages.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|p| PeerStatus {
                id: p.id,
                endpoint: p.endpoint.clone(),
                is_static: p.is_static,
                standing: PeerStanding::from(&p.standing),
                connected: p.link.bound().is_some(),
                pool_elements: self.handlespace.owned_count(p.id),
            })
            .collect()
    }

    /// Has start-up synchronisation finished (ASAP is being served)?
    pub fn is_synchronized(&self) -> bool {
        self.phase == Phase::Normal
    }

    /// While looking for a mentor at start-up (RFC 5353 §3.2): when the registrar gives
    /// up looking (ASAP requests wait until then, or `max_startup_hold` at most).
    pub fn mentor_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Startup { deadline, .. } => Some(deadline),
            Phase::Normal => None,
        }
    }

    pub(super) fn initial_phase(config: &super::config::RegistrarConfig, now: Instant) -> Phase {
        if config.static_peers.is_empty() && !config.enrp_multicast {
            Phase::Normal
        } else {
            Phase::Startup {
                deadline: now + config.mentor_discovery_timeout,
                mentor: None,
            }
        }
    }

    /// Opens associations to the configured peers (at start-up).
    pub(super) fn start_peering(&mut self) {
        for endpoint in self.config.static_peers.clone() {
            self.peers.push(Peer::configured(endpoint));
        }
        for index in 0..self.peers.len() {
            self.connect_peer(index);
        }
    }

    pub(super) fn peer_index(&self, id: RegistrarId) -> Option<usize> {
        (id != RegistrarId::UNKNOWN)
            .then(|| self.peers.iter().position(|p| p.id == id))
            .flatten()
    }

    /// A peer that has answered over an association (not a candidate): the only ones
    /// whose updates, tables and takeovers count.
    pub(super) fn heard_peer(&self, id: RegistrarId) -> Option<usize> {
        self.peer_index(id).filter(|&index| {
            self.peers
                .get(index)
                .is_some_and(|p| !matches!(p.standing, Standing::Candidate { .. }))
        })
    }

    pub(super) fn connect_peer(&mut self, index: usize) {
        let Some(peer) = self.peers.get_mut(index) else {
            return;
        };
        if peer.link != Link::None {
            return;
        }
        let Some(endpoint) = peer.endpoint.clone() else {
            return;
        };
        let assoc = self.ids.next();
        peer.link = Link::Connecting(assoc);
        self.out.push_back(Output::Connect {
            assoc,
            to: endpoint,
            protocol: Protocol::Enrp,
        });
    }

    pub(super) fn presence(&self, reply_required: bool) -> EnrpBody {
        EnrpBody::Presence {
            reply_required,
            checksum: Some(self.handlespace.owner_checksum(self.id)),
            server_information: self.config.enrp_transport.clone().map(|transport| {
                ServerInformation {
                    server_id: self.id,
                    transport,
                }
            }),
        }
    }

    /// Sends to a peer over its association; without one, opens it (the message is
    /// lost: heartbeats and audits repair what that loses).
    pub(super) fn send_to_peer(&mut self, index: usize, body: EnrpBody) {
        let Some(peer) = self.peers.get(index) else {
            return;
        };
        match peer.link.bound() {
            Some(assoc) => {
                let receiver = peer.id;
                self.send_enrp(assoc, body, receiver);
            }
            None => self.connect_peer(index),
        }
    }

    /// Sends to every peer that has answered and has an association.
    pub(super) fn broadcast(&mut self, body: &EnrpBody) {
        for index in 0..self.peers.len() {
            if self.peers.get(index).is_some_and(|p| {
                p.link.bound().is_some() && !matches!(p.standing, Standing::Candidate { .. })
            }) {
                self.send_to_peer(index, body.clone());
            }
        }
    }

    /// A PE this registrar owns was registered or changed: tell every peer.
    pub(super) fn announce_pool_element(
        &mut self,
        key: &crate::handlespace::PoolElementKey,
        action: UpdateAction,
    ) {
        let element = match self.handlespace.get(key) {
            Some(entry) => entry.element.clone(),
            None => return,
        };
        self.send_update(key.pool_handle, element, action);
    }

    pub(super) fn send_update(
        &mut self,
        pool_handle: PoolHandle,
        pool_element: PoolElement,
        action: UpdateAction,
    ) {
        if self.peers.is_empty() {
            return;
        }
        let body = EnrpBody::HandleUpdate {
            takeover_suggested: false,
            action,
            pool_handle,
            pool_element,
        };
        self.broadcast(&body);
    }

    fn heartbeat(&mut self, now: Instant) {
        let presence = self.presence(false);
        for index in 0..self.peers.len() {
            match self.peers.get(index).map(|p| p.link) {
                Some(Link::Bound(_)) => self.send_to_peer(index, presence.clone()),
                Some(Link::None) => self.connect_peer(index),
                Some(Link::Connecting(_)) | None => {}
            }
        }
        if self.config.enrp_multicast {
            let message = EnrpMessage {
                sender: self.id,
                receiver: RegistrarId::UNKNOWN,
                body: presence,
            };
            if let Ok(payload) = message.encode() {
                self.stats.enrp_sent(message.body.message_type());
                self.out.push_back(Output::Datagram {
                    protocol: Protocol::Enrp,
                    payload,
                });
            }
        }
        // peer-heartbeat-cycle jittered by ±12.5 % (RFC 5353 §3.4).
        let interval = self.config.peer_heartbeat_interval;
        self.next_heartbeat = now + interval - interval / 8 + self.rng.fraction_of(interval / 4);
    }

    /// An ENRP association is up: one we opened to a peer, or a PE association opened
    /// for a takeover.
    pub(super) fn enrp_association_up(&mut self, assoc: AssocId, now: Instant) {
        let Some(index) = self
            .peers
            .iter()
            .position(|p| p.link == Link::Connecting(assoc))
        else {
            return;
        };
        // The registrar we reached must prove it is one, and the one we expect when
        // its ID is known (T5).
        let expected = self.peers.get(index).map(|p| p.id);
        if !self.permitted(assoc, "peer", |access, peer| {
            access.is_registrar(peer, expected)
        }) {
            self.out.push_back(Output::Close { assoc });
            self.handle_association_down(assoc, now);
            return;
        }
        if let Some(peer) = self.peers.get_mut(index) {
            peer.link = Link::Bound(assoc);
        }
        if let Some(association) = self.associations.get_mut(&assoc) {
            association.registrar = expected.filter(|id| *id != RegistrarId::UNKNOWN);
        }
        self.send_to_peer(index, self.presence(true));
        self.maybe_start_mentor_sync(index, now);
    }

    /// An association went down: a peer's, or a takeover's.
    pub(super) fn enrp_association_down(&mut self, assoc: AssocId, now: Instant) {
        let mut unbound = Vec::new();
        for peer in &mut self.peers {
            if peer.link == Link::Connecting(assoc) {
                peer.link = Link::None;
            }
            if peer.link == Link::Bound(assoc) {
                peer.link = Link::None;
                unbound.push(peer.id);
                // Its association broke: probe at once instead of waiting for silence.
                if let Standing::Up { probe_at } = &mut peer.standing {
                    *probe_at = now;
                }
            }
        }
        // A takeover does not wait for a peer whose association is gone.
        for id in unbound {
            self.stop_waiting_for(id);
        }
        if let Some(keys) = self.takeover_links.remove(&assoc) {
            for key in keys {
                if self
                    .handlespace
                    .get(&key)
                    .is_some_and(|e| e.association == Some(assoc))
                {
                    self.handlespace.set_association(&key, None);
                }
            }
        }
    }

    pub(super) fn on_enrp(&mut self, assoc: AssocId, bytes: &[u8], now: Instant) {
        let decoded = match EnrpMessage::decode(bytes) {
            Ok(decoded) => decoded,
            Err(error) => {
                if let Some(cause) = error_reply(Protocol::Enrp, bytes, &error) {
                    let body = EnrpBody::Error {
                        error: OperationError::single(cause),
                    };
                    self.send_enrp(assoc, body, RegistrarId::UNKNOWN);
                }
                self.malformed(assoc, format!("malformed ENRP message: {error}"));
                return;
            }
        };
        if !self.enrp_permitted(assoc, &decoded.message, now) {
            return;
        }
        for cause in decoded.report_causes() {
            let body = EnrpBody::Error {
                error: OperationError::single(cause),
            };
            self.send_enrp(assoc, body, decoded.message.sender);
        }
        let message = decoded.message;
        if message.sender == self.id {
            // A registrar with our ID (RFC 5353 §3.2.1): IDs must be unique in a scope.
            self.event(RegistrarEvent::IdCollision { assoc });
            return;
        }
        if let Err(reason) = self.speaks_over_its_link(assoc, message.sender, &message.body) {
            self.event(RegistrarEvent::Denied {
                assoc,
                action: "enrp",
                reason,
            });
            self.out.push_back(Output::Close { assoc });
            self.handle_association_down(assoc, now);
            return;
        }
        if message.sender != RegistrarId::UNKNOWN
            && let Some(association) = self.associations.get_mut(&assoc)
        {
            association.registrar = Some(message.sender);
        }
        self.dispatch_enrp(assoc, message.sender, message.body, now);
    }

    fn dispatch_enrp(&mut self, assoc: AssocId, sender: RegistrarId, body: EnrpBody, now: Instant) {
        match body {
            EnrpBody::Presence {
                reply_required,
                checksum,
                server_information,
            } => self.on_presence(
                assoc,
                sender,
                reply_required,
                checksum,
                server_information,
                now,
            ),
            EnrpBody::HandleTableRequest { own_children_only } => {
                self.on_handle_table_request(assoc, sender, own_children_only);
            }
            EnrpBody::HandleTableResponse {
                reject,
                more,
                pools,
            } => self.on_handle_table_response(sender, reject, more, pools, now),
            EnrpBody::HandleUpdate {
                takeover_suggested,
                action,
                pool_handle,
                pool_element,
            } => self.on_handle_update(
                sender,
                takeover_suggested,
                action,
                pool_handle,
                pool_element,
                now,
            ),
            EnrpBody::ListRequest => self.on_list_request(assoc, sender),
            EnrpBody::ListResponse { reject, servers } => {
                if !reject {
                    self.on_list_response(sender, servers, now);
                }
            }
            EnrpBody::InitTakeover { target } => self.on_init_takeover(sender, target, now),
            EnrpBody::InitTakeoverAck { target } => self.on_init_takeover_ack(sender, target),
            EnrpBody::TakeoverServer { target } => self.on_takeover_server(sender, target),
            EnrpBody::Error { error } => self.event(RegistrarEvent::Malformed {
                assoc,
                detail: format!("peer sent ENRP_ERROR {:?}", error.first_code()),
            }),
        }
    }

    /// security.md §3.3, T5: only a registrar speaks for its own ID; observers may read
    /// the table. Anything else closes the association (false).
    fn enrp_permitted(&mut self, assoc: AssocId, message: &EnrpMessage, now: Instant) -> bool {
        let sender = message.sender;
        let permitted = match message.body {
            EnrpBody::HandleTableRequest { .. } | EnrpBody::ListRequest => {
                self.permitted(assoc, "enrp", |access, peer| {
                    access.may_read_table(peer, sender)
                })
            }
            _ => self.permitted(assoc, "enrp", |access, peer| {
                access.may_speak_for(peer, sender)
            }),
        };
        if !permitted {
            if let EnrpBody::HandleTableRequest { .. } = message.body {
                // The R flag tells a requester it is refused (as rsplib answers unknown
                // senders, security.md §3.3).
                let body = EnrpBody::HandleTableResponse {
                    reject: true,
                    more: false,
                    pools: Vec::new(),
                };
                self.send_enrp(assoc, body, sender);
            }
            self.out.push_back(Output::Close { assoc });
            self.handle_association_down(assoc, now);
        }
        permitted
    }

    /// A known registrar speaks over the association it is bound to, or over another
    /// one from the same host (both may open one); requests that only read are open
    /// to observers.
    fn speaks_over_its_link(
        &self,
        assoc: AssocId,
        sender: RegistrarId,
        body: &EnrpBody,
    ) -> Result<(), String> {
        if matches!(
            body,
            EnrpBody::HandleTableRequest { .. } | EnrpBody::ListRequest | EnrpBody::Error { .. }
        ) {
            return Ok(());
        }
        let Some(bound) = self
            .peer_index(sender)
            .and_then(|index| self.peers.get(index))
            .and_then(|p| p.link.bound())
        else {
            return Ok(());
        };
        let host_of = |a: AssocId| self.associations.get(&a).map(|a| &a.peer.addresses);
        match (host_of(bound), host_of(assoc)) {
            (Some(theirs), Some(this))
                if bound != assoc && !theirs.iter().any(|a| this.contains(a)) =>
            {
                Err(format!(
                    "registrar {sender} is bound to an association from {theirs:?}; this one is from {this:?}"
                ))
            }
            _ => Ok(()),
        }
    }

    /// Peer timers: probes, takeovers, expiries, stalled downloads (RFC 5353 §3.4.3, §3.5-3.6).
    pub(super) fn enrp_timeouts(&mut self, now: Instant) {
        if let Phase::Startup { deadline, .. } = self.phase
            && deadline <= now
        {
            self.finish_startup(now);
        }
        if self.mentor_sync_deadline.is_some_and(|d| d <= now) {
            // The mentor stopped answering: serve with what we have.
            self.finish_startup(now);
        }
        if self.next_heartbeat <= now {
            self.heartbeat(now);
        }
        let mut index = 0;
        while index < self.peers.len() {
            let Some(peer) = self.peers.get(index) else {
                break;
            };
            if peer.audit.as_ref().is_some_and(|a| a.deadline <= now) {
                let id = peer.id;
                self.end_table_download(index, id, false, false, now);
            }
            let due = self
                .peers
                .get(index)
                .is_some_and(|p| p.standing.deadline().is_some_and(|d| d <= now));
            if due && self.standing_expired(index, now) {
                continue;
            }
            index += 1;
        }
    }

    /// A peer's standing reached its deadline. Returns true if the entry was removed
    /// (the index now names the next peer).
    fn standing_expired(&mut self, index: usize, now: Instant) -> bool {
        let Some(peer) = self.peers.get(index) else {
            return false;
        };
        let id = peer.id;
        match peer.standing {
            Standing::Candidate { .. } => {
                self.event(RegistrarEvent::CandidateExpired { id });
                self.forget_peer(index)
            }
            Standing::Up { .. } => {
                self.probe(index, now);
                false
            }
            Standing::Probing { .. } => {
                if id != RegistrarId::UNKNOWN && self.handlespace.owned_count(id) > 0 {
                    self.start_takeover(index, now);
                    // A completed takeover forgets the peer.
                    self.peers.get(index).is_none_or(|p| p.id != id)
                } else {
                    if id != RegistrarId::UNKNOWN {
                        self.event(RegistrarEvent::PeerLost { id });
                    }
                    self.forget_peer(index)
                }
            }
            Standing::TakingOver { .. } => {
                // Some peer never acknowledged: give up for now, and try again if
                // the target stays silent.
                self.event(RegistrarEvent::TakeoverAbandoned { target: id });
                self.probe(index, now);
                false
            }
            Standing::TakenOverBy { .. } => {
                // The other registrar's takeover never completed.
                self.probe(index, now);
                false
            }
        }
    }

    /// Asks a silent peer to answer (R flag) within MAX-TIME-NO-RESPONSE.
    fn probe(&mut self, index: usize, now: Instant) {
        let deadline = now + self.config.max_time_no_response;
        let Some(peer) = self.peers.get_mut(index) else {
            return;
        };
        peer.standing = Standing::Probing { deadline };
        let id = peer.id;
        self.send_to_peer(index, self.presence(true));
        // A takeover does not wait for a peer that fell silent.
        self.stop_waiting_for(id);
    }

    /// Forgets a peer (a configured one is kept, to be reached again). Returns true if
    /// the entry was removed (the index now names the next peer).
    pub(super) fn forget_peer(&mut self, index: usize) -> bool {
        let Some(peer) = self.peers.get_mut(index) else {
            return false;
        };
        let id = peer.id;
        let removed = if peer.is_static {
            peer.reset();
            false
        } else {
            if let Some(assoc) = peer.link.bound() {
                self.out.push_back(Output::Close { assoc });
            }
            self.peers.remove(index);
            true
        };
        // Do not wait for acknowledgements from a peer that is gone.
        self.stop_waiting_for(id);
        removed
    }

    pub(super) fn enrp_deadline(&self) -> Option<Instant> {
        let peers = self
            .peers
            .iter()
            .flat_map(|p| [p.standing.deadline(), p.audit.as_ref().map(|a| a.deadline)]);
        let startup = match self.phase {
            Phase::Startup { deadline, .. } => Some(deadline),
            Phase::Normal => None,
        };
        let heartbeat =
            (!self.peers.is_empty() || self.config.enrp_multicast).then_some(self.next_heartbeat);
        peers
            .flatten()
            .chain(startup)
            .chain(self.mentor_sync_deadline)
            .chain(heartbeat)
            .min()
    }

    /// Holds an ASAP message until start-up has synchronised, or for
    /// `max_startup_hold` at most; false if it must be handled now. Once one is held,
    /// those after it are held too, so that each association's messages keep their order.
    pub(super) fn defer_during_startup(
        &mut self,
        assoc: AssocId,
        bytes: &[u8],
        now: Instant,
    ) -> bool {
        if self.phase == Phase::Normal && self.deferred.is_empty() {
            return false;
        }
        if self.deferred.len() < self.config.max_deferred_messages {
            self.deferred.push_back(Deferred {
                assoc,
                bytes: bytes.to_vec(),
                arrived: now,
            });
        } else {
            // Counted and logged with the bad input: a flood during start-up.
            self.event(RegistrarEvent::Malformed {
                assoc,
                detail: "ASAP message dropped: too many held during ENRP start-up".into(),
            });
        }
        true
    }

    /// Serves the held ASAP messages that have waited `max_startup_hold`, and those
    /// after them once start-up has finished.
    pub(super) fn serve_held_too_long(&mut self, now: Instant) {
        while let Some(held) = self.deferred.front() {
            let due =
                self.phase == Phase::Normal || held.arrived + self.config.max_startup_hold <= now;
            if !due {
                break;
            }
            let Some(held) = self.deferred.pop_front() else {
                break;
            };
            if self.associations.contains_key(&held.assoc) {
                self.on_asap(held.assoc, &held.bytes, now);
            }
        }
    }

    /// When the oldest held ASAP message is due.
    pub(super) fn startup_hold_deadline(&self) -> Option<Instant> {
        self.deferred
            .front()
            .map(|held| held.arrived + self.config.max_startup_hold)
    }
}
