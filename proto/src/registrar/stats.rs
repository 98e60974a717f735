//! The registrar's message counters (for metrics and benchmarks): ASAP and ENRP in
//! and out, and ENRP by message type (RFC 5353 §2).

/// ENRP message types by their number (RFC 5353 §2: 0x01-0x0a); index 0 counts the
/// types no RFC defines.
pub const ENRP_TYPE_NAMES: [&str; 11] = [
    "other",
    "presence",
    "handle_table_request",
    "handle_table_response",
    "handle_update",
    "list_request",
    "list_response",
    "init_takeover",
    "init_takeover_ack",
    "takeover_server",
    "error",
];

/// Message counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RegistrarStats {
    /// ASAP messages received on associations.
    pub asap_received: u64,
    /// ASAP messages sent.
    pub asap_sent: u64,
    /// ENRP messages received (associations and multicast).
    pub enrp_received: u64,
    /// ENRP messages sent (associations and multicast).
    pub enrp_sent: u64,
    /// ENRP messages received, by type (indexes of [`ENRP_TYPE_NAMES`]).
    pub enrp_received_by_type: [u64; 11],
    /// ENRP messages sent, by type.
    pub enrp_sent_by_type: [u64; 11],
}

impl RegistrarStats {
    /// One ENRP message received; `message_type`: its first byte, if it has one.
    pub(super) fn enrp_received(&mut self, message_type: Option<u8>) {
        self.enrp_received += 1;
        if let Some(count) = self
            .enrp_received_by_type
            .get_mut(type_index(message_type.unwrap_or(0)))
        {
            *count += 1;
        }
    }

    /// One ENRP message sent.
    pub(super) fn enrp_sent(&mut self, message_type: u8) {
        self.enrp_sent += 1;
        if let Some(count) = self.enrp_sent_by_type.get_mut(type_index(message_type)) {
            *count += 1;
        }
    }
}

/// The index in [`ENRP_TYPE_NAMES`] of a message type.
fn type_index(message_type: u8) -> usize {
    match message_type {
        0x01..=0x0a => usize::from(message_type),
        _ => 0,
    }
}
