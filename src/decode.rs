//! `rserpool decode`: a decoder for people. Prints a message readably or as JSON, and
//! optionally its re-encoding so a round trip can be checked by eye or by a script.

use std::fmt::Write as _;
use std::io::Read as _;

use rserpool_proto::wire::{self, Decoded, Hex, Message, Protocol};
use serde_json::Value;

use crate::cli::{DecodeArgs, ProtocolArg};

/// Why `rserpool decode` failed (exit status 1).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeCommandError {
    #[error("cannot read standard input: {0}")]
    Stdin(#[from] std::io::Error),
    #[error("invalid hex: {0}")]
    Hex(String),
    #[error("malformed {protocol} message: {error}")]
    Wire {
        protocol: Protocol,
        error: wire::WireError,
    },
    #[error("cannot re-encode the message: {0}")]
    Encode(#[from] wire::EncodeError),
}

/// Parses hex as tshark and Wireshark copy it: whitespace and colons are ignored, and
/// an optional `0x` prefix.
pub(crate) fn parse_hex(text: &str) -> Result<Vec<u8>, DecodeCommandError> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    let digits: Vec<(usize, char)> = text
        .char_indices()
        .filter(|(_, c)| !c.is_whitespace() && *c != ':')
        .collect();
    if digits.is_empty() {
        return Err(DecodeCommandError::Hex("no hex digits given".into()));
    }
    if !digits.len().is_multiple_of(2) {
        return Err(DecodeCommandError::Hex(format!(
            "odd number of hex digits ({})",
            digits.len()
        )));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let value = |(at, c): (usize, char)| {
                c.to_digit(16).ok_or_else(|| {
                    DecodeCommandError::Hex(format!("{c:?} at character {at} is not a hex digit"))
                })
            };
            match *pair {
                [high, low] => Ok(u8::try_from(value(high)? << 4 | value(low)?).unwrap_or(0)),
                _ => Err(DecodeCommandError::Hex("odd number of hex digits".into())),
            }
        })
        .collect()
}

pub(crate) fn run(args: &DecodeArgs) -> Result<String, DecodeCommandError> {
    let text = match args.hex.as_deref() {
        None | Some("-") => {
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input)?;
            input
        }
        Some(hex) => hex.to_owned(),
    };
    let bytes = parse_hex(&text)?;
    let protocol = match args.protocol {
        ProtocolArg::Asap => Protocol::Asap,
        ProtocolArg::Enrp => Protocol::Enrp,
    };
    let decoded = wire::decode(protocol, &bytes)
        .map_err(|error| DecodeCommandError::Wire { protocol, error })?;
    let mut out = if args.json {
        let mut value = serde_json::to_value(&decoded).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert("length".into(), bytes.len().into());
        }
        value.to_string()
    } else {
        render(&decoded, bytes.len())
    };
    out.push('\n');
    if args.reencode {
        let again = decoded
            .message
            .encode_with_unknown(&decoded.unknown_parameters)?;
        let _ = writeln!(out, "{}", Hex(&again));
    }
    Ok(out)
}

/// The readable form: a title line, then the fields as an indented tree.
fn render(decoded: &Decoded<Message>, length: usize) -> String {
    let message = &decoded.message;
    let mut out = format!(
        "{} ({} type 0x{:02x}, flags 0x{:02x}, {length} bytes)",
        message.name(),
        message.protocol(),
        match message {
            Message::Asap(m) => m.message_type(),
            Message::Enrp(m) => m.body.message_type(),
        },
        decoded.flags,
    );
    if let Ok(Value::Object(mut fields)) = serde_json::to_value(message) {
        fields.shift_remove("protocol");
        fields.shift_remove("type");
        render_map(&mut out, &fields, 1);
    }
    for unknown in &decoded.unknown_parameters {
        let _ = write!(
            out,
            "\n  unrecognized parameter 0x{:04x} ({}): {}",
            unknown.param_type(),
            if unknown.must_report() {
                "skipped, must be reported"
            } else {
                "skipped"
            },
            Hex(&unknown.raw)
        );
    }
    out
}

fn render_map(out: &mut String, map: &serde_json::Map<String, Value>, depth: usize) {
    for (key, value) in map {
        let _ = write!(out, "\n{:indent$}{key}:", "", indent = depth * 2);
        render_value(out, value, depth);
    }
}

fn render_value(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Object(map) if map.is_empty() => out.push_str(" {}"),
        Value::Object(map) => render_map(out, map, depth + 1),
        Value::Array(items) if items.is_empty() => out.push_str(" []"),
        Value::Array(items) => {
            for item in items {
                let _ = write!(out, "\n{:indent$}-", "", indent = depth * 2 + 2);
                render_value(out, item, depth + 1);
            }
        }
        Value::String(s) => {
            let _ = write!(out, " {s}");
        }
        Value::Null => out.push_str(" (none)"),
        other => {
            let _ = write!(out, " {other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_as_wireshark_copies_it() {
        assert_eq!(
            parse_hex("0a:00:00:08").unwrap_or_default(),
            [0x0a, 0, 0, 8]
        );
        assert_eq!(
            parse_hex(" 0a00 0008\n").unwrap_or_default(),
            [0x0a, 0, 0, 8]
        );
        assert_eq!(parse_hex("0x0a000008").unwrap_or_default(), [0x0a, 0, 0, 8]);
        assert!(parse_hex("0a0").is_err());
        assert!(parse_hex("zz").is_err());
        assert!(parse_hex("").is_err());
    }
}
