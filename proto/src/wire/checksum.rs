//! The PE checksum: a 16-bit one's-complement sum over (pool handle, PE identifier)
//! pairs, exactly as rsplib computes it (docs/wire.md §4). Registrars advertise it in
//! ENRP_PRESENCE for the PEs they own and compare it to detect divergence.

use super::params::{PoolElementId, PoolHandle};

/// Adds 16-bit big-endian words; an odd trailing byte is padded with zero.
fn sum_words(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|pair| match *pair {
            [high, low] => u64::from(u16::from_be_bytes([high, low])),
            [high] => u64::from(u16::from_be_bytes([high, 0])),
            _ => 0,
        })
        .sum()
}

/// The unfolded contribution of one PE. The PE identifier's words restart at an even
/// offset: this is not the checksum of `handle || id` when the handle has odd length.
pub fn pe_sum(pool_handle: &PoolHandle, pe_id: PoolElementId) -> u64 {
    sum_words(pool_handle.as_bytes()) + sum_words(&pe_id.0.to_be_bytes())
}

/// An incrementally maintained checksum: add a PE when it appears, remove it when it
/// goes or changes owner; order does not matter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChecksumAccumulator(u64);

impl ChecksumAccumulator {
    /// Counts one PE in.
    pub fn add(&mut self, pool_handle: &PoolHandle, pe_id: PoolElementId) {
        self.0 = self.0.wrapping_add(pe_sum(pool_handle, pe_id));
    }

    /// Counts one PE out (it must have been added).
    pub fn remove(&mut self, pool_handle: &PoolHandle, pe_id: PoolElementId) {
        self.0 = self.0.wrapping_sub(pe_sum(pool_handle, pe_id));
    }

    /// The 16-bit value sent in the PE Checksum parameter: end-around carry fold, then
    /// one's complement. The empty set gives 0xFFFF.
    pub fn value(self) -> u16 {
        let mut acc = self.0;
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }
}

/// The checksum of a set of PEs, computed from scratch.
pub fn handlespace_checksum<'a>(
    pool_elements: impl IntoIterator<Item = (&'a PoolHandle, PoolElementId)>,
) -> u16 {
    let mut acc = ChecksumAccumulator::default();
    for (handle, id) in pool_elements {
        acc.add(handle, id);
    }
    acc.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(s: &str) -> PoolHandle {
        PoolHandle::new(s.as_bytes()).expect("valid handle")
    }

    /// docs/wire.md §4: the worked example and the other reference values.
    #[test]
    fn matches_the_worked_values_of_wire_format_8_2() {
        let echo = handle("EchoPool");
        assert_eq!(pe_sum(&echo, PoolElementId(0x1a2b_3c4d)), 0x1_c425);
        assert_eq!(pe_sum(&echo, PoolElementId(0x5a6b_7c8d)), 0x2_44a5);
        let both = [
            (&echo, PoolElementId(0x1a2b_3c4d)),
            (&echo, PoolElementId(0x5a6b_7c8d)),
        ];
        assert_eq!(handlespace_checksum(both), 0xf731);
        assert_eq!(
            handlespace_checksum([(&echo, PoolElementId(0x1a2b_3c4d))]),
            0x3bd9
        );
        assert_eq!(
            handlespace_checksum([(&echo, PoolElementId(0x5a6b_7c8d))]),
            0xbb58
        );
        let odd = handle("Pool1");
        assert_eq!(
            handlespace_checksum([(&odd, PoolElementId(0x1a2b_3c4d))]),
            0xb8ab
        );
        assert_eq!(handlespace_checksum([]), 0xffff);
    }

    #[test]
    fn removing_restores_the_previous_value() {
        let echo = handle("EchoPool");
        let mut acc = ChecksumAccumulator::default();
        acc.add(&echo, PoolElementId(0x1a2b_3c4d));
        let one = acc.value();
        acc.add(&echo, PoolElementId(0x5a6b_7c8d));
        assert_eq!(acc.value(), 0xf731);
        acc.remove(&echo, PoolElementId(0x5a6b_7c8d));
        assert_eq!(acc.value(), one);
        acc.remove(&echo, PoolElementId(0x1a2b_3c4d));
        assert_eq!(acc.value(), 0xffff);
    }
}
