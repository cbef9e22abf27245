#![no_main]

use libfuzzer_sys::fuzz_target;
use quantfit::fuzz::{run, Target};

fuzz_target!(|data: &[u8]| {
    run(Target::Gguf, data);
});
