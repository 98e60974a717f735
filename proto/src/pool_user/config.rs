//! What a pool user is told: timers, cache and registrars (RFC 5352 §7).

use std::time::Duration;

use crate::engine::TimerProfile;
use crate::handlespace::Limits;
use crate::hunt::HuntConfig;

/// Timers, cache and registrar list of a pool user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUserConfig {
    /// Finding registrars.
    pub hunt: HuntConfig,
    /// T1: how long to wait for a registrar's answer.
    pub request_timeout: Duration,
    /// MAX-REQUEST-RETRANSMIT: resends to one registrar before hunting another.
    pub max_request_retransmits: u32,
    /// How long the current registrar may answer nothing while a request waits
    /// before another is hunted (shorter than T1: a frozen registrar should cost a
    /// client a short stall, not T1 times its retransmissions).
    pub registrar_silence: Duration,
    /// How long a resolution may be answered from the cache (0: ask every time, as
    /// rsplib's tools do).
    pub stale_cache: Duration,
    /// How long after `stale_cache` a pool's last answer may still be served while no
    /// registrar answers (0: never; needs a cache).
    pub max_stale: Duration,
    /// How long a request waits for a registrar before it is answered from such a
    /// last answer.
    pub stale_answer_after: Duration,
    /// How long a request may wait in all (registrars hunted, retransmissions, hunts
    /// again) before it fails with "no registrar": registrars that accept associations
    /// and never answer must not hold it for ever.
    pub give_up_after: Duration,
    /// Failed hunt rounds after which waiting requests fail with "no registrar".
    pub fail_after_hunt_rounds: u32,
    /// Most requests waiting at once; more are refused at once.
    pub max_pending_requests: usize,
    /// Bounds of the cache.
    pub cache_limits: Limits,
}

impl PoolUserConfig {
    /// The profile's values (RFC 5352 §7): RFC T1 15 s with 2 retransmissions, or
    /// rsplib's 3 s with none. No caching by default.
    pub fn new(profile: TimerProfile, hunt: HuntConfig) -> Self {
        let (timeout, retransmits) = match profile {
            TimerProfile::Rfc => (Duration::from_secs(15), 2),
            TimerProfile::Rsplib => (Duration::from_secs(3), 0),
        };
        Self {
            hunt,
            request_timeout: timeout,
            max_request_retransmits: retransmits,
            registrar_silence: Duration::from_secs(2),
            // T1 and its retransmissions at one registrar (45 s with the RFC's timers);
            // rsplib's 3 s T1 gets time for a second registrar.
            give_up_after: (timeout * (retransmits + 1)).max(Duration::from_secs(10)),
            stale_cache: Duration::ZERO,
            max_stale: Duration::ZERO,
            stale_answer_after: Duration::from_millis(500),
            fail_after_hunt_rounds: 1,
            max_pending_requests: 4096,
            cache_limits: Limits::default(),
        }
    }
}
