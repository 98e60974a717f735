//! rsplib's CalcApp service (PPID 34): a client's Request is a job of `job size`
//! calculations; the PE accepts it (or rejects it while it runs its most jobs),
//! computes at its capacity in calculations per second shared equally among its jobs,
//! and sends Complete when done. A cookie (job ID, size, calculations completed) goes
//! out every `cookie_max_calculations` or `cookie_max_time`, so that a PE the session
//! fails over to resumes the job where the cookie says. Keep-alives both ways: the PE
//! sends one every 2.5 s while a job runs and drops the session of a client that does
//! not acknowledge within 2.5 s; a client's keep-alive is acknowledged. The load the
//! PE reports is jobs / most jobs.
//!
//! Unlike rsplib's PE, ours also sends a cookie right after each message it says on
//! its own (Accept, KeepAlive, Complete): our gateway replays a session from its last
//! cookie and drops the new PE's output the client already has, which works only if
//! nothing the new PE would not repeat was said after that cookie. rsplib's clients
//! just keep the newest cookie.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::service::load::{Occupancy, Place};
use crate::service::{Event, Session};

use super::messages::{self, MessageBuffer, MessageError};

const REQUEST: u8 = 1;
const ACCEPT: u8 = 2;
const REJECT: u8 = 3;
const ABORT: u8 = 4;
const COMPLETE: u8 = 5;
const KEEP_ALIVE: u8 = 6;
const KEEP_ALIVE_ACK: u8 = 7;
/// Every message: header, job ID (u32), job size (u64), completed (u64).
const MESSAGE: usize = messages::HEADER + 4 + 8 + 8;
/// rsplib's keep-alive interval and timeout on the PE side.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(2_500);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_millis(2_500);
/// How often a running job looks at its share of the capacity, which changes as
/// other sessions' jobs start and end.
const PROGRESS_STEP: Duration = Duration::from_millis(100);

/// A CalcApp PE's settings (rsplib's `-capcapacity`, `-capcookiemaxcalculations`,
/// `-capcookiemaxtime`; its most jobs are the [`Occupancy`]'s maximum).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CalcAppOptions {
    pub(crate) calculations_per_second: f64,
    pub(crate) cookie_max_calculations: u64,
    pub(crate) cookie_max_time: Duration,
}

/// One CalcApp message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message {
    kind: u8,
    job_id: u32,
    job_size: u64,
    completed: u64,
}

impl Message {
    fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let kind = bytes.first().copied().unwrap_or(0);
        let job_id = bytes.get(4..8).and_then(|b| b.try_into().ok());
        match (bytes.len(), job_id) {
            (MESSAGE, Some(job_id)) => Ok(Self {
                kind,
                job_id: u32::from_be_bytes(job_id),
                job_size: messages::u64_at(bytes, 8).unwrap_or(0),
                completed: messages::u64_at(bytes, 16).unwrap_or(0),
            }),
            (length, _) => Err(MessageError::Invalid {
                kind,
                length,
                problem: "CalcApp messages have 24 bytes",
            }),
        }
    }

    fn encode(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(MESSAGE);
        bytes.extend_from_slice(&messages::header(self.kind, MESSAGE));
        bytes.extend_from_slice(&self.job_id.to_be_bytes());
        bytes.extend_from_slice(&self.job_size.to_be_bytes());
        bytes.extend_from_slice(&self.completed.to_be_bytes());
        bytes
    }
}

/// A job this session runs, counted in the PE's jobs while it runs.
#[derive(Debug)]
struct Job {
    id: u32,
    size: u64,
    completed: f64,
    place: Place,
    /// The last cookie: the calculations it covered and when it went out.
    cookie_at: (f64, Instant),
    /// The next keep-alive to send, and since when one is unanswered.
    keep_alive_at: Instant,
    unanswered_since: Option<Instant>,
}

impl Job {
    fn message(&self, kind: u8) -> Vec<u8> {
        Message {
            kind,
            job_id: self.id,
            job_size: self.size,
            completed: (self.completed as u64).min(self.size),
        }
        .encode()
    }

    /// rsplib's CalcApp cookie: job ID, size and calculations completed (20 bytes).
    fn cookie(&self) -> Vec<u8> {
        self.message(0).split_off(messages::HEADER)
    }
}

/// A job a cookie describes (`None`: not a CalcApp cookie).
fn job_of_cookie(cookie: &[u8]) -> Option<(u32, u64, u64)> {
    let job_id = u32::from_be_bytes(*cookie.first_chunk::<4>()?);
    let size = messages::u64_at(cookie, 4)?;
    let completed = messages::u64_at(cookie, 12)?;
    (cookie.len() == 20).then_some((job_id, size, completed))
}

/// One CalcApp session: its job (one at a time, as rsplib's clients send them).
struct CalcAppSession {
    session: Session,
    jobs: Arc<Occupancy>,
    options: CalcAppOptions,
    job: Option<Job>,
    last_step: Instant,
}

/// Serves one CalcApp session until the client goes, stops answering keep-alives, or
/// sends an invalid message (an error).
pub(crate) async fn serve(
    session: Session,
    jobs: Arc<Occupancy>,
    options: CalcAppOptions,
) -> std::io::Result<()> {
    let mut calcapp = CalcAppSession {
        session,
        jobs,
        options,
        job: None,
        last_step: Instant::now(),
    };
    let result = calcapp.run().await;
    // A job that neither completed nor moved on is said to have ended here (an
    // operator, and the tests, tell a running job from one that is gone by these).
    if let Some(job) = &calcapp.job {
        let reason = match &result {
            Ok(()) => "its session ended",
            Err(_) => "its session failed",
        };
        tracing::info!(job = job.id, reason, "CalcApp job ended");
    }
    result
}

impl CalcAppSession {
    /// Serves the session's messages and its job until the session ends.
    async fn run(&mut self) -> std::io::Result<()> {
        let mut buffer = MessageBuffer::default();
        loop {
            let now = Instant::now();
            self.progress(now).await?;
            if self.client_is_silent(now) {
                if let Some(job) = self.job.take() {
                    let reason = "the client did not acknowledge a keep-alive";
                    tracing::info!(job = job.id, reason, "CalcApp job ended");
                }
                return Ok(());
            }
            let deadline = self.job.as_ref().map(|_| now + PROGRESS_STEP);
            match self.session.next_event_before(deadline).await? {
                None => {}
                Some(Event::Data(bytes)) => {
                    buffer.push(&bytes);
                    while let Some(bytes) = buffer.next_message()? {
                        let message = Message::decode(&bytes)?;
                        self.on_message(message).await?;
                    }
                }
                Some(Event::CookieEcho(cookie)) => self.resume(&cookie).await?,
                Some(Event::BusinessCard(_)) => {}
                Some(Event::Closed) => return Ok(()),
            }
        }
    }

    /// Starts a job at `completed` calculations, or rejects it when the PE is full.
    async fn start(&mut self, id: u32, size: u64, completed: u64) -> std::io::Result<bool> {
        let Some(place) = self
            .job
            .take()
            .map(|job| job.place)
            .or_else(|| self.jobs.try_take())
        else {
            let reject = Message {
                kind: REJECT,
                job_id: id,
                job_size: size,
                completed,
            };
            self.session.send(&reject.encode()).await?;
            return Ok(false);
        };
        let now = Instant::now();
        self.last_step = now;
        self.job = Some(Job {
            id,
            size,
            completed: completed as f64,
            place,
            cookie_at: (completed as f64, now),
            keep_alive_at: now + KEEP_ALIVE_INTERVAL,
            unanswered_since: None,
        });
        Ok(true)
    }

    /// Sends a message the PE says on its own (not an answer the client's input
    /// determines), then a cookie of the job state it names: a gateway takes an opaque
    /// cookie to cover the PE's output so far, and a PE that took the session over
    /// would not say this message again, so none may follow a cookie uncovered.
    async fn say(&mut self, message: Vec<u8>) -> std::io::Result<()> {
        self.session.send(&message).await?;
        let cookie = message.get(messages::HEADER..).unwrap_or_default().to_vec();
        if let Some(job) = &mut self.job {
            job.cookie_at = (job.completed, Instant::now());
        }
        self.session.send_opaque_cookie(cookie).await
    }

    async fn on_message(&mut self, message: Message) -> std::io::Result<()> {
        match message.kind {
            // The job this session runs already (resumed from a cookie): accepted again,
            // not started over.
            REQUEST
                if self
                    .job
                    .as_ref()
                    .is_some_and(|job| job.id == message.job_id) =>
            {
                if let Some(job) = &self.job {
                    let accept = job.message(ACCEPT);
                    self.say(accept).await?;
                }
            }
            REQUEST => {
                if self.start(message.job_id, message.job_size, 0).await?
                    && let Some(job) = &self.job
                {
                    tracing::info!(job = job.id, size = job.size, "CalcApp job accepted");
                    let accept = job.message(ACCEPT);
                    self.say(accept).await?;
                }
            }
            KEEP_ALIVE => {
                let ack = Message {
                    kind: KEEP_ALIVE_ACK,
                    ..message
                };
                self.session.send(&ack.encode()).await?;
            }
            KEEP_ALIVE_ACK => {
                if let Some(job) = &mut self.job {
                    job.unanswered_since = None;
                }
            }
            ABORT => {
                if let Some(job) = self.job.take() {
                    tracing::info!(
                        job = job.id,
                        reason = "the client aborted it",
                        "CalcApp job ended"
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A failover brought the session here: the job goes on from the cookie (or is
    /// rejected when this PE is full). A cookie of a finished job starts nothing.
    async fn resume(&mut self, cookie: &[u8]) -> std::io::Result<()> {
        if let Some((id, size, completed)) = job_of_cookie(cookie)
            && completed < size
            && self.start(id, size, completed).await?
        {
            tracing::info!(
                job = id,
                size,
                completed,
                "CalcApp job resumed from a cookie"
            );
        }
        Ok(())
    }

    /// Calculates for the time since the last step at the job's share of the
    /// capacity; sends Complete, cookies and keep-alives when they are due.
    async fn progress(&mut self, now: Instant) -> std::io::Result<()> {
        let elapsed = now.saturating_duration_since(self.last_step);
        self.last_step = now;
        let share = self.options.calculations_per_second / self.jobs.count().max(1) as f64;
        let Some(job) = &mut self.job else {
            return Ok(());
        };
        job.completed = (job.completed + share * elapsed.as_secs_f64()).min(job.size as f64);
        if job.completed >= job.size as f64 {
            tracing::info!(job = job.id, size = job.size, "CalcApp job completed");
            let complete = job.message(COMPLETE);
            self.job = None;
            return self.say(complete).await;
        }
        if now >= job.keep_alive_at {
            job.keep_alive_at = now + KEEP_ALIVE_INTERVAL;
            job.unanswered_since.get_or_insert(now);
            let keep_alive = job.message(KEEP_ALIVE);
            return self.say(keep_alive).await;
        }
        let (covered, at) = job.cookie_at;
        if job.completed - covered >= self.options.cookie_max_calculations as f64
            || now.saturating_duration_since(at) >= self.options.cookie_max_time
        {
            job.cookie_at = (job.completed, now);
            let cookie = job.cookie();
            self.session.send_opaque_cookie(cookie).await?;
        }
        Ok(())
    }

    fn client_is_silent(&self, now: Instant) -> bool {
        self.job
            .as_ref()
            .and_then(|job| job.unanswered_since)
            .is_some_and(|since| now.saturating_duration_since(since) >= KEEP_ALIVE_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn messages_round_trip_and_have_24_bytes() {
        let message = Message {
            kind: COMPLETE,
            job_id: 9,
            job_size: 1_000,
            completed: 1_000,
        };
        let bytes = message.encode();
        assert_eq!(bytes.len(), 24);
        assert_eq!(&bytes[..4], &[COMPLETE, 0, 0, 24]);
        assert_eq!(Message::decode(&bytes).unwrap(), message);
        assert!(Message::decode(&bytes[..20]).is_err());
    }

    #[test]
    fn a_cookie_names_the_job_and_its_progress() {
        let cookie = [
            &7u32.to_be_bytes()[..],
            &500u64.to_be_bytes(),
            &120u64.to_be_bytes(),
        ]
        .concat();
        assert_eq!(job_of_cookie(&cookie), Some((7, 500, 120)));
        assert_eq!(job_of_cookie(&cookie[..19]), None);
        assert_eq!(job_of_cookie(b"<PP-TD1>\0\0\0\0\0\0\0\x01"), None);
    }
}
