//! Results measured with `quantfit eval` (the results file, one JSON object per line): they
//! take precedence over published and estimated figures. A measured PPL ratio against the
//! unquantized model carries over to the family's published scale (ratio x that scale's F16
//! figure); an absolute PPL stays on its own scale, the tokens it was measured on, so only
//! results on the same tokens and context compare.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::{Basis, Quality};

/// The fields of a results line that planning reads (eval lines; bench lines carry speed).
#[derive(Deserialize)]
struct Line {
    kind: Option<String>,
    model: Option<String>,
    file: Option<String>,
    quant: Option<String>,
    ppl: Option<f64>,
    ppl_ratio: Option<f64>,
    baseline_ppl: Option<f64>,
    kld_mean: Option<f64>,
    text: Option<String>,
    ctx: Option<u64>,
    tokens_sha256: Option<String>,
}

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

pub fn read_results(path: &Path) -> Result<Vec<Measured>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out: Vec<Measured> = Vec::new();
    for (i, raw) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{}: line {}", path.display(), i + 1);
        let line: Line =
            serde_json::from_str(raw).with_context(|| format!("{}: not a results line", at()))?;
        if line.kind.as_deref() == Some("bench") {
            continue;
        }
        let (Some(model), Some(quant)) = (line.model, line.quant) else {
            bail!("{}: needs \"model\" and \"quant\"", at());
        };
        let ratio = line
            .ppl_ratio
            .or_else(|| Some(line.ppl? / line.baseline_ppl?));
        if line.ppl.is_none() && ratio.is_none() {
            bail!("{}: needs \"ppl\" or \"ppl_ratio\"", at());
        }
        for (what, v) in [("ppl", line.ppl), ("ppl_ratio", ratio)] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                bail!("{}: \"{what}\" must be a positive number", at());
            }
        }
        let text_name = line.text.unwrap_or_else(|| "an unnamed text".into());
        let ctx = line.ctx.map_or("ctx ?".to_string(), |c| format!("ctx {c}"));
        let scale = match &line.tokens_sha256 {
            Some(h) => format!(
                "{text_name}, {ctx}, tokens {} (quantfit eval)",
                &h[..h.len().min(12)]
            ),
            None => format!("{text_name}, {ctx}, {model}'s tokenizer (quantfit eval)"),
        };
        let m = Measured {
            aliases: line.file.into_iter().collect(),
            model,
            quant,
            ppl: line.ppl,
            ratio,
            kld: line.kld_mean,
            scale,
            origin: at(),
        };
        // A later line for the same model, type and scale replaces an earlier one.
        out.retain(|o| !(o.model == m.model && o.quant == m.quant && o.scale == m.scale));
        out.push(m);
    }
    Ok(out)
}
