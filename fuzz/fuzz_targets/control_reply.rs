//! The tor control-port client against a port that sends anything:
//! PROTOCOLINFO, AUTHENTICATE (password or SAFECOOKIE), ADD_ONION's reply
//! and an event line.
#![no_main]
libfuzzer_sys::fuzz_target!(|replies: &[u8]| {
    dust_proxies::onion::fuzzing::session(replies);
});
