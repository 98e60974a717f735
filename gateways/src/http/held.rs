//! Memory for request bodies held so a request can be sent again (the replay buffer).
//!
//! HTTP/2 flow control bounds what a client has in flight per connection, but the
//! gateway reads each body into its replay buffer, which gives the window back: 20
//! connections with 100 streams each, every stream stopping 60 KiB into its body, took
//! the process from 37 to 175 MB. Every byte held for replay is therefore charged to
//! its connection and to its listener. A body that finds either budget spent is not
//! held: it streams on to the PE at once, like a body larger than the replay buffer,
//! so its bytes wait in the PE's socket (or the client's flow-control window), not
//! here. Such a request is not sent twice if its PE fails.

use std::sync::Arc;

use metrics::{Counter, Gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The listener's meters for held bodies.
#[derive(Debug, Clone)]
pub(crate) struct HeldMeters {
    /// Bytes held for replay now.
    pub(crate) bytes: Gauge,
    /// Bodies held (at least their first bytes), and bodies not held for the budget.
    pub(crate) held: Counter,
    pub(crate) not_held: Counter,
}

/// What a connection's requests may hold, shared with the listener's other
/// connections.
#[derive(Debug, Clone)]
pub(crate) struct ReplayBudget {
    connection: Arc<Semaphore>,
    listener: Arc<Semaphore>,
    meters: HeldMeters,
}

impl ReplayBudget {
    /// A connection's budget of `per_connection` bytes within the listener's.
    pub(crate) fn new(listener: Arc<Semaphore>, per_connection: usize, meters: HeldMeters) -> Self {
        Self {
            connection: Arc::new(Semaphore::new(per_connection.min(Semaphore::MAX_PERMITS))),
            listener,
            meters,
        }
    }

    /// A listener-wide budget of `bytes`.
    pub(crate) fn listener(bytes: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS)))
    }

    /// Holds `bytes` more of a body in `held`; `false` (and nothing charged) when the
    /// connection's or the listener's budget does not have them.
    pub(crate) fn hold(&self, held: &mut Held, bytes: usize) -> bool {
        let Ok(count) = u32::try_from(bytes) else {
            return false;
        };
        let Ok(connection) = self.connection.clone().try_acquire_many_owned(count) else {
            return false;
        };
        let Ok(listener) = self.listener.clone().try_acquire_many_owned(count) else {
            return false;
        };
        Held::merge(&mut held.connection, connection);
        Held::merge(&mut held.listener, listener);
        if held.bytes == 0 {
            self.meters.held.increment(1);
        }
        held.record(&self.meters.bytes, bytes);
        true
    }

    /// A body was not held for want of budget.
    pub(crate) fn refused(&self) {
        self.meters.not_held.increment(1);
    }
}

/// Bytes charged for one body; given back when dropped (the request is over).
#[derive(Debug, Default)]
pub(crate) struct Held {
    connection: Option<OwnedSemaphorePermit>,
    listener: Option<OwnedSemaphorePermit>,
    bytes: usize,
    gauge: Option<Gauge>,
}

impl Held {
    fn merge(into: &mut Option<OwnedSemaphorePermit>, more: OwnedSemaphorePermit) {
        match into {
            Some(permit) => permit.merge(more),
            None => *into = Some(more),
        }
    }

    fn record(&mut self, gauge: &Gauge, bytes: usize) {
        gauge.increment(bytes as f64);
        self.gauge.get_or_insert_with(|| gauge.clone());
        self.bytes += bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.decrement(self.bytes as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meters() -> HeldMeters {
        HeldMeters {
            bytes: Gauge::noop(),
            held: Counter::noop(),
            not_held: Counter::noop(),
        }
    }

    #[test]
    fn a_connection_holds_its_share_and_the_listener_its_total() {
        let listener = ReplayBudget::listener(100);
        let first = ReplayBudget::new(listener.clone(), 60, meters());
        let second = ReplayBudget::new(listener.clone(), 60, meters());
        let mut a = Held::default();
        assert!(first.hold(&mut a, 40));
        assert!(first.hold(&mut a, 20));
        assert_eq!(a.bytes, 60);
        // The connection's share is spent; its other streams are not held.
        let mut b = Held::default();
        assert!(!first.hold(&mut b, 1));
        // Another connection has its own share, but only what the listener has left.
        let mut c = Held::default();
        assert!(second.hold(&mut c, 40));
        assert!(!second.hold(&mut c, 1));
        assert_eq!(listener.available_permits(), 0);
        // A finished request gives everything back.
        drop(a);
        assert_eq!(listener.available_permits(), 60);
        assert!(first.hold(&mut b, 60));
    }

    #[test]
    fn a_refused_charge_takes_nothing() {
        let listener = ReplayBudget::listener(10);
        let budget = ReplayBudget::new(listener.clone(), 100, meters());
        let mut held = Held::default();
        assert!(!budget.hold(&mut held, 11));
        assert_eq!(listener.available_permits(), 10);
        assert_eq!(budget.connection.available_permits(), 100);
    }
}
