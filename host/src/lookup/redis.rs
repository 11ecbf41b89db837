//! Redis lookups: `GET` (several keys: one `MGET`) or `HGETALL` (the hash as a JSON object of
//! its fields). The connection is made on first use and re-made after a failure, so a Redis
//! that is down only fails lookups until it is back.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

use super::{Connector, Fetched, Loaded, LookupError};
use crate::config::LookupStoreConfig;

/// A Redis store.
pub(crate) struct RedisStore {
    client: redis::Client,
    hash: bool,
    prefix: String,
    conn: Arc<Mutex<Option<ConnectionManager>>>,
}

impl RedisStore {
    pub(crate) fn new(cfg: &LookupStoreConfig) -> anyhow::Result<RedisStore> {
        let url = cfg.url.clone().unwrap_or_default();
        let client = redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("lookup store: `{url}` is not a Redis URL: {e}"))?;
        Ok(RedisStore {
            client,
            hash: cfg.command.as_deref() == Some("hgetall"),
            prefix: cfg.key_prefix.clone(),
            conn: Arc::default(),
        })
    }
}

async fn connection(
    client: &redis::Client,
    slot: &Mutex<Option<ConnectionManager>>,
) -> Result<ConnectionManager, LookupError> {
    let mut guard = slot.lock().await;
    if let Some(c) = guard.as_ref() {
        return Ok(c.clone());
    }
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(std::time::Duration::from_secs(1))
        .set_number_of_retries(1);
    let c = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| LookupError::Unavailable(format!("cannot connect to Redis: {e}")))?;
    *guard = Some(c.clone());
    Ok(c)
}

/// A Redis error, retryable when the connection failed rather than the command.
fn redis_error(what: &str, e: &redis::RedisError) -> LookupError {
    let text = format!("{what}: {e}");
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal() {
        LookupError::Unavailable(text)
    } else {
        LookupError::Refused(text)
    }
}

fn hash_json(fields: Vec<(String, String)>) -> Option<Vec<u8>> {
    if fields.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = fields
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    serde_json::to_vec(&map).ok()
}

impl Connector for RedisStore {
    fn get_many(&self, keys: Vec<String>) -> BoxFuture<'static, Fetched> {
        let (client, slot, hash) = (self.client.clone(), self.conn.clone(), self.hash);
        async move {
            let mut conn = connection(&client, &slot).await?;
            let result: Result<Vec<Option<Vec<u8>>>, redis::RedisError> = if hash {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HGETALL").arg(k);
                }
                let hashes: Result<Vec<Vec<(String, String)>>, _> =
                    pipe.query_async(&mut conn).await;
                hashes.map(|hs| hs.into_iter().map(hash_json).collect())
            } else if keys.len() == 1 {
                redis::cmd("GET")
                    .arg(&keys[0])
                    .query_async(&mut conn)
                    .await
                    .map(|v: Option<Vec<u8>>| vec![v])
            } else {
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await
            };
            if let Err(e) = &result
                && (e.is_io_error() || e.is_connection_dropped() || e.is_timeout())
            {
                // Start over with a fresh connection on the next lookup: a restarted Redis
                // answers at once instead of after the old connection's reconnect backoff.
                *slot.lock().await = None;
            }
            result.map_err(|e| redis_error("Redis", &e))
        }
        .boxed()
    }

    fn load_all(&self) -> BoxFuture<'static, Loaded> {
        let (client, slot, hash, prefix) = (
            self.client.clone(),
            self.conn.clone(),
            self.hash,
            self.prefix.clone(),
        );
        async move {
            let mut conn = connection(&client, &slot).await?;
            let mut keys: Vec<String> = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| redis_error("Redis SCAN", &e))?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(500) {
                let values: Vec<Option<Vec<u8>>> = if hash {
                    let mut pipe = redis::pipe();
                    for k in chunk {
                        pipe.cmd("HGETALL").arg(k);
                    }
                    let hs: Vec<Vec<(String, String)>> = pipe
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| redis_error("Redis", &e))?;
                    hs.into_iter().map(hash_json).collect()
                } else {
                    redis::cmd("MGET")
                        .arg(chunk)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| redis_error("Redis MGET", &e))?
                };
                for (k, v) in chunk.iter().zip(values) {
                    if let Some(v) = v {
                        let key = k.strip_prefix(prefix.as_str()).unwrap_or(k).to_string();
                        out.push((key, v));
                    }
                }
            }
            Ok(out)
        }
        .boxed()
    }
}
