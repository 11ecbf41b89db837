//! NATS JetStream key-value lookups: the value of a key in a bucket.

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use std::sync::Arc;

use async_nats::jetstream;

use super::{Connector, Fetched, Loaded, LookupError};
use crate::config::LookupStoreConfig;

/// A NATS KV bucket.
pub(crate) struct KvStore {
    js: jetstream::Context,
    bucket: String,
    prefix: String,
    kv: Arc<OnceCell<jetstream::kv::Store>>,
}

impl KvStore {
    pub(crate) fn new(cfg: &LookupStoreConfig, js: jetstream::Context) -> KvStore {
        KvStore {
            js,
            bucket: cfg.bucket.clone().unwrap_or_default(),
            prefix: cfg.key_prefix.clone(),
            kv: Arc::default(),
        }
    }
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    cell: &OnceCell<jetstream::kv::Store>,
) -> Result<jetstream::kv::Store, LookupError> {
    cell.get_or_try_init(|| async {
        js.get_key_value(name).await.map_err(|e| {
            let text =
                format!("NATS KV bucket `{name}`: {e} (create it with `nats kv add {name}`)");
            if bucket_missing(&e) {
                LookupError::Refused(text)
            } else {
                LookupError::Unavailable(text)
            }
        })
    })
    .await
    .cloned()
}

/// Whether the bucket's stream does not exist (as opposed to the server not answering).
fn bucket_missing(e: &jetstream::context::KeyValueError) -> bool {
    use jetstream::context::{GetStreamError, GetStreamErrorKind};
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<GetStreamError>())
        .is_some_and(|s| {
            matches!(s.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
        })
}

impl Connector for KvStore {
    fn get_many(&self, keys: Vec<String>) -> BoxFuture<'static, Fetched> {
        let (js, name, cell) = (self.js.clone(), self.bucket.clone(), self.kv.clone());
        async move {
            let kv = bucket(&js, &name, &cell).await?;
            let gets = keys.iter().map(|k| kv.get(k));
            let values = futures::future::join_all(gets).await;
            values
                .into_iter()
                .map(|v| {
                    v.map(|o| o.map(|b| b.to_vec()))
                        .map_err(|e| LookupError::Unavailable(format!("NATS KV `{name}`: {e}")))
                })
                .collect()
        }
        .boxed()
    }

    fn shares_round_trips(&self) -> bool {
        // One request per key: a batch would wait for its slowest.
        false
    }

    fn load_all(&self) -> BoxFuture<'static, Loaded> {
        let (js, name, cell, prefix) = (
            self.js.clone(),
            self.bucket.clone(),
            self.kv.clone(),
            self.prefix.clone(),
        );
        async move {
            let kv = bucket(&js, &name, &cell).await?;
            let keys: Vec<String> = kv
                .keys()
                .await
                .map_err(|e| LookupError::Unavailable(format!("NATS KV `{name}` keys: {e}")))?
                .try_collect()
                .await
                .map_err(|e| LookupError::Unavailable(format!("NATS KV `{name}` keys: {e}")))?;
            let mut out = Vec::new();
            let mut gets =
                futures::stream::iter(keys.into_iter().filter(|k| k.starts_with(&prefix)))
                    .map(|k| {
                        let kv = kv.clone();
                        async move { (k.clone(), kv.get(&k).await) }
                    })
                    .buffer_unordered(64);
            while let Some((k, v)) = gets.next().await {
                if let Some(v) =
                    v.map_err(|e| LookupError::Unavailable(format!("NATS KV `{name}`: {e}")))?
                {
                    out.push((k[prefix.len()..].to_string(), v.to_vec()));
                }
            }
            Ok(out)
        }
        .boxed()
    }
}
