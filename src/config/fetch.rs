//! `[fetch]`: how downloads are fetched.

use std::path::PathBuf;
use std::time::Duration;

use dust_mixer::delay::humantime_serde_compat as hts;
use dust_mixer::DelaySpec;
use dust_proxies::egress::fetch::FetchConfig;
use serde::Deserialize;

use super::units::{read_ca, Size};
use super::{invalid, Invalid};

/// `[fetch] chunk`
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkBounds {
    /// Smallest chunk.
    pub min: Size,
    /// Largest chunk.
    pub max: Size,
}

/// `[fetch]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fetch {
    /// Chunk size bounds (each chunk's size is uniform between them).
    pub chunk: ChunkBounds,
    /// Delay before each chunk (including the first).
    pub delay: DelaySpec,
    /// Let the fetcher reach private, loopback and link-local origins
    /// (only with `[tor] mode = "direct"`; loopback tests).
    pub allow_private_addresses: bool,
    /// Largest download.
    pub max_job_bytes: Size,
    /// Largest sum of one user's downloads.
    pub max_user_bytes: Size,
    /// Redirects followed per job.
    pub max_redirects: u32,
    /// Bound on one chunk request.
    #[serde(with = "hts")]
    pub timeout: Duration,
    /// PEM file of an extra CA for https origins.
    pub ca_file: Option<PathBuf>,
}

impl Default for Fetch {
    fn default() -> Self {
        Self {
            chunk: ChunkBounds {
                min: Size(256 << 10),
                max: Size(4 << 20),
            },
            delay: DelaySpec::Exponential {
                mean: Duration::from_secs(5 * 60),
                min: Some(Duration::from_secs(10)),
                max: Some(Duration::from_secs(3600)),
            },
            allow_private_addresses: false,
            max_job_bytes: Size(4 << 30),
            max_user_bytes: Size(8 << 30),
            max_redirects: 5,
            timeout: Duration::from_secs(300),
            ca_file: None,
        }
    }
}

impl Fetch {
    /// Check the section (`direct`: whether the transport is clearnet); the
    /// fetcher's settings.
    pub fn check(&self, direct: bool, warnings: &mut Vec<String>) -> Result<FetchConfig, Invalid> {
        self.delay
            .validate()
            .map_err(|e| invalid(format!("fetch.delay.{}", e.key), e.reason))?;
        if self.chunk.min.0 == 0 || self.chunk.max.0 < self.chunk.min.0 {
            return Err(invalid(
                "fetch.chunk",
                "min must be at least 1 byte and max >= min",
            ));
        }
        if self.allow_private_addresses && !direct {
            warnings.push(
                "[fetch] allow_private_addresses has no effect outside [tor] mode = \"direct\""
                    .into(),
            );
        }
        let extra_ca_pem =
            read_ca(self.ca_file.as_deref()).map_err(|reason| invalid("fetch.ca_file", reason))?;
        Ok(FetchConfig {
            chunk_min: self.chunk.min.0,
            chunk_max: self.chunk.max.0,
            max_job_bytes: self.max_job_bytes.0,
            max_user_bytes: self.max_user_bytes.0,
            max_redirects: self.max_redirects,
            allow_private_addresses: self.allow_private_addresses,
            extra_ca_pem,
            timeout: self.timeout,
            typical_delay: self.delay.typical(),
        })
    }
}
