//! Load for one registrar over the TCP mapping, as in rsplib's published load points:
//! PEs that re-register on a fixed interval, and pool users that resolve in a closed
//! loop (one outstanding request per connection). Prints rates and latency.
//!
//! registrar-load ASAP_ADDR [PES] [PUS] [REREGISTRATION_MS] [SECONDS]

#![allow(
    clippy::disallowed_methods,
    reason = "a real clock for test deadlines and measurements"
)]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a benchmark tool"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rserpool_proto::wire::{
    AsapMessage, HandleResolution, Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId,
    Registration, StreamDeframer, Transport, TransportProtocol, TransportUse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const POOLS: u32 = 10;

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
}

async fn pool_element(
    registrar: SocketAddr,
    i: u32,
    interval: Duration,
    end: Instant,
    counters: Arc<Counters>,
) {
    let Ok(mut stream) = TcpStream::connect(registrar).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let message = AsapMessage::Registration(Registration {
        pool_handle: pool(i),
        pool_element: PoolElement {
            id: PoolElementId(i + 1),
            home_registrar: RegistrarId::UNKNOWN,
            registration_life_ms: u32::try_from(interval.as_millis() * 3).unwrap(),
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
    .unwrap();
    let mut deframer = StreamDeframer::new();
    let mut buffer = vec![0u8; 4096];
    // Spread the PEs over the interval.
    tokio::time::sleep(interval.mul_f64(f64::from(i % 1000) / 1000.0)).await;
    let mut ticker = tokio::time::interval(interval);
    while Instant::now() < end {
        ticker.tick().await;
        if stream.write_all(&message).await.is_err() {
            return;
        }
        loop {
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
                    break;
                }
                // Keep-alives: answer like a PE.
                Ok(AsapMessage::EndpointKeepAlive(k)) => {
                    let ack =
                        AsapMessage::EndpointKeepAliveAck(rserpool_proto::wire::PoolElementRef {
                            pool_handle: k.pool_handle,
                            pe_id: k.pe_id.unwrap_or(PoolElementId(i + 1)),
                        });
                    let _ = stream.write_all(&ack.encode().unwrap()).await;
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
    let args: Vec<String> = std::env::args().collect();
    let registrar: SocketAddr = args
        .get(1)
        .expect("usage: registrar-load ASAP_ADDR [PES] [PUS] [REREG_MS] [SECONDS]")
        .parse()
        .unwrap();
    let pes: u32 = args.get(2).map_or(1000, |a| a.parse().unwrap());
    let pus: u32 = args.get(3).map_or(2000, |a| a.parse().unwrap());
    let interval = Duration::from_millis(args.get(4).map_or(250, |a| a.parse().unwrap()));
    let seconds: u64 = args.get(5).map_or(10, |a| a.parse().unwrap());
    let counters = Arc::new(Counters::default());
    // Register everything first, then measure a steady state.
    let warmup = Duration::from_secs(2);
    let start = Instant::now();
    let end = start + warmup + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..pes {
        tasks.push(tokio::spawn(pool_element(
            registrar,
            i,
            interval,
            end,
            counters.clone(),
        )));
    }
    tokio::time::sleep(warmup).await;
    for i in 0..pus {
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
        "pool elements: {pes} re-registering every {interval:?}; pool users: {pus} (closed loop)"
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
