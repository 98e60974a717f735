//! Registrar settings, with the two named timer profiles.

use std::time::Duration;

use crate::handlespace::Limits;
use crate::wire::{RegistrarId, Transport};

/// What a registrar is told (asap.md §9, security.md §3).
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
    /// Handle resolutions per second one association may ask (`None`: unlimited).
    pub max_handle_resolutions_per_second: Option<u32>,
    /// Unreachability reports per second one association may send (`None`: unlimited).
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
}

impl Default for RegistrarConfig {
    /// rsplib's keep-alive and announce timers, which the RFC leaves to the
    /// implementation (asap.md §9): the same in both timer profiles.
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
            max_handle_resolutions_per_second: None,
            max_unreachable_reports_per_second: None,
            verify_addresses: true,
            max_malformed_messages: 16,
            handle_table_page_size: 128,
            handle_table_max_bytes: 60_000,
            asap_transports: Vec::new(),
            enrp_transport: None,
        }
    }
}
