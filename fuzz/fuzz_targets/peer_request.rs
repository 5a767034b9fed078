//! The peer endpoint's request: header lines, then a job record or a mail
//! item, taken apart and checked as `POST /v1/peer/items` does.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dust_proxies::intake::http::peer::fuzzing::request(data);
});
