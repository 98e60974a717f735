//! Binding a gateway listener's sockets, or taking those an upgrade handed over: a
//! listener's checked settings become a listener ready to start.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rserpool_gateways::dns::DnsConfig;
use rserpool_gateways::http::HttpListenerConfig;
use rserpool_gateways::http::tls::CertificateResolver;
use rserpool_gateways::tcp::ListenerConfig;
use tokio::net::{TcpListener, UdpSocket};

use crate::RunError;
use crate::transport::tcp::listener_from;

/// A DNS listener to start: its address, settings, and DNS over TLS (address and
/// certificates) when configured.
pub(super) type DnsStart = (
    SocketAddr,
    DnsConfig,
    Option<(SocketAddr, Arc<CertificateResolver>)>,
);

/// A listener's checked settings.
pub(super) enum Checked {
    Tcp(ListenerConfig),
    Http(HttpListenerConfig),
    Dns(DnsStart),
}

/// A listener's checked settings with its bound sockets, ready to start.
pub(super) enum Prepared {
    Tcp(ListenerConfig, TcpListener),
    Http(HttpListenerConfig, TcpListener),
    Dns(DnsStart, DnsSockets),
}

/// UDP and TCP on one port, and DNS over TLS on its own.
pub(super) struct DnsSockets {
    pub(super) udp: UdpSocket,
    pub(super) tcp: TcpListener,
    pub(super) dot: Option<TcpListener>,
}

/// A listener's settings with its sockets: `socket` (a stopped listener's, handed
/// on), else bound at its configured address or at `at` (a listener bound again keeps
/// its port). DNS takes UDP and TCP on one port (a port 0 picks one for both), and DNS
/// over TLS on its own.
pub(super) async fn prepare(
    checked: Checked,
    socket: Option<TcpListener>,
    at: Option<SocketAddr>,
) -> Result<Prepared, RunError> {
    let stream = |listen: SocketAddr| async move {
        match socket {
            Some(socket) => Ok(socket),
            None => bind_stream(at.unwrap_or(listen)).await,
        }
    };
    match checked {
        Checked::Tcp(config) => {
            let socket = stream(config.listen).await?;
            Ok(Prepared::Tcp(config, socket))
        }
        Checked::Http(config) => {
            let socket = stream(config.listen).await?;
            Ok(Prepared::Http(config, socket))
        }
        Checked::Dns(start) => {
            let (udp, tcp) = bind_dns(at.unwrap_or(start.0)).await?;
            let dot = match &start.2 {
                Some((dot_listen, _)) => Some(bind_stream(*dot_listen).await?),
                None => None,
            };
            Ok(Prepared::Dns(start, DnsSockets { udp, tcp, dot }))
        }
    }
}

impl Prepared {
    /// Duplicates of its listening sockets (a socket that cannot be duplicated is
    /// left out: an upgrade then binds that listener anew).
    pub(super) fn duplicates(&self) -> Vec<OwnedFd> {
        let sockets: Vec<std::os::fd::BorrowedFd<'_>> = match self {
            Self::Tcp(_, socket) | Self::Http(_, socket) => vec![socket.as_fd()],
            Self::Dns(_, dns) => [
                Some(dns.udp.as_fd()),
                Some(dns.tcp.as_fd()),
                dns.dot.as_ref().map(AsFd::as_fd),
            ]
            .into_iter()
            .flatten()
            .collect(),
        };
        sockets
            .into_iter()
            .filter_map(|fd| fd.try_clone_to_owned().ok())
            .collect()
    }
}

/// A listener's settings on the sockets an upgrade handed over for it (`name`).
pub(super) fn adopt(
    checked: Checked,
    sockets: Vec<OwnedFd>,
    name: &str,
) -> Result<Prepared, RunError> {
    let failed = |what: String| RunError::Failed(format!("upgrade: listener {name}: {what}"));
    let stream = |fd: OwnedFd| listener_from(fd).map_err(|e| failed(e.to_string()));
    let count = sockets.len();
    let mut sockets = sockets.into_iter();
    match (checked, sockets.next(), sockets.next(), sockets.next()) {
        (Checked::Tcp(config), Some(fd), None, None) => Ok(Prepared::Tcp(config, stream(fd)?)),
        (Checked::Http(config), Some(fd), None, None) => Ok(Prepared::Http(config, stream(fd)?)),
        (Checked::Dns(start), Some(udp), Some(tcp), dot) if dot.is_some() == start.2.is_some() => {
            let udp = std::net::UdpSocket::from(udp);
            udp.set_nonblocking(true)
                .map_err(|e| failed(e.to_string()))?;
            let udp = UdpSocket::from_std(udp).map_err(|e| failed(e.to_string()))?;
            let dot = dot.map(stream).transpose()?;
            Ok(Prepared::Dns(
                start,
                DnsSockets {
                    udp,
                    tcp: stream(tcp)?,
                    dot,
                },
            ))
        }
        _ => Err(failed(format!(
            "{count} sockets handed over do not fit its settings"
        ))),
    }
}

/// UDP and TCP on one port. With port 0 the UDP socket picks it, and when another
/// process holds that port for TCP, another one is picked (a few times).
pub(super) async fn bind_dns(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), RunError> {
    let mut attempts = 0;
    loop {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| RunError::Bind(listen, e))?;
        let address = udp.local_addr().map_err(|e| RunError::Bind(listen, e))?;
        match TcpListener::bind(address).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error)
                if listen.port() == 0
                    && error.kind() == std::io::ErrorKind::AddrInUse
                    && attempts < 10 =>
            {
                attempts += 1;
            }
            Err(error) => return Err(RunError::Bind(address, error)),
        }
    }
}

/// A TCP listener on `address`.
pub(super) async fn bind_stream(address: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(address)
        .await
        .map_err(|e| RunError::Bind(address, e))
}

/// Where a listening socket is bound (the real port for a 0).
pub(super) fn local_address(socket: &TcpListener, configured: SocketAddr) -> SocketAddr {
    socket.local_addr().unwrap_or(configured)
}
