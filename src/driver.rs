//! The one event loop that runs any protocol engine (ARCHITECTURE.md §2): it feeds the
//! engine carrier events, timer expiries and role commands, each with the time, and
//! after every mutation drains the engine's outputs into the transports.
//!
//! Time is tokio's, so a paused tokio clock reaches every engine timer. Role commands
//! are closures run on the driver's task: a command and the events it causes are
//! ordered. The engine sits behind a mutex that the driver holds for each step (never
//! across an await), so that a role may also call an engine method that queues no
//! output on its own task ([`Shared`]): the pool user answers cache hits that way,
//! without two task switches per resolution.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rserpool_proto::engine::{Engine, Output};
use rserpool_proto::wire::Protocol;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::transport::{EngineInput, Incoming, Transports};

/// A role command: runs on the driver's task with the engine and the current time,
/// and says whether the driver goes on.
pub(crate) type Command<E> = Box<dyn FnOnce(&mut E, Instant) -> Flow + Send>;

/// What the driver does after a command.
pub(crate) enum Flow {
    /// Goes on.
    Go,
    /// Handles nothing more (no input, no timer, no command) until the sender is
    /// dropped: the engine stays as the command left it (an upgrade's record of it
    /// stays true while the new process starts).
    HoldUntil(tokio::sync::oneshot::Receiver<()>),
}

/// A held driver ([`Handle::hold`]): it goes on when this is dropped.
pub(crate) struct Held {
    _release: tokio::sync::oneshot::Sender<()>,
}

/// The current time as the engines see it.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Commands queued for one driver before senders wait.
pub(crate) const COMMAND_QUEUE: usize = 1024;

/// An engine shared between its driver and the role that started it.
pub(crate) type Shared<E> = Arc<Mutex<E>>;

/// Locks a shared engine; a panic while it was held (a bug) leaves it usable as it is.
pub(crate) fn lock<E>(engine: &Shared<E>) -> MutexGuard<'_, E> {
    engine
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `engine` until `shutdown`, reporting its events to `sink`.
pub(crate) async fn run<E, S>(
    engine: Shared<E>,
    mut transports: Transports,
    mut incoming: mpsc::Receiver<Incoming>,
    mut commands: mpsc::Receiver<Command<E>>,
    mut sink: S,
    shutdown: CancellationToken,
) where
    E: Engine,
    S: FnMut(E::Event),
{
    let mut deadline = drain(&mut *lock(&engine), &mut transports, &mut sink);
    // Waited on across iterations (registering anew takes the token's lock twice).
    let shutting_down = shutdown.cancelled();
    tokio::pin!(shutting_down);
    loop {
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            biased;
            () = &mut shutting_down => break,
            Some(command) = commands.recv() => Step::Command(command),
            Some(event) = incoming.recv() => match transports.accept(event) {
                Some(input) => Step::Input(input),
                None => continue,
            },
            () = sleep => Step::Timeout,
        };
        let timed = match (&step, transports.handling_histogram) {
            (Step::Input(EngineInput::Message(message)), Some(name)) => {
                Some((name, message.protocol, now()))
            }
            _ => None,
        };
        let flow = {
            let mut locked = lock(&engine);
            let flow = match step {
                Step::Command(command) => command(&mut locked, now()),
                Step::Input(input) => {
                    feed(&mut *locked, input);
                    Flow::Go
                }
                Step::Timeout => {
                    locked.handle_timeout(now());
                    Flow::Go
                }
            };
            deadline = drain(&mut *locked, &mut transports, &mut sink);
            flow
        };
        if let Some((name, protocol, started)) = timed {
            let protocol = match protocol {
                Protocol::Asap => "asap",
                Protocol::Enrp => "enrp",
            };
            metrics::histogram!(name, "protocol" => protocol)
                .record(now().saturating_duration_since(started).as_secs_f64());
        }
        if let Flow::HoldUntil(released) = flow {
            tokio::select! {
                biased;
                () = &mut shutting_down => break,
                _ = released => {}
            }
        }
    }
    transports.close_all();
}

/// What woke the driver.
enum Step<E> {
    Command(Command<E>),
    Input(EngineInput),
    Timeout,
}

fn feed<E: Engine>(engine: &mut E, input: EngineInput) {
    let now = now();
    match input {
        EngineInput::Up { assoc, peer } => engine.handle_association_up(assoc, peer, now),
        EngineInput::Down { assoc } => engine.handle_association_down(assoc, now),
        EngineInput::Message(message) => {
            engine.handle_message(message.assoc, message.protocol, &message.payload, now)
        }
        EngineInput::Datagram(datagram) => {
            engine.handle_datagram(datagram.from, datagram.protocol, &datagram.payload, now)
        }
    }
}

/// Performs the engine's outputs until it says when to call back. Associations whose
/// send queue overflowed are reported down (and the outputs that causes drained too).
fn drain<E: Engine>(
    engine: &mut E,
    transports: &mut Transports,
    sink: &mut impl FnMut(E::Event),
) -> Option<Instant> {
    loop {
        let mut stuck = Vec::new();
        let deadline = loop {
            match engine.poll_output() {
                Output::Transmit { assoc, payload, .. } => {
                    if let Err(assoc) = transports.send(assoc, payload) {
                        stuck.push(assoc);
                    }
                }
                Output::Datagram { protocol, payload } => transports.datagram(protocol, &payload),
                Output::Connect {
                    assoc,
                    to,
                    protocol,
                } => transports.connect(assoc, to, protocol),
                Output::Close { assoc } => transports.close(assoc),
                Output::Event(event) => sink(event),
                Output::Timeout(deadline) => break deadline,
            }
        };
        if stuck.is_empty() {
            return deadline;
        }
        for assoc in stuck {
            engine.handle_association_down(assoc, now());
        }
    }
}

/// A running engine's command queue.
#[derive(Debug)]
pub(crate) struct Handle<E> {
    commands: mpsc::Sender<Command<E>>,
}

impl<E> Clone for Handle<E> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
        }
    }
}

impl<E: Engine + 'static> Handle<E> {
    /// A queue and its receiving end, for [`run`].
    pub(crate) fn new() -> (Self, mpsc::Receiver<Command<E>>) {
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        (Self { commands }, receiver)
    }

    /// Runs a command on the engine; false if the driver has stopped.
    pub(crate) async fn command(
        &self,
        command: impl FnOnce(&mut E, Instant) + Send + 'static,
    ) -> bool {
        self.commands
            .send(Box::new(move |engine, now| {
                command(engine, now);
                Flow::Go
            }))
            .await
            .is_ok()
    }

    /// Asks the engine something and holds the driver right after (nothing else
    /// reaches the engine) until the returned [`Held`] is dropped; `None` if the
    /// driver has stopped.
    pub(crate) async fn hold<T: Send + 'static>(
        &self,
        query: impl FnOnce(&E, Instant) -> T + Send + 'static,
    ) -> Option<(T, Held)> {
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel();
        let command: Command<E> = Box::new(move |engine, now| {
            let _ = answer_tx.send(query(engine, now));
            Flow::HoldUntil(released)
        });
        self.commands.send(command).await.ok()?;
        let answer = answer_rx.await.ok()?;
        Some((answer, Held { _release: release }))
    }

    /// Asks the engine something; `None` if the driver has stopped.
    pub(crate) async fn ask<T: Send + 'static>(
        &self,
        query: impl FnOnce(&E) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.command(move |engine, _| {
            let _ = tx.send(query(engine));
        })
        .await;
        rx.await.ok()
    }
}
