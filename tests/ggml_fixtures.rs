//! Exactness against ggml's own quantizer: every output listed in a fixture manifest must come
//! out byte for byte, on every instruction set this machine has. The folders are
//! `QUANTFIT_GGML_FIXTURES` (default `../shared/fixtures/ggml-quants`) and the repository's own
//! `tests/fixtures/ggml-extra`; nothing here knows the individual cases.

mod common;

use std::path::Path;

use quantfit::quant::{dequantize, quantize_with, GgmlType, Isa, QuantizeOptions};
use serde::Deserialize;

#[derive(Deserialize)]
struct Manifest {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    rows: usize,
    cols: usize,
    outputs: Vec<Output>,
}

#[derive(Deserialize)]
struct Output {
    #[serde(rename = "type")]
    ty: String,
    imatrix: bool,
    file: String,
    bytes: usize,
}

fn load_manifest(dir: &Path) -> Manifest {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (set QUANTFIT_GGML_FIXTURES to the fixture folder)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Loaded {
    case: String,
    cols: usize,
    ty: GgmlType,
    input: Vec<f32>,
    imatrix: Option<Vec<f32>>,
    expected: Vec<u8>,
    label: String,
}

fn load_all() -> Vec<Loaded> {
    let own =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ggml-extra");
    let mut all = Vec::new();
    for dir in [common::ggml_fixture_dir(), own] {
        load_dir(&dir, &mut all);
    }
    all
}

fn load_dir(dir: &Path, all: &mut Vec<Loaded>) {
    let manifest = load_manifest(dir);
    assert!(!manifest.cases.is_empty(), "no cases in {}", dir.display());
    for case in &manifest.cases {
        let input = common::read_f32(&dir.join("inputs").join(format!("{}.f32", case.name)));
        assert_eq!(
            input.len(),
            case.rows * case.cols,
            "{}: input size",
            case.name
        );
        for out in &case.outputs {
            let ty = GgmlType::from_name(&out.ty)
                .unwrap_or_else(|| panic!("{}: unknown type {}", case.name, out.ty));
            let imatrix = out
                .imatrix
                .then(|| common::read_f32(&dir.join("imatrix").join(format!("{}.f32", case.name))));
            let expected = std::fs::read(dir.join(&out.file)).unwrap();
            assert_eq!(expected.len(), out.bytes, "{}", out.file);
            all.push(Loaded {
                case: case.name.clone(),
                cols: case.cols,
                ty,
                input: input.clone(),
                imatrix,
                expected,
                label: format!(
                    "{} {}{}",
                    case.name,
                    out.ty,
                    if out.imatrix { " (imatrix)" } else { "" }
                ),
            });
        }
    }
}

/// Describe the first difference by row and block so a failure says where to look.
fn first_difference(ty: GgmlType, cols: usize, got: &[u8], want: &[u8]) -> String {
    let info = ty.info();
    let row_bytes = info.row_bytes(cols);
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => {
            let differing = got.iter().zip(want).filter(|(a, b)| a != b).count();
            format!(
                "first differing byte {i} (row {}, block {}, byte {} of block); {differing} bytes differ",
                i / row_bytes,
                (i % row_bytes) / info.block_bytes,
                (i % row_bytes) % info.block_bytes
            )
        }
        None => format!("lengths differ: {} vs {}", got.len(), want.len()),
    }
}

#[test]
fn quantize_matches_ggml_bytes_on_every_isa() {
    common::report_missing_isas("ggml_fixtures::quantize_matches_ggml_bytes_on_every_isa");
    let mut failures = Vec::new();
    let mut checked = 0;
    for f in load_all() {
        for isa in Isa::available() {
            for parallel in [false, true] {
                let got = quantize_with(
                    f.ty,
                    &f.input,
                    f.cols,
                    f.imatrix.as_deref(),
                    QuantizeOptions { isa, parallel },
                )
                .unwrap_or_else(|e| panic!("{}: {e}", f.label));
                checked += 1;
                if got != f.expected {
                    failures.push(format!(
                        "{} [{} {}]: {}",
                        f.label,
                        isa.name(),
                        if parallel { "parallel" } else { "serial" },
                        first_difference(f.ty, f.cols, &got, &f.expected)
                    ));
                }
            }
        }
    }
    assert!(checked > 0);
    assert!(
        failures.is_empty(),
        "{} of {checked} outputs differ from ggml:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Dequantization from the formats' definitions, written independently of the library: every
/// element is decoded by its index from the documented bit layout.
fn reference_dequantize(ty: GgmlType, blk: &[u8], i: usize) -> f32 {
    let half = |at: usize| f16_to_f32(u16::from_le_bytes([blk[at], blk[at + 1]]));
    let nib = |at: usize, j: usize| {
        if j < 16 {
            blk[at + j] & 15
        } else {
            blk[at + j - 16] >> 4
        }
    };
    let bit5 = |at: usize, j: usize| {
        (u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]) >> j) & 1
    };
    let iq4 = [
        -127i8, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
    ];
    // Two-bit field of element i in a 256 super-block packed as 2 x (32 bytes, 4 shifts).
    let crumb =
        |at: usize, i: usize| (blk[at + 32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3;
    let k4 = |j: usize, sc: &[u8]| -> (f32, f32) {
        let (s, m) = if j < 4 {
            (sc[j] & 63, sc[j + 4] & 63)
        } else {
            (
                (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4),
                (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4),
            )
        };
        (s as f32, m as f32)
    };
    match ty {
        GgmlType::Q4_0 => half(0) * (nib(2, i) as f32 - 8.0),
        GgmlType::Q4_1 => half(0) * nib(4, i) as f32 + half(2),
        GgmlType::Q5_0 => half(0) * ((nib(6, i) as u32 | bit5(2, i) << 4) as f32 - 16.0),
        GgmlType::Q5_1 => half(0) * (nib(8, i) as u32 | bit5(4, i) << 4) as f32 + half(2),
        GgmlType::Q8_0 => half(0) * blk[2 + i] as i8 as f32,
        GgmlType::IQ4_NL => half(0) * iq4[nib(2, i) as usize] as f32,
        GgmlType::Q2_K => {
            let sc = blk[i / 16];
            half(80) * (sc & 15) as f32 * crumb(16, i) as f32 - half(82) * (sc >> 4) as f32
        }
        GgmlType::Q3_K => {
            let j = i / 16;
            let low = if j < 8 {
                blk[96 + j] & 15
            } else {
                blk[96 + j - 8] >> 4
            };
            let sc = (low | ((blk[104 + j % 4] >> (2 * (j / 4))) & 3) << 4) as f32 - 32.0;
            let hbit = (blk[i % 32] >> (i / 32)) & 1;
            half(108) * sc * (crumb(32, i) as f32 - if hbit == 1 { 0.0 } else { 4.0 })
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (s, m) = k4(i / 32, &blk[4..16]);
            let (qs_at, high) = if ty == GgmlType::Q4_K {
                (16, 0)
            } else {
                (48, ((blk[16 + i % 32] >> (i / 32)) & 1) << 4)
            };
            let b = blk[qs_at + 32 * (i / 64) + i % 32];
            let q = if (i / 32).is_multiple_of(2) {
                b & 15
            } else {
                b >> 4
            } | high;
            half(0) * s * q as f32 - half(2) * m
        }
        GgmlType::Q6_K => {
            let (h, r) = (i / 128, i % 128);
            let ql = blk[64 * h + r % 64];
            let low = if r < 64 { ql & 15 } else { ql >> 4 };
            let hi = (blk[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
            let q = (low | hi << 4) as f32 - 32.0;
            half(208) * blk[192 + i / 16] as i8 as f32 * q
        }
        GgmlType::IQ4_XS => {
            let ib = i / 32;
            let low = (blk[4 + ib / 2] >> (4 * (ib % 2))) & 15;
            let hi = (u16::from_le_bytes([blk[2], blk[3]]) >> (2 * ib)) & 3;
            let dl = half(0) * ((low as u16 | hi << 4) as f32 - 32.0);
            dl * iq4[nib(8 + 16 * ib, i % 32) as usize] as f32
        }
        other => panic!("no reference dequantizer for {other}"),
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 31) as i32;
    let mant = (h & 1023) as f32;
    match exp {
        0 => sign * mant * 2f32.powi(-24),
        31 => {
            if mant == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        _ => sign * (1.0 + mant / 1024.0) * 2f32.powi(exp - 15),
    }
}

#[test]
fn dequantize_matches_reference_from_format_definition() {
    let mut checked = 0usize;
    for f in load_all() {
        let got = dequantize(f.ty, &f.expected, f.cols).unwrap();
        let info = f.ty.info();
        for (b, blk) in f.expected.chunks_exact(info.block_bytes).enumerate() {
            for i in 0..info.block_elems {
                let want = reference_dequantize(f.ty, blk, i);
                let have = got[b * info.block_elems + i];
                if want == have || (want.is_nan() && have.is_nan()) {
                    checked += 1;
                    continue; // also covers scales that overflowed f16 to infinity
                }
                // The reference multiplies in another order: allow f32 rounding only.
                let tol = want.abs().max(have.abs()) * 4.0 * f32::EPSILON + f32::MIN_POSITIVE;
                assert!(
                    (want - have).abs() <= tol,
                    "{}: block {b} element {i}: library {have} vs reference {want}",
                    f.label
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100_000, "only {checked} values checked");
}

#[test]
fn legacy_formats_round_trip_on_their_own_grid() {
    let mut checked = 0;
    for f in load_all() {
        if f.imatrix.is_some()
            || !matches!(
                f.ty,
                GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1
            )
            || !f.case.starts_with("real_")
        {
            continue;
        }
        let restored = dequantize(f.ty, &f.expected, f.cols).unwrap();
        for isa in Isa::available() {
            let again = quantize_with(
                f.ty,
                &restored,
                f.cols,
                None,
                QuantizeOptions {
                    isa,
                    parallel: true,
                },
            )
            .unwrap();
            assert!(
                again == f.expected,
                "{}: re-quantizing its own dequantized values moved them: {}",
                f.label,
                first_difference(f.ty, f.cols, &again, &f.expected)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "round trip checked on {checked} fixtures only"
    );
}
