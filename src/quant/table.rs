//! The one table of block formats: GGUF type id and name, block size and bytes, quantize and
//! dequantize rows, whether an importance matrix changes (or is required for) the result, the
//! format activations are quantized to before its dot product (ggml's `vec_dot_type`), and
//! which kernel family the forward pass uses for it. A new format is its file plus one row
//! here (ggml's `type_traits` and `type_traits_cpu` are the model).

use super::float::{BF16, F16, F32};
use super::iq4::{Iq4Nl, Iq4Xs};
use super::kquants::{Q2K, Q3K, Q4K, Q5K, Q6K, Q8K};
use super::legacy::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use super::{BlockFormat, Isa};

/// The ggml tensor types quantfit reads and writes.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ4_NL,
    IQ4_XS,
}

pub type QuantizeRowFn = fn(&[f32], Option<&[f32]>, &mut [u8], Isa);
pub type DequantizeRowFn = fn(&[u8], &mut [f32]);

/// How the forward pass multiplies a weight of this format with activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Unquantized: an f32 product (activations rounded to the `vec_dot_type`).
    Dense,
    /// A fused 32-element kernel on Q8_0 activations (eval/dot `legacy` kernels).
    Block32,
    /// A k-quant kernel on Q8_K activations (candle's `vec_dot`).
    KQuant,
    /// The IQ4_XS superblock kernel on Q8_K activations.
    Iq4Xs,
    /// No fused kernel: the row is dequantized and dotted in f32.
    Dequantize,
}

/// Everything the rest of quantfit needs to know about one block format.
#[derive(Clone, Copy)]
pub struct FormatInfo {
    pub ty: GgmlType,
    /// GGUF / ggml type id.
    pub id: u32,
    /// Name as ggml and llama.cpp print it.
    pub name: &'static str,
    pub block_elems: usize,
    pub block_bytes: usize,
    /// Whether an importance matrix changes the result (ggml ignores it for the rest).
    pub uses_imatrix: bool,
    /// ggml refuses to quantize without an importance matrix.
    pub requires_imatrix: bool,
    /// The format activations are quantized to before the dot product (ggml's vec_dot_type).
    pub vec_dot_type: GgmlType,
    pub kernel: Kernel,
    /// The forward pass's integer GEMM takes prompt batches of this format.
    pub int_gemm: bool,
    pub quantize_row: QuantizeRowFn,
    pub dequantize_row: DequantizeRowFn,
}

impl FormatInfo {
    pub fn bits_per_weight(&self) -> f64 {
        self.block_bytes as f64 * 8.0 / self.block_elems as f64
    }

    /// Bytes of a row of `cols` elements (`cols` a multiple of the block size).
    pub fn row_bytes(&self, cols: usize) -> usize {
        cols / self.block_elems * self.block_bytes
    }
}

/// One row: the format's own constants, and what ggml and the forward pass do with it.
#[allow(clippy::too_many_arguments)]
const fn entry<B: BlockFormat>(
    id: u32,
    name: &'static str,
    uses_imatrix: bool,
    vec_dot_type: GgmlType,
    kernel: Kernel,
    int_gemm: bool,
) -> FormatInfo {
    FormatInfo {
        ty: B::TYPE,
        id,
        name,
        block_elems: B::BLOCK_ELEMS,
        block_bytes: B::BLOCK_BYTES,
        uses_imatrix,
        requires_imatrix: false,
        vec_dot_type,
        kernel,
        int_gemm,
        quantize_row: B::quantize_row,
        dequantize_row: B::dequantize_row,
    }
}

use GgmlType as T;
use Kernel::{Block32, Dense, Iq4Xs as SuperIq4, KQuant};

/// All formats, in GGUF type id order. vec_dot_type as in ggml-cpu.c's type_traits_cpu (Q4_1
/// and Q5_1 take Q8_1 there: the same values as Q8_0 for these kernels).
#[rustfmt::skip]
pub static FORMATS: [FormatInfo; 16] = [
    entry::<F32>(0, "F32", false, T::F32, Dense, false),
    entry::<F16>(1, "F16", false, T::F16, Dense, false),
    entry::<Q4_0>(2, "Q4_0", true, T::Q8_0, Block32, true),
    entry::<Q4_1>(3, "Q4_1", true, T::Q8_0, Block32, true),
    entry::<Q5_0>(6, "Q5_0", true, T::Q8_0, Block32, true),
    entry::<Q5_1>(7, "Q5_1", true, T::Q8_0, Block32, true),
    entry::<Q8_0>(8, "Q8_0", false, T::Q8_0, Block32, true),
    entry::<Q2K>(10, "Q2_K", true, T::Q8_K, KQuant, false),
    entry::<Q3K>(11, "Q3_K", true, T::Q8_K, KQuant, false),
    entry::<Q4K>(12, "Q4_K", true, T::Q8_K, KQuant, true),
    entry::<Q5K>(13, "Q5_K", true, T::Q8_K, KQuant, true),
    entry::<Q6K>(14, "Q6_K", true, T::Q8_K, KQuant, false),
    entry::<Q8K>(15, "Q8_K", false, T::Q8_K, Kernel::Dequantize, false),
    entry::<Iq4Nl>(20, "IQ4_NL", true, T::Q8_0, Block32, true),
    entry::<Iq4Xs>(23, "IQ4_XS", true, T::Q8_K, SuperIq4, true),
    entry::<BF16>(30, "BF16", false, T::BF16, Dense, false),
];

impl GgmlType {
    pub fn info(self) -> &'static FormatInfo {
        FORMATS
            .iter()
            .find(|f| f.ty == self)
            .expect("every GgmlType has a table entry")
    }

    pub fn id(self) -> u32 {
        self.info().id
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn from_id(id: u32) -> Option<GgmlType> {
        FORMATS.iter().find(|f| f.id == id).map(|f| f.ty)
    }

    /// Accepts ggml's names case-insensitively (`q4_k`, `Q4_K`, `iq4_xs`).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        FORMATS
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.ty)
    }

    pub fn all() -> impl Iterator<Item = GgmlType> {
        FORMATS.iter().map(|f| f.ty)
    }

    pub fn names() -> Vec<&'static str> {
        FORMATS.iter().map(|f| f.name).collect()
    }
}

/// ggml tensor types quantfit does not read yet: (id, name, block elements, block bytes) from
/// ggml's `type_traits`, so that a GGUF holding them is bounds-checked and described rather
/// than taken on trust. A type that gains a row in `FORMATS` leaves this list.
pub const OTHER_GGML_TYPES: &[(u32, &str, usize, usize)] = &[
    (9, "Q8_1", 32, 36),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

/// Name, block elements and block bytes of any ggml type id quantfit knows the size of.
pub fn ggml_type_size(id: u32) -> Option<(&'static str, usize, usize)> {
    match GgmlType::from_id(id) {
        Some(t) => Some((t.name(), t.info().block_elems, t.info().block_bytes)),
        None => OTHER_GGML_TYPES
            .iter()
            .find(|o| o.0 == id)
            .map(|&(_, name, elems, bytes)| (name, elems, bytes)),
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_sizes_match_ggml() {
        let expect: [(&str, u32, usize, usize); 16] = [
            ("F32", 0, 1, 4),
            ("F16", 1, 1, 2),
            ("Q4_0", 2, 32, 18),
            ("Q4_1", 3, 32, 20),
            ("Q5_0", 6, 32, 22),
            ("Q5_1", 7, 32, 24),
            ("Q8_0", 8, 32, 34),
            ("Q2_K", 10, 256, 84),
            ("Q3_K", 11, 256, 110),
            ("Q4_K", 12, 256, 144),
            ("Q5_K", 13, 256, 176),
            ("Q6_K", 14, 256, 210),
            ("Q8_K", 15, 256, 292),
            ("IQ4_NL", 20, 32, 18),
            ("IQ4_XS", 23, 256, 136),
            ("BF16", 30, 1, 2),
        ];
        for (name, id, elems, bytes) in expect {
            let ty = GgmlType::from_name(name).unwrap();
            let info = ty.info();
            assert_eq!(
                (info.id, info.block_elems, info.block_bytes),
                (id, elems, bytes),
                "{name}"
            );
            assert_eq!(GgmlType::from_id(id), Some(ty));
        }
        for &(id, name, ..) in OTHER_GGML_TYPES {
            assert!(GgmlType::from_id(id).is_none() && GgmlType::from_name(name).is_none());
        }
        // Sizes against ggml's bytes for the low-bit fixtures (65536 weights each).
        for (name, bytes) in [
            ("IQ2_XXS", 16896),
            ("IQ2_XS", 18944),
            ("IQ3_XXS", 25088),
            ("IQ1_S", 12800),
            ("IQ3_S", 28160),
            ("IQ2_S", 20992),
            ("IQ1_M", 14336),
            ("TQ1_0", 13824),
            ("TQ2_0", 16896),
            ("MXFP4", 34816),
        ] {
            let &(_, _, e, b) = OTHER_GGML_TYPES.iter().find(|o| o.1 == name).unwrap();
            assert_eq!(65536 / e * b, bytes, "{name}");
        }
        assert_eq!(GgmlType::from_name("q4_k"), Some(GgmlType::Q4_K));
        assert_eq!(GgmlType::from_name("Q4_K_M"), None);
        assert!((GgmlType::Q4_K.info().bits_per_weight() - 4.5).abs() < 1e-12);
    }

    /// ggml-cpu.c type_traits_cpu: the activation format of each weight format's dot product.
    #[test]
    fn vec_dot_types_match_ggml() {
        for (w, a) in [
            ("F32", "F32"),
            ("F16", "F16"),
            ("BF16", "BF16"),
            ("Q4_0", "Q8_0"),
            ("Q4_1", "Q8_0"),
            ("Q5_0", "Q8_0"),
            ("Q5_1", "Q8_0"),
            ("Q8_0", "Q8_0"),
            ("IQ4_NL", "Q8_0"),
            ("Q2_K", "Q8_K"),
            ("Q3_K", "Q8_K"),
            ("Q4_K", "Q8_K"),
            ("Q5_K", "Q8_K"),
            ("Q6_K", "Q8_K"),
            ("IQ4_XS", "Q8_K"),
        ] {
            let ty = GgmlType::from_name(w).unwrap();
            assert_eq!(ty.info().vec_dot_type.name(), a, "{w}");
            // A quantized activation format has blocks the weight's rows are made of.
            let act = ty.info().vec_dot_type.info();
            assert_eq!(act.block_elems % ty.info().block_elems, 0, "{w}");
        }
        assert!(FORMATS
            .iter()
            .all(|f| !f.requires_imatrix || f.uses_imatrix));
    }
}
