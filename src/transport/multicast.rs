//! UDP multicast channels for ASAP_SERVER_ANNOUNCE (239.0.0.50:3863 by default) and
//! ENRP_PRESENCE (239.0.0.51:9901). A channel is bound to an explicit interface
//! address: multicast never leaves through an interface nobody chose (on a host whose
//! default route points elsewhere, an unpinned multicast send would go there).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use rserpool_proto::wire::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::carrier::{Heard, Incoming};

/// One joined multicast group.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    socket: Arc<UdpSocket>,
    group: SocketAddrV4,
}

impl Channel {
    /// Joins `group` on `interface` and starts delivering its datagrams as
    /// [`Incoming::Datagram`] events; the channel's `send` multicasts with `ttl`.
    pub(crate) fn open(
        protocol: Protocol,
        group: SocketAddrV4,
        interface: Ipv4Addr,
        ttl: u32,
        incoming: mpsc::Sender<Incoming>,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, group.port())).into())?;
        socket.join_multicast_v4(group.ip(), &interface)?;
        socket.set_multicast_if_v4(&interface)?;
        socket.set_multicast_ttl_v4(ttl)?;
        socket.set_multicast_loop_v4(true)?;
        socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(socket.into())?);
        let reader = socket.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            loop {
                let received = tokio::select! {
                    () = shutdown.cancelled() => return,
                    received = reader.recv_from(&mut buffer) => received,
                };
                let Ok((count, from)) = received else {
                    continue;
                };
                let payload = buffer.get(..count).unwrap_or_default().to_vec();
                let datagram = Incoming::Datagram(Heard {
                    from,
                    protocol,
                    payload,
                });
                if incoming.send(datagram).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self { socket, group })
    }

    /// Multicasts one datagram; failures are logged, not fatal.
    pub(crate) fn send(&self, payload: &[u8]) {
        if let Err(error) = self.socket.try_send_to(payload, SocketAddr::V4(self.group)) {
            tracing::debug!(%error, group = %self.group, "multicast send failed");
        }
    }
}
