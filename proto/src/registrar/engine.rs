//! The registrar engine's state and the [`Engine`] contract; the protocol handlers are
//! in the sibling modules (ASAP in `asap`, ENRP in `enrp`, `sync`, `takeover`,
//! `discovery`).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::engine::{AssocId, AssocIds, Engine, Output, PeerInfo};
use crate::handlespace::{Handlespace, PoolElementEntry, PoolElementKey};
use crate::rate::TokenBucket;
use crate::rng::SeededRng;
use crate::wire::{
    AsapMessage, EnrpBody, EnrpMessage, ErrorCause, ErrorReport, OperationError, PoolElement,
    PoolEntries, Protocol, RegistrarId, ServerAnnounce, UpdateAction, error_reply,
};

use super::config::RegistrarConfig;
use super::events::{RegistrarEvent, RemovalReason};
use super::peers::{self};
use super::stats::RegistrarStats;
use super::{asap, quota, sync};

#[derive(Debug)]
pub(super) struct Association {
    pub(super) peer: PeerInfo,
    /// The peer registrar on an ENRP association, once its messages name it.
    pub(super) registrar: Option<RegistrarId>,
    pub(super) malformed: u32,
    pub(super) resolutions: Option<TokenBucket>,
    pub(super) reports: Option<TokenBucket>,
    /// Where the next handle-table response to this requester continues.
    pub(super) table_cursor: Option<PoolElementKey>,
}

/// An ASAP message held during ENRP start-up (RFC 5353 §3.2).
#[derive(Debug)]
pub(super) struct Deferred {
    pub(super) assoc: AssocId,
    pub(super) bytes: Vec<u8>,
    pub(super) arrived: Instant,
}

/// The registrar engine.
#[derive(Debug)]
pub struct RegistrarEngine {
    pub(super) config: RegistrarConfig,
    pub(super) id: RegistrarId,
    pub(super) handlespace: Handlespace,
    pub(super) associations: BTreeMap<AssocId, Association>,
    /// Owned PEs whose keep-alive is outstanding.
    pub(super) awaiting_ack: BTreeMap<PoolElementKey, Instant>,
    /// Distinct pool-user hosts that reported each PE unreachable (a host's many
    /// associations count once, so one host cannot remove a PE).
    pub(super) reporters: BTreeMap<PoolElementKey, Vec<IpAddr>>,
    /// PEs registered here, charged to the host that registered them.
    pub(super) quotas: quota::HostQuotas,
    pub(super) next_announce: Option<Instant>,
    pub(super) rng: SeededRng,
    pub(super) out: VecDeque<Output<RegistrarEvent>>,
    pub(super) ids: AssocIds,
    // ENRP (enrp.rs).
    pub(super) peers: Vec<peers::Peer>,
    pub(super) phase: sync::Phase,
    pub(super) mentor_sync: Option<RegistrarId>,
    pub(super) mentor_sync_deadline: Option<Instant>,
    pub(super) deferred: VecDeque<Deferred>,
    pub(super) next_heartbeat: Instant,
    /// Associations opened to taken-over PEs, with the PEs to claim on them.
    pub(super) takeover_links: BTreeMap<AssocId, Vec<PoolElementKey>>,
    /// Takeovers this registrar acknowledged: target -> initiator.
    pub(super) acked_takeovers: BTreeMap<RegistrarId, RegistrarId>,
    /// The deadline last handed to the driver, and the time of the last input:
    /// running much later than both means this registrar was not running (see
    /// `notice_oversleep`).
    pub(super) expected_wakeup: Option<Instant>,
    pub(super) last_input: Option<Instant>,
    pub(super) stats: RegistrarStats,
}

impl RegistrarEngine {
    /// A registrar with an empty handlespace. Its ID is the configured one, or drawn
    /// from the seed.
    pub fn new(config: RegistrarConfig, seed: u64, now: Instant) -> Self {
        let phase = Self::initial_phase(&config, now);
        Self::starting(config, seed, phase, now)
    }

    /// A registrar with an empty handlespace that starts in `phase` (a fresh one
    /// looks for a mentor when it has peers; one that goes on from an upgrade's record
    /// serves at once).
    pub(super) fn starting(
        config: RegistrarConfig,
        seed: u64,
        phase: sync::Phase,
        now: Instant,
    ) -> Self {
        let mut rng = SeededRng::new(seed);
        let id = config
            .id
            .filter(|id| *id != RegistrarId::UNKNOWN)
            .unwrap_or_else(|| RegistrarId(rng.nonzero_u32()));
        let mut engine = Self {
            handlespace: Handlespace::new(config.limits),
            next_announce: None,
            id,
            associations: BTreeMap::new(),
            awaiting_ack: BTreeMap::new(),
            reporters: BTreeMap::new(),
            quotas: quota::HostQuotas::default(),
            rng,
            out: VecDeque::new(),
            ids: AssocIds::default(),
            peers: Vec::new(),
            phase,
            mentor_sync: None,
            mentor_sync_deadline: None,
            deferred: VecDeque::new(),
            next_heartbeat: now,
            takeover_links: BTreeMap::new(),
            acked_takeovers: BTreeMap::new(),
            expected_wakeup: None,
            last_input: None,
            stats: RegistrarStats::default(),
            config,
        };
        if engine.phase == sync::Phase::Normal {
            engine.next_announce = engine.config.announce_interval.map(|_| now);
        }
        engine.start_peering();
        engine
    }

    /// This registrar's identifier.
    pub fn id(&self) -> RegistrarId {
        self.id
    }

    /// The distinct hosts that reported a PE unreachable since it last registered or
    /// answered a keep-alive (RFC 5352 §3.5).
    pub fn unreachable_reporters(&self, key: &PoolElementKey) -> usize {
        self.reporters.get(key).map_or(0, Vec::len)
    }

    /// The handlespace (read-only).
    pub fn handlespace(&self) -> &Handlespace {
        &self.handlespace
    }

    /// Message counters since start.
    pub fn stats(&self) -> RegistrarStats {
        self.stats
    }

    /// Associations up now: ASAP (PEs and pool users) and ENRP (peer registrars).
    pub fn open_associations(&self) -> (usize, usize) {
        let enrp = self
            .associations
            .values()
            .filter(|a| a.peer.protocol == Protocol::Enrp)
            .count();
        (self.associations.len() - enrp, enrp)
    }

    /// The configuration in force.
    pub fn config(&self) -> &RegistrarConfig {
        &self.config
    }

    /// Applies new tunables (timers, thresholds, limits) from a configuration reload.
    /// The ID and the endpoints stay: they cannot change while the registrar runs.
    pub fn reconfigure(&mut self, mut config: RegistrarConfig, now: Instant) {
        config.id = Some(self.id);
        config.asap_transports = std::mem::take(&mut self.config.asap_transports);
        config.enrp_transport = self.config.enrp_transport.take();
        self.next_announce = match (config.announce_interval, self.next_announce) {
            (None, _) => None,
            (Some(_), None) => Some(now),
            (Some(_), at) => at,
        };
        self.handlespace.set_limits(config.limits);
        self.config = config;
    }

    /// Sets where this registrar accepts ASAP and ENRP associations (known once the
    /// driver has bound its sockets); announces carry the ASAP endpoints.
    pub fn set_endpoints(
        &mut self,
        asap: Vec<crate::wire::Transport>,
        enrp: Option<crate::wire::Transport>,
    ) {
        self.config.asap_transports = asap;
        self.config.enrp_transport = enrp;
    }

    /// May an address that a peer registrar sends for a PE be used (ENRP ADD_PE, handle
    /// tables)? As for ASAP, no unspecified or multicast address; and no loopback
    /// address unless this registrar itself serves ASAP on loopback (a single-host
    /// deployment): elsewhere a peer's PE "on loopback" would be a port of this host.
    pub(super) fn usable_from_peers(&self, address: &IpAddr) -> bool {
        let address = address.to_canonical();
        asap::usable_address(&address)
            && (!address.is_loopback()
                || self
                    .config
                    .asap_transports
                    .iter()
                    .flat_map(|t| &t.addresses)
                    .any(|own| own.to_canonical().is_loopback()))
    }

    pub(super) fn event(&mut self, event: RegistrarEvent) {
        self.out.push_back(Output::Event(event));
    }

    pub(super) fn send_asap(&mut self, assoc: AssocId, message: &AsapMessage) {
        match message.encode() {
            Ok(payload) => {
                self.stats.asap_sent += 1;
                self.out.push_back(Output::Transmit {
                    assoc,
                    protocol: Protocol::Asap,
                    payload,
                });
            }
            Err(error) => self.event(RegistrarEvent::Malformed {
                assoc,
                detail: format!("cannot encode {}: {error}", message.name()),
            }),
        }
    }

    pub(super) fn send_enrp(&mut self, assoc: AssocId, body: EnrpBody, receiver: RegistrarId) {
        let message = EnrpMessage {
            sender: self.id,
            receiver,
            body,
        };
        match message.encode() {
            Ok(payload) => {
                self.stats.enrp_sent(message.body.message_type());
                self.out.push_back(Output::Transmit {
                    assoc,
                    protocol: Protocol::Enrp,
                    payload,
                });
            }
            Err(error) => self.event(RegistrarEvent::Malformed {
                assoc,
                detail: format!("cannot encode {}: {error}", message.body.name()),
            }),
        }
    }

    /// Counts a bad message; an association that keeps sending them is closed.
    pub(super) fn malformed(&mut self, assoc: AssocId, detail: String) {
        self.event(RegistrarEvent::Malformed { assoc, detail });
        let Some(association) = self.associations.get_mut(&assoc) else {
            return;
        };
        association.malformed += 1;
        if association.malformed > self.config.max_malformed_messages {
            self.out.push_back(Output::Close { assoc });
            self.event(RegistrarEvent::Closed {
                assoc,
                reason: "too many malformed messages",
            });
            self.drop_association(assoc);
        }
    }

    pub(super) fn reply_error_asap(&mut self, assoc: AssocId, cause: ErrorCause) {
        let message = AsapMessage::Error(ErrorReport {
            error: OperationError::single(cause),
        });
        self.send_asap(assoc, &message);
    }

    // ASAP: registration (RFC 5352 §3.1, security.md §3.1).

    pub(super) fn remove(
        &mut self,
        key: &PoolElementKey,
        reason: RemovalReason,
    ) -> Option<PoolElementEntry> {
        let entry = self.handlespace.remove(key)?;
        self.removed(key, &entry, reason);
        Some(entry)
    }

    /// After a PE left: forget its supervision state, and if it was ours tell the peers
    /// (DEL_PE with the full PE parameter, RFC 5353 §3.3).
    pub(super) fn removed(
        &mut self,
        key: &PoolElementKey,
        entry: &PoolElementEntry,
        reason: RemovalReason,
    ) {
        self.awaiting_ack.remove(key);
        self.reporters.remove(key);
        self.quotas.release(key);
        if entry.owner() == self.id {
            self.send_update(key.pool_handle, entry.element.clone(), UpdateAction::DEL_PE);
        }
        self.event(RegistrarEvent::Removed { key: *key, reason });
    }

    // ASAP: handle resolution (RFC 5352 §3.3).

    pub(super) fn on_handle_table_request(
        &mut self,
        assoc: AssocId,
        requester: RegistrarId,
        own_children_only: bool,
    ) {
        let cursor = self
            .associations
            .get_mut(&assoc)
            .and_then(|a| a.table_cursor.take());
        let owner = own_children_only.then_some(self.id);
        let mut pools: Vec<PoolEntries> = Vec::new();
        let mut taken = 0usize;
        let mut bytes = 12usize;
        let mut last = None;
        let mut more = false;
        for (handle, entry) in self.handlespace.iter_after(cursor) {
            if owner.is_some_and(|o| entry.owner() != o) {
                continue;
            }
            let element_size = pool_element_size(&entry.element);
            let new_pool = pools.last().is_none_or(|p| p.pool_handle != *handle);
            let size = element_size + if new_pool { 36 } else { 0 };
            if taken >= self.config.handle_table_page_size
                || bytes + size > self.config.handle_table_max_bytes
            {
                more = true;
                break;
            }
            if new_pool {
                pools.push(PoolEntries {
                    pool_handle: *handle,
                    pool_elements: Vec::new(),
                });
            }
            if let Some(pool) = pools.last_mut() {
                pool.pool_elements.push(entry.element.clone());
            }
            taken += 1;
            bytes += size;
            last = Some(PoolElementKey {
                pool_handle: *handle,
                pe_id: entry.element.id,
            });
        }
        if more && let Some(association) = self.associations.get_mut(&assoc) {
            association.table_cursor = last;
        }
        let body = EnrpBody::HandleTableResponse {
            reject: false,
            more,
            pools,
        };
        self.send_enrp(assoc, body, requester);
    }

    pub(super) fn on_asap(&mut self, assoc: AssocId, bytes: &[u8], now: Instant) {
        let decoded = match AsapMessage::decode(bytes) {
            Ok(decoded) => decoded,
            Err(error) => {
                if let Some(cause) = error_reply(Protocol::Asap, bytes, &error) {
                    self.reply_error_asap(assoc, cause);
                }
                self.malformed(assoc, format!("malformed ASAP message: {error}"));
                return;
            }
        };
        for cause in decoded.report_causes() {
            self.reply_error_asap(assoc, cause);
        }
        match decoded.message {
            AsapMessage::Registration(registration) => {
                self.on_registration(assoc, registration, now)
            }
            AsapMessage::Deregistration(target) => self.on_deregistration(assoc, target),
            AsapMessage::HandleResolution(request) => {
                self.on_handle_resolution(assoc, request, now)
            }
            AsapMessage::EndpointKeepAliveAck(ack) => self.on_keepalive_ack(assoc, ack, now),
            AsapMessage::EndpointUnreachable(report) => self.on_unreachable(assoc, report, now),
            // A peer's error reports count like malformed messages: a flood of them
            // closes the association instead of filling the log.
            AsapMessage::Error(report) => self.malformed(
                assoc,
                format!("peer sent ASAP_ERROR {:?}", report.error.first_code()),
            ),
            other => self.malformed(assoc, format!("{} is not for a registrar", other.name())),
        }
    }

    pub(super) fn drop_association(&mut self, assoc: AssocId) {
        self.associations.remove(&assoc);
        self.deferred.retain(|held| held.assoc != assoc);
        let removed = self.handlespace.remove_association(assoc);
        for (key, entry) in removed {
            self.removed(&key, &entry, RemovalReason::AssociationLost);
        }
    }

    pub(super) fn announce(&mut self, now: Instant) {
        let message = AsapMessage::ServerAnnounce(ServerAnnounce {
            server_id: self.id,
            transports: self.config.asap_transports.clone(),
            server_information: None,
        });
        if let Ok(payload) = message.encode() {
            self.out.push_back(Output::Datagram {
                protocol: Protocol::Asap,
                payload,
            });
        }
        if let Some(interval) = self.config.announce_interval {
            // T6 jittered by ±12.5 % (RFC 5352 §3.6).
            let jitter = interval / 4;
            self.next_announce = Some(now + interval - interval / 8 + self.rng.fraction_of(jitter));
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [
            self.handlespace.next_keepalive(),
            self.handlespace.next_expiry(),
            self.next_announce,
            self.enrp_deadline(),
            self.startup_hold_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// An upper bound of a Pool Element parameter's encoded size.
fn pool_element_size(element: &PoolElement) -> usize {
    let transport = |addresses: usize| 8 + 20 * addresses;
    16 + transport(element.user_transport.addresses.len())
        + 8
        + 4 * element.policy.values().len()
        + element
            .asap_transport
            .as_ref()
            .map_or(0, |t| transport(t.addresses.len()))
}

impl Engine for RegistrarEngine {
    type Event = RegistrarEvent;

    fn handle_association_up(&mut self, assoc: AssocId, peer: PeerInfo, now: Instant) {
        self.notice_oversleep(now);
        let association = Association {
            registrar: None,
            resolutions: self
                .config
                .max_handle_resolutions_per_second
                .map(TokenBucket::new),
            reports: self
                .config
                .max_unreachable_reports_per_second
                .map(TokenBucket::new),
            peer: PeerInfo {
                addresses: peer.addresses.iter().map(IpAddr::to_canonical).collect(),
                ..peer
            },
            malformed: 0,
            table_cursor: None,
        };
        self.associations.insert(assoc, association);
        if self.takeover_links.contains_key(&assoc) {
            self.takeover_link_up(assoc, now);
        } else {
            self.enrp_association_up(assoc, now);
        }
    }

    fn handle_association_down(&mut self, assoc: AssocId, now: Instant) {
        self.notice_oversleep(now);
        self.drop_association(assoc);
        self.enrp_association_down(assoc, now);
    }

    fn handle_message(&mut self, assoc: AssocId, protocol: Protocol, bytes: &[u8], now: Instant) {
        self.notice_oversleep(now);
        if !self.associations.contains_key(&assoc) {
            return;
        }
        match protocol {
            Protocol::Asap => self.stats.asap_received += 1,
            Protocol::Enrp => self.stats.enrp_received(bytes.first().copied()),
        }
        match protocol {
            Protocol::Asap if self.defer_during_startup(assoc, bytes, now) => {}
            Protocol::Asap => self.on_asap(assoc, bytes, now),
            Protocol::Enrp => self.on_enrp(assoc, bytes, now),
        }
    }

    fn handle_datagram(
        &mut self,
        from: SocketAddr,
        protocol: Protocol,
        bytes: &[u8],
        now: Instant,
    ) {
        self.notice_oversleep(now);
        // Other registrars' ASAP announces are of no use to a registrar.
        if protocol == Protocol::Enrp {
            self.stats.enrp_received(bytes.first().copied());
            self.on_enrp_datagram(from, bytes, now);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.notice_oversleep(now);
        while let Some(key) = self.handlespace.keepalive_due(now) {
            if self.awaiting_ack.contains_key(&key) {
                self.remove(&key, RemovalReason::KeepAliveTimeout);
            } else {
                self.send_keepalive(&key, now);
            }
        }
        while let Some(key) = self.handlespace.expired(now) {
            self.remove(&key, RemovalReason::Expired);
        }
        if self.next_announce.is_some_and(|at| at <= now) {
            self.announce(now);
        }
        self.enrp_timeouts(now);
        self.serve_held_too_long(now);
    }

    fn poll_output(&mut self) -> Output<RegistrarEvent> {
        self.out.pop_front().unwrap_or_else(|| {
            let deadline = self.next_deadline();
            self.expected_wakeup = deadline;
            Output::Timeout(deadline)
        })
    }
}
