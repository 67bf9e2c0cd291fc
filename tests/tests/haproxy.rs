//! Debian's HAProxy in front of two nodes, configured as Pigsty renders a primary service
//! (`roles/pgsql/templates/service.cfg`: `mode tcp`, `option httpchk`, `option http-keep-alive`,
//! `http-check send meth OPTIONS uri /primary`, `http-check expect status 200`, the `fast` pg_rto
//! plan's `default-server` line), with the health check on the agent's metrics port instead of
//! Patroni's 8008. Each node runs a stand-in "PostgreSQL" on 5432 that names the node and counts
//! its connections.
//!
//! What must hold, with real etcd and real agents:
//! * while node1 holds the key, clients reach node1, and node2 (fenced from the start) never gets a
//!   connection;
//! * after a switchover to node2, clients reach node2; once HAProxy has marked node1 DOWN (its
//!   `/primary` says 503, fenced), node1 gets no connection at all.
//!
//! Subnet 10.77.201.0/24. Needs root and haproxy (`cargo xtask setup`); skips loudly without root
//! (fails under CI).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use vip_tests::{
    cluster::{self, Cluster},
    eventually, require_privileges,
};

const KEY: &str = "/service/demo/leader";
const METRICS_PORT: u16 = 9477;
const PG_PORT: u16 = 5432;
const SERVICE_PORT: u16 = 5433;

/// A stand-in PostgreSQL on a node: answers each connection with the node's name and counts them.
struct Backend {
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    fn start(c: &Cluster, i: usize) -> Self {
        let node = &c.nodes[i];
        let ip = node.host.ip;
        let listener = node.host.ns.run_in(move || {
            TcpListener::bind(SocketAddr::from((ip, PG_PORT))).expect("bind the stand-in postgres")
        });
        listener.set_nonblocking(true).expect("non-blocking accept");
        let (accepted, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let name = node.name.clone();
        let thread = std::thread::spawn({
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            drop(stream.set_nonblocking(false));
                            drop(stream.write_all(format!("{name}\n").as_bytes()));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        });
        Self {
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            drop(t.join());
        }
    }
}

/// Pigsty's primary service for the cluster, as `service.cfg` renders it (pg_rto `fast`; its
/// `fastinter 0.5s` written `500ms`, the same interval in the syntax Debian 12's HAProxy 2.6 reads).
fn haproxy_config(c: &Cluster, bind: Ipv4Addr) -> String {
    let servers: String = c
        .nodes
        .iter()
        .map(|n| {
            format!(
                "    server {name} {ip}:{PG_PORT} check port {METRICS_PORT} weight 100 \n",
                name = n.name,
                ip = n.host.ip
            )
        })
        .collect();
    format!(
        "global\n\
         \x20   maxconn 1000\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   retries 3\n\
         \x20   timeout queue 3s\n\
         \x20   timeout connect 3s\n\
         \x20   timeout client 24h\n\
         \x20   timeout server 24h\n\
         \x20   timeout check 3s\n\
         listen pg-test-primary\n\
         \x20   bind {bind}:{SERVICE_PORT}\n\
         \x20   mode tcp\n\
         \x20   maxconn 5000\n\
         \x20   balance roundrobin\n\
         \x20   option httpchk\n\
         \x20   option http-keep-alive\n\
         \x20   http-check send meth OPTIONS uri /primary\n\
         \x20   http-check expect status 200\n\
         \x20   default-server inter 1s fastinter 500ms downinter 1s rise 3 fall 3 on-marked-down \
         shutdown-sessions slowstart 30s maxconn 3000 maxqueue 128 weight 100\n\
         \n\
         \x20   # servers\n\
         {servers}"
    )
}

/// One client connection through HAProxy: the name of the node it reached, or `None` (refused,
/// closed without an answer: no server up).
fn connect(c: &Cluster, haproxy: Ipv4Addr) -> Option<String> {
    c.client.ns.run_in(|| {
        let addr = SocketAddr::from((haproxy, SERVICE_PORT));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let name = answer.trim();
        (!name.is_empty()).then(|| name.to_owned())
    })
}

/// `n` connections in a row all reached `name`.
fn all_reach(c: &Cluster, haproxy: Ipv4Addr, name: &str, n: usize) -> bool {
    (0..n).all(|_| connect(c, haproxy).as_deref() == Some(name))
}

fn haproxy_binary() -> &'static str {
    if Path::new("/usr/sbin/haproxy").is_file() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

#[test]
fn haproxy_pigsty_check_follows_the_key_and_never_routes_to_a_fenced_node() {
    if !require_privileges("haproxy_pigsty_check_follows_the_key_and_never_routes_to_a_fenced_node")
    {
        return;
    }
    let mut c = Cluster::new(
        201,
        2,
        &vip_tests::agent_binary(),
        &format!("metrics-address: 0.0.0.0:{METRICS_PORT}\n"),
    );
    let backends = [Backend::start(&c, 0), Backend::start(&c, 1)];
    let lb = c.add_host("hapx", 8);
    let config = c.dir.join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(&c, lb.ip)).expect("write haproxy.cfg");
    let check = lb.ns.exec(
        haproxy_binary(),
        &["-c", "-f", config.to_str().expect("UTF-8")],
    );
    assert!(
        check.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let haproxy_log_path = c.dir.join("haproxy.log");
    let haproxy_log = std::fs::File::create(&haproxy_log_path).expect("haproxy log");
    let _haproxy = lb.ns.spawn(
        haproxy_binary(),
        &["-db", "-f", config.to_str().expect("UTF-8")],
        Some(&haproxy_log),
    );
    let haproxy_says = |what: &str| {
        std::fs::read_to_string(&haproxy_log_path)
            .unwrap_or_default()
            .contains(what)
    };

    c.start_agent(0);
    c.start_agent(1);
    c.wait_running();
    // HAProxy starts with its servers up until a first check fails: wait for that (both agents
    // run, fenced, and answer 503), so no client is sent anywhere on a server's initial state.
    eventually(
        Duration::from_secs(30),
        "HAProxy's first checks mark both nodes DOWN",
        || haproxy_says("node1 is DOWN") && haproxy_says("node2 is DOWN"),
    );
    let lease1 = c.etcd(async |e| e.lease_grant(60, None).await.expect("lease").id());
    let lease2 = c.etcd(async |e| e.lease_grant(60, None).await.expect("lease").id());
    assert!(
        c.etcd(async |e| cluster::acquire(e, KEY, "node1", lease1).await)
            .is_some(),
        "node1 acquires the key"
    );

    // node1 holds the key: HAProxy's OPTIONS /primary check marks it up (rise 3), and only it.
    eventually(Duration::from_secs(30), "clients reach node1", || {
        all_reach(&c, lb.ip, "node1", 5)
    });
    assert!(
        all_reach(&c, lb.ip, "node1", 20),
        "every client reaches node1"
    );
    assert_eq!(
        backends[1].accepted(),
        0,
        "node2 is fenced: HAProxy never sends it a client"
    );
    assert!(
        !haproxy_says("node2 is UP"),
        "{}",
        std::fs::read_to_string(&haproxy_log_path).unwrap_or_default()
    );

    // Switchover, as Patroni does it: node1 releases the key, node2 takes it.
    assert!(
        c.etcd(async |e| cluster::release(e, KEY, "node1").await),
        "node1 releases the key"
    );
    assert!(
        c.etcd(async |e| cluster::acquire(e, KEY, "node2", lease2).await)
            .is_some(),
        "node2 acquires the key"
    );
    eventually(Duration::from_secs(30), "clients reach node2", || {
        all_reach(&c, lb.ip, "node2", 5)
    });
    eventually(
        Duration::from_secs(30),
        "HAProxy marks node1 DOWN again (its /primary says 503)",
        || {
            std::fs::read_to_string(&haproxy_log_path)
                .unwrap_or_default()
                .matches("node1 is DOWN")
                .count()
                >= 2
        },
    );
    // node1 is fenced (no VIP address) and out of the pool: no connection reaches it any more.
    let node1_before = backends[0].accepted();
    assert!(
        all_reach(&c, lb.ip, "node2", 20),
        "every client reaches node2"
    );
    assert_eq!(
        backends[0].accepted(),
        node1_before,
        "after HAProxy marked it DOWN, the fenced node1 gets no client"
    );
    let log = std::fs::read_to_string(&haproxy_log_path).unwrap_or_default();
    eprintln!("haproxy:\n{log}");
    assert!(
        log.contains("node2 is UP"),
        "HAProxy marked node2 up by its check: {log}"
    );
    for i in 0..2 {
        let status = c.terminate_agent(i).expect("the agent exits on SIGTERM");
        assert!(status.success(), "{status:?}: {}", c.log(i));
    }
}
