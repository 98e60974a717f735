//! Authorization by authenticated identity (RFC 5355; threats as in docs/security.md),
//! with real engines in the deterministic simulator. Each node's certificate is what
//! the simulated transport reports to the nodes it talks to; each test names the
//! threat it closes.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code; a real clock for test deadlines and measurements"
)]

mod sim;

use std::time::{Duration, Instant};

use rserpool_proto::auth::{Access, Authentication, PeerIdentity, PlainPeers, PoolGrant};
use rserpool_proto::engine::{AssocId, Engine, Output, PeerInfo, TimerProfile, TransportKind};
use rserpool_proto::hunt::HuntConfig;
use rserpool_proto::pool_element::{
    PoolElementConfig, PoolElementEngine, PoolElementEvent, PoolElementSpec,
};
use rserpool_proto::pool_user::{PoolUserConfig, PoolUserEngine, PoolUserEvent, ResolveError};
use rserpool_proto::registrar::{RegistrarConfig, RegistrarEngine, RegistrarEvent};
use rserpool_proto::wire::{
    AsapMessage, CauseCode, EndpointKeepAlive, Policy, PoolElementId, PoolHandle, Protocol,
    RegistrarId, Transport, TransportProtocol, TransportUse,
};
use sim::{ENRP_PORT, NodeEvent, NodeId, Role, Sim};

const ENFORCED: Access = Access::Enforced {
    plain: PlainPeers::Refused,
};

fn pool(name: &str) -> PoolHandle {
    PoolHandle::new(name.as_bytes()).unwrap()
}

fn identity(name: &str) -> PeerIdentity {
    PeerIdentity {
        name: name.into(),
        registrar: None,
        pool_element: None,
        pool_user: None,
        observer: false,
    }
}

fn registrar_identity(id: u32) -> Authentication {
    Authentication::Authenticated(PeerIdentity {
        registrar: Some(RegistrarId(id)),
        ..identity(&format!("registrar-{id}"))
    })
}

fn pe_identity(name: &str, pools: &[&str]) -> Authentication {
    Authentication::Authenticated(PeerIdentity {
        pool_element: Some(PoolGrant::Pools(pools.iter().map(|p| pool(p)).collect())),
        ..identity(name)
    })
}

fn pu_identity() -> Authentication {
    Authentication::Authenticated(PeerIdentity {
        pool_user: Some(PoolGrant::Any),
        ..identity("gateway")
    })
}

/// A registrar enforcing identities, peering with `peers` (registrar nodes).
fn add_registrar(sim: &mut Sim, id: u32, peers: &[NodeId], certificate: Authentication) -> NodeId {
    let config = RegistrarConfig {
        id: Some(RegistrarId(id)),
        announce_interval: None,
        access: ENFORCED,
        static_peers: peers
            .iter()
            .map(|&p| {
                let mut endpoint = Sim::registrar_endpoint(p);
                endpoint.port = ENRP_PORT;
                endpoint
            })
            .collect(),
        mentor_discovery_timeout: Duration::from_millis(500),
        ..RegistrarConfig::new(TimerProfile::Rsplib)
    };
    let engine = RegistrarEngine::new(config, sim.seed ^ u64::from(id), sim.now);
    let n = sim.add(Role::Registrar(engine));
    sim.nodes[n].authentication = certificate;
    n
}

fn hunt(registrars: &[NodeId]) -> HuntConfig {
    HuntConfig {
        access: ENFORCED,
        ..HuntConfig::new(
            registrars
                .iter()
                .map(|&r| Sim::registrar_endpoint(r))
                .collect(),
            Duration::from_secs(2),
        )
    }
}

fn spec(pool_name: &str, id: Option<u32>, address_of: NodeId) -> PoolElementSpec {
    PoolElementSpec {
        pool_handle: pool(pool_name),
        id: id.map(PoolElementId),
        user_transport: Transport {
            protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
            port: 7000,
            addresses: vec![Sim::address_of(address_of)],
        },
        policy: Policy::RoundRobin,
        reregistration_interval: Duration::from_secs(2),
        registration_life: None,
    }
}

/// A PE node with a certificate, registering one PE.
fn add_pe(
    sim: &mut Sim,
    registrars: &[NodeId],
    certificate: Authentication,
    pool_name: &str,
    id: Option<u32>,
) -> (NodeId, PoolElementId) {
    add_pe_with(sim, hunt(registrars), certificate, pool_name, id)
}

fn add_pe_with(
    sim: &mut Sim,
    hunt: HuntConfig,
    certificate: Authentication,
    pool_name: &str,
    id: Option<u32>,
) -> (NodeId, PoolElementId) {
    let config = PoolElementConfig::new(TimerProfile::Rsplib, hunt);
    let node = sim.nodes.len();
    let engine = PoolElementEngine::new(config, sim.seed ^ (node as u64) << 8);
    let n = sim.add(Role::Pe(engine));
    sim.nodes[n].authentication = certificate;
    let spec = spec(pool_name, id, n);
    let id = sim.with(n, |role, now| match role {
        Role::Pe(pe) => pe.register(spec, now),
        _ => unreachable!(),
    });
    (n, id)
}

fn members(sim: &Sim, registrar: NodeId, pool_name: &str) -> Vec<PoolElementId> {
    sim.registrar(registrar)
        .handlespace()
        .pool(&pool(pool_name))
        .map(|p| p.elements().map(|e| e.element.id).collect())
        .unwrap_or_default()
}

fn denied(sim: &Sim, registrar: NodeId, action: &str) -> usize {
    sim.events(registrar)
        .iter()
        .filter(|(_, e)| {
            matches!(e, NodeEvent::Registrar(RegistrarEvent::Denied { action: a, .. }) if *a == action)
        })
        .count()
}

/// T2, T4: a PE registers only into the pools its certificate grants; anything else is
/// refused with cause 0x000A (security considerations) and never retried.
#[test]
fn a_pe_granted_pool_a_cannot_register_in_pool_b() {
    let mut sim = Sim::new(1);
    let r = add_registrar(&mut sim, 0x11, &[], registrar_identity(0x11));
    let (_, allowed) = add_pe(&mut sim, &[r], pe_identity("pe-a", &["A"]), "A", None);
    let (intruder, _) = add_pe(&mut sim, &[r], pe_identity("pe-a2", &["A"]), "B", None);
    sim.run_for(Duration::from_secs(10));
    assert_eq!(members(&sim, r, "A"), vec![allowed]);
    assert!(members(&sim, r, "B").is_empty());
    assert!(sim.events(intruder).iter().any(|(_, e)| matches!(
        e,
        NodeEvent::Pe(PoolElementEvent::RegistrationRefused {
            cause: Some(CauseCode::SECURITY_REJECTION),
            retrying: false,
            ..
        })
    )));
}

/// T1: a PE without a certificate (a plain association) registers nothing where
/// identities are enforced.
#[test]
fn a_pe_without_a_certificate_is_refused() {
    let mut sim = Sim::new(2);
    let r = add_registrar(&mut sim, 0x11, &[], registrar_identity(0x11));
    let config = PoolElementConfig::new(TimerProfile::Rsplib, {
        // The PE itself trusts any registrar: only the registrar's rule is tested.
        let mut hunt = hunt(&[r]);
        hunt.access = Access::Open;
        hunt
    });
    let n = sim.add(Role::Pe(PoolElementEngine::new(config, 5)));
    let spec = spec("A", None, n);
    sim.with(n, |role, now| match role {
        Role::Pe(pe) => pe.register(spec, now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_secs(5));
    assert!(members(&sim, r, "A").is_empty());
    assert!(sim.events(n).iter().any(|(_, e)| matches!(
        e,
        NodeEvent::Pe(PoolElementEvent::RegistrationRefused {
            cause: Some(CauseCode::SECURITY_REJECTION),
            ..
        })
    )));
}

/// T3, T8: a PE identifier registered by one identity cannot be re-registered (moved
/// to the attacker's address) by another identity granted the same pool; the same
/// identity from another host may (a PE that moved).
#[test]
fn a_pe_cannot_reregister_another_identitys_pe_identifier() {
    let mut sim = Sim::new(3);
    let r = add_registrar(&mut sim, 0x11, &[], registrar_identity(0x11));
    let (owner, id) = add_pe(&mut sim, &[r], pe_identity("pe-1", &["A"]), "A", Some(0x77));
    sim.run_for(Duration::from_secs(3));
    assert_eq!(members(&sim, r, "A"), vec![id]);
    let (thief, _) = add_pe(&mut sim, &[r], pe_identity("pe-2", &["A"]), "A", Some(0x77));
    sim.run_for(Duration::from_secs(5));
    let entry = |sim: &Sim| {
        sim.registrar(r)
            .handlespace()
            .pool(&pool("A"))
            .and_then(|p| {
                p.elements()
                    .next()
                    .map(|e| e.element.user_transport.clone())
            })
    };
    assert_eq!(
        entry(&sim).map(|t| t.addresses),
        Some(vec![Sim::address_of(owner)])
    );
    assert!(sim.events(thief).iter().any(|(_, e)| matches!(
        e,
        NodeEvent::Pe(PoolElementEvent::RegistrationRefused {
            cause: Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER),
            ..
        })
    )));
    // The same certificate on another host takes its PE along (the old host froze:
    // its association is still up).
    sim.freeze(owner);
    let (moved, _) = add_pe(&mut sim, &[r], pe_identity("pe-1", &["A"]), "A", Some(0x77));
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        entry(&sim).map(|t| t.addresses),
        Some(vec![Sim::address_of(moved)])
    );
}

/// T5: a registrar whose certificate is not a registrar's cannot peer: its presences,
/// handle updates and table never reach the registrar's handlespace.
#[test]
fn a_registrar_without_a_registrar_certificate_cannot_peer() {
    let mut sim = Sim::new(4);
    let a = add_registrar(&mut sim, 0x11, &[], registrar_identity(0x11));
    // B holds a PE's certificate, not a registrar's.
    let b = add_registrar(&mut sim, 0x22, &[a], pe_identity("rogue", &["A"]));
    // B's own PE, which does not check registrars (a PE of a deployment without TLS).
    let open_hunt = HuntConfig {
        access: Access::Open,
        ..hunt(&[b])
    };
    let (_, rogue_pe) = add_pe_with(&mut sim, open_hunt, pe_identity("pe", &["A"]), "A", None);
    sim.run_for(Duration::from_secs(15));
    assert_eq!(members(&sim, b, "A"), vec![rogue_pe]);
    assert!(members(&sim, a, "A").is_empty(), "A learned the rogue's PE");
    assert!(
        sim.registrar(a)
            .peers()
            .iter()
            .all(|p| p.id != RegistrarId(0x22)),
        "{:?}",
        sim.registrar(a).peers()
    );
    assert!(denied(&sim, a, "enrp") > 0);
}

/// T5, T17: a registrar cannot send ENRP under another registrar's ID (its
/// certificate names 0x33; it calls itself 0x22).
#[test]
fn a_registrar_cannot_speak_under_another_id() {
    let mut sim = Sim::new(5);
    let a = add_registrar(&mut sim, 0x11, &[], registrar_identity(0x11));
    let b = add_registrar(&mut sim, 0x22, &[a], registrar_identity(0x33));
    let (_, pe) = add_pe(&mut sim, &[b], pe_identity("pe", &["A"]), "A", None);
    sim.run_for(Duration::from_secs(15));
    assert_eq!(members(&sim, b, "A"), vec![pe]);
    assert!(members(&sim, a, "A").is_empty());
    assert!(denied(&sim, a, "enrp") > 0);
}

/// The positive control: with the right certificates everywhere, registrars peer,
/// share their PEs, and pool users resolve at either.
#[test]
fn authenticated_registrars_peer_and_serve_pool_users() {
    let mut sim = Sim::new(6);
    let a = add_registrar(&mut sim, 0x11, &[], registrar_identity(0x11));
    let b = add_registrar(&mut sim, 0x22, &[a], registrar_identity(0x22));
    let (_, pe) = add_pe(&mut sim, &[b], pe_identity("pe", &["A"]), "A", None);
    sim.run_for(Duration::from_secs(15));
    assert_eq!(members(&sim, a, "A"), vec![pe]);
    assert_eq!(members(&sim, b, "A"), vec![pe]);
    let pu = sim.add(Role::Pu(PoolUserEngine::new(
        PoolUserConfig::new(TimerProfile::Rsplib, hunt(&[a])),
        9,
    )));
    sim.nodes[pu].authentication = pu_identity();
    let request = sim.with(pu, |role, now| match role {
        Role::Pu(engine) => engine.resolve(pool("A"), None, now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_secs(2));
    assert!(sim.events(pu).iter().any(|(_, e)| matches!(
        e,
        NodeEvent::Pu(PoolUserEvent::Resolved { request: q, result: Ok(r) })
            if *q == request && r.pool_elements.iter().any(|p| p.id == pe)
    )));
}

/// T7: a pool user does not use a registrar that cannot prove it is one; its requests
/// fail as if no registrar answered.
#[test]
fn a_pool_user_refuses_a_registrar_without_a_registrar_certificate() {
    let mut sim = Sim::new(7);
    let fake = add_registrar(&mut sim, 0x11, &[], pe_identity("fake", &["A"]));
    let pu = sim.add(Role::Pu(PoolUserEngine::new(
        PoolUserConfig::new(TimerProfile::Rsplib, hunt(&[fake])),
        9,
    )));
    let request = sim.with(pu, |role, now| match role {
        Role::Pu(engine) => engine.resolve(pool("A"), None, now),
        _ => unreachable!(),
    });
    sim.run_for(Duration::from_secs(20));
    let events = sim.events(pu);
    assert!(
        events
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::Pu(PoolUserEvent::RegistrarRefused { .. })))
    );
    assert!(
        !events
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::Pu(PoolUserEvent::RegistrarUp)))
    );
    assert!(events.iter().any(|(_, e)| matches!(
        e,
        NodeEvent::Pu(PoolUserEvent::Resolved { request: q, result: Err(ResolveError::NoRegistrar) })
            if *q == request
    )));
}

/// T15: a pool user's certificate limited to pool A resolves A, and gets cause 0x000A
/// for B.
#[test]
fn a_pool_user_resolves_only_granted_pools() {
    let mut sim = Sim::new(8);
    let r = add_registrar(&mut sim, 0x11, &[], registrar_identity(0x11));
    add_pe(&mut sim, &[r], pe_identity("pe-a", &["A"]), "A", None);
    add_pe(&mut sim, &[r], pe_identity("pe-b", &["B"]), "B", None);
    let pu = sim.add(Role::Pu(PoolUserEngine::new(
        PoolUserConfig::new(TimerProfile::Rsplib, hunt(&[r])),
        9,
    )));
    sim.nodes[pu].authentication = Authentication::Authenticated(PeerIdentity {
        pool_user: Some(PoolGrant::Pools([pool("A")].into())),
        ..identity("gw-a")
    });
    sim.run_for(Duration::from_secs(3));
    let [a, b] = ["A", "B"].map(|name| {
        sim.with(pu, |role, now| match role {
            Role::Pu(engine) => engine.resolve(pool(name), None, now),
            _ => unreachable!(),
        })
    });
    sim.run_for(Duration::from_secs(5));
    let result = |request| {
        sim.events(pu).iter().find_map(|(_, e)| match e {
            NodeEvent::Pu(PoolUserEvent::Resolved { request: q, result }) if *q == request => {
                Some(result.clone())
            }
            _ => None,
        })
    };
    assert!(matches!(result(a), Some(Ok(r)) if r.pool_elements.len() == 1));
    assert!(matches!(result(b), Some(Err(_))), "{:?}", result(b));
    assert_eq!(denied(&sim, r, "resolve"), 1);
}

/// T14: a PE ignores a keep-alive with the H flag from an association that does not
/// prove it is the registrar it names; from one that does, it moves its home.
#[test]
fn a_pe_ignores_a_home_claim_from_an_unauthenticated_peer() {
    let t0 = Instant::now();
    let registrar = Sim::registrar_endpoint(0);
    let mut pe = PoolElementEngine::new(
        PoolElementConfig::new(TimerProfile::Rsplib, {
            let mut hunt = HuntConfig::new(vec![registrar], Duration::from_secs(2));
            hunt.access = ENFORCED;
            hunt
        }),
        7,
    );
    let id = pe.register(spec("A", Some(0x1a2b_3c4d), 1), t0);
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
    let peer = |port, authentication| PeerInfo {
        transport: TransportKind::Tcp,
        addresses: vec![Sim::address_of(0)],
        port,
        protocol: Protocol::Asap,
        rtt: None,
        authentication,
    };
    pe.handle_association_up(home, peer(3863, registrar_identity(0x11)), t0);
    drain(&mut pe, &mut outputs);
    let claim = |server_id| {
        AsapMessage::EndpointKeepAlive(EndpointKeepAlive {
            home: true,
            server_id: RegistrarId(server_id),
            pool_handle: pool("A"),
            pe_id: Some(id),
        })
        .encode()
        .unwrap()
    };
    // A stranger, then a registrar claiming another registrar's ID.
    for (n, authentication, claimed) in [
        (1, Authentication::Unauthenticated, 0x99),
        (2, registrar_identity(0x98), 0x99),
    ] {
        let stranger = AssocId(n);
        pe.handle_association_up(stranger, peer(40_000, authentication), t0);
        outputs.clear();
        pe.handle_message(stranger, Protocol::Asap, &claim(claimed), t0);
        drain(&mut pe, &mut outputs);
        assert!(
            !outputs.contains(&Output::Close { assoc: home }),
            "{outputs:?}"
        );
        assert!(
            outputs
                .iter()
                .any(|o| matches!(o, Output::Event(PoolElementEvent::HomeChangeIgnored { .. })))
        );
    }
    // A real registrar taking the PE over is followed.
    let registrar = AssocId(3);
    pe.handle_association_up(registrar, peer(40_001, registrar_identity(0x99)), t0);
    outputs.clear();
    pe.handle_message(registrar, Protocol::Asap, &claim(0x99), t0);
    drain(&mut pe, &mut outputs);
    assert!(
        outputs.contains(&Output::Close { assoc: home }),
        "{outputs:?}"
    );
    assert_eq!(pe.home_registrar(), Some(RegistrarId(0x99)));
}

/// A registrar that drops the association as soon as it is up (a TLS registrar reached
/// without TLS, or one that refuses this endpoint) is not reconnected to in a tight
/// loop: losing an association within a second counts as a failed hunt round, and
/// rounds back off (250 ms doubling to 5 s).
#[test]
fn a_registrar_that_drops_each_association_at_once_is_not_hammered() {
    let t0 = Instant::now();
    let registrar = Sim::registrar_endpoint(0);
    let mut pe = PoolElementEngine::new(
        PoolElementConfig::new(
            TimerProfile::Rsplib,
            HuntConfig::new(vec![registrar], Duration::from_secs(2)),
        ),
        7,
    );
    pe.register(spec("A", None, 1), t0);
    let peer = PeerInfo {
        transport: TransportKind::Tcp,
        addresses: vec![Sim::address_of(0)],
        port: 3863,
        protocol: Protocol::Asap,
        rtt: None,
        authentication: Authentication::Unauthenticated,
    };
    let mut now = t0;
    let mut connects = 0;
    while now < t0 + Duration::from_secs(10) && connects < 1000 {
        let mut opened = Vec::new();
        let next = loop {
            match pe.poll_output() {
                Output::Connect { assoc, .. } => opened.push(assoc),
                Output::Timeout(next) => break next,
                _ => {}
            }
        };
        for assoc in &opened {
            connects += 1;
            pe.handle_association_up(*assoc, peer.clone(), now);
            while !matches!(pe.poll_output(), Output::Timeout(_)) {}
            pe.handle_association_down(*assoc, now);
        }
        if opened.is_empty() {
            now = next.unwrap_or(now + Duration::from_millis(100)).max(now);
            pe.handle_timeout(now);
        }
    }
    assert!(
        (3..=12).contains(&connects),
        "{connects} connections in 10 s"
    );
}
