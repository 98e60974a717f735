//! ASAP messages (RFC 5352 §2.2), PPID 11.

use super::causes::OperationError;
use super::codec::UnknownParameter;
use super::codec::{Params, Reader, UnknownSink, Writer};
use super::error::{EncodeError, WireError};
use super::header::{Decoded, MessageHeader};
use super::params::{
    PoolElement, PoolElementId, PoolHandle, RegistrarId, ServerInformation, Transport,
    decode_cookie, decode_items, decode_pe_id, decode_pool_handle, encode_cookie, encode_items,
    encode_pe_id, encode_pool_handle, take_transport,
};
use super::selection::Policy;
use super::types::{
    PARAM_COOKIE, PARAM_HANDLE_RESOLUTION_OPTION, PARAM_OPERATION_ERROR, PARAM_PE_IDENTIFIER,
    PARAM_POLICY, PARAM_POOL_ELEMENT, PARAM_POOL_HANDLE, PARAM_SERVER_INFORMATION,
};
use super::types::{Protocol, asap_type as T};

/// The R (reject) flag of ASAP_REGISTRATION_RESPONSE.
const FLAG_REJECT: u8 = 0x01;
/// The H (home) flag of ASAP_ENDPOINT_KEEP_ALIVE.
const FLAG_HOME: u8 = 0x01;

/// An ASAP message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")
)]
pub enum AsapMessage {
    /// 0x01, PE → registrar.
    Registration(Registration),
    /// 0x02, PE → registrar.
    Deregistration(PoolElementRef),
    /// 0x03, registrar → PE.
    RegistrationResponse(RegistrationResponse),
    /// 0x04, registrar → PE.
    DeregistrationResponse(DeregistrationResponse),
    /// 0x05, PU → registrar.
    HandleResolution(HandleResolution),
    /// 0x06, registrar → PU.
    HandleResolutionResponse(HandleResolutionResponse),
    /// 0x07, registrar → PE.
    EndpointKeepAlive(EndpointKeepAlive),
    /// 0x08, PE → registrar.
    EndpointKeepAliveAck(PoolElementRef),
    /// 0x09, PU → registrar.
    EndpointUnreachable(PoolElementRef),
    /// 0x0A, registrar → multicast group.
    ServerAnnounce(ServerAnnounce),
    /// 0x0B, PE → PU on the control channel.
    Cookie(Cookie),
    /// 0x0C, PU → new PE on the control channel.
    CookieEcho(Cookie),
    /// 0x0D, PU ↔ PE on the control channel.
    BusinessCard(BusinessCard),
    /// 0x0E, any ASAP peer.
    Error(ErrorReport),
}

/// ASAP_REGISTRATION: a PE registers (or re-registers) into a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Registration {
    /// The pool.
    pub pool_handle: PoolHandle,
    /// The PE, without ASAP transport.
    pub pool_element: PoolElement,
}

/// A pool handle and a PE identifier: ASAP_DEREGISTRATION,
/// ASAP_ENDPOINT_KEEP_ALIVE_ACK and ASAP_ENDPOINT_UNREACHABLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PoolElementRef {
    /// The pool.
    pub pool_handle: PoolHandle,
    /// The PE.
    pub pe_id: PoolElementId,
}

/// ASAP_REGISTRATION_RESPONSE.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RegistrationResponse {
    /// R flag: the registration was refused.
    pub reject: bool,
    /// The pool, echoed.
    pub pool_handle: PoolHandle,
    /// The PE, echoed.
    pub pe_id: PoolElementId,
    /// Why it was refused.
    pub error: Option<OperationError>,
}

/// ASAP_DEREGISTRATION_RESPONSE.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct DeregistrationResponse {
    /// The pool, echoed.
    pub pool_handle: PoolHandle,
    /// The PE, echoed.
    pub pe_id: PoolElementId,
    /// Why it failed, if it did.
    pub error: Option<OperationError>,
}

/// ASAP_HANDLE_RESOLUTION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HandleResolution {
    /// The pool.
    pub pool_handle: PoolHandle,
    /// Handle Resolution Option (extension 0x803F): how many PEs the PU wants;
    /// `u32::MAX` = as many as possible.
    pub items: Option<u32>,
}

/// ASAP_HANDLE_RESOLUTION_RESPONSE: the pool's policy and PEs, or an error.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HandleResolutionResponse {
    /// The pool.
    pub pool_handle: PoolHandle,
    /// The pool's overall policy (only its type matters to a PU).
    pub policy: Option<Policy>,
    /// The selected PEs, best first.
    pub pool_elements: Vec<PoolElement>,
    /// Why resolution failed (e.g. cause 0x0009, unknown pool handle).
    pub error: Option<OperationError>,
}

/// ASAP_ENDPOINT_KEEP_ALIVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct EndpointKeepAlive {
    /// H flag: the sender is (becoming) the PE's home registrar.
    pub home: bool,
    /// The sending registrar.
    pub server_id: RegistrarId,
    /// The pool.
    pub pool_handle: PoolHandle,
    /// The PE probed (rsplib always sends it; absent = every PE in the pool).
    pub pe_id: Option<PoolElementId>,
}

/// ASAP_SERVER_ANNOUNCE.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ServerAnnounce {
    /// The announcing registrar.
    pub server_id: RegistrarId,
    /// Where it accepts ASAP associations; rsplib sends none (use the UDP source).
    pub transports: Vec<Transport>,
    /// Optional Server Information, accepted after the transports as rsplib does.
    pub server_information: Option<ServerInformation>,
}

/// ASAP_COOKIE / ASAP_COOKIE_ECHO.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Cookie {
    /// Opaque application state, at least one byte.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "super::types::serialize_hex")
    )]
    pub cookie: Vec<u8>,
}

/// ASAP_BUSINESS_CARD: the PEs to fail over to, in order of preference.
///
/// Encoded in the RFC form `PH | PE…`. Decoding also accepts rsplib's forms, with a
/// policy after the handle and a repeated handle (RFC 5352 §2.2.13); the repeated handle
/// is not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BusinessCard {
    /// The pool the card is about.
    pub pool_handle: PoolHandle,
    /// The policy, as rsplib's encoder writes it.
    pub policy: Option<Policy>,
    /// The PEs, best first.
    pub pool_elements: Vec<PoolElement>,
}

/// ASAP_ERROR.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ErrorReport {
    /// What went wrong.
    pub error: OperationError,
}

impl AsapMessage {
    /// The message type byte.
    pub const fn message_type(&self) -> u8 {
        match self {
            Self::Registration(_) => T::REGISTRATION,
            Self::Deregistration(_) => T::DEREGISTRATION,
            Self::RegistrationResponse(_) => T::REGISTRATION_RESPONSE,
            Self::DeregistrationResponse(_) => T::DEREGISTRATION_RESPONSE,
            Self::HandleResolution(_) => T::HANDLE_RESOLUTION,
            Self::HandleResolutionResponse(_) => T::HANDLE_RESOLUTION_RESPONSE,
            Self::EndpointKeepAlive(_) => T::ENDPOINT_KEEP_ALIVE,
            Self::EndpointKeepAliveAck(_) => T::ENDPOINT_KEEP_ALIVE_ACK,
            Self::EndpointUnreachable(_) => T::ENDPOINT_UNREACHABLE,
            Self::ServerAnnounce(_) => T::SERVER_ANNOUNCE,
            Self::Cookie(_) => T::COOKIE,
            Self::CookieEcho(_) => T::COOKIE_ECHO,
            Self::BusinessCard(_) => T::BUSINESS_CARD,
            Self::Error(_) => T::ERROR,
        }
    }

    /// The RFC name of the message type.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Registration(_) => "ASAP_REGISTRATION",
            Self::Deregistration(_) => "ASAP_DEREGISTRATION",
            Self::RegistrationResponse(_) => "ASAP_REGISTRATION_RESPONSE",
            Self::DeregistrationResponse(_) => "ASAP_DEREGISTRATION_RESPONSE",
            Self::HandleResolution(_) => "ASAP_HANDLE_RESOLUTION",
            Self::HandleResolutionResponse(_) => "ASAP_HANDLE_RESOLUTION_RESPONSE",
            Self::EndpointKeepAlive(_) => "ASAP_ENDPOINT_KEEP_ALIVE",
            Self::EndpointKeepAliveAck(_) => "ASAP_ENDPOINT_KEEP_ALIVE_ACK",
            Self::EndpointUnreachable(_) => "ASAP_ENDPOINT_UNREACHABLE",
            Self::ServerAnnounce(_) => "ASAP_SERVER_ANNOUNCE",
            Self::Cookie(_) => "ASAP_COOKIE",
            Self::CookieEcho(_) => "ASAP_COOKIE_ECHO",
            Self::BusinessCard(_) => "ASAP_BUSINESS_CARD",
            Self::Error(_) => "ASAP_ERROR",
        }
    }

    /// Decodes one ASAP message (the caller knows it is ASAP: PPID 11 or the socket).
    pub fn decode(bytes: &[u8]) -> Result<Decoded<Self>, WireError> {
        let header = MessageHeader::read(bytes)?;
        let mut unknown = Vec::new();
        let mut body = header.body.clone();
        let message = decode_body(&header, &mut body, UnknownSink::top_level(&mut unknown))?;
        Ok(Decoded {
            message,
            flags: header.flags,
            unknown_parameters: unknown,
        })
    }

    /// Encodes the message as rsplib does (docs/wire.md §3, encoder checklist).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.encode_with_unknown(&[])
    }

    /// Encodes the message and puts unrecognized top-level parameters kept by
    /// [`AsapMessage::decode`] back where they were, byte for byte.
    pub fn encode_with_unknown(
        &self,
        unknown: &[UnknownParameter],
    ) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::new(unknown);
        w.u8(self.message_type());
        w.u8(self.flags());
        w.u16(0);
        match self {
            Self::Registration(m) => {
                encode_pool_handle(&mut w, &m.pool_handle)?;
                m.pool_element.encode(&mut w)?;
            }
            Self::Deregistration(m)
            | Self::EndpointKeepAliveAck(m)
            | Self::EndpointUnreachable(m) => {
                encode_pool_handle(&mut w, &m.pool_handle)?;
                encode_pe_id(&mut w, m.pe_id)?;
            }
            Self::RegistrationResponse(RegistrationResponse {
                pool_handle,
                pe_id,
                error,
                ..
            })
            | Self::DeregistrationResponse(DeregistrationResponse {
                pool_handle,
                pe_id,
                error,
            }) => {
                encode_pool_handle(&mut w, pool_handle)?;
                encode_pe_id(&mut w, *pe_id)?;
                if let Some(error) = error {
                    error.encode(&mut w)?;
                }
            }
            Self::HandleResolution(m) => {
                encode_pool_handle(&mut w, &m.pool_handle)?;
                if let Some(items) = m.items {
                    encode_items(&mut w, items)?;
                }
            }
            Self::HandleResolutionResponse(m) => {
                encode_pool_handle(&mut w, &m.pool_handle)?;
                if let Some(policy) = &m.policy {
                    policy.encode(&mut w)?;
                }
                for pe in &m.pool_elements {
                    pe.encode(&mut w)?;
                }
                if let Some(error) = &m.error {
                    error.encode(&mut w)?;
                }
            }
            Self::EndpointKeepAlive(m) => {
                w.u32(m.server_id.0);
                encode_pool_handle(&mut w, &m.pool_handle)?;
                if let Some(pe_id) = m.pe_id {
                    encode_pe_id(&mut w, pe_id)?;
                }
            }
            Self::ServerAnnounce(m) => {
                w.u32(m.server_id.0);
                for transport in &m.transports {
                    transport.encode(&mut w)?;
                }
                if let Some(info) = &m.server_information {
                    info.encode(&mut w)?;
                }
            }
            Self::Cookie(m) | Self::CookieEcho(m) => encode_cookie(&mut w, &m.cookie)?,
            Self::BusinessCard(m) => {
                encode_pool_handle(&mut w, &m.pool_handle)?;
                if let Some(policy) = &m.policy {
                    policy.encode(&mut w)?;
                }
                for pe in &m.pool_elements {
                    pe.encode(&mut w)?;
                }
            }
            Self::Error(m) => m.error.encode(&mut w)?,
        }
        w.finish()
    }

    fn flags(&self) -> u8 {
        match self {
            Self::RegistrationResponse(m) if m.reject => FLAG_REJECT,
            Self::EndpointKeepAlive(m) if m.home => FLAG_HOME,
            _ => 0,
        }
    }
}

fn decode_registration(params: &mut Params<'_, '_>) -> Result<AsapMessage, WireError> {
    let pool_handle = expect_pool_handle(params)?;
    let tlv = params.expect(PARAM_POOL_ELEMENT, "a pool element parameter")?;
    let pool_element = PoolElement::decode(&tlv, params.sink())?;
    Ok(AsapMessage::Registration(Registration {
        pool_handle,
        pool_element,
    }))
}

fn take_cookie(params: &mut Params<'_, '_>) -> Result<Cookie, WireError> {
    let tlv = params.expect(PARAM_COOKIE, "a cookie parameter")?;
    Ok(Cookie {
        cookie: decode_cookie(&tlv)?,
    })
}

fn decode_body(
    header: &MessageHeader<'_>,
    body: &mut Reader<'_>,
    sink: UnknownSink<'_>,
) -> Result<AsapMessage, WireError> {
    if !(T::REGISTRATION..=T::ERROR).contains(&header.message_type) {
        return Err(header.unrecognized(Protocol::Asap));
    }
    // Fixed fields come before the parameters.
    let server_id = match header.message_type {
        T::ENDPOINT_KEEP_ALIVE | T::SERVER_ANNOUNCE => {
            Some(RegistrarId(body.u32("server identifier")?))
        }
        _ => None,
    };
    let mut params = Params::new(body.clone(), sink);
    let message = match header.message_type {
        T::REGISTRATION => decode_registration(&mut params)?,
        T::DEREGISTRATION => AsapMessage::Deregistration(decode_pe_ref(&mut params)?),
        T::REGISTRATION_RESPONSE => {
            let r = decode_pe_ref(&mut params)?;
            AsapMessage::RegistrationResponse(RegistrationResponse {
                reject: header.flags & FLAG_REJECT != 0,
                pool_handle: r.pool_handle,
                pe_id: r.pe_id,
                error: take_operation_error(&mut params)?,
            })
        }
        T::DEREGISTRATION_RESPONSE => {
            let r = decode_pe_ref(&mut params)?;
            AsapMessage::DeregistrationResponse(DeregistrationResponse {
                pool_handle: r.pool_handle,
                pe_id: r.pe_id,
                error: take_operation_error(&mut params)?,
            })
        }
        T::HANDLE_RESOLUTION => AsapMessage::HandleResolution(HandleResolution {
            pool_handle: expect_pool_handle(&mut params)?,
            items: params
                .take_if(PARAM_HANDLE_RESOLUTION_OPTION)?
                .map(|tlv| decode_items(&tlv))
                .transpose()?,
        }),
        T::HANDLE_RESOLUTION_RESPONSE => {
            let pool_handle = expect_pool_handle(&mut params)?;
            let policy = take_policy(&mut params)?;
            let pool_elements = take_pool_elements(&mut params)?;
            AsapMessage::HandleResolutionResponse(HandleResolutionResponse {
                pool_handle,
                policy,
                pool_elements,
                error: take_operation_error(&mut params)?,
            })
        }
        T::ENDPOINT_KEEP_ALIVE => AsapMessage::EndpointKeepAlive(EndpointKeepAlive {
            home: header.flags & FLAG_HOME != 0,
            server_id: server_id.unwrap_or_default(),
            pool_handle: expect_pool_handle(&mut params)?,
            pe_id: params
                .take_if(PARAM_PE_IDENTIFIER)?
                .map(|tlv| decode_pe_id(&tlv))
                .transpose()?,
        }),
        T::ENDPOINT_KEEP_ALIVE_ACK => {
            AsapMessage::EndpointKeepAliveAck(decode_pe_ref(&mut params)?)
        }
        T::ENDPOINT_UNREACHABLE => AsapMessage::EndpointUnreachable(decode_pe_ref(&mut params)?),
        T::SERVER_ANNOUNCE => AsapMessage::ServerAnnounce(decode_announce(
            &mut params,
            server_id.unwrap_or_default(),
        )?),
        T::COOKIE => AsapMessage::Cookie(take_cookie(&mut params)?),
        T::COOKIE_ECHO => AsapMessage::CookieEcho(take_cookie(&mut params)?),
        T::BUSINESS_CARD => AsapMessage::BusinessCard(decode_business_card(&mut params)?),
        T::ERROR => {
            let tlv = params.expect(PARAM_OPERATION_ERROR, "an operation error parameter")?;
            AsapMessage::Error(ErrorReport {
                error: OperationError::decode(&tlv)?,
            })
        }
        _ => return Err(header.unrecognized(Protocol::Asap)),
    };
    params.finish("the end of the message")?;
    Ok(message)
}

/// A server announce's body (RFC 5352 §2.2): the registrar's transports, then its
/// server information (rsplib sends it).
fn decode_announce(
    params: &mut Params<'_, '_>,
    server_id: RegistrarId,
) -> Result<ServerAnnounce, WireError> {
    let mut transports = Vec::new();
    while let Some(transport) = take_transport(params)? {
        transports.push(transport);
    }
    let server_information = match params.take_if(PARAM_SERVER_INFORMATION)? {
        Some(tlv) => Some(ServerInformation::decode(&tlv, params.sink())?),
        None => None,
    };
    Ok(ServerAnnounce {
        server_id,
        transports,
        server_information,
    })
}

/// A business card's body (RFC 5352 §2.2): the pool handle (rsplib's decoder
/// expects it twice, and sends it twice), the policy and the PEs to fail over to.
fn decode_business_card(params: &mut Params<'_, '_>) -> Result<BusinessCard, WireError> {
    let pool_handle = expect_pool_handle(params)?;
    let _repeated_handle = params.take_if(PARAM_POOL_HANDLE)?;
    let policy = take_policy(params)?;
    Ok(BusinessCard {
        pool_handle,
        policy,
        pool_elements: take_pool_elements(params)?,
    })
}

pub(crate) fn expect_pool_handle(params: &mut Params<'_, '_>) -> Result<PoolHandle, WireError> {
    decode_pool_handle(&params.expect(PARAM_POOL_HANDLE, "a pool handle parameter")?)
}

fn decode_pe_ref(params: &mut Params<'_, '_>) -> Result<PoolElementRef, WireError> {
    let pool_handle = expect_pool_handle(params)?;
    let pe_id = decode_pe_id(&params.expect(PARAM_PE_IDENTIFIER, "a PE identifier parameter")?)?;
    Ok(PoolElementRef { pool_handle, pe_id })
}

fn take_operation_error(params: &mut Params<'_, '_>) -> Result<Option<OperationError>, WireError> {
    params
        .take_if(PARAM_OPERATION_ERROR)?
        .map(|tlv| OperationError::decode(&tlv))
        .transpose()
}

fn take_policy(params: &mut Params<'_, '_>) -> Result<Option<Policy>, WireError> {
    params
        .take_if(PARAM_POLICY)?
        .map(|tlv| Policy::decode(&tlv))
        .transpose()
}

/// Takes Pool Element parameters while they come.
pub(crate) fn take_pool_elements(
    params: &mut Params<'_, '_>,
) -> Result<Vec<PoolElement>, WireError> {
    let mut pool_elements = Vec::new();
    while let Some(tlv) = params.take_if(PARAM_POOL_ELEMENT)? {
        pool_elements.push(PoolElement::decode(&tlv, params.sink())?);
    }
    Ok(pool_elements)
}
