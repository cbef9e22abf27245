//! Dot products of quantized weight rows with Q8_0-quantized activations, for generation
//! (one or a few activation rows): each weight byte is read once, straight from the GGUF
//! mapping, as ggml's `vec_dot_*_q8_0` kernels do (ggml-cpu/arch/x86/quants.c). A scalar
//! reference first; x86 AVX2 versions (runtime-selected) in `x86.rs` give the same integer
//! block sums and differ only in float summation order. k-quants use candle's kernels on
//! Q8_K activations; other formats are dequantized a row at a time and dotted in f32 with
//! activations rounded as ggml rounds them. `Prepared` quantizes one activation row once for
//! all the weights it meets; `Prepared::dot_rows` is what both the rayon products here and
//! the single-token decoding team (`eval::decode`) call.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, GgmlType as _,
};
use rayon::prelude::*;

use crate::quant::fp16::f16_bits_to_f32;
use crate::quant::table::Kernel;
use crate::quant::{BlockFormat as _, GgmlType};

/// 32-element formats with a fused kernel on Q8_0 activations (the format table's `Block32`).
fn legacy(ty: GgmlType) -> bool {
    ty.info().kernel == Kernel::Block32
}

/// k-quants use candle's `vec_dot` kernels (runtime-selected AVX2) on the mapped bytes, with
/// Q8_K activations, inside this module's own parallel pass (the table's `KQuant`).
fn is_kquant(ty: GgmlType) -> bool {
    ty.info().kernel == Kernel::KQuant
}

/// `bytes` as blocks of `T`, which must be a `#[repr(C)]` block of exactly `bytes_per_block`
/// bytes with alignment the slice satisfies.
fn as_blocks<T>(bytes: &[u8], bytes_per_block: usize) -> &[T] {
    assert_eq!(std::mem::size_of::<T>(), bytes_per_block, "block layout");
    assert_eq!(bytes.len() % bytes_per_block, 0);
    assert_eq!(
        bytes.as_ptr() as usize % std::mem::align_of::<T>(),
        0,
        "block alignment"
    );
    // SAFETY: size, length and alignment checked; the block types are plain old data.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / bytes_per_block) }
}

fn kquant_dot(ty: GgmlType, w: &[u8], acts: &[BlockQ8K], k: usize) -> f32 {
    let bytes = ty.info().block_bytes;
    match ty {
        GgmlType::Q2_K => BlockQ2K::vec_dot(k, as_blocks(w, bytes), acts),
        GgmlType::Q3_K => BlockQ3K::vec_dot(k, as_blocks(w, bytes), acts),
        GgmlType::Q4_K => BlockQ4K::vec_dot(k, as_blocks(w, bytes), acts),
        GgmlType::Q5_K => BlockQ5K::vec_dot(k, as_blocks(w, bytes), acts),
        GgmlType::Q6_K => BlockQ6K::vec_dot(k, as_blocks(w, bytes), acts),
        other => unreachable!("{other:?} is not a k-quant"),
    }
}

/// Bytes of one Q8_0 block: f16 scale, 32 signed bytes (the format table's size).
pub const Q8_0_BLOCK: usize = crate::quant::legacy::Q8_0::BLOCK_BYTES;
/// Bytes of one Q8_K block (candle's `BlockQ8K`, ggml's block_q8_K): f32 scale, 256 signed
/// bytes, 16 i16 sums.
pub const Q8K_BLOCK: usize = crate::quant::kquants::Q8K::BLOCK_BYTES;

/// One Q8_0-quantized activation row as the kernels read it.
#[derive(Clone, Copy)]
pub struct Q8Row<'a> {
    /// ggml's block_q8_0 layout: f16 d, 32 signed bytes, per block.
    pub blocks: &'a [u8],
    /// d of each block, as f32 (converted once per row instead of once per weight row).
    pub scales: &'a [f32],
    /// d x the sum of each block's integers: the Q4_1/Q5_1 minimums multiply it.
    pub sums: &'a [f32],
    /// The sum of each block's integers: the Q4_0/Q5_0 level offsets (-8, -16) multiply it
    /// in the integer domain.
    pub int_sums: &'a [i32],
}

/// (weight row, activation row, blocks) -> dot.
type DotFn = fn(&[u8], Q8Row, usize) -> f32;

fn kernel(ty: GgmlType) -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if let Some(f) = x86::kernel(ty) {
        return f;
    }
    scalar::kernel(ty)
}

/// (IQ4_XS weight row, Q8_K activation bytes, superblocks) -> dot.
type SuperDotFn = fn(&[u8], &[u8], usize) -> f32;

fn iq4_xs_kernel() -> SuperDotFn {
    #[cfg(target_arch = "x86_64")]
    if let Some(f) = x86::iq4_xs_kernel() {
        return f;
    }
    scalar::iq4_xs
}

/// Q8_K blocks as their bytes (ggml's block_q8_K layout; candle's type is `repr(C)`).
fn q8k_bytes(blocks: &[BlockQ8K]) -> &[u8] {
    assert_eq!(
        std::mem::size_of::<BlockQ8K>(),
        Q8K_BLOCK,
        "block_q8_K layout"
    );
    // SAFETY: plain old data of exactly Q8K_BLOCK bytes per block, checked above.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, blocks.len() * Q8K_BLOCK) }
}

/// One weight of a fused product: format, bytes of the `[n, k]` matrix, rows `n`.
pub struct Part<'a> {
    pub ty: GgmlType,
    pub weight: &'a [u8],
    pub n: usize,
}

/// `out[r * n + j] = dot(weight row j, activation row r)` for `m` activation rows of `k`
/// values, the weight `[n, k]` in format `ty`.
pub fn matmul(ty: GgmlType, weight: &[u8], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
    matmul_many(&[Part { ty, weight, n }], k, x, m)
        .pop()
        .expect("one part in, one out")
}

struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// How ggml rounds activations before they meet a weight: to the weight type's
/// `vec_dot_type` (ggml-cpu.c type_traits_cpu): Q8_0 for the 32-element formats (Q8_1 for
/// Q4_1/Q5_1, the same values), Q8_K for the k-quants and IQ4_XS, F16/BF16 for those
/// weights, nothing for F32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    None,
    F16,
    BF16,
    Q8_0,
    Q8K,
}

impl Rounding {
    pub fn for_weight(weight: GgmlType) -> Rounding {
        match weight.info().vec_dot_type {
            GgmlType::F32 => Rounding::None,
            GgmlType::F16 => Rounding::F16,
            GgmlType::BF16 => Rounding::BF16,
            GgmlType::Q8_0 => Rounding::Q8_0,
            GgmlType::Q8_K => Rounding::Q8K,
            other => unreachable!("vec_dot_type {other} is not an activation format"),
        }
    }

    /// The 8-bit block format of a quantizing rounding.
    pub fn quantized_type(self) -> Option<GgmlType> {
        match self {
            Rounding::Q8_0 => Some(GgmlType::Q8_0),
            Rounding::Q8K => Some(GgmlType::Q8_K),
            Rounding::None | Rounding::F16 | Rounding::BF16 => None,
        }
    }

    /// Rounds one activation row in place.
    pub fn apply(self, row: &mut [f32]) {
        use crate::quant::fp16::*;
        match self {
            Rounding::None => return,
            Rounding::F16 => {
                row.iter_mut()
                    .for_each(|v| *v = f16_bits_to_f32(f32_to_f16_bits(*v)));
                return;
            }
            Rounding::BF16 => {
                row.iter_mut()
                    .for_each(|v| *v = bf16_bits_to_f32(f32_to_bf16_bits(*v)));
                return;
            }
            Rounding::Q8_0 | Rounding::Q8K => {}
        }
        let info = self.quantized_type().expect("a quantizing rounding").info();
        if !row.len().is_multiple_of(info.block_elems) {
            return;
        }
        let mut q = vec![0u8; info.row_bytes(row.len())];
        (info.quantize_row)(row, None, &mut q, crate::quant::Isa::best());
        (info.dequantize_row)(&q, row);
    }
}

/// How a weight row meets the activations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// A fused kernel on Q8_0 activations.
    Legacy,
    /// candle's k-quant kernel on Q8_K activations.
    KQuant,
    /// IQ4_XS on Q8_K activations.
    Iq4Xs,
    /// The row dequantized to f32, dotted with activations rounded as ggml rounds them.
    Dequantized(Rounding),
}

fn path(ty: GgmlType, k: usize) -> Path {
    if is_kquant(ty) && k.is_multiple_of(crate::quant::QK_K) {
        Path::KQuant
    } else if ty.info().kernel == Kernel::Iq4Xs && k.is_multiple_of(crate::quant::QK_K) {
        Path::Iq4Xs
    } else if legacy(ty) {
        Path::Legacy
    } else {
        Path::Dequantized(Rounding::for_weight(ty))
    }
}

/// A weight matrix `[rows, cols]` as the row kernels read it.
#[derive(Clone, Copy)]
pub enum WeightView<'a> {
    Quantized { ty: GgmlType, bytes: &'a [u8] },
    Dense(&'a [f32]),
}

/// One activation row in every form that the weights it meets need, computed once and
/// shared by all of their rows.
#[derive(Default)]
pub struct Prepared {
    k: usize,
    q8_0: Vec<u8>,
    /// Per Q8_0 block: d, d x the sum of the integers, the sum of the integers.
    scales: Vec<f32>,
    sums: Vec<f32>,
    int_sums: Vec<i32>,
    q8k: Vec<BlockQ8K>,
    plain: Vec<f32>,
    rounded: Vec<(Rounding, Vec<f32>)>,
}

impl Prepared {
    /// Prepares `x` for weights of the given views (of `x.len()` columns).
    pub fn prepare(&mut self, x: &[f32], weights: &[WeightView]) {
        let k = x.len();
        self.k = k;
        self.rounded.clear();
        self.plain.clear();
        let mut legacy = false;
        let mut kquant = false;
        for w in weights {
            match *w {
                WeightView::Dense(_) => {
                    if self.plain.is_empty() {
                        self.plain.extend_from_slice(x);
                    }
                }
                WeightView::Quantized { ty, .. } => match path(ty, k) {
                    Path::Legacy => legacy = true,
                    Path::KQuant | Path::Iq4Xs => kquant = true,
                    Path::Dequantized(r) => {
                        if !self.rounded.iter().any(|(have, _)| *have == r) {
                            let mut v = x.to_vec();
                            r.apply(&mut v);
                            self.rounded.push((r, v));
                        }
                    }
                },
            }
        }
        if legacy {
            let q8 = GgmlType::Q8_0.info();
            self.q8_0.resize(q8.row_bytes(k), 0);
            (q8.quantize_row)(x, None, &mut self.q8_0, crate::quant::Isa::best());
            self.scales.clear();
            self.sums.clear();
            self.int_sums.clear();
            for block in self.q8_0.chunks(Q8_0_BLOCK) {
                let total: i32 = block[2..].iter().map(|&v| v as i8 as i32).sum();
                let d = f16_at(block, 0);
                self.scales.push(d);
                self.sums.push(d * total as f32);
                self.int_sums.push(total);
            }
        }
        if kquant {
            let blocks = k / crate::quant::QK_K;
            self.q8k.resize_with(blocks, BlockQ8K::zeros);
            BlockQ8K::from_float(x, &mut self.q8k);
        }
    }

    fn q8_row(&self) -> Q8Row<'_> {
        Q8Row {
            blocks: &self.q8_0,
            scales: &self.scales,
            sums: &self.sums,
            int_sums: &self.int_sums,
        }
    }

    /// Rows `first..first + out.len()` of `w` dotted with the prepared activations;
    /// `scratch` holds a dequantized row where the format has no fused kernel.
    pub fn dot_rows(&self, w: WeightView, first: usize, out: &mut [f32], scratch: &mut Vec<f32>) {
        let k = self.k;
        let rows = first..first + out.len();
        match w {
            WeightView::Dense(data) => {
                for (o, j) in out.iter_mut().zip(rows) {
                    *o = dot_f32(&data[j * k..(j + 1) * k], &self.plain);
                }
            }
            WeightView::Quantized { ty, bytes } => {
                let row_bytes = ty.info().row_bytes(k);
                let weight_rows = bytes[first * row_bytes..rows.end * row_bytes].chunks(row_bytes);
                match path(ty, k) {
                    Path::Legacy => {
                        let dot = kernel(ty);
                        for (o, row) in out.iter_mut().zip(weight_rows) {
                            *o = dot(row, self.q8_row(), k / 32);
                        }
                    }
                    Path::KQuant => {
                        for (o, row) in out.iter_mut().zip(weight_rows) {
                            *o = kquant_dot(ty, row, &self.q8k, k);
                        }
                    }
                    Path::Iq4Xs => {
                        let dot = iq4_xs_kernel();
                        let acts = q8k_bytes(&self.q8k);
                        for (o, row) in out.iter_mut().zip(weight_rows) {
                            *o = dot(row, acts, k / crate::quant::QK_K);
                        }
                    }
                    Path::Dequantized(r) => {
                        let (_, x) = self
                            .rounded
                            .iter()
                            .find(|(have, _)| *have == r)
                            .expect("prepared for this weight");
                        scratch.resize(k, 0.0);
                        let dequantize = ty.info().dequantize_row;
                        for (o, row) in out.iter_mut().zip(weight_rows) {
                            dequantize(row, scratch);
                            *o = dot_f32(scratch, x);
                        }
                    }
                }
            }
        }
    }
}

/// An f32 dot product in 16 independent lanes, which the compiler vectorizes.
#[inline(always)]
fn dot_f32_body(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_body(a, b)
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { dot_f32_avx2(a, b) };
    }
    dot_f32_body(a, b)
}

/// Several weights applied to the same activations (Q, K and V; gate and up) in one parallel
/// pass: the activations are prepared once and the threads fork and join once.
pub fn matmul_many(parts: &[Part], k: usize, x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let views: Vec<WeightView> = parts
        .iter()
        .map(|p| WeightView::Quantized {
            ty: p.ty,
            bytes: p.weight,
        })
        .collect();
    let prepared: Vec<Prepared> = x
        .chunks(k)
        .map(|row| {
            let mut p = Prepared::default();
            p.prepare(row, &views);
            p
        })
        .collect();
    // Outputs stored activation-row-major ([m][n]); every task owns whole rows of one part.
    let mut outs: Vec<Vec<f32>> = parts.iter().map(|p| vec![0f32; p.n * m]).collect();
    const ROWS: usize = 16;
    let mut tasks = Vec::new();
    for (pi, p) in parts.iter().enumerate() {
        for first in (0..p.n).step_by(ROWS) {
            tasks.push((pi, first, ROWS.min(p.n - first)));
        }
    }
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let (ptrs, prepared, views) = (&ptrs, &prepared, &views);
    tasks.par_iter().for_each(|&(pi, first, rows)| {
        let mut scratch = Vec::new();
        for (r, acts) in prepared.iter().enumerate() {
            // SAFETY: tasks cover disjoint weight rows, so disjoint [r][first..first + rows]
            // slices of part `pi`'s output.
            let out = unsafe {
                std::slice::from_raw_parts_mut(ptrs[pi].0.add(r * parts[pi].n + first), rows)
            };
            acts.dot_rows(views[pi], first, out, &mut scratch);
        }
    });
    outs
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::eval::test_values as lcg;

    /// Every kernel against the dequantized weights times the Q8_0-rounded activations.
    #[test]
    fn kernels_match_dequantized_products() {
        #[cfg(target_arch = "x86_64")]
        if !x86::has_avx2() {
            crate::testing::skipped(
                "eval::dot::kernels_match_dequantized_products",
                "the x86 kernels need avx2, fma and f16c, which this CPU lacks: only the scalar kernels were checked",
            );
        } else if !x86::has_vnni() {
            crate::testing::skipped(
                "eval::dot::kernels_match_dequantized_products",
                "the AVX-512 VNNI kernels need avx512vnni, avx512vl and avx512bw, which this CPU lacks: only the scalar and AVX2 kernels were checked",
            );
        }
        // 9 blocks of 32 exercise the odd block after the kernels' pairs of accumulators.
        for k in [256, 288] {
            kernels_match_at(k);
        }
    }

    fn kernels_match_at(k: usize) {
        let (n, m) = (37, 3);
        let w = lcg(n * k, 7);
        let x = lcg(m * k, 11);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::IQ4_NL,
            GgmlType::IQ4_XS,
        ] {
            if !k.is_multiple_of(ty.info().block_elems) {
                continue;
            }
            let act_ty = ty.info().vec_dot_type;
            let info = ty.info();
            let mut q = vec![0u8; n * info.row_bytes(k)];
            crate::quant::quantize_into(ty, &w, k, None, Default::default(), &mut q).unwrap();
            let wd = crate::quant::dequantize(ty, &q, k).unwrap();
            let q8 = act_ty.info();
            let mut xq = vec![0u8; q8.row_bytes(k)];
            let mut xd = vec![0f32; m * k];
            for (src, dst) in x.chunks(k).zip(xd.chunks_mut(k)) {
                (q8.quantize_row)(src, None, &mut xq, crate::quant::Isa::SCALAR);
                (q8.dequantize_row)(&xq, dst);
            }
            let got = matmul(ty, &q, n, k, &x, m);
            let mut iq4_xs_kernels: Vec<SuperDotFn> = Vec::new();
            if ty == GgmlType::IQ4_XS {
                iq4_xs_kernels.push(scalar::iq4_xs);
                #[cfg(target_arch = "x86_64")]
                iq4_xs_kernels.extend(x86::iq4_xs_variants());
            }
            let legacy_kernels: Vec<DotFn> = if !legacy(ty) {
                Vec::new()
            } else {
                let mut v = vec![scalar::kernel(ty)];
                #[cfg(target_arch = "x86_64")]
                v.extend(x86::variants(ty));
                v
            };
            for r in 0..m {
                let mut prepared = Prepared::default();
                let view = WeightView::Quantized { ty, bytes: &q };
                prepared.prepare(&x[r * k..(r + 1) * k], &[view]);
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| wd[j * k + i] as f64 * xd[r * k + i] as f64)
                        .sum();
                    let g = got[r * n + j] as f64;
                    assert!((g - want).abs() < 1e-4, "{ty:?} ({r},{j}): {g} vs {want}");
                    let row = &q[j * info.row_bytes(k)..(j + 1) * info.row_bytes(k)];
                    for (variant, f) in iq4_xs_kernels.iter().enumerate() {
                        let v = f(row, q8k_bytes(&prepared.q8k), k / crate::quant::QK_K) as f64;
                        assert!(
                            (v - want).abs() < 1e-4,
                            "{ty:?} kernel variant {variant} ({r},{j}): {v} vs {want}"
                        );
                    }
                    for (variant, f) in legacy_kernels.iter().enumerate() {
                        let v = f(row, prepared.q8_row(), k / 32) as f64;
                        assert!(
                            (v - want).abs() < 1e-4,
                            "{ty:?} kernel variant {variant} ({r},{j}): {v} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
