//! Binding the gateway's TCP, HTTP and DNS listeners and starting their tasks. Each
//! start returns `ADDRESS=POOL` (or `=ZONE`) texts for the ready line; the admin view
//! learns the bound addresses (a port 0 in the configuration is the real one there).

use std::net::SocketAddr;
use std::sync::Arc;

use rserpool_gateways::Lifecycle;
use rserpool_gateways::dns::{self, DnsConfig};
use rserpool_gateways::http::tls::CertificateResolver;
use rserpool_gateways::http::{self, HttpListenerConfig};
use rserpool_gateways::tcp::{self, ListenerConfig};

use super::admin::Listeners;
use crate::RunError;
use crate::pool_user::PoolUser;

/// A DNS listener to start: its address, settings, and DNS over TLS (address and
/// certificates) when configured.
pub(super) type DnsStart = (
    SocketAddr,
    DnsConfig,
    Option<(SocketAddr, Arc<CertificateResolver>)>,
);

/// What every listener's task gets.
pub(super) struct Shared<'a> {
    pub(super) pool_user: &'a Arc<PoolUser>,
    pub(super) lifecycle: &'a Lifecycle,
    pub(super) view: &'a Listeners,
}

pub(super) async fn start_tcp(
    configs: Vec<ListenerConfig>,
    shared: &Shared<'_>,
) -> Result<Vec<String>, RunError> {
    let mut bound = Vec::new();
    for config in configs {
        let (listener, address) = bind(config.listen).await?;
        bound.push(format!("{address}={}", config.pool_handle));
        shared.view.tcp(address, config.pool_handle);
        let config = ListenerConfig {
            listen: address,
            ..config
        };
        tokio::spawn(tcp::serve(
            listener,
            config,
            shared.pool_user.clone(),
            shared.lifecycle.clone(),
        ));
    }
    Ok(bound)
}

/// Also returns each HTTP listener's routes by its configured address, for SIGHUP.
pub(super) async fn start_http(
    configs: Vec<HttpListenerConfig>,
    shared: &Shared<'_>,
) -> Result<(Vec<String>, Vec<(SocketAddr, http::Reloader)>), RunError> {
    let mut bound = Vec::new();
    let mut reloaders = Vec::new();
    for config in configs {
        let reloader = http::Reloader::new(&config, shared.lifecycle.ejections.clone());
        reloaders.push((config.listen, reloader.clone()));
        let (listener, address) = bind(config.listen).await?;
        let pools: Vec<String> = config
            .routes
            .iter()
            .map(|r| r.pool_handle.to_string())
            .collect();
        bound.push(format!("{address}={}", pools.join("+")));
        shared.view.http(address, &config);
        let config = HttpListenerConfig {
            listen: address,
            ..config
        };
        tokio::spawn(http::serve(
            listener,
            config,
            reloader,
            shared.pool_user.clone(),
            shared.lifecycle.clone(),
        ));
    }
    Ok((bound, reloaders))
}

/// UDP and TCP on one port (a port 0 in the configuration picks one for both), and
/// DNS over TLS on its own (named after it in the ready line).
pub(super) async fn start_dns(
    starts: Vec<DnsStart>,
    shared: &Shared<'_>,
) -> Result<Vec<String>, RunError> {
    let mut bound = Vec::new();
    for (listen, config, dot) in starts {
        let udp = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|e| RunError::Bind(listen, e))?;
        let address = udp.local_addr().map_err(|e| RunError::Bind(listen, e))?;
        let tcp = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| RunError::Bind(address, e))?;
        let zone = config.zone.to_string();
        bound.push(format!("{address}={zone}"));
        shared.view.dns(format!("{address} (UDP, TCP)"), &zone);
        let dot = match dot {
            Some((dot_listen, certificates)) => {
                let (listener, dot_address) = bind(dot_listen).await?;
                bound.push(format!("{dot_address}=tls:{zone}"));
                shared
                    .view
                    .dns(format!("{dot_address} (DNS over TLS)"), &zone);
                Some(dns::DotListener {
                    listener,
                    certificates,
                })
            }
            None => None,
        };
        tokio::spawn(dns::serve(
            udp,
            tcp,
            dot,
            config,
            shared.pool_user.clone(),
            shared.lifecycle.stop_accepting.clone(),
        ));
    }
    Ok(bound)
}

/// A TCP listener on `address`, and the address it got (the real port for a 0).
async fn bind(address: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), RunError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| RunError::Bind(address, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| RunError::Bind(address, e))?;
    Ok((listener, bound))
}
