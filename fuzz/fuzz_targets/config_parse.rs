//! Config parsing and validation: any text gives a config or a list of problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p13n_edge::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml(text, std::path::Path::new("/nonexistent"));
    }
});
