//! The SMTP command parser: any bytes from a client, a whole session.
#![no_main]
libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let replies = dust_proxies::intake::smtp::fuzzing::session(input);
    // A session always greets first.
    assert!(replies.starts_with(b"220 "));
});
