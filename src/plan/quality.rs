//! Quality loss per file type: published llama.cpp measurements (embedded, with provenance) and,
//! taking precedence, results measured by the user.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Quality {
    /// Perplexity increase over the unquantized model, percent.
    pub delta_pct: f64,
    pub kld: Option<f64>,
    pub source: String,
}

const L3_SOURCE: &str = "llama.cpp tools/perplexity/README.md, 'LLaMA 3 8b Scoreboard' (f364eb6f, wikitext-2, no imatrix; IQ4 rows with imatrix)";
const L2_SOURCE: &str = "llama.cpp tools/perplexity/README.md, 'LLaMA 2 vs. LLaMA 3 Quantization comparison' (f364eb6f, Llama-2-7B, wikitext-2)";

/// Llama-3-8B: PPL per type; the unquantized PPL is 6.233160 - 0.001524 (f16's own ΔPPL
/// against the FP32 base in the same table).
const LLAMA3_8B: &[(&str, f64, f64)] = &[
    ("F16", 6.233160, 0.000551),
    ("BF16", 6.233160, 0.000551),
    ("Q8_0", 6.234284, 0.001355),
    ("Q6_K", 6.253382, 0.005452),
    ("Q5_K_M", 6.288607, 0.010762),
    ("Q5_K_S", 6.336598, 0.016595),
    ("Q5_1", 6.337857, 0.018045),
    ("Q5_0", 6.363224, 0.022239),
    ("Q4_K_M", 6.407115, 0.031273),
    ("Q4_K_S", 6.500529, 0.043136),
    ("IQ4_NL", 6.455593, 0.035742),
    ("IQ4_XS", 6.459705, 0.036334),
    ("Q4_1", 6.682737, 0.071683),
    ("Q4_0", 6.700147, 0.071940),
    ("Q3_K_L", 6.787876, 0.087176),
    ("Q3_K_M", 6.888498, 0.101913),
    ("Q3_K_S", 7.863786, 0.228217),
    ("Q2_K", 9.751568, 0.445132),
];
const LLAMA3_BASE_PPL: f64 = 6.233160 - 0.001524;

/// Llama-2-7B: mean PPL ratio (quantized / FP16) and mean KLD.
const LLAMA2_7B: &[(&str, f64, f64)] = &[
    ("Q2_K", 1.107955, 0.108903),
    ("Q4_K_M", 1.014242, 0.012686),
    ("Q6_K", 1.002406, 0.002098),
    ("Q8_0", 1.000689, 0.000369),
];

/// Published quality loss for a model family and file type; `None` when nothing was published.
pub fn published(family: &str, model_name: &str, quant: &str) -> Option<Quality> {
    if quant == "F32" {
        return Some(Quality {
            delta_pct: 0.0,
            kld: Some(0.0),
            source: "unquantized".into(),
        });
    }
    if family == "llama-2" {
        if quant == "F16" || quant == "BF16" {
            return Some(Quality {
                delta_pct: 0.0,
                kld: None,
                source: format!("{L2_SOURCE}: the FP16 base"),
            });
        }
        if let Some((_, ratio, kld)) = LLAMA2_7B.iter().find(|(q, _, _)| *q == quant) {
            let scope = if model_name.contains("7B") {
                String::new()
            } else {
                " (7B figures for the family)".into()
            };
            return Some(Quality {
                delta_pct: (ratio - 1.0) * 100.0,
                kld: Some(*kld),
                source: format!("{L2_SOURCE}{scope}"),
            });
        }
        // Nothing published for this type on Llama 2: say so rather than mix families.
        return None;
    }
    let (_, ppl, kld) = LLAMA3_8B.iter().find(|(q, _, _)| *q == quant)?;
    let scope = if family == "llama-3" && model_name.contains("8B") {
        String::new()
    } else {
        format!(" (Llama-3-8B figures as a proxy for {model_name})")
    };
    Some(Quality {
        delta_pct: (ppl / LLAMA3_BASE_PPL - 1.0) * 100.0,
        kld: Some(*kld),
        source: format!("{L3_SOURCE}{scope}"),
    })
}

/// A measured result (from a results file: one JSON object per line with `model`, `quant`, `ppl`
/// and `baseline_ppl`, or `ppl_ratio`; optional `kld_mean`).
#[derive(Clone, Debug)]
pub struct Measured {
    pub model: String,
    /// Other names the same model goes by in the line (`file`: the GGUF or folder name).
    pub aliases: Vec<String>,
    pub quant: String,
    pub quality: Quality,
}

pub fn read_results(path: &std::path::Path) -> anyhow::Result<Vec<Measured>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: not JSON", path.display(), i + 1))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
        let (Some(model), Some(quant)) = (s("model"), s("quant")) else {
            anyhow::bail!(
                "{}: line {}: needs \"model\" and \"quant\"",
                path.display(),
                i + 1
            );
        };
        let ratio = f("ppl_ratio").or_else(|| Some(f("ppl")? / f("baseline_ppl")?));
        // `quantfit bench` lines carry speed, and an eval without --baseline (or the
        // baseline's own line) has no ratio to express quality with: neither is an error.
        let kind = s("kind");
        if kind.as_deref() == Some("bench") || (kind.as_deref() == Some("eval") && ratio.is_none())
        {
            continue;
        }
        let Some(ratio) = ratio else {
            anyhow::bail!(
                "{}: line {}: needs \"ppl_ratio\" or \"ppl\" and \"baseline_ppl\"",
                path.display(),
                i + 1
            );
        };
        out.push(Measured {
            aliases: s("file").into_iter().collect(),
            model,
            quant,
            quality: Quality {
                delta_pct: (ratio - 1.0) * 100.0,
                kld: f("kld_mean"),
                source: format!("measured: {} line {}", path.display(), i + 1),
            },
        });
    }
    Ok(out)
}
