//! `dustmote`: the mote's command-line entry point. Each subcommand's body
//! lives in its own module (see `cli`).

mod accounts_cli;
mod card;
mod cli;
mod cloud_init;
mod config;
mod control;
mod cover;
mod fetch_cli;
mod key;
mod lifetime;
mod onions;
mod serve;
mod simulate;

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

use crate::cli::{Cli, Command, ConfigCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => match serve::serve(config) {
            Ok(lifetime::Ended::Expired) => return ExitCode::from(lifetime::EXPIRED_STATUS),
            Ok(lifetime::Ended::Stopped) => Ok(()),
            Err(e) => Err(e),
        },
        Command::Simulate(args) => simulate::command(args),
        Command::CloudInit(args) => cloud_init::command(args),
        Command::Passwd => passwd(),
        Command::Secret => secret(),
        Command::Queue {
            config,
            show_addresses,
        } => control::queue(config.as_deref(), show_addresses),
        Command::Status { config } => control::status(config.as_deref()),
        Command::Reload { config } => control::reload(config.as_deref()),
        Command::Fetch {
            config,
            api,
            token_file,
            command,
        } => fetch_cli::run(config, api, token_file, command),
        Command::Invite(args) => accounts_cli::invite(args),
        Command::Card(args) => card::command(args),
        Command::Accounts { config, json } => accounts_cli::accounts(config.as_deref(), json),
        Command::Revoke { name, config } => accounts_cli::revoke(config.as_deref(), &name),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the context and its causes on one line.
            eprintln!("dustmote: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `dustmote config check FILE`.
fn config_check(file: &std::path::Path) -> anyhow::Result<()> {
    let c = config::load(Some(file))?;
    for w in &c.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!("{}: ok", file.display());
    Ok(())
}

/// `dustmote passwd`: one password line on stdin, its argon2 hash on stdout.
fn passwd() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        bail!("empty password (give it on stdin, e.g. `echo secret | dustmote passwd`)");
    }
    if dust_proxies::access::auth::is_generated(password.as_bytes()) {
        bail!(
            "a password starting with {:?} and letters would be taken for a generated \
             secret and never checked against this hash; choose another, or use \
             `dustmote secret`",
            dust_proxies::access::auth::GENERATED_PREFIX
        );
    }
    let hash = dust_proxies::access::auth::hash_password(password.as_bytes())?;
    writeln!(std::io::stdout().lock(), "{hash}")?;
    eprintln!(
        "note: this is a human-chosen password, checked with argon2 and throttled \
         per name: on a shared mote, anyone who knows the name can slow its logins \
         down by guessing. Generated secrets cannot be throttled that way: \
         `dustmote invite NAME` (a live account) or `dustmote secret` (for the \
         configuration file)."
    );
    Ok(())
}

/// `dustmote secret`: a generated secret and its hash, on one line.
fn secret() -> anyhow::Result<()> {
    let s = dust_proxies::access::auth::new_secret(dust_proxies::access::auth::SECRET_LETTERS);
    writeln!(std::io::stdout().lock(), "{} {}", s.secret, s.hash)?;
    Ok(())
}
