//! End-to-end: `pe` agents measure their backends' load (established connections in
//! the kernel's socket tables over a capacity) and a Least Used pool resolves by it
//! (RFC 5356, Least Used).

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{Process, eventually, registrar};

/// A TCP backend holding open connections (both ends kept).
struct LoadedBackend {
    listener: TcpListener,
    held: Vec<(TcpStream, TcpStream)>,
}

impl LoadedBackend {
    fn with(connections: usize) -> Self {
        let mut backend = Self {
            listener: TcpListener::bind("127.0.0.1:0").unwrap(),
            held: Vec::new(),
        };
        backend.open(connections);
        backend
    }

    fn open(&mut self, connections: usize) {
        for _ in 0..connections {
            let client = TcpStream::connect(self.address()).unwrap();
            let (accepted, _) = self.listener.accept().unwrap();
            self.held.push((client, accepted));
        }
    }

    fn address(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }
}

/// The backend ports of the pool's PEs in the registrar's order.
fn resolved_ports(registrar: SocketAddr) -> Vec<u16> {
    common::resolve_pes(&registrar.to_string(), "WebPool", &[])
        .iter()
        .map(|pe| u16::try_from(pe["user_transport"]["port"].as_u64().unwrap()).unwrap())
        .collect()
}

/// Three agents in front of backends with 1, 50 and 10 open connections (registered in
/// that order) in a Least Used pool: `resolve` lists them by load, 1, 10, 50; when the
/// first one gets 80 more, it moves to the end within a second or so (the agents
/// measure every 300 ms and report a change of more than 1 % at once). Neither order
/// is a rotation of the registration order, which is all a pool whose loads stay 0
/// could show.
#[test]
fn least_used_pools_follow_the_backends_connections() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let mut backends: Vec<LoadedBackend> = [1, 50, 10].map(LoadedBackend::with).into();
    let _agents: Vec<Process> = backends
        .iter()
        .map(|backend| {
            common::agent(
                asap,
                backend.address(),
                &[
                    "--health",
                    "none",
                    "--health-interval",
                    "300ms",
                    "--policy",
                    "LeastUsed",
                    "--load",
                    "connections",
                    "--capacity",
                    "100",
                ],
            )
        })
        .collect();
    let ports: Vec<u16> = backends.iter().map(|b| b.address().port()).collect();
    let by_load = vec![ports[0], ports[2], ports[1]];
    assert!(
        eventually(Duration::from_secs(20), || resolved_ports(asap) == by_load),
        "{:?}, wanted {by_load:?}",
        resolved_ports(asap)
    );
    backends[0].open(80);
    let reordered = vec![ports[2], ports[1], ports[0]];
    assert!(
        eventually(Duration::from_secs(10), || resolved_ports(asap)
            == reordered),
        "{:?}, wanted {reordered:?}",
        resolved_ports(asap)
    );
}

/// The load a PE in the pool reports, as a fraction.
fn reported_load(registrar: SocketAddr, pool: &str) -> Option<f64> {
    let pes = common::resolve_pes(&registrar.to_string(), pool, &[]);
    let load = pes.first()?["policy"]["load"].as_u64()?;
    Some(load as f64 / f64::from(u32::MAX))
}

/// A `pe --serve` demo reports open sessions / `--max-sessions` as its load: 2 of 4
/// open is 0.5, and 0 again once they close.
#[test]
fn demo_pes_report_their_open_sessions_as_load() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let demo = Process::start(&[
        "pe",
        "--serve",
        "echo",
        "--pool",
        "EchoPool",
        "--policy",
        "LeastUsed",
        "--max-sessions",
        "4",
        "--registrar",
        &asap.to_string(),
    ]);
    let listen = demo.address("listen");
    assert!(eventually(Duration::from_secs(10), || reported_load(
        asap, "EchoPool"
    ) == Some(0.0)));
    let sessions: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(listen).unwrap())
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || reported_load(asap, "EchoPool")
            .is_some_and(|load| (load - 0.5).abs() < 0.001)),
        "{:?}",
        reported_load(asap, "EchoPool")
    );
    drop(sessions);
    assert!(
        eventually(Duration::from_secs(10), || reported_load(asap, "EchoPool")
            == Some(0.0)),
        "{:?}",
        reported_load(asap, "EchoPool")
    );
}
