//! Task accuracy (`quantfit eval --task`): multiple-choice and completion tasks scored by the
//! log-likelihood the model gives each answer, as llama-perplexity scores HellaSwag and
//! WinoGrande and lm-evaluation-harness scores multiple choice (`acc`, `acc_norm`) and
//! known completions.

pub mod engine;
pub mod order;
pub mod parse;
pub mod prepare;
pub mod winogrande;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::LoadedModel;
use parse::Item;
use prepare::Prepared;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TaskFormat {
    /// llama-perplexity's HellaSwag text: context, label, 4 endings (6 lines per task).
    Hellaswag,
    /// WinoGrande CSV: index,sentence (with a _),option1,option2,answer (1 or 2).
    Winogrande,
    /// JSON lines {"context": ..., "choices": [...], "answer": i}.
    McJsonl,
    /// JSON lines {"prompt": ..., "completion": ...}.
    CompletionJsonl,
}

impl TaskFormat {
    pub fn name(self) -> &'static str {
        match self {
            TaskFormat::Hellaswag => "hellaswag",
            TaskFormat::Winogrande => "winogrande",
            TaskFormat::McJsonl => "mc-jsonl",
            TaskFormat::CompletionJsonl => "completion-jsonl",
        }
    }
}

/// The tasks a run scores: read, and selected in llama-perplexity's order.
pub struct TaskSet {
    /// The file's name.
    pub name: String,
    pub format: TaskFormat,
    pub items: Vec<Item>,
    /// sha256 of the file and of the tasks selected: results with the same one scored the
    /// same tasks.
    pub sha256: String,
}

impl TaskSet {
    pub fn open(path: &Path, format: Option<TaskFormat>, limit: Option<usize>) -> Result<TaskSet> {
        let (format, all) = parse::read(path, format)?;
        let total = all.len();
        let count = limit.unwrap_or(total).min(total);
        let order = match format {
            TaskFormat::Hellaswag => order::hellaswag(total, count),
            TaskFormat::Winogrande => order::winogrande(total, count),
            _ => (0..count).collect(),
        };
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let sha256 = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(Sha256::digest(&bytes));
            h.update(format.name());
            order
                .iter()
                .for_each(|i| h.update((*i as u64).to_le_bytes()));
            h.finalize().iter().map(|b| format!("{b:02x}")).collect()
        };
        let mut slots: Vec<Option<Item>> = all.into_iter().map(Some).collect();
        let items = order
            .iter()
            .map(|&i| slots[i].take().expect("a permutation"))
            .collect();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(TaskSet {
            name,
            format,
            items,
            sha256,
        })
    }
}

/// One task's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Each choice's score, the higher the likelier: the mean log-probability of its tokens
    /// (HellaSwag, WinoGrande), their sum (JSON multiple choice, completions).
    pub scores: Vec<f64>,
    /// The choice picked (for a completion: 1 when it is the greedy one, else 0).
    pub pick: usize,
    pub correct: bool,
    pub norm_correct: Option<bool>,
    pub loglik: Option<f64>,
}

/// What one model scored on a task file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskResult {
    pub model: String,
    pub file: String,
    pub path: String,
    pub quant: String,
    pub file_bytes: u64,
    pub bits_per_weight: f64,
    pub n_params: u64,
    /// The task file's name.
    pub task: String,
    pub task_format: TaskFormat,
    pub tasks_sha256: String,
    /// Tasks scored.
    pub tasks: usize,
    /// Fraction right: the choice with the highest score (llama-perplexity's own score for
    /// its formats; the summed log-likelihood for JSON multiple choice); for completions,
    /// the fraction whose completion is the greedy one.
    pub acc: f64,
    /// Standard error of `acc`, sqrt(p (1 - p) / (n - 1)).
    pub acc_err: f64,
    /// JSON multiple choice: the log-likelihood divided by the choice's length in bytes.
    pub acc_norm: Option<f64>,
    pub acc_norm_err: Option<f64>,
    /// Completions: mean over tasks of the completion's summed log-likelihood.
    pub mean_loglik: Option<f64>,
    pub tasks_per_s: f64,
    pub seconds: f64,
    /// With a baseline: `acc` minus the baseline's.
    pub acc_delta: Option<f64>,
    /// With a baseline: the fraction of tasks whose chosen answer differs from the baseline's.
    pub changed_fraction: Option<f64>,
    pub notes: Vec<String>,
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
}

fn std_err(p: f64, n: usize) -> f64 {
    if n > 1 {
        (p * (1.0 - p) / (n - 1) as f64).sqrt()
    } else {
        0.0
    }
}

impl TaskResult {
    /// Fills `acc_delta` and `changed_fraction` against the baseline's result on the same tasks.
    pub fn compare(&mut self, base: &TaskResult) {
        self.acc_delta = Some(self.acc - base.acc);
        let changed = self
            .outcomes
            .iter()
            .zip(&base.outcomes)
            .filter(|(a, b)| a.pick != b.pick)
            .count();
        self.changed_fraction = Some(changed as f64 / self.outcomes.len().max(1) as f64);
    }
}

/// The outcome of one prepared task from its requests' scores.
fn outcome(format: TaskFormat, p: &Prepared, scored: &[engine::Scored]) -> Outcome {
    let sums: Vec<f64> = p
        .choices
        .iter()
        .map(|r| scored[r.clone()].iter().map(|s| s.log_p as f64).sum())
        .collect();
    // The first maximum, as numpy's argmax and llama-perplexity's strict `>` both pick.
    let first_max = |v: &[f64]| {
        v.iter()
            .enumerate()
            .fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
    };
    match format {
        TaskFormat::Hellaswag => {
            let means: Vec<f64> = sums
                .iter()
                .zip(&p.choices)
                .map(|(s, r)| s / r.len() as f64)
                .collect();
            let pick = first_max(&means);
            Outcome {
                scores: means,
                pick,
                correct: pick == p.answer,
                norm_correct: None,
                loglik: None,
            }
        }
        TaskFormat::Winogrande => {
            // f32 sums and means, as llama-perplexity keeps them; a tie goes to the second.
            let mean = |k: usize| {
                let r = p.choices[k].clone();
                // An empty choice scores 0, as llama-perplexity's 0 / count does.
                scored[r.clone()].iter().map(|s| s.log_p).sum::<f32>() / r.len().max(1) as f32
            };
            let means = [mean(0), mean(1)];
            let pick = if means[0] > means[1] { 0 } else { 1 };
            Outcome {
                scores: means.iter().map(|&m| m as f64).collect(),
                pick,
                correct: pick == p.answer,
                norm_correct: None,
                loglik: None,
            }
        }
        TaskFormat::McJsonl => {
            let pick = first_max(&sums);
            let normed: Vec<f64> = sums
                .iter()
                .zip(&p.choice_bytes)
                .map(|(s, &b)| s / b.max(1) as f64)
                .collect();
            Outcome {
                scores: sums.clone(),
                pick,
                correct: pick == p.answer,
                norm_correct: Some(first_max(&normed) == p.answer),
                loglik: Some(sums[p.answer]),
            }
        }
        TaskFormat::CompletionJsonl => {
            let greedy = scored.iter().all(|s| s.greedy);
            Outcome {
                scores: sums.clone(),
                pick: usize::from(greedy),
                correct: greedy,
                norm_correct: None,
                loglik: Some(sums[0]),
            }
        }
    }
}

/// Scores `m` on the tasks of `set`.
pub fn evaluate(m: &LoadedModel, set: &TaskSet, show_progress: bool) -> Result<TaskResult> {
    let prepared = prepare::prepare(&set.items, &m.tokenizer)
        .with_context(|| format!("{} with {}'s tokenizer", set.name, m.name))?;
    let n_vocab = m.model.config().n_vocab;
    for (p, item) in prepared.iter().zip(&set.items) {
        if let Some(&bad) = p
            .group
            .seqs
            .iter()
            .flatten()
            .find(|&&t| t as usize >= n_vocab)
        {
            anyhow::bail!(
                "{}: line {}: token id {bad} is outside the model's vocabulary of {n_vocab}",
                set.name,
                item.line()
            );
        }
    }
    let groups: Vec<engine::Group> = prepared.iter().map(|p| p.group.clone()).collect();
    let bar = crate::eval::run::progress_bar(show_progress, &m.name, groups.len(), "tasks");
    let start = Instant::now();
    let scored = engine::score(&m.model, &groups, |done| {
        let secs = start.elapsed().as_secs_f64();
        bar.set_position(done as u64);
        bar.set_message(format!("{:.1} tasks/s", done as f64 / secs));
    })
    .with_context(|| format!("{}: {}", m.path.display(), set.name))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let outcomes: Vec<Outcome> = prepared
        .iter()
        .zip(&scored)
        .map(|(p, s)| outcome(set.format, p, s))
        .collect();
    let n = outcomes.len();
    let frac =
        |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count() as f64 / n as f64;
    let acc = frac(&|o| o.correct);
    let acc_norm =
        (set.format == TaskFormat::McJsonl).then(|| frac(&|o| o.norm_correct == Some(true)));
    let mean_loglik = (set.format == TaskFormat::CompletionJsonl)
        .then(|| outcomes.iter().filter_map(|o| o.loglik).sum::<f64>() / n as f64);
    Ok(TaskResult {
        model: m.model_name.clone(),
        file: m.name.clone(),
        path: m.path.display().to_string(),
        quant: m.quant.clone(),
        file_bytes: m.file_bytes,
        bits_per_weight: m.bits_per_weight,
        n_params: m.n_params,
        task: set.name.clone(),
        task_format: set.format,
        tasks_sha256: set.sha256.clone(),
        tasks: n,
        acc,
        acc_err: std_err(acc, n),
        acc_norm,
        acc_norm_err: acc_norm.map(|a| std_err(a, n)),
        mean_loglik,
        tasks_per_s: n as f64 / seconds,
        seconds,
        acc_delta: None,
        changed_fraction: None,
        notes: m.notes.clone(),
        outcomes,
    })
}
