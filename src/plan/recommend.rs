//! The recommendation: among rows that run and pass every filter, the lowest expected
//! perplexity wins, ties (within 1%) going to the cheaper, then the faster. Perplexity compares
//! only on one scale (one tokenizer family, one text); across scales the family winners are
//! ranked by the published MMLU of their unquantized models, and the sentence says so.

use super::catalog::ModelSpec;
use super::config::Search;
use super::{Filters, PlanRow};

const TIE: f64 = 0.01;

fn cheaper_then_faster(rows: &[PlanRow], a: usize, b: usize) -> std::cmp::Ordering {
    rows[a]
        .usd_per_million_tokens
        .total_cmp(&rows[b].usd_per_million_tokens)
        .then(
            rows[b]
                .decode_tokens_per_s
                .total_cmp(&rows[a].decode_tokens_per_s),
        )
}

/// The lowest perplexity of `idx` (all on one scale), ties within 1% to the cheaper, faster.
fn best_ppl(rows: &[PlanRow], idx: &[usize]) -> Option<usize> {
    let lowest = idx
        .iter()
        .filter_map(|&i| rows[i].ppl)
        .fold(f64::INFINITY, f64::min);
    idx.iter()
        .copied()
        .filter(|&i| rows[i].ppl.is_some_and(|p| p <= lowest * (1.0 + TIE)))
        .min_by(|&a, &b| cheaper_then_faster(rows, a, b))
}

fn ppl_text(r: &PlanRow) -> String {
    match (r.ppl, r.ppl_basis) {
        (Some(p), Some(b)) => format!("PPL {p:.3} ({})", b.name()),
        _ => "PPL unknown".into(),
    }
}

/// A warning when the fullest device has less than 1 GiB to spare.
fn tight(r: &PlanRow) -> String {
    let free = r.headroom_bytes as f64 / super::estimate::GIB;
    if free < 1.0 {
        format!(" (tight: {free:.2} GiB free on the fullest device)")
    } else {
        String::new()
    }
}

fn where_text(r: &PlanRow) -> String {
    format!("{} on {}", r.quant, r.config)
}

/// For each planned model other than the winner's: its best running row, or why none runs.
fn others(
    rows: &[PlanRow],
    runs: &[usize],
    models: &[ModelSpec],
    winner: usize,
    rated: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for m in models {
        if m.id == rows[winner].model_id {
            continue;
        }
        let mine: Vec<usize> = runs
            .iter()
            .copied()
            .filter(|&i| rows[i].model_id == m.id)
            .collect();
        // The other size's lowest perplexity, whatever it costs (ties to the cheaper).
        let best = if rated {
            mine.iter().copied().min_by(|&a, &b| {
                rows[a]
                    .ppl
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&rows[b].ppl.unwrap_or(f64::INFINITY))
                    .then(cheaper_then_faster(rows, a, b))
            })
        } else {
            mine.iter().copied().max_by(|&a, &b| {
                rows[a]
                    .bits_per_weight
                    .total_cmp(&rows[b].bits_per_weight)
                    .then(cheaper_then_faster(rows, b, a))
            })
        };
        match best {
            Some(i) => out.push(format!(
                "best {}: {} ({}, ${:.2}/Mtok, {:.0} tokens/s)",
                m.name,
                ppl_text(&rows[i]),
                where_text(&rows[i]),
                rows[i].usd_per_million_tokens,
                rows[i].decode_tokens_per_s
            )),
            None => {
                let why = rows
                    .iter()
                    .filter(|r| r.model_id == m.id)
                    .find_map(|r| r.shortfall.clone())
                    .unwrap_or_else(|| "filtered out by the budget".into());
                out.push(format!("no {} configuration runs ({why})", m.name));
            }
        }
    }
    out
}

pub fn recommend(rows: &[PlanRow], models: &[ModelSpec]) -> Option<(String, usize)> {
    let runs: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].fits).collect();
    if runs.is_empty() {
        return None;
    }
    let mut scales: Vec<Option<String>> = Vec::new();
    for &i in &runs {
        if !scales.contains(&rows[i].ppl_scale) {
            scales.push(rows[i].ppl_scale.clone());
        }
    }
    let count = format!("{} of {} configurations run", runs.len(), rows.len());
    if let [Some(scale)] = scales.as_slice() {
        let w = best_ppl(rows, &runs)?;
        let r = &rows[w];
        let mut parts = vec![format!(
            "{} {}: expected {} on {scale}, ${:.2}/Mtok, {:.0} tokens/s decode{}",
            r.model,
            where_text(r),
            ppl_text(r),
            r.usd_per_million_tokens,
            r.decode_tokens_per_s,
            tight(r)
        )];
        parts.extend(others(rows, &runs, models, w, true));
        let lowest = runs.iter().copied().min_by(|&a, &b| {
            rows[a]
                .ppl
                .unwrap_or(f64::INFINITY)
                .total_cmp(&rows[b].ppl.unwrap_or(f64::INFINITY))
        })?;
        if rows[lowest].ppl < r.ppl {
            let l = &rows[lowest];
            parts.push(format!(
                "{} {} has PPL {:.3} but costs ${:.2}/Mtok: within 1%, the cheaper wins",
                l.model,
                where_text(l),
                l.ppl.unwrap_or(f64::NAN),
                l.usd_per_million_tokens
            ));
        }
        parts.push(count);
        return Some((parts.join("; "), w));
    }
    // Several scales: each family's winner, then MMLU across them.
    let mut finalists = Vec::new();
    for scale in &scales {
        let idx: Vec<usize> = runs
            .iter()
            .copied()
            .filter(|&i| rows[i].ppl_scale == *scale)
            .collect();
        match scale {
            Some(_) => finalists.extend(best_ppl(rows, &idx)),
            // Without perplexities: per model, the most bits (the least quantization loss).
            None => {
                let mut ids: Vec<&str> = idx.iter().map(|&i| rows[i].model_id.as_str()).collect();
                ids.dedup();
                for id in ids {
                    finalists.extend(
                        idx.iter()
                            .copied()
                            .filter(|&i| rows[i].model_id == id)
                            .max_by(|&a, &b| {
                                rows[a]
                                    .bits_per_weight
                                    .total_cmp(&rows[b].bits_per_weight)
                                    .then(cheaper_then_faster(rows, b, a))
                            }),
                    );
                }
            }
        }
    }
    let mmlu = |i: usize| rows[i].mmlu.unwrap_or(f64::NEG_INFINITY);
    let top = finalists
        .iter()
        .map(|&i| mmlu(i))
        .fold(f64::NEG_INFINITY, f64::max);
    let w = finalists
        .iter()
        .copied()
        .filter(|&i| mmlu(i) >= top - 1.0)
        .min_by(|&a, &b| cheaper_then_faster(rows, a, b))?;
    let r = &rows[w];
    let scores: Vec<String> = finalists
        .iter()
        .map(|&i| {
            let f = &rows[i];
            format!(
                "{} {} ({}, {})",
                f.model,
                f.mmlu
                    .map_or("no published MMLU".to_string(), |s| format!("MMLU {s:.1}")),
                where_text(f),
                ppl_text(f)
            )
        })
        .collect();
    let within = match (&r.ppl_scale, r.quality_delta_pct) {
        (Some(scale), Some(d)) => format!(
            "within its family it has the lowest expected {} on {scale}, +{d:.2}% over its F16",
            ppl_text(r)
        ),
        (Some(scale), None) => format!(
            "within its family it has the lowest expected {} on {scale}",
            ppl_text(r)
        ),
        (None, _) => {
            "no perplexity is known for it, so its least-quantized running type was taken".into()
        }
    };
    let mut parts = vec![format!(
        "{} {}: perplexities of different tokenizers do not compare, so the families' best rows are ranked by MMLU (5-shot, unquantized, as each model's authors report it; quantization loss not included): {}; {within}, ${:.2}/Mtok, {:.0} tokens/s decode{}",
        r.model,
        where_text(r),
        scores.join(", "),
        r.usd_per_million_tokens,
        r.decode_tokens_per_s,
        tight(r)
    )];
    parts.extend(
        others(rows, &runs, models, w, r.ppl.is_some())
            .into_iter()
            .filter(|s| s.starts_with("no ")),
    );
    parts.push(count);
    Some((parts.join("; "), w))
}

/// When nothing meets every constraint: what came closest, and why.
pub fn closest(all: &[PlanRow], f: &Filters, search: &Search) -> String {
    let runs: Vec<&PlanRow> = all.iter().filter(|r| r.fits).collect();
    if runs.is_empty() {
        let nearest = all
            .iter()
            .min_by(|a, b| a.total_bytes.cmp(&b.total_bytes))
            .map(|r| {
                format!(
                    "the smallest, {} {}, {}",
                    r.model,
                    r.quant,
                    r.shortfall.as_deref().unwrap_or("does not run")
                )
            })
            .unwrap_or_else(|| "nothing was planned".into());
        let mut tips = Vec::new();
        if search.devices.is_some() {
            tips.push("drop --devices");
        }
        if search.gpu_layers.is_some() {
            tips.push("drop --gpu-layers");
        }
        tips.extend([
            "more --max-devices",
            "a smaller type",
            "a shorter --ctx",
            "more --host-memory",
        ]);
        return format!(
            "no configuration runs any planned model: {nearest}; try {}",
            tips.join(", ")
        );
    }
    let mut why = Vec::new();
    if let Some(c) = f.max_usd_per_mtok {
        if let Some(r) = runs.iter().min_by(|a, b| {
            a.usd_per_million_tokens
                .total_cmp(&b.usd_per_million_tokens)
        }) {
            why.push(format!(
                "--max-usd-per-mtok {c}: the cheapest that runs is {} {} at ${:.2}/Mtok",
                r.model,
                where_text(r),
                r.usd_per_million_tokens
            ));
        }
    }
    if let Some(g) = f.max_memory_gb {
        if let Some(r) = runs.iter().min_by_key(|r| r.total_bytes) {
            why.push(format!(
                "--max-memory {g}: the smallest that runs needs {:.2} GiB ({} {})",
                r.total_bytes as f64 / super::estimate::GIB,
                r.model,
                where_text(r)
            ));
        }
    }
    if why.is_empty() {
        why.push("every row that runs was filtered out".into());
    }
    format!(
        "no configuration meets every constraint: {}",
        why.join("; ")
    )
}
