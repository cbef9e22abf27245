use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use crate::gguf::convert::{plan_tensors, size_label};
use crate::gguf::hparams::{check_tensors, hparams};
use crate::gguf::GgufFile;
use crate::source::arch::by_gguf_name;
use crate::source::hf::ModelDir;
use crate::source::tokenizer::read_vocab;

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or a Hugging Face model folder.
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let doc = if args.path.is_dir() {
        inspect_folder(&args.path)?
    } else {
        inspect_gguf(&args.path)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    for key in [
        "path",
        "format",
        "checked",
        "architecture",
        "vocabulary",
        "name",
        "parameters",
        "size_label",
        "context_length",
        "license_architecture",
        "license_weights",
        "license_data",
        "file_bytes",
        "bits_per_weight",
    ] {
        if let Some(v) = doc.get(key).filter(|v| !v.is_null()) {
            let text = match v.as_str() {
                Some(s) => s.to_string(),
                None if v.is_f64() => format!("{:.3}", v.as_f64().unwrap_or(0.0)),
                None => v.to_string(),
            };
            println!("{key:<21} {text}");
        }
    }
    if let Some(types) = doc.get("type_counts").and_then(|t| t.as_object()) {
        let parts: Vec<String> = types.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("{:<21} {}", "tensor types", parts.join(", "));
    }
    println!();
    println!(
        "{:<40} {:>18} {:>8} {:>12}",
        "tensor", "shape", "type", "bytes"
    );
    for t in doc["tensors"].as_array().into_iter().flatten() {
        let shape = t["shape"]
            .as_array()
            .map(|s| {
                s.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x")
            })
            .unwrap_or_default();
        println!(
            "{:<40} {:>18} {:>8} {:>12}",
            t["name"].as_str().unwrap_or(""),
            shape,
            t["type"].as_str().unwrap_or(""),
            t["bytes"].as_u64().unwrap_or(0)
        );
    }
    Ok(())
}

/// How many tensors of each type, from the rows built for the report.
fn count_types(tensors: &[serde_json::Value]) -> serde_json::Map<String, serde_json::Value> {
    let mut m = std::collections::BTreeMap::<String, u64>::new();
    for t in tensors {
        *m.entry(t["type"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    m.into_iter().map(|(k, v)| (k, json!(v))).collect()
}

fn inspect_gguf(path: &std::path::Path) -> Result<serde_json::Value> {
    let f = GgufFile::open(path)?;
    let arch = f
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .with_context(|| {
            format!(
                "{}: metadata key general.architecture is missing",
                path.display()
            )
        })?
        .to_string();
    // A family quantfit knows is checked as eval checks it (metadata against itself and every
    // tensor's shape); another is described from its structure, which the reader checked.
    let checked = if by_gguf_name(&arch).is_some() {
        let (description, h) = hparams(&f)?;
        check_tensors(&f, description, &h)?;
        "metadata and tensor shapes"
    } else {
        "file structure only (quantfit does not know this architecture)"
    };
    let params: u64 = f
        .tensors
        .iter()
        .map(|t| t.dims.iter().product::<u64>())
        .sum();
    let tensor_bytes: u64 = f.tensors.iter().map(|t| t.bytes).sum();
    let lic = crate::plan::license::from_gguf(&f, &path.display().to_string());
    let tensors: Vec<_> = f
        .tensors
        .iter()
        .map(|t| json!({ "name": t.name, "shape": t.dims, "type": t.type_name, "bytes": t.bytes }))
        .collect();
    Ok(json!({
        "path": path,
        "format": format!("GGUF v{}", f.version),
        "checked": checked,
        "architecture": arch,
        "name": f.get("general.name").and_then(|v| v.as_str()),
        "parameters": params,
        "size_label": size_label(params),
        "context_length": f.get(&format!("{arch}.context_length")).and_then(|v| v.as_u64()),
        "license": f.get("general.license").and_then(|v| v.as_str()),
        "license_architecture": lic.architecture,
        "license_weights": format!("{} ({})", lic.weights, lic.weights_terms),
        "license_data": lic.data,
        "file_bytes": f.file_size(),
        "tensor_bytes": tensor_bytes,
        "bits_per_weight": tensor_bytes as f64 * 8.0 / params.max(1) as f64,
        "type_counts": count_types(&tensors),
        "metadata": f.metadata.iter().map(|(k, v)| (k.clone(), json!(v.summary()))).collect::<serde_json::Map<_, _>>(),
        "tensors": tensors,
    }))
}

fn inspect_folder(path: &std::path::Path) -> Result<serde_json::Value> {
    let m = ModelDir::open(path)?;
    // What a conversion would check first: the vocabulary, then every tensor against config.json.
    let vocab = read_vocab(
        &m.path,
        m.hparams.vocab_size,
        &m.config,
        m.arch.spm_space_prefix,
    )?;
    plan_tensors(&m)?;
    let params = m.parameter_count();
    let lic = crate::plan::license::from_card(
        &m.card,
        &m.arch_class,
        m.config.get("auto_map").is_some(),
        &path.join("README.md").display().to_string(),
    );
    let mut bytes = 0u64;
    let tensors: Vec<_> = m
        .tensor_names
        .iter()
        .map(|n| {
            let (_, t) = m.tensor(n).expect("listed");
            bytes += (t.end - t.start) as u64;
            json!({ "name": n, "shape": t.shape, "type": t.dtype.name(), "bytes": t.end - t.start })
        })
        .collect();
    Ok(json!({
        "path": path,
        "format": "Hugging Face safetensors",
        "checked": "config.json, vocabulary and tensor shapes",
        "architecture": format!("{} ({})", m.arch_class, m.arch.gguf_name),
        "vocabulary": format!("{} tokens ({})", vocab.tokens.len(), vocab.model),
        "name": m.display_name(),
        "parameters": params,
        "size_label": size_label(params),
        "context_length": m.hparams.context_length,
        "license": m.card.license,
        "license_architecture": lic.architecture,
        "license_weights": format!("{} ({})", lic.weights, lic.weights_terms),
        "license_data": lic.data,
        "file_bytes": m.shards.iter().map(|s| std::fs::metadata(&s.path).map(|md| md.len()).unwrap_or(0)).sum::<u64>(),
        "bits_per_weight": bytes as f64 * 8.0 / params.max(1) as f64,
        "type_counts": count_types(&tensors),
        "tensors": tensors,
    }))
}
