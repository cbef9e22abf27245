//! Licences in the three parts a deployment must be covered in: the architecture's reference
//! code, the weights, and the training data. From the catalog, from a model card's front
//! matter or from GGUF `general.*` metadata; a fine-tune inherits its base model's terms, and a
//! part nobody states says `unknown`, never nothing.

use serde::{Deserialize, Serialize};

use super::catalog;
use crate::gguf::GgufFile;
use crate::source::hf::ModelCard;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Licence {
    pub architecture: String,
    pub weights: String,
    /// The weights licence's key terms in one line.
    pub weights_terms: String,
    pub data: String,
    /// Where the three parts come from.
    pub source: String,
}

/// What a model's own files say, before the base model's terms are folded in.
struct Stated<'a> {
    licence: Option<String>,
    link: Option<String>,
    base_models: Vec<String>,
    datasets: Vec<String>,
    /// The code that runs the architecture when nothing else says (e.g. transformers' class).
    architecture: String,
    origin: &'a str,
}

/// Key terms of the licences model cards name most (Hugging Face licence identifiers).
fn terms_of(licence: &str) -> Option<&'static str> {
    let l = licence.to_ascii_lowercase();
    Some(match l.as_str() {
        "apache-2.0" => "permissive: use, modify, redistribute with notice; patent grant",
        "mit" => "permissive: use, modify, redistribute with notice",
        "bsd-3-clause" => "permissive: use, modify, redistribute with notice",
        "cc-by-4.0" => "use and share with attribution",
        "cc-by-sa-4.0" => "use and share with attribution; derivatives under the same licence",
        "cc-by-nc-4.0" | "cc-by-nc-sa-4.0" => "non-commercial use only, with attribution",
        "llama2" => "services with over 700 million monthly active users need a licence from Meta; acceptable use policy",
        "llama3" | "llama3.1" | "llama3.2" | "llama3.3" => "over 700 million monthly active users need a licence from Meta; 'Built with Llama' attribution; acceptable use policy",
        "gemma" => "Gemma Terms of Use: prohibited-use policy; restrictions pass on to derivatives",
        "qwen" | "tongyi-qianwen" => "services with over 100 million monthly active users need a licence from Alibaba Cloud",
        _ => return None,
    })
}

fn assemble(s: Stated) -> Licence {
    let base = s.base_models.iter().find_map(|b| catalog::by_repo(b));
    let base_name = s.base_models.first().cloned();
    let own = s.licence.map(|l| match &s.link {
        Some(link) => format!("{l} ({link})"),
        None => l,
    });
    let own_terms = own
        .as_deref()
        .and_then(|l| terms_of(l.split(' ').next().unwrap_or(l)));
    let (weights, weights_terms) = match (&own, &base) {
        (Some(l), Some(b)) => (
            format!(
                "{l}; a fine-tune of {}, whose terms apply too: {}",
                b.name, b.license.weights
            ),
            format!(
                "{}; base model: {}",
                own_terms.unwrap_or("see the licence text"),
                b.license.weights_terms
            ),
        ),
        (Some(l), None) => match &base_name {
            Some(n) => (
                format!("{l}; a fine-tune of {n}, which is not in the catalog: its terms may apply too, check them"),
                own_terms.unwrap_or("see the licence text").to_string(),
            ),
            None => (l.clone(), own_terms.unwrap_or("see the licence text").to_string()),
        },
        (None, Some(b)) => (
            format!(
                "{} (inherited: a fine-tune of {}; {} names no licence)",
                b.license.weights, b.name, s.origin
            ),
            b.license.weights_terms.clone(),
        ),
        (None, None) => (
            match &base_name {
                Some(n) => format!(
                    "unknown ({} names no licence; its base model {n} is not in the catalog: check that model's terms)",
                    s.origin
                ),
                None => format!("unknown ({} names no licence)", s.origin),
            },
            "unknown".to_string(),
        ),
    };
    let data = match (s.datasets.is_empty(), &base) {
        (false, Some(b)) => format!(
            "trained on {} (each under its own terms); base model {}: {}",
            s.datasets.join(", "),
            b.name,
            b.license.data
        ),
        (false, None) => format!(
            "trained on {} (each under its own terms)",
            s.datasets.join(", ")
        ),
        (true, Some(b)) => format!("inherited from base model {}: {}", b.name, b.license.data),
        (true, None) => format!("unknown ({} names no training data)", s.origin),
    };
    let architecture = match &base {
        Some(b) => format!("{} (inherited from {})", b.license.architecture, b.name),
        None => s.architecture,
    };
    let source = match &base {
        Some(b) => format!(
            "{}; base model from the catalog: {}",
            s.origin, b.license.source
        ),
        None => s.origin.to_string(),
    };
    Licence {
        architecture,
        weights,
        weights_terms,
        data,
        source,
    }
}

/// The licence of a Hugging Face folder, from its model card (README.md front matter).
pub fn from_card(card: &ModelCard, arch_class: &str, custom_code: bool, origin: &str) -> Licence {
    let licence = match (&card.license, &card.license_name) {
        (Some(l), Some(n)) if l == "other" => Some(n.clone()),
        (Some(l), _) => Some(l.clone()),
        (None, n) => n.clone(),
    };
    let architecture = if custom_code {
        format!(
            "unknown (the folder ships its own modelling code for {arch_class}: see its licence)"
        )
    } else {
        format!("Apache-2.0 (the {arch_class} implementation in Hugging Face transformers; llama.cpp's is MIT)")
    };
    assemble(Stated {
        licence,
        link: card.license_link.clone(),
        base_models: card.base_models.clone(),
        datasets: card.datasets.clone(),
        architecture,
        origin,
    })
}

/// The licence a GGUF file states in `general.license*`, `general.base_model.*` and
/// `general.dataset.*` (the keys llama.cpp's converter writes from the model card).
pub fn from_gguf(f: &GgufFile, origin: &str) -> Licence {
    let s = |k: &str| f.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let count = |k: &str| f.get(k).and_then(|v| v.as_u64()).unwrap_or(0).min(64);
    let repo_of = |prefix: &str| {
        s(&format!("{prefix}.repo_url"))
            .map(|u| {
                u.trim_start_matches("https://huggingface.co/")
                    .trim_end_matches('/')
                    .to_string()
            })
            .or_else(|| {
                match (
                    s(&format!("{prefix}.organization")),
                    s(&format!("{prefix}.name")),
                ) {
                    (Some(o), Some(n)) => Some(format!("{o}/{n}")),
                    (None, Some(n)) => Some(n),
                    _ => None,
                }
            })
    };
    let base_models = (0..count("general.base_model.count"))
        .filter_map(|i| repo_of(&format!("general.base_model.{i}")))
        .collect();
    let datasets = (0..count("general.dataset.count"))
        .filter_map(|i| repo_of(&format!("general.dataset.{i}")))
        .collect();
    let licence = s("general.license.name").or_else(|| s("general.license"));
    let arch = s("general.architecture").unwrap_or_else(|| "unknown".into());
    assemble(Stated {
        licence,
        link: s("general.license.link"),
        base_models,
        datasets,
        architecture: format!("MIT (llama.cpp's {arch} implementation); the reference code's own licence is not recorded in the file"),
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fine_tune_inherits_and_unknown_parts_say_so() {
        let card = ModelCard::parse(
            "---\nlicense: apache-2.0\nbase_model: meta-llama/Llama-2-7b-hf\ndatasets:\n- my/data\n---\n",
        );
        let l = from_card(&card, "LlamaForCausalLM", false, "x/README.md");
        assert!(
            l.weights
                .starts_with("apache-2.0; a fine-tune of Llama-2-7B"),
            "{}",
            l.weights
        );
        assert!(l.weights.contains("Llama 2 Community License"));
        assert!(
            l.weights_terms.contains("700 million"),
            "{}",
            l.weights_terms
        );
        assert!(
            l.data.contains("my/data") && l.data.contains("Llama-2-7B"),
            "{}",
            l.data
        );
        assert!(l.architecture.contains("inherited from Llama-2-7B"));

        let bare = from_card(
            &ModelCard::default(),
            "LlamaForCausalLM",
            false,
            "y/README.md",
        );
        for part in [&bare.weights, &bare.weights_terms, &bare.data] {
            assert!(part.starts_with("unknown"), "{part}");
        }
        assert!(bare.architecture.contains("Apache-2.0"));
        let custom = from_card(&ModelCard::default(), "FooForCausalLM", true, "z");
        assert!(custom.architecture.starts_with("unknown"));
    }
}
