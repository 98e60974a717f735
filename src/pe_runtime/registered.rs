//! The PEs of an agent (or of a native PE) that are registered now: what `/readyz`,
//! `/api/pool_elements` and the per-pool gauge show.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use rserpool_proto::pool_element::PoolElementEvent;
use rserpool_proto::wire::{PoolElementId, PoolHandle};

use super::meters;

/// The agent's PEs that are registered now, for `/readyz` and `/api/pool_elements`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Registered(Arc<Mutex<BTreeSet<(PoolHandle, PoolElementId)>>>);

impl Registered {
    pub(crate) fn track(&self, event: &PoolElementEvent) {
        let Ok(mut set) = self.0.lock() else { return };
        match event {
            PoolElementEvent::Registered {
                pool_handle, pe_id, ..
            } => {
                set.insert((*pool_handle, *pe_id));
            }
            PoolElementEvent::RegistrationRefused {
                pool_handle, pe_id, ..
            }
            | PoolElementEvent::Deregistered {
                pool_handle, pe_id, ..
            }
            | PoolElementEvent::Withdrawn { pool_handle, pe_id } => {
                set.remove(&(*pool_handle, *pe_id));
            }
            PoolElementEvent::RegistrarLost => set.clear(),
            _ => {}
        }
    }

    pub(crate) fn list(&self) -> Vec<(PoolHandle, PoolElementId)> {
        self.0
            .lock()
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Sets the per-pool gauge of registered PEs for `pools` (the configured ones).
    pub(crate) fn refresh_meters(&self, pools: &[PoolHandle]) {
        meters::refresh(pools, &self.list());
    }
}
