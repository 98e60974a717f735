//! The `registrar:` section: listeners, announces, ENRP peers and multicast, limits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use rserpool_proto::engine::TransportKind;
use rserpool_proto::wire::RegistrarId;
use serde::Deserialize;

use rserpool_proto::engine::TimerProfile;

use super::host_port::HostPort;
use super::values::{Multicast, duration, optional_duration, optional_id};

/// ASAP announces (registrar side: sent; PE and pool user side: listened to).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AnnounceConfig {
    pub(crate) group: Multicast,
    #[serde(deserialize_with = "duration")]
    pub(crate) interval: Duration,
    pub(crate) ttl: u32,
    /// The interface address for multicast; by default the address the ASAP socket is
    /// bound to. Announces are off when that is a wildcard and no interface is given,
    /// so that nothing leaves through an unintended interface.
    pub(crate) interface: Option<Ipv4Addr>,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        Self {
            group: Multicast::Group(SocketAddrV4::new(Ipv4Addr::new(239, 0, 0, 50), 3863)),
            interval: Duration::from_secs(1),
            ttl: 30,
            interface: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsConfig {
    pub(crate) max_pools: usize,
    pub(crate) max_pool_elements_per_pool: usize,
    pub(crate) max_pool_elements: usize,
    pub(crate) max_addresses_per_pool_element: usize,
    pub(crate) max_pool_elements_per_association: usize,
    /// PEs registered from one host address, and pools its PEs may be in (10 000 and
    /// 1 000).
    pub(crate) max_pool_elements_per_host: usize,
    pub(crate) max_pools_per_host: usize,
    /// Per association and second (2 000 and 100); `null`: unlimited.
    pub(crate) max_handle_resolutions_per_second: Option<u32>,
    pub(crate) max_unreachable_reports_per_second: Option<u32>,
    pub(crate) max_malformed_messages: u32,
    /// Open connections per listener (ASAP, ENRP); when full, the longest idle one
    /// makes room, or the newcomer is closed at once.
    pub(crate) max_connections: usize,
    /// Open connections per listener from one address, likewise.
    pub(crate) max_connections_per_host: usize,
    /// A connection that completes no message (TLS handshake included) within this
    /// is closed.
    #[serde(deserialize_with = "duration")]
    pub(crate) first_message_timeout: Duration,
    /// A message that has begun must be complete within this.
    #[serde(deserialize_with = "duration")]
    pub(crate) message_timeout: Duration,
    /// Bytes of unfinished messages held for all connections of a listener.
    pub(crate) max_unfinished_message_bytes: usize,
}

impl LimitsConfig {
    /// What one listener admits.
    pub(crate) fn admission(&self) -> crate::transport::admission::AdmissionLimits {
        crate::transport::admission::AdmissionLimits {
            max_connections: self.max_connections,
            max_connections_per_host: self.max_connections_per_host,
            first_message_timeout: self.first_message_timeout,
            message_timeout: self.message_timeout,
            max_unfinished_bytes: self.max_unfinished_message_bytes,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let engine = rserpool_proto::registrar::RegistrarConfig::default();
        Self {
            max_pools: engine.limits.max_pools,
            max_pool_elements_per_pool: engine.limits.max_pool_elements_per_pool,
            max_pool_elements: engine.limits.max_pool_elements,
            max_addresses_per_pool_element: engine.limits.max_addresses_per_pool_element,
            max_pool_elements_per_association: engine.max_pool_elements_per_association,
            max_pool_elements_per_host: engine.max_pool_elements_per_host,
            max_pools_per_host: engine.max_pools_per_host,
            max_handle_resolutions_per_second: engine.max_handle_resolutions_per_second,
            max_unreachable_reports_per_second: engine.max_unreachable_reports_per_second,
            max_malformed_messages: engine.max_malformed_messages,
            max_connections: 10_000,
            max_connections_per_host: 1_000,
            first_message_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(10),
            max_unfinished_message_bytes: 32 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RegistrarSection {
    /// The registrar ID (`0x...` or decimal); random when absent.
    #[serde(deserialize_with = "optional_id")]
    pub(crate) id: Option<RegistrarId>,
    pub(crate) profile: TimerProfile,
    /// `sctp` (the standard; what rsplib speaks) or `tcp` (the TCP mapping) for ASAP,
    /// ENRP and the associations to peers.
    pub(crate) transport: TransportKind,
    /// Where ASAP associations are accepted (default: port 3863, with TLS 3864).
    pub(crate) asap: Option<SocketAddr>,
    /// Where ENRP associations are accepted (default: port 9901, with TLS 9902).
    pub(crate) enrp: Option<SocketAddr>,
    /// More addresses of this host for SCTP multi-homing: the ASAP and ENRP endpoints
    /// bind them too (same ports) and advertise them all.
    pub(crate) multihome: Vec<IpAddr>,
    pub(crate) announce: AnnounceConfig,
    #[serde(deserialize_with = "duration")]
    pub(crate) keepalive_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub(crate) keepalive_timeout: Duration,
    pub(crate) max_bad_pe_reports: u32,
    pub(crate) default_items: u32,
    pub(crate) max_items: u32,
    pub(crate) verify_addresses: bool,
    pub(crate) handle_table_page_size: usize,
    pub(crate) limits: LimitsConfig,
    /// Registrars to peer with (their ENRP addresses; `host:port` names resolve at start).
    pub(crate) peers: Vec<HostPort>,
    /// ENRP_PRESENCE multicast (discovery of peers).
    pub(crate) enrp_multicast: EnrpMulticastConfig,
    /// ENRP timers; each defaults to the profile's value.
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) peer_heartbeat_interval: Option<Duration>,
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) max_time_last_heard: Option<Duration>,
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) max_time_no_response: Option<Duration>,
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) mentor_discovery_timeout: Option<Duration>,
    /// The longest an ASAP request waits while start-up synchronises.
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) max_startup_hold: Option<Duration>,
    #[serde(deserialize_with = "optional_duration")]
    pub(crate) takeover_expiry: Option<Duration>,
}

/// ENRP_PRESENCE multicast: `off`, or a group, sent through the interface of the ENRP
/// address (or the one given).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EnrpMulticastConfig {
    pub(crate) group: Multicast,
    pub(crate) ttl: u32,
    pub(crate) interface: Option<Ipv4Addr>,
}

impl Default for EnrpMulticastConfig {
    fn default() -> Self {
        Self {
            group: Multicast::Group(SocketAddrV4::new(Ipv4Addr::new(239, 0, 0, 51), 9901)),
            ttl: 30,
            interface: None,
        }
    }
}

impl Default for RegistrarSection {
    fn default() -> Self {
        let engine = rserpool_proto::registrar::RegistrarConfig::default();
        Self {
            id: None,
            profile: TimerProfile::Rfc,
            transport: TransportKind::Tcp,
            asap: None,
            enrp: None,
            multihome: Vec::new(),
            announce: AnnounceConfig::default(),
            keepalive_interval: engine.keepalive_interval,
            keepalive_timeout: engine.keepalive_timeout,
            max_bad_pe_reports: engine.max_bad_pe_reports,
            default_items: engine.default_items,
            max_items: engine.max_items,
            verify_addresses: engine.verify_addresses,
            handle_table_page_size: engine.handle_table_page_size,
            limits: LimitsConfig::default(),
            peers: Vec::new(),
            enrp_multicast: EnrpMulticastConfig::default(),
            peer_heartbeat_interval: None,
            max_time_last_heard: None,
            max_time_no_response: None,
            mentor_discovery_timeout: None,
            max_startup_hold: None,
            takeover_expiry: None,
        }
    }
}

/// The IANA ports: asap-tcp 3863 and enrp 9901, and for TLS asap-tcp-tls 3864 and
/// enrp-sctp-tls 9902 (no enrp-tcp-tls is registered; the TCP mapping uses the same
/// number).
pub(crate) const fn asap_port(tls: bool) -> u16 {
    if tls { 3864 } else { 3863 }
}

pub(crate) const fn enrp_port(tls: bool) -> u16 {
    if tls { 9902 } else { 9901 }
}

impl RegistrarSection {
    /// The ASAP and ENRP addresses: as configured, else every address on the IANA
    /// port of the plain or the TLS variant.
    pub(crate) fn addresses(&self, tls: bool) -> (SocketAddr, SocketAddr) {
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        (
            self.asap.unwrap_or_else(|| any(asap_port(tls))),
            self.enrp.unwrap_or_else(|| any(enrp_port(tls))),
        )
    }
}
