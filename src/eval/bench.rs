//! Prompt-processing and generation speed, measured the way llama-bench measures them
//! (tools/llama-bench): a warm-up run, then `reps` repetitions from an empty context; `pp N`
//! feeds N random tokens as one batch and keeps only the last position's logits, `tg N` feeds
//! N tokens one at a time through the KV cache. Each repetition gives tokens/second; the
//! report is their mean and sample standard deviation.

use std::time::Instant;

use anyhow::Result;

use super::model::{argmax_rows, KvCache, Model};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BenchResult {
    /// "pp512", "tg128".
    pub test: String,
    pub n_tokens: usize,
    pub reps: usize,
    pub tokens_per_s: f64,
    pub tokens_per_s_sd: f64,
    pub samples: Vec<f64>,
}

/// Deterministic pseudo-random token ids (xorshift), so runs compare like for like.
fn random_tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % n_vocab as u64) as u32
        })
        .collect()
}

fn mean_sd(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let sd = if samples.len() > 1 {
        (samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, sd)
}

fn prompt_once(model: &Model, tokens: &[u32]) -> Result<f64> {
    let mut cache = KvCache::default();
    let start = Instant::now();
    let logits = model.forward(tokens, &mut cache, tokens.len() - 1)?;
    // Reading the logits back makes sure all work is done before the clock stops.
    std::hint::black_box(logits.flatten_all()?.to_vec1::<f32>()?);
    Ok(tokens.len() as f64 / start.elapsed().as_secs_f64())
}

fn generate_once(model: &Model, first: u32, n: usize) -> Result<f64> {
    let mut cache = KvCache::default();
    let mut token = first;
    let start = Instant::now();
    for _ in 0..n {
        let logits = model.forward(&[token], &mut cache, 0)?;
        token = argmax_rows(&logits)?[0];
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Prompt processing of `n` tokens.
pub fn prompt(model: &Model, n: usize, reps: usize) -> Result<BenchResult> {
    let tokens = random_tokens(n, model.config().n_vocab, 0x9e37_79b9_7f4a_7c15);
    prompt_once(model, &tokens)?;
    let samples = (0..reps)
        .map(|_| prompt_once(model, &tokens))
        .collect::<Result<Vec<_>>>()?;
    Ok(summary(format!("pp{n}"), n, samples))
}

/// Generation of `n` tokens, one at a time.
pub fn generation(model: &Model, n: usize, reps: usize) -> Result<BenchResult> {
    let first = random_tokens(1, model.config().n_vocab, 42)[0];
    generate_once(model, first, n.min(16))?;
    let samples = (0..reps)
        .map(|_| generate_once(model, first, n))
        .collect::<Result<Vec<_>>>()?;
    Ok(summary(format!("tg{n}"), n, samples))
}

fn summary(test: String, n_tokens: usize, samples: Vec<f64>) -> BenchResult {
    let (tokens_per_s, tokens_per_s_sd) = mean_sd(&samples);
    BenchResult {
        test,
        n_tokens,
        reps: samples.len(),
        tokens_per_s,
        tokens_per_s_sd,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_as_llama_bench() {
        let (m, sd) = mean_sd(&[10.0, 12.0, 14.0]);
        assert_eq!(m, 12.0);
        assert!((sd - 2.0).abs() < 1e-12);
        let t = random_tokens(1000, 50, 1);
        assert!(t.iter().all(|&x| x < 50));
        assert!(t.iter().collect::<std::collections::HashSet<_>>().len() > 40);
    }
}
