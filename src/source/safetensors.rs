//! Validating safetensors reader over a memory map. The header is checked completely before
//! any tensor is touched: its length within the file, well-formed JSON, known dtypes, every
//! tensor's offsets inside the data section, sizes equal to dtype x shape, no overlaps.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use crate::quant::fp16::{bf16_bits_to_f32, f16_bits_to_f32};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }
}

/// Dtypes of the format that quantfit does not convert (weights are floating point).
const OTHER_KNOWN_DTYPES: &[&str] = &[
    "BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F64", "F8_E5M2", "F8_E4M3",
    "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64",
];

#[derive(Clone, Debug)]
pub struct StTensor {
    pub name: String,
    pub dtype: Dtype,
    /// Outermost first, as stored (PyTorch order).
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl StTensor {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The header's entries in file order, duplicates kept: serde_json's map would keep only the
/// last of two entries with one name, and a checkpoint like that must be refused, not read.
struct HeaderEntries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for HeaderEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = HeaderEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<HeaderEntries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(HeaderEntries(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

pub struct SafetensorsFile {
    pub path: PathBuf,
    pub tensors: Vec<StTensor>,
    // Declared before `map` so it is dropped (unregistered) before the map goes.
    _watch: Option<crate::output::guard::Watched>,
    map: Mmap,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let p = path.display();
        let file = std::fs::File::open(path).with_context(|| format!("{p}: cannot open"))?;
        // SAFETY: read-only map; the file is not modified while quantfit runs.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{p}: cannot map"))?;
        if map.len() < 8 {
            bail!("{p}: truncated: {} bytes, no header length", map.len());
        }
        let header_len = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
        if header_len > (map.len() - 8) as u64 {
            bail!("{p}: header length {header_len} runs past the end of the file ({} bytes): truncated or not safetensors", map.len());
        }
        let header = &map[8..8 + header_len as usize];
        let obj: HeaderEntries = serde_json::from_slice(header)
            .with_context(|| format!("{p}: header is not valid JSON (an object of tensors)"))?;
        let mut seen = std::collections::HashSet::with_capacity(obj.0.len());
        if let Some((dup, _)) = obj.0.iter().find(|(name, _)| !seen.insert(name.as_str())) {
            bail!("{p}: tensor {dup} appears twice in the header (which one holds the weights is undefined)");
        }
        let data_start = 8 + header_len as usize;
        let data_len = map.len() - data_start;
        let mut tensors = Vec::with_capacity(obj.0.len());
        for (name, entry) in &obj.0 {
            if name == "__metadata__" {
                continue;
            }
            let field = |key: &str| {
                entry
                    .get(key)
                    .with_context(|| format!("{p}: tensor {name}: missing \"{key}\""))
            };
            let dtype_name = field("dtype")?
                .as_str()
                .with_context(|| format!("{p}: tensor {name}: dtype is not a string"))?;
            let dtype = match dtype_name {
                "F32" => Dtype::F32,
                "F16" => Dtype::F16,
                "BF16" => Dtype::BF16,
                other if OTHER_KNOWN_DTYPES.contains(&other) => {
                    bail!("{p}: tensor {name}: unsupported dtype {other} (quantfit converts F32, F16 and BF16 weights)")
                }
                other => bail!("{p}: tensor {name}: unknown dtype {other:?}"),
            };
            let shape: Vec<usize> = field("shape")?
                .as_array()
                .with_context(|| format!("{p}: tensor {name}: shape is not an array"))?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .with_context(|| format!("{p}: tensor {name}: shape holds a non-integer"))?;
            let offsets = field("data_offsets")?
                .as_array()
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
                .with_context(|| format!("{p}: tensor {name}: data_offsets is not [begin, end]"))?;
            let (begin, end) = offsets;
            if begin > end || end > data_len as u64 {
                bail!("{p}: tensor {name}: data_offsets [{begin}, {end}] lie outside the data section ({data_len} bytes): truncated or lying header");
            }
            let expected = shape
                .iter()
                .try_fold(dtype.size(), |a, &d| a.checked_mul(d));
            if expected != Some((end - begin) as usize) {
                bail!(
                    "{p}: tensor {name}: {} bytes stored but dtype {} x shape {:?} needs {}",
                    end - begin,
                    dtype.name(),
                    shape,
                    expected
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "an overflowing size".into())
                );
            }
            if shape.contains(&0) {
                bail!("{p}: tensor {name}: shape {shape:?} holds no elements");
            }
            tensors.push(StTensor {
                name: name.clone(),
                dtype,
                shape,
                start: data_start + begin as usize,
                end: data_start + end as usize,
            });
        }
        let mut by_offset: Vec<&StTensor> = tensors.iter().collect();
        by_offset.sort_by_key(|t| (t.start, t.end));
        for pair in by_offset.windows(2) {
            if pair[1].start < pair[0].end {
                bail!(
                    "{p}: tensors {} and {} overlap in the data section",
                    pair[0].name,
                    pair[1].name
                );
            }
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            tensors,
            _watch: crate::output::guard::watch_mapping(map.as_ptr(), map.len(), path),
            map,
        })
    }

    /// Drop this tensor's pages from the process (they stay in the page cache), so that
    /// resident memory stays at one tensor however large the model. Only a hint.
    pub fn release(&self, t: &StTensor) {
        #[cfg(unix)]
        // SAFETY: the map is read-only and file-backed: dropped pages are read back from the
        // file if touched again, so no data can change under a live reference.
        unsafe {
            let _ = self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                t.start,
                t.end - t.start,
            );
        }
        #[cfg(not(unix))]
        let _ = t;
    }

    pub fn bytes(&self, t: &StTensor) -> &[u8] {
        &self.map[t.start..t.end]
    }

    /// The tensor as f32 (exact for every supported dtype). NaN or infinity is an error.
    pub fn to_f32(&self, t: &StTensor) -> Result<Vec<f32>> {
        let b = self.bytes(t);
        let values: Vec<f32> = match t.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16_bits_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let cols = t.shape.last().copied().unwrap_or(1).max(1);
            bail!(
                "{}: tensor {}: non-finite value {} at row {}, column {}",
                self.path.display(),
                t.name,
                values[i],
                i / cols,
                i % cols
            );
        }
        Ok(values)
    }
}
