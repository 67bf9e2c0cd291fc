//! The PostgreSQL probe (`promotion-gate: postgres`): `SELECT pg_is_in_recovery()` on one
//! connection kept for the gate episode (reconnected after any error or timeout), simple-query
//! protocol, no TLS (the connection is local: unix socket or loopback).

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::{Outcome, Verdict};

/// One PostgreSQL server, asked over one connection.
pub(super) struct PostgresProbe {
    config: tokio_postgres::Config,
    client: Option<(Client, JoinHandle<()>)>,
}

impl PostgresProbe {
    pub(super) fn new(config: tokio_postgres::Config) -> Self {
        Self {
            config,
            client: None,
        }
    }

    /// Ask once: open (read-write) when `pg_is_in_recovery()` is false.
    pub(super) async fn probe(&mut self) -> Verdict {
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
                Err(e) => return Verdict::Wait(format!("connect to PostgreSQL: {e}")),
            }
        }
        let Some((client, _)) = &self.client else {
            return Verdict::Wait("no connection".to_owned());
        };
        match client.simple_query("SELECT pg_is_in_recovery()").await {
            Ok(messages) => {
                let value = messages.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                    _ => None,
                });
                match value.flatten().as_deref() {
                    Some("f") => Verdict::Ready(Outcome::Primary),
                    Some("t") => Verdict::Wait("pg_is_in_recovery() is true".to_owned()),
                    other => Verdict::Wait(format!(
                        "pg_is_in_recovery() answered {other:?}, not t or f"
                    )),
                }
            }
            Err(e) => {
                self.reset();
                Verdict::Wait(format!("SELECT pg_is_in_recovery(): {e}"))
            }
        }
    }

    /// Drop the connection (after a timeout its state is unknown).
    pub(super) fn reset(&mut self) {
        if let Some((client, task)) = self.client.take() {
            drop(client);
            task.abort();
        }
    }
}

impl Drop for PostgresProbe {
    fn drop(&mut self) {
        self.reset();
    }
}
