//! The agent's side of the control socket: binding it (one agent per socket) and answering each
//! connection's one request by asking the map owner over a channel.

use std::{os::unix::net::UnixListener, path::Path, time::Duration};

use tokio::sync::{mpsc, oneshot};

use super::protocol::{decode_request, encode, Reply, Request, MAX_REQUEST};

/// Why the control socket cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another agent answers on the socket.
    #[error("another sshlb-agent is running (its control socket {path} answers)")]
    AlreadyRunning {
        /// The socket.
        path: String,
    },
    /// The socket's directory cannot be created.
    #[error("creating {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Binding failed.
    #[error("binding {path}: {source}")]
    Bind {
        /// The socket.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The socket's mode cannot be set to 0600.
    #[error("chmod {path}: {source}")]
    Chmod {
        /// The socket.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The socket cannot be made non-blocking.
    #[error("{path}: {source}")]
    NonBlocking {
        /// The socket.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Binds the control socket at `path` (mode 0600 in a 0700 directory). Refuses when another
/// agent answers there — two agents writing one data plane's maps would fight — and replaces a
/// stale socket left by a crashed one.
pub fn bind_control(path: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = || path.display().to_string();
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ControlError::AlreadyRunning { path: shown() });
    }
    let _ignored = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
        let _ignored = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let listener =
        UnixListener::bind(path).map_err(|source| ControlError::Bind { path: shown(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| ControlError::Chmod { path: shown(), source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ControlError::NonBlocking { path: shown(), source })?;
    Ok(listener)
}

/// Accepts control connections; each gets one request line and one reply line, the reply
/// coming from whoever holds the other end of `requests` (the map owner).
pub async fn serve(
    listener: tokio::net::UnixListener,
    requests: mpsc::Sender<(Request, oneshot::Sender<Reply>)>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let requests = requests.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
            let (read, mut write) = stream.into_split();
            // One byte past the limit, so an over-long line is seen as such, not cut short.
            let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST as u64 + 1));
            let mut line = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(5), reader.read_until(b'\n', &mut line))
                    .await;
            let reply = match read {
                Ok(Ok(n)) if n > 0 => match decode_request(&line) {
                    Ok(request) => {
                        let (tx, rx) = oneshot::channel();
                        if requests.send((request, tx)).await.is_err() {
                            Reply::failed("the agent is shutting down")
                        } else {
                            rx.await.unwrap_or_else(|_| Reply::failed("the agent is shutting down"))
                        }
                    }
                    Err(err) => Reply::failed(format!("not a valid request: {err}")),
                },
                _ => Reply::failed("expected one JSON request line"),
            };
            if let Ok(text) = encode(&reply) {
                let _ignored = write.write_all(text.as_bytes()).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_in_use_is_refused_and_a_stale_one_replaced() {
        let dir = std::env::temp_dir().join(format!("sshlb-ctl-{}", std::process::id()));
        let path = dir.join("sub").join("agent.sock");
        let first = bind_control(&path).expect("bind");
        let err = bind_control(&path).expect_err("in use");
        assert!(matches!(err, ControlError::AlreadyRunning { .. }), "{err}");
        assert!(err.to_string().starts_with("another sshlb-agent is running"), "{err}");
        drop(first);
        // The socket file is left behind, nobody answers: a crashed agent's socket.
        let _again = bind_control(&path).expect("stale socket replaced");
        let _ignored = std::fs::remove_dir_all(&dir);
    }
}
