//! The TCP mapping (project-local, not a standard: the IETF TCP mapping draft expired
//! unfinished, spec README §6). Each TCP connection is one association carrying one
//! protocol, chosen by the port: ASAP on the ASAP port, ENRP on the ENRP port. Messages
//! are sent bare, one after another; the receiver cuts them out of the stream by their
//! length field (`StreamDeframer`), as Wireshark does on tcp/3863.
//!
//! TCP keep-alive (5 s idle, then 1 s probes, 3 of them) notices a vanished peer host;
//! a killed peer process is noticed at once (the kernel closes its sockets).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rserpool_proto::auth::Authentication;
use rserpool_proto::engine::{AssocId, Endpoint, PeerInfo, TransportKind};
use rserpool_proto::wire::{Protocol, StreamDeframer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::{Expulsion, Ticket};
use super::carrier::{Arrived, Incoming, MessageSink, WRITE_TIMEOUT, report_opened, write_loop};
use super::tls::{self, ControlTls, Secured};

/// How long an outgoing connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn socket_for(address: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // Outgoing ASAP associations of a PE share its listening port (RFC 5352 §3.1).
    socket.set_reuseport(true)?;
    Ok(socket)
}

/// Binds `address` with a socket that does not share its port, and lets it go: fails
/// with "address in use" when another socket listens there.
pub(crate) fn probe_port(address: SocketAddr) -> io::Result<()> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Connections of an earlier run in TIME_WAIT do not count.
    socket.set_reuseaddr(true)?;
    socket.bind(address)
}

/// Binds a listening socket for one protocol.
pub(crate) fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket_for(address)?;
    socket.bind(address)?;
    socket.listen(1024)
}

/// A listening socket handed over by a binary upgrade, for tokio.
pub(crate) fn listener_from(fd: std::os::fd::OwnedFd) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

fn peer_info(stream: &TcpStream, protocol: Protocol) -> io::Result<PeerInfo> {
    let peer = stream.peer_addr()?;
    Ok(PeerInfo {
        transport: TransportKind::Tcp,
        addresses: vec![peer.ip().to_canonical()],
        port: peer.port(),
        protocol,
        rtt: None,
        authentication: Authentication::Unauthenticated,
    })
}

/// Starts the carrier of an accepted connection, admitted by its listener (`ticket`:
/// its deadlines and memory budget apply); with TLS, after the handshake.
///
/// Each stage is boxed: a future is as large as its largest state, and the TLS
/// handshake's and session's would otherwise be held by every plain connection too
/// (9.4 KiB per accepted connection, most of what 10 000 idle ones cost).
pub(crate) async fn serve(
    assoc: AssocId,
    stream: TcpStream,
    protocol: Protocol,
    tls: Option<Arc<ControlTls>>,
    incoming: mpsc::Sender<Incoming>,
    ticket: Ticket,
) {
    let Ok(mut peer) = peer_info(&stream, protocol) else {
        return;
    };
    tune(&stream);
    let shutdown = ticket.close.clone();
    let reassembly = Reassembly::new(assoc, protocol, Some(ticket));
    let stream = match tls {
        None => stream,
        Some(tls) => {
            let secured = tokio::select! {
                () = shutdown.cancelled() => return,
                secured = Box::pin(tls.accept(stream)) => secured,
            };
            match secured {
                Ok(Secured::Plain(stream)) => stream,
                Ok(Secured::Tls(stream, authentication)) => {
                    peer.authentication = authentication;
                    Box::pin(run_session(*stream, peer, reassembly, incoming, shutdown)).await;
                    return;
                }
                Err(error) => {
                    tls::report_failure("incoming", &peer, &error);
                    return;
                }
            }
        }
    };
    Box::pin(run(
        stream.into_split(),
        peer,
        reassembly,
        incoming,
        shutdown,
    ))
    .await;
}

/// Opens an association to `to` (its addresses in order), optionally from `local`;
/// with TLS, the association is up once the handshake proved the peer.
pub(crate) async fn connect(
    assoc: AssocId,
    to: Endpoint,
    protocol: Protocol,
    local: Option<SocketAddr>,
    tls: Option<Arc<ControlTls>>,
    incoming: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) {
    let mut last_error = String::from("no address");
    for address in to.addresses.iter().map(|ip| SocketAddr::new(*ip, to.port)) {
        let attempt = async {
            let socket = socket_for(address)?;
            if let Some(local) = local.filter(|l| l.is_ipv4() == address.is_ipv4()) {
                socket.bind(local)?;
            }
            socket.connect(address).await
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                last_error = format!("{address}: {error}");
                continue;
            }
            Err(_) => {
                last_error = format!("{address}: timed out");
                continue;
            }
        };
        let Ok(mut peer) = peer_info(&stream, protocol) else {
            continue;
        };
        tune(&stream);
        let reassembly = Reassembly::new(assoc, protocol, None);
        let Some(tls) = &tls else {
            run(stream.into_split(), peer, reassembly, incoming, shutdown).await;
            return;
        };
        match tls.handshake_as_client(stream, address.ip()).await {
            Ok((stream, authentication)) => {
                peer.authentication = authentication;
                run_session(stream, peer, reassembly, incoming, shutdown).await;
                return;
            }
            Err(error) => {
                tls::report_failure("outgoing", &peer, &error);
                last_error = format!("{address}: {error}");
            }
        }
    }
    let _ = incoming
        .send(Incoming::Failed {
            assoc,
            reason: last_error,
        })
        .await;
}

impl MessageSink for tokio::net::tcp::OwnedWriteHalf {
    /// With `more`, the kernel may hold the bytes (`MSG_MORE`, as a cork for this one
    /// write) to send them with what follows in full segments; the next write without
    /// it sends everything.
    async fn send(&mut self, message: &[u8], more: bool) -> io::Result<()> {
        if !more {
            return self.write_all(message).await;
        }
        let stream: &TcpStream = self.as_ref();
        let mut rest = message;
        while !rest.is_empty() {
            stream.writable().await?;
            let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                socket2::SockRef::from(stream).send_with_flags(rest, libc::MSG_MORE)
            });
            match sent {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(count) => rest = rest.get(count..).unwrap_or_default(),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    async fn finish(&mut self) {
        let _ = self.shutdown().await;
    }
}

/// How long a locally closed association keeps discarding input after its last message,
/// so that closing with unread input does not turn into a reset that destroys the
/// replies just sent (a lingering close).
const LINGER: Duration = Duration::from_secs(1);

/// Runs one association over a byte stream, given as its reading and writing halves (a
/// TCP connection split without a lock, or a TLS session over TCP or SCTP): reports it
/// open, then reads and writes until it ends.
///
/// Closing is graceful when the engine asks for it (the link is dropped): queued
/// messages are sent, then FIN, then input is discarded for a moment. When the peer
/// ends the association or the process shuts down, writing stops at once.
pub(super) async fn run<R, W>(
    (mut reader, writer): (R, W),
    peer: PeerInfo,
    mut reassembly: Reassembly,
    incoming: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: MessageSink + Send + 'static,
{
    let assoc = reassembly.assoc;
    let abort = shutdown.child_token();
    let Some((outgoing, closed_locally)) = report_opened(assoc, peer, &incoming).await else {
        return;
    };
    let write_abort = abort.clone();
    let writing = tokio::spawn(write_loop(assoc, outgoing, writer, write_abort));
    let stop = closed_locally.clone();
    let reason = read_loop(&mut reassembly, &mut reader, &incoming, &stop, &abort).await;
    if closed_locally.is_cancelled() {
        // Flush what the engine queued before closing, then linger.
        let _ = tokio::time::timeout(WRITE_TIMEOUT, writing).await;
        // On the heap: the future would hold it for the association's whole life.
        let mut discard = vec![0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(reader.read(&mut discard).await, Ok(n) if n > 0) {}
        })
        .await;
        abort.cancel();
    } else {
        abort.cancel();
        let _ = writing.await;
    }
    let _ = incoming.send(Incoming::Closed { assoc, reason }).await;
}

async fn read_loop(
    reassembly: &mut Reassembly,
    reader: &mut (impl AsyncRead + Unpin),
    incoming: &mpsc::Sender<Incoming>,
    closed_locally: &CancellationToken,
    abort: &CancellationToken,
) -> String {
    // Waited on across iterations: each `cancelled()` future takes the token's lock to
    // register and again to deregister (about 5 % of a registrar's CPU when made anew
    // for every message).
    let closing = closed_locally.cancelled();
    let aborting = abort.cancelled();
    tokio::pin!(closing, aborting);
    loop {
        let read = tokio::select! {
            () = &mut closing => return "closed locally".into(),
            () = &mut aborting => return CLOSED_HERE.into(),
            why = until(reassembly.deadline()) => return reassembly.expel(why),
            read = reader.read(reassembly.buffer()) => read,
        };
        if let Err(reason) = reassembly.deliver(read, incoming).await {
            return reason;
        }
    }
}

/// Why an association ends when this side (shutdown, or its listener making room)
/// closes it.
const CLOSED_HERE: &str = "closed by this side (shutdown or eviction)";

/// Waits until a deadline and says what missing it is; forever without one.
async fn until(deadline: Option<(Instant, Expulsion)>) -> Expulsion {
    match deadline {
        Some((at, why)) => {
            tokio::time::sleep_until(at).await;
            why
        }
        None => std::future::pending().await,
    }
}

/// Where an accepted association is in the listener's time limits.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No complete message yet: the first-message deadline runs.
    Silent,
    /// Between messages.
    Idle,
    /// A message has begun: it must be complete within the message timeout.
    Receiving { since: Instant },
}

/// Cuts the messages of one association out of what is read from its byte stream and
/// hands them to the driver; for an accepted association, under its listener's time
/// limits and memory budget (`ticket`).
pub(super) struct Reassembly {
    assoc: AssocId,
    protocol: Protocol,
    deframer: StreamDeframer,
    buffer: Vec<u8>,
    ticket: Option<Ticket>,
    phase: Phase,
}

impl Reassembly {
    /// Reads are at most this large: control messages are small, and an association
    /// holds its buffer for its whole life.
    const READ_SIZE: usize = 4096;
    /// The first reads: a connection that never sends anything (10 000 of them are an
    /// attack) holds only this; one that fills it gets larger reads.
    const FIRST_READ_SIZE: usize = 512;

    pub(super) fn new(assoc: AssocId, protocol: Protocol, ticket: Option<Ticket>) -> Self {
        Self {
            assoc,
            protocol,
            deframer: StreamDeframer::new(),
            buffer: vec![0u8; Self::FIRST_READ_SIZE],
            ticket,
            phase: Phase::Silent,
        }
    }

    /// Where the next read goes.
    fn buffer(&mut self) -> &mut [u8] {
        &mut self.buffer
    }

    /// When the listener stops waiting for this association (one it admitted), and
    /// why.
    fn deadline(&self) -> Option<(Instant, Expulsion)> {
        let ticket = self.ticket.as_ref()?;
        match self.phase {
            Phase::Silent => Some(ticket.first_message_due()),
            Phase::Idle => None,
            Phase::Receiving { since } => Some(ticket.message_due(since)),
        }
    }

    /// A deadline passed: counts it and says why the association ends.
    fn expel(&self, why: Expulsion) -> String {
        match &self.ticket {
            Some(ticket) => ticket.expel(why).to_string(),
            None => why.to_string(),
        }
    }

    /// Takes one read's result: every message it completes goes to the driver. Returns
    /// why the association ends, if it does.
    async fn deliver(
        &mut self,
        read: io::Result<usize>,
        incoming: &mpsc::Sender<Incoming>,
    ) -> Result<(), String> {
        let count = match read {
            Ok(0) if self.deframer.pending() > 0 => {
                return Err("peer closed in the middle of a message".into());
            }
            Ok(0) => return Err("peer closed".into()),
            Ok(count) => count,
            Err(error) => return Err(error.to_string()),
        };
        self.deframer
            .push(self.buffer.get(..count).unwrap_or_default())
            .map_err(|error| error.to_string())?;
        if count == self.buffer.len() && count < Self::READ_SIZE {
            self.buffer.resize(Self::READ_SIZE, 0);
        }
        let mut completed = false;
        loop {
            match self.deframer.next_frame() {
                Ok(Some(payload)) => {
                    completed = true;
                    let message = Incoming::Message(Arrived {
                        assoc: self.assoc,
                        protocol: self.protocol,
                        payload,
                    });
                    if incoming.send(message).await.is_err() {
                        return Err("driver gone".into());
                    }
                }
                Ok(None) => break,
                Err(error) => return Err(format!("unframeable stream: {error}")),
            }
        }
        self.account(completed)
    }

    /// Moves the phase on after a read and charges what is left unfinished.
    fn account(&mut self, completed: bool) -> Result<(), String> {
        let Some(ticket) = &mut self.ticket else {
            return Ok(());
        };
        let now = Instant::now();
        let unfinished = self.deframer.pending();
        if completed {
            ticket.active(now);
        }
        self.phase = match (self.phase, completed, unfinished) {
            (Phase::Silent, false, _) => Phase::Silent,
            (Phase::Receiving { since }, false, _) => Phase::Receiving { since },
            (_, _, 0) => Phase::Idle,
            (_, _, _) => Phase::Receiving { since: now },
        };
        ticket
            .hold_unfinished(unfinished)
            .map_err(|why| why.to_string())
    }
}

/// Runs one association over a TLS session (over TCP or SCTP) in one task: unlike a
/// plain TCP connection, a TLS session cannot be split without a lock that both halves
/// take for every record, and a writer task of its own costs a wake-up per message.
/// Reads and writes take turns; a write that stalls past [`WRITE_TIMEOUT`] ends the
/// association, so a peer that neither reads nor stops sending cannot hold it.
///
/// Closing is as in [`run`]: when the engine asks for it, queued messages are sent,
/// then the TLS close and FIN, then input is discarded for a moment.
pub(super) async fn run_session<S>(
    mut stream: S,
    peer: PeerInfo,
    mut reassembly: Reassembly,
    incoming: mpsc::Sender<Incoming>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let assoc = reassembly.assoc;
    let Some((mut outgoing, closed_locally)) = report_opened(assoc, peer, &incoming).await else {
        return;
    };
    // Waited on across iterations, as in `read_loop`.
    let shutting_down = shutdown.cancelled();
    let closing = closed_locally.cancelled();
    tokio::pin!(shutting_down, closing);
    let reason = loop {
        tokio::select! {
            biased;
            () = &mut shutting_down => break CLOSED_HERE.to_owned(),
            why = until(reassembly.deadline()) => break reassembly.expel(why),
            () = &mut closing => {
                close_session(assoc, &mut stream, &mut outgoing).await;
                break "closed locally".to_owned();
            }
            message = outgoing.recv() => {
                let Some(message) = message else {
                    break "driver gone".to_owned();
                };
                let batch = gather(message, &mut outgoing);
                if let Err(reason) = send_flushed(&mut stream, &batch).await {
                    tracing::debug!(%assoc, %reason, "send failed");
                    break reason;
                }
            }
            read = stream.read(reassembly.buffer()) => {
                if let Err(reason) = reassembly.deliver(read, &incoming).await {
                    break reason;
                }
            }
        }
    };
    let _ = incoming.send(Incoming::Closed { assoc, reason }).await;
}

/// The most plaintext one TLS record carries (RFC 8446 §5.1, RFC 5246 §6.2.1).
const TLS_RECORD_PLAINTEXT: usize = 16_384;

/// `first` and the messages queued behind it, up to about one TLS record's plaintext:
/// written at once they leave as one record and one flush, where each message alone
/// costs a record (its own encryption) and a system call. The plain mappings bundle
/// with `MSG_MORE` instead (`carrier::write_loop`).
fn gather(first: Vec<u8>, outgoing: &mut mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    let mut batch = first;
    while batch.len() < TLS_RECORD_PLAINTEXT {
        let Ok(next) = outgoing.try_recv() else {
            break;
        };
        batch.extend_from_slice(&next);
    }
    batch
}

/// Writes one message (or several, gathered) and flushes it (a TLS session holds
/// records until flushed), within [`WRITE_TIMEOUT`].
async fn send_flushed(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &[u8],
) -> Result<(), String> {
    let sending = async {
        stream.write_all(message).await?;
        stream.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, sending).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("send timed out: the peer does not read".into()),
    }
}

/// A locally closed TLS association: sends what the engine queued (until it drops the
/// link), closes the session, then lingers discarding input.
async fn close_session<S>(assoc: AssocId, stream: &mut S, outgoing: &mut mpsc::Receiver<Vec<u8>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let draining = async {
        while let Some(message) = outgoing.recv().await {
            send_flushed(stream, &message).await?;
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(WRITE_TIMEOUT, draining).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => {
            tracing::debug!(%assoc, %reason, "send failed while closing");
            return;
        }
        Err(_) => return,
    }
    let _ = stream.shutdown().await;
    let mut discard = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(stream.read(&mut discard).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queued_messages_are_gathered_in_order_up_to_one_record() {
        let (sender, mut outgoing) = mpsc::channel(16);
        for message in [b"bb".to_vec(), b"ccc".to_vec()] {
            sender.send(message).await.unwrap();
        }
        assert_eq!(gather(b"a".to_vec(), &mut outgoing), b"abbccc");
        assert!(outgoing.try_recv().is_err(), "everything queued was taken");
        // Past one record's plaintext, the rest waits for the next write.
        for _ in 0..2 {
            sender.send(vec![2; 1_000]).await.unwrap();
        }
        let batch = gather(vec![1; 16_000], &mut outgoing);
        assert_eq!(batch.len(), 17_000);
        assert_eq!(outgoing.try_recv().unwrap(), vec![2; 1_000]);
    }
}
