//! Broken inputs: every case gives one clear line on stderr that names the file and the
//! problem, exit code 2, and no output file (not even a partial one), within 4 GiB of address
//! space and 60 s of CPU time.

mod common;

use std::path::{Path, PathBuf};

use common::{safetensors_bytes, tiny_llama_tensors, write_tiny_llama, FakeTensor};

fn case_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-bad")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `quantfit quantize MODEL --type TYPE -o TARGET --json`, under hostile input's limits.
fn run_quantize(model: &Path, ty: &str, target: &Path) -> std::process::Output {
    common::limited_quantfit()
        .args([
            "quantize",
            model.to_str().unwrap(),
            "--type",
            ty,
            "-o",
            target.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap()
}

/// Run `quantfit quantize` on a folder into an empty output folder; check the failure.
fn expect_failure(model: &Path, must_mention: &[&str]) {
    let out = model.parent().unwrap().join(format!(
        "{}-out",
        model.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let target = out.join("model.gguf");
    let run = run_quantize(model, "Q4_K_M", &target);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        run.status.code(),
        Some(2),
        "{}: {} (a signal: past the memory or CPU limit), stderr {stderr}",
        model.display(),
        run.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{}: expected one error line, got:\n{stderr}",
        model.display()
    );
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for m in must_mention {
        assert!(
            lines[0].contains(m),
            "{}: error should mention {m:?}: {}",
            model.display(),
            lines[0]
        );
    }
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(
        left.is_empty(),
        "{}: output left behind: {left:?}",
        model.display()
    );
}

fn with_weights(name: &str, bytes: Vec<u8>) -> PathBuf {
    let dir = write_tiny_llama(&case_dir(name), 2);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    dir
}

#[test]
fn a_valid_tiny_model_converts() {
    let dir = write_tiny_llama(&case_dir("valid"), 2);
    let out = dir.join("ok.gguf");
    let run = run_quantize(&dir, "Q4_K_M", &out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.exists());
}

#[test]
fn truncated_weights() {
    let mut bytes = safetensors_bytes(&tiny_llama_tensors(2));
    bytes.truncate(bytes.len() - 1000);
    expect_failure(
        &with_weights("truncated", bytes),
        &["model.safetensors", "outside the data section"],
    );
    expect_failure(
        &with_weights("truncated_header", vec![1, 2, 3]),
        &["model.safetensors", "truncated"],
    );
}

#[test]
fn header_lies() {
    let mut bytes = safetensors_bytes(&tiny_llama_tensors(2));
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    expect_failure(
        &with_weights("header_length", bytes),
        &["model.safetensors", "header length"],
    );

    let mut tensors = tiny_llama_tensors(2);
    tensors[3].shape = vec![63, 64]; // says fewer elements than stored
    expect_failure(
        &with_weights("size_lie", safetensors_bytes(&tensors)),
        &["model.layers.0.self_attn.k_proj.weight", "needs"],
    );

    let mut bytes = safetensors_bytes(&tiny_llama_tensors(2));
    bytes[8] = b'['; // not an object any more
    expect_failure(
        &with_weights("bad_json", bytes),
        &["model.safetensors", "JSON"],
    );

    // Two tensors claiming the same bytes.
    let tensors = vec![
        FakeTensor {
            name: "a".into(),
            dtype: "F32",
            shape: vec![4],
            data: vec![0; 16],
        },
        FakeTensor {
            name: "b".into(),
            dtype: "F32",
            shape: vec![4],
            data: vec![0; 16],
        },
    ];
    let mut bytes = safetensors_bytes(&tensors);
    let h_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + h_len].to_vec())
        .unwrap()
        .replace("[16,32]", "[ 8,24]");
    assert_eq!(header.len(), h_len);
    bytes[8..8 + h_len].copy_from_slice(header.as_bytes());
    expect_failure(
        &with_weights("overlap", bytes),
        &["model.safetensors", "overlap"],
    );
}

#[test]
fn unknown_and_unsupported_dtypes() {
    let mut tensors = tiny_llama_tensors(2);
    tensors[1].dtype = "I16";
    expect_failure(
        &with_weights("int_dtype", safetensors_bytes(&tensors)),
        &["unsupported dtype I16", "input_layernorm"],
    );
    let mut tensors = tiny_llama_tensors(2);
    tensors[1].dtype = "Q7";
    expect_failure(
        &with_weights("unknown_dtype", safetensors_bytes(&tensors)),
        &["unknown dtype", "Q7"],
    );
}

#[test]
fn nan_weights() {
    let mut tensors = tiny_llama_tensors(2);
    // BF16 NaN in row 3, column 5 of q_proj (64 columns).
    let at = 2 * (3 * 64 + 5);
    tensors[2].data[at..at + 2].copy_from_slice(&0x7FC0u16.to_le_bytes());
    expect_failure(
        &with_weights("nan", safetensors_bytes(&tensors)),
        &["model.layers.0.self_attn.q_proj.weight", "row 3, column 5"],
    );
}

#[test]
fn config_problems() {
    let dir = write_tiny_llama(&case_dir("missing_key"), 2);
    let mut config = common::tiny_llama_config(2);
    config.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    expect_failure(&dir, &["config.json", "hidden_size"]);

    let dir = write_tiny_llama(&case_dir("arch"), 2);
    let mut config = common::tiny_llama_config(2);
    config["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    expect_failure(
        &dir,
        &["GPTNeoXForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM"],
    );

    let dir = write_tiny_llama(&case_dir("no_config"), 2);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    expect_failure(&dir, &["config.json"]);

    let dir = write_tiny_llama(&case_dir("vocab_mismatch"), 2);
    let mut config = common::tiny_llama_config(2);
    config["vocab_size"] = serde_json::json!(1000);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    expect_failure(&dir, &["tokenizer.json", "vocab_size"]);
}

#[test]
fn unwritable_output() {
    let dir = write_tiny_llama(&case_dir("unwritable"), 2);
    let target = dir.join("no/such/folder/x.gguf");
    let run = run_quantize(&dir, "Q8_0", &target);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.trim().lines().count() == 1 && stderr.contains("x.gguf"),
        "{stderr}"
    );
    assert!(!target.exists());
}

/// The architecture's description against what the folder holds: shapes the config implies,
/// every tensor once, nothing the description does not know, config values in range.
#[test]
fn weights_that_contradict_the_config() {
    let dir = write_tiny_llama(&case_dir("heads"), 2);
    let mut config = common::tiny_llama_config(2);
    config["num_key_value_heads"] = serde_json::json!(4);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    expect_failure(
        &dir,
        &[
            "model.layers.0.self_attn.k_proj.weight",
            "config.json implies",
        ],
    );

    let mut tensors = tiny_llama_tensors(2);
    tensors.push(FakeTensor {
        name: "model.layers.0.mystery.weight".into(),
        dtype: "F32",
        shape: vec![4],
        data: vec![0; 16],
    });
    expect_failure(
        &with_weights("extra", safetensors_bytes(&tensors)),
        &["model.layers.0.mystery.weight", "not part of"],
    );

    let tensors: Vec<FakeTensor> = tiny_llama_tensors(2)
        .into_iter()
        .filter(|t| t.name != "model.layers.1.mlp.down_proj.weight")
        .collect();
    expect_failure(
        &with_weights("missing", safetensors_bytes(&tensors)),
        &["model.layers.1.mlp.down_proj.weight", "missing"],
    );

    let dir = write_tiny_llama(&case_dir("bias_flag"), 2);
    let mut config = common::tiny_llama_config(2);
    config["attention_bias"] = serde_json::json!(true);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    expect_failure(&dir, &["model.layers.0.self_attn.q_proj.bias", "missing"]);

    for (key, value, mention, i) in [
        (
            "num_hidden_layers",
            serde_json::json!(1_000_000_000u64),
            "num_hidden_layers",
        ),
        ("hidden_size", serde_json::json!(0), "hidden_size"),
        // Kinds quantfit does not implement would run as another model.
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
            "\"yarn\" is not supported",
        ),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "low_freq_factor": 4.0, "high_freq_factor": 1.0}),
            "high_freq_factor",
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (k, v, m))| (k, v, m, i))
    {
        let dir = write_tiny_llama(&case_dir(&format!("cfg_{key}_{i}")), 2);
        let mut config = common::tiny_llama_config(2);
        config[key] = value;
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        expect_failure(&dir, &["config.json", mention]);
    }
}

/// A copy of a shared mixture-of-experts fixture with its config.json edited and names in its
/// weights' header replaced (by names of the same length, so the offsets stay valid).
fn moe_case(
    case: &str,
    fixture: &str,
    edit_config: impl Fn(&mut serde_json::Value),
    renames: &[(&str, &str)],
) -> PathBuf {
    let src = common::model_dir(fixture);
    let dir = case_dir(case).join(fixture);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit_config(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let weights = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    for (from, to) in renames {
        assert_eq!(from.len(), to.len());
        assert!(header.contains(from), "{from}");
        header = header.replace(from, to);
    }
    bytes[8..8 + header_len].copy_from_slice(header.as_bytes());
    std::fs::write(&weights, bytes).unwrap();
    dir
}

#[test]
fn mixtures_of_experts_that_contradict_their_weights() {
    // More or fewer experts configured than the weights hold: the router says so first.
    expect_failure(
        &moe_case(
            "moe_more_experts",
            "tiny-qwen3moe",
            |c| c["num_experts"] = 16.into(),
            &[],
        ),
        &[
            "model.layers.0.mlp.gate.weight",
            "[8, 256]",
            "implies [16, 256]",
        ],
    );
    // One expert's matrix missing (its name replaced by one the model has no use for).
    expect_failure(
        &moe_case(
            "moe_missing_expert",
            "tiny-qwen3moe",
            |_| {},
            &[(
                "layers.1.mlp.experts.3.down_proj",
                "layers.1.mlp.experts.9.down_proj",
            )],
        ),
        &[
            "model.layers.1.mlp.experts.3.down_proj.weight",
            "is missing",
        ],
    );
    expect_failure(
        &moe_case(
            "moe_fewer_experts",
            "tiny-mixtral",
            |c| c["num_local_experts"] = 3.into(),
            &[],
        ),
        &[
            "model.layers.0.block_sparse_moe.gate.weight",
            "implies [3, 256]",
        ],
    );
    expect_failure(
        &moe_case(
            "moe_used",
            "tiny-mixtral",
            |c| c["num_experts_per_tok"] = 5.into(),
            &[],
        ),
        &["config.json", "num_experts_per_tok", "5 of 4"],
    );
    // Heads that do not match the attention weights.
    expect_failure(
        &moe_case(
            "moe_heads",
            "tiny-mixtral",
            |c| c["num_attention_heads"] = 8.into(),
            &[],
        ),
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "config.json implies",
        ],
    );
    expect_failure(
        &moe_case(
            "moe_unknown_class",
            "tiny-mixtral",
            |c| c["architectures"] = serde_json::json!(["FooMoeForCausalLM"]),
            &[],
        ),
        &[
            "config.json",
            "unsupported architecture FooMoeForCausalLM",
            "Qwen3MoeForCausalLM",
            "sized by plan only: Phi3ForCausalLM",
        ],
    );
}

/// `inspect` and `plan` read a folder's weights as the converter does: the same refusal.
fn refused_by_inspect_and_plan(model: &Path, must_mention: &str) {
    let m = model.to_str().unwrap();
    for args in [
        vec!["inspect", m],
        vec!["plan", "--model", m, "--quant", "Q8_0", "--ctx", "256"],
    ] {
        let run = common::limited_quantfit().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(
            run.status.code(),
            Some(2),
            "{args:?}: {} (a signal: past the memory or CPU limit), stderr {stderr}",
            run.status
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("error: ") && lines[0].contains(must_mention),
            "{args:?}: want {must_mention:?} in one error line, got:\n{stderr}"
        );
    }
}

/// The header's text with `from` replaced by `to` (the data section is unchanged: its
/// offsets count from the header's end).
fn edit_header(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + len].to_vec()).unwrap();
    assert!(header.contains(from), "{from}");
    let header = header.replacen(from, to, 1);
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(&bytes[8 + len..]);
    out
}

/// Checkpoints that read as a model only if a reader takes the last of two entries, or
/// skips what it cannot use.
#[test]
fn tensors_named_twice_or_holding_nothing() {
    // JSON readers keep the last of two equal keys; which weights were meant is unknowable.
    let bytes = safetensors_bytes(&tiny_llama_tensors(2));
    let bytes = edit_header(
        &bytes,
        "\"model.layers.1.mlp.up_proj.weight\"",
        "\"model.layers.1.mlp.gate_proj.weight\"",
    );
    let dir = with_weights("named_twice", bytes);
    expect_failure(
        &dir,
        &[
            "model.safetensors",
            "model.layers.1.mlp.gate_proj.weight appears twice",
        ],
    );
    refused_by_inspect_and_plan(&dir, "appears twice");

    // An empty tensor, even one the converter would ignore.
    let mut tensors = tiny_llama_tensors(2);
    tensors.push(FakeTensor {
        name: "model.layers.1.self_attn.rotary_emb.inv_freq".into(),
        dtype: "F32",
        shape: vec![0],
        data: Vec::new(),
    });
    let dir = with_weights("empty_tensor", safetensors_bytes(&tensors));
    expect_failure(&dir, &["rotary_emb.inv_freq", "holds no elements"]);
    refused_by_inspect_and_plan(&dir, "holds no elements");

    // Weights that contradict config.json: plan would size another model than the folder's.
    let mut tensors = tiny_llama_tensors(2);
    tensors[0].shape.reverse();
    let dir = with_weights("transposed", safetensors_bytes(&tensors));
    refused_by_inspect_and_plan(&dir, "config.json implies");
}

/// Values that make a norm or RoPE produce NaN, refused before any work.
#[test]
fn config_values_no_model_can_run_with() {
    for (key, value, mention) in [
        (
            "rms_norm_eps",
            serde_json::json!(0.0),
            "\"rms_norm_eps\" is 0",
        ),
        (
            "rms_norm_eps",
            serde_json::json!(-1e-5),
            "\"rms_norm_eps\" is -0.00001",
        ),
        ("rope_theta", serde_json::json!(0.0), "\"rope_theta\" is 0"),
        (
            "rope_theta",
            serde_json::json!(-5e5),
            "\"rope_theta\" is -500000",
        ),
    ] {
        let dir = write_tiny_llama(&case_dir(&format!("value_{key}_{value}")), 2);
        let mut config = common::tiny_llama_config(2);
        config[key] = value;
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        expect_failure(&dir, &["config.json", mention]);
        refused_by_inspect_and_plan(&dir, mention);
    }
}

/// A shard index is read in time linear in its entries: 200,000 listed shards give the
/// missing-shard error at once (a search per entry took minutes).
#[test]
fn an_index_of_very_many_shards() {
    let dir = write_tiny_llama(&case_dir("many_shards"), 2);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let n = 200_000;
    let map: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            (
                format!("model.layers.{i}.mlp.up_proj.weight"),
                format!("model-{:06}-of-{n:06}.safetensors", i + 1).into(),
            )
        })
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    expect_failure(
        &dir,
        &[
            "model.safetensors.index.json",
            "shard model-000001-of-200000.safetensors is listed but missing",
        ],
    );
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A SentencePiece `tokenizer.model` whose length fields claim nearly 2^64 bytes: added to
/// the read position they wrap around to the field's own key, which once sent the reader over
/// the same bytes forever. Each is refused as malformed, at once.
#[test]
fn sentencepiece_lengths_that_wrap() {
    let piece = |text: &[u8]| {
        let mut p = vec![0x0A];
        varint(text.len() as u64, &mut p);
        p.extend_from_slice(text);
        p.extend_from_slice(&[0x15, 0, 0, 0, 0, 0x18, 1]);
        let mut m = vec![0x0A];
        varint(p.len() as u64, &mut m);
        m.extend(p);
        m
    };
    // After a one-byte key and this ten-byte length, the read position plus the length wraps
    // to the key itself.
    let wrapping = u64::MAX - 10;
    // An unknown field of a piece, an unknown top-level field, and a piece's own text.
    let mut inside = vec![0x22];
    varint(wrapping, &mut inside);
    let mut in_piece = vec![0x0A];
    varint(inside.len() as u64 + 4, &mut in_piece);
    in_piece.extend(inside);
    in_piece.extend_from_slice(&[0x18, 1, 0x18, 1]);
    let mut top = vec![0x12];
    varint(wrapping, &mut top);
    top.extend_from_slice(&[0; 16]);
    let mut text = vec![0x0A, 0x0E, 0x0A];
    varint(wrapping, &mut text);
    text.extend_from_slice(&[0; 8]);
    for (name, tail) in [
        ("sp_wrap_in_piece", in_piece),
        ("sp_wrap_top", top),
        ("sp_wrap_text", text),
    ] {
        let dir = write_tiny_llama(&case_dir(name), 2);
        let mut model = piece(b"<unk>");
        model.extend(piece(b"a"));
        model.extend(tail);
        std::fs::write(dir.join("tokenizer.model"), model).unwrap();
        expect_failure(&dir, &["tokenizer.model", "malformed protobuf"]);
    }
}

/// A 10 MB token, in tokenizer.json's vocabulary, its added tokens, or a SentencePiece piece:
/// no vocabulary has one, and every tokenizer built from it would search all text for it.
#[test]
fn tokens_of_ten_megabytes() {
    let long = "a".repeat(10 << 20);
    for (name, in_added) in [("token_10mb_vocab", false), ("token_10mb_added", true)] {
        let dir = write_tiny_llama(&case_dir(name), 2);
        let path = dir.join("tokenizer.json");
        let mut t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // Token 5 is an added token of the SmolLM2 vocabulary, listed in both places.
        if in_added {
            t["added_tokens"][5]["content"] = long.clone().into();
        } else {
            let vocab = t["model"]["vocab"].as_object_mut().unwrap();
            let old = vocab.iter().find(|(_, id)| **id == 5).unwrap().0.clone();
            vocab.remove(&old);
            vocab.insert(long.clone(), 5.into());
        }
        assert_eq!(t["added_tokens"][5]["id"], 5);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, t.to_string()).unwrap();
        expect_failure(&dir, &["tokenizer.json", "token 5 is 10485760 bytes long"]);
    }
    let dir = write_tiny_llama(&case_dir("token_10mb_piece"), 2);
    let mut text = vec![0x0A];
    varint(long.len() as u64, &mut text);
    text.extend_from_slice(long.as_bytes());
    let mut model = vec![0x0A];
    varint(text.len() as u64, &mut model);
    model.extend(text);
    std::fs::write(dir.join("tokenizer.model"), model).unwrap();
    expect_failure(&dir, &["tokenizer.model", "token 0 is 10485760 bytes long"]);
}

/// A tokenizer.json merge whose join is longer than every token: the tokenizers crate panics
/// on it (found by fuzzing); quantfit refuses it, naming the merge and the missing token.
#[test]
fn a_merge_longer_than_every_token() {
    let dir = write_tiny_llama(&case_dir("merge_too_long"), 2);
    let path = dir.join("tokenizer.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let longest = t["model"]["vocab"]
        .as_object()
        .unwrap()
        .keys()
        .max_by_key(|k| k.len())
        .unwrap()
        .clone();
    let merge = match &t["model"]["merges"][0] {
        serde_json::Value::String(_) => serde_json::Value::from(format!("{longest} {longest}")),
        _ => serde_json::json!([longest, longest]),
    };
    t["model"]["merges"].as_array_mut().unwrap().push(merge);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, t.to_string()).unwrap();
    expect_failure(&dir, &["tokenizer.json", "which the vocabulary lacks"]);
}
