//! Checkpoints in a NATS object store bucket (ADR-20): objects chunked and checksummed by the
//! server, replicated like the bucket's stream. Every object of a pipeline is named under its
//! prefix (`<pipeline>/…`), so pipelines can share a bucket.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectStore};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

use super::block_on;
use crate::checkpoint::storage::{Storage, StorageError};
use crate::transport::Nats;

/// How long one object's transfer may take before the checkpoint gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A listing that delivers no entry for this long has stalled: it ends only at an entry the
/// server counts as the last, and a delete's marker purged meanwhile may have been that one.
const LIST_IDLE: Duration = Duration::from_secs(5);
/// Listings started before giving up.
const LIST_ATTEMPTS: u32 = 3;

/// A NATS object store bucket holding checkpoints.
pub struct NatsStorage {
    store: ObjectStore,
    /// The bucket's stream, to purge what a delete leaves behind.
    stream: async_nats::jetstream::stream::Stream,
    chunk_size: usize,
    bucket: String,
    prefix: String,
    handle: tokio::runtime::Handle,
}

impl NatsStorage {
    /// Opens `bucket`, creating it with `replicas` replicas (0: as many servers as the
    /// cluster has, up to 3) where missing.
    pub async fn open(
        nats: &Nats,
        bucket: &str,
        prefix: &str,
        replicas: usize,
    ) -> anyhow::Result<NatsStorage> {
        let replicas = if replicas == 0 {
            crate::transport::replicas(nats)
        } else {
            replicas
        };
        let store = crate::transport::object_bucket(
            nats,
            object_store::Config {
                bucket: bucket.to_string(),
                description: Some("Eddy checkpoints".into()),
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!("{e:#}; create it (`nats object add {bucket}`) or set checkpoint.store")
        })?;
        let stream = nats
            .js
            .get_stream(format!("OBJ_{bucket}"))
            .await
            .map_err(|e| anyhow::anyhow!("the stream of object store `{bucket}`: {e}"))?;
        let max_payload = nats.client.server_info().max_payload;
        Ok(NatsStorage {
            store,
            stream,
            chunk_size: (max_payload.saturating_sub(1024)).clamp(1024, 128 * 1024),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            handle: tokio::runtime::Handle::current(),
        })
    }

    /// An object's metadata: chunks that fit the server's `max_payload` with their headers
    /// (128 KiB, or less on a server configured smaller).
    fn meta(&self, name: &str) -> object_store::ObjectMetadata {
        object_store::ObjectMetadata {
            name: name.to_string(),
            chunk_size: Some(self.chunk_size),
            ..Default::default()
        }
    }

    /// Object `full` (`name` with the prefix) for reading.
    async fn object(&self, full: &str, name: &str) -> Result<object_store::Object, StorageError> {
        self.store.get(full).await.map_err(|e| {
            if e.kind() == object_store::GetErrorKind::NotFound {
                StorageError::NotFound(full.to_string())
            } else {
                self.failed("get", name, e)
            }
        })
    }

    /// Every object's metadata in the bucket, or `None` when the listing stalled.
    async fn list_once(&self) -> Result<Option<Vec<object_store::ObjectInfo>>, String> {
        let mut list = self.store.list().await.map_err(|e| e.to_string())?;
        let mut infos = Vec::new();
        loop {
            match tokio::time::timeout(LIST_IDLE, list.try_next()).await {
                Ok(Ok(Some(info))) => infos.push(info),
                Ok(Ok(None)) => return Ok(Some(infos)),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Ok(None),
            }
        }
    }

    fn failed(&self, what: &str, name: &str, e: impl std::fmt::Display) -> StorageError {
        StorageError::Failed(format!(
            "NATS object store `{}`: {what} {}{name}: {e}",
            self.bucket, self.prefix
        ))
    }
}

impl Storage for NatsStorage {
    fn describe(&self) -> String {
        format!("NATS object store `{}` ({})", self.bucket, self.prefix)
    }

    fn put_file(&self, name: &str, path: &Path) -> Result<(), StorageError> {
        let full = format!("{}{name}", self.prefix);
        block_on(
            &self.handle,
            CALL_TIMEOUT,
            || format!("put {full}"),
            async {
                let mut file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| self.failed("read the file for", name, e))?;
                self.store
                    .put(self.meta(&full), &mut file)
                    .await
                    .map(drop)
                    .map_err(|e| self.failed("put", name, e))
            },
        )
    }

    fn put_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let full = format!("{}{name}", self.prefix);
        block_on(
            &self.handle,
            CALL_TIMEOUT,
            || format!("put {full}"),
            async {
                let mut data = bytes;
                self.store
                    .put(self.meta(&full), &mut data)
                    .await
                    .map(drop)
                    .map_err(|e| self.failed("put", name, e))
            },
        )
    }

    fn get_file(&self, name: &str, path: &Path) -> Result<(), StorageError> {
        let full = format!("{}{name}", self.prefix);
        block_on(
            &self.handle,
            CALL_TIMEOUT,
            || format!("get {full}"),
            async {
                let mut object = self.object(&full, name).await?;
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|e| self.failed("write the file for", name, e))?;
                }
                let tmp = crate::checkpoint::storage::temporary_beside(path);
                let mut file = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(|e| self.failed("write the file for", name, e))?;
                tokio::io::copy(&mut object, &mut file)
                    .await
                    .map_err(|e| self.failed("get", name, e))?;
                file.flush()
                    .await
                    .map_err(|e| self.failed("write the file for", name, e))?;
                tokio::fs::rename(&tmp, path)
                    .await
                    .map_err(|e| self.failed("write the file for", name, e))
            },
        )
    }

    fn get_bytes(&self, name: &str) -> Result<Vec<u8>, StorageError> {
        let full = format!("{}{name}", self.prefix);
        block_on(
            &self.handle,
            CALL_TIMEOUT,
            || format!("get {full}"),
            async {
                let mut object = self.object(&full, name).await?;
                let mut out = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut object, &mut out)
                    .await
                    .map_err(|e| self.failed("get", name, e))?;
                Ok(out)
            },
        )
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let full = format!("{}{prefix}", self.prefix);
        block_on(
            &self.handle,
            CALL_TIMEOUT,
            || format!("list {full}"),
            async {
                let mut attempt = 1;
                let infos = loop {
                    match self.list_once().await {
                        Ok(Some(infos)) => break infos,
                        Ok(None) if attempt < LIST_ATTEMPTS => attempt += 1,
                        Ok(None) => {
                            return Err(self.failed(
                                "list",
                                prefix,
                                format!(
                                    "the listing stalled {LIST_ATTEMPTS} times ({} s without an entry)",
                                    LIST_IDLE.as_secs()
                                ),
                            ));
                        }
                        Err(e) => return Err(self.failed("list", prefix, e)),
                    }
                };
                let mut names: Vec<String> = infos
                    .into_iter()
                    .filter(|i| !i.deleted && i.name.starts_with(&full))
                    .map(|i| i.name[self.prefix.len()..].to_string())
                    .collect();
                names.sort();
                Ok(names)
            },
        )
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        let full = format!("{}{name}", self.prefix);
        block_on(
            &self.handle,
            CALL_TIMEOUT,
            || format!("delete {full}"),
            async {
                match self.store.delete(full.as_str()).await {
                    Ok(()) => {}
                    // Nothing written, nothing to purge.
                    Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(self.failed("delete", name, e)),
                }
                // A delete leaves a marker under the object's name, and a listing reads every
                // marker: a host that retires checkpoints every second would make each
                // listing (a restore's, `eddy checkpoints list`) longer by thousands an hour.
                // Only the marker goes: up to its sequence, and only while it is the last
                // message under the name (a put of the name since stays whole).
                let subject = format!("$O.{}.M.{}", self.bucket, URL_SAFE.encode(&full));
                let last = match self.stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(m) => m,
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
                    Err(e) => return Err(self.failed("read the delete marker of", name, e)),
                };
                let marker = serde_json::from_slice::<serde_json::Value>(&last.payload)
                    .is_ok_and(|info| info["deleted"] == true);
                if !marker {
                    return Ok(());
                }
                self.stream
                    .purge()
                    .filter(subject)
                    .sequence(last.sequence + 1)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.failed("purge the delete marker of", name, e))
            },
        )
    }
}
