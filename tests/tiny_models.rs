//! The small trained models of other families (../shared/models/tiny-*) against what llama.cpp
//! 0c1e57098 made from the same folders (each fixture's reference.json): for every reference
//! type, quantfit's file has llama.cpp's tensors (GGUF type and sha256 of the bytes) and its
//! whole-file size; the F32 file has llama.cpp's metadata keys, kinds and values; the planner
//! sizes exactly the tensors the converter writes (from the folder and from each file); the
//! folder and the files give llama-perplexity's perplexity within 0.5% (every type on two
//! families in CI, all with `QUANTFIT_TINY_PPL=all`); and generation through the KV cache
//! gives the batch's logits, also past a sliding window.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quantfit::eval::perplexity::ChunkPlan;
use quantfit::eval::run::{evaluate, Compare};
use quantfit::gguf::convert::{convert, plan_tensors, ConvertOptions, OutputSummary};
use quantfit::gguf::{GgufFile, Value};
use quantfit::plan::catalog;
use quantfit::plan::estimate::weight_bytes;
use quantfit::quant::rules::FileType;
use quantfit::source::hf::ModelDir;

/// The fixtures whose architecture quantfit converts and runs.
const FIXTURES: &[&str] = &[
    "tiny-llama",
    "tiny-mixtral",
    "tiny-qwen3moe",
    "tiny-gemma2",
    "tiny-gemma3",
];

fn reference(name: &str) -> serde_json::Value {
    let path = common::shared_dir()
        .join("models")
        .join(name)
        .join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn reference_types(r: &serde_json::Value) -> Vec<FileType> {
    r["types"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| FileType::from_name(k).unwrap_or_else(|| panic!("type {k} unknown to quantfit")))
        .collect()
}

/// Every reference type of a fixture, converted once per test binary.
fn converted(name: &str) -> Vec<OutputSummary> {
    use std::sync::{Mutex, OnceLock};
    static DONE: OnceLock<Mutex<BTreeMap<String, Vec<OutputSummary>>>> = OnceLock::new();
    let mut done = DONE.get_or_init(Default::default).lock().unwrap();
    if let Some(out) = done.get(name) {
        return out.clone();
    }
    let model = ModelDir::open(&common::model_dir(name)).unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-out/tiny")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let opts = ConvertOptions::new(reference_types(&reference(name)), dir.join(""));
    let out = convert(&model, &opts).unwrap();
    done.insert(name.to_string(), out.clone());
    out
}

#[test]
fn tensors_and_file_sizes_match_llama_cpp() {
    let mut failures = Vec::new();
    for name in FIXTURES {
        let r = reference(name);
        for out in converted(name) {
            let want = &r["types"][&out.file_type];
            let f = GgufFile::open(&out.path).unwrap();
            let tensors = want["tensors"].as_object().unwrap();
            if f.tensors.len() != tensors.len() {
                failures.push(format!(
                    "{name} {}: {} tensors, llama.cpp {}",
                    out.file_type,
                    f.tensors.len(),
                    tensors.len()
                ));
            }
            for t in &f.tensors {
                let ty = t.ty.expect("known type").name();
                let hash = common::sha256_hex(f.tensor_data(t));
                let w = &r["types"][&out.file_type]["tensors"][&t.name];
                if w.is_null() {
                    failures.push(format!(
                        "{name} {}: {} not in llama.cpp's file",
                        out.file_type, t.name
                    ));
                } else if w[0] != ty || w[1] != hash.as_str() {
                    failures.push(format!(
                        "{name} {} {}: quantfit {ty} {hash}, llama.cpp {} {}",
                        out.file_type, t.name, w[0], w[1]
                    ));
                }
            }
            let bytes = std::fs::metadata(&out.path).unwrap().len();
            if bytes != want["file_bytes"].as_u64().unwrap() {
                failures.push(format!(
                    "{name} {}: file is {bytes} bytes, llama.cpp's {}",
                    out.file_type, want["file_bytes"]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// reference.json's `gguf_kv` (arrays of the tokenizer given by length) against a value.
fn same_value(want: &serde_json::Value, kind: &str, got: &Value) -> bool {
    match (kind, got) {
        ("STRING", Value::String(s)) => want == s.as_str(),
        ("UINT32", Value::U32(x)) => want.as_u64() == Some(*x as u64),
        ("INT32", Value::I32(x)) => want.as_i64() == Some(*x as i64),
        ("FLOAT32", Value::F32(x)) => want.as_f64() == Some(*x as f64),
        ("BOOL", Value::Bool(b)) => want.as_bool() == Some(*b),
        (k, Value::Array(items)) if k.starts_with("ARRAY[") => {
            if let Some(n) = want.get("array_length") {
                return n.as_u64() == Some(items.len() as u64);
            }
            let inner = &k[6..k.len() - 1];
            let list = want.as_array().unwrap();
            list.len() == items.len()
                && list.iter().zip(items).all(|(w, v)| same_value(w, inner, v))
        }
        _ => false,
    }
}

#[test]
fn f32_metadata_matches_llama_cpp() {
    for name in FIXTURES {
        let r = reference(name);
        let out = converted(name);
        let f32_file = &out.iter().find(|o| o.file_type == "F32").unwrap().path;
        let f = GgufFile::open(f32_file).unwrap();
        let want = r["gguf_kv"].as_object().unwrap();
        let kinds = &r["gguf_kv_types"];
        let mut failures = Vec::new();
        for (key, w) in want {
            match f.get(key) {
                None => failures.push(format!("{key}: missing")),
                Some(v) if !same_value(w, kinds[key].as_str().unwrap(), v) => failures.push(
                    format!("{key}: quantfit {v:?}, llama.cpp {w} ({})", kinds[key]),
                ),
                Some(_) => {}
            }
        }
        for (key, _) in &f.metadata {
            if !want.contains_key(key) {
                failures.push(format!("{key}: not in llama.cpp's file"));
            }
        }
        assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
    }
}

/// The planner reads the same description as the converter: its tensor list for the folder is
/// the converter's, and its byte count for every type is the converted file's tensor bytes.
#[test]
fn planner_sizes_what_the_converter_writes() {
    for name in FIXTURES {
        let dir = common::model_dir(name);
        let spec = catalog::resolve(dir.to_str().unwrap()).unwrap();
        let mut planned = catalog::tensors(&spec);
        planned.sort();
        let model = ModelDir::open(&dir).unwrap();
        let mut written: Vec<(String, Vec<u64>)> = plan_tensors(&model)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.dims))
            .collect();
        written.sort();
        assert_eq!(planned, written, "{name}");
        for out in converted(name) {
            let ft = FileType::from_name(&out.file_type).unwrap();
            assert_eq!(weight_bytes(&spec, ft), out.tensor_bytes, "{name} {ft}");
        }
    }
}

/// `plan --model FILE.gguf` sizes a converted file's tensors as the file holds them.
#[test]
fn planner_sizes_converted_files() {
    for name in FIXTURES {
        for out in converted(name) {
            let spec = catalog::resolve(out.path.to_str().unwrap()).unwrap();
            let ft = FileType::from_name(&out.file_type).unwrap();
            assert_eq!(weight_bytes(&spec, ft), out.tensor_bytes, "{name} {ft}");
        }
    }
}

/// Generation: tokens fed one at a time through the KV cache (the decoding team for dense
/// models, the graph for mixtures of experts and Gemma) give the logits of the whole batch at
/// once. Quantized files agree to 1e-4 of the logits' scale, except Gemma's: its GeGLU rounds
/// every gate to F16 for ggml's GELU table, so the last-bit differences between batch and
/// single-token matrix products flip some of those roundings (one F16 step, 5e-4 relative),
/// and 8-bit activation rounding spreads them, as in llama.cpp.
#[test]
fn generation_matches_the_batch() {
    for name in FIXTURES {
        let files = if name.starts_with("tiny-gemma") {
            1e-2
        } else {
            1e-4
        };
        let text = corpus(&reference(name));
        let outs = converted(name);
        let gguf = |ty: &str| {
            outs.iter()
                .find(|o| o.file_type == ty)
                .unwrap()
                .path
                .clone()
        };
        for (path, tolerance) in [
            (common::model_dir(name), 1e-3),
            (gguf("Q8_0"), files),
            (gguf("Q4_K_M"), files),
        ] {
            let m = quantfit::eval::load(&path, None).unwrap();
            let head: String = text.chars().take(2000).collect();
            let tokens = m.tokenizer.encode(&head).unwrap();
            let mut largest = 0f32;
            for s in common::steps_against_batch(&m.model, &tokens[..24], 16) {
                assert!(
                    s.worst < tolerance * s.scale,
                    "{}: position {}: logits differ by {} (scale {})",
                    path.display(),
                    s.position,
                    s.worst,
                    s.scale
                );
                largest = largest.max(s.worst / s.scale);
            }
            eprintln!(
                "{}: largest difference {largest:.2e} of the logits' scale",
                path.display()
            );
        }
    }
}

fn corpus(r: &serde_json::Value) -> String {
    let file = r["text"].as_str().unwrap();
    std::fs::read_to_string(common::shared_dir().join("corpora").join(file)).unwrap()
}

fn perplexity(path: &Path, text: &str, ctx: usize, chunks: usize) -> f64 {
    let m = quantfit::eval::load(path, None).unwrap();
    let tokens = m.tokenizer.encode(text).unwrap();
    let plan = ChunkPlan::new(tokens.len(), ctx, Some(chunks)).unwrap();
    evaluate(&m, &tokens, plan, Compare::None, false)
        .unwrap()
        .ppl
}

/// Whether the perplexity test runs the file of `type_index` (reference.json's order) of the
/// fixture at `fixture_index`. Every type's tensors are checked byte for byte on every family;
/// its forward pass (the same kernels whatever the family) on two of the five, in rotation,
/// and each family's own layers run on every fixture (its folder): CI stays short on two
/// cores. `QUANTFIT_TINY_PPL=all` runs every file of every fixture.
fn perplexity_checked(fixture_index: usize, type_index: usize) -> bool {
    std::env::var("QUANTFIT_TINY_PPL").is_ok_and(|v| v == "all")
        || (fixture_index + type_index) % FIXTURES.len() < 2
}

#[test]
fn perplexity_matches_llama_perplexity() {
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let mut checked = std::collections::BTreeSet::new();
    for (fixture_index, name) in FIXTURES.iter().enumerate() {
        let r = reference(name);
        let text = corpus(&r);
        let (ctx, chunks) = (
            r["ctx"].as_u64().unwrap() as usize,
            r["chunks"].as_u64().unwrap() as usize,
        );
        // The first tokens as llama-tokenize gave them.
        let m = quantfit::eval::load(&common::model_dir(name), None).unwrap();
        let tokens = m.tokenizer.encode(&text).unwrap();
        let want_tokens: Vec<u32> = r["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tokens[..want_tokens.len()],
            want_tokens[..],
            "{name} tokens"
        );
        drop(m);
        // The Hugging Face folder itself, run unquantized, scores llama.cpp's F32 figure.
        let want = r["types"]["F32"]["ppl"].as_f64().unwrap();
        let got = perplexity(&common::model_dir(name), &text, ctx, chunks);
        let rel = got / want - 1.0;
        report.push(format!(
            "{name} folder: {got:.4} vs llama-perplexity F32 {want:.4} ({:+.3}%)",
            rel * 100.0
        ));
        if rel.abs() > 0.005 {
            failures.push(report.last().unwrap().clone());
        }
        for (type_index, out) in converted(name).into_iter().enumerate() {
            if !perplexity_checked(fixture_index, type_index) {
                continue;
            }
            checked.insert(out.file_type.clone());
            let want = r["types"][&out.file_type]["ppl"].as_f64().unwrap();
            let got = perplexity(&out.path, &text, ctx, chunks);
            let rel = got / want - 1.0;
            report.push(format!(
                "{name} {}: {got:.4} vs llama-perplexity {want:.4} ({:+.3}%)",
                out.file_type,
                rel * 100.0
            ));
            if rel.abs() > 0.005 {
                failures.push(report.last().unwrap().clone());
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let types = reference_types(&reference(FIXTURES[0]));
    assert_eq!(checked.len(), types.len(), "every type runs on some family");
}

/// Gemma 2's and Gemma 3's sliding layers: generation past the window (128 keys) drops the
/// oldest keys as the batch's mask does (Gemma 2's scores soft-capped in both paths). The prompt (124 tokens) and the batch (140) keep queries in F32 as
/// llama.cpp's tiled flash attention does, single tokens round them to F16 as its one-row
/// kernel does, so the two differ by that rounding (measured 1.1e-4 of the logits' scale); the
/// oldest keys kept instead of dropped moved position 130 by 4.4e-3.
#[test]
fn generation_past_the_sliding_window_matches_the_batch() {
    for name in ["tiny-gemma2", "tiny-gemma3"] {
        let text = corpus(&reference(name));
        let m = quantfit::eval::load(&common::model_dir(name), None).unwrap();
        assert_eq!(m.model.config().sliding_window, 128);
        let tokens = m.tokenizer.encode(&text).unwrap();
        let mut largest = 0f32;
        for s in common::steps_against_batch(&m.model, &tokens[..140], 124) {
            assert!(
                s.worst < 1e-3 * s.scale,
                "{name}: position {}: logits differ by {} (scale {})",
                s.position,
                s.worst,
                s.scale
            );
            largest = largest.max(s.worst / s.scale);
        }
        eprintln!("{name}: largest difference {largest:.2e} of the logits' scale");
    }
}
