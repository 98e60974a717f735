//! `rserpool dump`: a registrar's whole handlespace, fetched over ENRP with
//! HANDLE_TABLE_REQUEST (W = 0) and paged with the M flag (enrp.md §5.5), as rsplib's
//! hsdump does.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use rserpool_proto::policy::spec;
use rserpool_proto::wire::{EnrpBody, EnrpMessage, PoolEntries, RegistrarId, StreamDeframer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::RunError;
use crate::cli::DumpArgs;
use crate::config;

/// The handlespace as one registrar sees it.
struct Table {
    registrar: RegistrarId,
    pools: Vec<PoolEntries>,
}

/// The most response pages read (65 536 PEs at 128 per page: far beyond real tables
/// with rsplib's page size, and a bound on what a broken peer can make us read).
const MAX_PAGES: usize = 4096;

async fn fetch(registrar: SocketAddr, own_id: RegistrarId) -> Result<Table, String> {
    let mut stream = TcpStream::connect(registrar)
        .await
        .map_err(|e| format!("cannot connect to {registrar}: {e}"))?;
    let request = EnrpMessage {
        sender: own_id,
        receiver: RegistrarId::UNKNOWN,
        body: EnrpBody::HandleTableRequest {
            own_children_only: false,
        },
    }
    .encode()
    .map_err(|e| e.to_string())?;
    let mut deframer = StreamDeframer::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut table = Table {
        registrar: RegistrarId::UNKNOWN,
        pools: Vec::new(),
    };
    for _ in 0..MAX_PAGES {
        stream
            .write_all(&request)
            .await
            .map_err(|e| e.to_string())?;
        let frame = loop {
            if let Some(frame) = deframer.next_frame().map_err(|e| e.to_string())? {
                break frame;
            }
            let count = stream.read(&mut buffer).await.map_err(|e| e.to_string())?;
            if count == 0 {
                return Err(format!("{registrar} closed the connection"));
            }
            deframer
                .push(buffer.get(..count).unwrap_or_default())
                .map_err(|e| e.to_string())?;
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
    let own_id = RegistrarId(crate::seed() as u32 | 1);
    let table = tokio::time::timeout(timeout, fetch(args.registrar, own_id))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer from {} within {timeout:?}",
                args.registrar
            ))
        })
        .map_err(RunError::Unavailable)?;
    Ok(if args.json {
        json(&table)
    } else {
        text(&table, args.registrar)
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
