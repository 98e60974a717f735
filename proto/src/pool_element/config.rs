//! What a pool element engine is configured with, and what one PE registers.

use std::time::Duration;

use crate::engine::TimerProfile;
use crate::hunt::HuntConfig;
use crate::wire::{Policy, PoolElementId, PoolHandle, Transport};

/// Timers and the registrar list of a pool element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolElementConfig {
    /// Finding registrars.
    pub hunt: HuntConfig,
    /// T2: how long to wait for ASAP_REGISTRATION_RESPONSE.
    pub registration_timeout: Duration,
    /// MAX-REG-ATTEMPT: registrations sent to one registrar before hunting another.
    pub max_registration_attempts: u32,
    /// T3: how long to wait for ASAP_DEREGISTRATION_RESPONSE.
    pub deregistration_timeout: Duration,
    /// Deregistrations sent before giving up (the registration then just expires).
    pub max_deregistration_attempts: u32,
    /// Wait before trying again after a first refusal that may pass (lack of
    /// resources, an address the registrar does not take); it doubles with each
    /// refusal in a row, up to `max_refusal_retry_delay`, with up to 25 % jitter so
    /// that PEs refused together do not come back together.
    pub refusal_retry_delay: Duration,
    /// The longest wait between two refused registrations.
    pub max_refusal_retry_delay: Duration,
    /// Whose keep-alive with the H flag may move this PE to a new home when no TLS
    /// identity proves the sender.
    pub home_changes: HomeChanges,
    /// A load change larger than this (a share of 0xFFFFFFFF; rsplib's PEs use 1 %)
    /// re-registers at once; a smaller one waits for the next re-registration.
    pub load_threshold: u32,
    /// The least time between two registrations that load changes cause, so that a
    /// load that changes all the time costs the registrar a bounded rate.
    pub min_load_interval: Duration,
}

/// 1 % of the policy parameter's load range.
pub const LOAD_THRESHOLD: u32 = u32::MAX / 100;

/// Who may take a PE over when identities are not enforced (security.md T14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum HomeChanges {
    /// A registrar on the host of one this PE was configured with, hunted or heard
    /// announced: a stranger who reaches the ASAP endpoint cannot detach the PE from
    /// its registrar. A registrar this PE knows nothing of cannot take it over either.
    /// (`known` in configuration files.)
    #[default]
    #[cfg_attr(feature = "serde", serde(rename = "known"))]
    KnownRegistrars,
    /// Any peer that reaches the ASAP endpoint (rsplib's behaviour).
    Any,
}

impl PoolElementConfig {
    /// The profile's values (RFC 5352 §7): RFC T2/T3 30 s and 2 attempts, or rsplib's
    /// 3 s and 1 attempt.
    pub fn new(profile: TimerProfile, hunt: HuntConfig) -> Self {
        let (timeout, attempts) = match profile {
            TimerProfile::Rfc => (Duration::from_secs(30), 2),
            TimerProfile::Rsplib => (Duration::from_secs(3), 1),
        };
        Self {
            hunt,
            registration_timeout: timeout,
            max_registration_attempts: attempts,
            deregistration_timeout: timeout,
            max_deregistration_attempts: attempts,
            refusal_retry_delay: Duration::from_secs(1),
            max_refusal_retry_delay: Duration::from_secs(60),
            home_changes: HomeChanges::default(),
            load_threshold: LOAD_THRESHOLD,
            min_load_interval: Duration::from_secs(1),
        }
    }
}

/// What one PE registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolElementSpec {
    /// The pool to join.
    pub pool_handle: PoolHandle,
    /// The PE identifier; `None` draws a random non-zero one.
    pub id: Option<PoolElementId>,
    /// Where pool users reach it.
    pub user_transport: Transport,
    /// Its policy and current values.
    pub policy: Policy,
    /// T4: how often it re-registers.
    pub reregistration_interval: Duration,
    /// The registration life it advertises; `None` = 3 × the re-registration interval
    /// (as rsplib does).
    pub registration_life: Option<Duration>,
}
