//! The estimator: memory (weights from the converter's own per-tensor rules, placed as llama.cpp
//! places them: layers on the devices or in host memory, the token embeddings always in host
//! memory, KV cache and compute buffers), speed (decode from bytes read per token against
//! bandwidth, prefill from FLOPs against compute, both with efficiencies fitted to published
//! llama-bench results) and cost, for one configuration (`Config`).

use serde::{Deserialize, Serialize};

use super::catalog::{parameter_count, tensors, ModelSpec};
use super::hardware::HardwareProfile;
use crate::quant::rules::{tensor_type, FileType, ModelFacts, RuleOptions};

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// KV cache element type (llama.cpp `--cache-type-k/v`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    F16,
    Q8_0,
    Q4_0,
}

impl KvType {
    pub fn from_name(s: &str) -> Option<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Some(KvType::F16),
            "q8_0" => Some(KvType::Q8_0),
            "q4_0" => Some(KvType::Q4_0),
            _ => None,
        }
    }
    /// In the order a context that does not fit tries them.
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    pub fn bytes_per_element(self) -> f64 {
        match self {
            KvType::F16 => 2.0,
            KvType::Q8_0 => 34.0 / 32.0,
            KvType::Q4_0 => 18.0 / 32.0,
        }
    }
}

/// Where a file's tensor bytes live: per layer, the token embeddings (kept in host memory by
/// llama.cpp, "little benefit to offloading the input layer"), and the output head (the norm and
/// `output.weight`, or a second copy of the token embeddings when they are tied).
#[derive(Clone, Debug)]
pub struct Footprint {
    pub layers: Vec<u64>,
    /// Of each layer's bytes, those of its routed experts (`*_exps`): a token reads only the
    /// experts it is routed to, the rest of the layer (attention, router, shared experts) whole.
    pub layer_experts: Vec<u64>,
    /// Parameters in routed experts (0 for a dense model).
    pub expert_params: u64,
    pub token_embd: u64,
    pub output: u64,
    /// Bytes of the file's tensors (a tied output is stored once).
    pub file: u64,
}

/// Exact tensor bytes of the GGUF file the converter writes for this model and file type,
/// through the converter's own per-tensor rules.
pub fn footprint(m: &ModelSpec, ft: FileType) -> Footprint {
    let list = tensors(m);
    let facts = ModelFacts::of(
        m.architecture(),
        &m.hparams,
        list.iter().any(|(n, _)| n == "output.weight"),
    );
    let opts = RuleOptions::default();
    let mut fp = Footprint {
        layers: vec![0; m.hparams.n_layer as usize],
        layer_experts: vec![0; m.hparams.n_layer as usize],
        expert_params: 0,
        token_embd: 0,
        output: 0,
        file: 0,
    };
    for (name, dims) in &list {
        let ty = tensor_type(ft, &facts, &opts, name, dims);
        let info = ty.info();
        let bytes =
            dims.iter().product::<u64>() / info.block_elems as u64 * info.block_bytes as u64;
        fp.file += bytes;
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        match (layer, name.as_str()) {
            (Some(i), _) => {
                fp.layers[i] += bytes;
                if name.contains("_exps.") {
                    fp.layer_experts[i] += bytes;
                    fp.expert_params += dims.iter().product::<u64>();
                }
            }
            (None, "token_embd.weight") => fp.token_embd += bytes,
            _ => fp.output += bytes,
        }
    }
    if !facts.has_output {
        fp.output += fp.token_embd;
    }
    fp
}

/// Exact tensor bytes of the GGUF file the converter writes for this model and file type.
pub fn weight_bytes(m: &ModelSpec, ft: FileType) -> u64 {
    footprint(m, ft).file
}

/// llama.cpp's default micro-batch (`n_ubatch`): a sliding-window cache holds this many cells
/// beyond the window.
pub const UBATCH: u64 = 512;

/// K and V bytes of one cache cell in one layer.
fn kv_cell_bytes(m: &ModelSpec, kv: KvType) -> f64 {
    2.0 * (m.hparams.n_head_kv * m.hparams.head_dim) as f64 * kv.bytes_per_element()
}

/// KV cache bytes per token of context over every layer, sliding windows aside (what a
/// model without sliding layers allocates per token; see `kv_bytes`).
pub fn kv_bytes_per_token(m: &ModelSpec, kv: KvType) -> f64 {
    m.hparams.n_layer as f64 * kv_cell_bytes(m, kv)
}

/// Whether layer `il` attends through a sliding window: llama.cpp's fixed layer pattern for
/// the architecture (`is_swa`), where the config sets a window.
pub fn sliding_layer(m: &ModelSpec, il: u64) -> bool {
    let pattern = m.architecture().swa_pattern;
    m.hparams.sliding_window > 0 && pattern > 0 && il % pattern < pattern - 1
}

/// Cache cells llama.cpp allocates in layer `il` for one sequence of `ctx` tokens: the
/// context padded to 256 (llama_context), or in a sliding layer at most the window plus the
/// micro-batch `ubatch`, padded to 256 (llama_kv_cache_iswa), as llama.cpp 0c1e57098 sizes
/// them.
pub fn kv_cells(m: &ModelSpec, il: u64, ctx: u64, ubatch: u64) -> u64 {
    let full = ctx.div_ceil(256) * 256;
    if sliding_layer(m, il) {
        full.min((m.hparams.sliding_window + ubatch).div_ceil(256) * 256)
    } else {
        full
    }
}

/// KV cache bytes llama.cpp allocates in layer `il` for `seqs` sequences of `ctx` tokens (one
/// cache stream per sequence, its default).
pub fn kv_layer_bytes(m: &ModelSpec, kv: KvType, il: u64, ctx: u64, seqs: u64, ubatch: u64) -> f64 {
    (kv_cells(m, il, ctx, ubatch) * seqs) as f64 * kv_cell_bytes(m, kv)
}

/// KV cache bytes of every layer at llama.cpp's default micro-batch.
pub fn kv_bytes(m: &ModelSpec, kv: KvType, ctx: u64, seqs: u64) -> f64 {
    (0..m.hparams.n_layer)
        .map(|il| kv_layer_bytes(m, kv, il, ctx, seqs, UBATCH))
        .sum()
}

/// Cache cells a token generated at depth `depth` attends to in layer `il`: all of them, or
/// the window in a sliding layer.
fn kv_cells_read(m: &ModelSpec, il: u64, depth: f64) -> f64 {
    if sliding_layer(m, il) {
        depth.min(m.hparams.sliding_window as f64)
    } else {
        depth
    }
}

/// Compute buffers and runtime overhead, a documented approximation of llama.cpp's allocations:
/// logits (vocab x ubatch f32), activations (~(4 x n_embd + 2 x n_ff) x ubatch f32) and a fixed
/// runtime/driver reserve (CUDA/ROCm context 400 MiB, Metal 200 MiB, CPU 50 MiB).
pub fn overhead_bytes(m: &ModelSpec, hw: &HardwareProfile, ubatch: u64) -> f64 {
    let compute = 4.0
        * ubatch as f64
        * (m.hparams.vocab_size as f64
            + 4.0 * m.hparams.n_embd as f64
            + 2.0 * m.hparams.n_ff as f64);
    let reserve = match hw.backend.as_str() {
        "cuda" | "rocm" | "vulkan" => 400.0,
        "metal" => 200.0,
        _ => 50.0,
    } * 1024.0
        * 1024.0;
    compute + reserve
}

/// Fitted efficiencies of one backend class.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Efficiency {
    /// Achieved fraction of peak memory bandwidth during decode.
    pub bandwidth: f64,
    /// Fixed time per generated token (kernel launches, sampling), seconds.
    pub per_token_s: f64,
    /// Achieved fraction of peak FP16 throughput during prompt processing.
    pub compute: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CalibrationPoint {
    pub hardware: String,
    pub model: String,
    pub size_gib: f64,
    pub params_b: f64,
    pub test: String,
    pub tokens_per_s: f64,
    pub source: String,
}

#[derive(Deserialize)]
struct CalibrationFile {
    point: Vec<CalibrationPoint>,
}

pub fn calibration_points() -> Vec<CalibrationPoint> {
    let f: CalibrationFile = toml::from_str(include_str!("calibration.toml"))
        .expect("embedded calibration data is valid");
    f.point
}

/// Backend classes share one set of efficiencies.
pub fn class_of(backend: &str) -> &'static str {
    match backend {
        "cuda" | "rocm" | "vulkan" => "gpu",
        "metal" => "metal",
        _ => "cpu",
    }
}

/// Defaults where no published point constrains a class (CPU): llama.cpp reaches roughly
/// 60-70% of DRAM bandwidth in generation on servers; these are assumptions, not fits.
const DEFAULTS: Efficiency = Efficiency {
    bandwidth: 0.65,
    per_token_s: 0.002,
    compute: 0.25,
};

/// Least-squares fit of decode time = bytes / (eff x BW) + per_token over the points of one
/// class, and the median compute efficiency over its prefill points.
pub fn fit(points: &[(&CalibrationPoint, &HardwareProfile)], class: &str) -> Efficiency {
    let decode: Vec<(f64, f64)> = points
        .iter()
        .filter(|(p, h)| p.test.starts_with("tg") && class_of(&h.backend) == class)
        .map(|(p, h)| {
            (
                p.size_gib * GIB / (h.memory_bandwidth_gbs * 1e9),
                1.0 / p.tokens_per_s,
            )
        })
        .collect();
    let mut eff = DEFAULTS;
    if decode.len() >= 2 {
        let n = decode.len() as f64;
        let (sx, sy) = decode
            .iter()
            .fold((0.0, 0.0), |a, (x, y)| (a.0 + x, a.1 + y));
        let (mx, my) = (sx / n, sy / n);
        let sxx: f64 = decode.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
        let sxy: f64 = decode.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let slope = if sxx > 0.0 { sxy / sxx } else { my / mx };
        let intercept = (my - slope * mx).max(0.0);
        eff.bandwidth = (1.0 / slope).clamp(0.05, 1.0);
        eff.per_token_s = intercept;
    } else if let Some((x, y)) = decode.first() {
        eff.bandwidth = (x / (y - DEFAULTS.per_token_s).max(1e-6)).clamp(0.05, 1.0);
    }
    let mut compute: Vec<f64> = points
        .iter()
        .filter(|(p, h)| p.test.starts_with("pp") && class_of(&h.backend) == class)
        .map(|(p, h)| p.tokens_per_s * 2.0 * p.params_b * 1e9 / (h.fp16_tflops * 1e12))
        .collect();
    compute.sort_by(|a, b| a.total_cmp(b));
    if !compute.is_empty() {
        eff.compute = compute[compute.len() / 2];
    }
    eff
}

/// Efficiencies for a backend, fitted once on all calibration points.
pub fn efficiency(backend: &str) -> Efficiency {
    static FITS: std::sync::OnceLock<[(&'static str, Efficiency); 3]> = std::sync::OnceLock::new();
    let fits = FITS.get_or_init(|| {
        let points = calibration_points();
        let hw: Vec<HardwareProfile> = points
            .iter()
            .map(|p| {
                super::hardware::resolve(&p.hardware).expect("calibration hardware is embedded")
            })
            .collect();
        let pairs: Vec<_> = points.iter().zip(hw.iter()).collect();
        ["gpu", "metal", "cpu"].map(|class| (class, fit(&pairs, class)))
    });
    let class = class_of(backend);
    fits.iter()
        .find(|(c, _)| *c == class)
        .map(|(_, e)| *e)
        .expect("every class is fitted")
}

/// Leave-one-out accuracy of the decode and prefill models: (point, predicted, measured).
pub fn held_out_report() -> Vec<(CalibrationPoint, f64)> {
    let points = calibration_points();
    let hw: Vec<HardwareProfile> = points
        .iter()
        .map(|p| super::hardware::resolve(&p.hardware).expect("embedded"))
        .collect();
    let mut out = Vec::new();
    for i in 0..points.len() {
        let rest: Vec<_> = points
            .iter()
            .zip(hw.iter())
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, x)| x)
            .collect();
        let (p, h) = (&points[i], &hw[i]);
        let e = fit(&rest, class_of(&h.backend));
        let predicted = if p.test.starts_with("tg") {
            1.0 / (p.size_gib * GIB / (e.bandwidth * h.memory_bandwidth_gbs * 1e9) + e.per_token_s)
        } else {
            e.compute * h.fp16_tflops * 1e12 / (2.0 * p.params_b * 1e9)
        };
        out.push((p.clone(), predicted));
    }
    out
}

/// What the deployment must serve, and the prices around it.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub ctx: u64,
    pub batch: u64,
    /// System memory for what is not on the devices (token embeddings, layers not offloaded),
    /// GiB (RAM "GB" are binary too).
    pub host_memory_gb: f64,
    /// System memory bandwidth for layers not offloaded, GB/s.
    pub host_bandwidth_gbs: f64,
    pub electricity_usd_per_kwh: f64,
    pub amortize_years: f64,
}

/// How a model is split across devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Pipeline (llama.cpp's default `-sm layer`): consecutive layers per device.
    Layer,
    /// Tensor (`-sm row`): every layer cut across the devices.
    Row,
}

/// One way to run a model on a hardware profile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub devices: u64,
    pub split: Split,
    /// Layers on the devices (llama.cpp `-ngl`); the rest run from host memory on the CPU.
    pub gpu_layers: u64,
    pub kv: KvType,
    /// Of the layers on the devices, the first this many keep their routed experts in host
    /// memory, where the CPU runs them (llama.cpp `--n-cpu-moe N`); attention, router and
    /// shared parts stay on the device. 0 for a dense model.
    pub cpu_moe_layers: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    pub weights_bytes: u64,
    pub kv_bytes: f64,
    pub overhead_bytes: f64,
    /// On all devices together.
    pub device_bytes: f64,
    /// On the fullest device.
    pub device_bytes_max: f64,
    pub host_bytes: f64,
    /// Per device.
    pub capacity_bytes: f64,
    pub host_capacity_bytes: f64,
    pub fits: bool,
    /// Free memory on the fullest device.
    pub headroom_bytes: f64,
    pub max_ctx: u64,
    pub decode_tokens_per_s: f64,
    pub batch_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
    pub usd_per_hour: f64,
    /// How the hourly price is made: rented (cloud) or owned (purchase over years plus power).
    pub cost_basis: String,
    pub usd_per_million_tokens: f64,
    pub usd_per_million_prefill_tokens: f64,
    pub monthly_usd: f64,
}

/// The share of a layer's routed-expert bytes one decoding step reads for `seqs` sequences:
/// each token uses k of n experts, so a step touches the experts any of them uses, 1 - (1 -
/// k/n)^seqs of them on average under uniform routing (all of them for a dense model, which
/// has no expert bytes).
fn experts_read(m: &ModelSpec, seqs: u64) -> f64 {
    let h = &m.hparams;
    if h.n_expert == 0 {
        return 1.0;
    }
    let used = h.n_expert_used.min(h.n_expert) as f64 / h.n_expert as f64;
    1.0 - (1.0 - used).powf(seqs.max(1) as f64)
}

/// The weight bytes of layer `il` one generated token reads: of a mixture's experts, only
/// those it is routed to.
pub fn layer_read_bytes(fp: &Footprint, m: &ModelSpec, il: usize) -> f64 {
    let experts = fp.layer_experts[il] as f64;
    fp.layers[il] as f64 - experts + experts * experts_read(m, 1)
}

/// The weight bytes one generated token reads: every layer's (its experts only) and the
/// output head; of the token embeddings, one row.
pub fn weights_read_per_token(fp: &Footprint, m: &ModelSpec) -> f64 {
    (0..fp.layers.len())
        .map(|il| layer_read_bytes(fp, m, il))
        .sum::<f64>()
        + fp.output as f64
}

/// Memory per device and in the host for `seqs` sequences of `ctx` tokens.
struct Placement {
    per_device: Vec<f64>,
    host: f64,
    /// Weight and KV bytes read per generated token on the devices and in the host.
    device_read: f64,
    host_read: f64,
    /// Weight bytes of the layers (and head) in host memory, which a GPU backend copies over
    /// for each prompt batch: all of a mixture's experts, since a batch uses them all.
    host_weights: f64,
    /// Of those, the routed experts' bytes (of layers left in host memory and of the first
    /// `cpu_moe_layers`).
    host_experts: f64,
}

/// Where weights and cache live for `seqs` sequences of `ctx` tokens, and what a token
/// generated at `depth` reads.
fn place(
    fp: &Footprint,
    m: &ModelSpec,
    hw: &HardwareProfile,
    c: &Config,
    (ctx, seqs): (u64, u64),
    depth: f64,
) -> Placement {
    let kv_held = |il: usize| kv_layer_bytes(m, c.kv, il as u64, ctx, seqs, UBATCH);
    let kv_read = |il: usize| kv_cells_read(m, il as u64, depth) * kv_cell_bytes(m, c.kv);
    let weights_read = |il: usize| layer_read_bytes(fp, m, il);
    let overhead = overhead_bytes(m, hw, UBATCH);
    let n_layer = fp.layers.len();
    // CPUs and unified-memory machines hold everything in the one memory the profile describes.
    if hw.kind != "gpu" {
        let w = fp.file as f64;
        return Placement {
            per_device: vec![w + (0..n_layer).map(kv_held).sum::<f64>() + overhead],
            host: 0.0,
            device_read: weights_read_per_token(fp, m) + (0..n_layer).map(kv_read).sum::<f64>(),
            host_read: 0.0,
            host_weights: 0.0,
            host_experts: 0.0,
        };
    }
    let n = c.devices.max(1) as usize;
    let on_gpu = (c.gpu_layers as usize).min(n_layer);
    let first_gpu = n_layer - on_gpu;
    let full = on_gpu == n_layer;
    let mut per_device = vec![overhead; n];
    let mut host = fp.token_embd as f64;
    let (mut device_read, mut host_read) = (0.0, 0.0);
    let (mut host_weights, mut host_experts) = (0.0, 0.0);
    for (i, &w) in fp.layers.iter().enumerate() {
        let w = w as f64;
        let bytes = w + kv_held(i);
        if i < first_gpu {
            host += bytes;
            host_read += weights_read(i) + kv_read(i);
            host_weights += w;
            host_experts += fp.layer_experts[i] as f64;
            continue;
        }
        let (bytes, read) = if (i as u64) < c.cpu_moe_layers {
            let experts = fp.layer_experts[i] as f64;
            let routed = experts * experts_read(m, 1);
            host += experts;
            host_weights += experts;
            host_experts += experts;
            host_read += routed;
            (bytes - experts, weights_read(i) - routed)
        } else {
            (bytes, weights_read(i))
        };
        device_read += read + kv_read(i);
        match c.split {
            Split::Row => per_device.iter_mut().for_each(|d| *d += bytes / n as f64),
            Split::Layer => per_device[(i - first_gpu) * n / on_gpu.max(1)] += bytes,
        }
    }
    let output = fp.output as f64;
    if full {
        device_read += output;
        match c.split {
            Split::Row => per_device.iter_mut().for_each(|d| *d += output / n as f64),
            Split::Layer => per_device[n - 1] += output,
        }
    } else {
        host += output;
        host_read += output;
        host_weights += output;
    }
    Placement {
        per_device,
        host,
        device_read,
        host_read,
        host_weights,
        host_experts,
    }
}

pub fn estimate(
    m: &ModelSpec,
    ft: FileType,
    hw: &HardwareProfile,
    s: &Scenario,
    c: &Config,
) -> Estimate {
    let fp = footprint(m, ft);
    estimate_with(&fp, m, hw, s, c)
}

/// `estimate` on a footprint already computed (the configuration search tries many configs).
pub fn estimate_with(
    fp: &Footprint,
    m: &ModelSpec,
    hw: &HardwareProfile,
    s: &Scenario,
    c: &Config,
) -> Estimate {
    let eff = efficiency(&hw.backend);
    let n = c.devices.max(1) as f64;
    // Decode reads the whole KV cache written so far (the window in sliding layers): at
    // mid-context on average.
    let depth = s.ctx as f64 / 2.0;
    let p = place(fp, m, hw, c, (s.ctx, s.batch), depth);
    let capacity = hw.memory_bytes();
    let host_capacity = if hw.kind == "gpu" {
        s.host_memory_gb * GIB
    } else {
        0.0
    };
    let fits_in = |p: &Placement| {
        p.per_device.iter().all(|&d| d <= capacity) && (hw.kind != "gpu" || p.host <= host_capacity)
    };
    let device_max = p.per_device.iter().copied().fold(0.0, f64::max);
    let fits = fits_in(&p);
    // The longest context that still fits: memory grows with the context in steps of 256
    // cells, up to the window in sliding layers, so it is searched for rather than divided.
    let fits_at = |ctx: u64| fits_in(&place(fp, m, hw, c, (ctx, s.batch), 0.0));
    let (mut lo, mut hi) = (0u64, m.hparams.context_length.max(1));
    if fits_at(hi) {
        lo = hi;
    } else if fits_at(1) {
        lo = 1;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits_at(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    let max_ctx = lo;

    let bw = hw.memory_bandwidth_gbs * 1e9 * eff.bandwidth;
    let host_bw = s.host_bandwidth_gbs * 1e9 * DEFAULTS.bandwidth;
    let row = c.split == Split::Row && n > 1.0;
    // Tensor split: bandwidth adds up, each layer pays two all-reduces over the link. Layer
    // split: the devices work one after another on a single sequence.
    let comm = if row {
        2.0 * m.hparams.n_layer as f64 * m.hparams.n_embd as f64 * 2.0 * (n - 1.0)
            / n
            / (hw.interconnect_gbs.max(1.0) * 1e9)
            + 2.0 * m.hparams.n_layer as f64 * 10e-6
    } else {
        0.0
    };
    let device_bw = if row { bw * n } else { bw };
    let step_s = p.device_read / device_bw + comm + p.host_read / host_bw + eff.per_token_s;
    let decode = 1.0 / step_s;
    // Batched decode: weights are read once per step for all sequences (of a mixture's
    // experts, those any of them is routed to); compute caps it. A token computes with the
    // experts it uses only.
    let params = parameter_count(m) as f64 - fp.expert_params as f64 * (1.0 - experts_read(m, 1));
    let cells_read: f64 = (0..m.hparams.n_layer)
        .map(|il| kv_cells_read(m, il, depth))
        .sum();
    let kv_extra = cells_read * kv_cell_bytes(m, c.kv) * (s.batch as f64 - 1.0);
    let all_experts = fp.layer_experts.iter().sum::<u64>() as f64;
    let experts_extra = all_experts * (experts_read(m, s.batch) - experts_read(m, 1));
    let experts_host = if all_experts > 0.0 {
        p.host_experts / all_experts
    } else {
        0.0
    };
    let gpu_frac = c.gpu_layers.min(m.hparams.n_layer) as f64 / m.hparams.n_layer.max(1) as f64;
    let batch_step = step_s
        + kv_extra * gpu_frac / device_bw
        + kv_extra * (1.0 - gpu_frac) / host_bw
        + experts_extra * (1.0 - experts_host) / device_bw
        + experts_extra * experts_host / host_bw;
    // A prompt batch does not pipeline across layer-split devices (pp512 on 1, 4 or 8 GPUs
    // measures about the same): one device's compute, or all of them under a row split.
    let compute_rate = eff.compute * hw.fp16_tflops * 1e12 * if row { n } else { 1.0 };
    let batch_tps = (s.batch as f64 / batch_step).min(compute_rate / (2.0 * params));
    // With layers in host memory, llama.cpp's GPU backends copy those weights over the link for
    // every prompt batch (a micro-batch of UBATCH tokens) and compute there.
    let ubatch = UBATCH as f64;
    let upload_s = if hw.kind == "gpu" {
        p.host_weights / (hw.interconnect_gbs.max(1.0) * 1e9)
    } else {
        0.0
    };
    let prefill = ubatch / (ubatch * 2.0 * params / compute_rate + upload_s);

    let (hourly, cost_basis) = match (hw.cloud_usd_per_hour, hw.purchase_usd) {
        (Some(c), _) => (c * n, format!("rented: ${c}/h per device")),
        (None, Some(p)) => (
            p * n / (s.amortize_years * 8760.0)
                + hw.power_w * n / 1000.0 * s.electricity_usd_per_kwh,
            format!(
                "owned: ${p} per device over {} years plus {} W at ${}/kWh",
                s.amortize_years, hw.power_w, s.electricity_usd_per_kwh
            ),
        ),
        (None, None) => (f64::NAN, "no price in the profile".to_string()),
    };
    let kv_bytes = kv_bytes(m, c.kv, s.ctx, s.batch);
    let overhead = overhead_bytes(m, hw, UBATCH) * if hw.kind == "gpu" { n } else { 1.0 };
    Estimate {
        weights_bytes: fp.file,
        kv_bytes,
        overhead_bytes: overhead,
        device_bytes: p.per_device.iter().sum(),
        device_bytes_max: device_max,
        host_bytes: p.host,
        capacity_bytes: capacity,
        host_capacity_bytes: host_capacity,
        fits,
        headroom_bytes: capacity - device_max,
        max_ctx,
        // Per sequence at the batch asked for (at batch 1, the single-stream speed).
        decode_tokens_per_s: if s.batch > 1 {
            batch_tps / s.batch as f64
        } else {
            decode
        },
        batch_tokens_per_s: batch_tps,
        prefill_tokens_per_s: prefill,
        usd_per_hour: hourly,
        cost_basis,
        usd_per_million_tokens: hourly / (batch_tps * 3600.0) * 1e6,
        usd_per_million_prefill_tokens: hourly / (prefill * 3600.0) * 1e6,
        monthly_usd: hourly * 730.0,
    }
}
