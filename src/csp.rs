//! Component Status Protocol reports (rsplib's CSP, `rserpool_proto::csp`): when a
//! monitor is configured (`csp.server`, `--csp-server` or rsplib's `CSP_SERVER`), every
//! role sends one UDP report per component and interval, so rsplib's `cspmonitor` shows
//! our registrars, PEs and gateways beside rsplib's. On shutdown each component's last
//! report carries the FINAL flag. Reports are fire and forget: a monitor that is down
//! costs a counter and a rate-limited log line, never the role.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::time::Instant;

use rserpool_proto::csp::{Association, ComponentId, Report};
use rserpool_proto::engine::TransportKind;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::config::CspSection;
use crate::logging::RateLimitedLog;

/// The IP protocol number of a transport, for an association's `protocol` field.
pub(crate) const fn protocol(transport: TransportKind) -> u16 {
    match transport {
        TransportKind::Tcp => 6,
        TransportKind::Sctp => 132,
    }
}

/// A component's state at one report, as its role sees it.
#[derive(Debug, Clone)]
pub(crate) struct Component {
    pub(crate) id: ComponentId,
    pub(crate) location: String,
    pub(crate) status: String,
    /// Load as a fraction of capacity; `None`: not applicable.
    pub(crate) workload: Option<f64>,
    pub(crate) associations: Vec<Association>,
}

/// What a role reports: called once per interval.
pub(crate) type Source =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<Component>> + Send>> + Send + Sync>;

/// The running reporter; [`Reporter::finish`] sends the final reports.
pub(crate) struct Reporter {
    task: JoinHandle<()>,
}

impl Reporter {
    /// Starts reporting if `section` names a monitor; `None` otherwise. The roles'
    /// `shutdown` ends it with one FINAL report per component.
    pub(crate) async fn start(
        section: &CspSection,
        source: Source,
        shutdown: &CancellationToken,
    ) -> Result<Option<Self>, RunError> {
        let Some(monitor) = &section.server else {
            return Ok(None);
        };
        let monitor = monitor.resolve().await.map_err(RunError::Usage)?;
        let local: SocketAddr = if monitor.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| RunError::Bind(local, e))?;
        describe();
        tracing::info!(%monitor, interval = ?section.interval, "CSP reports to a status monitor");
        let task = tokio::spawn(report(
            socket,
            monitor,
            section.interval,
            source,
            shutdown.clone(),
        ));
        Ok(Some(Self { task }))
    }

    /// Waits (at most a second) for the final reports after shutdown was signalled.
    pub(crate) async fn finish(reporter: Option<Self>) {
        if let Some(reporter) = reporter {
            let _ = tokio::time::timeout(Duration::from_secs(1), reporter.task).await;
        }
    }
}

fn describe() {
    metrics::describe_counter!(
        "rserpool_csp_reports_total",
        "CSP status reports to the monitor, by result (sent, failed)"
    );
}

async fn report(
    socket: UdpSocket,
    monitor: SocketAddr,
    interval: Duration,
    source: Source,
    shutdown: CancellationToken,
) {
    let started = crate::driver::now();
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Vec::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = every.tick() => {
                // The role stopping meanwhile leaves the last view for the final report.
                let now = tokio::select! {
                    () = shutdown.cancelled() => break,
                    now = source() => now,
                };
                last = now;
                send(&socket, monitor, &last, started, interval, false).await;
            }
        }
    }
    send(&socket, monitor, &last, started, interval, true).await;
}

async fn send(
    socket: &UdpSocket,
    monitor: SocketAddr,
    components: &[Component],
    started: Instant,
    interval: Duration,
    is_final: bool,
) {
    static LOG: RateLimitedLog = RateLimitedLog::new(Duration::from_secs(60));
    let timestamp_micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let interval_micros = u32::try_from(interval.as_micros()).unwrap_or(u32::MAX);
    for component in components {
        let datagram = Report {
            sender: component.id,
            is_final,
            timestamp_micros,
            interval_micros,
            location: component.location.clone(),
            status: component.status.clone(),
            workload: component.workload,
            associations: component.associations.clone(),
        }
        .encode();
        match socket.send_to(&datagram, monitor).await {
            Ok(_) => {
                metrics::counter!("rserpool_csp_reports_total", "result" => "sent").increment(1)
            }
            Err(error) => {
                metrics::counter!("rserpool_csp_reports_total", "result" => "failed").increment(1);
                if let Some(suppressed) = LOG.permit() {
                    tracing::warn!(%monitor, %error, suppressed, "CSP report not sent (the monitor is down or unreachable)");
                }
            }
        }
    }
}

/// How long each association has been seen up: the reporter learns of associations
/// only by looking, so a duration counts from the first report that listed it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Uptimes(Arc<Mutex<HashMap<(ComponentId, u32), Instant>>>);

impl Uptimes {
    /// The associations to `receivers` (ID, protocol, PPID) with their durations;
    /// receivers no longer listed are forgotten.
    pub(crate) fn associations(
        &self,
        receivers: impl IntoIterator<Item = (ComponentId, u16, u32)>,
    ) -> Vec<Association> {
        let now = crate::driver::now();
        let Ok(mut first_seen) = self.0.lock() else {
            return Vec::new();
        };
        let listed: Vec<Association> = receivers
            .into_iter()
            .map(|(receiver, protocol, ppid)| {
                let since = *first_seen.entry((receiver, ppid)).or_insert(now);
                Association {
                    receiver,
                    duration_micros: u64::try_from(now.duration_since(since).as_micros())
                        .unwrap_or(u64::MAX),
                    flags: 0,
                    protocol,
                    ppid,
                }
            })
            .collect();
        first_seen.retain(|(receiver, ppid), _| {
            listed
                .iter()
                .any(|a| a.receiver == *receiver && a.ppid == *ppid)
        });
        listed
    }
}

/// This host's name, for the location text (rsplib puts the host name first too).
pub(crate) fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
