//! Size and choose: for each (model, file type, hardware) the memory, speed, cost and quality
//! loss, the rows that pass the budget filters, and a recommendation.

pub mod catalog;
pub mod estimate;
pub mod hardware;
pub mod quality;

use serde::Serialize;

use crate::quant::rules::FileType;
use catalog::ModelSpec;
use estimate::{estimate, Scenario};
use hardware::HardwareProfile;
use quality::{published, Measured};

#[derive(Clone, Debug, Serialize)]
pub struct PlanRow {
    pub model: String,
    pub model_id: String,
    pub quant: String,
    pub hardware: String,
    pub devices: u64,
    pub ctx: u64,
    pub batch: u64,
    pub parameters: u64,
    pub bits_per_weight: f64,
    pub weights_bytes: u64,
    pub kv_bytes: u64,
    pub overhead_bytes: u64,
    pub total_bytes: u64,
    pub capacity_bytes: u64,
    pub fits: bool,
    pub headroom_bytes: i64,
    pub max_ctx: u64,
    pub decode_tokens_per_s: f64,
    pub batch_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
    pub usd_per_hour: f64,
    pub usd_per_million_tokens: f64,
    pub usd_per_million_prefill_tokens: f64,
    pub monthly_usd: f64,
    pub quality_delta_pct: Option<f64>,
    pub kld: Option<f64>,
    pub quality_source: String,
    pub license: String,
    pub license_terms: String,
    pub recommended: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub max_memory_gb: Option<f64>,
    pub max_usd_per_mtok: Option<f64>,
    pub min_tps: Option<f64>,
}

pub struct Plan {
    pub rows: Vec<PlanRow>,
    pub recommendation: Option<String>,
}

pub fn plan(
    models: &[ModelSpec],
    quants: &[FileType],
    hardware: &[HardwareProfile],
    s: &Scenario,
    filters: &Filters,
    measured: &[Measured],
) -> Plan {
    let mut rows = Vec::new();
    for m in models {
        let params = catalog::parameter_count(m);
        for &q in quants {
            let quality = measured
                .iter()
                .find(|r| {
                    std::iter::once(&r.model)
                        .chain(&r.aliases)
                        .any(|n| *n == m.id || *n == m.name)
                        && FileType::from_name(&r.quant) == Some(q)
                })
                .map(|r| r.quality.clone())
                .or_else(|| published(&m.family, &m.name, q.name()));
            for hw in hardware {
                let e = estimate(m, q, hw, s);
                rows.push(PlanRow {
                    model: m.name.clone(),
                    model_id: m.id.clone(),
                    quant: q.name().to_string(),
                    hardware: hw.id.clone(),
                    devices: s.devices,
                    ctx: s.ctx,
                    batch: s.batch,
                    parameters: params,
                    bits_per_weight: e.weights_bytes as f64 * 8.0 / params as f64,
                    weights_bytes: e.weights_bytes,
                    kv_bytes: e.kv_bytes as u64,
                    overhead_bytes: e.overhead_bytes as u64,
                    total_bytes: e.total_bytes as u64,
                    capacity_bytes: e.capacity_bytes as u64,
                    fits: e.fits,
                    headroom_bytes: e.capacity_bytes as i64 - e.total_bytes as i64,
                    max_ctx: e.max_ctx,
                    decode_tokens_per_s: e.decode_tokens_per_s,
                    batch_tokens_per_s: e.batch_tokens_per_s,
                    prefill_tokens_per_s: e.prefill_tokens_per_s,
                    usd_per_hour: e.usd_per_hour,
                    usd_per_million_tokens: e.usd_per_million_tokens,
                    usd_per_million_prefill_tokens: e.usd_per_million_prefill_tokens,
                    monthly_usd: e.monthly_usd,
                    quality_delta_pct: quality.as_ref().map(|q| q.delta_pct),
                    kld: quality.as_ref().and_then(|q| q.kld),
                    quality_source: quality
                        .as_ref()
                        .map(|q| q.source.clone())
                        .unwrap_or_else(|| "no published or measured figure".into()),
                    license: m.license.name.clone(),
                    license_terms: m.license.summary.clone(),
                    recommended: false,
                });
            }
        }
    }
    rows.retain(|r| {
        filters
            .max_memory_gb
            .is_none_or(|g| r.total_bytes as f64 <= g * 1e9)
            && filters
                .max_usd_per_mtok
                .is_none_or(|c| r.usd_per_million_tokens <= c)
            && filters.min_tps.is_none_or(|t| r.decode_tokens_per_s >= t)
    });
    let recommendation = recommend(&mut rows);
    Plan {
        rows,
        recommendation,
    }
}

/// The best quality among rows that fit; ties (within 0.5% PPL) go to the cheaper, then faster.
fn recommend(rows: &mut [PlanRow]) -> Option<String> {
    let candidates: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].fits).collect();
    if candidates.is_empty() {
        return None;
    }
    let q = |r: &PlanRow| r.quality_delta_pct.unwrap_or(f64::INFINITY);
    let best_q = candidates
        .iter()
        .map(|&i| q(&rows[i]))
        .fold(f64::INFINITY, f64::min);
    let pick = candidates
        .iter()
        .copied()
        .filter(|&i| q(&rows[i]) <= best_q + 0.5)
        .min_by(|&a, &b| {
            rows[a]
                .usd_per_million_tokens
                .total_cmp(&rows[b].usd_per_million_tokens)
                .then(
                    rows[b]
                        .decode_tokens_per_s
                        .total_cmp(&rows[a].decode_tokens_per_s),
                )
        })?;
    rows[pick].recommended = true;
    let r = &rows[pick];
    Some(format!(
        "{} {} on {}x {}: the lowest quality loss that fits ({}), cheapest of those within 0.5% of it at ${:.2}/Mtok, {:.0} tok/s decode; {} of {} configurations fit",
        r.model,
        r.quant,
        r.devices,
        r.hardware,
        r.quality_delta_pct.map(|d| format!("+{d:.2}% PPL")).unwrap_or_else(|| "quality unknown".into()),
        r.usd_per_million_tokens,
        r.decode_tokens_per_s,
        candidates.len(),
        rows.len()
    ))
}
