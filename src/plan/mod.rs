//! Size and choose: for each (model, file type, hardware) the cheapest configuration that runs
//! it, its memory on the devices and in the host, speed, cost, expected perplexity on the
//! family's absolute scale and licence; the rows that pass the budget filters, and a
//! recommendation across model sizes.

pub mod catalog;
pub mod config;
pub mod estimate;
pub mod hardware;
pub mod license;
pub mod quality;
pub mod recommend;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::quant::rules::FileType;
use catalog::{parameter_count, ModelSpec};
use config::{choose, describe, Search};
use estimate::{KvType, Scenario, Split};
use hardware::HardwareProfile;
use quality::measured::{Measured, MeasuredTask};
use quality::{expected, f16_base, published, relative_loss_pct, Basis, Quality};

/// The model's published MMLU, else its stand-in's, labelled.
fn mmlu_of(m: &ModelSpec) -> (Option<f64>, Option<String>) {
    if let Some(b) = &m.mmlu {
        return (Some(b.score), Some(b.source.clone()));
    }
    let proxy = m.quality_proxy.as_deref().and_then(catalog::by_id);
    match proxy.and_then(|p| Some((p, p.mmlu.as_ref()?))) {
        Some((p, b)) => (
            Some(b.score),
            Some(format!(
                "{} (stand-in: {}'s; {} has none published)",
                b.source, p.name, m.name
            )),
        ),
        None => (None, None),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PlanRow {
    pub model: String,
    pub model_id: String,
    pub quant: String,
    pub hardware: String,
    /// The configuration in one line, e.g. `2x rtx-4090, layer split`.
    pub config: String,
    pub devices: u64,
    pub split: Split,
    pub gpu_layers: u64,
    /// Layers whose routed experts stay in host memory (llama.cpp `--n-cpu-moe`).
    pub cpu_moe_layers: u64,
    pub n_layer: u64,
    pub kv_type: KvType,
    pub ctx: u64,
    pub batch: u64,
    pub parameters: u64,
    pub bits_per_weight: f64,
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    pub overhead_bytes: u64,
    /// On all devices together.
    pub device_bytes: u64,
    /// In system memory (token embeddings, layers not offloaded).
    pub host_bytes: u64,
    pub total_bytes: u64,
    /// Memory of all the configuration's devices.
    pub capacity_bytes: u64,
    /// The configuration runs: it fits the devices and the host, holds the context and meets
    /// --min-tps.
    pub fits: bool,
    /// Free memory on the fullest device.
    pub headroom_bytes: i64,
    pub max_ctx: u64,
    pub decode_tokens_per_s: f64,
    pub batch_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
    pub usd_per_hour: f64,
    pub cost_basis: String,
    pub usd_per_million_tokens: f64,
    pub usd_per_million_prefill_tokens: f64,
    pub monthly_usd: f64,
    /// Expected perplexity on `ppl_scale` (lower is better).
    pub ppl: Option<f64>,
    pub ppl_basis: Option<Basis>,
    pub ppl_scale: Option<String>,
    /// Perplexity increase over the same model's F16, percent.
    pub quality_delta_pct: Option<f64>,
    pub kld: Option<f64>,
    pub quality_source: String,
    /// MMLU of the unquantized model as its authors report it (compares across tokenizers).
    pub mmlu: Option<f64>,
    pub mmlu_source: Option<String>,
    /// Measured accuracy (fraction) on the plan's task set, `quantfit eval --task`.
    pub task_acc: Option<f64>,
    pub task_acc_err: Option<f64>,
    /// The task set: `FILE (N tasks, sha256 PREFIX)`.
    pub task: Option<String>,
    /// The results line the accuracy comes from.
    pub task_source: Option<String>,
    pub license: String,
    pub license_terms: String,
    pub license_architecture: String,
    pub license_weights: String,
    pub license_data: String,
    pub license_source: String,
    /// Why no configuration runs the model, when none does.
    pub shortfall: Option<String>,
    pub recommended: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub max_memory_gb: Option<f64>,
    pub max_usd_per_mtok: Option<f64>,
}

pub struct Request<'a> {
    pub models: &'a [ModelSpec],
    pub quants: &'a [FileType],
    pub hardware: &'a [HardwareProfile],
    pub scenario: Scenario,
    pub search: Search,
    pub filters: Filters,
    pub measured: &'a [Measured],
    /// Measured accuracies on one task set (`quality::tasks::select`).
    pub tasks: &'a [MeasuredTask],
    pub rank: Rank,
    /// Quality of files made with an importance matrix.
    pub imatrix: bool,
}

/// What the recommendation ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rank {
    /// Expected perplexity on one scale (across scales: MMLU).
    Perplexity,
    /// Measured accuracy on the user's task set; rows without one are not ranked.
    Task,
}

pub struct Plan {
    pub rows: Vec<PlanRow>,
    /// The recommendation sentence and the recommended row's index.
    pub recommendation: Option<(String, usize)>,
    /// When no row meets every constraint: what came closest, and why.
    pub unmet: Option<String>,
}

/// A results line names model `m` (by catalog id or name) and type `q`.
fn names_row<'a>(
    m: &ModelSpec,
    q: FileType,
    mut names: impl Iterator<Item = &'a String>,
    quant: &str,
) -> bool {
    names.any(|n| *n == m.id || *n == m.name) && FileType::from_name(quant) == Some(q)
}

fn measured_line<'a>(m: &ModelSpec, q: FileType, measured: &'a [Measured]) -> Option<&'a Measured> {
    measured
        .iter()
        .rev()
        .find(|r| names_row(m, q, r.names(), &r.quant))
}

fn task_line<'a>(
    m: &ModelSpec,
    q: FileType,
    tasks: &'a [MeasuredTask],
) -> Option<&'a MeasuredTask> {
    tasks
        .iter()
        .rev()
        .find(|r| names_row(m, q, r.names(), &r.quant))
}

/// The quality of every (model, type): a measured result first, else published or estimated.
///
/// A measured PPL ratio carries over to the family's published scale. An absolute measured
/// PPL is on the scale of its own tokens: it replaces the family's published scale only when
/// every planned row of that family was measured on those same tokens; otherwise the row keeps
/// its published or estimated figure and the measurement is named beside it, so that one
/// family is never split across two scales.
fn qualities(
    models: &[ModelSpec],
    quants: &[FileType],
    imatrix: bool,
    measured: &[Measured],
) -> Vec<Vec<Option<Quality>>> {
    let on_published_scale = |m: &ModelSpec| {
        let scale = m
            .scale
            .as_deref()
            .and_then(|s| published().scale_label(s))?;
        f16_base(m).map(|(b, basis, _)| (b, scale, basis))
    };
    // Per published scale: the one measured scale every row of that family was measured on.
    let mut replaced: Vec<(String, Option<String>)> = Vec::new();
    for m in models {
        let Some(id) = m.scale.clone() else { continue };
        let mut common: Option<Option<String>> = replaced
            .iter()
            .find(|(s, _)| *s == id)
            .map(|(_, c)| c.clone());
        for &q in quants {
            let own = measured_line(m, q, measured)
                .filter(|l| l.ratio.is_none())
                .map(|l| l.scale.clone());
            common = Some(match common {
                None => own,
                Some(c) if c == own => c,
                Some(_) => None,
            });
        }
        replaced.retain(|(s, _)| *s != id);
        replaced.push((id, common.flatten()));
    }
    models
        .iter()
        .map(|m| {
            let family_measured = m
                .scale
                .as_ref()
                .and_then(|id| replaced.iter().find(|(s, _)| s == id))
                .and_then(|(_, c)| c.clone());
            quants
                .iter()
                .map(|&q| {
                    let line = measured_line(m, q, measured);
                    let published_scale = on_published_scale(m);
                    match line {
                        Some(l)
                            if l.ratio.is_some()
                                || published_scale.is_none()
                                || family_measured.is_some() =>
                        {
                            l.quality(if family_measured.is_some() {
                                None
                            } else {
                                published_scale
                            })
                        }
                        Some(l) => expected(m, q, imatrix).map(|mut x| {
                            x.source.push_str(&format!(
                                "; also measured: PPL {:.4} on {} ({}), another scale, so not used",
                                l.ppl.unwrap_or(f64::NAN),
                                l.scale,
                                l.origin
                            ));
                            x
                        }),
                        None => expected(m, q, imatrix),
                    }
                })
                .collect()
        })
        .collect()
}

/// Every results line must be about a planned model and a known type: a line nobody planned
/// is a mistake the user should hear about, not a silent no-op. `what` says what the line
/// holds ("results", "task accuracy"), `file` the file it names, if any.
fn check_line<'a>(
    models: &[ModelSpec],
    origin: &str,
    what: &str,
    model: &str,
    mut names: impl Iterator<Item = &'a String>,
    file: Option<&str>,
    quant: &str,
) -> Result<()> {
    if !names.any(|n| models.iter().any(|m| *n == m.id || *n == m.name)) {
        let planned: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        bail!(
            "{origin}: {what} for model {model:?}{}, which is not among the planned models ({}); add it with --model (its folder, GGUF file or catalog id) or leave the line out",
            file.map(|f| format!(" (file {f})")).unwrap_or_default(),
            planned.join(", ")
        );
    }
    if FileType::from_name(quant).is_none() {
        bail!(
            "{origin}: unknown type {quant:?}; known: {}",
            FileType::names().join(", ")
        );
    }
    Ok(())
}

fn check_measured(
    models: &[ModelSpec],
    measured: &[Measured],
    tasks: &[MeasuredTask],
) -> Result<()> {
    for r in measured {
        let file = r.aliases.first().map(String::as_str);
        check_line(
            models,
            &r.origin,
            "results",
            &r.model,
            r.names(),
            file,
            &r.quant,
        )?;
    }
    for t in tasks {
        check_line(
            models,
            &t.origin,
            "task accuracy",
            &t.model,
            t.names(),
            None,
            &t.quant,
        )?;
    }
    Ok(())
}

pub fn plan(req: &Request) -> Result<Plan> {
    check_measured(req.models, req.measured, req.tasks)?;
    let s = &req.scenario;
    let mut rows = Vec::new();
    let quality = qualities(req.models, req.quants, req.imatrix, req.measured);
    for (mi, m) in req.models.iter().enumerate() {
        let params = parameter_count(m);
        let (mmlu, mmlu_source) = mmlu_of(m);
        for (qi, &q) in req.quants.iter().enumerate() {
            let quality = quality[mi][qi].clone();
            let relative = quality
                .as_ref()
                .and_then(|x| x.delta_pct)
                .or_else(|| relative_loss_pct(m, q, req.imatrix));
            let task = task_line(m, q, req.tasks);
            for hw in req.hardware {
                let choice = choose(m, q, hw, s, &req.search);
                let (c, e) = (&choice.config, &choice.estimate);
                let devices = if hw.kind == "gpu" { c.devices } else { 1 };
                rows.push(PlanRow {
                    model: m.name.clone(),
                    model_id: m.id.clone(),
                    quant: q.name().to_string(),
                    hardware: hw.id.clone(),
                    config: describe(c, hw, m.hparams.n_layer),
                    devices,
                    split: c.split,
                    gpu_layers: c.gpu_layers.min(m.hparams.n_layer),
                    cpu_moe_layers: c.cpu_moe_layers,
                    n_layer: m.hparams.n_layer,
                    kv_type: c.kv,
                    ctx: s.ctx,
                    batch: s.batch,
                    parameters: params,
                    bits_per_weight: e.weights_bytes as f64 * 8.0 / params as f64,
                    weights_bytes: e.weights_bytes,
                    kv_bytes: e.kv_bytes as u64,
                    overhead_bytes: e.overhead_bytes as u64,
                    device_bytes: e.device_bytes as u64,
                    host_bytes: e.host_bytes as u64,
                    total_bytes: (e.device_bytes + e.host_bytes) as u64,
                    capacity_bytes: (e.capacity_bytes * devices as f64) as u64,
                    fits: choice.shortfall.is_none(),
                    headroom_bytes: e.headroom_bytes as i64,
                    max_ctx: e.max_ctx,
                    decode_tokens_per_s: e.decode_tokens_per_s,
                    batch_tokens_per_s: e.batch_tokens_per_s,
                    prefill_tokens_per_s: e.prefill_tokens_per_s,
                    usd_per_hour: e.usd_per_hour,
                    cost_basis: e.cost_basis.clone(),
                    usd_per_million_tokens: e.usd_per_million_tokens,
                    usd_per_million_prefill_tokens: e.usd_per_million_prefill_tokens,
                    monthly_usd: e.monthly_usd,
                    ppl: quality.as_ref().map(|x| x.ppl),
                    ppl_basis: quality.as_ref().map(|x| x.basis),
                    ppl_scale: quality.as_ref().map(|x| x.scale.clone()),
                    quality_delta_pct: relative,
                    kld: quality.as_ref().and_then(|x| x.kld),
                    quality_source: quality
                        .as_ref()
                        .map(|x| match c.kv {
                            KvType::F16 => x.source.clone(),
                            kv => format!("{}; with a {} KV cache, whose own (small) loss is not in this figure", x.source, kv.name()),
                        })
                        .unwrap_or_else(|| match relative {
                            Some(_) => "no published or measured perplexity for this family (run quantfit eval and pass --results); its loss against its own F16 is estimated with the fitted families' mean offset".into(),
                            None => "no published, estimated or measured perplexity for this model (run quantfit eval and pass --results)".into(),
                        }),
                    mmlu,
                    mmlu_source: mmlu_source.clone(),
                    task_acc: task.map(|t| t.acc),
                    task_acc_err: task.map(|t| t.acc_err),
                    task: task.map(|t| t.label()),
                    task_source: task.map(|t| t.origin.clone()),
                    license: m.license.weights.clone(),
                    license_terms: m.license.weights_terms.clone(),
                    license_architecture: m.license.architecture.clone(),
                    license_weights: m.license.weights.clone(),
                    license_data: m.license.data.clone(),
                    license_source: m.license.source.clone(),
                    shortfall: choice.shortfall.clone(),
                    recommended: false,
                });
            }
        }
    }
    let all = rows.clone();
    let f = &req.filters;
    // The budget applies to every row: one over it is out whether it runs or not.
    rows.retain(|r| {
        f.max_memory_gb
            .is_none_or(|g| r.total_bytes as f64 <= g * estimate::GIB)
            && f.max_usd_per_mtok
                .is_none_or(|c| r.usd_per_million_tokens <= c || r.usd_per_million_tokens.is_nan())
    });
    let recommendation = match req.rank {
        Rank::Perplexity => recommend::recommend(&rows, &all, req.models),
        Rank::Task => recommend::by_task(&rows, &all, req.models),
    };
    if let Some((_, i)) = &recommendation {
        rows[*i].recommended = true;
    }
    let unmet = recommendation.is_none().then(|| {
        if req.rank == Rank::Task && rows.iter().any(|r| r.fits) {
            recommend::no_task_accuracy(&rows, req.tasks)
        } else {
            recommend::closest(&all, f, &req.search)
        }
    });
    Ok(Plan {
        rows,
        recommendation,
        unmet,
    })
}
