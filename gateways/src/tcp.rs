//! The TCP gateway: a legacy client connects with plain TCP; the gateway opens a
//! connection to a pool element of the listener's pool and relays, and when that PE
//! fails it moves the session to another PE as the session layer decides
//! (`rserpool_proto::session`): transparently when nothing was answered yet, with
//! cookie echo and replay for PEs with a control channel, else by closing the client.
//!
//! One task per session drives both sockets. Each side has an outgoing queue with a
//! byte budget: the gateway reads from one side only while the other side's queue is
//! below it (back-pressure end to end), so memory per session is bounded and a bulk
//! transfer in both directions cannot deadlock. Half-close is passed on.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use rserpool_proto::session::{PeFailure, Session, SessionConfig, SessionEvent, SessionOutput};
use rserpool_proto::wire::{PoolElement, PoolElementId, PoolHandle, TransportProtocol};
use socket2::SockRef;
use tokio::io::{Interest, Ready};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::health::{OutlierConfig, PoolHealth};
use crate::{Directory, DirectoryError, Lifecycle};

/// A resolve or connect under way, polled alongside the session's sockets.
type Pending<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// One TCP listener of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The pool their sessions go to.
    pub pool_handle: PoolHandle,
    /// Session timeouts and replay limit.
    pub session: SessionConfig,
    /// Open client connections at most; more are closed at once.
    pub max_connections: usize,
    /// Bytes queued towards one side before the gateway stops reading the other.
    pub buffer: usize,
    /// How client bytes become messages for PEs whose user transport is SCTP.
    pub sctp: SctpUpstream,
    /// When a PE whose sessions keep failing (refused or timed-out connects, resets,
    /// silence, protocol errors; not closes) is ejected: tried after the others.
    pub outliers: OutlierConfig,
    /// How long a new or returning PE's share of new sessions ramps up (zero: at once).
    pub slow_start: Duration,
}

/// Upstream options for SCTP pool elements: the PPID of data messages, and how the
/// client's byte stream is cut into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SctpUpstream {
    /// The payload protocol identifier of data (e.g. 33 for rsplib's PingPong).
    pub ppid: u32,
    /// `None`: each chunk the client sends is one message (fine for byte streams such as
    /// echo); otherwise messages carry their length in a header field.
    pub framing: Option<Framing>,
}

/// Message framing by a length field: a big-endian unsigned field of `size` bytes at
/// `offset` gives the message length, plus `adjust` (e.g. rsplib's PingPong: offset 2,
/// size 2, the length counting the whole message: adjust 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub offset: usize,
    pub size: usize,
    pub adjust: i64,
    /// Longer messages are a framing error (the client is closed).
    pub max_message: usize,
}

/// A client stream that does not follow its listener's framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message of {0} bytes does not fit the framing (at most {1}, at least the header)")]
pub struct FramingError(pub i64, pub usize);

impl Framing {
    /// Bytes up to the end of the length field.
    fn header(&self) -> usize {
        self.offset + self.size
    }

    /// The whole message's length from its header (at least [`Framing::header`] bytes).
    fn message_length(&self, header: &[u8]) -> Result<usize, FramingError> {
        let field = header.get(self.offset..self.header()).unwrap_or_default();
        let length = field.iter().fold(0i64, |v, b| (v << 8) | i64::from(*b)) + self.adjust;
        usize::try_from(length)
            .ok()
            .filter(|total| (self.header()..=self.max_message).contains(total))
            .ok_or(FramingError(length, self.max_message))
    }

    /// Takes the whole messages off the front of `buffer`.
    pub fn split(&self, buffer: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, FramingError> {
        let mut messages = Vec::new();
        while buffer.len() >= self.header() {
            let total = self.message_length(buffer)?;
            if buffer.len() < total {
                break;
            }
            messages.push(buffer.drain(..total).collect());
        }
        Ok(messages)
    }
}

/// Follows a client's stream through its listener's framing, so that a client breaking
/// it is closed before any PE sees the bytes (rather than failing PE after PE).
#[derive(Debug)]
struct FramingCheck {
    framing: Framing,
    header: Vec<u8>,
    /// Bytes of the current message still to come after its header.
    remaining: usize,
}

impl FramingCheck {
    fn new(framing: Framing) -> Self {
        Self {
            framing,
            header: Vec::with_capacity(framing.header()),
            remaining: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), FramingError> {
        while !bytes.is_empty() {
            let take = if self.remaining > 0 {
                let take = self.remaining.min(bytes.len());
                self.remaining -= take;
                take
            } else {
                let take = (self.framing.header() - self.header.len()).min(bytes.len());
                self.header
                    .extend_from_slice(bytes.get(..take).unwrap_or_default());
                if self.header.len() == self.framing.header() {
                    self.remaining = self.framing.message_length(&self.header)? - self.header.len();
                    self.header.clear();
                }
                take
            };
            bytes = bytes.get(take..).unwrap_or_default();
        }
        Ok(())
    }
}

impl ListenerConfig {
    /// Defaults for a listener.
    pub fn new(listen: SocketAddr, pool_handle: PoolHandle) -> Self {
        Self {
            listen,
            pool_handle,
            session: SessionConfig::default(),
            max_connections: 10_000,
            buffer: 256 * 1024,
            sctp: SctpUpstream::default(),
            outliers: OutlierConfig::default(),
            slow_start: crate::health::SLOW_START,
        }
    }
}

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A listener's per-pool meters, looked up once rather than per session.
struct Meters {
    sessions: Counter,
    active: Gauge,
    failed: Counter,
    failovers_with_cookie: Counter,
    failovers_without_cookie: Counter,
    half_closed_expired: Counter,
    idle_expired: Counter,
    stall: Histogram,
    ejections: Counter,
    /// Sessions per PE.
    pes: crate::meters::PeMeters,
}

impl Meters {
    fn new(pool: &str) -> Self {
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
struct Listener<D> {
    config: ListenerConfig,
    pool: String,
    meters: Meters,
    directory: Arc<D>,
    health: Mutex<PoolHealth>,
    ejections: crate::health::EjectionBoard,
}

impl<D> Listener<D> {
    /// `pes` with ejected PEs last and new ones (maybe) behind the settled.
    fn order(&self, pes: Vec<PoolElement>) -> Vec<PoolElement> {
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
    fn hand_over(
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

    /// What a session event means for the session table, passive health and metrics.
    fn on_event(
        &self,
        event: &SessionEvent,
        entry: &crate::SessionEntry,
        peer: SocketAddr,
        offered: usize,
    ) {
        match event {
            SessionEvent::Started { pe } => entry.started(*pe),
            SessionEvent::FailedOver { to, .. } => entry.failed_over(*to),
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
    fn observe(&self, pe: PoolElementId, ok: bool, offered: usize) {
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

/// Accepts clients until shut down; each gets a session task.
pub async fn serve<D: Directory>(
    socket: TcpListener,
    config: ListenerConfig,
    directory: Arc<D>,
    lifecycle: Lifecycle,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let pool = config.pool_handle.to_string();
    let refused =
        metrics::counter!("rserpool_tcp_connections_refused_total", "pool" => pool.clone());
    let listener = Arc::new(Listener {
        meters: Meters::new(&pool),
        pool,
        health: Mutex::new(PoolHealth::new(
            config.outliers,
            config.slow_start,
            crate::random_u64(),
        )),
        ejections: lifecycle.ejections.clone(),
        config,
        directory,
    });
    loop {
        let accepted = tokio::select! {
            () = lifecycle.stop_accepting.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let Ok((client, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused.increment(1);
            tracing::warn!(%peer, limit = listener.config.max_connections, "connection limit reached: closing a client");
            continue;
        };
        let _ = client.set_nodelay(true);
        let listener = listener.clone();
        let close = lifecycle.close_sessions.clone();
        let entry = lifecycle
            .table
            .open(listener.config.listen, listener.config.pool_handle, peer);
        lifecycle.sessions.spawn(async move {
            run_session(client, peer, &listener, close, &entry).await;
            drop(permit);
        });
    }
}

/// A session's connection: TCP, or the local stream of an SCTP bridge.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Local(UnixStream),
}

impl Stream {
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.try_write(bytes),
            Self::Local(stream) => stream.try_write(bytes),
        }
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        match self {
            Self::Tcp(stream) => stream.try_io(interest, f),
            Self::Local(stream) => stream.try_io(interest, f),
        }
    }

    async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        match self {
            Self::Tcp(stream) => stream.ready(interest).await,
            Self::Local(stream) => stream.ready(interest).await,
        }
    }

    fn socket(&self) -> SockRef<'_> {
        match self {
            Self::Tcp(stream) => SockRef::from(stream),
            Self::Local(stream) => SockRef::from(stream),
        }
    }
}

/// One side of a session (client or PE): its socket and the bytes waiting to go out.
///
/// Writes go straight to the socket and only what it does not take is queued, so the
/// usual exchange costs no extra task or wake-up; the session stops reading the other
/// side while `queued` is above the byte budget, so at most one read overshoots it.
struct Side {
    stream: Stream,
    pending: VecDeque<Vec<u8>>,
    /// Bytes of the first pending chunk already written.
    written: usize,
    queued: usize,
    /// The peer half-closed: nothing more to read, and a close sends no reset.
    eof: bool,
    shutdown_wanted: bool,
    shut: bool,
    /// A write failed; later output is dropped and the failure is reported once.
    failed: bool,
    failure_reported: bool,
}

impl Side {
    fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: VecDeque::new(),
            written: 0,
            queued: 0,
            eof: false,
            shutdown_wanted: false,
            shut: false,
            failed: false,
            failure_reported: false,
        }
    }

    fn send(&mut self, bytes: Vec<u8>) {
        if self.failed || bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        self.pending.push_back(bytes);
        self.flush();
    }

    /// Writes what the socket takes now.
    fn flush(&mut self) {
        while let Some(chunk) = self.pending.front() {
            let rest = chunk.get(self.written..).unwrap_or_default();
            match self.stream.try_write(rest) {
                Ok(0) => self.failed = true,
                Ok(count) => {
                    self.written += count;
                    self.queued -= count;
                    if self.written == chunk.len() {
                        self.pending.pop_front();
                        self.written = 0;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.failed = true,
            }
            self.pending.clear();
            self.queued = 0;
            return;
        }
    }

    /// Sends a FIN once everything queued is out (deferred so that a session that
    /// ends right away just closes, which sends the FIN anyway).
    fn shutdown_when_flushed(&mut self) {
        if self.shutdown_wanted && !self.shut && self.pending.is_empty() && !self.failed {
            self.shut = true;
            let _ = self.stream.socket().shutdown(Shutdown::Write);
        }
    }

    /// True once, when a write failed.
    fn take_failure(&mut self) -> bool {
        let new = self.failed && !self.failure_reported;
        self.failure_reported |= new;
        new
    }

    /// Reads into `buffer`: `None` when the readiness was stale.
    fn read(&mut self, buffer: &mut [u8]) -> Option<io::Result<usize>> {
        let mut count = None;
        let outcome = self.stream.try_io(Interest::READABLE, || {
            let read = (&*self.stream.socket()).read(buffer)?;
            count = Some(read);
            // A short read emptied the receive queue: report it as WouldBlock so that
            // tokio forgets the readiness (new data raises a new edge, and a FIN already
            // seen stays ready), which saves a recv that would only say EAGAIN.
            if read > 0 && read < buffer.len() {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(read)
            }
        });
        match (count, outcome) {
            (Some(0), _) => {
                self.eof = true;
                Some(Ok(0))
            }
            (Some(read), _) => Some(Ok(read)),
            (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => None,
            (None, Err(e)) => Some(Err(e)),
            (None, Ok(read)) => Some(Ok(read)),
        }
    }

    /// Ends the connection: a FIN unless a write failed; a reset only if the peer
    /// still had bytes in flight to us.
    fn close(self) {
        if !self.eof && !self.shut && !self.failed {
            let _ = self.stream.socket().shutdown(Shutdown::Write);
        }
    }
}

/// Waits until `side` is ready for `interest` (forever when there is no side).
async fn ready(side: Option<&Side>, interest: Interest) -> io::Result<Ready> {
    match side {
        Some(side) => side.stream.ready(interest).await,
        None => std::future::pending().await,
    }
}

/// Opens a connection to a PE's user transport: TCP (addresses in order), or SCTP
/// through the directory's bridge.
async fn connect<D: Directory>(
    directory: &D,
    pe: &PoolElement,
    timeout: Duration,
    upstream: SctpUpstream,
) -> Option<Stream> {
    match pe.user_transport.protocol {
        TransportProtocol::Tcp(_) => connect_tcp(pe, timeout).await.map(Stream::Tcp),
        TransportProtocol::Sctp(_) => {
            match tokio::time::timeout(timeout, directory.connect_sctp(pe, upstream)).await {
                Ok(Ok(stream)) => Some(Stream::Local(stream)),
                Ok(Err(error)) => {
                    tracing::debug!(pe = %pe.id, %error, "SCTP pool element not reached");
                    None
                }
                Err(_) => None,
            }
        }
        _ => None,
    }
}

async fn connect_tcp(pe: &PoolElement, timeout: Duration) -> Option<TcpStream> {
    let addresses = &pe.user_transport.addresses;
    for address in addresses {
        let target = SocketAddr::new(*address, pe.user_transport.port);
        // The session's own connect deadline bounds a single address; with several,
        // each gets the timeout so that the next one is still tried.
        let stream = if addresses.len() == 1 {
            TcpStream::connect(target).await.ok()
        } else {
            tokio::time::timeout(timeout, TcpStream::connect(target))
                .await
                .ok()
                .and_then(Result::ok)
        };
        if let Some(stream) = stream {
            crate::pe_socket::tune(&stream);
            return Some(stream);
        }
    }
    None
}

thread_local! {
    /// One read buffer for all sessions on a thread: what is read is handed to the
    /// session (which copies it) before the task yields, so no session keeps it.
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Reads from `side` into the thread's buffer and hands the bytes read to `deliver`
/// (`None`: the readiness was stale, nothing to do).
fn read_into<R>(side: &mut Side, deliver: impl FnOnce(Option<io::Result<&[u8]>>) -> R) -> R {
    READ_BUFFER.with_borrow_mut(|buffer| {
        let result = side.read(buffer);
        deliver(result.map(|r| r.map(|count| buffer.get(..count).unwrap_or_default())))
    })
}

/// Runs one client's session to its end.
async fn run_session<D: Directory>(
    client: TcpStream,
    peer: SocketAddr,
    listener: &Listener<D>,
    shutdown: CancellationToken,
    entry: &crate::SessionEntry,
) {
    let config = &listener.config;
    let meters = &listener.meters;
    meters.sessions.increment(1);
    meters.active.increment(1.0);
    let mut client = Side::new(Stream::Tcp(client));
    let mut framing = config.sctp.framing.map(FramingCheck::new);
    let mut pe: Option<Side> = None;
    let mut session = Session::new(config.pool_handle, config.session, crate::now());
    let mut resolving: Option<Pending<'_, Result<Vec<PoolElement>, DirectoryError>>> = None;
    let mut connecting: Option<Pending<'_, Option<Stream>>> = None;
    // Made once: a timer and a cancellation wait per loop turn would cost each turn.
    let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut timer_at = None;
    let mut closing = std::pin::pin!(shutdown.cancelled());
    let mut shutdown_seen = false;
    let high = config.buffer;
    let mut failed = false;
    // PEs the last resolution listed (outlier detection's panic threshold).
    let mut offered = 0;
    // The current PE sent data: its connection worked (outlier detection counts a
    // success then, not at connect, since a PE that resets every session connects).
    let mut pe_answered = false;

    loop {
        // Carry out what the session asks.
        while let Some(output) = session.poll() {
            match output {
                SessionOutput::Resolve(handle) => {
                    resolving = Some(Box::pin(listener.directory.resolve(handle, None)));
                }
                SessionOutput::Connect(target) => {
                    pe = None;
                    pe_answered = false;
                    let timeout = config.session.connect_timeout;
                    let directory = &*listener.directory;
                    let upstream = config.sctp;
                    connecting = Some(Box::pin(async move {
                        connect(directory, &target, timeout, upstream).await
                    }));
                }
                SessionOutput::SendToPe(bytes) => {
                    if let Some(side) = &mut pe {
                        side.send(bytes);
                    }
                }
                SessionOutput::ClosePe => {
                    pe = None;
                    connecting = None;
                }
                SessionOutput::ShutdownPe => {
                    if let Some(side) = &mut pe {
                        side.shutdown_wanted = true;
                    }
                }
                SessionOutput::ReportUnreachable(pe_id) => {
                    listener
                        .directory
                        .report_unreachable(config.pool_handle, pe_id)
                        .await;
                }
                SessionOutput::SendToClient(bytes) => client.send(bytes),
                SessionOutput::ShutdownClient => client.shutdown_wanted = true,
                SessionOutput::CloseClient { failed: f } => failed = f,
                SessionOutput::Event(event) => listener.on_event(&event, entry, peer, offered),
            }
        }
        // A failed write is news for the session once its current output is done.
        if !session.is_closed() {
            if pe.as_mut().is_some_and(Side::take_failure) {
                session.pe_failed(PeFailure::Reset, crate::now());
                continue;
            }
            if client.take_failure() {
                session.client_closed();
                continue;
            }
        }
        if session.is_closed() {
            break;
        }
        client.shutdown_when_flushed();
        if let Some(side) = &mut pe {
            side.shutdown_when_flushed();
        }
        let deadline = session.next_timeout();
        if let Some(at) = deadline
            && timer_at != Some(at)
        {
            timer.as_mut().reset(tokio::time::Instant::from_std(at));
            timer_at = Some(at);
        }
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
            ready = ready(Some(&client), Interest::READABLE), if read_client => match ready {
                Ok(_) => read_into(&mut client, |result| match result {
                    None => {}
                    Some(Ok([])) => session.client_eof(crate::now()),
                    Some(Ok(bytes)) => match framing.as_mut().map(|check| check.feed(bytes)) {
                        Some(Err(error)) => {
                            tracing::warn!(%peer, pool = %listener.pool, %error, "client stream breaks the listener's framing: closing it");
                            session.client_closed();
                        }
                        _ => session.client_data(bytes, crate::now()),
                    },
                    Some(Err(_)) => session.client_closed(),
                }),
                Err(_) => session.client_closed(),
            },
            ready = ready(pe.as_ref(), Interest::READABLE), if read_pe => match (ready, &mut pe) {
                (Ok(_), Some(side)) => read_into(side, |result| match result {
                    None => {}
                    Some(Ok([])) => session.pe_eof(crate::now()),
                    Some(Ok(bytes)) => {
                        if !pe_answered && let Some(answering) = session.current_pe() {
                            pe_answered = true;
                            listener.observe(answering, true, offered);
                        }
                        session.pe_data(bytes, crate::now());
                    }
                    Some(Err(_)) => session.pe_failed(PeFailure::Reset, crate::now()),
                }),
                (Err(_), _) => session.pe_failed(PeFailure::Reset, crate::now()),
                (Ok(_), None) => {}
            },
            _ = ready(Some(&client), Interest::WRITABLE), if write_client => {
                client.flush();
                if client.take_failure() {
                    session.client_closed();
                }
            }
            _ = ready(pe.as_ref(), Interest::WRITABLE), if write_pe => {
                if let Some(side) = &mut pe {
                    side.flush();
                    if side.take_failure() {
                        session.pe_failed(PeFailure::Reset, crate::now());
                    }
                }
            }
            answer = async { resolving.as_mut().expect("guarded").await }, if resolving.is_some() => {
                resolving = None;
                offered = listener.hand_over(answer, &mut session).unwrap_or(offered);
            }
            stream = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match stream {
                    Some(stream) => {
                        pe = Some(Side::new(stream));
                        session.pe_connected(crate::now());
                    }
                    None => session.pe_failed(PeFailure::Connect, crate::now()),
                }
            }
            () = &mut timer, if deadline.is_some() => {
                // Fired: re-armed when the session names its next deadline.
                timer_at = None;
                session.timeout(crate::now());
            }
        }
    }
    meters.active.decrement(1.0);
    drop(pe);
    if failed {
        // The stream ends here instead of going on with a gap: what the client got is
        // exactly what the PEs produced, and the close tells it the rest is not coming.
        meters.failed.increment(1);
    } else {
        // Let queued output reach the client, then close.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !client.pending.is_empty() && !client.failed {
            match tokio::time::timeout_at(deadline, client.stream.ready(Interest::WRITABLE)).await {
                Ok(Ok(_)) => client.flush(),
                _ => break,
            }
        }
    }
    client.close();
}

fn record(pool: &str, meters: &Meters, peer: SocketAddr, event: &SessionEvent) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const PINGPONG: Framing = Framing {
        offset: 2,
        size: 2,
        adjust: 0,
        max_message: 64,
    };

    #[test]
    fn the_framing_check_follows_messages_across_reads() {
        let mut check = FramingCheck::new(PINGPONG);
        // Two 6-byte messages, cut at every awkward place.
        let stream = [1, 0, 0, 6, 9, 9, 1, 0, 0, 6, 8, 8];
        for piece in stream.chunks(1) {
            check.feed(piece).unwrap();
        }
        check.feed(&stream[..5]).unwrap();
        check.feed(&stream[5..]).unwrap();
        // A length shorter than the header, then one longer than the limit.
        assert_eq!(check.feed(&[1, 0, 0, 3]), Err(FramingError(3, 64)));
        let mut check = FramingCheck::new(PINGPONG);
        assert_eq!(check.feed(&[1, 0, 1, 0]), Err(FramingError(256, 64)));
    }
}
