//! A pipeline file: parsing and validating any text never panics; an error names a cause.
#![no_main]

use eddy_host::config::PipelineConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = PipelineConfig::parse(text) {
        assert!(!e.to_string().trim().is_empty());
    }
});
