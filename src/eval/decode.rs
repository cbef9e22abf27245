//! One token through the model on a thread team: every member runs the whole layer loop,
//! splits each matrix-vector product and the attention heads with the others (rows handed out
//! in chunks from a shared counter, so a member slowed by the OS takes fewer), and meets them
//! at a spin barrier after each. Small vector steps (norms, RoPE, activation quantization,
//! SwiGLU) are cheaper repeated by every member than shared, which saves their barriers. This
//! is how ggml's CPU backend runs a generation step; the numerics are those of
//! `Model::forward_graph` (the same kernels and roundings), which a test checks.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};

use super::attention;
use super::dot::{Prepared, WeightView};
use super::linear::{Linear, WeightGuard};
use super::model::{Model, RawKv};
use super::team::{Barrier, Padded, Team};
use super::weights::LayerWeights;

/// Chunks per member and product: enough for a member that falls behind to hand work to the
/// others, few enough that the shared counter stays cold.
const CHUNKS_PER_MEMBER: usize = 4;

pub struct Decoder {
    team: Team,
    buffers: Buffers,
    scratch: Vec<Mutex<Scratch>>,
    /// One work counter per parallel step of a token (five per layer, one for the output).
    counters: Vec<Padded<AtomicUsize>>,
}

/// Results of the parallel steps, each written in disjoint ranges by the members and read
/// whole after the barrier that follows.
struct Buffers {
    qkv: SharedBuf,
    attn: SharedBuf,
    o: SharedBuf,
    gate_up: SharedBuf,
    down: SharedBuf,
    logits: SharedBuf,
}

struct SharedBuf(Box<[UnsafeCell<f32>]>);

// SAFETY: members write disjoint ranges between barriers and read only after one (see the
// callers of `write` and `read`).
unsafe impl Sync for SharedBuf {}

impl SharedBuf {
    fn new(len: usize) -> SharedBuf {
        SharedBuf((0..len).map(|_| UnsafeCell::new(0.0)).collect())
    }

    /// SAFETY: no member writes the buffer while the slice lives.
    unsafe fn read(&self) -> &[f32] {
        std::slice::from_raw_parts(UnsafeCell::raw_get(self.0.as_ptr()), self.0.len())
    }

    /// SAFETY: no other member reads or writes `range` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn write(&self, range: std::ops::Range<usize>) -> &mut [f32] {
        assert!(range.start <= range.end && range.end <= self.0.len());
        std::slice::from_raw_parts_mut(
            UnsafeCell::raw_get(self.0.as_ptr().add(range.start)),
            range.len(),
        )
    }
}

/// A member's own working vectors, kept between tokens to avoid reallocating them.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
    act: Vec<f32>,
    prepared: Prepared,
    dequantized: Vec<f32>,
}

/// The cache rows of every layer, shared by the members: member 0 writes the new position,
/// all read the positions before it, which nobody writes.
struct CacheRows(Vec<RawKv>);
// SAFETY: see the type's comment; the buffers outlive the job (`decode` holds the cache).
unsafe impl Sync for CacheRows {}

/// One layer's weights for this token.
struct LayerViews<'a> {
    qkv: [WeightView<'a>; 3],
    o: WeightView<'a>,
    gate_up: [WeightView<'a>; 2],
    down: WeightView<'a>,
}

impl Decoder {
    pub fn new(model: &Model, threads: usize) -> Result<Decoder> {
        let w = &model.weights;
        let c = &w.config;
        let team = Team::new(threads).context("starting the decoding threads")?;
        let kv = c.n_head_kv * c.head_dim;
        Ok(Decoder {
            scratch: (0..team.size())
                .map(|_| Mutex::new(Scratch::default()))
                .collect(),
            team,
            buffers: Buffers {
                qkv: SharedBuf::new(c.n_head * c.head_dim + 2 * kv),
                attn: SharedBuf::new(c.n_head * c.head_dim),
                o: SharedBuf::new(c.n_embd),
                gate_up: SharedBuf::new(2 * c.n_ff),
                down: SharedBuf::new(c.n_embd),
                logits: SharedBuf::new(c.n_vocab),
            },
            counters: (0..5 * c.n_layer + 1)
                .map(|_| Padded(AtomicUsize::new(0)))
                .collect(),
        })
    }

    pub fn threads(&self) -> usize {
        self.team.size()
    }

    /// Runs `token` after the cached positions; returns its logits.
    pub fn decode(
        &mut self,
        model: &Model,
        token: u32,
        cache: &mut super::model::KvCache,
    ) -> Result<Vec<f32>> {
        let w = &model.weights;
        let c = &w.config;
        let x0 = w.embedding.lookup(&[token], c.n_embd, c.n_vocab)?;
        let position = cache.len();
        let (cos, sin) = model.rope_angles(position, 1, model.config().rope_base);
        let rows = CacheRows(cache.reserve_one(c.n_layer, c.n_head_kv, c.head_dim));

        let guards: Vec<[WeightGuard; 7]> = w
            .layers
            .iter()
            .map(|l| -> Result<[WeightGuard; 7]> {
                let [gate, up, down] = l
                    .ffn
                    .dense()
                    .context("the decoding team runs dense feed-forward layers only")?;
                Ok([&l.q, &l.k, &l.v, &l.o, gate, up, down].map(Linear::guard))
            })
            .collect::<Result<_>>()?;
        let output_guard = w.output.guard();
        let layers = guards
            .iter()
            .map(|g| -> Result<LayerViews> {
                Ok(LayerViews {
                    qkv: [g[0].view()?, g[1].view()?, g[2].view()?],
                    o: g[3].view()?,
                    gate_up: [g[4].view()?, g[5].view()?],
                    down: g[6].view()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = output_guard.view()?;
        for counter in &self.counters {
            counter.store(0, Ordering::Relaxed);
        }

        let step = Step {
            model,
            decoder: &*self,
            layers: &layers,
            output,
            x0: &x0,
            cos: &cos,
            sin: &sin,
            rows: &rows,
            position,
        };
        let members = self.team.size();
        self.team
            .run(&|member, barrier| step.run(member, members, barrier));
        cache.advance_one();
        // SAFETY: the team has finished; nobody writes the logits now.
        Ok(unsafe { self.buffers.logits.read() }.to_vec())
    }
}

/// Everything one token's members share.
struct Step<'a> {
    model: &'a Model,
    decoder: &'a Decoder,
    layers: &'a [LayerViews<'a>],
    output: WeightView<'a>,
    x0: &'a [f32],
    cos: &'a [f32],
    sin: &'a [f32],
    rows: &'a CacheRows,
    position: usize,
}

impl Step<'_> {
    fn run(&self, member: usize, members: usize, barrier: &Barrier) {
        let c = &self.model.weights.config;
        let d = self.decoder;
        let b = &d.buffers;
        let mut guard = d.scratch[member].lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        s.x.clear();
        s.x.extend_from_slice(self.x0);
        let mut counters = d.counters.iter();
        let mut next_counter = || &counters.next().expect("a counter per step").0;
        let (nq, nkv) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        for ((views, weights), rows) in self
            .layers
            .iter()
            .zip(&self.model.weights.layers)
            .zip(&self.rows.0)
        {
            rms_norm(&s.x, &weights.attn_norm, c.rms_eps, &mut s.normed);
            s.prepared.prepare(&s.normed, &views.qkv);
            let parts = [(views.qkv[0], nq), (views.qkv[1], nkv), (views.qkv[2], nkv)];
            product(next_counter(), &parts, s, &b.qkv, members);
            barrier.wait();

            // SAFETY: written before the barrier above, next written after three more.
            let qkv = unsafe { b.qkv.read() };
            self.queries_keys_values(qkv, weights, s);
            if member == 0 {
                self.store_in_cache(rows, s);
            }
            self.attention(next_counter(), rows, s);
            barrier.wait();

            // SAFETY: the attention outputs were written before the barrier above.
            s.act.clear();
            s.act.extend_from_slice(unsafe { b.attn.read() });
            s.prepared.prepare(&s.act, &[views.o]);
            product(next_counter(), &[(views.o, c.n_embd)], s, &b.o, members);
            barrier.wait();

            // SAFETY: as above, for each product's output and the barrier after it.
            let o = unsafe { b.o.read() };
            match &weights.o_bias {
                // llama.cpp adds the output bias to the projection before the residual.
                Some(bias) => {
                    s.x.iter_mut()
                        .zip(o.iter().zip(bias))
                        .for_each(|(x, (o, b))| *x += o + b)
                }
                None => add_into(&mut s.x, o),
            }
            rms_norm(&s.x, &weights.ffn_norm, c.rms_eps, &mut s.normed);
            s.prepared.prepare(&s.normed, &views.gate_up);
            let parts = [(views.gate_up[0], c.n_ff), (views.gate_up[1], c.n_ff)];
            product(next_counter(), &parts, s, &b.gate_up, members);
            barrier.wait();

            let gate_up = unsafe { b.gate_up.read() };
            s.act.clear();
            s.act.extend_from_slice(&gate_up[..c.n_ff]);
            super::softmax::swiglu_chunk(&mut s.act, &gate_up[c.n_ff..]);
            s.prepared.prepare(&s.act, &[views.down]);
            product(
                next_counter(),
                &[(views.down, c.n_embd)],
                s,
                &b.down,
                members,
            );
            barrier.wait();

            add_into(&mut s.x, unsafe { b.down.read() });
        }
        rms_norm(
            &s.x,
            &self.model.weights.output_norm,
            c.rms_eps,
            &mut s.normed,
        );
        s.prepared.prepare(&s.normed, &[self.output]);
        product(
            next_counter(),
            &[(self.output, c.n_vocab)],
            s,
            &b.logits,
            members,
        );
    }

    /// Biases, RoPE and the F16 rounding of llama.cpp's KV cache, on the member's own copy.
    fn queries_keys_values(&self, qkv: &[f32], weights: &LayerWeights, s: &mut Scratch) {
        let c = &self.model.weights.config;
        let (nq, nkv) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        for (dst, src) in [
            (&mut s.q, &qkv[..nq]),
            (&mut s.k, &qkv[nq..nq + nkv]),
            (&mut s.v, &qkv[nq + nkv..nq + 2 * nkv]),
        ] {
            dst.clear();
            dst.extend_from_slice(src);
        }
        attention::prepare_position(
            [&mut s.q, &mut s.k, &mut s.v],
            attention::Extras::of(weights),
            self.cos,
            self.sin,
            attention::Shape::of(&self.model.weights.config),
            true,
        );
    }

    fn store_in_cache(&self, rows: &RawKv, s: &Scratch) {
        let dim = self.model.weights.config.head_dim;
        for (h, (k, v)) in s.k.chunks(dim).zip(s.v.chunks(dim)).enumerate() {
            let at = (h * rows.capacity + self.position) * dim;
            // SAFETY: `reserve_one` made room for this position; only member 0 writes it,
            // and nobody reads it from the cache during this token.
            unsafe {
                std::ptr::copy_nonoverlapping(k.as_ptr(), rows.k.add(at), dim);
                std::ptr::copy_nonoverlapping(v.as_ptr(), rows.v.add(at), dim);
            }
        }
    }

    /// The heads handed to this member, against the cached positions and the new one.
    fn attention(&self, counter: &AtomicUsize, rows: &RawKv, s: &mut Scratch) {
        let c = &self.model.weights.config;
        let dim = c.head_dim;
        let group = c.n_head / c.n_head_kv;
        let past = self.position;
        loop {
            let head = counter.fetch_add(1, Ordering::Relaxed);
            if head >= c.n_head {
                break;
            }
            let kv = head / group;
            // SAFETY: positions before `past` were written by earlier tokens and are not
            // written during this one.
            let (keys, values) = unsafe {
                let at = kv * rows.capacity * dim;
                (
                    std::slice::from_raw_parts(rows.k.add(at), past * dim),
                    std::slice::from_raw_parts(rows.v.add(at), past * dim),
                )
            };
            // SAFETY: each head's output range belongs to the member that took the head.
            let out = unsafe {
                self.decoder
                    .buffers
                    .attn
                    .write(head * dim..(head + 1) * dim)
            };
            let kv_rows = kv * dim..(kv + 1) * dim;
            attention::single_query(
                &s.q[head * dim..(head + 1) * dim],
                (keys, values),
                (&s.k[kv_rows.clone()], &s.v[kv_rows]),
                &mut s.scores,
                out,
                attention::Shape::of(&self.model.weights.config).scoring,
            );
        }
    }
}

/// The rows of `parts` (stacked in order) times the prepared activations, into `out`, in
/// chunks taken from `counter`.
fn product(
    counter: &AtomicUsize,
    parts: &[(WeightView, usize)],
    s: &mut Scratch,
    out: &SharedBuf,
    members: usize,
) {
    let total: usize = parts.iter().map(|(_, rows)| rows).sum();
    let chunk = total.div_ceil(members * CHUNKS_PER_MEMBER).max(16);
    loop {
        let start = counter.fetch_add(1, Ordering::Relaxed) * chunk;
        if start >= total {
            return;
        }
        let end = (start + chunk).min(total);
        let mut base = 0;
        for &(weight, rows) in parts {
            let (lo, hi) = (start.max(base), end.min(base + rows));
            if lo < hi {
                // SAFETY: the chunk [start, end) belongs to this member alone.
                let dst = unsafe { out.write(lo..hi) };
                s.prepared
                    .dot_rows(weight, lo - base, dst, &mut s.dequantized);
            }
            base += rows;
        }
    }
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    super::model::rms_norm_row(x, weight, eps, out);
}

fn add_into(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
