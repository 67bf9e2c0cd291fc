//! The running leader source: the socket, the PostgreSQL checks, the rounds of repmgr's view,
//! the state file.

use std::{
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, watch},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, error, info, warn};

use super::{
    events::EventClass,
    metadata::{Round, Rounds},
    protocol::{EventRequest, MAX_REQUEST, Reply},
    tracker::{Decision, Effect, Ignored, Level, Role, Tracker},
    view::judge,
};
use crate::{
    clock::monotonic_ns,
    leadership::{Hook, Leadership, Publisher, Source, SourceKind},
    pg::Status,
};

/// repmgr as a leader source.
pub static KIND: SourceKind = SourceKind {
    name: "repmgr",
    what: "the local PostgreSQL (repmgr mode)",
    // Patroni's failsafe mode is about Patroni's DCS: it never covers repmgr's checks.
    failsafe_applies: false,
    detail: (
        "vip_agent_repmgr_role_events",
        "repmgr role events applied since the agent started.",
    ),
};

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections handled at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;

/// Every outcome of a request on the event socket.
pub const EVENT_OUTCOMES: [&str; 3] = ["applied", "ignored", "rejected"];

/// Called with the outcome of every request: one of [`EVENT_OUTCOMES`].
pub type EventHook = std::sync::Arc<dyn Fn(&'static str) + Send + Sync>;

/// Everything the source needs, resolved (group id, parsed connection string).
#[derive(Clone, Debug)]
pub struct RepmgrSettings {
    /// This node's repmgr `node_id`.
    pub node_id: u32,
    /// The Unix socket `vip-agent event` talks to.
    pub socket: PathBuf,
    /// Group whose members may send events (socket mode 0660); `None`: root only (0600).
    pub socket_group: Option<u32>,
    /// Period of `SELECT pg_is_in_recovery()` while primary (also the check's timeout).
    pub check_interval: Duration,
    /// How long one successful check keeps the VIP answering (from when it was sent).
    pub validity: Duration,
    /// How long a primary keeps renewing without a majority of repmgr's nodes reachable.
    pub quorum_hold: Duration,
    /// Where the last accepted role event is recorded (for diagnosis: never a reason to answer).
    pub state_file: PathBuf,
    /// The local PostgreSQL (also where this node's `repmgr.nodes` is read).
    pub postgres: tokio_postgres::Config,
    /// Passwords for the other nodes' `conninfo` (libpq's `.pgpass` format).
    pub passfile: Option<PathBuf>,
}

/// Why the source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RepmgrError {
    #[error("repmgr socket {}: {operation}", path.display())]
    Socket {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("repmgr socket {}: {reason}", path.display())]
    SocketInUse { path: PathBuf, reason: String },
    #[error("repmgr-socket-group {group:?}: {reason}")]
    Group { group: String, reason: String },
    #[error("postgres-dsn: not a connection string")]
    Dsn(#[source] tokio_postgres::Error),
}

/// A group name or number to its id.
///
/// # Errors
/// An unknown group, or one that cannot be looked up.
pub fn resolve_group(group: &str) -> Result<u32, RepmgrError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(RepmgrError::Group {
            group: group.to_owned(),
            reason: "no such group".to_owned(),
        }),
        Err(e) => Err(RepmgrError::Group {
            group: group.to_owned(),
            reason: format!("cannot look it up: {e}"),
        }),
    }
}

/// Peer credentials, as `SO_PEERCRED` gives them, plus the peer's supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub groups: Vec<u32>,
}

/// Whether `peer` may send events: root (or the agent's own user), or, when a socket group is
/// configured, a member of it (primary or supplementary group). The socket's file mode already
/// keeps others out; this check holds even if the mode was loosened by hand.
///
/// # Errors
/// The reason, for the log line and the error reply.
pub fn peer_allowed(peer: &Peer, own_uid: u32, group: Option<u32>) -> Result<(), String> {
    if peer.uid == 0 || peer.uid == own_uid {
        return Ok(());
    }
    match group {
        Some(g) if peer.gid == g || peer.groups.contains(&g) => Ok(()),
        Some(g) => Err(format!(
            "uid {} (gid {}) is neither root nor in the socket group (gid {g})",
            peer.uid, peer.gid
        )),
        None => Err(format!(
            "uid {} is not root, and no repmgr-socket-group is configured",
            peer.uid
        )),
    }
}

/// The peer's supplementary groups as the kernel recorded them when it connected
/// (`SO_PEERGROUPS`, Linux 4.13), rather than `/proc/<pid>/status` read after accept, which
/// races with the peer exiting and its PID being reused.
fn peer_groups(socket: std::os::fd::BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd as _;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `groups` is a writable buffer of `len` bytes; the kernel writes at most `len`
        // bytes and sets `len` to what it wrote (or needs, with ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let needed = usize::try_from(len).unwrap_or(0) / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() {
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`, ...), for log fields.
fn loggable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The role persisted by a previous run for `node_id`, if any (a file for another node, or one
/// that cannot be read, is logged and ignored: the agent then starts fenced, as without one).
#[must_use]
pub fn load_state(path: &Path, node_id: u32) -> Option<Role> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the repmgr state file; starting without a role");
            return None;
        }
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(str::trim)
    };
    match (
        field("node_id").and_then(|n| n.parse::<u32>().ok()),
        field("role").and_then(Role::parse),
    ) {
        (Some(n), Some(role)) if n == node_id => Some(role),
        (Some(n), Some(_)) => {
            warn!(path = %path.display(), file_node = n, node_id, "the repmgr state file is for another node; ignoring it");
            None
        }
        _ => {
            warn!(path = %path.display(), "the repmgr state file is malformed; ignoring it");
            None
        }
    }
}

/// Persist `role` atomically: a temporary file in the same directory, fsync, rename, fsync the
/// directory. A crash leaves the old file or the new one, never a torn one. As keepalived does
/// since CVE-2018-19044: the temporary name is unpredictable and created exclusively
/// (`O_EXCL | O_NOFOLLOW`, mode 0600), so nothing planted in the directory is written through,
/// and a directory created here is 0700.
///
/// # Errors
/// The failed step.
pub fn save_state(path: &Path, node_id: u32, role: Role, event: &str) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let body = format!(
        "# vip-agent repmgr state: the last role event accepted (written atomically)\n\
         node_id={node_id}\nrole={}\nevent={event}\n",
        role.as_str()
    );
    let (tmp, mut f) = loop {
        let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(format!(".{:016x}.tmp", fastrand::u64(..)));
        let tmp = dir.join(tmp_name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let written = f.write_all(body.as_bytes()).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

use std::os::unix::fs::OpenOptionsExt as _;

/// A request from a connection task to the source task.
type Pending = (EventRequest, oneshot::Sender<Reply>);

/// The repmgr leader source. Build it, [`subscribe`](Self::subscribe) and/or hook it with
/// [`on_change`](Self::on_change), then drive [`run`](Self::run) on a task; it removes its socket
/// when it ends.
pub struct RepmgrSource {
    settings: RepmgrSettings,
    listener: UnixListener,
    /// Device and inode of our socket file: only that file is removed at the end.
    socket_id: (u64, u64),
    tracker: Tracker,
    out: Publisher,
    on_event: Option<EventHook>,
}

impl std::fmt::Debug for RepmgrSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepmgrSource")
            .field("settings", &self.settings)
            .field("state", self.tracker.state())
            .finish_non_exhaustive()
    }
}

impl Source for RepmgrSource {
    fn kind(&self) -> &'static SourceKind {
        &KIND
    }

    fn subscribe(&self) -> watch::Receiver<Leadership> {
        Self::subscribe(self)
    }

    fn on_change(&mut self, hook: Hook) {
        self.out.on_change(hook);
    }

    fn run(self: Box<Self>, cancel: CancellationToken) -> futures::future::BoxFuture<'static, ()> {
        Box::pin((*self).run(cancel))
    }
}

impl RepmgrSource {
    /// Read the state file and create the socket (a stale one is replaced; one that a running
    /// process answers on is an error). Must run inside a tokio runtime.
    ///
    /// # Errors
    /// The socket cannot be created, or another agent listens on it.
    pub fn new(settings: RepmgrSettings) -> Result<Self, RepmgrError> {
        if let Some(role) = load_state(&settings.state_file, settings.node_id) {
            info!(role = role.as_str(), path = %settings.state_file.display(),
                "the last run recorded this repmgr role; it proves nothing now: fenced until a \
                 promoting event or repmgr's metadata confirms this node");
        }
        let (listener, socket_id) = bind(&settings.socket, settings.socket_group)?;
        let tracker = Tracker::new(
            settings.node_id,
            settings.validity,
            settings.quorum_hold,
            monotonic_ns(),
        );
        let out = Publisher::new(tracker.state().observed_at_ns);
        Ok(Self {
            settings,
            listener,
            socket_id,
            tracker,
            out,
            on_event: None,
        })
    }

    /// A receiver of the published state (starts fenced, [`crate::leadership::Cause::Startup`]).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.out.subscribe()
    }

    /// A hook called in the source task with each published state, before the watch channel.
    pub fn on_change(&mut self, hook: impl FnMut(&Leadership) + Send + 'static) {
        self.out.on_change(Box::new(hook));
    }

    /// A hook called with the outcome of every request (for the metrics).
    pub fn on_event(&mut self, hook: impl Fn(&'static str) + Send + Sync + 'static) {
        self.on_event = Some(std::sync::Arc::new(hook));
    }

    fn publish(&mut self) {
        let state = *self.tracker.state();
        self.out.publish(&state);
    }

    fn count(&self, outcome: &'static str) {
        if let Some(hook) = &self.on_event {
            hook(outcome);
        }
    }

    fn persist(&self, role: Role, event: &str) {
        if let Err(e) = save_state(
            &self.settings.state_file,
            self.settings.node_id,
            role,
            event,
        ) {
            error!(path = %self.settings.state_file.display(), error = %e, role = role.as_str(), "cannot persist the repmgr role; a restarted agent would not know it");
        }
    }

    /// Serve events, check PostgreSQL and ask repmgr's nodes until `cancel`; then remove the
    /// socket.
    pub async fn run(mut self, cancel: CancellationToken) {
        info!(node_id = self.settings.node_id, socket = %self.settings.socket.display(),
            interval_ms = self.settings.check_interval.as_millis(),
            validity_ms = self.settings.validity.as_millis(),
            quorum_hold_ms = self.settings.quorum_hold.as_millis(),
            "following this node's repmgr role");
        let (req_tx, mut req_rx) = mpsc::channel::<Pending>(MAX_CONNECTIONS);
        let (check_tx, mut check_rx) = mpsc::channel::<(u64, Status)>(4);
        let (round_tx, mut round_rx) = mpsc::channel::<(u64, Result<Round, String>)>(2);
        let (wanted_tx, wanted_rx) = watch::channel(false);
        let check_now = std::sync::Arc::new(tokio::sync::Notify::new());
        let tasks = TaskTracker::new();
        let stop = cancel.child_token();
        tasks.spawn(checker(
            self.settings.postgres.clone(),
            self.settings.check_interval,
            std::sync::Arc::clone(&check_now),
            check_tx,
            stop.clone(),
        ));
        tasks.spawn(rounds(
            Rounds::new(
                self.settings.node_id,
                self.settings.postgres.clone(),
                self.settings.passfile.clone(),
                self.settings.check_interval,
            ),
            self.settings.check_interval,
            wanted_rx,
            round_tx,
            stop.clone(),
        ));
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let own_uid = nix::unistd::geteuid().as_raw();
        // The deadline whose passing was logged (once per deadline).
        let mut expiry_logged = 0;
        loop {
            let state = *self.tracker.state();
            let expiry = (state.primary && state.safe_until_ns > expiry_logged)
                .then(|| Duration::from_nanos(state.safe_until_ns.saturating_sub(monotonic_ns())));
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some((request, reply)) = req_rx.recv() => {
                    let answer = self.apply(&request, &check_now);
                    let _ = reply.send(answer);
                }
                Some((t_sent, status)) = check_rx.recv() => {
                    let effect = self.tracker.status(t_sent, &status, monotonic_ns());
                    if let Status::Unknown(why) = &status {
                        debug!(error = %why, "PostgreSQL check failed");
                    }
                    self.take(effect, "PostgreSQL check", &check_now);
                    wanted_tx.send_if_modified(|w| {
                        let want = self.tracker.wants_rounds();
                        std::mem::replace(w, want) != want
                    });
                }
                Some((t_sent, round)) = round_rx.recv() => {
                    let view = round.map(|r| {
                        judge(self.settings.node_id, self.tracker.timeline(), &r.records, &r.answers)
                    });
                    if let Ok(v) = &view {
                        debug!(view = %v.summary(), "repmgr's view");
                    }
                    let effect = self.tracker.view(t_sent, &view, monotonic_ns());
                    self.take(effect, "repmgr's view", &check_now);
                }
                () = sleep_for(expiry) => {
                    expiry_logged = state.safe_until_ns;
                    if let Some(why) = self.tracker.expired(monotonic_ns()) {
                        warn!(node_id = self.settings.node_id,
                            "the VIP went silent at its deadline, in the data plane: {why}");
                    }
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        // Never wait for a slot here: the connection tasks wait for this loop.
                        let Ok(permit) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
                            warn!("too many repmgr socket connections at once; dropping one");
                            continue;
                        };
                        let (req_tx, group, stop) = (req_tx.clone(), self.settings.socket_group, stop.clone());
                        let counter = self.on_event.clone();
                        tasks.spawn(async move {
                            tokio::select! {
                                () = stop.cancelled() => {}
                                () = serve(stream, own_uid, group, req_tx, counter) => {}
                            }
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "accepting on the repmgr socket failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        self.remove_socket();
        info!("repmgr source stopped; socket removed");
    }

    /// Carry out what a check or a round decided: its log lines first (a fence line before the
    /// fence), then the state, the state file, and a check at once.
    fn take(&mut self, effect: Effect, what: &str, check_now: &tokio::sync::Notify) {
        if effect.stale {
            debug!("{what}: an answer sent before the last role change was dropped");
            return;
        }
        for note in &effect.notes {
            match note.level {
                Level::Warn => warn!(node_id = self.settings.node_id, "{}", note.message),
                Level::Info => info!(node_id = self.settings.node_id, "{}", note.message),
                Level::Debug => debug!(node_id = self.settings.node_id, "{}", note.message),
            }
        }
        if effect.publish {
            self.publish();
        }
        if let Some(role) = effect.persist {
            self.persist(role, what);
        }
        if effect.check_now {
            check_now.notify_one();
        }
    }

    /// Apply one valid request, log it, and build the reply.
    fn apply(&mut self, request: &EventRequest, check_now: &tokio::sync::Notify) -> Reply {
        let decision = self.tracker.event(request, monotonic_ns());
        let node_id = self.settings.node_id;
        // The event word is checked ([a-z0-9_]); repmgr's timestamp and details are free text
        // from the socket, logged with control characters escaped so that they cannot forge
        // log lines or drive a terminal.
        let event = &request.event;
        let (ts, details) = (loggable(&request.timestamp), loggable(&request.details));
        match decision {
            Decision::Applied {
                class,
                role,
                publish,
                check,
            } => {
                let message = match class {
                    EventClass::Primary if publish => format!(
                        "{event}: node {node_id} is primary; the VIP answers once PostgreSQL \
                         confirms it is not in recovery"
                    ),
                    EventClass::Primary => format!("{event}: node {node_id} is already primary"),
                    EventClass::Recheck => format!(
                        "{event}: repmgrd lost node {node_id}'s standbys; the VIP is fenced until \
                         repmgr's nodes confirm this node again"
                    ),
                    EventClass::NotPrimary | EventClass::Neutral => {
                        format!("{event}: node {node_id} is not primary; the VIP is fenced")
                    }
                };
                info!(event = %event, node_id, timestamp = %ts, details = %details,
                    role = role.as_str(), "repmgr event applied");
                if publish && class != EventClass::Primary {
                    warn!(node_id, "fenced: repmgr reports {event} ({details})");
                }
                if publish {
                    self.publish();
                }
                self.persist(role, event);
                if check {
                    check_now.notify_one();
                }
                self.count("applied");
                Reply::Ok {
                    outcome: "applied".to_owned(),
                    message,
                }
            }
            Decision::Ignored(why) => {
                let message = why.describe(event, node_id);
                if why == Ignored::Failed {
                    warn!(event = %event, node = request.node_id, timestamp = %ts,
                        details = %details, "repmgr event ignored: {message}");
                } else {
                    info!(event = %event, node = request.node_id, timestamp = %ts,
                        details = %details, "repmgr event ignored: {message}");
                }
                self.count("ignored");
                Reply::Ok {
                    outcome: "ignored".to_owned(),
                    message,
                }
            }
        }
    }

    fn remove_socket(&self) {
        let path = &self.settings.socket;
        match std::fs::symlink_metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == self.socket_id => {
                if let Err(e) = std::fs::remove_file(path) {
                    warn!(socket = %path.display(), error = %e, "cannot remove the repmgr socket");
                }
            }
            Ok(_) => warn!(socket = %path.display(),
                "the repmgr socket was replaced by another file; leaving it"),
            Err(_) => {}
        }
    }
}

/// Create the socket: its directory (0700, or 0750 with a group, when we create it), a stale
/// socket file removed, mode 0600 (0660 and the group with a group).
fn bind(path: &Path, group: Option<u32>) -> Result<(UnixListener, (u64, u64)), RepmgrError> {
    let err = |operation: &'static str| {
        move |source: io::Error| RepmgrError::Socket {
            path: path.to_owned(),
            operation,
            source,
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(err("create its directory"))?;
        let mode = if group.is_some() { 0o750 } else { 0o700 };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .map_err(err("set its directory's mode"))?;
        if let Some(gid) = group {
            nix::unistd::chown(dir, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| err("set its directory's group")(io::Error::from(e)))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(RepmgrError::SocketInUse {
                    path: path.to_owned(),
                    reason: "a running process listens on it (another vip-agent?)".to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(err("remove the stale socket"))?;
        }
        Ok(_) => {
            return Err(RepmgrError::SocketInUse {
                path: path.to_owned(),
                reason: "exists and is not a socket; remove it or choose another repmgr-socket"
                    .to_owned(),
            });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err("bind"))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(err("set its mode"))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| err("set its group")(io::Error::from(e)))?;
    }
    let m = std::fs::symlink_metadata(path).map_err(err("stat"))?;
    Ok((listener, (m.dev(), m.ino())))
}

/// One connection: check the peer, read one line (bounded in size and time), hand it to the
/// source, write its reply.
async fn serve(
    stream: UnixStream,
    own_uid: u32,
    group: Option<u32>,
    requests: mpsc::Sender<Pending>,
    counter: Option<EventHook>,
) {
    let count = |outcome| {
        if let Some(c) = &counter {
            c(outcome);
        }
    };
    let credentials = stream.peer_cred().and_then(|c| {
        use std::os::fd::AsFd as _;
        Ok((c, peer_groups(stream.as_fd())?))
    });
    let peer = match credentials {
        Ok((c, groups)) => Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
            groups,
        },
        Err(e) => {
            warn!(error = %e, "repmgr socket: cannot read the peer's credentials; refusing");
            count("rejected");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    if let Err(why) = peer_allowed(&peer, own_uid, group) {
        warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "repmgr socket: request refused: {why}");
        count("rejected");
        let reply = Reply::Error(format!("permission denied: {why}"));
        let _ =
            tokio::time::timeout(READ_TIMEOUT, write.write_all(reply.encode().as_bytes())).await;
        return;
    }
    let mut line = Vec::new();
    let limit = u64::try_from(MAX_REQUEST).unwrap_or(u64::MAX);
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, limit));
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let request = match read {
        Err(_) => Err(format!(
            "no complete request within {} s",
            READ_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("reading the request failed: {e}")),
        Ok(Ok(_)) if !line.ends_with(b"\n") && line.len() >= MAX_REQUEST => {
            Err(format!("the request is longer than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) if !line.ends_with(b"\n") => {
            Err("the request does not end with a newline".to_owned())
        }
        Ok(Ok(_)) => EventRequest::decode(&line),
    };
    let reply = match request {
        Err(why) => {
            warn!(uid = peer.uid, pid = ?peer.pid, "repmgr socket: bad request refused: {why}");
            count("rejected");
            Reply::Error(why)
        }
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if requests.send((request, tx)).await.is_err() {
                return;
            }
            match rx.await {
                Ok(reply) => reply,
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(READ_TIMEOUT, write.write_all(reply.encode().as_bytes())).await;
}

/// Ask the local PostgreSQL for its [`Status`] every `interval`, at once when notified, and at
/// once when the kept connection ends (a fast shutdown terminates it before anything else), each
/// answer bounded by `interval`; report `(t_sent, status)`.
async fn checker(
    config: tokio_postgres::Config,
    interval: Duration,
    now: std::sync::Arc<tokio::sync::Notify>,
    results: mpsc::Sender<(u64, Status)>,
    stop: CancellationToken,
) {
    let mut probe = crate::pg::RecoveryProbe::new(config);
    let closed = probe.closed();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = now.notified() => {}
            () = closed.notified() => debug!("the connection to PostgreSQL ended; checking at once"),
            _ = ticker.tick() => {}
        }
        let t_sent = monotonic_ns();
        let status = if let Ok(status) = tokio::time::timeout(interval, probe.status()).await {
            status
        } else {
            probe.reset();
            Status::Unknown(format!("no answer within {} ms", interval.as_millis()))
        };
        if results.send((t_sent, status)).await.is_err() {
            break;
        }
    }
    probe.reset();
}

/// A round of repmgr's view every `interval` while `wanted` (the local PostgreSQL takes writes),
/// and at once when it becomes wanted; report `(t_sent, round)`.
async fn rounds(
    mut rounds: Rounds,
    interval: Duration,
    mut wanted: watch::Receiver<bool>,
    results: mpsc::Sender<(u64, Result<Round, String>)>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            changed = wanted.changed() => if changed.is_err() { break },
            _ = ticker.tick() => {}
        }
        if !*wanted.borrow_and_update() {
            continue;
        }
        let t_sent = monotonic_ns();
        // A round waits up to two intervals for unreachable nodes: shutdown does not wait for it.
        let round = tokio::select! {
            () = stop.cancelled() => break,
            round = rounds.round() => round,
        };
        if results.send((t_sent, round)).await.is_err() {
            break;
        }
    }
}

/// Sleep `d`, or forever.
async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: Some(1),
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn only_root_the_agent_user_or_the_socket_group_may_send() {
        assert!(peer_allowed(&peer(0, 0, &[]), 0, None).is_ok());
        assert!(
            peer_allowed(&peer(990, 990, &[]), 990, None).is_ok(),
            "own uid"
        );
        let err = peer_allowed(&peer(1000, 1000, &[]), 0, None).expect_err("no group");
        assert!(
            err.contains("uid 1000") && err.contains("repmgr-socket-group"),
            "{err}"
        );
        assert!(
            peer_allowed(&peer(1000, 50, &[]), 0, Some(50)).is_ok(),
            "primary gid"
        );
        assert!(
            peer_allowed(&peer(1000, 1000, &[4, 50]), 0, Some(50)).is_ok(),
            "supplementary"
        );
        let err = peer_allowed(&peer(1000, 1000, &[4]), 0, Some(50)).expect_err("not a member");
        assert!(err.contains("gid 50"), "{err}");
    }

    #[test]
    fn the_state_file_round_trips_and_is_per_node() {
        let dir = std::env::temp_dir().join(format!("vip-repmgr-state-{}", std::process::id()));
        let path = dir.join("sub").join("state");
        save_state(&path, 4, Role::Primary, "standby_promote").expect("save");
        assert_eq!(load_state(&path, 4), Some(Role::Primary));
        assert_eq!(load_state(&path, 5), None, "another node's file");
        save_state(&path, 4, Role::NotPrimary, "node_rejoin").expect("save");
        assert_eq!(load_state(&path, 4), Some(Role::NotPrimary));
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.join("sub"))
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n != "state")
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        std::fs::write(&path, "garbage").expect("write");
        assert_eq!(load_state(&path, 4), None);
        assert_eq!(load_state(&dir.join("absent"), 4), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The groups come from the socket, as they were when the peer connected: still right after
    /// the peer has exited (its PID may already belong to another process).
    #[test]
    fn peer_groups_are_the_connecting_process_groups_even_after_it_exits() {
        use std::os::fd::AsFd as _;
        let dir = std::env::temp_dir().join(format!("vip-repmgr-groups-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let status = std::process::Command::new("setpriv")
            .args(["--groups", "4,50,4242", "--", "python3", "-c"])
            .arg(format!(
                "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
                path.to_str().expect("UTF-8 path")
            ))
            .status()
            .expect("run setpriv");
        assert!(status.success(), "the connecting child failed: {status}");
        let (stream, _) = listener.accept().expect("accept");
        let mut groups = peer_groups(stream.as_fd()).expect("SO_PEERGROUPS");
        groups.sort_unstable();
        assert_eq!(groups, [4, 50, 4242]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn logged_details_carry_no_control_characters() {
        let shown = loggable("node \"pg2\"\n2026-12-06 fake line\u{1b}[31mred\u{7}\t");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(
            shown,
            "node \"pg2\"\\n2026-12-06 fake line\\u{1b}[31mred\\u{7}\\t"
        );
    }

    /// keepalived's CVE-2018-19044 pattern: a link planted at a predictable temporary name must
    /// not make root write through it, and a directory the agent creates is private (issue 16,
    /// item 12).
    #[test]
    fn the_state_file_is_not_written_through_a_planted_link() {
        let dir = std::env::temp_dir().join(format!("vip-repmgr-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("state");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").expect("write victim");
        save_state(&path, 4, Role::Primary, "standby_promote").expect("save");
        let sub_mode = std::fs::metadata(dir.join("sub"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(sub_mode & 0o077, 0, "created directory mode {sub_mode:o}");
        std::os::unix::fs::symlink(&victim, dir.join("sub").join("state.tmp")).expect("plant");
        save_state(&path, 4, Role::NotPrimary, "node_rejoin").expect("save beside the link");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read victim"),
            "precious\n",
            "written through the link"
        );
        assert_eq!(load_state(&path, 4), Some(Role::NotPrimary));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
