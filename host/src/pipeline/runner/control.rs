//! Operator requests from the run loop's side: status, checkpoints on demand, and savepoints
//! (cut now, written in the background once every output up to the cut is stored, progress
//! reported over a channel).
//!
//! Never: holds the run loop while a savepoint is written; only the cut happens between two
//! batches.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use super::Runner;
use crate::checkpoint::savepoint;
use crate::control::{
    Command, HostStatus, PartitionsStatus, PluginStatus, ProbationStatus, SavepointProgress,
    SavepointSummary,
};
use crate::state::StateStore;
use crate::transport;

impl Runner {
    pub(super) async fn control(&mut self, cmd: Command) -> anyhow::Result<()> {
        match cmd {
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Checkpoint { reply } => {
                if self.reloading.on_probation() {
                    let _ = reply.send(Err(
                        "a new plugin version is on probation; checkpoints resume when it ends"
                            .into(),
                    ));
                    return Ok(());
                }
                if !self.checkpointing.in_progress() {
                    self.checkpoint().await?;
                }
                // A checkpoint is in progress now (or the cut above failed and stopped us).
                let _ = self.checkpointing.wait(reply);
            }
            Command::Savepoint {
                name,
                dir,
                progress_tx,
                reply,
            } => self.savepoint(name, dir, progress_tx, reply).await?,
        }
        Ok(())
    }

    fn status(&self) -> HostStatus {
        let keyed = self
            .window
            .position()
            .map(|p| p.0)
            .unwrap_or(self.checkpointing.keyed_position);
        HostStatus {
            pipeline: self.cfg.pipeline.name.clone(),
            host: self.cfg.partitions.host_name(),
            partitions: PartitionsStatus {
                count: self.cfg.partitions.count,
                owned: self.query.owned().to_vec(),
            },
            uptime_ms: self.started.elapsed().as_millis() as u64,
            plugin: self.worker.as_ref().map(|w| {
                let p = w.plugin();
                PluginStatus {
                    name: p.name().to_string(),
                    version: p.version().to_string(),
                    exports: p.capabilities().to_string(),
                }
            }),
            quota: (!self.cfg.state.quota.is_empty()).then(|| {
                let stats = self.state.stats();
                crate::control::QuotaStatus {
                    rejected: stats.quota_rejected.load(Ordering::Relaxed),
                    evicted: stats.quota_evicted.load(Ordering::Relaxed),
                }
            }),
            shadow: self.shadowing.report().cloned(),
            probation: self.reloading.probation.as_ref().map(|p| ProbationStatus {
                events: p.rule.events,
                failures: p.rule.failures,
                previous: p.previous.version().to_string(),
            }),
            deployments: self.reloading.history.deployments.clone(),
            positions: self
                .broadcast_positions
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .chain([(self.keyed_key.clone(), keyed)])
                .collect::<BTreeMap<_, _>>(),
            last_checkpoint: self.checkpointing.last.clone(),
            events_in: self.metrics.events_in.load(Ordering::Relaxed),
            outputs: self.metrics.outputs.load(Ordering::Relaxed),
            dropped: self.metrics.dropped.load(Ordering::Relaxed),
            dead_lettered: self.metrics.dead_lettered_total(),
            lag: match self.input_pending.load(Ordering::Relaxed) {
                u64::MAX => None,
                n => Some(n),
            },
            call_seconds: self.metrics.call_seconds.snapshot(),
            checkpoints: self.checkpointing.recent.iter().cloned().collect(),
        }
    }

    /// A savepoint at a cut taken now, written in the background once every output up to the
    /// cut is stored.
    async fn savepoint(
        &mut self,
        name: String,
        dir: Option<PathBuf>,
        progress: Option<mpsc::UnboundedSender<SavepointProgress>>,
        reply: oneshot::Sender<Result<SavepointSummary, String>>,
    ) -> anyhow::Result<()> {
        if self.reloading.on_probation() {
            let _ = reply.send(Err(
                "a new plugin version is on probation; take the savepoint when it ends".into(),
            ));
            return Ok(());
        }
        self.await_staged().await;
        let (cut, _, _) = self.current_cut()?;
        let target = dir.unwrap_or_else(|| self.cfg.savepoint_dir()).join(&name);
        let tmp = self.cfg.savepoint_staging_dir().join(&name);
        let state = self.state.clone();
        let (tmp2, cut2) = (tmp.clone(), cut.clone());
        let snap = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            if tmp2.exists() {
                std::fs::remove_dir_all(&tmp2)?;
            }
            if let Some(parent) = tmp2.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut batch = state.batch();
            for (input, pos) in &cut2.positions {
                batch.set_position(input, *pos);
            }
            state.commit(batch)?;
            state.create_checkpoint(&tmp2)?;
            Ok(())
        })
        .await?;
        if let Err(e) = snap {
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            let _ = reply.send(Err(format!("cannot cut the savepoint: {e:#}")));
            return Ok(());
        }
        let job = self.publisher.last_job();
        let acked = self.publisher.watch_acked();
        let (pipeline, clock) = (self.cfg.pipeline.name.clone(), self.state.clock());
        tokio::spawn(async move {
            let written = async {
                transport::publisher::wait_for(acked, job).await?;
                let (target, tmp) = (target.clone(), tmp.clone());
                tokio::task::spawn_blocking(move || {
                    let db = StateStore::open_read_only(&tmp, clock)?;
                    let meta = savepoint::write(&db, &cut, &pipeline, &target, |p| {
                        if let Some(tx) = &progress {
                            let _ = tx.send(SavepointProgress {
                                done: p.done,
                                total: p.total,
                                entries: p.entries,
                            });
                        }
                    });
                    drop(db);
                    meta
                })
                .await?
            }
            .await;
            // The cut's copy goes whether or not the savepoint was written: a failed one would
            // keep a hard-linked copy of the whole state on disk.
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            let answer = written
                .map(|meta| SavepointSummary {
                    savepoint: target.display().to_string(),
                    entries: meta.entries,
                    expired_skipped: meta.expired_skipped,
                    key_groups: meta.key_groups,
                    files: meta.files.len(),
                    positions: meta.cut.positions,
                    plugin_version: meta.cut.plugin_version,
                })
                .map_err(|e| format!("{e:#}"));
            let _ = reply.send(answer);
        });
        Ok(())
    }
}
