//! llama.cpp's per-tensor type choice for a target file type ("Q4_K_M" and friends): which
//! tensors stay F32, the output/token-embedding rules, the attn_v / ffn_down / attn_output
//! bumps by layer, the 70B attn_v rule, and the fallbacks for rows that are not a multiple of
//! 256. Follows `llama_tensor_get_type` in llama.cpp's src/llama-quant.cpp (0c1e57098) for the
//! file types quantfit writes. The converter and the planner both use this one implementation,
//! so a planned size is the converted file's size.

use regex::Regex;

use super::GgmlType;

/// llama.cpp's file types (`llama_ftype`), by the names `llama-quantize` takes.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q6_K,
    Q5_K_M,
    Q5_K_S,
    Q5_1,
    Q5_0,
    Q4_K_M,
    Q4_K_S,
    Q4_1,
    Q4_0,
    IQ4_XS,
    IQ4_NL,
    Q3_K_L,
    Q3_K_M,
    Q3_K_S,
    Q2_K,
}

/// One file type: its llama-quantize name, its `llama_ftype` id (`general.file_type`), and
/// the block format most tensors get. The per-tensor rules below say what the others get.
pub struct FileTypeInfo {
    pub ft: FileType,
    pub name: &'static str,
    pub llama_ftype: u32,
    pub default_type: GgmlType,
}

const fn ft(
    ft: FileType,
    name: &'static str,
    llama_ftype: u32,
    default_type: GgmlType,
) -> FileTypeInfo {
    FileTypeInfo {
        ft,
        name,
        llama_ftype,
        default_type,
    }
}

/// The file types quantfit writes, in the order `quantize --help` lists them (llama.h's
/// `llama_ftype` ids).
#[rustfmt::skip]
pub static FILE_TYPES: [FileTypeInfo; 19] = [
    ft(FileType::F32, "F32", 0, GgmlType::F32),
    ft(FileType::F16, "F16", 1, GgmlType::F16),
    ft(FileType::BF16, "BF16", 32, GgmlType::BF16),
    ft(FileType::Q8_0, "Q8_0", 7, GgmlType::Q8_0),
    ft(FileType::Q6_K, "Q6_K", 18, GgmlType::Q6_K),
    ft(FileType::Q5_K_M, "Q5_K_M", 17, GgmlType::Q5_K),
    ft(FileType::Q5_K_S, "Q5_K_S", 16, GgmlType::Q5_K),
    ft(FileType::Q5_1, "Q5_1", 9, GgmlType::Q5_1),
    ft(FileType::Q5_0, "Q5_0", 8, GgmlType::Q5_0),
    ft(FileType::Q4_K_M, "Q4_K_M", 15, GgmlType::Q4_K),
    ft(FileType::Q4_K_S, "Q4_K_S", 14, GgmlType::Q4_K),
    ft(FileType::Q4_1, "Q4_1", 3, GgmlType::Q4_1),
    ft(FileType::Q4_0, "Q4_0", 2, GgmlType::Q4_0),
    ft(FileType::IQ4_XS, "IQ4_XS", 30, GgmlType::IQ4_XS),
    ft(FileType::IQ4_NL, "IQ4_NL", 25, GgmlType::IQ4_NL),
    ft(FileType::Q3_K_L, "Q3_K_L", 13, GgmlType::Q3_K),
    ft(FileType::Q3_K_M, "Q3_K_M", 12, GgmlType::Q3_K),
    ft(FileType::Q3_K_S, "Q3_K_S", 11, GgmlType::Q3_K),
    ft(FileType::Q2_K, "Q2_K", 10, GgmlType::Q2_K),
];

/// Names llama-quantize also takes for a mix: `Q4_K` is `Q4_K_M`, and so on.
const ALIASES: [(&str, FileType); 3] = [
    ("Q4_K", FileType::Q4_K_M),
    ("Q5_K", FileType::Q5_K_M),
    ("Q3_K", FileType::Q3_K_M),
];

impl FileType {
    pub fn all() -> &'static [FileType] {
        static ALL: std::sync::OnceLock<Vec<FileType>> = std::sync::OnceLock::new();
        ALL.get_or_init(|| FILE_TYPES.iter().map(|f| f.ft).collect())
    }

    pub fn info(self) -> &'static FileTypeInfo {
        FILE_TYPES
            .iter()
            .find(|f| f.ft == self)
            .expect("every FileType has a table row")
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Case-insensitive; `Q4_K` and `Q5_K` mean their `_M` mixes, as in llama-quantize.
    pub fn from_name(name: &str) -> Option<FileType> {
        let name = name.trim();
        ALIASES
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(name))
            .map(|(_, f)| *f)
            .or_else(|| {
                FILE_TYPES
                    .iter()
                    .find(|f| f.name.eq_ignore_ascii_case(name))
                    .map(|f| f.ft)
            })
    }

    pub fn names() -> Vec<&'static str> {
        FILE_TYPES.iter().map(|f| f.name).collect()
    }

    /// The `general.file_type` value (`llama_ftype`).
    pub fn llama_ftype(self) -> u32 {
        self.info().llama_ftype
    }

    /// The block format most tensors get.
    pub fn default_type(self) -> GgmlType {
        self.info().default_type
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, FileType::F32 | FileType::F16 | FileType::BF16)
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the rules need to know about the model.
#[derive(Clone, Debug)]
pub struct ModelFacts {
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    /// llama.cpp's LLM_TYPE_70B (80 layers with grouped-query attention, for llama and qwen2).
    pub is_70b: bool,
    /// Whether the file has its own `output.weight` (untied embeddings).
    pub has_output: bool,
    /// Routed experts (0 for a dense model): llama.cpp gives 8-expert models (Mixtral-8x7B's
    /// layout) more bits in attention.
    pub n_expert: u32,
}

impl ModelFacts {
    /// The facts of a model of this architecture; `has_output` as its tensor list says.
    pub fn of(
        arch: &crate::source::arch::Architecture,
        h: &crate::source::arch::HParams,
        has_output: bool,
    ) -> ModelFacts {
        ModelFacts {
            n_layer: h.n_layer as u32,
            n_head: h.n_head as u32,
            n_head_kv: h.n_head_kv as u32,
            is_70b: (arch.type_70b)(h),
            has_output,
            n_expert: h.n_expert as u32,
        }
    }

    pub fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(1)
    }
}

/// Options of a conversion that change tensor types.
#[derive(Clone, Debug, Default)]
pub struct RuleOptions {
    /// Every quantizable tensor gets the default type (llama-quantize `--pure`).
    pub pure: bool,
    /// `--tensor-type REGEX=TYPE`, first match wins.
    pub overrides: Vec<(Regex, GgmlType)>,
    pub has_imatrix: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_v.weight") || name.contains("attn_qkv.weight") {
        // A fused QKV tensor follows the attn_v rules in llama.cpp.
        Category::AttnV
    } else if name.contains("attn_k.weight") {
        Category::AttnK
    } else if name.contains("attn_q.weight") {
        Category::AttnQ
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_up") {
        Category::FfnUp
    } else if name.contains("ffn_gate") {
        Category::FfnGate
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// Whether llama.cpp quantizes this tensor at all (2-D weights except norms and the like).
pub fn allows_quantization(name: &str, n_dims: usize) -> bool {
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("position_embd")
        && !name.contains("token_types")
}

/// `blk.N.` layer index.
fn layer_index(name: &str) -> Option<u32> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

fn use_more_bits(i_layer: u32, n_layers: u32) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// A block format whose block does not fit the rows falls back to a smaller block; F16 when
/// even 32 does not fit.
pub fn fallback(ty: GgmlType, row: u64) -> GgmlType {
    let block = ty.info().block_elems as u64;
    if row.is_multiple_of(block) {
        return ty;
    }
    let next = match ty {
        GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if row.is_multiple_of(next.info().block_elems as u64) {
        next
    } else {
        GgmlType::F16
    }
}

/// The type a tensor gets in a file of type `ftype`. `dims` innermost first; 1-D tensors
/// (norms, biases) are always F32, as llama.cpp's converter writes them.
pub fn tensor_type(
    ftype: FileType,
    model: &ModelFacts,
    opts: &RuleOptions,
    name: &str,
    dims: &[u64],
) -> GgmlType {
    if dims.len() < 2 || ftype == FileType::F32 {
        return GgmlType::F32;
    }
    if !allows_quantization(name, dims.len()) {
        // llama-quantize keeps such tensors as they come; llama.cpp's converter writes them
        // F32 at every output type (norms, the expert router `ffn_gate_inp`).
        return GgmlType::F32;
    }
    let default = ftype.default_type();
    if !ftype.is_quantized() {
        return default;
    }
    let row = dims[0];
    let manual = opts
        .overrides
        .iter()
        .find(|(re, _)| re.is_match(name))
        .map(|(_, t)| *t);
    let chosen = match manual {
        Some(t) => t,
        None if opts.pure => default,
        None => mixture_type(ftype, model, opts, name, row, default),
    };
    fallback(chosen, row)
}

fn mixture_type(
    ftype: FileType,
    model: &ModelFacts,
    opts: &RuleOptions,
    name: &str,
    row: u64,
    default: GgmlType,
) -> GgmlType {
    use FileType as F;
    use GgmlType as G;
    let cat = category(name);
    let layer = layer_index(name).unwrap_or(0);
    let n_layer = model.n_layer;
    let gqa = model.n_gqa();
    let mut t = default;
    if cat == Category::Output || (!model.has_output && cat == Category::TokenEmbd) {
        if !row.is_multiple_of(default.info().block_elems as u64) {
            t = G::Q8_0;
        } else if t != G::Q8_0 {
            t = G::Q6_K;
        }
        return t;
    }
    match cat {
        Category::AttnV => {
            t = match ftype {
                F::Q2_K => {
                    if gqa >= 4 {
                        G::Q4_K
                    } else {
                        G::Q3_K
                    }
                }
                F::Q3_K_M => {
                    if layer < 2 {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    }
                }
                F::Q3_K_L => G::Q5_K,
                F::IQ4_NL | F::IQ4_XS if gqa >= 4 => G::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(layer, n_layer) => G::Q6_K,
                F::Q4_K_S if layer < 4 => G::Q5_K,
                _ => t,
            };
            if model.is_70b && matches!(t, G::Q3_K | G::Q4_K) {
                t = G::Q5_K;
            }
            if model.n_expert == 8 {
                t = G::Q8_0;
            }
        }
        Category::AttnK if model.n_expert == 8 => t = G::Q8_0,
        Category::FfnDown => {
            t = match ftype {
                F::Q2_K => G::Q3_K,
                F::Q3_K_M => {
                    if layer < n_layer / 16 {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    }
                }
                F::Q3_K_L => G::Q5_K,
                F::Q4_K_M if use_more_bits(layer, n_layer) => G::Q6_K,
                F::IQ4_NL | F::IQ4_XS if layer < n_layer / 8 && !opts.has_imatrix => G::Q5_K,
                F::Q5_K_M if use_more_bits(layer, n_layer) => G::Q6_K,
                F::Q4_K_S if layer < n_layer / 8 => G::Q5_K,
                F::Q4_0 if opts.has_imatrix && layer < n_layer / 8 => G::Q4_1,
                F::Q5_0 if opts.has_imatrix && layer < n_layer / 8 => G::Q5_1,
                _ => t,
            };
        }
        Category::AttnOutput if model.n_expert == 8 => {
            if matches!(
                ftype,
                F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::IQ4_NL | F::Q4_K_S | F::Q4_K_M | F::IQ4_XS
            ) {
                t = G::Q5_K;
            }
        }
        Category::AttnOutput => {
            t = match ftype {
                F::Q2_K => G::Q3_K,
                F::Q3_K_M => G::Q4_K,
                F::Q3_K_L => G::Q5_K,
                _ => t,
            };
        }
        _ => {}
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(n_layer: u32, n_head: u32, n_head_kv: u32) -> ModelFacts {
        ModelFacts {
            n_layer,
            n_head,
            n_head_kv,
            is_70b: false,
            has_output: true,
            n_expert: 0,
        }
    }

    #[test]
    fn q4_k_m_bumps_follow_use_more_bits() {
        let m = facts(32, 32, 32);
        let o = RuleOptions::default();
        let bumped: Vec<u32> = (0..32)
            .filter(|&i| {
                tensor_type(
                    FileType::Q4_K_M,
                    &m,
                    &o,
                    &format!("blk.{i}.ffn_down.weight"),
                    &[11008, 4096],
                ) == GgmlType::Q6_K
            })
            .collect();
        assert_eq!(
            bumped,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
        assert_eq!(
            tensor_type(
                FileType::Q4_K_M,
                &m,
                &o,
                "blk.5.attn_q.weight",
                &[4096, 4096]
            ),
            GgmlType::Q4_K
        );
        assert_eq!(
            tensor_type(FileType::Q4_K_M, &m, &o, "output.weight", &[4096, 32000]),
            GgmlType::Q6_K
        );
        assert_eq!(
            tensor_type(
                FileType::Q4_K_M,
                &m,
                &o,
                "token_embd.weight",
                &[4096, 32000]
            ),
            GgmlType::Q4_K
        );
        assert_eq!(
            tensor_type(FileType::Q4_K_M, &m, &o, "blk.0.attn_norm.weight", &[4096]),
            GgmlType::F32
        );
    }

    #[test]
    fn fallbacks_for_rows_not_multiple_of_256() {
        let m = ModelFacts {
            has_output: false,
            ..facts(30, 9, 3)
        };
        let o = RuleOptions::default();
        let t = |f, name: &str, dims: &[u64]| tensor_type(f, &m, &o, name, dims);
        assert_eq!(
            t(FileType::Q4_K_M, "blk.3.attn_q.weight", &[576, 576]),
            GgmlType::Q5_0
        );
        assert_eq!(
            t(FileType::Q4_K_M, "blk.3.ffn_down.weight", &[1536, 576]),
            GgmlType::Q4_K
        );
        assert_eq!(
            t(FileType::Q4_K_M, "blk.0.attn_v.weight", &[576, 192]),
            GgmlType::Q8_0
        );
        assert_eq!(
            t(FileType::Q2_K, "blk.0.attn_v.weight", &[576, 192]),
            GgmlType::Q4_0
        );
        assert_eq!(
            t(FileType::Q4_0, "token_embd.weight", &[576, 49152]),
            GgmlType::Q8_0
        );
        assert_eq!(
            t(FileType::IQ4_XS, "blk.3.attn_q.weight", &[576, 576]),
            GgmlType::IQ4_NL
        );
        assert_eq!(
            t(FileType::Q4_0, "blk.3.attn_q.weight", &[40, 576]),
            GgmlType::F16
        );
    }

    #[test]
    fn seventy_b_attn_v_and_overrides() {
        let m = ModelFacts {
            is_70b: true,
            ..facts(80, 64, 8)
        };
        let o = RuleOptions::default();
        assert_eq!(
            tensor_type(
                FileType::Q3_K_S,
                &m,
                &o,
                "blk.40.attn_v.weight",
                &[8192, 1024]
            ),
            GgmlType::Q5_K
        );
        assert_eq!(
            tensor_type(
                FileType::Q2_K,
                &m,
                &o,
                "blk.40.attn_v.weight",
                &[8192, 1024]
            ),
            GgmlType::Q5_K
        );
        let o = RuleOptions {
            overrides: vec![(Regex::new("attn_q").unwrap(), GgmlType::Q8_0)],
            ..Default::default()
        };
        assert_eq!(
            tensor_type(
                FileType::Q4_K_M,
                &m,
                &o,
                "blk.1.attn_q.weight",
                &[8192, 8192]
            ),
            GgmlType::Q8_0
        );
        let pure = RuleOptions {
            pure: true,
            ..Default::default()
        };
        assert_eq!(
            tensor_type(
                FileType::Q4_K_M,
                &m,
                &pure,
                "blk.1.attn_v.weight",
                &[8192, 1024]
            ),
            GgmlType::Q4_K
        );
        assert_eq!(FileType::from_name("q4_k_m"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::from_name("Q4_K"), Some(FileType::Q4_K_M));
    }
}
