//! The byte layouts of Linux's SCTP API (linux/sctp.h, RFC 6458) that socket2 does not
//! know: ancillary data (the PPID a message is sent with and arrived with), the
//! notifications that end an association or report a path, and the packed address
//! lists of sctp_bindx, sctp_connectx and sctp_getpaddrs. Pure functions over bytes:
//! the system calls stay in the parent's `sys` module.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// IPPROTO_SCTP and SOL_SCTP.
pub(super) const IPPROTO_SCTP: i32 = 132;

// Ancillary data types (linux/sctp.h).
pub(super) const SCTP_SNDINFO: i32 = 2;
const SCTP_RCVINFO: i32 = 3;

// Notifications (RFC 6458 §6.1).
pub(super) const MSG_NOTIFICATION: i32 = 0x8000;
const SCTP_ASSOC_CHANGE: u16 = 0x8001;
const SCTP_PEER_ADDR_CHANGE: u16 = 0x8002;
const SCTP_SHUTDOWN_EVENT: u16 = 0x8005;
const SCTP_COMM_LOST: u16 = 1;
const SCTP_RESTART: u16 = 2;
const SCTP_SHUTDOWN_COMP: u16 = 3;
const SCTP_CANT_STR_ASSOC: u16 = 4;

/// Handles a notification: `Some(reason)` when it ends the association.
pub(super) fn notification(data: &[u8]) -> Option<String> {
    let u16_at = |at: usize| {
        data.get(at..at + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_ne_bytes)
    };
    match u16_at(0)? {
        SCTP_ASSOC_CHANGE => match u16_at(8)? {
            SCTP_COMM_LOST => Some("association lost (peer unreachable on every path)".into()),
            SCTP_SHUTDOWN_COMP => Some("shut down".into()),
            SCTP_CANT_STR_ASSOC => Some("association could not be started".into()),
            // The peer restarted: its state (registrations, sessions) is gone.
            SCTP_RESTART => Some("the peer restarted".into()),
            _ => None,
        },
        SCTP_SHUTDOWN_EVENT => Some("shut down by the peer".into()),
        SCTP_PEER_ADDR_CHANGE => {
            // struct sctp_paddr_change: type, flags, length, sockaddr_storage (128), state.
            let address = data.get(8..136).and_then(|a| unpack(a).into_iter().next());
            let state = match data.get(136..140).and_then(|b| b.try_into().ok()) {
                Some(bytes) => match i32::from_ne_bytes(bytes) {
                    0 => "available",
                    1 => "unreachable",
                    2 => "removed",
                    3 => "added",
                    4 => "made primary",
                    5 => "confirmed",
                    6 => "potentially failed",
                    _ => "changed",
                },
                None => "changed",
            };
            tracing::info!(address = ?address, state, "SCTP path changed");
            None
        }
        _ => None,
    }
}

/// The PPID of a received message, from its SCTP_RCVINFO (0 when missing).
pub(super) fn receive_ppid(control: &[u8]) -> u32 {
    // struct sctp_rcvinfo: sid u16, ssn u16, flags u16, (pad), ppid u32 at 8.
    let mut rest = control;
    let header = std::mem::size_of::<libc::cmsghdr>();
    while rest.len() >= header {
        let length = rest
            .get(..std::mem::size_of::<usize>())
            .and_then(|b| b.try_into().ok())
            .map_or(0, usize::from_ne_bytes);
        let level = read_i32(rest, std::mem::size_of::<usize>());
        let kind = read_i32(rest, std::mem::size_of::<usize>() + 4);
        if length < header {
            break;
        }
        if level == Some(IPPROTO_SCTP) && kind == Some(SCTP_RCVINFO) {
            return rest
                .get(header + 8..header + 12)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_be_bytes);
        }
        let advance = length.next_multiple_of(std::mem::size_of::<usize>());
        rest = rest.get(advance..).unwrap_or_default();
    }
    0
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
}

/// One control message (struct cmsghdr + data) at level SOL_SCTP.
pub(super) fn control_message(kind: i32, data: &[u8]) -> Vec<u8> {
    let header = std::mem::size_of::<libc::cmsghdr>();
    let mut message = Vec::with_capacity(header + data.len());
    message.extend_from_slice(&(header + data.len()).to_ne_bytes());
    message.extend_from_slice(&IPPROTO_SCTP.to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.resize(header, 0);
    message.extend_from_slice(data);
    message.resize(
        (header + data.len()).next_multiple_of(std::mem::size_of::<usize>()),
        0,
    );
    message
}

/// Socket addresses packed one after another as sctp_bindx/sctp_connectx take them.
pub(super) fn pack(addresses: &[SocketAddr]) -> Vec<u8> {
    let mut packed = Vec::new();
    for address in addresses {
        match address {
            SocketAddr::V4(v4) => {
                packed.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                packed.extend_from_slice(&v4.port().to_be_bytes());
                packed.extend_from_slice(&v4.ip().octets());
                packed.extend_from_slice(&[0; 8]);
            }
            SocketAddr::V6(v6) => {
                packed.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                packed.extend_from_slice(&v6.port().to_be_bytes());
                packed.extend_from_slice(&v6.flowinfo().to_be_bytes());
                packed.extend_from_slice(&v6.ip().octets());
                packed.extend_from_slice(&v6.scope_id().to_ne_bytes());
            }
        }
    }
    packed
}

/// The inverse of [`pack`]; IPv4-mapped IPv6 addresses come back as IPv4.
pub(super) fn unpack(mut packed: &[u8]) -> Vec<SocketAddr> {
    let mut addresses = Vec::new();
    loop {
        let family = packed
            .get(..2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_ne_bytes);
        let port = packed
            .get(2..4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u16::from_be_bytes);
        match family.map(i32::from) {
            Some(libc::AF_INET) => {
                let Some(octets) = packed.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok())
                else {
                    break;
                };
                addresses.push(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(octets),
                    port,
                )));
                packed = packed.get(16..).unwrap_or_default();
            }
            Some(libc::AF_INET6) => {
                let Some(octets) = packed.get(8..24).and_then(|b| <[u8; 16]>::try_from(b).ok())
                else {
                    break;
                };
                let ip = Ipv6Addr::from(octets);
                addresses.push(match ip.to_ipv4_mapped() {
                    Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                    None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
                });
                packed = packed.get(28..).unwrap_or_default();
            }
            _ => break,
        }
    }
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_pack_and_unpack() {
        let addresses: Vec<SocketAddr> = vec![
            "192.0.2.1:3863".parse().unwrap(),
            "[2001:db8::1]:3863".parse().unwrap(),
            "198.51.100.7:9901".parse().unwrap(),
        ];
        let packed = pack(&addresses);
        assert_eq!(packed.len(), 16 + 28 + 16);
        assert_eq!(unpack(&packed), addresses);
    }

    #[test]
    fn receive_info_gives_the_ppid() {
        let mut info = [0u8; 28];
        info[8..12].copy_from_slice(&11u32.to_be_bytes());
        let control = control_message(SCTP_RCVINFO, &info);
        assert_eq!(receive_ppid(&control), 11);
        // Another block first is skipped.
        let mut both = control_message(SCTP_SNDINFO, &[0u8; 16]);
        both.extend(control_message(SCTP_RCVINFO, &info));
        assert_eq!(receive_ppid(&both), 11);
        assert_eq!(receive_ppid(&[]), 0);
    }

    #[test]
    fn association_notifications_end_it() {
        let mut change = vec![0u8; 20];
        change[..2].copy_from_slice(&SCTP_ASSOC_CHANGE.to_ne_bytes());
        change[8..10].copy_from_slice(&SCTP_COMM_LOST.to_ne_bytes());
        assert!(notification(&change).is_some());
        change[8..10].copy_from_slice(&0u16.to_ne_bytes()); // COMM_UP
        assert_eq!(notification(&change), None);
        assert_eq!(notification(&[1]), None);
    }
}
