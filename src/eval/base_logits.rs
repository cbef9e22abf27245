//! llama-perplexity's log-probability file (`--kl-divergence-base FILE`, written in perplexity
//! mode, read in `--kl-divergence` mode; tools/perplexity/perplexity.cpp): people make it once
//! for a big unquantized model and score quantized files against it anywhere. Layout, all
//! little-endian:
//! - `_logits_`, then ctx (u32), vocabulary size (i32), chunk count (i32);
//! - the text's tokens, chunks x ctx i32 (as in the text: the BOS put first in each chunk is
//!   not stored);
//! - per chunk, for each of its ctx - 1 - ctx/2 scored positions, one row of
//!   2 * ceil(n_vocab / 2) + 4 u16: the f32 scale and the f32 minimum log-probability, then each
//!   token's log-probability as round((logit - low) / scale), low = max(min logit, max - 16)
//!   (0 for logits at or below low), padded to an even count.
//!
//! Hand-written because the format is llama.cpp's own (no crate reads it). Both ways stream: a
//! chunk at a time, so a 70B model's file of many GB is never held in memory, and nothing is
//! allocated from what the header claims before the file's length confirms it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::perplexity::ChunkPlan;
use super::softmax::max_and_sum_exp;

const MAGIC: &[u8; 8] = b"_logits_";
const HEADER_BYTES: u64 = 20;
/// Bounds on header fields, far beyond any real model or text, so that products cannot overflow
/// and a lying header is named as such.
const MAX_CTX: u64 = 1 << 24;
const MAX_VOCAB: u64 = 1 << 24;

/// u16 slots of one stored row for a vocabulary of `n_vocab`.
pub fn row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// One stored row, decoded: log p(token i) = scale * values[i] + min.
#[derive(Clone, Copy, Debug)]
pub struct BaseRow<'a> {
    pub scale: f32,
    pub min: f32,
    pub values: &'a [u16],
}

impl<'a> BaseRow<'a> {
    pub fn parse(row: &'a [u16], n_vocab: usize) -> BaseRow<'a> {
        let f = |i: usize| f32::from_bits(row[i] as u32 | (row[i + 1] as u32) << 16);
        BaseRow {
            scale: f(0),
            min: f(2),
            values: &row[4..4 + n_vocab],
        }
    }
}

/// llama.cpp's `nearest_int`: round half to even through the f32 mantissa (the row's values
/// are at most 65535, well inside its range); the result is stored as u16 as C stores it.
fn nearest_int(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Encodes one row of raw logits as llama-perplexity does; returns (max logit, sum of
/// e^(logit - max)) for the caller's perplexity.
pub fn encode_row(logits: &[f32], out: &mut [u16]) -> (f32, f64) {
    let (max, sum_exp) = max_and_sum_exp(logits);
    let low = logits
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min)
        .max(max - 16.0);
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = low - max - log_sum_exp;
    let scale = (max - low) / 65535.0;
    let (head, values) = out.split_at_mut(4);
    for (i, bits) in [scale.to_bits(), min_log_prob.to_bits()]
        .into_iter()
        .enumerate()
    {
        head[2 * i] = bits as u16;
        head[2 * i + 1] = (bits >> 16) as u16;
    }
    values.fill(0);
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (v, &l) in values.iter_mut().zip(logits) {
            if l > low {
                *v = nearest_int(inv * (l - low)) as u16;
            }
        }
    }
    (max, sum_exp)
}

/// What the header says: the settings the file was made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub ctx: usize,
    pub n_vocab: usize,
    pub chunks: usize,
}

impl Layout {
    pub fn rows_per_chunk(&self) -> usize {
        self.ctx - 1 - self.ctx / 2
    }

    fn chunk_bytes(&self) -> u64 {
        (self.rows_per_chunk() * row_len(self.n_vocab) * 2) as u64
    }

    fn tokens_bytes(&self) -> u64 {
        (self.chunks * self.ctx * 4) as u64
    }

    /// The exact length of a file with this header, or None past u64.
    fn file_bytes(&self) -> Option<u64> {
        let per_chunk = self.ctx as u128 * 4 + self.chunk_bytes() as u128;
        u64::try_from(HEADER_BYTES as u128 + per_chunk * self.chunks as u128).ok()
    }

    fn header(&self) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&(self.ctx as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(self.n_vocab as i32).to_le_bytes());
        h[16..].copy_from_slice(&(self.chunks as i32).to_le_bytes());
        h
    }
}

/// A log-probability file opened for reading, its header and tokens checked.
pub struct BaseLogits {
    path: PathBuf,
    file: File,
    pub layout: Layout,
    /// chunks x ctx tokens, each below the vocabulary size.
    pub tokens: Vec<u32>,
}

fn parse_header(h: &[u8; 20], shown: &str, len: u64) -> Result<Layout> {
    if &h[..8] != MAGIC {
        bail!(
            "{shown}: not a llama-perplexity log-probability file (it does not start with \
             `_logits_`; make one with `llama-perplexity --kl-divergence-base FILE` or \
             `quantfit eval --save-baseline-logits FILE`)"
        );
    }
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let (ctx, n_vocab, chunks) = (word(8) as u64, word(12) as i32, word(16) as i32);
    if !(4..=MAX_CTX).contains(&ctx) {
        bail!("{shown}: header says ctx {ctx}; expected 4..={MAX_CTX}");
    }
    if n_vocab < 1 || n_vocab as u64 > MAX_VOCAB {
        bail!("{shown}: header says a vocabulary of {n_vocab} tokens; expected 1..={MAX_VOCAB}");
    }
    if chunks < 1 {
        bail!("{shown}: header says {chunks} chunks; expected at least 1");
    }
    let layout = Layout {
        ctx: ctx as usize,
        n_vocab: n_vocab as usize,
        chunks: chunks as usize,
    };
    let want = layout.file_bytes();
    if want != Some(len) {
        let per_chunk = layout.ctx as u64 * 4 + layout.chunk_bytes();
        let held = len.saturating_sub(HEADER_BYTES) / per_chunk;
        let what = if want.is_none_or(|w| w > len) {
            "truncated"
        } else {
            "longer than its header says"
        };
        let want = want.map_or("more than 2^64".to_string(), |w| w.to_string());
        bail!(
            "{shown}: {what}: the header (ctx {ctx}, vocabulary {n_vocab}, {chunks} chunks) \
             implies {want} bytes, the file has {len} (room for {held} chunks)"
        );
    }
    Ok(layout)
}

impl BaseLogits {
    pub fn open(path: &Path) -> Result<BaseLogits> {
        let shown = path.display().to_string();
        let mut file = File::open(path).with_context(|| format!("{shown}: cannot open"))?;
        let len = file
            .metadata()
            .with_context(|| format!("{shown}: cannot read"))?
            .len();
        let mut h = [0u8; 20];
        if len < HEADER_BYTES || file.read_exact(&mut h).is_err() {
            bail!("{shown}: truncated ({len} bytes; the header alone is {HEADER_BYTES})");
        }
        let layout = parse_header(&h, &shown, len)?;
        // The length was just checked against the header: this allocation is the file's.
        let mut bytes = vec![0u8; layout.tokens_bytes() as usize];
        file.read_exact(&mut bytes)
            .with_context(|| format!("{shown}: cannot read its tokens"))?;
        let mut tokens = Vec::with_capacity(bytes.len() / 4);
        for (i, b) in bytes.chunks_exact(4).enumerate() {
            let t = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if t < 0 || t as usize >= layout.n_vocab {
                bail!(
                    "{shown}: token {i} is {t}, outside the file's vocabulary of {}",
                    layout.n_vocab
                );
            }
            tokens.push(t as u32);
        }
        Ok(BaseLogits {
            path: path.to_path_buf(),
            file,
            layout,
            tokens,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The chunks to score: all the file holds, or the first `limit`.
    pub fn plan(&self, limit: Option<usize>) -> Result<ChunkPlan> {
        let chunks = limit.map_or(self.layout.chunks, |l| l.min(self.layout.chunks));
        if chunks == 0 {
            bail!("--chunks 0 leaves nothing to evaluate");
        }
        Ok(ChunkPlan {
            ctx: self.layout.ctx,
            chunks,
            first: self.layout.ctx / 2,
        })
    }

    /// The stored rows of chunk `i` (rows_per_chunk x row_len u16), each row's scale and
    /// minimum checked.
    pub fn read_chunk(&mut self, i: usize) -> Result<Vec<u16>> {
        let l = self.layout;
        let shown = self.path.display();
        let offset = HEADER_BYTES + l.tokens_bytes() + i as u64 * l.chunk_bytes();
        let mut bytes = vec![0u8; l.chunk_bytes() as usize];
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(&mut bytes))
            .with_context(|| format!("{shown}: cannot read chunk {i}"))?;
        let values: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        for (r, row) in values.chunks_exact(row_len(l.n_vocab)).enumerate() {
            let b = BaseRow::parse(row, l.n_vocab);
            if !(b.scale.is_finite() && b.scale >= 0.0 && b.min.is_finite() && b.min <= 0.0) {
                bail!(
                    "{shown}: chunk {i}, row {r}: scale {} and minimum log-probability {} are \
                     not a log-probability row",
                    b.scale,
                    b.min
                );
            }
        }
        Ok(values)
    }
}

/// Writes a log-probability file chunk by chunk.
pub struct BaseLogitsWriter<W: Write> {
    out: W,
    layout: Layout,
    written: usize,
    shown: String,
}

impl<W: Write> BaseLogitsWriter<W> {
    /// Writes the header and the tokens of the chunks `plan` scores.
    pub fn new(
        mut out: W,
        shown: &str,
        plan: ChunkPlan,
        n_vocab: usize,
        tokens: &[u32],
    ) -> Result<Self> {
        let layout = Layout {
            ctx: plan.ctx,
            n_vocab,
            chunks: plan.chunks,
        };
        if plan.first != plan.ctx / 2 || layout.file_bytes().is_none() {
            bail!("{shown}: these settings cannot be stored in llama-perplexity's format");
        }
        let mut bytes = layout.header().to_vec();
        for &t in &tokens[..plan.chunks * plan.ctx] {
            bytes.extend_from_slice(&(t as i32).to_le_bytes());
        }
        out.write_all(&bytes)
            .with_context(|| format!("{shown}: cannot write (disk full?)"))?;
        Ok(BaseLogitsWriter {
            out,
            layout,
            written: 0,
            shown: shown.to_string(),
        })
    }

    /// Encodes and writes the scored rows of the next chunk (rows_per_chunk x n_vocab raw
    /// logits); returns each row's (max logit, sum of exponentials).
    pub fn write_chunk(&mut self, logits: &[f32]) -> Result<Vec<(f32, f64)>> {
        let l = self.layout;
        if self.written == l.chunks || logits.len() != l.rows_per_chunk() * l.n_vocab {
            bail!(
                "{}: chunk {} does not fit the file's layout",
                self.shown,
                self.written
            );
        }
        let width = row_len(l.n_vocab);
        let mut rows = vec![0u16; l.rows_per_chunk() * width];
        let norms: Vec<(f32, f64)> = rows
            .par_chunks_mut(width)
            .zip(logits.par_chunks(l.n_vocab))
            .map(|(out, row)| encode_row(row, out))
            .collect();
        let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.out
            .write_all(&bytes)
            .with_context(|| format!("{}: cannot write (disk full?)", self.shown))?;
        self.written += 1;
        Ok(norms)
    }

    /// The writer back, once every chunk the header announced is written.
    pub fn finish(mut self) -> Result<W> {
        if self.written != self.layout.chunks {
            bail!(
                "{}: {} of {} chunks written",
                self.shown,
                self.written,
                self.layout.chunks
            );
        }
        self.out
            .flush()
            .with_context(|| format!("{}: cannot write (disk full?)", self.shown))?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qf-base-logits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn rows_encode_as_llama_perplexity() {
        // Odd vocabulary: the row is padded to an even count.
        assert_eq!(row_len(49152), 49156);
        assert_eq!(row_len(7), 12);
        let logits = [3.0f32, -20.0, 1.0, 3.0, 2.5, -12.9, 0.0];
        let mut row = vec![7u16; row_len(7)];
        encode_row(&logits, &mut row);
        let b = BaseRow::parse(&row, 7);
        // low = max(-20, 3 - 16) = -13: the range is 16.
        assert_eq!(b.scale, 16.0 / 65535.0);
        let lse = logits
            .iter()
            .map(|&l| ((l - 3.0) as f64).exp())
            .sum::<f64>()
            .ln() as f32;
        assert_eq!(b.min, -13.0 - 3.0 - lse);
        assert_eq!(b.values[0], 65535);
        assert_eq!(b.values[1], 0, "below the floor");
        assert_eq!(b.values[3], 65535);
        assert_eq!(
            b.values[5],
            (0.1f32 * (65535.0 / 16.0)).round_ties_even() as u16
        );
        assert_eq!(row[11], 0, "padding");
        // Decoded, each value is its log-probability to within half a step.
        for (i, &l) in logits.iter().enumerate().filter(|(_, &l)| l > -13.0) {
            let lp = b.scale * b.values[i] as f32 + b.min;
            assert!((lp - (l - 3.0 - lse)).abs() <= b.scale * 0.5 + 1e-6, "{i}");
        }
        // A flat row: scale 0, every value 0.
        let mut row = vec![9u16; row_len(4)];
        encode_row(&[1.0; 4], &mut row);
        assert!(row[4..].iter().all(|&v| v == 0));
        assert_eq!(BaseRow::parse(&row, 4).scale, 0.0);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
    }

    fn write_file(path: &Path, n_vocab: usize, ctx: usize, chunks: usize) -> Vec<Vec<f32>> {
        let plan = ChunkPlan {
            ctx,
            chunks,
            first: ctx / 2,
        };
        let tokens: Vec<u32> = (0..(chunks * ctx + 5) as u32)
            .map(|t| t % n_vocab as u32)
            .collect();
        let f = File::create(path).unwrap();
        let mut w = BaseLogitsWriter::new(f, "test", plan, n_vocab, &tokens).unwrap();
        let mut all = Vec::new();
        for c in 0..chunks {
            let logits: Vec<f32> = (0..plan.scored_per_chunk() * n_vocab)
                .map(|i| ((i * 31 + c * 7) % 23) as f32 * 0.7)
                .collect();
            w.write_chunk(&logits).unwrap();
            all.push(logits);
        }
        assert!(
            w.write_chunk(&all[0]).is_err(),
            "no chunk beyond the header's count"
        );
        w.finish().unwrap();
        all
    }

    #[test]
    fn files_round_trip() {
        let path = temp("round-trip.logits");
        let all = write_file(&path, 11, 16, 3);
        let mut f = BaseLogits::open(&path).unwrap();
        assert_eq!(
            f.layout,
            Layout {
                ctx: 16,
                n_vocab: 11,
                chunks: 3
            }
        );
        assert_eq!(f.tokens.len(), 48, "only the chunks' tokens are stored");
        assert_eq!(f.tokens[13], 2);
        assert_eq!(f.plan(Some(2)).unwrap().chunks, 2);
        for (c, logits) in all.iter().enumerate() {
            let rows = f.read_chunk(c).unwrap();
            for (r, row) in rows.chunks_exact(row_len(11)).enumerate() {
                let mut want = vec![0u16; row_len(11)];
                encode_row(&logits[r * 11..(r + 1) * 11], &mut want);
                assert_eq!(row, &want[..]);
            }
        }
    }

    #[test]
    fn lying_files_are_refused() {
        let path = temp("lying.logits");
        write_file(&path, 11, 16, 3);
        let good = std::fs::read(&path).unwrap();
        let err = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            format!("{:#}", BaseLogits::open(&path).err().expect("refused"))
        };
        assert!(err(&good[..good.len() - 1]).contains("truncated"));
        assert!(err(&good[..10]).contains("truncated"));
        let mut longer = good.clone();
        longer.push(0);
        assert!(err(&longer).contains("longer than its header says"));
        let mut magic = good.clone();
        magic[0] = b'x';
        assert!(err(&magic).contains("not a llama-perplexity log-probability file"));
        // A huge claimed chunk count on a small file: refused before anything is allocated.
        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(err(&huge).contains("truncated"));
        let mut vocab = good.clone();
        vocab[12..16].copy_from_slice(&0i32.to_le_bytes());
        assert!(err(&vocab).contains("vocabulary of 0"));
        let mut token = good.clone();
        token[20..24].copy_from_slice(&11i32.to_le_bytes());
        assert!(err(&token).contains("token 0 is 11"));
        let mut row = good.clone();
        let first_row = 20 + 48 * 4;
        row[first_row..first_row + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&path, &row).unwrap();
        let mut f = BaseLogits::open(&path).unwrap();
        let e = format!("{:#}", f.read_chunk(0).unwrap_err());
        assert!(e.contains("chunk 0, row 0"), "{e}");
    }
}
