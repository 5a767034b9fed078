//! A real mote: the reproducible `.deb`, the disk image built from
//! Debian's packages (`deploy/image/build.sh`), the user data from
//! `dustmote cloud-init`, booted in QEMU with a NoCloud seed, 512 MiB of
//! memory and a network that reaches nothing but two ports the test opened:
//!
//!   host 127.0.0.1:SMTP → guest :2525 (hostfwd: the user submits)
//!   host 127.0.0.1:HTTP → guest :8080 (hostfwd: /status)
//!   guest 10.0.2.100:2526 → host 127.0.0.1:SINK (guestfwd via socat: the
//!                            next hop, an aiosmtpd sink)
//!
//! `-netdev user,restrict=on`: no route out, no DNS, nothing else. The test
//! config delivers in `direct` mode to that forwarded port, the only place
//! the guest can reach (the guest's tor relays cannot reach any network).
//!
//! It builds a release binary (~9 min cold on 2 cores) and the image (~1–3
//! min, Debian's mirror), then boots under TCG (KVM does not work on the
//! nested machine the suite runs on; `DUSTMOTE_VM_ACCEL=kvm` uses it where
//! it does). `DUSTMOTE_IMAGE_DIR=DIR` reuses an image built before.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{as_root, bin, free_port, peer, wait_for, Proc, Sink};

/// How long the test mote lives, from the guest's boot.
const LIFETIME_S: u64 = 300;
const DRAIN_MARGIN_S: u64 = 60;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "{what} failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The `.deb` (built reproducibly) and the image built from it, reused
/// while neither the package nor the image recipe changes.
fn image() -> PathBuf {
    if let Ok(dir) = std::env::var("DUSTMOTE_IMAGE_DIR") {
        return PathBuf::from(dir);
    }
    let deb_dir = root().join("target/vm-test/deb");
    let _ = std::fs::remove_dir_all(&deb_dir);
    let sums = run(
        Command::new("bash")
            .arg(root().join("deploy/debian/build-deb.sh"))
            .arg(&deb_dir),
        "deploy/debian/build-deb.sh",
    );
    println!("{sums}");
    let deb = std::fs::read_dir(&deb_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap();
    let key = format!(
        "{}-{}",
        &sha256(&deb)[..16],
        &sha256(&root().join("deploy/image/build.sh"))[..16]
    );
    let dir = root().join("target/vm-test/image").join(key);
    if !dir.join("SHA256SUMS").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let t = Instant::now();
        let sums = run(
            as_root("bash")
                .arg(root().join("deploy/image/build.sh"))
                .arg(&deb)
                .arg(&dir),
            "deploy/image/build.sh",
        );
        println!("image built in {:.0} s:\n{sums}", t.elapsed().as_secs_f64());
    }
    dir
}

/// A file from the guest's (powered-off) disk, read without mounting.
fn guest_file(disk: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(disk)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_mote_boots_takes_mail_and_powers_itself_off_at_the_end() {
    let image = image();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let sink = Sink::start();
    let (smtp_port, http_port) = (free_port(), free_port());

    // The user data, as a user renders it, plus what only the test needs:
    // listeners the forwarded ports reach, clearnet delivery to the one
    // forwarded port, short delays; a drop-in that lets QEMU's network
    // (10.0.2.0/24) through the unit's IPAddressDeny; and a few records
    // read back from the disk after the poweroff.
    std::fs::write(
        w.join("test.toml"),
        "[smtp]\nlisten = \"0.0.0.0:2525\"\n[http]\nlisten = \"0.0.0.0:8080\"\n\
         [tor]\nmode = \"direct\"\nallow_clearnet = true\n\
         [mixer.delay]\ndistribution = \"exponential\"\nmean = \"5s\"\nmin = \"1s\"\nmax = \"20s\"\n",
    )
    .unwrap();
    std::fs::write(
        w.join("dropin.conf"),
        "[Service]\nIPAddressAllow=10.0.2.0/24\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args([
            "cloud-init",
            "--user",
            "alice",
            "--mail-relay",
            "10.0.2.100:2526",
        ])
        .args([
            "--mail-tls",
            "none",
            "--lifetime",
            &format!("{LIFETIME_S}s"),
        ])
        .args(["--drain-margin", &format!("{DRAIN_MARGIN_S}s"), "--secrets"])
        .arg(w.join("secrets.json"))
        .arg("--merge")
        .arg(w.join("test.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(w.join("mote.yaml"), &out.stdout).unwrap();
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.join("secrets.json")).unwrap()).unwrap();
    let password = secrets["users"][0]["password"]
        .as_str()
        .unwrap()
        .to_string();
    run(
        Command::new("python3")
            .arg(peer("cloud_config.py"))
            .arg("extend")
            .arg(w.join("mote.yaml"))
            .arg(w.join("user-data"))
            .arg("--file")
            .arg(format!(
                "/etc/systemd/system/dustmote.service.d/test.conf={}",
                w.join("dropin.conf").display()
            ))
            .args([
                "--runcmd",
                "systemctl is-active tor@default tor@dustmote dustmote > /root/active || true",
                "--runcmd",
                "ss -ltnH > /root/listening",
                "--runcmd",
                "cat /proc/meminfo > /root/meminfo",
                "--runcmd",
                "systemd-analyze security --no-pager dustmote.service > /root/security 2>&1 || true",
            ]),
        "extending the user data",
    );
    std::fs::write(
        w.join("meta-data"),
        "instance-id: mote-test\nlocal-hostname: mote\n",
    )
    .unwrap();
    run(
        Command::new("cloud-localds")
            .current_dir(w)
            .args(["seed.iso", "user-data", "meta-data"]),
        "cloud-localds (cloud-image-utils)",
    );
    let disk = w.join("disk.img");
    run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(image.join("mote.img"))
            .arg(&disk),
        "copying the image",
    );

    let accel = std::env::var("DUSTMOTE_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
    let console = w.join("console.log");
    let started = Instant::now();
    let mut qemu = Proc(
        Command::new("qemu-system-x86_64")
            .args(["-accel", &accel, "-cpu", "max", "-m", "512", "-smp", "2"])
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initrd.img"))
            .args([
                "-append",
                "root=/dev/vda rw console=ttyS0 ds=nocloud systemd.journald.forward_to_console=1",
            ])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw", disk.display()))
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                w.join("seed.iso").display()
            ))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,restrict=on,\
                 hostfwd=tcp:127.0.0.1:{smtp_port}-:2525,\
                 hostfwd=tcp:127.0.0.1:{http_port}-:8080,\
                 guestfwd=tcp:10.0.2.100:2526-cmd:socat - TCP:127.0.0.1:{}",
                sink.port
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 (qemu-system-x86)"),
    );
    let log = || String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();

    // cloud-init's last step prints the onion addresses and the end time.
    let line = wait_for(Duration::from_secs(420), || {
        log()
            .lines()
            .find(|l| l.contains("dustmote: smtp ") && l.contains(".onion:587"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("the mote never announced itself:\n{}", log()));
    let ready_s = started.elapsed().as_secs();
    println!("announced after {ready_s} s: {line}");
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "expires").unwrap();
    let expires_at = words[at + 1].to_string();
    for (i, port) in [(1, ":587"), (3, ":80")] {
        let w = words[words.iter().position(|w| *w == "dustmote:").unwrap() + 1 + i];
        let host = w.strip_suffix(port).unwrap();
        assert!(host.ends_with(".onion") && host.len() == 62, "{line}");
    }

    // The launcher finds the addresses in this line on a provider's console
    // (`launch.py ls`): its own expression, on the real line.
    let out = Command::new("python3")
        .current_dir(root().join("deploy/launch"))
        .args([
            "-c",
            "import sys, launch; m = launch.ANNOUNCE.search(sys.argv[1]); print(m['smtp'], m['http'], m['expires'])",
            &line,
        ])
        .output()
        .unwrap();
    let parsed = String::from_utf8_lossy(&out.stdout);
    let want = format!("{} {} {expires_at}", words[at - 3], words[at - 1]);
    assert_eq!(
        parsed.trim(),
        want,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A user submits through the forwarded port with the generated password.
    let out = Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{smtp_port}"),
            "--auth",
            "PLAIN",
        ])
        .args(["--auth-user", "alice", "--auth-password", &password])
        .args(["--from", "alice@example.org", "--to", "bob@example.net"])
        .args([
            "--header",
            "Subject: from a booted mote",
            "--body",
            "held, then forwarded",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("<-  250 "),
        "{text}\n{}",
        log()
    );
    let got = sink.wait_messages(1, Duration::from_secs(120));
    let (header, body) = got[0].split();
    assert!(String::from_utf8_lossy(body).contains("held, then forwarded"));
    assert!(header.contains("Subject: from a booted mote"), "{header}");
    assert_eq!(got[0].rcpt_tos, ["bob@example.net"]);

    // /status (public part): the end time from cloud-init, and the SHA-256
    // of the binary that runs, equal to the one in the published .deb.
    let deb_binary = image_binary_sha(&image);
    let status = wait_for(Duration::from_secs(120), || {
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{http_port}/status")])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["executable"]["sha256"] != "").then_some(v)
    })
    .expect("/status with the executable's hash");
    assert_eq!(status["expires_at"], expires_at.as_str(), "{status}");
    assert_eq!(
        status["executable"]["sha256"],
        deb_binary.as_str(),
        "{status}"
    );

    // The end: the mote drains, dustmote exits with status 10, the unit
    // powers the VM off (QEMU exits with -no-reboot). The backstop timer
    // would only fire 10 minutes after the end: this must come first.
    let limit = Duration::from_secs(LIFETIME_S + 240);
    let exit = wait_for(
        limit.saturating_sub(started.elapsed()) + Duration::from_secs(1),
        || qemu.0.try_wait().unwrap(),
    )
    .unwrap_or_else(|| panic!("the mote did not power itself off:\n{}", log()));
    let total_s = started.elapsed().as_secs();
    assert!(exit.success(), "qemu: {exit:?}");
    let console_text = log();
    // A power-off, not a reboot (QEMU's -no-reboot ends on both).
    assert!(
        console_text.contains("reboot: Power down"),
        "{console_text}"
    );
    assert!(
        console_text.contains("the mote's lifetime is over; stopping"),
        "{console_text}"
    );
    assert!(
        !console_text.contains("items still queued"),
        "{console_text}"
    );
    assert!(console_text.contains("exiting queued=0"), "{console_text}");
    assert!(
        !console_text.contains("dustmote-backstop.service"),
        "the backstop fired"
    );
    println!(
        "powered off {total_s} s after the start (lifetime {LIFETIME_S} s from the guest's boot)"
    );

    // What the guest recorded once cloud-init had started everything.
    let result = guest_file(&disk, "/var/lib/cloud/data/result.json");
    let result: serde_json::Value =
        serde_json::from_str(&result).unwrap_or_else(|_| panic!("{result}"));
    assert_eq!(result["v1"]["errors"], serde_json::json!([]), "{result}");
    let active = guest_file(&disk, "/root/active");
    assert_eq!(
        active.lines().collect::<Vec<_>>(),
        ["active"; 3],
        "{active}"
    );
    // Nothing listens but dustmote, the relay's ORPort (IPv4 and IPv6) and
    // the onion instance's SocksPort (on loopback).
    let listening = guest_file(&disk, "/root/listening");
    let mut ports: Vec<String> = listening
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        [
            "0.0.0.0:2525",
            "0.0.0.0:8080",
            "0.0.0.0:9001",
            "127.0.0.1:9050",
            "[::]:9001"
        ],
        "{listening}"
    );
    let meminfo = guest_file(&disk, "/root/meminfo");
    let kib = |k: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {meminfo}"))
    };
    let (total, available) = (kib("MemTotal:"), kib("MemAvailable:"));
    println!(
        "guest memory: {} MiB in use of {} MiB (MemTotal - MemAvailable, tor x2 and dustmote running)",
        (total - available) / 1024,
        total / 1024
    );
    assert!(available > 64 * 1024, "under 64 MiB left: {meminfo}");
    let security = guest_file(&disk, "/root/security");
    let score = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{security}"));
    println!("in the guest: {score}");
}

/// The sha256 of `usr/bin/dustmote` inside the image's `.deb`.
fn image_binary_sha(image: &Path) -> String {
    let deb = std::fs::read_dir(image)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -xO ./usr/bin/dustmote | sha256sum",
            deb.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
