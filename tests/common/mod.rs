//! Helpers for end-to-end tests: run the real binary with JSON logs, wait for its
//! "ready" event (the bound addresses are its fields), kill it on drop; tiny HTTP backends that can be stopped and restarted.

#![allow(
    clippy::disallowed_methods,
    reason = "a real clock for test deadlines and measurements"
)]
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses part of these helpers"
)]

pub mod pki;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The `rserpool` binary under test: cargo's, unless `RSERPOOL_TEST_BINARY` names a
/// copy. The SCTP VM runs a copy in its RAM (scripts/sctp-tests.sh): its view of
/// `target/` is 9p with `cache=mmap`, which drops a file's pages once no process maps
/// it, so every start re-read the debug binary through the emulator (0.3 s to 35 s).
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var("RSERPOOL_TEST_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_rserpool").to_owned())
    })
}

/// A running `rserpool` process; its stderr is collected.
pub struct Process {
    pub child: Child,
    pub ready: BTreeMap<String, String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `rserpool ARGS` and waits (up to 20 s) for its "ready" line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Process::start`] with more environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary())
            .args(args)
            .env("RSERPOOL_LOG", "info")
            .env("RSERPOOL_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rserpool");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let lines = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let event = LogEvent::parse(&line);
                if let Some(fields) = event.as_ref().and_then(LogEvent::ready_fields) {
                    let _ = ready_tx.send(fields);
                }
                let text = event.map_or(line, |event| event.text());
                lines.lock().unwrap().push(text);
            }
        });
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                // A copy: panicking with the guard alive would poison the log for the
                // thread still reading the process's output.
                let lines = log.lock().unwrap().clone();
                panic!("no ready event from rserpool {args:?}: {lines:?}")
            });
        Self { child, ready, log }
    }

    pub fn address(&self, field: &str) -> SocketAddr {
        self.ready[field].parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address of a listener the ready line names as `ADDRESS=POOL` (the
    /// gateway's `http` and `tcp` fields; the first one).
    pub fn listener(&self, field: &str) -> SocketAddr {
        let first = self.ready[field].split(',').next().unwrap();
        first
            .split_once('=')
            .map_or(first, |(address, _)| address)
            .parse()
            .unwrap()
    }

    /// The process's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            // Pause: between polls of a process exit with a deadline.
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// How many of its log lines so far contain `text`.
    pub fn log_count(&self, text: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(text))
            .count()
    }

    pub fn log_contains(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }
}

/// One event of a process started with `RSERPOOL_LOG_FORMAT=json` (tracing's JSON
/// format: level, target, and the event's fields with its message among them).
pub struct LogEvent {
    level: String,
    target: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl LogEvent {
    /// The event on `line`; `None` for anything else the process wrote (a panic).
    pub fn parse(line: &str) -> Option<Self> {
        let serde_json::Value::Object(mut event) = serde_json::from_str(line).ok()? else {
            return None;
        };
        let serde_json::Value::Object(fields) = event.remove("fields")? else {
            return None;
        };
        let text = |value: Option<&serde_json::Value>| {
            value
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        Some(Self {
            level: text(event.get("level")),
            target: text(event.get("target")),
            fields,
        })
    }

    /// The fields of the "ready" event, each as its text.
    fn ready_fields(&self) -> Option<BTreeMap<String, String>> {
        (self.fields.get("message")?.as_str()? == "ready").then(|| {
            self.fields
                .iter()
                .filter(|(key, _)| *key != "message")
                .map(|(key, value)| (key.clone(), Self::value_text(value)))
                .collect()
        })
    }

    /// The event as a line of the text format (`LEVEL target: message key=value ...`),
    /// which the tests' log checks search.
    fn text(&self) -> String {
        let mut line = format!("{} {}:", self.level, self.target);
        if let Some(message) = self.fields.get("message") {
            line.push(' ');
            line.push_str(&Self::value_text(message));
        }
        for (key, value) in self.fields.iter().filter(|(key, _)| *key != "message") {
            line.push_str(&format!(" {key}={}", Self::value_text(value)));
        }
        line
    }

    fn value_text(value: &serde_json::Value) -> String {
        match value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `rserpool ARGS` to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .output()
        .expect("run rserpool");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs a command to completion and returns its stdout; a failure shows both outputs.
pub fn stdout_of(command: &mut Command) -> String {
    let output = command.output().expect("run the command");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        // Pause: between polls of a condition with a deadline (eventually).
        thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.0 server answering 200 to everything (or another fixed response),
/// until stopped.
pub struct Backend {
    pub address: SocketAddr,
    /// Requests answered so far.
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    /// Serves on a free port of 127.0.0.1.
    pub fn start() -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap())
    }

    /// Serves on `address` (to restart a stopped backend on its old port).
    pub fn start_at(address: SocketAddr) -> Self {
        Self::answering(address, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    }

    /// Serves on `address`, answering `response` to every request.
    pub fn answering(address: SocketAddr, response: &'static [u8]) -> Self {
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = hits.clone();
        let listener = TcpListener::bind(address).expect("bind backend");
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buffer = [0u8; 1024];
                        let _ = stream.read(&mut buffer);
                        counted.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.write_all(response);
                    }
                    // Pause: a non-blocking accept found nobody; look again shortly.
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            address,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops serving and closes the port.
    pub fn stop(mut self) -> SocketAddr {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.address
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A `pe` agent registering `backend` in WebPool at the registrar `asap` (an ASAP
/// address), with the `extra` flags (health checks, admin listener).
pub fn agent(asap: SocketAddr, backend: SocketAddr, extra: &[&str]) -> Process {
    let (backend, asap) = (backend.to_string(), asap.to_string());
    let mut args = vec![
        "pe",
        "--pool",
        "WebPool",
        "--backend",
        &backend,
        "--registrar",
        &asap,
    ];
    args.extend_from_slice(extra);
    Process::start(&args)
}

/// [`agent`] without health checks.
pub fn unchecked_agent(asap: SocketAddr, backend: SocketAddr) -> Process {
    agent(asap, backend, &["--health", "none"])
}

/// A registrar on free loopback ports with announces and ENRP multicast off, unless
/// `extra` sets those flags itself. (With multicast on, registrars of tests running in
/// parallel would find each other.)
pub fn registrar(extra: &[&str]) -> Process {
    Process::start(&registrar_args(extra))
}

/// The command line of [`registrar`]: free loopback ports and multicast off, unless
/// `extra` sets those flags itself.
pub fn registrar_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["registrar"];
    for (flag, value) in [
        ("--asap", "127.0.0.1:0"),
        ("--enrp", "127.0.0.1:0"),
        ("--announce", "off"),
        ("--enrp-multicast", "off"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    args
}

/// The PE identifiers `rserpool resolve --json` returns (empty when the pool is unknown).
pub fn resolve_ids(registrar: SocketAddr, pool: &str) -> Vec<String> {
    resolve_pes(&registrar.to_string(), pool, &[])
        .iter()
        .map(|pe| pe["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The PEs `rserpool resolve --json [EXTRA]` returns (empty when the pool is unknown).
pub fn resolve_pes(registrar: &str, pool: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec![
        "resolve",
        pool,
        "--registrar",
        registrar,
        "--count",
        "100",
        "--json",
        "--timeout",
        "5s",
    ];
    args.extend_from_slice(extra);
    let (code, stdout, _) = run(&args);
    if code != 0 {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    json["pool_elements"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Sends one raw message on a TCP connection.
pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
}

/// Reads one framed message (None on close or timeout).
pub fn receive(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).ok()?;
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut rest = vec![0u8; ((length + 3) & !3).checked_sub(4)?];
    stream.read_exact(&mut rest).ok()?;
    Some([header.to_vec(), rest].concat())
}

/// `rserpool pe --serve KIND` in `pool` with `policy`, registered at `asap`.
pub fn demo_pe(asap: SocketAddr, kind: &str, pool: &str, policy: &str) -> Process {
    // At debug level an `http` demo PE says when a request reaches it
    // (`request received`), which tests wait for instead of sleeping.
    Process::start_with_env(
        &[
            "pe",
            "--serve",
            kind,
            "--pool",
            pool,
            "--policy",
            policy,
            "--registrar",
            &asap.to_string(),
            "--reregistration-interval",
            "5s",
        ],
        &[("RSERPOOL_LOG", "info,rserpool::demo_http=debug")],
    )
}

/// An HTTP response as the tests read it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A `key=value` field of the demo service's answer.
    pub fn field(&self, key: &str) -> &str {
        self.body
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
    }

    /// The session cookie the gateway set, as `name=value`.
    pub fn cookie(&self) -> Option<String> {
        self.header("set-cookie")
            .map(|c| c.split(';').next().unwrap().to_owned())
    }
}

/// One request on its own connection (`Connection: close`); `None` if the connection
/// broke without a response.
pub fn try_request(
    target: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Reply> {
    let mut stream = TcpStream::connect(target).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test.example\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// `GET path` on an admin listener: the status code and the body.
pub fn admin_get(address: SocketAddr, path: &str) -> (u16, String) {
    admin_request(address, "GET", path, "")
}

/// `METHOD path` with `body` on an admin listener: the status code and the body.
pub fn admin_request(address: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let reply = try_request(address, method, path, &[], body.as_bytes())
        .unwrap_or_else(|| panic!("no answer to {method} {path} from {address}"));
    (reply.status, reply.body)
}

/// A round-robin PE `id` at 127.0.0.1:`port` over TCP (data only).
pub fn pool_element(id: u32, port: u16) -> rserpool_proto::wire::PoolElement {
    use rserpool_proto::wire::{
        Policy, PoolElement, PoolElementId, RegistrarId, Transport, TransportProtocol, TransportUse,
    };
    PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId::UNKNOWN,
        registration_life_ms: 60_000,
        user_transport: Transport {
            protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
            port,
            addresses: vec![std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

/// An ASAP_REGISTRATION of [`pool_element`] in `pool`.
pub fn registration(id: u32, pool: &str, port: u16) -> Vec<u8> {
    use rserpool_proto::wire::{AsapMessage, PoolHandle, Registration};
    AsapMessage::Registration(Registration {
        pool_handle: PoolHandle::new(pool.as_bytes()).unwrap(),
        pool_element: pool_element(id, port),
    })
    .encode()
    .unwrap()
}

/// Every metric family in a Prometheus text has its `# HELP` line (histograms'
/// `_bucket`, `_sum` and `_count` series belong to their family).
pub fn assert_every_family_described(text: &str) {
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let family = series.strip_suffix(suffix)?;
                text.contains(&format!("# HELP {family} "))
                    .then_some(family)
            })
            .unwrap_or(series);
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no # HELP for {family}:\n{text}"
        );
    }
}

/// The value of the series `series` (name and labels, exactly as rendered) in a
/// Prometheus text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The sum of every series whose line starts with `prefix` (a family, or a family and
/// the first labels), in Prometheus text.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A configuration file, removed when dropped.
pub struct ConfigFile(pub String);

impl ConfigFile {
    pub fn new(text: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "rserpool-test-{}-{}.yaml",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        Self(path.to_string_lossy().into_owned())
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A gateway with one TCP listener for `pool` (its address: `listener("tcp")`).
pub fn tcp_gateway(asap: SocketAddr, pool: &str) -> Process {
    Process::start(&[
        "gateway",
        "--registrar",
        &asap.to_string(),
        "--tcp",
        &format!("127.0.0.1:0={pool}"),
        "--admin",
        "127.0.0.1:0",
        "--log-level",
        "info,rserpool_gateways=debug",
    ])
}

/// Pool element identifier -> home registrar, as `dump --json` at the registrar whose
/// ENRP address is `enrp` shows them (empty when it does not answer).
pub fn homes(enrp: SocketAddr) -> BTreeMap<String, String> {
    let (code, stdout, _) = run(&[
        "dump",
        "--registrar",
        &enrp.to_string(),
        "--json",
        "--timeout",
        "3s",
    ]);
    if code != 0 {
        return BTreeMap::new();
    }
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    json["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|pool| pool["pool_elements"].as_array().unwrap().clone())
        .map(|pe| {
            (
                pe["id"].as_str().unwrap().to_owned(),
                pe["home_registrar"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
