//! What the data plane costs the node's own traffic (issue 15.4), in one run:
//!
//! * TCP throughput and request/response latency from a client namespace to the node's own
//!   address over a veth pair, with no program and with the ingress program in each mode (native
//!   XDP, generic XDP, TC ingress), repetitions interleaved (mode order rotated each round) so
//!   that the load the machine carries from others spreads over all of them;
//! * the XDP program's marginal cost per frame against an empty XDP program (`return XDP_PASS`)
//!   in the same `BPF_PROG_TEST_RUN` run, for the pass, reply and drop paths.
//!
//! The load generator is here (no iperf3): one TCP stream of 256 KiB writes for throughput, and a
//! one-byte ping-pong with `TCP_NODELAY` for latency. `cargo xtask bench --dataplane` runs this
//! alone and replaces its section in BENCHMARKS.md. Subnet 10.77.192.0/24.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::Xdp,
};
use vip_agent::{
    clock::monotonic_ns,
    dataplane::{AttachMode, ebpf_object},
};
use vip_common::{
    VipKey, VipState,
    frame::{ARP_OP_REQUEST, XDP_DROP, XDP_PASS, XDP_TX, build_arp, build_ipv4},
    maps::{PROGRAM_NAME, STATE_MAP},
};

use crate::{NetNs, PinRoot, open_dataplane, veth_pair};

/// The heading of this benchmark's section in BENCHMARKS.md (it ends at the next level-2 heading).
pub const SECTION_HEADING: &str = "## What the data plane costs the node's own traffic";

const SUBNET: u8 = 192;
const PORT: u16 = 5201;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Rounds; each measures every mode once.
    pub rounds: usize,
    /// Seconds of each throughput and each latency measurement.
    pub secs: f64,
    /// `BPF_PROG_TEST_RUN` rounds (each runs both programs on every path).
    pub test_run_rounds: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            rounds: 5,
            secs: 3.0,
            test_run_rounds: 5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    None,
    Native,
    Generic,
    Tc,
}

impl Mode {
    const ALL: [Self; 4] = [Self::None, Self::Native, Self::Generic, Self::Tc];

    const fn label(self) -> &'static str {
        match self {
            Self::None => "no program",
            Self::Native => "native XDP",
            Self::Generic => "generic XDP",
            Self::Tc => "TC ingress (tcx)",
        }
    }

    const fn attach(self) -> Option<AttachMode> {
        match self {
            Self::None => None,
            Self::Native => Some(AttachMode::Native),
            Self::Generic => Some(AttachMode::Generic),
            Self::Tc => Some(AttachMode::Tc),
        }
    }
}

#[derive(Default)]
struct Samples {
    gbits: Vec<f64>,
    rr_p50_us: Vec<f64>,
    rr_p99_us: Vec<f64>,
}

/// Run the benchmark; the section for BENCHMARKS.md.
///
/// # Panics
/// When the namespaces or the programs cannot be set up.
#[must_use]
pub fn run(plan: Plan) -> String {
    let load_before = loadavg();
    let started = Instant::now();
    let node = NetNs::new("dpn");
    let client = NetNs::new("dpc");
    let (node_if, client_if) = veth_pair(&node, &client);
    node.add_addr(&node_if, &format!("10.77.{SUBNET}.1/24"));
    client.add_addr(&client_if, &format!("10.77.{SUBNET}.9/24"));
    let server_addr = SocketAddr::from((Ipv4Addr::new(10, 77, SUBNET, 1), PORT));
    let vip = Ipv4Addr::new(10, 77, SUBNET, 100);
    let pins = PinRoot::new();
    let mut samples: Vec<Samples> = Mode::ALL.iter().map(|_| Samples::default()).collect();
    let mut auto_picks = String::new();

    std::thread::scope(|scope| {
        let listener = node.run_in(|| TcpListener::bind(server_addr).expect("bind the server"));
        scope.spawn(move || serve(&listener));
        // `auto` on this veth, as the agent would attach it.
        {
            let dp = open_dataplane(&node, &node_if, AttachMode::Auto, &pins.0);
            auto_picks = dp.attachment().to_string();
            drop(dp);
            pins.detach(&node_if);
        }
        for round in 0..plan.rounds {
            for k in 0..Mode::ALL.len() {
                let i = (k + round) % Mode::ALL.len();
                let mode = Mode::ALL[i];
                let dp = mode.attach().map(|m| {
                    let mut dp = open_dataplane(&node, &node_if, m, &pins.0);
                    dp.register(vip).expect("register the VIP");
                    dp.answer_until(vip, monotonic_ns() + 3_600_000_000_000)
                        .expect("answer");
                    dp
                });
                let secs = plan.secs;
                let (gbits, (p50, p99)) =
                    client.run_in(|| (throughput(server_addr, secs), latency(server_addr, secs)));
                eprintln!(
                    "bench-dataplane: round {round}, {}: {gbits:.2} Gbit/s, rr p50 {p50:.1} us, p99 {p99:.1} us",
                    mode.label()
                );
                samples[i].gbits.push(gbits);
                samples[i].rr_p50_us.push(p50);
                samples[i].rr_p99_us.push(p99);
                drop(dp);
                pins.detach(&node_if);
            }
        }
        // Stop the server.
        client.run_in(|| {
            if let Ok(mut s) = TcpStream::connect(server_addr) {
                let _ = s.write_all(b"Q");
            }
        });
    });
    let marginal = marginal(plan.test_run_rounds);
    let load_after = loadavg();
    render(
        plan,
        &samples,
        &marginal,
        &auto_picks,
        (&load_before, &load_after),
        started.elapsed(),
    )
}

/// The server in the node's namespace: `T` sinks a stream and answers the byte count, `R` echoes
/// single bytes, `Q` ends it.
fn serve(listener: &TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let mut kind = [0u8; 1];
        if s.read_exact(&mut kind).is_err() {
            continue;
        }
        match kind[0] {
            b'T' => {
                let mut buf = vec![0u8; 1 << 18];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_be_bytes());
            }
            b'R' => {
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() {
                    if s.write_all(&b).is_err() {
                        break;
                    }
                }
            }
            _ => return,
        }
    }
}

/// Gbit/s of one TCP stream for `secs`, counted by the receiver, timed to its last byte.
fn throughput(server: SocketAddr, secs: f64) -> f64 {
    let mut s = TcpStream::connect(server).expect("connect (throughput)");
    s.write_all(b"T").expect("kind");
    let buf = vec![0x5au8; 1 << 18];
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    while Instant::now() < until {
        s.write_all(&buf).expect("send");
    }
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut count = [0u8; 8];
    s.read_exact(&mut count).expect("the server's count");
    let elapsed = start.elapsed().as_secs_f64();
    u64::from_be_bytes(count) as f64 * 8.0 / elapsed / 1e9
}

/// p50 and p99 of one-byte round trips (µs) over one connection for `secs`.
fn latency(server: SocketAddr, secs: f64) -> (f64, f64) {
    let mut s = TcpStream::connect(server).expect("connect (latency)");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(b"R").expect("kind");
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut rtts = Vec::new();
    let mut b = [0u8; 1];
    while Instant::now() < until {
        let t = Instant::now();
        s.write_all(&b).expect("request");
        s.read_exact(&mut b).expect("response");
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtts.sort_by(f64::total_cmp);
    (quantile(&rtts, 0.5), quantile(&rtts, 0.99))
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    quantile(&s, 0.5)
}

/// One path of the marginal cost: ns per frame of vip_xdp and of the empty program, per round.
struct Path {
    name: &'static str,
    ours: Vec<f64>,
    empty: Vec<f64>,
}

/// vip_xdp against an empty XDP program, interleaved, in `BPF_PROG_TEST_RUN`.
fn marginal(rounds: usize) -> Vec<Path> {
    let mut ebpf = Ebpf::load(ebpf_object()).expect("load the object");
    let mut state: HashMap<MapData, VipKey, VipState> =
        HashMap::try_from(ebpf.take_map(STATE_MAP).expect("map")).expect("map type");
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .expect("program")
        .try_into()
        .expect("xdp");
    program.load().expect("verifier");
    let ours = program.fd().expect("loaded").as_fd().as_raw_fd();
    let empty = load_empty_xdp();
    let (node, client) = ([10, 77, SUBNET, 1], [10, 77, SUBNET, 9]);
    let (vip, fenced) = ([10, 77, SUBNET, 100], [10, 77, SUBNET, 101]);
    let (mac, client_mac) = ([2, 0, 0, 0, 0xc0, 1], [2, 0, 0, 0, 0xc0, 9]);
    let far = monotonic_ns() + 3_600_000_000_000;
    state
        .insert(VipKey::v4(vip), VipState::answering_until(mac, far), 0)
        .expect("state");
    state
        .insert(VipKey::v4(fenced), VipState::fenced(mac), 0)
        .expect("state");
    let pass = build_ipv4(mac, client_mac, client, node, 6).to_vec();
    let reply = build_arp(
        [0xff; 6],
        client_mac,
        ARP_OP_REQUEST,
        client_mac,
        client,
        [0; 6],
        vip,
    )
    .to_vec();
    let drop = build_ipv4(mac, client_mac, client, fenced, 6).to_vec();
    let mut paths = vec![
        Path {
            name: "pass (IPv4 to the node's own address)",
            ours: Vec::new(),
            empty: Vec::new(),
        },
        Path {
            name: "reply (ARP request for an answered VIP)",
            ours: Vec::new(),
            empty: Vec::new(),
        },
        Path {
            name: "drop (IPv4 to a fenced VIP)",
            ours: Vec::new(),
            empty: Vec::new(),
        },
    ];
    for _ in 0..rounds {
        for (fd, is_ours) in [(ours, true), (empty.as_raw_fd(), false), (ours, true)] {
            let pass_ns = test_run(fd, &pass, 1_000_000, is_ours.then_some(XDP_PASS));
            let drop_ns = test_run(fd, &drop, 1_000_000, is_ours.then_some(XDP_DROP));
            // A reply rewrites the frame, so it is timed one run at a time (the frame is fresh
            // each time), averaged; the empty program is timed the same way.
            let n = 20_000u32;
            let reply_ns = (0..n)
                .map(|_| test_run(fd, &reply, 1, is_ours.then_some(XDP_TX)))
                .sum::<f64>()
                / f64::from(n);
            for (path, ns) in paths.iter_mut().zip([pass_ns, reply_ns, drop_ns]) {
                if is_ours {
                    path.ours.push(ns);
                } else {
                    path.empty.push(ns);
                }
            }
        }
    }
    paths
}

/// `BPF_PROG_LOAD` of `r0 = XDP_PASS; exit`.
fn load_empty_xdp() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    #[repr(C)]
    struct LoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    // mov r0, 2 (XDP_PASS); exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"xdp_empty");
    let attr = LoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the instructions and the
    // license outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            size_of::<LoadAttr>() as u32,
        )
    };
    assert!(
        fd >= 0,
        "load the empty XDP program: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor the kernel just returned, owned by nothing else.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd")) }
}

/// `BPF_PROG_TEST_RUN` of the program `fd` on `frame`, `repeat` times in the kernel: ns per run
/// (the kernel's own average). `expect`: the action it must return.
fn test_run(fd: i32, frame: &[u8], repeat: u32, expect: Option<u32>) -> f64 {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    #[repr(C)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestAttr {
        prog_fd: u32::try_from(fd).expect("fd"),
        retval: 0,
        data_size_in: u32::try_from(frame.len()).expect("len"),
        data_size_out: u32::try_from(out.len()).expect("len"),
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        duration: 0,
        ctx_size_in: 0,
        ctx_size_out: 0,
        ctx_in: 0,
        ctx_out: 0,
        flags: 0,
        cpu: 0,
        batch_size: 0,
        _pad: 0,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the buffers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            size_of::<TestAttr>() as u32,
        )
    };
    assert!(
        rc == 0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    if let Some(expect) = expect {
        assert_eq!(attr.retval, expect, "the program took another path");
    }
    f64::from(attr.duration)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn render(
    plan: Plan,
    samples: &[Samples],
    marginal: &[Path],
    auto_picks: &str,
    load: (&str, &str),
    took: Duration,
) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "{SECTION_HEADING}\n");
    let _ = writeln!(
        s,
        "`cargo xtask bench --dataplane` ({date}; Linux {}, {cpus} CPUs shared with other work: load \
         average {} before, {} after; {:.0} s). One TCP stream from a client namespace to the \
         node's own address over a veth pair, {} rounds of {} s per mode, the mode order rotated \
         each round; the program attached with one answered VIP in its map. Medians over the rounds, \
         with the range. `auto` picks **{auto_picks}** on this veth.\n",
        kernel.trim(),
        load.0,
        load.1,
        took.as_secs_f64(),
        plan.rounds,
        plan.secs
    );
    let base = median(&samples[0].gbits);
    let _ = writeln!(
        s,
        "| mode | throughput, Gbit/s | of no program | request/response p50, µs | p99, µs |\n|---|---|---|---|---|"
    );
    for (mode, smp) in Mode::ALL.iter().zip(samples) {
        let (lo, hi) = smp
            .gbits
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let _ = writeln!(
            s,
            "| {} | {:.2} ({lo:.2} to {hi:.2}) | {:.1}% | {:.1} | {:.1} |",
            mode.label(),
            median(&smp.gbits),
            100.0 * median(&smp.gbits) / base,
            median(&smp.rr_p50_us),
            median(&smp.rr_p99_us)
        );
    }
    let _ = writeln!(
        s,
        "\nOn shared CPUs the rounds of one mode spread widely (the ranges above): a ratio inside \
         the no-program range says \"no cost this run can see\", not a gain or a loss of that size."
    );
    let _ = writeln!(
        s,
        "\nThe program's marginal cost: `vip_xdp` against an empty XDP program (`return XDP_PASS`) \
         in the same `BPF_PROG_TEST_RUN` run, interleaved, {} rounds (pass and drop: 1,000,000 \
         runs in the kernel per measurement; reply: 20,000 single runs, since a reply rewrites its \
         frame). Medians in ns per frame.\n",
        plan.test_run_rounds
    );
    let _ = writeln!(
        s,
        "| path | vip_xdp, ns | empty program, ns | marginal, ns |\n|---|---|---|---|"
    );
    for p in marginal {
        let (o, e) = (median(&p.ours), median(&p.empty));
        let _ = writeln!(s, "| {} | {o:.1} | {e:.1} | {:.1} |", p.name, o - e);
    }
    let _ = writeln!(
        s,
        "\nGoals (reported, not asserted): at least 98% of the no-program throughput in the mode \
         `auto` picks on veth; a marginal pass cost under 10 ns."
    );
    s
}

/// The section under [`SECTION_HEADING`] in `text`, if any (a full run keeps it).
#[must_use]
pub fn existing_section(text: &str) -> Option<String> {
    crate::bench_patroni::section_at(text, SECTION_HEADING)
}

/// `text` (a whole BENCHMARKS.md) with the section under [`SECTION_HEADING`] replaced by
/// `section`, or `section` appended when there is none.
#[must_use]
pub fn splice_section(text: &str, section: &str) -> String {
    crate::bench_patroni::splice_section_at(text, SECTION_HEADING, section)
}

#[cfg(test)]
mod tests {
    use super::{SECTION_HEADING, existing_section, splice_section};

    #[test]
    fn the_section_is_appended_then_replaced_in_place() {
        let text = "# Benchmarks\n\nintro\n\n## Other\n\nother text\n";
        let first = format!("{SECTION_HEADING}\n\nfirst\n");
        let once = splice_section(text, &first);
        assert!(once.starts_with(text.trim_end()), "{once}");
        assert!(once.ends_with(&first), "{once}");
        assert_eq!(existing_section(&once).as_deref(), Some(first.as_str()));
        let with_next = format!("{once}\n## Later\n\nlater\n");
        let second = format!("{SECTION_HEADING}\n\nsecond\n");
        let twice = splice_section(&with_next, &second);
        assert!(!twice.contains("first"), "{twice}");
        assert!(twice.contains("second\n\n## Later\n\nlater\n"), "{twice}");
        assert!(twice.starts_with("# Benchmarks\n\nintro\n\n## Other\n\nother text\n"));
    }
}
