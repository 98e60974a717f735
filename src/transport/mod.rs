//! ASAP/ENRP associations, whatever carries them: the only code that opens ASAP or
//! ENRP sockets (ARCHITECTURE.md §3).
//!
//! Carriers run as tasks and report to the driver through one channel of
//! [`Incoming`] events; the driver owns a [`Transports`], which turns them into engine
//! inputs and carries out the engines' outputs. An association is identified by an
//! [`AssocId`]: the driver numbers the ones it accepts, the engines the ones they open.
//!
//! Carriers: kernel SCTP ([`sctp`], the standard one), the TCP mapping ([`tcp`], for
//! hosts without SCTP), and UDP multicast for announces ([`multicast`]).

pub(crate) mod admission;
pub(crate) mod bridge;
mod carrier;
pub(crate) mod identity;
pub(crate) mod multicast;
pub(crate) mod sctp;
mod sctp_link;
pub(crate) mod sctp_tls;
pub(crate) mod tcp;
pub(crate) mod tls;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use admission::Admission;
pub(crate) use carrier::{Arrived, Heard, Incoming, Link, SEND_QUEUE};
use rserpool_proto::engine::{AssocId, Endpoint, PeerInfo, TransportKind};
use rserpool_proto::wire::Protocol;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What an incoming event means to the engine.
#[derive(Debug)]
pub(crate) enum EngineInput {
    Up { assoc: AssocId, peer: PeerInfo },
    Down { assoc: AssocId },
    Message(Arrived),
    Datagram(Heard),
}

/// Numbers the associations the driver accepts (1, 2, ...; engines use the upper half).
#[derive(Debug, Clone, Default)]
pub(crate) struct IncomingIds(Arc<AtomicU64>);

impl IncomingIds {
    pub(crate) fn next(&self) -> AssocId {
        AssocId(self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// The associations and channels of one driver.
#[derive(Debug)]
pub(crate) struct Transports {
    links: HashMap<AssocId, Link>,
    /// Outgoing associations being opened.
    connecting: HashSet<AssocId>,
    /// Outgoing associations the engine closed before they opened: dropped on arrival.
    abandoned: HashSet<AssocId>,
    incoming: mpsc::Sender<Incoming>,
    multicast: HashMap<Protocol, multicast::Channel>,
    /// The local addresses outgoing ASAP associations are bound to (a PE's ASAP
    /// endpoint), so that registrars see the PE's listening port (RFC 5352 §3.1).
    pub(crate) asap_local: Vec<SocketAddr>,
    /// The local addresses outgoing ENRP associations are bound to (a registrar's ENRP
    /// endpoint): rsplib accepts a peer's Server Information only when the association
    /// comes from the addresses *and port* it names.
    pub(crate) enrp_local: Vec<SocketAddr>,
    /// TLS for every association this driver opens (over TCP or SCTP).
    pub(crate) tls: Option<Arc<tls::ControlTls>>,
    /// The histogram the driver records each message's handling time in, by protocol
    /// (the registrar's); none: not measured.
    pub(crate) handling_histogram: Option<&'static str>,
    shutdown: CancellationToken,
}

impl Transports {
    pub(crate) fn new(incoming: mpsc::Sender<Incoming>, shutdown: CancellationToken) -> Self {
        Self {
            links: HashMap::new(),
            connecting: HashSet::new(),
            abandoned: HashSet::new(),
            incoming,
            multicast: HashMap::new(),
            asap_local: Vec::new(),
            enrp_local: Vec::new(),
            tls: None,
            handling_histogram: None,
            shutdown,
        }
    }

    /// Adds a multicast channel for a protocol's announces.
    pub(crate) fn add_multicast(&mut self, protocol: Protocol, channel: multicast::Channel) {
        self.multicast.insert(protocol, channel);
    }

    /// Hears registrars' ASAP announces on `group` at the interface `interface` (a PE's
    /// or a pool user's hunt learns registrars from them, RFC 5352 §3.6).
    pub(crate) fn join_announces(
        &mut self,
        group: SocketAddrV4,
        interface: Ipv4Addr,
    ) -> io::Result<()> {
        let channel = multicast::Channel::open(
            Protocol::Asap,
            group,
            interface,
            1,
            self.incoming.clone(),
            self.shutdown.clone(),
        )?;
        self.add_multicast(Protocol::Asap, channel);
        Ok(())
    }

    /// Turns a carrier event into an engine input; events for associations the engine
    /// has closed meanwhile are dropped.
    pub(crate) fn accept(&mut self, incoming: Incoming) -> Option<EngineInput> {
        match incoming {
            Incoming::Opened { assoc, peer, link } => {
                self.connecting.remove(&assoc);
                if self.abandoned.remove(&assoc) {
                    link.cancel.cancel();
                    return None;
                }
                self.links.insert(assoc, link);
                Some(EngineInput::Up { assoc, peer })
            }
            Incoming::Failed { assoc, reason } => {
                self.connecting.remove(&assoc);
                if self.abandoned.remove(&assoc) {
                    return None;
                }
                tracing::debug!(%assoc, %reason, "association could not be opened");
                Some(EngineInput::Down { assoc })
            }
            Incoming::Closed { assoc, reason } => {
                let link = self.links.remove(&assoc)?;
                link.cancel.cancel();
                tracing::debug!(%assoc, %reason, "association closed");
                Some(EngineInput::Down { assoc })
            }
            Incoming::Message(message) => self
                .links
                .contains_key(&message.assoc)
                .then_some(EngineInput::Message(message)),
            Incoming::Datagram(datagram) => Some(EngineInput::Datagram(datagram)),
        }
    }

    /// Queues a message. A full queue means the peer does not read: the association
    /// is closed and the engine must be told it is down.
    pub(crate) fn send(&mut self, assoc: AssocId, payload: Vec<u8>) -> Result<(), AssocId> {
        let Some(link) = self.links.get(&assoc) else {
            return Ok(());
        };
        match link.sender.try_send(payload) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%assoc, queue = SEND_QUEUE, "peer does not read its messages: closing");
                self.close(assoc);
                Err(assoc)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        }
    }

    /// Opens an association in the background; the outcome arrives as an event.
    pub(crate) fn connect(&mut self, assoc: AssocId, to: Endpoint, protocol: Protocol) {
        self.connecting.insert(assoc);
        let incoming = self.incoming.clone();
        let local = match protocol {
            Protocol::Asap => self.asap_local.clone(),
            Protocol::Enrp => self.enrp_local.clone(),
        };
        let shutdown = self.shutdown.clone();
        match to.transport {
            TransportKind::Tcp => {
                let local = local.first().copied();
                let tls = self.tls.clone();
                tokio::spawn(tcp::connect(
                    assoc, to, protocol, local, tls, incoming, shutdown,
                ));
            }
            TransportKind::Sctp => {
                let tls = self.tls.clone();
                tokio::spawn(sctp_link::connect(
                    assoc, to, protocol, local, tls, incoming, shutdown,
                ));
            }
        }
    }

    /// Closes an association (no "down" event follows).
    pub(crate) fn close(&mut self, assoc: AssocId) {
        if let Some(link) = self.links.remove(&assoc) {
            link.cancel.cancel();
        } else if self.connecting.remove(&assoc) {
            self.abandoned.insert(assoc);
        }
    }

    /// Sends a multicast datagram on the protocol's channel, if there is one.
    pub(crate) fn datagram(&self, protocol: Protocol, payload: &[u8]) {
        if let Some(channel) = self.multicast.get(&protocol) {
            channel.send(payload);
        }
    }

    /// Closes every association.
    pub(crate) fn close_all(&mut self) {
        for (_, link) in self.links.drain() {
            link.cancel.cancel();
        }
    }
}

/// An endpoint's addresses: `primary`, then the multi-homing ones with its port.
/// A list of registrar addresses as endpoints of `transport`.
pub(crate) fn endpoints(transport: TransportKind, registrars: &[SocketAddr]) -> Vec<Endpoint> {
    registrars
        .iter()
        .map(|address| Endpoint::new(transport, *address))
        .collect()
}

pub(crate) fn multihomed(primary: SocketAddr, more: &[std::net::IpAddr]) -> Vec<SocketAddr> {
    std::iter::once(primary)
        .chain(more.iter().map(|ip| SocketAddr::new(*ip, primary.port())))
        .collect()
}

/// A listening ASAP or ENRP endpoint.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    Sctp(sctp::Listener),
}

impl Listener {
    /// Binds an endpoint of `transport`: SCTP on every address of `addresses` (one
    /// port), TCP on the first.
    ///
    /// The socket allows port sharing (SO_REUSEPORT: outgoing associations leave from
    /// the listening port), which would also let a second process listen on the same
    /// port unnoticed and take half the associations; so a socket that does not share
    /// is bound there first, and a port in use is an error.
    pub(crate) fn bind(transport: TransportKind, addresses: &[SocketAddr]) -> io::Result<Self> {
        if let Some(first) = addresses.first().filter(|a| a.port() != 0) {
            let probe = match transport {
                TransportKind::Sctp => sctp::probe_port(*first),
                TransportKind::Tcp => tcp::probe_port(*first),
            };
            probe.map_err(|error| match error.kind() {
                io::ErrorKind::AddrInUse => io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{error}: another process listens on {first}"),
                ),
                _ => error,
            })?;
        }
        match transport {
            TransportKind::Sctp => sctp::Listener::bind(addresses).map(Self::Sctp),
            TransportKind::Tcp => {
                let first = addresses.first().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on")
                })?;
                tcp::bind(*first).map(Self::Tcp)
            }
        }
    }

    /// The bound addresses (with the port the system chose for port 0).
    pub(crate) fn local_addresses(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            Self::Tcp(listener) => Ok(vec![listener.local_addr()?]),
            Self::Sctp(listener) => listener.local_addresses(),
        }
    }

    /// The transport parameter that tells peers where this endpoint is: the bound
    /// addresses, or `wildcard` for a listener bound to a wildcard address.
    pub(crate) fn transport_parameter(
        &self,
        wildcard: Option<std::net::IpAddr>,
    ) -> io::Result<rserpool_proto::wire::Transport> {
        let bound = self.local_addresses()?;
        let port = bound.first().map_or(0, SocketAddr::port);
        let addresses = if bound.iter().any(|a| a.ip().is_unspecified()) {
            wildcard.into_iter().collect()
        } else {
            bound.iter().map(SocketAddr::ip).collect()
        };
        Ok(self.kind().transport_parameter(addresses, port))
    }

    /// A listening socket of `transport` handed over by a binary upgrade.
    pub(crate) fn from_handed(transport: TransportKind, fd: OwnedFd) -> io::Result<Self> {
        match transport {
            TransportKind::Tcp => tcp::listener_from(fd).map(Self::Tcp),
            TransportKind::Sctp => sctp::Listener::from_handed(fd).map(Self::Sctp),
        }
    }

    /// A duplicate of the listening socket, for a binary upgrade.
    pub(crate) fn duplicate(&self) -> io::Result<OwnedFd> {
        match self {
            Self::Tcp(listener) => listener.as_fd().try_clone_to_owned(),
            Self::Sctp(listener) => listener.duplicate(),
        }
    }

    fn kind(&self) -> TransportKind {
        match self {
            Self::Tcp(_) => TransportKind::Tcp,
            Self::Sctp(_) => TransportKind::Sctp,
        }
    }
}

/// Stops accept loops for a while: a registrar's upgrade leaves the associations
/// that arrive while it hands over in the kernel's backlog, for the new process
/// (the old one would close them).
#[derive(Debug, Clone, Default)]
pub(crate) struct AcceptPause(Arc<tokio::sync::watch::Sender<bool>>);

/// A pause of the accept loops; they go on when it is dropped.
pub(crate) struct Paused(AcceptPause);

impl AcceptPause {
    pub(crate) fn pause(&self) -> Paused {
        self.0.send_replace(true);
        Paused(self.clone())
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        (self.0).0.send_replace(false);
    }
}

/// Accepts associations for one protocol until shut down (and not while `pause`d),
/// each under the listener's `admission` (connection limits, time limits, memory
/// budget). With `tls`, every association must complete a TLS handshake (over TCP,
/// plain peers may speak plain where allowed).
pub(crate) async fn accept_loop(
    listener: Listener,
    (protocol, tls): (Protocol, Option<Arc<tls::ControlTls>>),
    ids: IncomingIds,
    incoming: mpsc::Sender<Incoming>,
    admission: Arc<Admission>,
    (pause, shutdown): (AcceptPause, CancellationToken),
) {
    let mut paused = pause.0.subscribe();
    loop {
        // The sender lives in `pause`: these waits end only by a change.
        let pausing = async {
            let _ = paused.wait_for(|paused| *paused).await;
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            () = pausing => None,
            accepted = accept(&listener) => Some(accepted),
        };
        let Some(accepted) = accepted else {
            let resuming = async {
                let _ = paused.wait_for(|paused| !*paused).await;
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = resuming => continue,
            }
        };
        let (accepted, host) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Refused connections close at once (the refusal is counted and logged).
        let Ok(ticket) = admission.admit(host, &shutdown) else {
            continue;
        };
        let assoc = ids.next();
        let incoming = incoming.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match accepted {
                Accepted::Tcp(stream) => {
                    tcp::serve(assoc, stream, protocol, tls, incoming, ticket).await;
                }
                Accepted::Sctp(association) => {
                    sctp_link::serve(assoc, association, protocol, tls, incoming, ticket).await;
                }
            }
        });
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Sctp(sctp::Association),
}

/// The next association and the address it comes from.
async fn accept(listener: &Listener) -> io::Result<(Accepted, std::net::IpAddr)> {
    match listener {
        Listener::Tcp(listener) => {
            let (stream, from) = listener.accept().await?;
            Ok((Accepted::Tcp(stream), from.ip().to_canonical()))
        }
        Listener::Sctp(listener) => {
            let association = listener.accept().await?;
            let from = association
                .peer_addresses()?
                .first()
                .map(|address| address.ip().to_canonical())
                .ok_or_else(|| io::Error::other("an SCTP association without a peer address"))?;
            Ok((Accepted::Sctp(association), from))
        }
    }
}
