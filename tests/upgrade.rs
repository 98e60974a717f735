//! Binary upgrade of the gateway (SIGUSR2): the new process takes over every listening
//! socket, so no client is refused and no HTTP request fails while both run; the old
//! one's open sessions go on until `drain_timeout`, then it exits; a new process that
//! cannot start leaves the old one serving.

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
/// counts in `answered`, anything else (no answer, a broken connection) in `failed`.
fn keep_alive_load(
    target: SocketAddr,
    stop: &AtomicBool,
    answered: &AtomicU64,
    failed: &AtomicU64,
) {
    while !stop.load(Ordering::Relaxed) {
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

#[test]
fn sigusr2_hands_the_listeners_to_a_new_process() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let _counter = common::demo_pe(asap, "counter", "CounterPool", "RoundRobin");
    let _web = common::demo_pe(asap, "http", "WebPool", "RoundRobin");
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "CounterPool").len() == 1
            && common::resolve_ids(asap, "WebPool").len() == 1
    }));
    let file = ConfigFile::new(&format!(
        "pool_user:\n  registrars: [{asap}]\ngateway:\n  drain_timeout: 3s\n  tcp:\n    - {{listen: 127.0.0.1:0, pool: CounterPool}}\n  http:\n    - listen: 127.0.0.1:0\n      routes: [{{pool: WebPool}}]\n  dns:\n    - {{listen: 127.0.0.1:0, zone: pool.test.}}\n"
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

    // HTTP requests all the time on four keep-alive connections, each sending its next
    // request as soon as it has an answer: none may fail (a connection the old process
    // closes must be closed after an answer that says so, not under a request).
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
            std::thread::spawn(move || keep_alive_load(http, &stop, &answered, &failed))
        })
        .collect();
    let mut writer = TcpStream::connect(tcp).unwrap();
    writer
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(writer.try_clone().unwrap());
    let mut count = 0;
    step(&mut writer, &mut reader, &mut count);

    let mut old = gateway.pid();
    for round in 1..=3 {
        let signalled = std::process::Command::new("kill")
            .args(["-USR2", &old.to_string()])
            .status()
            .unwrap();
        assert!(signalled.success());
        let mut new = None;
        assert!(
            eventually(Duration::from_secs(20), || {
                new = pid_in(&pid_file).filter(|pid| *pid != old);
                new.is_some()
            }),
            "round {round}: no new process wrote the pid file: {:#?}",
            gateway.log.lock().unwrap()
        );
        let new = new.unwrap();
        stray.0.push(new);
        // The first process's session goes on while it drains.
        if round == 1 {
            step(&mut writer, &mut reader, &mut count);
        }
        // New clients reach the new process on the same ports.
        let mut fresh = TcpStream::connect(tcp).unwrap();
        fresh
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut fresh_reader = BufReader::new(fresh.try_clone().unwrap());
        let mut fresh_count = 0;
        step(&mut fresh, &mut fresh_reader, &mut fresh_count);
        assert!(
            TcpStream::connect(dns).is_ok(),
            "round {round}: DNS over TCP"
        );
        assert_eq!(
            common::admin_get(admin, "/healthz").0,
            200,
            "round {round}: admin"
        );
        // The old process exits once its sessions are drained (3 s at most).
        drop((fresh, fresh_reader));
        assert!(
            eventually(Duration::from_secs(15), || !alive(old)),
            "round {round}: the old process {old} did not exit"
        );
        old = new;
    }
    assert!(gateway.wait_exit(Duration::from_secs(1)).is_some());
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "HTTP requests failed during the upgrades"
    );
    assert!(answered.load(Ordering::Relaxed) > 10);
    // The first process's session was closed at the end of its drain.
    let mut rest = String::new();
    assert!(
        matches!(reader.read_line(&mut rest), Ok(0) | Err(_)),
        "{rest:?}"
    );

    // A new process that cannot start (its configuration no longer loads): the old
    // one says so and keeps serving.
    std::fs::write(&file.0, "gateway:\n  tcp: [{listen: nonsense}]\n").unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-USR2", &old.to_string()])
        .status();
    assert!(
        eventually(Duration::from_secs(20), || gateway
            .log_contains("upgrade failed")),
        "{:#?}",
        gateway.log.lock().unwrap()
    );
    assert!(alive(old));
    assert_eq!(pid_in(&pid_file), Some(old));
    let mut after = TcpStream::connect(tcp).unwrap();
    after
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut after_reader = BufReader::new(after.try_clone().unwrap());
    step(&mut after, &mut after_reader, &mut 0);

    // SIGTERM to the last process: it stops and removes its pid file.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &old.to_string()])
        .status();
    assert!(eventually(Duration::from_secs(15), || !alive(old)));
    assert!(
        !pid_file.exists(),
        "the pid file stays after the last process stopped"
    );
}

/// The other roles have no in-place upgrade: SIGUSR2 is logged and they go on serving
/// (its default action would end them).
#[test]
fn a_registrar_logs_sigusr2_and_goes_on() {
    let registrar = registrar(&[]);
    registrar.signal("USR2");
    assert!(eventually(Duration::from_secs(10), || registrar
        .log_contains("SIGUSR2 ignored")));
    let _pe = common::demo_pe(registrar.address("asap"), "echo", "EchoPool", "RoundRobin");
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(registrar.address("asap"), "EchoPool").len() == 1
    }));
}
