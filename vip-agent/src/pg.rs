//! `SELECT pg_is_in_recovery()` on the local PostgreSQL, for the promotion gate
//! (`promotion-gate: postgres`) and the repmgr leader source: one connection kept while it works
//! (reconnected after any error; a caller that times a check out calls [`RecoveryProbe::reset`]),
//! simple-query protocol, no TLS (the connection is local: unix socket or loopback).

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// One answer of `SELECT pg_is_in_recovery()`, or why there was none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// `false`: the server takes writes.
    NotInRecovery,
    /// `true`: it is a standby.
    InRecovery,
    /// Unreachable, an error, or an unexpected answer (callers add timeouts).
    Failed(String),
}

/// One PostgreSQL server, asked over one connection.
pub struct RecoveryProbe {
    config: tokio_postgres::Config,
    client: Option<(Client, JoinHandle<()>)>,
}

impl RecoveryProbe {
    #[must_use]
    pub const fn new(config: tokio_postgres::Config) -> Self {
        Self {
            config,
            client: None,
        }
    }

    /// Ask once, connecting first when there is no working connection.
    pub async fn check(&mut self) -> Recovery {
        if self.client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.reset();
        }
        if self.client.is_none() {
            match self.config.connect(NoTls).await {
                Ok((client, connection)) => {
                    let task = tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    self.client = Some((client, task));
                }
                Err(e) => return Recovery::Failed(format!("connect to PostgreSQL: {e}")),
            }
        }
        let Some((client, _)) = &self.client else {
            return Recovery::Failed("no connection".to_owned());
        };
        match client.simple_query("SELECT pg_is_in_recovery()").await {
            Ok(messages) => {
                let value = messages.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                    _ => None,
                });
                match value.flatten().as_deref() {
                    Some("f") => Recovery::NotInRecovery,
                    Some("t") => Recovery::InRecovery,
                    other => Recovery::Failed(format!(
                        "pg_is_in_recovery() answered {other:?}, not t or f"
                    )),
                }
            }
            Err(e) => {
                self.reset();
                Recovery::Failed(format!("SELECT pg_is_in_recovery(): {e}"))
            }
        }
    }

    /// Drop the connection (after a timeout its state is unknown).
    pub fn reset(&mut self) {
        if let Some((client, task)) = self.client.take() {
            drop(client);
            task.abort();
        }
    }
}

impl Drop for RecoveryProbe {
    fn drop(&mut self) {
        self.reset();
    }
}
