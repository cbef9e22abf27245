//! The converter against llama.cpp on a real model: for every file type in the fixture's
//! reference.json, every tensor's GGUF type and the sha256 of its bytes must equal what
//! llama.cpp wrote from the same weights. Also: sharded input gives the same files, and the
//! files parse with an independent reader.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use quantfit::gguf::convert::{convert, ConvertOptions, OutputSummary};
use quantfit::gguf::{GgufFile, Value};
use quantfit::quant::rules::{FileType, RuleOptions};
use quantfit::source::hf::ModelDir;

fn reference() -> serde_json::Value {
    let path = common::shared_dir().join("models/smollm2-135m/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn out_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-out")
        .join(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tensor_hashes(path: &Path) -> BTreeMap<String, (String, String)> {
    let f = GgufFile::open(path).unwrap();
    f.tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                (
                    t.ty.expect("known type").name().to_string(),
                    common::sha256_hex(f.tensor_data(t)),
                ),
            )
        })
        .collect()
}

/// Every type of reference.json, converted once per test binary.
fn reference_outputs() -> &'static Vec<(FileType, OutputSummary)> {
    static OUT: OnceLock<Vec<(FileType, OutputSummary)>> = OnceLock::new();
    OUT.get_or_init(|| {
        let model = ModelDir::open(&common::smollm2_dir()).unwrap();
        let types: Vec<FileType> = reference()["types"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| {
                FileType::from_name(k)
                    .unwrap_or_else(|| panic!("reference type {k} unknown to quantfit"))
            })
            .collect();
        assert!(types.len() >= 5);
        let opts = ConvertOptions::new(types.clone(), out_dir("reference"));
        let outputs = convert(&model, &opts).unwrap();
        assert_eq!(outputs.len(), types.len());
        types.into_iter().zip(outputs).collect()
    })
}

#[test]
fn every_reference_type_matches_llama_cpp_tensor_bytes() {
    let reference = reference();
    let outputs = reference_outputs();
    let mut mismatches = Vec::new();
    for (ft, out) in outputs {
        let want = &reference["types"][ft.name()]["tensors"];
        let got = tensor_hashes(&out.path);
        assert_eq!(
            got.len(),
            want.as_object().unwrap().len(),
            "{ft}: tensor count"
        );
        for (name, (ty, hash)) in &got {
            let w = &want[name];
            assert!(!w.is_null(), "{ft}: tensor {name} not in llama.cpp's file");
            if w[0] != ty.as_str() || w[1] != hash.as_str() {
                mismatches.push(format!(
                    "{ft} {name}: quantfit {ty} {hash}, llama.cpp {} {}",
                    w[0], w[1]
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} tensors differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// What llama.cpp wrote from the same folder (tests/fixtures/llama-cpp-files, made by its
/// make.py): whole-file sizes for every type, and the whole files' sha256 for llama-quantize's
/// outputs. The F32 file is the same size but not the same bytes: llama.cpp's converter
/// writes tensors and a few keys in its own order, llama-quantize (and quantfit) in llama.cpp's
/// loader order.
#[test]
fn whole_files_match_llama_cpp() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llama-cpp-files/smollm2-135m.json");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut failures = Vec::new();
    let mut compared = 0;
    for (ft, out) in reference_outputs() {
        let bytes = std::fs::metadata(&out.path).unwrap().len();
        if want["file_bytes"][ft.name()].as_u64() != Some(bytes) {
            failures.push(format!(
                "{ft}: {bytes} bytes, llama.cpp {}",
                want["file_bytes"][ft.name()]
            ));
        }
        if let Some(hash) = want["file_sha256"][ft.name()].as_str() {
            compared += 1;
            let got = common::sha256_hex(&std::fs::read(&out.path).unwrap());
            if got != hash {
                failures.push(format!("{ft}: file sha256 {got}, llama.cpp {hash}"));
            }
        }
    }
    assert!(compared >= 4, "whole-file hashes compared: {compared}");
    // The F32 file's metadata: every key, kind and value llama.cpp wrote, and no other.
    let f32_out = &reference_outputs()
        .iter()
        .find(|(ft, _)| *ft == FileType::F32)
        .unwrap()
        .1;
    let f = GgufFile::open(&f32_out.path).unwrap();
    let kv = want["gguf_kv"].as_object().unwrap();
    for (key, w) in kv {
        match f.get(key) {
            None => failures.push(format!("F32 {key}: missing")),
            Some(v) if !same_json(w, v) => {
                failures.push(format!("F32 {key}: quantfit {v:?}, llama.cpp {w}"))
            }
            Some(_) => {}
        }
    }
    for (key, _) in &f.metadata {
        if !kv.contains_key(key) {
            failures.push(format!("F32 {key}: not in llama.cpp's file"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A recorded metadata value (long arrays by length) against one of ours.
fn same_json(want: &serde_json::Value, got: &Value) -> bool {
    match got {
        Value::Array(items) => match want.get("array_length") {
            Some(n) => n.as_u64() == Some(items.len() as u64),
            None => want.as_array().is_some_and(|w| {
                w.len() == items.len() && w.iter().zip(items).all(|(a, b)| same_json(a, b))
            }),
        },
        Value::String(s) => want == s.as_str(),
        Value::Bool(b) => want.as_bool() == Some(*b),
        Value::F32(x) => want.as_f64() == Some(*x as f64),
        Value::U32(x) => want.as_u64() == Some(*x as u64),
        Value::I32(x) => want.as_i64() == Some(*x as i64),
        _ => false,
    }
}

/// Split the fixture's weights into shards with an index, as large models ship.
fn make_sharded_copy(src: &Path, dst: &Path) {
    use std::io::Write;
    std::fs::create_dir_all(dst).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    ] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let whole = std::fs::read(src.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(whole[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&whole[8..8 + header_len]).unwrap();
    let data = &whole[8 + header_len..];
    let mut names: Vec<&String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    let shards = 3;
    for s in 0..shards {
        let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards);
        let mut h = serde_json::Map::new();
        let mut body = Vec::new();
        for name in names.iter().skip(s).step_by(shards) {
            let e = &header[name.as_str()];
            let (b, en) = (
                e["data_offsets"][0].as_u64().unwrap() as usize,
                e["data_offsets"][1].as_u64().unwrap() as usize,
            );
            let start = body.len();
            body.extend_from_slice(&data[b..en]);
            h.insert(name.to_string(), serde_json::json!({"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [start, body.len()]}));
            weight_map.insert(name.to_string(), serde_json::json!(file));
        }
        let hj = serde_json::to_vec(&serde_json::Value::Object(h)).unwrap();
        let mut f = std::fs::File::create(dst.join(&file)).unwrap();
        f.write_all(&(hj.len() as u64).to_le_bytes()).unwrap();
        f.write_all(&hj).unwrap();
        f.write_all(&body).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dst.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

#[test]
fn sharded_input_gives_identical_files() {
    let single = common::smollm2_dir();
    let sharded = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        // The same folder name: the model's name (general.name) comes from it.
        .join("target/test-data/sharded/smollm2-135m");
    if !sharded.join("model.safetensors.index.json").exists() {
        make_sharded_copy(&single, &sharded);
    }
    let a = out_dir("single");
    let b = out_dir("sharded");
    for (src, out) in [(&single, &a), (&sharded, &b)] {
        let model = ModelDir::open(src).unwrap();
        assert!(src == &single || model.shards.len() == 3);
        let opts = ConvertOptions::new(vec![FileType::Q4_K_M], out.join("m.gguf"));
        convert(&model, &opts).unwrap();
    }
    let (x, y) = (
        std::fs::read(a.join("m.gguf")).unwrap(),
        std::fs::read(b.join("m.gguf")).unwrap(),
    );
    assert!(x == y, "sharded and single-file conversions differ");
}

/// With an importance matrix made by llama-imatrix, tensor bytes equal llama-quantize's
/// (reference hashes recorded from llama.cpp in tests/fixtures/smollm2-imatrix).
#[test]
fn imatrix_conversion_matches_llama_cpp() {
    let fixture =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2-imatrix");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap())
            .unwrap();
    let types: Vec<FileType> = reference["types"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| FileType::from_name(k).unwrap())
        .collect();
    let imatrix = quantfit::gguf::imatrix::Imatrix::load(&fixture.join("imatrix.gguf")).unwrap();
    assert!(imatrix.entries.len() > 200 && imatrix.chunks == 8);
    let model = ModelDir::open(&common::smollm2_dir()).unwrap();
    let dir = out_dir("imatrix");
    let opts = ConvertOptions {
        rules: RuleOptions {
            has_imatrix: true,
            ..Default::default()
        },
        imatrix: Some(imatrix),
        ..ConvertOptions::new(types.clone(), dir)
    };
    let outputs = convert(&model, &opts).unwrap();
    for (ft, out) in types.iter().zip(&outputs) {
        let got = tensor_hashes(&out.path);
        let want = reference["types"][ft.name()].as_object().unwrap();
        assert_eq!(got.len(), want.len());
        for (name, (ty, hash)) in &got {
            assert_eq!(
                (ty.as_str(), hash.as_str()),
                (
                    want[name][0].as_str().unwrap(),
                    want[name][1].as_str().unwrap()
                ),
                "{ft} {name}"
            );
        }
    }
}
