//! A Hugging Face model folder: config.json, the weights (one `model.safetensors` or the
//! shards of `model.safetensors.index.json`), the tokenizer files and the model card. Weights
//! are memory-mapped and read one tensor at a time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use super::arch::{self, Architecture};
use super::safetensors::{SafetensorsFile, StTensor};

pub use super::arch::HParams;
use super::card::FolderFacts;
pub use super::card::ModelCard;

pub struct ModelDir {
    pub path: PathBuf,
    pub config: Json,
    pub arch: &'static Architecture,
    pub arch_class: String,
    pub hparams: HParams,
    pub shards: Vec<SafetensorsFile>,
    /// Tensor name to (shard, index in shard).
    index: HashMap<String, (usize, usize)>,
    /// Names in a stable order: model-level first, then by layer.
    pub tensor_names: Vec<String>,
    pub card: ModelCard,
    /// generation_config.json, when present and valid JSON (llama.cpp ignores it otherwise).
    pub generation: Option<Json>,
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

impl ModelDir {
    pub fn open(path: &Path) -> Result<ModelDir> {
        if !path.is_dir() {
            bail!("{}: not a model folder", path.display());
        }
        let config_path = path.join("config.json");
        let config = read_json(&config_path)?;
        let arch_class = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .with_context(|| {
                format!(
                    "{}: missing required key \"architectures\"",
                    config_path.display()
                )
            })?
            .to_string();
        let arch = arch::find(&arch_class).with_context(|| config_path.display().to_string())?;
        let hparams = HParams::from_config(&config, &config_path, arch)?;
        hparams
            .rope_scaling
            .check_supported(&config_path.display().to_string())?;

        let shard_paths = weight_files(path)?;
        let mut shards = Vec::with_capacity(shard_paths.len());
        let mut index = HashMap::new();
        for (si, sp) in shard_paths.iter().enumerate() {
            let file = SafetensorsFile::open(sp)?;
            for (ti, t) in file.tensors.iter().enumerate() {
                if let Some((prev, _)) = index.insert(t.name.clone(), (si, ti)) {
                    bail!(
                        "{}: tensor {} is also in {}",
                        sp.display(),
                        t.name,
                        shard_paths[prev].display()
                    );
                }
            }
            shards.push(file);
        }
        check_index_agrees(path, &index, &shard_paths)?;

        let mut tensor_names: Vec<String> = index.keys().cloned().collect();
        tensor_names.sort_by_key(|n| sort_key(n));
        let card = std::fs::read_to_string(path.join("README.md"))
            .map(|t| ModelCard::parse(&t))
            .unwrap_or_default();
        Ok(ModelDir {
            path: path.to_path_buf(),
            config,
            arch,
            arch_class,
            hparams,
            shards,
            index,
            tensor_names,
            card,
            generation: read_json(&path.join("generation_config.json")).ok(),
        })
    }

    pub fn tensor(&self, name: &str) -> Option<(&SafetensorsFile, &StTensor)> {
        let &(s, t) = self.index.get(name)?;
        Some((&self.shards[s], &self.shards[s].tensors[t]))
    }

    /// Every file of the folder that a conversion may read (those that exist).
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = [
            "config.json",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "added_tokens.json",
            "generation_config.json",
            "README.md",
        ]
        .iter()
        .map(|f| self.path.join(f))
        .filter(|p| p.is_file())
        .collect();
        files.extend(self.shards.iter().map(|s| s.path.clone()));
        files
    }

    /// Total parameters of the weights.
    pub fn parameter_count(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| &s.tensors)
            .map(|t| t.elements() as u64)
            .sum()
    }

    /// A display name: the base model's repository name, else the folder's name.
    pub fn display_name(&self) -> String {
        model_name(&self.card, &self.config, &self.path)
    }
}

/// The name a folder's model goes by (GGUF `general.name`), as llama.cpp's converter derives
/// it: the card's `name` / `model_name`, else config.json's `_name_or_path`, else the folder's
/// name, title-cased by gguf-py's rule.
pub fn model_name(card: &ModelCard, config: &Json, folder: &Path) -> String {
    super::card::model_name(&FolderFacts {
        card,
        config,
        generation: None,
        folder,
        total_params: 0,
        size_label: String::new(),
    })
}

/// Model-level tensors first, then layers in numeric order (llama.cpp's order).
fn sort_key(name: &str) -> (u32, u32, String) {
    match name
        .strip_prefix("model.layers.")
        .and_then(|r| r.split_once('.'))
    {
        Some((n, rest)) => (1, n.parse().unwrap_or(u32::MAX), rest.to_string()),
        None => (
            if name.starts_with("lm_head") || name == "model.norm.weight" {
                2
            } else {
                0
            },
            0,
            name.to_string(),
        ),
    }
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let index = read_json(&index_path)?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: missing \"weight_map\"", index_path.display()))?;
        // A set, not a list searched per entry: an index may list hundreds of thousands.
        let mut files = std::collections::BTreeSet::new();
        for v in map.values() {
            let f = v.as_str().with_context(|| {
                format!(
                    "{}: weight_map values must be file names",
                    index_path.display()
                )
            })?;
            if f.contains('/') || f.contains("..") {
                bail!(
                    "{}: shard name {f:?} leaves the model folder",
                    index_path.display()
                );
            }
            files.insert(f);
        }
        return files
            .into_iter()
            .map(|f| {
                let p = dir.join(f);
                if p.is_file() {
                    Ok(p)
                } else {
                    bail!("{}: shard {f} is listed but missing", index_path.display())
                }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    found.sort();
    if found.is_empty() {
        bail!(
            "{}: no model.safetensors, shard index or *.safetensors weights",
            dir.display()
        );
    }
    Ok(found)
}

fn check_index_agrees(
    dir: &Path,
    index: &HashMap<String, (usize, usize)>,
    shards: &[PathBuf],
) -> Result<()> {
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.exists() {
        return Ok(());
    }
    let json = read_json(&index_path)?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .expect("checked when listing shards");
    for (name, file) in map {
        match index.get(name) {
            None => bail!(
                "{}: lists tensor {name} but no shard holds it",
                index_path.display()
            ),
            Some(&(s, _)) if shards[s].file_name().and_then(|f| f.to_str()) != file.as_str() => {
                bail!(
                    "{}: lists tensor {name} in {file}, but it is in {}",
                    index_path.display(),
                    shards[s].display()
                )
            }
            _ => {}
        }
    }
    if let Some(extra) = index.keys().find(|k| !map.contains_key(*k)) {
        bail!(
            "{}: tensor {extra} is in a shard but not in the index",
            index_path.display()
        );
    }
    Ok(())
}
