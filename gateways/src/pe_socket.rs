//! Options of every TCP connection the gateways open to a PE.
//!
//! A PE whose host dies or whose network black-holes packets leaves a connection that
//! the kernel keeps for its retransmission timeout (about 15 minutes), and an idle
//! pooled connection to it looks alive until it is used. So:
//! * TCP keep-alive after 10 s idle, probing every 2 s, 3 probes: a dead idle
//!   connection is found within about 16 s;
//! * `TCP_USER_TIMEOUT` 10 s (Linux): data left unacknowledged for 10 s closes the
//!   connection (a PE that merely reads slowly still acknowledges; a frozen process's
//!   kernel too, which is what the gateways' own timeouts are for);
//! * no Nagle delay: requests and control frames are small and answered at once.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Idle time before the first keep-alive probe.
pub const KEEPALIVE_TIME: Duration = Duration::from_secs(10);
/// Between probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered probes before the connection is dropped.
pub const KEEPALIVE_RETRIES: u32 = 3;
/// Unacknowledged data older than this closes the connection.
pub const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Sets the options on a new PE connection (failures leave the defaults: none of
/// them is needed for correctness).
pub(crate) fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let socket = SockRef::from(stream);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let keepalive = keepalive.with_retries(KEEPALIVE_RETRIES);
    let _ = socket.set_tcp_keepalive(&keepalive);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket.set_tcp_user_timeout(Some(USER_TIMEOUT));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pe_connections_get_keepalive_and_a_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune(&stream);
        let socket = SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_TIME);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
        assert!(stream.nodelay().unwrap());
    }
}
