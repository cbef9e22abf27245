//! The planner's weight sizes against published llama.cpp figures and against the converter.

mod common;

use quantfit::plan::catalog::{self, parameter_count};
use quantfit::plan::estimate::{kv_bytes_per_token, weight_bytes, KvType, GIB};
use quantfit::quant::rules::FileType;

/// tools/quantize/README.md (llama.cpp 0c1e57098), meta-llama/Llama-3.1-8B: bits/weight as
/// printed (file tensor bytes x 8 / parameters).
#[test]
fn llama_3_1_8b_bits_per_weight_match_llama_cpp_table() {
    let m = catalog::resolve("llama-3.1-8b").unwrap();
    let params = parameter_count(&m) as f64;
    // The checkpoint's 8,030,261,248 and the 64 RoPE divisors the converter adds.
    assert_eq!(parameter_count(&m), 8_030_261_248 + 64);
    let table = [
        ("Q2_K", 3.1593),
        ("Q3_K_S", 3.6429),
        ("Q3_K_M", 3.9960),
        ("Q3_K_L", 4.2979),
        ("Q4_K_S", 4.6672),
        ("Q4_K_M", 4.8944),
        ("Q5_K_S", 5.5704),
        ("Q5_K_M", 5.7036),
        ("Q6_K", 6.5633),
        ("Q8_0", 8.5008),
        ("IQ4_XS", 4.4597),
        ("IQ4_NL", 4.6818),
        ("F16", 16.0005),
    ];
    for (q, want) in table {
        // The planned bytes include rope_freqs.weight (64 f32), which Llama 3.1's RoPE
        // scaling adds and llama.cpp counts in its bits per weight.
        let bpw = weight_bytes(&m, FileType::from_name(q).unwrap()) as f64 * 8.0 / params;
        assert_eq!(
            format!("{bpw:.4}"),
            format!("{want:.4}"),
            "{q}: planned {bpw:.5}"
        );
    }
}

/// llama-bench output in llama.cpp PRs #2917 and #4766 for LLaMA / Llama-2 7B: size (GiB) and
/// parameters as printed.
#[test]
fn llama_2_7b_sizes_match_llama_bench() {
    let m = catalog::resolve("llama-2-7b").unwrap();
    assert_eq!(format!("{:.2}", parameter_count(&m) as f64 / 1e9), "6.74");
    for (q, gib) in [
        ("F16", "12.55"),
        ("Q8_0", "6.67"),
        ("Q4_0", "3.56"),
        ("Q4_1", "3.95"),
    ] {
        let got = weight_bytes(&m, FileType::from_name(q).unwrap()) as f64 / GIB;
        assert_eq!(format!("{got:.2}"), gib, "{q}");
    }
}

/// Sizes and parameter counts as llama-bench printed them in a public log (llama.cpp build
/// 72272b83): Llama-2-13B (Orca-2-13B) Q4_0, Llama-3-8B Q4_0 and Llama-3-70B Q4_0 (Llama 3.1
/// adds only rope_freqs, 256 bytes: the same at this precision).
#[test]
fn llama_bench_sizes_for_13b_8b_and_70b() {
    for (id, q, gib, params) in [
        ("llama-2-13b", "Q4_0", "6.86", "13.02"),
        ("llama-3.1-8b", "Q4_0", "4.33", "8.03"),
        ("llama-3.1-70b", "Q4_0", "37.22", "70.55"),
    ] {
        let m = catalog::resolve(id).unwrap();
        assert_eq!(
            format!("{:.2}", parameter_count(&m) as f64 / 1e9),
            params,
            "{id}"
        );
        let got = weight_bytes(&m, FileType::from_name(q).unwrap()) as f64 / GIB;
        assert_eq!(format!("{got:.2}"), gib, "{id} {q}");
    }
}

#[test]
fn kv_cache_per_token_with_and_without_gqa() {
    let kib = |id: &str| kv_bytes_per_token(&catalog::resolve(id).unwrap(), KvType::F16) / 1024.0;
    assert_eq!(kib("llama-2-7b"), 512.0);
    assert_eq!(kib("llama-2-70b"), 320.0);
    assert_eq!(kib("llama-3.1-8b"), 128.0);
    let q8 = kv_bytes_per_token(&catalog::resolve("llama-2-7b").unwrap(), KvType::Q8_0) / 1024.0;
    assert_eq!(q8, 512.0 * 34.0 / 64.0);
}

/// A planned size is the converted file's tensor bytes (one implementation of the rules).
#[test]
fn planned_size_equals_converted_file() {
    use quantfit::gguf::convert::{convert, ConvertOptions};
    let dir = common::smollm2_dir();
    let spec = catalog::resolve(dir.to_str().unwrap()).unwrap();
    let model = quantfit::source::hf::ModelDir::open(&dir).unwrap();
    let out = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-out/plan");
    let _ = std::fs::remove_dir_all(&out);
    let types = vec![
        FileType::Q4_K_M,
        FileType::Q2_K,
        FileType::IQ4_XS,
        FileType::Q8_0,
    ];
    let opts = ConvertOptions::new(types.clone(), out);
    let outputs = convert(&model, &opts).unwrap();
    for (t, o) in types.iter().zip(&outputs) {
        assert_eq!(weight_bytes(&spec, *t), o.tensor_bytes, "{t}");
    }
}

/// The KV cache the planner sizes is the one llama.cpp allocates (tests/fixtures/kv-cache, made
/// by its make.py from llama-perplexity's `llama_kv_cache` lines): per cache, the same layers
/// (sliding-window layers apart in Gemma 2 and 3), the same cells per layer (the context
/// padded to 256; in sliding layers at most the window plus a micro-batch, padded), one
/// stream per sequence, and the bytes llama.cpp prints to its 0.01 MiB, f16 and q8_0 alike.
#[test]
fn kv_cache_is_what_llama_cpp_allocates() {
    use quantfit::plan::estimate::{kv_cells, kv_layer_bytes, sliding_layer};
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kv-cache");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let mut sliding_cases = 0;
    for case in reference["cases"].as_array().unwrap() {
        let name = case["model"].as_str().unwrap();
        let m = catalog::resolve(common::model_dir(name).to_str().unwrap()).unwrap();
        let get = |k: &str| case[k].as_u64().unwrap();
        let (ctx, ubatch) = (get("ctx"), get("ubatch"));
        let seqs = (get("batch") / ctx).max(1);
        let kv = KvType::from_name(case["kv"].as_str().unwrap()).unwrap();
        let what = case["command"].as_str().unwrap();
        for cache in case["caches"].as_array().unwrap() {
            let swa = cache["kind"] == "swa";
            sliding_cases += swa as usize;
            let layers: Vec<u64> = (0..m.hparams.n_layer)
                .filter(|&il| sliding_layer(&m, il) == swa)
                .collect();
            assert_eq!(
                layers.len() as u64,
                cache["layers"].as_u64().unwrap(),
                "{what}"
            );
            assert_eq!(seqs, cache["streams"].as_u64().unwrap(), "{what}");
            for &il in &layers {
                assert_eq!(
                    kv_cells(&m, il, ctx, ubatch),
                    cache["cells"].as_u64().unwrap(),
                    "{what}: layer {il}"
                );
            }
            let bytes: f64 = layers
                .iter()
                .map(|&il| kv_layer_bytes(&m, kv, il, ctx, seqs, ubatch))
                .sum();
            let mib = bytes / (1024.0 * 1024.0);
            let want = cache["size_mib"].as_f64().unwrap();
            assert!(
                (mib - want).abs() <= 0.005 + 1e-9,
                "{what}: planned {mib:.4} MiB, llama.cpp {want} MiB"
            );
        }
    }
    assert!(
        sliding_cases >= 10,
        "the Gemma fixtures have sliding caches"
    );
}

/// What a generated token reads of a mixture of experts: every tensor of the file (the output
/// head, the router, attention) except the token embeddings, and of the stacked expert
/// tensors only the share of the experts it is routed to (Mixtral's 2 of 8, Qwen3-MoE's of
/// its config), counted from the converted file's own tensor bytes.
#[test]
fn a_token_reads_only_its_experts() {
    use quantfit::gguf::GgufFile;
    use quantfit::plan::estimate::{footprint, weights_read_per_token};
    let out = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-out/moe-read");
    for name in ["tiny-mixtral", "tiny-qwen3moe"] {
        let dir = common::model_dir(name);
        let m = catalog::resolve(dir.to_str().unwrap()).unwrap();
        let (k, n) = (m.hparams.n_expert_used, m.hparams.n_expert);
        assert!(n > k && k > 0, "{name}: {k} of {n} experts");
        let file = common::convert_types(&dir, &["Q4_K_M"], &out.join(name))
            .remove(0)
            .1;
        let f = GgufFile::open(&file).unwrap();
        let mut want = 0.0;
        for t in &f.tensors {
            want += match t.name.as_str() {
                "token_embd.weight" => 0.0,
                x if x.contains("_exps.") => t.bytes as f64 * k as f64 / n as f64,
                _ => t.bytes as f64,
            };
        }
        let got = weights_read_per_token(&footprint(&m, FileType::Q4_K_M), &m);
        assert!(
            (got / want - 1.0).abs() < 1e-12,
            "{name}: planned {got}, file {want}"
        );
        let all: u64 = f.tensors.iter().map(|t| t.bytes).sum();
        assert!(
            got < 0.8 * all as f64,
            "{name}: {got} of {all} bytes read per token"
        );
    }
}

/// A mixture's layers in host memory: a token reads only its experts there, but a prompt
/// batch uses every expert, so a GPU backend copies all of the layers' bytes over the link for
/// each micro-batch (the prefill time is at least that copy).
#[test]
fn a_prompt_batch_copies_every_expert_of_host_layers() {
    use quantfit::plan::estimate::{estimate, footprint, UBATCH};
    let m = catalog::resolve(common::model_dir("tiny-mixtral").to_str().unwrap()).unwrap();
    let hw = quantfit::plan::hardware::resolve("rtx-4090").unwrap();
    let s = common::plan_scenario(512);
    let fp = footprint(&m, FileType::Q4_K_M);
    let host_weights = (fp.layers.iter().sum::<u64>() + fp.output) as f64;
    let copy_s = host_weights / (hw.interconnect_gbs * 1e9);
    let batch_s = |gpu_layers| {
        let c = common::one_device(gpu_layers, 0);
        UBATCH as f64 / estimate(&m, FileType::Q4_K_M, &hw, &s, &c).prefill_tokens_per_s
    };
    // The same compute either way; in host memory, the copy on top.
    let extra = batch_s(0) - batch_s(m.hparams.n_layer);
    assert!(
        (extra / copy_s - 1.0).abs() < 1e-9,
        "host layers add {extra} s to a micro-batch; copying all their bytes takes {copy_s} s"
    );
}

/// `--n-cpu-moe N`: the routed experts of the first N layers move from the device to host
/// memory, byte for byte, and everything else stays.
#[test]
fn experts_kept_in_host_memory() {
    use quantfit::plan::estimate::{estimate, footprint};
    let m = catalog::resolve(common::model_dir("tiny-qwen3moe").to_str().unwrap()).unwrap();
    let hw = quantfit::plan::hardware::resolve("rtx-4090").unwrap();
    let s = common::plan_scenario(512);
    let at = |cpu_moe_layers| {
        let c = common::one_device(m.hparams.n_layer, cpu_moe_layers);
        estimate(&m, FileType::Q4_K_M, &hw, &s, &c)
    };
    let fp = footprint(&m, FileType::Q4_K_M);
    let (none, first) = (at(0), at(1));
    let moved = fp.layer_experts[0] as f64;
    assert!(moved > 0.0);
    assert_eq!(none.device_bytes - first.device_bytes, moved);
    assert_eq!(first.host_bytes - none.host_bytes, moved);
    // The CPU reads its share of them per token, slower than the device would.
    assert!(first.decode_tokens_per_s < none.decode_tokens_per_s);
}
