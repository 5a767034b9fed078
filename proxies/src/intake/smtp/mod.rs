//! The ESMTP submission server (ingress).
//!
//! One task per connection. Replies are buffered and flushed only when the
//! client has nothing more in flight (the input buffer is empty), which is
//! what makes PIPELINING cheap. A message is answered `250` only after the
//! [`Admission`] returned, i.e. after it was fsynced.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use dust_mixer::Once;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::access::accounts::{one, Accounts, Exceeded, Holder, SessionSlot, MAIL, MAIL_BYTES};
use crate::access::auth::{Users, Verdict, Verifier};
use crate::item::mail::{replay_digest, sanitize, SanitizeError, SanitizeOptions, StoredMail};

use crate::intake::strangers::{self, Strangers, Ticket};
use crate::intake::{Admission, IntakeError};

/// Settings of the SMTP endpoint (`[smtp]`).
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Name in the greeting and EHLO reply. Neutral by default.
    pub hostname: String,
    /// Largest accepted message (after dot-unstuffing), in bytes (552).
    pub max_message_bytes: usize,
    /// Recipients per message (452 beyond).
    pub max_recipients: usize,
    /// Longest command or text line, CRLF included (500 beyond).
    pub max_line_bytes: usize,
    /// Idle time allowed while waiting for a command (421 after).
    pub command_timeout: Duration,
    /// Idle time allowed between two reads inside DATA (421 after).
    pub data_timeout: Duration,
    /// Sessions served at once; more are told 421 and closed.
    pub max_connections: usize,
    /// Refuse MAIL (530) until the client authenticated.
    pub require_auth: bool,
    /// Who may authenticate.
    pub users: Users,
    /// Header sanitizing options.
    pub sanitize: SanitizeOptions,
    /// The same message (envelope and text) submitted again within this
    /// time is answered 250 but stored only once; `None`: off.
    pub replay_window: Option<Duration>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            hostname: "dustmote.invalid".into(),
            max_message_bytes: 10 * 1024 * 1024,
            max_recipients: 100,
            max_line_bytes: 1000,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_connections: 64,
            require_auth: true,
            users: Users::default(),
            sanitize: SanitizeOptions::default(),
            replay_window: Some(Duration::from_secs(3600)),
        }
    }
}

/// The server: accepts connections until `shutdown` turns true.
pub struct Server<A> {
    cfg: Arc<SmtpConfig>,
    admission: Arc<A>,
    verifier: Arc<Verifier>,
    /// Accounts made while the mote runs (quotas, sessions, revocation).
    accounts: Option<Arc<Accounts>>,
    slots: Arc<Semaphore>,
    strangers: Arc<parking_lot::Mutex<Strangers>>,
}

impl<A: Admission> Server<A> {
    /// A server admitting through `admission`, its users those of `cfg`.
    pub fn new(cfg: SmtpConfig, admission: Arc<A>) -> Self {
        let verifier = Arc::new(Verifier::new(cfg.users.clone()));
        let slots = Arc::new(Semaphore::new(cfg.max_connections));
        Self {
            cfg: Arc::new(cfg),
            admission,
            verifier,
            accounts: None,
            slots,
            strangers: Arc::new(parking_lot::Mutex::new(Strangers::new(
                strangers::SMTP_MIN_AGE,
            ))),
        }
    }

    /// Users checked by `verifier` (made with the configuration's users)
    /// and `accounts`, which add and remove users in it while the mote
    /// runs.
    pub fn accounts(mut self, verifier: Arc<Verifier>, accounts: Arc<Accounts>) -> Self {
        self.verifier = verifier;
        self.accounts = Some(accounts);
        self
    }

    /// Accept connections until `shutdown` becomes true, then wait up to
    /// `grace` for open sessions (which are told 421 at their next command).
    pub async fn serve(
        &self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let (sock, _peer) = match conn {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            let (rd, mut wr) = sock.into_split();
            let cfg = Arc::clone(&self.cfg);
            let admission = Arc::clone(&self.admission);
            let verifier = Arc::clone(&self.verifier);
            let accounts = self.accounts.clone();
            let (slots, strangers) = (Arc::clone(&self.slots), Arc::clone(&self.strangers));
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let Some(permit) = strangers::slot(&slots, &strangers, false).await else {
                    let msg = format!(
                        "421 4.3.2 {} Too many connections, try again later\r\n",
                        cfg.hostname
                    );
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), wr.write_all(msg.as_bytes()))
                            .await;
                    return;
                };
                let ticket = cfg.require_auth.then(|| Ticket::new(&strangers));
                let mut s = Session::new(&cfg, &*admission, &verifier, rd, wr, shutdown, ticket);
                s.accounts = accounts;
                if let Err(e) = s.run().await {
                    tracing::debug!(error = %e, "session ended with an I/O error");
                }
                drop(s);
                drop(permit);
            });
        }
        let all = self.cfg.max_connections as u32;
        let _ = tokio::time::timeout(grace, self.slots.acquire_many(all)).await;
    }
}

/// Result of reading one line.
enum Line {
    /// A complete line, terminator included (in the buffer).
    Ok,
    /// Longer than the limit; consumed up to its end and discarded.
    /// `crlf`: whether it ended in CRLF (not a bare LF), which decides
    /// whether a `.` line after it ends DATA.
    TooLong {
        /// Ended in CRLF.
        crlf: bool,
    },
    /// The peer closed the connection.
    Eof,
}

/// Read one line (up to and including LF) of at most `limit` bytes.
async fn read_line<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    out: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Line> {
    out.clear();
    let mut too_long = false;
    // The byte consumed last (for a CR right before an LF in the next
    // buffer).
    let mut prev = 0u8;
    loop {
        let buf = rd.fill_buf().await?;
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !too_long && out.len() + take <= limit {
            out.extend_from_slice(&buf[..take]);
        } else {
            too_long = true;
            out.clear();
        }
        let crlf = match take {
            1 => prev == b'\r',
            n => buf[n - 2] == b'\r',
        };
        prev = buf[take - 1];
        rd.consume(take);
        if done {
            return Ok(if too_long {
                Line::TooLong { crlf }
            } else {
                Line::Ok
            });
        }
    }
}

enum Flow {
    Continue,
    Close,
}

struct Session<'a, A, R, W> {
    cfg: &'a SmtpConfig,
    admission: &'a A,
    verifier: &'a Verifier,
    /// When the session started (for the session and AUTH deadlines).
    started: tokio::time::Instant,
    /// Commands before a successful AUTH.
    unauthenticated_commands: u32,
    /// Its place among the sessions that have not authenticated (dropped
    /// at AUTH).
    ticket: Option<Ticket>,
    rd: BufReader<R>,
    wr: BufWriter<W>,
    shutdown: watch::Receiver<bool>,
    greeted: bool,
    user: Option<String>,
    from: Option<String>,
    /// This transaction's MAIL carried SMTPUTF8.
    smtputf8: bool,
    rcpts: Vec<String>,
    auth_failures: u32,
    errors: u32,
    line: Vec<u8>,
    /// The mote's accounts, if it has any.
    accounts: Option<Arc<Accounts>>,
    /// The session's place under its account's quota (an account's
    /// session only).
    slot: Option<SessionSlot>,
    /// The account (and SMTP credential) this session authenticated as:
    /// the session ends when it no longer stands.
    holder: Option<Holder>,
}

/// Close the session after this many failed AUTH attempts.
const MAX_AUTH_FAILURES: u32 = 3;
/// A session that needs AUTH must have authenticated this long after
/// connecting, or it is closed (421): strangers cannot hold a slot idly.
const AUTH_DEADLINE: Duration = Duration::from_secs(60);
/// Commands a session may send before it authenticates (EHLO, AUTH and a
/// few retries fit easily); more: 421.
const MAX_UNAUTHENTICATED_COMMANDS: u32 = 10;
/// The longest a session may last (a real client submits and leaves);
/// longer: 421 at the next command or wait.
const MAX_SESSION: Duration = Duration::from_secs(30 * 60);
/// Close the session after this many rejected commands.
const MAX_ERRORS: u32 = 20;

impl<'a, A, R, W> Session<'a, A, R, W>
where
    A: Admission,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    fn new(
        cfg: &'a SmtpConfig,
        admission: &'a A,
        verifier: &'a Verifier,
        rd: R,
        wr: W,
        shutdown: watch::Receiver<bool>,
        ticket: Option<Ticket>,
    ) -> Self {
        Self {
            cfg,
            admission,
            verifier,
            ticket,
            started: tokio::time::Instant::now(),
            unauthenticated_commands: 0,
            rd: BufReader::with_capacity(16 * 1024, rd),
            wr: BufWriter::with_capacity(8 * 1024, wr),
            shutdown,
            greeted: false,
            user: None,
            from: None,
            smtputf8: false,
            rcpts: Vec::new(),
            auth_failures: 0,
            errors: 0,
            line: Vec::with_capacity(1024),
            accounts: None,
            slot: None,
            holder: None,
        }
    }

    /// Completes when this session's account has ended (revoked or
    /// expired) or its credentials were issued anew (a card); never for a
    /// configured user or before AUTH.
    fn account_ended(&self) -> impl Future<Output = ()> + 'static {
        let ended = self.holder.as_ref().map(Holder::ended);
        async move {
            match ended {
                Some(ended) => ended.await,
                None => futures::future::pending().await,
            }
        }
    }

    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        self.wr.write_all(text.as_bytes()).await?;
        self.wr.write_all(b"\r\n").await
    }

    /// Flush replies unless the client already sent more (pipelining).
    async fn flush_if_idle(&mut self) -> std::io::Result<()> {
        if self.rd.buffer().is_empty() {
            self.wr.flush().await?;
        }
        Ok(())
    }

    async fn close_with(&mut self, text: &str) -> std::io::Result<()> {
        self.reply(text).await?;
        self.wr.flush().await?;
        let _ = self.wr.shutdown().await;
        Ok(())
    }

    async fn run(&mut self) -> std::io::Result<()> {
        let greeting = format!("220 {} ESMTP", self.cfg.hostname);
        self.reply(&greeting).await?;
        loop {
            self.flush_if_idle().await?;
            let limit = self.cfg.max_line_bytes;
            // The idle limit, cut short by the session's own deadlines.
            let left = self
                .deadline()
                .saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                let msg = format!("421 4.4.2 {} Session too long, closing", self.cfg.hostname);
                return self.close_with(&msg).await;
            }
            let timeout = self.cfg.command_timeout.min(left);
            let revoked = self.account_ended();
            let read = {
                let Self {
                    rd,
                    line,
                    shutdown,
                    ticket,
                    ..
                } = self;
                let evicted = async {
                    match ticket {
                        Some(t) => t.evict.notified().await,
                        None => futures::future::pending().await,
                    }
                };
                tokio::select! {
                    r = tokio::time::timeout(timeout, read_line(rd, line, limit)) => Ok(r),
                    _ = shutdown.wait_for(|s| *s) => Err("421 4.3.2 Service shutting down"),
                    _ = evicted => Err("421 4.7.0 Too many connections without authentication"),
                    _ = revoked => Err("421 4.7.0 This account has ended or has new credentials, closing connection"),
                }
            };
            let line = match read {
                Err(why) => {
                    // "421 x.y.z" + " " + hostname + the text.
                    let (code, text) = why.split_at(9);
                    let msg = format!("{code} {}{text}", self.cfg.hostname);
                    return self.close_with(&msg).await;
                }
                Ok(Err(_)) => {
                    let msg = format!(
                        "421 4.4.2 {} Timeout, closing connection",
                        self.cfg.hostname
                    );
                    return self.close_with(&msg).await;
                }
                Ok(Ok(r)) => r?,
            };
            let flow = match line {
                Line::Eof => return Ok(()),
                Line::TooLong { .. } => self.error("500 5.5.2 Line too long").await?,
                Line::Ok if self.needs_auth() => {
                    self.unauthenticated_commands += 1;
                    if self.unauthenticated_commands > MAX_UNAUTHENTICATED_COMMANDS {
                        let msg = format!(
                            "421 4.7.0 {} Too many commands without authentication",
                            self.cfg.hostname
                        );
                        return self.close_with(&msg).await;
                    }
                    self.dispatch().await?
                }
                Line::Ok => self.dispatch().await?,
            };
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    /// Whether this session still has to authenticate.
    fn needs_auth(&self) -> bool {
        self.cfg.require_auth && self.user.is_none()
    }

    /// When the session ends at the latest: [`MAX_SESSION`] after it began,
    /// or [`AUTH_DEADLINE`] while it has not authenticated.
    fn deadline(&self) -> tokio::time::Instant {
        let limit = if self.needs_auth() {
            AUTH_DEADLINE
        } else {
            MAX_SESSION
        };
        self.started + limit
    }

    /// Run the command in the line buffer.
    async fn dispatch(&mut self) -> std::io::Result<Flow> {
        let text = trim_eol(&self.line);
        match std::str::from_utf8(text) {
            Ok(t) => {
                let t = t.to_string();
                self.command(&t).await
            }
            Err(_) => self.error("500 5.5.2 Command is not valid UTF-8").await,
        }
    }

    /// Reply with an error; close after too many.
    async fn error(&mut self, text: &str) -> std::io::Result<Flow> {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            let msg = format!(
                "421 4.7.0 {} Too many errors, closing connection",
                self.cfg.hostname
            );
            self.close_with(&msg).await?;
            return Ok(Flow::Close);
        }
        self.reply(text).await?;
        Ok(Flow::Continue)
    }

    fn reset(&mut self) {
        self.from = None;
        self.smtputf8 = false;
        self.rcpts.clear();
    }

    async fn command(&mut self, line: &str) -> std::io::Result<Flow> {
        let (verb, arg) = match line.find(' ') {
            Some(i) => (&line[..i], line[i + 1..].trim()),
            None => (line, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if arg.is_empty() => {
                self.error("501 5.5.4 Syntax: EHLO hostname").await
            }
            "EHLO" => {
                self.reset();
                self.greeted = true;
                let mut r = format!(
                    "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n",
                    self.cfg.hostname, self.cfg.max_message_bytes
                );
                if !self.verifier.users().is_empty() && self.user.is_none() {
                    r.push_str("250-AUTH PLAIN LOGIN\r\n");
                }
                r.push_str("250 ENHANCEDSTATUSCODES");
                self.reply(&r).await?;
                Ok(Flow::Continue)
            }
            "HELO" => {
                self.reset();
                self.greeted = true;
                let r = format!("250 {}", self.cfg.hostname);
                self.reply(&r).await?;
                Ok(Flow::Continue)
            }
            "MAIL" => self.mail(arg).await,
            "RCPT" => self.rcpt(arg).await,
            "DATA" if !arg.is_empty() => self.error("501 5.5.4 Syntax: DATA").await,
            "DATA" => self.data().await,
            "RSET" => {
                self.reset();
                self.reply("250 2.0.0 Ok").await?;
                Ok(Flow::Continue)
            }
            "NOOP" => {
                self.reply("250 2.0.0 Ok").await?;
                Ok(Flow::Continue)
            }
            "QUIT" => {
                self.close_with("221 2.0.0 Bye").await?;
                Ok(Flow::Close)
            }
            "AUTH" => self.auth(arg).await,
            "VRFY" => {
                self.reply("252 2.5.2 Cannot VRFY user").await?;
                Ok(Flow::Continue)
            }
            "HELP" => {
                self.reply("214 2.0.0 See RFC 5321").await?;
                Ok(Flow::Continue)
            }
            _ => self.error("500 5.5.2 Command not recognized").await,
        }
    }

    async fn mail(&mut self, arg: &str) -> std::io::Result<Flow> {
        if !self.greeted {
            return self.error("503 5.5.1 Send EHLO or HELO first").await;
        }
        if self.cfg.require_auth && self.user.is_none() {
            return self.error("530 5.7.0 Authentication required").await;
        }
        if self.from.is_some() {
            return self.error("503 5.5.1 Nested MAIL command").await;
        }
        let Some((addr, params)) = path_arg(arg, "FROM:") else {
            return self.error("501 5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        let mut utf8 = false;
        let mut size = 0;
        for p in params.split_ascii_whitespace() {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.to_ascii_uppercase().as_str() {
                "SIZE" => match v.parse::<u64>() {
                    Ok(n) if n > self.cfg.max_message_bytes as u64 => {
                        return self
                            .error("552 5.3.4 Message size exceeds fixed maximum message size")
                            .await;
                    }
                    Ok(n) => size = n,
                    Err(_) => return self.error("501 5.5.4 Bad SIZE parameter").await,
                },
                "BODY" if v.eq_ignore_ascii_case("8BITMIME") || v.eq_ignore_ascii_case("7BIT") => {}
                "SMTPUTF8" if v.is_empty() => utf8 = true,
                _ => return self.error("555 5.5.4 Unsupported MAIL parameter").await,
            }
        }
        if !addr.is_ascii() && !utf8 {
            return self
                .error("553 5.6.7 Non-ASCII address requires SMTPUTF8")
                .await;
        }
        if !addr.is_empty() && lettre::Address::from_str(addr).is_err() {
            return self.error("501 5.1.7 Bad sender address syntax").await;
        }
        if let Some(reply) = self.quota_refusal(size) {
            self.reply(&reply).await?;
            return Ok(Flow::Continue);
        }
        if !self.admission.has_room(size) {
            // Not the client's fault: no error counted, try again later.
            self.reply("452 4.3.1 Insufficient system storage, try again later")
                .await?;
            return Ok(Flow::Continue);
        }
        self.smtputf8 = utf8;
        self.from = Some(addr.to_string());
        self.reply("250 2.1.0 Ok").await?;
        Ok(Flow::Continue)
    }

    async fn rcpt(&mut self, arg: &str) -> std::io::Result<Flow> {
        if self.from.is_none() {
            return self.error("503 5.5.1 Need MAIL before RCPT").await;
        }
        let Some((addr, params)) = path_arg(arg, "TO:") else {
            return self.error("501 5.5.4 Syntax: RCPT TO:<address>").await;
        };
        if !params.trim().is_empty() {
            return self.error("555 5.5.4 Unsupported RCPT parameter").await;
        }
        if !addr.is_ascii() && !self.smtputf8 {
            return self
                .error("553 5.6.7 Non-ASCII address requires SMTPUTF8")
                .await;
        }
        if addr.is_empty() || lettre::Address::from_str(addr).is_err() {
            return self.error("501 5.1.3 Bad recipient address syntax").await;
        }
        if self.rcpts.len() >= self.cfg.max_recipients {
            self.reply("452 4.5.3 Too many recipients").await?;
            return Ok(Flow::Continue);
        }
        self.rcpts.push(addr.to_string());
        self.reply("250 2.1.5 Ok").await?;
        Ok(Flow::Continue)
    }

    async fn data(&mut self) -> std::io::Result<Flow> {
        if self.from.is_none() {
            return self.error("503 5.5.1 Need MAIL command").await;
        }
        if self.rcpts.is_empty() {
            return self.error("554 5.5.1 No valid recipients").await;
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        self.wr.flush().await?;
        let max = self.cfg.max_message_bytes;
        let mut msg = Vec::with_capacity(max.min(64 * 1024));
        let (mut oversize, mut too_long) = (false, false);
        // Only CRLF "." CRLF ends DATA: the line before the dot must have
        // ended in CRLF too (the 354 reply counts as such a boundary).
        let mut after_crlf = true;
        loop {
            let read = tokio::time::timeout(
                self.cfg.data_timeout,
                read_line(&mut self.rd, &mut self.line, self.cfg.max_line_bytes),
            )
            .await;
            let line = match read {
                Err(_) => {
                    let m = format!(
                        "421 4.4.2 {} Timeout during DATA, closing connection",
                        self.cfg.hostname
                    );
                    self.close_with(&m).await?;
                    return Ok(Flow::Close);
                }
                Ok(r) => r?,
            };
            match line {
                Line::Eof => return Ok(Flow::Close),
                Line::TooLong { crlf } => {
                    too_long = true;
                    after_crlf = crlf;
                    continue;
                }
                Line::Ok => {}
            }
            let l = &self.line;
            let crlf = l.ends_with(b"\r\n");
            if after_crlf && l.as_slice() == b".\r\n" {
                break;
            }
            after_crlf = crlf;
            let content = trim_eol(l);
            let content = content.strip_prefix(b".").unwrap_or(content);
            if msg.len() + content.len() + 2 > max {
                oversize = true;
            }
            if !oversize && !too_long {
                msg.extend_from_slice(content);
                msg.extend_from_slice(b"\r\n");
            }
        }
        let (from, rcpts) = (
            self.from.take().unwrap_or_default(),
            std::mem::take(&mut self.rcpts),
        );
        if oversize {
            self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
                .await?;
            return Ok(Flow::Continue);
        }
        if too_long {
            self.reply("500 5.5.2 Message line too long").await?;
            return Ok(Flow::Continue);
        }
        let sanitized = {
            let mut rng = rand::rng();
            sanitize(&msg, self.cfg.sanitize, &mut rng)
        };
        let message = match sanitized {
            Ok(m) => m,
            Err(e) => {
                let reply = match e {
                    SanitizeError::BadFieldName => {
                        "550 5.6.0 Header field name is not printable US-ASCII"
                    }
                    SanitizeError::BareCrOrNul => "550 5.6.0 Message contains NUL or bare CR",
                };
                self.reply(reply).await?;
                return Ok(Flow::Continue);
            }
        };
        let once = self.cfg.replay_window.map(|window| Once {
            digest: replay_digest(&from, &rcpts, &msg),
            window,
            exact: false,
        });
        // Counted before the admission (durable with its fsync); taken
        // back if it fails. A replay is counted again (an over-count).
        let charged = match self.charge(message.len() as u64) {
            Ok(c) => c,
            Err(reply) => {
                self.reply(&reply).await?;
                return Ok(Flow::Continue);
            }
        };
        let payload = StoredMail {
            from,
            rcpts,
            message,
            smtputf8: self.smtputf8,
        }
        .encode();
        let admitted = self.admission.admit(payload, once).await;
        if admitted.is_err() {
            if let Some(a) = &self.accounts {
                a.refund(charged);
            }
        }
        match admitted {
            Ok(()) => {
                self.reply("250 2.0.0 Ok: queued").await?;
                Ok(Flow::Continue)
            }
            Err(IntakeError::Expiring { .. }) => {
                self.reply("452 4.3.1 This mote expires soon and takes no new mail")
                    .await?;
                Ok(Flow::Continue)
            }
            Err(IntakeError::NoSpace) => {
                self.reply("452 4.3.1 Insufficient system storage, try again later")
                    .await?;
                Ok(Flow::Continue)
            }
            Err(e @ (IntakeError::Failed(_) | IntakeError::Exists)) => {
                tracing::error!(error = %e, "admission failed; client told 451");
                self.reply("451 4.3.0 Temporary storage failure, try again later")
                    .await?;
                Ok(Flow::Continue)
            }
            Err(IntakeError::ShuttingDown) => {
                let m = format!(
                    "421 4.3.2 {} Service shutting down, message not accepted",
                    self.cfg.hostname
                );
                self.close_with(&m).await?;
                Ok(Flow::Close)
            }
        }
    }

    /// The reply refusing a message of about `size` bytes (0: unknown)
    /// at MAIL, if the account's quota for today is used up.
    fn quota_refusal(&self, size: u64) -> Option<String> {
        let (a, user) = (self.accounts.as_ref()?, self.user.as_ref()?);
        let room = |which| a.room(user, which).unwrap_or(u64::MAX);
        if room(MAIL) == 0 {
            return Some(quota_reply(&a.exceeded(MAIL)));
        }
        let bytes = room(MAIL_BYTES);
        (bytes == 0 || size > bytes).then(|| quota_reply(&a.exceeded(MAIL_BYTES)))
    }

    /// Count a message of `bytes` against the account's quotas.
    fn charge(&self, bytes: u64) -> Result<Option<crate::access::accounts::Charged>, String> {
        let (Some(a), Some(user)) = (&self.accounts, &self.user) else {
            return Ok(None);
        };
        let mut delta = one(MAIL, 1);
        delta[MAIL_BYTES] = bytes;
        match a.charge(user, delta) {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(over)) => Err(quota_reply(&over)),
            Err(e) => {
                tracing::error!(error = %e, "counting usage failed; client told 451");
                Err("451 4.3.0 Temporary storage failure, try again later".into())
            }
        }
    }

    /// Read one AUTH continuation line; `None` if cancelled or broken.
    async fn auth_line(&mut self, prompt: &str) -> std::io::Result<Result<Vec<u8>, &'static str>> {
        self.reply(prompt).await?;
        self.wr.flush().await?;
        let read = tokio::time::timeout(
            self.cfg.command_timeout,
            read_line(&mut self.rd, &mut self.line, self.cfg.max_line_bytes),
        )
        .await;
        match read {
            Err(_) | Ok(Ok(Line::Eof)) => Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Line::TooLong { .. })) => Ok(Err("500 5.5.2 Line too long")),
            Ok(Ok(Line::Ok)) => {
                let t = trim_eol(&self.line);
                if t == b"*" {
                    return Ok(Err("501 5.0.0 Authentication cancelled"));
                }
                Ok(B64.decode(t).map_err(|_| "501 5.5.2 Invalid base64 data"))
            }
        }
    }

    async fn auth(&mut self, arg: &str) -> std::io::Result<Flow> {
        if self.verifier.users().is_empty() {
            return self.error("503 5.5.1 AUTH not available").await;
        }
        if self.user.is_some() {
            return self.error("503 5.5.1 Already authenticated").await;
        }
        if self.from.is_some() {
            return self
                .error("503 5.5.1 AUTH not allowed during a mail transaction")
                .await;
        }
        let (mech, initial) = match arg.split_once(' ') {
            Some((m, i)) => (m, Some(i.trim())),
            None => (arg, None),
        };
        let decode = |s: &str| {
            if s == "=" {
                Ok(Vec::new())
            } else {
                B64.decode(s).map_err(|_| "501 5.5.2 Invalid base64 data")
            }
        };
        let creds = match mech.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let data = match initial {
                    Some(i) => decode(i),
                    None => match self.auth_line("334 ").await? {
                        Ok(d) => Ok(d),
                        Err(e) => Err(e),
                    },
                };
                data.and_then(|d| {
                    let mut parts = d.split(|&b| b == 0);
                    match (parts.next(), parts.next(), parts.next(), parts.next()) {
                        (Some(authz), Some(user), Some(pass), None)
                            if authz.is_empty() || authz == user =>
                        {
                            Ok((user.to_vec(), pass.to_vec()))
                        }
                        _ => Err("501 5.5.2 Malformed PLAIN response"),
                    }
                })
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => decode(i),
                    None => self.auth_line("334 VXNlcm5hbWU6").await?,
                };
                match user {
                    Ok(u) => self.auth_line("334 UGFzc3dvcmQ6").await?.map(|p| (u, p)),
                    Err(e) => Err(e),
                }
            }
            _ => Err("504 5.5.4 Unrecognized authentication mechanism"),
        };
        let (user, pass) = match creds {
            Ok(c) => c,
            Err(e) => return self.error(e).await,
        };
        let Ok(user) = String::from_utf8(user) else {
            return self.auth_failed().await;
        };
        // The account's credentials as they were before the check: if a
        // card replaces them meanwhile, this session ends with the old ones.
        let holder = self.accounts.as_ref().and_then(|a| a.holder(&user, false));
        match self.verifier.verify(&user, &pass).await {
            Verdict::Ok => {
                self.holder = holder;
                // An account's sessions at once are bounded by its quota.
                if let Some(a) = &self.accounts {
                    match a.open_session(&user, false) {
                        Ok(slot) => self.slot = slot,
                        Err(()) => {
                            return self
                                .error(
                                    "454 4.7.0 Too many sessions for this account, try again later",
                                )
                                .await
                        }
                    }
                }
                self.user = Some(user);
                self.ticket = None;
                self.reply("235 2.7.0 Authentication successful").await?;
                Ok(Flow::Continue)
            }
            Verdict::Wrong => {
                if let Some(t) = &self.ticket {
                    t.failed();
                }
                self.auth_failed().await
            }
            // RFC 4954: a temporary failure; the client may try later.
            Verdict::Busy(_) => {
                if let Some(t) = &self.ticket {
                    t.failed();
                }
                self.error("454 4.7.0 Temporary authentication failure, try again later")
                    .await
            }
        }
    }

    async fn auth_failed(&mut self) -> std::io::Result<Flow> {
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            let m = format!(
                "421 4.7.0 {} Too many failed authentications",
                self.cfg.hostname
            );
            self.close_with(&m).await?;
            return Ok(Flow::Close);
        }
        self.reply("535 5.7.8 Authentication credentials invalid")
            .await?;
        Ok(Flow::Continue)
    }
}

/// The reply for a daily quota used up: messages `452 4.5.3`, bytes
/// `552 5.2.3` (RFC 3463: the message exceeds an administrative limit).
fn quota_reply(over: &Exceeded) -> String {
    let resets = over.resets();
    if over.which == MAIL {
        format!("452 4.5.3 Daily message quota of this account reached; it resets at {resets}")
    } else {
        format!("552 5.2.3 Daily byte quota of this account exceeded; it resets at {resets}")
    }
}

fn trim_eol(l: &[u8]) -> &[u8] {
    let l = l.strip_suffix(b"\n").unwrap_or(l);
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// Parse `FROM:<addr> params` / `TO:<addr> params` (keyword case-insensitive,
/// optional space after the colon). Returns the address without brackets.
fn path_arg<'l>(arg: &'l str, keyword: &str) -> Option<(&'l str, &'l str)> {
    // `get`, not indexing: a non-ASCII character across the keyword's end
    // (`MAIL FROM\u{24601}…`) would panic on a str slice.
    if !arg.get(..keyword.len())?.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some((&rest[..end], &rest[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any command argument: no panic, and an address found ends at the
        /// first `>`.
        #[test]
        fn any_path_argument_parses_without_a_panic(arg in "(?i)(from|to):? ?<?[^\\r\\n]{0,60}") {
            for kw in ["FROM:", "TO:"] {
                if let Some((addr, _)) = path_arg(&arg, kw) {
                    proptest::prop_assert!(!addr.contains('>'), "{arg:?}");
                }
            }
        }
    }

    #[test]
    fn paths_are_parsed() {
        assert_eq!(
            path_arg("FROM:<a@b> SIZE=10", "FROM:"),
            Some(("a@b", " SIZE=10"))
        );
        assert_eq!(path_arg("from: <>", "FROM:"), Some(("", "")));
        assert_eq!(path_arg("TO:a@b", "TO:"), None);
        assert_eq!(path_arg("FROM<a@b>", "FROM:"), None);
        assert_eq!(path_arg("F", "FROM:"), None);
    }
}

/// Entry points for `cargo fuzz` (see `fuzz/`).
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::OnceLock;

    use super::*;

    /// Takes every message (after the session sanitized it).
    struct AcceptAll;

    impl Admission for AcceptAll {
        async fn admit(&self, payload: Vec<u8>, _once: Option<Once>) -> Result<(), IntakeError> {
            // What was admitted decodes again.
            assert!(crate::item::mail::StoredMail::decode(&payload).is_ok());
            Ok(())
        }
    }

    /// Run one session in which the client sends `input` (no authentication
    /// required; small limits so that the limits are reached). The input
    /// ends in EOF, so no read waits for a timeout. Returns the server's
    /// replies.
    pub fn session(input: &[u8]) -> Vec<u8> {
        static VERIFIER: OnceLock<Verifier> = OnceLock::new();
        let verifier = VERIFIER.get_or_init(|| Verifier::new(Users::default()));
        let cfg = SmtpConfig {
            max_message_bytes: 64 * 1024,
            max_recipients: 5,
            require_auth: false,
            ..SmtpConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
        let mut out = Vec::new();
        runtime.block_on(async {
            let (_tx, shutdown) = watch::channel(false);
            let mut s = Session::new(&cfg, &AcceptAll, verifier, input, &mut out, shutdown, None);
            let _ = s.run().await;
        });
        out
    }
}
