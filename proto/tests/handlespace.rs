//! The handlespace (RFC 5351 §2, RFC 5352 §3, RFC 5353 §3, RFC 5356 §3): pool
//! consistency, bounds, indexes, ownership and checksums.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code; a real clock for test deadlines and measurements"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rserpool_proto::handlespace::{Handlespace, Limits, Refusal, Upserted};
use rserpool_proto::wire::{
    CauseCode, Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport,
    TransportProtocol, TransportUse, handlespace_checksum,
};
use rserpool_proto::{AssocId, PoolElementKey, SeededRng};

fn handle(name: &str) -> PoolHandle {
    PoolHandle::new(name.as_bytes()).unwrap()
}

fn element(id: u32, owner: u32) -> PoolElement {
    PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(owner),
        registration_life_ms: 30_000,
        user_transport: Transport {
            protocol: TransportProtocol::Sctp(TransportUse::DataOnly),
            port: 7000,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 1, (id >> 8) as u8, id as u8))],
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

fn key(pool: &str, id: u32) -> PoolElementKey {
    PoolElementKey {
        pool_handle: handle(pool),
        pe_id: PoolElementId(id),
    }
}

/// docs/policies.md §4 / RFC 5352 §3.1: the first PE fixes policy type, transport
/// protocol and transport use; mismatches are refused with the RFC causes.
#[test]
fn the_first_pe_fixes_the_pool_and_mismatches_are_refused() {
    let mut hs = Handlespace::default();
    let now = Instant::now();
    hs.upsert(handle("P"), element(1, 7), None, now).unwrap();

    let mut other_policy = element(2, 7);
    other_policy.policy = Policy::WeightedRandom { weight: 3 };
    let refusal = hs.upsert(handle("P"), other_policy, None, now).unwrap_err();
    assert!(matches!(refusal, Refusal::InconsistentPolicy { .. }));
    let cause = refusal.cause();
    assert_eq!(cause.code, CauseCode::INCONSISTENT_POOLING_POLICY);
    assert_eq!(
        hex::encode(&cause.info),
        "0008000c0000000400000003",
        "the offending policy TLV"
    );

    let mut tcp = element(3, 7);
    tcp.user_transport.protocol = TransportProtocol::Tcp(TransportUse::DataOnly);
    assert_eq!(
        hs.upsert(handle("P"), tcp, None, now)
            .unwrap_err()
            .cause()
            .code,
        CauseCode::INCONSISTENT_TRANSPORT_TYPE
    );

    let mut control = element(4, 7);
    control.user_transport.protocol = TransportProtocol::Sctp(TransportUse::DataPlusControl);
    assert_eq!(
        hs.upsert(handle("P"), control, None, now)
            .unwrap_err()
            .cause()
            .code,
        CauseCode::INCONSISTENT_DATA_CONTROL
    );

    // Different values of the same policy type are normal.
    let mut lu = element(5, 7);
    lu.policy = Policy::LeastUsed { load: 5 };
    let mut hs_lu = Handlespace::default();
    hs_lu.upsert(handle("L"), lu.clone(), None, now).unwrap();
    lu.id = PoolElementId(6);
    lu.policy = Policy::LeastUsed { load: 900 };
    assert_eq!(
        hs_lu.upsert(handle("L"), lu, None, now),
        Ok(Upserted::Added)
    );

    // A policy type we cannot run is refused as an invalid value.
    let mut unknown = element(9, 7);
    unknown.policy = Policy::Other {
        policy_type: rserpool_proto::wire::PolicyType(0xb000_2004),
        values: vec![],
    };
    assert_eq!(
        hs.upsert(handle("Q"), unknown, None, now)
            .unwrap_err()
            .cause()
            .code,
        CauseCode::INVALID_VALUES
    );
    assert_eq!(hs.pool_element_count(), 1);
}

/// The pool's only member may redefine it on re-registration (the pool is emptied and
/// re-created, docs/policies.md §4 rule 5).
#[test]
fn the_only_member_may_redefine_its_pool() {
    let mut hs = Handlespace::default();
    let now = Instant::now();
    hs.upsert(handle("P"), element(1, 7), Some(AssocId(3)), now)
        .unwrap();
    let mut changed = element(1, 7);
    changed.policy = Policy::Priority { priority: 4 };
    assert!(matches!(
        hs.upsert(handle("P"), changed, None, now),
        Ok(Upserted::Updated { .. })
    ));
    let pool = hs.pool(&handle("P")).unwrap();
    assert_eq!(
        pool.policy_type(),
        rserpool_proto::wire::PolicyType::PRIORITY
    );
    assert_eq!(
        pool.get(PoolElementId(1)).unwrap().association,
        Some(AssocId(3))
    );
    assert_eq!(hs.association_members(AssocId(3)).count(), 1);
}

/// Bounds: exceeding a limit is a refusal with cause 0x0006, never growth.
#[test]
fn limits_are_enforced_with_lack_of_resources() {
    let limits = Limits {
        max_pools: 2,
        max_pool_elements_per_pool: 3,
        max_pool_elements: 4,
        max_addresses_per_pool_element: 2,
    };
    let mut hs = Handlespace::new(limits);
    let now = Instant::now();
    for id in 1..=3 {
        hs.upsert(handle("A"), element(id, 7), None, now).unwrap();
    }
    let full_pool = hs
        .upsert(handle("A"), element(4, 7), None, now)
        .unwrap_err();
    assert!(matches!(
        full_pool,
        Refusal::LimitReached {
            what: "pool elements per pool",
            limit: 3
        }
    ));
    assert_eq!(full_pool.cause().code, CauseCode::LACK_OF_RESOURCES);
    hs.upsert(handle("B"), element(5, 7), None, now).unwrap();
    assert!(matches!(
        hs.upsert(handle("B"), element(6, 7), None, now),
        Err(Refusal::LimitReached {
            what: "pool elements",
            ..
        })
    ));
    hs.remove(&key("B", 5)).unwrap();
    assert!(matches!(
        hs.upsert(handle("C"), element(7, 7), None, now),
        Ok(Upserted::Added)
    ));
    hs.remove(&key("A", 3)).unwrap();
    assert!(matches!(
        hs.upsert(handle("D"), element(8, 7), None, now),
        Err(Refusal::LimitReached { what: "pools", .. })
    ));
    let mut many = element(1, 7);
    many.user_transport.addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST); 3];
    assert!(matches!(
        hs.upsert(handle("A"), many, None, now),
        Err(Refusal::LimitReached {
            what: "addresses per pool element",
            ..
        })
    ));
    // Updating an existing PE of a full pool is still allowed.
    assert!(matches!(
        hs.upsert(handle("A"), element(1, 7), None, now),
        Ok(Upserted::Updated { .. })
    ));
    assert_eq!(hs.pool_element_count(), 3);
}

/// RFC 5352 §3.1: re-registration updates in place: new expiry, new values, selection
/// position kept; an owner change moves the checksum.
#[test]
fn reregistration_updates_in_place() {
    let mut hs = Handlespace::default();
    let t0 = Instant::now();
    for id in 1..=3 {
        hs.upsert(handle("P"), element(id, 7), None, t0).unwrap();
    }
    let mut rng = SeededRng::new(1);
    hs.select(&handle("P"), 1, None, &mut rng).unwrap(); // order now 2, 3, 1
    let t1 = t0 + Duration::from_secs(10);
    let mut moved = element(2, 8);
    moved.registration_life_ms = 5_000;
    assert_eq!(
        hs.upsert(handle("P"), moved, None, t1),
        Ok(Upserted::Updated {
            owner_changed: true
        })
    );
    let entry = hs.get(&key("P", 2)).unwrap();
    assert_eq!(entry.expires_at, t1 + Duration::from_secs(5));
    assert_eq!(entry.owner(), RegistrarId(8));
    let order: Vec<u32> = hs
        .select(&handle("P"), 3, Some(0), &mut rng)
        .unwrap()
        .iter()
        .map(|e| e.element.id.0)
        .collect();
    assert_eq!(order, [2, 3, 1], "position kept");
    assert_eq!(hs.owned_count(RegistrarId(7)), 2);
    assert_eq!(hs.owned_count(RegistrarId(8)), 1);
    assert_eq!(hs.next_expiry(), Some(t1 + Duration::from_secs(5)));
}

/// RFC 5352 §3.4 / docs/rsplib.md item 5: losing an association removes every PE
/// registered over it, at once.
#[test]
fn dropping_an_association_removes_its_pes() {
    let mut hs = Handlespace::default();
    let now = Instant::now();
    for id in 1..=5 {
        let assoc = if id % 2 == 0 { AssocId(2) } else { AssocId(1) };
        hs.upsert(
            handle(if id < 3 { "A" } else { "B" }),
            element(id, 7),
            Some(assoc),
            now,
        )
        .unwrap();
    }
    let removed = hs.remove_association(AssocId(1));
    let ids: Vec<u32> = removed.iter().map(|(k, _)| k.pe_id.0).collect();
    assert_eq!(ids, [1, 3, 5]);
    assert_eq!(hs.pool_element_count(), 2);
    assert_eq!(hs.association_members(AssocId(1)).count(), 0);
    assert!(hs.remove_association(AssocId(1)).is_empty());
    assert_eq!(hs.remove_association(AssocId(2)).len(), 2);
    assert_eq!(hs.pool_count(), 0, "empty pools disappear");
}

/// The expiry and keep-alive indexes return due PEs in time order.
#[test]
fn expiry_and_keepalive_indexes() {
    let mut hs = Handlespace::default();
    let t0 = Instant::now();
    for (id, life) in [(1, 3_000), (2, 1_000), (3, 2_000)] {
        let mut e = element(id, 7);
        e.registration_life_ms = life;
        hs.upsert(handle("P"), e, None, t0).unwrap();
    }
    assert_eq!(hs.next_expiry(), Some(t0 + Duration::from_secs(1)));
    assert_eq!(hs.expired(t0 + Duration::from_millis(999)), None);
    assert_eq!(hs.expired(t0 + Duration::from_secs(2)), Some(key("P", 2)));
    hs.remove(&key("P", 2));
    assert_eq!(hs.expired(t0 + Duration::from_secs(2)), Some(key("P", 3)));

    hs.set_keepalive(&key("P", 1), Some(t0 + Duration::from_secs(5)));
    hs.set_keepalive(&key("P", 3), Some(t0 + Duration::from_secs(4)));
    assert_eq!(hs.next_keepalive(), Some(t0 + Duration::from_secs(4)));
    assert_eq!(
        hs.keepalive_due(t0 + Duration::from_secs(4)),
        Some(key("P", 3))
    );
    hs.set_keepalive(&key("P", 3), None);
    assert_eq!(hs.keepalive_due(t0 + Duration::from_secs(4)), None);
    hs.remove(&key("P", 1));
    assert_eq!(
        hs.next_keepalive(),
        None,
        "removal clears the keep-alive index"
    );
}

/// RFC 5353 §3.2.3: paging walks (pool handle, PE id) order and continues after a key.
#[test]
fn paging_order_and_continuation() {
    let mut hs = Handlespace::default();
    let now = Instant::now();
    for (pool, id) in [("B", 5), ("A", 9), ("B", 1), ("A", 2), ("C", 3)] {
        hs.upsert(handle(pool), element(id, 7), None, now).unwrap();
    }
    let all: Vec<(String, u32)> = hs
        .iter_after(None)
        .map(|(h, e)| (h.to_string(), e.element.id.0))
        .collect();
    assert_eq!(
        all,
        [
            ("A".into(), 2),
            ("A".into(), 9),
            ("B".into(), 1),
            ("B".into(), 5),
            ("C".into(), 3)
        ]
    );
    let rest: Vec<u32> = hs
        .iter_after(Some(key("A", 9)))
        .map(|(_, e)| e.element.id.0)
        .collect();
    assert_eq!(rest, [1, 5, 3]);
    // A continuation key that was removed meanwhile still continues at the right place.
    hs.remove(&key("B", 1));
    let rest: Vec<u32> = hs
        .iter_after(Some(key("B", 1)))
        .map(|(_, e)| e.element.id.0)
        .collect();
    assert_eq!(rest, [5, 3]);
}

/// docs/wire.md §4: ownership checksums and takeover.
#[test]
fn checksums_follow_ownership_and_takeover() {
    let mut hs = Handlespace::default();
    let now = Instant::now();
    assert_eq!(hs.checksum(), 0xffff);
    let mut a = element(0x1a2b_3c4d, 0x1122_3344);
    hs.upsert(handle("EchoPool"), a.clone(), None, now).unwrap();
    a.id = PoolElementId(0x5a6b_7c8d);
    hs.upsert(handle("EchoPool"), a, None, now).unwrap();
    assert_eq!(
        hs.owner_checksum(RegistrarId(0x1122_3344)),
        0xf731,
        "docs/wire.md §4"
    );
    assert_eq!(hs.owner_checksum(RegistrarId(0x5566_7788)), 0xffff);
    let moved = hs.take_over(RegistrarId(0x1122_3344), RegistrarId(0x5566_7788));
    assert_eq!(moved.len(), 2);
    assert_eq!(hs.owner_checksum(RegistrarId(0x5566_7788)), 0xf731);
    assert_eq!(hs.owner_checksum(RegistrarId(0x1122_3344)), 0xffff);
    assert_eq!(hs.checksum(), 0xf731);
}

/// The incremental checksums equal checksums recomputed from scratch after a long run
/// of random registrations, updates, owner changes, removals, expiries and association
/// losses.
#[test]
fn incremental_checksums_match_a_recomputation_after_random_operations() {
    for seed in 0..20 {
        let mut rng = SeededRng::new(seed);
        let mut hs = Handlespace::default();
        let t0 = Instant::now();
        for step in 0..2_000u64 {
            let pool = ["A", "Bb", "Ccc", "Dddd"][rng.below(4) as usize];
            let id = 1 + rng.below(60) as u32;
            let owner = 1 + rng.below(4) as u32;
            let now = t0 + Duration::from_millis(step * 10);
            match rng.below(10) {
                0..=4 => {
                    let mut e = element(id, owner);
                    e.registration_life_ms = 1_000 + rng.below(20_000) as u32;
                    let _ = hs.upsert(handle(pool), e, Some(AssocId(rng.below(5))), now);
                }
                5 => {
                    hs.remove(&key(pool, id));
                }
                6 => {
                    hs.set_owner(&key(pool, id), RegistrarId(owner));
                }
                7 => {
                    hs.take_over(RegistrarId(owner), RegistrarId(1 + rng.below(4) as u32));
                }
                8 => {
                    hs.remove_association(AssocId(rng.below(5)));
                }
                _ => {
                    while let Some(k) = hs.expired(now) {
                        hs.remove(&k);
                    }
                }
            }
        }
        let (whole, per_owner) = hs.recomputed_checksums();
        assert_eq!(hs.checksum(), whole, "seed {seed}");
        for owner in 1..=4 {
            let expected = per_owner
                .get(&RegistrarId(owner))
                .copied()
                .unwrap_or(0xffff);
            assert_eq!(
                hs.owner_checksum(RegistrarId(owner)),
                expected,
                "seed {seed} owner {owner}"
            );
            let owned: Vec<PoolElementKey> = hs.owned_by(RegistrarId(owner)).collect();
            let pairs = owned.iter().map(|k| (&k.pool_handle, k.pe_id));
            assert_eq!(
                handlespace_checksum(pairs),
                expected,
                "seed {seed} owner {owner} members"
            );
        }
        let counted: usize = hs.pools().map(|(_, p)| p.len()).sum();
        assert_eq!(counted, hs.pool_element_count(), "seed {seed}");
    }
}
