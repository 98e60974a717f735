//! Passive health of a pool's PEs as one gateway listener or route sees them: outlier
//! ejection ([`outliers`]) and slow start ([`slow_start`]), shared by HTTP routes and
//! TCP listeners. Sans-IO: the caller brings the time and says how each PE did.

pub mod outliers;
mod slow_start;

use std::time::{Duration, Instant};

use rserpool_proto::wire::PoolElementId;

pub use self::outliers::{Ejection, OutlierConfig};

/// The default slow-start window.
pub const SLOW_START: Duration = Duration::from_secs(10);

/// Ejections and slow starts of one listener's or route's PEs.
#[derive(Debug)]
pub(crate) struct PoolHealth {
    outliers: outliers::Outliers,
    slow_start: slow_start::SlowStart,
}

impl PoolHealth {
    /// `slow_start` zero: none; `seed` draws the slow-start chances.
    pub(crate) fn new(outliers: OutlierConfig, slow_start: Duration, seed: u64) -> Self {
        Self {
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
    /// ejection it caused, if any.
    pub(crate) fn observe(
        &mut self,
        pe: PoolElementId,
        ok: bool,
        offered: usize,
        now: Instant,
    ) -> Option<Ejection> {
        if ok {
            if self.outliers.succeeded(pe, now) {
                // Back from an ejection: its share ramps up again.
                self.slow_start.restart(pe, now);
            }
            None
        } else {
            self.outliers.failed(pe, offered, now)
        }
    }
}
