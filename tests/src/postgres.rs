//! A throwaway local PostgreSQL for the tests and the promotion benchmark: one harness instead of a
//! copy per test (the gate, the repmgr source, repmgr end to end, `bench_rw`).
//!
//! * [`Installation`]: Debian's binaries (the newest `/usr/lib/postgresql/<major>/bin`, which
//!   `cargo xtask setup` installs as postgresql-15) and the `postgres` user;
//!   [`require_postgres`] finds it or skips loudly (a failure under CI);
//! * [`PgDir`]: a temporary directory of its own (unique per process and call), owned by
//!   `postgres`, that holds the data directories, the unix sockets and the logs; every program
//!   runs there as `postgres` with an empty environment (`initdb`, `pg_basebackup`, `pg_ctl
//!   promote`, `pg_isready`);
//! * [`Postmaster`]: a server this code started; on drop it is stopped by its PID (never by
//!   name), and the directory is removed only once the last postmaster started from it is gone;
//! * [`connect`] and [`in_recovery`]: the client side, for tokio tests.
//!
//! Servers listen on a unix socket in the directory only, unless [`Start::listen`] says otherwise
//! (the benchmark's standby listens on every address of its network namespace), so a port only
//! names a socket file inside this run's own directory: [`PgDir::port`] hands out distinct ones.

use std::{
    fs::File,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, User, chown},
};
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::REQUIRE_PRIVILEGES;

/// How long a server may take to accept connections (generous: the CPU may be shared).
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// The newest `/usr/lib/postgresql/<major>/bin` (Debian's layout).
#[must_use]
pub fn postgres_bin() -> Option<PathBuf> {
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

/// Whether PostgreSQL can be run here (its binaries and the `postgres` user exist).
#[must_use]
pub fn postgres_available() -> bool {
    Installation::find().is_some()
}

/// PostgreSQL's binaries and the user its servers run as.
#[derive(Clone, Debug)]
pub struct Installation {
    bin: PathBuf,
    user: User,
}

impl Installation {
    /// The binaries ([`postgres_bin`]) and the `postgres` user, when both exist.
    #[must_use]
    pub fn find() -> Option<Self> {
        let bin = postgres_bin()?;
        let user = User::from_name("postgres").ok().flatten()?;
        Some(Self { bin, user })
    }

    /// The directory of the binaries.
    #[must_use]
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The `postgres` user.
    #[must_use]
    pub fn user(&self) -> &User {
        &self.user
    }
}

/// Whether the PostgreSQL test `test` can run: root (to run PostgreSQL as `postgres`) and an
/// [`Installation`].
///
/// Otherwise it prints a loud `SKIPPED` line and returns `None`, unless `CI=true` or
/// [`REQUIRE_PRIVILEGES`]`=1`, where it panics: under CI a skipped test is a failure. Tests that
/// also need network namespaces call [`crate::require_privileges`] first.
///
/// # Panics
/// Under CI, when root or PostgreSQL is missing.
#[must_use]
pub fn require_postgres(test: &str) -> Option<Installation> {
    let reason = if !nix::unistd::geteuid().is_root() {
        "needs root to run PostgreSQL as the postgres user"
    } else if let Some(installation) = Installation::find() {
        return Some(installation);
    } else {
        "PostgreSQL is not installed (cargo xtask setup installs postgresql-15)"
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var(REQUIRE_PRIVILEGES).is_ok_and(|v| v == "1");
    assert!(
        !ci,
        "{test}: {reason}; privileged tests may not skip under CI"
    );
    eprintln!("SKIPPED {test}: {reason}");
    None
}

/// Removes the directory on drop; shared by the [`PgDir`] and every [`Postmaster`] started from
/// it, so it goes only after the last of them (no server ever loses its data under it).
#[derive(Debug)]
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        crate::interrupt::path_removed(&self.0);
    }
}

/// Tells the directories of one process apart.
static DIRS: AtomicU32 = AtomicU32::new(0);

/// A temporary directory owned by `postgres` (mode 0700) for data directories, sockets and logs,
/// removed once it and every [`Postmaster`] started from it are dropped.
#[derive(Debug)]
pub struct PgDir {
    installation: Installation,
    dir: PathBuf,
    next_port: AtomicU16,
    guard: Arc<DirGuard>,
}

impl PgDir {
    /// A fresh directory `<temp dir>/<prefix>-<pid>-<n>`.
    ///
    /// # Panics
    /// When the directory cannot be created or given to `postgres`.
    #[must_use]
    pub fn new(installation: Installation, prefix: &str) -> Self {
        Self::new_in(installation, &std::env::temp_dir(), prefix)
    }

    /// A fresh directory on tmpfs (`/dev/shm` when there is one, else the temp dir): no disk
    /// in the timings of the benchmark.
    ///
    /// # Panics
    /// As [`Self::new`].
    #[must_use]
    pub fn on_tmpfs(installation: Installation, prefix: &str) -> Self {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        Self::new_in(installation, &root, prefix)
    }

    fn new_in(installation: Installation, root: &Path, prefix: &str) -> Self {
        let pid = std::process::id();
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("{prefix}-{pid}-{n}"));
        // A leftover of an earlier process with the same PID is nobody's any more.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        crate::interrupt::path_created(&dir);
        let guard = Arc::new(DirGuard(dir.clone()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
        chown(
            &dir,
            Some(installation.user.uid),
            Some(installation.user.gid),
        )
        .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", dir.display()));
        // Unix sockets only, in this directory: the port need only differ between its servers.
        // Derived from the PID all the same, so two runs' servers never share a number.
        let base = 20_000 + u16::try_from(pid % 20_000).expect("below 20000");
        Self {
            installation,
            dir,
            next_port: AtomicU16::new(base),
            guard,
        }
    }

    /// Let other users (agents that do not run as root) traverse the directory to the sockets.
    ///
    /// # Panics
    /// When the mode cannot be changed.
    pub fn allow_traversal(&self) {
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", self.dir.display()));
    }

    /// The directory (also the unix socket directory, `host=` in a DSN).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The binaries and the user.
    #[must_use]
    pub fn installation(&self) -> &Installation {
        &self.installation
    }

    /// A port not yet handed out for this directory.
    ///
    /// # Panics
    /// After 65535 - 40000 ports, which no test needs.
    #[must_use]
    pub fn port(&self) -> u16 {
        let port = self.next_port.fetch_add(1, Ordering::Relaxed);
        assert!(port < u16::MAX, "out of ports");
        port
    }

    /// The connection string of the server on `port`: its unix socket here, as `postgres`.
    #[must_use]
    pub fn dsn(&self, port: u16) -> String {
        format!(
            "host={} port={port} user=postgres dbname=postgres",
            self.dir.display()
        )
    }

    /// `program` (a PostgreSQL binary) as `postgres`, in the directory, with an empty environment.
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let user = &self.installation.user;
        let mut cmd = Command::new(self.installation.bin.join(program));
        cmd.uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null());
        cmd
    }

    /// Run `program` with `args` to completion; its standard output.
    ///
    /// # Panics
    /// When it cannot be run or fails (with its output).
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `initdb` of a new data directory: superuser `postgres`, `trust` authentication (every
    /// client is this run's own), no fsync.
    ///
    /// # Panics
    /// When `initdb` fails.
    pub fn initdb(&self, data: &Path) {
        self.run(
            "initdb",
            &["-D", utf8(data), "-U", "postgres", "--auth=trust", "-N"],
        );
    }

    /// A streaming standby of the server on `primary_port`: `pg_basebackup -X stream -R` into
    /// `data` (`-R` writes `standby.signal` and the connection to the primary's socket).
    ///
    /// # Panics
    /// When `pg_basebackup` fails.
    pub fn basebackup(&self, primary_port: u16, data: &Path) {
        let port = primary_port.to_string();
        self.run(
            "pg_basebackup",
            &[
                "-h",
                utf8(&self.dir),
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                utf8(data),
                "-X",
                "stream",
                "-R",
            ],
        );
    }

    /// Make the (stopped) server of `data` start as a standby: `standby.signal`, owned by
    /// `postgres`.
    ///
    /// # Panics
    /// When the file cannot be written or given to `postgres`.
    pub fn mark_standby(&self, data: &Path) {
        let signal = data.join("standby.signal");
        std::fs::write(&signal, "").unwrap_or_else(|e| panic!("write {}: {e}", signal.display()));
        let user = &self.installation.user;
        chown(&signal, Some(user.uid), Some(user.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", signal.display()));
    }

    /// `pg_ctl promote -W`: signals the postmaster and returns at once, as Patroni's promote
    /// does.
    ///
    /// # Panics
    /// When `pg_ctl` fails.
    pub fn promote(&self, data: &Path) {
        self.run("pg_ctl", &["promote", "-W", "-D", utf8(data)]);
    }

    /// `pg_ctl promote -w`: returns once the promotion is complete.
    ///
    /// # Panics
    /// When `pg_ctl` fails or the promotion does not complete within its timeout.
    pub fn promote_and_wait(&self, data: &Path) {
        self.run("pg_ctl", &["promote", "-w", "-D", utf8(data)]);
    }

    /// Start the server of `data` on `port` (unix socket here only; SIGINT on drop). It may not
    /// accept connections yet: see [`Self::wait_ready`] and [`connect`].
    ///
    /// # Panics
    /// When it cannot be started.
    #[must_use]
    pub fn start(&self, data: &Path, port: u16) -> Postmaster {
        self.start_with(data, port, &Start::default())
    }

    /// Start the server of `data` on `port` as `how` says. Its output goes to `<port>.log` here
    /// (appended: a restart keeps the earlier run's lines).
    ///
    /// # Panics
    /// When it cannot be started.
    #[must_use]
    pub fn start_with(&self, data: &Path, port: u16, how: &Start<'_>) -> Postmaster {
        let log_path = self.dir.join(format!("{port}.log"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let err = log.try_clone().expect("clone the log file handle");
        let port_arg = port.to_string();
        let listen = format!("listen_addresses={}", how.listen);
        let server_args = [
            "-D",
            utf8(data),
            "-p",
            &port_arg,
            "-k",
            utf8(&self.dir),
            "-c",
            &listen,
            "-c",
            "fsync=off",
        ];
        let mut cmd = if let Some(ns) = how.netns {
            // nsenter execs the server after setns and setuid: the child's PID is the
            // postmaster's, which is what the guard signals.
            let user = &self.installation.user;
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", ns.display()))
                .arg(format!("--setuid={}", user.uid))
                .arg(format!("--setgid={}", user.gid))
                .arg("--")
                .arg(self.installation.bin.join("postgres"))
                .current_dir(&self.dir)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .stdin(Stdio::null());
            cmd
        } else {
            self.command("postgres")
        };
        let child = cmd
            .args(server_args)
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start postgres -D {}: {e}", data.display()));
        Postmaster {
            child,
            stop: how.stop,
            port,
            log: log_path,
            _dir: Arc::clone(&self.guard),
        }
    }

    /// Wait (up to 30 s) until the server on `port` accepts connections (`pg_isready`), without
    /// an async runtime.
    ///
    /// # Panics
    /// When it does not, with the end of its log.
    pub fn wait_ready(&self, port: u16) {
        let deadline = Instant::now() + STARTUP_LIMIT;
        let port_arg = port.to_string();
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-h", utf8(&self.dir), "-p", &port_arg])
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL on port {port} did not come up within {STARTUP_LIMIT:?}; see {}",
                self.dir.join(format!("{port}.log")).display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How [`PgDir::start_with`] starts a server.
#[derive(Clone, Copy, Debug)]
pub struct Start<'a> {
    /// Start it inside this network namespace (`nsenter --net`), or in the caller's.
    pub netns: Option<&'a Path>,
    /// `listen_addresses`: empty for the unix socket only, `*` for every address.
    pub listen: &'a str,
    /// What stops it on drop: SIGINT (fast shutdown) or SIGQUIT (immediate).
    pub stop: Signal,
}

impl Default for Start<'_> {
    fn default() -> Self {
        Self {
            netns: None,
            listen: "",
            stop: Signal::SIGINT,
        }
    }
}

/// A postmaster started by [`PgDir`]: on drop it gets its stop signal by PID, SIGKILL if it
/// lingers past 10 s, and is reaped; then the directory may go.
#[derive(Debug)]
pub struct Postmaster {
    child: Child,
    stop: Signal,
    port: u16,
    log: PathBuf,
    /// Keeps the directory until this server is gone.
    _dir: Arc<DirGuard>,
}

impl Postmaster {
    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log file.
    #[must_use]
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Postmaster {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), self.stop);
        }
        for _ in 0..1000 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connect to `dsn`, retrying for up to 30 s while the server starts; the connection runs as a
/// task on the current runtime.
///
/// # Panics
/// When the server does not accept a connection in time.
pub async fn connect(dsn: &str) -> tokio_postgres::Client {
    let deadline = tokio::time::Instant::now() + STARTUP_LIMIT;
    loop {
        match tokio_postgres::connect(dsn, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return client;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "PostgreSQL at {dsn} did not come up: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// `SELECT pg_is_in_recovery()`.
///
/// # Errors
/// When the query fails (the server went away, for one).
pub async fn in_recovery(client: &tokio_postgres::Client) -> Result<bool, tokio_postgres::Error> {
    let rows = client.simple_query("SELECT pg_is_in_recovery()").await?;
    Ok(rows.iter().any(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
        _ => false,
    }))
}

/// A path as the `&str` an argument list needs (every path here is built from UTF-8 parts).
///
/// # Panics
/// When it is not UTF-8.
#[must_use]
pub fn utf8(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}
