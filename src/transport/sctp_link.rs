//! An SCTP association as a link of the driver ([`Transports`](super::Transports)): accepted ones are
//! admitted and, with TLS, handshaken over the association (RFC 3436); outgoing ones
//! connect with a deadline; each then carries ASAP or ENRP messages by PPID (IANA's, or
//! rsplib's pre-IANA ones) until it ends.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rserpool_proto::engine::{AssocId, Endpoint, PeerInfo, TransportKind};
use rserpool_proto::wire::Protocol;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::admission::Ticket;
use super::carrier::{Arrived, Incoming, MessageSink, WRITE_TIMEOUT, report_opened, write_loop};
use super::sctp::{Association, MAX_MESSAGE, Received, needs_ipv6};
use super::sctp_tls::SctpStream;
use super::tcp;
use super::tls::{self, ControlTls};

fn peer_info(association: &Association, protocol: Protocol) -> io::Result<PeerInfo> {
    let peers = association.peer_addresses()?;
    let port = peers
        .first()
        .map(SocketAddr::port)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no peer address"))?;
    Ok(PeerInfo {
        transport: TransportKind::Sctp,
        addresses: peers.iter().map(|a| a.ip().to_canonical()).collect(),
        port,
        protocol,
        rtt: association.rtt(),
        authentication: rserpool_proto::auth::Authentication::Unauthenticated,
    })
}

/// How long an outgoing association may take to come up (rsplib: 5 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An association's sending side, for the shared write loop.
struct Sink {
    association: Arc<Association>,
    ppid: u32,
}

impl MessageSink for Sink {
    async fn send(&mut self, message: &[u8], more: bool) -> io::Result<()> {
        if more {
            self.association.send_holding(self.ppid, message).await
        } else {
            self.association.send(self.ppid, message).await
        }
    }

    async fn finish(&mut self) {
        self.association.shutdown();
    }
}

/// Starts the carrier of an accepted association, admitted by its listener (`ticket`:
/// over TLS its deadlines and memory budget apply; plain SCTP delivers whole messages
/// and counts toward the connection limits only); with TLS, after the handshake.
pub(crate) async fn serve(
    assoc: AssocId,
    association: Association,
    protocol: Protocol,
    tls: Option<Arc<ControlTls>>,
    incoming: mpsc::Sender<Incoming>,
    ticket: Ticket,
) {
    let shutdown = ticket.close.clone();
    let peer = match peer_info(&association, protocol) {
        Ok(peer) => peer,
        Err(error) => {
            tracing::debug!(%error, "accepted association has no peer");
            return;
        }
    };
    // Boxed stages, as in `tcp::serve`: only the one running takes memory.
    let Some(tls) = tls else {
        Box::pin(run(assoc, association, peer, incoming, shutdown)).await;
        return;
    };
    let stream = SctpStream::new(Arc::new(association), protocol.ppid());
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        handshake = Box::pin(tls.handshake_as_server(stream)) => handshake,
    };
    match handshake {
        Ok((stream, authentication)) => {
            let peer = PeerInfo {
                authentication,
                ..peer
            };
            let reassembly = tcp::Reassembly::new(assoc, protocol, Some(ticket));
            Box::pin(tcp::run_session(
                stream, peer, reassembly, incoming, shutdown,
            ))
            .await;
        }
        Err(error) => tls::report_failure("incoming", &peer, &error),
    }
}

/// Opens an association to `to` (all its addresses), from `local` if given; with TLS,
/// it is up once the handshake proved the peer.
pub(crate) async fn connect(
    assoc: AssocId,
    to: Endpoint,
    protocol: Protocol,
    local: Vec<SocketAddr>,
    tls: Option<Arc<ControlTls>>,
    incoming: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) {
    let remote: Vec<SocketAddr> = to
        .addresses
        .iter()
        .map(|ip| SocketAddr::new(*ip, to.port))
        .collect();
    // The local addresses of the peer's family only (a mixed set needs both).
    let local: Vec<SocketAddr> = if needs_ipv6(&remote) {
        local
    } else {
        local.into_iter().filter(SocketAddr::is_ipv4).collect()
    };
    let opened = tokio::time::timeout(CONNECT_TIMEOUT, Association::connect(&remote, &local))
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
    let reason = match opened.and_then(|a| peer_info(&a, protocol).map(|peer| (a, peer))) {
        Ok((association, peer)) => {
            let Some(tls) = tls else {
                run(assoc, association, peer, incoming, shutdown).await;
                return;
            };
            let address = remote
                .first()
                .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), SocketAddr::ip);
            let stream = SctpStream::new(Arc::new(association), protocol.ppid());
            match tls.handshake_as_client(stream, address).await {
                Ok((stream, authentication)) => {
                    let peer = PeerInfo {
                        authentication,
                        ..peer
                    };
                    let reassembly = tcp::Reassembly::new(assoc, protocol, None);
                    tcp::run_session(stream, peer, reassembly, incoming, shutdown).await;
                    return;
                }
                Err(error) => {
                    tls::report_failure("outgoing", &peer, &error);
                    format!("{to}: {error}")
                }
            }
        }
        Err(error) => format!("{to}: {error}"),
    };
    let _ = incoming.send(Incoming::Failed { assoc, reason }).await;
}

/// Runs one association: reports it open, then reads and writes until it ends.
/// Closing when the engine asks (the link is dropped) sends what is queued, then
/// SHUTDOWN; when the peer ends it or the process shuts down, it ends at once.
async fn run(
    assoc: AssocId,
    association: Association,
    peer: PeerInfo,
    incoming: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) {
    let protocol = peer.protocol;
    let Some((outgoing, closed_locally)) = report_opened(assoc, peer, &incoming).await else {
        return;
    };
    let association = Arc::new(association);
    let writer = association.clone();
    let abort = shutdown.child_token();
    let write_abort = abort.clone();
    let sink = Sink {
        association: writer,
        ppid: protocol.ppid(),
    };
    let mut writing = tokio::spawn(write_loop(assoc, outgoing, sink, write_abort));
    // Waited on across iterations (registering anew takes the token's lock twice).
    let aborting = abort.cancelled();
    let closing = closed_locally.cancelled();
    tokio::pin!(aborting, closing);
    let reason = loop {
        let received = tokio::select! {
            () = &mut aborting => break "shutting down".to_owned(),
            () = &mut closing, if !writing.is_finished() => {
                // Flush, then SHUTDOWN; keep reading until the peer completes it.
                let _ = tokio::time::timeout(WRITE_TIMEOUT, &mut writing).await;
                let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
                    while let Ok(Received::Message { .. }) = association.receive(MAX_MESSAGE).await {}
                })
                .await;
                break "closed locally".to_owned();
            }
            received = association.receive(MAX_MESSAGE) => received,
        };
        match received {
            Ok(Received::Message { ppid, payload }) => {
                let Some(protocol) = Protocol::from_ppid(ppid) else {
                    tracing::debug!(%assoc, ppid, "message with a foreign PPID dropped");
                    continue;
                };
                let message = Incoming::Message(Arrived {
                    assoc,
                    protocol,
                    payload,
                });
                if incoming.send(message).await.is_err() {
                    break "driver gone".to_owned();
                }
            }
            Ok(Received::Closed(reason)) => break reason,
            Err(error) => break error.to_string(),
        }
    };
    abort.cancel();
    writing.abort();
    let _ = incoming.send(Incoming::Closed { assoc, reason }).await;
}
