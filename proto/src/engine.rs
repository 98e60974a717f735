//! The contract between the protocol engines and the driver that runs them
//! (ARCHITECTURE.md §2).
//!
//! An engine (registrar, pool element, pool user) is a plain struct. The driver feeds it
//! *mutations*, each with the current time: an association came up or went down, bytes
//! arrived on an association or as a datagram, a timer fired, or a role command. After
//! every mutation the driver drains [`Engine::poll_output`] until it returns
//! [`Output::Timeout`], and performs each output: send bytes, open or close an
//! association, send a datagram, report an event. Engines never read a clock, open a
//! socket or draw unseeded randomness, so the same inputs and seed give the same outputs.
//!
//! Malformed or hostile input never makes an engine panic or return an error to the
//! driver: it becomes an ERROR reply, a closed association, a counter and a log event.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use crate::association::AssocId;
pub(crate) use crate::association::AssocIds;
use crate::auth::Authentication;
use crate::wire::{Protocol, Transport, TransportProtocol, TransportUse};

/// The transport an association runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum TransportKind {
    /// Kernel SCTP: message boundaries, PPIDs, multi-homing.
    Sctp,
    /// The TCP mapping: bare self-delimited messages, one port per protocol (a
    /// project-local choice, not a standard; see README "Transports").
    Tcp,
}

impl TransportKind {
    /// The transport parameter describing an endpoint of this kind.
    pub fn transport_parameter(self, addresses: Vec<IpAddr>, port: u16) -> Transport {
        let protocol = match self {
            Self::Sctp => TransportProtocol::Sctp(TransportUse::DataOnly),
            Self::Tcp => TransportProtocol::Tcp(TransportUse::DataOnly),
        };
        Transport {
            protocol,
            port,
            addresses,
        }
    }

    /// The kind for a transport parameter, if it is one an association can use.
    pub fn of(transport: &Transport) -> Option<Self> {
        match transport.protocol {
            TransportProtocol::Sctp(_) => Some(Self::Sctp),
            TransportProtocol::Tcp(_) => Some(Self::Tcp),
            _ => None,
        }
    }
}

/// Where an association can be opened to: a transport, a port and one or more
/// addresses (several for a multi-homed SCTP peer).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// SCTP or TCP.
    pub transport: TransportKind,
    /// The addresses, tried in order (SCTP uses them all).
    pub addresses: Vec<IpAddr>,
    /// The port.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint with one address.
    pub fn new(transport: TransportKind, address: SocketAddr) -> Self {
        Self {
            transport,
            addresses: vec![address.ip()],
            port: address.port(),
        }
    }

    /// The endpoint a transport parameter describes (SCTP or TCP only).
    pub fn from_parameter(transport: &Transport) -> Option<Self> {
        Some(Self {
            transport: TransportKind::of(transport)?,
            addresses: transport.addresses.clone(),
            port: transport.port,
        })
    }

    /// The first address as a socket address.
    pub fn first(&self) -> Option<SocketAddr> {
        self.addresses
            .first()
            .map(|ip| SocketAddr::new(*ip, self.port))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.transport {
            TransportKind::Sctp => "sctp",
            TransportKind::Tcp => "tcp",
        };
        match self.addresses.as_slice() {
            [one] => write!(f, "{kind}://{}", SocketAddr::new(*one, self.port)),
            many => {
                write!(f, "{kind}://[")?;
                for (i, address) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{address}")?;
                }
                write!(f, "]:{}", self.port)
            }
        }
    }
}

/// What the transport knows of an association's peer when it comes up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The transport.
    pub transport: TransportKind,
    /// The peer's addresses (all of them for multi-homed SCTP). Empty if unknown, in
    /// which case address checks are skipped.
    pub addresses: Vec<IpAddr>,
    /// The peer's port. For a PE's registration association this is its ASAP port.
    pub port: u16,
    /// The protocol spoken on the association (the port or PPID it runs on).
    pub protocol: Protocol,
    /// The smoothed round-trip time, if the transport reports one.
    pub rtt: Option<Duration>,
    /// What the transport proved about the peer (TLS client or server certificate).
    pub authentication: Authentication,
}

impl PeerInfo {
    /// The peer as an endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            transport: self.transport,
            addresses: self.addresses.clone(),
            port: self.port,
        }
    }
}

/// Something the driver must do, or the next time it must call back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output<E> {
    /// Send one message on an association (with the protocol's PPID on SCTP).
    Transmit {
        /// The association.
        assoc: AssocId,
        /// ASAP or ENRP.
        protocol: Protocol,
        /// The encoded message.
        payload: Vec<u8>,
    },
    /// Multicast one datagram on the protocol's announce channel (ASAP_SERVER_ANNOUNCE,
    /// ENRP_PRESENCE), if the driver has one configured.
    Datagram {
        /// ASAP (announce group) or ENRP (presence group).
        protocol: Protocol,
        /// The encoded message.
        payload: Vec<u8>,
    },
    /// Open an association; the driver answers with
    /// [`Engine::handle_association_up`] or [`Engine::handle_association_down`].
    Connect {
        /// The identifier the engine gave it.
        assoc: AssocId,
        /// Where to.
        to: Endpoint,
        /// The protocol it will carry.
        protocol: Protocol,
    },
    /// Close (or abort) an association. No "down" notification follows.
    Close {
        /// The association.
        assoc: AssocId,
    },
    /// Something the role's user should know.
    Event(E),
    /// Nothing more to do now; call [`Engine::handle_timeout`] at this time (or never).
    Timeout(Option<Instant>),
}

/// The mutations every engine accepts, and the output drain.
pub trait Engine {
    /// The role's events.
    type Event;

    /// An association is established (accepted by the driver, or one the engine asked
    /// for).
    fn handle_association_up(&mut self, assoc: AssocId, peer: PeerInfo, now: Instant);

    /// An association failed, was closed by the peer, or could not be opened.
    fn handle_association_down(&mut self, assoc: AssocId, now: Instant);

    /// One message arrived on an association.
    fn handle_message(&mut self, assoc: AssocId, protocol: Protocol, bytes: &[u8], now: Instant);

    /// One datagram arrived on an announce channel (multicast).
    fn handle_datagram(&mut self, from: SocketAddr, protocol: Protocol, bytes: &[u8], now: Instant);

    /// Time passed; due timers fire.
    fn handle_timeout(&mut self, now: Instant);

    /// The next output; [`Output::Timeout`] ends the drain.
    fn poll_output(&mut self) -> Output<Self::Event>;
}

/// Named timer and threshold sets (RFC 5352 §7, RFC 5353 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum TimerProfile {
    /// RFC 5352/5353 values (T1 15 s, T2/T3 30 s, ENRP heartbeat 30 s, ...), with
    /// rsplib's keep-alive and announce timers where the RFC names none.
    #[default]
    Rfc,
    /// rsplib's much faster defaults: needed to peer with rsplib registrars, which
    /// declare a registrar dead after about 10 s of silence.
    Rsplib,
}

impl TimerProfile {
    /// Each profile with its name as configurations and command lines write it.
    pub const NAMED: [(&'static str, Self); 2] = [("rfc", Self::Rfc), ("rsplib", Self::Rsplib)];
}

impl std::str::FromStr for TimerProfile {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::NAMED
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, profile)| *profile)
            .ok_or_else(|| format!("{text:?} is not a timer profile (rfc, rsplib)"))
    }
}
