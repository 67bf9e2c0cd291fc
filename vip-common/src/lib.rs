//! The contract between the `vip-ebpf` XDP program and `vip-agent`.
//!
//! * [`maps`]: the names, keys and values of every BPF map, `#[repr(C)]`, only integers and byte
//!   arrays, explicit padding and size asserts. With the `user` feature they implement `aya::Pod`.
//! * [`frame`]: the per-frame decision (answer ARP for a VIP, fence it, or pass) and the in-place
//!   ARP reply rewrite, written once as pure `no_std` functions, and the egress decision
//!   (`frame::egress`: nothing leaves from a fenced VIP). The XDP and TC programs run exactly this
//!   code over packet memory; host unit tests run it over byte slices.
#![no_std]

pub mod frame;
pub mod maps;

pub use frame::{Outcome, Packet, Verdict, VipLookup, egress, process};
pub use maps::{EGRESS_STATS_MAP, EgressStats, STATE_MAP, STATS_MAP, VipKey, VipState, VipStats};
