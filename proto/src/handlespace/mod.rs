//! The handlespace: every pool and pool element a registrar (or a pool user's cache)
//! knows, with the indexes its procedures need (RFC 5352 §3.1-3.5, RFC 5353 §3,
//! docs/policies.md).
//!
//! Every operation a registrar performs is O(log n) or better:
//! * by pool handle (`BTreeMap`), and by PE identifier within a pool (`BTreeMap`, which
//!   also gives the fixed (pool handle, PE id) order used for handle-table paging);
//! * by registration-life expiry and by keep-alive deadline (`BTreeSet` of instants);
//! * by association, to drop everything registered over a dead association at once;
//! * by owner (home registrar), with an incrementally maintained PE checksum per owner
//!   and one over the whole handlespace (docs/wire.md §4);
//! * per pool, a selection structure for its policy (`crate::policy`): a sorted set for
//!   ordered policies, a Fenwick tree of shares for weighted ones.
//!
//! The handlespace applies the pool consistency rules (the first PE fixes the pool's
//! policy type, transport protocol and transport use) and the configured bounds; it
//! does not decide who may change a PE (that is the registrar's job).

use std::collections::{BTreeMap, BTreeSet};

use std::ops::Bound;

use std::time::{Duration, Instant};

mod pool;
mod slab;
mod types;

use slab::Slab;

pub use pool::Pool;
use pool::{Loc, Selector};
pub use types::{Limits, PoolElementEntry, PoolElementKey, Refusal, Upserted};

use crate::association::AssocId;

use crate::policy::{self, Fenwick, SelectionState};

use crate::rng::SeededRng;

use crate::wire::{ChecksumAccumulator, PoolElement, PoolHandle, RegistrarId};

#[derive(Debug, Clone, Default)]
struct Owner {
    checksum: ChecksumAccumulator,
    members: BTreeSet<Loc>,
}

/// All pools and PEs, with their indexes.
#[derive(Debug, Clone)]
pub struct Handlespace {
    /// Pools by slot.
    pools: Slab<Pool>,
    by_handle: BTreeMap<PoolHandle, u32>,
    by_expiry: BTreeSet<(Instant, Loc)>,
    by_keepalive: BTreeSet<(Instant, Loc)>,
    by_association: BTreeSet<(AssocId, Loc)>,
    owners: BTreeMap<RegistrarId, Owner>,
    checksum: ChecksumAccumulator,
    /// Source of sequence numbers for round-robin tie-breaking.
    next_seq: u64,
    pool_element_count: usize,
    limits: Limits,
}

impl Default for Handlespace {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

/// A registration life as a duration (milliseconds on the wire).
fn life(element: &PoolElement) -> Duration {
    Duration::from_millis(u64::from(element.registration_life_ms))
}

impl Handlespace {
    /// An empty handlespace with the given bounds.
    pub fn new(limits: Limits) -> Self {
        Self {
            pools: Slab::default(),
            by_handle: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            by_keepalive: BTreeSet::new(),
            by_association: BTreeSet::new(),
            owners: BTreeMap::new(),
            checksum: ChecksumAccumulator::default(),
            next_seq: 0,
            pool_element_count: 0,
            limits,
        }
    }

    /// Changes the bounds; they apply to later additions (nothing is evicted).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The bounds in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Number of pools.
    pub fn pool_count(&self) -> usize {
        self.by_handle.len()
    }

    /// Number of PEs in all pools.
    pub fn pool_element_count(&self) -> usize {
        self.pool_element_count
    }

    fn pool_at(&self, index: u32) -> Option<&Pool> {
        self.pools.get(index)
    }

    fn pool_at_mut(&mut self, index: u32) -> Option<&mut Pool> {
        self.pools.get_mut(index)
    }

    /// A pool by handle.
    pub fn pool(&self, pool_handle: &PoolHandle) -> Option<&Pool> {
        self.pool_at(*self.by_handle.get(pool_handle)?)
    }

    /// All pools in handle order.
    pub fn pools(&self) -> impl Iterator<Item = (&PoolHandle, &Pool)> {
        self.by_handle
            .iter()
            .filter_map(|(handle, &index)| Some((handle, self.pool_at(index)?)))
    }

    fn locate(&self, key: &PoolElementKey) -> Option<Loc> {
        let pool = *self.by_handle.get(&key.pool_handle)?;
        let slot = *self.pool_at(pool)?.by_id.get(&key.pe_id)?;
        Some(Loc { pool, slot })
    }

    fn key_of(&self, loc: Loc) -> Option<PoolElementKey> {
        let pool = self.pool_at(loc.pool)?;
        Some(PoolElementKey {
            pool_handle: pool.handle,
            pe_id: pool.entry(loc.slot)?.element.id,
        })
    }

    fn entry_at(&self, loc: Loc) -> Option<&PoolElementEntry> {
        self.pool_at(loc.pool)?.entry(loc.slot)
    }

    fn entry_at_mut(&mut self, loc: Loc) -> Option<&mut PoolElementEntry> {
        self.pool_at_mut(loc.pool)?.entry_mut(loc.slot)
    }

    /// A PE by key.
    pub fn get(&self, key: &PoolElementKey) -> Option<&PoolElementEntry> {
        self.entry_at(self.locate(key)?)
    }

    /// PEs in (pool handle, PE id) order, starting after `after` (or at the start):
    /// the stable order of handle-table paging (RFC 5353 §3.2.3).
    pub fn iter_after(
        &self,
        after: Option<PoolElementKey>,
    ) -> impl Iterator<Item = (&PoolHandle, &PoolElementEntry)> {
        let (pool_start, pe_start) = match after {
            Some(key) => (
                Bound::Included(key.pool_handle),
                Some((key.pool_handle, key.pe_id)),
            ),
            None => (Bound::Unbounded, None),
        };
        self.by_handle
            .range((pool_start, Bound::Unbounded))
            .filter_map(|(handle, &index)| Some((handle, self.pool_at(index)?)))
            .flat_map(move |(handle, pool)| {
                let lower = match pe_start {
                    Some((start_pool, start_pe)) if start_pool == *handle => {
                        Bound::Excluded(start_pe)
                    }
                    _ => Bound::Unbounded,
                };
                pool.by_id
                    .range((lower, Bound::Unbounded))
                    .filter_map(move |(_, &slot)| pool.entry(slot).map(|e| (handle, e)))
            })
    }

    /// Adds a PE or updates it (re-registration, ENRP update), checking the pool's
    /// consistency and the bounds. The expiry is `now` + registration life; the
    /// keep-alive deadline is kept on update, and so is the association unless given.
    pub fn upsert(
        &mut self,
        pool_handle: PoolHandle,
        element: PoolElement,
        association: Option<AssocId>,
        now: Instant,
    ) -> Result<Upserted, Refusal> {
        if !policy::is_supported(element.policy.policy_type()) {
            return Err(Refusal::UnsupportedPolicy {
                policy_type: element.policy.policy_type(),
                parameter: element.policy.to_parameter_bytes(),
            });
        }
        if element.user_transport.addresses.len() > self.limits.max_addresses_per_pool_element {
            return Err(Refusal::LimitReached {
                what: "addresses per pool element",
                limit: self.limits.max_addresses_per_pool_element,
            });
        }
        let key = PoolElementKey {
            pool_handle,
            pe_id: element.id,
        };
        let Some(loc) = self.locate(&key) else {
            return self.add(key, element, association, now);
        };
        let Some(pool) = self.pool_at(loc.pool) else {
            return self.add(key, element, association, now);
        };
        match pool.check_consistency(&element) {
            Ok(()) => self.update(loc, element, association, now),
            // The pool's only member may redefine it (docs/policies.md §4 rule 5): the pool
            // is emptied and re-created.
            Err(_) if pool.len() == 1 => {
                let old = self.remove(&key);
                let association = association.or(old.as_ref().and_then(|o| o.association));
                let result = self.add(key, element, association, now);
                if let (Err(_), Some(old)) = (&result, old) {
                    // Cannot fail: the old entry alone defined the pool.
                    let _restored = self.add(key, old.element, old.association, now);
                }
                result.map(|_| Upserted::Updated {
                    owner_changed: false,
                })
            }
            Err(refusal) => Err(refusal),
        }
    }

    fn add(
        &mut self,
        key: PoolElementKey,
        element: PoolElement,
        association: Option<AssocId>,
        now: Instant,
    ) -> Result<Upserted, Refusal> {
        if self.pool_element_count >= self.limits.max_pool_elements {
            return Err(Refusal::LimitReached {
                what: "pool elements",
                limit: self.limits.max_pool_elements,
            });
        }
        let pool_index = match self.by_handle.get(&key.pool_handle) {
            Some(&index) => {
                let pool = self.pool_at(index).ok_or(Refusal::LimitReached {
                    what: "pools",
                    limit: self.limits.max_pools,
                })?;
                pool.check_consistency(&element)?;
                if pool.len() >= self.limits.max_pool_elements_per_pool {
                    return Err(Refusal::LimitReached {
                        what: "pool elements per pool",
                        limit: self.limits.max_pool_elements_per_pool,
                    });
                }
                index
            }
            None => {
                if self.by_handle.len() >= self.limits.max_pools {
                    return Err(Refusal::LimitReached {
                        what: "pools",
                        limit: self.limits.max_pools,
                    });
                }
                self.create_pool(key.pool_handle, &element)
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let expires_at = now + life(&element);
        let owner = element.home_registrar;
        let Some(pool) = self.pool_at_mut(pool_index) else {
            return Err(Refusal::LimitReached {
                what: "pools",
                limit: self.limits.max_pools,
            });
        };
        let mut state = SelectionState {
            seq,
            ..SelectionState::default()
        };
        policy::on_registered(None, &element.policy, &mut state, pool.current_round());
        let slot = pool.insert(PoolElementEntry {
            element,
            association,
            last_update: now,
            expires_at,
            keepalive_at: None,
            selections: 0,
            state,
        });
        let loc = Loc {
            pool: pool_index,
            slot,
        };
        self.pool_element_count += 1;
        self.by_expiry.insert((expires_at, loc));
        if let Some(association) = association {
            self.by_association.insert((association, loc));
        }
        self.add_to_owner(owner, &key, loc);
        Ok(Upserted::Added)
    }

    fn create_pool(&mut self, handle: PoolHandle, element: &PoolElement) -> u32 {
        let index = self.pools.insert(Pool::new(handle, element));
        self.by_handle.insert(handle, index);
        index
    }

    fn update(
        &mut self,
        loc: Loc,
        element: PoolElement,
        association: Option<AssocId>,
        now: Instant,
    ) -> Result<Upserted, Refusal> {
        let key = PoolElementKey {
            pool_handle: self.pool_at(loc.pool).map_or(PoolHandle::MIN, |p| p.handle),
            pe_id: element.id,
        };
        let Some(pool) = self.pool_at_mut(loc.pool) else {
            return self.add(key, element, association, now);
        };
        let round = pool.current_round();
        pool.unindex(loc.slot);
        let Some(entry) = pool.entry_mut(loc.slot) else {
            return self.add(key, element, association, now);
        };
        let old_owner = entry.element.home_registrar;
        let old_association = entry.association;
        let old_expiry = entry.expires_at;
        policy::on_registered(
            Some(&entry.element.policy),
            &element.policy,
            &mut entry.state,
            round,
        );
        entry.expires_at = now + life(&element);
        entry.last_update = now;
        if association.is_some() {
            entry.association = association;
        }
        entry.element = element;
        let new_owner = entry.element.home_registrar;
        let new_association = entry.association;
        let new_expiry = entry.expires_at;
        pool.index(loc.slot);

        self.by_expiry.remove(&(old_expiry, loc));
        self.by_expiry.insert((new_expiry, loc));
        if old_association != new_association {
            if let Some(old) = old_association {
                self.by_association.remove(&(old, loc));
            }
            if let Some(new) = new_association {
                self.by_association.insert((new, loc));
            }
        }
        let owner_changed = old_owner != new_owner;
        if owner_changed {
            self.remove_from_owner(old_owner, &key, loc);
            self.add_to_owner(new_owner, &key, loc);
        }
        Ok(Upserted::Updated { owner_changed })
    }

    /// Removes a PE (deregistration, expiry, keep-alive failure, DEL_PE); drops its pool
    /// when it was the last member.
    pub fn remove(&mut self, key: &PoolElementKey) -> Option<PoolElementEntry> {
        let loc = self.locate(key)?;
        let pool = self.pool_at_mut(loc.pool)?;
        let entry = pool.remove(key.pe_id)?;
        if pool.is_empty() {
            self.by_handle.remove(&key.pool_handle);
            self.pools.remove(loc.pool);
        }
        self.pool_element_count -= 1;
        self.by_expiry.remove(&(entry.expires_at, loc));
        if let Some(at) = entry.keepalive_at {
            self.by_keepalive.remove(&(at, loc));
        }
        if let Some(association) = entry.association {
            self.by_association.remove(&(association, loc));
        }
        self.remove_from_owner(entry.element.home_registrar, key, loc);
        Some(entry)
    }

    /// Removes every PE registered over an association (it failed or shut down).
    pub fn remove_association(
        &mut self,
        association: AssocId,
    ) -> Vec<(PoolElementKey, PoolElementEntry)> {
        let keys: Vec<PoolElementKey> = self.association_members(association).collect();
        keys.into_iter()
            .filter_map(|key| self.remove(&key).map(|entry| (key, entry)))
            .collect()
    }

    /// The keys of the PEs registered over an association.
    pub fn association_members(
        &self,
        association: AssocId,
    ) -> impl Iterator<Item = PoolElementKey> + '_ {
        self.by_association
            .range((association, Loc { pool: 0, slot: 0 })..)
            .take_while(move |(a, _)| *a == association)
            .filter_map(|(_, loc)| self.key_of(*loc))
    }

    fn add_to_owner(&mut self, owner: RegistrarId, key: &PoolElementKey, loc: Loc) {
        self.checksum.add(&key.pool_handle, key.pe_id);
        let entry = self.owners.entry(owner).or_default();
        entry.checksum.add(&key.pool_handle, key.pe_id);
        entry.members.insert(loc);
    }

    fn remove_from_owner(&mut self, owner: RegistrarId, key: &PoolElementKey, loc: Loc) {
        self.checksum.remove(&key.pool_handle, key.pe_id);
        if let Some(entry) = self.owners.get_mut(&owner) {
            entry.checksum.remove(&key.pool_handle, key.pe_id);
            entry.members.remove(&loc);
            if entry.members.is_empty() {
                self.owners.remove(&owner);
            }
        }
    }

    /// Makes `new_owner` the home registrar of a PE (takeover, H-flag keep-alive).
    pub fn set_owner(&mut self, key: &PoolElementKey, new_owner: RegistrarId) -> bool {
        let Some(loc) = self.locate(key) else {
            return false;
        };
        let Some(entry) = self.entry_at_mut(loc) else {
            return false;
        };
        let old_owner = entry.element.home_registrar;
        if old_owner == new_owner {
            return true;
        }
        entry.element.home_registrar = new_owner;
        self.remove_from_owner(old_owner, key, loc);
        self.add_to_owner(new_owner, key, loc);
        true
    }

    /// Moves every PE of `old_owner` to `new_owner` (ENRP takeover) and returns them.
    pub fn take_over(
        &mut self,
        old_owner: RegistrarId,
        new_owner: RegistrarId,
    ) -> Vec<PoolElementKey> {
        let keys: Vec<PoolElementKey> = self.owned_by(old_owner).collect();
        for key in &keys {
            self.set_owner(key, new_owner);
        }
        keys
    }

    /// The PEs whose home is `owner`.
    pub fn owned_by(&self, owner: RegistrarId) -> impl Iterator<Item = PoolElementKey> + '_ {
        self.owners
            .get(&owner)
            .into_iter()
            .flat_map(|o| o.members.iter())
            .filter_map(|loc| self.key_of(*loc))
    }

    /// How many PEs `owner` owns.
    pub fn owned_count(&self, owner: RegistrarId) -> usize {
        self.owners.get(&owner).map_or(0, |o| o.members.len())
    }

    /// The PE checksum over the PEs owned by `owner` (0xFFFF when none), as sent in
    /// ENRP_PRESENCE.
    pub fn owner_checksum(&self, owner: RegistrarId) -> u16 {
        self.owners
            .get(&owner)
            .map_or(ChecksumAccumulator::default(), |o| o.checksum)
            .value()
    }

    /// The PE checksum over the whole handlespace.
    pub fn checksum(&self) -> u16 {
        self.checksum.value()
    }

    /// The registrars that own PEs here.
    pub fn owners(&self) -> impl Iterator<Item = RegistrarId> + '_ {
        self.owners.keys().copied()
    }

    /// The earliest registration-life expiry.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|(at, _)| *at)
    }

    /// A PE whose registration life ran out by `now`, if any.
    pub fn expired(&self, now: Instant) -> Option<PoolElementKey> {
        self.by_expiry
            .first()
            .filter(|(at, _)| *at <= now)
            .and_then(|(_, loc)| self.key_of(*loc))
    }

    /// Moves a PE's registration-life expiry (a binary upgrade carries what was left
    /// of it, rather than a fresh life).
    pub fn set_expiry(&mut self, key: &PoolElementKey, at: Instant) {
        let Some(loc) = self.locate(key) else {
            return;
        };
        let Some(entry) = self.entry_at_mut(loc) else {
            return;
        };
        let old = std::mem::replace(&mut entry.expires_at, at);
        self.by_expiry.remove(&(old, loc));
        self.by_expiry.insert((at, loc));
    }

    /// Sets (or clears) the keep-alive deadline of a PE.
    pub fn set_keepalive(&mut self, key: &PoolElementKey, at: Option<Instant>) {
        let Some(loc) = self.locate(key) else {
            return;
        };
        let Some(entry) = self.entry_at_mut(loc) else {
            return;
        };
        let old = std::mem::replace(&mut entry.keepalive_at, at);
        if let Some(old) = old {
            self.by_keepalive.remove(&(old, loc));
        }
        if let Some(at) = at {
            self.by_keepalive.insert((at, loc));
        }
    }

    /// The earliest keep-alive deadline.
    pub fn next_keepalive(&self) -> Option<Instant> {
        self.by_keepalive.first().map(|(at, _)| *at)
    }

    /// A PE whose keep-alive deadline has passed by `now`, if any.
    pub fn keepalive_due(&self, now: Instant) -> Option<PoolElementKey> {
        self.by_keepalive
            .first()
            .filter(|(at, _)| *at <= now)
            .and_then(|(_, loc)| self.key_of(*loc))
    }

    /// Moves a PE to another association (or none): after a takeover, the registrar
    /// supervises it over the association it opened to the PE.
    pub fn set_association(&mut self, key: &PoolElementKey, association: Option<AssocId>) {
        let Some(loc) = self.locate(key) else {
            return;
        };
        let Some(entry) = self.entry_at_mut(loc) else {
            return;
        };
        let old = std::mem::replace(&mut entry.association, association);
        if let Some(old) = old {
            self.by_association.remove(&(old, loc));
        }
        if let Some(new) = association {
            self.by_association.insert((new, loc));
        }
    }

    /// Selects up to `count` PEs of a pool with its policy, best first, and advances
    /// the selection state of the first `max_increment` of them (`None`: the policy's
    /// default, docs/policies.md §2). `None` if the pool does not exist.
    pub fn select(
        &mut self,
        pool_handle: &PoolHandle,
        count: usize,
        max_increment: Option<usize>,
        rng: &mut SeededRng,
    ) -> Option<Vec<&PoolElementEntry>> {
        let index = *self.by_handle.get(pool_handle)?;
        let mut next_seq = self.next_seq;
        let pool = self.pools.get_mut(index)?;
        let increments = max_increment
            .unwrap_or_else(|| policy::default_max_increment(pool.policy_type))
            .min(count);
        let slots: Vec<u32> = match &mut pool.selector {
            Selector::Ordered(set) => set.iter().take(count).map(|key| key.slot).collect(),
            Selector::Weighted(fenwick) => draw(fenwick, pool.by_id.values(), count, rng),
        };
        for &slot in slots.iter().take(increments) {
            pool.unindex(slot);
            if let Some(entry) = pool.entry_mut(slot) {
                policy::on_selected(&entry.element.policy, &mut entry.state);
                entry.state.seq = next_seq;
                entry.selections += 1;
            }
            next_seq += 1;
            pool.index(slot);
        }
        self.next_seq = next_seq;
        let pool = self.pool_at(index)?;
        Some(
            slots
                .into_iter()
                .filter_map(|slot| pool.entry(slot))
                .collect(),
        )
    }

    /// Recomputes the whole and per-owner checksums from scratch (for audits and tests
    /// of the incremental values).
    pub fn recomputed_checksums(&self) -> (u16, BTreeMap<RegistrarId, u16>) {
        let mut whole = ChecksumAccumulator::default();
        let mut owners: BTreeMap<RegistrarId, ChecksumAccumulator> = BTreeMap::new();
        for (handle, entry) in self.iter_after(None) {
            whole.add(handle, entry.element.id);
            owners
                .entry(entry.element.home_registrar)
                .or_default()
                .add(handle, entry.element.id);
        }
        (
            whole.value(),
            owners
                .into_iter()
                .map(|(id, acc)| (id, acc.value()))
                .collect(),
        )
    }
}

/// Draws up to `count` slots without replacement, proportionally to their shares, then
/// fills up with zero-share slots in identifier order. The fill-up scans the pool, but
/// stops as soon as the answer is full.
fn draw<'a>(
    fenwick: &mut Fenwick,
    all_slots: impl Iterator<Item = &'a u32>,
    count: usize,
    rng: &mut SeededRng,
) -> Vec<u32> {
    let mut drawn: Vec<(u32, u64)> = Vec::with_capacity(count);
    while drawn.len() < count {
        let total = fenwick.total();
        if total == 0 {
            break;
        }
        let Some(slot) = fenwick.find(rng.below(total)) else {
            break;
        };
        let share = fenwick.get(slot);
        fenwick.set(slot, 0);
        drawn.push((u32::try_from(slot).unwrap_or(u32::MAX), share));
    }
    for &(slot, share) in &drawn {
        fenwick.set(slot as usize, share);
    }
    let mut slots: Vec<u32> = drawn.into_iter().map(|(slot, _)| slot).collect();
    if slots.len() < count {
        let fill: Vec<u32> = all_slots
            .copied()
            .filter(|&slot| fenwick.get(slot as usize) == 0 && !slots.contains(&slot))
            .take(count - slots.len())
            .collect();
        slots.extend(fill);
    }
    slots
}
