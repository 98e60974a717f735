//! End-to-end: the HTTP gateway in front of `pe --serve http` PEs (README, "HTTP
//! gateway"). PEs are killed (-9) under load; requests that can be retried are, sticky
//! sessions move with their state (the ASAP cookie over HTTP, RFC 5352 §3.8-3.9), and limits
//! answer with the right status without touching other clients.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{ConfigFile, Process, Reply, eventually, registrar, try_request};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn http_pe(asap: SocketAddr, pool: &str) -> Process {
    common::demo_pe(asap, "http", pool, "RoundRobin")
}

/// A gateway with the HTTP listeners of `yaml` (under `gateway:`) at the registrar,
/// and an admin listener (its address in the ready line's `admin`).
fn gateway(asap: SocketAddr, yaml: &str) -> (Process, ConfigFile) {
    let file = ConfigFile::new(&format!(
        "pool_user:\n  registrars: [{asap}]\ngateway:\n{yaml}"
    ));
    let process = Process::start(&["gateway", "--config", &file.0, "--admin", "127.0.0.1:0"]);
    (process, file)
}

fn request(target: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    try_request(target, method, path, headers, b"")
        .unwrap_or_else(|| panic!("no response to {method} {path}"))
}

/// A registrar and `count` demo PEs registered in WebPool.
fn web_pool(count: usize) -> (Process, SocketAddr, Vec<Process>) {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let pes = (0..count).map(|_| http_pe(asap, "WebPool")).collect();
    wait_for_pool(asap, "WebPool", count);
    (registrar, asap, pes)
}

fn wait_for_pool(asap: SocketAddr, pool: &str, count: usize) {
    assert!(
        eventually(Duration::from_secs(10), || common::resolve_ids(asap, pool)
            .len()
            == count),
        "{count} PEs in {pool}"
    );
}

/// Under continuous GETs, PEs die (-9) and come back one after another: every request
/// is answered 200 (a refused or reset PE is skipped, the GET retried).
#[test]
fn get_load_sees_no_failure_while_pes_are_killed() {
    let (_registrar, asap, mut pes) = web_pool(3);
    let (running, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n",
    );
    let address = running.listener("http");

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut ok, mut failed, mut pes) =
                    (0, Vec::new(), std::collections::BTreeSet::new());
                while !stop.load(Ordering::Relaxed) {
                    match try_request(address, "GET", "/load", &[], b"") {
                        Some(reply) if reply.status == 200 => {
                            ok += 1;
                            pes.insert(reply.field("pe").to_owned());
                        }
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed, pes)
            })
        })
        .collect();
    for round in 0..4 {
        // Pause: load runs between kills (the scenario).
        thread::sleep(Duration::from_millis(400));
        let victim = round % pes.len();
        pes[victim].signal("KILL");
        pes[victim].wait_exit(Duration::from_secs(5));
        // Pause: the PE stays dead a moment under load (the scenario).
        thread::sleep(Duration::from_millis(300));
        pes[victim] = http_pe(asap, "WebPool");
    }
    // Pause: load keeps running after the last replacement (the scenario).
    thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::Relaxed);
    let mut served_by = std::collections::BTreeSet::new();
    let mut total = 0;
    for client in clients {
        let (ok, failed, pes) = client.join().unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
        served_by.extend(pes);
    }
    assert!(total > 100, "only {total} requests");
    assert!(
        served_by.len() >= 4,
        "restarted PEs served too: {served_by:?}"
    );
}

/// A POST already sent to a PE that dies is not replayed (502); a GET in the same spot
/// is retried on the next PE. Two priorities make the order known (no slow start: the
/// preferred PE joins after the gateway started and must be first at once).
#[test]
fn sent_posts_fail_with_502_and_gets_are_retried() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let (gateway, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n          slow_start: 0s\n",
    );
    let address = gateway.listener("http");
    let spare = common::demo_pe(asap, "http", "WebPool", "Priority:1");
    for (method, expected) in [("POST", 502), ("GET", 200)] {
        let mut preferred = common::demo_pe(asap, "http", "WebPool", "Priority:9");
        let preferred_id = preferred.ready["pe"].clone();
        wait_for_pool(asap, "WebPool", 2);
        // Until the gateway's cache (1 s) learns the new PE, requests go to the spare.
        assert!(eventually(Duration::from_secs(10), || {
            try_request(address, "GET", "/probe", &[], b"")
                .is_some_and(|reply| reply.field("pe") == preferred_id)
        }));
        let seen = preferred.log.lock().unwrap().len();
        let slow = thread::spawn(move || {
            try_request(address, method, "/slow?delay_ms=4000", &[], b"payload")
        });
        // The request has reached the preferred PE before it dies.
        assert!(eventually(Duration::from_secs(10), || {
            preferred.log.lock().unwrap()[seen..]
                .iter()
                .any(|line| line.contains("request received") && line.contains("/slow"))
        }));
        preferred.signal("KILL");
        preferred.wait_exit(Duration::from_secs(5));
        let reply = slow
            .join()
            .unwrap()
            .expect("a response, not a broken connection");
        assert_eq!(reply.status, expected, "{method}: {reply:?}");
        if expected == 200 {
            assert_eq!(reply.field("pe"), spare.ready["pe"], "retried on the spare");
            assert_eq!(reply.field("method"), "GET");
            assert!(
                eventually(Duration::from_secs(5), || gateway
                    .log
                    .lock()
                    .unwrap()
                    .iter()
                    .any(
                        |l| l.contains("path=/slow status=200") && l.contains("attempts=2")
                    )),
                "the GET went to the killed PE first"
            );
        }
        wait_for_pool(asap, "WebPool", 1);
    }
}

/// A sticky session stays on its PE, moves to a live one when that PE dies (its state
/// comes along as the ASAP cookie echo, so the count goes on), keeps its session id,
/// and two gateways sharing the key serve it alternately.
#[test]
fn sticky_sessions_survive_pe_death_across_gateways() {
    let (_registrar, asap, mut pes) = web_pool(3);
    let listener = format!(
        "  http:\n    - listen: 127.0.0.1:0\n      sticky:\n        keys: [\"{KEY}\"]\n      routes:\n        - pool: WebPool\n"
    );
    let (gateway_one, _file_one) = gateway(asap, &listener);
    let (gateway_two, _file_two) = gateway(asap, &listener);
    let (one, two) = (gateway_one.listener("http"), gateway_two.listener("http"));

    let first = request(one, "GET", "/cart", &[]);
    assert_eq!(first.status, 200);
    let mut cookie = first.cookie().expect("a session cookie");
    assert!(cookie.starts_with("rserpool_session="));
    let session = first.field("session").to_owned();
    let pe = first.field("pe").to_owned();
    assert_eq!(first.field("count"), "1");
    for (count, target) in [(2, two), (3, one), (4, two)] {
        let reply = request(target, "GET", "/cart", &[("Cookie", &cookie)]);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.field("pe"), pe, "the session stays on its PE");
        assert_eq!(reply.field("session"), session);
        assert_eq!(reply.field("count"), count.to_string());
        if let Some(next) = reply.cookie() {
            cookie = next;
        }
    }

    let victim = pes.iter().position(|p| p.ready["pe"] == pe).unwrap();
    pes[victim].signal("KILL");
    pes[victim].wait_exit(Duration::from_secs(5));
    let moved = request(two, "GET", "/cart", &[("Cookie", &cookie)]);
    assert_eq!(moved.status, 200, "{moved:?}");
    assert_ne!(moved.field("pe"), pe, "moved to a live PE");
    assert_eq!(moved.field("session"), session, "same session");
    assert_eq!(
        moved.field("count"),
        "5",
        "the state came along in the cookie echo"
    );
    let cookie = moved.cookie().expect("the binding is re-issued");
    let new_pe = moved.field("pe").to_owned();
    let after = request(one, "GET", "/cart", &[("Cookie", &cookie)]);
    assert_eq!(
        after.field("pe"),
        new_pe,
        "the other gateway follows the new binding"
    );
    assert_eq!(after.field("count"), "6");
    assert_eq!(after.field("session"), session);

    // A forged or foreign cookie is ignored: a new session starts.
    let forged = request(one, "GET", "/cart", &[("Cookie", "rserpool_session=AAAA")]);
    assert_eq!(forged.status, 200);
    assert_ne!(forged.field("session"), session);
    assert_eq!(forged.field("count"), "1");
}

/// Oversized heads get 431, oversized bodies 413, a slowloris client is closed after the
/// header timeout; a normal client is served meanwhile. An empty pool gives 503 with
/// Retry-After, a PE slower than the first-byte timeout 504.
#[test]
fn limits_and_error_statuses() {
    let (_registrar, asap, _pes) = web_pool(1);
    let (running, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      header_timeout: 1s\n      max_header_bytes: 8192\n      routes:\n        - pool: WebPool\n          max_body: 1000\n          first_byte_timeout: 500ms\n        - pool: EmptyPool\n          path: /empty\n",
    );
    let address = running.listener("http");

    let mut slow = TcpStream::connect(address).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();

    let big = "x".repeat(16 * 1024);
    let reply = request(address, "GET", "/", &[("X-Big", &big)]);
    assert_eq!(reply.status, 431);
    let reply = try_request(address, "POST", "/", &[], &[b'a'; 2000]).unwrap();
    assert_eq!(reply.status, 413);
    let reply = request(address, "GET", "/empty/x", &[]);
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    let reply = request(address, "GET", "/?delay_ms=2000", &[]);
    assert_eq!(reply.status, 504);
    // The PE was reported unreachable for that; it re-registers and serves again.
    assert!(eventually(Duration::from_secs(10), || request(
        address,
        "GET",
        "/ok",
        &[]
    )
    .status
        == 200));
    let reply = request(address, "GET", "/ok", &[]);
    assert_eq!(reply.header("via"), Some("1.1 rserpool"));

    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let closed = slow.read_to_end(&mut rest).is_ok();
    assert!(
        closed,
        "the slowloris connection is closed after the header timeout"
    );
}

/// Writes a self-signed certificate for `name` as `<dir>/<file>.{cert,key}.pem`.
fn certificate(dir: &std::path::Path, file: &str, name: &str) -> (String, String) {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let cert = dir.join(format!("{file}.cert.pem"));
    let key = dir.join(format!("{file}.key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

/// `curl` over TLS with SNI `name` trusting only `ca`: the HTTP version and the body,
/// or curl's exit code.
fn curl(address: SocketAddr, name: &str, ca: &str) -> Result<(String, String), i32> {
    let output = std::process::Command::new("curl")
        .args(["--silent", "--http2", "--max-time", "10", "--cacert", ca])
        .args(["--resolve", &format!("{name}:{}:127.0.0.1", address.port())])
        .args(["--write-out", "\n%{http_version}"])
        .arg(format!("https://{name}:{}/tls", address.port()))
        .output()
        .expect("curl is installed (scripts/test.sh installs it)");
    if !output.status.success() {
        return Err(output.status.code().unwrap_or(-1));
    }
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, version) = text.rsplit_once('\n').unwrap();
    Ok((version.to_owned(), body.to_owned()))
}

/// TLS: SNI picks the certificate, ALPN gives HTTP/2, and SIGHUP swaps certificates.
#[test]
fn tls_picks_certificates_by_sni_speaks_h2_and_reloads() {
    let (_registrar, asap, _pes) = web_pool(1);
    let dir = std::env::temp_dir().join(format!("rserpool-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a_cert, a_key) = certificate(&dir, "a", "a.example");
    let (b_cert, b_key) = certificate(&dir, "b", "b.example");
    let (gateway, _file) = gateway(
        asap,
        &format!(
            "  http:\n    - listen: 127.0.0.1:0\n      tls:\n        certificates:\n          - {{cert: {a_cert}, key: {a_key}, names: [a.example]}}\n          - {{cert: {b_cert}, key: {b_key}, names: [b.example]}}\n      routes:\n        - pool: WebPool\n"
        ),
    );
    let address = gateway.listener("http");
    let (version, body) = curl(address, "a.example", &a_cert).unwrap();
    assert_eq!(version, "2", "HTTP/2 by ALPN");
    assert!(body.starts_with("pe="), "{body}");
    assert!(
        curl(address, "b.example", &b_cert).is_ok(),
        "SNI b.example gets b's certificate"
    );
    assert!(curl(address, "b.example", &a_cert).is_err(), "not a's");
    assert!(
        curl(address, "other.example", &a_cert).is_err(),
        "the default (a) does not name other.example"
    );

    // A new certificate for b: in use after SIGHUP, without a restart.
    let backup = dir.join("old-b.cert.pem");
    std::fs::copy(&b_cert, &backup).unwrap();
    certificate(&dir, "b", "b.example");
    assert!(
        curl(address, "b.example", &b_cert).is_err(),
        "not reloaded yet"
    );
    gateway.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || curl(
        address,
        "b.example",
        &b_cert
    )
    .is_ok()));
    assert!(curl(address, "b.example", &backup.to_string_lossy()).is_err());
    // A broken file on reload keeps the certificates in use.
    std::fs::write(&b_cert, "garbage").unwrap();
    gateway.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gateway
        .log_contains("not reloaded; the old ones stay")));
    assert!(curl(address, "a.example", &a_cert).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Asks for an `Upgrade: echo` tunnel; returns the connection and the lowercased head
/// (empty if the gateway closed the connection first).
fn open_tunnel(address: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(
        b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    );
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_exact(&mut byte).is_err() {
            break;
        }
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).to_ascii_lowercase())
}

/// An `Upgrade` request is tunnelled: after the PE's 101 the bytes flow both ways.
/// Tunnels count toward `max_connections` while open (400 of them used to pass a
/// listener capped at 200): beyond it a new one is answered 503.
#[test]
fn upgrades_are_tunnelled() {
    let (_registrar, asap, _pes) = web_pool(1);
    let (running, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      max_connections: 3\n      routes:\n        - pool: WebPool\n",
    );
    let address = running.listener("http");
    let (mut stream, head) = open_tunnel(address);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for message in [&b"ping"[..], b"through the tunnel"] {
        stream.write_all(message).unwrap();
        let mut echoed = vec![0u8; message.len()];
        stream.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    }
    // Two tunnels hold two of the three slots: a third request needs two (its
    // connection's and its tunnel's) and is refused (503, or closed at once while the
    // second tunnel's connection still holds its slot).
    let (_second, head) = open_tunnel(address);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let (third, head) = open_tunnel(address);
    assert!(!head.starts_with("http/1.1 101"), "{head}");
    // A closed tunnel gives its slot back.
    drop((stream, third));
    assert!(eventually(Duration::from_secs(10), || {
        open_tunnel(address).1.starts_with("http/1.1 101")
    }));
}

/// Upgraded tunnels had no idle timeout: one that carried nothing held its slot
/// forever. Now a tunnel quiet for `tunnel_idle_timeout` is closed, while one in use
/// stays open past it.
#[test]
fn idle_tunnels_are_closed() {
    let (_registrar, asap, _pes) = web_pool(1);
    let (running, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      tunnel_idle_timeout: 1s\n      routes:\n        - pool: WebPool\n",
    );
    let address = running.listener("http");
    let (mut busy, head) = open_tunnel(address);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let (mut quiet, head) = open_tunnel(address);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let started = std::time::Instant::now();
    // The busy one talks every 300 ms for 2.4 s: twice the idle timeout. The pauses
    // are what is under test (traffic spaced below the timeout keeps a tunnel open),
    // not a wait for something to happen.
    for _ in 0..8 {
        busy.write_all(b"ping").unwrap();
        let mut echoed = [0u8; 4];
        busy.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"ping");
        // Pause: traffic spaced below the idle timeout (the scenario).
        std::thread::sleep(Duration::from_millis(300));
    }
    quiet
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let mut rest = Vec::new();
    assert!(
        quiet.read_to_end(&mut rest).is_ok(),
        "the quiet tunnel is closed"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    busy.write_all(b"still").unwrap();
    let mut echoed = [0u8; 5];
    busy.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"still");
}

/// One response read off a raw connection: status, lower-cased head, body (by
/// `Content-Length` or chunked framing).
/// A response head, lowercased, up to and with its blank line.
fn read_head(stream: &mut std::io::BufReader<TcpStream>) -> String {
    use std::io::BufRead;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "connection closed in a head: {head}");
        head.push_str(&line.to_ascii_lowercase());
        if line == "\r\n" {
            return head;
        }
    }
}

fn read_response(stream: &mut std::io::BufReader<TcpStream>) -> (u16, String, String) {
    use std::io::BufRead;
    let head = read_head(stream);
    let status = head[9..12].parse().unwrap();
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
    };
    let mut body = Vec::new();
    if let Some(length) = field("content-length") {
        body.resize(length.trim().parse().unwrap(), 0);
        stream.read_exact(&mut body).unwrap();
    } else if field("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            stream.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0u8; size + 2];
            stream.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    (status, head, String::from_utf8(body).unwrap())
}

/// A registrar, one PE in WebPool and a gateway with one HTTP listener serving it.
#[allow(
    clippy::type_complexity,
    reason = "test fixture: what the caller keeps alive"
)]
fn serving_gateway() -> ((Process, Vec<Process>), SocketAddr, (Process, ConfigFile)) {
    let (registrar, asap, pes) = web_pool(1);
    let gateway = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n",
    );
    let address = gateway.0.listener("http");
    assert!(eventually(Duration::from_secs(10), || try_request(
        address,
        "GET",
        "/",
        &[],
        b""
    )
    .is_some_and(|reply| reply.status == 200)));
    ((registrar, pes), address, gateway)
}

/// A raw client connection: its write side and a buffered read side.
fn connect(address: SocketAddr) -> (TcpStream, std::io::BufReader<TcpStream>) {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (stream.try_clone().unwrap(), std::io::BufReader::new(stream))
}

/// HTTP/1.1 connections (README, "HTTP gateway"): pipelined requests are answered in
/// order on one connection; requests the gateway's own loop does not take (chunked
/// bodies, `Expect`, HTTP/1.0) are served all the same, and the connection goes on;
/// `Connection: close` and HTTP/1.0 end it after the response; HEAD has no body.
#[test]
fn http1_connections_pipeline_keep_alive_and_close() {
    let (_pool, address, _gateway) = serving_gateway();

    let (mut writer, mut reader) = connect(address);
    writer
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nPOST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloHEAD /three HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
    let (status, head, body) = read_response(&mut reader);
    assert_eq!(status, 200);
    assert!(head.contains("via: 1.1 rserpool"), "{head}");
    assert!(head.contains("date: "), "{head}");
    assert!(body.contains("method=GET"), "{body}");
    let (status, _, body) = read_response(&mut reader);
    assert_eq!(status, 200);
    assert!(body.contains("method=POST body=5"), "{body}");
    writer
        .write_all(b"POST /four HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    // HEAD: a head and no body, whatever its Content-Length says: the next response
    // follows at once.
    let head = read_head(&mut reader);
    assert!(head.starts_with("http/1.1 200"), "HEAD: {head}");
    let (status, _, body) = read_response(&mut reader);
    assert_eq!(status, 200, "a chunked request body");
    assert!(body.contains("method=POST body=3"), "{body}");
    writer
        .write_all(
            b"PUT /five HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        )
        .unwrap();
    let (status, _, _) = read_response(&mut reader);
    assert_eq!(status, 100, "Expect gets 100 Continue");
    writer.write_all(b"ok").unwrap();
    let (status, _, body) = read_response(&mut reader);
    assert_eq!(status, 200);
    assert!(body.contains("method=PUT body=2"), "{body}");
    writer
        .write_all(b"GET /six HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (status, head, _) = read_response(&mut reader);
    assert_eq!(status, 200);
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    assert_eq!(
        reader.read_to_end(&mut rest).unwrap(),
        0,
        "closed after close"
    );

    let (mut writer, mut reader) = connect(address);
    writer
        .write_all(b"GET /seven HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let (status, _, body) = read_response(&mut reader);
    assert_eq!(status, 200, "HTTP/1.0");
    assert!(body.contains("method=GET"), "{body}");
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0, "HTTP/1.0 closes");

    let (mut writer, mut reader) = connect(address);
    writer
        .write_all(b"GET / HTTP/1.1\r\nHost x\r\n\r\n")
        .unwrap();
    let (status, _, _) = read_response(&mut reader);
    assert_eq!(status, 400, "a malformed head");

    // RFC 9110 §8.6: Content-Length is digits only; a sign or a non-breaking space
    // would let two parsers disagree on where the body ends (request smuggling).
    for length in ["+5", "5\u{a0}"] {
        let (mut writer, mut reader) = connect(address);
        writer
            .write_all(
                format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\nabcde")
                    .as_bytes(),
            )
            .unwrap();
        let (status, _, _) = read_response(&mut reader);
        assert_eq!(status, 400, "Content-Length {length:?}");
    }
}

/// SIGTERM: an idle keep-alive connection is closed at once, a request under way gets
/// its response (marked `Connection: close`), then the gateway exits 0.
#[test]
fn sigterm_finishes_requests_under_way_and_closes_idle_connections() {
    let ((_registrar, pes), address, (mut gateway, _file)) = serving_gateway();
    let (mut idle_writer, mut idle) = connect(address);
    idle_writer
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).0, 200);
    let (mut busy_writer, mut busy) = connect(address);
    busy_writer
        .write_all(b"GET /?delay_ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Under way: the PE has it.
    assert!(eventually(Duration::from_secs(10), || pes[0]
        .log_contains("target=/?delay_ms=1500")));

    gateway.signal("TERM");
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).unwrap(),
        0,
        "the idle one is closed"
    );
    let (status, head, _) = read_response(&mut busy);
    assert_eq!(status, 200, "the request under way is answered");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(busy.read_to_end(&mut rest).unwrap(), 0);
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("exits once drained");
    assert!(status.success(), "{status:?}");
}

/// SIGHUP takes new routes without a restart; a broken file changes nothing.
#[test]
fn sighup_reloads_routes() {
    let (_registrar, asap, _pes) = web_pool(1);
    let listener =
        |paths: &str| format!("  http:\n    - listen: 127.0.0.1:0\n      routes:\n{paths}");
    let (gateway, file) = gateway(asap, &listener("        - {pool: WebPool, path: /v1}\n"));
    let address = gateway.listener("http");
    assert_eq!(request(address, "GET", "/v1/x", &[]).status, 200);
    assert_eq!(request(address, "GET", "/v2/x", &[]).status, 404);

    std::fs::write(
        &file.0,
        format!(
            "pool_user:\n  registrars: [{asap}]\ngateway:\n{}",
            listener(
                "        - {pool: WebPool, path: /v1}\n        - {pool: WebPool, path: /v2}\n"
            )
        ),
    )
    .unwrap();
    gateway.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || request(
        address,
        "GET",
        "/v2/x",
        &[]
    )
    .status
        == 200));

    std::fs::write(&file.0, "gateway:\n  http: [{listen: nonsense}]\n").unwrap();
    gateway.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || gateway
        .log_contains("configuration not reloaded")));
    assert_eq!(
        request(address, "GET", "/v2/x", &[]).status,
        200,
        "the running routes stay"
    );
}

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame: length, type, flags, stream, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// Sends `bytes` on a new connection, answers the server's SETTINGS, and reads frames
/// until the server closes: the frame types seen, with when each came and when the
/// connection closed (after the write). Panics if it stays open for 10 s.
fn h2_until_closed(address: SocketAddr, bytes: &[u8]) -> (Vec<(u8, Duration)>, Duration) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let start = std::time::Instant::now();
    let mut input = Vec::new();
    let mut frames = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = match stream.read(&mut buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(error) => panic!("still open after 10 s ({error}): {frames:?}"),
        };
        if read == 0 {
            return (frames, start.elapsed());
        }
        input.extend_from_slice(&buffer[..read]);
        while input.len() >= 9 {
            let length = u32::from_be_bytes([0, input[0], input[1], input[2]]) as usize;
            if input.len() < 9 + length {
                break;
            }
            let (kind, flags) = (input[3], input[4]);
            if kind == 0x4 && flags & 0x1 == 0 {
                let _ = stream.write_all(&h2_frame(0x4, 0x1, 0, &[]));
            }
            frames.push((kind, start.elapsed()));
            input.drain(..9 + length);
        }
    }
}

/// Idle HTTP/2 connections and partial prefaces were never closed (over 180 s) and
/// kept legitimate clients out of the listener. Now an HTTP/2 connection must bring
/// its first request within `header_timeout`, and one idle for `client_idle_timeout`
/// after its last response gets GOAWAY and is closed.
#[test]
fn idle_and_silent_http2_connections_are_closed() {
    let (_registrar, asap, _pes) = web_pool(1);
    let (gateway, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      header_timeout: 1s\n      client_idle_timeout: 2s\n      routes:\n        - pool: WebPool\n",
    );
    let address = gateway.listener("http");
    // Half a preface: closed once the header timeout has passed.
    let (_, closed) = h2_until_closed(address, &PREFACE[..16]);
    assert!(closed < Duration::from_secs(5), "{closed:?}");
    // A whole preface and SETTINGS, but no request.
    let mut hello = PREFACE.to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    let (_, closed) = h2_until_closed(address, &hello);
    assert!(closed < Duration::from_secs(5), "{closed:?}");
    // One GET (HPACK: :method GET, :scheme http, :path /, :authority web), answered;
    // then nothing: GOAWAY and closed about 2 s after the response.
    let mut get = hello;
    get.extend(h2_frame(
        0x1,
        0x5,
        1,
        &[0x82, 0x86, 0x84, 0x41, 0x03, b'w', b'e', b'b'],
    ));
    let (frames, closed) = h2_until_closed(address, &get);
    let answered = frames
        .iter()
        .find(|(kind, _)| *kind == 0x1)
        .map(|(_, at)| *at)
        .unwrap_or_else(|| panic!("no response HEADERS: {frames:?}"));
    assert!(
        frames.iter().any(|(kind, _)| *kind == 0x7),
        "GOAWAY before the close: {frames:?}"
    );
    let idle = closed - answered;
    assert!(
        idle >= Duration::from_millis(1_500) && idle < Duration::from_secs(8),
        "closed {idle:?} after the response"
    );
}

/// The sum of a counter's series in the gateway's /metrics.
fn metric_sum(admin: SocketAddr, name: &str) -> u64 {
    let (_, metrics) = common::admin_get(admin, "/metrics");
    common::metric_sum(&metrics, name) as u64
}

/// Opens `streams` POST streams on each of `connections` HTTP/2 connections to
/// `address`, each sending `body` bytes of a longer body and then nothing; returns the
/// streams, to be held open by the caller.
fn hold_h2_bodies(
    runtime: &tokio::runtime::Runtime,
    address: SocketAddr,
    connections: usize,
    streams: usize,
    body: usize,
) -> Vec<h2::SendStream<bytes::Bytes>> {
    runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..connections {
            let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
            let (client, connection) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(connection);
            for _ in 0..streams {
                let mut client = client.clone().ready().await.unwrap();
                let request = http::Request::post(format!("http://{address}/"))
                    .header("content-length", (body * 4).to_string())
                    .body(())
                    .unwrap();
                let (_response, mut stream) = client.send_request(request, false).unwrap();
                stream.reserve_capacity(body);
                stream
                    .send_data(bytes::Bytes::from(vec![b'x'; body]), false)
                    .unwrap();
                held.push(stream);
            }
        }
        held
    })
}

/// 20 HTTP/2 connections with 100 unfinished 60 KiB bodies each took the gateway from
/// 37 to 175 MB and held it: bodies read for replay are now charged to the connection
/// (and the listener), and a body over the budget streams on to the PE unheld. Here 4
/// connections x 100 streams x 60 KiB (24 MiB if every body were held) against a
/// 128 KiB budget per connection.
#[test]
fn unfinished_http2_bodies_are_held_only_within_the_budget() {
    let (_registrar, asap, _pes) = web_pool(1);
    let (gateway, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      max_held_body_bytes_per_connection: 131072\n      routes:\n        - pool: WebPool\n",
    );
    let address = gateway.listener("http");
    let admin = gateway.address("admin");
    request(address, "GET", "/", &[]);
    let before = gateway.rss_kib();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let streams = hold_h2_bodies(&runtime, address, 4, 100, 60 * 1024);
    // Every stream's body has begun to arrive: held, or (over the budget) not held.
    let seen = || {
        metric_sum(admin, "rserpool_http_bodies_held_total")
            + metric_sum(admin, "rserpool_http_bodies_not_held_total")
    };
    assert!(
        eventually(Duration::from_secs(20), || seen() >= 400),
        "bodies seen: {}",
        seen()
    );
    // Two 60 KiB bodies fit a connection's 128 KiB; the other 98 stream on (a body
    // held in part lets go of it when the budget refuses its next bytes).
    let held = metric_sum(admin, "rserpool_http_held_body_bytes");
    assert!(held <= 4 * 128 * 1024, "{held} bytes held");
    let not_held = || metric_sum(admin, "rserpool_http_bodies_not_held_total");
    assert!(
        eventually(Duration::from_secs(20), || not_held() >= 4 * 98),
        "bodies not held: {}",
        not_held()
    );
    let grown = gateway.rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "the gateway grew {grown} KiB holding 24 MiB of unfinished bodies"
    );
    // Legitimate requests go on meanwhile.
    assert_eq!(request(address, "GET", "/", &[]).status, 200);
    drop(streams);
}

/// A registrar with a healthy demo PE and a PE that answers 503 to everything in
/// WebPool, and a gateway with one HTTP listener whose route has `route_yaml` lines.
fn with_a_sick_pe(route_yaml: &str) -> (Vec<Process>, common::Backend, Process, ConfigFile) {
    let (registrar, asap, mut processes) = web_pool(1);
    processes.push(registrar);
    let sick = common::Backend::answering(
        "127.0.0.1:0".parse().unwrap(),
        b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick",
    );
    processes.push(common::unchecked_agent(asap, sick.address));
    wait_for_pool(asap, "WebPool", 2);
    let (gateway, file) = gateway(
        asap,
        &format!(
            "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n{route_yaml}"
        ),
    );
    (processes, sick, gateway, file)
}

/// A PE that answers 503 stayed in rotation and its answers went to clients: a GET it
/// answers 503 now goes to the next PE (`retry_on`, 502/503/504 by default), while a
/// POST gets the PE's answer as it is (it may have been applied). (Ejection off here.)
#[test]
fn a_503_sends_gets_to_another_pe() {
    let (_processes, sick, gateway, _file) =
        with_a_sick_pe("          outlier_detection: {consecutive_failures: 0}\n");
    let address = gateway.listener("http");
    for i in 0..20 {
        let reply = request(address, "GET", &format!("/get-{i}"), &[]);
        assert_eq!(reply.status, 200, "GET {i}: {}", reply.body);
    }
    let hits = sick.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(hits > 0, "the sick PE was never tried");
    let statuses: Vec<u16> = (0..10)
        .filter_map(|i| try_request(address, "POST", &format!("/post-{i}"), &[], b"x"))
        .map(|reply| reply.status)
        .collect();
    assert!(statuses.contains(&503), "{statuses:?}");
}

/// Passive health: after five 503s in a row the PE is ejected (tried after the
/// others) and stops getting requests while the healthy PE answers; POSTs, which are
/// not retried, then get 200 too.
#[test]
fn a_pe_failing_five_times_in_a_row_is_ejected() {
    let (_processes, sick, gateway, _file) = with_a_sick_pe("");
    let address = gateway.listener("http");
    let hits = || sick.hits.load(std::sync::atomic::Ordering::Relaxed);
    let mut i = 0;
    assert!(
        eventually(Duration::from_secs(10), || {
            i += 1;
            request(address, "GET", &format!("/get-{i}"), &[]).status == 200 && hits() >= 5
        }),
        "the sick PE was tried {} times",
        hits()
    );
    assert!(eventually(Duration::from_secs(5), || gateway
        .log_contains("pool element ejected")));
    let ejected_at = hits();
    for i in 0..10 {
        let reply = try_request(address, "POST", &format!("/post-{i}"), &[], b"x").unwrap();
        assert_eq!(reply.status, 200, "POST {i}");
    }
    assert_eq!(hits(), ejected_at, "an ejected PE got requests");
}

/// Per-PE limits: with `max_requests_per_pe: 1` and one PE busy with a slow request, a
/// second request is answered 503 with `Retry-After` at once instead of queueing at
/// the PE; once the slow one is answered, requests go through again.
#[test]
fn a_pe_at_its_request_limit_is_passed_over_then_503() {
    let (_registrar, asap, _pes) = web_pool(1);
    let (gateway, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n          max_requests_per_pe: 1\n",
    );
    let address = gateway.listener("http");
    assert_eq!(request(address, "GET", "/", &[]).status, 200);
    // A probe sent while the slow request holds the PE's one place gets 503. Which of
    // the two reaches the gateway first is a race (a probe in flight makes the slow
    // one the 503), so a round counts only when the slow request itself got through.
    let mut busy = None;
    let held_and_refused = eventually(Duration::from_secs(30), || {
        let slow =
            thread::spawn(move || try_request(address, "GET", "/slow?delay_ms=3000", &[], b""));
        let refused = eventually(Duration::from_secs(2), || {
            let reply = request(address, "GET", "/", &[]);
            let full = reply.status == 503;
            busy = Some(reply);
            full
        });
        let slow_answered = slow.join().unwrap().map(|reply| reply.status) == Some(200);
        refused && slow_answered
    });
    assert!(held_and_refused, "never at the limit: {busy:?}");
    let busy = busy.unwrap();
    assert_eq!(busy.header("retry-after"), Some("1"), "{busy:?}");
    assert_eq!(request(address, "GET", "/", &[]).status, 200);
}

/// The queue: with `queue_timeout`, a request that finds every PE at its limit waits
/// for a place instead of getting 503, and is answered once the PE is free.
#[test]
fn a_request_finding_every_pe_busy_waits_in_the_queue() {
    let (_registrar, asap, _pes) = web_pool(1);
    let (gateway, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n          max_requests_per_pe: 1\n          queue_timeout: 10s\n",
    );
    let address = gateway.listener("http");
    let admin = gateway.address("admin");
    assert_eq!(request(address, "GET", "/", &[]).status, 200);
    let slow = thread::spawn(move || try_request(address, "GET", "/slow?delay_ms=4000", &[], b""));
    let mut statuses = Vec::new();
    assert!(
        eventually(Duration::from_secs(8), || {
            statuses.push(request(address, "GET", "/", &[]).status);
            metric_sum(admin, "rserpool_http_pe_busy_total") >= 1
        }),
        "no request found the PE busy: {statuses:?}"
    );
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(slow.join().unwrap().map(|reply| reply.status), Some(200));
}

/// Hedging: a PE that accepts connections and never answers (as a SIGSTOPped one)
/// held a GET for the whole `first_byte_timeout`; with `hedge_after` the GET goes to
/// the next PE as well after that delay and the first answer wins. (Ejection off, so
/// the frozen PE stays first for every other request.)
#[test]
fn a_frozen_pe_costs_a_get_no_more_than_the_hedge_delay() {
    let (registrar, asap, mut processes) = web_pool(1);
    processes.push(registrar);
    // Connections complete in the kernel's backlog; nothing is ever read or answered.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    processes.push(common::unchecked_agent(asap, frozen.local_addr().unwrap()));
    wait_for_pool(asap, "WebPool", 2);
    let (gateway, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n          first_byte_timeout: 20s\n          hedge_after: 200ms\n          outlier_detection: {consecutive_failures: 0}\n",
    );
    let address = gateway.listener("http");
    let admin = gateway.address("admin");
    for i in 0..8 {
        let started = std::time::Instant::now();
        let reply = request(address, "GET", &format!("/get-{i}"), &[]);
        let took = started.elapsed();
        assert_eq!(reply.status, 200, "GET {i}: {}", reply.body);
        assert!(took < Duration::from_secs(5), "GET {i} took {took:?}");
    }
    assert!(metric_sum(admin, "rserpool_http_hedges_total") >= 1);
    // Per PE: requests sent to each, and the answering PEs' response-head times.
    assert!(metric_sum(admin, "rserpool_http_pe_requests_total{") >= 2);
    assert!(metric_sum(admin, "rserpool_http_pe_response_seconds_count{") >= 1);
    drop(frozen);
}

/// Byte `i` of the blob the resuming tests' backends serve.
fn blob_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

const BLOB: usize = 4 << 20;

/// A backend serving a 4 MiB blob with `etag`: a whole GET gets its head and 1 MiB,
/// then the connection is reset (the PE died); a GET with `Range: bytes=N-` and an
/// `If-Range` equal to `etag` gets the rest as a 206, with another `If-Range` the
/// whole blob as a 200. Counts the ranges it served.
fn dying_blob_backend(
    etag: &'static str,
) -> (std::net::TcpListener, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let accepting = listener.try_clone().unwrap();
    let ranges = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = ranges.clone();
    thread::spawn(move || {
        for stream in accepting.incoming() {
            let Ok(mut stream) = stream else { return };
            let counted = counted.clone();
            thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let field = |name: &str| {
                    head.lines()
                        .find_map(|line| line.strip_prefix(name))
                        .map(|value| value.trim().to_owned())
                };
                let from = field("range:")
                    .filter(|_| field("if-range:").as_deref() == Some(etag))
                    .and_then(|range| {
                        range
                            .strip_prefix("bytes=")?
                            .strip_suffix('-')?
                            .parse()
                            .ok()
                    });
                let body: Vec<u8> = (from.unwrap_or(0)..BLOB).map(blob_byte).collect();
                let head = match from {
                    Some(from) => {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        format!(
                            "HTTP/1.1 206 Partial Content\r\nETag: {etag}\r\nContent-Range: bytes {from}-{}/{BLOB}\r\nContent-Length: {}\r\n\r\n",
                            BLOB - 1,
                            body.len()
                        )
                    }
                    None => {
                        format!("HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: {BLOB}\r\n\r\n")
                    }
                };
                let _ = stream.write_all(head.as_bytes());
                if from.is_some() {
                    let _ = stream.write_all(&body);
                } else {
                    let _ = stream.write_all(&body[..1 << 20]);
                    // Reset, as a crashed process's socket is.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
            });
        }
    });
    (listener, ranges)
}

/// A registrar, two dying blob backends (with these ETags) as PEs of WebPool, and a
/// gateway; a GET of the blob through it: the status and the body bytes that arrived.
fn get_blob_through_dying_pes(etags: [&'static str; 2]) -> (u16, Vec<u8>, u64, u64) {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let backends = etags.map(dying_blob_backend);
    let _agents: Vec<Process> = backends
        .iter()
        .map(|(listener, _)| common::unchecked_agent(asap, listener.local_addr().unwrap()))
        .collect();
    wait_for_pool(asap, "WebPool", 2);
    let (gateway, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n",
    );
    let mut stream = TcpStream::connect(gateway.listener("http")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"GET /blob HTTP/1.1\r\nHost: test.example\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // Until the end, or the connection cut.
    while let Ok(read @ 1..) = stream.read(&mut chunk) {
        raw.extend_from_slice(&chunk[..read]);
    }
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap();
    let admin = gateway.address("admin");
    let resumed = metric_sum(admin, "rserpool_http_bodies_resumed_total");
    let cut = metric_sum(admin, "rserpool_http_bodies_cut_total");
    (status, raw.split_off(end), resumed, cut)
}

/// The PE serving a GET dies after 1 MiB of 4: the gateway asks the other PE for the
/// rest (`Range`, `If-Range` with the strong ETag) and the client gets the whole blob,
/// byte for byte, in one response.
#[test]
fn a_get_cut_mid_body_is_completed_from_another_pe() {
    let (status, body, resumed, _) = get_blob_through_dying_pes(["\"blob-1\"", "\"blob-1\""]);
    assert_eq!(status, 200);
    assert_eq!(body.len(), BLOB, "a cut body");
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, byte)| *byte == blob_byte(i))
    );
    assert_eq!(resumed, 1);
}

/// Without a strong validator, or when the other PE has another representation (its
/// If-Range answer is a whole 200), nothing is spliced: the client's body is cut.
#[test]
fn a_cut_get_is_not_spliced_without_the_same_strong_validator() {
    let (status, body, resumed, cut) = get_blob_through_dying_pes(["W/\"blob-1\"", "W/\"blob-1\""]);
    assert_eq!(status, 200);
    assert!(body.len() < BLOB, "a weak ETag was spliced");
    assert_eq!((resumed, cut), (0, 0), "a weak ETag was resumed");
    let (status, body, resumed, cut) = get_blob_through_dying_pes(["\"blob-1\"", "\"blob-2\""]);
    assert_eq!(status, 200);
    assert!(body.len() < BLOB, "two representations were spliced");
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, byte)| *byte == blob_byte(i))
    );
    assert_eq!((resumed, cut), (0, 1));
}

/// A backend that keeps the heads of the requests it gets and answers `answer` (one
/// request per connection: the answer should say `Connection: close`, or the gateway
/// may send the next request on a connection the backend is closing), or, with `None`,
/// reads each request and closes the connection without a word (a PE that died before
/// answering).
fn recording_backend(
    answer: Option<&'static [u8]>,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = heads.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let recorded = recorded.clone();
            thread::spawn(move || {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head and the short body the tests send.
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(read @ 1..) => request.extend_from_slice(&chunk[..read]),
                        _ => return,
                    }
                }
                recorded
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&request).to_ascii_lowercase());
                if let Some(answer) = answer {
                    let _ = stream.write_all(answer);
                }
            });
        }
    });
    (address, heads)
}

/// The `Idempotency-Key` field of a recorded head.
fn idempotency_key(head: &str) -> Option<String> {
    head.lines()
        .find_map(|line| line.strip_prefix("idempotency-key:"))
        .map(|key| key.trim().to_owned())
}

/// A keyed route: a POST whose PE read it and died before answering goes to the next
/// PE with the same `Idempotency-Key` (made by the gateway, or the client's own), and
/// the client gets 200 instead of 502.
#[test]
fn a_keyed_post_survives_its_pe_dying_before_the_answer() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let (dying, dying_heads) = recording_backend(None);
    let (healthy, healthy_heads) = recording_backend(Some(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ));
    let _agents: Vec<Process> = [dying, healthy]
        .iter()
        .map(|backend| common::unchecked_agent(asap, *backend))
        .collect();
    wait_for_pool(asap, "WebPool", 2);
    let (gateway, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n          idempotency_keys: true\n          outlier_detection: {consecutive_failures: 0}\n",
    );
    let address = gateway.listener("http");
    for i in 0..6 {
        let reply = try_request(address, "POST", &format!("/order-{i}"), &[], b"x").unwrap();
        assert_eq!(reply.status, 200, "POST {i}: {reply:?}");
    }
    let reply = try_request(
        address,
        "POST",
        "/order-own-key",
        &[("Idempotency-Key", "\"client-key-1\"")],
        b"x",
    )
    .unwrap();
    assert_eq!(reply.status, 200);
    let dying_keys: Vec<_> = dying_heads
        .lock()
        .unwrap()
        .iter()
        .map(|head| idempotency_key(head).expect("a keyed POST"))
        .collect();
    let healthy_keys: Vec<_> = healthy_heads
        .lock()
        .unwrap()
        .iter()
        .filter_map(|head| idempotency_key(head))
        .collect();
    assert!(!dying_keys.is_empty(), "the dying PE got no POST");
    for key in &dying_keys {
        assert!(healthy_keys.contains(key), "{key} was not sent on");
    }
    assert!(healthy_keys.contains(&"\"client-key-1\"".to_owned()));
}

/// The demo PE applies a keyed request once: the same key again gets the first answer
/// (the session's count does not move), another key is applied.
#[test]
fn the_demo_pe_answers_a_repeated_key_with_its_first_answer() {
    let (_registrar, asap, _pes) = web_pool(1);
    let pe = &common::resolve_pes(&asap.to_string(), "WebPool", &[])[0];
    // The demo PE serves on 127.0.0.1.
    let port = pe["user_transport"]["port"].as_u64().unwrap();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let post = |key: &str| {
        try_request(
            address,
            "POST",
            "/order",
            &[
                ("Idempotency-Key", key),
                ("RSerPool-Session", "00000000000000aa"),
            ],
            b"x",
        )
        .unwrap()
    };
    let first = post("\"k1\"");
    assert_eq!(first.field("count"), "1");
    assert_eq!(post("\"k1\"").body, first.body);
    assert_eq!(post("\"k2\"").field("count"), "2");
}

/// A backend answering 503 to two requests of every three (never five in a row).
fn flapping_backend() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let answer: &[u8] = if n % 3 == 2 {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            } else {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nsick"
            };
            let _ = stream.write_all(answer);
        }
    });
    address
}

/// A PE failing two requests of three is never five in a row, so only its success
/// rate gives it away: judged every second here, it is ejected (and every GET is
/// answered 200 meanwhile, by the retries).
#[test]
fn a_pe_failing_most_requests_but_never_five_in_a_row_is_ejected_by_its_success_rate() {
    let (registrar, asap, mut processes) = web_pool(1);
    processes.push(registrar);
    processes.push(common::unchecked_agent(asap, flapping_backend()));
    wait_for_pool(asap, "WebPool", 2);
    let (gateway, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n          slow_start: 0s\n          outlier_detection: {interval: 1s, success_rate_request_volume: 5}\n",
    );
    let address = gateway.listener("http");
    let mut i = 0;
    assert!(
        eventually(Duration::from_secs(20), || {
            i += 1;
            let reply = request(address, "GET", &format!("/get-{i}"), &[]);
            assert_eq!(reply.status, 200, "GET {i}");
            gateway.log_contains("ejected for its success rate")
        }),
        "not ejected after {i} requests"
    );
    assert!(!gateway.log_contains("ejected after consecutive failures"));
}

/// A route to a pool nobody registered (a typo, or PEs not up yet) is said at start,
/// and its 503 names the pool.
#[test]
fn a_pool_without_pool_elements_is_named_at_start_and_in_its_503() {
    let (_registrar, asap, _pes) = web_pool(1);
    let (gateway, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPol\n",
    );
    assert!(eventually(Duration::from_secs(10), || gateway
        .log_contains("no pool element is registered in this pool")
        && gateway.log_contains("WebPol")));
    let reply = request(gateway.listener("http"), "GET", "/", &[]);
    assert_eq!(reply.status, 503);
    assert!(
        reply.body.contains("pool WebPol has no pool element"),
        "{}",
        reply.body
    );
}

/// `--http` and `--tcp` take the pool handle as given: `Web #1` stays whole (the flags
/// were turned into configuration text, where `#` starts a comment, and became `Web`).
#[test]
fn listener_flags_keep_the_pool_handle_whole() {
    let registrar = registrar(&[]);
    let gateway = Process::start(&[
        "gateway",
        "--registrar",
        &registrar.address("asap").to_string(),
        "--http",
        "127.0.0.1:0=Web #1",
        "--tcp",
        "127.0.0.1:0=Echo: two",
        "--admin",
        "127.0.0.1:0",
    ]);
    let (status, view) = common::admin_get(gateway.address("admin"), "/api/gateway");
    assert_eq!(status, 200);
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    let mut pools: Vec<&str> = view["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pool"].as_str().unwrap())
        .collect();
    pools.sort_unstable();
    assert_eq!(pools, ["Echo: two", "Web #1"], "{view}");
}

/// `least_requests`: a PE with one of this gateway's requests waiting loses its place
/// to an idle one, although the pool's policy (priority) puts it first; once it has
/// answered, it is first again.
#[test]
fn least_requests_sends_around_a_pe_with_a_request_waiting() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let preferred = common::demo_pe(asap, "http", "WebPool", "Priority:9");
    let other = common::demo_pe(asap, "http", "WebPool", "Priority:1");
    wait_for_pool(asap, "WebPool", 2);
    let (gateway, _file) = gateway(
        asap,
        "  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n          slow_start: 0s\n          least_requests: true\n",
    );
    let address = gateway.listener("http");
    let answered_by = |path: &str| request(address, "GET", path, &[]).field("pe").to_owned();
    assert_eq!(answered_by("/first"), preferred.ready["pe"]);
    let seen = preferred.log.lock().unwrap().len();
    let slow = thread::spawn(move || try_request(address, "GET", "/slow?delay_ms=3000", &[], b""));
    assert!(eventually(Duration::from_secs(10), || {
        preferred.log.lock().unwrap()[seen..]
            .iter()
            .any(|line| line.contains("request received") && line.contains("/slow"))
    }));
    assert_eq!(
        answered_by("/meanwhile"),
        other.ready["pe"],
        "the preferred PE has a request waiting"
    );
    assert_eq!(slow.join().unwrap().map(|reply| reply.status), Some(200));
    assert_eq!(answered_by("/after"), preferred.ready["pe"]);
}
