//! An interrupted benchmark or soak removes what it made (`vip_tests::interrupt`): SIGINT and
//! SIGTERM to a process that made a namespace, a process tree in it and a directory leave none of
//! them behind, and the process exits with 128 + the signal.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use vip_tests::require_privileges;

fn namespaces() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn alive(pid: i32) -> bool {
    // Signal 0: only whether the process (or a zombie of it) exists.
    nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
}

fn interrupted_by(signal: Signal) {
    let mut fixture = Command::new(env!("CARGO_BIN_EXE_vip-interrupt-fixture"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the fixture");
    let stdout = fixture.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the fixture's ready line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, ns, child, dir] = fields[..] else {
        panic!("unexpected ready line {line:?}");
    };
    let child: i32 = child.parse().expect("child pid");
    assert!(namespaces().contains(ns), "{ns} was not created");
    let grandchild = {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let kids = std::fs::read_to_string(format!("/proc/{child}/task/{child}/children"))
                .unwrap_or_default();
            if let Some(pid) = kids.split_whitespace().next() {
                break pid.parse::<i32>().expect("pid");
            }
            assert!(Instant::now() < until, "sh did not start its sleep");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let fixture_pid = Pid::from_raw(i32::try_from(fixture.id()).expect("pid"));
    nix::sys::signal::kill(fixture_pid, signal).expect("signal the fixture");
    let status = fixture.wait().expect("wait for the fixture");
    assert_eq!(
        status.code(),
        Some(128 + signal as i32),
        "the fixture exits with 128 + {signal}"
    );
    // The fixture is gone and nothing reaps its children but init now: "gone" means exited.
    let gone = |pid: i32| {
        !alive(pid)
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
    };
    let until = Instant::now() + Duration::from_secs(5);
    while !(gone(child) && gone(grandchild)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(child), "the fixture's child {child} survived {signal}");
    assert!(
        gone(grandchild),
        "the fixture's grandchild {grandchild} survived {signal}"
    );
    assert!(
        !namespaces().contains(ns),
        "namespace {ns} survived {signal}"
    );
    assert!(!Path::new(dir).exists(), "{dir} survived {signal}");
}

#[test]
fn sigint_removes_the_runs_namespaces_processes_and_files() {
    if !require_privileges("sigint_removes_the_runs_namespaces_processes_and_files") {
        return;
    }
    interrupted_by(Signal::SIGINT);
}

#[test]
fn sigterm_removes_the_runs_namespaces_processes_and_files() {
    if !require_privileges("sigterm_removes_the_runs_namespaces_processes_and_files") {
        return;
    }
    interrupted_by(Signal::SIGTERM);
}
