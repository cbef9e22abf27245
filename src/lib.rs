//! quantfit: convert Hugging Face models to GGUF at many bit widths, measure their quality and
//! speed, and size them for real hardware.
//!
//! Modules follow the pipeline, data flowing one way: `source` (read inputs) → `quant` (block
//! formats and kernels) → later stages (GGUF, evaluation, planning, charts); `cli` only parses
//! arguments and prints.

// Numeric kernels mirror ggml's C loops index for index; iterator rewrites would obscure
// the correspondence that exactness depends on.
#![allow(clippy::needless_range_loop)]

pub mod chart;
pub mod cli;
pub mod eval;
#[doc(hidden)]
pub mod fuzz;
pub mod gguf;
pub mod output;
pub mod plan;
pub mod quant;
pub mod source;
pub mod testing;
