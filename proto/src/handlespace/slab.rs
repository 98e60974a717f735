//! Storage with stable `u32` slots and slot reuse: pools in the handlespace and PEs in a
//! pool live in slabs, so the indexes can refer to them with 4-byte slots.

/// Items at stable slots; freed slots are reused.
#[derive(Debug, Clone)]
pub(crate) struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    /// Stores an item and returns its slot.
    pub(crate) fn insert(&mut self, item: T) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                if let Some(place) = self.items.get_mut(slot as usize) {
                    *place = Some(item);
                }
                slot
            }
            None => {
                self.items.push(Some(item));
                u32::try_from(self.items.len() - 1).unwrap_or(u32::MAX)
            }
        }
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&T> {
        self.items.get(slot as usize)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.items.get_mut(slot as usize)?.as_mut()
    }

    /// Takes an item out; its slot will be reused.
    pub(crate) fn remove(&mut self, slot: u32) -> Option<T> {
        let item = self.items.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        Some(item)
    }
}
