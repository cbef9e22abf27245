//! The forward pass, tokenizers and perplexity against llama.cpp on the real SmolLM2 fixture:
//! token ids equal llama.cpp's (from tokenizer.json and from GGUF metadata), perplexity of
//! every type in reference.json within 0.5% of llama-perplexity's figure, the Hugging Face
//! folder within 0.5% of the F32 figure, and KL divergence that is ~0 for identical weights and
//! grows as bits shrink.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use quantfit::eval::base_logits::BaseLogits;
use quantfit::eval::perplexity::ChunkPlan;
use quantfit::eval::run::{evaluate, record_baseline, Compare, Scratch};
use quantfit::eval::tokenize::TextTokenizer;
use quantfit::gguf::convert::{convert, ConvertOptions};
use quantfit::gguf::{GgufFile, Value};
use quantfit::quant::rules::FileType;
use quantfit::source::hf::ModelDir;

fn reference() -> serde_json::Value {
    let path = common::shared_dir().join("models/smollm2-135m/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn corpus() -> String {
    std::fs::read_to_string(common::shared_dir().join("corpora/pride-and-prejudice.txt")).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenize")
        .join(name)
}

/// quantfit's own GGUF files of every reference type, converted once per test binary.
fn reference_ggufs() -> &'static Vec<(String, PathBuf)> {
    static FILES: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-out/eval");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let names: Vec<String> = reference()["types"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let types: Vec<FileType> = names
            .iter()
            .map(|n| FileType::from_name(n).unwrap())
            .collect();
        let model = ModelDir::open(&common::smollm2_dir()).unwrap();
        let opts = ConvertOptions::new(types, dir);
        let outputs = convert(&model, &opts).unwrap();
        names
            .into_iter()
            .zip(outputs.into_iter().map(|o| o.path))
            .collect()
    })
}

fn gguf_of(ty: &str) -> PathBuf {
    reference_ggufs()
        .iter()
        .find(|(n, _)| n == ty)
        .map(|(_, p)| p.clone())
        .unwrap()
}

fn ids_hash(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    common::sha256_hex(&bytes)
}

fn parse_ids(path: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(path).unwrap();
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect()
}

fn check_tokenizer(t: &TextTokenizer, what: &str) {
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pride.smollm2.json")).unwrap())
            .unwrap();
    let ids = t.encode(&corpus()).unwrap();
    assert_eq!(
        ids.len() as u64,
        want["count"].as_u64().unwrap(),
        "{what}: token count"
    );
    let first: Vec<u32> = want["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids[..first.len()], first[..], "{what}: first ids");
    assert_eq!(
        ids_hash(&ids),
        want["sha256_u32le"].as_str().unwrap(),
        "{what}: ids"
    );

    let sample = std::fs::read_to_string(fixture("sample.txt")).unwrap();
    assert_eq!(
        t.encode(&sample).unwrap(),
        parse_ids(&fixture("sample.smollm2.ids")),
        "{what}: sample with digits, accents, CJK, emoji, chat markup"
    );
}

#[test]
fn tokenizer_json_gives_llama_cpp_ids() {
    let dir = common::smollm2_dir();
    let t =
        TextTokenizer::from_tokenizer_json(&dir.join("tokenizer.json"), Some(1), false).unwrap();
    check_tokenizer(&t, "tokenizer.json");
}

#[test]
fn gguf_metadata_gives_llama_cpp_ids() {
    let file = GgufFile::open(&gguf_of("Q8_0")).unwrap();
    let t = TextTokenizer::from_gguf(&file).unwrap();
    assert!(!t.add_bos, "SmolLM2 does not add BOS");
    check_tokenizer(&t, "GGUF metadata");
}

/// The fixture vocabulary with two added tokens that are not special (user-defined), as in
/// tests/fixtures/tokenize/README.md: llama.cpp cuts them out of the text, longest first.
const USER_DEFINED: [(u32, &str); 2] = [(49150, "_call>"), (49151, "<tool_call>")];

fn check_user_defined(t: &TextTokenizer, what: &str) {
    let text = std::fs::read_to_string(fixture("user_defined.txt")).unwrap();
    assert_eq!(
        t.encode(&text).unwrap(),
        parse_ids(&fixture("user_defined.smollm2.ids")),
        "{what}: user-defined tokens"
    );
}

#[test]
fn user_defined_tokens_are_cut_out_as_llama_cpp_does() {
    // From tokenizer.json with the two tokens added.
    let dir = common::smollm2_dir();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    for (id, text) in USER_DEFINED {
        json["added_tokens"].as_array_mut().unwrap().push(
            serde_json::json!({"id": id, "content": text, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": false}),
        );
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-out/user-defined");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let t = TextTokenizer::from_tokenizer_json(&path, Some(1), false).unwrap();
    check_user_defined(&t, "tokenizer.json");

    // From GGUF metadata as quantfit's converter writes it for that tokenizer.json: the
    // texts in tokenizer.ggml.tokens, type 4 (USER_DEFINED) in tokenizer.ggml.token_type.
    let mut file = GgufFile::open(&gguf_of("Q8_0")).unwrap();
    for (key, value) in file.metadata.iter_mut() {
        let Value::Array(items) = value else { continue };
        for (id, text) in USER_DEFINED {
            match key.as_str() {
                "tokenizer.ggml.tokens" => items[id as usize] = Value::String(text.into()),
                "tokenizer.ggml.token_type" => items[id as usize] = Value::I32(4),
                _ => {}
            }
        }
    }
    let t = TextTokenizer::from_gguf(&file).unwrap();
    check_user_defined(&t, "GGUF metadata");
}

#[test]
fn perplexity_and_kld_match_llama_cpp() {
    let reference = reference();
    let text = corpus();
    let (ctx, chunks) = (
        reference["ctx"].as_u64().unwrap() as usize,
        reference["chunks"].as_u64().unwrap() as usize,
    );

    // The Hugging Face folder, run directly, is the baseline.
    let base = quantfit::eval::load(&common::smollm2_dir(), None).unwrap();
    let tokens = base.tokenizer.encode(&text).unwrap();
    let plan = ChunkPlan::new(tokens.len(), ctx, Some(chunks)).unwrap();
    let scratch = Scratch::create().unwrap();
    let writer = scratch.writer().unwrap();
    let (base_result, _) = record_baseline(&base, &tokens, plan, writer, "scratch", false).unwrap();
    let mut store = BaseLogits::open(scratch.path()).unwrap();
    drop(base);
    assert_eq!(base_result.tokens_scored, chunks * (ctx - 1 - ctx / 2));

    let mut failures = Vec::new();
    let mut report = Vec::new();
    let want_f32 = reference["types"]["F32"]["ppl"].as_f64().unwrap();
    let rel = base_result.ppl / want_f32 - 1.0;
    report.push(format!(
        "HF folder: {:.4} vs F32 {want_f32} ({:+.3}%)",
        base_result.ppl,
        rel * 100.0
    ));
    if rel.abs() > 0.005 {
        failures.push("HF folder".to_string());
    }

    let mut kld = std::collections::BTreeMap::new();
    for (ty, path) in reference_ggufs() {
        let m = quantfit::eval::load(path, None).unwrap();
        assert_eq!(m.quant, *ty);
        let r = evaluate(&m, &tokens, plan, Compare::Against(&mut store), false).unwrap();
        let want = reference["types"][ty]["ppl"].as_f64().unwrap();
        let rel = r.ppl / want - 1.0;
        let k = r.kld.as_ref().unwrap();
        report.push(format!(
            "{ty}: PPL {:.4} ± {:.5} vs llama.cpp {want} ({:+.3}%), KLD {:.6}, same top {:.3}",
            r.ppl,
            r.ppl_err,
            rel * 100.0,
            k.kld_mean,
            k.same_top_rate
        ));
        if rel.abs() > 0.005 {
            failures.push(ty.clone());
        }
        // The error bar is llama.cpp's too (same tokens, nearly the same NLL spread).
        let want_err = reference["types"][ty]["ppl_err"].as_f64().unwrap();
        assert!(
            (r.ppl_err / want_err - 1.0).abs() < 0.02,
            "{ty}: error {}",
            r.ppl_err
        );
        // The baseline is stored as llama.cpp stores it, 16 bits per log-probability.
        assert!((k.baseline_ppl / base_result.ppl - 1.0).abs() < 1e-5);
        kld.insert(ty.clone(), k.kld_mean);
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "off by more than 0.5%: {failures:?}\n{}",
        report.join("\n")
    );

    // Same weights (F32 GGUF vs the folder in F32): no divergence beyond float noise.
    assert!(kld["F32"] < 1e-5, "{}", report.join("\n"));
    // Fewer bits, more divergence.
    let order = ["F32", "Q8_0", "Q6_K", "Q4_K_M", "Q2_K"];
    for w in order.windows(2) {
        assert!(
            kld[w[0]] < kld[w[1]],
            "KLD {} !< {}\n{}",
            w[0],
            w[1],
            report.join("\n")
        );
    }
}

/// The KV cache: feeding tokens one at a time (the generation path) gives the logits of
/// feeding them as one batch (the prompt path). In F32 the two differ by summation order only;
/// quantized models round every activation to 8 bits, so order-level differences flip a few
/// roundings and grow through the layers (a few percent of the logit range, as between
/// llama.cpp's own batch and token-by-token runs), while a cache or kernel error would make
/// the rows unrelated.
#[test]
fn incremental_decoding_matches_the_batch() {
    let text = corpus();
    for (path, tolerance) in [
        (common::smollm2_dir(), 0.002),
        (gguf_of("Q8_0"), 0.15),
        (gguf_of("Q4_K_M"), 0.15),
    ] {
        let m = quantfit::eval::load(&path, None).unwrap();
        let head: String = text.chars().take(2000).collect();
        let tokens = m.tokenizer.encode(&head).unwrap();
        for s in common::steps_against_batch(&m.model, &tokens[..40], 32) {
            let (i, worst) = (s.position, s.worst);
            assert!(
                worst < tolerance * s.scale,
                "{}: position {i}: logits differ by {worst} (scale {})",
                path.display(),
                s.scale
            );
            // The same next token, unless the batch's top two are closer than the difference.
            let mut sorted: Vec<(usize, f32)> = s.batch.iter().copied().enumerate().collect();
            sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
            let best_step = s
                .step
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (j, &v)| if v > b.1 { (j, v) } else { b })
                .0;
            if sorted[0].1 - sorted[1].1 > 2.0 * worst {
                assert_eq!(sorted[0].0, best_step, "{}: position {i}", path.display());
            }
        }
    }
}

/// The decoding team computes what the candle graph computes for one token (the same kernels,
/// roundings and norm arithmetic); and since every row and head is computed the same way
/// whichever member takes it, teams of any size give identical logits.
#[test]
fn decoding_team_matches_the_graph_and_its_own_sizes() {
    use quantfit::eval::decode::Decoder;
    use quantfit::eval::model::KvCache;
    let text = corpus();
    // F32 weights: f32 GEMM and dot products sum in different orders (a few F16 roundings of
    // Q/K/V flip). Quantized weights: the same kernels on the same roundings, so equal.
    for (path, tolerance) in [
        (common::smollm2_dir(), 2e-3),
        (gguf_of("Q8_0"), 1e-6),
        (gguf_of("Q4_K_M"), 1e-6),
    ] {
        let m = quantfit::eval::load(&path, None).unwrap();
        let head: String = text.chars().take(500).collect();
        let tokens = m.tokenizer.encode(&head).unwrap();
        let tokens = &tokens[..24];
        let mut graph_cache = KvCache::default();
        let mut teams: Vec<(Decoder, KvCache)> = [1, 2, 3]
            .into_iter()
            .map(|n| (Decoder::new(&m.model, n).unwrap(), KvCache::default()))
            .collect();
        for (i, &t) in tokens.iter().enumerate() {
            let graph = m.model.forward_graph(&[t], &mut graph_cache, 0).unwrap();
            let graph = graph.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let outs: Vec<Vec<f32>> = teams
                .iter_mut()
                .map(|(d, cache)| d.decode(&m.model, t, cache).unwrap())
                .collect();
            for (out, (d, _)) in outs.iter().zip(&teams).skip(1) {
                assert!(
                    out == &outs[0],
                    "{}: position {i}: a team of {} differs from a team of 1",
                    path.display(),
                    d.threads()
                );
            }
            let scale = graph.iter().fold(0f32, |a, &b| a.max(b.abs()));
            let worst = graph
                .iter()
                .zip(&outs[0])
                .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(
                worst <= tolerance * scale,
                "{}: position {i}: team and graph differ by {worst} (scale {scale})",
                path.display()
            );
        }
    }
}
