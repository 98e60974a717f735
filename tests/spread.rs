//! Pool-user selection through the TCP gateway (RFC 5356 §4: the pool user's half of
//! each policy): sessions opened one after another within one cache window spread as
//! the pool's policy says, not as the registrar's single cached answer would; with
//! `least_sessions` a listener's own open sessions per PE come first.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use common::{ConfigFile, Process, eventually, registrar};

/// How many sessions each PE got, from the gateway's "session started pe=" lines.
fn sessions_per_pe(gateway: &Process) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in gateway.log.lock().unwrap().iter() {
        if !line.contains("session started") {
            continue;
        }
        if let Some(pe) = line.split_whitespace().find_map(|f| f.strip_prefix("pe=")) {
            *counts.entry(pe.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// Opens `sessions` sessions 0.1 s apart, each says one line and reads its answer.
fn open_sessions(listen: SocketAddr, sessions: usize) -> Vec<TcpStream> {
    (0..sessions)
        .map(|i| {
            if i > 0 {
                // Pause: the spacing is the thing under test (sessions 0.1 s apart, inside
                // one cache window).
                thread::sleep(Duration::from_millis(100));
            }
            let mut client = TcpStream::connect(listen).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            client.write_all(b"hello\n").unwrap();
            let mut byte = [0u8; 1];
            client.read_exact(&mut byte).unwrap();
            client
        })
        .collect()
}

fn spread(policies: &[&str], sessions: usize) -> Vec<usize> {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let pes: Vec<Process> = policies
        .iter()
        .map(|policy| common::demo_pe(asap, "counter", "SpreadPool", policy))
        .collect();
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "SpreadPool").len() == pes.len()
    }));
    let gateway = common::tcp_gateway(asap, "SpreadPool");
    let clients = open_sessions(gateway.listener("tcp"), sessions);
    assert!(eventually(Duration::from_secs(10), || {
        sessions_per_pe(&gateway).values().sum::<usize>() == sessions
    }));
    drop(clients);
    let mut counts: Vec<usize> = sessions_per_pe(&gateway).into_values().collect();
    counts.sort_unstable();
    counts
}

#[test]
fn round_robin_sessions_spread_evenly_inside_one_cache_window() {
    let counts = spread(&["RoundRobin"; 3], 30);
    assert_eq!(counts, [10, 10, 10]);
}

#[test]
fn weighted_round_robin_sessions_spread_by_weight() {
    let counts = spread(
        &[
            "WeightedRoundRobin:1",
            "WeightedRoundRobin:2",
            "WeightedRoundRobin:3",
        ],
        60,
    );
    assert_eq!(counts, [10, 20, 30]);
}

/// The PE of the `nth` session the gateway started (0-based), once it has.
fn nth_session_pe(gateway: &Process, nth: usize) -> String {
    let mut pe = None;
    assert!(eventually(Duration::from_secs(10), || {
        let log = gateway.log.lock().unwrap();
        pe = log
            .iter()
            .filter(|line| line.contains("session started"))
            .nth(nth)
            .and_then(|line| line.split_whitespace().find_map(|f| f.strip_prefix("pe=")))
            .map(str::to_owned);
        pe.is_some()
    }));
    pe.unwrap()
}

/// `least_sessions`: a PE with one of the listener's sessions open loses its place to
/// an idle one although the pool's policy (priority) puts it first; ties keep the
/// policy's order; a closed session gives its place back.
#[test]
fn least_sessions_sends_new_sessions_around_busy_pes() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let preferred = common::demo_pe(asap, "counter", "BusyPool", "Priority:9");
    let other = common::demo_pe(asap, "counter", "BusyPool", "Priority:1");
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "BusyPool").len() == 2
    }));
    let file = ConfigFile::new(&format!(
        "pool_user:\n  registrars: [{asap}]\ngateway:\n  tcp:\n    - listen: 127.0.0.1:0\n      pool: BusyPool\n      slow_start: 0s\n      least_sessions: true\n"
    ));
    let gateway = Process::start(&[
        "gateway",
        "--config",
        &file.0,
        "--admin",
        "127.0.0.1:0",
        "--log-level",
        "info,rserpool_gateways=debug",
    ]);
    let listen = gateway.listener("tcp");
    let (preferred, other) = (preferred.ready["pe"].as_str(), other.ready["pe"].as_str());
    let first = open_sessions(listen, 1);
    assert_eq!(nth_session_pe(&gateway, 0), preferred);
    let second = open_sessions(listen, 1);
    assert_eq!(
        nth_session_pe(&gateway, 1),
        other,
        "the preferred PE has a session"
    );
    let third = open_sessions(listen, 1);
    assert_eq!(
        nth_session_pe(&gateway, 2),
        preferred,
        "a tie keeps the policy's order"
    );
    drop(first);
    drop(third);
    // The gateway sees the closes: only the other PE's session is left open.
    let admin = gateway.address("admin");
    assert!(eventually(Duration::from_secs(10), || {
        let (_, text) = common::admin_get(admin, "/api/sessions");
        let listed: serde_json::Value = serde_json::from_str(&text).unwrap();
        listed["tcp"].as_array().is_some_and(|rows| rows.len() == 1)
    }));
    let _fourth = open_sessions(listen, 1);
    assert_eq!(
        nth_session_pe(&gateway, 3),
        preferred,
        "its sessions have closed"
    );
    drop(second);
}
