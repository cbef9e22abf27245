//! AVX2 dot products for the 32-element block formats, after ggml's `ggml_vec_dot_q*_q8_0`
//! (ggml-cpu/arch/x86/quants.c): unpack 32 weights into one register, multiply with the signed
//! activation bytes through `maddubs` (unsigned x signed, so signed weights lend their sign to
//! the activations first), widen to i32, scale by d_w * d_a in f32.

use std::arch::x86_64::*;

use super::{DotFn, Q8_0_BLOCK};
use crate::quant::GgmlType;

pub fn kernel(ty: GgmlType) -> Option<DotFn> {
    if !(is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"))
    {
        return None;
    }
    let vnni = is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl");
    Some(match (ty, vnni) {
        (GgmlType::Q4_0, false) => |w, a, s, b| unsafe { avx2::q4_0(w, a, s, b) },
        (GgmlType::Q4_1, false) => |w, a, s, b| unsafe { avx2::q4_1(w, a, s, b) },
        (GgmlType::Q5_0, false) => |w, a, s, b| unsafe { avx2::q5_0(w, a, s, b) },
        (GgmlType::Q5_1, false) => |w, a, s, b| unsafe { avx2::q5_1(w, a, s, b) },
        (GgmlType::Q8_0, false) => |w, a, s, b| unsafe { avx2::q8_0(w, a, s, b) },
        (GgmlType::Q4_0, true) => |w, a, s, b| unsafe { vnni::q4_0(w, a, s, b) },
        (GgmlType::Q4_1, true) => |w, a, s, b| unsafe { vnni::q4_1(w, a, s, b) },
        (GgmlType::Q5_0, true) => |w, a, s, b| unsafe { vnni::q5_0(w, a, s, b) },
        (GgmlType::Q5_1, true) => |w, a, s, b| unsafe { vnni::q5_1(w, a, s, b) },
        (GgmlType::Q8_0, true) => |w, a, s, b| unsafe { vnni::q8_0(w, a, s, b) },
        _ => return None,
    })
}

/// Both instruction-set variants this machine can run, for tests.
#[cfg(test)]
pub fn variants(ty: GgmlType) -> Vec<DotFn> {
    let mut out = Vec::new();
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        let f: DotFn = match ty {
            GgmlType::Q4_0 => |w, a, s, b| unsafe { avx2::q4_0(w, a, s, b) },
            GgmlType::Q4_1 => |w, a, s, b| unsafe { avx2::q4_1(w, a, s, b) },
            GgmlType::Q5_0 => |w, a, s, b| unsafe { avx2::q5_0(w, a, s, b) },
            GgmlType::Q5_1 => |w, a, s, b| unsafe { avx2::q5_1(w, a, s, b) },
            _ => |w, a, s, b| unsafe { avx2::q8_0(w, a, s, b) },
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
    if VNNI {
        _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a))
    } else {
        let p16 = _mm256_maddubs_epi16(w, a);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }
}

/// The kernels compiled for one instruction set: the bodies are generic and inlined, so the
/// intrinsics inline into these entry points with their target features.
macro_rules! entry_points {
    ($module:ident, $features:literal, $vnni:literal) => {
        mod $module {
            entry_points!(@fns $features, $vnni, q4_0, q4_1, q5_0, q5_1, q8_0);
        }
    };
    (@fns $features:literal, $vnni:literal, $($name:ident),*) => {$(
        #[target_feature(enable = $features)]
        pub unsafe fn $name(w: &[u8], a: &[u8], s: &[f32], b: usize) -> f32 {
            super::$name::<$vnni>(w, a, s, b)
        }
    )*};
}
entry_points!(avx2, "avx2,fma,f16c", false);
entry_points!(vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", true);

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The f16 at byte `at`, converted in hardware.
#[inline(always)]
unsafe fn f16_at(b: &[u8], at: usize) -> f32 {
    let h = (b.as_ptr().add(at) as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

#[inline(always)]
unsafe fn act(a: &[u8], b: usize) -> (__m256i, f32) {
    let p = a.as_ptr().add(b * Q8_0_BLOCK);
    (
        _mm256_loadu_si256(p.add(2) as *const __m256i),
        f16_at(a, b * Q8_0_BLOCK),
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
unsafe fn q8_0_step<const VNNI: bool>(w: &[u8], a: &[u8], b: usize, acc: __m256) -> __m256 {
    let (y, da) = act(a, b);
    let p = w.as_ptr().add(b * Q8_0_BLOCK);
    let x = _mm256_loadu_si256(p.add(2) as *const __m256i);
    let d = _mm256_set1_ps(f16_at(w, b * Q8_0_BLOCK) * da);
    _mm256_fmadd_ps(d, dot_signed::<VNNI>(x, y), acc)
}

/// A block of unsigned 4-bit levels (0..15): `BYTES` per block, f16 scale first, nibbles at
/// byte `QS`.
#[inline(always)]
unsafe fn nibble_step<const VNNI: bool, const BYTES: usize, const QS: usize>(
    w: &[u8],
    a: &[u8],
    b: usize,
    acc: __m256,
) -> __m256 {
    let (y, da) = act(a, b);
    let at = b * BYTES;
    let x = nibbles(w.as_ptr().add(at + QS));
    let d = _mm256_set1_ps(f16_at(w, at) * da);
    _mm256_fmadd_ps(d, dot_unsigned::<VNNI>(x, y), acc)
}

/// A block of unsigned 5-bit levels (0..31): fifth bits at byte `QH`, nibbles at `QS`.
#[inline(always)]
unsafe fn five_bit_step<const VNNI: bool, const BYTES: usize, const QH: usize, const QS: usize>(
    w: &[u8],
    a: &[u8],
    b: usize,
    acc: __m256,
) -> __m256 {
    let (y, da) = act(a, b);
    let at = b * BYTES;
    let lo = nibbles(w.as_ptr().add(at + QS));
    let hi = _mm256_and_si256(bits(w.as_ptr().add(at + QH)), _mm256_set1_epi8(0x10));
    let x = _mm256_or_si256(lo, hi);
    let d = _mm256_set1_ps(f16_at(w, at) * da);
    _mm256_fmadd_ps(d, dot_unsigned::<VNNI>(x, y), acc)
}

/// Sum over blocks of the f16 at byte `at` of each block (its scale or its offset) times
/// d_a x the activation block's sum: the part of a block's dot product that does not depend
/// on the levels.
#[inline(always)]
unsafe fn per_block_times_sums(
    w: &[u8],
    block_bytes: usize,
    at: usize,
    sums: &[f32],
    blocks: usize,
) -> f32 {
    let mut total = 0f32;
    for b in 0..blocks {
        total += f16_at(w, b * block_bytes + at) * sums[b];
    }
    total
}

#[inline(always)]
unsafe fn q8_0<const VNNI: bool>(w: &[u8], a: &[u8], _sums: &[f32], blocks: usize) -> f32 {
    two_accumulators!(q8_0_step, w, a, blocks)
}

// Q4_0 and Q5_0 use unsigned levels (q, not q - 8; q + 16h, not minus 16), which skips the
// sign juggling of ggml's kernels; the constant comes back through the activation sums.

#[inline(always)]
unsafe fn q4_0<const VNNI: bool>(w: &[u8], a: &[u8], sums: &[f32], blocks: usize) -> f32 {
    two_accumulators!(nibble_step<18, 2>, w, a, blocks)
        - 8.0 * per_block_times_sums(w, 18, 0, sums, blocks)
}

#[inline(always)]
unsafe fn q4_1<const VNNI: bool>(w: &[u8], a: &[u8], sums: &[f32], blocks: usize) -> f32 {
    two_accumulators!(nibble_step<20, 4>, w, a, blocks)
        + per_block_times_sums(w, 20, 2, sums, blocks)
}

#[inline(always)]
unsafe fn q5_0<const VNNI: bool>(w: &[u8], a: &[u8], sums: &[f32], blocks: usize) -> f32 {
    two_accumulators!(five_bit_step<22, 2, 6>, w, a, blocks)
        - 16.0 * per_block_times_sums(w, 22, 0, sums, blocks)
}

#[inline(always)]
unsafe fn q5_1<const VNNI: bool>(w: &[u8], a: &[u8], sums: &[f32], blocks: usize) -> f32 {
    two_accumulators!(five_bit_step<24, 4, 8>, w, a, blocks)
        + per_block_times_sums(w, 24, 2, sums, blocks)
}
