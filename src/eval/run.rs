//! The evaluation loop: chunks through each model, scoring as llama-perplexity does, and with
//! a baseline, KL divergence against the baseline's distributions. The baseline's rows are
//! kept in llama-perplexity's log-probability format (`base_logits`): written by a baseline
//! model's run (to the user's file, or to a scratch file removed at the end) or read from a file
//! llama-perplexity made, a chunk at a time, so any number of models compare against them
//! without holding them in memory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::base_logits::{row_len, BaseLogits, BaseLogitsWriter, BaseRow};
use super::kld::{score_row, KldStats, KldSummary, RowScore};
use super::model::KvCache;
use super::perplexity::{target_log_probs, ChunkPlan, NllStats};
use super::LoadedModel;

/// What one model scored.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EvalResult {
    /// The model's own name (GGUF `general.name`, or the folder's model name).
    pub model: String,
    /// File or folder name.
    pub file: String,
    pub path: String,
    pub quant: String,
    pub file_bytes: u64,
    pub bits_per_weight: f64,
    pub n_params: u64,
    pub ctx: usize,
    pub chunks: usize,
    pub tokens_scored: usize,
    pub ppl: f64,
    pub ppl_err: f64,
    /// Tokens fed through the model (ctx x chunks) per second of the whole loop, as
    /// llama-perplexity's timing covers.
    pub eval_tokens_per_s: f64,
    pub seconds: f64,
    /// sha256 of the token ids of the chunks evaluated (and the BOS put first in each chunk,
    /// if any): two results on the same tokens and ctx are perplexities on one scale.
    pub tokens_sha256: String,
    #[serde(flatten)]
    pub kld: Option<KldSummary>,
    pub notes: Vec<String>,
}

fn tokens_fingerprint(tokens: &[u32], bos: Option<u32>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(bos.map_or([0u8; 5], |b| {
        let mut v = [1u8; 5];
        v[1..].copy_from_slice(&b.to_le_bytes());
        v
    }));
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A scratch file in the temporary folder for a baseline's rows when the user did not ask to
/// keep them; removed when dropped, and by the next run if this one is killed.
pub struct Scratch {
    path: PathBuf,
    file: File,
    _slot: Option<crate::output::guard::TempSlot>,
}

/// Removes scratch files left in the temporary folder by runs that were killed: the exact
/// name pattern, a regular file of this user, its writer's pid gone.
fn remove_stale_scratch(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("quantfit-baseline-"))
            .and_then(|r| r.strip_suffix(".logits").or_else(|| r.strip_suffix(".f32")))
        else {
            continue;
        };
        let Some((pid, nanos)) = rest.split_once('-') else {
            continue;
        };
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_digit());
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if digits(nanos)
            && meta.file_type().is_file()
            && meta.uid() == uid
            && pid != std::process::id()
            && !crate::output::guard::process_alive(pid)
            && std::fs::remove_file(e.path()).is_ok()
        {
            eprintln!(
                "note: removed {}, a baseline scratch file left by an interrupted run",
                e.path().display()
            );
        }
    }
}

impl Scratch {
    pub fn create() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir();
        remove_stale_scratch(&dir);
        let path = dir.join(format!(
            "quantfit-baseline-{}-{nanos}.logits",
            std::process::id()
        ));
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("{}: cannot create a scratch file", path.display()))?
        };
        Ok(Scratch {
            _slot: crate::output::guard::register_temp(&path),
            path,
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A buffered writer at the file's start.
    pub fn writer(&self) -> Result<std::io::BufWriter<File>> {
        let f = self
            .file
            .try_clone()
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        Ok(std::io::BufWriter::with_capacity(1 << 20, f))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the baseline's rows are written.
pub trait RecordRows {
    /// Stores the scored rows of the next chunk; returns each row's (max logit, sum of
    /// e^(logit - max)).
    fn record(&mut self, logits: &[f32]) -> Result<Vec<(f32, f64)>>;
}

impl<W: Write> RecordRows for BaseLogitsWriter<W> {
    fn record(&mut self, logits: &[f32]) -> Result<Vec<(f32, f64)>> {
        self.write_chunk(logits)
    }
}

/// What to do with each chunk's logits besides scoring them.
pub enum Compare<'a> {
    None,
    /// This model is the baseline: store its rows.
    Record(&'a mut dyn RecordRows),
    /// Compare with the stored baseline.
    Against(&'a mut BaseLogits),
}

/// Runs `m` as the baseline, its rows written to `out` in llama-perplexity's format; returns
/// the result and the writer, every chunk written and flushed.
pub fn record_baseline<W: Write>(
    m: &LoadedModel,
    tokens: &[u32],
    plan: ChunkPlan,
    out: W,
    out_name: &str,
    show_progress: bool,
) -> Result<(EvalResult, W)> {
    let n_vocab = m.model.config().n_vocab;
    let mut writer = BaseLogitsWriter::new(out, out_name, plan, n_vocab, tokens)?;
    let r = evaluate(m, tokens, plan, Compare::Record(&mut writer), show_progress)?;
    Ok((r, writer.finish()?))
}

/// The bar `eval` shows per model: `total` of `unit` (chunks, tasks).
pub(super) fn progress_bar(
    show: bool,
    name: &str,
    total: usize,
    unit: &str,
) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{prefix:>24}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{msg}}  ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    bar
}

/// Runs `m` over `tokens` cut as `plan`.
pub fn evaluate(
    m: &LoadedModel,
    tokens: &[u32],
    plan: ChunkPlan,
    mut compare: Compare,
    show_progress: bool,
) -> Result<EvalResult> {
    let n_vocab = m.model.config().n_vocab;
    let scored = plan.scored_per_chunk();
    let bos = if m.tokenizer.add_bos {
        m.tokenizer.bos
    } else {
        None
    };
    if let Compare::Against(base) = &compare {
        if base.layout.n_vocab != n_vocab {
            bail!(
                "{}: vocabulary of {n_vocab} tokens, the baseline {} has {}",
                m.path.display(),
                base.path().display(),
                base.layout.n_vocab
            );
        }
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
        bail!(
            "{}: token id {bad} is outside the model's vocabulary of {n_vocab}",
            m.path.display()
        );
    }
    let bar = progress_bar(show_progress, &m.name, plan.chunks, "chunks");
    let mut nll = NllStats::default();
    let mut kld = KldStats::default();
    let mut cache = KvCache::default();
    let start = Instant::now();
    for i in 0..plan.chunks {
        let input = plan.chunk_input(tokens, i, bos);
        cache.clear();
        let logits = m
            .model
            .forward(&input, &mut cache, plan.first)
            .with_context(|| format!("{}: chunk {i}", m.path.display()))?;
        let logits = logits
            .narrow(0, 0, scored)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let targets = plan.targets(tokens, i);
        match &mut compare {
            Compare::None => {
                for lp in target_log_probs(&logits, n_vocab, targets) {
                    nll.add(lp);
                }
            }
            Compare::Record(out) => {
                let norms = out.record(&logits)?;
                for (row, (&t, (max, sum))) in targets.iter().zip(norms).enumerate() {
                    nll.add((logits[row * n_vocab + t as usize] - max) as f64 - sum.ln());
                }
            }
            Compare::Against(base) => {
                let rows = base.read_chunk(i)?;
                let width = row_len(n_vocab);
                let scores: Vec<RowScore> = (0..scored)
                    .into_par_iter()
                    .map(|r| {
                        let row = BaseRow::parse(&rows[r * width..(r + 1) * width], n_vocab);
                        score_row(
                            &logits[r * n_vocab..(r + 1) * n_vocab],
                            row,
                            targets[r] as usize,
                        )
                    })
                    .collect();
                for s in &scores {
                    nll.add(s.log_p);
                    kld.add(s);
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        bar.set_message(format!(
            "{:.0} tok/s  PPL {:.4}",
            ((i + 1) * plan.ctx) as f64 / secs,
            nll.ppl()
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    Ok(EvalResult {
        model: m.model_name.clone(),
        file: m.name.clone(),
        path: m.path.display().to_string(),
        quant: m.quant.clone(),
        file_bytes: m.file_bytes,
        bits_per_weight: m.bits_per_weight,
        n_params: m.n_params,
        ctx: plan.ctx,
        chunks: plan.chunks,
        tokens_scored: nll.count,
        ppl: nll.ppl(),
        ppl_err: nll.ppl_err(),
        eval_tokens_per_s: (plan.chunks * plan.ctx) as f64 / seconds,
        seconds,
        tokens_sha256: tokens_fingerprint(&tokens[..plan.chunks * plan.ctx], bos),
        kld: kld.summary(),
        notes: m.notes.clone(),
    })
}
