//! The line protocol between `vip-agent event` and the agent: one request line, one reply line,
//! one request per connection.
//!
//! Request: `vip-agent-event/1 TAB node_id TAB event TAB success TAB timestamp TAB details LF`.
//! Reply: `ok TAB outcome TAB message LF` (outcome `applied` or `ignored`) or
//! `error TAB message LF`. Inside a field, backslash, tab, CR and LF are written `\\`, `\t`,
//! `\r`, `\n`; nothing else is special. A request is at most [`MAX_REQUEST`] bytes.

use std::fmt;

/// The first field of a request; a future incompatible format gets another.
pub const MAGIC: &str = "vip-agent-event/1";
/// Upper bound of a request line, newline included. repmgr's `%d` details are a sentence or two;
/// the client shortens longer ones rather than failing.
pub const MAX_REQUEST: usize = 8192;
/// Longest event name accepted (repmgr's are below 40 characters).
pub const MAX_EVENT_NAME: usize = 64;
/// What the client keeps of the details at most (the rest is cut, marked with `...`).
pub const MAX_DETAILS: usize = 4096;

/// One repmgr event notification, as `event_notification_command` hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRequest {
    /// `%n`: the repmgr node the event is about (`node_id` in repmgr.conf).
    pub node_id: u32,
    /// `%e`: the event name, e.g. `standby_promote`.
    pub event: String,
    /// `%s`: whether the action succeeded.
    pub success: bool,
    /// `%t`: repmgr's timestamp, informational only (never used for ordering).
    pub timestamp: String,
    /// `%d`: repmgr's details, informational only.
    pub details: String,
}

/// `%n`: a positive integer (repmgr node ids are 1..=2^31-1); the configuration's reading of
/// `repmgr-node-id`, so that both agree.
pub use crate::config::repmgr_node_id as parse_node_id;

/// `%e`: lower-case letters, digits and `_`, at most [`MAX_EVENT_NAME`] bytes.
///
/// # Errors
/// A one-line reason naming the value.
pub fn parse_event(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_EVENT_NAME
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "event {:?} is not a repmgr event name (1..={MAX_EVENT_NAME} of a-z, 0-9, _)",
            shorten(raw, 80)
        ))
    }
}

/// `%s`: `1` or `0`.
///
/// # Errors
/// A one-line reason naming the value.
pub fn parse_success(raw: &str) -> Result<bool, String> {
    match raw.trim() {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(format!(
            "success {:?} is not 1 or 0 (repmgr's %s)",
            shorten(raw, 80)
        )),
    }
}

impl EventRequest {
    /// Build a request from the command line's words, checking each.
    ///
    /// # Errors
    /// The first malformed argument, as a one-line reason.
    pub fn from_args(
        node_id: &str,
        event: &str,
        success: &str,
        timestamp: Option<&str>,
        details: Option<&str>,
    ) -> Result<Self, String> {
        let mut details = details.unwrap_or_default().replace('\0', "");
        if details.len() > MAX_DETAILS {
            let mut cut = MAX_DETAILS;
            while !details.is_char_boundary(cut) {
                cut -= 1;
            }
            details.truncate(cut);
            details.push_str("...");
        }
        Ok(Self {
            node_id: parse_node_id(node_id)?,
            event: parse_event(event)?,
            success: parse_success(success)?,
            timestamp: shorten(&timestamp.unwrap_or_default().replace('\0', ""), 128),
            details,
        })
    }

    /// The request line, newline included.
    #[must_use]
    pub fn encode(&self) -> String {
        format!(
            "{MAGIC}\t{}\t{}\t{}\t{}\t{}\n",
            self.node_id,
            self.event,
            u8::from(self.success),
            escape(&self.timestamp),
            escape(&self.details)
        )
    }

    /// Parse one request line (with or without its newline).
    ///
    /// # Errors
    /// What is wrong, for the error reply.
    pub fn decode(line: &[u8]) -> Result<Self, String> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8".to_owned())?;
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.first() != Some(&MAGIC) {
            return Err(format!(
                "the request does not start with {MAGIC:?} (an older or newer vip-agent?)"
            ));
        }
        let [_, node_id, event, success, timestamp, details] = fields.as_slice() else {
            return Err(format!(
                "the request has {} fields, expected 6",
                fields.len()
            ));
        };
        Ok(Self {
            node_id: parse_node_id(node_id)?,
            event: parse_event(event)?,
            success: parse_success(success)?,
            timestamp: unescape(timestamp)?,
            details: unescape(details)?,
        })
    }
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The request was valid; `outcome` is `applied` or `ignored`.
    Ok { outcome: String, message: String },
    /// The request was refused and changed nothing.
    Error(String),
}

impl Reply {
    /// The reply line, newline included.
    #[must_use]
    pub fn encode(&self) -> String {
        match self {
            Self::Ok { outcome, message } => format!("ok\t{outcome}\t{}\n", escape(message)),
            Self::Error(message) => format!("error\t{}\n", escape(message)),
        }
    }

    /// Parse a reply line.
    ///
    /// # Errors
    /// When the line is not a reply.
    pub fn decode(line: &[u8]) -> Result<Self, String> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|_| "the reply is not UTF-8".to_owned())?;
        let mut fields = line.splitn(3, '\t');
        match (fields.next(), fields.next(), fields.next()) {
            (Some("ok"), Some(outcome), Some(message)) => Ok(Self::Ok {
                outcome: outcome.to_owned(),
                message: unescape(message)?,
            }),
            (Some("error"), Some(message), None) => Ok(Self::Error(unescape(message)?)),
            _ => Err(format!("unexpected reply {:?}", shorten(line, 200))),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok { outcome, message } => write!(f, "{outcome}: {message}"),
            Self::Error(message) => write!(f, "refused: {message}"),
        }
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            other => {
                return Err(format!(
                    "bad escape \\{} in a field",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    Ok(out)
}

/// At most `max` bytes of `s` (on a character boundary), for messages.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &s[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked_one_by_one() {
        let ok = EventRequest::from_args("3", "standby_promote", "1", Some("2026-01-01"), None)
            .expect("valid");
        assert_eq!(
            (ok.node_id, ok.event.as_str(), ok.success),
            (3, "standby_promote", true)
        );
        for (n, e, s, needle) in [
            ("abc", "standby_promote", "1", "node id \"abc\""),
            ("0", "standby_promote", "1", "node id \"0\""),
            ("-1", "standby_promote", "1", "node id"),
            ("4294967296", "standby_promote", "1", "node id"),
            ("3", "", "1", "event \"\""),
            ("3", "Standby Promote", "1", "event"),
            ("3", "standby_promote", "yes", "success \"yes\""),
            ("3", "standby_promote", "2", "success \"2\""),
        ] {
            let err = EventRequest::from_args(n, e, s, None, None).expect_err(needle);
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
        let long = "é".repeat(MAX_DETAILS);
        let r = EventRequest::from_args("1", "standby_follow", "0", None, Some(&long))
            .expect("long details are cut, not refused");
        assert!(r.details.len() <= MAX_DETAILS + 3 && r.details.ends_with("..."));
        assert!(r.encode().len() < MAX_REQUEST);
    }

    #[test]
    fn requests_round_trip_with_awkward_text() {
        let r = EventRequest {
            node_id: 7,
            event: "repmgrd_failover_promote".to_owned(),
            success: true,
            timestamp: "2026-12-02 01:02:03.4+00".to_owned(),
            details: "node \"pg2\" (ID: 7)\tpromoted\nback\\slash\r".to_owned(),
        };
        let line = r.encode();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        assert_eq!(EventRequest::decode(line.as_bytes()), Ok(r));
    }

    #[test]
    fn malformed_requests_name_the_problem() {
        for (line, needle) in [
            (&b""[..], "does not start with"),
            (b"hello\n", "does not start with"),
            (
                b"vip-agent-event/2\t1\tstandby_promote\t1\t\t\n",
                "does not start",
            ),
            (b"vip-agent-event/1\t1\tstandby_promote\t1\n", "4 fields"),
            (
                b"vip-agent-event/1\t1\tstandby_promote\t1\t\t\t\n",
                "7 fields",
            ),
            (b"vip-agent-event/1\tx\tstandby_promote\t1\t\t\n", "node id"),
            (b"vip-agent-event/1\t1\tstandby promote\t1\t\t\n", "event"),
            (
                b"vip-agent-event/1\t1\tstandby_promote\ttrue\t\t\n",
                "success",
            ),
            (
                b"vip-agent-event/1\t1\tstandby_promote\t1\t\\x\t\n",
                "bad escape",
            ),
            (
                b"vip-agent-event/1\t1\tstandby_promote\t1\t\t\\\n",
                "bad escape",
            ),
            (
                b"vip-agent-event/1\t1\tstandby_promote\t1\t\xff\t\n",
                "UTF-8",
            ),
        ] {
            let err = EventRequest::decode(line).expect_err(needle);
            assert!(err.contains(needle), "{line:?}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Ok {
                outcome: "applied".to_owned(),
                message: "primary\tnow".to_owned(),
            },
            Reply::Error("bad\nthing".to_owned()),
        ] {
            assert_eq!(Reply::decode(reply.encode().as_bytes()), Ok(reply));
        }
        assert!(Reply::decode(b"maybe\n").is_err());
    }
}
