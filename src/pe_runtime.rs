//! A pool element's ASAP side at run time, below both the `pe` agent and the PE
//! library (`rserpool::service`): the engine on its driver with the ASAP endpoint
//! registrars reach after a takeover (RFC 5352 §3.6), deregistration at shutdown, the
//! registered PEs, and the events logged and counted.

mod events;
mod meters;
mod registered;

pub(crate) use events::{describe_metrics, log_event};
pub(crate) use registered::Registered;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use rserpool_proto::auth::Access;
use rserpool_proto::engine::{TimerProfile, TransportKind};
use rserpool_proto::hunt::HuntConfig;
use rserpool_proto::pool_element::{
    HomeChanges, PoolElementConfig, PoolElementEngine, PoolElementEvent,
};
use rserpool_proto::wire::Protocol;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::driver::{self, Handle};
use crate::transport::admission::{Admission, AdmissionLimits};
use crate::transport::tls::ControlTls;
use crate::transport::{
    AcceptPause, IncomingIds, Listener, Transports, accept_loop, endpoints, multihomed,
};

/// How long deregistration may take at shutdown.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

/// What the engine and its ASAP endpoint need: registrar names already resolved.
#[derive(Debug, Clone)]
pub(crate) struct EngineSettings {
    pub(crate) registrars: Vec<SocketAddr>,
    pub(crate) profile: TimerProfile,
    pub(crate) transport: TransportKind,
    /// The ASAP endpoint; port 0 picks one.
    pub(crate) asap: SocketAddr,
    /// More addresses of this host for SCTP multi-homing of the endpoint.
    pub(crate) multihome: Vec<IpAddr>,
    /// The registrars' announce group and the interface to hear it on.
    pub(crate) announce: Option<(SocketAddrV4, Ipv4Addr)>,
    pub(crate) home_changes: HomeChanges,
}

#[derive(Debug)]
pub(crate) struct PeRuntime {
    pub(crate) handle: Handle<PoolElementEngine>,
    /// The engine's events (taken by whoever logs them).
    pub(crate) events: Option<mpsc::Receiver<PoolElementEvent>>,
    pub(crate) asap: SocketAddr,
    pub(crate) driver: tokio::task::JoinHandle<()>,
}

/// Binds the ASAP endpoint (registrar associations leave from its port), joins the
/// announce channel if configured, and starts the engine on a driver.
pub(crate) async fn start_engine(
    section: &EngineSettings,
    tls: Option<Arc<ControlTls>>,
    shutdown: &CancellationToken,
) -> Result<PeRuntime, RunError> {
    let (incoming_tx, incoming_rx) = mpsc::channel(1024);
    let mut transports = Transports::new(incoming_tx.clone(), shutdown.clone());
    transports.tls = tls.clone();
    let access = tls.as_ref().map_or(Access::Open, |tls| tls.access());
    let addresses = multihomed(section.asap, &section.multihome);
    let listener = Listener::bind(section.transport, &addresses)
        .map_err(|e| RunError::Bind(section.asap, e))?;
    let bound = listener
        .local_addresses()
        .map_err(|e| RunError::Bind(section.asap, e))?;
    let asap = SocketAddr::new(
        section.asap.ip(),
        bound.first().map_or(section.asap.port(), SocketAddr::port),
    );
    transports.asap_local = bound;
    tokio::spawn(accept_loop(
        listener,
        (Protocol::Asap, tls),
        IncomingIds::default(),
        incoming_tx.clone(),
        Admission::new("pe_asap", AdmissionLimits::POOL_ELEMENT),
        (AcceptPause::default(), shutdown.clone()),
    ));
    if let Some((group, interface)) = section.announce {
        transports
            .join_announces(group, interface)
            .map_err(|e| RunError::Bind(SocketAddr::V4(group), e))?;
    }
    let mut hunt = HuntConfig::new(
        endpoints(section.transport, &section.registrars),
        Duration::from_secs(5),
    );
    hunt.transport = section.transport;
    hunt.access = access;
    let config = PoolElementConfig {
        home_changes: section.home_changes,
        ..PoolElementConfig::new(section.profile, hunt)
    };
    let engine = PoolElementEngine::new(config, crate::seed());
    let (events_tx, events) = mpsc::channel::<PoolElementEvent>(1024);
    let (handle, commands) = Handle::<PoolElementEngine>::new();
    let driver = tokio::spawn(driver::run(
        Arc::new(std::sync::Mutex::new(engine)),
        transports,
        incoming_rx,
        commands,
        move |event| {
            if events_tx.try_send(event).is_err() {
                tracing::warn!("event queue full: an event was dropped");
            }
        },
        shutdown.clone(),
    ));
    Ok(PeRuntime {
        handle,
        events: Some(events),
        asap,
        driver,
    })
}

/// Deregisters every PE and waits (up to a deadline) for the registrar's answers.
pub(crate) async fn deregister_all(runtime: &PeRuntime) {
    tracing::info!("stopping: deregistering pool elements");
    runtime
        .handle
        .command(|engine, now| engine.deregister_all(now))
        .await;
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
    loop {
        let remaining = handle_count(&runtime.handle).await;
        if remaining == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                remaining,
                "deregistration not confirmed in time; the registrations will expire"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many PEs the engine still holds.
pub(crate) async fn handle_count(handle: &Handle<PoolElementEngine>) -> usize {
    handle
        .ask(|engine| engine.pool_elements().count())
        .await
        .unwrap_or(0)
}
