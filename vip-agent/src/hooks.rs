//! `on-promote` / `on-demote`: user commands run after the data plane changed.
//!
//! The data plane never waits for a hook: answering and fencing happen in the map write, the
//! address and the gratuitous ARP follow, and only then is the hook started. A hook is for what
//! the data plane cannot do itself, such as reassigning a cloud provider's secondary private IP
//! (see `docs/hooks.md`).
//!
//! Each run is `/bin/sh -c <command>` in its own process group, with the VIP described in
//! `VIP_AGENT_*` variables, stdin from /dev/null and its output captured for the log. An attempt
//! that exits non-zero, dies by a signal or outlives `hook-timeout` (then its whole process group
//! is killed) is retried `hook-retries` times, 1 s apart. The latest transition wins: a new
//! promotion or demotion of the VIP kills the hook still running for the previous one, so a
//! slow `on-promote` can never finish after the `on-demote` that followed it.

use std::net::IpAddr;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::HookConfig;

/// Longest `on-demote` attempt at shutdown: systemd's `TimeoutStopSec` of the shipped unit is 10 s.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);
/// Pause between a failed attempt and the next.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Output kept per stream and attempt, for the log.
const OUTPUT_LIMIT: u64 = 4096;
/// After the shell exited, how long its output may still take to arrive (a background process
/// that kept the pipe open is not waited for).
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// Which transition a hook follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookEvent {
    Promote,
    Demote,
}

impl HookEvent {
    pub const ALL: [Self; 2] = [Self::Promote, Self::Demote];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Demote => "demote",
        }
    }

    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// How a run (all its attempts) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookOutcome {
    /// An attempt exited 0.
    Success,
    /// Every attempt exited non-zero, died by a signal or could not be started.
    Failure,
    /// The last attempt outlived `hook-timeout` and was killed.
    Timeout,
    /// A newer transition (or shutdown) killed it.
    Cancelled,
}

impl HookOutcome {
    pub const ALL: [Self; 4] = [Self::Success, Self::Failure, Self::Timeout, Self::Cancelled];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
        }
    }

    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The VIP a hook runs for, passed to it as environment variables.
#[derive(Clone, Debug)]
pub struct HookContext {
    pub vip: IpAddr,
    pub prefix_len: u8,
    pub interface: String,
    pub trigger_key: String,
    pub trigger_value: String,
}

impl HookContext {
    fn env(&self, event: HookEvent) -> [(&'static str, String); 6] {
        [
            ("VIP_AGENT_EVENT", event.as_str().to_owned()),
            ("VIP_AGENT_VIP", self.vip.to_string()),
            ("VIP_AGENT_NETMASK", self.prefix_len.to_string()),
            ("VIP_AGENT_INTERFACE", self.interface.clone()),
            ("VIP_AGENT_TRIGGER_KEY", self.trigger_key.clone()),
            ("VIP_AGENT_TRIGGER_VALUE", self.trigger_value.clone()),
        ]
    }
}

/// A finished run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookReport {
    pub outcome: HookOutcome,
    /// Attempts started.
    pub attempts: u32,
    /// From the first start to the end of the last attempt.
    pub duration: Duration,
}

impl HookReport {
    /// The metrics registry's view of this run of `event` (plain values, [`crate::observe`]).
    #[must_use]
    pub const fn observation(&self, event: HookEvent) -> crate::observe::HookRun {
        crate::observe::HookRun {
            event: event.as_str(),
            outcome: self.outcome.as_str(),
            attempts: self.attempts,
            duration: self.duration,
        }
    }
}

/// The label values of the hook series, for the metrics registry.
#[must_use]
pub const fn observation_labels() -> crate::observe::Observation {
    const EVENTS: [&str; HookEvent::ALL.len()] = {
        let mut names = [""; HookEvent::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = HookEvent::ALL[i].as_str();
            i += 1;
        }
        names
    };
    const OUTCOMES: [&str; HookOutcome::ALL.len()] = {
        let mut names = [""; HookOutcome::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = HookOutcome::ALL[i].as_str();
            i += 1;
        }
        names
    };
    crate::observe::Observation::HookLabels {
        events: &EVENTS,
        outcomes: &OUTCOMES,
    }
}

/// How one attempt ended.
enum Attempt {
    Exited(ExitStatus, String),
    SpawnFailed(std::io::Error),
    TimedOut(String),
    Cancelled,
}

/// Run the hook of `event`, if one is configured, with its retries; `None` when there is none.
pub async fn run(
    config: &HookConfig,
    event: HookEvent,
    context: &HookContext,
    cancel: &CancellationToken,
) -> Option<HookReport> {
    let command = match event {
        HookEvent::Promote => config.on_promote.as_deref(),
        HookEvent::Demote => config.on_demote.as_deref(),
    }?;
    let hook = event.as_str();
    let vip = context.vip;
    let started = Instant::now();
    let mut attempts = 0;
    let outcome = loop {
        attempts += 1;
        let (failed, outcome) = match attempt(command, event, context, config.timeout, cancel).await
        {
            Attempt::Exited(status, _) if status.success() => {
                info!(%vip, hook, attempts, duration_ms = started.elapsed().as_millis(), "hook succeeded");
                break HookOutcome::Success;
            }
            Attempt::Cancelled => {
                warn!(%vip, hook, attempts, "hook killed: a newer transition (or shutdown) replaced it");
                break HookOutcome::Cancelled;
            }
            Attempt::Exited(status, output) => (
                format!("{status}{}", output_suffix(&output)),
                HookOutcome::Failure,
            ),
            Attempt::SpawnFailed(e) => (format!("cannot start /bin/sh: {e}"), HookOutcome::Failure),
            Attempt::TimedOut(output) => (
                format!(
                    "still running after {:?}, process group killed{}",
                    config.timeout,
                    output_suffix(&output)
                ),
                HookOutcome::Timeout,
            ),
        };
        if attempts > config.retries {
            error!(%vip, hook, attempts, command, why = %failed, "hook failed, no retries left");
            break outcome;
        }
        warn!(%vip, hook, attempt = attempts, command, why = %failed, retry_in = ?RETRY_DELAY, "hook failed, retrying");
        tokio::select! {
            biased;
            () = cancel.cancelled() => break HookOutcome::Cancelled,
            () = tokio::time::sleep(RETRY_DELAY) => {}
        }
    };
    Some(HookReport {
        outcome,
        attempts,
        duration: started.elapsed(),
    })
}

fn output_suffix(output: &str) -> String {
    let output = output.trim();
    if output.is_empty() {
        String::new()
    } else {
        format!("; output: {output}")
    }
}

/// The variables a hook inherits from the agent (when set): where to find programs, the locale, the
/// time zone and the home directory (for tools that read their credentials from it).
pub const INHERITED_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];

async fn attempt(
    command: &str,
    event: HookEvent,
    context: &HookContext,
    limit: Duration,
    cancel: &CancellationToken,
) -> Attempt {
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        // Nothing of the agent's own environment but the allow-list: it holds the etcd and
        // Patroni passwords and the PostgreSQL DSN (VIP_*), which a hook has no business seeing.
        .env_clear()
        .envs(
            INHERITED_ENV
                .iter()
                .filter_map(|name| std::env::var_os(name).map(|v| (*name, v))),
        )
        .envs(context.env(event))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Attempt::SpawnFailed(e),
    };
    let pid = child.id();
    let stdout = child.stdout.take().map(|s| tokio::spawn(read_limited(s)));
    let stderr = child.stderr.take().map(|s| tokio::spawn(read_limited(s)));
    let result = tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        r = tokio::time::timeout(limit, child.wait()) => Some(r),
    };
    let ended = match result {
        Some(Ok(Ok(status))) => Ok(status),
        Some(Ok(Err(e))) => return Attempt::SpawnFailed(e),
        Some(Err(_elapsed)) => Err(false),
        None => Err(true),
    };
    if ended.is_err() {
        // The shell and everything it started: the group id is the shell's pid (process_group(0)).
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = child.wait().await;
    }
    let mut output = String::new();
    for reader in [stdout, stderr].into_iter().flatten() {
        if let Ok(Ok(text)) = tokio::time::timeout(OUTPUT_GRACE, reader).await {
            if !output.is_empty() && !text.trim().is_empty() {
                output.push_str(" | ");
            }
            output.push_str(text.trim());
        }
    }
    match ended {
        Ok(status) => Attempt::Exited(status, output),
        Err(false) => Attempt::TimedOut(output),
        Err(true) => Attempt::Cancelled,
    }
}

/// Up to [`OUTPUT_LIMIT`] bytes of a stream, lossily decoded; the rest is drained and dropped so
/// the hook never blocks on a full pipe.
async fn read_limited(mut stream: impl AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let _ = (&mut stream)
        .take(OUTPUT_LIMIT)
        .read_to_end(&mut kept)
        .await;
    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_observed_with_every_label_value_declared() {
        let run = HookReport {
            outcome: HookOutcome::Timeout,
            attempts: 2,
            duration: Duration::from_millis(30),
        }
        .observation(HookEvent::Demote);
        assert_eq!(
            run,
            crate::observe::HookRun {
                event: "demote",
                outcome: "timeout",
                attempts: 2,
                duration: Duration::from_millis(30),
            }
        );
        assert_eq!(
            observation_labels(),
            crate::observe::Observation::HookLabels {
                events: &["promote", "demote"],
                outcomes: &["success", "failure", "timeout", "cancelled"],
            }
        );
    }

    fn context() -> HookContext {
        HookContext {
            vip: IpAddr::from([10, 0, 0, 10]),
            prefix_len: 24,
            interface: "eth0".into(),
            trigger_key: "/service/pg/leader".into(),
            trigger_value: "pg-1".into(),
        }
    }

    fn config(promote: &str, timeout: Duration, retries: u32) -> HookConfig {
        HookConfig {
            on_promote: Some(promote.to_owned()),
            on_demote: None,
            timeout,
            retries,
        }
    }

    /// The promote hook of `c`, which is configured, uncancelled.
    async fn promote(c: &HookConfig) -> HookReport {
        run(c, HookEvent::Promote, &context(), &CancellationToken::new())
            .await
            .expect("on-promote is configured")
    }

    struct Dir(std::path::PathBuf);
    impl Dir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "vip-agent-hooks-{name}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn no_command_runs_nothing() {
        let c = HookConfig::default();
        let cancel = CancellationToken::new();
        assert_eq!(run(&c, HookEvent::Promote, &context(), &cancel).await, None);
        assert_eq!(run(&c, HookEvent::Demote, &context(), &cancel).await, None);
    }

    #[tokio::test]
    async fn a_hook_sees_only_the_allow_list_and_its_own_variables() {
        let dir = Dir::new("envlist");
        let out = dir.0.join("env");
        let c = config(
            &format!("env > {}", out.display()),
            Duration::from_secs(10),
            0,
        );
        let r = promote(&c).await;
        assert_eq!(r.outcome, HookOutcome::Success);
        let env = std::fs::read_to_string(&out).unwrap();
        // The shell adds PWD, SHLVL and _ by itself.
        let shell = ["PWD", "OLDPWD", "SHLVL", "_"];
        for line in env.lines() {
            let name = line.split('=').next().unwrap_or(line);
            assert!(
                name.starts_with("VIP_AGENT_")
                    || INHERITED_ENV.contains(&name)
                    || shell.contains(&name),
                "a hook inherited {name} from the agent:\n{env}"
            );
        }
        assert!(env.contains("VIP_AGENT_VIP=10.0.0.10"), "{env}");
    }

    #[tokio::test]
    async fn success_sees_the_vip_in_its_environment() {
        let dir = Dir::new("env");
        let out = dir.0.join("env");
        let c = config(
            &format!(
                "echo \"$VIP_AGENT_EVENT $VIP_AGENT_VIP/$VIP_AGENT_NETMASK $VIP_AGENT_INTERFACE \
                 $VIP_AGENT_TRIGGER_KEY $VIP_AGENT_TRIGGER_VALUE\" > {}",
                out.display()
            ),
            Duration::from_secs(10),
            0,
        );
        let r = promote(&c).await;
        assert_eq!((r.outcome, r.attempts), (HookOutcome::Success, 1));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "promote 10.0.0.10/24 eth0 /service/pg/leader pg-1\n"
        );
    }

    #[tokio::test]
    async fn failures_are_retried_until_one_succeeds() {
        let dir = Dir::new("retry");
        let count = dir.0.join("count");
        // Fails twice, succeeds on the third attempt.
        let c = config(
            &format!(
                "echo x >> {0}; test $(wc -l < {0}) -ge 3 || {{ echo nope >&2; exit 3; }}",
                count.display()
            ),
            Duration::from_secs(10),
            2,
        );
        let r = promote(&c).await;
        assert_eq!((r.outcome, r.attempts), (HookOutcome::Success, 3));
        assert!(r.duration >= 2 * RETRY_DELAY, "{r:?}");

        // With one retry it gives up after two attempts.
        std::fs::remove_file(&count).unwrap();
        let c = HookConfig { retries: 1, ..c };
        let r = promote(&c).await;
        assert_eq!((r.outcome, r.attempts), (HookOutcome::Failure, 2));
    }

    /// A hook that outlives its timeout is killed with everything it started.
    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let dir = Dir::new("timeout");
        let pid_file = dir.0.join("pid");
        let c = config(
            &format!("sleep 30 & echo $! > {}; wait", pid_file.display()),
            Duration::from_millis(300),
            0,
        );
        let r = promote(&c).await;
        assert_eq!((r.outcome, r.attempts), (HookOutcome::Timeout, 1));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background `sleep` is gone (killed, and reaped by init or our subreaper).
        let gone = (0..50).any(|_| {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive = !state.is_empty() && !state.contains(") Z ");
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "the hook's child {pid} survived the timeout");
    }

    #[tokio::test]
    async fn cancellation_kills_a_running_hook_at_once() {
        let c = config("sleep 30", Duration::from_secs(60), 5);
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            canceller.cancel();
        });
        let started = Instant::now();
        let r = run(&c, HookEvent::Promote, &context(), &cancel)
            .await
            .unwrap();
        assert_eq!((r.outcome, r.attempts), (HookOutcome::Cancelled, 1));
        assert!(started.elapsed() < Duration::from_secs(20), "{r:?}");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_failure_with_the_shells_message() {
        let c = config("/nonexistent/vip-hook", Duration::from_secs(10), 0);
        let r = promote(&c).await;
        assert_eq!((r.outcome, r.attempts), (HookOutcome::Failure, 1));
    }
}
