//! Row log-sum-exp over a vocabulary, the inner loop of perplexity scoring (every scored
//! position sums 50k-150k exponentials). `expf` from libm is scalar; this exp is a Cephes-style
//! polynomial (relative error ~2e-7, like expf's last-bit differences) written so the compiler
//! vectorizes it, compiled for AVX2+FMA when the CPU has them. Sums are taken in f64 per block
//! of lanes, as llama.cpp sums its softmax in double.

/// e^x for x <= 0 (inputs are logit - max); underflows to 0 below -87.
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

#[inline(always)]
fn log_sum_exp_body(row: &[f32]) -> (f32, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f64;
    for chunk in row.chunks(256) {
        let mut lanes = [0f32; 16];
        let mut it = chunk.chunks_exact(16);
        for c in &mut it {
            for i in 0..16 {
                lanes[i] += exp_nonpositive(c[i] - max);
            }
        }
        let tail: f32 = it
            .remainder()
            .iter()
            .map(|&v| exp_nonpositive(v - max))
            .sum();
        total += lanes.iter().map(|&v| v as f64).sum::<f64>() + tail as f64;
    }
    (max, total)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn log_sum_exp_avx2(row: &[f32]) -> (f32, f64) {
    log_sum_exp_body(row)
}

/// (max, sum of e^(x - max)) of a row.
pub fn max_and_sum_exp(row: &[f32]) -> (f32, f64) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { log_sum_exp_avx2(row) };
    }
    log_sum_exp_body(row)
}

/// Lanes of the softmax reductions: independent accumulators let the compiler vectorize the
/// max and the sum (a single running f32 accumulator is a dependency chain it must keep).
const LANES: usize = 16;

#[inline(always)]
fn causal_row_body(row: &mut [f32], seen: usize, scale: f32) {
    let (live, masked) = row.split_at_mut(seen);
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = live.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] *= scale;
            maxes[i] = maxes[i].max(c[i]);
        }
    }
    for v in chunks.into_remainder() {
        *v *= scale;
        maxes[0] = maxes[0].max(*v);
    }
    let max = maxes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0f32; LANES];
    let mut chunks = live.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp_nonpositive(c[i] - max);
            sums[i] += c[i];
        }
    }
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - max);
        sums[0] += *v;
    }
    let inv = (1.0 / sums.iter().map(|&v| v as f64).sum::<f64>()) as f32;
    for v in live.iter_mut() {
        *v *= inv;
    }
    masked.fill(0.0);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn causal_row_avx2(row: &mut [f32], seen: usize, scale: f32) {
    causal_row_body(row, seen, scale)
}

/// Causal softmax of one score row in place, scaled by `scale`: the query sees keys
/// `0..seen`; later keys get probability 0 without their exponentials being computed.
pub(super) fn causal_row(row: &mut [f32], seen: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { causal_row_avx2(row, seen, scale) };
    }
    causal_row_body(row, seen, scale)
}

/// ggml's GELU of every F16 value (`ggml_table_gelu_f16`, ggml-cpu.c): its CPU GeGLU looks the
/// gate up here after rounding it to F16 (vec.h `ggml_vec_geglu_f32` with GGML_GELU_FP16).
fn gelu_table() -> &'static [f32] {
    use crate::quant::fp16::{f16_bits_to_f32, f32_to_f16_bits};
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|h| {
                let x = f16_bits_to_f32(h);
                // ggml's SQRT_2_OVER_PI literal, rounded to f32 as its compiler rounds it.
                let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt() as f32;
                let y = 0.5 * x * (1.0 + (sqrt_2_over_pi * x * (1.0 + 0.044715 * x * x)).tanh());
                f16_bits_to_f32(f32_to_f16_bits(y))
            })
            .collect()
    })
}

/// `gelu(gate) * up` (tanh approximation) as ggml's CPU computes it, into `gate`: 0 at or
/// below -10, the gate itself at or above 10, the F16 table between.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    use crate::quant::fp16::f32_to_f16_bits;
    let table = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            table[f32_to_f16_bits(x) as usize] * u
        };
    }
}

/// `silu(gate) * up`, element by element, into `gate`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    use rayon::prelude::*;
    if gate.len() <= 4096 {
        return swiglu_chunk(gate, up);
    }
    gate.par_chunks_mut(4096)
        .zip(up.par_chunks(4096))
        .for_each(|(g, u)| swiglu_chunk(g, u));
}

#[inline(always)]
fn swiglu_body(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        // sigmoid from e^-|x| <= 1, so the exponential never overflows.
        let e = exp_nonpositive(-x.abs());
        let sigmoid = if x >= 0.0 {
            1.0 / (1.0 + e)
        } else {
            e / (1.0 + e)
        };
        *g = x * sigmoid * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_avx2(gate: &mut [f32], up: &[f32]) {
    swiglu_body(gate, up)
}

pub(super) fn swiglu_chunk(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { swiglu_avx2(gate, up) };
    }
    swiglu_body(gate, up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        for i in 0..200_000 {
            let x = -(i as f32) * 0.000_5;
            let (got, want) = (exp_nonpositive(x), x.exp());
            if x < -87.0 {
                assert!(got < 2e-38, "{x}: {got}");
                continue;
            }
            assert!(
                (got - want).abs() <= 4e-7 * want + f32::MIN_POSITIVE,
                "{x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn log_sum_exp_matches_a_plain_sum() {
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 101) as f32 * 0.17 - 9.0)
            .collect();
        let (max, sum) = max_and_sum_exp(&row);
        let want: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        assert!((sum / want - 1.0).abs() < 1e-6);
    }

    #[test]
    fn causal_rows_mask_and_normalize() {
        // 2 heads x 3 queries after 1 cached position: 4 keys.
        let mut s: Vec<f32> = (0..24).map(|i| (i % 5) as f32 * 0.3).collect();
        let orig = s.clone();
        for (r, row) in s.chunks_mut(4).enumerate() {
            causal_row(row, 1 + r % 3 + 1, 0.5);
        }
        for r in 0..6 {
            let seen = 1 + r % 3 + 1;
            let row = &s[r * 4..r * 4 + 4];
            assert!(row[seen..].iter().all(|&p| p == 0.0));
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            let o = &orig[r * 4..r * 4 + seen];
            let m = o.iter().fold(f32::MIN, |a, &b| a.max(b * 0.5));
            let z: f32 = o.iter().map(|&v| (v * 0.5 - m).exp()).sum();
            for j in 0..seen {
                assert!((row[j] - (o[j] * 0.5 - m).exp() / z).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn geglu_looks_up_ggmls_f16_table() {
        let gate = [
            -12.0f32, -10.0, -3.0, -0.5, 0.0, 0.25, 1.7, 9.99, 10.0, 15.0,
        ];
        let mut g = gate;
        let up = [2.0f32; 10];
        geglu(&mut g, &up);
        assert_eq!((g[0], g[1]), (0.0, 0.0));
        assert_eq!((g[8], g[9]), (20.0, 30.0));
        for (&x, &y) in gate.iter().zip(&g).skip(2).take(6) {
            let want = 0.5
                * x as f64
                * (1.0 + (0.797_884_560_8 * x as f64 * (1.0 + 0.044715 * (x * x) as f64)).tanh());
            // One F16 rounding of the input and one of the result: within 2^-10 relative.
            assert!(
                (y as f64 / 2.0 - want).abs() <= 2e-3 * want.abs().max(1e-3),
                "{x}: {y}"
            );
        }
        // The gate is rounded to F16 before the lookup: neighbours within one F16 step agree.
        let (mut a, mut b) = ([1.0f32 + 1e-5], [1.0f32 + 2e-5]);
        geglu(&mut a, &[1.0]);
        geglu(&mut b, &[1.0]);
        assert_eq!(a, b);
    }

    #[test]
    fn swiglu_matches_its_definition() {
        let mut g: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.05).collect();
        let u: Vec<f32> = (0..1000).map(|i| (i % 7) as f32 - 3.0).collect();
        let want: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(&x, &u)| x / (1.0 + (-x).exp()) * u)
            .collect();
        swiglu(&mut g, &u);
        for (a, b) in g.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} {b}");
        }
    }
}
