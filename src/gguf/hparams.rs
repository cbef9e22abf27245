//! A GGUF file read back through its architecture's description: the hyperparameters from the
//! `{arch}.*` keys the description lists (the same list the converter writes), and every
//! tensor checked against the shapes they imply.

use anyhow::{anyhow, bail, Result};

use super::reader::GgufFile;
use super::Value;
use crate::source::arch::{by_gguf_name, Architecture, HParams, Meta, Presence, RopeScaling};
use crate::source::tokenizer::check_token_length;

/// The architecture a GGUF file declares, and its hyperparameters.
pub fn hparams(file: &GgufFile) -> Result<(&'static Architecture, HParams)> {
    let name = file.path.display();
    let arch_name = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("{name}: metadata key general.architecture is missing"))?;
    let arch = by_gguf_name(arch_name).ok_or_else(|| {
        anyhow!(
            "{name}: architecture {arch_name:?} is not one quantfit knows ({})",
            crate::source::arch::ARCHITECTURES
                .iter()
                .map(|a| a.gguf_name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let key = |m: Meta| format!("{arch_name}.{}", m.key());
    let get = |m: Meta| file.get(&key(m)).and_then(Value::as_u64);
    let need = |m: Meta| {
        get(m).ok_or_else(|| match file.get(&key(m)) {
            Some(v) => anyhow!(
                "{name}: metadata key {} is {}; expected an unsigned integer",
                key(m),
                v.summary()
            ),
            None => anyhow!("{name}: metadata key {} is missing", key(m)),
        })
    };
    let float = |m: Meta| file.get(&key(m)).and_then(Value::as_f64);
    let n_embd = need(Meta::EmbeddingLength)?;
    let n_head = need(Meta::HeadCount)?;
    let n_head_kv = get(Meta::HeadCountKv).unwrap_or(n_head);
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        bail!("{name}: {n_head} attention heads do not group over {n_head_kv} KV heads");
    }
    let vocab = get(Meta::VocabSize)
        .or_else(|| {
            file.get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(|a| a.len() as u64)
        })
        .or_else(|| {
            file.tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
        })
        .unwrap_or(0);
    let rope_theta = float(Meta::RopeFreqBase).unwrap_or(10_000.0);
    // llama.cpp's defaults for a file that leaves a cap out (its gemma2 loader always caps).
    let (attn_cap, final_cap) = arch.softcap_defaults.unwrap_or((0.0, 0.0));
    let h = HParams {
        n_embd,
        n_ff: need(Meta::FeedForwardLength)?,
        n_layer: need(Meta::BlockCount)?,
        n_head,
        n_head_kv,
        head_dim: get(Meta::KeyLength).unwrap_or(n_embd / n_head),
        head_dim_stated: get(Meta::KeyLength).is_some(),
        context_length: get(Meta::ContextLength).unwrap_or(4096),
        rms_eps: float(Meta::RmsEps)
            .ok_or_else(|| anyhow!("{name}: metadata key {} is missing", key(Meta::RmsEps)))?,
        rope_theta,
        vocab_size: vocab,
        tie_embeddings: file.tensor("output.weight").is_none(),
        attn_bias: file.tensor("blk.0.attn_q.bias").is_some(),
        rope_scaling: rope_scaling(file, arch_name),
        n_expert: get(Meta::ExpertCount).unwrap_or(0),
        n_expert_used: get(Meta::ExpertUsedCount).unwrap_or(0),
        n_ff_expert: 0,
        sliding_window: get(Meta::SlidingWindow).unwrap_or(0),
        rope_theta_swa: float(Meta::RopeFreqBaseSwa).unwrap_or(rope_theta),
        final_softcap: float(Meta::FinalLogitSoftcapping).unwrap_or(final_cap),
        attn_softcap: float(Meta::AttnLogitSoftcapping).unwrap_or(attn_cap),
    };
    let h = HParams {
        n_ff_expert: get(Meta::ExpertFeedForwardLength).unwrap_or(h.n_ff),
        ..h
    };
    if h.is_moe() && (h.n_expert_used == 0 || h.n_expert_used > h.n_expert || h.n_expert > 1 << 12)
    {
        bail!(
            "{name}: {arch_name}.expert_used_count is {} of {} experts; expected 1 to the expert count (at most 4096)",
            h.n_expert_used,
            h.n_expert
        );
    }
    for (what, v, max) in [
        ("embedding_length", h.n_embd, 1u64 << 20),
        ("feed_forward_length", h.n_ff, 1 << 22),
        ("block_count", h.n_layer, 1 << 12),
        ("attention.head_count", h.n_head, 1 << 14),
        ("head dimension", h.head_dim, 1 << 14),
        ("expert_feed_forward_length", h.n_ff_expert, 1 << 22),
    ] {
        if v == 0 || v > max {
            bail!("{name}: {arch_name}.{what} is {v}; expected 1 to {max}");
        }
    }
    check_metadata(file, arch_name, &h)?;
    Ok((arch, h))
}

/// Metadata that must agree with itself: the vocabulary's arrays have one entry per token,
/// special tokens lie inside it, and the context, norm epsilon, RoPE base and rotated
/// dimensions are values a model can run with.
fn check_metadata(file: &GgufFile, arch_name: &str, h: &HParams) -> Result<()> {
    let name = file.path.display();
    let array_len = |k: &str| file.get(k).and_then(Value::as_array).map(<[Value]>::len);
    if let Some(n) = array_len("tokenizer.ggml.tokens") {
        if n as u64 != h.vocab_size {
            bail!(
                "{name}: tokenizer.ggml.tokens lists {n} tokens, but the model has a vocabulary of {}",
                h.vocab_size
            );
        }
        let tokens = file.get("tokenizer.ggml.tokens").and_then(Value::as_array);
        for (id, t) in tokens.into_iter().flatten().enumerate() {
            if let Some(text) = t.as_str() {
                check_token_length(&file.path, id, text)?;
            }
        }
        for k in ["tokenizer.ggml.token_type", "tokenizer.ggml.scores"] {
            match array_len(k) {
                Some(m) if m != n => {
                    bail!("{name}: {k} has {m} entries for {n} tokens")
                }
                None if file.get(k).is_some() => bail!("{name}: {k} is not an array"),
                _ => {}
            }
        }
    }
    for (k, v) in &file.metadata {
        if k.starts_with("tokenizer.ggml.") && k.ends_with("_token_id") {
            match v.as_u64() {
                Some(id) if id < h.vocab_size => {}
                _ => bail!(
                    "{name}: {k} is {}; the vocabulary has {} tokens",
                    v.summary(),
                    h.vocab_size
                ),
            }
        }
    }
    let ctx_key = format!("{arch_name}.{}", Meta::ContextLength.key());
    if file.get(&ctx_key).is_some() && !(1..=1 << 26).contains(&h.context_length) {
        bail!(
            "{name}: {ctx_key} is {}; expected 1 to {}",
            h.context_length,
            1u64 << 26
        );
    }
    for (m, v) in [
        (Meta::RmsEps, h.rms_eps),
        (Meta::RopeFreqBase, h.rope_theta),
    ] {
        if !(v > 0.0 && v <= 1e12) {
            bail!("{name}: {arch_name}.{} is {v}; expected above 0", m.key());
        }
    }
    // The families quantfit runs rotate whole heads (what the converter writes); a file that
    // rotates part of each head would run as another model.
    let rope_key = format!("{arch_name}.{}", Meta::RopeDimensionCount.key());
    if let Some(v) = file.get(&rope_key) {
        if v.as_u64() != Some(h.head_dim) {
            bail!(
                "{name}: {rope_key} is {}; quantfit rotates whole heads of {}",
                v.summary(),
                h.head_dim
            );
        }
    }
    Ok(())
}

/// The divisors of Llama 3.1's scaling travel as a tensor; other kinds as metadata keys.
fn rope_scaling(file: &GgufFile, arch_name: &str) -> RopeScaling {
    let kind = file
        .get(&format!("{arch_name}.rope.scaling.type"))
        .and_then(Value::as_str)
        .filter(|k| *k != "none");
    match kind {
        Some(k) => RopeScaling::Unsupported(k.to_string()),
        None if file.tensor("rope_freqs.weight").is_some() => RopeScaling::Llama3(None),
        None => RopeScaling::None,
    }
}

/// Every tensor the description implies is there once with its shape, and nothing else is
/// (llama.cpp refuses a file with tensors it does not create, too).
pub fn check_tensors(file: &GgufFile, arch: &Architecture, h: &HParams) -> Result<()> {
    let name = file.path.display();
    let expected = arch.expected_tensors(h);
    for e in &expected {
        match file.tensor(&e.gguf) {
            None if e.presence == Presence::Required => {
                bail!(
                    "{name}: tensor {} is missing; a {} model with these metadata has it",
                    e.gguf,
                    arch.gguf_name
                )
            }
            None => {}
            Some(t) if t.dims != e.dims => bail!(
                "{name}: tensor {} has shape {:?}, but the metadata imply {:?}",
                e.gguf,
                t.dims,
                e.dims
            ),
            Some(_) => {}
        }
    }
    for t in &file.tensors {
        if !expected.iter().any(|e| e.gguf == t.name) {
            bail!(
                "{name}: tensor {} is not part of a {} model with these metadata",
                t.name,
                arch.gguf_name
            );
        }
    }
    let mut names: Vec<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("{name}: tensor {} appears twice", w[0]);
    }
    Ok(())
}
