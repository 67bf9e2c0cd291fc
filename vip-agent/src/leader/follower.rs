//! The etcd session loop: connect, read, watch, confirm; reconnect forever.

use std::convert::Infallible;
use std::time::Duration;

use etcd_client::{Client, EventType, KvClient, LeaseClient, WatchOptions};
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::{
    GRPC_FAILED_PRECONDITION, GRPC_INVALID_ARGUMENT, GRPC_NOT_FOUND, GRPC_PERMISSION_DENIED,
    GRPC_UNAUTHENTICATED, LeaderError, Operation, grpc_code,
};
use super::settings::LeaderSettings;
use super::state::{DeadlinePolicy, KIND, KeySeen, KeyState, Need, Tracker, Via};
use crate::clock::monotonic_ns;
use crate::leadership::{Hook, Leadership, Publisher, Source, SourceKind};

/// Follows one trigger key. Build it, [`subscribe`](Self::subscribe) and/or register a hook with
/// [`on_change`](Self::on_change), then drive [`run`](Self::run) on a task.
pub struct LeaderFollower {
    settings: LeaderSettings,
    endpoints: Vec<String>,
    key: Vec<u8>,
    value: Vec<u8>,
    tracker: Tracker,
    /// The etcd view (diagnostics and tests).
    keys: watch::Sender<KeyState>,
    key_hook: Option<KeyHook>,
    out: Publisher,
    outage: Option<Outage>,
    /// The current session got as far as a successful confirmation on a live watch.
    session_healthy: bool,
}

struct Outage {
    since_ns: u64,
    failures: u32,
}

impl std::fmt::Debug for LeaderFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderFollower")
            .field("settings", &self.settings)
            .field("state", self.tracker.state())
            .finish_non_exhaustive()
    }
}

/// Validates `settings`, builds a follower and spawns it on the current tokio runtime.
///
/// Returns the state receiver and the task; the task ends when `cancel` is cancelled.
pub fn spawn(
    settings: LeaderSettings,
    cancel: CancellationToken,
) -> Result<(watch::Receiver<KeyState>, tokio::task::JoinHandle<()>), LeaderError> {
    let follower = LeaderFollower::new(settings)?;
    let rx = follower.subscribe_key();
    Ok((rx, tokio::spawn(follower.run(cancel))))
}

/// Called with the etcd view behind every published state.
pub type KeyHook = Box<dyn FnMut(&KeyState) + Send>;

impl Source for LeaderFollower {
    fn kind(&self) -> &'static SourceKind {
        &KIND
    }

    fn subscribe(&self) -> watch::Receiver<Leadership> {
        Self::subscribe(self)
    }

    fn on_change(&mut self, hook: Hook) {
        self.out.on_change(hook);
    }

    fn run(self: Box<Self>, cancel: CancellationToken) -> BoxFuture<'static, ()> {
        (*self).run(cancel).boxed()
    }
}

impl LeaderFollower {
    /// Validates the settings and reads the TLS files once (so that a wrong path fails at start
    /// rather than in the retry loop). No network I/O.
    pub fn new(settings: LeaderSettings) -> Result<Self, LeaderError> {
        settings.validate()?;
        drop(settings.connect_options()?);
        let policy = DeadlinePolicy {
            margin: settings.safety_margin,
            fence_timeout: settings.fence_timeout,
            no_lease_validity: settings.no_lease_validity(),
        };
        let value = settings.trigger_value.as_bytes().to_vec();
        let tracker = Tracker::new(value.clone(), policy, monotonic_ns());
        let (keys, _) = watch::channel(*tracker.state());
        let out = Publisher::new(tracker.state().observed_at_ns);
        Ok(Self {
            endpoints: settings.normalized_endpoints(),
            key: settings.trigger_key.as_bytes().to_vec(),
            value,
            settings,
            tracker,
            keys,
            key_hook: None,
            out,
            outage: None,
            session_healthy: false,
        })
    }

    /// A receiver of the published leadership. It starts at "not primary, fenced"
    /// ([`Cause::Startup`](crate::leadership::Cause::Startup)) and only ever holds the latest
    /// state.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.out.subscribe()
    }

    /// A receiver of the key as etcd showed it (revision, lease, why), updated after each
    /// published leadership.
    #[must_use]
    pub fn subscribe_key(&self) -> watch::Receiver<KeyState> {
        self.keys.subscribe()
    }

    /// Registers a hook called with the etcd view behind each published state, just before it
    /// (diagnostics and tests).
    pub fn on_key(&mut self, hook: impl FnMut(&KeyState) + Send + 'static) {
        self.key_hook = Some(Box::new(hook));
    }

    /// Registers a hook called in the follower task with each published state (before the watch
    /// channel). Keep it short and non-blocking: a BPF map update fits, a netlink dump does not.
    pub fn on_change(&mut self, hook: impl FnMut(&Leadership) + Send + 'static) {
        self.out.on_change(Box::new(hook));
    }

    /// The settings this follower runs with.
    #[must_use]
    pub fn settings(&self) -> &LeaderSettings {
        &self.settings
    }

    /// Follows the key until `cancel` fires. Never gives up: every failure is logged and retried
    /// with exponential backoff and jitter, on the next endpoint.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.backoff_min, self.settings.backoff_max);
        let mut index = 0_usize;
        tracing::info!(
            key = %self.settings.trigger_key,
            value = %self.settings.trigger_value,
            endpoints = ?self.endpoints,
            "following the leader key"
        );
        loop {
            let endpoint = self
                .endpoints
                .get(index % self.endpoints.len().max(1))
                .cloned()
                .unwrap_or_default();
            self.session_healthy = false;
            let result = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                r = self.session(&endpoint) => r,
            };
            let Err(error) = result;
            if self.session_healthy {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            let error = self.settings.explain(error);
            self.on_failure(&endpoint, &error, delay);
            index = index.wrapping_add(1);
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn publish(&mut self) {
        let state = *self.tracker.state();
        if let Some(hook) = &mut self.key_hook {
            hook(&state);
        }
        self.out.publish(&state.leadership());
        self.keys.send_replace(state);
    }

    fn on_failure(&mut self, endpoint: &str, error: &LeaderError, delay: Duration) {
        let now = monotonic_ns();
        if self.tracker.unreachable(now) {
            self.publish();
        }
        let st = *self.tracker.state();
        let safe_for_ms = st.safe_until_ns.saturating_sub(now) / 1_000_000;
        let key = &self.settings.trigger_key;
        match &mut self.outage {
            None => {
                self.outage = Some(Outage {
                    since_ns: now,
                    failures: 1,
                });
                tracing::error!(
                    %key, %endpoint, %error, primary = st.primary, safe_for_ms,
                    retry_in = ?delay,
                    "etcd leader key: cannot use etcd; keeping the last state until its deadline, retrying"
                );
            }
            Some(outage) => {
                outage.failures = outage.failures.saturating_add(1);
                let down_for_s = now.saturating_sub(outage.since_ns) / 1_000_000_000;
                if error.is_auth_failure() {
                    tracing::error!(
                        %key, %endpoint, %error, failures = outage.failures, down_for_s,
                        retry_in = ?delay, "etcd leader key: authentication failed, retrying"
                    );
                } else {
                    tracing::warn!(
                        %key, %endpoint, %error, failures = outage.failures, down_for_s,
                        primary = st.primary, safe_for_ms, retry_in = ?delay,
                        "etcd leader key: etcd still unreachable, retrying"
                    );
                }
            }
        }
    }

    fn on_healthy(&mut self, endpoint: &str) {
        self.session_healthy = true;
        if let Some(outage) = self.outage.take() {
            let st = self.tracker.state();
            tracing::info!(
                key = %self.settings.trigger_key, %endpoint,
                failures = outage.failures,
                down_for_ms = monotonic_ns().saturating_sub(outage.since_ns) / 1_000_000,
                primary = st.primary,
                "etcd leader key: etcd reachable again"
            );
        }
    }

    fn log_change(&self, before: &KeyState) {
        let st = self.tracker.state();
        if st.primary != before.primary {
            tracing::info!(
                key = %self.settings.trigger_key, primary = st.primary, revision = st.revision,
                reason = ?st.reason, "leadership changed"
            );
        } else {
            tracing::debug!(
                key = %self.settings.trigger_key, primary = st.primary, revision = st.revision,
                safe_until_ns = st.safe_until_ns, reason = ?st.reason, "leader state"
            );
        }
    }

    /// One connection to one endpoint. Returns only on failure.
    async fn session(&mut self, endpoint: &str) -> Result<Infallible, LeaderError> {
        let client = connect(&self.settings, endpoint).await?;
        let mut kv = client.kv_client();
        let lease = client.lease_client();
        let mut watch_client = client.watch_client();
        let request_timeout = self.settings.request_timeout;
        let interval = self.settings.confirm_interval;
        let stall_after = interval
            .saturating_mul(3)
            .max(request_timeout.saturating_mul(2));

        // Each pass: linearizable read, then a watch from the revision after it. A compacted
        // watch comes back here (same connection); anything else ends the session.
        loop {
            let t_sent = monotonic_ns();
            let read = get(&mut kv, &self.key, endpoint, request_timeout).await?;
            let before = *self.tracker.state();
            self.tracker.reset_revision();
            let applied =
                self.tracker
                    .read(read.rev, read.seen(), Via::Read, t_sent, read.observed_at);
            if applied.publish {
                self.publish();
            }
            self.log_change(&before);
            // Ours with a lease: its deadline right away. Without a lease, the read above was the
            // confirmation.
            let st = self.tracker.state();
            let mut want = (st.primary && st.lease_id != 0).then_some(Want::Lease(st.lease_id));

            let opts = WatchOptions::new().with_start_revision(read.rev.saturating_add(1));
            let stream = tokio::time::timeout(
                request_timeout,
                watch_client.watch(self.key.clone(), Some(opts)),
            )
            .await
            .map_err(|_| timeout(Operation::Watch, endpoint, request_timeout))?
            .map_err(|cause| LeaderError::Watch {
                endpoint: endpoint.to_owned(),
                key: self.settings.trigger_key.clone(),
                cause,
            })?;
            let (mut requests, mut responses) = stream.split();
            let mut last_message = Instant::now();
            let mut created = false;
            // Set by the first answer to a progress request. etcd < 3.4 ignores those requests,
            // so a silent stream only counts as stalled once the server has shown it answers.
            let mut answers_progress = false;
            let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pending: Option<BoxFuture<'static, Result<Confirmation, LeaderError>>> = None;

            'watch: loop {
                if pending.is_none()
                    && let Some(w) = want.take()
                {
                    pending = Some(self.confirm(w, &kv, &lease, endpoint));
                }
                tokio::select! {
                    biased;
                    message = responses.next() => {
                        let observed_at = monotonic_ns();
                        last_message = Instant::now();
                        let response = match message {
                            None => return Err(LeaderError::WatchEnded {
                                endpoint: endpoint.to_owned(),
                                key: self.settings.trigger_key.clone(),
                            }),
                            Some(Err(cause)) => return Err(LeaderError::Watch {
                                endpoint: endpoint.to_owned(),
                                key: self.settings.trigger_key.clone(),
                                cause,
                            }),
                            Some(Ok(response)) => response,
                        };
                        if response.canceled() {
                            if response.compact_revision() > 0 {
                                tracing::warn!(
                                    key = %self.settings.trigger_key, %endpoint,
                                    compact_revision = response.compact_revision(),
                                    "etcd leader key: watch start revision was compacted; re-reading the key"
                                );
                                break 'watch;
                            }
                            return Err(LeaderError::WatchCanceled {
                                endpoint: endpoint.to_owned(),
                                key: self.settings.trigger_key.clone(),
                                reason: response.cancel_reason().to_owned(),
                            });
                        }
                        created |= response.created();
                        answers_progress |= !response.created() && response.events().is_empty();
                        let before = *self.tracker.state();
                        let mut publish = false;
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            if kv.key() != self.key.as_slice() {
                                continue;
                            }
                            let seen = match event.event_type() {
                                EventType::Put => KeySeen::Present {
                                    value: kv.value(),
                                    lease: kv.lease(),
                                    created: kv.create_revision(),
                                },
                                EventType::Delete => KeySeen::Absent,
                            };
                            publish |= self.tracker.event(kv.mod_revision(), seen, observed_at).publish;
                        }
                        if publish {
                            self.publish();
                            self.log_change(&before);
                        }
                        match self.tracker.need() {
                            Need::LeaseTtl(lease_id) => {
                                if want != Some(Want::Full) {
                                    want = Some(Want::Lease(lease_id));
                                }
                            }
                            Need::Read => want = Some(Want::Full),
                            Need::Nothing => {}
                        }
                    }
                    outcome = poll_pending(&mut pending) => {
                        pending = None;
                        self.apply_confirmation(outcome?, endpoint);
                        if created && !self.session_healthy {
                            self.on_healthy(endpoint);
                        }
                    }
                    _ = ticker.tick() => {
                        want = Some(Want::Full);
                        // Liveness of the watch stream itself: etcd answers a progress request
                        // at once, with or without events.
                        if let Some(Err(cause)) = requests.request_progress().now_or_never() {
                            return Err(LeaderError::Watch {
                                endpoint: endpoint.to_owned(),
                                key: self.settings.trigger_key.clone(),
                                cause,
                            });
                        }
                        let silent = last_message.elapsed();
                        if answers_progress && silent > stall_after {
                            return Err(LeaderError::WatchStalled {
                                endpoint: endpoint.to_owned(),
                                key: self.settings.trigger_key.clone(),
                                silent,
                            });
                        }
                    }
                }
            }
        }
    }

    fn confirm(
        &self,
        want: Want,
        kv: &KvClient,
        lease: &LeaseClient,
        endpoint: &str,
    ) -> BoxFuture<'static, Result<Confirmation, LeaderError>> {
        let mut kv = kv.clone();
        let mut lease = lease.clone();
        let key = self.key.clone();
        let value = self.value.clone();
        let endpoint = endpoint.to_owned();
        let limit = self.settings.request_timeout;
        Box::pin(async move {
            // Before anything is sent: the deadline counts from here.
            let t_sent = monotonic_ns();
            let (read, lease_id) = match want {
                Want::Full => {
                    let read = get(&mut kv, &key, &endpoint, limit).await?;
                    let lease_id = match &read.kv {
                        Some((v, l)) if *v == value && *l != 0 => Some(*l),
                        _ => None,
                    };
                    (Some(read), lease_id)
                }
                Want::Lease(l) => (None, Some(l)),
            };
            let ttl = match lease_id {
                Some(l) => Some(time_to_live(&mut lease, l, &endpoint, limit).await?),
                None => None,
            };
            Ok(Confirmation { t_sent, read, ttl })
        })
    }

    fn apply_confirmation(&mut self, c: Confirmation, endpoint: &str) {
        let before = *self.tracker.state();
        let mut publish = false;
        if let Some(read) = &c.read {
            let applied = self.tracker.read(
                read.rev,
                read.seen(),
                Via::Confirmation,
                c.t_sent,
                read.observed_at,
            );
            if applied.stale {
                tracing::debug!(
                    key = %self.settings.trigger_key, rev = read.rev,
                    "confirmation read older than the watch; ignored"
                );
                return;
            }
            if applied.publish && before.primary != self.tracker.state().primary {
                tracing::warn!(
                    key = %self.settings.trigger_key, %endpoint, rev = read.rev,
                    primary = self.tracker.state().primary,
                    "etcd leader key: the confirmation read saw a change before the watch did"
                );
            }
            publish |= applied.publish;
        }
        if let Some(ttl) = &c.ttl {
            let applied =
                self.tracker
                    .lease_ttl(ttl.lease, ttl.ttl, ttl.granted, c.t_sent, ttl.observed_at);
            if ttl.ttl <= 0 && !applied.stale {
                tracing::warn!(
                    key = %self.settings.trigger_key, lease = format_args!("{:#x}", ttl.lease),
                    "etcd leader key: our lease has expired; fenced until etcd deletes the key"
                );
            }
            if !applied.stale
                && ttl.granted > 0
                && Duration::from_secs(ttl.granted.unsigned_abs())
                    < self.settings.confirm_interval.saturating_mul(3)
            {
                tracing::warn!(
                    key = %self.settings.trigger_key, granted_ttl_s = ttl.granted,
                    confirm_interval = ?self.settings.confirm_interval,
                    "lease TTL is short for the confirm interval; the deadline may lapse between confirmations"
                );
            }
            publish |= applied.publish;
        }
        if publish {
            self.publish();
            self.log_change(&before);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// GET (+ `LeaseTimeToLive` when ours).
    Full,
    /// `LeaseTimeToLive` only, for a lease the watch just reported.
    Lease(i64),
}

struct Confirmation {
    t_sent: u64,
    read: Option<Read>,
    ttl: Option<Ttl>,
}

pub(super) struct Read {
    pub(super) rev: i64,
    /// The key's value and lease, when it exists.
    pub(super) kv: Option<(Vec<u8>, i64)>,
    /// The key's `create_revision` (0 when it does not exist).
    pub(super) create_revision: i64,
    /// The key's `mod_revision` (0 when it does not exist).
    pub(super) mod_revision: i64,
    observed_at: u64,
}

impl Read {
    fn seen(&self) -> KeySeen<'_> {
        match &self.kv {
            Some((value, lease)) => KeySeen::Present {
                value,
                lease: *lease,
                created: self.create_revision,
            },
            None => KeySeen::Absent,
        }
    }
}

struct Ttl {
    lease: i64,
    ttl: i64,
    granted: i64,
    observed_at: u64,
}

async fn poll_pending<T>(pending: &mut Option<BoxFuture<'static, T>>) -> T {
    match pending {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

pub(super) fn timeout(op: Operation, endpoint: &str, after: Duration) -> LeaderError {
    LeaderError::Timeout {
        op,
        endpoint: endpoint.to_owned(),
        after,
    }
}

fn key_name(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// A client for one endpoint; authenticates when a user is configured.
pub(super) async fn connect(
    settings: &LeaderSettings,
    endpoint: &str,
) -> Result<Client, LeaderError> {
    let opts = settings.connect_options()?;
    let limit = settings
        .connect_timeout
        .saturating_add(settings.request_timeout);
    match tokio::time::timeout(limit, Client::connect([endpoint], Some(opts))).await {
        Err(_) => Err(timeout(Operation::Connect, endpoint, limit)),
        Ok(Ok(client)) => Ok(client),
        Ok(Err(cause)) => match &settings.user {
            // With a user, connect() sends Authenticate; etcd answers InvalidArgument for a wrong
            // password or unknown user, FailedPrecondition when auth is not enabled.
            Some(user)
                if grpc_code(&cause).is_some_and(|c| {
                    matches!(
                        c,
                        GRPC_INVALID_ARGUMENT
                            | GRPC_FAILED_PRECONDITION
                            | GRPC_UNAUTHENTICATED
                            | GRPC_PERMISSION_DENIED
                    )
                }) =>
            {
                Err(LeaderError::Authenticate {
                    endpoint: endpoint.to_owned(),
                    user: user.clone(),
                    cause,
                })
            }
            _ => Err(LeaderError::Connect {
                endpoint: endpoint.to_owned(),
                cause,
            }),
        },
    }
}

/// Linearizable GET of the key (the default: not serializable).
pub(super) async fn get(
    kv: &mut KvClient,
    key: &[u8],
    endpoint: &str,
    limit: Duration,
) -> Result<Read, LeaderError> {
    let resp = tokio::time::timeout(limit, kv.get(key.to_vec(), None))
        .await
        .map_err(|_| timeout(Operation::Get, endpoint, limit))?
        .map_err(|cause| LeaderError::Get {
            endpoint: endpoint.to_owned(),
            key: key_name(key),
            cause,
        })?;
    let observed_at = monotonic_ns();
    let rev = resp.header().map_or(0, |h| h.revision());
    let found = resp.kvs().iter().find(|kv| kv.key() == key);
    Ok(Read {
        rev,
        kv: found.map(|kv| (kv.value().to_vec(), kv.lease())),
        mod_revision: found.map_or(0, etcd_client::KeyValue::mod_revision),
        create_revision: found.map_or(0, etcd_client::KeyValue::create_revision),
        observed_at,
    })
}

async fn time_to_live(
    lease: &mut LeaseClient,
    id: i64,
    endpoint: &str,
    limit: Duration,
) -> Result<Ttl, LeaderError> {
    let result = tokio::time::timeout(limit, lease.time_to_live(id, None))
        .await
        .map_err(|_| timeout(Operation::LeaseTimeToLive, endpoint, limit))?;
    let observed_at = monotonic_ns();
    match result {
        Ok(resp) => Ok(Ttl {
            lease: id,
            ttl: resp.ttl(),
            granted: resp.granted_ttl(),
            observed_at,
        }),
        // etcd 3.4 answers TTL -1 for an unknown lease; other versions may say NotFound.
        Err(cause) if grpc_code(&cause) == Some(GRPC_NOT_FOUND) => Ok(Ttl {
            lease: id,
            ttl: -1,
            granted: 0,
            observed_at,
        }),
        Err(cause) => Err(LeaderError::LeaseTimeToLive {
            endpoint: endpoint.to_owned(),
            lease: id,
            cause,
        }),
    }
}

/// One authenticated linearizable GET of the trigger key (and `LeaseTimeToLive` of its lease, if
/// it has one, so a user lacking the permission for it shows up here too) against each endpoint
/// in turn. `Ok` as soon as one endpoint works; otherwise the first endpoint's error. Failing
/// endpoints are logged.
pub async fn check_connection(settings: &LeaderSettings) -> Result<(), LeaderError> {
    settings.validate()?;
    let mut first_error = None;
    for endpoint in settings.normalized_endpoints() {
        match check_endpoint(settings, &endpoint).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let e = settings.explain(e);
                tracing::warn!(%endpoint, error = %e, "etcd endpoint check failed");
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| LeaderError::InvalidSettings("no etcd endpoints".into())))
}

async fn check_endpoint(settings: &LeaderSettings, endpoint: &str) -> Result<(), LeaderError> {
    let client = connect(settings, endpoint).await?;
    let key = settings.trigger_key.as_bytes();
    let read = get(
        &mut client.kv_client(),
        key,
        endpoint,
        settings.request_timeout,
    )
    .await?;
    if let Some((_, lease)) = read.kv
        && lease != 0
    {
        time_to_live(
            &mut client.lease_client(),
            lease,
            endpoint,
            settings.request_timeout,
        )
        .await?;
    }
    Ok(())
}

/// Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling up to the max.
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = d.saturating_mul(2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_cap = Duration::ZERO;
        for i in 0..20 {
            let cap = Duration::from_millis(100)
                .saturating_mul(1 << i.min(10))
                .min(Duration::from_secs(5));
            let d = b.next_delay();
            assert!(
                d >= cap / 2 && d <= cap,
                "{i}: {d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
            last_cap = cap;
        }
        assert_eq!(last_cap, Duration::from_secs(5));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
