//! Patroni's REST API as the leader source (`dcs-type: patroni`, vip-manager's Patroni mode): for
//! nodes without etcd credentials.
//!
//! Every `interval`, `GET <dcs-endpoint><trigger-key>` (vip-manager's default `/leader`, which
//! Patroni answers with 200 while this member holds the leader lock); this node is the leader
//! exactly when the status code is `trigger-value` (default 200). The HTTP client is the promotion
//! gate's ([`crate::gate::patroni::PatroniProbe`]), with its TLS files and credentials.
//!
//! # Deadline
//!
//! There is no lease to read: a positive answer to a request sent at `t_sent` keeps the VIP
//! answering until `t_sent + validity` (3 intervals, capped by `fence-timeout`), and only a fresh
//! positive answer moves it. Any other status fences at once. No answer (refused, timeout, not
//! HTTP) renews nothing: the data plane goes silent by itself at the deadline, and the state is
//! published once as [`Cause::Unreachable`], so the gate's hold check asks the database every 50 ms
//! meanwhile. `patroni-failsafe` never acts here: Patroni's REST API is not Patroni's DCS.
//!
//! Requests are sequential (one in flight, each bounded by [`REQUEST_TIMEOUT`]), so answers apply
//! in the order they were asked. Endpoints are tried in order, the next one after each failure.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    clock::monotonic_ns,
    config::{GateConfig, PatroniUrl},
    gate::{GateError, patroni::PatroniProbe},
    leadership::{Cause, Hook, Leadership, Publisher, Source, SourceKind},
};

/// Patroni's REST API as a leader source.
pub static KIND: SourceKind = SourceKind {
    name: "patroni",
    what: "Patroni's REST API",
    failsafe_applies: false,
    detail: (
        "vip_agent_patroni_last_status",
        "HTTP status of the last answer of Patroni's REST API (0: none yet).",
    ),
};

/// A request without an answer within this long counts as no answer (vip-manager's client
/// timeout).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// A positive answer keeps the VIP for this many intervals (unless `fence-timeout` is shorter).
pub const VALIDITY_INTERVALS: u32 = 3;

/// Errors building the source.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("Patroni REST leader source: no endpoint")]
    NoEndpoint,
    #[error("Patroni REST leader source: endpoint {endpoint}")]
    Endpoint { endpoint: String, reason: String },
    #[error("Patroni REST leader source: client for {endpoint}")]
    Client {
        endpoint: String,
        #[source]
        source: GateError,
    },
}

/// Everything the source needs.
#[derive(Clone, Debug)]
pub struct RestSettings {
    /// `dcs-endpoints`: Patroni REST API base URLs, tried in order.
    pub endpoints: Vec<PatroniUrl>,
    /// `trigger-key`: the path asked (`/leader`).
    pub path: String,
    /// `trigger-value`: the status code that means "this node leads" (200). Text, as configured:
    /// a value that is no status code never matches.
    pub expected: String,
    /// `interval`: the poll period.
    pub interval: Duration,
    /// How long one positive answer keeps the VIP answering, from when it was asked.
    pub validity: Duration,
    /// TLS files and credentials (`patroni-*`, else `etcd-*` for the files, as vip-manager).
    pub client: GateConfig,
}

impl RestSettings {
    /// The validity for `interval` and `fence-timeout`.
    #[must_use]
    pub fn validity(interval: Duration, fence_timeout: Option<Duration>) -> Duration {
        let v = interval.saturating_mul(VALIDITY_INTERVALS);
        fence_timeout.map_or(v, |f| v.min(f))
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The pure rules: answers in, states out.
#[derive(Debug)]
pub struct Tracker {
    expected: Option<u16>,
    validity: Duration,
    state: Leadership,
}

impl Tracker {
    #[must_use]
    pub fn new(expected: &str, validity: Duration, now_ns: u64) -> Self {
        Self {
            expected: expected.trim().parse().ok(),
            validity,
            state: Leadership::startup(now_ns),
        }
    }

    #[must_use]
    pub const fn state(&self) -> &Leadership {
        &self.state
    }

    /// An HTTP answer `status` to a request sent at `t_sent_ns`, received at `now_ns`. Returns
    /// whether to publish.
    pub fn answer(&mut self, status: u16, t_sent_ns: u64, now_ns: u64) -> bool {
        let was = self.state;
        self.state.detail = i64::from(status);
        self.state.observed_at_ns = now_ns;
        if self.expected == Some(status) {
            let d = t_sent_ns.saturating_add(ns(self.validity));
            if was.primary && d <= was.safe_until_ns && was.reached() {
                return false;
            }
            self.state.primary = true;
            self.state.safe_until_ns = d.max(was.safe_until_ns);
            self.state.cause = Cause::Confirmed;
            return true;
        }
        self.state = Leadership {
            cause: Cause::Lost,
            ..self.state.fenced()
        };
        was.primary || was.safe_until_ns != 0 || !was.reached() || was.detail != self.state.detail
    }

    /// No answer at `now_ns`: the last state and its deadline stay (the deadline runs out by
    /// itself). Returns whether to publish (once per outage).
    pub fn unreachable(&mut self, now_ns: u64) -> bool {
        if self.state.cause == Cause::Unreachable {
            return false;
        }
        self.state.cause = Cause::Unreachable;
        self.state.observed_at_ns = now_ns;
        true
    }
}

/// The running source. Build it, hook it, drive [`PatroniRestSource::run`] on a task.
pub struct PatroniRestSource {
    settings: RestSettings,
    probes: Vec<PatroniProbe>,
    tracker: Tracker,
    out: Publisher,
}

impl std::fmt::Debug for PatroniRestSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatroniRestSource")
            .field("settings", &self.settings)
            .field("state", self.tracker.state())
            .finish_non_exhaustive()
    }
}

impl PatroniRestSource {
    /// Read the TLS files once (a wrong path fails at start). No network I/O.
    ///
    /// # Errors
    /// No endpoint, or a client that cannot be built.
    pub fn new(settings: RestSettings) -> Result<Self, RestError> {
        if settings.endpoints.is_empty() {
            return Err(RestError::NoEndpoint);
        }
        let probes = settings
            .endpoints
            .iter()
            .map(|url| {
                PatroniProbe::for_path(&settings.client, url, &settings.path, None, None).map_err(
                    |source| RestError::Client {
                        endpoint: url.to_string(),
                        source,
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let now = monotonic_ns();
        Ok(Self {
            tracker: Tracker::new(&settings.expected, settings.validity, now),
            probes,
            settings,
            out: Publisher::new(now),
        })
    }

    /// Poll until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        info!(endpoints = ?self.settings.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
            path = %self.settings.path, expected = %self.settings.expected,
            interval_ms = self.settings.interval.as_millis(),
            validity_ms = self.settings.validity.as_millis(),
            "following Patroni's REST API");
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut index = 0_usize;
        let mut outage: Option<(u64, u32)> = None;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let Some(probe) = self.probes.get(index % self.probes.len()) else {
                return;
            };
            let t_sent = monotonic_ns();
            let answer = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                r = tokio::time::timeout(REQUEST_TIMEOUT, probe.status_code()) => r,
            };
            let now = monotonic_ns();
            let url = probe.url().clone();
            let before = *self.tracker.state();
            match answer {
                Ok(Ok(status)) => {
                    if let Some((since, failures)) = outage.take() {
                        info!(endpoint = %url, failures,
                            down_for_ms = now.saturating_sub(since) / 1_000_000,
                            "Patroni's REST API answers again");
                    }
                    if self.tracker.answer(status, t_sent, now) {
                        self.publish(&before, &url);
                    }
                }
                Ok(Err(error)) => self.failed(&mut outage, &url, &error, now),
                Err(_) => self.failed(
                    &mut outage,
                    &url,
                    &format!("no answer within {REQUEST_TIMEOUT:?}"),
                    now,
                ),
            }
            if outage.is_some() {
                index = index.wrapping_add(1);
            }
        }
    }

    fn failed(&mut self, outage: &mut Option<(u64, u32)>, url: &PatroniUrl, error: &str, now: u64) {
        let before = *self.tracker.state();
        let safe_for_ms = before.safe_until_ns.saturating_sub(now) / 1_000_000;
        match outage {
            None => {
                *outage = Some((now, 1));
                warn!(endpoint = %url, %error, primary = before.primary, safe_for_ms,
                    "Patroni's REST API: no answer; keeping the last state until its deadline, retrying");
            }
            Some((_, failures)) => {
                *failures = failures.saturating_add(1);
                debug!(endpoint = %url, %error, failures = *failures, "Patroni's REST API: still no answer");
            }
        }
        if self.tracker.unreachable(now) {
            self.publish(&before, url);
        }
    }

    fn publish(&mut self, before: &Leadership, url: &PatroniUrl) {
        let state = *self.tracker.state();
        if state.primary != before.primary {
            info!(endpoint = %url, path = %self.settings.path, status = state.detail,
                primary = state.primary, "leadership changed");
        }
        self.out.publish(&state);
    }
}

impl Source for PatroniRestSource {
    fn kind(&self) -> &'static SourceKind {
        &KIND
    }

    fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.out.subscribe()
    }

    fn on_change(&mut self, hook: Hook) {
        self.out.on_change(hook);
    }

    fn run(self: Box<Self>, cancel: CancellationToken) -> futures::future::BoxFuture<'static, ()> {
        Box::pin((*self).run(cancel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn tracker() -> Tracker {
        Tracker::new("200", Duration::from_secs(3), 0)
    }

    #[test]
    fn validity_is_three_intervals_capped_by_fence_timeout() {
        let i = Duration::from_secs(1);
        assert_eq!(RestSettings::validity(i, None), Duration::from_secs(3));
        assert_eq!(
            RestSettings::validity(i, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn a_positive_answer_proves_a_deadline_from_its_send_time_and_only_fresh_ones_move_it() {
        let mut t = tracker();
        assert!(!t.state().is_safe_at(1));
        assert!(t.answer(200, 10 * S, 10 * S + 5));
        let s = *t.state();
        assert!(s.primary && s.cause == Cause::Confirmed && s.detail == 200);
        assert_eq!(s.safe_until_ns, 13 * S);
        // An answer to an older request proves nothing new.
        assert!(!t.answer(200, 9 * S, 11 * S));
        assert_eq!(t.state().safe_until_ns, 13 * S);
        assert!(t.answer(200, 11 * S, 11 * S + 5));
        assert_eq!(t.state().safe_until_ns, 14 * S);
    }

    #[test]
    fn any_other_status_fences_at_once_and_a_status_that_is_no_code_never_matches() {
        let mut t = tracker();
        t.answer(200, S, S);
        assert!(t.answer(503, 2 * S, 2 * S));
        let s = *t.state();
        assert!(!s.primary && s.safe_until_ns == 0 && s.cause == Cause::Lost);
        assert_eq!(s.detail, 503);
        assert!(!t.answer(503, 3 * S, 3 * S), "nothing new");
        assert!(t.answer(404, 4 * S, 4 * S), "a new status is shown");
        let mut odd = Tracker::new("leader", Duration::from_secs(3), 0);
        odd.answer(200, S, S);
        assert!(!odd.state().primary);
    }

    #[test]
    fn no_answer_keeps_the_deadline_and_is_published_once() {
        let mut t = tracker();
        t.answer(200, S, S);
        assert!(t.unreachable(2 * S));
        assert!(!t.unreachable(3 * S));
        let s = *t.state();
        assert!(s.primary && s.cause == Cause::Unreachable);
        assert_eq!(s.safe_until_ns, 4 * S, "runs out by itself");
        assert!(!s.is_safe_at(4 * S));
        // Back, with the same deadline or not: reached again, published.
        assert!(t.answer(200, S, 5 * S));
        assert_eq!(t.state().cause, Cause::Confirmed);
        // Back as not the leader, from startup too.
        let mut t = tracker();
        assert!(t.answer(503, S, S));
        assert!(t.state().reached());
    }
}
