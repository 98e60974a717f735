//! Token buckets for per-association rate limits (security.md T13, T15).

use std::time::{Duration, Instant};

/// Allows `rate` events per second on average, with bursts of up to `rate`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u32,
    /// Tokens in thousandths, so that slow rates refill smoothly.
    millitokens: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32) -> Self {
        Self {
            rate,
            millitokens: u64::from(rate) * 1000,
            last: None,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let capacity = u64::from(self.rate) * 1000;
        if let Some(last) = self.last {
            let elapsed = now
                .saturating_duration_since(last)
                .min(Duration::from_secs(60));
            let refill = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
                * u64::from(self.rate)
                / 1000;
            self.millitokens = (self.millitokens + refill).min(capacity);
        }
        self.last = Some(now);
        if self.millitokens >= 1000 {
            self.millitokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods, reason = "any instant serves as the epoch")]
    fn bursts_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10);
        let burst = (0..20).filter(|_| bucket.allow(t0)).count();
        assert_eq!(burst, 10);
        assert!(!bucket.allow(t0 + Duration::from_millis(50)));
        assert!(bucket.allow(t0 + Duration::from_millis(150)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..20).filter(|_| bucket.allow(later)).count(), 10);
    }
}
