//! Measuring models: the forward pass, perplexity and KL divergence on the user's text
//! (`quantfit eval`), and prompt/generation speed (`quantfit bench`).

pub mod attention;
pub mod base_logits;
pub mod bench;
pub mod decode;
pub mod dot;
pub mod gemm;
pub mod kld;
pub mod linear;
pub mod model;
pub mod moe;
pub mod perplexity;
pub mod results;
pub mod run;
pub mod softmax;
pub mod spm;
pub mod task;
pub mod team;
pub mod tokenize;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::gguf::reader::GgufFile;
use crate::gguf::Value;
use crate::quant::rules::FileType;
use crate::source::hf::ModelDir;
use model::Model;
use tokenize::TextTokenizer;

/// Deterministic test values in [-0.5, 0.5) (an LCG), shared by the kernel tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1 << 24) as f32 - 0.5
        })
        .collect()
}

/// A model ready to run, with what reports say about it.
pub struct LoadedModel {
    pub path: PathBuf,
    /// File or folder name.
    pub name: String,
    /// The model's own name: `general.name` of a GGUF, the model card's / config's name of a
    /// folder (what the converter writes as `general.name`), so results of a folder and of its
    /// GGUF files line up.
    pub model_name: String,
    /// llama.cpp's file type name ("Q4_K_M"), or "F32" for a Hugging Face folder run in F32.
    pub quant: String,
    pub file_bytes: u64,
    pub bits_per_weight: f64,
    pub n_params: u64,
    pub model: Model,
    pub tokenizer: TextTokenizer,
    /// Notes a reader should see (types run dequantized, ...).
    pub notes: Vec<String>,
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Opens a GGUF file or a Hugging Face folder. `tokenizer` overrides the tokenizer source;
/// otherwise a `tokenizer.json` beside the model is used, then the GGUF's own metadata.
pub fn load(path: &Path, tokenizer: Option<&Path>) -> Result<LoadedModel> {
    if path.is_dir() {
        load_hf(path, tokenizer)
    } else if path.is_file() {
        load_gguf(path, tokenizer)
    } else {
        bail!("{}: no such file or folder", path.display())
    }
}

fn load_gguf(path: &Path, tokenizer: Option<&Path>) -> Result<LoadedModel> {
    let file = std::sync::Arc::new(GgufFile::open(path)?);
    let weights = weights::load_gguf(file.clone())?;
    let beside = path.parent().map(|p| p.join("tokenizer.json"));
    let (bos, add_bos) = tokenize::gguf_bos(&file);
    let tokenizer = match (tokenizer, beside.filter(|p| p.is_file())) {
        (Some(t), _) => TextTokenizer::from_tokenizer_json(t, bos, add_bos)?,
        (None, Some(t)) => TextTokenizer::from_tokenizer_json(&t, bos, add_bos)?,
        (None, None) => TextTokenizer::from_gguf(&file)?,
    };
    let n_params: u64 = file
        .tensors
        .iter()
        .map(|t| t.dims.iter().product::<u64>())
        .sum();
    let tensor_bytes: u64 = file.tensors.iter().map(|t| t.bytes).sum();
    let quant = file
        .get("general.file_type")
        .and_then(Value::as_u64)
        .and_then(|id| {
            FileType::all()
                .iter()
                .find(|f| f.llama_ftype() as u64 == id)
        })
        .map(|f| f.name().to_string())
        .unwrap_or_else(|| "unknown".into());
    let model_name = file
        .get("general.name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| display_name(path));
    Ok(LoadedModel {
        name: display_name(path),
        model_name,
        path: path.to_path_buf(),
        quant,
        file_bytes: file.file_size(),
        bits_per_weight: tensor_bytes as f64 * 8.0 / n_params.max(1) as f64,
        n_params,
        model: Model::new(weights),
        tokenizer,
        notes: Vec::new(),
    })
}

fn load_hf(path: &Path, tokenizer: Option<&Path>) -> Result<LoadedModel> {
    let dir = ModelDir::open(path)?;
    let vocab = crate::source::tokenizer::read_vocab(
        path,
        dir.hparams.vocab_size,
        &dir.config,
        dir.arch.spm_space_prefix,
    )?;
    let bos = vocab
        .special_ids
        .iter()
        .find(|(k, _)| k == "bos")
        .map(|(_, id)| *id);
    let add_bos = vocab
        .flags
        .iter()
        .find(|(k, _)| k == "add_bos_token")
        .map(|(_, b)| *b)
        .unwrap_or(vocab.model == "llama");
    let tokenizer = match tokenizer {
        Some(t) => TextTokenizer::from_tokenizer_json(t, bos, add_bos)?,
        // A SentencePiece vocabulary is tokenized as its GGUF file would be, not through
        // tokenizer.json (whose conversion may differ from llama.cpp's tokenizer).
        None if vocab.model == "llama" => TextTokenizer::from_spm_vocab(
            &vocab,
            bos,
            add_bos,
            format!("{} (tokenizer.model)", path.display()),
        )?,
        None => {
            let tok_path = path.join("tokenizer.json");
            if !tok_path.is_file() {
                bail!(
                    "{}: no tokenizer.json (or pass --tokenizer)",
                    path.display()
                );
            }
            TextTokenizer::from_tokenizer_json(&tok_path, bos, add_bos)?
        }
    };
    let file_bytes = dir
        .shards
        .iter()
        .filter_map(|s| std::fs::metadata(&s.path).ok())
        .map(|m| m.len())
        .sum();
    let n_params = dir.parameter_count();
    let weights = weights::load_hf(&dir)?;
    Ok(LoadedModel {
        name: display_name(path),
        model_name: dir.display_name(),
        path: path.to_path_buf(),
        quant: "F32".into(),
        file_bytes,
        bits_per_weight: 32.0,
        n_params,
        model: Model::new(weights),
        tokenizer,
        notes: vec!["Hugging Face folder, run in F32".into()],
    })
}
