//! The command line: every subcommand and flag (clap). The bodies live in
//! their own modules: `serve`, `control` (queue, status, reload),
//! `fetch_cli`, `simulate`, `config` (check).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cloud_init::CloudInitArgs;
use crate::simulate::SimulateArgs;

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
    /// Read a human-chosen password from stdin and print its argon2 hash
    /// for [[smtp.users]] (see `secret` and `invite` for generated ones).
    Passwd,
    /// Generate a secret (190 bits) and print it and its fast hash on one
    /// line, separated by a space: for peer tokens, operator tokens and
    /// users of the configuration file.
    Secret,
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
    /// Print the `#cloud-config` user data that makes a VM with dustmote
    /// and tor installed into a mote (see "Spawn a mote" in the README).
    CloudInit(CloudInitArgs),
    /// Make an account on the running mote (applied at once): an SMTP
    /// password and/or an HTTP token, shown once, with quotas and an end.
    Invite(crate::accounts_cli::InviteArgs),
    /// List the running mote's accounts: quotas, usage today, sessions,
    /// end (never a secret).
    Accounts {
        /// Configuration file (for the data directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// End an account at once: its credentials stop working and its open
    /// SMTP sessions are closed.
    Revoke {
        /// The account.
        name: String,
        /// Configuration file (for the data directory).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Issue an access card for an account (new credentials and onion
    /// key, shown once as a `dustmote:` URI and a QR code), or import one
    /// (`card import URI`).
    Card(crate::card::CardArgs),
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
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
