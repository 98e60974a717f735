//! Outliers by success rate (Envoy's two success-rate checks), beside the consecutive
//! failures of `outliers.rs`: a PE that fails often but not five times in a row.
//! Sans-IO: outcomes come in with `now`; at the end of each `interval` the PEs with at
//! least `request_volume` outcomes in it are judged, and the counts start afresh.
//!
//! * failure percentage: a PE failing more than `failure_percentage` % of its requests
//!   (50 %) is an outlier, whatever the others do (this is what catches a flapping PE
//!   in the small pools RSerPool deployments have);
//! * statistics, once at least `minimum_hosts` (5) PEs qualify: a PE whose success
//!   rate is below the mean by more than `stdev_factor` (1.9) standard deviations.
//!   (With population deviations, n PEs can never put one further than (n-1)/√n
//!   deviations from their mean: this needs six PEs or more to eject anyone at 1.9.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rserpool_proto::wire::PoolElementId;

/// PEs counted at most in one interval; others are not judged while it is full.
const MAX_COUNTED: usize = 10_000;

/// When a PE's success rate makes it an outlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuccessRateConfig {
    /// How often PEs are judged (zero: never).
    pub interval: Duration,
    /// Outcomes a PE needs in an interval to be judged.
    pub request_volume: u32,
    /// A PE failing more than this share of its requests is an outlier (0: off).
    pub failure_percentage: u8,
    /// PEs that must qualify for the statistical check.
    pub minimum_hosts: u32,
    /// Standard deviations below the mean, in thousandths (Envoy's 1900 is 1.9).
    pub stdev_factor_permille: u32,
}

impl Default for SuccessRateConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            request_volume: 20,
            failure_percentage: 50,
            minimum_hosts: 5,
            stdev_factor_permille: 1900,
        }
    }
}

/// Why a PE's rate made it an outlier, for the log line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowRate {
    pub pe: PoolElementId,
    /// Its success rate in the interval (0 to 1).
    pub rate: f64,
    /// The mean of the judged PEs' rates.
    pub mean: f64,
}

/// Outcomes of the current interval.
#[derive(Debug)]
pub(crate) struct SuccessRates {
    config: SuccessRateConfig,
    started: Option<Instant>,
    /// Successes and outcomes per PE.
    counts: HashMap<PoolElementId, (u32, u32)>,
}

impl SuccessRates {
    pub(crate) fn new(config: SuccessRateConfig) -> Self {
        Self {
            config,
            started: None,
            counts: HashMap::new(),
        }
    }

    /// Records one outcome of `pe`; when this closes an interval, the PEs judged
    /// outliers in it (empty otherwise: no allocation).
    pub(crate) fn record(&mut self, pe: PoolElementId, ok: bool, now: Instant) -> Vec<LowRate> {
        if self.config.interval.is_zero() {
            return Vec::new();
        }
        let started = *self.started.get_or_insert(now);
        let outliers = if now.saturating_duration_since(started) >= self.config.interval {
            self.started = Some(now);
            let outliers = self.judge();
            self.counts.clear();
            outliers
        } else {
            Vec::new()
        };
        if self.counts.len() < MAX_COUNTED || self.counts.contains_key(&pe) {
            let (successes, total) = self.counts.entry(pe).or_default();
            *successes += u32::from(ok);
            *total += 1;
        }
        outliers
    }

    /// The outliers among the PEs with enough outcomes.
    fn judge(&self) -> Vec<LowRate> {
        let rates: Vec<(PoolElementId, f64)> = self
            .counts
            .iter()
            .filter(|(_, (_, total))| *total >= self.config.request_volume.max(1))
            .map(|(pe, (successes, total))| (*pe, f64::from(*successes) / f64::from(*total)))
            .collect();
        if rates.is_empty() {
            return Vec::new();
        }
        let count = rates.len() as f64;
        let mean = rates.iter().map(|(_, rate)| rate).sum::<f64>() / count;
        let deviation = (rates
            .iter()
            .map(|(_, rate)| (rate - mean).powi(2))
            .sum::<f64>()
            / count)
            .sqrt();
        let statistical = rates.len() >= self.config.minimum_hosts as usize;
        let floor = mean - f64::from(self.config.stdev_factor_permille) / 1000.0 * deviation;
        let most_failures = f64::from(self.config.failure_percentage) / 100.0;
        rates
            .into_iter()
            .filter(|(_, rate)| {
                let failing = self.config.failure_percentage > 0 && 1.0 - rate > most_failures;
                failing || (statistical && *rate < floor)
            })
            .map(|(pe, rate)| LowRate { pe, rate, mean })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `outcomes[i]` (successes, failures) for PE i over one interval, then one
    /// outcome after it: the outliers judged.
    fn judge(config: SuccessRateConfig, outcomes: &[(u32, u32)]) -> Vec<PoolElementId> {
        let mut rates = SuccessRates::new(config);
        let start = crate::now();
        for (index, (successes, failures)) in outcomes.iter().enumerate() {
            let pe = PoolElementId(index as u32 + 1);
            for ok in (0..*successes)
                .map(|_| true)
                .chain((0..*failures).map(|_| false))
            {
                assert!(rates.record(pe, ok, start).is_empty());
            }
        }
        let mut outliers: Vec<_> = rates
            .record(PoolElementId(99), true, start + config.interval)
            .into_iter()
            .map(|low| low.pe)
            .collect();
        outliers.sort_by_key(|pe| pe.0);
        outliers
    }

    #[test]
    fn a_pe_failing_most_of_its_requests_is_an_outlier_even_in_a_small_pool() {
        let config = SuccessRateConfig::default();
        // 40 % success: failing more than half.
        assert_eq!(judge(config, &[(30, 0), (12, 18)]), vec![PoolElementId(2)]);
        // 60 % success is within the failure percentage, and two PEs are too few for
        // the statistics.
        assert!(judge(config, &[(30, 0), (18, 12)]).is_empty());
        // Too few outcomes to judge.
        assert!(judge(config, &[(30, 0), (0, 19)]).is_empty());
        // Off.
        let off = SuccessRateConfig {
            failure_percentage: 0,
            ..config
        };
        assert!(judge(off, &[(30, 0), (12, 18)]).is_empty());
    }

    #[test]
    fn in_a_large_pool_a_rate_far_below_the_others_is_an_outlier() {
        let config = SuccessRateConfig::default();
        // Nine PEs at 100 %, one at 80 %: not failing most, but 3 deviations below.
        let mut outcomes = vec![(100, 0); 9];
        outcomes.push((80, 20));
        assert_eq!(judge(config, &outcomes), vec![PoolElementId(10)]);
        // All alike: nobody is an outlier.
        assert!(judge(config, &[(80, 20); 10]).is_empty());
    }

    #[test]
    fn counts_start_afresh_each_interval() {
        let config = SuccessRateConfig::default();
        let mut rates = SuccessRates::new(config);
        let start = crate::now();
        for _ in 0..30 {
            let _ = rates.record(PoolElementId(1), false, start);
        }
        let later = start + config.interval;
        assert_eq!(rates.record(PoolElementId(1), true, later).len(), 1);
        // The new interval holds only the outcome that closed the old one.
        assert!(
            rates
                .record(PoolElementId(1), true, later + config.interval)
                .is_empty()
        );
    }
}
