//! `dustmote fetch add|status|get`: a client of the mote's download API.
//! The token comes from `$DUSTMOTE_TOKEN` or `--token-file`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use dust_proxies::intake::http::schema::{ApiError, FetchView, NewFetch, Queued};

use crate::cli::FetchCommand;

/// Where the API is and how to authenticate.
pub struct Api {
    pub addr: SocketAddr,
    pub token: String,
}

impl Api {
    /// From `--api` (or the config's `[http] listen`) and the token.
    pub fn new(addr: SocketAddr, token_file: Option<&Path>) -> anyhow::Result<Self> {
        let token = match token_file {
            Some(p) => std::fs::read_to_string(p).with_context(|| p.display().to_string())?,
            None => std::env::var("DUSTMOTE_TOKEN")
                .map_err(|_| anyhow!("no token: set DUSTMOTE_TOKEN or give --token-file"))?,
        };
        Ok(Self {
            addr,
            token: token.trim().to_string(),
        })
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender.send_request(req).await?)
    }

    fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
    }

    /// A JSON request; the answer read as `T`, or the API's refusal as
    /// the error.
    async fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: String,
    ) -> anyhow::Result<T> {
        let req = self
            .request(method, path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let why = serde_json::from_slice::<ApiError>(&bytes)
                .map_or_else(|_| "request failed".to_string(), |e| e.message);
            bail!("{status}: {why}");
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("an answer of {path} that does not read"))
    }
}

/// `dustmote fetch add URL`: prints the job id.
pub async fn add(api: &Api, url: &str) -> anyhow::Result<()> {
    let body = serde_json::to_string(&NewFetch {
        url: url.to_string(),
        not_before: None,
        deadline: None,
    })?;
    let q: Queued = api.json("POST", "/v1/fetches", body).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", q.id)?;
    Ok(())
}

/// `dustmote fetch status ID`.
pub async fn status(api: &Api, id: &str) -> anyhow::Result<()> {
    let v: FetchView = api
        .json("GET", &format!("/v1/fetches/{id}"), String::new())
        .await?;
    let mut out = std::io::stdout().lock();
    let total = v.total.map(|t| t.to_string()).unwrap_or_else(|| "?".into());
    let state = serde_json::to_value(v.state)?;
    writeln!(
        out,
        "{}  {} of {} bytes stored{}",
        state.as_str().unwrap_or("?"),
        v.bytes_stored,
        total,
        v.reason.map(|r| format!("  ({r})")).unwrap_or_default()
    )?;
    Ok(())
}

/// `dustmote fetch get ID -o FILE`: download the content; if FILE already
/// holds a prefix of it, ask only for the rest (Range + If-Range), so an
/// interrupted retrieval resumes.
pub async fn get(api: &Api, id: &str, out: &PathBuf) -> anyhow::Result<()> {
    let path = format!("/v1/fetches/{id}/content");
    // HEAD: length and validator of the current content.
    let head = api.request("HEAD", &path).body(Full::new(Bytes::new()))?;
    let resp = api.send(head).await?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        bail!("{status}: the download is not ready (see `dustmote fetch status {id}`)");
    }
    let total: u64 = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .context("no Content-Length")?;
    let etag = resp.headers().get(header::ETAG).cloned();
    let have = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    if have == total {
        eprintln!("{}: already complete ({total} bytes)", out.display());
        return Ok(());
    }
    let mut req = api.request("GET", &path);
    let resuming = have > 0 && have < total;
    if resuming {
        req = req.header(header::RANGE, format!("bytes={have}-"));
        if let Some(e) = &etag {
            req = req.header(header::IF_RANGE, e);
        }
    }
    let resp = api.send(req.body(Full::new(Bytes::new()))?).await?;
    let (append, start) = match resp.status() {
        StatusCode::PARTIAL_CONTENT if resuming => (true, have),
        StatusCode::OK => (false, 0),
        s => bail!("{s}: unexpected answer"),
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(out)
        .with_context(|| out.display().to_string())?;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bytes}/{total_bytes} {bar:40} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("download interrupted (run the same command again to resume)")?;
        if let Some(data) = frame.data_ref() {
            file.write_all(data)
                .with_context(|| out.display().to_string())?;
            bar.inc(data.len() as u64);
        }
    }
    file.sync_all()?;
    bar.finish_and_clear();
    let got = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    if got != total {
        bail!("got {got} of {total} bytes (run the same command again to resume)");
    }
    eprintln!(
        "{}: {total} bytes{}",
        out.display(),
        if append {
            format!(" (resumed at {start})")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `dustmote fetch …`: the API address from `--api` or the config's
/// `[http] listen`.
pub fn run(
    config: Option<PathBuf>,
    api: Option<SocketAddr>,
    token_file: Option<PathBuf>,
    command: FetchCommand,
) -> anyhow::Result<()> {
    let addr = match api {
        Some(a) => a,
        None => crate::config::load(config.as_deref())?.config.http.listen,
    };
    let api = Api::new(addr, token_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match command {
            FetchCommand::Add { url } => add(&api, &url).await,
            FetchCommand::Status { id } => status(&api, &id).await,
            FetchCommand::Get { id, output } => get(&api, &id, &output).await,
        }
    })
}
