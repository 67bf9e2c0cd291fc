//! A throwaway single-member etcd on 127.0.0.1 (free ports, private data dir), killed by PID and
//! removed on drop.

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique scratch directory under the system temp dir; removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "vip-agent-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).expect("create scratch dir");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Server-side TLS of the test etcd.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA (`--client-cert-auth`).
    pub client_ca: Option<PathBuf>,
}

/// Client-side material the admin client uses against a TLS etcd.
#[derive(Clone)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Etcd {
    child: Option<Child>,
    dir: TempDir,
    pub client_port: u16,
    peer_port: u16,
    tls: Option<ServerTls>,
    admin_tls: Option<ClientTls>,
    starts: u32,
}

/// A port nothing listens on right now (bound to 0 and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

impl Etcd {
    /// Starts a plain-http etcd and waits until it serves.
    pub fn start() -> Self {
        Self::start_with(None, None)
    }

    pub fn start_with(tls: Option<ServerTls>, admin_tls: Option<ClientTls>) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let mut e = Self::prepare(tls.clone(), admin_tls.clone());
            match e.try_start() {
                Ok(()) => return e,
                // Port taken between picking and binding: pick again.
                Err(log) => last = log,
            }
        }
        panic!("etcd did not start; last log:\n{last}");
    }

    /// Ports and directory chosen, not started ([`Self::restart`] starts it).
    pub fn prepare(tls: Option<ServerTls>, admin_tls: Option<ClientTls>) -> Self {
        Self {
            child: None,
            dir: TempDir::new("etcd"),
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            admin_tls,
            starts: 0,
        }
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn try_start(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log_path = self.dir.path().join(format!("etcd-{}.log", self.starts));
        let log = fs::File::create(&log_path).expect("create etcd log");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("/usr/bin/etcd");
        cmd.arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup etcd log"))
            .stderr(log);
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()));
            if let Some(ca) = &tls.client_ca {
                cmd.arg("--client-cert-auth")
                    .arg(format!("--trusted-ca-file={}", ca.display()));
            }
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the
        // parent: if the test process dies without running Drop, etcd dies with it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = cmd.spawn().expect("spawn /usr/bin/etcd");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            // zap logs "serving client traffic [in]securely" once the member has a leader and
            // has published itself, i.e. when it is ready.
            if text.contains("serving client traffic") {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(_)) = child.try_wait() {
                return Err(text);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timeout; log:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills etcd (SIGKILL, like a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir.
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..3 {
            match self.try_start() {
                Ok(()) => return,
                Err(log) => last = log,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("etcd did not restart; log:\n{last}");
    }

    /// An admin client (test side, not the code under test).
    pub async fn client(&self) -> Client {
        let mut opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(3));
        if let Some(t) = &self.admin_tls {
            opts = opts.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(fs::read(&t.ca).expect("read CA")))
                    .identity(Identity::from_pem(
                        fs::read(&t.cert).expect("read client cert"),
                        fs::read(&t.key).expect("read client key"),
                    )),
            );
        }
        Client::connect([self.endpoint()], Some(opts))
            .await
            .expect("admin client")
    }

    /// An admin client authenticated as `user`.
    pub async fn client_as(&self, user: &str, password: &str) -> Client {
        let opts = ConnectOptions::new().with_user(user, password);
        Client::connect([self.endpoint()], Some(opts))
            .await
            .expect("admin client")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
