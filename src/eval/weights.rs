//! Model weights for the forward pass, from a GGUF file (kept quantized: candle's quantized
//! matmul, which quantizes activations to Q8_0/Q8_K as ggml does) or from a Hugging Face folder
//! (the unquantized F32 baseline, with the same Q/K row permutation the converter applies, so
//! both sources run through one model definition).

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use super::linear::Linear;
use candle_core::{Device, Tensor};

use crate::gguf::convert::{plan_tensors, tensor_values};
use crate::gguf::reader::GgufFile;
use crate::quant::GgmlType;
use crate::source::arch::{Activation, Architecture, HParams, RopeLayout};
use crate::source::hf::ModelDir;

/// Shape and hyperparameters of a Llama-family model, as llama.cpp reads them from GGUF keys.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// GGUF architecture name ("llama", "qwen2").
    pub arch: String,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// RoPE on the two halves of each head (llama.cpp's NEOX mode) rather than on adjacent
    /// pairs: Qwen2 keeps Hugging Face's layout, Llama's converter permutes Q/K for adjacent pairs.
    pub rope_neox: bool,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    /// Routed experts (0: dense), experts per token, and whether their weights are
    /// renormalized to sum to one.
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub norm_expert_weights: bool,
    pub activation: Activation,
    /// Multiplier of the token embeddings (Gemma: sqrt(n_embd)).
    pub embd_scale: Option<f32>,
    /// `c` of the final logits' `c * tanh(logits / c)` (0: none).
    pub final_softcap: f32,
    /// Sliding-window layers: window (0: none), llama.cpp's pattern (every layer `il` with
    /// `il % n < n - 1` slides) and their RoPE base.
    pub sliding_window: usize,
    pub swa_pattern: usize,
    pub rope_base_swa: f32,
    /// The attention scores' scale, and the `c` of their soft cap (0: none).
    pub query_scale: f32,
    pub attn_softcap: f32,
}

impl ModelConfig {
    /// The attention window of layer `il`, if it slides.
    pub fn window(&self, il: usize) -> Option<usize> {
        let n = self.swa_pattern;
        (self.sliding_window > 0 && n > 0 && il % n < n - 1).then_some(self.sliding_window)
    }

    /// Whether single tokens may run on the decoding team, which implements the plain
    /// Llama-family block (dense SwiGLU, no windows, no extra norms or caps).
    pub fn team_decodes(&self) -> bool {
        self.n_expert == 0
            && self.activation == Activation::Silu
            && self.embd_scale.is_none()
            && self.final_softcap == 0.0
            && self.sliding_window == 0
            && self.attn_softcap == 0.0
    }
}

/// Token embedding rows, dequantized on lookup as ggml's get_rows does.
pub enum Embedding {
    Gguf {
        file: Arc<GgufFile>,
        index: usize,
        ty: GgmlType,
    },
    Dense(Vec<f32>),
}

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
    pub o: Linear,
    pub o_bias: Option<Vec<f32>>,
    /// Per-head RMS norm weights of queries and keys (Qwen3), applied before RoPE.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub ffn: Ffn,
    /// Gemma's norms of the attention output and of the FFN output, before each residual.
    pub post_attn_norm: Option<Vec<f32>>,
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// A layer's feed-forward block.
pub enum Ffn {
    /// SwiGLU: down(silu(gate x) * up x).
    Dense {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    /// A mixture of SwiGLU experts chosen per token by a router.
    Experts(Experts),
}

pub struct Experts {
    /// `[n_expert, n_embd]`, F32 in every file llama.cpp writes.
    pub router: Linear,
    /// One matrix per expert, views into the stacked tensors.
    pub gate: Vec<Linear>,
    pub up: Vec<Linear>,
    pub down: Vec<Linear>,
}

impl Ffn {
    /// The dense block's matrices, None for a mixture of experts.
    pub fn dense(&self) -> Option<[&Linear; 3]> {
        match self {
            Ffn::Dense { gate, up, down } => Some([gate, up, down]),
            Ffn::Experts(_) => None,
        }
    }
}

pub struct ModelWeights {
    pub config: ModelConfig,
    pub embedding: Embedding,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    pub output: Linear,
    /// Llama 3.1-style RoPE frequency divisors (`rope_freqs.weight`).
    pub rope_freqs: Option<Vec<f32>>,
}

fn check_finite(data: &[f32], what: &str) -> Result<()> {
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!("{what}: element {i} is {} (not a finite number)", data[i]);
    }
    Ok(())
}

struct GgufLoader {
    file: Arc<GgufFile>,
}

impl GgufLoader {
    fn info(&self, name: &str) -> Result<(usize, &crate::gguf::reader::TensorInfo)> {
        self.file
            .tensors
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == name)
            .ok_or_else(|| anyhow!("{}: tensor {name} is missing", self.file.path.display()))
    }

    fn ty(&self, name: &str) -> Result<GgmlType> {
        let (_, t) = self.info(name)?;
        t.ty.ok_or_else(|| {
            anyhow!(
                "{}: tensor {name} has GGML type id {}, which quantfit cannot read",
                self.file.path.display(),
                t.type_id
            )
        })
    }

    fn dense(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (_, t) = self.info(name)?;
        let ty = self.ty(name)?;
        let cols = t.dims[0] as usize;
        let data = crate::quant::matrix::dequantize(ty, self.file.tensor_data(t), cols)
            .with_context(|| format!("{}: tensor {name}", self.file.path.display()))?;
        check_finite(
            &data,
            &format!("{}: tensor {name}", self.file.path.display()),
        )?;
        let shape = t.dims.iter().rev().map(|&d| d as usize).collect();
        Ok((data, shape))
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.dense(name)?.0)
    }

    fn linear(&self, name: &str) -> Result<Linear> {
        let (index, t) = self.info(name)?;
        let ty = self.ty(name)?;
        if t.dims.len() != 2 {
            bail!(
                "{}: tensor {name} has {} dimensions; a matrix was expected",
                self.file.path.display(),
                t.dims.len()
            );
        }
        if ty == GgmlType::F32 {
            let (data, shape) = self.dense(name)?;
            return Linear::dense(Tensor::from_vec(data, shape, &Device::Cpu)?);
        }
        Ok(Linear::quantized(self.file.clone(), index, ty))
    }

    fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    fn optional_vector(&self, name: &str) -> Result<Option<Vec<f32>>> {
        if self.has(name) {
            Ok(Some(self.vector(name)?))
        } else {
            Ok(None)
        }
    }

    /// Each expert's matrix of a stacked `[cols, rows, experts]` tensor.
    fn experts(&self, name: &str, n_expert: usize) -> Result<Vec<Linear>> {
        let (index, t) = self.info(name)?;
        let ty = self.ty(name)?;
        if t.dims.len() != 3 || t.dims[2] as usize != n_expert {
            bail!(
                "{}: tensor {name} has shape {:?}; {n_expert} stacked experts were expected",
                self.file.path.display(),
                t.dims
            );
        }
        if ty == GgmlType::F32 {
            let (data, _) = self.dense(name)?;
            return dense_experts(data, [t.dims[1] as usize, t.dims[0] as usize], n_expert);
        }
        Ok((0..n_expert)
            .map(|e| Linear::quantized_expert(self.file.clone(), index, ty, e))
            .collect())
    }

    fn ffn(&self, layer: usize, c: &ModelConfig) -> Result<Ffn> {
        let n = |s: &str| format!("blk.{layer}.{s}");
        if c.n_expert == 0 {
            return Ok(Ffn::Dense {
                gate: self.linear(&n("ffn_gate.weight"))?,
                up: self.linear(&n("ffn_up.weight"))?,
                down: self.linear(&n("ffn_down.weight"))?,
            });
        }
        Ok(Ffn::Experts(Experts {
            router: self.linear(&n("ffn_gate_inp.weight"))?,
            gate: self.experts(&n("ffn_gate_exps.weight"), c.n_expert)?,
            up: self.experts(&n("ffn_up_exps.weight"), c.n_expert)?,
            down: self.experts(&n("ffn_down_exps.weight"), c.n_expert)?,
        }))
    }
}

/// Dense per-expert matrices `[rows, cols]` from stacked f32 data.
fn dense_experts(data: Vec<f32>, [rows, cols]: [usize; 2], n_expert: usize) -> Result<Vec<Linear>> {
    data.chunks_exact(rows * cols)
        .take(n_expert)
        .map(|m| Linear::dense(Tensor::from_slice(m, (rows, cols), &Device::Cpu)?))
        .collect()
}

impl ModelConfig {
    /// The forward pass's view of a model: its architecture's description and hyperparameters.
    pub fn new(arch: &Architecture, h: &HParams) -> ModelConfig {
        ModelConfig {
            arch: arch.gguf_name.to_string(),
            n_embd: h.n_embd as usize,
            n_layer: h.n_layer as usize,
            n_head: h.n_head as usize,
            n_head_kv: h.n_head_kv as usize,
            head_dim: h.head_dim as usize,
            n_ff: h.n_ff as usize,
            rms_eps: h.rms_eps as f32,
            rope_base: h.rope_theta as f32,
            rope_neox: arch.rope == RopeLayout::Neox,
            n_vocab: h.vocab_size as usize,
            n_ctx_train: h.context_length as usize,
            n_expert: h.n_expert as usize,
            n_expert_used: h.n_expert_used as usize,
            norm_expert_weights: arch.norm_expert_weights,
            activation: arch.activation,
            embd_scale: arch.scale_embeddings.then(|| (h.n_embd as f32).sqrt()),
            final_softcap: h.final_softcap as f32,
            sliding_window: h.sliding_window as usize,
            swa_pattern: arch.swa_pattern as usize,
            rope_base_swa: h.rope_theta_swa as f32,
            query_scale: (arch.query_scale)(h) as f32,
            attn_softcap: h.attn_softcap as f32,
        }
    }
}

/// Config from a GGUF file's metadata, read through its architecture's description, with every
/// tensor checked against the shapes the metadata imply.
pub fn gguf_config(file: &GgufFile) -> Result<ModelConfig> {
    let (arch, h) = crate::gguf::hparams::hparams(file)?;
    if !arch.support.forward {
        return Err(no_forward_pass(
            &file.path.display().to_string(),
            &format!("architecture {:?}", arch.gguf_name),
        ));
    }
    h.rope_scaling
        .check_supported(&file.path.display().to_string())?;
    crate::gguf::hparams::check_tensors(file, arch, &h)?;
    Ok(ModelConfig::new(arch, &h))
}

pub fn load_gguf(file: Arc<GgufFile>) -> Result<ModelWeights> {
    let path = file.path.clone();
    let mut config = gguf_config(&file)?;
    let loader = GgufLoader { file: file.clone() };
    let embd_name = "token_embd.weight";
    let (embd_index, embd_info) = loader.info(embd_name)?;
    if embd_info.dims.len() != 2 || embd_info.dims[0] as usize != config.n_embd {
        bail!(
            "{}: {embd_name} has shape {:?}; expected [{}, n_vocab]",
            path.display(),
            embd_info.dims,
            config.n_embd
        );
    }
    config.n_vocab = embd_info.dims[1] as usize;
    let embedding = Embedding::Gguf {
        file: file.clone(),
        index: embd_index,
        ty: loader.ty(embd_name)?,
    };
    let mut layers = Vec::with_capacity(config.n_layer);
    for i in 0..config.n_layer {
        let n = |s: &str| format!("blk.{i}.{s}");
        let optional = |s: &str| loader.optional_vector(&n(s));
        layers.push(LayerWeights {
            attn_norm: loader.vector(&n("attn_norm.weight"))?,
            q: loader.linear(&n("attn_q.weight"))?,
            k: loader.linear(&n("attn_k.weight"))?,
            v: loader.linear(&n("attn_v.weight"))?,
            q_bias: optional("attn_q.bias")?,
            k_bias: optional("attn_k.bias")?,
            v_bias: optional("attn_v.bias")?,
            o: loader.linear(&n("attn_output.weight"))?,
            o_bias: optional("attn_output.bias")?,
            q_norm: optional("attn_q_norm.weight")?,
            k_norm: optional("attn_k_norm.weight")?,
            ffn_norm: loader.vector(&n("ffn_norm.weight"))?,
            ffn: loader.ffn(i, &config)?,
            post_attn_norm: optional("post_attention_norm.weight")?,
            post_ffn_norm: optional("post_ffw_norm.weight")?,
        });
    }
    let output = if loader.has("output.weight") {
        loader.linear("output.weight")?
    } else {
        loader.linear(embd_name)?
    };
    let rope_freqs = if loader.has("rope_freqs.weight") {
        Some(loader.dense("rope_freqs.weight")?.0)
    } else {
        None
    };
    Ok(ModelWeights {
        output_norm: loader.vector("output_norm.weight")?,
        output,
        rope_freqs,
        config,
        embedding,
        layers,
    })
}

/// The Hugging Face folder as F32, tensor by tensor.
/// The error for a model whose architecture the forward pass does not run, naming those it
/// runs (for GGUF files and folders alike).
fn no_forward_pass(path: &str, what: &str) -> anyhow::Error {
    let runs: Vec<&str> = crate::source::arch::ARCHITECTURES
        .iter()
        .filter(|a| a.support.forward)
        .map(|a| a.gguf_name)
        .collect();
    anyhow!(
        "{path}: {what} is not supported by quantfit's forward pass yet ({} are; it can be converted and planned)",
        runs.join(", ")
    )
}

pub fn load_hf(model: &ModelDir) -> Result<ModelWeights> {
    if !model.arch.support.forward {
        return Err(no_forward_pass(
            &model.path.display().to_string(),
            &model.arch_class,
        ));
    }
    let config = ModelConfig::new(model.arch, &model.hparams);
    let mut tensors = std::collections::HashMap::new();
    for t in plan_tensors(model)? {
        // The converter's own reading: the same permutation, the same generated tensors.
        let (data, origin) = tensor_values(model, &t)?;
        check_finite(&data, &format!("{origin}: tensor {}", t.name))?;
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        tensors.insert(t.name.clone(), (data, shape));
    }
    let path = model.path.display().to_string();
    load_dense(config, tensors, &path)
}

fn load_dense(
    mut config: ModelConfig,
    mut tensors: std::collections::HashMap<String, (Vec<f32>, Vec<usize>)>,
    path: &str,
) -> Result<ModelWeights> {
    let mut take = |name: &str| {
        tensors
            .remove(name)
            .ok_or_else(|| anyhow!("{path}: tensor for {name} is missing"))
    };
    fn matrix((data, shape): (Vec<f32>, Vec<usize>)) -> Result<Linear> {
        Linear::dense(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }
    let (embd, embd_shape) = take("token_embd.weight")?;
    if embd_shape.len() != 2 || embd_shape[1] != config.n_embd {
        bail!("{path}: token embedding has shape {embd_shape:?}");
    }
    config.n_vocab = embd_shape[0];
    let mut layers = Vec::with_capacity(config.n_layer);
    for i in 0..config.n_layer {
        let n = |s: &str| format!("blk.{i}.{s}");
        let mut optional = |s: &str| take(&n(s)).ok().map(|(data, _)| data);
        let (q_bias, k_bias, v_bias, o_bias) = (
            optional("attn_q.bias"),
            optional("attn_k.bias"),
            optional("attn_v.bias"),
            optional("attn_output.bias"),
        );
        let (q_norm, k_norm) = (
            optional("attn_q_norm.weight"),
            optional("attn_k_norm.weight"),
        );
        let (post_attn_norm, post_ffn_norm) = (
            optional("post_attention_norm.weight"),
            optional("post_ffw_norm.weight"),
        );
        let ffn = if config.n_expert == 0 {
            Ffn::Dense {
                gate: matrix(take(&n("ffn_gate.weight"))?)?,
                up: matrix(take(&n("ffn_up.weight"))?)?,
                down: matrix(take(&n("ffn_down.weight"))?)?,
            }
        } else {
            let router = matrix(take(&n("ffn_gate_inp.weight"))?)?;
            let mut stacked = |s: &str| -> Result<Vec<Linear>> {
                let (data, shape) = take(&n(s))?;
                dense_experts(data, [shape[1], shape[2]], config.n_expert)
            };
            Ffn::Experts(Experts {
                router,
                gate: stacked("ffn_gate_exps.weight")?,
                up: stacked("ffn_up_exps.weight")?,
                down: stacked("ffn_down_exps.weight")?,
            })
        };
        layers.push(LayerWeights {
            attn_norm: take(&n("attn_norm.weight"))?.0,
            q: matrix(take(&n("attn_q.weight"))?)?,
            k: matrix(take(&n("attn_k.weight"))?)?,
            v: matrix(take(&n("attn_v.weight"))?)?,
            q_bias,
            k_bias,
            v_bias,
            o: matrix(take(&n("attn_output.weight"))?)?,
            o_bias,
            q_norm,
            k_norm,
            ffn_norm: take(&n("ffn_norm.weight"))?.0,
            ffn,
            post_attn_norm,
            post_ffn_norm,
        });
    }
    let output = match take("output.weight") {
        Ok(t) => matrix(t)?,
        Err(_) => Linear::dense(Tensor::from_slice(&embd, embd_shape, &Device::Cpu)?)?,
    };
    let output_norm = take("output_norm.weight")?.0;
    let rope_freqs = take("rope_freqs.weight").ok().map(|t| t.0);
    // Every tensor of the description is used: none may be silently left out of the model.
    if let Some(unused) = tensors.keys().next() {
        bail!("{path}: tensor {unused} is not used by quantfit's forward pass; refusing to run without it");
    }
    Ok(ModelWeights {
        output_norm,
        output,
        rope_freqs,
        config,
        embedding: Embedding::Dense(embd),
        layers,
    })
}

impl Embedding {
    /// Rows `ids`, `[ids.len(), n_embd]` row-major.
    pub fn lookup(&self, ids: &[u32], n_embd: usize, n_vocab: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; ids.len() * n_embd];
        for (row, &id) in out.chunks_mut(n_embd).zip(ids) {
            if id as usize >= n_vocab {
                bail!("token id {id} is outside the vocabulary of {n_vocab}");
            }
            match self {
                Embedding::Dense(data) => {
                    let start = id as usize * n_embd;
                    row.copy_from_slice(&data[start..start + n_embd]);
                }
                Embedding::Gguf { file, index, ty } => {
                    let t = &file.tensors[*index];
                    let row_bytes = ty.info().row_bytes(n_embd);
                    let start = id as usize * row_bytes;
                    let bytes = &file.tensor_data(t)[start..start + row_bytes];
                    (ty.info().dequantize_row)(bytes, row);
                }
            }
        }
        Ok(out)
    }
}
