//! The egress fence in network namespaces (issue 15, item 2): the TC egress program is attached,
//! pinned, adopted and detached together with the XDP program, shares its maps, and keeps a fenced
//! old primary from sending anything from the VIP, here on a TCP connection a client opened before
//! the switchover, while the new primary serves.
//!
//! Subnets 10.77.165.0/24 and 10.77.166.0/24.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{SchedClassifier, TcAttachType},
};
use vip_agent::{
    clock::monotonic_ns,
    dataplane::{self, AttachMode, EgressFence, Origin},
};
use vip_common::{
    VipKey, VipState,
    maps::{EGRESS_PROGRAM_NAME, EGRESS_STATS_MAP, STATE_MAP},
};
use vip_tests::{
    NetNs, PinRoot,
    cluster::{self, Cluster},
    eventually, open_dataplane, require_privileges, veth_pair,
};

const KEY: &str = "/service/demo/leader";
const PORT: u16 = 15_432;

/// The ids of the programs in `ifname`'s tcx egress chain (inside `ns`).
fn tcx_egress(ns: &NetNs, ifname: &str) -> Vec<(u32, String, Vec<u32>)> {
    ns.run_in(|| {
        let (_, programs) =
            SchedClassifier::query_tcx(ifname, TcAttachType::Egress).expect("query tcx egress");
        programs
            .iter()
            .map(|p| {
                (
                    p.id(),
                    p.name_as_str().unwrap_or_default().to_owned(),
                    p.map_ids().ok().flatten().unwrap_or_default(),
                )
            })
            .collect()
    })
}

/// The id of the map pinned at `path`.
fn map_id(path: &Path) -> u32 {
    MapData::from_pin(path)
        .expect("open the pinned map")
        .info()
        .expect("map info")
        .id()
}

/// `BPF_LINK_DETACH` the link pinned at `path` (as an operator's `bpftool link detach` would),
/// leaving the pin in place: a stale pin.
fn detach_pinned_link(path: &Path) {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let cpath = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
    let get = ObjGet {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: a valid BPF_OBJ_GET attribute of the size passed; `cpath` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const get,
            size_of::<ObjGet>() as u32,
        )
    };
    assert!(fd >= 0, "BPF_OBJ_GET {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd")) };
    let attr = u32::try_from(fd.as_raw_fd()).expect("fd");
    // SAFETY: the `link_detach` attribute: one u32, the link fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &raw const attr,
            size_of::<u32>() as u32,
        )
    };
    assert_eq!(rc, 0, "BPF_LINK_DETACH {}", std::io::Error::last_os_error());
}

#[test]
fn the_egress_program_lives_with_the_xdp_program_and_shares_its_maps() {
    if !require_privileges("the_egress_program_lives_with_the_xdp_program_and_shares_its_maps") {
        return;
    }
    let (node, peer) = (NetNs::new("egn"), NetNs::new("egp"));
    let (ifname, _) = veth_pair(&node, &peer);
    let pins = PinRoot::new();
    let pin_dir = pins.0.join(&ifname);

    // Attached with the XDP program, pinned beside it, first in the tcx egress chain.
    let dp = open_dataplane(&node, &ifname, AttachMode::Generic, &pins.0);
    assert_eq!(dp.origin(), Origin::Attached);
    assert_eq!(dp.egress(), &EgressFence::Attached, "{dp:?}");
    assert!(pin_dir.join("egress").exists());
    let chain = tcx_egress(&node, &ifname);
    assert_eq!(chain.len(), 1, "{chain:?}");
    let (egress_id, name, maps) = chain[0].clone();
    assert!(EGRESS_PROGRAM_NAME.starts_with(&name), "{name}");
    let state_map = map_id(&pin_dir.join(STATE_MAP));
    assert!(
        maps.contains(&state_map),
        "shares VIP_STATE: {maps:?} vs {state_map}"
    );

    // The agent goes away: both programs stay. A new one adopts both.
    drop(dp);
    assert_eq!(tcx_egress(&node, &ifname)[0].0, egress_id);
    let dp = open_dataplane(&node, &ifname, AttachMode::Generic, &pins.0);
    assert_eq!(dp.origin(), Origin::Adopted);
    assert_eq!(dp.egress(), &EgressFence::Attached);
    assert_eq!(
        tcx_egress(&node, &ifname)[0].0,
        egress_id,
        "adopted, not replaced"
    );
    drop(dp);

    // A stale egress pin (its program taken off) is replaced, on the same maps.
    detach_pinned_link(&pin_dir.join("egress"));
    assert!(tcx_egress(&node, &ifname).is_empty());
    let dp = open_dataplane(&node, &ifname, AttachMode::Generic, &pins.0);
    assert_eq!(dp.origin(), Origin::Adopted);
    assert_eq!(dp.egress(), &EgressFence::Attached);
    let chain = tcx_egress(&node, &ifname);
    assert_eq!(chain.len(), 1, "{chain:?}");
    assert_ne!(chain[0].0, egress_id);
    assert!(chain[0].2.contains(&state_map), "on the pinned maps");
    drop(dp);

    // An installation from before the egress program (no egress link, no egress counters) is
    // adopted, not replaced, and gets both.
    let xdp = node.xdp_prog_id(&ifname);
    detach_pinned_link(&pin_dir.join("egress"));
    std::fs::remove_file(pin_dir.join("egress")).expect("remove the egress pin");
    std::fs::remove_file(pin_dir.join(EGRESS_STATS_MAP)).expect("remove the egress counters");
    let mut dp = open_dataplane(&node, &ifname, AttachMode::Generic, &pins.0);
    assert_eq!(dp.origin(), Origin::Adopted);
    assert_eq!(node.xdp_prog_id(&ifname), xdp, "the XDP program stays");
    assert_eq!(dp.egress(), &EgressFence::Attached);
    assert_eq!(tcx_egress(&node, &ifname).len(), 1);
    assert!(pin_dir.join(EGRESS_STATS_MAP).exists());
    let vip: std::net::IpAddr = "10.77.165.100".parse().expect("vip");
    dp.register(vip).expect("register");
    assert_eq!(
        dp.egress_stats(vip).expect("egress counters"),
        Default::default()
    );
    drop(dp);

    // detach takes both off and removes every pin.
    assert!(dataplane::detach(&pins.0, &ifname).expect("detach"));
    assert!(tcx_egress(&node, &ifname).is_empty(), "egress program gone");
    assert_eq!(node.xdp_prog_id(&ifname), None, "XDP program gone");
    assert!(!pin_dir.exists());
}

/// A TCP server on `PORT` in `ns`: each connection gets `name\n`, then one byte every 10 ms until
/// it fails or `running` turns false.
fn serve(ns: &NetNs, name: &str, running: &AtomicBool) {
    ns.run_in(|| {
        let listener = TcpListener::bind(("0.0.0.0", PORT)).expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::scope(|s| {
            while running.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        s.spawn(move || {
                            conn.set_nonblocking(false).expect("blocking");
                            conn.set_write_timeout(Some(Duration::from_millis(200)))
                                .expect("timeout");
                            let _ = conn.write_all(format!("{name}\n").as_bytes());
                            let mut tick = 0u8;
                            while running.load(Ordering::Relaxed) {
                                if conn.write_all(&[tick]).is_err() {
                                    break;
                                }
                                tick = tick.wrapping_add(1);
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
    });
}

/// Connect from the client to the VIP and read the server's name line.
fn greeting(c: &Cluster) -> Option<String> {
    let vip = c.vip;
    c.client.ns.run_in(|| {
        let mut conn =
            TcpStream::connect_timeout(&SocketAddr::from((vip, PORT)), Duration::from_millis(1500))
                .ok()?;
        conn.set_read_timeout(Some(Duration::from_millis(1500)))
            .ok()?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while conn.read_exact(&mut byte).is_ok() && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8(line).ok()
    })
}

/// Every IPv4 or ARP frame from `mac` with `vip` as its IPv4 source or ARP sender that arrives on
/// the client's interface until `running` turns false: kernel monotonic arrival times.
fn capture_from(c: &Cluster, mac: [u8; 6], vip: Ipv4Addr, running: &AtomicBool) -> Vec<u64> {
    let ifname = c.client.ifname.clone();
    c.client.ns.run_in(move || {
        let proto = u16::try_from(libc::ETH_P_ALL).expect("ETH_P_ALL").to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: the kernel just returned this descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let index = nix::net::if_::if_nametoindex(ifname.as_str()).expect("ifindex");
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET");
        addr.sll_protocol = proto;
        addr.sll_ifindex = i32::try_from(index).expect("index");
        // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                u32::try_from(size_of::<libc::sockaddr_ll>()).expect("size"),
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: a valid timeval for SO_RCVTIMEO.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                u32::try_from(size_of::<libc::timeval>()).expect("size"),
            )
        };
        let vip = vip.octets();
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while running.load(Ordering::Relaxed) {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else {
                continue;
            };
            let at = monotonic_ns();
            let f = &buf[..n];
            if n < 42 || f[6..12] != mac {
                continue;
            }
            let from_vip = match [f[12], f[13]] {
                [0x08, 0x00] => f[26..30] == vip,
                [0x08, 0x06] => f[28..32] == vip,
                _ => false,
            };
            if from_vip {
                seen.push(at);
            }
        }
        seen
    })
}

#[test]
fn an_established_connection_to_the_old_primary_gets_nothing_from_the_vip_after_the_fence() {
    if !require_privileges(
        "an_established_connection_to_the_old_primary_gets_nothing_from_the_vip_after_the_fence",
    ) {
        return;
    }
    // node1's agent is stopped below, so it cannot record its fence: node2 waits for node1's
    // fence record to expire (the handshake), which a short record TTL keeps within the window.
    let mut c = Cluster::new(166, 2, &vip_tests::agent_binary(), "fence-record-ttl: 2s\n");
    c.start_agent(0);
    c.start_agent(1);
    c.wait_running();
    let (mac1, vip) = (c.nodes[0].host.mac, c.vip);
    let leases = c.etcd(async |e| {
        (
            e.lease_grant(30, None).await.expect("lease").id(),
            e.lease_grant(30, None).await.expect("lease").id(),
        )
    });
    assert!(
        c.etcd(async |e| cluster::acquire(e, KEY, "node1", leases.0).await)
            .is_some()
    );
    eventually(
        Duration::from_secs(5),
        "node1 answers with the address",
        || c.probe(Duration::from_millis(150)) == vec![mac1] && c.has_vip_address(0),
    );
    let node1_agent = nix::unistd::Pid::from_raw(c.agent(0).pid());

    let running = AtomicBool::new(true);
    let (capturing, reading) = (AtomicBool::new(true), AtomicBool::new(true));
    let (c, running, capturing, reading) = (&c, &running, &capturing, &reading);
    let (fenced_at, received, captured, new_greeting) = std::thread::scope(|s| {
        s.spawn(|| serve(&c.nodes[0].host.ns, "node1", running));
        s.spawn(|| serve(&c.nodes[1].host.ns, "node2", running));
        let capture = s.spawn(|| capture_from(c, mac1, vip, capturing));
        // The client's connection to the primary: its name, then a byte every 10 ms.
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let reader = s.spawn(move || {
            c.client.ns.run_in(|| {
                let mut conn = None;
                for _ in 0..50 {
                    if let Ok(k) = TcpStream::connect_timeout(
                        &SocketAddr::from((vip, PORT)),
                        Duration::from_millis(500),
                    ) {
                        conn = Some(k);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let mut conn = conn.expect("connect to the VIP");
                conn.set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                let _ = opened_tx.send(());
                let mut times = Vec::new();
                let mut buf = [0u8; 256];
                while reading.load(Ordering::Relaxed) {
                    match conn.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => times.extend(std::iter::repeat_n(monotonic_ns(), n)),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
                times
            })
        });
        opened_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the client connected");
        std::thread::sleep(Duration::from_millis(500));

        // The agent's own order on losing the key, paused in the middle: the map says fenced
        // (what the follower's hook writes first), the address is still there (the VIP task
        // has not removed it yet; here it never does, its agent is stopped).
        nix::sys::signal::kill(node1_agent, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        let pin = c.pins.join(&c.nodes[0].host.ifname).join(STATE_MAP);
        let mut state: HashMap<MapData, VipKey, VipState> = HashMap::try_from(
            Map::from_map_data(MapData::from_pin(&pin).expect("open VIP_STATE")).expect("map"),
        )
        .expect("VIP_STATE");
        state
            .insert(VipKey::v4(vip.octets()), VipState::fenced(mac1), 0)
            .expect("fence");
        let fenced_at = monotonic_ns();
        // Patroni's switchover: node2 takes the key and serves.
        assert!(c.etcd(async |e| cluster::release(e, KEY, "node1").await));
        assert!(
            c.etcd(async |e| cluster::acquire(e, KEY, "node2", leases.1).await)
                .is_some()
        );
        let mut new_greeting = None;
        let until = Instant::now() + Duration::from_secs(10);
        while new_greeting.as_deref() != Some("node2") && Instant::now() < until {
            c.client.ns.flush_neighbours(&c.client.ifname);
            new_greeting = greeting(c);
        }
        // node1's server keeps writing into the old connection for a while: none of it may leave.
        std::thread::sleep(Duration::from_secs(1));
        reading.store(false, Ordering::Relaxed);
        capturing.store(false, Ordering::Relaxed);
        running.store(false, Ordering::Relaxed);
        let received = reader.join().expect("reader");
        let captured = capture.join().expect("capture");
        (fenced_at, received, captured, new_greeting)
    });
    nix::sys::signal::kill(node1_agent, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");

    // A frame already on its way when the map was written may still arrive: 5 ms of grace.
    let grace = fenced_at + 5_000_000;
    let before = received.iter().filter(|t| **t < fenced_at).count();
    let after: Vec<u64> = received.iter().copied().filter(|t| *t >= grace).collect();
    let frames_after: Vec<u64> = captured.iter().copied().filter(|t| *t >= grace).collect();
    eprintln!(
        "old connection: {before} bytes before the fence, {} after; frames from node1 with the VIP as source: {} before, {} after",
        after.len(),
        captured.len() - frames_after.len(),
        frames_after.len()
    );
    assert!(before > 10, "the connection carried data before the fence");
    assert!(
        frames_after.is_empty(),
        "node1 sent {} frame(s) from the VIP after the fence, the first {} ms after it",
        frames_after.len(),
        (frames_after[0] - fenced_at) / 1_000_000
    );
    assert!(
        after.is_empty(),
        "the client read {} byte(s) on the old connection after the fence",
        after.len()
    );
    assert_eq!(
        new_greeting.as_deref(),
        Some("node2"),
        "the new primary serves new connections"
    );
    let egress = c.dataplane_snapshot(0).expect("node1's pins").egress;
    assert!(
        egress.ip_dropped > 0,
        "node1's egress drops are counted: {egress:?}"
    );
}
