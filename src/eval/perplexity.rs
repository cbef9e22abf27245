//! Perplexity and KL divergence, computed as llama.cpp's `llama-perplexity` does
//! (tools/perplexity/perplexity.cpp): the text is cut into chunks of `ctx` tokens evaluated
//! independently, the first token of each chunk is replaced by BOS when the vocabulary adds BOS,
//! and only the second half of each chunk is scored (every token there has at least ctx/2 tokens
//! of context). Softmax sums are taken in f64 as there. KL divergence is `kld`'s.

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
