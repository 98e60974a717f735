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
//! * giving up answers 504 if the last attempt timed out, else 502;
//! * a response whose status the route retries (`retry_on`: 502, 503, 504 by default)
//!   to a request that may be sent again goes to the next PE instead, within the same
//!   limits; the last PE's answer is delivered as it is;
//! * a PE at its limit of requests waiting for an answer (`max_requests_per_pe`) is
//!   passed over for the next one (it uses up an attempt, not the budget); when every
//!   PE the request may use is at its limit, the answer is 503 (with `Retry-After`).
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
    /// Response statuses that send the request to the next PE.
    pub(crate) retry_on: StatusSet,
}

/// A set of 4xx and 5xx statuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusSet([u128; 2]);

impl StatusSet {
    /// The set of `statuses`; `None` if one is not a 4xx or 5xx status.
    pub fn new(statuses: &[u16]) -> Option<Self> {
        let mut set = Self::default();
        for &status in statuses {
            let bit = status.checked_sub(400).filter(|bit| *bit < 200)?;
            let (word, bit) = (usize::from(bit / 128), bit % 128);
            *set.0.get_mut(word)? |= 1u128 << bit;
        }
        Some(set)
    }

    pub(crate) fn contains(self, status: StatusCode) -> bool {
        let Some(bit) = status.as_u16().checked_sub(400).filter(|bit| *bit < 200) else {
            return false;
        };
        self.0
            .get(usize::from(bit / 128))
            .is_some_and(|word| word & (1u128 << (bit % 128)) != 0)
    }
}

/// What to do with a PE's response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answered {
    /// Pass it to the client.
    Deliver,
    /// Drop it and send the request to the next PE.
    Retry(Attempt),
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
    /// Every PE the request could go to is at its limit of requests.
    Busy,
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

    /// The PE is at its limit of requests: the next one, or 503 if none is left.
    pub(crate) fn busy(self) -> Step {
        let next = self.index + 1;
        if next >= self.plan.candidates.min(self.plan.max_attempts.max(1)) {
            return Step::GiveUp(GiveUp {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: Reason::Busy,
            });
        }
        Step::Try(Self {
            plan: self.plan,
            index: next,
        })
    }

    /// The PE answered with `status`: deliver it, or (a status the route retries, a
    /// request that may be sent again, another PE left, `budget` paying) retry.
    pub(crate) fn answered(self, status: StatusCode, budget: impl FnOnce() -> bool) -> Answered {
        let plan = self.plan;
        let next = self.index + 1;
        let resendable = plan.replayable && plan.idempotent;
        let another = next < plan.candidates.min(plan.max_attempts.max(1));
        if plan.retry_on.contains(status) && resendable && another && budget() {
            return Answered::Retry(Self { plan, index: next });
        }
        Answered::Deliver
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
            retry_on: StatusSet::new(&[502, 503, 504]).unwrap(),
        }
    }

    #[test]
    fn a_503_sends_a_get_on_but_a_post_or_the_last_pe_delivers_it() {
        let first = attempt(start(plan(2, true, true)));
        let Answered::Retry(second) = first.answered(StatusCode::SERVICE_UNAVAILABLE, || true)
        else {
            panic!("a GET answered 503 goes to the next PE");
        };
        assert_eq!(
            second.answered(StatusCode::SERVICE_UNAVAILABLE, || true),
            Answered::Deliver
        );
        let post = attempt(start(plan(2, true, false)));
        assert_eq!(
            post.answered(StatusCode::SERVICE_UNAVAILABLE, || true),
            Answered::Deliver
        );
        let get = attempt(start(plan(2, true, true)));
        assert_eq!(get.answered(StatusCode::OK, || true), Answered::Deliver);
        let get = attempt(start(plan(2, true, true)));
        assert_eq!(
            get.answered(StatusCode::BAD_GATEWAY, || false),
            Answered::Deliver
        );
    }

    #[test]
    fn status_sets_hold_4xx_and_5xx_only() {
        let set = StatusSet::new(&[429, 503, 599]).unwrap();
        assert!(set.contains(StatusCode::TOO_MANY_REQUESTS));
        assert!(set.contains(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!set.contains(StatusCode::BAD_GATEWAY));
        assert!(!set.contains(StatusCode::OK));
        assert_eq!(StatusSet::new(&[200]), None);
        assert_eq!(StatusSet::new(&[600]), None);
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
    fn busy_pes_are_passed_over_without_the_budget_then_503() {
        let first = attempt(start(plan(2, false, false)));
        let second = attempt(first.busy());
        assert_eq!(
            end(second.busy()),
            GiveUp {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: Reason::Busy
            }
        );
    }

    #[test]
    fn only_unreached_or_silent_pes_are_reported() {
        assert!(Failure::NotSent.reports_unreachable());
        assert!(Failure::TimedOut.reports_unreachable());
        assert!(!Failure::Lost.reports_unreachable());
    }

    /// One attempt's outcome: a failure, or a response with this status.
    #[derive(Debug, Clone, Copy)]
    enum Outcome {
        Failed(Failure),
        Answered(u16),
        Busy,
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Failed(Failure::NotSent)),
            Just(Outcome::Failed(Failure::Lost)),
            Just(Outcome::Failed(Failure::TimedOut)),
            Just(Outcome::Answered(200)),
            Just(Outcome::Answered(503)),
            Just(Outcome::Busy),
        ]
    }

    proptest! {
        /// Whatever the attempts' outcomes and the budget's answers: the request ends
        /// (delivered or given up), tries each candidate at most once and in order, never
        /// more than `max_attempts` (at least one), never sends again a request that may
        /// have been applied (not idempotent) or whose body streamed, pays every retry
        /// from the budget, delivers every 200, and gives up with 504 exactly when its
        /// last attempt timed out.
        #[test]
        fn every_outcome_sequence_ends_within_the_rules(
            candidates in 0usize..6,
            max_attempts in 0usize..5,
            replayable: bool,
            idempotent: bool,
            outcomes in proptest::collection::vec(outcome(), 6),
            budget in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let plan = Plan {
                candidates,
                max_attempts,
                replayable,
                idempotent,
                retry_on: StatusSet::new(&[502, 503, 504]).unwrap(),
            };
            let mut step = start(plan);
            let mut tried = Vec::new();
            let mut asked = 0;
            let mut last = None;
            loop {
                match step {
                    Step::Try(attempt) => {
                        prop_assert_eq!(attempt.number(), tried.len() + 1);
                        tried.push(attempt.pe());
                        if let Some(previous) = last {
                            // A retry after an outcome that may have applied the request.
                            let sent = !matches!(previous, Outcome::Busy);
                            prop_assert!(replayable || !sent);
                            prop_assert!(
                                idempotent
                                    || !sent
                                    || matches!(previous, Outcome::Failed(Failure::NotSent))
                            );
                        }
                        let outcome = outcomes[tried.len() - 1];
                        last = Some(outcome);
                        let answer = budget[tried.len() - 1];
                        let asked_before = asked;
                        let pay = || {
                            asked += 1;
                            answer
                        };
                        step = match outcome {
                            Outcome::Busy => attempt.busy(),
                            Outcome::Failed(failure) => attempt.failed(failure, pay),
                            Outcome::Answered(status) => {
                                let status = StatusCode::from_u16(status).unwrap();
                                match attempt.answered(status, pay) {
                                    Answered::Retry(next) => Step::Try(next),
                                    Answered::Deliver => {
                                        // A 503 is delivered only when it may not be retried.
                                        let refused = asked > asked_before && !answer;
                                        let last_pe = tried.len() == candidates.min(max_attempts.max(1));
                                        prop_assert!(
                                            status == StatusCode::OK
                                                || !(replayable && idempotent)
                                                || last_pe
                                                || refused
                                        );
                                        break;
                                    }
                                }
                            }
                        };
                    }
                    Step::GiveUp(end) => {
                        let timed_out = matches!(last, Some(Outcome::Failed(Failure::TimedOut)));
                        prop_assert_eq!(end.status == StatusCode::GATEWAY_TIMEOUT, timed_out);
                        let busy = matches!(last, Some(Outcome::Busy));
                        prop_assert_eq!(end.reason == Reason::Busy, busy);
                        break;
                    }
                }
            }
            prop_assert!(tried.len() <= candidates.min(max_attempts.max(1)));
            prop_assert!(tried.iter().enumerate().all(|(i, pe)| i == *pe));
            // Every retry after a PE was sent to was paid (a busy PE's successor costs
            // nothing), and the budget was asked at most once more.
            let paid_for = outcomes
                .iter()
                .take(tried.len().saturating_sub(1))
                .filter(|o| !matches!(o, Outcome::Busy))
                .count();
            prop_assert!(paid_for <= asked && asked <= tried.len());
        }
    }
}
