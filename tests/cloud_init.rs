//! `dustmote cloud-init`: the user data is valid for cloud-init's own
//! schema check, every torrc it renders passes `tor --verify-config` (with
//! the defaults Debian's units start tor with), the mote.toml inside passes
//! `dustmote config check`, and bad options are refused. The boot of a real
//! VM with this user data is `tests/vm_boot.rs`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{bin, json_of, peer};

fn render(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("cloud-init")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn render_ok(dir: &Path, args: &[&str]) -> String {
    let out = render(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn schema(file: &Path) -> Output {
    Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(file)
        .output()
        .expect("cloud-init (Debian package cloud-init)")
}

/// `cloud-init schema` says the cloud-config `cc` is valid (`what`: the
/// case, for the message).
fn assert_schema_valid(cc: &Path, what: &str) {
    let out = schema(cc);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("Valid"),
        "{what}: {text}"
    );
}

/// The write_files entries of a cloud-config, each content in `dir`.
fn files(cc: &Path, dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg(peer("cloud_config.py"))
        .arg("files")
        .arg(cc)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const VARIANTS: [&[&str]; 4] = [
    // The default: a relay, no exit, mail through a smarthost.
    &["--user", "alice", "--mail-relay", "smtp.example.org:587"],
    // A reduced exit with accounting and a bandwidth cap.
    &[
        "--user",
        "alice",
        "--user",
        "bob",
        "--mail-relay",
        "smtp.example.org:465",
        "--mail-tls",
        "implicit",
        "--exit-policy",
        "accept *:80,accept *:443",
        "--accounting-max",
        "20 GBytes",
        "--bandwidth-rate",
        "2 MBytes",
        "--nickname",
        "dustmote1",
        "--profile",
        "quick",
        "--lifetime",
        "2h",
    ],
    // Onion services only.
    &["--user", "alice", "--mail-mx", "--no-relay", "--profile", "long", "--lifetime", "1d"],
    // A user who brings a hash instead of getting a password.
    &[
        "--user",
        "carol=$argon2id$v=19$m=19456,t=2,p=1$4BXGL8y+A5keOWuO5oRgyg$1z7nhn+JgIQ2X6gNJNQEBXxXV57ihdRwYpZHR1c9mVA",
        "--mail-relay",
        "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuvwx.onion:25",
        "--mail-tls",
        "none",
    ],
];

#[test]
fn the_user_data_passes_cloud_inits_schema_and_its_mote_toml_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    for (i, args) in VARIANTS.iter().enumerate() {
        let cc = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&cc, render_ok(dir.path(), args)).unwrap();
        assert_schema_valid(&cc, &format!("{args:?}"));
        let parts = dir.path().join(format!("{i}.d"));
        std::fs::create_dir(&parts).unwrap();
        let entries = files(&cc, &parts);
        let paths: Vec<&str> = entries
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        let relay = !args.contains(&"--no-relay");
        let mut want = vec![
            "/etc/dustmote/mote.toml",
            "/etc/tor/instances/dustmote/torrc",
        ];
        if relay {
            want.push("/etc/tor/torrc");
        }
        assert_eq!(paths, want, "{args:?}");
        // The config is readable by dustmote's group only: it holds the
        // users' hashes (and a smarthost password, if any).
        assert_eq!(entries[0]["owner"], "root:dustmote");
        assert_eq!(entries[0]["permissions"], "0640");
        // The mote.toml as the boot script leaves it: the placeholder
        // replaced with boot time + lifetime.
        let toml = std::fs::read_to_string(parts.join("etc_dustmote_mote.toml")).unwrap();
        assert!(toml.contains("expires_at = \"@EXPIRES_AT@\""), "{toml}");
        let booted = parts.join("booted.toml");
        std::fs::write(
            &booted,
            toml.replace("@EXPIRES_AT@", "2031-05-01T12:00:00Z"),
        )
        .unwrap();
        let out = Command::new(bin())
            .args(["config", "check"])
            .arg(&booted)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // dustmote sends through the onion instance's SocksPort.
        assert!(toml.contains("mode = \"socks5\"") && toml.contains("socks = \"127.0.0.1:9050\""));
        let script = std::fs::read_to_string(&cc).unwrap();
        assert!(script.contains("/proc/stat") && script.contains("systemctl restart dustmote"));
    }
    // The check can fail: the same user data with one value of the wrong
    // type is refused (cloud-init 22.4 lets unknown keys pass).
    let bad = dir.path().join("bad.yaml");
    let good = render_ok(dir.path(), VARIANTS[0]);
    std::fs::write(&bad, good.replacen("defer: true", "defer: maybe", 1)).unwrap();
    let out = schema(&bad);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Generated passwords are shown once (in `--secrets`, mode 0600) and only
/// their hashes (of the generated kind) are in the user data.
#[test]
fn generated_passwords_leave_only_as_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let cc = render_ok(
        dir.path(),
        &[
            "--user",
            "alice",
            "--user",
            "bob",
            "--mail-mx",
            "--secrets",
            "s.json",
        ],
    );
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("s.json")).unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("s.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let users = secrets["users"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    for u in users {
        let pw = u["password"].as_str().unwrap();
        // A generated secret: 190 bits, stored as its fast digest.
        assert!(pw.len() >= 32 && pw.starts_with("dust."), "{pw}");
        assert!(!cc.contains(pw));
    }
    assert_ne!(users[0]["password"], users[1]["password"]);
    // Written anew (issue 22, finding 13): an existing file's looser mode
    // is not kept, and a symbolic link is replaced, not written through.
    let secrets = dir.path().join("s.json");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, "untouched").unwrap();
    let link = dir.path().join("l.json");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    for f in ["s.json", "l.json"] {
        render_ok(
            dir.path(),
            &["--user", "alice", "--mail-mx", "--secrets", f],
        );
        let m = std::fs::symlink_metadata(dir.path().join(f)).unwrap();
        assert!(m.is_file(), "{f}");
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
    }
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "untouched");
    assert_eq!(cc.matches("$dust-secret$v=1$").count(), 4, "{cc}");
    assert!(!cc.contains("$argon2id$"), "{cc}");
}

/// `tor --verify-config` on every torrc, read with the defaults file each
/// Debian unit starts tor with (`tor@default`: tor-service-defaults-torrc;
/// `tor@dustmote`: the instances' file with the name filled in, minus its
/// `User` line: `_tor-dustmote` is created on the mote at boot).
#[test]
fn every_rendered_torrc_passes_tor_verify_config() {
    let dir = tempfile::tempdir().unwrap();
    let instance_defaults =
        std::fs::read_to_string("/usr/share/tor/tor-service-defaults-torrc-instances")
            .expect("Debian's tor package")
            .replace("@@NAME@@", "dustmote")
            .lines()
            .filter(|l| !l.starts_with("User "))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            // Where this test may write.
            .replace(
                "/var/lib/tor-instances/dustmote",
                &dir.path().join("data").display().to_string(),
            )
            .replace(
                "/run/tor-instances/dustmote",
                &dir.path().join("run").display().to_string(),
            );
    let defaults = dir.path().join("instance-defaults");
    std::fs::write(&defaults, instance_defaults).unwrap();
    let verify = |torrc: &Path, defaults: &Path| {
        let out = Command::new("tor")
            .arg("--verify-config")
            .arg("-f")
            .arg(torrc)
            .arg("--defaults-torrc")
            .arg(defaults)
            .output()
            .expect("tor (Debian package tor)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && text.contains("Configuration was valid"),
            "{}: {text}",
            torrc.display()
        );
        text
    };
    let mut checked = 0;
    for (i, args) in [
        // relay
        vec!["--user", "a", "--mail-mx"],
        // relay + exit
        vec![
            "--user",
            "a",
            "--mail-mx",
            "--exit-policy",
            "accept *:80,accept *:443",
            "--accounting-max",
            "1 TB",
        ],
        // onion services only
        vec!["--user", "a", "--mail-mx", "--no-relay"],
    ]
    .iter()
    .enumerate()
    {
        let mut a = args.clone();
        a.extend(["--print", "onion-torrc"]);
        let onion = render_ok(dir.path(), &a);
        assert!(onion.contains("HiddenServiceDir /run/tor-instances/dustmote/smtp"));
        assert!(!onion.contains("ORPort"), "{onion}");
        // Every service sheds floods: tor's proof of work and the
        // introduction points' rate limit, once per service.
        let services = onion.matches("HiddenServiceDir ").count();
        assert_eq!(services, 2, "{onion}");
        for line in [
            "HiddenServicePoWDefensesEnabled 1\n",
            "HiddenServiceEnableIntroDoSDefense 1\n",
        ] {
            assert_eq!(onion.matches(line).count(), services, "{line}: {onion}");
        }
        let f = dir.path().join(format!("onion-{i}"));
        std::fs::write(&f, &onion).unwrap();
        let text = verify(&f, &defaults);
        assert!(!text.contains("relay and a hidden service"), "{text}");
        checked += 1;
        a.pop();
        a.push("relay-torrc");
        let relay = render_ok(dir.path(), &a);
        if args.contains(&"--no-relay") {
            assert!(relay.is_empty(), "{relay}");
            continue;
        }
        assert!(relay.contains("ORPort 9001") && !relay.contains("HiddenService"));
        let f = dir.path().join(format!("relay-{i}"));
        std::fs::write(&f, &relay).unwrap();
        verify(&f, Path::new("/usr/share/tor/tor-service-defaults-torrc"));
        checked += 1;
        if args.contains(&"--exit-policy") {
            // Port 25 is refused before anything the user accepts.
            let policy: Vec<&str> = relay
                .lines()
                .filter(|l| l.starts_with("ExitPolicy"))
                .collect();
            assert_eq!(
                policy,
                [
                    "ExitPolicy reject *:25",
                    "ExitPolicy accept *:80",
                    "ExitPolicy accept *:443",
                    "ExitPolicy reject *:*"
                ]
            );
            assert!(relay.contains("ExitRelay 1"));
        } else {
            assert!(relay.contains("ExitRelay 0") && relay.contains("ExitPolicy reject *:*"));
        }
    }
    assert_eq!(checked, 5);
    // The package's /usr/share/dustmote/torrc (for a tor run by hand) is
    // the onion instance's torrc exactly as rendered.
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/torrc"))
            .unwrap();
    assert_eq!(
        shipped,
        render_ok(dir.path(), &["--user", "a", "--mail-mx", "--print", "onion-torrc"]),
        "deploy/torrc is stale: dustmote cloud-init --user a --mail-mx --print onion-torrc > deploy/torrc"
    );
    println!("tor --verify-config: {checked} torrcs valid");
}

#[test]
fn bad_options_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (args, reason) in [
        (vec!["--user", "a"], "--mail-relay"),
        (vec!["--user", "a b", "--mail-mx"], "a name is"),
        (
            vec!["--user", "a", "--user", "a", "--mail-mx"],
            "given twice",
        ),
        (
            vec!["--user", "a", "--mail-mx", "--lifetime", "5m"],
            "drain-margin",
        ),
        (
            vec!["--user", "a", "--mail-mx", "--nickname", "not valid"],
            "--nickname",
        ),
        (
            vec![
                "--user",
                "a",
                "--mail-mx",
                "--exit-policy",
                "accept *:80\nSocksPort 0.0.0.0:9050",
            ],
            "--exit-policy",
        ),
        (
            vec!["--user", "a", "--mail-mx", "--accounting-max", "lots"],
            "--accounting-max",
        ),
        (
            vec![
                "--user",
                "a",
                "--mail-mx",
                "--no-relay",
                "--exit-policy",
                "accept *:80",
            ],
            "need the relay",
        ),
        (vec!["--user", "a=not-a-hash", "--mail-mx"], "smtp.users"),
    ] {
        let out = render(dir.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(reason),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed user data");
    }
}

/// Values that YAML would read as line breaks (U+0085, U+2028, U+2029) or
/// that tor would read as a line continuation cannot add to the user data
/// (issue 22, findings 7 and 14). Each line-break character in each value
/// that reaches the rendered files (`--contact`, a bracketed `--mail-relay`
/// host, `--mail-user`, `$DUSTMOTE_MAIL_PASSWORD`) carries a `bootcmd`:
/// the value is either refused with a reason or written so that PyYAML
/// (cloud-init's parser) reads the same three top-level keys and the file
/// holds the value verbatim; `cloud-init schema` accepts what is written.
#[test]
fn no_value_can_write_its_own_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let keys = |cc: &Path| -> Vec<String> {
        let v = json_of(
            Command::new("python3")
                .arg(peer("cloud_config.py"))
                .arg("keys")
                .arg(cc),
        );
        serde_json::from_value(v).unwrap()
    };
    let mut written = 0;
    let mut refused = 0;
    for (i, brk) in ['\u{85}', '\u{2028}', '\u{2029}'].into_iter().enumerate() {
        let evil = format!("x{brk}bootcmd:{brk}  - [touch, /pwned]{brk}y");
        let relay = format!("[{evil}]:587");
        let cases: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
            ("contact", vec!["--mail-mx", "--contact", &evil], None),
            ("relay", vec!["--mail-relay", &relay], None),
            (
                "user",
                vec!["--mail-relay", "smtp.example.org:587", "--mail-user", &evil],
                Some("pw"),
            ),
            (
                "password",
                vec!["--mail-relay", "smtp.example.org:587", "--mail-user", "u"],
                Some(&evil),
            ),
        ];
        for (what, extra, password) in cases {
            let mut c = Command::new(bin());
            c.args(["cloud-init", "--user", "a"])
                .args(&extra)
                .current_dir(dir.path());
            if let Some(p) = password {
                c.env("DUSTMOTE_MAIL_PASSWORD", p);
            }
            let out = c.output().unwrap();
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(!err.trim().is_empty(), "{what}: refused without a reason");
                println!("{what} with U+{:04X}: refused: {}", brk as u32, err.trim());
                refused += 1;
                continue;
            }
            let cc = dir.path().join(format!("{what}-{i}.yaml"));
            std::fs::write(&cc, &out.stdout).unwrap();
            assert_eq!(keys(&cc), ["locale", "write_files", "runcmd"], "{what}");
            assert_schema_valid(&cc, what);
            let parts = dir.path().join(format!("{what}-{i}.d"));
            std::fs::create_dir(&parts).unwrap();
            let entries = files(&cc, &parts);
            assert_eq!(entries.len(), 3, "{what}");
            let toml = std::fs::read_to_string(parts.join("etc_dustmote_mote.toml")).unwrap();
            assert!(
                toml.contains(&evil),
                "{what}: the value verbatim in mote.toml"
            );
            assert_eq!(entries[0]["encoding"], "b64", "{what}");
            written += 1;
        }
    }
    // The contact goes into a torrc: refused; the others are TOML strings,
    // written in base64.
    println!("{written} written safely, {refused} refused");
    assert!(
        refused >= 3 && written >= 6,
        "{written} written, {refused} refused"
    );
    // A trailing backslash would join the next torrc line to ContactInfo.
    let out = render(
        dir.path(),
        &["--user", "a", "--mail-mx", "--contact", "me \\"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("backslash"));
    // Plain values stay readable (no base64 where none is needed).
    let plain = render_ok(
        dir.path(),
        &["--user", "a", "--mail-mx", "--contact", "me@example.org"],
    );
    assert!(!plain.contains("encoding: b64") && plain.contains("ContactInfo me@example.org"));
}
