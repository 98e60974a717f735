//! The RSerPool parameters (RFC 5354) as typed values, with their
//! decoding from a [`Tlv`] and encoding into a [`Writer`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::codec::{Params, Tlv, UnknownSink, Writer};
use super::error::{EncodeError, WireError, WireErrorKind};
use super::selection::Policy;
use super::types::{
    PARAM_COOKIE, PARAM_DCCP_TRANSPORT, PARAM_HANDLE_RESOLUTION_OPTION, PARAM_IPV4_ADDRESS,
    PARAM_IPV6_ADDRESS, PARAM_PE_CHECKSUM, PARAM_PE_IDENTIFIER, PARAM_POLICY, PARAM_POOL_ELEMENT,
    PARAM_POOL_HANDLE, PARAM_SCTP_TRANSPORT, PARAM_SERVER_INFORMATION, PARAM_TCP_TRANSPORT,
    PARAM_UDP_LITE_TRANSPORT, PARAM_UDP_TRANSPORT,
};

/// The most addresses one transport parameter may list (rsplib's
/// `MAX_PE_TRANSPORTADDRESSES`).
pub const MAX_TRANSPORT_ADDRESSES: usize = 64;

/// The longest pool handle, in bytes (rsplib's `MAX_POOLHANDLESIZE`, RFC 5354, Pool Handle).
pub const MAX_POOL_HANDLE_LENGTH: usize = 32;

/// A pool handle: an opaque byte string of 1 to 32 bytes, compared bytewise.
///
/// Stored inline: handles are short and bounded, and copying 33 bytes is cheaper than
/// an allocation on every decoded message.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolHandle {
    length: u8,
    bytes: [u8; MAX_POOL_HANDLE_LENGTH],
}

/// A pool handle was empty or longer than [`MAX_POOL_HANDLE_LENGTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a pool handle must be 1 to 32 bytes long, not {0}")]
pub struct PoolHandleError(pub usize);

impl PoolHandle {
    /// Sorts before every valid handle (a zero length cannot be constructed).
    pub(crate) const MIN: Self = Self {
        length: 0,
        bytes: [0; MAX_POOL_HANDLE_LENGTH],
    };

    /// A pool handle from its bytes.
    pub fn new(handle: &[u8]) -> Result<Self, PoolHandleError> {
        let length = u8::try_from(handle.len())
            .ok()
            .filter(|&l| (1..=MAX_POOL_HANDLE_LENGTH as u8).contains(&l))
            .ok_or(PoolHandleError(handle.len()))?;
        let mut bytes = [0; MAX_POOL_HANDLE_LENGTH];
        bytes
            .get_mut(..handle.len())
            .ok_or(PoolHandleError(handle.len()))?
            .copy_from_slice(handle);
        Ok(Self { length, bytes })
    }

    /// The handle's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.length)).unwrap_or(&[])
    }
}

impl std::str::FromStr for PoolHandle {
    type Err = PoolHandleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s.as_bytes())
    }
}

impl fmt::Display for PoolHandle {
    /// Printable ASCII as is; anything else as `0x` and hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.as_bytes();
        if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            f.write_str(&String::from_utf8_lossy(bytes))
        } else {
            f.write_str("0x")?;
            bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
}

impl fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolHandle({self})")
    }
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u32);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "0x{:08x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        #[cfg(feature = "serde")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

id_newtype!(
    /// A pool element identifier: random, non-zero, unique within its pool.
    PoolElementId
);
id_newtype!(
    /// A registrar ("ENRP server") identifier: random, non-zero; 0 means unknown.
    RegistrarId
);

impl RegistrarId {
    /// "Not known yet" (RFC 5354, Pool Element, RFC 5353 §2).
    pub const UNKNOWN: Self = Self(0);
}

#[cfg(feature = "serde")]
impl serde::Serialize for PoolHandle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Serializes bytes as a hex string (cookies, unknown parameters, cause details).
/// Whether a PE accepts ASAP control messages on its data connection (RFC 5354, transport parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum TransportUse {
    /// 0x0000: application data only.
    #[default]
    DataOnly,
    /// 0x0001: ASAP session-layer messages share the connection (RFC 5352 §3.8-3.9).
    DataPlusControl,
}

/// The transport protocol of a transport parameter, with its protocol-specific field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum TransportProtocol {
    /// SCTP (0x0004): may list several addresses (multi-homing).
    Sctp(TransportUse),
    /// TCP (0x0005).
    Tcp(TransportUse),
    /// UDP (0x0006).
    Udp,
    /// UDP-Lite (0x0007). rsplib cannot decode it (docs/rsplib.md item 4).
    UdpLite,
    /// DCCP (0x0003) with its 32-bit service code. rsplib cannot decode it.
    Dccp {
        /// The DCCP service code.
        service_code: u32,
    },
}

impl TransportProtocol {
    /// The parameter type that carries this protocol.
    pub const fn param_type(self) -> u16 {
        match self {
            Self::Sctp(_) => PARAM_SCTP_TRANSPORT,
            Self::Tcp(_) => PARAM_TCP_TRANSPORT,
            Self::Udp => PARAM_UDP_TRANSPORT,
            Self::UdpLite => PARAM_UDP_LITE_TRANSPORT,
            Self::Dccp { .. } => PARAM_DCCP_TRANSPORT,
        }
    }

    /// The transport use; protocols without the field are data only.
    pub const fn transport_use(self) -> TransportUse {
        match self {
            Self::Sctp(u) | Self::Tcp(u) => u,
            Self::Udp | Self::UdpLite | Self::Dccp { .. } => TransportUse::DataOnly,
        }
    }

    /// A short name for logs and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sctp(_) => "sctp",
            Self::Tcp(_) => "tcp",
            Self::Udp => "udp",
            Self::UdpLite => "udplite",
            Self::Dccp { .. } => "dccp",
        }
    }
}

/// A transport parameter (0x0003-0x0007): protocol, port and addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Transport {
    /// Protocol and its specific field.
    pub protocol: TransportProtocol,
    /// The port.
    pub port: u16,
    /// One or more addresses (several only for SCTP). IPv4-mapped IPv6 addresses are
    /// encoded as IPv4, as rsplib does.
    pub addresses: Vec<IpAddr>,
}

impl Transport {
    pub(crate) fn decode(tlv: &Tlv<'_>, sink: &mut UnknownSink<'_>) -> Result<Self, WireError> {
        let mut value = tlv.value.clone();
        let port = value.u16("transport port")?;
        let use_or_reserved = value.u16("transport use")?;
        let transport_use = || match use_or_reserved {
            0 => Ok(TransportUse::DataOnly),
            1 => Ok(TransportUse::DataPlusControl),
            _ => Err(tlv.invalid(
                "transport use",
                "must be 0 (data only) or 1 (data plus control)",
            )),
        };
        let protocol = match tlv.param_type {
            PARAM_SCTP_TRANSPORT => TransportProtocol::Sctp(transport_use()?),
            PARAM_TCP_TRANSPORT => TransportProtocol::Tcp(transport_use()?),
            PARAM_UDP_TRANSPORT => TransportProtocol::Udp,
            PARAM_UDP_LITE_TRANSPORT => TransportProtocol::UdpLite,
            PARAM_DCCP_TRANSPORT => TransportProtocol::Dccp {
                service_code: value.u32("DCCP service code")?,
            },
            _ => return Err(tlv.invalid("transport", "not a transport parameter")),
        };
        let mut addresses = Vec::with_capacity(1);
        let mut params = Params::new(value, sink.nested());
        while let Some(address) = params.take_any()? {
            if addresses.len() == MAX_TRANSPORT_ADDRESSES {
                return Err(WireError::new(
                    address.offset,
                    WireErrorKind::TooMany {
                        what: "addresses in a transport parameter",
                        limit: MAX_TRANSPORT_ADDRESSES,
                    },
                ));
            }
            addresses.push(decode_address(&address)?);
        }
        if addresses.is_empty() {
            return Err(tlv.invalid("transport", "no address"));
        }
        Ok(Self {
            protocol,
            port,
            addresses,
        })
    }

    /// The parameter TLV alone, for the cause information of 0x0007 Inconsistent
    /// Transport Type.
    pub fn to_parameter_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::new(&[]);
        self.encode(&mut w)?;
        Ok(w.buf)
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        if self.addresses.is_empty() {
            return Err(EncodeError::Invalid {
                what: "transport",
                reason: "no address",
            });
        }
        w.param(self.protocol.param_type(), |w| {
            w.u16(self.port);
            w.u16(match self.protocol.transport_use() {
                TransportUse::DataOnly => 0,
                TransportUse::DataPlusControl => 1,
            });
            if let TransportProtocol::Dccp { service_code } = self.protocol {
                w.u32(service_code);
            }
            for address in &self.addresses {
                encode_address(w, *address)?;
            }
            Ok(())
        })
    }
}

fn decode_address(tlv: &Tlv<'_>) -> Result<IpAddr, WireError> {
    match tlv.param_type {
        PARAM_IPV4_ADDRESS => {
            let mut value = tlv.fixed(4, "IPv4 address")?;
            Ok(IpAddr::V4(Ipv4Addr::from(value.u32("IPv4 address")?)))
        }
        PARAM_IPV6_ADDRESS => {
            let mut value = tlv.fixed(16, "IPv6 address")?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(value.take(16, "IPv6 address")?);
            Ok(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        other => Err(WireError::new(
            tlv.offset,
            WireErrorKind::UnexpectedParameter {
                param_type: other,
                expected: "an IPv4 or IPv6 address",
                parameter: tlv.copy(),
            },
        )),
    }
}

fn encode_address(w: &mut Writer<'_>, address: IpAddr) -> Result<(), EncodeError> {
    match address {
        IpAddr::V4(v4) => w.param(PARAM_IPV4_ADDRESS, |w| {
            w.bytes(&v4.octets());
            Ok(())
        }),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => encode_address(w, IpAddr::V4(v4)),
            None => w.param(PARAM_IPV6_ADDRESS, |w| {
                w.bytes(&v6.octets());
                Ok(())
            }),
        },
    }
}

/// A Pool Element parameter (0x000A): one PE as registered or as distributed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PoolElement {
    /// The PE identifier (non-zero; the registrar checks).
    pub id: PoolElementId,
    /// The PE's home registrar (0 in a registration).
    pub home_registrar: RegistrarId,
    /// Registration life in milliseconds.
    pub registration_life_ms: u32,
    /// Where pool users reach the PE.
    pub user_transport: Transport,
    /// The PE's policy and its values.
    pub policy: Policy,
    /// Where registrars reach the PE's ASAP endpoint: absent in registrations,
    /// required in ENRP (RFC 5354, Pool Element). SCTP, or TCP with the TCP mapping.
    pub asap_transport: Option<Transport>,
}

impl PoolElement {
    pub(crate) fn decode(tlv: &Tlv<'_>, sink: &mut UnknownSink<'_>) -> Result<Self, WireError> {
        let mut value = tlv.value.clone();
        let id = PoolElementId(value.u32("PE identifier")?);
        let home_registrar = RegistrarId(value.u32("home registrar identifier")?);
        let registration_life_ms = value.u32("registration life")?;
        let mut params = Params::new(value, sink.nested());
        let user_transport = take_transport(&mut params)?
            .ok_or_else(|| params.unexpected("a user transport parameter"))?;
        let policy = Policy::decode(&params.expect(PARAM_POLICY, "a policy parameter")?)?;
        let asap_transport = take_transport(&mut params)?;
        params.finish("the end of the pool element")?;
        Ok(Self {
            id,
            home_registrar,
            registration_life_ms,
            user_transport,
            policy,
            asap_transport,
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.param(PARAM_POOL_ELEMENT, |w| {
            w.u32(self.id.0);
            w.u32(self.home_registrar.0);
            w.u32(self.registration_life_ms);
            self.user_transport.encode(w)?;
            self.policy.encode(w)?;
            if let Some(asap) = &self.asap_transport {
                asap.encode(w)?;
            }
            Ok(())
        })
    }
}

/// Takes the next parameter if it is a transport parameter.
pub(crate) fn take_transport(params: &mut Params<'_, '_>) -> Result<Option<Transport>, WireError> {
    match params.peek_type()? {
        Some(
            PARAM_SCTP_TRANSPORT
            | PARAM_TCP_TRANSPORT
            | PARAM_UDP_TRANSPORT
            | PARAM_UDP_LITE_TRANSPORT
            | PARAM_DCCP_TRANSPORT,
        ) => {
            let tlv = params.take_any()?;
            match tlv {
                Some(tlv) => Transport::decode(&tlv, params.sink()).map(Some),
                None => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// A Server Information parameter (0x000B): a registrar's ID and ENRP endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ServerInformation {
    /// The registrar's identifier.
    pub server_id: RegistrarId,
    /// Its ENRP endpoint (SCTP, or TCP with the TCP mapping).
    pub transport: Transport,
}

impl ServerInformation {
    pub(crate) fn decode(tlv: &Tlv<'_>, sink: &mut UnknownSink<'_>) -> Result<Self, WireError> {
        let mut value = tlv.value.clone();
        let server_id = RegistrarId(value.u32("server identifier")?);
        let mut params = Params::new(value, sink.nested());
        let transport = take_transport(&mut params)?
            .ok_or_else(|| params.unexpected("a transport parameter"))?;
        params.finish("the end of the server information")?;
        Ok(Self {
            server_id,
            transport,
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.param(PARAM_SERVER_INFORMATION, |w| {
            w.u32(self.server_id.0);
            self.transport.encode(w)
        })
    }
}

// Small single-value parameters shared by several messages.

pub(crate) fn decode_pool_handle(tlv: &Tlv<'_>) -> Result<PoolHandle, WireError> {
    let mut value = tlv.value.clone();
    let bytes = value.take(value.remaining(), "pool handle")?;
    PoolHandle::new(bytes).map_err(|_| tlv.invalid("pool handle", "must be 1 to 32 bytes"))
}

pub(crate) fn encode_pool_handle(
    w: &mut Writer<'_>,
    handle: &PoolHandle,
) -> Result<(), EncodeError> {
    w.param(PARAM_POOL_HANDLE, |w| {
        w.bytes(handle.as_bytes());
        Ok(())
    })
}

pub(crate) fn decode_pe_id(tlv: &Tlv<'_>) -> Result<PoolElementId, WireError> {
    Ok(PoolElementId(
        tlv.fixed(4, "PE identifier")?.u32("PE identifier")?,
    ))
}

pub(crate) fn encode_pe_id(w: &mut Writer<'_>, id: PoolElementId) -> Result<(), EncodeError> {
    w.param(PARAM_PE_IDENTIFIER, |w| {
        w.u32(id.0);
        Ok(())
    })
}

pub(crate) fn decode_cookie(tlv: &Tlv<'_>) -> Result<Vec<u8>, WireError> {
    let mut value = tlv.value.clone();
    if value.is_empty() {
        return Err(tlv.invalid("cookie", "empty"));
    }
    Ok(value.take(value.remaining(), "cookie")?.to_vec())
}

pub(crate) fn encode_cookie(w: &mut Writer<'_>, cookie: &[u8]) -> Result<(), EncodeError> {
    if cookie.is_empty() {
        return Err(EncodeError::Invalid {
            what: "cookie",
            reason: "empty",
        });
    }
    w.param(PARAM_COOKIE, |w| {
        w.bytes(cookie);
        Ok(())
    })
}

pub(crate) fn decode_checksum(tlv: &Tlv<'_>) -> Result<u16, WireError> {
    tlv.fixed(2, "PE checksum")?.u16("PE checksum")
}

pub(crate) fn encode_checksum(w: &mut Writer<'_>, checksum: u16) -> Result<(), EncodeError> {
    w.param(PARAM_PE_CHECKSUM, |w| {
        w.u16(checksum);
        Ok(())
    })
}

pub(crate) fn decode_items(tlv: &Tlv<'_>) -> Result<u32, WireError> {
    tlv.fixed(4, "handle resolution option")?
        .u32("handle resolution option")
}

pub(crate) fn encode_items(w: &mut Writer<'_>, items: u32) -> Result<(), EncodeError> {
    w.param(PARAM_HANDLE_RESOLUTION_OPTION, |w| {
        w.u32(items);
        Ok(())
    })
}
