//! The session layer (RFC 5352 §3.8-3.9, and the failover rules in proto/src/session.rs):
//! a session driven by hand against simulated PEs that crash at arbitrary points.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rserpool_proto::session::{
    ControlDeframer, ControlFrame, PeFailure, Session, SessionConfig, SessionEvent, SessionOutput,
    open_cookie, seal_cookie,
};
use rserpool_proto::wire::{
    AsapMessage, Cookie, Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport,
    TransportProtocol, TransportUse,
};

fn pool() -> PoolHandle {
    PoolHandle::new(b"CounterPool").unwrap()
}

fn pe(id: u32, control: bool) -> PoolElement {
    PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(1),
        registration_life_ms: 30_000,
        user_transport: Transport {
            protocol: TransportProtocol::Tcp(if control {
                TransportUse::DataPlusControl
            } else {
                TransportUse::DataOnly
            }),
            port: 7000,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))],
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

/// The counter service of `rserpool pe --serve counter`, as a PE library user writes
/// it: each client line is answered with the running count of lines; after each line
/// it sends a cookie with the count, sealed with the input it consumed and the output
/// it produced.
#[derive(Debug, Default)]
struct CounterPe {
    deframer: ControlDeframer,
    count: u64,
    partial: Vec<u8>,
    consumed: u64,
    produced: u64,
    /// Bytes to send back (already framed).
    outbox: Vec<u8>,
}

impl CounterPe {
    fn receive(&mut self, bytes: &[u8]) {
        self.deframer.push(bytes);
        while let Some(frame) = self.deframer.next_frame().unwrap() {
            match frame {
                ControlFrame::Asap(message) => {
                    if let AsapMessage::CookieEcho(Cookie { cookie }) =
                        AsapMessage::decode(&message).unwrap().message
                    {
                        let (consumed, produced, state) = open_cookie(&cookie).unwrap();
                        self.count = u64::from_be_bytes(state.try_into().unwrap());
                        self.consumed = consumed;
                        self.produced = produced;
                    }
                }
                ControlFrame::Data { payload, .. } => {
                    // Like a real server: all the answers to one read go out in one
                    // write, then one cookie covering them.
                    let mut answers = Vec::new();
                    for byte in payload {
                        self.partial.push(byte);
                        if byte == b'\n' {
                            self.consumed += self.partial.len() as u64;
                            self.partial.clear();
                            self.count += 1;
                            answers.extend(format!("{}\n", self.count).into_bytes());
                        }
                    }
                    if !answers.is_empty() {
                        self.produced += answers.len() as u64;
                        self.outbox.extend(
                            ControlFrame::Data {
                                ppid: 0,
                                payload: answers,
                            }
                            .encode(),
                        );
                        let cookie =
                            seal_cookie(self.consumed, self.produced, &self.count.to_be_bytes());
                        let message = AsapMessage::Cookie(Cookie { cookie }).encode().unwrap();
                        self.outbox.extend(ControlFrame::Asap(message).encode());
                    }
                }
                ControlFrame::Heartbeat => {}
            }
        }
    }
}

/// A data-only echo service: answers each line with the same line.
#[derive(Debug, Default)]
struct EchoPe {
    outbox: Vec<u8>,
}

impl EchoPe {
    fn receive(&mut self, bytes: &[u8]) {
        self.outbox.extend_from_slice(bytes);
    }
}

/// Runs a session's outputs against a cluster of simulated PEs.
struct World {
    session: Session,
    now: Instant,
    directory: Vec<PoolElement>,
    /// PE ids that refuse connections.
    dead: Vec<u32>,
    /// The connected PE: (id, counter or echo).
    connected: Option<(u32, Service)>,
    pending_connect: Option<u32>,
    client_received: Vec<u8>,
    client_closed: Option<bool>,
    client_shutdown: bool,
    /// The gateway half-closed its side towards the PE.
    pe_shutdown: bool,
    reported: Vec<PoolElementId>,
    events: Vec<SessionEvent>,
}

enum Service {
    Counter(CounterPe),
    Echo(EchoPe),
}

impl World {
    /// A data-only session whose PE has answered the client's one request.
    fn answered() -> Self {
        let mut world = Self::new(vec![pe(1, false), pe(2, false)]);
        world.run();
        world.client_sends(b"one\n");
        world.pe_speaks(usize::MAX);
        world
    }

    fn failed_over(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, SessionEvent::FailedOver { .. }))
    }

    fn new(directory: Vec<PoolElement>) -> Self {
        let now = Instant::now();
        Self {
            session: Session::new(pool(), SessionConfig::default(), now),
            now,
            directory,
            dead: Vec::new(),
            connected: None,
            pending_connect: None,
            client_received: Vec::new(),
            client_closed: None,
            client_shutdown: false,
            pe_shutdown: false,
            reported: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Performs the session's outputs until quiet; connections succeed or fail at once.
    fn run(&mut self) {
        loop {
            while let Some(output) = self.session.poll() {
                match output {
                    SessionOutput::Resolve(_) => {
                        let answer = self.directory.clone();
                        self.session.resolved(answer, self.now);
                    }
                    SessionOutput::Connect(pe) => self.pending_connect = Some(pe.id.0),
                    SessionOutput::SendToPe(bytes) => match &mut self.connected {
                        Some((_, Service::Counter(c))) => c.receive(&bytes),
                        Some((_, Service::Echo(e))) => e.receive(&bytes),
                        None => {}
                    },
                    SessionOutput::ClosePe => self.connected = None,
                    SessionOutput::ShutdownPe => self.pe_shutdown = true,
                    SessionOutput::ReportUnreachable(id) => self.reported.push(id),
                    SessionOutput::SendToClient(bytes) => self.client_received.extend(bytes),
                    SessionOutput::ShutdownClient => self.client_shutdown = true,
                    SessionOutput::CloseClient { failed } => self.client_closed = Some(failed),
                    SessionOutput::Event(event) => self.events.push(event),
                }
            }
            if let Some(id) = self.pending_connect.take() {
                if self.dead.contains(&id) {
                    self.session.pe_failed(PeFailure::Connect, self.now);
                } else {
                    let control = self
                        .directory
                        .iter()
                        .find(|p| p.id.0 == id)
                        .unwrap()
                        .user_transport
                        .protocol
                        .transport_use()
                        == TransportUse::DataPlusControl;
                    let service = if control {
                        Service::Counter(CounterPe::default())
                    } else {
                        Service::Echo(EchoPe::default())
                    };
                    self.connected = Some((id, service));
                    self.session.pe_connected(self.now);
                }
                continue;
            }
            break;
        }
    }

    /// Delivers up to `limit` bytes the PE has produced to the session.
    fn pe_speaks(&mut self, limit: usize) {
        let outbox = match &mut self.connected {
            Some((_, Service::Counter(c))) => &mut c.outbox,
            Some((_, Service::Echo(e))) => &mut e.outbox,
            None => return,
        };
        let take = limit.min(outbox.len());
        let chunk: Vec<u8> = outbox.drain(..take).collect();
        self.session.pe_data(&chunk, self.now);
        self.run();
    }

    fn client_sends(&mut self, bytes: &[u8]) {
        self.session.client_data(bytes, self.now);
        self.run();
    }

    /// The current PE dies and stays dead (its unsent output is lost).
    fn crash(&mut self, failure: PeFailure) {
        if let Some((id, _)) = self.connected.take() {
            self.dead.push(id);
            self.session.pe_failed(failure, self.now);
            self.run();
        }
    }

    /// The current PE is killed and restarted at once: its state and unsent output are
    /// lost, and it may serve again later.
    fn kill(&mut self, failure: PeFailure) {
        if self.connected.take().is_some() {
            self.session.pe_failed(failure, self.now);
            self.run();
        }
    }

    /// The gateway is upgraded: the session, frozen where it can move, goes on in a
    /// thawed copy (the PE's connection is handed over with it, so the PE keeps its
    /// state and unsent output). Freezing the thawed copy gives the same bytes.
    fn upgrade(&mut self) -> bool {
        let Some(bytes) = self.session.freeze(self.now) else {
            return false;
        };
        self.session = Session::thaw(&bytes, SessionConfig::default(), self.now).unwrap();
        assert_eq!(self.session.freeze(self.now).as_deref(), Some(&bytes[..]));
        true
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.session.timeout(self.now);
        self.run();
    }
}

fn counting(lines: u64) -> Vec<u8> {
    (1..=lines)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

/// A fresh session connects to the first PE the directory gives and relays both ways.
#[test]
fn a_session_relays_through_its_pe() {
    let mut world = World::new(vec![pe(1, true), pe(2, true)]);
    world.run();
    world.client_sends(b"a\nb\n");
    world.pe_speaks(usize::MAX);
    assert_eq!(world.client_received, b"1\n2\n");
    assert!(matches!(world.events[0], SessionEvent::Started { pe } if pe == PoolElementId(1)));
}

/// Rule 1: a PE that refuses the connection is reported and the next one used.
#[test]
fn refused_connections_move_on_transparently() {
    let mut world = World::new(vec![pe(1, false), pe(2, false)]);
    world.dead.push(1);
    world.run();
    world.client_sends(b"hello\n");
    world.pe_speaks(usize::MAX);
    assert_eq!(world.client_received, b"hello\n");
    assert_eq!(world.reported, [PoolElementId(1)]);
}

/// A PE that closes or resets a session (rsplib's PingPong PEs close after N requests)
/// was reachable: it is not reported, or the registrar would remove a healthy PE after
/// three such closes; one that cannot be reached or falls silent is.
#[test]
fn only_unreachable_or_silent_pes_are_reported() {
    for failure in [PeFailure::Closed, PeFailure::Reset, PeFailure::Protocol] {
        let mut world = World::new(vec![pe(1, false), pe(2, false)]);
        world.run();
        world.client_sends(b"ping\n");
        world.crash(failure);
        world.pe_speaks(usize::MAX);
        assert_eq!(world.client_received, b"ping\n", "{failure:?}");
        assert!(
            world.reported.is_empty(),
            "{failure:?}: {:?}",
            world.reported
        );
    }
    let mut world = World::new(vec![pe(1, false), pe(2, false)]);
    world.run();
    world.client_sends(b"ping\n");
    world.crash(PeFailure::Timeout);
    assert_eq!(world.reported, [PoolElementId(1)]);
}

/// Rule 1: a data-only PE dying before it answered: the request goes to another PE.
#[test]
fn a_pe_dying_before_answering_is_retried() {
    let mut world = World::new(vec![pe(1, false), pe(2, false)]);
    world.run();
    world.client_sends(b"ping\n");
    world.crash(PeFailure::Reset);
    world.pe_speaks(usize::MAX);
    assert_eq!(world.client_received, b"ping\n");
    assert_eq!(world.client_closed, None);
    assert!(world.events.iter().any(|e| matches!(
        e,
        SessionEvent::FailedOver {
            with_cookie: false,
            ..
        }
    )));
}

/// A new client while no registrar can be asked is closed at once, and the reason says
/// so (it was held for about 7 s of retries and then told "no pool element").
#[test]
fn a_new_client_without_a_reachable_registrar_is_closed_at_once() {
    let now = Instant::now();
    let mut session = Session::new(pool(), SessionConfig::default(), now);
    let outputs: Vec<SessionOutput> = std::iter::from_fn(|| session.poll()).collect();
    assert!(
        outputs.contains(&SessionOutput::Resolve(pool())),
        "{outputs:?}"
    );
    session.resolution_unavailable(now);
    let outputs: Vec<SessionOutput> = std::iter::from_fn(|| session.poll()).collect();
    assert!(
        outputs.iter().any(|output| matches!(
            output,
            SessionOutput::Event(SessionEvent::Unrecoverable {
                reason: "no registrar reachable",
                ..
            })
        )),
        "{outputs:?}"
    );
    assert!(session.is_closed());
}

/// Every PE failure is an event naming the PE (gateways count them for outlier
/// detection), and only a close does not count against the PE: a PE may end sessions
/// on purpose (rsplib's PingPong PEs after N requests).
#[test]
fn pe_failures_are_events_and_a_close_does_not_count_against_the_pe() {
    for failure in [PeFailure::Reset, PeFailure::Closed] {
        let mut world = World::new(vec![pe(1, false), pe(2, false)]);
        world.run();
        world.client_sends(b"ping\n");
        world.crash(failure);
        assert!(world.events.contains(&SessionEvent::PeFailed {
            pe: PoolElementId(1),
            failure
        }));
    }
    assert!(PeFailure::Reset.counts_against_pe());
    assert!(PeFailure::Timeout.counts_against_pe());
    assert!(!PeFailure::Closed.counts_against_pe());
}

/// Rule 3: a data-only PE that already answered, dying: the client is closed, marked
/// failed, with what it had (nothing repeated, nothing invented).
#[test]
fn a_data_only_pe_dying_after_answering_closes_the_client() {
    let mut world = World::new(vec![pe(1, false), pe(2, false)]);
    world.run();
    world.client_sends(b"one\n");
    world.pe_speaks(2);
    world.client_sends(b"two\n");
    world.crash(PeFailure::Reset);
    assert_eq!(world.client_received, b"on");
    assert_eq!(world.client_closed, Some(true));
    assert!(
        world
            .events
            .iter()
            .any(|e| matches!(e, SessionEvent::Unrecoverable { .. }))
    );
}

/// Rule 2: a counter PE with cookies dies mid-stream; the session re-homes with the
/// cookie echoed first and the lines after it replayed; the client sees each count once.
#[test]
fn cookies_carry_a_session_across_a_crash() {
    let mut world = World::new(vec![pe(1, true), pe(2, true), pe(3, true)]);
    world.run();
    world.client_sends(b"a\nb\nc\n");
    world.pe_speaks(usize::MAX);
    world.client_sends(b"d\ne\n");
    // PE 1 processed d and e but dies before its answers reach the gateway.
    world.crash(PeFailure::Reset);
    world.pe_speaks(usize::MAX);
    world.client_sends(b"f\n");
    world.pe_speaks(usize::MAX);
    assert_eq!(world.client_received, counting(6));
    assert!(world.events.iter().any(|e| matches!(
        e,
        SessionEvent::FailedOver {
            with_cookie: true,
            ..
        }
    )));
    assert_eq!(world.client_closed, None);
}

/// Drives a session by hand: answers resolutions with `directory`, connects at once,
/// and returns what it sent to the PE (deframed) and to the client.
fn drive(
    session: &mut Session,
    directory: &[PoolElement],
    now: Instant,
) -> (Vec<ControlFrame>, Vec<u8>) {
    let mut to_pe = ControlDeframer::default();
    let mut to_client = Vec::new();
    while let Some(output) = session.poll() {
        match output {
            SessionOutput::Resolve(_) => session.resolved(directory.to_vec(), now),
            SessionOutput::Connect(_) => session.pe_connected(now),
            SessionOutput::SendToPe(bytes) => to_pe.push(&bytes),
            SessionOutput::SendToClient(bytes) => to_client.extend(bytes),
            _ => {}
        }
    }
    let mut frames = Vec::new();
    while let Some(frame) = to_pe.next_frame().unwrap() {
        frames.push(frame);
    }
    (frames, to_client)
}

fn data(payload: &[u8]) -> Vec<u8> {
    ControlFrame::Data {
        ppid: 0,
        payload: payload.to_vec(),
    }
    .encode()
}

/// An opaque (rsplib) cookie covers the client bytes sent before the PE's answer that
/// precedes it, not those sent since: a PE answers, then sends its cookie, and a client
/// that reacts to the answer at once may get its next request to the gateway before
/// the cookie arrives. Found with rsplib's PingPong PEs (tests/sctp.rs): covering the
/// next ping too made the failover drop it, and the client waited forever.
#[test]
fn an_opaque_cookie_does_not_cover_a_request_sent_after_the_answer() {
    let now = Instant::now();
    let directory = [pe(1, true), pe(2, true)];
    let mut session = Session::new(pool(), SessionConfig::default(), now);
    drive(&mut session, &directory, now);
    session.client_data(b"ping1", now);
    drive(&mut session, &directory, now);
    session.pe_data(&data(b"pong1"), now);
    let (_, to_client) = drive(&mut session, &directory, now);
    assert_eq!(to_client, b"pong1");
    // The client answers pong1 with ping2 before the PE's cookie arrives.
    session.client_data(b"ping2", now);
    drive(&mut session, &directory, now);
    let cookie = AsapMessage::Cookie(Cookie {
        cookie: b"<PP-TD1>after-pong1".to_vec(),
    })
    .encode()
    .unwrap();
    session.pe_data(&ControlFrame::Asap(cookie.clone()).encode(), now);
    drive(&mut session, &directory, now);
    // The PE goes away without answering ping2: the next PE gets the cookie, then ping2.
    session.pe_failed(PeFailure::Closed, now);
    let (to_pe, _) = drive(&mut session, &directory, now);
    let echo = AsapMessage::CookieEcho(Cookie {
        cookie: b"<PP-TD1>after-pong1".to_vec(),
    })
    .encode()
    .unwrap();
    assert_eq!(
        to_pe,
        vec![
            ControlFrame::Asap(echo),
            ControlFrame::Data {
                ppid: 0,
                payload: b"ping2".to_vec()
            }
        ]
    );
    session.pe_data(&data(b"pong2"), now);
    let (_, to_client) = drive(&mut session, &directory, now);
    assert_eq!(to_client, b"pong2");
}

/// An SCTP PE with a control channel gets no TCP-framing heartbeats and is not expected
/// to send any (SCTP watches the association); silent while an answer is due, it fails
/// after the response timeout, like a data-only PE (RFC 5352 §1.1). The timeout counts
/// from the request, not from the PE's last output before an idle spell (which once
/// failed a PE at once on the first request after 30 s of quiet).
#[test]
fn an_sctp_control_channel_has_no_heartbeats_and_times_out_on_answers() {
    let mut start = Instant::now();
    let sctp = |id| {
        let mut element = pe(id, true);
        element.user_transport.protocol = TransportProtocol::Sctp(TransportUse::DataPlusControl);
        element
    };
    let directory = [sctp(1), sctp(2)];
    let config = SessionConfig::default();
    let mut session = Session::new(pool(), config, start);
    session.client_data(b"hello", start);
    drive(&mut session, &directory, start);
    session.pe_data(&data(b"hi"), start);
    drive(&mut session, &directory, start);
    // Idle for ten heartbeat intervals: nothing sent, nothing failed.
    for _ in 0..10 {
        start += config.heartbeat_interval;
        session.timeout(start);
        let (to_pe, _) = drive(&mut session, &directory, start);
        assert!(to_pe.is_empty(), "{to_pe:?}");
    }
    assert_eq!(session.current_pe(), Some(PoolElementId(1)));
    // A request, then silence: the response timeout moves the session.
    session.client_data(b"ping", start);
    drive(&mut session, &directory, start);
    session.timeout(start + config.response_timeout - Duration::from_millis(1));
    assert_eq!(session.current_pe(), Some(PoolElementId(1)));
    session.timeout(start + config.response_timeout);
    let (to_pe, _) = drive(&mut session, &directory, start + config.response_timeout);
    assert_eq!(session.current_pe(), Some(PoolElementId(2)));
    // No cookie yet: the next PE gets the whole session again (rule 2 for a control
    // channel: its output is the same for the same input).
    assert_eq!(
        to_pe,
        vec![ControlFrame::Data {
            ppid: 0,
            payload: b"helloping".to_vec()
        }]
    );
}

/// The client's end of input reaches a control-channel PE as a half-close (RFC 5352 §3.8-3.9:
/// the PE learns the session is over), and the PE's close then ends the session
/// cleanly instead of leaving it open forever.
#[test]
fn a_client_close_ends_a_control_channel_session() {
    let mut world = World::new(vec![pe(1, true), pe(2, true)]);
    world.run();
    world.client_sends(b"a\nb\n");
    world.pe_speaks(usize::MAX);
    assert_eq!(world.client_received, counting(2));
    assert!(!world.pe_shutdown);
    world.session.client_eof(world.now);
    world.run();
    assert!(world.pe_shutdown, "the PE is told");
    world.session.pe_eof(world.now);
    world.run();
    assert_eq!(
        world.client_closed,
        Some(false),
        "closed cleanly, no failover"
    );
    assert!(world.session.is_closed());
    assert!(!world.failed_over());
}

/// A data-only PE that answered and then never closes after the client's half-close
/// used to hold the session for ever (200 such sessions wedged a listener): after the
/// half-close timeout both sides are closed, cleanly, without a failover.
#[test]
fn a_pe_that_never_finishes_after_the_clients_half_close_is_closed() {
    let mut world = World::answered();
    world.session.client_eof(world.now);
    world.run();
    assert!(world.pe_shutdown, "the PE is told the client finished");
    let timeout = SessionConfig::default().half_close_timeout;
    world.advance(timeout - Duration::from_secs(1));
    assert_eq!(world.client_closed, None, "not before the timeout");
    world.advance(Duration::from_secs(2));
    assert_eq!(world.client_closed, Some(false));
    assert!(world.session.is_closed());
    assert!(world.events.contains(&SessionEvent::HalfCloseExpired));
    assert!(!world.failed_over());
}

/// A data-only session whose PE has answered everything asked asked for a timeout at
/// the end of the response timeout anyway, and after it passed kept naming that past
/// instant without acting on it: the gateway's session loop woke at once, over and
/// over (a core at 100 % for every idle session). A deadline the session names must be
/// in the future once `timeout` has run (for an idle session, the idle timeout).
#[test]
fn an_idle_session_asks_for_no_deadline_it_will_not_act_on() {
    let mut world = World::answered();
    let response_timeout = SessionConfig::default().response_timeout;
    world.advance(response_timeout + Duration::from_secs(1));
    assert!(!world.session.is_closed(), "an idle PE has not failed");
    let next = world.session.next_timeout();
    assert!(
        next.is_none_or(|at| at > world.now),
        "nothing is awaited from the PE, yet {next:?} is not after {:?}",
        world.now
    );
    // A new request makes an answer due again: its deadline counts from now.
    world.client_sends(b"two\n");
    let due = world.session.next_timeout().expect("an answer is awaited");
    assert!(due > world.now, "{due:?} is not after {:?}", world.now);
}

/// A TCP session whose client and PE both went quiet (a client that never closes)
/// held its slot forever. Now a session with no data either way for the idle timeout
/// is closed cleanly; data either way restarts the count.
#[test]
fn a_session_without_data_either_way_is_closed_after_the_idle_timeout() {
    let mut world = World::answered();
    let idle = SessionConfig::default()
        .idle_timeout
        .expect("on by default");
    world.advance(idle - Duration::from_secs(1));
    assert_eq!(world.client_closed, None);
    world.client_sends(b"two\n");
    world.pe_speaks(usize::MAX);
    world.advance(idle - Duration::from_secs(1));
    assert_eq!(world.client_closed, None, "the traffic restarted the count");
    world.advance(Duration::from_secs(2));
    assert_eq!(world.client_closed, Some(false));
    assert!(world.events.contains(&SessionEvent::IdleExpired));
}

/// A control channel PE that goes silent (frozen) fails after the response timeout;
/// heartbeats are sent while idle.
#[test]
fn a_silent_control_channel_pe_times_out() {
    let mut world = World::new(vec![pe(1, true), pe(2, true)]);
    world.run();
    world.client_sends(b"a\n");
    world.pe_speaks(usize::MAX);
    world.advance(Duration::from_millis(1_100));
    // The PE answers heartbeats: nothing fails while it talks.
    world.pe_speaks(0);
    world.client_sends(b"b\n");
    // Frozen: it neither answers nor sends anything for the response timeout.
    if let Some((_, Service::Counter(c))) = &mut world.connected {
        c.outbox.clear();
    }
    world.connected = None; // frozen: whatever it is sent is lost
    world.dead.push(1);
    world.advance(Duration::from_secs(4));
    world.pe_speaks(usize::MAX);
    assert_eq!(world.client_received, counting(2));
    assert!(world.events.iter().any(|e| matches!(
        e,
        SessionEvent::FailedOver {
            failure: PeFailure::Timeout,
            ..
        }
    )));
}

/// Bytes beyond the replay limit cannot be replayed: a later failure is unrecoverable.
#[test]
fn the_replay_limit_bounds_what_can_be_recovered() {
    let now = Instant::now();
    let config = SessionConfig {
        replay_limit: 16,
        ..SessionConfig::default()
    };
    let mut session = Session::new(pool(), config, now);
    let _ = session.poll();
    session.resolved(vec![pe(1, false), pe(2, false)], now);
    let _ = session.poll();
    session.pe_connected(now);
    session.client_data(&[b'x'; 40], now);
    session.pe_failed(PeFailure::Reset, now);
    let outputs: Vec<SessionOutput> = std::iter::from_fn(|| session.poll()).collect();
    assert!(
        outputs.contains(&SessionOutput::CloseClient { failed: true }),
        "{outputs:?}"
    );
}

/// A new client with no PE to serve it is told so (closed) after a few retries instead
/// of hanging.
#[test]
fn an_empty_pool_fails_new_clients_fast() {
    let mut world = World::new(vec![]);
    world.run();
    for _ in 0..10 {
        world.advance(Duration::from_secs(1));
    }
    assert_eq!(world.client_closed, Some(true));
}

/// RFC 5352 §3.9: a business card's PEs are tried first on failover.
#[test]
fn business_cards_choose_the_next_pe() {
    let mut world = World::new(vec![pe(1, true), pe(2, true), pe(3, true)]);
    world.run();
    let card = AsapMessage::BusinessCard(rserpool_proto::wire::BusinessCard {
        pool_handle: pool(),
        policy: None,
        pool_elements: vec![pe(3, true)],
    });
    world.session.pe_data(
        &ControlFrame::Asap(card.encode().unwrap()).encode(),
        world.now,
    );
    world.run();
    world.client_sends(b"a\n");
    world.crash(PeFailure::Reset);
    assert_eq!(world.connected.as_ref().map(|(id, _)| *id), Some(3));
}

/// The control channel framing round-trips and refuses oversized frames.
#[test]
fn control_frames_round_trip() {
    let frames = [
        ControlFrame::Data {
            ppid: 33,
            payload: b"pong".to_vec(),
        },
        ControlFrame::Heartbeat,
        ControlFrame::Asap(vec![0x0b, 0, 0, 8, 0, 0x0d, 0, 4]),
    ];
    let mut bytes = Vec::new();
    for frame in &frames {
        bytes.extend(frame.encode());
    }
    let mut deframer = ControlDeframer::default();
    let mut decoded = Vec::new();
    for chunk in bytes.chunks(3) {
        deframer.push(chunk);
        while let Some(frame) = deframer.next_frame().unwrap() {
            decoded.push(frame);
        }
    }
    assert_eq!(decoded, frames);
    let mut deframer = ControlDeframer::default();
    deframer.push(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
    assert!(deframer.next_frame().is_err());
}

/// How a counter session is exercised: its lines, the client's chunk size, how much
/// of its output a PE says at a time (plus a seeded jitter), and every how many chunks
/// the PE is killed and (when given) the gateway upgraded.
struct Exercise {
    lines: usize,
    chunk: usize,
    speak: usize,
    crash_every: usize,
    upgrade_every: Option<usize>,
    seed: u64,
}

/// Runs `exercise` against three counter PEs; the world at the end and the upgrades
/// that happened.
fn exercise(exercise: &Exercise) -> (World, usize) {
    let directory: Vec<PoolElement> = (1..=3).map(|i| pe(i, true)).collect();
    let mut world = World::new(directory);
    world.run();
    let input: Vec<u8> = (0..exercise.lines)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let (mut rng, mut upgrades) = (exercise.seed, 0);
    for (step, piece) in input.chunks(exercise.chunk).enumerate() {
        world.client_sends(piece);
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        world.pe_speaks(exercise.speak + (rng >> 60) as usize);
        if exercise
            .upgrade_every
            .is_some_and(|every| step.is_multiple_of(every))
            && world.upgrade()
        {
            upgrades += 1;
        }
        if (step + 1).is_multiple_of(exercise.crash_every) {
            world.kill(PeFailure::Reset);
        }
    }
    for _ in 0..1000 {
        world.pe_speaks(usize::MAX);
    }
    (world, upgrades)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Whatever the chunking, wherever the PEs crash (input in flight, output half
    /// delivered, between a line and its cookie) and wherever the gateway is upgraded
    /// between crashes (a partial frame in the PE's output, a line half sent, just
    /// after a failover), the client sees every count exactly once and in order.
    #[test]
    fn counter_sessions_survive_crashes_and_upgrades_anywhere(
        lines in 1usize..60,
        chunk in 1usize..9,
        speak in 1usize..40,
        crash_every in 2usize..12,
        upgrade_every in prop::option::of(1usize..5),
        seed in any::<u64>(),
    ) {
        let run = Exercise { lines, chunk, speak, crash_every, upgrade_every, seed };
        let (world, upgrades) = exercise(&run);
        prop_assert!(upgrade_every.is_none() || upgrades > 0);
        prop_assert_eq!(world.client_closed, None);
        prop_assert_eq!(String::from_utf8(world.client_received.clone()).unwrap(), String::from_utf8(counting(lines as u64)).unwrap());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A snapshot is input from another process: cut short or with any byte changed,
    /// it is refused or gives a session whose own snapshot holds together, and never
    /// panics.
    #[test]
    fn damaged_snapshots_are_refused_without_panicking(
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut world = World::new(vec![pe(1, true), pe(2, true)]);
        world.run();
        world.client_sends(b"a\nb\n");
        world.pe_speaks(13);
        let bytes = world.session.freeze(world.now).unwrap();
        let short = &bytes[..cut.index(bytes.len())];
        prop_assert!(Session::thaw(short, SessionConfig::default(), world.now).is_err());
        let mut changed = bytes.clone();
        changed[at.index(bytes.len())] = value;
        if let Ok(mut session) = Session::thaw(&changed, SessionConfig::default(), world.now) {
            session.client_data(b"c\n", world.now);
            session.pe_data(&[0; 9], world.now);
            session.timeout(world.now + Duration::from_secs(5));
            while session.poll().is_some() {}
        }
    }
}

/// Only a connected session with nothing left for its driver can move: while it
/// resolves, connects or has output waiting, `freeze` says no; a data-only session that
/// has not answered yet is still retried transparently after the move (rule 1 travels
/// with it), and output half delivered continues where it stopped.
#[test]
fn a_session_moves_only_when_quiet_and_keeps_its_rules() {
    let now = Instant::now();
    let mut session = Session::new(pool(), SessionConfig::default(), now);
    assert!(session.freeze(now).is_none(), "resolving");
    let _ = session.poll();
    session.resolved(vec![pe(1, false), pe(2, false)], now);
    assert!(session.freeze(now).is_none(), "connect not carried out");
    let _ = session.poll();
    assert!(session.freeze(now).is_none(), "connecting");

    let mut world = World::new(vec![pe(1, false), pe(2, false)]);
    world.run();
    world.client_sends(b"hello\n");
    world.session.client_data(b"x", world.now);
    assert!(world.session.freeze(world.now).is_none(), "output waiting");
    world.run();
    assert!(world.upgrade());
    // PE 1 dies before answering: retried on PE 2 with everything the client sent.
    world.crash(PeFailure::Reset);
    world.pe_speaks(3);
    assert!(world.upgrade());
    world.pe_speaks(usize::MAX);
    assert_eq!(world.client_received, b"hello\nx");
    assert!(world.failed_over());
    // Now it answered: a data-only PE's death after that closes the client (rule 3).
    assert!(world.upgrade());
    world.crash(PeFailure::Reset);
    assert_eq!(world.client_closed, Some(true));
}

/// Data longer than one frame is cut into frames a receiver accepts, and arrives as
/// the same bytes (a PE answering 2 MiB at once killed its own session: the gateway
/// refused the one 2 MiB frame as a PE failure).
#[test]
fn long_data_is_cut_into_frames_within_the_limit() {
    use rserpool_proto::session::{ControlDeframer, ControlFrame, MAX_CONTROL_FRAME, data_frames};
    let data: Vec<u8> = (0..2 * MAX_CONTROL_FRAME + 123).map(|i| i as u8).collect();
    let mut deframer = ControlDeframer::default();
    let frames: Vec<ControlFrame> = data_frames(7, &data).collect();
    assert_eq!(frames.len(), 3);
    for frame in &frames {
        deframer.push(&frame.encode());
    }
    let mut received = Vec::new();
    while let Some(frame) = deframer.next_frame().expect("within the limit") {
        match frame {
            ControlFrame::Data { ppid, payload } => {
                assert_eq!(ppid, 7);
                assert!(payload.len() <= MAX_CONTROL_FRAME);
                received.extend(payload);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(received, data);
}
