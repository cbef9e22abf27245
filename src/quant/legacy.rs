//! The 32-element formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Without an importance matrix ggml uses its round-to-grid reference quantizers; with one it
//! searches the scale (`make_qx_quants` / `make_qkx3_quants`) under weights
//! `w_j * sqrt(sigma^2 + x_j^2)`, sigma^2 the row's mean square (ggml-quants.c,
//! `quantize_row_q4_0_impl` and siblings). Q8_0 ignores the importance matrix, as ggml does.

use super::fp16::{read_f16, write_f16};
use super::search::{make_qkx_quants, make_qx_quants, AffineSearch};
use super::simd;
use super::{BlockFormat, GgmlType, Isa};

pub const QK: usize = 32;

pub struct Q4_0;
pub struct Q4_1;
pub struct Q5_0;
pub struct Q5_1;
pub struct Q8_0;

/// Mean square of the row, as ggml computes it for the importance weights (sequential sum).
pub(crate) fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// C's float-to-small-integer conversion as compiled for x86-64: a truncating conversion to
/// int32 (`cvttss2si`, which yields i32::MIN for NaN and out-of-range values, e.g. the
/// infinities a subnormal scale produces) and then the low byte.
#[inline(always)]
pub(crate) fn c_trunc_to_byte(v: f32) -> u8 {
    let in_range = v > -2_147_483_904.0 && v < 2_147_483_648.0;
    // SAFETY: only converted when inside the i32 range (the branch becomes a vector select).
    let i = if in_range {
        unsafe { v.to_int_unchecked::<i32>() }
    } else {
        i32::MIN
    };
    i as u8
}
fn importance_weights(xb: &[f32], qw: &[f32], sigma2: f32, out: &mut [f32]) {
    for j in 0..QK {
        out[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
    }
}

/// ggml's reference (no importance matrix) quantizers of the 32-element formats, written so
/// that the compiler vectorizes them within a block; `simd` compiles this once per instruction
/// set. Every step is exact or elementwise, so all builds give the same bytes.
#[inline(always)]
pub(crate) fn plain_row(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    match ty {
        GgmlType::Q4_0 => {
            const B: usize = 18;
            for (xb, blk) in x.chunks_exact(QK).zip(out.chunks_exact_mut(B)) {
                let d = signed_absmax(xb) / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                write_f16(blk, 0, d);
                // C truncates toward zero when storing into int8_t.
                let mut l = [0u8; QK];
                for j in 0..QK {
                    l[j] = (c_trunc_to_byte(xb[j] * id + 8.5) as i8).min(15) as u8;
                }
                pack_nibbles(|j| l[j], &mut blk[2..]);
            }
        }
        GgmlType::Q4_1 => {
            const B: usize = 20;
            for (xb, blk) in x.chunks_exact(QK).zip(out.chunks_exact_mut(B)) {
                let (min, max) = min_max(xb);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                write_f16(blk, 0, d);
                write_f16(blk, 2, min);
                let mut l = [0u8; QK];
                for j in 0..QK {
                    l[j] = (c_trunc_to_byte((xb[j] - min) * id + 0.5) as i8).min(15) as u8;
                }
                pack_nibbles(|j| l[j], &mut blk[4..]);
            }
        }
        GgmlType::Q5_0 => {
            const B: usize = 22;
            for (xb, blk) in x.chunks_exact(QK).zip(out.chunks_exact_mut(B)) {
                let d = signed_absmax(xb) / -16.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let mut l = [0u8; QK];
                for j in 0..QK {
                    l[j] = (c_trunc_to_byte(xb[j] * id + 16.5) as i8).min(31) as u8;
                }
                write_f16(blk, 0, d);
                blk[2..6].copy_from_slice(&high_bits(|j| l[j]));
                pack_nibbles(|j| l[j], &mut blk[6..]);
            }
        }
        GgmlType::Q5_1 => {
            const B: usize = 24;
            for (xb, blk) in x.chunks_exact(QK).zip(out.chunks_exact_mut(B)) {
                let (min, max) = min_max(xb);
                let d = (max - min) / 31.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let mut l = [0u8; QK];
                for j in 0..QK {
                    l[j] = c_trunc_to_byte((xb[j] - min) * id + 0.5);
                }
                write_f16(blk, 0, d);
                write_f16(blk, 2, min);
                blk[4..8].copy_from_slice(&high_bits(|j| l[j]));
                pack_nibbles(|j| l[j], &mut blk[8..]);
            }
        }
        GgmlType::Q8_0 => {
            const B: usize = 34;
            for (xb, blk) in x.chunks_exact(QK).zip(out.chunks_exact_mut(B)) {
                let mut amax = 0.0f32;
                for &v in xb {
                    let a = v.abs();
                    amax = if amax > a { amax } else { a };
                }
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                write_f16(blk, 0, d);
                for j in 0..QK {
                    // roundf: half away from zero.
                    blk[2 + j] = c_trunc_to_byte((xb[j] * id).round());
                }
            }
        }
        other => unreachable!("{other} is not a 32-element reference format"),
    }
}

/// Groups of up to eight blocks with their importance weights, so that the searches can run
/// eight blocks at a time: `(first block index, values, weights)`.
fn imatrix_groups<'a>(
    x: &'a [f32],
    qw: &'a [f32],
) -> impl Iterator<Item = (usize, &'a [f32], [f32; 8 * QK])> + 'a {
    let sigma2 = row_sigma2(x);
    x.chunks(8 * QK).enumerate().map(move |(g, xs)| {
        let mut w = [0.0f32; 8 * QK];
        for ib in 0..xs.len() / QK {
            let at = 8 * QK * g + QK * ib;
            importance_weights(
                &xs[QK * ib..],
                &qw[at..at + QK],
                sigma2,
                &mut w[QK * ib..QK * ib + QK],
            );
        }
        (8 * g, xs, w)
    })
}

/// Symmetric weighted search of every block of a row; calls `write(block, scale, levels)`.
fn imatrix_symmetric(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    isa: Isa,
    mut write: impl FnMut(usize, f32, &[i8]),
) {
    for (first, xs, w) in imatrix_groups(x, qw) {
        let mut levels = [0i8; 8 * QK];
        let mut scales = [0.0f32; 8];
        let nb = xs.len() / QK;
        if nb == 8 {
            simd::qx_subblocks(isa, xs, Some(&w), QK, nmax, &mut levels, &mut scales);
        } else {
            for ib in 0..nb {
                let r = QK * ib..QK * ib + QK;
                scales[ib] =
                    make_qx_quants(&xs[r.clone()], nmax, &mut levels[r.clone()], Some(&w[r]));
            }
        }
        for ib in 0..nb {
            write(first + ib, scales[ib], &levels[QK * ib..QK * ib + QK]);
        }
    }
}

/// Affine weighted search of every block of a row; calls `write(block, scale, min, levels)`.
fn imatrix_affine(
    x: &[f32],
    qw: &[f32],
    p: AffineSearch,
    isa: Isa,
    mut write: impl FnMut(usize, f32, f32, &[u8]),
) {
    for (first, xs, w) in imatrix_groups(x, qw) {
        let mut levels = [0u8; 8 * QK];
        let mut scales = [0.0f32; 8];
        let mut mins = [0.0f32; 8];
        let nb = xs.len() / QK;
        if nb == 8 {
            simd::affine_subblocks(isa, xs, &w, QK, p, &mut levels, &mut scales, &mut mins);
        } else {
            for ib in 0..nb {
                let r = QK * ib..QK * ib + QK;
                (scales[ib], mins[ib]) =
                    make_qkx_quants(&xs[r.clone()], &w[r.clone()], p, &mut levels[r]);
            }
        }
        for ib in 0..nb {
            write(
                first + ib,
                scales[ib],
                mins[ib],
                &levels[QK * ib..QK * ib + QK],
            );
        }
    }
}

/// The value of largest magnitude, the first one on ties (+0.0 when all are zero), as ggml's
/// sequential `if (amax < fabsf(v))` scan finds it. The signed extremes come from an integer
/// reduction that vectorizes; only a tie between +a and -a (or a constant block) needs the
/// sequential scan to know which came first.
#[inline(always)]
fn signed_absmax(xb: &[f32]) -> f32 {
    let (kmin, kmax) = xb.iter().fold((u32::MAX, 0u32), |(lo, hi), &v| {
        let k = order_key(v);
        (lo.min(k), hi.max(k))
    });
    let (min, max) = (from_order_key(kmin), from_order_key(kmax));
    let (amin, amax) = (min.abs(), max.abs());
    if amax > amin {
        max
    } else if amin > amax {
        min
    } else if amax == 0.0 {
        0.0
    } else {
        *xb.iter()
            .find(|v| v.abs() == amax)
            .expect("an extreme exists")
    }
}

/// Total order key of a finite float's bits (-0.0 just below +0.0).
#[inline(always)]
fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

#[inline(always)]
fn from_order_key(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7FFF_FFFF
    } else {
        !k
    })
}

/// Minimum and maximum as ggml's sequential `<` / `>` scan finds them: when the extreme is a
/// zero, the first zero seen keeps its sign.
#[inline(always)]
fn min_max(xb: &[f32]) -> (f32, f32) {
    let (kmin, kmax) = xb.iter().fold((u32::MAX, 0u32), |(lo, hi), &v| {
        let k = order_key(v);
        (lo.min(k), hi.max(k))
    });
    let first_zero = || {
        *xb.iter()
            .find(|v| **v == 0.0)
            .expect("a zero extreme exists")
    };
    let mut min = from_order_key(kmin);
    let mut max = from_order_key(kmax);
    if min == 0.0 {
        min = first_zero();
    }
    if max == 0.0 {
        max = first_zero();
    }
    (min, max)
}

#[inline(always)]
fn pack_nibbles(levels: impl Fn(usize) -> u8, qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = (levels(j) & 0x0F) | ((levels(j + QK / 2) & 0x0F) << 4);
    }
}

/// The 32 five-bit levels of a block from its fifth bits (`qh`, element j at bit j) and nibbles.
#[inline(always)]
fn five_bit_levels(qh: &[u8], qs: &[u8]) -> [i32; QK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|j| {
        let nibble = if j < QK / 2 {
            qs[j] & 0x0F
        } else {
            qs[j - QK / 2] >> 4
        };
        nibble as i32 | (((qh >> j) & 1) << 4) as i32
    })
}

/// Fifth bits of 32 five-bit levels, element j at bit j.
#[inline(always)]
fn high_bits(levels: impl Fn(usize) -> u8) -> [u8; 4] {
    let mut qh = 0u32;
    for j in 0..QK {
        qh |= (((levels(j) & 0x10) >> 4) as u32) << j;
    }
    qh.to_le_bytes()
}

impl BlockFormat for Q4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK_ELEMS: usize = QK;
    const BLOCK_BYTES: usize = 18;

    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        const B: usize = Q4_0::BLOCK_BYTES;
        if let Some(qw) = imatrix {
            return imatrix_symmetric(x, qw, 8, isa, |ib, d, l| {
                let blk = &mut out[B * ib..B * ib + B];
                write_f16(blk, 0, d);
                pack_nibbles(|j| l[j] as u8, &mut blk[2..]);
            });
        }
        simd::legacy_plain_row(isa, Self::TYPE, x, out);
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (blk, y) in q
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(out.chunks_exact_mut(QK))
        {
            let d = read_f16(blk, 0);
            for j in 0..QK / 2 {
                let b = blk[2 + j];
                y[j] = ((b & 0x0F) as i32 - 8) as f32 * d;
                y[j + QK / 2] = ((b >> 4) as i32 - 8) as f32 * d;
            }
        }
    }
}

impl BlockFormat for Q4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK_ELEMS: usize = QK;
    const BLOCK_BYTES: usize = 20;

    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        const B: usize = Q4_1::BLOCK_BYTES;
        if let Some(qw) = imatrix {
            return imatrix_affine(x, qw, IMATRIX_AFFINE_15, isa, |ib, d, min, l| {
                let blk = &mut out[B * ib..B * ib + B];
                write_f16(blk, 0, d);
                write_f16(blk, 2, -min);
                pack_nibbles(|j| l[j], &mut blk[4..]);
            });
        }
        simd::legacy_plain_row(isa, Self::TYPE, x, out);
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (blk, y) in q
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(out.chunks_exact_mut(QK))
        {
            let d = read_f16(blk, 0);
            let m = read_f16(blk, 2);
            for j in 0..QK / 2 {
                let b = blk[4 + j];
                y[j] = (b & 0x0F) as f32 * d + m;
                y[j + QK / 2] = (b >> 4) as f32 * d + m;
            }
        }
    }
}

const IMATRIX_AFFINE_15: AffineSearch = AffineSearch {
    nmax: 15,
    rmin: -0.9,
    rdelta: 0.05,
    nstep: 36,
    use_mad: false,
};
const IMATRIX_AFFINE_31: AffineSearch = AffineSearch {
    nmax: 31,
    ..IMATRIX_AFFINE_15
};

impl BlockFormat for Q5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK_ELEMS: usize = QK;
    const BLOCK_BYTES: usize = 22;

    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        const B: usize = Q5_0::BLOCK_BYTES;
        let write = |blk: &mut [u8], d: f32, l: &dyn Fn(usize) -> u8| {
            write_f16(blk, 0, d);
            blk[2..6].copy_from_slice(&high_bits(l));
            pack_nibbles(l, &mut blk[6..]);
        };
        if let Some(qw) = imatrix {
            return imatrix_symmetric(x, qw, 16, isa, |ib, d, l| {
                write(&mut out[B * ib..B * ib + B], d, &|j| l[j] as u8)
            });
        }
        simd::legacy_plain_row(isa, Self::TYPE, x, out);
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (blk, y) in q
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(out.chunks_exact_mut(QK))
        {
            let d = read_f16(blk, 0);
            for (j, l) in five_bit_levels(&blk[2..6], &blk[6..22])
                .into_iter()
                .enumerate()
            {
                y[j] = (l - 16) as f32 * d;
            }
        }
    }
}

impl BlockFormat for Q5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const BLOCK_ELEMS: usize = QK;
    const BLOCK_BYTES: usize = 24;

    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        const B: usize = Q5_1::BLOCK_BYTES;
        let write = |blk: &mut [u8], d: f32, m: f32, l: &[u8]| {
            write_f16(blk, 0, d);
            write_f16(blk, 2, m);
            blk[4..8].copy_from_slice(&high_bits(|j| l[j]));
            pack_nibbles(|j| l[j], &mut blk[8..]);
        };
        if let Some(qw) = imatrix {
            return imatrix_affine(x, qw, IMATRIX_AFFINE_31, isa, |ib, d, min, l| {
                write(&mut out[B * ib..B * ib + B], d, -min, l)
            });
        }
        simd::legacy_plain_row(isa, Self::TYPE, x, out);
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (blk, y) in q
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(out.chunks_exact_mut(QK))
        {
            let d = read_f16(blk, 0);
            let m = read_f16(blk, 2);
            for (j, l) in five_bit_levels(&blk[4..8], &blk[8..24])
                .into_iter()
                .enumerate()
            {
                y[j] = l as f32 * d + m;
            }
        }
    }
}

impl BlockFormat for Q8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK_ELEMS: usize = QK;
    const BLOCK_BYTES: usize = 34;

    fn quantize_row(x: &[f32], _imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        simd::legacy_plain_row(isa, Self::TYPE, x, out);
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (blk, y) in q
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(out.chunks_exact_mut(QK))
        {
            let d = read_f16(blk, 0);
            for j in 0..QK {
                y[j] = blk[2 + j] as i8 as f32 * d;
            }
        }
    }
}
