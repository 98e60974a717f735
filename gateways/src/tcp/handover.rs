//! The record of a TCP-gateway session carried from one process to the next (the
//! gateway's binary upgrade; the channel is [`crate::handover`]): a session leaves at a point where no byte is in the process's hands
//! but its own state (everything read went into the session layer, everything to
//! write waits in its sides' queues), as its two sockets and one record: the session
//! layer's snapshot (`Session::freeze`) and the driver's queues and flags. The next
//! process thaws it and drives it on the same sockets, so the client and the PE see
//! nothing but a short pause.
//!
//! Sessions to SCTP PEs (whose associations live in this process's bridge) do not
//! move: they finish here within `drain_timeout`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rserpool_proto::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};

use super::framing::FramingCheck;
use super::side::Side;

/// The form of a handed session's record this build writes and reads.
const VERSION: u64 = 1;

/// What the driver of a session holds besides the session and the sockets.
#[derive(Debug)]
pub(super) struct DriverState {
    pub(super) peer: SocketAddr,
    /// How long the session has been open, and its failovers (the session table).
    pub(super) age: Duration,
    pub(super) failovers: u32,
    pub(super) session: Vec<u8>,
    pub(super) client: SideState,
    pub(super) pe: SideState,
    /// The client's place in the listener's message framing: a header begun, and the
    /// bytes of the current message still to come.
    pub(super) framing: Option<(Vec<u8>, u64)>,
    pub(super) pe_answered: bool,
    pub(super) offered: u64,
}

/// One side's queue and half-close flags.
#[derive(Debug, Default)]
pub(super) struct SideState {
    pub(super) pending: Vec<u8>,
    pub(super) eof: bool,
    pub(super) shutdown_wanted: bool,
    pub(super) shut: bool,
}

impl SideState {
    pub(super) fn of(side: &Side) -> Self {
        let mut pending = Vec::with_capacity(side.queued);
        for (index, chunk) in side.pending.iter().enumerate() {
            let from = if index == 0 { side.written } else { 0 };
            pending.extend_from_slice(chunk.get(from..).unwrap_or_default());
        }
        Self {
            pending,
            eof: side.eof,
            shutdown_wanted: side.shutdown_wanted,
            shut: side.shut,
        }
    }

    /// Puts the queue and flags on a side made from the handed socket.
    pub(super) fn restore(self, side: &mut Side) {
        side.eof = self.eof;
        side.shutdown_wanted = self.shutdown_wanted;
        side.shut = self.shut;
        if !self.pending.is_empty() {
            side.queued = self.pending.len();
            side.pending.push_back(self.pending);
        }
    }

    fn write(&self, w: &mut SnapshotWriter) {
        w.bytes(&self.pending);
        w.flag(self.eof);
        w.flag(self.shutdown_wanted);
        w.flag(self.shut);
    }

    fn read(r: &mut SnapshotReader<'_>) -> Result<Self, SnapshotError> {
        Ok(Self {
            pending: r.bytes()?.to_vec(),
            eof: r.flag("eof")?,
            shutdown_wanted: r.flag("shutdown wanted")?,
            shut: r.flag("shut")?,
        })
    }
}

impl DriverState {
    pub(super) fn framing_of(check: Option<&FramingCheck>) -> Option<(Vec<u8>, u64)> {
        check.map(|check| (check.header.clone(), check.remaining as u64))
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut w = SnapshotWriter::default();
        w.u64(VERSION);
        w.bytes(self.peer.to_string().as_bytes());
        w.duration(self.age);
        w.u64(u64::from(self.failovers));
        w.bytes(&self.session);
        self.client.write(&mut w);
        self.pe.write(&mut w);
        w.flag(self.framing.is_some());
        let (header, remaining) = self.framing.clone().unwrap_or_default();
        w.bytes(&header);
        w.u64(remaining);
        w.flag(self.pe_answered);
        w.u64(self.offered);
        w.finish()
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut r = SnapshotReader::new(bytes);
        let version = r.u64()?;
        if version != VERSION {
            return Err(SnapshotError::Version(version));
        }
        let peer = std::str::from_utf8(r.bytes()?)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or(SnapshotError::Invalid("client address"))?;
        let age = r.duration()?;
        let failovers = u32::try_from(r.u64()?).map_err(|_| SnapshotError::Invalid("failovers"))?;
        let session = r.bytes()?.to_vec();
        let client = SideState::read(&mut r)?;
        let pe = SideState::read(&mut r)?;
        let framed = r.flag("framing")?;
        let header = r.bytes()?.to_vec();
        let remaining = r.u64()?;
        let state = Self {
            peer,
            age,
            failovers,
            session,
            client,
            pe,
            framing: framed.then_some((header, remaining)),
            pe_answered: r.flag("PE answered")?,
            offered: r.u64()?,
        };
        r.end()?;
        Ok(state)
    }

    /// When the session started, by this process's clock.
    pub(super) fn started(&self, now: Instant) -> Instant {
        now.checked_sub(self.age).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DriverState {
        DriverState {
            peer: "127.0.0.1:4242".parse().unwrap(),
            age: Duration::from_millis(1500),
            failovers: 2,
            session: vec![1, 2, 3],
            client: SideState {
                pending: b"answer".to_vec(),
                eof: false,
                shutdown_wanted: true,
                shut: false,
            },
            pe: SideState {
                pending: b"request".to_vec(),
                eof: true,
                shutdown_wanted: false,
                shut: true,
            },
            framing: Some((vec![0, 1], 17)),
            pe_answered: true,
            offered: 3,
        }
    }

    #[test]
    fn a_record_round_trips_and_a_damaged_one_is_refused() {
        let bytes = state().encode();
        let back = DriverState::decode(&bytes).unwrap();
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.peer, state().peer);
        assert_eq!(back.client.pending, b"answer");
        assert!(back.pe.eof && back.pe.shut && back.client.shutdown_wanted);
        for cut in 0..bytes.len() {
            assert!(DriverState::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            DriverState::decode(&longer).unwrap_err(),
            SnapshotError::Trailing(1)
        );
        let mut other_version = bytes;
        other_version[7] = 9;
        assert_eq!(
            DriverState::decode(&other_version).unwrap_err(),
            SnapshotError::Version(9)
        );
    }
}
