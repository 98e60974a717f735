//! The ASAP session layer on the pool-user side (asap.md §7): one session per client
//! connection of a gateway, moved to another PE when its PE fails, without the client
//! noticing when that can be done without losing or repeating data.
//!
//! # Streams and offsets
//!
//! The client→PE stream and the PE→client stream are numbered from 0 for the whole
//! session, across PEs. The session keeps the client bytes that a recovery may need to
//! send again, and knows how much of the PE output has been delivered to the client.
//!
//! # Recovery point and the failover rule
//!
//! A recovery point says "a PE restored to this point has consumed the first C client
//! bytes and produced the first P output bytes". Before any cookie it is (0, 0): a fresh
//! PE. When a PE with a control channel sends ASAP_COOKIE, the cookie becomes the
//! recovery point. A cookie may carry, in front of the application's state, the
//! project-local envelope `"RSP1" | u64 consumed | u64 produced` (big-endian) written by
//! the PE library (`rserpool` crate, `service` module); a cookie without it (rsplib's,
//! opaque) is taken to cover every PE byte received when it arrived and the client bytes
//! sent before the latest of them (a PE answers, then sends its cookie; what the client
//! sent after seeing the answer may cross the cookie on its way).
//!
//! When the PE fails (connection refused or reset, write failure, silence beyond the
//! timeout, or end of stream on a control channel), the session can move if
//! 1. it still holds the client bytes from C on (at most `replay_limit` are kept), and
//! 2. either nothing reached the client since P (no byte delivered from the failed PE's
//!    output beyond P), or the PE uses the control channel: such a PE (this project's PE
//!    library) promises that re-processing the same input from its last cookie, or from
//!    the start of the session before its first cookie, gives the same output. (A PE
//!    answers, then sends its cookie: a crash between the two must not lose the
//!    session.)
//!
//! Then the new PE gets ASAP_COOKIE_ECHO with the cookie first (if any), then the client
//! bytes from C, and its first (delivered - P) output bytes are dropped, so the client
//! sees each byte once and in order. Otherwise the client connection is closed (no
//! silent data loss) and the failure counted. This gives the three rules of the
//! failover design: (1) nothing returned yet: retried transparently; (2) a cookie:
//! re-homed with cookie echo and replay; (3) otherwise closed.
//!
//! # The control channel on TCP (project-local)
//!
//! SCTP separates ASAP control messages from data by PPID. TCP has no PPID, so a PE
//! registered with transport use "data plus control" over TCP frames its stream as
//! `u32 PPID | u32 length | payload` (README.md §6 of the spec): PPID 11 carries an ASAP
//! message, PPID 0 with length 0 is a heartbeat (sent every second when idle; three
//! missed mean the peer is gone), anything else is application data. A data-only PE gets
//! the plain byte stream. This framing is not a standard: it exists because the IETF
//! TCP mapping was never finished.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::{
    AsapMessage, Cookie, PoolElement, PoolElementId, PoolHandle, TransportProtocol, TransportUse,
};

/// PPID of ASAP messages on a control channel.
pub const PPID_ASAP: u32 = 11;
/// PPID of a heartbeat frame (with length 0).
pub const PPID_HEARTBEAT: u32 = 0;
/// The largest payload of one control-channel frame.
pub const MAX_CONTROL_FRAME: usize = 1 << 20;

/// The envelope tag at the start of a cookie written by this project's PE library.
pub const COOKIE_TAG: &[u8; 4] = b"RSP1";

/// One frame of the TCP control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlFrame {
    /// Application data with its PPID.
    Data {
        /// The application PPID (not 0 with empty data, not 11).
        ppid: u32,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// An ASAP message (cookie, cookie echo, business card, error).
    Asap(Vec<u8>),
    /// Nothing to say, but alive.
    Heartbeat,
}

impl ControlFrame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (ppid, payload): (u32, &[u8]) = match self {
            Self::Data { ppid, payload } => (*ppid, payload),
            Self::Asap(payload) => (PPID_ASAP, payload),
            Self::Heartbeat => (PPID_HEARTBEAT, &[]),
        };
        let mut out = Vec::with_capacity(8 + payload.len());
        out.extend_from_slice(&ppid.to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(payload.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(payload);
        out
    }
}

/// Application data as control-channel frames: one per [`MAX_CONTROL_FRAME`] bytes,
/// so that data of any length passes a peer's frame limit (the receiver sees the same
/// byte stream; PPIDs are kept on every piece).
pub fn data_frames(ppid: u32, data: &[u8]) -> impl Iterator<Item = ControlFrame> + '_ {
    data.chunks(MAX_CONTROL_FRAME)
        .map(move |piece| ControlFrame::Data {
            ppid,
            payload: piece.to_vec(),
        })
}

/// A control channel stream that cannot be framed (the connection must be closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("control channel frame of {0} bytes exceeds the {MAX_CONTROL_FRAME}-byte limit")]
pub struct ControlFrameTooLarge(pub usize);

/// Cuts control-channel frames out of a byte stream, bounded.
#[derive(Debug, Default)]
pub struct ControlDeframer {
    buffer: Vec<u8>,
    start: usize,
}

impl ControlDeframer {
    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(data);
    }

    /// The next complete frame.
    pub fn next_frame(&mut self) -> Result<Option<ControlFrame>, ControlFrameTooLarge> {
        let unread = self.buffer.get(self.start..).unwrap_or(&[]);
        let Some(header) = unread.first_chunk::<8>() else {
            return Ok(None);
        };
        let [p0, p1, p2, p3, l0, l1, l2, l3] = *header;
        let ppid = u32::from_be_bytes([p0, p1, p2, p3]);
        let length = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if length > MAX_CONTROL_FRAME {
            return Err(ControlFrameTooLarge(length));
        }
        let Some(payload) = unread.get(8..8 + length) else {
            return Ok(None);
        };
        let frame = match (ppid, length) {
            (PPID_HEARTBEAT, 0) => ControlFrame::Heartbeat,
            (PPID_ASAP, _) => ControlFrame::Asap(payload.to_vec()),
            _ => ControlFrame::Data {
                ppid,
                payload: payload.to_vec(),
            },
        };
        self.start += 8 + length;
        Ok(Some(frame))
    }
}

/// The state a cookie restores, as the gateway reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// Client bytes the restored state has consumed.
    pub consumed: u64,
    /// Output bytes it has produced.
    pub produced: u64,
    /// The cookie to echo (`None`: the start of the session, a fresh PE).
    pub cookie: Option<Vec<u8>>,
}

/// Splits an enveloped cookie into (consumed, produced, application state).
pub fn open_cookie(cookie: &[u8]) -> Option<(u64, u64, &[u8])> {
    let rest = cookie.strip_prefix(COOKIE_TAG)?;
    let consumed = u64::from_be_bytes(*rest.first_chunk::<8>()?);
    let produced = u64::from_be_bytes(*rest.get(8..)?.first_chunk::<8>()?);
    Some((consumed, produced, rest.get(16..)?))
}

/// Wraps application state in the envelope.
pub fn seal_cookie(consumed: u64, produced: u64, state: &[u8]) -> Vec<u8> {
    let mut cookie = Vec::with_capacity(20 + state.len());
    cookie.extend_from_slice(COOKIE_TAG);
    cookie.extend_from_slice(&consumed.to_be_bytes());
    cookie.extend_from_slice(&produced.to_be_bytes());
    cookie.extend_from_slice(state);
    cookie
}

/// Session tunables (per gateway listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Client bytes kept for replay; beyond this the session can no longer move.
    pub replay_limit: usize,
    /// How long to wait for a PE connection.
    pub connect_timeout: Duration,
    /// A data-only PE silent this long while answers are due has failed.
    pub response_timeout: Duration,
    /// A control channel sends a heartbeat after this much idle time; a PE silent for
    /// three intervals has failed (heartbeats keep a live one talking).
    pub heartbeat_interval: Duration,
    /// The first wait when no PE is available; doubles up to `max_retry_delay`.
    pub retry_delay: Duration,
    /// The longest wait between attempts.
    pub max_retry_delay: Duration,
    /// How long one failover may take before the client is given up.
    pub failover_deadline: Duration,
    /// After the client half-closed (it sends nothing more), how long the PE may take
    /// to finish its answer before both sides are closed (HAProxy's `timeout
    /// client-fin` idea): a PE that never closes must not hold the session forever.
    pub half_close_timeout: Duration,
    /// A session that carried no data either way for this long is closed (Envoy's
    /// TCP proxy `idle_timeout`); None: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            replay_limit: 1 << 20,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            retry_delay: Duration::from_millis(250),
            max_retry_delay: Duration::from_secs(2),
            failover_deadline: Duration::from_secs(30),
            half_close_timeout: Duration::from_secs(60),
            idle_timeout: Some(Duration::from_secs(3600)),
        }
    }
}

/// Why a PE connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum PeFailure {
    /// The connection could not be opened (refused, unreachable, timed out).
    Connect,
    /// The connection was reset or a read or write failed.
    Reset,
    /// The PE closed its side while the session still needed it.
    Closed,
    /// The PE went silent beyond the response timeout.
    Timeout,
    /// The PE broke the control channel framing or protocol.
    Protocol,
}

impl PeFailure {
    /// Whether the PE is reported to the registrar as unreachable (asap.md §6.3): only
    /// when it could not be reached or stopped answering. A PE that closed or reset a
    /// session, or spoke garbage, was reachable: it may be ending sessions on purpose
    /// (rsplib's PingPong PEs close after N requests), and reporting it would have the
    /// registrar remove a healthy PE after three such closes.
    pub fn reports_unreachable(self) -> bool {
        matches!(self, Self::Connect | Self::Timeout)
    }

    /// Whether the failure counts against the PE's health (a gateway's outlier
    /// detection): every failure but a close, which a PE may make on purpose.
    pub fn counts_against_pe(self) -> bool {
        !matches!(self, Self::Closed)
    }
}

/// What the driver of a session must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum SessionOutput {
    /// Ask the directory for PEs of the pool (answer with `resolved`).
    Resolve(PoolHandle),
    /// Open a connection to a PE's user transport (answer with `pe_connected` or
    /// `pe_failed`). Any previous PE connection is closed first.
    Connect(PoolElement),
    /// Write bytes to the PE connection (already framed for a control channel).
    SendToPe(Vec<u8>),
    /// Close the PE connection.
    ClosePe,
    /// Half-close the PE connection: the client finished sending (data-only PEs; a
    /// control channel stays open both ways).
    ShutdownPe,
    /// Tell the directory a PE could not be reached.
    ReportUnreachable(PoolElementId),
    /// Write bytes to the client.
    SendToClient(Vec<u8>),
    /// Half-close the client connection (the PE finished sending).
    ShutdownClient,
    /// Close the client connection; `failed` if the session could not continue.
    CloseClient {
        /// The session ended because of an unrecoverable failure.
        failed: bool,
    },
    /// Something worth counting.
    Event(SessionEvent),
}

/// Session happenings for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The session's first PE is connected.
    Started {
        /// The PE.
        pe: PoolElementId,
    },
    /// A PE of the session failed (the session then moves on, or gives up).
    PeFailed {
        /// The PE.
        pe: PoolElementId,
        /// How.
        failure: PeFailure,
    },
    /// The session moved to another PE.
    FailedOver {
        /// The PE that failed.
        from: PoolElementId,
        /// The new PE.
        to: PoolElementId,
        /// Why the old one failed.
        failure: PeFailure,
        /// A cookie was echoed.
        with_cookie: bool,
        /// Time from the failure to the new PE connected.
        stall: Duration,
    },
    /// The client half-closed and the PE did not finish within the half-close
    /// timeout: both sides were closed.
    HalfCloseExpired,
    /// No data either way for the idle timeout: both sides were closed.
    IdleExpired,
    /// The session could not continue.
    Unrecoverable {
        /// Why the last PE failed.
        failure: PeFailure,
        /// Why it could not move.
        reason: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for the directory's answer.
    Resolving,
    /// Waiting before asking again (no usable PE).
    Waiting { until: Instant },
    /// Connecting to a PE.
    Connecting { pe: PoolElement, deadline: Instant },
    /// Talking to a PE.
    Connected { pe: PoolElement },
    /// Over.
    Closed,
}

/// One client's session.
#[derive(Debug)]
pub struct Session {
    pool_handle: PoolHandle,
    config: SessionConfig,
    state: State,
    out: VecDeque<SessionOutput>,
    /// Client bytes [retained_from, client_in) still held.
    retained: VecDeque<u8>,
    retained_from: u64,
    client_in: u64,
    /// Client bytes sent to the current PE (absolute offset).
    sent_to_pe: u64,
    /// When the client half-closed (it sends nothing more).
    client_finished: Option<Instant>,
    /// When data last went either way (client bytes in, PE output to the client).
    last_traffic: Instant,
    /// Output delivered to the client (absolute offset).
    delivered: u64,
    /// Absolute output offset of the current PE's next byte.
    pe_out: u64,
    recovery: RecoveryPoint,
    /// The recovery point can still be used (bytes held, rule 2 or nothing delivered).
    recoverable: bool,
    /// The current PE uses the control channel.
    control: bool,
    /// Its control channel is the TCP framing with heartbeats; on SCTP the transport
    /// watches the peer, and a silent PE is judged like a data-only one.
    heartbeats: bool,
    deframer: ControlDeframer,
    /// PEs suggested by business cards, in order.
    business_card: Vec<PoolElement>,
    /// PEs that failed during this failover.
    failed: Vec<PoolElementId>,
    /// The failure that started the failover under way, and when.
    failover: Option<(PoolElementId, PeFailure, Instant)>,
    retries: u32,
    last_pe_activity: Instant,
    last_sent_to_pe: Instant,
    /// Client bytes sent to the PE before its latest output: a data-only PE is awaited
    /// (and can time out) only when bytes were sent after its last answer.
    answered_upto: u64,
    /// The client's half-close was passed on to the current PE.
    pe_shutdown_sent: bool,
    had_pe: bool,
}

impl Session {
    /// A session for one new client; it first asks for the pool's PEs.
    pub fn new(pool_handle: PoolHandle, config: SessionConfig, now: Instant) -> Self {
        let mut session = Self {
            pool_handle,
            config,
            state: State::Resolving,
            out: VecDeque::new(),
            retained: VecDeque::new(),
            retained_from: 0,
            client_in: 0,
            sent_to_pe: 0,
            client_finished: None,
            last_traffic: now,
            delivered: 0,
            pe_out: 0,
            recovery: RecoveryPoint {
                consumed: 0,
                produced: 0,
                cookie: None,
            },
            recoverable: true,
            control: false,
            heartbeats: false,
            deframer: ControlDeframer::default(),
            business_card: Vec::new(),
            failed: Vec::new(),
            failover: None,
            retries: 0,
            last_pe_activity: now,
            last_sent_to_pe: now,
            answered_upto: 0,
            pe_shutdown_sent: false,
            had_pe: false,
        };
        session.out.push_back(SessionOutput::Resolve(pool_handle));
        session
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Option<SessionOutput> {
        self.out.pop_front()
    }

    /// Is the session over?
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Client bytes received but not yet sent to a PE: read no more from the client
    /// while this is high (back-pressure).
    pub fn unsent(&self) -> u64 {
        self.client_in - self.sent_to_pe
    }

    /// The PE currently serving the session.
    pub fn current_pe(&self) -> Option<PoolElementId> {
        match &self.state {
            State::Connected { pe } | State::Connecting { pe, .. } => Some(pe.id),
            _ => None,
        }
    }

    /// Bytes the client sent.
    pub fn client_data(&mut self, data: &[u8], now: Instant) {
        if self.state == State::Closed {
            return;
        }
        self.retained.extend(data);
        self.client_in += data.len() as u64;
        self.last_traffic = now;
        self.trim_retained();
        self.flush_to_pe(now);
    }

    /// The client half-closed its side.
    pub fn client_eof(&mut self, now: Instant) {
        self.client_finished.get_or_insert(now);
        self.flush_to_pe(now);
    }

    /// The directory's answer (best first); empty if the pool has no PE or none is
    /// reachable.
    pub fn resolved(&mut self, pool_elements: Vec<PoolElement>, now: Instant) {
        if self.state != State::Resolving {
            return;
        }
        let candidate = pool_elements
            .into_iter()
            .find(|pe| !self.failed.contains(&pe.id));
        match candidate {
            Some(pe) => self.connect(pe, now),
            None => self.wait_or_give_up(now, "no pool element available"),
        }
    }

    /// The directory could not ask any registrar (none reachable, and no last answer
    /// to serve). A new client is closed at once (the directory has already waited for
    /// its registrars; retrying would hold the client for seconds and then blame the
    /// pool); a session that had a PE waits and retries within its failover deadline.
    pub fn resolution_unavailable(&mut self, now: Instant) {
        if self.state != State::Resolving {
            return;
        }
        if !self.had_pe {
            self.retries = self.retries.max(3);
        }
        self.wait_or_give_up(now, "no registrar reachable");
    }

    /// The PE connection is open.
    pub fn pe_connected(&mut self, now: Instant) {
        let State::Connecting { pe, .. } = &self.state else {
            return;
        };
        let pe = pe.clone();
        self.control = pe.user_transport.protocol.transport_use() == TransportUse::DataPlusControl;
        self.heartbeats =
            self.control && matches!(pe.user_transport.protocol, TransportProtocol::Tcp(_));
        self.deframer = ControlDeframer::default();
        self.last_pe_activity = now;
        self.last_sent_to_pe = now;
        // Replay from the recovery point; the new PE's output restarts there.
        self.sent_to_pe = self.recovery.consumed;
        self.answered_upto = self.recovery.consumed;
        self.pe_shutdown_sent = false;
        self.pe_out = self.recovery.produced;
        if self.control
            && let Some(cookie) = self.recovery.cookie.clone()
        {
            let echo = AsapMessage::CookieEcho(Cookie { cookie });
            if let Ok(bytes) = echo.encode() {
                self.out
                    .push_back(SessionOutput::SendToPe(ControlFrame::Asap(bytes).encode()));
            }
        }
        let event = match self.failover.take() {
            Some((from, failure, since)) => SessionEvent::FailedOver {
                from,
                to: pe.id,
                failure,
                with_cookie: self.control && self.recovery.cookie.is_some(),
                stall: now.saturating_duration_since(since),
            },
            None => SessionEvent::Started { pe: pe.id },
        };
        self.out.push_back(SessionOutput::Event(event));
        self.failed.clear();
        self.retries = 0;
        self.had_pe = true;
        self.state = State::Connected { pe };
        self.flush_to_pe(now);
    }

    /// The PE connection failed (or could not be opened).
    pub fn pe_failed(&mut self, failure: PeFailure, now: Instant) {
        let pe = match &self.state {
            State::Connected { pe } | State::Connecting { pe, .. } => pe.clone(),
            _ => return,
        };
        self.out.push_back(SessionOutput::ClosePe);
        if failure.reports_unreachable() {
            self.out.push_back(SessionOutput::ReportUnreachable(pe.id));
        }
        self.out
            .push_back(SessionOutput::Event(SessionEvent::PeFailed {
                pe: pe.id,
                failure,
            }));
        self.failed.push(pe.id);
        if self.failover.is_none() {
            self.failover = Some((pe.id, failure, now));
        }
        if !self.recoverable {
            self.give_up(
                failure,
                "the client bytes needed for a replay are no longer held",
            );
            return;
        }
        if self.delivered > self.recovery.produced && !self.control {
            self.give_up(
                failure,
                "the PE already answered and cannot resume (no control channel)",
            );
            return;
        }
        if let Some(next) = self
            .business_card
            .iter()
            .find(|pe| !self.failed.contains(&pe.id))
            .cloned()
        {
            self.connect(next, now);
        } else {
            self.state = State::Resolving;
            self.out.push_back(SessionOutput::Resolve(self.pool_handle));
        }
    }

    /// Bytes arrived from the PE (raw: framing is the session's business).
    pub fn pe_data(&mut self, data: &[u8], now: Instant) {
        if !matches!(self.state, State::Connected { .. }) {
            return;
        }
        self.last_pe_activity = now;
        if !self.control {
            self.pe_output(data.to_vec(), now);
            return;
        }
        self.deframer.push(data);
        loop {
            match self.deframer.next_frame() {
                Ok(Some(ControlFrame::Data { payload, .. })) => self.pe_output(payload, now),
                Ok(Some(ControlFrame::Asap(bytes))) => self.pe_control(&bytes),
                Ok(Some(ControlFrame::Heartbeat)) => {}
                Ok(None) => break,
                Err(_) => {
                    self.pe_failed(PeFailure::Protocol, now);
                    return;
                }
            }
        }
    }

    /// The PE closed its sending side.
    pub fn pe_eof(&mut self, now: Instant) {
        if !matches!(self.state, State::Connected { .. }) {
            return;
        }
        if self.control && self.client_finished.is_none() {
            // A control-channel PE ends a session only after the client did: this is a
            // PE that went away.
            self.pe_failed(PeFailure::Closed, now);
        } else if !self.control && self.delivered == 0 && self.client_finished.is_none() {
            // Closed before answering anything: rule 1, try another.
            self.pe_failed(PeFailure::Closed, now);
        } else {
            self.out.push_back(SessionOutput::ShutdownClient);
            if self.client_finished.is_some() {
                self.close(false);
            }
        }
    }

    /// The client connection is gone: the session ends.
    pub fn client_closed(&mut self) {
        self.close(false);
    }

    /// Time passed: connect and response timeouts, retry waits, heartbeats.
    pub fn timeout(&mut self, now: Instant) {
        match &self.state {
            State::Connecting { deadline, .. } if *deadline <= now => {
                self.pe_failed(PeFailure::Connect, now);
            }
            State::Waiting { until } if *until <= now => {
                self.state = State::Resolving;
                self.out.push_back(SessionOutput::Resolve(self.pool_handle));
            }
            State::Connected { .. } => {
                if self.awaiting_pe()
                    && now.saturating_duration_since(self.last_pe_activity) >= self.silence_limit()
                {
                    self.pe_failed(PeFailure::Timeout, now);
                } else if self.heartbeats_due()
                    && now.saturating_duration_since(self.last_sent_to_pe)
                        >= self.config.heartbeat_interval
                {
                    self.out
                        .push_back(SessionOutput::SendToPe(ControlFrame::Heartbeat.encode()));
                    self.last_sent_to_pe = now;
                }
            }
            _ => {}
        }
        if let Some((_, failure, since)) = self.failover
            && now.saturating_duration_since(since) >= self.config.failover_deadline
            && !matches!(self.state, State::Connected { .. } | State::Closed)
        {
            self.give_up(failure, "no pool element took the session in time");
        }
        if let Some(at) = self.client_finished
            && now.saturating_duration_since(at) >= self.config.half_close_timeout
            && self.state != State::Closed
        {
            self.out
                .push_back(SessionOutput::Event(SessionEvent::HalfCloseExpired));
            self.close(false);
        }
        if self.idle_deadline().is_some_and(|at| at <= now) {
            self.out
                .push_back(SessionOutput::Event(SessionEvent::IdleExpired));
            self.close(false);
        }
    }

    /// When the session is closed for carrying nothing.
    fn idle_deadline(&self) -> Option<Instant> {
        (self.state != State::Closed)
            .then_some(self.config.idle_timeout)
            .flatten()
            .map(|idle| self.last_traffic + idle)
    }

    /// Is something due from the PE: an answer to what was sent, or (control
    /// channel) heartbeats?
    fn awaiting_pe(&self) -> bool {
        self.heartbeats || self.sent_to_pe > self.answered_upto
    }

    /// Heartbeats go to a control-channel PE until the gateway has half-closed towards
    /// it (nothing can be written after that).
    fn heartbeats_due(&self) -> bool {
        self.heartbeats && !self.pe_shutdown_sent
    }

    /// When `timeout` must next be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        let state = match &self.state {
            State::Connecting { deadline, .. } => Some(*deadline),
            State::Waiting { until } => Some(*until),
            State::Connected { .. } => {
                // Only what `timeout` acts on: a silence counts while an answer (or a
                // heartbeat) is awaited; a deadline it would let pass stays in the
                // past and the driver would wake for it at once, over and over.
                let silence = self
                    .awaiting_pe()
                    .then(|| self.last_pe_activity + self.silence_limit());
                let heartbeat = self
                    .heartbeats_due()
                    .then(|| self.last_sent_to_pe + self.config.heartbeat_interval);
                silence.into_iter().chain(heartbeat).min()
            }
            State::Resolving | State::Closed => None,
        };
        if self.state == State::Closed {
            return None;
        }
        let deadline = self
            .failover
            .map(|(_, _, since)| since + self.config.failover_deadline);
        let half_closed = self
            .client_finished
            .map(|at| at + self.config.half_close_timeout);
        [state, deadline, half_closed, self.idle_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// How long the current PE may be silent while awaited.
    fn silence_limit(&self) -> Duration {
        if self.heartbeats {
            self.config.heartbeat_interval.saturating_mul(3)
        } else {
            self.config.response_timeout
        }
    }

    fn connect(&mut self, pe: PoolElement, now: Instant) {
        self.out.push_back(SessionOutput::Connect(pe.clone()));
        self.state = State::Connecting {
            pe,
            deadline: now + self.config.connect_timeout,
        };
    }

    fn wait_or_give_up(&mut self, now: Instant, reason: &'static str) {
        if let Some((_, failure, since)) = self.failover
            && now.saturating_duration_since(since) >= self.config.failover_deadline
        {
            self.give_up(failure, reason);
            return;
        }
        if !self.had_pe && self.retries >= 3 {
            // A new client with no PE to serve it: fail fast rather than hang.
            self.out
                .push_back(SessionOutput::Event(SessionEvent::Unrecoverable {
                    failure: PeFailure::Connect,
                    reason,
                }));
            self.close(true);
            return;
        }
        // After a wait, the PEs that failed may be tried again.
        self.failed.clear();
        let factor = 1u32 << self.retries.min(8);
        let delay = self
            .config
            .retry_delay
            .saturating_mul(factor)
            .min(self.config.max_retry_delay);
        self.retries += 1;
        self.state = State::Waiting { until: now + delay };
    }

    fn give_up(&mut self, failure: PeFailure, reason: &'static str) {
        self.out
            .push_back(SessionOutput::Event(SessionEvent::Unrecoverable {
                failure,
                reason,
            }));
        self.close(true);
    }

    fn close(&mut self, failed: bool) {
        if self.state == State::Closed {
            return;
        }
        if matches!(
            self.state,
            State::Connected { .. } | State::Connecting { .. }
        ) {
            self.out.push_back(SessionOutput::ClosePe);
        }
        self.out.push_back(SessionOutput::CloseClient { failed });
        self.state = State::Closed;
        self.retained.clear();
    }

    /// Output from the PE: skip what the client already has, deliver the rest.
    fn pe_output(&mut self, data: Vec<u8>, now: Instant) {
        let start = self.pe_out;
        self.pe_out += data.len() as u64;
        self.answered_upto = self.sent_to_pe;
        if self.pe_out <= self.delivered {
            return;
        }
        let skip = usize::try_from(self.delivered.saturating_sub(start)).unwrap_or(usize::MAX);
        let fresh = data.get(skip..).unwrap_or_default().to_vec();
        self.delivered = self.pe_out;
        if !fresh.is_empty() {
            self.last_traffic = now;
            self.out.push_back(SessionOutput::SendToClient(fresh));
        }
        if !self.control {
            // A data-only PE that answered cannot resume anywhere: only rule 3 is left
            // on failure, so the held bytes are no longer needed.
            self.trim_retained();
        }
    }

    fn pe_control(&mut self, bytes: &[u8]) {
        let Ok(decoded) = AsapMessage::decode(bytes) else {
            return;
        };
        match decoded.message {
            AsapMessage::Cookie(cookie) => {
                let (consumed, produced) = match open_cookie(&cookie.cookie) {
                    Some((consumed, produced, _)) => (consumed, produced),
                    // An opaque cookie (rsplib's) covers the client bytes sent before
                    // the PE's latest answer and everything it produced: a PE answers,
                    // then sends its cookie, and bytes the client sent in reaction to
                    // the answer may have crossed the cookie on the way.
                    None => (self.answered_upto, self.pe_out),
                };
                if consumed > self.client_in
                    || produced > self.pe_out
                    || consumed < self.recovery.consumed
                {
                    return;
                }
                self.recovery = RecoveryPoint {
                    consumed,
                    produced,
                    cookie: Some(cookie.cookie),
                };
                if self.retained_from <= consumed {
                    self.recoverable = true;
                }
                self.trim_retained();
            }
            AsapMessage::BusinessCard(card) if card.pool_handle == self.pool_handle => {
                self.business_card = card.pool_elements;
            }
            _ => {}
        }
    }

    /// Sends the client bytes the current PE has not had yet.
    fn flush_to_pe(&mut self, now: Instant) {
        if !matches!(self.state, State::Connected { .. }) {
            return;
        }
        let unsent_from = usize::try_from(self.sent_to_pe.saturating_sub(self.retained_from))
            .unwrap_or(usize::MAX);
        if unsent_from < self.retained.len() {
            let (front, back) = self.retained.as_slices();
            let mut chunk = Vec::with_capacity(self.retained.len() - unsent_from);
            if unsent_from < front.len() {
                chunk.extend_from_slice(front.get(unsent_from..).unwrap_or_default());
                chunk.extend_from_slice(back);
            } else {
                chunk.extend_from_slice(back.get(unsent_from - front.len()..).unwrap_or_default());
            }
            if !self.heartbeats && self.sent_to_pe <= self.answered_upto {
                // An answer becomes due now: the PE's silence counts from here, not
                // from its last output before an idle spell.
                self.last_pe_activity = now;
            }
            self.sent_to_pe = self.client_in;
            self.last_sent_to_pe = now;
            let bytes = if self.control {
                ControlFrame::Data {
                    ppid: 0,
                    payload: chunk,
                }
                .encode()
            } else {
                chunk
            };
            self.out.push_back(SessionOutput::SendToPe(bytes));
        }
        // The client's end of input goes on to the PE as a half-close, on a control
        // channel too: that is how a PE learns its session is over (it then closes,
        // and the session ends).
        if self.client_finished.is_some()
            && !self.pe_shutdown_sent
            && self.sent_to_pe == self.client_in
        {
            self.pe_shutdown_sent = true;
            self.out.push_back(SessionOutput::ShutdownPe);
        }
        self.trim_retained();
    }

    /// Drops the client bytes no recovery can need; gives up recovery past the limit.
    fn trim_retained(&mut self) {
        // Unsent bytes are always kept; replay needs the bytes from the recovery point.
        let needed_from =
            if self.recoverable && (self.control || self.delivered <= self.recovery.produced) {
                self.recovery.consumed.min(self.sent_to_pe)
            } else {
                self.recoverable = false;
                self.sent_to_pe
            };
        let held = self.client_in - needed_from.max(self.retained_from);
        if self.recoverable && held > self.config.replay_limit as u64 {
            self.recoverable = false;
            self.trim_retained();
            return;
        }
        let drop = needed_from.saturating_sub(self.retained_from);
        let drop = usize::try_from(drop)
            .unwrap_or(usize::MAX)
            .min(self.retained.len());
        self.retained.drain(..drop);
        self.retained_from += drop as u64;
    }
}
