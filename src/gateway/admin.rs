//! The gateway's admin views: `/readyz` (a registrar answers), `/api/sessions` (open TCP
//! sessions and the count of HTTP connections) and `/api/gateway` (listeners with their
//! routes, the configured pools with their PEs and ejections, the registrars).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rserpool_gateways::Lifecycle;
use rserpool_gateways::health::{Cause, EjectionBoard};
use rserpool_proto::pool_user::{AnswerSource, ResolveError};
use rserpool_proto::wire::PoolHandle;
use serde_json::{Value, json};

use crate::config::ConfigFile;
use crate::pool_user::PoolUser;
use rserpool_gateways::http::HttpListenerConfig;

/// TCP sessions `/api/sessions` lists at most (the oldest).
const MAX_LISTED_SESSIONS: usize = 1000;
/// How long `/api/gateway` waits for a pool's resolution (mostly a cache hit).
const POOL_WAIT: Duration = Duration::from_secs(1);

/// The listeners as they are bound (real ports) and the pools they use, for
/// `/api/gateway`; set again when SIGHUP changes them.
#[derive(Debug, Clone, Default)]
pub(super) struct ListenerView(Arc<Mutex<(Vec<Value>, BTreeSet<PoolHandle>)>>);

impl ListenerView {
    pub(super) fn set(&self, listeners: Vec<Value>, pools: BTreeSet<PoolHandle>) {
        if let Ok(mut view) = self.0.lock() {
            *view = (listeners, pools);
        }
    }

    fn listeners(&self) -> Vec<Value> {
        self.0.lock().map(|v| v.0.clone()).unwrap_or_default()
    }

    fn pools(&self) -> BTreeSet<PoolHandle> {
        self.0.lock().map(|v| v.1.clone()).unwrap_or_default()
    }
}

/// A TCP listener's entry in `/api/gateway`.
pub(super) fn tcp_entry(address: std::net::SocketAddr, pool: PoolHandle) -> Value {
    json!({ "kind": "tcp", "address": address.to_string(), "pool": pool.to_string() })
}

/// An HTTP listener's entry, with its routes.
pub(super) fn http_entry(address: std::net::SocketAddr, config: &HttpListenerConfig) -> Value {
    let routes: Vec<Value> = config
        .routes
        .iter()
        .map(|route| {
            json!({
                "host": route.host,
                "path": route.path_prefix,
                "pool": route.pool_handle.to_string(),
                "max_attempts": route.max_attempts,
                "hedge_after": format!("{:?}", route.hedge),
                "idempotency_keys": route.idempotency_keys,
            })
        })
        .collect();
    json!({
        "kind": if config.tls.is_some() { "https" } else { "http" },
        "address": address.to_string(),
        "sticky": config.sticky.is_some(),
        "routes": routes,
    })
}

/// A DNS listener's entry.
pub(super) fn dns_entry(address: String, zone: &str) -> Value {
    json!({ "kind": "dns", "address": address, "zone": zone })
}

/// The admin routes of the gateway; `probe_pool`: a pool its listeners use (or none).
pub(super) fn routes(
    pool_user: &Arc<PoolUser>,
    file: &ConfigFile,
    lifecycle: &Lifecycle,
    (listeners, probe_pool): (&ListenerView, Option<PoolHandle>),
) -> crate::admin::Routes {
    let probe_pool = probe_pool.or_else(|| PoolHandle::new(b"rserpool-readiness").ok());
    let ready_user = pool_user.clone();
    let view = Arc::new(GatewayView {
        pool_user: pool_user.clone(),
        lifecycle: lifecycle.clone(),
        listeners: listeners.clone(),
        registrars: file
            .pool_user
            .registrars
            .iter()
            .map(ToString::to_string)
            .collect(),
    });
    crate::admin::Routes {
        ready: Arc::new(move || {
            let pool_user = ready_user.clone();
            Box::pin(async move { readiness(&pool_user, probe_pool).await })
        }),
        api: Arc::new(move |name| {
            let view = view.clone();
            Box::pin(async move {
                match name.as_str() {
                    "sessions" => Some(sessions(&view.lifecycle)),
                    "gateway" => Some(view.render().await),
                    _ => None,
                }
            })
        }),
        api_names: &["gateway", "sessions"],
        role: "gateway",
        refresh: None,
    }
}

/// Ready while a registrar answers a resolution (found or not).
async fn readiness(pool_user: &PoolUser, probe_pool: Option<PoolHandle>) -> Result<(), String> {
    let Some(pool) = probe_pool else {
        return Ok(());
    };
    let asked =
        tokio::time::timeout(Duration::from_secs(2), pool_user.resolve(pool, Some(1))).await;
    match asked {
        // The pool's last answer served stale: no registrar answered.
        Ok(Ok(resolution)) if resolution.source == AnswerSource::Stale => {
            Err("no registrar answers: serving the last answers".into())
        }
        Ok(Ok(_) | Err(ResolveError::UnknownPool)) => Ok(()),
        Ok(Err(error)) => Err(format!("no registrar answers: {error}")),
        Err(_) => Err("no registrar answered within 2 s".into()),
    }
}

fn sessions(lifecycle: &Lifecycle) -> Value {
    let tcp: Vec<Value> = lifecycle
        .table
        .snapshot(MAX_LISTED_SESSIONS)
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id,
                "listener": s.listener.to_string(),
                "pool": s.pool.to_string(),
                "client": s.client.to_string(),
                "pe": s.pe,
                "age_ms": u64::try_from(s.age.as_millis()).unwrap_or(u64::MAX),
                "failovers": s.failovers,
            })
        })
        .collect();
    json!({ "open": lifecycle.sessions.len(), "tcp": tcp })
}

struct GatewayView {
    pool_user: Arc<PoolUser>,
    lifecycle: Lifecycle,
    listeners: ListenerView,
    registrars: Vec<String>,
}

impl GatewayView {
    async fn render(&self) -> Value {
        let configured = self.listeners.pools();
        let mut pools = Vec::with_capacity(configured.len());
        for pool in configured {
            pools.push(self.pool(pool).await);
        }
        let in_use = self.pool_user.registrar().map(
            |(endpoint, id)| json!({ "endpoint": endpoint.to_string(), "id": id.map(|id| id.0) }),
        );
        json!({
            "listeners": self.listeners.listeners(),
            "pools": pools,
            "registrars": { "configured": self.registrars, "in_use": in_use },
        })
    }

    /// A pool's PEs as a resolution lists them now, with the gateway's ejections.
    async fn pool(&self, pool: PoolHandle) -> Value {
        let name = pool.to_string();
        let ejected = ejections_of(&self.lifecycle.ejections, &name);
        let resolved = tokio::time::timeout(POOL_WAIT, self.pool_user.resolve(pool, None)).await;
        let (pes, source, error) = match resolved {
            Ok(Ok(resolution)) => (resolution.pool_elements, Some(resolution.source), None),
            Ok(Err(error)) => (Vec::new(), None, Some(error.to_string())),
            Err(_) => (Vec::new(), None, Some("no answer within 1 s".to_owned())),
        };
        let pes: Vec<Value> = pes
            .iter()
            .map(|pe| {
                let mut value = serde_json::to_value(pe).unwrap_or(Value::Null);
                if let (Some(fields), Some(ejection)) =
                    (value.as_object_mut(), ejected.get(&pe.id.0))
                {
                    fields.insert("ejected".into(), ejection.clone());
                }
                value
            })
            .collect();
        json!({
            "pool": name,
            "pool_elements": pes,
            "source": source.map(|s| format!("{s:?}").to_lowercase()),
            "error": error,
        })
    }
}

/// The ejections in force for `pool`, by PE ID.
fn ejections_of(board: &EjectionBoard, pool: &str) -> std::collections::HashMap<u32, Value> {
    board
        .current(crate::driver::now())
        .into_iter()
        .filter(|e| e.pool == pool)
        .map(|e| {
            let cause = match e.cause {
                Cause::ConsecutiveFailures => "consecutive failures".to_owned(),
                Cause::LowSuccessRate { percent, mean_percent } => {
                    format!("success rate {percent} % (mean {mean_percent} %)")
                }
            };
            let value = json!({ "remaining_s": e.remaining.as_secs_f64(), "times": e.times, "cause": cause });
            (e.pe.0, value)
        })
        .collect()
}
