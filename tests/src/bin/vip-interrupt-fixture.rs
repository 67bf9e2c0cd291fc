//! `vip-interrupt-fixture`: what `tests/tests/interrupt.rs` interrupts. It makes what a benchmark
//! makes (a network namespace, a process in it that forks a grandchild, a directory), prints
//! `ready <namespace> <child pid> <directory>`, and waits for a signal with
//! [`vip_tests::interrupt::clean_up_on_signal`] installed, as `vip-bench` and `vip-soak` do.

use std::io::Write as _;

use vip_tests::{NetNs, interrupt};

fn main() {
    interrupt::clean_up_on_signal();
    let ns = NetNs::new("intr");
    // sh forks sleep, so the sleep is a grandchild of this process.
    let child = ns.spawn("sh", &["-c", "sleep 600 & wait"], None);
    let dir = std::env::temp_dir().join(vip_tests::unique_name("vintr"));
    std::fs::create_dir_all(dir.join("sub")).expect("create the directory");
    interrupt::path_created(&dir);
    println!("ready {} {} {}", ns.name(), child.pid(), dir.display());
    std::io::stdout().flush().expect("flush stdout");
    loop {
        std::thread::park();
    }
}
