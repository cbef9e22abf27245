//! Scoring sequences that share a prefix, as llama-perplexity batches its tasks: the prefix is
//! run once and each sequence's own tokens after it, several tasks packed into one forward
//! pass (`Model::forward_packed`), and only the rows whose next-token log-probability is
//! asked for go through the output matrix.

use std::ops::Range;

use anyhow::{bail, Result};
use rayon::prelude::*;

use crate::eval::attention::{Packed, F32_QUERY_ROWS};
use crate::eval::model::Model;

/// The log-probability of `target` after position `pos` of sequence `seq` (the logits of
/// that position).
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub seq: usize,
    pub pos: usize,
    pub target: u32,
}

/// Where llama-perplexity runs a group: its offset in the batch it shares and that batch's
/// length, laid out as llama.cpp lays it (prefix, then every sequence's tokens after it).
#[derive(Clone, Copy, Debug)]
pub struct Reference {
    pub offset: usize,
    pub batch: usize,
}

/// One task's sequences and what to score in them.
#[derive(Clone, Debug)]
pub struct Group {
    pub seqs: Vec<Vec<u32>>,
    pub requests: Vec<Request>,
    pub reference: Option<Reference>,
}

/// What one request scored.
#[derive(Clone, Copy, Debug)]
pub struct Scored {
    pub log_p: f32,
    /// The target is the arg-max of its row (the first maximum).
    pub greedy: bool,
}

/// Tokens per packed forward pass: enough rows for the matrix kernels, few enough that
/// the attention blocks mostly see their own task.
const BATCH_TOKENS: usize = 512;

/// llama.cpp's micro-batch (`n_ubatch`, default 512): the rows its attention runs together.
const LLAMA_UBATCH: usize = 512;

impl Group {
    /// Tokens shared by every sequence from the start.
    pub fn common_prefix(&self) -> usize {
        let first = &self.seqs[0];
        (0..first.len())
            .take_while(|&k| self.seqs.iter().all(|s| s.get(k) == Some(&first[k])))
            .count()
    }

    /// The rows the forward pass runs: the prefix, then each sequence up to its last
    /// requested position.
    fn layout(&self) -> (usize, Vec<Range<usize>>) {
        let cp = self.common_prefix();
        let ends = (0..self.seqs.len()).map(|s| {
            self.requests
                .iter()
                .filter(|r| r.seq == s)
                .map(|r| r.pos + 1)
                .max()
                .unwrap_or(0)
                .max(cp)
        });
        (cp, ends.map(|e| cp..e).collect())
    }

    fn rows(&self) -> usize {
        let (cp, branches) = self.layout();
        cp + branches.iter().map(|b| b.len()).sum::<usize>()
    }

    /// Checks what the layout relies on: sequences, and requests inside them.
    fn check(&self) -> Result<()> {
        if self.seqs.is_empty() || self.seqs.iter().any(|s| s.is_empty()) {
            bail!("a task has no tokens to score");
        }
        for r in &self.requests {
            if r.seq >= self.seqs.len() || r.pos >= self.seqs[r.seq].len() {
                bail!("a scored position lies outside its sequence");
            }
        }
        Ok(())
    }
}

/// A packed batch being built.
#[derive(Default)]
struct Batch {
    tokens: Vec<u32>,
    positions: Vec<usize>,
    spans: Vec<[Range<usize>; 2]>,
    rounded: Vec<bool>,
    outputs: Vec<usize>,
}

impl Batch {
    fn add(&mut self, g: &Group) {
        let (cp, branches) = g.layout();
        let base = self.tokens.len();
        // llama.cpp's batch index of each row, for its query rounding.
        let cut = |i: usize| {
            g.reference.map(|r| {
                let at = r.offset + i;
                LLAMA_UBATCH.min(r.batch - at / LLAMA_UBATCH * LLAMA_UBATCH) < F32_QUERY_ROWS
            })
        };
        for p in 0..cp {
            self.push(g.seqs[0][p], p, [base..base + p + 1, 0..0], cut(p));
        }
        let mut starts = Vec::with_capacity(branches.len());
        let mut llama_at = cp;
        for (s, b) in branches.iter().enumerate() {
            let start = self.tokens.len();
            starts.push(start);
            for p in b.clone() {
                let row = self.tokens.len();
                self.push(
                    g.seqs[s][p],
                    p,
                    [base..base + cp, start..row + 1],
                    cut(llama_at + p - cp),
                );
            }
            llama_at += g.seqs[s].len() - cp;
        }
        for r in &g.requests {
            let row = if r.pos < cp {
                base + r.pos
            } else {
                starts[r.seq] + r.pos - cp
            };
            self.outputs.push(row);
        }
    }

    fn push(&mut self, token: u32, pos: usize, spans: [Range<usize>; 2], rounded: Option<bool>) {
        self.tokens.push(token);
        self.positions.push(pos);
        self.spans.push(spans);
        // Without a reference, rows round as the batch they run in.
        self.rounded.push(rounded.unwrap_or(false));
    }
}

/// Scores every group's requests, several groups per forward pass; `done` is told after
/// each pass how many groups are finished.
pub fn score(
    model: &Model,
    groups: &[Group],
    mut done: impl FnMut(usize),
) -> Result<Vec<Vec<Scored>>> {
    for g in groups {
        g.check()?;
    }
    let n_vocab = model.config().n_vocab;
    let mut out = Vec::with_capacity(groups.len());
    let mut i = 0;
    while i < groups.len() {
        let mut batch = Batch::default();
        let mut j = i;
        while j < groups.len() && (j == i || batch.tokens.len() + groups[j].rows() <= BATCH_TOKENS)
        {
            batch.add(&groups[j]);
            j += 1;
        }
        let own = batch.tokens.len() < F32_QUERY_ROWS;
        for (flag, g) in batch.rounded.iter_mut().zip(row_groups(&groups[i..j])) {
            if groups[i + g].reference.is_none() {
                *flag = own;
            }
        }
        let packed = Packed {
            spans: &batch.spans,
            positions: &batch.positions,
        };
        let targets: Vec<u32> = groups[i..j]
            .iter()
            .flat_map(|g| g.requests.iter().map(|r| r.target))
            .collect();
        let mut scored: Vec<Scored> = Vec::with_capacity(targets.len());
        let mut score_rows = |logits: &[f32]| {
            let done = scored.len();
            let rows = logits.len() / n_vocab;
            scored.par_extend(
                logits
                    .par_chunks(n_vocab)
                    .zip(targets[done..done + rows].par_iter())
                    .map(|(row, &t)| {
                        let (max, sum) = crate::eval::softmax::max_and_sum_exp(row);
                        Scored {
                            log_p: ((row[t as usize] - max) as f64 - sum.ln()) as f32,
                            greedy: row.iter().position(|&v| v == max) == Some(t as usize),
                        }
                    }),
            );
            Ok(())
        };
        // Tasks with nothing to score (a WinoGrande choice llama-perplexity leaves empty)
        // can make a batch with no rows.
        if !batch.outputs.is_empty() {
            model.forward_packed(
                &batch.tokens,
                &packed,
                &batch.rounded,
                &batch.outputs,
                &mut score_rows,
            )?;
        }
        for g in &groups[i..j] {
            let rest = scored.split_off(g.requests.len());
            out.push(std::mem::replace(&mut scored, rest));
        }
        i = j;
        done(i);
    }
    Ok(out)
}

/// The group each row of a batch of `groups` belongs to.
fn row_groups(groups: &[Group]) -> impl Iterator<Item = usize> + '_ {
    groups
        .iter()
        .enumerate()
        .flat_map(|(k, g)| std::iter::repeat_n(k, g.rows()))
}
