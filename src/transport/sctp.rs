//! Kernel SCTP (Linux): ASAP and ENRP associations as RFC 5352/5353 mandate, and the
//! data channel to SCTP pool elements. One-to-one style sockets (`SOCK_STREAM`,
//! RFC 6458 §4): one socket per association, which is what the rest of the transport
//! layer expects; on the wire they are indistinguishable from rsplib's one-to-many
//! sockets.
//!
//! What SCTP gives that the TCP mapping emulates: message boundaries (a message is
//! read whole, partial deliveries are reassembled), a payload protocol identifier on
//! every message (ASAP 11, ENRP 12, an application's own for data), multi-homing
//! (bind to and connect to several addresses) and association notifications (a lost
//! association ends it at once; path changes are logged).
//!
//! The only `unsafe` code of the project is the [`sys`] module below: the socket
//! options, `sendmsg` and `recvmsg` calls that socket2 has no safe wrapper for.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::io::unix::AsyncFd;

mod layout;

use layout::{
    IPPROTO_SCTP, MSG_NOTIFICATION, SCTP_SNDINFO, control_message, notification, pack,
    receive_ppid, unpack,
};

// Socket options (linux/sctp.h).
const SCTP_NODELAY: i32 = 3;
const SCTP_EVENTS: i32 = 11;
const SCTP_STATUS: i32 = 14;
const SCTP_RECVRCVINFO: i32 = 32;
const SCTP_SOCKOPT_BINDX_ADD: i32 = 100;
const SCTP_GET_PEER_ADDRS: i32 = 108;
const SCTP_GET_LOCAL_ADDRS: i32 = 109;
const SCTP_SOCKOPT_CONNECTX: i32 = 110;

/// The largest message read whole; ASAP and ENRP messages are at most 65 535 bytes
/// (their length field), data messages are bounded by the caller.
pub(crate) const MAX_MESSAGE: usize = 65_535;

/// What a read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A whole message and its payload protocol identifier.
    Message { ppid: u32, payload: Vec<u8> },
    /// The association ended (the peer shut it down, it was lost or aborted).
    Closed(String),
}

/// The error for a host whose kernel has no SCTP, naming the problem and the way out.
fn no_sctp(error: io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT | libc::EAFNOSUPPORT) => io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "this kernel has no SCTP ({error}): load it with `modprobe sctp`, or use `transport: tcp`"
            ),
        ),
        _ => error,
    }
}

fn new_socket(ipv6: bool) -> io::Result<Socket> {
    let socket = plain_socket(ipv6)?;
    // A PE's outgoing ASAP associations leave from its listening port (RFC 5352 §3.1).
    socket.set_reuse_port(true)?;
    Ok(socket)
}

fn plain_socket(ipv6: bool) -> io::Result<Socket> {
    let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(
        domain,
        Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::from(IPPROTO_SCTP)),
    )
    .map_err(no_sctp)?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// Binds `address` with a socket that does not share its port, and lets it go: fails
/// with "address in use" when another socket listens there.
pub(crate) fn probe_port(address: SocketAddr) -> io::Result<()> {
    let socket = plain_socket(address.is_ipv6())?;
    socket.bind(&address.into())
}

/// Per-association settings: no Nagle (ASAP/ENRP are request/response), the receive
/// info (PPID) with every message, and the association/shutdown/address events.
fn tune(socket: &Socket) -> io::Result<()> {
    sys::set_option(socket.as_fd(), SCTP_NODELAY, &1i32.to_ne_bytes())?;
    sys::set_option(socket.as_fd(), SCTP_RECVRCVINFO, &1i32.to_ne_bytes())?;
    // struct sctp_event_subscribe, first bytes: data_io, association, address,
    // send_failure, peer_error, shutdown (a shorter option leaves the rest off).
    sys::set_option(socket.as_fd(), SCTP_EVENTS, &[0, 1, 1, 0, 0, 1])
}

/// Binds `socket` to every address of `local` (same port): the first with bind(2), the
/// others with sctp_bindx (multi-homing).
fn bind_all(socket: &Socket, local: &[SocketAddr]) -> io::Result<()> {
    let Some((first, others)) = local.split_first() else {
        return Ok(());
    };
    socket.bind(&(*first).into())?;
    if !others.is_empty() {
        // The port the first bind got (it may have been 0).
        let port = socket
            .local_addr()?
            .as_socket()
            .map_or(first.port(), |a| a.port());
        let others: Vec<SocketAddr> = others
            .iter()
            .map(|a| SocketAddr::new(a.ip(), port))
            .collect();
        sys::set_option(socket.as_fd(), SCTP_SOCKOPT_BINDX_ADD, &pack(&others))?;
    }
    Ok(())
}

/// Whether a set of addresses needs an IPv6 socket (an IPv6 socket carries IPv4 too).
pub(super) fn needs_ipv6(addresses: &[SocketAddr]) -> bool {
    addresses.iter().any(SocketAddr::is_ipv6)
}

/// The addresses as a socket of that family takes them: on an IPv6 socket, IPv4
/// addresses as IPv4-mapped IPv6 ones.
fn for_socket(ipv6: bool, addresses: &[SocketAddr]) -> Vec<SocketAddr> {
    addresses
        .iter()
        .map(|address| match (ipv6, address) {
            (true, SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => *address,
        })
        .collect()
}

/// Fails with the "no SCTP" error when this kernel cannot open SCTP sockets (checked at
/// start by roles that only connect, so that the error is not a silent retry loop).
pub(crate) fn probe() -> io::Result<()> {
    new_socket(false).map(drop)
}

/// A listening SCTP endpoint, bound to one or more addresses.
#[derive(Debug)]
pub(crate) struct Listener {
    socket: AsyncFd<Socket>,
}

impl Listener {
    /// Binds to `addresses` (all with the first one's port) and listens.
    pub(crate) fn bind(addresses: &[SocketAddr]) -> io::Result<Self> {
        if addresses.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an SCTP endpoint needs at least one address",
            ));
        }
        let ipv6 = needs_ipv6(addresses);
        let socket = new_socket(ipv6)?;
        bind_all(&socket, &for_socket(ipv6, addresses))?;
        tune(&socket)?;
        socket.listen(1024)?;
        Ok(Self {
            socket: sys::register(socket)?,
        })
    }

    /// The bound addresses (all of them, with the port).
    pub(crate) fn local_addresses(&self) -> io::Result<Vec<SocketAddr>> {
        addresses_option(self.socket.get_ref(), SCTP_GET_LOCAL_ADDRS)
    }

    /// A listening socket handed over by a binary upgrade.
    pub(crate) fn from_handed(fd: OwnedFd) -> io::Result<Self> {
        let socket = Socket::from(fd);
        socket.set_nonblocking(true)?;
        sys::register(socket).map(|socket| Self { socket })
    }

    /// A duplicate of the listening socket, for a binary upgrade.
    pub(crate) fn duplicate(&self) -> io::Result<OwnedFd> {
        self.socket.get_ref().as_fd().try_clone_to_owned()
    }

    /// Accepts the next association.
    pub(crate) async fn accept(&self) -> io::Result<Association> {
        loop {
            let mut ready = self.socket.readable().await?;
            match ready.try_io(|socket| socket.get_ref().accept()) {
                Ok(Ok((socket, _))) => {
                    socket.set_nonblocking(true)?;
                    tune(&socket)?;
                    return Association::new(socket);
                }
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => {}
            }
        }
    }
}

/// One SCTP association (a one-to-one socket). Reading and writing may go on at once
/// from two tasks sharing it.
#[derive(Debug)]
pub struct Association {
    socket: AsyncFd<Socket>,
    /// The message being reassembled from partial deliveries: kept here, not in
    /// [`Association::receive`]'s future, so that a receive dropped in a `select!`
    /// loses no part of it.
    partial: std::sync::Mutex<Vec<u8>>,
}

impl Association {
    fn new(socket: Socket) -> io::Result<Self> {
        Ok(Self {
            socket: sys::register(socket)?,
            partial: std::sync::Mutex::default(),
        })
    }

    /// Opens an association to a peer reachable at any of `remote` (one port), from
    /// `local` if given (bound to all of those addresses; their port may be 0).
    pub async fn connect(remote: &[SocketAddr], local: &[SocketAddr]) -> io::Result<Self> {
        if remote.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no address to connect to",
            ));
        }
        let ipv6 = needs_ipv6(remote) || needs_ipv6(local);
        let socket = new_socket(ipv6)?;
        bind_all(&socket, &for_socket(ipv6, local))?;
        tune(&socket)?;
        let remote = for_socket(ipv6, remote);
        match sys::set_option(socket.as_fd(), SCTP_SOCKOPT_CONNECTX, &pack(&remote)) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(error) => return Err(error),
        }
        let association = Self::new(socket)?;
        // Connected when writable; SO_ERROR says how it went.
        // (The readiness stays set: the first send uses it.)
        drop(association.socket.writable().await?);
        if let Some(error) = association.socket.get_ref().take_error()? {
            return Err(error);
        }
        // Writable without an error can also mean "not yet": the peer address proves it.
        association.socket.get_ref().peer_addr()?;
        Ok(association)
    }

    /// The peer's addresses (all paths of a multi-homed peer), with its port.
    pub(crate) fn peer_addresses(&self) -> io::Result<Vec<SocketAddr>> {
        addresses_option(self.socket.get_ref(), SCTP_GET_PEER_ADDRS)
    }

    /// The smoothed round-trip time of the primary path, once measured.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        // struct sctp_status: the primary path's sctp_paddrinfo starts at 24, its
        // (packed) srtt in milliseconds at 24 + 4 + 128 + 4 + 4.
        let mut status = [0u8; 176];
        let read = sys::get_option(self.socket.get_ref().as_fd(), SCTP_STATUS, &mut status).ok()?;
        let srtt = status.get(164..168).filter(|_| read >= 168)?;
        let millis = u32::from_ne_bytes(srtt.try_into().ok()?);
        (millis > 0).then(|| Duration::from_millis(u64::from(millis)))
    }

    /// Sends one message with `ppid` on stream 0, ordered.
    pub async fn send(&self, ppid: u32, payload: &[u8]) -> io::Result<()> {
        self.transmit(ppid, payload, 0).await
    }

    /// Sends one message as [`Association::send`] does, but lets the kernel hold it
    /// (`MSG_MORE`, Linux 4.14 and later) until a later send without the hint: for a
    /// sender that knows more messages follow at once, so that they leave bundled in
    /// as few packets as fit, each packet costing both ends a pass through their SCTP
    /// stacks and one less SACK.
    pub(crate) async fn send_holding(&self, ppid: u32, payload: &[u8]) -> io::Result<()> {
        self.transmit(ppid, payload, libc::MSG_MORE).await
    }

    async fn transmit(&self, ppid: u32, payload: &[u8], flags: i32) -> io::Result<()> {
        // struct sctp_sndinfo: sid u16, flags u16, ppid u32 (network order, passed to
        // the wire as is), context u32, assoc_id i32.
        let mut info = [0u8; 16];
        if let Some(field) = info.get_mut(4..8) {
            field.copy_from_slice(&ppid.to_be_bytes());
        }
        let control = control_message(SCTP_SNDINFO, &info);
        loop {
            let mut ready = self.socket.writable().await?;
            let sent = ready
                .try_io(|socket| sys::send(socket.get_ref().as_fd(), &control, payload, flags));
            match sent {
                Ok(result) => return result.map(drop),
                Err(_would_block) => {}
            }
        }
    }

    /// Reads the next whole message (reassembling partial deliveries up to `max` bytes),
    /// or the end of the association. Address changes of a multi-homed peer are logged.
    /// Cancel-safe: a receive dropped before it returns loses nothing.
    pub async fn receive(&self, max: usize) -> io::Result<Received> {
        loop {
            let mut ready = self.socket.readable().await?;
            let piece = ready.try_io(|socket| {
                let mut partial = self
                    .partial
                    .lock()
                    .map_err(|_| io::Error::other("receive buffer poisoned"))?;
                read_piece(socket.get_ref(), &mut partial, max)
            });
            let Ok(piece) = piece else { continue };
            match piece {
                Ok(Piece::Part) => {}
                Ok(Piece::Last { ppid }) => {
                    let payload = self
                        .partial
                        .lock()
                        .map(|mut partial| std::mem::take(&mut *partial))
                        .unwrap_or_default();
                    return Ok(Received::Message { ppid, payload });
                }
                Ok(Piece::Notification(None)) => {}
                Ok(Piece::Notification(Some(reason))) => return Ok(Received::Closed(reason)),
                Ok(Piece::End) => return Ok(Received::Closed("shut down by the peer".into())),
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(Received::Closed("aborted by the peer".into()));
                }
                Err(error) => {
                    // A message too long is dropped whole, not continued by the next.
                    if let Ok(mut partial) = self.partial.lock() {
                        partial.clear();
                    }
                    return Err(error);
                }
            }
        }
    }

    /// Starts a graceful shutdown (SHUTDOWN after the queued data); reading goes on
    /// until the peer completes it.
    pub(crate) fn shutdown(&self) {
        let _ = self.socket.get_ref().shutdown(std::net::Shutdown::Write);
    }
}

/// What one recvmsg brought.
enum Piece {
    /// Part of a message (appended); more follows.
    Part,
    /// The end of a message (appended), with its PPID.
    Last { ppid: u32 },
    /// A notification; `Some(reason)` when it ends the association.
    Notification(Option<String>),
    /// The peer shut the association down.
    End,
}

thread_local! {
    /// One receive buffer per thread: what is read is copied out before the task
    /// yields, so associations need no buffer of their own while idle.
    static RECEIVE_BUFFER: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0; MAX_MESSAGE + 1]);
}

/// One recvmsg: data is appended to `message` (at most `max` bytes in all).
fn read_piece(socket: &Socket, message: &mut Vec<u8>, max: usize) -> io::Result<Piece> {
    RECEIVE_BUFFER.with_borrow_mut(|buffer| {
        let mut control = [0u8; 256];
        let read = sys::receive(socket.as_fd(), buffer, &mut control)?;
        let data = buffer.get(..read.bytes).unwrap_or_default();
        if read.flags & MSG_NOTIFICATION != 0 {
            return Ok(Piece::Notification(notification(data)));
        }
        if read.bytes == 0 {
            return Ok(Piece::End);
        }
        if message.len() + data.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message longer than {max} bytes"),
            ));
        }
        message.extend_from_slice(data);
        if read.flags & libc::MSG_EOR == 0 {
            return Ok(Piece::Part);
        }
        let ppid = receive_ppid(control.get(..read.control).unwrap_or_default());
        Ok(Piece::Last { ppid })
    })
}

/// SCTP_GET_PEER_ADDRS / SCTP_GET_LOCAL_ADDRS: struct sctp_getaddrs (assoc_id i32,
/// count u32, packed addresses).
fn addresses_option(socket: &Socket, option: i32) -> io::Result<Vec<SocketAddr>> {
    let mut buffer = vec![0u8; 8 + 64 * 28];
    let read = sys::get_option(socket.as_fd(), option, &mut buffer)?;
    let count = buffer
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes) as usize;
    let mut addresses = unpack(buffer.get(8..read).unwrap_or_default());
    addresses.truncate(count);
    Ok(addresses)
}

/// The system calls without a safe wrapper. Each is a plain call on a borrowed
/// descriptor with buffers whose lengths are passed alongside them.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    use socket2::Socket;
    use tokio::io::unix::AsyncFd;

    use super::layout::IPPROTO_SCTP;

    /// Hands a socket to the tokio reactor.
    pub(super) fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
        // SAFETY: a socket2::Socket owns its descriptor, keeps it open until dropped and
        // always returns the same one; this module never replaces it (no `get_mut`).
        unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)
    }

    /// setsockopt(fd, SOL_SCTP, name, value).
    pub(super) fn set_option(fd: BorrowedFd<'_>, name: i32, value: &[u8]) -> io::Result<()> {
        let length = libc::socklen_t::try_from(value.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `value` is valid for reads of `length` bytes for the whole call, and
        // the kernel copies it out before returning; `fd` is a live descriptor.
        let result = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                IPPROTO_SCTP,
                name,
                value.as_ptr().cast(),
                length,
            )
        };
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// getsockopt(fd, SOL_SCTP, name) into `buffer` (which also carries the input the
    /// option reads, e.g. an association id); returns the length written.
    pub(super) fn get_option(
        fd: BorrowedFd<'_>,
        name: i32,
        buffer: &mut [u8],
    ) -> io::Result<usize> {
        let mut length = libc::socklen_t::try_from(buffer.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `buffer` is valid for writes of `length` bytes, `length` is a valid
        // pointer the kernel updates with the bytes written (never more than given).
        let result = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                IPPROTO_SCTP,
                name,
                buffer.as_mut_ptr().cast(),
                &raw mut length,
            )
        };
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(length as usize)
        }
    }

    /// sendmsg of one message with one ancillary block, without blocking or SIGPIPE,
    /// and with `flags` besides.
    pub(super) fn send(
        fd: BorrowedFd<'_>,
        control: &[u8],
        payload: &[u8],
        flags: i32,
    ) -> io::Result<usize> {
        let mut part = libc::iovec {
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &raw mut part;
        header.msg_iovlen = 1;
        header.msg_control = control.as_ptr().cast_mut().cast();
        header.msg_controllen = control.len();
        // SAFETY: the header points at `part` (one iovec over `payload`) and `control`,
        // all alive for the call; sendmsg only reads through these pointers.
        let sent = unsafe {
            libc::sendmsg(
                fd.as_raw_fd(),
                &raw const header,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | flags,
            )
        };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(sent.unsigned_abs())
        }
    }

    /// What one recvmsg gave.
    #[derive(Debug)]
    pub(super) struct Read {
        pub(super) bytes: usize,
        pub(super) control: usize,
        pub(super) flags: i32,
    }

    /// recvmsg of (part of) one message and its ancillary data, without blocking.
    pub(super) fn receive(
        fd: BorrowedFd<'_>,
        buffer: &mut [u8],
        control: &mut [u8],
    ) -> io::Result<Read> {
        let mut part = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &raw mut part;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = control.len();
        // SAFETY: the header points at `part` (one iovec over `buffer`) and `control`,
        // both exclusively borrowed for the call; the kernel writes at most their
        // lengths and reports how much in the return value and `msg_controllen`.
        let read = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut header, libc::MSG_DONTWAIT) };
        if read < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Read {
            bytes: read.unsigned_abs(),
            control: header.msg_controllen.min(control.len()),
            flags: header.msg_flags,
        })
    }
}
