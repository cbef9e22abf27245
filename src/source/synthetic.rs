//! Synthetic Llama model folders (random BF16 weights, a real tokenizer copied from another
//! folder): for tests of the converter's error handling and for the peak-memory benchmark,
//! where models of growing depth must be made on the spot.

use std::path::Path;

use anyhow::{Context, Result};

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
    let h = serde_json::to_vec(&serde_json::Value::Object(header)).expect("plain JSON");
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

/// Shape of a synthetic Llama.
#[derive(Clone, Debug)]
pub struct LlamaSpec {
    pub n_layer: usize,
    pub hidden: usize,
    pub ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub vocab: usize,
    pub seed: u64,
}

pub fn llama_config(s: &LlamaSpec) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": s.hidden,
        "intermediate_size": s.ff, "num_hidden_layers": s.n_layer, "num_attention_heads": s.n_head,
        "num_key_value_heads": s.n_head_kv, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 2048, "vocab_size": s.vocab, "tie_word_embeddings": true
    })
}

/// Uniform random weights in [-0.05, 0.05) as BF16, from a fixed-seed LCG.
pub fn llama_tensors(s: &LlamaSpec) -> Vec<FakeTensor> {
    let mut state = s.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bf16 = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
                ((v.to_bits() >> 16) as u16).to_le_bytes()
            })
            .collect()
    };
    let kv = s.hidden / s.n_head * s.n_head_kv;
    let mut t = vec![FakeTensor {
        name: "model.embed_tokens.weight".into(),
        dtype: "BF16",
        shape: vec![s.vocab, s.hidden],
        data: bf16(s.vocab * s.hidden),
    }];
    for l in 0..s.n_layer {
        for (n, shape) in [
            ("input_layernorm.weight", vec![s.hidden]),
            ("self_attn.q_proj.weight", vec![s.hidden, s.hidden]),
            ("self_attn.k_proj.weight", vec![kv, s.hidden]),
            ("self_attn.v_proj.weight", vec![kv, s.hidden]),
            ("self_attn.o_proj.weight", vec![s.hidden, s.hidden]),
            ("post_attention_layernorm.weight", vec![s.hidden]),
            ("mlp.gate_proj.weight", vec![s.ff, s.hidden]),
            ("mlp.up_proj.weight", vec![s.ff, s.hidden]),
            ("mlp.down_proj.weight", vec![s.hidden, s.ff]),
        ] {
            let n_el: usize = shape.iter().product();
            t.push(FakeTensor {
                name: format!("model.layers.{l}.{n}"),
                dtype: "BF16",
                shape,
                data: bf16(n_el),
            });
        }
    }
    t.push(FakeTensor {
        name: "model.norm.weight".into(),
        dtype: "BF16",
        shape: vec![s.hidden],
        data: bf16(s.hidden),
    });
    t
}

/// Write a model folder: config.json, model.safetensors, and the tokenizer files of
/// `tokenizer_from` (whose vocabulary must have `spec.vocab` entries).
pub fn write_llama(dir: &Path, spec: &LlamaSpec, tokenizer_from: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer_from.join(f), dir.join(f))
            .with_context(|| format!("{}: cannot copy", tokenizer_from.join(f).display()))?;
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&llama_config(spec))?,
    )?;
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(&llama_tensors(spec)),
    )?;
    Ok(())
}
