//! Passive health (outlier detection, as Envoy calls it): a PE whose requests fail
//! several times in a row (5xx answers, refused or broken connections, timeouts) is
//! ejected for a while: requests try it only after every other PE. Sans-IO: time comes
//! in as `now`.
//!
//! * `consecutive_failures` (5) in a row eject a PE for `base_ejection` (30 s) times the
//!   number of times it was ejected, at most `max_ejection` (5 min): a PE that keeps
//!   failing stays out longer. A PE healthy for `max_ejection` after its last ejection
//!   starts afresh.
//! * At most `max_ejected_percent` (50 %) of the PEs a request was offered are ejected
//!   at once (at least one of two or more): a pool that is failing as a whole is not
//!   emptied by its own failures (the panic threshold).
//! * Ejected PEs are not removed: they go to the end of each request's list, so when
//!   every other PE fails they are still tried. The registrar hears of them only
//!   through the unreachability reports of transport failures (the HTTP gateway's
//!   attempts.rs, the TCP session layer): a PE answering 503 is alive.
//! * The table is bounded (`MAX_TRACKED` PEs); a PE without failures is not tracked.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rserpool_proto::wire::PoolElementId;

use super::success_rate::SuccessRateConfig;

/// PEs tracked at most; failures of others are not counted while it is full.
const MAX_TRACKED: usize = 10_000;

/// When a PE is ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject a PE (0: never eject).
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// The largest share of a request's PEs ejected at once.
    pub max_ejected_percent: u8,
    /// Ejection by success rate over an interval.
    pub success_rate: SuccessRateConfig,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
            success_rate: SuccessRateConfig::default(),
        }
    }
}

/// One tracked PE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// In rotation, with its current run of failures.
    Serving {
        failures: u32,
        ejections: u32,
        last_ejected: Option<Instant>,
    },
    /// Out of rotation until `until`.
    Ejected { until: Instant, ejections: u32 },
}

/// An ejection, for the log line and the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub pe: PoolElementId,
    pub duration: Duration,
    /// How many times it was ejected, this one included.
    pub times: u32,
    pub cause: Cause,
}

/// Why a PE was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `consecutive_failures` in a row.
    ConsecutiveFailures,
    /// Its success rate over an interval (percent), against the mean of the PEs judged.
    LowSuccessRate { percent: u8, mean_percent: u8 },
}

/// The passive health of one route's PEs.
#[derive(Debug)]
pub(crate) struct Outliers {
    config: OutlierConfig,
    pes: HashMap<PoolElementId, Standing>,
}

impl Outliers {
    pub(crate) fn new(config: OutlierConfig) -> Self {
        Self {
            config,
            pes: HashMap::new(),
        }
    }

    /// Orders a request's PEs: those in rotation first (in the policy's order), the
    /// ejected ones after them.
    pub(crate) fn order<T>(
        &mut self,
        pes: &mut [T],
        id: impl Fn(&T) -> PoolElementId,
        now: Instant,
    ) {
        if self.pes.is_empty() {
            return;
        }
        pes.sort_by_key(|pe| self.is_ejected(id(pe), now));
    }

    fn is_ejected(&self, pe: PoolElementId, now: Instant) -> bool {
        matches!(self.pes.get(&pe), Some(Standing::Ejected { until, .. }) if *until > now)
    }

    /// A request to `pe` succeeded (an answer that is no server error). `true` when
    /// this ends its ejection (it is back in rotation).
    pub(crate) fn succeeded(&mut self, pe: PoolElementId, now: Instant) -> bool {
        let Some(standing) = self.pes.get_mut(&pe) else {
            return false;
        };
        match *standing {
            Standing::Ejected { until, ejections } if until <= now => {
                *standing = Standing::Serving {
                    failures: 0,
                    ejections,
                    last_ejected: Some(until),
                };
                return true;
            }
            Standing::Ejected { .. } => {}
            Standing::Serving {
                ejections,
                last_ejected,
                ..
            } => {
                let recovered = last_ejected
                    .is_none_or(|at| now.saturating_duration_since(at) >= self.config.max_ejection);
                if recovered {
                    self.pes.remove(&pe);
                } else {
                    *standing = Standing::Serving {
                        failures: 0,
                        ejections,
                        last_ejected,
                    };
                }
            }
        }
        false
    }

    /// A request to `pe` failed; `offered` is how many PEs the request could use.
    /// Returns the ejection it caused, if any.
    pub(crate) fn failed(
        &mut self,
        pe: PoolElementId,
        offered: usize,
        now: Instant,
    ) -> Option<Ejection> {
        if self.config.consecutive_failures == 0 {
            return None;
        }
        if !self.pes.contains_key(&pe) && self.pes.len() >= MAX_TRACKED {
            return None;
        }
        let standing = self.pes.entry(pe).or_insert(Standing::Serving {
            failures: 0,
            ejections: 0,
            last_ejected: None,
        });
        let (failures, ejections, last_ejected) = match *standing {
            Standing::Ejected { until, .. } if until > now => return None,
            // Its ejection is over: this failure starts a new run.
            Standing::Ejected { until, ejections } => (1, ejections, Some(until)),
            Standing::Serving {
                failures,
                ejections,
                last_ejected,
            } => (failures.saturating_add(1), ejections, last_ejected),
        };
        *standing = Standing::Serving {
            failures,
            ejections,
            last_ejected,
        };
        if failures < self.config.consecutive_failures {
            return None;
        }
        self.eject(pe, offered, Cause::ConsecutiveFailures, now)
    }

    /// Ejects `pe` for `cause` unless that would eject more than `max_ejected_percent`
    /// of the `offered` PEs (or it is out already).
    pub(crate) fn eject(
        &mut self,
        pe: PoolElementId,
        offered: usize,
        cause: Cause,
        now: Instant,
    ) -> Option<Ejection> {
        if self.is_ejected(pe, now)
            || (!self.pes.contains_key(&pe) && self.pes.len() >= MAX_TRACKED)
        {
            return None;
        }
        let allowed = if offered < 2 {
            0
        } else {
            (offered * usize::from(self.config.max_ejected_percent) / 100).max(1)
        };
        // Counting the ejected PEs walks the table: only when one would go.
        if self.ejected(now) >= allowed {
            return None;
        }
        let ejections = match self.pes.get(&pe) {
            Some(Standing::Serving { ejections, .. } | Standing::Ejected { ejections, .. }) => {
                *ejections
            }
            None => 0,
        };
        let config = self.config;
        let times = ejections.saturating_add(1);
        let duration = config
            .base_ejection
            .saturating_mul(times)
            .min(config.max_ejection);
        self.pes.insert(
            pe,
            Standing::Ejected {
                until: now + duration,
                ejections: times,
            },
        );
        Some(Ejection {
            pe,
            duration,
            times,
            cause,
        })
    }

    /// PEs ejected now.
    fn ejected(&self, now: Instant) -> usize {
        self.pes
            .values()
            .filter(|s| matches!(s, Standing::Ejected { until, .. } if *until > now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PoolElementId = PoolElementId(1);
    const B: PoolElementId = PoolElementId(2);
    const C: PoolElementId = PoolElementId(3);

    fn fail(
        outliers: &mut Outliers,
        pe: PoolElementId,
        times: u32,
        now: Instant,
    ) -> Option<Ejection> {
        (0..times)
            .filter_map(|_| outliers.failed(pe, 3, now))
            .last()
    }

    #[test]
    fn five_failures_in_a_row_eject_a_pe_to_the_end_of_the_list() {
        let now = crate::now();
        let mut outliers = Outliers::new(OutlierConfig::default());
        assert_eq!(fail(&mut outliers, A, 4, now), None);
        // A success breaks the run.
        assert!(!outliers.succeeded(A, now));
        assert_eq!(fail(&mut outliers, A, 4, now), None);
        let ejection = fail(&mut outliers, A, 1, now).unwrap();
        assert_eq!(
            (ejection.duration, ejection.times),
            (Duration::from_secs(30), 1)
        );
        let mut pes = vec![A, B, C];
        outliers.order(&mut pes, |pe| *pe, now);
        assert_eq!(pes, [B, C, A]);
        // Back in rotation after 30 s.
        let later = now + Duration::from_secs(31);
        let mut pes = vec![A, B, C];
        outliers.order(&mut pes, |pe| *pe, later);
        assert_eq!(pes, [A, B, C]);
    }

    #[test]
    fn a_pe_that_keeps_failing_stays_out_longer_up_to_the_maximum() {
        let mut now = crate::now();
        let mut outliers = Outliers::new(OutlierConfig::default());
        let mut durations = Vec::new();
        for _ in 0..12 {
            let ejection = fail(&mut outliers, A, 5, now).unwrap();
            durations.push(ejection.duration.as_secs());
            now += ejection.duration + Duration::from_secs(1);
        }
        assert_eq!(&durations[..3], [30, 60, 90]);
        assert_eq!(durations[11], 300);
        // Back (the first success after an ejection says so); healthy for the longest
        // ejection after the last: it starts afresh.
        assert!(outliers.succeeded(A, now));
        assert!(!outliers.succeeded(A, now + Duration::from_secs(300)));
        assert_eq!(
            fail(&mut outliers, A, 5, now + Duration::from_secs(301))
                .unwrap()
                .times,
            1
        );
    }

    #[test]
    fn no_more_than_half_of_the_pes_are_ejected() {
        let now = crate::now();
        let mut outliers = Outliers::new(OutlierConfig::default());
        // Of 3 PEs one may be out at once (50 %, rounded down, at least one).
        assert!(fail(&mut outliers, A, 5, now).is_some());
        assert_eq!(fail(&mut outliers, B, 20, now), None);
        assert_eq!(outliers.ejected(now), 1);
        // A single PE is never ejected.
        let mut single = Outliers::new(OutlierConfig::default());
        assert_eq!((0..10).find_map(|_| single.failed(C, 1, now)), None);
    }

    #[test]
    fn healthy_pes_are_not_tracked() {
        let now = crate::now();
        let mut outliers = Outliers::new(OutlierConfig::default());
        let _ = outliers.succeeded(A, now);
        assert!(outliers.pes.is_empty());
        let _ = outliers.failed(A, 3, now);
        let _ = outliers.succeeded(A, now);
        assert!(outliers.pes.is_empty());
    }
}
