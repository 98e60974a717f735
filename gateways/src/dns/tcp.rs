//! DNS over TCP (RFC 7766) and over TLS (RFC 7858) with a connection cap: hickory's
//! stream listeners spawn a task for every connection they accept, so clients that open
//! connections and send nothing held file descriptors until the whole process (HTTP
//! listeners included) ran out. Each listener here holds at most `max_connections` (more
//! are closed at once, counted); a TLS handshake, and every next query, must come within
//! `idle_timeout`. Queries are answered by the same handler as UDP, one at a time per
//! connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Bounds of the TCP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// A connection must bring its next query (whole) within this.
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// A stream listener: plain TCP, or TLS with its acceptor.
pub(super) enum Stream {
    Tcp(TcpListener),
    Tls(TcpListener, TlsAcceptor),
}

/// Accepts and serves connections until `shutdown`.
pub(super) async fn serve<H: RequestHandler>(
    stream: Stream,
    handler: Arc<H>,
    limits: TcpLimits,
    shutdown: CancellationToken,
) {
    let (listener, tls, transport) = match stream {
        Stream::Tcp(listener) => (listener, None, "tcp"),
        Stream::Tls(listener, acceptor) => (listener, Some(acceptor), "tls"),
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refused =
        metrics::counter!("rserpool_dns_tcp_connections_refused_total", "transport" => transport);
    let closed_idle = metrics::counter!("rserpool_dns_tcp_connections_closed_total", "transport" => transport, "reason" => "idle");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, client)) = accepted else {
            // Out of descriptors or the like: do not spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.increment(1);
            continue;
        };
        let handler = handler.clone();
        let closed_idle = closed_idle.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let idle = limits.idle_timeout;
            match tls {
                None => {
                    connection(stream, client, Protocol::Tcp, &*handler, idle, &closed_idle).await;
                }
                Some(acceptor) => match tokio::time::timeout(idle, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        connection(stream, client, Protocol::Tls, &*handler, idle, &closed_idle)
                            .await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%client, %error, "DNS over TLS handshake failed");
                    }
                    Err(_) => closed_idle.increment(1),
                },
            }
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

/// Answers the queries of one connection in turn.
async fn connection<H: RequestHandler>(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    client: SocketAddr,
    protocol: Protocol,
    handler: &H,
    idle_timeout: Duration,
    closed_idle: &Counter,
) {
    loop {
        let query = tokio::time::timeout(idle_timeout, read_message(&mut stream)).await;
        let bytes = match query {
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Ok(None) | Err(_)) => return,
            Err(_) => {
                closed_idle.increment(1);
                return;
            }
        };
        let Ok(request) = Request::from_bytes(bytes, client, protocol) else {
            tracing::debug!(%client, "malformed DNS query over a stream: closing");
            return;
        };
        let answer = Answer::new(protocol);
        handler
            .handle_request::<_, TokioTime>(&request, answer.clone())
            .await;
        let Some(response) = answer.take() else {
            return;
        };
        let Ok(length) = u16::try_from(response.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&response);
        let written = tokio::time::timeout(idle_timeout, stream.write_all(&framed)).await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
}

/// One length-prefixed message; None at a clean end of the stream.
async fn read_message(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 2];
    match stream.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// Where the handler puts its response, encoded for `protocol` (over UDP cut to the
/// size the query allows, with TC set), for the caller to send.
#[derive(Clone)]
pub(super) struct Answer {
    protocol: Protocol,
    bytes: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Answer {
    pub(super) fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            bytes: Arc::default(),
        }
    }

    pub(super) fn take(&self) -> Option<Vec<u8>> {
        self.bytes.lock().ok().and_then(|mut answer| answer.take())
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Answer {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // As hickory's own UDP handle: the size the query offers (512 without EDNS,
        // RFC 1035 §4.2.1), records beyond it left out with TC set; a response that
        // cannot be written at all becomes SERVFAIL.
        let max_size = match self.protocol {
            Protocol::Udp => response.edns().map_or(512, Edns::max_payload),
            _ => u16::MAX,
        };
        let id = response.metadata().id;
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max_size);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "DNS response not encoded: SERVFAIL");
                bytes.clear();
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                header.emit(&mut BinEncoder::new(&mut bytes))?;
                ResponseInfo::from(header)
            }
        };
        if let Ok(mut answer) = self.bytes.lock() {
            *answer = Some(bytes);
        }
        Ok(info)
    }
}
