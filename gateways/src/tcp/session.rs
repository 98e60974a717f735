//! One client's session: the task that drives both sockets as the session layer
//! (`rserpool_proto::session`) decides, what a listener's sessions share (the pool,
//! meters, passive health), and a session's departure to the next process in a binary
//! upgrade (its arrival there: `arrival`; the record itself: `handover`).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rserpool_proto::session::{PeFailure, Session, SessionEvent, SessionOutput};
use rserpool_proto::wire::{PoolElement, PoolElementId};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::mpsc::OwnedPermit;
use tokio_util::sync::CancellationToken;

use super::config::ListenerConfig;
use super::events::{Meters, record};
use super::framing::FramingCheck;
use super::handover::{DriverState, SideState};
use super::open_sessions::{OpenSessions, SessionPlace};
use super::side::{Side, Stream, connect, read_into, ready};
use crate::handover::{Handed, Handover, MAX_RECORD};
use crate::health::PoolHealth;
use crate::{Directory, DirectoryError, SctpConnector};

/// A resolve or connect under way, polled alongside the session's sockets.
pub(super) type Pending<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

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
    /// Sessions leaving for the next process, and arriving from the previous one.
    pub(super) handover: Handover,
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
    /// Whether the session's sockets can go to another process now: both TCP, neither
    /// failed, no resolution or connection under way.
    pub(super) fn can_leave(&self) -> bool {
        let tcp = |side: &Side| matches!(side.stream, Stream::Tcp(_)) && !side.failed;
        tcp(&self.client)
            && self.pe.as_ref().is_some_and(tcp)
            && self.resolving.is_none()
            && self.connecting.is_none()
    }

    /// The client's socket can take more: writes its queue (a failure ends the session).
    fn flush_client(&mut self, session: &mut Session) {
        self.client.flush();
        if self.client.take_failure() {
            session.client_closed();
        }
    }

    /// The PE's socket can take more: writes its queue (a failure is the PE's).
    fn flush_pe(&mut self, session: &mut Session) {
        if let Some(side) = &mut self.pe {
            side.flush();
            if side.take_failure() {
                session.pe_failed(PeFailure::Reset, crate::now());
            }
        }
    }

    /// Sends each side's pending FIN once its queue is out.
    fn shutdown_when_flushed(&mut self) {
        self.client.shutdown_when_flushed();
        if let Some(side) = &mut self.pe {
            side.shutdown_when_flushed();
        }
    }

    /// What to wait for: reading the client, reading the PE, writing the client,
    /// writing the PE. A side is read only while the other side's queue (and the
    /// session's unsent client bytes) stay below `high`: back-pressure end to end.
    fn interests(&self, session: &Session, high: usize) -> [bool; 4] {
        let (client, pe) = (&self.client, &self.pe);
        let read_client = !client.eof
            && session.unsent() < high as u64
            && pe.as_ref().is_none_or(|side| side.queued < high);
        let read_pe = pe.as_ref().is_some_and(|side| !side.eof) && client.queued < high;
        let write_client = !client.pending.is_empty();
        let write_pe = pe.as_ref().is_some_and(|side| !side.pending.is_empty());
        [read_client, read_pe, write_client, write_pe]
    }

    /// The client's and the PE's sockets, taken out of this process's reactor (no FIN
    /// is sent: the connections go on elsewhere).
    pub(super) fn into_sockets(self) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        let owned = |side: Side| match side.stream {
            Stream::Tcp(stream) => stream.into_std().map(std::os::fd::OwnedFd::from),
            Stream::Local(_) => Err(io::Error::other("not a TCP connection")),
        };
        let pe = self
            .pe
            .ok_or_else(|| io::Error::other("no PE connection"))?;
        Ok((owned(self.client)?, owned(pe)?))
    }

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
        while let Some(output) = session.poll() {
            // `apply` takes the output, so that nothing of it is held across the
            // report's wait; the report is on the heap: rare, and it would size every
            // session's task.
            if let Some(unreachable) = self.apply(output, listener, (entry, peer)) {
                let directory = &listener.directory;
                let pool_handle = listener.config.pool_handle;
                Box::pin(directory.report_unreachable(pool_handle, unreachable)).await;
            }
        }
    }

    /// Carries out one output of the session, except the one that needs a wait: the
    /// PE to report unreachable, returned.
    fn apply<D: Directory + SctpConnector>(
        &mut self,
        output: SessionOutput,
        listener: &'a Listener<D>,
        (entry, peer): (&crate::SessionEntry, SocketAddr),
    ) -> Option<PoolElementId> {
        let config = &listener.config;
        match output {
            SessionOutput::ReportUnreachable(pe_id) => return Some(pe_id),
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
            SessionOutput::SendToClient(bytes) => self.client.send(bytes),
            SessionOutput::ShutdownClient => self.client.shutdown_wanted = true,
            SessionOutput::CloseClient { failed } => self.failed = failed,
            SessionOutput::Event(event) => {
                listener.on_event(&event, (entry, &mut self.place), peer, self.offered);
            }
        }
        None
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
                match tokio::time::timeout_at(deadline, ready(Some(&*client), Interest::WRITABLE))
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

/// What a read from the client means for the session: its bytes, checked against the
/// listener's framing when the PEs take messages, its half-close, or its end.
pub(super) fn client_read<D>(
    session: &mut Session,
    result: Option<io::Result<&[u8]>>,
    framing: Option<&mut FramingCheck>,
    (listener, peer): (&Listener<D>, SocketAddr),
) {
    let bytes = match result {
        None => return,
        Some(Ok([])) => return session.client_eof(crate::now()),
        Some(Ok(bytes)) => bytes,
        Some(Err(_)) => return session.client_closed(),
    };
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

/// Runs one client's session to its end. Not an async fn: that would keep a copy of
/// each argument in the session's task beside the one `drive` keeps.
pub(super) fn run_session<D: Directory + SctpConnector>(
    client: TcpStream,
    peer: SocketAddr,
    listener: &Listener<D>,
    shutdown: CancellationToken,
    entry: &crate::SessionEntry,
) -> impl Future<Output = ()> {
    let config = &listener.config;
    listener.meters.sessions.increment(1);
    let driven = Box::new(Driven {
        session: Session::new(config.pool_handle, config.session.clone(), crate::now()),
        ends: Ends::new(client),
        framing: config.sctp.framing.map(FramingCheck::new),
    });
    // Outside tokio's cooperative budget, which each poll of a socket's readiness
    // spends: yielding every 128 of them cost about 15 % of the bulk throughput
    // (tcp-load bulk, 64 connections); `drive` yields every TURNS_BEFORE_YIELDING
    // turns instead.
    tokio::task::unconstrained(drive(driven, peer, listener, shutdown, entry))
}

/// A session and what its task holds; on the heap (`Box<Driven>`), because a future
/// keeps a copy of every value moved into it at each level (the argument, the local it
/// is moved to): boxed, what an idle session holds is one copy, and its task's future
/// stays small (`bench/sessions.sh`).
pub(super) struct Driven<'a> {
    pub(super) session: Session,
    pub(super) ends: Ends<'a>,
    pub(super) framing: Option<FramingCheck>,
}

/// Turns of a session's loop (each moves at most one read of each side) before it
/// lets the thread's other tasks run.
const TURNS_BEFORE_YIELDING: u32 = 1024;

/// Counts a turn of a session's loop and now and then lets the thread's other tasks
/// run: outside tokio's budget (see `run_session`), a session whose sockets never run
/// dry would keep its thread.
async fn take_turn(turns: &mut u32) {
    *turns = turns.wrapping_add(1);
    if turns.is_multiple_of(TURNS_BEFORE_YIELDING) {
        tokio::task::yield_now().await;
    }
}

/// Drives a session until it ends, or leaves for the next process.
pub(super) async fn drive<'a, D: Directory + SctpConnector>(
    mut driven: Box<Driven<'a>>,
    peer: SocketAddr,
    listener: &'a Listener<D>,
    shutdown: CancellationToken,
    entry: &crate::SessionEntry,
) {
    let config = &listener.config;
    listener.meters.active.increment(1.0);
    // Made once: a timer and a cancellation wait per loop turn would cost each turn.
    let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut timer_at = None;
    let mut closing = std::pin::pin!(shutdown.cancelled());
    let mut shutdown_seen = false;
    let mut leaving = std::pin::pin!(listener.handover.leave().cancelled());
    let (mut leave_wanted, mut staying) = (false, false);
    let mut departure = None;
    let high = config.buffer;
    let mut turns = 0u32;
    loop {
        take_turn(&mut turns).await;
        let Driven { session, ends, .. } = &mut *driven;
        ends.carry_out(session, listener, (entry, peer)).await;
        if ends.report_write_failures(session) {
            continue;
        }
        if session.is_closed() {
            break;
        }
        if let Some(place) = departure.take() {
            // Not movable after all: the place goes back, and is asked for again.
            driven = match depart(driven, listener, (entry, peer), place) {
                Departure::Left => return,
                Departure::NotNow(back) => back,
                Departure::Stays(back) => {
                    staying = true;
                    back
                }
            };
        }
        let Driven {
            session,
            ends,
            framing,
        } = &mut *driven;
        ends.shutdown_when_flushed();
        let deadline = rearm(timer.as_mut(), &mut timer_at, session.next_timeout());
        let [read_client, read_pe, write_client, write_pe] = ends.interests(session, high);
        let departs = leave_wanted && !staying && !shutdown_seen && ends.can_leave();
        tokio::select! {
            () = &mut leaving, if !leave_wanted => leave_wanted = true,
            // The session goes on while it waits for its place in the queue of
            // departures: it stops only to be frozen and sent.
            place = listener.handover.departure(departs) => match place {
                Some(place) => departure = Some(place),
                None => staying = true,
            },
            () = &mut closing, if !shutdown_seen => {
                shutdown_seen = true;
                session.client_closed();
            }
            ready = ready(Some(&ends.client), Interest::READABLE), if read_client => match ready {
                Ok(()) => read_into(&mut ends.client, |result| {
                    client_read(session, result, framing.as_mut(), (listener, peer));
                }),
                Err(_) => session.client_closed(),
            },
            ready = ready(ends.pe.as_ref(), Interest::READABLE), if read_pe => match (ready, &mut ends.pe) {
                (Ok(()), Some(side)) => read_into(side, |result| {
                    let answered = (&mut ends.pe_answered, ends.offered);
                    pe_read(session, result, listener, answered);
                }),
                (Err(_), _) => session.pe_failed(PeFailure::Reset, crate::now()),
                (Ok(()), None) => {}
            },
            _ = ready(Some(&ends.client), Interest::WRITABLE), if write_client => {
                ends.flush_client(session);
            }
            _ = ready(ends.pe.as_ref(), Interest::WRITABLE), if write_pe => {
                ends.flush_pe(session);
            }
            answer = async { ends.resolving.as_mut().expect("guarded").await }, if ends.resolving.is_some() => {
                ends.resolving = None;
                ends.offered = listener.hand_over(answer, session).unwrap_or(ends.offered);
            }
            stream = async { ends.connecting.as_mut().expect("guarded").await }, if ends.connecting.is_some() => {
                ends.connected(stream, session);
            }
            () = &mut timer, if deadline.is_some() => {
                // Fired: re-armed when the session names its next deadline.
                timer_at = None;
                session.timeout(crate::now());
            }
        }
    }
    listener.meters.active.decrement(1.0);
    // Boxed: the closing wait would otherwise size every session's task.
    Box::pin(driven.ends.finish(&listener.meters)).await;
}

/// Points the session's timer at `deadline` unless it is there already (resetting a
/// timer costs; most turns keep the deadline); the deadline.
fn rearm(
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
    timer_at: &mut Option<std::time::Instant>,
    deadline: Option<std::time::Instant>,
) -> Option<std::time::Instant> {
    if let Some(at) = deadline
        && *timer_at != Some(at)
    {
        timer.reset(tokio::time::Instant::from_std(at));
        *timer_at = Some(at);
    }
    deadline
}

/// What became of a session asked to leave.
enum Departure<'a> {
    /// It went to the next process (or was lost on the way, which is logged).
    Left,
    /// It is not at a point where it can move: asked again later.
    NotNow(Box<Driven<'a>>),
    /// Its record is too large to move: it finishes here.
    Stays(Box<Driven<'a>>),
}

/// Hands the session to the next process through its place in the queue of
/// departures, if it is at a point where it can move.
fn depart<'a, D>(
    driven: Box<Driven<'a>>,
    listener: &'a Listener<D>,
    (entry, peer): (&crate::SessionEntry, SocketAddr),
    (name, place): (Arc<str>, OwnedPermit<Handed>),
) -> Departure<'a> {
    let Driven {
        session,
        ends,
        framing,
    } = &*driven;
    let record = match (&ends.pe, ends.can_leave()) {
        (Some(pe), true) => session.freeze(crate::now()).map(|session| {
            let (age, failovers) = entry.age_and_failovers();
            DriverState {
                peer,
                age,
                failovers,
                session,
                client: SideState::of(&ends.client),
                pe: SideState::of(pe),
                framing: DriverState::framing_of(framing.as_ref()),
                pe_answered: ends.pe_answered,
                offered: ends.offered as u64,
            }
        }),
        _ => None,
    };
    let Some(record) = record.map(|record| record.encode()) else {
        return Departure::NotNow(driven);
    };
    if record.len() > MAX_RECORD {
        tracing::info!(%peer, pool = %listener.pool, bytes = record.len(), "upgrade: a session too large to hand over finishes here");
        return Departure::Stays(driven);
    }
    listener.meters.active.decrement(1.0);
    match driven.ends.into_sockets() {
        Ok((client, pe)) => {
            listener.meters.departed.increment(1);
            place.send(Handed {
                listener: name,
                sockets: vec![client, pe],
                record,
            });
        }
        Err(error) => {
            listener.meters.handover_failures.increment(1);
            tracing::warn!(%peer, pool = %listener.pool, %error, "upgrade: a session could not be handed over and is lost");
        }
    }
    Departure::Left
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::SessionTable;
    use crate::handover::Handover;
    use crate::health::EjectionBoard;
    use crate::testing::NoPool;
    use rserpool_proto::wire::PoolHandle;

    fn listener() -> Listener<NoPool> {
        let pool_handle = PoolHandle::new(b"SizePool").expect("a valid handle");
        let config = ListenerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), pool_handle);
        Listener {
            meters: Meters::new("SizePool"),
            pool: "SizePool".into(),
            health: Mutex::new(PoolHealth::new(config.outliers, config.slow_start, 1)),
            ejections: EjectionBoard::default(),
            open_sessions: None,
            config,
            directory: Arc::new(NoPool),
            handover: Handover::default(),
        }
    }

    /// What a gateway with many idle sessions pays per session is its task's future
    /// (as large as the largest state it can be in) plus the boxed session: the future
    /// was 4.5 KiB before the session went on the heap and its rare waits were boxed
    /// (`bench/sessions.sh`: 6.42 KiB per idle session against HAProxy's 3.35).
    #[tokio::test]
    async fn a_session_task_keeps_its_state_on_the_heap_and_stays_small() {
        let listening = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listening.local_addr().expect("its address");
        let client = TcpStream::connect(address).await.expect("connect");
        let listener = listener();
        let table = SessionTable::default();
        let entry = table.open(address, listener.config.pool_handle, address);
        let session = run_session(client, address, &listener, CancellationToken::new(), &entry);
        let size = std::mem::size_of_val(&session);
        assert!(size <= 1024, "a session's task future is {size} bytes");
    }
}
