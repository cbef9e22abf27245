//! quantfit: convert Hugging Face models to GGUF at many bit widths, measure their quality and
//! speed, and size them for real hardware.
//!
//! Modules follow the pipeline, data flowing one way: `source` (read inputs) → `quant` (block
//! formats and kernels) → later stages (GGUF, evaluation, planning, charts); `cli` only parses
//! arguments and prints.

pub mod cli;
pub mod output;
pub mod quant;
pub mod source;
