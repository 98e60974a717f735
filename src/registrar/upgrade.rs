//! The registrar's binary upgrade (SIGUSR2; the exchange is `crate::upgrade`'s): the
//! new process gets the ASAP, ENRP and admin listening sockets (no association is
//! refused while both run) and the handlespace (`RegistrarEngine::carry_handlespace`),
//! and goes on under the same registrar ID, answering handle resolutions from the
//! first moment. The old process holds its engine from the moment it writes the
//! record (nothing it handles afterwards could reach the new process), and once the
//! new one serves it closes its associations and exits: PEs re-register at the new
//! process (RFC 5352 §3.1: their association failed), pool users resolve again, and
//! peers, whose ENRP associations dropped, find the same registrar ID answering before
//! `max_time_no_response`, so no takeover starts (RFC 5353 §3.6). Associations are
//! not handed over: under TLS (the default) their keys live in the old process's
//! rustls state, and over SCTP in its kernel socket.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Instant;

use rserpool_proto::registrar::{RegistrarConfig, RegistrarEngine};

use crate::driver::{Handle, Held};
use crate::transport::{AcceptPause, Paused};
use crate::upgrade::{self, Inherited};

/// How long associations accepted just before an upgrade have to send their requests.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Duplicates of the listening sockets, by key (the ASAP and ENRP listeners' name,
/// transport and addresses; `admin`), kept for the next upgrade (the listeners' own
/// sockets live in their accept loops).
#[derive(Default)]
pub(super) struct Sockets(Vec<(String, OwnedFd)>);

impl Sockets {
    pub(super) fn keep(&mut self, key: String, socket: std::io::Result<OwnedFd>) {
        match socket {
            Ok(socket) => self.0.push((key, socket)),
            Err(error) => {
                tracing::warn!(key, %error, "cannot keep a copy of a listening socket: a binary upgrade would not hand it over");
            }
        }
    }

    fn duplicates(&self) -> std::io::Result<upgrade::Sockets> {
        self.0
            .iter()
            .map(|(key, socket)| Ok((key.clone(), vec![socket.try_clone()?])))
            .collect()
    }
}

/// The engine: the old process's handlespace under its registrar ID when this process
/// was started by an upgrade, else an empty one.
pub(super) fn engine(
    settings: RegistrarConfig,
    inherited: Option<&mut Inherited>,
    seed: u64,
    now: Instant,
) -> RegistrarEngine {
    let Some(record) = inherited.and_then(Inherited::take_state) else {
        return RegistrarEngine::new(settings, seed, now);
    };
    match RegistrarEngine::adopt(settings.clone(), seed, &record, now) {
        Ok((engine, adopted)) => {
            tracing::info!(
                id = %engine.id(),
                pool_elements = adopted.pool_elements,
                refused = adopted.refused,
                "upgrade: the old process's handlespace taken"
            );
            engine
        }
        Err(error) => {
            tracing::warn!(%error, "upgrade: the old process's handlespace refused; starting empty (PEs re-register)");
            RegistrarEngine::new(settings, seed, now)
        }
    }
}

/// This process once its successor serves: accepting nothing and handling nothing
/// (the caller stops the driver before dropping this).
pub(super) struct Departing {
    _held: Held,
    _paused: Paused,
}

/// What an upgrade hands over, and how this process stops accepting meanwhile.
pub(super) struct Upgrade {
    pub(super) sockets: Sockets,
    pub(super) pause: AcceptPause,
    /// The ASAP and ENRP addresses, for the log.
    pub(super) addresses: (SocketAddr, SocketAddr),
}

impl Upgrade {
    /// SIGUSR2: starts the new process with the listening sockets and the
    /// handlespace. When it serves, returns this process departing (the caller stops
    /// the driver before dropping it, so nothing more is handled here); otherwise
    /// this process goes on serving and says why.
    pub(super) async fn run(&self, handle: &Handle<RegistrarEngine>) -> Option<Departing> {
        let sockets = match self.sockets.duplicates() {
            Ok(sockets) => sockets,
            Err(error) => {
                tracing::error!(%error, "upgrade: cannot duplicate the listening sockets; this process keeps serving");
                return None;
            }
        };
        // Associations arriving from here on wait in the backlog for the new process;
        // those that came just before get `SETTLE` to ask and be answered here (closed
        // right after they came up, a pool user would count a failed hunt round, and a
        // one-shot one gives up).
        let paused = self.pause.pause();
        tokio::time::sleep(SETTLE).await;
        let (record, held) = handle
            .hold(|engine, now| engine.carry_handlespace(now))
            .await?;
        let (asap, enrp) = self.addresses;
        tracing::info!(%asap, %enrp, bytes = record.len(), "upgrade: starting the new process (this one handles nothing meanwhile)");
        match upgrade::hand_over(sockets, record).await {
            Ok(successor) => {
                tracing::info!(
                    pid = successor.pid,
                    "upgrade: the new process serves; this one closes its associations and exits"
                );
                Some(Departing {
                    _held: held,
                    _paused: paused,
                })
            }
            Err(error) => {
                tracing::error!(%error, "upgrade failed: this process keeps serving");
                None
            }
        }
    }
}
