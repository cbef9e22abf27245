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
}

/// What the model card's YAML front matter says (only the keys quantfit reports).
#[derive(Clone, Debug, Default)]
pub struct ModelCard {
    pub license: Option<String>,
    pub license_name: Option<String>,
    pub license_link: Option<String>,
    /// The first base model (`base_model`, a string or a list).
    pub base_model: Option<String>,
    /// Every base model listed.
    pub base_models: Vec<String>,
    /// `datasets`: the data the model was trained or fine-tuned on, as the card names it.
    pub datasets: Vec<String>,
}

impl ModelCard {
    /// Reads the keys above from the YAML front matter. A small line parser rather than a YAML
    /// crate: cards use only `key: value` and `key:` followed by `- item` lines for these keys.
    pub fn parse(text: &str) -> ModelCard {
        let mut card = ModelCard::default();
        let Some(rest) = text.strip_prefix("---") else {
            return card;
        };
        let Some(end) = rest.find("\n---") else {
            return card;
        };
        let mut list: Option<&str> = None;
        for line in rest[..end].lines() {
            let trimmed = line.trim();
            if let Some(key) = list {
                if let Some(item) = trimmed.strip_prefix("- ") {
                    let item = unquote(item);
                    match key {
                        "base_model" => card.base_models.push(item),
                        _ => card.datasets.push(item),
                    }
                    continue;
                }
                list = None;
            }
            if let Some((key, value)) = line.split_once(':') {
                let (key, value) = (key.trim(), unquote(value.trim()));
                match key {
                    "license" if !value.is_empty() => card.license = Some(value),
                    "license_name" if !value.is_empty() => card.license_name = Some(value),
                    "license_link" if !value.is_empty() => card.license_link = Some(value),
                    "base_model" if value.is_empty() => list = Some("base_model"),
                    "base_model" => card.base_models.push(value),
                    "datasets" if value.is_empty() => list = Some("datasets"),
                    "datasets" => card.datasets.extend(inline_list(&value)),
                    _ => {}
                }
            }
        }
        card.base_models.retain(|b| !b.is_empty() && b != "none");
        card.base_model = card.base_models.first().cloned();
        card
    }
}

/// `[a, b]` or a single value.
fn inline_list(value: &str) -> Vec<String> {
    value
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(unquote)
        .filter(|s| !s.is_empty())
        .collect()
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches(|c| c == '"' || c == '\'').to_string()
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

/// The name a folder's model goes by (GGUF `general.name`): the model card's base model, else
/// config.json's `_name_or_path`, else the folder name.
pub fn model_name(card: &ModelCard, config: &Json, folder: &Path) -> String {
    let last = |b: &str| b.rsplit('/').next().map(str::to_string);
    card.base_model
        .as_deref()
        .and_then(last)
        .or_else(|| {
            config
                .get("_name_or_path")
                .and_then(|v| v.as_str())
                .and_then(last)
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            folder
                .canonicalize()
                .unwrap_or(folder.to_path_buf())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
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
        let mut files: Vec<String> = Vec::new();
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
            if !files.iter().any(|x| x == f) {
                files.push(f.to_string());
            }
        }
        files.sort();
        return files
            .into_iter()
            .map(|f| {
                let p = dir.join(&f);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_front_matter() {
        let card = ModelCard::parse("---\nlicense: apache-2.0\nbase_model:\n- HuggingFaceTB/SmolLM2-135M\ntags: [a]\n---\n# x");
        assert_eq!(card.license.as_deref(), Some("apache-2.0"));
        assert_eq!(
            card.base_model.as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M")
        );
        let card = ModelCard::parse(
            "---\nlicense: other\nlicense_name: \"llama3.1\"\nbase_model: meta/x\n---\n",
        );
        assert_eq!(card.license_name.as_deref(), Some("llama3.1"));
        assert_eq!(card.base_model.as_deref(), Some("meta/x"));
        assert!(ModelCard::parse("no front matter").license.is_none());
        let card = ModelCard::parse(
            "---\nlicense: other\nlicense_link: https://x/LICENSE\nbase_model: none\ndatasets:\n- a/b\n- 'c'\nlanguage: [en]\n---\n",
        );
        assert_eq!(card.license_link.as_deref(), Some("https://x/LICENSE"));
        assert_eq!(card.base_model, None, "'none' names no base model");
        assert_eq!(card.datasets, ["a/b", "c"]);
        let card = ModelCard::parse("---\ndatasets: [x, \"y\"]\n---\n");
        assert_eq!(card.datasets, ["x", "y"]);
    }
}
