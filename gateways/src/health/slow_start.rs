//! Slow start: a PE that just joined the pool (or came back from an ejection) gets a
//! share of requests that ramps up over `window` instead of all at once: under a
//! Least Used policy a new, still empty PE would otherwise be first for every request
//! until its load reports catch up. Sans-IO: time comes in as `now`, chance from a
//! seeded generator.
//!
//! A PE `age` into its window is kept where the policy put it with probability
//! `age / window`, else moved behind the settled PEs (it is still tried when they
//! fail). The PEs of the first request a route serves are settled (they were there
//! before the gateway), so a restart does not ramp the whole pool. The table is
//! bounded ([`MAX_TRACKED`]); a PE past its window is forgotten.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rserpool_proto::rng::SeededRng;
use rserpool_proto::wire::PoolElementId;

/// PEs in their window at most; more are treated as settled.
const MAX_TRACKED: usize = 10_000;

/// The PEs of one route in their slow-start window.
#[derive(Debug)]
pub(crate) struct SlowStart {
    window: Duration,
    /// When each PE in its window began it.
    started: HashMap<PoolElementId, Instant>,
    /// PEs seen at all (to tell a new one), bounded like `started`.
    known: HashMap<PoolElementId, Instant>,
    rng: SeededRng,
    first_request: bool,
}

impl SlowStart {
    /// `window` zero: no slow start.
    pub(crate) fn new(window: Duration, seed: u64) -> Self {
        Self {
            window,
            started: HashMap::new(),
            known: HashMap::new(),
            rng: SeededRng::new(seed),
            first_request: true,
        }
    }

    /// `pe` comes back (its ejection ended): it ramps up again from `now`.
    pub(crate) fn restart(&mut self, pe: PoolElementId, now: Instant) {
        if !self.window.is_zero() && self.started.len() < MAX_TRACKED {
            self.started.insert(pe, now);
        }
    }

    /// Orders a request's PEs: those in their window may go behind the settled ones,
    /// the later into their window the less likely.
    pub(crate) fn order<T: Copy>(
        &mut self,
        pes: &mut [T],
        id: impl Fn(&T) -> PoolElementId,
        now: Instant,
    ) {
        if self.window.is_zero() {
            return;
        }
        let first = std::mem::take(&mut self.first_request);
        for pe in pes.iter() {
            let pe = id(pe);
            if !self.known.contains_key(&pe) {
                if self.known.len() >= MAX_TRACKED {
                    self.forget(now);
                }
                if self.known.len() < MAX_TRACKED {
                    self.known.insert(pe, now);
                    if !first {
                        self.started.insert(pe, now);
                    }
                }
            }
        }
        // The usual case on this per-request path: nothing is ramping, nothing to do.
        if self.started.is_empty() {
            return;
        }
        let demoted: Vec<bool> = pes.iter().map(|pe| self.demote(id(pe), now)).collect();
        if demoted.iter().any(|d| *d) {
            let pick = |late: bool| {
                pes.iter()
                    .zip(&demoted)
                    .filter(move |(_, d)| **d == late)
                    .map(|(pe, _)| *pe)
            };
            let reordered: Vec<T> = pick(false).chain(pick(true)).collect();
            for (slot, pe) in pes.iter_mut().zip(reordered) {
                *slot = pe;
            }
        }
    }

    /// Whether `pe` goes behind the settled PEs for this request.
    fn demote(&mut self, pe: PoolElementId, now: Instant) -> bool {
        let Some(&since) = self.started.get(&pe) else {
            return false;
        };
        let age = now.saturating_duration_since(since);
        if age >= self.window {
            self.started.remove(&pe);
            return false;
        }
        let window = u64::try_from(self.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let age = u64::try_from(age.as_millis()).unwrap_or(0);
        self.rng.below(window) >= age
    }

    /// Forgets PEs not in their window that were first seen long ago (to make room).
    fn forget(&mut self, now: Instant) {
        let started = &self.started;
        let horizon = self.window.saturating_mul(10);
        self.known.retain(|pe, seen| {
            started.contains_key(pe) || now.saturating_duration_since(*seen) < horizon
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PoolElementId = PoolElementId(1);
    const B: PoolElementId = PoolElementId(2);
    const NEW: PoolElementId = PoolElementId(3);

    /// How often `NEW`, listed first by the policy, stays first in 1 000 requests.
    fn first_share(slow: &mut SlowStart, now: Instant) -> usize {
        (0..1000)
            .filter(|_| {
                let mut pes = vec![NEW, A, B];
                slow.order(&mut pes, |pe| *pe, now);
                pes[0] == NEW
            })
            .count()
    }

    #[test]
    fn a_new_pe_ramps_up_over_the_window() {
        let start = crate::now();
        let mut slow = SlowStart::new(Duration::from_secs(10), 7);
        // The first request's PEs are settled.
        let mut pes = vec![A, B];
        slow.order(&mut pes, |pe| *pe, start);
        assert_eq!(pes, [A, B]);
        let shares: Vec<usize> = [0, 2, 5, 8, 10]
            .iter()
            .map(|s| first_share(&mut slow, start + Duration::from_secs(*s)))
            .collect();
        assert!(shares[0] < 20, "{shares:?}");
        assert!((150..250).contains(&shares[1]), "{shares:?}");
        assert!((420..580).contains(&shares[2]), "{shares:?}");
        assert!((720..880).contains(&shares[3]), "{shares:?}");
        assert_eq!(shares[4], 1000, "{shares:?}");
        // Demoted PEs keep their order behind the settled ones.
        let mut pes = vec![NEW, A, B];
        let mut fresh = SlowStart::new(Duration::from_secs(10), 7);
        fresh.order(&mut [A, B], |pe| *pe, start);
        fresh.order(&mut pes, |pe| *pe, start);
        assert_eq!(pes, [A, B, NEW]);
    }

    #[test]
    fn a_pe_back_from_an_ejection_ramps_again_and_zero_turns_it_off() {
        let now = crate::now();
        let mut slow = SlowStart::new(Duration::from_secs(10), 7);
        slow.order(&mut [A, B], |pe| *pe, now);
        slow.restart(A, now);
        let mut pes = vec![A, B];
        slow.order(&mut pes, |pe| *pe, now);
        assert_eq!(pes, [B, A]);
        let mut off = SlowStart::new(Duration::ZERO, 7);
        off.order(&mut [A], |pe| *pe, now);
        let mut pes = vec![NEW, A];
        off.order(&mut pes, |pe| *pe, now);
        assert_eq!(pes, [NEW, A]);
    }
}
