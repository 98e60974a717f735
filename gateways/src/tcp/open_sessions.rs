//! A listener's open sessions per PE, for `least_sessions`: the PEs a resolution
//! returned are tried fewest-sessions first, ties in the pool policy's order.
//!
//! It counts this listener's sessions only. Other listeners, gateways and pool users
//! reach the choice through the PEs' own load reports (a load-based policy at the
//! registrar), so this only evens out what one listener adds between two reports.

use std::sync::Mutex;

use rserpool_proto::wire::{PoolElement, PoolElementId};

use crate::health::PeCounts;

/// Open sessions per PE (bounded by the listener's `max_connections`).
#[derive(Debug, Default)]
pub(super) struct OpenSessions(Mutex<PeCounts>);

impl OpenSessions {
    /// Orders `pes` by their open sessions, fewest first (ties keep their order).
    pub(super) fn fewest_first(&self, pes: &mut [PoolElement]) {
        if let Ok(counts) = self.0.lock() {
            counts.fewest_first(pes, |pe| pe.id);
        }
    }

    /// Counts a session on `pe` until the returned place is dropped.
    pub(super) fn open(&self, pe: PoolElementId) -> SessionPlace<'_> {
        if let Ok(mut counts) = self.0.lock() {
            counts.add(pe);
        }
        SessionPlace { sessions: self, pe }
    }

    #[cfg(test)]
    fn count(&self, pe: PoolElementId) -> usize {
        self.0.lock().map_or(0, |counts| counts.count(pe))
    }
}

/// One session counted on one PE.
#[derive(Debug)]
pub(super) struct SessionPlace<'a> {
    sessions: &'a OpenSessions,
    pe: PoolElementId,
}

impl Drop for SessionPlace<'_> {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.sessions.0.lock() {
            counts.remove(self.pe);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

    use super::*;
    use rserpool_proto::wire::{
        Policy, PoolElement, RegistrarId, Transport, TransportProtocol, TransportUse,
    };

    fn pe(id: u32) -> PoolElement {
        PoolElement {
            id: PoolElementId(id),
            home_registrar: RegistrarId::UNKNOWN,
            registration_life_ms: 0,
            user_transport: Transport {
                protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
                port: 7,
                addresses: vec!["127.0.0.1".parse().unwrap()],
            },
            policy: Policy::RoundRobin,
            asap_transport: None,
        }
    }

    fn ids(pes: &[PoolElement]) -> Vec<u32> {
        pes.iter().map(|pe| pe.id.0).collect()
    }

    #[test]
    fn fewest_sessions_first_and_ties_keep_their_order() {
        let sessions = OpenSessions::default();
        let first = sessions.open(PoolElementId(1));
        let second = sessions.open(PoolElementId(1));
        let third = sessions.open(PoolElementId(2));
        let mut pes = vec![pe(1), pe(2), pe(3), pe(4)];
        sessions.fewest_first(&mut pes);
        assert_eq!(ids(&pes), [3, 4, 2, 1]);
        drop((first, second, third));
        assert_eq!(sessions.count(PoolElementId(1)), 0);
        let mut pes = vec![pe(2), pe(1), pe(3)];
        sessions.fewest_first(&mut pes);
        assert_eq!(ids(&pes), [2, 1, 3], "no sessions: the policy's order");
    }
}
