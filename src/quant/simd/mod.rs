//! Dispatch of the hot loops to SIMD kernels. Each kernel runs one independent block per vector
//! lane, so every lane performs exactly the scalar reference's operations in the scalar order
//! and the bytes cannot differ; only the number of blocks in flight changes.

use super::iq4::{block_weights, iq4nl_row_scalar, search_block_scale};
use super::search::{make_qkx_quants, AffineSearch};
use super::{Isa, QK_K};

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Affine search (`make_qkx_quants`) of every `sub`-element sub-block of a 256 super-block.
#[allow(clippy::too_many_arguments)]
pub fn affine_subblocks(
    isa: Isa,
    xs: &[f32],
    weights: &[f32],
    sub: usize,
    p: AffineSearch,
    levels: &mut [u8; QK_K],
    scales: &mut [f32],
    mins: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 || isa == Isa::Avx512 {
        // SAFETY: callers only pass an Isa that `Isa::is_supported` accepted.
        unsafe { avx2::affine_subblocks(xs, weights, sub, p, levels, scales, mins) };
        return;
    }
    let _ = isa;
    affine_subblocks_scalar(xs, weights, sub, p, levels, scales, mins);
}

pub fn affine_subblocks_scalar(
    xs: &[f32],
    weights: &[f32],
    sub: usize,
    p: AffineSearch,
    levels: &mut [u8; QK_K],
    scales: &mut [f32],
    mins: &mut [f32],
) {
    for j in 0..QK_K / sub {
        let r = sub * j..sub * (j + 1);
        let (s, m) = make_qkx_quants(&xs[r.clone()], &weights[r.clone()], p, &mut levels[r]);
        scales[j] = s;
        mins[j] = m;
    }
}

/// IQ4 scale search of the eight 32-element sub-blocks of a super-block.
pub fn iq4_scales8(isa: Isa, xs: &[f32], weights: &[f32]) -> [f32; 8] {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 || isa == Isa::Avx512 {
        // SAFETY: as above.
        return unsafe { avx2::iq4_scales8(xs, weights) };
    }
    let _ = isa;
    iq4_scales8_scalar(xs, weights)
}

pub fn iq4_scales8_scalar(xs: &[f32], weights: &[f32]) -> [f32; 8] {
    let mut scales = [0.0f32; 8];
    let mut levels = [0u8; 32];
    for (ib, s) in scales.iter_mut().enumerate() {
        let r = 32 * ib..32 * ib + 32;
        *s = search_block_scale(&xs[r.clone()], &weights[r], &mut levels);
    }
    scales
}

/// One IQ4_NL row: blocks are searched eight at a time on x86.
pub fn iq4nl_row(isa: Isa, x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 || isa == Isa::Avx512 {
        let full = x.len() / 256 * 256;
        for (g, (xs, blk)) in x[..full]
            .chunks_exact(256)
            .zip(out.chunks_exact_mut(8 * 18))
            .enumerate()
        {
            let mut w = [0.0f32; 256];
            for ib in 0..8 {
                let r = 32 * ib..32 * ib + 32;
                let qw = imatrix.map(|q| &q[256 * g + 32 * ib..256 * g + 32 * ib + 32]);
                let xb = &xs[r.clone()];
                let mut s = 0.0f32;
                for &v in xb {
                    s += v * v;
                }
                block_weights(xb, qw, s * (2.0 / 32.0), &mut w[r]);
            }
            // SAFETY: as above.
            let scales = unsafe { avx2::iq4_scales8(xs, &w) };
            super::iq4::iq4nl_finish8(xs, &scales, blk);
        }
        let tail_blocks = full / 32;
        iq4nl_row_scalar(
            &x[full..],
            imatrix.map(|q| &q[full..]),
            &mut out[tail_blocks * 18..],
        );
        return;
    }
    let _ = isa;
    iq4nl_row_scalar(x, imatrix, out);
}
