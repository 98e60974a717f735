//! The library for native pool elements: a service that registers itself in a pool
//! and serves sessions whose state can survive a failover through ASAP cookies
//! (RFC 5352 §3.8-3.9).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use rserpool::service::{Event, PoolElementService, ServiceConfig};
//! let config = ServiceConfig::new("CounterPool".parse()?, "127.0.0.1:0".parse()?, vec!["127.0.0.1:3863".parse()?]);
//! let service = PoolElementService::start(config).await?;
//! loop {
//!     let mut session = service.accept().await?;
//!     tokio::spawn(async move {
//!         while let Ok(event) = session.next_event().await {
//!             match event {
//!                 Event::Data(bytes) => { /* answer with session.send(..), then session.send_cookie(..) */ }
//!                 Event::CookieEcho(state) => { /* a failover: restore the state */ }
//!                 Event::Closed => break,
//!                 _ => {} // business cards; later kinds of event
//!             }
//!         }
//!     });
//! }
//! # }
//! ```
//!
//! # The contract of cookies
//!
//! Sessions run over a control channel (the PE registers "data plus control"). After
//! writing the answers to some input, the service may call [`Session::send_cookie`] with
//! its state and the number of client bytes that state covers ([`Session::input_offset`]
//! minus any partial input it holds). The library seals the cookie with that count and
//! the output written so far (the `RSP1` envelope). When the session's PE fails, the
//! gateway hands the latest cookie to a new PE ([`Event::CookieEcho`]) and replays the
//! client bytes after it; the new PE's output from that point must be the same as the
//! old one's (the service is deterministic given its state and input), because the
//! gateway drops the part the client already has. The gateway keeps cookies and hands
//! them back untouched: a service that keeps secrets in them must encrypt them, and one that
//! trusts them must authenticate them (security.md T16).
//!
//! A service whose cookies other PEs read too (rsplib's services, pools shared with
//! rsplib's PEs) sends them without the envelope ([`Session::send_opaque_cookie`]); a
//! gateway then takes the cookie to cover everything up to the PE's latest answer.
//!
//! # Load
//!
//! For the load-based policies a service reports how full it is
//! ([`PoolElementService::set_load`]); [`load::Occupancy`] counts sessions or jobs
//! against a maximum for that.

pub mod load;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use rserpool_proto::auth::PlainPeers;
pub use rserpool_proto::engine::{TimerProfile, TransportKind};
use rserpool_proto::pool_element::PoolElementSpec;
use rserpool_proto::session::{
    ControlDeframer, ControlFrame, data_frames, open_cookie, seal_cookie,
};
use rserpool_proto::wire::{
    AsapMessage, BusinessCard, Cookie, Policy, PoolElementId, PoolHandle, Transport,
    TransportProtocol, TransportUse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::pe_runtime::{
    EngineSettings, PeRuntime, Registered, deregister_all, log_event, start_engine,
};
use crate::transport::multihomed;
use crate::transport::sctp::{self, Received};
use crate::transport::tls::ControlTls;
pub use crate::transport::tls::TlsFiles;

/// How a native PE registers and serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// The pool to join.
    pub pool_handle: PoolHandle,
    /// Where clients (gateways, pool users) connect; port 0 picks a free one. A concrete
    /// address: it is the PE's registered user transport.
    pub listen: SocketAddr,
    /// Registrars' ASAP addresses.
    pub registrars: Vec<SocketAddr>,
    /// The PE's policy.
    pub policy: Policy,
    /// Serve over the control channel (cookies, heartbeats); `false` for a plain byte
    /// stream (no failover of answered sessions).
    pub control_channel: bool,
    /// How often to re-register (registration life is three times this).
    pub reregistration_interval: Duration,
    /// ASAP timers: the RFC's, or rsplib's faster ones.
    pub profile: TimerProfile,
    /// SCTP (sessions with PPIDs; ASAP to registrars over SCTP too) or TCP.
    pub transport: TransportKind,
    /// More addresses of this host (SCTP multi-homing): the service and its ASAP
    /// endpoint bind them too, and they are registered.
    pub multihome: Vec<IpAddr>,
    /// TLS to registrars and on the PE's ASAP endpoint (RFC 5355, over TCP or SCTP):
    /// its certificate (`rserpool cert issue --pe POOL`), key and the deployment CA;
    /// `None`: plain and unauthenticated.
    pub tls: Option<TlsFiles>,
    /// Registrars' announces to hear (RFC 5352 §3.6): the multicast group and the
    /// address of the interface to join it on; `None`: only `registrars`.
    pub announce: Option<(SocketAddrV4, Ipv4Addr)>,
}

impl ServiceConfig {
    /// Round robin, control channel, re-registration every 30 s.
    pub fn new(pool_handle: PoolHandle, listen: SocketAddr, registrars: Vec<SocketAddr>) -> Self {
        Self {
            pool_handle,
            listen,
            registrars,
            policy: Policy::RoundRobin,
            control_channel: true,
            reregistration_interval: Duration::from_secs(30),
            profile: TimerProfile::Rfc,
            transport: TransportKind::Tcp,
            multihome: Vec::new(),
            tls: None,
            announce: None,
        }
    }
}

/// A native PE could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The listening address is a wildcard: clients need a concrete one.
    #[error("listen on a concrete address, not {0}: it is what clients are given")]
    Wildcard(SocketAddr),
    /// The pool element engine could not start.
    #[error("{0}")]
    Engine(String),
    /// The TLS material cannot be used.
    #[error("{0}")]
    Tls(String),
}

/// A registered native PE accepting sessions.
#[derive(Debug)]
pub struct PoolElementService {
    listener: ServiceListener,
    pub(crate) runtime: PeRuntime,
    pe_id: PoolElementId,
    control: bool,
    pub(crate) shutdown: CancellationToken,
    pub(crate) registered: Registered,
    pub(crate) tls: Option<std::sync::Arc<ControlTls>>,
}

impl PoolElementService {
    /// Binds the listener and registers the PE (in the background: registration and
    /// failover to other registrars continue while the service runs).
    pub async fn start(config: ServiceConfig) -> Result<Self, ServiceError> {
        if config.listen.ip().is_unspecified() {
            return Err(ServiceError::Wildcard(config.listen));
        }
        let listener = match config.transport {
            TransportKind::Tcp => TcpListener::bind(config.listen)
                .await
                .map(ServiceListener::Tcp),
            TransportKind::Sctp => {
                sctp::Listener::bind(&multihomed(config.listen, &config.multihome))
                    .map(ServiceListener::Sctp)
            }
        }
        .map_err(|e| ServiceError::Listen(config.listen, e))?;
        let listen = listener
            .local_addr()
            .map_err(|e| ServiceError::Listen(config.listen, e))?;
        let shutdown = CancellationToken::new();
        let settings = EngineSettings {
            registrars: config.registrars.clone(),
            profile: config.profile,
            transport: config.transport,
            asap: SocketAddr::new(listen.ip(), 0),
            multihome: config.multihome.clone(),
            announce: config.announce,
            home_changes: rserpool_proto::pool_element::HomeChanges::default(),
        };
        // A native PE refuses peers without a certificate (RFC 5355).
        let tls = config
            .tls
            .clone()
            .map(|files| ControlTls::load(files, PlainPeers::Refused).map(Arc::new))
            .transpose()
            .map_err(|e| ServiceError::Tls(e.to_string()))?;
        let mut runtime = start_engine(&settings, tls.clone(), &shutdown)
            .await
            .map_err(|e| ServiceError::Engine(e.to_string()))?;
        // Registration, refusals and home changes go to the log (and to `registered`).
        let registered = Registered::default();
        if let Some(mut events) = runtime.events.take() {
            let registered = registered.clone();
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    registered.track(&event);
                    log_event(&event);
                }
            });
        }
        let transport_use = if config.control_channel {
            TransportUse::DataPlusControl
        } else {
            TransportUse::DataOnly
        };
        let spec = PoolElementSpec {
            pool_handle: config.pool_handle,
            id: None,
            user_transport: Transport {
                protocol: match config.transport {
                    TransportKind::Tcp => TransportProtocol::Tcp(transport_use),
                    TransportKind::Sctp => TransportProtocol::Sctp(transport_use),
                },
                port: listen.port(),
                addresses: listener
                    .local_addresses()
                    .map_err(|e| ServiceError::Listen(config.listen, e))?
                    .iter()
                    .map(SocketAddr::ip)
                    .collect(),
            },
            policy: config.policy,
            reregistration_interval: config.reregistration_interval,
            registration_life: None,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime
            .handle
            .command(move |engine, now| {
                let _ = tx.send(engine.register(spec, now));
            })
            .await;
        let pe_id = rx
            .await
            .map_err(|_| ServiceError::Engine("the pool element engine stopped".into()))?;
        Ok(Self {
            listener,
            runtime,
            pe_id,
            control: config.control_channel,
            shutdown,
            registered,
            tls,
        })
    }

    /// True while a registrar holds the PE's registration.
    pub fn is_registered(&self) -> bool {
        !self.registered.list().is_empty()
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The PE identifier.
    pub fn pe_id(&self) -> PoolElementId {
        self.pe_id
    }

    /// The next client session.
    pub async fn accept(&self) -> std::io::Result<Session> {
        let channel = match &self.listener {
            ServiceListener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                tracing::debug!(%peer, "session opened");
                let _ = stream.set_nodelay(true);
                Channel::Tcp(stream)
            }
            ServiceListener::Sctp(listener) => {
                let association = listener.accept().await?;
                tracing::debug!(peer = ?association.peer_addresses().ok(), "session opened");
                Channel::Sctp {
                    association,
                    ppid: 0,
                }
            }
        };
        Ok(Session::new(channel, self.control))
    }

    /// Reports a new policy value (a new load, say): re-registers at once.
    pub async fn set_policy(&self, policy: Policy) {
        let pe_id = self.pe_id;
        self.runtime
            .handle
            .command(move |engine, now| engine.update_policy(pe_id, policy, now))
            .await;
    }

    /// Reports the PE's load, a fraction of its capacity (0.0 to 1.0), for the
    /// load-based policies (least used and its variants; others ignore it). A change
    /// of more than 1 % re-registers at once, at most once a second; a smaller one goes
    /// with the next re-registration.
    pub async fn set_load(&self, fraction: f64) {
        let pe_id = self.pe_id;
        let load = rserpool_proto::policy::spec::fraction_to_wire(fraction);
        self.runtime
            .handle
            .command(move |engine, now| engine.set_load(pe_id, load, now))
            .await;
    }

    /// Deregisters the PE (waiting briefly for the registrar's answer) and stops.
    pub async fn shutdown(self) {
        deregister_all(&self.runtime).await;
        self.shutdown.cancel();
        let _ = self.runtime.driver.await;
    }
}

/// ASAP's PPID: control channel messages on an SCTP session.
const ASAP_PPID: u32 = 11;

#[derive(Debug)]
enum ServiceListener {
    Tcp(TcpListener),
    Sctp(sctp::Listener),
}

impl ServiceListener {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.local_addresses()?
            .first()
            .copied()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotConnected, "not bound"))
    }

    /// Every bound address (several for a multi-homed SCTP service).
    fn local_addresses(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Self::Tcp(listener) => Ok(vec![listener.local_addr()?]),
            Self::Sctp(listener) => listener.local_addresses(),
        }
    }
}

/// A session's connection: a TCP stream (with the library's framing on a control
/// channel), or an SCTP association (messages with PPIDs: ASAP is 11, data keeps the
/// PPID the client last used).
#[derive(Debug)]
enum Channel {
    Tcp(TcpStream),
    Sctp {
        association: sctp::Association,
        ppid: u32,
    },
}

/// What a session brings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Client bytes.
    Data(Vec<u8>),
    /// A failover brought this session here: the state of the latest cookie (before
    /// any data of the session). The input offset is restored with it.
    CookieEcho(Vec<u8>),
    /// The client's failover suggestions (advisory).
    BusinessCard(BusinessCard),
    /// The session is over (the client or the gateway went away).
    Closed,
}

/// One client session of a native PE.
#[derive(Debug)]
pub struct Session {
    channel: Channel,
    control: bool,
    deframer: ControlDeframer,
    pending: VecDeque<Event>,
    /// Client bytes handed to the service (absolute, across failovers).
    input: u64,
    /// Bytes the service wrote (absolute).
    output: u64,
    last_write: tokio::time::Instant,
    last_read: tokio::time::Instant,
    /// The gateway sent a heartbeat: it is answered, so that a gateway with a shorter
    /// `heartbeat_interval` than ours hears from an idle session in time. (The
    /// gateway never answers ours, so they cannot ping-pong.)
    heartbeat_received: bool,
}

/// A control channel peer silent for three heartbeat intervals is gone.
const HEARTBEAT: Duration = Duration::from_secs(1);

impl Session {
    fn new(channel: Channel, control: bool) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            channel,
            control,
            deframer: ControlDeframer::default(),
            pending: VecDeque::new(),
            input: 0,
            output: 0,
            last_write: now,
            last_read: now,
            heartbeat_received: false,
        }
    }

    /// The connection itself, for a service that speaks its own protocol on a plain
    /// data channel; `None` with a control channel (its framing is the library's).
    /// (`None` on SCTP too: the session's messages are [`Session::next_event`]'s.)
    pub fn into_stream(self) -> Option<TcpStream> {
        match self.channel {
            Channel::Tcp(stream) if !self.control => Some(stream),
            _ => None,
        }
    }

    /// Client bytes received so far in this session (including those before a
    /// failover).
    pub fn input_offset(&self) -> u64 {
        self.input
    }

    /// The next event; heartbeats are sent and checked meanwhile (on TCP: SCTP
    /// watches the peer itself).
    pub async fn next_event(&mut self) -> std::io::Result<Event> {
        Ok(self.next_event_before(None).await?.unwrap_or(Event::Closed))
    }

    /// The next event, or `None` at `deadline` if none came by then: for services
    /// with timers of their own (keep-alives, work in progress). Call it rather than
    /// dropping [`Session::next_event`] at a timeout, which could cut a heartbeat
    /// half written.
    pub async fn next_event_before(
        &mut self,
        deadline: Option<tokio::time::Instant>,
    ) -> std::io::Result<Option<Event>> {
        let mut buffer = vec![0u8; 16 * 1024];
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut expired = std::pin::pin!(expired);
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            let stream = match &mut self.channel {
                Channel::Tcp(stream) => stream,
                Channel::Sctp { association, ppid } => {
                    // The association keeps a partly received message: dropping
                    // the receive at the deadline loses nothing.
                    let received = tokio::select! {
                        received = association.receive(sctp::MAX_MESSAGE) => received?,
                        () = &mut expired => return Ok(None),
                    };
                    match received {
                        Received::Closed(_) => return Ok(Some(Event::Closed)),
                        Received::Message {
                            ppid: ASAP_PPID,
                            payload,
                        } => {
                            self.asap_event(&payload);
                        }
                        Received::Message {
                            ppid: data,
                            payload,
                        } => {
                            *ppid = data;
                            self.input += payload.len() as u64;
                            self.pending.push_back(Event::Data(payload));
                        }
                    }
                    continue;
                }
            };
            let tick = tokio::time::sleep_until(
                (self.last_write + HEARTBEAT).min(self.last_read + HEARTBEAT * 3),
            );
            tokio::select! {
                () = &mut expired => return Ok(None),
                read = stream.read(&mut buffer) => {
                    let count = read?;
                    if count == 0 {
                        return Ok(Some(Event::Closed));
                    }
                    self.last_read = tokio::time::Instant::now();
                    self.receive(buffer.get(..count).unwrap_or_default())?;
                    if std::mem::take(&mut self.heartbeat_received) {
                        self.write(&ControlFrame::Heartbeat.encode()).await?;
                    }
                }
                () = tick, if self.control => {
                    let now = tokio::time::Instant::now();
                    if now >= self.last_read + HEARTBEAT * 3 {
                        return Ok(Some(Event::Closed));
                    }
                    if now >= self.last_write + HEARTBEAT {
                        self.write(&ControlFrame::Heartbeat.encode()).await?;
                    }
                }
            }
        }
    }

    fn receive(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if !self.control {
            self.input += bytes.len() as u64;
            self.pending.push_back(Event::Data(bytes.to_vec()));
            return Ok(());
        }
        self.deframer.push(bytes);
        loop {
            let frame = self
                .deframer
                .next_frame()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            match frame {
                Some(ControlFrame::Data { payload, .. }) => {
                    self.input += payload.len() as u64;
                    self.pending.push_back(Event::Data(payload));
                }
                Some(ControlFrame::Asap(message)) => self.asap_event(&message),
                Some(ControlFrame::Heartbeat) => self.heartbeat_received = true,
                None => return Ok(()),
            }
        }
    }

    /// A control channel message from the pool user.
    fn asap_event(&mut self, message: &[u8]) {
        match AsapMessage::decode(message).map(|d| d.message) {
            Ok(AsapMessage::CookieEcho(Cookie { cookie })) => {
                let state = match open_cookie(&cookie) {
                    Some((consumed, produced, state)) => {
                        self.input = consumed;
                        self.output = produced;
                        state.to_vec()
                    }
                    None => cookie,
                };
                self.pending.push_back(Event::CookieEcho(state));
            }
            Ok(AsapMessage::BusinessCard(card)) => {
                self.pending.push_back(Event::BusinessCard(card))
            }
            _ => {}
        }
    }

    /// Writes framed bytes (TCP), or one message with the session's data PPID (SCTP).
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.channel {
            Channel::Tcp(stream) => stream.write_all(bytes).await?,
            Channel::Sctp { association, ppid } => association.send(*ppid, bytes).await?,
        }
        self.last_write = tokio::time::Instant::now();
        Ok(())
    }

    /// Sends an ASAP message on the control channel.
    async fn write_asap(&mut self, message: Vec<u8>) -> std::io::Result<()> {
        match &mut self.channel {
            Channel::Tcp(stream) => {
                stream
                    .write_all(&ControlFrame::Asap(message).encode())
                    .await?
            }
            Channel::Sctp { association, .. } => association.send(ASAP_PPID, &message).await?,
        }
        self.last_write = tokio::time::Instant::now();
        Ok(())
    }

    /// Sends bytes to the client (on SCTP: one message, with the PPID the client used).
    pub async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.output += data.len() as u64;
        if self.control && matches!(self.channel, Channel::Tcp(_)) {
            // Frames of at most MAX_CONTROL_FRAME bytes: a gateway refuses larger ones
            // (and would take the session's PE for a failed one).
            for frame in data_frames(0, data) {
                self.write(&frame.encode()).await?;
            }
            Ok(())
        } else {
            self.write(data).await
        }
    }

    /// Sends a cookie: `state` after processing the first `consumed` client bytes, all
    /// of whose answers have been sent. Ignored on a plain byte stream.
    pub async fn send_cookie(&mut self, state: &[u8], consumed: u64) -> std::io::Result<()> {
        let cookie = seal_cookie(consumed.min(self.input), self.output, state);
        self.send_opaque_cookie(cookie).await
    }

    /// Sends a cookie the pool user keeps and echoes as it is, without the library's
    /// envelope (the client bytes and answers it covers): for a service whose cookies
    /// others read too, such as rsplib's PingPong and CalcApp, whose PEs may share a
    /// pool with ours. A gateway takes such a cookie to cover everything up to the
    /// PE's latest answer. Ignored on a plain byte stream.
    pub async fn send_opaque_cookie(&mut self, cookie: Vec<u8>) -> std::io::Result<()> {
        if !self.control {
            return Ok(());
        }
        let message = AsapMessage::Cookie(Cookie { cookie })
            .encode()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.write_asap(message).await
    }

    /// Sends a business card: the PEs this client should fail over to, in order.
    pub async fn send_business_card(&mut self, card: BusinessCard) -> std::io::Result<()> {
        if !self.control {
            return Ok(());
        }
        let message = AsapMessage::BusinessCard(card)
            .encode()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.write_asap(message).await
    }
}
