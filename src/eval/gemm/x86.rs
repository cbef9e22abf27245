//! x86 panel kernels. Both compute, per 32-element block, the exact integer dot product of
//! the weight and activation integers, then scale it in f32 with the same operations in the
//! same order, so they give bit-identical results (and so do machines with either).
//!
//! AVX-512 VNNI: `vpdpbusd` multiplies 4 unsigned weight bytes (q + 128) by 4 signed
//! activation bytes per 32-bit lane and accumulates, 16 weight rows per register; an
//! activation's 4 bytes are broadcast to every lane. After each block the integer sums lose
//! the +128 bias (128 x the activation block's sum).
//!
//! AVX2 (after ggml's `ggml_vec_dot_q8_0_q8_0`, ggml-cpu/arch/x86/quants.c): `maddubs`
//! multiplies unsigned by signed bytes into saturating i16 pairs, so the weights are made
//! signed again (q = byte ^ 0x80) and lend their sign to the activations: |q| x sign(q)a.
//! No pair saturates: |q| <= 128 and |a| <= 127 (Q8_0 and Q8_K activations are clamped to
//! +-127), so a pair is at most 2 x 128 x 127 = 32512 < 32767. No bias to remove.

use std::arch::x86_64::*;

use super::{Activations, Panel, PANEL};

/// A panel kernel: every activation row times the panel; row `r` lane `j` goes to
/// `dst[r * stride + j]`.
///
/// # Safety
/// `dst` must be valid for those writes for `j < lanes`. Only `kernel`/`variants` hand these
/// out, and only when the CPU has the instructions they use.
pub type PanelFn = unsafe fn(&Activations, &Panel, usize, *mut f32, usize);

fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// The fastest kernel this CPU runs.
pub fn kernel() -> Option<(&'static str, PanelFn)> {
    variants().pop()
}

/// Every kernel this CPU runs, slowest first, named for tests and skip messages.
pub fn variants() -> Vec<(&'static str, PanelFn)> {
    let mut out: Vec<(&'static str, PanelFn)> = Vec::new();
    if has_avx2() {
        out.push(("avx2", avx2_panel));
    }
    if has_vnni() {
        out.push(("avx512vnni", vnni_panel));
    }
    out
}

/// # Safety
/// As `PanelFn`; the CPU must have AVX2 and FMA (`variants` checks).
unsafe fn avx2_panel(a: &Activations, p: &Panel, lanes: usize, dst: *mut f32, stride: usize) {
    let m = a.rows();
    let mut r = 0;
    // Two rows x 32 lanes keep 8 integer accumulators and the 4 weight registers in the 16
    // ymm registers.
    while r + 2 <= m {
        avx2_tile::<2>(a, p, r, lanes, dst, stride);
        r += 2;
    }
    if r < m {
        avx2_tile::<1>(a, p, r, lanes, dst, stride);
    }
}

/// # Safety
/// As `PanelFn`; the CPU must have AVX-512F/BW/VNNI (`variants` checks).
unsafe fn vnni_panel(a: &Activations, p: &Panel, lanes: usize, dst: *mut f32, stride: usize) {
    let m = a.rows();
    let mut r = 0;
    while r + 4 <= m {
        vnni_tile::<4>(a, p, r, lanes, dst, stride);
        r += 4;
    }
    while r < m {
        vnni_tile::<1>(a, p, r, lanes, dst, stride);
        r += 1;
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_tile<const MR: usize>(
    a: &Activations,
    p: &Panel,
    r0: usize,
    lanes: usize,
    dst: *mut f32,
    stride: usize,
) {
    let k = a.k;
    let nb = k / 32;
    let mut facc = [[_mm256_setzero_ps(); 4]; MR];
    let wp = p.bytes.as_ptr();
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    let ones = _mm256_set1_epi16(1);
    for b in 0..nb {
        let mut iacc = [[_mm256_setzero_si256(); 4]; MR];
        for k4 in 0..8 {
            let w = wp.add((b * 8 + k4) * PANEL * 4);
            let mut q = [_mm256_setzero_si256(); 4];
            let mut mag = [_mm256_setzero_si256(); 4];
            for g in 0..4 {
                let raw = _mm256_loadu_si256(w.add(32 * g) as *const __m256i);
                q[g] = _mm256_xor_si256(raw, flip);
                mag[g] = _mm256_sign_epi8(q[g], q[g]);
            }
            for i in 0..MR {
                let src = a.q.as_ptr().add((r0 + i) * k + b * 32 + 4 * k4) as *const i32;
                let x = _mm256_set1_epi32(src.read_unaligned());
                for g in 0..4 {
                    let pairs = _mm256_maddubs_epi16(mag[g], _mm256_sign_epi8(x, q[g]));
                    iacc[i][g] = _mm256_add_epi32(iacc[i][g], _mm256_madd_epi16(pairs, ones));
                }
            }
        }
        for i in 0..MR {
            let at = (r0 + i) * nb + b;
            let t = _mm256_set1_ps(a.scale[at]);
            for g in 0..4 {
                let s = _mm256_loadu_ps(p.scale.as_ptr().add(b * PANEL + 8 * g));
                let d = _mm256_cvtepi32_ps(iacc[i][g]);
                facc[i][g] = _mm256_fmadd_ps(d, _mm256_mul_ps(s, t), facc[i][g]);
            }
        }
        if p.has_offset {
            for i in 0..MR {
                let u = _mm256_set1_ps(a.scaled_sum[(r0 + i) * nb + b]);
                for g in 0..4 {
                    let o = _mm256_loadu_ps(p.offset.as_ptr().add(b * PANEL + 8 * g));
                    facc[i][g] = _mm256_fmadd_ps(o, u, facc[i][g]);
                }
            }
        }
    }
    for i in 0..MR {
        let mut row = [0f32; PANEL];
        for g in 0..4 {
            _mm256_storeu_ps(row.as_mut_ptr().add(8 * g), facc[i][g]);
        }
        let out = dst.add((r0 + i) * stride);
        std::ptr::copy_nonoverlapping(row.as_ptr(), out, lanes);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_tile<const MR: usize>(
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
