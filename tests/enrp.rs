//! End-to-end ENRP: three `rserpool registrar` processes in a static peer mesh on
//! loopback; PEs registered at the first; it is killed (-9); within last-heard +
//! no-response + takeover time its PEs are owned by a survivor, `dump` on each survivor
//! shows all of them, and `resolve` through all three registrars keeps working.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Backend, Process, eventually, homes, registrar, run};

#[test]
fn a_killed_registrar_is_taken_over_and_resolution_continues() {
    // Each registrar on a loopback address of its own (no other test uses 127.0.0.3x),
    // so the peer lists can name the IANA ports before anything starts.
    let enrp = |i: usize| format!("127.0.0.3{}:9901", i + 1);
    let registrars: Vec<Process> = (0..3)
        .map(|i| {
            let asap = format!("127.0.0.3{}:3863", i + 1);
            let own = enrp(i);
            let mut args = vec![
                "--asap",
                asap.as_str(),
                "--enrp",
                own.as_str(),
                "--profile",
                "rsplib",
                "--id",
                ["0x101", "0x102", "0x103"][i],
            ];
            let peers: Vec<String> = (0..3).filter(|&j| j != i).map(enrp).collect();
            for peer in &peers {
                args.push("--peer");
                args.push(peer);
            }
            let args: Vec<&str> = args.into_iter().collect();
            registrar(&args.iter().map(|s| &**s).collect::<Vec<_>>())
        })
        .collect();
    let asap: Vec<String> = registrars
        .iter()
        .map(|r| r.address("asap").to_string())
        .collect();
    let enrp_addresses: Vec<SocketAddr> = registrars.iter().map(|r| r.address("enrp")).collect();
    for r in &registrars {
        assert!(
            eventually(Duration::from_secs(10), || r.log_contains("synchronized")),
            "{:?}",
            r.log.lock().unwrap()
        );
    }

    // Three PEs, registered at the first registrar only.
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
    let _agents: Vec<Process> = backends
        .iter()
        .map(|b| {
            Process::start(&[
                "pe",
                "--pool",
                "WebPool",
                "--backend",
                &b.address.to_string(),
                "--registrar",
                &asap[0],
                "--profile",
                "rsplib",
                "--health-interval",
                "500ms",
            ])
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || enrp_addresses
            .iter()
            .all(|e| homes(*e).len() == 3)),
        "every registrar knows the three PEs"
    );
    let ids: BTreeSet<String> = homes(enrp_addresses[1]).into_keys().collect();
    assert!(
        homes(enrp_addresses[1])
            .values()
            .all(|home| home == "0x00000101")
    );

    let mut registrars = registrars;
    let mut first = registrars.remove(0);
    first.child.kill().unwrap();
    let killed = Instant::now();
    let _ = first.child.wait();

    // Resolution through all three registrars keeps working throughout.
    let survivors = &enrp_addresses[1..];
    let mut failures = Vec::new();
    let mut taken_over = None;
    while killed.elapsed() < Duration::from_secs(30) {
        let (code, stdout, stderr) = run(&[
            "resolve",
            "WebPool",
            "--registrar",
            &asap[0],
            "--registrar",
            &asap[1],
            "--registrar",
            &asap[2],
            "--count",
            "10",
            "--timeout",
            "5s",
        ]);
        if code != 0 || !stdout.contains("3 pool element(s)") {
            failures.push((killed.elapsed(), stdout, stderr));
        }
        let views: Vec<BTreeMap<String, String>> = survivors.iter().map(|e| homes(*e)).collect();
        let moved = views.iter().all(|view| {
            view.keys().cloned().collect::<BTreeSet<_>>() == ids
                && view.values().all(|home| home != "0x00000101")
        });
        if moved {
            taken_over = Some(killed.elapsed());
            break;
        }
        // Pause: between polls of a deadline-bound loop that measures the takeover time.
        std::thread::sleep(Duration::from_millis(200));
    }
    let taken_over = taken_over.expect("the survivors took the PEs over");
    // rsplib profile: last-heard 5 s + no-response 5 s + takeover; the association loss
    // shortens the first part.
    assert!(taken_over < Duration::from_secs(20), "took {taken_over:?}");
    assert!(
        failures.is_empty(),
        "resolution failed during the takeover: {failures:?}"
    );
    let views: Vec<BTreeMap<String, String>> = survivors.iter().map(|e| homes(*e)).collect();
    assert_eq!(
        views[0], views[1],
        "both survivors agree on every PE's home"
    );
    assert!(
        registrars
            .iter()
            .any(|r| r.log_contains("took over the pool elements of a dead peer"))
    );
}

/// Two registrars on two addresses of one host: each records the other at its ENRP
/// address, once (associations leave from the ENRP address, not from the host's
/// default source, which would make the peer a second, nameless entry).
#[test]
fn peers_on_one_host_are_recorded_at_their_enrp_addresses() {
    let first = registrar(&[
        "--asap",
        "127.0.0.21:0",
        "--enrp",
        "127.0.0.21:0",
        "--admin",
        "127.0.0.21:0",
    ]);
    let first_enrp = first.address("enrp").to_string();
    let second = registrar(&[
        "--asap",
        "127.0.0.22:0",
        "--enrp",
        "127.0.0.22:0",
        "--peer",
        &first_enrp,
    ]);
    let second_enrp = format!("tcp://{}", second.address("enrp"));
    let admin = first.address("admin");
    let mut peers = serde_json::Value::Null;
    let recorded = eventually(Duration::from_secs(15), || {
        let (_, body) = common::admin_get(admin, "/api/peers");
        peers = serde_json::from_str(&body).unwrap_or_default();
        peers["peers"]
            .as_array()
            .is_some_and(|list| list.iter().any(|p| p["connected"] == true))
    });
    assert!(recorded, "the second registrar connected: {peers}");
    let list = peers["peers"].as_array().unwrap();
    assert_eq!(list.len(), 1, "one entry for the one peer: {peers}");
    assert_eq!(list[0]["endpoint"], second_enrp.as_str(), "{peers}");
    // ENRP messages by type: the peers' presences, both ways.
    let (_, text) = common::admin_get(admin, "/metrics");
    for direction in ["received", "sent"] {
        let series = format!(
            "rserpool_registrar_enrp_messages_total{{type=\"presence\",direction=\"{direction}\"}}"
        );
        assert!(
            common::metric(&text, &series).is_some_and(|n| n >= 1.0),
            "{series}: {text}"
        );
    }
}
