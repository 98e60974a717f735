//! The agent's backends as `/api/backends` shows them: each service's pool, backend,
//! check, PE, health (after `rise`/`fall`) and its last checks with their results and
//! durations. Bounded: [`HISTORY`] checks per service.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rserpool_proto::wire::{PoolElementId, PoolHandle};
use serde_json::{Value, json};

use crate::config::{HealthCheck, ServiceConfig};

/// Checks kept per service.
pub(crate) const HISTORY: usize = 30;

/// Every service of the agent, by its slot.
#[derive(Debug, Clone, Default)]
pub(crate) struct Backends(Arc<Mutex<BTreeMap<u64, Backend>>>);

#[derive(Debug)]
struct Backend {
    service: ServiceConfig,
    pe: PoolElementId,
    healthy: bool,
    checks: VecDeque<Check>,
}

#[derive(Debug, Clone, Copy)]
struct Check {
    at: Instant,
    ok: bool,
    took: Duration,
}

impl Backends {
    /// A service starts being checked.
    pub(crate) fn add(&self, slot: u64, service: &ServiceConfig, pe: PoolElementId) {
        if let Ok(mut backends) = self.0.lock() {
            let backend = Backend {
                service: service.clone(),
                pe,
                healthy: false,
                checks: VecDeque::with_capacity(HISTORY),
            };
            backends.insert(slot, backend);
        }
    }

    /// A service was removed (SIGHUP).
    pub(crate) fn remove(&self, slot: u64) {
        if let Ok(mut backends) = self.0.lock() {
            backends.remove(&slot);
        }
    }

    /// One check's result.
    pub(crate) fn checked(&self, slot: u64, ok: bool, took: Duration) {
        let Ok(mut backends) = self.0.lock() else {
            return;
        };
        if let Some(backend) = backends.get_mut(&slot) {
            if backend.checks.len() == HISTORY {
                backend.checks.pop_front();
            }
            let at = crate::driver::now();
            backend.checks.push_back(Check { at, ok, took });
        }
    }

    /// The service's health changed (after `rise` or `fall` checks in a row).
    pub(crate) fn health(&self, slot: u64, healthy: bool) {
        if let Ok(mut backends) = self.0.lock()
            && let Some(backend) = backends.get_mut(&slot)
        {
            backend.healthy = healthy;
        }
    }

    /// `/api/backends`.
    pub(crate) fn view(&self) -> Value {
        let now = crate::driver::now();
        let Ok(backends) = self.0.lock() else {
            return Value::Null;
        };
        let list: Vec<Value> = backends
            .values()
            .map(|backend| {
                let checks: Vec<Value> = backend
                    .checks
                    .iter()
                    .map(|check| {
                        json!({
                            "ago_s": now.saturating_duration_since(check.at).as_secs_f64(),
                            "ok": check.ok,
                            "ms": check.took.as_secs_f64() * 1000.0,
                        })
                    })
                    .collect();
                json!({
                    "pool": backend.service.pool.to_string(),
                    "backend": backend.service.backend.to_string(),
                    "check": match &backend.service.health {
                        HealthCheck::None => "none".to_owned(),
                        HealthCheck::Tcp => "tcp".to_owned(),
                        HealthCheck::Http(path) => format!("http:{path}"),
                    },
                    "pe": backend.pe,
                    "healthy": backend.healthy,
                    "checks": checks,
                })
            })
            .collect();
        json!({ "backends": list })
    }
}

/// One health check of `pool`'s backend.
pub(super) fn count_check(pool: PoolHandle, ok: bool, took: Duration) {
    let pool = pool.to_string();
    let result = if ok { "ok" } else { "failed" };
    metrics::counter!("rserpool_pe_health_checks_total", "pool" => pool.clone(), "result" => result)
        .increment(1);
    metrics::histogram!("rserpool_pe_health_check_seconds", "pool" => pool)
        .record(took.as_secs_f64());
}
