//! AVX-512 VNNI panel kernel: `vpdpbusd` multiplies 4 unsigned weight bytes (q + 128) by 4
//! signed activation bytes per 32-bit lane and accumulates, 16 weight rows per register; an
//! activation's 4 bytes are broadcast to every lane. After each 32-element block the integer
//! sums lose the +128 bias (128 x the activation block's sum), become f32 and are scaled by
//! weight scale x activation scale, as ggml scales its block dot products.

use std::arch::x86_64::*;

use super::{Activations, Panel, PANEL};

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Every activation row times the panel; row `r` lane `j` goes to `dst[r * stride + j]`.
///
/// # Safety
/// `available()` must hold and `dst` must be valid for those writes for `j < lanes`.
pub unsafe fn panel(a: &Activations, p: &Panel, lanes: usize, dst: *mut f32, stride: usize) {
    let m = a.rows();
    let mut r = 0;
    while r + 4 <= m {
        tile::<4>(a, p, r, lanes, dst, stride);
        r += 4;
    }
    while r < m {
        tile::<1>(a, p, r, lanes, dst, stride);
        r += 1;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const MR: usize>(
    a: &Activations,
    p: &Panel,
    r0: usize,
    lanes: usize,
    dst: *mut f32,
    stride: usize,
) {
    let k = a.k;
    let nb = k / 32;
    let mut facc = [[_mm512_setzero_ps(); 2]; MR];
    let wp = p.bytes.as_ptr();
    for b in 0..nb {
        let mut iacc = [[_mm512_setzero_si512(); 2]; MR];
        for k4 in 0..8 {
            let w = wp.add((b * 8 + k4) * PANEL * 4);
            let w0 = _mm512_loadu_si512(w as *const _);
            let w1 = _mm512_loadu_si512(w.add(64) as *const _);
            for i in 0..MR {
                let src = a.q.as_ptr().add((r0 + i) * k + b * 32 + 4 * k4) as *const i32;
                let x = _mm512_set1_epi32(src.read_unaligned());
                iacc[i][0] = _mm512_dpbusd_epi32(iacc[i][0], w0, x);
                iacc[i][1] = _mm512_dpbusd_epi32(iacc[i][1], w1, x);
            }
        }
        let s0 = _mm512_loadu_ps(p.scale.as_ptr().add(b * PANEL));
        let s1 = _mm512_loadu_ps(p.scale.as_ptr().add(b * PANEL + 16));
        for i in 0..MR {
            let at = (r0 + i) * nb + b;
            let bias = _mm512_set1_epi32(a.bias[at]);
            let t = _mm512_set1_ps(a.scale[at]);
            let d0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(iacc[i][0], bias));
            let d1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(iacc[i][1], bias));
            facc[i][0] = _mm512_fmadd_ps(d0, _mm512_mul_ps(s0, t), facc[i][0]);
            facc[i][1] = _mm512_fmadd_ps(d1, _mm512_mul_ps(s1, t), facc[i][1]);
        }
        if p.has_offset {
            let o0 = _mm512_loadu_ps(p.offset.as_ptr().add(b * PANEL));
            let o1 = _mm512_loadu_ps(p.offset.as_ptr().add(b * PANEL + 16));
            for i in 0..MR {
                let u = _mm512_set1_ps(a.scaled_sum[(r0 + i) * nb + b]);
                facc[i][0] = _mm512_fmadd_ps(o0, u, facc[i][0]);
                facc[i][1] = _mm512_fmadd_ps(o1, u, facc[i][1]);
            }
        }
    }
    for i in 0..MR {
        let mut row = [0f32; PANEL];
        _mm512_storeu_ps(row.as_mut_ptr(), facc[i][0]);
        _mm512_storeu_ps(row.as_mut_ptr().add(16), facc[i][1]);
        let out = dst.add((r0 + i) * stride);
        std::ptr::copy_nonoverlapping(row.as_ptr(), out, lanes);
    }
}
