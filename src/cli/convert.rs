use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use regex::Regex;

use crate::gguf::convert::{convert, ConvertOptions, OutputSummary};
use crate::gguf::imatrix::Imatrix;
use crate::quant::rules::{FileType, RuleOptions};
use crate::quant::{GgmlType, Isa};
use crate::source::hf::ModelDir;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face model folder (config.json, tokenizer.json, *.safetensors).
    model: PathBuf,
    /// File types, llama.cpp names, comma-separated: F32, F16, BF16, Q8_0, Q6_K, Q5_K_M, Q5_K_S,
    /// Q5_1, Q5_0, Q4_K_M, Q4_K_S, Q4_1, Q4_0, IQ4_XS, IQ4_NL, Q3_K_L, Q3_K_M, Q3_K_S, Q2_K.
    #[arg(long = "type", short = 't', default_value = "Q4_K_M")]
    types: String,
    /// Output file (one type) or folder (several types; files named MODEL-TYPE.gguf).
    #[arg(long, short = 'o', default_value = ".")]
    output: PathBuf,
    /// Importance matrix from llama-imatrix (legacy .dat or GGUF).
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Give every quantizable tensor the file type's default format (no per-layer mix).
    #[arg(long)]
    pure: bool,
    /// Override tensor types: REGEX=TYPE (repeatable; first match wins), e.g. "attn_v=Q8_0".
    #[arg(long = "tensor-type")]
    tensor_types: Vec<String>,
    /// Instruction set for the kernels (scalar, avx2, avx512, neon); default: the best here.
    #[arg(long)]
    isa: Option<String>,
    /// Replace an output that is a symbolic link (the link itself, never the file it points to).
    #[arg(long)]
    force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn parse_isa(name: Option<&str>) -> Result<Isa> {
    match name {
        None => Ok(Isa::best()),
        Some(n) => match Isa::from_name(n) {
            Some(isa) => Ok(isa),
            None => bail!(
                "instruction set '{n}' is not available here; available: {}",
                Isa::available()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

pub fn run(args: Args) -> Result<()> {
    let types = args
        .types
        .split(',')
        .map(|t| {
            FileType::from_name(t).with_context(|| {
                format!(
                    "unknown type '{t}'; known: {}",
                    FileType::names().join(", ")
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Aliases (Q4_K = Q4_K_M, any case) would write one file twice: refuse before any work.
    let names: Vec<&str> = args.types.split(',').map(str::trim).collect();
    for (i, a) in types.iter().enumerate() {
        if let Some(j) = types[..i].iter().position(|b| b == a) {
            bail!(
                "--type: {} and {} are the same file type ({}); give it once",
                names[j],
                names[i],
                a.name()
            );
        }
    }
    let overrides = args
        .tensor_types
        .iter()
        .map(|spec| {
            let (re, ty) = spec
                .rsplit_once('=')
                .with_context(|| format!("--tensor-type {spec:?}: expected REGEX=TYPE"))?;
            let ty = GgmlType::from_name(ty)
                .with_context(|| format!("--tensor-type {spec:?}: unknown type {ty}"))?;
            Ok((
                Regex::new(re).with_context(|| format!("--tensor-type {spec:?}: bad regex"))?,
                ty,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let isa = parse_isa(args.isa.as_deref())?;
    let imatrix = args.imatrix.as_deref().map(Imatrix::load).transpose()?;
    let model = ModelDir::open(&args.model)?;
    let opts = ConvertOptions {
        types,
        output: args.output,
        rules: RuleOptions {
            pure: args.pure,
            overrides,
            has_imatrix: imatrix.is_some(),
        },
        imatrix,
        isa,
        progress: !args.json,
        force: args.force,
        extra_inputs: args.imatrix.iter().cloned().collect(),
    };
    let summaries = convert(&model, &opts)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "outputs": summaries }))?
        );
    } else {
        print_summaries(&summaries);
    }
    Ok(())
}

fn print_summaries(summaries: &[OutputSummary]) {
    if let Some(first) = summaries.first() {
        println!(
            "{:<34} {:>16} {}",
            "tensor",
            "shape",
            summaries
                .iter()
                .map(|s| format!("{:>8} {:>11}", s.file_type, "bytes"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for (i, t) in first.tensors.iter().enumerate() {
            let shape = t
                .shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x");
            let cols: Vec<String> = summaries
                .iter()
                .map(|s| format!("{:>8} {:>11}", s.tensors[i].ty, s.tensors[i].bytes))
                .collect();
            println!("{:<34} {:>16} {}", t.name, shape, cols.join(" "));
        }
    }
    println!();
    for s in summaries {
        println!(
            "{:<7} {:>14} bytes  {:>6.3} bits/weight  {}",
            s.file_type,
            s.file_bytes,
            s.bits_per_weight,
            s.path.display()
        );
    }
}
