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
use crate::source::arch::{by_gguf_name, Architecture, HParams, Llama3Rope, Presence, RopeScaling};

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
    /// The hyperparameters the architecture's description reads (tensor shapes, KV cache).
    pub hparams: HParams,
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
    /// "llama3": Llama 3.1's RoPE scaling (factor 8, low/high frequency factors 1/4, original
    /// context 8192, as in its config.json), which adds the tensor rope_freqs.weight.
    rope_scaling: Option<String>,
    /// Routed experts, experts per token and one expert's FFN width, for a mixture of experts.
    #[serde(default)]
    n_expert: u64,
    #[serde(default)]
    n_expert_used: u64,
    n_ff_expert: Option<u64>,
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
            let rope_scaling = match e.rope_scaling.as_deref() {
                None => RopeScaling::None,
                Some("llama3") => RopeScaling::Llama3(Some(Llama3Rope {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_context: 8192.0,
                })),
                Some(other) => bail!("catalog.toml: {}: rope_scaling {other:?} unknown", e.id),
            };
            let head_dim = e.head_dim.unwrap_or(e.n_embd / e.n_head.max(1));
            Ok(ModelSpec {
                id: e.id,
                name: e.name,
                repo: Some(e.repo),
                family: e.family,
                scale: e.scale,
                quality_proxy: e.quality_proxy,
                arch: e.arch,
                hparams: HParams {
                    n_embd: e.n_embd,
                    n_ff: e.n_ff,
                    n_layer: e.n_layer,
                    n_head: e.n_head,
                    n_head_kv: e.n_head_kv,
                    head_dim,
                    head_dim_stated: e.head_dim.is_some(),
                    context_length: e.context,
                    // Neither changes a size; the catalog does not run models.
                    rms_eps: 1e-5,
                    rope_theta: 10_000.0,
                    vocab_size: e.vocab,
                    tie_embeddings: e.tied_embeddings,
                    attn_bias: e.attn_bias,
                    rope_scaling,
                    n_expert: e.n_expert,
                    n_expert_used: e.n_expert_used,
                    n_ff_expert: e.n_ff_expert.unwrap_or(e.n_ff),
                    ..HParams::default()
                },
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
    let class = c
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .unwrap_or("");
    let arch =
        crate::source::arch::describe(class).with_context(|| config_path.display().to_string())?;
    let h = HParams::from_config(&c, config_path, arch)?;
    // Weights beside the config must be the model it describes, or the plan would size
    // another model than the folder holds: the converter's checks, on the headers only.
    if arch.support.convert && holds_weights(folder) {
        let model = crate::source::hf::ModelDir::open(folder)?;
        crate::gguf::convert::plan_tensors(&model)?;
    }
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
    let family = base
        .map(|b| b.family.clone())
        .unwrap_or_else(|| "unknown".into());
    Ok(outside_catalog(id, name, family, arch, &h, license))
}

fn holds_weights(folder: &Path) -> bool {
    folder.join("model.safetensors.index.json").is_file()
        || std::fs::read_dir(folder).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        })
}

/// A model the catalog does not list (a folder or a GGUF file): its own hyperparameters, no
/// published figures.
fn outside_catalog(
    id: String,
    name: String,
    family: String,
    arch: &Architecture,
    h: &HParams,
    license: Licence,
) -> ModelSpec {
    ModelSpec {
        id,
        name,
        repo: None,
        family,
        scale: None,
        quality_proxy: None,
        arch: arch.gguf_name.into(),
        hparams: h.clone(),
        mmlu: None,
        license,
    }
}

fn from_gguf(path: &Path) -> Result<ModelSpec> {
    let f = GgufFile::open(path)?;
    // The same reader the forward pass uses: the architecture's own metadata keys.
    let (arch, h) = crate::gguf::hparams::hparams(&f)?;
    crate::gguf::hparams::check_tensors(&f, arch, &h)?;
    let name = f
        .get("general.name")
        .and_then(|v| v.as_str())
        .unwrap_or("model")
        .to_string();
    let license = license::from_gguf(&f, &path.display().to_string());
    Ok(outside_catalog(
        name.clone(),
        name,
        "unknown".into(),
        arch,
        &h,
        license,
    ))
}

impl ModelSpec {
    /// The architecture's description.
    pub fn architecture(&self) -> &'static Architecture {
        by_gguf_name(&self.arch).expect("catalog and model files name described architectures")
    }
}

/// The GGUF tensors (name, dims innermost first) the converter writes, from the architecture's
/// description: the same list the converter checks a checkpoint against.
pub fn tensors(m: &ModelSpec) -> Vec<(String, Vec<u64>)> {
    m.architecture()
        .expected_tensors(&m.hparams)
        .into_iter()
        .filter(|t| t.presence == Presence::Required)
        .map(|t| (t.gguf, t.dims))
        .collect()
}

pub fn parameter_count(m: &ModelSpec) -> u64 {
    tensors(m)
        .iter()
        .map(|(_, d)| d.iter().product::<u64>())
        .sum()
}
