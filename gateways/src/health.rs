//! Passive health of a pool's PEs as one gateway listener or route sees them: outlier
//! ejection ([`outliers`]) and slow start (`slow_start`), shared by HTTP routes and
//! TCP listeners. Sans-IO: the caller brings the time and says how each PE did.

pub mod outliers;
mod slow_start;
pub mod success_rate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rserpool_proto::wire::PoolElementId;

pub use self::outliers::{Cause, Ejection, OutlierConfig};
pub use self::success_rate::SuccessRateConfig;

/// The default slow-start window.
pub const SLOW_START: Duration = Duration::from_secs(10);

/// Ejections and slow starts of one listener's or route's PEs.
#[derive(Debug)]
pub(crate) struct PoolHealth {
    outliers: outliers::Outliers,
    rates: success_rate::SuccessRates,
    slow_start: slow_start::SlowStart,
}

impl PoolHealth {
    /// `slow_start` zero: none; `seed` draws the slow-start chances.
    pub(crate) fn new(outliers: OutlierConfig, slow_start: Duration, seed: u64) -> Self {
        Self {
            rates: success_rate::SuccessRates::new(outliers.success_rate),
            outliers: outliers::Outliers::new(outliers),
            slow_start: slow_start::SlowStart::new(slow_start, seed),
        }
    }

    /// Orders the PEs the policy listed: the first `keep` (a sticky session's PE) stay
    /// first unless ejected, PEs in their slow start may go behind the settled ones,
    /// and ejected PEs go last.
    pub(crate) fn order<T: Copy>(
        &mut self,
        pes: &mut [T],
        keep: usize,
        id: impl Fn(&T) -> PoolElementId,
        now: Instant,
    ) {
        if let Some(rest) = pes.get_mut(keep..) {
            self.slow_start.order(rest, &id, now);
        }
        self.outliers.order(pes, id, now);
    }

    /// Records how `pe` did (`offered`: the PEs the attempt could have used); the
    /// ejections it caused (none, mostly: then nothing is allocated).
    pub(crate) fn observe(
        &mut self,
        pe: PoolElementId,
        ok: bool,
        offered: usize,
        now: Instant,
    ) -> Vec<Ejection> {
        let mut ejections = Vec::new();
        if ok {
            if self.outliers.succeeded(pe, now) {
                // Back from an ejection: its share ramps up again.
                self.slow_start.restart(pe, now);
            }
        } else {
            ejections.extend(self.outliers.failed(pe, offered, now));
        }
        for low in self.rates.record(pe, ok, now) {
            let percent = |rate: f64| (rate * 100.0).round().clamp(0.0, 100.0) as u8;
            let cause = Cause::LowSuccessRate {
                percent: percent(low.rate),
                mean_percent: percent(low.mean),
            };
            ejections.extend(self.outliers.eject(low.pe, offered, cause, now));
        }
        ejections
    }
}

/// The PEs ejected now, by pool, as every listener and route of a gateway posts them:
/// what the admin API shows. Bounded: expired entries go first, and when
/// [`MAX_POSTED`] are still in force a new one is logged but not posted.
#[derive(Debug, Clone, Default)]
pub struct EjectionBoard(Arc<Mutex<HashMap<(String, PoolElementId), Posted>>>);

/// Ejections the board holds at most.
pub const MAX_POSTED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Posted {
    until: Instant,
    times: u32,
    cause: Cause,
}

/// An ejection in force, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejected {
    pub pool: String,
    pub pe: PoolElementId,
    /// Until it is tried with the others again.
    pub remaining: Duration,
    /// How many times it was ejected.
    pub times: u32,
    pub cause: Cause,
}

impl EjectionBoard {
    /// Logs an ejection of one of `pool`'s PEs (a WARN line; `unit`: what failed,
    /// "requests" or "sessions") and posts it.
    pub(crate) fn post(&self, pool: &str, ejection: &Ejection, unit: &str, now: Instant) {
        log_ejection(pool, ejection, unit);
        let Ok(mut posted) = self.0.lock() else {
            return;
        };
        if posted.len() >= MAX_POSTED {
            posted.retain(|_, entry| entry.until > now);
        }
        if posted.len() < MAX_POSTED {
            let entry = Posted {
                until: now + ejection.duration,
                times: ejection.times,
                cause: ejection.cause,
            };
            posted.insert((pool.to_owned(), ejection.pe), entry);
        }
    }

    /// The ejections in force at `now`, by pool and PE.
    pub fn current(&self, now: Instant) -> Vec<Ejected> {
        let Ok(posted) = self.0.lock() else {
            return Vec::new();
        };
        let mut current: Vec<Ejected> = posted
            .iter()
            .filter(|(_, entry)| entry.until > now)
            .map(|((pool, pe), entry)| Ejected {
                pool: pool.clone(),
                pe: *pe,
                remaining: entry.until - now,
                times: entry.times,
                cause: entry.cause,
            })
            .collect();
        current.sort_by(|a, b| (&a.pool, a.pe.0).cmp(&(&b.pool, b.pe.0)));
        current
    }
}

fn log_ejection(pool: &str, ejection: &Ejection, unit: &str) {
    let (pe, seconds, times) = (ejection.pe, ejection.duration.as_secs(), ejection.times);
    match ejection.cause {
        Cause::ConsecutiveFailures => tracing::warn!(
            pool,
            pe = %pe,
            seconds,
            times,
            unit,
            "pool element ejected after consecutive failures: tried after the others"
        ),
        Cause::LowSuccessRate {
            percent,
            mean_percent,
        } => tracing::warn!(
            pool,
            pe = %pe,
            seconds,
            times,
            unit,
            success_percent = percent,
            mean_percent,
            "pool element ejected for its success rate: tried after the others"
        ),
    }
}

/// Work under way per PE: an HTTP route's requests waiting for an answer, a TCP
/// listener's open sessions (PEs with none are absent). What `least_requests` and
/// `least_sessions` order by, and `max_requests_per_pe` bounds.
#[derive(Debug, Default)]
pub(crate) struct PeCounts(HashMap<PoolElementId, usize>);

impl PeCounts {
    pub(crate) fn count(&self, pe: PoolElementId) -> usize {
        self.0.get(&pe).copied().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, pe: PoolElementId) {
        *self.0.entry(pe).or_default() += 1;
    }

    pub(crate) fn remove(&mut self, pe: PoolElementId) {
        if let Some(count) = self.0.get_mut(&pe) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.0.remove(&pe);
            }
        }
    }

    /// Orders `items` by their PE's count, fewest first; a stable sort, so PEs with as
    /// many keep the order they came in (the pool policy's).
    pub(crate) fn fewest_first<T>(&self, items: &mut [T], pe: impl Fn(&T) -> PoolElementId) {
        items.sort_by_key(|item| self.count(pe(item)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ejection(pe: u32, seconds: u64) -> Ejection {
        Ejection {
            pe: PoolElementId(pe),
            duration: Duration::from_secs(seconds),
            times: 1,
            cause: Cause::ConsecutiveFailures,
        }
    }

    #[test]
    fn the_board_shows_ejections_in_force_and_stays_bounded() {
        let board = EjectionBoard::default();
        let start = crate::now();
        board.post("Web", &ejection(1, 30), "requests", start);
        board.post("Web", &ejection(2, 5), "requests", start);
        let later = start + Duration::from_secs(10);
        let current = board.current(later);
        assert_eq!(current.len(), 1);
        assert_eq!(current[0].pe, PoolElementId(1));
        assert_eq!(current[0].remaining, Duration::from_secs(20));
        // Full of ejections in force: a new one is not posted; expired ones make room.
        for pe in 0..MAX_POSTED as u32 {
            board.post("Full", &ejection(100 + pe, 1), "sessions", start);
        }
        board.post("Web", &ejection(3, 30), "requests", start);
        assert!(
            !board
                .current(start)
                .iter()
                .any(|e| e.pe == PoolElementId(3))
        );
        board.post("Web", &ejection(4, 30), "requests", later);
        assert!(
            board
                .current(later)
                .iter()
                .any(|e| e.pe == PoolElementId(4))
        );
    }
}
