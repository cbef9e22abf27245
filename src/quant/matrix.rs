//! Whole-matrix quantization: input validation, then rows in parallel with rayon.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use super::{GgmlType, Isa};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("{ty}: row length {cols} is not a multiple of the block size {block}")]
    RowLength {
        ty: GgmlType,
        cols: usize,
        block: usize,
    },
    #[error("input has {len} values, not a whole number of rows of {cols}")]
    Shape { len: usize, cols: usize },
    #[error("non-finite value {value} at row {row}, column {col}")]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("importance matrix has {got} weights but rows have {expected} columns")]
    ImatrixLength { expected: usize, got: usize },
    #[error("importance weight {value} at column {col} is negative or not finite")]
    BadImportance { col: usize, value: f32 },
    #[error("{ty}: {got} bytes is not a whole number of rows of {row_bytes} bytes")]
    ByteLength {
        ty: GgmlType,
        got: usize,
        row_bytes: usize,
    },
}

/// How to run a quantization: instruction set and whether to use every core.
#[derive(Clone, Copy, Debug)]
pub struct QuantizeOptions {
    pub isa: Isa,
    pub parallel: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            isa: Isa::best(),
            parallel: true,
        }
    }
}

/// Check shape, values and importance weights; errors name the first offending row and column.
pub fn validate(
    ty: GgmlType,
    data: &[f32],
    cols: usize,
    imatrix: Option<&[f32]>,
) -> Result<(), QuantError> {
    validate_shape(ty, data, cols, imatrix)?;
    let bad = data
        .par_chunks(cols)
        .enumerate()
        .find_first(|(_, row)| has_non_finite(row));
    match bad {
        Some((row, values)) => Err(non_finite_error(row, values)),
        None => Ok(()),
    }
}

/// Shape and importance-weight checks: everything but the scan of the values.
fn validate_shape(
    ty: GgmlType,
    data: &[f32],
    cols: usize,
    imatrix: Option<&[f32]>,
) -> Result<(), QuantError> {
    let block = ty.info().block_elems;
    if cols == 0 || !cols.is_multiple_of(block) {
        return Err(QuantError::RowLength { ty, cols, block });
    }
    if !data.len().is_multiple_of(cols) {
        return Err(QuantError::Shape {
            len: data.len(),
            cols,
        });
    }
    if let Some(w) = imatrix {
        if w.len() != cols {
            return Err(QuantError::ImatrixLength {
                expected: cols,
                got: w.len(),
            });
        }
        if let Some((col, &value)) = w
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || **v < 0.0)
        {
            return Err(QuantError::BadImportance { col, value });
        }
    }
    Ok(())
}

fn non_finite_error(row: usize, values: &[f32]) -> QuantError {
    let (col, &value) = values
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
        .expect("row has a non-finite value");
    QuantError::NonFinite { row, col, value }
}

/// Whether any value is NaN or infinite (all-ones exponent). Branch-free per chunk so that the
/// scan vectorizes: it runs over every input value before quantizing.
#[inline(always)]
pub(crate) fn has_non_finite(row: &[f32]) -> bool {
    row.chunks(256).any(|chunk| {
        chunk.iter().fold(0u32, |acc, v| {
            acc | ((v.to_bits() & 0x7F80_0000) == 0x7F80_0000) as u32
        }) != 0
    })
}

/// Quantize a row-major `rows x cols` matrix with the best instruction set on every core.
pub fn quantize(
    ty: GgmlType,
    data: &[f32],
    cols: usize,
    imatrix: Option<&[f32]>,
) -> Result<Vec<u8>, QuantError> {
    quantize_with(ty, data, cols, imatrix, QuantizeOptions::default())
}

pub fn quantize_with(
    ty: GgmlType,
    data: &[f32],
    cols: usize,
    imatrix: Option<&[f32]>,
    opts: QuantizeOptions,
) -> Result<Vec<u8>, QuantError> {
    let rows = data.len().checked_div(cols).unwrap_or(0);
    let mut out = vec![0u8; rows * ty.info().row_bytes(cols.max(1))];
    quantize_into(ty, data, cols, imatrix, opts, &mut out)?;
    Ok(out)
}

/// Quantize into a caller's buffer of exactly `rows * row_bytes(cols)` bytes (reused across
/// tensors by the converter, so no page is touched twice).
pub fn quantize_into(
    ty: GgmlType,
    data: &[f32],
    cols: usize,
    imatrix: Option<&[f32]>,
    opts: QuantizeOptions,
    out: &mut [u8],
) -> Result<(), QuantError> {
    validate_shape(ty, data, cols, imatrix)?;
    let info = ty.info();
    let imatrix = if info.uses_imatrix { imatrix } else { None };
    let row_bytes = info.row_bytes(cols);
    let expected = data.len() / cols * row_bytes;
    if out.len() != expected {
        return Err(QuantError::ByteLength {
            ty,
            got: out.len(),
            row_bytes,
        });
    }
    let quantize_row = info.quantize_row;
    let isa = opts.isa;
    // Each row is checked for NaN/infinity just before it is quantized, while it is in cache;
    // the lowest bad row is reported and the output is then garbage the caller never sees.
    let first_bad = AtomicUsize::new(usize::MAX);
    let run = |row: usize, o: &mut [u8], x: &[f32]| {
        if super::simd::has_non_finite(isa, x) {
            first_bad.fetch_min(row, Ordering::Relaxed);
        } else {
            quantize_row(x, imatrix, o, isa);
        }
    };
    if opts.parallel {
        // Small rows are cheap: hand rayon enough work per task to amortize scheduling.
        let min_rows = (65_536 / cols).max(1);
        out.par_chunks_mut(row_bytes)
            .zip(data.par_chunks(cols))
            .enumerate()
            .with_min_len(min_rows)
            .for_each(|(row, (o, x))| run(row, o, x));
    } else {
        for (row, (o, x)) in out.chunks_mut(row_bytes).zip(data.chunks(cols)).enumerate() {
            run(row, o, x);
        }
    }
    match first_bad.into_inner() {
        usize::MAX => Ok(()),
        row => Err(non_finite_error(row, &data[row * cols..(row + 1) * cols])),
    }
}

/// Dequantize `bytes` holding rows of `cols` elements.
pub fn dequantize(ty: GgmlType, bytes: &[u8], cols: usize) -> Result<Vec<f32>, QuantError> {
    let info = ty.info();
    if cols == 0 || !cols.is_multiple_of(info.block_elems) {
        return Err(QuantError::RowLength {
            ty,
            cols,
            block: info.block_elems,
        });
    }
    let row_bytes = info.row_bytes(cols);
    if !bytes.len().is_multiple_of(row_bytes) {
        return Err(QuantError::ByteLength {
            ty,
            got: bytes.len(),
            row_bytes,
        });
    }
    let mut out = vec![0.0f32; bytes.len() / row_bytes * cols];
    let dequantize_row = info.dequantize_row;
    out.par_chunks_mut(cols)
        .zip(bytes.par_chunks(row_bytes))
        .with_min_len((65_536 / cols).max(1))
        .for_each(|(y, q)| dequantize_row(q, y));
    Ok(out)
}

/// How far a dequantized matrix is from the original.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ErrorStats {
    pub rmse: f64,
    pub max_abs: f64,
    /// RMSE divided by the original's root mean square.
    pub relative_rmse: f64,
}

pub fn error_stats(original: &[f32], restored: &[f32]) -> ErrorStats {
    let (mut se, mut ss, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in original.iter().zip(restored) {
        let e = (a - b) as f64;
        se += e * e;
        ss += (a as f64) * (a as f64);
        max_abs = max_abs.max(e.abs());
    }
    let n = original.len().max(1) as f64;
    let rmse = (se / n).sqrt();
    let rms = (ss / n).sqrt();
    ErrorStats {
        rmse,
        max_abs,
        relative_rmse: if rms > 0.0 { rmse / rms } else { 0.0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_input_with_location() {
        let mut data = vec![0.5f32; 64];
        assert_eq!(
            quantize(GgmlType::Q4_K, &data, 64, None),
            Err(QuantError::RowLength {
                ty: GgmlType::Q4_K,
                cols: 64,
                block: 256
            })
        );
        assert_eq!(
            quantize(GgmlType::Q8_0, &data, 48, None),
            Err(QuantError::RowLength {
                ty: GgmlType::Q8_0,
                cols: 48,
                block: 32
            })
        );
        assert_eq!(
            quantize(GgmlType::Q8_0, &data[..48], 32, None),
            Err(QuantError::Shape { len: 48, cols: 32 })
        );
        data[37] = f32::NAN;
        match quantize(GgmlType::Q4_0, &data, 32, None) {
            Err(QuantError::NonFinite {
                row: 1,
                col: 5,
                value,
            }) => assert!(value.is_nan()),
            other => panic!("{other:?}"),
        }
        data[37] = f32::NEG_INFINITY;
        assert_eq!(
            quantize(GgmlType::Q4_0, &data, 32, None),
            Err(QuantError::NonFinite {
                row: 1,
                col: 5,
                value: f32::NEG_INFINITY
            })
        );
        data[37] = 0.0;
        assert_eq!(
            quantize(GgmlType::Q4_0, &data, 32, Some(&[1.0; 16])),
            Err(QuantError::ImatrixLength {
                expected: 32,
                got: 16
            })
        );
        let mut w = vec![1.0f32; 32];
        w[3] = -1.0;
        assert_eq!(
            quantize(GgmlType::IQ4_NL, &data, 32, Some(&w)),
            Err(QuantError::BadImportance {
                col: 3,
                value: -1.0
            })
        );
        w[3] = f32::INFINITY;
        assert_eq!(
            quantize(GgmlType::IQ4_NL, &data, 32, Some(&w)),
            Err(QuantError::BadImportance {
                col: 3,
                value: f32::INFINITY
            })
        );
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 35], 32).is_err());
    }

    #[test]
    fn every_format_round_trips_within_its_precision() {
        // A smooth ramp with a sign change: every format should reproduce it closely.
        let cols = 512;
        let data: Vec<f32> = (0..2 * cols)
            .map(|i| ((i as f32) * 0.37).sin() * 0.05)
            .collect();
        for ty in GgmlType::all() {
            let q = quantize(ty, &data, cols, None).unwrap();
            assert_eq!(q.len(), 2 * ty.info().row_bytes(cols), "{ty}");
            let back = dequantize(ty, &q, cols).unwrap();
            let rmse = (data
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / data.len() as f32)
                .sqrt();
            // Error halves per extra bit; float types sit at their rounding floor.
            let bound =
                (0.05 * 2.0f32.powf(2.0 - ty.info().bits_per_weight() as f32)).max(0.05 / 128.0);
            assert!(rmse < bound, "{ty}: rmse {rmse} above {bound}");
        }
    }
}
