//! Process signals: SIGTERM and SIGINT ask for a graceful stop, SIGHUP for a
//! configuration reload, and SIGUSR2 for a binary upgrade (the gateway's and the
//! registrar's; the other roles log that they have none instead of ending, SIGUSR2's
//! default action).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Stop,
    Reload,
    Upgrade,
}

/// The signal streams of one process.
#[derive(Debug)]
pub(crate) struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    user2: Signal,
    /// Whether SIGUSR2 is a [`Request::Upgrade`] (else it is logged and ignored).
    upgrades: bool,
}

impl Signals {
    pub(crate) fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            user2: signal(SignalKind::user_defined2())?,
            upgrades: false,
        })
    }

    /// [`Signals::install`] with SIGUSR2 as [`Request::Upgrade`].
    pub(crate) fn install_with_upgrade() -> std::io::Result<Self> {
        Ok(Self {
            upgrades: true,
            ..Self::install()?
        })
    }

    /// The next request.
    pub(crate) async fn next(&mut self) -> Request {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => return Request::Stop,
                _ = self.interrupt.recv() => return Request::Stop,
                _ = self.hangup.recv() => return Request::Reload,
                _ = self.user2.recv() => {
                    if self.upgrades {
                        return Request::Upgrade;
                    }
                    tracing::warn!("SIGUSR2 ignored: only the gateway and the registrar upgrade in place; restart this role to upgrade it");
                }
            }
        }
    }
}
