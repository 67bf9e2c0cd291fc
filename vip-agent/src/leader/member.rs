//! Patroni's member key, next to the leader key: where this member's REST API listens, and the
//! role Patroni last wrote for it.
//!
//! Patroni writes `/<namespace>/<scope>/members/<name>` (under the member's own etcd lease) at
//! every HA cycle, a JSON document with `api_url` (its `restapi.connect_address`, the address
//! its REST API really listens on), `conn_url`, `role` and `state` (`ha.py`, `touch_member`). A
//! vip-manager configuration names the leader key and the member name, so the member key follows
//! from it without a new setting: `.../leader` → `.../members/<trigger-value>`.
//!
//! The watcher reads the key and watches it, over its own connection (the leader follower's
//! session stays as it is), and publishes a [`MemberView`]. It never decides anything about the
//! data plane by itself: the promotion gate uses the view to find Patroni (`api_url`), to tell
//! "nothing listens here" from "Patroni is restarting its API" (a registered member always runs
//! its REST API), and to see a demotion that Patroni wrote.

use std::convert::Infallible;

use etcd_client::{EventType, WatchOptions};
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::{LeaderError, Operation};
use super::follower::{Backoff, connect, get, timeout};
use super::settings::LeaderSettings;
use crate::config::PatroniUrl;

/// What the member key says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberView {
    /// At least one read succeeded: the fields below are etcd's word, not defaults.
    pub known: bool,
    /// The key exists (Patroni runs for this member and keeps its member lease).
    pub registered: bool,
    /// The REST API's base URL from `api_url` (without its `/patroni` path).
    pub api: Option<PatroniUrl>,
    /// Why `api_url` was not usable ("" when it was, or when there is no key).
    pub api_problem: String,
    /// `role` as Patroni last wrote it (`master`/`primary`, `replica`, `demoted`, ...).
    pub role: Option<String>,
    /// `state` as Patroni last wrote it (`running`, `starting`, `stopped`, ...).
    pub state: Option<String>,
    /// etcd's `mod_revision` of the key as last seen (0: absent or never read).
    pub mod_revision: i64,
}

impl MemberView {
    /// Whether Patroni last wrote this member as a running primary.
    #[must_use]
    pub fn says_primary(&self) -> bool {
        matches!(self.role.as_deref(), Some("master" | "primary"))
            && self.state.as_deref() == Some("running")
    }

    /// The view of a member key holding `value` at `mod_revision`.
    #[must_use]
    pub fn parse(value: &[u8], mod_revision: i64) -> Self {
        let mut view = Self {
            known: true,
            registered: true,
            mod_revision,
            ..Self::default()
        };
        let doc = match serde_json::from_slice::<serde_json::Value>(value) {
            Ok(doc) if doc.is_object() => doc,
            _ => {
                view.api_problem = "the member key is not a JSON object".to_owned();
                return view;
            }
        };
        let text = |name: &str| {
            doc.get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        view.role = text("role");
        view.state = text("state");
        match text("api_url") {
            None => view.api_problem = "the member key has no api_url".to_owned(),
            Some(raw) => match api_base(&raw) {
                Ok(url) => view.api = Some(url),
                Err(why) => view.api_problem = format!("api_url {raw:?}: {why}"),
            },
        }
        view
    }
}

/// `api_url` (`http[s]://host:port/patroni`) without its `/patroni` endpoint path.
fn api_base(raw: &str) -> Result<PatroniUrl, String> {
    let mut url = PatroniUrl::parse(raw)?;
    if let Some(base) = url.base.strip_suffix("/patroni") {
        url.base = base.to_owned();
    }
    Ok(url)
}

/// Follows one member key; publish with [`MemberWatcher::subscribe`], drive with
/// [`MemberWatcher::run`].
pub struct MemberWatcher {
    settings: LeaderSettings,
    key: String,
    tx: watch::Sender<MemberView>,
}

impl MemberWatcher {
    /// A watcher of `key`, reaching etcd as `settings` say (its trigger key is only a label).
    #[must_use]
    pub fn new(settings: LeaderSettings, key: String) -> Self {
        let (tx, _) = watch::channel(MemberView::default());
        Self { settings, key, tx }
    }

    /// The member key it follows.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The published views.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<MemberView> {
        self.tx.subscribe()
    }

    /// Read and watch the key until `cancel`; reconnects with backoff after any failure, keeping
    /// the last view (etcd unreachable changes nothing Patroni wrote).
    pub async fn run(self, cancel: CancellationToken) {
        let endpoints = self.settings.endpoints.clone();
        let mut backoff = Backoff::new(self.settings.backoff_min, self.settings.backoff_max);
        let mut index = 0_usize;
        let mut failing = false;
        loop {
            let endpoint = endpoints
                .get(index % endpoints.len().max(1))
                .cloned()
                .unwrap_or_default();
            let result = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                r = self.session(&endpoint, &mut backoff) => r,
            };
            let Err(error) = result;
            if !failing {
                tracing::warn!(key = %self.key, %endpoint, error = %error,
                    "Patroni member key: cannot follow it; keeping what was last read, retrying");
            }
            failing = true;
            index = index.wrapping_add(1);
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    fn publish(&self, view: MemberView) {
        let before = self.tx.borrow().clone();
        if before.api != view.api || before.registered != view.registered || !before.known {
            match (&view.api, view.registered) {
                (Some(url), _) => tracing::info!(key = %self.key, patroni_url = %url,
                    "Patroni REST API from the member key"),
                (None, true) => tracing::warn!(key = %self.key, problem = %view.api_problem,
                    "Patroni member key without a usable api_url"),
                (None, false) => tracing::info!(key = %self.key,
                    "no Patroni member key: no Patroni registered for this member"),
            }
        }
        self.tx.send_replace(view);
    }

    async fn session(
        &self,
        endpoint: &str,
        backoff: &mut Backoff,
    ) -> Result<Infallible, LeaderError> {
        let client = connect(&self.settings, endpoint).await?;
        let mut kv = client.kv_client();
        let mut watch_client = client.watch_client();
        let limit = self.settings.request_timeout;
        let read = get(&mut kv, self.key.as_bytes(), endpoint, limit).await?;
        self.publish(match &read.kv {
            Some((value, _)) => MemberView::parse(value, read.mod_revision),
            None => MemberView {
                known: true,
                ..MemberView::default()
            },
        });
        backoff.reset();
        let opts = WatchOptions::new().with_start_revision(read.rev.saturating_add(1));
        let (_requests, mut responses) =
            tokio::time::timeout(limit, watch_client.watch(self.key.clone(), Some(opts)))
                .await
                .map_err(|_| timeout(Operation::Watch, endpoint, limit))?
                .map_err(|cause| LeaderError::Watch {
                    endpoint: endpoint.to_owned(),
                    key: self.key.clone(),
                    cause,
                })?
                .split();
        loop {
            let response = match responses.next().await {
                None => {
                    return Err(LeaderError::WatchEnded {
                        endpoint: endpoint.to_owned(),
                        key: self.key.clone(),
                    });
                }
                Some(Err(cause)) => {
                    return Err(LeaderError::Watch {
                        endpoint: endpoint.to_owned(),
                        key: self.key.clone(),
                        cause,
                    });
                }
                Some(Ok(response)) => response,
            };
            if response.canceled() {
                // Compacted or cancelled: a new session reads the key again.
                return Err(LeaderError::WatchCanceled {
                    endpoint: endpoint.to_owned(),
                    key: self.key.clone(),
                    reason: response.cancel_reason().to_owned(),
                });
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                if kv.key() != self.key.as_bytes() {
                    continue;
                }
                self.publish(match event.event_type() {
                    EventType::Put => MemberView::parse(kv.value(), kv.mod_revision()),
                    // The key expired with Patroni's lease (an etcd outage, Patroni stopped): the
                    // member is not registered now, but its REST API stays where it was; asking
                    // loopback instead would be asking nobody.
                    EventType::Delete => MemberView {
                        known: true,
                        mod_revision: kv.mod_revision(),
                        api: self.tx.borrow().api.clone(),
                        ..MemberView::default()
                    },
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patroni_302_member_document_gives_the_rest_api_and_role() {
        let doc = br#"{"conn_url": "postgres://10.0.0.11:5432/postgres",
            "api_url": "http://10.0.0.11:8008/patroni", "state": "running", "role": "master",
            "version": "3.0.2", "xlog_location": 50331968, "timeline": 1}"#;
        let v = MemberView::parse(doc, 42);
        assert!(v.known && v.registered);
        let api = v.api.as_ref().expect("api_url parsed");
        assert_eq!(api.to_string(), "http://10.0.0.11:8008");
        assert!(v.says_primary());
        assert_eq!(v.mod_revision, 42);

        let replica =
            br#"{"api_url": "https://[fd00::1]:8443/patroni", "state": "running", "role": "replica"}"#;
        let v = MemberView::parse(replica, 7);
        assert_eq!(
            v.api.as_ref().map(ToString::to_string).as_deref(),
            Some("https://[fd00::1]:8443")
        );
        assert!(!v.says_primary());
        let stopped =
            br#"{"api_url": "http://h:8008/patroni", "state": "stopped", "role": "master"}"#;
        assert!(!MemberView::parse(stopped, 1).says_primary());
    }

    #[test]
    fn a_bad_member_document_is_registered_without_an_api_and_says_why() {
        for (doc, why) in [
            (&b"not json"[..], "not a JSON object"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"role": "master"}"#, "no api_url"),
            (br#"{"api_url": "ftp://x/patroni"}"#, "api_url"),
            (br#"{"api_url": 5}"#, "no api_url"),
        ] {
            let v = MemberView::parse(doc, 1);
            assert!(v.registered && v.known);
            assert!(v.api.is_none());
            assert!(v.api_problem.contains(why), "{doc:?}: {}", v.api_problem);
        }
    }
}
