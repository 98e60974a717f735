//! Finding a registrar: the registrar table and the server hunt (RFC 5352 §3.6), shared
//! by the pool element and the pool user.
//!
//! The table holds the statically configured registrars and those learned from
//! ASAP_SERVER_ANNOUNCE (each expires T7 after its last announce). A hunt round opens
//! associations to up to three candidates in parallel, starting at a random entry; the
//! first to come up becomes the current registrar and the others are closed. A round
//! that fails is followed by another after a delay that doubles up to a cap, and at
//! once when a new registrar is announced. A registrar given up because it stopped
//! answering (a frozen process still accepts connections in its kernel) is passed over
//! by the rounds that follow for `suspect_time`, unless no other is left.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::auth::{Access, Authentication, Denied};
use crate::engine::{AssocId, AssocIds, Endpoint, Output, TransportKind};
use crate::rng::SeededRng;
use crate::wire::{AsapMessage, Protocol, RegistrarId, ServerAnnounce};

/// How to find registrars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HuntConfig {
    /// Registrars from configuration (their IDs are learned later).
    pub registrars: Vec<Endpoint>,
    /// How long one round waits for an association to come up (rsplib 7.5 s).
    pub connect_timeout: Duration,
    /// Associations opened in parallel per round (rsplib 3).
    pub parallel: usize,
    /// The delay after a failed round; doubles per failed round up to `max_retry_delay`.
    pub retry_delay: Duration,
    /// The longest delay between rounds.
    pub max_retry_delay: Duration,
    /// How long an announced registrar stays in the table after its last announce (T7).
    pub announced_lifetime: Duration,
    /// The transport this endpoint uses to reach registrars, for announced ones.
    pub transport: TransportKind,
    /// Whether a registrar must prove it is one (its certificate) before it is used
    /// (security.md T6, T7, T12: announces only name candidates).
    pub access: Access,
    /// How long a registrar that stopped answering is passed over by later rounds.
    pub suspect_time: Duration,
}

impl HuntConfig {
    /// Defaults: rsplib's parallelism and T7, the given connect timeout, and a retry
    /// delay of 250 ms (rsplib's failover retry delay) doubling up to 1 s: a registrar
    /// that comes up is found within about a second, however long the hunt has gone on,
    /// for one connection attempt per registrar and second.
    pub fn new(registrars: Vec<Endpoint>, connect_timeout: Duration) -> Self {
        Self {
            registrars,
            connect_timeout,
            parallel: 3,
            retry_delay: Duration::from_millis(250),
            max_retry_delay: Duration::from_secs(1),
            announced_lifetime: Duration::from_secs(5),
            transport: TransportKind::Tcp,
            access: Access::Open,
            suspect_time: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    /// No registrar wanted yet.
    Idle,
    /// Between rounds.
    Waiting { until: Instant },
    /// A round is under way.
    Connecting {
        attempts: BTreeMap<AssocId, Endpoint>,
        deadline: Instant,
    },
    /// A registrar association is up.
    Connected {
        assoc: AssocId,
        endpoint: Endpoint,
        id: Option<RegistrarId>,
        /// When it came up: one lost within [`STABLE`] counts as a failed round.
        since: Instant,
    },
}

/// How long a registrar association must last before losing it starts a new hunt at
/// once. One that a registrar drops sooner (one that refuses this endpoint, or a TLS
/// registrar reached without TLS) counts as a failed round, so the hunt backs off
/// instead of reconnecting in a tight loop.
const STABLE: Duration = Duration::from_secs(1);

/// What an association going down meant to the hunt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lost {
    /// The current registrar association: hunt again.
    Current,
    /// A hunt attempt, or an association the hunt does not know.
    Other,
}

/// The registrar table and the hunt state.
#[derive(Debug, Clone)]
pub(crate) struct Hunt {
    config: HuntConfig,
    announced: BTreeMap<Endpoint, (RegistrarId, Instant)>,
    /// Registrars given up for silence, until when they are passed over.
    suspects: BTreeMap<Endpoint, Instant>,
    state: State,
    failed_rounds: u32,
}

impl Hunt {
    pub(crate) fn new(config: HuntConfig) -> Self {
        Self {
            config,
            announced: BTreeMap::new(),
            suspects: BTreeMap::new(),
            state: State::Idle,
            failed_rounds: 0,
        }
    }

    /// The current registrar association.
    pub(crate) fn current(&self) -> Option<AssocId> {
        match &self.state {
            State::Connected { assoc, .. } => Some(*assoc),
            _ => None,
        }
    }

    /// The current registrar's endpoint and ID (if learned).
    pub(crate) fn current_registrar(&self) -> Option<(&Endpoint, Option<RegistrarId>)> {
        match &self.state {
            State::Connected { endpoint, id, .. } => Some((endpoint, *id)),
            _ => None,
        }
    }

    /// Records the current registrar's ID (learned from a keep-alive or a response).
    pub(crate) fn learn_id(&mut self, assoc: AssocId, registrar: RegistrarId) {
        if let State::Connected {
            assoc: current, id, ..
        } = &mut self.state
            && *current == assoc
            && registrar != RegistrarId::UNKNOWN
        {
            *id = Some(registrar);
        }
    }

    /// Rounds that failed in a row since the last success.
    pub(crate) fn failed_rounds(&self) -> u32 {
        self.failed_rounds
    }

    /// Starts hunting if there is no registrar and no hunt under way.
    pub(crate) fn ensure<E>(
        &mut self,
        now: Instant,
        ids: &mut AssocIds,
        rng: &mut SeededRng,
        out: &mut VecDeque<Output<E>>,
    ) {
        if matches!(self.state, State::Idle) {
            self.start_round(now, ids, rng, out);
        }
    }

    /// The registrars a round may try: all known ones but the suspects, or all of them
    /// when every one is a suspect.
    fn candidates(&self, now: Instant) -> Vec<Endpoint> {
        let mut all = self.config.registrars.clone();
        for (endpoint, (_, expires)) in &self.announced {
            if *expires > now && !all.contains(endpoint) {
                all.push(endpoint.clone());
            }
        }
        let trusted: Vec<Endpoint> = all
            .iter()
            .filter(|e| self.suspects.get(*e).is_none_or(|until| *until <= now))
            .cloned()
            .collect();
        if trusted.is_empty() { all } else { trusted }
    }

    fn start_round<E>(
        &mut self,
        now: Instant,
        ids: &mut AssocIds,
        rng: &mut SeededRng,
        out: &mut VecDeque<Output<E>>,
    ) {
        self.announced.retain(|_, (_, expires)| *expires > now);
        self.suspects.retain(|_, until| *until > now);
        let candidates = self.candidates(now);
        if candidates.is_empty() {
            self.fail_round(now);
            return;
        }
        let start = rng.below(candidates.len() as u64) as usize;
        let mut attempts = BTreeMap::new();
        for endpoint in candidates
            .iter()
            .cycle()
            .skip(start)
            .take(self.config.parallel.min(candidates.len()))
        {
            let assoc = ids.next();
            out.push_back(Output::Connect {
                assoc,
                to: endpoint.clone(),
                protocol: Protocol::Asap,
            });
            attempts.insert(assoc, endpoint.clone());
        }
        self.state = State::Connecting {
            attempts,
            deadline: now + self.config.connect_timeout,
        };
    }

    fn fail_round(&mut self, now: Instant) {
        let factor = 1u32 << self.failed_rounds.min(16);
        let delay = self
            .config
            .retry_delay
            .saturating_mul(factor)
            .min(self.config.max_retry_delay);
        self.failed_rounds = self.failed_rounds.saturating_add(1);
        self.state = State::Waiting { until: now + delay };
    }

    /// An association came up. Returns whether it is now the current registrar. An
    /// attempt whose peer does not prove it is a registrar is closed and counts as
    /// failed.
    pub(crate) fn on_up<E>(
        &mut self,
        assoc: AssocId,
        peer: &Authentication,
        now: Instant,
        out: &mut VecDeque<Output<E>>,
    ) -> Result<bool, Denied> {
        let is_attempt = matches!(&self.state,
            State::Connecting { attempts, .. } if attempts.contains_key(&assoc));
        if !is_attempt {
            return Ok(false);
        }
        if let Err(denied) = self.config.access.is_registrar(peer, None) {
            out.push_back(Output::Close { assoc });
            self.on_down(assoc, now);
            return Err(denied);
        }
        let State::Connecting { attempts, .. } = &mut self.state else {
            return Ok(false);
        };
        let Some(endpoint) = attempts.remove(&assoc) else {
            return Ok(false);
        };
        for other in attempts.keys() {
            out.push_back(Output::Close { assoc: *other });
        }
        let id = self
            .announced
            .get(&endpoint)
            .map(|(id, _)| *id)
            .filter(|id| *id != RegistrarId::UNKNOWN);
        self.state = State::Connected {
            assoc,
            endpoint,
            id,
            since: now,
        };
        Ok(true)
    }

    /// Is `address` the host of a registrar this endpoint knows: configured, announced
    /// (until the announce runs out) or the current one? With TLS off, the only way to
    /// tell a registrar taking a PE over from anyone who reaches its ASAP endpoint
    /// (security.md T14).
    pub(crate) fn knows_registrar_at(&self, address: &IpAddr, now: Instant) -> bool {
        let address = address.to_canonical();
        let announced = self
            .announced
            .iter()
            .filter(|(_, (_, expires))| *expires > now)
            .map(|(endpoint, _)| endpoint);
        let current = match &self.state {
            State::Connected { endpoint, .. } => Some(endpoint),
            _ => None,
        };
        self.config
            .registrars
            .iter()
            .chain(announced)
            .chain(current)
            .any(|endpoint| {
                endpoint
                    .addresses
                    .iter()
                    .any(|a| a.to_canonical() == address)
            })
    }

    /// Whether registrars must prove who they are.
    pub(crate) fn access(&self) -> Access {
        self.config.access
    }

    /// An association went down (or could not be opened).
    pub(crate) fn on_down(&mut self, assoc: AssocId, now: Instant) -> Lost {
        match &mut self.state {
            State::Connected {
                assoc: current,
                since,
                ..
            } if *current == assoc => {
                if now.saturating_duration_since(*since) < STABLE {
                    self.fail_round(now);
                } else {
                    self.failed_rounds = 0;
                    self.state = State::Idle;
                }
                Lost::Current
            }
            State::Connecting { attempts, .. } => {
                attempts.remove(&assoc);
                if attempts.is_empty() {
                    self.fail_round(now);
                }
                Lost::Other
            }
            _ => Lost::Other,
        }
    }

    /// Gives up the current registrar (it stopped answering) and hunts again, passing
    /// it over for `suspect_time`.
    pub(crate) fn drop_current<E>(
        &mut self,
        now: Instant,
        ids: &mut AssocIds,
        rng: &mut SeededRng,
        out: &mut VecDeque<Output<E>>,
    ) {
        if let State::Connected {
            assoc, endpoint, ..
        } = &self.state
        {
            self.suspects
                .insert(endpoint.clone(), now + self.config.suspect_time);
            out.push_back(Output::Close { assoc: *assoc });
            self.state = State::Idle;
            self.start_round(now, ids, rng, out);
        }
    }

    /// Makes an association the current registrar (a keep-alive with the H flag arrived
    /// on it: RFC 5352 §3.4). The old current association is closed.
    pub(crate) fn adopt<E>(
        &mut self,
        assoc: AssocId,
        endpoint: Endpoint,
        id: RegistrarId,
        now: Instant,
        out: &mut VecDeque<Output<E>>,
    ) {
        match &self.state {
            State::Connected { assoc: current, .. } if *current == assoc => {}
            State::Connected { assoc: current, .. } => {
                out.push_back(Output::Close { assoc: *current });
            }
            State::Connecting { attempts, .. } => {
                for attempt in attempts.keys() {
                    out.push_back(Output::Close { assoc: *attempt });
                }
            }
            State::Idle | State::Waiting { .. } => {}
        }
        self.state = State::Connected {
            assoc,
            endpoint,
            id: Some(id).filter(|id| *id != RegistrarId::UNKNOWN),
            since: now,
        };
        self.failed_rounds = 0;
    }

    /// Time passed: a round times out, or the wait for the next round ends.
    pub(crate) fn on_timeout<E>(
        &mut self,
        now: Instant,
        ids: &mut AssocIds,
        rng: &mut SeededRng,
        out: &mut VecDeque<Output<E>>,
    ) {
        match &self.state {
            State::Connecting { attempts, deadline } if *deadline <= now => {
                for attempt in attempts.keys() {
                    out.push_back(Output::Close { assoc: *attempt });
                }
                self.fail_round(now);
            }
            State::Waiting { until } if *until <= now => self.start_round(now, ids, rng, out),
            _ => {}
        }
    }

    /// A datagram from the ASAP announce channel: an ASAP_SERVER_ANNOUNCE is taken
    /// (`on_announce`); anything else there is ignored.
    #[allow(
        clippy::too_many_arguments,
        reason = "the engine's state the hunt acts on, as in the other hunt inputs"
    )]
    pub(crate) fn on_datagram<E>(
        &mut self,
        from: SocketAddr,
        protocol: Protocol,
        bytes: &[u8],
        now: Instant,
        ids: &mut AssocIds,
        rng: &mut SeededRng,
        out: &mut VecDeque<Output<E>>,
    ) {
        if protocol != Protocol::Asap {
            return;
        }
        if let Ok(decoded) = AsapMessage::decode(bytes)
            && let AsapMessage::ServerAnnounce(announce) = decoded.message
        {
            self.on_announce(from, &announce, now, ids, rng, out);
        }
    }

    /// An ASAP_SERVER_ANNOUNCE arrived from `from` (RFC 5352 §3.6): add or refresh the
    /// registrar; if a hunt is waiting, start a round at once.
    fn on_announce<E>(
        &mut self,
        from: SocketAddr,
        announce: &ServerAnnounce,
        now: Instant,
        ids: &mut AssocIds,
        rng: &mut SeededRng,
        out: &mut VecDeque<Output<E>>,
    ) {
        let endpoint = announce
            .transports
            .iter()
            .filter_map(Endpoint::from_parameter)
            .find(|e| e.transport == self.config.transport)
            .or_else(|| {
                // rsplib announces no transport: the UDP source is its SCTP endpoint.
                (announce.transports.is_empty() && self.config.transport == TransportKind::Sctp)
                    .then(|| Endpoint::new(TransportKind::Sctp, from))
            });
        let Some(endpoint) = endpoint else {
            return;
        };
        let is_new = !self.announced.contains_key(&endpoint);
        self.announced.insert(
            endpoint,
            (announce.server_id, now + self.config.announced_lifetime),
        );
        if is_new && let State::Waiting { .. } = self.state {
            self.start_round(now, ids, rng, out);
        }
    }

    /// When the hunt next needs a timeout call.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Connecting { deadline, .. } => Some(*deadline),
            State::Waiting { until } => Some(*until),
            State::Idle | State::Connected { .. } => None,
        }
    }
}
