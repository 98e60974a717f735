//! `rserpool gateway`: the session-failover gateway. Its pool user resolves pools at
//! the registrars; each TCP listener relays its clients to PEs of one pool and moves
//! their sessions when a PE fails (rserpool-gateways).

mod admin;
mod bind;
mod carry;
mod listeners;
mod settings;
mod status_reports;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rserpool_gateways::Lifecycle;
use rserpool_gateways::http::tls::CertificateResolver;
use rserpool_proto::wire::PoolHandle;
use tokio_util::sync::CancellationToken;

use crate::upgrade::{self, Inherited, PidFile};
use listeners::{ListenerSet, configured_pools};

use crate::RunError;
use crate::cli::GatewayArgs;
use crate::config::{self, ConfigFile, DnsSection, HttpListenerSection, TcpListenerSection};
use crate::logging::Logging;
use crate::pool_user::PoolUser;
use crate::signals::{Request, Signals};

/// The gateway's pool user reuses answers this long unless configured (a registrar round
/// trip per new client would cost connection rate; a PE found dead leaves the cache at
/// once).
const DEFAULT_STALE_CACHE: Duration = Duration::from_secs(1);

fn settings(args: &GatewayArgs) -> Result<ConfigFile, RunError> {
    let mut file = crate::pool_user_settings(
        args.config.as_deref(),
        &args.registrars,
        args.transport.map(Into::into),
        &args.tls,
    )?;
    args.admin.apply(&mut file.admin);
    args.csp.apply(&mut file.csp);
    if let Some(profile) = args.profile {
        file.pool_user.profile = profile;
    }
    for spec in &args.tcp {
        let (listen, pool) = listener_flag("--tcp", spec)?;
        let fields = serde_json::json!({ "listen": listen.to_string(), "pool": pool });
        file.gateway
            .tcp
            .push(config::section_from::<TcpListenerSection>(fields, "--tcp")?);
    }
    for spec in &args.http {
        let (listen, pool) = listener_flag("--http", spec)?;
        let fields =
            serde_json::json!({ "listen": listen.to_string(), "routes": [{ "pool": pool }] });
        file.gateway
            .http
            .push(config::section_from::<HttpListenerSection>(
                fields, "--http",
            )?);
    }
    if let (Some(listen), Some(zone)) = (args.dns, &args.zone) {
        let fields = serde_json::json!({ "listen": listen.to_string(), "zone": zone });
        file.gateway
            .dns
            .push(config::section_from::<DnsSection>(fields, "--dns")?);
    }
    crate::apply_log_args(&mut file.log, &args.log);
    if file.gateway.tcp.is_empty() && file.gateway.http.is_empty() && file.gateway.dns.is_empty() {
        return Err(RunError::Usage(
            "no listener: give --tcp or --http LISTEN_ADDR:PORT=POOL, --dns ADDR:PORT --zone ZONE, or gateway.tcp / http / dns in the configuration"
                .into(),
        ));
    }
    Ok(file)
}

/// SIGHUP: re-reads the configuration; the log level changes, and the listeners
/// follow it (see `listeners`). On an error nothing changes.
async fn reload(args: &GatewayArgs, logging: &Logging, listeners: &mut ListenerSet) {
    let args = args.clone();
    let load = move || {
        let file = settings(&args)?;
        listeners::check(&file)?;
        Ok((file, ()))
    };
    let Some((file, ())) = crate::logging::reread(load, logging).await else {
        return;
    };
    match listeners.apply(&file).await {
        Ok(changes) => tracing::info!(
            added = changes.added,
            removed = changes.removed,
            replaced = changes.replaced,
            routes_reloaded = changes.routes_reloaded,
            "SIGHUP: reloaded (log level, listeners, HTTP routes and sticky keys, TLS certificates and TLS towards PEs)"
        ),
        Err(error) => tracing::error!(%error, "SIGHUP: listeners not changed (the log level was)"),
    }
}

/// `LISTEN_ADDR:PORT=POOL_HANDLE` of a listener flag: the address, and the pool handle
/// as given (checked).
fn listener_flag<'a>(flag: &str, spec: &'a str) -> Result<(SocketAddr, &'a str), RunError> {
    let (listen, pool) = spec.split_once('=').ok_or_else(|| {
        RunError::Usage(format!("{flag} {spec:?}: use LISTEN_ADDR:PORT=POOL_HANDLE"))
    })?;
    let listen = listen.parse().map_err(|_| {
        RunError::Usage(format!(
            "{flag} {spec:?}: {listen:?} is not an ADDRESS:PORT"
        ))
    })?;
    PoolHandle::new(pool.as_bytes())
        .map_err(|e| RunError::Usage(format!("{flag} {spec:?}: {e}")))?;
    Ok((listen, pool))
}

/// Says which configured pools have no PE at start (a typo in a pool name, or PEs
/// not up yet): their requests get 503 and their sessions wait until one registers.
async fn warn_of_empty_pools(
    pool_user: Arc<PoolUser>,
    pools: std::collections::BTreeSet<PoolHandle>,
) {
    use rserpool_gateways::{Directory, DirectoryError};
    for pool in pools {
        match Directory::resolve(&*pool_user, pool, None).await {
            Ok(pes) if !pes.is_empty() => {}
            Ok(_) | Err(DirectoryError::UnknownPool) => tracing::warn!(
                %pool,
                "no pool element is registered in this pool (yet): requests for it get 503 until one registers"
            ),
            // An unreachable registrar is said by the pool user itself.
            Err(_) => {}
        }
    }
}

pub(crate) async fn run(args: GatewayArgs) -> Result<(), RunError> {
    let file = settings(&args)?;
    // Checked before anything is bound.
    listeners::check(&file)?;
    let logging = Logging::init(&file.log.level, file.log.format).map_err(RunError::Usage)?;
    let shutdown = CancellationToken::new();
    let lifecycle = Lifecycle::default();
    let tls = crate::control_tls(file.tls.as_ref(), file.pool_user.transport)?;
    let pool_user = Arc::new(
        PoolUser::start(&file.pool_user, tls.clone(), DEFAULT_STALE_CACHE, &shutdown).await?,
    );
    let view = admin::ListenerView::default();
    let mut inherited = Inherited::receive()?;
    if let Some(inherited) = inherited.as_mut() {
        carry::take_cache(inherited, &pool_user);
    }
    // Stops the admin listener when an upgrade's new process has taken it over.
    let admin_stop = shutdown.child_token();
    // The metrics recorder goes in first: listeners take their meters when they start.
    let handed = upgrade::handed(inherited.as_mut(), "admin");
    let (admin, admin_socket) = start_admin(
        (&file, &args),
        handed,
        (&pool_user, &lifecycle, &view),
        (&admin_stop, &logging),
    )
    .await?;
    rserpool_gateways::meters::describe();
    crate::pool_user::describe_metrics();
    tls.iter().for_each(|tls| tls.publish_expiry());
    let shared = listeners::Shared {
        pool_user: pool_user.clone(),
        lifecycle: lifecycle.clone(),
        view,
        drain_timeout: file.gateway.drain_timeout,
    };
    let mut listeners = ListenerSet::start(&file, shared, inherited.as_mut()).await?;
    let registrars: Vec<String> = file
        .pool_user
        .registrars
        .iter()
        .map(ToString::to_string)
        .collect();
    // Before the ready line: a signal sent right after it (a supervisor's reload)
    // must find the handlers, not the default action (SIGHUP would end the process).
    let mut signals = Signals::install_with_upgrade().map_err(RunError::Io)?;
    let [tcp, http, dns] = listeners.ready_fields();
    let named = [tcp.as_str(), http.as_str(), dns.as_str()].join(" ");
    let transport = file.pool_user.transport;
    let csp = status_reports::start(
        &file.csp,
        &pool_user,
        &lifecycle,
        transport,
        named.trim(),
        &shutdown,
    )
    .await?;
    // Written before the ready line: whoever waits for that line finds the file.
    let pid_file = args.pid_file.as_deref().map(PidFile::write).transpose()?;
    tracing::info!(role = "gateway", tcp = %tcp, http = %http, dns = %dns, registrars = %registrars.join(","), admin = %admin, tls = crate::transport::tls::ready_field(tls.as_deref()), "ready");
    crate::systemd::ready(&shutdown);
    if let Some(inherited) = inherited {
        carry::take_over(inherited, listeners.handovers());
    }
    tokio::spawn(warn_of_empty_pools(
        pool_user.clone(),
        configured_pools(&file),
    ));
    let upgrade = (admin_socket.as_ref(), &admin_stop, &*pool_user);
    let departing = serve_signals(
        &mut signals,
        (&args, &logging),
        tls.as_deref(),
        &mut listeners,
        upgrade,
    )
    .await;
    crate::systemd::notify("STOPPING=1");
    stop(listeners, &lifecycle, departing).await;
    shutdown.cancel();
    crate::csp::Reporter::finish(csp).await;
    if let Some(pid_file) = pid_file {
        pid_file.remove_if_ours();
    }
    Ok(())
}

/// The admin listener (when configured; on the socket an upgrade `handed` over, if
/// any): its address for the ready line, or `off`, and a copy of its socket for the
/// next upgrade.
async fn start_admin(
    (file, args): (&ConfigFile, &GatewayArgs),
    handed: Option<std::os::fd::OwnedFd>,
    (pool_user, lifecycle, view): (&Arc<PoolUser>, &Lifecycle, &admin::ListenerView),
    (admin_stop, logging): (&CancellationToken, &Logging),
) -> Result<(String, Option<std::os::fd::OwnedFd>), RunError> {
    let Some((listener, duplicate)) = upgrade::admin_listener(file.admin.listen, handed).await?
    else {
        return Ok(("off".to_owned(), None));
    };
    let routes = admin::routes(
        pool_user,
        file,
        lifecycle,
        (view, configured_pools(file).first().copied()),
    );
    let security = crate::admin::security(&file.admin, args.admin.token_file.as_deref())?;
    let bound = crate::admin::start_on(
        listener,
        security,
        admin_stop.clone(),
        routes,
        logging.clone(),
    )?;
    Ok((bound.to_string(), duplicate))
}

/// Serves the operator's signals until a stop, or an upgrade whose new process serves
/// (its admin listener then stops here: `admin_stop`; the sessions leaving for it are
/// returned).
async fn serve_signals(
    signals: &mut Signals,
    (args, logging): (&GatewayArgs, &Logging),
    tls: Option<&crate::transport::tls::ControlTls>,
    listeners: &mut ListenerSet,
    (admin_socket, admin_stop, pool_user): (
        Option<&std::os::fd::OwnedFd>,
        &CancellationToken,
        &PoolUser,
    ),
) -> Option<carry::Departing> {
    loop {
        match signals.next().await {
            Request::Stop => return None,
            Request::Reload => {
                if let Some(tls) = tls {
                    crate::reload_tls(tls);
                }
                reload_certificates(&listeners.certificates());
                listeners.reload_pe_tls();
                reload(args, logging, listeners).await;
            }
            Request::Upgrade => {
                if let Some(departing) = upgraded(listeners, admin_socket, pool_user).await {
                    admin_stop.cancel();
                    return Some(departing);
                }
            }
        }
    }
}

/// SIGUSR2: hands every listening socket to a new process of this binary; once the
/// new process serves, the TCP sessions leaving for it (this process then drains and
/// exits).
async fn upgraded(
    listeners: &ListenerSet,
    admin: Option<&std::os::fd::OwnedFd>,
    pool_user: &PoolUser,
) -> Option<carry::Departing> {
    let mut sockets = match listeners.sockets() {
        Ok(sockets) => sockets,
        Err(error) => {
            tracing::error!(%error, "upgrade: cannot duplicate the listening sockets; this process keeps serving");
            return None;
        }
    };
    if let Some(admin) = admin.and_then(|fd| fd.try_clone().ok()) {
        sockets.push(("admin".to_owned(), vec![admin]));
    }
    tracing::info!(sockets = sockets.len(), "upgrade: starting the new process");
    match upgrade::hand_over(sockets, pool_user.carry_cache()).await {
        Ok(successor) => {
            tracing::info!(
                pid = successor.pid,
                "upgrade: the new process serves; this one stops accepting, hands its TCP sessions and idle HTTP connections over and drains"
            );
            Some(carry::send_sessions(successor, listeners.handovers()))
        }
        Err(error) => {
            tracing::error!(%error, "upgrade failed: this process keeps serving");
            None
        }
    }
}

/// SIGHUP: the HTTPS and DNS-over-TLS listeners' certificates are read again; a set
/// that does not load leaves the old one in place.
fn reload_certificates(certificates: &[(SocketAddr, Arc<CertificateResolver>)]) {
    for (listen, resolver) in certificates {
        match resolver.reload() {
            Ok(()) => tracing::info!(%listen, "SIGHUP: TLS certificates reloaded"),
            Err(error) => {
                tracing::error!(%listen, %error, "SIGHUP: TLS certificates not reloaded; the old ones stay")
            }
        }
    }
}

/// Stops: the listeners' sockets close, open sessions get `drain_timeout`, and what
/// an upgrade carried is said.
async fn stop(listeners: ListenerSet, lifecycle: &Lifecycle, departing: Option<carry::Departing>) {
    let drain_timeout = listeners.drain_timeout();
    // Without their handles the listeners' tasks drop their sockets when they stop
    // (a handle would keep the socket it returns, and the port would stay open).
    drop(listeners);
    drain(lifecycle, drain_timeout).await;
    if let Some(departing) = departing {
        departing.finish().await;
    }
}

/// Stops accepting, gives open sessions `drain_timeout`, then closes the rest.
async fn drain(lifecycle: &Lifecycle, drain_timeout: Duration) {
    let open = lifecycle.sessions.len();
    tracing::info!(drain = ?drain_timeout, open, "stopping: no new sessions");
    lifecycle.stop_accepting.cancel();
    lifecycle.sessions.close();
    let drain = lifecycle.sessions.wait();
    if tokio::time::timeout(drain_timeout, drain).await.is_err() {
        let open = lifecycle.sessions.len();
        tracing::warn!(open, "drain time over: closing the remaining sessions");
        lifecycle.close_sessions.cancel();
        // Closing flushes what is queued towards each client (bounded by the session).
        let _ = tokio::time::timeout(Duration::from_secs(6), lifecycle.sessions.wait()).await;
    }
    tracing::info!(open = lifecycle.sessions.len(), "drained");
}
