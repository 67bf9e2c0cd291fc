//! A real Patroni cluster in network namespaces, for the end-to-end tests of issue 13: Debian's
//! Patroni 3.0.2 with PostgreSQL 15 on etcd 3.4 (Patroni's `etcd3:` DCS), two DB nodes that each run
//! the real vip-agent with vip-manager's keys only, and a client that connects through the VIP.
//!
//! * [`PatroniCluster`]: the segment, etcd and the agents come from [`Cluster`] (its node configs
//!   are rewritten to vip-manager's keys only: `ip`, `netmask`, `interface`, `trigger-key`,
//!   `trigger-value`, `dcs-type`, `dcs-endpoints`, so the agents pin under their default
//!   `/sys/fs/bpf/vip-agent/<ifname>`); Patroni and PostgreSQL run as `postgres` from a temporary
//!   directory on tmpfs. Patroni's REST API listens on the node's address only
//!   (`restapi.listen: <node-ip>:8008`), nothing on loopback; PostgreSQL listens on the node's
//!   address and the VIP (`net.ipv4.ip_nonlocal_bind=1` in the node's namespace, so it can bind the
//!   VIP while the node does not hold it) and on a unix socket in the directory.
//! * [`Observers`]: what the test sees, on one clock ([`PatroniCluster::epoch`]): the client's
//!   connections through the VIP ([`Attempt`], 50 a second, a new connection each, TCP connect
//!   bounded by 200 ms, `trust` from the client's address so that no password hashing costs CPU: `SELECT pg_is_in_recovery(), current_setting('vip_test.node')`, then an
//!   `INSERT` of a row), every change under `/service/<scope>/` in etcd ([`KeyEvent`], an etcd v3
//!   watch from the client), and each node's `GET /patroni` ([`RestSample`], 10 a second).
//! * [`check_window`]: the assertions of issue 13 over one scenario's window, and a summary.
//! * [`Manager`]: what manages the VIP. The tests run the agent ([`PatroniCluster::new`]); the
//!   benchmark (`crate::bench_patroni`) also runs Debian's vip-manager 1.0.2 in its place
//!   ([`PatroniCluster::with_manager`]), which reads only etcd's v2 API: that cluster's Patroni runs
//!   its `etcd:` (v2) DCS against the same etcd (started with `--enable-v2=true`), and the
//!   observers and [`PatroniCluster::leader`] read the v2 keyspace (a long-polling v2 watch).
//!
//! Timers: `ttl: 20`, `loop_wait: 2`, `retry_timeout: 5`. Patroni 3.0.2 enforces no minimum (the
//! `ttl >= 20`, `loop_wait >= 1`, `retry_timeout >= 3` rule came with Patroni 3.2, #2869), but a
//! cluster that a later Patroni would refuse would prove little; `loop_wait + 2 * retry_timeout <=
//! ttl` holds, as Patroni's documentation asks.
//!
//! Every process is stopped by its PID (Patroni: its guard; PostgreSQL: the PID in
//! `postmaster.pid`, checked against `/proc/<pid>/cmdline` first), the pins detached, the
//! directory and namespaces removed, also when a test panics.

use std::{
    fmt::Write as _,
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::{Pid, chown},
};

use crate::{
    REQUIRE_PRIVILEGES,
    cluster::{Cluster, children_of, wait_gone},
    postgres::{Installation, PgDir},
};

/// Patroni's `ttl` (seconds): the leader key's lease.
pub const TTL: u64 = 20;
/// Patroni's `loop_wait` (seconds).
pub const LOOP_WAIT: u64 = 2;
/// Patroni's `retry_timeout` (seconds).
pub const RETRY_TIMEOUT: u64 = 5;
/// Patroni's REST API port (on the node's address).
pub const REST_PORT: u16 = 8008;
/// PostgreSQL's port.
pub const PG_PORT: u16 = 5432;
/// etcd's client port.
const ETCD_PORT: u16 = 2379;
/// A new client connection through the VIP this often (50 a second): Patroni's promotion
/// finishes some 100 ms after it writes the leader key, and the client must not miss that window.
pub const ATTEMPT_PERIOD: Duration = Duration::from_millis(20);
/// Bound on the TCP connect of one attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Bound on one whole attempt (connect, authenticate, query, insert).
pub const ATTEMPT_LIMIT: Duration = Duration::from_secs(2);
/// `GET /patroni` on each node this often.
const REST_PERIOD: Duration = Duration::from_millis(100);
/// Bound on one REST request.
const REST_TIMEOUT: Duration = Duration::from_millis(500);

const SUPERUSER_PASSWORD: &str = "vip-test-super";
const REPLICATION_PASSWORD: &str = "vip-test-repl";
const PATRONI: &str = "/usr/bin/patroni";
const PATRONICTL: &str = "/usr/bin/patronictl";
const NFT: &str = "/usr/sbin/nft";
/// The table every client attempt writes a row into (created after bootstrap).
pub const TABLE: &str = "vip_probe";

/// Whether the Patroni test `test` can run: root, network namespaces, PostgreSQL and Patroni.
/// Otherwise it prints a loud `SKIPPED` line and returns `None`, unless under CI (`CI=true` or
/// [`REQUIRE_PRIVILEGES`]`=1`), where it panics.
///
/// # Panics
/// Under CI, when something is missing.
#[must_use]
pub fn require_patroni(test: &str) -> Option<Installation> {
    if !crate::require_privileges(test) {
        return None;
    }
    let installation = crate::postgres::require_postgres(test)?;
    let missing: Vec<&str> = [PATRONI, PATRONICTL, NFT, "/usr/bin/etcd"]
        .into_iter()
        .filter(|p| !Path::new(p).is_file())
        .collect();
    if missing.is_empty() {
        return Some(installation);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var(REQUIRE_PRIVILEGES).is_ok_and(|v| v == "1");
    assert!(
        !ci,
        "{test}: {missing:?} missing (cargo xtask setup installs patroni, nftables and etcd); \
         privileged tests may not skip under CI"
    );
    eprintln!("SKIPPED {test}: {missing:?} missing; run cargo xtask setup");
    None
}

/// A process this module started (Patroni), SIGKILLed by PID and reaped on drop.
#[derive(Debug)]
struct Proc(Option<Child>);

impl Proc {
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it has exited (then it is reaped).
    fn exited(&mut self) -> bool {
        match self.0.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_)) | Err(_)) => {
                self.0 = None;
                true
            }
            Some(Ok(None)) => false,
            None => true,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One Patroni member: its files and its Patroni process.
#[derive(Debug)]
pub struct Member {
    /// Patroni's `name`, the agent's `trigger-value`.
    pub name: String,
    pub ip: Ipv4Addr,
    /// Patroni's configuration file.
    pub config: PathBuf,
    /// PostgreSQL's data directory.
    pub data: PathBuf,
    /// Patroni's output (and PostgreSQL's, which it passes through).
    pub log: PathBuf,
    dir: PathBuf,
    patroni: Option<Proc>,
}

/// What manages the VIP on the DB nodes, and so which DCS Patroni uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    /// The real vip-agent with vip-manager's keys only; Patroni's `etcd3:` DCS (etcd's v3 API).
    VipAgent,
    /// The real vip-agent asking Patroni's REST API (`dcs-type: patroni`, vip-manager's defaults
    /// `trigger-key: /leader`, `trigger-value: 200`), its node's Patroni at `dcs-endpoints`; no
    /// etcd for the agent. Patroni on its `etcd3:` DCS.
    VipAgentRest,
    /// Debian's vip-manager 1.0.2 (`/usr/bin/vip-manager`, polling every `interval_ms`, its
    /// default 1000). It speaks only etcd's v2 API, so Patroni runs its `etcd:` (v2) DCS (python3-etcd)
    /// against the same etcd, which runs with `--enable-v2=true`; the keys live in the v2 keyspace.
    VipManager { interval_ms: u32 },
}

impl Manager {
    /// Whether Patroni keeps its keys in etcd's v2 keyspace (`etcd:` DCS).
    #[must_use]
    pub fn v2(self) -> bool {
        matches!(self, Self::VipManager { .. })
    }

    /// A name for reports.
    #[must_use]
    pub fn label(self) -> String {
        match self {
            Self::VipAgent => "vip-agent".to_owned(),
            Self::VipAgentRest => "vip-agent (dcs-type: patroni)".to_owned(),
            Self::VipManager { interval_ms: 1000 } => "vip-manager 1.0.2".to_owned(),
            Self::VipManager { interval_ms } => format!("vip-manager 1.0.2 ({interval_ms} ms)"),
        }
    }
}

/// Options of one cluster.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// `10.77.<subnet>.0/24`: use 120 to 139 (issue 13's range) or 180 to 189 (issue 18's), free
    /// in the other tests.
    pub subnet: u8,
    /// `failsafe_mode` in `bootstrap.dcs`.
    pub failsafe_mode: bool,
    /// Patroni's REST API over https (`restapi.certfile`/`keyfile`, a test CA the agents get as
    /// `patroni-ca-file` and patronictl as `ctl.cacert`), as `patroni_ssl_enabled` sets it up.
    pub rest_tls: bool,
}

/// The cluster. Dropped in this order: Patroni and PostgreSQL (in `Drop`), the agents (their pins
/// detached), then [`Cluster`] (etcd, namespaces), then the directory.
#[derive(Debug)]
pub struct PatroniCluster {
    pub members: Vec<Member>,
    /// The segment, etcd, the client and the agents.
    pub net: Cluster,
    /// Patroni's `scope` (unique per cluster).
    pub scope: String,
    /// The clock of every observation: times are durations since this instant.
    pub epoch: Instant,
    /// What manages the VIP (and so which DCS Patroni uses).
    pub manager: Manager,
    /// How the test itself asks Patroni's REST API (plain, or https with the test CA).
    pub rest_api: RestApi,
    installation: Installation,
    /// Whether the agents' default pin root existed before this cluster (if not, it is removed
    /// on drop when empty).
    pin_root_existed: bool,
    /// Holds the directory (on tmpfs, owned by `postgres`); dropped last.
    dir: PgDir,
}

impl PatroniCluster {
    /// Build the segment and etcd, write the agents' and Patroni's configurations, bootstrap
    /// node1 (it becomes the leader), clone node2, create [`TABLE`], start both agents, and return
    /// once the replica streams.
    ///
    /// # Panics
    /// When any step fails or does not finish in time (with the logs' tails).
    #[must_use]
    pub fn new(installation: Installation, options: Options, agent_bin: &Path) -> Self {
        Self::with_manager(installation, options, Manager::VipAgent, agent_bin)
    }

    /// [`Self::new`] with the VIP managed by `manager` (vip-manager 1.0.2: Patroni on the v2 DCS,
    /// vip-manager started on each node instead of the agent).
    ///
    /// # Panics
    /// When any step fails or does not finish in time (with the logs' tails).
    #[must_use]
    pub fn with_manager(
        installation: Installation,
        options: Options,
        manager: Manager,
        agent_bin: &Path,
    ) -> Self {
        assert!(
            (120..=139).contains(&options.subnet) || (180..=189).contains(&options.subnet),
            "issue 13's tests use 10.77.120.0/24 to 10.77.139.0/24, issue 18's 10.77.180.0/24 to \
             10.77.189.0/24"
        );
        let pin_root_existed = Path::new(vip_agent::dataplane::DEFAULT_PIN_ROOT).exists();
        let net = Cluster::new(options.subnet, 2, agent_bin, "");
        let scope = crate::unique_name("pg");
        let dir = PgDir::on_tmpfs(installation.clone(), "vippat");
        let rest_api = if options.rest_tls {
            RestApi::https(&make_ca(dir.path(), &installation))
        } else {
            RestApi::Plain
        };
        let mut cluster = Self {
            members: Vec::new(),
            scope,
            epoch: Instant::now(),
            manager,
            rest_api,
            installation,
            pin_root_existed,
            dir,
            net,
        };
        cluster.net.key = format!("/service/{}/leader", cluster.scope);
        for node in &cluster.net.nodes {
            crate::interrupt::path_created(
                &Path::new(vip_agent::dataplane::DEFAULT_PIN_ROOT).join(&node.host.ifname),
            );
        }
        for i in 0..cluster.net.nodes.len() {
            cluster.write_agent_config(i);
            let member = cluster.write_member(i, options);
            cluster.members.push(member);
        }
        // Bootstrap: node1 first, so it is the leader; then node2 clones it.
        cluster.start_patroni(0);
        cluster.wait_for(Duration::from_secs(90), "node1 bootstraps as leader", |c| {
            c.leader().as_deref() == Some("node1") && c.is_running_primary(0)
        });
        cluster.create_table();
        cluster.start_patroni(1);
        for i in 0..cluster.net.nodes.len() {
            cluster.start_manager(i);
        }
        if matches!(manager, Manager::VipAgent | Manager::VipAgentRest) {
            cluster.net.wait_running();
        }
        cluster.wait_healthy(Duration::from_secs(90));
        cluster
    }

    /// The agent's configuration: vip-manager's keys and nothing else.
    fn write_agent_config(&self, i: usize) {
        let node = &self.net.nodes[i];
        if self.manager == Manager::VipAgentRest {
            let text = format!(
                "ip: {vip}\nnetmask: 24\ninterface: {ifname}\ndcs-type: patroni\n\
                 dcs-endpoints: http://{ip}:{REST_PORT}/\n",
                vip = self.net.vip,
                ifname = node.host.ifname,
                ip = node.host.ip,
            );
            std::fs::write(&node.config, text).expect("write the agent's configuration");
            return;
        }
        let mut text = format!(
            "ip: {vip}\nnetmask: 24\ninterface: {ifname}\ntrigger-key: {key}\ntrigger-value: {name}\n\
             dcs-type: etcd\ndcs-endpoints: {endpoints}\n",
            vip = self.net.vip,
            ifname = node.host.ifname,
            key = self.net.key,
            name = node.name,
            endpoints = self.net.endpoints.join(","),
        );
        // https: one key more than vip-manager's, the CA that verifies Patroni's certificate.
        if let Some(ca) = self.rest_api.ca_file() {
            let _ = writeln!(text, "patroni-ca-file: {}", ca.display());
        }
        std::fs::write(&node.config, text).expect("write the agent's configuration");
    }

    /// Node `i`'s Patroni configuration and directory.
    fn write_member(&self, i: usize, options: Options) -> Member {
        let node = &self.net.nodes[i];
        let user = self.installation.user();
        let dir = self.dir.path().join(&node.name);
        std::fs::create_dir(&dir).expect("member directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .expect("chmod the member directory");
        chown(&dir, Some(user.uid), Some(user.gid)).expect("chown the member directory");
        let data = dir.join("data");
        let ip = node.host.ip;
        let [a, b, c, _] = ip.octets();
        let subnet = format!("{a}.{b}.{c}.0/24");
        let config = dir.join("patroni.yml");
        let tls = match self.rest_api.ca_file() {
            Some(ca) => {
                let (cert, key) = make_leaf(self.dir.path(), &node.name, ip, &self.installation);
                format!(
                    "  certfile: {}\n  keyfile: {}\nctl:\n  cacert: {}\n",
                    cert.display(),
                    key.display(),
                    ca.display()
                )
            }
            None => String::new(),
        };
        let text = format!(
            r#"scope: {scope}
namespace: /service/
name: {name}
restapi:
  listen: {ip}:{rest}
  connect_address: {ip}:{rest}
{tls}{dcs}:
  hosts: {etcd}:2379
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry}
    maximum_lag_on_failover: 1048576
    failsafe_mode: {failsafe}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 128MB
  initdb:
  - encoding: UTF8
  - locale: C
postgresql:
  listen: {ip},{vip}:{pg}
  connect_address: {ip}:{pg}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {dir}/pgpass
  use_unix_socket: true
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
  authentication:
    superuser:
      username: postgres
      password: {superpw}
    replication:
      username: replicator
      password: {replpw}
  parameters:
    unix_socket_directories: '{dir}'
    vip_test.node: '{name}'
    fsync: 'off'
    # in the data directory: a killed server leaves no segment behind in /dev/shm
    dynamic_shared_memory_type: mmap
    full_page_writes: 'on'
    max_connections: 200
    logging_collector: 'on'
    log_directory: '{dir}/pglog'
    log_filename: 'postgresql.log'
    log_line_prefix: '%m [%p] '
  pg_hba:
  - local all all trust
  - host all postgres {client}/32 trust
  - host all all {subnet} scram-sha-256
  - host replication replicator {subnet} scram-sha-256
watchdog:
  mode: off
"#,
            scope = self.scope,
            name = node.name,
            rest = REST_PORT,
            dcs = if self.manager.v2() { "etcd" } else { "etcd3" },
            etcd = self.net.etcd_host.ip,
            ttl = TTL,
            loop_wait = LOOP_WAIT,
            retry = RETRY_TIMEOUT,
            failsafe = options.failsafe_mode,
            tls = tls,
            vip = self.net.vip,
            pg = PG_PORT,
            data = data.display(),
            bin = self.installation.bin().display(),
            dir = dir.display(),
            superpw = SUPERUSER_PASSWORD,
            client = self.net.client.ip,
            replpw = REPLICATION_PASSWORD,
        );
        std::fs::write(&config, text).expect("write patroni.yml");
        chown(&config, Some(user.uid), Some(user.gid)).expect("chown patroni.yml");
        // PostgreSQL binds the VIP whether or not the node holds it (as `listen: 0.0.0.0` would
        // accept it, without a listener on loopback).
        node.host
            .ns
            .exec_ok("sysctl", &["-q", "-w", "net.ipv4.ip_nonlocal_bind=1"]);
        Member {
            name: node.name.clone(),
            ip,
            config,
            data,
            log: dir.join("patroni.log"),
            dir,
            patroni: None,
        }
    }

    /// Start Patroni on node `i` (as `postgres`, in the node's namespace).
    ///
    /// # Panics
    /// When it cannot be started or already runs.
    pub fn start_patroni(&mut self, i: usize) {
        assert!(
            self.members[i].patroni.is_none(),
            "Patroni already runs on node {i}"
        );
        let member = &self.members[i];
        let user = self.installation.user();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log)
            .expect("Patroni's log");
        let _ = chown(&member.log, Some(user.uid), Some(user.gid));
        let err = log.try_clone().expect("clone the log handle");
        let child = Command::new("nsenter")
            .arg(format!(
                "--net={}",
                self.net.nodes[i].host.ns.path().display()
            ))
            .arg(format!("--setuid={}", user.uid))
            .arg(format!("--setgid={}", user.gid))
            .arg("--")
            .arg(PATRONI)
            .arg(&member.config)
            .current_dir(&member.dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &member.dir)
            .env("LANG", "C.UTF-8")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: a signal to the test's group does not reach it.
            .process_group(0)
            .spawn()
            .expect("start patroni");
        self.members[i].patroni = Some(Proc(Some(child)));
    }

    /// Start node `i`'s VIP manager (the agent, or vip-manager); its output goes to the node's log.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn start_manager(&mut self, i: usize) {
        match self.manager {
            Manager::VipAgent | Manager::VipAgentRest => self.net.start_agent(i),
            Manager::VipManager { interval_ms } => self.net.start_vip_manager(i, interval_ms),
        }
    }

    /// Stop node `i`'s VIP manager: SIGTERM (the agent fences and exits); SIGKILL by PID when it
    /// has not exited within 10 s (its guard's drop).
    pub fn stop_manager(&mut self, i: usize) {
        let _ = self.net.terminate_agent(i);
    }

    /// The PID of node `i`'s Patroni, while it runs.
    #[must_use]
    pub fn patroni_pid(&self, i: usize) -> Option<i32> {
        self.members[i]
            .patroni
            .as_ref()
            .and_then(|p| p.0.as_ref())
            .and_then(|c| i32::try_from(c.id()).ok())
    }

    /// SIGKILL node `i`'s Patroni (reaped); nothing when it does not run.
    pub fn kill_patroni(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].patroni.take() {
            p.kill();
        }
    }

    /// Whether node `i`'s Patroni process runs.
    #[must_use]
    pub fn patroni_running(&mut self, i: usize) -> bool {
        let exited = self.members[i].patroni.as_mut().is_none_or(Proc::exited);
        if exited {
            self.members[i].patroni = None;
        }
        !exited
    }

    /// The directory of node `i`'s PostgreSQL unix socket (and of Patroni's files).
    #[must_use]
    pub fn socket_dir(&self, i: usize) -> &Path {
        &self.members[i].dir
    }

    /// The PID of node `i`'s postmaster (`postmaster.pid`, checked against the process's command
    /// line: a postgres process of this data directory).
    #[must_use]
    pub fn postmaster_pid(&self, i: usize) -> Option<i32> {
        let data = &self.members[i].data;
        let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let data = data.to_str()?;
        (cmdline.contains("postgres") && cmdline.contains(data)).then_some(pid)
    }

    /// SIGKILL node `i`'s postmaster (a PostgreSQL crash; its children notice and exit).
    /// Returns the PID killed.
    ///
    /// # Panics
    /// When no postmaster runs there.
    pub fn crash_postgres(&self, i: usize) -> i32 {
        let pid = self
            .postmaster_pid(i)
            .unwrap_or_else(|| panic!("no postmaster runs on node {i}"));
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        pid
    }

    /// SIGKILL node `i`'s postmaster and every one of its processes at once (stopped first, so
    /// none of them can act in between): the database dies as with the machine.
    pub fn kill_postgres(&self, i: usize) {
        let Some(pid) = self.postmaster_pid(i) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
        let children = children_of(pid);
        for &child in &children {
            let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        wait_gone(pid, Duration::from_secs(10));
        for child in children {
            wait_gone(child, Duration::from_secs(10));
        }
    }

    /// Stop node `i`'s PostgreSQL at once (SIGQUIT: immediate shutdown), for the cleanup.
    fn quit_postgres(&self, i: usize) {
        if let Some(pid) = self.postmaster_pid(i) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
            if !wait_gone(pid, Duration::from_secs(10)) {
                self.kill_postgres(i);
            }
        }
    }

    /// The leader key's value (read from etcd, from the client's namespace); `None` when absent
    /// or when etcd does not answer within 2 s.
    #[must_use]
    pub fn leader(&self) -> Option<String> {
        if self.manager.v2() {
            // etcd's v2 API; `quorum=true` makes the read linearizable, as the v3 get is.
            let addr = SocketAddr::from((self.net.etcd_host.ip, ETCD_PORT));
            let path = format!("/v2/keys{}?quorum=true", self.net.key);
            return self.net.client.ns.run_in(move || {
                let (code, body) = http_get(addr, &path, Duration::from_secs(2)).ok()?;
                let json: serde_json::Value = serde_json::from_str(&body).ok()?;
                (code == 200)
                    .then(|| json["node"]["value"].as_str().map(str::to_owned))
                    .flatten()
            });
        }
        let key = self.net.key.clone();
        let endpoints = self.net.endpoints.clone();
        self.net.client.ns.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                tokio::time::timeout(Duration::from_secs(2), async move {
                    let mut client = etcd_client::Client::connect(endpoints, None).await.ok()?;
                    let resp = client.get(key, None).await.ok()?;
                    resp.kvs()
                        .first()
                        .and_then(|kv| kv.value_str().ok().map(str::to_owned))
                })
                .await
                .ok()
                .flatten()
            })
        })
    }

    /// Index of the member called `name`.
    ///
    /// # Panics
    /// When there is none.
    #[must_use]
    pub fn index_of(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    /// `GET /patroni` on node `i`, from the client's namespace.
    #[must_use]
    pub fn rest(&self, i: usize) -> Option<RestStatus> {
        let addr = SocketAddr::from((self.members[i].ip, REST_PORT));
        let api = self.rest_api.clone();
        self.net
            .client
            .ns
            .run_in(move || api.get(addr, "/patroni", REST_TIMEOUT).ok())
            .and_then(|(code, body)| RestStatus::parse(code, &body))
    }

    /// Whether node `i`'s Patroni reports a running primary.
    #[must_use]
    pub fn is_running_primary(&self, i: usize) -> bool {
        self.rest(i).is_some_and(|s| s.is_running_primary())
    }

    /// Healthy: the leader key names a member whose Patroni reports a running primary that
    /// streams to every other member, and every other member's Patroni reports a running replica.
    #[must_use]
    pub fn healthy(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let Some(l) = self.members.iter().position(|m| m.name == leader) else {
            return false;
        };
        let Some(status) = self.rest(l) else {
            return false;
        };
        if !status.is_running_primary() {
            return false;
        }
        (0..self.members.len()).filter(|&i| i != l).all(|i| {
            status.streaming.contains(&self.members[i].name)
                && self
                    .rest(i)
                    .is_some_and(|s| s.role == "replica" && s.state == "running")
        })
    }

    /// Wait until [`Self::healthy`].
    ///
    /// # Panics
    /// After `limit`, with the Patroni logs' tails.
    pub fn wait_healthy(&self, limit: Duration) {
        self.wait_for(
            limit,
            "the cluster is healthy (leader streams to a replica)",
            |c| c.healthy(),
        );
    }

    /// Poll `cond` every 200 ms until it holds.
    ///
    /// # Panics
    /// After `limit`, with the logs' tails.
    pub fn wait_for(&self, limit: Duration, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting until {what}\n{}",
                self.logs_tail(40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Like [`Self::wait_for`], but returns whether `cond` held instead of panicking.
    #[must_use]
    pub fn poll_until(&self, limit: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Create [`TABLE`] on node1 (the bootstrap leader), through its unix socket.
    fn create_table(&self) {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (seq bigint NOT NULL, node text NOT NULL, \
             at timestamptz NOT NULL DEFAULT clock_timestamp())"
        );
        self.psql(0, &sql);
    }

    /// Run `sql` with psql on node `i`'s unix socket as `postgres`; its output (unaligned, tuples
    /// only).
    ///
    /// # Panics
    /// When psql fails.
    pub fn psql(&self, i: usize, sql: &str) -> String {
        let dir = self.members[i].dir.to_str().expect("utf-8 path");
        let port = PG_PORT.to_string();
        self.dir.run(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-h",
                dir,
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        )
    }

    /// `patronictl -c <node1's config> args...`, run in the client's namespace (it reaches etcd
    /// and every REST API from there). Its output; panics when it fails.
    ///
    /// # Panics
    /// When patronictl fails.
    pub fn patronictl(&self, args: &[&str]) -> String {
        let config = self.members[0].config.to_str().expect("utf-8 path");
        let mut all = vec!["-c", config];
        all.extend_from_slice(args);
        let out = self.net.client.ns.exec(PATRONICTL, &all);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "patronictl {args:?} failed: {text}");
        text
    }

    /// Block node `i`'s traffic to and from etcd silently (nft drop, no ICMP), in its namespace.
    pub fn drop_etcd_traffic(&self, i: usize) {
        let etcd = self.net.etcd_host.ip;
        let rules = format!(
            "table inet viptest {{\n chain out {{ type filter hook output priority 0; ip daddr {etcd} drop; }}\n \
             chain in {{ type filter hook input priority 0; ip saddr {etcd} drop; }}\n}}\n"
        );
        nft(&self.net.nodes[i].host.ns, &rules);
    }

    /// Undo [`Self::drop_etcd_traffic`].
    pub fn restore_etcd_traffic(&self, i: usize) {
        self.net.nodes[i]
            .host
            .ns
            .exec_ok(NFT, &["delete", "table", "inet", "viptest"]);
    }

    /// Make node `i`'s Patroni REST API unreachable from its own namespace (where its agent asks
    /// it), silently: connections from there to the REST port are dropped (nft, no reset). The
    /// other member and the client still reach it.
    pub fn block_local_rest(&self, i: usize) {
        let rules = format!(
            "table inet viprest {{\n chain out {{ type filter hook output priority 0; tcp dport {REST_PORT} drop; }}\n}}\n"
        );
        nft(&self.net.nodes[i].host.ns, &rules);
    }

    /// Undo [`Self::block_local_rest`].
    pub fn unblock_local_rest(&self, i: usize) {
        self.net.nodes[i]
            .host
            .ns
            .exec_ok(NFT, &["delete", "table", "inet", "viprest"]);
    }

    /// Make etcd unreachable from every DB node (the client still reaches it): the etcd host
    /// silently drops every packet from the nodes' addresses.
    pub fn etcd_outage(&self) {
        let sources: Vec<String> = self.members.iter().map(|m| m.ip.to_string()).collect();
        let rules = format!(
            "table inet viptest {{\n chain in {{ type filter hook input priority 0; ip saddr {{ {} }} drop; }}\n}}\n",
            sources.join(", ")
        );
        nft(&self.net.etcd_host.ns, &rules);
    }

    /// Undo [`Self::etcd_outage`].
    pub fn end_etcd_outage(&self) {
        self.net
            .etcd_host
            .ns
            .exec_ok(NFT, &["delete", "table", "inet", "viptest"]);
    }

    /// The last `lines` lines of every agent's and Patroni's log.
    #[must_use]
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, node) in self.net.nodes.iter().enumerate() {
            let _ = writeln!(
                out,
                "--- agent {} ({}), last {lines} lines:\n{}",
                node.name,
                node.log.display(),
                tail(&self.net.log(i), lines)
            );
        }
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let _ = writeln!(
                out,
                "--- patroni {} ({}), last {lines} lines:\n{}",
                m.name,
                m.log.display(),
                tail(&text, lines)
            );
        }
        out
    }

    /// The agents' logs' tails only.
    #[must_use]
    pub fn agent_logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, node) in self.net.nodes.iter().enumerate() {
            let _ = writeln!(
                out,
                "--- agent {}, last {lines} lines:\n{}",
                node.name,
                tail(&self.net.log(i), lines)
            );
        }
        out
    }

    /// Start the observers (client, etcd watch, REST polls).
    #[must_use]
    pub fn observe(&self) -> Observers {
        Observers::start(self)
    }

    /// The rows of [`TABLE`] on node `i` (its unix socket): `(seq, node)`.
    #[must_use]
    pub fn rows(&self, i: usize) -> Vec<(u64, String)> {
        self.psql(i, &format!("SELECT seq, node FROM {TABLE}"))
            .lines()
            .filter_map(|l| {
                let (seq, node) = l.split_once('|')?;
                Some((seq.parse().ok()?, node.to_owned()))
            })
            .collect()
    }

    /// Time since [`Self::epoch`].
    #[must_use]
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_patroni(i);
        }
        for i in 0..self.members.len() {
            self.quit_postgres(i);
        }
        let pins = Path::new(vip_agent::dataplane::DEFAULT_PIN_ROOT);
        for i in 0..self.net.nodes.len() {
            self.net.kill_agent(i);
            let _ = vip_agent::dataplane::detach(pins, &self.net.nodes[i].host.ifname);
            crate::interrupt::path_removed(&pins.join(&self.net.nodes[i].host.ifname));
        }
        if !self.pin_root_existed {
            // Only when empty: never another agent's pins.
            let _ = std::fs::remove_dir(pins);
        }
        if std::env::var_os("VIP_KEEP_LOGS").is_some() {
            // Keep the directory (Patroni's and PostgreSQL's logs) for a look afterwards.
            let keep = std::env::temp_dir().join(format!("{}-logs", self.scope));
            let _ = Command::new("cp")
                .arg("-a")
                .arg(self.dir.path())
                .arg(&keep)
                .status();
            eprintln!("kept the Patroni directory as {}", keep.display());
        }
    }
}

/// Load `rules` with `nft -f -` inside `ns`.
fn nft(ns: &crate::NetNs, rules: &str) {
    let mut child = ns
        .command(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nft");
    child
        .stdin
        .take()
        .expect("nft stdin")
        .write_all(rules.as_bytes())
        .expect("write the nft rules");
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft -f failed: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A plain HTTP/1.0 GET (Patroni's API closes the connection after the answer): status code and
/// body.
///
/// # Errors
/// On a connection error, a timeout, or an answer that is not HTTP.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    status_and_body(&raw)
}

/// The status code and body of a raw HTTP/1.0 answer.
fn status_and_body(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_owned()))
}

/// How the test asks Patroni's REST API: plain HTTP/1.0, or the same over TLS verified by the
/// test CA (rustls' blocking API; Python's ssl ends without close_notify, read as the end).
#[derive(Clone, Debug)]
pub enum RestApi {
    Plain,
    Https {
        ca: PathBuf,
        config: Arc<rustls::ClientConfig>,
    },
}

impl RestApi {
    /// https, trusting only the CA certificate in `ca` (PEM).
    ///
    /// # Panics
    /// When the file holds no usable certificate.
    #[must_use]
    pub fn https(ca: &Path) -> Self {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("read the test CA") {
            roots
                .add(cert.expect("a PEM certificate"))
                .expect("add the test CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self::Https {
            ca: ca.to_path_buf(),
            config: Arc::new(config),
        }
    }

    /// The CA file, for https.
    #[must_use]
    pub fn ca_file(&self) -> Option<&Path> {
        match self {
            Self::Plain => None,
            Self::Https { ca, .. } => Some(ca),
        }
    }

    /// `GET path` on `addr`: status code and body.
    ///
    /// # Errors
    /// On a connection or TLS error, a timeout, or an answer that is not HTTP.
    pub fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> std::io::Result<(u16, String)> {
        let Self::Https { config, .. } = self else {
            return http_get(addr, path, timeout);
        };
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let connection = rustls::ClientConnection::new(Arc::clone(config), name)
            .map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(connection, stream);
        write!(tls, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e),
        }
        status_and_body(&raw)
    }
}

/// A test CA in `dir/pki` (`ca.crt`, `ca.key`): the CA file is returned.
fn make_ca(dir: &Path, installation: &Installation) -> PathBuf {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).expect("pki directory");
    let user = installation.user();
    chown(&pki, Some(user.uid), Some(user.gid)).expect("chown the pki directory");
    openssl(
        &pki,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=vip-tests patroni CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    pki.join("ca.crt")
}

/// A server (and client) certificate for member `name` at `ip`, signed by [`make_ca`]'s CA,
/// readable by Patroni's user only: `(certificate, key)`.
fn make_leaf(
    dir: &Path,
    name: &str,
    ip: Ipv4Addr,
    installation: &Installation,
) -> (PathBuf, PathBuf) {
    let pki = dir.join("pki");
    let ext = pki.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=IP:{ip}\nbasicConstraints=critical,CA:FALSE\n\
             extendedKeyUsage=serverAuth,clientAuth\n"
        ),
    )
    .expect("write the extension file");
    let (key, csr, cert) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    openssl(
        &pki,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    openssl(
        &pki,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &cert,
        ],
    );
    let user = installation.user();
    for file in [&key, &cert] {
        let path = pki.join(file);
        chown(&path, Some(user.uid), Some(user.gid)).expect("chown a certificate file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod a certificate file");
    }
    (pki.join(cert), pki.join(key))
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `GET /patroni` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestStatus {
    pub code: u16,
    pub role: String,
    pub state: String,
    /// `failsafe_mode_is_active` (absent: false).
    pub failsafe_active: bool,
    /// Members that stream from this one (`replication[].application_name` with state
    /// `streaming`).
    pub streaming: Vec<String>,
}

impl RestStatus {
    fn parse(code: u16, body: &str) -> Option<Self> {
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        let text = |k: &str| json[k].as_str().unwrap_or("").to_owned();
        let streaming = json["replication"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter(|e| e["state"].as_str() == Some("streaming"))
                    .filter_map(|e| e["application_name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            code,
            role: text("role"),
            state: text("state"),
            failsafe_active: json["failsafe_mode_is_active"].as_bool().unwrap_or(false),
            streaming,
        })
    }

    /// `role` master (Patroni 3.0) or primary, `state` running.
    #[must_use]
    pub fn is_running_primary(&self) -> bool {
        matches!(self.role.as_str(), "master" | "primary") && self.state == "running"
    }

    fn short(&self) -> String {
        format!(
            "{} {} {}{}",
            self.code,
            self.role,
            self.state,
            if self.failsafe_active {
                " failsafe_active"
            } else {
                ""
            }
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Observers

/// What one client attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No PostgreSQL session: the TCP connect failed or timed out (or a timeout before the
    /// server's first answer).
    ConnectFailed(String),
    /// A server answered the startup with an error: SQLSTATE and message (e.g. 57P03 "the
    /// database system is starting up" / "shutting down").
    Rejected(String),
    /// A session, but the query failed (e.g. the server shut down under it).
    QueryFailed { node: Option<String>, error: String },
    /// `pg_is_in_recovery()` was true, or the `INSERT` failed as read-only (SQLSTATE 25006).
    InRecovery { node: String },
    /// `pg_is_in_recovery()` false; the `INSERT` committed (`Ok((sent, acked))`) or failed.
    ReadWrite {
        node: String,
        insert: Result<(Duration, Duration), String>,
    },
}

/// One client attempt through the VIP.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The client's sequence number (also the row's `seq`).
    pub seq: u64,
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
}

impl Attempt {
    /// The node whose committed write this is, with the commit's acknowledgement time.
    #[must_use]
    pub fn committed(&self) -> Option<(&str, Duration)> {
        match &self.outcome {
            Outcome::ReadWrite {
                node,
                insert: Ok((_, acked)),
            } => Some((node, *acked)),
            _ => None,
        }
    }
}

/// A change under `/service/<scope>/` as the client's etcd watch saw it.
#[derive(Clone, Debug)]
pub struct KeyEvent {
    /// When the watch delivered it (the write happened before).
    pub at: Duration,
    pub revision: i64,
    /// `None`: deleted (or expired).
    pub value: Option<String>,
    /// Relative to `/service/<scope>/`: `leader`, `members/node1`, `failsafe`, ...
    pub key: String,
}

/// A change of one node's `GET /patroni` answer (`status` `Err`: no answer).
#[derive(Clone, Debug)]
pub struct RestSample {
    pub at: Duration,
    pub node: usize,
    pub status: Result<RestStatus, String>,
}

#[derive(Debug, Default)]
struct Logs {
    attempts: Vec<Attempt>,
    keys: Vec<KeyEvent>,
    rest: Vec<RestSample>,
}

/// The client, the etcd watch and the REST polls, running on their own threads in the client's
/// namespace until dropped.
#[derive(Debug)]
pub struct Observers {
    logs: Arc<Mutex<Logs>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    epoch: Instant,
}

/// Spawn a thread that enters the network namespace at `ns` and runs `f`.
fn spawn_in(ns: PathBuf, name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let file = File::open(&ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
            setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {}: {e}", ns.display()));
            f();
        })
        .expect("spawn an observer thread")
}

impl Observers {
    fn start(c: &PatroniCluster) -> Self {
        let logs = Arc::new(Mutex::new(Logs::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let ns = c.net.client.ns.path();
        let epoch = c.epoch;
        let mut threads = Vec::new();
        {
            let (logs, stop, vip) = (Arc::clone(&logs), Arc::clone(&stop), c.net.vip);
            threads.push(spawn_in(ns.clone(), "vip-client", move || {
                run_client(vip, epoch, &logs, &stop);
            }));
        }
        {
            let (logs, stop) = (Arc::clone(&logs), Arc::clone(&stop));
            let endpoints = c.net.endpoints.clone();
            let prefix = format!("/service/{}/", c.scope);
            let etcd = SocketAddr::from((c.net.etcd_host.ip, ETCD_PORT));
            let v2 = c.manager.v2();
            threads.push(spawn_in(ns.clone(), "etcd-watch", move || {
                if v2 {
                    run_watch_v2(etcd, &prefix, epoch, &logs, &stop);
                } else {
                    run_watch(&endpoints, &prefix, epoch, &logs, &stop);
                }
            }));
        }
        {
            let (logs, stop) = (Arc::clone(&logs), Arc::clone(&stop));
            let addrs: Vec<SocketAddr> = c
                .members
                .iter()
                .map(|m| SocketAddr::from((m.ip, REST_PORT)))
                .collect();
            let api = c.rest_api.clone();
            threads.push(spawn_in(ns, "rest-poll", move || {
                run_rest(&api, &addrs, epoch, &logs, &stop);
            }));
        }
        Self {
            logs,
            stop,
            threads,
            epoch,
        }
    }

    /// Time since the cluster's epoch.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Every attempt that finished so far, in start order.
    #[must_use]
    pub fn attempts(&self) -> Vec<Attempt> {
        let mut a = self.lock().attempts.clone();
        a.sort_by_key(|a| a.seq);
        a
    }

    /// Every key event so far.
    #[must_use]
    pub fn keys(&self) -> Vec<KeyEvent> {
        self.lock().keys.clone()
    }

    /// Every REST change so far.
    #[must_use]
    pub fn rest(&self) -> Vec<RestSample> {
        self.lock().rest.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Logs> {
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The first leader-key event after `after` that names `name` (its watch time).
    #[must_use]
    pub fn leader_put_after(&self, after: Duration, name: &str) -> Option<Duration> {
        self.lock()
            .keys
            .iter()
            .find(|e| e.key == "leader" && e.at >= after && e.value.as_deref() == Some(name))
            .map(|e| e.at)
    }

    /// The current value of `key` (relative to the scope) as the watch saw it last.
    #[must_use]
    pub fn key_value(&self, key: &str) -> Option<String> {
        self.lock()
            .keys
            .iter()
            .rev()
            .find(|e| e.key == key)
            .and_then(|e| e.value.clone())
    }

    /// The first committed write on `node` that started at or after `after`: its start.
    #[must_use]
    pub fn first_commit_after(&self, after: Duration, node: &str) -> Option<Duration> {
        self.lock()
            .attempts
            .iter()
            .filter(|a| a.start >= after && a.committed().is_some_and(|(n, _)| n == node))
            .map(|a| a.start)
            .min()
    }

    /// Wait until the client has a committed write on `node` that started at or after `after`;
    /// whether it came within `limit`.
    #[must_use]
    pub fn wait_commit(&self, after: Duration, node: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.first_commit_after(after, node).is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Observers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn push<T>(logs: &Mutex<Logs>, f: impl FnOnce(&mut Logs) -> T) -> T {
    let mut guard = logs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

/// The client: a new connection through the VIP every [`ATTEMPT_PERIOD`], each on its own task
/// (a slow attempt does not delay the next one).
fn run_client(vip: Ipv4Addr, epoch: Instant, logs: &Arc<Mutex<Logs>>, stop: &AtomicBool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(ATTEMPT_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            seq += 1;
            let logs = Arc::clone(logs);
            tasks.spawn(async move {
                let attempt = attempt(vip, seq, epoch).await;
                push(&logs, |l| l.attempts.push(attempt));
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    });
}

/// What an attempt had seen when it was cut short.
#[derive(Default)]
struct Progress {
    connected: bool,
    node: Option<String>,
    recovery: Option<bool>,
    insert_sent: Option<Duration>,
}

async fn attempt(vip: Ipv4Addr, seq: u64, epoch: Instant) -> Attempt {
    let start = epoch.elapsed();
    let mut progress = Progress::default();
    let outcome = match tokio::time::timeout(
        ATTEMPT_LIMIT,
        attempt_inner(vip, seq, epoch, &mut progress),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(_) => match progress {
            Progress {
                recovery: Some(true),
                node: Some(node),
                ..
            } => Outcome::InRecovery { node },
            Progress {
                recovery: Some(false),
                node: Some(node),
                insert_sent,
                ..
            } => Outcome::ReadWrite {
                node,
                insert: Err(format!(
                    "no answer to the INSERT within the attempt's {ATTEMPT_LIMIT:?} (sent at {:?})",
                    insert_sent
                )),
            },
            Progress {
                connected: true,
                node,
                ..
            } => Outcome::QueryFailed {
                node,
                error: format!("timeout after {ATTEMPT_LIMIT:?}"),
            },
            Progress { .. } => Outcome::ConnectFailed(format!("timeout after {ATTEMPT_LIMIT:?}")),
        },
    };
    Attempt {
        seq,
        start,
        end: epoch.elapsed(),
        outcome,
    }
}

async fn attempt_inner(
    vip: Ipv4Addr,
    seq: u64,
    epoch: Instant,
    progress: &mut Progress,
) -> Outcome {
    let mut config = tokio_postgres::Config::new();
    config
        .host(vip.to_string())
        .port(PG_PORT)
        .user("postgres")
        .dbname("postgres")
        .application_name("vip-client")
        .connect_timeout(CONNECT_TIMEOUT);
    let (client, connection) = match config.connect(tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(e) => {
            return match e.as_db_error() {
                Some(db) => Outcome::Rejected(format!("{} {}", db.code().code(), db.message())),
                None => Outcome::ConnectFailed(e.to_string()),
            };
        }
    };
    progress.connected = true;
    let conn = tokio::spawn(async move {
        let _ = connection.await;
    });
    let outcome = session(&client, seq, epoch, progress).await;
    drop(client);
    let _ = conn.await;
    outcome
}

async fn session(
    client: &tokio_postgres::Client,
    seq: u64,
    epoch: Instant,
    progress: &mut Progress,
) -> Outcome {
    use tokio_postgres::SimpleQueryMessage;
    let rows = match client
        .simple_query("SELECT pg_is_in_recovery(), current_setting('vip_test.node')")
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            return Outcome::QueryFailed {
                node: None,
                error: error_text(&e),
            };
        }
    };
    let Some((recovery, node)) = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some((row.get(0)? == "t", row.get(1)?.to_owned())),
        _ => None,
    }) else {
        return Outcome::QueryFailed {
            node: None,
            error: "no row".to_owned(),
        };
    };
    progress.node = Some(node.clone());
    progress.recovery = Some(recovery);
    if recovery {
        return Outcome::InRecovery { node };
    }
    let sent = epoch.elapsed();
    progress.insert_sent = Some(sent);
    let insert =
        format!("INSERT INTO {TABLE} (seq, node) VALUES ({seq}, current_setting('vip_test.node'))");
    match client.simple_query(&insert).await {
        Ok(_) => Outcome::ReadWrite {
            node,
            insert: Ok((sent, epoch.elapsed())),
        },
        Err(e)
            if e.as_db_error().is_some_and(|db| {
                db.code() == &tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION
            }) =>
        {
            Outcome::InRecovery { node }
        }
        Err(e) => Outcome::ReadWrite {
            node,
            insert: Err(error_text(&e)),
        },
    }
}

fn error_text(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(
        || e.to_string(),
        |db| format!("{} {}", db.code().code(), db.message()),
    )
}

/// The etcd watch on the scope's prefix (a GET first, then a watch from its revision + 1;
/// reconnects after errors).
fn run_watch(
    endpoints: &[String],
    prefix: &str,
    epoch: Instant,
    logs: &Arc<Mutex<Logs>>,
    stop: &AtomicBool,
) {
    use etcd_client::{EventType, GetOptions, WatchOptions};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("watch runtime");
    let record = |revision: i64, key: &[u8], value: Option<&[u8]>| {
        let key = String::from_utf8_lossy(key);
        let key = key.strip_prefix(prefix).unwrap_or(&key).to_owned();
        let value = value.map(|v| String::from_utf8_lossy(v).into_owned());
        push(logs, |l| {
            l.keys.push(KeyEvent {
                at: epoch.elapsed(),
                revision,
                value,
                key,
            });
        });
    };
    rt.block_on(async {
        while !stop.load(Ordering::Relaxed) {
            let session = async {
                let mut client = etcd_client::Client::connect(endpoints, None).await?;
                let resp = client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await?;
                let revision = resp
                    .header()
                    .map_or(0, etcd_client::ResponseHeader::revision);
                for kv in resp.kvs() {
                    record(kv.mod_revision(), kv.key(), Some(kv.value()));
                }
                let mut stream = client
                    .watch(
                        prefix,
                        Some(
                            WatchOptions::new()
                                .with_prefix()
                                .with_start_revision(revision + 1),
                        ),
                    )
                    .await?;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(msg) =
                        tokio::time::timeout(Duration::from_millis(100), stream.message()).await
                    else {
                        continue;
                    };
                    let Some(resp) = msg? else {
                        break;
                    };
                    for event in resp.events() {
                        let Some(kv) = event.kv() else {
                            continue;
                        };
                        let value = match event.event_type() {
                            EventType::Put => Some(kv.value()),
                            EventType::Delete => None,
                        };
                        record(kv.mod_revision(), kv.key(), value);
                    }
                }
                Ok::<(), etcd_client::Error>(())
            };
            if let Err(e) = session.await {
                eprintln!("etcd watch: {e}; reconnecting");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
}

/// The etcd v2 watch on the scope's directory (Patroni's `etcd:` DCS): a recursive GET first, then
/// one long-polling `wait=true&recursive=true` request per event from the index after it (etcd
/// keeps the last 1000 events, so none is missed between two requests); starts over with a new
/// GET when etcd has dropped the index or a request fails.
fn run_watch_v2(
    etcd: SocketAddr,
    prefix: &str,
    epoch: Instant,
    logs: &Arc<Mutex<Logs>>,
    stop: &AtomicBool,
) {
    let dir = prefix.trim_end_matches('/');
    let record = |node: &serde_json::Value, deleted: bool| {
        if node["dir"].as_bool() == Some(true) {
            return;
        }
        let Some(key) = node["key"].as_str() else {
            return;
        };
        let key = key.strip_prefix(prefix).unwrap_or(key).to_owned();
        let value = (!deleted)
            .then(|| node["value"].as_str().map(str::to_owned))
            .flatten();
        let revision = node["modifiedIndex"].as_i64().unwrap_or(0);
        push(logs, |l| {
            l.keys.push(KeyEvent {
                at: epoch.elapsed(),
                revision,
                value,
                key,
            });
        });
    };
    while !stop.load(Ordering::Relaxed) {
        let snapshot = http_get_until(
            etcd,
            &format!("{V2_KEYS}{dir}?recursive=true&quorum=true"),
            stop,
        );
        let Ok((code, head, body)) = snapshot else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let Some(index) = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("x-etcd-index")
                .then(|| value.trim().parse::<i64>().ok())
                .flatten()
        }) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if code == 200
            && let Ok(json) = serde_json::from_str::<serde_json::Value>(&body)
        {
            let mut stack = vec![json["node"].clone()];
            while let Some(node) = stack.pop() {
                if let Some(children) = node["nodes"].as_array() {
                    stack.extend(children.iter().cloned());
                }
                record(&node, false);
            }
        }
        let mut next = index + 1;
        while !stop.load(Ordering::Relaxed) {
            let path = format!("{V2_KEYS}{dir}?recursive=true&wait=true&waitIndex={next}");
            let Ok((200, _, body)) = http_get_until(etcd, &path, stop) else {
                // The index was cleared (400, error 401), or the request failed: start over.
                break;
            };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&body) else {
                break;
            };
            let deleted = matches!(
                event["action"].as_str(),
                Some("delete" | "expire" | "compareAndDelete")
            );
            record(&event["node"], deleted);
            let Some(index) = event["node"]["modifiedIndex"].as_i64() else {
                break;
            };
            next = index + 1;
        }
    }
}

/// etcd's v2 keyspace.
const V2_KEYS: &str = "/v2/keys";

/// A plain HTTP/1.0 GET whose answer may take long (an etcd v2 watch): waits until the server
/// closes the connection or `stop` is set (then `Interrupted`). Status code, head and body.
fn http_get_until(
    addr: SocketAddr,
    path: &str,
    stop: &AtomicBool,
) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, REST_TIMEOUT)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    stream.set_write_timeout(Some(REST_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return Err(std::io::ErrorKind::Interrupted.into());
                }
            }
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, head.to_owned(), body.to_owned()))
}

/// `GET /patroni` on each address every [`REST_PERIOD`]; records changes only.
fn run_rest(
    api: &RestApi,
    addrs: &[SocketAddr],
    epoch: Instant,
    logs: &Arc<Mutex<Logs>>,
    stop: &AtomicBool,
) {
    let mut last: Vec<Option<Result<RestStatus, String>>> = vec![None; addrs.len()];
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        for (node, addr) in addrs.iter().enumerate() {
            let status = match api.get(*addr, "/patroni", REST_TIMEOUT) {
                Ok((code, body)) => RestStatus::parse(code, &body)
                    .ok_or_else(|| format!("{code} with a body that is not Patroni's JSON")),
                Err(e) => Err(e.kind().to_string()),
            };
            // Streaming lists change with every replica restart; they are not what we watch.
            let key = status.map(|s| RestStatus {
                streaming: Vec::new(),
                ..s
            });
            if last[node].as_ref() != Some(&key) {
                push(logs, |l| {
                    l.rest.push(RestSample {
                        at: epoch.elapsed(),
                        node,
                        status: key.clone(),
                    });
                });
                last[node] = Some(key);
            }
        }
        std::thread::sleep(REST_PERIOD.saturating_sub(round.elapsed()));
    }
}

// ---------------------------------------------------------------------------------------------
// Checks

/// What a scenario expects of the VIP while it runs.
#[derive(Clone, Debug)]
pub struct Expect {
    /// Every attempt made inside this window (started at or after its start, finished by its
    /// end) must commit a write on this node (Patroni failsafe: the primary stays reachable
    /// read-write through the etcd outage). An attempt still in flight at the end is left to the
    /// other checks: what the agent does once etcd answers again (the lease expired during the
    /// outage, so etcd reports the key deleted) is a failover, not the outage.
    pub reachable_rw: Option<(Duration, Duration, String)>,
    /// After the final leader key of the window (or after `trigger` when the key did not
    /// change), the VIP must give a committed write on the key's holder within this bound.
    pub rw_again_within: Duration,
}

/// The counts and verdict of one scenario.
#[derive(Debug)]
pub struct Verdict {
    pub name: String,
    /// One line: the counts.
    pub summary: String,
    /// What went wrong (empty: passed).
    pub failures: Vec<String>,
    /// A timeline of the window: key events, REST changes, runs of attempt outcomes.
    pub timeline: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rel(t: Duration, zero: Duration) -> String {
    let (sign, d) = if t >= zero {
        ('+', t - zero)
    } else {
        ('-', zero - t)
    };
    format!("{sign}{:.3}s", d.as_secs_f64())
}

fn class(o: &Outcome) -> String {
    match o {
        Outcome::ConnectFailed(e) => format!("connect failed ({})", short_error(e)),
        Outcome::Rejected(e) => format!("rejected ({e})"),
        Outcome::QueryFailed { node, error } => format!(
            "query failed on {} ({})",
            node.as_deref().unwrap_or("?"),
            short_error(error)
        ),
        Outcome::InRecovery { node } => format!("IN RECOVERY on {node}"),
        Outcome::ReadWrite {
            node,
            insert: Ok(_),
        } => format!("read-write on {node}, committed"),
        Outcome::ReadWrite {
            node,
            insert: Err(e),
        } => format!("read-write on {node}, INSERT failed ({})", short_error(e)),
    }
}

fn short_error(e: &str) -> &str {
    e.split(':').next().unwrap_or(e).trim()
}

/// Check one scenario's window `[from, to)` (attempts by start time; key events by watch time),
/// `trigger` the moment the fault or command started.
#[must_use]
pub fn check_window(
    name: &str,
    obs: &Observers,
    members: &[String],
    (from, trigger, to): (Duration, Duration, Duration),
    expect: &Expect,
) -> Verdict {
    let attempts: Vec<Attempt> = obs
        .attempts()
        .into_iter()
        .filter(|a| a.start >= from && a.start < to)
        .collect();
    let keys = obs.keys();
    let rest = obs.rest();
    let mut failures = Vec::new();

    // 1. Connections that reached a server in recovery.
    let in_recovery: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::InRecovery { .. }))
        .collect();
    if !in_recovery.is_empty() {
        let first = in_recovery[0];
        failures.push(format!(
            "{} connection(s) through the VIP reached a server in recovery (first at {}: {})",
            in_recovery.len(),
            rel(first.start, trigger),
            class(&first.outcome)
        ));
    }

    // 2. Writes committed on a node after the leader key named another node: the leader key's
    // value as last seen before each commit's acknowledgement.
    let leader_events: Vec<&KeyEvent> = keys.iter().filter(|e| e.key == "leader").collect();
    let mut late_writes = 0usize;
    let mut first_late = None;
    for a in &attempts {
        let Some((node, acked)) = a.committed() else {
            continue;
        };
        let named = leader_events
            .iter()
            .rev()
            .find(|e| e.at < acked && e.value.is_some())
            .and_then(|e| e.value.as_deref());
        if let Some(named) = named
            && named != node
        {
            late_writes += 1;
            first_late.get_or_insert((a.seq, acked, node.to_owned(), named.to_owned()));
        }
    }
    if let Some((seq, acked, node, named)) = &first_late {
        failures.push(format!(
            "{late_writes} write(s) committed on a node after the leader key named another one \
             (first: seq {seq} acknowledged by {node} at {} while the key named {named})",
            rel(*acked, trigger)
        ));
    }

    // 3. Read-write again.
    let final_key = leader_events
        .iter()
        .rev()
        .find(|e| e.at < to && e.value.is_some());
    let key_change = leader_events
        .iter()
        .rfind(|e| e.at >= trigger && e.at < to && e.value.is_some());
    let holder = final_key.and_then(|e| e.value.clone());
    let since = key_change.map_or(trigger, |e| e.at);
    let first_rw = holder.as_deref().and_then(|h| {
        attempts
            .iter()
            .filter(|a| a.start >= since && a.committed().is_some_and(|(n, _)| n == h))
            .map(|a| a.start)
            .min()
    });
    match (&holder, first_rw) {
        (Some(_), Some(t)) if t - since <= expect.rw_again_within => {}
        (Some(h), Some(t)) => failures.push(format!(
            "the VIP gave the first committed write on the leader {h} {:.0} ms after {}, \
             more than the bound of {:?}",
            ms(t - since),
            if key_change.is_some() {
                "its key was written"
            } else {
                "the trigger"
            },
            expect.rw_again_within
        )),
        (Some(h), None) => failures.push(format!(
            "the VIP gave no committed write on the leader {h} after {} (window ends {})",
            rel(since, trigger),
            rel(to, trigger)
        )),
        (None, _) => failures.push("no leader key at the end of the window".to_owned()),
    }

    // 4. Reachable read-write through a window (failsafe).
    let mut reachable = String::new();
    if let Some((a_from, a_to, node)) = &expect.reachable_rw {
        let inside: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.start >= *a_from && a.end <= *a_to)
            .collect();
        let bad: Vec<&&Attempt> = inside
            .iter()
            .filter(|a| a.committed().is_none_or(|(n, _)| n != node))
            .collect();
        let _ = write!(
            reachable,
            ", outage {:.1}s: {}/{} committed on {node}",
            (*a_to - *a_from).as_secs_f64(),
            inside.len() - bad.len(),
            inside.len()
        );
        if let Some(first) = bad.first() {
            let longest = longest_gap(&inside, node);
            failures.push(format!(
                "{} of {} connections during the etcd outage ({} .. {}) did not commit on the \
                 primary {node} (first at {}: {}; longest run without a commit {:.0} ms)",
                bad.len(),
                inside.len(),
                rel(*a_from, trigger),
                rel(*a_to, trigger),
                rel(first.start, trigger),
                class(&first.outcome),
                ms(longest)
            ));
        }
    }

    let count = |f: &dyn Fn(&Outcome) -> bool| attempts.iter().filter(|a| f(&a.outcome)).count();
    let committed = count(&|o| matches!(o, Outcome::ReadWrite { insert: Ok(_), .. }));
    let connect_failed = count(&|o| matches!(o, Outcome::ConnectFailed(_)));
    let rejected = count(&|o| matches!(o, Outcome::Rejected(_)));
    let other = attempts.len() - committed - connect_failed - rejected - in_recovery.len();
    let per_node: Vec<String> = members
        .iter()
        .map(|m| {
            let n = attempts
                .iter()
                .filter(|a| a.committed().is_some_and(|(n, _)| n == m))
                .count();
            format!("{m} {n}")
        })
        .collect();
    let all: Vec<&Attempt> = attempts.iter().collect();
    let longest = holder
        .as_deref()
        .map_or(Duration::ZERO, |h| longest_gap(&all, h));
    let mut durations: Vec<Duration> = attempts
        .iter()
        .filter(|a| a.committed().is_some())
        .map(|a| a.end - a.start)
        .collect();
    durations.sort();
    let median = durations
        .get(durations.len() / 2)
        .copied()
        .unwrap_or_default();
    let summary = format!(
        "{name}: attempts {} | in recovery {} | writes on a node the key no longer named {late_writes} | \
         committed {committed} ({}) | connect failed {connect_failed} | rejected by server {rejected} | \
         other {other} | first commit on {} {} after {} | longest gap without a commit {:.0} ms | \
         median committed attempt {:.1} ms{reachable}",
        attempts.len(),
        in_recovery.len(),
        per_node.join(", "),
        holder.as_deref().unwrap_or("?"),
        first_rw.map_or_else(
            || "never".to_owned(),
            |t| format!("{:.0} ms", ms(t - since))
        ),
        if key_change.is_some() {
            "its key"
        } else {
            "the trigger"
        },
        ms(longest),
        ms(median),
    );
    let timeline = timeline(&attempts, &keys, &rest, members, (from, trigger, to));
    Verdict {
        name: name.to_owned(),
        summary,
        failures,
        timeline,
    }
}

/// The longest run of attempts (by start) without a commit on `node`, among `attempts`.
fn longest_gap(attempts: &[&Attempt], node: &str) -> Duration {
    let mut longest = Duration::ZERO;
    let mut run_start: Option<Duration> = None;
    for a in attempts {
        if a.committed().is_some_and(|(n, _)| n == node) {
            if let Some(s) = run_start.take() {
                longest = longest.max(a.start - s);
            }
        } else if run_start.is_none() {
            run_start = Some(a.start);
        }
    }
    if let (Some(s), Some(last)) = (run_start, attempts.last()) {
        longest = longest.max(last.start - s);
    }
    longest
}

/// Key events, REST changes and runs of equal attempt outcomes, in time order.
fn timeline(
    attempts: &[Attempt],
    keys: &[KeyEvent],
    rest: &[RestSample],
    members: &[String],
    (from, trigger, to): (Duration, Duration, Duration),
) -> String {
    let mut lines: Vec<(Duration, String)> = Vec::new();
    // A member key is rewritten every loop: show it only when its role or state changes.
    let mut member_state: std::collections::HashMap<&str, String> =
        std::collections::HashMap::new();
    for e in keys.iter().filter(|e| e.at < to) {
        if e.key.starts_with("members/") {
            let state = e.value.as_deref().map_or_else(
                || "DELETED".to_owned(),
                |v| {
                    let json: serde_json::Value = serde_json::from_str(v).unwrap_or_default();
                    format!(
                        "role={} state={}",
                        json["role"].as_str().unwrap_or("?"),
                        json["state"].as_str().unwrap_or("?")
                    )
                },
            );
            let changed = member_state.get(e.key.as_str()) != Some(&state);
            member_state.insert(&e.key, state.clone());
            if changed && e.at >= from {
                lines.push((e.at, format!("etcd  {} rev {} {state}", e.key, e.revision)));
            }
            continue;
        }
        if e.at < from || e.key == "optime/leader" || e.key == "status" {
            // Rewritten every loop: only the leader, failsafe, config and history matter here.
            continue;
        }
        lines.push((
            e.at,
            format!(
                "etcd  {} rev {} {}",
                e.key,
                e.revision,
                e.value.as_deref().map_or_else(
                    || "DELETED".to_owned(),
                    |v| format!("= {}", truncate(v, 120))
                )
            ),
        ));
    }
    for s in rest.iter().filter(|s| s.at >= from && s.at < to) {
        let name = members.get(s.node).map_or("?", String::as_str);
        lines.push((
            s.at,
            format!(
                "rest  {name} /patroni: {}",
                s.status
                    .as_ref()
                    .map_or_else(|e| format!("no answer ({e})"), RestStatus::short)
            ),
        ));
    }
    let mut run: Option<(Duration, Duration, String, usize)> = None;
    for a in attempts {
        let c = class(&a.outcome);
        match &mut run {
            Some((_, last, class, n)) if *class == c => {
                *last = a.start;
                *n += 1;
            }
            _ => {
                if let Some((first, last, class, n)) = run.take() {
                    lines.push((
                        first,
                        format!("vip   {class} x{n} until {}", rel(last, trigger)),
                    ));
                }
                run = Some((a.start, a.start, c, 1));
            }
        }
    }
    if let Some((first, last, class, n)) = run {
        lines.push((
            first,
            format!("vip   {class} x{n} until {}", rel(last, trigger)),
        ));
    }
    lines.sort_by_key(|(t, _)| *t);
    lines
        .into_iter()
        .map(|(t, l)| format!("  {:>9} {l}", rel(t, trigger)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_owned()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}
