//! What interposing the clock and entropy costs.
//!
//! `std::time::Instant::now()` and a 16-byte `getrandom` on a thread that
//! is not deja's (the interposer checks two thread-locals and forwards),
//! against the C library's own function read past the interposer; and a
//! reading inside a recording's task, which logs an event.
//!
//! Run with `cargo bench -p deja --bench intercept`.

// criterion_group! makes an undocumented function.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn live_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock");
    group.bench_function("c_library_clock_gettime", |b| {
        b.iter(|| black_box(deja::recorder::clock::mono_ns()))
    });
    group.bench_function("std_instant_now_interposed", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    group.bench_function("std_system_time_now_interposed", |b| {
        b.iter(|| black_box(std::time::SystemTime::now()))
    });
    group.finish();

    let mut group = c.benchmark_group("entropy");
    group.bench_function("getrandom_16_interposed", |b| {
        let mut bytes = [0u8; 16];
        b.iter(|| {
            getrandom::fill(&mut bytes).expect("entropy");
            black_box(bytes)
        })
    });
    group.finish();
}

fn recorded_task(c: &mut Criterion) {
    let out = tempfile::tempdir().expect("tempdir");
    let mut runtime = deja::Builder::new()
        .mode(deja::Mode::Record)
        .trace_dir(out.path())
        .service("intercept-bench")
        .build()
        .expect("record runtime");
    let mut group = c.benchmark_group("clock_in_a_recorded_task");
    runtime
        .block_on(async {
            group.bench_function("std_instant_now_logged", |b| {
                b.iter(|| black_box(std::time::Instant::now()))
            });
        })
        .expect("recorded run");
    group.finish();
}

criterion_group!(benches, live_thread, recorded_task);
criterion_main!(benches);
