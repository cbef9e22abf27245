//! GGUF files that lie about themselves: duplicate keys and tensors, offsets that overlap or
//! break the alignment, unknown types, metadata that contradicts itself or the tensors. Every
//! command that reads a GGUF (inspect, eval, bench, plan) gives one `error:` line naming the
//! file and the problem, exit 2, and no results line, within 4 GiB of address space and 60 s of
//! CPU time.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use quantfit::gguf::{GgufFile, Value};

fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-bad-gguf")
}

/// A valid two-layer Q8_0 file made by quantfit from the synthetic tiny Llama.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = scratch();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let model = common::write_tiny_llama(&dir.join("tiny"), 2);
        let out = common::convert_types(&model, &["Q8_0"], &dir.join("base"))
            .remove(0)
            .1;
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(40);
        std::fs::write(dir.join("text.txt"), text).unwrap();
        out
    })
}

/// The file's parts, to be edited and written back.
struct Parts {
    counts: Option<(u64, u64)>,
    metadata: Vec<(String, Value)>,
    /// (name, dims, type id, offset relative to the data section)
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    data: Vec<u8>,
}

fn parts() -> Parts {
    let f = GgufFile::open(base()).unwrap();
    let bytes = std::fs::read(base()).unwrap();
    Parts {
        counts: None,
        metadata: f.metadata.clone(),
        tensors: f
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.dims.clone(),
                    t.type_id,
                    t.offset - f.data_start,
                )
            })
            .collect(),
        data: bytes[f.data_start as usize..].to_vec(),
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            out.extend(items.first().map_or(4, Value::type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

impl Parts {
    fn write(&self, name: &str) -> PathBuf {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        let (nt, nkv) = self
            .counts
            .unwrap_or((self.tensors.len() as u64, self.metadata.len() as u64));
        out.extend(nt.to_le_bytes());
        out.extend(nkv.to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut out, k);
            out.extend(v.type_id().to_le_bytes());
            put_value(&mut out, v);
        }
        for (n, dims, ty, off) in &self.tensors {
            put_string(&mut out, n);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(off.to_le_bytes());
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.extend(&self.data);
        let path = scratch().join(format!("{name}.gguf"));
        std::fs::write(&path, out).unwrap();
        path
    }

    fn set(&mut self, key: &str, v: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = v,
            None => self.metadata.push((key.to_string(), v)),
        }
        self
    }

    fn tensor(&mut self, name: &str) -> &mut (String, Vec<u64>, u32, u64) {
        self.tensors.iter_mut().find(|t| t.0 == name).unwrap()
    }

    fn array(&mut self, key: &str) -> &mut Vec<Value> {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, Value::Array(a))) => a,
            _ => panic!("{key} is not an array"),
        }
    }
}

/// Every reading command refuses the file with one line that names it and says `want`.
fn refused_everywhere(path: &Path, want: &str) {
    let results = path.with_extension("jsonl");
    let _ = std::fs::remove_file(&results);
    let text = scratch().join("text.txt");
    let p = path.to_str().unwrap();
    let commands: [Vec<&str>; 4] = [
        vec!["inspect", p],
        vec![
            "eval",
            p,
            "--text",
            text.to_str().unwrap(),
            "--ctx",
            "32",
            "--chunks",
            "1",
            "--results",
            results.to_str().unwrap(),
        ],
        vec![
            "bench",
            p,
            "--pp",
            "4",
            "--tg",
            "2",
            "--reps",
            "1",
            "--no-results",
        ],
        vec!["plan", "--model", p, "--quant", "Q8_0", "--ctx", "256"],
    ];
    for args in commands {
        let run = common::limited_quantfit().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            run.status.code(),
            Some(2),
            "{} {}: {} (a signal: past the memory or CPU limit), stderr {stderr}",
            args[0],
            p,
            run.status
        );
        assert_eq!(lines.len(), 1, "{} {p}: {stderr}", args[0]);
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(p) && lines[0].contains(want),
            "{} {p}: want {want:?} in: {}",
            args[0],
            lines[0]
        );
        assert!(!results.exists(), "{}: a results line was written", args[0]);
    }
}

#[test]
fn the_base_file_is_accepted() {
    let path = parts().write("unchanged");
    let run = common::limited_quantfit()
        .args(["inspect", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("metadata and tensor shapes"));
}

#[test]
fn structure_that_lies() {
    let mut p = parts();
    let name = p.metadata[2].clone();
    p.metadata.push(name);
    refused_everywhere(&p.write("dup_key"), "appears twice");

    let mut p = parts();
    let t = p.tensors[4].clone();
    p.tensors.push(t);
    refused_everywhere(&p.write("dup_tensor"), "appears twice");

    let mut p = parts();
    p.tensor("blk.1.attn_norm.weight").3 += 8;
    refused_everywhere(&p.write("misaligned"), "not a multiple of the alignment 32");

    let mut p = parts();
    let at = p.tensor("blk.0.ffn_norm.weight").3;
    p.tensor("output_norm.weight").3 = at;
    refused_everywhere(&p.write("shared_bytes"), "share bytes");

    let mut p = parts();
    p.tensor("blk.0.ffn_norm.weight").2 = 77;
    refused_everywhere(&p.write("type77"), "type id 77 is not a ggml tensor type");

    // Counts a few hundred bytes of header cannot hold.
    let mut p = parts();
    p.counts = Some((p.tensors.len() as u64, 1 << 33));
    refused_everywhere(&p.write("kv_count"), "more than the file holds");
}

#[test]
fn metadata_that_contradicts_itself() {
    let mut p = parts();
    p.array("tokenizer.ggml.tokens").truncate(40000);
    p.array("tokenizer.ggml.token_type").truncate(40000);
    refused_everywhere(
        &p.write("few_tokens"),
        "tokenizer.ggml.tokens lists 40000 tokens",
    );

    let mut p = parts();
    p.array("tokenizer.ggml.token_type").pop();
    refused_everywhere(
        &p.write("types_short"),
        "tokenizer.ggml.token_type has 49151 entries",
    );

    let mut p = parts();
    p.array("tokenizer.ggml.tokens")[5] = Value::String("a".repeat(10 << 20));
    refused_everywhere(&p.write("token_10mb"), "token 5 is 10485760 bytes long");

    let mut p = parts();
    p.set("tokenizer.ggml.eos_token_id", Value::U32(49152));
    refused_everywhere(
        &p.write("eos_outside"),
        "tokenizer.ggml.eos_token_id is 49152",
    );

    let mut p = parts();
    p.set("llama.context_length", Value::U32(0));
    refused_everywhere(&p.write("ctx0"), "llama.context_length is 0");

    let mut p = parts();
    p.set("llama.rope.dimension_count", Value::U32(8));
    refused_everywhere(&p.write("partial_rope"), "rotates whole heads of 16");

    let mut p = parts();
    p.set("llama.attention.layer_norm_rms_epsilon", Value::F32(0.0));
    refused_everywhere(&p.write("eps0"), "layer_norm_rms_epsilon is 0");

    let mut p = parts();
    p.set("llama.attention.head_count", Value::String("4".into()));
    refused_everywhere(&p.write("heads_text"), "expected an unsigned integer");

    let mut p = parts();
    p.set("llama.attention.head_count_kv", Value::U32(3));
    refused_everywhere(&p.write("kv_heads"), "do not group over 3 KV heads");
}

#[test]
fn tensors_that_contradict_the_metadata() {
    let mut p = parts();
    p.tensor("blk.1.ffn_down.weight").1.reverse();
    refused_everywhere(
        &p.write("down_transposed"),
        "but the metadata imply [128, 64]",
    );

    let mut p = parts();
    p.tensor("blk.0.attn_norm.weight").1 = vec![32];
    refused_everywhere(&p.write("norm_short"), "but the metadata imply [64]");

    let mut p = parts();
    p.tensors.retain(|t| t.0 != "blk.1.attn_v.weight");
    refused_everywhere(&p.write("no_attn_v"), "blk.1.attn_v.weight is missing");
}
