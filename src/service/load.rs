//! Load from counted work: a PE's open sessions or running jobs over the most it
//! takes, to report with [`super::PoolElementService::set_load`] as it changes
//! (rsplib's TCP-like servers report sessions / max sessions, its CalcApp PEs jobs /
//! max jobs).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Work a PE has under way (sessions, jobs), and the most it takes: its load is
/// `count / max`.
#[derive(Debug)]
pub struct Occupancy {
    count: AtomicUsize,
    max: usize,
    changed: Notify,
}

impl Occupancy {
    /// No work yet; `max` (at least 1) is full load.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            count: AtomicUsize::new(0),
            max: max.max(1),
            changed: Notify::new(),
        })
    }

    /// One more piece of work, counted until the place is dropped, even beyond `max`
    /// (a session the PE takes anyway: its load then says more than 100 %, which the
    /// policies cap).
    pub fn take(self: &Arc<Self>) -> Place {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
        Place(self.clone())
    }

    /// One more piece of work, unless `max` are under way (a job the PE would refuse).
    pub fn try_take(self: &Arc<Self>) -> Option<Place> {
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                (count < self.max).then_some(count + 1)
            })
            .ok()?;
        self.changed.notify_one();
        Some(Place(self.clone()))
    }

    /// Work under way now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// `count / max` (above 1 when more than `max` were taken).
    pub fn load(&self) -> f64 {
        self.count() as f64 / self.max as f64
    }

    /// Waits until the count changed since the last wait returned (one waiter: the
    /// task that reports the load).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// One piece of work counted in an [`Occupancy`]; dropping it ends it.
#[derive(Debug)]
pub struct Place(Arc<Occupancy>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn places_count_until_dropped_and_try_take_stops_at_max() {
        let occupancy = Occupancy::new(2);
        let first = occupancy.try_take().unwrap();
        let second = occupancy.take();
        assert!(occupancy.try_take().is_none());
        let third = occupancy.take();
        assert_eq!(occupancy.count(), 3);
        assert!((occupancy.load() - 1.5).abs() < 1e-9);
        drop((first, second, third));
        assert_eq!(occupancy.count(), 0);
        assert!(occupancy.try_take().is_some());
    }
}
