//! Accounts made while the mote runs (`dustmote invite`) and what each
//! used per day.
//!
//! Tree `accounts`: keyed digest of the name → sealed record (the caller's
//! bytes, which hold the name; nothing about an account is readable on the
//! disk without the sealing key). Tree `usage`: keyed digest of the name ‖
//! day (u32, days since the epoch, UTC) → [`USAGE_FIELDS`] counters (u64
//! big endian each). Counters only grow, by sled's atomic
//! `update_and_fetch`; a caller that reserves usage before an admission and
//! lets the admission's flush make both durable never under-counts after a
//! crash (it may over-count an admission that was refused or lost).

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};

use crate::{db_err, Result, Store};

/// Counters per account and day.
pub const USAGE_FIELDS: usize = 4;

/// One day's counters: mail messages, mail bytes, downloads, download bytes.
pub type Usage = [u64; USAGE_FIELDS];

/// The trees and the key of their digests.
pub(crate) struct AccountTrees {
    accounts: sled::Tree,
    usage: sled::Tree,
    key: [u8; 32],
    /// Held around a usage update and its journal op, so that the journal
    /// has a day's values in the order sled took them.
    usage_order: parking_lot::Mutex<()>,
}

impl AccountTrees {
    pub(crate) fn open(db: &sled::Db, key: &crate::SealKey) -> Result<Self> {
        Ok(Self {
            accounts: db
                .open_tree("accounts")
                .map_err(db_err("opening tree accounts"))?,
            usage: db
                .open_tree("usage")
                .map_err(db_err("opening tree usage"))?,
            key: key.derive(b"dustmote account names"),
            usage_order: parking_lot::Mutex::new(()),
        })
    }

    /// Usage counters from the intake journal, at open.
    pub(crate) fn restore_usage(&self, key: &[u8; 36], value: &[u8; 32]) -> Result<()> {
        self.usage
            .insert(key, &value[..])
            .map_err(db_err("replaying usage"))?;
        Ok(())
    }

    fn keyed(&self, name: &str) -> [u8; 32] {
        Blake2b::<U32>::new()
            .chain_update(self.key)
            .chain_update(name.as_bytes())
            .finalize()
            .into()
    }

    fn usage_key(&self, name: &str, day: u32) -> [u8; 36] {
        let mut k = [0u8; 36];
        k[..32].copy_from_slice(&self.keyed(name));
        k[32..].copy_from_slice(&day.to_be_bytes());
        k
    }
}

fn decode_usage(v: Option<&[u8]>) -> Usage {
    let mut u = [0u64; USAGE_FIELDS];
    if let Some(v) = v {
        for (i, c) in v.chunks_exact(8).take(USAGE_FIELDS).enumerate() {
            u[i] = u64::from_be_bytes(c.try_into().unwrap_or([0; 8]));
        }
    }
    u
}

fn encode_usage(u: &Usage) -> Vec<u8> {
    u.iter().flat_map(|c| c.to_be_bytes()).collect()
}

const AAD: &[u8] = b"account";

impl Store {
    /// Write (or replace) the record of account `name`. Not synced: call
    /// [`sync`](Self::sync) before telling anyone it exists.
    pub fn put_account(&self, name: &str, record: &[u8]) -> Result<()> {
        let t = &self.accounts;
        t.accounts
            .insert(t.keyed(name), self.sealer.seal(AAD, record))
            .map_err(db_err("writing an account"))?;
        self.flusher.mark_dirty();
        Ok(())
    }

    /// Remove account `name` and its usage; whether it existed. Not synced.
    pub fn remove_account(&self, name: &str) -> Result<bool> {
        let t = &self.accounts;
        let key = t.keyed(name);
        let old = t
            .accounts
            .remove(key)
            .map_err(db_err("removing an account"))?;
        for k in t.usage.scan_prefix(key).keys() {
            let k = k.map_err(db_err("scanning usage"))?;
            t.usage.remove(k).map_err(db_err("removing usage"))?;
        }
        self.flusher.mark_dirty();
        Ok(old.is_some())
    }

    /// Every account's record.
    pub fn accounts(&self) -> Result<Vec<Vec<u8>>> {
        self.accounts
            .accounts
            .iter()
            .values()
            .map(|v| {
                let v = v.map_err(db_err("scanning accounts"))?;
                self.sealer.open(AAD, &v, "opening an account")
            })
            .collect()
    }

    /// `name`'s counters on `day`.
    pub fn usage(&self, name: &str, day: u32) -> Result<Usage> {
        let t = &self.accounts;
        let v = t
            .usage
            .get(t.usage_key(name, day))
            .map_err(db_err("reading usage"))?;
        Ok(decode_usage(v.as_deref()))
    }

    /// Add `delta` to `name`'s counters on `day` if the sums stay within
    /// `limits` (per counter; `u64::MAX` for none): the new counters, or
    /// `Err(counters now)` (nothing added) when one would pass its limit.
    /// Atomic against concurrent callers. Not synced: the admission it
    /// precedes makes it durable with its own wait (the new counters are
    /// an op in the intake journal).
    pub fn add_usage(
        &self,
        name: &str,
        day: u32,
        delta: Usage,
        limits: Usage,
    ) -> Result<std::result::Result<Usage, Usage>> {
        let t = &self.accounts;
        let key = t.usage_key(name, day);
        let _order = t.usage_order.lock();
        let mut refused = None;
        let new = t
            .usage
            .update_and_fetch(key, |old| {
                let now = decode_usage(old);
                let mut sum = now;
                for i in 0..USAGE_FIELDS {
                    sum[i] = now[i].saturating_add(delta[i]);
                    if delta[i] > 0 && sum[i] > limits[i] {
                        refused = Some(now);
                        return old.map(<[u8]>::to_vec);
                    }
                }
                refused = None;
                Some(encode_usage(&sum))
            })
            .map_err(db_err("adding usage"))?;
        Ok(match refused {
            Some(now) => Err(now),
            None => {
                let counters = decode_usage(new.as_deref());
                self.journal_usage(&key, &counters);
                Ok(counters)
            }
        })
    }

    /// Take `delta` back from `name`'s counters on `day` (an admission that
    /// failed after its usage was added). Not synced.
    pub fn refund_usage(&self, name: &str, day: u32, delta: Usage) -> Result<()> {
        let t = &self.accounts;
        let key = t.usage_key(name, day);
        let _order = t.usage_order.lock();
        let new = t
            .usage
            .update_and_fetch(key, |old| {
                let mut u = decode_usage(old);
                for i in 0..USAGE_FIELDS {
                    u[i] = u[i].saturating_sub(delta[i]);
                }
                Some(encode_usage(&u))
            })
            .map_err(db_err("refunding usage"))?;
        self.journal_usage(&key, &decode_usage(new.as_deref()));
        Ok(())
    }

    /// The journal op of a usage update (under `usage_order`).
    fn journal_usage(&self, key: &[u8; 36], counters: &Usage) {
        let mut value = [0u8; 32];
        for (i, c) in counters.iter().enumerate() {
            value[i * 8..i * 8 + 8].copy_from_slice(&c.to_be_bytes());
        }
        self.flusher
            .append(|ops| crate::journal::usage(ops, key, &value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_sealed_and_usage_is_bounded() {
        let s = Store::temporary().expect("store");
        s.put_account("ann", b"{\"name\":\"ann\"}").expect("put");
        s.put_account("bob", b"{\"name\":\"bob\"}").expect("put");
        let mut all = s.accounts().expect("list");
        all.sort();
        assert_eq!(
            all,
            vec![
                b"{\"name\":\"ann\"}".to_vec(),
                b"{\"name\":\"bob\"}".to_vec()
            ]
        );
        let lim = [3, 100, u64::MAX, u64::MAX];
        assert_eq!(
            s.add_usage("ann", 7, [1, 40, 0, 0], lim).expect("add"),
            Ok([1, 40, 0, 0])
        );
        assert_eq!(
            s.add_usage("ann", 7, [1, 40, 0, 0], lim).expect("add"),
            Ok([2, 80, 0, 0])
        );
        // Bytes would pass 100: refused, nothing added.
        assert_eq!(
            s.add_usage("ann", 7, [1, 40, 0, 0], lim).expect("add"),
            Err([2, 80, 0, 0])
        );
        assert_eq!(s.usage("ann", 7).expect("usage"), [2, 80, 0, 0]);
        assert_eq!(s.usage("ann", 8).expect("usage"), [0; 4], "a new day");
        assert_eq!(s.usage("bob", 7).expect("usage"), [0; 4]);
        s.refund_usage("ann", 7, [1, 40, 0, 0]).expect("refund");
        assert_eq!(s.usage("ann", 7).expect("usage"), [1, 40, 0, 0]);
        assert!(s.remove_account("ann").expect("remove"));
        assert!(!s.remove_account("ann").expect("remove"));
        assert_eq!(s.usage("ann", 7).expect("usage"), [0; 4]);
        assert_eq!(s.accounts().expect("list").len(), 1);
    }
}
