//! Where one PE stands with its registrars (RFC 5352 §3.1, §3.2: registration,
//! re-registration, deregistration), and what its timers ask for.

use std::time::Instant;

/// A registration or deregistration awaiting its answer (T2, RFC 5352 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Request {
    /// When it went out (for the round trip).
    pub(super) sent: Instant,
    pub(super) deadline: Instant,
    pub(super) attempts: u32,
}

/// Where one PE stands with its registrars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// Registering and registered. `registered`: a registration was accepted (here or
    /// at an earlier registrar); `request`: the registration out; `next`: when to
    /// register again (T4, or a retry after a refusal).
    Serving {
        registered: bool,
        request: Option<Request>,
        next: Option<Instant>,
    },
    /// Deregistration asked for; `request`: the deregistration out (none while no
    /// registrar is up: it goes out when one is).
    Leaving { request: Option<Request> },
}

impl Standing {
    pub(super) const NEW: Self = Self::Serving {
        registered: false,
        request: None,
        next: None,
    };

    pub(super) fn deadlines(self) -> [Option<Instant>; 2] {
        match self {
            Self::Serving { request, next, .. } => [request.map(|r| r.deadline), next],
            Self::Leaving { request } => [request.map(|r| r.deadline), None],
        }
    }

    /// Serving, with nothing out, and the next registration due after `now`.
    pub(super) fn waits_until_after(self, now: Instant) -> bool {
        matches!(self, Self::Serving { request: None, next: Some(next), .. } if next > now)
    }

    pub(super) const fn is_leaving(self) -> bool {
        matches!(self, Self::Leaving { .. })
    }

    /// What time asks of a PE at `now`, if anything.
    pub(super) fn due(self, now: Instant) -> Option<Due> {
        match self {
            Self::Serving {
                request: Some(request),
                ..
            } => (request.deadline <= now).then_some(Due::RegistrationUnanswered(request.attempts)),
            Self::Serving {
                request: None,
                next: Some(next),
                ..
            } => (next <= now).then_some(Due::Register),
            Self::Serving { .. } => None,
            Self::Leaving {
                request: Some(request),
            } => {
                (request.deadline <= now).then_some(Due::DeregistrationUnanswered(request.attempts))
            }
            Self::Leaving { request: None } => None,
        }
    }
}

/// A PE's timer that ran out.
#[derive(Debug, Clone, Copy)]
pub(super) enum Due {
    Register,
    RegistrationUnanswered(u32),
    DeregistrationUnanswered(u32),
}
