//! Benchmark: "key commit -> the VIP answers" against "key commit -> the VIP answers *and* the
//! database behind it takes writes", with and without the promotion gate.
//!
//! Patroni takes the leader key before PostgreSQL has finished promoting: it commits the key, then
//! runs `pg_ctl promote`. An agent that follows the key alone makes the VIP answer while PostgreSQL
//! is still in recovery, and clients that reach it get a read-only server. `promotion-gate:
//! postgres` keeps the VIP fenced until `SELECT pg_is_in_recovery()` on the local server says
//! `false` (see docs/patroni-gate.md).
//!
//! The bed: a two-node [`Cluster`] (real etcd, real agents). A PostgreSQL primary runs in the host
//! namespace on a unix socket only; a template standby is made from it once (`pg_basebackup -R`,
//! so it streams from the primary over that socket). Each trial copies the stopped template
//! (`cp -a`) and starts it as a hot standby **inside node2's namespace**, listening on every
//! address (`listen_addresses='*'`, so on the VIP once node2's agent adds it). node1 runs no
//! PostgreSQL.
//!
//! One trial, while the client host sends an ARP request for the VIP every millisecond:
//! 1. the standby runs and is in recovery; node1 holds the key and answers;
//! 2. the driver (client host) moves the key Patroni-style: delete if the value is `node1`, then
//!    create `node2` with a lease; **t0** is when that create is sent (the commit can be no earlier);
//! 3. as soon as the create is acknowledged the driver runs `pg_ctl promote -W`, as Patroni does;
//! 4. a client on the client host keeps trying to write *through the VIP*: while it has no session
//!    it opens a fresh connection every 2 ms (each bounded by 250 ms), and on a session it sends
//!    `INSERT` every millisecond. A rejection with SQLSTATE 25006 (`read_only_sql_transaction`) is
//!    a read-only server reached through the VIP; the first `INSERT` that succeeds is **read-write**;
//! 5. an observer on node2's unix socket asks `pg_is_in_recovery()` in a tight loop: the last
//!    time it *sent* a query answered `true` bounds the end of recovery from below.
//!
//! Per trial: commit -> first ARP reply from node2's MAC ("answers"), commit -> first successful
//! write through the VIP ("answers and read-write"), and the probes node2 answered at or before the
//! observer's last `true` ("answers while in recovery": replies that certainly came while
//! PostgreSQL was in recovery; a lower bound, as the exact end of recovery lies between the last
//! `true` and the first `false`).
//!
//! Configurations: node2's agent with `promotion-gate: off` (vip-manager's behaviour) and with
//! `promotion-gate: postgres` over node2's unix socket. node1's agent always runs with
//! `promotion-gate: off`: the `postgres` mode has no "nothing listens here" rule (unlike
//! `patroni`, see docs/patroni-gate.md), so with no PostgreSQL on node1 its gate would wait for
//! `promotion-gate-timeout` (10 s) on every move back, which measures nothing and only slows the
//! run; node1's behaviour is not what this scenario measures.
//!
//! PostgreSQL (Debian's postgresql-15, through [`crate::postgres`]) runs as the `postgres` user in
//! a directory on tmpfs; every postmaster is stopped by PID and the directory removed at the end.

use std::{
    fmt::Write as _,
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tokio_postgres::{NoTls, error::SqlState};
use vip_agent::clock::monotonic_ns;

use crate::{
    arp::{ArpSocket, Probe},
    bench::percentiles,
    cluster::{self, Cluster},
    postgres::{Installation, PgDir, Postmaster, Start, connect, in_recovery},
};

/// The primary's port (unix socket only, host namespace).
const PRIMARY_PORT: u16 = 5432;
/// The standby's port: its unix socket beside the primary's, and TCP on every address of node2.
const STANDBY_PORT: u16 = 5433;
/// The table the client writes into (created on the primary, so every standby has it).
const TABLE: &str = "vip_bench_rw";
/// ARP probe period.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// Bound on the probes of one trial (a minute at 1 ms).
const MAX_PROBES: usize = 60_000;
/// Probing before the key moves.
const LEAD_IN: Duration = Duration::from_millis(50);
/// Probing after both the client's first write and the database's end of recovery were seen.
const TAIL: Duration = Duration::from_millis(30);
/// Bound on the wait for the write through the VIP (well above `promotion-gate-timeout`).
const WRITE_LIMIT: Duration = Duration::from_secs(20);
/// A fresh connection attempt through the VIP this often while the client has no session.
const CONNECT_EVERY: Duration = Duration::from_millis(2);
/// Bound on one connection attempt or one `INSERT` through the VIP.
const ATTEMPT_LIMIT: Duration = Duration::from_millis(250);
/// Pause between `INSERT`s on a session.
const WRITE_EVERY: Duration = Duration::from_millis(1);
/// Pause between the observer's `pg_is_in_recovery()` queries on the unix socket.
const OBSERVE_EVERY: Duration = Duration::from_micros(200);
/// One long lease per node for its acquisitions (nobody needs to renew it during a run).
const LEASE_TTL: i64 = 3600;

/// node2's promotion gate in one configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateSetting {
    /// `promotion-gate: off`: answer as soon as the key names the node.
    Off,
    /// `promotion-gate: postgres` over node2's unix socket.
    Postgres,
}

impl GateSetting {
    /// The name used in tables.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Off => "promotion-gate: off",
            Self::Postgres => "promotion-gate: postgres",
        }
    }
}

/// One key move with a promotion. Times in ns from t0 (the create that gives node2 the key sent).
#[derive(Clone, Debug, Default)]
pub struct RwTrial {
    /// The create acknowledged (the promotion starts right after).
    pub acquire_acked_ns: u64,
    /// `pg_ctl promote -W` returned (it only signals the postmaster).
    pub promote_returned_ns: u64,
    /// node2's first ARP reply for the VIP.
    pub answers_ns: Option<u64>,
    /// The client's first successful write through the VIP (completion of the `INSERT`).
    pub read_write_ns: Option<u64>,
    /// The client's first TCP handshake with the standby's port on the VIP (node2's kernel has
    /// the address, the client's kernel sends to node2's MAC).
    pub tcp_ns: Option<u64>,
    /// The client's first session through the VIP opened at or after t0 (on node2: node1 runs
    /// no PostgreSQL).
    pub session_ns: Option<u64>,
    /// The observer on the unix socket first saw `pg_is_in_recovery()` false (answer received).
    pub db_read_write_ns: Option<u64>,
    /// The observer's last query answered `true` was sent at this time (may be before t0).
    pub last_in_recovery_ns: Option<i64>,
    /// Probes node2 answered at or before [`Self::last_in_recovery_ns`].
    pub answers_in_recovery: usize,
    /// `INSERT`s through the VIP rejected as read-only (SQLSTATE 25006).
    pub read_only_rejections: usize,
    /// Probes sent during the trial.
    pub probes: usize,
}

/// The trials of one configuration (one warm-up discarded).
#[derive(Clone, Debug)]
pub struct RwRun {
    pub gate: GateSetting,
    pub trials: Vec<RwTrial>,
}

/// Both configurations.
#[derive(Clone, Debug)]
pub struct RwReport {
    pub runs: Vec<RwRun>,
}

/// Milliseconds with one decimal.
fn ms(ns: u64) -> String {
    // u64 ns -> ms: exact enough for a table.
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let v = ns as f64 / 1e6;
    format!("{v:.1}")
}

/// `p50 / p90 / p99 / max` in ms, with the number of trials that had no value.
fn spread(values: &[Option<u64>]) -> String {
    let got: Vec<u64> = values.iter().flatten().copied().collect();
    let missing = values.len() - got.len();
    let mut s = percentiles(&got).map_or_else(
        || "n/a".to_owned(),
        |[p50, p90, p99, max]| format!("{} / {} / {} / {}", ms(p50), ms(p90), ms(p99), ms(max)),
    );
    if missing > 0 {
        let _ = write!(s, " ({missing} missing)");
    }
    s
}

impl RwReport {
    /// The table for BENCHMARKS.md: one row per configuration.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| node2's gate | trials | commit -> answers (ms, p50 / p90 / p99 / max) | commit -> \
             answers and read-write (ms, p50 / p90 / p99 / max) | answers while in recovery \
             (probes; trials) | read-only INSERTs through the VIP | commit -> TCP handshake \
             through the VIP (ms, p50 / p90 / p99 / max) | commit -> PostgreSQL read-write (unix \
             socket, ms, p50 / p90 / p99 / max) |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|---|\n");
        for run in &self.runs {
            let t = &run.trials;
            let answers: Vec<Option<u64>> = t.iter().map(|x| x.answers_ns).collect();
            let rw: Vec<Option<u64>> = t.iter().map(|x| x.read_write_ns).collect();
            let db: Vec<Option<u64>> = t.iter().map(|x| x.db_read_write_ns).collect();
            let tcp: Vec<Option<u64>> = t.iter().map(|x| x.tcp_ns).collect();
            let in_recovery: usize = t.iter().map(|x| x.answers_in_recovery).sum();
            let trials_in_recovery = t.iter().filter(|x| x.answers_in_recovery > 0).count();
            let read_only: usize = t.iter().map(|x| x.read_only_rejections).sum();
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {in_recovery}; {trials_in_recovery} of {} | {read_only} | {} \
                 | {} |",
                run.gate.label(),
                t.len(),
                spread(&answers),
                spread(&rw),
                t.len(),
                spread(&tcp),
                spread(&db),
            );
        }
        out.push_str(
            "\nt0: the create that gives node2 the key is sent (after the delete of node1's key); \
             `pg_ctl promote -W` runs as soon as it is acknowledged, as Patroni does. \"answers\": \
             node2's first ARP reply to a probe sent every millisecond. \"answers and read-write\": \
             the first `INSERT` through the VIP that succeeds (fresh connection every 2 ms while \
             none is open, `INSERT` every millisecond on an open one). \"answers while in \
             recovery\": probes node2 answered no later than the last `pg_is_in_recovery()` = \
             true seen on its unix socket (a lower bound). \"TCP handshake\": a plain connect \
             to the standby's port on the VIP, every 2 ms (node2 accepts once its agent has added \
             the address, which follows the data plane's first answer).\n",
        );
        out
    }
}

// ---- PostgreSQL ----

pub use crate::postgres::{postgres_available, postgres_bin};

/// The primary and the standby template. Field order is drop order: the primary stops first
/// (the directory stays until every postmaster started from it is gone in any case).
struct Pg {
    _primary: Postmaster,
    /// Everything (data directories, sockets, logs), on tmpfs.
    dir: PgDir,
    template: PathBuf,
    standby: PathBuf,
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Pg {
    /// initdb, start the primary (unix socket only), create the client's table, take the standby
    /// template with `pg_basebackup -R` and let it accept TCP from anywhere (`trust`: every
    /// address is inside this run's namespaces).
    fn prepare() -> Self {
        let installation = Installation::find()
            .expect("PostgreSQL binaries (postgresql-15) and the postgres user");
        let dir = PgDir::on_tmpfs(installation, "vip-bench-rw");
        let primary_data = dir.path().join("primary");
        let template = dir.path().join("template");
        dir.initdb(&primary_data);
        let primary = dir.start(&primary_data, PRIMARY_PORT);
        current_thread().block_on(async {
            let client = connect(&dir.dsn(PRIMARY_PORT)).await;
            client
                .simple_query(&format!(
                    "CREATE TABLE IF NOT EXISTS {TABLE} (at bigint NOT NULL)"
                ))
                .await
                .expect("create the client's table");
        });
        dir.basebackup(PRIMARY_PORT, &template);
        let hba = template.join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        text.push_str("host all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, text).expect("write pg_hba.conf");
        let standby = dir.path().join("standby");
        Self {
            _primary: primary,
            dir,
            template,
            standby,
        }
    }

    /// The standby's unix-socket DSN (the gate's and the observer's).
    fn standby_dsn(&self) -> String {
        self.dir.dsn(STANDBY_PORT)
    }

    /// A fresh standby from the template, started in the namespace at `ns` on every address and
    /// stopped with SIGQUIT (immediate shutdown: the next trial starts from the template anyway);
    /// returns once it serves read-only queries in recovery.
    fn start_standby(&self, ns: &Path) -> Postmaster {
        let _ = std::fs::remove_dir_all(&self.standby);
        let out = Command::new("cp")
            .arg("-a")
            .arg(&self.template)
            .arg(&self.standby)
            .output()
            .expect("run cp");
        assert!(
            out.status.success(),
            "cp -a the standby template: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let standby = self.dir.start_with(
            &self.standby,
            STANDBY_PORT,
            &Start {
                netns: Some(ns),
                listen: "*",
                stop: Signal::SIGQUIT,
            },
        );
        let dsn = self.standby_dsn();
        let recovering = current_thread().block_on(async {
            let client = connect(&dsn).await;
            in_recovery(&client).await
        });
        assert!(
            matches!(recovering, Ok(true)),
            "the fresh standby is not in recovery: {recovering:?}; see {}",
            standby.log().display()
        );
        standby
    }

    /// `pg_ctl promote -W` of the running standby, as the `postgres` user (it only signals the
    /// postmaster, as Patroni's promote does).
    fn promote(&self) {
        self.dir.promote(&self.standby);
    }
}

// ---- The cluster ----

/// Move the calling thread into the network namespace at `path`.
fn enter(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
}

/// Wait (up to 10 s) until exactly node `i` answers.
fn wait_for_holder(cluster: &Cluster, i: usize) {
    let mac = cluster.nodes[i].host.mac;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.probe(Duration::from_millis(20)) != vec![mac] {
        assert!(
            Instant::now() < deadline,
            "node{} never became the only holder: see {}",
            i + 1,
            cluster.nodes[i].log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The cluster for one configuration: node1 with the gate off, node2 with `gate`; node1 holds
/// the key.
fn start_cluster(subnet: u8, agent_bin: &Path, gate: GateSetting, pg: &Pg) -> (Cluster, [i64; 2]) {
    let mut cluster = Cluster::new(subnet, 2, agent_bin, "");
    let node2_gate = match gate {
        GateSetting::Off => "promotion-gate: off\n".to_owned(),
        GateSetting::Postgres => format!(
            "promotion-gate: postgres\npostgres-dsn: \"{}\"\n",
            pg.standby_dsn()
        ),
    };
    for (i, extra) in ["promotion-gate: off\n".to_owned(), node2_gate]
        .iter()
        .enumerate()
    {
        let config = &cluster.nodes[i].config;
        let mut text = std::fs::read_to_string(config).expect("read agent config");
        text.push_str(extra);
        std::fs::write(config, text).expect("write agent config");
    }
    cluster.start_agent(0);
    cluster.start_agent(1);
    cluster.wait_running();
    let key = cluster.key.clone();
    let leases = cluster.etcd(async |c| {
        let a = c.lease_grant(LEASE_TTL, None).await.expect("lease").id();
        let b = c.lease_grant(LEASE_TTL, None).await.expect("lease").id();
        cluster::acquire(c, &key, "node1", a)
            .await
            .expect("the key is free");
        [a, b]
    });
    wait_for_holder(&cluster, 0);
    (cluster, leases)
}

// ---- One trial ----

/// What the client writing through the VIP saw.
#[derive(Debug, Default)]
struct Writes {
    read_only_rejections: usize,
    /// When the first session through the VIP was opened (0: never).
    first_session_at: u64,
}

/// Keep trying to write through the VIP until `done` is set (by the caller) or `running` clears;
/// stores the completion time of the first successful `INSERT` in `read_write_at`.
async fn write_through_vip(
    vip: Ipv4Addr,
    running: &AtomicBool,
    read_write_at: &AtomicU64,
) -> Writes {
    let mut config = tokio_postgres::Config::new();
    config
        .host(vip.to_string())
        .port(STANDBY_PORT)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(ATTEMPT_LIMIT);
    let insert = format!("INSERT INTO {TABLE} VALUES (1)");
    let mut writes = Writes::default();
    let mut session: Option<tokio_postgres::Client> = None;
    let mut attempts = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(CONNECT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while running.load(Ordering::Relaxed) && read_write_at.load(Ordering::Relaxed) == 0 {
        if let Some(client) = &session {
            match tokio::time::timeout(ATTEMPT_LIMIT, client.simple_query(&insert)).await {
                Ok(Ok(_)) => {
                    read_write_at.store(monotonic_ns(), Ordering::Relaxed);
                    break;
                }
                Ok(Err(e)) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => {
                    writes.read_only_rejections += 1;
                    tokio::time::sleep(WRITE_EVERY).await;
                }
                Ok(Err(_)) | Err(_) => session = None,
            }
            continue;
        }
        tokio::select! {
            Some(joined) = attempts.join_next(), if !attempts.is_empty() => {
                if let Ok(Ok(Ok((client, connection)))) = joined {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    session = Some(client);
                    if writes.first_session_at == 0 {
                        writes.first_session_at = monotonic_ns();
                    }
                    // The other attempts would only open sessions nobody uses.
                    attempts.abort_all();
                }
            }
            _ = tick.tick() => {
                let config = config.clone();
                attempts.spawn(async move {
                    tokio::time::timeout(ATTEMPT_LIMIT, config.connect(NoTls)).await
                });
            }
        }
    }
    attempts.abort_all();
    writes
}

/// Open TCP connections to the standby's port on the VIP (a fresh attempt every
/// [`CONNECT_EVERY`], each bounded by [`ATTEMPT_LIMIT`]) until one completes its handshake or
/// `running` clears; stores when it did in `connected_at`. Before t0 node1 holds the VIP and runs
/// no PostgreSQL (refused), so the first handshake is with node2: its kernel has the VIP address
/// and the client's kernel sends to node2's MAC.
async fn tcp_through_vip(vip: Ipv4Addr, running: &AtomicBool, connected_at: &AtomicU64) {
    let mut attempts = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(CONNECT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while running.load(Ordering::Relaxed) {
        tokio::select! {
            Some(joined) = attempts.join_next(), if !attempts.is_empty() => {
                if let Ok(Ok(Ok(_stream))) = joined {
                    connected_at.store(monotonic_ns(), Ordering::Relaxed);
                    break;
                }
            }
            _ = tick.tick() => {
                attempts.spawn(tokio::time::timeout(
                    ATTEMPT_LIMIT,
                    tokio::net::TcpStream::connect((vip, STANDBY_PORT)),
                ));
            }
        }
    }
    attempts.abort_all();
}

/// Ask `pg_is_in_recovery()` on the unix socket until it says `false` or `running` clears;
/// stores the send time of the last `true` and the receive time of the first `false`.
async fn observe_recovery(
    dsn: &str,
    running: &AtomicBool,
    last_true_sent: &AtomicU64,
    first_false_at: &AtomicU64,
) {
    let client = connect(dsn).await;
    while running.load(Ordering::Relaxed) {
        let sent = monotonic_ns();
        match in_recovery(&client).await {
            Ok(true) => last_true_sent.store(sent, Ordering::Relaxed),
            Ok(false) => {
                first_false_at.store(monotonic_ns(), Ordering::Relaxed);
                return;
            }
            Err(e) => panic!("pg_is_in_recovery() on the standby's socket: {e}"),
        }
        // Blocking on purpose: finer than tokio's 1 ms timer; the connection task needs the
        // thread only while a query is in flight.
        std::thread::sleep(OBSERVE_EVERY);
    }
}

/// Sets the flag to false when dropped (also on a panic), so the scoped threads end.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

fn one_trial(cluster: &Cluster, pg: &Pg, leases: [i64; 2]) -> RwTrial {
    let standby = pg.start_standby(&cluster.nodes[1].host.ns.path());
    wait_for_holder(cluster, 0);
    let node2_mac = cluster.nodes[1].host.mac;
    let client_ns = cluster.client.ns.path();
    let (client_if, client_ip, vip) = (&cluster.client.ifname, cluster.client.ip, cluster.vip);
    let dsn = pg.standby_dsn();
    let key = cluster.key.as_str();
    let running = AtomicBool::new(true);
    let (read_write_at, last_true_sent, first_false_at, tcp_at) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );

    let (times, probes, writes) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            enter(&client_ns);
            let sock = ArpSocket::open(client_if).expect("ARP prober socket");
            sock.probe_loop(client_ip, vip, PROBE_INTERVAL, &running, MAX_PROBES)
                .expect("ARP probing")
        });
        let writer = s.spawn(|| {
            enter(&client_ns);
            current_thread().block_on(async {
                tokio::join!(
                    write_through_vip(vip, &running, &read_write_at),
                    tcp_through_vip(vip, &running, &tcp_at),
                )
                .0
            })
        });
        s.spawn(|| {
            current_thread().block_on(observe_recovery(
                &dsn,
                &running,
                &last_true_sent,
                &first_false_at,
            ));
        });
        let times = {
            let _stop = StopOnDrop(&running);
            let start = Instant::now();
            while last_true_sent.load(Ordering::Relaxed) == 0 {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the observer never saw the standby in recovery"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(LEAD_IN);
            // Patroni: release node1's key, take it for node2, promote once the take is acked.
            let times = cluster.etcd(async |c| {
                cluster::release(c, key, "node1").await;
                let t0 = monotonic_ns();
                cluster::acquire(c, key, "node2", leases[1])
                    .await
                    .expect("the key was free");
                let acked = monotonic_ns();
                pg.promote();
                (t0, acked, monotonic_ns())
            });
            let start = Instant::now();
            while (read_write_at.load(Ordering::Relaxed) == 0
                || first_false_at.load(Ordering::Relaxed) == 0)
                && start.elapsed() < WRITE_LIMIT
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(TAIL);
            times
        };
        (
            times,
            prober.join().expect("prober thread"),
            writer.join().expect("writer thread"),
        )
    });
    drop(standby);
    // Back to node1 for the next trial (node2's agent fences at once; demotion is never gated).
    cluster.etcd(async |c| {
        cluster::release(c, key, "node2").await;
        cluster::acquire(c, key, "node1", leases[0])
            .await
            .expect("the key was free");
    });
    wait_for_holder(cluster, 0);

    let (t0, acked, promoted) = times;
    let since = |t: u64| (t != 0).then(|| t.saturating_sub(t0));
    let last_true = last_true_sent.load(Ordering::Relaxed);
    RwTrial {
        acquire_acked_ns: acked.saturating_sub(t0),
        promote_returned_ns: promoted.saturating_sub(t0),
        answers_ns: first_answer(&probes, node2_mac, t0).map(|t| t - t0),
        read_write_ns: since(read_write_at.load(Ordering::Relaxed)),
        session_ns: since(writes.first_session_at),
        tcp_ns: since(tcp_at.load(Ordering::Relaxed)),
        db_read_write_ns: since(first_false_at.load(Ordering::Relaxed)),
        last_in_recovery_ns: (last_true != 0).then(|| signed_diff(last_true, t0)),
        answers_in_recovery: answered_until(&probes, node2_mac, last_true),
        read_only_rejections: writes.read_only_rejections,
        probes: probes.len(),
    }
}

/// `b - a` in ns, signed.
fn signed_diff(b: u64, a: u64) -> i64 {
    if b >= a {
        i64::try_from(b - a).unwrap_or(i64::MAX)
    } else {
        -i64::try_from(a - b).unwrap_or(i64::MAX)
    }
}

/// The first reply from `mac` at or after `from_ns`.
fn first_answer(probes: &[Probe], mac: [u8; 6], from_ns: u64) -> Option<u64> {
    probes
        .iter()
        .flat_map(|p| p.answers.iter())
        .filter(|(t, m)| *m == mac && *t >= from_ns)
        .map(|(t, _)| *t)
        .min()
}

/// Probes `mac` answered with a reply at or before `until_ns`.
fn answered_until(probes: &[Probe], mac: [u8; 6], until_ns: u64) -> usize {
    probes
        .iter()
        .filter(|p| p.answers.iter().any(|(t, m)| *m == mac && *t <= until_ns))
        .count()
}

/// `trials` promotions (after one discarded warm-up) with node2's agent configured with `gate`.
fn run_gate(pg: &Pg, gate: GateSetting, trials: usize, subnet: u8, agent_bin: &Path) -> RwRun {
    let (cluster, leases) = start_cluster(subnet, agent_bin, gate, pg);
    let mut kept = Vec::with_capacity(trials);
    for n in 0..=trials {
        let trial = one_trial(&cluster, pg, leases);
        if n > 0 {
            kept.push(trial);
        }
    }
    RwRun { gate, trials: kept }
}

/// Run `trials` promotions per configuration (gate off, then gate `postgres`), each on a fresh
/// two-node cluster at `10.77.<subnet>.0/24` (one after the other).
///
/// # Panics
/// When PostgreSQL or the cluster cannot be set up, a standby does not come up in recovery, or a
/// node never takes the key back.
#[must_use]
pub fn run(trials: usize, subnet: u8, agent_bin: &Path) -> RwReport {
    let pg = Pg::prepare();
    let runs = [GateSetting::Off, GateSetting::Postgres]
        .into_iter()
        .map(|gate| run_gate(&pg, gate, trials, subnet, agent_bin))
        .collect();
    RwReport { runs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_count_only_replies_from_the_mac_up_to_the_bound() {
        let (a, b) = ([1; 6], [2; 6]);
        let probes = vec![
            Probe {
                sent_ns: 0,
                answers: vec![(5, a)],
            },
            Probe {
                sent_ns: 10,
                answers: vec![(12, b)],
            },
            Probe {
                sent_ns: 20,
                answers: vec![(22, b), (23, a)],
            },
            Probe {
                sent_ns: 30,
                answers: vec![(31, b)],
            },
        ];
        assert_eq!(first_answer(&probes, b, 0), Some(12));
        assert_eq!(first_answer(&probes, b, 13), Some(22));
        assert_eq!(first_answer(&probes, a, 24), None);
        assert_eq!(answered_until(&probes, b, 22), 2);
        assert_eq!(answered_until(&probes, b, 0), 0);
        assert_eq!(answered_until(&probes, a, 100), 2);
    }

    #[test]
    fn markdown_has_one_row_per_configuration() {
        let trial = RwTrial {
            answers_ns: Some(1_000_000),
            read_write_ns: Some(30_000_000),
            answers_in_recovery: 3,
            ..RwTrial::default()
        };
        let report = RwReport {
            runs: vec![
                RwRun {
                    gate: GateSetting::Off,
                    trials: vec![trial.clone(), RwTrial::default()],
                },
                RwRun {
                    gate: GateSetting::Postgres,
                    trials: vec![],
                },
            ],
        };
        let md = report.markdown();
        assert!(md.contains("| `promotion-gate: off` | 2 | 1.0 / 1.0 / 1.0 / 1.0 (1 missing) |"));
        assert!(md.contains("| 3; 1 of 2 |"));
        assert!(md.contains("| `promotion-gate: postgres` | 0 | n/a |"));
    }
}
