//! Results measured with `quantfit eval` (the results file, one JSON object per line): they
//! take precedence over published and estimated figures. A measured PPL ratio against the
//! unquantized model carries over to the family's published scale (ratio x that scale's F16
//! figure); an absolute PPL stays on its own scale, the tokens it was measured on, so only
//! results on the same tokens and context compare. Task accuracies (`eval --task`) compare
//! across models and tokenizers, but only on the same tasks (`tasks_sha256`).

use std::path::Path;

use anyhow::{bail, Result};

use crate::eval::results::{self, Record};

use super::{Basis, Quality};

/// One measured result.
#[derive(Clone, Debug)]
pub struct Measured {
    pub model: String,
    /// Other names the same model goes by in the line (`file`: the GGUF or folder name).
    pub aliases: Vec<String>,
    pub quant: String,
    pub ppl: Option<f64>,
    /// PPL over the baseline's (an unquantized model) on the same tokens.
    pub ratio: Option<f64>,
    pub kld: Option<f64>,
    /// What the absolute PPL is on.
    pub scale: String,
    /// `FILE line N`.
    pub origin: String,
}

impl Measured {
    pub fn names(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.model).chain(&self.aliases)
    }

    /// The row quality: on the published scale when `f16` (the model's F16 figure there) is
    /// known and the line has a ratio, else the absolute figure on the line's own scale.
    pub fn quality(&self, f16: Option<(f64, &str, Basis)>) -> Option<Quality> {
        if let (Some(r), Some((base, scale, basis))) = (self.ratio, f16) {
            return Some(Quality {
                ppl: base * r,
                basis: Basis::Measured,
                scale: scale.to_string(),
                delta_pct: Some((r - 1.0) * 100.0),
                kld: self.kld,
                source: format!(
                    "measured: PPL ratio {r:.4} against the unquantized model ({}) x the scale's F16 figure {base:.4} ({})",
                    self.origin,
                    basis.name()
                ),
            });
        }
        Some(Quality {
            ppl: self.ppl?,
            basis: Basis::Measured,
            scale: self.scale.clone(),
            delta_pct: self.ratio.map(|r| (r - 1.0) * 100.0),
            kld: self.kld,
            source: format!("measured: {}", self.origin),
        })
    }
}

/// One measured task accuracy (`quantfit eval --task`).
#[derive(Clone, Debug)]
pub struct MeasuredTask {
    pub model: String,
    pub aliases: Vec<String>,
    pub quant: String,
    /// The task file's name.
    pub task: String,
    /// Which tasks were scored (the file and the draw): accuracies compare only within one.
    pub tasks_sha256: String,
    pub tasks: usize,
    pub acc: f64,
    pub acc_err: f64,
    /// `FILE line N`.
    pub origin: String,
}

impl MeasuredTask {
    pub fn names(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.model).chain(&self.aliases)
    }

    /// The task set, as a reader names it: `FILE (N tasks, sha256 PREFIX)`.
    pub fn label(&self) -> String {
        let h = &self.tasks_sha256;
        format!(
            "{} ({} tasks, sha256 {})",
            self.task,
            self.tasks,
            &h[..h.len().min(12)]
        )
    }
}

/// Everything a results file measured that the planner reads.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub ppl: Vec<Measured>,
    pub tasks: Vec<MeasuredTask>,
}

pub fn read_results(path: &Path) -> Result<Results> {
    let mut out: Vec<Measured> = Vec::new();
    let mut tasks: Vec<MeasuredTask> = Vec::new();
    for (n, record) in results::read(path)? {
        let at = || format!("{}: line {n}", path.display());
        let line = match record {
            Record::Eval(line) => line,
            Record::Task(line) => {
                let t = task_line(&line.result, at())?;
                // A later line for the same model, type and tasks replaces an earlier one.
                tasks.retain(|o| {
                    !(o.model == t.model && o.quant == t.quant && o.tasks_sha256 == t.tasks_sha256)
                });
                tasks.push(t);
                continue;
            }
            // Speed lines carry no quality.
            Record::Bench(_) => continue,
        };
        let r = &line.result;
        if r.model.is_empty() || r.quant.is_empty() {
            bail!("{}: needs \"model\" and \"quant\"", at());
        }
        let ratio = r.kld.as_ref().map(|k| k.ppl_ratio);
        for (what, v) in [("ppl", Some(r.ppl)), ("ppl_ratio", ratio)] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                bail!("{}: \"{what}\" must be a positive number", at());
            }
        }
        let h = &r.tokens_sha256;
        let scale = format!(
            "{}, ctx {}, tokens {} (quantfit eval)",
            line.text,
            r.ctx,
            &h[..h.len().min(12)]
        );
        let m = Measured {
            aliases: vec![r.file.clone()],
            model: r.model.clone(),
            quant: r.quant.clone(),
            ppl: Some(r.ppl),
            ratio,
            kld: r.kld.as_ref().map(|k| k.kld_mean),
            scale,
            origin: at(),
        };
        // A later line for the same model, type and scale replaces an earlier one.
        out.retain(|o| !(o.model == m.model && o.quant == m.quant && o.scale == m.scale));
        out.push(m);
    }
    Ok(Results { ppl: out, tasks })
}

fn task_line(r: &crate::eval::task::TaskResult, origin: String) -> Result<MeasuredTask> {
    if r.model.is_empty() || r.quant.is_empty() || r.task.is_empty() {
        bail!("{origin}: needs \"model\", \"quant\" and \"task\"");
    }
    if r.tasks == 0 {
        bail!("{origin}: \"tasks\" must be at least 1");
    }
    for (what, v) in [("acc", r.acc), ("acc_err", r.acc_err)] {
        if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
            bail!("{origin}: \"{what}\" must be a fraction from 0 to 1, got {v}");
        }
    }
    Ok(MeasuredTask {
        model: r.model.clone(),
        aliases: vec![r.file.clone()],
        quant: r.quant.clone(),
        task: r.task.clone(),
        tasks_sha256: r.tasks_sha256.clone(),
        tasks: r.tasks,
        acc: r.acc,
        acc_err: r.acc_err,
        origin,
    })
}
