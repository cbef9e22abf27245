//! Tests whose subject needs an instruction set this CPU lacks say so rather than pass
//! silently: a line on stderr, and one in `target/test-skips.txt`, which `.ci/run` counts and
//! prints after the test summary.

use std::io::Write;

#[doc(hidden)]
pub fn skipped(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-skips.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{test}: {why}");
    }
}
