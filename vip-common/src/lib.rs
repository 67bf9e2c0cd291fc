//! The contract between the `vip-ebpf` XDP program and `vip-agent`.
//!
//! * [`maps`]: the names, keys and values of every BPF map, `#[repr(C)]`, only integers and byte
//!   arrays, explicit padding and size asserts. With the `user` feature they implement `aya::Pod`.
//! * [`frame`]: the per-frame decision (answer ARP for a VIP, fence it, or pass) and the in-place
//!   ARP reply rewrite, written once as pure `no_std` functions. The XDP program runs exactly this code
//!   over packet memory; host unit tests run it over byte slices.
#![no_std]

pub mod frame;
pub mod maps;

pub use frame::{Outcome, Packet, Verdict, VipLookup, process};
pub use maps::{STATE_MAP, STATS_MAP, VipKey, VipState, VipStats};
