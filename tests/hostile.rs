//! A registrar's listeners under connections that never speak, trickle, hoard memory or
//! crowd one host's share, with TLS off (the hostile-networks issue): each is closed
//! and counted while legitimate pool users and PEs keep being served. The attackers
//! connect from 127.0.0.2, the legitimate peers from 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code: a real clock for deadlines"
)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Process, admin_get, eventually, receive, registration, resolve_ids};
use rserpool_proto::wire::{
    AsapMessage, CauseCode, ErrorCause, ErrorReport, HandleResolution, OperationError, PoolHandle,
};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A registrar with `limits` (YAML lines under `registrar.limits`) and an admin
/// listener.
fn registrar_with(tag: &str, limits: &str) -> Process {
    let dir = std::env::temp_dir().join(format!("rserpool-hostile-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("registrar.yaml");
    std::fs::write(&config, format!("registrar:\n  limits:\n{limits}")).unwrap();
    let args = common::registrar_args(&[
        "--config",
        config.to_str().unwrap(),
        "--admin",
        "127.0.0.1:0",
    ]);
    Process::start(&args)
}

/// A connection from the attacker's address.
fn connect_from_attacker(to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(ATTACKER, 0).into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

/// Whether the registrar closes `stream` within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn resolution(pool: &str) -> Vec<u8> {
    AsapMessage::HandleResolution(HandleResolution {
        pool_handle: PoolHandle::new(pool.as_bytes()).unwrap(),
        items: None,
    })
    .encode()
    .unwrap()
}

/// The value of a counter with these labels in the registrar's /metrics (0 if absent).
fn counter(registrar: &Process, name: &str, labels: &str) -> u64 {
    let (_, metrics) = admin_get(registrar.address("admin"), "/metrics");
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// A connection that never completes a message is closed after the first-message
/// timeout, one that trickles a message after the message timeout; one that spoke
/// and then idles is kept.
#[test]
fn silent_and_trickling_connections_are_closed_and_counted() {
    let r = registrar_with(
        "slow",
        "    first_message_timeout: 1s\n    message_timeout: 1s\n",
    );
    let asap = r.address("asap");
    let mut silent = connect_from_attacker(asap).unwrap();
    let mut trickling = connect_from_attacker(asap).unwrap();
    let message = resolution("Nobody");
    trickling.write_all(&message).unwrap();
    assert!(
        receive(&mut trickling).is_some(),
        "the first message is answered"
    );
    trickling.write_all(&message[..6]).unwrap();
    let mut idle = TcpStream::connect(asap).unwrap();
    idle.write_all(&message).unwrap();
    assert!(receive(&mut idle).is_some());

    assert!(
        closed_within(&mut silent, Duration::from_secs(10)),
        "silent one closed"
    );
    assert!(
        closed_within(&mut trickling, Duration::from_secs(10)),
        "trickler closed"
    );
    assert!(
        !closed_within(&mut idle, Duration::from_secs(2)),
        "a connection between messages is not timed out"
    );
    idle.write_all(&message).unwrap();
    assert!(receive(&mut idle).is_some());
    assert!(eventually(Duration::from_secs(5), || {
        counter(
            &r,
            "rserpool_listener_closed_total",
            "listener=\"asap\",reason=\"silent\"",
        ) >= 1
            && counter(
                &r,
                "rserpool_listener_closed_total",
                "listener=\"asap\",reason=\"slow_message\"",
            ) >= 1
    }));
}

/// 10 000 idle connections locked the ASAP port for everyone: now one host gets its
/// share and no more (each connection over it takes the place of that host's oldest
/// one that never sent a message), and the legitimate peers of other hosts are served
/// throughout.
#[test]
fn one_host_cannot_take_every_connection() {
    let r = registrar_with("crowd", "    max_connections_per_host: 20\n");
    let asap = r.address("asap");
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(stream) = connect_from_attacker(asap) {
            held.push(stream);
        }
    }
    assert!(eventually(Duration::from_secs(10), || {
        counter(
            &r,
            "rserpool_listener_closed_total",
            "listener=\"asap\",reason=\"evicted_silent\"",
        ) >= 100
    }));
    let _pe = common::demo_pe(asap, "echo", "EchoPool", "roundrobin");
    assert!(eventually(Duration::from_secs(10), || resolve_ids(
        asap, "EchoPool"
    )
    .len()
        == 1));
    drop(held);
}

/// When the listener is full, the connection idle longest makes room for a newcomer.
#[test]
fn a_full_listener_closes_its_longest_idle_connection_for_a_newcomer() {
    let r = registrar_with(
        "full",
        "    max_connections: 20\n    first_message_timeout: 1s\n",
    );
    let asap = r.address("asap");
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = connect_from_attacker(asap).unwrap();
        stream.write_all(&resolution("Nobody")).unwrap();
        assert!(receive(&mut stream).is_some());
        held.push(stream);
    }
    let _pe = common::demo_pe(asap, "echo", "EchoPool", "roundrobin");
    assert!(eventually(Duration::from_secs(15), || resolve_ids(
        asap, "EchoPool"
    )
    .len()
        == 1));
    assert!(
        counter(
            &r,
            "rserpool_listener_closed_total",
            "listener=\"asap\",reason=\"evicted_idle\""
        ) >= 1
    );
}

/// 3 000 connections each holding a partial 64 KiB frame took 270 MB: unfinished
/// messages are now bounded for the whole listener.
#[test]
fn unfinished_messages_are_bounded_in_memory() {
    let r = registrar_with(
        "memory",
        "    max_connections_per_host: 100000\n    message_timeout: 60s\n    first_message_timeout: 60s\n    max_unfinished_message_bytes: 2097152\n",
    );
    let asap = r.address("asap");
    let before = r.rss_kib();
    let mut partial = vec![0u8; 60_000];
    partial[..4].copy_from_slice(&[0x03, 0x00, 0xff, 0xfc]);
    let mut held = Vec::new();
    for _ in 0..1000 {
        let Ok(mut stream) = connect_from_attacker(asap) else {
            continue;
        };
        let _ = stream.write_all(&partial);
        held.push(stream);
    }
    assert!(eventually(Duration::from_secs(20), || {
        counter(
            &r,
            "rserpool_listener_closed_total",
            "listener=\"asap\",reason=\"memory\"",
        ) >= 900
    }));
    let grown = r.rss_kib().saturating_sub(before);
    assert!(grown < 24 * 1024, "RSS grew by {grown} KiB");
    assert!(resolve_ids(asap, "Nobody").is_empty());
    let mut legit = TcpStream::connect(asap).unwrap();
    legit.write_all(&resolution("Nobody")).unwrap();
    assert!(receive(&mut legit).is_some(), "still answering");
    drop(held);
}

/// A flood of ASAP_ERROR messages wrote megabytes of log a second and never closed
/// the association: they now count as bad messages, and the log line is rate-limited.
#[test]
fn an_asap_error_flood_closes_the_association_and_the_log_stays_short() {
    let r = registrar_with("errors", "    max_malformed_messages: 16\n");
    let asap = r.address("asap");
    let error = AsapMessage::Error(ErrorReport {
        error: OperationError::single(ErrorCause::new(CauseCode::UNRECOGNIZED_MESSAGE)),
    })
    .encode()
    .unwrap();
    let mut flood = connect_from_attacker(asap).unwrap();
    for _ in 0..200 {
        // Writes fail once the registrar has had enough.
        if flood.write_all(&error).is_err() {
            break;
        }
    }
    assert!(
        closed_within(&mut flood, Duration::from_secs(10)),
        "flooder closed"
    );
    assert!(eventually(Duration::from_secs(5), || r
        .log_contains("too many malformed messages")));
    let lines = r
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("bad input"))
        .count();
    assert!(lines <= 3, "{lines} 'bad input' lines");
}

/// The registrar's answer to a registration sent over a new connection from
/// 127.0.0.1 (the PE's own host, another port): its cause, if refused.
fn register_as_stranger(asap: SocketAddr, pe_id: u32, pool: &str) -> Option<CauseCode> {
    let mut stranger = TcpStream::connect(asap).unwrap();
    stranger.write_all(&registration(pe_id, pool, 9)).unwrap();
    let answer = receive(&mut stranger).expect("an answer");
    let AsapMessage::RegistrationResponse(response) = AsapMessage::decode(&answer).unwrap().message
    else {
        panic!("expected a registration response");
    };
    response
        .reject
        .then(|| response.error.and_then(|e| e.first_code()))
        .flatten()
}

/// A second connection from the PE's host re-registered its identifier (moving its
/// port), and a registrar re-homed a PE homed at another registrar for anyone: a PE
/// identifier now stays with the association that registered it, or, homed elsewhere,
/// with the PE's own ASAP endpoint (address and port).
#[test]
fn a_pe_identifier_stays_with_its_pe() {
    let a = registrar_with("id", "    max_malformed_messages: 16\n");
    let b = Process::start(&common::registrar_args(&[
        "--peer",
        &a.address("enrp").to_string(),
    ]));
    let pe = common::demo_pe(a.address("asap"), "echo", "EchoPool", "roundrobin");
    let listed = |registrar: &Process| {
        common::resolve_pes(&registrar.address("asap").to_string(), "EchoPool", &[])
    };
    assert!(eventually(Duration::from_secs(15), || listed(&b).len() == 1));
    let original = listed(&a)[0].clone();
    let pe_id = u32::from_str_radix(
        original["id"].as_str().unwrap().trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert_eq!(
        register_as_stranger(a.address("asap"), pe_id, "EchoPool"),
        Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER),
        "at its home, over another connection"
    );
    assert_eq!(
        register_as_stranger(b.address("asap"), pe_id, "EchoPool"),
        Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER),
        "at another registrar"
    );
    for registrar in [&a, &b] {
        let now = listed(registrar);
        assert_eq!(now.len(), 1);
        assert_eq!(now[0]["user_transport"], original["user_transport"]);
    }
    // A fresh identifier is still welcome from the same host.
    assert_eq!(
        register_as_stranger(a.address("asap"), pe_id ^ 1, "Other"),
        None
    );
    drop(pe);
}
