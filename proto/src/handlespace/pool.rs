//! One pool: its fixed properties (RFC 5351, RFC 5356: the first PE sets the policy type
//! and transport), its PEs by slot and identifier, and the selection structure for its
//! policy.

use std::collections::{BTreeMap, BTreeSet};

use crate::policy::{self, Family, Fenwick};
use crate::wire::{PolicyType, PoolElement, PoolElementId, PoolHandle, TransportUse};

use super::slab::Slab;
use super::types::{PoolElementEntry, Refusal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct OrderKey {
    pub(super) primary: u64,
    pub(super) secondary: u64,
    pub(super) seq: u64,
    pub(super) slot: u32,
}

#[derive(Debug, Clone)]
pub(super) enum Selector {
    Ordered(BTreeSet<OrderKey>),
    Weighted(Fenwick),
}

/// Where a PE is stored: its pool's slot and its slot in the pool. The internal
/// indexes key on this 8-byte value rather than on the 40-byte (pool handle, PE id), to
/// keep the handlespace under 1 KiB per PE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Loc {
    pub(super) pool: u32,
    pub(super) slot: u32,
}

/// One pool: its fixed properties, its PEs and their selection structure.
#[derive(Debug, Clone)]
pub struct Pool {
    pub(super) handle: PoolHandle,
    pub(super) policy_type: PolicyType,
    pub(super) transport_type: u16,
    pub(super) transport_use: TransportUse,
    /// PEs by slot.
    pub(super) slots: Slab<PoolElementEntry>,
    pub(super) by_id: BTreeMap<PoolElementId, u32>,
    pub(super) selector: Selector,
}

impl Pool {
    pub(super) fn new(handle: PoolHandle, element: &PoolElement) -> Self {
        let policy_type = element.policy.policy_type();
        Self {
            handle,
            policy_type,
            transport_type: element.user_transport.protocol.param_type(),
            transport_use: element.user_transport.protocol.transport_use(),
            slots: Slab::default(),
            by_id: BTreeMap::new(),
            selector: match Family::of(policy_type) {
                Family::Ordered => Selector::Ordered(BTreeSet::new()),
                Family::Weighted => Selector::Weighted(Fenwick::default()),
            },
        }
    }

    /// The pool handle.
    pub fn handle(&self) -> &PoolHandle {
        &self.handle
    }

    /// The pool's policy type (fixed by its first PE).
    pub fn policy_type(&self) -> PolicyType {
        self.policy_type
    }

    /// The pool's transport use (fixed by its first PE).
    pub fn transport_use(&self) -> TransportUse {
        self.transport_use
    }

    /// Number of PEs.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No PEs (an empty pool is removed at once, so only transiently true).
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// A PE by identifier.
    pub fn get(&self, pe_id: PoolElementId) -> Option<&PoolElementEntry> {
        let slot = *self.by_id.get(&pe_id)?;
        self.entry(slot)
    }

    /// The PEs in identifier order.
    pub fn elements(&self) -> impl Iterator<Item = &PoolElementEntry> {
        self.by_id.values().filter_map(|&slot| self.entry(slot))
    }

    pub(super) fn entry(&self, slot: u32) -> Option<&PoolElementEntry> {
        self.slots.get(slot)
    }

    pub(super) fn entry_mut(&mut self, slot: u32) -> Option<&mut PoolElementEntry> {
        self.slots.get_mut(slot)
    }

    pub(super) fn order_key(entry: &PoolElementEntry, slot: u32) -> OrderKey {
        let (primary, secondary) = policy::order_key(&entry.element.policy, &entry.state);
        OrderKey {
            primary,
            secondary,
            seq: entry.state.seq,
            slot,
        }
    }

    /// Takes a PE out of the selection structure (before its state changes).
    pub(super) fn unindex(&mut self, slot: u32) {
        // Borrow the slot and the selector separately (disjoint fields).
        let Some(entry) = self.slots.get(slot) else {
            return;
        };
        match &mut self.selector {
            Selector::Ordered(set) => {
                let key = Self::order_key(entry, slot);
                set.remove(&key);
            }
            Selector::Weighted(fenwick) => fenwick.set(slot as usize, 0),
        }
    }

    /// Puts a PE (back) into the selection structure.
    pub(super) fn index(&mut self, slot: u32) {
        let Some(entry) = self.slots.get(slot) else {
            return;
        };
        match &mut self.selector {
            Selector::Ordered(set) => {
                let key = Self::order_key(entry, slot);
                set.insert(key);
            }
            Selector::Weighted(fenwick) => {
                let share = policy::share(&entry.element.policy, &entry.state);
                while fenwick.len() <= slot as usize {
                    fenwick.push(0);
                }
                fenwick.set(slot as usize, share);
            }
        }
    }

    /// The WRR round the pool is serving: the lowest round among weighted members.
    pub(super) fn current_round(&self) -> u64 {
        match &self.selector {
            Selector::Ordered(set) => set
                .first()
                .filter(|_| self.policy_type == PolicyType::WEIGHTED_ROUND_ROBIN)
                .map_or(0, |key| {
                    if key.primary == u64::MAX {
                        0
                    } else {
                        key.primary
                    }
                }),
            Selector::Weighted(_) => 0,
        }
    }

    pub(super) fn insert(&mut self, entry: PoolElementEntry) -> u32 {
        let pe_id = entry.element.id;
        let slot = self.slots.insert(entry);
        self.by_id.insert(pe_id, slot);
        self.index(slot);
        slot
    }

    pub(super) fn remove(&mut self, pe_id: PoolElementId) -> Option<PoolElementEntry> {
        let slot = self.by_id.remove(&pe_id)?;
        self.unindex(slot);
        self.slots.remove(slot)
    }

    /// Checks that a PE fits this pool (docs/policies.md §4).
    pub(super) fn check_consistency(&self, element: &PoolElement) -> Result<(), Refusal> {
        let policy_type = element.policy.policy_type();
        if policy_type != self.policy_type {
            return Err(Refusal::InconsistentPolicy {
                pool: self.policy_type,
                offered: policy_type,
                parameter: element.policy.to_parameter_bytes(),
            });
        }
        let transport_type = element.user_transport.protocol.param_type();
        if transport_type != self.transport_type {
            return Err(Refusal::InconsistentTransport {
                pool: self.transport_type,
                offered: transport_type,
                parameter: element
                    .user_transport
                    .to_parameter_bytes()
                    .unwrap_or_default(),
            });
        }
        let transport_use = element.user_transport.protocol.transport_use();
        if transport_use != self.transport_use {
            return Err(Refusal::InconsistentDataControl {
                pool: self.transport_use,
                offered: transport_use,
            });
        }
        Ok(())
    }
}
