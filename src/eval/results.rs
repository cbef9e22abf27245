//! The results file: one JSON object per line, appended by `eval` and `bench`, read by `plan
//! --results` and by charts. Lines carry what is needed to compare them later: the model, its
//! type and size, the text and settings, the figures, and the machine that measured them.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
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

/// Appends each value as one line. The lines are written with a single `write_all`, so a
/// failure never leaves half a line behind a complete one of an earlier run.
pub fn append(path: &Path, values: &[Json]) -> Result<()> {
    let mut text = String::new();
    for v in values {
        text.push_str(&serde_json::to_string(v)?);
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open the results file", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.flush())
        .with_context(|| format!("{}: cannot append results", path.display()))
}
