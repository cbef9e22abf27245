//! Supported architectures: one table row each. Adding an architecture is adding a row (its
//! Hugging Face class names, llama.cpp's architecture name, whether Q/K rows are permuted) and,
//! when its tensor names differ, a name table.

use anyhow::{bail, Result};

/// How one Hugging Face architecture maps to llama.cpp's.
#[derive(Debug)]
pub struct Architecture {
    /// `architectures[0]` values in config.json.
    pub hf_classes: &'static [&'static str],
    /// `general.architecture` and the metadata key prefix.
    pub gguf_name: &'static str,
    /// llama.cpp stores Llama-family Q/K rows interleaved per head (its RoPE layout).
    pub permute_qk: bool,
    /// Hugging Face tensor name (after `model.layers.N.`) to llama.cpp's (after `blk.N.`).
    pub layer_tensors: &'static [(&'static str, &'static str)],
}

const LLAMA_LAYER: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

pub static ARCHITECTURES: &[Architecture] = &[
    Architecture {
        hf_classes: &["LlamaForCausalLM"],
        gguf_name: "llama",
        permute_qk: true,
        layer_tensors: LLAMA_LAYER,
    },
    Architecture {
        hf_classes: &["MistralForCausalLM"],
        gguf_name: "llama",
        permute_qk: true,
        layer_tensors: LLAMA_LAYER,
    },
    Architecture {
        hf_classes: &["Qwen2ForCausalLM"],
        gguf_name: "qwen2",
        permute_qk: false,
        layer_tensors: LLAMA_LAYER,
    },
];

/// Model-level tensors shared by every supported architecture.
pub const GLOBAL_TENSORS: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Tensors present in checkpoints that llama.cpp recomputes and the converter skips.
pub const SKIPPED_SUFFIXES: &[&str] = &["rotary_emb.inv_freq"];

pub fn supported_classes() -> Vec<&'static str> {
    ARCHITECTURES
        .iter()
        .flat_map(|a| a.hf_classes.iter().copied())
        .collect()
}

pub fn find(class: &str) -> Result<&'static Architecture> {
    match ARCHITECTURES.iter().find(|a| a.hf_classes.contains(&class)) {
        Some(a) => Ok(a),
        None => bail!(
            "unsupported architecture {class}; supported: {}",
            supported_classes().join(", ")
        ),
    }
}

impl Architecture {
    /// llama.cpp's name for a Hugging Face tensor name, `None` when the tensor is skipped.
    pub fn gguf_tensor_name(&self, hf: &str) -> Result<Option<String>> {
        if SKIPPED_SUFFIXES.iter().any(|s| hf.ends_with(s)) {
            return Ok(None);
        }
        if let Some((_, g)) = GLOBAL_TENSORS.iter().find(|(h, _)| *h == hf) {
            return Ok(Some(g.to_string()));
        }
        if let Some(rest) = hf.strip_prefix("model.layers.") {
            if let Some((layer, suffix)) = rest.split_once('.') {
                if let (Ok(n), Some((_, g))) = (
                    layer.parse::<u32>(),
                    self.layer_tensors.iter().find(|(h, _)| *h == suffix),
                ) {
                    return Ok(Some(format!("blk.{n}.{g}")));
                }
            }
        }
        bail!(
            "tensor {hf} has no llama.cpp name for architecture {}",
            self.gguf_name
        )
    }
}

/// llama.cpp's Q/K row order for RoPE: within each head, the two halves of the rows are
/// interleaved (convert_hf_to_gguf.py `LlamaModel.permute`). `rows x cols` row-major.
pub fn permute_qk_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let head_rows = rows / n_head;
    let half = head_rows / 2;
    let mut out = vec![0.0f32; data.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let src = h * head_rows + i * half + j;
                let dst = h * head_rows + 2 * j + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_unknown_architecture() {
        let a = find("LlamaForCausalLM").unwrap();
        assert_eq!(
            a.gguf_tensor_name("model.layers.7.mlp.down_proj.weight")
                .unwrap()
                .unwrap(),
            "blk.7.ffn_down.weight"
        );
        assert_eq!(
            a.gguf_tensor_name("model.embed_tokens.weight")
                .unwrap()
                .unwrap(),
            "token_embd.weight"
        );
        assert!(a
            .gguf_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq")
            .unwrap()
            .is_none());
        assert!(a.gguf_tensor_name("model.layers.0.weird.weight").is_err());
        let err = find("GPTNeoXForCausalLM").unwrap_err().to_string();
        assert!(
            err.contains("GPTNeoXForCausalLM")
                && err.contains("LlamaForCausalLM")
                && err.contains("Qwen2ForCausalLM"),
            "{err}"
        );
    }

    #[test]
    fn permutation_interleaves_half_heads() {
        // 2 heads of 4 rows, 1 column: rows 0..8 -> per head [0, 2, 1, 3].
        let data: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(
            permute_qk_rows(&data, 8, 1, 2),
            vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
        );
    }
}
