//! What one host may hold in a registrar's handlespace, with TLS off (issue: 100
//! connections registering 1 000 pools each filled `max_pools` for everyone). Each
//! test drives one registrar engine by hand with associations from chosen hosts.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

mod by_hand;

use by_hand::Harness;
use rserpool_proto::handlespace::Limits;
use rserpool_proto::wire::{CauseCode, PoolHandle};

const ATTACKER: u8 = 66;
const NEIGHBOUR: u8 = 77;

fn small_shares() -> Harness {
    Harness::with(|config| {
        config.max_pool_elements_per_host = 6;
        config.max_pools_per_host = 4;
        config.limits = Limits {
            max_pools: 10,
            ..Limits::default()
        };
    })
}

fn pools(harness: &Harness) -> usize {
    harness.engine.handlespace().pool_count()
}

#[test]
fn many_associations_from_one_host_cannot_fill_the_pool_table() {
    let mut harness = small_shares();
    // Three associations from one host, each trying to create pools: the host's
    // share of pools ends at 4 whatever association asks.
    let mut accepted = 0;
    for assoc in 1..=3u64 {
        harness.asap_association(assoc, ATTACKER, 5000 + assoc as u16);
        for n in 0..3u32 {
            let pool = format!("flood-{assoc}-{n}");
            match harness.register(assoc, ATTACKER, &pool, 100 * assoc as u32 + n) {
                Ok(()) => accepted += 1,
                Err(cause) => assert_eq!(cause, CauseCode::LACK_OF_RESOURCES),
            }
        }
    }
    assert_eq!(accepted, 4);
    assert_eq!(pools(&harness), 4);
    // Another host still creates its pool.
    harness.asap_association(10, NEIGHBOUR, 6000);
    assert_eq!(harness.register(10, NEIGHBOUR, "legitimate", 1), Ok(()));
    assert!(
        harness
            .engine
            .handlespace()
            .pool(&PoolHandle::new(b"legitimate").unwrap())
            .is_some()
    );
}

#[test]
fn a_host_is_held_to_its_pe_count_across_associations_and_gets_it_back() {
    let mut harness = small_shares();
    harness.asap_association(1, ATTACKER, 5001);
    harness.asap_association(2, ATTACKER, 5002);
    for pe in 1..=4 {
        assert_eq!(harness.register(1, ATTACKER, "shared", pe), Ok(()));
    }
    for pe in 5..=6 {
        assert_eq!(harness.register(2, ATTACKER, "shared", pe), Ok(()));
    }
    assert_eq!(
        harness.register(2, ATTACKER, "shared", 7),
        Err(CauseCode::LACK_OF_RESOURCES)
    );
    // Re-registering a PE it holds is never refused (keep-alive refreshes).
    assert_eq!(harness.register(2, ATTACKER, "shared", 5), Ok(()));
    // The first association goes down: its four PEs leave and the share is free.
    harness.down(1);
    for pe in 7..=10 {
        assert_eq!(harness.register(2, ATTACKER, "shared", pe), Ok(()));
    }
    assert_eq!(
        harness.register(2, ATTACKER, "shared", 11),
        Err(CauseCode::LACK_OF_RESOURCES)
    );
}
