//! The download API with real clients: curl for requests and resumed
//! downloads, Python's `email` parser for `multipart/byteranges`. Content is
//! written into the store directly here (the fetcher has its own tests).

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;

use dust_mixer::{ItemId, Store};
use dust_proxies::access::auth::{hash_password, Users, Verifier};
use dust_proxies::intake::http::Api;
use dust_proxies::intake::{IntakeError, Schedule, Transfer};
use dust_proxies::item::job::{FetchCounts, Job, JobState};
use dust_proxies::status::Status;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::net::TcpListener;

const TOKEN: &str = "alice-token-0123456789";
const OTHER: &str = "bob-token-9876543210";

struct Server {
    base: String,
    store: Arc<Store>,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// Scheduling here only makes the job durable (no mixer in this test).
struct Durable(Arc<Store>);

impl Schedule for Durable {
    async fn schedule(
        &self,
        _id: ItemId,
        _not_before: Option<std::time::SystemTime>,
    ) -> Result<(), IntakeError> {
        self.0.sync().await.map_err(IntakeError::from)
    }
}

/// No peer link here: nothing is ever handed over (the API answers 404
/// before it would ask).
impl Transfer for Durable {
    async fn admit_transfer(
        &self,
        _: dust_mixer::ItemKind,
        _: Vec<u8>,
        _: [u8; 32],
        _: std::time::Duration,
    ) -> Result<bool, IntakeError> {
        Err(IntakeError::ShuttingDown)
    }

    async fn may_take_job(&self, _: ItemId, _: &[u8], _: [u8; 32]) -> Result<bool, IntakeError> {
        Err(IntakeError::ShuttingDown)
    }

    fn content_store(&self) -> &Arc<Store> {
        &self.0
    }

    async fn admit_job(
        &self,
        _: ItemId,
        _: Vec<u8>,
        _: [u8; 32],
        _: std::time::Duration,
    ) -> Result<bool, IntakeError> {
        Err(IntakeError::ShuttingDown)
    }
}

async fn start() -> Server {
    start_with(64).await
}

async fn start_with(max_connections: usize) -> Server {
    let store = Store::temporary().unwrap();
    let users = Users::new([
        (
            "alice".to_string(),
            hash_password(TOKEN.as_bytes()).unwrap(),
        ),
        ("bob".to_string(), hash_password(OTHER.as_bytes()).unwrap()),
    ])
    .unwrap();
    let api = Api::new(
        Arc::clone(&store),
        Arc::new(Verifier::new(users)),
        {
            let store = Arc::clone(&store);
            Arc::new(move || {
                Ok(Status {
                    queue: store.stats(10)?,
                    fetches: FetchCounts::count(&store),
                    ..Status::default()
                })
            })
        },
        Arc::new(Durable(Arc::clone(&store))),
    )
    // alice runs the mote; bob only downloads.
    .operators(vec!["alice".to_string()]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(Arc::new(api).serve(listener, rx, max_connections, 4));
    Server {
        base,
        store,
        _stop: stop,
    }
}

/// curl; returns (status, headers, body).
async fn curl(args: Vec<String>) -> (u16, String, Vec<u8>) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "-D", "/dev/stderr", "-w", "\n%{http_code}"])
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap();
    let code: u16 = String::from_utf8_lossy(&body[nl + 1..])
        .trim()
        .parse()
        .unwrap();
    body.truncate(nl);
    (
        code,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        body,
    )
}

/// The Authorization header of the user whose token this is: two users
/// here, so tokens are presented as NAME:TOKEN.
fn auth(token: &str) -> Vec<String> {
    let name = if token == OTHER { "bob" } else { "alice" };
    vec!["-H".into(), format!("Authorization: Bearer {name}:{token}")]
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_created_durably_shown_only_to_their_owner_and_deleted() {
    let s = start().await;
    let url = format!("{}/v1/fetches", s.base);
    // No token, a wrong token: 401 with a JSON error.
    let (code, headers, body) = curl(args(&["-X", "POST", &url, "-d", "{}"])).await;
    assert_eq!(code, 401);
    assert!(headers
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"],
        "unauthorized"
    );
    // A wrong token of a name that is no user, and a bare token on a mote
    // with two users (which user's would it be?): 401.
    for bearer in [
        "Authorization: Bearer mallory:nope",
        &format!("Authorization: Bearer {TOKEN}"),
    ] {
        let (code, _, _) = curl(
            [
                args(&["-H", bearer]),
                args(&["-X", "POST", &url, "-d", "{}"]),
            ]
            .concat(),
        )
        .await;
        assert_eq!(code, 401, "{bearer}");
    }
    // Malformed requests: 4xx with a stable code, never a crash.
    for (data, want) in [
        ("{", "bad_json"),
        ("{\"url\": 5}", "bad_json"),
        ("{\"url\": \"ftp://x/y\"}", "bad_url"),
        ("{\"url\": \"/relative\"}", "bad_url"),
        ("{\"url\": \"http://x/\", \"extra\": 1}", "bad_json"),
        (
            "{\"url\": \"http://x/\", \"deadline\": \"tomorrow\"}",
            "bad_time",
        ),
    ] {
        let (code, _, body) =
            curl([auth(TOKEN), args(&["-X", "POST", &url, "-d", data])].concat()).await;
        assert_eq!(code, 400, "{data}");
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap()["error"],
            want,
            "{data}"
        );
    }
    let big = format!("{{\"url\": \"http://x/{}\"}}", "a".repeat(20_000));
    let (code, _, _) = curl([auth(TOKEN), args(&["-X", "POST", &url, "-d", &big])].concat()).await;
    assert_eq!(code, 413);
    // A good request: 202 with a 128-bit id, and the job is on disk.
    let flushes = s.store.flush_count();
    let req = r#"{"url": "http://127.0.0.1:9/file.bin", "not_before": "2026-12-01T10:00:00Z"}"#;
    let (code, _, body) =
        curl([auth(TOKEN), args(&["-X", "POST", &url, "-d", req])].concat()).await;
    assert_eq!(code, 202, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert!(s.store.flush_count() > flushes, "202 only after a flush");
    let (code, _, body) = curl([auth(TOKEN), args(&[&format!("{url}/{id}")])].concat()).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["bytes_stored"].as_u64()),
        (Some("queued"), Some(0))
    );
    assert_eq!(v["url"], "http://127.0.0.1:9/file.bin");
    // Bob cannot see or delete Alice's job; unknown ids are 404 too.
    for (tok, path) in [
        (OTHER, format!("{url}/{id}")),
        (TOKEN, format!("{url}/{}", "0".repeat(32))),
        (TOKEN, format!("{url}/xyz")),
    ] {
        let (code, _, body) = curl([auth(tok), args(&[&path])].concat()).await;
        assert_eq!(code, 404);
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap()["error"],
            "no_such_fetch"
        );
    }
    let (code, _, _) =
        curl([auth(OTHER), args(&["-X", "DELETE", &format!("{url}/{id}")])].concat()).await;
    assert_eq!(code, 404);
    // Not ready: content is 409.
    let (code, _, _) = curl([auth(TOKEN), args(&[&format!("{url}/{id}/content")])].concat()).await;
    assert_eq!(code, 409);
    let (code, _, _) =
        curl([auth(TOKEN), args(&["-X", "DELETE", &format!("{url}/{id}")])].concat()).await;
    assert_eq!(code, 204);
    let (code, _, _) = curl([auth(TOKEN), args(&[&format!("{url}/{id}")])].concat()).await;
    assert_eq!(code, 404);
    // Operator endpoints: queue counts only for an operator (anyone who
    // could poll them could link a submission to a release).
    let status = format!("{}/status", s.base);
    for who in [vec![], auth(OTHER)] {
        let (code, _, body) = curl([who, args(&[&status])].concat()).await;
        assert_eq!(code, 200);
        let v = serde_json::from_slice::<Value>(&body).unwrap();
        assert!(v.get("expires_at").is_some(), "{v}");
        assert!(
            v.get("queue").is_none() && v.get("fetches").is_none(),
            "{v}"
        );
    }
    let (code, _, body) = curl([auth(TOKEN), args(&[&status])].concat()).await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["fetches"]["queued"],
        0
    );
    let metrics = format!("{}/metrics", s.base);
    for who in [vec![], auth(OTHER)] {
        let (code, _, body) = curl([who, args(&[&metrics])].concat()).await;
        assert_eq!(code, 401, "{}", String::from_utf8_lossy(&body));
    }
    let (code, _, body) = curl([auth(TOKEN), args(&[&metrics])].concat()).await;
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("dustmote_fetch_jobs{state=\"queued\"} 0"));
    let (code, _, _) = curl(args(&[&format!("{}/nothing", s.base)])).await;
    assert_eq!(code, 404);
}

/// A ready job with `data` as content, stored in random chunks.
fn ready_job(store: &Store, data: &[u8], state: JobState) -> String {
    let job = Job {
        state,
        total: Some(data.len() as u64),
        ..Job::new(
            "http://origin.invalid/f".into(),
            "alice".into(),
            std::time::SystemTime::UNIX_EPOCH,
            None,
            None,
        )
    };
    store_job(store, data, job)
}

/// Store `job` with `data` as its content, in random chunks; its id.
fn store_job(store: &Store, data: &[u8], job: Job) -> String {
    let id = ItemId(rand::random());
    let mut rng = rand::rngs::StdRng::seed_from_u64(data.len() as u64);
    let mut off = 0;
    while off < data.len() {
        let n = rng.random_range(1..=65_536).min(data.len() - off);
        store
            .put_chunk(&id, off as u64, &data[off..off + n])
            .unwrap();
        off += n;
    }
    store.put_job(&id, &job.encode()).unwrap();
    id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_served_with_ranges_resumably() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for size in [0usize, 1, 3 * 1024 * 1024 + 17] {
        let data: Vec<u8> = (0..size).map(|_| rng.random()).collect();
        let id = ready_job(&s.store, &data, JobState::Ready);
        let url = format!("{}/v1/fetches/{id}/content", s.base);
        let (code, headers, body) = curl([auth(TOKEN), args(&[&url])].concat()).await;
        assert_eq!(code, 200);
        assert_eq!(body, data, "full content, {size} bytes");
        assert!(headers
            .to_ascii_lowercase()
            .contains("accept-ranges: bytes"));
        if size < 2 {
            continue;
        }
        // An interrupted download resumed with curl -C -.
        let file = dir.path().join(format!("f{size}"));
        std::fs::write(&file, &data[..size / 3]).unwrap();
        let (code, _, _) = curl(
            [
                auth(TOKEN),
                args(&["-C", "-", "-o", file.to_str().unwrap(), &url]),
            ]
            .concat(),
        )
        .await;
        assert_eq!(code, 206);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            data,
            "resumed download is identical"
        );
        // A single range, a suffix range, an unsatisfiable one.
        let (code, headers, body) =
            curl([auth(TOKEN), args(&["-r", "100-199", &url])].concat()).await;
        assert_eq!((code, body.as_slice()), (206, &data[100..200]));
        assert!(
            headers.contains(&format!("bytes 100-199/{size}")),
            "{headers}"
        );
        let (code, _, body) =
            curl([auth(TOKEN), args(&["-H", "Range: bytes=-10", &url])].concat()).await;
        assert_eq!((code, body.as_slice()), (206, &data[size - 10..]));
        let (code, headers, _) = curl(
            [
                auth(TOKEN),
                args(&["-H", &format!("Range: bytes={size}-"), &url]),
            ]
            .concat(),
        )
        .await;
        assert_eq!(code, 416);
        assert!(headers.contains(&format!("bytes */{size}")), "{headers}");
        // If-Range with a stale validator: the whole content.
        let (code, _, body) = curl(
            [
                auth(TOKEN),
                args(&["-r", "0-9", "-H", "If-Range: \"stale\"", &url]),
            ]
            .concat(),
        )
        .await;
        assert_eq!((code, body.len()), (200, size));
        // Multiple ranges: multipart/byteranges, parsed by Python's email parser.
        let (code, headers, body) =
            curl([auth(TOKEN), args(&["-r", "0-9,1000-1099,5000-", &url])].concat()).await;
        assert_eq!(code, 206);
        let ctype = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-type:"))
            .unwrap()
            .split_once(':')
            .unwrap()
            .1
            .trim()
            .to_string();
        let parsed = parse_multipart(&ctype, &body).await;
        assert_eq!(parsed.len(), 3);
        assert_eq!(
            parsed[0],
            (format!("bytes 0-9/{size}"), data[..10].to_vec())
        );
        assert_eq!(
            parsed[1],
            (format!("bytes 1000-1099/{size}"), data[1000..1100].to_vec())
        );
        assert_eq!(
            parsed[2],
            (
                format!("bytes 5000-{}/{size}", size - 1),
                data[5000..].to_vec()
            )
        );
        // Many ranges, or overlapping ranges that would repeat the content
        // past the in-memory bound: 416, nothing built.
        let many: Vec<String> = (0..1000).map(|i| format!("{i}-{i}")).collect();
        let repeated: Vec<String> = (0..30).map(|_| "0-".to_string()).collect();
        for ranges in [many.join(","), repeated.join(",")] {
            let (code, _, body) = curl([auth(TOKEN), args(&["-r", &ranges, &url])].concat()).await;
            assert_eq!(code, 416, "{}", String::from_utf8_lossy(&body));
            assert_eq!(
                serde_json::from_slice::<Value>(&body).unwrap()["error"],
                "too_large"
            );
        }
    }
    // Not ready: 409 without a Range, 206 for a range that is complete.
    let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let id = ready_job(&s.store, &data, JobState::Fetching);
    let url = format!("{}/v1/fetches/{id}/content", s.base);
    let (code, _, _) = curl([auth(TOKEN), args(&[&url])].concat()).await;
    assert_eq!(code, 409);
    let (code, _, body) = curl([auth(TOKEN), args(&["-r", "10-19", &url])].concat()).await;
    assert_eq!((code, body.as_slice()), (206, &data[10..20]));
}

/// (Content-Range, body) of each part, by Python's `email` package.
async fn parse_multipart(ctype: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let script = r#"
import sys, json, email, email.policy
ctype = sys.argv[1]
raw = b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + sys.stdin.buffer.read()
msg = email.message_from_bytes(raw, policy=email.policy.HTTP)
assert msg.is_multipart(), "not multipart"
out = [[p["Content-Range"], p.get_payload(decode=True).hex()] for p in msg.iter_parts()]
print(json.dumps(out))
"#;
    let (ctype, body) = (ctype.to_string(), body.to_vec());
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut c = Command::new("python3")
            .args(["-c", script, &ctype])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&body).unwrap();
        c.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let v: Vec<(String, String)> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|(r, h)| {
            let bytes = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect();
            (r, bytes)
        })
        .collect()
}

/// A raw HTTP/1.1 client on a plain socket (for what curl cannot do: hold
/// a connection idle, trickle a body).
async fn raw(base: &str) -> tokio::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

/// Read until the peer closes or `limit` of simulated time passes; what
/// arrived.
async fn read_for(s: &mut tokio::net::TcpStream, limit: std::time::Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// In simulated time, with one connection slot: a connection that sends
/// nothing makes room for a newcomer once it is 1 s old (the newcomer
/// waits for that, not for the 30-s header timeout); so does a user's idle
/// keep-alive connection once idle for 1 s; a connection whose request is
/// being served (here: a body trickled slower than the minimum rate) is
/// never cut, so a newcomer gets 503 at once, and that request gets 408
/// after the body timeout.
#[tokio::test(start_paused = true)]
async fn idle_connections_make_room_and_requests_in_progress_do_not() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start_with(1).await;
    let status = b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // The only slot: a connection that sends nothing.
    let mut idle = raw(&s.base).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut newcomer = raw(&s.base).await;
    newcomer.write_all(status).await.unwrap();
    let started = tokio::time::Instant::now();
    // The idle one is closed when it is 1 s old, and the newcomer served.
    assert_eq!(read_for(&mut idle, Duration::from_secs(20)).await, "");
    let answer = read_for(&mut newcomer, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(650) && waited < Duration::from_millis(800),
        "{waited:?}"
    );
    // A user's keep-alive connection, idle after its answer, makes room
    // once it has been idle for 1 s.
    let mut user = raw(&s.base).await;
    let own = format!(
        "GET /v1/fetches/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice:{TOKEN}\r\n\r\n",
        "0".repeat(32)
    );
    user.write_all(own.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 12];
    user.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 404");
    let mut next = raw(&s.base).await;
    next.write_all(status).await.unwrap();
    let started = tokio::time::Instant::now();
    let answer = read_for(&mut next, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        started.elapsed() < Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );
    let rest = read_for(&mut user, Duration::from_secs(5)).await;
    assert!(rest.contains("no_such_fetch"), "{rest}");
    // A request in progress: a body that stops after its first byte.
    let mut slow = raw(&s.base).await;
    let head = format!(
        "POST /v1/fetches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice:{TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // It is not cut: a newcomer is refused at once.
    let mut refused = raw(&s.base).await;
    refused.write_all(status).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let answer = read_for(&mut refused, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("\"busy\""), "{answer}");
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    // The trickled body gets 408 after 30 s.
    let answer = read_for(&mut slow, Duration::from_secs(120)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"body_timeout\""), "{answer}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(35),
        "{waited:?}"
    );
}

/// What a browser and a cache need: the origin's media type (not to be
/// sniffed), a file name, no storing by shared caches, 304 for a
/// conditional request, and the Range sequence of a `<video>` element
/// (`bytes=0-`, then a seek).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_described_for_browsers_and_caches() {
    let s = start().await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut job = Job {
        total: Some(data.len() as u64),
        content_type: Some("video/mp4".into()),
        ..Job::new(
            "https://origin.invalid/media/clip%20one.mp4?x=1".into(),
            "alice".into(),
            std::time::SystemTime::UNIX_EPOCH,
            None,
            None,
        )
    };
    job.set_ready(
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
    );
    let id = store_job(&s.store, &data, job);
    let url = format!("{}/v1/fetches/{id}/content", s.base);
    let (code, headers, body) = curl([auth(TOKEN), args(&[&url])].concat()).await;
    assert_eq!((code, body.len()), (200, data.len()));
    let lower = headers.to_ascii_lowercase();
    for want in [
        "content-type: video/mp4",
        "x-content-type-options: nosniff",
        "cache-control: private, no-store",
        "content-disposition: inline; filename=\"clip_20one.mp4\"",
        "last-modified: fri, 15 jan 2027 08:00:00 gmt",
        "accept-ranges: bytes",
    ] {
        assert!(lower.contains(want), "{want:?} missing:\n{headers}");
    }
    let etag = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("etag: ")
                .or_else(|| l.strip_prefix("ETag: "))
        })
        .unwrap()
        .trim()
        .to_string();
    // Conditional requests.
    for (h, want) in [
        (format!("If-None-Match: {etag}"), 304),
        ("If-None-Match: \"other\"".to_string(), 200),
        (
            "If-Modified-Since: Fri, 15 Jan 2027 08:00:00 GMT".to_string(),
            304,
        ),
        (
            "If-Modified-Since: Fri, 15 Jan 2027 07:59:59 GMT".to_string(),
            200,
        ),
    ] {
        let (code, headers, body) = curl([auth(TOKEN), args(&["-H", &h, &url])].concat()).await;
        assert_eq!(code, want, "{h}");
        if want == 304 {
            assert!(body.is_empty());
            assert!(headers
                .to_ascii_lowercase()
                .contains("cache-control: private, no-store"));
        }
    }
    // A <video> element: the whole file as a range, then a seek.
    let (code, headers, body) =
        curl([auth(TOKEN), args(&["-H", "Range: bytes=0-", &url])].concat()).await;
    assert_eq!((code, body.len()), (206, data.len()));
    assert!(
        headers.contains(&format!("bytes 0-{}/{}", data.len() - 1, data.len())),
        "{headers}"
    );
    let (code, headers, body) =
        curl([auth(TOKEN), args(&["-H", "Range: bytes=200000-", &url])].concat()).await;
    assert_eq!((code, body.as_slice()), (206, &data[200_000..]));
    assert!(headers
        .to_ascii_lowercase()
        .contains("content-type: video/mp4"));
}
