//! The local PostgreSQL, over one kept connection (reconnected after any error; a caller that
//! times a check out calls [`RecoveryProbe::reset`]), simple-query protocol, no TLS (the
//! connection is local: unix socket or loopback).
//!
//! * [`RecoveryProbe::check`]: `SELECT pg_is_in_recovery()`, for the promotion gate
//!   (`promotion-gate: postgres`);
//! * [`RecoveryProbe::status`]: what the repmgr source needs: in recovery or not, the postmaster's
//!   start time (a restart gives a new one), the timeline of a primary, and whether a failure is a
//!   definitive "not serving" ([`Status::Down`]: shut down, shutting down, starting up, nothing
//!   listening) or just no usable answer ([`Status::Unknown`]);
//! * [`RecoveryProbe::closed`]: notified when the kept connection ends on its own (a fast
//!   shutdown terminates it at once), so the caller can ask again at once.

use std::sync::Arc;

use tokio::{sync::Notify, task::JoinHandle};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, error::SqlState};

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

/// A postmaster, told apart by its start time (`pg_postmaster_start_time()`, µs since the Unix
/// epoch): a restarted server is another postmaster, a promotion keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Postmaster(pub i64);

/// What the local PostgreSQL says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not in recovery: it takes writes, on `timeline`.
    Primary {
        postmaster: Postmaster,
        timeline: u32,
    },
    /// In recovery: a standby.
    Standby { postmaster: Postmaster },
    /// Definitively not serving: it refused with "shutting down", "starting up", "in recovery
    /// mode" or an administrator's shutdown (SQLSTATE 57P01, 57P02, 57P03), or nothing listens
    /// (connection refused, no socket file).
    Down(String),
    /// No usable answer: a timeout (the caller's), authentication, too many connections, a
    /// malformed answer, anything else.
    Unknown(String),
}

/// The status query: in recovery, postmaster start (µs), timeline (hex, primaries only).
const STATUS_SQL: &str = "SELECT pg_is_in_recovery(), \
     (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8, \
     CASE WHEN pg_is_in_recovery() THEN '' \
          ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END";

/// One PostgreSQL server, asked over one connection.
pub struct RecoveryProbe {
    config: tokio_postgres::Config,
    client: Option<(Client, JoinHandle<()>)>,
    /// Made by [`Self::closed`]; the connections opened after that notify it.
    closed: Option<Arc<Notify>>,
}

impl RecoveryProbe {
    #[must_use]
    pub const fn new(config: tokio_postgres::Config) -> Self {
        Self {
            config,
            client: None,
            closed: None,
        }
    }

    /// Notified (one stored permit) when a connection opened after this call ends without
    /// [`Self::reset`]: the server closed it or terminated the backend.
    pub fn closed(&mut self) -> Arc<Notify> {
        Arc::clone(self.closed.get_or_insert_with(Arc::default))
    }

    /// A working connection, connecting first when there is none.
    async fn client(&mut self) -> Result<&Client, tokio_postgres::Error> {
        let pair = match self.client.take() {
            Some(pair) if !pair.0.is_closed() => pair,
            other => {
                if let Some((_, task)) = other {
                    task.abort();
                }
                let (client, connection) = self.config.connect(NoTls).await?;
                let closed = self.closed.clone();
                let task = tokio::spawn(async move {
                    let _ = connection.await;
                    if let Some(closed) = closed {
                        closed.notify_one();
                    }
                });
                (client, task)
            }
        };
        Ok(&self.client.insert(pair).0)
    }

    /// Ask once, connecting first when there is no working connection.
    pub async fn check(&mut self) -> Recovery {
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => return Recovery::Failed(format!("connect to PostgreSQL: {e}")),
        };
        match client.simple_query("SELECT pg_is_in_recovery()").await {
            Ok(messages) => match first_row(&messages).and_then(|r| r.first().cloned().flatten()) {
                Some(v) if v == "f" => Recovery::NotInRecovery,
                Some(v) if v == "t" => Recovery::InRecovery,
                other => Recovery::Failed(format!(
                    "pg_is_in_recovery() answered {other:?}, not t or f"
                )),
            },
            Err(e) => {
                self.reset();
                Recovery::Failed(format!("SELECT pg_is_in_recovery(): {e}"))
            }
        }
    }

    /// The server's [`Status`]. A kept connection that fails is replaced once, at once: a
    /// terminated backend says nothing about the server, a refused new connection does.
    pub async fn status(&mut self) -> Status {
        let reused = self.client.as_ref().is_some_and(|(c, _)| !c.is_closed());
        match self.status_once().await {
            Err(e) if reused => {
                self.reset();
                match self.status_once().await {
                    Ok(s) => s,
                    Err(e2) => {
                        self.reset();
                        classify(&e2, &format!("{e}; then {e2}"))
                    }
                }
            }
            Err(e) => {
                self.reset();
                classify(&e, &e.to_string())
            }
            Ok(s) => s,
        }
    }

    async fn status_once(&mut self) -> Result<Status, StatusError> {
        let client = self.client().await.map_err(StatusError::Connect)?;
        let messages = client
            .simple_query(STATUS_SQL)
            .await
            .map_err(StatusError::Query)?;
        let row = first_row(&messages).unwrap_or_default();
        Ok(parse_status(&row))
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

#[derive(Debug)]
enum StatusError {
    Connect(tokio_postgres::Error),
    Query(tokio_postgres::Error),
}

impl StatusError {
    fn inner(&self) -> &tokio_postgres::Error {
        match self {
            Self::Connect(e) | Self::Query(e) => e,
        }
    }
}

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect to PostgreSQL: {}", describe(e)),
            Self::Query(e) => write!(f, "status query: {}", describe(e)),
        }
    }
}

/// The error with the server's own message or the I/O cause, which `Display` leaves out.
#[must_use]
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Whether `e` says the server is definitively not serving ([`Status::Down`]) rather than just
/// not answering usefully ([`Status::Unknown`]).
fn classify(e: &StatusError, message: &str) -> Status {
    if is_down(e.inner()) {
        Status::Down(message.to_owned())
    } else {
        Status::Unknown(message.to_owned())
    }
}

/// Shut down, shutting down, starting up, crash recovery, or nothing listening.
#[must_use]
pub fn is_down(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]
        .contains(code);
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            );
        }
        source = cause.source();
    }
    false
}

/// The first row's columns, if any.
fn first_row(messages: &[SimpleQueryMessage]) -> Option<Vec<Option<String>>> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(
            (0..row.len())
                .map(|i| row.get(i).map(str::to_owned))
                .collect(),
        ),
        _ => None,
    })
}

/// The status query's row (`t|f`, start µs, timeline hex or empty).
fn parse_status(row: &[Option<String>]) -> Status {
    let field = |i: usize| row.get(i).cloned().flatten();
    let postmaster = field(1).and_then(|s| s.parse::<i64>().ok()).map(Postmaster);
    match (field(0).as_deref(), postmaster) {
        (Some("t"), Some(postmaster)) => Status::Standby { postmaster },
        (Some("f"), Some(postmaster)) => {
            match field(2).and_then(|t| u32::from_str_radix(&t, 16).ok()) {
                Some(timeline) => Status::Primary {
                    postmaster,
                    timeline,
                },
                None => Status::Unknown(format!(
                    "the timeline {:?} is not a WAL file name's hexadecimal timeline",
                    field(2)
                )),
            }
        }
        _ => Status::Unknown(format!("unexpected answer to the status query: {row:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|s| s.map(str::to_owned)).collect()
    }

    #[test]
    fn the_status_row_is_read_strictly() {
        assert_eq!(
            parse_status(&row(&[
                Some("f"),
                Some("1765045922453669"),
                Some("0000000A")
            ])),
            Status::Primary {
                postmaster: Postmaster(1_765_045_922_453_669),
                timeline: 10
            }
        );
        assert_eq!(
            parse_status(&row(&[Some("t"), Some("17"), Some("")])),
            Status::Standby {
                postmaster: Postmaster(17)
            }
        );
        for bad in [
            row(&[]),
            row(&[Some("f"), Some("17"), Some("")]),
            row(&[Some("f"), Some("17"), Some("zz")]),
            row(&[Some("x"), Some("17"), Some("1")]),
            row(&[Some("t"), Some("soon"), Some("")]),
            row(&[Some("t"), None, None]),
        ] {
            assert!(
                matches!(parse_status(&bad), Status::Unknown(_)),
                "{bad:?} must not be a status"
            );
        }
    }
}
