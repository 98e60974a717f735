//! `rserpool demo` (README "Quick start"): everything starts on loopback with no
//! configuration, each gateway answers, and Ctrl-C stops every process it started.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn demo_starts_everything_and_stops_it_on_ctrl_c() {
    // Ports base+1 .. base+90, below the ephemeral range.
    let base = 20_000 + (std::process::id() % 100) * 100;
    let mut demo = Command::new(common::binary())
        .args(["demo", "--base-port", &base.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut banner = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no 'demo ready': {banner:?}"));
        if line == "demo ready" {
            break;
        }
        banner.push(line);
    }
    let pids: Vec<u32> = banner
        .iter()
        .filter_map(|l| l.split("(pid").nth(1))
        .flat_map(|rest| {
            rest.trim_start_matches('s')
                .trim_end_matches(')')
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    assert_eq!(
        pids.len(),
        3 + 6 + 1,
        "registrars, PEs, gateway: {banner:?}"
    );

    // The TCP gateway to the counter PEs.
    let mut counter = TcpStream::connect(("127.0.0.1", u16::try_from(base + 20).unwrap())).unwrap();
    counter
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    counter.write_all(b"a\nb\n").unwrap();
    let mut answer = [0u8; 4];
    counter.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"1\n2\n");
    // The HTTP gateway.
    let mut http = TcpStream::connect(("127.0.0.1", u16::try_from(base + 80).unwrap())).unwrap();
    http.write_all(b"GET /hello HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    http.read_to_string(&mut text).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("pe=0x"),
        "{text}"
    );
    // The DNS gateway.
    let dig = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &(base + 53).to_string(),
            "+short",
            "+time=3",
        ])
        .args(["WebPool.pool.example", "A"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dig.stdout).lines().count(), 2);

    // Ctrl-C: every process goes, the demo exits 0.
    drop(counter);
    let status = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let end = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "the demo did not stop");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the demo"
        );
    }
}
