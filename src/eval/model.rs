//! The Llama-family transformer (Llama, Mistral, Qwen2) on candle-core, following llama.cpp's
//! graph (src/models/llama.cpp, qwen2.cpp): RMSNorm, RoPE, grouped-query attention with a
//! causal mask, SwiGLU feed-forward, optional Q/K/V biases, tied or separate output matrix.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};

use super::linear::Linear;
use super::weights::{LayerWeights, ModelConfig, ModelWeights};

/// Keys and values of the positions processed so far, per layer, as `[n_head_kv, len, head_dim]`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.layers.clear();
        self.len = 0;
    }
}

pub struct Model {
    pub weights: ModelWeights,
}

impl Model {
    pub fn new(weights: ModelWeights) -> Self {
        Model { weights }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.weights.config
    }

    /// Runs `tokens` after the cached positions and returns the logits of positions
    /// `logits_from..tokens.len()` (relative to `tokens`) as `[n, n_vocab]`.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits_from: usize,
    ) -> Result<Tensor> {
        let c = &self.weights.config;
        let t = tokens.len();
        if t == 0 || logits_from >= t {
            bail!("forward needs at least one token whose logits are wanted");
        }
        if cache.layers.len() != c.n_layer {
            cache.layers = (0..c.n_layer).map(|_| None).collect();
        }
        let offset = cache.len;
        let (cos, sin) = self.rope_tables(offset, t)?;
        let mut x = self.weights.embedding.lookup(tokens, c.n_embd, c.n_vocab)?;
        for (layer, slot) in self.weights.layers.iter().zip(cache.layers.iter_mut()) {
            x = self.block(layer, &x, slot, &cos, &sin)?;
        }
        cache.len += t;
        let x = if logits_from > 0 {
            x.narrow(0, logits_from, t - logits_from)?
        } else {
            x
        };
        let x = candle_nn::ops::rms_norm(&x, &self.weights.output_norm, c.rms_eps)?;
        self.weights.output.forward(&x)
    }

    /// cos/sin of each position and frequency, `[t, head_dim / 2]`, computed as ggml's
    /// rope does (theta_scale = base^(-2/n_dims), multiplied up one frequency at a time).
    fn rope_tables(&self, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let c = &self.weights.config;
        let half = c.head_dim / 2;
        let theta_scale = c.rope_base.powf(-2.0 / c.head_dim as f32);
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in offset..offset + t {
            let mut theta = p as f32;
            for i in 0..half {
                let factor = self
                    .weights
                    .rope_freqs
                    .as_ref()
                    .and_then(|f| f.get(i).copied())
                    .unwrap_or(1.0);
                let angle = theta / factor;
                cos.push(angle.cos());
                sin.push(angle.sin());
                theta *= theta_scale;
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), &Device::Cpu)?,
            Tensor::from_vec(sin, (t, half), &Device::Cpu)?,
        ))
    }

    fn block(
        &self,
        w: &LayerWeights,
        x: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.weights.config;
        let (t, _) = x.dims2()?;
        let (h, hkv, hd) = (c.n_head, c.n_head_kv, c.head_dim);
        let group = h / hkv;

        let xn = candle_nn::ops::rms_norm(x, &w.attn_norm, c.rms_eps)?;
        let bias = |y: Tensor, b: &Option<Tensor>| -> Result<Tensor> {
            Ok(match b {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            })
        };
        let mut qkv = Linear::forward_many(&[&w.q, &w.k, &w.v], &xn)?.into_iter();
        let (q, k, v) = (
            qkv.next().expect("three outputs"),
            qkv.next().expect("three outputs"),
            qkv.next().expect("three outputs"),
        );
        let (q, k, v) = (
            bias(q, &w.q_bias)?,
            bias(k, &w.k_bias)?,
            bias(v, &w.v_bias)?,
        );
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((1, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let rope = |y: Tensor| -> Result<Tensor> {
            Ok(if c.rope_neox {
                candle_nn::rotary_emb::rope(&y, cos, sin)?
            } else {
                candle_nn::rotary_emb::rope_i(&y, cos, sin)?
            })
        };
        // llama.cpp keeps K and V in an F16 cache and multiplies Q with it in F16.
        let f16 =
            |y: Tensor| -> Result<Tensor> { Ok(y.to_dtype(DType::F16)?.to_dtype(DType::F32)?) };
        let q = f16(rope(heads(q, h)?)?)?;
        let k = f16(rope(heads(k, hkv)?)?.squeeze(0)?)?;
        let v = f16(heads(v, hkv)?.squeeze(0)?)?;
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let tk = k.dim(1)?;

        // Query heads that share a KV head are stacked, so one batched matmul per KV head
        // serves the whole group without copying keys and values.
        let q = q.reshape((hkv, group * t, hd))?;
        let scale = 1.0 / (hd as f32).sqrt();
        let scores = q.matmul(&k.t()?)?;
        let mut data = scores.flatten_all()?.to_vec1::<f32>()?;
        super::softmax::causal_softmax(&mut data, tk, t, tk - t, scale);
        let probs = Tensor::from_vec(data, (hkv, group * t, tk), &Device::Cpu)?;
        let attn = probs
            .matmul(&v)?
            .reshape((h, t, hd))?
            .transpose(0, 1)?
            .reshape((t, h * hd))?;
        let x = (x + w.o.forward(&attn)?)?;

        let xn = candle_nn::ops::rms_norm(&x, &w.ffn_norm, c.rms_eps)?;
        let mut gate_up = Linear::forward_many(&[&w.gate, &w.up], &xn)?.into_iter();
        let gate = gate_up.next().expect("two outputs");
        let up = gate_up
            .next()
            .expect("two outputs")
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut act = gate.flatten_all()?.to_vec1::<f32>()?;
        super::softmax::swiglu(&mut act, &up);
        let ff = w
            .down
            .forward(&Tensor::from_vec(act, gate.shape(), &Device::Cpu)?)?;
        Ok((x + ff)?)
    }
}

/// Convenience: the last dimension's arg-max of a `[n, vocab]` logits tensor.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}
