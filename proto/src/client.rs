//! The ASAP client core the PE and PU engines share (RFC 5352 §3.6, the server hunt):
//! the hunt for a home registrar, the association identifiers the engine opens, the
//! seeded generator, and the output queue the driver drains. Each engine adds its own
//! procedures (registration, handle resolution) on top.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use crate::auth::{Authentication, Denied};
use crate::engine::{AssocId, AssocIds, Endpoint, Output};
use crate::hunt::{Hunt, HuntConfig};
use crate::rng::SeededRng;
use crate::wire::{AsapMessage, Protocol, RegistrarId};

/// What a pool element or a pool user holds of its registrars.
#[derive(Debug)]
pub(crate) struct ClientCore<E> {
    pub(crate) hunt: Hunt,
    pub(crate) ids: AssocIds,
    pub(crate) rng: SeededRng,
    pub(crate) out: VecDeque<Output<E>>,
}

impl<E> ClientCore<E> {
    pub(crate) fn new(config: HuntConfig, seed: u64) -> Self {
        Self {
            hunt: Hunt::new(config),
            ids: AssocIds::default(),
            rng: SeededRng::new(seed),
            out: VecDeque::new(),
        }
    }

    /// Starts hunting if there is no registrar and no hunt under way.
    pub(crate) fn ensure(&mut self, now: Instant) {
        self.hunt
            .ensure(now, &mut self.ids, &mut self.rng, &mut self.out);
    }

    /// Gives up the current registrar and hunts again.
    pub(crate) fn drop_current(&mut self, now: Instant) {
        self.hunt
            .drop_current(now, &mut self.ids, &mut self.rng, &mut self.out);
    }

    /// An association came up: whether it is now the home registrar's.
    pub(crate) fn on_up(
        &mut self,
        assoc: AssocId,
        peer: &Authentication,
        now: Instant,
    ) -> Result<bool, Denied> {
        self.hunt.on_up(assoc, peer, now, &mut self.out)
    }

    /// A registrar that took this client over becomes its home.
    pub(crate) fn adopt(
        &mut self,
        assoc: AssocId,
        endpoint: Endpoint,
        id: RegistrarId,
        now: Instant,
    ) {
        self.hunt.adopt(assoc, endpoint, id, now, &mut self.out);
    }

    /// Hunt timers.
    pub(crate) fn on_timeout(&mut self, now: Instant) {
        self.hunt
            .on_timeout(now, &mut self.ids, &mut self.rng, &mut self.out);
    }

    /// A datagram: registrar announces feed the hunt.
    pub(crate) fn on_datagram(
        &mut self,
        from: SocketAddr,
        protocol: Protocol,
        bytes: &[u8],
        now: Instant,
    ) {
        self.hunt.on_datagram(
            from,
            protocol,
            bytes,
            now,
            &mut self.ids,
            &mut self.rng,
            &mut self.out,
        );
    }

    pub(crate) fn event(&mut self, event: E) {
        self.out.push_back(Output::Event(event));
    }

    /// Queues `message` on `assoc`; one that does not encode is reported as the
    /// engine's `warning` event instead.
    pub(crate) fn transmit(
        &mut self,
        assoc: AssocId,
        message: &AsapMessage,
        warning: fn(String) -> E,
    ) {
        match message.encode() {
            Ok(payload) => self.out.push_back(Output::Transmit {
                assoc,
                protocol: Protocol::Asap,
                payload,
            }),
            Err(error) => self.event(warning(format!(
                "cannot encode {}: {error}",
                message.name()
            ))),
        }
    }
}
