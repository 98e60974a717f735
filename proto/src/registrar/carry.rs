//! A registrar's handlespace carried to the next process of a binary upgrade, so that
//! the upgrade is not a restart: the new process answers handle resolutions from the
//! first moment, under the same registrar ID, and its peers find it again before
//! their probes time out (no takeover, RFC 5353 §3.6 never starts).
//!
//! What goes over: the registrar ID and every PE (its parameter as ENRP distributes
//! it, with its home, and what was left of its registration life). What does not:
//! associations (the old process closes them; PEs re-register, RFC 5352 §3.1, and
//! the record of who registered a PE over which association restarts with that),
//! keep-alive supervision (it resumes with the re-registration; a PE that does not
//! come back leaves when its registration life runs out), the peer table (static
//! peers are connected again at start, others are found by their announces) and the
//! selection state of round-robin policies.

use std::time::{Duration, Instant};

use super::config::RegistrarConfig;
use super::engine::RegistrarEngine;
use super::sync::Phase;
use crate::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::wire::{AsapMessage, HandleResolutionResponse, RegistrarId};

/// The form this build writes and reads.
const RECORD_VERSION: u64 = 1;

/// What [`RegistrarEngine::adopt`] took from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Adopted {
    /// PEs now in the handlespace.
    pub pool_elements: usize,
    /// PEs this process's limits or checks refused (they re-register, or their home
    /// sends them again).
    pub refused: usize,
}

impl RegistrarEngine {
    /// The handlespace for the next process of a binary upgrade: a versioned record,
    /// registration lives as what is left of them at `now`.
    pub fn carry_handlespace(&self, now: Instant) -> Vec<u8> {
        let mut w = SnapshotWriter::default();
        w.u64(RECORD_VERSION);
        w.u64(u64::from(self.id.0));
        for (pool_handle, pool) in self.handlespace.pools() {
            let entries: Vec<_> = pool.elements().collect();
            let answer = AsapMessage::HandleResolutionResponse(HandleResolutionResponse {
                pool_handle: *pool_handle,
                policy: None,
                pool_elements: entries.iter().map(|e| e.element.clone()).collect(),
                error: None,
            });
            let Ok(bytes) = answer.encode() else {
                continue;
            };
            w.bytes(&bytes);
            for entry in entries {
                w.duration(entry.expires_at.saturating_duration_since(now));
            }
        }
        w.finish()
    }

    /// A registrar that goes on from [`carry_handlespace`](Self::carry_handlespace)'s
    /// record (checked as hostile input): the record's registrar ID (a configured one
    /// must be the same), its PEs with what was left of their lives (never more than
    /// a life), serving ASAP at once. Its peers are connected as at any start.
    pub fn adopt(
        config: RegistrarConfig,
        seed: u64,
        record: &[u8],
        now: Instant,
    ) -> Result<(Self, Adopted), SnapshotError> {
        let mut r = SnapshotReader::new(record);
        let version = r.u64()?;
        if version != RECORD_VERSION {
            return Err(SnapshotError::Version(version));
        }
        let id = u32::try_from(r.u64()?)
            .ok()
            .map(RegistrarId)
            .filter(|id| *id != RegistrarId::UNKNOWN)
            .ok_or(SnapshotError::Invalid("registrar ID"))?;
        if config.id.is_some_and(|configured| configured != id) {
            return Err(SnapshotError::Invalid(
                "registrar ID (the configuration names another)",
            ));
        }
        // Its view is a moment old, not empty: it serves at once, and checksums in
        // the peers' heartbeats start an audit where it differs (RFC 5353 §3.6).
        let config = RegistrarConfig {
            id: Some(id),
            ..config
        };
        let mut engine = Self::starting(config, seed, Phase::Normal, now);
        let mut adopted = Adopted::default();
        while !r.is_empty() {
            engine.adopt_pool(&mut r, now, &mut adopted)?;
        }
        Ok((engine, adopted))
    }

    fn adopt_pool(
        &mut self,
        r: &mut SnapshotReader<'_>,
        now: Instant,
        adopted: &mut Adopted,
    ) -> Result<(), SnapshotError> {
        let decoded = AsapMessage::decode(r.bytes()?).map(|decoded| decoded.message);
        let Ok(AsapMessage::HandleResolutionResponse(answer)) = decoded else {
            return Err(SnapshotError::Invalid("pool"));
        };
        for element in answer.pool_elements {
            let left = r.duration()?;
            let life = Duration::from_millis(u64::from(element.registration_life_ms));
            let key = crate::handlespace::PoolElementKey {
                pool_handle: answer.pool_handle,
                pe_id: element.id,
            };
            match self
                .handlespace
                .upsert(answer.pool_handle, element, None, now)
            {
                Ok(_) => {
                    self.handlespace.set_expiry(&key, now + left.min(life));
                    adopted.pool_elements += 1;
                }
                Err(_) => adopted.refused += 1,
            }
        }
        Ok(())
    }
}
