//! Attention on llama.cpp's F16 KV cache, on plain buffers: the per-position preparation of
//! queries, keys and values (biases, RoPE, F16 rounding), a single query against the cache
//! (generation; shared by the decoding team and the graph so both round alike) and a causal
//! batch (prompts, perplexity) computed in blocks of query rows: each block multiplies only
//! the keys it can see, and its score rows stay in cache instead of a `[heads, t, keys]`
//! tensor being built, copied and masked.

use rayon::prelude::*;

use super::dot::dot_f32;
use super::softmax::causal_row;
use super::weights::ModelConfig;
use crate::quant::fp16::round_trip_f16;

/// Query rows per block of the batched attention: their scores (rows x keys) stay in L2.
const QUERY_BLOCK: usize = 64;

/// Where queries, keys and values sit and how RoPE turns them.
#[derive(Clone, Copy)]
pub struct Shape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub neox: bool,
    /// Epsilon of the per-head query/key norms (Qwen3).
    pub rms_eps: f32,
    pub scoring: Scoring,
}

impl Shape {
    pub fn of(c: &ModelConfig) -> Shape {
        Shape {
            heads: c.n_head,
            kv_heads: c.n_head_kv,
            head_dim: c.head_dim,
            neox: c.rope_neox,
            rms_eps: c.rms_eps,
            scoring: Scoring {
                scale: c.query_scale,
                softcap: c.attn_softcap,
            },
        }
    }
}

/// How a row of query-key products becomes attention probabilities.
#[derive(Clone, Copy, Debug)]
pub struct Scoring {
    /// The products' scale (llama.cpp scales the queries instead; for a power of two, as
    /// 1 / sqrt(head_dim) of the usual head sizes is, the two round alike).
    pub scale: f32,
    /// `c` of the soft cap `c * tanh(s / c)` on the scaled scores (0: none).
    pub softcap: f32,
}

impl Scoring {
    pub fn plain(head_dim: usize) -> Scoring {
        Scoring {
            scale: 1.0 / (head_dim as f32).sqrt(),
            softcap: 0.0,
        }
    }

    /// The causal softmax of one row whose query sees keys `0..seen`, capped first where
    /// the model caps: ggml's flash attention folds 1/c into the scale, then takes
    /// `c * tanhf` (ggml-cpu/ops.cpp `ggml_compute_forward_flash_attn_ext_f16_one_chunk`).
    pub fn softmax(self, row: &mut [f32], seen: usize) {
        if self.softcap == 0.0 {
            return causal_row(row, seen, self.scale);
        }
        let (cap, inv) = (self.softcap, 1.0 / self.softcap);
        for s in &mut row[..seen] {
            *s = cap * ((*s * self.scale) * inv).tanh();
        }
        causal_row(row, seen, 1.0);
    }
}

/// Rotates one head's pairs: adjacent elements (llama.cpp's "norm" mode) or the two halves
/// (NeoX mode, Qwen2).
fn rope(head: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    let half = head.len() / 2;
    for i in 0..half {
        let (a, b) = if neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos[i] - x1 * sin[i];
        head[b] = x0 * sin[i] + x1 * cos[i];
    }
}

/// What a layer adds to its Q/K/V projections before attention: biases on each, and
/// per-head RMS norm weights on queries and keys.
#[derive(Clone, Copy, Default)]
pub struct Extras<'a> {
    pub biases: [Option<&'a [f32]>; 3],
    pub norms: [Option<&'a [f32]>; 2],
}

impl<'a> Extras<'a> {
    pub fn of(w: &'a super::weights::LayerWeights) -> Extras<'a> {
        Extras {
            biases: [&w.q_bias, &w.k_bias, &w.v_bias].map(|b| b.as_deref()),
            norms: [&w.q_norm, &w.k_norm].map(|b| b.as_deref()),
        }
    }
}

/// Batches of at least this many tokens keep their queries in f32: llama.cpp's CPU flash
/// attention (on by default, `-fa auto`) tiles them (`GGML_FA_TILE_Q`, ggml-cpu/ops.cpp
/// `ggml_compute_forward_flash_attn_ext_tiled`: F32 queries against the F16 cache widened to
/// F32), while smaller batches and single tokens take its one-row kernel, which converts each
/// query to F16 for the dot with the F16 cache.
pub const F32_QUERY_ROWS: usize = 64;

/// One position's query, key and value rows in place: biases, per-head norms, RoPE on
/// queries and keys (`cos`/`sin` of this position), then the F16 rounding of llama.cpp's KV
/// cache, and of the query where llama.cpp rounds it (`round_query`, see `F32_QUERY_ROWS`).
pub fn prepare_position(
    [q, k, v]: [&mut [f32]; 3],
    extras: Extras,
    cos: &[f32],
    sin: &[f32],
    shape: Shape,
    round_query: bool,
) {
    for (y, bias) in [&mut *q, &mut *k, &mut *v].into_iter().zip(extras.biases) {
        if let Some(bias) = bias {
            y.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
        }
    }
    let mut normed = Vec::new();
    for (y, norm) in [&mut *q, &mut *k].into_iter().zip(extras.norms) {
        for head in y.chunks_mut(shape.head_dim) {
            if let Some(weight) = norm {
                normed.resize(head.len(), 0.0);
                super::model::rms_norm_row(head, weight, shape.rms_eps, &mut normed);
                head.copy_from_slice(&normed);
            }
            rope(head, cos, sin, shape.neox);
        }
    }
    if round_query {
        q.iter_mut().for_each(|x| *x = round_trip_f16(*x));
    }
    for y in [k, v] {
        y.iter_mut().for_each(|x| *x = round_trip_f16(*x));
    }
}

/// `prepare_position` for every row of `[t, n]` queries, keys and values, queries rounded as
/// llama.cpp rounds them for a batch of `t`.
/// `rounded`, when given, says per row whether to round the query (packed batches follow the
/// batch llama.cpp would have run each row in).
pub fn prepare_batch(
    [q, k, v]: [&mut [f32]; 3],
    extras: Extras,
    (cos, sin): (&[f32], &[f32]),
    shape: Shape,
    rounded: Option<&[bool]>,
) {
    let t = cos.len() / (shape.head_dim / 2);
    let half = shape.head_dim / 2;
    let (nq, nkv) = (q.len() / t, k.len() / t);
    q.par_chunks_mut(nq)
        .zip(k.par_chunks_mut(nkv))
        .zip(v.par_chunks_mut(nkv))
        .enumerate()
        .for_each(|(p, ((q, k), v))| {
            let (cos, sin) = (&cos[p * half..][..half], &sin[p * half..][..half]);
            let round_query = rounded.map_or(t < F32_QUERY_ROWS, |r| r[p]);
            prepare_position([q, k, v], extras, cos, sin, shape, round_query);
        });
}

/// One query head against `past` cached rows (`keys`, `values`: `[past, dim]`) and its own
/// new key and value; the output is written to `out`.
pub fn single_query(
    q: &[f32],
    (keys, values): (&[f32], &[f32]),
    (new_key, new_value): (&[f32], &[f32]),
    scores: &mut Vec<f32>,
    out: &mut [f32],
    scoring: Scoring,
) {
    let dim = q.len();
    let past = keys.len() / dim;
    scores.resize(past + 1, 0.0);
    for (p, key) in scores.iter_mut().zip(keys.chunks_exact(dim)) {
        *p = dot_f32(q, key);
    }
    scores[past] = dot_f32(q, new_key);
    scoring.softmax(scores, past + 1);
    out.fill(0.0);
    for (&p, value) in scores
        .iter()
        .zip(values.chunks_exact(dim).chain([new_value]))
    {
        for (o, &v) in out.iter_mut().zip(value) {
            *o += p * v;
        }
    }
}

/// `dst [m, n] = lhs [m, k] x rhs [k, n]` in f32, single-threaded: `dst` and `lhs` row-major
/// with the given row strides, `rhs` element (i, j) at `i * row_stride + j * col_stride`.
///
/// SAFETY: every element the shapes and strides address must be valid (and `dst`'s writable
/// and not aliased).
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    (dst, dst_row): (*mut f32, usize),
    (lhs, lhs_row): (*const f32, usize),
    (rhs, rhs_col, rhs_row): (*const f32, usize, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_row as isize,
        false,
        lhs,
        1,
        lhs_row as isize,
        rhs,
        rhs_col as isize,
        rhs_row as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Causal attention of `t` prepared queries (`q`: `[t, heads * dim]`) at positions
/// `offset..offset + t`, against a cache whose rows `0..offset + t` are filled: `keys` and
/// `values` are `[kv_heads][capacity][dim]`. With a `window`, the query at position p sees
/// keys p - window + 1 ..= p only (llama.cpp's LLAMA_SWA_TYPE_STANDARD: masked when
/// p - key >= window). Returns `[t, heads * dim]`.
pub fn causal_batch(
    q: &[f32],
    (keys, values): (&[f32], &[f32]),
    capacity: usize,
    offset: usize,
    shape: Shape,
    window: Option<usize>,
) -> Vec<f32> {
    let (h, dim) = (shape.heads, shape.head_dim);
    let group = h / shape.kv_heads;
    let t = q.len() / (h * dim);
    let mut out = vec![0f32; t * h * dim];
    let out_ptr = OutPtr(out.as_mut_ptr());
    let blocks = t.div_ceil(QUERY_BLOCK);
    (0..h * blocks).into_par_iter().for_each(|task| {
        let (head, block) = (task / blocks, task % blocks);
        let kv = head / group;
        let r0 = block * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(t - r0);
        // Keys from the block's first query's window to its last query; rows mask the keys
        // outside theirs.
        let lo = window.map_or(0, |n| (offset + r0 + 1).saturating_sub(n));
        let seen = offset + r0 + rows - lo;
        let k = &keys[kv * capacity * dim..][lo * dim..][..seen * dim];
        let v = &values[kv * capacity * dim..][lo * dim..][..seen * dim];
        let mut scores = vec![0f32; rows * seen];
        let q_block = &q[r0 * h * dim + head * dim..];
        // SAFETY (both products): the shapes and strides describe memory inside the slices
        // above; the output block (rows r0.. x this head's columns) is this task's alone.
        unsafe {
            // scores [rows, seen] = queries [rows, dim] x keys^T
            product(
                (rows, seen, dim),
                (scores.as_mut_ptr(), seen),
                (q_block.as_ptr(), h * dim),
                (k.as_ptr(), dim, 1),
            );
        }
        for (r, row) in scores.chunks_mut(seen).enumerate() {
            let p = offset + r0 + r;
            let first = window.map_or(0, |n| (p + 1).saturating_sub(n)) - lo;
            row[..first].fill(0.0);
            shape.scoring.softmax(&mut row[first..], p + 1 - lo - first);
        }
        let out_ptr = &out_ptr;
        unsafe {
            // out block [rows, dim] = probabilities [rows, seen] x values [seen, dim]
            product(
                (rows, dim, seen),
                (out_ptr.0.add(r0 * h * dim + head * dim), h * dim),
                (scores.as_ptr(), seen),
                (v.as_ptr(), 1, dim),
            );
        }
    });
    out
}

/// Which earlier rows of a packed batch each row sees: several sequences in one batch, as
/// llama.cpp batches tasks that share a prefix (one sequence id per ending, the prefix in all
/// of them). Row r sees the rows in `spans[r]` (two ranges in order: its sequence's shared
/// prefix, then its own rows up to itself; either may be empty), and on a sliding layer only
/// those within the window by position.
pub struct Packed<'a> {
    pub spans: &'a [[std::ops::Range<usize>; 2]],
    pub positions: &'a [usize],
}

/// Attention of the `t` prepared queries of a packed batch against its own `t` cached rows
/// (`keys`, `values`: `[kv_heads][capacity][dim]`, rows `0..t` filled), each query seeing
/// the rows `packed` gives it. Returns `[t, heads * dim]`.
pub fn packed_batch(
    q: &[f32],
    (keys, values): (&[f32], &[f32]),
    capacity: usize,
    packed: &Packed,
    shape: Shape,
    window: Option<usize>,
) -> Vec<f32> {
    let (h, dim) = (shape.heads, shape.head_dim);
    let group = h / shape.kv_heads;
    let t = q.len() / (h * dim);
    let mut out = vec![0f32; t * h * dim];
    let out_ptr = OutPtr(out.as_mut_ptr());
    let blocks = t.div_ceil(QUERY_BLOCK);
    let visible = |r: usize| {
        let p = packed.positions[r];
        packed.spans[r]
            .iter()
            .flat_map(|s| s.clone())
            .filter(move |&j| window.is_none_or(|n| p - packed.positions[j] < n))
    };
    (0..h * blocks).into_par_iter().for_each(|task| {
        let (head, block) = (task / blocks, task % blocks);
        let kv = head / group;
        let r0 = block * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(t - r0);
        let spans = &packed.spans[r0..r0 + rows];
        let ends = spans.iter().flatten().filter(|s| !s.is_empty());
        let lo = ends.clone().map(|s| s.start).min().unwrap_or(0);
        let hi = ends.map(|s| s.end).max().unwrap_or(lo).max(lo);
        let seen = hi - lo;
        let k = &keys[kv * capacity * dim..][lo * dim..][..seen * dim];
        let v = &values[kv * capacity * dim..][lo * dim..][..seen * dim];
        let mut scores = vec![0f32; rows * seen];
        let q_block = &q[r0 * h * dim + head * dim..];
        // SAFETY (both products): as in `causal_batch`, the shapes and strides describe
        // memory inside the slices above, and the output block is this task's alone.
        unsafe {
            product(
                (rows, seen, dim),
                (scores.as_mut_ptr(), seen),
                (q_block.as_ptr(), h * dim),
                (k.as_ptr(), dim, 1),
            );
        }
        let mut live = Vec::new();
        for (r, row) in scores.chunks_mut(seen.max(1)).enumerate().take(rows) {
            // The visible scores gathered in order, softmaxed as one causal row, put back;
            // every other key gets probability 0.
            live.clear();
            live.extend(visible(r0 + r).map(|j| row[j - lo]));
            let n = live.len();
            shape.scoring.softmax(&mut live, n);
            row.fill(0.0);
            for (j, p) in visible(r0 + r).zip(&live) {
                row[j - lo] = *p;
            }
        }
        let out_ptr = &out_ptr;
        unsafe {
            product(
                (rows, dim, seen),
                (out_ptr.0.add(r0 * h * dim + head * dim), h * dim),
                (scores.as_ptr(), seen),
                (v.as_ptr(), 1, dim),
            );
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked batch equals a plain per-query computation (f64 reference), across block
    /// edges, with cached positions before the batch and grouped KV heads, without a window and
    /// with windows shorter and longer than a block.
    #[test]
    fn causal_batch_matches_per_query_attention() {
        for window in [None, Some(7), Some(QUERY_BLOCK + 9)] {
            check_against_reference(window);
        }
    }

    /// The capped softmax equals an f64 reference of `softmax(c * tanh(s * scale / c))` over
    /// the seen keys, leaves the unseen ones at zero, and differs from the uncapped one where
    /// scores exceed the cap (Gemma 2's scores do).
    #[test]
    fn soft_capped_scores_match_reference() {
        let raw: Vec<f32> = (0..12).map(|i| (i as f32 - 4.0) * 9.5).collect();
        let (scale, cap, seen) = (0.25f32, 5.0f32, 9);
        let capped = Scoring {
            scale,
            softcap: cap,
        };
        let mut got = raw.clone();
        capped.softmax(&mut got, seen);
        let z: Vec<f64> = raw[..seen]
            .iter()
            .map(|&s| cap as f64 * (s as f64 * scale as f64 / cap as f64).tanh())
            .collect();
        let top = z.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = z.iter().map(|v| (v - top).exp()).sum();
        for (i, &g) in got.iter().enumerate() {
            let want = if i < seen {
                (z[i] - top).exp() / sum
            } else {
                0.0
            };
            assert!((g as f64 - want).abs() < 1e-6, "key {i}: {g} vs {want}");
        }
        let mut plain = raw.clone();
        Scoring {
            scale,
            softcap: 0.0,
        }
        .softmax(&mut plain, seen);
        let gap = plain
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(gap > 0.05, "the cap changed nothing (largest gap {gap})");
    }

    fn check_against_reference(window: Option<usize>) {
        let shape = Shape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            neox: false,
            rms_eps: 1e-6,
            scoring: Scoring::plain(8),
        };
        let (offset, t, capacity) = (5, 2 * QUERY_BLOCK + 3, 256);
        let dim = shape.head_dim;
        let q = crate::eval::test_values(t * shape.heads * dim, 3);
        let keys = crate::eval::test_values(shape.kv_heads * capacity * dim, 5);
        let values = crate::eval::test_values(shape.kv_heads * capacity * dim, 7);
        let got = causal_batch(&q, (&keys, &values), capacity, offset, shape, window);
        let scale = 1.0 / (dim as f64).sqrt();
        for r in 0..t {
            for head in 0..shape.heads {
                let kv = head / 2;
                let qh = &q[(r * shape.heads + head) * dim..][..dim];
                let seen = offset + r + 1;
                let first = window.map_or(0, |n| seen.saturating_sub(n));
                let row = |j: usize, buf: &[f32]| buf[(kv * capacity + j) * dim..][..dim].to_vec();
                let s: Vec<f64> = (first..seen)
                    .map(|j| {
                        qh.iter()
                            .zip(row(j, &keys))
                            .map(|(a, b)| *a as f64 * b as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for d in 0..dim {
                    let want: f64 = (first..seen)
                        .map(|j| (s[j - first] - m).exp() / z * row(j, &values)[d] as f64)
                        .sum();
                    let g = got[(r * shape.heads + head) * dim + d] as f64;
                    assert!(
                        (g - want).abs() < 1e-5,
                        "window {window:?} row {r} head {head} dim {d}: {g} vs {want}"
                    );
                }
            }
        }
    }
}
