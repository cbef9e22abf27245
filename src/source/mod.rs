//! Reading inputs: raw f32 matrices now, Hugging Face model folders next.

pub mod raw;
