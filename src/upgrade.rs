//! Binary upgrade on SIGUSR2, as nginx does it: the running process (a gateway or a
//! registrar) starts the binary at its own path (the new version after a package
//! upgrade) with its own arguments, and hands it every listening socket (the admin
//! listener's too) over a Unix socket (`SCM_RIGHTS`), so no client is refused while
//! both run, with a record of its state. Once the new process says it serves, the old
//! one stops accepting and goes (the gateway drains its sessions for `drain_timeout`
//! and carries those that can move, `gateway::carry`; the registrar closes its
//! associations). If the new process does not start, connect or get ready, the old
//! one goes on serving and says why (README, "Upgrading the binary").
//!
//! The exchange: the new process connects to the socket named in its environment
//! ([`FROM_VARIABLE`]); the old one sends, in one message, a JSON list of the
//! listeners (each a key and its number of sockets) with the sockets attached in that
//! order, then its state record (the gateway's pool-user cache, so the new process
//! does not start cold and can serve stale at once; the registrar's handlespace); the
//! new one answers `ready` and the JSON list of its listeners that take connections
//! (the gateway's TCP listeners that take sessions), once its ready line is out. Then
//! a gateway sends the open sessions of those listeners that can move, one message
//! each, and closes the connection when its drain is over.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::RunError;

/// Names the old process's socket in the new process's environment.
pub(crate) const FROM_VARIABLE: &str = "RSERPOOL_UPGRADE_FROM";
/// The most sockets one upgrade hands over (one `SCM_RIGHTS` message; Linux takes 253).
const MAX_SOCKETS: usize = 250;
/// The largest list of listeners (JSON).
const MAX_HEADER: usize = 64 * 1024;
/// The largest state record (the pool-user cache's and the handlespace's bounds keep
/// them well below).
const MAX_STATE: usize = 256 << 20;
/// How long the new process may take to connect, and then to be ready.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Listening sockets by listener key (`admin`, `tcp 127.0.0.1:7100 #0`, ...).
pub(crate) type Sockets = Vec<(String, Vec<OwnedFd>)>;

/// Why an upgrade did not happen (the old process goes on serving).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("cannot start {binary}: {error}")]
    Spawn {
        binary: PathBuf,
        error: std::io::Error,
    },
    #[error("the new process exited before it was ready ({0}); see its log lines above")]
    Exited(std::process::ExitStatus),
    #[error("the new process did not {0} in time; it was stopped")]
    Timeout(&'static str),
    #[error("more than {MAX_SOCKETS} sockets to hand over")]
    TooManySockets,
    #[error("handing the sockets over: {0}")]
    Io(#[from] std::io::Error),
}

/// The new process, serving: its PID, the connection to it, and the listeners that
/// take this process's connections (by name: a gateway's TCP sessions).
pub(crate) struct Successor {
    pub(crate) pid: u32,
    pub(crate) stream: UnixStream,
    pub(crate) takes_sessions: Vec<String>,
}

/// Starts the new process, hands it `sockets` and the role's `state` record, and
/// waits until it serves; then tells systemd the new main PID.
pub(crate) async fn hand_over(sockets: Sockets, state: Vec<u8>) -> Result<Successor, UpgradeError> {
    let successor = tokio::task::spawn_blocking(move || {
        let directory =
            std::env::temp_dir().join(format!("rserpool-upgrade-{}", std::process::id()));
        let result = hand_over_from(&directory, &sockets, &state);
        let _ = std::fs::remove_dir_all(&directory);
        result
    })
    .await
    .map_err(|error| UpgradeError::Io(std::io::Error::other(error)))??;
    crate::systemd::notify(&format!("MAINPID={}", successor.pid));
    Ok(successor)
}

fn hand_over_from(
    directory: &Path,
    sockets: &Sockets,
    state: &[u8],
) -> Result<Successor, UpgradeError> {
    // A directory only this user can enter: nobody else can connect and take the sockets.
    let _ = std::fs::remove_dir_all(directory);
    std::fs::DirBuilder::new().mode(0o700).create(directory)?;
    let path = directory.join("socket");
    let listener = UnixListener::bind(&path)?;
    listener.set_nonblocking(true)?;
    let binary = own_binary()?;
    let mut child = Command::new(&binary)
        .args(std::env::args_os().skip(1))
        .env(FROM_VARIABLE, &path)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|error| UpgradeError::Spawn { binary, error })?;
    let result = serve_child(&listener, &mut child, (sockets, state));
    if result.is_err() && matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (stream, takes_sessions) = result?;
    Ok(Successor {
        pid: child.id(),
        stream,
        takes_sessions,
    })
}

/// Waits for the new process to connect, sends it the sockets and waits for its
/// `ready` line (which names the TCP listeners that take sessions).
fn serve_child(
    listener: &UnixListener,
    child: &mut Child,
    (sockets, state): (&Sockets, &[u8]),
) -> Result<(UnixStream, Vec<String>), UpgradeError> {
    let started = crate::driver::now();
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                still_running(child)?;
                if started.elapsed() > CONNECT_TIMEOUT {
                    return Err(UpgradeError::Timeout("connect"));
                }
                // Pause: polling for the new process's connection, bounded above.
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => return Err(error.into()),
        }
    };
    stream.set_nonblocking(false)?;
    send_listeners(&stream, sockets)?;
    send_message(&stream, state, &[])?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let started = crate::driver::now();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: whatever follows the line is not this exchange's.
    while !answer.ends_with(b"\n") {
        match stream.read(&mut byte) {
            // Closed without `ready`: it is exiting; a process that closed it and
            // goes on is of no use either.
            Ok(0) => return Err(exit_of(child)),
            Ok(_) if answer.len() < MAX_HEADER => answer.extend_from_slice(&byte),
            Ok(_) => return Err(UpgradeError::Io(std::io::Error::other("unexpected answer"))),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(error) => return Err(error.into()),
        }
        still_running(child)?;
        if started.elapsed() > READY_TIMEOUT {
            return Err(UpgradeError::Timeout("get ready"));
        }
    }
    let takes_sessions = answer
        .strip_prefix(b"ready")
        .map(|rest| serde_json::from_slice::<Vec<String>>(rest).unwrap_or_default())
        .ok_or_else(|| UpgradeError::Io(std::io::Error::other("unexpected answer")))?;
    stream.set_read_timeout(None)?;
    Ok((stream, takes_sessions))
}

/// Why the new process is of no use: its exit status within a second, else a timeout
/// (the caller stops it).
fn exit_of(child: &mut Child) -> UpgradeError {
    for _ in 0..50 {
        if let Ok(Some(status)) = child.try_wait() {
            return UpgradeError::Exited(status);
        }
        // Pause: polling for the exit of a process that closed its end, bounded.
        std::thread::sleep(Duration::from_millis(20));
    }
    UpgradeError::Timeout("say it serves")
}

fn still_running(child: &mut Child) -> Result<(), UpgradeError> {
    match child.try_wait()? {
        Some(status) => Err(UpgradeError::Exited(status)),
        None => Ok(()),
    }
}

/// The path this process was started from; after a package upgrade replaced the file,
/// the new file at that path (Linux names the running one `PATH (deleted)`).
fn own_binary() -> std::io::Result<PathBuf> {
    let path = std::env::current_exe()?;
    let text = path.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(stripped) => PathBuf::from(stripped),
        None => path,
    })
}

/// The list of listeners and, attached, their sockets.
fn send_listeners(stream: &UnixStream, sockets: &Sockets) -> Result<(), UpgradeError> {
    if sockets.iter().map(|(_, fds)| fds.len()).sum::<usize>() > MAX_SOCKETS {
        return Err(UpgradeError::TooManySockets);
    }
    let list: Vec<serde_json::Value> = sockets
        .iter()
        .map(|(key, fds)| serde_json::json!({ "key": key, "sockets": fds.len() }))
        .collect();
    let header = serde_json::to_vec(&list).map_err(std::io::Error::other)?;
    let fds: Vec<BorrowedFd<'_>> = sockets
        .iter()
        .flat_map(|(_, fds)| fds.iter().map(AsFd::as_fd))
        .collect();
    send_message(stream, &header, &fds)?;
    Ok(())
}

/// One message: its length (32 bits), its bytes, and `fds` attached to its first
/// bytes (they travel with them; a message is read whole before the next one, so
/// no socket can end up with the wrong message).
pub(crate) fn send_message(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let length = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many sockets for one message"));
    }
    let prefix = length.to_be_bytes();
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&prefix), IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    // The sockets went with the first bytes; the rest of a long message follows plainly.
    let rest = [&prefix[..], bytes].concat();
    (&*stream).write_all(rest.get(sent..).unwrap_or_default())
}

/// Reads one message of at most `max_length` bytes with at most `max_fds` sockets;
/// `None` at the end of the stream.
pub(crate) fn receive_message(
    stream: &UnixStream,
    max_length: usize,
    max_fds: usize,
) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut prefix = [0u8; 4];
    // The length alone first: the sockets come with it, and nothing of the next
    // message is read.
    let received = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut prefix)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if received.bytes == 0 {
        return Ok(None);
    }
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received.flags.contains(rustix::net::ReturnFlags::CTRUNC) || fds.len() > max_fds {
        return Err(std::io::Error::other(
            "more sockets than the message may carry",
        ));
    }
    (&*stream).read_exact(prefix.get_mut(received.bytes..).unwrap_or_default())?;
    let length = u32::from_be_bytes(prefix) as usize;
    if length > max_length {
        return Err(std::io::Error::other(format!(
            "a message of {length} bytes (at most {max_length})"
        )));
    }
    let mut bytes = vec![0u8; length];
    (&*stream).read_exact(&mut bytes)?;
    Ok(Some((bytes, fds)))
}

/// The one socket of listener `key` that the old process handed over, if any.
pub(crate) fn handed(inherited: Option<&mut Inherited>, key: &str) -> Option<OwnedFd> {
    inherited?.take(key)?.pop()
}

/// The admin listener's socket (handed over by an upgrade, else bound on `listen`)
/// and a duplicate of it for the next upgrade; `None` when the admin listener is off.
pub(crate) async fn admin_listener(
    listen: Option<std::net::SocketAddr>,
    handed: Option<OwnedFd>,
) -> Result<Option<(tokio::net::TcpListener, Option<OwnedFd>)>, RunError> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let listener = match handed.map(crate::transport::tcp::listener_from) {
        Some(handed) => handed.map_err(|e| RunError::Bind(listen, e))?,
        None => tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| RunError::Bind(listen, e))?,
    };
    let duplicate = listener.as_fd().try_clone_to_owned().ok();
    Ok(Some((listener, duplicate)))
}

/// What the new process got from the old one.
pub(crate) struct Inherited {
    sockets: BTreeMap<String, Vec<OwnedFd>>,
    /// The old process's state record, until taken.
    state: Option<Vec<u8>>,
    stream: UnixStream,
}

impl Inherited {
    /// The sockets of the old process, when this process was started by an upgrade.
    pub(crate) fn receive() -> Result<Option<Self>, RunError> {
        let Some(path) = std::env::var_os(FROM_VARIABLE) else {
            return Ok(None);
        };
        let failed = |error: std::io::Error| {
            RunError::Failed(format!(
                "upgrade: receiving the sockets from {}: {error}",
                Path::new(&path).display()
            ))
        };
        let stream = UnixStream::connect(&path).map_err(failed)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(failed)?;
        let (list, mut fds) = receive_listeners(&stream).map_err(failed)?;
        let state = receive_message(&stream, MAX_STATE, 0)
            .map_err(failed)?
            .map(|(record, _)| record);
        let mut sockets = BTreeMap::new();
        for (key, count) in list {
            let taken: Vec<OwnedFd> = fds.drain(..count.min(fds.len())).collect();
            sockets.insert(key, taken);
        }
        Ok(Some(Self {
            sockets,
            state,
            stream,
        }))
    }

    /// The old process's state record, once.
    pub(crate) fn take_state(&mut self) -> Option<Vec<u8>> {
        self.state.take()
    }

    /// The sockets of the listener `key`, if the old process had it.
    pub(crate) fn take(&mut self, key: &str) -> Option<Vec<OwnedFd>> {
        self.sockets.remove(key)
    }

    /// Tells the old process that this one serves (it then stops accepting) and which
    /// listeners take its connections (a gateway's TCP sessions), which then come on
    /// the returned connection.
    /// The sockets nobody took (listeners the configuration no longer has) close here.
    pub(crate) fn ready(mut self, takes_sessions: &[String]) -> Option<UnixStream> {
        let names = serde_json::to_string(takes_sessions).unwrap_or_else(|_| "[]".into());
        match self.stream.write_all(format!("ready{names}\n").as_bytes()) {
            Ok(()) => Some(self.stream),
            Err(error) => {
                tracing::warn!(%error, "upgrade: could not tell the old process that this one serves");
                None
            }
        }
    }
}

/// The listeners handed over: each one's name and number of sockets.
type Listing = Vec<(String, usize)>;

/// Reads the list of listeners and the sockets attached to it.
fn receive_listeners(stream: &UnixStream) -> std::io::Result<(Listing, Vec<OwnedFd>)> {
    let (header, fds) = receive_message(stream, MAX_HEADER, MAX_SOCKETS)?
        .ok_or_else(|| std::io::Error::other("no list of listeners"))?;
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&header).map_err(std::io::Error::other)?;
    let list = list
        .iter()
        .filter_map(|entry| {
            Some((
                entry["key"].as_str()?.to_owned(),
                usize::try_from(entry["sockets"].as_u64()?).ok()?,
            ))
        })
        .collect();
    Ok((list, fds))
}

/// `--pid-file`: this process's ID, written once it serves.
pub(crate) struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes the file (whole: through a temporary file renamed over it).
    pub(crate) fn write(path: &Path) -> Result<Self, RunError> {
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|error| RunError::Failed(format!("--pid-file {}: {error}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Removes the file unless a newer process (an upgrade's) wrote its own.
    pub(crate) fn remove_if_ours(self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
