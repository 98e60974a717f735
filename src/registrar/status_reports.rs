//! What a registrar tells a CSP monitor (`crate::csp`): rsplib's status text
//! ("N[owned] PEs in P Pools, K Peers") and its connected ENRP peers as associations.

use std::net::SocketAddr;
use std::sync::Arc;

use rserpool_proto::csp::{ComponentGroup, ComponentId};
use rserpool_proto::engine::TransportKind;
use rserpool_proto::registrar::RegistrarEngine;
use rserpool_proto::wire::Protocol;
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::config::CspSection;
use crate::csp::{Component, Reporter, Source, Uptimes};
use crate::driver::Handle;

/// Starts reporting when a monitor is configured.
pub(super) async fn start(
    section: &CspSection,
    handle: &Handle<RegistrarEngine>,
    transport: TransportKind,
    (asap, enrp): (SocketAddr, SocketAddr),
    shutdown: &CancellationToken,
) -> Result<Option<Reporter>, RunError> {
    let location = format!(
        "{} registrar ASAP {asap} ENRP {enrp}",
        crate::csp::host_name()
    );
    let source = source(handle.clone(), location, crate::csp::protocol(transport));
    Reporter::start(section, source, shutdown).await
}

/// The registrar's reports; `protocol` is the IP protocol of its associations.
fn source(handle: Handle<RegistrarEngine>, location: String, protocol: u16) -> Source {
    let uptimes = Uptimes::default();
    Arc::new(move || {
        let (handle, uptimes, location) = (handle.clone(), uptimes.clone(), location.clone());
        Box::pin(async move {
            handle
                .ask(move |engine| component(engine, &uptimes, location, protocol))
                .await
                .into_iter()
                .collect()
        })
    })
}

fn component(
    engine: &RegistrarEngine,
    uptimes: &Uptimes,
    location: String,
    protocol: u16,
) -> Component {
    let handlespace = engine.handlespace();
    let peers = engine.peers();
    let connected = peers
        .iter()
        .filter(|peer| peer.connected && peer.id.0 != 0)
        .map(|peer| {
            (
                ComponentId::new(ComponentGroup::Registrar, u64::from(peer.id.0)),
                protocol,
                Protocol::Enrp.ppid(),
            )
        });
    let associations = uptimes.associations(connected);
    let status = format!(
        "{}[{}] PEs in {} Pools, {} Peers{}",
        handlespace.pool_element_count(),
        handlespace.owned_count(engine.id()),
        handlespace.pool_count(),
        peers.len(),
        if engine.is_synchronized() {
            ""
        } else {
            " (synchronizing)"
        }
    );
    Component {
        id: ComponentId::new(ComponentGroup::Registrar, u64::from(engine.id().0)),
        location,
        status,
        workload: None,
        associations,
    }
}
