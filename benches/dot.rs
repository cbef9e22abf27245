//! Single-token product kernels (`eval::dot`): one activation row against a 2048x1536 weight
//! (small enough to stay in cache, so this measures the kernels, not memory), one thread,
//! GB/s of weight bytes read. These kernels are most of a generated token's time.
//!
//! cargo bench --bench dot
//! cargo bench --bench dot -- Q5_0

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quantfit::eval::dot::{Prepared, WeightView};
use quantfit::quant::{quantize, GgmlType};

fn bench(c: &mut Criterion) {
    let (rows, cols) = (2048, 1536);
    let mut state = 0x9E37_79B9u32;
    let mut next = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 8) as f32 / (1 << 24) as f32 - 0.5
    };
    let weights: Vec<f32> = (0..rows * cols).map(|_| next() * 0.04).collect();
    let x: Vec<f32> = (0..cols).map(|_| next()).collect();
    let mut group = c.benchmark_group("dot");
    group.sample_size(20);
    group.warm_up_time(std::time::Duration::from_secs(1));
    group.measurement_time(std::time::Duration::from_secs(2));
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let bytes = quantize(ty, &weights, cols, None).expect("quantizable");
        let view = WeightView::Quantized { ty, bytes: &bytes };
        let mut prepared = Prepared::default();
        prepared.prepare(&x, &[view]);
        let mut out = vec![0f32; rows];
        let mut scratch = Vec::new();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("{ty:?}"), |b| {
            b.iter(|| {
                prepared.dot_rows(view, 0, &mut out, &mut scratch);
                std::hint::black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
