//! Sealing at rest: everything a user gave the mote is encrypted before it
//! reaches the store's disk, so that whoever can read the disk (the cloud
//! provider, a snapshot) learns only sizes and times.
//!
//! - AEAD: AES-256-GCM from `ring` (its assembly runs at ~7 GB/s on this
//!   machine's AES-NI, against ~1.2 GB/s for RustCrypto's XChaCha20-Poly1305,
//!   which held downloads to 0.6 of curl's speed). A fresh random 96-bit
//!   nonce per sealing: NIST SP 800-38D allows 2^32 random-nonce sealings
//!   per key, and a mote seals a few per item and one per 64 KiB of content
//!   (2^32 blocks would be 256 TiB), with a new key per mote. A sealed value
//!   is `nonce (12) ‖ ciphertext ‖ tag (16)`.
//! - Associated data binds each value to where it belongs (item id, job id,
//!   content offset): a value moved elsewhere on the disk fails to open.
//! - The key ([`SealKey`], 32 bytes) is never written into the store. The
//!   binary keeps it in a tmpfs file (see `dustmote`'s `[storage]
//!   key_file`): it survives a restart of the process, not a reboot.
//! - A check value in the `meta` tree tells a wrong or missing key apart
//!   from corruption: [`StorageError::Key`](crate::StorageError::Key).
//!
//! What stays in the clear: record headers (kind, state, attempt count,
//! release and entry times), key layout (random ids), value and file sizes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use blake2::digest::consts::U32;
use blake2::digest::Mac;
use rand::{RngCore, TryRngCore};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

use crate::{Result, StorageError};

/// Bytes a sealing adds: the nonce and the tag.
pub const OVERHEAD: usize = NONCE + TAG;
const NONCE: usize = NONCE_LEN;
const TAG: usize = 16;

/// Bytes of a key file: the raw key.
pub const KEY_BYTES: usize = 32;

/// The store's sealing key. Zeroed when dropped; never printed.
#[derive(Clone)]
pub struct SealKey(Zeroizing<[u8; KEY_BYTES]>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// A new key from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut k = Zeroizing::new([0u8; KEY_BYTES]);
        rand::rngs::OsRng
            .try_fill_bytes(k.as_mut())
            .expect("the operating system's random number generator works");
        Self(k)
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Read a key file: exactly [`KEY_BYTES`] raw bytes, or 64 hex digits
    /// (an operator may write one with `openssl rand -hex 32`), with an
    /// optional trailing newline. `Ok(None)` if the file does not exist.
    /// Only a private file of this user's is read ([`crate::read_private`]:
    /// no symbolic link, owner the effective user, mode 0600 or 0400).
    pub fn read(path: &Path) -> std::io::Result<Option<Self>> {
        let Some(data) = crate::read_private(path)? else {
            return Ok(None);
        };
        let bad = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "a key file holds {KEY_BYTES} bytes or {} hex digits",
                    2 * KEY_BYTES
                ),
            )
        };
        let mut k = Zeroizing::new([0u8; KEY_BYTES]);
        if data.len() == KEY_BYTES {
            k.copy_from_slice(&data);
            return Ok(Some(Self(k)));
        }
        let text = data.strip_suffix(b"\n").unwrap_or(&data);
        if text.len() != 2 * KEY_BYTES {
            return Err(bad());
        }
        for (i, b) in k.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&text[2 * i..2 * i + 2]).map_err(|_| bad())?;
            *b = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Some(Self(k)))
    }

    /// Write a new key file (mode 0600, refused if the file exists) and
    /// sync it.
    pub fn create(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(self.0.as_ref())?;
        f.sync_all()
    }

    /// A subkey for `purpose` (BLAKE2b-MAC keyed with the sealing key).
    pub(crate) fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        let mut mac = <blake2::Blake2bMac<U32> as Mac>::new_from_slice(self.0.as_ref())
            .expect("BLAKE2b takes a 32-byte key");
        mac.update(purpose);
        mac.finalize().into_bytes().into()
    }
}

/// Seals and opens values under one key.
pub(crate) struct Sealer {
    aead: LessSafeKey,
}

impl Sealer {
    pub(crate) fn new(key: &SealKey) -> Self {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key.0.as_ref()).expect("AES-256-GCM takes a 32-byte key");
        Self {
            aead: LessSafeKey::new(unbound),
        }
    }

    /// Append `nonce ‖ seal(plain) ‖ tag` to `out`.
    pub(crate) fn seal_into(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let mut nonce = [0u8; NONCE];
        rand::rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start + NONCE..],
            )
            .expect("AES-GCM seals anything below 64 GiB");
        out.extend_from_slice(tag.as_ref());
    }

    /// A sealed copy of `plain`.
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        self.seal_into(aad, plain, &mut out);
        out
    }

    /// Open a sealed value in place; returns the plaintext's range in `buf`.
    pub(crate) fn open_in_place<'a>(
        &self,
        aad: &[u8],
        buf: &'a mut [u8],
        doing: &'static str,
    ) -> Result<&'a [u8]> {
        if buf.len() < OVERHEAD {
            return Err(StorageError::Corrupt {
                doing,
                what: format!("sealed value of {} bytes", buf.len()),
            });
        }
        let (nonce, rest) = buf.split_at_mut(NONCE);
        let nonce: [u8; NONCE] = (&*nonce).try_into().expect("split at NONCE");
        self.aead
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), rest)
            .map(|plain| &*plain)
            .map_err(|_| StorageError::Corrupt {
                doing,
                what: "sealed value failed authentication".into(),
            })
    }

    /// Open a sealed value into a new buffer.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8], doing: &'static str) -> Result<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let n = self.open_in_place(aad, &mut buf, doing)?.len();
        buf.copy_within(NONCE..NONCE + n, 0);
        buf.truncate(n);
        Ok(buf)
    }
}

/// The plaintext sealed in the `meta` tree to recognise the key.
const CHECK: &[u8] = b"dustmote sealed store";
/// Associated data of the check value.
const CHECK_AAD: &[u8] = b"seal check";

/// A check value for `meta`.
pub(crate) fn check_value(s: &Sealer) -> Vec<u8> {
    s.seal(CHECK_AAD, CHECK)
}

/// Whether `v` (from `meta`) was made by [`check_value`] under this key.
pub(crate) fn key_matches(s: &Sealer, v: &[u8]) -> bool {
    s.open(CHECK_AAD, v, "checking the sealing key")
        .is_ok_and(|p| p == CHECK)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_place() {
        let k = SealKey::random();
        let s = Sealer::new(&k);
        let sealed = s.seal(b"item 1", b"Subject: secret");
        assert_eq!(sealed.len(), 15 + OVERHEAD);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(s.open(b"item 1", &sealed, "t").unwrap(), b"Subject: secret");
        assert!(
            s.open(b"item 2", &sealed, "t").is_err(),
            "bound to its place"
        );
        let other = Sealer::new(&SealKey::random());
        assert!(
            other.open(b"item 1", &sealed, "t").is_err(),
            "bound to its key"
        );
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(s.open(b"item 1", &flipped, "t").is_err(), "tamper evident");
        assert_ne!(
            s.seal(b"a", b"x"),
            s.seal(b"a", b"x"),
            "fresh nonce each time"
        );
        assert!(key_matches(&s, &check_value(&s)));
        assert!(!key_matches(&other, &check_value(&s)));
    }

    #[test]
    fn key_files_raw_or_hex_and_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        assert!(SealKey::read(&p).unwrap().is_none());
        let k = SealKey::random();
        k.create(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(k.create(&p).is_err(), "never overwrites a key");
        assert_eq!(SealKey::read(&p).unwrap().unwrap().0, k.0);
        let hex: String = k.0.iter().map(|b| format!("{b:02x}")).collect();
        let h = dir.path().join("hex");
        std::fs::write(&h, format!("{hex}\n")).unwrap();
        // Written with the umask's 0644: refused until made private.
        assert!(SealKey::read(&h).is_err());
        std::fs::set_permissions(&h, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(SealKey::read(&h).unwrap().unwrap().0, k.0);
        std::fs::write(&h, "short").unwrap();
        assert!(SealKey::read(&h).is_err());
        assert_ne!(k.derive(b"a"), k.derive(b"b"));
    }
}
