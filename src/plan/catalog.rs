//! Model architectures for planning: an embedded catalog (hyperparameters from each model's
//! official config.json) and any model given as a path (Hugging Face folder, config.json or
//! GGUF). From the hyperparameters the tensor list is rebuilt exactly as the converter writes
//! it, so planned sizes come from the same per-tensor rules.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::license::{self, Licence};
use crate::gguf::GgufFile;

/// A published benchmark score of the unquantized model, with its source.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Benchmark {
    pub score: f64,
    pub source: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelSpec {
    pub id: String,
    pub name: String,
    /// Hugging Face repository, to recognize the model as the base of a fine-tune.
    pub repo: Option<String>,
    /// Model family ("llama-2", "llama-3", ...).
    pub family: String,
    /// Perplexity scale of its published figures (one per tokenizer family).
    pub scale: Option<String>,
    /// Catalog model whose published perplexities stand in for this one's.
    pub quality_proxy: Option<String>,
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
    /// MMLU 5-shot of the unquantized base model, as its authors report it.
    pub mmlu: Option<Benchmark>,
    pub license: Licence,
}

/// One `[[model]]` of catalog.toml.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    name: String,
    repo: String,
    family: String,
    scale: Option<String>,
    quality_proxy: Option<String>,
    arch: String,
    n_layer: u64,
    n_embd: u64,
    n_ff: u64,
    n_head: u64,
    n_head_kv: u64,
    head_dim: Option<u64>,
    vocab: u64,
    context: u64,
    #[serde(default)]
    tied_embeddings: bool,
    #[serde(default)]
    attn_bias: bool,
    #[serde(default)]
    fused: bool,
    /// Where the hyperparameters come from (documentation only).
    #[serde(rename = "config")]
    _config: String,
    mmlu: Option<Benchmark>,
    license: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    model: Vec<Entry>,
    license: std::collections::BTreeMap<String, Licence>,
}

fn build(text: &str) -> Result<Vec<ModelSpec>> {
    let file: CatalogFile = toml::from_str(text).context("catalog.toml")?;
    file.model
        .into_iter()
        .map(|e| {
            let license = file
                .license
                .get(&e.license)
                .with_context(|| format!("catalog.toml: {}: no [license.{}]", e.id, e.license))?
                .clone();
            Ok(ModelSpec {
                head_dim: e.head_dim.unwrap_or(e.n_embd / e.n_head.max(1)),
                id: e.id,
                name: e.name,
                repo: Some(e.repo),
                family: e.family,
                scale: e.scale,
                quality_proxy: e.quality_proxy,
                arch: e.arch,
                n_layer: e.n_layer,
                n_embd: e.n_embd,
                n_ff: e.n_ff,
                n_head: e.n_head,
                n_head_kv: e.n_head_kv,
                vocab: e.vocab,
                context: e.context,
                tied_embeddings: e.tied_embeddings,
                attn_bias: e.attn_bias,
                fused: e.fused,
                mmlu: e.mmlu,
                license,
            })
        })
        .collect()
}

/// The embedded catalog (src/plan/catalog.toml), parsed once.
pub fn catalog() -> &'static [ModelSpec] {
    static CATALOG: OnceLock<Vec<ModelSpec>> = OnceLock::new();
    CATALOG.get_or_init(|| build(include_str!("catalog.toml")).expect("embedded catalog is valid"))
}

/// A catalog model by id.
pub fn by_id(id: &str) -> Option<&'static ModelSpec> {
    catalog().iter().find(|m| m.id == id)
}

/// The catalog model published as this Hugging Face repository (`org/name`, any case), or
/// as its chat or instruction-tuned sibling (`-Instruct`, `-chat`, `-it`, `-hf` suffixes),
/// whose licence is the same, to follow a fine-tune's `base_model` to its base.
pub fn by_repo(repo: &str) -> Option<&'static ModelSpec> {
    let norm = |r: &str| {
        let mut r = r.trim().trim_end_matches('/').to_ascii_lowercase();
        r = r.trim_start_matches("https://huggingface.co/").to_string();
        for suffix in ["-hf", "-instruct", "-chat", "-it"] {
            if let Some(x) = r.strip_suffix(suffix) {
                r = x.to_string();
            }
        }
        r.trim_end_matches("-hf").to_string()
    };
    let want = norm(repo);
    catalog()
        .iter()
        .find(|m| m.repo.as_deref().is_some_and(|r| norm(r) == want))
}

pub fn ids() -> Vec<String> {
    catalog().iter().map(|m| m.id.clone()).collect()
}

/// A catalog id, or a path: a Hugging Face folder, its config.json, or a GGUF file.
pub fn resolve(spec: &str) -> Result<ModelSpec> {
    if let Some(m) = by_id(spec) {
        return Ok(m.clone());
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
    let card_path = folder.join("README.md");
    let card = std::fs::read_to_string(&card_path)
        .map(|t| crate::source::hf::ModelCard::parse(&t))
        .unwrap_or_default();
    let license = license::from_card(
        &card,
        class,
        c.get("auto_map").is_some(),
        &card_path.display().to_string(),
    );
    let id = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    // The same name the converter writes as general.name, so measured results of the folder
    // and of its GGUF files find this model.
    let name = crate::source::hf::model_name(&card, &c, folder);
    let base = card.base_models.iter().find_map(|b| by_repo(b));
    Ok(ModelSpec {
        id,
        name,
        repo: None,
        family: base
            .map(|b| b.family.clone())
            .unwrap_or_else(|| "unknown".into()),
        scale: None,
        quality_proxy: None,
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
        mmlu: None,
        license,
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
    let license = license::from_gguf(&f, &path.display().to_string());
    Ok(ModelSpec {
        id: name.clone(),
        name,
        repo: None,
        family: "unknown".into(),
        scale: None,
        quality_proxy: None,
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
        mmlu: None,
        license,
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
