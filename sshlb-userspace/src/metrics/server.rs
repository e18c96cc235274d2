//! The metrics endpoint: `GET /metrics` on `agent.metrics` (loopback by default), each scrape
//! rendered by the map owner on request.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// The HTTP response for a request head (`GET /metrics` → 200 with `body`; else 404/405).
pub fn respond(request_head: &str, body: impl FnOnce() -> String) -> String {
    let mut parts = request_head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => ("200 OK", body()),
        ("GET", _) => ("404 Not Found", "try /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "GET only\n".to_owned()),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{content}",
        content.len()
    )
}

/// Serves `GET /metrics`: each scrape asks the map owner (the other end of `scrapes`) for a
/// snapshot.
pub async fn serve(
    listener: tokio::net::TcpListener,
    scrapes: mpsc::Sender<oneshot::Sender<String>>,
) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(2), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let (tx, rx) = oneshot::channel();
            let body = if scrapes.send(tx).await.is_ok() {
                rx.await.unwrap_or_default()
            } else {
                String::new()
            };
            let response = respond(&String::from_utf8_lossy(&head), || body);
            let _ignored = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_routing() {
        assert!(respond("GET /metrics HTTP/1.1\r\nHost: x\r\n", || "x 1\n".into())
            .starts_with("HTTP/1.1 200 OK"));
        assert!(respond("GET /metrics?x=1 HTTP/1.0", String::new).starts_with("HTTP/1.1 200"));
        assert!(respond("GET / HTTP/1.1", || unreachable!()).starts_with("HTTP/1.1 404"));
        assert!(respond("POST /metrics HTTP/1.1", || unreachable!()).starts_with("HTTP/1.1 405"));
        assert!(respond("", || unreachable!()).starts_with("HTTP/1.1 405"));
    }
}
