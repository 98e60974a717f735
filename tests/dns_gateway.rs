//! End-to-end: the DNS gateway answering with `dig` (Debian dnsutils) against live
//! pools (README, "DNS gateway"): answers match `rserpool resolve`, a dead PE leaves
//! them, large answers truncate over UDP and complete over TCP, and garbage or a flood
//! from one client prefix leave other clients served.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::{Process, eventually, registrar};

/// `dig` against the gateway: the answer lines (`+short`), or the whole output when
/// `short` is false. `extra` adds options such as `+tcp` or `-b ADDR`.
fn dig(server: SocketAddr, name: &str, kind: &str, extra: &[&str], short: bool) -> String {
    let output = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, kind])
        .args(["+time=3", "+tries=1"])
        .args(if short { &["+short"][..] } else { &[][..] })
        .args(extra)
        .output()
        .expect("dig is installed (scripts/test.sh installs dnsutils)");
    String::from_utf8(output.stdout).unwrap()
}

fn status(output: &str) -> &str {
    output
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("none")
}

/// A gateway serving `pool.example.` with the given extra DNS keys; its UDP and TCP
/// address (the ready line's first `dns` entry).
fn dns_gateway(asap: SocketAddr, extra: &str) -> (Process, SocketAddr, std::path::PathBuf) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "rserpool-dns-{}-{}.yaml",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(
        &path,
        format!(
            "pool_user:\n  registrars: [{asap}]\ngateway:\n  dns:\n    - listen: 127.0.0.1:0\n      zone: pool.example.\n{extra}"
        ),
    )
    .unwrap();
    let gateway = Process::start(&["gateway", "--config", path.to_str().unwrap()]);
    let listen = gateway.listener("dns");
    (gateway, listen, path)
}

fn http_pe(asap: SocketAddr, pool: &str, policy: &str) -> Process {
    common::demo_pe(asap, "http", pool, policy)
}

/// A registrar and one demo PE in WebPool.
fn one_pe_pool() -> (Process, SocketAddr, Process) {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let pe = http_pe(asap, "WebPool", "RoundRobin");
    assert!(eventually(Duration::from_secs(10), || resolved(
        asap, "WebPool"
    )
    .len()
        == 1));
    (registrar, asap, pe)
}

/// The PE ids `rserpool resolve` lists for a pool.
fn resolved(asap: SocketAddr, pool: &str) -> BTreeSet<String> {
    common::resolve_ids(asap, pool).into_iter().collect()
}

/// PE ids in the TXT answer.
fn txt_ids(server: SocketAddr, name: &str) -> BTreeSet<String> {
    dig(server, name, "TXT", &[], true)
        .lines()
        .filter_map(|l| {
            l.trim_matches('"')
                .split_whitespace()
                .next()?
                .strip_prefix("pe=")
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn answers_follow_the_pool_and_its_policy() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let mut pes: Vec<Process> = ["Priority:9", "Priority:9", "Priority:1"]
        .iter()
        .map(|policy| http_pe(asap, "WebPool", policy))
        .collect();
    assert!(eventually(Duration::from_secs(10), || resolved(
        asap, "WebPool"
    )
    .len()
        == 3));
    let (_gateway, server, _path) = dns_gateway(asap, "      names: {web: WebPool}\n");

    // TXT names the same PEs as `rserpool resolve`, under the pool's own label, a
    // configured name, and the generic h- label.
    let expected = resolved(asap, "WebPool");
    assert_eq!(txt_ids(server, "WebPool.pool.example"), expected);
    assert_eq!(txt_ids(server, "web.pool.example"), expected);
    assert_eq!(txt_ids(server, "h-atim4k3fdtm0.pool.example"), expected);
    let txt = dig(server, "web.pool.example", "TXT", &[], true);
    assert!(
        txt.contains("policy=Priority:9") && txt.contains("transport=tcp:127.0.0.1:"),
        "{txt}"
    );

    // A: each PE's address once (the three share 127.0.0.1: one record, RFC 2181 §5),
    // TTL 0, authoritative.
    let full = dig(server, "web.pool.example", "A", &[], false);
    assert_eq!(status(&full), "NOERROR");
    assert!(full.contains(" aa"), "authoritative: {full}");
    assert_eq!(full.matches("\t0\tIN\tA\t127.0.0.1").count(), 1, "{full}");

    // SRV: each PE's port, Priority mapped to SRV priority (9 before 1), glue A records.
    let srv = dig(server, "_http._tcp.web.pool.example", "SRV", &[], false);
    let ports: BTreeSet<String> = pes
        .iter()
        .map(|p| p.address("listen").port().to_string())
        .collect();
    let records: Vec<Vec<&str>> = srv
        .lines()
        .filter(|l| l.contains("\tSRV\t"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(records.len(), 3, "{srv}");
    let srv_ports: BTreeSet<String> = records.iter().map(|r| r[6].to_owned()).collect();
    assert_eq!(srv_ports, ports);
    let low = pes[2].address("listen").port().to_string();
    for record in &records {
        let expected_priority = if record[6] == low { "1" } else { "0" };
        assert_eq!(record[4], expected_priority, "{srv}");
        let target = record[7];
        let glue = format!("{target} 0 IN A 127.0.0.1");
        assert!(
            srv.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == glue),
            "glue for {target}: {srv}"
        );
    }

    // Negative answers: unknown pool, no IPv6 address, outside the zone.
    let unknown = dig(server, "nopool.pool.example", "A", &[], false);
    assert_eq!(status(&unknown), "NXDOMAIN");
    assert!(
        unknown.contains("SOA"),
        "SOA for negative caching: {unknown}"
    );
    let nodata = dig(server, "web.pool.example", "AAAA", &[], false);
    assert_eq!(status(&nodata), "NOERROR");
    assert!(
        nodata.contains("ANSWER: 0") && nodata.contains("SOA"),
        "{nodata}"
    );
    assert_eq!(
        status(&dig(server, "example.com", "A", &[], false)),
        "REFUSED"
    );

    // A killed PE leaves the answers (its registrar notices; the gateway's cache is 1 s).
    let victim = pes.remove(0);
    let victim_id = victim.ready["pe"].clone();
    victim.signal("KILL");
    assert!(
        eventually(Duration::from_secs(15), || !txt_ids(
            server,
            "web.pool.example"
        )
        .contains(&victim_id)),
        "{victim_id} still answered"
    );
    assert_eq!(txt_ids(server, "web.pool.example").len(), 2);
    assert!(
        !txt.contains("load="),
        "round robin and priority carry no load: {txt}"
    );

    // A policy with a load says it in TXT.
    let _loaded = http_pe(asap, "LoadPool", "LeastUsed");
    assert!(eventually(Duration::from_secs(10), || resolved(
        asap, "LoadPool"
    )
    .len()
        == 1));
    let loaded = dig(server, "LoadPool.pool.example", "TXT", &[], true);
    assert!(
        loaded.contains("policy=LeastUsed") && loaded.contains(" load=0.000 "),
        "{loaded}"
    );
}

#[test]
fn large_answers_truncate_over_udp_and_complete_over_tcp() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    // One agent registering 40 PEs (health checks off: the backends need not exist).
    let services: String = (0..40)
        .map(|i| {
            format!(
                "    - {{pool: BigPool, backend: 127.0.0.1:{}, health: none}}\n",
                20_000 + i
            )
        })
        .collect();
    let path = std::env::temp_dir().join(format!("rserpool-dns-agent-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        format!("pe:\n  registrars: [{asap}]\n  services:\n{services}"),
    )
    .unwrap();
    let _agent = Process::start(&["pe", "--config", path.to_str().unwrap()]);
    assert!(eventually(Duration::from_secs(15), || resolved(
        asap, "BigPool"
    )
    .len()
        == 40));
    let (_gateway, server, _config) = dns_gateway(asap, "      answer_count: 40\n");

    let udp = dig(
        server,
        "BigPool.pool.example",
        "TXT",
        &["+ignore", "+bufsize=1232"],
        false,
    );
    assert!(udp.contains(" tc"), "truncated over UDP: {udp}");
    let tcp = dig(server, "BigPool.pool.example", "TXT", &["+tcp"], true);
    assert_eq!(tcp.lines().count(), 40, "complete over TCP");
    let _ = std::fs::remove_file(&path);
}

/// The DNS TCP listener had no connection cap: clients that opened connections and sent
/// nothing held descriptors until the process (HTTP listeners included) ran out. Now
/// at most `tcp_max_connections` are held (more are closed at once) and a connection
/// without a query for `tcp_idle_timeout` is closed.
#[test]
fn tcp_connections_are_capped_and_idle_ones_closed() {
    use std::io::Read;
    let (_registrar, asap, _pe) = one_pe_pool();
    let (_gateway, server, _path) = dns_gateway(
        asap,
        "      names: {web: WebPool}\n      tcp_max_connections: 3\n      tcp_idle_timeout: 2s\n",
    );
    assert!(eventually(Duration::from_secs(10), || !dig(
        server,
        "web.pool.example",
        "A",
        &["+tcp"],
        true
    )
    .is_empty()));
    let idle: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(server).unwrap())
        .collect();
    // Accepted in the order they came: the fourth finds the three slots taken.
    let mut fourth = std::net::TcpStream::connect(server).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut byte = [0u8; 1];
    match fourth.read(&mut byte) {
        Ok(0) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection over the cap is closed at once: {other:?}"),
    }
    let started = std::time::Instant::now();
    for mut connection in idle {
        connection
            .set_read_timeout(Some(Duration::from_secs(6)))
            .unwrap();
        assert!(
            matches!(connection.read(&mut byte), Ok(0)),
            "an idle connection is closed"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(!dig(server, "web.pool.example", "A", &["+tcp"], true).is_empty());
}

#[test]
fn garbage_and_a_flood_from_one_prefix_leave_others_served() {
    let (_registrar, asap, _pe) = one_pe_pool();
    let (mut gateway, server, _path) = dns_gateway(asap, "      rate_limit: 50\n");

    // Garbage from 127.0.0.1: short, random and response-flagged packets.
    let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x1234_5678u32;
    for length in 0..300usize {
        let packet: Vec<u8> = (0..length % 80)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 24) as u8
            })
            .collect();
        flooder.send_to(&packet, server).unwrap();
    }
    // A flood of valid queries from the same /24.
    let query = hex_query("WebPool.pool.example");
    for id in 0..3000u16 {
        let mut packet = query.clone();
        packet[..2].copy_from_slice(&id.to_be_bytes());
        flooder.send_to(&packet, server).unwrap();
    }
    flooder
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Within the limit (50/s, burst 50) a query gets its answer; beyond, every other
    // one gets an empty truncated reply (so a real client retries over TCP) and the
    // rest nothing: the flood cannot be amplified.
    let (mut full, mut slipped) = (0, 0);
    let mut buffer = [0u8; 1500];
    while let Ok((length, _)) = flooder.recv_from(&mut buffer) {
        let truncated = buffer[2] & 0x02 != 0;
        let answers = u16::from_be_bytes([buffer[6], buffer[7]]);
        if truncated {
            assert_eq!(answers, 0, "a slipped reply carries no records");
            assert!(length < 100, "a slipped reply is small: {length} bytes");
            slipped += 1;
        } else if answers > 0 {
            full += 1;
        }
    }
    assert!(full <= 150, "answers beyond the rate limit: {full}");
    assert!(slipped <= 1600, "{slipped} slipped replies to 3000 queries");

    // Another prefix (127.0.1.1) is served at once, and 127.0.0.1 again after a pause.
    let other = dig(
        server,
        "WebPool.pool.example",
        "A",
        &["-b", "127.0.1.1"],
        true,
    );
    assert_eq!(other.trim(), "127.0.0.1");
    assert!(
        gateway.wait_exit(Duration::from_millis(10)).is_none(),
        "the gateway is alive"
    );
    // Pause: the rate limiter refills over a second (the scenario).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        dig(server, "WebPool.pool.example", "A", &[], true).trim(),
        "127.0.0.1"
    );
}

/// A minimal A query for `name` (id 0, RD).
fn hex_query(name: &str) -> Vec<u8> {
    let mut packet = vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        packet.push(u8::try_from(label.len()).unwrap());
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    packet
}

/// DNS over TLS (RFC 7858) with the same certificate configuration as HTTP listeners.
#[test]
fn dns_over_tls_answers_with_the_configured_certificate() {
    let (_registrar, asap, _pe) = one_pe_pool();
    let dir = std::env::temp_dir().join(format!("rserpool-dot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["dns.example".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let (gateway, _server, _path) = dns_gateway(
        asap,
        &format!(
            "      tcp_idle_timeout: 2s\n      tls:\n        listen: 127.0.0.1:0\n        certificates: [{{cert: {}, key: {}}}]\n",
            cert.display(),
            key.display()
        ),
    );
    // The DNS-over-TLS address: the ready line's `dns` entry for `=tls:`.
    let dot: SocketAddr = gateway.ready["dns"]
        .split(',')
        .find_map(|entry| entry.strip_suffix("=tls:pool.example."))
        .unwrap_or_else(|| panic!("no DNS-over-TLS listener: {:?}", gateway.ready))
        .parse()
        .unwrap();
    // A connection that never starts its handshake is closed after the idle timeout
    // (hickory's listener kept it), as plain TCP ones are.
    let mut silent = std::net::TcpStream::connect(dot).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(std::io::Read::read(&mut silent, &mut byte), Ok(0)),
        "a silent DNS-over-TLS connection is closed"
    );
    let ca = format!("+tls-ca={}", cert.display());
    let answer = dig(
        dot,
        "WebPool.pool.example",
        "A",
        &["+tls", &ca, "+tls-hostname=dns.example"],
        true,
    );
    assert_eq!(answer.trim(), "127.0.0.1");
    let wrong = dig(
        dot,
        "WebPool.pool.example",
        "A",
        &["+tls", &ca, "+tls-hostname=other.example"],
        true,
    );
    assert!(
        !wrong.lines().any(|l| l.trim() == "127.0.0.1"),
        "the certificate names dns.example only: {wrong}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Over UDP, a query whose header reads but whose body does not parse gets FORMERR
/// with its ID (RFC 1035 §4.1.1); a packet that is itself a response, or shorter than
/// a header, gets nothing (answering would reflect traffic to a spoofed source); a
/// valid query from the same socket right after is answered.
#[test]
fn malformed_udp_queries_get_formerr_and_responses_nothing() {
    let (_registrar, asap, _pe) = one_pe_pool();
    let (_gateway, server, _path) = dns_gateway(asap, "");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buffer = [0u8; 1500];
    // One question announced, none there.
    client
        .send_to(
            &[0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff],
            server,
        )
        .unwrap();
    let (length, _) = client.recv_from(&mut buffer).unwrap();
    assert_eq!(length, 12);
    assert_eq!(&buffer[..2], &[0xab, 0xcd], "its ID");
    assert_eq!(buffer[2] & 0x80, 0x80, "a response");
    assert_eq!(buffer[3] & 0x0f, 1, "FORMERR");
    // A response, and a fragment: no answer; then a query is answered, and nothing
    // else is waiting.
    let mut response = hex_query("WebPool.pool.example");
    response[2] |= 0x80;
    client.send_to(&response, server).unwrap();
    client.send_to(&[1, 2, 3], server).unwrap();
    let mut query = hex_query("WebPool.pool.example");
    query[..2].copy_from_slice(&[0x12, 0x34]);
    client.send_to(&query, server).unwrap();
    let (_, _) = client.recv_from(&mut buffer).unwrap();
    assert_eq!(
        &buffer[..2],
        &[0x12, 0x34],
        "the first answer is the query's"
    );
    assert!(client.recv_from(&mut buffer).is_err(), "nothing else came");
}
