//! Open TCP-gateway sessions and idle HTTP/1.1 connections carried by a binary
//! upgrade: the old process sends each one that can move (its sockets and its record,
//! see `rserpool_gateways::handover`) to the new one, one message each on the
//! upgrade's connection; the new one gives each to its listener of the same name.
//! The old process closes the connection when its drain is over, which ends the new
//! one's reading.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

use rserpool_gateways::handover::{Handed, Handover, MAX_RECORD};
use rserpool_proto::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use tokio::sync::mpsc;

use crate::pool_user::PoolUser;
use crate::upgrade::{Inherited, Successor, receive_message, send_message};

/// Sessions frozen and waiting for the thread that sends them: each waits at most
/// this many sends (the rest go on serving until their turn).
const DEPARTURES: usize = 16;

/// The most sockets one session carries (a TCP session's client and PE).
const MAX_SOCKETS: usize = 2;

/// The largest session message: its record and its listener's name.
const MAX_SESSION_MESSAGE: usize = MAX_RECORD + 64 * 1024;

/// The TCP and plain HTTP listeners that take part in an upgrade, by name.
pub(super) type Handovers = Vec<(String, Handover)>;

/// Sessions leaving for the new process.
pub(super) struct Departing {
    handovers: Vec<Handover>,
    sender: JoinHandle<Carried>,
}

/// What one side of an upgrade carried.
#[derive(Debug, Default)]
struct Carried {
    sessions: usize,
    lost: usize,
}

/// Sends the sessions of the listeners the new process takes, as they can move.
pub(super) fn send_sessions(successor: Successor, handovers: Handovers) -> Departing {
    let (to, mut from) = mpsc::channel::<Handed>(DEPARTURES);
    let taking: Vec<Handover> = handovers
        .into_iter()
        .filter(|(name, _)| successor.takes_sessions.contains(name))
        .map(|(name, handover)| {
            handover.depart(&name, to.clone());
            handover
        })
        .collect();
    drop(to);
    let stopping = taking.clone();
    let stream = successor.stream;
    let sender = std::thread::spawn(move || {
        let mut carried = Carried::default();
        while let Some(session) = from.blocking_recv() {
            if carried.lost > 0 {
                carried.lost += 1;
                continue;
            }
            match send_session(&stream, &session) {
                Ok(()) => carried.sessions += 1,
                Err(error) => {
                    tracing::error!(%error, "upgrade: the new process takes no more sessions; the rest finish here");
                    stopping.iter().for_each(Handover::stay);
                    carried.lost += 1;
                }
            }
        }
        carried
    });
    Departing {
        handovers: taking,
        sender,
    }
}

impl Departing {
    /// The drain is over: no more departures; says what was carried.
    pub(super) async fn finish(self) {
        self.handovers.iter().for_each(Handover::stay);
        let sender = self.sender;
        match tokio::task::spawn_blocking(move || sender.join()).await {
            Ok(Ok(carried)) => tracing::info!(
                sessions = carried.sessions,
                lost = carried.lost,
                "upgrade: sessions handed to the new process"
            ),
            _ => tracing::error!("upgrade: the thread handing sessions over failed"),
        }
    }
}

fn send_session(stream: &UnixStream, session: &Handed) -> std::io::Result<()> {
    let mut w = SnapshotWriter::default();
    w.bytes(session.listener.as_bytes());
    w.bytes(&session.record);
    let message = w.finish();
    if message.len() > MAX_SESSION_MESSAGE {
        return Err(std::io::Error::other("a session too large to hand over"));
    }
    let sockets: Vec<_> = session.sockets.iter().map(AsFd::as_fd).collect();
    send_message(stream, &message, &sockets)
}

/// Fills the pool user's cache with the old process's answers.
pub(super) fn take_cache(inherited: &mut Inherited, pool_user: &PoolUser) {
    let Some(record) = inherited.take_state() else {
        return;
    };
    match pool_user.adopt_cache(&record) {
        Ok(pools) => tracing::info!(pools, "upgrade: the old process's pool-user cache taken"),
        Err(error) => {
            tracing::warn!(%error, "upgrade: the old process's pool-user cache not taken");
        }
    }
}

/// Tells the old process that this one serves and which TCP listeners take its
/// sessions, then takes them.
pub(super) fn take_over(inherited: Inherited, handovers: Handovers) {
    let names: Vec<String> = handovers.iter().map(|(name, _)| name.clone()).collect();
    if let Some(stream) = inherited.ready(&names) {
        receive_sessions(stream, handovers);
    }
}

/// Takes the old process's sessions for `handovers` until it closes the connection
/// (on a thread: giving a session to a busy listener waits).
fn receive_sessions(stream: UnixStream, handovers: Handovers) {
    let by_name: BTreeMap<String, Handover> = handovers.into_iter().collect();
    std::thread::spawn(move || {
        let mut carried = Carried::default();
        loop {
            let (message, fds) = match receive_message(&stream, MAX_SESSION_MESSAGE, MAX_SOCKETS) {
                Ok(Some(received)) => received,
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(%error, "upgrade: receiving sessions from the old process");
                    break;
                }
            };
            let taken = parse_session(&message, fds).is_ok_and(|(name, session)| {
                by_name
                    .get(&name)
                    .is_some_and(|handover| handover.arrive(session).is_ok())
            });
            if taken {
                carried.sessions += 1;
            } else {
                // Its sockets close here: the client sees its connection end.
                carried.lost += 1;
            }
        }
        tracing::info!(
            sessions = carried.sessions,
            refused = carried.lost,
            "upgrade: sessions taken from the old process"
        );
    });
}

/// A session message: its listener's name and record, and its sockets.
fn parse_session(
    message: &[u8],
    sockets: Vec<std::os::fd::OwnedFd>,
) -> Result<(String, Handed), SnapshotError> {
    let mut r = SnapshotReader::new(message);
    let name = std::str::from_utf8(r.bytes()?)
        .map_err(|_| SnapshotError::Invalid("listener"))?
        .to_owned();
    let record = r.bytes()?.to_vec();
    r.end()?;
    if sockets.is_empty() {
        return Err(SnapshotError::Invalid("sockets"));
    }
    let session = Handed {
        listener: Arc::from(name.as_str()),
        sockets,
        record,
    };
    Ok((name, session))
}
