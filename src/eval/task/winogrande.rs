//! WinoGrande as llama-perplexity scores it (tools/perplexity/perplexity.cpp,
//! `winogrande_score`): both sentences in full; when both run more than 3 tokens past their
//! shared prefix, only the tokens after the filled-in choice count (`skip_choice`), the
//! sentence's last token left out whenever more than one remains; a choice scores the mean
//! log-probability of its counted tokens.
//!
//! llama-perplexity reads each token's logits by an index into the rows its batch returned,
//! counting one row per task for the prefix's last token. Two of its quirks follow from that
//! and are reproduced, so the same tasks come out right:
//! - the second sentence's first counted token, when the choice is not skipped, is read
//!   from the first sentence's last row (its FIXME: "this uses the wrong first logits");
//! - a task whose sentences share no first token (a blank that starts the sentence, with a
//!   vocabulary that adds no BOS) has no prefix row, yet one is counted: its reads, and
//!   those of the task batched after it, land one row later than meant (each such task in a
//!   batch adds one). Where llama.cpp would read past the rows of its own task, the task's
//!   last row is used instead (llama.cpp reads the next task's rows, or stale ones).

use anyhow::{anyhow, bail, Result};

use super::engine::{Group, Reference, Request};
use super::parse::Item;
use super::prepare::{required_tokens, Prepared, LLAMA_CTX, LLAMA_SEQS};
use crate::eval::tokenize::TextTokenizer;

/// Tokens that must follow the shared prefix in both sentences for the choice to be skipped.
const MIN_TRAILING: usize = 3;

/// One task tokenized: both sentences, and each one's length up to its choice's end.
struct Tokenized {
    line: usize,
    seqs: [Vec<u32>; 2],
    bases: [usize; 2],
    common: usize,
    answer: usize,
}

impl Tokenized {
    fn required(&self) -> usize {
        required_tokens(&self.seqs, self.common)
    }

    /// The rows llama-perplexity counts for the task: the prefix's last, then every token
    /// after the prefix of each sentence.
    fn counted_rows(&self) -> usize {
        1 + self
            .seqs
            .iter()
            .map(|s| s.len() - self.common)
            .sum::<usize>()
    }

    /// The (sentence, position) whose logits counted row `row` holds; row 0 is the prefix's
    /// last token.
    fn row(&self, row: usize) -> (usize, usize) {
        let cp = self.common;
        let first_rest = self.seqs[0].len() - cp;
        match row {
            0 => (0, cp - 1),
            r if r <= first_rest => (0, cp + r - 1),
            r => (1, cp + r - first_rest - 1),
        }
    }
}

fn tokenize(item: &Item, tok: &TextTokenizer) -> Result<Tokenized> {
    let Item::Winogrande {
        line,
        first,
        second,
        choices,
        answer,
    } = item
    else {
        bail!("not a WinoGrande task");
    };
    let encode = |c: &String, rest: &str| tok.encode(&format!("{first}{c}{rest}"));
    let seqs = [encode(&choices[0], second)?, encode(&choices[1], second)?];
    let bases = [
        encode(&choices[0], "")?.len(),
        encode(&choices[1], "")?.len(),
    ];
    let common = seqs[0]
        .iter()
        .zip(&seqs[1])
        .take_while(|(a, b)| a == b)
        .count();
    if seqs.iter().any(|s| s.len() <= common) {
        bail!("one sentence is the other's start: nothing to tell them apart");
    }
    Ok(Tokenized {
        line: *line,
        seqs,
        bases,
        common,
        answer: *answer,
    })
}

/// Every task of `items` (all WinoGrande) tokenized and laid out in llama-perplexity's
/// batches: as many tasks as fit its context of 2048 tokens and 4 sequences, so two.
pub fn prepare(items: &[Item], tok: &TextTokenizer) -> Result<Vec<Prepared>> {
    let on_line = |line: usize| move |e: anyhow::Error| anyhow!("line {line}: {e}");
    let tasks = items
        .iter()
        .map(|item| tokenize(item, tok).map_err(on_line(item.line())))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(tasks.len());
    let mut i0 = 0;
    while i0 < tasks.len() {
        let mut i1 = i0;
        let mut n = 0;
        while i1 < tasks.len()
            && n + tasks[i1].required() <= LLAMA_CTX
            && 2 * (i1 - i0) + 2 <= LLAMA_SEQS
        {
            n += tasks[i1].required();
            i1 += 1;
        }
        let i1 = i1.max(i0 + 1);
        let (mut offset, mut missing_rows) = (0, 0);
        for t in &tasks[i0..i1] {
            missing_rows += usize::from(t.common == 0);
            let reference = Reference {
                offset,
                batch: n.max(t.required()),
            };
            out.push(lay_out(t, missing_rows, reference).map_err(on_line(t.line))?);
            offset += t.required();
        }
        i0 = i1;
    }
    Ok(out)
}

/// One task's requests, read `shift` rows later than llama-perplexity means to (the prefix
/// rows its batch counted but never produced, up to and including this task).
fn lay_out(t: &Tokenized, shift: usize, reference: Reference) -> Result<Prepared> {
    let cp = t.common;
    let skip_choice = t.seqs.iter().all(|s| s.len() - cp > MIN_TRAILING);
    let mut requests = Vec::new();
    let mut choices = Vec::new();
    for s in 0..2 {
        let len = t.seqs[s].len();
        let n_base = if skip_choice { t.bases[s] } else { cp };
        if n_base < cp || n_base > len {
            bail!("the choice's tokens merge with the rest of the sentence; llama-perplexity cannot score it either");
        }
        let last = usize::from(len - n_base > 1);
        if len - n_base - last == 0 {
            bail!("no tokens follow the choice to score");
        }
        let start = requests.len();
        // A choice with no prefix before it (n_base 0) scores nothing: llama-perplexity's
        // loop from n_base - 1, an unsigned -1, never runs.
        if n_base > 0 {
            // The first row llama-perplexity reads for this sentence.
            let first_row = n_base - cp + if s == 1 { t.seqs[0].len() - cp } else { 0 };
            for (row, j) in (first_row..).zip(n_base - 1..len - 1 - last) {
                // Row 0 of a task without a prefix is never read: its shift is at least 1.
                let (seq, pos) = t.row((row + shift).min(t.counted_rows() - 1));
                requests.push(Request {
                    seq,
                    pos,
                    target: t.seqs[s][j + 1],
                });
            }
        }
        choices.push(start..requests.len());
    }
    Ok(Prepared {
        group: Group {
            seqs: t.seqs.to_vec(),
            requests,
            reference: Some(reference),
        },
        choices,
        answer: t.answer,
        choice_bytes: Vec::new(),
    })
}
