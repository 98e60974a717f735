//! Process signals: SIGTERM and SIGINT ask for a graceful stop, SIGHUP for a
//! configuration reload, and (to the gateway only) SIGUSR2 for a binary upgrade.

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
    /// SIGUSR2, for the roles that upgrade in place (others keep its default action).
    upgrade: Option<Signal>,
}

impl Signals {
    pub(crate) fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            upgrade: None,
        })
    }

    /// [`Signals::install`] and SIGUSR2 as [`Request::Upgrade`].
    pub(crate) fn install_with_upgrade() -> std::io::Result<Self> {
        Ok(Self {
            upgrade: Some(signal(SignalKind::user_defined2())?),
            ..Self::install()?
        })
    }

    /// The next request.
    pub(crate) async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.terminate.recv() => Request::Stop,
            _ = self.interrupt.recv() => Request::Stop,
            _ = self.hangup.recv() => Request::Reload,
            Some(()) = async {
                match &mut self.upgrade {
                    Some(upgrade) => upgrade.recv().await,
                    None => std::future::pending().await,
                }
            } => Request::Upgrade,
        }
    }
}
