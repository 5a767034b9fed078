//! The private Tor network of `tests/tornet/tornet.sh`, for integration
//! tests: started on free ports, stopped by PID on drop; every tor also exits
//! by itself when the test process is gone.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

pub struct TorNet {
    pub dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
}

fn script() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tornet/tornet.sh")
}

impl TorNet {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .env("TORNET_OWNER_PID", std::process::id().to_string())
            .output()
            .expect("bash tests/tornet/tornet.sh (needs tor; run tests/install-deps.sh)");
        assert!(
            out.status.success(),
            "private Tor network did not come up:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self { dir, env }
    }

    pub fn port(&self, key: &str) -> u16 {
        self.env[key].parse().unwrap()
    }

    pub fn socks(&self) -> String {
        format!("127.0.0.1:{}", self.port("SOCKS_PORT"))
    }

    fn run(&self, cmd: &str) {
        let out = Command::new("bash")
            .arg(script())
            .arg(cmd)
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tornet.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An Arti configuration file (Arti's own format) that joins this
    /// network: its authority, the authority as the one fallback directory
    /// cache (the other relays are not caches), and local addresses allowed.
    pub fn write_arti_config(&self, path: &std::path::Path) {
        let e = &self.env;
        let dir = format!("127.0.0.1:{}", e["AUTH_DIR_PORT"]);
        let text = format!(
            r#"[tor_network]
fallback_caches = [
  {{ rsa_identity = "{fp}", ed_identity = "{ed}", orports = ["127.0.0.1:{or}"] }},
]
[tor_network.authorities]
v3idents = ["{v3}"]
uploads = [["{dir}"]]
downloads = [["{dir}"]]
votes = [["{dir}"]]
[address_filter]
allow_local_addrs = true
[path_rules]
ipv4_subnet_family_prefix = 33
ipv6_subnet_family_prefix = 129
"#,
            fp = e["AUTH1_FP"],
            ed = e["AUTH1_ED"],
            or = e["AUTH1_OR"],
            v3 = e["AUTH_V3IDENT"],
        );
        std::fs::write(path, text).unwrap();
    }

    /// `[tor]` table lines for a mote in Arti mode joining this network
    /// (writes a fresh Arti file into the network's directory).
    pub fn arti_tor_table(&self) -> String {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.path().join(format!("arti-{n}.toml"));
        self.write_arti_config(&path);
        format!("mode = \"arti\"\narti_config = \"{}\"", path.display())
    }

    /// Start one more client tor, `name`, with the torrc lines in
    /// `extra` (none: a plain client); returns its SOCKS address. Its
    /// SocksPort has ExtendedErrors: a SOCKS5 failure says why.
    pub fn add_client(&self, name: &str, extra: &str) -> String {
        let lines = self.dir.path().join(format!("{name}.extra"));
        std::fs::write(&lines, extra).unwrap();
        let out = Command::new("bash")
            .arg(script())
            .args(["add-client"])
            .arg(self.dir.path())
            .arg(name)
            .arg(&lines)
            .env("TORNET_OWNER_PID", std::process::id().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tornet.sh add-client {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("SOCKS_PORT=").map(str::to_string))
            .expect("SOCKS_PORT");
        format!("127.0.0.1:{port}")
    }

    /// The client tor's control port address.
    pub fn control(&self) -> String {
        format!("127.0.0.1:{}", self.port("CONTROL_PORT"))
    }

    pub fn stop_client(&self) {
        self.run("stop-client");
    }

    pub fn start_client(&self) {
        self.run("start-client");
    }

    /// Publish an onion service on the client tor (ADD_ONION, detached),
    /// mapping `virt_port` to `127.0.0.1:target_port`; returns the
    /// `<id>.onion` host.
    pub fn add_onion(&self, virt_port: u16, target_port: u16) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port("CONTROL_PORT"))).unwrap();
        let cmd = format!(
            "AUTHENTICATE\r\nADD_ONION NEW:ED25519-V3 Flags=Detach,DiscardPK Port={virt_port},127.0.0.1:{target_port}\r\nQUIT\r\n"
        );
        s.write_all(cmd.as_bytes()).unwrap();
        let rd = BufReader::new(s);
        for line in rd.lines() {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("250-ServiceID=") {
                return format!("{id}.onion");
            }
            assert!(line.starts_with("250"), "ADD_ONION: {line}");
        }
        panic!("ADD_ONION returned no ServiceID");
    }

    /// Subscribe to the client's STREAM events; returns the collected
    /// `650 STREAM ...` lines as they arrive.
    pub fn stream_events(&self) -> Arc<Mutex<Vec<String>>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port("CONTROL_PORT"))).unwrap();
        s.write_all(b"AUTHENTICATE\r\nSETEVENTS STREAM\r\n")
            .unwrap();
        let mut rd = BufReader::new(s.try_clone().unwrap());
        for _ in 0..2 {
            let mut l = String::new();
            rd.read_line(&mut l).unwrap();
            assert!(l.starts_with("250"), "control port: {l}");
        }
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        std::thread::spawn(move || {
            let _keep = s;
            for line in rd.lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        events
    }
}

impl Drop for TorNet {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}
