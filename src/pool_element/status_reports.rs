//! What a PE tells a CSP monitor (`crate::csp`): one component per PE of the engine
//! (the agent's services, or the one PE of `pe --serve`), its pool and registration
//! state, and its home registrar as an association while registered.

use std::sync::Arc;

use rserpool_proto::csp::{ComponentGroup, ComponentId};
use rserpool_proto::engine::TransportKind;
use rserpool_proto::pool_element::PoolElementEngine;
use rserpool_proto::wire::Protocol;
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::config::CspSection;
use crate::csp::{Component, Reporter, Source, Uptimes};
use crate::driver::Handle;

/// Starts reporting when a monitor is configured; `place` says where the PEs serve
/// (the agent's ASAP endpoint, or the demo's listener).
pub(crate) async fn start(
    section: &CspSection,
    handle: &Handle<PoolElementEngine>,
    transport: TransportKind,
    place: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Reporter>, RunError> {
    let location = format!("{} pe {place}", crate::csp::host_name());
    let source = source(handle.clone(), location, crate::csp::protocol(transport));
    Reporter::start(section, source, shutdown).await
}

fn source(handle: Handle<PoolElementEngine>, location: String, protocol: u16) -> Source {
    let uptimes = Uptimes::default();
    Arc::new(move || {
        let (handle, uptimes, location) = (handle.clone(), uptimes.clone(), location.clone());
        Box::pin(async move {
            handle
                .ask(move |engine| components(engine, &uptimes, &location, protocol))
                .await
                .unwrap_or_default()
        })
    })
}

fn components(
    engine: &PoolElementEngine,
    uptimes: &Uptimes,
    location: &str,
    protocol: u16,
) -> Vec<Component> {
    let home = engine.home_registrar();
    let home_component =
        home.map(|id| ComponentId::new(ComponentGroup::Registrar, u64::from(id.0)));
    // One association per registrar for every PE: the PEs share it.
    let associations =
        uptimes.associations(home_component.map(|id| (id, protocol, Protocol::Asap.ppid())));
    engine
        .pool_elements()
        .map(|(id, pool, registered)| {
            let status = match (registered, home) {
                (true, Some(registrar)) => format!("{pool}: registered at registrar {registrar}"),
                (true, None) => format!("{pool}: registered"),
                (false, _) => format!("{pool}: not registered"),
            };
            Component {
                id: ComponentId::new(ComponentGroup::PoolElement, u64::from(id.0)),
                location: location.to_owned(),
                status,
                workload: None,
                associations: if registered {
                    associations.clone()
                } else {
                    Vec::new()
                },
            }
        })
        .collect()
}
