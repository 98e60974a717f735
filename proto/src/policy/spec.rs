//! Policies written as text, in rsplib's `-policy=` style: a name, then values
//! separated by colons, e.g. `RoundRobin`, `WeightedRoundRobin:3`,
//! `LeastUsedDegradation:0.1`, `Priority:5`.
//!
//! Weights and priorities are integers; degradations and distance penalty factors are
//! fractions from 0 to 1 (scaled to the 32-bit wire range). Load-based policies start
//! with load 0: the PE reports its load by re-registering. Names are case-insensitive and
//! the short forms (RR, WRR, RAND, WRAND, PRIO, LU, LUD, PLU, RLU, ...) are accepted.

use std::fmt;

use crate::wire::{Policy, PolicyType};

/// A policy text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid policy {spec:?}: {reason} (e.g. RoundRobin, WeightedRoundRobin:3, LeastUsedDegradation:0.1)"
)]
pub struct PolicySpecError {
    /// The text.
    pub spec: String,
    /// What is wrong.
    pub reason: String,
}

/// What a policy's values mean, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    Integer,
    Fraction,
}

/// Each policy: its names (long first) and the values its text form takes.
const TABLE: &[(PolicyType, &[&str], &[Value])] = &[
    (PolicyType::ROUND_ROBIN, &["RoundRobin", "RR"], &[]),
    (
        PolicyType::WEIGHTED_ROUND_ROBIN,
        &["WeightedRoundRobin", "WRR"],
        &[Value::Integer],
    ),
    (PolicyType::RANDOM, &["Random", "RAND"], &[]),
    (
        PolicyType::WEIGHTED_RANDOM,
        &["WeightedRandom", "WRAND"],
        &[Value::Integer],
    ),
    (
        PolicyType::PRIORITY,
        &["Priority", "PRIO"],
        &[Value::Integer],
    ),
    (PolicyType::LEAST_USED, &["LeastUsed", "LU"], &[]),
    (
        PolicyType::LEAST_USED_DEGRADATION,
        &["LeastUsedDegradation", "LUD"],
        &[Value::Fraction],
    ),
    (
        PolicyType::PRIORITY_LEAST_USED,
        &["PriorityLeastUsed", "PLU"],
        &[Value::Fraction],
    ),
    (
        PolicyType::RANDOMIZED_LEAST_USED,
        &["RandomizedLeastUsed", "RLU"],
        &[],
    ),
    (
        PolicyType::RANDOMIZED_PRIORITY_LEAST_USED,
        &["RandomizedPriorityLeastUsed", "RPLU"],
        &[Value::Fraction],
    ),
    (
        PolicyType::RANDOMIZED_LEAST_USED_DEGRADATION,
        &["RandomizedLeastUsedDegradation", "RLUD"],
        &[Value::Fraction],
    ),
    (
        PolicyType::PRIORITY_LEAST_USED_DEGRADATION,
        &["PriorityLeastUsedDegradation", "PLUD"],
        &[Value::Fraction],
    ),
    (
        PolicyType::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION,
        &["RandomizedPriorityLeastUsedDegradation", "RPLUD"],
        &[Value::Fraction],
    ),
    (
        PolicyType::WEIGHTED_RANDOM_DPF,
        &["WeightedRandomDPF", "WRANDDPF"],
        &[Value::Integer, Value::Fraction],
    ),
    (
        PolicyType::LEAST_USED_DPF,
        &["LeastUsedDPF", "LUDPF"],
        &[Value::Fraction],
    ),
    (
        PolicyType::LEAST_USED_DEGRADATION_DPF,
        &["LeastUsedDegradationDPF", "LUDDPF"],
        &[Value::Fraction, Value::Fraction],
    ),
];

/// A fraction (0.0 to 1.0, clamped) as the policy parameter carries loads and
/// degradations: a share of 0xFFFFFFFF.
pub fn fraction_to_wire(fraction: f64) -> u32 {
    (fraction.clamp(0.0, 1.0) * f64::from(u32::MAX)).round() as u32
}

fn wire_to_fraction(value: u32) -> f64 {
    f64::from(value) / f64::from(u32::MAX)
}

/// Parses a policy text.
pub fn parse(spec: &str) -> Result<Policy, PolicySpecError> {
    let error = |reason: String| PolicySpecError {
        spec: spec.to_owned(),
        reason,
    };
    let mut parts = spec.trim().split(':');
    let name = parts.next().unwrap_or_default();
    let (policy_type, _, kinds) = TABLE
        .iter()
        .find(|(_, names, _)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        .ok_or_else(|| error(format!("unknown policy name {name:?}")))?;
    let given: Vec<&str> = parts.collect();
    if given.len() != kinds.len() {
        return Err(error(format!(
            "{name} takes {} value(s), {} given",
            kinds.len(),
            given.len()
        )));
    }
    let mut values = Vec::with_capacity(kinds.len());
    for (text, kind) in given.iter().zip(kinds.iter()) {
        let value = match kind {
            Value::Integer => text
                .parse::<u32>()
                .map_err(|_| error(format!("{text:?} is not a whole number")))?,
            Value::Fraction => {
                let fraction = text
                    .parse::<f64>()
                    .ok()
                    .filter(|f| (0.0..=1.0).contains(f))
                    .ok_or_else(|| error(format!("{text:?} is not a fraction from 0 to 1")))?;
                fraction_to_wire(fraction)
            }
        };
        values.push(value);
    }
    // The wire values: load first (0) for load-based policies, then the given values;
    // DPF policies end with the distance (0, set by registrars).
    let wire: Vec<u32> = match *policy_type {
        PolicyType::ROUND_ROBIN
        | PolicyType::RANDOM
        | PolicyType::WEIGHTED_ROUND_ROBIN
        | PolicyType::WEIGHTED_RANDOM
        | PolicyType::PRIORITY => values,
        PolicyType::WEIGHTED_RANDOM_DPF => [values, vec![0]].concat(),
        PolicyType::LEAST_USED_DPF | PolicyType::LEAST_USED_DEGRADATION_DPF => {
            [vec![0], values, vec![0]].concat()
        }
        _ => [vec![0], values].concat(),
    };
    Policy::from_values(*policy_type, &wire).ok_or_else(|| error("internal: value count".into()))
}

/// Formats a policy in the same text form (load and distance, which the text does not
/// carry, are left out).
pub fn format(policy: &Policy) -> String {
    Spec(policy).to_string()
}

struct Spec<'a>(&'a Policy);

impl fmt::Display for Spec<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = self.0;
        let policy_type = policy.policy_type();
        let Some((_, names, kinds)) = TABLE.iter().find(|(t, _, _)| *t == policy_type) else {
            return write!(f, "0x{:08x}", policy_type.0);
        };
        f.write_str(names.first().copied().unwrap_or("?"))?;
        let values = policy.values();
        let given: &[u32] = match policy_type {
            PolicyType::ROUND_ROBIN
            | PolicyType::RANDOM
            | PolicyType::WEIGHTED_ROUND_ROBIN
            | PolicyType::WEIGHTED_RANDOM
            | PolicyType::PRIORITY
            | PolicyType::WEIGHTED_RANDOM_DPF => &values,
            _ => values.get(1..).unwrap_or(&[]),
        };
        for (value, kind) in given.iter().zip(kinds.iter()) {
            match kind {
                Value::Integer => write!(f, ":{value}")?,
                Value::Fraction => write!(f, ":{}", wire_to_fraction(*value))?,
            }
        }
        Ok(())
    }
}

/// The load of a load-based policy, as a fraction (for display).
pub fn load_fraction(policy: &Policy) -> Option<f64> {
    policy.load().map(wire_to_fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rsplib_style_specs() {
        assert_eq!(parse("RoundRobin"), Ok(Policy::RoundRobin));
        assert_eq!(parse("rr"), Ok(Policy::RoundRobin));
        assert_eq!(
            parse("WeightedRoundRobin:3"),
            Ok(Policy::WeightedRoundRobin { weight: 3 })
        );
        assert_eq!(parse("Priority:5"), Ok(Policy::Priority { priority: 5 }));
        assert_eq!(
            parse("LeastUsedDegradation:0.5"),
            Ok(Policy::LeastUsedDegradation {
                load: 0,
                degradation: 0x8000_0000
            })
        );
        assert_eq!(
            parse("WeightedRandomDPF:10:1"),
            Ok(Policy::WeightedRandomDpf {
                weight: 10,
                weight_dpf: u32::MAX,
                distance: 0
            })
        );
        assert!(parse("WeightedRoundRobin").is_err());
        assert!(parse("WeightedRoundRobin:x").is_err());
        assert!(parse("LeastUsedDegradation:1.5").is_err());
        assert!(parse("Fastest").is_err());
    }

    #[test]
    fn formats_back() {
        for spec in [
            "RoundRobin",
            "WeightedRoundRobin:3",
            "LeastUsedDegradation:0.5",
            "LeastUsed",
            "WeightedRandomDPF:10:1",
        ] {
            let policy = parse(spec).unwrap_or(Policy::Random);
            assert_eq!(parse(&format(&policy)), Ok(policy), "{spec}");
        }
        assert_eq!(
            format(&parse("WRR:3").unwrap_or(Policy::Random)),
            "WeightedRoundRobin:3"
        );
    }
}
