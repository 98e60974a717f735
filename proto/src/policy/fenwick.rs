//! A Fenwick (binary indexed) tree of shares: weighted random draws and share updates
//! in O(log n), so weighted policies scale to 100 000-PE pools.

/// Shares indexed by slot, with prefix sums.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fenwick {
    /// The shares themselves, by slot.
    values: Vec<u64>,
    /// `tree[i - 1]` holds the sum of `values[i - lowbit(i) .. i]` (1-based `i`).
    tree: Vec<u64>,
}

const fn lowbit(i: usize) -> usize {
    i & i.wrapping_neg()
}

impl Fenwick {
    /// Appends a slot with the given share.
    pub(crate) fn push(&mut self, value: u64) {
        let i = self.values.len() + 1;
        // The new node covers (i - lowbit(i), i]: the earlier part is a prefix difference.
        let covered = self.prefix(i - 1) - self.prefix(i - lowbit(i));
        self.values.push(value);
        self.tree.push(covered + value);
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    /// Sum of the shares of slots `0..count`.
    fn prefix(&self, mut count: usize) -> u64 {
        let mut sum = 0;
        while count > 0 {
            sum += self.tree.get(count - 1).copied().unwrap_or(0);
            count -= lowbit(count);
        }
        sum
    }

    pub(crate) fn total(&self) -> u64 {
        self.prefix(self.values.len())
    }

    pub(crate) fn get(&self, slot: usize) -> u64 {
        self.values.get(slot).copied().unwrap_or(0)
    }

    /// Sets the share of a slot.
    pub(crate) fn set(&mut self, slot: usize, value: u64) {
        let Some(old) = self.values.get_mut(slot) else {
            return;
        };
        let (increase, delta) = if value >= *old {
            (true, value - *old)
        } else {
            (false, *old - value)
        };
        *old = value;
        let mut i = slot + 1;
        while let Some(node) = self.tree.get_mut(i - 1) {
            if increase {
                *node += delta;
            } else {
                *node -= delta;
            }
            i += lowbit(i);
        }
    }

    /// The slot whose cumulative interval contains `target` (< total).
    pub(crate) fn find(&self, mut target: u64) -> Option<usize> {
        if target >= self.total() {
            return None;
        }
        let mut position = 0;
        let mut step = self.values.len().checked_next_power_of_two()?;
        while step > 0 {
            let next = position + step;
            if let Some(&sum) = self.tree.get(next.wrapping_sub(1))
                && next <= self.values.len()
                && sum <= target
            {
                position = next;
                target -= sum;
            }
            step >>= 1;
        }
        Some(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_sums_and_search_match_a_linear_scan() {
        let mut f = Fenwick::default();
        let values = [3u64, 0, 5, 1, 0, 0, 7, 2, 9, 4, 0, 6];
        for v in values {
            f.push(v);
        }
        assert_eq!(f.total(), values.iter().sum::<u64>());
        f.set(2, 1);
        f.set(5, 3);
        let current: Vec<u64> = (0..f.len()).map(|i| f.get(i)).collect();
        let mut cumulative = 0;
        for (slot, &value) in current.iter().enumerate() {
            for t in cumulative..cumulative + value {
                assert_eq!(f.find(t), Some(slot), "target {t}");
            }
            cumulative += value;
        }
        assert_eq!(f.find(cumulative), None);
    }
}
