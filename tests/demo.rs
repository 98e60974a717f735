//! `rserpool demo` (README "Quick start"): everything starts on loopback with no
//! configuration, TLS and authorization on; each gateway answers, the control-plane
//! attacks of RFC 5355 replayed by a stranger change nothing, and Ctrl-C stops every
//! process it started.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// The demo under test: a failed assertion must not leave it (and its ten children)
/// running and holding ports, so it is stopped as Ctrl-C would when dropped.
struct Demo(Child);

impl Demo {
    /// Ctrl-C: the demo's exit status once it has stopped (within 20 s).
    fn interrupt(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let mut exit = None;
        common::eventually(Duration::from_secs(20), || {
            exit = self.0.try_wait().ok().flatten();
            exit.is_some()
        });
        exit
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) && self.interrupt().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `rserpool demo` at `base` and waits for its banner: the demo, the banner's
/// lines, the PIDs of its ten children, and the lines it prints after the banner.
fn start_demo(base: u32) -> (Demo, Vec<String>, Vec<u32>, mpsc::Receiver<String>) {
    let mut demo = Demo(
        Command::new(common::binary())
            .args(["demo", "--base-port", &base.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (lines_tx, lines) = mpsc::channel();
    let stdout = demo.0.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut banner = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no 'demo ready': {banner:?}"));
        if line == "demo ready" {
            break;
        }
        banner.push(line);
    }
    let pids: Vec<u32> = banner
        .iter()
        .filter_map(|l| l.split("(pid").nth(1))
        .flat_map(|rest| {
            rest.trim_start_matches('s')
                .trim_end_matches(')')
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    assert_eq!(
        pids.len(),
        3 + 6 + 1,
        "registrars, PEs, gateway: {banner:?}"
    );
    (demo, banner, pids, lines)
}

/// `kill -9` of the demo takes its children with it (the kernel's parent-death
/// signal): none is left holding ports for the next demo.
#[test]
fn killing_the_demo_ends_its_children() {
    // Ports base+1 .. base+93, apart from the other test's and below the ephemeral
    // range (32768 on): a port there may be taken by any connection of a parallel test.
    let base = 30_000 + (std::process::id() % 27) * 100;
    let (mut demo, _, pids, _) = start_demo(base);
    demo.0.kill().unwrap();
    demo.0.wait().unwrap();
    let alive = |pid: &u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(
        common::eventually(Duration::from_secs(20), || !pids.iter().any(alive)),
        "children left running: {:?}",
        pids.iter().filter(|pid| alive(pid)).collect::<Vec<_>>()
    );
}

#[test]
fn demo_starts_everything_and_stops_it_on_ctrl_c() {
    // Ports base+1 .. base+90, below the ephemeral range.
    let base = 20_000 + (std::process::id() % 100) * 100;
    let (mut demo, banner, pids, lines) = start_demo(base);

    // The TCP gateway to the counter PEs.
    let mut counter = TcpStream::connect(("127.0.0.1", u16::try_from(base + 20).unwrap())).unwrap();
    counter
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    counter.write_all(b"a\nb\n").unwrap();
    let mut reader = BufReader::new(counter.try_clone().unwrap());
    let mut read_line = || {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    };
    // Each count says which PE counted.
    let (first, second) = (read_line(), read_line());
    assert!(
        first.starts_with("1 pe=0x") && second.starts_with("2 pe=0x"),
        "{first}{second}"
    );
    // A killed counter PE: the count goes on on the other one, and the demo starts a
    // new PE a few seconds later, saying so.
    let serving: String = first.trim_end().trim_start_matches("1 pe=").to_owned();
    let counter_pids: Vec<u32> = banner
        .iter()
        .find(|l| l.contains("kill -9 PID"))
        .and_then(|l| l.split("counter PEs (").nth(1))
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no counter PE PIDs in the banner: {banner:?}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(counter_pids.len(), 2, "{banner:?}");
    let _ = Command::new("kill")
        .args(["-KILL", &counter_pids[0].to_string()])
        .status();
    let _ = Command::new("kill")
        .args(["-KILL", &counter_pids[1].to_string()])
        .status();
    let mut said = Vec::new();
    while !said.iter().any(|l: &String| l.contains("started again")) {
        let line = lines
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("the demo did not start a killed PE again: {said:?}"));
        said.push(line);
    }
    assert!(said.iter().any(|l| l.contains("exited")), "{said:?}");
    counter.write_all(b"c\n").unwrap();
    let third = read_line();
    assert!(
        third.starts_with("3 pe=0x") && !third.contains(&serving),
        "the count goes on, on a new PE (was {serving}): {third}"
    );
    // The HTTP gateway.
    let mut http = TcpStream::connect(("127.0.0.1", u16::try_from(base + 80).unwrap())).unwrap();
    http.write_all(b"GET /hello HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("pe=0x") && text.contains("count=1"),
        "{text}"
    );
    // Its route is sticky: with the session cookie the count goes on.
    let cookie = text
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .and_then(|value| value.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {text}"))
        .to_owned();
    let mut http = TcpStream::connect(("127.0.0.1", u16::try_from(base + 80).unwrap())).unwrap();
    http.write_all(
        format!("POST /hello HTTP/1.1\r\nHost: demo\r\nCookie: {cookie}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
            .as_bytes(),
    )
    .unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    assert!(text.contains("count=2"), "{text}");
    // The DNS gateway.
    let dig = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &(base + 53).to_string(),
            "+short",
            "+time=3",
        ])
        .args(["WebPool.pool.example", "A"])
        .output()
        .unwrap();
    let answers = String::from_utf8_lossy(&dig.stdout).into_owned();
    // Both http PEs are on 127.0.0.1: one A record (an RRset holds each address once).
    assert_eq!(
        answers.lines().collect::<Vec<_>>(),
        ["127.0.0.1"],
        "{answers}"
    );

    // The attacks of the authenticated-control-plane issue, replayed as a stranger on
    // this host (plain TCP, no certificate): nothing changes.
    let tls_env = tls_environment(&banner);
    let before = web_pool(&tls_env, base);
    assert_eq!(before.len(), 2, "{before:?}");
    let attacker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    attacker.set_nonblocking(true).unwrap();
    attack(base, &before, attacker.local_addr().unwrap().port());
    for _ in 0..40 {
        let mut http =
            TcpStream::connect(("127.0.0.1", u16::try_from(base + 80).unwrap())).unwrap();
        http.write_all(b"GET /hello HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        http.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    assert!(
        matches!(attacker.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a request reached the attacker"
    );
    assert_eq!(web_pool(&tls_env, base), before);
    // The admin listeners guard /log and /api/ with the token the banner prints.
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", base + 90).parse().unwrap();
    let token = banner
        .iter()
        .find_map(|l| l.split("#token=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no token in the banner: {banner:?}"))
        .to_owned();
    let bearer = format!("Bearer {token}");
    let api = |authorization: &[(&str, &str)]| {
        common::try_request(admin, "GET", "/api/", authorization, b"").map(|r| r.status)
    };
    assert_eq!(api(&[]), Some(401));
    assert_eq!(api(&[("Authorization", &bearer)]), Some(200));

    // Ctrl-C: every process goes, the demo exits 0.
    drop(counter);
    let exit = demo.interrupt().expect("the demo stops");
    assert!(exit.success(), "{exit}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the demo"
        );
    }
}

/// The `RSERPOOL_TLS_*` variables the banner's `export` line gives for the tools.
fn tls_environment(banner: &[String]) -> Vec<(String, String)> {
    let line = banner
        .iter()
        .find(|l| l.trim_start().starts_with("export RSERPOOL_TLS_CERT="))
        .unwrap_or_else(|| panic!("no export line: TLS is not on by default: {banner:?}"));
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// WebPool's PEs as `rserpool dump --json` shows them: (id, home, ASAP endpoint).
fn web_pool(tls_env: &[(String, String)], base: u32) -> Vec<(u32, u32, u16)> {
    let output = Command::new(common::binary())
        .args([
            "dump",
            "--json",
            "--registrar",
            &format!("127.0.0.1:{}", base + 11),
        ])
        .envs(tls_env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let hex = |v: &serde_json::Value| {
        u32::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    };
    let mut pes: Vec<(u32, u32, u16)> = json["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pool_handle"] == "WebPool")
        .flat_map(|p| p["pool_elements"].as_array().unwrap().clone())
        .map(|pe| {
            let port = pe["asap_transport"]["port"].as_u64().unwrap();
            (
                hex(&pe["id"]),
                hex(&pe["home_registrar"]),
                u16::try_from(port).unwrap(),
            )
        })
        .collect();
    pes.sort_unstable();
    pes
}

/// Sends messages on a plain connection and reads whatever comes back for a moment.
fn send_plain(to: (&str, u16), messages: &[Vec<u8>]) {
    let Ok(mut stream) = TcpStream::connect(to) else {
        return;
    };
    for message in messages {
        if stream.write_all(message).is_err() {
            return;
        }
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

fn attack(base: u32, pool: &[(u32, u32, u16)], attacker_port: u16) {
    use rserpool_proto::wire::{
        AsapMessage, EndpointKeepAlive, EnrpBody, EnrpMessage, Policy, PoolElement, PoolElementId,
        PoolHandle, RegistrarId, Registration, ServerInformation, Transport, TransportProtocol,
        TransportUse, UpdateAction,
    };
    let web = PoolHandle::new(b"WebPool").unwrap();
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    let transport = |port| Transport {
        protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
        port,
        addresses: vec![loopback],
    };
    let element = |id, home| PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(home),
        registration_life_ms: 600_000,
        user_transport: transport(attacker_port),
        policy: Policy::RoundRobin,
        asap_transport: None,
    };
    let port = |offset: u32| u16::try_from(base + offset).unwrap();
    // 1 024 PEs registered into WebPool at every registrar, at the attacker's port.
    let registrations: Vec<Vec<u8>> = (1..=1024)
        .map(|id| {
            AsapMessage::Registration(Registration {
                pool_handle: web,
                pool_element: element(0x7000_0000 + id, 0),
            })
            .encode()
            .unwrap()
        })
        .collect();
    for offset in 1..=3 {
        send_plain(("127.0.0.1", port(offset)), &registrations);
    }
    // ENRP as the PEs' home registrars: delete them, redirect them, take the homes over,
    // plant fake peers.
    let enrp = |sender, body| {
        EnrpMessage {
            sender: RegistrarId(sender),
            receiver: RegistrarId::UNKNOWN,
            body,
        }
        .encode()
        .unwrap()
    };
    let mut messages = Vec::new();
    for &(id, home, _) in pool {
        for action in [UpdateAction::DEL_PE, UpdateAction::ADD_PE] {
            messages.push(enrp(
                home,
                EnrpBody::HandleUpdate {
                    takeover_suggested: false,
                    action,
                    pool_handle: web,
                    pool_element: element(id, home),
                },
            ));
        }
        messages.push(enrp(
            0x0bad,
            EnrpBody::InitTakeover {
                target: RegistrarId(home),
            },
        ));
    }
    messages.push(enrp(
        0x0bad,
        EnrpBody::ListResponse {
            reject: false,
            servers: (1..=5)
                .map(|n| ServerInformation {
                    server_id: RegistrarId(0x0bad_0000 + n),
                    transport: transport(attacker_port),
                })
                .collect(),
        },
    ));
    for offset in 11..=13 {
        send_plain(("127.0.0.1", port(offset)), &messages);
    }
    // A keep-alive with the H flag at every PE's ASAP endpoint.
    for &(id, _, asap) in pool {
        let claim = AsapMessage::EndpointKeepAlive(EndpointKeepAlive {
            home: true,
            server_id: RegistrarId(0x0bad),
            pool_handle: web,
            pe_id: Some(PoolElementId(id)),
        })
        .encode()
        .unwrap();
        send_plain(("127.0.0.1", asap), &[claim]);
    }
}
