//! One end of a relayed session (the client's or the PE's socket) with its outgoing
//! queue and byte budget, and the connection to a PE over TCP or through the SCTP
//! bridge.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::task::{Context, Poll};
use std::time::Duration;

use rserpool_proto::wire::{PoolElement, TransportProtocol};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

use super::config::SctpUpstream;
use crate::SctpConnector;

/// Bytes read from a socket at a time.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// A session's connection: TCP, or the local stream of an SCTP bridge.
#[derive(Debug)]
pub(super) enum Stream {
    Tcp(TcpStream),
    Local(UnixStream),
}

impl Stream {
    pub(super) fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.try_write(bytes),
            Self::Local(stream) => stream.try_write(bytes),
        }
    }

    pub(super) fn try_io<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        match self {
            Self::Tcp(stream) => stream.try_io(interest, f),
            Self::Local(stream) => stream.try_io(interest, f),
        }
    }

    /// Whether the socket is ready to read (`interest` readable) or to write. Polled
    /// rather than awaited: the socket keeps the task's waker, and a session waiting on
    /// four of these holds no future for each.
    pub(super) fn poll_ready(
        &self,
        cx: &mut Context<'_>,
        interest: Interest,
    ) -> Poll<io::Result<()>> {
        match (self, interest.is_readable()) {
            (Self::Tcp(stream), true) => stream.poll_read_ready(cx),
            (Self::Tcp(stream), false) => stream.poll_write_ready(cx),
            (Self::Local(stream), true) => stream.poll_read_ready(cx),
            (Self::Local(stream), false) => stream.poll_write_ready(cx),
        }
    }

    pub(super) fn socket(&self) -> SockRef<'_> {
        match self {
            Self::Tcp(stream) => SockRef::from(stream),
            Self::Local(stream) => SockRef::from(stream),
        }
    }
}

/// One side of a session (client or PE): its socket and the bytes waiting to go out.
///
/// Writes go straight to the socket and only what it does not take is queued, so the
/// usual exchange costs no extra task or wake-up; the session stops reading the other
/// side while `queued` is above the byte budget, so at most one read overshoots it.
pub(super) struct Side {
    pub(super) stream: Stream,
    pub(super) pending: VecDeque<Vec<u8>>,
    /// Bytes of the first pending chunk already written.
    pub(super) written: usize,
    pub(super) queued: usize,
    /// The peer half-closed: nothing more to read, and a close sends no reset.
    pub(super) eof: bool,
    pub(super) shutdown_wanted: bool,
    pub(super) shut: bool,
    /// A write failed; later output is dropped and the failure is reported once.
    pub(super) failed: bool,
    pub(super) failure_reported: bool,
}

impl Side {
    pub(super) fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: VecDeque::new(),
            written: 0,
            queued: 0,
            eof: false,
            shutdown_wanted: false,
            shut: false,
            failed: false,
            failure_reported: false,
        }
    }

    pub(super) fn send(&mut self, bytes: Vec<u8>) {
        if self.failed || bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        self.pending.push_back(bytes);
        self.flush();
    }

    /// Writes what the socket takes now.
    pub(super) fn flush(&mut self) {
        while let Some(chunk) = self.pending.front() {
            let rest = chunk.get(self.written..).unwrap_or_default();
            match self.stream.try_write(rest) {
                Ok(0) => self.failed = true,
                Ok(count) => {
                    self.written += count;
                    self.queued -= count;
                    if self.written == chunk.len() {
                        self.pending.pop_front();
                        self.written = 0;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => self.failed = true,
            }
            self.pending.clear();
            self.queued = 0;
            return;
        }
    }

    /// Sends a FIN once everything queued is out (deferred so that a session that
    /// ends right away just closes, which sends the FIN anyway).
    pub(super) fn shutdown_when_flushed(&mut self) {
        if self.shutdown_wanted && !self.shut && self.pending.is_empty() && !self.failed {
            self.shut = true;
            let _ = self.stream.socket().shutdown(Shutdown::Write);
        }
    }

    /// True once, when a write failed.
    pub(super) fn take_failure(&mut self) -> bool {
        let new = self.failed && !self.failure_reported;
        self.failure_reported |= new;
        new
    }

    /// Reads into `buffer`: `None` when the readiness was stale.
    pub(super) fn read(&mut self, buffer: &mut [u8]) -> Option<io::Result<usize>> {
        let mut count = None;
        let outcome = self.stream.try_io(Interest::READABLE, || {
            let read = (&*self.stream.socket()).read(buffer)?;
            count = Some(read);
            // A short read emptied the receive queue: report it as WouldBlock so that
            // tokio forgets the readiness (new data raises a new edge, and a FIN already
            // seen stays ready), which saves a recv that would only say EAGAIN.
            if read > 0 && read < buffer.len() {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(read)
            }
        });
        match (count, outcome) {
            (Some(0), _) => {
                self.eof = true;
                Some(Ok(0))
            }
            (Some(read), _) => Some(Ok(read)),
            (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => None,
            (None, Err(e)) => Some(Err(e)),
            (None, Ok(read)) => Some(Ok(read)),
        }
    }

    /// Ends the connection: a FIN unless a write failed; a reset only if the peer
    /// still had bytes in flight to us.
    pub(super) fn close(self) {
        if !self.eof && !self.shut && !self.failed {
            let _ = self.stream.socket().shutdown(Shutdown::Write);
        }
    }
}

/// Waits until `side` is ready for `interest` (forever when there is no side).
pub(super) fn ready(
    side: Option<&Side>,
    interest: Interest,
) -> impl Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| match side {
        Some(side) => side.stream.poll_ready(cx, interest),
        None => Poll::Pending,
    })
}

/// Opens a connection to a PE's user transport: TCP (addresses in order), or SCTP
/// through the connector.
pub(super) async fn connect<C: SctpConnector>(
    connector: &C,
    pe: &PoolElement,
    timeout: Duration,
    upstream: SctpUpstream,
) -> Option<Stream> {
    match pe.user_transport.protocol {
        TransportProtocol::Tcp(_) => connect_tcp(pe, timeout).await.map(Stream::Tcp),
        TransportProtocol::Sctp(_) => {
            match tokio::time::timeout(timeout, connector.connect_sctp(pe, upstream)).await {
                Ok(Ok(stream)) => Some(Stream::Local(stream)),
                Ok(Err(error)) => {
                    tracing::debug!(pe = %pe.id, %error, "SCTP pool element not reached");
                    None
                }
                Err(_) => None,
            }
        }
        _ => None,
    }
}

pub(super) async fn connect_tcp(pe: &PoolElement, timeout: Duration) -> Option<TcpStream> {
    let addresses = &pe.user_transport.addresses;
    for address in addresses {
        let target = SocketAddr::new(*address, pe.user_transport.port);
        // The session's own connect deadline bounds a single address; with several,
        // each gets the timeout so that the next one is still tried.
        let stream = if addresses.len() == 1 {
            TcpStream::connect(target).await.ok()
        } else {
            tokio::time::timeout(timeout, TcpStream::connect(target))
                .await
                .ok()
                .and_then(Result::ok)
        };
        if let Some(stream) = stream {
            crate::pe_socket::tune(&stream);
            return Some(stream);
        }
    }
    None
}

thread_local! {
    /// One read buffer for all sessions on a thread: what is read is handed to the
    /// session (which copies it) before the task yields, so no session keeps it.
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Reads from `side` into the thread's buffer and hands the bytes read to `deliver`
/// (`None`: the readiness was stale, nothing to do).
pub(super) fn read_into<R>(
    side: &mut Side,
    deliver: impl FnOnce(Option<io::Result<&[u8]>>) -> R,
) -> R {
    READ_BUFFER.with_borrow_mut(|buffer| {
        let result = side.read(buffer);
        deliver(result.map(|r| r.map(|count| buffer.get(..count).unwrap_or_default())))
    })
}
