//! Micro-benchmarks of the monitoring hot paths at 50,000 and 1,000,000 registry entries:
//! register + release, recording a message, the global stats, a page of 100 (age order and a
//! value sort) and a page's snapshots. Run: `cargo bench --bench registry`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use wsmon::monitor::{ConnectionGuard, ConnectionInfo, PageRequest, Registry, SortKey};

fn filled(n: usize) -> (Registry, Vec<ConnectionGuard>) {
    let registry = Registry::new(Duration::from_secs(300));
    let guards = (0..n)
        .map(|i| registry.register(ConnectionInfo::new(format!("client-{i}"))))
        .collect();
    (registry, guards)
}

fn registry(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for n in [50_000usize, 1_000_000] {
        let (registry, guards) = filled(n);
        group.bench_with_input(BenchmarkId::new("register_release", n), &n, |b, _| {
            b.iter(|| drop(black_box(registry.register(ConnectionInfo::new("x")))))
        });
        let entry = guards[n / 2].entry().clone();
        group.bench_with_input(BenchmarkId::new("record_message", n), &n, |b, _| {
            b.iter(|| {
                entry.record_received(black_box(32));
                entry.record_sent(black_box(48));
            })
        });
        group.bench_with_input(BenchmarkId::new("global_stats", n), &n, |b, _| {
            b.iter(|| black_box(registry.global_stats()))
        });
        let mid = format!("s{}", n / 2);
        group.bench_with_input(BenchmarkId::new("page_100_oldest", n), &n, |b, _| {
            b.iter(|| {
                let page = registry
                    .page(&PageRequest {
                        limit: 100,
                        cursor: Some(mid.clone()),
                        ..PageRequest::default()
                    })
                    .unwrap();
                black_box(
                    page.items
                        .iter()
                        .map(|e| registry.snapshot(e))
                        .collect::<Vec<_>>(),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("page_100_by_messages", n), &n, |b, _| {
            b.iter(|| {
                black_box(
                    registry
                        .page(&PageRequest {
                            limit: 100,
                            sort: SortKey::Messages,
                            ..PageRequest::default()
                        })
                        .unwrap()
                        .items
                        .len(),
                )
            })
        });
        drop(guards);
    }
    group.finish();
}

criterion_group!(benches, registry);
criterion_main!(benches);
