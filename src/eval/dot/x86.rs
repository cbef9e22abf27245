//! AVX2 dot products for the 32-element block formats, after ggml's `ggml_vec_dot_q*_q8_0`
//! (ggml-cpu/arch/x86/quants.c): unpack 32 weights into one register, multiply with the signed
//! activation bytes through `maddubs` (unsigned x signed, so signed weights lend their sign to
//! the activations first), widen to i32, scale by d_w * d_a in f32.
//!
//! Beyond ggml's: Q4_0/Q5_0 keep their levels unsigned and subtract the level offset in the
//! integer domain, by starting each block's multiply-add from -offset/8 x (the activation
//! block's integer sum) in every lane; activation scales come converted to f32 once per row;
//! with AVX-512BW the fifth bits of Q5 blocks are a mask for one masked byte add.

use std::arch::x86_64::*;

use super::{DotFn, Q8Row, Q8_0_BLOCK};
use crate::quant::GgmlType;

/// What the `avx2` entry points need.
pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// What the `vnni` entry points need beyond `has_avx2`.
pub(super) fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
}

pub fn kernel(ty: GgmlType) -> Option<DotFn> {
    if !has_avx2() {
        return None;
    }
    Some(match (ty, has_vnni()) {
        (GgmlType::Q4_0, false) => |w, a, b| unsafe { avx2::q4_0(w, a, b) },
        (GgmlType::Q4_1, false) => |w, a, b| unsafe { avx2::q4_1(w, a, b) },
        (GgmlType::Q5_0, false) => |w, a, b| unsafe { avx2::q5_0(w, a, b) },
        (GgmlType::Q5_1, false) => |w, a, b| unsafe { avx2::q5_1(w, a, b) },
        (GgmlType::Q8_0, false) => |w, a, b| unsafe { avx2::q8_0(w, a, b) },
        (GgmlType::Q4_0, true) => |w, a, b| unsafe { vnni::q4_0(w, a, b) },
        (GgmlType::Q4_1, true) => |w, a, b| unsafe { vnni::q4_1(w, a, b) },
        (GgmlType::Q5_0, true) => |w, a, b| unsafe { vnni::q5_0(w, a, b) },
        (GgmlType::Q5_1, true) => |w, a, b| unsafe { vnni::q5_1(w, a, b) },
        (GgmlType::Q8_0, true) => |w, a, b| unsafe { vnni::q8_0(w, a, b) },
        (GgmlType::IQ4_NL, false) => |w, a, b| unsafe { avx2::iq4_nl(w, a, b) },
        (GgmlType::IQ4_NL, true) => |w, a, b| unsafe { vnni::iq4_nl(w, a, b) },
        _ => return None,
    })
}

/// Both instruction-set variants this machine can run, for tests.
#[cfg(test)]
pub fn variants(ty: GgmlType) -> Vec<DotFn> {
    let mut out = Vec::new();
    if has_avx2() {
        let f: DotFn = match ty {
            GgmlType::Q4_0 => |w, a, b| unsafe { avx2::q4_0(w, a, b) },
            GgmlType::Q4_1 => |w, a, b| unsafe { avx2::q4_1(w, a, b) },
            GgmlType::Q5_0 => |w, a, b| unsafe { avx2::q5_0(w, a, b) },
            GgmlType::Q5_1 => |w, a, b| unsafe { avx2::q5_1(w, a, b) },
            GgmlType::IQ4_NL => |w, a, b| unsafe { avx2::iq4_nl(w, a, b) },
            _ => |w, a, b| unsafe { avx2::q8_0(w, a, b) },
        };
        out.push(f);
    }
    out.extend(kernel(ty));
    out
}

/// 16 bytes of nibbles → 32 bytes: low nibbles (elements 0..16), then high nibbles.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let tmp = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// 32 bits → 32 bytes, 0xFF where the bit is set.
#[inline(always)]
unsafe fn bits(p: *const u8) -> __m256i {
    let x = (p as *const u32).read_unaligned();
    let shuffle = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuffle);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Signed weights x signed activations, as 8 f32 partial sums.
#[inline(always)]
unsafe fn dot_signed<const VNNI: bool>(w: __m256i, a: __m256i) -> __m256 {
    let aw = _mm256_sign_epi8(w, w);
    let sa = _mm256_sign_epi8(a, w);
    dot_unsigned::<VNNI>(aw, sa)
}

/// Unsigned weights (< 128) x signed activations; VNNI does the multiply-add in one step.
#[inline(always)]
unsafe fn dot_unsigned<const VNNI: bool>(w: __m256i, a: __m256i) -> __m256 {
    dot_unsigned_from::<VNNI>(_mm256_setzero_si256(), w, a)
}

/// `dot_unsigned` with every lane's sum starting from `init`.
#[inline(always)]
unsafe fn dot_unsigned_from<const VNNI: bool>(init: __m256i, w: __m256i, a: __m256i) -> __m256 {
    if VNNI {
        _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(init, w, a))
    } else {
        let p16 = _mm256_maddubs_epi16(w, a);
        _mm256_cvtepi32_ps(_mm256_add_epi32(
            init,
            _mm256_madd_epi16(p16, _mm256_set1_epi16(1)),
        ))
    }
}

/// The kernels compiled for one instruction set: the bodies are generic and inlined, so the
/// intrinsics inline into these entry points with their target features.
macro_rules! entry_points {
    ($module:ident, $features:literal, $vnni:literal) => {
        mod $module {
            entry_points!(@fns $features, $vnni, q4_0, q4_1, q5_0, q5_1, q8_0, iq4_nl);

            #[target_feature(enable = $features)]
            pub unsafe fn iq4_xs(w: &[u8], q8k: &[u8], superblocks: usize) -> f32 {
                super::iq4_xs::<$vnni>(w, q8k, superblocks)
            }
        }
    };
    (@fns $features:literal, $vnni:literal, $($name:ident),*) => {$(
        #[target_feature(enable = $features)]
        pub unsafe fn $name(w: &[u8], a: super::Q8Row, b: usize) -> f32 {
            super::$name::<$vnni>(w, a, b)
        }
    )*};
}
entry_points!(avx2, "avx2,fma,f16c", false);
entry_points!(
    vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni",
    true
);

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The f16 at byte `at`, converted in hardware, from a 64-bit memory operand (every block
/// has 8 bytes from its scale on). Written in assembly because LLVM narrows any spelling of
/// this to a 16-bit `vpinsrw` into whatever register is at hand, often an accumulator, which
/// chains every block's conversion behind the previous block's multiply-add and halved these
/// kernels' speed.
#[inline(always)]
unsafe fn f16_at(b: &[u8], at: usize) -> f32 {
    debug_assert!(at + 8 <= b.len());
    let four: __m128;
    // SAFETY: 8 readable bytes at `at` (above); callers run only where F16C was detected.
    std::arch::asm!(
        "vcvtph2ps {out}, qword ptr [{src}]",
        src = in(reg) b.as_ptr().add(at),
        out = lateout(xmm_reg) four,
        options(pure, readonly, nostack, preserves_flags),
    );
    _mm_cvtss_f32(four)
}

/// Activation block `b`: its 32 integers and its scale.
#[inline(always)]
unsafe fn act(a: Q8Row, b: usize) -> (__m256i, f32) {
    let p = a.blocks.as_ptr().add(b * Q8_0_BLOCK);
    (
        _mm256_loadu_si256(p.add(2) as *const __m256i),
        *a.scales.get_unchecked(b),
    )
}

/// Two independent accumulators over the blocks, so consecutive blocks' multiply-adds do not
/// wait on each other (the fmadd latency otherwise bounds the loop).
macro_rules! two_accumulators {
    ($step:ident $(<$($c:literal),*>)?, $w:expr, $a:expr, $blocks:expr) => {{
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b + 1 < $blocks {
            acc0 = $step::<VNNI $($(, $c)*)?>($w, $a, b, acc0);
            acc1 = $step::<VNNI $($(, $c)*)?>($w, $a, b + 1, acc1);
            b += 2;
        }
        if b < $blocks {
            acc0 = $step::<VNNI $($(, $c)*)?>($w, $a, b, acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }};
}

#[inline(always)]
unsafe fn q8_0_step<const VNNI: bool>(w: &[u8], a: Q8Row, b: usize, acc: __m256) -> __m256 {
    let (y, da) = act(a, b);
    let p = w.as_ptr().add(b * Q8_0_BLOCK);
    let x = _mm256_loadu_si256(p.add(2) as *const __m256i);
    let d = _mm256_set1_ps(f16_at(w, b * Q8_0_BLOCK) * da);
    _mm256_fmadd_ps(d, dot_signed::<VNNI>(x, y), acc)
}

/// Every lane's starting sum for a block whose unsigned levels are `OFFSET` above the
/// signed ones: the 8 lanes together then subtract OFFSET x the activation integers' sum.
#[inline(always)]
unsafe fn offset_init<const OFFSET: i32>(a: Q8Row, b: usize) -> __m256i {
    if OFFSET == 0 {
        _mm256_setzero_si256()
    } else {
        _mm256_set1_epi32(-(OFFSET / 8) * *a.int_sums.get_unchecked(b))
    }
}

/// A block of unsigned 4-bit levels (0..15): `BYTES` per block, f16 scale first, nibbles at
/// byte `QS`, levels `OFFSET` above the signed values.
#[inline(always)]
unsafe fn nibble_step<const VNNI: bool, const BYTES: usize, const QS: usize, const OFFSET: i32>(
    w: &[u8],
    a: Q8Row,
    b: usize,
    acc: __m256,
) -> __m256 {
    let (y, da) = act(a, b);
    let at = b * BYTES;
    let x = nibbles(w.as_ptr().add(at + QS));
    let d = _mm256_set1_ps(f16_at(w, at) * da);
    let init = offset_init::<OFFSET>(a, b);
    _mm256_fmadd_ps(d, dot_unsigned_from::<VNNI>(init, x, y), acc)
}

/// A block of unsigned 5-bit levels (0..31): fifth bits at byte `QH`, nibbles at `QS`.
#[inline(always)]
unsafe fn five_bit_step<
    const VNNI: bool,
    const BYTES: usize,
    const QH: usize,
    const QS: usize,
    const OFFSET: i32,
>(
    w: &[u8],
    a: Q8Row,
    b: usize,
    acc: __m256,
) -> __m256 {
    let (y, da) = act(a, b);
    let at = b * BYTES;
    let lo = nibbles(w.as_ptr().add(at + QS));
    let x = if VNNI {
        // The 32 fifth bits are a byte mask as they stand: add 16 where set.
        let mask = (w.as_ptr().add(at + QH) as *const u32).read_unaligned();
        _mm256_mask_add_epi8(lo, mask, lo, _mm256_set1_epi8(16))
    } else {
        let hi = _mm256_and_si256(bits(w.as_ptr().add(at + QH)), _mm256_set1_epi8(0x10));
        _mm256_or_si256(lo, hi)
    };
    let d = _mm256_set1_ps(f16_at(w, at) * da);
    let init = offset_init::<OFFSET>(a, b);
    _mm256_fmadd_ps(d, dot_unsigned_from::<VNNI>(init, x, y), acc)
}

/// Sum over blocks of the f16 at byte `at` of each block (the minimum of Q4_1/Q5_1) times
/// d_a x the activation block's sum, in four independent partial sums.
#[inline(always)]
unsafe fn per_block_times_sums(
    w: &[u8],
    block_bytes: usize,
    at: usize,
    sums: &[f32],
    blocks: usize,
) -> f32 {
    let mut partial = [0f32; 4];
    for b in 0..blocks {
        partial[b % 4] += f16_at(w, b * block_bytes + at) * *sums.get_unchecked(b);
    }
    (partial[0] + partial[1]) + (partial[2] + partial[3])
}

#[inline(always)]
unsafe fn q8_0<const VNNI: bool>(w: &[u8], a: Q8Row, blocks: usize) -> f32 {
    two_accumulators!(q8_0_step, w, a, blocks)
}

// Q4_0 and Q5_0 use unsigned levels (q, not q - 8; q + 16h, not minus 16), which skips the
// sign juggling of ggml's kernels; the offset comes back through the activation sums.

#[inline(always)]
unsafe fn q4_0<const VNNI: bool>(w: &[u8], a: Q8Row, blocks: usize) -> f32 {
    two_accumulators!(nibble_step<18, 2, 8>, w, a, blocks)
}

#[inline(always)]
unsafe fn q4_1<const VNNI: bool>(w: &[u8], a: Q8Row, blocks: usize) -> f32 {
    two_accumulators!(nibble_step<20, 4, 0>, w, a, blocks)
        + per_block_times_sums(w, 20, 2, a.sums, blocks)
}

#[inline(always)]
unsafe fn q5_0<const VNNI: bool>(w: &[u8], a: Q8Row, blocks: usize) -> f32 {
    two_accumulators!(five_bit_step<22, 2, 6, 16>, w, a, blocks)
}

#[inline(always)]
unsafe fn q5_1<const VNNI: bool>(w: &[u8], a: Q8Row, blocks: usize) -> f32 {
    two_accumulators!(five_bit_step<24, 4, 8, 0>, w, a, blocks)
        + per_block_times_sums(w, 24, 2, a.sums, blocks)
}

/// The IQ4 level table in both 128-bit lanes, for `pshufb` lookups by nibble. With VNNI the
/// table is shifted by 128 (unsigned: 1..241) and the 128 comes back out through the
/// activation sums in the integer domain, as for Q4_0, which saves the sign juggling of a
/// signed table; AVX2's `maddubs` would saturate its 16-bit sums on such levels.
#[inline(always)]
unsafe fn iq4_table<const VNNI: bool>() -> __m256i {
    let t = crate::quant::iq4::IQ4_VALUES;
    let signed = _mm_loadu_si128(t.as_ptr() as *const __m128i);
    let table = if VNNI {
        _mm_xor_si128(signed, _mm_set1_epi8(-128))
    } else {
        signed
    };
    _mm256_broadcastsi128_si256(table)
}

/// IQ4 levels `x` (from `iq4_table`) dotted with activations `y`; `sum32` is the integer sum
/// of the 32 activations.
#[inline(always)]
unsafe fn iq4_dot<const VNNI: bool>(x: __m256i, y: __m256i, sum32: i32) -> __m256 {
    if VNNI {
        dot_unsigned_from::<VNNI>(_mm256_set1_epi32(-16 * sum32), x, y)
    } else {
        dot_signed::<VNNI>(x, y)
    }
}

#[inline(always)]
unsafe fn iq4_nl_step<const VNNI: bool>(w: &[u8], a: Q8Row, b: usize, acc: __m256) -> __m256 {
    let (y, da) = act(a, b);
    let at = b * 18;
    let x = _mm256_shuffle_epi8(iq4_table::<VNNI>(), nibbles(w.as_ptr().add(at + 2)));
    let d = _mm256_set1_ps(f16_at(w, at) * da);
    let dot = iq4_dot::<VNNI>(x, y, *a.int_sums.get_unchecked(b));
    _mm256_fmadd_ps(d, dot, acc)
}

#[inline(always)]
unsafe fn iq4_nl<const VNNI: bool>(w: &[u8], a: Q8Row, blocks: usize) -> f32 {
    two_accumulators!(iq4_nl_step, w, a, blocks)
}

/// IQ4_XS against Q8_K bytes (layouts in `scalar::iq4_xs`): per 32 weights, table lookup by
/// nibble, dot product, times d_w x d_a x (6-bit scale - 32).
#[inline(always)]
unsafe fn iq4_xs<const VNNI: bool>(w: &[u8], q8k: &[u8], superblocks: usize) -> f32 {
    let table = iq4_table::<VNNI>();
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for s in 0..superblocks {
        let wb = w.as_ptr().add(s * 136);
        let ab = q8k.as_ptr().add(s * super::Q8K_BLOCK);
        let d = f16_at(w, s * 136) * (ab as *const f32).read_unaligned();
        let scales_h = (wb.add(2) as *const u16).read_unaligned() as i32;
        let scales_l = (wb.add(4) as *const u32).read_unaligned() as i32;
        for ib in (0..8).step_by(2) {
            let ls = |ib: usize| {
                let low = (scales_l >> (4 * ib)) & 0xf;
                let high = (scales_h >> (2 * ib)) & 3;
                (low | (high << 4)) - 32
            };
            let x0 = _mm256_shuffle_epi8(table, nibbles(wb.add(8 + 16 * ib)));
            let x1 = _mm256_shuffle_epi8(table, nibbles(wb.add(8 + 16 * (ib + 1))));
            let y0 = _mm256_loadu_si256(ab.add(4 + 32 * ib) as *const __m256i);
            let y1 = _mm256_loadu_si256(ab.add(4 + 32 * (ib + 1)) as *const __m256i);
            let d0 = _mm256_set1_ps(d * ls(ib) as f32);
            let d1 = _mm256_set1_ps(d * ls(ib + 1) as f32);
            // The 32 activations' sum, from the block's sums of 16.
            let bsums = ab.add(4 + 256) as *const i16;
            let sum32 = |j: usize| {
                bsums.add(2 * j).read_unaligned() as i32
                    + bsums.add(2 * j + 1).read_unaligned() as i32
            };
            acc0 = _mm256_fmadd_ps(d0, iq4_dot::<VNNI>(x0, y0, sum32(ib)), acc0);
            acc1 = _mm256_fmadd_ps(d1, iq4_dot::<VNNI>(x1, y1, sum32(ib + 1)), acc1);
        }
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

/// The IQ4_XS kernel this machine runs best, if it has AVX2.
pub fn iq4_xs_kernel() -> Option<super::SuperDotFn> {
    if !has_avx2() {
        return None;
    }
    Some(if has_vnni() {
        |w, a, s| unsafe { vnni::iq4_xs(w, a, s) }
    } else {
        |w, a, s| unsafe { avx2::iq4_xs(w, a, s) }
    })
}

/// Both instruction-set variants of the IQ4_XS kernel this machine can run, for tests.
#[cfg(test)]
pub fn iq4_xs_variants() -> Vec<super::SuperDotFn> {
    let mut out: Vec<super::SuperDotFn> = Vec::new();
    if has_avx2() {
        out.push(|w, a, s| unsafe { avx2::iq4_xs(w, a, s) });
    }
    out.extend(iq4_xs_kernel());
    out
}
