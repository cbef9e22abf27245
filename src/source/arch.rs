//! One description per architecture, read by the converter, the planner's size model and the
//! forward pass's loader alike: which config.json keys give the hyperparameters, the tensors
//! with their Hugging Face and GGUF names, their shapes as functions of the hyperparameters and
//! when each is present, the transform each needs on the way to GGUF (llama.cpp's Q/K row
//! permutation), the `{arch}.*` metadata keys, and the options the forward pass needs. Adding a
//! family is adding a description here plus whatever forward-pass piece is truly new.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

/// Hyperparameters, however they were read (config.json, GGUF metadata, the planner's
/// catalog).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct HParams {
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    /// config.json states `head_dim` (llama.cpp then writes attention.key_length and
    /// value_length, whatever their value).
    pub head_dim_stated: bool,
    pub context_length: u64,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub vocab_size: u64,
    pub tie_embeddings: bool,
    /// Biases on the attention projections (`attention_bias`; always for Qwen2's Q/K/V).
    pub attn_bias: bool,
    pub rope_scaling: RopeScaling,
    /// Routed experts of a mixture-of-experts model (0: dense), how many each token uses, and
    /// the feed-forward width of one expert.
    pub n_expert: u64,
    pub n_expert_used: u64,
    pub n_ff_expert: u64,
    /// Sliding-window attention (Gemma 3): the window in tokens on the architecture's
    /// sliding layers (0: every layer sees the whole context), and the RoPE base of those
    /// layers.
    pub sliding_window: u64,
    pub rope_theta_swa: f64,
    /// `c` of the final logits' soft cap `c * tanh(logits / c)` (0: none).
    pub final_softcap: f64,
    /// `c` of the attention scores' soft cap (Gemma 2; 0: none).
    pub attn_softcap: f64,
}

/// config.json's `rope_scaling`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub enum RopeScaling {
    #[default]
    None,
    /// Llama 3.1's: per-frequency divisors, which llama.cpp's converter writes as the tensor
    /// `rope_freqs.weight`. `None` when read back from a GGUF file (the tensor holds them).
    Llama3(Option<Llama3Rope>),
    /// A kind quantfit does not implement (its name): the planner sizes such a model, the
    /// converter and the forward pass refuse it rather than run another model.
    Unsupported(String),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Llama3Rope {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_context: f64,
}

impl RopeScaling {
    /// An error naming `origin` for a scaling the converter and forward pass cannot honour.
    pub fn check_supported(&self, origin: &str) -> Result<()> {
        match self {
            RopeScaling::Unsupported(kind) => bail!(
                "{origin}: \"rope_scaling\" of type {kind:?} is not supported yet (quantfit would write or run a model llama.cpp runs differently)"
            ),
            _ => Ok(()),
        }
    }
}

impl HParams {
    pub fn q_dim(&self) -> u64 {
        self.n_head * self.head_dim
    }
    pub fn kv_dim(&self) -> u64 {
        self.n_head_kv * self.head_dim
    }
    pub const fn is_moe(&self) -> bool {
        self.n_expert > 0
    }
}

/// A tensor dimension as a function of the hyperparameters.
#[derive(Clone, Copy, Debug)]
pub enum Dim {
    Embd,
    Ff,
    Vocab,
    /// n_head x head_dim.
    Q,
    /// n_head_kv x head_dim.
    Kv,
    /// head_dim / 2: one value per RoPE frequency.
    HalfHead,
    /// One head (Qwen3's per-head Q/K norms).
    Head,
    /// Routed experts, the outermost dimension of stacked expert tensors.
    Expert,
    /// One expert's feed-forward width.
    FfExpert,
    /// Q, K and V rows fused (Phi-3's qkv_proj).
    QkvFused,
    /// Gate and up rows fused (Phi-3's gate_up_proj).
    GateUpFused,
}

impl Dim {
    fn of(self, h: &HParams) -> u64 {
        match self {
            Dim::Embd => h.n_embd,
            Dim::Ff => h.n_ff,
            Dim::Vocab => h.vocab_size,
            Dim::Q => h.q_dim(),
            Dim::Kv => h.kv_dim(),
            Dim::HalfHead => h.head_dim / 2,
            Dim::Head => h.head_dim,
            Dim::Expert => h.n_expert,
            Dim::FfExpert => h.n_ff_expert,
            Dim::QkvFused => h.q_dim() + 2 * h.kv_dim(),
            Dim::GateUpFused => 2 * h.n_ff,
        }
    }
}

/// Whether a tensor is in a model with given hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Required,
    /// Written when the checkpoint has it (a tied model's duplicate `lm_head.weight`).
    Optional,
    /// Not part of the model: a checkpoint that has it is inconsistent with its config.
    Absent,
}

impl Presence {
    /// Required where `present`, else absent.
    pub const fn required_if(present: bool) -> Presence {
        if present {
            Presence::Required
        } else {
            Presence::Absent
        }
    }
}

/// What a tensor needs between the checkpoint and the GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    None,
    /// llama.cpp's RoPE row order for Q (heads = n_head) or K (heads = n_head_kv).
    PermuteQ,
    PermuteK,
    /// Not in the checkpoint: computed from the hyperparameters, as llama.cpp's converter
    /// generates it.
    Generate(Generator),
    /// One checkpoint tensor per expert (`{e}` in the name), stacked along a new outermost
    /// dimension in expert order, as llama.cpp's converter merges them.
    StackExperts,
    /// Gemma's norm weights are stored as offsets from 1: llama.cpp's converter adds 1, in f32
    /// on the checkpoint's values widened to f32.
    AddOne,
}

/// A tensor llama.cpp's converter computes rather than copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generator {
    /// `rope_freqs.weight` of Llama 3.1's RoPE scaling.
    Llama3RopeFactors,
}

impl Generator {
    pub fn values(self, h: &HParams) -> Result<Vec<f32>> {
        match (self, &h.rope_scaling) {
            (Generator::Llama3RopeFactors, RopeScaling::Llama3(Some(r))) => {
                Ok(llama3_rope_factors(h.head_dim, h.rope_theta, r))
            }
            _ => bail!("rope_freqs.weight needs Llama 3 rope_scaling parameters"),
        }
    }
}

/// Llama 3.1's RoPE frequency divisors, in float32 step by step as llama.cpp's converter
/// computes them with torch (conversion/llama.py `generate_extra_tensors`, after Meta's
/// `apply_scaling`): 1 for wavelengths shorter than original_context / high_freq_factor,
/// `factor` for those longer than original_context / low_freq_factor, smooth in between.
/// torch computes `a / t` as `t.reciprocal() * a` and keeps python scalars as float32.
pub fn llama3_rope_factors(head_dim: u64, theta: f64, r: &Llama3Rope) -> Vec<f32> {
    let dim = head_dim as f32;
    let (low_wavelen, high_wavelen) = (
        (r.original_context / r.low_freq_factor) as f32,
        (r.original_context / r.high_freq_factor) as f32,
    );
    let (factor, low, high, context) = (
        r.factor as f32,
        r.low_freq_factor as f32,
        r.high_freq_factor as f32,
        r.original_context as f32,
    );
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f32).powf((2 * i) as f32 / dim);
            let wavelen = (1.0 / freq) * std::f64::consts::TAU as f32;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = ((1.0 / wavelen) * context - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// One tensor of the architecture. Names use `{i}` for the layer index; `dims` are GGUF's
/// order, innermost first (the checkpoint's shape reversed).
#[derive(Debug)]
pub struct TensorDef {
    pub hf: &'static str,
    pub gguf: &'static str,
    pub dims: &'static [Dim],
    pub presence: fn(&Architecture, &HParams) -> Presence,
    pub transform: Transform,
}

/// A tensor as one model has it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedTensor {
    pub hf: String,
    pub gguf: String,
    pub dims: Vec<u64>,
    pub presence: Presence,
    pub transform: Transform,
}

impl ExpectedTensor {
    /// Heads to permute by, if the tensor is permuted.
    pub fn permute_heads(&self, h: &HParams) -> Option<u64> {
        match self.transform {
            Transform::None => None,
            Transform::PermuteQ => Some(h.n_head),
            Transform::PermuteK => Some(h.n_head_kv),
            Transform::Generate(_) | Transform::StackExperts | Transform::AddOne => None,
        }
    }

    /// The checkpoint tensors it is read from, in order: one per expert for a stacked tensor,
    /// none for a generated one.
    pub fn sources(&self, h: &HParams) -> Vec<String> {
        match self.transform {
            Transform::Generate(_) => Vec::new(),
            Transform::StackExperts => (0..h.n_expert)
                .map(|e| self.hf.replace("{e}", &e.to_string()))
                .collect(),
            _ => vec![self.hf.clone()],
        }
    }
}

/// An `{arch}.*` metadata key and the hyperparameter it carries.
#[derive(Clone, Copy, Debug)]
pub enum Meta {
    BlockCount,
    ContextLength,
    EmbeddingLength,
    FeedForwardLength,
    HeadCount,
    HeadCountKv,
    RopeFreqBase,
    RmsEps,
    RopeDimensionCount,
    VocabSize,
    /// Written when config.json states head_dim (as llama.cpp does).
    KeyLength,
    ValueLength,
    /// Written for mixture-of-experts models only.
    ExpertCount,
    ExpertUsedCount,
    ExpertFeedForwardLength,
    /// Written for sliding-window models only.
    RopeFreqBaseSwa,
    SlidingWindow,
    /// Written when the model caps its final logits, or its attention scores.
    FinalLogitSoftcapping,
    AttnLogitSoftcapping,
}

/// A metadata value in the two kinds these keys use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetaValue {
    U32(u32),
    F32(f32),
}

impl Meta {
    pub fn key(self) -> &'static str {
        match self {
            Meta::BlockCount => "block_count",
            Meta::ContextLength => "context_length",
            Meta::EmbeddingLength => "embedding_length",
            Meta::FeedForwardLength => "feed_forward_length",
            Meta::HeadCount => "attention.head_count",
            Meta::HeadCountKv => "attention.head_count_kv",
            Meta::RopeFreqBase => "rope.freq_base",
            Meta::RmsEps => "attention.layer_norm_rms_epsilon",
            Meta::RopeDimensionCount => "rope.dimension_count",
            Meta::VocabSize => "vocab_size",
            Meta::KeyLength => "attention.key_length",
            Meta::ValueLength => "attention.value_length",
            Meta::ExpertCount => "expert_count",
            Meta::ExpertUsedCount => "expert_used_count",
            Meta::ExpertFeedForwardLength => "expert_feed_forward_length",
            Meta::RopeFreqBaseSwa => "rope.freq_base_swa",
            Meta::SlidingWindow => "attention.sliding_window",
            Meta::FinalLogitSoftcapping => "final_logit_softcapping",
            Meta::AttnLogitSoftcapping => "attn_logit_softcapping",
        }
    }

    /// The value written for `h`, or None when the key is left out.
    pub fn value(self, h: &HParams) -> Option<MetaValue> {
        let u = |v: u64| Some(MetaValue::U32(v as u32));
        match self {
            Meta::BlockCount => u(h.n_layer),
            Meta::ContextLength => u(h.context_length),
            Meta::EmbeddingLength => u(h.n_embd),
            Meta::FeedForwardLength => u(h.n_ff),
            Meta::HeadCount => u(h.n_head),
            Meta::HeadCountKv => u(h.n_head_kv),
            Meta::RopeFreqBase => Some(MetaValue::F32(h.rope_theta as f32)),
            Meta::RmsEps => Some(MetaValue::F32(h.rms_eps as f32)),
            Meta::RopeDimensionCount => u(h.head_dim),
            Meta::VocabSize => u(h.vocab_size),
            Meta::KeyLength | Meta::ValueLength if h.head_dim_stated => u(h.head_dim),
            Meta::KeyLength | Meta::ValueLength => None,
            Meta::ExpertCount if h.is_moe() => u(h.n_expert),
            Meta::ExpertUsedCount if h.is_moe() => u(h.n_expert_used),
            Meta::ExpertFeedForwardLength if h.is_moe() => u(h.n_ff_expert),
            Meta::ExpertCount | Meta::ExpertUsedCount | Meta::ExpertFeedForwardLength => None,
            Meta::RopeFreqBaseSwa if h.sliding_window > 0 => {
                Some(MetaValue::F32(h.rope_theta_swa as f32))
            }
            Meta::SlidingWindow if h.sliding_window > 0 => u(h.sliding_window),
            Meta::RopeFreqBaseSwa | Meta::SlidingWindow => None,
            Meta::FinalLogitSoftcapping if h.final_softcap > 0.0 => {
                Some(MetaValue::F32(h.final_softcap as f32))
            }
            Meta::FinalLogitSoftcapping => None,
            Meta::AttnLogitSoftcapping if h.attn_softcap > 0.0 => {
                Some(MetaValue::F32(h.attn_softcap as f32))
            }
            Meta::AttnLogitSoftcapping => None,
        }
    }
}

/// How the forward pass applies RoPE to a model converted from this architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs: the converter permutes Q/K rows into llama.cpp's order.
    Adjacent,
    /// The two halves of each head (llama.cpp's NEOX mode), Hugging Face's own row order.
    Neox,
}

/// How far quantfit supports an architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Support {
    pub convert: bool,
    pub forward: bool,
}

#[derive(Debug)]
pub struct Architecture {
    /// `architectures[0]` values in config.json.
    pub hf_classes: &'static [&'static str],
    /// `general.architecture` and the metadata key prefix.
    pub gguf_name: &'static str,
    pub tensors: &'static [TensorDef],
    /// Per-head RMS norms on queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Checkpoint tensors that llama.cpp recomputes and the converter skips (name suffixes).
    pub ignored_suffixes: &'static [&'static str],
    pub metadata: &'static [Meta],
    pub rope: RopeLayout,
    /// llama.cpp's LLM_TYPE_70B for this architecture (it changes the attn_v quant rule).
    pub type_70b: fn(&HParams) -> bool,
    /// Mixture-of-experts routing: the top-k softmax weights renormalized to sum to one
    /// (llama.cpp's `norm_w` of build_moe_ffn for this architecture).
    pub norm_expert_weights: bool,
    /// transformers' default for `tie_word_embeddings` when config.json leaves it out.
    pub tied_by_default: bool,
    /// Sliding-window layers: every layer `il` with `il % n < n - 1` of llama.cpp's fixed
    /// pattern `n` for the architecture (its loader's `set_swa_pattern`; the file does not
    /// record it), 0 for none.
    pub swa_pattern: u64,
    /// The gated feed-forward's activation on the gate.
    pub activation: Activation,
    /// Token embeddings multiplied by sqrt(n_embd) before the first layer (Gemma).
    pub scale_embeddings: bool,
    /// The queries' scale before the attention scores (llama.cpp's `f_attention_scale` where
    /// the architecture sets one, else 1 / sqrt(head_dim)).
    pub query_scale: fn(&HParams) -> f64,
    /// llama.cpp's graph caps attention scores (`attn_soft_cap`, Gemma 2): the caps it assumes
    /// when a file leaves out the key, (attention, final logits); None: no attention cap.
    pub softcap_defaults: Option<(f64, f64)>,
    /// Whether a SentencePiece vocabulary adds a space before the text (llama.cpp's
    /// `add_space_prefix`; Gemma's converters write false).
    pub spm_space_prefix: bool,
    pub support: Support,
}

/// 1 / sqrt(head_dim): the attention scale of every architecture that sets none.
fn per_head_dim(h: &HParams) -> f64 {
    1.0 / (h.head_dim as f64).sqrt()
}

/// Gemma's scale (gemma_pytorch's `query_pre_attn_scalar`, as llama.cpp derives it): for the
/// 27B model, whose layer count llama.cpp recognises (`layers_27b`), 1 / sqrt(n_embd /
/// n_head); for every other size 1 / sqrt(head_dim).
fn gemma_query_scale(h: &HParams, layers_27b: u64) -> f64 {
    if h.n_layer == layers_27b {
        1.0 / ((h.n_embd / h.n_head) as f64).sqrt()
    } else {
        per_head_dim(h)
    }
}

/// The activation of a gated feed-forward block, down(act(gate x) * up x).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU.
    Silu,
    /// GeGLU with the tanh approximation (Gemma's gelu_pytorch_tanh).
    GeluTanh,
}

const fn always(_: &Architecture, _: &HParams) -> Presence {
    Presence::Required
}
const fn untied(_: &Architecture, h: &HParams) -> Presence {
    if h.tie_embeddings {
        Presence::Optional
    } else {
        Presence::Required
    }
}
const fn with_llama3_rope(_: &Architecture, h: &HParams) -> Presence {
    Presence::required_if(matches!(h.rope_scaling, RopeScaling::Llama3(_)))
}
const fn dense_ffn(_: &Architecture, h: &HParams) -> Presence {
    Presence::required_if(!h.is_moe())
}
const fn moe_ffn(_: &Architecture, h: &HParams) -> Presence {
    Presence::required_if(h.is_moe())
}
const fn with_qk_norm(a: &Architecture, _: &HParams) -> Presence {
    Presence::required_if(a.qk_norm)
}
const fn with_bias(_: &Architecture, h: &HParams) -> Presence {
    Presence::required_if(h.attn_bias)
}

const fn t(
    hf: &'static str,
    gguf: &'static str,
    dims: &'static [Dim],
    presence: fn(&Architecture, &HParams) -> Presence,
    transform: Transform,
) -> TensorDef {
    TensorDef {
        hf,
        gguf,
        dims,
        presence,
        transform,
    }
}

use Dim::{Embd, Expert, Ff, FfExpert, GateUpFused, HalfHead, Head, Kv, QkvFused, Vocab, Q};
use Transform::{AddOne, PermuteK, PermuteQ, StackExperts};

/// The Llama layout (Llama 2/3, Mistral, SmolLM, TinyLlama): optional Q/K/V/O biases; with
/// experts (Mixtral), a router and stacked expert matrices in place of the dense FFN.
#[rustfmt::skip]
static LLAMA_TENSORS: &[TensorDef] = &[
    t("", "rope_freqs.weight", &[HalfHead], with_llama3_rope, Transform::Generate(Generator::Llama3RopeFactors)),
    t("model.embed_tokens.weight", "token_embd.weight", &[Embd, Vocab], always, Transform::None),
    t("model.norm.weight", "output_norm.weight", &[Embd], always, Transform::None),
    t("lm_head.weight", "output.weight", &[Embd, Vocab], untied, Transform::None),
    t("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", &[Embd], always, Transform::None),
    t("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", &[Embd, Q], always, PermuteQ),
    t("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", &[Embd, Kv], always, PermuteK),
    t("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight", &[Embd, Kv], always, Transform::None),
    t("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight", &[Q, Embd], always, Transform::None),
    t("model.layers.{i}.self_attn.q_proj.bias", "blk.{i}.attn_q.bias", &[Q], with_bias, PermuteQ),
    t("model.layers.{i}.self_attn.k_proj.bias", "blk.{i}.attn_k.bias", &[Kv], with_bias, PermuteK),
    t("model.layers.{i}.self_attn.v_proj.bias", "blk.{i}.attn_v.bias", &[Kv], with_bias, Transform::None),
    t("model.layers.{i}.self_attn.o_proj.bias", "blk.{i}.attn_output.bias", &[Embd], with_bias, Transform::None),
    t("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight", &[Embd], always, Transform::None),
    t("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight", &[Embd, Ff], dense_ffn, Transform::None),
    t("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", &[Embd, Ff], dense_ffn, Transform::None),
    t("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", &[Ff, Embd], dense_ffn, Transform::None),
    t("model.layers.{i}.block_sparse_moe.gate.weight", "blk.{i}.ffn_gate_inp.weight", &[Embd, Expert], moe_ffn, Transform::None),
    t("model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight", "blk.{i}.ffn_gate_exps.weight", &[Embd, FfExpert, Expert], moe_ffn, StackExperts),
    t("model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight", "blk.{i}.ffn_up_exps.weight", &[Embd, FfExpert, Expert], moe_ffn, StackExperts),
    t("model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight", "blk.{i}.ffn_down_exps.weight", &[FfExpert, Embd, Expert], moe_ffn, StackExperts),
];

/// Qwen2: the Llama layout with Q/K/V biases always and no output bias, rows unpermuted.
#[rustfmt::skip]
static QWEN2_TENSORS: &[TensorDef] = &[
    t("model.embed_tokens.weight", "token_embd.weight", &[Embd, Vocab], always, Transform::None),
    t("model.norm.weight", "output_norm.weight", &[Embd], always, Transform::None),
    t("lm_head.weight", "output.weight", &[Embd, Vocab], untied, Transform::None),
    t("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", &[Embd], always, Transform::None),
    t("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", &[Embd, Q], always, Transform::None),
    t("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", &[Embd, Kv], always, Transform::None),
    t("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight", &[Embd, Kv], always, Transform::None),
    t("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight", &[Q, Embd], always, Transform::None),
    t("model.layers.{i}.self_attn.q_proj.bias", "blk.{i}.attn_q.bias", &[Q], always, Transform::None),
    t("model.layers.{i}.self_attn.k_proj.bias", "blk.{i}.attn_k.bias", &[Kv], always, Transform::None),
    t("model.layers.{i}.self_attn.v_proj.bias", "blk.{i}.attn_v.bias", &[Kv], always, Transform::None),
    t("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight", &[Embd], always, Transform::None),
    t("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight", &[Embd, Ff], always, Transform::None),
    t("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", &[Embd, Ff], always, Transform::None),
    t("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", &[Ff, Embd], always, Transform::None),
];

/// Qwen3: per-head RMS norms on queries and keys before RoPE, Hugging Face's row order, biases
/// only when `attention_bias` says so; with experts (Qwen3-MoE), a router and stacked expert
/// matrices in place of the dense FFN.
#[rustfmt::skip]
static QWEN3_TENSORS: &[TensorDef] = &[
    t("model.embed_tokens.weight", "token_embd.weight", &[Embd, Vocab], always, Transform::None),
    t("model.norm.weight", "output_norm.weight", &[Embd], always, Transform::None),
    t("lm_head.weight", "output.weight", &[Embd, Vocab], untied, Transform::None),
    t("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", &[Embd], always, Transform::None),
    t("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", &[Embd, Q], always, Transform::None),
    t("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", &[Embd, Kv], always, Transform::None),
    t("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight", &[Embd, Kv], always, Transform::None),
    t("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight", &[Q, Embd], always, Transform::None),
    t("model.layers.{i}.self_attn.q_proj.bias", "blk.{i}.attn_q.bias", &[Q], with_bias, Transform::None),
    t("model.layers.{i}.self_attn.k_proj.bias", "blk.{i}.attn_k.bias", &[Kv], with_bias, Transform::None),
    t("model.layers.{i}.self_attn.v_proj.bias", "blk.{i}.attn_v.bias", &[Kv], with_bias, Transform::None),
    t("model.layers.{i}.self_attn.o_proj.bias", "blk.{i}.attn_output.bias", &[Embd], with_bias, Transform::None),
    t("model.layers.{i}.self_attn.q_norm.weight", "blk.{i}.attn_q_norm.weight", &[Head], with_qk_norm, Transform::None),
    t("model.layers.{i}.self_attn.k_norm.weight", "blk.{i}.attn_k_norm.weight", &[Head], with_qk_norm, Transform::None),
    t("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight", &[Embd], always, Transform::None),
    t("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight", &[Embd, Ff], dense_ffn, Transform::None),
    t("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", &[Embd, Ff], dense_ffn, Transform::None),
    t("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", &[Ff, Embd], dense_ffn, Transform::None),
    t("model.layers.{i}.mlp.gate.weight", "blk.{i}.ffn_gate_inp.weight", &[Embd, Expert], moe_ffn, Transform::None),
    t("model.layers.{i}.mlp.experts.{e}.gate_proj.weight", "blk.{i}.ffn_gate_exps.weight", &[Embd, FfExpert, Expert], moe_ffn, StackExperts),
    t("model.layers.{i}.mlp.experts.{e}.up_proj.weight", "blk.{i}.ffn_up_exps.weight", &[Embd, FfExpert, Expert], moe_ffn, StackExperts),
    t("model.layers.{i}.mlp.experts.{e}.down_proj.weight", "blk.{i}.ffn_down_exps.weight", &[FfExpert, Embd, Expert], moe_ffn, StackExperts),
];

/// Gemma 2 and 3 (text): norms after attention and after the FFN as well as before them,
/// every norm weight + 1, Hugging Face's row order (NEOX RoPE), tied embeddings; Gemma 3 adds
/// per-head Q/K norms.
#[rustfmt::skip]
static GEMMA_TENSORS: &[TensorDef] = &[
    t("model.embed_tokens.weight", "token_embd.weight", &[Embd, Vocab], always, Transform::None),
    t("model.norm.weight", "output_norm.weight", &[Embd], always, AddOne),
    t("lm_head.weight", "output.weight", &[Embd, Vocab], untied, Transform::None),
    t("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", &[Embd], always, AddOne),
    t("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", &[Embd, Q], always, Transform::None),
    t("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", &[Embd, Kv], always, Transform::None),
    t("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight", &[Embd, Kv], always, Transform::None),
    t("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight", &[Q, Embd], always, Transform::None),
    t("model.layers.{i}.self_attn.q_norm.weight", "blk.{i}.attn_q_norm.weight", &[Head], with_qk_norm, AddOne),
    t("model.layers.{i}.self_attn.k_norm.weight", "blk.{i}.attn_k_norm.weight", &[Head], with_qk_norm, AddOne),
    t("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.post_attention_norm.weight", &[Embd], always, AddOne),
    t("model.layers.{i}.pre_feedforward_layernorm.weight", "blk.{i}.ffn_norm.weight", &[Embd], always, AddOne),
    t("model.layers.{i}.post_feedforward_layernorm.weight", "blk.{i}.post_ffw_norm.weight", &[Embd], always, AddOne),
    t("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight", &[Embd, Ff], always, Transform::None),
    t("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", &[Embd, Ff], always, Transform::None),
    t("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", &[Ff, Embd], always, Transform::None),
];

/// Phi-3: fused QKV and gate+up projections, kept fused in GGUF. Sized by the planner; the
/// converter and the forward pass do not take it yet.
#[rustfmt::skip]
static PHI3_TENSORS: &[TensorDef] = &[
    t("model.embed_tokens.weight", "token_embd.weight", &[Embd, Vocab], always, Transform::None),
    t("model.norm.weight", "output_norm.weight", &[Embd], always, Transform::None),
    t("lm_head.weight", "output.weight", &[Embd, Vocab], untied, Transform::None),
    t("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", &[Embd], always, Transform::None),
    t("model.layers.{i}.self_attn.qkv_proj.weight", "blk.{i}.attn_qkv.weight", &[Embd, QkvFused], always, Transform::None),
    t("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight", &[Q, Embd], always, Transform::None),
    t("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight", &[Embd], always, Transform::None),
    t("model.layers.{i}.mlp.gate_up_proj.weight", "blk.{i}.ffn_up.weight", &[Embd, GateUpFused], always, Transform::None),
    t("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", &[Ff, Embd], always, Transform::None),
];

/// The keys of llama.cpp's `TextModel.set_gguf_parameters`, in its order (file_type, which it
/// writes next, goes last here as llama-quantize rewrites it).
macro_rules! text_model_meta {
    ($($extra:expr),*) => {
        &[
            Meta::BlockCount,
            Meta::ContextLength,
            Meta::EmbeddingLength,
            Meta::FeedForwardLength,
            Meta::HeadCount,
            Meta::HeadCountKv,
            Meta::RopeFreqBase,
            Meta::RmsEps,
            Meta::ExpertCount,
            Meta::ExpertUsedCount,
            Meta::KeyLength,
            Meta::ValueLength,
            $($extra),*
        ]
    };
}

/// `LlamaModel` adds the vocabulary size and RoPE dimensions.
static LLAMA_META: &[Meta] = text_model_meta!(Meta::VocabSize, Meta::RopeDimensionCount);
/// Qwen2 and Qwen3 write the text-model keys only.
static QWEN_META: &[Meta] = text_model_meta!();
/// `Qwen2MoeModel` adds each expert's width.
static QWEN_MOE_META: &[Meta] = text_model_meta!(Meta::ExpertFeedForwardLength);
/// `Gemma3Model`: the sliding layers' RoPE base (set right after the global one, so in its
/// place), the final soft cap and the window; no expert keys for it (dense only).
static GEMMA3_META: &[Meta] = &[
    Meta::BlockCount,
    Meta::ContextLength,
    Meta::EmbeddingLength,
    Meta::FeedForwardLength,
    Meta::HeadCount,
    Meta::HeadCountKv,
    Meta::RopeFreqBase,
    Meta::RopeFreqBaseSwa,
    Meta::RmsEps,
    Meta::KeyLength,
    Meta::ValueLength,
    Meta::FinalLogitSoftcapping,
    Meta::SlidingWindow,
];

/// `Gemma2Model` writes its own keys (no RoPE base: llama.cpp's default 10000 holds), the two
/// soft caps and the window.
static GEMMA2_META: &[Meta] = &[
    Meta::ContextLength,
    Meta::EmbeddingLength,
    Meta::BlockCount,
    Meta::FeedForwardLength,
    Meta::HeadCount,
    Meta::HeadCountKv,
    Meta::RmsEps,
    Meta::KeyLength,
    Meta::ValueLength,
    Meta::AttnLogitSoftcapping,
    Meta::FinalLogitSoftcapping,
    Meta::SlidingWindow,
];

/// llama.cpp's llama loader: 80 layers are 70B with grouped-query attention (65B without),
/// unless the model has 8 experts (then its type names the mixture).
fn llama_70b(h: &HParams) -> bool {
    h.n_layer == 80 && h.n_head != h.n_head_kv && h.n_expert != 8
}

pub static ARCHITECTURES: &[Architecture] = &[
    Architecture {
        hf_classes: &[
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "MixtralForCausalLM",
        ],
        gguf_name: "llama",
        tensors: LLAMA_TENSORS,
        qk_norm: false,
        ignored_suffixes: &["rotary_emb.inv_freq"],
        metadata: LLAMA_META,
        rope: RopeLayout::Adjacent,
        type_70b: llama_70b,
        norm_expert_weights: true,
        tied_by_default: false,
        swa_pattern: 0,
        activation: Activation::Silu,
        scale_embeddings: false,
        query_scale: per_head_dim,
        softcap_defaults: None,
        spm_space_prefix: true,
        support: Support {
            convert: true,
            forward: true,
        },
    },
    Architecture {
        hf_classes: &["Qwen2ForCausalLM"],
        gguf_name: "qwen2",
        tensors: QWEN2_TENSORS,
        qk_norm: false,
        ignored_suffixes: &["rotary_emb.inv_freq"],
        metadata: QWEN_META,
        rope: RopeLayout::Neox,
        // llama.cpp's qwen2 loader: 80 layers are 70B whatever the heads.
        type_70b: |h| h.n_layer == 80,
        norm_expert_weights: true,
        tied_by_default: false,
        swa_pattern: 0,
        activation: Activation::Silu,
        scale_embeddings: false,
        query_scale: per_head_dim,
        softcap_defaults: None,
        spm_space_prefix: true,
        support: Support {
            convert: true,
            forward: true,
        },
    },
    Architecture {
        hf_classes: &["Qwen3ForCausalLM"],
        gguf_name: "qwen3",
        tensors: QWEN3_TENSORS,
        qk_norm: true,
        ignored_suffixes: &["rotary_emb.inv_freq"],
        metadata: QWEN_META,
        rope: RopeLayout::Neox,
        type_70b: |_| false,
        norm_expert_weights: true,
        tied_by_default: false,
        swa_pattern: 0,
        activation: Activation::Silu,
        scale_embeddings: false,
        query_scale: per_head_dim,
        softcap_defaults: None,
        spm_space_prefix: true,
        support: Support {
            convert: true,
            forward: true,
        },
    },
    Architecture {
        hf_classes: &["Qwen3MoeForCausalLM"],
        gguf_name: "qwen3moe",
        tensors: QWEN3_TENSORS,
        qk_norm: true,
        ignored_suffixes: &["rotary_emb.inv_freq"],
        metadata: QWEN_MOE_META,
        rope: RopeLayout::Neox,
        type_70b: |_| false,
        // llama.cpp's qwen3moe graph renormalizes whatever config.json's norm_topk_prob says.
        norm_expert_weights: true,
        tied_by_default: false,
        swa_pattern: 0,
        activation: Activation::Silu,
        scale_embeddings: false,
        query_scale: per_head_dim,
        softcap_defaults: None,
        spm_space_prefix: true,
        support: Support {
            convert: true,
            forward: true,
        },
    },
    Architecture {
        hf_classes: &["Gemma3ForCausalLM"],
        gguf_name: "gemma3",
        tensors: GEMMA_TENSORS,
        qk_norm: true,
        ignored_suffixes: &["rotary_emb.inv_freq"],
        metadata: GEMMA3_META,
        rope: RopeLayout::Neox,
        type_70b: |_| false,
        norm_expert_weights: true,
        tied_by_default: true,
        swa_pattern: 6,
        activation: Activation::GeluTanh,
        scale_embeddings: true,
        query_scale: |h| gemma_query_scale(h, 62),
        softcap_defaults: None,
        spm_space_prefix: false,
        support: Support {
            convert: true,
            forward: true,
        },
    },
    Architecture {
        hf_classes: &["Gemma2ForCausalLM"],
        gguf_name: "gemma2",
        tensors: GEMMA_TENSORS,
        qk_norm: false,
        ignored_suffixes: &["rotary_emb.inv_freq"],
        metadata: GEMMA2_META,
        rope: RopeLayout::Neox,
        type_70b: |_| false,
        norm_expert_weights: true,
        tied_by_default: true,
        swa_pattern: 2,
        activation: Activation::GeluTanh,
        scale_embeddings: true,
        query_scale: |h| gemma_query_scale(h, 46),
        softcap_defaults: Some((50.0, 30.0)),
        spm_space_prefix: false,
        support: Support {
            convert: true,
            forward: true,
        },
    },
    Architecture {
        hf_classes: &["Phi3ForCausalLM"],
        gguf_name: "phi3",
        tensors: PHI3_TENSORS,
        qk_norm: false,
        ignored_suffixes: &["rotary_emb.inv_freq"],
        metadata: QWEN_META,
        rope: RopeLayout::Neox,
        type_70b: |_| false,
        norm_expert_weights: true,
        tied_by_default: false,
        swa_pattern: 0,
        activation: Activation::Silu,
        scale_embeddings: false,
        query_scale: per_head_dim,
        softcap_defaults: None,
        spm_space_prefix: true,
        support: Support {
            convert: false,
            forward: false,
        },
    },
];

pub fn supported_classes() -> Vec<&'static str> {
    ARCHITECTURES
        .iter()
        .filter(|a| a.support.convert)
        .flat_map(|a| a.hf_classes.iter().copied())
        .collect()
}

/// The description of a Hugging Face class (any support level).
pub fn describe(class: &str) -> Result<&'static Architecture> {
    match ARCHITECTURES.iter().find(|a| a.hf_classes.contains(&class)) {
        Some(a) => Ok(a),
        None => {
            let planned_only: Vec<&str> = ARCHITECTURES
                .iter()
                .filter(|a| !a.support.convert)
                .flat_map(|a| a.hf_classes.iter().copied())
                .collect();
            bail!(
                "unsupported architecture {class}; supported: {}; sized by plan only: {}",
                supported_classes().join(", "),
                planned_only.join(", ")
            )
        }
    }
}

/// The description of a Hugging Face class the converter takes.
pub fn find(class: &str) -> Result<&'static Architecture> {
    let a = describe(class)?;
    if !a.support.convert {
        bail!(
            "architecture {class} is not converted by quantfit yet (it can be planned); supported: {}",
            supported_classes().join(", ")
        );
    }
    Ok(a)
}

/// The description behind a GGUF `general.architecture` name.
pub fn by_gguf_name(name: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|a| a.gguf_name == name)
}

impl Architecture {
    /// Every tensor of a model with these hyperparameters, in description order (layers
    /// expanded), with presence, GGUF dims and transform.
    pub fn expected_tensors(&self, h: &HParams) -> Vec<ExpectedTensor> {
        let mut out = Vec::new();
        let expand = |d: &TensorDef, i: Option<u64>| {
            let name = |s: &str| match i {
                Some(i) => s.replace("{i}", &i.to_string()),
                None => s.to_string(),
            };
            let dims: Vec<u64> = d.dims.iter().map(|x| x.of(h)).collect();
            ExpectedTensor {
                hf: name(d.hf),
                gguf: name(d.gguf),
                dims,
                presence: (d.presence)(self, h),
                transform: d.transform,
            }
        };
        for d in self.tensors.iter().filter(|d| !d.hf.contains("{i}")) {
            out.push(expand(d, None));
        }
        for i in 0..h.n_layer {
            for d in self.tensors.iter().filter(|d| d.hf.contains("{i}")) {
                out.push(expand(d, Some(i)));
            }
        }
        out
    }

    /// The `{arch}.*` metadata keys and values for `h`, in the order llama.cpp writes them.
    pub fn metadata_values(&self, h: &HParams) -> Vec<(String, MetaValue)> {
        self.metadata
            .iter()
            .filter_map(|m| Some((format!("{}.{}", self.gguf_name, m.key()), m.value(h)?)))
            .collect()
    }

    /// Whether a checkpoint tensor is one the converter skips on purpose.
    pub fn ignores(&self, hf: &str) -> bool {
        self.ignored_suffixes.iter().any(|s| hf.ends_with(s))
    }
}

fn get_u64(config: &Json, path: &Path, key: &str) -> Result<u64> {
    match config.get(key) {
        Some(v) => v.as_u64().with_context(|| {
            format!(
                "{}: \"{key}\" is not a non-negative integer",
                path.display()
            )
        }),
        None => bail!("{}: missing required key \"{key}\"", path.display()),
    }
}

/// Sane ranges for hyperparameters, so that shapes computed from them stay meaningful.
fn check_ranges(h: &HParams, path: &Path) -> Result<()> {
    for (key, v, max) in [
        ("hidden_size", h.n_embd, 1 << 20),
        ("intermediate_size", h.n_ff, 1 << 22),
        ("num_hidden_layers", h.n_layer, 1 << 12),
        ("num_attention_heads", h.n_head, 1 << 14),
        ("num_key_value_heads", h.n_head_kv, 1 << 14),
        ("head_dim", h.head_dim, 1 << 14),
        ("vocab_size", h.vocab_size, 1 << 24),
        ("max_position_embeddings", h.context_length, 1 << 26),
        ("moe_intermediate_size", h.n_ff_expert, 1 << 22),
    ] {
        if v == 0 || v > max {
            bail!("{}: \"{key}\" is {v}; expected 1 to {max}", path.display());
        }
    }
    // A norm divides by sqrt(mean + eps) and RoPE raises the base to fractional powers: a
    // zero or negative value gives NaN or infinite activations, not a model.
    for (key, v, max) in [
        ("rms_norm_eps", h.rms_eps, 1.0),
        ("rope_theta", h.rope_theta, 1e12),
    ] {
        if !(v > 0.0 && v <= max) {
            bail!(
                "{}: \"{key}\" is {v}; expected above 0 and at most {max}",
                path.display()
            );
        }
    }
    if h.sliding_window > 0 && !(h.rope_theta_swa > 0.0 && h.rope_theta_swa <= 1e12) {
        bail!(
            "{}: \"rope_local_base_freq\" is {}; expected above 0 and at most 1e12",
            path.display(),
            h.rope_theta_swa
        );
    }
    Ok(())
}

impl HParams {
    /// The hyperparameters from a model's config.json, as the description's architecture reads
    /// them; the one config.json parser of quantfit.
    pub fn from_config(config: &Json, path: &Path, arch: &Architecture) -> Result<HParams> {
        let n_embd = get_u64(config, path, "hidden_size")?;
        let n_head = get_u64(config, path, "num_attention_heads")?;
        if n_head == 0 || n_embd % n_head != 0 && config.get("head_dim").is_none_or(|v| v.is_null())
        {
            bail!(
                "{}: hidden_size {n_embd} is not a multiple of num_attention_heads {n_head}",
                path.display()
            );
        }
        let n_head_kv = match config.get("num_key_value_heads") {
            Some(v) if !v.is_null() => get_u64(config, path, "num_key_value_heads")?,
            _ => n_head,
        };
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            bail!(
                "{}: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_head_kv}",
                path.display()
            );
        }
        let head_dim_stated = config.get("head_dim").is_some_and(|v| !v.is_null());
        let head_dim = if head_dim_stated {
            get_u64(config, path, "head_dim")?
        } else {
            n_embd / n_head
        };
        let float = |key: &str, default: f64| -> Result<f64> {
            match config.get(key) {
                None | Some(Json::Null) => Ok(default),
                Some(v) => v.as_f64().filter(|x| x.is_finite()).with_context(|| {
                    format!("{}: \"{key}\" is not a finite number", path.display())
                }),
            }
        };
        let flag = |key: &str| config.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
        let rope_scaling = rope_scaling(config, path)?;
        // transformers 4.57 may keep the base inside rope_parameters only.
        let nested_theta = config
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .and_then(Json::as_f64)
            .filter(|x| x.is_finite() && *x > 0.0);
        let rope_theta = match config.get("rope_theta") {
            None | Some(Json::Null) => nested_theta.unwrap_or(10_000.0),
            Some(_) => float("rope_theta", 10_000.0)?,
        };
        let (n_expert, n_expert_used, n_ff_expert) = experts(config, path)?;
        let n_ff = get_u64(config, path, "intermediate_size")?;
        let n_layer = get_u64(config, path, "num_hidden_layers")?;
        let sliding_window = sliding_window(config, path, arch, n_layer)?;
        let final_softcap = float("final_logit_softcapping", 0.0)?;
        if final_softcap < 0.0 {
            bail!(
                "{}: \"final_logit_softcapping\" is {final_softcap}; expected a positive cap or null",
                path.display()
            );
        }
        let attn_softcap = match arch.softcap_defaults {
            // Gemma2Model writes config.json's caps as they are: both must be there.
            Some(_) => {
                for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
                    if float(key, 0.0)? <= 0.0 {
                        bail!(
                            "{}: \"{key}\" is missing or not positive; llama.cpp's {} caps with it",
                            path.display(),
                            arch.gguf_name
                        );
                    }
                }
                float("attn_logit_softcapping", 0.0)?
            }
            None if config
                .get("attn_logit_softcapping")
                .is_some_and(|v| !v.is_null()) =>
            {
                bail!(
                    "{}: \"attn_logit_softcapping\" is set; llama.cpp's {} has no attention soft cap",
                    path.display(),
                    arch.gguf_name
                )
            }
            None => 0.0,
        };
        let h = HParams {
            n_embd,
            n_ff,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_stated,
            context_length: get_u64(config, path, "max_position_embeddings")?,
            rms_eps: float("rms_norm_eps", 1e-6)?,
            rope_theta,
            vocab_size: get_u64(config, path, "vocab_size")?,
            tie_embeddings: config
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(arch.tied_by_default),
            attn_bias: arch.gguf_name == "qwen2" || flag("attention_bias"),
            rope_scaling,
            n_expert,
            n_expert_used,
            n_ff_expert: n_ff_expert.unwrap_or(n_ff),
            sliding_window,
            // Gemma 3's local base (transformers' default 10000); architectures that write
            // none use the global one on every layer, as llama.cpp does.
            rope_theta_swa: match sliding_window {
                0 => 0.0,
                _ if arch
                    .metadata
                    .iter()
                    .any(|m| matches!(m, Meta::RopeFreqBaseSwa)) =>
                {
                    float("rope_local_base_freq", 10_000.0)?
                }
                _ => rope_theta,
            },
            final_softcap,
            attn_softcap,
        };
        check_ranges(&h, path)?;
        check_query_scale(config, path, arch, &h)?;
        Ok(h)
    }
}

/// Gemma's `query_pre_attn_scalar` against the scale llama.cpp derives from the layer count
/// (it never reads the key): a config that disagrees would run differently there.
fn check_query_scale(config: &Json, path: &Path, arch: &Architecture, h: &HParams) -> Result<()> {
    let Some(stated) = config.get("query_pre_attn_scalar").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let scalar = stated.as_f64().filter(|x| x.is_finite() && *x > 0.0);
    let want = (arch.query_scale)(h);
    match scalar {
        Some(x) if ((1.0 / x.sqrt()) / want - 1.0).abs() < 1e-6 => Ok(()),
        _ => bail!(
            "{}: \"query_pre_attn_scalar\" is {stated}; llama.cpp's {} scales queries by 1/sqrt({}) for {} layers whatever the file says",
            path.display(),
            arch.gguf_name,
            1.0 / (want * want),
            h.n_layer
        ),
    }
}

/// The attention window of an architecture with sliding layers, checked against what
/// llama.cpp will assume: its loader fixes the pattern per architecture (`swa_pattern`), so a
/// config whose `layer_types` or `sliding_window_pattern` say otherwise would run differently
/// there. 0 when the architecture or the config has no sliding layers.
fn sliding_window(config: &Json, path: &Path, arch: &Architecture, n_layer: u64) -> Result<u64> {
    let n = arch.swa_pattern;
    if n == 0 {
        return Ok(0);
    }
    let pattern = match config.get("sliding_window_pattern") {
        Some(v) if !v.is_null() => get_u64(config, path, "sliding_window_pattern")?,
        _ => n,
    };
    // llama.cpp's converter writes no window for a pattern of 1 (every layer global).
    if pattern == 1 {
        return Ok(0);
    }
    if pattern != n {
        bail!(
            "{}: \"sliding_window_pattern\" is {pattern}; llama.cpp runs {} with a pattern of {n} whatever the file says",
            path.display(),
            arch.gguf_name
        );
    }
    if let Some(types) = config.get("layer_types").and_then(Json::as_array) {
        for (il, t) in types.iter().enumerate() {
            let sliding = (il as u64) % n < n - 1;
            let want = if sliding {
                "sliding_attention"
            } else {
                "full_attention"
            };
            if t.as_str() != Some(want) || types.len() as u64 != n_layer {
                bail!(
                    "{}: \"layer_types\"[{il}] is {t}; llama.cpp's {} makes layer {il} {want} ({} layers, every {n}th global)",
                    path.display(),
                    arch.gguf_name,
                    n_layer
                );
            }
        }
    }
    let window = get_u64(config, path, "sliding_window")?;
    if window == 0 || window > 1 << 24 {
        bail!(
            "{}: \"sliding_window\" is {window}; expected 1 to {}",
            path.display(),
            1u64 << 24
        );
    }
    Ok(window)
}

/// The mixture of experts config.json describes (under the key names llama.cpp's converter
/// looks for): (experts, experts per token, one expert's FFN width if stated), zeros for a
/// dense model.
fn experts(config: &Json, path: &Path) -> Result<(u64, u64, Option<u64>)> {
    let stated = |keys: &[&str]| -> Result<Option<u64>> {
        match keys
            .iter()
            .find(|k| config.get(**k).is_some_and(|v| !v.is_null()))
        {
            Some(k) => Ok(Some(get_u64(config, path, k)?)),
            None => Ok(None),
        }
    };
    let Some(n_expert) =
        stated(&["num_local_experts", "num_experts", "n_routed_experts"])?.filter(|&n| n > 0)
    else {
        return Ok((0, 0, None));
    };
    let used = stated(&["num_experts_per_tok", "num_experts_per_token"])?.with_context(|| {
        format!(
            "{}: {n_expert} experts, but no \"num_experts_per_tok\" says how many each token uses",
            path.display()
        )
    })?;
    if used == 0 || used > n_expert || n_expert > 1 << 12 {
        bail!(
            "{}: \"num_experts_per_tok\" is {used} of {n_expert} experts; expected 1 to the expert count (at most 4096)",
            path.display()
        );
    }
    // Qwen-MoE's dense layers among sparse ones: llama.cpp's qwen3moe has none.
    let step = stated(&["decoder_sparse_step"])?.unwrap_or(1);
    let dense_layers = config
        .get("mlp_only_layers")
        .and_then(Json::as_array)
        .is_some_and(|a| !a.is_empty());
    if step != 1 || dense_layers {
        bail!(
            "{}: dense layers among the expert layers (\"decoder_sparse_step\" {step}, \"mlp_only_layers\") are not supported (llama.cpp's converter has no such layout)",
            path.display()
        );
    }
    Ok((n_expert, used, stated(&["moe_intermediate_size"])?))
}

/// config.json's `rope_scaling` (transformers 4.57 also writes it as `rope_parameters`).
fn rope_scaling(config: &Json, path: &Path) -> Result<RopeScaling> {
    let Some(r) = ["rope_scaling", "rope_parameters"]
        .iter()
        .find_map(|k| config.get(*k).filter(|v| !v.is_null()))
    else {
        return Ok(RopeScaling::None);
    };
    let kind = r
        .get("rope_type")
        .or_else(|| r.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("unnamed")
        .to_ascii_lowercase();
    match kind.as_str() {
        // transformers' name for no scaling.
        "default" => Ok(RopeScaling::None),
        "llama3" => {
            let get = |key: &str, default: f64| -> Result<f64> {
                match r.get(key) {
                    None | Some(Json::Null) => Ok(default),
                    Some(v) => v
                        .as_f64()
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .with_context(|| {
                            format!(
                                "{}: rope_scaling \"{key}\" is not a positive number",
                                path.display()
                            )
                        }),
                }
            };
            let rope = Llama3Rope {
                factor: get("factor", 8.0)?,
                low_freq_factor: get("low_freq_factor", 1.0)?,
                high_freq_factor: get("high_freq_factor", 4.0)?,
                original_context: get("original_max_position_embeddings", 8192.0)?,
            };
            if rope.high_freq_factor <= rope.low_freq_factor {
                bail!(
                    "{}: rope_scaling high_freq_factor {} is not above low_freq_factor {}",
                    path.display(),
                    rope.high_freq_factor,
                    rope.low_freq_factor
                );
            }
            Ok(RopeScaling::Llama3(Some(rope)))
        }
        _ => Ok(RopeScaling::Unsupported(kind)),
    }
}

/// llama.cpp's Q/K row order for RoPE: within each head, the two halves of the rows are
/// interleaved (convert_hf_to_gguf.py `LlamaModel.permute`). `rows x cols` row-major; a bias
/// is `rows x 1`.
pub fn permute_qk_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let head_rows = rows / n_head;
    let half = head_rows / 2;
    let mut out = vec![0.0f32; data.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let src = h * head_rows + i * half + j;
                let dst = h * head_rows + 2 * j + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> HParams {
        HParams {
            n_embd: 64,
            n_ff: 128,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 16,
            head_dim_stated: false,
            context_length: 256,
            rms_eps: 1e-5,
            rope_theta: 1e4,
            vocab_size: 100,
            tie_embeddings: false,
            attn_bias: false,
            rope_scaling: RopeScaling::None,
            ..Default::default()
        }
    }

    #[test]
    fn one_description_gives_names_shapes_and_presence() {
        let a = find("LlamaForCausalLM").unwrap();
        let ts = a.expected_tensors(&small());
        let q = ts.iter().find(|t| t.gguf == "blk.1.attn_q.weight").unwrap();
        assert_eq!(q.hf, "model.layers.1.self_attn.q_proj.weight");
        assert_eq!(q.dims, [64, 64]);
        assert_eq!(q.transform, Transform::PermuteQ);
        let k = ts.iter().find(|t| t.gguf == "blk.0.attn_k.weight").unwrap();
        assert_eq!(k.dims, [64, 32]);
        let bias = ts.iter().find(|t| t.gguf == "blk.0.attn_q.bias").unwrap();
        assert_eq!(bias.presence, Presence::Absent);
        let mut h = small();
        h.attn_bias = true;
        h.tie_embeddings = true;
        let ts = a.expected_tensors(&h);
        assert_eq!(
            ts.iter()
                .find(|t| t.gguf == "blk.0.attn_output.bias")
                .unwrap()
                .presence,
            Presence::Required
        );
        assert_eq!(
            ts.iter()
                .find(|t| t.gguf == "output.weight")
                .unwrap()
                .presence,
            Presence::Optional
        );
        let meta = a.metadata_values(&small());
        assert!(meta.contains(&("llama.attention.head_count_kv".into(), MetaValue::U32(2))));
        assert!(!meta.iter().any(|(k, _)| k.ends_with("key_length")));
        // Phi-3's fused tensors add their parts up.
        let phi = describe("Phi3ForCausalLM").unwrap();
        let qkv = phi
            .expected_tensors(&small())
            .into_iter()
            .find(|t| t.gguf == "blk.0.attn_qkv.weight")
            .unwrap();
        assert_eq!(qkv.dims, [64, 64 + 32 + 32]);
        assert!(find("Phi3ForCausalLM")
            .unwrap_err()
            .to_string()
            .contains("not converted"));
        let err = find("GPTNeoXForCausalLM").unwrap_err().to_string();
        assert!(
            err.contains("GPTNeoXForCausalLM")
                && err.contains("LlamaForCausalLM")
                && err.contains("Qwen2ForCausalLM"),
            "{err}"
        );
    }

    #[test]
    fn permutation_interleaves_half_heads() {
        // 2 heads of 4 rows, 1 column: rows 0..8 -> per head [0, 2, 1, 3].
        let data: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(
            permute_qk_rows(&data, 8, 1, 2),
            vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
        );
    }

    #[test]
    fn config_values_out_of_range_are_refused() {
        let a = find("LlamaForCausalLM").unwrap();
        let cfg = serde_json::json!({"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
            "num_hidden_layers": 1000000000u64, "max_position_embeddings": 256, "vocab_size": 100});
        let err = HParams::from_config(&cfg, Path::new("c.json"), a)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("num_hidden_layers") && err.contains("c.json"),
            "{err}"
        );
    }

    #[test]
    fn rope_scaling_kinds() {
        let a = find("LlamaForCausalLM").unwrap();
        let cfg = |r: serde_json::Value| {
            serde_json::json!({"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
                "num_hidden_layers": 2, "max_position_embeddings": 256, "vocab_size": 100, "rope_scaling": r})
        };
        let h = |r| HParams::from_config(&cfg(r), Path::new("c.json"), a).unwrap();
        // Planned, never converted or run.
        let yarn = h(serde_json::json!({"type": "yarn", "factor": 4.0}));
        assert_eq!(yarn.rope_scaling, RopeScaling::Unsupported("yarn".into()));
        assert!(yarn.rope_scaling.check_supported("c.json").is_err());
        assert_eq!(
            h(serde_json::json!({"rope_type": "default"})).rope_scaling,
            RopeScaling::None
        );
        let l3 = h(serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "original_max_position_embeddings": 8192}));
        let RopeScaling::Llama3(Some(r)) = &l3.rope_scaling else {
            panic!("{:?}", l3.rope_scaling)
        };
        assert_eq!((r.low_freq_factor, r.high_freq_factor), (1.0, 4.0));
        let rope = a
            .expected_tensors(&l3)
            .into_iter()
            .find(|t| t.gguf == "rope_freqs.weight")
            .unwrap();
        assert_eq!(
            (rope.dims.as_slice(), rope.presence),
            (&[8u64][..], Presence::Required)
        );
        // Llama 3.1 8B: head_dim 128, theta 5e5: short wavelengths keep 1, long ones 8, and the
        // band between rises monotonically.
        let f = llama3_rope_factors(128, 500_000.0, r);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
        let plain = h(serde_json::Value::Null);
        assert_eq!(
            a.expected_tensors(&plain)
                .iter()
                .find(|t| t.gguf == "rope_freqs.weight")
                .unwrap()
                .presence,
            Presence::Absent
        );
    }

    #[test]
    fn gemma3_windows_follow_llama_cpps_pattern() {
        let a = find("Gemma3ForCausalLM").unwrap();
        let cfg = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"hidden_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
                "num_hidden_layers": 7, "max_position_embeddings": 256, "vocab_size": 100,
                "sliding_window": 32, "rope_local_base_freq": 10000.0, "rope_theta": 1e6,
                "final_logit_softcapping": 30.0});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            HParams::from_config(&c, Path::new("c.json"), a)
        };
        let h = cfg(serde_json::json!({})).unwrap();
        assert_eq!((h.sliding_window, h.rope_theta_swa), (32, 10000.0));
        assert!(
            h.tie_embeddings,
            "Gemma ties embeddings unless config.json says otherwise"
        );
        let keys: Vec<String> = a.metadata_values(&h).into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"gemma3.attention.sliding_window".to_string()));
        assert!(keys.contains(&"gemma3.final_logit_softcapping".to_string()));
        // Layers 0-4 and 6 slide, layer 5 is global: what llama.cpp assumes for gemma3.
        let types: Vec<&str> = (0..7)
            .map(|i| {
                if i == 5 {
                    "full_attention"
                } else {
                    "sliding_attention"
                }
            })
            .collect();
        assert!(cfg(serde_json::json!({ "layer_types": types })).is_ok());
        let mut other = types.clone();
        other.swap(4, 5);
        let err = cfg(serde_json::json!({ "layer_types": other })).unwrap_err();
        assert!(format!("{err}").contains("layer_types\"[4]"), "{err}");
        let err = cfg(serde_json::json!({"sliding_window_pattern": 4})).unwrap_err();
        assert!(format!("{err}").contains("pattern of 6"), "{err}");
        // A pattern of 1: every layer global, no window written.
        let global = cfg(serde_json::json!({"sliding_window_pattern": 1})).unwrap();
        assert_eq!(global.sliding_window, 0);
        assert!(cfg(serde_json::json!({"attn_logit_softcapping": 50.0})).is_err());
        // The norms gain 1 on the way; nothing is permuted (NEOX RoPE).
        let ts = a.expected_tensors(&h);
        let norm = ts
            .iter()
            .find(|t| t.gguf == "blk.6.post_ffw_norm.weight")
            .unwrap();
        assert_eq!(norm.transform, Transform::AddOne);
        assert!(ts.iter().all(|t| t.permute_heads(&h).is_none()));
    }

    #[test]
    fn gemma2_caps_and_query_scale_are_checked() {
        let a = find("Gemma2ForCausalLM").unwrap();
        let cfg = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"hidden_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
                "num_hidden_layers": 4, "max_position_embeddings": 256, "vocab_size": 100,
                "sliding_window": 32, "rope_theta": 10000.0, "query_pre_attn_scalar": 16,
                "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            HParams::from_config(&c, Path::new("c.json"), a)
        };
        let h = cfg(serde_json::json!({})).unwrap();
        assert_eq!((h.attn_softcap, h.final_softcap), (50.0, 30.0));
        assert_eq!((a.query_scale)(&h), 0.25);
        let keys: Vec<String> = a.metadata_values(&h).into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"gemma2.attn_logit_softcapping".to_string()));
        for missing in ["attn_logit_softcapping", "final_logit_softcapping"] {
            let err = cfg(serde_json::json!({ missing: null })).unwrap_err();
            assert!(format!("{err}").contains(missing), "{err}");
        }
        // llama.cpp derives the scale from head_dim here and never reads the key.
        let err = cfg(serde_json::json!({"query_pre_attn_scalar": 64})).unwrap_err();
        assert!(format!("{err}").contains("query_pre_attn_scalar"), "{err}");
    }
}
