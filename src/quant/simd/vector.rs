//! A minimal lane vector abstraction over AVX2 (8 lanes) and AVX-512 (16 lanes), plus a portable
//! array version (used on aarch64, where NEON is the baseline and the compiler vectorizes it).
//! Only the IEEE operations the scalar code uses are offered (no fused multiply-add), so a
//! kernel written against it computes exactly what the scalar reference does, lane by lane.
//!
//! All methods are `#[inline(always)]` and must only be reached from a function compiled with
//! the matching `#[target_feature]`.

#![allow(clippy::missing_safety_doc)]

pub trait Lanes: Copy {
    const N: usize;
    type I: Copy;
    type M: Copy;

    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: &[f32]) -> Self;
    unsafe fn store(self, p: &mut [f32]);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn div(self, o: Self) -> Self;
    unsafe fn abs(self) -> Self;
    unsafe fn lt(self, o: Self) -> Self::M;
    unsafe fn le(self, o: Self) -> Self::M;
    unsafe fn ne(self, o: Self) -> Self::M;
    unsafe fn and(a: Self::M, b: Self::M) -> Self::M;
    unsafe fn or(a: Self::M, b: Self::M) -> Self::M;
    unsafe fn any(m: Self::M) -> bool;
    /// `m ? a : b` per lane.
    unsafe fn select(m: Self::M, a: Self, b: Self) -> Self;
    /// ggml's `nearest_int`: the 1.5 * 2^23 magic-number rounding, bit for bit.
    unsafe fn nearest_int(self) -> Self::I;
    unsafe fn clamp_i(i: Self::I, lo: i32, hi: i32) -> Self::I;
    unsafe fn to_f(i: Self::I) -> Self;
    unsafe fn load_i(p: &[i32]) -> Self::I;
    unsafe fn store_i(i: Self::I, p: &mut [i32]);
    unsafe fn select_i(m: Self::M, a: Self::I, b: Self::I) -> Self::I;
    unsafe fn ne_i(a: Self::I, b: Self::I) -> Self::M;
    unsafe fn add_i(a: Self::I, v: i32) -> Self::I;
}

const MAGIC: f32 = 12_582_912.0;

#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Lanes, MAGIC};
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct Avx2(__m256);

    impl Lanes for Avx2 {
        const N: usize = 8;
        type I = __m256i;
        type M = __m256;

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx2(_mm256_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: &[f32]) -> Self {
            debug_assert!(p.len() >= 8);
            Avx2(_mm256_loadu_ps(p.as_ptr()))
        }
        #[inline(always)]
        unsafe fn store(self, p: &mut [f32]) {
            debug_assert!(p.len() >= 8);
            _mm256_storeu_ps(p.as_mut_ptr(), self.0)
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Avx2(_mm256_add_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            Avx2(_mm256_sub_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Avx2(_mm256_mul_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            Avx2(_mm256_div_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn abs(self) -> Self {
            Avx2(_mm256_and_ps(
                self.0,
                _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF)),
            ))
        }
        #[inline(always)]
        unsafe fn lt(self, o: Self) -> __m256 {
            _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0)
        }
        #[inline(always)]
        unsafe fn le(self, o: Self) -> __m256 {
            _mm256_cmp_ps::<_CMP_LE_OQ>(self.0, o.0)
        }
        #[inline(always)]
        unsafe fn ne(self, o: Self) -> __m256 {
            // C's `!=` is true for NaN operands: unordered-or-not-equal.
            _mm256_cmp_ps::<_CMP_NEQ_UQ>(self.0, o.0)
        }
        #[inline(always)]
        unsafe fn and(a: __m256, b: __m256) -> __m256 {
            _mm256_and_ps(a, b)
        }
        #[inline(always)]
        unsafe fn or(a: __m256, b: __m256) -> __m256 {
            _mm256_or_ps(a, b)
        }
        #[inline(always)]
        unsafe fn any(m: __m256) -> bool {
            _mm256_movemask_ps(m) != 0
        }
        #[inline(always)]
        unsafe fn select(m: __m256, a: Self, b: Self) -> Self {
            Avx2(_mm256_blendv_ps(b.0, a.0, m))
        }
        #[inline(always)]
        unsafe fn nearest_int(self) -> __m256i {
            let v = _mm256_castps_si256(_mm256_add_ps(self.0, _mm256_set1_ps(MAGIC)));
            _mm256_sub_epi32(
                _mm256_and_si256(v, _mm256_set1_epi32(0x007F_FFFF)),
                _mm256_set1_epi32(0x0040_0000),
            )
        }
        #[inline(always)]
        unsafe fn clamp_i(i: __m256i, lo: i32, hi: i32) -> __m256i {
            _mm256_max_epi32(
                _mm256_min_epi32(i, _mm256_set1_epi32(hi)),
                _mm256_set1_epi32(lo),
            )
        }
        #[inline(always)]
        unsafe fn to_f(i: __m256i) -> Self {
            Avx2(_mm256_cvtepi32_ps(i))
        }
        #[inline(always)]
        unsafe fn load_i(p: &[i32]) -> __m256i {
            debug_assert!(p.len() >= 8);
            _mm256_loadu_si256(p.as_ptr() as *const __m256i)
        }
        #[inline(always)]
        unsafe fn store_i(i: __m256i, p: &mut [i32]) {
            debug_assert!(p.len() >= 8);
            _mm256_storeu_si256(p.as_mut_ptr() as *mut __m256i, i)
        }
        #[inline(always)]
        unsafe fn select_i(m: __m256, a: __m256i, b: __m256i) -> __m256i {
            _mm256_castps_si256(_mm256_blendv_ps(
                _mm256_castsi256_ps(b),
                _mm256_castsi256_ps(a),
                m,
            ))
        }
        #[inline(always)]
        unsafe fn ne_i(a: __m256i, b: __m256i) -> __m256 {
            let eq = _mm256_cmpeq_epi32(a, b);
            _mm256_castsi256_ps(_mm256_xor_si256(eq, _mm256_set1_epi32(-1)))
        }
        #[inline(always)]
        unsafe fn add_i(a: __m256i, v: i32) -> __m256i {
            _mm256_add_epi32(a, _mm256_set1_epi32(v))
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    impl Lanes for Avx512 {
        const N: usize = 16;
        type I = __m512i;
        type M = __mmask16;

        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx512(_mm512_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: &[f32]) -> Self {
            debug_assert!(p.len() >= 16);
            Avx512(_mm512_loadu_ps(p.as_ptr()))
        }
        #[inline(always)]
        unsafe fn store(self, p: &mut [f32]) {
            debug_assert!(p.len() >= 16);
            _mm512_storeu_ps(p.as_mut_ptr(), self.0)
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Avx512(_mm512_add_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            Avx512(_mm512_sub_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Avx512(_mm512_mul_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            Avx512(_mm512_div_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn abs(self) -> Self {
            Avx512(_mm512_castsi512_ps(_mm512_and_si512(
                _mm512_castps_si512(self.0),
                _mm512_set1_epi32(0x7FFF_FFFF),
            )))
        }
        #[inline(always)]
        unsafe fn lt(self, o: Self) -> __mmask16 {
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0)
        }
        #[inline(always)]
        unsafe fn le(self, o: Self) -> __mmask16 {
            _mm512_cmp_ps_mask::<_CMP_LE_OQ>(self.0, o.0)
        }
        #[inline(always)]
        unsafe fn ne(self, o: Self) -> __mmask16 {
            _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(self.0, o.0)
        }
        #[inline(always)]
        unsafe fn and(a: __mmask16, b: __mmask16) -> __mmask16 {
            a & b
        }
        #[inline(always)]
        unsafe fn or(a: __mmask16, b: __mmask16) -> __mmask16 {
            a | b
        }
        #[inline(always)]
        unsafe fn any(m: __mmask16) -> bool {
            m != 0
        }
        #[inline(always)]
        unsafe fn select(m: __mmask16, a: Self, b: Self) -> Self {
            Avx512(_mm512_mask_blend_ps(m, b.0, a.0))
        }
        #[inline(always)]
        unsafe fn nearest_int(self) -> __m512i {
            let v = _mm512_castps_si512(_mm512_add_ps(self.0, _mm512_set1_ps(MAGIC)));
            _mm512_sub_epi32(
                _mm512_and_si512(v, _mm512_set1_epi32(0x007F_FFFF)),
                _mm512_set1_epi32(0x0040_0000),
            )
        }
        #[inline(always)]
        unsafe fn clamp_i(i: __m512i, lo: i32, hi: i32) -> __m512i {
            _mm512_max_epi32(
                _mm512_min_epi32(i, _mm512_set1_epi32(hi)),
                _mm512_set1_epi32(lo),
            )
        }
        #[inline(always)]
        unsafe fn to_f(i: __m512i) -> Self {
            Avx512(_mm512_cvtepi32_ps(i))
        }
        #[inline(always)]
        unsafe fn load_i(p: &[i32]) -> __m512i {
            debug_assert!(p.len() >= 16);
            _mm512_loadu_si512(p.as_ptr() as *const __m512i)
        }
        #[inline(always)]
        unsafe fn store_i(i: __m512i, p: &mut [i32]) {
            debug_assert!(p.len() >= 16);
            _mm512_storeu_si512(p.as_mut_ptr() as *mut __m512i, i)
        }
        #[inline(always)]
        unsafe fn select_i(m: __mmask16, a: __m512i, b: __m512i) -> __m512i {
            _mm512_mask_blend_epi32(m, b, a)
        }
        #[inline(always)]
        unsafe fn ne_i(a: __m512i, b: __m512i) -> __mmask16 {
            _mm512_cmpneq_epi32_mask(a, b)
        }
        #[inline(always)]
        unsafe fn add_i(a: __m512i, v: i32) -> __m512i {
            _mm512_add_epi32(a, _mm512_set1_epi32(v))
        }
    }
}

/// Plain arrays: any target, the compiler vectorizes what it can. Same semantics as above.
#[derive(Clone, Copy)]
pub struct Portable<const N: usize>([f32; N]);

#[inline(always)]
fn map<const N: usize, T: Copy, U: Copy + Default>(a: [T; N], f: impl Fn(T) -> U) -> [U; N] {
    let mut out = [U::default(); N];
    for k in 0..N {
        out[k] = f(a[k]);
    }
    out
}

#[inline(always)]
fn zip<const N: usize, T: Copy, U: Copy + Default>(
    a: [T; N],
    b: [T; N],
    f: impl Fn(T, T) -> U,
) -> [U; N] {
    let mut out = [U::default(); N];
    for k in 0..N {
        out[k] = f(a[k], b[k]);
    }
    out
}

impl<const N: usize> Lanes for Portable<N> {
    const N: usize = N;
    type I = [i32; N];
    type M = [bool; N];

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Portable([v; N])
    }
    #[inline(always)]
    unsafe fn load(p: &[f32]) -> Self {
        Portable(p[..N].try_into().expect("N values"))
    }
    #[inline(always)]
    unsafe fn store(self, p: &mut [f32]) {
        p[..N].copy_from_slice(&self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Portable(zip(self.0, o.0, |a, b| a + b))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        Portable(zip(self.0, o.0, |a, b| a - b))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        Portable(zip(self.0, o.0, |a, b| a * b))
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        Portable(zip(self.0, o.0, |a, b| a / b))
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        Portable(map(self.0, f32::abs))
    }
    #[inline(always)]
    unsafe fn lt(self, o: Self) -> [bool; N] {
        zip(self.0, o.0, |a, b| a < b)
    }
    #[inline(always)]
    unsafe fn le(self, o: Self) -> [bool; N] {
        zip(self.0, o.0, |a, b| a <= b)
    }
    #[inline(always)]
    unsafe fn ne(self, o: Self) -> [bool; N] {
        zip(self.0, o.0, |a, b| a != b)
    }
    #[inline(always)]
    unsafe fn and(a: [bool; N], b: [bool; N]) -> [bool; N] {
        zip(a, b, |x, y| x & y)
    }
    #[inline(always)]
    unsafe fn or(a: [bool; N], b: [bool; N]) -> [bool; N] {
        zip(a, b, |x, y| x | y)
    }
    #[inline(always)]
    unsafe fn any(m: [bool; N]) -> bool {
        m.iter().any(|&b| b)
    }
    #[inline(always)]
    unsafe fn select(m: [bool; N], a: Self, b: Self) -> Self {
        let mut out = b.0;
        for k in 0..N {
            if m[k] {
                out[k] = a.0[k];
            }
        }
        Portable(out)
    }
    #[inline(always)]
    unsafe fn nearest_int(self) -> [i32; N] {
        map(self.0, |f| {
            ((f + MAGIC).to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
        })
    }
    #[inline(always)]
    unsafe fn clamp_i(i: [i32; N], lo: i32, hi: i32) -> [i32; N] {
        map(i, |v| v.min(hi).max(lo))
    }
    #[inline(always)]
    unsafe fn to_f(i: [i32; N]) -> Self {
        Portable(map(i, |v| v as f32))
    }
    #[inline(always)]
    unsafe fn load_i(p: &[i32]) -> [i32; N] {
        p[..N].try_into().expect("N values")
    }
    #[inline(always)]
    unsafe fn store_i(i: [i32; N], p: &mut [i32]) {
        p[..N].copy_from_slice(&i)
    }
    #[inline(always)]
    unsafe fn select_i(m: [bool; N], a: [i32; N], b: [i32; N]) -> [i32; N] {
        let mut out = b;
        for k in 0..N {
            if m[k] {
                out[k] = a[k];
            }
        }
        out
    }
    #[inline(always)]
    unsafe fn ne_i(a: [i32; N], b: [i32; N]) -> [bool; N] {
        zip(a, b, |x, y| x != y)
    }
    #[inline(always)]
    unsafe fn add_i(a: [i32; N], v: i32) -> [i32; N] {
        map(a, |x| x + v)
    }
}

/// Two vectors driven as one: twice the lanes and two independent dependency chains in flight,
/// which hides the latency of the refinement loops whose steps depend on each other.
#[derive(Clone, Copy)]
pub struct Pair<V: Lanes>(V, V);

impl<V: Lanes> Lanes for Pair<V> {
    const N: usize = 2 * V::N;
    type I = (V::I, V::I);
    type M = (V::M, V::M);

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Pair(V::splat(v), V::splat(v))
    }
    #[inline(always)]
    unsafe fn load(p: &[f32]) -> Self {
        Pair(V::load(p), V::load(&p[V::N..]))
    }
    #[inline(always)]
    unsafe fn store(self, p: &mut [f32]) {
        self.0.store(p);
        self.1.store(&mut p[V::N..]);
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Pair(self.0.add(o.0), self.1.add(o.1))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        Pair(self.0.sub(o.0), self.1.sub(o.1))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        Pair(self.0.mul(o.0), self.1.mul(o.1))
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        Pair(self.0.div(o.0), self.1.div(o.1))
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        Pair(self.0.abs(), self.1.abs())
    }
    #[inline(always)]
    unsafe fn lt(self, o: Self) -> Self::M {
        (self.0.lt(o.0), self.1.lt(o.1))
    }
    #[inline(always)]
    unsafe fn le(self, o: Self) -> Self::M {
        (self.0.le(o.0), self.1.le(o.1))
    }
    #[inline(always)]
    unsafe fn ne(self, o: Self) -> Self::M {
        (self.0.ne(o.0), self.1.ne(o.1))
    }
    #[inline(always)]
    unsafe fn and(a: Self::M, b: Self::M) -> Self::M {
        (V::and(a.0, b.0), V::and(a.1, b.1))
    }
    #[inline(always)]
    unsafe fn or(a: Self::M, b: Self::M) -> Self::M {
        (V::or(a.0, b.0), V::or(a.1, b.1))
    }
    #[inline(always)]
    unsafe fn any(m: Self::M) -> bool {
        V::any(m.0) | V::any(m.1)
    }
    #[inline(always)]
    unsafe fn select(m: Self::M, a: Self, b: Self) -> Self {
        Pair(V::select(m.0, a.0, b.0), V::select(m.1, a.1, b.1))
    }
    #[inline(always)]
    unsafe fn nearest_int(self) -> Self::I {
        (self.0.nearest_int(), self.1.nearest_int())
    }
    #[inline(always)]
    unsafe fn clamp_i(i: Self::I, lo: i32, hi: i32) -> Self::I {
        (V::clamp_i(i.0, lo, hi), V::clamp_i(i.1, lo, hi))
    }
    #[inline(always)]
    unsafe fn to_f(i: Self::I) -> Self {
        Pair(V::to_f(i.0), V::to_f(i.1))
    }
    #[inline(always)]
    unsafe fn load_i(p: &[i32]) -> Self::I {
        (V::load_i(p), V::load_i(&p[V::N..]))
    }
    #[inline(always)]
    unsafe fn store_i(i: Self::I, p: &mut [i32]) {
        V::store_i(i.0, p);
        V::store_i(i.1, &mut p[V::N..]);
    }
    #[inline(always)]
    unsafe fn select_i(m: Self::M, a: Self::I, b: Self::I) -> Self::I {
        (V::select_i(m.0, a.0, b.0), V::select_i(m.1, a.1, b.1))
    }
    #[inline(always)]
    unsafe fn ne_i(a: Self::I, b: Self::I) -> Self::M {
        (V::ne_i(a.0, b.0), V::ne_i(a.1, b.1))
    }
    #[inline(always)]
    unsafe fn add_i(a: Self::I, v: i32) -> Self::I {
        (V::add_i(a.0, v), V::add_i(a.1, v))
    }
}
