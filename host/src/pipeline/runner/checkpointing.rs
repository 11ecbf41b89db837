//! Checkpoints from the run loop's side: when to cut, what a cut records, and completing it in
//! the background (the frozen cut's RocksDB checkpoint written, outputs stored, then files and
//! manifest, then the input ack).
//!
//! Owns the bookkeeping between two checkpoints ([`Checkpointing`]): the checkpoint in
//! progress, when the last cut was taken, how much input waits for an ack, and whether
//! anything happened since.
//!
//! Never: cuts while the plugin runs (cuts are taken between two batches), or acknowledges
//! input before the checkpoint that contains it is complete.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use async_nats::jetstream;
use tokio::sync::oneshot;

use super::Runner;
use crate::checkpoint::{Checkpoints, Cut, Manifest};
use crate::control::{CheckpointRef, CheckpointSummary};
use crate::pipeline::Fenced;
use crate::state::StateError;
use crate::transport;

/// Where the run loop stands between two checkpoints.
pub(in crate::pipeline) struct Checkpointing {
    pub(super) checkpoints: Arc<Checkpoints>,
    /// The checkpoint being completed in the background.
    completing: Option<Completing>,
    last_cut: Instant,
    /// Events read since the last cut (unacknowledged until it completes).
    pub(super) unacked: u64,
    /// Whether anything was handled since the last cut.
    pub(super) dirty: bool,
    /// The keyed position of the last cut (or the restored one).
    pub(super) keyed_position: u64,
    /// The newest completed checkpoint.
    pub(super) last: Option<CheckpointRef>,
    /// The newest completed checkpoints, oldest first, for status.
    pub(super) recent: std::collections::VecDeque<CheckpointSummary>,
}

/// A checkpoint being completed in the background.
struct Completing {
    id: u64,
    task: tokio::task::JoinHandle<anyhow::Result<Manifest>>,
    /// Closed once the frozen cut's files are written (or writing them failed).
    staged: Option<oneshot::Receiver<()>>,
    waiters: Vec<oneshot::Sender<Result<CheckpointSummary, String>>>,
}

impl Checkpointing {
    pub(in crate::pipeline) fn new(checkpoints: Arc<Checkpoints>, keyed_position: u64) -> Self {
        Checkpointing {
            checkpoints,
            completing: None,
            last_cut: Instant::now(),
            unacked: 0,
            dirty: false,
            keyed_position,
            last: None,
            recent: std::collections::VecDeque::new(),
        }
    }

    /// Whether a checkpoint is being completed.
    pub(super) fn in_progress(&self) -> bool {
        self.completing.is_some()
    }

    /// Whether a cut is due: something happened, and the interval passed or `early` events
    /// wait for an ack.
    pub(super) fn due(&self, interval: std::time::Duration, early: u64) -> bool {
        self.completing.is_none()
            && self.dirty
            && (self.last_cut.elapsed() >= interval || self.unacked >= early)
    }

    /// Gives up the checkpoint in progress, if any, and waits until its task has stopped, so
    /// that nothing it holds (the state store among it) outlives the run: the same host may
    /// open the partition's state again at once. What the task had already written to a
    /// blocking thread runs to its end; it is not committed unless its commit came first, and
    /// whoever waits for it hears `why` (or the summary, if it was committed).
    pub(super) async fn abandon(&mut self, why: &str) {
        let Some(c) = self.completing.take() else {
            return;
        };
        c.task.abort();
        let answer = match c.task.await {
            Ok(Ok(m)) => Ok(CheckpointSummary::from(&m)),
            _ => Err(format!("checkpoint {}: abandoned, {why}", c.id)),
        };
        // Writing the cut's files runs on a blocking thread that the abort does not stop.
        if let Some(staged) = c.staged {
            let _ = staged.await;
        }
        for w in c.waiters {
            let _ = w.send(answer.clone());
        }
    }

    /// Answers `reply` when the checkpoint in progress completes; gives it back if none is.
    pub(super) fn wait(
        &mut self,
        reply: oneshot::Sender<Result<CheckpointSummary, String>>,
    ) -> Result<(), oneshot::Sender<Result<CheckpointSummary, String>>> {
        match self.completing.as_mut() {
            Some(c) => {
                c.waiters.push(reply);
                Ok(())
            }
            None => Err(reply),
        }
    }
}

impl Runner {
    /// What a cut taken now records: the cut, its keyed position, and the message whose ack
    /// acknowledges everything up to it.
    pub(super) fn current_cut(&self) -> anyhow::Result<(Cut, u64, Option<jetstream::Message>)> {
        let mut positions = self.broadcast_positions.clone();
        let (keyed, ack) = match self.window.position() {
            Some((seq, msg)) => (*seq, Some(msg.clone())),
            None => (self.checkpointing.keyed_position, None),
        };
        positions.insert(self.keyed_key.clone(), keyed);
        let mut done_after: Vec<u64> = self.window.done_after();
        done_after.extend(self.restored_skip.range(keyed + 1..));
        done_after.sort_unstable();
        done_after.dedup();
        let worker = self.worker.as_ref().context("worker lost")?;
        let cut = Cut {
            positions,
            done_after: if done_after.is_empty() {
                BTreeMap::new()
            } else {
                BTreeMap::from([(self.keyed_key.clone(), done_after)])
            },
            plugin_version: worker.plugin().version().to_string(),
            outputs: self.metrics.outputs.load(Ordering::Relaxed),
        };
        Ok((cut, keyed, ack))
    }

    /// Cuts a checkpoint now (between two batches) and completes it in the background.
    pub(super) async fn checkpoint(&mut self) -> anyhow::Result<()> {
        let (cut, keyed, ack) = self.current_cut()?;
        let job = self.publisher.last_job();
        let (checkpoints, state) = (self.checkpointing.checkpoints.clone(), self.state.clone());
        let started = Instant::now();
        // The cut is frozen here, between two batches; its files are written with the rest
        // below. Tens of microseconds as a rule, yet it may block: `next_id` asks the
        // checkpoint store once, and the freeze does a cut's RocksDB part that a failed
        // checkpoint left pending.
        let frozen = blocking_in_place(move || {
            let id = checkpoints.next_id();
            checkpoints.freeze(&state, id, cut)
        })
        .await??;
        let id = frozen.id();
        self.metrics
            .checkpoint_pause_seconds
            .observe(started.elapsed().as_secs_f64());
        let c = &mut self.checkpointing;
        c.keyed_position = keyed;
        c.last_cut = Instant::now();
        c.unacked = 0;
        c.dirty = false;
        let acked = self.publisher.watch_acked();
        let checkpoints = c.checkpoints.clone();
        let state = self.state.clone();
        let fence = self.fence.clone();
        let query = self.query.clone();
        let (staged_tx, staged_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            // The signal goes with the store's handle when the files are written, from the
            // blocking thread: a task aborted meanwhile does not stop that thread.
            let staged = tokio::task::spawn_blocking(move || {
                let staged = frozen.stage(&state);
                drop(state);
                drop(staged_tx);
                staged
            })
            .await??;
            transport::publisher::wait_for(acked, job)
                .await
                .map_err(|e| Fenced::or(fence.as_ref(), e))?;
            let (staged, manifest) = {
                let checkpoints = checkpoints.clone();
                tokio::task::spawn_blocking(move || {
                    let m = checkpoints.complete(&staged);
                    (staged, m)
                })
                .await?
            };
            let manifest = manifest?;
            // Under a lease, the checkpoint counts once the partition's pointer names it; a
            // host that lost the partition finds out here, before it acknowledges anything.
            if let Some(fence) = &fence {
                fence
                    .commit(manifest.id)
                    .await
                    .map_err(crate::pipeline::CommitError::into_error)?;
            }
            // The cut is durable and every output up to it is stored: acknowledge the input.
            if let Some(msg) = ack
                && let Err(e) = msg.ack().await
            {
                tracing::warn!("input ack failed ({e}); the next checkpoint acknowledges it");
            }
            let keep = staged.id();
            let retained = tokio::task::spawn_blocking(move || {
                // Queries at `checkpoint` freshness read this cut from now on (the first of
                // them opens it): named before retention removes the one they read so far,
                // which is closed here, off the loop.
                if let Some(dir) = checkpoints.staged_dir(keep) {
                    query.set_checkpoint(keep, dir);
                }
                checkpoints.retain(Some(keep))
            })
            .await?;
            // The checkpoint is committed and its input acknowledged whatever retention does:
            // what it failed to remove, the next checkpoint's retention removes.
            if let Err(e) = retained {
                tracing::warn!(
                    checkpoint = keep,
                    "checkpoint complete, but removing older checkpoints failed: {e:#}; the next checkpoint tries again"
                );
            }
            Ok(manifest)
        });
        c.completing = Some(Completing {
            id,
            task,
            staged: Some(staged_rx),
            waiters: Vec::new(),
        });
        Ok(())
    }

    /// Waits until the checkpoint in progress, if any, has its files written: anything that
    /// flushes the store (a savepoint's cut, a shadow's seed) would otherwise make that
    /// checkpoint fail its check (`eddy_state`'s `cut`). Milliseconds: the cut's own flush.
    pub(super) async fn await_staged(&mut self) {
        let staged = self
            .checkpointing
            .completing
            .as_mut()
            .and_then(|c| c.staged.take());
        if let Some(rx) = staged {
            let _ = rx.await;
        }
    }

    /// Notices a completed checkpoint without waiting for one.
    pub(super) async fn poll_completion(&mut self) -> anyhow::Result<()> {
        if self
            .checkpointing
            .completing
            .as_ref()
            .is_some_and(|c| c.task.is_finished())
        {
            self.await_completion().await?;
        }
        Ok(())
    }

    /// Waits for the checkpoint in progress, if any, and records how it ended.
    pub(super) async fn await_completion(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.checkpointing.completing.take() {
            let result = c.task.await?;
            self.finish_completion(c.id, result, c.waiters).await;
        }
        Ok(())
    }

    async fn finish_completion(
        &mut self,
        id: u64,
        result: anyhow::Result<Manifest>,
        waiters: Vec<oneshot::Sender<Result<CheckpointSummary, String>>>,
    ) {
        let m = match result {
            Ok(m) => m,
            Err(e) if e.downcast_ref::<Fenced>().is_some() => {
                tracing::warn!(checkpoint = id, "{e}; stopping at once");
                for w in waiters {
                    let _ = w.send(Err(format!("checkpoint {id}: {e}")));
                }
                self.fenced = Some(e.to_string());
                return;
            }
            Err(e) => {
                let raced = e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<StateError>(),
                        Some(StateError::CutRaced(_))
                    )
                });
                if raced {
                    // Something flushed the store between the cut and its files (a memtable
                    // that filled meanwhile): nothing is lost, the next cut is written while
                    // the loop waits.
                    tracing::warn!(
                        checkpoint = id,
                        "{e:#}; the next checkpoint is written at its cut"
                    );
                } else {
                    tracing::error!(
                        checkpoint = id,
                        "checkpoint failed: {e:#}; the next one will be tried"
                    );
                }
                self.metrics
                    .checkpoint_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.checkpointing.dirty = true;
                for w in waiters {
                    let _ = w.send(Err(format!("checkpoint {id} failed: {e:#}")));
                }
                return;
            }
        };
        self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .checkpoint_seconds
            .observe(m.complete_ms as f64 / 1000.0);
        self.metrics
            .checkpoint_bytes
            .store(m.total_bytes, Ordering::Relaxed);
        self.metrics
            .checkpoint_new_bytes
            .fetch_add(m.new_bytes, Ordering::Relaxed);
        self.metrics
            .checkpoint_upload_bytes
            .fetch_add(m.uploaded_bytes, Ordering::Relaxed);
        self.checkpointing.last = Some(CheckpointRef {
            id: m.id,
            created_ms: m.created_ms,
        });
        tracing::debug!(
            checkpoint = m.id,
            cut_ms = m.cut_ms,
            complete_ms = m.complete_ms,
            bytes = m.total_bytes,
            new_bytes = m.new_bytes,
            "checkpoint complete"
        );
        let summary = CheckpointSummary::from(&m);
        let recent = &mut self.checkpointing.recent;
        if recent.len() == crate::control::RECENT_CHECKPOINTS {
            recent.pop_front();
        }
        recent.push_back(summary.clone());
        for w in waiters {
            let _ = w.send(Ok(summary.clone()));
        }
    }
}

/// Runs `f`, which may block, on this thread where the runtime can give this thread's other
/// tasks to another meanwhile (a multi-threaded runtime, as `eddy` runs), else on a blocking
/// thread. The run loop waits for `f` either way; in place it does not also wait for another
/// thread to wake up and pick `f` up: on a busy host that doubled a cut's pause as a rule
/// (0.4 ms against 0.2 ms) and made the longest 1-2.5 ms.
async fn blocking_in_place<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        Ok(tokio::task::block_in_place(f))
    } else {
        Ok(tokio::task::spawn_blocking(f).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that ends while a checkpoint is being completed lets go of what the completion
    /// holds (the state store, in a run) before it returns, the part on a blocking thread
    /// included: the same host may open the partition's state again at once.
    #[tokio::test]
    async fn an_abandoned_checkpoint_has_let_go_of_what_it_held_when_abandon_returns() {
        let dir = tempfile::tempdir().expect("temp dir");
        let checkpoints = Checkpoints::new(&dir.path().join("store"), dir.path(), "p", 2);
        let mut checkpointing = Checkpointing::new(Arc::new(checkpoints), 0);
        let held = Arc::new(());
        let (in_task, on_thread) = (held.clone(), held.clone());
        let (running_tx, running_rx) = oneshot::channel();
        let (staged_tx, staged_rx) = oneshot::channel::<()>();
        // As a completion does: the cut's files written on a blocking thread, which signals
        // when it is done, then the rest awaited.
        let task = tokio::spawn(async move {
            let _held = in_task;
            let writing = tokio::task::spawn_blocking(move || {
                let _ = running_tx.send(());
                std::thread::sleep(std::time::Duration::from_millis(300));
                drop(on_thread);
                drop(staged_tx);
            });
            let _ = writing.await;
            std::future::pending::<anyhow::Result<Manifest>>().await
        });
        running_rx.await.expect("the completion task runs");
        let (waiter_tx, waiter_rx) = oneshot::channel();
        checkpointing.completing = Some(Completing {
            id: 7,
            task,
            staged: Some(staged_rx),
            waiters: vec![waiter_tx],
        });

        checkpointing.abandon("the run ended").await;

        assert_eq!(
            Arc::strong_count(&held),
            1,
            "the abandoned completion still holds what it held"
        );
        assert!(!checkpointing.in_progress());
        let answer = waiter_rx.await.expect("the waiter hears back");
        assert_eq!(
            answer.expect_err("an abandoned checkpoint is not reported complete"),
            "checkpoint 7: abandoned, the run ended"
        );
    }
}
