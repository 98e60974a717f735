//! deploy/ (README "Deployment"): the systemd units start existing subcommands with
//! configuration files that exist and parse, the compose file's commands are accepted
//! by the command line, and the binary runs in a root file system holding only it and
//! the libraries it links (what the container image provides).

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `rserpool ARGS --help`: clap rejects an unknown flag or a bad value before it
/// gets to `--help`, and nothing starts.
fn accepted(args: &[String]) -> Result<(), String> {
    let output = Command::new(common::binary())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn systemd_units_run_subcommands_with_shipped_configurations() {
    let mut units = 0;
    for entry in std::fs::read_dir(root().join("deploy/systemd")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("{}: no {key}=", path.display()))
                .to_owned()
        };
        assert_eq!(
            value("Type"),
            "notify",
            "{}: readiness by sd_notify",
            path.display()
        );
        assert!(
            value("WatchdogSec")
                .trim_end_matches('s')
                .parse::<u32>()
                .is_ok()
        );
        assert_eq!(value("NoNewPrivileges"), "yes");
        let exec = value("ExecStart");
        let words: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
        assert_eq!(words[0], "/usr/bin/rserpool");
        let config = words
            .iter()
            .find_map(|w| w.strip_prefix("/etc/rserpool/"))
            .unwrap_or_else(|| panic!("{exec}: a configuration in /etc/rserpool"));
        assert!(
            root().join("deploy/config").join(config).exists(),
            "deploy/config/{config} ships with the unit"
        );
        let args: Vec<String> = words[1..]
            .iter()
            .map(|w| w.replace("/etc/rserpool/", "deploy/config/"))
            .collect();
        accepted(&args).unwrap_or_else(|e| panic!("{exec}: {e}"));
        units += 1;
    }
    assert_eq!(units, 3, "registrar, pe, gateway");
}

#[test]
fn compose_commands_are_valid_command_lines() {
    let text = std::fs::read_to_string(root().join("deploy/container/compose.yaml")).unwrap();
    let compose: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let services = compose["services"].as_object().unwrap();
    assert!(services.len() >= 6, "three registrars, PEs, a gateway");
    for (name, service) in services {
        let args: Vec<String> = service["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: a command"))
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        accepted(&args).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn the_binary_runs_in_a_minimal_root_file_system() {
    let output = Command::new("bash")
        .arg(root().join("deploy/container/check-rootfs.sh"))
        .arg(common::binary())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("rserpool 0.1.0") && stdout.contains("rootfs check"),
        "{stdout}"
    );
}
