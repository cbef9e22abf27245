//! The fuzz targets (src/fuzz.rs) on stable Rust: deterministic mutations of real seed files
//! (bit flips, extreme integers written over counts and lengths, truncations, cut and
//! repeated ranges), each read as quantfit reads it. A panic fails the test and keeps the
//! input in `target/fuzz-crashes/`. Coverage-guided runs of the same targets: `fuzz/README.md`.

mod common;

use std::path::PathBuf;

use quantfit::fuzz::{check, run, Target};

/// xorshift64*: the mutations are the same on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const EXTREMES: [u64; 8] = [
    0,
    1,
    0x7F,
    0xFFFF_FFFF,
    0x8000_0000,
    1 << 40,
    u64::MAX,
    u64::MAX / 2,
];

/// One to four edits, most of them in the first 4 KiB, where headers, counts and lengths live.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let span = if rng.below(10) < 7 {
            b.len().min(4096)
        } else {
            b.len()
        };
        let at = rng.below(span);
        match rng.below(6) {
            0 if !b.is_empty() => {
                let at = at.min(b.len() - 1);
                b[at] ^= 1 << rng.below(8);
            }
            1 if b.len() >= 8 => {
                let at = at.min(b.len() - 8);
                let v = EXTREMES[rng.below(EXTREMES.len())];
                let width = [1, 2, 4, 8][rng.below(4)];
                b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            2 => b.truncate(at),
            3 if at < b.len() => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                b.drain(at..end);
            }
            4 if at < b.len() => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                let piece = b[at..end].to_vec();
                for _ in 0..1 + rng.below(3) {
                    b.splice(at..at, piece.iter().copied());
                }
            }
            _ if !b.is_empty() => {
                let at = at.min(b.len() - 1);
                b[at] = [0x00, 0xFF, b'"', b'{', b'[', b'9'][rng.below(6)];
            }
            _ => b.push(0),
        }
    }
    b
}

/// `target/fuzz-seeds/<target>`, named as the fuzz/ binaries are.
fn seed_dir(target: Target) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/fuzz-seeds")
        .join(target.name())
}

fn crash_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes")
}

/// Every mutation of every seed is read without a panic; at least some are still accepted
/// (a reader that refused everything would pass the first part trivially).
fn fuzz(target: Target, seeds: &[Vec<u8>], rounds: usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target as u64);
    // Kept as the seed corpus of the coverage-guided runs (fuzz/README.md).
    let kept = seed_dir(target);
    std::fs::create_dir_all(&kept).unwrap();
    for (i, seed) in seeds.iter().enumerate() {
        if let Err(e) = check(target, seed) {
            panic!("{target:?}: a seed is refused: {e:#}");
        }
        std::fs::write(kept.join(format!("seed-{i}")), seed).unwrap();
    }
    let mut accepted = 0;
    for round in 0..rounds {
        let seed = &seeds[round % seeds.len()];
        let input = mutate(seed, &mut rng);
        let outcome = std::panic::catch_unwind(|| run(target, &input));
        match outcome {
            Ok(ok) => accepted += ok as usize,
            Err(_) => {
                std::fs::create_dir_all(crash_dir()).unwrap();
                let file = crash_dir().join(format!("{target:?}-{round}.bin"));
                std::fs::write(&file, &input).unwrap();
                panic!(
                    "{target:?}: input {round} panicked; kept in {}",
                    file.display()
                );
            }
        }
    }
    eprintln!("{target:?}: {rounds} mutated inputs, {accepted} accepted, no panic");
}

fn tiny_gguf() -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-fuzz");
    let _ = std::fs::remove_dir_all(&dir);
    let model = common::write_tiny_llama(&dir.join("tiny"), 1);
    let (_, out) = common::convert_types(&model, &["Q4_0"], &dir.join("out")).remove(0);
    std::fs::read(out).unwrap()
}

#[test]
fn gguf_reader() {
    fuzz(Target::Gguf, &[tiny_gguf()], 1000);
}

#[test]
fn imatrix_reader() {
    let seed = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/smollm2-imatrix/imatrix.gguf"),
    )
    .unwrap();
    fuzz(Target::Imatrix, &[seed], 1500);
}

#[test]
fn safetensors_header() {
    let seed = quantfit::source::synthetic::safetensors_bytes(&common::tiny_llama_tensors(1)[2..]);
    fuzz(Target::Safetensors, &[seed], 5000);
}

#[test]
fn sentencepiece_protobuf() {
    let seed =
        std::fs::read(common::shared_dir().join("models/tiny-gemma2/tokenizer.model")).unwrap();
    fuzz(Target::SentencePiece, &[seed], 1000);
}

#[test]
fn tokenizer_json() {
    // A small byte-level BPE, so each mutation is cheap to load.
    let mut vocab = serde_json::Map::new();
    for (i, t) in [
        "h", "e", "l", "o", "Ġ", "w", "r", "d", "he", "ll", "hell", "hello",
    ]
    .iter()
    .enumerate()
    {
        vocab.insert(t.to_string(), i.into());
    }
    let json = serde_json::json!({
        "version": "1.0",
        "added_tokens": [{"id": 12, "content": "<|end|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": vocab, "merges": ["h e", "l l", "he ll", "hell o"]}
    });
    fuzz(
        Target::TokenizerJson,
        &[json.to_string().into_bytes()],
        5000,
    );
}

#[test]
fn hardware_toml() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hardware-profiles");
    let seeds: Vec<Vec<u8>> = [
        "rtx-4090.toml",
        "cpu-epyc-9654-12ch.toml",
        "apple-m4-10c.toml",
    ]
    .iter()
    .map(|f| std::fs::read(dir.join(f)).unwrap())
    .collect();
    fuzz(Target::HardwareToml, &seeds, 5000);
}

/// The inputs the coverage-guided runs crashed on (tests/fixtures/fuzz-crashes/<target>/, one
/// file each, named for what it does), refused now with an error.
#[test]
fn crashes_found_by_fuzzing_are_refused() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz-crashes");
    let mut n = 0;
    for target in Target::ALL {
        let Ok(files) = std::fs::read_dir(root.join(target.name())) else {
            continue;
        };
        for file in files {
            let path = file.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(target, &data));
            match outcome {
                Ok(Err(_)) => n += 1,
                Ok(Ok(())) => panic!("{}: accepted", path.display()),
                Err(_) => panic!("{}: panicked", path.display()),
            }
        }
    }
    assert!(n >= 2, "{n} crash files");
}
