//! `rserpool pe`: registers existing TCP/HTTP services as pool elements (data only,
//! transport TCP), health-checks them, deregisters a service while it is unhealthy and
//! registers it again when it recovers. On SIGTERM/SIGINT every PE is deregistered
//! before the agent exits.
//!
//! The agent listens on an ASAP endpoint of its own and opens its registrar
//! associations from that port, so a registrar that takes the PEs over can reach it
//! (RFC 5352 §3.1).

pub(crate) mod admin;
mod backends;
mod load;
pub(crate) mod status_reports;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rserpool_proto::pool_element::{PoolElementEngine, PoolElementSpec};
use rserpool_proto::wire::{PoolElementId, Transport, TransportProtocol, TransportUse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::cli::PeArgs;
use crate::config::{self, ConfigFile, HealthCheck, PeSection, ServiceConfig};
use crate::driver::Handle;
use crate::logging::Logging;
use crate::pe_runtime::{
    EngineSettings, Registered, deregister_all, describe_metrics, log_event, start_engine,
};
use crate::signals::{Request, Signals};
use crate::transport::tls::ControlTls;

fn settings(args: &PeArgs) -> Result<ConfigFile, RunError> {
    let mut file = match &args.config {
        Some(path) => config::load(path)?,
        None => ConfigFile::default(),
    };
    args.admin.apply(&mut file.admin);
    args.csp.apply(&mut file.csp);
    crate::apply_tls_args(&mut file.tls, &args.tls)?;
    let tls = file.tls.is_some();
    let section = &mut file.pe;
    if let (Some(pool), Some(backend)) = (&args.pool, args.backend) {
        let pool = rserpool_proto::wire::PoolHandle::new(pool.as_bytes())
            .map_err(|e| RunError::Usage(format!("--pool {pool:?}: {e}")))?;
        let defaults = ServiceConfig::new(pool, backend);
        section.services.push(ServiceConfig {
            policy: rserpool_proto::policy::spec::parse(&args.policy)
                .map_err(|e| RunError::Usage(e.to_string()))?,
            health: args.health.clone().unwrap_or(defaults.health.clone()),
            health_interval: args.health_interval.unwrap_or(defaults.health_interval),
            reregistration_interval: args
                .reregistration_interval
                .unwrap_or(defaults.reregistration_interval),
            load: args.load.clone().unwrap_or_default(),
            capacity: args.capacity,
            ..defaults
        });
    }
    section.choose_registrars(&args.registrars, crate::default_registrar(tls));
    if let Some(asap) = args.asap {
        section.asap = asap;
    }
    if let Some(transport) = args.transport {
        section.transport = transport.into();
    }
    section.multihome.extend(args.multihome.iter().copied());
    if let Some(profile) = args.profile {
        section.profile = profile;
    }
    crate::apply_log_args(&mut file.log, &args.log);
    // (--backend without --pool is clap's to refuse.)
    if let (Some(pool), None) = (&args.pool, args.backend) {
        return Err(RunError::Usage(format!(
            "--pool {pool} needs --backend ADDRESS:PORT (the service to register), or --serve KIND for a demo PE"
        )));
    }
    if file.pe.services.is_empty() {
        return Err(RunError::Usage(
            "nothing to register: give --pool and --backend, or pe.services in the configuration"
                .into(),
        ));
    }
    for service in &file.pe.services {
        if service.backend.ip().is_unspecified() {
            return Err(RunError::Usage(format!(
                "backend {}: give the address pool users should connect to, not a wildcard",
                service.backend
            )));
        }
    }
    Ok(file)
}

/// A health check's verdict.
async fn check(service: &ServiceConfig) -> bool {
    let probe = async {
        match &service.health {
            HealthCheck::None => true,
            HealthCheck::Tcp => TcpStream::connect(service.backend).await.is_ok(),
            HealthCheck::Http(path) => http_ok(service.backend, path).await,
        }
    };
    tokio::time::timeout(service.health_timeout, probe)
        .await
        .unwrap_or(false)
}

/// An HTTP/1.0 GET answered with 2xx or 3xx.
async fn http_ok(backend: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(backend).await else {
        return false;
    };
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {backend}\r\nUser-Agent: rserpool-pe\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < 12 {
        match stream
            .read(head.get_mut(filled..).unwrap_or_default())
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(count) => filled += count,
        }
    }
    let line = String::from_utf8_lossy(head.get(..filled).unwrap_or_default());
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok());
    status.is_some_and(|code| (200..400).contains(&code))
}

/// A change in a service's health, after `rise`/`fall` checks in a row.
#[derive(Debug)]
struct HealthChange {
    /// The service's slot in [`Services`].
    service: u64,
    healthy: bool,
}

/// The agent's services, each with its PE identifier and health-check task.
struct Services {
    rng: rserpool_proto::SeededRng,
    running: BTreeMap<u64, RunningService>,
    next_slot: u64,
    changes: mpsc::Sender<HealthChange>,
    shutdown: CancellationToken,
    /// What `/api/backends` shows.
    backends: backends::Backends,
    /// The engine, told each service's load.
    engine: Handle<PoolElementEngine>,
}

struct RunningService {
    service: ServiceConfig,
    id: PoolElementId,
    /// Stops its health checks.
    stop: CancellationToken,
}

impl Services {
    /// Starts checking a service; it registers once healthy.
    fn add(&mut self, service: ServiceConfig) {
        let slot = self.next_slot;
        self.next_slot += 1;
        let stop = self.shutdown.child_token();
        let id = PoolElementId(self.rng.nonzero_u32());
        self.backends.add(slot, &service, id);
        tokio::spawn(watch(
            slot,
            service.clone(),
            (self.changes.clone(), self.backends.clone()),
            stop.clone(),
        ));
        if service.policy.load().is_some() {
            tokio::spawn(report_load(
                service.clone(),
                id,
                self.engine.clone(),
                stop.clone(),
            ));
        }
        self.running
            .insert(slot, RunningService { service, id, stop });
    }
}

/// SIGHUP: re-reads the configuration; services no longer listed (or changed) are
/// deregistered, new ones start being checked and registered, unchanged ones go on.
/// On an error nothing changes.
async fn reload(
    args: &PeArgs,
    logging: &Logging,
    services: &mut Services,
    handle: &Handle<PoolElementEngine>,
    tls: Option<&ControlTls>,
) {
    if let Some(tls) = tls {
        crate::reload_tls(tls);
    }
    let args = args.clone();
    let Some((file, ())) =
        crate::logging::reread(move || Ok((settings(&args)?, ())), logging).await
    else {
        return;
    };
    let wanted = &file.pe.services;
    let gone: Vec<u64> = services
        .running
        .iter()
        .filter(|(_, r)| !wanted.contains(&r.service))
        .map(|(slot, _)| *slot)
        .collect();
    for slot in &gone {
        if let Some(removed) = services.running.remove(slot) {
            removed.stop.cancel();
            services.backends.remove(*slot);
            let id = removed.id;
            tracing::info!(pool = %removed.service.pool, backend = %removed.service.backend, pe = %id, "SIGHUP: service removed: deregistering");
            handle
                .command(move |engine, now| engine.deregister(id, now))
                .await;
        }
    }
    let mut added = 0;
    for service in wanted {
        if !services.running.values().any(|r| r.service == *service) {
            services.add(service.clone());
            added += 1;
        }
    }
    tracing::info!(
        removed = gone.len(),
        added,
        services = services.running.len(),
        "SIGHUP: services reloaded"
    );
}

async fn watch(
    index: u64,
    service: ServiceConfig,
    (changes, backends): (mpsc::Sender<HealthChange>, backends::Backends),
    shutdown: CancellationToken,
) {
    let mut healthy = false;
    let mut streak = 0u32;
    // The backend failed its checks before it ever passed one: said once (a PE that
    // never registers would otherwise leave no trace at any log level).
    let mut said_never_healthy = false;
    let mut ticker = tokio::time::interval(service.health_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let started = tokio::time::Instant::now();
        let ok = check(&service).await;
        backends::count_check(service.pool, ok, started.elapsed());
        backends.checked(index, ok, started.elapsed());
        if !ok && !healthy && !said_never_healthy {
            said_never_healthy = true;
            tracing::warn!(
                pool = %service.pool,
                backend = %service.backend,
                check = ?service.health,
                "backend fails its health check: not registering until it passes"
            );
        }
        if ok == healthy {
            streak = 0;
            continue;
        }
        streak += 1;
        let needed = if ok { service.rise } else { service.fall };
        if streak >= needed {
            healthy = ok;
            streak = 0;
            if changes
                .send(HealthChange {
                    service: index,
                    healthy,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Measures a service's load every interval and hands it to the engine (which
/// re-registers when it changed by more than 1 %), until the service stops.
async fn report_load(
    service: ServiceConfig,
    id: PoolElementId,
    engine: Handle<PoolElementEngine>,
    stop: CancellationToken,
) {
    let interval = service.load_interval.unwrap_or(service.health_interval);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pool = service.pool.to_string();
    // One line per run of failures: a load source that stays broken says so once.
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let measured =
            load::measure(&service.load, service.backend, service.capacity, interval).await;
        match measured {
            Ok(fraction) => {
                failing = false;
                metrics::gauge!("rserpool_pe_load", "pool" => pool.clone()).set(fraction);
                let load = rserpool_proto::policy::spec::fraction_to_wire(fraction);
                engine
                    .command(move |engine, now| engine.set_load(id, load, now))
                    .await;
            }
            Err(error) => {
                metrics::counter!("rserpool_pe_load_errors_total", "pool" => pool.clone())
                    .increment(1);
                if !failing {
                    failing = true;
                    tracing::warn!(pool = %service.pool, backend = %service.backend, source = ?service.load, %error, "cannot measure the backend's load: the last one stays");
                }
            }
        }
    }
}

fn spec(service: &ServiceConfig, id: PoolElementId) -> PoolElementSpec {
    PoolElementSpec {
        pool_handle: service.pool,
        id: Some(id),
        user_transport: Transport {
            protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
            port: service.backend.port(),
            addresses: vec![service.backend.ip()],
        },
        policy: service.policy.clone(),
        reregistration_interval: service.reregistration_interval,
        registration_life: None,
    }
}

/// `rserpool pe`: the agent, until a stop signal.
pub(crate) async fn run(args: PeArgs) -> Result<(), RunError> {
    let file = settings(&args)?;
    let logging = Logging::init(&file.log.level, file.log.format).map_err(RunError::Usage)?;
    let section = file.pe.clone();
    let tls = crate::control_tls(file.tls.as_ref(), section.transport)?;
    let shutdown = CancellationToken::new();
    let mut runtime =
        start_engine(&engine_settings(&section).await?, tls.clone(), &shutdown).await?;
    let (asap, handle) = (runtime.asap, runtime.handle.clone());
    let mut events = runtime
        .events
        .take()
        .ok_or_else(|| RunError::Usage("engine events taken".into()))?;

    let (changes_tx, mut changes) = mpsc::channel(64);
    let mut services = Services {
        rng: rserpool_proto::SeededRng::new(crate::seed()),
        running: BTreeMap::new(),
        next_slot: 0,
        changes: changes_tx,
        shutdown: shutdown.clone(),
        backends: backends::Backends::default(),
        engine: handle.clone(),
    };
    for service in &section.services {
        services.add(service.clone());
    }
    let registered = Registered::default();
    let admin_security = crate::admin::security(&file.admin, args.admin.token_file.as_deref())?;
    let admin = match file.admin.listen {
        Some(listen) => crate::admin::start(
            listen,
            admin_security.clone(),
            shutdown.clone(),
            admin::routes(
                &registered,
                section.services.iter().map(|s| s.pool).collect(),
                Some(services.backends.clone()),
            ),
            logging.clone(),
        )
        .await?
        .to_string(),
        None => "off".to_owned(),
    };
    describe_metrics();
    let place = format!("ASAP {asap}");
    let csp =
        status_reports::start(&file.csp, &handle, section.transport, &place, &shutdown).await?;
    tls.iter().for_each(|tls| tls.publish_expiry());
    let registrars: Vec<String> = section.registrars.iter().map(ToString::to_string).collect();
    // Before the ready line: a signal sent right after it (a supervisor's reload)
    // must find the handlers, not the default action (SIGHUP would end the process).
    let mut signals = Signals::install().map_err(RunError::Io)?;
    tracing::info!(
        role = "pe",
        asap = %asap,
        admin = %admin,
        registrars = %registrars.join(","),
        services = section.services.len(),
        tls = crate::transport::tls::ready_field(tls.as_deref()),
        "ready"
    );
    crate::systemd::ready(&shutdown);

    loop {
        tokio::select! {
            request = signals.next() => match request {
                Request::Stop => break,
                Request::Reload => reload(&args, &logging, &mut services, &handle, tls.as_deref()).await,
                // Never given by Signals::install (it logs SIGUSR2 and goes on).
                Request::Upgrade => {}
            },
            Some(change) = changes.recv() => health_changed(&services, &handle, &change).await,
            Some(event) = events.recv() => {
                registered.track(&event);
                log_event(&event);
            }
        }
    }

    crate::systemd::notify("STOPPING=1");
    // Log the deregistration events while waiting for them.
    let logger = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            log_event(&event);
        }
    });
    deregister_all(&runtime).await;
    shutdown.cancel();
    crate::csp::Reporter::finish(csp).await;
    let _ = logger.await;
    let _ = runtime.driver.await;
    Ok(())
}

/// The engine's settings from the `pe` section, registrar names resolved.
async fn engine_settings(section: &PeSection) -> Result<EngineSettings, RunError> {
    let registrars = config::resolve_all(&section.registrars)
        .await
        .map_err(RunError::Usage)?;
    let announce = section.announce.channel(section.announce_interface);
    Ok(EngineSettings {
        registrars,
        profile: section.profile,
        transport: section.transport,
        asap: section.asap,
        multihome: section.multihome.clone(),
        announce,
        home_changes: section.home_changes,
    })
}

/// A service became healthy (its PE registers) or unhealthy (it deregisters). A
/// change from a service removed by a reload is stale and ignored.
async fn health_changed(
    services: &Services,
    handle: &Handle<PoolElementEngine>,
    change: &HealthChange,
) {
    let Some(running) = services.running.get(&change.service) else {
        return;
    };
    let (service, id) = (&running.service, running.id);
    services.backends.health(change.service, change.healthy);
    if change.healthy {
        tracing::info!(pool = %service.pool, backend = %service.backend, pe = %id, "backend healthy: registering");
        let spec = spec(service, id);
        handle
            .command(move |engine, now| {
                engine.register(spec, now);
            })
            .await;
    } else {
        tracing::warn!(pool = %service.pool, backend = %service.backend, pe = %id, "backend unhealthy: deregistering");
        handle
            .command(move |engine, now| engine.deregister(id, now))
            .await;
    }
}
