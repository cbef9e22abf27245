//! Tasks as token sequences and requests, tokenized and laid out the way each reference
//! scores them: llama-perplexity for HellaSwag and WinoGrande (tools/perplexity/
//! perplexity.cpp: `hellaswag_score`, `winogrande_score`), lm-evaluation-harness for the JSON
//! lines (`HFLM._encode_pair`, `ConfigurableTask.process_results`).

use std::ops::Range;

use anyhow::{bail, Result};

use super::engine::{Group, Reference, Request};
use super::parse::Item;
use crate::eval::tokenize::TextTokenizer;

/// A task ready to score: its group, which requests belong to each choice, and the answer.
pub struct Prepared {
    pub group: Group,
    pub choices: Vec<Range<usize>>,
    pub answer: usize,
    /// Each choice's length in UTF-8 bytes (lm-evaluation-harness's `acc_norm` divides by it).
    pub choice_bytes: Vec<usize>,
}

/// llama-perplexity's batch for multiple-choice tasks: `n_ctx` 512 x 4 parallel sequences
/// (its defaults, tools/perplexity/perplexity.cpp `main`), so 4 sequences at most.
pub(super) const LLAMA_CTX: usize = 2048;
pub(super) const LLAMA_SEQS: usize = 4;

/// The tokens after `cp` of every sequence, then each sequence's requests from `from[s]` to
/// its last token (or the one before, `skip_last`).
fn requests_after(
    seqs: &[Vec<u32>],
    from: &[usize],
    skip_last: &[bool],
) -> (Vec<Request>, Vec<Range<usize>>) {
    let mut requests = Vec::new();
    let mut choices = Vec::new();
    for (s, seq) in seqs.iter().enumerate() {
        let start = requests.len();
        let end = seq.len() - 1 - usize::from(skip_last[s]);
        for pos in from[s]..end {
            requests.push(Request {
                seq: s,
                pos,
                target: seq[pos + 1],
            });
        }
        choices.push(start..requests.len());
    }
    (requests, choices)
}

pub(super) fn required_tokens(seqs: &[Vec<u32>], cp: usize) -> usize {
    cp + seqs.iter().map(|s| s.len() - cp).sum::<usize>()
}

pub fn prepare(items: &[Item], tok: &TextTokenizer) -> Result<Vec<Prepared>> {
    if matches!(items.first(), Some(Item::Winogrande { .. })) {
        return super::winogrande::prepare(items, tok);
    }
    let out: Vec<Prepared> = items
        .iter()
        .map(|item| {
            prepare_one(item, tok).map_err(|e| anyhow::anyhow!("line {}: {e}", item.line()))
        })
        .collect::<Result<_>>()?;
    Ok(out)
}

fn prepare_one(item: &Item, tok: &TextTokenizer) -> Result<Prepared> {
    match item {
        Item::Hellaswag {
            context,
            gold,
            endings,
            ..
        } => {
            let seqs = endings
                .iter()
                .map(|e| tok.encode(&format!("{context} {e}")))
                .collect::<Result<Vec<_>>>()?;
            let group = Group {
                seqs,
                requests: Vec::new(),
                reference: None,
            };
            let cp = group.common_prefix();
            if cp == 0 || group.seqs.iter().any(|s| s.len() == cp) {
                bail!("an ending adds no tokens after the part all four share");
            }
            // The last shared position predicts each ending's first token; every ending
            // token but the last predicts the next.
            let (requests, choices) = requests_after(&group.seqs, &[cp - 1; 4], &[false; 4]);
            let batch = required_tokens(&group.seqs, cp);
            Ok(Prepared {
                group: Group {
                    requests,
                    reference: Some(Reference { offset: 0, batch }),
                    ..group
                },
                choices,
                answer: *gold,
                choice_bytes: Vec::new(),
            })
        }
        Item::Winogrande { .. } => bail!("WinoGrande tasks are laid out by the batch"),
        Item::Choice {
            context,
            choices,
            answer,
            ..
        } => {
            let mut seqs = Vec::new();
            let mut from = Vec::new();
            for c in choices {
                // lm-evaluation-harness's default target delimiter.
                let (whole, ctx_len) = pair(tok, context, &format!(" {c}"))?;
                seqs.push(whole);
                from.push(ctx_len - 1);
            }
            let (requests, ranges) = requests_after(&seqs, &from, &vec![false; seqs.len()]);
            Ok(Prepared {
                group: Group {
                    seqs,
                    requests,
                    reference: None,
                },
                choices: ranges,
                answer: *answer,
                choice_bytes: choices.iter().map(|c| c.len()).collect(),
            })
        }
        Item::Completion {
            prompt, completion, ..
        } => {
            let (whole, ctx_len) = pair(tok, prompt, completion)?;
            let seqs = vec![whole];
            let (requests, ranges) = requests_after(&seqs, &[ctx_len - 1], &[false]);
            Ok(Prepared {
                group: Group {
                    seqs,
                    requests,
                    reference: None,
                },
                choices: ranges,
                answer: 0,
                choice_bytes: vec![completion.len()],
            })
        }
    }
}

/// lm-evaluation-harness's context/continuation encoding: trailing whitespace of the context
/// moves to the continuation, the pair is encoded whole and the continuation is what follows
/// the context's own token count. An empty context starts from BOS (the harness's prefix
/// token). Returns the whole sequence and the context's length in it.
fn pair(tok: &TextTokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, usize)> {
    let trimmed = context.trim_end();
    let continuation = format!("{}{continuation}", &context[trimmed.len()..]);
    let mut ctx = tok.encode(trimmed)?;
    let mut whole = tok.encode(&format!("{trimmed}{continuation}"))?;
    if ctx.is_empty() {
        let Some(bos) = tok.bos else {
            bail!("the context is empty and the vocabulary has no BOS token to start from");
        };
        ctx.push(bos);
        whole.insert(0, bos);
    }
    if whole.len() <= ctx.len() {
        bail!("the continuation adds no tokens to the context");
    }
    Ok((whole, ctx.len()))
}
