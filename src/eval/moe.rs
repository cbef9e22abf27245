//! A mixture-of-experts feed-forward block as llama.cpp's `build_moe_ffn` computes it for
//! Mixtral and Qwen3-MoE: router logits (F32 weights), softmax, the top-k experts per token,
//! their probabilities renormalized to sum to one (clamped below at F16's smallest normal),
//! each chosen expert's SwiGLU on the token, weighted, and the weighted outputs summed in rank
//! order. Tokens are grouped by expert so that each expert's matrices run once on all the
//! rows routed to it (ggml's `mul_mat_id` does the same).

use anyhow::Result;

use super::weights::Experts;

/// Experts chosen for one token, best first, with their weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
}

/// ggml_soft_max on one row: the maximum subtracted, exponentials summed in double.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let scale = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= scale);
}

/// The top `k` experts of one token's router logits.
pub fn route(logits: &[f32], k: usize, normalize: bool) -> Route {
    let mut probs = logits.to_vec();
    softmax(&mut probs);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Descending by probability; among equals the lower index first (a stable order).
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order.truncate(k);
    let mut weights: Vec<f32> = order.iter().map(|&e| probs[e]).collect();
    if normalize {
        let sum = weights.iter().map(|&w| w as f64).sum::<f64>() as f32;
        let sum = sum.max(6.103_515_6e-5);
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    Route {
        experts: order,
        weights,
    }
}

/// The block on `xn` (`[t, n_embd]`, already normed); returns `[t, n_embd]`.
pub fn forward(
    experts: &Experts,
    xn: &[f32],
    n_embd: usize,
    k: usize,
    normalize: bool,
) -> Result<Vec<f32>> {
    let t = xn.len() / n_embd;
    let logits = experts.router.forward(xn)?;
    let n_expert = experts.gate.len();
    let routes: Vec<Route> = logits
        .chunks(n_expert)
        .map(|row| route(row, k, normalize))
        .collect();
    // Each token's weighted expert outputs by rank, summed in rank order at the end.
    let mut ranked = vec![0f32; t * k * n_embd];
    for e in 0..n_expert {
        let rows: Vec<(usize, usize)> = routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.experts.iter().position(|&x| x == e).map(|j| (i, j)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let mut input = Vec::with_capacity(rows.len() * n_embd);
        for &(i, _) in &rows {
            input.extend_from_slice(&xn[i * n_embd..(i + 1) * n_embd]);
        }
        let out =
            super::model::swiglu_ffn([&experts.gate[e], &experts.up[e], &experts.down[e]], &input)?;
        for (&(i, j), y) in rows.iter().zip(out.chunks(n_embd)) {
            let w = routes[i].weights[j];
            let dst = &mut ranked[(i * k + j) * n_embd..][..n_embd];
            dst.iter_mut().zip(y).for_each(|(d, &v)| *d = v * w);
        }
    }
    let mut out = vec![0f32; t * n_embd];
    for (o, r) in out.chunks_mut(n_embd).zip(ranked.chunks(k * n_embd)) {
        o.copy_from_slice(&r[..n_embd]);
        for rank in r.chunks(n_embd).skip(1) {
            o.iter_mut().zip(rank).for_each(|(a, &b)| *a += b);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_pick_the_most_probable_and_renormalize() {
        let r = route(&[0.0, 2.0, 1.0, -1.0], 2, true);
        assert_eq!(r.experts, [1, 2]);
        let (a, b) = (2f32.exp(), 1f32.exp());
        assert!((r.weights[0] - a / (a + b)).abs() < 1e-6);
        assert!((r.weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let plain = route(&[0.0, 2.0, 1.0, -1.0], 2, false);
        let total: f32 = [0f32, 2.0, 1.0, -1.0].iter().map(|x| x.exp()).sum();
        assert!((plain.weights[0] - a / total).abs() < 1e-6);
    }
}
