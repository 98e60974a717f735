//! An idle HTTP/1.1 connection leaving for the next process of a binary upgrade, and
//! one arriving from the previous process. It leaves between two requests with nothing
//! read and nothing owed, so its socket is all there is to carry (the record only says
//! its form); the next process serves its next request. Only a plain TCP connection
//! can go: a TLS session's keys and sequence numbers live in this process's rustls
//! state, so a TLS connection finishes here (closed at its next request boundary), as
//! do connections hyper serves (HTTP/2 gets GOAWAY).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::task::{Context, Poll};

use rserpool_proto::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc::OwnedPermit;

use crate::handover::Handed;

/// The form of an HTTP connection's record this build writes and reads.
const VERSION: u64 = 1;

/// A client connection: whether it can go to another process, and whether it can wait
/// for input without holding a buffer.
pub(super) trait ClientConnection {
    /// Whether it is a plain socket: it can move, and its readiness says when input
    /// comes (a TLS stream may hold decrypted input its socket's readiness does not
    /// show).
    fn plain(&self) -> bool;
    /// Its socket, taken out of this process's reactor (`None`: it cannot move).
    fn into_socket(self) -> Option<OwnedFd>;
    /// Ready once input has come (at once when it is not [`plain`](Self::plain)).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
}

impl ClientConnection for TcpStream {
    fn plain(&self) -> bool {
        true
    }

    fn into_socket(self) -> Option<OwnedFd> {
        self.into_std().ok().map(OwnedFd::from)
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Self::poll_read_ready(self, cx)
    }
}

impl<IO> ClientConnection for tokio_rustls::server::TlsStream<IO> {
    fn plain(&self) -> bool {
        false
    }

    fn into_socket(self) -> Option<OwnedFd> {
        None
    }

    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Sends the idle connection `io` to the next process through its place.
pub(super) fn depart<I: ClientConnection>(io: I, (name, place): (Arc<str>, OwnedPermit<Handed>)) {
    let Some(socket) = io.into_socket() else {
        handed_over("lost");
        return;
    };
    let mut record = SnapshotWriter::default();
    record.u64(VERSION);
    place.send(Handed {
        listener: name,
        sockets: vec![socket],
        record: record.finish(),
    });
    handed_over("departed");
}

/// The connection the previous process handed over, and its client's address.
pub(super) fn arrive(handed: Handed) -> Result<(TcpStream, SocketAddr), SnapshotError> {
    let mut record = SnapshotReader::new(&handed.record);
    let version = record.u64()?;
    if version != VERSION {
        return Err(SnapshotError::Version(version));
    }
    record.end()?;
    let [socket] =
        <[OwnedFd; 1]>::try_from(handed.sockets).map_err(|_| SnapshotError::Invalid("sockets"))?;
    let stream =
        crate::handover::tcp_stream(socket).map_err(|_| SnapshotError::Invalid("socket"))?;
    let peer = stream
        .peer_addr()
        .map_err(|_| SnapshotError::Invalid("socket"))?;
    handed_over("arrived");
    Ok((stream, peer))
}

fn handed_over(direction: &'static str) {
    metrics::counter!("rserpool_http_connections_handed_over_total", "direction" => direction)
        .increment(1);
}
