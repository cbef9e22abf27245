//! Dispatch of the hot loops to SIMD kernels. Each kernel ([`lanes`]) runs one independent block
//! per vector lane, so every lane performs exactly the scalar reference's operations in the
//! scalar order and the bytes cannot differ; only the number of blocks in flight changes.
//! The same generic kernels are compiled for AVX2 and AVX-512 (chosen at run time) and NEON.

mod lanes;
mod vector;

use super::iq4::{block_weights, iq4nl_row_scalar, search_block_scale};
use super::isa::IsaKind;
use super::search::{make_q3_quants, make_qkx_quants, make_qx_quants, AffineSearch};
use super::{Isa, QK_K};
use vector::Lanes;

// ------------------------------------------------------------------ kernels over a super-block

/// Lane-major copy of `V::N` consecutive blocks of `n` values starting at block `first`.
#[inline(always)]
fn gather<V: Lanes>(x: &[f32], n: usize, first: usize, out: &mut [f32]) {
    for k in 0..V::N {
        let block = &x[(first + k) * n..(first + k + 1) * n];
        for i in 0..n {
            out[i * V::N + k] = block[i];
        }
    }
}

#[inline(always)]
fn scatter<V: Lanes, T: Copy>(
    lv: &[i32],
    n: usize,
    first: usize,
    out: &mut [T],
    convert: impl Fn(i32) -> T,
) {
    for k in 0..V::N {
        for i in 0..n {
            out[(first + k) * n + i] = convert(lv[i * V::N + k]);
        }
    }
}

#[inline(always)]
unsafe fn affine_superblock<V: Lanes>(
    xs: &[f32],
    weights: &[f32],
    sub: usize,
    p: AffineSearch,
    levels: &mut [u8; QK_K],
    scales: &mut [f32],
    mins: &mut [f32],
) {
    let mut xt = [0.0f32; QK_K];
    let mut wt = [0.0f32; QK_K];
    let mut lv = [0i32; QK_K];
    for first in (0..QK_K / sub).step_by(V::N) {
        gather::<V>(xs, sub, first, &mut xt);
        gather::<V>(weights, sub, first, &mut wt);
        lanes::affine::<V>(
            &xt,
            &wt,
            sub,
            p,
            &mut lv,
            &mut scales[first..],
            &mut mins[first..],
        );
        scatter::<V, u8>(&lv, sub, first, levels, |l| l as u8);
    }
}

#[inline(always)]
unsafe fn qx_superblock<V: Lanes>(
    xs: &[f32],
    weights: Option<&[f32]>,
    sub: usize,
    nmax: i32,
    levels: &mut [i8],
    scales: &mut [f32],
) {
    let mut xt = [0.0f32; QK_K];
    let mut wt = [0.0f32; QK_K];
    let mut lv = [0i32; QK_K];
    for first in (0..QK_K / sub).step_by(V::N) {
        gather::<V>(xs, sub, first, &mut xt);
        if let Some(w) = weights {
            gather::<V>(w, sub, first, &mut wt);
        }
        lanes::qx::<V>(
            &xt,
            weights.map(|_| &wt[..]),
            sub,
            nmax,
            &mut lv,
            &mut scales[first..],
        );
        scatter::<V, i8>(&lv, sub, first, levels, |l| l as i8);
    }
}

/// `make_q3_quants` of every 16-element sub-block of `xs` (one or two super-blocks).
#[inline(always)]
unsafe fn q3_superblock<V: Lanes>(xs: &[f32], levels: &mut [i8], scales: &mut [f32]) {
    let mut xt = [0.0f32; 16 * 32];
    let mut lv = [0i32; 16 * 32];
    for first in (0..xs.len() / 16).step_by(V::N) {
        gather::<V>(xs, 16, first, &mut xt);
        lanes::q3::<V>(&xt, 16, 4, &mut lv, &mut scales[first..]);
        scatter::<V, i8>(&lv, 16, first, levels, |l| l as i8);
    }
}

#[inline(always)]
unsafe fn iq4_superblock<V: Lanes>(xs: &[f32], weights: &[f32]) -> [f32; 8] {
    let mut xt = [0.0f32; QK_K];
    let mut wt = [0.0f32; QK_K];
    let mut scales = [0.0f32; 8];
    for first in (0..8).step_by(V::N) {
        gather::<V>(xs, 32, first, &mut xt);
        gather::<V>(weights, 32, first, &mut wt);
        lanes::iq4::<V>(&xt, &wt, &mut scales[first..]);
    }
    scales
}

// ------------------------------------------------------------------ per-ISA instantiations

/// Instantiate the generic kernels for one lane type inside functions compiled for its
/// instruction set.
macro_rules! instantiate {
    ($module:ident, $lanes:ty, $q3lanes:ty, $($features:literal)?) => {
        mod $module {
            use super::*;

            $(#[target_feature(enable = $features)])?
            pub unsafe fn affine(xs: &[f32], w: &[f32], sub: usize, p: AffineSearch, l: &mut [u8; QK_K], s: &mut [f32], m: &mut [f32]) {
                affine_superblock::<$lanes>(xs, w, sub, p, l, s, m)
            }
            $(#[target_feature(enable = $features)])?
            pub unsafe fn qx(xs: &[f32], w: Option<&[f32]>, sub: usize, nmax: i32, l: &mut [i8], s: &mut [f32]) {
                qx_superblock::<$lanes>(xs, w, sub, nmax, l, s)
            }
            $(#[target_feature(enable = $features)])?
            pub unsafe fn q3(xs: &[f32], l: &mut [i8], s: &mut [f32]) {
                q3_superblock::<$q3lanes>(xs, l, s)
            }
            $(#[target_feature(enable = $features)])?
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn requant(xs: &[f32], sub: usize, d: &[f32], m: Option<&[f32]>, lo: i32, hi: i32, offset: i32, out: &mut [u8]) {
                // Widen, overwrite the requantized sub-blocks, narrow: whole-array loops that
                // vectorize, instead of a byte store per element.
                let n = out.len().min(QK_K);
                let mut wide = [0i32; QK_K];
                for (w, &o) in wide[..n].iter_mut().zip(out.iter()) {
                    *w = o as i32;
                }
                lanes::requant::<$lanes>(xs, sub, d, m, lo, hi, offset, |at, l| {
                    wide[at..at + l.len()].copy_from_slice(l);
                });
                for (o, &w) in out.iter_mut().zip(wide[..n].iter()) {
                    *o = w as u8;
                }
            }
            $(#[target_feature(enable = $features)])?
            pub unsafe fn iq4(xs: &[f32], w: &[f32]) -> [f32; 8] {
                iq4_superblock::<$lanes>(xs, w)
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
instantiate!(avx2, vector::Avx2, vector::Pair<vector::Avx2>, "avx2");
#[cfg(target_arch = "x86_64")]
instantiate!(
    avx512,
    vector::Avx512,
    vector::Pair<vector::Avx512>,
    "avx512f,avx512bw,avx512vl,avx2"
);
instantiate!(
    portable,
    vector::Portable<4>,
    vector::Pair<vector::Portable<4>>,
);

/// Run a kernel on the chosen instruction set, or `$scalar` for the reference. AVX-512 runs
/// 16 lanes, so it takes the 16-sub-block formats; groups of 8 stay on AVX2 there.
macro_rules! dispatch {
    ($isa:expr, $groups:expr, $kernel:ident ( $($arg:expr),* ), $scalar:expr) => {{
        match $isa.kind() {
            // SAFETY: an `Isa` exists only for an instruction set this CPU runs (Isa::new
            // checks it), and AVX-512 machines run AVX2 too.
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx512 if $groups % 16 == 0 => unsafe { avx512::$kernel($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx2 | IsaKind::Avx512 => unsafe { avx2::$kernel($($arg),*) },
            // SAFETY: the portable lanes use no special instructions.
            IsaKind::Neon => unsafe { portable::$kernel($($arg),*) },
            _ => $scalar,
        }
    }};
}

// ------------------------------------------------------------------ public entry points

/// Affine search (`make_qkx_quants`) of the `sub`-element sub-blocks (16 or 32) of 256 values.
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
    let scalar = |levels: &mut [u8; QK_K], scales: &mut [f32], mins: &mut [f32]| {
        for j in 0..QK_K / sub {
            let r = sub * j..sub * (j + 1);
            let (s, m) = make_qkx_quants(&xs[r.clone()], &weights[r.clone()], p, &mut levels[r]);
            scales[j] = s;
            mins[j] = m;
        }
    };
    dispatch!(
        isa,
        QK_K / sub,
        affine(xs, weights, sub, p, levels, scales, mins),
        scalar(levels, scales, mins)
    )
}

/// Symmetric search (`make_qx_quants`, rmse 1) of the `sub`-element sub-blocks (16 or 32) of 256
/// values; `levels` gets `l + nmax`.
pub fn qx_subblocks(
    isa: Isa,
    xs: &[f32],
    weights: Option<&[f32]>,
    sub: usize,
    nmax: i32,
    levels: &mut [i8],
    scales: &mut [f32],
) {
    let scalar = |levels: &mut [i8], scales: &mut [f32]| {
        for j in 0..QK_K / sub {
            let r = sub * j..sub * (j + 1);
            scales[j] = make_qx_quants(
                &xs[r.clone()],
                nmax,
                &mut levels[r.clone()],
                weights.map(|w| &w[r]),
            );
        }
    };
    dispatch!(
        isa,
        QK_K / sub,
        qx(xs, weights, sub, nmax, levels, scales),
        scalar(levels, scales)
    )
}

/// `make_q3_quants` (nmax 4) of the 16-element sub-blocks of one or two super-blocks. The
/// refinement steps depend on each other, so two vectors of lanes run interleaved.
pub fn q3_subblocks(isa: Isa, xs: &[f32], levels: &mut [i8], scales: &mut [f32]) {
    let subs = xs.len() / 16;
    match isa.kind() {
        // SAFETY: an `Isa` exists only for an instruction set this CPU runs (Isa::new).
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx512 if subs.is_multiple_of(32) => unsafe { avx512::q3(xs, levels, scales) },
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 | IsaKind::Avx512 => unsafe { avx2::q3(xs, levels, scales) },
        // SAFETY: the portable lanes use no special instructions.
        IsaKind::Neon if subs.is_multiple_of(8) => unsafe { portable::q3(xs, levels, scales) },
        _ => {
            for j in 0..subs {
                let r = 16 * j..16 * j + 16;
                scales[j] = make_q3_quants(&xs[r.clone()], 4, &mut levels[r]);
            }
        }
    }
}

/// Final levels of a super-block against its quantized sub-block scales `d` (and offsets `m`):
/// `clamp(nearest_int((x + m) / d), lo, hi) + offset`; sub-blocks whose `d` is zero keep the
/// levels their search gave, as in ggml. Levels are written as bytes (two's complement).
#[allow(clippy::too_many_arguments)]
pub fn requant(
    isa: Isa,
    xs: &[f32],
    sub: usize,
    d: &[f32],
    m: Option<&[f32]>,
    lo: i32,
    hi: i32,
    offset: i32,
    out: &mut [u8],
) {
    let scalar = |out: &mut [u8]| {
        for (j, &dj) in d.iter().enumerate() {
            if dj == 0.0 {
                continue;
            }
            for i in sub * j..sub * (j + 1) {
                let x = match m {
                    Some(m) => xs[i] + m[j],
                    None => xs[i],
                };
                out[i] = (super::search::nearest_int(x / dj).clamp(lo, hi) + offset) as u8;
            }
        }
    };
    // 16-element sub-blocks fill one AVX-512 vector; dispatch on the element count per row.
    dispatch!(
        isa,
        sub,
        requant(xs, sub, d, m, lo, hi, offset, out),
        scalar(out)
    )
}

/// Whether a row holds NaN or infinity (checked row by row just before quantizing it).
pub fn has_non_finite(isa: Isa, x: &[f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa.kind(), IsaKind::Avx2 | IsaKind::Avx512) {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(x: &[f32]) -> bool {
            super::matrix::has_non_finite(x)
        }
        // SAFETY: AVX2 is present whenever these instruction sets were accepted.
        return unsafe { avx2(x) };
    }
    let _ = isa;
    super::matrix::has_non_finite(x)
}

/// ggml's reference quantizers of Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 for one row, compiled for
/// AVX2 where available (the code vectorizes within each block).
pub fn legacy_plain_row(isa: Isa, ty: super::GgmlType, x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa.kind(), IsaKind::Avx2 | IsaKind::Avx512) {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(ty: super::GgmlType, x: &[f32], out: &mut [u8]) {
            super::legacy::plain_row(ty, x, out)
        }
        // SAFETY: AVX2 is present whenever these instruction sets were accepted.
        return unsafe { avx2(ty, x, out) };
    }
    let _ = isa;
    super::legacy::plain_row(ty, x, out)
}

/// IQ4 scale search of the eight 32-element sub-blocks of 256 values.
pub fn iq4_scales8(isa: Isa, xs: &[f32], weights: &[f32]) -> [f32; 8] {
    let scalar = || {
        let mut scales = [0.0f32; 8];
        let mut levels = [0u8; 32];
        for (ib, s) in scales.iter_mut().enumerate() {
            let r = 32 * ib..32 * ib + 32;
            *s = search_block_scale(&xs[r.clone()], &weights[r], &mut levels);
        }
        scales
    };
    dispatch!(isa, 8, iq4(xs, weights), scalar())
}

/// One IQ4_NL row: its 32-element blocks are searched eight at a time.
pub fn iq4nl_row(isa: Isa, x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    if isa == Isa::SCALAR {
        return iq4nl_row_scalar(x, imatrix, out);
    }
    let full = x.len() / QK_K * QK_K;
    for (g, (xs, blk)) in x[..full]
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(8 * 18))
        .enumerate()
    {
        let mut w = [0.0f32; QK_K];
        for ib in 0..8 {
            let r = 32 * ib..32 * ib + 32;
            let qw = imatrix.map(|q| &q[QK_K * g + 32 * ib..QK_K * g + 32 * ib + 32]);
            let xb = &xs[r.clone()];
            let mut s = 0.0f32;
            for &v in xb {
                s += v * v;
            }
            block_weights(xb, qw, s * (2.0 / 32.0), &mut w[r]);
        }
        let scales = iq4_scales8(isa, xs, &w);
        super::iq4::iq4nl_finish8(xs, &scales, blk);
    }
    let done_blocks = full / 32;
    iq4nl_row_scalar(
        &x[full..],
        imatrix.map(|q| &q[full..]),
        &mut out[done_blocks * 18..],
    );
}
