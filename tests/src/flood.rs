//! Load: an ARP flood from the client namespace while the VIP flips between two nodes.
//!
//! A two-node cluster ([`Cluster`], real etcd, real agents serving `/metrics`). From the client, a
//! bounded sender (one thread, a tight `sendto` loop on an `AF_PACKET` socket, `PACKET_QDISC_BYPASS`
//! optional, stopped by a duration and a frame cap) broadcasts ARP requests: half for the VIP, a
//! quarter for addresses of the subnet nobody owns, a quarter for the nodes' own addresses. Each
//! VIP request carries a sequence number in its sender IP (10.77.x.y outside the cluster's /24, as
//! the fault suite's probes do); XDP copies it into the reply's target IP, so every reply names the
//! request it answers and the check uses *when that request was sent*, not when the reply was read
//! (the receiver may lag behind under load). While the flood runs, the lead performs Patroni-style
//! switchovers (release, then acquire with a new lease) between the nodes, scrapes both agents'
//! `/metrics`, and pings node 1's own address from the client.
//!
//! What [`run`] checks (each failure is a violation in the [`FloodReport`]):
//! * every VIP reply is a well-formed ARP reply from a node, for the VIP, to the requester (and the
//!   replies for the nodes' own addresses come from their owner); nothing answers an unowned address;
//! * outside a settle window around each flip (from the release until both nodes' data-plane writes
//!   for it, as their logs date them in kernel monotonic time, plus [`SETTLE_SLACK`] for requests
//!   still queued), every VIP request answered was answered by the key's node only, and each stable
//!   period's holder answered;
//! * the counters in the pinned maps add up: per node, `arp_replied` grew by at least the replies
//!   the client read from it, and `arp_replied + arp_dropped` by at most the VIP requests sent plus the
//!   gratuitous ARP requests of the other node (each node's XDP sees every broadcast; the surplus is
//!   frames lost on the way, reported, not asserted: a veth ring that overflows drops silently);
//! * the agents stay responsive: every `/metrics` scrape during the flood answers, both agents
//!   apply every flip, a final switchover after the flood is followed, and no agent exits;
//! * the ping to node 1's own address is answered during the flood (its latency is reported, idle
//!   vs flood, and not asserted).

use std::{
    fmt::Write as _,
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use vip_agent::clock::monotonic_ns;
use vip_common::{
    frame::{ARP_FRAME_LEN, ARP_OP_REPLY, ARP_OP_REQUEST, ArpView, build_arp},
    maps::VipStats,
};

use crate::cluster::{self, Cluster};

/// Port of the agents' metrics endpoint (on each node's own address).
pub const METRICS_PORT: u16 = 9477;
/// Added to the end of each flip's settle window: requests sent just before a node's data-plane
/// write may still sit in a queue (socket, backlog, veth ring) when it happens.
pub const SETTLE_SLACK: Duration = Duration::from_millis(250);
/// Sequence numbers carried in the VIP requests' sender IP (10.77.x.y, x ≠ the cluster's subnet).
const TAGS: u64 = 255 * 256;
/// The sender records its clock once every `SLOT` VIP requests.
const SLOT: u64 = 64;
/// Lease TTL of every acquire: longer than a run, so no key expires by itself.
const LEASE_TTL: i64 = 120;
const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];
/// `PACKET_STATISTICS` (not exported by every libc version).
const PACKET_STATISTICS: libc::c_int = 6;

/// What to run.
#[derive(Clone, Debug)]
pub struct FloodConfig {
    pub agent_bin: PathBuf,
    /// The cluster's subnet (`10.77.<subnet>.0/24`).
    pub subnet: u8,
    /// How long the sender floods.
    pub duration: Duration,
    /// Switchovers during the flood (evenly spread).
    pub flips: usize,
    /// Bypass the qdisc layer on the sender's socket (`PACKET_QDISC_BYPASS`).
    pub qdisc_bypass: bool,
    /// The sender stops after this many frames whatever the duration.
    pub max_frames: u64,
    /// ICMP echo requests of the idle baseline (10 ms apart).
    pub baseline_pings: u32,
}

impl FloodConfig {
    /// Defaults: four flips, qdisc bypass, at most 60 M frames, 300 baseline pings.
    #[must_use]
    pub fn new(agent_bin: &Path, subnet: u8, duration: Duration) -> Self {
        Self {
            agent_bin: agent_bin.to_path_buf(),
            subnet,
            duration,
            flips: 4,
            qdisc_bypass: true,
            max_frames: 60_000_000,
            baseline_pings: 300,
        }
    }
}

/// ICMP echo round trips (ms) from `ping -i 0.01`.
#[derive(Clone, Debug, Default)]
pub struct PingStats {
    pub sent: u64,
    pub received: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl PingStats {
    fn line(&self) -> String {
        format!(
            "{}/{} answered, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.received, self.sent, self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

/// One switchover during the flood, in kernel monotonic ns.
#[derive(Clone, Debug)]
pub struct Flip {
    pub from: usize,
    pub to: usize,
    /// Just before the release was sent.
    pub release_ns: u64,
    /// When the acquire returned.
    pub acquired_ns: u64,
    /// The old holder's data-plane write (its log), if seen within 10 s.
    pub fenced_ns: Option<u64>,
    /// The new holder's data-plane write (its log), if seen within 10 s.
    pub answering_ns: Option<u64>,
}

impl Flip {
    /// The settle window: from the release to both writes plus [`SETTLE_SLACK`] (open-ended when
    /// a node never applied the flip).
    #[must_use]
    pub fn window(&self) -> (u64, u64) {
        let slack = u64::try_from(SETTLE_SLACK.as_nanos()).unwrap_or(u64::MAX);
        let end = match (self.fenced_ns, self.answering_ns) {
            (Some(f), Some(a)) => f.max(a).max(self.acquired_ns).saturating_add(slack),
            _ => u64::MAX,
        };
        (self.release_ns, end)
    }
}

/// Per node: counter deltas over the flood and what the client saw of it.
#[derive(Clone, Debug, Default)]
pub struct NodeFlood {
    pub name: String,
    /// `arp_replied` delta (pinned per-CPU map, summed).
    pub replied: u64,
    /// `arp_dropped` delta.
    pub dropped: u64,
    /// `conflicts` delta.
    pub conflicts: u64,
    /// VIP replies the client read from this node.
    pub vip_replies: u64,
    /// Replies for this node's own address the client read (kernel ARP).
    pub own_replies: u64,
    /// Gratuitous ARP requests of this node the client saw.
    pub garp_requests: u64,
    /// Upper bound of `replied + dropped`: VIP requests sent + the other nodes' GARP requests.
    pub expected_max: u64,
    /// `rx_dropped` delta of the node's interface (a veth counts there what its peer could not
    /// queue to it, e.g. a full XDP ring).
    pub rx_dropped: u64,
    /// `tx_dropped` delta of the node's interface (XDP_TX frames the veth could not send).
    pub tx_dropped: u64,
    /// `/metrics` scrapes during the flood: answered, failed, slowest (ms).
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    pub scrape_max_ms: f64,
}

/// A stable period between flips (outside every settle window).
#[derive(Clone, Debug, Default)]
pub struct Period {
    pub holder: usize,
    pub requests: u64,
    pub by_holder: u64,
    pub by_other: u64,
}

/// The outcome of [`run`].
#[derive(Clone, Debug, Default)]
pub struct FloodReport {
    pub seconds: f64,
    pub qdisc_bypass: bool,
    pub frames_sent: u64,
    /// `sendto` refusals (ENOBUFS: the first hop dropped it); not counted as sent.
    pub send_errors: u64,
    pub vip_requests: u64,
    pub unowned_requests: u64,
    pub own_requests: u64,
    pub frames_per_s: f64,
    /// ARP replies read by the client (VIP + own addresses).
    pub replies: u64,
    pub replies_per_s: f64,
    pub vip_replies: u64,
    /// Frames the client's receive socket dropped (`PACKET_STATISTICS`).
    pub receiver_drops: u64,
    /// VIP requests of stable periods answered (by anyone), / requests of stable periods.
    pub stable_answered: u64,
    pub stable_requests: u64,
    /// VIP requests answered by two nodes (anywhere, windows included).
    pub double_answers: u64,
    /// Frames dropped on the segment's links during the flood (every link of the client, the
    /// bridge and the nodes).
    pub segment_drops: u64,
    /// No frame was lost where a counter would show it (the segment's links, the receive socket),
    /// so the counters were checked for equality, not only bounds.
    pub exact_counters: bool,
    pub periods: Vec<Period>,
    pub nodes: Vec<NodeFlood>,
    pub flips: Vec<Flip>,
    pub ping_idle: PingStats,
    pub ping_flood: PingStats,
    /// The switchover after the flood: time until the new holder alone answered (ms).
    pub final_switchover_ms: Option<f64>,
    /// Every failed check, described.
    pub violations: Vec<String>,
}

impl FloodReport {
    /// A few lines for the test output.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut s = format!(
            "flood {:.1} s (qdisc bypass {}): {} frames sent ({:.0}/s; {} VIP, {} unowned, {} own), {} send errors\n\
             replies read {} ({:.0}/s; VIP {}), receiver drops {}, VIP requests answered in stable periods {}/{}, double answers {}, counters checked {}\n",
            self.seconds,
            self.qdisc_bypass,
            self.frames_sent,
            self.frames_per_s,
            self.vip_requests,
            self.unowned_requests,
            self.own_requests,
            self.send_errors,
            self.replies,
            self.replies_per_s,
            self.vip_replies,
            self.receiver_drops,
            self.stable_answered,
            self.stable_requests,
            self.double_answers,
            if self.exact_counters {
                "for equality".to_owned()
            } else {
                format!(
                    "against bounds (losses counted: {} on the segment's links)",
                    self.segment_drops
                )
            },
        );
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "  {}: arp_replied +{} arp_dropped +{} (sum {} <= {}; unaccounted {}) conflicts +{} rx_dropped +{} tx_dropped +{}; \
                 VIP replies read {}, own-address replies {}, GARP requests {}; /metrics {} ok {} failed (max {:.1} ms)",
                n.name,
                n.replied,
                n.dropped,
                n.replied + n.dropped,
                n.expected_max,
                n.expected_max.saturating_sub(n.replied + n.dropped),
                n.conflicts,
                n.rx_dropped,
                n.tx_dropped,
                n.vip_replies,
                n.own_replies,
                n.garp_requests,
                n.scrapes_ok,
                n.scrapes_failed,
                n.scrape_max_ms,
            );
        }
        for (k, f) in self.flips.iter().enumerate() {
            let (start, end) = f.window();
            let _ = writeln!(
                s,
                "  flip {k}: node{} -> node{}, settle window {}",
                f.from + 1,
                f.to + 1,
                if end == u64::MAX {
                    "open (a node never applied it)".to_owned()
                } else {
                    format!(
                        "{:.1} ms to both data-plane writes (+ {} ms slack)",
                        ms((end - start)
                            .saturating_sub(u64::try_from(SETTLE_SLACK.as_nanos()).unwrap_or(0))),
                        SETTLE_SLACK.as_millis()
                    )
                }
            );
        }
        let _ = writeln!(s, "  ping idle:  {}", self.ping_idle.line());
        let _ = writeln!(s, "  ping flood: {}", self.ping_flood.line());
        let _ = writeln!(
            s,
            "  final switchover followed after {}",
            self.final_switchover_ms
                .map_or_else(|| "never".to_owned(), |m| format!("{m:.0} ms"))
        );
        let _ = write!(s, "  violations: {}", self.violations.len());
        for v in &self.violations {
            let _ = write!(s, "\n    {v}");
        }
        s
    }

    /// A section for RELIABILITY.md.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut s = String::from("## ARP flood during switchovers\n\n");
        let _ = writeln!(
            s,
            "A bounded sender in the client namespace (one thread, `AF_PACKET`, qdisc bypass {}) broadcast \
             ARP requests for {:.1} s: half for the VIP, a quarter for unowned addresses, a quarter for the \
             nodes' own addresses; {} switchovers (Patroni release + acquire) happened meanwhile.\n",
            if self.qdisc_bypass { "on" } else { "off" },
            self.seconds,
            self.flips.len()
        );
        s.push_str("| measure | value |\n|---|---|\n");
        let rows = [
            (
                "frames sent (rate reached)",
                format!(
                    "{} ({:.0} frames/s; {} refused by the first hop)",
                    self.frames_sent, self.frames_per_s, self.send_errors
                ),
            ),
            (
                "replies read by the client",
                format!(
                    "{} ({:.0}/s), of which VIP {}; receive-socket drops {}",
                    self.replies, self.replies_per_s, self.vip_replies, self.receiver_drops
                ),
            ),
            (
                "VIP requests answered in stable periods",
                format!(
                    "{} of {} ({:.1} %)",
                    self.stable_answered,
                    self.stable_requests,
                    percent(self.stable_answered, self.stable_requests)
                ),
            ),
            (
                "VIP requests answered by two nodes",
                self.double_answers.to_string(),
            ),
            (
                "counters (pinned per-CPU maps, summed)",
                if self.exact_counters {
                    "no loss counted anywhere: per node, replied + dropped = VIP requests sent + the other node's GARP requests, and replied = VIP replies read".to_owned()
                } else {
                    format!(
                        "losses counted on the way ({} frames on the segment's links): per node, VIP replies read ≤ replied, replied + dropped ≤ VIP requests sent + the other node's GARP requests",
                        self.segment_drops
                    )
                },
            ),
            ("ping node 1, idle", self.ping_idle.line()),
            ("ping node 1, during the flood", self.ping_flood.line()),
            (
                "final switchover after the flood followed in",
                self.final_switchover_ms
                    .map_or_else(|| "never".to_owned(), |m| format!("{m:.0} ms")),
            ),
            ("violations", self.violations.len().to_string()),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        s.push_str(
            "\n| node | arp_replied | arp_dropped | sum vs VIP requests + others' GARPs | VIP replies read | own-address replies | /metrics during flood |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "| {} | +{} | +{} | {} of {} ({} lost on the way) | {} | {} | {} ok, {} failed, max {:.1} ms |",
                n.name,
                n.replied,
                n.dropped,
                n.replied + n.dropped,
                n.expected_max,
                n.expected_max.saturating_sub(n.replied + n.dropped),
                n.vip_replies,
                n.own_replies,
                n.scrapes_ok,
                n.scrapes_failed,
                n.scrape_max_ms
            );
        }
        s.push_str(&format!(
                "\n| flip | settle window: release to both nodes' data-plane writes (the check adds {} ms) |\n|---|---|\n",
                SETTLE_SLACK.as_millis()
            ));
        for (k, f) in self.flips.iter().enumerate() {
            let (start, end) = f.window();
            let slack = u64::try_from(SETTLE_SLACK.as_nanos()).unwrap_or(0);
            let _ = writeln!(
                s,
                "| {k}: node{} → node{} | {} |",
                f.from + 1,
                f.to + 1,
                if end == u64::MAX {
                    "never closed".to_owned()
                } else {
                    format!("{:.1} ms", ms((end - start).saturating_sub(slack)))
                }
            );
        }
        if !self.violations.is_empty() {
            s.push_str("\nViolations:\n\n");
            for v in &self.violations {
                let _ = writeln!(s, "* {v}");
            }
        }
        s
    }
}

fn ms(ns: u64) -> f64 {
    Duration::from_nanos(ns).as_secs_f64() * 1e3
}

#[expect(clippy::cast_precision_loss, reason = "a percentage for display")]
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Raw sockets

fn set_int_option(fd: &OwnedFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    crate::sock::set_option(fd, level, name, value)
}

// ---------------------------------------------------------------------------------------------
// The sender

/// Shared between the sender and the receiver: the sender publishes how many VIP requests it has
/// started (before each send, so a reply never names a request the receiver does not know yet)
/// and its clock once every [`SLOT`] VIP requests.
struct SendLog {
    vip_started: AtomicU64,
    slots: Vec<AtomicU64>,
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct SendResult {
    frames: u64,
    errors: u64,
    vip: u64,
    unowned: u64,
    own: u64,
    start_ns: u64,
    end_ns: u64,
}

/// The sender IP carrying VIP request number `seq`: 10.77.x.y, never in the cluster's own /24.
fn tag_ip(subnet: u8, seq: u64) -> [u8; 4] {
    let tag = seq % TAGS;
    let hi = u8::try_from(tag / 256).unwrap_or(0);
    let lo = u8::try_from(tag % 256).unwrap_or(0);
    let hi = if hi >= subnet { hi + 1 } else { hi };
    [10, 77, hi, lo]
}

/// The tag (sequence number modulo [`TAGS`]) carried by `ip`, if it is one of ours.
fn untag(subnet: u8, ip: [u8; 4]) -> Option<u64> {
    let [10, 77, hi, lo] = ip else { return None };
    if hi == subnet {
        return None;
    }
    let hi = if hi > subnet { hi - 1 } else { hi };
    Some(u64::from(hi) * 256 + u64::from(lo))
}

/// The most recent VIP request number `< started` carrying `tag`.
fn resolve(tag: u64, started: u64) -> Option<u64> {
    let last = started.checked_sub(1)?;
    let base = last - last % TAGS + tag;
    if base <= last {
        Some(base)
    } else {
        base.checked_sub(TAGS)
    }
}

struct SenderPlan {
    ifname: String,
    mac: [u8; 6],
    client_ip: [u8; 4],
    subnet: u8,
    vip: [u8; 4],
    node_ips: Vec<[u8; 4]>,
    duration: Duration,
    max_frames: u64,
    qdisc_bypass: bool,
}

/// Flood until the duration or the frame cap is reached (or `log.stop`). One frame in two asks for
/// the VIP, one in four for an unowned address (.150–.199), one in four for a node's own address.
fn send_flood(plan: &SenderPlan, log: &SendLog) -> io::Result<SendResult> {
    let (fd, ifindex) = crate::arp::packet_socket(&plan.ifname, 0)?;
    if plan.qdisc_bypass {
        set_int_option(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)?;
    }
    let mac = plan.mac;
    let dest = crate::arp::sockaddr_ll(ifindex, ETH_P_ARP);
    let request = |spa: [u8; 4], tpa: [u8; 4]| {
        build_arp(BROADCAST, mac, ARP_OP_REQUEST, mac, spa, [0; 6], tpa)
    };
    let mut vip_frame = request(tag_ip(plan.subnet, 0), plan.vip);
    let unowned: Vec<_> = (150..200)
        .map(|last| {
            let [a, b, c, _] = plan.vip;
            request(plan.client_ip, [a, b, c, last])
        })
        .collect();
    let own: Vec<_> = plan
        .node_ips
        .iter()
        .map(|ip| request(plan.client_ip, *ip))
        .collect();

    let mut r = SendResult {
        start_ns: monotonic_ns(),
        ..SendResult::default()
    };
    let deadline = Instant::now() + plan.duration;
    let max_vip = u64::try_from(log.slots.len()).unwrap_or(0) * SLOT;
    let mut attempts: u64 = 0;
    loop {
        if attempts.is_multiple_of(256)
            && (Instant::now() >= deadline || log.stop.load(Ordering::Relaxed))
        {
            break;
        }
        attempts += 1;
        if r.frames >= plan.max_frames || r.vip >= max_vip {
            break;
        }
        let kind = r.frames % 4;
        let frame: &[u8; ARP_FRAME_LEN] = match kind {
            0 | 2 => {
                vip_frame[28..32].copy_from_slice(&tag_ip(plan.subnet, r.vip));
                if r.vip.is_multiple_of(SLOT) {
                    let slot = usize::try_from(r.vip / SLOT).unwrap_or(usize::MAX);
                    if let Some(s) = log.slots.get(slot) {
                        s.store(monotonic_ns(), Ordering::Relaxed);
                    }
                }
                log.vip_started.store(r.vip + 1, Ordering::Release);
                &vip_frame
            }
            1 => &unowned[usize::try_from((r.frames / 4) % 50).unwrap_or(0)],
            _ => &own[usize::try_from(r.frames / 4).unwrap_or(0) % own.len()],
        };
        // SAFETY: the frame and the address are valid for their lengths.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const dest).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {
                    r.errors += 1;
                    continue;
                }
                _ => return Err(e),
            }
        }
        match kind {
            0 | 2 => r.vip += 1,
            1 => r.unowned += 1,
            _ => r.own += 1,
        }
        r.frames += 1;
    }
    r.end_ns = monotonic_ns();
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// The receiver

struct ReceiverPlan {
    ifname: String,
    client_mac: [u8; 6],
    client_ip: [u8; 4],
    subnet: u8,
    vip: [u8; 4],
    node_macs: Vec<[u8; 6]>,
    node_ips: Vec<[u8; 4]>,
}

#[derive(Debug, Default)]
struct Received {
    /// Per VIP request number: bit i = node i answered it.
    answered: Vec<u8>,
    vip_replies: Vec<u64>,
    own_replies: Vec<u64>,
    garp_requests: Vec<u64>,
    /// Same node answering the same VIP request twice (a misattributed tag).
    repeats: u64,
    unattributed: u64,
    unowned_replies: u64,
    malformed: u64,
    first_malformed: Option<String>,
    socket_drops: u64,
}

fn receive(plan: &ReceiverPlan, log: &SendLog, ready: &AtomicBool) -> io::Result<Received> {
    let (fd, _) = crate::arp::packet_socket(&plan.ifname, ETH_P_ARP)?;
    set_int_option(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
    set_int_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20)?;
    let nodes = plan.node_macs.len();
    let mut got = Received {
        vip_replies: vec![0; nodes],
        own_replies: vec![0; nodes],
        garp_requests: vec![0; nodes],
        ..Received::default()
    };
    ready.store(true, Ordering::Release);
    let mut buf = [0u8; 2048];
    let malformed = |got: &mut Received, why: String| {
        got.malformed += 1;
        got.first_malformed.get_or_insert(why);
    };
    // Passes after the stop: the queue is drained once more, then the loop ends even if
    // unrelated ARP keeps arriving.
    let mut after_stop = 0;
    loop {
        let stopping = log.stop.load(Ordering::Acquire);
        if stopping {
            after_stop += 1;
            if after_stop > 3 {
                break;
            }
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, 50) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 && stopping {
            break;
        }
        loop {
            // SAFETY: buffer valid for its length.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            let len = usize::try_from(n).unwrap_or(0);
            let Some(frame) = buf[..len].first_chunk::<ARP_FRAME_LEN>() else {
                continue;
            };
            let Some(arp) = ArpView::parse(frame) else {
                continue;
            };
            let eth_dst: [u8; 6] = frame[0..6].try_into().unwrap_or_default();
            let eth_src: [u8; 6] = frame[6..12].try_into().unwrap_or_default();
            let node = plan.node_macs.iter().position(|m| *m == arp.sha);
            // A gratuitous ARP (request or reply) for the VIP, broadcast.
            if eth_dst == BROADCAST && arp.spa == plan.vip && arp.tpa == plan.vip {
                if arp.op == ARP_OP_REQUEST
                    && let Some(i) = node
                {
                    got.garp_requests[i] += 1;
                }
                continue;
            }
            if arp.op != ARP_OP_REPLY || eth_dst != plan.client_mac {
                continue;
            }
            let [a, b, c, last] = arp.spa;
            if arp.spa == plan.vip {
                let well_formed =
                    arp.tha == plan.client_mac && eth_src == arp.sha && node.is_some();
                let tag = untag(plan.subnet, arp.tpa);
                match (well_formed, node, tag) {
                    (true, Some(i), Some(tag)) => {
                        got.vip_replies[i] += 1;
                        let started = log.vip_started.load(Ordering::Acquire);
                        let Some(seq) = resolve(tag, started) else {
                            got.unattributed += 1;
                            continue;
                        };
                        let seq = usize::try_from(seq).unwrap_or(usize::MAX);
                        if got.answered.len() <= seq {
                            got.answered.resize(seq + 1, 0);
                        }
                        let bit = 1u8 << i;
                        if got.answered[seq] & bit != 0 {
                            got.repeats += 1;
                        }
                        got.answered[seq] |= bit;
                    }
                    _ => malformed(
                        &mut got,
                        format!(
                            "VIP reply eth {} -> {}, sha {} tha {} tpa {}",
                            crate::format_mac(&eth_src),
                            crate::format_mac(&eth_dst),
                            crate::format_mac(&arp.sha),
                            crate::format_mac(&arp.tha),
                            Ipv4Addr::from(arp.tpa)
                        ),
                    ),
                }
            } else if let Some(i) = plan.node_ips.iter().position(|ip| *ip == arp.spa) {
                if node == Some(i)
                    && eth_src == arp.sha
                    && arp.tha == plan.client_mac
                    && arp.tpa == plan.client_ip
                {
                    got.own_replies[i] += 1;
                } else {
                    malformed(
                        &mut got,
                        format!(
                            "reply for node{}'s address from {} to {}",
                            i + 1,
                            crate::format_mac(&arp.sha),
                            Ipv4Addr::from(arp.tpa)
                        ),
                    );
                }
            } else if [a, b, c] == plan.vip[..3] && (150..200).contains(&last) {
                got.unowned_replies += 1;
            }
        }
    }
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut size = size_of::<libc::tpacket_stats>() as u32;
    // SAFETY: PACKET_STATISTICS fills a tpacket_stats of the given size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_STATISTICS,
            (&raw mut stats).cast(),
            &raw mut size,
        )
    };
    if rc == 0 {
        got.socket_drops = u64::from(stats.tp_drops);
    }
    Ok(got)
}

// ---------------------------------------------------------------------------------------------
// Cluster helpers (local copies of the integration tests' helpers)

fn grant(c: &Cluster, ttl: i64) -> i64 {
    c.etcd(async |e| e.lease_grant(ttl, None).await.expect("lease").id())
}

fn acquire(c: &Cluster, i: usize, lease: i64) -> bool {
    let (key, name) = (c.key.clone(), c.nodes[i].name.clone());
    c.etcd(async |e| cluster::acquire(e, &key, &name, lease).await)
        .is_some()
}

fn release(c: &Cluster, i: usize) -> bool {
    let (key, name) = (c.key.clone(), c.nodes[i].name.clone());
    c.etcd(async |e| cluster::release(e, &key, &name).await)
}

/// Poll `cond` every 20 ms until it holds or `limit` passes; whether it held.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` from inside node `i`'s namespace to its metrics address: (status code, body).
fn http_get(c: &Cluster, i: usize, path: &str) -> io::Result<(u16, String)> {
    let addr = SocketAddr::from((c.nodes[i].host.ip, METRICS_PORT));
    let response = c.nodes[i].host.ns.run_in(|| -> io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("no header end"))?;
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("no status line"))?;
    Ok((code, body.to_owned()))
}

/// `ping -n -i 0.01 -c count -w deadline_s` from the client to `ip`; the round trips of the
/// answered echoes.
fn ping(c: &Cluster, ip: Ipv4Addr, count: u32, deadline_s: u64) -> PingStats {
    let deadline = deadline_s.to_string();
    let out = c.client.ns.exec(
        "ping",
        &[
            "-n",
            "-i",
            "0.01",
            "-c",
            &count.to_string(),
            "-W",
            "1",
            "-w",
            &deadline,
            &ip.to_string(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    rtts.sort_by(f64::total_cmp);
    let sent = text
        .lines()
        .find_map(|l| {
            l.contains("packets transmitted")
                .then(|| l.split_whitespace().next()?.parse().ok())?
        })
        .unwrap_or(0);
    let at = |p: f64| -> f64 {
        if rtts.is_empty() {
            return 0.0;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank within the vector"
        )]
        let rank = ((p * rtts.len() as f64).ceil() as usize).clamp(1, rtts.len());
        rtts[rank - 1]
    };
    PingStats {
        sent,
        received: u64::try_from(rtts.len()).unwrap_or(u64::MAX),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: rtts.last().copied().unwrap_or(0.0),
    }
}

/// `(rx_dropped, tx_dropped)` of `ifname` in `ns`.
fn link_drops(ns: &crate::NetNs, ifname: &str) -> (u64, u64) {
    let json = ns.ip(&["-s", "-j", "link", "show", "dev", ifname]);
    let v = serde_json::from_str::<serde_json::Value>(&json).unwrap_or_default();
    let link = v.get(0).cloned().unwrap_or_default();
    (dropped(&link, "rx"), dropped(&link, "tx"))
}

/// Frames dropped so far (rx + tx, `ip -s link`) on every link of the segment: the client's, the
/// bridge's ports, the nodes'. A frame lost on the client's side of the bridge (a full backlog
/// under load) shows only there.
fn segment_drops(c: &Cluster) -> u64 {
    c.segment_namespaces()
        .map(|ns| {
            let json = ns.ip(&["-s", "-j", "link", "show"]);
            let links = serde_json::from_str::<serde_json::Value>(&json).unwrap_or_default();
            links.as_array().map_or(0, |links| {
                links
                    .iter()
                    .flat_map(|l| ["rx", "tx"].map(|dir| dropped(l, dir)))
                    .sum::<u64>()
            })
        })
        .sum()
}

/// `stats64.<dir>.dropped` of one link of `ip -s -j link show`.
fn dropped(link: &serde_json::Value, dir: &str) -> u64 {
    link.get("stats64")
        .and_then(|s| s.get(dir)?.get("dropped")?.as_u64())
        .unwrap_or(0)
}

fn stats(c: &Cluster, i: usize) -> VipStats {
    c.dataplane_snapshot(i).map(|s| s.stats).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The run

/// Build the cluster, flood, flip, measure, check. Never panics on a failed check: those are the
/// report's violations.
///
/// # Panics
/// When the cluster cannot be built or a socket cannot be opened.
#[must_use]
pub fn run(config: &FloodConfig) -> FloodReport {
    let mut c = Cluster::new(config.subnet, 2, &config.agent_bin, "verbose: true\n");
    for node in &c.nodes {
        let mut text = std::fs::read_to_string(&node.config).expect("read config");
        let _ = writeln!(text, "metrics-address: {}:{METRICS_PORT}", node.host.ip);
        std::fs::write(&node.config, text).expect("write config");
    }
    c.start_agent(0);
    c.start_agent(1);
    c.wait_running();
    let mut report = FloodReport {
        qdisc_bypass: config.qdisc_bypass,
        ..FloodReport::default()
    };
    let mut violations = Vec::new();
    let n = c.nodes.len();

    // node1 holds the VIP; its gratuitous ARP bursts end before anything is counted.
    let lease = grant(&c, LEASE_TTL);
    assert!(acquire(&c, 0, lease), "node1 could not acquire the key");
    let first_holder = wait_for(Duration::from_secs(10), || {
        c.probe(Duration::from_millis(150)) == [c.nodes[0].host.mac]
    });
    assert!(first_holder, "node1 never answered alone before the flood");
    let bursts = |c: &Cluster, i: usize| c.log(i).matches("gratuitous ARP burst done").count();
    // One log line per takeover, after its last announcement (1.1 s after it by default).
    let garp_bursts = 1;
    assert!(
        wait_for(Duration::from_secs(10), || bursts(&c, 0) >= garp_bursts),
        "node1's gratuitous ARP bursts did not end"
    );
    let mut bursts_expected = [garp_bursts, 0];

    let ping_target = c.nodes[0].host.ip;
    report.ping_idle = ping(
        &c,
        ping_target,
        config.baseline_pings,
        u64::from(config.baseline_pings / 100 + 5),
    );

    let log = SendLog {
        vip_started: AtomicU64::new(0),
        slots: (0..config.max_frames / 2 / SLOT + 1)
            .map(|_| AtomicU64::new(0))
            .collect(),
        stop: AtomicBool::new(false),
    };
    let node_macs: Vec<[u8; 6]> = c.nodes.iter().map(|n| n.host.mac).collect();
    let node_ips: Vec<[u8; 4]> = c.nodes.iter().map(|n| n.host.ip.octets()).collect();
    let send_plan = SenderPlan {
        ifname: c.client.ifname.clone(),
        mac: c.client.mac,
        client_ip: c.client.ip.octets(),
        subnet: config.subnet,
        vip: c.vip.octets(),
        node_ips: node_ips.clone(),
        duration: config.duration,
        max_frames: config.max_frames,
        qdisc_bypass: config.qdisc_bypass,
    };
    let receive_plan = ReceiverPlan {
        ifname: c.client.ifname.clone(),
        client_mac: c.client.mac,
        client_ip: c.client.ip.octets(),
        subnet: config.subnet,
        vip: c.vip.octets(),
        node_macs: node_macs.clone(),
        node_ips,
    };
    let drops_before: Vec<(u64, u64)> = c
        .nodes
        .iter()
        .map(|n| link_drops(&n.host.ns, &n.host.ifname))
        .collect();
    let segment_drops_before = segment_drops(&c);
    let receiver_ready = AtomicBool::new(false);
    let flooding = AtomicBool::new(true);
    let flood_count = u32::try_from(config.duration.as_millis() / 10)
        .unwrap_or(u32::MAX)
        .saturating_sub(150);
    // Stop pinging when the flood stops, even if the pings fell behind.
    let ping_deadline = config.duration.as_secs().saturating_sub(1).max(1);
    let mut flips = Vec::new();
    let mut before = Vec::new();
    let mut after = Vec::new();

    let (sent, received, ping_flood, scrapes) = std::thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            c.client
                .ns
                .run_in(|| receive(&receive_plan, &log, &receiver_ready))
        });
        while !receiver_ready.load(Ordering::Acquire) && !receiver.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        before = (0..n).map(|i| stats(&c, i)).collect();
        let sender = scope.spawn(|| c.client.ns.run_in(|| send_flood(&send_plan, &log)));
        let flood_start = Instant::now();
        let pinger = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            ping(&c, ping_target, flood_count, ping_deadline)
        });
        let scraper = scope.spawn(|| {
            let mut per_node = vec![(0u64, 0u64, 0f64); n];
            while flooding.load(Ordering::Relaxed) {
                for (i, s) in per_node.iter_mut().enumerate() {
                    let t = Instant::now();
                    match http_get(&c, i, "/metrics") {
                        Ok((200, body)) if body.contains("vip_agent_answering") => {
                            s.0 += 1;
                            s.2 = s.2.max(t.elapsed().as_secs_f64() * 1e3);
                        }
                        _ => s.1 += 1,
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            per_node
        });

        // The lead: switchovers spread over the flood.
        let mut holder = 0;
        for k in 0..config.flips {
            let at = config.duration.mul_f64(
                f64::from(u32::try_from(k + 1).unwrap_or(1))
                    / f64::from(u32::try_from(config.flips + 1).unwrap_or(1)),
            );
            if let Some(wait) = at.checked_sub(flood_start.elapsed()) {
                std::thread::sleep(wait);
            }
            let to = 1 - holder;
            let lease = grant(&c, LEASE_TTL);
            let release_ns = monotonic_ns();
            let released = release(&c, holder);
            let acquired = acquire(&c, to, lease);
            let acquired_ns = monotonic_ns();
            if !released || !acquired {
                violations.push(format!(
                    "flip {k}: release by node{} {released}, acquire by node{} {acquired}",
                    holder + 1,
                    to + 1
                ));
            }
            let mut flip = Flip {
                from: holder,
                to,
                release_ns,
                acquired_ns,
                fenced_ns: None,
                answering_ns: None,
            };
            wait_for(Duration::from_secs(10), || {
                flip.fenced_ns = c.log_event_after(holder, "data plane fenced", release_ns);
                flip.answering_ns = c.log_event_after(to, "data plane answering", release_ns);
                flip.fenced_ns.is_some() && flip.answering_ns.is_some()
            });
            if flip.fenced_ns.is_none() || flip.answering_ns.is_none() {
                violations.push(format!(
                    "flip {k}: not applied within 10 s (node{} fenced {:?}, node{} answering {:?})",
                    holder + 1,
                    flip.fenced_ns,
                    to + 1,
                    flip.answering_ns
                ));
            }
            flips.push(flip);
            bursts_expected[to] += garp_bursts;
            holder = to;
        }
        let sent = sender.join().expect("sender thread");
        flooding.store(false, Ordering::Relaxed);
        // Let the last replies in and the last gratuitous ARP bursts end, then count.
        std::thread::sleep(Duration::from_millis(300));
        for (i, want) in bursts_expected.iter().enumerate() {
            if !wait_for(Duration::from_secs(10), || bursts(&c, i) >= *want) {
                violations.push(format!(
                    "node{}: {want} gratuitous ARP bursts expected, {} logged",
                    i + 1,
                    bursts(&c, i)
                ));
            }
        }
        after = (0..n).map(|i| stats(&c, i)).collect();
        log.stop.store(true, Ordering::Release);
        let received = receiver.join().expect("receiver thread");
        let ping_flood = pinger.join().expect("ping thread");
        let scrapes = scraper.join().expect("scraper thread");
        (sent, received, ping_flood, scrapes)
    });
    let sent = sent.expect("the flood sender failed");
    let got = received.expect("the receiver failed");
    report.ping_flood = ping_flood;
    let holder_after_flood = flips.last().map_or(0, |f: &Flip| f.to);

    // The final switchover, after the flood: the new holder alone answers.
    let to = 1 - holder_after_flood;
    let lease = grant(&c, LEASE_TTL);
    let t = Instant::now();
    if release(&c, holder_after_flood) && acquire(&c, to, lease) {
        let mac = c.nodes[to].host.mac;
        if wait_for(Duration::from_secs(10), || {
            c.probe(Duration::from_millis(150)) == [mac]
        }) {
            report.final_switchover_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    if report.final_switchover_ms.is_none() {
        violations.push(format!(
            "the final switchover to node{} was not followed within 10 s",
            to + 1
        ));
    }
    for i in 0..n {
        if let Some(status) = c.agent_exited(i) {
            violations.push(format!("node{}'s agent exited: {status}", i + 1));
        }
    }

    // Rates.
    let seconds = Duration::from_nanos(sent.end_ns.saturating_sub(sent.start_ns)).as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "rates for display")]
    let rate = |count: u64| {
        if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        }
    };
    report.seconds = seconds;
    report.frames_sent = sent.frames;
    report.send_errors = sent.errors;
    report.vip_requests = sent.vip;
    report.unowned_requests = sent.unowned;
    report.own_requests = sent.own;
    report.frames_per_s = rate(sent.frames);
    report.vip_replies = got.vip_replies.iter().sum();
    report.replies = report.vip_replies + got.own_replies.iter().sum::<u64>();
    report.replies_per_s = rate(report.replies);
    report.receiver_drops = got.socket_drops;

    // Well-formed answers, nothing for unowned addresses.
    if got.malformed > 0 {
        violations.push(format!(
            "{} malformed or misdirected replies, e.g. {}",
            got.malformed,
            got.first_malformed.as_deref().unwrap_or("?")
        ));
    }
    if got.unowned_replies > 0 {
        violations.push(format!(
            "{} replies for addresses nobody owns",
            got.unowned_replies
        ));
    }
    if got.unattributed + got.repeats > 0 {
        violations.push(format!(
            "{} VIP replies named no request sent, {} named one already answered by the same node",
            got.unattributed, got.repeats
        ));
    }

    // Who answered each VIP request, against who held the key when it was sent.
    let windows: Vec<(u64, u64)> = flips.iter().map(Flip::window).collect();
    let holder_at = |t: u64| -> Option<usize> {
        let mut holder = 0;
        for (f, (start, end)) in flips.iter().zip(&windows) {
            if t < *start {
                return Some(holder);
            }
            if t <= *end {
                return None;
            }
            holder = f.to;
        }
        Some(holder)
    };
    let period_of = |t: u64| windows.iter().filter(|(_, end)| *end < t).count();
    let mut periods: Vec<Period> = (0..=flips.len())
        .map(|k| Period {
            holder: if k == 0 { 0 } else { flips[k - 1].to },
            ..Period::default()
        })
        .collect();
    let mut wrong = 0u64;
    let mut first_wrong = None;
    for (seq, bits) in (0..sent.vip).map(|s| {
        let bits = usize::try_from(s)
            .ok()
            .and_then(|s| got.answered.get(s))
            .copied()
            .unwrap_or(0);
        (s, bits)
    }) {
        if bits.count_ones() > 1 {
            report.double_answers += 1;
        }
        // The block of SLOT requests this one belongs to, sent between two clock readings.
        let block = usize::try_from(seq / SLOT).unwrap_or(usize::MAX);
        let start = log
            .slots
            .get(block)
            .map_or(0, |s| s.load(Ordering::Relaxed));
        let end = log
            .slots
            .get(block + 1)
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|t| *t != 0)
            .unwrap_or(sent.end_ns);
        let (Some(h1), Some(h2)) = (holder_at(start), holder_at(end)) else {
            continue;
        };
        let (p1, p2) = (period_of(start), period_of(end));
        if h1 != h2 || p1 != p2 {
            continue;
        }
        let period = &mut periods[p1];
        period.requests += 1;
        report.stable_requests += 1;
        if bits != 0 {
            report.stable_answered += 1;
        }
        if bits & (1 << h1) != 0 {
            period.by_holder += 1;
        }
        if bits & !(1 << h1) != 0 {
            period.by_other += 1;
            wrong += 1;
            first_wrong.get_or_insert(seq);
        }
    }
    if wrong > 0 {
        violations.push(format!(
            "{wrong} VIP requests sent outside every settle window were answered by a node that did \
             not hold the key (first: request {})",
            first_wrong.unwrap_or(0)
        ));
    }
    for (k, p) in periods.iter().enumerate() {
        if p.requests > 0 && p.by_holder == 0 {
            violations.push(format!(
                "stable period {k}: node{} held the key but answered none of {} VIP requests",
                p.holder + 1,
                p.requests
            ));
        }
    }

    // The counters add up. Every node's XDP sees every broadcast request (a request it does not
    // answer it drops and counts), so without loss on the way each node's replied + dropped is
    // exactly the VIP requests sent plus the other node's gratuitous ARP requests, and the client
    // reads every reply counted. Losses only make the bounds below strict, and each possible one
    // leaves a trace: a refused first hop fails `sendto` (not counted as sent), a full veth ring
    // or backlog counts in the receiving link's rx_dropped (any link of the segment: the node's,
    // a bridge port, the client's), a failed XDP_TX in the node's tx_dropped, a full receive
    // buffer in the socket's drops. Without any trace, equality is required.
    let drops_after: Vec<(u64, u64)> = c
        .nodes
        .iter()
        .map(|n| link_drops(&n.host.ns, &n.host.ifname))
        .collect();
    let link_losses = segment_drops(&c).saturating_sub(segment_drops_before);
    report.segment_drops = link_losses;
    report.exact_counters = link_losses == 0 && got.socket_drops == 0;
    for i in 0..n {
        let d = |f: fn(&VipStats) -> u64| f(&after[i]).wrapping_sub(f(&before[i]));
        let others_garps: u64 = (0..n)
            .filter(|j| *j != i)
            .map(|j| got.garp_requests[j])
            .sum();
        let (s_ok, s_failed, s_max) = scrapes[i];
        let node = NodeFlood {
            name: c.nodes[i].name.clone(),
            replied: d(|s| s.replied),
            dropped: d(|s| s.requests_dropped),
            conflicts: d(|s| s.conflicts),
            vip_replies: got.vip_replies[i],
            own_replies: got.own_replies[i],
            garp_requests: got.garp_requests[i],
            expected_max: sent.vip + others_garps,
            rx_dropped: drops_after[i].0.saturating_sub(drops_before[i].0),
            tx_dropped: drops_after[i].1.saturating_sub(drops_before[i].1),
            scrapes_ok: s_ok,
            scrapes_failed: s_failed,
            scrape_max_ms: s_max,
        };
        if node.replied < node.vip_replies {
            violations.push(format!(
                "{}: arp_replied grew by {} but the client read {} VIP replies from it",
                node.name, node.replied, node.vip_replies
            ));
        }
        if node.replied + node.dropped > node.expected_max {
            violations.push(format!(
                "{}: arp_replied + arp_dropped grew by {} > {} VIP requests sent + {} GARP requests of the other node",
                node.name,
                node.replied + node.dropped,
                sent.vip,
                others_garps
            ));
        }
        if report.exact_counters && node.replied + node.dropped != node.expected_max {
            violations.push(format!(
                "{}: arp_replied + arp_dropped grew by {}, not the {} VIP requests sent + {} GARP \
                 requests of the other node, though no loss was counted anywhere",
                node.name,
                node.replied + node.dropped,
                sent.vip,
                others_garps
            ));
        }
        if report.exact_counters && node.replied != node.vip_replies {
            violations.push(format!(
                "{}: arp_replied grew by {} but the client read {} VIP replies from it, though no \
                 loss was counted anywhere",
                node.name, node.replied, node.vip_replies
            ));
        }
        if node.scrapes_failed > 0 || node.scrapes_ok == 0 {
            violations.push(format!(
                "{}: /metrics answered {} scrapes during the flood, failed {}",
                node.name, node.scrapes_ok, node.scrapes_failed
            ));
        }
        report.nodes.push(node);
    }
    if report.ping_flood.received == 0 {
        violations.push(format!(
            "no ICMP echo to node1's own address was answered during the flood ({} sent)",
            report.ping_flood.sent
        ));
    }
    report.periods = periods;
    report.flips = flips;
    report.violations = violations;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_read_per_direction_from_ip_json() {
        let json = r#"[{"ifname":"vb1","stats64":{"rx":{"packets":9,"dropped":3},
            "tx":{"packets":7,"dropped":2}}},{"ifname":"lo"}]"#;
        let links: serde_json::Value = serde_json::from_str(json).expect("json");
        assert_eq!(dropped(&links[0], "rx"), 3);
        assert_eq!(dropped(&links[0], "tx"), 2);
        // A link without statistics counts nothing rather than failing the run.
        assert_eq!(dropped(&links[1], "rx"), 0);
    }

    #[test]
    fn tags_round_trip_and_avoid_the_cluster_subnet() {
        for subnet in [0, 72, 254] {
            for seq in [0, 1, 255, 256, TAGS - 1, TAGS, 3 * TAGS + 17] {
                let ip = tag_ip(subnet, seq);
                assert_ne!(ip[2], subnet, "seq {seq} lands in the cluster's /24");
                assert_eq!(untag(subnet, ip), Some(seq % TAGS));
            }
            assert_eq!(untag(subnet, [10, 77, subnet, 9]), None);
            assert_eq!(untag(subnet, [10, 78, 0, 1]), None);
        }
    }

    #[test]
    fn a_tag_resolves_to_the_latest_request_started() {
        assert_eq!(resolve(0, 0), None, "nothing sent yet");
        assert_eq!(resolve(0, 1), Some(0));
        assert_eq!(resolve(5, 5), None, "request 5 not started");
        assert_eq!(resolve(5, 6), Some(5));
        assert_eq!(resolve(5, TAGS + 5), Some(5));
        assert_eq!(resolve(5, TAGS + 6), Some(TAGS + 5));
        assert_eq!(resolve(TAGS - 1, TAGS + 3), Some(TAGS - 1));
    }

    #[test]
    fn a_flip_window_closes_after_both_writes_plus_the_slack() {
        let slack = u64::try_from(SETTLE_SLACK.as_nanos()).expect("fits");
        let mut flip = Flip {
            from: 0,
            to: 1,
            release_ns: 100,
            acquired_ns: 200,
            fenced_ns: Some(150),
            answering_ns: Some(300),
        };
        assert_eq!(flip.window(), (100, 300 + slack));
        flip.answering_ns = None;
        assert_eq!(
            flip.window(),
            (100, u64::MAX),
            "never applied: never closes"
        );
    }
}
