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

use data_encoding::BASE32_NOPAD;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

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
    /// The SMTP service: virtual port and the mote's listener.
    pub smtp: Option<(u16, SocketAddr)>,
    /// The HTTP service: virtual port and the mote's listener.
    pub http: Option<(u16, SocketAddr)>,
    /// Publish descriptors only the cards' keys can read.
    pub client_auth: bool,
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

/// One authenticated control connection.
struct Control {
    io: BufReader<Box<dyn Io>>,
}

impl Control {
    async fn connect(addr: &ControlAddr) -> Result<Self, OnionError> {
        let io: Box<dyn Io> = match addr {
            ControlAddr::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await?),
            ControlAddr::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
        };
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
            let mut l = String::new();
            if self.io.read_line(&mut l).await? == 0 {
                return Err(OnionError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let l = l.trim_end().to_string();
            if l.len() < 4 {
                continue;
            }
            let (code, sep, rest) = (&l[..3], &l[3..4], &l[4..]);
            if code != "250" {
                return Err(OnionError::Refused {
                    command: shown.to_string(),
                    reply: l.clone(),
                });
            }
            out.push(rest.to_string());
            if sep == " " {
                return Ok(out);
            }
        }
    }

    /// PROTOCOLINFO, then AUTHENTICATE with what tor asks for.
    async fn authenticate(&mut self, password: Option<&str>) -> Result<(), OnionError> {
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
        let cookie_file = auth
            .split("COOKIEFILE=")
            .nth(1)
            .and_then(|r| r.strip_prefix('"'))
            .and_then(|r| r.split('"').next());
        let line = if methods.contains(&"NULL") {
            "AUTHENTICATE".to_string()
        } else if let (true, Some(p)) = (methods.contains(&"HASHEDPASSWORD"), password) {
            format!(
                "AUTHENTICATE \"{}\"",
                p.replace('\\', "\\\\").replace('"', "\\\"")
            )
        } else if let (true, Some(f)) = (methods.contains(&"COOKIE"), cookie_file) {
            let cookie = std::fs::read(f)?;
            let hex: String = cookie.iter().map(|b| format!("{b:02x}")).collect();
            format!("AUTHENTICATE {hex}")
        } else {
            return Err(OnionError::Refused {
                command: "AUTHENTICATE".into(),
                reply: format!("no usable method in {auth} (set [onion] control_password?)"),
            });
        };
        self.command(&line, "AUTHENTICATE").await.map(drop)
    }
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

/// The two services' keys (`ED25519-V3:…`, tor's own blob), read from
/// `path` or `None` when there is no file yet.
fn read_keys(path: &Path) -> Result<Option<(String, String)>, OnionError> {
    let bad = |reason: String| OnionError::Keys {
        path: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let mut smtp = None;
    let mut http = None;
    for l in text.lines() {
        match l.split_once(' ') {
            Some(("smtp", k)) if k.starts_with("ED25519-V3:") => smtp = Some(k.to_string()),
            Some(("http", k)) if k.starts_with("ED25519-V3:") => http = Some(k.to_string()),
            _ => return Err(bad("not a dustmote onion key file".into())),
        }
    }
    match (smtp, http) {
        (Some(s), Some(h)) => Ok(Some((s, h))),
        _ => Err(bad("a key is missing".into())),
    }
}

/// Write both keys to a new file, mode 0600 from its creation.
fn write_keys(path: &Path, smtp: &str, http: &str) -> Result<(), OnionError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| OnionError::Keys {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    f.write_all(format!("smtp {smtp}\nhttp {http}\n").as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// The mote's published onion services.
pub struct Onions {
    cfg: OnionConfig,
    control: tokio::sync::Mutex<Control>,
    /// The services' keys, SMTP then HTTP.
    keys: [String; 2],
    /// Their ids (addresses without `.onion`), as tor reported them.
    ids: [String; 2],
    /// Whether the services are published now.
    published: tokio::sync::Mutex<bool>,
}

impl std::fmt::Debug for Onions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Onions")
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

impl Onions {
    /// Connect and authenticate to tor, and learn (or make) the services'
    /// keys and addresses. Nothing is published yet: see
    /// [`publish`](Self::publish).
    pub async fn open(cfg: OnionConfig) -> Result<Self, OnionError> {
        let mut control = Control::connect(&cfg.control).await?;
        control.authenticate(cfg.password.as_deref()).await?;
        // Each key is added once to learn its address (tor derives it), and
        // removed at once: it is published properly, with the clients, by
        // `publish`. New keys come from tor and are kept for a restart.
        let stored = read_keys(&cfg.key_file)?;
        let mut keys = Vec::new();
        let mut ids = Vec::new();
        for i in 0..2 {
            let key = stored.as_ref().map(|(s, h)| if i == 0 { s } else { h });
            let line = format!(
                "ADD_ONION {} Port=1,127.0.0.1:9",
                key.map_or("NEW:ED25519-V3", String::as_str)
            );
            let r = control.command(&line, "ADD_ONION").await?;
            let id = field(&r, "ServiceID=")?;
            control
                .command(&format!("DEL_ONION {id}"), "DEL_ONION")
                .await?;
            keys.push(match key {
                Some(k) => k.clone(),
                None => field(&r, "PrivateKey=")?,
            });
            ids.push(id);
        }
        if stored.is_none() {
            write_keys(&cfg.key_file, &keys[0], &keys[1])?;
        }
        let keys = [keys[0].clone(), keys[1].clone()];
        let ids = [ids[0].clone(), ids[1].clone()];
        Ok(Self {
            cfg,
            control: tokio::sync::Mutex::new(control),
            keys,
            ids,
            published: tokio::sync::Mutex::new(false),
        })
    }

    /// The SMTP service's `host:port`, if there is one.
    pub fn smtp_address(&self) -> Option<String> {
        self.cfg
            .smtp
            .map(|(port, _)| format!("{}.onion:{port}", self.ids[0]))
    }

    /// The HTTP service's `host:port`, if there is one.
    pub fn http_address(&self) -> Option<String> {
        self.cfg
            .http
            .map(|(port, _)| format!("{}.onion:{port}", self.ids[1]))
    }

    /// Whether client authorization is on.
    pub fn client_auth(&self) -> bool {
        self.cfg.client_auth
    }

    /// Publish the services (again), readable by `clients` (base32 x25519
    /// public keys) when client authorization is on. With it on and no
    /// client, a key nobody holds stands in: the services exist (their
    /// addresses stay) and nobody can find them.
    pub async fn publish(&self, clients: &[String]) -> Result<(), OnionError> {
        let mut control = self.control.lock().await;
        let mut published = self.published.lock().await;
        if *published {
            for id in &self.ids {
                // Gone already is fine (tor restarted its services).
                let _ = control
                    .command(&format!("DEL_ONION {id}"), "DEL_ONION")
                    .await;
            }
            *published = false;
        }
        let mut auth = String::new();
        if self.cfg.client_auth {
            let nobody;
            let keys: &[String] = if clients.is_empty() {
                nobody = [client_auth_keys().1];
                &nobody
            } else {
                clients
            };
            auth.push_str(" Flags=V3Auth");
            for k in keys {
                auth.push_str(&format!(" ClientAuthV3={k}"));
            }
        }
        for (i, service) in [self.cfg.smtp, self.cfg.http].iter().enumerate() {
            let Some((port, target)) = service else {
                continue;
            };
            let line = format!("ADD_ONION {} Port={port},{target}{auth}", self.keys[i]);
            control.command(&line, "ADD_ONION").await?;
        }
        *published = true;
        Ok(())
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
        assert_ne!(client_auth_keys().0, private);
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("k");
        assert!(read_keys(&p).expect("none").is_none());
        write_keys(&p, "ED25519-V3:AAAA", "ED25519-V3:BBBB").expect("write");
        assert_eq!(
            read_keys(&p).expect("read"),
            Some(("ED25519-V3:AAAA".into(), "ED25519-V3:BBBB".into()))
        );
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(write_keys(&p, "x", "y").is_err(), "never overwritten");
        std::fs::write(&p, "hello\n").expect("write");
        assert!(read_keys(&p).is_err());
    }
}
