//! Checkpoint stores beyond the host: the NATS object store (`nats`, the default: replicated
//! like the user's JetStream) and any S3-compatible store (`s3`, through the `object_store`
//! crate). Both implement [`crate::checkpoint::storage::Storage`]; the checkpoint code keeps
//! its local directory as a cache in front of them.
//!
//! The store's calls block (checkpoints complete and restore on blocking threads); each
//! backend runs its async client on the runtime it was opened from.
//!
//! Never: decides what a checkpoint is; it only moves named objects.

mod nats;
mod s3;

use std::sync::Arc;

use crate::checkpoint::storage::Storage;
use crate::config::{CheckpointStore, PipelineConfig};
use crate::transport::Nats;

pub use nats::NatsStorage;
pub use s3::S3Storage;

/// The checkpoint store the pipeline names (`checkpoint.store`), or `None` for `local`:
/// checkpoints stay in the state directory alone.
pub async fn open(cfg: &PipelineConfig, nats: &Nats) -> anyhow::Result<Option<Arc<dyn Storage>>> {
    let prefix = cfg.checkpoint_prefix();
    Ok(match cfg.checkpoint.store {
        CheckpointStore::Local => None,
        CheckpointStore::Nats => Some(Arc::new(
            NatsStorage::open(
                nats,
                &cfg.checkpoint.bucket,
                &prefix,
                cfg.checkpoint.replicas,
            )
            .await?,
        )),
        CheckpointStore::S3 => Some(Arc::new(S3Storage::open(&cfg.checkpoint.s3, &prefix)?)),
    })
}

/// Runs `f` on the runtime `handle` from a blocking thread, bounded by `timeout`.
fn block_on<T>(
    handle: &tokio::runtime::Handle,
    timeout: std::time::Duration,
    what: impl FnOnce() -> String,
    f: impl std::future::Future<Output = Result<T, crate::checkpoint::storage::StorageError>>,
) -> Result<T, crate::checkpoint::storage::StorageError> {
    handle.block_on(async {
        match tokio::time::timeout(timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(crate::checkpoint::storage::StorageError::Failed(format!(
                "{}: no answer within {} s",
                what(),
                timeout.as_secs()
            ))),
        }
    })
}
