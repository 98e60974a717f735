//! The `csp:` section: status reports to an rsplib `cspmonitor` (rsplib's Component
//! Status Protocol, docs/csp.md). Off unless a monitor is named; the command line's
//! `--csp-server`/`--csp-interval` (or rsplib's `CSP_SERVER`/`CSP_INTERVAL`) win.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::host_port::HostPort;

/// The shortest interval between reports (rsplib's lower bound).
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// The longest: a monitor purges a component it has not heard of for a while.
const MAX_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CspSection {
    /// The monitor, `ADDRESS[:PORT]` or `HOST[:PORT]` (port 2960 when left out);
    /// absent: no reports.
    #[serde(deserialize_with = "monitor")]
    pub(crate) server: Option<HostPort>,
    /// Time between two reports (250 ms to 60 s).
    #[serde(deserialize_with = "interval")]
    pub(crate) interval: Duration,
}

impl Default for CspSection {
    fn default() -> Self {
        Self {
            server: None,
            interval: Duration::from_secs(1),
        }
    }
}

/// A monitor address; the port defaults to CSP's 2960 (a name is resolved when the
/// reporter starts).
pub(crate) fn parse_monitor(text: &str) -> Result<HostPort, String> {
    HostPort::with_default_port(text, rserpool_proto::csp::DEFAULT_PORT)
        .map_err(|e| format!("csp server: {e}"))
}

/// An interval: a duration with a unit, or milliseconds alone as rsplib's
/// `-cspinterval` and `CSP_INTERVAL` take it.
pub(crate) fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = match text.trim().parse::<u64>() {
        Ok(millis) => Duration::from_millis(millis),
        Err(_) => super::values::parse_duration(text)?,
    };
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(format!(
            "csp interval {text:?}: give {MIN_INTERVAL:?} to {MAX_INTERVAL:?} (milliseconds alone, or with a unit)"
        ));
    }
    Ok(interval)
}

fn monitor<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<HostPort>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_monitor(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn interval<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_interval(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_defaults_to_2960_and_intervals_take_rsplib_milliseconds() {
        assert_eq!(
            parse_monitor("127.0.0.1").ok(),
            "127.0.0.1:2960".parse().ok()
        );
        assert_eq!(parse_monitor("[::1]").ok(), "[::1]:2960".parse().ok());
        assert_eq!(
            parse_monitor("127.0.0.1:4000").ok(),
            "127.0.0.1:4000".parse().ok()
        );
        assert_eq!(parse_interval("500"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("100").is_err());
        assert!(parse_interval("2m").is_err());
    }
}
