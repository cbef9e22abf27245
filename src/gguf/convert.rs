//! Hugging Face folder to GGUF files, one or several file types from a single read of the
//! weights: each tensor is read, permuted where llama.cpp's layout wants it, quantized once per
//! distinct block format and appended to every output that needs it. Memory stays at a few
//! tensors whatever the model's size.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::imatrix::Imatrix;
use super::{GgufWriter, TensorSpec, Value};
use crate::output::{self, Inputs};
use crate::quant::rules::{tensor_type, FileType, ModelFacts, RuleOptions};
use crate::quant::{quantize_into, GgmlType, Isa, QuantizeOptions};
use crate::source::arch::{permute_qk_rows, Generator, MetaValue, Presence, Transform};
use crate::source::card::{general_metadata, model_name, FolderFacts, GeneralValue};
use crate::source::hf::ModelDir;
use crate::source::tokenizer::{read_vocab, Vocab};

pub struct ConvertOptions {
    pub types: Vec<FileType>,
    /// A file for one type; a folder for several.
    pub output: PathBuf,
    pub rules: RuleOptions,
    pub imatrix: Option<Imatrix>,
    pub isa: Isa,
    pub progress: bool,
    /// Replace an output that is a symbolic link (the link, never its target).
    pub force: bool,
    /// Files read besides the model folder's (the importance matrix), which no output may be.
    pub extra_inputs: Vec<PathBuf>,
}

impl ConvertOptions {
    /// A plain `quantize --type TYPES -o OUTPUT` run: llama.cpp's default rules, no importance
    /// matrix, the best kernels here, no progress bar.
    pub fn new(types: Vec<FileType>, output: PathBuf) -> ConvertOptions {
        ConvertOptions {
            types,
            output,
            rules: RuleOptions::default(),
            imatrix: None,
            isa: Isa::best(),
            progress: false,
            force: false,
            extra_inputs: Vec::new(),
        }
    }
}

/// One tensor of the source, as the outputs will hold it.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    /// The checkpoint tensors it is read from, stacked in order (one per expert for a
    /// mixture's expert matrices); none for a generated one.
    pub sources: Vec<String>,
    /// Computed from the hyperparameters instead of read.
    pub generated: Option<Generator>,
    pub name: String,
    /// Innermost first.
    pub dims: Vec<u64>,
    pub permute_heads: Option<usize>,
    /// Gemma's norms: + 1 on the way (see `Transform::AddOne`).
    pub add_one: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorSummary {
    pub name: String,
    pub shape: Vec<u64>,
    #[serde(rename = "type")]
    pub ty: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct OutputSummary {
    pub path: PathBuf,
    pub file_type: String,
    pub file_bytes: u64,
    pub tensor_bytes: u64,
    pub bits_per_weight: f64,
    pub tensors: Vec<TensorSummary>,
}

/// llama.cpp's size label ("135M", "7.2B"): two significant digits at least.
pub fn size_label(params: u64) -> String {
    let p = params as f64;
    let (scaled, suffix) = if p > 1e12 {
        (p / 1e12, "T")
    } else if p > 1e9 {
        (p / 1e9, "B")
    } else if p > 1e6 {
        (p / 1e6, "M")
    } else {
        (p / 1e3, "K")
    };
    let digits = (scaled.round() as u64)
        .to_string()
        .trim_start_matches('0')
        .len();
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// llama.cpp's size label for a tensor list: the parameter count, or for a mixture of experts
/// "N x (shared + one expert's parameters)" (gguf-py's `size_label` on the counts of
/// `GGUFWriter.get_total_parameter_count`, where a `_exps.` tensor's outermost dimension
/// counts its experts).
pub fn params_label(tensors: &[PlannedTensor]) -> String {
    let (mut shared, mut per_expert, mut experts, mut stacked) = (0u64, 0u64, 0u64, 0u64);
    for t in tensors {
        let size: u64 = t.dims.iter().product();
        match t.dims.last() {
            Some(&n) if t.name.contains("_exps.") && n > 0 => {
                per_expert += size / n;
                experts += n;
                stacked += 1;
            }
            _ => shared += size,
        }
    }
    match experts.checked_div(stacked) {
        Some(n) => format!("{n}x{}", size_label(shared + per_expert)),
        None => size_label(shared),
    }
}

/// The tensors the outputs hold, in order, with llama.cpp names and shapes: the
/// architecture's description evaluated for the model's config, each checked against the
/// checkpoint (present once, the shape the config implies, nothing the description does not
/// know).
pub fn plan_tensors(model: &ModelDir) -> Result<Vec<PlannedTensor>> {
    let h = &model.hparams;
    let arch = model.arch;
    let path = model.path.display();
    let mut used = std::collections::HashSet::new();
    let mut out = Vec::new();
    for e in arch.expected_tensors(h) {
        if let Transform::Generate(g) = e.transform {
            if e.presence == Presence::Required {
                out.push(PlannedTensor {
                    sources: Vec::new(),
                    generated: Some(g),
                    name: e.gguf,
                    dims: e.dims,
                    permute_heads: None,
                    add_one: false,
                });
            }
            continue;
        }
        let sources = e.sources(h);
        let stacked = e.transform == Transform::StackExperts;
        // Each source holds the whole tensor, or one expert's slice of it.
        let part_dims = if stacked {
            &e.dims[..e.dims.len() - 1]
        } else {
            &e.dims[..]
        };
        let found: Vec<&str> = sources
            .iter()
            .filter(|s| model.tensor(s).is_some())
            .map(String::as_str)
            .collect();
        if found.is_empty() {
            if e.presence == Presence::Required {
                bail!(
                    "{path}: tensor {} is missing; a {} model with this config.json has it",
                    sources.first().unwrap_or(&e.hf),
                    model.arch_class
                );
            }
            continue;
        }
        if e.presence == Presence::Absent {
            bail!(
                "{path}: tensor {} contradicts config.json (e.g. \"attention_bias\" is false, or no experts are configured); a {} model with this config has no such tensor",
                found[0],
                model.arch_class
            );
        }
        if let Some(missing) = sources.iter().find(|s| model.tensor(s).is_none()) {
            bail!(
                "{path}: tensor {missing} is missing; config.json gives {} experts and {} needs all of them",
                h.n_expert,
                e.gguf
            );
        }
        for source in &sources {
            let (_, t) = model.tensor(source).expect("checked above");
            used.insert(source.clone());
            let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
            if dims != part_dims {
                let want: Vec<u64> = part_dims.iter().rev().copied().collect();
                bail!(
                    "{path}: tensor {source} has shape {:?}, but config.json implies {want:?}",
                    t.shape
                );
            }
        }
        let permute_heads = e.permute_heads(h).map(|n| n as usize);
        if let Some(heads) = permute_heads {
            let rows = e.dims.get(1).copied().unwrap_or(e.dims[0]);
            if rows % (2 * heads as u64) != 0 {
                bail!(
                    "{path}: tensor {}: {rows} rows do not split into {heads} heads of even size",
                    e.hf
                );
            }
        }
        out.push(PlannedTensor {
            sources,
            generated: None,
            name: e.gguf,
            dims: e.dims,
            permute_heads,
            add_one: e.transform == Transform::AddOne,
        });
    }
    if let Some(extra) = model
        .tensor_names
        .iter()
        .find(|n| !used.contains(*n) && !arch.ignores(n))
    {
        bail!(
            "{path}: tensor {extra} is not part of a {} model (no llama.cpp name for it)",
            model.arch_class
        );
    }
    // llama.cpp's loader order (weight_name_comparer): by layer, non-layer tensors first, then
    // by name. llama-quantize writes in this order, so the files line up byte for byte.
    out.sort_by(|a, b| (layer_of(&a.name), &a.name).cmp(&(layer_of(&b.name), &b.name)));
    Ok(out)
}

/// A planned tensor's values as f32 (permuted where llama.cpp wants it, or generated), and
/// the file they come from, for messages.
pub fn tensor_values(model: &ModelDir, t: &PlannedTensor) -> Result<(Vec<f32>, String)> {
    let (mut data, origin) = part_values(model, t, 0)?;
    for part in 1..t.parts() {
        data.extend_from_slice(&part_values(model, t, part)?.0);
    }
    Ok((data, origin))
}

impl PlannedTensor {
    /// Pieces it is read and written in: one per expert for a stacked tensor, else one.
    pub fn parts(&self) -> usize {
        self.sources.len().max(1)
    }
}

/// Piece `part` of a planned tensor (see `PlannedTensor::parts`) as f32.
pub fn part_values(model: &ModelDir, t: &PlannedTensor, part: usize) -> Result<(Vec<f32>, String)> {
    if let Some(g) = t.generated {
        let data = g
            .values(&model.hparams)
            .with_context(|| model.path.display().to_string())?;
        return Ok((data, model.path.join("config.json").display().to_string()));
    }
    let (file, st) = model
        .tensor(&t.sources[part])
        .expect("planned from the index");
    let mut data = file.to_f32(st)?;
    file.release(st);
    if let Some(heads) = t.permute_heads {
        data = permute_qk_rows(
            &data,
            st.shape[0],
            st.shape.get(1).copied().unwrap_or(1),
            heads,
        );
    }
    if t.add_one {
        data.iter_mut().for_each(|v| *v += 1.0);
    }
    Ok((data, file.path.display().to_string()))
}

fn layer_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

pub fn model_facts(model: &ModelDir, tensors: &[PlannedTensor]) -> ModelFacts {
    ModelFacts::of(
        model.arch,
        &model.hparams,
        tensors.iter().any(|t| t.name == "output.weight"),
    )
}

fn metadata(
    model: &ModelDir,
    vocab: &Vocab,
    ftype: FileType,
    tensors: &[PlannedTensor],
    imatrix: Option<&Imatrix>,
) -> Vec<(String, Value)> {
    let h = &model.hparams;
    let mut kv: Vec<(String, Value)> = vec![
        (
            "general.architecture".into(),
            Value::String(model.arch.gguf_name.into()),
        ),
        ("general.type".into(), Value::String("model".into())),
    ];
    kv.extend(
        general_metadata(&folder_facts(model, tensors))
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    GeneralValue::Str(s) => Value::String(s),
                    GeneralValue::U32(x) => Value::U32(x),
                    GeneralValue::I32(x) => Value::I32(x),
                    GeneralValue::F32(x) => Value::F32(x),
                    GeneralValue::Strings(a) => {
                        Value::Array(a.into_iter().map(Value::String).collect())
                    }
                };
                (k, v)
            }),
    );
    kv.extend(
        model
            .arch
            .metadata_values(h)
            .into_iter()
            .map(|(k, v)| match v {
                MetaValue::U32(x) => (k, Value::U32(x)),
                MetaValue::F32(x) => (k, Value::F32(x)),
            }),
    );
    kv.extend([
        (
            "tokenizer.ggml.model".into(),
            Value::String(vocab.model.clone()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            Value::String(vocab.pre.clone()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(vocab.tokens.iter().cloned().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vocab.token_types.iter().map(|&t| Value::I32(t)).collect()),
        ),
    ]);
    if let Some(scores) = &vocab.scores {
        kv.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.iter().map(|&s| Value::F32(s)).collect()),
        ));
    }
    // Byte-level BPE vocabularies carry merges; SentencePiece ones scores instead.
    if vocab.model == "gpt2" {
        kv.push((
            "tokenizer.ggml.merges".into(),
            Value::Array(vocab.merges.iter().cloned().map(Value::String).collect()),
        ));
    }
    for (kind, id) in &vocab.special_ids {
        // gguf-py's key names (its spelling); it has no key for cls and skips it.
        let key = match kind.as_str() {
            "unk" => "unknown",
            "sep" => "seperator",
            "pad" => "padding",
            "cls" => continue,
            k => k,
        };
        kv.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(*id)));
    }
    for (flag, b) in &vocab.flags {
        kv.push((format!("tokenizer.ggml.{flag}"), Value::Bool(*b)));
    }
    for (key, t) in &vocab.chat_templates {
        kv.push((key.clone(), Value::String(t.clone())));
    }
    if let Some(b) = vocab.add_space_prefix {
        kv.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(b)));
    }
    // llama-quantize re-sets these two last; writing them last too keeps our files identical
    // to a llama-quantize run on our own F32 output.
    kv.push(("general.quantization_version".into(), Value::U32(2)));
    kv.push(("general.file_type".into(), Value::U32(ftype.llama_ftype())));
    if let Some(im) = imatrix {
        // What llama-quantize records (strings cut at 127 bytes, as it does).
        let cut = |s: &str| s[..s.floor_char_boundary(127)].to_string();
        kv.push(("quantize.imatrix.file".into(), Value::String(cut(&im.file))));
        if let Some(d) = im.datasets.first() {
            kv.push(("quantize.imatrix.dataset".into(), Value::String(cut(d))));
        }
        kv.push((
            "quantize.imatrix.entries_count".into(),
            Value::U32(im.entries.len() as u32),
        ));
        if im.chunks > 0 {
            kv.push((
                "quantize.imatrix.chunks_count".into(),
                Value::U32(im.chunks),
            ));
        }
    }
    kv
}

/// What the folder says of itself, for the `general.*` keys.
fn folder_facts<'a>(model: &'a ModelDir, tensors: &[PlannedTensor]) -> FolderFacts<'a> {
    let total_params = tensors.iter().map(|t| t.dims.iter().product::<u64>()).sum();
    FolderFacts {
        card: &model.card,
        config: &model.config,
        generation: model.generation.as_ref(),
        folder: &model.path,
        total_params,
        size_label: params_label(tensors),
    }
}

/// A model name as a file name: no spaces or path separators.
fn file_stem(name: &str) -> String {
    let stem: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == '/' || c == '\\' {
                '-'
            } else {
                c
            }
        })
        .collect();
    if stem.is_empty() || stem.starts_with('.') {
        format!("model{stem}")
    } else {
        stem
    }
}

/// Where each file type goes: the given file for one type, `<folder>/<name>-<TYPE>.gguf` else.
/// Where each output goes: `output` itself for one type (unless it is, or ends like, a folder),
/// else `output/MODEL-TYPE.gguf`; the folder is made if missing (and removed again if the run
/// fails, through the returned guard).
pub fn output_paths(
    model_name: &str,
    types: &[FileType],
    output: &Path,
) -> Result<(Vec<PathBuf>, Option<output::CreatedDir>)> {
    let folder_like = output.is_dir() || output.as_os_str().as_encoded_bytes().ends_with(b"/");
    if types.len() == 1 && !folder_like {
        return Ok((vec![output.to_path_buf()], None));
    }
    let dir = output::CreatedDir::create(output)?;
    Ok((
        types
            .iter()
            .map(|t| output.join(format!("{model_name}-{}.gguf", t.name())))
            .collect(),
        Some(dir),
    ))
}

pub fn convert(model: &ModelDir, opts: &ConvertOptions) -> Result<Vec<OutputSummary>> {
    if opts.types.is_empty() {
        bail!("no output type given");
    }
    // The tokenizer first: a vocabulary that disagrees with config.json is the clearer message.
    let vocab = read_vocab(
        &model.path,
        model.hparams.vocab_size,
        &model.config,
        model.arch.spm_space_prefix,
    )?;
    let tensors = plan_tensors(model)?;
    let facts = model_facts(model, &tensors);
    for w in &vocab.warnings {
        eprintln!("warning: {w}");
    }
    let name = file_stem(&model_name(&folder_facts(model, &tensors)));
    let inputs = Inputs::capture(model.input_files().iter().chain(&opts.extra_inputs));
    let (paths, created) = output_paths(&name, &opts.types, &opts.output)?;
    let targets = output::check_all(&paths, &inputs, opts.force)?;
    let mut rules = opts.rules.clone();
    rules.has_imatrix = opts.imatrix.is_some();

    // Every output's tensor types, known before any data is read.
    let mut specs: Vec<Vec<TensorSpec>> = Vec::new();
    for &ft in &opts.types {
        specs.push(
            tensors
                .iter()
                .map(|t| TensorSpec {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: tensor_type(ft, &facts, &rules, &t.name, &t.dims),
                })
                .collect(),
        );
    }
    if let Some(im) = &opts.imatrix {
        for t in tensors.iter().filter(|t| t.dims.len() >= 2) {
            if let Some(w) = im.get(&t.name) {
                // One vector per expert for a stacked tensor, as llama-imatrix collects them.
                let want = t.dims[0] * t.dims.get(2).copied().unwrap_or(1);
                if w.len() as u64 != want {
                    bail!(
                        "imatrix entry {} has {} values but the tensor needs {want} ({} columns{})",
                        t.name,
                        w.len(),
                        t.dims[0],
                        if t.dims.len() > 2 {
                            format!(" x {} experts", t.dims[2])
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
    }
    let mut writers = Vec::new();
    for ((ft, target), s) in opts.types.iter().zip(&targets).zip(&specs) {
        writers.push(GgufWriter::create(
            target,
            &metadata(model, &vocab, *ft, &tensors, opts.imatrix.as_ref()),
            s.clone(),
        )?);
    }

    let total_bytes: u64 = tensors
        .iter()
        .map(|t| t.dims.iter().product::<u64>() * 4)
        .sum();
    let bar = progress_bar(opts.progress, total_bytes);
    let start = Instant::now();
    for (i, t) in tensors.iter().enumerate() {
        bar.set_message(t.name.clone());
        let cols = t.dims[0] as usize;
        for part in 0..t.parts() {
            let (data, origin) = part_values(model, t, part)?;
            let imatrix = opts
                .imatrix
                .as_ref()
                .and_then(|im| im.get(&t.name))
                // One importance vector per part (per expert of a stacked tensor).
                .map(|w| &w[part * cols..(part + 1) * cols]);
            let mut done: HashMap<GgmlType, Vec<u8>> = HashMap::new();
            for (w, s) in writers.iter_mut().zip(&specs) {
                let ty = s[i].ty;
                let bytes = match done.entry(ty) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let mut out = vec![0u8; (s[i].bytes() / t.parts() as u64) as usize];
                        quantize_into(
                            ty,
                            &data,
                            cols,
                            imatrix,
                            QuantizeOptions {
                                isa: opts.isa,
                                parallel: true,
                            },
                            &mut out,
                        )
                        .with_context(|| format!("{origin}: tensor {}", t.name))?;
                        e.insert(out)
                    }
                };
                w.write_tensor_part(&t.name, bytes)?;
            }
            bar.inc(data.len() as u64 * 4);
        }
    }
    bar.finish_and_clear();
    // Every output complete and synced, the inputs as they were: only then do the outputs
    // take their names, all of them or none.
    let mut summaries = Vec::new();
    let mut pending = Vec::new();
    for ((w, path), (ft, s)) in writers
        .into_iter()
        .zip(paths)
        .zip(opts.types.iter().zip(specs))
    {
        let (done, file_bytes) = w.finish()?;
        pending.push(done);
        let tensor_bytes: u64 = s.iter().map(|t| t.bytes()).sum();
        let weights: u64 = s.iter().map(|t| t.elements()).sum();
        summaries.push(OutputSummary {
            path,
            file_type: ft.name().to_string(),
            file_bytes,
            tensor_bytes,
            bits_per_weight: tensor_bytes as f64 * 8.0 / weights.max(1) as f64,
            tensors: s
                .iter()
                .map(|t| TensorSummary {
                    name: t.name.clone(),
                    shape: t.dims.clone(),
                    ty: t.ty.name().to_string(),
                    bytes: t.bytes(),
                })
                .collect(),
        });
    }
    inputs.verify()?;
    output::commit_all(pending)?;
    if let Some(d) = created {
        d.keep();
    }
    if opts.progress {
        eprintln!(
            "converted in {:.1}s ({:.0} MB/s of f32 weights)",
            start.elapsed().as_secs_f64(),
            total_bytes as f64 / 1e6 / start.elapsed().as_secs_f64()
        );
    }
    Ok(summaries)
}

fn progress_bar(enabled: bool, total: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .expect("valid template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_like_llama_cpp() {
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(6_738_415_616), "6.7B");
        assert_eq!(size_label(70_553_706_496), "71B");
        assert_eq!(size_label(1_235_814_400), "1.2B");
    }
}
