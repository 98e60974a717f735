//! The TCP gateway: a legacy client connects with plain TCP; the gateway opens a
//! connection to a pool element of the listener's pool and relays, and when that PE
//! fails it moves the session to another PE as the session layer decides
//! (`rserpool_proto::session`): transparently when nothing was answered yet, with
//! cookie echo and replay for PEs with a control channel, else by closing the client.
//!
//! Each direction has a writer task with a bounded byte budget: the gateway reads from
//! one side only while the other side's queue is below it (back-pressure end to end),
//! so memory per session is bounded and a bulk transfer in both directions cannot
//! deadlock. Half-close is passed on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rserpool_proto::session::{PeFailure, Session, SessionConfig, SessionEvent, SessionOutput};
use rserpool_proto::wire::{PoolElement, PoolHandle, TransportProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{Directory, DirectoryError, Lifecycle};

/// A resolve or connect under way, polled alongside the session's sockets.
type Pending<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// One TCP listener of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The pool their sessions go to.
    pub pool_handle: PoolHandle,
    /// Session timeouts and replay limit.
    pub session: SessionConfig,
    /// Open client connections at most; more are closed at once.
    pub max_connections: usize,
    /// Bytes queued towards one side before the gateway stops reading the other.
    pub buffer: usize,
}

impl ListenerConfig {
    /// Defaults for a listener.
    pub fn new(listen: SocketAddr, pool_handle: PoolHandle) -> Self {
        Self {
            listen,
            pool_handle,
            session: SessionConfig::default(),
            max_connections: 10_000,
            buffer: 256 * 1024,
        }
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Accepts clients until shut down; each gets a session task.
pub async fn serve<D: Directory>(
    listener: TcpListener,
    config: ListenerConfig,
    directory: Arc<D>,
    lifecycle: Lifecycle,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let pool = config.pool_handle.to_string();
    loop {
        let accepted = tokio::select! {
            () = lifecycle.stop_accepting.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("rserpool_tcp_connections_refused_total", "pool" => pool.clone())
                .increment(1);
            tracing::warn!(%peer, limit = config.max_connections, "connection limit reached: closing a client");
            continue;
        };
        let _ = client.set_nodelay(true);
        let config = config.clone();
        let directory = directory.clone();
        let close = lifecycle.close_sessions.clone();
        lifecycle.sessions.spawn(async move {
            run_session(client, peer, &config, directory.as_ref(), close).await;
            drop(permit);
        });
    }
}

/// A writer task and the bytes queued for it.
struct Sink {
    queue: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
}

enum Outgoing {
    Bytes(Vec<u8>),
    Shutdown,
}

/// What a writer task reports when it stops early.
#[derive(Debug, Clone, Copy)]
struct WriteFailed;

impl Sink {
    fn spawn(mut writer: OwnedWriteHalf, failed: mpsc::UnboundedSender<WriteFailed>) -> Self {
        // Unbounded in messages, bounded in bytes: the session stops reading its source
        // while `queued` is above the byte budget, so at most one read overshoots it.
        let (queue, mut receiver) = mpsc::unbounded_channel::<Outgoing>();
        let queued = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        let (counter, notify) = (queued.clone(), drained.clone());
        tokio::spawn(async move {
            while let Some(item) = receiver.recv().await {
                match item {
                    Outgoing::Bytes(bytes) => {
                        let length = bytes.len();
                        if writer.write_all(&bytes).await.is_err() {
                            let _ = failed.send(WriteFailed);
                            return;
                        }
                        counter.fetch_sub(length, Ordering::AcqRel);
                        notify.notify_one();
                    }
                    Outgoing::Shutdown => {
                        let _ = writer.shutdown().await;
                    }
                }
            }
        });
        Self {
            queue,
            queued,
            drained,
        }
    }

    fn send(&self, bytes: Vec<u8>) {
        self.queued.fetch_add(bytes.len(), Ordering::AcqRel);
        let _ = self.queue.send(Outgoing::Bytes(bytes));
    }

    fn shutdown(&self) {
        let _ = self.queue.send(Outgoing::Shutdown);
    }

    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Opens a connection to a PE's user transport (TCP; addresses in order).
async fn connect(pe: &PoolElement, timeout: Duration) -> Option<TcpStream> {
    if !matches!(pe.user_transport.protocol, TransportProtocol::Tcp(_)) {
        return None;
    }
    for address in &pe.user_transport.addresses {
        let target = SocketAddr::new(*address, pe.user_transport.port);
        if let Ok(Ok(stream)) = tokio::time::timeout(timeout, TcpStream::connect(target)).await {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
    }
    None
}

async fn read_some(
    reader: &mut Option<OwnedReadHalf>,
    buffer: &mut [u8],
) -> std::io::Result<usize> {
    match reader {
        Some(reader) => reader.read(buffer).await,
        None => std::future::pending().await,
    }
}

/// Runs one client's session to its end.
async fn run_session<D: Directory>(
    client: TcpStream,
    peer: SocketAddr,
    config: &ListenerConfig,
    directory: &D,
    shutdown: CancellationToken,
) {
    let pool = config.pool_handle.to_string();
    metrics::counter!("rserpool_tcp_sessions_total", "pool" => pool.clone()).increment(1);
    metrics::gauge!("rserpool_tcp_sessions_active", "pool" => pool.clone()).increment(1.0);
    let (client_reader, client_writer) = client.into_split();
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<WriteFailed>();
    let (pe_failed_tx, mut pe_failed_rx) = mpsc::unbounded_channel::<WriteFailed>();
    let client_sink = Sink::spawn(client_writer, failed_tx);
    let mut client_reader = Some(client_reader);
    let mut pe_reader: Option<OwnedReadHalf> = None;
    let mut pe_sink: Option<Sink> = None;
    let mut session = Session::new(config.pool_handle, config.session, now());
    let mut resolving: Option<Pending<'_, Result<Vec<PoolElement>, DirectoryError>>> = None;
    let mut connecting: Option<Pending<'static, Option<TcpStream>>> = None;
    let mut client_buffer = vec![0u8; 16 * 1024];
    let mut pe_buffer = vec![0u8; 16 * 1024];
    let high = config.buffer;
    let mut failed = false;

    loop {
        // Carry out what the session asks.
        while let Some(output) = session.poll() {
            match output {
                SessionOutput::Resolve(handle) => {
                    resolving = Some(Box::pin(directory.resolve(handle)))
                }
                SessionOutput::Connect(pe) => {
                    pe_reader = None;
                    pe_sink = None;
                    let timeout = config.session.connect_timeout;
                    connecting = Some(Box::pin(async move { connect(&pe, timeout).await }));
                }
                SessionOutput::SendToPe(bytes) => {
                    if let Some(sink) = &pe_sink {
                        sink.send(bytes);
                    }
                }
                SessionOutput::ClosePe => {
                    pe_reader = None;
                    pe_sink = None;
                    connecting = None;
                }
                SessionOutput::ShutdownPe => {
                    if let Some(sink) = &pe_sink {
                        sink.shutdown();
                    }
                }
                SessionOutput::ReportUnreachable(pe_id) => {
                    directory
                        .report_unreachable(config.pool_handle, pe_id)
                        .await;
                }
                SessionOutput::SendToClient(bytes) => client_sink.send(bytes),
                SessionOutput::ShutdownClient => client_sink.shutdown(),
                SessionOutput::CloseClient { failed: f } => failed = f,
                SessionOutput::Event(event) => record(&pool, peer, &event),
            }
        }
        if session.is_closed() {
            break;
        }
        let deadline = session.next_timeout();
        let read_client = client_reader.is_some()
            && session.unsent() < high as u64
            && pe_sink.as_ref().is_none_or(|s| s.queued() < high);
        let read_pe = pe_reader.is_some() && client_sink.queued() < high;
        tokio::select! {
            () = shutdown.cancelled() => {
                session.client_closed();
            }
            result = read_some(&mut client_reader, &mut client_buffer), if read_client => match result {
                Ok(0) => {
                    client_reader = None;
                    session.client_eof(now());
                }
                Ok(count) => session.client_data(client_buffer.get(..count).unwrap_or_default(), now()),
                Err(_) => session.client_closed(),
            },
            result = read_some(&mut pe_reader, &mut pe_buffer), if read_pe => match result {
                Ok(0) => {
                    pe_reader = None;
                    session.pe_eof(now());
                }
                Ok(count) => session.pe_data(pe_buffer.get(..count).unwrap_or_default(), now()),
                Err(_) => session.pe_failed(PeFailure::Reset, now()),
            },
            answer = async { resolving.as_mut().expect("guarded").await }, if resolving.is_some() => {
                resolving = None;
                session.resolved(answer.unwrap_or_default(), now());
            }
            stream = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match stream {
                    Some(stream) => {
                        let (reader, writer) = stream.into_split();
                        pe_reader = Some(reader);
                        pe_sink = Some(Sink::spawn(writer, pe_failed_tx.clone()));
                        session.pe_connected(now());
                    }
                    None => session.pe_failed(PeFailure::Connect, now()),
                }
            }
            Some(WriteFailed) = pe_failed_rx.recv() => session.pe_failed(PeFailure::Reset, now()),
            Some(WriteFailed) = failed_rx.recv() => session.client_closed(),
            () = async { client_sink.drained.notified().await }, if !read_pe && pe_reader.is_some() => {}
            () = async {
                match &pe_sink {
                    Some(sink) => sink.drained.notified().await,
                    None => std::future::pending().await,
                }
            }, if !read_client && client_reader.is_some() => {}
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            } => session.timeout(now()),
        }
    }
    metrics::gauge!("rserpool_tcp_sessions_active", "pool" => pool.clone()).decrement(1.0);
    if failed {
        // The stream ends here instead of going on with a gap: what the client got is
        // exactly what the PEs produced, and the close tells it the rest is not coming.
        metrics::counter!("rserpool_tcp_sessions_failed_total", "pool" => pool).increment(1);
        client_sink.shutdown();
    } else {
        // Let queued output reach the client, then close.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while client_sink.queued() > 0 && tokio::time::Instant::now() < deadline {
            let _ =
                tokio::time::timeout(Duration::from_millis(100), client_sink.drained.notified())
                    .await;
        }
        client_sink.shutdown();
    }
}

fn record(pool: &str, peer: SocketAddr, event: &SessionEvent) {
    match event {
        SessionEvent::Started { pe } => tracing::debug!(%peer, pool, pe = %pe, "session started"),
        SessionEvent::FailedOver {
            from,
            to,
            failure,
            with_cookie,
            stall,
        } => {
            metrics::counter!("rserpool_tcp_failovers_total", "pool" => pool.to_owned(), "cookie" => with_cookie.to_string())
                .increment(1);
            metrics::histogram!("rserpool_tcp_failover_stall_seconds", "pool" => pool.to_owned())
                .record(stall.as_secs_f64());
            tracing::info!(%peer, pool, from = %from, to = %to, ?failure, with_cookie, stall_ms = stall.as_millis(), "session failed over");
        }
        SessionEvent::Unrecoverable { failure, reason } => {
            tracing::warn!(%peer, pool, ?failure, reason, "session closed: it could not fail over");
        }
    }
}
