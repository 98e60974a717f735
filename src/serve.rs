//! `rserpool pe --serve counter|echo|http`: a native PE of the library
//! ([`crate::service`]) running one of the demo services, with the agent's admin
//! listener and status reports.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use rserpool_proto::wire::PoolHandle;

use crate::RunError;
use crate::cli::{PeArgs, ServeKind};
use crate::config::ControlTlsSection;
use crate::logging::Logging;
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
    let tls = service_tls(&file, &args)?;
    let (registrars, announce) = demo_registrars(&args, &file, tls.is_some()).await?;
    let listen = args.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    let transport = args.transport.map_or(file.pe.transport, Into::into);
    let defaults = ServiceConfig::new(pool_handle, listen, registrars.clone());
    let config = ServiceConfig {
        policy: rserpool_proto::policy::spec::parse(&args.policy)
            .map_err(|e| RunError::Usage(e.to_string()))?,
        control_channel: kind == ServeKind::Counter,
        reregistration_interval: args
            .reregistration_interval
            .unwrap_or(defaults.reregistration_interval),
        profile: args.profile.unwrap_or_default(),
        transport,
        multihome: [file.pe.multihome.clone(), args.multihome.clone()].concat(),
        tls,
        announce,
        ..defaults
    };
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
    serve_sessions(kind, &service, &label, args.max_sessions, &mut signals).await;
    service.shutdown().await;
    crate::csp::Reporter::finish(csp).await;
    Ok(())
}

/// The sessions a demo service has open: its load, reported to the registrar as
/// open / max (rsplib's TCP-like servers do the same).
#[derive(Debug, Default)]
struct OpenSessions {
    count: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

/// One open session; closing it (dropping) lowers the count.
struct SessionSlot(std::sync::Arc<OpenSessions>);

impl SessionSlot {
    fn open(sessions: &std::sync::Arc<OpenSessions>) -> Self {
        sessions
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sessions.changed.notify_one();
        Self(sessions.clone())
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.changed.notify_one();
    }
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

/// Runs the demo service on every session until a stop signal, reporting its load.
async fn serve_sessions(
    kind: ServeKind,
    service: &PoolElementService,
    label: &str,
    max_sessions: u32,
    signals: &mut Signals,
) {
    let http_sessions = crate::demo_http::Sessions::default();
    let pe_id = service.pe_id();
    let open = std::sync::Arc::new(OpenSessions::default());
    loop {
        tokio::select! {
            request = signals.next() => if request == Request::Stop { break },
            () = open.changed.notified() => {
                let count = open.count.load(std::sync::atomic::Ordering::Relaxed);
                service.set_load(count as f64 / f64::from(max_sessions)).await;
            }
            accepted = service.accept() => match accepted {
                Ok(session) => {
                    let (http_sessions, label) = (http_sessions.clone(), label.to_owned());
                    let slot = SessionSlot::open(&open);
                    tokio::spawn(async move {
                        let _slot = slot;
                        let result = match kind {
                            ServeKind::Counter => counter(session, &label).await,
                            ServeKind::Echo => echo(session).await,
                            ServeKind::Http => match session.into_stream() {
                                Some(stream) => crate::demo_http::serve(stream, pe_id, http_sessions)
                                    .await
                                    .map_err(std::io::Error::other),
                                None => Ok(()),
                            },
                        };
                        if let Err(error) = result {
                            tracing::debug!(%error, "session ended");
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "accept failed"),
            },
        }
    }
}
