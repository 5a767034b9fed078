//! The cloud launcher (`deploy/launch/launch.py`, Apache Libcloud) against
//! moto's EC2 server on 127.0.0.1: its own unittest suite, run here so that
//! the README's test command covers it. What it checks is in
//! `deploy/launch/test_launch.py`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn the_launcher_spawns_lists_reaps_and_destroys_motes_on_an_ec2_api() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v", "deploy/launch/test_launch.py"])
        .current_dir(root)
        .env("DUSTMOTE_BIN", common::bin())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "{text}");
    // A suite that skipped itself proves nothing.
    assert!(!text.contains("skipped"), "{text}");
    assert!(
        text.contains("Ran 6 tests") && text.trim_end().ends_with("OK"),
        "{text}"
    );
}
