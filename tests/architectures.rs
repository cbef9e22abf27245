//! Architecture and tokenizer variants on small synthetic models: Qwen2 (attention biases, no
//! Q/K permutation) against Llama (permuted), and SentencePiece vocabularies (Llama 2,
//! Mistral, TinyLlama) read from tokenizer.model.

mod common;

use std::path::PathBuf;

use quantfit::gguf::convert::{convert, ConvertOptions};
use quantfit::gguf::{GgufFile, Value};
use quantfit::quant::rules::FileType;
use quantfit::source::hf::ModelDir;
use quantfit::source::synthetic::{safetensors_bytes, FakeTensor};

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-arch")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn convert_f32(model_dir: &std::path::Path) -> GgufFile {
    let model = ModelDir::open(model_dir).unwrap();
    let out = model_dir.join("out.gguf");
    let opts = ConvertOptions::new(vec![FileType::F32], out.clone());
    convert(&model, &opts).unwrap();
    GgufFile::open(&out).unwrap()
}

fn f32_rows(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn bf16_rows(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
        .collect()
}

#[test]
fn qwen2_keeps_row_order_and_biases_llama_permutes() {
    let llama = common::write_tiny_llama(&dir("llama"), 1);
    let qwen = dir("qwen2");
    common::write_tiny_llama(&qwen, 1);
    let mut config = common::tiny_llama_config(1);
    config["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
    std::fs::write(qwen.join("config.json"), config.to_string()).unwrap();
    let mut tensors = common::tiny_llama_tensors(1);
    for (n, len) in [("q_proj", 64), ("k_proj", 32), ("v_proj", 32)] {
        let data: Vec<u8> = (0..len)
            .flat_map(|i| (((i as f32) * 0.01).to_bits() >> 16).to_le_bytes()[..2].to_vec())
            .collect();
        tensors.push(FakeTensor {
            name: format!("model.layers.0.self_attn.{n}.bias"),
            dtype: "BF16",
            shape: vec![len],
            data,
        });
    }
    std::fs::write(qwen.join("model.safetensors"), safetensors_bytes(&tensors)).unwrap();

    let source_q = bf16_rows(
        &tensors
            .iter()
            .find(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .data,
    );
    let q = convert_f32(&qwen);
    assert_eq!(
        q.get("general.architecture").and_then(Value::as_str),
        Some("qwen2")
    );
    assert!(q.get("qwen2.block_count").is_some());
    let bias = q.tensor("blk.0.attn_q.bias").expect("bias written");
    assert_eq!(bias.ty.unwrap().name(), "F32");
    assert_eq!(
        f32_rows(q.tensor_data(q.tensor("blk.0.attn_q.weight").unwrap())),
        source_q,
        "qwen2 rows unpermuted"
    );

    let l = convert_f32(&llama);
    let permuted = f32_rows(l.tensor_data(l.tensor("blk.0.attn_q.weight").unwrap()));
    assert_ne!(permuted, source_q);
    // 4 heads of 16 rows: output row 1 of head 0 is input row 8 (second half, first row).
    assert_eq!(&permuted[64..128], &source_q[8 * 64..9 * 64]);
    assert_eq!(&permuted[..64], &source_q[..64]);
}

/// Encode a SentencePiece ModelProto with the given (piece, score, type) entries.
fn sentencepiece_model(pieces: &[(String, f32, u8)]) -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut out = Vec::new();
    for (text, score, ty) in pieces {
        let mut p = vec![0x0A];
        varint(text.len() as u64, &mut p);
        p.extend_from_slice(text.as_bytes());
        p.push(0x15);
        p.extend_from_slice(&score.to_le_bytes());
        p.extend_from_slice(&[0x18, *ty]);
        out.push(0x0A);
        varint(p.len() as u64, &mut out);
        out.extend_from_slice(&p);
    }
    // A trainer_spec-like field (2) that must be skipped.
    out.extend_from_slice(&[0x12, 0x02, 0x08, 0x01]);
    out
}

#[test]
fn sentencepiece_vocabulary_from_tokenizer_model() {
    let d = dir("spm");
    common::write_tiny_llama(&d, 1);
    // 3 specials, 256 byte pieces, a few words; vocab_size 300 leaves padding.
    let mut pieces: Vec<(String, f32, u8)> = vec![
        ("<unk>".into(), 0.0, 2),
        ("<s>".into(), 0.0, 3),
        ("</s>".into(), 0.0, 3),
    ];
    pieces.extend((0..256).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
    pieces.extend(
        ["▁the", "▁a", "ing"]
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), -(i as f32) - 1.0, 1)),
    );
    std::fs::write(d.join("tokenizer.model"), sentencepiece_model(&pieces)).unwrap();
    std::fs::write(
        d.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true}"#,
    )
    .unwrap();
    let mut config = common::tiny_llama_config(1);
    config["vocab_size"] = serde_json::json!(300);
    std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    let mut spec = common::tiny_spec(1);
    spec.vocab = 300;
    std::fs::write(
        d.join("model.safetensors"),
        safetensors_bytes(&quantfit::source::synthetic::llama_tensors(&spec)),
    )
    .unwrap();

    let f = convert_f32(&d);
    assert_eq!(
        f.get("tokenizer.ggml.model").and_then(Value::as_str),
        Some("llama")
    );
    let tokens = f
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .unwrap();
    let types = f
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .unwrap();
    let scores = f
        .get("tokenizer.ggml.scores")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!((tokens.len(), types.len(), scores.len()), (300, 300, 300));
    assert_eq!(tokens[3 + 0x41].as_str(), Some("<0x41>"));
    assert_eq!(types[3 + 0x41], Value::I32(6));
    assert_eq!(tokens[259].as_str(), Some("▁the"));
    assert_eq!(scores[260], Value::F32(-2.0));
    assert_eq!(tokens[299].as_str(), Some("[PAD299]"));
    assert_eq!(types[299], Value::I32(5));
    assert_eq!(f.get("tokenizer.ggml.bos_token_id"), Some(&Value::U32(1)));
    assert_eq!(f.get("tokenizer.ggml.eos_token_id"), Some(&Value::U32(2)));
    assert_eq!(
        f.get("tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(true))
    );
    assert!(f.get("tokenizer.ggml.merges").is_none());

    // A corrupt tokenizer.model is an error naming it.
    std::fs::write(d.join("tokenizer.model"), [0x0A, 0xFF, 0xFF]).unwrap();
    let err = ModelDir::open(&d).and_then(|m| {
        let opts = ConvertOptions::new(vec![FileType::Q8_0], d.join("bad.gguf"));
        convert(&m, &opts)
    });
    let msg = format!("{:#}", err.expect_err("corrupt model must fail"));
    assert!(msg.contains("tokenizer.model"), "{msg}");
    assert!(!d.join("bad.gguf").exists());
}

/// A Llama with `attention_bias: true` (Q/K/V/O biases): the converter writes the biases
/// (Q/K permuted like their rows), and the folder and its GGUF run through the forward pass to
/// the same perplexity (the loader once indexed a 1-D bias as a matrix and panicked).
#[test]
fn llama_with_attention_biases_converts_and_runs_alike() {
    let d = dir("llama-bias");
    common::write_tiny_llama(&d, 1);
    let mut config = common::tiny_llama_config(1);
    config["attention_bias"] = serde_json::json!(true);
    std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    let mut tensors = common::tiny_llama_tensors(1);
    for (n, len) in [
        ("q_proj", 64),
        ("k_proj", 32),
        ("v_proj", 32),
        ("o_proj", 64),
    ] {
        let data: Vec<u8> = (0..len)
            .flat_map(|i| {
                ((((i % 7) as f32 - 3.0) * 0.05).to_bits() >> 16).to_le_bytes()[..2].to_vec()
            })
            .collect();
        tensors.push(FakeTensor {
            name: format!("model.layers.0.self_attn.{n}.bias"),
            dtype: "BF16",
            shape: vec![len],
            data,
        });
    }
    std::fs::write(d.join("model.safetensors"), safetensors_bytes(&tensors)).unwrap();
    let gguf = convert_f32(&d);
    for name in [
        "blk.0.attn_q.bias",
        "blk.0.attn_k.bias",
        "blk.0.attn_v.bias",
        "blk.0.attn_output.bias",
    ] {
        assert!(gguf.tensor(name).is_some(), "{name}");
    }
    let text = d.join("text.txt");
    let corpus =
        std::fs::read_to_string(common::shared_dir().join("corpora/pride-and-prejudice.txt"))
            .unwrap();
    std::fs::write(&text, &corpus[..20000]).unwrap();
    let ppl = |model: &std::path::Path| -> f64 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quantfit"))
            .args([
                "eval",
                model.to_str().unwrap(),
                "--text",
                text.to_str().unwrap(),
                "--ctx",
                "64",
                "--chunks",
                "4",
                "--no-results",
                "--json",
                "-t",
                "2",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["ppl"].as_f64().unwrap()
    };
    let (folder, file) = (ppl(&d), ppl(&d.join("out.gguf")));
    assert!(
        (folder / file - 1.0).abs() < 1e-3,
        "folder {folder} vs GGUF {file}"
    );
    // Without the output bias the model is another model: the bias is used, not ignored.
    let unbiased = dir("llama-bias-off");
    common::write_tiny_llama(&unbiased, 1);
    assert!((ppl(&unbiased) / folder - 1.0).abs() > 1e-4);
}

/// A GGUF whose tensors contradict its metadata is refused when loaded, naming the tensor.
#[test]
fn gguf_tensors_are_checked_against_the_description() {
    let d = dir("gguf-check");
    common::write_tiny_llama(&d, 1);
    let mut f = convert_f32(&d);
    let (arch, h) = quantfit::gguf::hparams::hparams(&f).unwrap();
    quantfit::gguf::hparams::check_tensors(&f, arch, &h).unwrap();
    let i = f
        .tensors
        .iter()
        .position(|t| t.name == "blk.0.attn_k.weight")
        .unwrap();
    f.tensors[i].dims = vec![64, 64];
    let err = quantfit::gguf::hparams::check_tensors(&f, arch, &h)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blk.0.attn_k.weight") && err.contains("shape"),
        "{err}"
    );
    f.tensors[i].dims = vec![64, 32];
    let dup = f.tensors[i].clone();
    f.tensors.push(dup);
    let err = quantfit::gguf::hparams::check_tensors(&f, arch, &h)
        .unwrap_err()
        .to_string();
    assert!(err.contains("twice"), "{err}");
    f.tensors.pop();
    f.tensors[i].name = "blk.0.attn_kk.weight".into();
    let err = quantfit::gguf::hparams::check_tensors(&f, arch, &h)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing") || err.contains("not part of"),
        "{err}"
    );
}
