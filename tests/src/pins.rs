//! The data plane outside the agent: a pin root of the test's own on bpffs, and attaching the real
//! program inside a namespace through the agent's library.

use std::path::{Path, PathBuf};

use vip_agent::dataplane::{self, AttachMode, AttachOptions, Dataplane};

use crate::{NetNs, unique_name};

/// A pin root of our own on bpffs, emptied (every interface detached) and removed on drop.
#[derive(Debug)]
pub struct PinRoot(pub PathBuf);

impl PinRoot {
    /// A new, unique root under /sys/fs/bpf (created by the first attach).
    #[must_use]
    pub fn new() -> Self {
        Self(PathBuf::from("/sys/fs/bpf").join(unique_name("vipt")))
    }

    /// Remove the program and pins of `interface`.
    pub fn detach(&self, interface: &str) {
        let _ = dataplane::detach(&self.0, interface);
    }
}

impl Default for PinRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                self.detach(&e.file_name().to_string_lossy());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Open (attach or adopt) the data plane on `ifname` inside `ns`.
///
/// # Panics
/// When it cannot be opened.
#[must_use]
pub fn open_dataplane(ns: &NetNs, ifname: &str, mode: AttachMode, pins: &Path) -> Dataplane {
    let opts = AttachOptions {
        interface: ifname.to_owned(),
        mode,
        pin_root: pins.to_path_buf(),
    };
    ns.run_in(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(Dataplane::open(&opts))
            .expect("open the data plane")
    })
}
