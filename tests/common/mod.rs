//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared` beside the checkout, as on developer machines and in CI.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
}

/// The ggml fixture folder: `QUANTFIT_GGML_FIXTURES`, else `../shared/fixtures/ggml-quants`.
pub fn ggml_fixture_dir() -> PathBuf {
    match std::env::var_os("QUANTFIT_GGML_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => shared_dir().join("fixtures").join("ggml-quants"),
    }
}

pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() % 4, 0, "{}", path.display());
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The SmolLM2 fixture as a usable Hugging Face folder: the shared files plus the decompressed
/// weights, made once under target/ and reused by every test.
pub fn smollm2_dir() -> PathBuf {
    use std::sync::OnceLock;
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = shared_dir().join("models").join("smollm2-135m");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("test-data")
            .join("smollm2-135m");
        let weights = dir.join("model.safetensors");
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "README.md",
        ] {
            std::fs::copy(src.join(f), dir.join(f))
                .unwrap_or_else(|e| panic!("{}: {e}", src.join(f).display()));
        }
        if !weights.exists() {
            // Decompress to a temporary name first: a test killed midway leaves no half file.
            let tmp = dir.join(format!("model.safetensors.partial-{}", std::process::id()));
            let input = std::fs::File::open(src.join("model.safetensors.zst")).unwrap();
            let mut decoder = zstd::stream::read::Decoder::new(input).unwrap();
            decoder.window_log_max(27).unwrap();
            let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
            std::io::copy(&mut decoder, &mut out).unwrap();
            drop(out);
            std::fs::rename(&tmp, &weights).unwrap();
        }
        dir
    })
    .clone()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// One tensor of a synthetic safetensors file.
pub struct FakeTensor {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Serialize tensors as safetensors (header JSON, then data in order).
pub fn safetensors_bytes(tensors: &[FakeTensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    let h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

/// A small random Llama (2 layers, hidden 64, GQA 2) with the SmolLM2 tokenizer, as BF16.
pub fn tiny_llama_tensors(n_layer: usize) -> Vec<FakeTensor> {
    let (hidden, ff, vocab, kv) = (64usize, 128usize, 49152usize, 32usize);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut bf16 = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
                ((v.to_bits() >> 16) as u16).to_le_bytes()
            })
            .collect()
    };
    let mut t = vec![FakeTensor {
        name: "model.embed_tokens.weight".into(),
        dtype: "BF16",
        shape: vec![vocab, hidden],
        data: bf16(vocab * hidden),
    }];
    for l in 0..n_layer {
        let p = format!("model.layers.{l}.");
        for (n, shape) in [
            ("input_layernorm.weight", vec![hidden]),
            ("self_attn.q_proj.weight", vec![hidden, hidden]),
            ("self_attn.k_proj.weight", vec![kv, hidden]),
            ("self_attn.v_proj.weight", vec![kv, hidden]),
            ("self_attn.o_proj.weight", vec![hidden, hidden]),
            ("post_attention_layernorm.weight", vec![hidden]),
            ("mlp.gate_proj.weight", vec![ff, hidden]),
            ("mlp.up_proj.weight", vec![ff, hidden]),
            ("mlp.down_proj.weight", vec![hidden, ff]),
        ] {
            let n_el: usize = shape.iter().product();
            t.push(FakeTensor {
                name: format!("{p}{n}"),
                dtype: "BF16",
                shape,
                data: bf16(n_el),
            });
        }
    }
    t.push(FakeTensor {
        name: "model.norm.weight".into(),
        dtype: "BF16",
        shape: vec![hidden],
        data: bf16(hidden),
    });
    t
}

pub fn tiny_llama_config(n_layer: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": n_layer, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 2048, "vocab_size": 49152, "tie_word_embeddings": true
    })
}

/// Write a tiny model folder; returns its path.
pub fn write_tiny_llama(dir: &std::path::Path, n_layer: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = shared_dir().join("models").join("smollm2-135m");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&tiny_llama_config(n_layer)).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(&tiny_llama_tensors(n_layer)),
    )
    .unwrap();
    dir.to_path_buf()
}
