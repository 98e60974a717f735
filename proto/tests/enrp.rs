//! ENRP (RFC 5353 §3) with real registrar engines in the deterministic
//! simulator: start-up with a mentor, handle updates, audits, takeover of a crashed
//! peer (3 and 5 registrars, and 2), concurrent takeovers, partitions, message loss and
//! reordering, a dead registrar coming back with the same ID.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod by_hand;
mod sim;

use std::collections::BTreeSet;
use std::time::Duration;

use rserpool_proto::engine::{Endpoint, TimerProfile, TransportKind};
use rserpool_proto::hunt::HuntConfig;
use rserpool_proto::pool_element::PoolElementEvent;
use rserpool_proto::pool_element::{
    HomeChanges, PoolElementConfig, PoolElementEngine, PoolElementSpec,
};
use rserpool_proto::pool_user::{PoolUserConfig, PoolUserEngine, PoolUserEvent, RequestId};
use rserpool_proto::registrar::{RegistrarConfig, RegistrarEngine, RegistrarEvent};
use rserpool_proto::wire::{
    Policy, PoolElementId, PoolHandle, RegistrarId, Transport, TransportProtocol, TransportUse,
};
use sim::{NodeEvent, NodeId, Role, Sim};

fn pool() -> PoolHandle {
    PoolHandle::new(b"EchoPool").unwrap()
}

fn enrp_endpoint(n: NodeId) -> Endpoint {
    Endpoint::new(
        TransportKind::Tcp,
        std::net::SocketAddr::new(Sim::address_of(n), sim::ENRP_PORT),
    )
}

/// Registrar IDs: node n gets 0x100 + n, so lower nodes have lower IDs.
fn registrar_id(n: NodeId) -> RegistrarId {
    RegistrarId(0x100 + n as u32)
}

fn registrar_config(n: NodeId, peers: &[NodeId]) -> RegistrarConfig {
    RegistrarConfig {
        id: Some(registrar_id(n)),
        announce_interval: None,
        static_peers: peers
            .iter()
            .filter(|&&p| p != n)
            .map(|&p| enrp_endpoint(p))
            .collect(),
        enrp_transport: Some(
            TransportKind::Tcp.transport_parameter(vec![Sim::address_of(n)], sim::ENRP_PORT),
        ),
        ..RegistrarConfig::new(TimerProfile::Rsplib)
    }
}

/// `count` registrars in a full static mesh (nodes 0..count).
fn add_registrars(sim: &mut Sim, count: usize) -> Vec<NodeId> {
    let nodes: Vec<NodeId> = (sim.nodes.len()..sim.nodes.len() + count).collect();
    for &n in &nodes {
        let engine =
            RegistrarEngine::new(registrar_config(n, &nodes), sim.seed ^ n as u64, sim.now);
        assert_eq!(sim.add(Role::Registrar(engine)), n);
    }
    nodes
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

/// A PE that knows only `registrars`, but follows any registrar's takeover (as
/// rsplib's PEs do): the takeover tests need PEs that only a takeover can move.
fn add_pe(sim: &mut Sim, registrars: &[NodeId], interval_secs: u64) -> (NodeId, PoolElementId) {
    let config = PoolElementConfig {
        home_changes: HomeChanges::Any,
        ..PoolElementConfig::new(TimerProfile::Rsplib, hunt(registrars))
    };
    add_pe_with(sim, config, interval_secs)
}

/// A PE node with `config`, re-registering every `interval_secs`.
fn add_pe_with(
    sim: &mut Sim,
    config: PoolElementConfig,
    interval_secs: u64,
) -> (NodeId, PoolElementId) {
    let node = sim.nodes.len();
    let n = sim.add(Role::Pe(PoolElementEngine::new(
        config,
        sim.seed ^ (node as u64) << 8,
    )));
    let spec = PoolElementSpec {
        pool_handle: pool(),
        id: None,
        user_transport: Transport {
            protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
            port: 7000,
            addresses: vec![Sim::address_of(n)],
        },
        policy: Policy::RoundRobin,
        reregistration_interval: Duration::from_secs(interval_secs),
        registration_life: None,
    };
    let id = sim.with(n, |role, now| match role {
        Role::Pe(pe) => pe.register(spec, now),
        _ => unreachable!(),
    });
    (n, id)
}

fn ids_at(sim: &Sim, r: NodeId) -> BTreeSet<PoolElementId> {
    sim.registrar(r)
        .handlespace()
        .pool(&pool())
        .map(|p| p.elements().map(|e| e.element.id).collect())
        .unwrap_or_default()
}

fn owner_at(sim: &Sim, r: NodeId, pe: PoolElementId) -> Option<RegistrarId> {
    sim.registrar(r)
        .handlespace()
        .get(&rserpool_proto::PoolElementKey {
            pool_handle: pool(),
            pe_id: pe,
        })
        .map(|e| e.owner())
}

fn checksums(sim: &Sim, registrars: &[NodeId]) -> Vec<u16> {
    registrars
        .iter()
        .map(|&r| sim.registrar(r).handlespace().checksum())
        .collect()
}

fn registrar_events(sim: &Sim, r: NodeId) -> Vec<RegistrarEvent> {
    sim.events(r)
        .iter()
        .filter_map(|(_, e)| match e {
            NodeEvent::Registrar(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// RFC 5353 §3.2-3.4: registrars find each other, and every PE registered at one is
/// known to all, owned by the registrar it registered with.
#[test]
fn handle_updates_reach_every_registrar() {
    let mut sim = Sim::new(1);
    let registrars = add_registrars(&mut sim, 3);
    sim.run_for(Duration::from_secs(6));
    let pes: Vec<_> = (0..6)
        .map(|i| add_pe(&mut sim, &[registrars[i % 3]], 3))
        .collect();
    sim.run_for(Duration::from_secs(3));
    let all: BTreeSet<_> = pes.iter().map(|(_, id)| *id).collect();
    for &r in &registrars {
        assert_eq!(ids_at(&sim, r), all, "registrar {r}, seed {}", sim.seed);
        assert!(sim.registrar(r).is_synchronized());
        assert_eq!(sim.registrar(r).peers().len(), 2);
    }
    for (i, (_, id)) in pes.iter().enumerate() {
        for &r in &registrars {
            assert_eq!(
                owner_at(&sim, r, *id),
                Some(registrar_id(registrars[i % 3]))
            );
        }
    }
    let sums = checksums(&sim, &registrars);
    assert!(sums.windows(2).all(|w| w[0] == w[1]), "{sums:?}");
    // Re-registrations keep it that way, and a deregistration reaches everyone.
    sim.run_for(Duration::from_secs(10));
    let (pe, id) = pes[0];
    sim.with(pe, |role, now| match role {
        Role::Pe(p) => p.deregister(id, now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_secs(1));
    for &r in &registrars {
        assert!(
            !ids_at(&sim, r).contains(&id),
            "DEL_PE reached registrar {r}"
        );
    }
}

/// RFC 5353 §3.4.3, §3.5: a registrar is killed; after last-heard + no-response + takeover
/// time its PEs are owned by a survivor, every survivor still has every PE, and the PEs
/// themselves moved to the new home (keep-alive with the H flag).
/// Returns the simulation and its registrars for checks of their own.
fn crash_and_takeover(count: usize, seed: u64) -> (Sim, Vec<NodeId>) {
    let mut sim = Sim::new(seed);
    let registrars = add_registrars(&mut sim, count);
    sim.run_for(Duration::from_secs(6));
    // PEs know only the first registrar, so only a takeover can move them.
    let pes: Vec<_> = (0..4)
        .map(|_| add_pe(&mut sim, &[registrars[0]], 30))
        .collect();
    let others: Vec<_> = (0..2)
        .map(|_| add_pe(&mut sim, &[registrars[1]], 30))
        .collect();
    sim.run_for(Duration::from_secs(3));
    let all: BTreeSet<_> = pes.iter().chain(&others).map(|(_, id)| *id).collect();
    sim.crash(registrars[0]);
    // rsplib profile: last-heard 5 s + no-response 5 s + takeover, well within 20 s.
    sim.run_for(Duration::from_secs(20));
    let survivors = &registrars[1..];
    for &r in survivors {
        assert_eq!(ids_at(&sim, r), all, "registrar {r} lost PEs (seed {seed})");
    }
    let completed: Vec<(NodeId, RegistrarId)> = survivors
        .iter()
        .flat_map(|&r| {
            registrar_events(&sim, r)
                .into_iter()
                .filter_map(move |e| match e {
                    RegistrarEvent::TakeoverCompleted { target, .. } => Some((r, target)),
                    _ => None,
                })
        })
        .collect();
    assert_eq!(
        completed.len(),
        1,
        "exactly one registrar took over: {completed:?} (seed {seed})"
    );
    let (taker, target) = completed[0];
    assert_eq!(target, registrar_id(registrars[0]));
    for (pe, id) in &pes {
        for &r in survivors {
            assert_eq!(
                owner_at(&sim, r, *id),
                Some(registrar_id(taker)),
                "seed {seed}"
            );
        }
        assert_eq!(
            sim.pool_element(*pe).home_registrar(),
            Some(registrar_id(taker)),
            "PE moved home (seed {seed})"
        );
    }
    let sums = checksums(&sim, survivors);
    assert!(
        sums.windows(2).all(|w| w[0] == w[1]),
        "{sums:?} (seed {seed})"
    );
    (sim, registrars)
}

#[test]
fn crashed_registrar_is_taken_over_among_three() {
    for seed in 1..6 {
        crash_and_takeover(3, seed);
    }
}

#[test]
fn crashed_registrar_is_taken_over_among_five() {
    for seed in 1..4 {
        crash_and_takeover(5, seed);
    }
}

/// RFC 5353 §3.5: with two registrars the only peer that could acknowledge is the dead
/// one, so the takeover completes at once (rsplib's never does).
#[test]
fn two_registrars_complete_a_takeover() {
    let (sim, registrars) = crash_and_takeover(2, 7);
    let at = |wanted: fn(&RegistrarEvent) -> bool| {
        sim.events(registrars[1])
            .iter()
            .find_map(|(at, e)| match e {
                NodeEvent::Registrar(e) if wanted(e) => Some(*at),
                _ => None,
            })
            .unwrap()
    };
    let started = at(|e| matches!(e, RegistrarEvent::TakeoverStarted { .. }));
    let completed = at(|e| matches!(e, RegistrarEvent::TakeoverCompleted { .. }));
    // No acknowledgement to wait for: done in the same step.
    assert_eq!(
        completed, started,
        "started at {started:?}, completed at {completed:?}"
    );
}

/// RFC 5353 §3.5, docs/rsplib.md item 7: when two registrars take over the same peer
/// at the same time, the lower ID wins and exactly one takeover completes.
#[test]
fn concurrent_takeovers_have_one_winner() {
    let mut sim = Sim::new(3);
    // Messages take long enough that both survivors start before hearing the other.
    sim.latency = Duration::from_millis(400);
    let registrars = add_registrars(&mut sim, 3);
    sim.run_for(Duration::from_secs(8));
    let (_, id) = add_pe(&mut sim, &[registrars[0]], 30);
    sim.run_for(Duration::from_secs(3));
    sim.crash(registrars[0]);
    sim.run_for(Duration::from_secs(25));
    let started: Vec<NodeId> = registrars[1..]
        .iter()
        .copied()
        .filter(|&r| {
            registrar_events(&sim, r)
                .iter()
                .any(|e| matches!(e, RegistrarEvent::TakeoverStarted { .. }))
        })
        .collect();
    assert_eq!(
        started,
        [registrars[1], registrars[2]],
        "both started: a real race"
    );
    let winners: Vec<NodeId> = registrars[1..]
        .iter()
        .copied()
        .filter(|&r| {
            registrar_events(&sim, r)
                .iter()
                .any(|e| matches!(e, RegistrarEvent::TakeoverCompleted { .. }))
        })
        .collect();
    assert_eq!(winners, [registrars[1]], "the lower ID wins");
    assert!(
        registrar_events(&sim, registrars[2])
            .iter()
            .any(|e| matches!(e, RegistrarEvent::TakeoverAbandoned { .. }))
    );
    for &r in &registrars[1..] {
        assert_eq!(owner_at(&sim, r, id), Some(registrar_id(registrars[1])));
    }
}

/// RFC 5353 §3.4, §3.6: a partition and its heal; afterwards the handlespaces converge
/// (equal checksums) within a bounded number of heartbeat cycles.
#[test]
fn partition_and_heal_converge() {
    for seed in 1..5 {
        let mut sim = Sim::new(seed);
        let registrars = add_registrars(&mut sim, 3);
        sim.run_for(Duration::from_secs(6));
        let pes: Vec<_> = (0..6)
            .map(|i| add_pe(&mut sim, &[registrars[i % 3]], 4))
            .collect();
        sim.run_for(Duration::from_secs(3));
        sim.partition(registrars[0], registrars[1]);
        sim.partition(registrars[0], registrars[2]);
        sim.run_for(Duration::from_secs(30));
        sim.heal(registrars[0], registrars[1]);
        sim.heal(registrars[0], registrars[2]);
        // Ten heartbeat cycles of 2.4 s.
        sim.run_for(Duration::from_secs(25));
        let all: BTreeSet<_> = pes.iter().map(|(_, id)| *id).collect();
        for &r in &registrars {
            assert_eq!(ids_at(&sim, r), all, "registrar {r} (seed {seed})");
        }
        let sums = checksums(&sim, &registrars);
        assert!(
            sums.windows(2).all(|w| w[0] == w[1]),
            "{sums:?} (seed {seed})"
        );
        // Every registrar agrees on every PE's owner.
        for (_, id) in &pes {
            let owners: BTreeSet<_> = registrars.iter().map(|&r| owner_at(&sim, r, *id)).collect();
            assert_eq!(owners.len(), 1, "{owners:?} (seed {seed})");
        }
    }
}

/// RFC 5353 §3.3, §3.6 with message loss and reordering across associations: lost
/// updates are repaired by audits once the loss stops.
#[test]
fn loss_and_reordering_are_repaired_by_audits() {
    for seed in 1..5 {
        let mut sim = Sim::new(seed);
        let registrars = add_registrars(&mut sim, 3);
        sim.run_for(Duration::from_secs(6));
        // A tenth of the handle updates between registrars are lost (ENRP type 0x04;
        // RFC 5353 §2.4), and every message is delayed by up to 300 ms, so updates
        // from different registrars arrive out of order.
        sim.loss = 0.1;
        sim.loss_filter = |protocol, bytes| {
            protocol == rserpool_proto::wire::Protocol::Enrp && bytes.first() == Some(&0x04)
        };
        sim.jitter = Duration::from_millis(300);
        // Re-registrations every 120 s: within the test only audits repair a lost
        // handle update (with frequent re-registrations, the next one would).
        let mut pes: Vec<_> = (0..9)
            .map(|i| add_pe(&mut sim, &[registrars[i % 3]], 120))
            .collect();
        sim.run_for(Duration::from_secs(10));
        // Churn: some PEs leave while messages are lost.
        for (pe, id) in pes.drain(..3) {
            sim.with(pe, |role, now| match role {
                Role::Pe(p) => p.deregister(id, now),
                _ => unreachable!(),
            });
        }
        sim.run_for(Duration::from_secs(10));
        sim.loss = 0.0;
        sim.run_for(Duration::from_secs(25));
        let all: BTreeSet<_> = pes.iter().map(|(_, id)| *id).collect();
        for &r in &registrars {
            assert_eq!(ids_at(&sim, r), all, "registrar {r} (seed {seed})");
        }
        let sums = checksums(&sim, &registrars);
        assert!(
            sums.windows(2).all(|w| w[0] == w[1]),
            "{sums:?} (seed {seed})"
        );
    }
}

/// RFC 5353 §3.2: a registrar that starts later downloads the handlespace from its
/// mentor, paged with the M flag, before it serves ASAP: a handle resolution sent to it
/// during start-up is answered after the download, with every PE.
#[test]
fn a_newcomer_downloads_the_handlespace_before_serving() {
    let mut sim = Sim::new(5);
    let registrars = add_registrars(&mut sim, 2);
    sim.run_for(Duration::from_secs(6));
    let pes: Vec<_> = (0..10)
        .map(|_| add_pe(&mut sim, &[registrars[0]], 30))
        .collect();
    sim.run_for(Duration::from_secs(2));
    // The newcomer knows only the first registrar; small pages exercise the M flag.
    let n = sim.nodes.len();
    let config = RegistrarConfig {
        handle_table_page_size: 3,
        ..registrar_config(n, &[registrars[0]])
    };
    let newcomer = sim.add(Role::Registrar(RegistrarEngine::new(config, 99, sim.now)));
    let pu_config = PoolUserConfig::new(TimerProfile::Rsplib, hunt(&[newcomer]));
    let pu = sim.add(Role::Pu(PoolUserEngine::new(pu_config, 3)));
    let request: RequestId = sim.with(pu, |role, now| match role {
        Role::Pu(p) => p.resolve(pool(), Some(100), now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_secs(3));
    assert!(sim.registrar(newcomer).is_synchronized());
    let synchronized = registrar_events(&sim, newcomer)
        .into_iter()
        .find_map(|e| match e {
            RegistrarEvent::Synchronized { pool_elements } => Some(pool_elements),
            _ => None,
        });
    assert_eq!(
        synchronized,
        Some(10),
        "the whole table came before serving"
    );
    let answer = sim.events(pu).iter().find_map(|(_, e)| match e {
        NodeEvent::Pu(PoolUserEvent::Resolved {
            request: r,
            result: Ok(res),
        }) if *r == request => Some(res.pool_elements.len()),
        _ => None,
    });
    assert_eq!(
        answer,
        Some(10),
        "the deferred resolution saw the downloaded table"
    );
    // It learned the other peers from its mentor's list.
    assert_eq!(sim.registrar(newcomer).peers().len(), 2);
    let _ = pes;
}

/// A registrar whose mentor does not answer (frozen: its connects hang) still answers
/// ASAP within rsplib's 3 s request timeout while it keeps looking for 5 s: requests
/// wait `max_startup_hold` (1.5 s) at most, then see the handlespace as it stands; a
/// pool user of ours does not take the registrar for frozen meanwhile.
#[test]
fn asap_is_answered_within_three_seconds_while_the_mentor_is_silent() {
    let mut sim = Sim::new(15);
    let registrars = add_registrars(&mut sim, 2);
    sim.freeze(registrars[0]);
    let (pe, _) = add_pe(&mut sim, &[registrars[1]], 30);
    let pu_config = PoolUserConfig::new(TimerProfile::Rsplib, hunt(&[registrars[1]]));
    let pu = sim.add(Role::Pu(PoolUserEngine::new(pu_config, 3)));
    sim.run_for(Duration::from_millis(500));
    let request: RequestId = sim.with(pu, |role, now| match role {
        Role::Pu(p) => p.resolve(pool(), Some(10), now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_millis(2_700));
    assert!(
        !sim.registrar(registrars[1]).is_synchronized(),
        "still looking for its mentor"
    );
    let registered = sim.events(pe).iter().find_map(|(at, e)| {
        matches!(e, NodeEvent::Pe(PoolElementEvent::Registered { .. })).then_some(*at)
    });
    assert!(
        registered.is_some_and(|at| at < Duration::from_secs(3)),
        "registered at {registered:?}"
    );
    let answered = sim.events(pu).iter().find_map(|(at, e)| match e {
        NodeEvent::Pu(PoolUserEvent::Resolved {
            request: r,
            result: Ok(res),
        }) if *r == request => Some((*at, res.pool_elements.len())),
        _ => None,
    });
    let (at, count) = answered.unwrap_or_else(|| panic!("not answered: {:?}", sim.events(pu)));
    assert!(at < Duration::from_millis(2_500), "answered at {at:?}");
    assert!(
        !sim.events(pu)
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::Pu(PoolUserEvent::RegistrarSilent))),
        "the pool user gave up on the registrar"
    );
    assert_eq!(count, 1);
}

/// A PE that registered at a starting registrar while it waited for its mentor stays
/// that registrar's when the mentor's table (downloaded later) still names its old home.
#[test]
fn a_pe_registered_during_start_up_is_not_taken_back_by_the_mentors_table() {
    let mut sim = Sim::new(16);
    let registrars = add_registrars(&mut sim, 2);
    sim.run_for(Duration::from_secs(6));
    let (_, id) = add_pe(&mut sim, &[registrars[0]], 30);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        owner_at(&sim, registrars[0], id),
        Some(registrar_id(registrars[0]))
    );
    // A newcomer whose mentor is frozen for 3 s, and the same PE (same identifier)
    // moving to the newcomer meanwhile.
    sim.freeze(registrars[0]);
    let n = sim.nodes.len();
    let newcomer = sim.add(Role::Registrar(RegistrarEngine::new(
        registrar_config(n, &[registrars[0]]),
        99,
        sim.now,
    )));
    let config = PoolElementConfig::new(TimerProfile::Rsplib, hunt(&[newcomer]));
    let moved = sim.add(Role::Pe(PoolElementEngine::new(config, 77)));
    let spec = PoolElementSpec {
        pool_handle: pool(),
        id: Some(id),
        user_transport: Transport {
            protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
            port: 7000,
            addresses: vec![Sim::address_of(moved)],
        },
        policy: Policy::RoundRobin,
        reregistration_interval: Duration::from_secs(30),
        registration_life: None,
    };
    sim.with(moved, |role, now| match role {
        Role::Pe(pe) => pe.register(spec, now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_secs(3));
    assert_eq!(owner_at(&sim, newcomer, id), Some(registrar_id(newcomer)));
    sim.thaw(registrars[0]);
    sim.run_for(Duration::from_secs(4));
    assert!(sim.registrar(newcomer).is_synchronized());
    assert!(
        registrar_events(&sim, newcomer)
            .iter()
            .any(|e| matches!(e, RegistrarEvent::Synchronized { .. }))
    );
    assert_eq!(
        owner_at(&sim, newcomer, id),
        Some(registrar_id(newcomer)),
        "the mentor's table took the PE back"
    );
}

/// RFC 5353 §3.2: a crashed registrar comes back with the same ID: it rejoins,
/// learns the handlespace again, and all registrars converge.
#[test]
fn dead_registrar_returns_with_the_same_id() {
    let mut sim = Sim::new(9);
    let registrars = add_registrars(&mut sim, 3);
    sim.run_for(Duration::from_secs(6));
    let pes: Vec<_> = (0..4)
        .map(|i| add_pe(&mut sim, &[registrars[i % 3]], 3))
        .collect();
    sim.run_for(Duration::from_secs(3));
    sim.crash(registrars[0]);
    sim.run_for(Duration::from_secs(20));
    let config = registrar_config(registrars[0], &registrars);
    sim.restart(
        registrars[0],
        Role::Registrar(RegistrarEngine::new(config, 1234, sim.now)),
    );
    sim.run_for(Duration::from_secs(25));
    let all: BTreeSet<_> = pes.iter().map(|(_, id)| *id).collect();
    for &r in &registrars {
        assert_eq!(ids_at(&sim, r), all, "registrar {r}");
    }
    let sums = checksums(&sim, &registrars);
    assert!(sums.windows(2).all(|w| w[0] == w[1]), "{sums:?}");
}

/// A registrar's binary upgrade (the old process closes its associations, the new one
/// starts from the carried handlespace under the same ID): the pool stays resolvable
/// there from the first moment (a restart would start empty and hold ASAP until a
/// mentor's table came), no peer starts a takeover (RFC 5353 §3.6: the new process
/// answers before MAX-TIME-NO-RESPONSE), and the PEs keep their home.
#[test]
fn an_upgraded_registrar_keeps_its_pool_and_is_not_taken_over() {
    for seed in [12, 13, 14] {
        let mut sim = Sim::new(seed);
        let registrars = add_registrars(&mut sim, 3);
        sim.run_for(Duration::from_secs(6));
        let pes: Vec<_> = (0..4)
            .map(|_| add_pe(&mut sim, &[registrars[0]], 3))
            .collect();
        sim.run_for(Duration::from_secs(3));
        let all: BTreeSet<_> = pes.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids_at(&sim, registrars[0]), all);
        for _ in 0..3 {
            let record = sim.registrar(registrars[0]).carry_handlespace(sim.now);
            sim.crash(registrars[0]);
            let config = registrar_config(registrars[0], &registrars);
            let (engine, adopted) =
                RegistrarEngine::adopt(config, seed + 1000, &record, sim.now).unwrap();
            assert_eq!(adopted.pool_elements, 4);
            sim.restart(registrars[0], Role::Registrar(engine));
            for _ in 0..100 {
                assert_eq!(ids_at(&sim, registrars[0]), all, "seed {seed}");
                sim.run_for(Duration::from_millis(100));
            }
        }
        sim.run_for(Duration::from_secs(20));
        for &r in &registrars {
            assert_eq!(ids_at(&sim, r), all, "registrar {r}, seed {seed}");
            for id in &all {
                assert_eq!(owner_at(&sim, r, *id), Some(registrar_id(registrars[0])));
            }
            let takeovers = registrar_events(&sim, r)
                .into_iter()
                .filter(|e| matches!(e, RegistrarEvent::TakeoverStarted { .. }))
                .count();
            assert_eq!(takeovers, 0, "registrar {r}, seed {seed}");
        }
        let sums = checksums(&sim, &registrars);
        assert!(sums.windows(2).all(|w| w[0] == w[1]), "{sums:?}");
    }
}

/// A carried handlespace is input like any other: a record cut anywhere, or naming
/// another registrar ID than the configuration, is refused.
#[test]
fn a_carried_handlespace_is_checked() {
    let mut sim = Sim::new(15);
    let registrars = add_registrars(&mut sim, 1);
    add_pe(&mut sim, &registrars, 3);
    sim.run_for(Duration::from_secs(3));
    let record = sim.registrar(registrars[0]).carry_handlespace(sim.now);
    // With a peer to find, a fresh registrar would hold ASAP until its table came.
    let config = || registrar_config(registrars[0], &[registrars[0], 7]);
    for cut in 0..record.len() {
        // A cut between two pools is a shorter record, not a broken one.
        if let Ok((engine, _)) = RegistrarEngine::adopt(config(), 1, &record[..cut], sim.now) {
            assert!(engine.handlespace().pool_element_count() <= 1);
        }
    }
    // Any byte changed: refused or taken, never a panic.
    for at in 0..record.len() {
        let mut changed = record.clone();
        changed[at] ^= 0xA5;
        let _ = RegistrarEngine::adopt(config(), 1, &changed, sim.now);
    }
    let other = RegistrarConfig {
        id: Some(RegistrarId(0x999)),
        ..config()
    };
    assert!(RegistrarEngine::adopt(other, 1, &record, sim.now).is_err());
    let (engine, adopted) = RegistrarEngine::adopt(config(), 1, &record, sim.now).unwrap();
    assert_eq!((adopted.pool_elements, adopted.refused), (1, 0));
    assert_eq!(engine.id(), registrar_id(registrars[0]));
    assert!(engine.is_synchronized());
}

/// RFC 5353 §3.4-3.5: a frozen registrar (alive, silent) is taken
/// over; when it wakes, its presence ends takeover state and the PEs stay with their
/// new home, all registrars agreeing.
#[test]
fn frozen_registrar_is_taken_over_and_rejoins() {
    let mut sim = Sim::new(11);
    let registrars = add_registrars(&mut sim, 3);
    sim.run_for(Duration::from_secs(6));
    // A registration life (90 s) longer than failure detection (about 10 s), as with
    // rsplib's example interval of 30 s.
    let (_, id) = add_pe(&mut sim, &[registrars[0]], 30);
    sim.run_for(Duration::from_secs(3));
    sim.freeze(registrars[0]);
    sim.run_for(Duration::from_secs(20));
    let owner = owner_at(&sim, registrars[1], id).unwrap();
    assert_ne!(owner, registrar_id(registrars[0]));
    sim.thaw(registrars[0]);
    sim.run_for(Duration::from_secs(25));
    let owners: BTreeSet<_> = registrars.iter().map(|&r| owner_at(&sim, r, id)).collect();
    assert_eq!(owners.len(), 1, "{owners:?}");
    let sums = checksums(&sim, &registrars);
    assert!(sums.windows(2).all(|w| w[0] == w[1]), "{sums:?}");
}

/// A PE whose re-registration was out at its frozen home when another registrar took
/// it over timed that re-registration out afterwards and dropped its new home for it
/// (hunting the frozen one again): the new home then lost the PE with the
/// association. A PE that adopts a new home now sends what was outstanding there.
#[test]
fn a_pe_keeps_the_home_that_took_it_over_from_a_frozen_registrar() {
    for seed in 40..44 {
        let mut sim = Sim::new(seed);
        // RFC timers everywhere: the takeover comes about 66 s into the freeze, after
        // the PE's last attempt at its old home went out and before it expires.
        let registrars: Vec<NodeId> = (0..2).collect();
        for &n in &registrars {
            let rfc = RegistrarConfig::new(TimerProfile::Rfc);
            let config = RegistrarConfig {
                peer_heartbeat_interval: rfc.peer_heartbeat_interval,
                max_time_last_heard: rfc.max_time_last_heard,
                ..registrar_config(n, &registrars)
            };
            sim.add(Role::Registrar(RegistrarEngine::new(
                config,
                seed ^ n as u64,
                sim.now,
            )));
        }
        sim.run_for(Duration::from_secs(6));
        // The `pe` agent's timers: T2 30 s, two attempts, re-registering every 30 s
        // (registration life 90 s).
        let config = PoolElementConfig {
            home_changes: HomeChanges::Any,
            ..PoolElementConfig::new(TimerProfile::Rfc, hunt(&registrars[..1]))
        };
        let (pe, id) = add_pe_with(&mut sim, config, 30);
        sim.run_for(Duration::from_secs(7));
        sim.freeze(registrars[0]);
        sim.run_for(Duration::from_secs(150));
        let taker = registrar_id(registrars[1]);
        assert_eq!(
            sim.pool_element(pe).home_registrar(),
            Some(taker),
            "seed {seed}"
        );
        assert_eq!(
            owner_at(&sim, registrars[1], id),
            Some(taker),
            "seed {seed}"
        );
    }
}

/// A registrar frozen long enough to be taken over found, when it was thawed, the
/// re-registrations its PEs had sent it meanwhile and then the associations they had
/// closed when they moved: it registered them again (an ADD_PE naming itself, which
/// moved them back at the registrar that had taken them over) and removed them at once
/// (a DEL_PE from their "home"): the pool was empty until the PEs' next
/// re-registration. A registrar that notices it overslept by more than
/// MAX-TIME-LAST-HEARD now synchronises again before it serves ASAP, so what its
/// peers did meanwhile comes first.
#[test]
fn a_thawed_registrar_does_not_take_back_the_pes_it_lost() {
    for seed in 50..54 {
        let mut sim = Sim::new(seed);
        let registrars = add_registrars(&mut sim, 2);
        sim.run_for(Duration::from_secs(6));
        let (_, id) = add_pe(&mut sim, &registrars[..1], 5);
        sim.run_for(Duration::from_secs(2));
        sim.freeze(registrars[0]);
        sim.run_for(Duration::from_secs(30));
        let taker = registrar_id(registrars[1]);
        assert_eq!(
            owner_at(&sim, registrars[1], id),
            Some(taker),
            "seed {seed}"
        );
        sim.take_events(registrars[1]);
        sim.thaw(registrars[0]);
        sim.run_for(Duration::from_secs(20));
        let removed = registrar_events(&sim, registrars[1])
            .into_iter()
            .any(|e| matches!(e, RegistrarEvent::Removed { .. }));
        assert!(
            !removed,
            "the PE left the pool at the registrar that took it over (seed {seed})"
        );
        for &r in &registrars {
            assert_eq!(
                owner_at(&sim, r, id),
                Some(taker),
                "registrar {r} (seed {seed})"
            );
        }
    }
}

/// With TLS off, one ASAP_ENDPOINT_KEEP_ALIVE with the H flag from anyone who reached a
/// PE's ASAP endpoint detached the PE from its registrar. Now (by default) only a
/// registrar on the host of one the PE was configured with, hunted or heard announced
/// moves it: here the registrar taking over a frozen home is followed when the PE heard
/// its announces, and ignored (with the reason) when it did not.
#[test]
fn a_pe_follows_a_takeover_only_from_a_registrar_it_knows() {
    for announced in [true, false] {
        let mut sim = Sim::new(60);
        let registrars: Vec<NodeId> = (0..2).collect();
        for &n in &registrars {
            let config = RegistrarConfig {
                announce_interval: (announced && n == 1).then_some(Duration::from_secs(1)),
                asap_transports: vec![
                    TransportKind::Tcp
                        .transport_parameter(vec![Sim::address_of(n)], sim::ASAP_PORT),
                ],
                ..registrar_config(n, &registrars)
            };
            sim.add(Role::Registrar(RegistrarEngine::new(
                config, n as u64, sim.now,
            )));
        }
        sim.run_for(Duration::from_secs(6));
        let config = PoolElementConfig::new(TimerProfile::Rsplib, hunt(&registrars[..1]));
        let (pe, _) = add_pe_with(&mut sim, config, 30);
        sim.run_for(Duration::from_secs(2));
        sim.freeze(registrars[0]);
        sim.run_for(Duration::from_secs(15));
        let ignored = sim.events(pe).iter().any(|(_, e)| {
            matches!(e, NodeEvent::Pe(PoolElementEvent::HomeChangeIgnored { reason, .. })
                if reason.contains("no registrar this PE was configured with"))
        });
        let home = sim.pool_element(pe).home_registrar();
        if announced {
            assert_eq!(home, Some(registrar_id(registrars[1])), "followed");
            assert!(!ignored);
        } else {
            assert!(ignored, "{:?}", sim.events(pe));
            assert_ne!(home, Some(registrar_id(registrars[1])), "not followed");
        }
    }
}

/// RFC 5353 §3.6: updates lost in a short partition (an ADD_PE and a DEL_PE) are
/// repaired by the checksum audit within a few heartbeats, long before the 90 s
/// registration lives would have done it.
#[test]
fn audits_repair_lost_updates() {
    let mut sim = Sim::new(21);
    let registrars = add_registrars(&mut sim, 2);
    sim.run_for(Duration::from_secs(6));
    let (leaving, leaving_id) = add_pe(&mut sim, &[registrars[0]], 30);
    sim.run_for(Duration::from_secs(1));
    assert!(ids_at(&sim, registrars[1]).contains(&leaving_id));
    sim.partition(registrars[0], registrars[1]);
    sim.with(leaving, |role, now| match role {
        Role::Pe(p) => p.deregister(leaving_id, now),
        _ => unreachable!(),
    });
    let (_, joining_id) = add_pe(&mut sim, &[registrars[0]], 30);
    sim.run_for(Duration::from_secs(2));
    sim.heal(registrars[0], registrars[1]);
    sim.run_for(Duration::from_secs(8));
    let at_peer = ids_at(&sim, registrars[1]);
    assert!(
        !at_peer.contains(&leaving_id),
        "the lost DEL_PE was repaired"
    );
    assert!(
        at_peer.contains(&joining_id),
        "the lost ADD_PE was repaired"
    );
    assert!(
        registrar_events(&sim, registrars[1])
            .iter()
            .any(|e| matches!(e, RegistrarEvent::AuditCompleted { purged: 1, .. }))
    );
}

/// RFC 5353 §3.3, security.md T5: an ADD_PE counts only from the registrar it names as
/// the PE's home; a DEL_PE only from the PE's current home (rsplib accepts it from any).
#[test]
fn only_the_home_registrar_changes_its_pes() {
    use by_hand::{Harness, pool_element, update};
    use rserpool_proto::engine::Engine as _;
    use rserpool_proto::wire::UpdateAction;
    let (a, b) = (RegistrarId(0x20), RegistrarId(0x30));
    let mut h = Harness::new();
    h.peer(1, a, 2);
    h.peer(2, b, 3);
    // B cannot add a PE it says A owns.
    h.enrp(
        2,
        b,
        update(UpdateAction::ADD_PE, pool_element(0x77, a), false),
    );
    assert_eq!(h.engine.handlespace().pool_element_count(), 0);
    h.enrp(
        1,
        a,
        update(UpdateAction::ADD_PE, pool_element(0x77, a), false),
    );
    assert_eq!(h.engine.handlespace().pool_element_count(), 1);
    // B cannot delete A's PE; A can.
    h.enrp(
        2,
        b,
        update(UpdateAction::DEL_PE, pool_element(0x77, a), false),
    );
    assert_eq!(h.engine.handlespace().pool_element_count(), 1);
    h.enrp(
        1,
        a,
        update(UpdateAction::DEL_PE, pool_element(0x77, a), false),
    );
    assert_eq!(h.engine.handlespace().pool_element_count(), 0);
    // A registrar that is not a peer is not listened to at all.
    h.engine.handle_association_up(
        rserpool_proto::engine::AssocId(3),
        rserpool_proto::engine::PeerInfo {
            transport: rserpool_proto::engine::TransportKind::Tcp,
            addresses: vec![],
            port: 1,
            protocol: rserpool_proto::wire::Protocol::Enrp,
            rtt: None,
            authentication: rserpool_proto::auth::Authentication::Unauthenticated,
        },
        h.now,
    );
    h.enrp(
        3,
        RegistrarId(0x40),
        update(
            UpdateAction::ADD_PE,
            pool_element(0x78, RegistrarId(0x40)),
            false,
        ),
    );
    assert_eq!(h.engine.handlespace().pool_element_count(), 0);
}

/// draft-dreibholz-rserpool-enrp-takeover (the T flag): a takeover suggestion (T flag) from the PE's home is accepted: the
/// registrar opens an association to the PE's ASAP endpoint and claims it with the H
/// flag; from anyone else it is an ordinary (refused) update.
#[test]
fn takeover_suggestions_are_accepted_from_the_home_only() {
    use by_hand::{Harness, keep_alives, pool_element, update};
    use rserpool_proto::engine::Engine as _;
    use rserpool_proto::engine::{Output, PeerInfo, TransportKind};
    use rserpool_proto::wire::{Protocol, UpdateAction};
    let (a, b) = (RegistrarId(0x20), RegistrarId(0x30));
    let mut h = Harness::new();
    h.peer(1, a, 2);
    h.peer(2, b, 3);
    h.outputs.clear();
    h.enrp(
        2,
        b,
        update(UpdateAction::ADD_PE, pool_element(0x77, a), true),
    );
    assert!(!h.outputs.iter().any(|o| matches!(
        o,
        Output::Connect {
            protocol: Protocol::Asap,
            ..
        }
    )));
    h.enrp(
        1,
        a,
        update(UpdateAction::ADD_PE, pool_element(0x77, a), true),
    );
    let connect = h.outputs.iter().find_map(|o| match o {
        Output::Connect {
            assoc,
            to,
            protocol: Protocol::Asap,
        } => Some((*assoc, to.clone())),
        _ => None,
    });
    let (assoc, to) = connect.expect("an association to the PE's ASAP endpoint");
    assert_eq!(to.port, 4000);
    h.outputs.clear();
    h.engine.handle_association_up(
        assoc,
        PeerInfo {
            transport: TransportKind::Tcp,
            addresses: to.addresses.clone(),
            port: 4000,
            protocol: Protocol::Asap,
            rtt: None,
            authentication: rserpool_proto::auth::Authentication::Unauthenticated,
        },
        h.now,
    );
    h.drain();
    let claims = keep_alives(&h.outputs);
    assert_eq!(
        claims,
        [(assoc, true, rserpool_proto::wire::PoolElementId(0x77))]
    );
    let key = rserpool_proto::PoolElementKey {
        pool_handle: rserpool_proto::wire::PoolHandle::new(b"EchoPool").unwrap(),
        pe_id: rserpool_proto::wire::PoolElementId(0x77),
    };
    assert_eq!(
        h.engine.handlespace().get(&key).unwrap().owner(),
        RegistrarId(0x10)
    );
}

/// RFC 5353 §3.5: INIT_TAKEOVER naming this registrar is refuted with a presence, not
/// acknowledged; TAKEOVER_SERVER is accepted only for a takeover this registrar
/// acknowledged.
#[test]
fn takeover_messages_are_checked() {
    use by_hand::{Harness, pool_element, update};
    use rserpool_proto::engine::Output;
    use rserpool_proto::wire::{EnrpBody, EnrpMessage, Protocol, UpdateAction};
    let (a, b, c) = (RegistrarId(0x20), RegistrarId(0x30), RegistrarId(0x40));
    let mut h = Harness::new();
    h.peer(1, a, 2);
    h.peer(2, b, 3);
    h.peer(3, c, 4);
    h.enrp(
        3,
        c,
        update(UpdateAction::ADD_PE, pool_element(0x77, c), false),
    );
    h.outputs.clear();
    h.enrp(
        1,
        a,
        EnrpBody::InitTakeover {
            target: RegistrarId(0x10),
        },
    );
    let sent: Vec<EnrpBody> = h
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Transmit {
                protocol: Protocol::Enrp,
                payload,
                ..
            } => Some(EnrpMessage::decode(payload).unwrap().message.body),
            _ => None,
        })
        .collect();
    assert!(
        sent.iter().all(|b| matches!(b, EnrpBody::Presence { .. })) && !sent.is_empty(),
        "{sent:?}"
    );
    // B claims C's PEs without an INIT_TAKEOVER: ignored.
    h.enrp(2, b, EnrpBody::TakeoverServer { target: c });
    let key = rserpool_proto::PoolElementKey {
        pool_handle: rserpool_proto::wire::PoolHandle::new(b"EchoPool").unwrap(),
        pe_id: rserpool_proto::wire::PoolElementId(0x77),
    };
    assert_eq!(h.engine.handlespace().get(&key).unwrap().owner(), c);
    // With an INIT_TAKEOVER first (acknowledged), the PEs move to B.
    h.enrp(2, b, EnrpBody::InitTakeover { target: c });
    h.enrp(2, b, EnrpBody::TakeoverServer { target: c });
    assert_eq!(h.engine.handlespace().get(&key).unwrap().owner(), b);
}

/// RFC 5353 §3.4: registrars with no configured peers find each other by multicast
/// presences, open associations, and share their PEs.
#[test]
fn registrars_discover_each_other_by_multicast() {
    let mut sim = Sim::new(31);
    let nodes: Vec<NodeId> = (0..2).collect();
    for &n in &nodes {
        let config = RegistrarConfig {
            enrp_multicast: true,
            ..registrar_config(n, &[])
        };
        sim.add(Role::Registrar(RegistrarEngine::new(
            config, n as u64, sim.now,
        )));
    }
    sim.run_for(Duration::from_secs(8));
    for &r in &nodes {
        assert_eq!(
            sim.registrar(r).peers().len(),
            1,
            "registrar {r} found its peer"
        );
        assert!(sim.registrar(r).peers()[0].connected);
    }
    let (_, id) = add_pe(&mut sim, &[nodes[0]], 30);
    sim.run_for(Duration::from_secs(1));
    assert!(ids_at(&sim, nodes[1]).contains(&id));
}

/// A pool user at `registrar` whose association is up (one resolution made).
fn add_reporting_pu(sim: &mut Sim, registrar: NodeId) -> NodeId {
    let config = PoolUserConfig::new(TimerProfile::Rsplib, hunt(&[registrar]));
    let node = sim.nodes.len();
    let pu = sim.add(Role::Pu(PoolUserEngine::new(
        config,
        sim.seed ^ node as u64,
    )));
    sim.with(pu, |role, now| match role {
        Role::Pu(engine) => {
            engine.resolve(pool(), None, now);
        }
        _ => unreachable!(),
    });
    pu
}

fn report(sim: &mut Sim, pu: NodeId, pe: PoolElementId) {
    sim.with(pu, |role, _| match role {
        Role::Pu(engine) => engine.report_unreachable(pool(), pe),
        _ => unreachable!(),
    });
}

/// Three ENDPOINT_UNREACHABLE reports from three hosts at a registrar that does not own
/// the PE removed it there at once (as rsplib does), so anyone able to resolve could
/// empty a pool at every registrar but the PE's home. Such reports now leave the PE to
/// its owner's keep-alive supervision.
#[test]
fn reports_at_a_registrar_that_does_not_own_the_pe_do_not_remove_it() {
    let mut sim = Sim::new(31);
    let registrars = add_registrars(&mut sim, 2);
    let (_pe, id) = add_pe(&mut sim, &registrars[..1], 30);
    sim.run_for(Duration::from_secs(5));
    assert!(
        ids_at(&sim, registrars[1]).contains(&id),
        "seed {}",
        sim.seed
    );
    let pus: Vec<NodeId> = (0..3)
        .map(|_| add_reporting_pu(&mut sim, registrars[1]))
        .collect();
    sim.run_for(Duration::from_secs(1));
    for &pu in &pus {
        report(&mut sim, pu, id);
    }
    sim.run_for(Duration::from_secs(3));
    // Not even for a moment (the owner's audits would bring it back).
    let removed = registrar_events(&sim, registrars[1])
        .into_iter()
        .any(|e| matches!(e, RegistrarEvent::Removed { .. }));
    assert!(!removed, "seed {}", sim.seed);
    assert_eq!(
        owner_at(&sim, registrars[1], id),
        Some(registrar_id(registrars[0])),
        "seed {}",
        sim.seed
    );
    assert!(ids_at(&sim, registrars[0]).contains(&id));
}

/// Reports count once per host: three pool users of one host (three associations)
/// are one reporter, so they cannot even make the owner probe the PE.
#[test]
fn unreachability_reports_count_once_per_host() {
    let mut sim = Sim::new(32);
    let registrars = add_registrars(&mut sim, 1);
    let (_pe, id) = add_pe(&mut sim, &registrars, 30);
    sim.run_for(Duration::from_secs(2));
    let pus: Vec<NodeId> = (0..3)
        .map(|_| add_reporting_pu(&mut sim, registrars[0]))
        .collect();
    for &pu in &pus[1..] {
        sim.share_host(pu, pus[0]);
    }
    sim.run_for(Duration::from_secs(1));
    for &pu in &pus {
        report(&mut sim, pu, id);
    }
    sim.run_for(Duration::from_millis(200));
    let reports =
        sim.registrar(registrars[0])
            .unreachable_reporters(&rserpool_proto::PoolElementKey {
                pool_handle: pool(),
                pe_id: id,
            });
    assert_eq!(reports, 1, "seed {}", sim.seed);
}

/// A peer's ADD_PE made a registrar connect to an attacker-chosen host:port (a takeover
/// suggestion with a foreign ASAP transport), and ENRP user addresses were not checked:
/// now a suggestion is followed only to an ASAP endpoint on a host the PE's user
/// transport names, and addresses a PE could not have (unspecified, multicast, and
/// loopback at a registrar not on loopback) are not learned.
#[test]
fn peers_cannot_point_a_registrar_at_arbitrary_addresses() {
    use by_hand::{Harness, pool_element, update};
    use rserpool_proto::engine::Output;
    use rserpool_proto::wire::{Protocol, UpdateAction};
    use std::net::{IpAddr, Ipv4Addr};
    let a = RegistrarId(0x20);
    let mut h = Harness::new();
    h.peer(1, a, 2);
    h.outputs.clear();
    let mut third_host = pool_element(0x77, a);
    third_host.asap_transport = Some(
        TransportKind::Tcp.transport_parameter(vec![IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9))], 22),
    );
    h.enrp(1, a, update(UpdateAction::ADD_PE, third_host, true));
    assert!(
        !h.outputs.iter().any(|o| matches!(
            o,
            Output::Connect {
                protocol: Protocol::Asap,
                ..
            }
        )),
        "{:?}",
        h.outputs
    );
    let key = |id: u32| rserpool_proto::PoolElementKey {
        pool_handle: pool(),
        pe_id: PoolElementId(id),
    };
    assert!(
        h.engine.handlespace().get(&key(0x77)).is_some(),
        "learned, not claimed"
    );
    for (id, address) in [
        (0x78, IpAddr::V4(Ipv4Addr::LOCALHOST)),
        (0x79, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        (0x7a, IpAddr::V4(Ipv4Addr::new(239, 1, 1, 1))),
    ] {
        let mut element = pool_element(id, a);
        element.user_transport.addresses = vec![address];
        element.asap_transport = None;
        h.enrp(1, a, update(UpdateAction::ADD_PE, element, false));
        assert!(
            h.engine.handlespace().get(&key(id)).is_none(),
            "{address} learned"
        );
    }
    // A loopback ASAP transport is dropped: nothing to connect to on this host.
    let mut looped = pool_element(0x7b, a);
    looped.asap_transport =
        Some(TransportKind::Tcp.transport_parameter(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)], 22));
    h.enrp(1, a, update(UpdateAction::ADD_PE, looped, false));
    let learned = h.engine.handlespace().get(&key(0x7b)).unwrap();
    assert_eq!(learned.element.asap_transport, None);
}
