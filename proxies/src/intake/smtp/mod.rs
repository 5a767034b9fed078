//! The ESMTP submission server (ingress): accepting within limits
//! (`accept`), the session and its dispatch (`session`), one file per
//! concern of a transaction (`envelope`, `data`, `auth`).
//!
//! One task per connection. Replies are buffered and flushed only when the
//! client has nothing more in flight (the input buffer is empty), which is
//! what makes PIPELINING cheap. A message is answered `250` only after the
//! [`Admission`] returned, i.e. after it was fsynced.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::access::accounts::Accounts;
use crate::access::auth::{Users, Verifier};
use crate::intake::strangers::{self, Strangers};
use crate::intake::Admission;
use crate::item::mail::SanitizeOptions;

mod accept;
mod auth;
mod data;
mod envelope;
mod session;

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
}

/// Entry points for `cargo fuzz` (see `fuzz/`).
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::OnceLock;

    use dust_mixer::Once;
    use tokio::sync::watch;

    use super::session::Session;
    use super::*;
    use crate::intake::IntakeError;

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
