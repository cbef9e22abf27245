//! The k-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (and Q8_K, the dot-product companion format).
//!
//! 256-element super-blocks of 16 or 8 sub-blocks, each with its own scale (and min), the
//! sub-block scales quantized again against one f16 super-scale. Without an importance matrix
//! ggml uses its `quantize_row_*_K_ref` searches, with one the `*_impl` variants; both are
//! reproduced here operation for operation (ggml-quants.c, ggml 0.25.3).

use super::fp16::{read_f16, round_trip_f16, write_f16};
use super::isa::IsaKind;
use super::search::{make_qp_quants, make_qx_quants, nearest_int, AffineSearch, GROUP_MAX_EPS};
use super::simd;
use super::{BlockFormat, GgmlType, Isa, QK_K};

pub struct Q2K;
pub struct Q3K;
pub struct Q4K;
pub struct Q5K;
pub struct Q6K;
pub struct Q8K;

fn sum_squares(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// Importance weights `qw_j * sqrt(sigma2 + x_j^2)` and their sum per sub-block.
fn imatrix_weights(
    x: &[f32],
    qw: &[f32],
    sigma2: f32,
    weights: &mut [f32],
    sums: &mut [f32],
    sub: usize,
) {
    // Elementwise first (vectorizes), then each sub-block's sum in ggml's sequential order.
    for ((w, &q), &v) in weights.iter_mut().zip(qw).zip(x).take(QK_K) {
        *w = q * (sigma2 + v * v).sqrt();
    }
    for (w, sum) in weights.chunks_exact(sub).zip(sums.iter_mut()) {
        let mut s = 0.0f32;
        for &v in w {
            s += v;
        }
        *sum = s;
    }
}

/// Pack 2-bit levels of a 256 super-block: byte l of each 32-byte group holds elements
/// l, l+32, l+64, l+96 of its 128-element half.
#[inline(always)]
fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for l in 0..32 {
            qs[j / 4 + l] = levels[j + l]
                | (levels[j + l + 32] << 2)
                | (levels[j + l + 64] << 4)
                | (levels[j + l + 96] << 6);
        }
    }
}

// ---------------------------------------------------------------- Q2_K
// Layout: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.

const Q2K_REF: AffineSearch = AffineSearch {
    nmax: 3,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};
const Q2K_IMATRIX: AffineSearch = AffineSearch {
    nmax: 3,
    rmin: -0.9,
    rdelta: 0.05,
    nstep: 36,
    use_mad: false,
};

impl BlockFormat for Q2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const BLOCK_ELEMS: usize = QK_K;
    const BLOCK_BYTES: usize = 84;

    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        for (ib, (xs, blk)) in x
            .chunks_exact(QK_K)
            .zip(out.chunks_exact_mut(Self::BLOCK_BYTES))
            .enumerate()
        {
            let mut levels = [0u8; QK_K];
            let mut scales = [0.0f32; 16];
            let mut mins = [0.0f32; 16];
            let mut weights = [0.0f32; QK_K];
            let (d, dmin);
            match imatrix {
                None => {
                    for (w, &v) in weights.iter_mut().zip(xs) {
                        *w = v.abs();
                    }
                    simd::affine_subblocks(
                        isa,
                        xs,
                        &weights,
                        16,
                        Q2K_REF,
                        &mut levels,
                        &mut scales,
                        &mut mins,
                    );
                    let max_scale = scales
                        .iter()
                        .fold(0.0f32, |m, &s| if s > m { s } else { m });
                    let max_min = mins.iter().fold(0.0f32, |m, &s| if s > m { s } else { m });
                    if max_scale > 0.0 {
                        let iscale = 15.0 / max_scale;
                        for j in 0..16 {
                            blk[j] = nearest_int(iscale * scales[j]) as u8;
                        }
                        d = max_scale / 15.0;
                    } else {
                        blk[..16].fill(0);
                        d = 0.0;
                    }
                    if max_min > 0.0 {
                        let iscale = 15.0 / max_min;
                        for j in 0..16 {
                            blk[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
                        }
                        dmin = max_min / 15.0;
                    } else {
                        dmin = 0.0;
                    }
                }
                Some(qw) => {
                    let sigma2 = sum_squares(xs) / QK_K as f32;
                    let mut sw = [0.0f32; 16];
                    imatrix_weights(xs, &qw[ib * QK_K..], sigma2, &mut weights, &mut sw, 16);
                    simd::affine_subblocks(
                        isa,
                        xs,
                        &weights,
                        16,
                        Q2K_IMATRIX,
                        &mut levels,
                        &mut scales,
                        &mut mins,
                    );
                    let mut ls = [0u8; 16];
                    let mut lm = [0u8; 16];
                    d = make_qp_quants(&scales, 15, &mut ls, &sw);
                    dmin = make_qp_quants(&mins, 15, &mut lm, &sw);
                    for j in 0..16 {
                        blk[j] = ls[j] | (lm[j] << 4);
                    }
                }
            }
            write_f16(blk, 80, d);
            write_f16(blk, 82, dmin);
            let (d, dmin) = (round_trip_f16(d), round_trip_f16(dmin));
            let dl: [f32; 16] = std::array::from_fn(|j| d * (blk[j] & 0xF) as f32);
            let ml: [f32; 16] = std::array::from_fn(|j| dmin * (blk[j] >> 4) as f32);
            simd::requant(isa, xs, 16, &dl, Some(&ml), 0, 3, 0, &mut levels);
            pack_2bit(&levels, &mut blk[16..80]);
        }
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (blk, y) in q
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(out.chunks_exact_mut(QK_K))
        {
            let d = read_f16(blk, 80);
            let min = read_f16(blk, 82);
            let (scales, qs) = (&blk[..16], &blk[16..80]);
            let mut at = 0;
            for half in 0..2 {
                let q = &qs[32 * half..];
                for shift in (0..8).step_by(2) {
                    for part in 0..2 {
                        let sc = scales[half * 8 + shift + part];
                        let dl = d * (sc & 0xF) as f32;
                        let ml = min * (sc >> 4) as f32;
                        for l in 0..16 {
                            y[at] = dl * ((q[l + 16 * part] >> shift) & 3) as f32 - ml;
                            at += 1;
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- Q3_K
// Layout: hmask[32], qs[64], scales[12] (16 six-bit scales, offset 32), d.

#[inline(always)]
fn q3k_pack_scale(scales: &mut [u8], j: usize, l: u8) {
    if j < 8 {
        scales[j] = l & 0xF;
    } else {
        scales[j - 8] |= (l & 0xF) << 4;
    }
    scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
}

/// Write the super-scale, requantize against the packed sub-block codes and pack the levels.
#[inline(always)]
fn q3k_finish(xs: &[f32], levels: &[i8; QK_K], d: f32, blk: &mut [u8], isa: Isa) {
    write_f16(blk, 108, d);
    let d = round_trip_f16(d);
    let dl: [f32; 16] = std::array::from_fn(|j| d * q3k_unpack_scale(&blk[96..108], j) as f32);
    let mut levels = levels.map(|l| l as u8);
    simd::requant(isa, xs, 16, &dl, None, -4, 3, 4, &mut levels);
    // Levels are 0..=7: bit 2 is the high bit, element j's goes to hmask[j % 32], bit j / 32
    // (branch-free: these bits are unpredictable).
    for j in 0..32 {
        let mut m = 0u8;
        for b in 0..8 {
            m |= ((levels[32 * b + j] >> 2) & 1) << b;
        }
        blk[j] = m;
    }
    let low = levels.map(|l| l & 3);
    pack_2bit(&low, &mut blk[32..96]);
}

#[inline(always)]
fn q3k_unpack_scale(scales: &[u8], j: usize) -> i32 {
    let low = if j < 8 {
        scales[j] & 0xF
    } else {
        scales[j - 8] >> 4
    };
    let high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

#[inline(always)]
fn q3k_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
    const BLOCK_BYTES: usize = 110;
    let Some(qw) = imatrix else {
        // Two super-blocks per search call: twice the independent lanes in flight.
        for (xp, op) in x.chunks(2 * QK_K).zip(out.chunks_mut(2 * BLOCK_BYTES)) {
            let mut levels = [0i8; 2 * QK_K];
            let mut scales = [0.0f32; 32];
            let n = xp.len() / QK_K;
            simd::q3_subblocks(isa, xp, &mut levels[..n * QK_K], &mut scales[..16 * n]);
            for b in 0..n {
                let blk = &mut op[BLOCK_BYTES * b..BLOCK_BYTES * (b + 1)];
                let sc = &scales[16 * b..16 * b + 16];
                let mut max_scale = 0.0f32;
                let mut amax = 0.0f32;
                for j in 0..16 {
                    let a = sc[j].abs();
                    if a > amax {
                        amax = a;
                        max_scale = sc[j];
                    }
                }
                blk[96..108].fill(0);
                let d = if max_scale != 0.0 {
                    let iscale = -32.0 / max_scale;
                    for j in 0..16 {
                        let l = (nearest_int(iscale * sc[j]) as i8 as i32).clamp(-32, 31) + 32;
                        q3k_pack_scale(&mut blk[96..108], j, l as u8);
                    }
                    1.0 / iscale
                } else {
                    0.0
                };
                let lv: &[i8; QK_K] = levels[QK_K * b..QK_K * (b + 1)]
                    .try_into()
                    .expect("one super-block");
                q3k_finish(&xp[QK_K * b..QK_K * (b + 1)], lv, d, blk, isa);
            }
        }
        return;
    };
    // With importance weights the 16 sub-block scales of each super-block get their own
    // weighted search; sixteen super-blocks at a time, one per lane.
    const GROUP: usize = 16;
    for (g, (xg, og)) in x
        .chunks(GROUP * QK_K)
        .zip(out.chunks_mut(GROUP * BLOCK_BYTES))
        .enumerate()
    {
        let n = xg.len() / QK_K;
        let mut levels = [[0i8; QK_K]; GROUP];
        let mut scales = [0.0f32; GROUP * 16];
        let mut sw = [0.0f32; GROUP * 16];
        for b in 0..n {
            let xs = &xg[QK_K * b..QK_K * (b + 1)];
            let sigma2 = 2.0 * sum_squares(xs) / QK_K as f32;
            let mut weights = [0.0f32; QK_K];
            let at = (g * GROUP + b) * QK_K;
            imatrix_weights(
                xs,
                &qw[at..at + QK_K],
                sigma2,
                &mut weights,
                &mut sw[16 * b..16 * b + 16],
                16,
            );
            simd::qx_subblocks(
                isa,
                xs,
                Some(&weights),
                16,
                4,
                &mut levels[b],
                &mut scales[16 * b..16 * b + 16],
            );
        }
        let mut codes = [0i8; GROUP * 16];
        let mut d_blocks = [0.0f32; GROUP];
        if n == GROUP {
            simd::qx_subblocks(isa, &scales, Some(&sw), 16, 32, &mut codes, &mut d_blocks);
        } else {
            for b in 0..n {
                let r = 16 * b..16 * b + 16;
                d_blocks[b] =
                    make_qx_quants(&scales[r.clone()], 32, &mut codes[r.clone()], Some(&sw[r]));
            }
        }
        for b in 0..n {
            let blk = &mut og[BLOCK_BYTES * b..BLOCK_BYTES * (b + 1)];
            blk[96..108].fill(0);
            for j in 0..16 {
                q3k_pack_scale(&mut blk[96..108], j, codes[16 * b + j] as u8);
            }
            q3k_finish(
                &xg[QK_K * b..QK_K * (b + 1)],
                &levels[b],
                d_blocks[b],
                blk,
                isa,
            );
        }
    }
}

impl BlockFormat for Q3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const BLOCK_ELEMS: usize = QK_K;
    const BLOCK_BYTES: usize = 110;

    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        // The packing around the searches vectorizes when compiled for AVX2.
        #[cfg(target_arch = "x86_64")]
        if matches!(isa.kind(), IsaKind::Avx2 | IsaKind::Avx512) {
            #[target_feature(enable = "avx2")]
            unsafe fn avx2(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
                q3k_row(x, imatrix, out, isa)
            }
            // SAFETY: AVX2 is present whenever these instruction sets were accepted.
            return unsafe { avx2(x, imatrix, out, isa) };
        }
        q3k_row(x, imatrix, out, isa)
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (blk, y) in q
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(out.chunks_exact_mut(QK_K))
        {
            let d_all = read_f16(blk, 108);
            let (hm, qs, scales) = (&blk[0..32], &blk[32..96], &blk[96..108]);
            let mut at = 0;
            let mut is = 0;
            let mut m = 1u8;
            for half in 0..2 {
                let q = &qs[32 * half..];
                for shift in (0..8).step_by(2) {
                    for part in 0..2 {
                        let dl = d_all * q3k_unpack_scale(scales, is) as f32;
                        is += 1;
                        for l in 0..16 {
                            let idx = l + 16 * part;
                            let low = ((q[idx] >> shift) & 3) as i32;
                            let sub = if hm[idx] & m != 0 { 0 } else { 4 };
                            y[at] = dl * (low - sub) as f32;
                            at += 1;
                        }
                    }
                    m <<= 1;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- Q4_K / Q5_K
// Layout: d, dmin, scales[12] (eight 6-bit scales and eight 6-bit mins), then the quants.

const Q4K_REF: AffineSearch = AffineSearch {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};
const Q5K_REF: AffineSearch = AffineSearch {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};
const Q45K_IMATRIX: AffineSearch = AffineSearch {
    nmax: 15,
    rmin: -0.9,
    rdelta: 0.05,
    nstep: 36,
    use_mad: false,
};

fn pack_scale_min_k4(scales: &mut [u8], j: usize, ls: u8, lm: u8) {
    if j < 4 {
        scales[j] = ls;
        scales[j + 4] = lm;
    } else {
        scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
        scales[j - 4] |= (ls >> 4) << 6;
        scales[j] |= (lm >> 4) << 6;
    }
}

pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Shared search of Q4_K and Q5_K: sub-block scales and mins, their 6-bit codes and the two
/// super-scales; returns the final levels (0..=nmax) after requantizing against the codes.
fn quantize_q45k_superblock(
    xs: &[f32],
    qw: Option<&[f32]>,
    nmax: i32,
    ref_search: AffineSearch,
    header: &mut [u8],
    isa: Isa,
) -> [u8; QK_K] {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut weights = [0.0f32; QK_K];
    let sc = &mut header[4..16];
    sc.fill(0);
    let (d, dmin) = match qw {
        None => {
            for j in 0..8 {
                let sub = &xs[32 * j..32 * j + 32];
                let av_x = (sum_squares(sub) / 32.0).sqrt();
                for l in 0..32 {
                    weights[32 * j + l] = av_x + sub[l].abs();
                }
            }
            simd::affine_subblocks(
                isa,
                xs,
                &weights,
                32,
                ref_search,
                &mut levels,
                &mut scales,
                &mut mins,
            );
            let max_scale = scales
                .iter()
                .fold(0.0f32, |m, &s| if s > m { s } else { m });
            let max_min = mins.iter().fold(0.0f32, |m, &s| if s > m { s } else { m });
            let inv_scale = if max_scale > 0.0 {
                63.0 / max_scale
            } else {
                0.0
            };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            for j in 0..8 {
                // C stores into uint8_t before clamping.
                let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
                let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
                pack_scale_min_k4(sc, j, ls, lm);
            }
            (max_scale / 63.0, max_min / 63.0)
        }
        Some(qw) => {
            let sigma2 = 2.0 * sum_squares(xs) / QK_K as f32;
            let mut sw = [0.0f32; 8];
            imatrix_weights(xs, qw, sigma2, &mut weights, &mut sw, 32);
            let search = AffineSearch {
                nmax,
                ..Q45K_IMATRIX
            };
            simd::affine_subblocks(
                isa,
                xs,
                &weights,
                32,
                search,
                &mut levels,
                &mut scales,
                &mut mins,
            );
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            let d_block = make_qp_quants(&scales, 63, &mut ls, &sw);
            let m_block = make_qp_quants(&mins, 63, &mut lm, &sw);
            // ggml clamps the codes for Q5_K only; Q4_K writes them as they come.
            let cap = if nmax == 31 { 63 } else { u8::MAX };
            for j in 0..8 {
                pack_scale_min_k4(sc, j, ls[j].min(cap), lm[j].min(cap));
            }
            (d_block, m_block)
        }
    };
    write_f16(header, 0, d);
    write_f16(header, 2, dmin);
    let (d, dmin) = (round_trip_f16(d), round_trip_f16(dmin));
    let codes: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, &header[4..16]));
    let dl: [f32; 8] = std::array::from_fn(|j| d * codes[j].0 as f32);
    let ml: [f32; 8] = std::array::from_fn(|j| dmin * codes[j].1 as f32);
    simd::requant(isa, xs, 32, &dl, Some(&ml), 0, nmax, 0, &mut levels);
    levels
}

/// Q4_K and Q5_K share their scales and layout; Q5_K adds a fifth bit per weight (`qh`).
fn dequantize_q45k(q: &[u8], out: &mut [f32], block_bytes: usize, fifth_bit: bool) {
    let qs_at = if fifth_bit { 48 } else { 16 };
    for (blk, y) in q.chunks_exact(block_bytes).zip(out.chunks_exact_mut(QK_K)) {
        let d = read_f16(blk, 0);
        let min = read_f16(blk, 2);
        let scales = &blk[4..16];
        for g in 0..4 {
            let qs = &blk[qs_at + 32 * g..qs_at + 32 * g + 32];
            let (s1, m1) = scale_min_k4(2 * g, scales);
            let (s2, m2) = scale_min_k4(2 * g + 1, scales);
            let (d1, m1) = (d * s1 as f32, min * m1 as f32);
            let (d2, m2) = (d * s2 as f32, min * m2 as f32);
            let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
            for l in 0..32 {
                let high = |mask: u8| {
                    if fifth_bit && blk[16 + l] & mask != 0 {
                        16
                    } else {
                        0
                    }
                };
                y[64 * g + l] = d1 * ((qs[l] & 0xF) + high(u1)) as f32 - m1;
                y[64 * g + 32 + l] = d2 * ((qs[l] >> 4) + high(u2)) as f32 - m2;
            }
        }
    }
}

impl BlockFormat for Q4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const BLOCK_ELEMS: usize = QK_K;
    const BLOCK_BYTES: usize = 144;

    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        for (ib, (xs, blk)) in x
            .chunks_exact(QK_K)
            .zip(out.chunks_exact_mut(Self::BLOCK_BYTES))
            .enumerate()
        {
            let qw = imatrix.map(|w| &w[ib * QK_K..(ib + 1) * QK_K]);
            let levels = quantize_q45k_superblock(xs, qw, 15, Q4K_REF, &mut blk[..16], isa);
            let qs = &mut blk[16..];
            for (g, j) in (0..QK_K).step_by(64).enumerate() {
                for l in 0..32 {
                    qs[32 * g + l] = levels[j + l] | (levels[j + l + 32] << 4);
                }
            }
        }
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        dequantize_q45k(q, out, Self::BLOCK_BYTES, false);
    }
}

impl BlockFormat for Q5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const BLOCK_ELEMS: usize = QK_K;
    const BLOCK_BYTES: usize = 176;

    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        for (ib, (xs, blk)) in x
            .chunks_exact(QK_K)
            .zip(out.chunks_exact_mut(Self::BLOCK_BYTES))
            .enumerate()
        {
            let qw = imatrix.map(|w| &w[ib * QK_K..(ib + 1) * QK_K]);
            let levels = quantize_q45k_superblock(xs, qw, 31, Q5K_REF, &mut blk[..16], isa);
            let (qh, ql) = blk[16..].split_at_mut(32);
            qh.fill(0);
            for (g, n) in (0..QK_K).step_by(64).enumerate() {
                let (m1, m2) = (1u8 << (2 * g), 2u8 << (2 * g));
                for j in 0..32 {
                    // Levels are 0..=31: bit 4 goes to qh, branch-free.
                    let (l1, l2) = (levels[n + j], levels[n + j + 32]);
                    qh[j] |= (((l1 >> 4) & 1) * m1) | (((l2 >> 4) & 1) * m2);
                    let (l1, l2) = (l1 & 15, l2 & 15);
                    ql[32 * g + j] = l1 | (l2 << 4);
                }
            }
        }
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        dequantize_q45k(q, out, Self::BLOCK_BYTES, true);
    }
}

// ---------------------------------------------------------------- Q6_K
// Layout: ql[128], qh[64], scales[16] (int8), d.

impl BlockFormat for Q6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const BLOCK_ELEMS: usize = QK_K;
    const BLOCK_BYTES: usize = 210;

    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa) {
        for (ib, (xs, blk)) in x
            .chunks_exact(QK_K)
            .zip(out.chunks_exact_mut(Self::BLOCK_BYTES))
            .enumerate()
        {
            let mut levels = [0i8; QK_K];
            let mut scales = [0.0f32; 16];
            let mut max_scale = 0.0f32;
            let mut max_abs_scale = 0.0f32;
            let qw = imatrix.map(|w| &w[ib * QK_K..(ib + 1) * QK_K]);
            simd::qx_subblocks(isa, xs, qw, 16, 32, &mut levels, &mut scales);
            for j in 0..16 {
                let a = scales[j].abs();
                if a > max_abs_scale {
                    max_abs_scale = a;
                    max_scale = scales[j];
                }
            }
            if max_abs_scale < GROUP_MAX_EPS {
                blk.fill(0);
                continue;
            }
            let iscale = -128.0 / max_scale;
            write_f16(blk, 208, 1.0 / iscale);
            for j in 0..16 {
                blk[192 + j] = nearest_int(iscale * scales[j]).min(127) as i8 as u8;
            }
            let d = read_f16(blk, 208);
            let dl: [f32; 16] = std::array::from_fn(|j| d * blk[192 + j] as i8 as f32);
            let mut levels = levels.map(|l| l as u8);
            simd::requant(isa, xs, 16, &dl, None, -32, 31, 32, &mut levels);
            let (ql, rest) = blk.split_at_mut(128);
            let qh = &mut rest[..64];
            for (h, j) in (0..QK_K).step_by(128).enumerate() {
                let lv = |k: usize| levels[j + k];
                for l in 0..32 {
                    ql[64 * h + l] = (lv(l) & 0xF) | ((lv(l + 64) & 0xF) << 4);
                    ql[64 * h + l + 32] = (lv(l + 32) & 0xF) | ((lv(l + 96) & 0xF) << 4);
                    qh[32 * h + l] = (lv(l) >> 4)
                        | ((lv(l + 32) >> 4) << 2)
                        | ((lv(l + 64) >> 4) << 4)
                        | ((lv(l + 96) >> 4) << 6);
                }
            }
        }
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (blk, y) in q
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(out.chunks_exact_mut(QK_K))
        {
            let d = read_f16(blk, 208);
            for h in 0..2 {
                let ql = &blk[64 * h..];
                let qh = &blk[128 + 32 * h..];
                let sc = &blk[192 + 8 * h..];
                let y = &mut y[128 * h..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- Q8_K
// Layout: d (f32), qs[256] (int8), bsums[16] (int16).

impl BlockFormat for Q8K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const BLOCK_ELEMS: usize = QK_K;
    const BLOCK_BYTES: usize = 292;

    fn quantize_row(x: &[f32], _imatrix: Option<&[f32]>, out: &mut [u8], _isa: Isa) {
        for (xs, blk) in x
            .chunks_exact(QK_K)
            .zip(out.chunks_exact_mut(Self::BLOCK_BYTES))
        {
            let mut max = 0.0f32;
            let mut amax = 0.0f32;
            for &v in xs {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                blk.fill(0);
                continue;
            }
            let iscale = -127.0 / max;
            for j in 0..QK_K {
                blk[4 + j] = nearest_int(iscale * xs[j]).min(127) as i8 as u8;
            }
            for j in 0..16 {
                let sum: i32 = blk[4 + 16 * j..4 + 16 * j + 16]
                    .iter()
                    .map(|&b| b as i8 as i32)
                    .sum();
                blk[260 + 2 * j..262 + 2 * j].copy_from_slice(&(sum as i16).to_le_bytes());
            }
            blk[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        }
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (blk, y) in q
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(out.chunks_exact_mut(QK_K))
        {
            let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
            for j in 0..QK_K {
                y[j] = d * blk[4 + j] as i8 as f32;
            }
        }
    }
}
