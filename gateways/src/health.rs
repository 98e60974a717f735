//! Passive health of a pool's PEs as one gateway listener or route sees them: outlier
//! ejection ([`outliers`]) and slow start ([`slow_start`]), shared by HTTP routes and
//! TCP listeners. Sans-IO: the caller brings the time and says how each PE did.

pub mod outliers;
mod slow_start;
pub mod success_rate;

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

/// Logs an ejection of one of `pool`'s PEs (a WARN line; `unit`: what failed,
/// "requests" or "sessions").
pub(crate) fn log_ejection(pool: &str, ejection: &Ejection, unit: &str) {
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
