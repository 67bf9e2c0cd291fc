//! `vip-agent event`: hand one event to the running agent and wait for its verdict.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::protocol::{EventRequest, Reply};

/// How long the client waits for the agent, in all.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an event was not accepted; each message is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(
        "no agent listens on {} (is vip-agent running with dcs-type: repmgr, and is this its \
         repmgr-socket?)", path.display()
    )]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "permission denied on {}: run it as root (sudo), or configure repmgr-socket-group with a \
         group of this user", path.display()
    )]
    PermissionDenied {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the agent on {}: {operation}", path.display())]
    Io {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the agent refused the event: {0}")]
    Refused(String),
    #[error("the agent's answer is not understood: {0}")]
    BadReply(String),
}

/// Send `request` to the agent listening on `socket`; the agent's reply when it accepted the
/// request (applied or ignored).
///
/// # Errors
/// [`SendError`]: no agent, no permission, I/O, or the agent refused the request.
pub fn send(socket: &Path, request: &EventRequest) -> Result<Reply, SendError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => SendError::NotRunning {
            path: socket.to_owned(),
            source,
        },
        io::ErrorKind::PermissionDenied => SendError::PermissionDenied {
            path: socket.to_owned(),
            source,
        },
        _ => SendError::Io {
            path: socket.to_owned(),
            operation: "connect",
            source,
        },
    })?;
    let io_err = |operation| {
        move |source| SendError::Io {
            path: socket.to_owned(),
            operation,
            source,
        }
    };
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_err("set a timeout"))?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_err("set a timeout"))?;
    // A refusal (bad peer) may come before the request is read: a failed write is not the end.
    let written = stream.write_all(request.encode().as_bytes());
    let mut line = Vec::new();
    let read = BufReader::new((&stream).take(64 * 1024)).read_until(b'\n', &mut line);
    match (written, read) {
        (_, Ok(n)) if n > 0 => {}
        (Err(e), _) => return Err(io_err("send the event")(e)),
        (Ok(()), Ok(_)) => {
            return Err(SendError::BadReply(
                "the agent closed the connection without answering".to_owned(),
            ));
        }
        (Ok(()), Err(e)) => return Err(io_err("read the answer")(e)),
    }
    match Reply::decode(&line).map_err(SendError::BadReply)? {
        Reply::Error(why) => Err(SendError::Refused(why)),
        ok => Ok(ok),
    }
}
