//! The decisions of one proxied request, apart from its I/O (sans-IO, like the session
//! layer in `rserpool_proto::session`): which of the PEs the pool's policy listed to
//! try next, whether a failed attempt is reported to the registrar, and when to give up
//! with which status. The async proxy only executes them.
//!
//! The rules (README, "HTTP gateway"):
//! * a request goes to the next PE if nothing reached the PE that failed (a refused or
//!   failed connect: any method), or if it is idempotent (RFC 9110 §9.2.2) and its
//!   body was kept whole: a request that may have been applied is never sent twice;
//! * a streamed body is consumed by its first attempt: no retry at all;
//! * at most `max_attempts` PEs, and every retry is paid from the route's retry budget;
//! * a PE that could not be reached or did not answer in time is reported to the
//!   registrar (ENDPOINT_UNREACHABLE); one whose connection broke after the request
//!   was sent is not (it was reachable);
//! * giving up answers 504 if the last attempt timed out, else 502.
//!
//! Each state is a type: a [`Step`] is either an [`Attempt`] under way, which ends
//! in success (dropped) or in [`Attempt::failed`], or the end ([`GiveUp`]).

use http::StatusCode;

/// What a request allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// PEs the pool's policy listed, in its order.
    pub(crate) candidates: usize,
    /// The route's `max_attempts` (at least one attempt is made).
    pub(crate) max_attempts: usize,
    /// The body is kept whole (or is empty), so it can be sent again.
    pub(crate) replayable: bool,
    /// The method is idempotent and the request is no upgrade.
    pub(crate) idempotent: bool,
}

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Nothing reached the PE (the connection was refused or could not be made).
    NotSent,
    /// The request (or part of it) went out and the connection broke before a
    /// response.
    Lost,
    /// No response head within the route's `first_byte_timeout`.
    TimedOut,
}

impl Failure {
    /// Whether the PE is reported unreachable: it could not be reached or did not
    /// answer, not when it broke a connection it had accepted.
    pub(crate) fn reports_unreachable(self) -> bool {
        matches!(self, Self::NotSent | Self::TimedOut)
    }
}

/// Why the request ends without a response from a PE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The pool listed no PE to try.
    NoCandidate,
    /// Every PE the request may go to was tried.
    Exhausted,
    /// The failed request may not be sent again (not idempotent, or its body streamed).
    NotResendable,
    /// The retry budget is spent.
    BudgetSpent,
}

/// The end: the status to answer and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GiveUp {
    pub(crate) status: StatusCode,
    pub(crate) reason: Reason,
}

/// What to do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send the request to a PE.
    Try(Attempt),
    /// Answer without a PE.
    GiveUp(GiveUp),
}

/// An attempt under way: the request goes to candidate `pe()`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Attempt {
    plan: Plan,
    index: usize,
}

/// The first step of a request.
pub(crate) fn start(plan: Plan) -> Step {
    if plan.candidates == 0 {
        return Step::GiveUp(GiveUp {
            status: StatusCode::BAD_GATEWAY,
            reason: Reason::NoCandidate,
        });
    }
    Step::Try(Attempt { plan, index: 0 })
}

impl Attempt {
    /// The candidate to send to (an index into the policy's list).
    pub(crate) fn pe(&self) -> usize {
        self.index
    }

    /// Attempts so far, this one included.
    pub(crate) fn number(&self) -> usize {
        self.index + 1
    }

    /// The attempt failed: the next step. `budget` is asked (once) only when a retry
    /// is otherwise allowed, and pays for it by answering `true`.
    pub(crate) fn failed(self, failure: Failure, budget: impl FnOnce() -> bool) -> Step {
        let give_up = |reason| {
            Step::GiveUp(GiveUp {
                status: match failure {
                    Failure::TimedOut => StatusCode::GATEWAY_TIMEOUT,
                    Failure::NotSent | Failure::Lost => StatusCode::BAD_GATEWAY,
                },
                reason,
            })
        };
        let plan = self.plan;
        let resendable = match failure {
            Failure::NotSent => plan.replayable,
            Failure::Lost | Failure::TimedOut => plan.replayable && plan.idempotent,
        };
        if !resendable {
            return give_up(Reason::NotResendable);
        }
        let next = self.index + 1;
        if next >= plan.candidates.min(plan.max_attempts.max(1)) {
            return give_up(Reason::Exhausted);
        }
        if !budget() {
            return give_up(Reason::BudgetSpent);
        }
        Step::Try(Self { plan, index: next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(candidates: usize, replayable: bool, idempotent: bool) -> Plan {
        Plan {
            candidates,
            max_attempts: 3,
            replayable,
            idempotent,
        }
    }

    fn attempt(step: Step) -> Attempt {
        match step {
            Step::Try(attempt) => attempt,
            Step::GiveUp(end) => panic!("gave up: {end:?}"),
        }
    }

    fn end(step: Step) -> GiveUp {
        match step {
            Step::GiveUp(end) => end,
            Step::Try(attempt) => panic!("tries candidate {}", attempt.pe()),
        }
    }

    #[test]
    fn a_get_goes_on_through_refusals_losses_and_timeouts_then_504() {
        let first = attempt(start(plan(5, true, true)));
        let second = attempt(first.failed(Failure::NotSent, || true));
        let third = attempt(second.failed(Failure::Lost, || true));
        assert_eq!(third.pe(), 2);
        assert_eq!(
            end(third.failed(Failure::TimedOut, || true)),
            GiveUp {
                status: StatusCode::GATEWAY_TIMEOUT,
                reason: Reason::Exhausted
            }
        );
    }

    #[test]
    fn a_post_is_resent_only_when_nothing_reached_the_pe() {
        let first = attempt(start(plan(3, true, false)));
        let second = attempt(first.failed(Failure::NotSent, || true));
        assert_eq!(
            end(second.failed(Failure::Lost, || panic!("no budget asked"))),
            GiveUp {
                status: StatusCode::BAD_GATEWAY,
                reason: Reason::NotResendable
            }
        );
    }

    #[test]
    fn a_streamed_body_is_sent_once() {
        let first = attempt(start(plan(3, false, true)));
        assert_eq!(
            end(first.failed(Failure::NotSent, || true)).reason,
            Reason::NotResendable
        );
    }

    #[test]
    fn no_candidate_and_a_spent_budget_end_the_request() {
        assert_eq!(end(start(plan(0, true, true))).reason, Reason::NoCandidate);
        let first = attempt(start(plan(3, true, true)));
        assert_eq!(
            end(first.failed(Failure::Lost, || false)).reason,
            Reason::BudgetSpent
        );
    }

    #[test]
    fn only_unreached_or_silent_pes_are_reported() {
        assert!(Failure::NotSent.reports_unreachable());
        assert!(Failure::TimedOut.reports_unreachable());
        assert!(!Failure::Lost.reports_unreachable());
    }

    fn failure() -> impl Strategy<Value = Failure> {
        prop_oneof![
            Just(Failure::NotSent),
            Just(Failure::Lost),
            Just(Failure::TimedOut)
        ]
    }

    proptest! {
        /// Whatever the attempts' outcomes and the budget's answers: the request ends,
        /// tries each candidate at most once and in order, never more than
        /// `max_attempts` (at least one), never sends again a request that may have
        /// been applied (not idempotent) or whose body streamed, pays every retry from
        /// the budget, and ends with 504 exactly when its last attempt timed out.
        #[test]
        fn every_outcome_sequence_ends_within_the_rules(
            candidates in 0usize..6,
            max_attempts in 0usize..5,
            replayable: bool,
            idempotent: bool,
            failures in proptest::collection::vec(failure(), 6),
            budget in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let plan = Plan { candidates, max_attempts, replayable, idempotent };
            let mut step = start(plan);
            let mut tried = Vec::new();
            let mut asked = 0;
            let mut last = None;
            loop {
                match step {
                    Step::Try(attempt) => {
                        prop_assert_eq!(attempt.number(), tried.len() + 1);
                        tried.push(attempt.pe());
                        let failure = failures[tried.len() - 1];
                        if let Some(previous) = last {
                            // A retry after a failure that may have applied the request.
                            prop_assert!(replayable);
                            prop_assert!(idempotent || previous == Failure::NotSent);
                        }
                        last = Some(failure);
                        let answer = budget[tried.len() - 1];
                        step = attempt.failed(failure, || {
                            asked += 1;
                            answer
                        });
                    }
                    Step::GiveUp(end) => {
                        let timed_out = last == Some(Failure::TimedOut);
                        prop_assert_eq!(end.status == StatusCode::GATEWAY_TIMEOUT, timed_out);
                        break;
                    }
                }
            }
            prop_assert!(tried.len() <= candidates.min(max_attempts.max(1)));
            prop_assert!(tried.iter().enumerate().all(|(i, pe)| i == *pe));
            // Every retry was paid, and the budget was asked at most once more.
            prop_assert!(tried.len().saturating_sub(1) <= asked && asked <= tried.len());
        }
    }
}
