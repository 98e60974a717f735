//! The RSerPool wire codec (RFC 5352-5354): bytes ⇄ typed ASAP and ENRP messages,
//! byte-exact with rsplib (docs/architecture.md, "The wire codec"). Nothing else lives here.
//!
//! ASAP and ENRP reuse message type numbers, so the protocol is an input to
//! [`decode`]: it comes from the SCTP PPID or from the socket a message arrived on.

mod asap;
mod causes;
mod checksum;
mod codec;
mod enrp;
mod error;
mod framing;
mod header;
mod params;
mod selection;
mod types;

pub use asap::{
    AsapMessage, BusinessCard, Cookie, DeregistrationResponse, EndpointKeepAlive, ErrorReport,
    HandleResolution, HandleResolutionResponse, PoolElementRef, Registration, RegistrationResponse,
    ServerAnnounce,
};
pub use causes::{CauseCode, ErrorCause, OperationError};
pub use checksum::{ChecksumAccumulator, handlespace_checksum, pe_sum};
pub use codec::UnknownParameter;
pub use codec::{MAX_UNKNOWN_PARAMETERS, round_up4};
pub use enrp::{EnrpBody, EnrpMessage, PoolEntries, UpdateAction};
pub use error::{EncodeError, MAX_CAUSE_COPY, WireError, WireErrorKind};
pub use framing::{FramingError, MAX_FRAME, StreamDeframer, frame_length};
pub use params::{
    MAX_POOL_HANDLE_LENGTH, MAX_TRANSPORT_ADDRESSES, PoolElement, PoolElementId, PoolHandle,
    PoolHandleError, RegistrarId, ServerInformation, Transport, TransportProtocol, TransportUse,
};
pub use selection::{Policy, PolicyType};
pub use types::{Hex, Protocol, asap_type, enrp_type};

pub use header::Decoded;

/// An ASAP or ENRP message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "protocol", rename_all = "lowercase")
)]
pub enum Message {
    /// An ASAP message.
    Asap(AsapMessage),
    /// An ENRP message.
    Enrp(EnrpMessage),
}

impl Message {
    /// The protocol of the message.
    pub const fn protocol(&self) -> Protocol {
        match self {
            Self::Asap(_) => Protocol::Asap,
            Self::Enrp(_) => Protocol::Enrp,
        }
    }

    /// The RFC name of the message type.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Asap(m) => m.name(),
            Self::Enrp(m) => m.body.name(),
        }
    }

    /// Encodes the message, putting kept unrecognized parameters back in place.
    pub fn encode_with_unknown(
        &self,
        unknown: &[UnknownParameter],
    ) -> Result<Vec<u8>, EncodeError> {
        match self {
            Self::Asap(m) => m.encode_with_unknown(unknown),
            Self::Enrp(m) => m.encode_with_unknown(unknown),
        }
    }

    /// Encodes the message.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.encode_with_unknown(&[])
    }
}

/// The cause to answer a message that did not decode with, if any; never for an
/// ERROR message itself, so that two peers cannot bounce errors at each other.
pub fn error_reply(protocol: Protocol, bytes: &[u8], error: &WireError) -> Option<ErrorCause> {
    error
        .reply_cause()
        .filter(|_| bytes.first() != Some(&protocol.error_type()))
}

/// Decodes exactly one message of the given protocol.
///
/// `bytes` is one SCTP user message, one UDP datagram, or one frame cut from a byte
/// stream by [`StreamDeframer`]. The padding of the last parameter may be missing;
/// anything after it is an error.
pub fn decode(protocol: Protocol, bytes: &[u8]) -> Result<Decoded<Message>, WireError> {
    match protocol {
        Protocol::Asap => AsapMessage::decode(bytes).map(|d| Decoded {
            message: Message::Asap(d.message),
            flags: d.flags,
            unknown_parameters: d.unknown_parameters,
        }),
        Protocol::Enrp => EnrpMessage::decode(bytes).map(|d| Decoded {
            message: Message::Enrp(d.message),
            flags: d.flags,
            unknown_parameters: d.unknown_parameters,
        }),
    }
}
