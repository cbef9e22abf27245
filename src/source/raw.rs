//! Raw little-endian f32 files (a matrix, or an importance vector), as the ggml fixtures use.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Read a whole file of little-endian f32 values.
pub fn read_f32_file(path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.len() % 4 != 0 {
        bail!(
            "{}: {} bytes is not a whole number of f32 values (truncated?)",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Read a row-major matrix of `cols` columns.
pub fn read_matrix(path: &Path, cols: usize) -> Result<Vec<f32>> {
    let data = read_f32_file(path)?;
    if cols == 0 || data.is_empty() || data.len() % cols != 0 {
        bail!(
            "{}: {} values do not form rows of {} columns",
            path.display(),
            data.len(),
            cols
        );
    }
    Ok(data)
}
