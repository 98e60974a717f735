//! Bounded reading and writing of headers and TLVs (docs/wire.md §1-3).
//!
//! Every read is checked against the bytes that remain; nothing indexes untrusted
//! input directly (house style 3, 7; modelled on rustls `msgs/codec.rs`).

use super::error::{EncodeError, MAX_CAUSE_COPY, WireError, WireErrorKind};
#[cfg(feature = "serde")]
use super::types::serialize_hex;

/// The most unrecognized "skip" parameters one message may carry. Each is copied, so
/// this bounds what a hostile peer can make us allocate per message.
pub const MAX_UNKNOWN_PARAMETERS: usize = 16;

/// Rounds a length up to the next multiple of 4 (the TLV alignment).
pub const fn round_up4(length: usize) -> usize {
    (length + 3) & !3
}

/// A cursor over untrusted bytes that knows its absolute offset in the message.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    /// Offset of `bytes[0]` in the whole message, for error reports.
    base: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], base: usize) -> Self {
        Self { bytes, base }
    }

    pub(crate) fn offset(&self) -> usize {
        self.base
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn take(&mut self, count: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if count > self.bytes.len() {
            return Err(self.error(WireErrorKind::Truncated {
                what,
                needed: count - self.bytes.len(),
            }));
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        self.base += count;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let bytes = self.take(N, what)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn error(&self, kind: WireErrorKind) -> WireError {
        WireError::new(self.base, kind)
    }

    /// Reads one TLV and skips its padding. The padding of the last TLV in a container
    /// may be missing (some senders leave it out of the enclosing length).
    pub(crate) fn tlv(&mut self) -> Result<Tlv<'a>, WireError> {
        let offset = self.base;
        let all = self.bytes;
        if self.remaining() < 4 {
            return Err(self.error(WireErrorKind::Truncated {
                what: "parameter header",
                needed: 4 - self.remaining(),
            }));
        }
        let param_type = self.u16("parameter header")?;
        let length = self.u16("parameter header")?;
        let length_usize = usize::from(length);
        if length_usize < 4 {
            return Err(WireError::new(
                offset,
                WireErrorKind::BadParameterLength { param_type, length },
            ));
        }
        let value = self
            .take(length_usize - 4, "parameter value")
            .map_err(|_| {
                WireError::new(
                    offset,
                    WireErrorKind::BadParameterLength { param_type, length },
                )
            })?;
        let padding = round_up4(length_usize) - length_usize;
        // Missing padding is only tolerated at the very end of the container.
        self.take(padding.min(self.remaining()), "padding")?;
        Ok(Tlv {
            param_type,
            value: Reader::new(value, offset + 4),
            raw: all.get(..length_usize).unwrap_or(all),
            offset,
        })
    }
}

/// One parameter as found on the wire.
#[derive(Debug, Clone)]
pub(crate) struct Tlv<'a> {
    pub(crate) param_type: u16,
    /// The value, as a reader positioned at its first byte.
    pub(crate) value: Reader<'a>,
    /// Header and value, without padding: what an error cause copies.
    pub(crate) raw: &'a [u8],
    pub(crate) offset: usize,
}

impl<'a> Tlv<'a> {
    /// A bounded copy of the TLV for an error cause.
    pub(crate) fn copy(&self) -> Vec<u8> {
        self.raw.get(..MAX_CAUSE_COPY).unwrap_or(self.raw).to_vec()
    }

    pub(crate) fn invalid(&self, what: &'static str, reason: &'static str) -> WireError {
        WireError::new(
            self.offset,
            WireErrorKind::InvalidValue {
                what,
                reason,
                parameter: self.copy(),
            },
        )
    }

    /// Requires the value to be exactly `length` bytes.
    pub(crate) fn fixed(&self, length: usize, what: &'static str) -> Result<Reader<'a>, WireError> {
        if self.value.remaining() == length {
            Ok(self.value.clone())
        } else {
            Err(self.invalid(what, "wrong parameter length"))
        }
    }
}

/// Where unrecognized "skip" parameters go while a container is walked.
#[derive(Debug)]
pub(crate) struct UnknownSink<'s> {
    list: &'s mut Vec<UnknownParameter>,
    /// Top-level parameters are kept with their position so that they re-encode in
    /// place; nested ones are only reported.
    top_level: bool,
}

impl<'s> UnknownSink<'s> {
    pub(crate) fn top_level(list: &'s mut Vec<UnknownParameter>) -> Self {
        Self {
            list,
            top_level: true,
        }
    }

    pub(crate) fn nested(&mut self) -> UnknownSink<'_> {
        UnknownSink {
            list: self.list,
            top_level: false,
        }
    }
}

/// Is this one of the parameter types this codec understands (RFC 5354)?
pub(crate) const fn is_known_parameter(param_type: u16) -> bool {
    matches!(param_type, 0x0001..=0x000f | 0x803f)
}

/// Walks the parameters of one container (message body, Pool Element, transport ...),
/// applying the unrecognized-parameter action bits (docs/wire.md §2) and letting the
/// caller take the known parameters in the documented order.
#[derive(Debug)]
pub(crate) struct Params<'a, 's> {
    reader: Reader<'a>,
    peeked: Option<Tlv<'a>>,
    known_taken: u16,
    unknown: UnknownSink<'s>,
}

impl<'a, 's> Params<'a, 's> {
    pub(crate) fn new(reader: Reader<'a>, unknown: UnknownSink<'s>) -> Self {
        Self {
            reader,
            peeked: None,
            known_taken: 0,
            unknown,
        }
    }

    /// The sink, for parsing nested containers of the current parameter.
    pub(crate) fn sink(&mut self) -> &mut UnknownSink<'s> {
        &mut self.unknown
    }

    /// The type of the next known parameter, skipping (and recording) unknown ones.
    pub(crate) fn peek_type(&mut self) -> Result<Option<u16>, WireError> {
        if self.peeked.is_none() {
            self.peeked = self.next_known()?;
        }
        Ok(self.peeked.as_ref().map(|tlv| tlv.param_type))
    }

    fn next_known(&mut self) -> Result<Option<Tlv<'a>>, WireError> {
        while !self.reader.is_empty() {
            let tlv = self.reader.tlv()?;
            if is_known_parameter(tlv.param_type) {
                return Ok(Some(tlv));
            }
            let report = tlv.param_type & 0x4000 != 0;
            if tlv.param_type & 0x8000 == 0 {
                return Err(WireError::new(
                    tlv.offset,
                    WireErrorKind::UnrecognizedParameter {
                        param_type: tlv.param_type,
                        report,
                        parameter: tlv.copy(),
                    },
                ));
            }
            if self.unknown.list.len() >= MAX_UNKNOWN_PARAMETERS {
                return Err(WireError::new(
                    tlv.offset,
                    WireErrorKind::TooMany {
                        what: "unrecognized parameters",
                        limit: MAX_UNKNOWN_PARAMETERS,
                    },
                ));
            }
            self.unknown.list.push(UnknownParameter {
                raw: tlv.raw.to_vec(),
                position: self.unknown.top_level.then_some(self.known_taken),
            });
        }
        Ok(None)
    }

    /// Takes the next known parameter if it has the given type.
    pub(crate) fn take_if(&mut self, param_type: u16) -> Result<Option<Tlv<'a>>, WireError> {
        if self.peek_type()? == Some(param_type) {
            self.known_taken += 1;
            Ok(self.peeked.take())
        } else {
            Ok(None)
        }
    }

    /// Takes the next known parameter, which must have the given type.
    pub(crate) fn expect(
        &mut self,
        param_type: u16,
        what: &'static str,
    ) -> Result<Tlv<'a>, WireError> {
        match self.take_if(param_type)? {
            Some(tlv) => Ok(tlv),
            None => Err(self.unexpected(what)),
        }
    }

    /// Takes the next known parameter whatever its type.
    pub(crate) fn take_any(&mut self) -> Result<Option<Tlv<'a>>, WireError> {
        self.peek_type()?;
        if self.peeked.is_some() {
            self.known_taken += 1;
        }
        Ok(self.peeked.take())
    }

    /// Ends the container: any known parameter left over is out of place.
    pub(crate) fn finish(mut self, expected: &'static str) -> Result<(), WireError> {
        if self.peek_type()?.is_some() {
            return Err(self.unexpected(expected));
        }
        Ok(())
    }

    /// The error for "the next parameter is not what we need here".
    pub(crate) fn unexpected(&self, expected: &'static str) -> WireError {
        match &self.peeked {
            Some(tlv) => WireError::new(
                tlv.offset,
                WireErrorKind::UnexpectedParameter {
                    param_type: tlv.param_type,
                    expected,
                    parameter: tlv.copy(),
                },
            ),
            None => self
                .reader
                .error(WireErrorKind::MissingParameter { what: expected }),
        }
    }
}

/// Appends big-endian fields and padded TLVs, patching lengths afterwards.
#[derive(Debug)]
pub(crate) struct Writer<'u> {
    pub(crate) buf: Vec<u8>,
    /// Unrecognized top-level parameters to put back where they were.
    unknown: &'u [UnknownParameter],
    next_unknown: usize,
    known_written: u16,
    depth: u8,
    /// Padding at the end of the current parameter that its length must not count
    /// (only the last error cause of an Operation Error, docs/wire.md §5).
    pub(crate) uncounted_tail: usize,
}

impl<'u> Writer<'u> {
    pub(crate) fn new(unknown: &'u [UnknownParameter]) -> Self {
        Self {
            buf: Vec::with_capacity(64),
            unknown,
            next_unknown: 0,
            known_written: 0,
            depth: 0,
            uncounted_tail: 0,
        }
    }

    pub(crate) fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    pub(crate) fn u16(&mut self, value: u16) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, value: u32) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    pub(crate) fn bytes(&mut self, value: &[u8]) {
        self.buf.extend_from_slice(value);
    }

    pub(crate) fn pad(&mut self) {
        let padded = round_up4(self.buf.len());
        self.buf.resize(padded, 0);
    }

    /// Writes kept unknown parameters whose place comes before the next known one.
    fn flush_unknown(&mut self, all: bool) {
        while let Some(unknown) = self.unknown.get(self.next_unknown) {
            let due = unknown.position.is_some_and(|p| p <= self.known_written);
            if !(all || due) {
                break;
            }
            if unknown.position.is_some() {
                self.buf.extend_from_slice(&unknown.raw);
                self.pad();
            }
            self.next_unknown += 1;
        }
    }

    /// Writes one TLV: header, the value written by `body`, then padding. The length
    /// field excludes the padding (docs/wire.md §2).
    pub(crate) fn param(
        &mut self,
        param_type: u16,
        body: impl FnOnce(&mut Self) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        if self.depth == 0 {
            self.flush_unknown(false);
        }
        let start = self.buf.len();
        self.u16(param_type);
        self.u16(0);
        self.depth += 1;
        body(self)?;
        self.depth -= 1;
        let length = self.buf.len() - start - std::mem::take(&mut self.uncounted_tail);
        let length_u16 = u16::try_from(length).map_err(|_| EncodeError::TooLong {
            what: "parameter",
            length,
        })?;
        self.buf
            .get_mut(start + 2..start + 4)
            .ok_or(EncodeError::Invalid {
                what: "parameter",
                reason: "internal length slot missing",
            })?
            .copy_from_slice(&length_u16.to_be_bytes());
        self.pad();
        if self.depth == 0 {
            self.known_written += 1;
        }
        Ok(())
    }

    /// Finishes a message whose header starts at offset 0: puts back the remaining
    /// unknown parameters and writes the length, which counts the final padding.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, EncodeError> {
        self.flush_unknown(true);
        self.pad();
        let length = self.buf.len();
        let length_u16 = u16::try_from(length).map_err(|_| EncodeError::TooLong {
            what: "message",
            length,
        })?;
        self.buf
            .get_mut(2..4)
            .ok_or(EncodeError::Invalid {
                what: "message",
                reason: "header missing",
            })?
            .copy_from_slice(&length_u16.to_be_bytes());
        Ok(self.buf)
    }
}

/// A parameter this codec did not recognize, whose action bits said "skip".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct UnknownParameter {
    /// The TLV as received (header and value, no padding).
    #[cfg_attr(feature = "serde", serde(serialize_with = "serialize_hex"))]
    pub raw: Vec<u8>,
    /// For a top-level parameter, how many known parameters preceded it, so that
    /// re-encoding puts it back in place; `None` for one found inside another
    /// parameter (reported, not kept).
    pub position: Option<u16>,
}

impl UnknownParameter {
    /// The parameter type, action bits included.
    pub fn param_type(&self) -> u16 {
        let mut r = Reader::new(&self.raw, 0);
        r.u16("parameter type").unwrap_or(0)
    }

    /// Action bits 11: the receiver must report it (cause 0x0001) while processing
    /// the message.
    pub fn must_report(&self) -> bool {
        self.param_type() & 0x4000 != 0
    }
}
