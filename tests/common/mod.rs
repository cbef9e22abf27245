//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared` beside the checkout, as on developer machines and in CI.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
}

/// The ggml fixture folder: `QUANTFIT_GGML_FIXTURES`, else `../shared/fixtures/ggml-quants`.
pub fn ggml_fixture_dir() -> PathBuf {
    match std::env::var_os("QUANTFIT_GGML_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => shared_dir().join("fixtures").join("ggml-quants"),
    }
}

pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() % 4, 0, "{}", path.display());
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
