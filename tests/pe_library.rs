//! The PE library (`rserpool::service`) in front of the TCP gateway: a native PE with a
//! control channel answers 2 MiB at once, and the client behind the gateway gets every
//! byte with no failover (the library cuts the answer into frames the gateway accepts;
//! one 2 MiB frame was refused as a PE failure, and the next PE did the same).

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Process, eventually, registrar};
use rserpool::service::{Event, PoolElementService, ServiceConfig};
use rserpool_proto::wire::PoolHandle;

const ANSWER: usize = 2 * 1024 * 1024 + 17;

fn byte(i: usize) -> u8 {
    (i % 251) as u8
}

#[test]
fn a_two_mebibyte_answer_reaches_the_client_whole() {
    let registrar = registrar(&[]);
    let asap = registrar.address("asap");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pool = PoolHandle::new(b"BigPool").unwrap();
    let config = ServiceConfig::new(pool, "127.0.0.1:0".parse().unwrap(), vec![asap]);
    let service = runtime.block_on(PoolElementService::start(config)).unwrap();
    // The PE: the first bytes of a session are answered with ANSWER bytes at once.
    runtime.spawn(async move {
        while let Ok(mut session) = service.accept().await {
            tokio::spawn(async move {
                while let Ok(event) = session.next_event().await {
                    match event {
                        Event::Data(_) => {
                            let answer: Vec<u8> = (0..ANSWER).map(byte).collect();
                            if session.send(&answer).await.is_err() {
                                return;
                            }
                        }
                        Event::Closed => return,
                        _ => {}
                    }
                }
            });
        }
    });
    assert!(eventually(Duration::from_secs(10), || {
        common::resolve_ids(asap, "BigPool").len() == 1
    }));
    let gateway = Process::start(&[
        "gateway",
        "--registrar",
        &asap.to_string(),
        "--tcp",
        "127.0.0.1:0=BigPool",
    ]);
    let mut client = TcpStream::connect(gateway.listener("tcp")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client.write_all(b"go\n").unwrap();
    let mut received = vec![0u8; ANSWER];
    client.read_exact(&mut received).unwrap();
    assert!(
        received.iter().enumerate().all(|(i, b)| *b == byte(i)),
        "every byte as sent"
    );
    assert!(
        !gateway.log_contains("failover") && !gateway.log_contains("exceeds"),
        "no failover: {:?}",
        gateway.log.lock().unwrap()
    );
    drop(client);
    runtime.shutdown_timeout(Duration::from_secs(1));
}
