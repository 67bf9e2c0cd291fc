//! `dcs-type: repmgr` end to end: the real vip-agent binary on two nodes of one L2 segment, real
//! XDP, a raw-socket ARP prober on the client, a real PostgreSQL primary (run as `postgres` from a
//! temporary directory, unix socket only, which both agents reach from their namespaces), and
//! repmgr's events handed over by `vip-agent event`, as `event_notification_command` runs it.
//!
//! Nothing answers before a promoting event; the promoted node answers; a switchover (the old
//! primary's `node_rejoin`, the new one's `standby_switchover`) moves the VIP; a connection-loss
//! event changes nothing; PostgreSQL stopped silences the primary once its last check's validity
//! runs out. Subnet 43.
//!
//! Needs root and Debian's postgresql (`cargo xtask setup`); skips loudly otherwise, fails under
//! CI. Every process is stopped by PID, the namespaces and directories removed.

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, User, chown},
};
use vip_tests::{cluster::Cluster, require_privileges};

const SUBNET: u8 = 43;
const PROBE: Duration = Duration::from_millis(150);

/// The newest `/usr/lib/postgresql/<major>/bin`.
fn postgres_bin() -> Option<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin)
}

/// A postmaster started by this test: fast shutdown (SIGINT) by PID on drop, SIGKILL if it lingers.
struct Postmaster(Child);

impl Drop for Postmaster {
    fn drop(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.0.id()).expect("pid"));
        let _ = kill(pid, Signal::SIGINT);
        for _ in 0..500 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory owned by postgres, removed on drop.
struct PgDir(PathBuf);

impl Drop for PgDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pg_command(bin: &Path, user: &User, dir: &Path, program: &str) -> Command {
    let mut cmd = Command::new(bin.join(program));
    cmd.uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null());
    cmd
}

/// initdb and start a primary; its connection string.
fn start_postgres(bin: &Path, user: &User, dir: &Path, port: u16) -> (Postmaster, String) {
    let data = dir.join("data");
    let out = pg_command(bin, user, dir, "initdb")
        .args(["-D", data.to_str().expect("utf-8"), "-U", "postgres"])
        .args(["--auth=trust", "-N"])
        .output()
        .expect("initdb");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::File::create(dir.join("postgres.log")).expect("log");
    let err = log.try_clone().expect("log");
    let child = pg_command(bin, user, dir, "postgres")
        .args(["-D", data.to_str().expect("utf-8"), "-p", &port.to_string()])
        .args(["-k", dir.to_str().expect("utf-8")])
        .args(["-c", "listen_addresses=", "-c", "fsync=off"])
        .stdout(log)
        .stderr(err)
        .spawn()
        .expect("start postgres");
    let dsn = format!(
        "host={} port={port} user=postgres dbname=postgres",
        dir.display()
    );
    (Postmaster(child), dsn)
}

/// Wait until PostgreSQL accepts connections (`pg_isready`).
fn wait_postgres(bin: &Path, user: &User, dir: &Path, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = pg_command(bin, user, dir, "pg_isready")
            .args(["-h", dir.to_str().expect("utf-8"), "-p", &port.to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "PostgreSQL did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `vip-agent event` for node `i`'s agent (its socket), as repmgr would run it.
fn event(c: &Cluster, i: usize, node_id: u32, name: &str) -> Output {
    let socket = c.dir.join(format!("repmgr{i}.sock"));
    let out = Command::new(c.agent_bin())
        .args(["event", "--socket", socket.to_str().expect("utf-8")])
        .args([
            &node_id.to_string(),
            name,
            "1",
            "2026-12-02 00:00:00+00",
            "test",
        ])
        .output()
        .expect("run vip-agent event");
    assert!(
        out.status.success(),
        "event {name} to node {i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Poll `cond` every 20 ms until it holds; panic with `what` after `limit`.
fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn repmgr_events_move_the_vip_and_postgres_confirms_it() {
    let test = "repmgr_events_move_the_vip_and_postgres_confirms_it";
    if !require_privileges(test) {
        return;
    }
    let (Ok(Some(user)), Some(bin)) = (User::from_name("postgres"), postgres_bin()) else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "{test}: PostgreSQL is not installed; may not skip under CI"
        );
        eprintln!("SKIPPED {test}: PostgreSQL is not installed (cargo xtask setup)");
        return;
    };
    let pg_dir = PgDir(std::env::temp_dir().join(format!("vip-repmgr-e2e-{}", std::process::id())));
    std::fs::create_dir_all(&pg_dir.0).expect("pg dir");
    // Traversable by the agents (root) and owned by postgres.
    std::fs::set_permissions(&pg_dir.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    chown(&pg_dir.0, Some(user.uid), Some(user.gid)).expect("chown");
    let port = 30_000 + u16::try_from(std::process::id() % 20_000).expect("port");
    let (postmaster, dsn) = start_postgres(&bin, &user, &pg_dir.0, port);
    wait_postgres(&bin, &user, &pg_dir.0, port);
    let mut postmaster = Some(postmaster);

    let mut c = Cluster::new(SUBNET, 2, &vip_tests::agent_binary(), "");
    for i in 0..2 {
        let node = &c.nodes[i];
        // Both agents ask the same PostgreSQL: what is tested is that only the events decide
        // which node answers, and that PostgreSQL's state can still silence it.
        let config = format!(
            "ip: {}\nnetmask: 24\ninterface: {}\ndcs-type: repmgr\nrepmgr-node-id: {}\n\
             postgres-dsn: \"{dsn}\"\nrepmgr-check-interval: 250ms\nrepmgr-socket: {}\n\
             repmgr-state-file: {}\npin-path: {}\n",
            c.vip,
            node.host.ifname,
            i + 1,
            c.dir.join(format!("repmgr{i}.sock")).display(),
            c.dir.join(format!("repmgr{i}.state")).display(),
            c.pins.display(),
        );
        std::fs::write(&node.config, config).expect("write config");
    }
    c.start_agent(0);
    c.start_agent(1);
    c.wait_running();
    let (mac0, mac1) = (c.nodes[0].host.mac, c.nodes[1].host.mac);

    // A primary PostgreSQL alone is not a role: nobody answers.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.probe(PROBE),
        Vec::<[u8; 6]>::new(),
        "answer before any event"
    );

    // Node 1 promoted: it answers, alone.
    event(&c, 0, 1, "standby_promote");
    eventually(Duration::from_secs(10), "node 1 answers", || {
        c.probe(PROBE) == [mac0]
    });
    // Connection-loss events and other nodes' events change nothing.
    event(&c, 0, 1, "repmgrd_upstream_disconnect");
    event(&c, 1, 1, "standby_promote");
    for _ in 0..5 {
        assert_eq!(c.probe(PROBE), [mac0], "only node 1 answers");
    }

    // Switchover: the old primary rejoins as a standby, the new one reports the switchover.
    event(&c, 0, 1, "node_rejoin");
    assert_eq!(
        c.probe(PROBE),
        Vec::<[u8; 6]>::new(),
        "node 1 fenced at once"
    );
    event(&c, 1, 2, "standby_switchover");
    eventually(Duration::from_secs(10), "node 2 answers", || {
        c.probe(PROBE) == [mac1]
    });

    // PostgreSQL stopped: no more renewals; node 2 goes silent by itself.
    drop(postmaster.take());
    eventually(Duration::from_secs(10), "node 2 goes silent", || {
        c.probe(PROBE).is_empty()
    });
    for _ in 0..5 {
        assert!(c.probe(PROBE).is_empty(), "answer without PostgreSQL");
    }
    assert!(c.log(1).contains("PostgreSQL check failed"), "{}", c.log(1));

    let status = c.terminate_agent(1).expect("agent 2 exits");
    assert!(status.success(), "{status:?}");
    assert!(
        !c.dir.join("repmgr1.sock").exists(),
        "the socket is removed at shutdown"
    );
}
