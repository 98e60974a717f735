//! ASAP procedures (RFC 5352 §3) with real engines in the deterministic
//! simulator: registration, re-registration, deregistration, keep-alive supervision,
//! handle resolution, unreachability reports, server hunt and failover, with message
//! loss, registrar crashes and PE crashes.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code; a real clock for test deadlines and measurements"
)]

mod sim;

use std::time::{Duration, Instant};

use rserpool_proto::PoolElementKey;
use rserpool_proto::engine::{Engine, TimerProfile};
use rserpool_proto::hunt::HuntConfig;
use rserpool_proto::pool_element::{
    PoolElementConfig, PoolElementEngine, PoolElementEvent, PoolElementSpec,
};
use rserpool_proto::pool_user::{
    AnswerSource, PoolUserConfig, PoolUserEngine, PoolUserEvent, RequestId, ResolveError,
};
use rserpool_proto::registrar::{RegistrarConfig, RegistrarEngine, RegistrarEvent, RemovalReason};
use rserpool_proto::wire::{
    CauseCode, Policy, PoolElementId, PoolHandle, RegistrarId, Transport, TransportProtocol,
    TransportUse,
};
use sim::{NodeEvent, NodeId, Role, Sim};

fn pool() -> PoolHandle {
    PoolHandle::new(b"EchoPool").unwrap()
}

fn add_registrar(sim: &mut Sim, id: u32) -> NodeId {
    let config = RegistrarConfig {
        id: Some(RegistrarId(id)),
        announce_interval: None,
        ..RegistrarConfig::default()
    };
    let engine = RegistrarEngine::new(config, sim.seed ^ u64::from(id), sim.now);
    sim.add(Role::Registrar(engine))
}

fn hunt(registrars: &[NodeId]) -> HuntConfig {
    HuntConfig::new(
        registrars
            .iter()
            .map(|&r| Sim::registrar_endpoint(r))
            .collect(),
        Duration::from_secs(2),
    )
}

/// A PE node registering one PE in EchoPool at the given registrars.
fn add_pe(
    sim: &mut Sim,
    registrars: &[NodeId],
    policy: Policy,
    interval_secs: u64,
) -> (NodeId, PoolElementId) {
    let config = PoolElementConfig::new(TimerProfile::Rsplib, hunt(registrars));
    let node = sim.nodes.len();
    let engine = PoolElementEngine::new(config, sim.seed ^ (node as u64) << 8);
    let n = sim.add(Role::Pe(engine));
    let spec = PoolElementSpec {
        pool_handle: pool(),
        id: None,
        user_transport: Transport {
            protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
            port: 7000,
            addresses: vec![Sim::address_of(n)],
        },
        policy,
        reregistration_interval: Duration::from_secs(interval_secs),
        registration_life: None,
    };
    let id = sim.with(n, |role, now| match role {
        Role::Pe(pe) => pe.register(spec, now),
        _ => unreachable!(),
    });
    (n, id)
}

fn add_pu(sim: &mut Sim, registrars: &[NodeId], profile: TimerProfile) -> NodeId {
    let config = PoolUserConfig::new(profile, hunt(registrars));
    let engine = PoolUserEngine::new(config, sim.seed ^ 0x5555);
    sim.add(Role::Pu(engine))
}

fn resolve(sim: &mut Sim, pu: NodeId, items: Option<u32>) -> RequestId {
    sim.with(pu, |role, now| match role {
        Role::Pu(pu) => pu.resolve(pool(), items, now),
        _ => unreachable!(),
    })
}

/// The result of a resolve request, once it has come.
fn resolution(
    sim: &Sim,
    pu: NodeId,
    request: RequestId,
) -> Option<Result<Vec<PoolElementId>, ResolveError>> {
    sim.events(pu).iter().find_map(|(_, e)| match e {
        NodeEvent::Pu(PoolUserEvent::Resolved { request: r, result }) if *r == request => Some(
            result
                .clone()
                .map(|res| res.pool_elements.iter().map(|pe| pe.id).collect()),
        ),
        _ => None,
    })
}

fn registered_ids(sim: &Sim, registrar: NodeId) -> Vec<PoolElementId> {
    sim.registrar(registrar)
        .handlespace()
        .pool(&pool())
        .map(|p| p.elements().map(|e| e.element.id).collect())
        .unwrap_or_default()
}

fn key(pe: PoolElementId) -> PoolElementKey {
    PoolElementKey {
        pool_handle: pool(),
        pe_id: pe,
    }
}

/// RFC 5352 §3.1, §3.3: PEs register, the registrar becomes their home, and a
/// pool user resolves the pool in policy order.
#[test]
fn registration_and_handle_resolution() {
    let mut sim = Sim::new(1);
    let r = add_registrar(&mut sim, 0x11);
    let (pe_a, id_a) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    let (_pe_b, id_b) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    let pu = add_pu(&mut sim, &[r], TimerProfile::Rsplib);
    sim.run_for(Duration::from_millis(100));

    let mut ids = registered_ids(&sim, r);
    ids.sort();
    let mut expected = vec![id_a, id_b];
    expected.sort();
    assert_eq!(ids, expected, "seed {}", sim.seed);
    let entry = sim
        .registrar(r)
        .handlespace()
        .get(&key(id_a))
        .unwrap()
        .clone();
    assert_eq!(entry.owner(), RegistrarId(0x11));
    // The ASAP transport is derived from the association (RFC 5354, Pool Element).
    let asap = entry.element.asap_transport.unwrap();
    assert_eq!(
        (asap.addresses[0], asap.port),
        (Sim::address_of(pe_a), sim::PE_ASAP_PORT)
    );
    assert!(
        sim.events(pe_a)
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::Pe(PoolElementEvent::Registered { .. })))
    );

    let first = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(10));
    let second = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(10));
    let first = resolution(&sim, pu, first).unwrap().unwrap();
    let second = resolution(&sim, pu, second).unwrap().unwrap();
    assert_eq!(first.len(), 2);
    // Round robin: the second answer starts with the other PE (RFC 5356, Round Robin).
    assert_eq!(second, [first[1], first[0]]);
}

/// docs/policies.md §3: a pool user with a stale cache answers from it, applying the pool's
/// policy, and `resolve_from_cache` does so without queueing any output (the gateway
/// calls it on its own task, outside the driver); past the cache's life it is `None`
/// and the registrar is asked again.
#[test]
fn cache_hits_are_answered_without_outputs_until_the_cache_goes_stale() {
    let mut sim = Sim::new(7);
    let r = add_registrar(&mut sim, 0x11);
    add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    let mut config = PoolUserConfig::new(TimerProfile::Rsplib, hunt(&[r]));
    config.stale_cache = Duration::from_secs(1);
    let pu = sim.add(Role::Pu(PoolUserEngine::new(config, sim.seed)));
    sim.run_for(Duration::from_millis(100));
    let from_cache = |sim: &mut Sim| {
        sim.with(pu, |role, now| match role {
            Role::Pu(pu) => {
                let answer = pu.resolve_from_cache(pool(), None, now);
                assert!(
                    matches!(pu.poll_output(), rserpool_proto::engine::Output::Timeout(_)),
                    "a cache answer queues nothing"
                );
                answer.map(|hit| {
                    hit.resolution
                        .pool_elements
                        .iter()
                        .map(|pe| pe.id)
                        .collect::<Vec<_>>()
                })
            }
            _ => unreachable!(),
        })
    };
    assert_eq!(from_cache(&mut sim), None, "nothing cached yet");
    let request = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(10));
    let fetched = resolution(&sim, pu, request).unwrap().unwrap();
    assert_eq!(fetched.len(), 2);
    let first = from_cache(&mut sim).unwrap();
    let second = from_cache(&mut sim).unwrap();
    assert_eq!(
        second,
        [first[1], first[0]],
        "round robin turns on cache hits"
    );
    sim.run_for(Duration::from_millis(1500));
    assert_eq!(from_cache(&mut sim), None, "stale after stale_cache");
}

/// An answer cut at the count it was asked for (a route asking for one PE) does not
/// answer a later lookup that wants more (a DNS answer asks for all): that one misses
/// the cache and asks the registrar, whose whole answer then serves both.
#[test]
fn an_answer_cut_at_the_asked_count_does_not_serve_a_lookup_that_wants_more() {
    let mut sim = Sim::new(8);
    let r = add_registrar(&mut sim, 0x11);
    for _ in 0..3 {
        add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    }
    let pu = pu_with_cache(&mut sim, &[r], Duration::from_secs(1));
    sim.run_for(Duration::from_millis(100));
    let cached = |sim: &mut Sim, items: Option<u32>| {
        sim.with(pu, |role, now| match role {
            Role::Pu(pu) => pu
                .resolve_from_cache(pool(), items, now)
                .map(|hit| hit.resolution.pool_elements.len()),
            _ => unreachable!(),
        })
    };
    let one = resolve(&mut sim, pu, Some(1));
    sim.run_for(Duration::from_millis(10));
    assert_eq!(resolution(&sim, pu, one).unwrap().unwrap().len(), 1);
    assert_eq!(
        cached(&mut sim, Some(1)),
        Some(1),
        "as much as was asked: a hit"
    );
    assert_eq!(
        cached(&mut sim, None),
        None,
        "more than the cut answer: a miss"
    );
    let all = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(10));
    assert_eq!(resolution(&sim, pu, all).unwrap().unwrap().len(), 3);
    assert_eq!(cached(&mut sim, None), Some(3));
    assert_eq!(cached(&mut sim, Some(1)), Some(1));
}

/// Handle resolutions the registrar answered so far.
fn resolutions_answered(sim: &Sim, registrar: NodeId) -> usize {
    sim.events(registrar)
        .iter()
        .filter(|(_, e)| matches!(e, NodeEvent::Registrar(RegistrarEvent::Resolved { .. })))
        .count()
}

fn pu_with_cache(sim: &mut Sim, registrars: &[NodeId], stale_cache: Duration) -> NodeId {
    let mut config = PoolUserConfig::new(TimerProfile::Rsplib, hunt(registrars));
    config.stale_cache = stale_cache;
    sim.add(Role::Pu(PoolUserEngine::new(config, sim.seed)))
}

/// RFC 5352 §3.3 with a cache: requests for a pool that is being resolved wait for
/// that resolution instead of each sending its own (a gateway resolves per client
/// request), and each is answered from the cache it fills, the pool's policy applied
/// per request (docs/policies.md §3). Without a cache every request still asks.
#[test]
fn with_a_cache_concurrent_resolutions_of_a_pool_share_one_request() {
    for (stale_cache, expected_requests) in [(Duration::from_secs(1), 1), (Duration::ZERO, 5)] {
        let mut sim = Sim::new(11);
        let r = add_registrar(&mut sim, 0x11);
        add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
        add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
        let pu = pu_with_cache(&mut sim, &[r], stale_cache);
        sim.run_for(Duration::from_millis(100));
        let before = resolutions_answered(&sim, r);
        let requests: Vec<RequestId> = (0..5).map(|_| resolve(&mut sim, pu, Some(2))).collect();
        sim.run_for(Duration::from_millis(50));
        assert_eq!(
            resolutions_answered(&sim, r) - before,
            expected_requests,
            "stale_cache {stale_cache:?}"
        );
        let answers: Vec<Vec<PoolElementId>> = requests
            .iter()
            .map(|request| resolution(&sim, pu, *request).unwrap().unwrap())
            .collect();
        assert!(
            answers.iter().all(|answer| answer.len() == 2),
            "{answers:?}"
        );
        if !stale_cache.is_zero() {
            // Round robin turned for the waiting requests: they do not all get the
            // same first PE.
            assert!(
                answers.iter().any(|answer| answer[0] != answers[0][0]),
                "{answers:?}"
            );
        }
    }
}

/// A cache in use is renewed before it runs out: hits in the last quarter of an
/// answer's life ask once for a refresh, whose answer fills the cache and is reported
/// to nobody, so hits never miss while the registrar answers; a PE the registrar no
/// longer has is still not used past the stale-cache value, and a pool the registrar
/// no longer knows leaves the cache when the refresh says so (RFC 5352 §3.3).
#[test]
fn a_cache_in_use_is_refreshed_before_it_runs_out() {
    let mut sim = Sim::new(12);
    let r = add_registrar(&mut sim, 0x11);
    let (pe_a, id_a) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    let (pe_b, id_b) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    let stale_cache = Duration::from_secs(1);
    let pu = pu_with_cache(&mut sim, &[r], stale_cache);
    sim.run_for(Duration::from_millis(100));
    let first = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(20));
    assert!(resolution(&sim, pu, first).unwrap().is_ok());
    let before = resolutions_answered(&sim, r);
    // What a gateway does per client request: a cache hit on its own task; when the
    // hit says so, a refresh through the engine's driver.
    let hit = |sim: &mut Sim| {
        sim.with(pu, |role, now| match role {
            Role::Pu(pu) => pu.resolve_from_cache(pool(), None, now).map(|hit| {
                if hit.refresh {
                    pu.refresh(pool(), None, now);
                }
                let ids: Vec<PoolElementId> = hit
                    .resolution
                    .pool_elements
                    .iter()
                    .map(|pe| pe.id)
                    .collect();
                (ids, hit.refresh)
            }),
            _ => unreachable!(),
        })
    };
    let mut refreshes = 0;
    for _ in 0..100 {
        let (ids, refresh) = hit(&mut sim).expect("a cache in use never runs out");
        assert_eq!(ids.len(), 2);
        refreshes += usize::from(refresh);
        sim.run_for(Duration::from_millis(50));
    }
    // 5 s of hits with a 1 s cache renewed at 0.75 s: about 6 refreshes, one request
    // each, and no Resolved event for them.
    assert!((5..=7).contains(&refreshes), "{refreshes} refreshes");
    assert_eq!(resolutions_answered(&sim, r) - before, refreshes);
    let reported = sim
        .events(pu)
        .iter()
        .filter(|(_, e)| matches!(e, NodeEvent::Pu(PoolUserEvent::Resolved { .. })))
        .count();
    assert_eq!(reported, 1, "refreshes are reported to nobody");

    // PE B deregisters: refreshes no longer bring it, and it is gone from hits within
    // the stale-cache value.
    sim.with(pe_b, |role, now| match role {
        Role::Pe(pe) => pe.deregister_all(now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_millis(20));
    let mut gone_after = None;
    for step in 1..=30u32 {
        let (ids, _) = hit(&mut sim).expect("PE A is still there");
        if !ids.contains(&id_b) {
            gone_after = Some(step * 50);
            break;
        }
        sim.run_for(Duration::from_millis(50));
    }
    let gone_after = gone_after.expect("PE B is used for ever");
    assert!(
        gone_after <= 1100,
        "PE B used {gone_after} ms after it left"
    );
    assert_eq!(hit(&mut sim).unwrap().0, [id_a]);

    // PE A deregisters too: the pool is unknown at the registrar, and the refresh that
    // hears so empties the cache at once (not at the end of its life).
    sim.with(pe_a, |role, now| match role {
        Role::Pe(pe) => pe.deregister_all(now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_millis(20));
    let mut empty_after = None;
    for step in 1..=30u32 {
        if hit(&mut sim).is_none() {
            empty_after = Some(step * 50);
            break;
        }
        sim.run_for(Duration::from_millis(50));
    }
    assert!(empty_after.is_some_and(|ms| ms <= 1100), "{empty_after:?}");
}

/// RFC 5352 §3.3 / draft-dreibholz-rserpool-asap-hropt: the Handle Resolution option's item count;
/// an unknown pool is Operation Error 0x0009.
#[test]
fn resolution_honours_the_item_count_and_reports_unknown_pools() {
    let mut sim = Sim::new(2);
    let r = add_registrar(&mut sim, 0x11);
    for _ in 0..5 {
        add_pe(&mut sim, &[r], Policy::Random, 30);
    }
    let pu = add_pu(&mut sim, &[r], TimerProfile::Rsplib);
    sim.run_for(Duration::from_millis(100));
    let default = resolve(&mut sim, pu, None);
    let two = resolve(&mut sim, pu, Some(2));
    let all = resolve(&mut sim, pu, Some(u32::MAX));
    sim.run_for(Duration::from_millis(10));
    assert_eq!(
        resolution(&sim, pu, default).unwrap().unwrap().len(),
        3,
        "registrar default"
    );
    assert_eq!(resolution(&sim, pu, two).unwrap().unwrap().len(), 2);
    assert_eq!(resolution(&sim, pu, all).unwrap().unwrap().len(), 5);

    let unknown = sim.with(pu, |role, now| match role {
        Role::Pu(pu) => pu.resolve(PoolHandle::new(b"NoSuchPool").unwrap(), None, now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_millis(10));
    assert_eq!(
        resolution(&sim, pu, unknown).unwrap(),
        Err(ResolveError::UnknownPool)
    );
}

/// RFC 5352 §3.1: a PE re-registers every T4 and so outlives its registration life;
/// a policy change re-registers at once.
#[test]
fn reregistration_keeps_the_pe_and_carries_new_loads() {
    let mut sim = Sim::new(3);
    let r = add_registrar(&mut sim, 0x11);
    let (pe, id) = add_pe(&mut sim, &[r], Policy::LeastUsed { load: 100 }, 2);
    sim.run_for(Duration::from_secs(20)); // registration life is 6 s
    assert_eq!(registered_ids(&sim, r), [id]);
    let registrations = sim
        .events(r)
        .iter()
        .filter(|(_, e)| matches!(e, NodeEvent::Registrar(RegistrarEvent::Registered { .. })))
        .count();
    assert!(
        registrations >= 9,
        "re-registered every 2 s: {registrations}"
    );

    sim.with(pe, |role, now| match role {
        Role::Pe(p) => p.update_policy(id, Policy::LeastUsed { load: 9_999 }, now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_millis(10));
    let entry = sim.registrar(r).handlespace().get(&key(id)).unwrap();
    assert_eq!(entry.element.policy, Policy::LeastUsed { load: 9_999 });
}

/// RFC 5352 §2.2.4, §3.2: deregistration removes the PE; deregistering an unknown PE
/// is answered with success.
#[test]
fn deregistration() {
    let mut sim = Sim::new(4);
    let r = add_registrar(&mut sim, 0x11);
    let (pe, id) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    sim.run_for(Duration::from_millis(50));
    sim.with(pe, |role, now| match role {
        Role::Pe(p) => p.deregister(id, now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_millis(50));
    assert!(registered_ids(&sim, r).is_empty());
    assert!(sim.events(pe).iter().any(|(_, e)| matches!(
        e,
        NodeEvent::Pe(PoolElementEvent::Deregistered {
            confirmed: true,
            ..
        })
    )));
    assert!(sim.events(r).iter().any(|(_, e)| matches!(
        e,
        NodeEvent::Registrar(RegistrarEvent::Removed {
            reason: RemovalReason::Deregistered,
            ..
        })
    )));
}

/// RFC 5352 §3.4 / docs/rsplib.md item 5: a crashed PE's association goes down and
/// its PEs leave at once.
#[test]
fn pe_crash_removes_it_at_once() {
    let mut sim = Sim::new(5);
    let r = add_registrar(&mut sim, 0x11);
    let (pe_a, _) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    let (_, id_b) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    sim.run_for(Duration::from_millis(50));
    sim.crash(pe_a);
    sim.run_for(Duration::from_millis(10));
    assert_eq!(registered_ids(&sim, r), [id_b]);
}

/// RFC 5352 §3.4: a PE that stops answering (frozen, association still up) is removed
/// after the keep-alive interval plus the keep-alive timeout.
#[test]
fn keepalive_supervision_removes_a_silent_pe() {
    let mut sim = Sim::new(6);
    let r = add_registrar(&mut sim, 0x11);
    let (pe, id) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    sim.run_for(Duration::from_secs(12));
    assert_eq!(
        registered_ids(&sim, r),
        [id],
        "answers keep-alives while alive"
    );
    sim.freeze(pe);
    let frozen_at = sim.elapsed();
    sim.run_for(Duration::from_secs(11));
    assert!(registered_ids(&sim, r).is_empty());
    let (removed_at, _) = sim
        .events(r)
        .iter()
        .find(|(_, e)| {
            matches!(
                e,
                NodeEvent::Registrar(RegistrarEvent::Removed {
                    reason: RemovalReason::KeepAliveTimeout,
                    ..
                })
            )
        })
        .unwrap();
    assert!(
        *removed_at - frozen_at <= Duration::from_secs(10),
        "{removed_at:?} {frozen_at:?}"
    );
}

/// RFC 5352 §3.5, security.md T13: three reports from distinct pool users make the
/// registrar probe the PE; a live PE stays, a dead one goes. Repeated reports from one
/// pool user count once.
#[test]
fn unreachability_reports_trigger_a_probe() {
    let mut sim = Sim::new(7);
    let r = add_registrar(&mut sim, 0x11);
    let (live, live_id) = add_pe(&mut sim, &[r], Policy::RoundRobin, 300);
    let (silent, silent_id) = add_pe(&mut sim, &[r], Policy::RoundRobin, 300);
    let pus: Vec<NodeId> = (0..3)
        .map(|_| add_pu(&mut sim, &[r], TimerProfile::Rsplib))
        .collect();
    sim.run_for(Duration::from_millis(100));
    for &pu in &pus {
        resolve(&mut sim, pu, None); // brings the association up
    }
    sim.run_for(Duration::from_millis(100));
    // One pool user reporting many times is not enough.
    for _ in 0..5 {
        sim.with(pus[0], |role, _| match role {
            Role::Pu(pu) => pu.report_unreachable(pool(), silent_id),
            _ => unreachable!(),
        });
    }
    sim.freeze(silent);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.registrar(r).unreachable_reporters(&key(silent_id)), 1);
    for &pu in &pus[1..] {
        for id in [live_id, silent_id] {
            sim.with(pu, |role, _| match role {
                Role::Pu(pu) => pu.report_unreachable(pool(), id),
                _ => unreachable!(),
            });
        }
    }
    sim.with(pus[0], |role, _| match role {
        Role::Pu(pu) => pu.report_unreachable(pool(), live_id),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_secs(6));
    assert_eq!(registered_ids(&sim, r), [live_id], "seed {}", sim.seed);
    assert_eq!(sim.registrar(r).unreachable_reporters(&key(live_id)), 0);
    let _ = live;
}

/// RFC 5352 §3.6-3.7: when the home registrar dies, the PE hunts another and
/// re-registers with the same ID; a pool user fails over too.
#[test]
fn registrar_crash_fails_over_to_another_registrar() {
    let mut sim = Sim::new(8);
    let r1 = add_registrar(&mut sim, 0x11);
    let r2 = add_registrar(&mut sim, 0x22);
    let (pe, id) = add_pe(&mut sim, &[r1], Policy::RoundRobin, 30);
    sim.run_for(Duration::from_millis(50));
    assert_eq!(registered_ids(&sim, r1), [id]);
    // The PE only knows r1 until now; give it r2 too by building it with both.
    let (pe2, id2) = add_pe(&mut sim, &[r1, r2], Policy::RoundRobin, 30);
    let pu = add_pu(&mut sim, &[r1, r2], TimerProfile::Rsplib);
    sim.run_for(Duration::from_millis(50));
    let home = if registered_ids(&sim, r1).contains(&id2) {
        r1
    } else {
        r2
    };
    let other = if home == r1 { r2 } else { r1 };
    sim.crash(home);
    sim.run_for(Duration::from_secs(3));
    assert!(
        registered_ids(&sim, other).contains(&id2),
        "seed {}",
        sim.seed
    );
    assert!(
        sim.events(pe2)
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::Pe(PoolElementEvent::RegistrarLost)))
    );
    let request = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_secs(3));
    let answer = resolution(&sim, pu, request).unwrap().unwrap();
    assert!(answer.contains(&id2));
    let _ = pe;
}

/// A frozen registrar (SIGSTOP: its associations stay up, nothing is answered) held a
/// pool user's requests for T1 and its retransmissions (45 s with the RFC's timers)
/// before another registrar was tried. Now a registrar silent for `registrar_silence`
/// (2 s) while a request waits is given up at once, passed over by the next hunt, and
/// the request is answered by another registrar.
#[test]
fn a_frozen_registrar_costs_a_pool_user_a_short_stall() {
    // The frozen registrar's kernel still accepts associations: which registrar a new
    // hunt reaches first depends on the seed, so several are tried.
    for seed in 12..20 {
        frozen_registrar(seed);
    }
}

fn frozen_registrar(seed: u64) {
    let mut sim = Sim::new(seed);
    let r1 = add_registrar(&mut sim, 0x11);
    let r2 = add_registrar(&mut sim, 0x22);
    let (_, id1) = add_pe(&mut sim, &[r1], Policy::RoundRobin, 30);
    let (_, id2) = add_pe(&mut sim, &[r2], Policy::RoundRobin, 30);
    let pu = add_pu(&mut sim, &[r1, r2], TimerProfile::Rfc);
    let first = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(100));
    assert!(resolution(&sim, pu, first).unwrap().is_ok());
    let (frozen, other_pe) = if resolutions_answered(&sim, r1) == 1 {
        (r1, id2)
    } else {
        (r2, id1)
    };
    sim.freeze(frozen);
    let request = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(2_500));
    assert_eq!(
        resolution(&sim, pu, request),
        Some(Ok(vec![other_pe])),
        "answered by the other registrar within 2.5 s (seed {})",
        sim.seed
    );
    assert!(
        sim.events(pu)
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::Pu(PoolUserEvent::RegistrarSilent)))
    );
    // Later requests go to the other registrar at once.
    let later = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        resolution(&sim, pu, later),
        Some(Ok(vec![other_pe])),
        "seed {seed}"
    );
}

/// A pool user caching for 1 s that may serve a pool's last answer `max_stale` more,
/// after 500 ms without a registrar's answer.
fn pu_serving_stale(sim: &mut Sim, registrars: &[NodeId], max_stale: Duration) -> NodeId {
    let mut config = PoolUserConfig::new(TimerProfile::Rfc, hunt(registrars));
    config.stale_cache = Duration::from_secs(1);
    config.max_stale = max_stale;
    config.stale_answer_after = Duration::from_millis(500);
    sim.add(Role::Pu(PoolUserEngine::new(config, sim.seed)))
}

/// A request's PEs and where they came from, or why it failed.
type Answer = Result<(Vec<PoolElementId>, AnswerSource), ResolveError>;

/// When a request was answered, and how.
fn answered(sim: &Sim, pu: NodeId, request: RequestId) -> Option<(Duration, Answer)> {
    sim.events(pu).iter().find_map(|(at, e)| match e {
        NodeEvent::Pu(PoolUserEvent::Resolved { request: r, result }) if *r == request => Some((
            *at,
            result.clone().map(|res| {
                (
                    res.pool_elements.iter().map(|pe| pe.id).collect(),
                    res.source,
                )
            }),
        )),
        _ => None,
    })
}

/// The only registrar freezes after the pool user's cache was filled: once the cache
/// runs out, requests are answered from the pool's last answer 500 ms after they are
/// asked (not after `registrar_silence` and a hunt), a PE reported unreachable is left
/// out of it, and after `max_stale` nothing stale is served any more.
#[test]
fn a_frozen_registrar_is_covered_by_the_last_answer_for_max_stale() {
    let mut sim = Sim::new(21);
    let r = add_registrar(&mut sim, 0x11);
    let (_, id1) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    let (_, id2) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    sim.run_for(Duration::from_secs(1));
    let pu = pu_serving_stale(&mut sim, &[r], Duration::from_secs(30));
    let first = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(100));
    let (_, fresh) = answered(&sim, pu, first).unwrap();
    assert_eq!(fresh.unwrap().0.len(), 2);
    sim.freeze(r);
    // The cache runs out 1 s after the answer; ask just after.
    sim.run_for(Duration::from_millis(1_000));
    let asked = sim.elapsed();
    let late = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(450));
    assert!(
        answered(&sim, pu, late).is_none(),
        "waits for the registrar first"
    );
    sim.run_for(Duration::from_millis(100));
    let (at, result) = answered(&sim, pu, late).expect("answered stale");
    let (pes, source) = result.unwrap();
    assert!(source == AnswerSource::Stale && pes.len() == 2, "{pes:?}");
    assert!(at - asked <= Duration::from_millis(600), "{:?}", at - asked);
    assert!(sim.events(pu).iter().any(|(_, e)| matches!(
        e,
        NodeEvent::Pu(PoolUserEvent::AnsweredStale { requests: 1, .. })
    )));
    // A PE the user could not reach is not served stale.
    sim.with(pu, |role, _| match role {
        Role::Pu(pu) => pu.report_unreachable(pool(), id1),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_secs(3));
    let after_report = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(600));
    let (_, result) = answered(&sim, pu, after_report).expect("answered stale");
    assert_eq!(result.unwrap().0, vec![id2]);
    // Past the stale-cache value plus max_stale, requests fail as without it.
    sim.run_for(Duration::from_secs(40));
    let too_old = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_secs(60));
    assert_eq!(
        answered(&sim, pu, too_old).map(|(_, result)| result),
        Some(Err(ResolveError::NoRegistrar))
    );
}

/// The only registrar crashes after the pool user's cache was filled; a request asked
/// 2 s later is answered with the PE listed in the last answer, and with what it got.
fn after_the_registrar_crashed(max_stale: Duration) -> (PoolElementId, Answer) {
    let mut sim = Sim::new(22);
    let r = add_registrar(&mut sim, 0x11);
    let (_, id) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    sim.run_for(Duration::from_secs(1));
    let pu = pu_serving_stale(&mut sim, &[r], max_stale);
    let first = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_millis(100));
    assert!(answered(&sim, pu, first).unwrap().1.is_ok());
    sim.crash(r);
    sim.run_for(Duration::from_secs(2));
    let request = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_secs(10));
    (id, answered(&sim, pu, request).expect("answered").1)
}

/// Serving stale also answers requests that would fail for want of a registrar (one
/// hunt round failed); without it (max_stale 0) they fail.
#[test]
fn with_no_registrar_left_the_last_answer_is_served_instead_of_failing() {
    let (id, answer) = after_the_registrar_crashed(Duration::from_secs(30));
    assert_eq!(answer, Ok((vec![id], AnswerSource::Stale)));
    let (_, answer) = after_the_registrar_crashed(Duration::ZERO);
    assert_eq!(answer, Err(ResolveError::NoRegistrar));
}

/// RFC 5352 §3.1, §3.3, with message loss: T2 and T1 retransmission
/// and re-hunting still get the PE registered and the pool resolved.
#[test]
fn message_loss_is_survived_by_retransmission() {
    for seed in 10..20 {
        let mut sim = Sim::new(seed);
        sim.loss = 0.3;
        let r = add_registrar(&mut sim, 0x11);
        let (_, id) = add_pe(&mut sim, &[r], Policy::RoundRobin, 5);
        let pu = add_pu(&mut sim, &[r], TimerProfile::Rfc);
        sim.run_for(Duration::from_secs(60));
        assert_eq!(registered_ids(&sim, r), [id], "seed {seed}");
        let mut answered = false;
        for _ in 0..5 {
            let request = resolve(&mut sim, pu, None);
            sim.run_for(Duration::from_secs(60));
            if let Some(Ok(ids)) = resolution(&sim, pu, request) {
                assert_eq!(ids, [id]);
                answered = true;
                break;
            }
        }
        assert!(
            answered,
            "seed {seed}: no resolution in 5 tries despite retransmission"
        );
    }
}

/// RFC 5352 §3.1: a PE whose policy conflicts with the pool is
/// refused with cause 0x0005 and told so.
#[test]
fn inconsistent_policy_is_refused() {
    let mut sim = Sim::new(9);
    let r = add_registrar(&mut sim, 0x11);
    add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    sim.run_for(Duration::from_millis(50));
    let (pe, _) = add_pe(&mut sim, &[r], Policy::LeastUsed { load: 0 }, 30);
    sim.run_for(Duration::from_millis(50));
    assert!(sim.events(pe).iter().any(|(_, e)| matches!(
        e,
        NodeEvent::Pe(PoolElementEvent::RegistrationRefused {
            cause: Some(CauseCode::INCONSISTENT_POOLING_POLICY),
            retrying: false,
            ..
        })
    )));
    assert_eq!(registered_ids(&sim, r).len(), 1);
}

/// security.md T3: a PE that advertises an address its association does not have is
/// refused (the address check of RFC 5352 §3.1).
#[test]
fn foreign_user_addresses_are_refused() {
    let mut sim = Sim::new(10);
    let r = add_registrar(&mut sim, 0x11);
    let config = PoolElementConfig::new(TimerProfile::Rsplib, hunt(&[r]));
    let n = sim.add(Role::Pe(PoolElementEngine::new(config, 1)));
    let spec = PoolElementSpec {
        pool_handle: pool(),
        id: None,
        user_transport: Transport {
            protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
            port: 7000,
            addresses: vec!["192.0.2.99".parse().unwrap()],
        },
        policy: Policy::RoundRobin,
        reregistration_interval: Duration::from_secs(30),
        registration_life: None,
    };
    sim.with(n, |role, now| match role {
        Role::Pe(pe) => pe.register(spec, now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_millis(50));
    assert!(registered_ids(&sim, r).is_empty());
    assert!(sim.events(n).iter().any(|(_, e)| matches!(
        e,
        NodeEvent::Pe(PoolElementEvent::RegistrationRefused {
            cause: Some(CauseCode::INVALID_VALUES),
            ..
        })
    )));
}

/// A refusal that may pass (here the pool is full: lack of resources) is retried with
/// a growing backoff, not at a fixed short interval, and the PE registers once the
/// cause has passed.
#[test]
fn refused_registrations_back_off() {
    let mut sim = Sim::new(12);
    let config = RegistrarConfig {
        id: Some(RegistrarId(0x11)),
        announce_interval: None,
        limits: rserpool_proto::handlespace::Limits {
            max_pool_elements_per_pool: 1,
            ..Default::default()
        },
        ..RegistrarConfig::default()
    };
    let r = sim.add(Role::Registrar(RegistrarEngine::new(config, 1, sim.now)));
    let (first, first_id) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    sim.run_for(Duration::from_millis(50));
    let (second, _) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    sim.run_for(Duration::from_secs(64));
    let refusals: Vec<Duration> = sim
        .events(second)
        .iter()
        .filter_map(|(at, e)| match e {
            NodeEvent::Pe(PoolElementEvent::RegistrationRefused {
                cause: Some(CauseCode::LACK_OF_RESOURCES),
                retrying: true,
                ..
            }) => Some(*at),
            _ => None,
        })
        .collect();
    // 1 s doubling with up to 25 % jitter: 6 or 7 refusals in 64 s (a fixed 1 s
    // retry would make 64, the old fixed 5 s 13).
    assert!(
        (6..=7).contains(&refusals.len()),
        "refusals at {refusals:?}"
    );
    let gaps: Vec<Duration> = refusals.windows(2).map(|w| w[1] - w[0]).collect();
    for pair in gaps.windows(2) {
        assert!(pair[1] >= pair[0] * 3 / 2, "gaps {gaps:?} do not grow");
    }
    // Room appears: the PE gets in within its current backoff (at most 60 s).
    sim.with(first, |role, now| match role {
        Role::Pe(pe) => pe.deregister(first_id, now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_secs(61));
    assert_eq!(registered_ids(&sim, r).len(), 1);
    assert!(
        sim.events(second)
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::Pe(PoolElementEvent::Registered { .. })))
    );
}

/// RFC 5352 §3.6: a PE without static registrars finds one by its announces.
#[test]
fn announces_lead_to_a_registrar() {
    let mut sim = Sim::new(11);
    let config = RegistrarConfig {
        id: Some(RegistrarId(0x33)),
        asap_transports: vec![
            rserpool_proto::engine::TransportKind::Tcp
                .transport_parameter(vec![Sim::address_of(0)], sim::ASAP_PORT),
        ],
        ..RegistrarConfig::default()
    };
    let r = sim.add(Role::Registrar(RegistrarEngine::new(config, 1, sim.now)));
    let (_, id) = add_pe(&mut sim, &[], Policy::RoundRobin, 30);
    sim.run_for(Duration::from_secs(3));
    assert_eq!(registered_ids(&sim, r), [id]);
}

/// A pool user with no reachable registrar fails its request after one hunt round
/// instead of hanging (RFC 5352 §3.6).
#[test]
fn no_registrar_fails_the_request() {
    let mut sim = Sim::new(12);
    let r = add_registrar(&mut sim, 0x11);
    sim.crash(r);
    let pu = add_pu(&mut sim, &[r], TimerProfile::Rsplib);
    let request = resolve(&mut sim, pu, None);
    sim.run_for(Duration::from_secs(10));
    assert_eq!(
        resolution(&sim, pu, request),
        Some(Err(ResolveError::NoRegistrar))
    );
}

/// RFC 5352 §3.4: a keep-alive with the H flag on a new association makes its sender
/// the PE's home; the acknowledgement goes back on that association. Driven by hand,
/// as a registrar that took the PE over would.
#[test]
fn home_flag_moves_the_pe_to_a_new_registrar() {
    use rserpool_proto::engine::{AssocId, Output, PeerInfo, TransportKind};
    use rserpool_proto::wire::{AsapMessage, EndpointKeepAlive, Protocol};
    let t0 = Instant::now();
    let registrar = Sim::registrar_endpoint(0);
    let mut pe = PoolElementEngine::new(
        PoolElementConfig::new(
            TimerProfile::Rsplib,
            HuntConfig::new(vec![registrar.clone()], Duration::from_secs(2)),
        ),
        7,
    );
    let spec = PoolElementSpec {
        pool_handle: pool(),
        id: Some(PoolElementId(0x1a2b_3c4d)),
        user_transport: Transport {
            protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
            port: 7000,
            addresses: vec![Sim::address_of(1)],
        },
        policy: Policy::RoundRobin,
        reregistration_interval: Duration::from_secs(30),
        registration_life: None,
    };
    let id = pe.register(spec, t0);
    let mut outputs = Vec::new();
    let drain = |pe: &mut PoolElementEngine, outputs: &mut Vec<Output<PoolElementEvent>>| loop {
        match pe.poll_output() {
            Output::Timeout(_) => break,
            other => outputs.push(other),
        }
    };
    drain(&mut pe, &mut outputs);
    let Some(Output::Connect { assoc: home, .. }) = outputs.first().cloned() else {
        panic!("expected a connect: {outputs:?}")
    };
    let peer = |port| PeerInfo {
        transport: TransportKind::Tcp,
        addresses: vec![Sim::address_of(0)],
        port,
        protocol: Protocol::Asap,
        rtt: None,
        authentication: rserpool_proto::auth::Authentication::Unauthenticated,
    };
    pe.handle_association_up(home, peer(3863), t0);
    drain(&mut pe, &mut outputs);
    // A second registrar opens an association to the PE and claims it.
    let newcomer = AssocId(1);
    pe.handle_association_up(newcomer, peer(40_000), t0);
    let keep_alive = AsapMessage::EndpointKeepAlive(EndpointKeepAlive {
        home: true,
        server_id: RegistrarId(0x99),
        pool_handle: pool(),
        pe_id: Some(id),
    });
    outputs.clear();
    pe.handle_message(newcomer, Protocol::Asap, &keep_alive.encode().unwrap(), t0);
    drain(&mut pe, &mut outputs);
    assert!(
        outputs.contains(&Output::Close { assoc: home }),
        "{outputs:?}"
    );
    assert!(
        outputs.contains(&Output::Event(PoolElementEvent::HomeRegistrarChanged {
            registrar: RegistrarId(0x99)
        }))
    );
    let ack = outputs.iter().find_map(|o| match o {
        Output::Transmit { assoc, payload, .. } => {
            Some((*assoc, AsapMessage::decode(payload).unwrap().message))
        }
        _ => None,
    });
    assert!(
        matches!(ack, Some((a, AsapMessage::EndpointKeepAliveAck(r))) if a == newcomer && r.pe_id == id)
    );
    assert_eq!(pe.home_registrar(), Some(RegistrarId(0x99)));
}

/// The same seed gives the same run (ARCHITECTURE.md §2).
#[test]
fn runs_are_deterministic() {
    let run = |seed| {
        let mut sim = Sim::new(seed);
        sim.loss = 0.2;
        let r = add_registrar(&mut sim, 0x11);
        for _ in 0..4 {
            add_pe(&mut sim, &[r], Policy::WeightedRandom { weight: 3 }, 3);
        }
        let pu = add_pu(&mut sim, &[r], TimerProfile::Rfc);
        sim.run_for(Duration::from_secs(5));
        let requests: Vec<RequestId> = (0..10).map(|_| resolve(&mut sim, pu, None)).collect();
        sim.run_for(Duration::from_secs(60));
        let resolutions: Vec<_> = requests.iter().map(|q| resolution(&sim, pu, *q)).collect();
        // Every node's events with their times, not only the outcome.
        let events: Vec<String> = (0..sim.nodes.len())
            .map(|n| format!("{:?}", sim.events(n)))
            .collect();
        (resolutions, events)
    };
    let (first, again) = (run(21), run(21));
    assert!(
        first.1.iter().map(String::len).sum::<usize>() > 1000,
        "events were recorded"
    );
    assert_eq!(first, again);
    assert_ne!(first.1, run(22).1, "another seed gives another run");
}

/// A PE started before its registrar: once the registrar is up, the next hunt round
/// finds it within about a second, however long the PE has waited (the retry delay
/// doubles from 250 ms but stops at 1 s: at 5 s, a gateway or PE that had waited long
/// noticed a new registrar up to 5 s late).
#[test]
fn a_registrar_that_comes_up_late_is_found_within_a_second() {
    let mut sim = Sim::new(31);
    let r = add_registrar(&mut sim, 0x21);
    sim.crash(r);
    let (_pe, id) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
    sim.run_for(Duration::from_secs(14));
    let config = RegistrarConfig {
        id: Some(RegistrarId(0x21)),
        announce_interval: None,
        ..RegistrarConfig::default()
    };
    let engine = RegistrarEngine::new(config, 0x21, sim.now);
    sim.restart(r, Role::Registrar(engine));
    let up = sim.now;
    while registered_ids(&sim, r).is_empty() && sim.now - up < Duration::from_secs(10) {
        sim.run_for(Duration::from_millis(50));
    }
    assert_eq!(registered_ids(&sim, r), [id]);
    let took = sim.now - up;
    assert!(took <= Duration::from_millis(1300), "found after {took:?}");
}

/// A pool user without a cache: each resolution is the registrar's answer.
fn add_uncached_pu(sim: &mut Sim, registrars: &[NodeId]) -> NodeId {
    let mut config = PoolUserConfig::new(TimerProfile::Rsplib, hunt(registrars));
    config.stale_cache = Duration::ZERO;
    let engine = PoolUserEngine::new(config, sim.seed ^ 0x7777);
    sim.add(Role::Pu(engine))
}

fn load(fraction: f64) -> u32 {
    rserpool_proto::policy::spec::fraction_to_wire(fraction)
}

fn set_load(sim: &mut Sim, pe: NodeId, id: PoolElementId, fraction: f64) {
    sim.with(pe, |role, now| match role {
        Role::Pe(p) => p.set_load(id, load(fraction), now),
        _ => unreachable!(),
    });
}

/// Registrations of `id` the registrar has seen (first ones and refreshes).
fn registrations_of(sim: &Sim, r: NodeId, id: PoolElementId) -> usize {
    sim.events(r)
        .iter()
        .filter(|(_, e)| {
            matches!(e, NodeEvent::Registrar(RegistrarEvent::Registered { key, .. }) if key.pe_id == id)
        })
        .count()
}

/// The registrar's order for the pool, as a pool user gets it.
fn resolved_order(sim: &mut Sim, pu: NodeId) -> Vec<PoolElementId> {
    let request = resolve(sim, pu, Some(3));
    sim.run_for(Duration::from_millis(100));
    resolution(sim, pu, request).unwrap().unwrap()
}

/// RFC 5356, Least Used: PEs reporting loads 0.1, 0.5 and 0.9 are resolved in that
/// order, and a load a PE reports later reorders them within the rate limit of load
/// reports (1 s).
#[test]
fn least_used_pools_resolve_by_the_loads_pes_report() {
    let mut sim = Sim::new(41);
    let r = add_registrar(&mut sim, 0x11);
    let lu = |fraction| Policy::LeastUsed {
        load: load(fraction),
    };
    let (_, heavy) = add_pe(&mut sim, &[r], lu(0.9), 30);
    let (light_pe, light) = add_pe(&mut sim, &[r], lu(0.1), 30);
    let (_, middle) = add_pe(&mut sim, &[r], lu(0.5), 30);
    let pu = add_uncached_pu(&mut sim, &[r]);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(resolved_order(&mut sim, pu), [light, middle, heavy]);
    set_load(&mut sim, light_pe, light, 0.95);
    sim.run_for(Duration::from_millis(1100));
    assert_eq!(
        resolved_order(&mut sim, pu),
        [middle, heavy, light],
        "seed {}",
        sim.seed
    );
}

/// A PE whose load changes all the time re-registers at most once a second for it, a
/// change within 1 % waits for the next re-registration, and the last load reaches
/// the registrar within the rate limit.
#[test]
fn load_reports_are_rate_limited_and_thresholded() {
    let mut sim = Sim::new(42);
    let r = add_registrar(&mut sim, 0x11);
    let (pe, id) = add_pe(&mut sim, &[r], Policy::LeastUsed { load: load(0.5) }, 30);
    sim.run_for(Duration::from_secs(1));
    let before = registrations_of(&sim, r, id);
    set_load(&mut sim, pe, id, 0.505);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        registrations_of(&sim, r, id),
        before,
        "a change within 1 % does not re-register"
    );
    for step in 0..500 {
        set_load(&mut sim, pe, id, if step % 2 == 0 { 0.1 } else { 0.9 });
        sim.run_for(Duration::from_millis(10));
    }
    let during = registrations_of(&sim, r, id) - before;
    assert!(
        (4..=6).contains(&during),
        "5 s of changes every 10 ms: {during} registrations (seed {})",
        sim.seed
    );
    set_load(&mut sim, pe, id, 0.3);
    sim.run_for(Duration::from_millis(1100));
    let entry = sim.registrar(r).handlespace().get(&key(id)).unwrap();
    assert_eq!(entry.element.policy, Policy::LeastUsed { load: load(0.3) });
}

/// RFC 5356, Least Used with Degradation: a burst of resolutions spreads over PEs of
/// equal load instead of all going to one (each selection degrades the chosen PE).
#[test]
fn least_used_with_degradation_spreads_a_burst() {
    let mut sim = Sim::new(43);
    let r = add_registrar(&mut sim, 0x11);
    let lud = Policy::LeastUsedDegradation {
        load: load(0.2),
        degradation: load(0.01),
    };
    let ids: Vec<PoolElementId> = (0..3)
        .map(|_| add_pe(&mut sim, &[r], lud.clone(), 30).1)
        .collect();
    let pu = add_uncached_pu(&mut sim, &[r]);
    sim.run_for(Duration::from_secs(1));
    let mut firsts = std::collections::BTreeMap::<PoolElementId, usize>::new();
    for _ in 0..12 {
        let first = resolved_order(&mut sim, pu)[0];
        *firsts.entry(first).or_default() += 1;
    }
    for id in &ids {
        assert!(
            firsts.get(id).copied().unwrap_or(0) >= 3,
            "12 resolutions spread over 3 PEs: {firsts:?} (seed {})",
            sim.seed
        );
    }
}

/// A gateway's binary upgrade carries its pool user's cache: the new pool user answers
/// from the carried answer at once, and once it is no longer fresh and no registrar
/// answers (the only one crashed), serves it stale as the old one would have; a new
/// pool user without it fails. A record cut short or from another form is refused
/// without panicking.
#[test]
fn a_carried_cache_serves_the_next_process_fresh_then_stale() {
    for carried in [true, false] {
        let mut sim = Sim::new(23);
        let r = add_registrar(&mut sim, 0x11);
        let (_, id) = add_pe(&mut sim, &[r], Policy::RoundRobin, 30);
        sim.run_for(Duration::from_secs(1));
        let old = pu_serving_stale(&mut sim, &[r], Duration::from_secs(30));
        let first = resolve(&mut sim, old, None);
        sim.run_for(Duration::from_millis(100));
        assert!(answered(&sim, old, first).unwrap().1.is_ok());
        sim.crash(r);
        let record = sim.with(old, |role, now| match role {
            Role::Pu(pu) => pu.carry_cache(now),
            _ => unreachable!(),
        });
        let new = pu_serving_stale(&mut sim, &[r], Duration::from_secs(30));
        let fresh = sim.with(new, |role, now| match role {
            Role::Pu(pu) => {
                if carried {
                    assert_eq!(pu.adopt_cache(&record, now), Ok(1));
                }
                pu.resolve_from_cache(pool(), None, now)
                    .map(|hit| hit.resolution.pool_elements[0].id)
            }
            _ => unreachable!(),
        });
        assert_eq!(fresh, carried.then_some(id), "fresh from the carried cache");
        sim.run_for(Duration::from_secs(2));
        let request = resolve(&mut sim, new, None);
        sim.run_for(Duration::from_secs(10));
        let answer = answered(&sim, new, request).expect("answered").1;
        if carried {
            assert_eq!(answer, Ok((vec![id], AnswerSource::Stale)));
        } else {
            assert_eq!(answer, Err(ResolveError::NoRegistrar));
        }
        sim.with(new, |role, now| match role {
            Role::Pu(pu) => {
                assert_eq!(pu.adopt_cache(&record[..8], now), Ok(0), "no pool");
                for cut in (1..record.len()).filter(|cut| *cut != 8) {
                    assert!(pu.adopt_cache(&record[..cut], now).is_err(), "cut {cut}");
                }
                let mut other = record.clone();
                other[7] = 9;
                assert!(pu.adopt_cache(&other, now).is_err());
            }
            _ => unreachable!(),
        });
    }
}
