//! The evaluation loop: chunks through each model, scoring as llama-perplexity does, and with
//! a baseline, KL divergence against the baseline's distributions. The baseline's
//! log-probabilities are computed once and spilled to a temporary file (f32, one chunk at a
//! time), so any number of models compare against them without holding them in memory.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::model::KvCache;
use super::perplexity::{
    chunk_log_probs, summarize_divergence, target_log_probs, token_divergence, ChunkPlan,
    KldSummary, NllStats, TokenDivergence,
};
use super::LoadedModel;

/// What one model scored.
#[derive(Clone, Debug, serde::Serialize)]
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
    /// sha256 of the token ids scored (and the BOS put first in each chunk, if any): two
    /// results on the same tokens and ctx are perplexities on one scale.
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

/// Baseline log-probabilities on disk, chunk after chunk.
pub struct BaselineStore {
    path: PathBuf,
    file: File,
    floats_per_chunk: usize,
    written: usize,
    /// Removes the file if the run is interrupted.
    _slot: Option<crate::output::guard::TempSlot>,
}

/// Removes baseline stores left in the temporary folder by runs that were killed: the exact
/// name pattern, a regular file of this user, its writer's pid gone.
fn remove_stale_stores(dir: &std::path::Path) {
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
            .and_then(|r| r.strip_suffix(".f32"))
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
                "note: removed {}, a baseline store left by an interrupted run",
                e.path().display()
            );
        }
    }
}

impl BaselineStore {
    pub fn create(floats_per_chunk: usize) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir();
        remove_stale_stores(&dir);
        let path = dir.join(format!(
            "quantfit-baseline-{}-{nanos}.f32",
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
                .with_context(|| format!("{}: cannot create the baseline store", path.display()))?
        };
        Ok(BaselineStore {
            _slot: crate::output::guard::register_temp(&path),
            path,
            file,
            floats_per_chunk,
            written: 0,
        })
    }

    fn write_chunk(&mut self, log_probs: &[f32]) -> Result<()> {
        debug_assert_eq!(log_probs.len(), self.floats_per_chunk);
        let mut w = BufWriter::with_capacity(1 << 20, &self.file);
        for v in log_probs {
            w.write_all(&v.to_le_bytes())?;
        }
        w.flush().with_context(|| {
            format!(
                "{}: cannot write baseline log-probabilities (disk full?)",
                self.path.display()
            )
        })?;
        self.written += 1;
        Ok(())
    }

    fn read_chunk(&mut self, i: usize) -> Result<Vec<f32>> {
        if i >= self.written {
            bail!("baseline chunk {i} was never written");
        }
        let bytes_per_chunk = self.floats_per_chunk * 4;
        self.file
            .seek(SeekFrom::Start((i * bytes_per_chunk) as u64))?;
        let mut bytes = vec![0u8; bytes_per_chunk];
        self.file
            .read_exact(&mut bytes)
            .with_context(|| format!("{}: cannot read back", self.path.display()))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

impl Drop for BaselineStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What to do with each chunk's log-probabilities besides scoring them.
pub enum Compare<'a> {
    None,
    /// This model is the baseline: keep its log-probabilities.
    Record(&'a mut BaselineStore),
    /// Compare with the stored baseline.
    Against(&'a mut BaselineStore),
}

fn progress_bar(show: bool, name: &str, chunks: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(chunks as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>24} [{bar:30}] {pos}/{len} chunks  {msg}  ETA {eta}",
        )
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
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
        bail!(
            "{}: token id {bad} is outside the model's vocabulary of {n_vocab}",
            m.path.display()
        );
    }
    let bar = progress_bar(show_progress, &m.name, plan.chunks);
    let mut nll = NllStats::default();
    let mut divergences: Vec<TokenDivergence> = Vec::new();
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
        if matches!(compare, Compare::None) {
            for lp in target_log_probs(&logits, n_vocab, targets) {
                nll.add(lp);
            }
        } else {
            let log_probs = chunk_log_probs(&logits, n_vocab);
            for (row, &t) in targets.iter().enumerate() {
                nll.add(log_probs[row * n_vocab + t as usize] as f64);
            }
            if let Compare::Record(store) = &mut compare {
                store.write_chunk(&log_probs)?;
            }
            if let Compare::Against(store) = &mut compare {
                let base = store.read_chunk(i)?;
                let chunk: Vec<TokenDivergence> = (0..scored)
                    .into_par_iter()
                    .map(|row| {
                        let r = row * n_vocab..(row + 1) * n_vocab;
                        token_divergence(&base[r.clone()], &log_probs[r], targets[row] as usize)
                    })
                    .collect();
                divergences.extend(chunk);
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
        tokens_sha256: tokens_fingerprint(tokens, bos),
        kld: summarize_divergence(&divergences),
        notes: m.notes.clone(),
    })
}
