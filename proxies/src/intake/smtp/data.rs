//! `DATA`: the message, sanitized, charged to its account and handed to
//! the mix; `250` only once it is durably admitted.

use dust_mixer::Once;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::session::{read_line, trim_eol, Flow, Line, Session};
use crate::access::quota::{Counter, Counters, Exceeded};
use crate::intake::{Admission, IntakeError};
use crate::item::mail::{replay_digest, sanitize, SanitizeError, StoredMail};

impl<'a, A, R, W> Session<'a, A, R, W>
where
    A: Admission,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn data(&mut self) -> std::io::Result<Flow> {
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
    pub(super) fn quota_refusal(&self, size: u64) -> Option<String> {
        let (a, user) = (self.accounts.as_ref()?, self.user.as_ref()?);
        let room = |which| a.room(user, which).unwrap_or(u64::MAX);
        if room(Counter::Mail) == 0 {
            return Some(quota_reply(&a.exceeded(Counter::Mail)));
        }
        let bytes = room(Counter::MailBytes);
        (bytes == 0 || size > bytes).then(|| quota_reply(&a.exceeded(Counter::MailBytes)))
    }

    /// Count a message of `bytes` against the account's quotas.
    pub(super) fn charge(
        &self,
        bytes: u64,
    ) -> Result<Option<crate::access::accounts::Charged>, String> {
        let (Some(a), Some(user)) = (&self.accounts, &self.user) else {
            return Ok(None);
        };
        let delta = Counters {
            mail: 1,
            mail_bytes: bytes,
            ..Counters::default()
        };
        match a.charge(user, delta) {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(over)) => Err(quota_reply(&over)),
            Err(e) => {
                tracing::error!(error = %e, "counting usage failed; client told 451");
                Err("451 4.3.0 Temporary storage failure, try again later".into())
            }
        }
    }
}

/// The reply for a daily quota used up: messages `452 4.5.3`, bytes
/// `552 5.2.3` (RFC 3463: the message exceeds an administrative limit).
pub(super) fn quota_reply(over: &Exceeded) -> String {
    let resets = over.resets();
    if over.which == Counter::Mail {
        format!("452 4.5.3 Daily message quota of this account reached; it resets at {resets}")
    } else {
        format!("552 5.2.3 Daily byte quota of this account exceeded; it resets at {resets}")
    }
}
