//! What every datagram pays on arrival before it is parsed, at a dispatcher's public
//! side: the blocklist lookup and the flood meter's count. Each iteration is one datagram.
//!
//! * `blocklist_empty`: no ban in force (the common case: one atomic load).
//! * `blocklist_1000`: 1,000 bans in force, the source not among them.
//! * `meter_one_source`: the meter counting a source it already knows.
//! * `meter_10k_sources`: the meter cycling through 10,000 sources (a table miss-heavy
//!   mix, as a dispatcher in front of many phones sees).
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failed run

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sip_transport::{Blocklist, FloodMeter};

fn arrival(c: &mut Criterion) {
    let mut g = c.benchmark_group("arrival");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let src: IpAddr = "203.0.113.9".parse().unwrap();

    let empty = Blocklist::default();
    g.bench_function("blocklist_empty", |b| {
        b.iter(|| black_box(empty.blocked(black_box(src), now)))
    });
    let full = Blocklist::default();
    for i in 0..1000u32 {
        full.block(
            IpAddr::from((0x0a00_0000 + i).to_be_bytes()),
            now + Duration::from_secs(60),
        );
    }
    g.bench_function("blocklist_1000", |b| {
        b.iter(|| black_box(full.blocked(black_box(src), now)))
    });

    // A rate no source reaches here: the cost of counting, not of banning.
    let (meter, _bans) = FloodMeter::new(u32::MAX, Duration::from_secs(60), |_| false);
    g.bench_function("meter_one_source", |b| {
        b.iter(|| black_box(meter.over(black_box(src), now)))
    });
    let sources: Vec<IpAddr> = (0..10_000u32)
        .map(|i| IpAddr::from((0xc633_0000 + i).to_be_bytes()))
        .collect();
    let mut i = 0;
    g.bench_function("meter_10k_sources", |b| {
        b.iter(|| {
            i = (i + 1) % sources.len();
            black_box(meter.over(black_box(sources[i]), now))
        })
    });
    g.finish();
}

criterion_group!(benches, arrival);
criterion_main!(benches);
