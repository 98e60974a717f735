//! ENRP: registrars that keep one handlespace and take over a dead peer's PEs
//! (enrp.md §5).
//!
//! * Peers come from configuration (static), from multicast presences and from list
//!   responses. Each is sent ENRP_PRESENCE every heartbeat; one silent for
//!   MAX-TIME-LAST-HEARD is probed (R flag), and one that does not answer within
//!   MAX-TIME-NO-RESPONSE is taken over if it owned PEs, else forgotten.
//! * Start-up: the first peer heard is the mentor; its peer list and whole handle table
//!   are downloaded before ASAP requests are served (bounded by the mentor discovery
//!   timeout).
//! * Every change of an owned PE goes to every peer as ENRP_HANDLE_UPDATE. An ADD_PE is
//!   accepted only from the registrar it names as the PE's home, a DEL_PE only from the
//!   PE's current home (security.md T5; rsplib accepts DEL_PE from anyone).
//! * Audit: a presence received over an association whose checksum differs from ours for
//!   its sender starts a W = 1 table download; PEs the peer no longer has are purged.
//! * Takeover: INIT_TAKEOVER to all, wait for the acknowledgement of every other known
//!   peer (a peer that disappears is not waited for), the lower ID wins a race; then
//!   TAKEOVER_SERVER, and a keep-alive with the H flag to each PE. With two registrars
//!   the set is empty and the takeover completes at once (rsplib's never does).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Instant;

use super::{RegistrarEngine, RegistrarEvent, RemovalReason};
use crate::engine::{AssocId, Endpoint, Engine, Output, TransportKind};
use crate::handlespace::PoolElementKey;
use crate::wire::{
    AsapMessage, CauseCode, EndpointKeepAlive, EnrpBody, EnrpMessage, OperationError, PoolElement,
    PoolEntries, PoolHandle, Protocol, RegistrarId, ServerInformation, UpdateAction,
};

/// A takeover of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Takeover {
    None,
    /// This registrar is taking the peer over; these peers have not acknowledged yet.
    Mine {
        waiting: BTreeSet<RegistrarId>,
        expires: Instant,
    },
    /// Another registrar is taking it over (this one acknowledged).
    ByOther(RegistrarId),
}

/// A running W = 1 download of a peer's own PEs (audit).
#[derive(Debug, Clone)]
pub(super) struct Audit {
    /// PEs the peer owned here when the audit began and has not listed yet.
    marked: BTreeSet<PoolElementKey>,
    deadline: Instant,
}

/// One registrar this one peers with.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    /// 0 until heard from (static peers).
    pub(super) id: RegistrarId,
    pub(super) endpoint: Option<Endpoint>,
    pub(super) is_static: bool,
    /// The association messages to the peer go on.
    pub(super) assoc: Option<AssocId>,
    /// An association being opened to it.
    pub(super) connecting: Option<AssocId>,
    /// When silence turns into a probe.
    pub(super) last_heard_deadline: Option<Instant>,
    /// When an unanswered probe turns into a takeover.
    pub(super) no_response_deadline: Option<Instant>,
    pub(super) list_requested: bool,
    pub(super) takeover: Takeover,
    pub(super) audit: Option<Audit>,
}

impl Peer {
    fn new(id: RegistrarId, endpoint: Option<Endpoint>, is_static: bool) -> Self {
        Self {
            id,
            endpoint,
            is_static,
            assoc: None,
            connecting: None,
            last_heard_deadline: None,
            no_response_deadline: None,
            list_requested: false,
            takeover: Takeover::None,
            audit: None,
        }
    }
}

/// Start-up phase (enrp.md §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for a mentor (until the deadline), or downloading its table.
    Startup {
        deadline: Instant,
        mentor: Option<RegistrarId>,
    },
    Normal,
}

/// A peer as reported to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its ID (0: a configured peer not heard from yet).
    pub id: RegistrarId,
    /// Its ENRP endpoint, if known.
    pub endpoint: Option<Endpoint>,
    /// Configured (never forgotten) or discovered.
    pub is_static: bool,
    /// An association to it is up.
    pub connected: bool,
    /// PEs it owns in this handlespace.
    pub pool_elements: usize,
    /// Under takeover (by this registrar or another).
    pub being_taken_over: bool,
}

impl RegistrarEngine {
    /// The peers, for status pages.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|p| PeerStatus {
                id: p.id,
                endpoint: p.endpoint.clone(),
                is_static: p.is_static,
                connected: p.assoc.is_some(),
                pool_elements: self.handlespace.owned_count(p.id),
                being_taken_over: p.takeover != Takeover::None,
            })
            .collect()
    }

    /// Has start-up synchronisation finished (ASAP is being served)?
    pub fn is_synchronized(&self) -> bool {
        self.phase == Phase::Normal
    }

    pub(super) fn initial_phase(config: &super::RegistrarConfig, now: Instant) -> Phase {
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
            self.peers
                .push(Peer::new(RegistrarId::UNKNOWN, Some(endpoint), true));
        }
        for index in 0..self.peers.len() {
            self.connect_peer(index);
        }
    }

    fn peer_index(&self, id: RegistrarId) -> Option<usize> {
        (id != RegistrarId::UNKNOWN)
            .then(|| self.peers.iter().position(|p| p.id == id))
            .flatten()
    }

    fn connect_peer(&mut self, index: usize) {
        let Some(peer) = self.peers.get_mut(index) else {
            return;
        };
        if peer.assoc.is_some() || peer.connecting.is_some() {
            return;
        }
        let Some(endpoint) = peer.endpoint.clone() else {
            return;
        };
        let assoc = self.ids.next();
        peer.connecting = Some(assoc);
        self.out.push_back(Output::Connect {
            assoc,
            to: endpoint,
            protocol: Protocol::Enrp,
        });
    }

    fn presence(&self, reply_required: bool) -> EnrpBody {
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
    fn send_to_peer(&mut self, index: usize, body: EnrpBody) {
        let Some(peer) = self.peers.get(index) else {
            return;
        };
        match peer.assoc {
            Some(assoc) => {
                let receiver = peer.id;
                self.send_enrp(assoc, body, receiver);
            }
            None => self.connect_peer(index),
        }
    }

    fn broadcast(&mut self, body: &EnrpBody) {
        for index in 0..self.peers.len() {
            if self.peers.get(index).is_some_and(|p| p.assoc.is_some()) {
                self.send_to_peer(index, body.clone());
            }
        }
    }

    /// A PE this registrar owns was registered or changed: tell every peer.
    pub(super) fn announce_pool_element(&mut self, key: &PoolElementKey, action: UpdateAction) {
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

    pub(super) fn heartbeat(&mut self, now: Instant) {
        let presence = self.presence(false);
        for index in 0..self.peers.len() {
            match self.peers.get(index).map(|p| p.assoc) {
                Some(Some(_)) => self.send_to_peer(index, presence.clone()),
                Some(None) => self.connect_peer(index),
                None => {}
            }
        }
        if self.config.enrp_multicast {
            let message = EnrpMessage {
                sender: self.id,
                receiver: RegistrarId::UNKNOWN,
                body: presence,
            };
            if let Ok(payload) = message.encode() {
                self.stats.enrp_sent += 1;
                self.out.push_back(Output::Datagram {
                    protocol: Protocol::Enrp,
                    payload,
                });
            }
        }
        // peer-heartbeat-cycle jittered by ±12.5 % (enrp.md §5.3).
        let interval = self.config.peer_heartbeat_interval;
        self.next_heartbeat = now + interval - interval / 8 + self.rng.fraction_of(interval / 4);
    }

    /// An ENRP association is up: one we opened to a peer, or a PE association opened
    /// for a takeover.
    pub(super) fn enrp_association_up(&mut self, assoc: AssocId, now: Instant) {
        if let Some(index) = self.peers.iter().position(|p| p.connecting == Some(assoc)) {
            // The registrar we reached must prove it is one, and the one we expect
            // when its ID is known (T5).
            let expected = self.peers.get(index).map(|p| p.id);
            if !self.permitted(assoc, "peer", |access, peer| {
                access.is_registrar(peer, expected)
            }) {
                self.out.push_back(Output::Close { assoc });
                self.handle_association_down(assoc, now);
                return;
            }
            if let Some(peer) = self.peers.get_mut(index) {
                peer.connecting = None;
                peer.assoc = Some(assoc);
            }
            if let Some(association) = self.associations.get_mut(&assoc) {
                association.registrar = self
                    .peers
                    .get(index)
                    .map(|p| p.id)
                    .filter(|id| *id != RegistrarId::UNKNOWN);
            }
            self.send_to_peer(index, self.presence(true));
            self.maybe_start_mentor_sync(index, now);
        }
    }

    /// An association went down: a peer's, or a takeover's.
    pub(super) fn enrp_association_down(&mut self, assoc: AssocId, now: Instant) {
        for peer in &mut self.peers {
            if peer.connecting == Some(assoc) {
                peer.connecting = None;
            }
            if peer.assoc == Some(assoc) {
                peer.assoc = None;
                // Its association broke: probe at once instead of waiting for silence.
                if peer.no_response_deadline.is_none() {
                    peer.last_heard_deadline = Some(now);
                }
            }
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
                if let Some(cause) = error.reply_cause()
                    && bytes.first() != Some(&0x0a)
                {
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
            // A registrar with our ID (enrp.md §5.1): IDs must be unique in a scope.
            self.event(RegistrarEvent::IdCollision { assoc });
            return;
        }
        if message.sender != RegistrarId::UNKNOWN
            && let Some(association) = self.associations.get_mut(&assoc)
        {
            association.registrar = Some(message.sender);
        }
        let sender = message.sender;
        match message.body {
            EnrpBody::Presence {
                reply_required,
                checksum,
                server_information,
            } => self.on_presence(
                Some(assoc),
                None,
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
            } => {
                self.on_handle_table_response(sender, reject, more, pools, now);
            }
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
                    self.on_list_response(servers);
                }
            }
            EnrpBody::InitTakeover { target } => self.on_init_takeover(sender, target, now),
            EnrpBody::InitTakeoverAck { target } => self.on_init_takeover_ack(sender, target, now),
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

    /// ENRP_PRESENCE over the multicast channel (enrp.md §5.3: only a discovery hint;
    /// no audit, no reply).
    pub(super) fn on_enrp_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        let Ok(decoded) = EnrpMessage::decode(bytes) else {
            return;
        };
        let message = decoded.message;
        if message.sender == self.id {
            return;
        }
        if let EnrpBody::Presence {
            checksum,
            server_information,
            ..
        } = message.body
        {
            self.on_presence(
                None,
                Some(from),
                message.sender,
                false,
                checksum,
                server_information,
                now,
            );
        }
    }

    /// The peer's ENRP endpoint: the addresses in its server information that the
    /// association proves (or, via multicast, the datagram's source), with its port.
    fn peer_endpoint(
        &self,
        assoc: Option<AssocId>,
        from: Option<SocketAddr>,
        info: Option<&ServerInformation>,
    ) -> Option<Endpoint> {
        let transport = info.map(|i| &i.transport);
        let port = transport.map(|t| t.port).or(from.map(|f| f.port()))?;
        let kind = transport
            .and_then(TransportKind::of)
            .unwrap_or(TransportKind::Tcp);
        let proven: Vec<_> = match (assoc.and_then(|a| self.associations.get(&a)), from) {
            (Some(association), _) => {
                let advertised = transport.map(|t| t.addresses.clone()).unwrap_or_default();
                let both: Vec<_> = advertised
                    .iter()
                    .filter(|a| association.peer.addresses.contains(&a.to_canonical()))
                    .copied()
                    .collect();
                if both.is_empty() {
                    association.peer.addresses.clone()
                } else {
                    both
                }
            }
            (None, Some(from)) => vec![from.ip().to_canonical()],
            (None, None) => Vec::new(),
        };
        (!proven.is_empty()).then_some(Endpoint {
            transport: kind,
            addresses: proven,
            port,
        })
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one ENRP_PRESENCE")]
    fn on_presence(
        &mut self,
        assoc: Option<AssocId>,
        from: Option<SocketAddr>,
        sender: RegistrarId,
        reply_required: bool,
        checksum: Option<u16>,
        info: Option<ServerInformation>,
        now: Instant,
    ) {
        if sender == RegistrarId::UNKNOWN {
            return;
        }
        let endpoint = self.peer_endpoint(assoc, from, info.as_ref());
        let index = match self.peer_index(sender) {
            Some(index) => Some(index),
            // A configured peer heard for the first time.
            None => self.peers.iter().position(|p| {
                p.is_static
                    && p.id == RegistrarId::UNKNOWN
                    && endpoint.as_ref().is_some_and(|e| {
                        p.endpoint.as_ref().is_some_and(|s| {
                            s.port == e.port && s.addresses.iter().any(|a| e.addresses.contains(a))
                        })
                    })
            }),
        };
        let (index, is_new) = match index {
            Some(index) => (
                index,
                self.peers
                    .get(index)
                    .is_some_and(|p| p.id == RegistrarId::UNKNOWN),
            ),
            None if self.peers.len() < self.config.max_peers => {
                self.peers.push(Peer::new(sender, endpoint.clone(), false));
                (self.peers.len() - 1, true)
            }
            None => {
                self.event(RegistrarEvent::Malformed {
                    assoc: assoc.unwrap_or(AssocId(0)),
                    detail: format!(
                        "peer limit {} reached: ignoring registrar {sender}",
                        self.config.max_peers
                    ),
                });
                return;
            }
        };
        let Some(peer) = self.peers.get_mut(index) else {
            return;
        };
        peer.id = sender;
        if endpoint.is_some() && (peer.endpoint.is_none() || !peer.is_static) {
            peer.endpoint = endpoint.clone();
        }
        if let Some(assoc) = assoc
            && peer.assoc.is_none()
        {
            peer.assoc = Some(assoc);
        }
        peer.last_heard_deadline = Some(now + self.config.max_time_last_heard);
        peer.no_response_deadline = None;
        // It is alive: every takeover of it ends (enrp.md §5.3 step 8).
        let was_taken_over = peer.takeover != Takeover::None;
        peer.takeover = Takeover::None;
        self.acked_takeovers.remove(&sender);
        let has_assoc = peer.assoc.is_some();
        let list_requested = peer.list_requested;
        let auditing = peer.audit.is_some();
        if was_taken_over {
            self.event(RegistrarEvent::TakeoverCancelled { target: sender });
        }
        if is_new {
            self.event(RegistrarEvent::PeerUp {
                id: sender,
                endpoint: endpoint.clone(),
            });
            self.send_to_peer(index, self.presence(true));
        }
        if let Phase::Startup {
            mentor: mentor @ None,
            ..
        } = &mut self.phase
        {
            *mentor = Some(sender);
            self.maybe_start_mentor_sync(index, now);
        }
        if has_assoc && !list_requested {
            if let Some(peer) = self.peers.get_mut(index) {
                peer.list_requested = true;
            }
            self.send_to_peer(index, EnrpBody::ListRequest);
        }
        // Audit (enrp.md §5.8): only for presences over an association.
        let mentor_syncing = self.mentor_sync == Some(sender);
        if assoc.is_some()
            && !auditing
            && !mentor_syncing
            && self.phase == Phase::Normal
            && checksum.is_some_and(|c| c != self.handlespace.owner_checksum(sender))
        {
            self.start_audit(index, now);
        }
        if reply_required && let Some(assoc) = assoc {
            self.send_enrp(assoc, self.presence(false), sender);
        }
    }

    /// Starts the download of the mentor's table if the mentor is reachable.
    fn maybe_start_mentor_sync(&mut self, index: usize, now: Instant) {
        let Some(peer) = self.peers.get(index) else {
            return;
        };
        let is_mentor =
            matches!(&self.phase, Phase::Startup { mentor: Some(m), .. } if *m == peer.id);
        if !is_mentor || self.mentor_sync.is_some() || peer.assoc.is_none() {
            return;
        }
        self.mentor_sync = Some(peer.id);
        self.mentor_sync_deadline = Some(now + self.config.max_time_no_response);
        if let Some(peer) = self.peers.get_mut(index) {
            peer.list_requested = true;
        }
        self.send_to_peer(index, EnrpBody::ListRequest);
        self.send_to_peer(
            index,
            EnrpBody::HandleTableRequest {
                own_children_only: false,
            },
        );
    }

    fn start_audit(&mut self, index: usize, now: Instant) {
        let Some(peer) = self.peers.get(index) else {
            return;
        };
        let marked: BTreeSet<PoolElementKey> = self.handlespace.owned_by(peer.id).collect();
        let id = peer.id;
        if let Some(peer) = self.peers.get_mut(index) {
            peer.audit = Some(Audit {
                marked,
                deadline: now + self.config.max_time_no_response,
            });
        }
        self.event(RegistrarEvent::AuditStarted { peer: id });
        self.send_to_peer(
            index,
            EnrpBody::HandleTableRequest {
                own_children_only: true,
            },
        );
    }

    /// Enters normal operation: ASAP requests held during start-up are served.
    pub(super) fn finish_startup(&mut self, now: Instant) {
        if self.phase == Phase::Normal {
            return;
        }
        self.phase = Phase::Normal;
        self.mentor_sync = None;
        self.mentor_sync_deadline = None;
        if self.config.announce_interval.is_some() {
            self.next_announce = Some(now);
        }
        self.event(RegistrarEvent::Synchronized {
            pool_elements: self.handlespace.pool_element_count(),
        });
        while let Some((assoc, bytes)) = self.deferred.pop_front() {
            if self.associations.contains_key(&assoc) {
                self.on_asap(assoc, &bytes, now);
            }
        }
    }

    fn on_handle_table_response(
        &mut self,
        sender: RegistrarId,
        reject: bool,
        more: bool,
        pools: Vec<PoolEntries>,
        now: Instant,
    ) {
        let Some(index) = self.peer_index(sender) else {
            return;
        };
        let mentor = self.mentor_sync == Some(sender);
        let auditing = self.peers.get(index).is_some_and(|p| p.audit.is_some());
        if !mentor && !auditing {
            return;
        }
        if reject {
            self.end_table_download(index, sender, mentor, false, now);
            return;
        }
        for entries in pools {
            for element in entries.pool_elements {
                let home = element.home_registrar;
                // Our own PEs are ours to decide; an audit lists only the peer's own.
                if home == self.id || home == RegistrarId::UNKNOWN || (!mentor && home != sender) {
                    continue;
                }
                let key = PoolElementKey {
                    pool_handle: entries.pool_handle,
                    pe_id: element.id,
                };
                self.learn(key, element, now);
                if let Some(audit) = self.peers.get_mut(index).and_then(|p| p.audit.as_mut()) {
                    audit.marked.remove(&key);
                }
            }
        }
        if more {
            if mentor {
                self.mentor_sync_deadline = Some(now + self.config.max_time_no_response);
            }
            if let Some(audit) = self.peers.get_mut(index).and_then(|p| p.audit.as_mut()) {
                audit.deadline = now + self.config.max_time_no_response;
            }
            self.send_to_peer(
                index,
                EnrpBody::HandleTableRequest {
                    own_children_only: !mentor,
                },
            );
        } else {
            self.end_table_download(index, sender, mentor, true, now);
        }
    }

    fn end_table_download(
        &mut self,
        index: usize,
        sender: RegistrarId,
        mentor: bool,
        complete: bool,
        now: Instant,
    ) {
        if mentor {
            self.finish_startup(now);
            return;
        }
        let Some(audit) = self.peers.get_mut(index).and_then(|p| p.audit.take()) else {
            return;
        };
        let mut purged = 0;
        if complete {
            for key in audit.marked {
                if self
                    .handlespace
                    .get(&key)
                    .is_some_and(|e| e.owner() == sender)
                {
                    self.remove(&key, RemovalReason::PeerUpdate);
                    purged += 1;
                }
            }
        }
        self.event(RegistrarEvent::AuditCompleted {
            peer: sender,
            purged,
        });
    }

    /// Stores a PE another registrar owns (update or table download).
    fn learn(&mut self, key: PoolElementKey, mut element: PoolElement, now: Instant) {
        // A peer's word is checked as a PE's is (security.md T3): unusable user
        // addresses are dropped, and an ASAP transport with one is not kept (this
        // registrar would connect there in a takeover).
        element
            .user_transport
            .addresses
            .retain(|address| self.usable_from_peers(address));
        if element.user_transport.addresses.is_empty() {
            self.event(RegistrarEvent::Refused {
                key,
                cause: CauseCode::INVALID_VALUES,
                reason: "from a peer: no usable user transport address".into(),
            });
            return;
        }
        if element.asap_transport.as_ref().is_some_and(|asap| {
            asap.addresses.is_empty() || !asap.addresses.iter().all(|a| self.usable_from_peers(a))
        }) {
            element.asap_transport = None;
        }
        let was_ours = self
            .handlespace
            .get(&key)
            .is_some_and(|e| e.owner() == self.id);
        match self.handlespace.upsert(key.pool_handle, element, None, now) {
            Ok(_) => {
                if was_ours {
                    // The PE moved to another registrar: stop supervising it here.
                    self.handlespace.set_keepalive(&key, None);
                    self.handlespace.set_association(&key, None);
                    self.awaiting_ack.remove(&key);
                }
            }
            Err(refusal) => self.event(RegistrarEvent::Refused {
                key,
                cause: refusal.cause().code,
                reason: format!("from a peer: {refusal}"),
            }),
        }
    }

    fn on_handle_update(
        &mut self,
        sender: RegistrarId,
        takeover_suggested: bool,
        action: UpdateAction,
        pool_handle: PoolHandle,
        element: PoolElement,
        now: Instant,
    ) {
        if self.peer_index(sender).is_none() {
            return;
        }
        let key = PoolElementKey {
            pool_handle,
            pe_id: element.id,
        };
        match action {
            UpdateAction::ADD_PE => {
                // Only the PE's home speaks for it, and never about our own PEs.
                if element.home_registrar != sender {
                    return;
                }
                // A suggested takeover makes this registrar connect to the PE's ASAP
                // endpoint: only to one on a host the PE's user transport names (the
                // home checked those against the PE's association), not to a third
                // host chosen by whoever sent the update.
                let on_the_pes_host = element.asap_transport.as_ref().is_some_and(|asap| {
                    asap.addresses
                        .iter()
                        .any(|a| element.user_transport.addresses.contains(a))
                });
                self.learn(key, element, now);
                let learned = self
                    .handlespace
                    .get(&key)
                    .is_some_and(|e| e.owner() == sender);
                if takeover_suggested
                    && self.config.accept_takeover_suggestions
                    && on_the_pes_host
                    && learned
                {
                    self.claim(vec![key]);
                }
            }
            UpdateAction::DEL_PE
                if self
                    .handlespace
                    .get(&key)
                    .is_some_and(|e| e.owner() == sender) =>
            {
                self.remove(&key, RemovalReason::PeerUpdate);
            }
            // A DEL_PE from anyone but the home, or an unknown action: ignored.
            _ => {}
        }
    }

    fn on_list_request(&mut self, assoc: AssocId, sender: RegistrarId) {
        let servers: Vec<ServerInformation> = self
            .peers
            .iter()
            .filter(|p| p.id != RegistrarId::UNKNOWN && p.id != sender)
            .filter_map(|p| {
                let endpoint = p.endpoint.as_ref()?;
                Some(ServerInformation {
                    server_id: p.id,
                    transport: endpoint
                        .transport
                        .transport_parameter(endpoint.addresses.clone(), endpoint.port),
                })
            })
            .collect();
        self.send_enrp(
            assoc,
            EnrpBody::ListResponse {
                reject: false,
                servers,
            },
            sender,
        );
    }

    fn on_list_response(&mut self, servers: Vec<ServerInformation>) {
        for server in servers {
            if server.server_id == RegistrarId::UNKNOWN
                || server.server_id == self.id
                || self.peer_index(server.server_id).is_some()
                || self.peers.len() >= self.config.max_peers
            {
                continue;
            }
            self.peers.push(Peer::new(
                server.server_id,
                Endpoint::from_parameter(&server.transport),
                false,
            ));
            let index = self.peers.len() - 1;
            self.connect_peer(index);
        }
    }

    /// Peer timers: probes, takeovers, expiries, stalled downloads (enrp.md §5.6-5.8).
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
            let Some(peer) = self.peers.get(index).cloned() else {
                break;
            };
            if peer.audit.as_ref().is_some_and(|a| a.deadline <= now) {
                let id = peer.id;
                self.end_table_download(index, id, false, false, now);
            }
            if let Takeover::Mine { expires, .. } = peer.takeover
                && expires <= now
            {
                self.event(RegistrarEvent::TakeoverAbandoned { target: peer.id });
                if self.forget_peer(index) {
                    continue;
                }
            }
            if peer.last_heard_deadline.is_some_and(|d| d <= now) {
                if let Some(p) = self.peers.get_mut(index) {
                    p.last_heard_deadline = None;
                    p.no_response_deadline = Some(now + self.config.max_time_no_response);
                }
                self.send_to_peer(index, self.presence(true));
            }
            if peer.no_response_deadline.is_some_and(|d| d <= now) {
                if let Some(p) = self.peers.get_mut(index) {
                    p.no_response_deadline = None;
                }
                let taken_by_other = matches!(peer.takeover, Takeover::ByOther(_));
                let owns = self.handlespace.owned_count(peer.id) > 0;
                if !taken_by_other && owns && peer.id != RegistrarId::UNKNOWN {
                    self.start_takeover(index, now);
                } else if peer.takeover == Takeover::None || taken_by_other {
                    if peer.id != RegistrarId::UNKNOWN {
                        self.event(RegistrarEvent::PeerLost { id: peer.id });
                    }
                    if self.forget_peer(index) {
                        continue;
                    }
                }
            }
            index += 1;
        }
    }

    /// Forgets a peer (a static one is kept, to be reached again). Returns true if the
    /// entry was removed (the index now names the next peer).
    fn forget_peer(&mut self, index: usize) -> bool {
        let Some(peer) = self.peers.get(index) else {
            return false;
        };
        let id = peer.id;
        let removed = if peer.is_static {
            if let Some(p) = self.peers.get_mut(index) {
                p.takeover = Takeover::None;
                p.no_response_deadline = None;
                p.last_heard_deadline = None;
                p.list_requested = false;
                p.audit = None;
            }
            false
        } else {
            if let Some(assoc) = peer.assoc {
                self.out.push_back(Output::Close { assoc });
            }
            self.peers.remove(index);
            true
        };
        // Do not wait for acknowledgements from a peer that is gone.
        self.stop_waiting_for(id);
        removed
    }

    fn stop_waiting_for(&mut self, gone: RegistrarId) {
        let mut complete = Vec::new();
        for peer in &mut self.peers {
            if let Takeover::Mine { waiting, .. } = &mut peer.takeover
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

    fn start_takeover(&mut self, index: usize, now: Instant) {
        let Some(target) = self.peers.get(index).map(|p| p.id) else {
            return;
        };
        let waiting: BTreeSet<RegistrarId> = self
            .peers
            .iter()
            .map(|p| p.id)
            .filter(|id| *id != RegistrarId::UNKNOWN && *id != target && *id != self.id)
            .collect();
        let empty = waiting.is_empty();
        if let Some(peer) = self.peers.get_mut(index) {
            peer.takeover = Takeover::Mine {
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
            self.peers.get(index).map(|p| &p.takeover),
            Some(Takeover::Mine { .. })
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
        if let Some(peer) = self.peers.get_mut(index) {
            peer.takeover = Takeover::None;
        }
        self.forget_peer(index);
    }

    fn on_init_takeover(&mut self, initiator: RegistrarId, target: RegistrarId, now: Instant) {
        let Some(initiator_index) = self.peer_index(initiator) else {
            return;
        };
        if target == self.id {
            // We are alive: tell everybody, do not acknowledge.
            let presence = self.presence(false);
            self.broadcast(&presence);
            return;
        }
        let ack = match self.peer_index(target) {
            None => true,
            Some(index) => {
                let Some(peer) = self.peers.get_mut(index) else {
                    return;
                };
                match &peer.takeover {
                    Takeover::None | Takeover::ByOther(_) => {
                        peer.takeover = Takeover::ByOther(initiator);
                        true
                    }
                    // A race: the lower ID wins (enrp.md §5.7, discrepancies.md item 34).
                    Takeover::Mine { .. } if initiator < self.id => {
                        peer.takeover = Takeover::ByOther(initiator);
                        peer.no_response_deadline = Some(now + self.config.max_time_no_response);
                        self.event(RegistrarEvent::TakeoverAbandoned { target });
                        true
                    }
                    Takeover::Mine { .. } => false,
                }
            }
        };
        if ack {
            self.acked_takeovers.insert(target, initiator);
            self.send_to_peer(initiator_index, EnrpBody::InitTakeoverAck { target });
        }
    }

    fn on_init_takeover_ack(&mut self, sender: RegistrarId, target: RegistrarId, _now: Instant) {
        let Some(index) = self.peer_index(target) else {
            return;
        };
        let done = match self.peers.get_mut(index).map(|p| &mut p.takeover) {
            Some(Takeover::Mine { waiting, .. }) => {
                waiting.remove(&sender);
                waiting.is_empty()
            }
            _ => false,
        };
        if done {
            self.complete_takeover(target);
        }
    }

    fn on_takeover_server(&mut self, initiator: RegistrarId, target: RegistrarId) {
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
            self.handlespace.set_keepalive(&key, None);
            self.handlespace.set_association(&key, None);
            self.awaiting_ack.remove(&key);
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
            let keep_alive = AsapMessage::EndpointKeepAlive(EndpointKeepAlive {
                home: true,
                server_id: self.id,
                pool_handle: key.pool_handle,
                pe_id: Some(key.pe_id),
            });
            self.send_asap(assoc, &keep_alive);
            self.awaiting_ack.insert(key, now);
            self.handlespace
                .set_keepalive(&key, Some(now + self.config.keepalive_timeout));
        }
    }

    pub(super) fn enrp_deadline(&self) -> Option<Instant> {
        let peers = self.peers.iter().flat_map(|p| {
            [
                p.last_heard_deadline,
                p.no_response_deadline,
                p.audit.as_ref().map(|a| a.deadline),
                match &p.takeover {
                    Takeover::Mine { expires, .. } => Some(*expires),
                    _ => None,
                },
            ]
        });
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

    /// Holds an ASAP message until start-up has synchronised; false if it must be
    /// handled now.
    pub(super) fn defer_during_startup(&mut self, assoc: AssocId, bytes: &[u8]) -> bool {
        if self.phase == Phase::Normal {
            return false;
        }
        if self.deferred.len() < self.config.max_deferred_messages {
            self.deferred.push_back((assoc, bytes.to_vec()));
        }
        true
    }
}
