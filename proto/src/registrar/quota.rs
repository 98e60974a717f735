//! What one host may hold in this registrar's handlespace (security.md §3.4: a
//! registrar must not let one source exhaust its resources).
//!
//! Per-association limits alone do not bound a host: it opens another association.
//! With TLS off, the address an association comes from is the only identity a
//! registrar can count against, so the PEs registered here over ASAP are charged to
//! the host that registered them, and a host may hold at most so many PEs and be in
//! at most so many pools (which bounds the pools it can create: a pool exists only
//! while it has a PE). Counts change incrementally with each registration and
//! removal; a check is O(log n).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::handlespace::PoolElementKey;
use crate::wire::PoolHandle;

/// A host's share would exceed a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum QuotaExceeded {
    /// `max_pool_elements_per_host`.
    #[error("host {host} already holds {limit} PEs here")]
    PoolElements {
        /// The registering host.
        host: IpAddr,
        /// The limit.
        limit: usize,
    },
    /// `max_pools_per_host`.
    #[error("host {host} already has PEs in {limit} pools here")]
    Pools {
        /// The registering host.
        host: IpAddr,
        /// The limit.
        limit: usize,
    },
}

#[derive(Debug, Default)]
struct HostUsage {
    pool_elements: usize,
    /// PEs per pool.
    pools: BTreeMap<PoolHandle, usize>,
}

/// PEs registered here, by the host that registered them.
#[derive(Debug, Default)]
pub(super) struct HostQuotas {
    charged: BTreeMap<PoolElementKey, IpAddr>,
    hosts: BTreeMap<IpAddr, HostUsage>,
}

impl HostQuotas {
    /// May `host` register (or re-register) `key`?
    pub(super) fn check(
        &self,
        host: IpAddr,
        key: &PoolElementKey,
        max_pool_elements: usize,
        max_pools: usize,
    ) -> Result<(), QuotaExceeded> {
        if self.charged.get(key) == Some(&host) {
            return Ok(());
        }
        let Some(usage) = self.hosts.get(&host) else {
            return match (max_pool_elements, max_pools) {
                (0, _) => Err(QuotaExceeded::PoolElements { host, limit: 0 }),
                (_, 0) => Err(QuotaExceeded::Pools { host, limit: 0 }),
                _ => Ok(()),
            };
        };
        if usage.pool_elements >= max_pool_elements {
            return Err(QuotaExceeded::PoolElements {
                host,
                limit: max_pool_elements,
            });
        }
        if !usage.pools.contains_key(&key.pool_handle) && usage.pools.len() >= max_pools {
            return Err(QuotaExceeded::Pools {
                host,
                limit: max_pools,
            });
        }
        Ok(())
    }

    /// `key` is now registered by `host` (moving its charge from another host).
    pub(super) fn charge(&mut self, host: IpAddr, key: PoolElementKey) {
        if self.charged.get(&key) == Some(&host) {
            return;
        }
        self.release(&key);
        self.charged.insert(key, host);
        let usage = self.hosts.entry(host).or_default();
        usage.pool_elements += 1;
        *usage.pools.entry(key.pool_handle).or_default() += 1;
    }

    /// `key` left the handlespace, or is no longer held over an association from its
    /// host (it moved to another registrar, or was taken over).
    pub(super) fn release(&mut self, key: &PoolElementKey) {
        let Some(host) = self.charged.remove(key) else {
            return;
        };
        let Some(usage) = self.hosts.get_mut(&host) else {
            return;
        };
        usage.pool_elements = usage.pool_elements.saturating_sub(1);
        if let Some(count) = usage.pools.get_mut(&key.pool_handle) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                usage.pools.remove(&key.pool_handle);
            }
        }
        if usage.pool_elements == 0 {
            self.hosts.remove(&host);
        }
    }

    /// The PEs and pools a host holds.
    #[cfg(test)]
    fn usage(&self, host: &IpAddr) -> (usize, usize) {
        self.hosts
            .get(host)
            .map_or((0, 0), |u| (u.pool_elements, u.pools.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PoolElementId;

    fn key(pool: &str, pe: u32) -> PoolElementKey {
        PoolElementKey {
            pool_handle: PoolHandle::new(pool.as_bytes()).unwrap(),
            pe_id: PoolElementId(pe),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_host_is_held_to_its_pool_element_and_pool_counts() {
        let mut quotas = HostQuotas::default();
        quotas.charge(A, key("p1", 1));
        quotas.charge(A, key("p1", 2));
        quotas.charge(A, key("p2", 3));
        assert_eq!(quotas.usage(&A), (3, 2));
        // A new pool is refused at two pools, a third PE in a known pool is not.
        assert_eq!(
            quotas.check(A, &key("p3", 4), 10, 2),
            Err(QuotaExceeded::Pools { host: A, limit: 2 })
        );
        assert_eq!(quotas.check(A, &key("p1", 4), 10, 2), Ok(()));
        assert_eq!(
            quotas.check(A, &key("p1", 4), 3, 2),
            Err(QuotaExceeded::PoolElements { host: A, limit: 3 })
        );
        // Re-registering a PE it holds is always allowed; another host is unaffected.
        assert_eq!(quotas.check(A, &key("p1", 1), 3, 2), Ok(()));
        assert_eq!(quotas.check(B, &key("p3", 4), 3, 2), Ok(()));
    }

    #[test]
    fn releases_and_moves_give_the_share_back() {
        let mut quotas = HostQuotas::default();
        quotas.charge(A, key("p1", 1));
        quotas.charge(A, key("p2", 2));
        quotas.release(&key("p2", 2));
        assert_eq!(quotas.usage(&A), (1, 1));
        // The same PE registered again from another host moves its charge.
        quotas.charge(B, key("p1", 1));
        assert_eq!(quotas.usage(&A), (0, 0));
        assert_eq!(quotas.usage(&B), (1, 1));
        quotas.release(&key("p1", 1));
        quotas.release(&key("p1", 1));
        assert_eq!(quotas.usage(&B), (0, 0));
        assert!(quotas.hosts.is_empty() && quotas.charged.is_empty());
    }
}
