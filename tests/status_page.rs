//! The status page (`/` on an admin listener) rendered by a real browser: headless
//! Chromium (Debian's, installed by scripts/test.sh) loads it from a registrar with a
//! registered PE, runs its script, and the rendered DOM shows the pool and the PE. A
//! screenshot is kept in target/status-page.png.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::eventually;

/// Is chromium here? Without it the tests fail where it is required (CI), and say loudly
/// that they did not run otherwise.
fn have_chromium() -> bool {
    if Command::new("chromium").arg("--version").output().is_ok() {
        return true;
    }
    let required =
        std::env::var_os("CI").is_some() || std::env::var_os("RSERPOOL_REQUIRE_CHROMIUM").is_some();
    assert!(
        !required,
        "chromium is required here but was not found: apt-get install -y chromium"
    );
    eprintln!(
        "\n*** SKIPPED: chromium not found; the status page was NOT rendered (scripts/test.sh installs it) ***\n"
    );
    false
}

/// A screenshot of `url` in target/NAME.png, kept for a person to look at.
fn screenshot(url: &str, name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/{name}.png"));
    let _ = std::fs::remove_file(&path);
    chromium(
        url,
        &[
            "--window-size=1000,900",
            &format!("--screenshot={}", path.display()),
        ],
    );
    assert!(
        std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000),
        "a screenshot in {}",
        path.display()
    );
}

fn chromium(url: &str, extra: &[&str]) -> Option<String> {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
        ])
        .args(extra)
        .arg(url)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn the_status_page_shows_pools_and_pool_elements_in_a_browser() {
    if !have_chromium() {
        return;
    }
    let registrar = common::registrar(&["--admin", "127.0.0.1:0"]);
    let (asap, admin) = (registrar.address("asap"), registrar.address("admin"));
    let pe = common::demo_pe(asap, "http", "WebPool", "RoundRobin");
    assert!(eventually(Duration::from_secs(10), || common::resolve_ids(
        asap, "WebPool"
    )
    .len()
        == 1));
    let pe_id = pe.ready["pe"].clone();

    let url = format!("http://{admin}/");
    let dom = chromium(&url, &["--dump-dom"]).unwrap();
    assert!(
        dom.contains("<code class=\"pool\">WebPool</code>"),
        "the pool: {dom}"
    );
    assert!(dom.contains(&pe_id), "the PE {pe_id}: {dom}");
    assert!(dom.contains("class=\"good\">ready"), "readiness: {dom}");
    assert!(
        dom.contains("rserpool <span id=\"role\">registrar"),
        "{dom}"
    );
    screenshot(&url, "status-page-registrar");
}

#[test]
fn a_peer_registrar_that_is_down_is_marked() {
    if !have_chromium() {
        return;
    }
    // A configured peer nobody answers for (the discard port).
    let registrar = common::registrar(&["--admin", "127.0.0.1:0", "--peer", "127.0.0.1:9"]);
    let url = format!("http://{}/", registrar.address("admin"));
    let dom = chromium(&url, &["--dump-dom"]).unwrap();
    assert!(dom.contains("<tr class=\"down\">"), "a down row: {dom}");
    assert!(dom.contains("127.0.0.1:9"), "the peer: {dom}");
}

#[test]
fn the_gateway_page_shows_listeners_routes_pools_and_registrars() {
    let registrar = common::registrar(&[]);
    let asap = registrar.address("asap").to_string();
    let pe = common::demo_pe(registrar.address("asap"), "http", "WebPool", "RoundRobin");
    let gateway = common::Process::start(&[
        "gateway",
        "--registrar",
        &asap,
        "--http",
        "127.0.0.1:0=WebPool",
        "--tcp",
        "127.0.0.1:0=WebPool",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = gateway.address("admin");
    let http = gateway.listener("http").to_string();
    // Without a browser: the server-rendered summary already lists the listeners.
    let (status, page) = common::admin_get(admin, "/");
    assert_eq!(status, 200);
    assert!(
        page.contains("<h2>gateway</h2>") && page.contains(&http) && page.contains("WebPool"),
        "the server-rendered summary: {page}"
    );
    let (_, api) = common::admin_get(admin, "/api/gateway");
    assert!(
        api.contains("\"kind\":\"http\"") && api.contains("\"kind\":\"tcp\""),
        "{api}"
    );
    if !have_chromium() {
        return;
    }
    let pe_id = pe.ready["pe"].clone();
    let url = format!("http://{admin}/");
    let mut dom = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            dom = chromium(&url, &["--dump-dom"]).unwrap();
            dom.contains(&pe_id)
        }),
        "the pool's PE {pe_id}: {dom}"
    );
    for section in [
        "id=\"listeners\"",
        "id=\"pools\"",
        "id=\"registrars\"",
        "in rotation",
    ] {
        assert!(dom.contains(section), "{section}: {dom}");
    }
    assert!(dom.contains(&http), "the HTTP listener: {dom}");
    screenshot(&url, "status-page-gateway");
}

#[test]
fn the_agent_page_shows_its_backends_with_their_checks() {
    if !have_chromium() {
        return;
    }
    let registrar = common::registrar(&[]);
    let backend = common::Backend::start();
    let agent = common::agent(
        registrar.address("asap"),
        backend.address,
        &["--admin", "127.0.0.1:0", "--health-interval", "200ms"],
    );
    let url = format!("http://{}/", agent.address("admin"));
    let mut dom = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            dom = chromium(&url, &["--dump-dom"]).unwrap();
            dom.contains(">healthy<") && dom.contains("class=\"ok\"")
        }),
        "a healthy backend with passed checks: {dom}"
    );
    assert!(dom.contains("id=\"backends\""), "{dom}");
    assert!(dom.contains(&backend.address.to_string()), "{dom}");
    screenshot(&url, "status-page-agent");
}
