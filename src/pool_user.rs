//! The pool user as a service for the rest of the process: `resolve` (and the gateways)
//! ask it for pool elements and report unreachable ones; it runs the pool-user engine
//! on a driver of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rserpool_gateways::DirectoryError;
use rserpool_proto::auth::Access;
use rserpool_proto::engine::{Endpoint, TransportKind};
use rserpool_proto::hunt::HuntConfig;
use rserpool_proto::pool_user::{
    AnswerSource, PoolUserConfig, PoolUserEngine, PoolUserEvent, RequestId, Resolution,
    ResolveError,
};
use rserpool_proto::wire::{PoolElement, PoolElementId, PoolHandle};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::config::PoolUserSection;
use crate::driver::{self, Handle};
use crate::logging::RateLimitedLog;
use crate::transport::tls::ControlTls;
use crate::transport::{Transports, endpoints};

type Waiters = Arc<Mutex<HashMap<RequestId, oneshot::Sender<Result<Resolution, ResolveError>>>>>;

/// A running pool user.
#[derive(Debug, Clone)]
pub(crate) struct PoolUser {
    handle: Handle<PoolUserEngine>,
    /// For cache hits, answered on the caller's task.
    engine: driver::Shared<PoolUserEngine>,
    waiters: Waiters,
    /// Taken at the first resolution (after the metrics recorder is installed).
    meters: Arc<std::sync::OnceLock<ResolutionMeters>>,
}

/// Resolutions by where their answer came from: counted, and timed.
#[derive(Debug)]
struct ResolutionMeters {
    /// Cache, registrar, stale, failed.
    by_source: [(metrics::Counter, metrics::Histogram); 4],
}

impl ResolutionMeters {
    fn new() -> Self {
        let meters = |source: &'static str| {
            (
                metrics::counter!("rserpool_pool_user_resolutions_total", "source" => source),
                metrics::histogram!("rserpool_pool_user_resolution_seconds", "source" => source),
            )
        };
        Self {
            by_source: [
                meters("cache"),
                meters("registrar"),
                meters("stale"),
                meters("failed"),
            ],
        }
    }

    fn record(&self, result: &Result<Resolution, ResolveError>, took: Duration) {
        let index = match result {
            Ok(resolution) => match resolution.source {
                AnswerSource::Cache => 0,
                AnswerSource::Registrar => 1,
                AnswerSource::Stale => 2,
            },
            Err(_) => 3,
        };
        if let Some((count, time)) = self.by_source.get(index) {
            count.increment(1);
            time.record(took.as_secs_f64());
        }
    }
}

/// The engine's settings: the section over the profile's defaults.
fn engine_config(
    section: &PoolUserSection,
    registrars: &[SocketAddr],
    access: Access,
    stale_cache: Duration,
) -> PoolUserConfig {
    let mut hunt = HuntConfig::new(
        endpoints(section.transport, registrars),
        Duration::from_secs(5),
    );
    hunt.transport = section.transport;
    hunt.access = access;
    let mut config = PoolUserConfig::new(section.profile, hunt);
    config.stale_cache = section.stale_cache.unwrap_or(stale_cache);
    // Serving stale needs a cache to keep the last answers in.
    if !config.stale_cache.is_zero() {
        config.max_stale = section.max_stale;
    }
    config.stale_answer_after = section.stale_answer_after;
    if let Some(silence) = section.registrar_silence {
        config.registrar_silence = silence;
    }
    config
}

impl PoolUser {
    /// Starts a pool user for the registrars of `section`; `stale_cache` applies when the
    /// section does not set one.
    pub(crate) async fn start(
        section: &PoolUserSection,
        tls: Option<Arc<ControlTls>>,
        stale_cache: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Self, RunError> {
        if section.transport == TransportKind::Sctp {
            crate::transport::sctp::probe()
                .map_err(|e| RunError::Usage(format!("pool_user.transport: sctp: {e}")))?;
        }
        let registrars = crate::config::resolve_all(&section.registrars)
            .await
            .map_err(RunError::Usage)?;
        let access = tls.as_ref().map_or(Access::Open, |tls| tls.access());
        let config = engine_config(section, &registrars, access, stale_cache);
        let engine = PoolUserEngine::new(config, crate::seed());
        let (incoming_tx, incoming_rx) = mpsc::channel(1024);
        let mut transports = Transports::new(incoming_tx.clone(), shutdown.clone());
        transports.tls = tls;
        if let Some((group, interface)) = section.announce.channel(section.announce_interface) {
            transports
                .join_announces(group, interface)
                .map_err(|e| RunError::Bind(SocketAddr::V4(group), e))?;
        }
        let waiters: Waiters = Arc::default();
        let sink_waiters = waiters.clone();
        let sink = move |event: PoolUserEvent| match event {
            PoolUserEvent::Resolved { request, result } => {
                let waiter = sink_waiters
                    .lock()
                    .ok()
                    .and_then(|mut w| w.remove(&request));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(result);
                }
            }
            PoolUserEvent::RegistrarUp => tracing::debug!("registrar association up"),
            PoolUserEvent::RegistrarLost => tracing::warn!("registrar association lost; hunting"),
            PoolUserEvent::RegistrarSilent => {
                metrics::counter!("rserpool_pool_user_registrars_silent_total").increment(1);
                tracing::warn!("registrar answered nothing in time; hunting another");
            }
            PoolUserEvent::RegistrarRefused { reason } => {
                static LOG: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(1));
                metrics::counter!("rserpool_pool_user_registrars_refused_total").increment(1);
                if let Some(suppressed) = LOG.permit() {
                    tracing::warn!(%reason, suppressed, "not using a registrar that did not prove it is one");
                }
            }
            PoolUserEvent::Warning(warning) => tracing::warn!(%warning, "pool user"),
            PoolUserEvent::AnsweredStale {
                pool_handle,
                requests,
            } => {
                static LOG: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(1));
                metrics::counter!("rserpool_pool_user_stale_answers_total")
                    .increment(requests as u64);
                if let Some(suppressed) = LOG.permit() {
                    tracing::warn!(pool = %pool_handle, requests, suppressed, "no registrar answered in time: answered from the last answer");
                }
            }
        };
        let (handle, commands) = Handle::new();
        let engine = Arc::new(Mutex::new(engine));
        tokio::spawn(driver::run(
            engine.clone(),
            transports,
            incoming_rx,
            commands,
            sink,
            shutdown.clone(),
        ));
        Ok(Self {
            handle,
            engine,
            waiters,
            meters: Arc::default(),
        })
    }

    /// Resolves a pool handle (`items`: how many PEs, `None`: the registrar's choice),
    /// counted and timed by where the answer came from.
    pub(crate) async fn resolve(
        &self,
        pool_handle: PoolHandle,
        items: Option<u32>,
    ) -> Result<Resolution, ResolveError> {
        let started = driver::now();
        let result = self.resolve_unmetered(pool_handle, items).await;
        self.meters
            .get_or_init(ResolutionMeters::new)
            .record(&result, driver::now().saturating_duration_since(started));
        result
    }

    async fn resolve_unmetered(
        &self,
        pool_handle: PoolHandle,
        items: Option<u32>,
    ) -> Result<Resolution, ResolveError> {
        // The gateways resolve per request: a cache hit needs neither the driver nor a
        // registrar. (The driver holds the lock only between awaits, so this waits for
        // one engine step at most.)
        let hit = driver::lock(&self.engine).resolve_from_cache(pool_handle, items, driver::now());
        if let Some(hit) = hit {
            if hit.refresh {
                // Renew the cache before it runs out; this request does not wait for it.
                self.handle
                    .command(move |engine, now| engine.refresh(pool_handle, items, now))
                    .await;
            }
            return Ok(hit.resolution);
        }
        let (tx, rx) = oneshot::channel();
        let waiters = self.waiters.clone();
        let sent = self
            .handle
            .command(move |engine, now| {
                let request = engine.resolve(pool_handle, items, now);
                if let Ok(mut waiters) = waiters.lock() {
                    waiters.insert(request, tx);
                }
            })
            .await;
        if !sent {
            return Err(ResolveError::NoRegistrar);
        }
        rx.await.unwrap_or(Err(ResolveError::NoRegistrar))
    }

    /// The registrar in use (its endpoint, and its ID when known), while an
    /// association is up.
    pub(crate) fn registrar(
        &self,
    ) -> Option<(Endpoint, Option<rserpool_proto::wire::RegistrarId>)> {
        driver::lock(&self.engine).current_registrar()
    }

    /// The cache's answers for the next process of a binary upgrade.
    pub(crate) fn carry_cache(&self) -> Vec<u8> {
        driver::lock(&self.engine).carry_cache(driver::now())
    }

    /// Fills the cache from the previous process's answers; the pools taken.
    pub(crate) fn adopt_cache(
        &self,
        record: &[u8],
    ) -> Result<usize, rserpool_proto::snapshot::SnapshotError> {
        driver::lock(&self.engine).adopt_cache(record, driver::now())
    }

    /// Reports a PE that could not be reached: it leaves the cache and the registrar is
    /// told.
    pub(crate) async fn report_unreachable(&self, pool_handle: PoolHandle, pe_id: PoolElementId) {
        self.handle
            .command(move |engine, _| engine.report_unreachable(pool_handle, pe_id))
            .await;
    }
}

/// `# HELP` for the pool user's families (once the recorder is installed).
pub(crate) fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "rserpool_pool_user_registrars_silent_total",
        "registrars left after they did not answer in time"
    );
    describe_counter!(
        "rserpool_pool_user_registrars_refused_total",
        "registrars not used because they did not prove they are one"
    );
    describe_counter!(
        "rserpool_pool_user_resolutions_total",
        "pool resolutions, by where the answer came from (cache, registrar, stale, failed)"
    );
    metrics::describe_histogram!(
        "rserpool_pool_user_resolution_seconds",
        "how long a pool resolution took, by where the answer came from"
    );
    describe_counter!(
        "rserpool_pool_user_stale_answers_total",
        "resolutions answered from the last known answer while no registrar answered"
    );
}

impl rserpool_gateways::Directory for PoolUser {
    async fn resolve(
        &self,
        pool_handle: PoolHandle,
        items: Option<u32>,
    ) -> Result<Vec<PoolElement>, DirectoryError> {
        match Self::resolve(self, pool_handle, items).await {
            Ok(resolution) => Ok(resolution.pool_elements),
            Err(ResolveError::NoRegistrar | ResolveError::Overloaded) => {
                Err(DirectoryError::Unavailable)
            }
            Err(_) => Err(DirectoryError::UnknownPool),
        }
    }

    async fn report_unreachable(&self, pool_handle: PoolHandle, pe_id: PoolElementId) {
        Self::report_unreachable(self, pool_handle, pe_id).await;
    }
}

impl rserpool_gateways::SctpConnector for PoolUser {
    async fn connect_sctp(
        &self,
        pe: &PoolElement,
        upstream: rserpool_gateways::tcp::SctpUpstream,
    ) -> std::io::Result<tokio::net::UnixStream> {
        crate::transport::bridge::open(pe, upstream).await
    }
}
