//! The unquantized element types: F32, F16 and BF16 (one element per "block").

use super::fp16::{bf16_bits_to_f32, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits};
use super::{BlockFormat, GgmlType, Isa};

pub struct F32;
pub struct F16;
pub struct BF16;

impl BlockFormat for F32 {
    const TYPE: GgmlType = GgmlType::F32;
    const BLOCK_ELEMS: usize = 1;
    const BLOCK_BYTES: usize = 4;

    fn quantize_row(x: &[f32], _imatrix: Option<&[f32]>, out: &mut [u8], _isa: Isa) {
        for (v, o) in x.iter().zip(out.chunks_exact_mut(4)) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (b, y) in q.chunks_exact(4).zip(out.iter_mut()) {
            *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}

impl BlockFormat for F16 {
    const TYPE: GgmlType = GgmlType::F16;
    const BLOCK_ELEMS: usize = 1;
    const BLOCK_BYTES: usize = 2;

    fn quantize_row(x: &[f32], _imatrix: Option<&[f32]>, out: &mut [u8], _isa: Isa) {
        for (v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
            o.copy_from_slice(&f32_to_f16_bits(*v).to_le_bytes());
        }
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (b, y) in q.chunks_exact(2).zip(out.iter_mut()) {
            *y = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
        }
    }
}

impl BlockFormat for BF16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const BLOCK_ELEMS: usize = 1;
    const BLOCK_BYTES: usize = 2;

    fn quantize_row(x: &[f32], _imatrix: Option<&[f32]>, out: &mut [u8], _isa: Isa) {
        for (v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
            o.copy_from_slice(&f32_to_bf16_bits(*v).to_le_bytes());
        }
    }

    fn dequantize_row(q: &[u8], out: &mut [f32]) {
        for (b, y) in q.chunks_exact(2).zip(out.iter_mut()) {
            *y = bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
        }
    }
}
