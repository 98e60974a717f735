//! systemd service notifications (sd_notify(3)), without libsystemd: `READY=1` once a
//! role serves, `STOPPING=1` when it drains, and `WATCHDOG=1` every half of
//! `WATCHDOG_USEC` while the runtime runs. Outside systemd (`NOTIFY_SOCKET` unset)
//! nothing is sent.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sends one notification; errors are logged once, never fatal.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket name (Linux).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &address)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(error) = sent {
        tracing::warn!(%error, state, "systemd notification not sent");
    }
}

/// `READY=1`, and the watchdog keep-alive if systemd asked for one.
pub(crate) fn ready(shutdown: &CancellationToken) {
    notify("READY=1");
    let period = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|usec| usec.parse::<u64>().ok())
        .filter(|&usec| usec > 0)
        .map(|usec| Duration::from_micros(usec / 2));
    if let Some(period) = period {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => notify("WATCHDOG=1"),
                }
            }
        });
    }
}
