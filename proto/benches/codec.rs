//! Codec throughput (issue: ≥ 2 million registration decodes per second on one core).
//! `cargo bench -p rserpool-proto --bench codec`; criterion prints time per operation
//! and elements per second.

#![allow(clippy::unwrap_used, missing_docs, reason = "benchmark code")]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rserpool_proto::wire::{
    AsapMessage, HandleResolutionResponse, Policy, PoolElement, PoolElementId, PoolHandle,
    RegistrarId, Registration, Transport, TransportProtocol, TransportUse,
};

fn pool_element(i: u32) -> PoolElement {
    PoolElement {
        id: PoolElementId(0x1000_0000 + i),
        home_registrar: RegistrarId(0x1122_3344),
        registration_life_ms: 90_000,
        user_transport: Transport {
            protocol: TransportProtocol::Sctp(TransportUse::DataOnly),
            port: 7000,
            addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8))],
        },
        policy: Policy::LeastUsedDegradation {
            load: i * 1000,
            degradation: 0x0100_0000,
        },
        asap_transport: None,
    }
}

fn codec(c: &mut Criterion) {
    let pool_handle = PoolHandle::new(b"EchoPool").unwrap();
    let registration = AsapMessage::Registration(Registration {
        pool_handle,
        pool_element: pool_element(1),
    });
    let response = AsapMessage::HandleResolutionResponse(HandleResolutionResponse {
        pool_handle,
        policy: Some(Policy::LeastUsedDegradation {
            load: 0,
            degradation: 0,
        }),
        pool_elements: (0..16).map(pool_element).collect(),
        error: None,
    });
    for (name, message) in [
        ("registration", &registration),
        ("handle_resolution_response_16", &response),
    ] {
        let bytes = message.encode().unwrap();
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        group.bench_function("decode", |b| {
            b.iter(|| AsapMessage::decode(black_box(&bytes)).unwrap())
        });
        group.bench_function("encode", |b| {
            b.iter(|| black_box(message).encode().unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
