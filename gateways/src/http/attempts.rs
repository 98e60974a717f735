//! The decisions of one proxied request, apart from its I/O (sans-IO, like the session
//! layer in `rserpool_proto::session`): which of the PEs the pool's policy listed to
//! try next, whether a failed attempt is reported to the registrar, and when to give up
//! with which status. The async proxy only executes them.
//!
//! The rules (README, "HTTP gateway"):
//! * a request goes to the next PE if nothing reached the PE that failed (a refused or
//!   failed connect: any method), or if it is idempotent (RFC 9110 §9.2.2) and its
//!   body was kept whole: a request that may have been applied is never sent twice;
//! * a non-idempotent request with an `Idempotency-Key` (a keyed route) is also sent
//!   to the next PE when its PE broke or timed out before answering, but only then;
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
//!   PE the request may use is at its limit, the answer is 503 (with `Retry-After`);
//! * an attempt without an answer after the route's hedge delay may be *hedged*: the
//!   request goes to the next PE as well, and the first answer worth delivering wins
//!   (the other attempt is dropped). Only requests that may be sent again are hedged;
//!   a hedge uses up an attempt and is paid from the budget like a retry; at most two
//!   attempts are under way at once. While two are, one that fails or answers a status
//!   the route retries just leaves the other to go on alone.
//!
//! Each state is a type: a [`Step`] is either an [`Attempt`] under way, which ends
//! in success (dropped) or in [`Attempt::failed`], or the end ([`GiveUp`]); an attempt
//! and its hedge make a [`Race`], which ends in one of them.

use http::{Method, StatusCode};

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
    /// A non-idempotent request carrying an `Idempotency-Key` its PEs honour: it may
    /// be sent to the next PE when its PE broke or went silent before answering (the
    /// session's state, carried by its cookie, has it applied once), but it is never
    /// hedged nor sent on after an answer.
    pub(crate) keyed: bool,
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
    /// Nothing reached the PE's application, though the PE answered: its TLS
    /// handshake failed (its certificate does not verify, or it speaks no TLS), its
    /// HTTP/2 handshake failed, or it refused the request's stream. Not reported
    /// unreachable: a registrar cannot judge who it is, and it is alive.
    Declined,
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
    /// The first candidate no attempt of this request has used (a hedge may have used
    /// the one after `index`).
    next: usize,
}

/// Two attempts of a request under way at once: the first and its hedge.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Race {
    first: Attempt,
    hedge: Attempt,
}

/// What to do with an answer in a [`Race`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RaceAnswer {
    /// Pass it to the client; the other attempt (at candidate `abandoned`) is dropped.
    Deliver { abandoned: usize },
    /// Drop it (a status the route retries) and wait for the other attempt.
    Continue(Attempt),
}

impl Plan {
    /// How many candidates a request may use.
    fn limit(self) -> usize {
        self.candidates.min(self.max_attempts.max(1))
    }
}

/// The first step of a request.
pub(crate) fn start(plan: Plan) -> Step {
    if plan.candidates == 0 {
        return Step::GiveUp(GiveUp {
            status: StatusCode::BAD_GATEWAY,
            reason: Reason::NoCandidate,
        });
    }
    Step::Try(Attempt {
        plan,
        index: 0,
        next: 1,
    })
}

impl Attempt {
    /// The candidate to send to (an index into the policy's list).
    pub(crate) fn pe(&self) -> usize {
        self.index
    }

    /// The PE is at its limit of requests: the next one, or 503 if none is left.
    pub(crate) fn busy(self) -> Step {
        if self.next >= self.plan.limit() {
            return Step::GiveUp(GiveUp {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: Reason::Busy,
            });
        }
        Step::Try(self.successor())
    }

    /// The attempt at the next unused candidate.
    fn successor(self) -> Self {
        Self {
            plan: self.plan,
            index: self.next,
            next: self.next + 1,
        }
    }

    /// The request may be sent to another PE although this one may have applied it.
    fn resendable(&self) -> bool {
        self.plan.replayable && self.plan.idempotent
    }

    /// Sends the request to the next PE as well while this attempt still waits (a
    /// hedge): only a request that may be sent again, with a candidate left, and
    /// `budget` paying (asked only then); else the attempt goes on alone.
    pub(crate) fn hedge(mut self, budget: impl FnOnce() -> bool) -> Result<Race, Self> {
        if !self.resendable() || self.next >= self.plan.limit() || !budget() {
            return Err(self);
        }
        let hedge = Self {
            plan: self.plan,
            index: self.next,
            next: self.next + 1,
        };
        self.next += 1;
        Ok(Race { first: self, hedge })
    }

    /// The PE answered with `status`: deliver it, or (a status the route retries, a
    /// request that may be sent again, another PE left, `budget` paying) retry.
    pub(crate) fn answered(self, status: StatusCode, budget: impl FnOnce() -> bool) -> Answered {
        let another = self.next < self.plan.limit();
        if self.plan.retry_on.contains(status) && self.resendable() && another && budget() {
            return Answered::Retry(self.successor());
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
                    Failure::NotSent | Failure::Declined | Failure::Lost => StatusCode::BAD_GATEWAY,
                },
                reason,
            })
        };
        let plan = self.plan;
        let resendable = match failure {
            Failure::NotSent | Failure::Declined => plan.replayable,
            Failure::Lost | Failure::TimedOut => plan.replayable && (plan.idempotent || plan.keyed),
        };
        if !resendable {
            return give_up(Reason::NotResendable);
        }
        if self.next >= plan.limit() {
            return give_up(Reason::Exhausted);
        }
        if !budget() {
            return give_up(Reason::BudgetSpent);
        }
        Step::Try(self.successor())
    }
}

impl Race {
    /// The candidate the hedge goes to.
    pub(crate) fn hedge_pe(&self) -> usize {
        self.hedge.index
    }

    /// The attempt at candidate `pe` ended without an answer to deliver (it failed,
    /// could not start, or answered a status the route retries): the other goes on
    /// alone, and its successors skip both PEs.
    pub(crate) fn lost(self, pe: usize) -> Attempt {
        if pe == self.hedge.index {
            self.first
        } else {
            self.hedge
        }
    }

    /// The attempt at candidate `pe` answered with `status`.
    pub(crate) fn answered(self, pe: usize, status: StatusCode) -> RaceAnswer {
        let other = self.lost(pe);
        if other.plan.retry_on.contains(status) {
            RaceAnswer::Continue(other)
        } else {
            RaceAnswer::Deliver {
                abandoned: other.index,
            }
        }
    }
}

/// Whether a request may be sent again after a failure (RFC 9110 §9.2.2).
pub(super) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
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
            keyed: false,
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
        assert!(!Failure::Declined.reports_unreachable());
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
            Just(Outcome::Failed(Failure::Declined)),
            Just(Outcome::Failed(Failure::Lost)),
            Just(Outcome::Failed(Failure::TimedOut)),
            Just(Outcome::Answered(200)),
            Just(Outcome::Answered(503)),
            Just(Outcome::Busy),
        ]
    }

    /// Any request's plan (up to 5 candidates and 4 attempts; 0 is taken as 1).
    fn any_plan() -> impl Strategy<Value = Plan> {
        (0usize..6, 0usize..5, any::<[bool; 3]>()).prop_map(
            |(candidates, max_attempts, [replayable, idempotent, keyed])| Plan {
                candidates,
                max_attempts,
                replayable,
                idempotent,
                keyed,
                retry_on: StatusSet::new(&[502, 503, 504]).unwrap(),
            },
        )
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
            plan in any_plan(),
            outcomes in proptest::collection::vec(outcome(), 6),
            budget in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let Plan { candidates, max_attempts, replayable, idempotent, keyed, .. } = plan;
            let mut step = start(plan);
            let mut tried = Vec::new();
            let mut asked = 0;
            let mut last = None;
            loop {
                match step {
                    Step::Try(attempt) => {
                        tried.push(attempt.pe());
                        if let Some(previous) = last {
                            // A retry after an outcome that may have applied the request.
                            let sent = !matches!(previous, Outcome::Busy);
                            prop_assert!(replayable || !sent);
                            prop_assert!(
                                idempotent
                                    || !sent
                                    || matches!(
                                        previous,
                                        Outcome::Failed(Failure::NotSent | Failure::Declined)
                                    )
                                    || (keyed && matches!(previous, Outcome::Failed(_)))
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

    #[test]
    fn a_hedge_takes_the_next_pe_and_the_survivor_skips_it() {
        let first = attempt(start(plan(4, true, true)));
        let race = first.hedge(|| true).unwrap();
        assert_eq!(race.hedge_pe(), 1);
        // The hedge fails: the first goes on; its successor is candidate 2, not 1.
        let first = race.lost(1);
        assert_eq!(first.pe(), 0);
        assert_eq!(attempt(first.failed(Failure::TimedOut, || true)).pe(), 2);
        // A 503 in a race waits for the other; a 200 is delivered.
        let race = attempt(start(plan(4, true, true))).hedge(|| true).unwrap();
        let RaceAnswer::Continue(hedge) = race.answered(0, StatusCode::SERVICE_UNAVAILABLE) else {
            panic!("a 503 waits for the hedge");
        };
        assert_eq!(hedge.pe(), 1);
        let race = attempt(start(plan(4, true, true))).hedge(|| true).unwrap();
        assert_eq!(
            race.answered(1, StatusCode::OK),
            RaceAnswer::Deliver { abandoned: 0 }
        );
    }

    #[test]
    fn a_keyed_post_goes_on_after_a_loss_but_not_after_an_answer_nor_as_a_hedge() {
        let keyed = Plan {
            keyed: true,
            ..plan(3, true, false)
        };
        let first = attempt(start(keyed));
        let second = attempt(first.failed(Failure::Lost, || true));
        assert_eq!(second.pe(), 1);
        assert_eq!(
            second.answered(StatusCode::SERVICE_UNAVAILABLE, || true),
            Answered::Deliver
        );
        let first = attempt(start(keyed));
        assert!(first.hedge(|| panic!("no budget asked")).is_err());
        let streamed = attempt(start(Plan {
            replayable: false,
            ..keyed
        }));
        assert_eq!(
            end(streamed.failed(Failure::Lost, || true)).reason,
            Reason::NotResendable
        );
    }

    #[test]
    fn posts_streams_the_last_pe_and_a_spent_budget_are_not_hedged() {
        let post = attempt(start(plan(3, true, false)));
        assert!(post.hedge(|| panic!("no budget asked")).is_err());
        let streamed = attempt(start(plan(3, false, true)));
        assert!(streamed.hedge(|| panic!("no budget asked")).is_err());
        let alone = attempt(start(plan(1, true, true)));
        assert!(alone.hedge(|| panic!("no budget asked")).is_err());
        let get = attempt(start(plan(3, true, true)));
        assert!(get.hedge(|| false).is_err());
    }

    /// What happens next to a request with attempts under way.
    #[derive(Debug, Clone, Copy)]
    enum Event {
        /// The hedge delay passed.
        HedgeDue,
        /// The attempt under way, or the older (`false`) or newer of two, ends.
        Ends(bool, Outcome),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::HedgeDue),
            (any::<bool>(), outcome()).prop_map(|(newer, outcome)| Event::Ends(newer, outcome)),
        ]
    }

    /// Attempts under way in the model of a request.
    enum Flight {
        Next(Step),
        One(Attempt, usize),
        Two(Race, [usize; 2]),
    }

    proptest! {
        /// With hedges among the outcomes: a request never goes to a PE twice nor past
        /// its limit, only a request that may be sent again goes to a second PE after one
        /// may have applied it, every hedge and retry is paid by the budget (a busy PE's
        /// successor costs nothing), and at most two attempts are under way at once.
        #[test]
        fn hedges_and_retries_stay_within_the_rules(
            plan in any_plan(),
            events in proptest::collection::vec(event(), 16),
            budget in proptest::collection::vec(any::<bool>(), 16),
        ) {
            let Plan { replayable, idempotent, keyed, .. } = plan;
            let mut budget = budget.into_iter();
            let mut paid = 0;
            let mut pay = || {
                let answer = budget.next().unwrap_or(false);
                paid += usize::from(answer);
                answer
            };
            let mut sent: Vec<usize> = Vec::new();
            let mut free = 0;
            let mut after_busy = false;
            let mut flight = Flight::Next(start(plan));
            let mut events = events.into_iter();
            loop {
                flight = match flight {
                    Flight::Next(Step::GiveUp(_)) => break,
                    Flight::Next(Step::Try(attempt)) => {
                        let pe = attempt.pe();
                        prop_assert!(!sent.contains(&pe));
                        prop_assert!(pe < plan.limit());
                        free += usize::from(after_busy);
                        sent.push(pe);
                        Flight::One(attempt, pe)
                    }
                    Flight::One(attempt, pe) => {
                        let Some(event) = events.next() else { break };
                        after_busy = false;
                        match event {
                            Event::HedgeDue => match attempt.hedge(&mut pay) {
                                Ok(race) => {
                                    let hedge = race.hedge_pe();
                                    prop_assert!(replayable && idempotent);
                                    prop_assert!(!sent.contains(&hedge) && hedge < plan.limit());
                                    sent.push(hedge);
                                    Flight::Two(race, [pe, hedge])
                                }
                                Err(attempt) => Flight::One(attempt, pe),
                            },
                            Event::Ends(_, Outcome::Busy) => {
                                after_busy = true;
                                Flight::Next(attempt.busy())
                            }
                            Event::Ends(_, Outcome::Failed(failure)) => {
                                let next = attempt.failed(failure, &mut pay);
                                if matches!(next, Step::Try(_)) {
                                    prop_assert!(replayable);
                                    prop_assert!(
                                        idempotent
                                            || keyed
                                            || matches!(
                                                failure,
                                                Failure::NotSent | Failure::Declined
                                            )
                                    );
                                }
                                Flight::Next(next)
                            }
                            Event::Ends(_, Outcome::Answered(status)) => {
                                let status = StatusCode::from_u16(status).unwrap();
                                match attempt.answered(status, &mut pay) {
                                    Answered::Retry(next) => {
                                        prop_assert!(replayable && idempotent);
                                        Flight::Next(Step::Try(next))
                                    }
                                    Answered::Deliver => break,
                                }
                            }
                        }
                    }
                    Flight::Two(race, pes) => {
                        let Some(event) = events.next() else { break };
                        match event {
                            Event::HedgeDue => Flight::Two(race, pes),
                            Event::Ends(newer, outcome) => {
                                let (pe, other) = if newer { (pes[1], pes[0]) } else { (pes[0], pes[1]) };
                                match outcome {
                                    Outcome::Answered(200) => break,
                                    Outcome::Answered(status) => {
                                        let status = StatusCode::from_u16(status).unwrap();
                                        let RaceAnswer::Continue(alone) = race.answered(pe, status) else {
                                            prop_assert!(false, "a retried status is delivered in a race");
                                            break;
                                        };
                                        prop_assert_eq!(alone.pe(), other);
                                        Flight::One(alone, other)
                                    }
                                    Outcome::Failed(_) | Outcome::Busy => {
                                        let alone = race.lost(pe);
                                        prop_assert_eq!(alone.pe(), other);
                                        Flight::One(alone, other)
                                    }
                                }
                            }
                        }
                    }
                };
            }
            prop_assert!(sent.len() <= plan.limit());
            // Every PE after the first was paid for, but those after a busy one.
            prop_assert_eq!(paid + free + 1, sent.len().max(1));
        }
    }
}
