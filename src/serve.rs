//! `rserpool pe --serve counter|echo|http|pingpong|calcapp`: a native PE of the
//! library ([`crate::service`]) running one of the demo services (rsplib's in
//! [`crate::rsplib_services`]), with the agent's admin listener and status reports.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use rserpool_proto::engine::TransportKind;
use rserpool_proto::wire::PoolHandle;

use crate::RunError;
use crate::cli::{PeArgs, RsplibServiceArgs, ServeKind};
use crate::config::ControlTlsSection;
use crate::logging::Logging;
use crate::rsplib_services::calcapp::{self, CalcAppOptions};
use crate::rsplib_services::pingpong::{self, PingPongOptions};
use crate::service::load::Occupancy;
use crate::service::{Event, PoolElementService, ServiceConfig, ServiceError, Session, TlsFiles};
use crate::signals::{Request, Signals};

/// The demo `counter` service: each line from the client is answered with the running
/// count of lines in the session; the count survives failover through cookies.
/// `label`: what follows each count (the PE, with `--show-pe`).
async fn counter(mut session: Session, label: &str) -> std::io::Result<()> {
    let mut count: u64 = 0;
    let mut partial: Vec<u8> = Vec::new();
    loop {
        match session.next_event().await? {
            Event::CookieEcho(state) => {
                count = state
                    .first_chunk::<8>()
                    .map_or(0, |b| u64::from_be_bytes(*b));
                partial.clear();
            }
            Event::Data(bytes) => {
                let mut answers = Vec::new();
                for byte in bytes {
                    if byte == b'\n' {
                        count += 1;
                        partial.clear();
                        answers.extend(format!("{count}{label}\n").into_bytes());
                    } else if partial.len() < 64 * 1024 {
                        partial.push(byte);
                    }
                }
                if !answers.is_empty() {
                    session.send(&answers).await?;
                    let consumed = session.input_offset() - partial.len() as u64;
                    session.send_cookie(&count.to_be_bytes(), consumed).await?;
                }
            }
            Event::BusinessCard(_) => {}
            Event::Closed => return Ok(()),
        }
    }
}

/// The demo `echo` service: sends back what it receives (a plain byte stream).
async fn echo(mut session: Session) -> std::io::Result<()> {
    loop {
        match session.next_event().await? {
            Event::Data(bytes) => session.send(&bytes).await?,
            Event::Closed => return Ok(()),
            _ => {}
        }
    }
}

/// The demo PE's TLS: the file's `tls:` section with the `--tls-*` flags over it.
fn service_tls(
    file: &crate::config::ConfigFile,
    args: &PeArgs,
) -> Result<Option<TlsFiles>, RunError> {
    let mut tls = file.tls.clone();
    crate::apply_tls_args(&mut tls, &args.tls)?;
    Ok(tls.as_ref().map(ControlTlsSection::files))
}

/// `rserpool pe --serve counter|echo`: a native PE running a demo service.
pub(crate) async fn run_demo(kind: ServeKind, args: PeArgs) -> Result<(), RunError> {
    let mut file = match &args.config {
        Some(path) => crate::config::load(path)?,
        None => crate::config::ConfigFile::default(),
    };
    args.csp.apply(&mut file.csp);
    let mut log = file.log.clone();
    crate::apply_log_args(&mut log, &args.log);
    let logging = Logging::init(&log.level, log.format).map_err(RunError::Usage)?;
    let pool = args
        .pool
        .as_deref()
        .ok_or_else(|| RunError::Usage("--serve needs --pool".into()))?;
    let pool_handle = PoolHandle::new(pool.as_bytes())
        .map_err(|e| RunError::Usage(format!("--pool {pool:?}: {e}")))?;
    let config = service_config(kind, pool_handle, &args, &file).await?;
    let (registrars, transport) = (config.registrars.clone(), config.transport);
    let service = PoolElementService::start(config)
        .await
        .map_err(|e| match e {
            ServiceError::Listen(address, error) => RunError::Bind(address, error),
            other => RunError::Usage(other.to_string()),
        })?;
    let address = service.local_addr().map_err(RunError::Io)?;
    let admin_security = crate::admin::security(&file.admin, args.admin.token_file.as_deref())?;
    let admin = match args.admin.listen.or(file.admin.listen) {
        Some(listen) => crate::admin::start(
            listen,
            admin_security.clone(),
            service.shutdown.clone(),
            crate::pool_element::admin::routes(&service.registered, vec![pool_handle], None),
            logging,
        )
        .await?
        .to_string(),
        None => "off".to_owned(),
    };
    // The metrics recorder is up now (with the admin listener).
    crate::pe_runtime::describe_metrics();
    service.tls.iter().for_each(|tls| tls.publish_expiry());
    let place = format!("{kind:?} {address}").to_lowercase();
    let csp = crate::pool_element::status_reports::start(
        &file.csp,
        &service.runtime.handle,
        transport,
        &place,
        &service.shutdown,
    )
    .await?;
    let registrars: Vec<String> = registrars.iter().map(ToString::to_string).collect();
    // Before the ready line: a signal sent right after it (a supervisor's reload)
    // must find the handlers, not the default action (SIGHUP would end the process).
    let mut signals = Signals::install().map_err(RunError::Io)?;
    tracing::info!(
        role = "pe",
        serve = ?kind,
        admin = %admin,
        listen = %address,
        pe = %service.pe_id(),
        registrars = %registrars.join(","),
        "ready"
    );
    let label = if args.show_pe {
        format!(" pe={}", service.pe_id())
    } else {
        String::new()
    };
    let demo = Demo {
        kind,
        label,
        max_sessions: args.max_sessions,
        load_reports: !args.no_load_reports,
        rsplib: &args.rsplib_service,
    };
    serve_sessions(&demo, &service, &mut signals).await;
    service.shutdown().await;
    crate::csp::Reporter::finish(csp).await;
    Ok(())
}

/// How the demo PE registers and serves: the flags over the file's `pe` section.
async fn service_config(
    kind: ServeKind,
    pool_handle: PoolHandle,
    args: &PeArgs,
    file: &crate::config::ConfigFile,
) -> Result<ServiceConfig, RunError> {
    let tls = service_tls(file, args)?;
    let (registrars, announce) = demo_registrars(args, file, tls.is_some()).await?;
    let listen = args.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    let transport = args.transport.map_or(file.pe.transport, Into::into);
    let defaults = ServiceConfig::new(pool_handle, listen, registrars);
    Ok(ServiceConfig {
        policy: rserpool_proto::policy::spec::parse(&args.policy)
            .map_err(|e| RunError::Usage(e.to_string()))?,
        // rsplib's echo PEs register data plus control over SCTP: ours too, so that
        // they can share a pool.
        control_channel: match kind {
            ServeKind::Counter | ServeKind::Pingpong | ServeKind::Calcapp => true,
            ServeKind::Echo => transport == TransportKind::Sctp,
            ServeKind::Http => false,
        },
        reregistration_interval: args
            .reregistration_interval
            .unwrap_or(defaults.reregistration_interval),
        profile: args.profile.unwrap_or_default(),
        transport,
        multihome: [file.pe.multihome.clone(), args.multihome.clone()].concat(),
        tls,
        announce,
        ..defaults
    })
}

/// Where a demo PE finds registrars, as the agent does: the flags' registrars, else
/// the file's, else this host's unless registrars are found by their announces.
async fn demo_registrars(
    args: &PeArgs,
    file: &crate::config::ConfigFile,
    tls: bool,
) -> Result<(Vec<SocketAddr>, Option<(SocketAddrV4, Ipv4Addr)>), RunError> {
    let mut section = file.pe.clone();
    section.choose_registrars(&args.registrars, crate::default_registrar(tls));
    let registrars = crate::config::resolve_all(&section.registrars)
        .await
        .map_err(RunError::Usage)?;
    Ok((
        registrars,
        section.announce.channel(section.announce_interface),
    ))
}

/// What a demo PE serves, from its command line.
struct Demo<'a> {
    kind: ServeKind,
    /// What follows each count of `counter` (the PE, with `--show-pe`).
    label: String,
    max_sessions: u32,
    /// `false`: load 0 is registered whatever is open (`--no-load-reports`).
    load_reports: bool,
    rsplib: &'a RsplibServiceArgs,
}

/// Runs the demo service on every session until a stop signal, reporting its load:
/// open sessions (for `calcapp`: running jobs) over `--max-sessions`.
async fn serve_sessions(demo: &Demo<'_>, service: &PoolElementService, signals: &mut Signals) {
    let http_sessions = crate::demo_http::Sessions::default();
    let pe_id = service.pe_id();
    let occupancy = Occupancy::new(demo.max_sessions as usize);
    let pingpong = PingPongOptions {
        failure_after: demo.rsplib.failure_after,
    };
    let calcapp = CalcAppOptions {
        calculations_per_second: demo.rsplib.calculations_per_second as f64,
        cookie_max_calculations: demo.rsplib.cookie_max_calculations,
        cookie_max_time: demo.rsplib.cookie_max_time,
    };
    loop {
        tokio::select! {
            request = signals.next() => if request == Request::Stop { break },
            () = occupancy.changed(), if demo.load_reports => service.set_load(occupancy.load()).await,
            accepted = service.accept() => match accepted {
                Ok(session) => {
                    let (http_sessions, label, kind) = (http_sessions.clone(), demo.label.clone(), demo.kind);
                    let occupancy = occupancy.clone();
                    tokio::spawn(async move {
                        // CalcApp counts its jobs, the others their sessions.
                        let _place = (kind != ServeKind::Calcapp).then(|| occupancy.take());
                        let result = match kind {
                            ServeKind::Counter => counter(session, &label).await,
                            ServeKind::Echo => echo(session).await,
                            ServeKind::Http => match session.into_stream() {
                                Some(stream) => crate::demo_http::serve(stream, pe_id, http_sessions)
                                    .await
                                    .map_err(std::io::Error::other),
                                None => Ok(()),
                            },
                            ServeKind::Pingpong => pingpong::serve(session, pingpong).await,
                            ServeKind::Calcapp => calcapp::serve(session, occupancy, calcapp).await,
                        };
                        if let Err(error) = result {
                            session_failed(kind, &error);
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "accept failed"),
            },
        }
    }
}

/// A session that ended in an error: invalid input is counted and logged (at most
/// once a second), the rest (a client gone) at debug level.
fn session_failed(kind: ServeKind, error: &std::io::Error) {
    if error.kind() != std::io::ErrorKind::InvalidData {
        tracing::debug!(%error, "session ended");
        return;
    }
    let service = format!("{kind:?}").to_lowercase();
    metrics::counter!("rserpool_pe_session_errors_total", "service" => service.clone())
        .increment(1);
    static LOG: crate::logging::RateLimitedLog =
        crate::logging::RateLimitedLog::new(std::time::Duration::from_secs(1));
    if let Some(suppressed) = LOG.permit() {
        tracing::warn!(service, %error, suppressed, "session closed: invalid input from the client");
    }
}
