//! The estimator for missing cells: one model fitted on every published cell of every scale,
//!
//!   ln PPL(m, q) = ln PPL_F16(m) + exp(a_scale + b·bpw + c·ln(params/1e9) + d·imatrix + e_class)
//!
//! a quantization loss that falls exponentially with the file's bits per weight (the squared
//! rounding error of a b-bit grid falls as 2^-2b) and with model size (larger models are more
//! robust), per tokenizer family (Llama 3 loses more than Llama 2 at the same bits), with
//! offsets for an importance matrix and for the legacy and i-quant families against the
//! k-quants. ln PPL_F16 is a free level per model, so a model whose F16 was never published
//! (Llama-2-13B) gets one from its quantized cells. bpw is the published file size where the
//! source gives one, else the planner's exact size of today's recipe. Fitted by least squares on
//! ln PPL (relative error) with Levenberg-Marquardt; `report` gives the leave-one-out error.

use std::sync::OnceLock;

use super::{published, Cell};
use crate::plan::catalog::{self, parameter_count, ModelSpec};
use crate::plan::estimate::{weight_bytes, GIB};
use crate::quant::rules::FileType;

/// Format families with their own loss per bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Unquantized,
    Legacy,
    KQuant,
    IQuant,
}

impl Class {
    pub fn of(quant: &str) -> Class {
        if matches!(quant, "F16" | "BF16" | "F32") {
            Class::Unquantized
        } else if quant.starts_with("IQ") {
            Class::IQuant
        } else if quant.contains("_K") {
            Class::KQuant
        } else {
            Class::Legacy
        }
    }
}

/// One cell as the fit sees it.
#[derive(Clone, Debug)]
pub struct Sample {
    pub cell: usize,
    model: usize,
    scale: usize,
    bpw: f64,
    ln_params: f64,
    imatrix: bool,
    class: Class,
    /// ln of the published perplexity.
    y: f64,
}

/// Shared parameters after the per-model levels and per-scale offsets: b, c, d, e_legacy, e_iq.
const SHARED: usize = 5;

/// Below this many bits per weight (the IQ1 and most IQ2 files) the loss stops following one
/// exponential (it saturates on Llama-3-70B and steepens on Llama-3-8B); such cells stay out of
/// the fit, and the estimator makes no estimate there.
pub const MIN_BPW: f64 = 2.5;

pub struct Fit {
    pub models: Vec<String>,
    pub scales: Vec<String>,
    p: Vec<f64>,
}

impl Fit {
    fn z(&self, scale: usize, bpw: f64, ln_params: f64, imatrix: bool, class: Class) -> f64 {
        let s = self.models.len() + self.scales.len();
        let p = &self.p;
        p[self.models.len() + scale]
            + p[s] * bpw
            + p[s + 1] * ln_params
            + p[s + 2] * f64::from(u8::from(imatrix))
            + p[s + 3] * f64::from(u8::from(class == Class::Legacy))
            + p[s + 4] * f64::from(u8::from(class == Class::IQuant))
    }

    fn ln_ppl(&self, s: &Sample) -> f64 {
        self.p[s.model]
            + match s.class {
                Class::Unquantized => 0.0,
                c => self.z(s.scale, s.bpw, s.ln_params, s.imatrix, c).exp(),
            }
    }

    pub fn model_index(&self, id: &str) -> Option<usize> {
        self.models.iter().position(|m| m == id)
    }

    /// The fitted quantization loss ln(PPL / PPL_F16) of `m` as `ft` (None below MIN_BPW).
    pub fn loss(&self, m: &ModelSpec, ft: FileType, imatrix: bool) -> Option<f64> {
        let scale = self
            .scales
            .iter()
            .position(|s| Some(s) == m.scale.as_ref())?;
        self.loss_at(Some(scale), m, ft, imatrix)
    }

    /// The same with the mean of the fitted families' offsets, for a family never published.
    pub fn generic_loss(&self, m: &ModelSpec, ft: FileType, imatrix: bool) -> Option<f64> {
        self.loss_at(None, m, ft, imatrix)
    }

    fn loss_at(
        &self,
        scale: Option<usize>,
        m: &ModelSpec,
        ft: FileType,
        imatrix: bool,
    ) -> Option<f64> {
        let params = parameter_count(m) as f64;
        let bpw = weight_bytes(m, ft) as f64 * 8.0 / params;
        let class = Class::of(ft.name());
        if class == Class::Unquantized {
            return Some(0.0);
        }
        if bpw < MIN_BPW {
            return None;
        }
        let ln_params = (params / 1e9).ln();
        let z = match scale {
            Some(s) => self.z(s, bpw, ln_params, imatrix, class),
            None => {
                let offsets = &self.p[self.models.len()..self.models.len() + self.scales.len()];
                let mean = offsets.iter().sum::<f64>() / offsets.len().max(1) as f64;
                self.z(0, bpw, ln_params, imatrix, class) - offsets[0] + mean
            }
        };
        Some(z.exp())
    }

    /// exp(d): how much an importance matrix scales the quantization loss.
    pub fn imatrix_factor(&self) -> f64 {
        let s = self.models.len() + self.scales.len();
        self.p[s + 2].exp()
    }

    /// Expected perplexity of `m` as `ft` from the fit alone; a model with no published cells
    /// takes the F16 level of its `quality_proxy` and its own size and bits.
    pub fn predict(&self, m: &ModelSpec, ft: FileType, imatrix: bool) -> Option<f64> {
        let model = self
            .model_index(&m.id)
            .or_else(|| self.model_index(m.quality_proxy.as_deref()?))?;
        let scale = self
            .scales
            .iter()
            .position(|s| Some(s) == m.scale.as_ref())?;
        let params = parameter_count(m) as f64;
        let bpw = weight_bytes(m, ft) as f64 * 8.0 / params;
        if bpw < MIN_BPW {
            return None;
        }
        let sample = Sample {
            cell: usize::MAX,
            model,
            scale,
            bpw,
            ln_params: (params / 1e9).ln(),
            imatrix,
            class: Class::of(ft.name()),
            y: 0.0,
        };
        Some(self.ln_ppl(&sample).exp())
    }

    /// The fitted shared parameters, for the report.
    fn describe(&self) -> String {
        let s = self.models.len() + self.scales.len();
        let a: Vec<String> = self
            .scales
            .iter()
            .enumerate()
            .map(|(i, id)| format!("a[{id}] = {:.3}", self.p[self.models.len() + i]))
            .collect();
        format!(
            "{}, b = {:.3}, c = {:.3}, d = {:.3}, e_legacy = {:.3}, e_iq = {:.3}",
            a.join(", "),
            self.p[s],
            self.p[s + 1],
            self.p[s + 2],
            self.p[s + 3],
            self.p[s + 4]
        )
    }
}

/// The published cells the fit uses (MIN_BPW and above) as samples, with the model and scale
/// ids they index; panics on a cell the embedded data cannot place (tested).
pub fn samples() -> (Vec<Sample>, Vec<String>, Vec<String>) {
    let (all, models, scales) = all_samples();
    (
        all.into_iter().filter(|s| s.bpw >= MIN_BPW).collect(),
        models,
        scales,
    )
}

/// Every published cell as a sample, the ones below MIN_BPW too.
fn all_samples() -> (Vec<Sample>, Vec<String>, Vec<String>) {
    let pubd = published();
    let mut models: Vec<String> = Vec::new();
    let mut scales: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (i, c) in pubd.cells.iter().enumerate() {
        let spec = catalog::by_id(&c.model)
            .unwrap_or_else(|| panic!("published.toml: {} is not in the catalog", c.model));
        let scale_id = spec
            .scale
            .clone()
            .unwrap_or_else(|| panic!("catalog: {} has no scale", c.model));
        let model = index_of(&mut models, &c.model);
        let scale = index_of(&mut scales, &scale_id);
        let params = parameter_count(spec) as f64;
        out.push(Sample {
            cell: i,
            model,
            scale,
            bpw: cell_bytes(c, spec) * 8.0 / params,
            ln_params: (params / 1e9).ln(),
            imatrix: c.imatrix,
            class: Class::of(&c.quant),
            y: c.ppl.ln(),
        });
    }
    (out, models, scales)
}

fn index_of(list: &mut Vec<String>, id: &str) -> usize {
    match list.iter().position(|x| x == id) {
        Some(i) => i,
        None => {
            list.push(id.to_string());
            list.len() - 1
        }
    }
}

/// The cell's file bytes: as published, else the planner's size of today's recipe.
fn cell_bytes(c: &Cell, spec: &ModelSpec) -> f64 {
    match c.gib {
        Some(g) => g * GIB,
        None => {
            let ft = FileType::from_name(&c.quant).unwrap_or_else(|| {
                panic!(
                    "published.toml: {} {} needs gib (no such file type)",
                    c.model, c.quant
                )
            });
            weight_bytes(spec, ft) as f64
        }
    }
}

fn initial(samples: &[Sample], n_models: usize, n_scales: usize) -> Vec<f64> {
    let mut p = vec![0.0; n_models + n_scales + SHARED];
    for (m, level) in p.iter_mut().enumerate().take(n_models) {
        *level = samples
            .iter()
            .filter(|s| s.model == m)
            .map(|s| s.y)
            .fold(f64::INFINITY, f64::min)
            - 0.01;
    }
    for a in &mut p[n_models..n_models + n_scales] {
        *a = 2.6;
    }
    let s = n_models + n_scales;
    p[s] = -1.3;
    p[s + 1] = -0.3;
    p[s + 2] = -0.3;
    p
}

/// Levenberg-Marquardt on the residuals ln PPL_fit - ln PPL_published. Written out because the
/// problem is tiny (about 20 parameters) and a solver crate would bring a linear-algebra stack.
fn solve(samples: &[Sample], n_models: usize, n_scales: usize, start: Vec<f64>) -> Vec<f64> {
    let n = start.len();
    let mut fit = Fit {
        models: vec![String::new(); n_models],
        scales: vec![String::new(); n_scales],
        p: start,
    };
    let cost = |f: &Fit| -> f64 { samples.iter().map(|s| (f.ln_ppl(s) - s.y).powi(2)).sum() };
    let mut c = cost(&fit);
    let mut lambda = 1e-3;
    for _ in 0..500 {
        let mut jtj = vec![0.0; n * n];
        let mut jtr = vec![0.0; n];
        for s in samples {
            let r = fit.ln_ppl(s) - s.y;
            let mut grad = vec![(s.model, 1.0)];
            if s.class != Class::Unquantized {
                let q = fit.z(s.scale, s.bpw, s.ln_params, s.imatrix, s.class).exp();
                let sh = n_models + n_scales;
                grad.push((n_models + s.scale, q));
                grad.push((sh, q * s.bpw));
                grad.push((sh + 1, q * s.ln_params));
                grad.push((sh + 2, q * f64::from(u8::from(s.imatrix))));
                grad.push((sh + 3, q * f64::from(u8::from(s.class == Class::Legacy))));
                grad.push((sh + 4, q * f64::from(u8::from(s.class == Class::IQuant))));
            }
            for &(i, gi) in &grad {
                jtr[i] += gi * r;
                for &(j, gj) in &grad {
                    jtj[i * n + j] += gi * gj;
                }
            }
        }
        let improved = loop {
            let mut a = jtj.clone();
            for i in 0..n {
                a[i * n + i] += lambda * jtj[i * n + i] + 1e-12;
            }
            let step = gauss(a, jtr.iter().map(|g| -g).collect(), n);
            let trial = Fit {
                models: fit.models.clone(),
                scales: fit.scales.clone(),
                p: fit.p.iter().zip(&step).map(|(p, d)| p + d).collect(),
            };
            let tc = cost(&trial);
            if tc.is_finite() && tc < c {
                lambda = (lambda / 3.0).max(1e-12);
                let gain = c - tc;
                fit = trial;
                c = tc;
                break Some(gain);
            }
            lambda *= 4.0;
            if lambda > 1e12 {
                break None;
            }
        };
        match improved {
            Some(gain) if gain > 1e-15 * (1.0 + c) => {}
            _ => break,
        }
    }
    fit.p
}

/// Solves a x = b (n x n, row-major) by Gaussian elimination with partial pivoting.
fn gauss(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Vec<f64> {
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&x, &y| a[x * n + col].abs().total_cmp(&a[y * n + col].abs()))
            .unwrap_or(col);
        if pivot != col {
            for k in 0..n {
                a.swap(col * n + k, pivot * n + k);
            }
            b.swap(col, pivot);
        }
        let d = a[col * n + col];
        if d.abs() < 1e-300 {
            continue;
        }
        for row in col + 1..n {
            let f = a[row * n + col] / d;
            if f != 0.0 {
                for k in col..n {
                    a[row * n + k] -= f * a[col * n + k];
                }
                b[row] -= f * b[col];
            }
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let d = a[row * n + row];
        let s: f64 = (row + 1..n).map(|k| a[row * n + k] * x[k]).sum();
        x[row] = if d.abs() < 1e-300 {
            0.0
        } else {
            (b[row] - s) / d
        };
    }
    x
}

fn fit_on(samples: &[Sample], models: &[String], scales: &[String], start: Option<&[f64]>) -> Fit {
    let p0 = match start {
        Some(p) => p.to_vec(),
        None => initial(samples, models.len(), scales.len()),
    };
    Fit {
        models: models.to_vec(),
        scales: scales.to_vec(),
        p: solve(samples, models.len(), scales.len(), p0),
    }
}

/// The estimator fitted on every published cell, once per process.
pub fn fitted() -> &'static Fit {
    static FIT: OnceLock<Fit> = OnceLock::new();
    FIT.get_or_init(|| {
        let (s, models, scales) = samples();
        fit_on(&s, &models, &scales, None)
    })
}

/// One held-out check: the cell, the estimate fitted without it.
pub struct HeldOut {
    pub cell: usize,
    pub predicted: f64,
}

/// Leave-one-out: each cell predicted by the model fitted on all the others, the way `expected`
/// estimates a missing cell (the fitted loss on the published F16 figure where there is one).
/// Cells that are their model's only cell cannot be predicted (nothing fixes its level) and are
/// skipped.
pub fn leave_one_out() -> Vec<HeldOut> {
    let pubd = published();
    let (all, models, scales) = samples();
    let full = fitted();
    let mut out = Vec::new();
    for (i, s) in all.iter().enumerate() {
        if all.iter().filter(|o| o.model == s.model).count() < 2 {
            continue;
        }
        let rest: Vec<Sample> = all
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, x)| x.clone())
            .collect();
        let f = fit_on(&rest, &models, &scales, Some(&full.p));
        // As `expected` estimates: the fitted loss on the published F16 figure where there is one.
        let f16 = pubd
            .find(&pubd.cells[s.cell].model, "F16", false)
            .filter(|c| s.class != Class::Unquantized && !std::ptr::eq(*c, &pubd.cells[s.cell]));
        let predicted = match f16 {
            Some(c) => c.ppl * (f.ln_ppl(s) - f.p[s.model]).exp(),
            None => f.ln_ppl(s).exp(),
        };
        out.push(HeldOut {
            cell: s.cell,
            predicted,
        });
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The line that labels estimated cells.
pub fn summary_line(median_pct: f64) -> String {
    format!(
        "quantization loss fitted on llama.cpp's published cells (leave-one-out median error {median_pct:.2}% on this scale, reports/quality-estimate.txt)"
    )
}

/// The leave-one-out median |error| of quantized cells, overall or on one scale, as the
/// committed report states it (tests/plan_quality.rs keeps the report current).
pub fn held_out_median_pct(scale: Option<&str>) -> f64 {
    let report = include_str!("../../../reports/quality-estimate.txt");
    let pick = |l: &str| -> Option<f64> {
        let rest = match scale {
            None => l.strip_prefix("median |error|, quantized cells: ")?,
            Some(s) => l.strip_prefix(&format!("  {s}: median "))?,
        };
        rest.split('%').next()?.trim().parse().ok()
    };
    report.lines().find_map(pick).unwrap_or(f64::NAN)
}

/// The leave-one-out report (`quantfit plan --quality-report`, committed as
/// reports/quality-estimate.txt).
pub fn report() -> String {
    let pubd = published();
    let (all, _, _) = samples();
    let full = fitted();
    let held = leave_one_out();
    let mut out = String::new();
    out.push_str("Perplexity estimator: leave-one-out check (quantfit plan --quality-report)\n\n");
    out.push_str("ln PPL(model, type) = ln PPL_F16(model) + exp(a_scale + b*bpw + c*ln(params/1e9) + d*imatrix + e_class)\n");
    out.push_str(&format!(
        "fitted on {} published cells of {} models on {} scales: {}\n\n",
        all.len(),
        full.models.len(),
        full.scales.len(),
        full.describe()
    ));
    out.push_str(&format!(
        "{:<16} {:<8} {:<8} {:>6} {:>10} {:>10} {:>8}\n",
        "model", "quant", "imatrix", "bpw", "published", "held-out", "error"
    ));
    let mut quantized = Vec::new();
    let mut per_scale: Vec<(String, Vec<f64>)> = full
        .scales
        .iter()
        .map(|s| (s.clone(), Vec::new()))
        .collect();
    let mut unquantized = Vec::new();
    for h in &held {
        let c = &pubd.cells[h.cell];
        let s = all
            .iter()
            .find(|s| s.cell == h.cell)
            .expect("a sample per cell");
        let err = (h.predicted / c.ppl - 1.0) * 100.0;
        if s.class == Class::Unquantized {
            unquantized.push(err.abs());
        } else {
            quantized.push(err.abs());
            per_scale[s.scale].1.push(err.abs());
        }
        out.push_str(&format!(
            "{:<16} {:<8} {:<8} {:>6.2} {:>10.4} {:>10.4} {:>7.2}%\n",
            c.model,
            c.quant,
            if c.imatrix { "yes" } else { "no" },
            s.bpw,
            c.ppl,
            h.predicted,
            err
        ));
    }
    let (every, _, _) = all_samples();
    let left_out: Vec<String> = every
        .iter()
        .filter(|s| s.bpw < MIN_BPW)
        .map(|s| {
            let c = &pubd.cells[s.cell];
            format!("{} {} ({:.2} bpw)", c.model, c.quant, s.bpw)
        })
        .collect();
    out.push_str(&format!(
        "\nnot fitted (below {MIN_BPW} bits per weight, where no estimate is made): {}\n\n",
        left_out.join(", ")
    ));
    out.push_str(&format!(
        "median |error|, quantized cells: {:.2}% ({} cells); 90th percentile {:.2}%; largest {:.2}%\n",
        median(quantized.clone()),
        quantized.len(),
        percentile(quantized.clone(), 0.9),
        quantized.iter().copied().fold(0.0, f64::max)
    ));
    for (scale, errs) in per_scale {
        out.push_str(&format!(
            "  {scale}: median {:.2}% ({} cells)\n",
            median(errs.clone()),
            errs.len()
        ));
    }
    out.push_str(&format!(
        "median |error|, F16 levels predicted from the quantized cells alone: {:.2}% ({} cells)\n",
        median(unquantized.clone()),
        unquantized.len()
    ));
    out
}
