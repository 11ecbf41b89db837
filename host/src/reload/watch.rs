//! Where new versions come from: the plugin bucket (`reload.watch = "object-store"`: the
//! deployed version under the pipeline's name and the declared shadow under
//! `<pipeline>.shadow`) or the file at `plugin.path` (`"file"`). Each version found is
//! validated off the run loop and sent to it as a [`ReloadEvent`].
//!
//! Owns: reading what the bucket announces as the bucket announced it. Reads of an object
//! store may be answered by a replica that has not applied the newest update yet (direct gets,
//! ADR-8), so an announced object is read again until the read returns it (or a newer one).
//! A watch that ends (its consumer lost with a server) is made again, with history.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::object_store::{GetErrorKind, ObjectInfo, ObjectStore, Watch};
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{Candidate, ReloadEvent, Validator, plugin_bucket, record, shadow};
use crate::config::{PipelineConfig, ReloadWatch};
use crate::transport::Nats;

/// How long an announced object is read again before it is given up (logged).
const ANNOUNCED_WITHIN: Duration = Duration::from_secs(15);

/// Watches for new versions per `reload.watch` and sends each, validated, to the run loop.
/// `current` is the version running at start (not reloaded again).
pub async fn watch(
    cfg: Arc<PipelineConfig>,
    nats: Nats,
    validator: Arc<Validator>,
    current: String,
    tx: mpsc::Sender<ReloadEvent>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    match cfg.reload.watch {
        ReloadWatch::Off => Ok(None),
        ReloadWatch::File => {
            let path = cfg.plugin.path.clone();
            let every = Duration::from_millis(cfg.reload.poll_ms);
            Ok(Some(tokio::spawn(watch_file(
                path, every, validator, current, tx,
            ))))
        }
        ReloadWatch::ObjectStore => {
            let bucket = cfg.reload.bucket.clone();
            let store = plugin_bucket(&nats, &bucket).await.map_err(|e| {
                anyhow::anyhow!("{e:#}; set reload.watch = \"off\" to run without hot reload")
            })?;
            // The first watch is made here: a bucket that cannot be watched fails the start.
            let updates = store
                .watch_with_history()
                .await
                .with_context(|| format!("cannot watch the plugin bucket {bucket}"))?;
            let pipeline = cfg.pipeline.name.clone();
            let watcher = BucketWatcher {
                shadow_name: shadow::object_name(&pipeline),
                pipeline,
                bucket,
                store,
                nats,
                validator,
                current,
                shadow: None,
                tx,
            };
            Ok(Some(tokio::spawn(watcher.run(updates))))
        }
    }
}

/// The plugin bucket's watcher for one pipeline.
struct BucketWatcher {
    pipeline: String,
    shadow_name: String,
    bucket: String,
    store: ObjectStore,
    nats: Nats,
    validator: Arc<Validator>,
    /// The live version the run loop has (or was last sent).
    current: String,
    /// The shadow version last sent.
    shadow: Option<String>,
    tx: mpsc::Sender<ReloadEvent>,
}

impl BucketWatcher {
    /// Handles updates until the run loop is gone.
    async fn run(mut self, mut updates: Watch) {
        loop {
            while let Some(update) = updates.next().await {
                let info = match update {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::warn!(bucket = %self.bucket, "plugin bucket watch: {e}");
                        continue;
                    }
                };
                if self.announced(info).await.is_err() {
                    return;
                }
            }
            tracing::warn!(bucket = %self.bucket, "the plugin bucket watch ended: watching it again");
            updates = loop {
                if self.tx.is_closed() {
                    return;
                }
                match self.store.watch_with_history().await {
                    Ok(u) => break u,
                    Err(e) => {
                        tracing::warn!(bucket = %self.bucket, "cannot watch the plugin bucket: {e}; trying again in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
        }
    }

    /// Acts on one announced object; `Err` once the run loop is gone.
    async fn announced(&mut self, info: ObjectInfo) -> Result<(), ()> {
        if info.name == self.shadow_name {
            let event = if info.deleted {
                self.shadow = None;
                Some(ReloadEvent::ShadowGone)
            } else {
                self.shadow_event(&info).await
            };
            return match event {
                Some(event) => self.tx.send(event).await.map_err(drop),
                None => Ok(()),
            };
        }
        if info.name != self.pipeline || info.deleted {
            return Ok(());
        }
        let Some(wasm) = self.read(&info).await else {
            return Ok(());
        };
        let version = crate::engine::version_of(&wasm);
        if version == self.current {
            return Ok(());
        }
        self.current = version.clone();
        let (bucket, pipeline) = (&self.bucket, &self.pipeline);
        if let Some(reason) = record::load(&self.nats, bucket, pipeline)
            .await
            .rolled_back(&version)
        {
            tracing::warn!(
                %version,
                "the deployed version was rolled back ({reason}); not running it again: deploy a fixed version"
            );
            return Ok(());
        }
        // The deployer's note (`deployed from <file>`, `... from the console`) goes into the
        // history with where the version came from.
        let source = match info.description.as_deref().filter(|d| !d.is_empty()) {
            Some(note) => format!("object store {bucket}/{pipeline}: {note}"),
            None => format!("object store {bucket}/{pipeline}"),
        };
        send_validated(&self.validator, wasm, pipeline, source, &self.tx).await
    }

    /// The announced shadow, validated, unless it is the one already sent.
    async fn shadow_event(&mut self, info: &ObjectInfo) -> Option<ReloadEvent> {
        let wasm = self.read(info).await?;
        let version = crate::engine::version_of(&wasm);
        if self.shadow.as_deref() == Some(version.as_str()) {
            return None;
        }
        self.shadow = Some(version.clone());
        let source = format!("shadow {}/{}", self.bucket, self.shadow_name);
        Some(
            validated(
                &self.validator,
                wasm,
                &self.pipeline,
                source,
                "shadow",
                ReloadEvent::Shadow,
            )
            .await,
        )
    }

    /// The announced object's bytes (failures are logged).
    async fn read(&self, info: &ObjectInfo) -> Option<Vec<u8>> {
        match read_announced(&self.store, info).await {
            Ok(Some(wasm)) => Some(wasm),
            Ok(None) => {
                tracing::warn!(
                    bucket = %self.bucket,
                    object = %info.name,
                    "the plugin bucket announced a new object, but no read returned it within {} s: redeploy it if no host runs it",
                    ANNOUNCED_WITHIN.as_secs()
                );
                None
            }
            Err(e) => {
                tracing::warn!("{e:#}");
                None
            }
        }
    }
}

/// The object `announced` by a watch, or a newer one of the same name, read from `store`.
/// `None` if no read returned it within [`ANNOUNCED_WITHIN`] (deleted since, or the replicas
/// never caught up).
async fn read_announced(
    store: &ObjectStore,
    announced: &ObjectInfo,
) -> anyhow::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + ANNOUNCED_WITHIN;
    let mut pause = Duration::from_millis(20);
    loop {
        match store.get(&announced.name).await {
            Ok(mut object)
                if object.info.nuid == announced.nuid
                    || object.info.modified > announced.modified =>
            {
                let mut bytes = Vec::with_capacity(object.info.size);
                object
                    .read_to_end(&mut bytes)
                    .await
                    .with_context(|| format!("reading {}/{}", announced.bucket, announced.name))?;
                return Ok(Some(bytes));
            }
            // An older object, or none: this replica has not applied the update yet.
            Ok(_) => {}
            Err(e) if e.kind() == GetErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "reading {}/{}: {e}",
                    announced.bucket,
                    announced.name
                ));
            }
        }
        if Instant::now() + pause > deadline {
            return Ok(None);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

async fn watch_file(
    path: PathBuf,
    every: Duration,
    validator: Arc<Validator>,
    current: String,
    tx: mpsc::Sender<ReloadEvent>,
) {
    let mut current = current;
    let mut last_seen: Option<(std::time::SystemTime, u64)> = None;
    loop {
        tokio::time::sleep(every).await;
        let Ok(meta) = tokio::fs::metadata(&path).await else {
            continue;
        };
        let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
        // Wait until the file stops changing between two polls (a build may still write it).
        if last_seen != Some(stamp) {
            last_seen = Some(stamp);
            continue;
        }
        let Ok(wasm) = tokio::fs::read(&path).await else {
            continue;
        };
        let version = crate::engine::version_of(&wasm);
        if version == current {
            continue;
        }
        current = version;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        let source = format!("file {}", path.display());
        if send_validated(&validator, wasm, &name, source, &tx)
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Validates off the run loop and reports the result.
async fn send_validated(
    validator: &Arc<Validator>,
    wasm: Vec<u8>,
    name: &str,
    source: String,
    tx: &mpsc::Sender<ReloadEvent>,
) -> Result<(), ()> {
    let event = validated(validator, wasm, name, source, "plugin", ReloadEvent::Ready).await;
    tx.send(event).await.map_err(drop)
}

/// Validates `wasm` off the run loop: the candidate as `ready` makes it the event (a new
/// live version, or a shadow: `what` names which in the log), or why it was rejected.
async fn validated(
    validator: &Arc<Validator>,
    wasm: Vec<u8>,
    name: &str,
    source: String,
    what: &str,
    ready: fn(Box<Candidate>) -> ReloadEvent,
) -> ReloadEvent {
    let version = crate::engine::version_of(&wasm);
    tracing::info!(%version, %source, "new {what} version: validating");
    let (v, n, s) = (validator.clone(), name.to_string(), source.clone());
    let result = tokio::task::spawn_blocking(move || v.validate(&wasm, &n, &s))
        .await
        .unwrap_or_else(|e| Err(format!("validation crashed: {e}")));
    match result {
        Ok(c) => ready(Box::new(c)),
        Err(reason) => {
            tracing::warn!(%version, %source, "new {what} version rejected: {reason}");
            ReloadEvent::Rejected {
                version,
                source,
                reason,
            }
        }
    }
}
