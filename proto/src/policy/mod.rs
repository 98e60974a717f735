//! Pool member selection policies (RFC 5356 and rsplib's extensions; docs/policies.md).
//!
//! A policy is applied twice: by the registrar answering a handle resolution (select up
//! to N PEs, best first) and by the pool user choosing one PE from its cache. Both use
//! the handlespace's selection (`Handlespace::select`); this module says, per policy,
//! how PEs are ordered or weighted and what a selection changes.
//!
//! Two families (docs/policies.md §2):
//! * **ordered** policies keep the pool sorted by a key, lowest first, with ties broken
//!   by a sequence number that a selected PE renews (so among equals the least recently
//!   selected comes first: round robin);
//! * **weighted** (random) policies draw PEs without replacement with probability
//!   proportional to a share.
//!
//! Where this implementation differs from rsplib, it follows the RFC intent:
//! * LUD adds the load degradation once per selection (rsplib adds it twice, and once
//!   on insertion; RFC 5356, Least Used with Degradation).
//! * RLUD and RPLUD accumulate degradation per selection like LUD (rsplib never grows it,
//!   so its RLUD behaves as RLU).
//! * A PE with weight 0 (WRR, WRAND) is never chosen while a PE with a positive weight is
//!   available; if fewer than N PEs have a positive weight, zero-weight PEs fill the
//!   answer (WRR: in round-robin order; WRAND: in identifier order), so a pool of only
//!   zero-weight PEs still answers (rsplib answers with no PE at all).
//! * Distance (DPF policies): rsplib measures it from the SCTP round-trip time of the
//!   PE's association. Our registrar sets it from the transport's smoothed RTT where the
//!   transport reports one (kernel TCP and SCTP do), else keeps the value received (0
//!   from PEs, accumulated by registrars over ENRP). The selection arithmetic is rsplib's.

mod fenwick;
pub mod spec;

pub(crate) use fenwick::Fenwick;

use crate::wire::{Policy, PolicyType};

const FULL: u64 = 0xffff_ffff;

/// The two ways a policy selects PEs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Sorted by a key, lowest first, ties round robin.
    Ordered,
    /// Drawn at random, without replacement, proportionally to a share.
    Weighted,
}

impl Family {
    /// The family of a policy type; unknown types are treated as round robin.
    pub const fn of(policy_type: PolicyType) -> Self {
        match policy_type {
            PolicyType::RANDOM
            | PolicyType::WEIGHTED_RANDOM
            | PolicyType::RANDOMIZED_LEAST_USED
            | PolicyType::RANDOMIZED_PRIORITY_LEAST_USED
            | PolicyType::RANDOMIZED_LEAST_USED_DEGRADATION
            | PolicyType::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION
            | PolicyType::WEIGHTED_RANDOM_DPF => Self::Weighted,
            _ => Self::Ordered,
        }
    }
}

/// Is this a policy this implementation can run (RFC 5356 or a supported extension)?
pub const fn is_supported(policy_type: PolicyType) -> bool {
    matches!(
        policy_type,
        PolicyType::ROUND_ROBIN
            | PolicyType::WEIGHTED_ROUND_ROBIN
            | PolicyType::RANDOM
            | PolicyType::WEIGHTED_RANDOM
            | PolicyType::PRIORITY
            | PolicyType::LEAST_USED
            | PolicyType::LEAST_USED_DEGRADATION
            | PolicyType::PRIORITY_LEAST_USED
            | PolicyType::RANDOMIZED_LEAST_USED
            | PolicyType::RANDOMIZED_PRIORITY_LEAST_USED
            | PolicyType::RANDOMIZED_LEAST_USED_DEGRADATION
            | PolicyType::PRIORITY_LEAST_USED_DEGRADATION
            | PolicyType::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION
            | PolicyType::WEIGHTED_RANDOM_DPF
            | PolicyType::LEAST_USED_DPF
            | PolicyType::LEAST_USED_DEGRADATION_DPF
    )
}

/// How many of the PEs returned by one selection count as used: 1 for the ordered
/// policies and the randomized-least-used family, 0 for the stateless random policies
/// (rsplib's "max increment" default, docs/policies.md §2).
pub const fn default_max_increment(policy_type: PolicyType) -> usize {
    match policy_type {
        PolicyType::RANDOM | PolicyType::WEIGHTED_RANDOM | PolicyType::WEIGHTED_RANDOM_DPF => 0,
        _ => 1,
    }
}

/// Selection state of one PE, kept locally, never sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectionState {
    /// Renewed on every selection and on insertion: the round-robin tie-breaker.
    pub seq: u64,
    /// Accumulated load degradation (LUD and the other degradation policies); reset
    /// when the PE re-registers.
    pub degradation: u32,
    /// WRR: the round the PE is serving.
    pub round: u64,
    /// WRR: selections left in the current round.
    pub credits: u32,
}

fn saturate(value: u64) -> u64 {
    value.min(FULL)
}

/// `distance × dpf`, the distance penalty (docs/policies.md §5), capped at 100 %.
fn distance_penalty(distance: u32, dpf: u32) -> u64 {
    saturate(u64::from(distance) * u64::from(dpf))
}

/// The sort key of an ordered policy: lower is better. The sequence number breaks ties.
pub(crate) fn order_key(policy: &Policy, state: &SelectionState) -> (u64, u64) {
    match *policy {
        Policy::WeightedRoundRobin { weight } => {
            if weight == 0 {
                (u64::MAX, 0)
            } else {
                (state.round, 0)
            }
        }
        Policy::Priority { priority } => (u64::from(!priority), 0),
        Policy::LeastUsed { load } => (u64::from(load), 0),
        Policy::LeastUsedDegradation { load, .. } => {
            (saturate(u64::from(load) + u64::from(state.degradation)), 0)
        }
        Policy::PriorityLeastUsed { load, degradation } => {
            (saturate(u64::from(load) + u64::from(degradation)), 0)
        }
        Policy::PriorityLeastUsedDegradation { load, degradation } => (
            saturate(u64::from(load) + u64::from(degradation) + u64::from(state.degradation)),
            0,
        ),
        Policy::LeastUsedDpf {
            load,
            load_dpf,
            distance,
        } => (
            saturate(u64::from(load) + distance_penalty(distance, load_dpf)),
            0,
        ),
        Policy::LeastUsedDegradationDpf {
            load,
            load_dpf,
            distance,
            ..
        } => (
            saturate(
                u64::from(load)
                    + u64::from(state.degradation)
                    + distance_penalty(distance, load_dpf),
            ),
            0,
        ),
        // Round robin, and unknown policies treated as round robin.
        _ => (0, 0),
    }
}

/// The share of a weighted policy: the probability of a draw is share / total. Zero
/// means "only when nothing else is left".
pub(crate) fn share(policy: &Policy, state: &SelectionState) -> u64 {
    let unused = |used: u64| FULL.saturating_sub(used).max(1);
    match *policy {
        Policy::Random => 1,
        Policy::WeightedRandom { weight } => u64::from(weight),
        Policy::RandomizedLeastUsed { load } => unused(u64::from(load)),
        Policy::RandomizedPriorityLeastUsed { load, degradation } => {
            unused(u64::from(load) + u64::from(degradation))
        }
        Policy::RandomizedLeastUsedDegradation { load, .. } => {
            unused(u64::from(load) + u64::from(state.degradation))
        }
        Policy::RandomizedPriorityLeastUsedDegradation { load, degradation } => {
            unused(u64::from(load) + u64::from(degradation) + u64::from(state.degradation))
        }
        Policy::WeightedRandomDpf {
            weight,
            weight_dpf,
            distance,
        } => {
            let weight = u128::from(weight);
            let penalty = (weight * u128::from(distance) * u128::from(weight_dpf)
                + u128::from(FULL) / 2)
                / u128::from(FULL);
            u64::try_from(weight.saturating_sub(penalty))
                .unwrap_or(FULL)
                .clamp(1, FULL)
        }
        _ => 1,
    }
}

/// The degradation added per selection, for the policies that accumulate it.
const fn degradation_step(policy: &Policy) -> Option<u32> {
    match *policy {
        Policy::LeastUsedDegradation { degradation, .. }
        | Policy::PriorityLeastUsedDegradation { degradation, .. }
        | Policy::RandomizedLeastUsedDegradation { degradation, .. }
        | Policy::RandomizedPriorityLeastUsedDegradation { degradation, .. }
        | Policy::LeastUsedDegradationDpf { degradation, .. } => Some(degradation),
        _ => None,
    }
}

/// What one selection changes (the new sequence number is set by the caller).
pub(crate) fn on_selected(policy: &Policy, state: &mut SelectionState) {
    if let Some(step) = degradation_step(policy) {
        state.degradation = state.degradation.saturating_add(step);
    }
    if let Policy::WeightedRoundRobin { weight } = *policy
        && weight > 0
    {
        state.credits = state.credits.saturating_sub(1);
        if state.credits == 0 {
            state.round += 1;
            state.credits = weight;
        }
    }
}

/// Resets the state when a PE joins or re-registers. `current_round` is the round the
/// pool is serving (WRR), so a newcomer does not get all the selections of the rounds it
/// missed. The sequence number is kept by the caller on re-registration.
pub(crate) fn on_registered(
    old: Option<&Policy>,
    policy: &Policy,
    state: &mut SelectionState,
    current_round: u64,
) {
    state.degradation = 0;
    if let Policy::WeightedRoundRobin { weight } = *policy {
        let unchanged =
            matches!(old, Some(Policy::WeightedRoundRobin { weight: w }) if *w == weight);
        if !unchanged {
            state.round = state.round.max(current_round);
            state.credits = weight;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_defaults() {
        assert_eq!(Family::of(PolicyType::ROUND_ROBIN), Family::Ordered);
        assert_eq!(Family::of(PolicyType::LEAST_USED_DPF), Family::Ordered);
        assert_eq!(
            Family::of(PolicyType::WEIGHTED_RANDOM_DPF),
            Family::Weighted
        );
        assert_eq!(Family::of(PolicyType(0x1234)), Family::Ordered);
        assert_eq!(default_max_increment(PolicyType::RANDOM), 0);
        assert_eq!(default_max_increment(PolicyType::RANDOMIZED_LEAST_USED), 1);
        assert!(
            !is_supported(PolicyType(0xb000_2004)),
            "declared by rsplib, not encodable"
        );
        // The load-based policies (rsplib's `PPT_IS_ADAPTIVE`) are those with a load.
        assert_eq!(Policy::LeastUsed { load: 7 }.load(), Some(7));
        assert_eq!(Policy::Priority { priority: 7 }.load(), None);
    }

    #[test]
    fn keys_and_shares_follow_policies_md() {
        let s = SelectionState::default();
        // PRIO: higher priority sorts first.
        assert!(
            order_key(&Policy::Priority { priority: 9 }, &s)
                < order_key(&Policy::Priority { priority: 1 }, &s)
        );
        // PLU: load after accepting one more request, capped.
        assert_eq!(
            order_key(
                &Policy::PriorityLeastUsed {
                    load: 0xffff_fff0,
                    degradation: 0x100
                },
                &s
            ),
            (FULL, 0)
        );
        // RLU: 100 % load still has a tiny share.
        assert_eq!(
            share(&Policy::RandomizedLeastUsed { load: u32::MAX }, &s),
            1
        );
        assert_eq!(share(&Policy::RandomizedLeastUsed { load: 0 }, &s), FULL);
        assert_eq!(share(&Policy::WeightedRandom { weight: 0 }, &s), 0);
        // WRAND-DPF: weight 1000, half penalty per ms, 1 ms away -> 500.
        let dpf = Policy::WeightedRandomDpf {
            weight: 1000,
            weight_dpf: 0x8000_0000,
            distance: 1,
        };
        assert_eq!(share(&dpf, &s), 500);
        // LU-DPF: load + distance * dpf.
        let lu_dpf = Policy::LeastUsedDpf {
            load: 10,
            load_dpf: 3,
            distance: 100,
        };
        assert_eq!(order_key(&lu_dpf, &s), (310, 0));
    }

    #[test]
    fn degradation_accumulates_per_selection_and_resets_on_registration() {
        let lud = Policy::LeastUsedDegradation {
            load: 100,
            degradation: 7,
        };
        let mut s = SelectionState::default();
        on_selected(&lud, &mut s);
        on_selected(&lud, &mut s);
        assert_eq!(order_key(&lud, &s), (114, 0));
        on_registered(Some(&lud), &lud, &mut s, 0);
        assert_eq!(order_key(&lud, &s), (100, 0));
    }

    #[test]
    fn wrr_serves_weight_selections_per_round() {
        let wrr = Policy::WeightedRoundRobin { weight: 3 };
        let mut s = SelectionState::default();
        on_registered(None, &wrr, &mut s, 5);
        assert_eq!((s.round, s.credits), (5, 3));
        for _ in 0..3 {
            assert_eq!(order_key(&wrr, &s), (5, 0));
            on_selected(&wrr, &mut s);
        }
        assert_eq!((s.round, s.credits), (6, 3));
    }
}
