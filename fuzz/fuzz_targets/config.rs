//! The configuration parser (the binary's `src/config`, included as it
//! is): any text gives a configuration or an error naming file and key.
#![no_main]
#![allow(dead_code, missing_docs, unused_imports)]

#[path = "../../src/config/mod.rs"]
mod config;

libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Err(e) = config::parse_at(text, "fuzz.toml", None) {
        assert_eq!(e.file, "fuzz.toml");
        assert!(!e.key.is_empty());
    }
});
