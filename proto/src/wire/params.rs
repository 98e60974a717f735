//! The RSerPool parameters (RFC 5354; wire-format.md §4-5) as typed values, with their
//! decoding from a [`Tlv`] and encoding into a [`Writer`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::codec::{Params, Reader, Tlv, UnknownSink, Writer};
use super::error::{EncodeError, MAX_CAUSE_COPY, WireError, WireErrorKind};

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

/// The most addresses one transport parameter may list (rsplib's
/// `MAX_PE_TRANSPORTADDRESSES`).
pub const MAX_TRANSPORT_ADDRESSES: usize = 64;

/// The longest pool handle, in bytes (rsplib's `MAX_POOLHANDLESIZE`, wire-format.md §4.5).
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
    /// "Not known yet" (wire-format.md §4.6, enrp.md §3).
    pub const UNKNOWN: Self = Self(0);
}

#[cfg(feature = "serde")]
impl serde::Serialize for PoolHandle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Serializes bytes as a hex string (cookies, unknown parameters, cause details).
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

/// Whether a PE accepts ASAP control messages on its data connection (wire-format.md §4.3).
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
    /// 0x0001: ASAP session-layer messages share the connection (asap.md §7).
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
    /// UDP-Lite (0x0007). rsplib cannot decode it (discrepancies.md item 25).
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

/// A policy type number (wire-format.md §4.4). Open: unknown numbers are kept.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyType(pub u32);

impl PolicyType {
    /// Round Robin.
    pub const ROUND_ROBIN: Self = Self(0x0000_0001);
    /// Weighted Round Robin.
    pub const WEIGHTED_ROUND_ROBIN: Self = Self(0x0000_0002);
    /// Random.
    pub const RANDOM: Self = Self(0x0000_0003);
    /// Weighted Random.
    pub const WEIGHTED_RANDOM: Self = Self(0x0000_0004);
    /// Priority.
    pub const PRIORITY: Self = Self(0x0000_0005);
    /// Least Used.
    pub const LEAST_USED: Self = Self(0x4000_0001);
    /// Least Used with Degradation.
    pub const LEAST_USED_DEGRADATION: Self = Self(0x4000_0002);
    /// Priority Least Used.
    pub const PRIORITY_LEAST_USED: Self = Self(0x4000_0003);
    /// Randomized Least Used.
    pub const RANDOMIZED_LEAST_USED: Self = Self(0x4000_0004);
    /// rsplib extension: Randomized Priority Least Used.
    pub const RANDOMIZED_PRIORITY_LEAST_USED: Self = Self(0xb000_1001);
    /// rsplib extension: Randomized Least Used with Degradation.
    pub const RANDOMIZED_LEAST_USED_DEGRADATION: Self = Self(0xb000_1002);
    /// rsplib extension: Priority Least Used with Degradation.
    pub const PRIORITY_LEAST_USED_DEGRADATION: Self = Self(0xb000_1003);
    /// rsplib extension: Randomized Priority Least Used with Degradation.
    pub const RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION: Self = Self(0xb000_1004);
    /// rsplib extension: Weighted Random with Distance Penalty Factor.
    pub const WEIGHTED_RANDOM_DPF: Self = Self(0xb000_2001);
    /// rsplib extension: Least Used with Distance Penalty Factor.
    pub const LEAST_USED_DPF: Self = Self(0xb000_2002);
    /// rsplib extension: Least Used with Degradation and Distance Penalty Factor.
    pub const LEAST_USED_DEGRADATION_DPF: Self = Self(0xb000_2003);
}

impl fmt::Debug for PolicyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PolicyType(0x{:08x})", self.0)
    }
}

/// A pool member selection policy parameter (0x0008) with its values.
///
/// Load, degradation and DPF values are fractions of `u32::MAX` (0 = 0 %, `u32::MAX` =
/// 100 %); weight and priority are plain integers; distance is in milliseconds
/// (policies.md §2). Extra values after the ones a known type needs are accepted and
/// ignored, as rsplib does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "policy"))]
#[allow(
    missing_docs,
    reason = "the fields are the policy values named in policies.md"
)]
pub enum Policy {
    RoundRobin,
    WeightedRoundRobin {
        weight: u32,
    },
    Random,
    WeightedRandom {
        weight: u32,
    },
    Priority {
        priority: u32,
    },
    LeastUsed {
        load: u32,
    },
    LeastUsedDegradation {
        load: u32,
        degradation: u32,
    },
    PriorityLeastUsed {
        load: u32,
        degradation: u32,
    },
    RandomizedLeastUsed {
        load: u32,
    },
    RandomizedPriorityLeastUsed {
        load: u32,
        degradation: u32,
    },
    RandomizedLeastUsedDegradation {
        load: u32,
        degradation: u32,
    },
    PriorityLeastUsedDegradation {
        load: u32,
        degradation: u32,
    },
    RandomizedPriorityLeastUsedDegradation {
        load: u32,
        degradation: u32,
    },
    WeightedRandomDpf {
        weight: u32,
        weight_dpf: u32,
        distance: u32,
    },
    LeastUsedDpf {
        load: u32,
        load_dpf: u32,
        distance: u32,
    },
    LeastUsedDegradationDpf {
        load: u32,
        degradation: u32,
        load_dpf: u32,
        distance: u32,
    },
    /// A policy type this implementation does not know; a registrar refuses it.
    Other {
        #[cfg_attr(feature = "serde", serde(serialize_with = "serialize_policy_type"))]
        policy_type: PolicyType,
        values: Vec<u32>,
    },
}

#[cfg(feature = "serde")]
fn serialize_policy_type<S: serde::Serializer>(t: &PolicyType, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("0x{:08x}", t.0))
}

impl Policy {
    /// The policy type number.
    pub fn policy_type(&self) -> PolicyType {
        match self {
            Self::RoundRobin => PolicyType::ROUND_ROBIN,
            Self::WeightedRoundRobin { .. } => PolicyType::WEIGHTED_ROUND_ROBIN,
            Self::Random => PolicyType::RANDOM,
            Self::WeightedRandom { .. } => PolicyType::WEIGHTED_RANDOM,
            Self::Priority { .. } => PolicyType::PRIORITY,
            Self::LeastUsed { .. } => PolicyType::LEAST_USED,
            Self::LeastUsedDegradation { .. } => PolicyType::LEAST_USED_DEGRADATION,
            Self::PriorityLeastUsed { .. } => PolicyType::PRIORITY_LEAST_USED,
            Self::RandomizedLeastUsed { .. } => PolicyType::RANDOMIZED_LEAST_USED,
            Self::RandomizedPriorityLeastUsed { .. } => PolicyType::RANDOMIZED_PRIORITY_LEAST_USED,
            Self::RandomizedLeastUsedDegradation { .. } => {
                PolicyType::RANDOMIZED_LEAST_USED_DEGRADATION
            }
            Self::PriorityLeastUsedDegradation { .. } => {
                PolicyType::PRIORITY_LEAST_USED_DEGRADATION
            }
            Self::RandomizedPriorityLeastUsedDegradation { .. } => {
                PolicyType::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION
            }
            Self::WeightedRandomDpf { .. } => PolicyType::WEIGHTED_RANDOM_DPF,
            Self::LeastUsedDpf { .. } => PolicyType::LEAST_USED_DPF,
            Self::LeastUsedDegradationDpf { .. } => PolicyType::LEAST_USED_DEGRADATION_DPF,
            Self::Other { policy_type, .. } => *policy_type,
        }
    }

    /// The values after the type, in wire order.
    pub fn values(&self) -> Vec<u32> {
        match self {
            Self::RoundRobin | Self::Random => vec![],
            Self::WeightedRoundRobin { weight } | Self::WeightedRandom { weight } => vec![*weight],
            Self::Priority { priority } => vec![*priority],
            Self::LeastUsed { load } | Self::RandomizedLeastUsed { load } => vec![*load],
            Self::LeastUsedDegradation { load, degradation }
            | Self::PriorityLeastUsed { load, degradation }
            | Self::RandomizedPriorityLeastUsed { load, degradation }
            | Self::RandomizedLeastUsedDegradation { load, degradation }
            | Self::PriorityLeastUsedDegradation { load, degradation }
            | Self::RandomizedPriorityLeastUsedDegradation { load, degradation } => {
                vec![*load, *degradation]
            }
            Self::WeightedRandomDpf {
                weight,
                weight_dpf,
                distance,
            } => vec![*weight, *weight_dpf, *distance],
            Self::LeastUsedDpf {
                load,
                load_dpf,
                distance,
            } => vec![*load, *load_dpf, *distance],
            Self::LeastUsedDegradationDpf {
                load,
                degradation,
                load_dpf,
                distance,
            } => vec![*load, *degradation, *load_dpf, *distance],
            Self::Other { values, .. } => values.clone(),
        }
    }

    /// Builds a policy from its type and values; `None` if a known type has too few.
    pub fn from_values(policy_type: PolicyType, values: &[u32]) -> Option<Self> {
        let value = |i: usize| values.get(i).copied();
        Some(match policy_type {
            PolicyType::ROUND_ROBIN => Self::RoundRobin,
            PolicyType::WEIGHTED_ROUND_ROBIN => Self::WeightedRoundRobin { weight: value(0)? },
            PolicyType::RANDOM => Self::Random,
            PolicyType::WEIGHTED_RANDOM => Self::WeightedRandom { weight: value(0)? },
            PolicyType::PRIORITY => Self::Priority {
                priority: value(0)?,
            },
            PolicyType::LEAST_USED => Self::LeastUsed { load: value(0)? },
            PolicyType::LEAST_USED_DEGRADATION => Self::LeastUsedDegradation {
                load: value(0)?,
                degradation: value(1)?,
            },
            PolicyType::PRIORITY_LEAST_USED => Self::PriorityLeastUsed {
                load: value(0)?,
                degradation: value(1)?,
            },
            PolicyType::RANDOMIZED_LEAST_USED => Self::RandomizedLeastUsed { load: value(0)? },
            PolicyType::RANDOMIZED_PRIORITY_LEAST_USED => Self::RandomizedPriorityLeastUsed {
                load: value(0)?,
                degradation: value(1)?,
            },
            PolicyType::RANDOMIZED_LEAST_USED_DEGRADATION => Self::RandomizedLeastUsedDegradation {
                load: value(0)?,
                degradation: value(1)?,
            },
            PolicyType::PRIORITY_LEAST_USED_DEGRADATION => Self::PriorityLeastUsedDegradation {
                load: value(0)?,
                degradation: value(1)?,
            },
            PolicyType::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION => {
                Self::RandomizedPriorityLeastUsedDegradation {
                    load: value(0)?,
                    degradation: value(1)?,
                }
            }
            PolicyType::WEIGHTED_RANDOM_DPF => Self::WeightedRandomDpf {
                weight: value(0)?,
                weight_dpf: value(1)?,
                distance: value(2)?,
            },
            PolicyType::LEAST_USED_DPF => Self::LeastUsedDpf {
                load: value(0)?,
                load_dpf: value(1)?,
                distance: value(2)?,
            },
            PolicyType::LEAST_USED_DEGRADATION_DPF => Self::LeastUsedDegradationDpf {
                load: value(0)?,
                degradation: value(1)?,
                load_dpf: value(2)?,
                distance: value(3)?,
            },
            other => Self::Other {
                policy_type: other,
                values: values.to_vec(),
            },
        })
    }

    pub(crate) fn decode(tlv: &Tlv<'_>) -> Result<Self, WireError> {
        let mut value = tlv.value.clone();
        if !value.remaining().is_multiple_of(4) {
            return Err(tlv.invalid("policy", "length is not 8 + 4 * n"));
        }
        let policy_type = PolicyType(value.u32("policy type")?);
        // Known policies have at most four values; only unknown types need the rest.
        let count = value.remaining() / 4;
        let mut first = [0u32; 4];
        for slot in first.iter_mut().take(count) {
            *slot = value.u32("policy value")?;
        }
        let policy = if count > first.len() {
            let mut values = first.to_vec();
            while !value.is_empty() {
                values.push(value.u32("policy value")?);
            }
            Self::from_values(policy_type, &values)
        } else {
            Self::from_values(policy_type, first.get(..count).unwrap_or(&[]))
        };
        policy.ok_or_else(|| tlv.invalid("policy", "too few values for its type"))
    }

    /// The parameter TLV alone, for the cause information of 0x0005 Inconsistent
    /// Pooling Policy (Wireshark decodes the offending policy there).
    pub fn to_parameter_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(&[]);
        // A policy parameter holds at most a few dozen values: it always fits.
        let _fits = self.encode(&mut w);
        w.buf
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.param(PARAM_POLICY, |w| {
            w.u32(self.policy_type().0);
            for value in self.values() {
                w.u32(value);
            }
            Ok(())
        })
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
    /// required in ENRP (wire-format.md §4.6). SCTP, or TCP with the TCP mapping.
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

/// An error cause code (wire-format.md §5). Open: any code is accepted.
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

    /// The RFC name, or rsplib's name for its private codes (discrepancies.md item 5);
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
