//! rsplib's PingPong and CalcApp services on our PEs (`pe --serve pingpong|calcapp`),
//! used through the TCP gateway as a legacy client would: the cookies carry a session
//! across PEs that close it (`--failure-after`) or die. (rsplib's own clients against
//! these PEs over SCTP: tests/sctp.rs.)

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Process, eventually, registrar};

/// `pe --serve KIND` in `pool` with `extra` flags.
fn service_pe(asap: SocketAddr, kind: &str, pool: &str, extra: &[&str]) -> Process {
    let asap = asap.to_string();
    let mut args = vec![
        "pe",
        "--serve",
        kind,
        "--pool",
        pool,
        "--registrar",
        &asap,
        "--reregistration-interval",
        "5s",
    ];
    args.extend_from_slice(extra);
    Process::start(&args)
}

/// Reads one rsplib service message (type, flags, 16-bit length, body).
fn read_message(stream: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).unwrap();
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut body = vec![0u8; length - 4];
    stream.read_exact(&mut body).unwrap();
    [&header[..], &body].concat()
}

fn u64_at(message: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(message[at..at + 8].try_into().unwrap())
}

/// 20 Pings through the gateway to two PingPong PEs that close every session after 5
/// replies: every Pong comes, and the reply numbers go on 1, 2, 3, ... across the
/// failovers (the cookie), as `pingpongclient` checks ("Detected gap").
#[test]
fn pingpong_reply_numbers_have_no_gap_across_failovers() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let _pes: Vec<Process> = (0..2)
        .map(|_| service_pe(asap, "pingpong", "PingPongPool", &["--failure-after", "5"]))
        .collect();
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "PingPongPool").len() == 2
    }));
    let gateway = common::tcp_gateway(asap, "PingPongPool");
    let mut client = TcpStream::connect(gateway.listener("tcp")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for number in 1..=20u64 {
        let ping = [&[1u8, 0, 0, 16][..], &number.to_be_bytes(), b"ping"].concat();
        client.write_all(&ping).unwrap();
        let pong = read_message(&mut client);
        assert_eq!(pong[0], 2, "a Pong");
        assert_eq!(u64_at(&pong, 4), number, "the Ping's number");
        assert_eq!(u64_at(&pong, 12), number, "reply numbers without a gap");
        assert_eq!(&pong[20..], b"ping");
    }
    let failovers = gateway.log_count("session failed over");
    assert!(
        failovers >= 3,
        "the PEs closed the session every 5 replies: {failovers} failovers"
    );
}

/// A CalcApp message: type, flags, length 24, job ID, size, completed.
fn calcapp(kind: u8, job: u32, size: u64, completed: u64) -> Vec<u8> {
    [
        &[kind, 0, 0, 24][..],
        &job.to_be_bytes(),
        &size.to_be_bytes(),
        &completed.to_be_bytes(),
    ]
    .concat()
}

/// A CalcApp job through the gateway whose PE is killed 3 s into its 5 s: the job
/// completes on the other PE, which resumed it from the last cookie instead of
/// starting over.
#[test]
fn a_calcapp_job_survives_its_pe_from_the_cookie() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let fast_cookies = [
        "--calculations-per-second",
        "100000",
        "--cookie-max-time",
        "200ms",
    ];
    let mut pes: Vec<Process> = (0..2)
        .map(|_| service_pe(asap, "calcapp", "CalcAppPool", &fast_cookies))
        .collect();
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "CalcAppPool").len() == 2
    }));
    let gateway = common::tcp_gateway(asap, "CalcAppPool");
    let mut client = TcpStream::connect(gateway.listener("tcp")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // 500 000 calculations: 5 s at 100 000 a second.
    client.write_all(&calcapp(1, 7, 500_000, 0)).unwrap();
    let accept = read_message(&mut client);
    assert_eq!(accept[0], 2, "accepted: {accept:?}");
    let serving = gateway
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.contains("session started").then(|| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix("pe="))
                    .map(str::to_owned)
            })
        })
        .flatten()
        .unwrap();
    let index = pes.iter().position(|pe| pe.ready["pe"] == serving).unwrap();
    let pid = pes[index].pid().to_string();
    let accepted = std::time::Instant::now();
    let killer = std::thread::spawn(move || {
        // Pause: the kill's moment is the thing under test (3 s into a 5 s job, with
        // cookies every 0.2 s): nothing observable marks it.
        std::thread::sleep(Duration::from_secs(3));
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap();
    });
    loop {
        let message = read_message(&mut client);
        match message[0] {
            // The PE's keep-alive: acknowledged, or the PE drops the job.
            6 => client.write_all(&calcapp(7, 7, 500_000, 0)).unwrap(),
            5 => {
                assert_eq!(u64_at(&message, 8), 500_000);
                assert_eq!(u64_at(&message, 16), 500_000, "completed");
                break;
            }
            other => panic!("unexpected CalcApp message type {other}: {message:?}"),
        }
    }
    // The calculations are paced by the clock: resumed, the job takes its 5 s and the
    // failover; started over, 3 s + 5 s at least.
    let took = accepted.elapsed();
    assert!(
        took < Duration::from_secs(7),
        "the job took {took:?}: the new PE started it over"
    );
    killer.join().unwrap();
    assert!(
        pes[index].wait_exit(Duration::from_secs(5)).is_some(),
        "the PE was killed"
    );
    let survivor = &pes[1 - index];
    assert!(
        survivor.log_contains("CalcApp job resumed from a cookie"),
        "the surviving PE did not resume the job"
    );
    let resumed_at: u64 = survivor
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("CalcApp job resumed"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("completed="))
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        resumed_at > 0,
        "resumed from the start: the cookie carried nothing"
    );
}
