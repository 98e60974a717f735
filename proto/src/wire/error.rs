//! Decoding and encoding errors, and the RFC 5354 error causes they map to.
//!
//! A decoding error names the byte offset and what was wrong (for logs and for
//! `rserpool decode`), and knows which error cause, if any, the receiver should send
//! back in an ASAP_ERROR / ENRP_ERROR (docs/wire.md §2; RFC 5354, Operation Error causes; RFC 5352 §2.2.14).

use super::types::Protocol;

/// The largest copy of an offending message or parameter put into an error cause, so
/// that the whole ENRP_ERROR (24 bytes of headers and padding around it) still fits in
/// the 16-bit message length.
pub const MAX_CAUSE_COPY: usize = 65_535 - 24;

/// A message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {kind}")]
pub struct WireError {
    /// Offset, from the start of the message, where the problem was found.
    pub offset: usize,
    /// What was wrong.
    pub kind: WireErrorKind,
}

/// What was wrong with a message.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireErrorKind {
    /// The input ended inside a header or field.
    #[error("truncated {what}: {needed} more byte(s) needed")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// How many bytes were missing.
        needed: usize,
    },
    /// The message length field is below the 4-byte header size.
    #[error("message length {length} is below the 4-byte minimum")]
    MessageLengthTooSmall {
        /// The length field.
        length: u16,
    },
    /// The message length field claims more bytes than were received.
    #[error("message length {length} exceeds the {available} byte(s) received")]
    MessageLengthExceedsInput {
        /// The length field.
        length: u16,
        /// Bytes available.
        available: usize,
    },
    /// Bytes follow the end of the message (after its padding).
    #[error("{count} trailing byte(s) after the end of the message")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A parameter length field below 4 or beyond its enclosing container.
    #[error("parameter 0x{param_type:04x} has invalid length {length}")]
    BadParameterLength {
        /// The parameter type.
        param_type: u16,
        /// The length field.
        length: u16,
    },
    /// The message type is not defined for the protocol.
    #[error("unrecognized {protocol} message type 0x{message_type:02x}")]
    UnrecognizedMessage {
        /// The protocol the message was decoded as.
        protocol: Protocol,
        /// Its type byte.
        message_type: u8,
        /// A copy of the message (bounded by [`MAX_CAUSE_COPY`]), for cause 0x0002.
        message: Vec<u8>,
    },
    /// An unrecognized parameter whose action bits say "stop" (00 or 01).
    #[error("unrecognized parameter type 0x{param_type:04x} (action: stop{})", if *.report { " and report" } else { "" })]
    UnrecognizedParameter {
        /// The parameter type.
        param_type: u16,
        /// Action bits 01: report it in cause 0x0001.
        report: bool,
        /// A copy of the parameter TLV as received (unpadded).
        parameter: Vec<u8>,
    },
    /// A known parameter in a place where the message does not allow it.
    #[error("unexpected parameter 0x{param_type:04x}, expected {expected}")]
    UnexpectedParameter {
        /// The parameter type found.
        param_type: u16,
        /// What the message needed at this position.
        expected: &'static str,
        /// A copy of the parameter TLV.
        parameter: Vec<u8>,
    },
    /// A mandatory parameter is absent.
    #[error("missing {what}")]
    MissingParameter {
        /// What is missing.
        what: &'static str,
    },
    /// A parameter is well-formed as a TLV but its value is invalid.
    #[error("invalid {what}: {reason}")]
    InvalidValue {
        /// The parameter or field.
        what: &'static str,
        /// Why it is invalid.
        reason: &'static str,
        /// A copy of the offending parameter TLV (empty for fixed header fields).
        parameter: Vec<u8>,
    },
    /// More items than this implementation accepts in one message.
    #[error("too many {what} (limit {limit})")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
}

/// A message could not be encoded.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message or one of its parameters would exceed the 16-bit length field.
    #[error("{what} would be {length} bytes, over the 65535-byte limit of its length field")]
    TooLong {
        /// The message or parameter.
        what: &'static str,
        /// Its length.
        length: usize,
    },
    /// A value that the wire format cannot carry.
    #[error("cannot encode {what}: {reason}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
}
