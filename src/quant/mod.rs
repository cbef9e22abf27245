//! GGUF block formats: one type per format with its constants and its quantize/dequantize, one
//! table ([`table`]) that maps GGUF type ids and llama.cpp names to them, and a matrix API
//! ([`matrix`]) that validates input and runs rows in parallel.
//!
//! Every quantizer reproduces ggml's reference quantizer (`ggml-quants.c`, ggml 0.25.3) bit for
//! bit: the same search, the same floating-point operations in the same order.

pub mod float;
pub mod fp16;
pub mod iq4;
pub mod isa;
pub mod kquants;
pub mod legacy;
pub mod matrix;
pub mod rules;
pub mod search;
pub mod simd;
pub mod table;

pub use isa::Isa;
pub use matrix::{
    dequantize, error_stats, quantize, quantize_into, quantize_with, ErrorStats, QuantError,
    QuantizeOptions,
};
pub use table::{FormatInfo, GgmlType};

/// Super-block size of the k-quants and IQ4_XS.
pub const QK_K: usize = 256;

/// One GGUF block format.
pub trait BlockFormat {
    const TYPE: GgmlType;
    /// Weights per block.
    const BLOCK_ELEMS: usize;
    /// Bytes per block.
    const BLOCK_BYTES: usize;

    /// Quantize one row. `x.len()` is a multiple of `BLOCK_ELEMS`, `out` holds exactly the
    /// row's blocks and `imatrix`, when given, has one importance weight per column of `x`.
    /// Input is already validated (finite values, non-negative finite weights).
    fn quantize_row(x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8], isa: Isa);

    /// Dequantize one row of blocks into `out` (`BLOCK_ELEMS` values per block).
    fn dequantize_row(q: &[u8], out: &mut [f32]);
}
