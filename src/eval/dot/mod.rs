//! Dot products of quantized weight rows with Q8_0-quantized activations, for generation
//! (one or a few activation rows): each weight byte is read once, straight from the GGUF
//! mapping, as ggml's `vec_dot_*_q8_0` kernels do (ggml-cpu/arch/x86/quants.c). A scalar
//! reference first; x86 AVX2 versions (runtime-selected) in `x86.rs` give the same integer
//! block sums and differ only in float summation order.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

use crate::quant::fp16::f16_bits_to_f32;
use crate::quant::GgmlType;

/// Weight formats with a fused kernel here (the rest go through candle or the GEMM path).
pub fn supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0
    )
}

/// Bytes of one Q8_0 block: f16 scale, 32 signed bytes.
pub const Q8_0_BLOCK: usize = 34;

/// (weight row, Q8_0 activation row, d_a x sum of each activation block, blocks) -> dot.
type DotFn = fn(&[u8], &[u8], &[f32], usize) -> f32;

fn kernel(ty: GgmlType) -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if let Some(f) = x86::kernel(ty) {
        return f;
    }
    scalar::kernel(ty)
}

/// `out[r * n + j] = dot(weight row j, activation row r)` for `m` activation rows of `k`
/// values, the weight `[n, k]` in format `ty`.
pub fn matmul(ty: GgmlType, weight: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    let info = ty.info();
    let row_bytes = info.row_bytes(k);
    let q8 = GgmlType::Q8_0.info();
    let act_bytes = q8.row_bytes(k);
    let blocks = k / 32;
    let mut acts = vec![0u8; m * act_bytes];
    let mut sums = vec![0f32; m * blocks];
    for ((dst, src), s) in acts
        .chunks_mut(act_bytes)
        .zip(x.chunks(k))
        .zip(sums.chunks_mut(blocks))
    {
        (q8.quantize_row)(src, None, dst, crate::quant::Isa::best());
        for (b, sb) in s.iter_mut().enumerate() {
            let block = &dst[b * Q8_0_BLOCK..(b + 1) * Q8_0_BLOCK];
            let total: i32 = block[2..].iter().map(|&v| v as i8 as i32).sum();
            *sb = f16_at(block, 0) * total as f32;
        }
    }
    let dot = kernel(ty);
    // Weight rows outer: each row is read from memory once and dotted with every activation.
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(m)
        .with_min_len(32)
        .zip(weight.par_chunks(row_bytes))
        .for_each(|(o, w)| {
            for (r, v) in o.iter_mut().enumerate() {
                *v = dot(
                    w,
                    &acts[r * act_bytes..(r + 1) * act_bytes],
                    &sums[r * blocks..(r + 1) * blocks],
                    blocks,
                );
            }
        });
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for r in 0..m {
            out[r * n + j] = out_t[j * m + r];
        }
    }
    out
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Every kernel against the dequantized weights times the Q8_0-rounded activations.
    #[test]
    fn kernels_match_dequantized_products() {
        let (n, k, m) = (37, 256, 3);
        let w = lcg(n * k, 7);
        let x = lcg(m * k, 11);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
        ] {
            let info = ty.info();
            let mut q = vec![0u8; n * info.row_bytes(k)];
            crate::quant::quantize_into(ty, &w, k, None, Default::default(), &mut q).unwrap();
            let wd = crate::quant::dequantize(ty, &q, k).unwrap();
            let q8 = GgmlType::Q8_0.info();
            let mut xq = vec![0u8; q8.row_bytes(k)];
            let mut xd = vec![0f32; m * k];
            for (src, dst) in x.chunks(k).zip(xd.chunks_mut(k)) {
                (q8.quantize_row)(src, None, &mut xq, crate::quant::Isa::Scalar);
                (q8.dequantize_row)(&xq, dst);
            }
            let got = matmul(ty, &q, n, k, &x, m);
            let scalar = scalar::kernel(ty);
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| wd[j * k + i] as f64 * xd[r * k + i] as f64)
                        .sum();
                    let g = got[r * n + j] as f64;
                    assert!((g - want).abs() < 1e-4, "{ty:?} ({r},{j}): {g} vs {want}");
                    xq.fill(0);
                    (q8.quantize_row)(
                        &x[r * k..(r + 1) * k],
                        None,
                        &mut xq,
                        crate::quant::Isa::Scalar,
                    );
                    let s = scalar(
                        &q[j * info.row_bytes(k)..(j + 1) * info.row_bytes(k)],
                        &xq,
                        &[],
                        k / 32,
                    );
                    assert!((s as f64 - want).abs() < 1e-4, "{ty:?} scalar ({r},{j})");
                }
            }
        }
    }
}
