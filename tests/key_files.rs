//! Key files another user could have planted are refused (issue 22,
//! finding 3). The default place of the sealing key may be shared
//! (`/dev/shm` is world-writable): there the mote keeps its keys in a
//! directory of its user's own, and it reads a key file only when it is a
//! private regular file of its user's — not another uid's file, not a
//! 0644 file, not a symbolic link, not in a directory someone else made.
//! With the real binary: each refusal stops the start with a reason, and
//! after each the mote starts again on the same key and queue.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A user that is not the test's (Debian's `nobody`).
const OTHER_UID: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), None).unwrap();
}

/// The start fails, and the log says `why`.
fn refused(mote: &mut Mote, why: &str) {
    mote.spawn_unchecked();
    let status = mote
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("started despite {why}; log:\n{}", mote.log()));
    assert!(!status.success());
    let log = mote.log();
    assert!(log.contains(why), "expected {why:?} in:\n{log}");
    println!(
        "refused: {}",
        log.lines().rev().find(|l| l.contains(why)).unwrap()
    );
}

/// The mote starts and still has the one message queued.
fn starts_with_its_queue(mote: &mut Mote) {
    mote.spawn();
    assert_eq!(mote.queue_counts().map(|c| c.0), Some(1), "{}", mote.log());
    mote.terminate();
}

#[test]
fn planted_key_files_are_refused() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "1h" }"#.into();
    let mut mote = Mote::start(&cfg);
    mote.terminate();
    // Start over as a new mote whose key place is shared like /dev/shm.
    let runtime = mote.runtime.path().to_path_buf();
    std::fs::remove_dir_all(mote.data_dir()).unwrap();
    for e in std::fs::read_dir(&runtime).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    chmod(&runtime, 0o1777);
    mote.spawn();
    submit(mote.port, "bob@example.net", "held an hour");
    mote.terminate();
    // The keys are in a 0700 directory of this user's, nothing at the top.
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let own = runtime.join(format!("dustmote-{uid}"));
    let meta = std::fs::symlink_metadata(&own).unwrap();
    assert!(meta.is_dir() && meta.mode() & 0o777 == 0o700 && meta.uid() == uid);
    let top: Vec<PathBuf> = std::fs::read_dir(&runtime)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(top, std::slice::from_ref(&own));
    let key: PathBuf = std::fs::read_dir(&own)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "key"))
        .expect("the sealing key");
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    starts_with_its_queue(&mut mote);

    // A key others may read.
    chmod(&key, 0o644);
    refused(&mut mote, "mode 0644 lets group or others at it");
    chmod(&key, 0o600);
    starts_with_its_queue(&mut mote);

    // Another user's file.
    chown(&key, OTHER_UID);
    refused(&mut mote, &format!("owned by uid {OTHER_UID}"));
    chown(&key, uid);
    starts_with_its_queue(&mut mote);

    // A symbolic link (to the right key, even).
    let moved = own.join("moved");
    std::fs::rename(&key, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &key).unwrap();
    refused(&mut mote, "it is a symbolic link");
    std::fs::remove_file(&key).unwrap();
    std::fs::rename(&moved, &key).unwrap();
    starts_with_its_queue(&mut mote);

    // The private directory made by someone else before the mote (who
    // then could put any key in it).
    let aside = runtime.join("aside");
    std::fs::rename(&own, &aside).unwrap();
    std::fs::create_dir(&own).unwrap();
    chmod(&own, 0o700);
    chown(&own, OTHER_UID);
    refused(&mut mote, "is not this user's private directory");
    std::fs::remove_dir(&own).unwrap();
    std::os::unix::fs::symlink(&aside, &own).unwrap();
    refused(&mut mote, "a symbolic link");
    std::fs::remove_file(&own).unwrap();
    std::fs::rename(&aside, &own).unwrap();
    starts_with_its_queue(&mut mote);
}
