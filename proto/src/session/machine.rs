//! The session itself: its state, the recovery point, and the failover rule (see the
//! parent module).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{ControlDeframer, ControlFrame, open_cookie};
use super::types::{PeFailure, SessionConfig, SessionEvent, SessionOutput};
use crate::wire::{
    AsapMessage, Cookie, PoolElement, PoolElementId, PoolHandle, TransportProtocol, TransportUse,
};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State {
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
    pub(super) pool_handle: PoolHandle,
    /// Shared by a listener's sessions (an idle session's memory is what a gateway with
    /// many of them pays for).
    pub(super) config: Arc<SessionConfig>,
    pub(super) state: State,
    pub(super) out: VecDeque<SessionOutput>,
    /// Client bytes [retained_from, client_in) still held.
    pub(super) retained: VecDeque<u8>,
    pub(super) retained_from: u64,
    pub(super) client_in: u64,
    /// Client bytes sent to the current PE (absolute offset).
    pub(super) sent_to_pe: u64,
    /// When the client half-closed (it sends nothing more).
    pub(super) client_finished: Option<Instant>,
    /// When data last went either way (client bytes in, PE output to the client).
    pub(super) last_traffic: Instant,
    /// Output delivered to the client (absolute offset).
    pub(super) delivered: u64,
    /// Absolute output offset of the current PE's next byte.
    pub(super) pe_out: u64,
    pub(super) recovery: RecoveryPoint,
    /// The recovery point can still be used (bytes held, rule 2 or nothing delivered).
    pub(super) recoverable: bool,
    /// The current PE uses the control channel.
    pub(super) control: bool,
    /// Its control channel is the TCP framing with heartbeats; on SCTP the transport
    /// watches the peer, and a silent PE is judged like a data-only one.
    pub(super) heartbeats: bool,
    pub(super) deframer: ControlDeframer,
    /// PEs suggested by business cards, in order.
    pub(super) business_card: Vec<PoolElement>,
    /// PEs that failed during this failover.
    pub(super) failed: Vec<PoolElementId>,
    /// The failure that started the failover under way, and when.
    pub(super) failover: Option<(PoolElementId, PeFailure, Instant)>,
    pub(super) retries: u32,
    pub(super) last_pe_activity: Instant,
    pub(super) last_sent_to_pe: Instant,
    /// Client bytes sent to the PE before its latest output: a data-only PE is awaited
    /// (and can time out) only when bytes were sent after its last answer.
    pub(super) answered_upto: u64,
    /// The client's half-close was passed on to the current PE.
    pub(super) pe_shutdown_sent: bool,
    pub(super) had_pe: bool,
}

/// Whether `pe` speaks the control channel, and whether that channel is the TCP
/// framing with heartbeats (on SCTP the transport watches the peer).
pub(super) fn control_channel(pe: &PoolElement) -> (bool, bool) {
    let control = pe.user_transport.protocol.transport_use() == TransportUse::DataPlusControl;
    let heartbeats = control && matches!(pe.user_transport.protocol, TransportProtocol::Tcp(_));
    (control, heartbeats)
}

impl Session {
    /// A session for one new client; it first asks for the pool's PEs.
    pub fn new(
        pool_handle: PoolHandle,
        config: impl Into<Arc<SessionConfig>>,
        now: Instant,
    ) -> Self {
        let mut session = Self {
            pool_handle,
            config: config.into(),
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
        let output = self.out.pop_front();
        if output.is_none() && self.out.capacity() > 0 {
            // An idle session keeps no queue: most sessions are idle, and a few
            // allocations while output flows cost less than 160 bytes held by each.
            self.out = VecDeque::new();
        }
        output
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
        (self.control, self.heartbeats) = control_channel(&pe);
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
        self.out
            .push_back(SessionOutput::Connect(Box::new(pe.clone())));
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
    pub(super) fn trim_retained(&mut self) {
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
