//! Handlespace and policy throughput (issue targets: ≥ 1 000 000 handle resolutions/s
//! on a 10 000-PE pool for RR and LU; ≥ 500 000 re-registrations/s; ≤ 1 KiB per PE).
//!
//! `cargo bench -p rserpool-proto --bench handlespace`. Memory per PE is printed first:
//! the heap bytes held after 200 000 PEs are inserted (counted by a wrapping global
//! allocator), divided by 200 000, plus 16 bytes of malloc bookkeeping per allocation.

#![allow(
    clippy::unwrap_used,
    missing_docs,
    clippy::disallowed_methods,
    reason = "benchmark code; a real clock for test deadlines and measurements"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use rserpool_proto::handlespace::{Handlespace, Limits};
use rserpool_proto::wire::{
    Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport, TransportProtocol,
    TransportUse,
};
use rserpool_proto::{AssocId, SeededRng};

fn address(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn element(i: u32, policy: Policy, with_asap_transport: bool) -> PoolElement {
    let transport = |port| Transport {
        protocol: TransportProtocol::Sctp(TransportUse::DataOnly),
        port,
        addresses: vec![address(i)],
    };
    PoolElement {
        id: PoolElementId(i + 1),
        home_registrar: RegistrarId(1 + i % 3),
        registration_life_ms: 30_000,
        user_transport: transport(7000),
        policy,
        asap_transport: with_asap_transport.then(|| transport(49_152)),
    }
}

fn pool(n: u32, policy: impl Fn(u32) -> Policy) -> Handlespace {
    let mut hs = Handlespace::default();
    let now = Instant::now();
    let handle = PoolHandle::new(b"BenchPool").unwrap();
    for i in 0..n {
        hs.upsert(
            handle,
            element(i, policy(i), false),
            Some(AssocId(u64::from(i % 1000))),
            now,
        )
        .unwrap();
    }
    hs
}

#[global_allocator]
static ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// glibc's per-chunk overhead on 64-bit (size field plus alignment slack), an estimate.
const MALLOC_OVERHEAD: usize = 16;

fn report_memory() {
    let n = 200_000u32;
    for (label, with_asap) in [
        ("registered PE (user transport only)", false),
        ("PE learned over ENRP (with ASAP transport)", true),
    ] {
        let region = stats_alloc::Region::new(ALLOCATOR);
        let mut hs = Handlespace::new(Limits {
            max_pool_elements_per_pool: n as usize,
            ..Limits::default()
        });
        let now = Instant::now();
        let handle = PoolHandle::new(b"MemoryPool").unwrap();
        for i in 0..n {
            let e = element(i, Policy::LeastUsed { load: i }, with_asap);
            hs.upsert(handle, e, Some(AssocId(u64::from(i))), now)
                .unwrap();
        }
        let stats = region.change();
        let held = stats.bytes_allocated + stats.bytes_reallocated.max(0) as usize
            - stats.bytes_deallocated;
        let chunks = stats.allocations.saturating_sub(stats.deallocations);
        println!(
            "memory per PE, {label}, one IPv4 address each: {} bytes ({} bytes requested + {} allocations x {MALLOC_OVERHEAD})",
            (held + chunks * MALLOC_OVERHEAD) / n as usize,
            held / n as usize,
            chunks as f64 / f64::from(n),
        );
        drop(black_box(hs));
    }
}

fn handle_resolution(c: &mut Criterion) {
    let handle = PoolHandle::new(b"BenchPool").unwrap();
    type PolicyFor = fn(u32) -> Policy;
    let policies: [(&str, PolicyFor); 4] = [
        ("RR", |_| Policy::RoundRobin),
        ("LU", |i| Policy::LeastUsed {
            load: i.wrapping_mul(2_654_435_761),
        }),
        ("LUD", |i| Policy::LeastUsedDegradation {
            load: i.wrapping_mul(2_654_435_761),
            degradation: 1 << 20,
        }),
        ("WRAND", |i| Policy::WeightedRandom { weight: 1 + i % 10 }),
    ];
    let mut group = c.benchmark_group("handle_resolution_select_3");
    group.throughput(Throughput::Elements(1));
    for (name, policy) in policies {
        for n in [1_000u32, 10_000, 100_000] {
            let mut hs = pool(n, policy);
            let mut rng = SeededRng::new(1);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| black_box(hs.select(&handle, 3, None, &mut rng).unwrap().len()));
            });
        }
    }
    group.finish();
}

fn reregistration(c: &mut Criterion) {
    let handle = PoolHandle::new(b"BenchPool").unwrap();
    let mut group = c.benchmark_group("reregistration_load_update");
    group.throughput(Throughput::Elements(1));
    let n = 10_000u32;
    let mut hs = pool(n, |i| Policy::LeastUsed { load: i });
    let now = Instant::now();
    let mut i = 0u32;
    group.bench_function(BenchmarkId::new("LU", n), |b| {
        b.iter_batched(
            || {
                i = (i + 1) % n;
                let e = element(
                    i,
                    Policy::LeastUsed {
                        load: i.wrapping_mul(7_919),
                    },
                    false,
                );
                (e, AssocId(u64::from(i % 1000)))
            },
            |(e, association)| hs.upsert(handle, e, Some(association), now).unwrap(),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn drop_association(c: &mut Criterion) {
    // 10 000 PEs over 1 000 associations: dropping one removes 10 PEs.
    let hs = pool(10_000, |_| Policy::RoundRobin);
    let mut group = c.benchmark_group("drop_association");
    group.throughput(Throughput::Elements(10));
    group.bench_function("10_pes_of_10000", |b| {
        b.iter_batched(
            || hs.clone(),
            |mut hs| {
                black_box(hs.remove_association(AssocId(7)).len());
                hs // dropped outside the measurement
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn main() {
    report_memory();
    let mut criterion = Criterion::default().configure_from_args();
    handle_resolution(&mut criterion);
    reregistration(&mut criterion);
    drop_association(&mut criterion);
    criterion.final_summary();
}
