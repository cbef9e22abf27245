//! Text to token ids, as llama.cpp tokenizes evaluation text (`common_tokenize(..., add_special
//! = true, parse_special = false)`): special-token markup in the text is plain text, and BOS is
//! prepended only when the vocabulary says so.
//!
//! Tokens the vocabulary marks user-defined (added tokens that are not special; llama.cpp's
//! LLAMA_TOKEN_TYPE_USER_DEFINED) are cut out of the text first, longest first, and the pieces
//! between are tokenized on their own (llama.cpp's `tokenizer_st_partition`, which does this
//! even without special-token parsing).
//!
//! Two sources: a Hugging Face `tokenizer.json` (through the `tokenizers` crate, with its added
//! tokens and post-processor removed so neither splits nor decorates the text), or the
//! `tokenizer.ggml.*` metadata of a GGUF file. For byte-level BPE vocabularies the GGUF path
//! rebuilds the pre-tokenizer from the regexes llama.cpp uses for each `tokenizer.ggml.pre`
//! (src/llama-vocab.cpp, `llm_tokenizer_bpe`); SentencePiece vocabularies use llama.cpp's
//! score-driven merge (`llm_tokenizer_spm`), see `spm.rs`.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use super::spm::SpmTokenizer;
use crate::gguf::reader::GgufFile;
use crate::gguf::Value;
use crate::source::tokenizer::{
    added_token_type, check_merges, Vocab, TOKEN_USER_DEFINED as USER_DEFINED,
};

const GPT2_WORDS: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_WORDS: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_WORDS: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's split regexes (applied in order) and whether whole words in the vocabulary
/// skip the merges, for each `tokenizer.ggml.pre` it knows. Unknown names are refused rather
/// than tokenized differently from llama.cpp.
fn pre_tokenizer_rules(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "dbrx" | "smaug-bpe" => (
            vec![LLAMA3_WORDS],
            matches!(
                pre,
                "llama3"
                    | "llama-v3"
                    | "llama-bpe"
                    | "falcon3"
                    | "falcon-h1"
                    | "pixtral"
                    | "midm-2.0"
                    | "lfm2"
            ),
        ),
        "qwen2" | "stablelm2" | "hunyuan" => (vec![QWEN2_WORDS], false),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2_WORDS], false)
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "mpt" | "olmo" | "jais" | "roberta-bpe"
        | "jina-v1-en" | "jina-v2-code" | "jina-v2-es" | "jina-v2-de" | "trillion" => {
            (vec![GPT2_WORDS], false)
        }
        "default" => (
            vec![
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_WORDS,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            false,
        ),
        _ => return None,
    })
}

enum Engine {
    Hf(Box<Tokenizer>),
    Spm(SpmTokenizer),
}

/// A tokenizer for evaluation text.
pub struct TextTokenizer {
    engine: Engine,
    /// User-defined tokens (text, id), longest text first.
    user_defined: Vec<(String, u32)>,
    pub bos: Option<u32>,
    pub add_bos: bool,
    /// Where the vocabulary came from, for reports.
    pub source: String,
}

impl TextTokenizer {
    /// From a Hugging Face `tokenizer.json`. `add_bos`/`bos` come from the model's own
    /// metadata (GGUF keys or tokenizer_config.json), as llama.cpp reads them.
    pub fn from_tokenizer_json(path: &Path, bos: Option<u32>, add_bos: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let mut json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        // serde_json's `json[key] = v` panics on anything but an object (found by fuzzing).
        if !json.is_object() {
            bail!("{}: not a tokenizer (not a JSON object)", path.display());
        }
        check_merges(path, &json)?;
        // Added tokens that the converter types USER_DEFINED are cut out of the text in
        // `encode`; the others stay plain text, as llama-perplexity does not parse special
        // tokens. `encode` adds BOS itself, hence no post-processor.
        let user_defined = json["added_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let (text, id) = (t["content"].as_str()?, t["id"].as_u64()?);
                let special = t["special"].as_bool().unwrap_or(false);
                (added_token_type(special, text) == USER_DEFINED)
                    .then(|| (text.to_string(), id as u32))
            })
            .collect();
        json["added_tokens"] = serde_json::Value::Array(vec![]);
        json["post_processor"] = serde_json::Value::Null;
        let tokenizer: Tokenizer = serde_json::from_value(json)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        Ok(TextTokenizer {
            engine: Engine::Hf(Box::new(tokenizer)),
            user_defined: longest_first(user_defined),
            bos,
            add_bos,
            source: path.display().to_string(),
        })
    }

    /// From a folder's SentencePiece vocabulary as the converter reads it (tokens, scores,
    /// types, add_space_prefix): the same tokenizer its GGUF file would carry.
    pub fn from_spm_vocab(
        vocab: &Vocab,
        bos: Option<u32>,
        add_bos: bool,
        source: String,
    ) -> Result<Self> {
        let scores = vocab
            .scores
            .clone()
            .ok_or_else(|| anyhow!("{source}: SentencePiece vocabulary without scores"))?;
        let user_defined = vocab
            .token_types
            .iter()
            .zip(&vocab.tokens)
            .enumerate()
            .filter(|(_, (&ty, _))| ty == USER_DEFINED)
            .map(|(id, (_, text))| (text.clone(), id as u32))
            .collect();
        let engine = Engine::Spm(SpmTokenizer::new(
            vocab.tokens.clone(),
            scores,
            vocab.token_types.clone(),
            vocab.add_space_prefix.unwrap_or(true),
        )?);
        Ok(TextTokenizer {
            engine,
            user_defined: longest_first(user_defined),
            bos,
            add_bos,
            source,
        })
    }

    /// From a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let name = file.path.display();
        let model = file
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{name}: no tokenizer.ggml.model in the metadata"))?;
        let tokens = string_array(file, "tokenizer.ggml.tokens")?;
        let (bos, add_bos) = gguf_bos(file);
        let user_defined = match file
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
        {
            Some(types) => types
                .iter()
                .zip(&tokens)
                .enumerate()
                .filter(|(_, (ty, _))| ty.as_u64() == Some(USER_DEFINED as u64))
                .map(|(id, (_, text))| (text.clone(), id as u32))
                .collect(),
            None => Vec::new(),
        };
        let engine = match model {
            "gpt2" => {
                let pre = file
                    .get("tokenizer.ggml.pre")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let merges = string_array(file, "tokenizer.ggml.merges")?;
                Engine::Hf(Box::new(
                    byte_level_bpe(&tokens, &merges, pre).with_context(|| {
                        format!("{name}: cannot build the tokenizer from its metadata")
                    })?,
                ))
            }
            "llama" => {
                let scores = match file.get("tokenizer.ggml.scores").and_then(Value::as_array) {
                    Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                    None => bail!("{name}: SentencePiece vocabulary without tokenizer.ggml.scores"),
                };
                let types = match file
                    .get("tokenizer.ggml.token_type")
                    .and_then(Value::as_array)
                {
                    Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1) as i32).collect(),
                    None => vec![1; tokens.len()],
                };
                let add_space_prefix = match file.get("tokenizer.ggml.add_space_prefix") {
                    Some(Value::Bool(b)) => *b,
                    _ => true,
                };
                Engine::Spm(SpmTokenizer::new(tokens, scores, types, add_space_prefix)?)
            }
            other => bail!(
                "{name}: tokenizer model {other:?} is not supported (byte-level BPE \"gpt2\" and \
                 SentencePiece \"llama\" are); pass --tokenizer tokenizer.json"
            ),
        };
        Ok(TextTokenizer {
            engine,
            user_defined: longest_first(user_defined),
            bos,
            add_bos,
            source: format!("{name} (GGUF metadata)"),
        })
    }

    /// Token ids of `text`, with BOS first when the vocabulary adds it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.push(
                self.bos
                    .ok_or_else(|| anyhow!("{}: adds BOS but has no BOS id", self.source))?,
            );
        }
        // SentencePiece text gets its space prefix at the start and after every cut token.
        let mut after_token = true;
        for piece in partition(text, &self.user_defined) {
            match piece {
                Piece::Token(id) => {
                    ids.push(id);
                    after_token = true;
                }
                Piece::Text(text) => {
                    match &self.engine {
                        Engine::Hf(t) => {
                            let encoding = t
                                .encode(text, false)
                                .map_err(|e| anyhow!("{}: cannot tokenize: {e}", self.source))?;
                            ids.extend_from_slice(encoding.get_ids());
                        }
                        Engine::Spm(t) => {
                            t.encode(text, after_token && t.add_space_prefix(), &mut ids)
                        }
                    }
                    after_token = false;
                }
            }
        }
        Ok(ids)
    }
}

/// The order `partition` cuts tokens in: longest first (a stable sort, so equal lengths keep
/// id order). Empty texts are dropped: they match everywhere and cut nothing.
fn longest_first(mut tokens: Vec<(String, u32)>) -> Vec<(String, u32)> {
    tokens.retain(|(text, _)| !text.is_empty());
    tokens.sort_by_key(|(text, _)| std::cmp::Reverse(text.len()));
    tokens
}

enum Piece<'a> {
    Text(&'a str),
    Token(u32),
}

/// `text` cut at every occurrence of each token, longest tokens first, as llama.cpp's
/// `tokenizer_st_partition` cuts it: each token's occurrences are found left to right in the
/// text pieces the longer tokens left.
fn partition<'a>(text: &'a str, tokens: &[(String, u32)]) -> Vec<Piece<'a>> {
    let mut pieces = vec![Piece::Text(text)];
    for (needle, id) in tokens {
        if !pieces
            .iter()
            .any(|p| matches!(p, Piece::Text(t) if t.contains(needle.as_str())))
        {
            continue;
        }
        let mut cut = Vec::with_capacity(pieces.len() + 2);
        for piece in pieces {
            let Piece::Text(mut rest) = piece else {
                cut.push(piece);
                continue;
            };
            while let Some(at) = rest.find(needle.as_str()) {
                if at > 0 {
                    cut.push(Piece::Text(&rest[..at]));
                }
                cut.push(Piece::Token(*id));
                rest = &rest[at + needle.len()..];
            }
            if !rest.is_empty() {
                cut.push(Piece::Text(rest));
            }
        }
        pieces = cut;
    }
    pieces
}

/// The BOS id and whether the vocabulary adds it, from a GGUF's metadata; without the
/// `add_bos_token` key, llama.cpp's default: SentencePiece ("llama") vocabularies add BOS,
/// byte-level BPE ones do not.
pub fn gguf_bos(file: &GgufFile) -> (Option<u32>, bool) {
    let bos = file
        .get("tokenizer.ggml.bos_token_id")
        .and_then(Value::as_u64)
        .map(|v| v as u32);
    let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
        Some(Value::Bool(b)) => *b,
        _ => file.get("tokenizer.ggml.model").and_then(Value::as_str) == Some("llama"),
    };
    (bos, add_bos)
}

fn string_array(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    let values = file
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("{}: no {key} array in the metadata", file.path.display()))?;
    values
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{}: {key} holds a non-string", file.path.display()))
        })
        .collect()
}

fn byte_level_bpe(tokens: &[String], merges: &[String], pre: &str) -> Result<Tokenizer> {
    let (regexes, ignore_merges) = pre_tokenizer_rules(pre).ok_or_else(|| {
        anyhow!("pre-tokenizer {pre:?} is unknown to quantfit; pass --tokenizer tokenizer.json")
    })?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    // A merge naming a token the list lacks (an added token written over a vocabulary entry)
    // is dropped: the tokenizers crate refuses it, and llama.cpp can only fall back to byte
    // tokens for what it would produce.
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for m in merges {
        let (a, b) = m
            .split_once(' ')
            .ok_or_else(|| anyhow!("merge {m:?} is not two tokens"))?;
        if vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"))
        {
            merge_pairs.push((a.to_string(), b.to_string()));
        }
    }
    let merges = merge_pairs;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    let mut steps = Vec::new();
    for re in regexes {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow!("{e}"))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    )));
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(steps)));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longer tokens are cut first, an empty token text is ignored (it would match at every
    /// position), and text between and around the cuts is kept in order.
    #[test]
    fn partition_cuts_longest_first_and_ignores_empty_texts() {
        let tokens = longest_first(vec![
            ("ab".to_string(), 1),
            (String::new(), 2),
            ("abc".to_string(), 3),
        ]);
        let pieces: Vec<String> = partition("xabcyabz", &tokens)
            .into_iter()
            .map(|p| match p {
                Piece::Text(t) => t.to_string(),
                Piece::Token(id) => format!("<{id}>"),
            })
            .collect();
        assert_eq!(pieces, ["x", "<3>", "y", "<1>", "z"]);
    }
}
