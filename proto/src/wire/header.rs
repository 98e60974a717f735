//! The common message header (RFC 5352 §2.1, RFC 5353 §2.1) and what a decoder hands
//! back around a message.

use super::causes::{CauseCode, ErrorCause};
use super::codec::{Reader, UnknownParameter, round_up4};
use super::error::{MAX_CAUSE_COPY, WireError, WireErrorKind};
use super::types::Protocol;

/// A decoded message with what the header and the parameter walk left over.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Decoded<M> {
    /// The message.
    pub message: M,
    /// The raw flags byte (bits not defined for the type are ignored, kept for logs).
    pub flags: u8,
    /// Unrecognized parameters whose action bits said "skip". Those with
    /// [`UnknownParameter::must_report`] must be reported to the sender (cause 0x0001)
    /// while the message is processed normally.
    pub unknown_parameters: Vec<UnknownParameter>,
}

impl<M> Decoded<M> {
    /// The error causes to send back for skipped parameters with the report bit.
    pub fn report_causes(&self) -> Vec<ErrorCause> {
        self.unknown_parameters
            .iter()
            .filter(|p| p.must_report())
            .map(|p| ErrorCause::with_copy(CauseCode::UNRECOGNIZED_PARAMETER, &p.raw))
            .collect()
    }
}

/// The common 4-byte header and the body it delimits (docs/wire.md §1, §3).
#[derive(Debug)]
pub(crate) struct MessageHeader<'a> {
    pub(crate) message_type: u8,
    pub(crate) flags: u8,
    pub(crate) body: Reader<'a>,
    whole: &'a [u8],
}

impl<'a> MessageHeader<'a> {
    pub(crate) fn read(bytes: &'a [u8]) -> Result<Self, WireError> {
        let mut reader = Reader::new(bytes, 0);
        let message_type = reader.u8("message header")?;
        let flags = reader.u8("message header")?;
        let length = reader.u16("message header")?;
        let length_usize = usize::from(length);
        if length_usize < 4 {
            return Err(WireError::new(
                2,
                WireErrorKind::MessageLengthTooSmall { length },
            ));
        }
        if length_usize > bytes.len() {
            return Err(WireError::new(
                2,
                WireErrorKind::MessageLengthExceedsInput {
                    length,
                    available: bytes.len(),
                },
            ));
        }
        let padded = round_up4(length_usize);
        if bytes.len() > padded {
            return Err(WireError::new(
                padded,
                WireErrorKind::TrailingBytes {
                    count: bytes.len() - padded,
                },
            ));
        }
        let body = reader.take(bytes.len() - 4, "message body")?;
        Ok(Self {
            message_type,
            flags,
            body: Reader::new(body, 4),
            whole: bytes,
        })
    }

    /// The error for a message type the protocol does not define, with a bounded copy
    /// of the whole message for cause 0x0002.
    pub(crate) fn unrecognized(&self, protocol: Protocol) -> WireError {
        WireError::new(
            0,
            WireErrorKind::UnrecognizedMessage {
                protocol,
                message_type: self.message_type,
                message: self
                    .whole
                    .get(..MAX_CAUSE_COPY)
                    .unwrap_or(self.whole)
                    .to_vec(),
            },
        )
    }
}
