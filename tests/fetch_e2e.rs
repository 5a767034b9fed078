//! Delayed downloads end to end: the mote fetches from real origins (nginx
//! with Range, Python's http.server without) in random chunks, and curl
//! retrieves the result, resumably.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::origins::{Endless, Nginx, PyHttp};
use common::*;
use rand::{Rng, SeedableRng};
use serde_json::Value;

struct Client {
    base: String,
    auth: String,
}

impl Client {
    fn new(mote: &Mote) -> Self {
        Self {
            base: format!("http://127.0.0.1:{}", mote.http_port),
            auth: format!("Authorization: Bearer {PASSWORD}"),
        }
    }

    fn add(&self, url: &str) -> String {
        self.add_json(&serde_json::json!({ "url": url }))
    }

    /// POST a job with any fields (`not_before`, `deadline`).
    fn add_json(&self, job: &Value) -> String {
        let (code, body) = curl(&[
            "-H",
            &self.auth,
            "-X",
            "POST",
            &format!("{}/v1/fetches", self.base),
            "-d",
            &job.to_string(),
        ]);
        assert_eq!(code, 202, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn state(&self, id: &str) -> Value {
        let (code, body) = curl(&["-H", &self.auth, &format!("{}/v1/fetches/{id}", self.base)]);
        assert_eq!(code, 200);
        serde_json::from_slice(&body).unwrap()
    }

    fn wait_ready(&self, id: &str) -> Value {
        wait_for(Duration::from_secs(60), || {
            let v = self.state(id);
            assert_ne!(v["state"], "failed", "{v}");
            (v["state"] == "ready").then_some(v)
        })
        .unwrap_or_else(|| panic!("not ready: {}", self.state(id)))
    }

    fn content(&self, id: &str) -> Vec<u8> {
        let (code, body) = curl(&[
            "-H",
            &self.auth,
            &format!("{}/v1/fetches/{id}/content", self.base),
        ]);
        assert_eq!(code, 200);
        body
    }
}

#[test]
fn downloads_are_fetched_in_random_chunks_and_served_resumably() {
    let nginx = Nginx::start();
    let py = PyHttp::start();
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = "[fetch]\nchunk = { min = \"64KiB\", max = \"256KiB\" }\ndelay = { distribution = \"exponential\", mean = \"20ms\", min = \"1ms\", max = \"100ms\" }\nallow_private_addresses = true\n".into();
    let mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 12_345)
        .map(|_| rng.random())
        .collect();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one", vec![42]),
        ("big.bin", big.clone()),
    ];
    let mut jobs = Vec::new();
    for (name, data) in &files {
        jobs.push((client.add(&nginx.put(name, data)), data.clone(), *name));
    }
    let no_range: Vec<u8> = (0..300_000).map(|_| rng.random()).collect();
    jobs.push((
        client.add(&py.put("plain.bin", &no_range)),
        no_range.clone(),
        "plain.bin",
    ));
    for (id, data, name) in &jobs {
        let v = client.wait_ready(id);
        assert_eq!(v["total"].as_u64(), Some(data.len() as u64), "{name}: {v}");
        assert_eq!(&client.content(id), data, "{name}: byte-identical");
    }
    // The origin's media type comes along (Python's http.server names a
    // .bin file application/octet-stream, nginx without mime.types says
    // text/plain).
    let content_type = |args: &[&str]| -> String {
        let out = std::process::Command::new("curl")
            .args(["-sI"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let at_origin = content_type(&[&format!("http://127.0.0.1:{}/big.bin", nginx.port)]);
    let at_mote = content_type(&[
        "-H",
        &client.auth,
        &format!("{}/v1/fetches/{}/content", client.base, jobs[2].0),
    ]);
    assert!(!at_origin.is_empty());
    assert_eq!(at_mote, at_origin);
    // The big file came in several Range requests, each asked once, in
    // random sizes within the bounds.
    let reqs: Vec<(String, u16, String)> = nginx
        .requests()
        .into_iter()
        .filter(|r| r.0 == "/big.bin")
        .collect();
    assert!(
        reqs.len() >= 12,
        "3 MiB in chunks of at most 256 KiB: {reqs:?}"
    );
    let ranges: Vec<&String> = reqs.iter().map(|r| &r.2).collect();
    let mut distinct = ranges.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ranges.len(), "no chunk fetched twice");
    let sizes: Vec<u64> = reqs
        .iter()
        .filter(|r| r.1 == 206)
        .filter_map(|r| {
            let (a, b) = r.2.strip_prefix("bytes=")?.split_once('-')?;
            Some(b.parse::<u64>().ok()? - a.parse::<u64>().ok()? + 1)
        })
        .collect();
    assert!(
        sizes.iter().all(|s| (65_536..=262_144).contains(s)),
        "{sizes:?}"
    );
    assert!(
        sizes.iter().any(|s| *s != sizes[0]),
        "chunk sizes are random: {sizes:?}"
    );
    // Resumable retrieval with curl -C -.
    let (id, _, _) = &jobs[2];
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("big.part");
    std::fs::write(&part, &big[..1_000_000]).unwrap();
    let (code, _) = curl(&[
        "-H",
        &client.auth,
        "-C",
        "-",
        "-o",
        part.to_str().unwrap(),
        &format!("{}/v1/fetches/{id}/content", client.base),
    ]);
    assert_eq!(code, 206);
    assert_eq!(std::fs::read(&part).unwrap(), big);
}

#[test]
fn kill_9_mid_download_resumes_without_refetching_stored_chunks() {
    let nginx = Nginx::start();
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = "[fetch]\nchunk = { min = \"64KiB\", max = \"128KiB\" }\ndelay = { distribution = \"constant\", value = \"30ms\" }\nallow_private_addresses = true\n".into();
    let mut mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let data: Vec<u8> = (0..5 * 1024 * 1024).map(|_| rng.random()).collect();
    let id = client.add(&nginx.put("f.bin", &data));
    // Once the size is known the job says when it expects to be ready.
    let v = wait_for(Duration::from_secs(30), || {
        let v = client.state(&id);
        v["expected_ready_ms"].as_u64().map(|_| v)
    })
    .expect("an expected ready time");
    assert_eq!(v["total"].as_u64(), Some(data.len() as u64), "{v}");
    // The estimate: the chunks left (at least 5 MiB / 128 KiB - 1 = 39)
    // times the 30 ms delay, from now; not in the past, not absurdly late.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let eta = v["expected_ready_ms"].as_u64().unwrap();
    assert!(
        eta + 1000 >= now_ms + 39 * 30 && eta <= now_ms + 80 * 30 + 1000,
        "expected ready {eta} vs now {now_ms}: {v}"
    );
    let mut kills = 0;
    for after in [6, 18, 30] {
        // Kill once the origin has served `after` chunk requests.
        let seen = wait_for(Duration::from_secs(60), || {
            (nginx.requests().len() >= after).then_some(())
        });
        assert!(seen.is_some(), "the download did not progress");
        mote.kill9();
        kills += 1;
        mote.spawn();
    }
    let client = Client::new(&mote);
    client.wait_ready(&id);
    assert_eq!(client.content(&id), data, "intact after {kills} kills");
    let starts: Vec<u64> = nginx
        .requests()
        .iter()
        .filter_map(|r| r.2.strip_prefix("bytes=")?.split_once('-')?.0.parse().ok())
        .collect();
    let mut sorted = starts.clone();
    sorted.sort();
    let total = sorted.len();
    sorted.dedup();
    let refetched = total - sorted.len();
    println!(
        "fetch crash test: {total} chunk requests, {refetched} repeated after {kills} kill -9"
    );
    // At most the chunk in flight at each kill is asked for again; a chunk
    // that was stored is never fetched twice.
    assert!(
        refetched <= kills,
        "{refetched} repeated requests for {kills} kills: {starts:?}"
    );
}

#[test]
fn an_object_that_changes_mid_download_is_detected_and_fetched_whole() {
    let nginx = Nginx::start();
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = "[fetch]\nchunk = { min = \"64KiB\", max = \"64KiB\" }\ndelay = { distribution = \"constant\", value = \"50ms\" }\nallow_private_addresses = true\n".into();
    let mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    let old = vec![b'o'; 2 * 1024 * 1024];
    let id = client.add(&nginx.put("v.bin", &old));
    // Change the object once a few chunks of the old one are in.
    let seen = wait_for(Duration::from_secs(60), || {
        (nginx.requests().len() >= 3).then_some(())
    });
    assert!(seen.is_some());
    // A different size gives a different ETag (nginx: mtime-size).
    let new = vec![b'n'; 1024 * 1024 + 5];
    nginx.put("v.bin", &new);
    let v = client.wait_ready(&id);
    assert_eq!(v["total"].as_u64(), Some(new.len() as u64));
    assert_eq!(
        client.content(&id),
        new,
        "the new object, not a mix of old and new"
    );
    // The changed object was answered with 200 to our If-Range.
    assert!(
        nginx.requests().iter().any(|r| r.1 == 200),
        "{:?}",
        nginx.requests()
    );
}

#[test]
fn the_fetch_cli_and_aria2c_retrieve_and_resume() {
    let nginx = Nginx::start();
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = "[fetch]\nchunk = { min = \"256KiB\", max = \"1MiB\" }\ndelay = { distribution = \"constant\", value = \"5ms\" }\nallow_private_addresses = true\n".into();
    let mote = Mote::start(&cfg);
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    // The large file of the suite (48 MiB).
    let data: Vec<u8> = (0..48 * 1024 * 1024 + 3).map(|_| rng.random()).collect();
    let url = nginx.put("c.bin", &data);
    let api = format!("127.0.0.1:{}", mote.http_port);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(["fetch", "--api", &api])
            .args(args)
            .env("DUSTMOTE_TOKEN", PASSWORD)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, id, err) = cli(&["add", &url]);
    assert!(ok && id.len() == 32, "{err}");
    let done = wait_for(Duration::from_secs(60), || {
        let (ok, out, _) = cli(&["status", &id]);
        (ok && out.starts_with("ready")).then_some(out)
    });
    assert!(done.is_some(), "{:?}", cli(&["status", &id]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.bin");
    let (ok, _, err) = cli(&["get", &id, "-o", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), data);
    // Resume: a partial file whose first MiB is (deliberately) zeros. A
    // client that resumes keeps those bytes and asks only for the rest.
    let partial = [vec![0u8; 1 << 20]].concat();
    std::fs::write(&file, &partial).unwrap();
    let (ok, _, err) = cli(&["get", &id, "-o", file.to_str().unwrap()]);
    assert!(ok && err.contains("resumed at 1048576"), "{err}");
    let got = std::fs::read(&file).unwrap();
    assert_eq!(
        (&got[..1 << 20], &got[1 << 20..]),
        (&partial[..], &data[1 << 20..])
    );
    // aria2c with -c does the same.
    let afile = dir.path().join("a.bin");
    std::fs::write(&afile, &partial).unwrap();
    let out = std::process::Command::new("aria2c")
        .args([
            "-q",
            "-c",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
        ])
        .arg(format!("--header=Authorization: Bearer {PASSWORD}"))
        .args(["-d", dir.path().to_str().unwrap(), "-o", "a.bin"])
        .arg(format!("http://{api}/v1/fetches/{id}/content"))
        .output()
        .expect("aria2c (run tests/install-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let got = std::fs::read(&afile).unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(
        &got[..1 << 20],
        &partial[..],
        "aria2c resumed instead of starting over"
    );
    assert_eq!(&got[1 << 20..], &data[1 << 20..]);
    // A whole fresh retrieval by aria2c is byte-identical.
    let fresh = dir.path().join("fresh.bin");
    let out = std::process::Command::new("aria2c")
        .args(["-q", "--allow-overwrite=true"])
        .arg(format!("--header=Authorization: Bearer {PASSWORD}"))
        .args(["-d", dir.path().to_str().unwrap(), "-o", "fresh.bin"])
        .arg(format!("http://{api}/v1/fetches/{id}/content"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read(&fresh).unwrap(), data);
}

#[test]
fn limits_private_addresses_and_origin_errors_fail_jobs_cleanly() {
    let nginx = Nginx::start();
    let sink = Sink::start();
    let fast = "chunk = { min = \"64KiB\", max = \"64KiB\" }\ndelay = { distribution = \"constant\", value = \"5ms\" }\n";
    // Private addresses are refused unless allowed.
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = format!("[fetch]\n{fast}");
    let mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    let id = client.add(&nginx.put("p.bin", b"private"));
    let v = wait_for(Duration::from_secs(30), || {
        let v = client.state(&id);
        (v["state"] == "failed").then_some(v)
    })
    .expect("a job to 127.0.0.1 fails without allow_private_addresses");
    assert!(
        v["reason"].as_str().unwrap().contains("private address"),
        "{v}"
    );
    drop(mote);
    // Per-user cap, and an origin 404.
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra =
        format!("[fetch]\n{fast}allow_private_addresses = true\nmax_user_bytes = \"1MiB\"\n");
    let mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    let first = client.add(&nginx.put("a.bin", &vec![1u8; 600_000]));
    client.wait_ready(&first);
    let second = client.add(&nginx.put("b.bin", &vec![2u8; 600_000]));
    let missing = client.add(&format!("http://127.0.0.1:{}/nope", nginx.port));
    let looping = client.add(&format!("http://127.0.0.1:{}/loop", nginx.port));
    let late = client.add_json(&serde_json::json!({
        "url": nginx.put("late.bin", b"too late"),
        "deadline": humantime::format_rfc3339(SystemTime::now() - Duration::from_secs(60)).to_string(),
    }));
    for (id, want) in [
        (second, "per-user limit"),
        (missing, "404"),
        (looping, "too many redirects"),
        (late, "deadline passed"),
    ] {
        let v = wait_for(Duration::from_secs(30), || {
            let v = client.state(&id);
            (v["state"] == "failed").then_some(v)
        })
        .unwrap_or_else(|| panic!("{}", client.state(&id)));
        assert!(v["reason"].as_str().unwrap().contains(want), "{v}");
    }
    assert_eq!(client.content(&first), vec![1u8; 600_000]);
    // The redirect loop was followed max_redirects (default 5) times, then
    // given up; the late job never reached the origin.
    let log = nginx.requests();
    assert_eq!(log.iter().filter(|r| r.0 == "/loop").count(), 6, "{log:?}");
    assert!(!log.iter().any(|r| r.0 == "/late.bin"), "{log:?}");
}

#[test]
fn a_job_waits_for_its_not_before_time() {
    let nginx = Nginx::start();
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = "[fetch]\nchunk = { min = \"64KiB\", max = \"64KiB\" }\ndelay = { distribution = \"constant\", value = \"5ms\" }\nallow_private_addresses = true\n".into();
    let mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    // RFC 3339 has whole seconds here: not before the next second + 2 s.
    let not_before = SystemTime::now() + Duration::from_secs(3);
    let not_before_s = humantime::format_rfc3339_seconds(not_before).to_string();
    let id = client.add_json(&serde_json::json!({
        "url": nginx.put("later.bin", &[7u8; 200_000]),
        "not_before": not_before_s,
    }));
    let not_before_ms = humantime::parse_rfc3339(&not_before_s)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Queued until not_before; only a check that ends after it (a loaded
    // machine) may see it started.
    let state = client.state(&id)["state"].clone();
    let checked_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        state == "queued" || checked_ms >= not_before_ms,
        "{state} at {checked_ms}, before not_before {not_before_ms}"
    );
    client.wait_ready(&id);
    assert_eq!(client.content(&id), vec![7u8; 200_000]);
    let times = nginx.request_times_ms();
    assert!(times.len() >= 4, "in chunks: {times:?}");
    assert!(
        times.iter().all(|t| *t >= not_before_ms),
        "a chunk was fetched before not_before ({not_before_ms}): {times:?}"
    );
}

#[test]
fn https_origins_are_fetched_with_an_extra_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    let nginx = Nginx::start_tls(Some((&cert, &key)));
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = format!(
        "[fetch]\nchunk = {{ min = \"64KiB\", max = \"128KiB\" }}\ndelay = {{ distribution = \"constant\", value = \"5ms\" }}\nallow_private_addresses = true\nca_file = \"{ca}\"\n"
    );
    let mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    let data: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
    let id = client.add(&nginx.put_https("s.bin", &data));
    client.wait_ready(&id);
    assert_eq!(client.content(&id), data);
    assert!(nginx.requests().len() >= 4, "in chunks over TLS");
}

/// The limits hold when the origin never says how large the object is
/// (`206` with `Content-Range: bytes A-B/*`): the bytes are counted as they
/// arrive, per job and per user; a failed job's content is removed. A
/// redirect out of http(s) is not followed.
#[test]
fn limits_hold_without_a_known_size_and_redirects_stay_on_http() {
    let nginx = Nginx::start();
    let endless = Endless::start();
    let sink = Sink::start();
    let fast = "chunk = { min = \"64KiB\", max = \"64KiB\" }\ndelay = { distribution = \"constant\", value = \"5ms\" }\nallow_private_addresses = true\n";
    let failed = |client: &Client, id: &str| {
        wait_for(Duration::from_secs(60), || {
            let v = client.state(id);
            (v["state"] == "failed").then_some(v)
        })
        .unwrap_or_else(|| panic!("{}", client.state(id)))
    };
    // Per job: 512 KiB are 8 chunks; the 9th request is refused.
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = format!("[fetch]\n{fast}max_job_bytes = \"512KiB\"\n");
    let mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    let id = client.add(&endless.url("job"));
    let v = failed(&client, &id);
    assert!(
        v["reason"].as_str().unwrap().contains("per-job limit"),
        "{v}"
    );
    assert_eq!(v["bytes_stored"], 0, "{v}");
    assert_eq!(endless.requests("job"), 9);
    // A redirect to gopher:// fails the job; nothing else is asked.
    let id = client.add(&format!("http://127.0.0.1:{}/gopher", nginx.port));
    let v = failed(&client, &id);
    assert!(
        v["reason"].as_str().unwrap().contains("not http or https"),
        "{v}"
    );
    assert_eq!(
        nginx.requests().iter().filter(|r| r.0 == "/gopher").count(),
        1
    );
    drop(mote);
    // Per user: two endless jobs share 768 KiB (12 chunks); each fails at
    // the user's limit, having asked for at most one chunk beyond it.
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = format!("[fetch]\n{fast}max_user_bytes = \"768KiB\"\n");
    let mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    let ids = [
        client.add(&endless.url("u1")),
        client.add(&endless.url("u2")),
    ];
    for id in &ids {
        let v = failed(&client, id);
        assert!(
            v["reason"].as_str().unwrap().contains("per-user limit"),
            "{v}"
        );
    }
    for name in ["u1", "u2"] {
        let n = endless.requests(name);
        assert!((1..=13).contains(&n), "{name}: {n} requests");
    }
}

/// Every file under `dir`, with its mode.
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue; // removed meanwhile (sled's blobs, a finished job)
        };
        out.push((p.clone(), meta.permissions().mode() & 0o777));
        if meta.is_dir() {
            out.extend(tree(&p));
        }
    }
    out
}

/// The markers found in any file under `dir`.
fn plaintext_on_disk(dir: &std::path::Path, markers: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for (p, _) in tree(dir) {
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        for m in markers {
            if data.windows(m.len()).any(|w| w == m.as_bytes()) {
                hits.push(format!("{m:?} in {}", p.display()));
            }
        }
    }
    hits
}

#[test]
fn sealed_at_rest_during_and_after_delivery_and_refused_without_the_key() {
    let nginx = Nginx::start();
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    // Held long enough to look at the disk while both are queued.
    cfg.delay = r#"{ distribution = "constant", value = "4s" }"#.into();
    cfg.extra = "[fetch]\nchunk = { min = \"64KiB\", max = \"256KiB\" }\ndelay = { distribution = \"constant\", value = \"1500ms\" }\nallow_private_addresses = true\n".into();
    let mut mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    let subject = "Subject-marker-8c1f2e";
    let from = "sealed-sender-5d@example.org";
    let to = "sealed-rcpt-77@example.net";
    let body = "body-marker-0a9b3c the letter itself";
    let (ok, t) = swaks_auth(
        mote.port,
        PASSWORD,
        &[
            "--from",
            from,
            "--to",
            to,
            "--header",
            &format!("Subject: {subject}"),
            "--body",
            body,
        ],
    );
    assert!(ok, "{t}");
    let content_marker = "content-marker-f00d";
    let content = format!("{content_marker}\n").repeat(40_000); // ~800 KiB, many blocks
    let url = nginx.put("path-marker-4242.txt", content.as_bytes());
    let id = client.add(&url);
    let markers = [
        subject,
        from,
        to,
        "body-marker-0a9b3c",
        "path-marker-4242",
        content_marker,
    ];
    let data = mote.data_dir();

    // While queued: the mail is held, the job (with its URL) is stored.
    assert!(mote.queue_counts().is_some_and(|(q, _)| q >= 1));
    assert_eq!(plaintext_on_disk(&data, &markers), Vec::<String>::new());
    // The download finished: its content is on disk, sealed.
    client.wait_ready(&id);
    assert_eq!(plaintext_on_disk(&data, &markers), Vec::<String>::new());
    assert_eq!(client.content(&id), content.as_bytes());
    // After delivery (the sink has it, in the clear).
    let got = sink.wait_messages(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].raw).contains(subject));
    mote.wait_drained(Duration::from_secs(30));
    assert_eq!(plaintext_on_disk(&data, &markers), Vec::<String>::new());

    // Private to the mote's user: directories 0700, files and the socket 0600.
    let entries = tree(&data);
    assert!(entries.len() > 3, "{entries:?}");
    for (p, mode) in &entries {
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
    }
    assert_eq!(
        std::fs::metadata(&data)
            .map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o777
            })
            .unwrap(),
        0o700
    );
    // The key is in the runtime directory (a tmpfs), not beside the data.
    let keys: Vec<_> = std::fs::read_dir(mote.runtime.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(std::fs::metadata(&keys[0]).unwrap().len(), 32);

    // A reboot loses the key: the mote refuses the store, saying why.
    assert!(mote.terminate().success());
    std::fs::remove_file(&keys[0]).unwrap();
    mote.spawn_unchecked();
    let status = mote.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    let log = mote.log();
    assert!(
        log.contains("is sealed and its key") && log.contains("move"),
        "{log}"
    );
    assert!(!keys[0].exists(), "no new key was made for the old store");
}

/// REDbot (an HTTP linter from PyPI) on a finished download's content URL,
/// through `tests/peers/auth_proxy.py`, which adds the bearer token.
#[test]
fn redbot_finds_validation_a_type_and_no_shared_caching() {
    let nginx = Nginx::start();
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = "[fetch]\nchunk = { min = \"256KiB\", max = \"1MiB\" }\ndelay = { distribution = \"constant\", value = \"5ms\" }\nallow_private_addresses = true\n".into();
    let mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|_| rng.random()).collect();
    let id = client.add(&nginx.put("talk.pdf", &data));
    client.wait_ready(&id);

    let port = free_port();
    let _proxy = Proc(
        std::process::Command::new("python3")
            .arg(peer("auth_proxy.py"))
            .args([&port.to_string(), &mote.http_port.to_string(), PASSWORD])
            .spawn()
            .unwrap(),
    );
    assert!(wait_for(Duration::from_secs(10), || port_open(port).then_some(())).is_some());
    let url = format!("http://127.0.0.1:{port}/v1/fetches/{id}/content");
    let out = std::process::Command::new("redbot")
        .args(["-o", "text", &url])
        .output()
        .expect("redbot (run tests/install-deps.sh)");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{report}");
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = report.split("\n\n").next().unwrap_or("");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/pdf")
            || head.contains("Content-Type: application/pdf"),
        "{head}"
    );
    for good in [
        "If-None-Match conditional requests are supported.",
        "If-Modified-Since conditional requests are supported.",
        "A ranged request returned the correct partial content.",
        "This response instructs browsers not to 'sniff' its media type.",
    ] {
        assert!(report.contains(good), "missing {good:?} in\n{report}");
    }
    assert!(
        report.contains("can't be stored by caches")
            || report.contains("cannot be stored by caches"),
        "{report}"
    );
    for bad in [
        "returned the full content",
        "allows all caches to store it",
        "can be stored by all caches",
        "returned a 200 status",
        "partial content, but it was incorrect",
        "doesn't match the declared Content-Type",
    ] {
        assert!(!report.contains(bad), "REDbot says {bad:?}:\n{report}");
    }

    // A browser's <video>: the first request asks for everything from 0,
    // the seek asks from the middle; both are 206 with the right bytes.
    for start in [0usize, data.len() / 2 + 3] {
        let (code, body) = curl(&[
            "-H",
            &client.auth,
            "-H",
            &format!("Range: bytes={start}-"),
            &format!("{}/v1/fetches/{id}/content", client.base),
        ]);
        assert_eq!(code, 206);
        assert_eq!(body, &data[start..]);
    }
}

/// Fetched content is someone else's page served on the API's own origin
/// (issue 22, finding 15): every answer about it — whole, ranged,
/// not-modified — tells a browser to sandbox it (no scripts, no same-origin
/// access to the API and the token it holds) and other sites not to embed
/// it.
#[test]
fn fetched_pages_are_sandboxed_on_the_apis_origin() {
    let nginx = Nginx::start();
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.extra = "[fetch]\ndelay = { distribution = \"constant\", value = \"5ms\" }\nallow_private_addresses = true\n".into();
    let mote = Mote::start(&cfg);
    let client = Client::new(&mote);
    let page =
        b"<html><script>fetch('/v1/fetches').then(r => r.text()).then(alert)</script></html>";
    let id = client.add(&nginx.put("page.html", page));
    let state = client.wait_ready(&id);
    let url = format!("{}/v1/fetches/{id}/content", client.base);
    let head = |extra: &[&str]| -> String {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-D", "-", "-H", &client.auth])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    };
    let etag = state["etag"].as_str().map(str::to_string);
    let mut answers = vec![
        ("whole", head(&[])),
        ("range", head(&["-H", "Range: bytes=0-9"])),
    ];
    let full = &answers[0].1;
    let tag = full
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .map(|t| t.trim().to_string())
        .or(etag)
        .expect("an ETag");
    answers.push((
        "not modified",
        head(&["-H", &format!("If-None-Match: {tag}")]),
    ));
    for (what, h) in &answers {
        let status = h.lines().next().unwrap_or_default().to_string();
        let want = match *what {
            "whole" => " 200",
            "range" => " 206",
            _ => " 304",
        };
        assert!(status.contains(want), "{what}: {h}");
        assert!(
            h.contains("content-security-policy: sandbox\r\n"),
            "{what}: {h}"
        );
        assert!(
            h.contains("cross-origin-resource-policy: same-origin\r\n"),
            "{what}: {h}"
        );
    }
}
