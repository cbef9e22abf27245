use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::eval::base_logits::BaseLogits;
use crate::eval::perplexity::ChunkPlan;
use crate::eval::results::{self, BenchLine, EvalLine, Record, RunInfo};
use crate::eval::run::{evaluate, record_baseline, Compare, EvalResult, Scratch};
use crate::eval::{bench, load, LoadedModel};
use crate::output::{self, Inputs};

/// A public-domain excerpt (Jane Austen, Pride and Prejudice) for a first run without --text.
const SAMPLE_TEXT: &str = include_str!("../../assets/sample-text.txt");

#[derive(clap::Args)]
pub struct RunArgs {
    /// Threads for the forward pass (default: all logical CPUs).
    #[arg(long, short = 't')]
    pub(super) threads: Option<usize>,
    /// Tokenizer to use instead of the one beside the model or in the GGUF metadata.
    #[arg(long)]
    pub(super) tokenizer: Option<PathBuf>,
    /// Append results to this JSON-lines file.
    #[arg(long, default_value = "quantfit-results.jsonl")]
    pub(super) results: PathBuf,
    /// Do not append to a results file.
    #[arg(long)]
    pub(super) no_results: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// GGUF files and/or Hugging Face model folders.
    #[arg(required = true)]
    pub(super) models: Vec<PathBuf>,
    /// The text to score (UTF-8). Your own task's text is what matters.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Tokens per chunk [default: 512; with --baseline-logits, the file's].
    #[arg(long)]
    ctx: Option<usize>,
    /// At most this many chunks (default: as many as the text, or the logits file, holds).
    #[arg(long)]
    chunks: Option<usize>,
    /// Compare every model's next-token distribution with this model's (KL divergence).
    #[arg(long, conflicts_with = "baseline_logits")]
    pub(super) baseline: Option<PathBuf>,
    /// Compare every model with the log-probabilities saved in FILE by `llama-perplexity
    /// --kl-divergence-base FILE` (or --save-baseline-logits); its tokens are scored, so
    /// --text is not needed.
    #[arg(long, value_name = "FILE", conflicts_with = "text")]
    baseline_logits: Option<PathBuf>,
    /// Save the baseline's log-probabilities (the --baseline model's, or the one model's) in
    /// llama-perplexity's format, for `--baseline-logits` here or `llama-perplexity
    /// --kl-divergence` elsewhere.
    #[arg(long, value_name = "FILE", conflicts_with = "baseline_logits")]
    save_baseline_logits: Option<PathBuf>,
    /// Score the tasks in FILE instead of perplexity: HellaSwag (llama-perplexity's text),
    /// WinoGrande CSV, or JSON lines of multiple choice or completions.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["text", "baseline_logits", "save_baseline_logits", "ctx", "chunks"])]
    pub(super) task: Option<PathBuf>,
    /// The task file's format (default: told from the file).
    #[arg(long, value_enum, requires = "task")]
    pub(super) task_format: Option<crate::eval::task::TaskFormat>,
    /// Score only the first N tasks in llama-perplexity's order (HellaSwag: drawn at random
    /// as it draws them; WinoGrande: likewise; JSON lines: the file's first N).
    #[arg(long, value_name = "N", requires = "task")]
    pub(super) task_limit: Option<usize>,
    #[command(flatten)]
    pub(super) run: RunArgs,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A GGUF file or a Hugging Face model folder.
    model: PathBuf,
    /// Prompt tokens processed as one batch (0 to skip).
    #[arg(long, default_value_t = 512)]
    pp: usize,
    /// Tokens generated one at a time (0 to skip).
    #[arg(long, default_value_t = 128)]
    tg: usize,
    /// Repetitions (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[command(flatten)]
    run: RunArgs,
}

/// Sizes the thread pools before any work starts: rayon's for quantfit and candle's kernels,
/// and the variable candle's matmul reads for its own thread count.
fn set_threads(threads: Option<usize>) -> Result<usize> {
    let n = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if n == 0 {
        bail!("--threads must be at least 1");
    }
    // SAFETY: called before any other thread of this process exists.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        // candle's own worker pool spins between jobs; on few cores the spinning starves the
        // threads doing the work (measured: generation 60 -> 77 tok/s on 2 cores).
        if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
            std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
        }
    }
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    Ok(n)
}

/// The files a run reads (models, folders' files, text, tokenizer), checked to be unchanged
/// before results are appended and never to be the results file; the results file is
/// checked before any work starts.
pub(super) fn inputs_of<'a>(
    run: &'a RunArgs,
    paths: impl IntoIterator<Item = &'a PathBuf>,
) -> Result<Inputs> {
    let inputs = Inputs::capture(output::files_of(paths.into_iter().chain(&run.tokenizer)));
    if !run.no_results {
        output::check_log(&run.results, &inputs)?;
    }
    Ok(inputs)
}

/// Appends `lines` to the results file unless told not to, and prints them when --json asks;
/// returns whether they were printed (and the table should not be).
pub(super) fn emit(run: &RunArgs, lines: &[Record], inputs: &Inputs) -> Result<bool> {
    inputs.verify()?;
    if !run.no_results {
        results::append(&run.results, lines, inputs)?;
    }
    if run.json {
        println!("{}", serde_json::to_string_pretty(lines)?);
    }
    Ok(run.json)
}

fn read_text(path: Option<&Path>) -> Result<(String, String)> {
    match path {
        Some(p) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
            let text = String::from_utf8(bytes)
                .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text ({e})", p.display()))?;
            Ok((text, p.display().to_string()))
        }
        None => {
            eprintln!(
                "note: no --text given; scoring a short built-in public-domain sample. Quality on \
                 your own task's text is what matters: pass --text FILE."
            );
            Ok((SAMPLE_TEXT.to_string(), "built-in sample".into()))
        }
    }
}

fn m_name(m: &LoadedModel) -> String {
    format!("{}'s tokenizer", m.name)
}

pub(super) fn load_noted(path: &Path, tokenizer: Option<&Path>) -> Result<LoadedModel> {
    let m = load(path, tokenizer)?;
    for n in &m.notes {
        eprintln!("note: {}: {n}", m.name);
    }
    Ok(m)
}

/// Runs `f` on a thread of the global pool: parallel loops started from there fork and join
/// among workers instead of blocking the main thread on a latch for every matmul (measured:
/// that wake-up round trip was ~30% of generation time on 2 cores).
fn in_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let mut out = None;
    rayon::scope(|_| out = Some(f()));
    out.expect("the scope ran the closure")
}

pub fn run_eval(args: EvalArgs) -> Result<()> {
    let threads = set_threads(args.run.threads)?;
    in_pool(|| eval_in_pool(args, threads))
}

const DEFAULT_CTX: usize = 512;

/// The baseline's rows written by this run: where to read them back, and the user's file to
/// commit at the end (a scratch file otherwise, removed when dropped).
struct Recorded {
    reader: Option<BaseLogits>,
    saved: Option<output::Pending>,
    _scratch: Option<Scratch>,
}

/// Runs `m` as the baseline on `tokens`, its rows going to the --save-baseline-logits target
/// or, when only the comparison needs them, to a scratch file.
fn record(
    m: &LoadedModel,
    tokens: &[u32],
    plan: ChunkPlan,
    save: Option<&output::Target>,
    read_back: bool,
    show: bool,
) -> Result<(EvalResult, Recorded)> {
    match save.filter(|t| !(t.is_sink() && read_back)) {
        Some(target) => {
            let out = output::AtomicFile::create(target)?;
            let shown = target.path().display().to_string();
            let (r, out) = record_baseline(m, tokens, plan, out, &shown, show)?;
            let pending = out.finish()?;
            let reader = if read_back {
                Some(BaseLogits::open(pending.written_path())?)
            } else {
                None
            };
            let saved = Some(pending);
            Ok((
                r,
                Recorded {
                    reader,
                    saved,
                    _scratch: None,
                },
            ))
        }
        None => {
            let scratch = Scratch::create()?;
            let shown = scratch.path().display().to_string();
            let (r, _) = record_baseline(m, tokens, plan, scratch.writer()?, &shown, show)?;
            let reader = Some(BaseLogits::open(scratch.path())?);
            Ok((
                r,
                Recorded {
                    reader,
                    saved: None,
                    _scratch: Some(scratch),
                },
            ))
        }
    }
}

fn eval_in_pool(args: EvalArgs, threads: usize) -> Result<()> {
    if args.task.is_some() {
        return super::task::run(args, threads);
    }
    let inputs = inputs_of(
        &args.run,
        args.models
            .iter()
            .chain(&args.baseline)
            .chain(&args.text)
            .chain(&args.baseline_logits),
    )?;
    let save = match &args.save_baseline_logits {
        Some(p) => {
            if args.baseline.is_none() && args.models.len() != 1 {
                bail!(
                    "--save-baseline-logits saves one model's log-probabilities: give one model, \
                     or name the baseline with --baseline"
                );
            }
            Some(output::check(p, &inputs, false)?)
        }
        None => None,
    };
    let tok = args.run.tokenizer.as_deref();
    let show = !args.run.json;
    let mut rows: Vec<EvalResult> = Vec::new();

    // The baseline's rows, its tokens and chunks, and its name for the results.
    let mut reference: Option<(BaseLogits, String)> = None;
    let mut shared: Option<(Vec<u32>, ChunkPlan)> = None;
    let mut saved = None;
    let mut _scratch = None;
    let (text, text_name) = match &args.baseline_logits {
        Some(path) => {
            let file = BaseLogits::open(path)?;
            if let Some(ctx) = args.ctx.filter(|&c| c != file.layout.ctx) {
                bail!(
                    "{}: made with ctx {}; --ctx {ctx} cannot be scored against it (leave --ctx \
                     out)",
                    path.display(),
                    file.layout.ctx
                );
            }
            shared = Some((file.tokens.clone(), file.plan(args.chunks)?));
            reference = Some((file, display(path)));
            (None, path.display().to_string())
        }
        None => {
            let (text, name) = read_text(args.text.as_deref())?;
            (Some(text), name)
        }
    };
    let ctx = args.ctx.unwrap_or(DEFAULT_CTX);
    let plan_for = |m: &LoadedModel, text: &str| -> Result<(Vec<u32>, ChunkPlan)> {
        let tokens = m.tokenizer.encode(text)?;
        let p = ChunkPlan::new(tokens.len(), ctx, args.chunks)
            .with_context(|| format!("{text_name} with {}", m_name(m)))?;
        Ok((tokens, p))
    };
    if let (Some(base_path), Some(text)) = (&args.baseline, &text) {
        let base = load_noted(base_path, tok)?;
        let (tokens, p) = plan_for(&base, text)?;
        let others = args.models.iter().any(|m| m != base_path);
        let (r, rec) = record(&base, &tokens, p, save.as_ref(), others, show)?;
        rows.push(r);
        saved = rec.saved;
        _scratch = rec._scratch;
        reference = rec.reader.map(|f| (f, base.name.clone()));
        shared = Some((tokens, p));
    }
    for path in &args.models {
        if args.baseline.as_deref() == Some(path.as_path()) {
            continue;
        }
        let m = load_noted(path, tok)?;
        let r = match (&mut reference, &shared, &text) {
            (Some((base, base_name)), Some((base_tokens, p)), text) => {
                if let Some(text) = text {
                    if plan_for(&m, text)?.0 != *base_tokens {
                        bail!(
                            "{}: tokenizes the text differently from the baseline {base_name}; \
                             KL divergence needs the same tokens",
                            path.display()
                        );
                    }
                }
                evaluate(&m, base_tokens, *p, Compare::Against(base), show)?
            }
            (_, _, Some(text)) => {
                let (tokens, p) = plan_for(&m, text)?;
                if save.is_some() {
                    let (r, rec) = record(&m, &tokens, p, save.as_ref(), false, show)?;
                    saved = rec.saved;
                    r
                } else {
                    evaluate(&m, &tokens, p, Compare::None, show)?
                }
            }
            _ => unreachable!("a logits file gives tokens and chunks"),
        };
        rows.push(r);
    }

    let baseline_name = reference.as_ref().map(|(_, n)| n.clone());
    let lines: Vec<Record> = rows
        .iter()
        .map(|r| {
            Record::Eval(EvalLine {
                result: r.clone(),
                text: text_name.clone(),
                baseline: baseline_name.clone(),
                run: RunInfo::here(threads),
            })
        })
        .collect();
    inputs.verify()?;
    if let Some(p) = saved {
        p.commit()?;
        if show {
            eprintln!(
                "baseline log-probabilities saved to {}",
                args.save_baseline_logits.as_ref().expect("saved").display()
            );
        }
    }
    if emit(&args.run, &lines, &inputs)? {
        return Ok(());
    }
    print_eval_table(&rows, &text_name, threads);
    if !args.run.no_results {
        println!("results appended to {}", args.run.results.display());
    }
    Ok(())
}

fn display(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn print_eval_table(rows: &[EvalResult], text: &str, threads: usize) {
    if let Some(r) = rows.first() {
        println!(
            "text: {text}  ctx {}  chunks {}  tokens scored {}  threads {threads}",
            r.ctx, r.chunks, r.tokens_scored
        );
    }
    let with_kld = rows.iter().any(|r| r.kld.is_some());
    let w = rows.iter().map(|r| r.file.len()).max().unwrap_or(4).max(4);
    print!(
        "{:<w$} {:<8} {:>10} {:>6} {:>20}",
        "file", "type", "MiB", "bpw", "PPL"
    );
    if with_kld {
        print!(
            " {:>9} {:>18} {:>9} {:>9} {:>8} {:>7}",
            "PPL ratio", "mean KLD", "KLD p99", "KLD max", "same top", "RMS dp"
        );
    }
    println!(" {:>9}", "tok/s");
    for r in rows {
        print!(
            "{:<w$} {:<8} {:>10.2} {:>6.3} {:>20}",
            r.file,
            r.quant,
            r.file_bytes as f64 / (1u64 << 20) as f64,
            r.bits_per_weight,
            format!("{:.4} ± {:.5}", r.ppl, r.ppl_err)
        );
        if with_kld {
            match &r.kld {
                Some(k) => print!(
                    " {:>9.5} {:>18} {:>9.5} {:>9.4} {:>7.2}% {:>6.3}%",
                    k.ppl_ratio,
                    format!("{:.6} ± {:.6}", k.kld_mean, k.kld_err),
                    k.kld_p99,
                    k.kld_max,
                    k.same_top_rate * 100.0,
                    k.rms_dp * 100.0
                ),
                None => print!(
                    " {:>9} {:>18} {:>9} {:>9} {:>8} {:>7}",
                    "baseline", "", "", "", "", ""
                ),
            }
        }
        println!(" {:>9.1}", r.eval_tokens_per_s);
    }
}

pub fn run_bench(args: BenchArgs) -> Result<()> {
    let threads = set_threads(args.run.threads)?;
    in_pool(|| bench_in_pool(args, threads))
}

fn bench_in_pool(args: BenchArgs, threads: usize) -> Result<()> {
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let inputs = inputs_of(&args.run, [&args.model])?;
    let m = load_noted(&args.model, args.run.tokenizer.as_deref())?;
    let mut tests = Vec::new();
    if args.pp > 0 {
        tests.push(bench::prompt(&m.model, args.pp, args.reps)?);
    }
    if args.tg > 0 {
        tests.push(bench::generation(&m.model, args.tg, args.reps)?);
    }
    if tests.is_empty() {
        bail!("nothing to measure: both --pp and --tg are 0");
    }
    let lines: Vec<Record> = tests
        .iter()
        .map(|t| {
            Record::Bench(BenchLine {
                model: m.model_name.clone(),
                file: m.name.clone(),
                path: m.path.display().to_string(),
                quant: m.quant.clone(),
                file_bytes: m.file_bytes,
                bits_per_weight: m.bits_per_weight,
                n_params: m.n_params,
                result: t.clone(),
                backend: "CPU".into(),
                run: RunInfo::here(threads),
            })
        })
        .collect();
    if emit(&args.run, &lines, &inputs)? {
        return Ok(());
    }
    println!(
        "| {:<28} | {:>10} | {:>8} | {:<7} | {:>7} | {:>6} | {:>20} |",
        "model", "size", "params", "backend", "threads", "test", "t/s"
    );
    println!(
        "| {:-<28} | {:->10} | {:->8} | {:-<7} | {:->7} | {:->6} | {:->20} |",
        "", "", "", "", "", "", ""
    );
    for t in &tests {
        println!(
            "| {:<28} | {:>10} | {:>8} | {:<7} | {:>7} | {:>6} | {:>20} |",
            format!("{} {}", m.name, m.quant),
            format!("{:.2} MiB", m.file_bytes as f64 / (1u64 << 20) as f64),
            format!("{:.2} M", m.n_params as f64 / 1e6),
            "CPU",
            threads,
            t.test,
            format!("{:.2} ± {:.2}", t.tokens_per_s, t.tokens_per_s_sd)
        );
    }
    if !args.run.no_results {
        println!("results appended to {}", args.run.results.display());
    }
    Ok(())
}
