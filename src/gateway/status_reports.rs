//! What the gateway tells a CSP monitor (`crate::csp`): one pool-user component with
//! its open sessions, its registrar and the PEs of its TCP sessions as associations
//! (rsplib's pool users list their sessions the same way).

use std::sync::Arc;

use rserpool_gateways::Lifecycle;
use rserpool_proto::csp::{ComponentGroup, ComponentId};
use rserpool_proto::engine::TransportKind;
use rserpool_proto::wire::Protocol;
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::config::CspSection;
use crate::csp::{Component, Reporter, Source, Uptimes};
use crate::pool_user::PoolUser;

/// Sessions listed as associations at most (a report holds about 2 700).
const MAX_LISTED_SESSIONS: usize = 100;

/// Starts reporting when a monitor is configured; `listeners` names them for the
/// location text.
pub(super) async fn start(
    section: &CspSection,
    pool_user: &Arc<PoolUser>,
    lifecycle: &Lifecycle,
    transport: TransportKind,
    listeners: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Reporter>, RunError> {
    // A pool user has no identifier of its own: any number names it to the monitor.
    let id = ComponentId::new(ComponentGroup::PoolUser, crate::seed());
    let location = format!("{} gateway {listeners}", crate::csp::host_name());
    let (pool_user, lifecycle) = (pool_user.clone(), lifecycle.clone());
    let protocol = crate::csp::protocol(transport);
    let uptimes = Uptimes::default();
    let source: Source = Arc::new(move || {
        let registrar = pool_user.registrar().and_then(|(_, id)| id);
        let open = lifecycle.sessions.len();
        let tcp = lifecycle.table.snapshot(MAX_LISTED_SESSIONS);
        let registrar = registrar.map(|registrar| {
            (
                ComponentId::new(ComponentGroup::Registrar, u64::from(registrar.0)),
                protocol,
                Protocol::Asap.ppid(),
            )
        });
        // The PEs of TCP sessions, data (PPID 0) over TCP: the gateway's upstream side.
        let sessions = tcp.iter().filter_map(|session| {
            let pe = session.pe?;
            Some((
                ComponentId::new(ComponentGroup::PoolElement, u64::from(pe.0)),
                6,
                0,
            ))
        });
        let component = Component {
            id,
            location: location.clone(),
            status: format!("{open} sessions ({} TCP)", tcp.len()),
            workload: None,
            associations: uptimes.associations(registrar.into_iter().chain(sessions)),
        };
        Box::pin(async move { vec![component] })
    });
    Reporter::start(section, source, shutdown).await
}
