//! A connected session frozen in one process and thawed in the next (the gateway's
//! binary upgrade carries its sessions): everything the session knows, its clock
//! readings as ages before `now` (both processes read the same monotonic clock, but
//! the bytes should not depend on it), in a compact binary form.
//!
//! The form is project-local and versioned. The receiving side treats it as hostile
//! input like any other: every length is checked against what is left, every offset
//! against the others, and a snapshot that does not hold together is refused with a
//! [`SnapshotError`] rather than trusted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::ControlDeframer;
use super::control::MAX_CONTROL_FRAME;
use super::machine::{RecoveryPoint, Session, State, control_channel};
use super::types::SessionConfig;
use crate::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::wire::{AsapMessage, BusinessCard, PoolHandle};

/// The form this build writes and reads.
const VERSION: u64 = 1;

impl Session {
    /// The session frozen for another process, when it is at a point where it can
    /// move: connected to a PE, with nothing left for its driver to do (`poll` drained,
    /// so every byte read is in the session and every byte to write is with the
    /// driver). `None` otherwise: resolving, connecting, waiting or closed.
    pub fn freeze(&self, now: Instant) -> Option<Vec<u8>> {
        let State::Connected { pe } = &self.state else {
            return None;
        };
        if !self.out.is_empty() {
            return None;
        }
        let card = AsapMessage::BusinessCard(BusinessCard {
            pool_handle: self.pool_handle,
            policy: None,
            pool_elements: std::iter::once(pe.clone())
                .chain(self.business_card.iter().cloned())
                .collect(),
        })
        .encode()
        .ok()?;
        let ago = |at: Instant| now.saturating_duration_since(at);
        let mut w = SnapshotWriter::default();
        w.u64(VERSION);
        w.bytes(&card);
        let (front, back) = self.retained.as_slices();
        w.bytes(&[front, back].concat());
        for offset in [
            self.retained_from,
            self.client_in,
            self.sent_to_pe,
            self.delivered,
            self.pe_out,
            self.answered_upto,
            self.recovery.consumed,
            self.recovery.produced,
        ] {
            w.u64(offset);
        }
        w.flag(self.recovery.cookie.is_some());
        w.bytes(self.recovery.cookie.as_deref().unwrap_or_default());
        w.flag(self.client_finished.is_some());
        w.duration(self.client_finished.map(ago).unwrap_or_default());
        for at in [
            self.last_traffic,
            self.last_pe_activity,
            self.last_sent_to_pe,
        ] {
            w.duration(ago(at));
        }
        w.flag(self.recoverable);
        w.flag(self.pe_shutdown_sent);
        w.bytes(self.deframer.unread());
        Some(w.finish())
    }

    /// A session thawed from [`Session::freeze`]'s bytes, connected to the same PE
    /// over the connection the driver was handed with it; `config` is this process's
    /// (the replay limit applies from here on).
    pub fn thaw(
        bytes: &[u8],
        config: impl Into<Arc<SessionConfig>>,
        now: Instant,
    ) -> Result<Self, SnapshotError> {
        let mut r = SnapshotReader::new(bytes);
        let version = r.u64()?;
        if version != VERSION {
            return Err(SnapshotError::Version(version));
        }
        let decoded = AsapMessage::decode(r.bytes()?).map(|decoded| decoded.message);
        let Ok(AsapMessage::BusinessCard(card)) = decoded else {
            return Err(SnapshotError::Invalid("pool elements"));
        };
        let mut pool_elements = card.pool_elements.into_iter();
        let pe = pool_elements
            .next()
            .ok_or(SnapshotError::Invalid("pool elements"))?;
        let retained = r.bytes()?;
        let mut offsets = [0u64; 8];
        for offset in &mut offsets {
            *offset = r.u64()?;
        }
        let [
            retained_from,
            client_in,
            sent_to_pe,
            delivered,
            pe_out,
            answered_upto,
            consumed,
            produced,
        ] = offsets;
        let has_cookie = r.flag("cookie")?;
        let cookie = r.bytes()?;
        let cookie = has_cookie.then(|| cookie.to_vec());
        let finished = r.flag("half-close")?;
        let finished_ago = r.duration()?;
        let at = |ago: Duration| now.checked_sub(ago).unwrap_or(now);
        let (last_traffic, last_pe_activity, last_sent_to_pe) =
            (at(r.duration()?), at(r.duration()?), at(r.duration()?));
        let recoverable = r.flag("recoverable")?;
        let pe_shutdown_sent = r.flag("half-close sent")?;
        let unread = r.bytes()?.to_vec();
        r.end()?;
        let offsets_agree = retained_from.checked_add(retained.len() as u64) == Some(client_in)
            && (retained_from..=client_in).contains(&sent_to_pe)
            && answered_upto <= sent_to_pe
            && consumed <= client_in
            && produced <= pe_out
            && unread.len() <= MAX_CONTROL_FRAME + 8;
        if !offsets_agree {
            return Err(SnapshotError::Invalid("stream offsets"));
        }
        let (control, heartbeats) = control_channel(&pe);
        let mut session = Self::new(card.pool_handle, config, now);
        session.out.clear();
        session.state = State::Connected { pe };
        session.business_card = pool_elements.collect();
        session.retained = retained.iter().copied().collect();
        (session.retained_from, session.client_in, session.sent_to_pe) =
            (retained_from, client_in, sent_to_pe);
        (session.delivered, session.pe_out, session.answered_upto) =
            (delivered, pe_out, answered_upto);
        session.recovery = RecoveryPoint {
            consumed,
            produced,
            cookie,
        };
        session.client_finished = finished.then(|| at(finished_ago));
        (session.last_traffic, session.last_pe_activity) = (last_traffic, last_pe_activity);
        session.last_sent_to_pe = last_sent_to_pe;
        (session.recoverable, session.pe_shutdown_sent) = (recoverable, pe_shutdown_sent);
        (session.control, session.heartbeats) = (control, heartbeats);
        session.deframer = ControlDeframer::with_unread(unread);
        session.had_pe = true;
        session.trim_retained();
        Ok(session)
    }

    /// The pool the session serves.
    pub fn pool_handle(&self) -> PoolHandle {
        self.pool_handle
    }
}
