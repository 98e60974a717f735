//! `rserpool registrar`: wires the registrar engine to its listeners, the announce
//! channel, the configuration and the signals.

mod channels;
mod logs;
mod meters;
mod status_reports;
mod upgrade;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rserpool_proto::auth::{Access, PeerIdentity};
use rserpool_proto::engine::TransportKind;
use rserpool_proto::handlespace::Limits;
use rserpool_proto::registrar::{RegistrarConfig, RegistrarEngine};
use rserpool_proto::wire::{Protocol, RegistrarId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::cli::RegistrarArgs;
use crate::config::{self, ConfigFile, Multicast, RegistrarSection};
use crate::driver::{self, Handle};
use crate::logging::Logging;
use crate::signals::{Request, Signals};
use crate::transport::admission::Admission;
use crate::transport::tls::ControlTls;
use crate::transport::{AcceptPause, IncomingIds, Listener, Transports, accept_loop, multihomed};
use crate::upgrade::{Inherited, PidFile};

/// The configuration file (if any) with the command-line overrides applied.
fn settings(args: &RegistrarArgs) -> Result<ConfigFile, RunError> {
    let mut file = match &args.config {
        Some(path) => config::load(path)?,
        None => ConfigFile::default(),
    };
    apply_overrides(&mut file, args)?;
    args.csp.apply(&mut file.csp);
    args.admin.apply(&mut file.admin);
    Ok(file)
}

fn apply_overrides(file: &mut ConfigFile, args: &RegistrarArgs) -> Result<(), RunError> {
    crate::apply_tls_args(&mut file.tls, &args.tls)?;
    let section = &mut file.registrar;
    if let Some(asap) = args.asap {
        section.asap = Some(asap);
    }
    if let Some(enrp) = args.enrp {
        section.enrp = Some(enrp);
    }
    if let Some(transport) = args.transport {
        section.transport = transport.into();
    }
    section.multihome.extend(args.multihome.iter().copied());
    if let Some(id) = &args.id {
        section.id = Some(config::parse_id(id).map_err(RunError::Usage)?);
    }
    if let Some(profile) = args.profile {
        section.profile = profile;
    }
    if let Some(announce) = &args.announce {
        section.announce.group = config::parse_multicast(announce).map_err(RunError::Usage)?;
    }
    if let Some(group) = &args.enrp_multicast {
        section.enrp_multicast.group = config::parse_multicast(group).map_err(RunError::Usage)?;
    }
    section.peers.extend(args.peers.iter().cloned());
    crate::apply_log_args(&mut file.log, &args.log);
    Ok(())
}

/// The engine's settings from the file's section; `enrp` is this registrar's ENRP
/// address, `access` what peers must prove.
fn engine_config(
    section: &RegistrarSection,
    peers: &[SocketAddr],
    enrp: SocketAddr,
    access: Access,
) -> RegistrarConfig {
    let limits = &section.limits;
    let profile = RegistrarConfig::new(section.profile);
    RegistrarConfig {
        id: section.id,
        keepalive_interval: section.keepalive_interval,
        keepalive_timeout: section.keepalive_timeout,
        announce_interval: match section.announce.group {
            Multicast::Off => None,
            Multicast::Group(_) => Some(section.announce.interval),
        },
        max_bad_pe_reports: section.max_bad_pe_reports,
        default_items: section.default_items,
        max_items: section.max_items,
        limits: Limits {
            max_pools: limits.max_pools,
            max_pool_elements_per_pool: limits.max_pool_elements_per_pool,
            max_pool_elements: limits.max_pool_elements,
            max_addresses_per_pool_element: limits.max_addresses_per_pool_element,
        },
        max_pool_elements_per_association: limits.max_pool_elements_per_association,
        max_pool_elements_per_host: limits.max_pool_elements_per_host,
        max_pools_per_host: limits.max_pools_per_host,
        max_handle_resolutions_per_second: limits.max_handle_resolutions_per_second,
        max_unreachable_reports_per_second: limits.max_unreachable_reports_per_second,
        verify_addresses: section.verify_addresses,
        max_malformed_messages: limits.max_malformed_messages,
        handle_table_page_size: section.handle_table_page_size,
        // A peer entry naming this registrar's own ENRP address is skipped: one peer list
        // can then serve every registrar of a set (a Kubernetes StatefulSet).
        static_peers: crate::transport::endpoints(
            section.transport,
            &peers
                .iter()
                .copied()
                .filter(|peer| *peer != enrp)
                .collect::<Vec<_>>(),
        ),
        peer_heartbeat_interval: section
            .peer_heartbeat_interval
            .unwrap_or(profile.peer_heartbeat_interval),
        max_time_last_heard: section
            .max_time_last_heard
            .unwrap_or(profile.max_time_last_heard),
        max_time_no_response: section
            .max_time_no_response
            .unwrap_or(profile.max_time_no_response),
        mentor_discovery_timeout: section
            .mentor_discovery_timeout
            .unwrap_or(profile.mentor_discovery_timeout),
        max_startup_hold: section.max_startup_hold.unwrap_or(profile.max_startup_hold),
        takeover_expiry: section.takeover_expiry.unwrap_or(profile.takeover_expiry),
        access,
        ..profile
    }
}

pub(crate) async fn run(args: RegistrarArgs) -> Result<(), RunError> {
    let file = settings(&args)?;
    let logging = Logging::init(&file.log.level, file.log.format).map_err(RunError::Usage)?;
    let mut section = file.registrar.clone();
    let tls = registrar_tls(&file, &mut section)?;
    let (asap_configured, enrp_configured) = section.addresses(tls.is_some());
    distinct_listeners(asap_configured, enrp_configured)?;
    let access = tls.as_ref().map_or(Access::Open, |tls| tls.access());
    let shutdown = CancellationToken::new();
    let (incoming_tx, incoming_rx) = mpsc::channel(4096);
    let mut transports = Transports::new(incoming_tx.clone(), shutdown.clone());
    transports.tls = tls.clone();
    transports.handling_histogram = Some(meters::HANDLING_SECONDS);

    let mut inherited = Inherited::receive()?;
    let configured = (asap_configured, enrp_configured);
    let ([(asap, asap_address), (enrp, enrp_address)], mut sockets) =
        listeners(&section, configured, inherited.as_mut())?;
    transports.enrp_local = enrp_source(section.transport, &enrp, enrp_address)?;

    let peers = crate::config::resolve_all(&section.peers)
        .await
        .map_err(RunError::Usage)?;
    let mut engine_settings = engine_config(&section, &peers, enrp_configured, access);
    let channels = channels::open(
        &section,
        (asap_address, enrp_address),
        &mut transports,
        (&incoming_tx, &shutdown),
        &mut engine_settings,
    )?;
    let engine = upgrade::engine(
        engine_settings,
        inherited.as_mut(),
        crate::seed(),
        driver::now(),
    );
    let engine = with_endpoints(
        engine,
        (&asap, asap_address),
        (&enrp, enrp_address),
        &channels,
    )?;
    let id = engine.id();
    let acceptors = [(asap, Protocol::Asap), (enrp, Protocol::Enrp)];
    let pause = start_accepting(acceptors, (&section, &tls), incoming_tx, &shutdown);

    let (handle, commands) = Handle::<RegistrarEngine>::new();
    let driver = tokio::spawn(driver::run(
        std::sync::Arc::new(std::sync::Mutex::new(engine)),
        transports,
        incoming_rx,
        commands,
        logs::log_event,
        shutdown.clone(),
    ));
    let admin_socket = crate::upgrade::handed(inherited.as_mut(), "admin");
    let admin = start_admin(&file, &args, &handle, &shutdown, &logging, admin_socket).await?;
    if let Some(socket) = admin.1 {
        sockets.keep("admin".to_owned(), Ok(socket));
    }
    let addresses = (asap_address, enrp_address);
    let csp =
        status_reports::start(&file.csp, &handle, section.transport, addresses, &shutdown).await?;
    tls.iter().for_each(|tls| tls.publish_expiry());
    // Before the ready line: a signal sent right after it (a supervisor's reload)
    // must find the handlers, not the default action (SIGHUP would end the process).
    let mut signals = Signals::install_with_upgrade().map_err(RunError::Io)?;
    // Written before the ready line: whoever waits for that line finds the file.
    let pid_file = args.pid_file.as_deref().map(PidFile::write).transpose()?;
    say_ready(id, &admin.0, addresses, &channels, &section, tls.as_deref());
    crate::systemd::ready(&shutdown);
    // The old process stops once it reads this.
    drop(inherited.map(|inherited| inherited.ready(&[])));
    say_if_waiting_for_peers(&handle, &channels.enrp, section.peers.len()).await;
    let upgrade = upgrade::Upgrade {
        sockets,
        pause,
        addresses,
    };
    let serving = (&handle, tls.as_deref(), &upgrade);
    let upgraded = serve_signals(&mut signals, &args, &logging, serving).await;
    if upgraded.is_none() {
        log_totals(&handle).await;
    }
    crate::systemd::notify("STOPPING=1");
    tracing::info!("stopping: closing associations");
    // Before the hold ends: a held driver stops without handling what waited.
    shutdown.cancel();
    drop(upgraded);
    crate::csp::Reporter::finish(csp).await;
    let _ = driver.await;
    if let Some(pid_file) = pid_file {
        pid_file.remove_if_ours();
    }
    Ok(())
}

/// Accepts ASAP and ENRP associations, each listener under its admission limits;
/// returns what pauses them.
fn start_accepting(
    acceptors: [(Listener, Protocol); 2],
    (section, tls): (&RegistrarSection, &Option<Arc<ControlTls>>),
    incoming: mpsc::Sender<crate::transport::Incoming>,
    shutdown: &CancellationToken,
) -> AcceptPause {
    let pause = AcceptPause::default();
    let admission = section.limits.admission();
    let ids = IncomingIds::default();
    for (listener, protocol) in acceptors {
        let name = match protocol {
            Protocol::Asap => "asap",
            Protocol::Enrp => "enrp",
        };
        tokio::spawn(accept_loop(
            listener,
            (protocol, tls.clone()),
            ids.clone(),
            incoming.clone(),
            Admission::new(name, admission),
            (pause.clone(), shutdown.clone()),
        ));
    }
    pause
}

/// Serves the operator's signals until a stop, or an upgrade whose new process serves
/// (then the hold on this process's engine is returned).
async fn serve_signals(
    signals: &mut Signals,
    args: &RegistrarArgs,
    logging: &Logging,
    (handle, tls, upgrade): (
        &Handle<RegistrarEngine>,
        Option<&ControlTls>,
        &upgrade::Upgrade,
    ),
) -> Option<upgrade::Departing> {
    loop {
        match signals.next().await {
            Request::Stop => return None,
            Request::Reload => reload(args, logging, handle, tls).await,
            Request::Upgrade => {
                if let Some(departing) = upgrade.run(handle).await {
                    return Some(departing);
                }
            }
        }
    }
}

/// The ASAP and ENRP listeners (handed over by an upgrade, else bound) with their
/// addresses, and copies of their sockets for the next upgrade.
fn listeners(
    section: &RegistrarSection,
    (asap, enrp): (SocketAddr, SocketAddr),
    mut inherited: Option<&mut Inherited>,
) -> Result<([(Listener, SocketAddr); 2], upgrade::Sockets), RunError> {
    let mut sockets = upgrade::Sockets::default();
    let mut listener = |name, address| {
        // Keyed by what the configuration says: a listener it moved, or gave another
        // transport, finds no socket and is bound anew (the old one closes).
        let addresses = multihomed(address, &section.multihome);
        let key = format!("{name} {:?} {addresses:?}", section.transport);
        let handed = crate::upgrade::handed(inherited.as_deref_mut(), &key);
        let bound = bind_listener(section, (address, &addresses), handed)?;
        sockets.keep(key, bound.0.duplicate());
        Ok::<_, RunError>(bound)
    };
    let asap = listener("asap", asap)?;
    let enrp = listener("enrp", enrp)?;
    Ok(([asap, enrp], sockets))
}

/// Binds a listener on the configured `address` and, for SCTP, every one of
/// `addresses` (it and the section's multi-homing), or takes the socket an upgrade
/// `handed` over; returns it and the configured address with the real port (SCTP
/// lists every local address of a wildcard bind, which must not pick the multicast
/// interface).
fn bind_listener(
    section: &RegistrarSection,
    (address, addresses): (SocketAddr, &[SocketAddr]),
    handed: Option<std::os::fd::OwnedFd>,
) -> Result<(Listener, SocketAddr), RunError> {
    match handed {
        Some(socket) => Listener::from_handed(section.transport, socket),
        None => Listener::bind(section.transport, addresses),
    }
    .and_then(|listener| {
        let port = listener
            .local_addresses()?
            .first()
            .map_or(0, SocketAddr::port);
        Ok((listener, SocketAddr::new(address.ip(), port)))
    })
    .map_err(|e| RunError::Bind(address, e))
}

/// The engine with the transport parameters it announces and gives its peers: the
/// listeners' addresses (a wildcard listener's: the multicast interface's).
fn with_endpoints(
    mut engine: RegistrarEngine,
    (asap, asap_address): (&Listener, SocketAddr),
    (enrp, enrp_address): (&Listener, SocketAddr),
    channels: &channels::Channels,
) -> Result<RegistrarEngine, RunError> {
    let wildcard = |interface: Option<std::net::Ipv4Addr>| interface.map(IpAddr::V4);
    engine.set_endpoints(
        vec![
            asap.transport_parameter(wildcard(channels.announce_interface))
                .map_err(|e| RunError::Bind(asap_address, e))?,
        ],
        Some(
            enrp.transport_parameter(wildcard(channels.enrp_interface))
                .map_err(|e| RunError::Bind(enrp_address, e))?,
        ),
    );
    Ok(engine)
}

/// The ready line: what the registrar serves, where.
fn say_ready(
    id: RegistrarId,
    admin: &str,
    (asap_address, enrp_address): (SocketAddr, SocketAddr),
    channels: &channels::Channels,
    section: &RegistrarSection,
    tls: Option<&ControlTls>,
) {
    tracing::info!(
        role = "registrar",
        id = %id,
        admin = %admin,
        asap = %asap_address,
        enrp = %enrp_address,
        announce = %channels.announce,
        announce_interface = %channels
            .announce_interface
            .filter(|_| channels.announce != "off")
            .map_or_else(|| "none".to_owned(), |i| i.to_string()),
        enrp_multicast = %channels.enrp,
        peers = section.peers.len(),
        profile = ?section.profile,
        tls = crate::transport::tls::ready_field(tls),
        "ready"
    );
}

/// Where associations to peers leave from.
fn enrp_source(
    transport: TransportKind,
    enrp: &Listener,
    enrp_address: SocketAddr,
) -> Result<Vec<SocketAddr>, RunError> {
    if transport == TransportKind::Sctp {
        // Linux refuses a second association between the same endpoints (an
        // outgoing one to a peer that is already connected to us fails with
        // EADDRNOTAVAIL), and the engine then uses the peer's association.
        enrp.local_addresses()
            .map_err(|e| RunError::Bind(enrp_address, e))
    } else if enrp_address.ip().is_unspecified() {
        Ok(Vec::new())
    } else {
        // The ENRP address (any port): a peer records where associations come from,
        // and on a host with several registrars the default source address would be
        // another registrar's (or none of them).
        Ok(vec![SocketAddr::new(enrp_address.ip(), 0)])
    }
}

/// The admin listener (when configured; on the socket an upgrade `handed` over, if
/// any) and the registrar's metric descriptions; returns its address for the ready
/// line, or `off`, and a copy of its socket for the next upgrade.
async fn start_admin(
    file: &ConfigFile,
    args: &RegistrarArgs,
    handle: &Handle<RegistrarEngine>,
    shutdown: &CancellationToken,
    logging: &Logging,
    handed: Option<std::os::fd::OwnedFd>,
) -> Result<(String, Option<std::os::fd::OwnedFd>), RunError> {
    let security = crate::admin::security(&file.admin, args.admin.token_file.as_deref())?;
    let admin = match crate::upgrade::admin_listener(file.admin.listen, handed).await? {
        Some((listener, duplicate)) => {
            let routes = admin_routes(handle);
            let bound = crate::admin::start_on(
                listener,
                security,
                shutdown.clone(),
                routes,
                logging.clone(),
            )?;
            (bound.to_string(), duplicate)
        }
        None => ("off".to_owned(), None),
    };
    meters::describe();
    Ok(admin)
}

/// The message counts of the run, said on the way out.
async fn log_totals(handle: &Handle<RegistrarEngine>) {
    let totals = handle
        .ask(|engine| (engine.stats(), engine.handlespace().pool_element_count()))
        .await;
    if let Some((stats, pool_elements)) = totals {
        tracing::info!(
            asap_received = stats.asap_received,
            asap_sent = stats.asap_sent,
            enrp_received = stats.enrp_received,
            enrp_sent = stats.enrp_sent,
            pool_elements,
            "totals"
        );
    }
}

/// `/readyz`: synchronised with the peers (ENRP start-up done); `/api/handlespace` and
/// `/api/peers`: the registrar's view as JSON.
fn admin_routes(handle: &Handle<RegistrarEngine>) -> crate::admin::Routes {
    let ready_handle = handle.clone();
    let api_handle = handle.clone();
    let metrics_handle = handle.clone();
    crate::admin::Routes {
        ready: Arc::new(move || {
            let handle = ready_handle.clone();
            Box::pin(async move {
                let synchronized = handle.ask(RegistrarEngine::is_synchronized).await;
                match synchronized {
                    Some(true) => Ok(()),
                    Some(false) => Err("synchronizing with peer registrars (ENRP start-up)".into()),
                    None => Err("stopping".into()),
                }
            })
        }),
        api: Arc::new(move |name| {
            let handle = api_handle.clone();
            Box::pin(async move {
                match name.as_str() {
                    "handlespace" => handle.ask(handlespace_json).await,
                    "peers" => handle.ask(peers_json).await,
                    _ => None,
                }
            })
        }),
        api_names: &["handlespace", "peers"],
        role: "registrar",
        refresh: Some(Arc::new(move || {
            let handle = metrics_handle.clone();
            Box::pin(async move {
                handle.ask(meters::refresh).await;
            })
        })),
    }
}

fn handlespace_json(engine: &RegistrarEngine) -> serde_json::Value {
    let pools: Vec<serde_json::Value> = engine
        .handlespace()
        .pools()
        .map(|(handle, pool)| {
            let elements: Vec<&rserpool_proto::wire::PoolElement> =
                pool.elements().map(|entry| &entry.element).collect();
            serde_json::json!({
                "pool_handle": handle.to_string(),
                "policy": elements.first().map(|pe| rserpool_proto::policy::spec::format(&pe.policy)),
                "pool_elements": elements,
            })
        })
        .collect();
    serde_json::json!({
        "registrar": engine.id(),
        "synchronized": engine.is_synchronized(),
        "checksum": engine.handlespace().checksum(),
        "pools": pools,
    })
}

fn peers_json(engine: &RegistrarEngine) -> serde_json::Value {
    let peers: Vec<serde_json::Value> = engine
        .peers()
        .iter()
        .map(|peer| {
            serde_json::json!({
                "id": peer.id,
                "endpoint": peer.endpoint.as_ref().map(ToString::to_string),
                "static": peer.is_static,
                "standing": peer.standing.as_str(),
                "connected": peer.connected,
                "pool_elements": peer.pool_elements,
            })
        })
        .collect();
    serde_json::json!({ "registrar": engine.id(), "peers": peers })
}

/// The registrar's TLS; with it, the registrar ID is the one the certificate grants.
fn registrar_tls(
    file: &ConfigFile,
    section: &mut RegistrarSection,
) -> Result<Option<Arc<ControlTls>>, RunError> {
    let tls = crate::control_tls(file.tls.as_ref(), section.transport)?;
    if let Some(tls) = &tls {
        section.id = Some(registrar_id_of_certificate(section.id, &tls.identity())?);
    }
    Ok(tls)
}

/// The registrar ID: the one its certificate grants (RFC 5355: peers believe no other),
/// which a configured ID must equal.
fn registrar_id_of_certificate(
    configured: Option<RegistrarId>,
    identity: &PeerIdentity,
) -> Result<RegistrarId, RunError> {
    match (identity.registrar, configured) {
        (None, _) => Err(RunError::Usage(format!(
            "tls: the certificate of {:?} is not a registrar's (issue it with \
             `rserpool cert issue --registrar-id ID`)",
            identity.name
        ))),
        (Some(granted), Some(configured)) if granted != configured => {
            Err(RunError::Usage(format!(
                "registrar ID {configured} is configured, but the certificate grants {granted}: \
                 peers would refuse every ENRP message; drop the ID or issue a matching certificate"
            )))
        }
        (Some(granted), _) => Ok(granted),
    }
}

/// SIGHUP: re-reads the configuration and applies what can change while running (log
/// filter, timers, thresholds, limits, the TLS certificate and key for new
/// associations). On any error the old configuration stays.
async fn reload(
    args: &RegistrarArgs,
    logging: &Logging,
    handle: &Handle<RegistrarEngine>,
    tls: Option<&ControlTls>,
) {
    let loading = args.clone();
    let Some((file, ())) =
        crate::logging::reread(move || Ok((settings(&loading)?, ())), logging).await
    else {
        return;
    };
    let peers = match crate::config::resolve_all(&file.registrar.peers).await {
        Ok(peers) => peers,
        Err(error) => {
            tracing::error!(%error, "SIGHUP: configuration not reloaded");
            return;
        }
    };
    if let Some(tls) = tls {
        crate::reload_tls(tls);
    }
    let (_, enrp) = file.registrar.addresses(tls.is_some());
    let access = tls.map_or(Access::Open, ControlTls::access);
    let settings = engine_config(&file.registrar, &peers, enrp, access);
    handle
        .command(move |engine, now| engine.reconfigure(settings, now))
        .await;
    tracing::info!(config = ?args.config.as_deref(), "configuration reloaded");
}

/// The ASAP and ENRP listeners are two sockets (one address for both was reported as
/// another process on the port).
fn distinct_listeners(asap: SocketAddr, enrp: SocketAddr) -> Result<(), RunError> {
    let overlap = asap.port() == enrp.port()
        && asap.port() != 0
        && (asap.ip() == enrp.ip() || asap.ip().is_unspecified() || enrp.ip().is_unspecified());
    if overlap {
        return Err(RunError::Usage(format!(
            "--asap {asap} and --enrp {enrp} are one socket: give them different ports (3863 and 9901 by default)"
        )));
    }
    Ok(())
}

/// Says that ASAP requests wait while the registrar looks for a mentor at start-up (a
/// registrar on loopback with multicast on finds nobody, and would otherwise seem
/// slow to answer).
async fn say_if_waiting_for_peers(
    handle: &Handle<RegistrarEngine>,
    enrp_multicast: &impl std::fmt::Display,
    peers: usize,
) {
    let deadline = handle.ask(RegistrarEngine::mentor_deadline).await.flatten();
    if let Some(deadline) = deadline {
        let seconds = deadline
            .saturating_duration_since(crate::driver::now())
            .as_secs_f64();
        tracing::info!(
            seconds,
            enrp_multicast = %enrp_multicast,
            peers,
            "looking for a peer registrar to synchronise with (ENRP start-up): ASAP requests wait until then, each for max_startup_hold at most; with no peers and --enrp-multicast off a registrar serves at once"
        );
    }
}
