//! Registrar settings, with the two named timer profiles.

use std::time::Duration;

use crate::auth::Access;
use crate::engine::{Endpoint, TimerProfile};
use crate::handlespace::Limits;
use crate::wire::{RegistrarId, Transport};

/// What a registrar is told (RFC 5352 §7, security.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// The registrar ID; `None` draws a random one.
    pub id: Option<RegistrarId>,
    /// Time from a registration or an acknowledgement to the next keep-alive.
    pub keepalive_interval: Duration,
    /// How long a keep-alive waits for its acknowledgement before the PE is removed.
    pub keepalive_timeout: Duration,
    /// T6, the ASAP_SERVER_ANNOUNCE period; `None` sends no announces.
    pub announce_interval: Option<Duration>,
    /// MAX-BAD-PE-REPORT: reports from distinct pool users before a PE is probed (or,
    /// if another registrar owns it, removed here).
    pub max_bad_pe_reports: u32,
    /// PEs in a handle resolution answer when the pool user does not say.
    pub default_items: u32,
    /// The most PEs in one answer.
    pub max_items: u32,
    /// Handlespace bounds.
    pub limits: Limits,
    /// The most PEs one association may register.
    pub max_pool_elements_per_association: usize,
    /// The most PEs registered here from one host address (over all its
    /// associations): one host must not be able to fill `limits.max_pool_elements`.
    pub max_pool_elements_per_host: usize,
    /// The most pools one host's PEs may be in here: one host must not be able to
    /// fill `limits.max_pools` (a pool lives only while it has a PE).
    pub max_pools_per_host: usize,
    /// Handle resolutions per second one association may ask (`None`: unlimited).
    /// The default, 2 000 (bursts as large), is far above what a caching gateway asks
    /// (one resolution per pool and cache period) and bounds a flood to a fraction of
    /// a registrar core.
    pub max_handle_resolutions_per_second: Option<u32>,
    /// Unreachability reports per second one association may send (`None`:
    /// unlimited). The default, 100, is above what a gateway sends when a whole rack
    /// of PEs fails at once (one report per PE it tried).
    pub max_unreachable_reports_per_second: Option<u32>,
    /// Accept only user addresses that are peer addresses of the registering
    /// association (security.md T3).
    pub verify_addresses: bool,
    /// Malformed messages tolerated from one association before it is closed.
    pub max_malformed_messages: u32,
    /// PEs per handle table response.
    pub handle_table_page_size: usize,
    /// Bytes per handle table response.
    pub handle_table_max_bytes: usize,
    /// Where this registrar accepts ASAP associations (sent in announces).
    pub asap_transports: Vec<Transport>,
    /// Where it accepts ENRP associations.
    pub enrp_transport: Option<Transport>,
    /// Registrars to peer with from the start (their IDs are learned).
    pub static_peers: Vec<Endpoint>,
    /// Send ENRP_PRESENCE to the ENRP multicast channel each heartbeat too.
    pub enrp_multicast: bool,
    /// peer-heartbeat-cycle: the ENRP_PRESENCE period (jittered by ±12.5 %).
    pub peer_heartbeat_interval: Duration,
    /// MAX-TIME-LAST-HEARD: silence before a peer is probed.
    pub max_time_last_heard: Duration,
    /// MAX-TIME-NO-RESPONSE: how long a probe waits before the peer is taken over.
    pub max_time_no_response: Duration,
    /// How long start-up waits to hear from a mentor before serving alone.
    pub mentor_discovery_timeout: Duration,
    /// How long a takeover waits for the acknowledgements of every peer.
    pub takeover_expiry: Duration,
    /// The most peers kept (static and discovered). A registrar that speaks over an
    /// association replaces a candidate or a silent entry that owns nothing when the
    /// table is full; it is refused only when every entry is live.
    pub max_peers: usize,
    /// The most registrars kept that were named by others (list responses, multicast)
    /// and have not answered yet; each expires after MAX-TIME-LAST-HEARD plus
    /// MAX-TIME-NO-RESPONSE without an answer.
    pub max_candidate_peers: usize,
    /// The most peers speaking from one host address: with TLS off anyone there can
    /// claim any registrar ID, so one host must not be able to fill `max_peers`.
    pub max_peers_per_host: usize,
    /// ASAP messages held while start-up synchronises; more are dropped.
    pub max_deferred_messages: usize,
    /// The longest an ASAP message is held while start-up synchronises: after that it
    /// is served with the handlespace as it stands, as rsplib's registrar serves ASAP
    /// during start-up. Below rsplib's 3 s request timeout and below the 2 s after
    /// which rserpool's pool users take a silent registrar for frozen, so that both
    /// are answered before they give up on this registrar.
    pub max_startup_hold: Duration,
    /// Act on takeover suggestions (T flag, an rsplib extension): take the PE over if
    /// its current home suggests it.
    pub accept_takeover_suggestions: bool,
    /// Whether peers must prove an identity for what they ask (RFC 5355, TLS).
    pub access: Access,
}

impl RegistrarConfig {
    /// The defaults with the profile's ENRP timers (RFC 5353 §4): RFC heartbeat 30 s,
    /// last-heard 61 s, no-response 5 s; or rsplib's 2.444 s, 5 s, 5 s (rsplib peers
    /// declare a registrar dead after about 10 s of silence).
    pub fn new(profile: TimerProfile) -> Self {
        let (heartbeat, last_heard) = match profile {
            TimerProfile::Rfc => (Duration::from_secs(30), Duration::from_secs(61)),
            TimerProfile::Rsplib => (Duration::from_millis(2_444), Duration::from_secs(5)),
        };
        Self {
            peer_heartbeat_interval: heartbeat,
            max_time_last_heard: last_heard,
            ..Self::default()
        }
    }
}

impl Default for RegistrarConfig {
    /// The `rfc` profile. Keep-alive and announce timers are rsplib's in both profiles:
    /// the RFC leaves them to the implementation (RFC 5352 §7).
    fn default() -> Self {
        Self {
            id: None,
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
            announce_interval: Some(Duration::from_secs(1)),
            max_bad_pe_reports: 3,
            default_items: 3,
            max_items: 128,
            limits: Limits::default(),
            max_pool_elements_per_association: 1024,
            max_pool_elements_per_host: 10_000,
            max_pools_per_host: 1_000,
            max_handle_resolutions_per_second: Some(2_000),
            max_unreachable_reports_per_second: Some(100),
            verify_addresses: true,
            max_malformed_messages: 16,
            handle_table_page_size: 128,
            handle_table_max_bytes: 60_000,
            asap_transports: Vec::new(),
            enrp_transport: None,
            static_peers: Vec::new(),
            enrp_multicast: false,
            peer_heartbeat_interval: Duration::from_secs(30),
            max_time_last_heard: Duration::from_secs(61),
            max_time_no_response: Duration::from_secs(5),
            mentor_discovery_timeout: Duration::from_secs(5),
            takeover_expiry: Duration::from_secs(5),
            max_peers: 256,
            max_candidate_peers: 32,
            max_peers_per_host: 16,
            max_deferred_messages: 4096,
            max_startup_hold: Duration::from_millis(1_500),
            accept_takeover_suggestions: true,
            access: Access::Open,
        }
    }
}
