use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::chart::write_charts;
use crate::plan::estimate::{held_out_report, KvType, Scenario, GIB};
use crate::plan::quality::read_results;
use crate::plan::{catalog, hardware, plan, Filters};
use crate::quant::rules::FileType;

#[derive(clap::Args)]
pub struct Args {
    /// Models: catalog ids (llama-2-7b, llama-2-13b, llama-2-70b, llama-3.1-8b, llama-3.1-70b,
    /// mistral-7b, qwen2.5-7b, qwen2.5-72b, phi-3-mini) or paths (model folder, config.json, GGUF).
    #[arg(long, default_value = "llama-2-7b,llama-2-13b,llama-2-70b")]
    model: String,
    /// File types (comma list) or `all`.
    #[arg(long, default_value = "F16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,IQ4_XS,Q3_K_M,Q2_K")]
    quant: String,
    /// Hardware profile ids or profile files (comma list).
    #[arg(long, default_value = "rtx-4090")]
    hardware: String,
    /// Devices of each hardware profile working together.
    #[arg(long, default_value_t = 1)]
    devices: u64,
    /// How a model is split across devices: layer (pipeline, llama.cpp's default) or row (tensor).
    #[arg(long, default_value = "layer")]
    split: String,
    /// Layers kept on the accelerator (like llama.cpp -ngl); the rest run from system memory.
    #[arg(long)]
    gpu_layers: Option<u64>,
    /// System memory bandwidth for layers not offloaded, GB/s.
    #[arg(long, default_value_t = 80.0)]
    host_bandwidth: f64,
    /// Context length per sequence.
    #[arg(long, default_value_t = 4096)]
    ctx: u64,
    /// Parallel sequences.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// KV cache type: f16, q8_0, q4_0.
    #[arg(long, default_value = "f16")]
    kv_type: String,
    /// Keep rows needing at most this much memory (GB).
    #[arg(long)]
    max_memory: Option<f64>,
    /// Keep rows costing at most this much per million generated tokens (USD).
    #[arg(long)]
    max_usd_per_mtok: Option<f64>,
    /// Keep rows decoding at least this many tokens per second.
    #[arg(long)]
    min_tps: Option<f64>,
    /// Measured results (JSON lines: model, quant, ppl and baseline_ppl or ppl_ratio); they take
    /// precedence over published figures.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Electricity price for owned hardware, USD per kWh.
    #[arg(long, default_value_t = 0.15)]
    electricity: f64,
    /// Write quality-versus-memory and quality-versus-cost charts (PNG and SVG) here.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Print the speed model's calibration data and its leave-one-out accuracy, then exit.
    #[arg(long)]
    calibration_report: bool,
    /// Print JSON: {"rows": [...], "recommendation": ...}.
    #[arg(long)]
    json: bool,
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

pub fn run(args: Args) -> Result<()> {
    if args.calibration_report {
        print_calibration();
        return Ok(());
    }
    let models = split_list(&args.model)
        .map(catalog::resolve)
        .collect::<Result<Vec<_>>>()?;
    let quants: Vec<FileType> = if args.quant.eq_ignore_ascii_case("all") {
        FileType::all()
            .iter()
            .copied()
            .filter(|f| !matches!(f, FileType::F32 | FileType::BF16))
            .collect()
    } else {
        split_list(&args.quant)
            .map(|q| {
                FileType::from_name(q).with_context(|| {
                    format!(
                        "unknown quant {q:?}; known: {}",
                        FileType::names().join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    let hw = split_list(&args.hardware)
        .map(hardware::resolve)
        .collect::<Result<Vec<_>>>()?;
    let kv = KvType::from_name(&args.kv_type)
        .with_context(|| format!("unknown KV type {:?}; known: f16, q8_0, q4_0", args.kv_type))?;
    if !["layer", "row"].contains(&args.split.as_str()) {
        bail!("unknown split {:?}; known: layer, row", args.split);
    }
    if args.devices == 0 || args.batch == 0 || args.ctx == 0 {
        bail!("--devices, --batch and --ctx must be at least 1");
    }
    let scenario = Scenario {
        ctx: args.ctx,
        batch: args.batch,
        kv,
        devices: args.devices,
        split: args.split.clone(),
        gpu_layers: args.gpu_layers,
        host_bandwidth_gbs: args.host_bandwidth,
        electricity_usd_per_kwh: args.electricity,
        amortize_years: 3.0,
    };
    let filters = Filters {
        max_memory_gb: args.max_memory,
        max_usd_per_mtok: args.max_usd_per_mtok,
        min_tps: args.min_tps,
    };
    let measured = args
        .results
        .as_deref()
        .map(read_results)
        .transpose()?
        .unwrap_or_default();
    let result = plan(&models, &quants, &hw, &scenario, &filters, &measured);

    if let Some(dir) = &args.chart {
        for h in &hw {
            let rows: Vec<_> = result
                .rows
                .iter()
                .filter(|r| r.hardware == h.id)
                .cloned()
                .collect();
            let sub = if hw.len() > 1 {
                dir.join(&h.id)
            } else {
                dir.clone()
            };
            let label = if args.devices > 1 {
                format!("{}x {}", args.devices, h.id)
            } else {
                h.id.clone()
            };
            let families: Vec<&str> = models.iter().map(|m| m.family.as_str()).collect();
            let note = if families.iter().all(|f| *f == "llama-2") {
                "llama.cpp's published Llama-2-7B figures"
            } else {
                "published llama.cpp figures or your results"
            };
            let files = write_charts(&rows, h.memory_gb * args.devices as f64, &label, note, &sub)?;
            if !args.json {
                for f in files {
                    eprintln!("wrote {}", f.display());
                }
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "rows": result.rows, "recommendation": result.recommendation })
            )?
        );
        return Ok(());
    }
    println!(
        "{:<2}{:<15} {:<7} {:<18} {:>7} {:>6} {:>7} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8}  licence",
        "",
        "model",
        "quant",
        "hardware",
        "weights",
        "KV",
        "total",
        "headroom",
        "max ctx",
        "decode",
        "prefill",
        "$/Mtok",
        "ΔPPL"
    );
    for r in &result.rows {
        let headroom = if r.fits {
            format!("{:+.1}", r.headroom_bytes as f64 / GIB)
        } else {
            format!("NO {:+.1}", r.headroom_bytes as f64 / GIB)
        };
        println!(
            "{:<2}{:<15} {:<7} {:<18} {:>7.2} {:>6.2} {:>7.2} {:>9} {:>8} {:>8.1} {:>9.0} {:>9.3} {:>8}  {}",
            if r.recommended { "*" } else { "" },
            r.model,
            r.quant,
            if r.devices > 1 { format!("{}x {}", r.devices, r.hardware) } else { r.hardware.clone() },
            r.weights_bytes as f64 / GIB,
            r.kv_bytes as f64 / GIB,
            r.total_bytes as f64 / GIB,
            headroom,
            r.max_ctx,
            r.decode_tokens_per_s,
            r.prefill_tokens_per_s,
            r.usd_per_million_tokens,
            r.quality_delta_pct.map(|d| format!("+{d:.2}%")).unwrap_or_else(|| "?".into()),
            r.license
        );
    }
    println!("\nsizes in GiB; decode/prefill in tokens/s at ctx {}, batch {}; $/Mtok for generated tokens at batch {}", args.ctx, args.batch, args.batch);
    let mut sources: Vec<&str> = result
        .rows
        .iter()
        .map(|r| r.quality_source.as_str())
        .collect();
    sources.sort();
    sources.dedup();
    println!("quality: {}", sources.join("; "));
    let mut licences: Vec<String> = result
        .rows
        .iter()
        .map(|r| format!("{}: {}", r.license, r.license_terms))
        .collect();
    licences.sort();
    licences.dedup();
    for l in licences {
        println!("licence {l}");
    }
    match &result.recommendation {
        Some(why) => println!("\n* recommended: {why}"),
        None => println!("\nno configuration fits; try more devices, a smaller type, a shorter context or --gpu-layers"),
    }
    Ok(())
}

fn print_calibration() {
    let report = held_out_report();
    println!(
        "{:<20} {:<22} {:<6} {:>10} {:>10} {:>7}  source",
        "hardware", "model", "test", "measured", "held-out", "error"
    );
    let mut decode_errors = Vec::new();
    let mut prefill_errors = Vec::new();
    for (p, predicted) in &report {
        let err = (predicted - p.tokens_per_s) / p.tokens_per_s * 100.0;
        if p.test.starts_with("tg") {
            decode_errors.push(err.abs());
        } else {
            prefill_errors.push(err.abs());
        }
        println!(
            "{:<20} {:<22} {:<6} {:>10.2} {:>10.2} {:>6.1}%  {}",
            p.hardware, p.model, p.test, p.tokens_per_s, predicted, err, p.source
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            f64::NAN
        } else {
            v[v.len() / 2]
        }
    };
    println!(
        "\nleave-one-out median |error|: decode {:.1}% ({} points), prefill {:.1}% ({} points)",
        median(&mut decode_errors),
        decode_errors.len(),
        median(&mut prefill_errors),
        prefill_errors.len()
    );
    for class in ["gpu", "metal", "cpu"] {
        let backend = match class {
            "gpu" => "cuda",
            "metal" => "metal",
            _ => "cpu",
        };
        let e = crate::plan::estimate::efficiency(backend);
        println!("fit {class:<6} bandwidth efficiency {:.3}, per-token overhead {:.2} ms, compute efficiency {:.3}", e.bandwidth, e.per_token_s * 1e3, e.compute);
    }
}
