//! Binary upgrade of the gateway and the registrar (SIGUSR2): the new process takes over every listening
//! socket, so no client is refused and no HTTP request fails while both run, and every
//! open TCP session with its state, so no session sees more than a pause; the old one
//! exits once they have left; a new process that cannot start leaves the old one
//! serving.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{ConfigFile, Process, eventually, registrar};

/// The gateway processes an upgrade started (not children of the test): stopped at
/// the end whatever happens.
struct Stray(Vec<u32>);

impl Drop for Stray {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn pid_in(file: &PathBuf) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// One line on a counter session: its answer is the session's next count.
fn step(writer: &mut TcpStream, reader: &mut BufReader<TcpStream>, count: &mut u64) {
    writer.write_all(b"line\n").unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    *count += 1;
    assert_eq!(answer.trim(), count.to_string());
}

/// GETs on one keep-alive connection after another until `stop`: each answered 200
/// counts in `answered`, anything else (no answer, a broken connection) in `failed`;
/// each connection opened in `connections`.
fn keep_alive_load(
    target: SocketAddr,
    stop: &AtomicBool,
    (answered, failed, connections): (&AtomicU64, &AtomicU64, &AtomicU64),
) {
    while !stop.load(Ordering::Relaxed) {
        connections.fetch_add(1, Ordering::Relaxed);
        let Ok(stream) = TcpStream::connect(target) else {
            failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        while !stop.load(Ordering::Relaxed) {
            match one_get(&mut writer, &mut reader) {
                Some((200, close)) => {
                    answered.fetch_add(1, Ordering::Relaxed);
                    if close {
                        break;
                    }
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

/// One GET on a keep-alive connection: the status, and whether the answer closes it.
fn one_get(writer: &mut TcpStream, reader: &mut BufReader<TcpStream>) -> Option<(u16, bool)> {
    writer
        .write_all(b"GET / HTTP/1.1\r\nHost: upgrade.test\r\n\r\n")
        .ok()?;
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let (mut length, mut close) = (0usize, false);
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(value) = header.strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
        close |= header == "connection: close";
    }
    let mut body = vec![0u8; length];
    std::io::Read::read_exact(reader, &mut body).ok()?;
    Some((status, close))
}

/// A TCP session that sends a line every 10 ms until `stop`; its lines sent.
fn chatty_session(target: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let (mut writer, mut reader) = session_to(target);
        let mut count = 0;
        while !stop.load(Ordering::Relaxed) {
            step(&mut writer, &mut reader, &mut count);
            // Pause: the session's pace (a line every 10 ms), as the scenario says.
            std::thread::sleep(Duration::from_millis(10));
        }
        count
    })
}

fn session_to(target: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let writer = TcpStream::connect(target).unwrap();
    writer
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let reader = BufReader::new(writer.try_clone().unwrap());
    (writer, reader)
}

/// DNS queries over UDP one after another until `stop`, each waiting up to 3 s for
/// its answer: (answered, unanswered).
fn dns_load(server: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let (mut answered, mut unanswered) = (0, 0);
        let mut id: u16 = 0;
        while !stop.load(Ordering::Relaxed) {
            id = id.wrapping_add(1);
            let mut query = vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            query[..2].copy_from_slice(&id.to_be_bytes());
            for label in ["WebPool", "pool", "test"] {
                query.push(u8::try_from(label.len()).unwrap());
                query.extend_from_slice(label.as_bytes());
            }
            query.extend_from_slice(&[0, 0, 1, 0, 1]);
            socket.send_to(&query, server).unwrap();
            let mut buffer = [0u8; 512];
            loop {
                match socket.recv(&mut buffer) {
                    Ok(n) if n >= 2 && buffer[..2] == id.to_be_bytes() => {
                        answered += 1;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        unanswered += 1;
                        break;
                    }
                }
            }
            // Pause: the query pace, as the scenario says.
            std::thread::sleep(Duration::from_millis(10));
        }
        (answered, unanswered)
    })
}

/// SIGUSR2 to `old`; the new process's PID once it wrote the pid file.
fn upgrade(old: u32, pid_file: &PathBuf, gateway: &Process) -> u32 {
    let signalled = std::process::Command::new("kill")
        .args(["-USR2", &old.to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let mut new = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            new = pid_in(pid_file).filter(|pid| *pid != old);
            new.is_some()
        }),
        "no new process wrote the pid file: {:#?}",
        gateway.log.lock().unwrap()
    );
    new.unwrap()
}

/// A new process that cannot start (`broken` written over the configuration file):
/// the old process `old` logs `upgrade failed` and stays the one in the pid file.
fn failed_upgrade(
    old: u32,
    (file, broken): (&ConfigFile, &str),
    pid_file: &PathBuf,
    log: &Process,
) {
    std::fs::write(&file.0, broken).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-USR2", &old.to_string()])
        .status();
    assert!(
        eventually(Duration::from_secs(20), || log
            .log_contains("upgrade failed")),
        "{:#?}",
        log.log.lock().unwrap()
    );
    assert!(alive(old));
    assert_eq!(pid_in(pid_file), Some(old));
}

/// SIGTERM to the last process `last`: it stops and removes its pid file.
fn stop_last(last: u32, pid_file: &std::path::Path) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &last.to_string()])
        .status();
    assert!(eventually(Duration::from_secs(15), || !alive(last)));
    assert!(
        !pid_file.exists(),
        "the pid file stays after the last process stopped"
    );
}

/// Binary upgrades in a row under load: TCP sessions sending a line every 10 ms, idle
/// TCP sessions, keep-alive HTTP requests and DNS queries. Every session goes over to
/// each new process with its count continuous (the sessions' sockets and state are
/// carried, not re-opened), so does every keep-alive connection (between two
/// requests), no HTTP request fails, no DNS query goes unanswered, and after each
/// upgrade one gateway process is left.
#[test]
fn upgrades_carry_the_sessions_and_lose_nothing() {
    const CHATTY: usize = 20;
    const IDLE: usize = 200;
    const UPGRADES: usize = 8;
    const BULK: usize = 1_000_000;
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let _counter = common::demo_pe(asap, "counter", "CounterPool", "RoundRobin");
    let _web = common::demo_pe(asap, "http", "WebPool", "RoundRobin");
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "CounterPool").len() == 1
            && common::resolve_ids(asap, "WebPool").len() == 1
    }));
    let file = ConfigFile::new(&format!(
        "pool_user:\n  registrars: [{asap}]\ngateway:\n  drain_timeout: 5s\n  tcp:\n    - {{listen: 127.0.0.1:0, pool: CounterPool}}\n  http:\n    - listen: 127.0.0.1:0\n      routes: [{{pool: WebPool}}]\n  dns:\n    - {{listen: 127.0.0.1:0, zone: pool.test.}}\n"
    ));
    let pid_file =
        std::env::temp_dir().join(format!("rserpool-upgrade-test-{}.pid", std::process::id()));
    let mut gateway = Process::start(&[
        "gateway",
        "--config",
        &file.0,
        "--admin",
        "127.0.0.1:0",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    let mut stray = Stray(Vec::new());
    let (tcp, http, dns) = (
        gateway.listener("tcp"),
        gateway.listener("http"),
        gateway.listener("dns"),
    );
    let admin = gateway.address("admin");
    assert_eq!(pid_in(&pid_file), Some(gateway.pid()));

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let http_load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || {
                keep_alive_load(http, &stop, (&counts[0], &counts[1], &counts[2]));
            })
        })
        .collect();
    let dns_load = dns_load(dns, stop.clone());
    let chatty: Vec<_> = (0..CHATTY)
        .map(|_| chatty_session(tcp, stop.clone()))
        .collect();
    let mut idle: Vec<_> = (0..IDLE)
        .map(|_| {
            let (mut writer, mut reader) = session_to(tcp);
            step(&mut writer, &mut reader, &mut 0);
            (writer, reader)
        })
        .collect();

    // A client that sends many lines without reading: the answers fill its socket
    // buffers and the gateway's, then back up in the gateway's queue towards it
    // (a quarter of a megabyte) when the first upgrade comes, and must go over with
    // the session (without them it misses counts: seen failing so).
    let bulk_socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    bulk_socket.set_recv_buffer_size(4096).unwrap();
    bulk_socket.connect(&tcp.into()).unwrap();
    let bulk_writer = TcpStream::from(bulk_socket);
    bulk_writer
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut bulk_reader = BufReader::new(bulk_writer.try_clone().unwrap());
    let bulk = std::thread::spawn(move || {
        let mut writer = bulk_writer;
        writer.write_all(&b"x\n".repeat(BULK)).unwrap();
        writer
    });
    assert!(eventually(Duration::from_secs(10), || {
        let (_, metrics) = common::admin_get(admin, "/metrics");
        common::metric_sum(&metrics, "rserpool_tcp_sessions_active") >= (CHATTY + IDLE + 1) as f64
    }));

    let mut old = gateway.pid();
    for round in 1..=UPGRADES {
        let new = upgrade(old, &pid_file, &gateway);
        stray.0.push(new);
        if round == 2 {
            let mut expected = 0;
            let mut line = String::new();
            while expected < BULK {
                line.clear();
                bulk_reader.read_line(&mut line).unwrap();
                expected += 1;
                assert_eq!(line.trim(), expected.to_string(), "bulk session");
            }
        }
        // The old process exits once its sessions have left and its HTTP connections
        // closed, well within its 5 s drain.
        assert!(
            eventually(Duration::from_secs(15), || !alive(old)),
            "round {round}: the old process {old} did not exit"
        );
        assert_eq!(
            common::admin_get(admin, "/healthz").0,
            200,
            "round {round}: admin"
        );
        old = new;
    }
    stop.store(true, Ordering::Relaxed);
    drop(bulk.join().unwrap());
    for session in chatty {
        assert!(session.join().unwrap() > 10);
    }
    // Each idle session's next line is its second: the same session, carried.
    for (writer, reader) in &mut idle {
        let mut count = 1;
        step(writer, reader, &mut count);
    }
    for thread in http_load {
        thread.join().unwrap();
    }
    let (dns_answered, unanswered) = dns_load.join().unwrap();
    let [answered, failed, connections] = &*counts;
    assert_eq!(failed.load(Ordering::Relaxed), 0, "HTTP requests failed");
    assert!(answered.load(Ordering::Relaxed) > 10);
    // The keep-alive connections went over with every upgrade: none was closed.
    assert_eq!(
        connections.load(Ordering::Relaxed),
        4,
        "keep-alive connections re-opened"
    );
    assert_eq!(
        unanswered, 0,
        "DNS queries unanswered ({dns_answered} answered)"
    );
    let (_, metrics) = common::admin_get(admin, "/metrics");
    let arrived: f64 = metrics
        .lines()
        .filter(|line| {
            line.starts_with("rserpool_tcp_sessions_handed_over_total{")
                && line.contains("direction=\"arrived\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        arrived >= (CHATTY + IDLE) as f64,
        "{arrived} sessions arrived in the last process"
    );
    assert!(gateway.wait_exit(Duration::from_secs(1)).is_some());
    // The pool user's cache went over with each upgrade (every new process's log is
    // in this one's, through the inherited stderr).
    assert!(
        gateway.log_count("upgrade: the old process's pool-user cache taken") >= UPGRADES,
        "{:#?}",
        gateway.log.lock().unwrap()
    );

    // A new process that cannot start (its configuration no longer loads): the old
    // one says so and keeps serving, its sessions too.
    let broken = "gateway:\n  tcp: [{listen: nonsense}]\n";
    failed_upgrade(old, (&file, broken), &pid_file, &gateway);
    let (writer, reader) = &mut idle[0];
    step(writer, reader, &mut 2);
    let (mut after, mut after_reader) = session_to(tcp);
    step(&mut after, &mut after_reader, &mut 0);

    stop_last(old, &pid_file);
}

/// A role started by `rserpool demo` (which ties its children to itself with
/// RSERPOOL_PARENT_PID) upgrades too: the new process, whose parent is the old one,
/// does not take that for its parent having died. (It did: the new process exited at
/// once and every upgrade under the demo failed.)
#[test]
fn a_role_tied_to_its_parent_upgrades() {
    let pid_file = std::env::temp_dir().join(format!(
        "rserpool-tied-upgrade-test-{}.pid",
        std::process::id()
    ));
    let parent = std::process::id().to_string();
    let args = common::registrar_args(&["--pid-file", pid_file.to_str().unwrap()]);
    let registrar = Process::start_with_env(&args, &[("RSERPOOL_PARENT_PID", &parent)]);
    let mut stray = Stray(Vec::new());
    let new = upgrade(registrar.pid(), &pid_file, &registrar);
    stray.0.push(new);
    assert!(eventually(Duration::from_secs(15), || !alive(
        registrar.pid()
    )));
    assert!(alive(new), "{:#?}", registrar.log.lock().unwrap());
    stop_last(new, &pid_file);
}

/// PE agents have no in-place upgrade: SIGUSR2 is logged and they go on serving
/// (its default action would end them).
#[test]
fn a_pe_agent_logs_sigusr2_and_goes_on() {
    let registrar = registrar(&[]);
    let pe = common::demo_pe(registrar.address("asap"), "echo", "EchoPool", "RoundRobin");
    pe.signal("USR2");
    assert!(eventually(Duration::from_secs(10), || pe
        .log_contains("SIGUSR2 ignored")));
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(registrar.address("asap"), "EchoPool").len() == 1
    }));
}

/// Binary upgrades of a registrar with a peer and three PEs, under handle resolutions
/// (each over an association of its own): every resolution answers all three PEs (the
/// listening sockets and the handlespace go over; associations arriving meanwhile
/// wait for the new process), every new process has the same registrar ID, the peer
/// starts no takeover (RFC 5353 §3.6) and keeps the PEs at their home; a new process
/// that cannot start leaves the old one serving.
#[test]
fn registrar_upgrades_keep_the_pool_resolvable_and_start_no_takeover() {
    const UPGRADES: usize = 5;
    let peer = registrar(&[]);
    let file = ConfigFile::new("log:\n  level: info\n");
    let pid_file = std::env::temp_dir().join(format!(
        "rserpool-registrar-upgrade-test-{}.pid",
        std::process::id()
    ));
    let peer_enrp = peer.address("enrp").to_string();
    let args = common::registrar_args(&[
        "--config",
        &file.0,
        "--peer",
        &peer_enrp,
        "--admin",
        "127.0.0.1:0",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    let mut upgraded = Process::start(&args);
    let mut stray = Stray(Vec::new());
    let (asap, id) = (upgraded.address("asap"), upgraded.ready["id"].clone());
    let admin = upgraded.address("admin");
    let pes: Vec<Process> = (0..3)
        .map(|_| common::demo_pe(asap, "echo", "EchoPool", "RoundRobin"))
        .collect();
    assert!(eventually(Duration::from_secs(15), || {
        common::homes(peer.address("enrp")).len() == 3
    }));

    let stop = Arc::new(AtomicBool::new(false));
    // Each answer counts the PEs homed at the upgraded registrar's ID.
    let resolutions = {
        let (stop, id, asap) = (stop.clone(), id.clone(), asap.to_string());
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let pes = common::resolve_pes(&asap, "EchoPool", &[]);
                answers.push(pes.iter().filter(|pe| pe["home_registrar"] == *id).count());
            }
            answers
        })
    };
    let mut old = upgraded.pid();
    for _ in 0..UPGRADES {
        let new = upgrade(old, &pid_file, &upgraded);
        stray.0.push(new);
        assert!(
            eventually(Duration::from_secs(15), || !alive(old)),
            "the old registrar did not exit"
        );
        old = new;
        // The PEs re-registered at the new process (their associations to the old
        // one closed) before the next upgrade.
        assert!(eventually(Duration::from_secs(15), || {
            let (_, metrics) = common::admin_get(admin, "/metrics");
            common::metric(
                &metrics,
                "rserpool_registrar_registrations_total{kind=\"renewal\"}",
            ) >= Some(3.0)
        }));
    }
    stop.store(true, Ordering::Relaxed);
    let answers = resolutions.join().unwrap();
    assert!(answers.len() >= UPGRADES, "{answers:?}");
    assert!(
        answers.iter().all(|count| *count == 3),
        "a resolution at the upgraded registrar missed PEs: {answers:?}"
    );
    let taken = upgraded.log_count("upgrade: the old process's handlespace taken");
    assert_eq!(taken, UPGRADES, "{:#?}", upgraded.log.lock().unwrap());
    let ids = upgraded.log_count(&format!("id={id}"));
    assert!(ids > UPGRADES, "a new process took another registrar ID");
    assert!(
        !peer.log_contains("starting takeover"),
        "{:#?}",
        peer.log.lock().unwrap()
    );
    let at_peer = common::homes(peer.address("enrp"));
    assert_eq!(at_peer.len(), 3);
    assert!(at_peer.values().all(|home| *home == id), "{at_peer:?}");

    // A new process that cannot start: the old one says so and goes on serving, and
    // accepting.
    failed_upgrade(
        old,
        (&file, "registrar:\n  asap: nonsense\n"),
        &pid_file,
        &upgraded,
    );
    assert_eq!(common::resolve_ids(asap, "EchoPool").len(), 3);
    stop_last(old, &pid_file);
    let _ = upgraded.wait_exit(Duration::from_secs(5));
    drop(pes);
}
