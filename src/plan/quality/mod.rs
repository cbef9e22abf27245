//! Expected quality per (model, file type) as an absolute perplexity on one scale per
//! tokenizer family (wikitext-2 test at ctx 512, as llama.cpp's published tables use), so that
//! model sizes compare: published cells (embedded, each with its source), estimates where a cell
//! is missing (a model fitted on the published cells, `fit`), and results measured with
//! `quantfit eval`, which take precedence (`measured`).

pub mod fit;
pub mod measured;
pub mod tasks;

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

/// The model's unquantized perplexity on its scale and where it comes from: its own published
/// figure, else its stand-in's (`quality_proxy`, same tokenizer and size), else the fitted level.
pub fn f16_base(m: &ModelSpec) -> Option<(f64, Basis, String)> {
    let pubd = published();
    if let Some(c) = pubd.find(&m.id, "F16", false) {
        return Some((c.ppl, Basis::Published, "the published F16 figure".into()));
    }
    if let Some(proxy) = m.quality_proxy.as_deref() {
        if let Some(c) = pubd.find(proxy, "F16", false) {
            return Some((
                c.ppl,
                Basis::Published,
                format!("the published F16 figure of {proxy} (same tokenizer and size; {} has none of its own)", m.name),
            ));
        }
    }
    let level = fit::fitted().predict(m, FileType::F16, false)?;
    let whose = match fit::fitted().model_index(&m.id) {
        Some(_) => "the fitted F16 level".to_string(),
        None => format!(
            "the fitted F16 level of {} (same tokenizer and size)",
            m.quality_proxy.as_deref().unwrap_or("?")
        ),
    };
    Some((level, Basis::Estimated, whose))
}

/// The model's unquantized perplexity on its scale: published (its own or its stand-in's),
/// else estimated.
pub fn f16_ppl(m: &ModelSpec) -> Option<f64> {
    f16_base(m).map(|b| b.0)
}

/// Whether an importance matrix can change the file (ggml ignores it for Q8_0 and F16).
fn takes_imatrix(ft: FileType) -> bool {
    ft.is_quantized() && ft.default_type().info().uses_imatrix
}

/// The expected perplexity of `m` quantized as `ft` (with an importance matrix when
/// `imatrix`) on its family's published scale: the published figure, else the estimate, which
/// is the fitted quantization loss on top of the model's F16 figure (so an estimate never
/// undercuts a published unquantized perplexity).
pub fn expected(m: &ModelSpec, ft: FileType, imatrix: bool) -> Option<Quality> {
    let scale_id = m.scale.as_deref()?;
    let scale = published().scale_label(scale_id)?.to_string();
    let imatrix = imatrix && takes_imatrix(ft);
    let fit = fit::fitted();
    let (base, _, base_text) = f16_base(m)?;
    let delta = |ppl: f64| (ppl / base - 1.0) * 100.0;
    let pubd = published();
    if let Some(c) = pubd.find(&m.id, lookup_name(ft), imatrix) {
        return Some(Quality {
            ppl: c.ppl,
            basis: Basis::Published,
            scale,
            delta_pct: Some(delta(c.ppl)),
            kld: c.kld,
            source: pubd.citation(c),
        });
    }
    let error = fit::summary_line(fit::held_out_median_pct(Some(scale_id)));
    // With an importance matrix and the plain file published: the published loss shrunk by the
    // fitted imatrix factor (the model's loss with an imatrix is exp(d) times the loss without).
    if imatrix {
        if let Some(c) = pubd.find(&m.id, lookup_name(ft), false) {
            let ppl = base * (c.ppl / base).powf(fit.imatrix_factor());
            return Some(Quality {
                ppl,
                basis: Basis::Estimated,
                scale,
                delta_pct: Some(delta(ppl)),
                kld: None,
                source: format!(
                    "the published figure without an importance matrix ({}) with the fitted importance-matrix factor; {error}",
                    pubd.citation(c)
                ),
            });
        }
    }
    let ppl = base * fit.loss(m, ft, imatrix)?.exp();
    Some(Quality {
        ppl,
        basis: Basis::Estimated,
        scale,
        delta_pct: Some(delta(ppl)),
        kld: None,
        source: format!("{error}, on top of {base_text}"),
    })
}

/// For a model whose family has no published perplexity: the quantization loss relative to its
/// own F16, percent, from the fit with the fitted families' mean offset. It orders a model's
/// own types (and breaks its ties); it compares nothing across models.
pub fn relative_loss_pct(m: &ModelSpec, ft: FileType, imatrix: bool) -> Option<f64> {
    let imatrix = imatrix && takes_imatrix(ft);
    fit::fitted()
        .generic_loss(m, ft, imatrix)
        .map(|l| (l.exp() - 1.0) * 100.0)
}
