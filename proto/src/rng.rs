//! The one source of randomness in the core: a small seeded generator.
//!
//! Engines and policies draw from a `SeededRng` built from a seed given by the caller,
//! so the same seed gives the same IDs and selections (ARCHITECTURE.md §2). It is
//! xoshiro256++ (Blackman and Vigna), seeded through SplitMix64: kept here, rather than
//! taken from a crate, so that recorded simulator seeds reproduce across dependency
//! upgrades. Not for secrets.

/// A deterministic pseudo-random generator (xoshiro256++).
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: [u64; 4],
}

impl SeededRng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut splitmix = seed;
        let mut next = || {
            splitmix = splitmix.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = splitmix;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self {
            state: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.state;
        let result = s0.wrapping_add(*s3).rotate_left(23).wrapping_add(*s0);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A uniform value in `0..bound` (`bound` > 0), without modulo bias (Lemire).
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0, "below(0) has no valid result");
        let bound = bound.max(1);
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// A random non-zero 32-bit identifier (PE and registrar IDs; 0 means unknown).
    pub fn nonzero_u32(&mut self) -> u32 {
        loop {
            let value = self.next_u32();
            if value != 0 {
                return value;
            }
        }
    }

    /// A uniform fraction of `span`, for jittering timers: `span * [0, 1)`.
    pub fn fraction_of(&mut self, span: std::time::Duration) -> std::time::Duration {
        let nanos = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return span;
        }
        std::time::Duration::from_nanos(self.below(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let mut a = SeededRng::new(42);
        let mut b = SeededRng::new(42);
        let mut c = SeededRng::new(43);
        let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = SeededRng::new(7);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            let v = rng.below(6);
            counts[usize::try_from(v).unwrap_or(0)] += 1;
        }
        // Each bucket expects 10 000; 5 standard deviations is about 450.
        for count in counts {
            assert!((9_550..=10_450).contains(&count), "{counts:?}");
        }
    }
}
