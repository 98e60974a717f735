//! The bottom of the codec: the two protocols, the parameter type numbers (RFC 5354
//! §3), and bytes as hex. Everything else in the codec may use these; they use nothing
//! of it.

use std::fmt;

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
    /// The SCTP payload protocol identifier (IANA).
    pub const fn ppid(self) -> u32 {
        match self {
            Self::Asap => 11,
            Self::Enrp => 12,
        }
    }

    /// The protocol for a PPID, also accepting rsplib's pre-IANA values
    /// (discrepancies.md item 2).
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
