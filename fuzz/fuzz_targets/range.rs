//! Range headers: the first 8 bytes are the representation's length (big
//! endian), the rest the header; every range found lies within the
//! representation (checked inside).
#![no_main]
libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if input.len() < 8 {
        return;
    }
    let (len, header) = input.split_at(8);
    let len = u64::from_be_bytes(len.try_into().expect("8 bytes"));
    if let Ok(header) = std::str::from_utf8(header) {
        dust_proxies::intake::http::fuzzing::parse_ranges(header, len);
    }
});
