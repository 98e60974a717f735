//! Drives one registrar engine by hand, as a peer registrar (or a stranger claiming
//! to be one) would talk to it: associations from chosen hosts, ENRP messages, and
//! virtual time that fires the engine's deadlines in order.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "test code: each test binary uses part of the harness"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rserpool_proto::engine::{AssocId, Engine, Output, PeerInfo, TimerProfile, TransportKind};
use rserpool_proto::registrar::{RegistrarConfig, RegistrarEngine, RegistrarEvent};
use rserpool_proto::wire::{
    AsapMessage, EnrpBody, EnrpMessage, Policy, PoolElement, PoolElementId, PoolHandle, Protocol,
    RegistrarId, ServerInformation, Transport, TransportProtocol, TransportUse, UpdateAction,
};

const ME: RegistrarId = RegistrarId(0x10);

pub struct Harness {
    pub engine: RegistrarEngine,
    pub now: Instant,
    pub outputs: Vec<Output<RegistrarEvent>>,
    /// The engine's next deadline.
    deadline: Option<Instant>,
}

pub fn address(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

impl Harness {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    /// A harness whose configuration `change` adjusts (rsplib timers by default).
    pub fn with(change: impl FnOnce(&mut RegistrarConfig)) -> Self {
        let now = Instant::now();
        let mut config = RegistrarConfig {
            id: Some(ME),
            announce_interval: None,
            ..RegistrarConfig::new(TimerProfile::Rsplib)
        };
        change(&mut config);
        let mut harness = Self {
            engine: RegistrarEngine::new(config, 1, now),
            now,
            outputs: Vec::new(),
            deadline: None,
        };
        harness.drain();
        harness
    }

    pub fn drain(&mut self) {
        loop {
            match self.engine.poll_output() {
                Output::Timeout(deadline) => {
                    self.deadline = deadline;
                    return;
                }
                other => self.outputs.push(other),
            }
        }
    }

    /// Lets `by` pass, firing every deadline on the way at its time.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        let mut fired = 0;
        while let Some(at) = self.deadline.filter(|at| *at <= end) {
            fired += 1;
            assert!(
                fired < 10_000,
                "the engine's deadline does not move on: {at:?}"
            );
            self.now = self.now.max(at);
            self.engine.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
    }

    /// An ENRP association `assoc` from 10.0.0.`last` comes up.
    pub fn association(&mut self, assoc: u64, last: u8) {
        let peer = PeerInfo {
            transport: TransportKind::Tcp,
            addresses: vec![address(last)],
            port: 40_000,
            protocol: Protocol::Enrp,
            rtt: None,
            authentication: rserpool_proto::auth::Authentication::Unauthenticated,
        };
        self.engine
            .handle_association_up(AssocId(assoc), peer, self.now);
        self.drain();
    }

    /// An ASAP association `assoc` from 10.0.0.`last`, port `port`, comes up (a PE
    /// or a stranger posing as one).
    pub fn asap_association(&mut self, assoc: u64, last: u8, port: u16) {
        let peer = PeerInfo {
            transport: TransportKind::Tcp,
            addresses: vec![address(last)],
            port,
            protocol: Protocol::Asap,
            rtt: None,
            authentication: rserpool_proto::auth::Authentication::Unauthenticated,
        };
        self.engine
            .handle_association_up(AssocId(assoc), peer, self.now);
        self.drain();
    }

    /// Registers PE `pe_id` of `pool` over `assoc`, whose host is 10.0.0.`last`;
    /// returns the registrar's answer (the error cause's code when refused).
    pub fn register(
        &mut self,
        assoc: u64,
        last: u8,
        pool: &str,
        pe_id: u32,
    ) -> Result<(), rserpool_proto::wire::CauseCode> {
        let mut element = pool_element(pe_id, RegistrarId::UNKNOWN);
        element.asap_transport = None;
        element.user_transport.addresses = vec![address(last)];
        let bytes = AsapMessage::Registration(rserpool_proto::wire::Registration {
            pool_handle: PoolHandle::new(pool.as_bytes()).unwrap(),
            pool_element: element,
        })
        .encode()
        .unwrap();
        self.outputs.clear();
        self.engine
            .handle_message(AssocId(assoc), Protocol::Asap, &bytes, self.now);
        self.drain();
        let answer = self
            .outputs
            .iter()
            .find_map(|o| match o {
                Output::Transmit {
                    assoc: a,
                    protocol: Protocol::Asap,
                    payload,
                } if *a == AssocId(assoc) => match AsapMessage::decode(payload).unwrap().message {
                    AsapMessage::RegistrationResponse(r) => Some(r),
                    _ => None,
                },
                _ => None,
            })
            .expect("a registration response");
        match answer.error {
            Some(error) if answer.reject => Err(error.causes[0].code),
            _ => Ok(()),
        }
    }

    /// An association goes down (or a connect attempt fails).
    pub fn down(&mut self, assoc: u64) {
        self.engine
            .handle_association_down(AssocId(assoc), self.now);
        self.drain();
    }

    /// A peer registrar `id` at 10.0.0.`last` opens an ENRP association and says hello.
    pub fn peer(&mut self, assoc: u64, id: RegistrarId, last: u8) {
        self.association(assoc, last);
        self.presence(assoc, id, last, false);
    }

    /// `id` sends a presence over `assoc`, naming its endpoint at 10.0.0.`last`.
    pub fn presence(&mut self, assoc: u64, id: RegistrarId, last: u8, reply_required: bool) {
        self.enrp(
            assoc,
            id,
            EnrpBody::Presence {
                reply_required,
                checksum: Some(0xffff),
                server_information: Some(ServerInformation {
                    server_id: id,
                    transport: TransportKind::Tcp.transport_parameter(vec![address(last)], 9901),
                }),
            },
        );
    }

    pub fn enrp(&mut self, assoc: u64, sender: RegistrarId, body: EnrpBody) {
        let bytes = EnrpMessage {
            sender,
            receiver: ME,
            body,
        }
        .encode()
        .unwrap();
        self.engine
            .handle_message(AssocId(assoc), Protocol::Enrp, &bytes, self.now);
        self.drain();
    }

    /// The ENRP messages sent since the outputs were last cleared, with their
    /// association.
    pub fn sent_enrp(&self) -> Vec<(AssocId, EnrpBody)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Transmit {
                    assoc,
                    protocol: Protocol::Enrp,
                    payload,
                } => Some((*assoc, EnrpMessage::decode(payload).unwrap().message.body)),
                _ => None,
            })
            .collect()
    }

    /// The ENRP associations opened since the outputs were last cleared.
    pub fn connects(&self) -> Vec<(AssocId, rserpool_proto::engine::Endpoint)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Connect {
                    assoc,
                    to,
                    protocol: Protocol::Enrp,
                } => Some((*assoc, to.clone())),
                _ => None,
            })
            .collect()
    }

    /// The events since the outputs were last cleared.
    pub fn events(&self) -> Vec<RegistrarEvent> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Event(event) => Some(event.clone()),
                _ => None,
            })
            .collect()
    }

    /// Was `assoc` closed by the engine?
    pub fn closed(&self, assoc: u64) -> bool {
        self.outputs
            .iter()
            .any(|o| matches!(o, Output::Close { assoc: a } if *a == AssocId(assoc)))
    }
}

/// A registrar's server information at 10.0.0.`last`:9901.
pub fn server(id: RegistrarId, last: u8) -> ServerInformation {
    ServerInformation {
        server_id: id,
        transport: TransportKind::Tcp.transport_parameter(vec![address(last)], 9901),
    }
}

pub fn pool_element(id: u32, home: RegistrarId) -> PoolElement {
    PoolElement {
        id: PoolElementId(id),
        home_registrar: home,
        registration_life_ms: 60_000,
        user_transport: Transport {
            protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
            port: 7000,
            addresses: vec![address(50)],
        },
        policy: Policy::RoundRobin,
        asap_transport: Some(TransportKind::Tcp.transport_parameter(vec![address(50)], 4000)),
    }
}

pub fn update(action: UpdateAction, element: PoolElement, takeover_suggested: bool) -> EnrpBody {
    EnrpBody::HandleUpdate {
        takeover_suggested,
        action,
        pool_handle: PoolHandle::new(b"EchoPool").unwrap(),
        pool_element: element,
    }
}

pub fn keep_alives(outputs: &[Output<RegistrarEvent>]) -> Vec<(AssocId, bool, PoolElementId)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Transmit {
                assoc,
                protocol: Protocol::Asap,
                payload,
            } => match AsapMessage::decode(payload).unwrap().message {
                AsapMessage::EndpointKeepAlive(k) => Some((*assoc, k.home, k.pe_id.unwrap())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
