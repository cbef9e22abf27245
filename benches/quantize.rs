//! Quantization throughput (MB/s of f32 input) for every type on a 4096x4096 N(0, 0.02) matrix:
//! single thread and all threads, with and without an importance matrix.
//!
//! cargo bench --bench quantize                         # everything (takes a while)
//! cargo bench --bench quantize -- 'Q4_K/1t'            # a filter
//! QUANTFIT_BENCH_ROWS=512 cargo bench --bench quantize # a smaller matrix
//! QUANTFIT_ISA=scalar cargo bench --bench quantize     # the scalar reference kernels

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quantfit::quant::{quantize_with, GgmlType, Isa, QuantizeOptions};

/// Deterministic Gaussian-ish input (sum of uniforms from a fixed LCG), like real weights.
fn matrix(rows: usize, cols: usize) -> Vec<f32> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..rows * cols)
        .map(|_| ((0..4).map(|_| uniform()).sum::<f32>() - 2.0) * 0.02 * 1.732)
        .collect()
}

fn bench(c: &mut Criterion) {
    let cols = 4096;
    let rows: usize = std::env::var("QUANTFIT_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    let data = matrix(rows, cols);
    let imatrix: Vec<f32> = (0..cols).map(|i| 0.5 + (i % 17) as f32 / 8.0).collect();
    let isa = Isa::best();
    let mut group = c.benchmark_group("quantize");
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_secs(1));
    group.measurement_time(std::time::Duration::from_secs(3));
    group.throughput(Throughput::Bytes((data.len() * 4) as u64));
    for ty in GgmlType::all().filter(|t| *t != GgmlType::F32) {
        for (threads, parallel) in [("1t", false), ("all", true)] {
            for with_imatrix in [false, true] {
                if with_imatrix && !ty.info().uses_imatrix {
                    continue;
                }
                let id = format!(
                    "{}/{}{}",
                    ty.name(),
                    threads,
                    if with_imatrix { "/imatrix" } else { "" }
                );
                let opts = QuantizeOptions { isa, parallel };
                group.bench_function(BenchmarkId::from_parameter(id), |b| {
                    b.iter(|| {
                        quantize_with(ty, &data, cols, with_imatrix.then_some(&imatrix[..]), opts)
                            .unwrap()
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
