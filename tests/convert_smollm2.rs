//! The converter against llama.cpp on a real model: for every file type in the fixture's
//! reference.json, every tensor's GGUF type and the sha256 of its bytes must equal what
//! llama.cpp wrote from the same weights. Also: sharded input gives the same files, and the
//! files parse with an independent reader.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use quantfit::gguf::convert::{convert, ConvertOptions};
use quantfit::gguf::GgufFile;
use quantfit::quant::rules::{FileType, RuleOptions};
use quantfit::quant::Isa;
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

#[test]
fn every_reference_type_matches_llama_cpp_tensor_bytes() {
    let model = ModelDir::open(&common::smollm2_dir()).unwrap();
    let reference = reference();
    let types: Vec<FileType> = reference["types"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| {
            FileType::from_name(k)
                .unwrap_or_else(|| panic!("reference type {k} unknown to quantfit"))
        })
        .collect();
    assert!(types.len() >= 5);
    let dir = out_dir("reference");
    let opts = ConvertOptions {
        types: types.clone(),
        output: dir.clone(),
        rules: RuleOptions::default(),
        imatrix: None,
        isa: Isa::best(),
        progress: false,
        force: false,
        extra_inputs: vec![],
    };
    let outputs = convert(&model, &opts).unwrap();
    assert_eq!(outputs.len(), types.len());
    let mut mismatches = Vec::new();
    for (ft, out) in types.iter().zip(&outputs) {
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
        .join("target/test-data/smollm2-135m-sharded");
    if !sharded.join("model.safetensors.index.json").exists() {
        make_sharded_copy(&single, &sharded);
    }
    let a = out_dir("single");
    let b = out_dir("sharded");
    for (src, out) in [(&single, &a), (&sharded, &b)] {
        let model = ModelDir::open(src).unwrap();
        assert!(src == &single || model.shards.len() == 3);
        let opts = ConvertOptions {
            types: vec![FileType::Q4_K_M],
            output: out.join("m.gguf"),
            rules: RuleOptions::default(),
            imatrix: None,
            isa: Isa::best(),
            progress: false,
            force: false,
            extra_inputs: vec![],
        };
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
        types: types.clone(),
        output: dir,
        rules: RuleOptions {
            has_imatrix: true,
            ..Default::default()
        },
        imatrix: Some(imatrix),
        isa: Isa::best(),
        progress: false,
        force: false,
        extra_inputs: vec![],
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
