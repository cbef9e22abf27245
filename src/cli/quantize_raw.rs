use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::output::{self, AtomicFile, Inputs};
use crate::quant::{dequantize, error_stats, quantize_into, GgmlType, Isa, QuantizeOptions};
use crate::source::raw::{read_f32_file, read_matrix};

#[derive(clap::Args)]
pub struct Args {
    /// Row-major little-endian f32 file.
    input: PathBuf,
    /// Elements per row.
    #[arg(long)]
    cols: usize,
    /// Comma-separated GGUF types (Q4_0, Q8_0, Q2_K ... Q6_K, IQ4_NL, IQ4_XS, F16, BF16) or `all`.
    #[arg(long = "type", short = 't', default_value = "all")]
    types: String,
    /// Importance weights: one little-endian f32 per column.
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Output file (one type) or folder (several types: INPUT-STEM.TYPE.bin).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Instruction set for the hot loops (scalar, avx2, avx512, neon); default: the best here.
    #[arg(long)]
    isa: Option<String>,
    /// Use one thread.
    #[arg(long)]
    single_thread: bool,
    /// Quantize each type this many times into the same buffer and report the fastest run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Replace an output that is a symbolic link (the link itself, never the file it points to).
    #[arg(long)]
    force: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_types(list: &str) -> Result<Vec<GgmlType>> {
    if list.eq_ignore_ascii_case("all") {
        return Ok(GgmlType::all().filter(|t| *t != GgmlType::F32).collect());
    }
    list.split(',')
        .map(|name| {
            GgmlType::from_name(name.trim()).with_context(|| {
                format!(
                    "unknown type '{}'; known: {}",
                    name.trim(),
                    GgmlType::names().join(", ")
                )
            })
        })
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    let types = parse_types(&args.types)?;
    let isa = match &args.isa {
        None => Isa::best(),
        Some(name) => match Isa::from_name(name) {
            Some(isa) => isa,
            None => bail!(
                "instruction set '{name}' is not available here; available: {}",
                Isa::available()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    // Every output planned and checked before any work: no two types to one file, no input
    // overwritten, nothing written until every type is done.
    let inputs = Inputs::capture(std::iter::once(&args.input).chain(&args.imatrix));
    let mut created = None;
    let targets = match &args.output {
        None => Vec::new(),
        Some(out) => {
            let folder_like = out.is_dir() || out.as_os_str().as_encoded_bytes().ends_with(b"/");
            let paths: Vec<PathBuf> = if types.len() == 1 && !folder_like {
                vec![out.clone()]
            } else {
                created = Some(output::CreatedDir::create(out)?);
                let stem = args
                    .input
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                types
                    .iter()
                    .map(|ty| out.join(format!("{stem}.{}.bin", ty.name())))
                    .collect()
            };
            output::check_all(&paths, &inputs, args.force)?
        }
    };
    let data = read_matrix(&args.input, args.cols)?;
    let imatrix = args.imatrix.as_deref().map(read_f32_file).transpose()?;
    let rows = data.len() / args.cols;
    let opts = QuantizeOptions {
        isa,
        parallel: !args.single_thread,
    };

    let mut results = Vec::new();
    let mut pending = Vec::new();
    for (i, &ty) in types.iter().enumerate() {
        let mut bytes = vec![0u8; rows * ty.info().row_bytes(args.cols)];
        let mut seconds = f64::INFINITY;
        for _ in 0..args.repeat {
            let start = Instant::now();
            quantize_into(ty, &data, args.cols, imatrix.as_deref(), opts, &mut bytes)
                .with_context(|| args.input.display().to_string())?;
            seconds = seconds.min(start.elapsed().as_secs_f64());
        }
        let restored = dequantize(ty, &bytes, args.cols)?;
        let stats = error_stats(&data, &restored);
        if let Some(target) = targets.get(i) {
            let mut f = AtomicFile::create(target)?;
            std::io::Write::write_all(&mut f, &bytes)
                .with_context(|| format!("{}: write failed", target.path().display()))?;
            pending.push(f.finish()?);
        }
        results.push(serde_json::json!({
            "type": ty.name(),
            "bytes": bytes.len(),
            "bits_per_weight": bytes.len() as f64 * 8.0 / data.len() as f64,
            "rmse": stats.rmse,
            "max_abs_error": stats.max_abs,
            "relative_rmse": stats.relative_rmse,
            "seconds": seconds,
            "mb_per_s": data.len() as f64 * 4.0 / 1e6 / seconds,
        }));
    }
    inputs.verify()?;
    output::commit_all(pending)?;
    if let Some(d) = created {
        d.keep();
    }

    if args.json {
        let doc = serde_json::json!({
            "input": args.input, "rows": rows, "cols": args.cols, "imatrix": imatrix.is_some(),
            "isa": isa.name(), "threads": if args.single_thread { 1 } else { rayon::current_num_threads() },
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{}: {rows} x {} f32{}, {} kernels, {} thread(s)",
        args.input.display(),
        args.cols,
        if imatrix.is_some() {
            ", importance matrix"
        } else {
            ""
        },
        isa.name(),
        if args.single_thread {
            1
        } else {
            rayon::current_num_threads()
        }
    );
    println!(
        "{:<8} {:>12} {:>7} {:>11} {:>11} {:>9} {:>10}",
        "type", "bytes", "bpw", "rmse", "max |err|", "rel rmse", "MB/s"
    );
    for r in &results {
        println!(
            "{:<8} {:>12} {:>7.3} {:>11.3e} {:>11.3e} {:>8.3}% {:>10.1}",
            r["type"].as_str().unwrap_or(""),
            r["bytes"],
            r["bits_per_weight"].as_f64().unwrap_or(0.0),
            r["rmse"].as_f64().unwrap_or(0.0),
            r["max_abs_error"].as_f64().unwrap_or(0.0),
            100.0 * r["relative_rmse"].as_f64().unwrap_or(0.0),
            r["mb_per_s"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}
