//! IQ4_NL (32-element blocks) and IQ4_XS (256-element super-blocks): 4-bit indices into a fixed
//! non-linear table, with a scale search (ggml-quants.c, `quantize_row_iq4_nl_impl`, ntry 7).

use super::fp16::{read_f16, write_f16};
use super::search::{best_index_int8, nearest_int, GROUP_MAX_EPS};
use super::simd;
use super::{BlockFormat, GgmlType, Isa, QK_K};

/// The IQ4 grid (ggml's `kvalues_iq4nl`).
pub const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Scale candidates tried on either side of the first guess.
pub const NTRY: i32 = 7;

pub struct Iq4Nl;
pub struct Iq4Xs;

fn sigma2_of(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

/// Weights of one 32-element block: importance `qw_j * sqrt(sigma2 + x_j^2)` or `x_j^2`.
pub(crate) fn block_weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32, w: &mut [f32]) {
    match qw {
        Some(qw) => {
            for j in 0..32 {
                w[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
            }
        }
        None => {
            for j in 0..32 {
                w[j] = xb[j] * xb[j];
            }
        }
    }
}

/// Best scale of one 32-element block (levels written too); 0 for an all-zero block.
pub fn search_block_scale(xb: &[f32], w: &[f32], levels: &mut [u8]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = IQ4_VALUES[0] as f32;
    let mut d = -max / v0;
    let mut id = 1.0 / d;
    let mut sumqx = 0.0f32;
    let mut sumq2 = 0.0f32;
    for j in 0..32 {
        let l = best_index_int8(&IQ4_VALUES, id * xb[j]);
        levels[j] = l as u8;
        let q = IQ4_VALUES[l] as f32;
        sumqx += w[j] * q * xb[j];
        sumq2 += w[j] * q * q;
    }
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        // The integer sum comes first, then the conversion.
        id = (itry + IQ4_VALUES[0] as i32) as f32 / max;
        sumqx = 0.0;
        sumq2 = 0.0;
        for j in 0..32 {
            let q = IQ4_VALUES[best_index_int8(&IQ4_VALUES, id * xb[j])] as f32;
            sumqx += w[j] * q * xb[j];
            sumq2 += w[j] * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

fn pack_block(levels: &[u8], qs: &mut [u8]) {
    for j in 0..16 {
        qs[j] = levels[j] | (levels[16 + j] << 4);
    }
}

fn dequantize_block(d: f32, qs: &[u8], y: &mut [f32]) {
    for j in 0..16 {
        y[j] = d * IQ4_VALUES[(qs[j] & 0xF) as usize] as f32;
        y[j + 16] = d * IQ4_VALUES[(qs[j] >> 4) as usize] as f32;
    }
}

impl BlockFormat for Iq4Nl {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const BLOCK_ELEMS: usize = 32;
    const BLOCK_BYTES: usize = 18;

    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        simd::iq4nl_row(isa, x, imatrix, out);
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (blk, y) in q
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(out.chunks_exact_mut(32))
        {
            dequantize_block(read_f16(blk, 0), &blk[2..18], y);
        }
    }
}

/// Scalar reference for one IQ4_NL row.
pub fn iq4nl_row_scalar(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    for (ib, (xb, blk)) in x.chunks_exact(32).zip(out.chunks_exact_mut(18)).enumerate() {
        let qw = imatrix.map(|w| &w[32 * ib..32 * ib + 32]);
        let mut w = [0.0f32; 32];
        block_weights(xb, qw, sigma2_of(xb), &mut w);
        let mut levels = [0u8; 32];
        let d = search_block_scale(xb, &w, &mut levels);
        iq4nl_finish(xb, d, blk);
    }
}

/// Write one IQ4_NL block from its searched scale: levels against the unrounded scale.
fn iq4nl_finish(xb: &[f32], d: f32, blk: &mut [u8]) {
    write_f16(blk, 0, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut levels = [0u8; 32];
    for j in 0..32 {
        levels[j] = best_index_int8(&IQ4_VALUES, id * xb[j]) as u8;
    }
    pack_block(&levels, &mut blk[2..18]);
}

/// Eight consecutive IQ4_NL blocks from their scales.
pub(crate) fn iq4nl_finish8(xs: &[f32], scales: &[f32; 8], out: &mut [u8]) {
    for ib in 0..8 {
        iq4nl_finish(
            &xs[32 * ib..32 * ib + 32],
            scales[ib],
            &mut out[18 * ib..18 * ib + 18],
        );
    }
}

/// Turn the eight sub-block scales of an IQ4_XS super-block into 6-bit codes and final levels.
pub(crate) fn iq4xs_finish(xs: &[f32], scales: &[f32; 8], blk: &mut [u8]) {
    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    for &d in scales {
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let d = -max_scale / 32.0;
    write_f16(blk, 0, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    let mut scales_l = [0u8; 4];
    let mut levels = [0u8; QK_K];
    for ib in 0..8 {
        let l = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for j in 0..32 {
            levels[32 * ib + j] = best_index_int8(&IQ4_VALUES, idl * xs[32 * ib + j]) as u8;
        }
        let l = (l + 32) as u8;
        scales_l[ib / 2] |= (l & 0xF) << (4 * (ib % 2));
        scales_h |= ((l >> 4) as u16) << (2 * ib);
    }
    blk[2..4].copy_from_slice(&scales_h.to_le_bytes());
    blk[4..8].copy_from_slice(&scales_l);
    for ib in 0..8 {
        pack_block(&levels[32 * ib..], &mut blk[8 + 16 * ib..8 + 16 * ib + 16]);
    }
}

impl BlockFormat for Iq4Xs {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const BLOCK_ELEMS: usize = QK_K;
    const BLOCK_BYTES: usize = 136;

    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        for (ibl, (xs, blk)) in x
            .chunks_exact(QK_K)
            .zip(out.chunks_exact_mut(Self::BLOCK_BYTES))
            .enumerate()
        {
            let qw = imatrix.map(|w| &w[QK_K * ibl..QK_K * (ibl + 1)]);
            let sigma2 = sigma2_of(xs);
            let mut w = [0.0f32; QK_K];
            for ib in 0..8 {
                let r = 32 * ib..32 * ib + 32;
                block_weights(&xs[r.clone()], qw.map(|q| &q[r.clone()]), sigma2, &mut w[r]);
            }
            let scales = simd::iq4_scales8(isa, xs, &w);
            iq4xs_finish(xs, &scales, blk);
        }
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (blk, y) in q
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(out.chunks_exact_mut(QK_K))
        {
            let d = read_f16(blk, 0);
            let scales_h = u16::from_le_bytes([blk[2], blk[3]]);
            for ib in 0..8 {
                let low = (blk[4 + ib / 2] >> (4 * (ib % 2))) & 0xF;
                let high = ((scales_h >> (2 * ib)) & 3) as u8;
                let dl = d * ((low | (high << 4)) as i32 - 32) as f32;
                dequantize_block(dl, &blk[8 + 16 * ib..], &mut y[32 * ib..32 * ib + 32]);
            }
        }
    }
}
