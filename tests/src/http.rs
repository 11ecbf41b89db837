//! A local HTTP lookup store with a configurable delay.

use std::time::Duration;

/// A local HTTP store: `GET /<anything>/<key>` answers the JSON registered for `<key>` after
/// a configurable delay (ten times longer for keys starting with `slow`), 404 for unknown
/// keys; `GET /all` answers every value as one JSON object. Counts requests.
pub struct SlowHttp {
    port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
    values: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowHttp {
    /// Serves `values` (key → JSON body) with `delay_ms` per request.
    pub async fn start(
        values: std::collections::HashMap<String, String>,
        delay_ms: u64,
    ) -> anyhow::Result<SlowHttp> {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let values = std::sync::Arc::new(std::sync::Mutex::new(values));
        let shared = values.clone();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delay = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(delay_ms));
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, d, f) = (requests.clone(), delay.clone(), fail.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                let (values, r, d, f) = (values.clone(), r.clone(), d.clone(), f.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut filled = 0;
                    loop {
                        // Keep-alive: answer each request on the connection.
                        let Ok(n) = sock.read(&mut buf[filled..]).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        filled += n;
                        let text = String::from_utf8_lossy(&buf[..filled]).to_string();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let line = text.lines().next().unwrap_or_default().to_string();
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                        r.fetch_add(1, Ordering::Relaxed);
                        let path = line.split_whitespace().nth(1).unwrap_or("/");
                        let key = path.rsplit('/').next().unwrap_or("").to_string();
                        let factor = if key.starts_with("slow") { 10 } else { 1 };
                        tokio::time::sleep(Duration::from_millis(
                            d.load(Ordering::Relaxed) * factor,
                        ))
                        .await;
                        let (status, body) = if f.load(Ordering::Relaxed) {
                            ("500 Internal Server Error", "{}".to_string())
                        } else if path == "/all" {
                            let values = values.lock().unwrap_or_else(|p| p.into_inner());
                            let all: serde_json::Map<String, serde_json::Value> = values
                                .iter()
                                .map(|(k, v)| {
                                    (k.clone(), serde_json::from_str(v).unwrap_or_default())
                                })
                                .collect();
                            ("200 OK", serde_json::Value::Object(all).to_string())
                        } else {
                            let values = values.lock().unwrap_or_else(|p| p.into_inner());
                            match values.get(&key) {
                                Some(v) => ("200 OK", v.clone()),
                                None => ("404 Not Found", "{}".to_string()),
                            }
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if sock.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(SlowHttp {
            port,
            requests,
            delay_ms: delay,
            fail,
            values: shared,
            task,
        })
    }

    /// Sets (or replaces) the value of `key`.
    pub fn set(&self, key: &str, json: &str) {
        self.values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), json.to_string());
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes the delay.
    pub fn set_delay(&self, ms: u64) {
        self.delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes every request fail with 500 (or not).
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for SlowHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
