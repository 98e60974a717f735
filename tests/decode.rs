//! End-to-end tests of `rserpool decode` (the real binary): every vector of
//! docs/wire.md §5 round-trips through `--reencode`, JSON is valid, and malformed
//! input exits with status 1 and names the byte offset.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

#[path = "../proto/tests/vectors/mod.rs"]
mod vectors;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use rserpool_proto::wire::Protocol;

fn rserpool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rserpool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn protocol_arg(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Asap => "asap",
        Protocol::Enrp => "enrp",
    }
}

#[test]
fn every_spec_vector_decodes_and_reencodes_identically() {
    for vector in vectors::all() {
        let out = rserpool(
            &[
                "decode",
                "--protocol",
                protocol_arg(vector.protocol),
                "--reencode",
                vector.hex,
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}: {}",
            vector.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stdout.starts_with(vector.message.name()),
            "{}: {stdout}",
            vector.name
        );
        assert_eq!(
            stdout.lines().last(),
            Some(vector.hex),
            "{}: re-encoding",
            vector.name
        );
    }
}

#[test]
fn json_output_carries_the_fields() {
    let presence =
        "0101002c1122334455667788000f0006f7310000000b0018112233440004001026ad000000010008c0000201";
    let out = rserpool(&["decode", "--protocol", "enrp", "--json", presence], None);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["message"]["type"], "PRESENCE");
    assert_eq!(json["message"]["checksum"], "0xf731");
    assert_eq!(json["message"]["sender"], "0x11223344");
    assert_eq!(
        json["message"]["server_information"]["transport"]["port"],
        9901
    );
    assert_eq!(json["length"], 44);
}

#[test]
fn hex_with_colons_and_whitespace_from_stdin() {
    let out = rserpool(
        &["decode", "--protocol", "asap", "-"],
        Some("0a:00:00:08\n11 22 33 44\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("ASAP_SERVER_ANNOUNCE"), "{stdout}");
    assert!(stdout.contains("server_id: 0x11223344"), "{stdout}");
}

#[test]
fn malformed_input_exits_1_and_names_the_offset() {
    // An unknown parameter 0x0077 (action "stop") after the pool handle.
    let out = rserpool(
        &[
            "decode",
            "--protocol",
            "asap",
            "050000180009000c4563686f506f6f6c00770007010203ff",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("at byte 16"), "{stderr}");
    assert!(
        stderr.contains("unrecognized parameter type 0x0077"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let out = rserpool(&["decode", "--protocol", "asap", "05zz"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("not a hex digit")
    );
}

#[test]
fn help_lists_only_built_subcommands() {
    let out = rserpool(&["--help"], None);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("decode"), "{stdout}");
    let listed: Vec<&str> = stdout
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        listed,
        [
            "registrar",
            "pe",
            "gateway",
            "resolve",
            "dump",
            "decode",
            "demo",
            "cert",
            "help"
        ]
    );
}
