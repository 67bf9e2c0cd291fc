//! systemd service notifications (`sd_notify(3)`) without libsystemd.
//!
//! With `Type=notify`, systemd passes the path of a Unix datagram socket in `$NOTIFY_SOCKET` and
//! waits for `READY=1` on it before it calls the unit started (and before units ordered after it,
//! such as `patroni.service`, start). The protocol is one datagram of newline-separated
//! `KEY=VALUE` assignments; the socket is a filesystem path (`/run/systemd/notify`) or, with a
//! leading `@`, a name in the abstract namespace.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd, or `Type=simple`) every call is a no-op.

use std::{
    ffi::OsStr,
    io,
    os::linux::net::SocketAddrExt as _,
    os::unix::{
        ffi::OsStrExt as _,
        net::{SocketAddr, UnixDatagram},
    },
    path::Path,
    time::Duration,
};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A send blocks only while systemd's receive queue is full; never hold a runtime thread longer.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Where notifications go: systemd's socket, or nowhere.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<SocketAddr>,
}

impl Notifier {
    /// The socket named by `$NOTIFY_SOCKET`; a no-op notifier when it is unset or empty.
    ///
    /// # Errors
    /// When the variable names neither an absolute path nor an abstract (`@`) socket.
    pub fn from_env() -> io::Result<Self> {
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(name) if !name.is_empty() => Self::to_socket(&name),
            _ => Ok(Self::disabled()),
        }
    }

    /// A notifier that sends nothing.
    #[must_use]
    pub const fn disabled() -> Self {
        Self { socket: None }
    }

    /// Notifications to `name`, in `$NOTIFY_SOCKET` syntax: an absolute path, or `@name` for the
    /// abstract namespace.
    ///
    /// # Errors
    /// When `name` is neither, or does not fit in a socket address.
    pub fn to_socket(name: &OsStr) -> io::Result<Self> {
        let bytes = name.as_bytes();
        let socket = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
            SocketAddr::from_abstract_name(abstract_name)?
        } else if bytes.starts_with(b"/") {
            SocketAddr::from_pathname(Path::new(name))?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{NOTIFY_SOCKET}={}: neither an absolute path nor an abstract socket (@name)",
                    name.display()
                ),
            ));
        };
        Ok(Self {
            socket: Some(socket),
        })
    }

    /// Whether notifications go anywhere.
    #[must_use]
    pub const fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// `READY=1` with a status line: startup is finished.
    ///
    /// # Errors
    /// When the datagram cannot be sent.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&[("READY", "1"), ("STATUS", status)])
    }

    /// `STOPPING=1` with a status line: the service is shutting down.
    ///
    /// # Errors
    /// When the datagram cannot be sent.
    pub fn stopping(&self, status: &str) -> io::Result<()> {
        self.send(&[("STOPPING", "1"), ("STATUS", status)])
    }

    /// `STATUS=...`: the free-form line `systemctl status` shows.
    ///
    /// # Errors
    /// When the datagram cannot be sent.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&[("STATUS", status)])
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (`CLOCK_MONOTONIC` now, in microseconds): a reload began
    /// (SIGHUP). systemd (`Type=notify-reload` semantics, accepted for `Type=notify` since 253)
    /// shows the unit "reloading" until the next `READY=1`.
    ///
    /// # Errors
    /// When the datagram cannot be sent.
    pub fn reloading(&self, status: &str) -> io::Result<()> {
        // CLOCK_MONOTONIC itself, whatever clock the deadlines use.
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map_err(io::Error::from)?;
        let usec = (u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000
            + u64::try_from(now.tv_nsec()).unwrap_or(0) / 1_000)
            .to_string();
        self.send(&[
            ("RELOADING", "1"),
            ("MONOTONIC_USEC", &usec),
            ("STATUS", status),
        ])
    }

    /// `WATCHDOG=1`: the service is alive (`WatchdogSec=`).
    ///
    /// # Errors
    /// When the datagram cannot be sent.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send(&[("WATCHDOG", "1")])
    }

    /// Send the assignments as one datagram. Newlines in values would start a new assignment, so
    /// they are replaced by spaces.
    ///
    /// # Errors
    /// When the datagram cannot be sent (socket gone, queue full for the send timeout, ...).
    pub fn send(&self, assignments: &[(&str, &str)]) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let message = render(assignments);
        let sender = UnixDatagram::unbound()?;
        sender.set_write_timeout(Some(SEND_TIMEOUT))?;
        let sent = sender.send_to_addr(message.as_bytes(), socket)?;
        if sent == message.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", message.len()),
            ))
        }
    }
}

/// A SIGHUP reload as systemd sees it: [`Reload::begin`] sends `RELOADING=1`; dropping it sends
/// `READY=1` (the configuration was unchanged or invalid: the running one goes on), unless
/// [`Reload::restarting`] said the agent restarts with a new configuration, whose own start sends
/// `READY=1` once it is ready (`agent::notify_ready`). Failures to notify are logged, never fatal.
#[derive(Debug)]
#[must_use = "dropping the reload at once tells systemd it is over"]
pub struct Reload {
    notifier: Option<Notifier>,
}

impl Reload {
    /// `RELOADING=1` now.
    pub fn begin() -> Self {
        let notifier = match Notifier::from_env() {
            Ok(n) if n.is_enabled() => n,
            Ok(_) => return Self { notifier: None },
            Err(e) => {
                tracing::warn!(error = %e, "cannot notify systemd");
                return Self { notifier: None };
            }
        };
        if let Err(e) = notifier.reloading("reloading the configuration (SIGHUP)") {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
        Self {
            notifier: Some(notifier),
        }
    }

    /// The agent restarts with a new configuration: its start-up sends `READY=1`, not this.
    pub fn restarting(mut self) {
        self.notifier = None;
    }
}

impl Drop for Reload {
    fn drop(&mut self) {
        if let Some(n) = self.notifier.take()
            && let Err(e) = n.ready("running: configuration kept (SIGHUP)")
        {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// The environment variables systemd sets with `WatchdogSec=`.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The process the watchdog is meant for (a child that inherited the variables must not ping).
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// How often to send `WATCHDOG=1` when systemd asks for it (`WatchdogSec=`): a quarter of the
/// interval, so a loaded machine that delays one ping by a whole period does not get the agent
/// killed. `None` when the variables are absent, meant for another process, or unusable.
#[must_use]
pub fn watchdog_period() -> Option<Duration> {
    if let Some(pid) = std::env::var_os(WATCHDOG_PID)
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var(WATCHDOG_USEC).ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec) / 4)
}

/// Send `WATCHDOG=1` every [`watchdog_period`] on the runtime, for as long as it runs (across
/// SIGHUP restarts of the agent). A no-op without `WatchdogSec=`. Each ping shows systemd that the
/// runtime's workers and timers run; an agent wedged past `WatchdogSec=` gets SIGABRT and is
/// restarted (`Restart=always`), while its deadline has already fenced it.
pub fn spawn_watchdog() {
    let Some(period) = watchdog_period() else {
        return;
    };
    let notifier = match Notifier::from_env() {
        Ok(n) if n.is_enabled() => n,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot notify systemd; no watchdog pings");
            return;
        }
    };
    tracing::info!(period = ?period, "systemd watchdog: pinging");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match notifier.watchdog() {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot send the systemd watchdog ping");
                }
                Err(_) => {}
            }
        }
    });
}

/// `KEY=VALUE\n...`, each value on one line.
fn render(assignments: &[(&str, &str)]) -> String {
    assignments.iter().fold(String::new(), |mut out, (k, v)| {
        out.push_str(k);
        out.push('=');
        out.extend(v.chars().map(|c| if c == '\n' { ' ' } else { c }));
        out.push('\n');
        out
    })
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::net::UnixDatagram,
        path::PathBuf,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "vip-agent-notify-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            drop(std::fs::remove_dir_all(&self.0));
        }
    }

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0_u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notify_sends_ready_stopping_and_status_to_a_path_socket() {
        let dir = TempDir::new();
        let path = dir.0.join("notify.sock");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::to_socket(path.as_os_str()).unwrap();
        assert!(notifier.is_enabled());

        notifier.ready("following 1 leader key").unwrap();
        assert_eq!(
            receive(&systemd),
            "READY=1\nSTATUS=following 1 leader key\n"
        );
        notifier.status("etcd\nunreachable").unwrap();
        assert_eq!(receive(&systemd), "STATUS=etcd unreachable\n");
        notifier.stopping("fencing").unwrap();
        assert_eq!(receive(&systemd), "STOPPING=1\nSTATUS=fencing\n");
    }

    #[test]
    fn notify_sends_to_an_abstract_socket() {
        let name = format!("vip-agent-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::to_socket(OsStr::new(&format!("@{name}"))).unwrap();

        notifier.ready("up").unwrap();
        assert_eq!(receive(&systemd), "READY=1\nSTATUS=up\n");
    }

    #[test]
    fn notify_disabled_sends_nothing_and_succeeds() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.ready("x").unwrap();
        notifier.stopping("x").unwrap();
        notifier.status("x").unwrap();
    }

    #[test]
    fn notify_refuses_a_relative_socket_name() {
        let e = Notifier::to_socket(OsStr::new("run/notify")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("NOTIFY_SOCKET=run/notify"), "{e}");
    }

    #[test]
    fn notify_to_a_missing_socket_is_an_error() {
        let dir = TempDir::new();
        let notifier = Notifier::to_socket(dir.0.join("absent.sock").as_os_str()).unwrap();
        assert!(notifier.ready("x").is_err());
    }
}
