//! The recommendation: among rows that run and pass every filter, the lowest expected
//! perplexity wins, ties (within 1%) going to the cheaper, then the faster. Perplexity compares
//! only on one scale (one tokenizer family, one text); across scales the family winners are
//! ranked by the published MMLU of their unquantized models, and the sentence says so. With
//! `--quality task` measured task accuracy decides instead (`by_task`).

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

/// The key rows compare under: their perplexity scale, or for a model without any
/// perplexity its own id (such a model compares with others only through MMLU).
fn group_of(r: &PlanRow) -> String {
    match &r.ppl_scale {
        Some(s) => s.clone(),
        None => format!("model {}", r.model_id),
    }
}

/// The best of rows in one group: the lowest perplexity (ties within 1% to the cheaper, then
/// faster); without perplexities, the least quantization loss against the model's own F16
/// (estimated) under the same tie rule.
fn best_in_group(rows: &[PlanRow], idx: &[usize]) -> Option<usize> {
    if idx.iter().any(|&i| rows[i].ppl.is_some()) {
        return best_ppl(rows, idx);
    }
    let loss = |i: usize| rows[i].quality_delta_pct.unwrap_or(f64::INFINITY);
    let least = idx.iter().map(|&i| loss(i)).fold(f64::INFINITY, f64::min);
    idx.iter()
        .copied()
        .filter(|&i| loss(i) <= least + 100.0 * TIE || !least.is_finite())
        .min_by(|&a, &b| cheaper_then_faster(rows, a, b))
}

/// The other model's lowest perplexity (ties to the cheaper), else its best by loss.
fn best_of_model(rows: &[PlanRow], runs: &[usize], id: &str) -> Option<usize> {
    let mine: Vec<usize> = runs
        .iter()
        .copied()
        .filter(|&i| rows[i].model_id == id)
        .collect();
    if mine.iter().any(|&i| rows[i].ppl.is_some()) {
        return mine
            .iter()
            .copied()
            .filter(|&i| rows[i].ppl.is_some())
            .min_by(|&a, &b| {
                rows[a]
                    .ppl
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&rows[b].ppl.unwrap_or(f64::INFINITY))
                    .then(cheaper_then_faster(rows, a, b))
            });
    }
    best_in_group(rows, &mine)
}

/// Why no configuration of `m` is left: its first shortfall, else the budget filters.
fn none_runs(all: &[PlanRow], m: &ModelSpec) -> String {
    let why = all
        .iter()
        .filter(|r| r.model_id == m.id)
        .find_map(|r| r.shortfall.clone())
        .unwrap_or_else(|| "every configuration is over the budget".into());
    format!("no {} configuration runs ({why})", m.name)
}

/// For each planned model other than the winner's: its best running row, or why none runs.
fn others(
    rows: &[PlanRow],
    all: &[PlanRow],
    runs: &[usize],
    models: &[ModelSpec],
    winner: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for m in models {
        if m.id == rows[winner].model_id {
            continue;
        }
        match best_of_model(rows, runs, &m.id) {
            Some(i) => out.push(format!(
                "best {}: {} ({}, ${:.2}/Mtok, {:.0} tokens/s)",
                m.name,
                ppl_text(&rows[i]),
                where_text(&rows[i]),
                rows[i].usd_per_million_tokens,
                rows[i].decode_tokens_per_s
            )),
            None => out.push(none_runs(all, m)),
        }
    }
    out
}

/// `all` is every row before the budget filters, to say why a model has none left.
pub fn recommend(
    rows: &[PlanRow],
    all: &[PlanRow],
    models: &[ModelSpec],
) -> Option<(String, usize)> {
    let runs: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].fits).collect();
    if runs.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = Vec::new();
    for &i in &runs {
        let g = group_of(&rows[i]);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let count = format!("{} of {} configurations run", runs.len(), rows.len());
    let finalists: Vec<usize> = groups
        .iter()
        .filter_map(|g| {
            let idx: Vec<usize> = runs
                .iter()
                .copied()
                .filter(|&i| group_of(&rows[i]) == *g)
                .collect();
            best_in_group(rows, &idx)
        })
        .collect();
    if let ([w], Some(scale)) = (finalists.as_slice(), rows[finalists[0]].ppl_scale.as_ref()) {
        let w = *w;
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
        parts.extend(others(rows, all, &runs, models, w));
        // The lowest perplexity of all (the cheapest of equals), when the tie rule passed it.
        let lowest = runs
            .iter()
            .copied()
            .filter(|&i| rows[i].ppl.is_some())
            .min_by(|&a, &b| {
                rows[a]
                    .ppl
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&rows[b].ppl.unwrap_or(f64::INFINITY))
                    .then(cheaper_then_faster(rows, a, b))
            })?;
        if rows[lowest].ppl < r.ppl {
            let l = &rows[lowest];
            parts.push(format!(
                "the lowest, {} {} at PPL {:.3}, costs ${:.2}/Mtok: within 1%, the cheaper wins",
                l.model,
                where_text(l),
                l.ppl.unwrap_or(f64::NAN),
                l.usd_per_million_tokens
            ));
        }
        parts.push(format!("cost {}", r.cost_basis));
        parts.push(count);
        return Some((parts.join("; "), w));
    }
    // Several groups (or one without perplexities): each group's best, then MMLU.
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
                match (f.mmlu, f.mmlu_source.as_deref()) {
                    (Some(s), Some(src)) if src.contains("stand-in") =>
                        format!("MMLU {s:.1} (a stand-in's)"),
                    (Some(s), _) => format!("MMLU {s:.1}"),
                    (None, _) => "no published MMLU".to_string(),
                },
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
        (Some(scale), None) => format!("within its family it has the lowest expected {} on {scale}", ppl_text(r)),
        (None, Some(d)) => format!(
            "no perplexity is known for it; of its types this one loses the least for the money (an estimated +{d:.2}% over its F16)"
        ),
        (None, None) => "no perplexity is known for it".into(),
    };
    // One group without perplexities has nothing to rank by MMLU: `within` says it all.
    let ranked = if groups.len() > 1 {
        format!(
            "perplexities of different tokenizers or texts do not compare, so each one's best row is ranked by MMLU (5-shot, unquantized, as each model's authors report it; quantization loss not included): {}; ",
            scores.join(", ")
        )
    } else {
        String::new()
    };
    let mut parts = vec![format!(
        "{} {}: {ranked}{within}, ${:.2}/Mtok, {:.0} tokens/s decode{}",
        r.model,
        where_text(r),
        r.usd_per_million_tokens,
        r.decode_tokens_per_s,
        tight(r)
    )];
    parts.extend(others(rows, all, &runs, models, w));
    parts.push(format!("cost {}", r.cost_basis));
    parts.push(count);
    Some((parts.join("; "), w))
}

fn acc_text(r: &PlanRow) -> String {
    match (r.task_acc, r.task_acc_err) {
        (Some(a), Some(e)) => format!("accuracy {:.1}% ± {:.1}", 100.0 * a, 100.0 * e),
        _ => "no measured accuracy".into(),
    }
}

/// The most accurate of `idx` (rows with an accuracy); those within one standard error of it
/// tie, and the cheaper, then the faster, wins. Returns (winner, most accurate).
fn best_acc(rows: &[PlanRow], idx: &[usize]) -> Option<(usize, usize)> {
    let top = idx
        .iter()
        .copied()
        .filter(|&i| rows[i].task_acc.is_some())
        .min_by(|&a, &b| {
            let acc = |i: usize| rows[i].task_acc.unwrap_or(f64::NEG_INFINITY);
            acc(b)
                .total_cmp(&acc(a))
                .then(cheaper_then_faster(rows, a, b))
        })?;
    let floor = rows[top].task_acc? - rows[top].task_acc_err.unwrap_or(0.0);
    let w = idx
        .iter()
        .copied()
        .filter(|&i| rows[i].task_acc.is_some_and(|a| a >= floor))
        .min_by(|&a, &b| cheaper_then_faster(rows, a, b))?;
    Some((w, top))
}

/// The recommendation by measured task accuracy (`plan --quality task`): among rows that
/// run and pass every filter, the most accurate on the task set, rows within one standard
/// error of it tied and the cheaper (then faster) winning. Accuracy on the same tasks
/// compares across models and tokenizers, so one ranking covers every model; rows without a
/// measured accuracy are not ranked, and the sentence counts them.
pub fn by_task(rows: &[PlanRow], all: &[PlanRow], models: &[ModelSpec]) -> Option<(String, usize)> {
    let runs: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].fits).collect();
    let (w, top) = best_acc(rows, &runs)?;
    let r = &rows[w];
    let task = r.task.clone().unwrap_or_default();
    let mut parts = vec![format!(
        "{} {}: {} on {task} (measured, {}), ${:.2}/Mtok, {:.0} tokens/s decode{}",
        r.model,
        where_text(r),
        acc_text(r),
        r.task_source.as_deref().unwrap_or("?"),
        r.usd_per_million_tokens,
        r.decode_tokens_per_s,
        tight(r)
    )];
    if top != w {
        let t = &rows[top];
        parts.push(format!(
            "the most accurate, {} {} at {}, costs ${:.2}/Mtok: within one standard error of it, the cheaper wins",
            t.model,
            where_text(t),
            acc_text(t),
            t.usd_per_million_tokens
        ));
    }
    for m in models.iter().filter(|m| m.id != r.model_id) {
        let mine: Vec<usize> = runs
            .iter()
            .copied()
            .filter(|&i| rows[i].model_id == m.id)
            .collect();
        match best_acc(rows, &mine) {
            Some((_, i)) => parts.push(format!(
                "best {}: {} ({}, ${:.2}/Mtok, {:.0} tokens/s)",
                m.name,
                acc_text(&rows[i]),
                where_text(&rows[i]),
                rows[i].usd_per_million_tokens,
                rows[i].decode_tokens_per_s
            )),
            None if !mine.is_empty() => parts.push(format!(
                "{}: no configuration that runs has a measured accuracy on {task}",
                m.name
            )),
            None => parts.push(none_runs(all, m)),
        }
    }
    let unranked = runs.iter().filter(|&&i| rows[i].task_acc.is_none()).count();
    if unranked > 0 {
        parts.push(format!(
            "{unranked} of the {} configurations that run have no measured accuracy on {task} and are not ranked",
            runs.len()
        ));
    }
    parts.push(format!("cost {}", r.cost_basis));
    parts.push(format!(
        "{} of {} configurations run",
        runs.len(),
        rows.len()
    ));
    Some((parts.join("; "), w))
}

/// Why `by_task` found nothing although configurations run: what was measured, and where.
pub fn no_task_accuracy(rows: &[PlanRow], tasks: &[super::MeasuredTask]) -> String {
    let measured: Vec<String> = tasks
        .iter()
        .map(|t| format!("{} {}", t.model, t.quant))
        .collect();
    let running = rows.iter().filter(|r| r.fits).count();
    match tasks.first() {
        Some(t) => format!(
            "--quality task: none of the {running} configurations that run has a measured accuracy on {} (measured: {}); run `quantfit eval` with --task on a planned model and type that runs, or plan those",
            t.label(),
            measured.join(", ")
        ),
        None => "--quality task: the results hold no task accuracy".into(),
    }
}

/// When nothing meets every constraint: what came closest, and why.
pub fn closest(all: &[PlanRow], f: &Filters, search: &Search) -> String {
    let runs: Vec<&PlanRow> = all.iter().filter(|r| r.fits).collect();
    if runs.is_empty() {
        let nearest = all.iter().min_by(|a, b| a.total_bytes.cmp(&b.total_bytes));
        let text = nearest
            .map(|r| {
                format!(
                    "the smallest, {} {}, {}",
                    r.model,
                    r.quant,
                    r.shortfall.as_deref().unwrap_or("does not run")
                )
            })
            .unwrap_or_else(|| "nothing was planned".into());
        let why = nearest.and_then(|r| r.shortfall.as_deref()).unwrap_or("");
        let mut tips: Vec<&str> = Vec::new();
        if why.contains("trained for a context") || why.contains("holds a context") {
            tips.extend([
                "a shorter --ctx or --min-ctx",
                "a model trained for a longer context",
            ]);
        }
        if why.contains("decodes") {
            tips.extend(["a lower --min-tps", "faster hardware", "a smaller type"]);
        }
        if why.contains("GiB on a device") {
            if search.devices.is_some() {
                tips.push("drop --devices");
            }
            tips.extend([
                "more --max-devices",
                "a smaller type",
                "a smaller --kv-type",
            ]);
        }
        if why.contains("host memory") {
            tips.extend(["more --host-memory", "more --max-devices"]);
        }
        if search.gpu_layers.is_some() {
            tips.push("drop --gpu-layers");
        }
        if tips.is_empty() {
            tips.push("other hardware or a smaller model");
        }
        return format!(
            "no configuration runs any planned model: {text}; try {}",
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
