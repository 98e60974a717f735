//! The admin listener of every role (README "Admin"): `/readyz` follows what the role
//! can do, `/api/` shows the registrar's handlespace and peers and the agent's PEs.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Backend, Process, admin_get, eventually};

/// An agent registering `backend` in WebPool at `asap`, checking it by HTTP every
/// 200 ms, with an admin listener on a port of its own (`address("admin")`).
fn checked_agent(backend: SocketAddr, asap: SocketAddr) -> Process {
    common::agent(
        asap,
        backend,
        &[
            "--health",
            "http:/",
            "--health-interval",
            "200ms",
            "--admin",
            "127.0.0.1:0",
        ],
    )
}

/// An HTTP backend on a port of its own that fails every request (closes the
/// connection unanswered) until `up` is set, then answers 200.
fn switchable_backend() -> (SocketAddr, Arc<AtomicBool>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let serving = up.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if serving.load(Ordering::Relaxed) {
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head);
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        }
    });
    (address, up)
}

#[test]
fn readiness_and_json_views_of_every_role() {
    let registrar = common::registrar(&["--admin", "127.0.0.1:0"]);
    let (asap, registrar_admin) = (registrar.address("asap"), registrar.address("admin"));
    assert_eq!(
        admin_get(registrar_admin, "/readyz").0,
        200,
        "no peers: ready at once"
    );
    assert_eq!(admin_get(registrar_admin, "/healthz").0, 200);

    // An agent whose backend is down is alive but not ready; it becomes ready once the
    // backend is up and its PE registered.
    let (backend, backend_up) = switchable_backend();
    let agent = checked_agent(backend, asap);
    let agent_admin = agent.address("admin");
    let (status, body) = admin_get(agent_admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no pool element registered"), "{body}");
    backend_up.store(true, Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(10), || admin_get(
        agent_admin,
        "/readyz"
    )
    .0 == 200));
    let (_, agent_pes) = admin_get(agent_admin, "/api/pool_elements");
    let agent_pes: serde_json::Value = serde_json::from_str(&agent_pes).unwrap();
    let pe_id = agent_pes["registered"][0]["pe_id"].clone();
    assert_eq!(agent_pes["registered"][0]["pool_handle"], "WebPool");

    // The registrar's handlespace holds that PE; its peer list is empty.
    let (status, handlespace) = admin_get(registrar_admin, "/api/handlespace");
    assert_eq!(status, 200);
    let handlespace: serde_json::Value = serde_json::from_str(&handlespace).unwrap();
    assert_eq!(handlespace["pools"][0]["pool_handle"], "WebPool");
    assert_eq!(
        handlespace["pools"][0]["pool_elements"][0]["id"], pe_id,
        "{handlespace}"
    );
    assert_eq!(handlespace["synchronized"], true);
    let (_, peers) = admin_get(registrar_admin, "/api/peers");
    let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
    assert_eq!(peers["peers"].as_array().unwrap().len(), 0);
    // The log filter changes at run time.
    assert_eq!(admin_get(registrar_admin, "/log").1.trim(), "info");
    assert_eq!(
        admin_put(registrar_admin, "/log", "debug,rserpool=trace").0,
        200
    );
    assert_eq!(
        admin_get(registrar_admin, "/log").1.trim(),
        "debug,rserpool=trace"
    );
    let (status, body) = admin_put(registrar_admin, "/log", "rserpool=notalevel");
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        admin_get(registrar_admin, "/log").1.trim(),
        "debug,rserpool=trace",
        "kept"
    );
    assert_eq!(admin_put(registrar_admin, "/log", "info").0, 200);

    let (status, body) = admin_get(registrar_admin, "/api/nothing");
    assert_eq!(status, 404);
    assert!(
        body.contains("handlespace") && body.contains("peers"),
        "{body}"
    );

    // A demo PE (`pe --serve`) has the same listener.
    let demo = Process::start(&[
        "pe",
        "--serve",
        "http",
        "--pool",
        "DemoPool",
        "--registrar",
        &asap.to_string(),
        "--admin",
        "127.0.0.1:0",
    ]);
    let demo_admin = demo.address("admin");
    assert!(eventually(Duration::from_secs(10), || admin_get(
        demo_admin, "/readyz"
    )
    .0 == 200));
    let (_, listed) = admin_get(demo_admin, "/api/pool_elements");
    assert!(listed.contains(&demo.ready["pe"]), "{listed}");

    // The gateway is ready while a registrar answers, and says why not when none does.
    let gateway = Process::start(&[
        "gateway",
        "--registrar",
        &asap.to_string(),
        "--http",
        "127.0.0.1:0=WebPool",
        "--admin",
        "127.0.0.1:0",
    ]);
    let gateway_admin = gateway.address("admin");
    assert!(eventually(Duration::from_secs(10), || admin_get(
        gateway_admin,
        "/readyz"
    )
    .0 == 200));
    let (status, sessions) = admin_get(gateway_admin, "/api/sessions");
    assert_eq!(status, 200);
    assert!(sessions.contains("\"open\""), "{sessions}");
    drop(registrar);
    assert!(eventually(Duration::from_secs(15), || {
        let (status, body) = admin_get(gateway_admin, "/readyz");
        status == 503 && body.contains("registrar")
    }));
}

fn admin_put(address: SocketAddr, path: &str, body: &str) -> (u16, String) {
    common::admin_request(address, "PUT", path, body)
}

/// With a token file, `/log` and `/api/` need `Authorization: Bearer TOKEN` (401
/// otherwise, and the log level stays); `/metrics`, `/healthz` and `/readyz` stay open.
#[test]
fn the_admin_token_guards_log_changes_and_the_api() {
    let token = "0123456789abcdef0123456789abcdef";
    let file = std::env::temp_dir().join(format!("rserpool-admin-token-{}", std::process::id()));
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let registrar = common::registrar(&[
        "--admin",
        "127.0.0.1:0",
        "--admin-token-file",
        file.to_str().unwrap(),
    ]);
    let admin = registrar.address("admin");
    let bearer = format!("Bearer {token}");
    let request = |method: &str, path: &str, authorization: Option<&str>, body: &[u8]| {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        common::try_request(admin, method, path, &headers, body).unwrap()
    };
    for path in ["/api/handlespace", "/api/", "/log"] {
        let reply = request("GET", path, None, b"");
        assert_eq!(reply.status, 401, "{path}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let wrong = request(
            "GET",
            path,
            Some("Bearer 0123456789abcdef0123456789abcdeX"),
            b"",
        );
        assert_eq!(wrong.status, 401, "{path}");
        assert_eq!(
            request("GET", path, Some(&bearer), b"").status,
            200,
            "{path}"
        );
    }
    assert_eq!(request("PUT", "/log", None, b"debug").status, 401);
    assert_eq!(
        request("GET", "/log", Some(&bearer), b"").body.trim(),
        "info"
    );
    assert_eq!(request("PUT", "/log", Some(&bearer), b"debug").status, 200);
    assert_eq!(
        request("GET", "/log", Some(&bearer), b"").body.trim(),
        "debug"
    );
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(request("GET", path, None, b"").status, 200, "{path}");
    }
    // A short token is refused at start.
    std::fs::write(&file, "short\n").unwrap();
    let args = common::registrar_args(&[
        "--admin",
        "127.0.0.1:0",
        "--admin-token-file",
        file.to_str().unwrap(),
    ]);
    let (code, _, stderr) = common::run(&args);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("at least 16"), "{stderr}");
    let _ = std::fs::remove_file(&file);
}

/// `admin.tls` serves the admin listener over HTTPS (and plain HTTP no more).
#[test]
fn the_admin_listener_serves_https_with_its_certificate() {
    let dir = std::env::temp_dir().join(format!("rserpool-admin-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_text = dir.to_str().unwrap();
    assert_eq!(common::run(&["cert", "ca", "--dir", dir_text]).0, 0);
    let issued = common::run(&[
        "cert",
        "issue",
        "--dir",
        dir_text,
        "--name",
        "admin",
        "--observer",
    ]);
    assert_eq!(issued.0, 0, "{}", issued.2);
    let config = dir.join("registrar.yaml");
    std::fs::write(
        &config,
        format!(
            "admin:\n  listen: 127.0.0.1:0\n  tls:\n    cert: {dir_text}/admin.pem\n    key: {dir_text}/admin-key.pem\n"
        ),
    )
    .unwrap();
    let registrar = common::registrar(&["--config", config.to_str().unwrap()]);
    let admin = registrar.address("admin");
    let curl = |scheme: &str| {
        std::process::Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "5",
                &format!("{scheme}://{admin}/healthz"),
            ])
            .output()
            .unwrap()
    };
    let https = curl("https");
    assert_eq!(String::from_utf8_lossy(&https.stdout), "ok\n");
    let http = curl("http");
    assert!(!String::from_utf8_lossy(&http.stdout).contains("ok"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The registrar's `/metrics`: every family described, and the values move with what
/// happens (a registration, a resolution, a PE leaving).
#[test]
fn registrar_metrics_describe_every_family_and_follow_the_handlespace() {
    let registrar = common::registrar(&["--admin", "127.0.0.1:0"]);
    let (asap, admin) = (registrar.address("asap"), registrar.address("admin"));
    let metrics = || admin_get(admin, "/metrics").1;
    let text = metrics();
    for family in [
        "rserpool_registrar_pool_elements",
        "rserpool_registrar_pools",
        "rserpool_registrar_peers",
        "rserpool_registrar_synchronized",
        "rserpool_registrar_messages_total",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}: {text}"
        );
    }
    assert_eq!(
        common::metric(&text, "rserpool_registrar_pool_elements{owned=\"all\"}"),
        Some(0.0)
    );
    let backend = Backend::start();
    let mut agent = common::unchecked_agent(asap, backend.address);
    assert!(eventually(Duration::from_secs(10), || common::metric(
        &metrics(),
        "rserpool_registrar_pool_elements{owned=\"here\"}"
    ) == Some(1.0)));
    let text = metrics();
    assert!(text.contains("# HELP rserpool_registrar_registrations_total "));
    assert_eq!(
        common::metric(
            &text,
            "rserpool_registrar_registrations_total{kind=\"new\"}"
        ),
        Some(1.0)
    );
    assert_eq!(common::metric(&text, "rserpool_registrar_pools"), Some(1.0));
    // The agent's association.
    assert!(
        common::metric(&text, "rserpool_registrar_associations{protocol=\"asap\"}")
            .is_some_and(|open| open >= 1.0),
        "{text}"
    );
    assert_eq!(
        common::metric(
            &text,
            "rserpool_registrar_pool_elements_by_pool{pool=\"WebPool\"}"
        ),
        Some(1.0)
    );
    assert_eq!(common::resolve_ids(asap, "WebPool").len(), 1);
    assert_eq!(common::resolve_ids(asap, "NoSuchPool").len(), 0);
    let text = metrics();
    assert_eq!(
        common::metric(
            &text,
            "rserpool_registrar_handle_resolutions_total{result=\"answered\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        common::metric(
            &text,
            "rserpool_registrar_handle_resolutions_total{result=\"empty\"}"
        ),
        Some(1.0)
    );
    assert!(
        common::metric(
            &text,
            "rserpool_registrar_messages_total{protocol=\"asap\",direction=\"received\"}"
        )
        .unwrap()
            >= 3.0
    );
    // Each message's handling time is measured (a histogram by protocol).
    assert!(
        common::metric(
            &text,
            "rserpool_registrar_message_handling_seconds_count{protocol=\"asap\"}"
        )
        .is_some_and(|count| count >= 3.0),
        "{text}"
    );
    // The agent stops: its PE is deregistered and the gauge goes back.
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(10)).is_some());
    assert!(eventually(Duration::from_secs(10), || common::metric(
        &metrics(),
        "rserpool_registrar_pool_elements{owned=\"all\"}"
    ) == Some(0.0)));
    assert_eq!(
        common::metric(
            &metrics(),
            "rserpool_registrar_removals_total{reason=\"deregistered\"}"
        ),
        Some(1.0)
    );
    common::assert_every_family_described(&metrics());
}

/// The agent's `/metrics` and log: a backend failing its first checks is said so (once)
/// and counted; once it passes, its PE registers and the gauge shows it.
#[test]
fn agent_metrics_and_log_follow_the_backend_and_the_registration() {
    let registrar = common::registrar(&[]);
    let asap = registrar.address("asap");
    let (backend, backend_up) = switchable_backend();
    let agent = checked_agent(backend, asap);
    let admin = agent.address("admin");
    let metrics = || admin_get(admin, "/metrics").1;
    assert!(eventually(Duration::from_secs(10), || common::metric(
        &metrics(),
        "rserpool_pe_health_checks_total{pool=\"WebPool\",result=\"failed\"}"
    )
    .is_some_and(|failed| failed >= 2.0)));
    assert!(eventually(Duration::from_secs(5), || agent
        .log_contains("backend fails its health check")));
    let text = metrics();
    assert_eq!(
        common::metric(&text, "rserpool_pe_registered{pool=\"WebPool\"}"),
        Some(0.0)
    );
    for family in [
        "rserpool_pe_health_checks_total",
        "rserpool_pe_health_check_seconds",
        "rserpool_pe_registered",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}: {text}"
        );
    }
    backend_up.store(true, Ordering::Relaxed);
    assert!(eventually(Duration::from_secs(10), || common::metric(
        &metrics(),
        "rserpool_pe_registered{pool=\"WebPool\"}"
    ) == Some(1.0)));
    let text = metrics();
    assert_eq!(
        common::metric(
            &text,
            "rserpool_pe_registrations_total{result=\"registered\"}"
        ),
        Some(1.0)
    );
    assert!(text.contains("# HELP rserpool_pe_registrations_total "));
    // The registration's round trip, per pool.
    assert!(
        common::metric(
            &text,
            "rserpool_pe_registration_round_trip_seconds_count{pool=\"WebPool\"}"
        )
        .is_some_and(|count| count >= 1.0),
        "{text}"
    );
    // Said once, not at every failed check.
    let said = agent
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("backend fails its health check"))
        .count();
    assert_eq!(said, 1);
    common::assert_every_family_described(&metrics());
}
