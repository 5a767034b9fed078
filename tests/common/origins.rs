//! HTTP origins for download tests: nginx (Range supported, access log
//! with the Range header of every request), Python's `http.server`
//! (ignores Range), and a hostile one of ours that never says how large its
//! object is. All on 127.0.0.1, free ports, stopped by PID.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, peer, port_open, wait_for, Proc};

pub struct Nginx {
    pub port: u16,
    pub dir: tempfile::TempDir,
    _proc: Proc,
}

impl Nginx {
    pub fn start() -> Self {
        Self::start_tls(None)
    }

    /// With `Some((cert, key))` the server speaks TLS (https).
    pub fn start_tls(tls: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let (ssl, certs) = match tls {
            Some((cert, key)) => (
                " ssl",
                format!("ssl_certificate {cert};\n        ssl_certificate_key {key};"),
            ),
            None => ("", String::new()),
        };
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let conf = format!(
            r#"daemon off;
master_process off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    # The media types the tests use (anything else is text/plain).
    types {{ text/html html; application/pdf pdf; video/mp4 mp4; }}
    log_format ranges '$request_uri $status "$http_range" $body_bytes_sent $msec';
    access_log {d}/access.log ranges;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port}{ssl};
        {certs}
        root {d}/www;
        # A redirect that never ends (the fetcher's redirect bound).
        location = /loop {{ return 302 /loop; }}
        # A redirect out of http(s) (never followed).
        location = /gopher {{ return 302 gopher://127.0.0.1:70/1; }}
    }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists() || *p == "nginx")
            .unwrap();
        let child = Command::new(nginx)
            .args(["-e", &format!("{d}/error.log"), "-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (run tests/install-deps.sh)");
        let p = Proc(child);
        assert!(
            wait_for(Duration::from_secs(10), || port_open(port).then_some(())).is_some(),
            "nginx did not start"
        );
        Self {
            port,
            dir,
            _proc: p,
        }
    }

    pub fn put(&self, name: &str, data: &[u8]) -> String {
        std::fs::write(self.dir.path().join("www").join(name), data).unwrap();
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Like [`Nginx::put`], with an https URL.
    pub fn put_https(&self, name: &str, data: &[u8]) -> String {
        self.put(name, data).replacen("http://", "https://", 1)
    }

    /// When each request was logged, in ms since the Unix epoch.
    pub fn request_times_ms(&self) -> Vec<u64> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|secs| (secs * 1000.0) as u64)
            .collect()
    }

    /// Access log lines: (uri, status, range header).
    pub fn requests(&self) -> Vec<(String, u16, String)> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let uri = it.next()?.to_string();
                let status = it.next()?.parse().ok()?;
                let range = it.next()?.split('"').nth(1)?.to_string();
                Some((uri, status, range))
            })
            .collect()
    }
}

pub struct PyHttp {
    pub port: u16,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    _proc: Proc,
}

impl PyHttp {
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Proc(child);
        assert!(wait_for(Duration::from_secs(10), || port_open(port).then_some(())).is_some());
        Self {
            port,
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            _proc: p,
        }
    }

    pub fn put(&self, name: &str, data: &[u8]) -> String {
        std::fs::write(self.dir.join(name), data).unwrap();
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

/// `tests/peers/endless_origin.py`: answers every Range with 206 and
/// `Content-Range: bytes A-B/*` (an object that never ends).
pub struct Endless {
    pub port: u16,
    log: PathBuf,
    _tmp: tempfile::TempDir,
    _proc: Proc,
}

impl Endless {
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = tmp.path().join("requests.log");
        let child = Command::new("python3")
            .arg(peer("endless_origin.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let p = Proc(child);
        assert!(wait_for(Duration::from_secs(10), || port_open(port).then_some(())).is_some());
        Self {
            port,
            log,
            _tmp: tmp,
            _proc: p,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// How many GET requests for `/name` arrived.
    pub fn requests(&self, name: &str) -> usize {
        let needle = format!("\"GET /{name} ");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}
