//! The member selection policy parameter (RFC 5354 §3.6, RFC 5356 §4): the policy
//! types by number, and each policy with its values, as rsplib encodes them.

use std::fmt;

use super::codec::{Tlv, Writer};
use super::error::{EncodeError, WireError};
use super::types::PARAM_POLICY;

/// A policy type number (RFC 5354, Pool Member Selection Policy). Open: unknown numbers are kept.
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
/// (docs/policies.md §1). Extra values after the ones a known type needs are accepted and
/// ignored, as rsplib does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "policy"))]
#[allow(
    missing_docs,
    reason = "the fields are the policy values named in docs/policies.md"
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

    /// The load of a load-based policy (RFC 5356's least-used family and rsplib's
    /// variants, the policies whose PEs report their load, rsplib's
    /// `PPT_IS_ADAPTIVE`): a fraction of 0xFFFFFFFF; `None` for the others.
    pub fn load(&self) -> Option<u32> {
        self.clone().load_mut().map(|load| *load)
    }

    /// The same policy carrying `new_load`; a policy without a load is unchanged.
    pub fn with_load(&self, new_load: u32) -> Self {
        let mut policy = self.clone();
        if let Some(load) = policy.load_mut() {
            *load = new_load;
        }
        policy
    }

    /// The load value, for the policies that have one (the first value of each).
    fn load_mut(&mut self) -> Option<&mut u32> {
        match self {
            Self::LeastUsed { load }
            | Self::LeastUsedDegradation { load, .. }
            | Self::PriorityLeastUsed { load, .. }
            | Self::RandomizedLeastUsed { load }
            | Self::RandomizedPriorityLeastUsed { load, .. }
            | Self::RandomizedLeastUsedDegradation { load, .. }
            | Self::PriorityLeastUsedDegradation { load, .. }
            | Self::RandomizedPriorityLeastUsedDegradation { load, .. }
            | Self::LeastUsedDpf { load, .. }
            | Self::LeastUsedDegradationDpf { load, .. } => Some(load),
            _ => None,
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
