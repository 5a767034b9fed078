//! The DATA reader (and the sanitizer behind it): a valid envelope, then
//! any bytes as the message.
#![no_main]
const ENVELOPE: &[u8] =
    b"EHLO fuzz.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n";
libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let mut session = ENVELOPE.to_vec();
    session.extend_from_slice(input);
    let replies = dust_proxies::intake::smtp::fuzzing::session(&session);
    assert!(replies.windows(4).any(|w| w == b"354 "), "DATA was refused");
});
