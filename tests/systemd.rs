//! systemd readiness and watchdog (sd_notify(3)): a role started with `NOTIFY_SOCKET`
//! says `READY=1` once it serves, `WATCHDOG=1` at half of `WATCHDOG_USEC`, and
//! `STOPPING=1` on SIGTERM (deploy/systemd units use `Type=notify`).

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::Process;

fn messages_until(socket: &UnixDatagram, wanted: &str, within: Duration) -> Vec<String> {
    let end = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 256];
    while Instant::now() < end {
        if let Ok(length) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
            let done = text == wanted;
            seen.push(text);
            if done {
                break;
            }
        }
    }
    seen
}

#[test]
fn roles_notify_systemd_of_readiness_watchdog_and_stop() {
    let path = std::env::temp_dir().join(format!("rserpool-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut registrar = Process::start_with_env(
        &common::registrar_args(&[]),
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let seen = messages_until(&socket, "READY=1", Duration::from_secs(5));
    assert_eq!(seen.last().map(String::as_str), Some("READY=1"), "{seen:?}");
    let seen = messages_until(&socket, "WATCHDOG=1", Duration::from_secs(5));
    assert_eq!(
        seen.last().map(String::as_str),
        Some("WATCHDOG=1"),
        "every 100 ms: {seen:?}"
    );
    registrar.signal("TERM");
    let seen = messages_until(&socket, "STOPPING=1", Duration::from_secs(5));
    assert!(seen.iter().any(|m| m == "STOPPING=1"), "{seen:?}");
    assert!(registrar.wait_exit(Duration::from_secs(10)).is_some());
    let _ = std::fs::remove_file(&path);
}
