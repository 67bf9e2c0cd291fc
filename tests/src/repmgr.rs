//! A real repmgr 5.3 cluster in network namespaces, for `tests/tests/repmgr_real.rs`: three
//! PostgreSQL 15 nodes managed by Debian's repmgr and repmgrd (`failover=automatic`, short
//! timers), a real sshd in each node's namespace for `repmgr standby switchover`, vip-agent on
//! every node in repmgr mode exactly as `docs/repmgr.md` prescribes (default intervals), and a
//! client host that writes through the VIP, watches every node's role and probes ARP.
//!
//! repmgrd's timers follow `docs/repmgr.md`: `monitor_interval_secs=1`, `reconnect_attempts=5`,
//! `reconnect_interval=3` (no promotion before (5 − 1) × 3 = 12 s without the primary, more than
//! the agents' default `repmgr-quorum-hold` + validity of 8 s), `primary_visibility_consensus`,
//! and `child_nodes_disconnect_command` with short child-node timers; PostgreSQL's
//! `wal_sender_timeout` is 5 s so that repmgrd sees a cut-off standby detach.
//!
//! Layout: one bridge, `10.77.<subnet>.0/24`: node i (from 0) at `.(11 + i)`, the client at `.9`,
//! the VIP at `.100`. Everything runs inside the namespaces made here, as `postgres` (PostgreSQL,
//! repmgr, repmgrd) or root (the agents, sshd). PostgreSQL is started with `pg_ctl start`, as a user,
//! systemd or repmgr itself does; its node-specific settings (listen address, socket directory,
//! `cluster_name`) are `pg_ctl -o` options, so a `pg_rewind` that copies `postgresql.conf` from
//! another node changes nothing.
//!
//! sshd: one per node, on the node's address, with a host key and a `postgres` key made for this
//! run, `UsePAM yes` (Debian locks the `postgres` account's password, which sshd refuses without
//! PAM even for a key). Nothing outside the run's directory is configured; `/run/sshd` (sshd's
//! privilege separation directory) is created when missing and removed again.
//!
//! [`RepmgrCluster`]'s drop stops every process it started, by PID (agents, repmgrd, sshd, and
//! each node's postmaster as its `postmaster.pid` names it, after checking that PID runs that data
//! directory), detaches the pins and removes the namespaces and the directory, also on panic.

use std::{
    fmt::Write as _,
    fs::File,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, chown},
};

use crate::{
    Bridge, ChildGuard, NetNs,
    arp::{ArpSocket, Probe},
    cluster::Host,
    postgres::Installation,
    unique_name,
};

/// Probes of the ARP prober, one every this long.
pub const ARP_EVERY: Duration = Duration::from_millis(20);
/// Agents started on a running cluster (or restarted), or the primary's PostgreSQL restarted:
/// the primary takes writes through the VIP within this.
pub const START_LIMIT: Duration = Duration::from_secs(20);
/// `repmgr standby switchover` started: the new primary takes writes within this.
pub const SWITCHOVER_LIMIT: Duration = Duration::from_secs(20);
/// Primary killed or cut off: repmgrd gives up after 5 × 3 s (+ connect timeouts), promotes, and
/// the VIP takes writes on the new primary within this.
pub const FAILOVER_LIMIT: Duration = Duration::from_secs(60);
/// How long a scenario is watched after its VIP moved.
pub const SETTLE: Duration = Duration::from_secs(3);
/// Write attempts through the VIP, one every this long (15 Hz).
pub const WRITE_EVERY: Duration = Duration::from_millis(66);
/// How long one write attempt (connect, ask, insert) may take.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(1);

/// PostgreSQL, repmgr, repmgrd, sshd and nft, when all are installed (root is the caller's
/// business): for the benchmark, which skips what it cannot run.
#[must_use]
pub fn repmgr_available() -> Option<Installation> {
    let installation = Installation::find()?;
    [
        installation.bin().join("repmgr"),
        installation.bin().join("repmgrd"),
        PathBuf::from("/usr/sbin/sshd"),
        PathBuf::from("/usr/sbin/nft"),
    ]
    .iter()
    .all(|p| p.is_file())
    .then_some(installation)
}

/// What the real-repmgr tests need besides root and PostgreSQL: repmgr, repmgrd, sshd, nft.
/// Skips loudly (a failure under CI) when something is missing.
///
/// # Panics
/// Under CI, when something is missing.
#[must_use]
pub fn require_repmgr(test: &str) -> Option<Installation> {
    if !crate::require_privileges(test) {
        return None;
    }
    let installation = crate::postgres::require_postgres(test)?;
    let missing: Vec<String> = [
        installation.bin().join("repmgr"),
        installation.bin().join("repmgrd"),
        PathBuf::from("/usr/sbin/sshd"),
        PathBuf::from("/usr/sbin/nft"),
    ]
    .into_iter()
    .filter(|p| !p.is_file())
    .map(|p| p.display().to_string())
    .collect();
    if missing.is_empty() {
        return Some(installation);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var(crate::REQUIRE_PRIVILEGES).is_ok_and(|v| v == "1");
    let reason = format!(
        "missing {} (cargo xtask setup installs postgresql-15-repmgr, openssh-server, nftables)",
        missing.join(", ")
    );
    assert!(
        !ci,
        "{test}: {reason}; privileged tests may not skip under CI"
    );
    eprintln!("SKIPPED {test}: {reason}");
    None
}

/// One database node.
#[derive(Debug)]
pub struct Node {
    /// repmgr `node_id` (1-based).
    pub id: u32,
    pub name: String,
    pub host: Host,
    /// `<run>/n<id>`: data directory, unix socket, repmgr.conf, logs (owned by `postgres`).
    pub dir: PathBuf,
    /// `<run>/agent<id>`: the agent's configuration, socket, state file and log.
    pub agent_dir: PathBuf,
    agent: Option<ChildGuard>,
    repmgrd: Option<ChildGuard>,
    sshd: Option<ChildGuard>,
}

impl Node {
    #[must_use]
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// repmgr's `conninfo` of this node.
    #[must_use]
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port=5432 user=postgres dbname=postgres connect_timeout=2",
            self.host.ip
        )
    }

    #[must_use]
    pub fn agent_log_path(&self) -> PathBuf {
        self.agent_dir.join("agent.log")
    }

    /// The postmaster's PID from `postmaster.pid`, if that process runs this data directory.
    #[must_use]
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let data = self.data();
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains("postgres") && cmdline.contains(data.to_str()?)).then_some(pid)
    }
}

/// Everything the client host recorded.
#[derive(Debug, Default)]
pub struct Recording {
    /// Every write attempt through the VIP.
    pub attempts: Vec<Attempt>,
    /// Every change of a node's role as the client saw it on the node's own address.
    pub roles: Vec<RoleSeen>,
    /// Every ARP probe for the VIP and its answers.
    pub probes: Vec<Probe>,
}

/// One connection attempt through the VIP.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// `CLOCK_MONOTONIC` ns when it started.
    pub at_ns: u64,
    /// `CLOCK_MONOTONIC` ns when it ended.
    pub done_ns: u64,
    /// `cluster_name` of the server reached (`node<id>`), when it answered.
    pub node: Option<String>,
    /// `pg_is_in_recovery()` of the server reached.
    pub in_recovery: Option<bool>,
    /// The write committed: its timeline and the server's `clock_timestamp()` (Unix seconds).
    pub committed: Option<(u32, f64)>,
    pub error: Option<String>,
}

/// A node seen primary on a timeline, or in recovery, from its own address.
#[derive(Clone, Debug)]
pub struct RoleSeen {
    pub node: usize,
    pub at_ns: u64,
    /// `None`: in recovery; `Some(timeline)`: a primary on that timeline.
    pub primary_on: Option<u32>,
    /// The server's `clock_timestamp()`, Unix seconds.
    pub db_time: f64,
}

/// Background client activity, stopped (and joined) on drop.
pub struct ClientRun {
    running: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub recording: Arc<Mutex<Recording>>,
}

impl ClientRun {
    /// A copy of what was recorded so far.
    #[must_use]
    pub fn snapshot(&self) -> RecordingView {
        let r = self
            .recording
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        RecordingView {
            attempts: r.attempts.clone(),
            roles: r.roles.clone(),
            probes: r.probes.clone(),
        }
    }

    /// Stop the threads and return everything.
    #[must_use]
    pub fn finish(mut self) -> RecordingView {
        self.stop();
        self.snapshot()
    }

    fn stop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ClientRun {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A copy of a [`Recording`].
#[derive(Clone, Debug, Default)]
pub struct RecordingView {
    pub attempts: Vec<Attempt>,
    pub roles: Vec<RoleSeen>,
    pub probes: Vec<Probe>,
}

/// What one scenario did to the VIP, from the client's records between `from_ns` and `to_ns`.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// ARP probes answered by two or more MACs, and that many probe periods in ms.
    pub double_probes: usize,
    pub double_ms: u64,
    /// Connections through the VIP that reached a server in recovery.
    pub in_recovery: usize,
    /// Writes committed on a node after another node had been seen primary on a newer timeline.
    pub stale_writes: usize,
    /// Writes attempted and committed in the window.
    pub attempts: usize,
    pub committed: usize,
    /// From `from_ns` to the end of the first write committed on `expect` (ms), if any.
    pub to_read_write_ms: Option<u64>,
    /// The longest run of ARP probes nobody answered, in ms.
    pub silent_ms: u64,
    /// MACs that answered at all in the window.
    pub macs: Vec<[u8; 6]>,
}

impl Outcome {
    /// One line for the test's output and the report.
    #[must_use]
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name}: double-answer probes {} ({} ms), in-recovery connections {}, stale writes {}, \
             attempts {} committed {}, trigger -> read-write {}, VIP silent at most {} ms",
            self.double_probes,
            self.double_ms,
            self.in_recovery,
            self.stale_writes,
            self.attempts,
            self.committed,
            self.to_read_write_ms
                .map_or_else(|| "never".to_owned(), |ms| format!("{ms} ms")),
            self.silent_ms,
        )
    }
}

impl RecordingView {
    /// The outcome between `from_ns` and `to_ns`; `expect` is the node (`node<id>`) that should
    /// take writes after the trigger at `from_ns`.
    #[must_use]
    pub fn outcome(&self, from_ns: u64, to_ns: u64, expect: Option<&str>) -> Outcome {
        let in_window = |t: u64| (from_ns..to_ns).contains(&t);
        let probes: Vec<&Probe> = self
            .probes
            .iter()
            .filter(|p| in_window(p.sent_ns))
            .collect();
        let mut macs: Vec<[u8; 6]> = probes
            .iter()
            .flat_map(|p| p.answers.iter().map(|(_, m)| *m))
            .collect();
        macs.sort_unstable();
        macs.dedup();
        let double_probes = probes
            .iter()
            .filter(|p| {
                let mut m: Vec<[u8; 6]> = p.answers.iter().map(|(_, m)| *m).collect();
                m.sort_unstable();
                m.dedup();
                m.len() > 1
            })
            .count();
        let attempts: Vec<&Attempt> = self
            .attempts
            .iter()
            .filter(|a| in_window(a.at_ns))
            .collect();
        let stale_writes = attempts.iter().filter(|a| self.is_stale(a)).count();
        let to_read_write_ms = expect.and_then(|name| {
            attempts
                .iter()
                .filter(|a| a.committed.is_some() && a.node.as_deref() == Some(name))
                .map(|a| a.done_ns)
                .min()
                .map(|t| t.saturating_sub(from_ns) / 1_000_000)
        });
        let mut silent = 0u64;
        let mut run = 0u64;
        for p in &probes {
            if p.answers.is_empty() {
                run += 1;
                silent = silent.max(run);
            } else {
                run = 0;
            }
        }
        Outcome {
            double_probes,
            double_ms: u64::try_from(double_probes).unwrap_or(u64::MAX)
                * u64::try_from(ARP_EVERY.as_millis()).unwrap_or(0),
            in_recovery: attempts
                .iter()
                .filter(|a| a.in_recovery == Some(true))
                .count(),
            stale_writes,
            attempts: attempts.len(),
            committed: attempts.iter().filter(|a| a.committed.is_some()).count(),
            to_read_write_ms,
            silent_ms: silent * u64::try_from(ARP_EVERY.as_millis()).unwrap_or(0),
            macs,
        }
    }

    /// A committed write is stale when, before it committed (the database clock of one host),
    /// another node had already been seen primary on a newer timeline.
    fn is_stale(&self, a: &Attempt) -> bool {
        let (Some(node), Some((timeline, at))) = (&a.node, a.committed) else {
            return false;
        };
        self.roles.iter().any(|r| {
            format!("node{}", r.node + 1) != *node
                && r.primary_on.is_some_and(|tl| tl > timeline)
                && r.db_time < at
        })
    }
}

/// The cluster. Field order is drop order after [`Drop::drop`] ran.
#[derive(Debug)]
pub struct RepmgrCluster {
    pub nodes: Vec<Node>,
    pub client: Host,
    pub vip: Ipv4Addr,
    pub dir: PathBuf,
    pub pins: PathBuf,
    pub agent_bin: PathBuf,
    installation: Installation,
    made_run_sshd: bool,
    _bridge: Bridge,
    _switch: NetNs,
}

impl RepmgrCluster {
    /// The segment, sshd on every node, a primary and `nodes - 1` standbys registered with repmgr
    /// and repmgrd running on each; the agents' configurations written but no agent started.
    ///
    /// # Panics
    /// When a step fails.
    #[must_use]
    pub fn new(installation: Installation, subnet: u8, nodes: usize, agent_bin: &Path) -> Self {
        let switch = NetNs::new("rsw");
        let bridge = Bridge::new(&switch);
        let host = |tag: &str, last: u8| {
            let ns = NetNs::new(tag);
            let ifname = bridge.plug(&switch, &ns);
            let ip = Ipv4Addr::new(10, 77, subnet, last);
            ns.add_addr(&ifname, &format!("{ip}/24"));
            let mac = ns.mac(&ifname);
            Host {
                ns,
                ifname,
                ip,
                mac,
            }
        };
        let client = host("rcli", 9);
        let dir = std::env::temp_dir().join(unique_name("vrpm"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("run directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let pins = PathBuf::from("/sys/fs/bpf").join(unique_name("vrpm"));
        crate::interrupt::path_created(&dir);
        crate::interrupt::path_created(&pins);
        let made_run_sshd = !Path::new("/run/sshd").exists();
        if made_run_sshd {
            std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        }
        let mut list = Vec::new();
        for i in 0..nodes {
            let id = u32::try_from(i + 1).expect("few nodes");
            let h = host("rnode", 11 + u8::try_from(i).expect("few nodes"));
            let node_dir = dir.join(format!("n{id}"));
            let agent_dir = dir.join(format!("agent{id}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            std::fs::create_dir_all(&agent_dir).expect("agent dir");
            list.push(Node {
                id,
                name: format!("node{id}"),
                host: h,
                dir: node_dir,
                agent_dir,
                agent: None,
                repmgrd: None,
                sshd: None,
            });
        }
        let mut cluster = Self {
            nodes: list,
            client,
            vip: Ipv4Addr::new(10, 77, subnet, 100),
            dir,
            pins,
            agent_bin: agent_bin.to_path_buf(),
            installation,
            made_run_sshd,
            _bridge: bridge,
            _switch: switch,
        };
        cluster.write_files();
        for i in 0..nodes {
            cluster.start_sshd(i);
        }
        cluster.build();
        for i in 0..nodes {
            cluster.start_repmgrd(i);
        }
        cluster.wait_healthy(0, Duration::from_secs(60));
        cluster
    }

    fn pg_user(&self) -> (u32, u32) {
        let u = self.installation.user();
        (u.uid.as_raw(), u.gid.as_raw())
    }

    fn give_to_postgres(&self, path: &Path) {
        let u = self.installation.user();
        chown(path, Some(u.uid), Some(u.gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }

    fn bin(&self, program: &str) -> PathBuf {
        self.installation.bin().join(program)
    }

    /// `pg_ctl start` for node `i`, with its node-specific settings.
    fn start_command(&self, i: usize) -> String {
        let n = &self.nodes[i];
        format!(
            "{} -w -t 60 -D {} -l {} -o \"-c listen_addresses=0.0.0.0 -c unix_socket_directories={} -c cluster_name={}\" start",
            self.bin("pg_ctl").display(),
            n.data().display(),
            n.dir.join("pg.log").display(),
            n.dir.display(),
            n.name
        )
    }

    /// Keys, sshd configurations, repmgr.conf and the agents' configurations.
    fn write_files(&self) {
        let key = |name: &str| {
            let path = self.dir.join(name);
            let out = Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "vip-agent-test",
                    "-f",
                ])
                .arg(&path)
                .output()
                .expect("run ssh-keygen");
            assert!(
                out.status.success(),
                "ssh-keygen: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            path
        };
        let host_key = key("hostkey");
        let user_key = key("userkey");
        std::fs::copy(
            user_key.with_extension("pub"),
            self.dir.join("authorized_keys"),
        )
        .expect("authorized_keys");
        self.give_to_postgres(&user_key);
        for (i, n) in self.nodes.iter().enumerate() {
            self.give_to_postgres(&n.dir);
            std::fs::write(
                n.dir.join("sshd_config"),
                format!(
                    "ListenAddress {ip}\nPort 22\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
                     PidFile {dir}/sshd.pid\nUsePAM yes\nStrictModes no\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nAllowUsers postgres\nPrintMotd no\n\
                     PrintLastLog no\n",
                    ip = n.host.ip,
                    hk = host_key.display(),
                    ak = self.dir.join("authorized_keys").display(),
                    dir = n.dir.display(),
                ),
            )
            .expect("sshd_config");
            let bin = self.installation.bin().display().to_string();
            let conf = n.dir.join("repmgr.conf");
            let repmgr_conf = format!(
                "node_id={id}\nnode_name='{name}'\nconninfo='{conninfo}'\n\
                 data_directory='{data}'\npg_bindir='{bin}'\nrepmgr_bindir='{bin}'\n\
                 log_file='{dir}/repmgr.log'\nlog_level=INFO\nuse_replication_slots=yes\n\
                 ssh_options='-q -F /dev/null -i {key} -o StrictHostKeyChecking=no \
                 -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=3'\n\
                 service_start_command='{start}'\n\
                 service_stop_command='{bin}/pg_ctl -w -t 60 -D {data} -m fast stop'\n\
                 service_restart_command='{bin}/pg_ctl -w -t 60 -D {data} -m fast stop && {start}'\n\
                 service_reload_command='{bin}/pg_ctl -D {data} reload'\n\
                 event_notification_command='{agent} event --socket {socket} %n %e %s \"%t\" \"%d\"'\n\
                 failover=automatic\n\
                 promote_command='{bin}/repmgr standby promote -f {conf} --log-to-file'\n\
                 follow_command='{bin}/repmgr standby follow -f {conf} --log-to-file --upstream-node-id=%n'\n\
                 monitor_interval_secs=1\nreconnect_attempts=5\nreconnect_interval=3\n\
                 primary_visibility_consensus=true\n\
                 child_nodes_check_interval=1\nchild_nodes_disconnect_timeout=2\n\
                 child_nodes_disconnect_command='/bin/true'\n\
                 repmgrd_pid_file='{dir}/repmgrd.pid'\n",
                id = n.id,
                name = n.name,
                conninfo = n.conninfo(),
                data = n.data().display(),
                dir = n.dir.display(),
                key = user_key.display(),
                start = self.start_command(i),
                agent = self.agent_bin.display(),
                socket = n.agent_dir.join("repmgr.sock").display(),
                conf = conf.display(),
            );
            std::fs::write(&conf, repmgr_conf).expect("repmgr.conf");
            self.give_to_postgres(&conf);
            std::fs::write(
                n.agent_dir.join("vip-agent.yml"),
                format!(
                    "ip: {vip}\nnetmask: 24\ninterface: {ifname}\ndcs-type: repmgr\n\
                     repmgr-node-id: {id}\n\
                     postgres-dsn: \"host={dir} port=5432 user=postgres dbname=postgres\"\n\
                     repmgr-socket: {agent_dir}/repmgr.sock\nrepmgr-socket-group: postgres\n\
                     repmgr-state-file: {agent_dir}/repmgr.state\npin-path: {pins}\n",
                    vip = self.vip,
                    ifname = n.host.ifname,
                    id = n.id,
                    dir = n.dir.display(),
                    agent_dir = n.agent_dir.display(),
                    pins = self.pins.display(),
                ),
            )
            .expect("agent config");
        }
    }

    /// The primary (initdb, configured, started, registered) and the standbys (cloned, started,
    /// registered), and the table the client writes to.
    fn build(&self) {
        let first = &self.nodes[0];
        self.as_postgres_ok(
            0,
            &self.bin("initdb"),
            &[
                "-D",
                path_str(&first.data()),
                "-U",
                "postgres",
                "--auth=trust",
                "-N",
            ],
        );
        let subnet = {
            let o = self.client.ip.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        };
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(first.data().join("postgresql.conf"))
            .expect("postgresql.conf");
        std::io::Write::write_all(
            &mut conf,
            b"\n# vip-agent real-repmgr test\nshared_preload_libraries='repmgr'\nwal_level=replica\n\
              max_wal_senders=10\nmax_replication_slots=10\nhot_standby=on\nwal_log_hints=on\n\
              fsync=off\nwal_sender_timeout=5s\nwal_receiver_status_interval=1s\n\
              max_connections=60\nlog_line_prefix='%m [%p] '\n",
        )
        .expect("write postgresql.conf");
        let mut hba = std::fs::OpenOptions::new()
            .append(true)
            .open(first.data().join("pg_hba.conf"))
            .expect("pg_hba.conf");
        std::io::Write::write_all(
            &mut hba,
            format!("host all all {subnet} trust\nhost replication all {subnet} trust\n")
                .as_bytes(),
        )
        .expect("write pg_hba.conf");
        self.pg_start(0);
        self.repmgr_ok(0, &["primary", "register"]);
        self.sql_ok(
            0,
            "CREATE TABLE vip_probe (id bigserial PRIMARY KEY, node text, at timestamptz DEFAULT clock_timestamp())",
        );
        for i in 1..self.nodes.len() {
            let primary_ip = self.nodes[0].host.ip.to_string();
            self.repmgr_ok(
                i,
                &[
                    "-h",
                    &primary_ip,
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "standby",
                    "clone",
                    "--fast-checkpoint",
                ],
            );
            self.pg_start(i);
            self.repmgr_ok(i, &["standby", "register"]);
        }
    }

    /// A command as `postgres` inside node `i`'s namespace, with a clean environment.
    #[must_use]
    pub fn as_postgres(&self, i: usize, program: &Path) -> Command {
        let (uid, gid) = self.pg_user();
        let n = &self.nodes[i];
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", n.host.ns.path().display()))
            .arg("--")
            .arg("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(program)
            .current_dir(&n.dir)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.installation.bin().display()),
            )
            .env("HOME", &n.dir)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        cmd
    }

    fn as_postgres_ok(&self, i: usize, program: &Path, args: &[&str]) -> String {
        let out = self.run_as_postgres(i, program, args);
        assert!(
            out.status.success(),
            "node{} {} {args:?} failed: {}{}",
            i + 1,
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `program args` as `postgres` in node `i`'s namespace.
    ///
    /// # Panics
    /// When it cannot be started.
    #[must_use]
    pub fn run_as_postgres(&self, i: usize, program: &Path, args: &[&str]) -> Output {
        self.as_postgres(i, program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
    }

    /// `repmgr -f <node i's repmgr.conf> args...` as `postgres` in node `i`'s namespace.
    #[must_use]
    pub fn repmgr(&self, i: usize, args: &[&str]) -> Output {
        let conf = self.nodes[i].dir.join("repmgr.conf");
        let mut all = vec!["-f", path_str(&conf)];
        all.extend_from_slice(args);
        self.run_as_postgres(i, &self.bin("repmgr"), &all)
    }

    /// [`Self::repmgr`], which must succeed; its output (stdout and stderr).
    ///
    /// # Panics
    /// When repmgr fails.
    pub fn repmgr_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.repmgr(i, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "node{}: repmgr {args:?} failed:\n{text}",
            i + 1
        );
        text
    }

    /// `psql -c sql` on node `i`'s unix socket.
    ///
    /// # Panics
    /// When psql fails.
    pub fn sql_ok(&self, i: usize, sql: &str) -> String {
        let dir = self.nodes[i].dir.clone();
        self.as_postgres_ok(
            i,
            &self.bin("psql"),
            &[
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                path_str(&dir),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ],
        )
    }

    /// Start node `i`'s PostgreSQL with `pg_ctl start` (as a user or systemd would), waiting
    /// until it accepts connections.
    ///
    /// # Panics
    /// When it does not start.
    pub fn pg_start(&self, i: usize) {
        let out = self.run_as_postgres(i, Path::new("/bin/sh"), &["-c", &self.start_command(i)]);
        assert!(
            out.status.success(),
            "node{}: pg_ctl start failed: {}{}; see {}",
            i + 1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.nodes[i].dir.join("pg.log").display()
        );
    }

    /// `pg_ctl stop -m fast` on node `i`.
    ///
    /// # Panics
    /// When pg_ctl fails.
    pub fn pg_stop(&self, i: usize) {
        let data = self.nodes[i].data();
        self.as_postgres_ok(
            i,
            &self.bin("pg_ctl"),
            &[
                "-w",
                "-t",
                "60",
                "-D",
                path_str(&data),
                "-m",
                "fast",
                "stop",
            ],
        );
    }

    /// SIGKILL node `i`'s postmaster (by the PID its `postmaster.pid` names) and wait until it
    /// and its children are gone.
    ///
    /// # Panics
    /// When it is not running or does not go.
    pub fn pg_kill(&self, i: usize) {
        let pid = self.nodes[i].postmaster_pid().expect("postmaster running");
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL the postmaster");
        assert!(
            crate::cluster::wait_gone(pid, Duration::from_secs(10)),
            "node{}'s postmaster {pid} still runs 10 s after SIGKILL",
            i + 1
        );
    }

    fn start_sshd(&mut self, i: usize) {
        let n = &self.nodes[i];
        let config = n.dir.join("sshd_config");
        let log = n.dir.join("sshd.log");
        let child = n.host.ns.spawn(
            "/usr/sbin/sshd",
            &["-D", "-f", path_str(&config), "-E", path_str(&log)],
            None,
        );
        self.nodes[i].sshd = Some(child);
    }

    /// Start repmgrd on node `i` (foreground, as `postgres`).
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn start_repmgrd(&mut self, i: usize) {
        let n = &self.nodes[i];
        let conf = n.dir.join("repmgr.conf");
        let log = File::options()
            .create(true)
            .append(true)
            .open(n.dir.join("repmgrd.out"))
            .expect("repmgrd log");
        let (uid, gid) = self.pg_user();
        let (uid, gid) = (format!("--reuid={uid}"), format!("--regid={gid}"));
        let path = format!("PATH={}:/usr/bin:/bin", self.installation.bin().display());
        let home = format!("HOME={}", n.dir.display());
        let repmgrd = self.bin("repmgrd");
        // setpriv and env exec: the guard's PID is repmgrd's.
        let child = n.host.ns.spawn(
            "setpriv",
            &[
                &uid,
                &gid,
                "--clear-groups",
                "--",
                "/usr/bin/env",
                "-i",
                &path,
                &home,
                "LANG=C.UTF-8",
                path_str(&repmgrd),
                "-f",
                path_str(&conf),
                "--daemonize=false",
            ],
            Some(&log),
        );
        self.nodes[i].repmgrd = Some(child);
    }

    /// Start node `i`'s agent (log: `agent<id>/agent.log`).
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn start_agent(&mut self, i: usize) {
        let n = &self.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(n.agent_log_path())
            .expect("agent log");
        let config = n.agent_dir.join("vip-agent.yml");
        let bin = self.agent_bin.clone();
        let child = n
            .host
            .ns
            .spawn(path_str(&bin), &["--config", path_str(&config)], Some(&log));
        self.nodes[i].agent = Some(child);
    }

    /// Stop node `i`'s agent with SIGTERM (it fences and exits) and start it again.
    ///
    /// # Panics
    /// When it does not exit within 10 s.
    pub fn restart_agent(&mut self, i: usize) {
        if let Some(mut agent) = self.nodes[i].agent.take() {
            agent.signal(Signal::SIGTERM);
            assert!(
                agent.wait_timeout(Duration::from_secs(10)).is_some(),
                "node{}'s agent did not exit on SIGTERM",
                i + 1
            );
        }
        self.start_agent(i);
    }

    /// Node `i`'s agent log so far.
    #[must_use]
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].agent_log_path()).unwrap_or_default()
    }

    /// Wait until every agent logs `vip-agent running`.
    ///
    /// # Panics
    /// After 30 s.
    pub fn wait_agents_running(&self) {
        crate::eventually(Duration::from_secs(30), "every agent runs", || {
            (0..self.nodes.len()).all(|i| self.agent_log(i).contains("vip-agent running"))
        });
    }

    /// Cut node `i` off from every other database node (nft drop both ways, in its namespace);
    /// the client still reaches it.
    ///
    /// # Panics
    /// When nft fails.
    pub fn partition(&self, i: usize) {
        let others: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.host.ip.to_string())
            .collect();
        let set = others.join(", ");
        let rules = format!(
            "table inet vip_partition {{\n  chain input {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n  \
             chain output {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n}}\n"
        );
        let path = self.dir.join(format!("partition{}.nft", i + 1));
        std::fs::write(&path, rules).expect("nft rules");
        self.nodes[i]
            .host
            .ns
            .exec_ok("nft", &["-f", path_str(&path)]);
    }

    /// Undo [`Self::partition`].
    pub fn heal(&self, i: usize) {
        let _ = self.nodes[i]
            .host
            .ns
            .exec("nft", &["delete", "table", "inet", "vip_partition"]);
    }

    /// The nodes whose PostgreSQL answers `pg_is_in_recovery() = false` on their own address, with
    /// the timeline (asked from the client host).
    #[must_use]
    pub fn primaries(&self) -> Vec<(usize, u32)> {
        let targets: Vec<(usize, String)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (i, n.conninfo()))
            .collect();
        self.client.ns.run_in(move || {
            current_thread().block_on(async move {
                let mut found = Vec::new();
                for (i, dsn) in targets {
                    if let Ok(Some((Some(tl), _))) = ask_role(&dsn).await {
                        found.push((i, tl));
                    }
                }
                found
            })
        })
    }

    /// Wait until exactly `i` is primary (seen from the client), and every other node is a standby
    /// streaming from it, or down.
    ///
    /// # Panics
    /// After `limit`.
    pub fn wait_primary(&self, i: usize, limit: Duration) {
        crate::eventually(limit, &format!("node{} is the only primary", i + 1), || {
            let p = self.primaries();
            p.len() == 1 && p[0].0 == i
        });
    }

    /// Bring node `i` back as a standby of node `primary` the way repmgr documents it: stop it
    /// (when it runs), `repmgr node rejoin --force-rewind`, which starts it; then restart its
    /// repmgrd, as an operator does after a rejoin (repmgrd 5.3.3 that watched the node as a
    /// primary may otherwise stay in a loop of "unable to determine a new primary node" and never
    /// monitor it as a standby again).
    ///
    /// # Panics
    /// When the rejoin fails.
    pub fn rejoin(&mut self, i: usize, primary: usize) {
        if self.nodes[i].postmaster_pid().is_some() {
            self.pg_stop(i);
        }
        let conninfo = self.nodes[primary].conninfo();
        self.repmgr_ok(
            i,
            &[
                "node",
                "rejoin",
                "-d",
                &conninfo,
                "--force-rewind",
                "--verbose",
            ],
        );
        self.nodes[i].repmgrd = None;
        self.start_repmgrd(i);
    }

    /// `repmgr standby switchover --siblings-follow` run on node `to`.
    ///
    /// # Panics
    /// When it fails.
    pub fn switchover(&self, to: usize) -> String {
        self.repmgr_ok(to, &["standby", "switchover", "--siblings-follow"])
    }

    /// Where each agent's log ends now: pass it to [`Self::events_since`] later.
    #[must_use]
    pub fn log_marks(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .map(|i| self.agent_log(i).len())
            .collect()
    }

    /// The repmgr events the agents received after `marks`, in time order: `(on node, line)`.
    #[must_use]
    pub fn events_since(&self, marks: &[usize]) -> Vec<(u32, String)> {
        let mut all = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let log = self.agent_log(i);
            let from = marks.get(i).copied().unwrap_or(0).min(log.len());
            for line in log.get(from..).unwrap_or_default().lines() {
                if line.contains("repmgr event") {
                    all.push((n.id, line.to_owned()));
                }
            }
        }
        // Lines start with an RFC 3339 UTC timestamp of fixed width: text order is time order.
        all.sort_by(|a, b| a.1.cmp(&b.1));
        all
    }

    /// Wait until every node but `primary` is a standby streaming from `primary` whose repmgrd
    /// monitors it (it saw it within the last 2 s): the cluster is ready for the next failure.
    ///
    /// # Panics
    /// After `limit`.
    pub fn wait_healthy(&self, primary: usize, limit: Duration) {
        let want = self.nodes[primary].id.to_string();
        let standbys = (self.nodes.len() - 1).to_string();
        crate::eventually(
            limit,
            "every standby streams and its repmgrd monitors the primary",
            || {
                let streaming = self.run_as_postgres(
                    primary,
                    &self.bin("psql"),
                    &[
                        "-X",
                        "-A",
                        "-t",
                        "-h",
                        path_str(&self.nodes[primary].dir),
                        "-U",
                        "postgres",
                        "-d",
                        "postgres",
                        "-c",
                        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    ],
                );
                if String::from_utf8_lossy(&streaming.stdout).trim() != standbys {
                    return false;
                }
                (0..self.nodes.len()).filter(|i| *i != primary).all(|i| {
                    let out = self.run_as_postgres(
                        i,
                        &self.bin("psql"),
                        &[
                            "-X",
                            "-A",
                            "-t",
                            "-F",
                            " ",
                            "-h",
                            path_str(&self.nodes[i].dir),
                            "-U",
                            "postgres",
                            "-d",
                            "postgres",
                            "-c",
                            "SELECT pg_is_in_recovery(), repmgr.get_upstream_node_id(), \
                         repmgr.get_upstream_last_seen()",
                        ],
                    );
                    let text = String::from_utf8_lossy(&out.stdout);
                    let f: Vec<&str> = text.split_whitespace().collect();
                    matches!(f.as_slice(), ["t", up, seen] if *up == want
                    && seen.parse::<i64>().is_ok_and(|s| (0..=2).contains(&s)))
                })
            },
        );
    }

    /// Start the client: writes through the VIP, the role monitor and the ARP prober, each on a
    /// thread inside the client's namespace.
    ///
    /// # Panics
    /// When a thread cannot be started.
    #[must_use]
    pub fn start_client(&self) -> ClientRun {
        let running = Arc::new(AtomicBool::new(true));
        let recording: Arc<Mutex<Recording>> = Arc::default();
        let ns = self.client.ns.path();
        let mut threads = Vec::new();
        {
            let (running, recording, ns) =
                (Arc::clone(&running), Arc::clone(&recording), ns.clone());
            let vip = self.vip;
            threads.push(std::thread::spawn(move || {
                enter(&ns);
                current_thread().block_on(write_loop(vip, &running, &recording));
            }));
        }
        {
            let (running, recording, ns) =
                (Arc::clone(&running), Arc::clone(&recording), ns.clone());
            let dsns: Vec<String> = self.nodes.iter().map(Node::conninfo).collect();
            threads.push(std::thread::spawn(move || {
                enter(&ns);
                current_thread().block_on(role_loop(dsns, &running, &recording));
            }));
        }
        {
            let (running, recording) = (Arc::clone(&running), Arc::clone(&recording));
            let (ifname, ip, vip) = (self.client.ifname.clone(), self.client.ip, self.vip);
            threads.push(std::thread::spawn(move || {
                enter(&ns);
                let sock = ArpSocket::open(&ifname).expect("ARP socket");
                while running.load(Ordering::Relaxed) {
                    let mut batch = sock
                        .probe_loop(ip, vip, ARP_EVERY, &running, 50)
                        .expect("ARP probes");
                    recording
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .probes
                        .append(&mut batch);
                }
            }));
        }
        ClientRun {
            running,
            threads,
            recording,
        }
    }

    /// A summary of every node's logs' ends, for a failure message.
    #[must_use]
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let tail = |path: PathBuf, lines: usize| {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            };
            let _ = write!(
                out,
                "\n==== node{} agent\n{}\n==== node{} repmgr.log\n{}\n==== node{} pg.log\n{}\n",
                i + 1,
                tail(n.agent_log_path(), 40),
                i + 1,
                tail(n.dir.join("repmgr.log"), 20),
                i + 1,
                tail(n.dir.join("pg.log"), 10),
            );
        }
        out
    }
}

/// The scenarios, by kind: what the bench sums up over passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Agents started on a running cluster.
    Bootstrap,
    /// The primary's agent restarted (SIGTERM, start).
    AgentRestart,
    /// The primary's PostgreSQL restarted (`pg_ctl stop`, `pg_ctl start`): no failover.
    PostgresRestart,
    /// `repmgr standby switchover`.
    Switchover,
    /// The primary's postmaster SIGKILLed: repmgrd promotes a standby.
    Kill,
    /// That crashed primary started again with `pg_ctl start` (then rejoined).
    RestartCrashed,
    /// The primary cut off from the other database nodes (then healed and rejoined).
    Partition,
}

impl Kind {
    /// Every kind, in the order of a pass.
    pub const ALL: [Self; 7] = [
        Self::Bootstrap,
        Self::AgentRestart,
        Self::PostgresRestart,
        Self::Switchover,
        Self::Kill,
        Self::RestartCrashed,
        Self::Partition,
    ];

    /// What the scenario does, for tables.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Bootstrap => "agents started on a running cluster",
            Self::AgentRestart => "the primary's agent restarted",
            Self::PostgresRestart => "the primary's PostgreSQL restarted (no failover)",
            Self::Switchover => "`repmgr standby switchover`",
            Self::Kill => "the primary's postmaster SIGKILLed, repmgrd promotes",
            Self::RestartCrashed => "that crashed primary started again (`pg_ctl start`)",
            Self::Partition => "the primary cut off from the other nodes (nft)",
        }
    }
}

/// One scenario run.
#[derive(Clone, Debug)]
pub struct ScenarioResult {
    pub kind: Kind,
    /// The kind with the nodes involved.
    pub label: String,
    pub outcome: Outcome,
    /// The repmgr events the agents received meanwhile: `[agent N] applied|ignored event=...`.
    pub events: Vec<String>,
}

impl ScenarioResult {
    /// The outcome line and the events, one per line.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![self.outcome.line(&self.label)];
        out.extend(self.events.iter().map(|e| format!("    {e}")));
        out
    }
}

fn name(i: usize) -> String {
    format!("node{}", i + 1)
}

impl RepmgrCluster {
    /// Wait until a write through the VIP committed on `node` after `after_ns`.
    ///
    /// # Panics
    /// After `limit`, with the nodes' logs.
    pub fn wait_read_write(&self, client: &ClientRun, node: usize, after_ns: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        let want = name(node);
        loop {
            let view = client.snapshot();
            if view.attempts.iter().any(|a| {
                a.at_ns >= after_ns && a.committed.is_some() && a.node.as_deref() == Some(&want)
            }) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no write committed on {want} through the VIP within {limit:?}{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node other than `except` that becomes the only primary within `limit`.
    ///
    /// # Panics
    /// After `limit`, with the nodes' logs.
    #[must_use]
    pub fn wait_new_primary(&self, except: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let p: Vec<usize> = self
                .primaries()
                .into_iter()
                .map(|(i, _)| i)
                .filter(|i| *i != except)
                .collect();
            if let [one] = p.as_slice() {
                return *one;
            }
            assert!(
                Instant::now() < deadline,
                "no new primary besides {} within {limit:?}{}",
                name(except),
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The only primary, seen from the client.
    ///
    /// # Panics
    /// When there is not exactly one.
    #[must_use]
    pub fn the_primary(&self) -> usize {
        match self.primaries().as_slice() {
            [(i, _)] => *i,
            other => panic!("not exactly one primary: {other:?}{}", self.diagnostics()),
        }
    }

    fn finish(
        &self,
        client: &ClientRun,
        kind: Kind,
        label: String,
        (from, marks): (u64, Vec<usize>),
        expect: usize,
    ) -> ScenarioResult {
        let outcome =
            client
                .snapshot()
                .outcome(from, vip_agent::clock::monotonic_ns(), Some(&name(expect)));
        let events = self
            .events_since(&marks)
            .into_iter()
            .map(|(on, line)| {
                let short: Vec<&str> = line
                    .split_whitespace()
                    .filter(|w| w.starts_with("event=") || w.starts_with("node="))
                    .collect();
                let verdict = if line.contains("event applied") {
                    "applied"
                } else {
                    "ignored"
                };
                format!("[agent {on}] {verdict} {}", short.join(" "))
            })
            .collect();
        let result = ScenarioResult {
            kind,
            label,
            outcome,
            events,
        };
        for line in result.lines() {
            eprintln!("{line}");
        }
        result
    }

    fn trigger(&self) -> (u64, Vec<usize>) {
        (vip_agent::clock::monotonic_ns(), self.log_marks())
    }

    /// Start every agent on the running cluster: its primary must take writes through the VIP
    /// from repmgr's metadata alone.
    ///
    /// # Panics
    /// When it does not within [`START_LIMIT`].
    pub fn bootstrap(&mut self, client: &ClientRun) -> ScenarioResult {
        let primary = self.the_primary();
        let t = self.trigger();
        for i in 0..self.nodes.len() {
            self.start_agent(i);
        }
        self.wait_agents_running();
        self.wait_read_write(client, primary, t.0, START_LIMIT);
        std::thread::sleep(SETTLE);
        let label = format!(
            "agents started on a running cluster ({} primary)",
            name(primary)
        );
        self.finish(client, Kind::Bootstrap, label, t, primary)
    }

    /// One pass of every scenario but the bootstrap, from the current primary `p`: its agent
    /// restarted; its PostgreSQL restarted; a switchover to the next node `q`; `q`'s postmaster
    /// SIGKILLed (repmgrd promotes `r`); `q` started again with `pg_ctl start`, then rejoined; `r`
    /// cut off from the others (repmgrd promotes `s`), then healed and rejoined. Each waits until
    /// the VIP takes writes on the node it should, and until the cluster is healthy again.
    ///
    /// # Panics
    /// When a step fails or a bound is exceeded.
    pub fn pass(&mut self, client: &ClientRun) -> Vec<ScenarioResult> {
        let mut out = Vec::new();
        let p = self.the_primary();
        self.wait_healthy(p, Duration::from_secs(60));

        let t = self.trigger();
        self.restart_agent(p);
        self.wait_read_write(client, p, t.0, START_LIMIT);
        std::thread::sleep(SETTLE);
        let label = format!("{}'s agent restarted", name(p));
        out.push(self.finish(client, Kind::AgentRestart, label, t, p));

        let t = self.trigger();
        self.pg_stop(p);
        self.pg_start(p);
        self.wait_read_write(client, p, t.0, START_LIMIT);
        self.wait_healthy(p, Duration::from_secs(60));
        std::thread::sleep(SETTLE);
        let label = format!("{}'s PostgreSQL restarted", name(p));
        out.push(self.finish(client, Kind::PostgresRestart, label, t, p));

        let q = (p + 1) % self.nodes.len();
        let t = self.trigger();
        self.switchover(q);
        self.wait_read_write(client, q, t.0, SWITCHOVER_LIMIT);
        self.wait_primary(q, Duration::from_secs(30));
        self.wait_healthy(q, Duration::from_secs(60));
        std::thread::sleep(SETTLE);
        let label = format!("switchover {} -> {}", name(p), name(q));
        out.push(self.finish(client, Kind::Switchover, label, t, q));

        let t = self.trigger();
        self.pg_kill(q);
        let r = self.wait_new_primary(q, FAILOVER_LIMIT);
        self.wait_read_write(client, r, t.0, FAILOVER_LIMIT);
        std::thread::sleep(SETTLE);
        let label = format!("{}'s postmaster SIGKILLed ({} promoted)", name(q), name(r));
        out.push(self.finish(client, Kind::Kill, label, t, r));

        let t = self.trigger();
        self.pg_start(q);
        std::thread::sleep(Duration::from_secs(15));
        let label = format!(
            "the crashed {} started again ({} stays primary)",
            name(q),
            name(r)
        );
        out.push(self.finish(client, Kind::RestartCrashed, label, t, r));
        self.rejoin(q, r);
        self.wait_primary(r, Duration::from_secs(30));
        self.wait_healthy(r, Duration::from_secs(60));

        let t = self.trigger();
        self.partition(r);
        let s = self.wait_new_primary(r, FAILOVER_LIMIT);
        self.wait_read_write(client, s, t.0, FAILOVER_LIMIT);
        std::thread::sleep(SETTLE);
        let label = format!(
            "{} cut off from the other nodes ({} promoted)",
            name(r),
            name(s)
        );
        out.push(self.finish(client, Kind::Partition, label, t, s));
        self.heal(r);
        self.rejoin(r, s);
        self.wait_primary(s, Duration::from_secs(30));
        self.wait_healthy(s, Duration::from_secs(60));
        out
    }
}

/// `passes` passes of every scenario on one cluster (after the bootstrap), for the benchmark.
#[derive(Clone, Debug, Default)]
pub struct RepmgrBench {
    pub results: Vec<ScenarioResult>,
    pub passes: usize,
    pub took: Duration,
}

/// Build a cluster on `10.77.<subnet>.0/24`, bootstrap the agents, and run `passes` passes.
///
/// # Panics
/// When a step fails (the cluster is removed all the same).
#[must_use]
pub fn bench(installation: Installation, passes: usize, subnet: u8, agent: &Path) -> RepmgrBench {
    let started = Instant::now();
    let mut c = RepmgrCluster::new(installation, subnet, 3, agent);
    let client = c.start_client();
    let mut results = vec![c.bootstrap(&client)];
    for _ in 0..passes {
        results.extend(c.pass(&client));
    }
    drop(client);
    drop(c);
    RepmgrBench {
        results,
        passes,
        took: started.elapsed(),
    }
}

impl RepmgrBench {
    /// The BENCHMARKS.md section: one row per kind of scenario.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "\n## repmgr 5.3.3: a real cluster\n\nThree PostgreSQL 15 nodes managed by Debian's repmgr \
             and repmgrd (`failover=automatic`, `monitor_interval_secs=1`, `reconnect_attempts=5`, \
             `reconnect_interval=3`, `primary_visibility_consensus`, `child_nodes_disconnect_command`), \
             sshd for the switchover, vip-agent on each node in repmgr mode with its default intervals \
             (`docs/repmgr.md`); a client writes through the VIP 15 times a second (a new connection each \
             time) and probes ARP every 20 ms. The agents are started once on the running cluster, then \
             {} pass(es) of every scenario run on the same cluster (`vip_tests::repmgr`, also \
             `tests/tests/repmgr_real.rs`); {:.0} s in all. Trigger: the command that starts the \
             scenario. \"Two answering\": ARP probes answered by two MACs (x 20 ms). \"Stale writes\": \
             writes committed on a node after another node was seen primary on a newer timeline.\n\n\
             | scenario | n | trigger -> first write through the VIP, p50 | max | two answering (probes) | \
             connections to a server in recovery | stale writes | longest silence (ms), max |\n\
             |---|---|---|---|---|---|---|---|\n",
            self.passes,
            self.took.as_secs_f64()
        );
        for kind in Kind::ALL {
            let rows: Vec<&ScenarioResult> =
                self.results.iter().filter(|r| r.kind == kind).collect();
            if rows.is_empty() {
                continue;
            }
            let mut rw: Vec<u64> = rows
                .iter()
                .filter_map(|r| r.outcome.to_read_write_ms)
                .collect();
            rw.sort_unstable();
            let ms = |v: Option<&u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"));
            let sum = |f: fn(&Outcome) -> usize| rows.iter().map(|r| f(&r.outcome)).sum::<usize>();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.label(),
                rows.len(),
                ms(rw.get(rw.len() / 2)),
                ms(rw.last()),
                sum(|o| o.double_probes),
                sum(|o| o.in_recovery),
                sum(|o| o.stale_writes),
                rows.iter().map(|r| r.outcome.silent_ms).max().unwrap_or(0),
            );
        }
        out.push_str(
            "\nFor the crashed primary started again, the VIP stays where it is: its time is that of \
             the next write on the current primary. The switchover's time is mostly repmgr's own (ssh, \
             checkpoint, shutdown, `pg_promote()` and its 1 s poll); a failover's is repmgrd's timers.\n",
        );
        out
    }
}

impl Drop for RepmgrCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.agent = None;
            n.repmgrd = None;
        }
        for n in &self.nodes {
            if let Some(pid) = n.postmaster_pid() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
                if !crate::cluster::wait_gone(pid, Duration::from_secs(10)) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    crate::cluster::wait_gone(pid, Duration::from_secs(5));
                }
            }
        }
        for n in &mut self.nodes {
            n.sshd = None;
        }
        if let Ok(entries) = std::fs::read_dir(&self.pins) {
            for e in entries.flatten() {
                let _ = vip_agent::dataplane::detach(&self.pins, &e.file_name().to_string_lossy());
            }
        }
        let _ = std::fs::remove_dir(&self.pins);
        if self.made_run_sshd {
            let _ = std::fs::remove_dir("/run/sshd");
        }
        if std::env::var_os("VIP_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
        crate::interrupt::path_removed(&self.dir);
        crate::interrupt::path_removed(&self.pins);
    }
}

fn path_str(path: &Path) -> &str {
    crate::postgres::utf8(path)
}

fn enter(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `(timeline when primary, database clock)` of the server at `dsn`, `Ok(None)` when it does not
/// answer in time.
async fn ask_role(dsn: &str) -> Result<Option<(Option<u32>, f64)>, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = dsn.parse()?;
    config.connect_timeout(Duration::from_millis(500));
    let Ok(connected) = tokio::time::timeout(
        Duration::from_secs(1),
        config.connect(tokio_postgres::NoTls),
    )
    .await
    else {
        return Ok(None);
    };
    let (client, connection) = connected?;
    let task = tokio::spawn(connection);
    let answer = tokio::time::timeout(Duration::from_secs(1), role_query(&client)).await;
    task.abort();
    match answer {
        Ok(Ok(v)) => Ok(Some(v)),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(None),
    }
}

const ROLE_SQL: &str = "SELECT CASE WHEN pg_is_in_recovery() THEN '' ELSE \
     substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END, \
     extract(epoch FROM clock_timestamp())::text";

async fn role_query(
    client: &tokio_postgres::Client,
) -> Result<(Option<u32>, f64), tokio_postgres::Error> {
    let rows = client.simple_query(ROLE_SQL).await?;
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            let tl = row
                .get(0)
                .filter(|s| !s.is_empty())
                .and_then(|s| u32::from_str_radix(s, 16).ok());
            let at = row.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.0);
            return Ok((tl, at));
        }
    }
    Ok((None, 0.0))
}

/// One attempt every [`WRITE_EVERY`], each on its own task bounded by [`ATTEMPT_LIMIT`]: a new
/// connection to the VIP, which node and role answered, and an insert when it is a primary.
async fn write_loop(vip: Ipv4Addr, running: &AtomicBool, recording: &Arc<Mutex<Recording>>) {
    let mut ticker = tokio::time::interval(WRITE_EVERY);
    let mut tasks = tokio::task::JoinSet::new();
    while running.load(Ordering::Relaxed) {
        ticker.tick().await;
        let recording = Arc::clone(recording);
        tasks.spawn(async move {
            let at_ns = vip_agent::clock::monotonic_ns();
            let attempt = match tokio::time::timeout(ATTEMPT_LIMIT, one_write(vip)).await {
                Ok(a) => a,
                Err(_) => Attempt {
                    at_ns: 0,
                    done_ns: 0,
                    node: None,
                    in_recovery: None,
                    committed: None,
                    error: Some("no answer within 1 s".to_owned()),
                },
            };
            recording
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .attempts
                .push(Attempt {
                    at_ns,
                    done_ns: vip_agent::clock::monotonic_ns(),
                    ..attempt
                });
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn one_write(vip: Ipv4Addr) -> Attempt {
    let mut attempt = Attempt {
        at_ns: 0,
        done_ns: 0,
        node: None,
        in_recovery: None,
        committed: None,
        error: None,
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host(vip.to_string())
        .port(5432)
        .user("postgres")
        .dbname("postgres")
        .application_name("vip-client")
        .connect_timeout(ATTEMPT_LIMIT);
    let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            attempt.error = Some(format!("connect: {e}"));
            return attempt;
        }
    };
    let task = tokio::spawn(connection);
    let result = async {
        let rows = client
            .simple_query("SELECT current_setting('cluster_name'), pg_is_in_recovery()::text")
            .await?;
        for m in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                attempt.node = row.get(0).map(str::to_owned);
                attempt.in_recovery = row.get(1).map(|v| v == "true");
            }
        }
        if attempt.in_recovery == Some(false) {
            let rows = client
                .simple_query(
                    "INSERT INTO vip_probe (node) VALUES (current_setting('cluster_name')) \
                     RETURNING substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), \
                     extract(epoch FROM clock_timestamp())::text",
                )
                .await?;
            for m in rows {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                    let tl = row.get(0).and_then(|s| u32::from_str_radix(s, 16).ok());
                    let at = row.get(1).and_then(|s| s.parse::<f64>().ok());
                    if let (Some(tl), Some(at)) = (tl, at) {
                        attempt.committed = Some((tl, at));
                    }
                }
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    }
    .await;
    if let Err(e) = result {
        attempt.error = Some(format!("query: {e}"));
    }
    task.abort();
    attempt
}

/// Every node's role, from its own address, every 50 ms over one kept connection per node; a
/// change is recorded with the time the server gave (one host, one clock).
async fn role_loop(dsns: Vec<String>, running: &AtomicBool, recording: &Arc<Mutex<Recording>>) {
    let watchers = dsns.iter().enumerate().map(|(i, dsn)| async move {
        let mut last: Option<Option<u32>> = None;
        let mut client: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
        while running.load(Ordering::Relaxed) {
            if client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                client = connect_quick(dsn).await;
            }
            if let Some((c, _)) = &client {
                match tokio::time::timeout(Duration::from_secs(1), role_query(c)).await {
                    Ok(Ok((primary_on, db_time))) => {
                        if last != Some(primary_on) {
                            last = Some(primary_on);
                            recording
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .roles
                                .push(RoleSeen {
                                    node: i,
                                    at_ns: vip_agent::clock::monotonic_ns(),
                                    primary_on,
                                    db_time,
                                });
                        }
                    }
                    _ => {
                        if let Some((_, task)) = client.take() {
                            task.abort();
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some((_, task)) = client.take() {
            task.abort();
        }
    });
    let mut handles = Vec::new();
    for w in watchers {
        handles.push(w);
    }
    join_all(handles).await;
}

async fn connect_quick(dsn: &str) -> Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let mut config: tokio_postgres::Config = dsn.parse().ok()?;
    config.connect_timeout(Duration::from_millis(500));
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(1),
        config.connect(tokio_postgres::NoTls),
    )
    .await
    .ok()?
    .ok()?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Some((client, task))
}

/// Poll every future in turn until all are done (a tiny `join_all` on the current task).
async fn join_all<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(move |cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
