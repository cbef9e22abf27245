//! Matrix products with weights that stay quantized in memory.
//!
//! One or a few rows go through the row kernels of `dot`: activations are quantized to
//! Q8_0/Q8_K and dotted with the weight blocks, reading each weight byte once, as ggml's CPU
//! backend does. (Generation of single tokens goes through `decode`, on the same kernels.)
//! Many rows (prompt processing, perplexity) go through the integer GEMM of `gemm` where the
//! format has one, else through an f32 GEMM on weights dequantized one panel of rows at a time: the dequantization is paid once per
//! panel and shared by every activation row, the panel stays in cache, and the arithmetic runs
//! at f32 GEMM speed. This is the strategy of llama.cpp's CUDA backend for large batches
//! (dequantize, then a float GEMM), and its results differ from the Q8-activation path only
//! by activation rounding (well under 0.1% in perplexity on the SmolLM2 fixture).

use std::sync::Arc;

use anyhow::Result;
use candle_core::{Device, Storage, StorageRef, Tensor};
use rayon::prelude::*;

use crate::gguf::reader::GgufFile;
use crate::quant::GgmlType;

/// Rows from which the dequantize-and-GEMM path beats the quantized dot products.
const BATCH_ROWS: usize = 8;
/// f32 elements of a dequantized panel (8 MiB): big enough for GEMM efficiency, small enough
/// to stay in the last-level cache.
const PANEL_ELEMS: usize = 2 << 20;

pub struct Linear {
    /// Output features (weight rows).
    pub rows: usize,
    /// Input features (weight columns).
    pub cols: usize,
    kind: Kind,
}

enum Kind {
    Dense(Tensor),
    Quantized {
        file: Arc<GgufFile>,
        index: usize,
        ty: GgmlType,
        /// Where the matrix starts in the tensor's bytes (one expert of a stacked tensor).
        offset: usize,
    },
}

impl Linear {
    /// An f32 `[rows, cols]` weight.
    pub fn dense(weight: Tensor) -> Result<Linear> {
        let (rows, cols) = weight.dims2()?;
        Ok(Linear {
            rows,
            cols,
            kind: Kind::Dense(weight),
        })
    }

    /// A GGUF matrix, read in place from the mapped file.
    pub fn quantized(file: Arc<GgufFile>, index: usize, ty: GgmlType) -> Linear {
        Self::quantized_expert(file, index, ty, 0)
    }

    /// Matrix `expert` of a stacked `[cols, rows, experts]` GGUF tensor (expert 0 of a
    /// plain matrix), read in place: the experts' rows follow one another.
    pub fn quantized_expert(
        file: Arc<GgufFile>,
        index: usize,
        ty: GgmlType,
        expert: usize,
    ) -> Linear {
        let dims = &file.tensors[index].dims;
        let (rows, cols) = (dims[1] as usize, dims[0] as usize);
        Linear {
            rows,
            cols,
            kind: Kind::Quantized {
                file,
                index,
                ty,
                offset: expert * rows * ty.info().row_bytes(cols),
            },
        }
    }

    /// The quantized weight's bytes, None for a dense one.
    fn weight_bytes(&self) -> Option<(GgmlType, &[u8])> {
        match &self.kind {
            Kind::Dense(_) => None,
            Kind::Quantized {
                file,
                index,
                ty,
                offset,
            } => {
                let data = file.tensor_data(&file.tensors[*index]);
                let len = self.rows * ty.info().row_bytes(self.cols);
                Some((*ty, &data[*offset..*offset + len]))
            }
        }
    }

    /// `x [m, cols]` (row-major) times the transposed weight: `[m, rows]`.
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        let m = x.len() / self.cols;
        match &self.kind {
            Kind::Dense(w) => {
                let x = Tensor::from_slice(x, (m, self.cols), &Device::Cpu)?;
                Ok(x.matmul(&w.t()?)?.flatten_all()?.to_vec1()?)
            }
            Kind::Quantized { .. } => {
                let (ty, data) = self.weight_bytes().expect("quantized");
                if m < BATCH_ROWS {
                    return Ok(super::dot::matmul(ty, data, self.rows, self.cols, x, m));
                }
                if let Some(out) = super::gemm::matmul(ty, data, self.rows, self.cols, x) {
                    return Ok(out);
                }
                let mut input = x.to_vec();
                round_like_ggml_activations(&mut input, self.cols, ty);
                Ok(self.panel_gemm(&input, m, data, ty))
            }
        }
    }

    /// Several linears on the same input `x [m, cols]`: one fused pass with the activations
    /// quantized once (fused dot kernels for a few rows, the integer GEMM for batches) where
    /// every weight allows it, else one product each.
    pub fn forward_many(linears: &[&Linear], x: &[f32]) -> Result<Vec<Vec<f32>>> {
        let cols = linears[0].cols;
        let m = x.len() / cols;
        let parts: Option<Vec<super::dot::Part>> = linears
            .iter()
            .map(|l| match l.weight_bytes() {
                Some((ty, weight)) if l.cols == cols => Some(super::dot::Part {
                    ty,
                    weight,
                    n: l.rows,
                }),
                _ => None,
            })
            .collect();
        if let Some(parts) = parts {
            if m < BATCH_ROWS {
                return Ok(super::dot::matmul_many(&parts, cols, x, m));
            }
            if let Some(outs) = super::gemm::matmul_many(&parts, cols, x) {
                return Ok(outs);
            }
        }
        linears.iter().map(|l| l.forward(x)).collect()
    }

    /// The weight held for the row kernels of `dot` (single-token decoding).
    pub fn guard(&self) -> WeightGuard<'_> {
        match &self.kind {
            Kind::Dense(w) => {
                let (storage, layout) = w.storage_and_layout();
                WeightGuard::Dense {
                    storage,
                    contiguous: layout.is_contiguous(),
                    offset: layout.start_offset(),
                    len: self.rows * self.cols,
                }
            }
            Kind::Quantized { .. } => {
                let (ty, bytes) = self.weight_bytes().expect("quantized");
                WeightGuard::Quantized { ty, bytes }
            }
        }
    }

    /// The GGML type of the weight, None for dense F32.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        match &self.kind {
            Kind::Dense(_) => None,
            Kind::Quantized { ty, .. } => Some(*ty),
        }
    }

    fn panel_gemm(&self, input: &[f32], m: usize, data: &[u8], ty: GgmlType) -> Vec<f32> {
        let (n, k) = (self.rows, self.cols);
        let info = ty.info();
        let row_bytes = info.row_bytes(k);
        let panel_rows = (PANEL_ELEMS / k).clamp(16, n.max(16));
        let mut out = vec![0f32; m * n];
        let mut panel = vec![0f32; panel_rows.min(n) * k];
        let threads = rayon::current_num_threads();
        let mut r0 = 0;
        while r0 < n {
            let rows = panel_rows.min(n - r0);
            let bytes = &data[r0 * row_bytes..(r0 + rows) * row_bytes];
            panel[..rows * k]
                .par_chunks_mut(k)
                .zip(bytes.par_chunks(row_bytes))
                .for_each(|(dst, src)| (info.dequantize_row)(src, dst));
            // SAFETY: every pointer/stride pair describes memory inside `input`, `panel` or
            // `out` with the given shapes: lhs [m, k] row-major, rhs = panel^T [k, rows]
            // (column j is panel row j), dst = out[:, r0..r0 + rows] with row stride n.
            unsafe {
                gemm::gemm(
                    m,
                    rows,
                    k,
                    out.as_mut_ptr().add(r0),
                    1,
                    n as isize,
                    false,
                    input.as_ptr(),
                    1,
                    k as isize,
                    panel.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                );
            }
            r0 += rows;
        }
        out
    }
}

/// A weight as the row kernels read it: quantized bytes from the mapping, or a dense
/// tensor's storage, read-locked while the guard lives.
pub enum WeightGuard<'a> {
    Quantized {
        ty: GgmlType,
        bytes: &'a [u8],
    },
    Dense {
        storage: StorageRef<'a>,
        contiguous: bool,
        offset: usize,
        len: usize,
    },
}

impl WeightGuard<'_> {
    pub fn view(&self) -> Result<super::dot::WeightView<'_>> {
        use super::dot::WeightView;
        Ok(match self {
            WeightGuard::Quantized { ty, bytes } => WeightView::Quantized { ty: *ty, bytes },
            WeightGuard::Dense {
                storage,
                contiguous,
                offset,
                len,
            } => match &**storage {
                Storage::Cpu(cpu) if *contiguous => {
                    WeightView::Dense(&cpu.as_slice::<f32>()?[*offset..*offset + *len])
                }
                _ => anyhow::bail!("a dense weight must be a contiguous f32 tensor in memory"),
            },
        })
    }
}

/// ggml's CPU backend multiplies a quantized weight by activations first rounded to the
/// weight type's `vec_dot_type` (see `dot::Rounding`). Rounding the activations the same way
/// here keeps perplexity on llama.cpp's figures (without it, every quantized type scores
/// ~0.2-0.6% lower than llama-perplexity).
fn round_like_ggml_activations(x: &mut [f32], cols: usize, weight: GgmlType) {
    let rounding = super::dot::Rounding::for_weight(weight);
    x.par_chunks_mut(cols).for_each(|row| rounding.apply(row));
}
