//! The parsers' fuzz entry points: each takes arbitrary bytes, puts them where its reader
//! expects a file, and reads them as quantfit's commands do (and, where that succeeds, uses
//! the result: tokenizes a text, reads every tensor). Any `Err` is a correct answer; a panic,
//! an abort, a hang or an allocation that a claim drives is the bug. The coverage-guided
//! targets in `fuzz/` (cargo-fuzz) and the mutation test `tests/fuzz_smoke.rs` call these.

use std::path::{Path, PathBuf};

use crate::eval::tokenize::TextTokenizer;
use crate::gguf::{hparams, GgufFile};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Safetensors,
    Gguf,
    Imatrix,
    SentencePiece,
    TokenizerJson,
    HardwareToml,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Safetensors,
        Target::Gguf,
        Target::Imatrix,
        Target::SentencePiece,
        Target::TokenizerJson,
        Target::HardwareToml,
    ];

    /// The name of its binary in fuzz/ and of its seed folder.
    pub fn name(self) -> &'static str {
        match self {
            Target::Safetensors => "safetensors",
            Target::Gguf => "gguf",
            Target::Imatrix => "imatrix",
            Target::SentencePiece => "sentencepiece",
            Target::TokenizerJson => "tokenizer_json",
            Target::HardwareToml => "hardware_toml",
        }
    }

    /// The file name the reader is given.
    pub fn file_name(self) -> &'static str {
        match self {
            Target::Safetensors => "model.safetensors",
            Target::Gguf => "model.gguf",
            Target::Imatrix => "imatrix.gguf",
            Target::SentencePiece => "tokenizer.model",
            Target::TokenizerJson => "tokenizer.json",
            Target::HardwareToml => "profile.toml",
        }
    }
}

const SAMPLE: &str = "Hello world, the 3 quick brown foxes jump over a lazy dog.\n";

/// A scratch folder of this process and thread, so parallel runs do not share files.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "quantfit-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Read `data` as `target` reads its file. Returns whether it was accepted.
pub fn run(target: Target, data: &[u8]) -> bool {
    check(target, data).is_ok()
}

/// Read `data` as `target` reads its file: the reader's own answer.
pub fn check(target: Target, data: &[u8]) -> anyhow::Result<()> {
    let dir = scratch();
    let path = dir.join(target.file_name());
    std::fs::write(&path, data)?;
    let answer = read(target, &path, &dir);
    let _ = std::fs::remove_file(&path);
    answer
}

fn read(target: Target, path: &Path, dir: &Path) -> anyhow::Result<()> {
    match target {
        Target::Safetensors => {
            let f = crate::source::safetensors::SafetensorsFile::open(path)?;
            for t in &f.tensors {
                f.to_f32(t)?;
            }
        }
        Target::Gguf => {
            let f = GgufFile::open(path)?;
            for t in &f.tensors {
                std::hint::black_box(f.tensor_data(t));
            }
            let tokenizer = TextTokenizer::from_gguf(&f);
            let (arch, h) = hparams::hparams(&f)?;
            hparams::check_tensors(&f, arch, &h)?;
            tokenizer?.encode(SAMPLE)?;
        }
        Target::Imatrix => {
            crate::gguf::imatrix::Imatrix::load(path)?;
        }
        Target::SentencePiece => {
            // Each piece takes at least two bytes, so this vocabulary size holds every piece
            // list the file can carry (the rest is padding, as the converter pads).
            let vocab_size = (std::fs::metadata(path)?.len() / 2).max(1);
            let vocab = crate::source::tokenizer::read_vocab(
                dir,
                vocab_size,
                &serde_json::Value::Null,
                true,
            )?;
            TextTokenizer::from_spm_vocab(&vocab, None, false, path.display().to_string())?
                .encode(SAMPLE)?;
        }
        Target::TokenizerJson => {
            TextTokenizer::from_tokenizer_json(path, None, false)?.encode(SAMPLE)?;
        }
        Target::HardwareToml => {
            let text = String::from_utf8_lossy(&std::fs::read(path)?).into_owned();
            crate::plan::hardware::parse(&text, &path.display().to_string())?;
        }
    }
    Ok(())
}
