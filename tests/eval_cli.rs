//! `quantfit eval` and `quantfit bench` end to end, as the README runs them: convert the
//! fixture, score the GGUFs against the Hugging Face folder, read the results back with
//! `plan --results`, time the model, and refuse broken inputs with one clear line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn quantfit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quantfit"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn work_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-eval-cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn corpus() -> String {
    common::shared_dir()
        .join("corpora/pride-and-prejudice.txt")
        .display()
        .to_string()
}

/// Q8_0 and Q4_0 files of the fixture, made with `quantfit quantize`.
fn ggufs() -> &'static (PathBuf, PathBuf) {
    static FILES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = work_dir("models");
        let model = common::smollm2_dir();
        let out = quantfit(&[
            "quantize",
            model.to_str().unwrap(),
            "--type",
            "Q8_0,Q4_0",
            "-o",
            dir.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let find = |t: &str| {
            std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.to_string_lossy().ends_with(&format!("{t}.gguf")))
                .unwrap()
        };
        (find("Q8_0"), find("Q4_0"))
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn eval_with_baseline_feeds_plan_and_bench_appends() {
    let (q8, q4) = ggufs();
    let dir = work_dir("baseline");
    let results = dir.join("results.jsonl");
    let folder = common::smollm2_dir();
    let doc = ok(&quantfit(&[
        "eval",
        s(q8),
        s(q4),
        "--baseline",
        s(&folder),
        "--text",
        &corpus(),
        "--ctx",
        "128",
        "--chunks",
        "3",
        "-t",
        "2",
        "--json",
        "--results",
        s(&results),
    ]));
    let rows = doc.as_array().unwrap();
    assert_eq!(rows.len(), 3, "baseline first, then each model");
    for r in rows {
        for key in [
            "model",
            "quant",
            "file_bytes",
            "bits_per_weight",
            "ppl",
            "ppl_err",
            "tokens_scored",
            "eval_tokens_per_s",
            "text",
            "ctx",
            "chunks",
            "machine",
        ] {
            assert!(!r[key].is_null(), "missing {key} in {r}");
        }
        assert_eq!(r["tokens_scored"], 3 * (128 - 1 - 64));
        assert!(r["ppl"].as_f64().unwrap() > 1.0);
        assert!(r["eval_tokens_per_s"].as_f64().unwrap() > 0.0);
    }
    assert!(
        rows[0]["kld_mean"].is_null(),
        "the baseline has no divergence from itself"
    );
    assert_eq!(rows[0]["quant"], "F32");
    let kld = |r: &serde_json::Value| r["kld_mean"].as_f64().unwrap();
    for r in &rows[1..] {
        for key in [
            "kld_mean",
            "kld_p99",
            "same_top_rate",
            "rms_dp",
            "ppl_ratio",
        ] {
            assert!(r[key].as_f64().is_some(), "missing {key} in {r}");
        }
        assert_eq!(
            r["model"], rows[0]["model"],
            "GGUF general.name = folder's model name"
        );
    }
    assert_eq!(rows[1]["quant"], "Q8_0");
    assert!(
        kld(&rows[1]) < kld(&rows[2]),
        "Q8_0 diverges less than Q4_0"
    );
    assert!(
        rows[1]["same_top_rate"].as_f64().unwrap() > rows[2]["same_top_rate"].as_f64().unwrap()
    );

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["kind"] == "eval"));

    // A bench run appends to the same file; plan still reads it and uses the measured rows.
    let bench = ok(&quantfit(&[
        "bench",
        s(q4),
        "--pp",
        "32",
        "--tg",
        "4",
        "--reps",
        "2",
        "-t",
        "2",
        "--json",
        "--results",
        s(&results),
    ]));
    let tests: Vec<&str> = bench
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["test"].as_str().unwrap())
        .collect();
    assert_eq!(tests, ["pp32", "tg4"]);
    for t in bench.as_array().unwrap() {
        assert!(t["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(t["samples"].as_array().unwrap().len(), 2);
    }
    assert_eq!(
        std::fs::read_to_string(&results).unwrap().lines().count(),
        5
    );

    let plan = ok(&quantfit(&[
        "plan",
        "--model",
        s(&folder),
        "--quant",
        "Q8_0,Q4_0",
        "--hardware",
        "rtx-4090",
        "--results",
        s(&results),
        "--json",
    ]));
    let plan_rows = plan["rows"].as_array().unwrap();
    assert_eq!(plan_rows.len(), 2);
    for (row, measured) in plan_rows.iter().zip(&rows[1..]) {
        assert!(
            row["quality_source"]
                .as_str()
                .unwrap()
                .starts_with("measured"),
            "{row}"
        );
        let want = (measured["ppl_ratio"].as_f64().unwrap() - 1.0) * 100.0;
        assert!((row["quality_delta_pct"].as_f64().unwrap() - want).abs() < 1e-9);
        assert_eq!(row["kld"].as_f64(), measured["kld_mean"].as_f64());
    }
}

#[test]
fn eval_without_text_uses_the_sample_and_says_so() {
    let (q8, _) = ggufs();
    let out = quantfit(&[
        "eval",
        s(q8),
        "--ctx",
        "64",
        "--chunks",
        "2",
        "-t",
        "2",
        "--no-results",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("your own task"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("built-in sample") && stdout.contains("Q8_0"),
        "{stdout}"
    );
}

/// The f32 GEMM path (CPUs without AVX-512 VNNI) and the integer GEMM agree: both round the
/// activations as ggml does and only summation order differs (products agree to ~1e-5, see
/// the gemm unit tests); over 126 scored tokens that moves PPL by a few tenths of a percent,
/// a broken path by far more.
#[test]
fn integer_and_f32_prompt_paths_agree() {
    let (_, q4) = ggufs();
    let run = |gemm: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_quantfit"))
            .args([
                "eval",
                s(q4),
                "--text",
                &corpus(),
                "--ctx",
                "128",
                "--chunks",
                "2",
            ])
            .args(["-t", "2", "--json", "--no-results"])
            .env("QUANTFIT_EVAL_GEMM", gemm)
            .output()
            .unwrap();
        ok(&out)[0]["ppl"].as_f64().unwrap()
    };
    let (int, f32) = (run("auto"), run("f32"));
    assert!((int / f32 - 1.0).abs() < 1e-2, "integer {int} vs f32 {f32}");
}

/// One `error:` line on stderr naming `what`, exit code 2.
fn expect_error(out: Output, what: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for w in what {
        assert!(lines[0].contains(w), "{w:?} not in {stderr}");
    }
}

#[test]
fn broken_inputs_fail_with_one_clear_line() {
    let (q8, _) = ggufs();
    let dir = work_dir("broken");
    let results = dir.join("results.jsonl");

    let truncated = dir.join("truncated.gguf");
    let bytes = std::fs::read(q8).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    expect_error(
        quantfit(&["eval", s(&truncated), "--results", s(&results)]),
        &["truncated.gguf"],
    );

    let short = dir.join("short.txt");
    std::fs::write(&short, "Too short to score.").unwrap();
    expect_error(
        quantfit(&["eval", s(q8), "--text", s(&short), "--results", s(&results)]),
        &["tokens"],
    );

    let binary = dir.join("binary.txt");
    std::fs::write(&binary, [0xffu8, 0xfe, 0x00, 0x80]).unwrap();
    expect_error(
        quantfit(&[
            "eval",
            s(q8),
            "--text",
            s(&binary),
            "--results",
            s(&results),
        ]),
        &["binary.txt", "UTF-8"],
    );

    let missing = dir.join("no-such-model.gguf");
    expect_error(
        quantfit(&["bench", s(&missing), "--results", s(&results)]),
        &["no-such-model.gguf"],
    );
    assert!(!results.exists(), "failed runs append nothing");
}

/// llama-perplexity's log-probability file layout, for crafting files: header, tokens, rows.
fn logits_file(ctx: u32, n_vocab: i32, chunks: i32, token: i32) -> Vec<u8> {
    let mut b = b"_logits_".to_vec();
    b.extend_from_slice(&ctx.to_le_bytes());
    b.extend_from_slice(&n_vocab.to_le_bytes());
    b.extend_from_slice(&chunks.to_le_bytes());
    for _ in 0..ctx as usize * chunks as usize {
        b.extend_from_slice(&token.to_le_bytes());
    }
    let rows = (ctx - 1 - ctx / 2) as usize * chunks as usize;
    let row_bytes = (2 * (n_vocab as usize).div_ceil(2) + 4) * 2;
    b.resize(b.len() + rows * row_bytes, 0);
    b
}

#[test]
fn saved_baseline_logits_score_as_the_baseline_and_lies_are_refused() {
    let (q8, q4) = ggufs();
    let dir = work_dir("baseline-logits");
    let results = dir.join("results.jsonl");
    let saved = dir.join("base.logits");
    let folder = common::smollm2_dir();
    let text = corpus();
    let with_model = ok(&quantfit(&[
        "eval",
        s(q4),
        "--baseline",
        s(&folder),
        "--text",
        &text,
        "--ctx",
        "128",
        "--chunks",
        "2",
        "-t",
        "2",
        "--save-baseline-logits",
        s(&saved),
        "--json",
        "--no-results",
    ]));
    let saved_len = std::fs::metadata(&saved).unwrap().len();
    assert_eq!(saved_len, 20 + 2 * 128 * 4 + 2 * 63 * (49152 + 4) * 2);
    let from_file = ok(&quantfit(&[
        "eval",
        s(q4),
        "--baseline-logits",
        s(&saved),
        "-t",
        "2",
        "--json",
        "--results",
        s(&results),
    ]));
    let (a, b) = (&with_model[1], &from_file[0]);
    assert_eq!(b["baseline"], "base.logits");
    assert_eq!(b["ctx"], 128);
    assert_eq!(b["tokens_scored"], 2 * 63);
    assert_eq!(
        a["tokens_sha256"], b["tokens_sha256"],
        "the file's tokens are the text's"
    );
    for key in [
        "kld_mean",
        "kld_p99",
        "same_top_rate",
        "rms_dp",
        "ppl",
        "baseline_ppl",
    ] {
        let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
        assert!((x / y - 1.0).abs() < 1e-9, "{key}: {x} vs {y}");
    }
    assert!(a["kld_mean"].as_f64().unwrap() > 1e-3, "Q4_0 diverges: {a}");
    assert_eq!(
        std::fs::read_to_string(&results).unwrap().lines().count(),
        1
    );

    // Broken base files and contradicting settings: one line, exit 2, nothing appended.
    let bytes = std::fs::read(&saved).unwrap();
    let bad = dir.join("bad.logits");
    let run_bad = |extra: &[&str]| {
        let mut args = vec!["eval", s(q8), "--baseline-logits", s(&bad), "-t", "2"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--results", s(&results)]);
        quantfit(&args)
    };
    std::fs::write(&bad, &bytes[..bytes.len() - 1000]).unwrap();
    expect_error(run_bad(&[]), &["bad.logits", "truncated"]);
    std::fs::write(&bad, logits_file(128, 1000, 2, 7)).unwrap();
    expect_error(run_bad(&[]), &["vocabulary of 49152", "bad.logits", "1000"]);
    // The header claims more chunks than the file holds.
    let mut more = bytes.clone();
    more[16..20].copy_from_slice(&3i32.to_le_bytes());
    std::fs::write(&bad, &more).unwrap();
    expect_error(run_bad(&[]), &["bad.logits", "3 chunks", "truncated"]);
    std::fs::write(&bad, logits_file(128, 1000, 2, 1000)).unwrap();
    expect_error(run_bad(&[]), &["bad.logits", "token 0 is 1000"]);
    std::fs::write(&bad, b"not a logits file at all").unwrap();
    expect_error(run_bad(&[]), &["bad.logits", "_logits_"]);
    std::fs::write(&bad, &bytes).unwrap();
    expect_error(run_bad(&["--ctx", "256"]), &["bad.logits", "ctx 128"]);
    expect_error(run_bad(&["--text", &text]), &["--text"]);
    expect_error(
        quantfit(&[
            "eval",
            s(q8),
            s(q4),
            "--text",
            &text,
            "--save-baseline-logits",
            s(&dir.join("two.logits")),
            "--results",
            s(&results),
        ]),
        &["--save-baseline-logits", "one model"],
    );
    assert_eq!(
        std::fs::read_to_string(&results).unwrap().lines().count(),
        1,
        "failed runs append nothing"
    );

    // A run that fails after the baseline was recorded leaves no saved file.
    let lost = dir.join("lost.logits");
    expect_error(
        quantfit(&[
            "eval",
            s(&dir.join("no-such-model.gguf")),
            "--baseline",
            s(q8),
            "--text",
            &text,
            "--ctx",
            "128",
            "--chunks",
            "1",
            "--save-baseline-logits",
            s(&lost),
            "--no-results",
        ]),
        &["no-such-model.gguf"],
    );
    assert!(!lost.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".qf-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
