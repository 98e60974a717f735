//! Load and measurement for the TCP gateway benchmark (bench/tcp.sh): echo backends,
//! bulk throughput, connection rate, and the client-visible stall when the PE serving a
//! session is killed.
//!
//! tcp-load echo --listen ADDR
//!     An echo server (the backends both proxies front).
//! tcp-load bulk --target ADDR --connections N --seconds S
//!     N connections each write 64 KiB blocks as fast as the path takes them and read the
//!     echo; prints the echoed payload rate.
//! tcp-load connect --target ADDR --concurrency N --seconds S
//!     N workers each connect, send 16 bytes, read the 16 echoed, close, again; prints
//!     connections per second and latency percentiles.
//! tcp-load stall --target ADDR --rserpool BIN --registrar ADDR --kills K
//!     Starts three `rserpool pe --serve counter` PEs, runs one session of request/answer
//!     lines through the gateway at ADDR, and K times kills (-9) the PE serving it (read
//!     from the gateway's log) and starts a replacement; prints the distribution of the
//!     time from each kill to the client's next answer, checking every count arrives once
//!     and in order.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "a benchmark tool: a real clock, and panics are fine"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "../load/flags.rs"]
mod flags;

use flags::get;

fn main() {
    let (mode, flags) = flags::flags("echo, bulk, connect or stall");
    let runtime = flags::runtime();
    match mode.as_str() {
        "echo" => runtime.block_on(echo(get(&flags, "listen", None))),
        "bulk" => runtime.block_on(bulk(
            get(&flags, "target", None),
            get(&flags, "connections", Some(1)),
            get(&flags, "seconds", Some(8)),
        )),
        "connect" => runtime.block_on(connect(
            get(&flags, "target", None),
            get(&flags, "concurrency", Some(64)),
            get(&flags, "seconds", Some(8)),
        )),
        "stall" => stall(&flags),
        other => panic!("unknown mode {other}"),
    }
}

async fn echo(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).await.unwrap();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let (mut reader, mut writer) = stream.split();
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        });
    }
}

async fn bulk(target: SocketAddr, connections: usize, seconds: u64) {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let stream = TcpStream::connect(target).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let stopping = stop.clone();
        tasks.push(tokio::spawn(async move {
            let block = vec![0x5au8; 64 * 1024];
            while !stopping.load(Ordering::Relaxed) {
                if writer.write_all(&block).await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        }));
        let counter = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            while let Ok(n) = reader.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    // Warm up one second, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_bytes = received.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    println!(
        "bulk connections={connections} MiB/s={:.0} (echoed payload, {:.1} s)",
        bytes as f64 / elapsed / (1 << 20) as f64,
        elapsed
    );
    for task in tasks {
        task.abort();
    }
}

async fn connect(target: SocketAddr, concurrency: usize, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let message = *b"0123456789abcdef";
            while Instant::now() < deadline {
                let begun = Instant::now();
                let outcome = async {
                    let mut stream = TcpStream::connect(target).await?;
                    stream.set_nodelay(true)?;
                    stream.write_all(&message).await?;
                    let mut answer = [0u8; 16];
                    stream.read_exact(&mut answer).await?;
                    std::io::Result::Ok(answer == message)
                }
                .await;
                match outcome {
                    Ok(true) => latencies.push(begun.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    let count = latencies.len();
    println!(
        "connect concurrency={concurrency} connections/s={:.0} p50_ms={:.2} p99_ms={:.2} errors={errors}",
        count as f64 / seconds as f64,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A `rserpool pe --serve counter` child.
struct CounterPe {
    child: Child,
    /// When its latest session opened, as a number from `SESSIONS_OPENED` (0: never).
    latest_session: Arc<AtomicU64>,
}

/// Sessions opened at any of the counter PEs, to tell which one opened last.
static SESSIONS_OPENED: AtomicU64 = AtomicU64::new(0);

fn start_counter_pe(rserpool: &str, registrar: &str) -> CounterPe {
    let mut child = Command::new(rserpool)
        .args([
            "pe",
            "--serve",
            "counter",
            "--pool",
            "CounterPool",
            "--registrar",
            registrar,
        ])
        .args(["--reregistration-interval", "5s"])
        .args(["--log-level", "info,rserpool::service=debug"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while !lines
        .next()
        .expect("the PE's ready line")
        .unwrap()
        .contains("ready")
    {}
    // Keep reading its log (so it never blocks on a full pipe) for sessions it opens:
    // the gateway has one session, so the PE that opened a session last serves it.
    let latest_session = Arc::new(AtomicU64::new(0));
    let latest = latest_session.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("session opened") {
                latest.store(
                    SESSIONS_OPENED.fetch_add(1, Ordering::SeqCst) + 1,
                    Ordering::SeqCst,
                );
            }
        }
    });
    CounterPe {
        child,
        latest_session,
    }
}

fn stall(flags: &BTreeMap<String, String>) {
    let target: SocketAddr = get(flags, "target", None);
    let rserpool: String = get(flags, "rserpool", None);
    let registrar: String = get(flags, "registrar", None);
    let kills: usize = get(flags, "kills", Some(50));
    let mut pes: Vec<CounterPe> = (0..3)
        .map(|_| start_counter_pe(&rserpool, &registrar))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));

    let stream = std::net::TcpStream::connect(target).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let answers: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let answers = answers.clone();
        let done = done.clone();
        let mut writer = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            let mut expected = 1u64;
            while !done.load(Ordering::Relaxed) {
                writer.write_all(b"x\n").unwrap();
                line.clear();
                let read = reader.read_line(&mut line).unwrap();
                assert!(read > 0, "the session broke at count {expected}");
                assert_eq!(
                    line.trim().parse::<u64>().unwrap(),
                    expected,
                    "every count once, in order"
                );
                answers.lock().unwrap().push(Instant::now());
                expected += 1;
                // About 1 000 answers a second: steady, and room for the kills.
                std::thread::sleep(Duration::from_millis(1));
            }
            expected - 1
        })
    };
    let mut kill_times = Vec::new();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(300));
        let index = (0..pes.len())
            .max_by_key(|&i| pes[i].latest_session.load(Ordering::SeqCst))
            .expect("three PEs");
        let mut victim = pes.remove(index);
        let killed_at = Instant::now();
        victim.child.kill().unwrap();
        let _ = victim.child.wait();
        kill_times.push(killed_at);
        pes.push(start_counter_pe(&rserpool, &registrar));
        // Let the replacement register before the next kill.
        std::thread::sleep(Duration::from_millis(300));
    }
    done.store(true, Ordering::Relaxed);
    let counted = client.join().unwrap();
    for mut pe in pes {
        let _ = pe.child.kill();
        let _ = pe.child.wait();
    }
    let answers = answers.lock().unwrap();
    let mut stalls: Vec<Duration> = kill_times
        .iter()
        .filter_map(|&kill| answers.iter().find(|&&t| t > kill).map(|&t| t - kill))
        .collect();
    stalls.sort();
    // For scale: the usual time between two answers outside the kills.
    let mut gaps: Vec<Duration> = answers.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    println!(
        "stall kills={} answers={counted} (each once, in order) p50_ms={:.2} p99_ms={:.2} max_ms={:.2} (usual gap between answers p50_ms={:.2})",
        stalls.len(),
        percentile(&stalls, 0.50).as_secs_f64() * 1e3,
        percentile(&stalls, 0.99).as_secs_f64() * 1e3,
        stalls.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        percentile(&gaps, 0.50).as_secs_f64() * 1e3,
    );
}
