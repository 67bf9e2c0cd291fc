//! `vip_common::frame::process`, the function the XDP program runs on every frame, on arbitrary
//! bytes against a small VIP table.
//!
//! Input: one selector byte (which VIPs answer, the clock), then the frame. The committed seeds in
//! `fuzz/corpus/frame/` are real frames (ARP requests, replies, probes, gratuitous ARP, IPv4, 802.1Q
//! tagged, QinQ and 802.1ad, truncated) for the VIPs below, so the fuzzer starts next to every branch.
//!
//! Properties checked on every input (independently of `frame.rs`, from the frame layout). A frame
//! is untagged (ethertype at 12) or carries exactly one 802.1Q tag (TPID 0x8100 at 12, TCI at 14,
//! ethertype at 16); 802.1ad (0x88a8) and a second tag are neither ARP nor IPv4 here, so they pass.
//! * XDP_TX only for a well-formed Ethernet/IPv4 ARP request (op 1, htype 1 or 6, ptype 0x0800,
//!   hlen 6, plen 4) whose target IP is a configured VIP that answers now, from a unicast sender
//!   MAC, and that is not a conflict; and then the frame is exactly our reply: Ethernet dst = the
//!   requester's MAC, src = the VIP's MAC, the tag (TPID and TCI) and ethertype unchanged, op 2,
//!   htype 1, sender = (VIP MAC, VIP), target = (requester MAC, requester IP), length and trailing
//!   bytes unchanged;
//! * any other verdict leaves every byte unchanged;
//! * a fenced VIP (deadline 0, or a deadline not after now) is never answered; every drop is for a
//!   configured VIP that is fenced (or, for ARP, a non-unicast requester);
//! * our own reply, looped back, is passed untouched (never answered, never a conflict);
//! * the verdict's XDP action and VIP are consistent with its outcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vip_common::{
    VipKey, VipLookup, VipState,
    frame::{Outcome, Verdict, XDP_DROP, XDP_PASS, XDP_TX, process},
};

/// The VIPs of the table: two in one subnet, one elsewhere, and the two edge addresses.
const VIP_A: [u8; 4] = [10, 77, 0, 100];
const VIP_B: [u8; 4] = [10, 77, 0, 101];
const VIP_C: [u8; 4] = [192, 168, 56, 10];
const VIP_ZERO: [u8; 4] = [0, 0, 0, 0];
const VIP_BCAST: [u8; 4] = [255, 255, 255, 255];
/// The interface's MAC (what every VIP entry carries).
const OUR_MAC: [u8; 6] = [0x02, 0xaa, 0x00, 0x00, 0x00, 0x01];
/// Another unicast MAC some entries carry instead (two agents' tables never mix, but the program
/// must use the entry's MAC, not a constant).
const ALT_MAC: [u8; 6] = [0x0a, 0xbb, 0x00, 0x00, 0x00, 0x02];
const NOW: u64 = 5_000_000_000;

struct Table {
    entries: Vec<(VipKey, VipState)>,
    now: u64,
}

impl VipLookup for Table {
    fn state(&self, vip: &VipKey) -> Option<VipState> {
        self.entries.iter().find(|(k, _)| k == vip).map(|(_, v)| *v)
    }
    fn now_ns(&self) -> u64 {
        self.now
    }
}

impl Table {
    /// Bits of `sel`: 0/1/2 VIP_A/B/C answering (else fenced); 3: VIP_C's deadline is exactly now
    /// (fenced: the program answers while now < deadline); 4: clock at 0 instead of NOW; 5: the
    /// edge VIPs 0.0.0.0 and 255.255.255.255 exist (answering); 6: VIP_B carries ALT_MAC; 7: empty
    /// table.
    fn from_selector(sel: u8) -> Self {
        let bit = |n: u8| sel & (1 << n) != 0;
        let now = if bit(4) { 0 } else { NOW };
        let state = |answering: bool, mac: [u8; 6]| {
            if answering {
                VipState::answering_until(mac, now.saturating_add(1_000_000_000))
            } else {
                VipState::fenced(mac)
            }
        };
        let mut entries = Vec::new();
        if !bit(7) {
            entries.push((VipKey::new(VIP_A), state(bit(0), OUR_MAC)));
            let b_mac = if bit(6) { ALT_MAC } else { OUR_MAC };
            entries.push((VipKey::new(VIP_B), state(bit(1), b_mac)));
            let c = if bit(3) {
                VipState::answering_until(OUR_MAC, now)
            } else {
                state(bit(2), OUR_MAC)
            };
            entries.push((VipKey::new(VIP_C), c));
            if bit(5) {
                entries.push((VipKey::new(VIP_ZERO), state(true, OUR_MAC)));
                entries.push((VipKey::new(VIP_BCAST), state(true, OUR_MAC)));
            }
        }
        Self { entries, now }
    }

    fn answering(&self, ip: [u8; 4]) -> Option<VipState> {
        self.state(&VipKey::new(ip))
            .filter(|s| self.now < s.deadline_ns)
    }
}

fn arr<const N: usize>(f: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&f[at..at + N]);
    out
}

/// The fields of an Ethernet/IPv4 ARP packet, read straight from the layout (RFC 826), and where
/// the packet starts (14 untagged, 18 after one 802.1Q tag).
#[derive(Clone, Copy)]
struct Arp {
    at: usize,
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tpa: [u8; 4],
}

/// The offset of the packet after the Ethernet header and its ethertype: untagged (14), or after
/// exactly one 802.1Q tag (18). `None` when the header is cut short.
fn l3(f: &[u8]) -> Option<(usize, [u8; 2])> {
    let outer = f.get(12..14)?;
    if outer == [0x81, 0x00] {
        Some((18, arr(f.get(..18)?, 16)))
    } else {
        Some((14, arr(f, 12)))
    }
}

/// `Some` for a frame that carries a well-formed Ethernet/IPv4 ARP packet.
fn parse_arp(f: &[u8]) -> Option<Arp> {
    let (at, ether_type) = l3(f)?;
    if ether_type != [0x08, 0x06] || f.len() < at + 28 {
        return None;
    }
    let a = &f[at..];
    let htype = u16::from_be_bytes([a[0], a[1]]);
    let ptype = u16::from_be_bytes([a[2], a[3]]);
    if !(htype == 1 || htype == 6) || ptype != 0x0800 || a[4] != 6 || a[5] != 4 {
        return None;
    }
    Some(Arp {
        at,
        op: u16::from_be_bytes([a[6], a[7]]),
        sha: arr(a, 8),
        spa: arr(a, 14),
        tpa: arr(a, 24),
    })
}

fn unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

/// Whether the frame is an IPv4 packet (version 4, IHL >= 5, the fixed header present), tagged or
/// not: its destination.
fn ipv4_dst(f: &[u8]) -> Option<[u8; 4]> {
    let (at, ether_type) = l3(f)?;
    (ether_type == [0x08, 0x00] && f.len() >= at + 20 && f[at] >> 4 == 4 && f[at] & 0x0f >= 5)
        .then(|| arr(f, at + 16))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    let table = Table::from_selector(sel);
    let original = frame.to_vec();
    let mut buf = frame.to_vec();
    let verdict = process(buf.as_mut_slice(), &table);

    // Action and VIP follow from the outcome.
    let expected_action = match verdict.outcome {
        Outcome::Pass | Outcome::Conflict => XDP_PASS,
        Outcome::Replied => XDP_TX,
        Outcome::DroppedArp | Outcome::DroppedIpv4 => XDP_DROP,
    };
    assert_eq!(verdict.xdp_action(), expected_action, "{verdict:?}");
    if verdict.outcome == Outcome::Pass {
        assert_eq!(verdict, Verdict::PASS, "a pass names no VIP");
    } else {
        assert!(
            table.state(&verdict.vip).is_some(),
            "{verdict:?} names an address that is not a configured VIP"
        );
    }

    let arp = parse_arp(&original);
    match verdict.outcome {
        Outcome::Replied => {
            let arp = arp.expect("XDP_TX for a frame that is not a well-formed ARP packet");
            assert_eq!(arp.op, 1, "XDP_TX for ARP op {} (not a request)", arp.op);
            assert_eq!(
                verdict.vip.addr, arp.tpa,
                "answered for another VIP than asked"
            );
            let state = table
                .answering(arp.tpa)
                .expect("XDP_TX for a VIP that is fenced or not configured");
            assert!(unicast(&arp.sha), "answered a non-unicast requester");
            if let Some(sender) = table.answering(arp.spa) {
                assert_eq!(
                    sender.mac, arp.sha,
                    "answered a request whose sender claims one of our answering VIPs"
                );
            }
            // The reply, byte for byte; `a` is where the ARP packet starts (after any tag).
            let a = arp.at;
            assert_eq!(buf.len(), original.len(), "length changed");
            assert_eq!(&buf[0..6], &arp.sha, "Ethernet dst is not the requester");
            assert_eq!(&buf[6..12], &state.mac, "Ethernet src is not our MAC");
            assert_eq!(
                &buf[12..a],
                &original[12..a],
                "VLAN tag or ethertype changed"
            );
            assert_eq!(&buf[a - 2..a], &[0x08, 0x06], "not ARP");
            assert_eq!(&buf[a..a + 2], &[0x00, 0x01], "htype is not Ethernet");
            assert_eq!(
                &buf[a + 2..a + 6],
                &original[a + 2..a + 6],
                "ptype/hlen/plen changed"
            );
            assert_eq!(&buf[a + 6..a + 8], &[0x00, 0x02], "op is not reply");
            assert_eq!(&buf[a + 8..a + 14], &state.mac, "sender MAC is not ours");
            assert_eq!(&buf[a + 14..a + 18], &arp.tpa, "sender IP is not the VIP");
            assert_eq!(
                &buf[a + 18..a + 24],
                &arp.sha,
                "target MAC is not the requester's"
            );
            assert_eq!(
                &buf[a + 24..a + 28],
                &arp.spa,
                "target IP is not the requester's"
            );
            assert_eq!(&buf[a + 28..], &original[a + 28..], "padding changed");

            // Our reply looped back: not a request, and from our own MAC: pass untouched.
            let mut again = buf.clone();
            let v2 = process(again.as_mut_slice(), &table);
            assert_eq!(v2, Verdict::PASS, "our own reply was not passed");
            assert_eq!(again, buf, "our own reply was modified");
        }
        other => {
            assert_eq!(
                buf, original,
                "{other:?}: a frame we do not answer was modified"
            );
            match other {
                Outcome::DroppedArp => {
                    let arp = arp.expect("ARP drop of a frame that is not well-formed ARP");
                    assert_eq!(arp.op, 1, "ARP drop of a non-request");
                    assert_eq!(verdict.vip.addr, arp.tpa);
                    assert!(
                        table.answering(arp.tpa).is_none() || !unicast(&arp.sha),
                        "dropped a request we should have answered"
                    );
                }
                Outcome::DroppedIpv4 => {
                    let dst = ipv4_dst(&original).expect("IPv4 drop of a frame that is not IPv4");
                    assert_eq!(verdict.vip.addr, dst);
                    assert!(
                        table.answering(dst).is_none(),
                        "dropped IPv4 to an answering VIP"
                    );
                }
                Outcome::Conflict => {
                    let arp = arp.expect("conflict on a frame that is not well-formed ARP");
                    assert_eq!(verdict.vip.addr, arp.spa);
                    let state = table
                        .answering(arp.spa)
                        .expect("conflict for a VIP we do not answer");
                    assert_ne!(state.mac, arp.sha, "our own MAC counted as a conflict");
                }
                Outcome::Pass | Outcome::Replied => {}
            }
        }
    }

    // Completeness: a frame for a VIP is never silently passed when the contract says otherwise.
    if let Some(arp) = &arp {
        let conflict = table.answering(arp.spa).is_some_and(|s| s.mac != arp.sha);
        if conflict {
            assert_eq!(verdict.outcome, Outcome::Conflict);
        } else if arp.op == 1 && table.state(&VipKey::new(arp.tpa)).is_some() {
            let expected = if table.answering(arp.tpa).is_some() && unicast(&arp.sha) {
                Outcome::Replied
            } else {
                Outcome::DroppedArp
            };
            assert_eq!(verdict.outcome, expected, "ARP request for a VIP");
        } else {
            assert_eq!(verdict.outcome, Outcome::Pass);
        }
    } else if let Some(dst) = ipv4_dst(&original) {
        let fenced_vip = table.state(&VipKey::new(dst)).is_some() && table.answering(dst).is_none();
        let expected = if fenced_vip {
            Outcome::DroppedIpv4
        } else {
            Outcome::Pass
        };
        assert_eq!(verdict.outcome, expected, "IPv4 to {dst:?}");
    } else {
        assert_eq!(verdict.outcome, Outcome::Pass, "neither ARP nor IPv4");
    }
});
