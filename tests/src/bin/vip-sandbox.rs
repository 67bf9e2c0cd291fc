//! `vip-sandbox UNIT -- PROGRAM ARGS...`: run PROGRAM under the system call filter and the
//! `MemoryDenyWriteExecute=` of a systemd unit file, as systemd would, without systemd as PID 1
//! (the tests' machines have none, so `systemd-run -p ...` is not available).
//!
//! * `SystemCallFilter=` (an allow-list; `@group`s expanded by `systemd-analyze syscall-filter`,
//!   the host systemd's own definition, nested groups included), `SystemCallErrorNumber=` (the
//!   action for everything else) and `SystemCallArchitectures=native` go into a libseccomp filter,
//!   which is how systemd builds it. Names this libseccomp or this architecture does not know are
//!   skipped, as systemd skips them.
//! * `MemoryDenyWriteExecute=yes` is `prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`, what systemd
//!   uses where the kernel has it (Linux 6.3+); older kernels fail loudly here.
//!
//! Run it after whatever needs privileges the filter denies (`setpriv`'s capset): the filter needs
//! no_new_privs, which setpriv `--no-new-privs` sets, or CAP_SYS_ADMIN.

use std::{
    collections::BTreeSet, ffi::OsString, os::unix::process::CommandExt as _, process::Command,
};

use libseccomp::{ScmpAction, ScmpFilterContext, ScmpSyscall};

fn main() {
    if let Err(e) = run() {
        eprintln!("vip-sandbox: {e}");
        std::process::exit(126);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args_os().skip(1);
    let unit = args
        .next()
        .ok_or("usage: vip-sandbox UNIT -- PROGRAM ARGS...")?;
    if args.next().as_deref() != Some(std::ffi::OsStr::new("--")) {
        return Err("usage: vip-sandbox UNIT -- PROGRAM ARGS...".into());
    }
    let program = args.next().ok_or("no PROGRAM")?;
    let rest: Vec<OsString> = args.collect();
    let text = std::fs::read_to_string(&unit)
        .map_err(|e| format!("read {}: {e}", unit.to_string_lossy()))?;
    let values = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .collect()
    };

    let filter: Vec<String> = values("SystemCallFilter")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    if filter.is_empty() {
        return Err("the unit has no SystemCallFilter=".into());
    }
    if filter.iter().any(|f| f.starts_with('~')) {
        return Err("only an allow-list SystemCallFilter= is understood".into());
    }
    let errno = match values("SystemCallErrorNumber").last().map(String::as_str) {
        None | Some("kill") => None,
        Some("EPERM") => Some(libc::EPERM),
        Some(other) => return Err(format!("SystemCallErrorNumber={other} is not understood")),
    };
    let native = values("SystemCallArchitectures")
        .last()
        .is_some_and(|v| v == "native");
    if !native {
        return Err("the unit should say SystemCallArchitectures=native".into());
    }
    let mdwe = values("MemoryDenyWriteExecute")
        .last()
        .is_some_and(|v| v == "yes");

    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut pending = filter;
    while let Some(item) = pending.pop() {
        if let Some(_group) = item.strip_prefix('@') {
            if seen.insert(item.clone()) {
                pending.extend(expand_group(&item)?);
            }
        } else {
            names.insert(item);
        }
    }

    // Everything not listed: EPERM (or SIGSYS, systemd's default). A native-only context is
    // libseccomp's default: other architectures' calls get the default action.
    let default = errno.map_or(ScmpAction::KillProcess, ScmpAction::Errno);
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| format!("seccomp_init: {e}"))?;
    let mut allowed = 0;
    for name in &names {
        let Ok(call) = ScmpSyscall::from_name(name) else {
            continue;
        };
        ctx.add_rule(ScmpAction::Allow, call)
            .map_err(|e| format!("seccomp rule for {name}: {e}"))?;
        allowed += 1;
    }
    eprintln!(
        "vip-sandbox: {allowed} system calls allowed ({} named), others {}; \
         MemoryDenyWriteExecute={}",
        names.len(),
        errno.map_or("SIGSYS".to_owned(), |_| "EPERM".to_owned()),
        if mdwe { "yes" } else { "no" },
    );

    if mdwe {
        // SAFETY: prctl with integer arguments only; no memory is passed.
        let done = unsafe {
            libc::prctl(
                libc::PR_SET_MDWE,
                libc::c_ulong::from(libc::PR_MDWE_REFUSE_EXEC_GAIN),
                0_u64,
                0_u64,
                0_u64,
            )
        };
        if done != 0 {
            return Err(format!(
                "prctl(PR_SET_MDWE): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    ctx.load().map_err(|e| format!("seccomp load: {e}"))?;
    let e = Command::new(&program).args(&rest).exec();
    Err(format!("exec {}: {e}", program.to_string_lossy()))
}

/// `systemd-analyze syscall-filter @group`: its system calls and nested `@group`s, one a line
/// (indented), after the group's own header line and before any comment.
fn expand_group(group: &str) -> Result<Vec<String>, String> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .map_err(|e| format!("systemd-analyze syscall-filter {group}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "systemd-analyze syscall-filter {group}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| l.starts_with(char::is_whitespace))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}
