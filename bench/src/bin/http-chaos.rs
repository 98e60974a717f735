//! Backends that can be made sick, and a load generator that checks every answer, for
//! the failover benchmark (bench/chaos.sh).
//!
//! http-chaos backend --listen ADDR [--delay-ms 1]
//!     An HTTP/1.1 keep-alive server answering `200 ok` after `delay-ms` to every
//!     request, until told otherwise: `GET /chaos/fail?secs=N` makes it answer 503 for N
//!     seconds, `GET /chaos/slow?secs=N&factor=F` F times slower for N seconds (the
//!     control requests themselves are answered at once). `GET /blob?mib=M&die_at=N`
//!     serves M MiB (a fixed pattern, strong ETag, `Range: bytes=N-` with a matching
//!     `If-Range` answered 206) and, for a whole GET, aborts the process once N bytes
//!     of the body are written (the PE died mid-body; 0: never).
//! http-chaos poke --target ADDR --path PATH
//!     One `GET PATH` (a backend's control request); fails unless answered 200.
//! http-chaos load --target ADDR --connections N --seconds S --samples FILE
//!     N keep-alive connections each send `GET /item/<n>` and wait for the answer, again
//!     and again, for S seconds; every request is written to FILE as
//!     `<start, ms since the Unix epoch> <latency, µs> <status, 0: no answer>`. A request
//!     without an answer in 60 s, a broken connection or a malformed answer is status 0
//!     (and the connection is opened again). Prints the requests and failures.
//! http-chaos sessions --target ADDR --connections N --seconds S
//!     N sticky sessions (the gateway's cookie kept) each POST to `pe --serve http` PEs
//!     one request after the other for S seconds; the PE's `count` in each answer must
//!     be the previous one plus one. Prints the requests, the failed ones, those
//!     applied twice (the count jumped) and applied ones that vanished.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "a benchmark tool: a real clock, and panics are fine"
)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "../load/clock.rs"]
mod clock;
#[path = "../load/flags.rs"]
mod flags;

use clock::epoch_ms;
use flags::get;

fn main() {
    let (mode, flags) = flags::flags("backend, poke, load or sessions");
    let runtime = flags::runtime();
    match mode.as_str() {
        "backend" => runtime.block_on(backend(
            get(&flags, "listen", None),
            get(&flags, "delay-ms", Some(1)),
        )),
        "poke" => runtime.block_on(poke(
            get(&flags, "target", None),
            get::<String>(&flags, "path", None),
        )),
        "load" => runtime.block_on(load(
            get(&flags, "target", None),
            get(&flags, "connections", Some(16)),
            get(&flags, "seconds", Some(30)),
            get::<String>(&flags, "samples", None),
        )),
        "sessions" => runtime.block_on(sessions(
            get(&flags, "target", None),
            get(&flags, "connections", Some(8)),
            get(&flags, "seconds", Some(60)),
        )),
        other => panic!("unknown mode {other}"),
    }
}

/// The sickness a backend is told to have: until when (ms since the epoch).
#[derive(Default)]
struct Sickness {
    failing_until: AtomicU64,
    slow_until: AtomicU64,
    slow_factor: AtomicU64,
}

async fn backend(listen: SocketAddr, delay_ms: u64) {
    let listener = TcpListener::bind(listen).await.unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    let sickness = Arc::new(Sickness::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, sickness.clone(), delay_ms));
    }
}

/// The query parameter `name` of `target` as a number.
fn parameter(target: &str, name: &str) -> u64 {
    target
        .split_once('?')
        .map_or("", |(_, query)| query)
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

async fn serve(mut stream: TcpStream, sickness: Arc<Sickness>, delay_ms: u64) {
    let mut buffer = Vec::with_capacity(4096);
    loop {
        let Some(end) = read_head(&mut stream, &mut buffer).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        buffer.drain(..end);
        let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
        if target.starts_with("/blob") {
            if serve_blob(&mut stream, &target, &head).await.is_err() {
                return;
            }
            continue;
        }
        let now = epoch_ms();
        let status = if target.starts_with("/chaos/fail") {
            let until = now + parameter(&target, "secs") * 1000;
            sickness.failing_until.store(until, Ordering::Relaxed);
            200
        } else if target.starts_with("/chaos/slow") {
            sickness
                .slow_factor
                .store(parameter(&target, "factor").max(1), Ordering::Relaxed);
            let until = now + parameter(&target, "secs") * 1000;
            sickness.slow_until.store(until, Ordering::Relaxed);
            200
        } else {
            let slow = now < sickness.slow_until.load(Ordering::Relaxed);
            let factor = if slow {
                sickness.slow_factor.load(Ordering::Relaxed)
            } else {
                1
            };
            tokio::time::sleep(Duration::from_millis(delay_ms * factor)).await;
            if now < sickness.failing_until.load(Ordering::Relaxed) {
                503
            } else {
                200
            }
        };
        let response = if status == 200 {
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        } else {
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nsick"
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The blob's pattern length: a prime, so that a piece spliced at the wrong offset
/// shows.
const PATTERN: usize = 1_048_583;
const ETAG: &str = "\"blob-v1\"";

fn pattern() -> &'static [u8] {
    static PATTERN_BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN_BYTES.get_or_init(|| {
        (0..PATTERN)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    })
}

/// A header field's value, from a head as text (the name in any case).
fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

async fn serve_blob(stream: &mut TcpStream, target: &str, head: &str) -> std::io::Result<()> {
    let length = parameter(target, "mib").max(1) as usize * 1024 * 1024;
    let die_at = parameter(target, "die_at") as usize;
    let from = header_value(head, "range")
        .filter(|_| header_value(head, "if-range").as_deref() == Some(ETAG))
        .and_then(|range| {
            range
                .strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse()
                .ok()
        })
        .filter(|from| *from < length);
    let start = from.unwrap_or(0);
    let response = match from {
        Some(from) => format!(
            "HTTP/1.1 206 Partial Content\r\nETag: {ETAG}\r\nAccept-Ranges: bytes\r\nContent-Range: bytes {from}-{}/{length}\r\nContent-Length: {}\r\n\r\n",
            length - 1,
            length - from
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nETag: {ETAG}\r\nAccept-Ranges: bytes\r\nContent-Length: {length}\r\n\r\n"
        ),
    };
    stream.write_all(response.as_bytes()).await?;
    let pattern = pattern();
    let mut at = start;
    while at < length {
        let offset = at % PATTERN;
        let mut end = (offset + 64 * 1024)
            .min(PATTERN)
            .min(offset + (length - at));
        if from.is_none() && die_at > 0 && at < die_at {
            end = end.min(offset + (die_at - at));
        }
        stream.write_all(&pattern[offset..end]).await?;
        at += end - offset;
        if from.is_none() && die_at > 0 && at >= die_at {
            eprintln!("dying at {at} of {length}");
            std::process::abort();
        }
    }
    Ok(())
}

/// Reads until `buffer` holds a whole head; its length (with the blank line).
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(at + 4);
        }
        if buffer.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

async fn poke(target: SocketAddr, path: String) {
    let mut stream = None;
    let status = exchange(&mut stream, target, &get_request(&path))
        .await
        .map(|a| a.status);
    assert_eq!(status, Some(200), "GET {path} at {target}");
}

/// A response: its status, head and body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Sends `request` (a whole request) on `stream` (opened if `None`) and reads the
/// answer; `None` if there is none (the connection is then dropped).
/// Connections opened by `exchange` (the load's keep-alive connections re-opened).
static CONNECTS: AtomicU64 = AtomicU64::new(0);

async fn exchange(
    stream: &mut Option<TcpStream>,
    target: SocketAddr,
    request: &str,
) -> Option<Answer> {
    if stream.is_none() {
        CONNECTS.fetch_add(1, Ordering::Relaxed);
        let connected = TcpStream::connect(target).await.ok()?;
        let _ = connected.set_nodelay(true);
        *stream = Some(connected);
    }
    let connection = stream.as_mut()?;
    connection.write_all(request.as_bytes()).await.ok()?;
    let mut buffer = Vec::with_capacity(1024);
    let end = read_head(connection, &mut buffer).await?;
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = header_value(&head, "content-length")?.parse().ok()?;
    while buffer.len() < end + length {
        let mut chunk = [0u8; 4096];
        let read = connection.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    if header_value(&head, "connection").is_some_and(|value| value.eq_ignore_ascii_case("close")) {
        *stream = None;
    }
    let body = buffer[end..end + length].to_vec();
    Some(Answer { status, head, body })
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: chaos\r\n\r\n")
}

/// What one session of POSTs saw.
#[derive(Default)]
struct SessionTally {
    requests: u64,
    failed: u64,
    /// Requests applied twice (the count moved by more than one).
    duplicated: u64,
    /// Applied requests that vanished (the count did not move, or went back).
    lost: u64,
}

/// One sticky session of POSTs through the gateway for `seconds`: each answer's
/// `count` must be the previous one plus one.
async fn session(target: SocketAddr, deadline: Instant) -> SessionTally {
    let mut tally = SessionTally::default();
    let mut stream = None;
    let mut cookie: Option<String> = None;
    let mut count = 0u64;
    while Instant::now() < deadline {
        tally.requests += 1;
        let cookie_line = cookie
            .as_deref()
            .map_or_else(String::new, |cookie| format!("Cookie: {cookie}\r\n"));
        let request = format!(
            "POST /order HTTP/1.1\r\nHost: chaos\r\n{cookie_line}Content-Length: 1\r\n\r\nx"
        );
        let answer = tokio::time::timeout(
            Duration::from_secs(60),
            exchange(&mut stream, target, &request),
        )
        .await;
        let Ok(Some(answer)) = answer.map(|answer| answer.filter(|a| a.status == 200)) else {
            stream = None;
            tally.failed += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if let Some(set) = header_value(&answer.head, "set-cookie") {
            cookie = set.split(';').next().map(|pair| pair.trim().to_owned());
        }
        let text = String::from_utf8_lossy(&answer.body);
        let now: u64 = text
            .split_whitespace()
            .find_map(|field| field.strip_prefix("count="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if now > count + 1 {
            tally.duplicated += now - count - 1;
        } else if now <= count {
            tally.lost += 1;
        }
        count = now;
    }
    tally
}

async fn sessions(target: SocketAddr, connections: usize, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(session(target, deadline)))
        .collect();
    let mut total = SessionTally::default();
    for worker in workers {
        let tally = worker.await.unwrap();
        total.requests += tally.requests;
        total.failed += tally.failed;
        total.duplicated += tally.duplicated;
        total.lost += tally.lost;
    }
    println!(
        "requests {} failed {} duplicated {} lost {}",
        total.requests, total.failed, total.duplicated, total.lost
    );
}

async fn load(target: SocketAddr, connections: usize, seconds: u64, samples: String) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let counter = counter.clone();
        workers.push(tokio::spawn(async move {
            let mut records = Vec::new();
            let mut stream = None;
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (at, started) = (epoch_ms(), Instant::now());
                let answer = tokio::time::timeout(
                    Duration::from_secs(60),
                    exchange(&mut stream, target, &get_request(&format!("/item/{n}"))),
                )
                .await;
                let status = match answer {
                    Ok(Some(answer)) => answer.status,
                    Ok(None) | Err(_) => {
                        stream = None;
                        0
                    }
                };
                records.push((at, started.elapsed().as_micros(), status));
                if status == 0 {
                    // A refused connect fails at once: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            records
        }));
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(&samples).unwrap());
    let (mut total, mut failed) = (0, 0);
    for worker in workers {
        for (at, micros, status) in worker.await.unwrap() {
            writeln!(file, "{at} {micros} {status}").unwrap();
            total += 1;
            failed += usize::from(status != 200);
        }
    }
    file.flush().unwrap();
    println!(
        "requests {total} failed {failed} connections {}",
        CONNECTS.load(Ordering::Relaxed)
    );
}
