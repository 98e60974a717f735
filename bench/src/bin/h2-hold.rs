//! The HTTP/2 body hold of bench/h2-body-hold.sh: many streams that each send part of
//! a request body and then nothing more, held open.
//!
//! h2-hold sink --listen ADDR
//!     A backend that accepts connections and reads whatever comes, never answering
//!     (the PE behind the gateway: it neither finishes nor refuses a request).
//! h2-hold hold --target ADDR --connections N --streams M --body-bytes B --seconds S
//!     N HTTP/2 (prior knowledge) connections, each opening M POST streams that
//!     announce B*4 bytes, send B, and then stay silent for S seconds; prints the
//!     streams opened and the body bytes queued (the server's flow control decides
//!     how much of them it takes).

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a benchmark tool: a real clock, and panics are fine"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

#[path = "../load/flags.rs"]
mod flags;

use flags::get;

fn main() {
    let (mode, flags) = flags::flags("sink or hold");
    let runtime = flags::runtime();
    match mode.as_str() {
        "sink" => runtime.block_on(sink(get(&flags, "listen", None))),
        "hold" => runtime.block_on(hold(
            get(&flags, "target", None),
            get(&flags, "connections", Some(20)),
            get(&flags, "streams", Some(100)),
            get(&flags, "body-bytes", Some(60 * 1024)),
            get(&flags, "seconds", Some(10)),
        )),
        other => panic!("unknown mode {other}"),
    }
}

async fn sink(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).await.unwrap();
    println!("sink listening on {}", listener.local_addr().unwrap());
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            while matches!(stream.read(&mut buffer).await, Ok(read) if read > 0) {}
        });
    }
}

async fn hold(target: SocketAddr, connections: usize, streams: usize, body: usize, seconds: u64) {
    let opened = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (opened, sent) = (opened.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(target).await.unwrap();
            let (client, connection) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(connection);
            let mut held = Vec::new();
            for _ in 0..streams {
                let Ok(mut client) = client.clone().ready().await else {
                    break;
                };
                let request = http::Request::post(format!("http://{target}/hold"))
                    .header("content-length", (body * 4).to_string())
                    .body(())
                    .unwrap();
                let Ok((response, mut stream)) = client.send_request(request, false) else {
                    break;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                stream.reserve_capacity(body);
                if stream
                    .send_data(Bytes::from(vec![b'x'; body]), false)
                    .is_err()
                {
                    break;
                }
                held.push((response, stream));
            }
            sent.fetch_add(held.len() as u64 * body as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            drop(held);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    println!("streams opened:        {}", opened.load(Ordering::Relaxed));
    println!(
        "body bytes queued:     {} MiB",
        sent.load(Ordering::Relaxed) >> 20
    );
}
