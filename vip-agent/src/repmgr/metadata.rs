//! The connections to repmgr's nodes: one round reads this node's `repmgr.nodes` (over
//! `postgres-dsn`) and asks every other active node, over the `conninfo` repmgr stores for it,
//! whether it is in recovery, its timeline (a standby's: the one its WAL receiver streams), and
//! which primary its own `repmgr.nodes` names. Each
//! connection is kept while it works; every question is bounded by the round's timeout, and the
//! nodes are asked at the same time. [`super::view::judge`] makes sense of the answers.
//!
//! Passwords: a `conninfo` without one gets it from `repmgr-passfile` (libpq's `.pgpass` format)
//! when that is set. No TLS: a node that requires it answers with an error, which counts as
//! unreachable (`sslmode=prefer`, libpq's default, falls back to plain connections).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use futures::future::join_all;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use tracing::warn;

use super::view::{NodeRecord, NodeType, PeerAnswer};
use crate::pg::describe;

const NODES_SQL: &str = "SELECT node_id, type, active, conninfo FROM repmgr.nodes ORDER BY node_id";

const PEER_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() \
          THEN coalesce((SELECT lpad(to_hex(received_tli), 8, '0') FROM pg_stat_wal_receiver), '') \
          ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END, \
     coalesce((SELECT string_agg(node_id::text, ',' ORDER BY node_id) FROM repmgr.nodes \
               WHERE type = 'primary' AND active), '')";

/// One round's raw material.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// This node's `repmgr.nodes`.
    pub records: Vec<NodeRecord>,
    /// Every other active node's answer.
    pub answers: Vec<(u32, PeerAnswer)>,
}

type Connection = (Client, JoinHandle<()>);

/// The kept connections and how to open them.
pub struct Rounds {
    own: u32,
    local: tokio_postgres::Config,
    local_client: Option<Connection>,
    peers: BTreeMap<u32, (String, Option<Connection>)>,
    passfile: Option<PathBuf>,
    timeout: Duration,
}

impl Rounds {
    /// `own`: this node's id; `local`: `postgres-dsn`; `timeout`: bound of each question.
    #[must_use]
    pub const fn new(
        own: u32,
        local: tokio_postgres::Config,
        passfile: Option<PathBuf>,
        timeout: Duration,
    ) -> Self {
        Self {
            own,
            local,
            local_client: None,
            peers: BTreeMap::new(),
            passfile,
            timeout,
        }
    }

    /// One round.
    ///
    /// # Errors
    /// This node's `repmgr.nodes` cannot be read (the other nodes are then not asked).
    pub async fn round(&mut self) -> Result<Round, String> {
        let records = self.local_records().await?;
        let wanted: Vec<&NodeRecord> = records
            .iter()
            .filter(|r| r.active && r.node_id != self.own && r.node_type != NodeType::Other)
            .collect();
        self.peers.retain(|id, (conninfo, _)| {
            wanted
                .iter()
                .any(|r| r.node_id == *id && r.conninfo == *conninfo)
        });
        for r in &wanted {
            self.peers
                .entry(r.node_id)
                .or_insert_with(|| (r.conninfo.clone(), None));
        }
        let (timeout, passfile) = (self.timeout, self.passfile.as_deref());
        let answers = join_all(
            self.peers
                .iter_mut()
                .map(|(id, (conninfo, conn))| async move {
                    let answer =
                        match tokio::time::timeout(timeout, ask(conninfo, conn, passfile, timeout))
                            .await
                        {
                            Ok(Ok(a)) => a,
                            Ok(Err(why)) => {
                                drop_connection(conn);
                                PeerAnswer::Unreachable(why)
                            }
                            Err(_) => {
                                drop_connection(conn);
                                PeerAnswer::Unreachable(format!(
                                    "no answer within {} ms",
                                    timeout.as_millis()
                                ))
                            }
                        };
                    (*id, answer)
                }),
        )
        .await;
        Ok(Round { records, answers })
    }

    async fn local_records(&mut self) -> Result<Vec<NodeRecord>, String> {
        let timeout = self.timeout;
        let result = tokio::time::timeout(timeout, async {
            let client = connected(&mut self.local_client, &self.local).await?;
            let messages = client
                .simple_query(NODES_SQL)
                .await
                .map_err(|e| format!("read repmgr.nodes: {}", describe(&e)))?;
            parse_records(&messages)
        })
        .await;
        match result {
            Ok(Ok(records)) => Ok(records),
            Ok(Err(why)) => {
                drop_connection(&mut self.local_client);
                Err(why)
            }
            Err(_) => {
                drop_connection(&mut self.local_client);
                Err(format!(
                    "reading this node's repmgr.nodes took longer than {} ms",
                    timeout.as_millis()
                ))
            }
        }
    }
}

impl Drop for Rounds {
    fn drop(&mut self) {
        drop_connection(&mut self.local_client);
        for (_, conn) in self.peers.values_mut() {
            drop_connection(conn);
        }
    }
}

fn drop_connection(conn: &mut Option<Connection>) {
    if let Some((client, task)) = conn.take() {
        drop(client);
        task.abort();
    }
}

/// The kept connection, opened first when there is none (or it closed).
async fn connected<'a>(
    slot: &'a mut Option<Connection>,
    config: &tokio_postgres::Config,
) -> Result<&'a Client, String> {
    let pair = match slot.take() {
        Some(pair) if !pair.0.is_closed() => pair,
        other => {
            if let Some((_, task)) = other {
                task.abort();
            }
            let (client, connection) = config
                .connect(NoTls)
                .await
                .map_err(|e| format!("connect: {}", describe(&e)))?;
            let task = tokio::spawn(async move {
                let _ = connection.await;
            });
            (client, task)
        }
    };
    Ok(&slot.insert(pair).0)
}

/// Ask one node.
async fn ask(
    conninfo: &str,
    conn: &mut Option<Connection>,
    passfile: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<PeerAnswer, String> {
    if conn.is_none() {
        let config = peer_config(conninfo, passfile, timeout)?;
        connected(conn, &config).await?;
    }
    let client = match conn {
        Some((client, _)) => client,
        None => return Err("no connection".to_owned()),
    };
    let messages = client
        .simple_query(PEER_SQL)
        .await
        .map_err(|e| format!("query: {}", describe(&e)))?;
    parse_peer(&messages)
}

/// A `conninfo` from `repmgr.nodes` as a connection configuration: bounded connect, the
/// agent's application name, and a password from the passfile when the conninfo has none.
fn peer_config(
    conninfo: &str,
    passfile: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<tokio_postgres::Config, String> {
    let mut config: tokio_postgres::Config = conninfo
        .parse()
        .map_err(|e| format!("its conninfo cannot be used: {}", describe(&e)))?;
    if config.get_connect_timeout().is_none_or(|t| *t > timeout) {
        config.connect_timeout(timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("vip-agent");
    }
    if config.get_password().is_none()
        && let Some(path) = passfile
        && let Some(password) = password_for(&config, path)?
    {
        config.password(password);
    }
    Ok(config)
}

/// The passfile's password for `config`'s first host, port, database and user.
///
/// # Errors
/// The passfile cannot be read (named, for the log line of the unreachable node).
fn password_for(
    config: &tokio_postgres::Config,
    path: &std::path::Path,
) -> Result<Option<String>, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let unreadable = |e: std::io::Error| format!("repmgr-passfile {}: {e}", path.display());
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.permissions().mode() & 0o077 != 0 {
        warn!(path = %path.display(),
            "repmgr-passfile is readable by group or others; ignoring it (chmod 0600)");
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(_)) | None => "localhost".to_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let Some(user) = config.get_user() else {
        return Ok(None);
    };
    let dbname = config.get_dbname().unwrap_or(user);
    Ok(pgpass_lookup(&text, &host, &port, dbname, user))
}

/// libpq's `.pgpass` rules: `host:port:database:user:password` per line, the first line that
/// matches wins, `*` matches anything, `\` escapes `:` and `\`, `#` starts a comment line.
#[must_use]
pub fn pgpass_lookup(
    text: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = split_pgpass(line);
            let [h, p, d, u, password] = fields.as_slice() else {
                return None;
            };
            let ok = |field: &str, want: &str| field == "*" || field == want;
            (ok(h, host) && ok(p, port) && ok(d, dbname) && ok(u, user)).then(|| password.clone())
        })
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next()
                    && let Some(last) = fields.last_mut()
                {
                    last.push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(last) = fields.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    fields
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<&str>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((0..row.len()).map(|i| row.get(i)).collect()),
            _ => None,
        })
        .collect()
}

fn parse_records(messages: &[SimpleQueryMessage]) -> Result<Vec<NodeRecord>, String> {
    rows(messages)
        .into_iter()
        .map(|row| match row.as_slice() {
            [Some(id), Some(kind), Some(active), Some(conninfo)] => Ok(NodeRecord {
                node_id: id
                    .parse()
                    .map_err(|_| format!("repmgr.nodes: node_id {id:?} is not a node id"))?,
                node_type: NodeType::parse(kind),
                active: *active == "t",
                conninfo: (*conninfo).to_owned(),
            }),
            other => Err(format!("repmgr.nodes: unexpected row {other:?}")),
        })
        .collect()
}

fn parse_peer(messages: &[SimpleQueryMessage]) -> Result<PeerAnswer, String> {
    let rows = rows(messages);
    let Some([Some(recovery), Some(timeline), Some(primaries)]) = rows.first().map(Vec::as_slice)
    else {
        return Err(format!("unexpected answer {rows:?}"));
    };
    let in_recovery = match *recovery {
        "t" => true,
        "f" => false,
        other => return Err(format!("pg_is_in_recovery() answered {other:?}")),
    };
    let timeline = if timeline.is_empty() {
        None
    } else {
        Some(
            u32::from_str_radix(timeline, 16)
                .map_err(|_| format!("timeline {timeline:?} is not hexadecimal"))?,
        )
    };
    if timeline.is_none() && !in_recovery {
        return Err("a primary without a timeline".to_owned());
    }
    let registered_primaries = primaries
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("node id {s:?} in repmgr.nodes"))
        })
        .collect::<Result<Vec<u32>, String>>()?;
    Ok(PeerAnswer::Answered {
        in_recovery,
        timeline,
        registered_primaries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_match_like_libpq() {
        let text = "# comment\n\
                    db1:5432:repmgr:repmgr:one\n\
                    *:5433:*:repmgr:two\n\
                    10.0.0.3:*:*:*:th\\:ree\\\\\n\
                    *:*:*:repmgr:fallback:with:colons\n";
        assert_eq!(
            pgpass_lookup(text, "db1", "5432", "repmgr", "repmgr").as_deref(),
            Some("one")
        );
        assert_eq!(
            pgpass_lookup(text, "db2", "5433", "x", "repmgr").as_deref(),
            Some("two")
        );
        assert_eq!(
            pgpass_lookup(text, "10.0.0.3", "5432", "postgres", "postgres").as_deref(),
            Some("th:ree\\")
        );
        assert_eq!(
            pgpass_lookup(text, "db9", "5432", "repmgr", "repmgr").as_deref(),
            Some("fallback:with:colons"),
            "the password is the rest of the line"
        );
        assert_eq!(pgpass_lookup(text, "db9", "5432", "repmgr", "other"), None);
        assert_eq!(pgpass_lookup("short:line\n", "a", "b", "c", "d"), None);
    }

    #[test]
    fn a_conninfo_gets_a_bounded_connect_and_a_clear_error() {
        let c = peer_config(
            "host=10.0.0.2 user=repmgr dbname=repmgr connect_timeout=30",
            None,
            Duration::from_secs(1),
        )
        .expect("parses");
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(1)));
        assert_eq!(c.get_application_name(), Some("vip-agent"));
        let e = peer_config("host=x nonsense=1", None, Duration::from_secs(1))
            .expect_err("unknown option");
        assert!(e.contains("conninfo cannot be used"), "{e}");
    }

    #[test]
    fn the_passfile_gives_the_password_or_a_named_error() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("vip-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("pgpass");
        std::fs::write(&path, "10.0.0.2:5432:repmgr:repmgr:secret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let conninfo = "host=10.0.0.2 user=repmgr dbname=repmgr";
        let c = peer_config(conninfo, Some(&path), Duration::from_secs(1)).expect("config");
        assert_eq!(c.get_password(), Some(&b"secret"[..]));
        // A password in the conninfo wins.
        let c = peer_config(
            "host=10.0.0.2 user=repmgr dbname=repmgr password=own",
            Some(&path),
            Duration::from_secs(1),
        )
        .expect("config");
        assert_eq!(c.get_password(), Some(&b"own"[..]));
        // Readable by others: ignored (with a warning), no password.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let c = peer_config(conninfo, Some(&path), Duration::from_secs(1)).expect("config");
        assert_eq!(c.get_password(), None);
        let missing = dir.join("absent");
        let e = peer_config(conninfo, Some(&missing), Duration::from_secs(1))
            .expect_err("unreadable passfile");
        assert!(e.contains("repmgr-passfile") && e.contains("absent"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
