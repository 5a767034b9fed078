//! The payloads of cover items (`[cover]`): dummy messages to the operator's
//! sink address and dummy downloads of the configured URLs. They take the
//! same path as real items — the sanitizer (fresh Message-ID, Date at send
//! time), the mixer, the same deliverers and transport — so on the wire a
//! dummy looks like a real item. The body of a dummy message is an
//! ASCII-armoured block of random bytes: what an encrypted message looks
//! like, with a size drawn log-uniformly between 1 and 32 KiB.

use std::sync::Arc;

use dust_mixer::{CoverSource, ItemId, ItemKind, Store};
use dust_proxies::item::job::Job;
use dust_proxies::item::mail::{sanitize, SanitizeOptions, StoredMail};
use rand::Rng;

use crate::config::CoverTargets;

/// The source the mixer calls for each cover item.
pub fn source(targets: CoverTargets, store: Arc<Store>, opts: SanitizeOptions) -> CoverSource {
    Arc::new(move || {
        let item = make(&targets, &store, opts);
        Box::pin(async move { item })
    })
}

fn make(
    targets: &CoverTargets,
    store: &Store,
    opts: SanitizeOptions,
) -> Option<(ItemKind, Vec<u8>)> {
    let mut rng = rand::rng();
    let mail = match (&targets.mail, targets.fetch_urls.is_empty()) {
        (Some(_), true) => true,
        (None, false) => false,
        (Some(_), false) => rng.random_bool(0.5),
        (None, true) => return None,
    };
    if mail {
        let (from, to) = targets.mail.clone()?;
        let raw = dummy_message(&from, &to, &mut rng);
        let message = sanitize(&raw, opts, &mut rng).ok()?;
        let payload = StoredMail {
            from,
            rcpts: vec![to],
            message,
            smtputf8: false,
        }
        .encode();
        return Some((ItemKind::Mail, payload));
    }
    let url = targets.fetch_urls[rng.random_range(0..targets.fetch_urls.len())].clone();
    let id = ItemId(rng.random());
    let job = Job::cover(url, std::time::SystemTime::now());
    // Not synced: a dummy lost in a crash costs nothing.
    store.put_job(&id, &job.encode()).ok()?;
    Some((ItemKind::Fetch, id.0.to_vec()))
}

/// A plain message whose body is an armoured block of random bytes.
fn dummy_message<G: Rng + ?Sized>(from: &str, to: &str, rng: &mut G) -> Vec<u8> {
    use base64::Engine;
    let size = (2f64.powf(rng.random_range(10.0..15.0))) as usize;
    let mut bytes = vec![0u8; size];
    rng.fill(&mut bytes[..]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let mut body = String::from("-----BEGIN PGP MESSAGE-----\r\n\r\n");
    for line in b64.as_bytes().chunks(64) {
        body.push_str(std::str::from_utf8(line).unwrap_or_default());
        body.push_str("\r\n");
    }
    body.push_str("-----END PGP MESSAGE-----\r\n");
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: ...\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         Content-Transfer-Encoding: 7bit\r\n\r\n{body}"
    )
    .into_bytes()
}
