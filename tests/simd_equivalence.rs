//! Every vector path gives the scalar reference's bytes, on inputs beyond the fixtures:
//! random rows at many scales, all-zero and constant blocks, outliers, tiny magnitudes.
//! The portable lanes (the NEON path) run here too, whatever the host.

mod common;

use quantfit::quant::{quantize_with, GgmlType, Isa, QuantizeOptions};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn gauss(&mut self) -> f32 {
        (0..6).map(|_| self.next()).sum::<f32>() - 3.0
    }
}

fn matrix(seed: u64, rows: usize, cols: usize) -> Vec<f32> {
    let mut rng = Lcg(seed);
    let mut data = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let scale = [0.02f32, 1.0, 1e-3, 300.0, 1e-30, 7.0][r % 6];
        for c in 0..cols {
            let mut v = rng.gauss() * scale;
            match (r / 6) % 4 {
                1 if (c / 32) % 3 == 0 => v = 0.0,   // all-zero blocks
                2 if (c / 16) % 4 == 1 => v = scale, // constant blocks
                3 if rng.next() < 0.02 => v *= 50.0, // outliers
                _ => {}
            }
            data.push(v);
        }
    }
    data
}

#[test]
fn vector_paths_equal_scalar_bytes() {
    let cols = 1024;
    let mut isas: Vec<Isa> = Isa::available()
        .into_iter()
        .filter(|i| *i != Isa::SCALAR)
        .collect();
    if !isas.contains(&Isa::PORTABLE) {
        isas.push(Isa::PORTABLE); // the portable lane kernels
    }
    common::report_missing_isas("simd_equivalence::vector_paths_equal_scalar_bytes");
    let mut compared = 0;
    for seed in 1..=3u64 {
        let data = matrix(seed, 24, cols);
        let mut rng = Lcg(seed * 77);
        let imatrix: Vec<f32> = (0..cols).map(|_| rng.next() * 4.0).collect();
        for ty in GgmlType::all() {
            for w in [None, Some(&imatrix[..])] {
                let scalar = QuantizeOptions {
                    isa: Isa::SCALAR,
                    parallel: true,
                };
                let want = quantize_with(ty, &data, cols, w, scalar).unwrap();
                for &isa in &isas {
                    let got = quantize_with(
                        ty,
                        &data,
                        cols,
                        w,
                        QuantizeOptions {
                            isa,
                            parallel: true,
                        },
                    )
                    .unwrap();
                    let first = got.iter().zip(&want).position(|(a, b)| a != b);
                    assert!(
                        first.is_none(),
                        "{ty} {} seed {seed} imatrix {}: first differing byte {first:?}",
                        isa.name(),
                        w.is_some()
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(compared >= 3 * 16 * 2, "compared {compared}");
}
