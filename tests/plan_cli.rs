//! `quantfit plan` end to end: JSON rows with the documented keys, filters, charts, and clear
//! errors for unknown ids and malformed profiles.

use std::process::Command;

fn quantfit(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quantfit"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn json_rows_have_documented_keys_and_a_recommendation() {
    let out = quantfit(&[
        "plan",
        "--model",
        "llama-3.1-8b,llama-3.1-70b",
        "--quant",
        "Q4_K_M,Q8_0",
        "--hardware",
        "h100-sxm,rtx-4090",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    for key in [
        "model",
        "quant",
        "hardware",
        "devices",
        "ctx",
        "batch",
        "weights_bytes",
        "kv_bytes",
        "overhead_bytes",
        "total_bytes",
        "fits",
        "decode_tokens_per_s",
        "prefill_tokens_per_s",
        "usd_per_million_tokens",
        "quality_delta_pct",
        "quality_source",
        "license",
    ] {
        assert!(
            rows.iter()
                .all(|r| !r[key].is_null() || key == "quality_delta_pct"),
            "missing {key}"
        );
    }
    // 70B Q8_0 (~70 GiB of weights) fits an 80 GB H100 only barely or not, never a 24 GB card.
    let row = |m: &str, q: &str, h: &str| {
        rows.iter()
            .find(|r| r["model"] == m && r["quant"] == q && r["hardware"] == h)
            .unwrap()
            .clone()
    };
    assert_eq!(row("Llama-3.1-70B", "Q4_K_M", "rtx-4090")["fits"], false);
    assert_eq!(row("Llama-3.1-8B", "Q4_K_M", "rtx-4090")["fits"], true);
    let fast = row("Llama-3.1-8B", "Q4_K_M", "h100-sxm")["decode_tokens_per_s"]
        .as_f64()
        .unwrap();
    let slow = row("Llama-3.1-8B", "Q4_K_M", "rtx-4090")["decode_tokens_per_s"]
        .as_f64()
        .unwrap();
    assert!(fast > slow, "more bandwidth must decode faster");
    assert!(
        row("Llama-3.1-8B", "Q8_0", "rtx-4090")["quality_delta_pct"]
            .as_f64()
            .unwrap()
            < row("Llama-3.1-8B", "Q4_K_M", "rtx-4090")["quality_delta_pct"]
                .as_f64()
                .unwrap()
    );
    assert_eq!(rows.iter().filter(|r| r["recommended"] == true).count(), 1);
    assert!(doc["recommendation"].as_str().unwrap().contains("fits"));
    assert!(row("Llama-3.1-8B", "Q8_0", "h100-sxm")["license"]
        .as_str()
        .unwrap()
        .contains("Llama 3.1"));
}

#[test]
fn filters_and_multi_device() {
    let out = quantfit(&[
        "plan",
        "--model",
        "llama-2-70b",
        "--quant",
        "Q4_K_M",
        "--hardware",
        "rtx-4090",
        "--devices",
        "2",
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["rows"][0]["fits"], true,
        "70B Q4_K_M fits two 24 GB cards"
    );
    let out = quantfit(&[
        "plan",
        "--model",
        "llama-2-7b",
        "--hardware",
        "rtx-4090",
        "--max-memory",
        "6",
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert!(
        !rows.is_empty()
            && rows
                .iter()
                .all(|r| r["total_bytes"].as_f64().unwrap() <= 6e9)
    );
}

#[test]
fn charts_are_written() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-out/charts");
    let _ = std::fs::remove_dir_all(&dir);
    let out = quantfit(&["plan", "--chart", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "quality-vs-memory.png",
        "quality-vs-memory.svg",
        "quality-vs-cost.png",
        "quality-vs-cost.svg",
    ] {
        let len = std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 5000, "{f}: {len} bytes");
    }
    let svg = std::fs::read_to_string(dir.join("quality-vs-memory.svg")).unwrap();
    assert!(
        svg.contains("Llama-2-13B")
            && svg.contains("Pareto frontier")
            && svg.contains("rtx-4090 memory")
    );
}

#[test]
fn bad_ids_and_profiles() {
    let out = quantfit(&["plan", "--hardware", "gtx-9999"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("gtx-9999") && err.contains("h100-sxm") && err.contains("apple-m2-ultra-76c"),
        "{err}"
    );
    let out = quantfit(&["plan", "--model", "gpt-5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gpt-5") && err.contains("llama-2-70b") && err.contains("qwen2.5-72b"),
        "{err}"
    );
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-out");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad-profile.toml");
    std::fs::write(&bad, "id = \"x\"\nname = \"X\"\nkind = \"gpu\"\nbackend = \"cuda\"\nmemory_gb = 24\nmemory_bandwidth_gbs = \"fast\"\nfp16_tflops = 1\npower_w = 1\npurchase_usd = 1\n").unwrap();
    let out = quantfit(&["plan", "--hardware", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("bad-profile.toml") && err.contains("memory_bandwidth_gbs"),
        "{err}"
    );
}
