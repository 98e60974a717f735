//! The PEs of an agent (or of a native PE) that are registered now: what `/readyz`,
//! `/api/pool_elements` and the per-pool gauge show.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use rserpool_proto::pool_element::PoolElementEvent;
use rserpool_proto::wire::{PoolElementId, PoolHandle};

use super::backends::Backends;
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

    /// Ready while at least one PE is registered; `/metrics` counts them per pool of
    /// `pools` (the configured ones).
    /// `backends`: an agent's services with their checks (`/api/backends`); none for
    /// a native PE.
    pub(crate) fn routes(
        &self,
        pools: Vec<PoolHandle>,
        backends: Option<Backends>,
    ) -> crate::admin::Routes {
        let (ready, api, counted) = (self.clone(), self.clone(), self.clone());
        crate::admin::Routes {
            ready: Arc::new(move || {
                let registered = !ready.list().is_empty();
                Box::pin(async move {
                    if registered {
                        Ok(())
                    } else {
                        Err(
                            "no pool element registered (backends unhealthy, or no registrar)"
                                .into(),
                        )
                    }
                })
            }),
            api_names: if backends.is_some() {
                &["pool_elements", "backends"]
            } else {
                &["pool_elements"]
            },
            api: Arc::new(move |name| {
                let view = match name.as_str() {
                    "pool_elements" => {
                        let items: Vec<serde_json::Value> = api
                            .list()
                            .iter()
                            .map(|(pool, pe)| serde_json::json!({ "pool_handle": pool.to_string(), "pe_id": pe }))
                            .collect();
                        Some(serde_json::json!({ "registered": items }))
                    }
                    "backends" => backends.as_ref().map(Backends::view),
                    _ => None,
                };
                Box::pin(async move { view })
            }),
            role: "pe agent",
            refresh: Some(Arc::new(move || {
                meters::refresh(&pools, &counted.list());
                Box::pin(async {})
            })),
        }
    }
}
