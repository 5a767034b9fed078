//! The sanitizer on any message: no panic, and what it produces is a
//! message it accepts again.
#![no_main]
use dust_proxies::item::mail::{sanitize, SanitizeOptions};
use rand::SeedableRng;
libfuzzer_sys::fuzz_target!(|raw: &[u8]| {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    if let Ok(out) = sanitize(raw, SanitizeOptions::default(), &mut rng) {
        assert!(
            sanitize(&out, SanitizeOptions::default(), &mut rng).is_ok(),
            "the sanitizer's own output is refused"
        );
    }
});
