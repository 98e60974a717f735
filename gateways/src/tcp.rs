//! The TCP gateway: a legacy client connects with plain TCP; the gateway opens a
//! connection to a pool element of the listener's pool and relays, and when that PE
//! fails it moves the session to another PE as the session layer decides
//! (`rserpool_proto::session`): transparently when nothing was answered yet, with
//! cookie echo and replay for PEs with a control channel, else by closing the client.
//!
//! One task per session drives both sockets. Each side has an outgoing queue with a
//! byte budget: the gateway reads from one side only while the other side's queue is
//! below it (back-pressure end to end), so memory per session is bounded and a bulk
//! transfer in both directions cannot deadlock. Half-close is passed on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::handover::Handover;
use crate::health::PoolHealth;
use crate::{Directory, Lifecycle, SctpConnector};

mod arrival;
mod config;
mod events;
mod framing;
mod handover;
mod open_sessions;
mod session;
mod side;

pub use config::{ListenerConfig, SctpUpstream};
pub use framing::{Framing, FramingError};

use arrival::run_arrived;
use events::Meters;
use open_sessions::OpenSessions;
use session::{Listener, run_session};

/// Accepts clients until `lifecycle.stop_accepting`; each gets a session task, as
/// does each session `handover` brings from the previous process (a binary upgrade;
/// sessions leave through it too). Returns the listening socket then, so that a
/// listener with new settings can go on with it (clients that connect meanwhile wait
/// in its backlog).
pub async fn serve<D: Directory + SctpConnector>(
    socket: TcpListener,
    config: ListenerConfig,
    directory: Arc<D>,
    (lifecycle, handover): (Lifecycle, Handover),
) -> TcpListener {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let pool = config.pool_handle.to_string();
    let refused =
        metrics::counter!("rserpool_tcp_connections_refused_total", "pool" => pool.clone());
    let listener = Arc::new(Listener {
        meters: Meters::new(&pool),
        pool,
        health: Mutex::new(PoolHealth::new(
            config.outliers,
            config.slow_start,
            crate::random_u64(),
        )),
        ejections: lifecycle.ejections.clone(),
        open_sessions: config.least_sessions.then(OpenSessions::default),
        config,
        directory,
        handover,
    });
    let mut arrivals = listener.handover.arrived();
    loop {
        let accepted = tokio::select! {
            () = lifecycle.stop_accepting.cancelled() => return socket,
            accepted = socket.accept() => accepted,
            Some(handed) = crate::handover::next_arrival(arrivals.as_mut()) => {
                // Over the limit or not: refusing would cut a session that is running.
                let permit = slots.clone().try_acquire_owned().ok();
                let (listener, close) = (listener.clone(), lifecycle.close_sessions.clone());
                let table = lifecycle.table.clone();
                lifecycle.sessions.spawn(async move {
                    run_arrived(handed, &listener, close, &table).await;
                    drop(permit);
                });
                continue;
            }
        };
        let Ok((client, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused.increment(1);
            tracing::warn!(%peer, limit = listener.config.max_connections, "connection limit reached: closing a client");
            continue;
        };
        let _ = client.set_nodelay(true);
        let listener = listener.clone();
        let close = lifecycle.close_sessions.clone();
        let entry = lifecycle
            .table
            .open(listener.config.listen, listener.config.pool_handle, peer);
        lifecycle.sessions.spawn(async move {
            run_session(client, peer, &listener, close, &entry).await;
            drop(permit);
        });
    }
}
