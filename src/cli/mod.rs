//! Command-line interface: parses arguments, calls the library, prints. Exit code 2 on any error.

mod convert;
mod eval;
mod inspect;
mod plan;
mod quantize_raw;
mod task;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "quantfit",
    version,
    about = "Pick, convert and size quantized open LLMs for your hardware"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the GGUF block formats quantfit reads and writes.
    Types {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Size and choose: memory, speed, cost and quality of models x bit widths x hardware, with
    /// a recommendation and optional charts.
    Plan(plan::Args),
    /// Convert a Hugging Face model folder to GGUF files at one or more bit widths.
    Quantize(convert::Args),
    /// Describe a GGUF file or a Hugging Face model folder: architecture, parameters, per-tensor
    /// types and bytes, bits per weight, context length, licence.
    Inspect(inspect::Args),
    /// Perplexity (and with --baseline, KL divergence) of GGUF files and Hugging Face folders on
    /// your text, computed as llama-perplexity does; appends each result to a results file.
    Eval(eval::EvalArgs),
    /// Prompt-processing and generation tokens/second on this machine, as llama-bench measures.
    Bench(eval::BenchArgs),
    /// Quantize a raw little-endian f32 matrix to one or more GGUF block formats and report the
    /// error, size and speed of each.
    QuantizeRaw(quantize_raw::Args),
}

/// Run the CLI; returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let result = match cli.command {
        Command::Types { json } => {
            print_types(json);
            Ok(())
        }
        Command::QuantizeRaw(args) => quantize_raw::run(args),
        Command::Quantize(args) => convert::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Eval(args) => eval::run_eval(args),
        Command::Bench(args) => eval::run_bench(args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {}", one_line(&e));
            2
        }
    }
}

/// The error and its causes on one line: control characters (a newline in a file name)
/// are escaped so that the message stays one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn print_types(json: bool) {
    use crate::quant::table::FORMATS;
    if json {
        let rows: Vec<_> = FORMATS
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name, "id": f.id, "block_elems": f.block_elems,
                    "block_bytes": f.block_bytes, "bits_per_weight": f.bits_per_weight(),
                    "uses_imatrix": f.uses_imatrix,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("plain JSON")
        );
        return;
    }
    println!(
        "{:<8} {:>4} {:>12} {:>12} {:>8} {:>8}",
        "type", "id", "block elems", "block bytes", "bpw", "imatrix"
    );
    for f in FORMATS.iter() {
        println!(
            "{:<8} {:>4} {:>12} {:>12} {:>8.4} {:>8}",
            f.name,
            f.id,
            f.block_elems,
            f.block_bytes,
            f.bits_per_weight(),
            if f.uses_imatrix { "yes" } else { "-" }
        );
    }
}
