//! Pool member selection policies (RFC 5356 §3, and rsplib's), exercised through the
//! handlespace's selection as the registrar and the pool user use it.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code; a real clock for test deadlines and measurements"
)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use rserpool_proto::handlespace::Handlespace;
use rserpool_proto::wire::{
    Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport, TransportProtocol,
    TransportUse,
};
use rserpool_proto::{PoolElementKey, SeededRng};

const FULL: u32 = u32::MAX;

fn pool() -> PoolHandle {
    PoolHandle::new(b"TestPool").unwrap()
}

fn element(id: u32, policy: Policy) -> PoolElement {
    PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(1),
        registration_life_ms: 60_000,
        user_transport: Transport {
            protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
            port: 8000,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))],
        },
        policy,
        asap_transport: None,
    }
}

/// A handlespace with one pool whose PEs 1, 2, ... have the given policies.
fn pool_of(policies: &[Policy]) -> Handlespace {
    let mut hs = Handlespace::default();
    let now = Instant::now();
    for (i, policy) in policies.iter().enumerate() {
        hs.upsert(pool(), element(i as u32 + 1, policy.clone()), None, now)
            .unwrap();
    }
    hs
}

/// The PE ids of one selection of `count`.
fn select(hs: &mut Handlespace, count: usize, rng: &mut SeededRng) -> Vec<u32> {
    hs.select(&pool(), count, None, rng)
        .unwrap()
        .iter()
        .map(|e| e.element.id.0)
        .collect()
}

/// How often each PE comes first in `rounds` single selections.
fn tally(hs: &mut Handlespace, rounds: usize, seed: u64) -> BTreeMap<u32, usize> {
    let mut rng = SeededRng::new(seed);
    let mut counts = BTreeMap::new();
    for _ in 0..rounds {
        *counts.entry(select(hs, 1, &mut rng)[0]).or_default() += 1;
    }
    counts
}

/// A load in exact units of 0.1 % of `u32::MAX` (rounded once), so that sums of loads
/// and degradations compare exactly.
fn load(percent: f64) -> u32 {
    (percent * 10.0) as u32 * (FULL / 1_000)
}

/// RFC 5356, Round Robin and §4: only the first returned PE is rotated per request.
#[test]
fn round_robin_rotates_the_first_entry() {
    let mut hs = pool_of(&[Policy::RoundRobin, Policy::RoundRobin, Policy::RoundRobin]);
    let mut rng = SeededRng::new(1);
    assert_eq!(select(&mut hs, 3, &mut rng), [1, 2, 3]);
    assert_eq!(select(&mut hs, 3, &mut rng), [2, 3, 1]);
    assert_eq!(select(&mut hs, 3, &mut rng), [3, 1, 2]);
    assert_eq!(select(&mut hs, 3, &mut rng), [1, 2, 3]);
    // Asking for more PEs than exist returns all of them.
    assert_eq!(select(&mut hs, 10, &mut rng).len(), 3);
}

/// RFC 5356, Weighted Round Robin: within each round a PE is chosen as often as its weight, so
/// 10 000 selections give exactly the weight ratios.
#[test]
fn weighted_round_robin_gives_exact_weight_ratios() {
    let weights = [1, 2, 3, 4];
    let mut hs = pool_of(&weights.map(|weight| Policy::WeightedRoundRobin { weight }));
    let counts = tally(&mut hs, 10_000, 1);
    assert_eq!(
        counts,
        BTreeMap::from([(1, 1_000), (2, 2_000), (3, 3_000), (4, 4_000)])
    );
    // Interleaved, not in blocks: every window of 10 selections is one full round.
    let mut rng = SeededRng::new(1);
    let round: Vec<u32> = (0..10).map(|_| select(&mut hs, 1, &mut rng)[0]).collect();
    let mut per_pe = BTreeMap::new();
    for id in &round {
        *per_pe.entry(*id).or_insert(0) += 1;
    }
    assert_eq!(
        per_pe,
        BTreeMap::from([(1, 1), (2, 2), (3, 3), (4, 4)]),
        "{round:?}"
    );
}

/// A PE joining a WRR pool late starts in the pool's current round instead of taking
/// every selection of the rounds it missed.
#[test]
fn weighted_round_robin_newcomer_joins_the_current_round() {
    let mut hs = pool_of(&[
        Policy::WeightedRoundRobin { weight: 1 },
        Policy::WeightedRoundRobin { weight: 1 },
    ]);
    tally(&mut hs, 1_000, 1);
    hs.upsert(
        pool(),
        element(3, Policy::WeightedRoundRobin { weight: 1 }),
        None,
        Instant::now(),
    )
    .unwrap();
    let counts = tally(&mut hs, 300, 2);
    assert_eq!(counts, BTreeMap::from([(1, 100), (2, 100), (3, 100)]));
}

/// RFC 5356, Random: equally likely, N drawn without replacement.
#[test]
fn random_draws_without_replacement_uniformly() {
    let mut hs = pool_of(&[
        Policy::Random,
        Policy::Random,
        Policy::Random,
        Policy::Random,
    ]);
    let mut rng = SeededRng::new(7);
    for _ in 0..100 {
        let mut drawn = select(&mut hs, 4, &mut rng);
        drawn.sort_unstable();
        assert_eq!(drawn, [1, 2, 3, 4]);
    }
    // 40 000 single draws: each PE expects 10 000 (σ ≈ 87); allow 5σ.
    for (_, count) in tally(&mut hs, 40_000, 7) {
        assert!((9_565..=10_435).contains(&count), "{count}");
    }
}

/// RFC 5356, Weighted Random: probability proportional to weight. With seed 11 and 100 000
/// draws of weights 1:3:6, each share is within 0.75 percentage points (5σ) of
/// 10 % / 30 % / 60 %.
#[test]
fn weighted_random_follows_the_weights() {
    let mut hs = pool_of(&[1, 3, 6].map(|weight| Policy::WeightedRandom { weight }));
    let counts = tally(&mut hs, 100_000, 11);
    for (id, expected) in [(1, 0.10), (2, 0.30), (3, 0.60)] {
        let observed = counts[&id] as f64 / 100_000.0;
        assert!(
            (observed - expected).abs() < 0.0075,
            "PE {id}: {observed} vs {expected}"
        );
    }
}

/// Weight 0 never wins while a positive weight exists; a pool of only zero weights
/// still answers (RFC 5356, Weighted Random leaves the choice to us; README documents it).
#[test]
fn zero_weights_are_last_resort() {
    let mut hs = pool_of(&[
        Policy::WeightedRandom { weight: 0 },
        Policy::WeightedRandom { weight: 5 },
    ]);
    assert_eq!(tally(&mut hs, 1_000, 3), BTreeMap::from([(2, 1_000)]));
    let mut rng = SeededRng::new(3);
    assert_eq!(select(&mut hs, 2, &mut rng), [2, 1]);
    let mut zeros = pool_of(&[
        Policy::WeightedRandom { weight: 0 },
        Policy::WeightedRandom { weight: 0 },
    ]);
    assert_eq!(select(&mut zeros, 2, &mut rng), [1, 2]);
    let mut wrr = pool_of(&[
        Policy::WeightedRoundRobin { weight: 0 },
        Policy::WeightedRoundRobin { weight: 2 },
    ]);
    assert_eq!(tally(&mut wrr, 100, 3), BTreeMap::from([(2, 100)]));
}

/// RFC 5356, Priority: highest priority first, ties round robin, lower priorities only
/// after all higher ones.
#[test]
fn priority_prefers_the_highest_and_rotates_ties() {
    let mut hs = pool_of(&[
        Policy::Priority { priority: 1 },
        Policy::Priority { priority: 5 },
        Policy::Priority { priority: 5 },
        Policy::Priority { priority: 3 },
    ]);
    let mut rng = SeededRng::new(1);
    assert_eq!(select(&mut hs, 4, &mut rng), [2, 3, 4, 1]);
    assert_eq!(select(&mut hs, 4, &mut rng), [3, 2, 4, 1]);
    assert_eq!(tally(&mut hs, 100, 1), BTreeMap::from([(2, 50), (3, 50)]));
}

/// RFC 5356, Least Used: lowest load first, ties round robin.
#[test]
fn least_used_prefers_the_lowest_load() {
    let mut hs = pool_of(&[
        Policy::LeastUsed { load: load(50.0) },
        Policy::LeastUsed { load: load(10.0) },
        Policy::LeastUsed { load: load(10.0) },
    ]);
    let mut rng = SeededRng::new(1);
    assert_eq!(select(&mut hs, 3, &mut rng), [2, 3, 1]);
    assert_eq!(select(&mut hs, 3, &mut rng), [3, 2, 1]);
    // A re-registration with a new load reorders the pool.
    hs.upsert(
        pool(),
        element(1, Policy::LeastUsed { load: 0 }),
        None,
        Instant::now(),
    )
    .unwrap();
    assert_eq!(select(&mut hs, 3, &mut rng)[0], 1);
}

/// RFC 5356, Least Used with Degradation: each selection adds the load degradation to the selected PE's key
/// (once, RFC intent); re-registration resets it.
#[test]
fn least_used_with_degradation_spreads_between_reregistrations() {
    let lud = |l, d| Policy::LeastUsedDegradation {
        load: load(l),
        degradation: load(d),
    };
    let mut hs = pool_of(&[lud(10.0, 5.0), lud(20.0, 5.0)]);
    let mut rng = SeededRng::new(1);
    // Keys: A 10, B 20. A is chosen at 10, 15 (now 20 = B, A more recently selected).
    let order: Vec<u32> = (0..5).map(|_| select(&mut hs, 1, &mut rng)[0]).collect();
    // A(10->15), A(15->20), B(20->25) [tie 20/20: B selected less recently], A(20->25), B...
    assert_eq!(order, [1, 1, 2, 1, 2]);
    // Re-registration resets A's degradation: A is back to 10 and wins.
    hs.upsert(pool(), element(1, lud(10.0, 5.0)), None, Instant::now())
        .unwrap();
    assert_eq!(select(&mut hs, 2, &mut rng), [1, 2]);
}

/// RFC 5356, Priority Least Used: PLU prefers the lowest load after one more request
/// (load + degradation); nothing accumulates.
#[test]
fn priority_least_used_uses_load_plus_degradation() {
    let mut hs = pool_of(&[
        Policy::PriorityLeastUsed {
            load: load(10.0),
            degradation: load(20.0),
        },
        Policy::PriorityLeastUsed {
            load: load(20.0),
            degradation: load(5.0),
        },
    ]);
    let mut rng = SeededRng::new(1);
    for _ in 0..5 {
        assert_eq!(
            select(&mut hs, 2, &mut rng),
            [2, 1],
            "keys 30 % vs 25 %, static"
        );
    }
}

/// RFC 5356, Randomized Least Used: probability proportional to the unused capacity; a 100 %-loaded PE
/// keeps a tiny share.
#[test]
fn randomized_least_used_follows_unused_capacity() {
    let mut hs = pool_of(&[
        Policy::RandomizedLeastUsed { load: load(25.0) },
        Policy::RandomizedLeastUsed { load: load(75.0) },
        Policy::RandomizedLeastUsed { load: FULL },
    ]);
    let counts = tally(&mut hs, 100_000, 5);
    let first = counts[&1] as f64 / 100_000.0;
    assert!((first - 0.75).abs() < 0.0075, "{counts:?}");
    assert!(counts.get(&3).copied().unwrap_or(0) < 10, "{counts:?}");
}

/// docs/policies.md §5 (extensions): degradation variants accumulate per selection.
#[test]
fn extension_policies_degrade_and_penalise_distance() {
    let mut rng = SeededRng::new(1);
    // PLUD: key = load + degradation + accumulated; A 10+5, B 20+5: A twice then B.
    let plud = |l, d| Policy::PriorityLeastUsedDegradation {
        load: load(l),
        degradation: load(d),
    };
    let mut hs = pool_of(&[plud(10.0, 5.0), plud(20.0, 5.0)]);
    let order: Vec<u32> = (0..3).map(|_| select(&mut hs, 1, &mut rng)[0]).collect();
    assert_eq!(order, [1, 1, 2]);

    // RLUD: accumulated degradation moves probability away from a PE that keeps winning.
    let rlud = |l, d| Policy::RandomizedLeastUsedDegradation {
        load: load(l),
        degradation: load(d),
    };
    let mut hs = pool_of(&[rlud(0.0, 10.0), rlud(0.0, 0.0)]);
    let counts = tally(&mut hs, 200, 9);
    assert!(counts[&2] > counts[&1], "{counts:?}");

    // LU-DPF: a near PE with more load beats a far one with less (0.01 % per ms: the
    // far PE pays 20 %).
    let lu_dpf = |l, distance| Policy::LeastUsedDpf {
        load: load(l),
        load_dpf: load(0.1) / 10,
        distance,
    };
    let mut hs = pool_of(&[lu_dpf(10.0, 2_000), lu_dpf(20.0, 0)]);
    assert_eq!(select(&mut hs, 2, &mut rng), [2, 1]);

    // WRAND-DPF: distance cuts the weight.
    let wrand_dpf = |distance| Policy::WeightedRandomDpf {
        weight: 1_000,
        weight_dpf: FULL / 2_000,
        distance,
    };
    let mut hs = pool_of(&[wrand_dpf(0), wrand_dpf(1_000)]);
    let counts = tally(&mut hs, 30_000, 4);
    let near = counts[&1] as f64 / 30_000.0;
    assert!((near - 2.0 / 3.0).abs() < 0.015, "{counts:?}");
}

/// docs/policies.md §2: the registrar advances only the first `max_increment` returned PEs;
/// an explicit value overrides the policy default.
#[test]
fn max_increment_controls_how_many_selected_pes_count_as_used() {
    let mut hs = pool_of(&[Policy::RoundRobin, Policy::RoundRobin, Policy::RoundRobin]);
    let mut rng = SeededRng::new(1);
    let ids = |v: Vec<&rserpool_proto::handlespace::PoolElementEntry>| {
        v.iter().map(|e| e.element.id.0).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(hs.select(&pool(), 3, Some(3), &mut rng).unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        ids(hs.select(&pool(), 3, Some(0), &mut rng).unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        ids(hs.select(&pool(), 3, Some(2), &mut rng).unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        ids(hs.select(&pool(), 3, None, &mut rng).unwrap()),
        [3, 1, 2]
    );
    let key = PoolElementKey {
        pool_handle: pool(),
        pe_id: PoolElementId(1),
    };
    // Advanced by the selections with max_increment 3 and 2, not by 0.
    assert_eq!(hs.get(&key).unwrap().selections, 2);
}

/// The same seed gives the same selections (ARCHITECTURE.md §2).
#[test]
fn selections_are_reproducible_from_the_seed() {
    let run = |seed| {
        let mut hs = pool_of(&[1, 2, 3, 4, 5].map(|weight| Policy::WeightedRandom { weight }));
        let mut rng = SeededRng::new(seed);
        (0..50)
            .map(|_| select(&mut hs, 3, &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(99), run(99));
    assert_ne!(run(99), run(100));
}

/// An unknown pool yields no selection.
#[test]
fn unknown_pool_selects_nothing() {
    let mut hs = pool_of(&[Policy::RoundRobin]);
    let other = PoolHandle::new(b"Other").unwrap();
    assert!(hs.select(&other, 3, None, &mut SeededRng::new(1)).is_none());
}
