//! Streaming GGUF writer: the header and every tensor descriptor go out first (types and
//! shapes are known before any data), then tensor data is appended as each tensor is
//! quantized. Memory stays at one tensor, whatever the model's size. The file is written under
//! a temporary name and appears under its own only when complete.

use std::io::Write;

use anyhow::{bail, Context, Result};

use super::{align_up, Value, DEFAULT_ALIGNMENT, MAGIC, VERSION};
use crate::output::{AtomicFile, Pending, Target};
use crate::quant::GgmlType;

/// One tensor as the file will describe it. `dims` are innermost first (ggml's `ne`).
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn bytes(&self) -> u64 {
        let info = self.ty.info();
        let row = self.dims[0];
        (row / info.block_elems as u64) * info.block_bytes as u64 * (self.elements() / row.max(1))
    }
}

pub struct GgufWriter {
    file: AtomicFile,
    path: String,
    tensors: Vec<TensorSpec>,
    next: usize,
    /// Bytes of the next tensor written so far (by `write_tensor_part`).
    part_written: u64,
    position: u64,
    data_start: u64,
}

fn write_string(w: &mut impl Write, s: &str) -> std::io::Result<u64> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    Ok(8 + s.len() as u64)
}

fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<u64> {
    Ok(match v {
        Value::U8(x) => w.write_all(&[*x]).map(|_| 1)?,
        Value::I8(x) => w.write_all(&x.to_le_bytes()).map(|_| 1)?,
        Value::U16(x) => w.write_all(&x.to_le_bytes()).map(|_| 2)?,
        Value::I16(x) => w.write_all(&x.to_le_bytes()).map(|_| 2)?,
        Value::U32(x) => w.write_all(&x.to_le_bytes()).map(|_| 4)?,
        Value::I32(x) => w.write_all(&x.to_le_bytes()).map(|_| 4)?,
        Value::F32(x) => w.write_all(&x.to_le_bytes()).map(|_| 4)?,
        Value::Bool(x) => w.write_all(&[*x as u8]).map(|_| 1)?,
        Value::String(s) => write_string(w, s)?,
        Value::U64(x) => w.write_all(&x.to_le_bytes()).map(|_| 8)?,
        Value::I64(x) => w.write_all(&x.to_le_bytes()).map(|_| 8)?,
        Value::F64(x) => w.write_all(&x.to_le_bytes()).map(|_| 8)?,
        Value::Array(items) => {
            let elem = items
                .first()
                .map(|v| v.type_id())
                .unwrap_or(Value::U8(0).type_id());
            if items
                .iter()
                .any(|v| v.type_id() != elem || matches!(v, Value::Array(_)))
            {
                return Err(std::io::Error::other(
                    "GGUF arrays hold one scalar or string type",
                ));
            }
            w.write_all(&elem.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            let mut n = 12;
            for item in items {
                n += write_value(w, item)?;
            }
            n
        }
    })
}

impl GgufWriter {
    /// Write the header, metadata and tensor descriptors.
    pub fn create(
        target: &Target,
        metadata: &[(String, Value)],
        tensors: Vec<TensorSpec>,
    ) -> Result<GgufWriter> {
        let display = target.path().display().to_string();
        let mut file = AtomicFile::create(target)?;
        let mut pos = 0u64;
        let io = |e: std::io::Error| anyhow::anyhow!("{display}: write failed: {e}");
        {
            let w = file.writer();
            w.write_all(MAGIC).map_err(io)?;
            w.write_all(&VERSION.to_le_bytes()).map_err(io)?;
            w.write_all(&(tensors.len() as u64).to_le_bytes())
                .map_err(io)?;
            w.write_all(&(metadata.len() as u64).to_le_bytes())
                .map_err(io)?;
            pos += 24;
            for (key, value) in metadata {
                pos += write_string(w, key).map_err(io)?;
                w.write_all(&value.type_id().to_le_bytes()).map_err(io)?;
                pos += 4 + write_value(w, value).map_err(io)?;
            }
            let mut offset = 0u64;
            for t in &tensors {
                if t.dims.is_empty() || t.dims.len() > 4 {
                    bail!(
                        "{display}: tensor {} has {} dimensions",
                        t.name,
                        t.dims.len()
                    );
                }
                if t.dims[0] % t.ty.info().block_elems as u64 != 0 {
                    bail!(
                        "{display}: tensor {} rows of {} do not fit {} blocks",
                        t.name,
                        t.dims[0],
                        t.ty
                    );
                }
                pos += write_string(w, &t.name).map_err(io)?;
                w.write_all(&(t.dims.len() as u32).to_le_bytes())
                    .map_err(io)?;
                for d in &t.dims {
                    w.write_all(&d.to_le_bytes()).map_err(io)?;
                }
                w.write_all(&t.ty.id().to_le_bytes()).map_err(io)?;
                w.write_all(&offset.to_le_bytes()).map_err(io)?;
                pos += 4 + 8 * t.dims.len() as u64 + 4 + 8;
                offset = align_up(offset + t.bytes(), DEFAULT_ALIGNMENT);
            }
            let data_start = align_up(pos, DEFAULT_ALIGNMENT);
            w.write_all(&vec![0u8; (data_start - pos) as usize])
                .map_err(io)?;
            pos = data_start;
        }
        Ok(GgufWriter {
            file,
            path: display,
            tensors,
            next: 0,
            part_written: 0,
            position: pos,
            data_start: pos,
        })
    }

    /// The next tensor the writer expects.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.next)
    }

    /// Append the data of the next tensor, in descriptor order.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.write_tensor_part(name, data)?;
        if self.part_written != 0 {
            bail!(
                "{}: tensor {name}: {} of its bytes written",
                self.path,
                self.part_written
            );
        }
        Ok(())
    }

    /// Append the next piece of the next tensor's data (a stacked tensor is written one
    /// expert at a time, so that no more than one expert is in memory); the tensor is done
    /// when its pieces add up to its size.
    pub fn write_tensor_part(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(spec) = self.tensors.get(self.next) else {
            bail!("{}: more tensors written than declared", self.path);
        };
        if spec.name != name || self.part_written + data.len() as u64 > spec.bytes() {
            bail!(
                "{}: expected tensor {} ({} bytes, {} written), got {} ({} bytes)",
                self.path,
                spec.name,
                spec.bytes(),
                self.part_written,
                name,
                data.len()
            );
        }
        let total = spec.bytes();
        let path = self.path.clone();
        let w = self.file.writer();
        w.write_all(data)
            .with_context(|| format!("{path}: write failed (disk full?)"))?;
        self.position += data.len() as u64;
        self.part_written += data.len() as u64;
        if self.part_written < total {
            return Ok(());
        }
        let aligned =
            align_up(self.position - self.data_start, DEFAULT_ALIGNMENT) + self.data_start;
        w.write_all(&vec![0u8; (aligned - self.position) as usize])
            .with_context(|| format!("{path}: write failed (disk full?)"))?;
        self.position = aligned;
        self.next += 1;
        self.part_written = 0;
        Ok(())
    }

    pub fn finish(self) -> Result<(Pending, u64)> {
        if self.next != self.tensors.len() {
            bail!(
                "{}: only {} of {} tensors written",
                self.path,
                self.next,
                self.tensors.len()
            );
        }
        let size = self.position;
        Ok((self.file.finish()?, size))
    }
}
