//! `rserpool gateway`: the session-failover gateway. Its pool user resolves pools at
//! the registrars; each TCP listener relays its clients to PEs of one pool and moves
//! their sessions when a PE fails (rserpool-gateways).

use std::sync::Arc;
use std::time::Duration;

use rserpool_gateways::Lifecycle;
use rserpool_gateways::tcp::{self, ListenerConfig};
use rserpool_proto::session::SessionConfig;
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::cli::GatewayArgs;
use crate::config::{self, ConfigFile, TcpListenerSection};
use crate::logging::Logging;
use crate::pool_user::PoolUser;
use crate::signals::{Request, Signals};

/// The gateway's pool user reuses answers this long unless configured (a registrar round
/// trip per new client would cost connection rate; a PE found dead leaves the cache at
/// once).
const DEFAULT_STALE_CACHE: Duration = Duration::from_secs(1);

fn settings(args: &GatewayArgs) -> Result<ConfigFile, RunError> {
    let mut file = config::load_pool_user(args.config.as_deref(), &args.registrars)?;
    if args.admin.is_some() {
        file.admin.listen = args.admin;
    }
    if let Some(profile) = args.profile {
        file.pool_user.profile = crate::profile(profile);
    }
    for spec in &args.tcp {
        let (listen, pool) = spec.split_once('=').ok_or_else(|| {
            RunError::Usage(format!("--tcp {spec:?}: use LISTEN_ADDR:PORT=POOL_HANDLE"))
        })?;
        let listen = listen.parse().map_err(|_| {
            RunError::Usage(format!("--tcp {spec:?}: {listen:?} is not an ADDRESS:PORT"))
        })?;
        let pool = rserpool_proto::wire::PoolHandle::new(pool.as_bytes())
            .map_err(|e| RunError::Usage(format!("--tcp {spec:?}: {e}")))?;
        let defaults: TcpListenerSection = config::parse(
            &format!("gateway:\n  tcp:\n    - listen: {listen}\n      pool: x\n"),
            "defaults",
        )?
        .gateway
        .tcp
        .remove(0);
        file.gateway.tcp.push(TcpListenerSection {
            listen,
            pool,
            ..defaults
        });
    }
    crate::apply_log_args(&mut file.log, &args.log);
    if file.gateway.tcp.is_empty() {
        return Err(RunError::Usage(
            "no listener: give --tcp LISTEN_ADDR:PORT=POOL, or gateway.tcp in the configuration"
                .into(),
        ));
    }
    Ok(file)
}

fn listener_config(section: &TcpListenerSection) -> ListenerConfig {
    ListenerConfig {
        listen: section.listen,
        pool_handle: section.pool,
        session: SessionConfig {
            replay_limit: section.replay_buffer,
            connect_timeout: section.connect_timeout,
            response_timeout: section.response_timeout,
            failover_deadline: section.failover_deadline,
            ..SessionConfig::default()
        },
        max_connections: section.max_connections,
        buffer: section.buffer,
    }
}

pub(crate) async fn run(args: GatewayArgs) -> Result<(), RunError> {
    let file = settings(&args)?;
    let _logging = Logging::init(&file.log.level, file.log.format).map_err(RunError::Usage)?;
    let shutdown = CancellationToken::new();
    let lifecycle = Lifecycle::default();
    let pool_user = Arc::new(PoolUser::start(
        &file.pool_user,
        DEFAULT_STALE_CACHE,
        &shutdown,
    )?);
    // The metrics recorder goes in first: listeners take their meters when they start.
    let admin = match file.admin.listen {
        Some(listen) => crate::admin::start(listen, shutdown.clone())
            .await?
            .to_string(),
        None => "off".to_owned(),
    };
    let mut bound = Vec::new();
    for section in &file.gateway.tcp {
        let listener = tokio::net::TcpListener::bind(section.listen)
            .await
            .map_err(|e| RunError::Bind(section.listen, e))?;
        let address = listener
            .local_addr()
            .map_err(|e| RunError::Bind(section.listen, e))?;
        bound.push(format!("{address}={}", section.pool));
        let config = ListenerConfig {
            listen: address,
            ..listener_config(section)
        };
        tokio::spawn(tcp::serve(
            listener,
            config,
            pool_user.clone(),
            lifecycle.clone(),
        ));
    }
    let registrars: Vec<String> = file
        .pool_user
        .registrars
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::info!(role = "gateway", tcp = %bound.join(","), registrars = %registrars.join(","), admin = %admin, "ready");

    let mut signals = Signals::install().map_err(RunError::Io)?;
    loop {
        match signals.next().await {
            Request::Stop => break,
            Request::Reload => tracing::info!(
                "SIGHUP: listeners are not reloaded yet; restart the gateway to change them"
            ),
        }
    }
    // Stop accepting; give open sessions the drain time, then close them.
    let open = lifecycle.sessions.len();
    tracing::info!(drain = ?file.gateway.drain_timeout, open, "stopping: no new sessions");
    lifecycle.stop_accepting.cancel();
    lifecycle.sessions.close();
    let drain = lifecycle.sessions.wait();
    if tokio::time::timeout(file.gateway.drain_timeout, drain)
        .await
        .is_err()
    {
        let open = lifecycle.sessions.len();
        tracing::warn!(open, "drain time over: closing the remaining sessions");
        lifecycle.close_sessions.cancel();
        // Closing flushes what is queued towards each client (bounded by the session).
        let _ = tokio::time::timeout(Duration::from_secs(6), lifecycle.sessions.wait()).await;
    }
    shutdown.cancel();
    Ok(())
}
