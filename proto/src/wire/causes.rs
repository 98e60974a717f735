//! Error causes and the Operation Error parameter (RFC 5354 §3.10, §4): cause codes
//! (RFC 5354's and rsplib's private ones by name), one cause with its copied data, and
//! the list of them.

use std::fmt;

use super::codec::{Tlv, Writer};
use super::error::{EncodeError, MAX_CAUSE_COPY, WireError, WireErrorKind};
use super::types::PARAM_OPERATION_ERROR;
#[cfg(feature = "serde")]
use super::types::serialize_hex;

/// An error cause code (RFC 5354, Operation Error causes). Open: any code is accepted.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CauseCode(pub u16);

impl CauseCode {
    /// 0x0000 Unspecified error (never sent).
    pub const UNSPECIFIED: Self = Self(0x0000);
    /// 0x0001 Unrecognized Parameter.
    pub const UNRECOGNIZED_PARAMETER: Self = Self(0x0001);
    /// 0x0002 Unrecognized Message.
    pub const UNRECOGNIZED_MESSAGE: Self = Self(0x0002);
    /// 0x0003 Invalid Values.
    pub const INVALID_VALUES: Self = Self(0x0003);
    /// 0x0004 Non-unique PE Identifier.
    pub const NON_UNIQUE_PE_IDENTIFIER: Self = Self(0x0004);
    /// 0x0005 Inconsistent Pooling Policy.
    pub const INCONSISTENT_POOLING_POLICY: Self = Self(0x0005);
    /// 0x0006 Lack of Resources.
    pub const LACK_OF_RESOURCES: Self = Self(0x0006);
    /// 0x0007 Inconsistent Transport Type.
    pub const INCONSISTENT_TRANSPORT_TYPE: Self = Self(0x0007);
    /// 0x0008 Inconsistent Data/Control Configuration.
    pub const INCONSISTENT_DATA_CONTROL: Self = Self(0x0008);
    /// 0x0009 Unknown Pool Handle.
    pub const UNKNOWN_POOL_HANDLE: Self = Self(0x0009);
    /// 0x000A Rejection due to security considerations.
    pub const SECURITY_REJECTION: Self = Self(0x000a);

    /// The RFC name, or rsplib's name for its private codes (docs/rsplib.md item 2);
    /// `None` for codes nobody defines.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0000 => "unspecified error",
            0x0001 => "unrecognized parameter",
            0x0002 => "unrecognized message",
            0x0003 => "invalid values",
            0x0004 => "non-unique PE identifier",
            0x0005 => "inconsistent pooling policy",
            0x0006 => "lack of resources",
            0x0007 => "inconsistent transport type",
            0x0008 => "inconsistent data/control configuration",
            0x0009 => "unknown pool handle",
            0x000a => "rejection due to security considerations",
            0x0010 => "rsplib: invalid message",
            0x0011 => "rsplib: invalid value",
            0x1000 => "rsplib: not initialised",
            0x1001 => "rsplib: buffer size exceeded",
            0x1003 => "rsplib: read error",
            0x1004 => "rsplib: write error",
            0x1005 | 0x1006 => "rsplib: connection failure",
            0x1007 => "rsplib: no registrar",
            0x1008 => "rsplib: timeout",
            0x1009 => "rsplib: unrecognized parameter",
            0x100a => "rsplib: wrong protocol",
            0x100b => "rsplib: unsupported pool policy",
            0xf000 => "rsplib: invalid ID",
            0xf001 => "rsplib: own ID",
            0xf002 => "rsplib: duplicate ID",
            0xf003 => "rsplib: invalid pool policy",
            0xf004 => "rsplib: invalid pool handle",
            0xf005 => "rsplib: invalid addresses",
            0xf006 => "rsplib: invalid registrator",
            0xf007 => "rsplib: no usable ASAP addresses",
            0xf008 => "rsplib: no usable user addresses",
            _ => return None,
        })
    }

    /// rsplib's "address problem, hunt for another registrar" codes (0xF007, 0xF008).
    pub const fn is_address_problem(self) -> bool {
        matches!(self.0, 0xf007 | 0xf008)
    }
}

impl fmt::Display for CauseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "0x{:04x} ({name})", self.0),
            None => write!(f, "0x{:04x} (unknown cause)", self.0),
        }
    }
}

impl fmt::Debug for CauseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CauseCode({self})")
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for CauseCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One error cause inside an Operation Error.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ErrorCause {
    /// The cause code.
    pub code: CauseCode,
    /// Cause-specific information (a copy of the offending parameter or message for
    /// 0x0001, 0x0002 and 0x0003; usually empty otherwise).
    #[cfg_attr(feature = "serde", serde(serialize_with = "serialize_hex"))]
    pub info: Vec<u8>,
}

impl ErrorCause {
    /// A cause without information.
    pub fn new(code: CauseCode) -> Self {
        Self {
            code,
            info: Vec::new(),
        }
    }

    /// A cause carrying a (bounded) copy of a parameter or message.
    pub fn with_copy(code: CauseCode, copy: &[u8]) -> Self {
        Self {
            code,
            info: copy.get(..MAX_CAUSE_COPY).unwrap_or(copy).to_vec(),
        }
    }
}

/// An Operation Error parameter (0x000C): one or more causes (rsplib sends one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct OperationError {
    /// The causes.
    pub causes: Vec<ErrorCause>,
}

impl OperationError {
    /// An Operation Error with one cause.
    pub fn single(cause: ErrorCause) -> Self {
        Self {
            causes: vec![cause],
        }
    }

    /// The first cause code, for "why was this refused".
    pub fn first_code(&self) -> Option<CauseCode> {
        self.causes.first().map(|c| c.code)
    }

    pub(crate) fn decode(tlv: &Tlv<'_>) -> Result<Self, WireError> {
        let mut value = tlv.value.clone();
        let mut causes = Vec::with_capacity(1);
        while !value.is_empty() {
            let at = value.offset();
            let code = CauseCode(value.u16("error cause header")?);
            let length = value.u16("error cause header")?;
            let info_length = usize::from(length)
                .checked_sub(4)
                .ok_or_else(|| tlv.invalid("error cause", "cause length below 4"))?;
            let info = value
                .take(info_length, "error cause information")
                .map_err(|_| {
                    WireError::new(
                        at,
                        WireErrorKind::InvalidValue {
                            what: "error cause",
                            reason: "cause length beyond the parameter",
                            parameter: tlv.copy(),
                        },
                    )
                })?;
            let padding = super::codec::round_up4(usize::from(length)) - usize::from(length);
            // The last cause's padding may be outside the parameter length (§9.13).
            value.take(padding.min(value.remaining()), "padding")?;
            causes.push(ErrorCause {
                code,
                info: info.to_vec(),
            });
        }
        Ok(Self { causes })
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.param(PARAM_OPERATION_ERROR, |w| {
            let mut last_padding = 0;
            for cause in &self.causes {
                let length = cause.info.len() + 4;
                let length_u16 = u16::try_from(length).map_err(|_| EncodeError::TooLong {
                    what: "error cause",
                    length,
                })?;
                w.u16(cause.code.0);
                w.u16(length_u16);
                w.bytes(&cause.info);
                let before = w.buf.len();
                w.pad();
                last_padding = w.buf.len() - before;
            }
            w.uncounted_tail = last_padding;
            Ok(())
        })
    }
}

impl WireError {
    pub(crate) fn new(offset: usize, kind: WireErrorKind) -> Self {
        Self { offset, kind }
    }

    /// The error cause to send back in an ASAP_ERROR / ENRP_ERROR, or `None` when the
    /// message must be dropped silently (action bits 00, or damage that cannot be
    /// attributed to one parameter: the transport should then treat the peer as
    /// broken).
    pub fn reply_cause(&self) -> Option<ErrorCause> {
        match &self.kind {
            WireErrorKind::UnrecognizedMessage { message, .. } => Some(ErrorCause::with_copy(
                CauseCode::UNRECOGNIZED_MESSAGE,
                message,
            )),
            WireErrorKind::UnrecognizedParameter {
                report: true,
                parameter,
                ..
            } => Some(ErrorCause::with_copy(
                CauseCode::UNRECOGNIZED_PARAMETER,
                parameter,
            )),
            WireErrorKind::UnexpectedParameter { parameter, .. }
            | WireErrorKind::InvalidValue { parameter, .. } => {
                Some(ErrorCause::with_copy(CauseCode::INVALID_VALUES, parameter))
            }
            _ => None,
        }
    }
}
