//! GGUF reader over a memory map. Every count, length and offset is checked against the file
//! before use, so a truncated or lying file gives an error naming the problem, not a panic.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use super::{align_up, Value, DEFAULT_ALIGNMENT, MAGIC};
use crate::quant::table::ggml_type_size;
use crate::quant::GgmlType;

/// The most elements quantfit reads in one metadata array (2^24: vocabularies are at most
/// a few hundred thousand tokens).
const MAX_ARRAY: u64 = 1 << 24;

/// The most entries reserved ahead of reading them; past it, vectors grow as entries are read.
const GROW_FROM: usize = 1 << 16;

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Innermost first (ggml's `ne`).
    pub dims: Vec<u64>,
    pub type_id: u32,
    /// ggml's name for the type (every tensor's type is one ggml defines).
    pub type_name: &'static str,
    /// Known to quantfit (None for ggml types it does not handle).
    pub ty: Option<GgmlType>,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    pub bytes: u64,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub data_start: u64,
    // Declared before `map` so it is dropped (unregistered) before the map goes.
    _watch: Option<crate::output::guard::Watched>,
    map: Mmap,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|&e| e <= self.buf.len() as u64);
        let Some(end) = end else {
            bail!(
                "{}: truncated: {what} at byte {} needs {n} bytes, file has {}",
                self.path.display(),
                self.pos,
                self.buf.len()
            );
        };
        let s = &self.buf[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .with_context(|| format!("{}: {what} is not UTF-8", self.path.display()))
    }
    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.take(1, what)?[0]),
            1 => Value::I8(self.take(1, what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2, what)?.try_into()?)),
            3 => Value::I16(i16::from_le_bytes(self.take(2, what)?.try_into()?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => Value::Bool(self.take(1, what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 if depth == 0 => {
                let elem = self.u32(what)?;
                let count = self.u64(what)?;
                // Each element takes at least one byte: a count beyond the file is a lie. The
                // largest real arrays (a vocabulary's tokens and merges) stay far below the cap.
                if count > (self.buf.len() - self.pos) as u64 {
                    bail!(
                        "{}: {what}: array of {count} elements cannot fit in the file",
                        self.path.display()
                    );
                }
                if count > MAX_ARRAY {
                    bail!(
                        "{}: {what}: array of {count} elements; quantfit reads at most {MAX_ARRAY}",
                        self.path.display()
                    );
                }
                // Grown as elements are read, so memory follows what the file really holds.
                let mut items = Vec::with_capacity((count as usize).min(GROW_FROM));
                for _ in 0..count {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(items)
            }
            9 => bail!(
                "{}: {what}: an array of arrays (quantfit reads arrays of scalars and strings)",
                self.path.display()
            ),
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            other => bail!(
                "{}: {what}: unknown value type {other}",
                self.path.display()
            ),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: read-only map; quantfit does not modify files it reads.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("{}: cannot map", path.display()))?;
        let mut c = Cursor {
            buf: &map,
            pos: 0,
            path,
        };
        if c.take(4, "magic")? != MAGIC {
            bail!("{}: not a GGUF file (bad magic)", path.display());
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            bail!("{}: unsupported GGUF version {version}", path.display());
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // The smallest entries: a metadata key of one byte with a one-byte value (13 bytes), a
        // tensor with an empty name and one dimension (32 bytes).
        let left = (map.len() - c.pos) as u64;
        if n_kv > left / 13 || n_tensors > left / 32 {
            bail!("{}: header claims {n_tensors} tensors and {n_kv} metadata entries: more than the file holds", path.display());
        }
        // Entries are larger in memory than their 13 bytes on disk: reserve a little and grow
        // with what is really read.
        let kv_room = (n_kv as usize).min(GROW_FROM);
        let mut metadata: Vec<(String, Value)> = Vec::with_capacity(kv_room);
        let mut keys = std::collections::HashSet::with_capacity(kv_room);
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            if !keys.insert(key.clone()) {
                bail!("{}: metadata key {key} appears twice", path.display());
            }
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            metadata.push((key, value));
        }
        let alignment = metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            bail!(
                "{}: general.alignment {alignment} is not a power of two",
                path.display()
            );
        }
        let tensor_room = (n_tensors as usize).min(GROW_FROM);
        let mut raw = Vec::with_capacity(tensor_room);
        let mut names = std::collections::HashSet::with_capacity(tensor_room);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor {i} name"))?;
            if !names.insert(name.clone()) {
                bail!("{}: tensor {name} appears twice", path.display());
            }
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                bail!("{}: tensor {name} has {n_dims} dimensions", path.display());
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&name))
                .collect::<Result<Vec<_>>>()?;
            let type_id = c.u32(&name)?;
            let offset = c.u64(&name)?;
            raw.push((name, dims, type_id, offset));
        }
        let data_start = align_up(c.pos as u64, alignment);
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, type_id, offset) in raw {
            let Some((type_name, block_elems, block_bytes)) = ggml_type_size(type_id) else {
                bail!(
                    "{}: tensor {name}: type id {type_id} is not a ggml tensor type",
                    path.display()
                );
            };
            let Some(elements) = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)) else {
                bail!(
                    "{}: tensor {name}: dimensions {dims:?} overflow",
                    path.display()
                );
            };
            if elements == 0 {
                bail!(
                    "{}: tensor {name}: dimensions {dims:?} hold no elements",
                    path.display()
                );
            }
            if dims[0] % block_elems as u64 != 0 {
                bail!(
                    "{}: tensor {name}: rows of {} are not whole {type_name} blocks",
                    path.display(),
                    dims[0]
                );
            }
            if offset % alignment != 0 {
                bail!(
                    "{}: tensor {name}: data offset {offset} is not a multiple of the alignment {alignment}",
                    path.display()
                );
            }
            let Some(bytes) = (elements / block_elems as u64).checked_mul(block_bytes as u64)
            else {
                bail!("{}: tensor {name}: size overflows", path.display());
            };
            let start = data_start.checked_add(offset);
            match start.and_then(|s| s.checked_add(bytes)) {
                Some(end) if end <= map.len() as u64 => {}
                _ => bail!(
                    "{}: tensor {name}: data at offset {offset} ({bytes} bytes) lies beyond the end of the file ({} bytes): truncated?",
                    path.display(),
                    map.len()
                ),
            }
            tensors.push(TensorInfo {
                name,
                dims,
                type_id,
                type_name,
                ty: GgmlType::from_id(type_id),
                offset: data_start + offset,
                bytes,
            });
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| (t.offset, t.bytes));
        if let Some(w) = by_offset
            .windows(2)
            .find(|w| w[1].offset < w[0].offset + w[0].bytes)
        {
            bail!(
                "{}: tensors {} and {} share bytes of the data section",
                path.display(),
                w[0].name,
                w[1].name
            );
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            _watch: crate::output::guard::watch_mapping(map.as_ptr(), map.len(), path),
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor (bounds checked at open).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.offset as usize..(t.offset + t.bytes) as usize]
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }
}
