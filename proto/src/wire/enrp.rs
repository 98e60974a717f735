//! ENRP messages (RFC 5353 §2), PPID 12.

use super::asap::{expect_pool_handle, take_pool_elements};
use super::causes::OperationError;
use super::codec::UnknownParameter;
use super::codec::{Params, UnknownSink, Writer};
use super::error::{EncodeError, WireError};
use super::header::{Decoded, MessageHeader};
use super::params::{
    PoolElement, PoolHandle, RegistrarId, ServerInformation, decode_checksum, encode_checksum,
    encode_pool_handle,
};
use super::types::{
    PARAM_OPERATION_ERROR, PARAM_PE_CHECKSUM, PARAM_POOL_ELEMENT, PARAM_POOL_HANDLE,
    PARAM_SERVER_INFORMATION,
};
use super::types::{Protocol, enrp_type as T};

/// An ENRP message: the two registrar IDs every ENRP message carries, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct EnrpMessage {
    /// The sending registrar.
    pub sender: RegistrarId,
    /// The addressee (0 = unknown or multicast).
    pub receiver: RegistrarId,
    /// The message-specific part.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub body: EnrpBody,
}

/// An ENRP_HANDLE_UPDATE action (IANA "Update Action Types"). Open: other values are
/// decoded and must be ignored by the receiver (RFC 5353 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct UpdateAction(pub u16);

impl UpdateAction {
    /// 0x0000: add or update the PE.
    pub const ADD_PE: Self = Self(0);
    /// 0x0001: delete the PE.
    pub const DEL_PE: Self = Self(1);
}

/// The pool handle and PEs of one pool in a handle table response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PoolEntries {
    /// The pool.
    pub pool_handle: PoolHandle,
    /// Its PEs in this portion, each with ASAP transport and home registrar.
    pub pool_elements: Vec<PoolElement>,
}

/// The message-specific part of an ENRP message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")
)]
pub enum EnrpBody {
    /// 0x01 ENRP_PRESENCE.
    Presence {
        /// R flag: answer with a PRESENCE.
        reply_required: bool,
        /// Checksum over the PEs the sender owns (docs/wire.md §4).
        #[cfg_attr(feature = "serde", serde(serialize_with = "serialize_checksum"))]
        checksum: Option<u16>,
        /// The sender's ID and ENRP endpoint (rsplib requires it).
        server_information: Option<ServerInformation>,
    },
    /// 0x02 ENRP_HANDLE_TABLE_REQUEST.
    HandleTableRequest {
        /// W flag: only the PEs the receiver owns.
        own_children_only: bool,
    },
    /// 0x03 ENRP_HANDLE_TABLE_RESPONSE.
    HandleTableResponse {
        /// R flag: request refused.
        reject: bool,
        /// M flag: more to come, request again.
        more: bool,
        /// The entries of this portion.
        pools: Vec<PoolEntries>,
    },
    /// 0x04 ENRP_HANDLE_UPDATE.
    HandleUpdate {
        /// T flag (extension): the receiver should take this PE over.
        takeover_suggested: bool,
        /// Add or delete.
        action: UpdateAction,
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE, with ASAP transport and home registrar.
        pool_element: PoolElement,
    },
    /// 0x05 ENRP_LIST_REQUEST.
    ListRequest,
    /// 0x06 ENRP_LIST_RESPONSE.
    ListResponse {
        /// R flag: request refused.
        reject: bool,
        /// The peers the sender knows.
        servers: Vec<ServerInformation>,
    },
    /// 0x07 ENRP_INIT_TAKEOVER.
    InitTakeover {
        /// The registrar presumed dead.
        target: RegistrarId,
    },
    /// 0x08 ENRP_INIT_TAKEOVER_ACK.
    InitTakeoverAck {
        /// The registrar presumed dead.
        target: RegistrarId,
    },
    /// 0x09 ENRP_TAKEOVER_SERVER.
    TakeoverServer {
        /// The registrar taken over.
        target: RegistrarId,
    },
    /// 0x0A ENRP_ERROR.
    Error {
        /// What went wrong.
        error: OperationError,
    },
}

#[cfg(feature = "serde")]
fn serialize_checksum<S: serde::Serializer>(
    checksum: &Option<u16>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match checksum {
        Some(value) => s.collect_str(&format_args!("0x{value:04x}")),
        None => s.serialize_none(),
    }
}

const FLAG_R: u8 = 0x01;
const FLAG_W: u8 = 0x01;
const FLAG_M: u8 = 0x02;
const FLAG_T: u8 = 0x01;

impl EnrpBody {
    /// The message type byte.
    pub const fn message_type(&self) -> u8 {
        match self {
            Self::Presence { .. } => T::PRESENCE,
            Self::HandleTableRequest { .. } => T::HANDLE_TABLE_REQUEST,
            Self::HandleTableResponse { .. } => T::HANDLE_TABLE_RESPONSE,
            Self::HandleUpdate { .. } => T::HANDLE_UPDATE,
            Self::ListRequest => T::LIST_REQUEST,
            Self::ListResponse { .. } => T::LIST_RESPONSE,
            Self::InitTakeover { .. } => T::INIT_TAKEOVER,
            Self::InitTakeoverAck { .. } => T::INIT_TAKEOVER_ACK,
            Self::TakeoverServer { .. } => T::TAKEOVER_SERVER,
            Self::Error { .. } => T::ERROR,
        }
    }

    /// The RFC name of the message type.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Presence { .. } => "ENRP_PRESENCE",
            Self::HandleTableRequest { .. } => "ENRP_HANDLE_TABLE_REQUEST",
            Self::HandleTableResponse { .. } => "ENRP_HANDLE_TABLE_RESPONSE",
            Self::HandleUpdate { .. } => "ENRP_HANDLE_UPDATE",
            Self::ListRequest => "ENRP_LIST_REQUEST",
            Self::ListResponse { .. } => "ENRP_LIST_RESPONSE",
            Self::InitTakeover { .. } => "ENRP_INIT_TAKEOVER",
            Self::InitTakeoverAck { .. } => "ENRP_INIT_TAKEOVER_ACK",
            Self::TakeoverServer { .. } => "ENRP_TAKEOVER_SERVER",
            Self::Error { .. } => "ENRP_ERROR",
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Self::Presence { reply_required, .. } => flag(*reply_required, FLAG_R),
            Self::HandleTableRequest { own_children_only } => flag(*own_children_only, FLAG_W),
            Self::HandleTableResponse { reject, more, .. } => {
                flag(*reject, FLAG_R) | flag(*more, FLAG_M)
            }
            Self::HandleUpdate {
                takeover_suggested, ..
            } => flag(*takeover_suggested, FLAG_T),
            Self::ListResponse { reject, .. } => flag(*reject, FLAG_R),
            Self::ListRequest
            | Self::InitTakeover { .. }
            | Self::InitTakeoverAck { .. }
            | Self::TakeoverServer { .. }
            | Self::Error { .. } => 0,
        }
    }
}

const fn flag(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}

/// A handle table response's pools (RFC 5353 §2): each pool handle followed by
/// its pool elements.
fn handle_table_entries(params: &mut Params<'_, '_>) -> Result<Vec<PoolEntries>, WireError> {
    let mut pools = Vec::new();
    while params.peek_type()? == Some(PARAM_POOL_HANDLE) {
        let pool_handle = expect_pool_handle(params)?;
        if params.peek_type()? != Some(PARAM_POOL_ELEMENT) {
            return Err(params.unexpected("a pool element parameter"));
        }
        pools.push(PoolEntries {
            pool_handle,
            pool_elements: take_pool_elements(params)?,
        });
    }
    Ok(pools)
}

impl EnrpMessage {
    /// Decodes one ENRP message (the caller knows it is ENRP: PPID 12 or the socket).
    pub fn decode(bytes: &[u8]) -> Result<Decoded<Self>, WireError> {
        let header = MessageHeader::read(bytes)?;
        if !(T::PRESENCE..=T::ERROR).contains(&header.message_type) {
            return Err(header.unrecognized(Protocol::Enrp));
        }
        let flags = header.flags;
        let mut body = header.body.clone();
        let sender = RegistrarId(body.u32("sending server's identifier")?);
        let receiver = RegistrarId(body.u32("receiving server's identifier")?);
        let target = match header.message_type {
            T::INIT_TAKEOVER..=T::TAKEOVER_SERVER => {
                Some(RegistrarId(body.u32("target server's identifier")?))
            }
            _ => None,
        };
        let action = match header.message_type {
            T::HANDLE_UPDATE => {
                let action = UpdateAction(body.u16("update action")?);
                let _reserved = body.u16("reserved field")?;
                Some(action)
            }
            _ => None,
        };
        let mut unknown = Vec::new();
        let mut params = Params::new(body, UnknownSink::top_level(&mut unknown));
        let body = match header.message_type {
            T::PRESENCE => EnrpBody::Presence {
                reply_required: flags & FLAG_R != 0,
                checksum: params
                    .take_if(PARAM_PE_CHECKSUM)?
                    .map(|tlv| decode_checksum(&tlv))
                    .transpose()?,
                server_information: match params.take_if(PARAM_SERVER_INFORMATION)? {
                    Some(tlv) => Some(ServerInformation::decode(&tlv, params.sink())?),
                    None => None,
                },
            },
            T::HANDLE_TABLE_REQUEST => EnrpBody::HandleTableRequest {
                own_children_only: flags & FLAG_W != 0,
            },
            T::HANDLE_TABLE_RESPONSE => EnrpBody::HandleTableResponse {
                reject: flags & FLAG_R != 0,
                more: flags & FLAG_M != 0,
                pools: handle_table_entries(&mut params)?,
            },
            T::HANDLE_UPDATE => {
                let pool_handle = expect_pool_handle(&mut params)?;
                let tlv = params.expect(PARAM_POOL_ELEMENT, "a pool element parameter")?;
                EnrpBody::HandleUpdate {
                    takeover_suggested: flags & FLAG_T != 0,
                    action: action.unwrap_or(UpdateAction::ADD_PE),
                    pool_handle,
                    pool_element: PoolElement::decode(&tlv, params.sink())?,
                }
            }
            T::LIST_REQUEST => EnrpBody::ListRequest,
            T::LIST_RESPONSE => {
                let mut servers = Vec::new();
                while let Some(tlv) = params.take_if(PARAM_SERVER_INFORMATION)? {
                    servers.push(ServerInformation::decode(&tlv, params.sink())?);
                }
                let reject = flags & FLAG_R != 0;
                EnrpBody::ListResponse { reject, servers }
            }
            T::INIT_TAKEOVER => EnrpBody::InitTakeover {
                target: target.unwrap_or_default(),
            },
            T::INIT_TAKEOVER_ACK => EnrpBody::InitTakeoverAck {
                target: target.unwrap_or_default(),
            },
            T::TAKEOVER_SERVER => EnrpBody::TakeoverServer {
                target: target.unwrap_or_default(),
            },
            T::ERROR => {
                let tlv = params.expect(PARAM_OPERATION_ERROR, "an operation error parameter")?;
                EnrpBody::Error {
                    error: OperationError::decode(&tlv)?,
                }
            }
            _ => return Err(header.unrecognized(Protocol::Enrp)),
        };
        params.finish("the end of the message")?;
        Ok(Decoded {
            message: Self {
                sender,
                receiver,
                body,
            },
            flags,
            unknown_parameters: unknown,
        })
    }

    /// Encodes the message as rsplib does.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.encode_with_unknown(&[])
    }

    /// Encodes the message and puts kept unrecognized top-level parameters back in place.
    pub fn encode_with_unknown(
        &self,
        unknown: &[UnknownParameter],
    ) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::new(unknown);
        w.u8(self.body.message_type());
        w.u8(self.body.flags());
        w.u16(0);
        w.u32(self.sender.0);
        w.u32(self.receiver.0);
        match &self.body {
            EnrpBody::Presence {
                checksum,
                server_information,
                ..
            } => {
                if let Some(checksum) = checksum {
                    encode_checksum(&mut w, *checksum)?;
                }
                if let Some(info) = server_information {
                    info.encode(&mut w)?;
                }
            }
            EnrpBody::HandleTableRequest { .. } | EnrpBody::ListRequest => {}
            EnrpBody::HandleTableResponse { pools, .. } => {
                for pool in pools {
                    encode_pool_handle(&mut w, &pool.pool_handle)?;
                    for pe in &pool.pool_elements {
                        pe.encode(&mut w)?;
                    }
                }
            }
            EnrpBody::HandleUpdate {
                action,
                pool_handle,
                pool_element,
                ..
            } => {
                w.u16(action.0);
                w.u16(0);
                encode_pool_handle(&mut w, pool_handle)?;
                pool_element.encode(&mut w)?;
            }
            EnrpBody::ListResponse { servers, .. } => {
                for server in servers {
                    server.encode(&mut w)?;
                }
            }
            EnrpBody::InitTakeover { target }
            | EnrpBody::InitTakeoverAck { target }
            | EnrpBody::TakeoverServer { target } => w.u32(target.0),
            EnrpBody::Error { error } => error.encode(&mut w)?,
        }
        w.finish()
    }
}
