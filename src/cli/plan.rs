use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::chart;
use crate::output::{self, Inputs};
use crate::plan::config::Search;
use crate::plan::estimate::{held_out_report, KvType, Scenario, Split, GIB};
use crate::plan::quality::fit;
use crate::plan::quality::measured::read_results;
use crate::plan::{catalog, hardware, plan, Filters, Plan, Rank, Request};
use crate::quant::rules::FileType;

#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Layer,
    Row,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KvArg {
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum QualityArg {
    Ppl,
    Task,
}

#[derive(clap::Args)]
pub struct Args {
    /// Models: catalog ids (llama-2-7b, llama-2-13b, llama-2-70b, llama-3.1-8b, llama-3.1-70b,
    /// mistral-7b, qwen2.5-7b, qwen2.5-72b, phi-3-mini, and the reference models llama-1-*,
    /// llama-3-8b, llama-3-70b, mistral-7b-v0.1) or paths (model folder, config.json, GGUF).
    #[arg(long, default_value = "llama-2-7b,llama-2-13b,llama-2-70b")]
    model: String,
    /// File types (comma list) or `all`.
    #[arg(long, default_value = "F16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,IQ4_XS,Q3_K_M,Q2_K")]
    quant: String,
    /// Hardware profile ids or profile files (comma list).
    #[arg(long, default_value = "rtx-4090")]
    hardware: String,
    /// Use exactly this many devices of each profile (default: the cheapest count that runs).
    #[arg(long)]
    devices: Option<u64>,
    /// The most devices a configuration may use.
    #[arg(long, default_value_t = 8)]
    max_devices: u64,
    /// How a model is split across devices: layer (pipeline, llama.cpp's default) or row (tensor).
    #[arg(long, value_enum, default_value = "layer")]
    split: SplitArg,
    /// Keep this many layers on one device (llama.cpp -ngl); the rest run from host memory.
    #[arg(long)]
    gpu_layers: Option<u64>,
    /// Keep the routed experts of the first N layers of a mixture of experts in host memory,
    /// run by the CPU, the rest of every layer on the device (llama.cpp --n-cpu-moe). Without
    /// it, a mixture that does not fit is also tried with as few layers' experts there as fit.
    #[arg(long, value_name = "N")]
    n_cpu_moe: Option<u64>,
    /// System memory for what is not on the devices, GiB.
    #[arg(long, default_value_t = 64.0)]
    host_memory: f64,
    /// System memory bandwidth for layers not offloaded, GB/s.
    #[arg(long, default_value_t = 80.0)]
    host_bandwidth: f64,
    /// Context length per sequence.
    #[arg(long, default_value_t = 4096)]
    ctx: u64,
    /// Keep configurations that hold at least this context (default: --ctx).
    #[arg(long)]
    min_ctx: Option<u64>,
    /// Parallel sequences.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// KV cache type (default: f16, else q8_0, else q4_0, the first that holds the context).
    #[arg(long, value_enum)]
    kv_type: Option<KvArg>,
    /// Keep rows needing at most this much memory, devices and host together (GiB).
    #[arg(long)]
    max_memory: Option<f64>,
    /// Keep rows costing at most this much per million generated tokens (USD).
    #[arg(long)]
    max_usd_per_mtok: Option<f64>,
    /// Keep configurations decoding at least this many tokens per second.
    #[arg(long)]
    min_tps: Option<f64>,
    /// Results of `quantfit eval` (the results file); they take precedence over published and
    /// estimated figures.
    #[arg(long)]
    results: Option<PathBuf>,
    /// What the recommendation ranks by: ppl (expected perplexity; across tokenizers, MMLU)
    /// or task (accuracy measured by `quantfit eval --task`, from --results).
    #[arg(long, value_enum, default_value = "ppl")]
    quality: QualityArg,
    /// The task set whose accuracies the plan shows and ranks by: its file name as `eval
    /// --task` recorded it, or a sha256 prefix (default: the only one in --results).
    #[arg(long, value_name = "NAME")]
    task: Option<String>,
    /// Expected quality of files quantized with an importance matrix.
    #[arg(long)]
    imatrix: bool,
    /// Electricity price for owned hardware, USD per kWh.
    #[arg(long, default_value_t = 0.15)]
    electricity: f64,
    /// Write quality-versus-memory, -cost and -speed charts (PNG and SVG) here.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Replace a chart file that is a symbolic link (the link itself, never the file it points to).
    #[arg(long)]
    force: bool,
    /// Print the speed model's calibration data and its leave-one-out accuracy, then exit.
    #[arg(long)]
    calibration_report: bool,
    /// Print the perplexity estimator's leave-one-out check, then exit.
    #[arg(long)]
    quality_report: bool,
    /// Print JSON: {"rows": [...], "recommendation": ..., "recommended": ...}.
    #[arg(long)]
    json: bool,
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

fn search_of(args: &Args, hw: &[hardware::HardwareProfile]) -> Result<Search> {
    if args.max_devices == 0 || args.devices == Some(0) || args.batch == 0 || args.ctx == 0 {
        bail!("--devices, --max-devices, --batch and --ctx must be at least 1");
    }
    for (name, v) in [
        ("--host-memory", args.host_memory),
        ("--host-bandwidth", args.host_bandwidth),
    ] {
        if !(v.is_finite() && v > 0.0) {
            bail!("{name} must be a positive number, got {v}");
        }
    }
    if args.max_devices > 64 {
        bail!(
            "--max-devices {} is more than quantfit plans for (64)",
            args.max_devices
        );
    }
    if !(args.electricity.is_finite() && args.electricity >= 0.0) {
        bail!(
            "--electricity must be a price of zero or more, got {}",
            args.electricity
        );
    }
    let several = args.devices.is_some_and(|d| d > 1) || matches!(args.split, SplitArg::Row);
    if several {
        if let Some(h) = hw.iter().find(|h| h.kind != "gpu") {
            bail!(
                "--devices and --split row need GPU profiles; {} is a {} profile (one machine, one memory)",
                h.id,
                h.kind
            );
        }
    }
    if let Some(d) = args.devices {
        if d > args.max_devices {
            bail!(
                "--devices {d} is more than --max-devices {}",
                args.max_devices
            );
        }
    }
    if let Some(l) = args.gpu_layers {
        if args.devices.is_some_and(|d| d > 1) {
            bail!("--gpu-layers {l} keeps the other layers in host memory beside one device; it cannot be combined with --devices {}", args.devices.unwrap_or(1));
        }
        if matches!(args.split, SplitArg::Row) {
            bail!("--gpu-layers and --split row conflict: a row split puts every layer on every device");
        }
        if let Some(h) = hw.iter().find(|h| h.kind != "gpu") {
            bail!("--gpu-layers needs a GPU profile; {} is a {} profile whose one memory holds everything", h.id, h.kind);
        }
    }
    if let Some(n) = args.n_cpu_moe {
        if n == 0 {
            bail!(
                "--n-cpu-moe must be at least 1 (leave it out to keep every expert on the device)"
            );
        }
        if let Some(h) = hw.iter().find(|h| h.kind != "gpu") {
            bail!("--n-cpu-moe needs a GPU profile; {} is a {} profile whose one memory holds everything", h.id, h.kind);
        }
    }
    if let Some(c) = args.min_ctx {
        if c == 0 {
            bail!("--min-ctx must be at least 1");
        }
    }
    Ok(Search {
        cpu_moe: args.n_cpu_moe,
        devices: args.devices,
        max_devices: args.max_devices,
        split: match args.split {
            SplitArg::Layer => Split::Layer,
            SplitArg::Row => Split::Row,
        },
        gpu_layers: args.gpu_layers,
        kv: args.kv_type.map(|k| match k {
            KvArg::F16 => KvType::F16,
            KvArg::Q8_0 => KvType::Q8_0,
            KvArg::Q4_0 => KvType::Q4_0,
        }),
        min_tps: args.min_tps,
        min_ctx: args.min_ctx.unwrap_or(args.ctx).max(args.ctx),
    })
}

pub fn run(args: Args) -> Result<()> {
    if args.calibration_report {
        print_calibration();
        return Ok(());
    }
    if args.quality_report {
        print!("{}", fit::report());
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
    if quants.is_empty() {
        bail!(
            "--quant names no file type; known: {}",
            FileType::names().join(", ")
        );
    }
    if models.is_empty() {
        bail!(
            "--model names no model; known: {}",
            catalog::ids().join(", ")
        );
    }
    let hw = split_list(&args.hardware)
        .map(hardware::resolve)
        .collect::<Result<Vec<_>>>()?;
    let search = search_of(&args, &hw)?;
    let measured = args
        .results
        .as_deref()
        .map(read_results)
        .transpose()?
        .unwrap_or_default();
    let by_task = args.quality == QualityArg::Task;
    if (by_task || args.task.is_some()) && args.results.is_none() {
        bail!("--quality task and --task read task accuracies from --results FILE (written by `quantfit eval MODELS --task TASKS`)");
    }
    let tasks =
        crate::plan::quality::tasks::select(&measured.tasks, args.task.as_deref(), by_task)?;
    let result = plan(&Request {
        models: &models,
        quants: &quants,
        hardware: &hw,
        scenario: Scenario {
            ctx: args.ctx,
            batch: args.batch,
            host_memory_gb: args.host_memory,
            host_bandwidth_gbs: args.host_bandwidth,
            electricity_usd_per_kwh: args.electricity,
            amortize_years: 3.0,
        },
        search,
        filters: Filters {
            max_memory_gb: args.max_memory,
            max_usd_per_mtok: args.max_usd_per_mtok,
        },
        measured: &measured.ppl,
        tasks: &tasks,
        rank: if by_task {
            Rank::Task
        } else {
            Rank::Perplexity
        },
        imatrix: args.imatrix,
    })?;

    if let Some(dir) = &args.chart {
        write_charts(&result, &hw, dir, &args)?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "rows": result.rows,
                "recommendation": result.recommendation.as_ref().map(|r| &r.0),
                "recommended": result.recommendation.as_ref().map(|r| r.1),
                "unmet": result.unmet,
            }))?
        );
    } else {
        print_table(&result, &args);
    }
    match result.unmet {
        Some(why) => bail!("{why}"),
        None => Ok(()),
    }
}

/// Draws every chart in memory, checks every target, then writes them all or none.
fn write_charts(
    result: &Plan,
    hw: &[hardware::HardwareProfile],
    dir: &std::path::Path,
    args: &Args,
) -> Result<()> {
    let mut files = Vec::new();
    for h in hw {
        let rows: Vec<_> = result
            .rows
            .iter()
            .filter(|r| r.hardware == h.id)
            .cloned()
            .collect();
        let sub = if hw.len() > 1 {
            dir.join(&h.id)
        } else {
            dir.to_path_buf()
        };
        for (name, bytes) in chart::render(&rows, h)? {
            files.push((sub.join(name), bytes));
        }
    }
    if files.is_empty() {
        eprintln!("note: no chart written: no row has a perplexity to draw (pass --results from quantfit eval, or plan a model whose family has published figures)");
        return Ok(());
    }
    // Nothing the plan read may be replaced by a chart: results, profiles, models.
    let inputs = Inputs::capture(output::files_of(
        args.results
            .iter()
            .cloned()
            .chain(split_list(&args.hardware).map(std::path::PathBuf::from))
            .chain(split_list(&args.model).map(std::path::PathBuf::from)),
    ));
    let paths: Vec<_> = files.iter().map(|(p, _)| p.clone()).collect();
    let mut folders = Vec::new();
    for p in &paths {
        if let Some(parent) = p.parent().filter(|d| !d.exists()) {
            folders.push(output::CreatedDir::create(parent)?);
        }
    }
    let targets = output::check_all(&paths, &inputs, args.force)?;
    let mut pending = Vec::new();
    for (t, (_, bytes)) in targets.iter().zip(&files) {
        let mut f = output::AtomicFile::create(t)?;
        std::io::Write::write_all(&mut f, bytes)
            .with_context(|| format!("{}: write failed", t.path().display()))?;
        pending.push(f.finish()?);
    }
    output::commit_all(pending)?;
    folders.into_iter().for_each(output::CreatedDir::keep);
    if !args.json {
        for p in &paths {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}

fn print_table(result: &Plan, args: &Args) {
    if result.rows.is_empty() {
        println!("no row is left within the budget");
        return;
    }
    let wm = result
        .rows
        .iter()
        .map(|r| r.model.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let wc = result
        .rows
        .iter()
        .map(|r| r.config.len())
        .max()
        .unwrap_or(13)
        .max(13);
    let with_acc = result.rows.iter().any(|r| r.task_acc.is_some());
    let acc = |r: Option<&crate::plan::PlanRow>| match r {
        _ if !with_acc => String::new(),
        None => format!(" {:>6}", "acc%"),
        Some(r) => format!(
            " {:>6}",
            r.task_acc
                .map_or("-".to_string(), |a| format!("{:.1}", 100.0 * a))
        ),
    };
    println!(
        "{:<2}{:<wm$} {:<7} {:<wc$} {:>7} {:>6} {:>7} {:>7} {:>8} {:>7} {:>7} {:>9} {:>7}{}  basis",
        "",
        "model",
        "quant",
        "configuration",
        "weights",
        "KV",
        "device",
        "host",
        "headroom",
        "max ctx",
        "decode",
        "$/Mtok",
        "PPL",
        acc(None)
    );
    for r in &result.rows {
        let headroom = if r.fits {
            format!("{:+.1}", r.headroom_bytes as f64 / GIB)
        } else {
            "NO".to_string()
        };
        println!(
            "{:<2}{:<wm$} {:<7} {:<wc$} {:>7.2} {:>6.2} {:>7.2} {:>7.2} {:>8} {:>7} {:>7.1} {:>9.3} {:>7}{}  {}",
            if r.recommended { "*" } else { "" },
            r.model,
            r.quant,
            r.config,
            r.weights_bytes as f64 / GIB,
            r.kv_bytes as f64 / GIB,
            r.device_bytes as f64 / GIB,
            r.host_bytes as f64 / GIB,
            headroom,
            r.max_ctx,
            r.decode_tokens_per_s,
            r.usd_per_million_tokens,
            r.ppl.map_or("?".to_string(), |p| format!("{p:.3}")),
            acc(Some(r)),
            r.ppl_basis.map_or("-", |b| b.name()),
        );
    }
    println!(
        "\nsizes in GiB (device: all devices together; host: system memory); headroom: free GiB on the fullest device; decode: tokens/s per sequence at ctx {}, batch {}; $/Mtok for generated tokens at batch {}",
        args.ctx, args.batch, args.batch
    );
    if result
        .rows
        .iter()
        .any(|r| r.split == Split::Row && r.devices > 1)
    {
        println!("row-split speeds are the model's assumption (bandwidth adds up, two all-reduces per layer): no published multi-GPU llama-bench point calibrates them yet");
    }
    let mut bases: Vec<&str> = result.rows.iter().map(|r| r.cost_basis.as_str()).collect();
    bases.sort();
    bases.dedup();
    println!(
        "cost: {}{}",
        bases.join("; "),
        if bases.iter().any(|b| b.starts_with("rented"))
            && bases.iter().any(|b| b.starts_with("owned"))
        {
            " (rented and owned prices side by side: compare with care)"
        } else {
            ""
        }
    );
    let mut scales: Vec<&str> = result
        .rows
        .iter()
        .filter_map(|r| r.ppl_scale.as_deref())
        .collect();
    scales.sort();
    scales.dedup();
    println!(
        "PPL: expected perplexity, lower is better, on {}{}",
        scales.join("; "),
        if scales.len() > 1 {
            " (values on different scales do not compare)"
        } else {
            ""
        }
    );
    if let Some(task) = result.rows.iter().find_map(|r| r.task.as_deref()) {
        println!("acc%: accuracy measured by quantfit eval --task on {task} (standard errors in --json); -: not measured");
    }
    let mut sources: Vec<String> = result
        .rows
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                r.ppl_basis.map_or("none", |b| b.name()),
                r.quality_source
            )
        })
        .collect();
    sources.sort();
    sources.dedup();
    for s in sources {
        println!("  {s}");
    }
    // One block per distinct licence, naming the models it covers.
    let mut licences: Vec<(Vec<&str>, &crate::plan::PlanRow)> = Vec::new();
    for r in &result.rows {
        let same = |o: &crate::plan::PlanRow| {
            (&o.license_architecture, &o.license_weights, &o.license_data)
                == (&r.license_architecture, &r.license_weights, &r.license_data)
        };
        match licences.iter_mut().find(|(_, o)| same(o)) {
            Some((names, _)) if !names.contains(&r.model.as_str()) => names.push(&r.model),
            Some(_) => {}
            None => licences.push((vec![&r.model], r)),
        }
    }
    for (names, r) in licences {
        println!("licence of {}:", names.join(", "));
        println!("  architecture: {}", r.license_architecture);
        println!(
            "  weights:      {} ({})",
            r.license_weights, r.license_terms
        );
        println!("  data:         {}", r.license_data);
        println!("  sources:      {}", r.license_source);
    }
    for r in result.rows.iter().filter(|r| !r.fits) {
        if let Some(why) = &r.shortfall {
            println!(
                "{} {} on {} does not run: {why}",
                r.model, r.quant, r.hardware
            );
        }
    }
    if let Some((why, _)) = &result.recommendation {
        println!("\n* recommended: {why}");
    }
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
