//! `AUTH PLAIN` and `AUTH LOGIN`: the session's user (a configured user or
//! an account), with bounded failures.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::session::{read_line, trim_eol, Flow, Line, Session, MAX_AUTH_FAILURES};
use crate::access::auth::Verdict;
use crate::intake::Admission;

impl<'a, A, R, W> Session<'a, A, R, W>
where
    A: Admission,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Read one AUTH continuation line; `None` if cancelled or broken.
    pub(super) async fn auth_line(
        &mut self,
        prompt: &str,
    ) -> std::io::Result<Result<Vec<u8>, &'static str>> {
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

    pub(super) async fn auth(&mut self, arg: &str) -> std::io::Result<Flow> {
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

    pub(super) async fn auth_failed(&mut self) -> std::io::Result<Flow> {
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
