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

/// The container builds with the Rust version the workspace declares, and compose
/// knows how to build the image it runs.
#[test]
fn the_container_builds_with_the_declared_rust_and_compose_builds_it() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let declared = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let containerfile =
        std::fs::read_to_string(root().join("deploy/container/Containerfile")).unwrap();
    let builder = containerfile
        .lines()
        .find_map(|line| line.strip_prefix("FROM docker.io/library/rust:"))
        .unwrap();
    assert!(
        builder.starts_with(&format!("{declared}-")),
        "Containerfile builds with rust:{builder}, the workspace needs {declared}"
    );
    let text = std::fs::read_to_string(root().join("deploy/container/compose.yaml")).unwrap();
    let compose: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let built: Vec<&serde_json::Value> = compose["services"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|service| service.get("build"))
        .collect();
    assert_eq!(built.len(), 1, "one service builds the image");
    let dockerfile = built[0]["dockerfile"].as_str().unwrap();
    assert!(root().join(dockerfile).exists(), "{dockerfile}");
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
    let stdout = common::stdout_of(
        Command::new("bash")
            .arg(root().join("deploy/container/check-rootfs.sh"))
            .arg(common::binary()),
    );
    assert!(
        stdout.contains(&format!("rserpool {}", env!("CARGO_PKG_VERSION")))
            && stdout.contains("rootfs check"),
        "{stdout}"
    );
}

/// The cluster names of the manifests, made local for a check on this machine.
fn localized(text: &str) -> String {
    let mut text = text.to_owned();
    for ordinal in 0..3 {
        text = text.replace(
            &format!("rserpool-registrar-{ordinal}.rserpool-registrar"),
            "127.0.0.1",
        );
    }
    text.replace("$(POD_IP)", "127.0.0.1")
        .replace("$POD_IP", "127.0.0.1")
        .replace("$(( ${HOSTNAME##*-} + 1 ))", "1")
        .replace("${HOSTNAME##*-}", "0")
}

#[test]
fn kubernetes_manifests_parse_and_run_valid_commands_and_configurations() {
    let dir = root().join("deploy/kubernetes");
    let scratch = std::env::temp_dir().join(format!("rserpool-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut containers = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<serde_json::Value> = text
            .split("\n---\n")
            .map(|doc| {
                serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            })
            .collect();
        // Configurations in ConfigMaps: every key known (a resolve with the file loads
        // it strictly: exit 64 would name a bad key).
        let mut configs = std::collections::BTreeMap::new();
        for doc in &docs {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{}",
                path.display()
            );
            assert!(doc["metadata"]["name"].is_string(), "{}", path.display());
            if doc["kind"] == "ConfigMap" {
                for (name, content) in doc["data"].as_object().unwrap() {
                    let file = scratch.join(name);
                    std::fs::write(&file, localized(content.as_str().unwrap())).unwrap();
                    let output = Command::new(common::binary())
                        .args(["resolve", "NoPool", "--config", file.to_str().unwrap()])
                        .args(["--registrar", "127.0.0.1:9", "--timeout", "200ms"])
                        .output()
                        .unwrap();
                    assert_ne!(
                        output.status.code(),
                        Some(64),
                        "{name}: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                    configs.insert(format!("/etc/rserpool/{name}"), file);
                }
            }
        }
        // Containers running rserpool: their command lines are accepted.
        for doc in &docs {
            let Some(pod) = doc["spec"]["template"]["spec"]["containers"].as_array() else {
                continue;
            };
            for container in pod.iter().filter(|c| c["image"] == "rserpool") {
                let words: Vec<String> = if container["command"][0] == "/bin/sh" {
                    let script = localized(container["args"][0].as_str().unwrap());
                    let line = script.strip_prefix("exec /usr/bin/rserpool ").unwrap();
                    line.split_whitespace().map(str::to_owned).collect()
                } else {
                    container["args"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| localized(a.as_str().unwrap()))
                        .collect()
                };
                let words: Vec<String> = words
                    .into_iter()
                    .map(|w| {
                        configs
                            .get(&w)
                            .map_or(w, |f| f.to_string_lossy().into_owned())
                    })
                    .collect();
                accepted(&words).unwrap_or_else(|e| panic!("{}: {words:?}: {e}", path.display()));
                containers += 1;
            }
        }
    }
    assert!(containers >= 3, "registrar, gateway, PE agent");
    let _ = std::fs::remove_dir_all(&scratch);
}
