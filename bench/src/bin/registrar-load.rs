//! Load for registrars over the TCP mapping or kernel SCTP, as in rsplib's published
//! load points: PEs that re-register on a fixed interval (spread over several
//! registrars if given) and pool users that resolve in a closed loop (one outstanding
//! request per association, or `--in-flight K`). Prints rates and latency.
//!
//! registrar-load --registrar ADDR [--registrar ADDR...] [--pes N] [--pes-per-association K]
//!                [--pus N] [--in-flight K] [--interval-ms MS] [--seconds S]
//!                [--register-only] [--tls DIR] [--sctp] [--pools N] [--round-robin]
//!
//! The PEs are spread over `--pools` pools (10 by default, `BenchPool0`...), with the
//! Least Used policy (each its own load) or, with `--round-robin`, Round Robin; pool
//! user `i` resolves pool `i % pools`.
//!
//! `--sctp` speaks ASAP over kernel SCTP (PPID 11, one message per SCTP message, as
//! rsplib does; Linux only, e.g. in `../shared/tools/sctpvm`), and registers the PEs at
//! the registrar's own address (the association's, which registrars check the
//! registered addresses against), with an SCTP user transport.
//!
//! `--interval-ms 0` re-registers in a closed loop (each association sends its next
//! round as soon as the last is answered): registration throughput.
//!
//! `--register-only` registers the PEs once, keeps them (answering keep-alives) and
//! prints "registered N in T s" when done, until killed: to load a table for other
//! tests. A PE whose association breaks reconnects as the `pe` agent's hunt does (after
//! 250 ms, doubling up to 1 s) and registers again; each time every PE is registered
//! again, another "registered" line says how long it took since the first loss.
//!
//! `--tls DIR` speaks TLS with the certificates `rserpool cert` made in DIR: `bench-pe`
//! for PEs, `bench-pu` for pool users, and `ca.pem`. Every association completes its
//! handshake before the measured period starts.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "a benchmark tool: a real clock, and panics are fine"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rserpool_proto::wire::{
    AsapMessage, HandleResolution, Policy, PoolElement, PoolElementId, PoolElementRef, PoolHandle,
    RegistrarId, Registration, StreamDeframer, Transport, TransportProtocol, TransportUse,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "../load/tls.rs"]
mod tls;

#[derive(Debug, Clone)]
struct Options {
    registrars: Vec<SocketAddr>,
    pes: u32,
    pes_per_association: u32,
    pus: u32,
    interval: Duration,
    seconds: u64,
    register_only: bool,
    tls: Option<std::path::PathBuf>,
    sctp: bool,
    in_flight: u32,
    pools: u32,
    round_robin: bool,
}

fn options() -> Options {
    let mut options = Options {
        registrars: Vec::new(),
        pes: 1000,
        pes_per_association: 1,
        pus: 2000,
        interval: Duration::from_millis(250),
        seconds: 10,
        register_only: false,
        tls: None,
        sctp: false,
        in_flight: 1,
        pools: 10,
        round_robin: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match flag.as_str() {
            "--registrar" => options.registrars.push(value().parse().unwrap()),
            "--pes" => options.pes = value().parse().unwrap(),
            "--pes-per-association" => options.pes_per_association = value().parse().unwrap(),
            "--pus" => options.pus = value().parse().unwrap(),
            "--interval-ms" => options.interval = Duration::from_millis(value().parse().unwrap()),
            "--seconds" => options.seconds = value().parse().unwrap(),
            "--register-only" => options.register_only = true,
            "--tls" => options.tls = Some(value().into()),
            "--sctp" => options.sctp = true,
            "--in-flight" => options.in_flight = value().parse().unwrap(),
            "--pools" => options.pools = value().parse().unwrap(),
            "--round-robin" => options.round_robin = true,
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!options.registrars.is_empty(), "give --registrar ADDR");
    assert!(options.in_flight > 0, "--in-flight is at least 1");
    assert!(options.pools > 0, "--pools is at least 1");
    assert!(
        !(options.sctp && options.tls.is_some()),
        "--sctp with --tls is not supported (RFC 3436 TLS over SCTP is not built here)"
    );
    options
}

fn pool(i: u32, options: &Options) -> PoolHandle {
    PoolHandle::new(format!("BenchPool{}", i % options.pools).as_bytes()).unwrap()
}

/// A plain or TLS stream of the TCP mapping.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type Association = Box<dyn Stream>;

/// The ASAP payload protocol identifier (RFC 5352 §3).
const ASAP_PPID: u32 = 11;

/// One ASAP association to a registrar: a TCP-mapping stream (plain or TLS) or a kernel
/// SCTP association.
enum Link {
    Stream {
        stream: Association,
        deframer: StreamDeframer,
        buffer: Vec<u8>,
    },
    Sctp(rserpool::sctp::Association),
}

impl Link {
    /// Opens an association, with TLS as `identity` when `tls` is given.
    async fn open(registrar: SocketAddr, sctp: bool, tls: Option<&tls::Client>) -> Option<Self> {
        if sctp {
            let association = rserpool::sctp::Association::connect(&[registrar], &[])
                .await
                .ok()?;
            return Some(Self::Sctp(association));
        }
        let stream = TcpStream::connect(registrar).await.ok()?;
        let _ = stream.set_nodelay(true);
        let stream = match tls {
            None => Box::new(stream),
            Some(client) => client.connect(stream).await?,
        };
        Some(Self::Stream {
            stream,
            deframer: StreamDeframer::new(),
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Sends one message (over the TCP mapping, written and flushed: a TLS stream holds
    /// records until flushed).
    async fn send(&mut self, message: &[u8]) -> bool {
        match self {
            Self::Stream { stream, .. } => {
                stream.write_all(message).await.is_ok() && stream.flush().await.is_ok()
            }
            Self::Sctp(association) => association.send(ASAP_PPID, message).await.is_ok(),
        }
    }

    /// The next message, or `None` once the association ended.
    async fn receive(&mut self) -> Option<Vec<u8>> {
        match self {
            Self::Stream {
                stream,
                deframer,
                buffer,
            } => loop {
                if let Ok(Some(frame)) = deframer.next_frame() {
                    return Some(frame);
                }
                let count = stream.read(buffer).await.ok()?;
                if count == 0 {
                    return None;
                }
                deframer.push(&buffer[..count]).ok()?;
            },
            Self::Sctp(association) => match association.receive(65_535).await.ok()? {
                rserpool::sctp::Received::Message { payload, .. } => Some(payload),
                rserpool::sctp::Received::Closed(_) => None,
            },
        }
    }
}

#[derive(Default)]
struct Counters {
    registrations: AtomicU64,
    refused: AtomicU64,
    resolutions: AtomicU64,
    latency_us: AtomicU64,
    max_latency_us: AtomicU64,
    registered_associations: AtomicU64,
    lost_associations: AtomicU64,
}

fn registration(i: u32, options: &Options, sctp_at: Option<IpAddr>) -> Vec<u8> {
    let (protocol, address) = match sctp_at {
        Some(address) => (TransportProtocol::Sctp(TransportUse::DataOnly), address),
        None => (
            TransportProtocol::Tcp(TransportUse::DataOnly),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ),
    };
    AsapMessage::Registration(Registration {
        pool_handle: pool(i, options),
        pool_element: PoolElement {
            id: PoolElementId(i + 1),
            home_registrar: RegistrarId::UNKNOWN,
            registration_life_ms: u32::try_from((options.interval * 3).as_millis())
                .unwrap()
                .max(30_000),
            user_transport: Transport {
                protocol,
                port: 10_000 + u16::try_from(i % 50_000).unwrap(),
                addresses: vec![address],
            },
            policy: if options.round_robin {
                Policy::RoundRobin
            } else {
                Policy::LeastUsed { load: i }
            },
            asap_transport: None,
        },
    })
    .encode()
    .unwrap()
}

/// One association carrying PEs `first..first + count`, re-registering each every
/// interval (or once, with `register_only`), answering keep-alives. With
/// `register_only`, a broken association is opened again (after 250 ms, doubling up to
/// 5 s, as the `pe` agent's hunt) and its PEs registered again.
async fn pool_elements(
    registrar: SocketAddr,
    first: u32,
    count: u32,
    options: Options,
    end: Instant,
    counters: Arc<Counters>,
    tls: Option<Arc<tls::Client>>,
) {
    let messages: Vec<Vec<u8>> = (first..first + count)
        .map(|i| registration(i, &options, options.sctp.then(|| registrar.ip())))
        .collect();
    // Spread the associations over the interval.
    tokio::time::sleep(options.interval.mul_f64(f64::from(first % 1000) / 1000.0)).await;
    let mut retry = Duration::from_millis(250);
    loop {
        let Some(mut link) = Link::open(registrar, options.sctp, tls.as_deref()).await else {
            if !options.register_only {
                return;
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(Duration::from_secs(5));
            continue;
        };
        retry = Duration::from_millis(250);
        serve_pool_elements(&mut link, &messages, &options, end, &counters).await;
        if !options.register_only {
            return;
        }
        counters.lost_associations.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(retry).await;
    }
}

async fn serve_pool_elements(
    link: &mut Link,
    messages: &[Vec<u8>],
    options: &Options,
    end: Instant,
    counters: &Counters,
) {
    // Interval 0: a closed loop (each round as soon as the last one is answered).
    // Rounds missed while the registrar was busy (with handshakes, say) are skipped, not
    // sent in a burst: the load point is one registration per PE per interval.
    let mut ticker = (!options.interval.is_zero()).then(|| {
        let mut ticker = tokio::time::interval(options.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticker
    });
    let mut rounds = 0u32;
    loop {
        if !options.register_only && Instant::now() >= end {
            return;
        }
        if !options.register_only || rounds == 0 {
            if let Some(ticker) = &mut ticker {
                ticker.tick().await;
            }
            for message in messages {
                if !link.send(message).await {
                    return;
                }
            }
        }
        rounds += 1;
        let mut answered = 0;
        while answered < messages.len() || options.register_only {
            let Some(reply) = link.receive().await else {
                return;
            };
            match AsapMessage::decode(&reply).map(|d| d.message) {
                Ok(AsapMessage::RegistrationResponse(r)) => {
                    let counter = if r.reject {
                        &counters.refused
                    } else {
                        &counters.registrations
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    answered += 1;
                    if options.register_only && answered == messages.len() {
                        counters
                            .registered_associations
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(AsapMessage::EndpointKeepAlive(k)) => {
                    if let Some(pe_id) = k.pe_id {
                        let ack = AsapMessage::EndpointKeepAliveAck(PoolElementRef {
                            pool_handle: k.pool_handle,
                            pe_id,
                        });
                        let _ = link.send(&ack.encode().unwrap()).await;
                    }
                }
                _ => {}
            }
        }
    }
}

/// A pool user resolving in a closed loop (`in_flight` requests outstanding, each
/// answered one followed by the next) from `start` until `end`; it opens its association
/// (and completes a TLS handshake) before `start`.
async fn pool_user(
    registrar: SocketAddr,
    i: u32,
    options: Arc<Options>,
    start: Arc<tokio::sync::Barrier>,
    end: Instant,
    counters: Arc<Counters>,
    tls: Option<Arc<tls::Client>>,
) {
    let link = Link::open(registrar, options.sctp, tls.as_deref()).await;
    start.wait().await;
    let Some(mut link) = link else {
        return;
    };
    let request = AsapMessage::HandleResolution(HandleResolution {
        pool_handle: pool(i, &options),
        items: None,
    })
    .encode()
    .unwrap();
    // Answers come in order on one association: the oldest request is the one answered.
    let mut sent = std::collections::VecDeque::new();
    while Instant::now() < end {
        while sent.len() < options.in_flight as usize {
            sent.push_back(Instant::now());
            if !link.send(&request).await {
                return;
            }
        }
        if link.receive().await.is_none() {
            return;
        }
        let asked = sent.pop_front().unwrap();
        let us = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX);
        counters.resolutions.fetch_add(1, Ordering::Relaxed);
        counters.latency_us.fetch_add(us, Ordering::Relaxed);
        counters.max_latency_us.fetch_max(us, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() {
    let options = options();
    let counters = Arc::new(Counters::default());
    let (pe_tls, pu_tls) = match &options.tls {
        Some(dir) => (
            Some(Arc::new(tls::Client::load(dir, "bench-pe"))),
            Some(Arc::new(tls::Client::load(dir, "bench-pu"))),
        ),
        None => (None, None),
    };
    let warmup = Duration::from_secs(2);
    let end = Instant::now() + warmup + Duration::from_secs(options.seconds);
    let associations = options.pes.div_ceil(options.pes_per_association);
    let mut tasks = Vec::new();
    for a in 0..associations {
        let first = a * options.pes_per_association;
        let count = options.pes_per_association.min(options.pes - first);
        let registrar = options.registrars[a as usize % options.registrars.len()];
        tasks.push(tokio::spawn(pool_elements(
            registrar,
            first,
            count,
            options.clone(),
            end,
            counters.clone(),
            pe_tls.clone(),
        )));
    }
    if options.register_only {
        report_registrations(&counters, associations).await;
    }
    tokio::time::sleep(warmup).await;
    let start = Arc::new(tokio::sync::Barrier::new(options.pus as usize + 1));
    let shared = Arc::new(options.clone());
    for i in 0..options.pus {
        let registrar = options.registrars[i as usize % options.registrars.len()];
        tasks.push(tokio::spawn(pool_user(
            registrar,
            i,
            shared.clone(),
            start.clone(),
            end,
            counters.clone(),
            pu_tls.clone(),
        )));
    }
    start.wait().await;
    // For scripts that sample a process's CPU over the measured period.
    println!("measuring for {} s", options.seconds);
    let registrations_before = counters.registrations.load(Ordering::Relaxed);
    let measured = Instant::now();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = measured.elapsed().as_secs_f64();
    let registrations = counters.registrations.load(Ordering::Relaxed) - registrations_before;
    let resolutions = counters.resolutions.load(Ordering::Relaxed);
    let mean_us = counters.latency_us.load(Ordering::Relaxed) / resolutions.max(1);
    println!(
        "pool elements: {} over {} association(s), re-registering every {:?}; pool users: {} (closed loop, {} in flight each); registrars: {}; {}",
        options.pes,
        associations,
        options.interval,
        options.pus,
        options.in_flight,
        options.registrars.len(),
        if options.sctp { "SCTP" } else { "TCP mapping" }
    );
    println!(
        "registrations/s:       {:.0}",
        registrations as f64 / elapsed
    );
    println!(
        "refused registrations: {}",
        counters.refused.load(Ordering::Relaxed)
    );
    println!("handle resolutions/s:  {:.0}", resolutions as f64 / elapsed);
    println!(
        "resolution latency:    mean {mean_us} us, max {} us",
        counters.max_latency_us.load(Ordering::Relaxed)
    );
    println!("measured for:          {elapsed:.1} s");
}

/// With `--register-only`: prints "registered N in T s" once every PE is registered,
/// and again each time all are registered after associations were lost (T from the
/// first loss), until killed.
async fn report_registrations(counters: &Counters, associations: u32) -> ! {
    let started = Instant::now();
    let mut target = u64::from(associations);
    let mut since = started;
    loop {
        while counters.registered_associations.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "registered {} in {:.2} s",
            associations,
            since.elapsed().as_secs_f64()
        );
        target += u64::from(associations);
        let lost = counters.lost_associations.load(Ordering::Relaxed);
        while counters.lost_associations.load(Ordering::Relaxed) == lost {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        since = Instant::now();
    }
}
