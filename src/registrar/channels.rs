//! The registrar's multicast channels: ASAP announces (RFC 5352 §3.6: PEs and pool
//! users find registrars) and ENRP presences (RFC 5353 §3.1: registrars find each
//! other), each on the interface of its listener's address unless one is configured.

use std::net::{Ipv4Addr, SocketAddr};

use rserpool_proto::registrar::RegistrarConfig;
use rserpool_proto::wire::Protocol;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::RunError;
use crate::config::{self, Multicast, RegistrarSection};
use crate::transport::{Incoming, Transports, multicast};

/// The channels opened, as the ready line names them.
pub(super) struct Channels {
    /// The announce group, or `off`.
    pub(super) announce: String,
    pub(super) announce_interface: Option<Ipv4Addr>,
    /// The ENRP presence group, or `off`.
    pub(super) enrp: String,
    pub(super) enrp_interface: Option<Ipv4Addr>,
}

/// Joins the configured groups; a group on a wildcard address with no interface
/// configured is off, and said so. Turns the engine's announces and ENRP multicast on
/// or off to match.
pub(super) fn open(
    section: &RegistrarSection,
    (asap, enrp): (SocketAddr, SocketAddr),
    transports: &mut Transports,
    (incoming, shutdown): (&mpsc::Sender<Incoming>, &CancellationToken),
    settings: &mut RegistrarConfig,
) -> Result<Channels, RunError> {
    let mut join = |protocol: Protocol,
                    (group, ttl, interface): (&Multicast, u32, Option<Ipv4Addr>),
                    listener: SocketAddr,
                    off: &str| {
        let interface = config::multicast_interface(listener.ip(), interface);
        match (group, interface) {
            (Multicast::Group(group), Some(interface)) => {
                let channel = multicast::Channel::open(
                    protocol,
                    *group,
                    interface,
                    ttl,
                    incoming.clone(),
                    shutdown.clone(),
                )
                .map_err(|e| RunError::Bind(SocketAddr::V4(*group), e))?;
                transports.add_multicast(protocol, channel);
                Ok::<_, RunError>((Some(group.to_string()), Some(interface)))
            }
            (Multicast::Group(group), None) => {
                tracing::warn!(%group, "{off}");
                Ok((None, interface))
            }
            (Multicast::Off, _) => Ok((None, interface)),
        }
    };
    let announce_section = &section.announce;
    let (announce, announce_interface) = join(
        Protocol::Asap,
        (
            &announce_section.group,
            announce_section.ttl,
            announce_section.interface,
        ),
        asap,
        "announces are off: the ASAP address is a wildcard; set registrar.announce.interface to pick the interface",
    )?;
    let presence_section = &section.enrp_multicast;
    let (presence, enrp_interface) = join(
        Protocol::Enrp,
        (
            &presence_section.group,
            presence_section.ttl,
            presence_section.interface,
        ),
        enrp,
        "ENRP multicast is off: the ENRP address is a wildcard; set registrar.enrp_multicast.interface to pick the interface",
    )?;
    if announce.is_none() {
        settings.announce_interval = None;
    }
    settings.enrp_multicast = presence.is_some();
    Ok(Channels {
        announce: announce.unwrap_or_else(|| "off".to_owned()),
        announce_interface,
        enrp: presence.unwrap_or_else(|| "off".to_owned()),
        enrp_interface,
    })
}
