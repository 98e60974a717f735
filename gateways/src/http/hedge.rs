//! Hedged requests: when a request has had no answer for the route's hedge delay, it
//! goes to the next PE as well and the first answer worth delivering wins (the
//! decisions are `attempts.rs`'s). A frozen or black-holed PE then costs a request the
//! hedge delay, not the first-byte timeout.
//!
//! The delay is fixed, or the route's observed 99th percentile of response-head times
//! ("The Tail at Scale", Dean and Barroso, 2013): a request slower than 99 % of its
//! route's is unlikely to be merely unlucky. [`Latencies`] keeps that percentile in a
//! decaying histogram (sans-IO: the caller measures); [`Lanes`] runs the attempt and
//! its hedge side by side with the timer that starts the hedge.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

/// When a request without an answer is sent to the next PE as well.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hedge {
    /// Never (the default, as in Envoy: a hedge doubles the request).
    #[default]
    Off,
    /// After this long without a response head.
    After(Duration),
    /// After the route's observed 99th percentile of response-head times, never below
    /// [`HEDGE_FLOOR`], once [`MIN_SAMPLES`] responses were seen (no hedge before).
    ObservedP99,
}

/// The shortest delay an observed percentile gives.
pub const HEDGE_FLOOR: Duration = Duration::from_millis(10);
/// Responses seen before an observed percentile is trusted.
pub const MIN_SAMPLES: u32 = 100;

/// Quarter octaves of microseconds: bucket `4e + f` holds times in
/// `[(4 + f) 2^e / 4, (5 + f) 2^e / 4)` µs; the last one everything from 2^31 µs (36 min).
const BUCKETS: usize = 128;
/// At this many samples every count is halved: the percentile follows the last few
/// thousand responses.
const DECAY_AT: u32 = 4096;
/// Samples between two estimates (the estimate walks the buckets).
const ESTIMATE_EVERY: u32 = 32;

/// A route's recent response-head times.
#[derive(Debug)]
pub(crate) struct Latencies {
    buckets: [u32; BUCKETS],
    total: u32,
    since_estimate: u32,
    p99: Option<Duration>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            total: 0,
            since_estimate: 0,
            p99: None,
        }
    }
}

impl Latencies {
    /// Records one response head after `elapsed`.
    pub(crate) fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let octave = 63 - micros.leading_zeros();
        let quarter = if octave >= 2 {
            (micros >> (octave - 2)) & 3
        } else {
            (micros << (2 - octave)) & 3
        };
        let index = usize::try_from(u64::from(octave) * 4 + quarter).unwrap_or(usize::MAX);
        let last = BUCKETS - 1;
        if let Some(count) = self.buckets.get_mut(index.min(last)) {
            *count = count.saturating_add(1);
        }
        self.total += 1;
        if self.total >= DECAY_AT {
            self.buckets.iter_mut().for_each(|count| *count /= 2);
            self.total = self.buckets.iter().sum();
        }
        self.since_estimate += 1;
        if self.since_estimate >= ESTIMATE_EVERY || self.p99.is_none() {
            self.since_estimate = 0;
            self.p99 = self.estimate();
        }
    }

    /// The 99th percentile (the upper end of its bucket), once there are enough samples.
    fn estimate(&self) -> Option<Duration> {
        if self.total < MIN_SAMPLES {
            return None;
        }
        // At most 1 % of the samples lie above the percentile.
        let slowest = self.total / 100;
        let mut seen = 0;
        for (index, count) in self.buckets.iter().enumerate().rev() {
            seen += count;
            if seen > slowest {
                let (octave, quarter) = (index / 4, index % 4);
                let upper = ((4 + quarter as u64 + 1) << octave) >> 2;
                return Some(Duration::from_micros(upper));
            }
        }
        None
    }

    /// How long a request waits for an answer before it is hedged; `None`: no hedge.
    pub(crate) fn delay(&self, hedge: Hedge) -> Option<Duration> {
        match hedge {
            Hedge::Off => None,
            Hedge::After(delay) => Some(delay),
            Hedge::ObservedP99 => self.p99.map(|p99| p99.max(HEDGE_FLOOR)),
        }
    }
}

/// What [`Lanes::next`] saw.
pub(crate) enum Event<T> {
    /// The attempt at this candidate ended.
    Done(usize, T),
    /// The hedge delay passed.
    HedgeDue,
}

/// Up to two attempts of a request (futures of one type) and the hedge timer, polled
/// together. The first lane is pinned on the caller's stack; the second, needed only
/// by a hedge, is boxed when used, so that a request's future stays as small as one
/// attempt makes it (it is moved when hyper boxes it).
pub(crate) struct Lanes<'a, F> {
    first: (Pin<&'a mut Option<F>>, usize),
    second: (Option<Pin<Box<F>>>, usize),
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<'a, F: Future> Lanes<'a, F> {
    pub(crate) fn new(first: Pin<&'a mut Option<F>>) -> Self {
        Self {
            first: (first, 0),
            second: (None, 0),
            timer: None,
        }
    }

    /// Starts the attempt at candidate `pe` in a free lane (attempts.rs allows two at
    /// once, and a finished lane is emptied).
    pub(crate) fn start(&mut self, pe: usize, attempt: F) {
        if self.first.0.is_none() {
            self.first.0.set(Some(attempt));
            self.first.1 = pe;
        } else {
            self.second = (Some(Box::pin(attempt)), pe);
        }
    }

    /// Arms the hedge timer (`None`: disarms it).
    pub(crate) fn hedge_at(&mut self, at: Option<Instant>) {
        self.timer = at.map(|at| Box::pin(tokio::time::sleep_until(at.into())));
    }

    /// Drops every attempt under way (their connections close).
    pub(crate) fn clear(&mut self) {
        self.first.0.set(None);
        self.second.0 = None;
        self.timer = None;
    }

    /// Waits for an attempt to end or for the hedge timer.
    pub(crate) async fn next(&mut self) -> Event<F::Output> {
        std::future::poll_fn(|cx| {
            if let Some(attempt) = self.first.0.as_mut().as_pin_mut()
                && let Poll::Ready(output) = attempt.poll(cx)
            {
                self.first.0.set(None);
                return Poll::Ready(Event::Done(self.first.1, output));
            }
            if let Some(attempt) = &mut self.second.0
                && let Poll::Ready(output) = attempt.as_mut().poll(cx)
            {
                self.second.0 = None;
                return Poll::Ready(Event::Done(self.second.1, output));
            }
            if let Some(timer) = &mut self.timer
                && timer.as_mut().poll(cx).is_ready()
            {
                self.timer = None;
                return Poll::Ready(Event::HedgeDue);
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latencies(times_ms: impl IntoIterator<Item = u64>) -> Latencies {
        let mut latencies = Latencies::default();
        for ms in times_ms {
            latencies.record(Duration::from_millis(ms));
        }
        latencies
    }

    #[test]
    fn the_observed_p99_needs_samples_and_follows_the_slowest_percent() {
        assert_eq!(latencies(0..99).delay(Hedge::ObservedP99), None);
        // 995 answers in 20 ms, 5 in 400 ms: the percentile is the fast ones' bucket.
        let mostly_fast = latencies((0..1000).map(|i| if i % 200 == 0 { 400 } else { 20 }));
        let p99 = mostly_fast.delay(Hedge::ObservedP99).unwrap();
        assert!(
            p99 >= Duration::from_millis(20) && p99 <= Duration::from_millis(25),
            "{p99:?}"
        );
        // 3 % slow ones: the percentile is theirs.
        let slow_tail = latencies((0..1000).map(|i| if i % 100 < 3 { 400 } else { 20 }));
        let p99 = slow_tail.delay(Hedge::ObservedP99).unwrap();
        assert!(p99 >= Duration::from_millis(400) && p99 <= Duration::from_millis(460));
        // Fast routes hedge no earlier than the floor.
        let fast = latencies((0..200).map(|_| 1));
        assert_eq!(fast.delay(Hedge::ObservedP99), Some(HEDGE_FLOOR));
        assert_eq!(fast.delay(Hedge::Off), None);
    }

    #[test]
    fn old_samples_fade() {
        // A slow spell's weight halves every ~2 000 samples.
        let mut latencies = latencies((0..2000).map(|_| 300));
        for _ in 0..20_000 {
            latencies.record(Duration::from_millis(20));
        }
        let p99 = latencies.delay(Hedge::ObservedP99).unwrap();
        assert!(p99 <= Duration::from_millis(25), "{p99:?}");
    }

    #[test]
    fn buckets_cover_every_time() {
        let mut latencies = Latencies::default();
        for micros in [0, 1, 2, 3, 7, 1 << 20, u64::MAX] {
            latencies.record(Duration::from_micros(micros));
        }
        assert_eq!(latencies.total, 7);
        assert_eq!(latencies.buckets.iter().sum::<u32>(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn lanes_report_the_first_attempt_to_end_and_the_timer() {
        let first = std::pin::pin!(None);
        let mut lanes = Lanes::new(first);
        let start = crate::now();
        let answer = |after: u64, value: u32| async move {
            tokio::time::sleep(Duration::from_millis(after)).await;
            value
        };
        lanes.start(0, answer(500, 0));
        lanes.hedge_at(Some(start + Duration::from_millis(100)));
        assert!(matches!(lanes.next().await, Event::HedgeDue));
        lanes.start(1, answer(50, 1));
        assert!(matches!(lanes.next().await, Event::Done(1, 1)));
        assert!(matches!(lanes.next().await, Event::Done(0, 0)));
        assert!(crate::now() >= start + Duration::from_millis(500));
    }
}
