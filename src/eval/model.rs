//! The Llama-family transformer (Llama, Mistral, Qwen2) on candle-core, following llama.cpp's
//! graph (src/models/llama.cpp, qwen2.cpp): RMSNorm, RoPE, grouped-query attention with a
//! causal mask, SwiGLU feed-forward, optional Q/K/V biases, tied or separate output matrix.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};

use super::linear::Linear;
use super::weights::{LayerWeights, ModelConfig, ModelWeights};

/// Keys and values of the positions processed so far, per layer, each head's rows contiguous
/// (`[n_head_kv][capacity][head_dim]`), grown by doubling so that a generated token appends
/// in place instead of copying the whole cache.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
}

#[derive(Default)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
    capacity: usize,
}

impl LayerKv {
    /// Appends `t` positions (`[heads][t][dim]` each) after the first `len`.
    fn append(&mut self, k: &[f32], v: &[f32], heads: usize, dim: usize, len: usize, t: usize) {
        if len + t > self.capacity {
            let capacity = (len + t).next_power_of_two().max(64);
            for buf in [&mut self.k, &mut self.v] {
                let mut grown = vec![0f32; heads * capacity * dim];
                for h in 0..heads {
                    let old = h * self.capacity * dim;
                    grown[h * capacity * dim..][..len * dim]
                        .copy_from_slice(&buf[old..old + len * dim]);
                }
                *buf = grown;
            }
            self.capacity = capacity;
        }
        for h in 0..heads {
            let dst = (h * self.capacity + len) * dim;
            self.k[dst..dst + t * dim].copy_from_slice(&k[h * t * dim..(h + 1) * t * dim]);
            self.v[dst..dst + t * dim].copy_from_slice(&v[h * t * dim..(h + 1) * t * dim]);
        }
    }

    /// Rows `0..len` of head `h`.
    fn rows<'a>(&self, buf: &'a [f32], h: usize, len: usize, dim: usize) -> &'a [f32] {
        &buf[h * self.capacity * dim..][..len * dim]
    }

    /// `[heads, len, dim]` copies for the batched matmuls.
    fn tensors(&self, heads: usize, len: usize, dim: usize) -> Result<(Tensor, Tensor)> {
        let gather = |buf: &[f32]| -> Vec<f32> {
            (0..heads)
                .flat_map(|h| self.rows(buf, h, len, dim).iter().copied())
                .collect()
        };
        Ok((
            Tensor::from_vec(gather(&self.k), (heads, len, dim), &Device::Cpu)?,
            Tensor::from_vec(gather(&self.v), (heads, len, dim), &Device::Cpu)?,
        ))
    }
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
            cache.layers = (0..c.n_layer).map(|_| LayerKv::default()).collect();
        }
        let offset = cache.len;
        let (cos, sin) = self.rope_tables(offset, t)?;
        let mut x = self.weights.embedding.lookup(tokens, c.n_embd, c.n_vocab)?;
        for (layer, slot) in self.weights.layers.iter().zip(cache.layers.iter_mut()) {
            x = self.block(layer, &x, slot, offset, &cos, &sin)?;
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
        cache: &mut LayerKv,
        offset: usize,
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
        let k_rows = k.flatten_all()?.to_vec1::<f32>()?;
        let v_rows = v.flatten_all()?.to_vec1::<f32>()?;
        cache.append(&k_rows, &v_rows, hkv, hd, offset, t);
        let tk = offset + t;
        let scale = 1.0 / (hd as f32).sqrt();

        let attn = if t == 1 {
            // One new token: a few dot products per head, cheaper by hand than as tensors.
            let q = q.flatten_all()?.to_vec1::<f32>()?;
            let mut out = vec![0f32; h * hd];
            let mut p = vec![0f32; tk];
            for head in 0..h {
                let kv = head / group;
                let qh = &q[head * hd..(head + 1) * hd];
                let keys = cache.rows(&cache.k, kv, tk, hd);
                for (pj, key) in p.iter_mut().zip(keys.chunks_exact(hd)) {
                    *pj = qh.iter().zip(key).map(|(a, b)| a * b).sum();
                }
                super::softmax::causal_softmax(&mut p, tk, 1, tk - 1, scale);
                let o = &mut out[head * hd..(head + 1) * hd];
                for (pj, val) in p
                    .iter()
                    .zip(cache.rows(&cache.v, kv, tk, hd).chunks_exact(hd))
                {
                    for (oi, vi) in o.iter_mut().zip(val) {
                        *oi += pj * vi;
                    }
                }
            }
            Tensor::from_vec(out, (1, h * hd), &Device::Cpu)?
        } else {
            let (k, v) = cache.tensors(hkv, tk, hd)?;
            // Query heads that share a KV head are stacked, so one batched matmul per KV head
            // serves the whole group without copying keys and values.
            let q = q.reshape((hkv, group * t, hd))?;
            let scores = q.matmul(&k.t()?)?;
            let mut data = scores.flatten_all()?.to_vec1::<f32>()?;
            super::softmax::causal_softmax(&mut data, tk, t, tk - t, scale);
            let probs = Tensor::from_vec(data, (hkv, group * t, tk), &Device::Cpu)?;
            probs
                .matmul(&v)?
                .reshape((h, t, hd))?
                .transpose(0, 1)?
                .reshape((t, h * hd))?
        };
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
