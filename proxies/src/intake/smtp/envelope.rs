//! `MAIL FROM` and `RCPT TO`: the envelope of a transaction.

use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};

use super::session::{Flow, Session};
use crate::intake::Admission;

impl<'a, A, R, W> Session<'a, A, R, W>
where
    A: Admission,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(super) async fn mail(&mut self, arg: &str) -> std::io::Result<Flow> {
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

    pub(super) async fn rcpt(&mut self, arg: &str) -> std::io::Result<Flow> {
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
}

/// Parse `FROM:<addr> params` / `TO:<addr> params` (keyword case-insensitive,
/// optional space after the colon). Returns the address without brackets.
pub(super) fn path_arg<'l>(arg: &'l str, keyword: &str) -> Option<(&'l str, &'l str)> {
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
