//! The values every section is written in: durations with a unit, addresses and host
//! names, pool handles, registrar IDs, policies, multicast groups, timer profiles, and
//! the error a configuration that cannot be used is.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use rserpool_proto::wire::{Policy, PoolHandle, RegistrarId};
use serde::{Deserialize, Deserializer};

/// A configuration that cannot be used; the process exits with status 64.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {key}: {reason}")]
    Parse {
        path: String,
        key: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A multicast channel: `off`, or `GROUP:PORT` (IPv4), optionally with the interface
/// address to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Multicast {
    Off,
    Group(SocketAddrV4),
}

impl Multicast {
    /// The group and the interface to hear it on, when both are known.
    pub(crate) fn channel(&self, interface: Option<Ipv4Addr>) -> Option<(SocketAddrV4, Ipv4Addr)> {
        match (self, interface) {
            (Self::Group(group), Some(interface)) => Some((*group, interface)),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Multicast {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_multicast(&text).map_err(serde::de::Error::custom)
    }
}

pub(crate) fn parse_multicast(text: &str) -> Result<Multicast, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Multicast::Off);
    }
    let group: SocketAddrV4 = text
        .parse()
        .map_err(|_| format!("{text:?} is neither `off` nor an IPv4 GROUP:PORT"))?;
    if !group.ip().is_multicast() {
        return Err(format!("{} is not a multicast address", group.ip()));
    }
    Ok(Multicast::Group(group))
}

/// Parses a duration with a unit: `250ms`, `5s`, `1.5s`, `2m`, `1h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 250ms, 5s, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(format!("{text:?} needs a unit: ms, s, m or h")),
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

pub(super) fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub(super) fn policy<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Policy, D::Error> {
    let text = String::deserialize(deserializer)?;
    rserpool_proto::policy::spec::parse(&text).map_err(serde::de::Error::custom)
}

pub(super) fn pool_handle<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<PoolHandle, D::Error> {
    let text = String::deserialize(deserializer)?;
    PoolHandle::new(text.as_bytes()).map_err(serde::de::Error::custom)
}

/// Parses a registrar ID: `0x` and hex, or decimal; never 0.
pub(crate) fn parse_id(text: &str) -> Result<RegistrarId, String> {
    let value = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|_| format!("{text:?} is not a 32-bit ID (hex with 0x, or decimal)"))?;
    if value == 0 {
        return Err("a registrar ID cannot be 0 (0 means unknown)".into());
    }
    Ok(RegistrarId(value))
}

pub(super) fn optional_id<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<RegistrarId>, D::Error> {
    let value = serde_json_like::IdValue::deserialize(deserializer)?;
    let text = match value {
        serde_json_like::IdValue::Number(n) => n.to_string(),
        serde_json_like::IdValue::Text(t) => t,
    };
    parse_id(&text).map(Some).map_err(serde::de::Error::custom)
}

pub(super) mod serde_json_like {
    /// An ID written as a YAML number or a string (`0x11223344`).
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    pub(super) enum IdValue {
        Number(u64),
        Text(String),
    }
}
