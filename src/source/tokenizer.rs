//! GGUF tokenizer metadata from tokenizer.json and tokenizer_config.json, as llama.cpp's
//! converter builds it for byte-level BPE vocabularies (GPT-2 style: Llama 3, Qwen2, SmolLM):
//! tokens, token types, merges, special token ids, add_bos/add_eos and the chat template.
//! `tokenizer.ggml.pre` is detected the way llama.cpp does: by hashing the token ids of a fixed
//! text and looking the hash up in its table.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::pretok_hashes::{CHECK_TEXT, PRE_TOKENIZER_HASHES};

/// llama.cpp's token types.
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;

/// A vocabulary as llama.cpp's GGUF metadata describes it (`tokenizer.ggml.*`).
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    /// `tokenizer.ggml.model` ("gpt2" for byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`.
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    /// SentencePiece scores (`tokenizer.ggml.scores`), for "llama" vocabularies.
    pub scores: Option<Vec<f32>>,
    pub merges: Vec<String>,
    /// ("bos", id), ("eos", id), ...
    pub special_ids: Vec<(String, u32)>,
    /// ("add_bos_token", true), ...
    pub flags: Vec<(String, bool)>,
    /// (metadata key, template).
    pub chat_templates: Vec<(String, String)>,
    /// `tokenizer.ggml.add_space_prefix`, where the architecture's converter writes it.
    pub add_space_prefix: Option<bool>,
    pub warnings: Vec<String>,
}

/// The longest token text accepted. Real vocabularies stay under a few hundred bytes (runs of
/// spaces or symbols); a longer "token" is a broken or hostile file, and every tokenizer built
/// from it would search the text for it.
pub const MAX_TOKEN_BYTES: usize = 1 << 16;

/// An error naming `path` for a token longer than [`MAX_TOKEN_BYTES`].
pub fn check_token_length(path: &Path, id: usize, text: &str) -> Result<()> {
    if text.len() > MAX_TOKEN_BYTES {
        bail!(
            "{}: token {id} is {} bytes long; no vocabulary has tokens over {MAX_TOKEN_BYTES} bytes",
            path.display(),
            text.len()
        );
    }
    Ok(())
}

/// Refuses the merges of a tokenizer.json BPE model that the `tokenizers` crate (0.23) panics
/// on instead of refusing: it joins a merge's two parts in a buffer as long as the longest
/// vocabulary entry, so a join longer than every token overruns it (found by fuzzing). Both
/// parts and their join must be tokens; a part meant to continue a word must carry the
/// model's `continuing_subword_prefix`.
pub fn check_merges(path: &Path, tokenizer: &Json) -> Result<()> {
    let model = &tokenizer["model"];
    let (Some(vocab), Some(merges)) = (model["vocab"].as_object(), model["merges"].as_array())
    else {
        return Ok(());
    };
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    for (i, merge) in merges.iter().enumerate() {
        let (a, b) = match merge {
            Json::String(s) => match s.split_once(' ') {
                Some(pair) => pair,
                None => continue,
            },
            Json::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => (a, b),
                _ => continue,
            },
            _ => continue,
        };
        let Some(rest) = b.strip_prefix(prefix) else {
            bail!(
                "{}: merge {i} ({a:?} {b:?}): {b:?} lacks the continuing_subword_prefix {prefix:?}",
                path.display()
            );
        };
        let joined = format!("{a}{rest}");
        for token in [a, b, joined.as_str()] {
            if !vocab.contains_key(token) {
                bail!(
                    "{}: merge {i} ({a:?} {b:?}) needs the token {token:?}, which the vocabulary lacks",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// The GGUF token type of a tokenizer.json added token, as llama.cpp's converter types it:
/// control when marked special or when it looks special, else user-defined.
pub fn added_token_type(special: bool, content: &str) -> i32 {
    if special || looks_special(content) {
        TOKEN_CONTROL
    } else {
        TOKEN_USER_DEFINED
    }
}

/// Tokens that llama.cpp treats as control tokens even when not marked special.
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// The `tokenizer.ggml.pre` name for this tokenizer, by llama.cpp's fingerprint.
pub fn detect_pre_tokenizer(tokenizer_json: &Path) -> Result<Option<String>> {
    let tokenizer = tokenizers::Tokenizer::from_file(tokenizer_json)
        .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer: {e}", tokenizer_json.display()))?;
    let encoding = tokenizer
        .encode(CHECK_TEXT, true)
        .map_err(|e| anyhow::anyhow!("{}: cannot tokenize: {e}", tokenizer_json.display()))?;
    // Python's str() of the id list, as the fingerprint was computed.
    let rendered = format!(
        "[{}]",
        encoding
            .get_ids()
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hash = format!("{:x}", Sha256::digest(rendered.as_bytes()));
    Ok(PRE_TOKENIZER_HASHES
        .iter()
        .find(|(h, _)| *h == hash)
        .map(|(_, name)| name.to_string()))
}

/// The vocabulary of a model folder. `spm_space_prefix` is the architecture's
/// `add_space_prefix` for a SentencePiece vocabulary (written only when false, as llama.cpp's
/// Gemma converters do).
pub fn read_vocab(
    dir: &Path,
    vocab_size: u64,
    config: &Json,
    spm_space_prefix: bool,
) -> Result<Vocab> {
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.exists() {
        read_json(&tc_path)?
    } else {
        Json::Null
    };
    // llama.cpp's converter prefers the SentencePiece model when one ships (Llama 2, Mistral,
    // TinyLlama): it carries the piece scores the llama tokenizer needs.
    let sp_path = dir.join("tokenizer.model");
    let tj_path = dir.join("tokenizer.json");
    if sp_path.exists() {
        let mut v = read_sentencepiece(&sp_path, vocab_size, dir)?;
        let tokens = v.tokens.clone();
        let lookup = move |name: &str| tokens.iter().position(|t| t == name).map(|i| i as u64);
        // gguf-py reads the add_* flags from tokenizer.json's post-processor here too.
        let tj = if tj_path.is_file() {
            read_json(&tj_path)?
        } else {
            Json::Null
        };
        add_specials(&mut v, (&tj, &tc), config, &lookup, vocab_size);
        v.add_space_prefix = (!spm_space_prefix).then_some(false);
        return Ok(v);
    }
    let tj = read_json(&tj_path)?;
    let mut warnings = Vec::new();

    let model = tj
        .get("model")
        .with_context(|| format!("{}: missing \"model\"", tj_path.display()))?;
    let kind = model.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let byte_level = tj
        .get("pre_tokenizer")
        .is_some_and(|p| p.to_string().contains("\"ByteLevel\""))
        || tj
            .get("decoder")
            .is_some_and(|d| d.to_string().contains("\"ByteLevel\""));
    if kind != "BPE" || !byte_level {
        bail!(
            "{}: {} tokenizer{} is not supported yet (quantfit writes byte-level BPE vocabularies, as in Llama 3, Qwen2 and SmolLM)",
            tj_path.display(),
            if kind.is_empty() { "unknown" } else { kind },
            if kind == "BPE" { " without byte-level pre-tokenization (SentencePiece style)" } else { "" }
        );
    }
    let vocab = model
        .get("vocab")
        .and_then(|v| v.as_object())
        .with_context(|| format!("{}: missing model.vocab", tj_path.display()))?;

    let n = vocab_size as usize;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![TOKEN_NORMAL; n];
    for (tok, id) in vocab {
        let id = id.as_u64().with_context(|| {
            format!(
                "{}: vocab id of {tok:?} is not an integer",
                tj_path.display()
            )
        })? as usize;
        if id >= n {
            bail!("{}: token {tok:?} has id {id} but the model's vocab_size is {n}: tokenizer does not match the model", tj_path.display());
        }
        check_token_length(&tj_path, id, tok)?;
        tokens[id] = Some(tok.clone());
    }
    let added = tj
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    for t in &added {
        let (Some(id), Some(content)) = (
            t.get("id").and_then(|i| i.as_u64()),
            t.get("content").and_then(|c| c.as_str()),
        ) else {
            continue;
        };
        let id = id as usize;
        if id >= n {
            bail!(
                "{}: added token {content:?} has id {id} beyond vocab_size {n}",
                tj_path.display()
            );
        }
        check_token_length(&tj_path, id, content)?;
        let special = t.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
        tokens[id] = Some(content.to_string());
        types[id] = added_token_type(special, content);
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t {
            Some(t) => t,
            None => {
                types[i] = TOKEN_UNUSED;
                format!("[PAD{i}]")
            }
        })
        .collect();

    let merges: Vec<String> = model
        .get("merges")
        .and_then(|m| m.as_array())
        .map(|m| {
            m.iter()
                .filter_map(|e| match e {
                    Json::String(s) => Some(s.clone()),
                    Json::Array(pair) if pair.len() == 2 => {
                        Some(format!("{} {}", pair[0].as_str()?, pair[1].as_str()?))
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();

    check_merges(&tj_path, &tj)?;
    let pre = match detect_pre_tokenizer(&tj_path)? {
        Some(p) => p,
        None => {
            warnings.push(format!(
                "{}: pre-tokenizer not recognized by llama.cpp's fingerprint table; writing \"default\" (llama.cpp may tokenize differently)",
                tj_path.display()
            ));
            "default".to_string()
        }
    };

    let mut v = Vocab {
        model: "gpt2".into(),
        pre,
        tokens,
        token_types: types,
        merges,
        ..Default::default()
    };

    let lookup = |name: &str| -> Option<u64> {
        added
            .iter()
            .find(|t| t.get("content").and_then(|c| c.as_str()) == Some(name))
            .and_then(|t| t.get("id").and_then(|i| i.as_u64()))
            .or_else(|| vocab.get(name).and_then(|i| i.as_u64()))
    };
    v.warnings = warnings;
    add_specials(&mut v, (&tj, &tc), config, &lookup, vocab_size);
    Ok(v)
}

/// Special token ids (tokenizer_config's `<kind>_token` by name, else config.json's
/// `<kind>_token_id`, as gguf-py's SpecialVocab), add_bos/add_eos and chat templates.
fn add_specials(
    v: &mut Vocab,
    (tj, tc): (&Json, &Json),
    config: &Json,
    lookup: &dyn Fn(&str) -> Option<u64>,
    vocab_size: u64,
) {
    for kind in SPECIAL_KINDS {
        let id = config_token(tc, kind)
            .and_then(|name| lookup(&name))
            .or_else(|| {
                config
                    .get(format!("{kind}_token_id"))
                    .and_then(|v| v.as_u64())
            });
        match id {
            Some(id) if id < vocab_size => v.special_ids.push((kind.to_string(), id as u32)),
            // gguf-py's SpecialVocab skips such an id with a warning; so does quantfit.
            Some(id) => v.warnings.push(format!(
                "special token {kind} has id {id}, outside the vocabulary of {vocab_size}; not written"
            )),
            None => {}
        }
    }
    v.flags = add_flags(tj, tc);
    match tc.get("chat_template") {
        Some(Json::String(t)) => v
            .chat_templates
            .push(("tokenizer.chat_template".to_string(), t.clone())),
        Some(Json::Array(named)) => {
            for t in named {
                let (Some(name), Some(template)) = (
                    t.get("name").and_then(|n| n.as_str()),
                    t.get("template").and_then(|n| n.as_str()),
                ) else {
                    continue;
                };
                let key = if name == "default" {
                    "tokenizer.chat_template".to_string()
                } else {
                    format!("tokenizer.chat_template.{name}")
                };
                v.chat_templates.push((key, template.to_string()));
            }
        }
        _ => {}
    }
}

const SPECIAL_KINDS: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

/// The name of tokenizer_config.json's `<kind>_token` (a string or an added-token object).
fn config_token(tc: &Json, kind: &str) -> Option<String> {
    match tc.get(format!("{kind}_token"))? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The `add_<kind>_token` flags as gguf-py's SpecialVocab sets them, in its order: first what
/// tokenizer.json's post-processor implies (its "crude parsing" of TemplateProcessing, which
/// wins over tokenizer_config.json), then tokenizer_config.json's flags for the other kinds.
fn add_flags(tj: &Json, tc: &Json) -> Vec<(String, bool)> {
    let mut flags: Vec<(String, bool)> = Vec::new();
    let set = |flags: &mut Vec<(String, bool)>, kind: &str, b: bool, keep: bool| {
        let key = format!("add_{kind}_token");
        match flags.iter_mut().find(|(k, _)| *k == key) {
            Some(f) if !keep => f.1 = b,
            Some(_) => {}
            None => flags.push((key, b)),
        }
    };
    let has_tc = tc.as_object().is_some_and(|o| !o.is_empty());
    let mut bos = config_token(tc, "bos");
    let mut cls = config_token(tc, "cls");
    let mut eos = config_token(tc, "eos");
    let sep = config_token(tc, "sep");
    if bos.is_none() && cls.is_some() {
        bos = cls.clone();
    }
    if eos.is_none() && sep.is_some() {
        eos = sep.clone();
    }
    let special = |item: &Json| {
        item.get("SpecialToken")
            .and_then(|t| t.get("id"))
            .and_then(Json::as_str)
            .map(str::to_string)
    };
    let sequence = |item: &Json| {
        item.get("Sequence")
            .and_then(|t| t.get("id"))
            .and_then(Json::as_str)
            .map(str::to_string)
    };
    let post = tj.get("post_processor").filter(|p| !p.is_null());
    let processors: Vec<&Json> = match post {
        Some(p) => match p.get("processors").and_then(Json::as_array) {
            Some(list) => list.iter().collect(),
            None => vec![p],
        },
        None => Vec::new(),
    };
    for p in processors {
        match p.get("type").and_then(Json::as_str) {
            Some("ByteLevel") => {
                set(&mut flags, "bos", false, true);
                set(&mut flags, "eos", false, true);
            }
            Some("RobertaProcessing") => {
                for kind in ["bos", "eos", "sep"] {
                    set(&mut flags, kind, true, false);
                }
            }
            Some("TemplateProcessing") => {
                let empty = Vec::new();
                let single = p.get("single").and_then(Json::as_array).unwrap_or(&empty);
                let pair = p.get("pair").and_then(Json::as_array).unwrap_or(&empty);
                let (mut first, mut last) = (None, None);
                if single.len() > 1 {
                    first = special(&single[0]);
                    if let Some(f) = &first {
                        let known = |b: &Option<String>, c: &Option<String>| {
                            b.as_ref() == Some(f) || c.as_ref() == Some(f)
                        };
                        if !has_tc {
                            bos = Some(f.clone());
                        } else if !known(&bos, &cls) {
                            bos = bos.or_else(|| Some(f.clone()));
                            cls = cls.or_else(|| Some(f.clone()));
                        }
                        set(&mut flags, "bos", known(&bos, &cls), false);
                    }
                    last = special(&single[single.len() - 1]);
                    if let Some(l) = &last {
                        // gguf-py makes the trailing token the EOS when it is not one already.
                        eos = Some(l.clone());
                        set(&mut flags, "eos", true, false);
                    }
                }
                let start = usize::from(first.is_some() && pair.first().and_then(special) == first);
                let stop = pair.len()
                    - usize::from(last.is_some() && pair.last().and_then(special) == last);
                let inner = pair.get(start..stop.max(start)).unwrap_or(&[]);
                if inner.len() > 2
                    && sequence(&inner[0]).as_deref() == Some("A")
                    && sequence(&inner[inner.len() - 1]).as_deref() == Some("B")
                {
                    let middle = &inner[1..inner.len() - 1];
                    let separates = |t: &Option<String>| t.is_some() && (*t == sep || *t == eos);
                    let mut add_sep = separates(&special(&middle[0])) && last.is_none();
                    if middle.len() == 2 && separates(&special(&middle[1])) {
                        add_sep = true;
                    }
                    set(&mut flags, "sep", add_sep, false);
                }
            }
            _ => {}
        }
    }
    if has_tc {
        for kind in SPECIAL_KINDS {
            if let Some(b) = tc.get(format!("add_{kind}_token")).and_then(Json::as_bool) {
                set(&mut flags, kind, b, true);
            }
        }
    }
    flags
}

/// Minimal protobuf reading of a SentencePiece `ModelProto`: field 1 holds the pieces, each
/// with its text (1), score (2) and type (3, the same numbering as llama.cpp's token types).
fn read_sentencepiece(path: &Path, vocab_size: u64, dir: &Path) -> Result<Vocab> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let bad = || {
        anyhow::anyhow!(
            "{}: not a SentencePiece model (malformed protobuf)",
            path.display()
        )
    };
    fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*pos)?;
            *pos += 1;
            v |= ((byte & 0x7F) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    // Every length is a claim: a sum that wraps would move `pos` backwards and loop forever.
    fn advance(b: &[u8], pos: &mut usize, len: usize) -> Option<()> {
        *pos = pos.checked_add(len).filter(|&end| end <= b.len())?;
        Some(())
    }
    fn skip(b: &[u8], pos: &mut usize, wire: u64) -> Option<()> {
        match wire {
            0 => varint(b, pos).map(|_| ()),
            1 => advance(b, pos, 8),
            2 => {
                let len = usize::try_from(varint(b, pos)?).ok()?;
                advance(b, pos, len)
            }
            5 => advance(b, pos, 4),
            _ => None,
        }
    }
    let mut tokens = Vec::new();
    let mut scores = Vec::new();
    let mut types = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let key = varint(&bytes, &mut pos).ok_or_else(bad)?;
        let (field, wire) = (key >> 3, key & 7);
        if field != 1 || wire != 2 {
            skip(&bytes, &mut pos, wire).ok_or_else(bad)?;
            continue;
        }
        let len = varint(&bytes, &mut pos).ok_or_else(bad)? as usize;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(bad)?;
        let (mut piece, mut score, mut ty) = (String::new(), 0.0f32, 1i32);
        while pos < end {
            let key = varint(&bytes, &mut pos).ok_or_else(bad)?;
            match (key >> 3, key & 7) {
                (1, 2) => {
                    let l = varint(&bytes, &mut pos).ok_or_else(bad)? as usize;
                    let start = pos;
                    advance(&bytes, &mut pos, l).ok_or_else(bad)?;
                    piece = String::from_utf8(bytes[start..pos].to_vec()).map_err(|_| bad())?;
                }
                (2, 5) => {
                    let start = pos;
                    advance(&bytes, &mut pos, 4).ok_or_else(bad)?;
                    score = f32::from_le_bytes(bytes[start..pos].try_into().expect("4 bytes"));
                }
                (3, 0) => ty = varint(&bytes, &mut pos).ok_or_else(bad)? as i32,
                (_, w) => skip(&bytes, &mut pos, w).ok_or_else(bad)?,
            }
        }
        if pos != end {
            return Err(bad());
        }
        check_token_length(path, tokens.len(), &piece)?;
        tokens.push(piece);
        scores.push(score);
        types.push(ty);
    }
    if tokens.is_empty() {
        return Err(bad());
    }
    if tokens.len() as u64 > vocab_size {
        bail!("{}: {} pieces but the model's vocab_size is {vocab_size}: tokenizer does not match the model", path.display(), tokens.len());
    }
    // Tokens added on top of the SentencePiece model (added_tokens.json), then padding.
    if let Ok(text) = std::fs::read_to_string(dir.join("added_tokens.json")) {
        let added: Json = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not valid JSON",
                dir.join("added_tokens.json").display()
            )
        })?;
        let mut pairs: Vec<(u64, String)> = added
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((v.as_u64()?, k.clone())))
            .collect();
        pairs.sort();
        for (id, text) in pairs {
            if id as usize == tokens.len() && id < vocab_size {
                check_token_length(&dir.join("added_tokens.json"), tokens.len(), &text)?;
                tokens.push(text);
                scores.push(-1000.0);
                types.push(TOKEN_USER_DEFINED);
            }
        }
    }
    for i in tokens.len()..vocab_size as usize {
        tokens.push(format!("[PAD{i}]"));
        scores.push(-1000.0);
        types.push(TOKEN_UNUSED);
    }
    Ok(Vocab {
        model: "llama".into(),
        pre: "default".into(),
        tokens,
        token_types: types,
        scores: Some(scores),
        ..Default::default()
    })
}
