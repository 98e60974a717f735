//! The one token bucket: per-association rate limits in the registrar (RFC 5355 §5;
//! security.md T13, T15), the DNS gateway's per-prefix response limits and the HTTP
//! gateway's retry budget. Time comes in as `now`.

use std::time::{Duration, Instant};

/// `rate` tokens a second up to `burst`; full at the start. Tokens are counted in
/// thousandths, so slow rates refill smoothly and fractions can be deposited.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u32,
    burst: u32,
    millitokens: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// `rate` a second with bursts of up to `rate`.
    pub fn new(rate: u32) -> Self {
        Self::with_burst(rate, rate)
    }

    /// `rate` a second with bursts of up to `burst`.
    pub fn with_burst(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            burst,
            millitokens: u64::from(burst) * 1000,
            last: None,
        }
    }

    fn capacity(&self) -> u64 {
        u64::from(self.burst) * 1000
    }

    /// Adds what the time since the last look earned.
    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            // Bounded so that the product cannot overflow; a minute refills any bucket.
            let elapsed = now
                .saturating_duration_since(last)
                .min(Duration::from_secs(60));
            let earned = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
                * u64::from(self.rate)
                / 1000;
            self.millitokens = (self.millitokens + earned).min(self.capacity());
        }
        self.last = Some(now);
    }

    /// Takes one token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.millitokens >= 1000 {
            self.millitokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Adds `millitokens` thousandths of a token (up to the burst).
    pub fn deposit(&mut self, millitokens: u64) {
        self.millitokens = self
            .millitokens
            .saturating_add(millitokens)
            .min(self.capacity());
    }

    /// Whether the bucket has refilled completely by `now` (it holds nothing a newcomer
    /// would lose by taking it over).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.millitokens >= self.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any instant serves as the epoch: the bucket reads no clock, only `now`.
    #[allow(
        clippy::disallowed_methods,
        reason = "an arbitrary epoch for the tests"
    )]
    fn epoch() -> Instant {
        Instant::now()
    }

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let t0 = epoch();
        let mut bucket = TokenBucket::new(10);
        let burst = (0..20).filter(|_| bucket.allow(t0)).count();
        assert_eq!(burst, 10);
        assert!(!bucket.allow(t0 + Duration::from_millis(50)));
        assert!(bucket.allow(t0 + Duration::from_millis(150)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..20).filter(|_| bucket.allow(later)).count(), 10);
    }

    #[test]
    fn deposits_add_fractions_up_to_the_burst() {
        let t0 = epoch();
        let mut bucket = TokenBucket::with_burst(0, 2);
        assert!(bucket.allow(t0) && bucket.allow(t0) && !bucket.allow(t0));
        bucket.deposit(500);
        assert!(!bucket.allow(t0), "half a token is not one");
        bucket.deposit(500);
        assert!(bucket.allow(t0));
        bucket.deposit(10_000);
        assert!(bucket.is_full(t0));
        assert_eq!(
            (0..5).filter(|_| bucket.allow(t0)).count(),
            2,
            "capped at the burst"
        );
    }
}
