//! The admin listener's views of a PE process (the agent, or a `pe --serve` demo):
//! readiness while a PE is registered, `/api/pool_elements`, the agent's
//! `/api/backends`, and the per-pool gauge refreshed on each scrape.

use std::sync::Arc;

use rserpool_proto::wire::PoolHandle;

use super::backends::Backends;
use crate::pe_runtime::Registered;

/// Ready while at least one PE is registered; `/metrics` counts them per pool of
/// `pools` (the configured ones).
/// `backends`: an agent's services with their checks (`/api/backends`); none for
/// a native PE.
pub(crate) fn routes(
    registered: &Registered,
    pools: Vec<PoolHandle>,
    backends: Option<Backends>,
) -> crate::admin::Routes {
    let (ready, api, counted) = (registered.clone(), registered.clone(), registered.clone());
    crate::admin::Routes {
        ready: Arc::new(move || {
            let registered = !ready.list().is_empty();
            Box::pin(async move {
                if registered {
                    Ok(())
                } else {
                    Err("no pool element registered (backends unhealthy, or no registrar)".into())
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
            counted.refresh_meters(&pools);
            Box::pin(async {})
        })),
    }
}
