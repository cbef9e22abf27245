//! Integer GEMM for prompt processing: weights in the 32-element-block formats times
//! activations quantized to the weight type's ggml `vec_dot_type` (Q8_0 or Q8_K), with the
//! block dot products done in 8-bit integers exactly as ggml's kernels do, then scaled in f32.
//!
//! Each weight block unpacks to 32 small integers q, a scale s and an offset o (w = s*q + o);
//! each activation block to 32 int8 a and a scale t. Then
//! `y = sum_b t_b * s_b * (q_b . a_b) + o_b * t_b * sum(a_b)`.
//! Weights are repacked one panel of 32 rows at a time (reused by every activation row); the
//! x86 kernels (`x86.rs`: AVX-512 VNNI, else AVX2) multiply a few activation rows by the 32
//! rows of a panel per step. Other machines use the f32 GEMM path in `linear.rs`.

#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

use super::dot::Part;

use crate::quant::fp16::f16_bits_to_f32;
use crate::quant::iq4::IQ4_VALUES;
use crate::quant::kquants::scale_min_k4;
use crate::quant::GgmlType;

/// Weight rows per packed panel (two 16-lane registers).
pub const PANEL: usize = 32;

pub fn supported(ty: GgmlType) -> bool {
    ty.info().int_gemm
}

/// The format ggml quantizes activations to for weights of type `ty` (Q8_0 or Q8_K for every
/// type `supported` here).
fn activation_type(ty: GgmlType) -> GgmlType {
    super::dot::Rounding::for_weight(ty)
        .quantized_type()
        .expect("an 8-bit activation format for the integer GEMM's types")
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Block `b` (32 elements) of a weight row: integers, scale, offset (w = scale * q + offset),
/// with the float operations of ggml's dequantizers so that scale * q + offset reproduces them.
pub fn unpack_block(ty: GgmlType, row: &[u8], b: usize, q: &mut [i8; 32]) -> (f32, f32) {
    let legacy = |bytes: usize, qs: usize, qh: Option<usize>, offset: i8| {
        let blk = &row[b * bytes..(b + 1) * bytes];
        let h = qh.map_or(0u32, |at| {
            u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]])
        });
        let mut q = [0i8; 32];
        for j in 0..16 {
            let v = blk[qs + j];
            q[j] = ((v & 0xF) | ((((h >> j) & 1) as u8) << 4)) as i8 + offset;
            q[j + 16] = ((v >> 4) | ((((h >> (j + 16)) & 1) as u8) << 4)) as i8 + offset;
        }
        (q, blk)
    };
    match ty {
        GgmlType::Q4_0 => {
            let (v, blk) = legacy(GgmlType::Q4_0.info().block_bytes, 2, None, -8);
            *q = v;
            (f16_at(blk, 0), 0.0)
        }
        GgmlType::Q4_1 => {
            let (v, blk) = legacy(GgmlType::Q4_1.info().block_bytes, 4, None, 0);
            *q = v;
            (f16_at(blk, 0), f16_at(blk, 2))
        }
        GgmlType::Q5_0 => {
            let (v, blk) = legacy(GgmlType::Q5_0.info().block_bytes, 6, Some(2), -16);
            *q = v;
            (f16_at(blk, 0), 0.0)
        }
        GgmlType::Q5_1 => {
            let (v, blk) = legacy(GgmlType::Q5_1.info().block_bytes, 8, Some(4), 0);
            *q = v;
            (f16_at(blk, 0), f16_at(blk, 2))
        }
        GgmlType::Q8_0 => {
            let n = ty.info().block_bytes;
            let blk = &row[b * n..(b + 1) * n];
            for j in 0..32 {
                q[j] = blk[2 + j] as i8;
            }
            (f16_at(blk, 0), 0.0)
        }
        GgmlType::IQ4_NL => {
            let n = ty.info().block_bytes;
            let blk = &row[b * n..(b + 1) * n];
            for j in 0..16 {
                q[j] = IQ4_VALUES[(blk[2 + j] & 0xF) as usize];
                q[j + 16] = IQ4_VALUES[(blk[2 + j] >> 4) as usize];
            }
            (f16_at(blk, 0), 0.0)
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let five = ty == GgmlType::Q5_K;
            let bytes = ty.info().block_bytes;
            let blk = &row[(b / 8) * bytes..(b / 8 + 1) * bytes];
            let sub = b % 8;
            let (g, upper) = (sub / 2, sub % 2 == 1);
            let qs_at = if five { 48 } else { 16 };
            let (sc, mn) = scale_min_k4(sub, &blk[4..16]);
            let mask = if upper {
                2u8 << (2 * g)
            } else {
                1u8 << (2 * g)
            };
            for l in 0..32 {
                let v = blk[qs_at + 32 * g + l];
                let low = if upper { v >> 4 } else { v & 0xF };
                let high = if five && blk[16 + l] & mask != 0 {
                    16
                } else {
                    0
                };
                q[l] = (low + high) as i8;
            }
            (f16_at(blk, 0) * sc as f32, -(f16_at(blk, 2) * mn as f32))
        }
        GgmlType::IQ4_XS => {
            let n = ty.info().block_bytes;
            let blk = &row[(b / 8) * n..(b / 8 + 1) * n];
            let ib = b % 8;
            let scales_h = u16::from_le_bytes([blk[2], blk[3]]);
            let low = (blk[4 + ib / 2] >> (4 * (ib % 2))) & 0xF;
            let high = ((scales_h >> (2 * ib)) & 3) as u8;
            let qs = &blk[8 + 16 * ib..8 + 16 * ib + 16];
            for j in 0..16 {
                q[j] = IQ4_VALUES[(qs[j] & 0xF) as usize];
                q[j + 16] = IQ4_VALUES[(qs[j] >> 4) as usize];
            }
            (
                f16_at(blk, 0) * ((low | (high << 4)) as i32 - 32) as f32,
                0.0,
            )
        }
        other => panic!("no integer GEMM for {other:?}"),
    }
}

/// Quantized activations, one row per input row, unpacked for the kernels.
pub struct Activations {
    pub k: usize,
    /// int8 values, `[m][k]`.
    pub q: Vec<i8>,
    /// Scale of each 32-element block, `[m][k / 32]`.
    pub scale: Vec<f32>,
    /// scale * sum of the block's integers (for weight offsets).
    pub scaled_sum: Vec<f32>,
    /// 128 * sum of the block's integers (the kernels' unsigned-weight correction).
    pub bias: Vec<i32>,
}

impl Activations {
    /// `x [m, k]` quantized as ggml quantizes activations for weights of type `ty`.
    pub fn quantize(x: &[f32], k: usize, ty: GgmlType) -> Activations {
        Activations::quantize_as(x, k, activation_type(ty))
    }

    /// `x [m, k]` quantized to `via` (Q8_0 or Q8_K).
    fn quantize_as(x: &[f32], k: usize, via: GgmlType) -> Activations {
        let m = x.len() / k;
        let nb = k / 32;
        let info = via.info();
        let mut a = Activations {
            k,
            q: vec![0; m * k],
            scale: vec![0.0; m * nb],
            scaled_sum: vec![0.0; m * nb],
            bias: vec![0; m * nb],
        };
        let isa = crate::quant::Isa::best();
        a.q.par_chunks_mut(k)
            .zip(a.scale.par_chunks_mut(nb))
            .zip(a.scaled_sum.par_chunks_mut(nb))
            .zip(a.bias.par_chunks_mut(nb))
            .zip(x.par_chunks(k))
            .for_each(|((((q, scale), ssum), bias), x)| {
                let mut bytes = vec![0u8; info.row_bytes(k)];
                (info.quantize_row)(x, None, &mut bytes, isa);
                for b in 0..nb {
                    let (d, vals) = match via {
                        // block_q8_K: f32 d, int8 qs[256], int16 bsums[16]
                        GgmlType::Q8_K => {
                            let sb = &bytes[(b / 8) * 292..];
                            let d = f32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
                            (d, &sb[4 + 32 * (b % 8)..4 + 32 * (b % 8) + 32])
                        }
                        _ => (f16_at(&bytes, b * 34), &bytes[b * 34 + 2..b * 34 + 34]),
                    };
                    let mut sum = 0i32;
                    for (j, &v) in vals.iter().enumerate() {
                        q[b * 32 + j] = v as i8;
                        sum += v as i8 as i32;
                    }
                    scale[b] = d;
                    ssum[b] = d * sum as f32;
                    bias[b] = 128 * sum;
                }
            });
        a
    }

    pub fn rows(&self) -> usize {
        self.q.len() / self.k
    }
}

/// One panel of up to 32 weight rows, repacked: for each block and each group of 4 columns,
/// 32 lanes x 4 bytes (q + 128, unsigned), then the per-block scales and offsets per lane.
pub struct Panel {
    pub bytes: Vec<u8>,
    pub scale: Vec<f32>,
    pub offset: Vec<f32>,
    pub has_offset: bool,
}

pub fn pack_panel(ty: GgmlType, rows: &[&[u8]], k: usize) -> Panel {
    let nb = k / 32;
    let mut p = Panel {
        bytes: vec![128u8; nb * 8 * PANEL * 4],
        scale: vec![0.0; nb * PANEL],
        offset: vec![0.0; nb * PANEL],
        has_offset: false,
    };
    let mut q = [0i8; 32];
    for (lane, row) in rows.iter().enumerate() {
        for b in 0..nb {
            let (s, o) = unpack_block(ty, row, b, &mut q);
            p.scale[b * PANEL + lane] = s;
            p.offset[b * PANEL + lane] = o;
            p.has_offset |= o != 0.0;
            for k4 in 0..8 {
                let at = ((b * 8 + k4) * PANEL + lane) * 4;
                for t in 0..4 {
                    p.bytes[at + t] = (q[4 * k4 + t] as i16 + 128) as u8;
                }
            }
        }
    }
    p
}

/// Scalar reference of the panel kernel: `out[r * stride + lane]` for every activation row.
pub fn panel_scalar(a: &Activations, p: &Panel, lanes: usize, out: &mut [f32], stride: usize) {
    let nb = a.k / 32;
    for r in 0..a.rows() {
        for lane in 0..lanes {
            let mut acc = 0f32;
            for b in 0..nb {
                let mut dot = 0i32;
                for k4 in 0..8 {
                    let at = ((b * 8 + k4) * PANEL + lane) * 4;
                    for t in 0..4 {
                        dot += p.bytes[at + t] as i32 * a.q[r * a.k + b * 32 + 4 * k4 + t] as i32;
                    }
                }
                let dot = dot - a.bias[r * nb + b];
                acc += dot as f32 * (p.scale[b * PANEL + lane] * a.scale[r * nb + b]);
                acc += p.offset[b * PANEL + lane] * a.scaled_sum[r * nb + b];
            }
            out[r * stride + lane] = acc;
        }
    }
}

/// The panel kernel this machine runs, if any. `QUANTFIT_EVAL_GEMM=f32` turns the integer
/// GEMM off, so the f32 path that other CPUs take can be run and compared anywhere.
#[cfg(target_arch = "x86_64")]
fn kernel() -> Option<x86::PanelFn> {
    if std::env::var("QUANTFIT_EVAL_GEMM").is_ok_and(|v| v == "f32") {
        return None;
    }
    x86::kernel().map(|(_, f)| f)
}

/// Whether this machine runs the integer GEMM.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        kernel().is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `x [m, k]` times the transposed weight `[n, k]`; None when this machine or type has no
/// integer kernel.
pub fn matmul(ty: GgmlType, weight: &[u8], n: usize, k: usize, x: &[f32]) -> Option<Vec<f32>> {
    matmul_many(&[Part { ty, weight, n }], k, x).map(|mut outs| outs.pop().expect("one part"))
}

/// Several weights on the same activations (Q, K and V; gate and up): the activations are
/// quantized once per activation type and every panel of every weight is one parallel task.
/// None unless every weight has an integer kernel here.
pub fn matmul_many(parts: &[Part], k: usize, x: &[f32]) -> Option<Vec<Vec<f32>>> {
    #[cfg(not(target_arch = "x86_64"))]
    return None;
    #[cfg(target_arch = "x86_64")]
    {
        let panel_kernel = kernel()?;
        let usable = |p: &Part| supported(p.ty) && k.is_multiple_of(p.ty.info().block_elems);
        if !parts.iter().all(usable) {
            return None;
        }
        Some(run_panels(panel_kernel, parts, k, x))
    }
}

/// Every panel of every part through `panel_kernel`.
#[cfg(target_arch = "x86_64")]
fn run_panels(panel_kernel: x86::PanelFn, parts: &[Part], k: usize, x: &[f32]) -> Vec<Vec<f32>> {
    let m = x.len() / k;
    let mut acts: Vec<(GgmlType, Activations)> = Vec::new();
    for p in parts {
        let via = activation_type(p.ty);
        if !acts.iter().any(|(have, _)| *have == via) {
            acts.push((via, Activations::quantize_as(x, k, via)));
        }
    }
    let mut outs: Vec<Vec<f32>> = parts.iter().map(|p| vec![0f32; m * p.n]).collect();
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let tasks: Vec<(usize, usize)> = parts
        .iter()
        .enumerate()
        .flat_map(|(pi, p)| (0..p.n.div_ceil(PANEL)).map(move |panel| (pi, panel)))
        .collect();
    let (ptrs, acts) = (&ptrs, &acts);
    tasks.into_par_iter().for_each(|(pi, panel)| {
        let p = &parts[pi];
        let via = activation_type(p.ty);
        let (_, a) = acts
            .iter()
            .find(|(have, _)| *have == via)
            .expect("quantized above");
        let row_bytes = p.ty.info().row_bytes(k);
        let first = panel * PANEL;
        let lanes = PANEL.min(p.n - first);
        let rows: Vec<&[u8]> = (first..first + lanes)
            .map(|j| &p.weight[j * row_bytes..(j + 1) * row_bytes])
            .collect();
        let packed = pack_panel(p.ty, &rows, k);
        // SAFETY: panels write disjoint columns first..first + lanes of every output row of
        // their own part, inside its m * n outputs; the kernel came from `x86::kernel`, which
        // hands out only what this CPU runs.
        unsafe {
            let dst = ptrs[pi].0.add(first);
            panel_kernel(a, &packed, lanes, dst, p.n);
        }
    });
    outs
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::eval::test_values as lcg;

    const TYPES: [GgmlType; 9] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::IQ4_NL,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::IQ4_XS,
    ];

    #[test]
    fn unpacked_blocks_reproduce_the_dequantizers() {
        let k = 512;
        let w = lcg(3 * k, 5);
        for ty in TYPES {
            let q = crate::quant::quantize(ty, &w, k, None).unwrap();
            let want = crate::quant::dequantize(ty, &q, k).unwrap();
            let row_bytes = ty.info().row_bytes(k);
            for r in 0..3 {
                let row = &q[r * row_bytes..(r + 1) * row_bytes];
                let mut ints = [0i8; 32];
                for b in 0..k / 32 {
                    let (s, o) = unpack_block(ty, row, b, &mut ints);
                    for j in 0..32 {
                        let got = s * ints[j] as f32 + o;
                        let w = want[r * k + b * 32 + j];
                        assert!(
                            (got - w).abs() <= 1e-6 * w.abs().max(1e-3),
                            "{ty:?} {got} {w}"
                        );
                    }
                }
            }
        }
    }

    /// Kernel and scalar reference against f64 products of the dequantized weights and the
    /// rounded activations, for row counts that exercise the 4-row tiles and the tail.
    #[test]
    fn integer_gemm_matches_dequantized_products() {
        let (n, k) = (45, 512);
        let w = lcg(n * k, 9);
        for m in [1usize, 4, 7] {
            let x = lcg(m * k, 13 + m as u32);
            for ty in TYPES {
                let q = crate::quant::quantize(ty, &w, k, None).unwrap();
                let wd = crate::quant::dequantize(ty, &q, k).unwrap();
                let acts = Activations::quantize(&x, k, ty);
                let xd: Vec<f64> = (0..m * k)
                    .map(|i| (acts.scale[i / 32] * acts.q[i] as f32) as f64)
                    .collect();
                let want: Vec<f64> = (0..m * n)
                    .map(|i| {
                        let (r, j) = (i / n, i % n);
                        (0..k).map(|c| wd[j * k + c] as f64 * xd[r * k + c]).sum()
                    })
                    .collect();
                let row_bytes = ty.info().row_bytes(k);
                let mut scalar = vec![0f32; m * n];
                for first in (0..n).step_by(PANEL) {
                    let lanes = PANEL.min(n - first);
                    let rows: Vec<&[u8]> = (first..first + lanes)
                        .map(|j| &q[j * row_bytes..(j + 1) * row_bytes])
                        .collect();
                    let p = pack_panel(ty, &rows, k);
                    panel_scalar(&acts, &p, lanes, &mut scalar[first..], n);
                }
                let mut kernels: Vec<(&str, Vec<f32>)> = Vec::new();
                #[cfg(target_arch = "x86_64")]
                for (name, f) in x86::variants() {
                    kernels.push((
                        name,
                        run_panels(f, &[Part { ty, weight: &q, n }], k, &x).remove(0),
                    ));
                }
                if m == 1 && ty == TYPES[0] {
                    let names: Vec<&str> = kernels.iter().map(|(name, _)| *name).collect();
                    if !names.contains(&"avx512vnni") {
                        crate::testing::skipped(
                            "eval::gemm::integer_gemm_matches_dequantized_products",
                            &format!(
                                "the AVX-512 VNNI panel kernel needs avx512f, avx512bw and avx512vnni, which this CPU lacks: checked the scalar panel and {names:?}"
                            ),
                        );
                    }
                }
                for i in 0..m * n {
                    let tol = 1e-4 * want[i].abs().max(1.0);
                    assert!(
                        (scalar[i] as f64 - want[i]).abs() < tol,
                        "{ty:?} m={m} scalar"
                    );
                    for (name, got) in &kernels {
                        assert!(
                            (got[i] as f64 - want[i]).abs() < tol,
                            "{ty:?} m={m} {name} {} {}",
                            got[i],
                            want[i]
                        );
                    }
                }
                // Exact integer block sums and the same f32 operations: every kernel gives
                // the same bits, so results do not depend on which CPU ran them.
                for (name, got) in kernels.iter().skip(1) {
                    assert_eq!(
                        got, &kernels[0].1,
                        "{ty:?} m={m} {name} vs {}",
                        kernels[0].0
                    );
                }
            }
        }
    }

    /// The extreme integers (weights of -128, which a Q8_0 file may hold, against activations
    /// of +-127) must not saturate any kernel's 16-bit pair sums.
    #[test]
    fn extreme_integers_do_not_saturate() {
        let k = 64;
        let one = crate::quant::fp16::f32_to_f16_bits(1.0).to_le_bytes();
        let mut row = Vec::new();
        for fill in [0x80u8, 0x7f] {
            row.extend_from_slice(&one);
            row.extend(std::iter::repeat_n(fill, 32));
        }
        let p = pack_panel(GgmlType::Q8_0, &[&row], k);
        for sign in [1i8, -1] {
            let q = vec![127 * sign; k];
            let a = Activations {
                k,
                q,
                scale: vec![1.0; 2],
                scaled_sum: vec![32.0 * 127.0 * sign as f32; 2],
                bias: vec![128 * 32 * 127 * sign as i32; 2],
            };
            let want = sign as f32 * 127.0 * 32.0 * (-128.0 + 127.0);
            let mut scalar = [0f32; 1];
            panel_scalar(&a, &p, 1, &mut scalar, 1);
            assert_eq!(scalar[0], want);
            #[cfg(target_arch = "x86_64")]
            for (name, f) in x86::variants() {
                let mut got = [0f32; 1];
                // SAFETY: one activation row, one lane: one write into `got`.
                unsafe { f(&a, &p, 1, got.as_mut_ptr(), 1) };
                assert_eq!(got[0], want, "{name}");
            }
        }
    }

    /// Weights of different formats in one call (sharing Q8_0 and Q8_K activations) give
    /// what each gives alone.
    #[test]
    fn fused_products_equal_separate_ones() {
        let (k, m) = (512, 9);
        let x = lcg(m * k, 21);
        let quantized: Vec<(GgmlType, usize, Vec<u8>)> = [
            (GgmlType::Q5_0, 40),
            (GgmlType::Q4_K, 33),
            (GgmlType::Q8_0, 64),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (ty, n))| {
            let w = lcg(n * k, 30 + i as u32);
            (ty, n, crate::quant::quantize(ty, &w, k, None).unwrap())
        })
        .collect();
        let parts: Vec<Part> = quantized
            .iter()
            .map(|(ty, n, q)| Part {
                ty: *ty,
                weight: q,
                n: *n,
            })
            .collect();
        let fused = matmul_many(&parts, k, &x);
        assert_eq!(
            fused.is_some(),
            available(),
            "fused products where the kernel runs"
        );
        for (i, p) in parts.iter().enumerate() {
            let alone = matmul(p.ty, p.weight, p.n, k, &x);
            assert_eq!(fused.as_ref().map(|f| &f[i]), alone.as_ref(), "{:?}", p.ty);
        }
    }
}
