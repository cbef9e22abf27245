//! Reference dot products: one weight row (`blocks` blocks of 32) with one Q8_0 activation row.
//! Block layouts as ggml's (ggml-common.h): Q4_0 {d, qs[16]}, Q4_1 {d, m, qs[16]},
//! Q5_0 {d, qh[4], qs[16]}, Q5_1 {d, m, qh[4], qs[16]}, Q8_0 {d, qs[32]}; element j < 16 is the
//! low nibble of qs[j], element j + 16 the high nibble; bit j of qh is the fifth bit of element j.

use super::{f16_at, DotFn, Q8Row, Q8K_BLOCK, Q8_0_BLOCK};
use crate::quant::iq4::IQ4_VALUES;
use crate::quant::GgmlType;

pub fn kernel(ty: GgmlType) -> DotFn {
    match ty {
        GgmlType::Q4_0 => |w, a, b| legacy(w, a.blocks, b, 18, 2, None, None, -8),
        GgmlType::Q4_1 => |w, a, b| legacy(w, a.blocks, b, 20, 4, Some(2), None, 0),
        GgmlType::Q5_0 => |w, a, b| legacy(w, a.blocks, b, 22, 6, None, Some(2), -16),
        GgmlType::Q5_1 => |w, a, b| legacy(w, a.blocks, b, 24, 8, Some(2), Some(4), 0),
        GgmlType::Q8_0 => q8_0,
        GgmlType::IQ4_NL => iq4_nl,
        other => panic!("no dot kernel for {other:?}"),
    }
}

/// The 32 integer weights of one legacy 4/5-bit block.
#[inline]
pub fn unpack_legacy(
    block: &[u8],
    qs_at: usize,
    qh_at: Option<usize>,
    offset: i32,
    out: &mut [i32; 32],
) {
    let qh = qh_at.map_or(0, |at| {
        u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]])
    });
    for j in 0..16 {
        let b = block[qs_at + j];
        let hi_lo = ((qh >> j) & 1) << 4;
        let hi_hi = ((qh >> (j + 16)) & 1) << 4;
        out[j] = ((b & 0x0f) as u32 | hi_lo) as i32 + offset;
        out[j + 16] = ((b >> 4) as u32 | hi_hi) as i32 + offset;
    }
}

#[allow(clippy::too_many_arguments)]
fn legacy(
    w: &[u8],
    a: &[u8],
    blocks: usize,
    block_bytes: usize,
    qs_at: usize,
    min_at: Option<usize>,
    qh_at: Option<usize>,
    offset: i32,
) -> f32 {
    let mut sum = 0f32;
    let mut q = [0i32; 32];
    for b in 0..blocks {
        let wb = &w[b * block_bytes..(b + 1) * block_bytes];
        let ab = &a[b * Q8_0_BLOCK..(b + 1) * Q8_0_BLOCK];
        unpack_legacy(wb, qs_at, qh_at, offset, &mut q);
        let mut dot = 0i32;
        let mut asum = 0i32;
        for j in 0..32 {
            let x = ab[2 + j] as i8 as i32;
            dot += q[j] * x;
            asum += x;
        }
        let (dw, da) = (f16_at(wb, 0), f16_at(ab, 0));
        sum += dw * da * dot as f32;
        if let Some(m) = min_at {
            sum += f16_at(wb, m) * da * asum as f32;
        }
    }
    sum
}

fn q8_0(w: &[u8], a: Q8Row, blocks: usize) -> f32 {
    let a = a.blocks;
    let mut sum = 0f32;
    for b in 0..blocks {
        let wb = &w[b * Q8_0_BLOCK..(b + 1) * Q8_0_BLOCK];
        let ab = &a[b * Q8_0_BLOCK..(b + 1) * Q8_0_BLOCK];
        let dot: i32 = (0..32)
            .map(|j| wb[2 + j] as i8 as i32 * ab[2 + j] as i8 as i32)
            .sum();
        sum += f16_at(wb, 0) * f16_at(ab, 0) * dot as f32;
    }
    sum
}

/// IQ4_NL {d, qs[16]}: Q4_0's layout, levels from the non-linear table.
fn iq4_nl(w: &[u8], a: Q8Row, blocks: usize) -> f32 {
    let mut sum = 0f32;
    for b in 0..blocks {
        let wb = &w[b * 18..(b + 1) * 18];
        let ab = &a.blocks[b * Q8_0_BLOCK..(b + 1) * Q8_0_BLOCK];
        let mut dot = 0i32;
        for j in 0..16 {
            let (lo, hi) = (wb[2 + j] & 0x0f, wb[2 + j] >> 4);
            dot += IQ4_VALUES[lo as usize] as i32 * ab[2 + j] as i8 as i32;
            dot += IQ4_VALUES[hi as usize] as i32 * ab[2 + j + 16] as i8 as i32;
        }
        sum += f16_at(wb, 0) * f16_at(ab, 0) * dot as f32;
    }
    sum
}

/// IQ4_XS {d, scales_h, scales_l[4], qs[128]} per 256 weights against Q8_K activations
/// {f32 d, qs[256], bsums[16]} (`q8k`: their bytes): per 32 weights a 6-bit scale minus 32.
pub fn iq4_xs(w: &[u8], q8k: &[u8], superblocks: usize) -> f32 {
    let mut sum = 0f32;
    for s in 0..superblocks {
        let wb = &w[s * 136..(s + 1) * 136];
        let ab = &q8k[s * Q8K_BLOCK..(s + 1) * Q8K_BLOCK];
        let da = f32::from_le_bytes([ab[0], ab[1], ab[2], ab[3]]);
        let scales_h = u16::from_le_bytes([wb[2], wb[3]]);
        let mut total = 0i32;
        for ib in 0..8 {
            let low = (wb[4 + ib / 2] >> (4 * (ib % 2))) & 0xf;
            let high = ((scales_h >> (2 * ib)) & 3) as u8;
            let ls = (low | (high << 4)) as i32 - 32;
            let (qs, y) = (&wb[8 + 16 * ib..], &ab[4 + 32 * ib..]);
            let mut dot = 0i32;
            for j in 0..16 {
                dot += IQ4_VALUES[(qs[j] & 0x0f) as usize] as i32 * y[j] as i8 as i32;
                dot += IQ4_VALUES[(qs[j] >> 4) as usize] as i32 * y[j + 16] as i8 as i32;
            }
            total += ls * dot;
        }
        sum += f16_at(wb, 0) * da * total as f32;
    }
    sum
}
