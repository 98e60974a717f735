//! Load for registrars over the TCP mapping, as in rsplib's published load points: PEs
//! that re-register on a fixed interval (spread over several registrars if given) and
//! pool users that resolve in a closed loop (one outstanding request per association).
//! Prints rates and latency.
//!
//! registrar-load --registrar ADDR [--registrar ADDR...] [--pes N] [--pes-per-association K]
//!                [--pus N] [--interval-ms MS] [--seconds S] [--register-only]
//!
//! `--register-only` registers the PEs once, keeps them (answering keep-alives) and
//! prints "registered N" when done, until killed: to load a table for other tests.

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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const POOLS: u32 = 10;

#[derive(Debug, Clone)]
struct Options {
    registrars: Vec<SocketAddr>,
    pes: u32,
    pes_per_association: u32,
    pus: u32,
    interval: Duration,
    seconds: u64,
    register_only: bool,
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
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!options.registrars.is_empty(), "give --registrar ADDR");
    options
}

fn pool(i: u32) -> PoolHandle {
    PoolHandle::new(format!("BenchPool{}", i % POOLS).as_bytes()).unwrap()
}

async fn read_message(
    stream: &mut TcpStream,
    deframer: &mut StreamDeframer,
    buffer: &mut [u8],
) -> Option<Vec<u8>> {
    loop {
        if let Ok(Some(frame)) = deframer.next_frame() {
            return Some(frame);
        }
        let count = stream.read(buffer).await.ok()?;
        if count == 0 {
            return None;
        }
        deframer.push(&buffer[..count]).ok()?;
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
}

fn registration(i: u32, interval: Duration) -> Vec<u8> {
    AsapMessage::Registration(Registration {
        pool_handle: pool(i),
        pool_element: PoolElement {
            id: PoolElementId(i + 1),
            home_registrar: RegistrarId::UNKNOWN,
            registration_life_ms: u32::try_from((interval * 3).as_millis())
                .unwrap()
                .max(30_000),
            user_transport: Transport {
                protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
                port: 10_000 + u16::try_from(i % 50_000).unwrap(),
                addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            },
            policy: Policy::LeastUsed { load: i },
            asap_transport: None,
        },
    })
    .encode()
    .unwrap()
}

/// One association carrying PEs `first..first + count`, re-registering each every
/// interval (or once, with `register_only`), answering keep-alives.
async fn pool_elements(
    registrar: SocketAddr,
    first: u32,
    count: u32,
    options: Options,
    end: Instant,
    counters: Arc<Counters>,
) {
    let Ok(mut stream) = TcpStream::connect(registrar).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let messages: Vec<Vec<u8>> = (first..first + count)
        .map(|i| registration(i, options.interval))
        .collect();
    let mut deframer = StreamDeframer::new();
    let mut buffer = vec![0u8; 64 * 1024];
    // Spread the associations over the interval.
    tokio::time::sleep(options.interval.mul_f64(f64::from(first % 1000) / 1000.0)).await;
    let mut ticker = tokio::time::interval(options.interval);
    let mut rounds = 0u32;
    loop {
        if !options.register_only && Instant::now() >= end {
            return;
        }
        if !options.register_only || rounds == 0 {
            ticker.tick().await;
            for message in &messages {
                if stream.write_all(message).await.is_err() {
                    return;
                }
            }
        }
        rounds += 1;
        let mut answered = 0;
        while answered < messages.len() || options.register_only {
            let Some(reply) = read_message(&mut stream, &mut deframer, &mut buffer).await else {
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
                        let _ = stream.write_all(&ack.encode().unwrap()).await;
                    }
                }
                _ => {}
            }
        }
    }
}

async fn pool_user(registrar: SocketAddr, i: u32, end: Instant, counters: Arc<Counters>) {
    let Ok(mut stream) = TcpStream::connect(registrar).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let request = AsapMessage::HandleResolution(HandleResolution {
        pool_handle: pool(i),
        items: None,
    })
    .encode()
    .unwrap();
    let mut deframer = StreamDeframer::new();
    let mut buffer = vec![0u8; 8192];
    while Instant::now() < end {
        let start = Instant::now();
        if stream.write_all(&request).await.is_err() {
            return;
        }
        if read_message(&mut stream, &mut deframer, &mut buffer)
            .await
            .is_none()
        {
            return;
        }
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        counters.resolutions.fetch_add(1, Ordering::Relaxed);
        counters.latency_us.fetch_add(us, Ordering::Relaxed);
        counters.max_latency_us.fetch_max(us, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() {
    let options = options();
    let counters = Arc::new(Counters::default());
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
        )));
    }
    if options.register_only {
        let started = Instant::now();
        while counters.registered_associations.load(Ordering::Relaxed) < u64::from(associations) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "registered {} in {:.1} s",
            counters.registrations.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(warmup).await;
    for i in 0..options.pus {
        let registrar = options.registrars[i as usize % options.registrars.len()];
        tasks.push(tokio::spawn(pool_user(registrar, i, end, counters.clone())));
    }
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
        "pool elements: {} over {} association(s), re-registering every {:?}; pool users: {} (closed loop); registrars: {}",
        options.pes,
        associations,
        options.interval,
        options.pus,
        options.registrars.len()
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
