//! End-to-end: the HTTP gateway speaking TLS to its PEs (`pe_tls` on a route, README
//! "TLS towards PEs"). A PE is sent a request only once it has proved, with a
//! certificate of the route's CA, the name the route expects (or its own IP address);
//! one that cannot is skipped like a refused connection but not reported unreachable,
//! counted and logged. Certificates come from `rserpool cert`.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::pki::Pki;
use common::{ConfigFile, Process, admin_get, agent, eventually, metric_sum, registrar, run};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// An HTTPS backend presenting certificate NAME of `pki`, keeping connections alive;
/// with `clients_of`, it asks for a client certificate of that CA.
struct TlsBackend {
    address: SocketAddr,
    /// TCP connections accepted, handshake or not.
    accepted: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl TlsBackend {
    fn start(pki: &Pki, name: &str, clients_of: Option<&Pki>) -> Self {
        let config = Arc::new(server_config(pki, name, clients_of));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (handshakes, requests) = (Arc::default(), Arc::default());
        let accepted = Arc::<AtomicUsize>::default();
        let counts = (Arc::clone(&handshakes), Arc::clone(&requests));
        let accepting = Arc::clone(&accepted);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                accepting.fetch_add(1, Ordering::Relaxed);
                let (config, counts) = (config.clone(), counts.clone());
                thread::spawn(move || serve(stream, config, &counts));
            }
        });
        Self {
            address,
            accepted,
            handshakes,
            requests,
        }
    }
}

/// An HTTPS backend speaking HTTP/2 only (ALPN `h2`), answering `200 hello`; it
/// counts HTTP/2 connections and requests.
struct H2Backend {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl H2Backend {
    fn start(pki: &Pki, name: &str) -> Self {
        let mut config = server_config(pki, name, None);
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::<AtomicUsize>::default();
        let requests = Arc::<AtomicUsize>::default();
        let counts = (Arc::clone(&connections), Arc::clone(&requests));
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((socket, _)) = listener.accept().await {
                    let (acceptor, counts) = (acceptor.clone(), counts.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(socket).await else {
                            return;
                        };
                        let Ok(mut connection) = h2::server::handshake(tls).await else {
                            return;
                        };
                        // Counted here: the PE agent's TCP health checks connect too.
                        counts.0.fetch_add(1, Ordering::Relaxed);
                        while let Some(Ok((_, mut respond))) = connection.accept().await {
                            counts.1.fetch_add(1, Ordering::Relaxed);
                            let head = http::Response::builder()
                                .header("content-length", "5")
                                .body(())
                                .unwrap();
                            if let Ok(mut body) = respond.send_response(head, false) {
                                let _ = body.send_data(bytes::Bytes::from_static(b"hello"), true);
                            }
                        }
                    });
                }
            });
        });
        Self {
            address,
            connections,
            requests,
        }
    }
}

/// The TLS settings of a backend presenting certificate NAME of `pki`; with
/// `clients_of`, it asks for a client certificate of that CA.
fn server_config(pki: &Pki, name: &str, clients_of: Option<&Pki>) -> rustls::ServerConfig {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pki.path(&format!("{name}.pem")))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{name}-key.pem"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients_of {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca.path("ca.pem")).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).unwrap()
}

/// One client connection: the handshake, then `200 hello` to each request head; a
/// request to upgrade to `echo` is answered 101 and everything after it echoed.
fn serve(
    stream: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    (handshakes, requests): &(Arc<AtomicUsize>, Arc<AtomicUsize>),
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let connection = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, stream);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    handshakes.fetch_add(1, Ordering::Relaxed);
    let mut pending = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            pending.drain(..end + 4);
            requests.fetch_add(1, Ordering::Relaxed);
            if head.contains("upgrade: echo") {
                let switching = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
                if tls.write_all(switching).is_ok() {
                    echo(tls, pending);
                }
                return;
            }
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
            if tls.write_all(answer).and_then(|()| tls.flush()).is_err() {
                return;
            }
        }
        match tls.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(read) => pending.extend_from_slice(&buffer[..read]),
        }
    }
}

/// Echoes what comes after an upgrade (`early` first) until the peer closes.
fn echo(
    mut tls: rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>,
    early: Vec<u8>,
) {
    let mut buffer = [0u8; 4096];
    let mut data = early;
    loop {
        if tls.write_all(&data).and_then(|()| tls.flush()).is_err() {
            return;
        }
        match tls.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(read) => data = buffer[..read].to_vec(),
        }
    }
}

/// A gateway in front of WebPool whose routes are `routes` (YAML under `routes:`).
/// Requests skipping impostors are retries: the retry budget (tested elsewhere) is
/// set to allow one per request, so that it is not what these tests measure.
fn gateway(asap: SocketAddr, routes: &str) -> (Process, ConfigFile) {
    let file = ConfigFile::new(&format!(
        "pool_user:\n  registrars: [{asap}]\ngateway:\n  http:\n    - listen: 127.0.0.1:0\n      retry_ratio: 2.0\n      routes:\n{routes}"
    ));
    let process = Process::start(&["gateway", "--config", &file.0, "--admin", "127.0.0.1:0"]);
    (process, file)
}

/// `GET path` on a new connection: the status and body.
fn get(gateway: SocketAddr, path: &str) -> (u16, String) {
    let reply = common::try_request(gateway, "GET", path, &[], b"")
        .unwrap_or_else(|| panic!("no response to GET {path}"));
    (reply.status, reply.body)
}

/// The route to WebPool whose PEs must prove `web.internal` with a certificate of
/// `pki`'s CA.
fn web_internal_route(pki: &Pki) -> String {
    format!(
        "        - pool: WebPool\n          pe_tls: {{ca: {}, server_name: web.internal}}\n",
        pki.path("ca.pem")
    )
}

/// `times` GETs through the gateway, each answered `200 hello`.
fn say_hello(gateway: SocketAddr, times: usize) {
    for _ in 0..times {
        assert_eq!(get(gateway, "/"), (200, "hello".to_owned()));
    }
}

/// A registrar and one agent per backend, all in WebPool.
fn pool(backends: &[&TlsBackend]) -> (Process, SocketAddr, Vec<Process>) {
    let addresses: Vec<SocketAddr> = backends.iter().map(|backend| backend.address).collect();
    pool_at(&addresses)
}

/// A registrar and one agent per backend address, all in WebPool.
fn pool_at(backends: &[SocketAddr]) -> (Process, SocketAddr, Vec<Process>) {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let agents: Vec<Process> = backends
        .iter()
        .map(|backend| agent(asap, *backend, &["--health", "tcp"]))
        .collect();
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "WebPool").len() == backends.len()
    }));
    (registrar, asap, agents)
}

/// Threat: a gateway that forwarded requests (cookies, credentials) to whoever listens
/// at a PE's address. A PE proving the route's name is served, over pooled connections.
#[test]
fn a_pe_proving_the_routes_name_is_served_over_pooled_tls_connections() {
    let pki = Pki::new("pe-name");
    pki.issue("web", &["--dns", "web.internal"]);
    let backend = TlsBackend::start(&pki, "web", None);
    let (_registrar, asap, _agents) = pool(&[&backend]);
    let (gateway, _file) = gateway(asap, &web_internal_route(&pki));
    let address = gateway.listener("http");
    say_hello(address, 10);
    assert_eq!(backend.requests.load(Ordering::Relaxed), 10);
    // Kept alive between requests: one handshake serves them all (two if a pooled
    // connection was judged closed).
    let handshakes = backend.handshakes.load(Ordering::Relaxed);
    assert!((1..=2).contains(&handshakes), "{handshakes} handshakes");
}

/// Without `server_name` the PE's certificate must name the address it registered.
#[test]
fn without_a_server_name_the_pe_proves_its_ip_address() {
    let pki = Pki::new("pe-ip");
    pki.issue("by-address", &["--ip", "127.0.0.1"]);
    pki.issue("by-name", &["--dns", "web.internal"]);
    let by_address = TlsBackend::start(&pki, "by-address", None);
    let by_name = TlsBackend::start(&pki, "by-name", None);
    let (_registrar, asap, _agents) = pool(&[&by_address, &by_name]);
    let ca = pki.path("ca.pem");
    let (gateway, _file) = gateway(
        asap,
        &format!("        - pool: WebPool\n          pe_tls: {{ca: {ca}}}\n"),
    );
    let address = gateway.listener("http");
    for _ in 0..10 {
        assert_eq!(get(address, "/").0, 200);
    }
    assert_eq!(by_address.requests.load(Ordering::Relaxed), 10);
    assert_eq!(by_name.requests.load(Ordering::Relaxed), 0);
}

/// Threat: an impostor registered in the pool (a certificate of another CA, or of the
/// right CA for another name). It gets no request, stays registered (the gateway does
/// not report it unreachable: it answered), and the refusals are counted and logged.
#[test]
fn impostor_pes_get_no_request_and_are_counted() {
    let pki = Pki::new("pe-impostor");
    let other = Pki::new("pe-impostor-other");
    pki.issue("web", &["--dns", "web.internal"]);
    pki.issue("elsewhere", &["--dns", "other.internal"]);
    other.issue("web", &["--dns", "web.internal"]);
    let good = TlsBackend::start(&pki, "web", None);
    let wrong_name = TlsBackend::start(&pki, "elsewhere", None);
    let wrong_ca = TlsBackend::start(&other, "web", None);
    let (_registrar, asap, _agents) = pool(&[&good, &wrong_name, &wrong_ca]);
    let (gateway, _file) = gateway(asap, &web_internal_route(&pki));
    let address = gateway.listener("http");
    say_hello(address, 12);
    assert_eq!(good.requests.load(Ordering::Relaxed), 12);
    assert_eq!(wrong_name.requests.load(Ordering::Relaxed), 0);
    assert_eq!(wrong_ca.requests.load(Ordering::Relaxed), 0);
    let (_, metrics) = admin_get(gateway.address("admin"), "/metrics");
    let refused = metric_sum(
        &metrics,
        "rserpool_http_pe_tls_failures_total{pool=\"WebPool\"}",
    );
    assert!(refused >= 2.0, "{refused} TLS failures counted:\n{metrics}");
    assert!(gateway.log_contains("TLS handshake with a PE failed"));
    assert_eq!(common::resolve_ids(asap, "WebPool").len(), 3);
}

/// A PE that asks for a client certificate gets the route's; a route without one is
/// refused by that PE (502).
#[test]
fn mutual_tls_presents_the_routes_client_certificate() {
    let pki = Pki::new("pe-mutual");
    pki.issue("web", &["--dns", "web.internal"]);
    pki.issue("gateway", &["--dns", "gateway.internal"]);
    let backend = TlsBackend::start(&pki, "web", Some(&pki));
    let (_registrar, asap, _agents) = pool(&[&backend]);
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("gateway.pem"),
        pki.path("gateway-key.pem"),
    );
    let (gateway, _file) = gateway(
        asap,
        &format!(
            "        - pool: WebPool\n          path: /signed\n          pe_tls: {{ca: {ca}, server_name: web.internal, cert: {cert}, key: {key}}}\n        - pool: WebPool\n          max_attempts: 1\n          pe_tls: {{ca: {ca}, server_name: web.internal}}\n"
        ),
    );
    let address = gateway.listener("http");
    assert_eq!(get(address, "/signed/a"), (200, "hello".to_owned()));
    assert_eq!(get(address, "/unsigned").0, 502);
    assert_eq!(backend.requests.load(Ordering::Relaxed), 1);
}

/// SIGHUP reads the route's CA file again: a PE refused under the old CA is served
/// once the file holds its CA.
#[test]
fn sighup_reads_the_pe_ca_again() {
    let pki = Pki::new("pe-reload");
    let old = Pki::new("pe-reload-old");
    pki.issue("web", &["--dns", "web.internal"]);
    let backend = TlsBackend::start(&pki, "web", None);
    let (_registrar, asap, _agents) = pool(&[&backend]);
    let trusted = pki.dir.join("trusted.pem");
    std::fs::copy(old.path("ca.pem"), &trusted).unwrap();
    let (gateway, _file) = gateway(
        asap,
        &format!(
            "        - pool: WebPool\n          max_attempts: 1\n          pe_tls: {{ca: {}, server_name: web.internal}}\n",
            trusted.display()
        ),
    );
    let address = gateway.listener("http");
    assert_eq!(get(address, "/").0, 502);
    std::fs::copy(pki.path("ca.pem"), &trusted).unwrap();
    gateway.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || get(address, "/").0 == 200),
        "still refused after SIGHUP"
    );
}

/// Settings that cannot work are refused at start, naming what is wrong.
#[test]
fn unusable_pe_tls_settings_are_refused_at_start() {
    let pki = Pki::new("pe-settings");
    let ca = pki.path("ca.pem");
    let cases = [
        (
            format!("{{ca: {ca}, cert: {ca}}}"),
            "cert and key go together",
        ),
        (
            "{ca: /nonexistent/ca.pem}".to_owned(),
            "/nonexistent/ca.pem",
        ),
        (
            format!("{{ca: {ca}, server_name: \"not a name\"}}"),
            "server name",
        ),
    ];
    for (settings, expected) in cases {
        let file = ConfigFile::new(&format!(
            "pool_user:\n  registrars: [127.0.0.1:9]\ngateway:\n  http:\n    - listen: 127.0.0.1:0\n      routes:\n        - pool: WebPool\n          pe_tls: {settings}\n"
        ));
        let (code, _, stderr) = run(&["gateway", "--config", &file.0]);
        assert_ne!(code, 0, "{settings}");
        assert!(stderr.contains(expected), "{settings}: {stderr}");
    }
}

/// `pe_protocol: http2` over TLS: ALPN `h2`, and the requests of many clients at once
/// share the PE's one connection.
#[test]
fn http2_over_tls_carries_many_clients_on_one_connection() {
    let pki = Pki::new("pe-h2");
    pki.issue("web", &["--dns", "web.internal"]);
    let backend = H2Backend::start(&pki, "web");
    let (_registrar, asap, _agents) = pool_at(&[backend.address]);
    let route = web_internal_route(&pki) + "          pe_protocol: http2\n";
    let (gateway, _file) = gateway(asap, &route);
    let address = gateway.listener("http");
    // The first request opens the connection; the others find it.
    say_hello(address, 1);
    let clients: Vec<_> = (0..8)
        .map(|_| thread::spawn(move || say_hello(address, 5)))
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(backend.requests.load(Ordering::Relaxed), 41);
    assert_eq!(backend.connections.load(Ordering::Relaxed), 1);
}

/// A PE that does not take HTTP/2 by ALPN is served over HTTP/1.1.
#[test]
fn http2_routes_speak_http1_to_pes_that_choose_it() {
    let pki = Pki::new("pe-h2-fallback");
    pki.issue("web", &["--dns", "web.internal"]);
    let backend = TlsBackend::start(&pki, "web", None);
    let (_registrar, asap, _agents) = pool(&[&backend]);
    let route = web_internal_route(&pki) + "          pe_protocol: http2\n";
    let (gateway, _file) = gateway(asap, &route);
    say_hello(gateway.listener("http"), 3);
    assert_eq!(backend.requests.load(Ordering::Relaxed), 3);
}

/// An upgrade (WebSocket and the like) through a `pe_tls` route: the tunnel runs over
/// the PE's TLS connection (HTTP/1.1 even on an HTTP/2 route).
#[test]
fn an_upgrade_is_tunnelled_over_the_pes_tls_connection() {
    let pki = Pki::new("pe-upgrade");
    pki.issue("web", &["--dns", "web.internal"]);
    let backend = TlsBackend::start(&pki, "web", None);
    let (_registrar, asap, _agents) = pool(&[&backend]);
    let route = web_internal_route(&pki) + "          pe_protocol: http2\n";
    let (gateway, _file) = gateway(asap, &route);
    let mut client = std::net::TcpStream::connect(gateway.listener("http")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: web\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(client.read(&mut byte).unwrap(), 1, "closed in the head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for line in ["first line\n", "second line\n"] {
        client.write_all(line.as_bytes()).unwrap();
        let mut echoed = vec![0u8; line.len()];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, line.as_bytes());
    }
}

/// Requests that arrive together for a PE whose HTTP/2 connection cannot be opened (an
/// impostor: its certificate is of another CA) wait for the one opening it and then
/// give up with it: one connection, not one per request.
#[test]
fn requests_waiting_for_a_failed_http2_connection_give_up_with_it() {
    let pki = Pki::new("pe-h2-failed");
    let other = Pki::new("pe-h2-failed-other");
    other.issue("web", &["--dns", "web.internal"]);
    let impostor = TlsBackend::start(&other, "web", None);
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    // No health checks: they would connect too.
    let _agent = agent(asap, impostor.address, &["--health", "none"]);
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "WebPool").len() == 1
    }));
    let route = web_internal_route(&pki) + "          pe_protocol: http2\n";
    let (gateway, _file) = gateway(asap, &route);
    let address = gateway.listener("http");
    let start = std::sync::Barrier::new(8);
    thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                start.wait();
                assert_eq!(get(address, "/").0, 502);
            });
        }
    });
    assert_eq!(impostor.handshakes.load(Ordering::Relaxed), 0);
    let accepted = impostor.accepted.load(Ordering::Relaxed);
    assert!(accepted <= 2, "{accepted} connections for 8 requests");
}
