//! Model architectures for planning: an embedded catalog (hyperparameters from each model's
//! official config.json) and any model given as a path (Hugging Face folder, config.json or
//! GGUF). From the hyperparameters the tensor list is rebuilt exactly as the converter writes
//! it, so planned sizes come from the same per-tensor rules.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::gguf::GgufFile;

#[derive(Clone, Debug, Serialize)]
pub struct License {
    pub name: String,
    pub summary: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelSpec {
    pub id: String,
    pub name: String,
    /// Key into the published quality data ("llama-2", "llama-3", ...).
    pub family: String,
    /// llama.cpp architecture name.
    pub arch: String,
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub vocab: u64,
    pub context: u64,
    pub tied_embeddings: bool,
    pub attn_bias: bool,
    /// Phi-3 style fused attn_qkv and gate+up.
    pub fused: bool,
    pub license: License,
}

fn license(name: &str) -> License {
    let summary = match name {
        "Llama 2 Community License" => "free use, but services with over 700 million monthly active users need a separate licence from Meta; acceptable use policy applies",
        "Llama 3.1 Community License" => "free use; over 700 million monthly active users need a licence from Meta; 'Built with Llama' attribution; acceptable use policy applies",
        "Qwen License" => "free use; services with over 100 million monthly active users need a licence from Alibaba Cloud",
        "Apache-2.0" => "permissive: use, modify, redistribute with notice; patent grant",
        "MIT" => "permissive: use, modify, redistribute with notice",
        _ => "see the model card",
    };
    License {
        name: name.to_string(),
        summary: summary.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
fn llama_like(
    id: &str,
    name: &str,
    family: &str,
    arch: &str,
    l: u64,
    e: u64,
    ff: u64,
    h: u64,
    kv: u64,
    vocab: u64,
    ctx: u64,
    lic: &str,
) -> ModelSpec {
    ModelSpec {
        id: id.into(),
        name: name.into(),
        family: family.into(),
        arch: arch.into(),
        n_layer: l,
        n_embd: e,
        n_ff: ff,
        n_head: h,
        n_head_kv: kv,
        head_dim: e / h,
        vocab,
        context: ctx,
        tied_embeddings: false,
        attn_bias: arch == "qwen2",
        fused: false,
        license: license(lic),
    }
}

/// The embedded catalog (values from each model's official config.json).
pub fn catalog() -> Vec<ModelSpec> {
    let mut phi3 = llama_like(
        "phi-3-mini",
        "Phi-3-mini-4k-instruct (3.8B)",
        "phi-3",
        "phi3",
        32,
        3072,
        8192,
        32,
        32,
        32064,
        4096,
        "MIT",
    );
    phi3.fused = true;
    vec![
        llama_like(
            "llama-2-7b",
            "Llama-2-7B",
            "llama-2",
            "llama",
            32,
            4096,
            11008,
            32,
            32,
            32000,
            4096,
            "Llama 2 Community License",
        ),
        llama_like(
            "llama-2-13b",
            "Llama-2-13B",
            "llama-2",
            "llama",
            40,
            5120,
            13824,
            40,
            40,
            32000,
            4096,
            "Llama 2 Community License",
        ),
        llama_like(
            "llama-2-70b",
            "Llama-2-70B",
            "llama-2",
            "llama",
            80,
            8192,
            28672,
            64,
            8,
            32000,
            4096,
            "Llama 2 Community License",
        ),
        llama_like(
            "llama-3.1-8b",
            "Llama-3.1-8B",
            "llama-3",
            "llama",
            32,
            4096,
            14336,
            32,
            8,
            128256,
            131072,
            "Llama 3.1 Community License",
        ),
        llama_like(
            "llama-3.1-70b",
            "Llama-3.1-70B",
            "llama-3",
            "llama",
            80,
            8192,
            28672,
            64,
            8,
            128256,
            131072,
            "Llama 3.1 Community License",
        ),
        llama_like(
            "mistral-7b",
            "Mistral-7B-v0.3",
            "mistral",
            "llama",
            32,
            4096,
            14336,
            32,
            8,
            32768,
            32768,
            "Apache-2.0",
        ),
        llama_like(
            "qwen2.5-7b",
            "Qwen2.5-7B",
            "qwen2.5",
            "qwen2",
            28,
            3584,
            18944,
            28,
            4,
            152064,
            32768,
            "Apache-2.0",
        ),
        llama_like(
            "qwen2.5-72b",
            "Qwen2.5-72B",
            "qwen2.5",
            "qwen2",
            80,
            8192,
            29568,
            64,
            8,
            152064,
            32768,
            "Qwen License",
        ),
        phi3,
    ]
}

pub fn ids() -> Vec<String> {
    catalog().into_iter().map(|m| m.id).collect()
}

/// A catalog id, or a path: a Hugging Face folder, its config.json, or a GGUF file.
pub fn resolve(spec: &str) -> Result<ModelSpec> {
    if let Some(m) = catalog().into_iter().find(|m| m.id == spec) {
        return Ok(m);
    }
    let path = Path::new(spec);
    if path.is_dir() {
        return from_config(&path.join("config.json"), path);
    }
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            return from_gguf(path);
        }
        return from_config(path, path.parent().unwrap_or(Path::new(".")));
    }
    bail!(
        "unknown model {spec:?}; known: {} (or a model folder, config.json or GGUF file)",
        ids().join(", ")
    )
}

fn from_config(config_path: &Path, folder: &Path) -> Result<ModelSpec> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("{}: cannot read", config_path.display()))?;
    let c: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", config_path.display()))?;
    let get = |k: &str| -> Result<u64> {
        c.get(k)
            .and_then(|v| v.as_u64())
            .with_context(|| format!("{}: missing required key \"{k}\"", config_path.display()))
    };
    let class = c
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .unwrap_or("");
    let arch =
        crate::source::arch::find(class).with_context(|| config_path.display().to_string())?;
    let (e, h) = (get("hidden_size")?, get("num_attention_heads")?);
    let kv = c
        .get("num_key_value_heads")
        .and_then(|v| v.as_u64())
        .unwrap_or(h);
    let card = std::fs::read_to_string(folder.join("README.md"))
        .map(|t| crate::source::hf::ModelCard::parse(&t))
        .unwrap_or_default();
    let lic = card
        .license_name
        .clone()
        .or(card.license.clone())
        .unwrap_or_else(|| "unknown (no model card licence)".into());
    let id = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    // The same name the converter writes as general.name, so measured results of the folder
    // and of its GGUF files find this model.
    let name = crate::source::hf::model_name(&card, &c, folder);
    Ok(ModelSpec {
        id,
        name,
        family: "unknown".into(),
        arch: arch.gguf_name.into(),
        n_layer: get("num_hidden_layers")?,
        n_embd: e,
        n_ff: get("intermediate_size")?,
        n_head: h,
        n_head_kv: kv,
        head_dim: c
            .get("head_dim")
            .and_then(|v| v.as_u64())
            .unwrap_or(e / h.max(1)),
        vocab: get("vocab_size")?,
        context: get("max_position_embeddings")?,
        tied_embeddings: c
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        attn_bias: arch.gguf_name == "qwen2",
        fused: false,
        license: license(&lic),
    })
}

fn from_gguf(path: &Path) -> Result<ModelSpec> {
    let f = GgufFile::open(path)?;
    let arch = f
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .with_context(|| format!("{}: no general.architecture", path.display()))?
        .to_string();
    let get = |k: &str| -> Result<u64> {
        f.get(&format!("{arch}.{k}"))
            .and_then(|v| v.as_u64())
            .with_context(|| format!("{}: missing {arch}.{k}", path.display()))
    };
    let (e, h) = (get("embedding_length")?, get("attention.head_count")?);
    let vocab = match get("vocab_size") {
        Ok(v) => v,
        Err(_) => f
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len() as u64)
            .unwrap_or(0),
    };
    let name = f
        .get("general.name")
        .and_then(|v| v.as_str())
        .unwrap_or("model")
        .to_string();
    let lic = f
        .get("general.license")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown (no general.license)")
        .to_string();
    Ok(ModelSpec {
        id: name.clone(),
        name,
        family: "unknown".into(),
        arch: arch.clone(),
        n_layer: get("block_count")?,
        n_embd: e,
        n_ff: get("feed_forward_length")?,
        n_head: h,
        n_head_kv: get("attention.head_count_kv").unwrap_or(h),
        head_dim: get("attention.key_length").unwrap_or(e / h.max(1)),
        vocab,
        context: get("context_length")?,
        tied_embeddings: f.tensor("output.weight").is_none(),
        attn_bias: f.tensor("blk.0.attn_q.bias").is_some(),
        fused: f.tensor("blk.0.attn_qkv.weight").is_some(),
        license: license(&lic),
    })
}

/// The GGUF tensors (name, dims innermost first) the converter would write.
pub fn tensors(m: &ModelSpec) -> Vec<(String, Vec<u64>)> {
    let (e, q, kv) = (m.n_embd, m.n_head * m.head_dim, m.n_head_kv * m.head_dim);
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![e, m.vocab]),
        ("output_norm.weight".to_string(), vec![e]),
    ];
    if !m.tied_embeddings {
        t.push(("output.weight".to_string(), vec![e, m.vocab]));
    }
    for i in 0..m.n_layer {
        let b = |s: &str| format!("blk.{i}.{s}");
        t.push((b("attn_norm.weight"), vec![e]));
        t.push((b("ffn_norm.weight"), vec![e]));
        t.push((b("attn_output.weight"), vec![q, e]));
        t.push((b("ffn_down.weight"), vec![m.n_ff, e]));
        if m.fused {
            t.push((b("attn_qkv.weight"), vec![e, q + 2 * kv]));
            t.push((b("ffn_up.weight"), vec![e, 2 * m.n_ff]));
        } else {
            t.push((b("attn_q.weight"), vec![e, q]));
            t.push((b("attn_k.weight"), vec![e, kv]));
            t.push((b("attn_v.weight"), vec![e, kv]));
            t.push((b("ffn_gate.weight"), vec![e, m.n_ff]));
            t.push((b("ffn_up.weight"), vec![e, m.n_ff]));
            if m.attn_bias {
                t.push((b("attn_q.bias"), vec![q]));
                t.push((b("attn_k.bias"), vec![kv]));
                t.push((b("attn_v.bias"), vec![kv]));
            }
        }
    }
    t
}

pub fn parameter_count(m: &ModelSpec) -> u64 {
    tensors(m)
        .iter()
        .map(|(_, d)| d.iter().product::<u64>())
        .sum()
}

/// llama.cpp's LLM_TYPE_70B, which changes the attn_v rule.
pub fn is_70b(m: &ModelSpec) -> bool {
    m.n_layer == 80 && m.n_head != m.n_head_kv && (m.arch == "llama" || m.arch == "qwen2")
}
