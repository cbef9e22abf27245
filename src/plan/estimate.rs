//! The estimator: memory (weights from the converter's own per-tensor rules, KV cache, compute
//! buffers), speed (decode from bytes read per token against bandwidth, prefill from FLOPs
//! against compute, both with efficiencies fitted to published llama-bench results) and cost.

use serde::{Deserialize, Serialize};

use super::catalog::{is_70b, parameter_count, tensors, ModelSpec};
use super::hardware::HardwareProfile;
use crate::quant::rules::{tensor_type, FileType, ModelFacts, RuleOptions};

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// KV cache element type (llama.cpp `--cache-type-k/v`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
    pub fn bytes_per_element(self) -> f64 {
        match self {
            KvType::F16 => 2.0,
            KvType::Q8_0 => 34.0 / 32.0,
            KvType::Q4_0 => 18.0 / 32.0,
        }
    }
}

/// Exact tensor bytes of the GGUF file the converter writes for this model and file type.
pub fn weight_bytes(m: &ModelSpec, ft: FileType) -> u64 {
    let list = tensors(m);
    let facts = ModelFacts {
        n_layer: m.n_layer as u32,
        n_head: m.n_head as u32,
        n_head_kv: m.n_head_kv as u32,
        is_70b: is_70b(m),
        has_output: list.iter().any(|(n, _)| n == "output.weight"),
    };
    let opts = RuleOptions::default();
    list.iter()
        .map(|(name, dims)| {
            let ty = tensor_type(ft, &facts, &opts, name, dims);
            let info = ty.info();
            dims.iter().product::<u64>() / info.block_elems as u64 * info.block_bytes as u64
        })
        .sum()
}

/// KV cache bytes per token of context (K and V, every layer).
pub fn kv_bytes_per_token(m: &ModelSpec, kv: KvType) -> f64 {
    2.0 * m.n_layer as f64 * (m.n_head_kv * m.head_dim) as f64 * kv.bytes_per_element()
}

/// Compute buffers and runtime overhead, a documented approximation of llama.cpp's allocations:
/// logits (vocab x ubatch f32), activations (~(4 x n_embd + 2 x n_ff) x ubatch f32) and a fixed
/// runtime/driver reserve (CUDA/ROCm context 400 MiB, Metal 200 MiB, CPU 50 MiB).
pub fn overhead_bytes(m: &ModelSpec, hw: &HardwareProfile, ubatch: u64) -> f64 {
    let compute =
        4.0 * ubatch as f64 * (m.vocab as f64 + 4.0 * m.n_embd as f64 + 2.0 * m.n_ff as f64);
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

/// Inputs of one estimate.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub ctx: u64,
    pub batch: u64,
    pub kv: KvType,
    pub devices: u64,
    /// Split across devices: "layer" (pipeline, llama.cpp's default) or "row" (tensor).
    pub split: String,
    /// Layers on the accelerator (None: all); the rest run from system memory on the CPU.
    pub gpu_layers: Option<u64>,
    pub host_bandwidth_gbs: f64,
    pub electricity_usd_per_kwh: f64,
    pub amortize_years: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    pub weights_bytes: u64,
    pub kv_bytes: f64,
    pub overhead_bytes: f64,
    pub total_bytes: f64,
    pub capacity_bytes: f64,
    pub fits: bool,
    pub max_ctx: u64,
    pub decode_tokens_per_s: f64,
    pub batch_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
    pub usd_per_hour: f64,
    pub usd_per_million_tokens: f64,
    pub usd_per_million_prefill_tokens: f64,
    pub monthly_usd: f64,
}

pub fn estimate(m: &ModelSpec, ft: FileType, hw: &HardwareProfile, s: &Scenario) -> Estimate {
    let eff = efficiency(&hw.backend);
    let weights = weight_bytes(m, ft);
    let kv_per_token = kv_bytes_per_token(m, s.kv);
    let kv = kv_per_token * (s.ctx * s.batch) as f64;
    let n = s.devices.max(1) as f64;
    let overhead = overhead_bytes(m, hw, 512) * n;
    // Layers kept off the accelerator live in host memory (partial offload, like -ngl).
    let on_gpu_frac = match s.gpu_layers {
        Some(l) if hw.kind != "cpu" => (l.min(m.n_layer) as f64 / m.n_layer as f64).clamp(0.0, 1.0),
        _ => 1.0,
    };
    let device_bytes = (weights as f64 + kv) * on_gpu_frac + overhead;
    let capacity = hw.memory_gb * 1e9 * n;
    let fits = device_bytes <= capacity;
    let free_for_kv = capacity - weights as f64 * on_gpu_frac - overhead;
    let max_ctx = if free_for_kv > 0.0 {
        (free_for_kv / (kv_per_token * on_gpu_frac.max(1e-9) * s.batch as f64))
            .floor()
            .min(m.context as f64) as u64
    } else {
        0
    };

    // Decode: every weight and the KV read so far (at mid-context) per token.
    let bw = hw.memory_bandwidth_gbs * 1e9 * eff.bandwidth;
    let kv_read = kv_per_token * (s.ctx as f64 / 2.0);
    let gpu_bytes = (weights as f64 + kv_read) * on_gpu_frac;
    let host_bytes = (weights as f64 + kv_read) * (1.0 - on_gpu_frac);
    let mut step_s = if s.split == "row" && n > 1.0 {
        // Tensor split: bandwidth adds up, each layer pays two all-reduces over the link.
        let comm = 2.0 * m.n_layer as f64 * m.n_embd as f64 * 2.0 * (n - 1.0)
            / n
            / (hw.interconnect_gbs.max(1.0) * 1e9)
            + 2.0 * m.n_layer as f64 * 10e-6;
        gpu_bytes / (bw * n) + comm
    } else {
        // Layer split: devices work one after another on a single sequence.
        gpu_bytes / bw
    };
    step_s += host_bytes / (s.host_bandwidth_gbs * 1e9 * DEFAULTS.bandwidth) + eff.per_token_s;
    let decode = 1.0 / step_s;
    // Batched decode: weights are read once per step for all sequences; compute caps it.
    let params = parameter_count(m) as f64;
    let batch_step = (gpu_bytes + kv_read * on_gpu_frac * (s.batch as f64 - 1.0))
        / (bw * if s.split == "row" { n } else { 1.0 })
        + host_bytes / (s.host_bandwidth_gbs * 1e9 * DEFAULTS.bandwidth)
        + eff.per_token_s;
    let compute_rate = eff.compute * hw.fp16_tflops * 1e12 * n;
    let batch_tps = (s.batch as f64 / batch_step).min(compute_rate / (2.0 * params));
    let prefill = compute_rate / (2.0 * params) / (1.0 + (1.0 - on_gpu_frac) * 10.0);

    let hourly = match (hw.cloud_usd_per_hour, hw.purchase_usd) {
        (Some(c), _) => c * n,
        (None, Some(p)) => {
            p * n / (s.amortize_years * 8760.0)
                + hw.power_w * n / 1000.0 * s.electricity_usd_per_kwh
        }
        (None, None) => f64::NAN,
    };
    Estimate {
        weights_bytes: weights,
        kv_bytes: kv,
        overhead_bytes: overhead,
        total_bytes: weights as f64 + kv + overhead,
        capacity_bytes: capacity,
        fits,
        max_ctx,
        decode_tokens_per_s: decode,
        batch_tokens_per_s: batch_tps,
        prefill_tokens_per_s: prefill,
        usd_per_hour: hourly,
        usd_per_million_tokens: hourly / (batch_tps * 3600.0) * 1e6,
        usd_per_million_prefill_tokens: hourly / (prefill * 3600.0) * 1e6,
        monthly_usd: hourly * 730.0,
    }
}
