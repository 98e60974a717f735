//! Requests applied once: a PE remembers the answers it gave by `Idempotency-Key`
//! (draft-ietf-httpapi-idempotency-key-header-06) and answers a repeated key with the
//! first answer instead of applying the request again.
//!
//! A gateway route with `idempotency_keys` sends a POST whose PE died before answering
//! to the next PE; the client, or the gateway, may also send one again after a broken
//! connection. Both are safe only when PEs keep this promise. The table is bounded in
//! entries and in time (keys older than `ttl` are forgotten, the oldest go first when
//! it is full), and it is bound to the request: the same key with another request is
//! refused (§2.7 of the draft: 422), as is a key whose first request is still being
//! applied (409).

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What [`IdempotencyKeys::claim`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim<R> {
    /// A new key: apply the request, then [`IdempotencyKeys::complete`] it (or
    /// [`IdempotencyKeys::abandon`] it when it failed without effect).
    New,
    /// The key's first answer: give it again.
    Repeat(R),
    /// The key's first request is still being applied (409 Conflict).
    InFlight,
    /// The key came with another request (422 Unprocessable Content).
    Mismatch,
}

enum Entry<R> {
    InFlight { fingerprint: u64 },
    Done { fingerprint: u64, answer: R },
}

struct Table<R> {
    entries: HashMap<String, (Entry<R>, Instant)>,
    /// Keys by age, oldest first (a key may appear again after it was forgotten).
    order: VecDeque<(String, Instant)>,
}

/// The answers a PE gave, by key.
pub struct IdempotencyKeys<R> {
    table: Mutex<Table<R>>,
    capacity: usize,
    ttl: Duration,
}

impl<R> std::fmt::Debug for IdempotencyKeys<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyKeys")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A request's fingerprint: its method, target and body.
pub fn fingerprint(method: &str, target: &str, body: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (method, target, body).hash(&mut hasher);
    hasher.finish()
}

impl<R: Clone> IdempotencyKeys<R> {
    /// A table of at most `capacity` keys, each remembered for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            table: Mutex::new(Table {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// Claims `key` for the request with `fingerprint` at `now`.
    pub fn claim(&self, key: &str, fingerprint: u64, now: Instant) -> Claim<R> {
        let Ok(mut table) = self.table.lock() else {
            return Claim::InFlight;
        };
        self.expire(&mut table, now);
        if let Some((entry, _)) = table.entries.get(key) {
            return match entry {
                Entry::InFlight { fingerprint: first }
                | Entry::Done {
                    fingerprint: first, ..
                } if *first != fingerprint => Claim::Mismatch,
                Entry::InFlight { .. } => Claim::InFlight,
                Entry::Done { answer, .. } => Claim::Repeat(answer.clone()),
            };
        }
        while table.entries.len() >= self.capacity {
            let Some((oldest, at)) = table.order.pop_front() else {
                break;
            };
            if table
                .entries
                .get(&oldest)
                .is_some_and(|(_, since)| *since == at)
            {
                table.entries.remove(&oldest);
            }
        }
        table
            .entries
            .insert(key.to_owned(), (Entry::InFlight { fingerprint }, now));
        table.order.push_back((key.to_owned(), now));
        Claim::New
    }

    /// The request claimed with `key` was applied and answered `answer`.
    pub fn complete(&self, key: &str, answer: R) {
        if let Ok(mut table) = self.table.lock()
            && let Some((entry, _)) = table.entries.get_mut(key)
            && let Entry::InFlight { fingerprint } = *entry
        {
            *entry = Entry::Done {
                fingerprint,
                answer,
            };
        }
    }

    /// The request claimed with `key` failed without effect: the key may come again.
    pub fn abandon(&self, key: &str) {
        if let Ok(mut table) = self.table.lock()
            && table
                .entries
                .get(key)
                .is_some_and(|(entry, _)| matches!(entry, Entry::InFlight { .. }))
        {
            table.entries.remove(key);
        }
    }

    fn expire(&self, table: &mut Table<R>, now: Instant) {
        while let Some((key, at)) = table.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            let (key, at) = (key.clone(), *at);
            table.order.pop_front();
            if table
                .entries
                .get(&key)
                .is_some_and(|(_, since)| *since == at)
            {
                table.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed start: the table only compares the times it is given.
    fn start() -> Instant {
        crate::driver::now()
    }

    #[test]
    fn a_repeated_key_gets_the_first_answer_and_another_request_is_refused() {
        let keys = IdempotencyKeys::new(10, Duration::from_secs(60));
        let now = start();
        assert_eq!(keys.claim("a", 1, now), Claim::New);
        assert_eq!(keys.claim("a", 1, now), Claim::InFlight);
        keys.complete("a", "first");
        assert_eq!(keys.claim("a", 1, now), Claim::Repeat("first"));
        assert_eq!(keys.claim("a", 2, now), Claim::Mismatch);
        assert_eq!(keys.claim("b", 1, now), Claim::New);
        keys.abandon("b");
        assert_eq!(keys.claim("b", 1, now), Claim::New);
    }

    #[test]
    fn keys_are_forgotten_after_their_time_and_when_the_table_is_full() {
        let keys = IdempotencyKeys::new(2, Duration::from_secs(60));
        let now = start();
        for key in ["a", "b", "c"] {
            assert_eq!(keys.claim(key, 1, now), Claim::New);
            keys.complete(key, key);
        }
        // "a" went to make room; "b" and "c" are remembered.
        assert_eq!(keys.claim("b", 1, now), Claim::Repeat("b"));
        assert_eq!(keys.claim("a", 1, now), Claim::New);
        let later = now + Duration::from_secs(61);
        assert_eq!(keys.claim("c", 1, later), Claim::New);
        assert!(keys.table.lock().unwrap().entries.len() <= 2);
    }
}
