//! A model folder's descriptive metadata: the model card's YAML front matter, config.json's
//! `_name_or_path`, the folder's name and generation_config.json, turned into GGUF `general.*`
//! keys by the heuristics of llama.cpp's gguf-py (`gguf/metadata.py`: `Metadata.load`,
//! `apply_metadata_heuristic`, `get_model_id_components`, `set_gguf_meta_model`), so that a
//! converted file names its model, base models, datasets and licence as llama.cpp's does.

use std::path::Path;

use regex::Regex;
use serde_json::Value as Json;
use yaml_rust2::{Yaml, YamlLoader};

/// What the model card's front matter says. The licence and lineage fields are what the
/// planner reports; `front` is the whole front matter for the converter's metadata.
#[derive(Clone, Debug, Default)]
pub struct ModelCard {
    pub license: Option<String>,
    pub license_name: Option<String>,
    pub license_link: Option<String>,
    /// The first base model (`base_model`, a string or a list).
    pub base_model: Option<String>,
    /// Every base model listed that names a repository.
    pub base_models: Vec<String>,
    /// `datasets`: the data the model was trained or fine-tuned on, as the card names it.
    pub datasets: Vec<String>,
    front: Option<Yaml>,
}

/// A `general.*` value in the GGUF kinds llama.cpp uses for these keys.
#[derive(Clone, Debug, PartialEq)]
pub enum GeneralValue {
    Str(String),
    U32(u32),
    I32(i32),
    F32(f32),
    Strings(Vec<String>),
}

impl ModelCard {
    /// Reads the front matter as gguf-py does: the lines between a first line `---` and the
    /// next `---`, tabs as two spaces. A card whose front matter is not a YAML mapping has none.
    pub fn parse(text: &str) -> ModelCard {
        let mut lines = text.lines();
        if lines.next() != Some("---") {
            return ModelCard::default();
        }
        let body: Vec<&str> = lines.take_while(|l| *l != "---").collect();
        let yaml = (body.join("\n") + "\n").replace('\t', "  ");
        let front = YamlLoader::load_from_str(&yaml)
            .ok()
            .and_then(|docs| docs.into_iter().next())
            .filter(|d| matches!(d, Yaml::Hash(_)));
        let Some(front) = front else {
            return ModelCard::default();
        };
        let text = |key: &str| scalar(&front[key]).filter(|s| !s.is_empty());
        let list = |key: &str| -> Vec<String> {
            match &front[key] {
                Yaml::Array(items) => items.iter().filter_map(scalar).collect(),
                v => scalar(v).into_iter().collect(),
            }
        };
        let license = license_text(&front["license"]);
        let mut base_models = list("base_model");
        base_models.retain(|b| !b.is_empty() && b != "none");
        ModelCard {
            license: license.filter(|s| !s.is_empty()),
            license_name: text("license_name"),
            license_link: text("license_link"),
            base_model: base_models.first().cloned(),
            base_models,
            datasets: list("datasets"),
            front: Some(front),
        }
    }

    fn get(&self, key: &str) -> Option<&Yaml> {
        let v = &self.front.as_ref()?[key];
        (!v.is_badvalue()).then_some(v)
    }
}

/// A YAML scalar as Python's `str()` would print the value gguf-py writes.
fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(if *b { "True" } else { "False" }.into()),
        _ => None,
    }
}

/// A card's `license`: one value, or a list joined with commas as gguf-py writes it.
fn license_text(v: &Yaml) -> Option<String> {
    match v {
        Yaml::Array(items) => Some(
            items
                .iter()
                .filter_map(scalar)
                .collect::<Vec<_>>()
                .join(","),
        ),
        v => scalar(v),
    }
}

/// The parts gguf-py reads out of a model id such as `meta-llama/Llama-3.1-8B-Instruct`.
#[derive(Debug, Default, PartialEq)]
struct IdParts {
    full_name: Option<String>,
    org: Option<String>,
    basename: Option<String>,
    finetune: Option<String>,
    version: Option<String>,
    size_label: Option<String>,
}

/// gguf-py `Metadata.id_to_title`: words title-cased unless they hold capitals already or
/// are versions and numbers.
fn id_to_title(s: &str) -> String {
    let keep = Regex::new(r"^(v\d+(?:\.\d+)*|\d.*)$").unwrap();
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            if py_islower(w) && !keep.is_match(w) {
                py_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_cased(c: char) -> bool {
    c.is_lowercase() || c.is_uppercase()
}

/// Python's `str.islower`: some cased character, none of them upper case.
fn py_islower(w: &str) -> bool {
    w.chars().any(is_cased) && !w.chars().any(char::is_uppercase)
}

/// Python's `str.title`: a cased character after an uncased one goes upper, the rest lower.
fn py_title(w: &str) -> String {
    let mut out = String::with_capacity(w.len());
    let mut prev_cased = false;
    for c in w.chars() {
        if prev_cased {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_cased = is_cased(c);
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Basename,
    SizeLabel,
    Finetune,
    Version,
    Type,
}

/// gguf-py `Metadata.get_model_id_components`.
fn id_parts(model_id: &str, total_params: u64) -> IdParts {
    if model_id.contains(' ') {
        return IdParts {
            full_name: Some(model_id.to_string()),
            ..IdParts::default()
        };
    }
    let (mut org, full) = match model_id.split_once('/') {
        Some((o, f)) => (Some(o.to_string()), f.to_string()),
        None => (None, model_id.to_string()),
    };
    if org.as_deref().is_some_and(|o| o.starts_with('.')) {
        org = None;
    }
    let mut parts: Vec<String> = full
        .split('-')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let mut types: Vec<Vec<Part>> = vec![Vec::new(); parts.len()];
    let version = Regex::new(r"(?i)^(v|iter)?\d+([.]\d+)*$").unwrap();
    let quant = Regex::new(r"(?i)^(i?q\d(_\w)*|b?fp?(16|32))$").unwrap();
    let size =
        Regex::new(r"(?i)^(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)$")
            .unwrap();
    let finetune = Regex::new(r"(?i)^(chat|instruct|vision|lora)$").unwrap();
    for i in 0..parts.len() {
        let part = parts[i].clone();
        if version.is_match(&part) {
            types[i].push(Part::Version);
        } else if quant.is_match(&part) {
            types[i].push(Part::Type);
            parts[i] = part.to_uppercase();
        } else if i > 0 && size.is_match(&part) {
            let mut p: Vec<char> = part.replace('_', ".").chars().collect();
            // bloom-7b1 means 7.1B.
            if p.last().is_some_and(|c| c.is_ascii_digit()) && p.len() >= 2 {
                let n = p.len();
                let (a, b) = (p[n - 2], p[n - 1]);
                p.truncate(n - 2);
                p.extend(['.', b, a]);
            }
            let n = p.len();
            if n > 1 && p[n - 2].is_ascii_digit() && "kmbt".contains(p[n - 1]) {
                p[n - 1] = p[n - 1].to_ascii_uppercase();
            }
            if total_params != 0 {
                let unit = " KMBT".find(p[n - 1]);
                let number: String = p[..n - 1].iter().collect();
                if let (Some(unit), Ok(x)) = (unit, number.parse::<f64>()) {
                    let label = x * 1000f64.powi(unit as i32);
                    let total = total_params as f64;
                    // Far from the model's size: a context length, not a size.
                    if (label - total).abs() > (7 * total_params / 8) as f64 {
                        types[i].push(Part::Finetune);
                        p[n - 1] = p[n - 1].to_ascii_lowercase();
                    }
                }
            }
            if types[i].is_empty() {
                types[i].push(Part::SizeLabel);
            }
            parts[i] = p.into_iter().collect();
        } else if i > 0 && finetune.is_match(&part) {
            types[i].push(Part::Finetune);
        }
    }
    // Word sizes ("small") give way to a numeric one.
    let numeric_size = parts
        .iter()
        .zip(&types)
        .any(|(p, t)| t.contains(&Part::SizeLabel) && p.chars().any(|c| c.is_ascii_digit()));
    if numeric_size {
        for (p, t) in parts.iter().zip(types.iter_mut()) {
            if t.contains(&Part::SizeLabel) && p.chars().all(char::is_alphabetic) {
                t.retain(|x| *x != Part::SizeLabel);
            }
        }
    }
    let mut at_start = true;
    for (p, t) in parts.iter().zip(types.iter_mut()) {
        let alpha_first = p.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((t.is_empty() && alpha_first) || t.contains(&Part::Version)) {
            t.push(Part::Basename);
        } else {
            at_start = false;
            if t.is_empty() {
                t.push(Part::Finetune);
            }
        }
    }
    for t in types.iter_mut().rev() {
        if t.contains(&Part::Basename) && t.len() > 1 {
            t.retain(|x| *x != Part::Basename);
        } else {
            break;
        }
    }
    let join = |want: Part, exclude: Option<Part>| -> Option<String> {
        let mut seen: Vec<&str> = Vec::new();
        for (p, t) in parts.iter().zip(&types) {
            if t.contains(&want) && exclude.is_none_or(|x| !t.contains(&x)) {
                if want == Part::SizeLabel && seen.contains(&p.as_str()) {
                    continue;
                }
                seen.push(p);
            }
        }
        (!seen.is_empty()).then(|| seen.join("-"))
    };
    let mut out = IdParts {
        full_name: Some(full.clone()),
        org,
        basename: join(Part::Basename, None),
        size_label: join(Part::SizeLabel, None),
        finetune: join(Part::Finetune, None),
        version: join(Part::Version, Some(Part::Basename)),
    };
    if out.size_label.is_none() && out.finetune.is_none() && out.version.is_none() {
        out.basename = None;
    }
    out
}

/// One base model or dataset entry (`general.base_model.N.*`, `general.dataset.N.*`).
type Entry = Vec<(&'static str, String)>;

/// The keys of an entry, in the order gguf-py writes them.
const ENTRY_KEYS: [&str; 9] = [
    "name",
    "author",
    "version",
    "organization",
    "description",
    "url",
    "doi",
    "uuid",
    "repo_url",
];

/// A base model or dataset as the card gives it: a Hugging Face id, a URL or a mapping.
fn entry(item: &Yaml, total_params: u64) -> Entry {
    let mut e: Entry = Vec::new();
    let add_parts = |e: &mut Entry, parts: &IdParts| {
        if let Some(n) = &parts.full_name {
            e.push(("name", id_to_title(n)));
        }
        if let Some(o) = &parts.org {
            e.push(("organization", id_to_title(o)));
        }
        if let Some(v) = &parts.version {
            e.push(("version", v.clone()));
        }
    };
    match item {
        Yaml::String(id) => {
            if ["http://", "https://", "ssh://"]
                .iter()
                .any(|p| id.starts_with(p))
            {
                e.push(("repo_url", id.clone()));
                let hf = Regex::new(r"^https?://huggingface.co/([^/]+/[^/]+)$").unwrap();
                if id.contains("huggingface.co") {
                    if let Some(m) = hf.captures(id) {
                        add_parts(&mut e, &id_parts(&m[1], total_params));
                    }
                }
            } else {
                let parts = id_parts(id, total_params);
                add_parts(&mut e, &parts);
                if let (Some(o), Some(n)) = (&parts.org, &parts.full_name) {
                    e.push(("repo_url", format!("https://huggingface.co/{o}/{n}")));
                }
            }
        }
        Yaml::Hash(h) => {
            for (k, v) in h {
                if let (Some(k), Some(v)) = (k.as_str(), scalar(v)) {
                    if let Some(key) = ENTRY_KEYS.iter().find(|x| **x == k) {
                        e.push((key, v));
                    }
                }
            }
        }
        // gguf-py logs an error and keeps an empty entry.
        _ => {}
    }
    e
}

/// Everything gguf-py's `Metadata` holds, in `set_gguf_meta_model`'s key order.
#[derive(Default)]
struct Meta {
    name: Option<String>,
    author: Option<String>,
    version: Option<String>,
    organization: Option<String>,
    finetune: Option<String>,
    basename: Option<String>,
    description: Option<String>,
    size_label: Option<String>,
    license: Option<String>,
    license_name: Option<String>,
    license_link: Option<String>,
    source_url: Option<String>,
    source_doi: Option<String>,
    source_uuid: Option<String>,
    source_repo_url: Option<String>,
    base_models: Option<Vec<Entry>>,
    datasets: Option<Vec<Entry>>,
    tags: Option<Vec<String>>,
    languages: Option<Vec<String>>,
}

impl Meta {
    fn fill_from_id(&mut self, parts: IdParts) {
        let set = |slot: &mut Option<String>, v: Option<String>| {
            if slot.is_none() {
                *slot = v;
            }
        };
        set(&mut self.name, parts.full_name.as_deref().map(id_to_title));
        set(
            &mut self.organization,
            parts.org.as_deref().map(id_to_title),
        );
        set(&mut self.basename, parts.basename);
        set(&mut self.finetune, parts.finetune);
        set(&mut self.version, parts.version);
        set(&mut self.size_label, parts.size_label);
    }
}

/// The inputs of a folder's `general.*` metadata.
pub struct FolderFacts<'a> {
    pub card: &'a ModelCard,
    pub config: &'a Json,
    /// generation_config.json, when present and valid.
    pub generation: Option<&'a Json>,
    pub folder: &'a Path,
    /// Every parameter of the converted file (the tensors written).
    pub total_params: u64,
    /// llama.cpp's size label from the parameter count, used when no name gives one.
    pub size_label: String,
}

fn heuristics(f: &FolderFacts) -> Meta {
    let mut m = Meta::default();
    let card = f.card;
    let take = |slot: &mut Option<String>, key: &str| {
        if slot.is_none() {
            if let Some(v) = card.get(key) {
                // gguf-py stores whatever the card holds; only scalars can be written.
                *slot = scalar(v);
            }
        }
    };
    for prefix in ["", "model_"] {
        let key = |k: &str| format!("{prefix}{k}");
        take(&mut m.name, &key("name"));
        take(&mut m.author, &key("author"));
        take(&mut m.version, &key("version"));
        take(&mut m.organization, &key("organization"));
        take(&mut m.description, &key("description"));
        take(&mut m.finetune, &key("finetune"));
        take(&mut m.basename, &key("basename"));
        take(&mut m.size_label, &key("size_label"));
        take(&mut m.source_url, &key("url"));
        take(&mut m.source_doi, &key("doi"));
        take(&mut m.source_uuid, &key("uuid"));
        take(&mut m.source_repo_url, &key("repo_url"));
    }
    take(&mut m.name, "model_name");
    take(&mut m.author, "model_creator");
    take(&mut m.basename, "model_type");
    let entries = |keys: [&str; 3]| -> Option<Vec<Entry>> {
        let present = keys.iter().find_map(|k| card.get(k))?;
        Some(match present {
            Yaml::Array(items) => items.iter().map(|i| entry(i, f.total_params)).collect(),
            Yaml::Null => Vec::new(),
            one => vec![entry(one, f.total_params)],
        })
    };
    m.base_models = entries(["base_model", "base_models", "base_model_sources"]);
    m.datasets = entries(["datasets", "dataset", "dataset_sources"]);
    if let Some(v) = card.get("license") {
        m.license = license_text(v);
    }
    take(&mut m.license_name, "license_name");
    take(&mut m.license_link, "license_link");
    let array = |keys: [&str; 2]| -> Option<Vec<String>> {
        let mut out: Option<Vec<String>> = None;
        for k in keys {
            match card.get(k) {
                None | Some(Yaml::Null) => {}
                Some(Yaml::Array(items)) => out
                    .get_or_insert_with(Vec::new)
                    .extend(items.iter().filter_map(scalar)),
                Some(v) => out.get_or_insert_with(Vec::new).extend(scalar(v)),
            }
        }
        out
    };
    m.tags = array(["tags", "pipeline_tag"]);
    m.languages = array(["languages", "language"]);

    if let Some(id) = f.config.get("_name_or_path").and_then(Json::as_str) {
        if id.matches('/').count() <= 1 {
            m.fill_from_id(id_parts(id, f.total_params));
        }
    }
    m.fill_from_id(id_parts(&folder_name(f.folder), f.total_params));
    if m.size_label.is_none() && f.total_params > 0 {
        m.size_label = Some(f.size_label.clone());
    }
    m
}

/// The folder's own name as given (a symbolic link keeps its name), else its real name.
fn folder_name(folder: &Path) -> String {
    folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            folder
                .canonicalize()
                .ok()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
}

/// The name llama.cpp's converter gives the folder's model (`general.name`).
pub fn model_name(f: &FolderFacts) -> String {
    heuristics(f).name.unwrap_or_else(|| folder_name(f.folder))
}

/// The `general.*` keys llama.cpp's converter writes after `general.type`, in its order:
/// sampling defaults from generation_config.json, names, size label, licence, sources, base
/// models, datasets, tags and languages.
pub fn general_metadata(f: &FolderFacts) -> Vec<(String, GeneralValue)> {
    let mut kv = sampling(f.generation);
    let m = heuristics(f);
    let name = m.name.clone().unwrap_or_else(|| folder_name(f.folder));
    let mut push = |key: &str, v: &Option<String>| {
        if let Some(v) = v {
            kv.push((format!("general.{key}"), GeneralValue::Str(v.clone())));
        }
    };
    push("name", &Some(name));
    push("author", &m.author);
    push("version", &m.version);
    push("organization", &m.organization);
    push("finetune", &m.finetune);
    push("basename", &m.basename);
    push("description", &m.description);
    push("size_label", &m.size_label);
    push("license", &m.license);
    push("license.name", &m.license_name);
    push("license.link", &m.license_link);
    push("source.url", &m.source_url);
    push("source.doi", &m.source_doi);
    push("source.uuid", &m.source_uuid);
    push("source.repo_url", &m.source_repo_url);
    for (group, entries) in [("base_model", &m.base_models), ("dataset", &m.datasets)] {
        let Some(entries) = entries else { continue };
        kv.push((
            format!("general.{group}.count"),
            GeneralValue::U32(entries.len() as u32),
        ));
        for (i, e) in entries.iter().enumerate() {
            for key in ENTRY_KEYS {
                if let Some((_, v)) = e.iter().find(|(k, _)| *k == key) {
                    kv.push((
                        format!("general.{group}.{i}.{key}"),
                        GeneralValue::Str(v.clone()),
                    ));
                }
            }
        }
    }
    if let Some(t) = m.tags {
        kv.push(("general.tags".into(), GeneralValue::Strings(t)));
    }
    if let Some(l) = m.languages {
        kv.push(("general.languages".into(), GeneralValue::Strings(l)));
    }
    kv
}

/// generation_config.json's sampling defaults as llama.cpp records them.
fn sampling(generation: Option<&Json>) -> Vec<(String, GeneralValue)> {
    let Some(g) = generation else {
        return Vec::new();
    };
    enum Kind {
        Str,
        Int,
        Float,
    }
    let keys: [(&str, &[&str], Kind); 12] = [
        ("sequence", &["sequence"], Kind::Str),
        ("top_k", &["top_k"], Kind::Int),
        ("top_p", &["top_p"], Kind::Float),
        ("min_p", &["min_p"], Kind::Float),
        ("xtc_probability", &["xtc_probability"], Kind::Float),
        ("xtc_threshold", &["xtc_threshold"], Kind::Float),
        ("temp", &["temperature"], Kind::Float),
        ("penalty_last_n", &["penalty_last_n"], Kind::Int),
        (
            "penalty_repeat",
            &["penalty_repeat", "repetition_penalty"],
            Kind::Float,
        ),
        ("mirostat", &["mirostat"], Kind::Int),
        ("mirostat_tau", &["mirostat_tau"], Kind::Float),
        ("mirostat_eta", &["mirostat_eta"], Kind::Float),
    ];
    let mut out = Vec::new();
    for (key, sources, kind) in keys {
        // gguf-py takes the first source present, even when it is null (and then writes nothing).
        let Some(v) = sources.iter().find_map(|s| g.get(*s)) else {
            continue;
        };
        let value = match kind {
            Kind::Str => v.as_str().map(|s| GeneralValue::Str(s.into())),
            Kind::Int => v
                .as_i64()
                .and_then(|x| i32::try_from(x).ok())
                .map(GeneralValue::I32),
            Kind::Float => v.as_f64().map(|x| GeneralValue::F32(x as f32)),
        };
        if let Some(value) = value {
            out.push((format!("general.sampling.{key}"), value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(card: &'a ModelCard, config: &'a Json, folder: &'a str) -> FolderFacts<'a> {
        FolderFacts {
            card,
            config,
            generation: None,
            folder: Path::new(folder),
            total_params: 28_316_960,
            size_label: "28M".into(),
        }
    }

    fn keys(kv: &[(String, GeneralValue)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| {
                let v = match v {
                    GeneralValue::Str(s) => s.clone(),
                    GeneralValue::Strings(s) => s.join("|"),
                    other => format!("{other:?}"),
                };
                (k.clone(), v)
            })
            .collect()
    }

    #[test]
    fn card_front_matter() {
        let card = ModelCard::parse("---\nlicense: apache-2.0\nbase_model:\n- HuggingFaceTB/SmolLM2-135M\ntags: [a]\n---\n# x");
        assert_eq!(card.license.as_deref(), Some("apache-2.0"));
        assert_eq!(
            card.base_model.as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M")
        );
        let card = ModelCard::parse(
            "---\nlicense: other\nlicense_name: \"llama3.1\"\nbase_model: meta/x\n---\n",
        );
        assert_eq!(card.license_name.as_deref(), Some("llama3.1"));
        assert_eq!(card.base_model.as_deref(), Some("meta/x"));
        assert!(ModelCard::parse("no front matter").license.is_none());
        assert!(ModelCard::parse("---\n[unclosed\n---\n").license.is_none());
        let card = ModelCard::parse(
            "---\nlicense: other\nlicense_link: https://x/LICENSE\nbase_model: none\ndatasets:\n- a/b\n- 'c'\nlanguage: [en]\n---\n",
        );
        assert_eq!(card.license_link.as_deref(), Some("https://x/LICENSE"));
        assert_eq!(card.base_model, None, "'none' names no base model");
        assert_eq!(card.datasets, ["a/b", "c"]);
        let card = ModelCard::parse("---\ndatasets: [x, \"y\"]\n---\n");
        assert_eq!(card.datasets, ["x", "y"]);
    }

    /// The tiny-llama fixture's card and folder, and what llama.cpp wrote for them
    /// (../shared/models/tiny-llama/reference.json, gguf_kv).
    #[test]
    fn tiny_llama_card_gives_llama_cpp_keys() {
        let card = ModelCard::parse(
            "---\nlicense: apache-2.0\nbase_model: none\ndatasets:\n- austen-pride-and-prejudice\nlanguage:\n- en\npipeline_tag: text-generation\ntags:\n- test-fixture\n---\n# x",
        );
        let config = serde_json::json!({});
        let kv = keys(&general_metadata(&facts(&card, &config, "/x/tiny-llama")));
        let want: Vec<(String, String)> = [
            ("general.name", "Tiny Llama"),
            ("general.size_label", "28M"),
            ("general.license", "apache-2.0"),
            ("general.base_model.count", "U32(1)"),
            ("general.base_model.0.name", "None"),
            ("general.dataset.count", "U32(1)"),
            ("general.dataset.0.name", "Austen Pride And Prejudice"),
            ("general.tags", "test-fixture|text-generation"),
            ("general.languages", "en"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(kv, want);
    }

    #[test]
    fn model_ids_split_as_gguf_py_splits_them() {
        let p = id_parts("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248);
        assert_eq!(p.org.as_deref(), Some("meta-llama"));
        assert_eq!(p.basename.as_deref(), Some("Llama-3.1"));
        assert_eq!(p.size_label.as_deref(), Some("8B"));
        assert_eq!(p.finetune.as_deref(), Some("Instruct"));
        assert_eq!(p.version, None);
        let p = id_parts("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008);
        assert_eq!(
            (p.basename.as_deref(), p.size_label.as_deref()),
            (Some("SmolLM2"), Some("135M"))
        );
        // A number far from the model's size reads as a context length.
        let p = id_parts("x/Model-7B-32K", 7_000_000_000);
        assert_eq!(p.size_label.as_deref(), Some("7B"));
        assert_eq!(p.finetune.as_deref(), Some("32k"));
        let p = id_parts("bigscience/bloom-7b1", 7_069_016_064);
        assert_eq!(p.size_label.as_deref(), Some("7.1B"));
        assert_eq!(
            id_to_title("smollm2-135m-instruct"),
            "Smollm2 135m Instruct"
        );
        assert_eq!(
            id_to_title("SmolLM2-135M-Instruct"),
            "SmolLM2 135M Instruct"
        );
        assert_eq!(id_to_title("mistral-v0.1"), "Mistral v0.1");
        let card = ModelCard::parse("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n---\n");
        let config = serde_json::json!({});
        let kv = keys(&general_metadata(&facts(&card, &config, "smollm2")));
        assert!(kv.contains(&(
            "general.base_model.0.repo_url".into(),
            "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct".into()
        )));
        assert!(kv.contains(&(
            "general.base_model.0.organization".into(),
            "HuggingFaceTB".into()
        )));
    }
}
