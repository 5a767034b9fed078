//! One SMTP session: reading lines, the state machine and the dispatch of
//! each command to its verb.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::watch;

use super::SmtpConfig;
use crate::access::accounts::{Accounts, Holder, SessionSlot};
use crate::access::auth::Verifier;
use crate::intake::strangers::Ticket;
use crate::intake::Admission;

/// Result of reading one line.
pub(super) enum Line {
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
pub(super) async fn read_line<R: AsyncRead + Unpin>(
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

pub(super) enum Flow {
    Continue,
    Close,
}

pub(super) struct Session<'a, A, R, W> {
    pub(super) cfg: &'a SmtpConfig,
    pub(super) admission: &'a A,
    pub(super) verifier: &'a Verifier,
    /// When the session started (for the session and AUTH deadlines).
    pub(super) started: tokio::time::Instant,
    /// Commands before a successful AUTH.
    pub(super) unauthenticated_commands: u32,
    /// Its place among the sessions that have not authenticated (dropped
    /// at AUTH).
    pub(super) ticket: Option<Ticket>,
    pub(super) rd: BufReader<R>,
    pub(super) wr: BufWriter<W>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) greeted: bool,
    pub(super) user: Option<String>,
    pub(super) from: Option<String>,
    /// This transaction's MAIL carried SMTPUTF8.
    pub(super) smtputf8: bool,
    pub(super) rcpts: Vec<String>,
    pub(super) auth_failures: u32,
    pub(super) errors: u32,
    pub(super) line: Vec<u8>,
    /// The mote's accounts, if it has any.
    pub(super) accounts: Option<Arc<Accounts>>,
    /// The session's place under its account's quota (an account's
    /// session only).
    pub(super) slot: Option<SessionSlot>,
    /// The account (and SMTP credential) this session authenticated as:
    /// the session ends when it no longer stands.
    pub(super) holder: Option<Holder>,
}

/// Close the session after this many failed AUTH attempts.
pub(super) const MAX_AUTH_FAILURES: u32 = 3;

/// A session that needs AUTH must have authenticated this long after
/// connecting, or it is closed (421): strangers cannot hold a slot idly.
pub(super) const AUTH_DEADLINE: Duration = Duration::from_secs(60);

/// Commands a session may send before it authenticates (EHLO, AUTH and a
/// few retries fit easily); more: 421.
pub(super) const MAX_UNAUTHENTICATED_COMMANDS: u32 = 10;

/// The longest a session may last (a real client submits and leaves);
/// longer: 421 at the next command or wait.
pub(super) const MAX_SESSION: Duration = Duration::from_secs(30 * 60);

/// Close the session after this many rejected commands.
pub(super) const MAX_ERRORS: u32 = 20;

pub(super) fn trim_eol(l: &[u8]) -> &[u8] {
    let l = l.strip_suffix(b"\n").unwrap_or(l);
    l.strip_suffix(b"\r").unwrap_or(l)
}

impl<'a, A, R, W> Session<'a, A, R, W>
where
    A: Admission,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) fn new(
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
    pub(super) fn account_ended(&self) -> impl Future<Output = ()> + 'static {
        let ended = self.holder.as_ref().map(Holder::ended);
        async move {
            match ended {
                Some(ended) => ended.await,
                None => futures::future::pending().await,
            }
        }
    }

    pub(super) async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        self.wr.write_all(text.as_bytes()).await?;
        self.wr.write_all(b"\r\n").await
    }

    /// Flush replies unless the client already sent more (pipelining).
    pub(super) async fn flush_if_idle(&mut self) -> std::io::Result<()> {
        if self.rd.buffer().is_empty() {
            self.wr.flush().await?;
        }
        Ok(())
    }

    pub(super) async fn close_with(&mut self, text: &str) -> std::io::Result<()> {
        self.reply(text).await?;
        self.wr.flush().await?;
        let _ = self.wr.shutdown().await;
        Ok(())
    }

    pub(super) async fn run(&mut self) -> std::io::Result<()> {
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
    pub(super) fn needs_auth(&self) -> bool {
        self.cfg.require_auth && self.user.is_none()
    }

    /// When the session ends at the latest: [`MAX_SESSION`] after it began,
    /// or [`AUTH_DEADLINE`] while it has not authenticated.
    pub(super) fn deadline(&self) -> tokio::time::Instant {
        let limit = if self.needs_auth() {
            AUTH_DEADLINE
        } else {
            MAX_SESSION
        };
        self.started + limit
    }

    /// Run the command in the line buffer.
    pub(super) async fn dispatch(&mut self) -> std::io::Result<Flow> {
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
    pub(super) async fn error(&mut self, text: &str) -> std::io::Result<Flow> {
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

    pub(super) fn reset(&mut self) {
        self.from = None;
        self.smtputf8 = false;
        self.rcpts.clear();
    }

    pub(super) async fn command(&mut self, line: &str) -> std::io::Result<Flow> {
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
}
