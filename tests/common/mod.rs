//! Test harness: the real `dustmote` binary, a real receiving MTA (aiosmtpd)
//! and real submission clients (swaks, Python smtplib), all on 127.0.0.1 with
//! free ports. Every process is stopped by PID when its handle is dropped.
//! Waiting is always "poll a condition until a deadline", never a bare sleep.

#![allow(dead_code, clippy::unwrap_used)]

pub mod origins;
pub mod tornet;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse battery staple";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dustmote")
}

pub fn peer(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// A free TCP port on 127.0.0.1, below Linux's ephemeral range (32768 and
/// up) so that no outgoing connection can take it between this check and
/// the server's bind; never the same port twice in one test process.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = 20_000 + (rand::random::<u16>() % 12_000);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// Poll `f` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    /// Send a signal by name (`TERM`, `INT`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} {}", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The password hash for [`PASSWORD`], made once by `dustmote passwd`.
pub fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut child = Command::new(bin())
            .arg("passwd")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub raw: Vec<u8>,
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// Arrival, seconds since the Unix epoch.
    pub time: f64,
    /// The client's EHLO/HELO name.
    pub helo: String,
    /// The MAIL FROM parameters (`SMTPUTF8`, `BODY=8BITMIME`).
    pub mail_options: Vec<String>,
}

impl Delivered {
    /// The `Message-ID:` header line (panics if there is none).
    pub fn message_id(&self) -> String {
        let (h, _) = self.split();
        h.lines()
            .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
            .unwrap_or_else(|| panic!("no Message-ID in {h}"))
            .to_string()
    }

    /// (header, body) split at the first empty line.
    pub fn split(&self) -> (String, &[u8]) {
        let i = self
            .raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("header/body separator");
        (
            String::from_utf8_lossy(&self.raw[..i + 2]).into_owned(),
            &self.raw[i + 4..],
        )
    }
}

/// The messages' bodies as trimmed text, sorted (delivery order is random).
pub fn sorted_bodies(msgs: &[Delivered]) -> Vec<String> {
    let mut bodies: Vec<String> = msgs
        .iter()
        .map(|m| String::from_utf8_lossy(m.split().1).trim().to_string())
        .collect();
    bodies.sort();
    bodies
}

/// aiosmtpd as the next hop.
pub struct Sink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl Sink {
    pub fn start() -> Self {
        Self::start_with(0, free_port())
    }

    /// A sink that answers 451 to the first `reject_first` messages.
    pub fn start_with(reject_first: u32, port: u16) -> Self {
        Self::start_args(
            port,
            &["--reject-first".to_string(), reject_first.to_string()],
        )
    }

    /// A sink with extra `sink.py` arguments (TLS, AUTH).
    pub fn start_args(port: u16, args: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self {
            port,
            dir,
            proc: None,
        };
        s.spawn(args);
        s
    }

    fn spawn(&mut self, args: &[String]) {
        let mut child = Command::new("python3")
            .arg(peer("sink.py"))
            .args(["--port", &self.port.to_string(), "--dir"])
            .arg(self.dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd (run tests/install-deps.sh)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "sink did not start");
        self.proc = Some(Proc(child));
    }

    pub fn stop(&mut self) {
        self.proc = None;
    }

    pub fn messages(&self) -> Vec<Delivered> {
        let mut out = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        for j in names {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&j).unwrap()).unwrap();
            let raw = std::fs::read(j.with_extension("eml")).unwrap();
            out.push(Delivered {
                raw,
                mail_from: meta["mail_from"].as_str().unwrap().to_string(),
                rcpt_tos: meta["rcpt_tos"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect(),
                time: meta["time"].as_f64().unwrap(),
                helo: meta["helo"].as_str().unwrap_or_default().to_string(),
                mail_options: meta["mail_options"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            });
        }
        out
    }

    /// Wait until at least `n` messages arrived.
    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        wait_for(timeout, || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
        .unwrap_or_else(|| {
            panic!(
                "expected {n} messages at the sink, got {}",
                self.messages().len()
            )
        })
    }
}

/// Settings for a test mote.
#[derive(Clone)]
pub struct MoteConfig {
    pub relay_port: u16,
    pub delay: String,
    pub require_auth: bool,
    pub with_user: bool,
    pub max_message_bytes: usize,
    pub max_recipients: usize,
    pub retry_base: String,
    /// More lines for `[mixer]`.
    pub mixer_extra: String,
    /// `[delivery.mail] tls`
    pub tls: String,
    /// The `[delivery.mail]` mode lines (default: relay to `relay_port`).
    pub delivery_mode: String,
    /// More lines for `[delivery.mail]` (user, password, ca_file).
    pub delivery_extra: String,
    /// The `[tor]` table's lines.
    pub tor: String,
    /// RUST_LOG for the mote (default: $DUSTMOTE_TEST_LOG or "info").
    pub rust_log: Option<String>,
    pub extra: String,
    /// More lines for `[storage]` (`min_free`).
    pub storage_extra: String,
    /// Put the data directory on a tmpfs of this many bytes (mounted
    /// before the start, unmounted when the mote is dropped; needs root).
    pub tmpfs_bytes: Option<u64>,
}

impl MoteConfig {
    pub fn new(relay_port: u16) -> Self {
        Self {
            relay_port,
            delay: r#"{ distribution = "exponential", mean = "300ms", min = "100ms", max = "1s" }"#
                .into(),
            require_auth: true,
            with_user: true,
            max_message_bytes: 1024 * 1024,
            max_recipients: 10,
            retry_base: "200ms".into(),
            mixer_extra: String::new(),
            tls: "none".into(),
            delivery_mode: String::new(),
            delivery_extra: String::new(),
            tor: "mode = \"direct\"\nallow_clearnet = true".into(),
            rust_log: None,
            extra: String::new(),
            storage_extra: String::new(),
            tmpfs_bytes: None,
        }
    }
}

/// A `dustmote serve` process with its own data directory and port.
pub struct Mote {
    pub port: u16,
    /// The HTTP API's port.
    pub http_port: u16,
    rust_log: String,
    pub dir: tempfile::TempDir,
    /// Where the mote keeps its sealing key: a tmpfs directory, as
    /// systemd's `RuntimeDirectory=` gives it (`$RUNTIME_DIRECTORY`).
    pub runtime: tempfile::TempDir,
    pub config: PathBuf,
    proc: Option<Proc>,
    starts: u32,
    /// A tmpfs mounted on the data directory ([`MoteConfig::tmpfs_bytes`]).
    mounted: bool,
}

/// `program` run as root: directly when the tests run as root, else
/// through passwordless sudo (as `tests/install-deps.sh` does).
pub fn as_root(program: &str) -> Command {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if root {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", program]);
        c
    }
}

impl Drop for Mote {
    fn drop(&mut self) {
        self.proc = None; // killed first: nothing may hold the mount
        if self.mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.data_dir())
                .status();
        }
    }
}

impl Mote {
    pub fn start(c: &MoteConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let http_port = free_port();
        let users = if c.with_user {
            format!(
                "[[smtp.users]]\nname = \"{USER}\"\npassword_hash = \"{}\"\n",
                password_hash()
            )
        } else {
            String::new()
        };
        let text = format!(
            r#"[storage]
dir = "{data}"
{storage_extra}
[smtp]
listen = "127.0.0.1:{port}"
max_message_bytes = {max}
max_recipients = {rcpts}
require_auth = {auth}
{users}
[mixer]
strategy = "poisson"
delay = {delay}
retry_base = "{retry}"
retry_max = "1s"
{mixer_extra}
[delivery.mail]
{delivery_mode}
timeout = "10s"
{delivery_extra}
[tor]
{tor}
[http]
listen = "127.0.0.1:{http_port}"
[[http.users]]
name = "{USER}"
token_hash = "{hash}"
operator = true
[shutdown]
session_grace = "2s"
delivery_grace = "2s"
{extra}
"#,
            data = dir.path().join("data").display(),
            storage_extra = c.storage_extra,
            max = c.max_message_bytes,
            rcpts = c.max_recipients,
            auth = c.require_auth,
            delay = c.delay,
            retry = c.retry_base,
            mixer_extra = c.mixer_extra,
            delivery_mode = if c.delivery_mode.is_empty() {
                format!(
                    "mode = \"relay\"\nrelay = \"127.0.0.1:{}\"\ntls = \"{}\"",
                    c.relay_port, c.tls
                )
            } else {
                c.delivery_mode.clone()
            },
            delivery_extra = c.delivery_extra,
            tor = c.tor,
            hash = password_hash(),
            extra = c.extra,
        );
        let config = dir.path().join("mote.toml");
        std::fs::write(&config, text).unwrap();
        if let Some(bytes) = c.tmpfs_bytes {
            let data = dir.path().join("data");
            std::fs::create_dir(&data).unwrap();
            let ok = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={bytes},mode=0700"),
                    "tmpfs",
                ])
                .arg(&data)
                .status()
                .unwrap();
            assert!(
                ok.success(),
                "mounting a tmpfs needs root (CI runs as root)"
            );
        }
        let mut m = Self {
            port,
            http_port,
            rust_log: c.rust_log.clone().unwrap_or_else(|| {
                std::env::var("DUSTMOTE_TEST_LOG").unwrap_or_else(|_| "info".into())
            }),
            dir,
            runtime: tempfile::Builder::new()
                .prefix("dustmote-key")
                .tempdir_in("/dev/shm")
                .unwrap(),
            config,
            proc: None,
            starts: 0,
            mounted: c.tmpfs_bytes.is_some(),
        };
        m.spawn();
        m
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("mote-{}.log", self.starts))
    }

    /// Start (again) on the same data directory and port.
    pub fn spawn(&mut self) {
        self.spawn_unchecked();
        let port = self.port;
        let up = wait_for(Duration::from_secs(20), || port_open(port).then_some(()));
        assert!(up.is_some(), "mote did not listen; log:\n{}", self.log());
    }

    /// Start (again) without waiting for the ports.
    pub fn spawn_unchecked(&mut self) {
        assert!(self.proc.is_none());
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", &self.rust_log)
            .env("RUNTIME_DIRECTORY", self.runtime.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        self.proc = None;
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut p = self.proc.take().expect("running");
        p.signal("TERM");
        let status = wait_for(Duration::from_secs(30), || p.0.try_wait().unwrap());
        status.unwrap_or_else(|| panic!("mote did not stop on SIGTERM; log:\n{}", self.log()))
    }

    /// Send a signal (`"HUP"`, `"TERM"`) to the running mote.
    pub fn signal(&self, sig: &str) {
        self.proc.as_ref().expect("running").signal(sig);
    }

    /// The running mote's process id.
    pub fn pid(&self) -> i32 {
        self.proc.as_ref().expect("running").pid()
    }

    /// Wait (at most `timeout`) for the mote to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let p = self.proc.as_mut().expect("running");
        let status = wait_for(timeout, || p.0.try_wait().unwrap());
        if status.is_some() {
            self.proc = None;
        }
        status
    }

    /// Run `dustmote SUBCOMMAND --config FILE` against this mote.
    pub fn cli(&self, subcommand: &str) -> Output {
        Command::new(bin())
            .args([subcommand, "--config"])
            .arg(&self.config)
            .env("RUNTIME_DIRECTORY", self.runtime.path())
            .output()
            .unwrap()
    }

    /// `dustmote invite ARGS --json` on this mote: the parsed object.
    pub fn invite(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["invite"];
        all.extend_from_slice(args);
        all.push("--json");
        let mut c = Command::new(bin());
        c.args(&all)
            .arg("--config")
            .arg(&self.config)
            .env("RUNTIME_DIRECTORY", self.runtime.path());
        json_of(&mut c)
    }

    /// Run `dustmote ARGS… --config FILE` against this mote.
    pub fn cli_args(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("RUNTIME_DIRECTORY", self.runtime.path())
            .output()
            .unwrap()
    }

    /// `GET path` of the HTTP API as the operator: the body.
    fn operator_get(&self, path: &str) -> Vec<u8> {
        Command::new("curl")
            .args([
                "-s",
                "-H",
                &format!("Authorization: Bearer {PASSWORD}"),
                &format!("http://127.0.0.1:{}{path}", self.http_port),
            ])
            .output()
            .unwrap()
            .stdout
    }

    /// `GET /status` of the HTTP API as the operator, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.operator_get("/status")).unwrap_or(serde_json::Value::Null)
    }

    /// `GET /metrics` of the HTTP API as the operator.
    pub fn metrics(&self) -> String {
        String::from_utf8_lossy(&self.operator_get("/metrics")).into_owned()
    }

    pub fn queue(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(["queue", "--config"])
            .arg(&self.config)
            .args(args)
            .env("RUNTIME_DIRECTORY", self.runtime.path())
            .output()
            .unwrap()
    }
}

/// Run `c` to its end; it must succeed (else its stderr is shown), and
/// its stdout is one JSON value, returned.
/// A `submit.py hold` session as `user`, authenticated (or refused):
/// its first line, and the process to read the rest from.
pub fn hold(
    port: u16,
    user: &str,
    password: &str,
    wait_s: u32,
) -> (serde_json::Value, std::process::Child) {
    use std::io::BufRead;
    let mut child = Command::new("python3")
        .arg(peer("submit.py"))
        .args(["hold", "--port", &port.to_string(), "--user", user])
        .args(["--password", password, "--wait", &wait_s.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .unwrap();
    (serde_json::from_str(&first).expect("first line"), child)
}

/// What a held session printed after its first line.
pub fn held_end(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).expect("end line")
}

/// Every file under `dir`, in its subdirectories too.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub fn json_of(c: &mut Command) -> serde_json::Value {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Run Python smtplib (`tests/peers/submit.py send`) and return its JSON
/// verdict.
pub fn smtplib_send(
    port: u16,
    auth: Option<&str>,
    password: &str,
    from: &str,
    to: &[&str],
    msg: &Path,
) -> serde_json::Value {
    smtplib_send_with(port, auth, password, from, to, msg, &[])
}

/// [`smtplib_send`] with more `submit.py send` arguments (`--smtputf8`).
pub fn smtplib_send_with(
    port: u16,
    auth: Option<&str>,
    password: &str,
    from: &str,
    to: &[&str],
    msg: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let mut c = Command::new("python3");
    c.arg(peer("submit.py"))
        .args([
            "send",
            "--port",
            &port.to_string(),
            "--from",
            from,
            "--file",
        ])
        .arg(msg);
    for t in to {
        c.args(["--to", t]);
    }
    if let Some(mech) = auth {
        c.args(["--user", USER, "--password", password, "--auth", mech]);
    }
    c.args(extra);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "submit.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Run swaks with `args` against `port`; returns (success, transcript).
pub fn swaks(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}"), "--timeout", "30"])
        .args(args)
        .output()
        .expect("swaks (run tests/install-deps.sh)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// swaks with AUTH PLAIN as [`USER`] with `password`, then `args`.
pub fn swaks_auth(port: u16, password: &str, args: &[&str]) -> (bool, String) {
    swaks_as(port, USER, password, args)
}

/// swaks with AUTH PLAIN as `user`.
pub fn swaks_as(port: u16, user: &str, password: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec![
        "--auth",
        "PLAIN",
        "--auth-user",
        user,
        "--auth-password",
        password,
    ];
    all.extend_from_slice(args);
    swaks(port, &all)
}

/// Assert that a [`smtplib_send`] verdict is a refusal at `stage` with `code`.
pub fn assert_refused(verdict: &serde_json::Value, stage: &str, code: i64) {
    assert_eq!(
        (verdict["stage"].as_str(), verdict["code"].as_i64()),
        (Some(stage), Some(code)),
        "{verdict}"
    );
}

/// The first line an SMTP server at `port` sends within `limit` (empty if
/// none came).
pub fn greeting(port: u16, limit: Duration) -> String {
    use std::io::BufRead;
    let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(limit)).unwrap();
    let mut line = String::new();
    let _ = std::io::BufReader::new(s).read_line(&mut line);
    line
}

/// Submit one message with swaks (AUTH PLAIN as [`USER`]) to `to` with
/// `body`, and assert that the mote accepted it.
pub fn submit(port: u16, to: &str, body: &str) {
    let (ok, t) = swaks_auth(port, PASSWORD, &["--to", to, "--body", body]);
    assert!(ok, "{t}");
}

/// Like [`submit`], with an envelope sender.
pub fn submit_from(port: u16, from: &str, to: &str, body: &str) {
    let (ok, t) = swaks_auth(
        port,
        PASSWORD,
        &["--from", from, "--to", to, "--body", body],
    );
    assert!(ok, "{t}");
}

impl Mote {
    /// `dustmote queue` output (`args` such as `--show-addresses`).
    pub fn queue_text(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.queue(args).stdout).into_owned()
    }

    /// (queued, in flight) from `dustmote queue`.
    pub fn queue_counts(&self) -> Option<(u64, u64)> {
        let text = self.queue_text(&[]);
        let num = |key: &str| -> Option<u64> {
            text.lines()
                .find(|l| l.starts_with(key))?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
        };
        Some((num("queued:")?, num("in flight:")?))
    }

    /// Wait until nothing is queued or in flight (so nothing more can reach
    /// the next hop).
    pub fn wait_drained(&self, timeout: Duration) {
        let drained = wait_for(timeout, || {
            (self.queue_counts() == Some((0, 0))).then_some(())
        });
        assert!(
            drained.is_some(),
            "queue not drained: {:?}",
            self.queue_counts()
        );
    }
}

/// A private CA and a server certificate for 127.0.0.1, made with openssl(1).
pub fn make_certs(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=dustmote test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let p = |f: &str| dir.join(f).display().to_string();
    (p("ca.pem"), p("srv.pem"), p("srv.key"))
}

/// The value of the sample whose line starts with `prefix` (name and
/// labels, then a space) in an OpenMetrics text.
pub fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{prefix} not in {text}"))
}

/// The field names of a message header, in order, lower case.
pub fn header_names(header: &str) -> Vec<String> {
    header
        .lines()
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
        .collect()
}

/// The `Retry-After` seconds in a response head written in lower case.
pub fn retry_after(head: &str) -> u64 {
    head.lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .unwrap_or_else(|| panic!("no Retry-After in {head}"))
        .trim()
        .parse()
        .unwrap()
}

/// smtp-source (Postfix): `count` messages of `size` bytes from `sender`
/// over 4 sessions, each recipient numbered (`-N`), so no two are replays
/// of each other. Whether every message got 250.
pub fn smtp_source(port: u16, sender: &str, count: usize, size: usize) -> bool {
    Command::new("smtp-source")
        .args(["-c", "-N", "-s", "4", "-m", &count.to_string()])
        .args(["-l", &size.to_string(), "-M", "[127.0.0.1]", "-f", sender])
        .args(["-t", "sink@example.net"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .status()
        .expect("smtp-source (postfix)")
        .success()
}

/// curl `args` (silent, errors shown): (status, body).
pub fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&body[nl + 1..])
        .trim()
        .parse()
        .unwrap();
    body.truncate(nl);
    (code, body)
}
