//! The example configurations of config/ started side by side on one host, as the README
//! suggests trying them: a registrar, a `pe` agent and a gateway, with no port clash,
//! and `resolve` with config/pool-user.yaml reaching the registrar.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use common::{Process, run};

#[test]
fn the_example_configurations_start_together() {
    let mut registrar = Process::start(&["registrar", "-c", "config/registrar.yaml"]);
    let mut pe = Process::start(&["pe", "-c", "config/pe.yaml"]);
    let mut gateway = Process::start(&["gateway", "-c", "config/gateway.yaml"]);
    // Each bound all its listeners before its ready line (a clash fails the start):
    // all three still run.
    for (name, process) in [
        ("registrar", &mut registrar),
        ("pe", &mut pe),
        ("gateway", &mut gateway),
    ] {
        assert!(
            process.child.try_wait().unwrap().is_none(),
            "{name} exited: {:?}",
            process.log.lock().unwrap()
        );
        assert!(
            !process.log_contains("cannot bind"),
            "{name}: {:?}",
            process.log.lock().unwrap()
        );
    }
    assert_eq!(registrar.ready["asap"], "0.0.0.0:3863");
    assert!(
        gateway.ready["tcp"].contains("127.0.0.1:7100"),
        "{:?}",
        gateway.ready
    );
    // A pool user with the example's settings reaches the registrar: the pool is
    // unknown there (the agent's example backends are not running), not unreachable.
    let (code, _, stderr) = run(&["resolve", "-c", "config/pool-user.yaml", "NoSuchPool"]);
    assert!(
        stderr.contains("unknown pool handle") && code != 0,
        "{code} {stderr}"
    );
}
