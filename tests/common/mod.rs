//! Helpers shared by the integration tests.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;

/// `../shared` beside the checkout, as on developer machines and in CI.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
}

/// The ggml fixture folder: `QUANTFIT_GGML_FIXTURES`, else `../shared/fixtures/ggml-quants`.
pub fn ggml_fixture_dir() -> PathBuf {
    match std::env::var_os("QUANTFIT_GGML_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => shared_dir().join("fixtures").join("ggml-quants"),
    }
}

pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() % 4, 0, "{}", path.display());
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The SmolLM2 fixture as a usable Hugging Face folder: the shared files plus the decompressed
/// weights, made once under target/ and reused by every test.
pub fn smollm2_dir() -> PathBuf {
    use std::sync::OnceLock;
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| model_dir("smollm2-135m")).clone()
}

/// A `../shared/models/NAME` fixture as a usable Hugging Face folder (its weights
/// decompressed) under target/test-data/NAME: the folder keeps the fixture's name, from which
/// llama.cpp's converter derived the model's name.
pub fn model_dir(name: &str) -> PathBuf {
    let src = shared_dir().join("models").join(name);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-data")
        .join(name);
    let weights = dir.join("model.safetensors");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let f = entry.unwrap().file_name();
        let f = f.to_str().unwrap();
        if f.ends_with(".zst") || f == "reference.json" {
            continue;
        }
        let same = |a: &std::path::Path, b: &std::path::Path| {
            std::fs::read(a)
                .ok()
                .is_some_and(|x| std::fs::read(b).ok() == Some(x))
        };
        if same(&src.join(f), &dir.join(f)) {
            continue;
        }
        let _ = std::fs::remove_file(dir.join(f));
        std::fs::copy(src.join(f), dir.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", src.join(f).display()));
    }
    if !weights.exists() {
        // Decompress to a temporary name first: a test killed midway leaves no half file.
        let tmp = dir.join(format!(
            "model.safetensors.partial-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let input = std::fs::File::open(src.join("model.safetensors.zst")).unwrap();
        let mut decoder = zstd::stream::read::Decoder::new(input).unwrap();
        decoder.window_log_max(27).unwrap();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
        std::io::copy(&mut decoder, &mut out).unwrap();
        drop(out);
        std::fs::rename(&tmp, &weights).unwrap();
    }
    dir
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

pub use quantfit::source::synthetic::{safetensors_bytes, FakeTensor};

/// A small random Llama (hidden 64, GQA 2) with the SmolLM2 tokenizer, as BF16.
pub fn tiny_llama_tensors(n_layer: usize) -> Vec<FakeTensor> {
    quantfit::source::synthetic::llama_tensors(&tiny_spec(n_layer))
}

pub fn tiny_spec(n_layer: usize) -> quantfit::source::synthetic::LlamaSpec {
    quantfit::source::synthetic::LlamaSpec {
        n_layer,
        hidden: 64,
        ff: 128,
        n_head: 4,
        n_head_kv: 2,
        vocab: 49152,
        seed: 1,
    }
}

pub fn tiny_llama_config(n_layer: usize) -> serde_json::Value {
    quantfit::source::synthetic::llama_config(&tiny_spec(n_layer))
}

/// Write a tiny model folder; returns its path.
pub fn write_tiny_llama(dir: &std::path::Path, n_layer: usize) -> PathBuf {
    let tokenizer = shared_dir().join("models").join("smollm2-135m");
    quantfit::source::synthetic::write_llama(dir, &tiny_spec(n_layer), &tokenizer).unwrap();
    dir.to_path_buf()
}

/// Says which of the x86 quantizer paths this CPU cannot run, so a test that loops over
/// `Isa::available()` never passes silently for the paths it left out.
pub fn report_missing_isas(test: &str) {
    use quantfit::quant::isa::IsaKind;
    #[cfg(target_arch = "x86_64")]
    for (isa, needs) in [
        (IsaKind::Avx2, "avx2 and fma"),
        (IsaKind::Avx512, "avx512f, avx512bw and avx512vl"),
    ] {
        if !isa.is_supported() {
            quantfit::testing::skipped(
                test,
                &format!(
                    "the {} quantizer paths need {needs}, which this CPU lacks: not compared",
                    isa.name()
                ),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (test, IsaKind::Scalar);
}

/// One position of `steps_against_batch`: the batch's logits and the step's, the largest
/// difference between them, and the batch row's largest magnitude.
pub struct Step {
    pub position: usize,
    pub batch: Vec<f32>,
    pub step: Vec<f32>,
    pub worst: f32,
    pub scale: f32,
}

/// `tokens` run as one batch, and again with `tokens[..prompt]` as a prompt followed by the
/// rest one token at a time through the KV cache: each later position's logits both ways.
pub fn steps_against_batch(
    model: &quantfit::eval::model::Model,
    tokens: &[u32],
    prompt: usize,
) -> Vec<Step> {
    use quantfit::eval::model::KvCache;
    let n_vocab = model.config().n_vocab;
    let batch = model.forward(tokens, &mut KvCache::default(), 0).unwrap();
    let batch = batch.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut cache = KvCache::default();
    model
        .forward(&tokens[..prompt], &mut cache, prompt - 1)
        .unwrap();
    let mut steps = Vec::new();
    for (i, &t) in tokens.iter().enumerate().skip(prompt) {
        let step = model.forward(&[t], &mut cache, 0).unwrap();
        let step = step.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let row = batch[i * n_vocab..(i + 1) * n_vocab].to_vec();
        let scale = row.iter().fold(0f32, |a, &b| a.max(b.abs()));
        let worst = row
            .iter()
            .zip(&step)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        steps.push(Step {
            position: i,
            batch: row,
            step,
            worst,
            scale,
        });
    }
    steps
}

/// Converts a model folder to each of `types` under `out` (emptied first) with default rules;
/// returns (type name, file) pairs in the order asked.
pub fn convert_types(
    model: &std::path::Path,
    types: &[&str],
    out: &std::path::Path,
) -> Vec<(String, PathBuf)> {
    use quantfit::gguf::convert::{convert, ConvertOptions};
    use quantfit::quant::rules::FileType;
    let _ = std::fs::remove_dir_all(out);
    let opts = ConvertOptions::new(
        types
            .iter()
            .map(|t| FileType::from_name(t).unwrap_or_else(|| panic!("{t}")))
            .collect(),
        out.join(""),
    );
    let model = quantfit::source::hf::ModelDir::open(model).unwrap();
    let outputs = convert(&model, &opts).unwrap();
    types
        .iter()
        .map(|t| t.to_string())
        .zip(outputs.into_iter().map(|o| o.path))
        .collect()
}

/// quantfit's binary under the limits hostile input is held to: 4 GiB of address space and
/// 60 s of CPU time. A case that allocates what a header claims dies of the first, one that
/// loops on a wrapped length of the second, instead of passing on a machine with room to spare.
pub fn limited_quantfit() -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quantfit"));
    let limit = |resource, value: u64| {
        let l = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: `l` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(resource, &l) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which
    // is async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            limit(libc::RLIMIT_AS, 4 << 30)?;
            limit(libc::RLIMIT_CPU, 60)
        });
    }
    cmd
}

/// `plan`'s scenario at its defaults (64 GiB of host memory at 80 GB/s, $0.15/kWh, 3 years)
/// for one sequence of `ctx` tokens.
pub fn plan_scenario(ctx: u64) -> quantfit::plan::estimate::Scenario {
    quantfit::plan::estimate::Scenario {
        ctx,
        batch: 1,
        host_memory_gb: 64.0,
        host_bandwidth_gbs: 80.0,
        electricity_usd_per_kwh: 0.15,
        amortize_years: 3.0,
    }
}

/// One device holding `gpu_layers` layers, the routed experts of the first `cpu_moe_layers` in
/// host memory, an f16 cache.
pub fn one_device(gpu_layers: u64, cpu_moe_layers: u64) -> quantfit::plan::estimate::Config {
    quantfit::plan::estimate::Config {
        devices: 1,
        split: quantfit::plan::estimate::Split::Layer,
        gpu_layers,
        kv: quantfit::plan::estimate::KvType::F16,
        cpu_moe_layers,
    }
}
