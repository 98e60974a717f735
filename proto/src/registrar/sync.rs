//! Keeping one handlespace among registrars (RFC 5353 §3.2-3.3, §3.6): the start-up
//! download from a mentor, handle updates, and audits (a W = 1 download of a peer's own
//! PEs when its checksum differs from ours).
//!
//! An ADD_PE is accepted only from the registrar it names as the PE's home, a DEL_PE
//! only from the PE's current home (security.md T5; rsplib accepts DEL_PE from anyone),
//! and only from a peer that has answered over an association (not a candidate).

use std::collections::BTreeSet;
use std::time::Instant;

use super::engine::RegistrarEngine;
use super::events::{RegistrarEvent, RemovalReason};
use super::peers::{Audit, ListExchange};
use crate::handlespace::PoolElementKey;
use crate::wire::{
    CauseCode, EnrpBody, PoolElement, PoolEntries, PoolHandle, RegistrarId, UpdateAction,
};

/// Start-up phase (RFC 5353 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for a mentor (until the deadline), or downloading its table.
    Startup {
        deadline: Instant,
        mentor: Option<RegistrarId>,
    },
    Normal,
}

impl RegistrarEngine {
    /// Starts the download of the mentor's table if the mentor is reachable.
    pub(super) fn maybe_start_mentor_sync(&mut self, index: usize, now: Instant) {
        let Some(peer) = self.peers.get(index) else {
            return;
        };
        let is_mentor =
            matches!(&self.phase, Phase::Startup { mentor: Some(m), .. } if *m == peer.id);
        if !is_mentor || self.mentor_sync.is_some() || peer.link.bound().is_none() {
            return;
        }
        self.mentor_sync = Some(peer.id);
        self.mentor_sync_deadline = Some(now + self.config.max_time_no_response);
        if let Some(peer) = self.peers.get_mut(index) {
            peer.list = ListExchange::Asked;
        }
        self.send_to_peer(index, EnrpBody::ListRequest);
        self.send_to_peer(
            index,
            EnrpBody::HandleTableRequest {
                own_children_only: false,
            },
        );
    }

    pub(super) fn start_audit(&mut self, index: usize, now: Instant) {
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

    /// Runs before anything this registrar was told while it was not running: if it
    /// runs more than MAX-TIME-LAST-HEARD after the deadline it asked for, its peers
    /// heard nothing from it for that long and may have taken its PEs over, while what
    /// waits in its sockets (re-registrations of PEs that have moved since, the closes
    /// of their associations) predates that. Served as it comes, it would take the PEs
    /// back and then delete them everywhere; so it goes through start-up again: ASAP
    /// waits until a peer's table is downloaded (RFC 5353 §3.2).
    pub(super) fn notice_oversleep(&mut self, now: Instant) {
        // Deadlines already past when it resumes stay past until handled: the last
        // input counts too, so one pause is noticed once.
        let last_input = self.last_input.replace(now);
        let Some(expected) = self.expected_wakeup else {
            return;
        };
        let reference = last_input.map_or(expected, |last| last.max(expected));
        let by = now.saturating_duration_since(reference);
        if by <= self.config.max_time_last_heard || self.peers.is_empty() {
            return;
        }
        self.event(RegistrarEvent::Overslept { by });
        self.phase = Phase::Startup {
            deadline: now + self.config.mentor_discovery_timeout,
            mentor: None,
        };
        self.mentor_sync = None;
        self.mentor_sync_deadline = None;
        self.next_announce = None;
        for index in 0..self.peers.len() {
            if let Some(peer) = self.peers.get_mut(index) {
                peer.list = ListExchange::NotAsked;
                peer.audit = None;
            }
            // Whoever answers first is the mentor.
            self.send_to_peer(index, self.presence(true));
        }
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
        self.serve_held_too_long(now);
    }

    pub(super) fn on_handle_table_response(
        &mut self,
        sender: RegistrarId,
        reject: bool,
        more: bool,
        pools: Vec<PoolEntries>,
        now: Instant,
    ) {
        let Some(index) = self.heard_peer(sender) else {
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
                // A PE that registered here while start-up waited (max_startup_hold)
                // is newer news than the mentor's copy of where it was before.
                let registered_here = self
                    .handlespace
                    .get(&key)
                    .is_some_and(|e| e.owner() == self.id);
                if mentor && registered_here {
                    continue;
                }
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

    pub(super) fn end_table_download(
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
                    self.detach(&key);
                }
            }
            Err(refusal) => self.event(RegistrarEvent::Refused {
                key,
                cause: refusal.cause().code,
                reason: format!("from a peer: {refusal}"),
            }),
        }
    }

    pub(super) fn on_handle_update(
        &mut self,
        sender: RegistrarId,
        takeover_suggested: bool,
        action: UpdateAction,
        pool_handle: PoolHandle,
        element: PoolElement,
        now: Instant,
    ) {
        if self.heard_peer(sender).is_none() {
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
}
