//! The `pe:` and `pool_user:` sections: the agent's services with their health checks,
//! and the registrars a pool user asks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rserpool_proto::engine::TransportKind;
use rserpool_proto::pool_element::HomeChanges;
use rserpool_proto::wire::{Policy, PoolHandle};
use serde::{Deserialize, Deserializer};

use rserpool_proto::engine::TimerProfile;

use super::host_port::HostPort;
use super::values::{Multicast, duration, optional_duration, policy, pool_handle};

/// How the `pe` agent checks its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HealthCheck {
    /// Always healthy.
    None,
    /// A TCP connect succeeds.
    Tcp,
    /// An HTTP GET of the path answers 2xx or 3xx.
    Http(String),
}

impl<'de> Deserialize<'de> for HealthCheck {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_health(&text).map_err(serde::de::Error::custom)
    }
}

pub(crate) fn parse_health(text: &str) -> Result<HealthCheck, String> {
    match text {
        "none" => Ok(HealthCheck::None),
        "tcp" => Ok(HealthCheck::Tcp),
        _ => match text.strip_prefix("http:") {
            Some(path) if path.starts_with('/') => Ok(HealthCheck::Http(path.to_owned())),
            _ => Err(format!(
                "health check {text:?}: use tcp, http:/PATH or none"
            )),
        },
    }
}

/// Where a service's load comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum LoadSource {
    #[default]
    Connections,
    Http(String),
    Command(Vec<String>),
}

impl<'de> Deserialize<'de> for LoadSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_source(&text).map_err(serde::de::Error::custom)
    }
}

pub(crate) fn parse_source(text: &str) -> Result<LoadSource, String> {
    if text == "connections" {
        return Ok(LoadSource::Connections);
    }
    if let Some(path) = text.strip_prefix("http:")
        && path.starts_with('/')
    {
        return Ok(LoadSource::Http(path.to_owned()));
    }
    if let Some(command) = text.strip_prefix("command:") {
        let argv: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        if !argv.is_empty() {
            return Ok(LoadSource::Command(argv));
        }
    }
    Err(format!(
        "load source {text:?}: use connections, http:/PATH or command:PROGRAM [ARGS]"
    ))
}

/// One backend the `pe` agent registers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceConfig {
    #[serde(deserialize_with = "pool_handle")]
    pub(crate) pool: PoolHandle,
    pub(crate) backend: SocketAddr,
    #[serde(default = "defaults::policy", deserialize_with = "policy")]
    pub(crate) policy: Policy,
    #[serde(default = "defaults::health")]
    pub(crate) health: HealthCheck,
    #[serde(default = "defaults::health_interval", deserialize_with = "duration")]
    pub(crate) health_interval: Duration,
    #[serde(default = "defaults::health_timeout", deserialize_with = "duration")]
    pub(crate) health_timeout: Duration,
    /// Failed checks in a row before the PE is deregistered.
    #[serde(default = "defaults::fall")]
    pub(crate) fall: u32,
    /// Passed checks in a row before it registers again.
    #[serde(default = "defaults::rise")]
    pub(crate) rise: u32,
    #[serde(
        default = "defaults::reregistration_interval",
        deserialize_with = "duration"
    )]
    pub(crate) reregistration_interval: Duration,
    /// Where the backend's load comes from, for the load-based policies (the others
    /// ignore it): `connections`, `http:/PATH` or `command:PROGRAM [ARGS]`.
    #[serde(default)]
    pub(crate) load: LoadSource,
    /// The connections (for `connections`) that count as full load.
    #[serde(default = "defaults::capacity")]
    pub(crate) capacity: u32,
    /// How often the load is measured (absent: every health check interval).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) load_interval: Option<Duration>,
}

/// The connections that count as a backend's full load unless configured.
pub(crate) const DEFAULT_CAPACITY: u32 = 100;

impl ServiceConfig {
    /// A service with every default (the file's and the command line's).
    pub(crate) fn new(pool: PoolHandle, backend: SocketAddr) -> Self {
        Self {
            pool,
            backend,
            policy: defaults::policy(),
            health: defaults::health(),
            health_interval: defaults::health_interval(),
            health_timeout: defaults::health_timeout(),
            fall: defaults::fall(),
            rise: defaults::rise(),
            reregistration_interval: defaults::reregistration_interval(),
            load: LoadSource::default(),
            capacity: defaults::capacity(),
            load_interval: None,
        }
    }
}

/// What a service leaves out: one place for the file and the command line.
mod defaults {
    use std::time::Duration;

    use rserpool_proto::wire::Policy;

    use super::{DEFAULT_CAPACITY, HealthCheck};

    pub(super) fn policy() -> Policy {
        Policy::RoundRobin
    }

    pub(super) fn health() -> HealthCheck {
        HealthCheck::Tcp
    }

    pub(super) fn health_interval() -> Duration {
        Duration::from_secs(2)
    }

    pub(super) fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }

    pub(super) fn fall() -> u32 {
        1
    }

    pub(super) fn rise() -> u32 {
        1
    }

    pub(super) fn reregistration_interval() -> Duration {
        Duration::from_secs(30)
    }

    pub(super) fn capacity() -> u32 {
        DEFAULT_CAPACITY
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PeSection {
    /// Registrars' ASAP addresses (`host:port` names resolve at start).
    pub(crate) registrars: Vec<HostPort>,
    pub(crate) profile: TimerProfile,
    /// `sctp` or `tcp`: how registrars are reached (and reach this agent).
    pub(crate) transport: TransportKind,
    /// The agent's own ASAP endpoint (registrars reach it after a takeover); port 0
    /// picks a free port.
    pub(crate) asap: SocketAddr,
    /// More addresses of this host for SCTP multi-homing of the ASAP endpoint.
    pub(crate) multihome: Vec<IpAddr>,
    /// Listen for registrar announces on this group (`off` for static registrars only).
    pub(crate) announce: Multicast,
    /// The interface address to listen for announces on (required with a group).
    pub(crate) announce_interface: Option<Ipv4Addr>,
    /// With TLS off, whose takeover (a keep-alive with the H flag) moves the PEs:
    /// `known` registrars' hosts, or `any` peer.
    pub(crate) home_changes: HomeChanges,
    pub(crate) services: Vec<ServiceConfig>,
}

impl PeSection {
    /// `--registrar` over the file's registrars; with neither, and no registrar
    /// announces to hear, this host's (`local`).
    pub(crate) fn choose_registrars(&mut self, flags: &[HostPort], local: SocketAddr) {
        if !flags.is_empty() {
            self.registrars = flags.to_vec();
        }
        if self.registrars.is_empty() && self.announce.channel(self.announce_interface).is_none() {
            self.registrars = vec![local.into()];
        }
    }
}

impl Default for PeSection {
    fn default() -> Self {
        Self {
            registrars: Vec::new(),
            profile: TimerProfile::Rfc,
            transport: TransportKind::Tcp,
            asap: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            multihome: Vec::new(),
            announce: Multicast::Off,
            announce_interface: None,
            home_changes: HomeChanges::default(),
            services: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PoolUserSection {
    /// Registrars' ASAP addresses (`host:port` names resolve at start).
    pub(crate) registrars: Vec<HostPort>,
    pub(crate) profile: TimerProfile,
    /// `sctp` or `tcp`: how registrars are reached.
    pub(crate) transport: TransportKind,
    pub(crate) announce: Multicast,
    /// The interface address to listen for announces on (required with a group).
    pub(crate) announce_interface: Option<Ipv4Addr>,
    /// How long a resolution may be answered from the cache: `0s` asks every time;
    /// the default is 0s for `resolve` and 1s for the gateways.
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) stale_cache: Option<Duration>,
    /// How long the current registrar may answer nothing while a request waits
    /// before another is hunted (default 2s).
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) registrar_silence: Option<Duration>,
    /// How long past `stale_cache` a pool's last answer may still be served while no
    /// registrar answers (default 30s; 0s: never; only with a cache).
    #[serde(deserialize_with = "duration")]
    pub(crate) max_stale: Duration,
    /// How long a request waits for a registrar before such an answer (default 500ms).
    #[serde(deserialize_with = "duration")]
    pub(crate) stale_answer_after: Duration,
}

impl Default for PoolUserSection {
    fn default() -> Self {
        Self {
            registrars: Vec::new(),
            profile: TimerProfile::Rfc,
            transport: TransportKind::Tcp,
            announce: Multicast::Off,
            announce_interface: None,
            stale_cache: None,
            registrar_silence: None,
            max_stale: Duration::from_secs(30),
            stale_answer_after: Duration::from_millis(500),
        }
    }
}
