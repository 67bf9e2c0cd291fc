//! A whole cluster in network namespaces: one L2 segment (a bridge), etcd, N nodes running the real
//! vip-agent binary, and a client. Used by the end-to-end tests and by `cargo xtask demo`.
//!
//! Addresses: `10.77.<subnet>.0/24`; etcd `.2`, client `.9`, node i `.(11 + i)`, VIP `.100`.
//! [`Cluster::with_etcd_members`] runs an etcd cluster of several members instead of one, each in its
//! own namespace on the segment: member k (from 0) at `.(2 + k)`. The agents are then configured
//! with every member's endpoint, and a member can be killed and restarted on its own
//! ([`Cluster::stop_etcd_member`], [`Cluster::start_etcd_member`]).
//! Everything (namespaces, processes, pins, temp files) is removed on drop.

use std::{
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{Bridge, ChildGuard, NetNs, unique_name};

/// One host on the segment.
#[derive(Debug)]
pub struct Host {
    pub ns: NetNs,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A node: a host with a vip-agent whose trigger value is `name`.
#[derive(Debug)]
pub struct Node {
    pub host: Host,
    pub name: String,
    pub config: PathBuf,
    pub log: PathBuf,
    agent: Option<ChildGuard>,
}

/// The cluster. Field order is drop order: agents before etcd before the namespaces.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// One slot per etcd member (member order); `None` while that member is stopped.
    etcd: Vec<Option<ChildGuard>>,
    /// The host of etcd's first member (the only one by default).
    pub etcd_host: Host,
    /// The hosts of the other etcd members (empty with one member).
    pub etcd_peers: Vec<Host>,
    pub client: Host,
    pub vip: Ipv4Addr,
    pub key: String,
    /// The first member's client URL.
    pub endpoint: String,
    /// Every member's client URL, in member order: what the agents and [`Self::etcd`] use.
    pub endpoints: Vec<String>,
    pub pins: PathBuf,
    pub dir: PathBuf,
    /// etcd's data directory: on tmpfs (/dev/shm) when there is one, so fsync costs no disk I/O.
    etcd_data: PathBuf,
    agent_bin: PathBuf,
    _bridge: Bridge,
    /// Holds the bridge; dropped last, which removes every link.
    _switch: NetNs,
}

impl Cluster {
    /// The namespaces every frame between the client and the nodes passes: the client's, the
    /// switch's (the bridge and its ports) and the nodes'.
    pub fn segment_namespaces(&self) -> impl Iterator<Item = &NetNs> {
        [&self.client.ns, &self._switch]
            .into_iter()
            .chain(self.nodes.iter().map(|n| &n.host.ns))
    }

    /// Build the segment, start etcd (data on tmpfs-backed `dir`) and write one agent config per
    /// node (`extra_config` is appended to each). Agents are not started yet.
    ///
    /// # Panics
    /// When any step fails.
    #[must_use]
    pub fn new(subnet: u8, nodes: usize, agent_bin: &Path, extra_config: &str) -> Self {
        Self::with_etcd_members(subnet, nodes, agent_bin, extra_config, 1)
    }

    /// [`Self::new`] with an etcd cluster of `members` members (1 to 5), each in its own namespace
    /// at `10.77.<subnet>.(2 + k)`, and every member's endpoint in each agent's `dcs-endpoints`.
    /// With more than one member it returns once the cluster serves a linearizable read.
    /// Members run etcd's defaults plus `--pre-vote=true` (the default from etcd 3.5 on, while
    /// Debian's 3.4 still defaults to false): a member that rejoins cannot depose a working leader
    /// with a higher term.
    ///
    /// # Panics
    /// When any step fails, or `members` is not 1 to 5.
    #[must_use]
    pub fn with_etcd_members(
        subnet: u8,
        nodes: usize,
        agent_bin: &Path,
        extra_config: &str,
        members: usize,
    ) -> Self {
        assert!(
            (1..=5).contains(&members),
            "an etcd cluster of 1 to 5 members"
        );
        let switch = NetNs::new("sw");
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
        let etcd_host = host("etcd", 2);
        let etcd_peers: Vec<Host> = (1..members)
            .map(|k| host("etcd", 2 + u8::try_from(k).expect("few members")))
            .collect();
        let client = host("cli", 9);
        let dir = std::env::temp_dir().join(unique_name("vipc"));
        std::fs::create_dir_all(&dir).expect("cluster temp dir");
        let pins = PathBuf::from("/sys/fs/bpf").join(unique_name("vipc"));
        let shm = Path::new("/dev/shm");
        let etcd_data = if shm.is_dir() {
            shm.join(unique_name("vipc"))
        } else {
            dir.join("etcd-data")
        };
        for made in [&dir, &pins, &etcd_data] {
            crate::interrupt::path_created(made);
        }
        let vip = Ipv4Addr::new(10, 77, subnet, 100);
        let key = "/service/demo/leader".to_owned();
        let endpoint = format!("http://{}:2379", etcd_host.ip);
        let endpoints: Vec<String> = std::iter::once(endpoint.clone())
            .chain(etcd_peers.iter().map(|h| format!("http://{}:2379", h.ip)))
            .collect();
        let dcs_endpoints = endpoints.join(",");

        let mut cluster_nodes = Vec::new();
        for i in 0..nodes {
            let last = u8::try_from(11 + i).expect("few nodes");
            let h = host("node", last);
            let name = format!("node{}", i + 1);
            let config = dir.join(format!("{name}.yml"));
            std::fs::write(
                &config,
                format!(
                    "ip: {vip}\nnetmask: 24\ninterface: {}\ntrigger-key: {key}\ntrigger-value: {name}\n\
                     dcs-type: etcd\ndcs-endpoints: {dcs_endpoints}\npin-path: {}\n{extra_config}",
                    h.ifname,
                    pins.display()
                ),
            )
            .expect("write agent config");
            cluster_nodes.push(Node {
                host: h,
                log: dir.join(format!("{name}.log")),
                name,
                config,
                agent: None,
            });
        }
        let mut cluster = Self {
            nodes: cluster_nodes,
            etcd: (0..members).map(|_| None).collect(),
            etcd_host,
            etcd_peers,
            client,
            vip,
            key,
            endpoint,
            endpoints,
            pins,
            dir,
            etcd_data,
            agent_bin: agent_bin.to_path_buf(),
            _bridge: bridge,
            _switch: switch,
        };
        cluster.start_etcd();
        if members > 1 {
            assert!(
                cluster.wait_etcd_serving(Duration::from_secs(30)),
                "the etcd cluster does not serve: see {}",
                cluster.dir.display()
            );
        }
        cluster
    }

    /// How many etcd members the cluster has.
    #[must_use]
    pub fn etcd_members(&self) -> usize {
        self.etcd.len()
    }

    /// The host of etcd member `k` (from 0).
    fn etcd_member_host(&self, k: usize) -> &Host {
        k.checked_sub(1)
            .map_or(&self.etcd_host, |p| &self.etcd_peers[p])
    }

    /// The address of etcd member `k` (from 0).
    ///
    /// # Panics
    /// When there is no such member.
    #[must_use]
    pub fn etcd_member_ip(&self, k: usize) -> Ipv4Addr {
        self.etcd_member_host(k).ip
    }

    /// Whether etcd member `k` runs (started and not stopped by [`Self::stop_etcd_member`]).
    #[must_use]
    pub fn etcd_member_running(&self, k: usize) -> bool {
        self.etcd.get(k).is_some_and(Option::is_some)
    }

    /// Member `k`'s log file and command line (name `m<k+1>`, data in `etcd_data/m<k+1>`). One
    /// member keeps the layout of the single-etcd cluster (name `vipc`, data in `etcd_data`, log
    /// `etcd.log`).
    fn etcd_member_command(&self, k: usize) -> (PathBuf, Vec<String>) {
        let url = |ip: Ipv4Addr, port: u16| format!("http://{ip}:{port}");
        let members = self.etcd_members();
        let (name, data, log) = if members == 1 {
            (
                "vipc".to_owned(),
                self.etcd_data.clone(),
                self.dir.join("etcd.log"),
            )
        } else {
            let name = format!("m{}", k + 1);
            let data = self.etcd_data.join(&name);
            let log = self.dir.join(format!("etcd-{name}.log"));
            (name, data, log)
        };
        let ip = self.etcd_member_ip(k);
        let (client_url, peer_url) = (url(ip, 2379), url(ip, 2380));
        let initial_cluster = if members == 1 {
            format!("{name}={peer_url}")
        } else {
            (0..members)
                .map(|m| format!("m{}={}", m + 1, url(self.etcd_member_ip(m), 2380)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={initial_cluster}"),
            "--enable-v2=true".to_owned(),
            "--logger=zap".to_owned(),
        ];
        if members > 1 {
            // The bootstrap flags only matter on the first start: a restarted member has its data.
            args.extend([
                "--initial-cluster-state=new".to_owned(),
                format!(
                    "--initial-cluster-token={}",
                    self.etcd_data
                        .file_name()
                        .map_or_else(|| "vipc".into(), |n| n.to_string_lossy())
                ),
                "--pre-vote=true".to_owned(),
            ]);
        }
        (log, args)
    }

    /// Start etcd member `k` unless it runs (no wait).
    fn spawn_etcd_member(&mut self, k: usize) {
        if self.etcd_member_running(k) {
            return;
        }
        let (log, args) = self.etcd_member_command(k);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("etcd log");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self.etcd_member_host(k).ns.spawn("etcd", &args, Some(&log));
        self.etcd[k] = Some(child);
    }

    /// (Re)start etcd (every member that is not running), keeping the data directories; waits until
    /// each member accepts connections on its client port. A lone member then serves; a cluster
    /// serves once a quorum has elected a leader ([`Self::wait_etcd_serving`]).
    ///
    /// # Panics
    /// When a member does not come up within 20 s.
    pub fn start_etcd(&mut self) {
        for k in 0..self.etcd_members() {
            self.spawn_etcd_member(k);
        }
        for k in 0..self.etcd_members() {
            self.wait_etcd_port(k);
        }
    }

    /// (Re)start etcd member `k` alone, with its data; waits until it accepts connections.
    ///
    /// # Panics
    /// When there is no such member, or it does not come up within 20 s.
    pub fn start_etcd_member(&mut self, k: usize) {
        self.spawn_etcd_member(k);
        self.wait_etcd_port(k);
    }

    /// Kill etcd member `k` (SIGKILL by PID, then reaped); its data stays.
    pub fn stop_etcd_member(&mut self, k: usize) {
        if let Some(slot) = self.etcd.get_mut(k) {
            *slot = None;
        }
    }

    /// Whether a linearizable read succeeds through any member within `within` (tried from the
    /// client host, one member after the other).
    #[must_use]
    pub fn wait_etcd_serving(&self, within: Duration) -> bool {
        let endpoints = self.endpoints.clone();
        let deadline = Instant::now() + within;
        self.client.ns.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let step = Duration::from_secs(1);
            for endpoint in endpoints.iter().cycle() {
                if Instant::now() >= deadline {
                    return false;
                }
                let ok = rt.block_on(async {
                    let opts = etcd_client::ConnectOptions::new()
                        .with_connect_timeout(step)
                        .with_timeout(step);
                    let Ok(Ok(mut client)) = tokio::time::timeout(
                        step,
                        etcd_client::Client::connect([endpoint.as_str()], Some(opts)),
                    )
                    .await
                    else {
                        return false;
                    };
                    matches!(
                        tokio::time::timeout(step, client.get("/", None)).await,
                        Ok(Ok(_))
                    )
                });
                if ok {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
    }

    fn wait_etcd_port(&self, k: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = std::net::SocketAddr::from((self.etcd_member_ip(k), 2379));
        let ready = self.client.ns.run_in(|| {
            while Instant::now() < deadline {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        });
        assert!(
            ready,
            "etcd member {} did not start: see {}",
            k + 1,
            self.etcd_member_command(k).0.display()
        );
    }

    /// Stop etcd (every member, SIGKILL by PID).
    pub fn stop_etcd(&mut self) {
        for slot in &mut self.etcd {
            *slot = None;
        }
    }

    /// Start node `i`'s agent (its log goes to `node.log`).
    ///
    /// # Panics
    /// When the agent cannot be started.
    pub fn start_agent(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = append_log(&node.log);
        let bin = self.agent_bin.to_str().expect("utf-8 path");
        let config = node.config.to_str().expect("utf-8 path");
        node.agent = Some(node.host.ns.spawn(bin, &["--config", config], Some(&log)));
    }

    /// Wait (at most 10 s) until node `i`'s agent process is vip-agent itself (past `nsenter`'s
    /// exec) and holds or handles SIGTERM: from then on a SIGTERM stops it cleanly. Before that
    /// point a SIGTERM ends the process by the default action, as it would any program that has
    /// not reached its `main`; it has done nothing yet (no map, no address), so that is not a
    /// stop the agent could make cleaner. Returns at once when the process has exited.
    ///
    /// # Panics
    /// When the agent is not running, or never gets there within 10 s.
    pub fn wait_agent_handles_sigterm(&self, i: usize) {
        const SIGTERM_BIT: u64 = 1 << (15 - 1);
        self.wait_agent(i, "held or handled SIGTERM", |status| {
            (mask(status, "SigBlk:") | mask(status, "SigCgt:")) & SIGTERM_BIT != 0
        });
    }

    /// Wait (at most 10 s) until node `i`'s agent process is vip-agent itself, past `nsenter`'s
    /// exec, whatever it does with signals. Returns at once when the process has exited.
    ///
    /// # Panics
    /// When the agent is not running, or never gets there within 10 s.
    pub fn wait_agent_exec(&self, i: usize) {
        self.wait_agent(i, "ran", |_| true);
    }

    fn wait_agent(&self, i: usize, what: &str, ready: impl Fn(&str) -> bool) {
        let pid = self.nodes[i]
            .agent
            .as_ref()
            .and_then(crate::netns::ChildGuard::running_pid)
            .expect("node's agent running");
        let bin = std::fs::canonicalize(&self.agent_bin).expect("agent binary path");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return;
            };
            if status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
            {
                return;
            }
            let is_agent = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == bin);
            if is_agent && ready(&status) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {i}'s agent (pid {pid}) never {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Start node `i`'s agent through `wrapper` (a program and its arguments that end by executing
    /// the command after them, e.g. `setpriv --bounding-set=... --`), run inside the node's
    /// namespace: `nsenter --net=<ns> -- <wrapper...> <agent> --config <file>`. Since both `nsenter`
    /// and such wrappers exec, the guard's PID is the agent's.
    ///
    /// # Panics
    /// When `wrapper` is empty or the process cannot be started.
    pub fn start_agent_with(&mut self, i: usize, wrapper: &[&str]) {
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper program");
        let node = &mut self.nodes[i];
        let log = append_log(&node.log);
        let bin = self.agent_bin.to_str().expect("utf-8 path");
        let config = node.config.to_str().expect("utf-8 path");
        let mut args = wrapper_args.to_vec();
        args.extend([bin, "--config", config]);
        node.agent = Some(node.host.ns.spawn(program, &args, Some(&log)));
    }

    /// Plug one more host into the segment: namespace `tag` (<= 5 bytes), address `10.77.<subnet>.<last>`
    /// (pick one the layout leaves free, e.g. `.8`). The caller owns it; dropping it removes it.
    ///
    /// # Panics
    /// When a step fails.
    #[must_use]
    pub fn add_host(&self, tag: &str, last: u8) -> Host {
        let ns = NetNs::new(tag);
        let ifname = self._bridge.plug(&self._switch, &ns);
        let [a, b, c, _] = self.vip.octets();
        let ip = Ipv4Addr::new(a, b, c, last);
        ns.add_addr(&ifname, &format!("{ip}/24"));
        let mac = ns.mac(&ifname);
        Host {
            ns,
            ifname,
            ip,
            mac,
        }
    }

    /// The path of the agent binary the nodes run.
    #[must_use]
    pub fn agent_bin(&self) -> &Path {
        &self.agent_bin
    }

    /// Start vip-manager (the tool vip-agent replaces; Debian's 1.0.2 speaks the etcd v2 API) on
    /// node `i` instead of the agent, polling every `interval_ms`.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn start_vip_manager(&mut self, i: usize, interval_ms: u32) {
        let node = &mut self.nodes[i];
        let log = append_log(&node.log);
        let args = [
            format!("--ip={}", self.vip),
            "--netmask=24".to_owned(),
            format!("--interface={}", node.host.ifname),
            format!("--trigger-key={}", self.key),
            format!("--trigger-value={}", node.name),
            "--dcs-type=etcd".to_owned(),
            format!("--dcs-endpoints={}", self.endpoints.join(",")),
            format!("--interval={interval_ms}"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        node.agent = Some(node.host.ns.spawn("vip-manager", &args, Some(&log)));
    }

    /// The running agent of node `i`.
    ///
    /// # Panics
    /// When it is not running.
    #[must_use]
    pub fn agent(&mut self, i: usize) -> &mut ChildGuard {
        self.nodes[i].agent.as_mut().expect("agent running")
    }

    /// Stop node `i`'s agent with SIGTERM and return its exit status (None: it did not exit in 10 s).
    pub fn terminate_agent(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let mut agent = self.nodes[i].agent.take()?;
        agent.signal(nix::sys::signal::Signal::SIGTERM);
        agent.wait_timeout(Duration::from_secs(10))
    }

    /// Kill node `i`'s agent with SIGKILL, as a crash or the OOM killer would, together with any
    /// processes it forked (keepalived's VRRP child): the process is stopped first so it cannot
    /// restart a child or clean up after it, then its children and itself are killed.
    pub fn kill_agent(&mut self, i: usize) {
        use nix::sys::signal::Signal;
        if let Some(mut agent) = self.nodes[i].agent.take() {
            // Already reaped (it exited and a wait collected it): nothing left to kill.
            let Some(pid) = agent.running_pid() else {
                return;
            };
            agent.signal(Signal::SIGSTOP);
            let children = children_of(pid);
            if !children.is_empty() {
                // Orphans are then re-parented to this process, which reaps them below: a zombie
                // would keep its PID "running" for keepalived's pid-file check on the restart.
                // SAFETY: prctl with integer arguments only.
                unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            }
            for &child in &children {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL);
            }
            agent.signal(Signal::SIGKILL);
            let _ = agent.wait_timeout(Duration::from_secs(5));
            for child in children {
                wait_gone(child, Duration::from_secs(2));
            }
        }
    }

    /// Start keepalived 2.2 on node `i` instead of the agent, as a Patroni + keepalived setup runs
    /// it: one VRRP instance for the VIP at keepalived's defaults (advertisements every 1 s,
    /// both nodes priority 100, preemption on), and a `vrrp_script` run every `interval_s` seconds
    /// (keepalived's default and smallest: 1) that succeeds while the leader key holds this node's
    /// name (read with `etcdctl`, 1 s dial and command timeouts). While the check fails the
    /// instance is in FAULT and holds no address; keepalived then sends gratuitous ARPs itself
    /// when it becomes MASTER.
    ///
    /// # Panics
    /// When its files cannot be written or it cannot be started.
    pub fn start_keepalived(&mut self, i: usize, interval_s: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        let node = &mut self.nodes[i];
        let log = append_log(&node.log);
        let base = self.dir.join(format!("{}-keepalived", node.name));
        std::fs::create_dir_all(&base).expect("keepalived dir");
        let check = base.join("is-leader");
        std::fs::write(
            &check,
            format!(
                "#!/bin/sh\n\
                 v=$(ETCDCTL_API=3 etcdctl --endpoints={} --dial-timeout=1s --command-timeout=1s \
                 get --print-value-only {}) || exit 1\n\
                 [ \"$v\" = \"{}\" ]\n",
                self.endpoints.join(","),
                self.key,
                node.name
            ),
        )
        .expect("write the keepalived check");
        std::fs::set_permissions(&check, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the keepalived check");
        let conf = base.join("keepalived.conf");
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id {name}\n  script_user root\n}}\n\
                 vrrp_script leader {{\n  script \"{check}\"\n  interval {interval_s}\n  timeout 2\n  \
                 fall 1\n  rise 1\n}}\n\
                 vrrp_instance VIP {{\n  state BACKUP\n  interface {ifname}\n  virtual_router_id 51\n  \
                 priority 100\n  advert_int 1\n  virtual_ipaddress {{\n    {vip}/24 dev {ifname}\n  }}\n  \
                 track_script {{\n    leader\n  }}\n}}\n",
                name = node.name,
                check = check.display(),
                ifname = node.host.ifname,
                vip = self.vip,
            ),
        )
        .expect("write keepalived.conf");
        let path = |f: &str| base.join(f).to_string_lossy().into_owned();
        let args = [
            "--dont-fork".to_owned(),
            "--log-console".to_owned(),
            "--log-detail".to_owned(),
            "--vrrp".to_owned(),
            format!("--use-file={}", conf.display()),
            format!("--pid={}", path("keepalived.pid")),
            format!("--vrrp_pid={}", path("vrrp.pid")),
            format!("--checkers_pid={}", path("checkers.pid")),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        node.agent = Some(node.host.ns.spawn("keepalived", &args, Some(&log)));
    }

    /// Node `i`'s log so far.
    #[must_use]
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// The `dataplane_at_ns` of the first agent log line of node `i` containing `what` whose data-plane
    /// write happened at or after `after_ns` (kernel monotonic ns).
    #[must_use]
    pub fn log_event_after(&self, i: usize, what: &str, after_ns: u64) -> Option<u64> {
        self.log(i)
            .lines()
            .filter(|l| l.contains(what))
            .filter_map(|l| {
                l.split("dataplane_at_ns=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .find(|t| *t >= after_ns)
    }

    /// Wait until every node's agent logs `vip-agent running`.
    ///
    /// # Panics
    /// After 30 s.
    pub fn wait_running(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, node) in self.nodes.iter().enumerate() {
            while !self.log(i).contains("vip-agent running") {
                assert!(
                    Instant::now() < deadline,
                    "{} did not start: {}",
                    node.name,
                    self.log(i)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Cut node `i` off from etcd (a blackhole route to every member), leaving its data path to the
    /// client intact.
    pub fn partition(&self, i: usize) {
        for k in 0..self.etcd_members() {
            let to = format!("{}/32", self.etcd_member_ip(k));
            self.nodes[i]
                .host
                .ns
                .ip(&["route", "add", "blackhole", &to]);
        }
    }

    /// Undo [`Self::partition`].
    pub fn heal(&self, i: usize) {
        for k in 0..self.etcd_members() {
            let to = format!("{}/32", self.etcd_member_ip(k));
            self.nodes[i]
                .host
                .ns
                .ip(&["route", "del", "blackhole", &to]);
        }
    }

    /// Set node `i`'s interface (its only link: to the client and to etcd) administratively down
    /// or up (`ip link set dev X down|up` in its namespace).
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn set_link(&self, i: usize, up: bool) {
        let node = &self.nodes[i].host;
        node.ns.ip(&[
            "link",
            "set",
            "dev",
            &node.ifname,
            if up { "up" } else { "down" },
        ]);
    }

    /// The id of the XDP program attached to node `i`'s interface, if any.
    #[must_use]
    pub fn xdp_prog_id(&self, i: usize) -> Option<u64> {
        let node = &self.nodes[i].host;
        node.ns.xdp_prog_id(&node.ifname)
    }

    /// Whether node `i`'s agent has exited since it was started: its exit status (the process is
    /// then reaped and forgotten), or `None` while it runs or is stopped, or when none was started.
    pub fn agent_exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let status = self.nodes[i].agent.as_mut()?.wait_timeout(Duration::ZERO)?;
        self.nodes[i].agent = None;
        Some(status)
    }

    /// Whether node `i`'s interface carries the VIP address.
    #[must_use]
    pub fn has_vip_address(&self, i: usize) -> bool {
        let node = &self.nodes[i].host;
        node.ns
            .ip(&["-4", "-o", "addr", "show", "dev", &node.ifname])
            .contains(&format!(" {}/24 ", self.vip))
    }

    /// Add the VIP address to node `i`'s interface by hand, as an operator would; whether `ip`
    /// succeeded (it fails when the address is already there).
    #[must_use]
    pub fn add_vip_address(&self, i: usize) -> bool {
        self.vip_address_op(i, "add")
    }

    /// Remove the VIP address from node `i`'s interface by hand; whether `ip` succeeded (it fails
    /// when the address is not there).
    #[must_use]
    pub fn remove_vip_address(&self, i: usize) -> bool {
        self.vip_address_op(i, "del")
    }

    fn vip_address_op(&self, i: usize, op: &str) -> bool {
        let node = &self.nodes[i].host;
        std::process::Command::new("ip")
            .args(["-n", node.ns.name(), "addr", op])
            .arg(format!("{}/24", self.vip))
            .args(["dev", &node.ifname])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Node `i`'s pinned map entry and counters for the VIP, read from bpffs (with or without a
    /// running agent); `None` before the program was pinned.
    #[must_use]
    pub fn dataplane_snapshot(&self, i: usize) -> Option<vip_agent::dataplane::VipSnapshot> {
        vip_agent::dataplane::inspect(&self.pins, &self.nodes[i].host.ifname)
            .ok()
            .flatten()?
            .into_iter()
            .find(|s| s.vip == self.vip)
    }

    /// The MACs that answer one ARP request for the VIP from the client (within `wait`).
    #[must_use]
    pub fn probe(&self, wait: Duration) -> Vec<[u8; 6]> {
        let (ifname, ip, vip) = (&self.client.ifname, self.client.ip, self.vip);
        self.client.ns.run_in(|| {
            let sock = crate::arp::ArpSocket::open(ifname).expect("ARP socket");
            let replies = sock.probe(ip, vip, wait).expect("probe");
            replies.iter().map(|r| r.arp.sha).collect()
        })
    }

    /// Run `f` with an etcd client connected from the client host (current-thread runtime inside
    /// the client's namespace).
    ///
    /// # Panics
    /// When etcd cannot be reached.
    pub fn etcd<F, R>(&self, f: F) -> R
    where
        F: AsyncFnOnce(&mut etcd_client::Client) -> R + Send,
        R: Send,
    {
        let endpoints = self.endpoints.clone();
        self.client.ns.run_in(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async move {
                    let mut client = etcd_client::Client::connect(endpoints, None)
                        .await
                        .expect("connect to etcd");
                    f(&mut client).await
                })
        })
    }
}

/// Patroni's acquire (`etcd3.py`, `attempt_to_acquire_leader`): create `key` = `name` with `lease`
/// only if nobody holds it. Returns the revision of the write, or `None` when the key was taken.
///
/// # Panics
/// When etcd fails.
pub async fn acquire(
    client: &mut etcd_client::Client,
    key: &str,
    name: &str,
    lease: i64,
) -> Option<i64> {
    use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            name,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let resp = client.txn(txn).await.expect("acquire txn");
    resp.succeeded().then(|| {
        resp.header()
            .map_or(0, etcd_client::ResponseHeader::revision)
    })
}

/// Patroni's release (`_delete_leader`): delete `key` only if its value is still `name`.
/// Returns whether it was deleted.
///
/// # Panics
/// When etcd fails.
pub async fn release(client: &mut etcd_client::Client, key: &str, name: &str) -> bool {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let txn = Txn::new()
        .when([Compare::value(key, CompareOp::Equal, name)])
        .and_then([TxnOp::delete(key, None)]);
    client.txn(txn).await.expect("release txn").succeeded()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_agent(i);
        }
        self.stop_etcd();
        if let Ok(entries) = std::fs::read_dir(&self.pins) {
            for e in entries.flatten() {
                let _ = vip_agent::dataplane::detach(&self.pins, &e.file_name().to_string_lossy());
            }
        }
        let _ = std::fs::remove_dir(&self.pins);
        let _ = std::fs::remove_dir_all(&self.etcd_data);
        if std::env::var_os("VIP_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        for made in [&self.dir, &self.pins, &self.etcd_data] {
            crate::interrupt::path_removed(made);
        }
    }
}

/// `pid` and its descendants (keepalived's VRRP child; vip-agent and vip-manager have none).
#[must_use]
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut next = 0;
    while let Some(&p) = all.get(next) {
        all.extend(children_of(p));
        next += 1;
    }
    all
}

/// The PIDs of `pid`'s child processes (`/proc/<pid>/task/*/children`).
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Wait (up to `limit`) until `pid` has exited; whether it did. A process of this one (a child,
/// or an orphan re-parented here: the benchmark becomes a child subreaper) is reaped; another's
/// counts as gone once it is a zombie, which its parent (init) reaps in its own time. Checking
/// only that `/proc/<pid>` disappeared waits forever for an unreaped orphan of this process.
pub(crate) fn wait_gone(pid: i32, limit: Duration) -> bool {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    let until = Instant::now() + limit;
    loop {
        // ECHILD unless it is this process's to reap.
        let _ = waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` has exited and waits to be reaped (state `Z` in `/proc/<pid>/stat`).
pub(crate) fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) state ...": comm may hold spaces and parentheses.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// `path` opened for appending (created if missing): a node's log, shared by the processes that
/// run on it one after the other.
fn append_log(path: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open the log {}: {e}", path.display()))
}

/// A signal mask line of `/proc/<pid>/status` (`SigBlk:`, `SigCgt:`), 0 when absent.
fn mask(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a daemon started through `pg_ctl` is to the benchmark once that has become a child
    /// subreaper (keepalived's kill does it, `interrupt::clean_up_on_signal` too): an orphan of
    /// this process. Killed, it stays a zombie until this process reaps it, so a check for
    /// `/proc/<pid>` alone never saw it go (the repmgr part of a whole benchmark run failed so).
    #[test]
    fn a_killed_orphan_of_this_process_is_reaped_and_counts_as_gone() {
        // The subreaper attribute stays on this test process; nothing else here forks daemons.
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        // sh prints the PID of its background sleep and exits: the sleep is an orphan, now ours.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .output()
            .expect("run sh");
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the orphan's pid");
        assert!(
            !wait_gone(pid, Duration::from_millis(50)),
            "sleep still runs"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the orphan");
        assert!(
            wait_gone(pid, Duration::from_secs(5)),
            "the killed orphan is gone"
        );
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "and reaped: no zombie left behind"
        );
    }
}
