//! The API's JSON body (`POST /v1/fetches`): any bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    dust_proxies::intake::http::fuzzing::new_fetch(body);
});
