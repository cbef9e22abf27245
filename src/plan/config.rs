//! Automatic configurations: for a model, file type and hardware profile, the cheapest way to
//! run it (lowest $ per million generated tokens) among 1..max devices with the model split
//! across them, and one device with as many layers as fit and the rest in host memory; each
//! with the first KV cache type (f16, q8_0, q4_0) that holds the context. Pinned choices
//! (`--devices`, `--gpu-layers`, `--kv-type`) narrow the search.

use super::catalog::ModelSpec;
use super::estimate::{
    estimate_with, footprint, Config, Estimate, Footprint, KvType, Scenario, Split, GIB,
};
use super::hardware::HardwareProfile;
use crate::quant::rules::FileType;

/// The user's pins and limits.
#[derive(Clone, Debug)]
pub struct Search {
    pub devices: Option<u64>,
    pub max_devices: u64,
    pub split: Split,
    pub gpu_layers: Option<u64>,
    /// Layers whose experts stay in host memory (`--n-cpu-moe`), pinned.
    pub cpu_moe: Option<u64>,
    pub kv: Option<KvType>,
    /// Configurations slower than this do not count as running the model.
    pub min_tps: Option<f64>,
    /// The context every configuration must hold (at least `Scenario::ctx`).
    pub min_ctx: u64,
}

#[derive(Clone, Debug)]
pub struct Choice {
    pub config: Config,
    pub estimate: Estimate,
    /// Why nothing runs, when nothing does (`config` is then the closest try).
    pub shortfall: Option<String>,
}

/// One line describing a configuration, e.g. `2x rtx-4090, layer split` or
/// `1x rtx-4090, 46/80 layers on GPU`.
pub fn describe(c: &Config, hw: &HardwareProfile, n_layer: u64) -> String {
    let mut s = format!("{}x {}", c.devices, hw.id);
    if c.devices > 1 {
        s.push_str(match c.split {
            Split::Layer => ", layer split",
            Split::Row => ", row split",
        });
    }
    if hw.kind == "gpu" && c.gpu_layers < n_layer {
        s.push_str(&format!(", {}/{n_layer} layers on GPU", c.gpu_layers));
    }
    if hw.kind == "gpu" && c.cpu_moe_layers > 0 {
        s.push_str(&format!(
            ", experts of {}/{n_layer} layers on CPU",
            c.cpu_moe_layers.min(n_layer)
        ));
    }
    if c.kv != KvType::F16 {
        s.push_str(&format!(", KV {}", c.kv.name()));
    }
    s
}

fn runs(e: &Estimate, search: &Search) -> bool {
    e.fits
        && e.max_ctx >= search.min_ctx
        && search.min_tps.is_none_or(|t| e.decode_tokens_per_s >= t)
}

struct Tried {
    config: Config,
    estimate: Estimate,
}

impl Tried {
    fn of(fp: &Footprint, m: &ModelSpec, hw: &HardwareProfile, s: &Scenario, c: Config) -> Tried {
        Tried {
            estimate: estimate_with(fp, m, hw, s, &c),
            config: c,
        }
    }

    /// Whether its device memory fits, context and speed aside.
    fn fits_device(&self, hw: &HardwareProfile) -> bool {
        self.estimate.device_bytes_max <= hw.memory_bytes()
    }
}

/// One device with `gpu_layers` layers on it and the routed experts of the first
/// `cpu_moe_layers` in host memory.
fn one_device(search: &Search, kv: KvType, gpu_layers: u64, cpu_moe_layers: u64) -> Config {
    Config {
        devices: 1,
        split: search.split,
        gpu_layers,
        kv,
        cpu_moe_layers,
    }
}

/// The cheapest configuration that runs `m` as `ft` on `hw`, or the closest one with the reason.
pub fn choose(
    m: &ModelSpec,
    ft: FileType,
    hw: &HardwareProfile,
    s: &Scenario,
    search: &Search,
) -> Choice {
    let fp = footprint(m, ft);
    let gpu = hw.kind == "gpu";
    let kvs: Vec<KvType> = search.kv.map_or(KvType::ALL.to_vec(), |k| vec![k]);
    let eval = |c: Config| Tried::of(&fp, m, hw, s, c);
    // A dense model has no experts to keep in host memory, whatever was pinned.
    let moe = m.hparams.n_expert > 0 && gpu;
    let pinned_moe = if moe {
        search.cpu_moe.unwrap_or(0).min(m.hparams.n_layer)
    } else {
        0
    };
    // The first KV type with which the configuration runs; when none does, the f16 try (the
    // one to report: a smaller cache would not have been needed had it fit).
    let with_kv = |devices: u64, gpu_layers: u64, cpu_moe_layers: u64| -> Tried {
        let mut first = None;
        for &kv in &kvs {
            let t = eval(Config {
                devices,
                split: search.split,
                gpu_layers,
                kv,
                cpu_moe_layers,
            });
            if runs(&t.estimate, search) {
                return t;
            }
            first.get_or_insert(t);
        }
        first.expect("at least one KV type")
    };
    let mut tried: Vec<Tried> = Vec::new();
    if let Some(layers) = search.gpu_layers {
        tried.push(with_kv(
            search.devices.unwrap_or(1),
            layers.min(m.hparams.n_layer),
            pinned_moe,
        ));
    } else if search.cpu_moe.is_some() {
        tried.push(with_kv(
            search.devices.unwrap_or(1),
            m.hparams.n_layer,
            pinned_moe,
        ));
    } else {
        // More devices than layers leaves devices idle under a layer split.
        let most = search.max_devices.clamp(1, m.hparams.n_layer.max(1));
        let counts: Vec<u64> = match (search.devices, gpu) {
            (Some(d), _) => vec![d],
            (None, true) => (1..=most).collect(),
            (None, false) => vec![1],
        };
        for n in counts {
            let t = with_kv(n, m.hparams.n_layer, 0);
            let ran = runs(&t.estimate, search);
            tried.push(t);
            // Under a layer split more devices only cost more once one count runs.
            if ran && search.split == Split::Layer {
                break;
            }
        }
        let one_device = search.devices.is_none_or(|d| d == 1);
        if gpu && one_device && !runs(&tried[0].estimate, search) {
            // The cache type that holds the context (f16 unless pinned); a smaller cache only
            // to squeeze in layers would trade quality the plan does not measure.
            if let Some(t) = most_layers(&fp, m, hw, s, search, kvs[0]) {
                tried.push(t);
            }
            // A mixture: every layer on the device but as few layers' experts in host memory
            // as let the rest fit (llama.cpp's `--n-cpu-moe`), which keeps attention on the
            // device where partial offload would not.
            if moe {
                if let Some(t) = fewest_cpu_moe(&fp, m, hw, s, search, kvs[0]) {
                    tried.push(t);
                }
            }
        }
    }
    let best = tried
        .iter()
        .filter(|t| runs(&t.estimate, search))
        .min_by(|a, b| {
            a.estimate
                .usd_per_million_tokens
                .total_cmp(&b.estimate.usd_per_million_tokens)
                .then(a.config.devices.cmp(&b.config.devices))
                .then(b.config.gpu_layers.cmp(&a.config.gpu_layers))
                .then(a.config.cpu_moe_layers.cmp(&b.config.cpu_moe_layers))
        });
    if let Some(t) = best {
        return Choice {
            config: t.config,
            estimate: t.estimate.clone(),
            shortfall: None,
        };
    }
    // Nothing runs: report the cheapest that fits in memory (too slow or too short a context),
    // else the one with the most memory, and what it lacks.
    let closest = tried
        .iter()
        .filter(|t| t.estimate.fits)
        .min_by(|a, b| {
            a.estimate
                .usd_per_million_tokens
                .total_cmp(&b.estimate.usd_per_million_tokens)
        })
        .or_else(|| tried.iter().max_by_key(|t| t.config.devices))
        .expect("at least one configuration tried");
    Choice {
        config: closest.config,
        estimate: closest.estimate.clone(),
        shortfall: Some(shortfall(&closest.estimate, &closest.config, m, hw, search)),
    }
}

/// One device with as many layers as fit (at least one), the rest in host memory.
fn most_layers(
    fp: &Footprint,
    m: &ModelSpec,
    hw: &HardwareProfile,
    s: &Scenario,
    search: &Search,
    kv: KvType,
) -> Option<Tried> {
    let at = |layers: u64| Tried::of(fp, m, hw, s, one_device(search, kv, layers, 0));
    // Device memory grows with the layers on it, so the layers that fit are a prefix.
    let (mut lo, mut hi) = (0u64, m.hparams.n_layer.saturating_sub(1));
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if at(mid).fits_device(hw) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    (lo >= 1).then(|| at(lo))
}

/// One device holding every layer, with the experts of the fewest first layers that make it
/// fit in host memory; None when even all of them there leave too little room.
fn fewest_cpu_moe(
    fp: &Footprint,
    m: &ModelSpec,
    hw: &HardwareProfile,
    s: &Scenario,
    search: &Search,
    kv: KvType,
) -> Option<Tried> {
    let n_layer = m.hparams.n_layer;
    let at = |cpu_moe: u64| Tried::of(fp, m, hw, s, one_device(search, kv, n_layer, cpu_moe));
    // Device memory shrinks with each layer's experts moved out, so the counts that fit are
    // a suffix.
    if n_layer == 0 || !at(n_layer).fits_device(hw) {
        return None;
    }
    let (mut lo, mut hi) = (1u64, n_layer);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if at(mid).fits_device(hw) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(at(lo))
}

fn shortfall(
    e: &Estimate,
    c: &Config,
    m: &ModelSpec,
    hw: &HardwareProfile,
    search: &Search,
) -> String {
    let gib = |b: f64| b / GIB;
    if e.device_bytes_max > e.capacity_bytes {
        return format!(
            "needs {:.1} GiB on a device with {} ({:.1} GiB each){}",
            gib(e.device_bytes_max),
            describe(c, hw, m.hparams.n_layer),
            gib(e.capacity_bytes),
            if search.devices.is_none() && search.gpu_layers.is_none() {
                format!(" even at --max-devices {}", search.max_devices)
            } else {
                String::new()
            }
        );
    }
    if e.host_bytes > e.host_capacity_bytes && hw.kind == "gpu" {
        return format!(
            "needs {:.1} GiB of host memory with {} (--host-memory {:.0})",
            gib(e.host_bytes),
            describe(c, hw, m.hparams.n_layer),
            gib(e.host_capacity_bytes)
        );
    }
    if m.hparams.context_length < search.min_ctx {
        return format!(
            "the model was trained for a context of {} tokens, {} asked for",
            m.hparams.context_length, search.min_ctx
        );
    }
    if e.max_ctx < search.min_ctx {
        return format!(
            "holds a context of {} tokens at most with {}, {} asked for",
            e.max_ctx,
            describe(c, hw, m.hparams.n_layer),
            search.min_ctx
        );
    }
    format!(
        "decodes {:.1} tokens/s at best, --min-tps {}",
        e.decode_tokens_per_s,
        search.min_tps.unwrap_or(0.0)
    )
}
