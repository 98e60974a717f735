//! Component Status Protocol reports (rsplib's monitoring, docs/csp.md) from every role:
//! read by a UDP socket and decoded, dissected by Wireshark's `componentstatusprotocol`
//! dissector (tshark), and shown by rsplib's own `cspmonitor`. tshark and cspmonitor
//! come from Debian (`tshark`, `rsplib-tools`; scripts/test.sh installs them): without
//! them these checks fail when `CI` or `RSERPOOL_REQUIRE_TOOLS` is set, and say loudly
//! that they did not run otherwise.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Process, eventually};
use rserpool_proto::csp::{ComponentGroup, Report};

/// Reports arriving at `monitor` until `done` holds for what arrived, or 20 s.
fn collect(
    monitor: &UdpSocket,
    mut done: impl FnMut(&[(Report, Vec<u8>)]) -> bool,
) -> Vec<(Report, Vec<u8>)> {
    monitor
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reports = Vec::new();
    let mut buffer = [0u8; 65536];
    while Instant::now() < deadline && !done(&reports) {
        if let Ok(length) = monitor.recv(&mut buffer) {
            let bytes = buffer[..length].to_vec();
            let report = Report::decode(&bytes).expect("every datagram is a CSP report");
            reports.push((report, bytes));
        }
    }
    reports
}

/// The registrar ID of a ready line (`0x...`) as a number.
fn id_of(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap()
}

/// An echo PE in EchoPool at the registrar `asap`, reporting to `monitor` every
/// `interval` milliseconds.
fn echo_pe(asap: &str, monitor: &str, interval: &str) -> Process {
    Process::start(&[
        "pe",
        "--serve",
        "echo",
        "--pool",
        "EchoPool",
        "--registrar",
        asap,
        "--csp-server",
        monitor,
        "--csp-interval",
        interval,
    ])
}

fn tool_present(tool: &str, package: &str) -> bool {
    if Command::new(tool).arg("-h").output().is_ok() {
        return true;
    }
    let required =
        std::env::var_os("CI").is_some() || std::env::var_os("RSERPOOL_REQUIRE_TOOLS").is_some();
    assert!(
        !required,
        "{tool} is required here: apt-get install -y {package}"
    );
    eprintln!("\n*** SKIPPED: {tool} not found ({package}); this check did NOT run ***\n");
    false
}

#[test]
fn every_role_reports_its_state_and_a_final_report_when_it_stops() {
    let monitor = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = monitor.local_addr().unwrap().to_string();
    let csp = ["--csp-server", target.as_str(), "--csp-interval", "250"];
    let mut registrar = common::registrar(&csp);
    let asap = registrar.address("asap").to_string();
    let registrar_id = id_of(&registrar.ready["id"]);
    let pe = echo_pe(&asap, &target, "250");
    let pe_id = id_of(&pe.ready["pe"]);
    let mut gateway_args = vec![
        "gateway",
        "--registrar",
        &asap,
        "--tcp",
        "127.0.0.1:0=EchoPool",
    ];
    gateway_args.extend(csp);
    let _gateway = Process::start(&gateway_args);

    let reports = collect(&monitor, |reports| {
        let registrar_counts = reports.iter().any(|(r, _)| {
            r.sender.group == ComponentGroup::Registrar
                && r.status.starts_with("1[1] PEs in 1 Pools")
        });
        let pe_registered = reports.iter().any(|(r, _)| {
            r.sender.group == ComponentGroup::PoolElement
                && r.status.starts_with("EchoPool: registered")
        });
        let gateway = reports
            .iter()
            .any(|(r, _)| r.sender.group == ComponentGroup::PoolUser);
        registrar_counts && pe_registered && gateway
    });
    let of = |group| -> Vec<&Report> {
        reports
            .iter()
            .map(|(r, _)| r)
            .filter(|r| r.sender.group == group)
            .collect()
    };
    let registrars = of(ComponentGroup::Registrar);
    assert!(
        registrars.iter().any(|r| r.sender.object == registrar_id
            && r.status.starts_with("1[1] PEs in 1 Pools, 0 Peers")
            && r.location.contains(&asap)
            && r.interval_micros == 250_000
            && !r.is_final),
        "the registrar's reports: {registrars:?}"
    );
    let pes = of(ComponentGroup::PoolElement);
    assert!(
        pes.iter()
            .any(|r| r.sender.object == pe_id && r.status.starts_with("EchoPool: registered")),
        "the PE's reports: {pes:?}"
    );
    assert!(
        !of(ComponentGroup::PoolUser).is_empty(),
        "the gateway reports as a pool user"
    );
    // Once the PE knows its registrar's ID, it lists the association (ASAP, TCP).
    let associated = collect(&monitor, |reports| {
        reports.iter().any(|(r, _)| {
            r.sender.object == pe_id
                && r.associations
                    .iter()
                    .any(|a| a.receiver.object == registrar_id && a.ppid == 11 && a.protocol == 6)
        })
    });
    assert!(
        associated
            .iter()
            .any(|(r, _)| r.sender.object == pe_id && !r.associations.is_empty()),
        "the PE lists its home registrar"
    );

    registrar.signal("TERM");
    let goodbye = collect(&monitor, |reports| {
        reports
            .iter()
            .any(|(r, _)| r.sender.object == registrar_id && r.is_final)
    });
    assert!(
        goodbye
            .iter()
            .any(|(r, _)| r.sender.object == registrar_id && r.is_final),
        "a stopping registrar sends a FINAL report"
    );
    assert!(registrar.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn wireshark_dissects_our_reports_as_component_status_reports() {
    if !tool_present("tshark", "tshark") {
        return;
    }
    let monitor = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = monitor.local_addr().unwrap().to_string();
    let registrar = common::registrar(&["--csp-server", &target, "--csp-interval", "250"]);
    let registrar_id = id_of(&registrar.ready["id"]);
    let reports = collect(&monitor, |reports| !reports.is_empty());
    let (_, bytes) = reports.first().expect("a report");

    // text2pcap wraps the datagram in Ethernet, IPv4 and UDP to port 2960, where
    // Wireshark's dissector listens.
    let directory = std::env::temp_dir().join(format!("rserpool-csp-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let (dump, pcap) = (directory.join("report.txt"), directory.join("report.pcap"));
    let hex: String = bytes
        .chunks(16)
        .enumerate()
        .map(|(line, chunk)| {
            let octets: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:06x} {}\n", line * 16, octets.join(" "))
        })
        .collect();
    std::fs::write(&dump, hex).unwrap();
    let status = Command::new("text2pcap")
        .args(["-q", "-u", "40000,2960"])
        .args([&dump, &pcap])
        .status()
        .unwrap();
    assert!(status.success(), "text2pcap");
    let output = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-T", "fields", "-E", "separator=|"])
        .args([
            "-e",
            "componentstatusprotocol.message_type",
            "-e",
            "componentstatusprotocol.message_sender_id.group",
            "-e",
            "componentstatusprotocol.message_sender_id.object",
            "-e",
            "componentstatusprotocol.componentstatusreport_status",
            "-e",
            "componentstatusprotocol.componentstatusreport_reportinterval",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&directory);
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.trim().split('|').collect();
    assert_eq!(
        fields.len(),
        5,
        "tshark: {text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(fields[0], "1", "a report: {text}");
    // Wireshark prints the IDs in hex and the interval (microseconds) in seconds.
    assert_eq!(fields[1], "0x0001", "from a registrar: {text}");
    assert_eq!(id_of(fields[2]), registrar_id, "{text}");
    assert!(fields[3].starts_with("0[0] PEs in 0 Pools"), "{text}");
    assert_eq!(fields[4], "0.250000000", "{text}");
}

#[test]
fn rsplibs_cspmonitor_lists_our_registrar_and_pe() {
    if !tool_present("cspmonitor", "rsplib-tools") {
        return;
    }
    // stdbuf: cspmonitor writes through stdio, which buffers a pipe.
    let mut monitor = Command::new("stdbuf")
        .args([
            "-o0",
            "cspmonitor",
            "-localaddress=127.0.0.1:0",
            "-updateinterval=250",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let screen = Arc::new(Mutex::new(String::new()));
    let reader = BufReader::new(monitor.stdout.take().unwrap());
    let written = screen.clone();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            written.lock().unwrap().push_str(&line);
        }
    });
    let mut port = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            port = udp_port_of(monitor.id());
            port.is_some()
        }),
        "cspmonitor bound no UDP port"
    );
    let target = format!("127.0.0.1:{}", port.unwrap());
    let registrar = common::registrar(&["--csp-server", &target, "--csp-interval", "250"]);
    let asap = registrar.address("asap").to_string();
    let pe = echo_pe(&asap, &target, "1000");
    // cspmonitor prints 32-bit IDs with eight digits ($0f453917).
    let shown = |id: &str, kind: &str| format!("{kind} ${:08x}", id_of(id));
    let (registrar_line, pe_line) = (
        shown(&registrar.ready["id"], "PR"),
        shown(&pe.ready["pe"], "PE"),
    );
    let seen = eventually(Duration::from_secs(15), || {
        let screen = screen.lock().unwrap();
        screen.contains(&registrar_line)
            && screen.contains(&pe_line)
            && screen.contains("EchoPool: registered")
    });
    let _ = monitor.kill();
    let _ = monitor.wait();
    let screen = screen.lock().unwrap().clone();
    assert!(
        seen,
        "cspmonitor shows {registrar_line:?} and {pe_line:?}: {}",
        screen
            .chars()
            .rev()
            .take(2000)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>()
    );
}

/// The local UDP port of a process's first UDP socket (from /proc).
fn udp_port_of(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let inode = fields.get(9)?;
        if !inodes.iter().any(|i| i == inode) {
            return None;
        }
        let port = fields.get(1)?.rsplit_once(':')?.1;
        u16::from_str_radix(port, 16).ok()
    })
}
