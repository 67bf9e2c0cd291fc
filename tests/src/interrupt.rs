//! An interrupted run removes what it made, too.
//!
//! The guards ([`crate::NetNs`], [`crate::ChildGuard`], the clusters) remove what they made when
//! they are dropped, after a pass and after a panic. A SIGINT or SIGTERM ends the process without
//! running any `Drop`: a benchmark stopped with Ctrl-C would leave its namespaces, etcd, agents,
//! keepalived and PostgreSQL running. The long-running binaries (`vip-bench`, `vip-soak`) call
//! [`clean_up_on_signal`] first; the signal then ends this process's descendants by PID, deletes the
//! network namespaces it made and the paths it registered, and exits with 128 + the signal.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use nix::{
    sys::signal::{SigSet, Signal, kill},
    unistd::Pid,
};

/// What this process made outside itself and has not removed yet.
struct Made {
    namespaces: BTreeSet<String>,
    paths: BTreeSet<PathBuf>,
}

static MADE: Mutex<Made> = Mutex::new(Made {
    namespaces: BTreeSet::new(),
    paths: BTreeSet::new(),
});

fn made() -> MutexGuard<'static, Made> {
    MADE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A network namespace was created (`ip netns add`).
pub(crate) fn namespace_created(name: &str) {
    made().namespaces.insert(name.to_owned());
}

/// A network namespace was deleted.
pub(crate) fn namespace_deleted(name: &str) {
    made().namespaces.remove(name);
}

/// A file or directory (removed recursively) that an interrupted run removes: temporary
/// directories, data directories, bpffs pin directories.
pub fn path_created(path: &Path) {
    made().paths.insert(path.to_owned());
}

/// A path registered with [`path_created`] was removed (or is to be kept).
pub fn path_removed(path: &Path) {
    made().paths.remove(path);
}

/// Block SIGINT, SIGTERM and SIGHUP in this process and clean up when one arrives: every
/// descendant process gets SIGKILL (by PID, repeated until none is left), the namespaces and paths
/// this process made are removed, and the process exits with 128 + the signal.
///
/// Call it first in `main`, before any other thread exists: the mask is inherited by threads
/// started later (not by child processes: std resets the mask when it spawns).
///
/// # Panics
/// When the signal mask or the child subreaper attribute cannot be set.
pub fn clean_up_on_signal() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .expect("block SIGINT, SIGTERM and SIGHUP");
    // Daemons that fork away from their parent (pg_ctl's postmaster, keepalived's children) are
    // re-parented to this process instead of init, so the walk below still finds them.
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        rc,
        0,
        "prctl(PR_SET_CHILD_SUBREAPER): {}",
        std::io::Error::last_os_error()
    );
    std::thread::spawn(move || {
        let Ok(signal) = set.wait() else { return };
        eprintln!(
            "\ninterrupted ({signal}): ending this run's processes, removing its namespaces and \
             files"
        );
        clean_up();
        std::process::exit(128 + signal as i32);
    });
}

/// What the signal thread does; also what the test of this module checks.
fn clean_up() {
    // Held to the end: a guard dropping concurrently waits instead of racing the removals.
    let made = made();
    for _ in 0..50 {
        let live = descendants(nix::unistd::getpid().as_raw());
        if live.is_empty() {
            break;
        }
        for pid in live {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for name in &made.namespaces {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .output();
    }
    for path in &made.paths {
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
    }
}

/// Every process below `root` that has not exited yet (zombies, which nobody reaps here, are
/// left out so the loop above ends).
fn descendants(root: i32) -> Vec<i32> {
    crate::cluster::process_tree(root)
        .into_iter()
        .filter(|&pid| pid != root && !crate::cluster::is_zombie(pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_include_grandchildren_and_not_the_root() {
        // sh starts sleep as its child, so the sleep is this process's grandchild.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("spawn sh");
        let me = nix::unistd::getpid().as_raw();
        let sh = i32::try_from(child.id()).expect("pid");
        let mut below_sh = Vec::new();
        for _ in 0..100 {
            below_sh = descendants(sh);
            if !below_sh.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let below_me = descendants(me);
        // Only what this test started is ended (other tests of this binary run beside it).
        for pid in below_sh.iter().chain([&sh]) {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let _ = child.wait();
        assert_eq!(below_sh.len(), 1, "sleep below sh: {below_sh:?}");
        assert!(below_me.contains(&sh), "{below_me:?} lacks sh {sh}");
        assert!(
            below_sh.iter().all(|p| below_me.contains(p)),
            "the grandchild is below this process too: {below_me:?}"
        );
        assert!(!below_me.contains(&me));
    }
}
