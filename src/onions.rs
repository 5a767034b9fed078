//! The mote's onion services, published by the mote itself through tor's
//! control port (kept published across tor restarts, republished when the
//! cards' keys change), and the accounts that end with their time.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use dust_proxies::access::accounts::Accounts;
use dust_proxies::onion::{OnionConfig, Onions};
use tokio::sync::watch;

/// Quiet time after a change of the cards' keys before the onion services
/// are published again (changes in a row make one publication).
const ONION_SETTLE: Duration = Duration::from_secs(1);

/// Least time between two publications of the onion services.
const ONION_REPUBLISH: Duration = Duration::from_secs(3);

/// First wait before trying again after a publication failed (tor not up
/// yet, its control port refusing or misbehaving); it doubles up to
/// [`ONION_RETRY_MAX`].
const ONION_RETRY_MIN: Duration = Duration::from_secs(1);

const ONION_RETRY_MAX: Duration = Duration::from_secs(60);

/// How often the control connection is checked while all is published
/// (tor removes the services when it closes, as when tor restarts).
const ONION_CHECK: Duration = Duration::from_secs(10);

/// The mote's onion services, published through tor's control port by a
/// task: for the cards' keys now, again whenever they change, and again
/// whenever the control connection is lost. The mote serves meanwhile: a
/// tor that is not up yet, or a control port that refuses, stalls or
/// misbehaves, delays the services (tried again with a backoff up to a
/// minute, each failure logged), never the start. Only a bad key file ends
/// the start.
pub fn publish_onions(cfg: OnionConfig, accounts: &Arc<Accounts>) -> anyhow::Result<Arc<Onions>> {
    let onions = Arc::new(Onions::new(cfg).context("reading the onion services' keys ([onion])")?);
    let mut keys = accounts.client_keys();
    let o = Arc::clone(&onions);
    tokio::spawn(async move {
        let mut retry = ONION_RETRY_MIN;
        let mut published_once = false;
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            if let Some(last) = last {
                // Each publication makes new introduction points and a new
                // descriptor; tor clients and directories cope badly with
                // descriptors replaced within the same seconds.
                tokio::time::sleep_until(last + ONION_REPUBLISH).await;
            }
            let now = keys.borrow_and_update().clone();
            let r = o.publish(&now, published_once).await;
            last = Some(tokio::time::Instant::now());
            if let Err(e) = r {
                tracing::warn!(
                    error = %e,
                    retry_in = ?retry,
                    "publishing the onion services ([onion]) failed; the mote serves without them \
                     and tries again"
                );
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    changed = keys.changed() => if changed.is_err() { return },
                }
                retry = (retry * 2).min(ONION_RETRY_MAX);
                continue;
            }
            retry = ONION_RETRY_MIN;
            if published_once {
                tracing::info!(clients = now.len(), "onion services published again");
            } else {
                tracing::info!(
                    smtp = o.smtp_address().as_deref().unwrap_or("-"),
                    http = o.http_address().as_deref().unwrap_or("-"),
                    client_auth = o.client_auth(),
                    "onion services published"
                );
                published_once = true;
            }
            // Until the cards' keys change (and have settled: changes in a
            // row make one publication) or the services are lost.
            loop {
                tokio::select! {
                    changed = keys.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        loop {
                            tokio::select! {
                                changed = keys.changed() => if changed.is_err() { return },
                                _ = tokio::time::sleep(ONION_SETTLE) => break,
                            }
                        }
                        break;
                    }
                    _ = tokio::time::sleep(ONION_CHECK) => {
                        if !o.still_published().await {
                            tracing::warn!(
                                "the control connection to tor was lost, and the onion services \
                                 with it: publishing them again"
                            );
                            break;
                        }
                    }
                }
            }
        }
    });
    Ok(onions)
}

/// End accounts when their time is over (their sessions are closed and
/// their downloads deleted), after finishing the ends of accounts that
/// ended while the mote was down (or whose end a crash cut short).
pub async fn end_expired_accounts(accounts: Arc<Accounts>, mut stop: watch::Receiver<bool>) {
    match accounts.finish_ending().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(accounts = n, "finished the ends of accounts that had ended"),
        Err(e) => tracing::warn!(error = %e, "could not finish the ends of accounts"),
    }
    loop {
        let next = accounts.end_expired().await;
        // Accounts made meanwhile are looked at within the minute.
        let wait = next
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = accounts.invited() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
