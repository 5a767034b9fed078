//! Accepting connections within the limits: a slot per session, and a
//! stranger that has not authenticated makes room for a newcomer.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::session::Session;
use super::Server;
use crate::intake::strangers::{self, Ticket};
use crate::intake::Admission;

impl<A: Admission> Server<A> {
    /// Accept connections until `shutdown` becomes true, then wait up to
    /// `grace` for open sessions (which are told 421 at their next command).
    pub async fn serve(
        &self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let (sock, _peer) = match conn {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            let (rd, mut wr) = sock.into_split();
            let cfg = Arc::clone(&self.cfg);
            let admission = Arc::clone(&self.admission);
            let verifier = Arc::clone(&self.verifier);
            let accounts = self.accounts.clone();
            let (slots, strangers) = (Arc::clone(&self.slots), Arc::clone(&self.strangers));
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let Some(permit) = strangers::slot(&slots, &strangers, false).await else {
                    let msg = format!(
                        "421 4.3.2 {} Too many connections, try again later\r\n",
                        cfg.hostname
                    );
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), wr.write_all(msg.as_bytes()))
                            .await;
                    return;
                };
                let ticket = cfg.require_auth.then(|| Ticket::new(&strangers));
                let mut s = Session::new(&cfg, &*admission, &verifier, rd, wr, shutdown, ticket);
                s.accounts = accounts;
                if let Err(e) = s.run().await {
                    tracing::debug!(error = %e, "session ended with an I/O error");
                }
                drop(s);
                drop(permit);
            });
        }
        let all = self.cfg.max_connections as u32;
        let _ = tokio::time::timeout(grace, self.slots.acquire_many(all)).await;
    }
}
