//! A deterministic simulator for many engines (ARCHITECTURE.md §4, house style 9):
//! a virtual clock, associations with latency, message loss, partitions, crashes
//! (kill -9: the peers' transport reports the association down) and freezes (SIGSTOP:
//! the node's kernel still accepts associations and queues what arrives, but nothing
//! is processed, sent or answered until it is thawed, and nothing tells the peers).
//! Connects to a host that is not there or not reachable hang until the transport's
//! connect timeout; to a running host with nothing listening, they are refused at once.
//!
//! Every random choice draws from one seed; tests print it so a failure reproduces.

#![allow(
    clippy::disallowed_methods,
    reason = "a real clock for test deadlines and measurements"
)]
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses part of the simulator"
)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rserpool_proto::SeededRng;
use rserpool_proto::auth::Authentication;
use rserpool_proto::engine::{AssocId, Endpoint, Engine, Output, PeerInfo, TransportKind};
use rserpool_proto::pool_element::{PoolElementEngine, PoolElementEvent};
use rserpool_proto::pool_user::{PoolUserEngine, PoolUserEvent};
use rserpool_proto::registrar::{RegistrarEngine, RegistrarEvent};
use rserpool_proto::wire::Protocol;

pub type NodeId = usize;

/// The port registrars accept ASAP on, and PEs accept registrar associations on.
pub const ASAP_PORT: u16 = 3863;
pub const ENRP_PORT: u16 = 9901;
pub const PE_ASAP_PORT: u16 = 4000;
/// How long the daemon's transport waits for a connect that gets no answer (a frozen
/// peer, a partition, a host that is not there) before reporting it down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An event one node reported, with the time.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    Registrar(RegistrarEvent),
    Pe(PoolElementEvent),
    Pu(PoolUserEvent),
}

impl From<RegistrarEvent> for NodeEvent {
    fn from(e: RegistrarEvent) -> Self {
        Self::Registrar(e)
    }
}
impl From<PoolElementEvent> for NodeEvent {
    fn from(e: PoolElementEvent) -> Self {
        Self::Pe(e)
    }
}
impl From<PoolUserEvent> for NodeEvent {
    fn from(e: PoolUserEvent) -> Self {
        Self::Pu(e)
    }
}

/// The engine contract with the event type erased.
pub trait SimEngine {
    fn up(&mut self, assoc: AssocId, peer: PeerInfo, now: Instant);
    fn down(&mut self, assoc: AssocId, now: Instant);
    fn message(&mut self, assoc: AssocId, protocol: Protocol, bytes: &[u8], now: Instant);
    fn datagram(&mut self, from: SocketAddr, protocol: Protocol, bytes: &[u8], now: Instant);
    fn timeout(&mut self, now: Instant);
    fn poll(&mut self) -> Output<NodeEvent>;
}

impl<E> SimEngine for E
where
    E: Engine,
    E::Event: Into<NodeEvent>,
{
    fn up(&mut self, assoc: AssocId, peer: PeerInfo, now: Instant) {
        self.handle_association_up(assoc, peer, now);
    }
    fn down(&mut self, assoc: AssocId, now: Instant) {
        self.handle_association_down(assoc, now);
    }
    fn message(&mut self, assoc: AssocId, protocol: Protocol, bytes: &[u8], now: Instant) {
        self.handle_message(assoc, protocol, bytes, now);
    }
    fn datagram(&mut self, from: SocketAddr, protocol: Protocol, bytes: &[u8], now: Instant) {
        self.handle_datagram(from, protocol, bytes, now);
    }
    fn timeout(&mut self, now: Instant) {
        self.handle_timeout(now);
    }
    fn poll(&mut self) -> Output<NodeEvent> {
        match self.poll_output() {
            Output::Transmit {
                assoc,
                protocol,
                payload,
            } => Output::Transmit {
                assoc,
                protocol,
                payload,
            },
            Output::Datagram { protocol, payload } => Output::Datagram { protocol, payload },
            Output::Connect {
                assoc,
                to,
                protocol,
            } => Output::Connect {
                assoc,
                to,
                protocol,
            },
            Output::Close { assoc } => Output::Close { assoc },
            Output::Event(e) => Output::Event(e.into()),
            Output::Timeout(t) => Output::Timeout(t),
        }
    }
}

#[allow(clippy::large_enum_variant, reason = "a handful of nodes per test")]
pub enum Role {
    Registrar(RegistrarEngine),
    Pe(PoolElementEngine),
    Pu(PoolUserEngine),
}

impl Role {
    fn engine(&mut self) -> &mut dyn SimEngine {
        match self {
            Self::Registrar(e) => e,
            Self::Pe(e) => e,
            Self::Pu(e) => e,
        }
    }
}

pub struct Node {
    pub role: Role,
    pub address: IpAddr,
    /// The port its ASAP associations come from (a PE's ASAP endpoint).
    pub asap_port: u16,
    pub alive: bool,
    pub frozen: bool,
    /// What its certificate proves to the nodes it connects to (TLS in the daemon).
    pub authentication: Authentication,
    pub deadline: Option<Instant>,
    pub events: Vec<(Duration, NodeEvent)>,
    next_incoming: u64,
    /// What arrived while frozen, delivered in order at thaw.
    held: Vec<Delivery>,
}

#[derive(Debug, Clone)]
enum Delivery {
    Connect {
        from: NodeId,
        assoc: AssocId,
        to: Endpoint,
        protocol: Protocol,
    },
    Message {
        to: NodeId,
        assoc: AssocId,
        protocol: Protocol,
        bytes: Vec<u8>,
    },
    Down {
        to: NodeId,
        assoc: AssocId,
    },
    /// A message a frozen node's kernel received: read at thaw even if the sender has
    /// closed the association since (the data came before the close).
    Buffered {
        to: NodeId,
        assoc: AssocId,
        protocol: Protocol,
        bytes: Vec<u8>,
    },
    /// An association a frozen node's kernel accepted, reported to it at thaw.
    Accepted {
        to: NodeId,
        assoc: AssocId,
        peer: PeerInfo,
    },
    Datagram {
        from: NodeId,
        protocol: Protocol,
        bytes: Vec<u8>,
    },
}

pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub nodes: Vec<Node>,
    rng: SeededRng,
    pub seed: u64,
    /// (node, its association) -> (peer node, peer's association).
    links: BTreeMap<(NodeId, AssocId), (NodeId, AssocId)>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    deliveries: BTreeMap<usize, Delivery>,
    sequence: u64,
    pub latency: Duration,
    /// Extra random delay per message, up to this much. Messages on one association
    /// stay in order (as on SCTP and TCP); messages on different ones may not.
    pub jitter: Duration,
    /// The last delivery time scheduled per (node, association): keeps each link FIFO.
    last_on_link: BTreeMap<(NodeId, AssocId), Instant>,
    /// Probability that a message on an association or a datagram is lost.
    pub loss: f64,
    /// Which messages `loss` applies to (protocol and bytes; all by default), as
    /// raft-rs' test network filters messages by type.
    pub loss_filter: fn(Protocol, &[u8]) -> bool,
    partitions: BTreeSet<(NodeId, NodeId)>,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Self {
            start,
            now: start,
            nodes: Vec::new(),
            rng: SeededRng::new(seed),
            seed,
            links: BTreeMap::new(),
            queue: BinaryHeap::new(),
            deliveries: BTreeMap::new(),
            sequence: 0,
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            last_on_link: BTreeMap::new(),
            loss: 0.0,
            loss_filter: |_, _| true,
            partitions: BTreeSet::new(),
        }
    }

    /// The address node `n` gets: 10.0.0.(n+1).
    pub fn address_of(n: NodeId) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n as u8 + 1))
    }

    /// The endpoint of a registrar node's ASAP port.
    pub fn registrar_endpoint(n: NodeId) -> Endpoint {
        Endpoint::new(
            TransportKind::Tcp,
            SocketAddr::new(Self::address_of(n), ASAP_PORT),
        )
    }

    pub fn add(&mut self, role: Role) -> NodeId {
        let id = self.nodes.len();
        let asap_port = match role {
            Role::Pe(_) => PE_ASAP_PORT,
            _ => 40_000 + id as u16,
        };
        self.nodes.push(Node {
            role,
            address: Self::address_of(id),
            asap_port,
            alive: true,
            frozen: false,
            authentication: Authentication::Unauthenticated,
            deadline: Some(self.now),
            events: Vec::new(),
            next_incoming: 1,
            held: Vec::new(),
        });
        id
    }

    /// Puts node `n` on the host of node `with` (same address): for nodes nobody
    /// connects to (pool users), to play several programs of one host.
    pub fn share_host(&mut self, n: NodeId, with: NodeId) {
        self.nodes[n].address = self.nodes[with].address;
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn schedule(&mut self, at: Instant, delivery: Delivery) {
        let slot = self.sequence as usize;
        self.sequence += 1;
        self.deliveries.insert(slot, delivery);
        self.queue.push(Reverse((at, self.sequence, slot)));
    }

    /// When a message sent now reaches its peer on `link`.
    fn arrival(&mut self, link: (NodeId, AssocId)) -> Instant {
        let jitter = self.rng.fraction_of(self.jitter);
        let at = self.now + self.latency + jitter;
        let at = self
            .last_on_link
            .get(&link)
            .map_or(at, |last| at.max(*last));
        self.last_on_link.insert(link, at);
        at
    }

    /// Is this message lost? Draws only for messages the filter lets `loss` apply to.
    fn lost(&mut self, protocol: Protocol, bytes: &[u8]) -> bool {
        self.loss > 0.0
            && (self.loss_filter)(protocol, bytes)
            && (self.rng.below(1_000_000) as f64) < self.loss * 1_000_000.0
    }

    fn reachable(&self, a: NodeId, b: NodeId) -> bool {
        !self.partitions.contains(&(a.min(b), a.max(b)))
    }

    /// Does a connect to `to` fail at once? When a reachable host is there and no
    /// running process listens on the port (the kernel resets it; a crashed process's
    /// host too). A partitioned or an absent host's connects hang.
    fn refuses(&self, from: NodeId, to: &Endpoint) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .any(|(n, node)| to.addresses.contains(&node.address) && self.reachable(from, n))
    }

    /// Drains a node's outputs after a mutation.
    fn drain(&mut self, n: NodeId) {
        loop {
            let output = self.nodes[n].role.engine().poll();
            match output {
                Output::Timeout(deadline) => {
                    self.nodes[n].deadline = deadline;
                    return;
                }
                Output::Event(event) => {
                    let at = self.elapsed();
                    self.nodes[n].events.push((at, event));
                }
                Output::Transmit {
                    assoc,
                    protocol,
                    payload,
                } => {
                    if let Some(&(peer, peer_assoc)) = self.links.get(&(n, assoc))
                        && self.reachable(n, peer)
                        && !self.lost(protocol, &payload)
                    {
                        // Latency and jitter, in order on the association (a stream).
                        let at = self.arrival((n, assoc));
                        self.schedule(
                            at,
                            Delivery::Message {
                                to: peer,
                                assoc: peer_assoc,
                                protocol,
                                bytes: payload,
                            },
                        );
                    }
                }
                Output::Datagram { protocol, payload } => {
                    // Datagrams keep no order: jitter alone decides when each arrives.
                    let at = self.now + self.latency + self.rng.fraction_of(self.jitter);
                    self.schedule(
                        at,
                        Delivery::Datagram {
                            from: n,
                            protocol,
                            bytes: payload,
                        },
                    );
                }
                Output::Connect {
                    assoc,
                    to,
                    protocol,
                } => {
                    let at = self.now + self.latency;
                    self.schedule(
                        at,
                        Delivery::Connect {
                            from: n,
                            assoc,
                            to,
                            protocol,
                        },
                    );
                }
                Output::Close { assoc } => {
                    if let Some((peer, peer_assoc)) = self.links.remove(&(n, assoc)) {
                        self.links.remove(&(peer, peer_assoc));
                        let at = self.now + self.latency;
                        self.schedule(
                            at,
                            Delivery::Down {
                                to: peer,
                                assoc: peer_assoc,
                            },
                        );
                    }
                }
            }
        }
    }

    fn peer_info(&self, n: NodeId, protocol: Protocol) -> PeerInfo {
        PeerInfo {
            transport: TransportKind::Tcp,
            addresses: vec![self.nodes[n].address],
            port: self.nodes[n].asap_port,
            protocol,
            rtt: Some(self.latency * 2),
            authentication: self.nodes[n].authentication.clone(),
        }
    }

    fn listener(&self, to: &Endpoint, protocol: Protocol) -> Option<NodeId> {
        self.nodes.iter().position(|node| {
            to.addresses.contains(&node.address)
                && match (&node.role, protocol) {
                    (Role::Registrar(_), Protocol::Asap) => to.port == ASAP_PORT,
                    (Role::Registrar(_), Protocol::Enrp) => to.port == ENRP_PORT,
                    (Role::Pe(_), Protocol::Asap) => to.port == PE_ASAP_PORT,
                    _ => false,
                }
        })
    }

    fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Connect {
                from,
                assoc,
                to,
                protocol,
            } => {
                if !self.nodes[from].alive {
                    return;
                }
                let target = self
                    .listener(&to, protocol)
                    .filter(|&t| self.nodes[t].alive && self.reachable(from, t));
                let now = self.now;
                if target.is_none() && !self.refuses(from, &to) {
                    // Nothing answers: the connect hangs until the transport gives up.
                    self.schedule(now + CONNECT_TIMEOUT, Delivery::Down { to: from, assoc });
                    return;
                }
                match target {
                    Some(t) => {
                        let incoming = AssocId(self.nodes[t].next_incoming);
                        self.nodes[t].next_incoming += 1;
                        self.links.insert((from, assoc), (t, incoming));
                        self.links.insert((t, incoming), (from, assoc));
                        let peer = self.peer_info(from, protocol);
                        if self.nodes[t].frozen {
                            self.nodes[t].held.push(Delivery::Accepted {
                                to: t,
                                assoc: incoming,
                                peer,
                            });
                        } else {
                            self.nodes[t].role.engine().up(incoming, peer, now);
                            self.drain(t);
                        }
                        let peer = PeerInfo {
                            port: to.port,
                            ..self.peer_info(t, protocol)
                        };
                        if !self.nodes[from].frozen {
                            self.nodes[from].role.engine().up(assoc, peer, now);
                            self.drain(from);
                        }
                    }
                    None => {
                        if !self.nodes[from].frozen {
                            self.nodes[from].role.engine().down(assoc, now);
                            self.drain(from);
                        }
                    }
                }
            }
            Delivery::Message {
                to,
                assoc,
                protocol,
                bytes,
            } => {
                let node = &self.nodes[to];
                if node.alive && node.frozen {
                    self.nodes[to].held.push(Delivery::Buffered {
                        to,
                        assoc,
                        protocol,
                        bytes,
                    });
                } else if node.alive && self.links.contains_key(&(to, assoc)) {
                    self.hand_over(to, assoc, protocol, &bytes);
                }
            }
            Delivery::Down { to, assoc } if self.nodes[to].frozen => {
                self.nodes[to].held.push(Delivery::Down { to, assoc });
            }
            Delivery::Buffered {
                to,
                assoc,
                protocol,
                bytes,
            } => {
                if self.nodes[to].alive {
                    self.hand_over(to, assoc, protocol, &bytes);
                }
            }
            Delivery::Accepted { to, assoc, peer } => {
                if self.nodes[to].alive {
                    let now = self.now;
                    self.nodes[to].role.engine().up(assoc, peer, now);
                    self.drain(to);
                }
            }
            Delivery::Down { to, assoc } => {
                if self.nodes[to].alive {
                    let now = self.now;
                    self.nodes[to].role.engine().down(assoc, now);
                    self.drain(to);
                }
            }
            Delivery::Datagram {
                from,
                protocol,
                bytes,
            } => {
                let source = SocketAddr::new(self.nodes[from].address, self.nodes[from].asap_port);
                for n in 0..self.nodes.len() {
                    if n == from
                        || !self.nodes[n].alive
                        || self.nodes[n].frozen
                        || !self.reachable(from, n)
                        || self.lost(protocol, &bytes)
                    {
                        continue;
                    }
                    let now = self.now;
                    self.nodes[n]
                        .role
                        .engine()
                        .datagram(source, protocol, &bytes, now);
                    self.drain(n);
                }
            }
        }
    }

    /// Gives a message to node `to`'s engine.
    fn hand_over(&mut self, to: NodeId, assoc: AssocId, protocol: Protocol, bytes: &[u8]) {
        let now = self.now;
        self.nodes[to]
            .role
            .engine()
            .message(assoc, protocol, bytes, now);
        self.drain(to);
    }

    /// Runs until `duration` of virtual time has passed.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        // An engine whose deadline never moves past `now` would spin here forever.
        let mut steps_at_instant = 0u32;
        let mut last_instant = self.now;
        loop {
            let next_delivery = self.queue.peek().map(|Reverse((at, _, _))| *at);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.alive && !n.frozen)
                .filter_map(|(i, n)| n.deadline.map(|d| (d, i)))
                .min();
            let next = match (next_delivery, next_timer) {
                (Some(d), Some((t, _))) => d.min(t),
                (Some(d), None) => d,
                (None, Some((t, _))) => t,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if self.now == last_instant {
                steps_at_instant += 1;
                assert!(
                    steps_at_instant < 100_000,
                    "livelock at {:?} (seed {}): node timer {next_timer:?}, delivery {next_delivery:?}",
                    self.elapsed(),
                    self.seed
                );
            } else {
                last_instant = self.now;
                steps_at_instant = 0;
            }
            if next_delivery == Some(next) {
                let Reverse((_, _, slot)) = self.queue.pop().unwrap();
                let delivery = self.deliveries.remove(&slot).unwrap();
                self.deliver(delivery);
            } else if let Some((_, n)) = next_timer {
                let now = self.now;
                self.nodes[n].role.engine().timeout(now);
                self.drain(n);
            }
        }
        self.now = end;
    }

    /// Runs a role command on a node and drains its outputs.
    pub fn with<R>(&mut self, n: NodeId, command: impl FnOnce(&mut Role, Instant) -> R) -> R {
        let now = self.now;
        let result = command(&mut self.nodes[n].role, now);
        self.drain(n);
        result
    }

    /// kill -9: the process is gone; the peers' transport reports its associations down.
    pub fn crash(&mut self, n: NodeId) {
        self.nodes[n].alive = false;
        self.nodes[n].held.clear();
        let links: Vec<_> = self
            .links
            .keys()
            .filter(|(node, _)| *node == n)
            .copied()
            .collect();
        for key in links {
            if let Some((peer, peer_assoc)) = self.links.remove(&key) {
                self.links.remove(&(peer, peer_assoc));
                let at = self.now + self.latency;
                self.schedule(
                    at,
                    Delivery::Down {
                        to: peer,
                        assoc: peer_assoc,
                    },
                );
            }
        }
    }

    /// Starts a crashed node again with a fresh engine (same address).
    pub fn restart(&mut self, n: NodeId, role: Role) {
        self.nodes[n].role = role;
        self.nodes[n].alive = true;
        self.nodes[n].frozen = false;
        self.nodes[n].deadline = Some(self.now);
        let now = self.now;
        self.nodes[n].role.engine().timeout(now);
        self.drain(n);
    }

    /// SIGSTOP: nothing is processed or answered, and the peers are not told.
    pub fn freeze(&mut self, n: NodeId) {
        self.nodes[n].frozen = true;
    }

    pub fn thaw(&mut self, n: NodeId) {
        self.nodes[n].frozen = false;
        for delivery in std::mem::take(&mut self.nodes[n].held) {
            self.deliver(delivery);
        }
        let now = self.now;
        self.nodes[n].role.engine().timeout(now);
        self.drain(n);
    }

    /// Messages between `a` and `b` are lost until [`Sim::heal`].
    pub fn partition(&mut self, a: NodeId, b: NodeId) {
        self.partitions.insert((a.min(b), a.max(b)));
    }

    pub fn heal(&mut self, a: NodeId, b: NodeId) {
        self.partitions.remove(&(a.min(b), a.max(b)));
    }

    pub fn registrar(&self, n: NodeId) -> &RegistrarEngine {
        match &self.nodes[n].role {
            Role::Registrar(r) => r,
            _ => panic!("node {n} is not a registrar"),
        }
    }

    pub fn pool_element(&self, n: NodeId) -> &PoolElementEngine {
        match &self.nodes[n].role {
            Role::Pe(pe) => pe,
            _ => panic!("node {n} is not a pool element"),
        }
    }

    pub fn events(&self, n: NodeId) -> &[(Duration, NodeEvent)] {
        &self.nodes[n].events
    }

    pub fn take_events(&mut self, n: NodeId) -> Vec<(Duration, NodeEvent)> {
        std::mem::take(&mut self.nodes[n].events)
    }
}
