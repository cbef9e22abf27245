//! Architecture and tokenizer variants on small synthetic models: Qwen2 (attention biases, no
//! Q/K permutation) against Llama (permuted), and SentencePiece vocabularies (Llama 2,
//! Mistral, TinyLlama) read from tokenizer.model.

mod common;

use std::path::PathBuf;

use quantfit::gguf::convert::{convert, ConvertOptions};
use quantfit::gguf::{GgufFile, Value};
use quantfit::quant::rules::{FileType, RuleOptions};
use quantfit::quant::Isa;
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
    let opts = ConvertOptions {
        types: vec![FileType::F32],
        output: out.clone(),
        rules: RuleOptions::default(),
        imatrix: None,
        isa: Isa::best(),
        progress: false,
        force: false,
        extra_inputs: vec![],
    };
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
        let opts = ConvertOptions {
            types: vec![FileType::Q8_0],
            output: d.join("bad.gguf"),
            rules: RuleOptions::default(),
            imatrix: None,
            isa: Isa::best(),
            progress: false,
            force: false,
            extra_inputs: vec![],
        };
        convert(&m, &opts)
    });
    let msg = format!("{:#}", err.expect_err("corrupt model must fail"));
    assert!(msg.contains("tokenizer.model"), "{msg}");
    assert!(!d.join("bad.gguf").exists());
}
