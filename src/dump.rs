//! `rserpool dump`: a registrar's whole handlespace, fetched over ENRP with
//! HANDLE_TABLE_REQUEST (W = 0) and paged with the M flag (RFC 5353 §3.2.3), as rsplib's
//! hsdump does.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rserpool_proto::policy::spec;
use rserpool_proto::wire::{
    EnrpBody, EnrpMessage, PoolEntries, Protocol, RegistrarId, StreamDeframer,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::RunError;
use crate::cli::{DumpArgs, TransportArg};
use crate::config;
use crate::transport::sctp;
use crate::transport::sctp_tls::SctpStream;
use crate::transport::tls::ControlTls;

/// The handlespace as one registrar sees it.
struct Table {
    registrar: RegistrarId,
    pools: Vec<PoolEntries>,
}

/// The most response pages read (65 536 PEs at 128 per page: far beyond real tables
/// with rsplib's page size, and a bound on what a broken peer can make us read).
const MAX_PAGES: usize = 4096;

/// A plain or TLS byte stream.
trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

/// An ENRP association to the registrar: a byte stream (TCP, TLS over TCP or over
/// SCTP) or plain SCTP messages.
enum Association {
    Stream {
        stream: Box<dyn ByteStream>,
        deframer: StreamDeframer,
    },
    Sctp(sctp::Association),
}

impl Association {
    async fn open(
        transport: TransportArg,
        registrar: SocketAddr,
        tls: Option<&ControlTls>,
    ) -> Result<Self, String> {
        let failed = |e: &dyn std::fmt::Display| format!("cannot connect to {registrar}: {e}");
        let Some(tls) = tls else {
            return match transport {
                TransportArg::Tcp => TcpStream::connect(registrar)
                    .await
                    .map(|stream| Self::stream(Box::new(stream))),
                TransportArg::Sctp => sctp::Association::connect(&[registrar], &[])
                    .await
                    .map(Self::Sctp),
            }
            .map_err(|e| failed(&e));
        };
        // With TLS, ENRP runs inside the session: over TCP, or over the association
        // (RFC 3436); only a registrar's table is worth printing (T7).
        let (stream, peer): (Box<dyn ByteStream>, _) = match transport {
            TransportArg::Tcp => {
                let stream = TcpStream::connect(registrar)
                    .await
                    .map_err(|e| failed(&e))?;
                let (stream, peer) = tls
                    .handshake_as_client(stream, registrar.ip())
                    .await
                    .map_err(|e| failed(&e))?;
                (Box::new(stream), peer)
            }
            TransportArg::Sctp => {
                let association = sctp::Association::connect(&[registrar], &[])
                    .await
                    .map_err(|e| failed(&e))?;
                let stream = SctpStream::new(association.into(), Protocol::Enrp.ppid());
                let (stream, peer) = tls
                    .handshake_as_client(stream, registrar.ip())
                    .await
                    .map_err(|e| failed(&e))?;
                (Box::new(stream), peer)
            }
        };
        tls.access()
            .is_registrar(&peer, None)
            .map_err(|e| failed(&e))?;
        Ok(Self::stream(stream))
    }

    fn stream(stream: Box<dyn ByteStream>) -> Self {
        Self::Stream {
            stream,
            deframer: StreamDeframer::new(),
        }
    }

    async fn send(&mut self, message: &[u8]) -> Result<(), String> {
        match self {
            Self::Stream { stream, .. } => match stream.write_all(message).await {
                Ok(()) => stream.flush().await,
                Err(error) => Err(error),
            },
            Self::Sctp(association) => association.send(Protocol::Enrp.ppid(), message).await,
        }
        .map_err(|e| e.to_string())
    }

    /// The next ENRP message; `Ok(None)` when the registrar closed the association.
    async fn receive(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self {
            Self::Stream { stream, deframer } => {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    if let Some(frame) = deframer.next_frame().map_err(|e| e.to_string())? {
                        return Ok(Some(frame));
                    }
                    let count = stream.read(&mut buffer).await.map_err(|e| e.to_string())?;
                    if count == 0 {
                        return Ok(None);
                    }
                    deframer
                        .push(buffer.get(..count).unwrap_or_default())
                        .map_err(|e| e.to_string())?;
                }
            }
            Self::Sctp(association) => loop {
                match association.receive(sctp::MAX_MESSAGE).await {
                    Ok(sctp::Received::Message { ppid, payload })
                        if ppid == Protocol::Enrp.ppid() =>
                    {
                        return Ok(Some(payload));
                    }
                    Ok(sctp::Received::Message { .. }) => {}
                    Ok(sctp::Received::Closed(_)) => return Ok(None),
                    Err(error) => return Err(error.to_string()),
                }
            },
        }
    }
}

async fn fetch(
    transport: TransportArg,
    registrar: SocketAddr,
    own_id: RegistrarId,
    tls: Option<&ControlTls>,
) -> Result<Table, String> {
    let mut association = Association::open(transport, registrar, tls).await?;
    let request = EnrpMessage {
        sender: own_id,
        receiver: RegistrarId::UNKNOWN,
        body: EnrpBody::HandleTableRequest {
            own_children_only: false,
        },
    }
    .encode()
    .map_err(|e| e.to_string())?;
    let mut table = Table {
        registrar: RegistrarId::UNKNOWN,
        pools: Vec::new(),
    };
    for _ in 0..MAX_PAGES {
        association.send(&request).await?;
        let Some(frame) = association.receive().await? else {
            return Err(format!("{registrar} closed the connection"));
        };
        let message = EnrpMessage::decode(&frame)
            .map_err(|e| format!("malformed answer from {registrar}: {e}"))?
            .message;
        let EnrpBody::HandleTableResponse {
            reject,
            more,
            pools,
        } = message.body
        else {
            return Err(format!("{registrar} answered with {}", message.body.name()));
        };
        if reject {
            return Err(format!("{registrar} refused the handle table request"));
        }
        table.registrar = message.sender;
        for entries in pools {
            match table.pools.last_mut() {
                Some(last) if last.pool_handle == entries.pool_handle => {
                    last.pool_elements.extend(entries.pool_elements);
                }
                _ => table.pools.push(entries),
            }
        }
        if !more {
            return Ok(table);
        }
    }
    Err(format!("{registrar} sent more than {MAX_PAGES} pages"))
}

pub(crate) async fn run(args: DumpArgs) -> Result<String, RunError> {
    let timeout = config::parse_duration(&args.timeout).map_err(RunError::Usage)?;
    let mut tls_section = None;
    crate::apply_tls_args(&mut tls_section, &args.tls)?;
    let tls = crate::control_tls(tls_section.as_ref(), args.transport.into())?;
    let registrar = match &args.registrar {
        Some(registrar) => registrar.resolve().await.map_err(RunError::Usage)?,
        None => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), config::enrp_port(tls.is_some())),
    };
    // A registrar's certificate speaks for its own ID only; anything else (an
    // observer's) may use any.
    let own_id = tls
        .as_ref()
        .and_then(|tls| tls.identity().registrar)
        .unwrap_or(RegistrarId(crate::seed() as u32 | 1));
    let fetching = fetch(args.transport, registrar, own_id, tls.as_deref());
    let table = tokio::time::timeout(timeout, fetching)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer from {registrar} within {timeout:?}: is it a registrar's ENRP address (port 9901, 9902 with TLS)? Its ASAP address does not answer dump"
            ))
        })
        .map_err(RunError::Unavailable)?;
    Ok(if args.json {
        json(&table)
    } else {
        text(&table, registrar)
    })
}

fn text(table: &Table, address: SocketAddr) -> String {
    let count: usize = table.pools.iter().map(|p| p.pool_elements.len()).sum();
    let mut out = format!(
        "registrar {} at {address}: {} pool(s), {count} pool element(s)\n",
        table.registrar,
        table.pools.len()
    );
    for pool in &table.pools {
        let _ = writeln!(
            out,
            "pool {} ({} PE)",
            pool.pool_handle,
            pool.pool_elements.len()
        );
        for pe in &pool.pool_elements {
            let asap = pe
                .asap_transport
                .as_ref()
                .and_then(|t| {
                    t.addresses
                        .first()
                        .map(|a| format!("  asap {}:{}", a, t.port))
                })
                .unwrap_or_default();
            let life = Duration::from_millis(u64::from(pe.registration_life_ms));
            let _ = writeln!(
                out,
                "  {}  life {life:?}{asap}",
                crate::resolve::pool_element_line(pe)
            );
        }
    }
    out
}

fn json(table: &Table) -> String {
    let pools: Vec<serde_json::Value> = table
        .pools
        .iter()
        .map(|pool| {
            serde_json::json!({
                "pool_handle": pool.pool_handle.to_string(),
                "policy": pool.pool_elements.first().map(|pe| spec::format(&pe.policy)),
                "pool_elements": pool.pool_elements,
            })
        })
        .collect();
    format!(
        "{}\n",
        serde_json::json!({ "registrar": table.registrar, "pools": pools })
    )
}
