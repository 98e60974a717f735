//! Load for the upgrade benchmark (bench/upgrade.sh): long TCP-gateway sessions to a
//! counter pool, some sending a line every 10 ms and checking each answer is the next
//! count, others idle between a line at the start and one at the end (whose answer
//! must be 2: the same session), and DNS queries over UDP one after another.
//!
//! session-load run --target ADDR --chatty N --idle M --seconds S --gaps FILE [--dns ADDR]
//!     Writes `epoch_ms stall_ms` to FILE for every answer of a chatty session that came
//!     more than 12 ms after the one before (the stall: the gap less the 10 ms pace),
//!     and prints what held and what broke.
//!
//! session-load idle --target ADDR --connections N --kind tcp|http
//!     Opens N connections (256 at a time), each carrying one exchange (tcp: a byte
//!     echoed, so the proxy's connection to the backend is up; http: a GET answered,
//!     the connection kept alive), prints `ready N` once all are open, and holds them
//!     until killed (bench/sessions.sh measures the proxy's memory meanwhile).

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "a benchmark tool: a real clock, and panics are fine"
)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};

#[path = "../load/clock.rs"]
mod clock;
#[path = "../load/flags.rs"]
mod flags;

use clock::epoch_ms;
use flags::get;

/// A session's line and the answer it must get.
async fn line(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    expected: u64,
) -> Result<(), String> {
    writer
        .write_all(b"line\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut answer)).await;
    match read {
        Ok(Ok(0)) => Err(format!("closed before count {expected}")),
        Ok(Ok(_)) if answer.trim() == expected.to_string() => Ok(()),
        Ok(Ok(_)) => Err(format!(
            "count {expected} expected, got {:?}",
            answer.trim()
        )),
        Ok(Err(error)) => Err(format!("{error} before count {expected}")),
        Err(_) => Err(format!("no count {expected} within 30 s")),
    }
}

async fn session(
    target: SocketAddr,
) -> (
    tokio::net::tcp::OwnedWriteHalf,
    BufReader<tokio::net::tcp::OwnedReadHalf>,
) {
    let stream = TcpStream::connect(target).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (reader, writer) = stream.into_split();
    (writer, BufReader::new(reader))
}

/// A line every 10 ms until `until`; its lines, or what broke it. Stalls go to `gaps`.
async fn chatty(
    target: SocketAddr,
    until: Instant,
    gaps: Arc<Mutex<Vec<(u64, u128)>>>,
) -> Result<u64, String> {
    let (mut writer, mut reader) = session(target).await;
    let mut count = 0;
    let mut last = Instant::now();
    while Instant::now() < until {
        count += 1;
        line(&mut writer, &mut reader, count).await?;
        let gap = last.elapsed();
        last = Instant::now();
        // Beyond the 10 ms pace and a round trip: a stall.
        if gap > Duration::from_millis(12) && count > 1 {
            let stall = gap.as_millis().saturating_sub(10);
            gaps.lock().unwrap().push((epoch_ms(), stall));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(count)
}

/// One line now and one at `until`: the second answer must be 2.
async fn idle(target: SocketAddr, until: Instant) -> Result<(), String> {
    let (mut writer, mut reader) = session(target).await;
    line(&mut writer, &mut reader, 1).await?;
    tokio::time::sleep_until(until.into()).await;
    line(&mut writer, &mut reader, 2).await
}

/// A query for `WebPool.pool.test` after another until `until`: (answered, unanswered
/// within 2 s).
async fn dns(server: SocketAddr, until: Instant) -> (u64, u64) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (mut answered, mut unanswered) = (0, 0);
    let mut id: u16 = 0;
    while Instant::now() < until {
        id = id.wrapping_add(1);
        let mut query = id.to_be_bytes().to_vec();
        query.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in ["WebPool", "pool", "test"] {
            query.push(u8::try_from(label.len()).unwrap());
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        socket.send_to(&query, server).await.unwrap();
        let mut buffer = [0u8; 512];
        let answer = async {
            loop {
                let n = socket.recv(&mut buffer).await.unwrap_or(0);
                if n >= 2 && buffer[..2] == id.to_be_bytes() {
                    return;
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), answer).await {
            Ok(()) => answered += 1,
            Err(_) => unanswered += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (answered, unanswered)
}

async fn run(flags: &std::collections::BTreeMap<String, String>) {
    let target: SocketAddr = get(flags, "target", None);
    let chatty_sessions: usize = get(flags, "chatty", Some(100));
    let idle_sessions: usize = get(flags, "idle", Some(1000));
    let seconds: u64 = get(flags, "seconds", Some(30));
    let gaps_file: String = get(flags, "gaps", None);
    let dns_server: Option<SocketAddr> = flags.get("dns").map(|v| v.parse().unwrap());
    let until = Instant::now() + Duration::from_secs(seconds);
    let gaps = Arc::new(Mutex::new(Vec::new()));
    let mut idle_tasks = Vec::new();
    for _ in 0..idle_sessions {
        idle_tasks.push(tokio::spawn(idle(target, until)));
    }
    let chatty_tasks: Vec<_> = (0..chatty_sessions)
        .map(|_| tokio::spawn(chatty(target, until, gaps.clone())))
        .collect();
    let dns_task = dns_server.map(|server| tokio::spawn(dns(server, until)));
    let (mut lines, mut broken) = (0, Vec::new());
    for task in chatty_tasks {
        match task.await.unwrap() {
            Ok(count) => lines += count,
            Err(error) => broken.push(error),
        }
    }
    let mut idle_broken = Vec::new();
    for task in idle_tasks {
        if let Err(error) = task.await.unwrap() {
            idle_broken.push(error);
        }
    }
    let mut file = std::fs::File::create(&gaps_file).unwrap();
    for (at, gap) in gaps.lock().unwrap().iter() {
        writeln!(file, "{at} {gap}").unwrap();
    }
    println!(
        "chatty sessions: {} of {chatty_sessions} continuous ({lines} lines, each count once and in order)",
        chatty_sessions - broken.len()
    );
    println!(
        "idle sessions: {} of {idle_sessions} still the same session at the end",
        idle_sessions - idle_broken.len()
    );
    for error in broken.iter().chain(&idle_broken).take(5) {
        println!("  broken: {error}");
    }
    if let Some(task) = dns_task {
        let (answered, unanswered) = task.await.unwrap();
        println!("DNS queries: {answered} answered, {unanswered} unanswered");
    }
}

/// One idle connection after its exchange.
async fn idle_connection(target: SocketAddr, http: bool) -> TcpStream {
    let mut stream = TcpStream::connect(target).await.unwrap();
    if http {
        stream
            .write_all(b"GET /item/1 HTTP/1.1\r\nHost: sessions\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let read = tokio::io::AsyncReadExt::read(&mut stream, &mut byte)
                .await
                .unwrap();
            assert!(read == 1, "the connection closed before its answer");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length: usize = head
            .split("content-length:")
            .nth(1)
            .and_then(|rest| rest.split("\r\n").next())
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut body)
            .await
            .unwrap();
    } else {
        stream.write_all(b"x").await.unwrap();
        let mut echo = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut echo)
            .await
            .unwrap();
    }
    stream
}

async fn hold_idle(flags: &std::collections::BTreeMap<String, String>) {
    let target: SocketAddr = get(flags, "target", None);
    let connections: usize = get(flags, "connections", Some(1000));
    let http = match get::<String>(flags, "kind", Some("tcp".into())).as_str() {
        "tcp" => false,
        "http" => true,
        other => panic!("--kind tcp or http, not {other}"),
    };
    let mut held = Vec::with_capacity(connections);
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..connections {
        if opening.len() >= 256 {
            held.push(opening.join_next().await.unwrap().unwrap());
        }
        opening.spawn(idle_connection(target, http));
    }
    while let Some(stream) = opening.join_next().await {
        held.push(stream.unwrap());
    }
    println!("ready {}", held.len());
    std::future::pending::<()>().await;
}

fn main() {
    let (mode, flags) = flags::flags("run or idle");
    match mode.as_str() {
        "run" => flags::runtime().block_on(run(&flags)),
        "idle" => flags::runtime().block_on(hold_idle(&flags)),
        other => panic!("unknown mode {other}"),
    }
}
