//! One client's session: the task that drives both sockets as the session layer
//! (`rserpool_proto::session`) decides, what a listener's sessions share (the pool,
//! meters, passive health), and the log and meters of the session's events.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use rserpool_proto::session::{PeFailure, Session, SessionEvent, SessionOutput};
use rserpool_proto::wire::{PoolElement, PoolElementId};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::config::ListenerConfig;
use super::framing::FramingCheck;
use super::open_sessions::{OpenSessions, SessionPlace};
use super::side::{Side, Stream, connect, read_into, ready};
use crate::health::PoolHealth;
use crate::{Directory, DirectoryError, SctpConnector};

/// A resolve or connect under way, polled alongside the session's sockets.
pub(super) type Pending<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A listener's per-pool meters, looked up once rather than per session.
pub(super) struct Meters {
    pub(super) sessions: Counter,
    pub(super) active: Gauge,
    pub(super) failed: Counter,
    pub(super) failovers_with_cookie: Counter,
    pub(super) failovers_without_cookie: Counter,
    pub(super) half_closed_expired: Counter,
    pub(super) idle_expired: Counter,
    pub(super) stall: Histogram,
    pub(super) ejections: Counter,
    /// Sessions per PE.
    pub(super) pes: crate::meters::PeMeters,
}

impl Meters {
    pub(super) fn new(pool: &str) -> Self {
        let label = || ("pool", pool.to_owned());
        let failovers = |cookie: &'static str| metrics::counter!("rserpool_tcp_failovers_total", "pool" => pool.to_owned(), "cookie" => cookie);
        Self {
            sessions: metrics::counter!("rserpool_tcp_sessions_total", &[label()]),
            active: metrics::gauge!("rserpool_tcp_sessions_active", &[label()]),
            failed: metrics::counter!("rserpool_tcp_sessions_failed_total", &[label()]),
            failovers_with_cookie: failovers("true"),
            failovers_without_cookie: failovers("false"),
            half_closed_expired: metrics::counter!(
                "rserpool_tcp_half_closed_expired_total",
                &[label()]
            ),
            idle_expired: metrics::counter!("rserpool_tcp_idle_expired_total", &[label()]),
            stall: metrics::histogram!("rserpool_tcp_failover_stall_seconds", &[label()]),
            ejections: metrics::counter!("rserpool_tcp_pe_ejections_total", &[label()]),
            pes: crate::meters::PeMeters::tcp(pool),
        }
    }
}

/// What every session of a listener shares.
pub(super) struct Listener<D> {
    pub(super) config: ListenerConfig,
    pub(super) pool: String,
    pub(super) meters: Meters,
    pub(super) directory: Arc<D>,
    pub(super) health: Mutex<PoolHealth>,
    pub(super) ejections: crate::health::EjectionBoard,
    /// Open sessions per PE, with `least_sessions`.
    pub(super) open_sessions: Option<OpenSessions>,
}

impl<D> Listener<D> {
    /// `pes` with ejected PEs last and new ones (maybe) behind the settled; with
    /// `least_sessions`, fewest open sessions first before that.
    pub(super) fn order(&self, mut pes: Vec<PoolElement>) -> Vec<PoolElement> {
        if let Some(open_sessions) = &self.open_sessions {
            open_sessions.fewest_first(&mut pes);
        }
        let mut order: Vec<usize> = (0..pes.len()).collect();
        if let Ok(mut health) = self.health.lock() {
            let id = |index: &usize| pes.get(*index).map_or(PoolElementId(0), |pe| pe.id);
            health.order(&mut order, 0, id, crate::now());
        }
        let mut slots: Vec<Option<PoolElement>> = pes.into_iter().map(Some).collect();
        order
            .iter()
            .filter_map(|index| slots.get_mut(*index)?.take())
            .collect()
    }

    /// Gives a resolution's answer to `session` (ejected PEs last); the PEs offered,
    /// unless no registrar could be asked.
    pub(super) fn hand_over(
        &self,
        answer: Result<Vec<PoolElement>, DirectoryError>,
        session: &mut Session,
    ) -> Option<usize> {
        if let Err(DirectoryError::Unavailable) = answer {
            session.resolution_unavailable(crate::now());
            return None;
        }
        let pes = self.order(answer.unwrap_or_default());
        let offered = pes.len();
        session.resolved(pes, crate::now());
        Some(offered)
    }

    /// What a session event means for the session table, the open sessions per PE,
    /// passive health and metrics.
    pub(super) fn on_event<'a>(
        &'a self,
        event: &SessionEvent,
        (entry, place): (&crate::SessionEntry, &mut Option<SessionPlace<'a>>),
        peer: SocketAddr,
        offered: usize,
    ) {
        match event {
            SessionEvent::Started { pe } => {
                entry.started(*pe);
                *place = self.open_sessions.as_ref().map(|s| s.open(*pe));
            }
            SessionEvent::FailedOver { to, .. } => {
                entry.failed_over(*to);
                *place = self.open_sessions.as_ref().map(|s| s.open(*to));
            }
            SessionEvent::PeFailed { pe, failure } => {
                if failure.counts_against_pe() {
                    self.observe(*pe, false, offered);
                }
            }
            SessionEvent::HalfCloseExpired
            | SessionEvent::IdleExpired
            | SessionEvent::Unrecoverable { .. } => {}
        }
        record(&self.pool, &self.meters, peer, event);
    }

    /// Records how a session's PE did (`offered`: the PEs its last resolution listed).
    pub(super) fn observe(&self, pe: PoolElementId, ok: bool, offered: usize) {
        self.meters.pes.record(pe, ok, None);
        let now = crate::now();
        let ejections = self
            .health
            .lock()
            .map(|mut health| health.observe(pe, ok, offered, now))
            .unwrap_or_default();
        for ejection in ejections {
            self.meters.ejections.increment(1);
            self.ejections.post(&self.pool, &ejection, "sessions", now);
        }
    }
}

/// What a session's task holds besides the session itself: both ends, and the
/// resolution or connection under way.
pub(super) struct Ends<'a> {
    pub(super) client: Side,
    pub(super) pe: Option<Side>,
    pub(super) resolving: Option<Pending<'a, Result<Vec<PoolElement>, DirectoryError>>>,
    pub(super) connecting: Option<Pending<'a, Option<Stream>>>,
    /// The session ended in failure: the client is closed without waiting for output.
    pub(super) failed: bool,
    /// PEs the last resolution listed (outlier detection's panic threshold).
    pub(super) offered: usize,
    /// The current PE sent data: its connection worked (outlier detection counts a
    /// success then, not at connect, since a PE that resets every session connects).
    pub(super) pe_answered: bool,
    /// This session counted on its PE (`least_sessions`).
    pub(super) place: Option<SessionPlace<'a>>,
}

impl<'a> Ends<'a> {
    pub(super) fn new(client: TcpStream) -> Self {
        Self {
            client: Side::new(Stream::Tcp(client)),
            pe: None,
            resolving: None,
            connecting: None,
            failed: false,
            offered: 0,
            pe_answered: false,
            place: None,
        }
    }

    /// A connection to a PE came up, or could not be made.
    pub(super) fn connected(&mut self, stream: Option<Stream>, session: &mut Session) {
        self.connecting = None;
        match stream {
            Some(stream) => {
                self.pe = Some(Side::new(stream));
                session.pe_connected(crate::now());
            }
            None => session.pe_failed(PeFailure::Connect, crate::now()),
        }
    }

    /// Carries out what the session asks.
    pub(super) async fn carry_out<D: Directory + SctpConnector>(
        &mut self,
        session: &mut Session,
        listener: &'a Listener<D>,
        (entry, peer): (&crate::SessionEntry, SocketAddr),
    ) {
        let config = &listener.config;
        while let Some(output) = session.poll() {
            match output {
                SessionOutput::Resolve(handle) => {
                    self.resolving = Some(Box::pin(listener.directory.resolve(handle, None)));
                }
                SessionOutput::Connect(target) => {
                    self.pe = None;
                    self.pe_answered = false;
                    let timeout = config.session.connect_timeout;
                    let directory = &*listener.directory;
                    let upstream = config.sctp;
                    self.connecting = Some(Box::pin(async move {
                        connect(directory, &target, timeout, upstream).await
                    }));
                }
                SessionOutput::SendToPe(bytes) => {
                    if let Some(side) = &mut self.pe {
                        side.send(bytes);
                    }
                }
                SessionOutput::ClosePe => {
                    self.pe = None;
                    self.connecting = None;
                }
                SessionOutput::ShutdownPe => {
                    if let Some(side) = &mut self.pe {
                        side.shutdown_wanted = true;
                    }
                }
                SessionOutput::ReportUnreachable(pe_id) => {
                    listener
                        .directory
                        .report_unreachable(config.pool_handle, pe_id)
                        .await;
                }
                SessionOutput::SendToClient(bytes) => self.client.send(bytes),
                SessionOutput::ShutdownClient => self.client.shutdown_wanted = true,
                SessionOutput::CloseClient { failed } => self.failed = failed,
                SessionOutput::Event(event) => {
                    listener.on_event(&event, (entry, &mut self.place), peer, self.offered);
                }
            }
        }
    }

    /// A failed write is news for the session once its current output is done;
    /// whether there was one.
    pub(super) fn report_write_failures(&mut self, session: &mut Session) -> bool {
        if session.is_closed() {
            return false;
        }
        if self.pe.as_mut().is_some_and(Side::take_failure) {
            session.pe_failed(PeFailure::Reset, crate::now());
            return true;
        }
        if self.client.take_failure() {
            session.client_closed();
            return true;
        }
        false
    }

    /// The session is over: queued output reaches the client (unless it failed, or
    /// within 5 s), then the client is closed.
    pub(super) async fn finish(mut self, meters: &Meters) {
        drop(self.pe.take());
        if self.failed {
            // The stream ends here instead of going on with a gap: what the client got
            // is exactly what the PEs produced, and the close tells it the rest is not
            // coming.
            meters.failed.increment(1);
        } else {
            let client = &mut self.client;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !client.pending.is_empty() && !client.failed {
                match tokio::time::timeout_at(deadline, client.stream.ready(Interest::WRITABLE))
                    .await
                {
                    Ok(Ok(_)) => client.flush(),
                    _ => break,
                }
            }
        }
        self.client.close();
    }
}

/// Client bytes for the session, checked against the listener's framing when the PEs
/// take messages.
pub(super) fn client_bytes<D>(
    session: &mut Session,
    framing: Option<&mut FramingCheck>,
    bytes: &[u8],
    (listener, peer): (&Listener<D>, SocketAddr),
) {
    match framing.map(|check| check.feed(bytes)) {
        Some(Err(error)) => {
            tracing::warn!(%peer, pool = %listener.pool, %error, "client stream breaks the listener's framing: closing it");
            session.client_closed();
        }
        _ => session.client_data(bytes, crate::now()),
    }
}

/// What a read from the PE means for the session; the first bytes from a PE count as
/// its success for outlier detection (`answered`: already counted, and the PEs the
/// last resolution offered).
pub(super) fn pe_read<D>(
    session: &mut Session,
    result: Option<io::Result<&[u8]>>,
    listener: &Listener<D>,
    (answered, offered): (&mut bool, usize),
) {
    match result {
        None => {}
        Some(Ok([])) => session.pe_eof(crate::now()),
        Some(Ok(bytes)) => {
            if !*answered && let Some(answering) = session.current_pe() {
                *answered = true;
                listener.observe(answering, true, offered);
            }
            session.pe_data(bytes, crate::now());
        }
        Some(Err(_)) => session.pe_failed(PeFailure::Reset, crate::now()),
    }
}

/// Runs one client's session to its end.
pub(super) async fn run_session<D: Directory + SctpConnector>(
    client: TcpStream,
    peer: SocketAddr,
    listener: &Listener<D>,
    shutdown: CancellationToken,
    entry: &crate::SessionEntry,
) {
    let config = &listener.config;
    listener.meters.sessions.increment(1);
    listener.meters.active.increment(1.0);
    let mut ends = Ends::new(client);
    let mut framing = config.sctp.framing.map(FramingCheck::new);
    let mut session = Session::new(config.pool_handle, config.session, crate::now());
    // Made once: a timer and a cancellation wait per loop turn would cost each turn.
    let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut timer_at = None;
    let mut closing = std::pin::pin!(shutdown.cancelled());
    let mut shutdown_seen = false;
    let high = config.buffer;
    loop {
        ends.carry_out(&mut session, listener, (entry, peer)).await;
        if ends.report_write_failures(&mut session) {
            continue;
        }
        if session.is_closed() {
            break;
        }
        ends.client.shutdown_when_flushed();
        if let Some(side) = &mut ends.pe {
            side.shutdown_when_flushed();
        }
        let deadline = session.next_timeout();
        if let Some(at) = deadline
            && timer_at != Some(at)
        {
            timer.as_mut().reset(tokio::time::Instant::from_std(at));
            timer_at = Some(at);
        }
        let (client, pe) = (&ends.client, &ends.pe);
        let read_client = !client.eof
            && session.unsent() < high as u64
            && pe.as_ref().is_none_or(|side| side.queued < high);
        let read_pe = pe.as_ref().is_some_and(|side| !side.eof) && client.queued < high;
        let write_client = !client.pending.is_empty();
        let write_pe = pe.as_ref().is_some_and(|side| !side.pending.is_empty());
        tokio::select! {
            () = &mut closing, if !shutdown_seen => {
                shutdown_seen = true;
                session.client_closed();
            }
            ready = ready(Some(&ends.client), Interest::READABLE), if read_client => match ready {
                Ok(_) => read_into(&mut ends.client, |result| match result {
                    None => {}
                    Some(Ok([])) => session.client_eof(crate::now()),
                    Some(Ok(bytes)) => {
                        client_bytes(&mut session, framing.as_mut(), bytes, (listener, peer));
                    }
                    Some(Err(_)) => session.client_closed(),
                }),
                Err(_) => session.client_closed(),
            },
            ready = ready(ends.pe.as_ref(), Interest::READABLE), if read_pe => match (ready, &mut ends.pe) {
                (Ok(_), Some(side)) => read_into(side, |result| {
                    let answered = (&mut ends.pe_answered, ends.offered);
                    pe_read(&mut session, result, listener, answered);
                }),
                (Err(_), _) => session.pe_failed(PeFailure::Reset, crate::now()),
                (Ok(_), None) => {}
            },
            _ = ready(Some(&ends.client), Interest::WRITABLE), if write_client => {
                ends.client.flush();
                if ends.client.take_failure() {
                    session.client_closed();
                }
            }
            _ = ready(ends.pe.as_ref(), Interest::WRITABLE), if write_pe => {
                if let Some(side) = &mut ends.pe {
                    side.flush();
                    if side.take_failure() {
                        session.pe_failed(PeFailure::Reset, crate::now());
                    }
                }
            }
            answer = async { ends.resolving.as_mut().expect("guarded").await }, if ends.resolving.is_some() => {
                ends.resolving = None;
                ends.offered = listener.hand_over(answer, &mut session).unwrap_or(ends.offered);
            }
            stream = async { ends.connecting.as_mut().expect("guarded").await }, if ends.connecting.is_some() => {
                ends.connected(stream, &mut session);
            }
            () = &mut timer, if deadline.is_some() => {
                // Fired: re-armed when the session names its next deadline.
                timer_at = None;
                session.timeout(crate::now());
            }
        }
    }
    listener.meters.active.decrement(1.0);
    ends.finish(&listener.meters).await;
}

pub(super) fn record(pool: &str, meters: &Meters, peer: SocketAddr, event: &SessionEvent) {
    match event {
        SessionEvent::Started { pe } => tracing::debug!(%peer, pool, pe = %pe, "session started"),
        SessionEvent::PeFailed { pe, failure } => {
            tracing::debug!(%peer, pool, pe = %pe, ?failure, "pool element failed");
        }
        SessionEvent::FailedOver {
            from,
            to,
            failure,
            with_cookie,
            stall,
        } => {
            if *with_cookie {
                meters.failovers_with_cookie.increment(1);
            } else {
                meters.failovers_without_cookie.increment(1);
            }
            meters.stall.record(stall.as_secs_f64());
            tracing::info!(%peer, pool, from = %from, to = %to, ?failure, with_cookie, stall_ms = stall.as_millis(), "session failed over");
        }
        SessionEvent::HalfCloseExpired => {
            meters.half_closed_expired.increment(1);
            tracing::debug!(%peer, pool, "session closed: the PE did not finish after the client's half-close");
        }
        SessionEvent::IdleExpired => {
            meters.idle_expired.increment(1);
            tracing::debug!(%peer, pool, "session closed: no data either way for the idle timeout");
        }
        SessionEvent::Unrecoverable { failure, reason } => {
            tracing::warn!(%peer, pool, ?failure, reason, "session closed: it could not fail over");
        }
    }
}
