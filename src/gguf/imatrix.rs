//! Importance matrices in llama.cpp's two formats: the legacy `imatrix.dat` (per tensor: name,
//! call count, sums of squared activations) and the GGUF one (`<tensor>.in_sum2` and
//! `<tensor>.counts`). Both give, per tensor, the mean squared activation of each input column,
//! which is what `llama-quantize --imatrix` passes to the quantizers.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::GgufFile;

#[derive(Clone, Debug, Default)]
pub struct Imatrix {
    /// GGUF tensor name to one weight per input column.
    pub entries: HashMap<String, Vec<f32>>,
    /// The file as given (recorded in the output's metadata, as llama-quantize does).
    pub file: String,
    /// Calibration text(s) named in the file.
    pub datasets: Vec<String>,
    /// Chunks of calibration text evaluated.
    pub chunks: u32,
}

impl Imatrix {
    pub fn load(path: &Path) -> Result<Imatrix> {
        let head = std::fs::read(path)
            .with_context(|| format!("{}: cannot read imatrix", path.display()))?;
        let mut imatrix = if head.starts_with(super::MAGIC) {
            Self::load_gguf(path)?
        } else {
            Self::load_legacy(path, &head)?
        };
        imatrix.file = path.display().to_string();
        for (name, values) in &imatrix.entries {
            if let Some((i, v)) = values
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || **v < 0.0)
            {
                bail!(
                    "{}: entry {name}: importance {v} at column {i} is negative or not finite",
                    path.display()
                );
            }
        }
        Ok(imatrix)
    }

    fn load_legacy(path: &Path, bytes: &[u8]) -> Result<Imatrix> {
        let p = path.display();
        let n_entries = i32::from_le_bytes(
            bytes
                .get(..4)
                .with_context(|| format!("{p}: truncated imatrix"))?
                .try_into()?,
        );
        if n_entries < 0 || n_entries as usize > bytes.len() {
            bail!("{p}: not an imatrix file (entry count {n_entries})");
        }
        let mut c = 4usize;
        let take = |c: &mut usize, n: usize, what: &str| -> Result<&[u8]> {
            let s = bytes
                .get(*c..*c + n)
                .with_context(|| format!("{p}: truncated imatrix ({what})"))?;
            *c += n;
            Ok(s)
        };
        let mut entries = HashMap::new();
        for _ in 0..n_entries {
            let len = i32::from_le_bytes(take(&mut c, 4, "name length")?.try_into()?);
            if len <= 0 || len as usize > bytes.len() {
                bail!("{p}: imatrix entry name length {len} is invalid");
            }
            let name = String::from_utf8(take(&mut c, len as usize, "name")?.to_vec())
                .with_context(|| format!("{p}: entry name is not UTF-8"))?;
            let ncall = i32::from_le_bytes(take(&mut c, 4, "call count")?.try_into()?);
            let nval = i32::from_le_bytes(take(&mut c, 4, "value count")?.try_into()?);
            if nval <= 0 || nval as usize > bytes.len() / 4 {
                bail!("{p}: entry {name}: value count {nval} is invalid");
            }
            let values: Vec<f32> = take(&mut c, 4 * nval as usize, "values")?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .map(|v| if ncall > 0 { v / ncall as f32 } else { v })
                .collect();
            entries.insert(name, values);
        }
        // Optional trailer: the last call count and the dataset name.
        let mut imatrix = Imatrix {
            entries,
            ..Default::default()
        };
        if let Ok(b) = take(&mut c, 4, "chunks") {
            imatrix.chunks = i32::from_le_bytes(b.try_into()?).max(0) as u32;
            if let Ok(b) = take(&mut c, 4, "dataset length") {
                let len = i32::from_le_bytes(b.try_into()?).max(0) as usize;
                if let Ok(name) = take(&mut c, len, "dataset") {
                    imatrix
                        .datasets
                        .push(String::from_utf8_lossy(name).into_owned());
                }
            }
        }
        Ok(imatrix)
    }

    fn load_gguf(path: &Path) -> Result<Imatrix> {
        let file = GgufFile::open(path)?;
        let mut entries = HashMap::new();
        for t in &file.tensors {
            let Some(name) = t.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let counts = file.tensor(&format!("{name}.counts")).with_context(|| {
                format!("{}: {name}.in_sum2 has no {name}.counts", path.display())
            })?;
            if t.type_id != 0 || counts.type_id != 0 {
                bail!("{}: imatrix tensors of {name} are not F32", path.display());
            }
            let sums: Vec<f32> = file
                .tensor_data(t)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let cnt: Vec<f32> = file
                .tensor_data(counts)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let per_row = t.dims[0] as usize;
            if cnt.len() * per_row != sums.len() {
                bail!(
                    "{}: {name}: {} sums do not match {} counts of {per_row} columns",
                    path.display(),
                    sums.len(),
                    cnt.len()
                );
            }
            // As llama-quantize: mean over calls; a matrix never reached during calibration gets 1.
            let values = sums
                .chunks(per_row)
                .zip(&cnt)
                .flat_map(|(s, &n)| s.iter().map(move |&v| if n > 0.0 { v / n } else { 1.0 }))
                .collect();
            entries.insert(name.to_string(), values);
        }
        if entries.is_empty() {
            bail!(
                "{}: GGUF file holds no imatrix data (*.in_sum2 tensors)",
                path.display()
            );
        }
        let datasets = file
            .get("imatrix.datasets")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let chunks = file
            .get("imatrix.chunk_count")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        Ok(Imatrix {
            entries,
            file: String::new(),
            datasets,
            chunks,
        })
    }

    pub fn get(&self, tensor: &str) -> Option<&[f32]> {
        self.entries.get(tensor).map(|v| v.as_slice())
    }
}
