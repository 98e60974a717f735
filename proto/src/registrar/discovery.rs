//! Finding peers (RFC 5353 §3.4): presences over associations make a registrar a live
//! peer; list responses and multicast presences only name candidates, which must
//! answer before they count (see `peers`).

use std::net::SocketAddr;
use std::time::Instant;

use super::engine::RegistrarEngine;
use super::events::RegistrarEvent;
use super::peers::{Link, ListExchange, Peer, Standing, evictable};
use super::sync::Phase;
use crate::engine::{AssocId, Endpoint, Output, TransportKind};
use crate::wire::{EnrpBody, EnrpMessage, RegistrarId, ServerInformation};

impl RegistrarEngine {
    /// ENRP_PRESENCE over the multicast channel (RFC 5353 §3.4): only a discovery hint
    /// (anyone can send a datagram with any source): an unknown registrar becomes a
    /// candidate, to be connected to; no audit, no reply, no change to known peers.
    pub(super) fn on_enrp_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        let Ok(decoded) = EnrpMessage::decode(bytes) else {
            return;
        };
        let message = decoded.message;
        if message.sender == self.id || message.sender == RegistrarId::UNKNOWN {
            return;
        }
        if let EnrpBody::Presence {
            server_information, ..
        } = message.body
        {
            let endpoint = self.peer_endpoint(None, Some(from), server_information.as_ref());
            self.add_candidate(message.sender, endpoint, now);
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

    /// How long a registrar named by another may stay a candidate without answering:
    /// as long as a silent peer is given before it counts as dead.
    fn candidate_expiry(&self, now: Instant) -> Instant {
        now + self.config.max_time_last_heard + self.config.max_time_no_response
    }

    /// Adds a registrar someone else named (or a multicast presence), if it is new,
    /// its endpoint usable, and there is room for candidates; and connects to it.
    fn add_candidate(&mut self, id: RegistrarId, endpoint: Option<Endpoint>, now: Instant) {
        if id == RegistrarId::UNKNOWN || id == self.id || self.peer_index(id).is_some() {
            return;
        }
        let Some(mut endpoint) = endpoint else {
            return;
        };
        endpoint.addresses.retain(|a| self.usable_from_peers(a));
        let candidates = self
            .peers
            .iter()
            .filter(|p| matches!(p.standing, Standing::Candidate { expires: Some(_) }))
            .count();
        if endpoint.addresses.is_empty()
            || candidates >= self.config.max_candidate_peers
            || self.peers.len() >= self.config.max_peers
        {
            return;
        }
        let expires = self.candidate_expiry(now);
        self.peers
            .push(Peer::candidate(id, Some(endpoint), expires));
        self.connect_peer(self.peers.len() - 1);
    }

    /// The entry a presence over `assoc` speaks for: the sender's own, the candidate or
    /// configured peer this association was opened to, a configured peer at the
    /// endpoint, or a new one (evicting a candidate or a dead entry when the table is
    /// full), with whether it is new. None: the table is full of live registrars.
    fn peer_for_presence(
        &mut self,
        assoc: AssocId,
        sender: RegistrarId,
        endpoint: Option<&Endpoint>,
        now: Instant,
    ) -> Option<(usize, bool)> {
        if let Some(index) = self.peer_index(sender) {
            return Some((index, false));
        }
        let opened_to = self.peers.iter().position(|p| {
            p.link == Link::Bound(assoc) && matches!(p.standing, Standing::Candidate { .. })
        });
        let configured_at = || {
            self.peers.iter().position(|p| {
                p.is_static
                    && p.id == RegistrarId::UNKNOWN
                    && endpoint.is_some_and(|e| {
                        p.endpoint.as_ref().is_some_and(|s| {
                            s.port == e.port && s.addresses.iter().any(|a| e.addresses.contains(a))
                        })
                    })
            })
        };
        if let Some(index) = opened_to.or_else(configured_at) {
            return Some((index, false));
        }
        let from_host = self.live_peers_on_host_of(assoc);
        if from_host >= self.config.max_peers_per_host {
            self.event(RegistrarEvent::Malformed {
                assoc,
                detail: format!(
                    "{from_host} registrars already speak from this host: ignoring registrar {sender}"
                ),
            });
            return None;
        }
        let peer = Peer::heard(
            sender,
            endpoint.cloned(),
            now + self.config.max_time_last_heard,
        );
        if self.peers.len() < self.config.max_peers {
            self.peers.push(peer);
            return Some((self.peers.len() - 1, true));
        }
        let owns = |id| self.handlespace.owned_count(id) > 0;
        match evictable(&self.peers, owns) {
            Some(index) => {
                if let Some(old) = self.peers.get(index).and_then(|p| p.link.bound()) {
                    self.out.push_back(Output::Close { assoc: old });
                }
                let gone = self.peers.get(index).map(|p| p.id);
                if let Some(slot) = self.peers.get_mut(index) {
                    *slot = peer;
                }
                if let Some(gone) = gone {
                    self.stop_waiting_for(gone);
                }
                Some((index, true))
            }
            None => {
                self.event(RegistrarEvent::Malformed {
                    assoc,
                    detail: format!(
                        "peer limit {} reached, every entry live: ignoring registrar {sender}",
                        self.config.max_peers
                    ),
                });
                None
            }
        }
    }

    pub(super) fn on_presence(
        &mut self,
        assoc: AssocId,
        sender: RegistrarId,
        reply_required: bool,
        checksum: Option<u16>,
        info: Option<ServerInformation>,
        now: Instant,
    ) {
        if sender == RegistrarId::UNKNOWN {
            return;
        }
        let endpoint = self.peer_endpoint(Some(assoc), None, info.as_ref());
        let Some((index, is_new)) = self.peer_for_presence(assoc, sender, endpoint.as_ref(), now)
        else {
            return;
        };
        let probe_at = now + self.config.max_time_last_heard;
        let Some(peer) = self.peers.get_mut(index) else {
            return;
        };
        if peer.id != sender && peer.id != RegistrarId::UNKNOWN {
            // A candidate named X answered as Y: it is Y (whoever named X was wrong).
            peer.list = ListExchange::NotAsked;
        }
        peer.id = sender;
        if endpoint.is_some() && (peer.endpoint.is_none() || !peer.is_static) {
            peer.endpoint = endpoint.clone();
        }
        if peer.link.bound().is_none() {
            peer.link = Link::Bound(assoc);
        }
        let previous = std::mem::replace(&mut peer.standing, Standing::Up { probe_at });
        // Alive: every takeover of it ends (RFC 5353 §3.4).
        self.acked_takeovers.remove(&sender);
        if previous.is_takeover() {
            self.event(RegistrarEvent::TakeoverCancelled { target: sender });
        }
        if is_new || matches!(previous, Standing::Candidate { .. }) {
            self.event(RegistrarEvent::PeerUp {
                id: sender,
                endpoint: endpoint.clone(),
            });
            self.send_to_peer(index, self.presence(true));
        }
        self.after_presence(index, sender, checksum, now);
        if reply_required {
            self.send_enrp(assoc, self.presence(false), sender);
        }
    }

    /// What a presence from a live peer starts: the mentor's download at start-up,
    /// the list exchange once, an audit when the checksums differ.
    fn after_presence(
        &mut self,
        index: usize,
        sender: RegistrarId,
        checksum: Option<u16>,
        now: Instant,
    ) {
        if let Phase::Startup {
            mentor: mentor @ None,
            ..
        } = &mut self.phase
        {
            *mentor = Some(sender);
            self.maybe_start_mentor_sync(index, now);
        }
        let Some(peer) = self.peers.get_mut(index) else {
            return;
        };
        let auditing = peer.audit.is_some();
        if peer.link.bound().is_some() && peer.list == ListExchange::NotAsked {
            peer.list = ListExchange::Asked;
            self.send_to_peer(index, EnrpBody::ListRequest);
        }
        // Audit (RFC 5353 §3.6): presences over an association only (never multicast).
        if !auditing
            && self.mentor_sync != Some(sender)
            && self.phase == Phase::Normal
            && checksum.is_some_and(|c| c != self.handlespace.owner_checksum(sender))
        {
            self.start_audit(index, now);
        }
    }

    /// The registrars this one knows to be live (not candidates: a registrar nobody
    /// has heard from is not passed on).
    pub(super) fn on_list_request(&mut self, assoc: AssocId, sender: RegistrarId) {
        let servers: Vec<ServerInformation> = self
            .peers
            .iter()
            .filter(|p| p.id != RegistrarId::UNKNOWN && p.id != sender && p.standing.is_live())
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

    /// The registrars a live peer knows become candidates; a list nobody asked for
    /// is ignored.
    pub(super) fn on_list_response(
        &mut self,
        sender: RegistrarId,
        servers: Vec<ServerInformation>,
        now: Instant,
    ) {
        let Some(peer) = self
            .heard_peer(sender)
            .and_then(|index| self.peers.get_mut(index))
            .filter(|p| p.list == ListExchange::Asked)
        else {
            return;
        };
        peer.list = ListExchange::Answered;
        for server in servers {
            let endpoint = Endpoint::from_parameter(&server.transport);
            self.add_candidate(server.server_id, endpoint, now);
        }
    }

    /// Peers bound to an association from the host `assoc` comes from: one host
    /// (with TLS off, anyone there can claim any ID) cannot fill the peer table.
    fn live_peers_on_host_of(&self, assoc: AssocId) -> usize {
        let Some(host) = self.associations.get(&assoc).map(|a| &a.peer.addresses) else {
            return 0;
        };
        self.peers
            .iter()
            .filter_map(|p| p.link.bound())
            .filter_map(|bound| self.associations.get(&bound))
            .filter(|a| {
                a.peer
                    .addresses
                    .iter()
                    .any(|address| host.contains(address))
            })
            .count()
    }
}
