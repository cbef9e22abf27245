//! The Llama-family transformer (Llama, Mistral, Qwen2) on candle-core, following llama.cpp's
//! graph (src/models/llama.cpp, qwen2.cpp): RMSNorm, RoPE, grouped-query attention with a
//! causal mask, SwiGLU feed-forward, optional Q/K/V biases, tied or separate output matrix.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor, D};

use std::sync::Mutex;

use super::attention;
use super::decode::Decoder;
use super::linear::Linear;
use super::weights::{Ffn, LayerWeights, ModelConfig, ModelWeights};
use crate::source::arch::Activation;

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
    /// Makes room for `t` positions after the first `len`.
    fn reserve(&mut self, heads: usize, dim: usize, len: usize, t: usize) {
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
    }

    /// Appends `t` positions (`[t][heads * dim]` each) after the first `len`.
    fn append(&mut self, k: &[f32], v: &[f32], heads: usize, dim: usize, len: usize, t: usize) {
        self.reserve(heads, dim, len, t);
        for p in 0..t {
            for h in 0..heads {
                let src = (p * heads + h) * dim;
                let dst = (h * self.capacity + len + p) * dim;
                self.k[dst..dst + dim].copy_from_slice(&k[src..src + dim]);
                self.v[dst..dst + dim].copy_from_slice(&v[src..src + dim]);
            }
        }
    }

    /// Rows `0..len` of head `h`.
    fn rows<'a>(&self, buf: &'a [f32], h: usize, len: usize, dim: usize) -> &'a [f32] {
        &buf[h * self.capacity * dim..][..len * dim]
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

    /// Room for one more position in every layer, and where each layer keeps its rows, for
    /// the single-token decoder (which writes position `len()` and reads the ones before).
    pub(super) fn reserve_one(&mut self, n_layer: usize, heads: usize, dim: usize) -> Vec<RawKv> {
        if self.layers.len() != n_layer {
            self.layers = (0..n_layer).map(|_| LayerKv::default()).collect();
            self.len = 0;
        }
        let len = self.len;
        self.layers
            .iter_mut()
            .map(|layer| {
                layer.reserve(heads, dim, len, 1);
                RawKv {
                    k: layer.k.as_mut_ptr(),
                    v: layer.v.as_mut_ptr(),
                    capacity: layer.capacity,
                }
            })
            .collect()
    }

    /// Counts the position written through `reserve_one`'s pointers.
    pub(super) fn advance_one(&mut self) {
        self.len += 1;
    }
}

/// One layer's cache buffers, `[heads][capacity][dim]` each.
pub(super) struct RawKv {
    pub k: *mut f32,
    pub v: *mut f32,
    pub capacity: usize,
}

pub struct Model {
    pub weights: ModelWeights,
    /// The single-token path, started on first use with the thread count of the rayon pool
    /// it is first called from.
    decoder: Mutex<Option<Decoder>>,
}

impl Model {
    pub fn new(weights: ModelWeights) -> Self {
        Model {
            weights,
            decoder: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.weights.config
    }

    /// Runs `tokens` after the cached positions and returns the logits of positions
    /// `logits_from..tokens.len()` (relative to `tokens`) as `[n, n_vocab]`. A single token
    /// goes through the decoding team (`decode.rs`), anything else through `forward_graph`.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits_from: usize,
    ) -> Result<Tensor> {
        let t = tokens.len();
        if t == 0 || logits_from >= t {
            bail!("forward needs at least one token whose logits are wanted");
        }
        static GRAPH_ONLY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let graph_only = *GRAPH_ONLY
            .get_or_init(|| std::env::var("QUANTFIT_EVAL_DECODE").as_deref() == Ok("graph"));
        // The decoding team runs the plain dense block; mixtures of experts and Gemma's block
        // go through the graph.
        if t == 1 && logits_from == 0 && !graph_only && self.weights.config.team_decodes() {
            return self.decode(tokens[0], cache);
        }
        self.forward_graph(tokens, cache, logits_from)
    }

    /// `forward` on row-major buffers and rayon for every batch size, single tokens included.
    pub fn forward_graph(
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
        let offset = cache.len;
        let x = self.layers(tokens, cache, offset..offset + t, None)?;
        cache.len += t;
        let logits = self.head(&x[logits_from * c.n_embd..])?;
        Ok(Tensor::from_vec(
            logits,
            (t - logits_from, c.n_vocab),
            &Device::Cpu,
        )?)
    }

    /// Runs a packed batch (several sequences sharing prefixes, see `attention::Packed`) on
    /// its own, with no cache before or after it; `rounded` says per row whether llama.cpp
    /// would round its query (the size of the batch it would have run the row in). Hands the
    /// logits of rows `outputs` to `each` in order, a few dozen rows at a time
    /// (`[rows * n_vocab]`): a whole batch's logits run to hundreds of MB, which the allocator
    /// maps fresh and the kernel zeroes on every batch (perf on F32 WinoGrande scoring: page
    /// faults and copies of them took a quarter of the time).
    pub fn forward_packed(
        &self,
        tokens: &[u32],
        packed: &attention::Packed,
        rounded: &[bool],
        outputs: &[usize],
        each: &mut dyn FnMut(&[f32]) -> Result<()>,
    ) -> Result<()> {
        let c = &self.weights.config;
        let t = tokens.len();
        if t == 0 || packed.spans.len() != t || packed.positions.len() != t || rounded.len() != t {
            bail!("a packed batch needs one position, span pair and rounding flag per token");
        }
        let mut cache = KvCache::default();
        let positions = packed.positions.iter().copied();
        let x = self.layers(tokens, &mut cache, positions, Some((packed, rounded)))?;
        let n = c.n_embd;
        let mut picked = Vec::with_capacity(outputs.len() * n);
        for &r in outputs {
            picked.extend_from_slice(&x[r * n..(r + 1) * n]);
        }
        // Chunks of equal size, so none falls below the batch kernels' row count when the
        // whole did not.
        const HEAD_ROWS: usize = 64;
        let chunks = outputs.len().div_ceil(HEAD_ROWS).max(1);
        let rows = outputs.len().div_ceil(chunks).max(1);
        for chunk in picked.chunks(rows * n) {
            each(&self.head(chunk)?)?;
        }
        Ok(())
    }

    /// The embedding and every layer on `tokens` at `positions`, their keys and values
    /// appended to `cache` (after its rows; a packed batch starts from an empty one).
    fn layers(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        positions: impl ExactSizeIterator<Item = usize> + Clone,
        packed: Option<(&attention::Packed, &[bool])>,
    ) -> Result<Vec<f32>> {
        let c = &self.weights.config;
        if cache.layers.len() != c.n_layer {
            cache.layers = (0..c.n_layer).map(|_| LayerKv::default()).collect();
        }
        let offset = cache.len;
        let global = self.rope_angles_at(positions.clone(), c.rope_base);
        let local = (c.sliding_window > 0).then(|| self.rope_angles_at(positions, c.rope_base_swa));
        let mut x = self.weights.embedding.lookup(tokens, c.n_embd, c.n_vocab)?;
        if let Some(s) = c.embd_scale {
            x.iter_mut().for_each(|v| *v *= s);
        }
        let layers = self.weights.layers.iter().zip(cache.layers.iter_mut());
        for (il, (layer, slot)) in layers.enumerate() {
            // Sliding layers take their own RoPE base (llama.cpp: freq_base_swa).
            let window = c.window(il);
            let (cos, sin) = match (&local, window) {
                (Some(l), Some(_)) => (&l.0, &l.1),
                _ => (&global.0, &global.1),
            };
            self.block(layer, &mut x, (slot, offset), (cos, sin), window, packed)?;
        }
        Ok(x)
    }

    /// The output norm, the output matrix and the final soft cap on rows `x`.
    fn head(&self, x: &[f32]) -> Result<Vec<f32>> {
        let c = &self.weights.config;
        let x = rms_norm(x, &self.weights.output_norm, c.rms_eps);
        let mut logits = self.weights.output.forward(&x)?;
        if c.final_softcap > 0.0 {
            // ggml_scale by 1/c, tanh, ggml_scale by c (llama.cpp's gemma graphs).
            let (cap, inv) = (c.final_softcap, 1.0 / c.final_softcap);
            logits.iter_mut().for_each(|l| *l = (*l * inv).tanh() * cap);
        }
        Ok(logits)
    }

    /// One token on the decoding team (`decode.rs`). `QUANTFIT_EVAL_DECODE=graph` sends single
    /// tokens through `forward_graph` instead, for comparisons.
    fn decode(&self, token: u32, cache: &mut KvCache) -> Result<Tensor> {
        let mut slot = self.decoder.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(Decoder::new(self, rayon::current_num_threads())?);
        }
        let decoder = slot.as_mut().expect("just set");
        let logits = decoder.decode(self, token, cache)?;
        let n = logits.len();
        Ok(Tensor::from_vec(logits, (1, n), &Device::Cpu)?)
    }

    /// cos/sin of each position and frequency, `[t, head_dim / 2]`, computed as ggml's
    /// rope does (theta_scale = base^(-2/n_dims), multiplied up one frequency at a time).
    pub(super) fn rope_angles(&self, offset: usize, t: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
        self.rope_angles_at(offset..offset + t, base)
    }

    /// `rope_angles` of the given positions, in order.
    fn rope_angles_at(
        &self,
        positions: impl ExactSizeIterator<Item = usize>,
        base: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let c = &self.weights.config;
        let half = c.head_dim / 2;
        let theta_scale = base.powf(-2.0 / c.head_dim as f32);
        let t = positions.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in positions {
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
        (cos, sin)
    }

    /// One transformer layer on `x` (`[t, n_embd]`, updated in place); `window` limits each
    /// query to that many most recent keys (its own included) on a sliding layer; a `packed`
    /// batch's rows see the rows its spans give them.
    fn block(
        &self,
        w: &LayerWeights,
        x: &mut [f32],
        (cache, offset): (&mut LayerKv, usize),
        (cos, sin): (&[f32], &[f32]),
        window: Option<usize>,
        packed: Option<(&attention::Packed, &[bool])>,
    ) -> Result<()> {
        let c = &self.weights.config;
        let t = x.len() / c.n_embd;
        let (h, hkv, hd) = (c.n_head, c.n_head_kv, c.head_dim);
        let group = h / hkv;

        let xn = rms_norm(x, &w.attn_norm, c.rms_eps);
        let mut qkv = Linear::forward_many(&[&w.q, &w.k, &w.v], &xn)?;
        let (mut v, mut k, mut q) = (
            qkv.pop().expect("three outputs"),
            qkv.pop().expect("three outputs"),
            qkv.pop().expect("three outputs"),
        );
        let shape = attention::Shape::of(c);
        attention::prepare_batch(
            [&mut q, &mut k, &mut v],
            attention::Extras::of(w),
            (cos, sin),
            shape,
            packed.map(|p| p.1),
        );
        cache.append(&k, &v, hkv, hd, offset, t);

        let attn = if let Some((packed, _)) = packed {
            let cache_kv = (&cache.k[..], &cache.v[..]);
            attention::packed_batch(&q, cache_kv, cache.capacity, packed, shape, window)
        } else if t == 1 {
            // The decoding team's arithmetic (`decode.rs`), so both give the same logits.
            let mut out = vec![0f32; h * hd];
            let mut scores = Vec::new();
            // The cached keys this query sees: the last window - 1 on a sliding layer.
            let first = window.map_or(0, |n| (offset + 1).saturating_sub(n));
            for (head, o) in out.chunks_mut(hd).enumerate() {
                let kv = head / group;
                let kv_rows = kv * hd..(kv + 1) * hd;
                attention::single_query(
                    &q[head * hd..(head + 1) * hd],
                    (
                        &cache.rows(&cache.k, kv, offset, hd)[first * hd..],
                        &cache.rows(&cache.v, kv, offset, hd)[first * hd..],
                    ),
                    (&k[kv_rows.clone()], &v[kv_rows]),
                    &mut scores,
                    o,
                    shape.scoring,
                );
            }
            out
        } else {
            let cache_kv = (&cache.k[..], &cache.v[..]);
            attention::causal_batch(&q, cache_kv, cache.capacity, offset, shape, window)
        };
        let mut o = w.o.forward(&attn)?;
        // llama.cpp adds the output bias to the projection before the residual.
        if let Some(bias) = &w.o_bias {
            o.chunks_mut(c.n_embd).for_each(|row| add_bias(row, bias));
        }
        if let Some(norm) = &w.post_attn_norm {
            o = rms_norm(&o, norm, c.rms_eps);
        }
        add_into(x, &o);

        let xn = rms_norm(x, &w.ffn_norm, c.rms_eps);
        let mut y = match &w.ffn {
            Ffn::Dense { gate, up, down } => gated_ffn([gate, up, down], &xn, c.activation)?,
            Ffn::Experts(e) => {
                super::moe::forward(e, &xn, c.n_embd, c.n_expert_used, c.norm_expert_weights)?
            }
        };
        if let Some(norm) = &w.post_ffn_norm {
            y = rms_norm(&y, norm, c.rms_eps);
        }
        add_into(x, &y);
        Ok(())
    }
}

/// The SwiGLU feed-forward block, down(silu(gate x) * up x), on the rows of `x` (a dense
/// layer's, or one expert's on the tokens routed to it).
pub(super) fn swiglu_ffn(weights: [&Linear; 3], x: &[f32]) -> Result<Vec<f32>> {
    gated_ffn(weights, x, Activation::Silu)
}

/// down(act(gate x) * up x) on the rows of `x`.
fn gated_ffn([gate, up, down]: [&Linear; 3], x: &[f32], act: Activation) -> Result<Vec<f32>> {
    let mut gate_up = Linear::forward_many(&[gate, up], x)?;
    let up = gate_up.pop().expect("two outputs");
    let mut gated = gate_up.pop().expect("two outputs");
    match act {
        Activation::Silu => super::softmax::swiglu(&mut gated, &up),
        Activation::GeluTanh => super::softmax::geglu(&mut gated, &up),
    }
    down.forward(&gated)
}

/// Rows above which the element-wise steps of a batch run in parallel.
const PARALLEL_ROWS: usize = 32;

/// `x += y`, element by element.
fn add_bias(row: &mut [f32], bias: &[f32]) {
    row.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
}

fn add_into(x: &mut [f32], y: &[f32]) {
    use rayon::prelude::*;
    if x.len() > 1 << 16 {
        x.par_chunks_mut(1 << 14)
            .zip(y.par_chunks(1 << 14))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
    } else {
        x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
    }
}

/// RMSNorm as ggml computes it (ggml_compute_forward_rms_norm_f32, then the multiply by the
/// weight): the mean square summed in double, x * (1 / sqrt(mean + eps)) * weight. The
/// single-token decoder uses the same function, so both paths round alike.
pub(super) fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    let scale = 1.0 / ((sum / x.len() as f64) as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * g;
    }
}

/// `rms_norm_row` over each row of `x` (`[t, weight.len()]`).
fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    use rayon::prelude::*;
    let n = weight.len();
    let mut out = vec![0f32; x.len()];
    let row = |(src, dst): (&[f32], &mut [f32])| rms_norm_row(src, weight, eps, dst);
    if x.len() / n > PARALLEL_ROWS {
        x.par_chunks(n).zip(out.par_chunks_mut(n)).for_each(row);
    } else {
        x.chunks(n).zip(out.chunks_mut(n)).for_each(row);
    }
    out
}

/// Convenience: the last dimension's arg-max of a `[n, vocab]` logits tensor.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}
