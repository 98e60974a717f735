//! Log lines that peers can provoke, held to a rate.

/// A warning that peers can provoke at will (a failed handshake, a refused request):
/// written at most once per interval, with the count of the lines held back since.
#[derive(Debug)]
pub struct RateLimitedLog {
    interval: std::time::Duration,
    /// When the last line was written, and the lines suppressed since.
    state: std::sync::Mutex<(Option<tokio::time::Instant>, u64)>,
}

impl RateLimitedLog {
    pub const fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be written now (with the number held back
    /// since the last one); `None` when it is to be held back.
    pub fn permit(&self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|at| now.duration_since(at) < self.interval) {
            *suppressed += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(suppressed))
    }
}
