//! End-to-end: the TCP gateway in front of real PEs (the `counter` demo with cookies,
//! echo backends behind `pe` agents). PEs are killed (-9) and frozen (SIGSTOP) under a
//! live client session; the client must see one continuous stream.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{Process, eventually, registrar};

fn counter_pe(asap: SocketAddr) -> Process {
    common::demo_pe(asap, "counter", "CounterPool", "RoundRobin")
}

/// A registrar, `count` counter PEs registered with it and a gateway in front of them.
fn counter_pool(count: usize) -> (Process, Vec<Process>, SocketAddr, Process) {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let pes: Vec<Process> = (0..count).map(|_| counter_pe(asap)).collect();
    let gateway = common::tcp_gateway(asap, "CounterPool");
    let listen = gateway.listener("tcp");
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "CounterPool").len() == count
    }));
    (registrar, pes, listen, gateway)
}

/// The gateway's Prometheus text, from its admin listener.
fn metrics(gateway: &Process) -> String {
    let (status, text) = common::admin_get(gateway.address("admin"), "/metrics");
    assert_eq!(status, 200, "{text}");
    text
}

/// The PE currently serving the gateway's only session, from its log.
fn serving_pe(gateway: &Process) -> Option<String> {
    let log = gateway.log.lock().unwrap();
    log.iter().rev().find_map(|line| {
        let field = if line.contains("session failed over") {
            "to="
        } else if line.contains("session started") {
            "pe="
        } else {
            return None;
        };
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(field))
            .map(str::to_owned)
    })
}

fn failovers(gateway: &Process) -> usize {
    gateway.log_count("session failed over")
}

/// The issue's scenario: a client sends 10 000 lines over one connection while the PE
/// serving it is killed with -9 (and a replacement started) again and again; it sees
/// every count exactly once and in order, and no reset.
#[test]
fn counter_sessions_survive_killed_pes() {
    let (registrar, mut pes, listen, gateway) = counter_pool(3);
    let asap = registrar.address("asap");

    let client = TcpStream::connect(listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = client.try_clone().unwrap();
    let lines = 10_000u64;
    let sender = thread::spawn(move || {
        for i in 0..lines {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
            if i % 100 == 99 {
                // Pause: the client paces its lines so PEs die mid-stream (the scenario).
                thread::sleep(Duration::from_millis(15));
            }
        }
    });
    let mut reader = BufReader::new(client);
    let mut expected = 1u64;
    let mut killed = 0;
    let mut line = String::new();
    while expected <= lines {
        line.clear();
        let read = reader.read_line(&mut line);
        assert!(
            matches!(read, Ok(n) if n > 0),
            "stream broke at count {expected}: {read:?}"
        );
        assert_eq!(
            line.trim().parse::<u64>().unwrap(),
            expected,
            "counts in order, each once"
        );
        expected += 1;
        // Every ~2 000 counts, kill the serving PE and start a replacement.
        if expected.is_multiple_of(2_000) && killed < 4 {
            let serving = serving_pe(&gateway).unwrap();
            let index = pes
                .iter()
                .position(|p| p.ready.get("pe") == Some(&serving))
                .unwrap();
            let mut victim = pes.remove(index);
            victim.child.kill().unwrap();
            let _ = victim.child.wait();
            pes.push(counter_pe(asap));
            killed += 1;
        }
    }
    sender.join().unwrap();
    assert_eq!(killed, 4);
    assert!(
        eventually(Duration::from_secs(5), || failovers(&gateway) >= 4),
        "{:?}",
        gateway.log.lock().unwrap()
    );
    // The same failovers in the metrics: with cookies, and a stall for each.
    let text = metrics(&gateway);
    common::assert_every_family_described(&text);
    let with_cookie = r#"rserpool_tcp_failovers_total{pool="CounterPool",cookie="true"}"#;
    assert!(common::metric(&text, with_cookie) >= Some(4.0), "{text}");
    let stalls = r#"rserpool_tcp_failover_stall_seconds_count{pool="CounterPool"}"#;
    assert!(common::metric(&text, stalls) >= Some(4.0), "{text}");
    assert_eq!(
        common::metric(&text, r#"rserpool_tcp_sessions_active{pool="CounterPool"}"#),
        Some(1.0)
    );
    // Per PE: the session went to five PEs (the first and one per failover); the killed
    // ones are counted as failed.
    let sum = |prefix: &str| common::metric_sum(&text, prefix);
    let per_pe = r#"rserpool_tcp_pe_sessions_total{pool="CounterPool",pe="0x"#;
    assert!(sum(per_pe) >= 5.0, "{text}");
    assert!(
        text.contains(r#"result="failed"} "#),
        "the killed PEs' sessions: {text}"
    );
    // Its pool user counted and timed the resolutions.
    assert!(
        sum("rserpool_pool_user_resolutions_total{") >= 5.0,
        "{text}"
    );
    assert!(
        sum("rserpool_pool_user_resolution_seconds_count{") >= 5.0,
        "{text}"
    );
}

/// A frozen PE (SIGSTOP: its connection stays open, it answers nothing) is detected by
/// the control channel's heartbeat timeout and the session re-homes with its cookie.
#[test]
fn a_frozen_pe_is_detected_by_timeout() {
    let (_registrar, pes, listen, gateway) = counter_pool(2);
    let mut client = TcpStream::connect(listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    for i in 1..=5u64 {
        client.write_all(b"x\n").unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line.trim().parse::<u64>().unwrap(), i);
    }
    let serving = serving_pe(&gateway).unwrap();
    let frozen = pes
        .iter()
        .find(|p| p.ready.get("pe") == Some(&serving))
        .unwrap();
    frozen.signal("STOP");
    let stopped = Instant::now();
    client.write_all(b"x\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim().parse::<u64>().unwrap(),
        6,
        "the count continued on another PE"
    );
    let stall = stopped.elapsed();
    assert!(stall < Duration::from_secs(10), "{stall:?}");
    // The log line may trail the bytes it describes.
    assert!(
        eventually(Duration::from_secs(5), || gateway
            .log_contains("failure=Timeout")),
        "{:?}",
        gateway.log.lock().unwrap()
    );
    frozen.signal("CONT");
}

/// A backend that reads the request and dies without answering: the gateway tries
/// another PE, transparently.
fn dying_backend() -> (SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 64];
            let _ = stream.read(&mut buffer);
            // Dies before answering.
            drop(stream);
        }
    });
    (address, handle)
}

fn agent(asap: SocketAddr, backend: SocketAddr, health: &str) -> Process {
    Process::start(&[
        "pe",
        "--pool",
        "EchoPool",
        "--backend",
        &backend.to_string(),
        "--registrar",
        &asap.to_string(),
        "--health",
        health,
        "--health-interval",
        "300ms",
    ])
}

fn echo_through(listen: SocketAddr, message: &[u8]) -> Vec<u8> {
    let mut client = TcpStream::connect(listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(message).unwrap();
    let mut answer = vec![0u8; message.len()];
    client.read_exact(&mut answer).unwrap();
    answer
}

/// An echo server, for the data-only tests.
fn echo_backend() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    thread::spawn(move || {
                        let mut buffer = [0u8; 4096];
                        while let Ok(n) = stream.read(&mut buffer) {
                            if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                // Pause: a non-blocking accept found nobody; look again shortly.
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (address, stop)
}

/// The PE identifier an agent registered (its one service), from its log.
fn registered_pe(agent: &Process) -> String {
    assert!(eventually(Duration::from_secs(10), || agent.log_contains("registered")));
    let log = agent.log.lock().unwrap();
    let line = log.iter().find(|l| l.contains("registered")).unwrap();
    // Where it registered, even before the registrar's ID is known.
    assert!(line.contains(" at=tcp://127.0.0.1:"), "{line}");
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("pe="))
        .unwrap()
        .to_owned()
}

/// Data-only PEs: a PE that dies before its first response byte is retried on another
/// PE transparently, and after a PE's death no new connection fails on it.
#[test]
fn data_only_pes_are_retried_before_any_answer() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let (good, stop_good) = echo_backend();
    let (other, stop_other) = echo_backend();
    let (dying, _dying_thread) = dying_backend();
    let agents = [
        agent(asap, good, "tcp"),
        agent(asap, other, "tcp"),
        agent(asap, dying, "none"),
    ];
    let gateway = common::tcp_gateway(asap, "EchoPool");
    let listen = gateway.listener("tcp");
    assert!(eventually(Duration::from_secs(10), || common::resolve_ids(
        asap, "EchoPool"
    )
    .len()
        == 3));

    // Round robin sends clients to the dying backend too (it accepts and closes: it is
    // reachable, so it is not reported and stays in the pool); each such client is
    // re-homed, and every one gets its answer.
    for i in 0..30 {
        let message = format!("hello {i}\n").into_bytes();
        assert_eq!(echo_through(listen, &message), message);
    }
    assert!(
        eventually(Duration::from_secs(5), || failovers(&gateway) >= 1),
        "the dying backend was retried: {:?}",
        gateway.log.lock().unwrap()
    );

    // One backend dies for good: clients connecting at once are re-homed transparently
    // (the gateway may still try it) ...
    let other_id = registered_pe(&agents[1]);
    stop_other.store(true, std::sync::atomic::Ordering::Relaxed);
    for i in 0..30 {
        let message = format!("after {i}\n").into_bytes();
        assert_eq!(echo_through(listen, &message), message);
    }
    // ... and once its agent's health check has taken it out of the pool (and the
    // gateway's one-second answer cache has expired), no connection goes near it.
    assert!(eventually(Duration::from_secs(10), || {
        !common::resolve_ids(asap, "EchoPool").contains(&other_id)
    }));
    // The gateway's own view (its answer cache) no longer lists it.
    let admin = gateway.address("admin");
    assert!(eventually(Duration::from_secs(10), || {
        let (status, view) = common::admin_get(admin, "/api/gateway");
        status == 200 && !view.contains(&other_id)
    }));
    let mark = gateway.log.lock().unwrap().len();
    for i in 0..30 {
        let message = format!("later {i}\n").into_bytes();
        assert_eq!(echo_through(listen, &message), message);
    }
    let log = gateway.log.lock().unwrap();
    let touching: Vec<&String> = log[mark..]
        .iter()
        .filter(|l| l.contains(&other_id))
        .collect();
    assert!(touching.is_empty(), "the dead PE was tried: {touching:?}");
    drop(log);
    stop_good.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGTERM drains: the listener closes at once, an open session goes on until its
/// client ends it, and then the gateway exits 0.
#[test]
fn sigterm_drains_open_sessions() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let (backend, stop_backend) = echo_backend();
    let _agent = agent(asap, backend, "tcp");
    let mut gateway = common::tcp_gateway(asap, "EchoPool");
    let listen = gateway.listener("tcp");
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "EchoPool").len() == 1
    }));
    let mut client = TcpStream::connect(listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 6];
    client.write_all(b"first\n").unwrap();
    client.read_exact(&mut answer).unwrap();

    gateway.signal("TERM");
    assert!(eventually(Duration::from_secs(5), || TcpStream::connect(
        listen
    )
    .is_err()));
    client.write_all(b"again\n").unwrap();
    client.read_exact(&mut answer).unwrap();
    assert_eq!(
        &answer, b"again\n",
        "the open session still works while draining"
    );
    assert!(
        gateway.child.try_wait().unwrap().is_none(),
        "still draining"
    );
    drop(client);
    let status = gateway
        .wait_exit(Duration::from_secs(5))
        .expect("exits once drained");
    assert!(status.success(), "{status:?}");
    stop_backend.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `/api/sessions` lists each open TCP session with its client, pool and PE, and the
/// failovers it went through; a closed session leaves the list.
#[test]
fn the_admin_api_lists_open_sessions() {
    let (_registrar, mut pes, listen, gateway) = counter_pool(2);
    let admin = gateway.address("admin");
    let mut client = TcpStream::connect(listen).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut answer = String::new();
    client.write_all(b"x\n").unwrap();
    reader.read_line(&mut answer).unwrap();
    assert_eq!(answer, "1\n");

    let sessions = |admin| -> serde_json::Value {
        serde_json::from_str(&common::admin_get(admin, "/api/sessions").1).unwrap()
    };
    let listed = sessions(admin);
    let row = &listed["tcp"][0];
    assert_eq!(listed["tcp"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(row["client"], client.local_addr().unwrap().to_string());
    assert_eq!(row["pool"], "CounterPool");
    assert_eq!(row["failovers"], 0);
    let serving = row["pe"].as_str().unwrap().to_owned();
    let index = pes.iter().position(|p| p.ready["pe"] == serving).unwrap();

    // Its PE dies: the session moves, and the row says so.
    pes[index].signal("KILL");
    pes[index].wait_exit(Duration::from_secs(5));
    answer.clear();
    client.write_all(b"y\n").unwrap();
    reader.read_line(&mut answer).unwrap();
    assert_eq!(answer, "2\n");
    let moved = sessions(admin);
    assert_eq!(moved["tcp"][0]["failovers"], 1, "{moved}");
    assert_ne!(moved["tcp"][0]["pe"], row["pe"]);

    drop(reader);
    drop(client);
    assert!(
        eventually(Duration::from_secs(5), || {
            sessions(admin)["tcp"].as_array().unwrap().is_empty()
        }),
        "{}\n{:?}",
        sessions(admin),
        gateway.log.lock().unwrap()
    );
}

/// A backend that takes each connection and, after reading, resets it (`reset`) or
/// closes it cleanly, counting them.
fn ending_backend(reset: bool) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 64];
            let _ = stream.read(&mut buffer);
            if reset {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            }
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(stream);
        }
    });
    (address, count)
}

/// Passive health for TCP sessions: a PE that resets every session is ejected after
/// five in a row (tried after the others), while one that merely closes its sessions
/// (as rsplib's PingPong PEs do after N requests) is not. Every session is echoed by
/// the healthy PE either way.
#[test]
fn a_pe_resetting_sessions_is_ejected_but_one_closing_them_is_not() {
    for reset in [true, false] {
        let registrar = registrar(&[]);
        let asap = registrar.address("asap");
        let (ending, ended) = ending_backend(reset);
        let (echo, _stop) = echo_backend();
        let _agents = [agent(asap, ending, "none"), agent(asap, echo, "none")];
        assert!(eventually(Duration::from_secs(10), || {
            common::resolve_ids(asap, "EchoPool").len() == 2
        }));
        let gateway = common::tcp_gateway(asap, "EchoPool");
        let listen = gateway.listener("tcp");
        let mut i = 0;
        let ejected = eventually(Duration::from_secs(15), || {
            i += 1;
            let message = format!("session {i:04}\n");
            assert_eq!(echo_through(listen, message.as_bytes()), message.as_bytes());
            gateway.log_contains("ejected after consecutive failures")
                || (!reset && ended.load(std::sync::atomic::Ordering::Relaxed) >= 10)
        });
        let ended = ended.load(std::sync::atomic::Ordering::Relaxed);
        if reset {
            assert!(ejected, "not ejected after {ended} resets");
            assert!(
                common::metric(
                    &metrics(&gateway),
                    r#"rserpool_tcp_pe_ejections_total{pool="EchoPool"}"#
                )
                .unwrap()
                    >= 1.0
            );
        } else {
            assert!(ended >= 10, "the closing PE was tried {ended} times");
            assert!(
                !gateway.log_contains("ejected"),
                "a PE closing sessions was ejected"
            );
        }
    }
}

/// Control-channel heartbeats at the listener's `heartbeat_interval` (100 ms here, below
/// the PE library's own 1 s): the PE answers each, so an idle session is not taken for
/// a dead PE after 300 ms, while a frozen PE is (its session moves on).
#[test]
fn short_heartbeats_keep_idle_sessions_and_find_frozen_pes() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let mut pes: Vec<Process> = (0..2).map(|_| counter_pe(asap)).collect();
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "CounterPool").len() == 2
    }));
    // One file per test process (this test is its only user).
    let config =
        std::env::temp_dir().join(format!("rserpool-heartbeat-{}.yaml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "pool_user:\n  registrars: [{asap}]\ngateway:\n  tcp:\n    - listen: 127.0.0.1:0\n      pool: CounterPool\n      heartbeat_interval: 100ms\n"
        ),
    )
    .unwrap();
    let gateway = Process::start(&[
        "gateway",
        "--config",
        config.to_str().unwrap(),
        "--log-level",
        "info,rserpool_gateways=debug",
    ]);
    let client = TcpStream::connect(gateway.listener("tcp")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = client.try_clone().unwrap();
    let mut reader = BufReader::new(client);
    let mut count = |expected: u64| {
        writer.write_all(b"tick\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), expected.to_string());
    };
    count(1);
    // Pause: idle for five times the PE's silence limit at this interval (the scenario
    // under test, not a wait for something to happen).
    thread::sleep(Duration::from_millis(1500));
    count(2);
    assert_eq!(
        failovers(&gateway),
        0,
        "an idle session was taken for a dead PE"
    );
    // The log is read by another thread: the line may lag the answer.
    let mut serving = None;
    assert!(eventually(Duration::from_secs(5), || {
        serving = serving_pe(&gateway);
        serving.is_some()
    }));
    let serving = serving.unwrap();
    let frozen = pes.iter_mut().find(|pe| pe.ready["pe"] == serving).unwrap();
    frozen.signal("STOP");
    let started = Instant::now();
    count(3);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(eventually(Duration::from_secs(5), || failovers(&gateway) == 1));
    frozen.signal("CONT");
    let _ = std::fs::remove_file(&config);
}

/// A TCP client arriving while no registrar answers is closed at once with the reason
/// in the log (it was held about 7 s, and the log blamed the pool).
#[test]
fn a_client_without_a_reachable_registrar_is_closed_at_once_and_told_why() {
    // Nothing listens on port 1.
    let gateway = common::tcp_gateway("127.0.0.1:1".parse().unwrap(), "CounterPool");
    let mut client = TcpStream::connect(gateway.listener("tcp")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"hello\n").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).unwrap_or(0), 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(eventually(Duration::from_secs(5), || gateway
        .log_contains("no registrar reachable")));
}
