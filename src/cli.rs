//! The command line: every subcommand and flag (clap). The bodies live in
//! their own modules: `serve`, `control` (queue, status, reload),
//! `fetch_cli`, `simulate`, `config` (check).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::StrategyName;

#[derive(Parser)]
#[command(
    name = "dustmote",
    version,
    about = "A short-lived mix node: stores, delays and forwards mail into Tor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the mote until SIGINT or SIGTERM.
    Serve {
        /// Configuration file; without it the embedded defaults are used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Read a password from stdin and print its argon2 hash for [[smtp.users]].
    Passwd,
    /// Show queue counts and the next release times.
    Queue {
        /// Configuration file (for the data directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also list each item's envelope addresses.
        #[arg(long)]
        show_addresses: bool,
    },
    /// Re-read the configuration file and apply its mixer settings to the
    /// running mote (as SIGHUP does); an invalid file is refused and the old
    /// settings stay in force.
    Reload {
        /// Configuration file (the same one the mote runs with).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show the transport (Tor) state and the queue of the running mote.
    Status {
        /// Configuration file (for the data directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Queue downloads and retrieve them (a client of the HTTP API).
    Fetch {
        /// Configuration file (for `[http] listen`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// API address, instead of the config's `[http] listen`.
        #[arg(long)]
        api: Option<std::net::SocketAddr>,
        /// File with the bearer token (default: $DUSTMOTE_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        command: FetchCommand,
    },
    /// Run the real mixer on simulated time with synthetic arrivals and
    /// report latency and anonymity (see "Tuning the mix" in the README).
    Simulate(SimulateArgs),
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Configuration file whose `[mixer]` settings are simulated (default:
    /// the embedded defaults).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Arrival rate of real items: 1/min, 30/h, 0.5/s, 2/d.
    #[arg(long, default_value = "1/min")]
    pub rate: String,
    /// Simulated time.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Simulated time before measuring starts (default: a tenth of the
    /// duration).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub warmup: Option<std::time::Duration>,
    /// Strategy instead of the config's.
    #[arg(long, value_enum, ignore_case = true)]
    pub strategy: Option<StrategyName>,
    /// Poisson strategy: exponential delays with this mean instead of the
    /// config's distribution.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub mean: Option<std::time::Duration>,
    /// Pool/binomial: time between rounds.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<std::time::Duration>,
    /// Pool: items always kept back.
    #[arg(long)]
    pub min_pool: Option<u64>,
    /// Pool: largest fraction sent per round; binomial: probability of leaving.
    #[arg(long)]
    pub pool_rate: Option<f64>,
    /// Arrivals at fixed intervals instead of a Poisson process.
    #[arg(long)]
    pub constant_arrivals: bool,
    /// Seed (the same seed gives the same run).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Cover traffic: the most dummy items per time unit (e.g. 20/h),
    /// instead of the config's `[cover] rate`.
    #[arg(long)]
    pub cover_rate: Option<String>,
    /// Cover traffic: add dummies while fewer items than this are in the mix.
    #[arg(long)]
    pub cover_target: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Draw the latency histogram and the entropy-vs-latency curve (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum FetchCommand {
    /// Queue a download; prints its id.
    Add {
        /// http:// or https:// URL.
        url: String,
    },
    /// Show a download's state.
    Status {
        /// The id from `fetch add`.
        id: String,
    },
    /// Retrieve a finished download (resumes a partial FILE).
    Get {
        /// The id from `fetch add`.
        id: String,
        /// Where to write it.
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file; errors name the file, key and reason.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}
