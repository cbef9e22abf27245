//! Perplexity and KL divergence, computed as llama.cpp's `llama-perplexity` does
//! (tools/perplexity/perplexity.cpp): the text is cut into chunks of `ctx` tokens evaluated
//! independently, the first token of each chunk is replaced by BOS when the vocabulary adds BOS,
//! and only the second half of each chunk is scored (every token there has at least ctx/2 tokens
//! of context). Softmax sums are taken in f64 as there.

use anyhow::{bail, Result};
use rayon::prelude::*;

/// How the token stream is cut.
#[derive(Clone, Copy, Debug)]
pub struct ChunkPlan {
    pub ctx: usize,
    pub chunks: usize,
    /// First position whose logits are scored (ctx / 2).
    pub first: usize,
}

impl ChunkPlan {
    /// As llama-perplexity: at least two contexts of text, at most `limit` chunks.
    pub fn new(n_tokens: usize, ctx: usize, limit: Option<usize>) -> Result<ChunkPlan> {
        if ctx < 4 {
            bail!("--ctx {ctx} is too small (at least 4)");
        }
        if n_tokens < 2 * ctx {
            bail!(
                "the text has {n_tokens} tokens; at least {} (2 x ctx) are needed for ctx {ctx}",
                2 * ctx
            );
        }
        let max = n_tokens / ctx;
        let chunks = limit.map_or(max, |l| l.min(max));
        if chunks == 0 {
            bail!("--chunks 0 leaves nothing to evaluate");
        }
        Ok(ChunkPlan {
            ctx,
            chunks,
            first: ctx / 2,
        })
    }

    /// Tokens scored per chunk: positions first..ctx-1 predict tokens first+1..ctx.
    pub fn scored_per_chunk(&self) -> usize {
        self.ctx - 1 - self.first
    }

    pub fn tokens_scored(&self) -> usize {
        self.chunks * self.scored_per_chunk()
    }

    /// The tokens fed for chunk `i`, with BOS in front when the vocabulary adds it.
    pub fn chunk_input(&self, tokens: &[u32], i: usize, bos: Option<u32>) -> Vec<u32> {
        let mut input = tokens[i * self.ctx..(i + 1) * self.ctx].to_vec();
        if let Some(b) = bos {
            input[0] = b;
        }
        input
    }

    /// The tokens the scored logits of chunk `i` should predict.
    pub fn targets<'a>(&self, tokens: &'a [u32], i: usize) -> &'a [u32] {
        let start = i * self.ctx + self.first + 1;
        &tokens[start..start + self.scored_per_chunk()]
    }
}

/// Log-softmax of one row in llama.cpp's precision: f32 max and exponentials, f64 sum.
pub fn log_softmax_row(logits: &[f32], out: &mut [f32]) {
    let (max, sum) = super::softmax::max_and_sum_exp(logits);
    let log_sum = sum.ln() as f32;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = l - max - log_sum;
    }
}

/// ln p(target) of each row, without materializing the log-probabilities.
pub fn target_log_probs(logits: &[f32], n_vocab: usize, targets: &[u32]) -> Vec<f64> {
    logits
        .par_chunks(n_vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            let (max, sum) = super::softmax::max_and_sum_exp(row);
            (row[t as usize] - max) as f64 - sum.ln()
        })
        .collect()
}

/// Running negative log-likelihood sums (f64, as llama.cpp).
#[derive(Clone, Copy, Debug, Default)]
pub struct NllStats {
    pub sum: f64,
    pub sum_sq: f64,
    pub count: usize,
}

impl NllStats {
    pub fn add(&mut self, log_prob: f64) {
        self.sum += -log_prob;
        self.sum_sq += log_prob * log_prob;
        self.count += 1;
    }

    pub fn ppl(&self) -> f64 {
        (self.sum / self.count as f64).exp()
    }

    /// llama.cpp's "PPL = x +/- err": the standard error of the mean NLL, times PPL.
    pub fn ppl_err(&self) -> f64 {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum_sq / n - mean * mean;
        if var > 0.0 && self.count > 1 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            0.0
        }
    }
}

/// Log-probabilities of the scored rows of one chunk, `[rows, n_vocab]`.
pub fn chunk_log_probs(logits: &[f32], n_vocab: usize) -> Vec<f32> {
    let mut out = vec![0f32; logits.len()];
    out.par_chunks_mut(n_vocab)
        .zip(logits.par_chunks(n_vocab))
        .for_each(|(o, l)| log_softmax_row(l, o));
    out
}

/// Per-token comparison of a model's distribution with the baseline's.
#[derive(Clone, Copy, Debug)]
pub struct TokenDivergence {
    pub kld: f64,
    pub same_top: bool,
    /// p_model(target) - p_base(target).
    pub dp: f64,
    /// ln p of the target under the model and the baseline.
    pub log_p: f64,
    pub base_log_p: f64,
}

/// KL(base || model) of one position, from both log-probability rows (f64 sums, as
/// llama.cpp's kl-divergence mode).
pub fn token_divergence(base: &[f32], model: &[f32], target: usize) -> TokenDivergence {
    let mut kld = 0f64;
    let (mut top_b, mut top_m) = (0usize, 0usize);
    for i in 0..base.len() {
        let pb = (base[i] as f64).exp();
        kld += pb * (base[i] as f64 - model[i] as f64);
        if base[i] > base[top_b] {
            top_b = i;
        }
        if model[i] > model[top_m] {
            top_m = i;
        }
    }
    TokenDivergence {
        kld,
        same_top: top_b == top_m,
        dp: (model[target] as f64).exp() - (base[target] as f64).exp(),
        log_p: model[target] as f64,
        base_log_p: base[target] as f64,
    }
}

/// Summary of KL divergence over all scored tokens, with the statistics llama-perplexity's
/// `--kl-divergence` prints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KldSummary {
    pub kld_mean: f64,
    pub kld_err: f64,
    pub kld_median: f64,
    pub kld_p90: f64,
    pub kld_p95: f64,
    pub kld_p99: f64,
    pub kld_p999: f64,
    pub kld_max: f64,
    pub same_top_rate: f64,
    pub same_top_err: f64,
    pub rms_dp: f64,
    pub rms_dp_err: f64,
    pub ln_ppl_ratio_mean: f64,
    pub ln_ppl_ratio_err: f64,
    pub ppl_ratio: f64,
    pub baseline_ppl: f64,
}

fn mean_and_err(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = values.clone().count() as f64;
    let (s, s2) = values.fold((0.0, 0.0), |(s, s2), v| (s + v, s2 + v * v));
    let mean = s / n;
    let var = s2 / n - mean * mean;
    let err = if n > 1.0 && var > 0.0 {
        (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, err)
}

/// Linear interpolation between closest ranks of a sorted slice.
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let pos = fraction * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

pub fn summarize_divergence(tokens: &[TokenDivergence]) -> Option<KldSummary> {
    if tokens.is_empty() {
        return None;
    }
    let mut klds: Vec<f64> = tokens.iter().map(|t| t.kld).collect();
    klds.sort_by(f64::total_cmp);
    let (kld_mean, kld_err) = mean_and_err(tokens.iter().map(|t| t.kld));
    let (same_top_rate, same_top_err) =
        mean_and_err(tokens.iter().map(|t| if t.same_top { 1.0 } else { 0.0 }));
    let (ms_dp, ms_dp_err) = mean_and_err(tokens.iter().map(|t| t.dp * t.dp));
    let rms_dp = ms_dp.sqrt();
    // d sqrt(x) = dx / (2 sqrt(x))
    let rms_dp_err = if rms_dp > 0.0 {
        ms_dp_err / (2.0 * rms_dp)
    } else {
        0.0
    };
    let (ln_ratio, ln_ratio_err) = mean_and_err(tokens.iter().map(|t| t.base_log_p - t.log_p));
    let base_nll = tokens.iter().map(|t| -t.base_log_p).sum::<f64>() / tokens.len() as f64;
    Some(KldSummary {
        kld_mean,
        kld_err,
        kld_median: percentile(&klds, 0.5),
        kld_p90: percentile(&klds, 0.9),
        kld_p95: percentile(&klds, 0.95),
        kld_p99: percentile(&klds, 0.99),
        kld_p999: percentile(&klds, 0.999),
        kld_max: *klds.last().unwrap(),
        same_top_rate,
        same_top_err,
        rms_dp,
        rms_dp_err,
        ln_ppl_ratio_mean: ln_ratio,
        ln_ppl_ratio_err: ln_ratio_err,
        ppl_ratio: ln_ratio.exp(),
        baseline_ppl: base_nll.exp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_matches_llama_perplexity() {
        let p = ChunkPlan::new(10_000, 512, Some(20)).unwrap();
        assert_eq!((p.chunks, p.first, p.scored_per_chunk()), (19, 256, 255));
        assert!(ChunkPlan::new(1000, 512, None).is_err());
        let tokens: Vec<u32> = (0..2048).collect();
        let p = ChunkPlan::new(tokens.len(), 512, None).unwrap();
        assert_eq!(p.chunk_input(&tokens, 1, Some(7))[..2], [7, 513]);
        assert_eq!(p.targets(&tokens, 1)[0], 512 + 257);
    }

    #[test]
    fn identical_distributions_have_zero_divergence() {
        let mut lp = vec![0f32; 5];
        log_softmax_row(&[1.0, 2.0, 3.0, -1.0, 0.5], &mut lp);
        let d = token_divergence(&lp, &lp, 2);
        assert!(d.kld.abs() < 1e-12 && d.same_top && d.dp == 0.0);
        let mut other = vec![0f32; 5];
        log_softmax_row(&[3.0, 2.0, 1.0, -1.0, 0.5], &mut other);
        let d = token_divergence(&lp, &other, 2);
        assert!(d.kld > 0.1 && !d.same_top && d.dp < 0.0);
    }

    #[test]
    fn ppl_error_as_llama_cpp() {
        let mut s = NllStats::default();
        for lp in [-1.0f64, -2.0, -3.0] {
            s.add(lp);
        }
        assert!((s.ppl() - 2f64.exp()).abs() < 1e-12);
        // var = 14/3 - 4 = 2/3; err = sqrt(2/3 / 2) * ppl
        assert!((s.ppl_err() - (1.0f64 / 3.0).sqrt() * 2f64.exp()).abs() < 1e-12);
    }
}
