//! The DNS gateway's bounded tables: the response-rate limiter and the negative cache
//! of unknown pools. Both are fixed arrays of slots chosen by a keyed hash, so that a
//! flood of spoofed prefixes or random names can neither grow them nor reset them.

use std::hash::BuildHasher as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rserpool_proto::rate::TokenBucket;
use rserpool_proto::wire::PoolHandle;

/// The slot of `key` among `slots`, by a hash keyed per process (so that nobody can
/// aim a flood at one slot).
fn slot_of(
    hasher: &std::collections::hash_map::RandomState,
    key: &impl std::hash::Hash,
    slots: usize,
) -> usize {
    usize::try_from(hasher.hash_one(key) % slots as u64).unwrap_or_default()
}

/// Per-prefix token buckets for UDP responses, in a fixed table of slots indexed by a
/// keyed hash of the prefix (as Knot's and BIND's RRL tables are bounded): a flood from
/// many prefixes cannot grow it or reset the prefixes being limited. A new prefix takes
/// a slot whose bucket has refilled (it holds nothing worth keeping); a prefix whose
/// slot is held by an active one shares that one's budget (erring towards limiting).
pub(super) struct RateLimiter {
    per_second: u32,
    hasher: std::collections::hash_map::RandomState,
    slots: Mutex<Vec<Option<Bucket>>>,
}

#[derive(Debug, Clone)]
struct Bucket {
    prefix: IpAddr,
    tokens: TokenBucket,
}

/// The slots of a rate limiter (about 3.5 MiB).
const RATE_LIMIT_SLOTS: usize = 65_536;

impl RateLimiter {
    pub(super) fn new(per_second: u32) -> Self {
        Self {
            per_second,
            hasher: std::collections::hash_map::RandomState::new(),
            slots: Mutex::new(vec![None; RATE_LIMIT_SLOTS]),
        }
    }

    fn prefix(address: IpAddr) -> IpAddr {
        match address.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 72) - 1)).into()),
        }
    }

    /// True when `client` may get another response now.
    pub(super) fn allow(&self, client: IpAddr, now: Instant) -> bool {
        let Ok(mut slots) = self.slots.lock() else {
            return true;
        };
        let prefix = Self::prefix(client);
        let index = slot_of(&self.hasher, &prefix, RATE_LIMIT_SLOTS);
        let Some(slot) = slots.get_mut(index) else {
            return true;
        };
        let fresh = || Bucket {
            prefix,
            tokens: TokenBucket::with_burst(self.per_second, self.per_second.max(1)),
        };
        let bucket = slot.get_or_insert_with(fresh);
        if bucket.prefix != prefix && bucket.tokens.is_full(now) {
            *bucket = fresh();
        }
        bucket.tokens.allow(now)
    }
}

/// Pools found unknown (or empty) lately: a name asked again within `ttl` is answered
/// NXDOMAIN without a registrar round trip. Random names still cost one each (that is
/// the rate limiter's job); repeated ones do not.
pub(super) struct NegativeCache {
    ttl: Duration,
    hasher: std::collections::hash_map::RandomState,
    slots: Mutex<Vec<Option<(PoolHandle, Instant)>>>,
}

/// The slots of the negative cache.
const NEGATIVE_SLOTS: usize = 4096;

impl NegativeCache {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            hasher: std::collections::hash_map::RandomState::new(),
            slots: Mutex::new(vec![None; NEGATIVE_SLOTS]),
        }
    }

    fn index(&self, pool: &PoolHandle) -> usize {
        slot_of(&self.hasher, pool, NEGATIVE_SLOTS)
    }

    /// Whether `pool` was found unknown less than `ttl` ago.
    pub(super) fn is_unknown(&self, pool: &PoolHandle, now: Instant) -> bool {
        let Ok(slots) = self.slots.lock() else {
            return false;
        };
        slots
            .get(self.index(pool))
            .and_then(Option::as_ref)
            .is_some_and(|(known, until)| known == pool && now < *until)
    }

    /// `pool` was found unknown (or empty) now.
    pub(super) fn remember(&self, pool: PoolHandle, now: Instant) {
        let index = self.index(&pool);
        if let Ok(mut slots) = self.slots.lock()
            && let Some(slot) = slots.get_mut(index)
        {
            *slot = Some((pool, now + self.ttl));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_share_a_budget() {
        let limiter = RateLimiter::new(3);
        let now = crate::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(limiter.allow(a, now) && limiter.allow(b, now) && limiter.allow(a, now));
        assert!(!limiter.allow(b, now), "one /24, one budget");
        assert!(limiter.allow(other, now), "another prefix is not affected");
        assert!(limiter.allow(a, now + Duration::from_secs(1)), "refilled");
    }

    /// A flood from many prefixes used to reset every bucket once 65 536 were
    /// tracked: a prefix being limited stays limited, and memory stays fixed.
    #[test]
    fn a_flood_from_many_prefixes_does_not_reset_the_limit() {
        let limiter = RateLimiter::new(3);
        let now = crate::now();
        let busy: IpAddr = "192.0.2.1".parse().unwrap();
        while limiter.allow(busy, now) {}
        for i in 0..200_000u32 {
            let spoofed = IpAddr::V4(std::net::Ipv4Addr::from((i + 1) << 8));
            let _ = limiter.allow(spoofed, now);
        }
        assert!(!limiter.allow(busy, now), "still limited");
        assert_eq!(limiter.slots.lock().unwrap().len(), RATE_LIMIT_SLOTS);
        assert!(
            limiter.allow(busy, now + Duration::from_secs(1)),
            "refilled"
        );
    }

    #[test]
    fn unknown_pools_are_remembered_for_a_while() {
        let cache = NegativeCache::new(Duration::from_secs(5));
        let now = crate::now();
        let pool = PoolHandle::new(b"Nobody").unwrap();
        let other = PoolHandle::new(b"Other").unwrap();
        assert!(!cache.is_unknown(&pool, now));
        cache.remember(pool, now);
        assert!(cache.is_unknown(&pool, now + Duration::from_secs(4)));
        assert!(!cache.is_unknown(&other, now));
        assert!(
            !cache.is_unknown(&pool, now + Duration::from_secs(5)),
            "expired"
        );
        for i in 0..20_000u32 {
            cache.remember(
                PoolHandle::new(format!("random-{i}").as_bytes()).unwrap(),
                now,
            );
        }
        assert_eq!(cache.slots.lock().unwrap().len(), NEGATIVE_SLOTS, "bounded");
    }
}
