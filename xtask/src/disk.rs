//! Free space before a long build: a full disk otherwise shows up minutes in, as a linker's
//! "No space left on device" in the middle of the test build.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

const GIB: u64 = 1 << 30;

/// What a whole `cargo xtask test` writes under the target directory from a fresh clone: the test
/// build (3.6 GB), the fuzz build (0.7 GB), the release build of the package test (0.6 GB) and the
/// XDP object, measured on 2026-12-07 at 5.0 GB, plus room for the tests' own files.
pub(crate) const TEST_RUN_BYTES: u64 = 6 * GIB;

/// Fail, naming the directory and both sizes, unless the file system holding `target` has room for
/// `need` bytes more than `target` already holds (what is built there is reused; at least 1 GiB
/// must stay free for incremental rebuilds).
pub(crate) fn ensure_room(target: &Path, need: u64, what: &str) -> Result<()> {
    let held = size_of(target);
    let want = need.saturating_sub(held).max(GIB);
    let probe = existing_ancestor(target);
    let Some(free) = available(&probe) else {
        // statvfs failing is no reason to refuse the run; the build itself will say more.
        eprintln!(
            "xtask: warning: cannot read the free space of {}",
            probe.display()
        );
        return Ok(());
    };
    if free < want {
        bail!(
            "{what} needs about {:.1} GiB free on the file system of {} ({:.1} GiB for a fresh \
             target directory, {:.1} GiB of it already built there), but only {:.1} GiB is free: \
             make room (an old target directory can go with `cargo clean`) and run again",
            gib(want),
            probe.display(),
            gib(need),
            gib(held),
            gib(free)
        );
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a size shown in GiB to one decimal"
    )]
    let b = bytes as f64;
    b / GIB as f64
}

/// The nearest directory that exists (a fresh clone has no target directory yet).
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.is_dir())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn available(dir: &Path) -> Option<u64> {
    let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs buffer that outlives the
    // call; the buffer is read only when the call reports success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Bytes of the regular files below `dir` (0 when it does not exist); symlinks are not followed.
fn size_of(dir: &Path) -> u64 {
    let mut total = 0_u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_need_larger_than_the_disk_is_refused_with_both_sizes() {
        let dir = std::env::temp_dir();
        let err = ensure_room(&dir.join("no-such-target"), u64::MAX / 2, "this run")
            .expect_err("no file system has 4 EiB free");
        let msg = err.to_string();
        assert!(msg.contains("this run needs about"), "{msg}");
        assert!(msg.contains("GiB is free"), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
    }

    #[test]
    fn what_is_built_counts_toward_the_need() {
        let dir = tempdir();
        std::fs::create_dir_all(dir.join("a/b")).expect("mkdir");
        std::fs::write(dir.join("a/b/f"), vec![0_u8; 4096]).expect("write");
        std::fs::write(dir.join("g"), vec![0_u8; 100]).expect("write");
        assert_eq!(size_of(&dir), 4196);
        assert_eq!(size_of(&dir.join("missing")), 0);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}
