//! Access cards with the real binary and a real tor's control port (a tor
//! with its network off: publishing is not needed to learn the onion
//! addresses; tests/tor_e2e.rs reaches the services on the private Tor
//! network): `dustmote card` prints a URI and a QR code that zbarimg
//! decodes to the same URI; the card works and ends the account's earlier
//! credentials; it names nothing but its own account; `card import` writes
//! tor's client-auth files; the addresses survive a restart.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A tor with its network off and a control port with cookie
/// authentication; stopped when dropped.
struct OfflineTor {
    proc: Proc,
    port: u16,
    dir: tempfile::TempDir,
}

impl OfflineTor {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let port = free_port();
        let proc = tor_at(port, dir.path());
        Self { proc, port, dir }
    }
}

/// A tor with its network off, its control port on `port` (cookie
/// authentication, the cookie in `dir`) and its data in `dir`, once that
/// port answers.
fn tor_at(port: u16, dir: &std::path::Path) -> Proc {
    let child = Command::new("tor")
        .args([
            "--SocksPort",
            "0",
            "--DisableNetwork",
            "1",
            "--CookieAuthentication",
            "1",
        ])
        .args(["--ControlPort", &format!("127.0.0.1:{port}")])
        .arg("--DataDirectory")
        .arg(dir)
        .args(["--Log", "warn stderr"])
        .args([
            "--__OwningControllerProcess",
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("tor (run tests/install-deps.sh)");
    let proc = Proc(child);
    wait_for(Duration::from_secs(30), || port_open(port).then_some(()))
        .expect("tor's control port");
    proc
}

/// The URI line of `dustmote card` output.
fn uri_of(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("dustmote:card?"))
        .unwrap_or_else(|| panic!("no URI in:\n{out}"))
        .to_string()
}

/// The QR code printed above the URI, as a PBM image (4 pixels a
/// module), decoded by zbarimg.
fn decode_qr(out: &str, dir: &std::path::Path) -> String {
    let lines: Vec<Vec<char>> = out
        .lines()
        .take_while(|l| !l.starts_with("dustmote:card?"))
        .filter(|l| !l.is_empty())
        .map(|l| l.chars().collect())
        .collect();
    assert!(lines.len() > 10, "no QR code in:\n{out}");
    // Two modules a character; which of "drawn" and "blank" is dark: the
    // quiet zone (top left) is light.
    let drawn = |c: char| match c {
        ' ' => (false, false),
        '\u{2580}' => (true, false),
        '\u{2584}' => (false, true),
        '\u{2588}' => (true, true),
        other => panic!("unexpected character {other:?} in the QR code"),
    };
    let light_is_drawn = drawn(lines[0][0]).0;
    let mut rows: Vec<Vec<bool>> = Vec::new();
    for l in &lines {
        let (top, bottom): (Vec<bool>, Vec<bool>) = l
            .iter()
            .map(|&c| {
                let (t, b) = drawn(c);
                (t != light_is_drawn, b != light_is_drawn)
            })
            .unzip();
        rows.push(top);
        rows.push(bottom);
    }
    const SCALE: usize = 4;
    let w = rows[0].len() * SCALE;
    let mut pbm = format!("P1\n{w} {}\n", rows.len() * SCALE);
    for r in &rows {
        let line: String = r
            .iter()
            .flat_map(|&dark| std::iter::repeat_n(if dark { "1 " } else { "0 " }, SCALE))
            .collect();
        for _ in 0..SCALE {
            pbm.push_str(&line);
            pbm.push('\n');
        }
    }
    let path = dir.join("card.pbm");
    std::fs::write(&path, pbm).unwrap();
    let o = Command::new("zbarimg")
        .args(["--quiet", "--raw"])
        .arg(&path)
        .output()
        .expect("zbarimg (run tests/install-deps.sh)");
    assert!(
        o.status.success(),
        "zbarimg: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim_end().to_string()
}

fn field<'u>(uri: &'u str, key: &str) -> &'u str {
    uri.split('&')
        .find_map(|p| p.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {uri}"))
}

#[test]
fn a_card_is_a_uri_and_a_qr_code_that_import_turns_into_a_tor_client_config() {
    let tor = OfflineTor::start();
    let work = tempfile::tempdir().unwrap();
    let mut sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    // SAFECOOKIE with tor's cookie file, named in the configuration.
    cfg.extra = format!(
        "[onion]\ncontrol = \"127.0.0.1:{}\"\ncontrol_cookie = \"{}\"\nclient_auth = true\n",
        tor.port,
        tor.dir.path().join("control_auth_cookie").display()
    );
    let mut mote = Mote::start(&cfg);
    assert!(
        wait_for(Duration::from_secs(10), || mote
            .log()
            .contains("onion services published")
            .then_some(()))
        .is_some(),
        "{}",
        mote.log()
    );
    let invite = |name: &str| {
        let o = mote.cli_args(&["invite", name, "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let first = invite("bea");
    invite("carl");
    // A session opened with the invitation's password ends with it when
    // the card issues new credentials (issue 22, finding 8).
    let (held, child) = hold(
        mote.port,
        "bea",
        first["smtp_password"].as_str().unwrap(),
        30,
    );
    assert_eq!(held["authenticated"], true, "{held}");
    let out = mote.cli_args(&["card", "bea"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let end = held_end(child);
    assert_eq!(end["code"], 421, "{end}");
    assert!(
        end["text"].as_str().unwrap().contains("new credentials"),
        "{end}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let uri = uri_of(&text);
    assert_eq!(
        decode_qr(&text, work.path()),
        uri,
        "the QR code holds the URI"
    );

    // Only bea's own things: no other account, no configured user, no
    // path or address of the machine.
    assert_eq!(field(&uri, "name"), "bea");
    for absent in ["carl", USER, "127.0.0.1", "/"] {
        assert!(!uri.contains(absent), "{absent:?} in {uri}");
    }
    let smtp = field(&uri, "smtp");
    let http = field(&uri, "http");
    assert!(
        smtp.ends_with(".onion:587") && smtp.len() == 56 + 10,
        "{smtp}"
    );
    assert!(http.ends_with(".onion:80") && http != smtp, "{http}");
    assert_eq!(field(&uri, "key").len(), 52, "an x25519 key in base32");

    // The card's password works; the one the invitation showed does not.
    let swaks_as = |pw: &str| {
        swaks(
            mote.port,
            &[
                "--auth",
                "PLAIN",
                "--auth-user",
                "bea",
                "--auth-password",
                pw,
                "--to",
                "b@example.net",
                "--quit-after",
                "AUTH",
            ],
        )
    };
    let (ok, t) = swaks_as(field(&uri, "pass"));
    assert!(ok, "{t}");
    let (ok, t) = swaks_as(first["smtp_password"].as_str().unwrap());
    assert!(!ok && t.contains("535"), "{t}");

    // Import: tor's client-auth files, private, and client settings.
    let auth = work.path().join("auth");
    let o = Command::new(bin())
        .args([
            "card",
            "import",
            &uri,
            "--socks",
            "127.0.0.1:9150",
            "--auth-dir",
        ])
        .arg(&auth)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8(o.stdout).unwrap();
    let auth = std::fs::canonicalize(&auth).unwrap();
    assert!(
        printed.contains(&format!("ClientOnionAuthDir {}", auth.display())),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("--socks5-hostname 127.0.0.1:9150 smtp://{smtp}")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("Bearer bea:{}", field(&uri, "token"))),
        "{printed}"
    );
    assert_eq!(
        std::fs::metadata(&auth).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for (service, addr) in [("smtp", smtp), ("http", http)] {
        let f = auth.join(format!("dustmote-bea-{service}.auth_private"));
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let id = addr.split(".onion").next().unwrap();
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            format!("{id}:descriptor:x25519:{}\n", field(&uri, "key"))
        );
    }

    // A directory that was there is used as it is (issue 22, finding 13):
    // a shared one keeps its mode and sticky bit (with a warning: tor will
    // refuse it), also when named through a symbolic link.
    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let link = work.path().join("link-to-shared");
    std::os::unix::fs::symlink(&shared, &link).unwrap();
    for dir in [&shared, &link] {
        let o = Command::new(bin())
            .args(["card", "import", &uri, "--auth-dir"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("tor refuses"));
        assert_eq!(
            std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        assert!(shared.join("dustmote-bea-smtp.auth_private").exists());
    }

    // The operator sees counts and addresses, never a name.
    let status = String::from_utf8(mote.cli("status").stdout).unwrap();
    assert!(
        status.contains(&format!("sharing:   2 accounts, 1 with a card; onion smtp {smtp} http {http} (client authorization)")),
        "{status}"
    );
    assert!(
        !status.contains("bea") && !status.contains("carl"),
        "{status}"
    );

    // `--uri` alone; after a restart the addresses are the same (their
    // keys live in the runtime directory).
    mote.terminate();
    mote.spawn();
    let o = mote.cli_args(&["card", "carl", "--uri"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let carl = String::from_utf8(o.stdout).unwrap();
    assert_eq!(carl.lines().count(), 1);
    assert_eq!(
        (field(carl.trim(), "smtp"), field(carl.trim(), "http")),
        (smtp, http)
    );
    assert!(!carl.contains("bea"));
    drop(tor.proc);
    sink.stop();
}

#[test]
fn without_onion_services_there_is_no_card() {
    let mut sink = Sink::start();
    let mote = Mote::start(&MoteConfig::new(sink.port));
    assert!(mote.cli_args(&["invite", "dan"]).status.success());
    let o = mote.cli_args(&["card", "dan"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("[onion] control"));
    sink.stop();
}

/// Issue 22, finding 9: a mote whose tor is not up yet serves at once (an
/// SMTP greeting within seconds), says it will try again, and publishes
/// its onion services as soon as tor is there; when tor restarts (the
/// services go with its control connection) it publishes them again, at
/// the same addresses.
#[test]
fn a_mote_serves_before_its_tor_and_publishes_when_tor_comes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let port = free_port();
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = format!(
        "[onion]\ncontrol = \"127.0.0.1:{port}\"\ncontrol_cookie = \"{}\"\n",
        dir.path().join("control_auth_cookie").display()
    );
    let mote = Mote::start(&cfg);
    let greeting = greeting(mote.port, Duration::from_secs(5));
    assert!(greeting.starts_with("220 "), "{greeting:?}");
    let log_has = |what: &str, secs: u64| {
        wait_for(Duration::from_secs(secs), || {
            mote.log().contains(what).then_some(())
        })
        .is_some()
    };
    assert!(log_has("tries again", 10), "{}", mote.log());
    let addresses = || {
        let v = mote.status_json();
        (
            v["sharing"]["smtp_onion"].as_str().map(str::to_string),
            v["sharing"]["http_onion"].as_str().map(str::to_string),
        )
    };
    assert_eq!(addresses(), (None, None));
    // No card before the services are published, and the account keeps
    // its credentials.
    let invited = mote.invite(&["nadia", "--smtp"]);
    let out = mote.cli_args(&["card", "nadia"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not published yet"), "{said}");
    let pw = invited["smtp_password"].as_str().unwrap();
    let (ok, t) = swaks_as(
        mote.port,
        "nadia",
        pw,
        &["--to", "b@example.net", "--quit-after", "AUTH"],
    );
    assert!(ok, "{t}");
    let tor = tor_at(port, dir.path());
    assert!(log_has("onion services published", 60), "{}", mote.log());
    let first = addresses();
    assert!(
        first
            .0
            .as_deref()
            .is_some_and(|a| a.ends_with(".onion:587")),
        "{first:?}"
    );
    drop(tor);
    let _tor = tor_at(port, dir.path());
    assert!(
        log_has("onion services published again", 60),
        "{}",
        mote.log()
    );
    assert!(mote.log().contains("control connection to tor was lost"));
    assert_eq!(addresses(), first);
}
