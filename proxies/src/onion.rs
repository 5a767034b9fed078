//! The mote's own onion services, published through a tor daemon's control
//! port (`ADD_ONION`), so that the mote knows its addresses (for access
//! cards) and can restrict who finds them: with client authorization (Tor's
//! "restricted discovery"), the descriptors are encrypted to the x25519
//! keys of the accounts' cards, and a client without one cannot even learn
//! the service's introduction points. When the set of keys changes (a card
//! issued, an account revoked or ended) the services are published again.
//!
//! The services live as long as the control connection: if the mote dies,
//! tor takes them down with it. Their ed25519 keys are kept in a file that
//! by default lives in memory (like the sealing key): the addresses survive
//! a restart of the process, not a reboot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use data_encoding::{BASE32_NOPAD, HEXLOWER_PERMISSIVE, HEXUPPER};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Where tor's control port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddr {
    /// `127.0.0.1:9051`
    Tcp(SocketAddr),
    /// A `ControlSocket` path.
    Unix(PathBuf),
}

/// `[onion]` settings.
#[derive(Debug, Clone)]
pub struct OnionConfig {
    /// tor's control port.
    pub control: ControlAddr,
    /// `HashedControlPassword`'s password, if tor wants one (else the
    /// cookie, or nothing, as PROTOCOLINFO says).
    pub password: Option<String>,
    /// tor's control cookie file (`CookieAuthentication 1`), for
    /// SAFECOOKIE. Only this configured file is read, never one the
    /// control port names.
    pub cookie: Option<PathBuf>,
    /// The SMTP service: virtual port and the mote's listener.
    pub smtp: Option<(u16, SocketAddr)>,
    /// The HTTP service: virtual port and the mote's listener.
    pub http: Option<(u16, SocketAddr)>,
    /// Publish descriptors only the cards' keys can read.
    pub client_auth: bool,
    /// Turn on tor's proof-of-work defence for the services (tor >= 0.4.8
    /// built with its `pow` module; tor's default queue rate and burst).
    pub pow: bool,
    /// Where the services' keys are kept.
    pub key_file: PathBuf,
}

/// Why the onion services could not be published.
#[derive(Debug, thiserror::Error)]
pub enum OnionError {
    /// The control connection failed.
    #[error("tor control port: {0}")]
    Io(#[from] std::io::Error),
    /// tor refused a command.
    #[error("tor control port refused {command}: {reply}")]
    Refused {
        /// The command (without secrets).
        command: String,
        /// tor's reply.
        reply: String,
    },
    /// The key file is unusable.
    #[error("onion key file {path}: {reason}")]
    Keys {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How long any exchange with the control port may take (connecting, one
/// reply): a port that stalls is an error, not a hang.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest line a control port may send (tor's own replies here are a
/// few hundred bytes): a longer one is an error, not a growing buffer.
const MAX_CONTROL_LINE: usize = 64 * 1024;
/// Lines in one reply at the most.
const MAX_REPLY_LINES: usize = 256;
/// A control cookie's length (tor's `control_auth_cookie`).
const COOKIE_BYTES: usize = 32;
/// HMAC keys of tor's SAFECOOKIE (control-spec, AUTHCHALLENGE).
const SAFECOOKIE_SERVER_KEY: &[u8] = b"Tor safe cookie authentication server-to-controller hash";
const SAFECOOKIE_CLIENT_KEY: &[u8] = b"Tor safe cookie authentication controller-to-server hash";

/// One authenticated control connection.
struct Control {
    io: BufReader<Box<dyn Io>>,
}

/// A refusal of what the control port said (`what` failed).
fn untrusted(what: &str, reply: impl Into<String>) -> OnionError {
    OnionError::Refused {
        command: what.to_string(),
        reply: reply.into(),
    }
}

impl Control {
    async fn connect(addr: &ControlAddr) -> Result<Self, OnionError> {
        let connect = async {
            Ok::<Box<dyn Io>, std::io::Error>(match addr {
                ControlAddr::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await?),
                ControlAddr::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
            })
        };
        let io = tokio::time::timeout(CONTROL_TIMEOUT, connect)
            .await
            .map_err(|_| untrusted("connecting", "the control port did not answer in time"))??;
        Ok(Self {
            io: BufReader::new(io),
        })
    }

    /// Send `line`, read the reply's lines (without the `250-`/`250 `
    /// prefixes); an error unless it is a 250. `shown`: the command as an
    /// error may name it (secrets left out).
    async fn command(&mut self, line: &str, shown: &str) -> Result<Vec<String>, OnionError> {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        loop {
            if out.len() >= MAX_REPLY_LINES {
                return Err(untrusted(shown, "a reply of too many lines"));
            }
            let l = self.line().await?;
            if l.len() < 4 {
                continue;
            }
            // Split as bytes: the line is text, but not necessarily ASCII
            // in its first four bytes (a string slice there could panic).
            let (code, sep) = (&l.as_bytes()[..3], l.as_bytes()[3]);
            if code != b"250" || !matches!(sep, b' ' | b'-' | b'+') {
                return Err(OnionError::Refused {
                    command: shown.to_string(),
                    reply: l.clone(),
                });
            }
            // Bytes 0..4 are ASCII here, so 4 is a character boundary.
            out.push(l[4..].to_string());
            if sep == b' ' {
                return Ok(out);
            }
        }
    }

    /// The next line tor sends (a reply's, or an asynchronous event on a
    /// connection that asked for events), without its line end.
    /// At most [`MAX_CONTROL_LINE`] bytes, within [`CONTROL_TIMEOUT`].
    async fn line(&mut self) -> Result<String, OnionError> {
        self.line_within(CONTROL_TIMEOUT).await
    }

    /// [`line`](Self::line) waiting at most `wait` (events may be far
    /// apart).
    async fn line_within(&mut self, wait: Duration) -> Result<String, OnionError> {
        let mut l = Vec::new();
        let mut capped = (&mut self.io).take(MAX_CONTROL_LINE as u64);
        let read = capped.read_until(b'\n', &mut l);
        let n = tokio::time::timeout(wait, read)
            .await
            .map_err(|_| untrusted("reading", "the control port stalled"))??;
        if n == 0 {
            return Err(OnionError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if !l.ends_with(b"\n") {
            return Err(untrusted(
                "reading",
                "a line longer than the control protocol's",
            ));
        }
        let l =
            String::from_utf8(l).map_err(|_| untrusted("reading", "a line that is not text"))?;
        Ok(l.trim_end().to_string())
    }

    /// PROTOCOLINFO, then AUTHENTICATE with a configured credential:
    /// SAFECOOKIE with the configured `cookie` file (the port must prove
    /// that it knows the cookie before anything derived from it is sent),
    /// else the configured `password`, else nothing when tor asks for
    /// nothing. A file the port names (COOKIEFILE) is never read.
    async fn authenticate(
        &mut self,
        password: Option<&str>,
        cookie: Option<&Path>,
    ) -> Result<(), OnionError> {
        let info = self.command("PROTOCOLINFO 1", "PROTOCOLINFO").await?;
        let auth = info
            .iter()
            .find_map(|l| l.strip_prefix("AUTH "))
            .unwrap_or("METHODS=NULL");
        let methods: Vec<&str> = auth
            .split_whitespace()
            .find_map(|w| w.strip_prefix("METHODS="))
            .unwrap_or("NULL")
            .split(',')
            .collect();
        if methods.contains(&"SAFECOOKIE") {
            if let Some(path) = cookie {
                return self.safecookie(path).await;
            }
        }
        let line = if let (true, Some(p)) = (methods.contains(&"HASHEDPASSWORD"), password) {
            format!(
                "AUTHENTICATE \"{}\"",
                p.replace('\\', "\\\\").replace('"', "\\\"")
            )
        } else if methods.contains(&"NULL") {
            "AUTHENTICATE".to_string()
        } else {
            return Err(untrusted(
                "AUTHENTICATE",
                format!(
                    "no usable method in {auth} (set [onion] control_cookie for SAFECOOKIE, or \
                     control_password)"
                ),
            ));
        };
        self.command(&line, "AUTHENTICATE").await.map(drop)
    }

    /// SAFECOOKIE (control-spec 3.24): our nonce out, the port's hash of
    /// (cookie, both nonces) checked before our own hash goes back.
    async fn safecookie(&mut self, path: &Path) -> Result<(), OnionError> {
        use ring::hmac;
        let cookie = read_cookie(path)?;
        let client_nonce: [u8; 32] = rand::Rng::random(&mut rand::rng());
        let reply = self
            .command(
                &format!(
                    "AUTHCHALLENGE SAFECOOKIE {}",
                    HEXUPPER.encode(&client_nonce)
                ),
                "AUTHCHALLENGE",
            )
            .await?;
        let line = reply.first().map(String::as_str).unwrap_or_default();
        let value = |key: &str| -> Result<Vec<u8>, OnionError> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|h| HEXLOWER_PERMISSIVE.decode(h.as_bytes()).ok())
                .filter(|v| v.len() == 32)
                .ok_or_else(|| untrusted("AUTHCHALLENGE", "a malformed challenge"))
        };
        let (server_hash, server_nonce) = (value("SERVERHASH=")?, value("SERVERNONCE=")?);
        let mut message = Vec::with_capacity(96);
        message.extend_from_slice(&cookie);
        message.extend_from_slice(&client_nonce);
        message.extend_from_slice(&server_nonce);
        let server_key = hmac::Key::new(hmac::HMAC_SHA256, SAFECOOKIE_SERVER_KEY);
        if hmac::verify(&server_key, &message, &server_hash).is_err() {
            return Err(untrusted(
                "AUTHCHALLENGE",
                "the control port does not know tor's cookie: not tor, or another tor",
            ));
        }
        let client_key = hmac::Key::new(hmac::HMAC_SHA256, SAFECOOKIE_CLIENT_KEY);
        let ours = hmac::sign(&client_key, &message);
        self.command(
            &format!("AUTHENTICATE {}", HEXUPPER.encode(ours.as_ref())),
            "AUTHENTICATE",
        )
        .await
        .map(drop)
    }
}

/// The configured control cookie: exactly [`COOKIE_BYTES`].
fn read_cookie(path: &Path) -> Result<Vec<u8>, OnionError> {
    let cookie = std::fs::read(path).map_err(|e| OnionError::Keys {
        path: path.display().to_string(),
        reason: format!("reading tor's control cookie: {e}"),
    })?;
    if cookie.len() != COOKIE_BYTES {
        return Err(OnionError::Keys {
            path: path.display().to_string(),
            reason: format!(
                "a control cookie is {COOKIE_BYTES} bytes, not {}",
                cookie.len()
            ),
        });
    }
    Ok(cookie)
}

/// Whether `id` is a v3 onion service id: 56 letters of base32
/// (lowercase, as tor writes it).
fn is_service_id(id: &str) -> bool {
    id.len() == 56 && id.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'))
}

/// Whether `key` is tor's blob of a v3 service key: `ED25519-V3:` and the
/// base64 of 64 bytes.
fn is_service_key(key: &str) -> bool {
    use base64::Engine;
    key.strip_prefix("ED25519-V3:").is_some_and(|b| {
        b.len() == 88
            && base64::engine::general_purpose::STANDARD
                .decode(b)
                .is_ok_and(|k| k.len() == 64)
    })
}

/// An x25519 key pair for client authorization: (private, public), each
/// base32 without padding, as tor's files and ADD_ONION take them.
pub fn client_auth_keys() -> (String, String) {
    // 32 bytes from the CSPRNG (x25519 clamps them itself).
    let bytes: [u8; 32] = rand::Rng::random(&mut rand::rng());
    let secret = x25519_dalek::StaticSecret::from(bytes);
    let public = x25519_dalek::PublicKey::from(&secret);
    (
        BASE32_NOPAD.encode(secret.as_bytes()),
        BASE32_NOPAD.encode(public.as_bytes()),
    )
}

/// The public key (base32) of a client-authorization private key (base32),
/// if it is one.
pub fn client_public_key(private: &str) -> Option<String> {
    let bytes: [u8; 32] = BASE32_NOPAD
        .decode(private.as_bytes())
        .ok()?
        .try_into()
        .ok()?;
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(bytes));
    Some(BASE32_NOPAD.encode(public.as_bytes()))
}

/// The services' keys (`ED25519-V3:…`, tor's own blob), SMTP then HTTP,
/// read from `path` (none when there is no file yet).
fn read_keys(path: &Path) -> Result<[Option<String>; 2], OnionError> {
    let bad = |reason: String| OnionError::Keys {
        path: path.display().to_string(),
        reason,
    };
    // Only a private file of this user's (a planted one is refused).
    let data = match dust_storage::read_private(path) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok([None, None]),
        Err(e) => return Err(bad(e.to_string())),
    };
    let text = std::str::from_utf8(&data).map_err(|_| bad("not text".into()))?;
    let mut keys = [None, None];
    for l in text.lines() {
        match l.split_once(' ') {
            Some(("smtp", k)) if is_service_key(k) => keys[0] = Some(k.to_string()),
            Some(("http", k)) if is_service_key(k) => keys[1] = Some(k.to_string()),
            _ => return Err(bad("not a dustmote onion key file".into())),
        }
    }
    if keys.iter().all(Option::is_none) {
        return Err(bad("no key in it".into()));
    }
    Ok(keys)
}

/// Write the keys there are to the key file, replacing it (a service
/// turned on later adds its key).
fn write_keys(path: &Path, keys: &[Option<String>; 2]) -> Result<(), OnionError> {
    let mut text = String::new();
    for (name, k) in ["smtp", "http"].iter().zip(keys) {
        if let Some(k) = k {
            text.push_str(&format!("{name} {k}\n"));
        }
    }
    write_private(path, &text).map_err(|e| OnionError::Keys {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Write `text` to `path` (made or replaced whole), mode 0600 from the
/// file's creation: a new file beside it, synced, renamed over it. For
/// keys (the onion services', a card's client-authorization key).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The mote's published onion services.
pub struct Onions {
    cfg: OnionConfig,
    /// The control connection and what is published through it.
    state: tokio::sync::Mutex<Published>,
    /// The services' ids (addresses without `.onion`), SMTP then HTTP,
    /// as tor reported them at the first publication.
    ids: parking_lot::Mutex<[Option<String>; 2]>,
    /// The client keys of the publication whose descriptors tor has
    /// uploaded (or given up waiting for).
    in_force: tokio::sync::watch::Sender<Option<Vec<String>>>,
}

/// How long a publication waits for tor to upload the new descriptors.
const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What [`Onions::publish`] keeps between calls.
struct Published {
    /// The control connection (none before the first publication, or
    /// after one failed: the next connects again). The services live as
    /// long as it: tor removes them when it closes.
    control: Option<Control>,
    /// The services' keys (`ED25519-V3:…`), once known.
    keys: [Option<String>; 2],
    /// Keys tor made that are not in the key file yet (its write failed):
    /// written at the next publication.
    unsaved: bool,
    /// The client keys of the publication in force (`None`: nothing
    /// published).
    clients: Option<Vec<String>>,
}

impl std::fmt::Debug for Onions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Onions")
            .field("ids", &*self.ids.lock())
            .finish_non_exhaustive()
    }
}

impl Onions {
    /// Read the services' keys, if a previous start kept them. Nothing is
    /// published, and tor not even asked, yet: see
    /// [`publish`](Self::publish).
    pub fn new(cfg: OnionConfig) -> Result<Self, OnionError> {
        let keys = read_keys(&cfg.key_file)?;
        Ok(Self {
            cfg,
            state: tokio::sync::Mutex::new(Published {
                control: None,
                keys,
                unsaved: false,
                clients: None,
            }),
            ids: parking_lot::Mutex::new([None, None]),
            in_force: tokio::sync::watch::Sender::new(None),
        })
    }

    /// Wait (at most `timeout`) until the client keys of the publication
    /// in force satisfy `ok`; whether they do (at once without client
    /// authorization).
    pub async fn wait_in_force(
        &self,
        ok: impl Fn(&[String]) -> bool,
        timeout: std::time::Duration,
    ) -> bool {
        if !self.cfg.client_auth {
            return true;
        }
        let mut rx = self.in_force.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| c.as_deref().is_some_and(&ok)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The SMTP service's `host:port`, once published.
    pub fn smtp_address(&self) -> Option<String> {
        let (port, _) = self.cfg.smtp?;
        let id = self.ids.lock()[0].clone()?;
        Some(format!("{id}.onion:{port}"))
    }

    /// The HTTP service's `host:port`, once published.
    pub fn http_address(&self) -> Option<String> {
        let (port, _) = self.cfg.http?;
        let id = self.ids.lock()[1].clone()?;
        Some(format!("{id}.onion:{port}"))
    }

    /// Whether the services are published now (all of them, by the
    /// control connection that is open).
    pub fn published(&self) -> bool {
        self.in_force.borrow().is_some()
    }

    /// Whether client authorization is on.
    pub fn client_auth(&self) -> bool {
        self.cfg.client_auth
    }

    /// Publish the services (again), readable by `clients` (base32 x25519
    /// public keys) when client authorization is on; nothing to do when
    /// they are published for these clients already. With authorization
    /// on and no client, a key nobody holds stands in: the services exist
    /// (their addresses stay) and nobody can find them. The first
    /// publication of a new mote makes the keys (tor does) and keeps them
    /// in the key file.
    ///
    /// With `wait`, it returns once tor has uploaded the new descriptors
    /// (at most [`UPLOAD_WAIT`]; not at all while tor has no circuit, as
    /// with its network off): until then clients still find the old ones.
    ///
    /// It connects to tor's control port first if it has no connection. If
    /// anything fails, the connection is closed (tor removes what it
    /// published) and nothing is in force: call it again.
    pub async fn publish(&self, clients: &[String], wait: bool) -> Result<(), OnionError> {
        let mut st = self.state.lock().await;
        let r = self.publish_on(&mut st, clients, wait).await;
        if r.is_err() {
            Self::lost(&mut st, &self.in_force);
        }
        r
    }

    /// Whether the services are still published: the control connection
    /// answers. If it does not, it is closed and nothing is in force (the
    /// caller publishes again).
    pub async fn still_published(&self) -> bool {
        let mut st = self.state.lock().await;
        let Some(control) = st.control.as_mut() else {
            return false;
        };
        if control.command("GETINFO version", "GETINFO").await.is_ok() {
            return st.clients.is_some();
        }
        Self::lost(&mut st, &self.in_force);
        false
    }

    /// The control connection is gone (or given up): so are the services.
    fn lost(st: &mut Published, in_force: &tokio::sync::watch::Sender<Option<Vec<String>>>) {
        st.control = None;
        st.clients = None;
        in_force.send_replace(None);
    }

    async fn publish_on(
        &self,
        st: &mut Published,
        clients: &[String],
        wait: bool,
    ) -> Result<(), OnionError> {
        let control = match &mut st.control {
            Some(c) => c,
            none => {
                let mut c = Control::connect(&self.cfg.control).await?;
                c.authenticate(self.cfg.password.as_deref(), self.cfg.cookie.as_deref())
                    .await?;
                none.insert(c)
            }
        };
        let wanted = if self.cfg.client_auth {
            clients.to_vec()
        } else {
            Vec::new()
        };
        if st.clients.as_ref() == Some(&wanted) {
            return Ok(());
        }
        if st.clients.take().is_some() {
            let ids = self.ids.lock().clone();
            for id in ids.iter().flatten() {
                // Gone already is fine (tor restarted its services).
                let _ = control
                    .command(&format!("DEL_ONION {id}"), "DEL_ONION")
                    .await;
            }
        }
        let mut auth = String::new();
        if self.cfg.pow {
            auth.push_str(" PoWDefensesEnabled=1");
        }
        if self.cfg.client_auth {
            let nobody;
            let keys: &[String] = if wanted.is_empty() {
                nobody = [client_auth_keys().1];
                &nobody
            } else {
                &wanted
            };
            auth.push_str(" Flags=V3Auth");
            for k in keys {
                auth.push_str(&format!(" ClientAuthV3={k}"));
            }
        }
        // A second connection hears when tor has uploaded the new
        // descriptors (until then clients still find the old ones).
        let online = control
            .command("GETINFO status/circuit-established", "GETINFO")
            .await?
            .iter()
            .any(|l| l == "status/circuit-established=1");
        let mut events = None;
        if wait && online {
            let mut e = Control::connect(&self.cfg.control).await?;
            e.authenticate(self.cfg.password.as_deref(), self.cfg.cookie.as_deref())
                .await?;
            e.command("SETEVENTS HS_DESC", "SETEVENTS").await?;
            events = Some(e);
        }
        // (Keys made now, or made before and not yet written.)
        for (i, service) in [self.cfg.smtp, self.cfg.http].iter().enumerate() {
            let Some((port, target)) = service else {
                continue;
            };
            let key = st.keys[i]
                .clone()
                .unwrap_or_else(|| "NEW:ED25519-V3".into());
            let line = format!("ADD_ONION {key} Port={port},{target}{auth}");
            let reply = control.command(&line, "ADD_ONION").await?;
            let id = field(&reply, "ServiceID=")?;
            if !is_service_id(&id) {
                return Err(untrusted(
                    "ADD_ONION",
                    "a ServiceID that is not a v3 onion id",
                ));
            }
            self.ids.lock()[i] = Some(id);
            if st.keys[i].is_none() {
                let key = field(&reply, "PrivateKey=")?;
                if !is_service_key(&key) {
                    return Err(untrusted("ADD_ONION", "a PrivateKey that is not a v3 key"));
                }
                st.keys[i] = Some(key);
                st.unsaved = true;
            }
        }
        if st.unsaved {
            write_keys(&self.cfg.key_file, &st.keys)?;
            st.unsaved = false;
        }
        let mut waiting: Vec<String> = match events {
            Some(_) => self.ids.lock().iter().flatten().cloned().collect(),
            None => Vec::new(),
        };
        let uploaded = tokio::time::timeout(UPLOAD_WAIT, async {
            while let (false, Some(events)) = (waiting.is_empty(), events.as_mut()) {
                let line = events.line_within(UPLOAD_WAIT).await?;
                // 650 HS_DESC UPLOADED <address> <auth> <hsdir> ...
                let mut w = line.split(' ');
                if let (Some("650"), Some("HS_DESC"), Some("UPLOADED"), Some(addr)) =
                    (w.next(), w.next(), w.next(), w.next())
                {
                    waiting.retain(|id| id != addr);
                }
            }
            Ok::<(), OnionError>(())
        })
        .await;
        match uploaded {
            Ok(r) => r?,
            Err(_) => tracing::warn!(
                "tor has not uploaded the onion services' new descriptors after {UPLOAD_WAIT:?}; \
                 clients may find the old ones until it does"
            ),
        }
        st.clients = Some(wanted.clone());
        self.in_force.send_replace(Some(wanted));
        Ok(())
    }
}

/// Entry points for the fuzz targets (`fuzz/`).
pub mod fuzzing {
    use super::*;

    /// The client's side of a control session against a port that sends
    /// `replies` (after its first byte) whatever it is asked, then closes:
    /// PROTOCOLINFO and AUTHENTICATE (SAFECOOKIE with a cookie when the
    /// first byte is odd, else a password), ADD_ONION with the checks of its
    /// ServiceID and PrivateKey, and an event line. Asserts that whatever
    /// is taken as a ServiceID or PrivateKey has tor's form. `true` if it
    /// got as far as ADD_ONION's reply.
    pub fn session(replies: &[u8]) -> bool {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        else {
            return false;
        };
        let Some((&first, replies)) = replies.split_first() else {
            return false;
        };
        let cookie = (first & 1 == 1).then(cookie_file);
        let replies = replies.to_vec();
        rt.block_on(async move {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (mut from_client, mut to_client) = tokio::io::split(server);
            tokio::spawn(async move {
                let _ = to_client.write_all(&replies).await;
                let _ = to_client.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut tokio::io::sink()).await;
            });
            let mut c = Control {
                io: BufReader::new(Box::new(client)),
            };
            if c.authenticate(Some("pass\"word"), cookie.as_deref())
                .await
                .is_err()
            {
                return false;
            }
            let Ok(reply) = c
                .command("ADD_ONION NEW:ED25519-V3 Port=1,127.0.0.1:1", "ADD_ONION")
                .await
            else {
                return false;
            };
            if let Some(id) = field(&reply, "ServiceID=")
                .ok()
                .filter(|i| is_service_id(i))
            {
                assert_eq!(id.len(), 56);
                assert!(!id.contains(|c: char| c.is_whitespace() || c == '='));
            }
            if let Some(key) = field(&reply, "PrivateKey=")
                .ok()
                .filter(|k| is_service_key(k))
            {
                assert!(key.starts_with("ED25519-V3:") && key.len() == 99);
                assert!(!key.contains(char::is_whitespace));
            }
            let _ = c.line_within(Duration::from_millis(1)).await;
            true
        })
    }

    /// A 32-byte cookie file for the SAFECOOKIE path (made once).
    fn cookie_file() -> PathBuf {
        static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        FILE.get_or_init(|| {
            let p =
                std::env::temp_dir().join(format!("dustmote-fuzz-cookie-{}", std::process::id()));
            let _ = std::fs::write(&p, [0x5a; COOKIE_BYTES]);
            p
        })
        .clone()
    }
}

fn field(reply: &[String], key: &str) -> Result<String, OnionError> {
    reply
        .iter()
        .find_map(|l| l.strip_prefix(key))
        .map(str::to_string)
        .ok_or_else(|| OnionError::Refused {
            command: "ADD_ONION".into(),
            reply: format!("no {key} in the reply"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's seeds (fuzz/seeds/control_reply) on stable: how
    /// far each session gets.
    #[test]
    fn the_fuzz_seeds_get_as_far_as_they_should() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/control_reply");
        let got: Vec<bool> = (0..6)
            .map(|i| {
                let seed = std::fs::read(dir.join(format!("seed-{i:02}"))).expect("seed");
                fuzzing::session(&seed)
            })
            .collect();
        // 0: password, then ADD_ONION; 1: a SAFECOOKIE challenge from a
        // port that does not know the cookie; 2: no authentication and
        // out-of-format ids (read, not taken); 3: refused; 4: too many
        // lines; 5: a reply that is not text.
        assert_eq!(got, [true, false, true, false, false, false]);
        // Found by the fuzzer: a multi-byte character in a reply's first
        // four bytes made the client panic (a string sliced inside it).
        let found = std::fs::read(dir.join("found-multibyte-code")).expect("seed");
        assert!(!fuzzing::session(&found));
    }

    #[test]
    fn client_keys_are_base32_x25519_pairs() {
        let (private, public) = client_auth_keys();
        assert_eq!((private.len(), public.len()), (52, 52));
        let p: [u8; 32] = BASE32_NOPAD
            .decode(private.as_bytes())
            .expect("base32")
            .try_into()
            .expect("32 bytes");
        let derived = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(p));
        assert_eq!(BASE32_NOPAD.encode(derived.as_bytes()), public);
        assert_eq!(client_public_key(&private), Some(public.clone()));
        assert_eq!(client_public_key("not base32!"), None);
        assert_ne!(client_auth_keys().0, private);
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("k");
        assert_eq!(read_keys(&p).expect("none"), [None, None]);
        let key = |b: u8| {
            use base64::Engine;
            let blob = base64::engine::general_purpose::STANDARD.encode([b; 64]);
            Some(format!("ED25519-V3:{blob}"))
        };
        let keys = [key(1), key(2)];
        // Only keys of tor's form are read: not a line that adds options.
        write_private(
            &p,
            "smtp ED25519-V3:AAAA Port=25,127.0.0.1:22 Flags=Detach\n",
        )
        .expect("write");
        assert!(read_keys(&p).is_err());
        std::fs::remove_file(&p).expect("rm");
        write_keys(&p, &keys).expect("write");
        assert_eq!(read_keys(&p).expect("read"), keys);
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let one = [None, key(3)];
        write_keys(&p, &one).expect("replace");
        assert_eq!(read_keys(&p).expect("read"), one);
        std::fs::write(&p, "hello\n").expect("write");
        assert!(read_keys(&p).is_err());
        // A good key file that others may read is refused.
        write_keys(&p, &one).expect("replace");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(read_keys(&p).is_err());
    }
}
