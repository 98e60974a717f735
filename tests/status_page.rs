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

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, free_port};

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
    if Command::new("chromium").arg("--version").output().is_err() {
        let required = std::env::var_os("CI").is_some()
            || std::env::var_os("RSERPOOL_REQUIRE_CHROMIUM").is_some();
        assert!(
            !required,
            "chromium is required here but was not found: apt-get install -y chromium"
        );
        eprintln!(
            "\n*** SKIPPED: chromium not found; the status page was NOT rendered (scripts/test.sh installs it) ***\n"
        );
        return;
    }
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let registrar = common::registrar(&["--admin", &admin.to_string()]);
    let asap = registrar.address("asap");
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

    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &url,
        &[
            "--window-size=900,700",
            &format!("--screenshot={}", screenshot.display()),
        ],
    );
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 1000),
        "a screenshot"
    );
}
