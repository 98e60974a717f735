//! SIGHUP on the gateway: listeners follow the configuration (added, removed,
//! re-tuned) while sessions run on the others, and those sessions see nothing; a
//! configuration whose new address cannot be bound changes nothing.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{ConfigFile, Process, eventually, registrar};

/// A counter session: each line sent is answered with the session's line count.
struct Counter {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    count: u64,
}

impl Counter {
    fn open(address: SocketAddr) -> Self {
        let writer = TcpStream::connect(address).unwrap();
        writer
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(writer.try_clone().unwrap());
        Self {
            writer,
            reader,
            count: 0,
        }
    }

    /// One line: the answer is the next count (the session went on untouched).
    fn step(&mut self) {
        self.writer.write_all(b"line\n").unwrap();
        let mut answer = String::new();
        self.reader.read_line(&mut answer).unwrap();
        self.count += 1;
        assert_eq!(answer.trim(), self.count.to_string(), "the session's count");
    }
}

/// The gateway's configuration with `listeners` (YAML under `gateway:`).
fn config(asap: SocketAddr, listeners: &str) -> String {
    format!("pool_user:\n  registrars: [{asap}]\ngateway:\n  drain_timeout: 2s\n{listeners}")
}

/// The listeners `/api/gateway` lists: (kind, address).
fn listed(gateway: &Process) -> Vec<(String, SocketAddr)> {
    let (_, text) = common::admin_get(gateway.address("admin"), "/api/gateway");
    let view: serde_json::Value = serde_json::from_str(&text).unwrap();
    view["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let address = l["address"].as_str().unwrap();
            let address = address.split(' ').next().unwrap();
            (
                l["kind"].as_str().unwrap().to_owned(),
                address.parse().unwrap(),
            )
        })
        .collect()
}

/// Rewrites the file, sends SIGHUP and waits for the reload's summary line.
fn reload(gateway: &Process, file: &ConfigFile, text: &str, expect: &str) {
    let before = gateway.log_count(expect);
    std::fs::write(&file.0, text).unwrap();
    gateway.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || gateway.log_count(expect)
            > before),
        "no {expect:?} after SIGHUP: {:#?}",
        gateway.log.lock().unwrap()
    );
}

fn http_status(address: SocketAddr) -> u16 {
    common::try_request(address, "GET", "/", &[], b"").map_or(0, |reply| reply.status)
}

#[test]
fn listeners_follow_the_configuration_on_sighup() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let _counters: Vec<Process> = (0..2)
        .map(|_| common::demo_pe(asap, "counter", "CounterPool", "RoundRobin"))
        .collect();
    let _web = common::demo_pe(asap, "http", "WebPool", "RoundRobin");
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "CounterPool").len() == 2
            && common::resolve_ids(asap, "WebPool").len() == 1
    }));
    let tcp = "  tcp:\n    - {listen: 127.0.0.1:0, pool: CounterPool}\n";
    let http = "  http:\n    - listen: 127.0.0.1:0\n      routes: [{pool: WebPool}]\n";
    let dns = "  dns:\n    - {listen: 127.0.0.1:0, zone: pool.test.}\n";
    let file = ConfigFile::new(&config(asap, &format!("{tcp}{http}{dns}")));
    let gateway = Process::start(&["gateway", "--config", &file.0, "--admin", "127.0.0.1:0"]);
    let (tcp_a, http_h) = (gateway.listener("tcp"), gateway.listener("http"));
    let dns_d = gateway.listener("dns");
    let mut session = Counter::open(tcp_a);
    session.step();
    assert_eq!(http_status(http_h), 200);

    // Add a TCP listener, re-tune the HTTP one, remove the DNS one.
    let tcp_b = "    - {listen: 127.0.0.2:0, pool: CounterPool}\n";
    let http_tuned = "  http:\n    - listen: 127.0.0.1:0\n      max_header_bytes: 16384\n      routes: [{pool: WebPool}]\n";
    reload(
        &gateway,
        &file,
        &config(asap, &format!("{tcp}{tcp_b}{http_tuned}")),
        "added=1 removed=1 replaced=1",
    );
    session.step();
    assert_eq!(
        http_status(http_h),
        200,
        "the re-tuned HTTP listener keeps its port"
    );
    assert!(
        TcpStream::connect(dns_d).is_err(),
        "the removed DNS listener is closed"
    );
    let added = listed(&gateway)
        .into_iter()
        .find(|(kind, address)| kind == "tcp" && address.ip().to_string() == "127.0.0.2")
        .map(|(_, address)| address)
        .expect("the new TCP listener is listed");
    let mut on_added = Counter::open(added);
    on_added.step();
    session.step();

    // Re-tune the first TCP listener under its live session, remove the second, bring
    // DNS back: the live session goes on with its settings, a new one starts.
    let tcp_tuned = "  tcp:\n    - {listen: 127.0.0.1:0, pool: CounterPool, idle_timeout: 30m}\n";
    reload(
        &gateway,
        &file,
        &config(asap, &format!("{tcp_tuned}{http_tuned}{dns}")),
        "added=1 removed=1 replaced=1",
    );
    session.step();
    let mut second = Counter::open(tcp_a);
    second.step();
    assert!(
        listed(&gateway).iter().any(|(kind, _)| kind == "dns"),
        "the DNS listener is back"
    );
    // The removed listener's session goes on, and is closed once drain_timeout (2 s)
    // is over.
    let removed_at = std::time::Instant::now();
    on_added.step();
    let mut rest = String::new();
    let closed = matches!(on_added.reader.read_line(&mut rest), Ok(0) | Err(_));
    let after = removed_at.elapsed();
    assert!(
        closed,
        "the removed listener's session outlived the drain: {rest:?}"
    );
    assert!(
        after >= Duration::from_millis(1_500),
        "closed {after:?} after the reload, before drain_timeout"
    );

    // An address in use (the admin listener's): nothing changes.
    let admin = gateway.address("admin");
    let taken = format!("    - {{listen: {admin}, pool: CounterPool}}\n");
    reload(
        &gateway,
        &file,
        &config(asap, &format!("{tcp_tuned}{taken}{http_tuned}{dns}")),
        "listeners not changed",
    );
    session.step();
    second.step();
    assert_eq!(http_status(http_h), 200);
    assert_eq!(listed(&gateway).len(), 3, "{:?}", listed(&gateway));
}
