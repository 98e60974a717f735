//! The ENRP peer lifecycle under hostile peers (RFC 5353 §3.4-3.5; the hostile
//! networks issue): registrars named by others are candidates that must answer, expire
//! and are never passed on; a takeover waits only for peers that are up and is retried
//! after it stalls; a full peer table makes room for a live registrar; a known
//! registrar's ID cannot be used from another host.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod by_hand;

use std::time::Duration;

use by_hand::{Harness, pool_element, server, update};
use rserpool_proto::engine::AssocId;
use rserpool_proto::registrar::{PeerStanding, RegistrarEvent};
use rserpool_proto::wire::{EnrpBody, RegistrarId, ServerInformation, UpdateAction};

const A: RegistrarId = RegistrarId(0x20);
const B: RegistrarId = RegistrarId(0x30);
const C: RegistrarId = RegistrarId(0x40);

/// Registrars nobody runs, at 10.0.0.100 and up.
fn fakes(count: u32) -> Vec<ServerInformation> {
    (0..count)
        .map(|i| server(RegistrarId(0x900 + i), 100 + i as u8))
        .collect()
}

fn standing(h: &Harness, id: RegistrarId) -> Option<PeerStanding> {
    h.engine
        .peers()
        .into_iter()
        .find(|p| p.id == id)
        .map(|p| p.standing)
}

/// Lets `seconds` pass while A keeps sending presences (A stays up).
fn with_a_alive(h: &mut Harness, seconds: u64) {
    for _ in 0..seconds {
        h.advance(Duration::from_secs(1));
        h.presence(1, A, 2, false);
    }
}

/// An unsolicited LIST_RESPONSE naming fake registrars added peers that never expired
/// and were passed on to every other registrar by list exchange. Now a list is taken
/// only as the answer to this registrar's request, its entries are candidates that
/// are not listed to others, and they are forgotten when they never answer.
#[test]
fn named_registrars_are_candidates_that_expire_and_are_not_passed_on() {
    let mut h = Harness::new();
    h.peer(1, A, 2);
    assert!(
        h.sent_enrp()
            .iter()
            .any(|(assoc, body)| *assoc == AssocId(1) && *body == EnrpBody::ListRequest),
        "A was asked for its list"
    );
    h.outputs.clear();
    h.enrp(
        1,
        A,
        EnrpBody::ListResponse {
            reject: false,
            servers: fakes(5),
        },
    );
    let attempts = h.connects();
    assert_eq!(attempts.len(), 5, "each named registrar is tried");
    for fake in fakes(5) {
        assert_eq!(standing(&h, fake.server_id), Some(PeerStanding::Candidate));
    }
    // A second list nobody asked for is ignored.
    h.outputs.clear();
    let more: Vec<ServerInformation> = (5..10)
        .map(|i| server(RegistrarId(0x900 + i), 100 + i as u8))
        .collect();
    h.enrp(
        1,
        A,
        EnrpBody::ListResponse {
            reject: false,
            servers: more,
        },
    );
    assert!(h.connects().is_empty());
    assert_eq!(h.engine.peers().len(), 6);
    // Another registrar asking for the list hears of A only.
    h.peer(2, B, 3);
    h.outputs.clear();
    h.enrp(2, B, EnrpBody::ListRequest);
    let listed: Vec<RegistrarId> = h
        .sent_enrp()
        .into_iter()
        .filter_map(|(_, body)| match body {
            EnrpBody::ListResponse { servers, .. } => {
                Some(servers.into_iter().map(|s| s.server_id))
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(listed, vec![A]);
    // The first attempts fail, later ones hang; no answer within last-heard plus
    // no-response (10 s with rsplib's timers) and they are gone.
    for (assoc, _) in attempts {
        h.down(assoc.0);
    }
    h.outputs.clear();
    with_a_alive(&mut h, 11);
    let expired = h
        .events()
        .into_iter()
        .filter(|e| matches!(e, RegistrarEvent::CandidateExpired { .. }))
        .count();
    assert_eq!(expired, 5);
    assert!(fakes(5).iter().all(|f| standing(&h, f.server_id).is_none()));
    assert_eq!(standing(&h, A), Some(PeerStanding::Up));
}

/// When a real registrar died, the survivor waited for the acknowledgements of
/// registrars that were only named (never heard from): the dead registrar's PEs were
/// not taken over. Now only peers that are up are waited for.
#[test]
fn a_takeover_waits_only_for_live_peers() {
    let mut h = Harness::new();
    h.peer(1, A, 2);
    h.enrp(
        1,
        A,
        EnrpBody::ListResponse {
            reject: false,
            servers: fakes(5),
        },
    );
    let mut h = with_dead_owner(h);
    assert!(
        fakes(5)
            .iter()
            .all(|f| standing(&h, f.server_id) == Some(PeerStanding::Candidate)),
        "the named registrars are still in the table"
    );
    h.enrp(1, A, EnrpBody::InitTakeoverAck { target: B });
    assert!(h.events().contains(&RegistrarEvent::TakeoverCompleted {
        target: B,
        pool_elements: 1
    }));
}

/// An abandoned takeover was never retried. Now a takeover that expires leaves the
/// target probed again, and taken over when it stays silent.
#[test]
fn an_abandoned_takeover_is_retried() {
    let mut h = Harness::new();
    h.peer(1, A, 2);
    let mut h = with_dead_owner(h);
    // A never acknowledges: abandoned after 5 s, B probed again, and a second takeover
    // starts when it stays silent.
    with_a_alive(&mut h, 11);
    assert!(
        h.events()
            .contains(&RegistrarEvent::TakeoverAbandoned { target: B })
    );
    assert_eq!(takeovers_of_b(&h), 2, "{:?}", h.events());
    h.enrp(1, A, EnrpBody::InitTakeoverAck { target: B });
    assert!(h.events().contains(&RegistrarEvent::TakeoverCompleted {
        target: B,
        pool_elements: 1
    }));
}

fn takeovers_of_b(h: &Harness) -> usize {
    h.events()
        .iter()
        .filter(|e| matches!(e, RegistrarEvent::TakeoverStarted { target } if *target == B))
        .count()
}

/// B joins owning a PE, then its association breaks and it stays silent (A stays up):
/// B is probed at once and its takeover starts 5 s later, asking A only.
fn with_dead_owner(mut h: Harness) -> Harness {
    h.peer(2, B, 3);
    h.enrp(
        2,
        B,
        update(UpdateAction::ADD_PE, pool_element(0x77, B), false),
    );
    h.outputs.clear();
    h.down(2);
    with_a_alive(&mut h, 6);
    assert_eq!(takeovers_of_b(&h), 1);
    let init_takeover_to: Vec<AssocId> = h
        .sent_enrp()
        .into_iter()
        .filter(|(_, body)| *body == EnrpBody::InitTakeover { target: B })
        .map(|(assoc, _)| assoc)
        .collect();
    assert_eq!(init_takeover_to, vec![AssocId(1)], "only A is asked");
    assert_eq!(standing(&h, B), Some(PeerStanding::TakingOver));
    h
}

/// With 255 fake registrars in the table a new real registrar was refused ("peer limit
/// 256"). Now a registrar that speaks over an association takes the place of a
/// candidate that never answered.
#[test]
fn a_full_peer_table_makes_room_for_a_live_registrar() {
    let mut h = Harness::with(|config| {
        config.max_peers = 4;
        config.max_candidate_peers = 4;
    });
    h.peer(1, A, 2);
    h.enrp(
        1,
        A,
        EnrpBody::ListResponse {
            reject: false,
            servers: fakes(5),
        },
    );
    assert_eq!(h.engine.peers().len(), 4, "the table is full");
    h.outputs.clear();
    h.peer(2, C, 4);
    assert!(
        h.events()
            .iter()
            .any(|e| matches!(e, RegistrarEvent::PeerUp { id, .. } if *id == C))
    );
    assert_eq!(standing(&h, C), Some(PeerStanding::Up));
    assert_eq!(standing(&h, A), Some(PeerStanding::Up));
    assert_eq!(h.engine.peers().len(), 4);
}

/// With TLS off, a connection from any host could claim a known registrar's ID: delete
/// its PEs, or keep a dead registrar "alive" with presences so it is never taken over.
/// A registrar now speaks over the association it is bound to or another one from the
/// same host.
#[test]
fn a_stranger_cannot_speak_for_a_known_registrar() {
    let key = rserpool_proto::PoolElementKey {
        pool_handle: rserpool_proto::wire::PoolHandle::new(b"EchoPool").unwrap(),
        pe_id: rserpool_proto::wire::PoolElementId(0x77),
    };
    let mut h = Harness::new();
    h.peer(1, A, 2);
    h.enrp(
        1,
        A,
        update(UpdateAction::ADD_PE, pool_element(0x77, A), false),
    );
    assert!(h.engine.handlespace().get(&key).is_some());
    h.outputs.clear();
    h.association(9, 66);
    h.enrp(
        9,
        A,
        update(UpdateAction::DEL_PE, pool_element(0x77, A), false),
    );
    assert!(h.closed(9), "the stranger's association is closed");
    assert!(h.engine.handlespace().get(&key).is_some(), "the PE stays");
    assert!(
        h.events()
            .iter()
            .any(|e| matches!(e, RegistrarEvent::Denied { action: "enrp", .. }))
    );
    // A's own host may open a second association (both sides may connect).
    h.association(3, 2);
    h.enrp(
        3,
        A,
        update(UpdateAction::DEL_PE, pool_element(0x77, A), false),
    );
    assert!(!h.closed(3));
    assert!(h.engine.handlespace().get(&key).is_none());
}

/// One host claiming many registrar IDs over many associations (TLS off) could fill
/// the peer table with "live" entries; each host gets at most `max_peers_per_host`.
#[test]
fn one_host_cannot_fill_the_peer_table() {
    let mut h = Harness::with(|config| config.max_peers_per_host = 3);
    for n in 0..5 {
        h.peer(10 + n, RegistrarId(0x500 + n as u32), 66);
    }
    let from_66 = h
        .engine
        .peers()
        .iter()
        .filter(|p| (0x500..0x505).contains(&p.id.0))
        .count();
    assert_eq!(from_66, 3);
    h.peer(1, A, 2);
    assert_eq!(standing(&h, A), Some(PeerStanding::Up));
}
