//! Operator tuning end to end with the real binary: reloading the mixer
//! settings (SIGHUP and `dustmote reload`), the mote's lifetime (refusals
//! near the end, `Retry-After`, a clean exit at expiry, the expiry kept
//! across restarts), and the anonymity metrics in `/metrics` and
//! `dustmote status`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn set_delay(mote: &Mote, delay: &str) {
    let text = std::fs::read_to_string(&mote.config).unwrap();
    let start = text.find("delay = ").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    let new = format!("{}delay = {delay}{}", &text[..start], &text[end..]);
    std::fs::write(&mote.config, new).unwrap();
}

fn reload(mote: &Mote) -> (bool, String) {
    let out = mote.cli("reload");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The release time of the only queued item, as `dustmote queue` prints it
/// (the absolute time, without the "in …" part).
fn release_line(mote: &Mote) -> String {
    let q = mote.queue_text(&[]);
    q.lines()
        .skip_while(|l| !l.starts_with("next releases"))
        .nth(1)
        .unwrap_or_else(|| panic!("no release listed: {q}"))
        .split("  (")
        .next()
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn reload_applies_new_settings_without_retiming_or_accepting_bad_ones() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "1h" }"#.into();
    let mote = Mote::start(&cfg);
    submit(mote.port, "a@example.net", "scheduled before the reload");
    let before = release_line(&mote);

    // An invalid file is refused; the old settings stay.
    set_delay(&mote, r#"{ distribution = "exponential", mean = "0s" }"#);
    let (ok, text) = reload(&mote);
    assert!(!ok, "{text}");
    assert!(text.contains("mixer.delay.mean"), "{text}");
    let delay = mote.status_json()["mix"]["strategy"]["delay"].to_string();
    assert!(delay.contains("3600s"), "{delay}");

    // A valid file, applied with SIGHUP.
    set_delay(&mote, r#"{ distribution = "constant", value = "1s" }"#);
    mote.signal("HUP");
    let applied = wait_for(Duration::from_secs(10), || {
        let d = mote.status_json()["mix"]["strategy"]["delay"].to_string();
        d.contains("1s").then_some(d)
    });
    assert!(applied.is_some(), "SIGHUP did not apply: {}", mote.log());
    assert!(mote.log().contains("SIGHUP: mixer settings reloaded"));
    submit(mote.port, "b@example.net", "after the reload");
    let got = sink.wait_messages(1, Duration::from_secs(30));
    assert_eq!(got[0].rcpt_tos, ["b@example.net"]);
    // The first message kept its time.
    assert_eq!(release_line(&mote), before);
    assert_eq!(sink.messages().len(), 1);

    // `dustmote reload` to the pool strategy.
    let text = std::fs::read_to_string(&mote.config).unwrap();
    std::fs::write(
        &mote.config,
        text.replace(
            "strategy = \"poisson\"",
            "strategy = \"pool\"\npool = { interval = \"1s\", min_pool = 0, rate = 1.0 }",
        ),
    )
    .unwrap();
    let (ok, text) = reload(&mote);
    assert!(ok, "{text}");
    assert!(text.contains("reloaded"), "{text}");
    assert_eq!(mote.status_json()["mix"]["strategy"]["name"], "pool");
    submit(mote.port, "c@example.net", "through the pool");
    let got = sink.wait_messages(2, Duration::from_secs(30));
    assert_eq!(got[1].rcpt_tos, ["c@example.net"]);
    assert_eq!(release_line(&mote), before);
}

#[test]
fn a_mote_refuses_near_its_end_and_exits_at_expiry_and_stays_expired() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "1s" }"#.into();
    cfg.extra = "[mote]\nlifetime = \"14s\"\ndrain_margin = \"7s\"\n".into();
    let mut mote = Mote::start(&cfg);
    let expires = mote.status_json()["expires_at"]
        .as_str()
        .unwrap()
        .to_string();
    submit(mote.port, "early@example.net", "early enough");
    sink.wait_messages(1, Duration::from_secs(10));

    // After the drain point: 452 4.3.1 for mail, 503 + Retry-After for
    // downloads.
    let msg = mote.dir.path().join("late.eml");
    // Until then every message is accepted (and must leave before the end).
    // Each is a different message (a resent one would be stored once).
    let mut accepted = 0;
    let mut sent = 0;
    let refused = wait_for(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(200));
        sent += 1;
        std::fs::write(&msg, format!("Subject: late {sent}\r\n\r\nlate\r\n")).unwrap();
        let v = smtplib_send(
            mote.port,
            Some("plain"),
            PASSWORD,
            "me@example.org",
            &["late@example.net"],
            &msg,
        );
        if v["ok"] == true {
            accepted += 1;
        }
        (v["ok"] == false).then_some(v)
    })
    .expect("no refusal before expiry");
    assert!(accepted > 3, "{accepted} accepted before the drain point");
    assert_refused(&refused, "data", 452);
    assert!(refused.to_string().contains("4.3.1"), "{refused}");
    let out = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-H",
            &format!("Authorization: Bearer {PASSWORD}"),
            "-X",
            "POST",
            "-d",
            r#"{"url":"http://127.0.0.1:9/x"}"#,
            &format!("http://127.0.0.1:{}/v1/fetches", mote.http_port),
        ])
        .output()
        .unwrap();
    let resp = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(resp.starts_with("http/1.1 503"), "{resp}");
    let retry = retry_after(&resp);
    assert!((1..=15).contains(&retry), "Retry-After {retry}");
    assert!(resp.contains("\"error\":\"expiring\""), "{resp}");

    // At expiry the process stops by itself, cleanly, with the status that
    // tells dustmote.service to power the VM off (10; a stop signal gives 0).
    let status = mote
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running after expiry: {}", mote.log()));
    assert_eq!(status.code(), Some(10), "{status:?}");
    assert!(mote.log().contains("lifetime is over"), "{}", mote.log());
    // Everything accepted left before the end; the refused one did not.
    assert_eq!(sink.messages().len(), 1 + accepted, "{}", mote.log());

    // Restarted, it keeps its first start: already expired, it does not
    // serve at all.
    mote.spawn_unchecked();
    let status = mote
        .wait_exit(Duration::from_secs(30))
        .expect("expired mote keeps running");
    assert_eq!(status.code(), Some(10), "{status:?}");
    assert!(
        mote.log().contains(&expires),
        "expiry moved: {}",
        mote.log()
    );
    assert!(mote.log().contains("not starting"), "{}", mote.log());
    assert!(!port_open(mote.port));
}

#[test]
fn metrics_and_status_show_the_mix() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "2s" }"#.into();
    let mote = Mote::start(&cfg);
    // Three messages together in the pool, then out.
    for i in 0..3 {
        submit(mote.port, "m@example.net", &format!("metrics {i}"));
    }
    sink.wait_messages(3, Duration::from_secs(30));
    let m = mote.metrics();
    let value = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("dustmote_mix_outputs_total"), 3.0);
    assert_eq!(value("dustmote_mix_pool_items"), 0.0);
    assert!(value("dustmote_mix_entropy_bits_mean") > 0.0, "{m}");
    assert_eq!(value("dustmote_mix_latency_seconds_count"), 3.0);
    assert!(
        m.contains("dustmote_mix_latency_seconds_bucket{le=\"+Inf\"} 3"),
        "{m}"
    );
    // Each waited its 2 s: none in the 1 s bucket, all in the 5 s one.
    assert!(
        m.contains("dustmote_mix_latency_seconds_bucket{le=\"1.0\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("dustmote_mix_latency_seconds_bucket{le=\"5.0\"} 3"),
        "{m}"
    );
    let st = mote.cli("status");
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(text.contains("mix:       poisson"), "{text}");
    assert!(text.contains("over 3 outputs"), "{text}");
    assert!(text.contains("latency:   median <= 5s"), "{text}");
    // The running executable's SHA-256, as sha256sum(1) computes it from
    // the file: in `dustmote status`, `/status` and the startup log.
    let out = std::process::Command::new("sha256sum")
        .arg(bin())
        .output()
        .unwrap();
    let sum = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(sum.len(), 64);
    // Hashed on its own thread after the start: wait until it is known.
    let hashed = wait_for(Duration::from_secs(30), || {
        (mote.status_json()["executable"]["sha256"] != "").then_some(())
    });
    assert!(hashed.is_some(), "{}", mote.status_json());
    let st = mote.cli("status");
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        text.contains(&format!(
            "executable: dustmote {} sha256 {sum}",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert_eq!(mote.status_json()["executable"]["sha256"], sum.as_str());
    assert!(mote.log().contains(&sum), "{}", mote.log());
}

/// `/metrics` is OpenMetrics that a real parser (prometheus_client's, strict)
/// accepts, every family has HELP and TYPE, counters are counters and the
/// latency is a real histogram, and the values match what happened.
#[test]
fn metrics_parse_as_openmetrics_with_help_and_type() {
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "1s" }"#.into();
    let mote = Mote::start(&cfg);
    for i in 0..2 {
        submit(mote.port, "m@example.net", &format!("openmetrics {i}"));
    }
    sink.wait_messages(2, Duration::from_secs(30));
    let scrape = Command::new("curl")
        .args([
            "-s",
            "-D",
            "/dev/stderr",
            "-H",
            &format!("Authorization: Bearer {PASSWORD}"),
            &format!("http://127.0.0.1:{}/metrics", mote.http_port),
        ])
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&scrape.stderr).to_ascii_lowercase();
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    let mut parser = Command::new("python3")
        .arg(peer("parse_metrics.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(&scrape.stdout)
        .unwrap();
    let parsed = parser.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&scrape.stdout);
    assert!(
        parsed.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let families: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    let mut names: Vec<&str> = families
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "dustmote_fetch_jobs",
            "dustmote_mix_cover_items",
            "dustmote_mix_entropy_bits",
            "dustmote_mix_entropy_bits_mean",
            "dustmote_mix_held_items",
            "dustmote_mix_latency_seconds",
            "dustmote_mix_outputs",
            "dustmote_mix_pool_items",
            "dustmote_mix_pool_mean",
            "dustmote_mix_unmixed",
            "dustmote_mix_unmixed_ratio",
            "dustmote_queue_items",
            "dustmote_transport_ready",
        ],
        "{text}"
    );
    let family = |name: &str| &families[name];
    let sample = |name: &str, sample: &str| -> f64 {
        family(name)["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s[0] == sample)
            .unwrap_or_else(|| panic!("{sample} missing:\n{text}"))[2]
            .as_f64()
            .unwrap()
    };
    for (name, kind) in [
        ("dustmote_mix_outputs", "counter"),
        ("dustmote_mix_unmixed", "counter"),
        ("dustmote_mix_cover_items", "counter"),
        ("dustmote_mix_latency_seconds", "histogram"),
        ("dustmote_mix_pool_items", "gauge"),
        ("dustmote_queue_items", "gauge"),
    ] {
        assert_eq!(family(name)["type"], kind, "{name}");
    }
    assert_eq!(
        sample("dustmote_mix_outputs", "dustmote_mix_outputs_total"),
        2.0
    );
    assert_eq!(
        sample(
            "dustmote_mix_latency_seconds",
            "dustmote_mix_latency_seconds_count"
        ),
        2.0
    );
    // Each waited its 1 s (the bucket bounds are inclusive).
    assert!(
        sample(
            "dustmote_mix_latency_seconds",
            "dustmote_mix_latency_seconds_sum"
        ) >= 2.0,
        "{text}"
    );
    assert_eq!(
        sample("dustmote_transport_ready", "dustmote_transport_ready"),
        1.0
    );
}

/// Cover traffic: with no real traffic the mote sends dummy messages to the
/// configured sink and dummy Range requests to the configured URL, through
/// the same paths as real items; a dummy message has exactly the header
/// fields of a real one with the same header set; switching cover off by
/// reload stops it and leaves no dummy download behind.
#[test]
fn cover_traffic_goes_out_like_real_traffic() {
    let nginx = common::origins::Nginx::start();
    let url = nginx.put("noise.bin", &vec![7u8; 300_000]);
    let sink = Sink::start();
    let mut cfg = MoteConfig::new(sink.port);
    cfg.delay = r#"{ distribution = "constant", value = "300ms" }"#.into();
    cfg.extra = format!(
        "[fetch]\nallow_private_addresses = true\nchunk = {{ min = \"16KiB\", max = \"64KiB\" }}\n\
         delay = {{ distribution = \"constant\", value = \"300ms\" }}\n\
         [cover]\nrate = \"10/s\"\ntarget_pool = 2\nmail_to = \"cover@sink.example\"\n\
         mail_from = \"noise@mote.example\"\nfetch_urls = [\"{url}\"]\n"
    );
    let mote = Mote::start(&cfg);
    let dummies = wait_for(Duration::from_secs(30), || {
        let m: Vec<_> = sink
            .messages()
            .into_iter()
            .filter(|d| d.rcpt_tos == ["cover@sink.example"])
            .collect();
        (m.len() >= 3).then_some(m)
    })
    .unwrap_or_else(|| panic!("no dummy mail: {}", mote.log()));
    assert!(dummies.iter().all(|d| d.mail_from == "noise@mote.example"));
    let ranges = wait_for(Duration::from_secs(30), || {
        let r: Vec<_> = nginx
            .requests()
            .into_iter()
            .filter(|r| r.0 == "/noise.bin")
            .collect();
        (r.len() >= 3).then_some(r)
    })
    .unwrap_or_else(|| panic!("no dummy download: {}", mote.log()));
    // Each is a single Range request with a random size, answered 206.
    assert!(
        ranges
            .iter()
            .all(|r| r.1 == 206 && r.2.starts_with("bytes=0-")),
        "{ranges:?}"
    );

    // A real message with the same header set, sent the way a client would.
    let msg = mote.dir.path().join("real.eml");
    std::fs::write(
        &msg,
        "From: <real@example.org>\r\nTo: <friend@example.net>\r\nSubject: hi\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\
         Content-Transfer-Encoding: 7bit\r\nX-Mailer: leaks\r\n\r\nhello\r\n",
    )
    .unwrap();
    let v = smtplib_send(
        mote.port,
        Some("plain"),
        PASSWORD,
        "real@example.org",
        &["friend@example.net"],
        &msg,
    );
    assert_eq!(v["ok"], true, "{v}");
    let real = wait_for(Duration::from_secs(30), || {
        sink.messages()
            .into_iter()
            .find(|d| d.rcpt_tos == ["friend@example.net"])
    })
    .unwrap();
    let names = |raw: &[u8]| -> Vec<String> {
        let text = String::from_utf8_lossy(raw);
        let head = text.split("\r\n\r\n").next().unwrap().to_string();
        head.lines()
            .filter(|l| !l.starts_with([' ', '\t']))
            .filter_map(|l| l.split(':').next())
            .map(|n| n.to_ascii_lowercase())
            .collect()
    };
    assert_eq!(names(&dummies[0].raw), names(&real.raw));
    assert_eq!(dummies[0].helo, real.helo);
    let dummy_head = String::from_utf8_lossy(&dummies[0].raw).to_string();
    assert!(dummy_head.contains("@dustmote.invalid>"), "{dummy_head}");
    assert!(dummy_head.contains("-----BEGIN PGP MESSAGE-----"));
    let m = mote.status_json();
    assert!(m["mix"]["cover_items"].as_u64().unwrap() >= 6, "{m}");

    // Cover off: after a reload nothing new is sent, and no dummy download
    // stays behind.
    let text = std::fs::read_to_string(&mote.config).unwrap();
    let start = text.find("[cover]").unwrap();
    std::fs::write(&mote.config, &text[..start]).unwrap();
    let (ok, text) = reload(&mote);
    assert!(ok, "{text}");
    let settled = wait_for(Duration::from_secs(30), || {
        let s = mote.status_json();
        let fetch_jobs: u64 = ["queued", "fetching", "ready", "failed"]
            .iter()
            .map(|k| s["fetches"][k].as_u64().unwrap_or(0))
            .sum();
        (s["queue"]["queued"] == 0 && s["queue"]["in_flight"] == 0 && fetch_jobs == 0).then_some(s)
    });
    assert!(settled.is_some(), "{}", mote.status_json());
    let sent = sink.messages().len();
    let fetched = nginx.requests().len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sink.messages().len(),
        sent,
        "cover kept going after it was switched off"
    );
    assert_eq!(nginx.requests().len(), fetched);
}
