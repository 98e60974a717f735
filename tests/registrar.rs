//! End-to-end: `rserpool registrar`, `pe`, `resolve` and `dump` as real processes on
//! 127.0.0.1, talking the TCP mapping; hostile input over real sockets.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use common::{Backend, Process, eventually, receive, registrar, run, send};
use rserpool_proto::wire::{
    AsapMessage, CauseCode, HandleResolution, Policy, PoolElement, PoolElementId, PoolHandle,
    RegistrarId, Registration, Transport, TransportProtocol, TransportUse,
};

/// Backend port -> PE id, as `rserpool resolve --json` reports them.
fn resolved(registrar: SocketAddr, pool: &str) -> BTreeMap<u16, String> {
    let registrar = registrar.to_string();
    let (code, stdout, _) = run(&[
        "resolve",
        pool,
        "--registrar",
        &registrar,
        "--count",
        "100",
        "--json",
        "--timeout",
        "5s",
    ]);
    if code != 0 {
        return BTreeMap::new();
    }
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    json["pool_elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pe| {
            let port = u16::try_from(pe["user_transport"]["port"].as_u64().unwrap()).unwrap();
            (port, pe["id"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn agent(registrar: SocketAddr, backend: SocketAddr) -> Process {
    common::agent(
        registrar,
        backend,
        &["--health", "http:/health", "--health-interval", "300ms"],
    )
}

/// The scenario: two `pe` agents in front of two HTTP backends; `resolve`
/// returns both; kill -9 one agent and it disappears (its association goes down,
/// RFC 5352 §3.4); stop a backend and its agent deregisters it within its health-check
/// interval; restart the backend and it comes back.
#[test]
fn pe_agents_register_fail_and_recover() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let backend_a = Backend::start();
    let backend_b = Backend::start();
    let (port_a, port_b) = (backend_a.address.port(), backend_b.address.port());
    let mut agent_a = agent(asap, backend_a.address);
    let _agent_b = agent(asap, backend_b.address);
    assert!(
        eventually(Duration::from_secs(10), || resolved(asap, "WebPool").len()
            == 2),
        "both PEs registered: {:?}",
        registrar.log.lock().unwrap()
    );

    // `dump` shows both, with their home registrar and ASAP transport.
    let (code, dump, _) = run(&[
        "dump",
        "--registrar",
        &registrar.address("enrp").to_string(),
    ]);
    assert_eq!(code, 0);
    assert!(dump.contains("pool WebPool (2 PE)"), "{dump}");
    assert!(
        dump.contains(&format!("home {}", registrar.ready["id"])),
        "{dump}"
    );
    // `--enrp` names what it wants, and takes a host name.
    let enrp_port = registrar.address("enrp").port();
    let (code, by_name, stderr) = run(&["dump", "--enrp", &format!("localhost:{enrp_port}")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(by_name.contains("pool WebPool (2 PE)"), "{by_name}");

    agent_a.child.kill().unwrap();
    let _ = agent_a.child.wait();
    assert!(
        eventually(Duration::from_secs(10), || resolved(asap, "WebPool")
            .keys()
            .copied()
            .collect::<Vec<_>>()
            == [port_b]),
        "the killed agent's PE left within the keep-alive timeout"
    );

    let address_b = backend_b.stop();
    assert!(
        eventually(Duration::from_secs(5), || resolved(asap, "WebPool")
            .is_empty()),
        "the agent deregistered its unhealthy backend"
    );
    let _backend_b = Backend::start_at(address_b);
    assert!(
        eventually(Duration::from_secs(5), || resolved(asap, "WebPool")
            .contains_key(&port_b)),
        "the backend came back"
    );
    let _ = port_a;
}

/// SIGTERM makes the agent deregister before it exits.
#[test]
fn pe_agent_deregisters_on_sigterm() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let backend = Backend::start();
    let mut agent = agent(asap, backend.address);
    assert!(eventually(Duration::from_secs(10), || resolved(
        asap, "WebPool"
    )
    .len()
        == 1));
    agent.signal("TERM");
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent exits");
    assert!(status.success());
    assert!(
        agent.log_contains("confirmed=true"),
        "{:?}",
        agent.log.lock().unwrap()
    );
    // The log is read by another thread: the line may lag.
    assert!(eventually(Duration::from_secs(5), || registrar
        .log_contains("reason=Deregistered")));
}

fn registration(pe: u32, handle: &str) -> Vec<u8> {
    AsapMessage::Registration(Registration {
        pool_handle: PoolHandle::new(handle.as_bytes()).unwrap(),
        pool_element: PoolElement {
            id: PoolElementId(pe),
            home_registrar: RegistrarId::UNKNOWN,
            registration_life_ms: 60_000,
            user_transport: Transport {
                protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
                port: 9000,
                addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            },
            policy: Policy::RoundRobin,
            asap_transport: None,
        },
    })
    .encode()
    .unwrap()
}

/// Reads until the peer closes (true) or 5 s pass (false).
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Hostile input over a real socket: garbage, unframeable lengths, truncated and
/// oversized messages, floods of registrations and resolutions. The registrar answers
/// with errors or closes the offending connection, and keeps serving others.
#[test]
fn hostile_input_never_crashes_the_registrar() {
    let dir = std::env::temp_dir().join(format!("rserpool-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("limits.yaml");
    std::fs::write(
        &config,
        "registrar:\n  limits:\n    max_pool_elements_per_association: 50\n    max_handle_resolutions_per_second: 20\n    max_malformed_messages: 5\n",
    )
    .unwrap();
    let registrar = registrar(&["--config", config.to_str().unwrap()]);
    let asap = registrar.address("asap");

    // A length below the 4-byte header cannot be framed: the connection is closed.
    let mut broken = TcpStream::connect(asap).unwrap();
    send(
        &mut broken,
        &[0x01, 0x00, 0x00, 0x02, 0xde, 0xad, 0xbe, 0xef],
    );
    assert!(closed_by_peer(&mut broken), "unframeable stream closed");

    // Well-framed garbage: answered with ASAP_ERROR (unrecognized message), and after
    // too many bad messages the connection is closed.
    let mut noisy = TcpStream::connect(asap).unwrap();
    for _ in 0..10 {
        // Writes may fail once the registrar has had enough and closed.
        let _ = std::io::Write::write_all(&mut noisy, &[0x77, 0x00, 0x00, 0x08, 1, 2, 3, 4]);
    }
    let reply = receive(&mut noisy).unwrap();
    let AsapMessage::Error(report) = AsapMessage::decode(&reply).unwrap().message else {
        panic!("expected ASAP_ERROR")
    };
    assert_eq!(
        report.error.first_code(),
        Some(CauseCode::UNRECOGNIZED_MESSAGE)
    );
    assert!(
        closed_by_peer(&mut noisy),
        "closed after too many malformed messages"
    );

    // A truncated message, and an oversized length, then the peer goes away.
    let mut truncated = TcpStream::connect(asap).unwrap();
    send(&mut truncated, &registration(1, "Hostile")[..20]);
    drop(truncated);
    let mut oversized = TcpStream::connect(asap).unwrap();
    send(&mut oversized, &[0x05, 0x00, 0xff, 0xff]);
    let _ = std::io::Write::write_all(&mut oversized, &[0u8; 100]);
    drop(oversized);

    // A flood of registrations over one association: the first 50 are accepted, the
    // rest refused with "lack of resources".
    let mut flood = TcpStream::connect(asap).unwrap();
    let mut accepted = 0;
    let mut refused = 0;
    for pe in 1..=120 {
        send(&mut flood, &registration(pe, "Flood"));
        let AsapMessage::RegistrationResponse(response) =
            AsapMessage::decode(&receive(&mut flood).unwrap())
                .unwrap()
                .message
        else {
            panic!("expected a registration response")
        };
        if response.reject {
            assert_eq!(
                response.error.unwrap().first_code(),
                Some(CauseCode::LACK_OF_RESOURCES)
            );
            refused += 1;
        } else {
            accepted += 1;
        }
    }
    assert_eq!((accepted, refused), (50, 70));

    // A burst of handle resolutions beyond the per-association rate is answered with
    // "lack of resources", never with silence.
    let mut resolver = TcpStream::connect(asap).unwrap();
    let request = AsapMessage::HandleResolution(HandleResolution {
        pool_handle: PoolHandle::new(b"Flood").unwrap(),
        items: Some(3),
    })
    .encode()
    .unwrap();
    let mut answered = 0;
    let mut limited = 0;
    for _ in 0..60 {
        send(&mut resolver, &request);
        let AsapMessage::HandleResolutionResponse(response) =
            AsapMessage::decode(&receive(&mut resolver).unwrap())
                .unwrap()
                .message
        else {
            panic!("expected a handle resolution response")
        };
        match response.error {
            None => answered += 1,
            Some(error) => {
                assert_eq!(error.first_code(), Some(CauseCode::LACK_OF_RESOURCES));
                limited += 1;
            }
        }
    }
    assert!(
        answered >= 20 && limited >= 1,
        "answered {answered}, limited {limited}"
    );

    // Another client is served throughout, and the process is alive.
    assert_eq!(common::resolve_ids(asap, "Flood").len(), 50);
    let mut registrar = registrar;
    assert!(
        registrar.child.try_wait().unwrap().is_none(),
        "registrar still running"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A broken configuration exits with status 64 and a one-line reason naming the key.
#[test]
fn bad_configuration_exits_64_with_the_key_path() {
    let dir = std::env::temp_dir().join(format!("rserpool-badconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bad.yaml");
    std::fs::write(&config, "registrar:\n  limits:\n    max_poools: 5\n").unwrap();
    let (code, _, stderr) = run(&["registrar", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 64, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("registrar.limits.max_poools"), "{stderr}");
    let (code, _, stderr) = run(&[
        "registrar",
        "--config",
        dir.join("missing.yaml").to_str().unwrap(),
    ]);
    assert_eq!(code, 64, "{stderr}");
    let (code, _, stderr) = run(&[
        "registrar",
        "--asap",
        "127.0.0.1:0",
        "--enrp",
        "127.0.0.1:0",
        "--id",
        "0",
    ]);
    assert_eq!(code, 64, "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Command-line mistakes are usage errors too (64, as the README says, not clap's
/// 2), and a half-given service says what is missing; `--help` is no error.
#[test]
fn command_line_mistakes_exit_64_and_say_what_is_missing() {
    let (code, _, stderr) = run(&["registrar", "--no-such-flag"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
    let (code, _, stderr) = run(&["pe", "--pool", "WebPool"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("needs --backend"), "{stderr}");
    let (code, _, stderr) = run(&["pe", "--backend", "127.0.0.1:8080"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--pool"), "{stderr}");
    // One address for two listeners is a mistake, not another process on the port.
    let (code, _, stderr) = run(&[
        "registrar",
        "--asap",
        "127.0.0.1:23863",
        "--enrp",
        "127.0.0.1:23863",
    ]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("different ports"), "{stderr}");
    // An option the other flags make pointless is refused, not silently ignored.
    let (code, _, stderr) = run(&[
        "pe",
        "--serve",
        "echo",
        "--pool",
        "P",
        "--asap",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--asap"), "{stderr}");
    let (code, stdout, _) = run(&["registrar", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("Usage"), "{stdout}");
}

/// SIGHUP reloads the configuration without dropping associations; SIGTERM stops.
#[test]
fn sighup_reloads_and_sigterm_stops() {
    let dir = std::env::temp_dir().join(format!("rserpool-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("registrar.yaml");
    std::fs::write(&config, "log:\n  level: info\n").unwrap();
    let mut registrar = registrar(&["--config", config.to_str().unwrap()]);
    let asap = registrar.address("asap");
    let mut association = TcpStream::connect(asap).unwrap();
    send(&mut association, &registration(7, "Kept"));
    assert!(receive(&mut association).is_some());

    std::fs::write(
        &config,
        "log:\n  level: debug\nregistrar:\n  default_items: 5\n",
    )
    .unwrap();
    registrar.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || registrar
        .log_contains("configuration reloaded")));
    // The association survived the reload: the PE is still registered.
    assert_eq!(common::resolve_ids(asap, "Kept").len(), 1);

    std::fs::write(&config, "registrar:\n  no_such_key: 1\n").unwrap();
    registrar.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || registrar
        .log_contains("reload failed")));
    assert_eq!(common::resolve_ids(asap, "Kept").len(), 1, "still serving");

    registrar.signal("TERM");
    let status = registrar
        .wait_exit(Duration::from_secs(5))
        .expect("exits on SIGTERM");
    assert!(status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Tools fail clearly: no registrar is exit 69, an unknown pool exit 1.
#[test]
fn tools_report_failures_with_distinct_exit_codes() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap").to_string();
    let (code, _, stderr) = run(&["resolve", "NoSuchPool", "--registrar", &asap]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unknown pool handle"), "{stderr}");
    let (code, _, stderr) = run(&[
        "resolve",
        "Any",
        "--registrar",
        "127.0.0.1:1",
        "--timeout",
        "5s",
    ]);
    assert_eq!(code, 69, "{stderr}");
    let (code, _, stderr) = run(&["dump", "--registrar", "127.0.0.1:1"]);
    assert_eq!(code, 69, "{stderr}");
}

/// A second registrar on a port another one listens on is refused (exit 71) instead of
/// sharing it unnoticed: the listening sockets allow port sharing so that outgoing
/// associations can leave from them, and the start-up check keeps that from hiding a
/// configuration mistake.
#[test]
fn a_port_in_use_is_an_error_not_a_shared_listener() {
    let first = registrar(&[]);
    let asap = first.address("asap").to_string();
    // Started like a daemon: without the check it would run on (killed after 10 s).
    let mut second = std::process::Command::new(common::binary())
        .args(common::registrar_args(&["--asap", &asap]))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(Duration::from_secs(10), || {
        second.try_wait().unwrap().is_some()
    });
    let _ = second.kill();
    let output = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        exited,
        "a second registrar started on a port in use: {stderr}"
    );
    assert_eq!(output.status.code(), Some(71), "{stderr}");
    assert!(stderr.contains("another process listens on"), "{stderr}");
}

/// RFC 5352 §3.6: a `pe` agent with no static registrar finds one by its multicast
/// announces (on the loopback interface, so nothing leaves the host).
#[test]
fn pe_agent_finds_a_registrar_by_its_announces() {
    let port = 20_000 + u16::try_from(std::process::id() % 20_000).unwrap();
    let group = format!("239.0.0.50:{port}");
    let registrar = registrar(&["--announce", &group]);
    assert_eq!(
        registrar.ready["announce_interface"], "127.0.0.1",
        "{:?}",
        registrar.ready
    );
    let backend = Backend::start();
    let dir = std::env::temp_dir().join(format!("rserpool-announce-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("pe.yaml");
    std::fs::write(
        &config,
        format!(
            "pe:\n  announce: \"{group}\"\n  announce_interface: 127.0.0.1\n  services:\n    - pool: FoundPool\n      backend: {}\n      health_interval: 200ms\n",
            backend.address
        ),
    )
    .unwrap();
    let _agent = Process::start(&["pe", "--config", config.to_str().unwrap()]);
    let asap = registrar.address("asap");
    assert!(
        eventually(Duration::from_secs(10), || resolved(asap, "FoundPool")
            .len()
            == 1),
        "registered through an announced registrar"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same for a `pe --serve` demo PE: registrars found by their announces (the
/// file's `announce` and `announce_interface`), none configured.
#[test]
fn demo_pe_finds_a_registrar_by_its_announces() {
    // Another port than the agent's test, which may run at the same time.
    let port = 20_001 + u16::try_from(std::process::id() % 20_000).unwrap();
    let group = format!("239.0.0.50:{port}");
    let registrar = registrar(&["--announce", &group]);
    let dir = std::env::temp_dir().join(format!("rserpool-announce-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("pe.yaml");
    std::fs::write(
        &config,
        format!("pe:\n  announce: \"{group}\"\n  announce_interface: 127.0.0.1\n"),
    )
    .unwrap();
    let _demo = Process::start(&[
        "pe",
        "--serve",
        "echo",
        "--pool",
        "FoundEcho",
        "--config",
        config.to_str().unwrap(),
    ]);
    let asap = registrar.address("asap");
    assert!(
        eventually(Duration::from_secs(10), || resolved(asap, "FoundEcho")
            .len()
            == 1),
        "registered through an announced registrar"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGHUP on an agent: a service removed from its file is deregistered, a new one
/// registered, the rest untouched; a broken file changes nothing.
#[test]
fn pe_agent_reloads_its_services_on_sighup() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let (first, second) = (Backend::start(), Backend::start());
    let dir = std::env::temp_dir().join(format!("rserpool-agent-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pe.yaml");
    let write = |backends: &[SocketAddr]| {
        let services: String = backends
            .iter()
            .map(|b| format!("    - {{pool: WebPool, backend: {b}, health_interval: 200ms}}\n"))
            .collect();
        std::fs::write(
            &path,
            format!("pe:\n  registrars: [{asap}]\n  services:\n{services}"),
        )
        .unwrap();
    };
    let ports = || -> Vec<u16> {
        let (_, stdout, _) = common::run(&[
            "resolve",
            "WebPool",
            "--registrar",
            &asap.to_string(),
            "--json",
            "--timeout",
            "5s",
        ]);
        let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
        let mut ports: Vec<u16> = json["pool_elements"]
            .as_array()
            .map(|pes| {
                pes.iter()
                    .filter_map(|pe| pe["user_transport"]["port"].as_u64())
                    .map(|p| p as u16)
                    .collect()
            })
            .unwrap_or_default();
        ports.sort_unstable();
        ports
    };
    write(&[first.address]);
    let agent = Process::start(&["pe", "--config", path.to_str().unwrap()]);
    assert!(eventually(Duration::from_secs(10), || ports()
        == [first.address.port()]));

    write(&[second.address]);
    agent.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || ports()
            == [second.address.port()]),
        "after the reload: {:?}",
        ports()
    );
    std::fs::write(&path, "pe:\n  services: [{pool: 7}]\n").unwrap();
    agent.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || agent
        .log_contains("configuration not reloaded")));
    assert_eq!(ports(), [second.address.port()]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Registrars may be named (`localhost:PORT`), and a registrar given its own address
/// among its peers skips it (one peer list for a whole StatefulSet).
#[test]
fn names_resolve_and_a_registrar_skips_itself_as_a_peer() {
    // ENRP on a loopback address no other test uses, so the peer entry can name the
    // port before the registrar starts.
    let enrp: SocketAddr = "127.0.0.23:9901".parse().unwrap();
    let registrar = registrar(&["--enrp", &enrp.to_string(), "--peer", &enrp.to_string()]);
    let asap = registrar.address("asap");
    let backend = Backend::start();
    let _agent = Process::start(&[
        "pe",
        "--pool",
        "NamedPool",
        "--backend",
        &backend.address.to_string(),
        "--registrar",
        &format!("localhost:{}", asap.port()),
    ]);
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "NamedPool").len() == 1
    }));
    assert!(
        registrar.log_contains("peers=1"),
        "configured, then skipped as itself"
    );
    // Pause: time for a self-association to show if one were made: checks an absence.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!registrar.log_contains("another registrar uses this registrar's ID"));
    assert!(
        !registrar.log_contains("peer registrar up"),
        "it did not peer with itself"
    );
}

/// A registration the registrar refuses because the backend's address is not one the
/// agent's association comes from: the agent says the cause in words and what to do.
#[test]
fn a_refused_registration_says_why_and_what_to_do() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let agent = Process::start(&[
        "pe",
        "--pool",
        "WebPool",
        "--backend",
        "127.0.0.2:8080",
        "--health",
        "none",
        "--registrar",
        &asap.to_string(),
    ]);
    assert!(
        eventually(Duration::from_secs(10), || agent
            .log_contains("registration refused")),
        "{:?}",
        agent.log.lock().unwrap()
    );
    assert!(eventually(Duration::from_secs(5), || agent
        .log_contains("cause=0x0003 (invalid values)")
        && agent.log_contains("--asap ADDRESS:0")));
}

/// A registrar with peers to find waits for them before serving ASAP, and says so (a
/// registrar that seemed ready but answered nothing for seconds confused users).
#[test]
fn a_registrar_looking_for_peers_says_that_asap_waits() {
    // Connections complete in its backlog; it never says a word.
    let silent_peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = silent_peer.local_addr().unwrap().to_string();
    let registrar = registrar(&["--peer", &peer]);
    assert!(eventually(Duration::from_secs(5), || registrar
        .log_contains("ASAP requests wait until then")));
    let plain = common::registrar(&[]);
    assert!(!plain.log_contains("ASAP requests wait"));
}

/// An agent stopped before any registrar had its PE says there was nothing to
/// deregister (it used to print `deregistered ... confirmed=false`).
#[test]
fn an_agent_stopped_before_registering_says_there_was_nothing_to_deregister() {
    let backend = common::Backend::start();
    // Nothing listens on port 1: no registrar is ever reached.
    let mut agent = common::unchecked_agent("127.0.0.1:1".parse().unwrap(), backend.address);
    // Its PE exists once the (trivial) health check passed.
    assert!(eventually(Duration::from_secs(10), || agent
        .log_contains("backend healthy: registering")));
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(10)).is_some());
    assert!(
        eventually(Duration::from_secs(5), || agent
            .log_contains("nothing to deregister")),
        "{:?}",
        agent.log.lock().unwrap()
    );
    assert!(!agent.log_contains("confirmed=false"));
}
