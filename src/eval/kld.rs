//! KL divergence of a model's next-token distributions from a baseline's, computed as
//! `llama-perplexity --kl-divergence` computes it (tools/perplexity/perplexity.cpp,
//! `log_softmax` with a base row, and `kl_divergence`): the baseline is read as its 16-bit
//! log-probability rows (see `base_logits`), terms whose baseline log-probability is at most -16
//! are left out, per-token figures are f32 and sums f64, and the summary statistics use the same
//! formulas (standard errors only past 10 tokens, percentiles by linear interpolation of f32
//! values). Quantfit's own baseline runs store their rows in that format too, so a
//! `--baseline MODEL` run and a `--baseline-logits FILE` run of the same model give the same
//! figures.

use super::base_logits::BaseRow;
use super::softmax::{exp_nonpositive, max_and_sum_exp};

/// What one scored position contributes.
#[derive(Clone, Copy, Debug)]
pub struct RowScore {
    pub kld: f64,
    /// p_model(target) - p_base(target).
    pub p_diff: f32,
    /// -ln p(target) under the model and under the baseline, in f32 as llama.cpp keeps them.
    pub nll: f32,
    pub nll_base: f32,
    pub same_top: bool,
    /// ln p(target) under the model in f64, for the perplexity figure (as perplexity mode).
    pub log_p: f64,
}

/// Baseline log-probabilities at or below this are left out of the sum (llama.cpp's cut: their
/// 16-bit values hold nothing finer than the row's minimum).
const CUT: f32 = -16.0;

#[inline(always)]
fn kl_sum_body(logits: &[f32], base: &[u16], scale: f32, min: f32, log_norm: f32) -> f64 {
    let mut total = 0f64;
    for (lc, bc) in logits.chunks(256).zip(base.chunks(256)) {
        let mut lanes = [0f32; 16];
        let mut l16 = lc.chunks_exact(16);
        let mut b16 = bc.chunks_exact(16);
        for (l, b) in (&mut l16).zip(&mut b16) {
            for i in 0..16 {
                let lp_base = scale * b[i] as f32 + min;
                let term = exp_nonpositive(lp_base) * (lp_base - l[i] + log_norm);
                lanes[i] += if lp_base > CUT { term } else { 0.0 };
            }
        }
        let mut tail = 0f32;
        for (&l, &b) in l16.remainder().iter().zip(b16.remainder()) {
            let lp_base = scale * b as f32 + min;
            if lp_base > CUT {
                tail += exp_nonpositive(lp_base) * (lp_base - l + log_norm);
            }
        }
        total += lanes.iter().map(|&v| v as f64).sum::<f64>() + tail as f64;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kl_sum_avx2(logits: &[f32], base: &[u16], scale: f32, min: f32, log_norm: f32) -> f64 {
    kl_sum_body(logits, base, scale, min, log_norm)
}

/// sum over the vocabulary of p_base * (ln p_base - ln p_model), with ln p_model = logit -
/// `log_norm`.
fn kl_sum(logits: &[f32], base: &[u16], scale: f32, min: f32, log_norm: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { kl_sum_avx2(logits, base, scale, min, log_norm) };
    }
    kl_sum_body(logits, base, scale, min, log_norm)
}

/// First index of the largest value (llama.cpp keeps the first of equal maxima).
fn first_argmax<T: PartialOrd + Copy>(values: &[T]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Scores one position: the model's raw logits against the baseline's row, `target` the
/// token that follows.
pub fn score_row(logits: &[f32], base: BaseRow, target: usize) -> RowScore {
    let (max, sum_exp) = max_and_sum_exp(logits);
    let log_sum_exp = sum_exp.ln() as f32;
    let nll = max + log_sum_exp - logits[target];
    let nll_base = -(base.scale * base.values[target] as f32 + base.min);
    let log_norm = max + log_sum_exp;
    let kld = kl_sum(logits, base.values, base.scale, base.min, log_norm);
    // The baseline's values are a monotone map of its log-probabilities (scale >= 0; all equal
    // when the scale is 0, where llama.cpp's top is index 0 too).
    let same_top = first_argmax(logits) == first_argmax(base.values);
    RowScore {
        kld,
        p_diff: (-nll).exp() - (-nll_base).exp(),
        nll,
        nll_base,
        same_top,
        log_p: (logits[target] - max) as f64 - sum_exp.ln(),
    }
}

/// Running sums over scored positions, as llama.cpp's `kl_divergence_result`, plus each
/// position's KLD and Δp for the percentiles (f32, 8 bytes a token: the text's length bounds
/// them, never the vocabulary's).
#[derive(Clone, Debug, Default)]
pub struct KldStats {
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    n_same_top: usize,
    kld_values: Vec<f32>,
    p_diff_values: Vec<f32>,
}

/// Summary of KL divergence over all scored tokens: every statistic llama-perplexity's
/// `--kl-divergence` prints at the end, under the same definitions.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct KldSummary {
    pub kld_mean: f64,
    pub kld_err: f64,
    pub kld_max: f64,
    pub kld_p999: f64,
    pub kld_p99: f64,
    pub kld_p95: f64,
    pub kld_p90: f64,
    pub kld_median: f64,
    pub kld_p10: f64,
    pub kld_p05: f64,
    pub kld_p01: f64,
    pub kld_p001: f64,
    pub kld_min: f64,
    pub same_top_rate: f64,
    pub same_top_err: f64,
    /// Δp = p_model(target) - p_base(target), as fractions (llama.cpp prints percent).
    pub dp_mean: f64,
    pub dp_mean_err: f64,
    pub dp_max: f64,
    pub dp_p999: f64,
    pub dp_p99: f64,
    pub dp_p95: f64,
    pub dp_p90: f64,
    pub dp_p75: f64,
    pub dp_median: f64,
    pub dp_p25: f64,
    pub dp_p10: f64,
    pub dp_p05: f64,
    pub dp_p01: f64,
    pub dp_p001: f64,
    pub dp_min: f64,
    pub rms_dp: f64,
    pub rms_dp_err: f64,
    pub ln_ppl_ratio_mean: f64,
    pub ln_ppl_ratio_err: f64,
    pub ppl_ratio: f64,
    pub ppl_ratio_err: f64,
    pub ppl_diff: f64,
    pub ppl_diff_err: f64,
    /// Correlation of the model's and the baseline's per-token ln-likelihoods.
    pub ppl_correlation: f64,
    pub baseline_ppl: f64,
    pub baseline_ppl_err: f64,
}

/// llama.cpp's `mean_and_uncertainty`: no uncertainty for 10 values or fewer.
fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let n = count as f64;
    let f = sum / n;
    let df = sum2 / n - f * f;
    let df = if df > 0.0 && count > 10 {
        (df / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (f, df)
}

/// llama.cpp's `covariance` of two per-token series from their sums.
fn covariance(sum_a: f64, sum_b: f64, sum_ab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let n = count as f64;
    (sum_ab / n - (sum_a / n) * (sum_b / n)) / (n - 1.0)
}

/// llama.cpp's percentile of sorted f32 values (interpolated in f32 at an f32 position).
fn percentile(sorted: &[f32], fraction: f32) -> f64 {
    if fraction <= 0.0 {
        return sorted[0] as f64;
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1] as f64;
    }
    let p = fraction * (sorted.len() - 1) as f32;
    let ip = p as usize;
    let p = p - ip as f32;
    ((1.0 - p) * sorted[ip] + p * sorted[(ip + 1).min(sorted.len() - 1)]) as f64
}

/// The middle value, or the mean of the two middle ones (llama.cpp's median).
fn median(sorted: &[f32]) -> f64 {
    let n = sorted.len();
    if n.is_multiple_of(2) {
        (0.5 * (sorted[n / 2] + sorted[n / 2 - 1])) as f64
    } else {
        sorted[n / 2] as f64
    }
}

impl KldStats {
    pub fn add(&mut self, r: &RowScore) {
        // Products of f32 values are f32, as in llama.cpp, then summed in f64.
        self.sum_nll += r.nll as f64;
        self.sum_nll2 += (r.nll * r.nll) as f64;
        self.sum_nll_base += r.nll_base as f64;
        self.sum_nll_base2 += (r.nll_base * r.nll_base) as f64;
        self.sum_nll_nll_base += (r.nll * r.nll_base) as f64;
        self.sum_kld += r.kld;
        self.sum_kld2 += r.kld * r.kld;
        self.sum_p_diff += r.p_diff as f64;
        let p_diff2 = (r.p_diff * r.p_diff) as f64;
        self.sum_p_diff2 += p_diff2;
        self.sum_p_diff4 += p_diff2 * p_diff2;
        self.n_same_top += usize::from(r.same_top);
        self.kld_values.push(r.kld as f32);
        self.p_diff_values.push(r.p_diff);
    }

    pub fn count(&self) -> usize {
        self.kld_values.len()
    }

    pub fn summary(mut self) -> Option<KldSummary> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let n = count as f64;
        self.kld_values.sort_by(f32::total_cmp);
        self.p_diff_values.sort_by(f32::total_cmp);
        let (k, d) = (&self.kld_values, &self.p_diff_values);

        let log_ppl = mean_and_uncertainty(self.sum_nll, self.sum_nll2, count);
        let ppl = log_ppl.0.exp();
        let ppl_err = ppl * log_ppl.1;
        let log_base = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, count);
        let baseline_ppl = log_base.0.exp();
        let baseline_ppl_err = baseline_ppl * log_base.1;
        let cov = covariance(
            self.sum_nll,
            self.sum_nll_base,
            self.sum_nll_nll_base,
            count,
        );
        let ln_ratio = log_ppl.0 - log_base.0;
        let ln_ratio_err = (log_ppl.1 * log_ppl.1 + log_base.1 * log_base.1 - 2.0 * cov).sqrt();
        let ppl_ratio = ln_ratio.exp();
        let ppl_cov = ppl * baseline_ppl * cov;
        let kl = mean_and_uncertainty(self.sum_kld, self.sum_kld2, count);
        let dp = mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, count);
        let mse = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, count);
        let rms_dp = mse.0.sqrt();
        let same_top_rate = self.n_same_top as f64 / n;
        Some(KldSummary {
            kld_mean: kl.0,
            kld_err: kl.1,
            kld_max: k[count - 1] as f64,
            kld_p999: percentile(k, 0.999),
            kld_p99: percentile(k, 0.990),
            kld_p95: percentile(k, 0.950),
            kld_p90: percentile(k, 0.900),
            kld_median: median(k),
            kld_p10: percentile(k, 0.100),
            kld_p05: percentile(k, 0.050),
            kld_p01: percentile(k, 0.010),
            kld_p001: percentile(k, 0.001),
            kld_min: k[0] as f64,
            same_top_rate,
            same_top_err: (same_top_rate * (1.0 - same_top_rate) / (n - 1.0)).sqrt(),
            dp_mean: dp.0,
            dp_mean_err: dp.1,
            dp_max: d[count - 1] as f64,
            dp_p999: percentile(d, 0.999),
            dp_p99: percentile(d, 0.990),
            dp_p95: percentile(d, 0.950),
            dp_p90: percentile(d, 0.900),
            dp_p75: percentile(d, 0.750),
            dp_median: median(d),
            dp_p25: percentile(d, 0.250),
            dp_p10: percentile(d, 0.100),
            dp_p05: percentile(d, 0.050),
            dp_p01: percentile(d, 0.010),
            dp_p001: percentile(d, 0.001),
            dp_min: d[0] as f64,
            rms_dp,
            rms_dp_err: if rms_dp > 0.0 {
                0.5 / rms_dp * mse.1
            } else {
                0.0
            },
            ln_ppl_ratio_mean: ln_ratio,
            ln_ppl_ratio_err: ln_ratio_err,
            ppl_ratio,
            ppl_ratio_err: ppl_ratio * ln_ratio_err,
            ppl_diff: ppl - baseline_ppl,
            ppl_diff_err: (ppl_err * ppl_err + baseline_ppl_err * baseline_ppl_err - 2.0 * ppl_cov)
                .sqrt(),
            ppl_correlation: cov / (log_ppl.1 * log_base.1),
            baseline_ppl,
            baseline_ppl_err,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::base_logits::encode_row;

    fn encoded(logits: &[f32]) -> Vec<u16> {
        let mut row = vec![0u16; crate::eval::base_logits::row_len(logits.len())];
        encode_row(logits, &mut row);
        row
    }

    /// KL(base || model) in f64 from the definitions, over the terms llama.cpp keeps.
    fn reference_kld(base: &[u16], model: &[f32]) -> f64 {
        let b = BaseRow::parse(base, model.len());
        let m_max = model.iter().copied().fold(f32::MIN, f32::max) as f64;
        let lse = model
            .iter()
            .map(|&v| (v as f64 - m_max).exp())
            .sum::<f64>()
            .ln();
        b.values
            .iter()
            .zip(model)
            .map(|(&q, &l)| {
                let lb = b.scale as f64 * q as f64 + b.min as f64;
                if lb > -16.0 {
                    lb.exp() * (lb - (l as f64 - m_max - lse))
                } else {
                    0.0
                }
            })
            .sum()
    }

    #[test]
    fn identical_distributions_have_next_to_no_divergence() {
        let logits: Vec<f32> = (0..1001).map(|i| ((i * 37) % 101) as f32 * 0.13).collect();
        let base = encoded(&logits);
        let s = score_row(&logits, BaseRow::parse(&base, logits.len()), 5);
        // The baseline's 16-bit rounding is all that separates them: each log-probability
        // within half a step (13 / 65535 here), so the sum within about that.
        assert!(s.kld.abs() < 1e-4, "{}", s.kld);
        assert!(s.same_top);
        assert!((s.nll - s.nll_base).abs() < 1e-3 && s.p_diff.abs() < 1e-4);
        let want = -(((logits[5] as f64) - 13.0) - {
            let lse: f64 = logits.iter().map(|&v| (v as f64 - 13.0).exp()).sum();
            lse.ln()
        });
        assert!((-s.log_p - want).abs() < 1e-6, "{} {want}", -s.log_p);
    }

    #[test]
    fn divergence_matches_its_definition() {
        let base_logits: Vec<f32> = (0..777).map(|i| ((i * 53) % 97) as f32 * 0.21).collect();
        let model: Vec<f32> = (0..777).map(|i| ((i * 29) % 89) as f32 * 0.23).collect();
        let base = encoded(&base_logits);
        let s = score_row(&model, BaseRow::parse(&base, model.len()), 3);
        let want = reference_kld(&base, &model);
        assert!(want > 0.1);
        assert!((s.kld / want - 1.0).abs() < 1e-5, "{} vs {want}", s.kld);
        assert!(!s.same_top);
    }

    #[test]
    fn statistics_follow_llama_perplexity() {
        let mut st = KldStats::default();
        for i in 0..200 {
            let x = i as f32 / 200.0;
            st.add(&RowScore {
                kld: (x * x) as f64,
                p_diff: x - 0.5,
                nll: 1.0 + x,
                nll_base: 1.0 + 0.9 * x,
                same_top: i % 4 != 0,
                log_p: -1.0 - x as f64,
            });
        }
        let s = st.summary().unwrap();
        assert!((s.same_top_rate - 0.75).abs() < 1e-12);
        assert!((s.same_top_err - (0.75f64 * 0.25 / 199.0).sqrt()).abs() < 1e-12);
        // 200 values 0, 1/200^2, ...: the median is the mean of the 100th and 101st.
        let m = 0.5 * ((99.0f32 / 200.0).powi(2) + (100.0f32 / 200.0).powi(2));
        assert!((s.kld_median - m as f64).abs() < 1e-7);
        assert!((s.kld_max - (199.0f64 / 200.0).powi(2)).abs() < 1e-6);
        assert_eq!(s.kld_min, 0.0);
        // Position 0.99 x 199 = 197.01: 99% of value 197 and 1% of value 198.
        let p99 = 0.99f32 * 199.0;
        let frac = p99 - 197.0;
        let want = (1.0 - frac) * (197.0f32 / 200.0).powi(2) + frac * (198.0f32 / 200.0).powi(2);
        assert!(
            (s.kld_p99 - want as f64).abs() < 1e-6,
            "{} {want}",
            s.kld_p99
        );
        // ln ratio = mean(nll) - mean(nll_base) = mean(0.1 x).
        assert!((s.ln_ppl_ratio_mean - 0.1 * 0.4975).abs() < 1e-6);
        assert!(s.ppl_correlation > 0.999);
        assert!((s.dp_mean - (0.4975 - 0.5)).abs() < 1e-6);
        // Ten values or fewer: no uncertainty, as llama.cpp.
        let mut few = KldStats::default();
        for i in 0..10 {
            few.add(&RowScore {
                kld: i as f64,
                p_diff: 0.0,
                nll: 1.0,
                nll_base: 1.0,
                same_top: true,
                log_p: -1.0,
            });
        }
        assert_eq!(few.summary().unwrap().kld_err, 0.0);
    }
}
