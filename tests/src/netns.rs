//! Network namespaces, veth pairs and bridges, all with unique names and removed on drop.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

use crate::{format_mac, parse_mac};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, at most 15 bytes (an interface name's limit):
/// `<prefix><pid><counter>` in hex; `prefix` should be at most 5 bytes.
#[must_use]
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("{prefix}{:x}x{n:x}", std::process::id());
    name.truncate(15);
    name
}

/// Run a command, panicking with the command line and its stderr when it fails.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace (`ip netns add`), deleted on drop together with the processes started in it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// A new namespace with `lo` up. `tag` (<= 5 bytes) helps reading `ip netns list`.
    ///
    /// # Panics
    /// When `ip netns add` fails.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let name = unique_name(&format!("vt{tag}"));
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        crate::interrupt::namespace_created(&name);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A command that runs inside the namespace: `nsenter --net=<path> program ...` (network
    /// namespace only; mounts, including bpffs, stay the host's).
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Run `program args` inside the namespace and return its output.
    ///
    /// # Panics
    /// When the program cannot be started.
    #[must_use]
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = self.command(program);
        cmd.args(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// Run `program args` inside the namespace; panic with its stderr unless it succeeds.
    ///
    /// # Panics
    /// When the program fails.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        run_ok(self.command(program).args(args))
    }

    /// `ip -n <ns> args...`, which must succeed.
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Start a background process inside the namespace; it is killed (SIGKILL, by PID) when the
    /// returned guard drops. stdout and stderr go to `log` when given.
    ///
    /// # Panics
    /// When the process cannot be started.
    #[must_use]
    pub fn spawn(&self, program: &str, args: &[&str], log: Option<&File>) -> ChildGuard {
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::null());
        if let Some(log) = log {
            let out = log.try_clone().expect("clone log file handle");
            let err = log.try_clone().expect("clone log file handle");
            cmd.stdout(out).stderr(err);
        } else {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        ChildGuard { child: Some(child) }
    }

    /// Run `f` on a new thread that has entered this namespace (network only), and return its result.
    /// Raw sockets, netlink and XDP attach done there act inside the namespace.
    ///
    /// # Panics
    /// When the namespace cannot be entered or `f` panics.
    pub fn run_in<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = File::open(&path)
                        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Add `cidr` (e.g. `10.77.1.1/24`) to `ifname` and bring it up.
    pub fn add_addr(&self, ifname: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", ifname]);
        self.ip(&["link", "set", ifname, "up"]);
    }

    /// The MAC of `ifname`.
    ///
    /// # Panics
    /// When the interface does not exist.
    #[must_use]
    pub fn mac(&self, ifname: &str) -> [u8; 6] {
        let json = self.ip(&["-j", "link", "show", "dev", ifname]);
        let links: serde_json::Value =
            serde_json::from_str(&json).expect("ip -j link output is JSON");
        links[0]["address"]
            .as_str()
            .and_then(parse_mac)
            .unwrap_or_else(|| panic!("{ifname} in {} has no MAC: {json}", self.name))
    }

    /// The id of the ingress program on `ifname`, if any: the XDP program, or else the first
    /// program of its tcx ingress chain (vip-agent's `tc` attach mode, which `auto` picks on veth).
    #[must_use]
    pub fn xdp_prog_id(&self, ifname: &str) -> Option<u64> {
        let json = self.ip(&["-j", "-d", "link", "show", "dev", ifname]);
        let links: serde_json::Value =
            serde_json::from_str(&json).expect("ip -j link output is JSON");
        let xdp = &links[0]["xdp"];
        xdp["prog"]["id"]
            .as_u64()
            .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
            .or_else(|| self.tcx_ingress_prog_id(ifname))
    }

    /// The id of the first program in `ifname`'s tcx ingress chain, if any (none on a kernel
    /// without tcx).
    #[must_use]
    pub fn tcx_ingress_prog_id(&self, ifname: &str) -> Option<u64> {
        use aya::programs::{SchedClassifier, TcAttachType};
        self.run_in(|| {
            SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
                .ok()
                .and_then(|(_, programs)| programs.first().map(|p| u64::from(p.id())))
        })
    }

    /// The link-layer address the neighbour table holds for `ip` on `ifname`, if any.
    #[must_use]
    pub fn neighbour(&self, ifname: &str, ip: &str) -> Option<[u8; 6]> {
        let json = self.ip(&["-j", "neigh", "show", "dev", ifname, "to", ip]);
        let entries: serde_json::Value = serde_json::from_str(&json).ok()?;
        entries
            .as_array()?
            .iter()
            .find_map(|e| e["lladdr"].as_str().and_then(parse_mac))
    }

    /// A permanent neighbour entry: `ip` is at `mac` (so traffic goes out without ARP).
    pub fn static_neighbour(&self, ifname: &str, ip: &str, mac: &[u8; 6]) {
        self.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            &format_mac(mac),
            "nud",
            "permanent",
            "dev",
            ifname,
        ]);
    }

    /// Forget every neighbour entry on `ifname`.
    pub fn flush_neighbours(&self, ifname: &str) {
        self.ip(&["neigh", "flush", "dev", ifname]);
    }

    /// Send `count` ICMP echo requests to `ip` (200 ms apart) and return how many replies came back.
    #[must_use]
    pub fn ping(&self, ip: &str, count: u32) -> u32 {
        let out = self.exec(
            "ping",
            &[
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                ip,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        // "5 packets transmitted, 3 received, ..."
        text.lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let result = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        crate::interrupt::namespace_deleted(&self.name);
        if let Err(e) = result
            && !std::thread::panicking()
        {
            eprintln!(
                "warning: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

/// A process started in a namespace; killed by PID and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// The process id.
    ///
    /// # Panics
    /// After the process was reaped.
    #[must_use]
    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("process still owned");
        i32::try_from(child.id()).expect("pid fits i32")
    }

    /// The process id while the process is still owned (not yet reaped).
    #[must_use]
    pub fn running_pid(&self) -> Option<i32> {
        let child = self.child.as_ref()?;
        i32::try_from(child.id()).ok()
    }

    /// Send `signal` to the process; nothing once it was reaped (its PID may belong to another
    /// process by then).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.running_pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Wait for the process to exit (up to `timeout`); its exit status, or `None` on timeout.
    #[must_use]
    pub fn wait_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A veth pair with one end in `a` and one in `b`, both up. Returns (name in `a`, name in `b`).
#[must_use]
pub fn veth_pair(a: &NetNs, b: &NetNs) -> (String, String) {
    let (name_a, name_b) = (unique_name("va"), unique_name("vb"));
    a.ip(&[
        "link",
        "add",
        &name_a,
        "type",
        "veth",
        "peer",
        "name",
        &name_b,
        "netns",
        b.name(),
    ]);
    a.ip(&["link", "set", &name_a, "up"]);
    b.ip(&["link", "set", &name_b, "up"]);
    (name_a, name_b)
}

/// A Linux bridge inside a namespace (the "switch"), to which other namespaces are plugged.
#[derive(Debug)]
pub struct Bridge {
    name: String,
}

impl Bridge {
    /// A bridge in `switch`, up, without STP or forwarding delay.
    #[must_use]
    pub fn new(switch: &NetNs) -> Self {
        let name = unique_name("br");
        switch.ip(&[
            "link",
            "add",
            &name,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ]);
        switch.ip(&["link", "set", &name, "up"]);
        Self { name }
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Plug `host` into the bridge with a new veth pair; returns the interface name inside `host`.
    #[must_use]
    pub fn plug(&self, switch: &NetNs, host: &NetNs) -> String {
        let (port, inside) = veth_pair(switch, host);
        switch.ip(&["link", "set", &port, "master", &self.name]);
        inside
    }
}
