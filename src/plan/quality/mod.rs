//! Expected quality per (model, file type) as an absolute perplexity on one scale per
//! tokenizer family (wikitext-2 test at ctx 512, as llama.cpp's published tables use), so that
//! model sizes compare: published cells (embedded, each with its source), estimates where a cell
//! is missing (a model fitted on the published cells, `fit`), and results measured with
//! `quantfit eval`, which take precedence (`measured`).

pub mod fit;
pub mod measured;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::catalog::ModelSpec;
use crate::quant::rules::FileType;

/// Where a perplexity comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    Published,
    Estimated,
    Measured,
}

impl Basis {
    pub fn name(self) -> &'static str {
        match self {
            Basis::Published => "published",
            Basis::Estimated => "estimated",
            Basis::Measured => "measured",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Quality {
    /// Expected perplexity (lower is better).
    pub ppl: f64,
    pub basis: Basis,
    /// What the perplexity is on: values on different scales must not be compared.
    pub scale: String,
    /// Perplexity increase over the same model's F16 on the same scale, percent.
    pub delta_pct: Option<f64>,
    /// Mean KL divergence from FP16, where published or measured.
    pub kld: Option<f64>,
    pub source: String,
}

/// One published perplexity (src/plan/quality/published.toml).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    pub model: String,
    pub quant: String,
    #[serde(default)]
    pub imatrix: bool,
    pub ppl: f64,
    pub gib: Option<f64>,
    pub kld: Option<f64>,
    #[serde(default = "current_by_default")]
    pub current: bool,
    pub src: String,
    pub note: Option<String>,
}

fn current_by_default() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub id: String,
    pub label: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishedFile {
    cell: Vec<Cell>,
    scale: Vec<Scale>,
    source: BTreeMap<String, String>,
}

pub struct Published {
    pub cells: Vec<Cell>,
    pub scales: Vec<Scale>,
    sources: BTreeMap<String, String>,
}

impl Published {
    pub fn scale_label(&self, id: &str) -> Option<&str> {
        self.scales
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.label.as_str())
    }

    /// The citation of a cell: its source and, where the figure was derived, how.
    pub fn citation(&self, c: &Cell) -> String {
        let src = self.sources.get(&c.src).map_or(c.src.as_str(), |s| s);
        match &c.note {
            Some(n) => format!("{src}; {n}"),
            None => src.to_string(),
        }
    }

    /// The published cell for today's recipe of `quant` on `model`, if any.
    pub fn find(&self, model: &str, quant: &str, imatrix: bool) -> Option<&Cell> {
        let unquantized = fit::Class::of(quant) == fit::Class::Unquantized;
        self.cells.iter().find(|c| {
            c.current
                && c.model == model
                && c.quant == quant
                && (unquantized || c.imatrix == imatrix)
        })
    }
}

/// The embedded published cells, parsed once.
pub fn published() -> &'static Published {
    static P: OnceLock<Published> = OnceLock::new();
    P.get_or_init(|| {
        let f: PublishedFile = toml::from_str(include_str!("published.toml"))
            .expect("embedded published.toml is valid");
        Published {
            cells: f.cell,
            scales: f.scale,
            sources: f.source,
        }
    })
}

/// The type whose published figure stands for `ft`: BF16 and F32 are lossless like F16 (the
/// F16/BF16 difference is 0.04% PPL on Llama-3-8B, llama.cpp's 'BF16 vs. FP16' table).
fn lookup_name(ft: FileType) -> &'static str {
    match ft {
        FileType::F32 | FileType::BF16 => "F16",
        other => other.name(),
    }
}

/// The expected perplexity of `m` quantized as `ft` (with an importance matrix when
/// `imatrix`) on its family's published scale: the published figure, else the estimate.
pub fn expected(m: &ModelSpec, ft: FileType, imatrix: bool) -> Option<Quality> {
    let scale = published().scale_label(m.scale.as_deref()?)?.to_string();
    let fit = fit::fitted();
    let base = f16_ppl(m);
    let delta = |ppl: f64| base.map(|b| (ppl / b - 1.0) * 100.0);
    if let Some(c) = published().find(&m.id, lookup_name(ft), imatrix) {
        return Some(Quality {
            ppl: c.ppl,
            basis: Basis::Published,
            scale,
            delta_pct: delta(c.ppl),
            kld: c.kld,
            source: published().citation(c),
        });
    }
    // The fitted loss on top of the model's F16 figure (published where it exists, so an
    // estimate never undercuts the published unquantized perplexity).
    let ppl = base? * fit.loss(m, ft, imatrix)?.exp();
    let stand_in = match fit.model_index(&m.id) {
        Some(_) => String::new(),
        None => format!(
            "; F16 level of {} (same tokenizer, no published figures of its own)",
            m.quality_proxy.as_deref().unwrap_or("?")
        ),
    };
    let level = if published().find(&m.id, "F16", false).is_some() {
        "the published F16 figure"
    } else {
        "the fitted F16 level"
    };
    Some(Quality {
        ppl,
        basis: Basis::Estimated,
        scale,
        delta_pct: delta(ppl),
        kld: None,
        source: format!(
            "{} on top of {level}{stand_in}",
            fit::summary_line(fit::held_out_median_pct())
        ),
    })
}

/// The model's unquantized perplexity on its scale: published, else estimated.
pub fn f16_ppl(m: &ModelSpec) -> Option<f64> {
    published()
        .find(&m.id, "F16", false)
        .map(|c| c.ppl)
        .or_else(|| fit::fitted().predict(m, FileType::F16, false))
}
