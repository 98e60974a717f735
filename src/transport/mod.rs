//! ASAP/ENRP associations, whatever carries them: the only code that opens ASAP or
//! ENRP sockets (ARCHITECTURE.md §3).
//!
//! Carriers run as tasks and report to the driver through one channel of
//! [`Incoming`] events; the driver owns a [`Transports`], which turns them into engine
//! inputs and carries out the engines' outputs. An association is identified by an
//! [`AssocId`]: the driver numbers the ones it accepts, the engines the ones they open.
//!
//! Carriers: the TCP mapping ([`tcp`]), and UDP multicast for announces
//! ([`multicast`]). Kernel SCTP is not built yet: an SCTP endpoint fails to connect
//! with an error that says so.

pub(crate) mod multicast;
pub(crate) mod tcp;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rserpool_proto::engine::{AssocId, Endpoint, PeerInfo, TransportKind};
use rserpool_proto::wire::Protocol;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages queued for one association before it counts as stuck and is closed.
pub(crate) const SEND_QUEUE: usize = 1024;

/// What carrier tasks tell the driver.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// An association is up (accepted, or one the engine asked for).
    Opened {
        assoc: AssocId,
        peer: PeerInfo,
        link: Link,
    },
    /// An association the engine asked for could not be opened.
    Failed { assoc: AssocId, reason: String },
    /// An association ended (peer closed, reset, broken framing).
    Closed { assoc: AssocId, reason: String },
    /// A message arrived.
    Message {
        assoc: AssocId,
        protocol: Protocol,
        payload: Vec<u8>,
    },
    /// A multicast datagram arrived.
    Datagram {
        from: SocketAddr,
        protocol: Protocol,
        payload: Vec<u8>,
    },
}

/// The driver's end of one association: its send queue, and the token that closes it.
/// Closing (cancel, then drop the link) flushes the queue first.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) sender: mpsc::Sender<Vec<u8>>,
    pub(crate) cancel: CancellationToken,
}

/// What an incoming event means to the engine.
#[derive(Debug)]
pub(crate) enum EngineInput {
    Up {
        assoc: AssocId,
        peer: PeerInfo,
    },
    Down {
        assoc: AssocId,
    },
    Message {
        assoc: AssocId,
        protocol: Protocol,
        payload: Vec<u8>,
    },
    Datagram {
        from: SocketAddr,
        protocol: Protocol,
        payload: Vec<u8>,
    },
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
    /// The local address outgoing ASAP associations are bound to (a PE's ASAP
    /// endpoint), so that registrars see the PE's listening port (asap.md §5.2).
    pub(crate) asap_local: Option<SocketAddr>,
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
            asap_local: None,
            shutdown,
        }
    }

    /// Adds a multicast channel for a protocol's announces.
    pub(crate) fn add_multicast(&mut self, protocol: Protocol, channel: multicast::Channel) {
        self.multicast.insert(protocol, channel);
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
            Incoming::Message {
                assoc,
                protocol,
                payload,
            } => self
                .links
                .contains_key(&assoc)
                .then_some(EngineInput::Message {
                    assoc,
                    protocol,
                    payload,
                }),
            Incoming::Datagram {
                from,
                protocol,
                payload,
            } => Some(EngineInput::Datagram {
                from,
                protocol,
                payload,
            }),
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
        match to.transport {
            TransportKind::Tcp => {
                let local = (protocol == Protocol::Asap)
                    .then_some(self.asap_local)
                    .flatten();
                tokio::spawn(tcp::connect(
                    assoc,
                    to,
                    protocol,
                    local,
                    incoming,
                    self.shutdown.clone(),
                ));
            }
            TransportKind::Sctp => {
                tokio::spawn(async move {
                    let reason = format!(
                        "cannot reach {to}: kernel SCTP is not supported by this build; use a tcp endpoint"
                    );
                    let _ = incoming.send(Incoming::Failed { assoc, reason }).await;
                });
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
