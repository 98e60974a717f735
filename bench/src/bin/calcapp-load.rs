//! Load for the adaptive-policy benchmark (bench/adaptive.sh): clients that submit
//! rsplib CalcApp jobs through the TCP gateway and measure each job's handling time
//! (from the connect to the Complete), as the rsplib papers measure pool policies.
//!
//! calcapp-load run --target ADDR --clients N --seconds S --job-size CALCULATIONS --think-ms MS
//!     N clients each: connect, send a Request, acknowledge the PE's keep-alives, wait
//!     for Complete (or Reject), close, then think for an exponentially distributed time
//!     of mean MS; prints jobs completed, rejects, and the mean, median and 95th
//!     percentile handling time in milliseconds.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "a benchmark tool: a real clock, and panics are fine"
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "../load/flags.rs"]
mod flags;

use flags::get;

const REQUEST: u8 = 1;
const REJECT: u8 = 3;
const COMPLETE: u8 = 5;
const KEEP_ALIVE: u8 = 6;
const KEEP_ALIVE_ACK: u8 = 7;

fn message(kind: u8, job: u32, size: u64) -> Vec<u8> {
    [
        &[kind, 0, 0, 24][..],
        &job.to_be_bytes(),
        &size.to_be_bytes(),
        &0u64.to_be_bytes(),
    ]
    .concat()
}

/// What the clients measured.
#[derive(Default)]
struct Results {
    handling: Vec<Duration>,
    rejects: u64,
    failures: u64,
}

/// One job: its handling time, or `None` when the PE rejected it.
async fn job(target: SocketAddr, id: u32, size: u64) -> std::io::Result<Option<Duration>> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&message(REQUEST, id, size)).await?;
    let mut reply = [0u8; 24];
    loop {
        stream.read_exact(&mut reply).await?;
        match reply[0] {
            KEEP_ALIVE => stream.write_all(&message(KEEP_ALIVE_ACK, id, size)).await?,
            COMPLETE => return Ok(Some(started.elapsed())),
            REJECT => return Ok(None),
            _ => {}
        }
    }
}

/// A small deterministic generator for think times (xorshift).
fn next_random(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

async fn client(
    target: SocketAddr,
    index: u32,
    flags: Arc<(u64, Duration, Instant)>,
    results: Arc<Mutex<Results>>,
) {
    let (size, think, end) = *flags;
    let mut random = 0x9E37_79B9_7F4A_7C15 ^ u64::from(index + 1);
    let mut id = index << 20;
    while Instant::now() < end {
        id += 1;
        let outcome = tokio::time::timeout(Duration::from_secs(60), job(target, id, size)).await;
        {
            let mut results = results.lock().unwrap();
            match outcome {
                Ok(Ok(Some(took))) => results.handling.push(took),
                Ok(Ok(None)) => results.rejects += 1,
                _ => results.failures += 1,
            }
        }
        let pause = -think.as_secs_f64() * (1.0 - next_random(&mut random)).ln();
        tokio::time::sleep(Duration::from_secs_f64(pause.min(10.0))).await;
    }
}

fn main() {
    let (mode, flags) = flags::flags("run");
    assert_eq!(mode, "run", "the only mode is run");
    let target: SocketAddr = get(&flags, "target", None);
    let clients: u32 = get(&flags, "clients", Some(12));
    let seconds: u64 = get(&flags, "seconds", Some(20));
    let size: u64 = get(&flags, "job-size", Some(500_000));
    let think = Duration::from_millis(get(&flags, "think-ms", Some(200)));
    let results = Arc::new(Mutex::new(Results::default()));
    let shared = Arc::new((size, think, Instant::now() + Duration::from_secs(seconds)));
    flags::runtime().block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|index| tokio::spawn(client(target, index, shared.clone(), results.clone())))
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let mut results = results.lock().unwrap();
    results.handling.sort_unstable();
    let count = results.handling.len();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = results.handling.iter().map(|d| ms(*d)).sum::<f64>() / count.max(1) as f64;
    let at = |q: f64| {
        results
            .handling
            .get(((count as f64 * q) as usize).min(count.saturating_sub(1)))
            .map_or(0.0, |d| ms(*d))
    };
    println!(
        "jobs={count} rejects={} failures={} mean_ms={mean:.0} p50_ms={:.0} p95_ms={:.0}",
        results.rejects,
        results.failures,
        at(0.5),
        at(0.95)
    );
}
