//! Sessions and connections carried from one process to the next (the gateway's binary
//! upgrade): each listener's [`Handover`] is where its sessions leave, each at a point
//! where the process holds nothing of it but its own record (the TCP gateway's
//! `tcp::handover`, an idle HTTP/1.1 connection's), and where the previous process's
//! arrive. The daemon carries them between the processes.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Sessions arriving from the previous process wait here for their listener.
const ARRIVALS: usize = 64;
/// The largest record a session leaves with (its replay buffer and queues, bounded by
/// the listener's limits, stay far below); a larger one stays in this process.
pub const MAX_RECORD: usize = 64 << 20;

/// One session or connection between two processes.
#[derive(Debug)]
pub struct Handed {
    /// The listener it belongs to, by its name in the upgrade exchange.
    pub listener: Arc<str>,
    /// Its sockets (a TCP session's client and PE connections; an HTTP connection's
    /// client connection).
    pub sockets: Vec<OwnedFd>,
    /// Its state, in the form of its kind of listener (project-local, versioned).
    pub record: Vec<u8>,
}

/// A listener's side of an upgrade: its sessions (or connections) leave for the next
/// process when asked, and those of the previous process arrive.
#[derive(Debug, Clone)]
pub struct Handover(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// Cancelled: sessions are to leave as soon as they can move.
    leave: CancellationToken,
    /// The listener's name in the upgrade exchange, and where its sessions go.
    departures: Mutex<Option<(Arc<str>, mpsc::Sender<Handed>)>>,
    arrivals: mpsc::Sender<Handed>,
    arrived: Mutex<Option<mpsc::Receiver<Handed>>>,
}

impl Default for Handover {
    fn default() -> Self {
        let (arrivals, arrived) = mpsc::channel(ARRIVALS);
        Self(Arc::new(Shared {
            leave: CancellationToken::new(),
            departures: Mutex::new(None),
            arrivals,
            arrived: Mutex::new(Some(arrived)),
        }))
    }
}

impl Handover {
    /// Sends every session that can move to `to`, each as soon as it is at a point
    /// where it can, as sessions of the listener `name` (in the upgrade exchange).
    pub fn depart(&self, name: &str, to: mpsc::Sender<Handed>) {
        if let Ok(mut departures) = self.0.departures.lock() {
            *departures = Some((name.into(), to));
        }
        self.0.leave.cancel();
    }

    /// No more departures (the next process is gone, or the drain is over): sessions
    /// that have not left finish here.
    pub fn stay(&self) {
        if let Ok(mut departures) = self.0.departures.lock() {
            departures.take();
        }
    }

    /// Hands a session of the previous process to this listener (waits while the
    /// listener is behind; gives it back when the listener has stopped).
    pub fn arrive(&self, session: Handed) -> Result<(), Handed> {
        self.0
            .arrivals
            .blocking_send(session)
            .map_err(|error| error.0)
    }

    /// Cancelled when sessions are to leave.
    pub(crate) fn leave(&self) -> &CancellationToken {
        &self.0.leave
    }

    /// The listener's name and a place in the queue of departures when the session
    /// `wants` one (forever otherwise), once sessions are to leave (waits until then);
    /// `None` when the next process takes no more. The wait is on the heap: it is rare,
    /// and every session's task would otherwise be as large as it.
    pub(crate) async fn departure(
        &self,
        wants: bool,
    ) -> Option<(Arc<str>, mpsc::OwnedPermit<Handed>)> {
        if !wants {
            return std::future::pending().await;
        }
        Box::pin(self.place()).await
    }

    async fn place(&self) -> Option<(Arc<str>, mpsc::OwnedPermit<Handed>)> {
        self.0.leave.cancelled().await;
        let (name, to) = self.0.departures.lock().ok()?.clone()?;
        Some((name, to.reserve_owned().await.ok()?))
    }

    /// Whether sessions are leaving for the next process now.
    pub(crate) fn leaving(&self) -> bool {
        self.0.leave.is_cancelled() && self.0.departures.lock().is_ok_and(|d| d.is_some())
    }

    /// The sessions arriving for this listener (taken once, by the listener's task).
    pub(crate) fn arrived(&self) -> Option<mpsc::Receiver<Handed>> {
        self.0.arrived.lock().ok()?.take()
    }
}

/// A connected TCP socket handed over, for tokio (anything else is refused).
pub(crate) fn tcp_stream(fd: OwnedFd) -> std::io::Result<tokio::net::TcpStream> {
    let stream = std::net::TcpStream::from(fd);
    stream.peer_addr()?;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}

/// The next session handed over by the previous process (never, without arrivals).
pub(crate) async fn next_arrival(arrivals: Option<&mut mpsc::Receiver<Handed>>) -> Option<Handed> {
    match arrivals {
        Some(arrivals) => arrivals.recv().await,
        None => std::future::pending().await,
    }
}
