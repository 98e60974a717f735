//! A pool user's cache of handle resolution answers (RFC 5352 §3.3): a handlespace of
//! its own whose entries are fresh for the stale-cache value after a registrar sent
//! them, with the pool's policy applied to what it holds (docs/policies.md §3).
//!
//! A hit in the last quarter of an answer's life says the pool should be refreshed
//! (once), so a gateway renews the cache before it runs out instead of sending a burst
//! of resolutions when it does.
//!
//! Serving stale (as RFC 8767 lets DNS resolvers do): with `max_stale` set, the last
//! answer for each pool is kept that much longer, apart from the fresh entries, and is
//! used only when no registrar answers in time (the pool user decides when). A PE
//! reported unreachable leaves it too, and a registrar saying the pool is unknown drops
//! it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::handlespace::{Handlespace, Limits, PoolElementKey};
use crate::rng::SeededRng;
use crate::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::wire::{AsapMessage, HandleResolutionResponse, PolicyType, PoolElement, PoolHandle};

/// PEs chosen from the cache by the pool's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cached {
    pub(crate) policy_type: PolicyType,
    pub(crate) pool_elements: Vec<PoolElement>,
}

#[derive(Debug)]
pub(crate) struct ResolutionCache {
    /// How long an answer is used (zero: the cache is off).
    fresh_for: Duration,
    entries: Handlespace,
    /// When each cached pool's answer is due for a refresh (three quarters into its
    /// life); only pools in the cache.
    refresh_at: BTreeMap<PoolHandle, Instant>,
    /// Cached pools whose last answer held as many PEs as were asked for: the pool may
    /// have more, so a lookup that wants more than the cache holds is a miss (a route
    /// asking for 3 PEs must not cut a DNS answer that asks for all).
    cut_short: BTreeSet<PoolHandle>,
    /// How long past its freshness the last answer may still be served.
    max_stale: Duration,
    last_answers: BTreeMap<PoolHandle, LastAnswer>,
    /// The last answers by the end of their use, to drop them in order.
    last_answers_by_end: BTreeSet<(Instant, PoolHandle)>,
    /// At most this many pools' last answers (the cache's pool bound).
    max_last_answers: usize,
}

/// A registrar's last answer for a pool, kept for serving stale.
#[derive(Debug)]
struct LastAnswer {
    usable_until: Instant,
    policy_type: PolicyType,
    pool_elements: Vec<PoolElement>,
}

impl ResolutionCache {
    pub(crate) fn new(fresh_for: Duration, max_stale: Duration, limits: Limits) -> Self {
        Self {
            fresh_for,
            entries: Handlespace::new(limits),
            refresh_at: BTreeMap::new(),
            cut_short: BTreeSet::new(),
            max_stale,
            last_answers: BTreeMap::new(),
            last_answers_by_end: BTreeSet::new(),
            max_last_answers: limits.max_pools,
        }
    }

    /// Does the cache keep last answers to serve stale, and one for this pool (of any
    /// age)?
    pub(crate) fn may_serve_stale(&self, pool_handle: &PoolHandle) -> bool {
        self.last_answers.contains_key(pool_handle)
    }

    /// The last answer for a pool, if it is still within `max_stale`: up to `items`
    /// of its PEs, starting at a random one so that stale answers spread the load.
    pub(crate) fn stale(
        &mut self,
        pool_handle: &PoolHandle,
        items: Option<u32>,
        now: Instant,
        rng: &mut SeededRng,
    ) -> Option<Cached> {
        self.purge_last_answers(now);
        let answer = self.last_answers.get(pool_handle)?;
        let count = answer.pool_elements.len();
        if count == 0 {
            return None;
        }
        let start = usize::try_from(rng.below(count as u64)).unwrap_or(0);
        let take = items.map_or(count, |n| (n as usize).min(count));
        let pool_elements = answer
            .pool_elements
            .iter()
            .cycle()
            .skip(start)
            .take(take)
            .cloned()
            .collect();
        Some(Cached {
            policy_type: answer.policy_type,
            pool_elements,
        })
    }

    fn keep_last_answer(&mut self, response: &HandleResolutionResponse, now: Instant) {
        let Some(policy_type) = self
            .entries
            .pool(&response.pool_handle)
            .map(|pool| pool.policy_type())
        else {
            return;
        };
        if self.max_stale.is_zero()
            || (self.last_answers.len() >= self.max_last_answers
                && !self.last_answers.contains_key(&response.pool_handle))
        {
            return;
        }
        let answer = LastAnswer {
            usable_until: now + self.fresh_for + self.max_stale,
            policy_type,
            pool_elements: response.pool_elements.clone(),
        };
        self.put_last_answer(response.pool_handle, answer);
    }

    /// Keeps `answer` as the pool's last answer, in place of any before it.
    fn put_last_answer(&mut self, pool_handle: PoolHandle, answer: LastAnswer) {
        self.drop_last_answer(&pool_handle);
        self.last_answers_by_end
            .insert((answer.usable_until, pool_handle));
        self.last_answers.insert(pool_handle, answer);
    }

    fn drop_last_answer(&mut self, pool_handle: &PoolHandle) {
        if let Some(old) = self.last_answers.remove(pool_handle) {
            self.last_answers_by_end
                .remove(&(old.usable_until, *pool_handle));
        }
    }

    fn purge_last_answers(&mut self, now: Instant) {
        while let Some(&(end, pool_handle)) = self.last_answers_by_end.first() {
            if end > now {
                break;
            }
            self.drop_last_answer(&pool_handle);
        }
    }

    pub(crate) fn is_on(&self) -> bool {
        !self.fresh_for.is_zero()
    }

    /// The fresh PEs of a pool by its policy, and whether the caller should refresh
    /// the pool now. None: the cache is off or holds no fresh PE of it.
    pub(crate) fn lookup(
        &mut self,
        pool_handle: &PoolHandle,
        items: Option<u32>,
        now: Instant,
        rng: &mut SeededRng,
    ) -> Option<(Cached, bool)> {
        if !self.is_on() {
            return None;
        }
        self.purge(now);
        if self.cut_short.contains(pool_handle) {
            let held = self.entries.pool(pool_handle).map_or(0, |pool| pool.len());
            if items.is_none_or(|wanted| held < wanted as usize) {
                return None;
            }
        }
        let cached = self.select(pool_handle, items, rng)?;
        let refresh = match self.refresh_at.get_mut(pool_handle) {
            Some(at) if *at <= now => {
                // Asked once: the refresh's answer sets the next time.
                *at = now + self.fresh_for;
                true
            }
            _ => false,
        };
        Some((cached, refresh))
    }

    /// The pool's policy applied to what the cache holds of it.
    pub(crate) fn select(
        &mut self,
        pool_handle: &PoolHandle,
        items: Option<u32>,
        rng: &mut SeededRng,
    ) -> Option<Cached> {
        let count = items.map_or(usize::MAX, |n| n as usize);
        let policy_type = self.entries.pool(pool_handle)?.policy_type();
        let chosen = self.entries.select(pool_handle, count, Some(1), rng)?;
        let pool_elements: Vec<PoolElement> = chosen.iter().map(|e| e.element.clone()).collect();
        (!pool_elements.is_empty()).then_some(Cached {
            policy_type,
            pool_elements,
        })
    }

    /// The cached PEs of a pool (fresh or not), in identifier order.
    pub(crate) fn pool_elements(&self, pool_handle: &PoolHandle) -> Vec<&PoolElement> {
        self.entries
            .pool(pool_handle)
            .map(|pool| pool.elements().map(|e| &e.element).collect())
            .unwrap_or_default()
    }

    /// Stores an answer, each entry fresh for the stale-cache value.
    /// Takes a registrar's answer to a resolution that asked for `asked` PEs.
    pub(crate) fn store(
        &mut self,
        response: &HandleResolutionResponse,
        asked: Option<u32>,
        now: Instant,
    ) {
        if !self.is_on() {
            return;
        }
        self.store_fresh(response, asked, now, self.fresh_for);
        self.keep_last_answer(response, now);
    }

    /// Stores an answer's PEs as fresh for `fresh_for` (refreshed three quarters in).
    fn store_fresh(
        &mut self,
        response: &HandleResolutionResponse,
        asked: Option<u32>,
        now: Instant,
        fresh_for: Duration,
    ) {
        let fresh_ms = u32::try_from(fresh_for.as_millis()).unwrap_or(u32::MAX);
        for pe in &response.pool_elements {
            let mut cached = pe.clone();
            cached.registration_life_ms = fresh_ms;
            if self
                .entries
                .upsert(response.pool_handle, cached.clone(), None, now)
                .is_err()
            {
                // The pool was re-created with another policy: start the cache afresh.
                self.forget_pool(&response.pool_handle);
                let _ = self.entries.upsert(response.pool_handle, cached, None, now);
            }
        }
        if self.entries.pool(&response.pool_handle).is_some() {
            self.refresh_at
                .insert(response.pool_handle, now + fresh_for * 3 / 4);
            let full = asked.is_some_and(|n| response.pool_elements.len() >= n as usize);
            if full {
                self.cut_short.insert(response.pool_handle);
            } else {
                self.cut_short.remove(&response.pool_handle);
            }
        }
    }

    /// Drops a pool's cached PEs and its last answer (the registrar knows no PE of it).
    pub(crate) fn forget_pool(&mut self, pool_handle: &PoolHandle) {
        self.drop_last_answer(pool_handle);
        let keys: Vec<PoolElementKey> = self
            .entries
            .pool(pool_handle)
            .map(|pool| {
                pool.elements()
                    .map(|e| PoolElementKey {
                        pool_handle: *pool_handle,
                        pe_id: e.element.id,
                    })
                    .collect()
            })
            .unwrap_or_default();
        for key in &keys {
            self.remove(key);
        }
    }

    /// A PE the user could not reach: it leaves the fresh entries and the last answer.
    pub(crate) fn unreachable(&mut self, key: &PoolElementKey) {
        self.remove(key);
        if let Some(answer) = self.last_answers.get_mut(&key.pool_handle) {
            answer.pool_elements.retain(|pe| pe.id != key.pe_id);
        }
    }

    /// Removes a cached PE; the pool's refresh time goes with its last PE.
    fn remove(&mut self, key: &PoolElementKey) {
        self.entries.remove(key);
        if self.entries.pool(&key.pool_handle).is_none() {
            self.refresh_at.remove(&key.pool_handle);
            self.cut_short.remove(&key.pool_handle);
        }
    }

    pub(crate) fn purge(&mut self, now: Instant) {
        while let Some(key) = self.entries.expired(now) {
            self.remove(&key);
        }
        self.purge_last_answers(now);
    }

    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.is_on().then(|| self.entries.next_expiry()).flatten()
    }

    /// What the cache knows, for another process (a gateway's binary upgrade): per
    /// pool, its policy type, its PEs (the last answer's when one is kept, else the
    /// fresh ones) and how long they stay fresh and usable, as ages from `now`.
    pub(crate) fn carry(&self, now: Instant, w: &mut SnapshotWriter) {
        let pools: BTreeSet<PoolHandle> = self
            .refresh_at
            .keys()
            .chain(self.last_answers.keys())
            .copied()
            .collect();
        for pool_handle in pools {
            let last = self.last_answers.get(&pool_handle);
            let fresh = self.refresh_at.get(&pool_handle).map(|refresh| {
                // An answer is fresh a quarter of its life past its refresh time.
                (*refresh + self.fresh_for / 4).saturating_duration_since(now)
            });
            let (policy_type, pool_elements) = match (last, self.entries.pool(&pool_handle)) {
                (Some(last), _) => (last.policy_type, last.pool_elements.clone()),
                (None, Some(pool)) => (
                    pool.policy_type(),
                    pool.elements().map(|e| e.element.clone()).collect(),
                ),
                (None, None) => continue,
            };
            let response = AsapMessage::HandleResolutionResponse(HandleResolutionResponse {
                pool_handle,
                policy: None,
                pool_elements,
                error: None,
            });
            let Ok(bytes) = response.encode() else {
                continue;
            };
            w.bytes(&bytes);
            w.u64(u64::from(policy_type.0));
            w.duration(fresh.unwrap_or_default());
            w.duration(last.map_or(Duration::ZERO, |last| {
                last.usable_until.saturating_duration_since(now)
            }));
        }
    }

    /// Takes one pool's answer written by [`ResolutionCache::carry`]: fresh for what
    /// was left of its freshness (at most this cache's `fresh_for`), and kept for
    /// serving stale as long as it was usable there (at most this cache's bound).
    pub(crate) fn adopt(
        &mut self,
        r: &mut SnapshotReader<'_>,
        now: Instant,
    ) -> Result<(), SnapshotError> {
        let decoded = AsapMessage::decode(r.bytes()?).map(|decoded| decoded.message);
        let Ok(AsapMessage::HandleResolutionResponse(response)) = decoded else {
            return Err(SnapshotError::Invalid("pool answer"));
        };
        let policy_type = u32::try_from(r.u64()?)
            .map(PolicyType)
            .map_err(|_| SnapshotError::Invalid("policy type"))?;
        let (fresh, usable) = (r.duration()?, r.duration()?);
        let fresh = fresh.min(self.fresh_for);
        if !fresh.is_zero() {
            self.store_fresh(&response, None, now, fresh);
        }
        let usable = usable.min(self.fresh_for + self.max_stale);
        self.drop_last_answer(&response.pool_handle);
        let room = self.last_answers.len() < self.max_last_answers;
        if !usable.is_zero() && !self.max_stale.is_zero() && room {
            let answer = LastAnswer {
                usable_until: now + usable,
                policy_type,
                pool_elements: response.pool_elements,
            };
            self.put_last_answer(response.pool_handle, answer);
        }
        Ok(())
    }
}
