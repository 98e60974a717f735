//! DNS over UDP: our own receive loop rather than hickory's, because hickory's drops
//! the queries it is still answering when its server stops. A listener that stops
//! (a binary upgrade's old process, a SIGHUP that rebinds it) reads no more, and
//! answers what it has read within `FINISH_TIMEOUT`; on a socket an upgrade shares,
//! the next process reads the rest, so no query is lost. Queries in progress are
//! bounded; one beyond the bound, or one that does not parse, is dropped and counted (the client retries, as DNS
//! clients do over UDP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::MessageType;
use hickory_server::server::{Request, RequestHandler};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::tcp::Answer;

/// Queries answered at once at most.
const MAX_IN_PROGRESS: usize = 4096;
/// How long a stopping listener may take to answer what it has read.
const FINISH_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest query taken (EDNS payloads beyond are not offered by clients).
const MAX_QUERY: usize = 4096;

/// Answers queries on `socket` until `shutdown`, then those already read.
pub(super) async fn serve<H: RequestHandler>(
    socket: UdpSocket,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let socket = Arc::new(socket);
    let busy = metrics::counter!("rserpool_dns_udp_queries_dropped_total", "reason" => "busy");
    let mut queries = tokio::task::JoinSet::new();
    let mut buffer = vec![0u8; MAX_QUERY];
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buffer) => received,
        };
        let (length, client) = match received {
            Ok(received) => received,
            // An ICMP error of an earlier answer: nothing to do with the next query.
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, "DNS over UDP: receiving");
                // Out of memory or the like: do not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        while queries.try_join_next().is_some() {}
        if queries.len() >= MAX_IN_PROGRESS || client.port() == 0 {
            busy.increment(1);
            continue;
        }
        let query = buffer.get(..length).unwrap_or_default().to_vec();
        let (socket, handler) = (socket.clone(), handler.clone());
        queries.spawn(async move { answer(&socket, &*handler, query, client).await });
    }
    let finish = async { while queries.join_next().await.is_some() {} };
    if tokio::time::timeout(FINISH_TIMEOUT, finish).await.is_err() {
        tracing::warn!(
            left = queries.len(),
            "DNS over UDP: queries still unanswered when the listener stopped"
        );
    }
}

async fn answer<H: RequestHandler>(
    socket: &UdpSocket,
    handler: &H,
    query: Vec<u8>,
    client: SocketAddr,
) {
    let formerr = format_error(&query);
    let request = match Request::from_bytes(query, client, Protocol::Udp) {
        // A response sent to us is dropped: answering it would reflect traffic to
        // whoever its source address names.
        Ok(request) if request.metadata.message_type == MessageType::Response => {
            dropped("response");
            return;
        }
        Ok(request) => request,
        Err(_) => {
            dropped("malformed");
            tracing::debug!(%client, "malformed DNS query over UDP: FORMERR (or dropped without a header)");
            if let Some(formerr) = formerr {
                let _ = socket.send_to(&formerr, client).await;
            }
            return;
        }
    };
    let answer = Answer::new(Protocol::Udp);
    handler
        .handle_request::<_, TokioTime>(&request, answer.clone())
        .await;
    if let Some(response) = answer.take() {
        let _ = socket.send_to(&response, client).await;
    }
}

fn dropped(reason: &'static str) {
    metrics::counter!("rserpool_dns_udp_queries_dropped_total", "reason" => reason).increment(1);
}

/// FORMERR for a query that does not parse, as hickory's server answers one (RFC 1035
/// §4.1.1): its ID, opcode and RD echoed, no sections; nothing for a message without a
/// whole header, or one that is itself a response.
fn format_error(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.first_chunk::<12>()?;
    let [id_high, id_low, flags, ..] = *header;
    if flags & 0x80 != 0 {
        return None;
    }
    let mut response = vec![id_high, id_low, 0x80 | (flags & 0x79), 1];
    response.resize(12, 0);
    Some(response)
}
