//! Reading inputs: Hugging Face model folders (config, safetensors weights, tokenizer, model
//! card) and raw f32 matrices.

pub mod arch;
pub mod card;
pub mod hf;
pub mod pretok_hashes;
pub mod raw;
pub mod safetensors;
pub mod synthetic;
pub mod tokenizer;
