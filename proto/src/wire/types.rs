//! The bottom of the codec: the two protocols, the message type numbers (RFC 5352 §2.2,
//! RFC 5353 §2.1), the parameter type numbers (RFC 5354 §3), and bytes as hex. Everything else in the codec may use these; they use nothing
//! of it.

use std::fmt;

/// ASAP message types (RFC 5352 §2.2).
pub mod asap_type {
    #![allow(missing_docs, reason = "each is the RFC's message name")]
    pub const REGISTRATION: u8 = 0x01;
    pub const DEREGISTRATION: u8 = 0x02;
    pub const REGISTRATION_RESPONSE: u8 = 0x03;
    pub const DEREGISTRATION_RESPONSE: u8 = 0x04;
    pub const HANDLE_RESOLUTION: u8 = 0x05;
    pub const HANDLE_RESOLUTION_RESPONSE: u8 = 0x06;
    pub const ENDPOINT_KEEP_ALIVE: u8 = 0x07;
    pub const ENDPOINT_KEEP_ALIVE_ACK: u8 = 0x08;
    pub const ENDPOINT_UNREACHABLE: u8 = 0x09;
    pub const SERVER_ANNOUNCE: u8 = 0x0a;
    pub const COOKIE: u8 = 0x0b;
    pub const COOKIE_ECHO: u8 = 0x0c;
    pub const BUSINESS_CARD: u8 = 0x0d;
    pub const ERROR: u8 = 0x0e;
}

/// ENRP message types (RFC 5353 §2.1).
pub mod enrp_type {
    #![allow(missing_docs, reason = "each is the RFC's message name")]
    pub const PRESENCE: u8 = 0x01;
    pub const HANDLE_TABLE_REQUEST: u8 = 0x02;
    pub const HANDLE_TABLE_RESPONSE: u8 = 0x03;
    pub const HANDLE_UPDATE: u8 = 0x04;
    pub const LIST_REQUEST: u8 = 0x05;
    pub const LIST_RESPONSE: u8 = 0x06;
    pub const INIT_TAKEOVER: u8 = 0x07;
    pub const INIT_TAKEOVER_ACK: u8 = 0x08;
    pub const TAKEOVER_SERVER: u8 = 0x09;
    pub const ERROR: u8 = 0x0a;
}

/// Which of the two protocols a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "lowercase")
)]
pub enum Protocol {
    /// ASAP, PPID 11, port 3863.
    Asap,
    /// ENRP, PPID 12, port 9901.
    Enrp,
}

impl Protocol {
    /// The type number of the protocol's ERROR message.
    pub const fn error_type(self) -> u8 {
        match self {
            Self::Asap => asap_type::ERROR,
            Self::Enrp => enrp_type::ERROR,
        }
    }

    /// The SCTP payload protocol identifier (IANA).
    pub const fn ppid(self) -> u32 {
        match self {
            Self::Asap => 11,
            Self::Enrp => 12,
        }
    }

    /// The protocol for a PPID, also accepting rsplib's pre-IANA values
    /// (docs/rsplib.md item 1).
    pub const fn from_ppid(ppid: u32) -> Option<Self> {
        match ppid {
            11 | 0xfaee_b5d1 => Some(Self::Asap),
            12 | 0xfaee_b5d2 => Some(Self::Enrp),
            _ => None,
        }
    }

    /// The IANA port (SCTP, and TCP for ASAP).
    pub const fn port(self) -> u16 {
        match self {
            Self::Asap => 3863,
            Self::Enrp => 9901,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Asap => "ASAP",
            Self::Enrp => "ENRP",
        })
    }
}

pub(crate) const PARAM_IPV4_ADDRESS: u16 = 0x0001;
pub(crate) const PARAM_IPV6_ADDRESS: u16 = 0x0002;
pub(crate) const PARAM_DCCP_TRANSPORT: u16 = 0x0003;
pub(crate) const PARAM_SCTP_TRANSPORT: u16 = 0x0004;
pub(crate) const PARAM_TCP_TRANSPORT: u16 = 0x0005;
pub(crate) const PARAM_UDP_TRANSPORT: u16 = 0x0006;
pub(crate) const PARAM_UDP_LITE_TRANSPORT: u16 = 0x0007;
pub(crate) const PARAM_POLICY: u16 = 0x0008;
pub(crate) const PARAM_POOL_HANDLE: u16 = 0x0009;
pub(crate) const PARAM_POOL_ELEMENT: u16 = 0x000a;
pub(crate) const PARAM_SERVER_INFORMATION: u16 = 0x000b;
pub(crate) const PARAM_OPERATION_ERROR: u16 = 0x000c;
pub(crate) const PARAM_COOKIE: u16 = 0x000d;
pub(crate) const PARAM_PE_IDENTIFIER: u16 = 0x000e;
pub(crate) const PARAM_PE_CHECKSUM: u16 = 0x000f;
/// Handle Resolution Option (draft-dreibholz-rserpool-asap-hropt, an extension).
pub(crate) const PARAM_HANDLE_RESOLUTION_OPTION: u16 = 0x803f;

#[cfg(feature = "serde")]
pub(crate) fn serialize_hex<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Hex(bytes))
}

/// Formats bytes as lowercase hex.
#[derive(Debug)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}
