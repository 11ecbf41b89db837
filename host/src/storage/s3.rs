//! Checkpoints in an S3-compatible store through the `object_store` crate: AWS S3 or any
//! server speaking its API (MinIO, Ceph, moto in the tests). Objects of a pipeline are named
//! under `[checkpoint.s3] prefix` + `<pipeline>/`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;

use super::block_on;
use crate::checkpoint::storage::{Storage, StorageError};
use crate::config::S3Config;

const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A few quick retries per request: a checkpoint whose upload fails is tried again whole at
/// the next interval, so an unreachable store shows up as a failed checkpoint (and its metric)
/// within seconds rather than after the crate's default three minutes of retrying.
fn retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
        ..object_store::RetryConfig::default()
    }
}

/// An S3 bucket holding checkpoints.
pub struct S3Storage {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
    handle: tokio::runtime::Handle,
}

impl S3Storage {
    /// The bucket `cfg` names; credentials from `cfg` or the usual AWS environment variables.
    pub fn open(cfg: &S3Config, prefix: &str) -> anyhow::Result<S3Storage> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_retry(retries());
        if let Some(region) = &cfg.region {
            b = b.with_region(region);
        }
        if let Some(endpoint) = &cfg.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(id) = &cfg.access_key_id {
            b = b.with_access_key_id(id);
        }
        if let Some(secret) = &cfg.secret_access_key {
            b = b.with_secret_access_key(secret);
        }
        if let Some(env) = &cfg.secret_access_key_env {
            let secret = std::env::var(env).map_err(|_| {
                anyhow::anyhow!(
                    "checkpoint.s3.secret_access_key_env names `{env}`, which is not set; export it or remove the setting to use AWS_SECRET_ACCESS_KEY"
                )
            })?;
            b = b.with_secret_access_key(secret);
        }
        let store = b.build().map_err(|e| {
            anyhow::anyhow!("checkpoint.s3: {e}; check bucket, endpoint, region and credentials")
        })?;
        Ok(S3Storage {
            store: Arc::new(store),
            bucket: cfg.bucket.clone(),
            prefix: format!("{}{prefix}", cfg.prefix),
            handle: tokio::runtime::Handle::current(),
        })
    }

    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{name}", self.prefix))
    }

    fn failed(&self, what: &str, name: &str, e: object_store::Error) -> StorageError {
        match e {
            object_store::Error::NotFound { .. } => {
                StorageError::NotFound(format!("{}{name}", self.prefix))
            }
            e => StorageError::Failed(format!(
                "s3://{}/{}{name}: {what}: {e}",
                self.bucket, self.prefix
            )),
        }
    }
}

impl Storage for S3Storage {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn put_file(&self, name: &str, path: &Path) -> Result<(), StorageError> {
        let bytes = std::fs::read(path).map_err(|e| {
            StorageError::Failed(format!("read {} to upload it: {e}", path.display()))
        })?;
        self.put_bytes(name, &bytes)
    }

    fn put_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let payload = object_store::PutPayload::from(bytes.to_vec());
        block_on(
            &self.handle,
            CALL_TIMEOUT,
            || format!("put {name}"),
            async {
                self.store
                    .put(&self.path(name), payload)
                    .await
                    .map(drop)
                    .map_err(|e| self.failed("put", name, e))
            },
        )
    }

    fn get_file(&self, name: &str, path: &Path) -> Result<(), StorageError> {
        let bytes = self.get_bytes(name)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StorageError::Failed(format!("create {}: {e}", parent.display())))?;
        }
        let tmp = crate::checkpoint::storage::temporary_beside(path);
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| StorageError::Failed(format!("write {}: {e}", path.display())))
    }

    fn get_bytes(&self, name: &str) -> Result<Vec<u8>, StorageError> {
        block_on(
            &self.handle,
            CALL_TIMEOUT,
            || format!("get {name}"),
            async {
                let got = self
                    .store
                    .get(&self.path(name))
                    .await
                    .map_err(|e| self.failed("get", name, e))?;
                got.bytes()
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| self.failed("get", name, e))
            },
        )
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        // Listing goes by whole path segments: list the directory part, filter the rest.
        let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let base = format!("{}{dir}", self.prefix);
        let full = format!("{}{prefix}", self.prefix);
        block_on(
            &self.handle,
            CALL_TIMEOUT,
            || format!("list {full}"),
            async {
                let base = ObjectPath::from(base.trim_end_matches('/'));
                let metas: Vec<object_store::ObjectMeta> = self
                    .store
                    .list(Some(&base))
                    .try_collect()
                    .await
                    .map_err(|e| self.failed("list", prefix, e))?;
                let mut names: Vec<String> = metas
                    .into_iter()
                    .map(|m| m.location.to_string())
                    .filter(|n| n.starts_with(&full))
                    .map(|n| n[self.prefix.len()..].to_string())
                    .collect();
                names.sort();
                Ok(names)
            },
        )
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        block_on(
            &self.handle,
            CALL_TIMEOUT,
            || format!("delete {name}"),
            async {
                match self.store.delete(&self.path(name)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.failed("delete", name, e)),
                }
            },
        )
    }
}
