//! The results file: one JSON object per line, appended by `eval` and `bench`, read by `plan
//! --results` and by charts. Lines carry what is needed to compare them later: the model, its
//! type and size, the text and settings, the figures, and the machine that measured them.

use std::path::Path;

use anyhow::Result;
use serde_json::Value as Json;

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
pub fn append(path: &Path, values: &[Json], inputs: &crate::output::Inputs) -> Result<()> {
    let mut text = String::new();
    for v in values {
        text.push_str(&serde_json::to_string(v)?);
        text.push('\n');
    }
    crate::output::append(path, text.as_bytes(), inputs)
}
