//! Results measured with `quantfit eval` (the results file, one JSON object per line): they
//! take precedence over published and estimated figures. A measured PPL ratio against the
//! unquantized model carries over to the family's published scale (ratio x that scale's F16
//! figure); an absolute PPL stays on its own scale, the tokens it was measured on, so only
//! results on the same tokens and context compare.

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

pub fn read_results(path: &Path) -> Result<Vec<Measured>> {
    let mut out: Vec<Measured> = Vec::new();
    for (n, record) in results::read(path)? {
        let at = || format!("{}: line {n}", path.display());
        // Task accuracy and speed lines carry no perplexity.
        let Record::Eval(line) = record else {
            continue;
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
    Ok(out)
}
