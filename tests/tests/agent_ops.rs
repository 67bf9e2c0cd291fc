//! Operating the real vip-agent binary: what an operator reads and what the service may do.
//!
//! * the metrics endpoint (`/metrics`, `/health`, `/primary`) across a switchover, scraped inside
//!   each node's namespace, its XDP counters against `vip-agent status` and the ARP requests sent;
//! * `vip-agent status` (JSON and text) against the pinned maps read independently with `bpftool`,
//!   with the daemon running, after it was SIGKILLed (pins remain, fenced once the deadline passed),
//!   and on an interface with nothing pinned;
//! * the capability set: the agent works end to end with exactly the `CapabilityBoundingSet` of
//!   `dist/systemd/vip-agent.service` (so the unit and this test cannot drift), and each capability
//!   of the minimal set (CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW, CAP_PERFMON) is necessary: without
//!   it the agent exits 1 with an error naming the refused operation, and never answers;
//! * (ignored, a known bug) a restart that adopts the pinned program without CAP_NET_ADMIN must not
//!   answer for a VIP whose address it cannot add.
//!
//! Every test builds its own cluster (own subnet, bridge and namespaces) and removes it.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use vip_agent::clock::monotonic_ns;
use vip_tests::{
    arp::ArpSocket,
    cluster::{self, Cluster},
    eventually, require_privileges,
};

const KEY: &str = "/service/demo/leader";
const METRICS_PORT: u16 = 9477;
const PROBE: Duration = Duration::from_millis(150);

fn grant(c: &Cluster, ttl: i64) -> i64 {
    c.etcd(async |e| e.lease_grant(ttl, None).await.expect("lease").id())
}

/// Patroni's acquire for `name`, which must succeed; the revision of the write.
fn acquire(c: &Cluster, name: &str, lease: i64) -> i64 {
    c.etcd(async |e| cluster::acquire(e, KEY, name, lease).await)
        .unwrap_or_else(|| panic!("{name} could not acquire the key"))
}

/// Patroni's release for `name`, which must succeed.
fn release(c: &Cluster, name: &str) {
    assert!(
        c.etcd(async |e| cluster::release(e, KEY, name).await),
        "{name} could not release the key"
    );
}

fn mac(c: &Cluster, i: usize) -> [u8; 6] {
    c.nodes[i].host.mac
}

fn has_vip_address(c: &Cluster, i: usize) -> bool {
    let node = &c.nodes[i].host;
    node.ns
        .ip(&["-4", "-o", "addr", "show", "dev", &node.ifname])
        .contains(&format!(" {}/24 ", c.vip))
}

/// Send `n` ARP requests for the VIP from the client (one every 20 ms), then listen a little
/// longer; returns the sender MAC of every reply. Nothing is sent after it returns.
fn arp_requests(c: &Cluster, n: usize) -> Vec<[u8; 6]> {
    let (ifname, ip, vip) = (&c.client.ifname, c.client.ip, c.vip);
    c.client.ns.run_in(|| {
        let sock = ArpSocket::open(ifname).expect("ARP socket");
        let mut frames = Vec::new();
        for _ in 0..n {
            sock.send_request(ip, vip).expect("send an ARP request");
            frames.extend(
                sock.recv_until(Instant::now() + Duration::from_millis(20))
                    .expect("receive"),
            );
        }
        frames.extend(
            sock.recv_until(Instant::now() + Duration::from_millis(300))
                .expect("receive"),
        );
        frames
            .iter()
            .filter(|f| {
                f.arp.op == vip_common::frame::ARP_OP_REPLY
                    && f.arp.spa == vip.octets()
                    && f.arp.tha == sock.mac()
            })
            .map(|f| f.arp.sha)
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP and the Prometheus text format

/// `GET path` from inside node `i`'s namespace to its metrics address: (status code, body).
fn http_get(c: &Cluster, i: usize, path: &str) -> (u16, String) {
    http_request(c, i, "GET", path)
}

/// `method path` from inside node `i`'s namespace to its metrics address: (status code, body).
fn http_request(c: &Cluster, i: usize, method: &str, path: &str) -> (u16, String) {
    let addr = SocketAddr::from((c.nodes[i].host.ip, METRICS_PORT));
    let response = c.nodes[i].host.ns.run_in(|| {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to the metrics address {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .unwrap_or_else(|e| panic!("read the response to {method} {path}: {e}"));
        response
    });
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no header end in {response:?}"));
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {head:?}"));
    (code, body.to_owned())
}

/// One scrape of `/metrics`: `(name, labels, value)` per sample.
#[derive(Debug)]
struct Scrape(Vec<(String, String, f64)>);

impl Scrape {
    fn of(c: &Cluster, i: usize) -> Self {
        let (code, body) = http_get(c, i, "/metrics");
        assert_eq!(code, 200, "/metrics on {}: {body}", c.nodes[i].name);
        let samples = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("sample without a value: {l:?}"));
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|e| panic!("sample value in {l:?}: {e}"));
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (
                        name,
                        rest.strip_suffix('}')
                            .unwrap_or_else(|| panic!("unterminated labels: {l:?}")),
                    ),
                    None => (series, ""),
                };
                (name.to_owned(), labels.to_owned(), value)
            })
            .collect();
        Self(samples)
    }

    /// The value of the only sample named `name` (one VIP per node here).
    fn get(&self, name: &str) -> f64 {
        let found: Vec<_> = self.0.iter().filter(|(n, _, _)| n == name).collect();
        assert_eq!(found.len(), 1, "exactly one sample of {name}: {self:?}");
        found[0].2
    }

    /// An integer-valued sample (counters, gauges that count).
    fn int(&self, name: &str) -> u64 {
        let v = self.get(name);
        assert!(v >= 0.0 && v.fract() == 0.0, "{name} = {v} is not a count");
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked above: a non-negative whole number"
        )]
        let n = v as u64;
        n
    }

    /// The labels of the only sample named `name`.
    fn labels(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, l, _)| l.as_str())
            .unwrap_or_else(|| panic!("no sample {name}: {self:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// `vip-agent status` and the maps as bpftool shows them

/// `vip-agent status [--json] --interface <ifname> --pin-path <pins>` run in node `i`'s namespace:
/// (exit success, stdout, stderr).
fn status_cli(
    c: &Cluster,
    i: usize,
    ifname: &str,
    pins: &Path,
    json: bool,
) -> (bool, String, String) {
    status_cli_with(c, i, ifname, pins, json, &[])
}

/// `vip-agent status --metrics-address <node i's> [--json]` in node `i`'s namespace: (exit
/// success, stdout, stderr).
fn status_cli_daemon(c: &Cluster, i: usize, json: bool) -> (bool, String, String) {
    let address = format!("{}:{METRICS_PORT}", c.nodes[i].host.ip);
    let ifname = c.nodes[i].host.ifname.as_str();
    status_cli_with(
        c,
        i,
        ifname,
        &c.pins,
        json,
        &["--metrics-address", &address],
    )
}

fn status_cli_with(
    c: &Cluster,
    i: usize,
    ifname: &str,
    pins: &Path,
    json: bool,
    extra: &[&str],
) -> (bool, String, String) {
    let bin = c.agent_bin().to_str().expect("utf-8 path");
    let pins = pins.to_str().expect("utf-8 path");
    let mut args = vec!["status", "--interface", ifname, "--pin-path", pins];
    args.extend_from_slice(extra);
    if json {
        args.push("--json");
    }
    let out = c.nodes[i].host.ns.exec(bin, &args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `vip-agent status --json` of node `i`'s own interface: its one VIP.
fn status_json(c: &Cluster, i: usize) -> serde_json::Value {
    let (ok, out, err) = status_cli(c, i, &c.nodes[i].host.ifname, &c.pins, true);
    assert!(ok, "status --json on {} failed: {err}", c.nodes[i].name);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is JSON ({e}): {out}"));
    let list = v
        .as_array()
        .unwrap_or_else(|| panic!("a JSON array: {out}"));
    assert_eq!(list.len(), 1, "one VIP on {}: {out}", c.nodes[i].name);
    list[0].clone()
}

fn json_u64(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is an unsigned integer in {v}"))
}

/// Counters of one VIP on one CPU, in `VipStats` order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    arp_replied: u64,
    arp_dropped: u64,
    ipv4_dropped: u64,
    conflicts: u64,
    last_reply_ns: u64,
}

/// One VIP as the pinned maps hold it, read with bpftool (not through the agent's own code).
#[derive(Clone, Debug, PartialEq, Eq)]
struct MapEntry {
    vip: Ipv4Addr,
    deadline_ns: u64,
    mac: [u8; 6],
    per_cpu: Vec<Counters>,
}

impl MapEntry {
    /// Summed over CPUs; `last_reply_ns` is the latest.
    fn total(&self) -> Counters {
        self.per_cpu
            .iter()
            .fold(Counters::default(), |a, c| Counters {
                arp_replied: a.arp_replied + c.arp_replied,
                arp_dropped: a.arp_dropped + c.arp_dropped,
                ipv4_dropped: a.ipv4_dropped + c.ipv4_dropped,
                conflicts: a.conflicts + c.conflicts,
                last_reply_ns: a.last_reply_ns.max(c.last_reply_ns),
            })
    }
}

/// `bpftool -j map dump pinned <path>`.
fn bpftool_dump(path: &Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path)
        .output()
        .expect("run bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "bpftool map dump pinned {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("bpftool -j prints JSON")
        .as_array()
        .cloned()
        .expect("bpftool map dump is an array")
}

/// bpftool's `["0x0a", "0x4d", ...]` as bytes.
fn hex_bytes(v: &serde_json::Value) -> Vec<u8> {
    v.as_array()
        .unwrap_or_else(|| panic!("a byte array: {v}"))
        .iter()
        .map(|b| {
            let s = b.as_str().unwrap_or_else(|| panic!("a hex byte: {b}"));
            u8::from_str_radix(s.trim_start_matches("0x"), 16)
                .unwrap_or_else(|e| panic!("hex byte {s}: {e}"))
        })
        .collect()
}

fn le_u64(bytes: &[u8], offset: usize) -> u64 {
    let word: [u8; 8] = bytes[offset..offset + 8].try_into().expect("8 bytes");
    u64::from_le_bytes(word)
}

/// Every VIP in `<pins>/<ifname>/{VIP_STATE,VIP_STATS}` (layouts: vip-common's `VipState`,
/// `VipStats`), sorted by address.
fn read_maps(pins: &Path, ifname: &str) -> Vec<MapEntry> {
    let dir = pins.join(ifname);
    let stats = bpftool_dump(&dir.join("VIP_STATS"));
    let mut entries: Vec<MapEntry> = bpftool_dump(&dir.join("VIP_STATE"))
        .iter()
        .map(|e| {
            let key = hex_bytes(&e["key"]);
            let value = hex_bytes(&e["value"]);
            assert_eq!((key.len(), value.len()), (16, 16), "VIP_STATE layout: {e}");
            // An IPv4 VIP is keyed by its IPv4-mapped IPv6 address, ::ffff:a.b.c.d.
            assert_eq!(
                key[..12],
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
                "IPv4-mapped key: {e}"
            );
            let per_cpu = stats
                .iter()
                .find(|s| hex_bytes(&s["key"]) == key)
                .unwrap_or_else(|| panic!("VIP_STATS has no entry for {key:?}"))["values"]
                .as_array()
                .expect("per-CPU values")
                .iter()
                .map(|cpu| {
                    let v = hex_bytes(&cpu["value"]);
                    assert_eq!(v.len(), 40, "VIP_STATS layout: {cpu}");
                    Counters {
                        arp_replied: le_u64(&v, 0),
                        arp_dropped: le_u64(&v, 8),
                        ipv4_dropped: le_u64(&v, 16),
                        conflicts: le_u64(&v, 24),
                        last_reply_ns: le_u64(&v, 32),
                    }
                })
                .collect();
            MapEntry {
                vip: Ipv4Addr::new(key[12], key[13], key[14], key[15]),
                deadline_ns: le_u64(&value, 0),
                mac: value[8..14].try_into().expect("6 bytes"),
                per_cpu,
            }
        })
        .collect();
    entries.sort_by_key(|e| e.vip);
    entries
}

/// Node `i`'s one VIP entry in its maps.
fn map_entry(c: &Cluster, i: usize) -> MapEntry {
    let entries = read_maps(&c.pins, &c.nodes[i].host.ifname);
    assert_eq!(
        entries.len(),
        1,
        "one VIP in {}'s maps: {entries:?}",
        c.nodes[i].name
    );
    entries[0].clone()
}

/// `status --json` of node `i` taken while the deadline in its map did not change, with the map
/// entry and the kernel-time window `[before, after]` in which `status` read the clock.
fn status_with_maps(c: &Cluster, i: usize) -> (serde_json::Value, MapEntry, u64, u64) {
    // The agent renews the deadline every second and a late gratuitous ARP may still move a
    // counter: retry until one status run fits between two identical reads of the maps.
    for _ in 0..50 {
        let first = map_entry(c, i);
        let before = monotonic_ns();
        let status = status_json(c, i);
        let after = monotonic_ns();
        let second = map_entry(c, i);
        if first == second {
            return (status, second, before, after);
        }
    }
    panic!(
        "the deadline of {} changed during every status run",
        c.nodes[i].name
    );
}

/// `vip-agent status --json` agrees with the maps: VIP, answering vs deadline, time left,
/// counters summed over CPUs, time since the last reply. Counters must be still (no probing).
fn assert_status_matches_maps(c: &Cluster, i: usize) -> (serde_json::Value, MapEntry) {
    let name = &c.nodes[i].name;
    let (s, m, before, after) = status_with_maps(c, i);
    assert_eq!(
        s["interface"],
        c.nodes[i].host.ifname.as_str(),
        "{name}: {s}"
    );
    assert_eq!(s["vip"], m.vip.to_string(), "{name}: {s}");
    assert_eq!(m.vip, c.vip);
    assert_eq!(
        m.mac,
        mac(c, i),
        "{name}: the map's reply MAC is the interface's"
    );
    let answering = s["answering"].as_bool().expect("answering is a bool");
    // status read the clock at some `now` in [before, after]: answering iff now < deadline.
    if m.deadline_ns > after {
        assert!(
            answering,
            "{name}: deadline ahead but status says fenced: {s} {m:?}"
        );
    }
    if m.deadline_ns <= before {
        assert!(
            !answering,
            "{name}: deadline passed but status says answering: {s} {m:?}"
        );
    }
    let left = json_u64(&s, "deadline_in_ms");
    let (lo, hi) = (
        m.deadline_ns.saturating_sub(after) / 1_000_000,
        m.deadline_ns.saturating_sub(before) / 1_000_000,
    );
    assert!(
        (lo..=hi).contains(&left),
        "{name}: deadline_in_ms {left} outside [{lo}, {hi}] from the map: {s} {m:?}"
    );
    let total = m.total();
    for (field, value) in [
        ("arp_replied", total.arp_replied),
        ("arp_dropped", total.arp_dropped),
        ("ipv4_dropped", total.ipv4_dropped),
        ("conflicts", total.conflicts),
    ] {
        assert_eq!(
            json_u64(&s, field),
            value,
            "{name}: {field} = sum over CPUs {m:?}"
        );
    }
    if total.last_reply_ns == 0 {
        assert!(
            s["last_reply_ago_ms"].is_null(),
            "{name}: never replied: {s}"
        );
    } else {
        let ago = json_u64(&s, "last_reply_ago_ms");
        let (lo, hi) = (
            before.saturating_sub(total.last_reply_ns) / 1_000_000,
            after.saturating_sub(total.last_reply_ns) / 1_000_000,
        );
        assert!(
            (lo..=hi).contains(&ago),
            "{name}: last_reply_ago_ms {ago} outside [{lo}, {hi}]"
        );
    }
    (s, m)
}

/// The text form says the same as the JSON (apart from the two fields that move with time).
fn assert_text_matches(c: &Cluster, i: usize, json: &serde_json::Value) {
    let (ok, out, err) = status_cli(c, i, &c.nodes[i].host.ifname, &c.pins, false);
    assert!(ok, "status on {} failed: {err}", c.nodes[i].name);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one line per VIP: {out}");
    let words: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(words.len(), 9, "{out}");
    assert_eq!(words[0], json["interface"], "{out}");
    assert_eq!(words[1], json["vip"], "{out}");
    let role = if json["answering"] == true {
        "answering"
    } else {
        "fenced"
    };
    assert_eq!(words[2], role, "{out} vs {json}");
    for field in ["arp_replied", "arp_dropped", "ipv4_dropped", "conflicts"] {
        let expected = format!("{field}={}", json_u64(json, field));
        assert!(words.contains(&expected.as_str()), "{expected} in {out}");
    }
    assert!(words[3].starts_with("deadline_in_ms=") && words[8].starts_with("last_reply_ago_ms="));
}

// ---------------------------------------------------------------------------------------------
// 1. metrics during a flip

/// A two-node cluster whose agents serve metrics on their own address.
fn metrics_cluster(subnet: u8, extra: &str) -> Cluster {
    let mut c = Cluster::new(subnet, 2, &vip_tests::agent_binary(), extra);
    for node in &c.nodes {
        let mut config = std::fs::read_to_string(&node.config).expect("read config");
        config.push_str(&format!(
            "metrics-address: {}:{METRICS_PORT}\n",
            node.host.ip
        ));
        std::fs::write(&node.config, config).expect("write config");
    }
    c.start_agent(0);
    c.start_agent(1);
    c.wait_running();
    c
}

/// What the metrics of one node must say about its role.
fn assert_role(c: &Cluster, i: usize, holder: bool, transitions: u64, revision: i64) {
    let name = &c.nodes[i].name;
    let m = Scrape::of(c, i);
    assert_eq!(
        m.int("vip_agent_answering"),
        u64::from(holder),
        "{name}: role"
    );
    let left = m.get("vip_agent_deadline_remaining_seconds");
    if holder {
        assert!(
            left > 0.0,
            "{name} holds the VIP: deadline ahead, got {left}"
        );
    } else {
        assert!(
            left == 0.0,
            "{name} does not hold the VIP: no deadline, got {left}"
        );
    }
    assert_eq!(
        m.int("vip_agent_transitions_total"),
        transitions,
        "{name}: transitions"
    );
    assert_eq!(
        m.int("vip_agent_etcd_connected"),
        1,
        "{name}: etcd connected"
    );
    let watched = m.int("vip_agent_watch_revision");
    assert!(
        i64::try_from(watched).is_ok_and(|w| w >= revision),
        "{name}: watch revision {watched} < {revision}"
    );
    let (code, body) = http_get(c, i, "/primary");
    assert_eq!(
        code,
        if holder { 200 } else { 503 },
        "{name}: /primary {body}"
    );
    let (code, _) = http_get(c, i, &format!("/primary?vip={}", c.vip));
    assert_eq!(
        code,
        if holder { 200 } else { 503 },
        "{name}: /primary?vip="
    );
    let (code, body) = http_get(c, i, "/health");
    assert_eq!(code, 200, "{name}: /health {body}");
    let (code, body) = http_get(c, i, "/replica");
    assert_eq!(
        code,
        if holder { 503 } else { 200 },
        "{name}: /replica {body}"
    );
    for method in ["HEAD", "OPTIONS"] {
        let (code, body) = http_request(c, i, method, "/primary");
        assert_eq!(
            (code, body.as_str()),
            (if holder { 200 } else { 503 }, ""),
            "{name}: {method} /primary"
        );
    }
}

/// Wait until node `i`'s agent has finished `n` gratuitous ARP bursts (default schedule: 0, 0.1,
/// 1.1 s after promotion), so no announcement falls into a counting window.
fn wait_garp_bursts(c: &Cluster, i: usize, n: usize) {
    eventually(Duration::from_secs(10), "the GARP burst is over", || {
        c.log(i).matches("gratuitous ARP burst done").count() >= n
    });
}

/// The etcd revision node `i`'s watch has reached, from its metrics.
fn watch_revision(c: &Cluster, i: usize) -> i64 {
    i64::try_from(Scrape::of(c, i).int("vip_agent_watch_revision")).expect("revision fits i64")
}

/// Whether the role metrics of node `i` already say `holder`.
fn role_is(c: &Cluster, i: usize, holder: bool) -> bool {
    Scrape::of(c, i).int("vip_agent_answering") == u64::from(holder)
        && http_get(c, i, "/primary").0 == if holder { 200 } else { 503 }
}

/// The XDP counters on `/metrics` are those `vip-agent status` reports (and the maps hold).
fn assert_metrics_match_status(c: &Cluster, i: usize) -> serde_json::Value {
    let m = Scrape::of(c, i);
    let s = status_json(c, i);
    for (metric, field) in [
        ("vip_agent_xdp_neighbor_replied_total", "arp_replied"),
        ("vip_agent_xdp_neighbor_dropped_total", "arp_dropped"),
        ("vip_agent_xdp_ip_dropped_total", "ipv4_dropped"),
        ("vip_agent_xdp_conflicts_total", "conflicts"),
    ] {
        assert_eq!(
            m.int(metric),
            json_u64(&s, field),
            "{}: {metric} vs status {s}",
            c.nodes[i].name
        );
    }
    s
}

#[test]
fn metrics_health_and_primary_follow_a_switchover() {
    if !require_privileges("metrics_health_and_primary_follow_a_switchover") {
        return;
    }
    // verbose: the agent logs the end of each gratuitous ARP burst (debug), which the counts below
    // wait for: the holder's GARP *requests* reach the fenced node, which drops them as ARP
    // requests for a VIP it does not answer (counted in its arp_dropped).
    let c = metrics_cluster(61, "verbose: true\n");
    const ARPS: usize = 25;

    // Nobody holds the key: both fenced, both connected.
    for i in 0..2 {
        eventually(Duration::from_secs(10), "etcd connected", || {
            http_get(&c, i, "/health").0 == 200
        });
        assert_role(&c, i, false, 0, 0);
        let labels = Scrape::of(&c, i).labels("vip_agent_answering").to_owned();
        assert_eq!(
            labels,
            format!(
                "vip=\"{}\",interface=\"{}\",key=\"{KEY}\"",
                c.vip, c.nodes[i].host.ifname
            )
        );
        assert!(
            Scrape::of(&c, i)
                .0
                .iter()
                .any(|(n, _, _)| n == "vip_agent_event_to_dataplane_seconds_count")
        );
        assert!(
            Scrape::of(&c, i)
                .labels("vip_agent_xdp_neighbor_replied_total")
                .ends_with(",family=\"arp\""),
            "an IPv4 VIP's neighbour counters are ARP's"
        );
    }
    let (l1, l2) = (grant(&c, 60), grant(&c, 60));

    // node1 acquires.
    let r1 = acquire(&c, "node1", l1);
    eventually(
        Duration::from_secs(5),
        "node1's metrics say primary",
        || role_is(&c, 0, true),
    );
    assert_role(&c, 0, true, 1, r1);
    eventually(
        Duration::from_secs(5),
        "node2 has seen node1's write",
        || watch_revision(&c, 1) >= r1,
    );
    assert_role(&c, 1, false, 0, r1);
    wait_garp_bursts(&c, 0, 1);

    // `vip-agent status --metrics-address` reads the daemon's JSON /status: the gate line (text)
    // and object (JSON) of the holder, open, its etcd source reached.
    let (ok, out, err) = status_cli_daemon(&c, 0, false);
    assert!(ok, "status --metrics-address: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}{err}");
    assert!(lines[0].contains(" answering "), "{out}");
    assert!(
        lines[1].starts_with("  gate state=")
            && lines[1].contains(" source=etcd source_reached=true"),
        "{out}"
    );
    assert_eq!(err, "", "nothing to note: {err}");
    let (ok, out, err) = status_cli_daemon(&c, 1, true);
    assert!(ok, "status --metrics-address --json: {err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json[0]["answering"], false, "{out}");
    assert_eq!(json[0]["gate"]["source"], "etcd", "{out}");
    assert_eq!(json[0]["gate"]["source_reached"], true, "{out}");

    let before = [
        assert_metrics_match_status(&c, 0),
        assert_metrics_match_status(&c, 1),
    ];
    let answers = arp_requests(&c, ARPS);
    assert_eq!(
        answers,
        vec![mac(&c, 0); ARPS],
        "node1 answers every request"
    );
    let after = [
        assert_metrics_match_status(&c, 0),
        assert_metrics_match_status(&c, 1),
    ];
    let delta = |i: usize, f: &str| json_u64(&after[i], f) - json_u64(&before[i], f);
    assert_eq!(
        delta(0, "arp_replied"),
        ARPS as u64,
        "node1 replied to each request once"
    );
    assert_eq!(delta(0, "arp_dropped"), 0);
    assert_eq!(
        delta(1, "arp_dropped"),
        ARPS as u64,
        "fenced node2 dropped each request"
    );
    assert_eq!(delta(1, "arp_replied"), 0);

    // Switchover node1 -> node2.
    release(&c, "node1");
    let r2 = acquire(&c, "node2", l2);
    eventually(
        Duration::from_secs(5),
        "node2's metrics say primary",
        || role_is(&c, 1, true),
    );
    eventually(Duration::from_secs(5), "node1's metrics say fenced", || {
        role_is(&c, 0, false)
    });
    eventually(
        Duration::from_secs(5),
        "node1 has seen node2's write",
        || watch_revision(&c, 0) >= r2,
    );
    assert_role(&c, 0, false, 2, r2);
    assert_role(&c, 1, true, 1, r2);
    wait_garp_bursts(&c, 1, 1);

    let before = [
        assert_metrics_match_status(&c, 0),
        assert_metrics_match_status(&c, 1),
    ];
    let answers = arp_requests(&c, ARPS);
    assert_eq!(
        answers,
        vec![mac(&c, 1); ARPS],
        "node2 answers every request"
    );
    let after = [
        assert_metrics_match_status(&c, 0),
        assert_metrics_match_status(&c, 1),
    ];
    let delta = |i: usize, f: &str| json_u64(&after[i], f) - json_u64(&before[i], f);
    assert_eq!(
        delta(1, "arp_replied"),
        ARPS as u64,
        "node2 replied to each request once"
    );
    assert_eq!(delta(1, "arp_dropped"), 0);
    assert_eq!(
        delta(0, "arp_dropped"),
        ARPS as u64,
        "fenced node1 dropped each request"
    );
    assert_eq!(delta(0, "arp_replied"), 0);
}

// ---------------------------------------------------------------------------------------------
// 2. status matches the maps

#[test]
fn status_matches_the_pinned_maps_with_and_without_the_daemon() {
    if !require_privileges("status_matches_the_pinned_maps_with_and_without_the_daemon") {
        return;
    }
    // fence-timeout bounds the deadline to 2 s after the last confirmation, so a SIGKILLed
    // holder's deadline passes quickly while its 60 s lease still names it.
    let mut c = Cluster::new(62, 2, &vip_tests::agent_binary(), "fence-timeout: 2s\n");
    c.start_agent(0);
    c.start_agent(1);
    c.wait_running();

    // Fenced everywhere before the key exists: deadline 0 in the map.
    for i in 0..2 {
        let (s, m) = assert_status_matches_maps(&c, i);
        assert_eq!((m.deadline_ns, s["answering"].as_bool()), (0, Some(false)));
        assert_text_matches(&c, i, &s);
    }

    let lease = grant(&c, 60);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 answers", || {
        c.probe(PROBE) == vec![mac(&c, 0)]
    });
    assert_eq!(arp_requests(&c, 10), vec![mac(&c, 0); 10]);
    let (s1, m1) = assert_status_matches_maps(&c, 0);
    assert_eq!(s1["answering"], true, "{s1}");
    assert!(
        m1.total().arp_replied >= 11 && m1.total().last_reply_ns > 0,
        "{m1:?}"
    );
    assert_text_matches(&c, 0, &s1);
    let (s2, m2) = assert_status_matches_maps(&c, 1);
    assert_eq!(
        (m2.deadline_ns, s2["answering"].as_bool()),
        (0, Some(false))
    );
    assert!(
        m2.total().arp_dropped >= 11 && m2.total().arp_replied == 0,
        "{m2:?}"
    );
    assert_text_matches(&c, 1, &s2);

    // SIGKILL the holder: its pins stay, its deadline runs out, status reads them without a daemon.
    c.kill_agent(0);
    eventually(
        Duration::from_secs(10),
        "status of the dead holder says fenced",
        || status_json(&c, 0)["answering"] == false,
    );
    let (s1, m1) = assert_status_matches_maps(&c, 0);
    assert_eq!(json_u64(&s1, "deadline_in_ms"), 0, "{s1}");
    assert!(
        m1.deadline_ns != 0 && m1.deadline_ns < monotonic_ns(),
        "fenced by the deadline passing, not by a write (nobody was left to write): {m1:?}"
    );
    assert_text_matches(&c, 0, &s1);
    let dropped = m1.total().arp_dropped;
    assert!(
        c.probe(PROBE).is_empty(),
        "nobody answers: node1's deadline passed"
    );
    let (s1, m1) = assert_status_matches_maps(&c, 0);
    assert_eq!(
        m1.total().arp_dropped,
        dropped + 1,
        "the dead agent's program dropped the probe"
    );
    assert_text_matches(&c, 0, &s1);

    // No pins for an interface: `[]` on stdout with --json, a sentence without it.
    let client_if = c.client.ifname.clone();
    let empty = c.dir.join("no-pins-here");
    for (ifname, pins) in [
        (client_if.as_str(), c.pins.as_path()),
        (c.nodes[1].host.ifname.as_str(), empty.as_path()),
    ] {
        let (ok, out, err) = status_cli(&c, 1, ifname, pins, true);
        assert!(ok, "status --json without pins succeeds: {err}");
        assert_eq!(out, "[]\n", "stdout is exactly an empty JSON array");
        assert!(
            err.contains("no vip-agent data plane pinned"),
            "the reason on stderr: {err}"
        );
        let (ok, out, _) = status_cli(&c, 1, ifname, pins, false);
        assert!(ok);
        assert!(
            out.contains(ifname) && out.contains("no vip-agent data plane pinned"),
            "{out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. capabilities

/// Every capability name the kernel knows (6.18), by number.
const CAPABILITIES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// The capabilities the agent needs on this kernel (Linux >= 5.11), each proven necessary below.
const MINIMAL: [&str; 4] = ["bpf", "net_admin", "net_raw", "perfmon"];

fn unit_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist/systemd")
        .join(name)
}

/// The `CapabilityBoundingSet=` of a unit, as lower-case names without `cap_` (setpriv's form).
/// Several lines add up, as in systemd; an inverted (`~`) or empty set is refused.
fn unit_capabilities(unit: &Path) -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(unit).unwrap_or_else(|e| panic!("read {}: {e}", unit.display()));
    let mut caps = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        let Some(value) = line.strip_prefix("CapabilityBoundingSet=") else {
            continue;
        };
        assert!(
            !value.trim_start().starts_with('~') && !value.trim().is_empty(),
            "{}: this test understands a positive CapabilityBoundingSet only: {line}",
            unit.display()
        );
        for cap in value.split_whitespace() {
            let name = cap
                .strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("{}: {cap} is not a CAP_ name", unit.display()))
                .to_ascii_lowercase();
            assert!(
                CAPABILITIES.contains(&name.as_str()),
                "unknown capability {cap}"
            );
            caps.insert(name);
        }
    }
    assert!(
        !caps.is_empty(),
        "{} has no CapabilityBoundingSet",
        unit.display()
    );
    caps
}

/// setpriv that leaves root with exactly `caps`, as systemd does for a root service with
/// `CapabilityBoundingSet=` and `NoNewPrivileges=yes`: root's permitted and effective sets on exec
/// are its bounding set; nothing inheritable or ambient.
fn setpriv(caps: &BTreeSet<String>) -> Vec<String> {
    let bounding: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "setpriv".into(),
        "--no-new-privs".into(),
        "--inh-caps=-all".into(),
        "--ambient-caps=-all".into(),
        format!("--bounding-set=-all{bounding}"),
        "--".into(),
    ]
}

fn start_with_caps(c: &mut Cluster, i: usize, caps: &BTreeSet<String>) {
    let wrapper = setpriv(caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    c.start_agent_with(i, &wrapper);
}

/// As systemd runs it from `unit`: setpriv with `caps` (capabilities, no_new_privs), then
/// vip-sandbox with the unit's `SystemCallFilter=`, `SystemCallErrorNumber=`,
/// `SystemCallArchitectures=` and `MemoryDenyWriteExecute=` (read from the file).
fn start_under_unit(c: &mut Cluster, i: usize, caps: &BTreeSet<String>, unit: &Path) {
    let mut wrapper = setpriv(caps);
    wrapper.extend([
        env!("CARGO_BIN_EXE_vip-sandbox").to_owned(),
        unit.to_str().expect("UTF-8 path").to_owned(),
        "--".to_owned(),
    ]);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    c.start_agent_with(i, &wrapper);
}

/// The agent of node `i` runs under a seccomp filter (mode 2), as the unit's would.
fn assert_seccomp_filtered(c: &mut Cluster, i: usize) {
    let pid = c.agent(i).pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "the agent runs under the unit's system call filter:\n{status}"
    );
}

/// The capabilities in this process's bounding set.
fn own_bounding_set() -> BTreeSet<String> {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapBnd in /proc/self/status");
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, c)| (*c).to_owned())
        .collect()
}

fn capability_mask(caps: &BTreeSet<String>) -> u64 {
    caps.iter()
        .map(|c| {
            let bit = CAPABILITIES
                .iter()
                .position(|k| k == c)
                .unwrap_or_else(|| panic!("unknown capability {c}"));
            1u64 << bit
        })
        .sum()
}

/// The running agent of node `i` has exactly `caps` (effective, permitted, bounding), nothing
/// inheritable or ambient, and no_new_privs.
fn assert_process_caps(c: &mut Cluster, i: usize, caps: &BTreeSet<String>) {
    let pid = c.agent(i).pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| -> u64 {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:\t")))
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
        u64::from_str_radix(line.trim(), 16).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("proc comm");
    assert_eq!(
        comm.trim(),
        "vip-agent",
        "the guard's PID is the agent itself"
    );
    let mask = capability_mask(caps);
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(field(set), mask, "{set} of the agent is exactly {caps:?}");
    }
    assert_eq!((field("CapInh"), field("CapAmb")), (0, 0));
    assert_eq!(field("NoNewPrivs"), 1);
}

/// Whether an agent log shows an operation the kernel refused for lack of privilege.
fn refused(log: &str) -> bool {
    [
        "Operation not permitted",
        "Permission denied",
        "was refused",
    ]
    .iter()
    .any(|m| log.contains(m))
}

/// The agent started after `from` log bytes: wait until this run logs `vip-agent running`.
fn wait_running_since(c: &Cluster, i: usize, from: usize) {
    eventually(Duration::from_secs(30), "the agent runs", || {
        c.log(i)
            .get(from..)
            .unwrap_or("")
            .contains("vip-agent running")
    });
}

#[test]
fn agent_works_with_exactly_the_units_capability_bounding_set() {
    if !require_privileges("agent_works_with_exactly_the_units_capability_bounding_set") {
        return;
    }
    let caps = unit_capabilities(&unit_file("vip-agent.service"));
    assert_eq!(
        unit_capabilities(&unit_file("vip-agent@.service")),
        caps,
        "vip-agent.service and vip-agent@.service grant the same capabilities"
    );
    // What this test may hand on is bounded by its own bounding set (a container may lack some).
    let available = own_bounding_set();
    let unavailable: Vec<_> = caps.difference(&available).collect();
    if !unavailable.is_empty() {
        eprintln!(
            "NOTE: this environment cannot grant {unavailable:?} (not in the test's bounding set); \
             testing the unit's set without them, which proves they are not needed here"
        );
    }
    let caps: BTreeSet<String> = caps.intersection(&available).cloned().collect();
    assert!(
        MINIMAL.iter().all(|m| caps.contains(*m)),
        "the unit's set (as grantable here) {caps:?} lacks part of {MINIMAL:?}"
    );
    eprintln!("unit CapabilityBoundingSet as tested: {caps:?}");
    // The unit's system call filter and MemoryDenyWriteExecute= too (vip-sandbox), so the rest of
    // its hardening is proven here with the capabilities.
    let unit = unit_file("vip-agent.service");
    let mut c = Cluster::new(63, 2, &vip_tests::agent_binary(), "");
    for i in 0..2 {
        start_under_unit(&mut c, i, &caps, &unit);
    }
    c.wait_running();
    for i in 0..2 {
        assert_process_caps(&mut c, i, &caps);
        assert_seccomp_filtered(&mut c, i);
        assert!(
            c.log(i).contains("system calls allowed")
                && c.log(i).contains("MemoryDenyWriteExecute=yes"),
            "{}",
            c.log(i)
        );
        assert!(
            c.log(i).contains("attached the XDP program"),
            "{}",
            c.log(i)
        );
    }
    assert!(
        c.probe(PROBE).is_empty(),
        "fenced until the key names a node"
    );

    let (l1, l2) = (grant(&c, 60), grant(&c, 60));
    acquire(&c, "node1", l1);
    eventually(
        Duration::from_secs(5),
        "node1 answers with the address",
        || c.probe(PROBE) == vec![mac(&c, 0)] && has_vip_address(&c, 0),
    );
    assert!(!has_vip_address(&c, 1));

    release(&c, "node1");
    acquire(&c, "node2", l2);
    eventually(
        Duration::from_secs(5),
        "node2 answers with the address",
        || c.probe(PROBE) == vec![mac(&c, 1)] && has_vip_address(&c, 1),
    );
    eventually(
        Duration::from_secs(5),
        "node1 fenced, address removed",
        || !has_vip_address(&c, 0),
    );
    assert!(
        !c.log(0).contains("address change failed") && !c.log(0).contains("gratuitous ARP failed"),
        "{}",
        c.log(0)
    );

    // A restart (systemd's Restart=always) adopts the pinned program with the same set.
    c.kill_agent(0);
    let from = c.log(0).len();
    start_under_unit(&mut c, 0, &caps, &unit);
    wait_running_since(&c, 0, from);
    assert!(
        c.log(0)[from..].contains("adopted the pinned XDP program"),
        "{}",
        c.log(0)
    );
    assert_process_caps(&mut c, 0, &caps);
    assert_seccomp_filtered(&mut c, 0);
    release(&c, "node2");
    acquire(&c, "node1", l1);
    eventually(
        Duration::from_secs(5),
        "the restarted node1 answers with the address",
        || c.probe(PROBE) == vec![mac(&c, 0)] && has_vip_address(&c, 0),
    );

    // SIGTERM: fence, remove the address, exit 0, with the same set.
    let status = c.terminate_agent(0).expect("the agent exits on SIGTERM");
    assert!(status.success(), "{status:?}: {}", c.log(0));
    assert!(
        !has_vip_address(&c, 0),
        "the address is removed at shutdown"
    );
    assert!(c.probe(PROBE).is_empty());
    let log = c.log(0) + &c.log(1);
    assert!(
        !refused(&log),
        "nothing is refused with the unit's set: {log}"
    );

    // The filter bites: without `bpf` in SystemCallFilter= the agent cannot even open its pins.
    let dir = std::env::temp_dir().join(format!("vip-ops-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let no_bpf = dir.join("vip-agent.service");
    let text = std::fs::read_to_string(&unit).expect("read the unit");
    let filter = "SystemCallFilter=@system-service bpf\n";
    assert!(text.contains(filter), "the unit's filter line: {filter}");
    std::fs::write(
        &no_bpf,
        text.replace(filter, "SystemCallFilter=@system-service\n"),
    )
    .expect("write the unit without bpf");
    let from = c.log(0).len();
    start_under_unit(&mut c, 0, &caps, &no_bpf);
    let status = c
        .agent(0)
        .wait_timeout(Duration::from_secs(20))
        .expect("without bpf() the agent must exit");
    drop(std::fs::remove_dir_all(&dir));
    let log = c.log(0)[from..].to_owned();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(refused(&log), "the error names the refusal: {log}");
    assert!(!log.contains("vip-agent running"), "{log}");
}

#[test]
fn each_capability_of_the_minimal_set_is_necessary() {
    if !require_privileges("each_capability_of_the_minimal_set_is_necessary") {
        return;
    }
    let minimal: BTreeSet<String> = MINIMAL.iter().map(|&c| c.to_owned()).collect();
    let unit = unit_capabilities(&unit_file("vip-agent.service"));
    assert!(
        minimal.is_subset(&unit),
        "vip-agent.service lacks {:?}",
        minimal.difference(&unit).collect::<Vec<_>>()
    );
    let mut c = Cluster::new(64, 1, &vip_tests::agent_binary(), "");
    let ifname = c.nodes[0].host.ifname.clone();
    // node1 holds the key throughout: an agent that fails never answers even so.
    let lease = grant(&c, 120);
    acquire(&c, "node1", lease);

    // The minimal set works end to end: attach, answer with the address, fence at SIGTERM.
    start_with_caps(&mut c, 0, &minimal);
    c.wait_running();
    assert_process_caps(&mut c, 0, &minimal);
    eventually(
        Duration::from_secs(5),
        "node1 answers with the address",
        || c.probe(PROBE) == vec![mac(&c, 0)] && has_vip_address(&c, 0),
    );
    let status = c.terminate_agent(0).expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}: {}", c.log(0));
    assert!(!has_vip_address(&c, 0) && c.probe(PROBE).is_empty());
    assert!(
        !refused(&c.log(0)),
        "nothing is refused with {minimal:?}: {}",
        c.log(0)
    );

    // Without any one of them, a fresh start fails at once, naming what is missing. (Measured before
    // the agent checked its capabilities itself, the kernel's refusals were: no CAP_BPF, creating
    // the maps; no CAP_NET_ADMIN, BPF_PROG_LOAD of an XDP program; no CAP_PERFMON, the verifier's
    // "pointer comparison prohibited"; no CAP_NET_RAW, the AF_PACKET socket for gratuitous ARP.)
    let expected: [(&str, &[&str]); 4] = [
        ("bpf", &["missing capabilities: CAP_BPF"]),
        ("net_admin", &["missing capabilities: CAP_NET_ADMIN"]),
        ("net_raw", &["missing capabilities: CAP_NET_RAW"]),
        ("perfmon", &["missing capabilities: CAP_PERFMON"]),
    ];
    for (missing, messages) in expected {
        vip_agent::dataplane::detach(&c.pins, &ifname).expect("remove the pins: a fresh start");
        // `detach` takes the link off the interface synchronously (BPF_LINK_DETACH), not when
        // the kernel's workqueue gets round to freeing the unpinned link.
        assert_eq!(
            c.nodes[0].host.ns.xdp_prog_id(&ifname),
            None,
            "the program is gone when detach returns"
        );
        let caps: BTreeSet<String> = minimal.iter().filter(|c| *c != missing).cloned().collect();
        let from = c.log(0).len();
        start_with_caps(&mut c, 0, &caps);
        let status = c
            .agent(0)
            .wait_timeout(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("without CAP_{missing} the agent must exit, it runs"));
        let log = c.log(0)[from..].to_owned();
        eprintln!(
            "without CAP_{}: {status}: {log}",
            missing.to_ascii_uppercase()
        );
        assert_eq!(status.code(), Some(1), "without CAP_{missing}: {log}");
        for m in messages {
            assert!(
                log.contains(m),
                "without CAP_{missing} the error says {m:?}: {log}"
            );
        }
        assert!(!log.contains("vip-agent running"), "{log}");
        assert!(
            c.probe(PROBE).is_empty(),
            "without CAP_{missing} nobody answers"
        );
        assert!(!has_vip_address(&c, 0), "without CAP_{missing} no address");
    }
}

/// A restart that adopts the pinned program (systemd's `Restart=always`) needs neither CAP_BPF nor
/// CAP_PERFMON on this kernel (no map creation, no program load). Before the agent checked its
/// capabilities at startup, an adopting agent without CAP_NET_ADMIN ran, wrote "answering" into the
/// map when the key was its, and only logged that adding the address failed: the XDP program
/// answered ARP for a VIP the kernel did not have, and clients sent their traffic into a black hole.
///
/// What must hold: without CAP_NET_ADMIN the agent refuses to run, naming the capability, and
/// never answers for a VIP it cannot carry.
#[test]
fn adopting_without_cap_net_admin_never_answers_without_the_address() {
    if !require_privileges("adopting_without_cap_net_admin_never_answers_without_the_address") {
        return;
    }
    let minimal: BTreeSet<String> = MINIMAL.iter().map(|&c| c.to_owned()).collect();
    let mut c = Cluster::new(65, 1, &vip_tests::agent_binary(), "");
    start_with_caps(&mut c, 0, &minimal);
    c.wait_running();
    c.kill_agent(0);

    let caps: BTreeSet<String> = minimal
        .iter()
        .filter(|c| *c != "net_admin")
        .cloned()
        .collect();
    let from = c.log(0).len();
    start_with_caps(&mut c, 0, &caps);
    let lease = grant(&c, 120);
    acquire(&c, "node1", lease);
    let until = Instant::now() + Duration::from_secs(5);
    let mut exited = None;
    while Instant::now() < until {
        if let Some(status) = c.agent(0).wait_timeout(Duration::from_millis(10)) {
            exited = Some(status);
            break;
        }
        if !c.probe(PROBE).is_empty() {
            assert!(
                has_vip_address(&c, 0),
                "node1 answers ARP for the VIP without carrying it: {}",
                &c.log(0)[from..]
            );
        }
    }
    let status = exited.unwrap_or_else(|| {
        panic!(
            "the agent without CAP_NET_ADMIN kept running: {}",
            &c.log(0)[from..]
        )
    });
    assert!(!status.success(), "{status:?}");
    let log = &c.log(0)[from..];
    assert!(
        log.contains("missing capabilities: CAP_NET_ADMIN"),
        "the refusal names the capability: {log}"
    );
    assert!(c.probe(PROBE).is_empty(), "nobody answers: {log}");
    assert!(!has_vip_address(&c, 0), "no address: {log}");
}
