//! Dot products of quantized weight rows with Q8_0-quantized activations, for generation
//! (one or a few activation rows): each weight byte is read once, straight from the GGUF
//! mapping, as ggml's `vec_dot_*_q8_0` kernels do (ggml-cpu/arch/x86/quants.c). A scalar
//! reference first; x86 AVX2 versions (runtime-selected) in `x86.rs` give the same integer
//! block sums and differ only in float summation order.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, GgmlType as _,
};
use rayon::prelude::*;

use crate::quant::fp16::f16_bits_to_f32;
use crate::quant::GgmlType;

/// Weight formats with a fused kernel here (the rest go through the GEMM path).
pub fn supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0
    ) || is_kquant(ty)
}

/// k-quants use candle's `vec_dot` kernels (runtime-selected AVX2) on the mapped bytes, with
/// Q8_K activations, inside this module's own parallel pass.
fn is_kquant(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K
    )
}

/// `bytes` as blocks of `T`, which must be a `#[repr(C)]` block of exactly `bytes_per_block`
/// bytes with alignment the slice satisfies.
fn as_blocks<T>(bytes: &[u8], bytes_per_block: usize) -> &[T] {
    assert_eq!(std::mem::size_of::<T>(), bytes_per_block, "block layout");
    assert_eq!(bytes.len() % bytes_per_block, 0);
    assert_eq!(
        bytes.as_ptr() as usize % std::mem::align_of::<T>(),
        0,
        "block alignment"
    );
    // SAFETY: size, length and alignment checked; the block types are plain old data.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / bytes_per_block) }
}

fn kquant_dot(ty: GgmlType, w: &[u8], acts: &[BlockQ8K], k: usize) -> f32 {
    let bytes = ty.info().block_bytes;
    match ty {
        GgmlType::Q2_K => BlockQ2K::vec_dot(k, as_blocks(w, bytes), acts),
        GgmlType::Q3_K => BlockQ3K::vec_dot(k, as_blocks(w, bytes), acts),
        GgmlType::Q4_K => BlockQ4K::vec_dot(k, as_blocks(w, bytes), acts),
        GgmlType::Q5_K => BlockQ5K::vec_dot(k, as_blocks(w, bytes), acts),
        GgmlType::Q6_K => BlockQ6K::vec_dot(k, as_blocks(w, bytes), acts),
        other => unreachable!("{other:?} is not a k-quant"),
    }
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

/// One weight of a fused product: format, bytes of the `[n, k]` matrix, rows `n`.
pub struct Part<'a> {
    pub ty: GgmlType,
    pub weight: &'a [u8],
    pub n: usize,
}

/// `out[r * n + j] = dot(weight row j, activation row r)` for `m` activation rows of `k`
/// values, the weight `[n, k]` in format `ty`.
pub fn matmul(ty: GgmlType, weight: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    matmul_many(&[Part { ty, weight, n }], k, x, m)
        .pop()
        .expect("one part in, one out")
}

struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Several weights applied to the same activations (Q, K and V; gate and up) in one parallel
/// pass: the activations are quantized once and the threads fork and join once, which for
/// a single token costs as much as the arithmetic.
pub fn matmul_many(parts: &[Part], k: usize, x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let q8 = GgmlType::Q8_0.info();
    let act_bytes = q8.row_bytes(k);
    let blocks = k / 32;
    // Q8_0 activations for the 32-element formats, Q8_K for the k-quants: each only if used.
    let legacy = parts.iter().any(|p| !is_kquant(p.ty));
    let mut acts = vec![0u8; if legacy { m * act_bytes } else { 0 }];
    let mut sums = vec![0f32; if legacy { m * blocks } else { 0 }];
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
    let kblocks = k / crate::quant::QK_K;
    let mut acts_k: Vec<BlockQ8K> = Vec::new();
    if parts.iter().any(|p| is_kquant(p.ty)) && k.is_multiple_of(crate::quant::QK_K) {
        acts_k = (0..m * kblocks).map(|_| BlockQ8K::zeros()).collect();
        for (dst, src) in acts_k.chunks_mut(kblocks).zip(x.chunks(k)) {
            BlockQ8K::from_float(src, dst);
        }
    }
    // Outputs stored weight-row-major ([n][m]); every task owns whole rows of one part.
    let mut outs: Vec<Vec<f32>> = parts.iter().map(|p| vec![0f32; p.n * m]).collect();
    const ROWS: usize = 16;
    let mut tasks = Vec::new();
    for (pi, p) in parts.iter().enumerate() {
        for first in (0..p.n).step_by(ROWS) {
            tasks.push((pi, first, ROWS.min(p.n - first)));
        }
    }
    let kernels: Vec<Option<DotFn>> = parts
        .iter()
        .map(|p| (!is_kquant(p.ty)).then(|| kernel(p.ty)))
        .collect();
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let (acts, sums, ptrs, acts_k) = (&acts, &sums, &ptrs, &acts_k);
    tasks.par_iter().for_each(|&(pi, first, rows)| {
        let p = &parts[pi];
        let row_bytes = p.ty.info().row_bytes(k);
        for j in first..first + rows {
            let w = &p.weight[j * row_bytes..(j + 1) * row_bytes];
            for r in 0..m {
                let v = match kernels[pi] {
                    Some(dot) => dot(
                        w,
                        &acts[r * act_bytes..(r + 1) * act_bytes],
                        &sums[r * blocks..(r + 1) * blocks],
                        blocks,
                    ),
                    None => kquant_dot(p.ty, w, &acts_k[r * kblocks..(r + 1) * kblocks], k),
                };
                // SAFETY: tasks cover disjoint weight rows, so disjoint [j][r] slots.
                unsafe { *ptrs[pi].0.add(j * m + r) = v };
            }
        }
    });
    if m == 1 {
        return outs;
    }
    outs.into_iter()
        .zip(parts)
        .map(|(o, p)| {
            let mut out = vec![0f32; m * p.n];
            for j in 0..p.n {
                for r in 0..m {
                    out[r * p.n + j] = o[j * m + r];
                }
            }
            out
        })
        .collect()
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::eval::test_values as lcg;

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
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let act_ty = if is_kquant(ty) {
                GgmlType::Q8_K
            } else {
                GgmlType::Q8_0
            };
            let info = ty.info();
            let mut q = vec![0u8; n * info.row_bytes(k)];
            crate::quant::quantize_into(ty, &w, k, None, Default::default(), &mut q).unwrap();
            let wd = crate::quant::dequantize(ty, &q, k).unwrap();
            let q8 = act_ty.info();
            let mut xq = vec![0u8; q8.row_bytes(k)];
            let mut xd = vec![0f32; m * k];
            for (src, dst) in x.chunks(k).zip(xd.chunks_mut(k)) {
                (q8.quantize_row)(src, None, &mut xq, crate::quant::Isa::Scalar);
                (q8.dequantize_row)(&xq, dst);
            }
            let got = matmul(ty, &q, n, k, &x, m);
            let scalar = (!is_kquant(ty)).then(|| scalar::kernel(ty));
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| wd[j * k + i] as f64 * xd[r * k + i] as f64)
                        .sum();
                    let g = got[r * n + j] as f64;
                    assert!((g - want).abs() < 1e-4, "{ty:?} ({r},{j}): {g} vs {want}");
                    let Some(scalar) = scalar else { continue };
                    #[cfg(target_arch = "x86_64")]
                    {
                        let wr = &q[j * info.row_bytes(k)..(j + 1) * info.row_bytes(k)];
                        let mut xq8 = vec![0u8; q8.row_bytes(k)];
                        (q8.quantize_row)(
                            &x[r * k..(r + 1) * k],
                            None,
                            &mut xq8,
                            crate::quant::Isa::Scalar,
                        );
                        let sums: Vec<f32> = xq8
                            .chunks(Q8_0_BLOCK)
                            .map(|blk| {
                                f16_at(blk, 0)
                                    * blk[2..].iter().map(|&v| v as i8 as i32).sum::<i32>() as f32
                            })
                            .collect();
                        for f in x86::variants(ty) {
                            let v = f(wr, &xq8, &sums, k / 32) as f64;
                            assert!(
                                (v - want).abs() < 1e-4,
                                "{ty:?} x86 variant ({r},{j}): {v} vs {want}"
                            );
                        }
                    }
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
