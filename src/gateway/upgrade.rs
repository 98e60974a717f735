//! Binary upgrade on SIGUSR2, as nginx does it: the running gateway starts the binary
//! at its own path (the new version after a package upgrade) with its own arguments,
//! and hands it every listening socket (the admin listener's too) over a Unix socket
//! (`SCM_RIGHTS`), so no client is refused while both run. Once the new process says
//! it serves, the old one stops accepting, lets its open sessions go on for
//! `drain_timeout`, and exits. If the new process does not start, connect or get ready,
//! the old one goes on serving and says why. Open sessions and connections are not
//! carried over (README, "Upgrading the binary").
//!
//! The exchange: the new process connects to the socket named in its environment
//! ([`FROM_VARIABLE`]); the old one sends, in one message, a JSON list of the
//! listeners (each a key and its number of sockets) with the sockets attached in that
//! order; the new one answers `ready` once its ready line is out.

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
pub(super) const FROM_VARIABLE: &str = "RSERPOOL_UPGRADE_FROM";
/// The most sockets one upgrade hands over (one `SCM_RIGHTS` message; Linux takes 253).
const MAX_SOCKETS: usize = 250;
/// The largest list of listeners (JSON).
const MAX_HEADER: usize = 64 * 1024;
/// How long the new process may take to connect, and then to be ready.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Listening sockets by listener key (`admin`, `tcp 127.0.0.1:7100 #0`, ...).
pub(super) type Sockets = Vec<(String, Vec<OwnedFd>)>;

/// Why an upgrade did not happen (the old process goes on serving).
#[derive(Debug, thiserror::Error)]
pub(super) enum UpgradeError {
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

/// Starts the new process, hands it `sockets` and waits until it serves; its PID.
pub(super) async fn hand_over(sockets: Sockets) -> Result<u32, UpgradeError> {
    tokio::task::spawn_blocking(move || {
        let directory =
            std::env::temp_dir().join(format!("rserpool-upgrade-{}", std::process::id()));
        let result = hand_over_from(&directory, &sockets);
        let _ = std::fs::remove_dir_all(&directory);
        result
    })
    .await
    .map_err(|error| UpgradeError::Io(std::io::Error::other(error)))?
}

fn hand_over_from(directory: &Path, sockets: &Sockets) -> Result<u32, UpgradeError> {
    if sockets.iter().map(|(_, fds)| fds.len()).sum::<usize>() > MAX_SOCKETS {
        return Err(UpgradeError::TooManySockets);
    }
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
    let result = serve_child(&listener, &mut child, sockets);
    if result.is_err() && matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
        let _ = child.wait();
    }
    result.map(|()| child.id())
}

/// Waits for the new process to connect, sends it the sockets and waits for `ready`.
fn serve_child(
    listener: &UnixListener,
    child: &mut Child,
    sockets: &Sockets,
) -> Result<(), UpgradeError> {
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
    send(&stream, sockets)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let started = crate::driver::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 64];
    while !answer.starts_with(b"ready") {
        match stream.read(&mut buffer) {
            // Closed without `ready`: it is exiting; a process that closed it and
            // goes on is of no use either.
            Ok(0) => return Err(exit_of(child)),
            Ok(count) if answer.len() < 64 => {
                answer.extend_from_slice(buffer.get(..count).unwrap_or_default())
            }
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
    Ok(())
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
fn send(stream: &UnixStream, sockets: &Sockets) -> Result<(), UpgradeError> {
    let list: Vec<serde_json::Value> = sockets
        .iter()
        .map(|(key, fds)| serde_json::json!({ "key": key, "sockets": fds.len() }))
        .collect();
    let header = serde_json::to_vec(&list).map_err(std::io::Error::other)?;
    let length = u32::try_from(header.len()).map_err(std::io::Error::other)?;
    let fds: Vec<BorrowedFd<'_>> = sockets
        .iter()
        .flat_map(|(_, fds)| fds.iter().map(AsFd::as_fd))
        .collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(UpgradeError::TooManySockets);
    }
    let prefix = length.to_be_bytes();
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&prefix), IoSlice::new(&header)],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    // The sockets went with the first bytes; the rest of a long list follows plainly.
    let mut rest = [&prefix[..], &header[..]].concat();
    rest.drain(..sent.min(rest.len()));
    (&*stream).write_all(&rest)?;
    Ok(())
}

/// A listening TCP socket handed over, for tokio.
pub(super) fn tcp_listener(fd: OwnedFd) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// What the new process got from the old one.
pub(super) struct Inherited {
    sockets: BTreeMap<String, Vec<OwnedFd>>,
    stream: UnixStream,
}

impl Inherited {
    /// The sockets of the old process, when this process was started by an upgrade.
    pub(super) fn receive() -> Result<Option<Self>, RunError> {
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
        let (list, mut fds) = receive(&stream).map_err(failed)?;
        let mut sockets = BTreeMap::new();
        for (key, count) in list {
            let taken: Vec<OwnedFd> = fds.drain(..count.min(fds.len())).collect();
            sockets.insert(key, taken);
        }
        Ok(Some(Self { sockets, stream }))
    }

    /// The sockets of the listener `key`, if the old process had it.
    pub(super) fn take(&mut self, key: &str) -> Option<Vec<OwnedFd>> {
        self.sockets.remove(key)
    }

    /// Tells the old process that this one serves (it then stops accepting). The
    /// sockets nobody took (listeners the configuration no longer has) close here.
    pub(super) fn ready(mut self) {
        if let Err(error) = self.stream.write_all(b"ready\n") {
            tracing::warn!(%error, "upgrade: could not tell the old process that this one serves");
        }
    }
}

/// Reads the list of listeners and the sockets attached to it.
/// The listeners handed over: each one's name and number of sockets.
type Listing = Vec<(String, usize)>;

fn receive(stream: &UnixStream) -> std::io::Result<(Listing, Vec<OwnedFd>)> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buffer = vec![0u8; 4 + MAX_HEADER];
    let received = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut buffer)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let mut got = received.bytes;
    let length = buffer
        .first_chunk::<4>()
        .map(|b| u32::from_be_bytes(*b) as usize)
        .filter(|length| *length <= MAX_HEADER && got >= 4)
        .ok_or_else(|| std::io::Error::other("no list of listeners"))?;
    while got < 4 + length {
        let more = (&*stream).read(buffer.get_mut(got..4 + length).unwrap_or_default())?;
        if more == 0 {
            return Err(std::io::Error::other("the list of listeners was cut short"));
        }
        got += more;
    }
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(buffer.get(4..4 + length).unwrap_or_default())
            .map_err(std::io::Error::other)?;
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
pub(super) struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes the file (whole: through a temporary file renamed over it).
    pub(super) fn write(path: &Path) -> Result<Self, RunError> {
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|error| RunError::Failed(format!("--pid-file {}: {error}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Removes the file unless a newer process (an upgrade's) wrote its own.
    pub(super) fn remove_if_ours(self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
