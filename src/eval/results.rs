//! The results file: one JSON object per line, appended by `eval` and `bench`, read by `plan
//! --results` and by charts. Lines carry what is needed to compare them later: the model, its
//! type and size, the text and settings, the figures, and the machine that measured them.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::bench::BenchResult;
use super::run::EvalResult;
use super::task::TaskResult;

/// One line of the results file, written by `eval` and `bench` and read by `plan --results`:
/// the one type both sides use.
// A run writes a handful of lines: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// Perplexity (and KL divergence) on a text.
    Eval(EvalLine),
    /// Accuracy on a task file.
    Task(TaskLine),
    /// Prompt or generation speed.
    Bench(BenchLine),
}

/// Where and by what a line was measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub threads: usize,
    pub machine: String,
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// quantfit's version.
    pub quantfit: String,
}

impl RunInfo {
    pub fn here(threads: usize) -> RunInfo {
        RunInfo {
            threads,
            machine: machine(),
            time: timestamp(),
            quantfit: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalLine {
    #[serde(flatten)]
    pub result: EvalResult,
    /// The text's file name ("built-in sample" without --text).
    pub text: String,
    /// The baseline's name, when KL divergence was measured against one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(flatten)]
    pub run: RunInfo,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskLine {
    #[serde(flatten)]
    pub result: TaskResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(flatten)]
    pub run: RunInfo,
}

/// The model a bench line measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchLine {
    pub model: String,
    pub file: String,
    pub path: String,
    pub quant: String,
    pub file_bytes: u64,
    pub bits_per_weight: f64,
    pub n_params: u64,
    #[serde(flatten)]
    pub result: BenchResult,
    pub backend: String,
    #[serde(flatten)]
    pub run: RunInfo,
}

/// A short description of this machine: host, CPU model, logical CPUs.
pub fn machine() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if host.is_empty() {
        format!("{cpu}, {cpus} CPUs")
    } else {
        format!("{host}: {cpu}, {cpus} CPUs")
    }
}

/// Seconds since the Unix epoch, for ordering lines.
pub fn timestamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Appends each value as one line, in one write that is undone if it fails part-way (see
/// `output::append`: the results file is checked as an output, never one of `inputs`).
pub fn append(path: &Path, records: &[Record], inputs: &crate::output::Inputs) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    crate::output::append(path, text.as_bytes(), inputs)
}

/// Every line of a results file, blank lines skipped; a line that is not a record is an
/// error naming the file and the line. Returns each record with its line number.
pub fn read(path: &Path) -> Result<Vec<(usize, Record)>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|r| (i + 1, r))
                .with_context(|| format!("{}: line {}: not a results line", path.display(), i + 1))
        })
        .collect()
}
