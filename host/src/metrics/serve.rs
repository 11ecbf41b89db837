//! The Prometheus endpoint: a minimal HTTP server answering `/metrics` with the rendered
//! metrics, a bounded number of scrapes at a time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::Metrics;

/// Scrapes served at once: more are closed unanswered, so no client can spend the file
/// descriptors state and checkpoints need.
const MAX_SCRAPES: usize = 32;

/// Serves `/metrics` on `listen` until the task is dropped.
pub async fn serve(
    listen: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("cannot serve metrics on {listen}: {e}; change metrics.listen")
    })?;
    tracing::info!(%listen, "metrics at http://{listen}/metrics");
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    Ok(tokio::spawn(async move {
        loop {
            let mut sock = match listener.accept().await {
                Ok((sock, _)) => sock,
                Err(_) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut buf = [0u8; 2048];
                let read = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
                let Ok(Ok(n)) = read else { return };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request
                    .strip_prefix("GET ")
                    .and_then(|r| r.split_whitespace().next())
                    .map(|p| p.split('?').next().unwrap_or(p));
                let (status, body) = if path == Some("/metrics") {
                    ("200 OK", metrics.render())
                } else {
                    ("404 Not Found", "try GET /metrics\n".to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    sock.write_all(response.as_bytes()),
                )
                .await;
            });
        }
    }))
}
