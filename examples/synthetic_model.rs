//! Write a synthetic Llama model folder (random BF16 weights) for benchmarks:
//!
//!   cargo run --release --example synthetic_model -- OUT_DIR LAYERS [HIDDEN] [FF] [TOKENIZER_DIR]
//!
//! The tokenizer files come from TOKENIZER_DIR (default ../shared/models/smollm2-135m).

use std::path::PathBuf;

use quantfit::source::synthetic::{write_llama, LlamaSpec};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(out), Some(layers)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: synthetic_model OUT_DIR LAYERS [HIDDEN] [FF] [TOKENIZER_DIR]");
    };
    let hidden: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let ff: usize = args
        .get(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4 * hidden);
    let tokenizer = args
        .get(4)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/models/smollm2-135m"));
    let spec = LlamaSpec {
        n_layer: layers.parse()?,
        hidden,
        ff,
        n_head: hidden / 64,
        n_head_kv: hidden / 256,
        vocab: 49152,
        seed: 7,
    };
    write_llama(&PathBuf::from(out), &spec, &tokenizer)?;
    println!(
        "wrote {out}: {} layers, hidden {hidden}, ffn {ff}",
        spec.n_layer
    );
    Ok(())
}
