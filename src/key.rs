//! Where the store's sealing key lives (see `[storage] key_file`).
//!
//! By default the key is a file in memory: `$RUNTIME_DIRECTORY` (systemd's
//! `RuntimeDirectory=`), else `$XDG_RUNTIME_DIR`, else `/dev/shm`, and that
//! place must be a tmpfs (checked with statfs): the key survives a restart
//! of the process, never a reboot, and never reaches a disk. Its name is
//! derived from the data directory, so two motes on one machine keep two
//! keys. An operator who wants the key on a disk (or from a secret store)
//! names the file in `[storage] key_file`.
//!
//! Nobody else may put a key there: where others can write to that place
//! (`/dev/shm` is world-writable), the files go into a directory of this
//! user's own inside it, `dustmote-<uid>` (mode 0700, made fresh or checked
//! to be ours, private and no symbolic link); and every key file is read
//! only if it is a private regular file of this user's
//! (`dust_storage::read_private`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use blake2::{Blake2b, Digest};
use dust_storage::SealKey;

use crate::config::Storage;

/// Filesystem magic numbers of in-memory filesystems (statfs(2)).
const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// Whether a start may make a new key when there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// `dustmote serve`: make one (for a new store only).
    Create,
    /// Inspection commands: a missing key is an error.
    Refuse,
}

/// The key for the store of `storage.dir`, read or (for a new store) made.
pub fn load(storage: &Storage, missing: Missing) -> anyhow::Result<SealKey> {
    let path = match &storage.key_file {
        Some(p) => p.clone(),
        None => default_path(&storage.dir)?,
    };
    let queue = storage.dir.join("queue");
    if let Some(k) = SealKey::read(&path)
        .with_context(|| format!("reading the sealing key {}", path.display()))?
    {
        return Ok(k);
    }
    if queue.join("db").exists() {
        bail!(
            "the queue in {} is sealed and its key {} is gone (the default key lives in memory and \
             does not survive a reboot; [storage] key_file keeps it elsewhere). The queued items \
             cannot be read without it: move {} away to start an empty mote",
            storage.dir.display(),
            path.display(),
            storage.dir.display()
        );
    }
    if missing == Missing::Refuse {
        bail!("no sealing key at {}", path.display());
    }
    let key = SealKey::random();
    key.create(&path)
        .with_context(|| format!("writing a new sealing key to {}", path.display()))?;
    Ok(key)
}

/// The default key file of the data directory `dir`.
fn default_path(dir: &Path) -> anyhow::Result<PathBuf> {
    runtime_file(dir, "key")
}

/// `dustmote-<hash of dir>.<suffix>` in memory (see the module): where the
/// data directory `dir` keeps a secret that must not reach a disk.
pub fn runtime_file(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        // systemd lists several directories separated by colons.
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
        })
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let fs = rustix::fs::statfs(&base)
        .with_context(|| format!("checking the key directory {}", base.display()))?;
    let kind = fs.f_type as u64;
    if kind != TMPFS_MAGIC && kind != RAMFS_MAGIC {
        bail!(
            "the sealing key's default place {} is not in memory (not a tmpfs), and the key must \
             not reach a disk unless you say so: set [storage] key_file",
            base.display()
        );
    }
    let base = private_dir(base)?;
    // The same data directory gives the same name from any working
    // directory (whether it exists yet or not).
    let absolute = std::path::absolute(dir)
        .with_context(|| format!("locating the data directory {}", dir.display()))?;
    let digest =
        Blake2b::<blake2::digest::consts::U32>::digest(absolute.as_os_str().as_encoded_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(base.join(format!("dustmote-{name}.{suffix}")))
}

/// `base` when only this user can write to it (a systemd
/// `RuntimeDirectory`, `$XDG_RUNTIME_DIR`), else `base/dustmote-<uid>`,
/// made with mode 0700 or checked to be this user's private directory.
fn private_dir(base: PathBuf) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let me = rustix::process::geteuid().as_raw();
    let ours = |m: &std::fs::Metadata| m.uid() == me && m.mode() & 0o022 == 0;
    let meta = std::fs::metadata(&base)
        .with_context(|| format!("checking the key directory {}", base.display()))?;
    if ours(&meta) {
        return Ok(base);
    }
    let dir = base.join(format!("dustmote-{me}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| format!("making the key directory {}", dir.display()))
        }
    }
    // Made by us just now, or found: either way it must be ours alone (not
    // a link or a directory someone made for us to use).
    let m = std::fs::symlink_metadata(&dir)
        .with_context(|| format!("checking the key directory {}", dir.display()))?;
    if !m.is_dir() || m.uid() != me || m.mode() & 0o077 != 0 {
        bail!(
            "the key directory {} is not this user's private directory (owner uid {}, mode {:04o}, \
             {}); remove it, or set RUNTIME_DIRECTORY to a directory only this user can write",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777,
            if m.file_type().is_symlink() { "a symbolic link" } else { "not ours alone" }
        );
    }
    Ok(dir)
}
